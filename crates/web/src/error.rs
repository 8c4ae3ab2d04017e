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
        Error::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
        Error::Busy => StatusCode::SERVICE_UNAVAILABLE,
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
        Error::Throttled { retry_after_secs } => Some(*retry_after_secs),
        Error::Busy => Some(1),
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
        let mut resp = (
            status,
            crate::pages::render(&ErrorPage {
                chrome: crate::pages::Chrome::signed_out(String::new()),
                status: status.as_u16(),
                title,
                message,
                reference,
            }),
        )
            .into_response();
        retry_after(&self.0, &mut resp);
        resp
    }
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
        let mut body = serde_json::json!({ "error": { "code": self.0.code(), "message": message } });
        if !self.0.fields().is_empty() {
            body["error"]["fields"] = serde_json::json!(self.0.fields());
        }
        let mut resp = (status, axum::Json(body)).into_response();
        retry_after(&self.0, &mut resp);
        resp
    }
}
