//! The routes of LEGACY_API.md: parse the request, call the core, format
//! the JSON:API document. No business rule lives here.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::header::{CONTENT_TYPE, LOCATION};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::error::ApiError;
use super::middleware::{Authed, ClientAddr, JsonBody, OauthToken, PathId};
use super::AppState;
use crate::core::{Caller, ConnectionInfo, InstanceRef};
use crate::core::{Image, ImageId, ImageState, Instance, NewImage};

type ApiResult = Result<Response, ApiError>;

/// RFC 3339 UTC with a `Z`, whole seconds (`2016-01-02T03:04:05Z`).
pub fn timestamp(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    if (0..=9999).contains(&t.year()) {
        // What the RFC 3339 formatter writes for these, without it.
        return format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        );
    }
    let t = t.replace_nanosecond(0).unwrap_or(t);
    crate::core::format_ts(t)
}

fn image_doc(image: &Image) -> Value {
    json!({
        "type": "images",
        "id": image.id.to_string(),
        "attributes": {
            "backed_up_at": image.backed_up_at.map(timestamp),
            "ready": image.state == ImageState::Ready,
            "created_at": timestamp(image.created_at),
            "updated_at": timestamp(image.updated_at),
        }
    })
}

/// `GET /images/:id`'s document: the 5.x attributes and (not in the 5.x
/// contract; its clients ignore it) how the image was anonymised.
fn image_doc_shown(image: &Image) -> Value {
    let mut doc = image_doc(image);
    doc["attributes"]["anonymisation"] = json!(image.manifest());
    doc
}

fn instance_doc(state: &AppState, inst: &Instance) -> Value {
    json!({
        "type": "instances",
        "id": inst.id.to_string(),
        "attributes": {
            "hostname": state.service.config().public_hostname,
            "image_id": inst.image_id,
            "port": inst.port,
            "created_at": timestamp(inst.created_at),
            "updated_at": timestamp(inst.updated_at),
        }
    })
}

fn instance_with_credentials(state: &AppState, info: &ConnectionInfo) -> Value {
    let id = info.instance.id.to_string();
    let mut data = instance_doc(state, &info.instance);
    data["relationships"] = json!({"credentials": {"data": {"type": "credentials", "id": id}}});
    json!({
        "data": data,
        "included": [{
            "type": "credentials",
            "id": id,
            "attributes": {
                "ca_certificate": info.credentials.ca_certificate,
                "client_certificate": info.credentials.client_certificate,
                "client_key": info.credentials.client_key.expose(),
            }
        }]
    })
}

fn ok(status: StatusCode, body: Value) -> ApiResult {
    Ok((status, Json(body)).into_response())
}

fn no_content() -> ApiResult {
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A path id: digits that fit an i64, else the resource does not exist.
fn path_id<T: std::str::FromStr>(raw: &str) -> Result<T, ApiError> {
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::not_found());
    }
    raw.parse().map_err(|_| ApiError::not_found())
}

pub async fn health_check() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// Image freshness for monitoring (unauthenticated, like `/health_check`):
/// `status` is `ok`, `unchecked`, `stale` or `no_images`.
pub async fn status(State(state): State<AppState>) -> ApiResult {
    let st = state.service.status()?;
    ok(
        StatusCode::OK,
        serde_json::to_value(&st).unwrap_or_default(),
    )
}

pub async fn list_images(State(state): State<AppState>, Authed(actor): Authed) -> ApiResult {
    let images = state.service.list_images(&actor)?;
    let data: Vec<Value> = images.iter().map(image_doc).collect();
    ok(StatusCode::OK, json!({"data": data}))
}

pub async fn show_image(
    State(state): State<AppState>,
    Authed(actor): Authed,
    PathId(id): PathId,
) -> ApiResult {
    let image = state.service.image(&actor, path_id(&id)?)?;
    ok(StatusCode::OK, json!({"data": image_doc_shown(&image)}))
}

#[derive(Deserialize)]
pub struct CreateImageBody {
    data: CreateImageData,
}

#[derive(Deserialize)]
struct CreateImageData {
    #[serde(rename = "type")]
    kind: Option<String>,
    attributes: CreateImageAttributes,
}

#[derive(Deserialize)]
struct CreateImageAttributes {
    backed_up_at: Option<String>,
    anonymisation_script: Option<String>,
    /// The image's own masking rules (TOML text); not in the 5.x contract.
    masking_rules: Option<String>,
    /// Declared not personal; not in the 5.x contract.
    #[serde(default)]
    no_anonymisation: bool,
}

