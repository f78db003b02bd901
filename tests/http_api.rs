//! The HTTPS API against LEGACY_API.md, with a real client over TLS on
//! loopback: every route's status, headers and JSON shape, credentials that
//! really connect, who sees what, the version check, bad inputs, the OAuth
//! flow against a fake provider, TLS certificate reuse and plain HTTP.

mod common;

use std::future::Future;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use common::http::*;
use common::shared::Shared;
use common::*;
use draupnir::core::{ConnectionInfo, ImageId, InstanceId, InstanceRef, UploadTarget};
use reqwest::Method;
use serde_json::{json, Value};

const BASE: &str = "shared_secret = \"the-upload-shared-secret\"\nenvironment = \"test\"\ntrusted_user_email_domain = \"@example.com\"";

fn is_ts(v: &Value) -> bool {
    let s = v.as_str().unwrap_or("");
    s.len() == 20 && s.ends_with('Z') && s.as_bytes()[10] == b'T'
}

fn assert_image(v: &Value, id: ImageId, ready: bool) {
    assert_eq!(v["type"], "images");
    assert_eq!(v["id"], id.to_string());
    let a = &v["attributes"];
    assert_eq!(a["ready"], ready, "{v}");
    assert!(is_ts(&a["created_at"]) && is_ts(&a["updated_at"]), "{v}");
    let keys: Vec<&String> = a.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["backed_up_at", "created_at", "ready", "updated_at"]);
}

/// `GET /images/:id`: the 5.x attributes, and `anonymisation` besides
/// (null before the seal).
fn assert_image_shown(v: &Value, id: ImageId, ready: bool) -> Value {
    let mut v = v.clone();
    let a = v["attributes"]
        .as_object_mut()
        .unwrap()
        .remove("anonymisation")
        .expect("anonymisation on GET /images/:id");
    assert_image(&v, id, ready);
    a
}

fn assert_instance(v: &Value, image_id: ImageId) {
    assert_eq!(v["type"], "instances");
    assert!(v["id"].is_string(), "{v}");
    let a = &v["attributes"];
    assert_eq!(a["hostname"], "localhost");
    assert_eq!(a["image_id"], json!(image_id));
    assert!(a["port"].is_u64(), "{v}");
    assert!(is_ts(&a["created_at"]) && is_ts(&a["updated_at"]), "{v}");
}

