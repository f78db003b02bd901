//! The contract's error documents (LEGACY_API.md "Errors") and the one
//! mapping from [`CoreError`] to HTTP statuses.
//!
//! Every error the HTTP front door sends is built here, so the wire shape
//! (`id`, `status` as a string, `code`, `title`, `detail`, `source`) is
//! written in one place.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::core::CoreError;

/// An error as the contract spells it.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub parameter: Option<&'static str>,
}

#[derive(Serialize)]
struct Source {
    #[serde(skip_serializing_if = "Option::is_none")]
    parameter: Option<&'static str>,
}

/// Field order as the legacy server wrote it.
#[derive(Serialize)]
struct Body<'a> {
    id: &'a str,
    status: String,
    code: &'a str,
    title: &'a str,
    detail: &'a str,
    source: Source,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, title: &'static str, detail: &str) -> Self {
        ApiError {
            status,
            code,
            title,
            detail: detail.to_string(),
            parameter: None,
        }
    }

    fn with_parameter(mut self, parameter: &'static str) -> Self {
        self.parameter = Some(parameter);
        self
    }

    pub fn missing_version() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "missing_api_version_header",
            "Missing API Version Header",
            "No API version specified in Draupnir-Version header",
        )
    }

    pub fn invalid_version(given: &str, server: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_api_version",
            "Invalid API Version",
            &format!("Specified API version ({given}) does not match server version ({server})"),
        )
    }

    pub fn invalid_json() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "Invalid JSON",
            "Your JSON is malformed",
        )
    }

    pub fn bad_image_id() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "Bad Request",
            "The image ID provided is not valid",
        )
        .with_parameter("image_id")
    }

    /// Another 400 (a field of the right type with a bad value).
    pub fn bad_request(detail: &str, parameter: Option<&'static str>) -> Self {
        let mut e = Self::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "Bad Request",
            detail,
        );
        e.parameter = parameter;
        e
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            "You do not have permission to view this resource",
        )
    }

    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "resource_not_found",
            "Resource Not Found",
            "The resource you requested could not be found",
        )
    }

    pub fn image_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "resource_not_found",
            "Image Not Found",
            "The image you specified could not be found",
        )
    }

    pub fn image_not_ready() -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable_entity",
            "Image Not Ready",
            "The specified image is not ready to be used",
        )
        .with_parameter("image_id")
    }

    pub fn image_has_instances() -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable_entity",
            "Image Has Instances",
            "Cannot delete an image that has instances",
        )
    }

    pub fn unprocessable(detail: &str) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable_entity",
            "Unprocessable Entity",
            detail,
        )
    }

    /// A quota or the free-space floor refused the request.
    pub fn quota_exceeded(detail: &str) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable_entity",
            "Quota Exceeded",
            detail,
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "Method Not Allowed",
            "This resource does not support that method",
        )
    }

    pub fn payload_too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "Payload Too Large",
            "The request body is too large",
        )
    }

    pub fn unreadable_body() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "Bad Request",
            "The request body could not be read",
        )
    }

    /// The body did not arrive within `body_timeout`.
    pub fn body_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "Request Timeout",
            "The request body did not arrive in time",
        )
    }

    /// A document whose `data.type` names another resource type
    /// (JSON:API: 409 Conflict).
    pub fn wrong_type(expected: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "conflict",
            "Conflict",
            &format!("data.type must be \"{expected}\""),
        )
    }

    /// A request refused before the API saw it (by the HTTP parser).
    pub fn malformed_request(status: StatusCode) -> Self {
        let detail = match status {
            StatusCode::URI_TOO_LONG => "The request path is too long",
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => {
                "The request has too many or too large headers"
            }
            StatusCode::NOT_IMPLEMENTED => "The request uses an unsupported feature",
            _ => "The request is malformed",
        };
        let mut e = Self::new(status, "bad_request", "Bad Request", detail);
        if !status.is_client_error() && !status.is_server_error() {
            e.status = StatusCode::BAD_REQUEST;
        }
        e
    }

    pub fn oauth_error(detail: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "oauth_error",
            "OAuth Error",
            detail,
        )
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_server_error",
            "Internal Server Error",
            "Something went wrong :(",
        )
    }

    /// The contract's error for a status some layer produced without a
    /// body of ours (an unknown route, a wrong method, a body over the
    /// limit, a panic).
    pub fn for_status(status: StatusCode) -> Self {
        match status {
            StatusCode::NOT_FOUND => Self::not_found(),
            StatusCode::METHOD_NOT_ALLOWED => Self::method_not_allowed(),
            StatusCode::PAYLOAD_TOO_LARGE => Self::payload_too_large(),
            StatusCode::UNAUTHORIZED => Self::unauthorized(),
            StatusCode::REQUEST_TIMEOUT => Self::body_timeout(),
            s if s.is_client_error() => Self::malformed_request(s),
            _ => Self::internal(),
        }
    }

    /// For a request that names an image to use (`POST /instances`): an
    /// unknown image is *Image Not Found* rather than a missing resource.
    pub fn for_image_reference(e: CoreError) -> Self {
        match e {
            CoreError::NotFound(missing) if missing.is_image() => Self::image_not_found(),
            other => other.into(),
        }
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        match &e {
            // LEGACY_API.md: someone else's instance is a 404, for admins
            // and the upload user too.
            CoreError::NotFound(_) | CoreError::NotOwner { .. } => Self::not_found(),
            CoreError::AdminOnly(_) => Self::unauthorized(),
            CoreError::ImageNotReady { .. } | CoreError::ImageDestroying { .. } => {
                Self::image_not_ready()
            }
            CoreError::ImageHasInstances { .. } => Self::image_has_instances(),
            CoreError::BadInput(m) => Self::bad_request(&m.to_string(), None),
            CoreError::InvalidState(m) => Self::unprocessable(&m.to_string()),
            CoreError::Conflict(m) => Self::unprocessable(&m.to_string()),
            CoreError::Refresh(m) => Self::unprocessable(&m.to_string()),
            // The reason alone, without "finalise failed: ".
            CoreError::Finalise(m) => Self::unprocessable(&m.to_string()),
            CoreError::UploadBusy { .. } => Self::unprocessable(&e.to_string()),
            CoreError::Upload(_) => Self::unprocessable(&e.to_string()),
            CoreError::Quota(m) => Self::quota_exceeded(&m.to_string()),
            CoreError::NoFreePort { .. }
            | CoreError::NoSpace(_)
            | CoreError::InstanceStart(_)
            | CoreError::Store(_)
            | CoreError::Btrfs(_)
            | CoreError::Internal(_) => {
                tracing::error!(error = %e, "request failed");
                Self::internal()
            }
        }
    }
}

impl ApiError {
    fn body(&self) -> Body<'_> {
        Body {
            id: self.code,
            status: self.status.as_u16().to_string(),
            code: self.code,
            title: self.title,
            detail: &self.detail,
            source: Source {
                parameter: self.parameter,
            },
        }
    }

    /// The error document's bytes (for a response written outside axum).
    pub fn json_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.body()).unwrap_or_default()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        response.extensions_mut().insert(ContractError);
        response
    }
}

/// Marks a response whose body is already one of ours.
#[derive(Debug, Clone, Copy)]
pub struct ContractError;