pub async fn create_image(
    State(state): State<AppState>,
    Authed(actor): Authed,
    JsonBody(body): JsonBody<CreateImageBody>,
) -> ApiResult {
    if body.data.kind.as_deref().is_some_and(|k| k != "images") {
        return Err(ApiError::wrong_type("images"));
    }
    let attrs = body.data.attributes;
    let backed_up_at = match attrs.backed_up_at.as_deref() {
        None => None,
        Some(s) => Some(
            OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).map_err(
                |_| {
                    ApiError::bad_request(
                        "backed_up_at must be an RFC 3339 timestamp",
                        Some("backed_up_at"),
                    )
                },
            )?,
        ),
    };
    let image = state.service.create_image(
        &actor,
        NewImage {
            backed_up_at,
            script: attrs.anonymisation_script,
            rules: attrs.masking_rules,
            no_anonymisation: attrs.no_anonymisation,
        },
    )?;
    ok(StatusCode::CREATED, json!({"data": image_doc(&image)}))
}

pub async fn image_done(
    State(state): State<AppState>,
    Authed(actor): Authed,
    PathId(id): PathId,
) -> ApiResult {
    let id = path_id(&id)?;
    let image = state.service.finalise_or_wait(&actor, id).await?;
    ok(StatusCode::OK, json!({"data": image_doc(&image)}))
}

pub async fn destroy_image(
    State(state): State<AppState>,
    Authed(actor): Authed,
    PathId(id): PathId,
) -> ApiResult {
    let id = path_id(&id)?;
    let cascade = state.service.destroys_image_instances(&actor);
    state.service.destroy_image(&actor, id, cascade).await?;
    no_content()
}

/// `{"data": [instance…]}`, serialised straight from the rows: the same
/// bytes [`instance_doc`] values would give (keys in the same, sorted,
/// order), without building a JSON tree per instance.
pub async fn list_instances(State(state): State<AppState>, Authed(actor): Authed) -> ApiResult {
    #[derive(serde::Serialize)]
    struct Attributes<'a> {
        created_at: String,
        hostname: &'a str,
        image_id: ImageId,
        port: u16,
        updated_at: String,
    }
    #[derive(serde::Serialize)]
    struct Doc<'a> {
        attributes: Attributes<'a>,
        id: String,
        #[serde(rename = "type")]
        kind: &'static str,
    }
    #[derive(serde::Serialize)]
    struct List<'a> {
        data: Vec<Doc<'a>>,
    }
    let config = state.service.config();
    let hostname = config.public_hostname.as_str();
    // Taken before the rows are read: a body is never newer than the
    // version it is kept under says.
    let version = state.service.listing_version();
    if let Some(body) = state.listings.get(actor.id(), version, hostname) {
        return Ok(json_body(body));
    }
    let instances = state.service.list_instances(&actor, false)?;
    let data = instances
        .iter()
        .map(|i| Doc {
            attributes: Attributes {
                created_at: timestamp(i.created_at),
                hostname,
                image_id: i.image_id,
                port: i.port,
                updated_at: timestamp(i.updated_at),
            },
            id: i.id.to_string(),
            kind: "instances",
        })
        .collect();
    let body = Bytes::from(serde_json::to_vec(&List { data }).map_err(|_| ApiError::internal())?);
    state
        .listings
        .put(actor.id(), version, hostname, body.clone());
    Ok(json_body(body))
}

/// `200 OK` with an already rendered JSON body.
fn json_body(body: Bytes) -> Response {
    (StatusCode::OK, [(CONTENT_TYPE, "application/json")], body).into_response()
}

/// `data.type`, when given, must name the collection posted to
/// (JSON:API: 409 Conflict otherwise).
fn check_type(given: Option<&Value>, expected: &str) -> Result<(), ApiError> {
    match given {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s)) if s == expected => Ok(()),
        Some(_) => Err(ApiError::wrong_type(expected)),
    }
}

/// `image_id` as a string of digits or a non-negative integer; anything
/// else is the contract's *Bad Request* on `image_id`.
fn image_id_of(body: &Value) -> Result<ImageId, ApiError> {
    match body.pointer("/data/attributes/image_id") {
        Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().map_err(|_| ApiError::bad_image_id())
        }
        Some(Value::Number(n)) => n
            .as_i64()
            .filter(|n| *n >= 0)
            .map(ImageId::new)
            .ok_or_else(ApiError::bad_image_id),
        _ => Err(ApiError::bad_image_id()),
    }
}

