//! The Automation API under `/v1/admin/`: JSON over bearer personal access tokens.
//!
//! Conventions: 401 for a missing, unknown, expired or revoked token (or one whose owner or
//! tenant is no longer allowed in); 403 for a scope or role that does not allow the call; 404
//! for another tenant's objects. Bodies reject unknown fields. Errors are
//! `{"error": {"code", "message", "fields"?}}`. `Idempotency-Key` on POST replays the first
//! response (to a caller still authenticated; secrets blanked). Lists are cursor-paged (`limit`, `cursor` → `next_cursor`). Each token is rate
//! limited (`Retry-After` on 429).

mod api_keys;
mod audit;
pub mod data_plane;
mod limits;
mod openapi;
pub mod schema;
mod tenants;
mod usage;
pub mod usage_ingest;
mod users;
mod webhooks;

pub use limits::{ApiLimits, SecretFields};

use crate::auth::Site;
use crate::error::ApiError;
use crate::state::AppState;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{Method, header};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use quarterdeck_domain::Error;
use quarterdeck_domain::core::ApiCaller;
use serde::de::DeserializeOwned;

pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/admin/tenants", get(tenants::list).post(tenants::create))
        .route(
            "/admin/tenants/{id}",
            get(tenants::get).patch(tenants::update).delete(tenants::delete),
        )
        .route("/admin/tenants/{id}/status", post(tenants::set_status))
        .route(
            "/admin/tenants/{id}/api-keys",
            get(api_keys::list).post(api_keys::create),
        )
        .route("/admin/tenants/{id}/api-keys/{key_id}", get(api_keys::get))
        .route("/admin/tenants/{id}/api-keys/{key_id}/roll", post(api_keys::roll))
        .route("/admin/tenants/{id}/api-keys/{key_id}/revoke", post(api_keys::revoke))
        .route("/admin/tenants/{id}/usage", get(usage::usage))
        .route("/admin/tenants/{id}/cost", get(usage::cost))
        .route(
            "/admin/tenants/{id}/budget",
            get(usage::get_budget)
                .put(usage::put_budget)
                .delete(usage::delete_budget),
        )
        .route("/admin/users", get(users::list).post(users::create))
        .route(
            "/admin/users/{id}",
            get(users::get).patch(users::update).delete(users::delete),
        )
        .route(
            "/admin/users/{id}/roles/{role}",
            put(users::assign_role).delete(users::revoke_role),
        )
        .route("/admin/users/{id}/invitation/resend", post(users::resend_invitation))
        .route(
            "/admin/users/{id}/invitation",
            axum::routing::delete(users::revoke_invitation),
        )
        .route("/admin/invitations", get(users::invitations))
        .route("/admin/webhooks", get(webhooks::list).post(webhooks::create))
        .route(
            "/admin/webhooks/{id}",
            get(webhooks::get).patch(webhooks::update).delete(webhooks::delete),
        )
        .route("/admin/webhooks/{id}/roll-secret", post(webhooks::roll_secret))
        .route("/admin/webhooks/{id}/deliveries", get(webhooks::deliveries))
        .route(
            "/admin/webhooks/{id}/deliveries/{delivery_id}/resend",
            post(webhooks::resend),
        )
        .route("/admin/events", get(webhooks::feed))
        .route("/admin/audit/events", get(audit::list))
        .route("/admin/audit/events/export", get(audit::export))
        .route("/openapi.json", get(openapi::document))
        .fallback(|| async { ApiError(Error::NotFound) })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limits::idempotency_and_rate,
        ))
}

/// The caller of an API request: a live token, on the base host, with write scope for
/// anything but GET.
pub struct Caller(pub ApiCaller);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if !matches!(parts.extensions.get::<Site>(), Some(Site::Base)) {
            return Err(ApiError(Error::NotFound));
        }
        if let Some(c) = parts.extensions.get::<ApiCaller>() {
            return check_scope(parts, c.clone());
        }
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(ApiError(Error::Unauthenticated))?;
        let caller = state.core.api_caller(bearer.trim()).await?;
        parts.extensions.insert(caller.clone());
        check_scope(parts, caller)
    }
}

fn check_scope(parts: &Parts, caller: ApiCaller) -> Result<Caller, ApiError> {
    if parts.method != Method::GET && !caller.can_write() {
        return Err(ApiError(Error::InsufficientScope));
    }
    Ok(Caller(caller))
}

/// A JSON body that rejects unknown fields (the DTOs say `deny_unknown_fields`) with a 422 that
/// names the problem.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = axum::response::Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = is_json(&req);
        // Past the edge's body limit: its 413 `body_too_large` (edge.rs renders it).
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|_| axum::http::StatusCode::PAYLOAD_TOO_LARGE.into_response())?;
        json_object(is_json, &bytes)
            .map(Body)
            .map_err(|e| ApiError(e).into_response())
    }
}

fn is_json(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"))
}

/// A body's bytes as `T`: JSON (by its `Content-Type`), an object, with no unknown field.
fn json_object<T: DeserializeOwned>(is_json: bool, bytes: &[u8]) -> Result<T, Error> {
    if !is_json {
        return Err(Error::field(
            "_body",
            "unsupported_media_type",
            "Send a JSON body (Content-Type: application/json).",
        ));
    }
    // serde fills a struct from a JSON array too, field by field: only objects are bodies.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Error::field("_body", "invalid_body", "The body must be a JSON object."));
    }
    serde_json::from_slice(bytes).map_err(|e| Error::field("_body", "invalid_body", e.to_string()))
}

/// A JSON body that may be left out (no bytes at all, whatever the `Content-Type`): `None`.
/// Otherwise read exactly as [`Body`].
pub struct OptionalBody<T>(pub Option<T>);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for OptionalBody<T> {
    type Rejection = axum::response::Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = is_json(&req);
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|_| axum::http::StatusCode::PAYLOAD_TOO_LARGE.into_response())?;
        if bytes.is_empty() {
            return Ok(Self(None));
        }
        json_object(is_json, &bytes)
            .map(|b| Self(Some(b)))
            .map_err(|e| ApiError(e).into_response())
    }
}

/// Query parameters, refusing unknown or malformed ones with a JSON 422 (not axum's plain 400).
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let raw = parts.uri.query().unwrap_or_default();
        serde_urlencoded::from_str(raw)
            .map(Query)
            .map_err(|e| ApiError(Error::field("_query", "invalid_query", e.to_string())))
    }
}

/// A `limit` within `1..=max`, or a 422 naming the range (never silently clamped).
pub fn limit(value: Option<u32>, default: u32, max: u32) -> Result<u32, Error> {
    match value {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(Error::field(
            "limit",
            "invalid_limit",
            format!("Use a limit from 1 to {max}."),
        )),
    }
}