/// Check the credentials document; returns connection info for psql.
fn check_credentials(api: &Api, doc: &Value) -> ConnectionInfo {
    let data = &doc["data"];
    let id = data["id"].as_str().unwrap().to_string();
    assert_eq!(
        data["relationships"],
        json!({"credentials": {"data": {"type": "credentials", "id": id}}})
    );
    let inc = doc["included"].as_array().unwrap();
    assert_eq!(inc.len(), 1);
    assert_eq!(inc[0]["type"], "credentials");
    assert_eq!(inc[0]["id"], id);
    let c = &inc[0]["attributes"];
    let pem = |k: &str| c[k].as_str().unwrap().to_string();
    let info = ConnectionInfo {
        instance: api
            .env
            .svc()
            .instance(&api.env.admin(), id.parse().unwrap())
            .unwrap(),
        host: "localhost".into(),
        port: data["attributes"]["port"].as_u64().unwrap() as u16,
        user: "draupnir".into(),
        database: "postgres".into(),
        credentials: draupnir::core::Credentials {
            ca_certificate: pem("ca_certificate"),
            client_certificate: pem("client_certificate"),
            client_key: pem("client_key").into(),
        },
    };
    // The client certificate is issued by the CA and matches the key.
    let files = ClientFiles::new(&info);
    let out = Command::new("openssl")
        .args([
            "verify",
            "-CAfile",
            &files.path("root.crt"),
            &files.path("client.crt"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pubkey = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(out.status.success());
        out.stdout
    };
    assert_eq!(
        pubkey(&[
            "x509",
            "-noout",
            "-pubkey",
            "-in",
            &files.path("client.crt")
        ]),
        pubkey(&["pkey", "-pubout", "-in", &files.path("client.key")])
    );
    info
}

/// The image and instance tests' shared world: one server; one image
/// created over HTTP (with an anonymisation script), uploaded through the
/// core and finalised over HTTP; an instance of it for the integration user
/// (image id as a string) and one for alice (image id as a number). The
/// replies are kept for the tests to check.
struct Ready {
    api: Api,
    /// Alice's (the bootstrap admin's) token.
    alice: String,
    image: ImageId,
    /// The first `POST /images/:id/done`.
    done: Reply,
    /// The integration user's `POST /instances`.
    inst1: Reply,
    /// Alice's `POST /instances`.
    inst2: Reply,
}

static READY: OnceLock<Shared<Ready>> = OnceLock::new();

const SCRIPT: &str = "UPDATE users SET email = 'x' || id || '@example.invalid';";

fn image_body(script: &str) -> Value {
    json!({"data": {"type": "images", "attributes": {
        "backed_up_at": "2016-01-02T03:04:05Z",
        "anonymisation_script": script}}})
}

fn instance_body(image_id: Value) -> Value {
    json!({"data": {"type": "instances", "attributes": {"image_id": image_id}}})
}

/// The id in a JSON:API document (`data.id`, a string).
fn id_of<T: std::str::FromStr>(doc: &Value) -> T {
    doc["data"]["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no id in {doc}"))
}

/// A bearer token for the bootstrap admin, minted by the core.
fn admin_token(api: &Api) -> String {
    api.env.svc().mint_token(&api.env.admin()).unwrap()
}

/// Upload the fixture into image `id` through the core.
async fn upload_through_core(api: &Api, id: ImageId) {
    api.env
        .svc()
        .ingest(
            &api.env.admin(),
            id,
            UploadTarget::File("base.tar.gz".into()),
            &FIXTURE.tar_gz[..],
        )
        .await
        .expect("upload");
}

async fn build_ready() -> Ready {
    let api = Api::start(BASE, DEFAULT_HTTP, "").await;
    let alice = admin_token(&api);
    let r = api
        .call(
            Method::POST,
            "/images",
            Some(SECRET),
            Some(image_body(SCRIPT)),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let image = id_of(&r.json());
    upload_through_core(&api, image).await;
    let started = std::time::Instant::now();
    let done = api
        .call(
            Method::POST,
            &format!("/images/{image}/done"),
            Some(SECRET),
            Some(json!({})),
        )
        .await;
    eprintln!("finalise over HTTP: {:?}", started.elapsed());
    let started = std::time::Instant::now();
    let inst1 = api
        .call(
            Method::POST,
            "/instances",
            Some(INTEGRATION),
            Some(instance_body(json!(image.to_string()))),
        )
        .await;
    eprintln!("POST /instances: {:?}", started.elapsed());
    let inst2 = api
        .call(
            Method::POST,
            "/instances",
            Some(&alice),
            Some(instance_body(json!(image))),
        )
        .await;
    Ready {
        api,
        alice,
        image,
        done,
        inst1,
        inst2,
    }
}

/// Run a test on the shared world of ready image and instances.
async fn on_ready<Fut>(test: impl FnOnce(&'static Ready) -> Fut)
where
    Fut: Future<Output = ()> + Send + 'static,
{
    Shared::get(&READY, build_ready, |r| r.api.env.teardown())
        .await
        .run(test)
        .await
}

fn not_found() -> Value {
    error_doc(
        404,
        "resource_not_found",
        "Resource Not Found",
        "The resource you requested could not be found",
        json!({}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_needs_no_version_and_no_token() {
    on_ready(|w| async move {
        let r = send(w.api.client.get(w.api.url("/health_check"))).await;
        assert_eq!(r.status, 200);
        r.assert_api_headers();
        assert_eq!(r.json(), json!({"status": "ok"}));
    })
    .await
}

/// A world of its own: the image list starts empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_posted_image_is_uploading_listed_and_found() {
    let api = Api::start(BASE, DEFAULT_HTTP, "").await;
    let alice_token = admin_token(&api);

    // GET /images, empty.
    let r = api.get("/images", SECRET).await;
    assert_eq!(r.status, 200);
    r.assert_api_headers();
    assert_eq!(r.json(), json!({"data": []}));

    // POST /images.
    let r = api
        .call(
            Method::POST,
            "/images",
            Some(SECRET),
            Some(image_body(SCRIPT)),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.assert_api_headers();
    let doc = r.json();
    let id = id_of(&doc);
    assert_image(&doc["data"], id, false);
    assert_eq!(
        doc["data"]["attributes"]["backed_up_at"],
        "2016-01-02T03:04:05Z"
    );
    assert!(
        api.env.svc().image_path(id).0.is_dir(),
        "upload subvolume exists"
    );

    // GET /images and /images/:id.
    let r = api.get("/images", SECRET).await;
    assert_eq!(r.json()["data"].as_array().unwrap().len(), 1);
    assert_image(&r.json()["data"][0], id, false);
    let r = api.get(&format!("/images/{id}"), &alice_token).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        assert_image_shown(&r.json()["data"], id, false),
        Value::Null
    );
    api.server.unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_or_malformed_image_ids_are_404() {
    on_ready(|w| async move {
        for bad in ["999", "abc", "99999999999999999999999", "-1", "1.0"] {
            let r = w.api.get(&format!("/images/{bad}"), SECRET).await;
            assert_eq!(r.status, 404, "{bad}");
            r.assert_api_headers();
            assert_eq!(r.json(), not_found(), "{bad}");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_not_yet_ready_gets_no_instance() {
    on_ready(|w| async move {
        let r = w
            .api
            .call(
                Method::POST,
                "/images",
                Some(SECRET),
                Some(image_body(SCRIPT)),
            )
            .await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        let id: ImageId = id_of(&r.json());
        let r = w
            .api
            .call(
                Method::POST,
                "/instances",
                Some(INTEGRATION),
                Some(instance_body(json!(id.to_string()))),
            )
            .await;
        assert_eq!(r.status, 422);
        r.assert_api_headers();
        assert_eq!(
            r.json(),
            error_doc(
                422,
                "unprocessable_entity",
                "Image Not Ready",
                "The specified image is not ready to be used",
                json!({"parameter": "image_id"})
            )
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn done_finalises_and_answers_at_once_when_ready() {
    on_ready(|w| async move {
        let id = w.image;
        let r = &w.done;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.assert_api_headers();
        assert_image(&r.json()["data"], id, true);
        let started = std::time::Instant::now();
        let r = w
            .api
            .call(
                Method::POST,
                &format!("/images/{id}/done"),
                Some(SECRET),
                None,
            )
            .await;
        assert_eq!(r.status, 200);
        assert_image(&r.json()["data"], id, true);
        assert!(
            started.elapsed().as_secs() < 2,
            "already ready answers at once"
        );
        // Its anonymisation: a script and no rules, sealed because this
        // world does not require coverage: unchecked.
        let r = w.api.get(&format!("/images/{id}"), SECRET).await;
        let a = assert_image_shown(&r.json()["data"], id, true);
        assert_eq!(a["status"], "unchecked", "{a}");
        assert_eq!(a["script"], true, "{a}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_integration_user_gets_an_instance_whose_credentials_connect() {
    on_ready(|w| async move {
        let r = &w.inst1;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        r.assert_api_headers();
        let doc = r.json();
        assert_instance(&doc["data"], w.image);
        let info = check_credentials(&w.api, &doc);
        let n = psql_cert(
            &info,
            "SELECT count(*) FROM users WHERE email LIKE '%@example.invalid'",
        )
        .expect("psql");
        assert_eq!(
            n,
            FIXTURE_USERS.to_string(),
            "anonymised data over the returned credentials"
        );
        let admin = w.api.env.admin();
        assert_eq!(
            w.api
                .env
                .svc()
                .allowed_addresses(&admin, info.instance.id)
                .unwrap(),
            vec!["127.0.0.1".to_string()]
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_id_may_be_given_as_a_number() {
    on_ready(|w| async move {
        let r = &w.inst2;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    })
    .await
}

/// Nothing else in this binary makes instances for the integration user or
/// alice in the shared world, so their listings are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_listings_hold_only_ones_own_and_follow_every_change() {
    on_ready(|w| async move {
        let (api, id) = (&w.api, w.image);
        let (inst1, inst2): (InstanceId, InstanceId) =
            (id_of(&w.inst1.json()), id_of(&w.inst2.json()));
        // GET /instances: only one's own, without relationships.
        let r = api.get("/instances", INTEGRATION).await;
        assert_eq!(r.status, 200);
        r.assert_api_headers();
        let list = r.json();
        let data = list["data"].as_array().unwrap();
        assert_eq!(data.len(), 1);
        assert_eq!(data[0]["id"], inst1.to_string());
        assert_instance(&data[0], id);
        assert!(data[0].get("relationships").is_none() && list.get("included").is_none());
        let r = api.get("/instances", &w.alice).await;
        let data = r.json()["data"].as_array().unwrap().clone();
        assert_eq!(data.len(), 1);
        assert_eq!(data[0]["id"], inst2.to_string());

        // The listing is kept rendered between changes: the same bytes
        // again, and every change, whichever door made it, shows at once.
        let kept = api.get("/instances", &w.alice).await;
        assert_eq!(kept.body, r.body);
        assert_eq!(kept.header("content-type"), "application/json");
        let svc = api.env.svc();
        let admin = api.env.admin();
        let inst3 = svc
            .create_instance(&admin, InstanceRef::Id(id))
            .await
            .expect("a core create")
            .instance
            .id;
        let r = api.get("/instances", &w.alice).await;
        let ids: Vec<_> = r.json()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids, [inst2.to_string(), inst3.to_string()]);
        assert_eq!(
            api.get("/instances", INTEGRATION).await.json()["data"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        svc.destroy_instance(&admin, inst3).await.unwrap();
        let r = api.get("/instances", &w.alice).await;
        assert_eq!(r.json()["data"].as_array().unwrap().len(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ones_own_instance_shows_its_credentials_and_others_are_404() {
    on_ready(|w| async move {
        let api = &w.api;
        let (inst1, inst2): (InstanceId, InstanceId) =
            (id_of(&w.inst1.json()), id_of(&w.inst2.json()));
        let r = api.get(&format!("/instances/{inst1}"), INTEGRATION).await;
        assert_eq!(r.status, 200);
        r.assert_api_headers();
        check_credentials(api, &r.json());
        let r = api.get(&format!("/instances/{inst2}"), INTEGRATION).await;
        assert_eq!(r.status, 404);
        assert_eq!(r.json(), not_found());
        let r = api
            .call(
                Method::DELETE,
                &format!("/instances/{inst2}"),
                Some(INTEGRATION),
                None,
            )
            .await;
        assert_eq!(r.status, 404);
        for bad in ["abc", "99999999999999999999"] {
            let r = api.get(&format!("/instances/{bad}"), INTEGRATION).await;
            assert_eq!(r.status, 404, "{bad}");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_image_ids_are_400_and_unknown_images_404() {
    on_ready(|w| async move {
        let api = &w.api;
        let bad_id = error_doc(
            400,
            "bad_request",
            "Bad Request",
            "The image ID provided is not valid",
            json!({"parameter": "image_id"}),
        );
        for v in [
            json!("abc"),
            json!({}),
            json!([]),
            json!(null),
            json!(true),
            json!(1.5),
            json!(-3),
            json!("99999999999999999999"),
            json!(99999999999999999999u128 as f64),
            json!(""),
        ] {
            let r = api
                .call(
                    Method::POST,
                    "/instances",
                    Some(INTEGRATION),
                    Some(instance_body(v.clone())),
                )
                .await;
            assert_eq!(r.status, 400, "{v}");
            r.assert_api_headers();
            assert_eq!(r.json(), bad_id, "{v}");
        }
        let r = api
            .call(
                Method::POST,
                "/instances",
                Some(INTEGRATION),
                Some(instance_body(json!("4242"))),
            )
            .await;
        assert_eq!(r.status, 404);
        assert_eq!(
            r.json(),
            error_doc(
                404,
                "resource_not_found",
                "Image Not Found",
                "The image you specified could not be found",
                json!({})
            )
        );
    })
    .await
}

/// A world of its own: deleting the image takes every instance, row,
/// subvolume and postmaster with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upload_user_alone_deletes_an_image_with_instances() {
    let api = Api::start(BASE, DEFAULT_HTTP, "").await;
    let alice_token = admin_token(&api);
    let id = api.env.ready_image(None).await;
    let mut instances: Vec<InstanceId> = Vec::new();
    for token in [INTEGRATION, alice_token.as_str()] {
        let r = api
            .call(
                Method::POST,
                "/instances",
                Some(token),
                Some(instance_body(json!(id))),
            )
            .await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        instances.push(id_of(&r.json()));
    }
    let inst1 = instances[0];

    // DELETE /images/:id: an admin who is not the upload user gets 422.
    let r = api
        .call(
            Method::DELETE,
            &format!("/images/{id}"),
            Some(&alice_token),
            None,
        )
        .await;
    assert_eq!(r.status, 422);
    r.assert_api_headers();
    assert_eq!(
        r.json(),
        error_doc(
            422,
            "unprocessable_entity",
            "Image Has Instances",
            "Cannot delete an image that has instances",
            json!({})
        )
    );

    // DELETE /instances/:id by its owner.
    let r = api
        .call(
            Method::DELETE,
            &format!("/instances/{inst1}"),
            Some(INTEGRATION),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    r.assert_api_headers();
    assert!(r.body.is_empty());

    // The upload user deletes an image with instances.
    let r = api
        .call(Method::DELETE, &format!("/images/{id}"), Some(SECRET), None)
        .await;
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    r.assert_api_headers();
    assert!(r.body.is_empty());
    assert!(api
        .env
        .svc()
        .list_instances(&api.env.admin(), true)
        .unwrap()
        .is_empty());
    assert!(api.env.entries("instances").is_empty());
    assert!(api.env.postmasters().is_empty());
    let r = api.get(&format!("/images/{id}"), SECRET).await;
    assert_eq!(r.status, 404);
    api.server.unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_off_unless_configured() {
    on_ready(|w| async move {
        let r = send(w.api.client.get(w.api.url("/metrics"))).await;
        assert_eq!(r.status, 404);
        r.assert_api_headers();
    })
    .await
}

/// The version, authentication and bad-input tests' shared world: a server
/// with plain HTTP and metrics on and a 64K body limit, where nothing ever
/// creates an image or an instance; bob is a plain user.
struct Guarded {
    api: Api,
    /// Bob's token.
    bob: String,
}

static GUARDED: OnceLock<Shared<Guarded>> = OnceLock::new();

async fn build_guarded() -> Guarded {
    let api = Api::start(
        BASE,
        "listen_address = \"127.0.0.1:0\"\ninsecure_listen_address = \"127.0.0.1:0\"\nmetrics = true\nmax_body_size = \"64K\"",
        "",
    )
    .await;
    let user = api.env.user("bob");
    let bob = api.env.svc().mint_token(&user).unwrap();
    Guarded { api, bob }
}

/// Run a test on the guarded world.
async fn on_guarded<Fut>(test: impl FnOnce(&'static Guarded) -> Fut)
where
    Fut: Future<Output = ()> + Send + 'static,
{
    Shared::get(&GUARDED, build_guarded, |g| g.api.env.teardown())
        .await
        .run(test)
        .await
}

/// No request in the guarded world creates an image.
fn assert_nothing_created(api: &Api) {
    assert!(
        api.env
            .svc()
            .list_images(&api.env.admin())
            .unwrap()
            .is_empty(),
        "nothing was created"
    );
}

fn unauthorized() -> Value {
    error_doc(
        401,
        "unauthorized",
        "Unauthorized",
        "You do not have permission to view this resource",
        json!({}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_version_header_is_400() {
    on_guarded(|g| async move {
        let api = &g.api;
        let r = send(api.client.get(api.url("/images")).bearer_auth(SECRET)).await;
        assert_eq!(r.status, 400);
        r.assert_api_headers();
        assert_eq!(
            r.json(),
            error_doc(
                400,
                "missing_api_version_header",
                "Missing API Version Header",
                "No API version specified in Draupnir-Version header",
                json!({})
            )
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_major_a_newer_minor_or_garbage_is_400_before_auth() {
    on_guarded(|g| async move {
        let api = &g.api;
        for v in ["4.0.0", "6.3.6", "5.4.0", "garbage", "5.3", "5.3.6.1", ""] {
            let r = send(
                api.client
                    .get(api.url("/images"))
                    .header("Draupnir-Version", v),
            )
            .await;
            assert_eq!(r.status, 400, "{v}");
            r.assert_api_headers();
            assert_eq!(
                r.json(),
                error_doc(
                    400,
                    "invalid_api_version",
                    "Invalid API Version",
                    &format!("Specified API version ({v}) does not match server version (5.3.6)"),
                    json!({})
                ),
                "version checked before auth"
            );
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_major_with_an_older_or_newer_patch_is_accepted() {
    on_guarded(|g| async move {
        let api = &g.api;
        for v in ["5.3.6", "5.3.99", "5.0.0"] {
            let r = send(
                api.client
                    .get(api.url("/images"))
                    .header("Draupnir-Version", v)
                    .bearer_auth(SECRET),
            )
            .await;
            assert_eq!(r.status, 200, "{v}");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_known_bearer_token_is_let_in() {
    on_guarded(|g| async move {
        let api = &g.api;
        let r = api.call(Method::GET, "/images", None, None).await;
        assert_eq!(r.status, 401);
        r.assert_api_headers();
        assert_eq!(r.json(), unauthorized());
        for t in [
            "wrong",
            "the-upload-shared-secreT",
            "the-upload-shared-secret-",
            "drp_00",
        ] {
            let r = api.get("/images", t).await;
            assert_eq!(r.status, 401, "{t}");
            assert_eq!(r.json(), unauthorized());
        }
        let r = send(
            api.client
                .get(api.url("/images"))
                .header("Draupnir-Version", VERSION)
                .header("Authorization", format!("Basic {SECRET}")),
        )
        .await;
        assert_eq!(r.status, 401);
        assert_eq!(api.get("/images", &g.bob).await.status, 200);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_user_may_not_create_images() {
    on_guarded(|g| async move {
        let body = json!({"data": {"type": "images", "attributes": {"backed_up_at": "2016-01-02T03:04:05Z", "anonymisation_script": ""}}});
        let r = g
            .api
            .call(Method::POST, "/images", Some(&g.bob), Some(body))
            .await;
        assert_eq!(r.status, 401);
        assert_eq!(r.json(), unauthorized());
        assert_nothing_created(&g.api);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_route_is_404_and_a_wrong_method_405() {
    on_guarded(|g| async move {
        let api = &g.api;
        let r = api.get("/nope", SECRET).await;
        assert_eq!(r.status, 404);
        r.assert_api_headers();
        assert_eq!(r.json()["code"], "resource_not_found");
        let r = send(api.client.get(api.url("/nope"))).await;
        assert_eq!(r.status, 404);
        r.assert_api_headers();
        let r = api.call(Method::PUT, "/images", Some(SECRET), None).await;
        assert_eq!(r.status, 405);
        r.assert_api_headers();
        assert_eq!(r.json()["status"], "405");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_or_mistyped_body_is_400() {
    on_guarded(|g| async move {
        let api = &g.api;
        let invalid_json = error_doc(
            400,
            "bad_request",
            "Invalid JSON",
            "Your JSON is malformed",
            json!({}),
        );
        for raw in [
            "{",
            "",
            "[]",
            "{\"data\": 5}",
            "{\"data\":{\"attributes\":{\"backed_up_at\":5}}}",
            "{\"data\":{\"attributes\":{\"anonymisation_script\":{}}}}",
        ] {
            let r = send(
                api.client
                    .post(api.url("/images"))
                    .header("Draupnir-Version", VERSION)
                    .bearer_auth(SECRET)
                    .body(raw),
            )
            .await;
            assert_eq!(r.status, 400, "{raw}");
            r.assert_api_headers();
            assert_eq!(r.json(), invalid_json, "{raw}");
        }
        let r = send(
            api.client
                .post(api.url("/instances"))
                .header("Draupnir-Version", VERSION)
                .bearer_auth(SECRET)
                .body("{not json"),
        )
        .await;
        assert_eq!(r.json(), invalid_json);
        let r = api
            .call(
                Method::POST,
                "/images",
                Some(SECRET),
                Some(json!({"data": {"type": "images", "attributes": {"backed_up_at": "yesterday"}}})),
            )
            .await;
        assert_eq!(r.status, 400);
        assert_eq!(r.json()["source"], json!({"parameter": "backed_up_at"}));
        // Masking rules that do not parse: refused with their line.
        let r = api
            .call(
                Method::POST,
                "/images",
                Some(SECRET),
                Some(json!({"data": {"type": "images", "attributes": {
                    "masking_rules": "[app.users]\nemail = \"emial\"\n"}}})),
            )
            .await;
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
        let detail = r.json()["detail"].as_str().unwrap_or_default().to_string();
        assert!(
            detail.contains("line 2") && detail.contains("email") && !detail.contains('\n'),
            "{detail}"
        );
        assert_nothing_created(api);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_413() {
    on_guarded(|g| async move {
        let api = &g.api;
        let huge = format!(
            "{{\"data\":{{\"attributes\":{{\"anonymisation_script\":\"{}\"}}}}}}",
            "x".repeat(2 << 20)
        );
        let r = send(
            api.client
                .post(api.url("/images"))
                .header("Draupnir-Version", VERSION)
                .bearer_auth(SECRET)
                .body(huge),
        )
        .await;
        assert_eq!(r.status, 413);
        r.assert_api_headers();
        assert_eq!(r.json()["code"], "payload_too_large");
        assert_nothing_created(api);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_serves_when_configured_but_not_on_the_https_port() {
    on_guarded(|g| async move {
        let api = &g.api;
        let plain = api.server().http_addr().expect("plain listener");
        let r = send(reqwest::Client::new().get(format!("http://{plain}/health_check"))).await;
        assert_eq!(r.status, 200);
        r.assert_api_headers();
        let r = send(
            reqwest::Client::new()
                .get(format!("http://{plain}/images"))
                .header("Draupnir-Version", VERSION)
                .bearer_auth(SECRET),
        )
        .await;
        assert_eq!(r.status, 200);
        // The HTTPS port does not speak plain HTTP.
        assert!(reqwest::Client::new()
            .get(format!("http://{}/health_check", api.addr))
            .send()
            .await
            .map(|r| r.status() != 200)
            .unwrap_or(true));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_when_configured_are_prometheus_text_without_auth() {
    on_guarded(|g| async move {
        let api = &g.api;
        // What the counters below count: a 401 on /images, an unmatched 404.
        assert_eq!(
            api.call(Method::GET, "/images", None, None).await.status,
            401
        );
        assert_eq!(send(api.client.get(api.url("/nope"))).await.status, 404);
        let r = send(api.client.get(api.url("/metrics"))).await;
        assert_eq!(r.status, 200);
        assert!(r.header("content-type").starts_with("text/plain"));
        assert_eq!(r.header("draupnir-version"), VERSION);
        let text = String::from_utf8(r.body.clone()).unwrap();
        for needle in [
            "draupnir_images{state=\"ready\"} 0",
            "draupnir_instances{state=\"running\"} 0",
            "draupnir_ssh_sessions 0",
            "draupnir_instance_creates_total 0",
            "draupnir_finalise_seconds_count 0",
            "draupnir_http_requests_total{route=\"/images\",method=\"GET\",status=\"401\"}",
            "draupnir_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"}",
        ] {
            assert!(text.contains(needle), "{needle} in\n{text}");
        }
    })
    .await
}

/// The counters are the core's: an instance made and destroyed over SSH
/// (the SSH command path, in process) and a finalise are counted in
/// `/metrics` like work asked for over HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_work_done_over_ssh() {
    use draupnir::ssh::commands::{self, Io, Session};
    let api = Api::start(
        BASE,
        "listen_address = \"127.0.0.1:0\"\ninsecure_listen_address = \"127.0.0.1:0\"\nmetrics = true",
        "",
    )
    .await;
    let image = api.env.ready_image(None).await;
    let session = Session {
        service: api.env.svc().clone(),
        actor: api.env.admin(),
        peer: Some("192.0.2.7".parse().unwrap()),
        ssh_port: 2222,
    };
    let ssh = |line: String| {
        let session = session.clone();
        async move {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let code = commands::run(
                &session,
                shell_words::split(&line).unwrap(),
                Io {
                    stdin: &mut &b""[..],
                    stdout: &mut out,
                    stderr: &mut err,
                },
            )
            .await;
            assert_eq!(code, 0, "{line}: {}", String::from_utf8_lossy(&err));
            serde_json::from_slice::<Value>(&out).unwrap_or(Value::Null)
        }
    };
    let made = ssh(format!("new-instance {image} --json")).await;
    let id: i64 = made["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("an instance id");
    let metrics = || async {
        let r = send(api.client.get(api.url("/metrics"))).await;
        assert_eq!(r.status, 200);
        String::from_utf8(r.body).unwrap()
    };
    let text = metrics().await;
    for needle in [
        "draupnir_instance_creates_total 1",
        "draupnir_instance_destroys_total 0",
        "draupnir_finalise_seconds_count 1",
        "draupnir_instances{state=\"running\"} 1",
    ] {
        assert!(text.contains(needle), "{needle} in\n{text}");
    }
    // The address the SSH client came from is on the allow-list: the core
    // recorded it, not the front door.
    assert_eq!(
        api.env
            .svc()
            .allowed_addresses(&api.env.admin(), InstanceId::new(id))
            .unwrap(),
        vec!["192.0.2.7".to_string()]
    );
    ssh(format!("destroy-instance {id}")).await;
    let text = metrics().await;
    assert!(
        text.contains("draupnir_instance_destroys_total 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_a_500_json_answer() {
    on_guarded(|g| async move {
        use tower::ServiceExt;
        let app = draupnir::http::app_with(
            g.api.env.svc().clone(),
            &g.api.env.config,
            axum::Router::new().route(
                "/boom",
                axum::routing::get(|| async {
                    if std::hint::black_box(true) {
                        panic!("boom");
                    }
                    "unreachable"
                }),
            ),
        )
        .unwrap();
        let resp = app
            .oneshot(
                axum::http::Request::get("/boom")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 500);
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert_eq!(resp.headers()["draupnir-version"], VERSION);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&body).unwrap(),
            error_doc(
                500,
                "internal_server_error",
                "Internal Server Error",
                "Something went wrong :(",
                json!({})
            )
        );
    })
    .await
}

/// A small OAuth provider on loopback: `/token` exchanges `good-code` and
/// refreshes known refresh tokens (counting refreshes), `/userinfo` maps
/// access tokens to e-mails.
struct FakeProvider {
    addr: std::net::SocketAddr,
    refreshes: Arc<AtomicUsize>,
}

fn form(body: &str) -> std::collections::HashMap<String, String> {
    body.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%40", "@")))
        .collect()
}

async fn fake_provider() -> FakeProvider {
    use axum::http::{HeaderMap, StatusCode as S};
    use axum::routing::{get, post};
    let refreshes = Arc::new(AtomicUsize::new(0));
    let count = refreshes.clone();
    let token = move |body: String| {
        let count = count.clone();
        async move {
            let f = form(&body);
            let grant = f.get("grant_type").map(String::as_str);
            let ok = |access: &str, refresh: Option<&str>| {
                let mut v =
                    json!({"access_token": access, "token_type": "Bearer", "expires_in": 3600});
                if let Some(r) = refresh {
                    v["refresh_token"] = json!(r);
                }
                (S::OK, [("content-type", "application/json")], v.to_string())
            };
            let refused = (
                S::BAD_REQUEST,
                [("content-type", "application/json")],
                json!({"error": "invalid_grant"}).to_string(),
            );
            match (
                grant,
                f.get("code").map(String::as_str),
                f.get("refresh_token").map(String::as_str),
            ) {
                (Some("authorization_code"), Some("good-code"), _) => {
                    ok("at-login", Some("rt-dev"))
                }
                (Some("refresh_token"), _, Some(rt)) => {
                    count.fetch_add(1, Ordering::SeqCst);
                    match rt {
                        "rt-dev" => ok("at-dev", None),
                        "rt-dave" => ok("at-dave", None),
                        "rt-evil" => ok("at-evil", None),
                        _ => refused,
                    }
                }
                _ => refused,
            }
        }
    };
    let userinfo = |headers: HeaderMap| async move {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let email = match auth {
            "Bearer at-dev" => "dev@example.com",
            "Bearer at-dave" => "dave@example.com",
            "Bearer at-evil" => "dev@evil-example.com",
            _ => return (S::UNAUTHORIZED, String::new()),
        };
        (
            S::OK,
            json!({"email": email, "email_verified": true}).to_string(),
        )
    };
    let app = axum::Router::new()
        .route("/auth", get(|| async { "consent" }))
        .route("/token", post(token))
        .route("/userinfo", get(userinfo));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    FakeProvider { addr, refreshes }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_flow_against_a_fake_provider() {
    let p = fake_provider().await;
    let oauth = format!(
        "client_id = \"draupnir-test\"\nclient_secret = \"s3cret\"\nredirect_url = \"https://localhost/oauth_callback\"\n\
         auth_url = \"http://{a}/auth\"\ntoken_url = \"http://{a}/token\"\nuserinfo_url = \"http://{a}/userinfo\"\n\
         cache_ttl = \"30s\"\ncallback_timeout = \"3s\"",
        a = p.addr
    );
    let api = Arc::new(Api::start(BASE, DEFAULT_HTTP, &oauth).await);
    let svc = api.env.svc().clone();
    let admin = api.env.admin();

    // GET /authenticate → 302 to the provider's consent page.
    let r = send(api.client.get(api.url("/authenticate?state=abc123"))).await;
    assert_eq!(r.status, 302);
    let loc = r.header("location").to_string();
    assert!(
        loc.starts_with(&format!("http://{}/auth?", p.addr)),
        "{loc}"
    );
    for part in [
        "state=abc123",
        "access_type=offline",
        "client_id=draupnir-test",
        "response_type=code",
        "email",
    ] {
        assert!(loc.contains(part), "{part} in {loc}");
    }

    // POST /access_tokens waits for the callback.
    let waiter = {
        let api = api.clone();
        tokio::spawn(async move {
            api.call(
                Method::POST,
                "/access_tokens",
                None,
                Some(json!({"data": {"type": "access_tokens", "attributes": {"state": "abc123"}}})),
            )
            .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let r = send(
        api.client
            .get(api.url("/oauth_callback?code=good-code&state=abc123")),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").starts_with("text/html"));
    assert!(String::from_utf8_lossy(&r.body).contains("close this tab"));
    let r = waiter.await.unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.assert_api_headers();
    let token = r.json();
    assert_eq!(token["access_token"], "at-login");
    assert_eq!(token["token_type"], "Bearer");
    assert_eq!(token["refresh_token"], "rt-dev");
    assert!(is_ts(&token["expiry"]), "{token}");

    // The callback may come first, too.
    let r = send(
        api.client
            .get(api.url("/oauth_callback?code=good-code&state=early")),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = api
        .call(
            Method::POST,
            "/access_tokens",
            None,
            Some(json!({"data": {"type": "access_tokens", "attributes": {"state": "early"}}})),
        )
        .await;
    assert_eq!(r.status, 201);

    // A bad code, and no callback at all: 400 OAuth Error.
    let bad = {
        let api = api.clone();
        tokio::spawn(async move {
            api.call(
                Method::POST,
                "/access_tokens",
                None,
                Some(json!({"data": {"type": "access_tokens", "attributes": {"state": "bad"}}})),
            )
            .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let r = send(
        api.client
            .get(api.url("/oauth_callback?code=stolen&state=bad")),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = bad.await.unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["title"], "OAuth Error");
    assert_eq!(r.json()["code"], "oauth_error");
    let r = api
        .call(
            Method::POST,
            "/access_tokens",
            None,
            Some(json!({"data": {"type": "access_tokens", "attributes": {"state": "never"}}})),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["title"], "OAuth Error");

    // The refresh token authenticates; a burst asks the provider once.
    let before = p.refreshes.load(Ordering::SeqCst);
    let mut burst = Vec::new();
    for _ in 0..8 {
        let api = api.clone();
        burst.push(tokio::spawn(async move {
            api.get("/instances", "rt-dev").await.status
        }));
    }
    for b in burst {
        assert_eq!(b.await.unwrap(), 200);
    }
    assert_eq!(p.refreshes.load(Ordering::SeqCst) - before, 1, "cached");
    let dev = svc
        .actor_for("dev@example.com")
        .unwrap()
        .expect("OAuth user created");
    assert!(!dev.is_admin());

    // A user added over SSH with that e-mail is the same user.
    svc.add_user(&admin, "dave", Some("dave@example.com"), false)
        .unwrap();
    assert_eq!(api.get("/instances", "rt-dave").await.status, 200);
    assert!(
        svc.actor_for("dave@example.com").unwrap().is_none(),
        "no second user"
    );

    // Revoked token, untrusted domain: 401.
    let r = api.get("/instances", "rt-revoked").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["code"], "unauthorized");
    assert_eq!(api.get("/instances", "rt-evil").await.status, 401);
    assert!(svc.actor_for("dev@evil-example.com").unwrap().is_none());

    // Without state: 400.
    let r = send(api.client.get(api.url("/authenticate"))).await;
    assert_eq!(r.status, 400);
    r.assert_api_headers();
}

fn served_fingerprint(addr: std::net::SocketAddr) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256"
        ))
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(s.contains("Fingerprint"), "no certificate served: {s}");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_certificate_is_generated_kept_and_reused() {
    use std::os::unix::fs::PermissionsExt;
    let mut api = Api::start(BASE, DEFAULT_HTTP, "").await;
    assert!(
        api.server().http_addr().is_none(),
        "no plain HTTP unless configured"
    );
    assert_eq!(api.server().local_addrs().len(), 1);
    let crt = api.env.config.state_path.join("http/tls.crt");
    let key = api.env.config.state_path.join("http/tls.key");
    for f in [&crt, &key] {
        assert_eq!(
            std::fs::metadata(f).unwrap().permissions().mode() & 0o777,
            0o600,
            "{f:?}"
        );
    }
    let first = served_fingerprint(api.addr);
    let file_fp = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(&crt)
        .output()
        .unwrap();
    assert_eq!(first, String::from_utf8_lossy(&file_fp.stdout).trim());
    // The hostname verifies against the served certificate (client_for trusts it).
    assert_eq!(
        send(api.client.get(api.url("/health_check"))).await.status,
        200
    );

    // Restart: the same certificate.
    api.server.take().unwrap().shutdown().await;
    api.env.reopen().await;
    let server = draupnir::http::serve(api.env.svc().clone(), &api.env.config)
        .await
        .unwrap();
    let addr = server.https_addr().unwrap();
    assert_eq!(served_fingerprint(addr), first);
    let client = client_for(&api.env, addr);
    let r = send(client.get(format!("https://localhost:{}/health_check", addr.port()))).await;
    assert_eq!(r.status, 200);
    server.shutdown().await;

    // A configured certificate is served instead.
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = draupnir::certs::self_signed(
        &["other.example".to_string()],
        std::time::Duration::from_secs(3600),
    )
    .unwrap();
    std::fs::write(dir.path().join("c.pem"), &c).unwrap();
    std::fs::write(dir.path().join("k.pem"), &k).unwrap();
    let mut config = api.env.config.clone();
    config.http.tls_certificate = Some(dir.path().join("c.pem"));
    config.http.tls_private_key = Some(dir.path().join("k.pem"));
    let server = draupnir::http::serve(api.env.svc().clone(), &config)
        .await
        .unwrap();
    assert_ne!(served_fingerprint(server.https_addr().unwrap()), first);
    server.shutdown().await;
}
