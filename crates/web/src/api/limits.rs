//! Per-token rate limits and `Idempotency-Key` replay, in memory (per process; documented).
//!
//! A reply is replayed only to a caller who is authenticated *now* (a revoked or expired token
//! gets its 401, and its kept replies are dropped), and a kept reply never holds a secret: the
//! fields a handler marks with [`SecretFields`] (a one-time password) are kept as `null`, and
//! the replay names them in `Idempotent-Replay-Redacted`.
//!
//! A key is reserved before its request runs: a second request with the same key while the
//! first is still running gets 409 `idempotency_key_in_use` instead of running twice. Only an
//! authenticated caller's replies are kept (a made-up token's 401 is not), at most
//! [`MAX_KEPT`] of them; expired ones are swept once a minute, not on every request.

use super::Caller;
use crate::error::ApiError;
use crate::state::AppState;
use axum::body::{Body, to_bytes};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use quarterdeck_domain::Error;
use quarterdeck_domain::token::TokenHash;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Requests a token may make per window.
const PER_WINDOW: u32 = 300;
const WINDOW: Duration = Duration::from_secs(60);
/// How long an idempotent response is kept.
const KEEP: Duration = Duration::from_secs(24 * 3600);
/// Most replies kept (and keys reserved) at once, all tokens together; past it, 503 `busy`.
const MAX_KEPT: usize = 100_000;
/// How often expired replies are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// A response extension naming the top-level JSON fields that hold a secret: the reply kept
/// for `Idempotency-Key` has them as `null`.
#[derive(Clone, Copy, Debug)]
pub struct SecretFields(pub &'static [&'static str]);

#[derive(Default)]
pub struct ApiLimits {
    windows: Mutex<HashMap<String, (Instant, u32)>>,
    replies: Mutex<Replies>,
}

#[derive(Default)]
struct Replies {
    slots: HashMap<(String, String), Slot>,
    swept: Option<Instant>,
}

impl Replies {
    fn sweep(&mut self) {
        let now = Instant::now();
        if self.swept.is_none_or(|t| now.duration_since(t) >= SWEEP_EVERY) {
            self.slots.retain(|_, s| match s {
                Slot::Running { .. } => true,
                Slot::Done(d) => now.duration_since(d.at) < KEEP,
            });
            self.swept = Some(now);
        }
    }
}

/// A key's state: its request still running (reserved), or its reply kept.
#[derive(Clone)]
enum Slot {
    Running { request: String },
    Done(Stored),
}

#[derive(Clone)]
struct Stored {
    at: Instant,
    request: String,
    status: StatusCode,
    content_type: Option<HeaderValue>,
    body: axum::body::Bytes,
    /// The secret fields blanked in `body`.
    redacted: &'static [&'static str],
}

impl std::fmt::Debug for ApiLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiLimits")
    }
}

impl ApiLimits {
    /// `Some(seconds)` when this token is over its rate.
    fn over(&self, token: &str) -> Option<u64> {
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if w.len() > 100_000 {
            w.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
        }
        let entry = w.entry(token.to_owned()).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
        (entry.1 > PER_WINDOW).then(|| WINDOW.saturating_sub(now.duration_since(entry.0)).as_secs().max(1))
    }
}

impl ApiLimits {
    /// Forget every reply kept for a token (it no longer authenticates).
    fn forget_token(&self, token: &str) {
        self.replies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .slots
            .retain(|(t, _), _| t != token);
    }
}

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

/// Rate limit per token (keyed by the token's hash), then replay or record idempotent POSTs.
pub async fn idempotency_and_rate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(limits) = req.extensions().get::<Arc<ApiLimits>>().cloned() else {
        return next.run(req).await;
    };
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| TokenHash::of(v).0);
    let Some(token) = token else {
        return next.run(req).await;
    };
    if let Some(retry) = limits.over(&token) {
        return ApiError(Error::Throttled {
            retry_after_secs: retry,
        })
        .into_response();
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
    let request = format!(
        "{} {}\n{}",
        parts.method,
        // The query too: `?tenant_id=` picks whose user a request is about.
        parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path(), |pq| pq.as_str()),
        TokenHash::of(&String::from_utf8_lossy(&bytes)).0
    );
    // Who is asking, before anything is run, kept or replayed: the token must be live now,
    // with the rights and scope the request needs (a revoked token's replies die with it).
    if let Err(e) = Caller::from_request_parts(&mut parts, &state).await {
        if matches!(e.0, Error::Unauthenticated) {
            limits.forget_token(&token);
        }
        return e.into_response();
    }
    let slot = (token, key);
    let kept = {
        let mut replies = limits.replies.lock().unwrap_or_else(|p| p.into_inner());
        replies.sweep();
        match replies.slots.get(&slot).cloned() {
            Some(kept) => Some(kept),
            None if replies.slots.len() >= MAX_KEPT => return ApiError(Error::Busy).into_response(),
            None => {
                replies.slots.insert(
                    slot.clone(),
                    Slot::Running {
                        request: request.clone(),
                    },
                );
                None
            }
        }
    };
    match kept {
        Some(Slot::Running { request: r }) | Some(Slot::Done(Stored { request: r, .. })) if r != request => {
            return ApiError(Error::Conflict {
                code: "idempotency_key_reused",
                message: "This Idempotency-Key was used with a different request.".to_owned(),
            })
            .into_response();
        }
        Some(Slot::Running { .. }) => {
            return ApiError(Error::Conflict {
                code: "idempotency_key_in_use",
                message: "A request with this Idempotency-Key is still running; retry when it has answered.".to_owned(),
            })
            .into_response();
        }
        Some(Slot::Done(s)) => return replay(&s),
        None => {}
    }
    // The key is reserved: whatever happens next — an error, a panic, the client going away
    // and this future being dropped — the slot ends kept or released.
    let mut reservation = Reservation {
        limits: &limits,
        slot: Some(slot),
    };
    let resp = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    let status = resp.status();
    if status.is_server_error() || status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        return resp;
    }
    let secrets = resp.extensions().get::<SecretFields>().copied();
    let (rparts, rbody) = resp.into_parts();
    let Ok(rbytes) = to_bytes(rbody, 4 * 1024 * 1024).await else {
        return ApiError(Error::internal("response too large to keep for Idempotency-Key")).into_response();
    };
    if let (Some(body), Some(slot)) = (keepable(&rbytes, secrets), reservation.slot.take()) {
        limits.replies.lock().unwrap_or_else(|p| p.into_inner()).slots.insert(
            slot,
            Slot::Done(Stored {
                at: Instant::now(),
                request,
                status,
                content_type: rparts.headers.get(header::CONTENT_TYPE).cloned(),
                body,
                redacted: secrets.map(|s| s.0).unwrap_or_default(),
            }),
        );
    }
    Response::from_parts(rparts, Body::from(rbytes))
}

/// A reserved key, released when dropped unless its reply was kept (`slot` taken).
struct Reservation<'a> {
    limits: &'a ApiLimits,
    slot: Option<(String, String)>,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.limits
                .replies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .slots
                .remove(&slot);
        }
    }
}

/// A kept reply, marked as replayed (and naming the secret fields it holds as `null`).
fn replay(s: &Stored) -> Response {
    let mut resp = (s.status, s.body.clone()).into_response();
    if let Some(ct) = &s.content_type {
        resp.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
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