pub async fn create_instance(
    State(state): State<AppState>,
    Authed(actor): Authed,
    oauth: Option<axum::Extension<OauthToken>>,
    addr: ClientAddr,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult {
    if !body.is_object() {
        return Err(ApiError::invalid_json());
    }
    check_type(body.pointer("/data/type"), "instances")?;
    let image_id = image_id_of(&body)?;
    let opts = crate::core::NewInstance {
        oauth_refresh_token: oauth.map(|t| crate::secret::Secret::new(t.0 .0)),
        ..Default::default()
    };
    let info = state
        .service
        .create_instance_with(Caller::new(actor, addr.0), InstanceRef::Id(image_id), opts)
        .await
        .map_err(ApiError::for_image_reference)?;
    ok(
        StatusCode::CREATED,
        instance_with_credentials(&state, &info),
    )
}

pub async fn show_instance(
    State(state): State<AppState>,
    Authed(actor): Authed,
    addr: ClientAddr,
    PathId(id): PathId,
) -> ApiResult {
    let id = path_id(&id)?;
    let info = state
        .service
        .instance_credentials(Caller::new(actor, addr.0), id)?;
    ok(StatusCode::OK, instance_with_credentials(&state, &info))
}

pub async fn destroy_instance(
    State(state): State<AppState>,
    Authed(actor): Authed,
    PathId(id): PathId,
) -> ApiResult {
    let id = path_id(&id)?;
    state.service.destroy_instance(&actor, id).await?;
    no_content()
}

#[derive(Deserialize)]
pub struct StateQuery {
    state: Option<String>,
    code: Option<String>,
    error: Option<String>,
}

fn valid_state(s: &str) -> bool {
    !s.is_empty() && s.len() <= 512 && !s.chars().any(|c| c.is_control())
}

pub async fn authenticate(State(state): State<AppState>, Query(q): Query<StateQuery>) -> ApiResult {
    let Some(oauth) = &state.oauth else {
        return Err(ApiError::oauth_error(
            "OAuth is not configured on this server",
        ));
    };
    let Some(s) = q.state.filter(|s| valid_state(s)) else {
        return Err(ApiError::oauth_error("a state parameter is required"));
    };
    let url = oauth.authorize_url(&s);
    let mut response = StatusCode::FOUND.into_response();
    let location = HeaderValue::from_str(&url).map_err(|_| ApiError::internal())?;
    response.headers_mut().insert(LOCATION, location);
    Ok(response)
}

const CALLBACK_PAGE: &str =
    "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Draupnir</title></head>\
<body><p>You can close this tab and return to your terminal.</p></body></html>\n";
const CALLBACK_FAILED: &str =
    "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Draupnir</title></head>\
<body><p>Login failed. You can close this tab; your terminal shows the reason.</p></body></html>\n";

pub async fn oauth_callback(
    State(state): State<AppState>,
    Query(q): Query<StateQuery>,
) -> ApiResult {
    let Some(oauth) = &state.oauth else {
        return Err(ApiError::oauth_error(
            "OAuth is not configured on this server",
        ));
    };
    let Some(s) = q.state.filter(|s| valid_state(s)) else {
        return Err(ApiError::oauth_error("a state parameter is required"));
    };
    let ok = oauth
        .callback(&s, q.code.as_deref(), q.error.as_deref())
        .await;
    let (status, page) = if ok {
        (StatusCode::OK, CALLBACK_PAGE)
    } else {
        (StatusCode::OK, CALLBACK_FAILED)
    };
    let mut response = (status, page).into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    Ok(response)
}

#[derive(Deserialize)]
pub struct AccessTokenBody {
    data: AccessTokenData,
}

#[derive(Deserialize)]
struct AccessTokenData {
    #[serde(rename = "type")]
    _kind: Option<String>,
    attributes: AccessTokenAttributes,
}

#[derive(Deserialize)]
struct AccessTokenAttributes {
    state: String,
}

pub async fn access_tokens(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    JsonBody(body): JsonBody<AccessTokenBody>,
) -> ApiResult {
    let Some(oauth) = &state.oauth else {
        return Err(ApiError::oauth_error(
            "OAuth is not configured on this server",
        ));
    };
    let s = body.data.attributes.state;
    if !valid_state(&s) {
        return Err(ApiError::oauth_error("a state is required"));
    }
    match oauth.wait(&s, addr).await {
        Ok(token) => Ok((StatusCode::CREATED, Json(token)).into_response()),
        Err(reason) => Err(ApiError::oauth_error(&reason.to_string())),
    }
}

pub async fn metrics(State(state): State<AppState>) -> ApiResult {
    let census = state.service.census()?;
    let mut response = state.metrics.render(&census).into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_whole_utc_seconds() {
        let rfc = |s: &str| {
            OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
        };
        for (input, out) in [
            ("2016-01-02T03:04:05Z", "2016-01-02T03:04:05Z"),
            ("2016-01-02T03:04:05.999999Z", "2016-01-02T03:04:05Z"),
            ("2016-01-02T03:04:05+02:00", "2016-01-02T01:04:05Z"),
            ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"),
        ] {
            let t = rfc(input);
            assert_eq!(timestamp(t), out);
            // The same text the general formatter gives.
            let whole = t
                .to_offset(time::UtcOffset::UTC)
                .replace_nanosecond(0)
                .unwrap();
            assert_eq!(timestamp(t), crate::core::format_ts(whole));
        }
    }
}
