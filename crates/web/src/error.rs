//! Domain errors rendered for people (an HTML page) and for machines (JSON).
//!
//! Internal errors are logged here, once, with a request-independent reference, and shown to
//! the client only as "something went wrong" with that reference.

use crate::pages::ErrorPage;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use quarterdeck_domain::Error;

pub fn status_of(e: &Error) -> StatusCode {
    match e {
        Error::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
        Error::NotFound => StatusCode::NOT_FOUND,
        Error::Unauthenticated | Error::InvalidCredentials => StatusCode::UNAUTHORIZED,
        Error::Forbidden
        | Error::CsrfRejected
        | Error::PasswordChangeRequired
        | Error::InsufficientScope
        | Error::TenantReadOnly
        | Error::TenantSuspended
        | Error::SsoOnly => StatusCode::FORBIDDEN,
        Error::SsoFailed(_) => StatusCode::UNAUTHORIZED,
        Error::Conflict { .. } => StatusCode::CONFLICT,
        Error::LinkInvalid(_) => StatusCode::GONE,
        Error::Throttled { .. } | Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        Error::BadRequest { .. } => StatusCode::BAD_REQUEST,
        Error::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        Error::Unsupported { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        Error::Busy | Error::UsageBacklog | Error::TenantMigrating => StatusCode::SERVICE_UNAVAILABLE,
        Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Logs an internal error once and returns the reference to show.
fn log_internal(e: &Error) -> Option<String> {
    if let Error::Internal(detail) = e {
        let reference = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
        tracing::error!(reference = %reference, error = %detail, "internal error");
        Some(reference)
    } else {
        None
    }
}

fn retry_after(e: &Error, resp: &mut Response) {
    let secs = match e {
        Error::Throttled { retry_after_secs } | Error::RateLimited { retry_after_secs } => Some(*retry_after_secs),
        Error::Busy | Error::UsageBacklog => Some(1),
        Error::TenantMigrating => Some(5),
        _ => None,
    };
    if let Some(s) = secs.and_then(|s| HeaderValue::from_str(&s.to_string()).ok()) {
        resp.headers_mut().insert(header::RETRY_AFTER, s);
    }
}

/// An error shown as a full HTML page.
#[derive(Debug)]
pub struct HtmlError(pub Error);

impl From<Error> for HtmlError {
    fn from(e: Error) -> Self {
        Self(e)
    }
}

impl IntoResponse for HtmlError {
    fn into_response(self) -> Response {
        let status = status_of(&self.0);
        let reference = log_internal(&self.0);
        let (title, message) = match &self.0 {
            Error::NotFound => (
                "Not found".to_owned(),
                "There is nothing here, or you may not see it.".to_owned(),
            ),
            Error::Internal(_) => (
                "Something went wrong".to_owned(),
                "The server could not finish this request. Nothing was changed by it; try again.".to_owned(),
            ),
            Error::Forbidden => ("Not allowed".to_owned(), self.0.to_string()),
            Error::CsrfRejected => ("Request refused".to_owned(), self.0.to_string()),
            Error::Throttled { .. } => ("Too many attempts".to_owned(), self.0.to_string()),
            other => ("That did not work".to_owned(), other.to_string()),
        };
        let mut resp = page(status, title, message, reference);
        retry_after(&self.0, &mut resp);
        resp.extensions_mut().insert(Rendered);
        resp
    }
}

/// The error page, with the request's id (`x-request-id`).
fn page(status: StatusCode, title: String, message: String, reference: Option<String>) -> Response {
    (
        status,
        crate::pages::render(&ErrorPage {
            chrome: crate::pages::Chrome::signed_out(String::new()),
            status: status.as_u16(),
            title,
            message,
            reference,
            request_id: crate::edge::current_request_id(),
        }),
    )
        .into_response()
}

/// Marks a response as an error already rendered from a domain error (a page or JSON), so the
/// edge's renderer of bare 408/413 answers leaves it as it is (e.g. 413 `batch_too_large`).
#[derive(Clone, Copy, Debug)]
pub struct Rendered;

/// The JSON error, with the request's id.
fn json(status: StatusCode, code: &str, message: String, fields: &[quarterdeck_domain::error::FieldError]) -> Response {
    let mut body = serde_json::json!({ "error": { "code": code, "message": message } });
    if !fields.is_empty() {
        body["error"]["fields"] = serde_json::json!(fields);
    }
    if let Some(id) = crate::edge::current_request_id() {
        body["error"]["request_id"] = serde_json::json!(id);
    }
    (status, axum::Json(body)).into_response()
}

/// An error the edge answers itself (timeout, body limit, shedding): no domain error behind
/// it, the same shapes (JSON for the API, else a page). A 503 says when to come back.
pub fn edge_error(api: bool, status: StatusCode, code: &str, title: &str, message: &str) -> Response {
    let mut resp = if api {
        json(status, code, message.to_owned(), &[])
    } else {
        page(status, title.to_owned(), message.to_owned(), None)
    };
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

/// An error as JSON: `{"error": {"code", "message", "fields"?}}`.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        Self(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_of(&self.0);
        let message = match log_internal(&self.0) {
            Some(reference) => format!("internal error (reference {reference})"),
            None => self.0.to_string(),
        };
        let mut resp = json(status, self.0.code(), message, self.0.fields());
        retry_after(&self.0, &mut resp);
        resp.extensions_mut().insert(Rendered);
        resp
    }
}
