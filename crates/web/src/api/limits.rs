//! Per-token rate limits and `Idempotency-Key` replay, shared by every node through the
//! control database (`Core::count_api_request`, `Core::start_idempotent`): the rate is counted
//! in memory and flushed with every node's totals every ~200 ms (no write per request), a key
//! costs one or two statements. Both are keyed on the authenticated token's id, never on the raw header.
//! A request that does not authenticate writes nothing here.
//!
//! A reply is replayed only to a caller who is authenticated *now* (a revoked or expired token
//! gets its 401; revoking a token drops its kept replies), and a kept reply never holds a
//! secret: the fields a handler marks with [`SecretFields`] (a one-time password) are kept as
//! `null`, and the replay names them in `Idempotent-Replay-Redacted`.
//!
//! A key is reserved before its request runs: a second request with the same key while the
//! first is still running — on this node or another — gets 409 `idempotency_key_in_use`
//! instead of running twice. A reservation lasts the request timeout plus a margin at most,
//! so a node that dies mid-request leaves no key stuck beyond it. A key is bound to a SHA-256
//! of the method, path, query and body (not the request itself); 401, 403, 404 and 5xx replies
//! are not kept; a token holds at most `IDEMPOTENCY_KEYS_PER_TOKEN` live keys (past it, 429
//! `idempotency_limit`). Kept replies last 24 hours; housekeeping deletes expired ones.

use super::Caller;
use crate::error::ApiError;
use crate::state::AppState;
use axum::body::{Body, to_bytes};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use quarterdeck_domain::Core;
use quarterdeck_domain::Error;
use quarterdeck_domain::core::{IDEMPOTENCY_KEYS_PER_TOKEN, IdempotencyStart};
use quarterdeck_domain::store::KeptReply;
use std::sync::Arc;
use std::time::Duration;

/// How much longer than the request timeout a key stays reserved for a request that never
/// answered (its node died).
const RESERVATION_MARGIN: Duration = Duration::from_secs(30);

/// A response extension naming the top-level JSON fields that hold a secret: the reply kept
/// for `Idempotency-Key` has them as `null`.
#[derive(Clone, Copy, Debug)]
pub struct SecretFields(pub &'static [&'static str]);

/// Marks the routes the limits apply to (the Automation API's); the state is in the database.
#[derive(Debug, Default)]
pub struct ApiLimits;

/// The body to keep for replay: with the secret fields set to `null`, or `None` when they
/// cannot be blanked (not a JSON object): then nothing is kept.
fn keepable(body: &[u8], secrets: Option<SecretFields>) -> Option<axum::body::Bytes> {
    let Some(SecretFields(fields)) = secrets else {
        return Some(axum::body::Bytes::copy_from_slice(body));
    };
    let mut value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let object = value.as_object_mut()?;
    for f in fields {
        if let Some(v) = object.get_mut(*f) {
            *v = serde_json::Value::Null;
        }
    }
    serde_json::to_vec(&value).ok().map(axum::body::Bytes::from)
}

