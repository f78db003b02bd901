//! The HTTP side of the guard and lifecycle: X-Forwarded-For only from a
//! trusted proxy, quota refusals as 422 *Quota Exceeded*, `/status` and the
//! freshness gauge in `/metrics`.

mod common;

use common::http::*;
use draupnir::core::{ImageId, InstanceId};
use serde_json::json;

const BASE: &str = "shared_secret = \"the-upload-shared-secret\"\nuse_x_forwarded_for = true\ntrusted_proxy_cidrs = [\"127.0.0.0/8\"]\nmax_instances_per_user = 2\nexpected_image_interval = \"1h\"";

async fn create_with_xff(api: &Api, xff: &str) -> (reqwest::StatusCode, serde_json::Value) {
    let body = json!({"data": {"type": "instances", "attributes": {"image_id": 1}}});
    let r = send(
        api.client
            .post(api.url("/instances"))
            .header("Draupnir-Version", VERSION)
            .header("X-Forwarded-For", xff)
            .bearer_auth(SECRET)
            .header("content-type", "application/json")
            .body(body.to_string()),
    )
    .await;
    let status = r.status;
    (status, r.json())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_quota_status_and_metrics() {
    let api = Api::start(BASE, "listen_address = \"127.0.0.1:0\"\nmetrics = true", "").await;
    let r = send(api.client.get(api.url("/status"))).await;
    assert_eq!(r.status, 200);
    r.assert_api_headers();
    assert_eq!(r.json()["status"], "no_images");
    let image = api.env.ready_image(None).await;
    assert_eq!(image, ImageId::new(1));

    // The peer (127.0.0.1) is a trusted proxy: the rightmost untrusted entry counts.
    let (status, doc) = create_with_xff(&api, "203.0.113.50, 198.51.100.23, 127.0.0.9").await;
    assert_eq!(status, 201, "{doc}");
    let id: InstanceId = doc["data"]["id"].as_str().unwrap().parse().unwrap();
    let admin = api.env.admin();
    assert_eq!(
        api.env.svc().allowed_addresses(&admin, id).unwrap(),
        vec!["198.51.100.23"]
    );
    // Junk in the header: the peer's address.
    let (status, doc) = create_with_xff(&api, "<script>").await;
    assert_eq!(status, 201, "{doc}");
    let id2: InstanceId = doc["data"]["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        api.env.svc().allowed_addresses(&admin, id2).unwrap(),
        vec!["127.0.0.1"]
    );

    // The third instance is over max_instances_per_user.
    let (status, doc) = create_with_xff(&api, "198.51.100.23").await;
    assert_eq!(status, 422, "{doc}");
    assert_eq!(doc["title"], "Quota Exceeded", "{doc}");
    assert_eq!(doc["status"], "422", "{doc}");
    assert!(
        doc["detail"]
            .as_str()
            .unwrap()
            .contains("max_instances_per_user = 2"),
        "{doc}"
    );
    assert_eq!(api.env.entries("instances").len(), 2);

    let r = send(api.client.get(api.url("/status"))).await;
    assert_eq!(r.json()["status"], "ok");
    assert_eq!(r.json()["newest_ready_image"], 1);
    let r = send(api.client.get(api.url("/metrics"))).await;
    let text = String::from_utf8_lossy(&r.body).to_string();
    assert!(
        text.contains("draupnir_newest_ready_image_age_seconds "),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let api = Api::start(
        "shared_secret = \"the-upload-shared-secret\"\nuse_x_forwarded_for = true\ntrusted_proxy_cidrs = [\"10.0.0.0/8\"]",
        "listen_address = \"127.0.0.1:0\"",
        "",
    )
    .await;
    api.env.ready_image(None).await;
    let (status, doc) = create_with_xff(&api, "198.51.100.23").await;
    assert_eq!(status, 201, "{doc}");
    let id: InstanceId = doc["data"]["id"].as_str().unwrap().parse().unwrap();
    let admin = api.env.admin();
    assert_eq!(
        api.env.svc().allowed_addresses(&admin, id).unwrap(),
        vec!["127.0.0.1"]
    );
}
