//! Why a request was not served, and how each reason looks on the wire.

use axum::Json;
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Every way this service refuses a request. Each has one HTTP status and one stable code,
/// answered as `{"error": "<code>"}` (with a `message` where the code alone would puzzle the
/// tenant's developer: `budget_exceeded`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Bearer <key>` header, or one that cannot be a key.
    MissingKey,
    /// Quarterdeck does not know the key (or it belongs to another region).
    UnknownKey,
    /// The key's expiry has passed.
    ExpiredKey,
    /// The key was revoked.
    RevokedKey,
    /// The key's tenant is suspended or deleted.
    TenantSuspended,
    /// The tenant reached its monthly budget, which has a hard limit: refused until the next
    /// month or a raised budget.
    BudgetExceeded,
    /// The key used up its requests per minute.
    RateLimited { retry_after_seconds: u64 },
    /// The tenant has stored no credential for the configured provider.
    ProviderCredentialMissing,
    /// The request body is not JSON.
    InvalidBody,
    /// Quarterdeck could not be asked or gave an answer we cannot trust (unreachable, timed out,
    /// 5xx, refused our service token, unexpected body). Fail closed: nothing is served unverified.
    QuarterdeckUnavailable,
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::MissingKey | Refusal::UnknownKey | Refusal::ExpiredKey | Refusal::RevokedKey => {
                StatusCode::UNAUTHORIZED
            }
            Refusal::TenantSuspended => StatusCode::FORBIDDEN,
            Refusal::BudgetExceeded => StatusCode::PAYMENT_REQUIRED,
            Refusal::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Refusal::ProviderCredentialMissing => StatusCode::FAILED_DEPENDENCY,
            Refusal::InvalidBody => StatusCode::BAD_REQUEST,
            Refusal::QuarterdeckUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Refusal::MissingKey => "missing_key",
            Refusal::UnknownKey => "unknown",
            Refusal::ExpiredKey => "expired",
            Refusal::RevokedKey => "revoked",
            Refusal::TenantSuspended => "tenant_suspended",
            Refusal::BudgetExceeded => "budget_exceeded",
            Refusal::RateLimited { .. } => "rate_limited",
            Refusal::ProviderCredentialMissing => "provider_credential_missing",
            Refusal::InvalidBody => "invalid_body",
            Refusal::QuarterdeckUnavailable => "quarterdeck_unavailable",
        }
    }
}

impl Refusal {
    /// What the caller can do about it, where the code does not say.
    pub fn message(&self) -> Option<&'static str> {
        match self {
            Refusal::BudgetExceeded => Some(
                "Your organisation has reached its monthly budget. Requests are refused until the next month or until an administrator raises the budget.",
            ),
            _ => None,
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = match self.message() {
            Some(message) => json!({ "error": self.code(), "message": message }),
            None => json!({ "error": self.code() }),
        };
        let mut response = (self.status(), Json(body)).into_response();
        if let Refusal::RateLimited { retry_after_seconds } = self {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(retry_after_seconds));
        }
        response
    }
}