/// Authenticate, then rate limit per token (keyed by its id), then replay or record
/// idempotent POSTs. A request that does not authenticate costs no write here: it goes on to
/// its handler, whose `Caller` answers 401.
pub async fn idempotency_and_rate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if req.extensions().get::<Arc<ApiLimits>>().is_none() {
        return next.run(req).await;
    }
    // The bearer exactly as `Caller` reads it: `Bearer  X` and `Bearer X` are one token, one
    // rate and one idempotency namespace.
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|b| b.trim().to_owned());
    let Some(bearer) = bearer else {
        return next.run(req).await;
    };
    let caller = match state.core.api_caller(&bearer).await {
        Ok(caller) => caller,
        // Not authenticated (or the lookup failed): the handler's `Caller` answers.
        Err(_) => return next.run(req).await,
    };
    let token = caller.token.id.to_string();
    // `Caller` takes the authenticated caller from here (no second lookup).
    req.extensions_mut().insert(caller);
    match state.core.count_api_request(&token).await {
        Ok(None) => {}
        Ok(Some(retry)) => {
            return ApiError(Error::Throttled {
                retry_after_secs: retry,
            })
            .into_response();
        }
        Err(e) => return ApiError(e).into_response(),
    }
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (Some(key), true) = (key, req.method() == Method::POST) else {
        return next.run(req).await;
    };
    if key.is_empty() || key.len() > 200 {
        return ApiError(Error::field(
            "Idempotency-Key",
            "invalid_idempotency_key",
            "Use 1 to 200 characters.",
        ))
        .into_response();
    }
    let (mut parts, body) = req.into_parts();
    // The edge's body limit (`max_body_bytes`) bounds every body; past it, its 413.
    let Ok(bytes) = to_bytes(body, usize::MAX).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    // The key is bound to a digest of the request (the query too: `?tenant_id=` picks whose
    // user a request is about); the request itself is never kept.
    let request = quarterdeck_domain::core::request_digest(
        parts.method.as_str(),
        parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path(), |pq| pq.as_str()),
        &bytes,
    );
    // Before anything is run, kept or replayed: the token is live (checked above) and has
    // write scope (a read token's POST gets its 403, nothing reserved).
    if let Err(e) = Caller::from_request_parts(&mut parts, &state).await {
        return e.into_response();
    }
    let running_for = state.config.edge.request_timeout + RESERVATION_MARGIN;
    let holder = match state.core.start_idempotent(&token, &key, &request, running_for).await {
        Err(e) => return ApiError(e).into_response(),
        Ok(IdempotencyStart::Running { request: r } | IdempotencyStart::Replay(KeptReply { request: r, .. }))
            if r != request =>
        {
            return ApiError(Error::Conflict {
                code: "idempotency_key_reused",
                message: "This Idempotency-Key was used with a different request.".to_owned(),
            })
            .into_response();
        }
        Ok(IdempotencyStart::Running { .. }) => {
            return ApiError(Error::Conflict {
                code: "idempotency_key_in_use",
                message: "A request with this Idempotency-Key is still running; retry when it has answered.".to_owned(),
            })
            .into_response();
        }
        Ok(IdempotencyStart::Replay(kept)) => return replay(&kept),
        Ok(IdempotencyStart::Full) => {
            let mut resp = ApiError(Error::Conflict {
                code: "idempotency_limit",
                message: format!(
                    "This token holds {IDEMPOTENCY_KEYS_PER_TOKEN} live Idempotency-Keys already; retry without a key, or once older keys have expired (24 hours)."
                ),
            })
            .into_response();
            *resp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            return resp;
        }
        Ok(IdempotencyStart::Run(holder)) => holder,
    };
    // The key is reserved: whatever happens next — an error, a panic, the client going away
    // and this future being dropped — the key ends kept or released.
    let mut reservation = Reservation {
        core: state.core.clone(),
        token,
        key,
        holder,
        armed: true,
    };
    let resp = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    let status = resp.status();
    // Not kept (the key is released): failures, refusals, and 404s — an unmatched route or
    // a missing object changed nothing, and a retry may run.
    if status.is_server_error()
        || status == StatusCode::UNAUTHORIZED
        || status == StatusCode::FORBIDDEN
        || status == StatusCode::NOT_FOUND
    {
        return resp;
    }
    let secrets = resp.extensions().get::<SecretFields>().copied();
    let (rparts, rbody) = resp.into_parts();
    let Ok(rbytes) = to_bytes(rbody, 4 * 1024 * 1024).await else {
        return ApiError(Error::internal("response too large to keep for Idempotency-Key")).into_response();
    };
    if let Some(body) = keepable(&rbytes, secrets) {
        let kept = KeptReply {
            request,
            status: status.as_u16(),
            content_type: rparts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body: body.to_vec(),
            redacted: secrets
                .map(|s| s.0.iter().map(|f| (*f).to_owned()).collect())
                .unwrap_or_default(),
        };
        match state
            .core
            .keep_idempotent(&reservation.token, &reservation.key, holder, &kept)
            .await
        {
            Ok(()) => reservation.armed = false,
            // The change is made and answered; only its replay is lost (the key is released).
            Err(e) => tracing::warn!(error = %e, "could not keep the reply of an Idempotency-Key"),
        }
    }
    Response::from_parts(rparts, Body::from(rbytes))
}

/// A reserved key, released (in the background) when dropped unless its reply was kept.
struct Reservation {
    core: Arc<Core>,
    token: String,
    key: String,
    holder: uuid::Uuid,
    armed: bool,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (core, token, key, holder) = (
            self.core.clone(),
            std::mem::take(&mut self.token),
            std::mem::take(&mut self.key),
            self.holder,
        );
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = core.release_idempotent(&token, &key, holder).await {
                    tracing::warn!(error = %e, "could not release an Idempotency-Key; it lapses with its reservation");
                }
            });
        }
    }
}

/// A kept reply, marked as replayed (and naming the secret fields it holds as `null`).
fn replay(s: &KeptReply) -> Response {
    let status = StatusCode::from_u16(s.status).unwrap_or(StatusCode::OK);
    let mut resp = (status, s.body.clone()).into_response();
    if let Some(ct) = s.content_type.as_deref().and_then(|c| HeaderValue::from_str(c).ok()) {
        resp.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    resp.headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    if !s.redacted.is_empty()
        && let Ok(v) = HeaderValue::from_str(&s.redacted.join(", "))
    {
        resp.headers_mut().insert("idempotent-replay-redacted", v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_replies_hold_no_secret() {
        let body = br#"{"user":{"id":"u"},"one_time_password":"hunter2-hunter2"}"#;
        let kept = keepable(body, Some(SecretFields(&["one_time_password"]))).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&kept).unwrap();
        assert_eq!(v["one_time_password"], serde_json::Value::Null);
        assert_eq!(v["user"]["id"], "u");
        assert!(
            keepable(b"not json", Some(SecretFields(&["x"]))).is_none(),
            "unblankable: not kept"
        );
        assert_eq!(&keepable(b"plain", None).unwrap()[..], b"plain");
    }
}
