//! Per-token rate limits and `Idempotency-Key` replay, in memory (per process; documented).

use crate::error::ApiError;
use axum::body::{Body, to_bytes};
use axum::extract::Request;
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
const MAX_BODY: usize = 256 * 1024;

#[derive(Default)]
pub struct ApiLimits {
    windows: Mutex<HashMap<String, (Instant, u32)>>,
    replies: Mutex<HashMap<(String, String), Stored>>,
}

#[derive(Clone)]
struct Stored {
    at: Instant,
    request: String,
    status: StatusCode,
    content_type: Option<HeaderValue>,
    body: axum::body::Bytes,
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

/// Rate limit per token (keyed by the token's hash), then replay or record idempotent POSTs.
pub async fn idempotency_and_rate(req: Request, next: Next) -> Response {
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
    let (parts, body) = req.into_parts();
    let Ok(bytes) = to_bytes(body, MAX_BODY).await else {
        return ApiError(Error::field("_body", "body_too_large", "The body is too large.")).into_response();
    };
    let request = format!(
        "{} {}\n{}",
        parts.method,
        parts.uri.path(),
        TokenHash::of(&String::from_utf8_lossy(&bytes)).0
    );
    let slot = (token, key);
    {
        let mut replies = limits.replies.lock().unwrap_or_else(|p| p.into_inner());
        replies.retain(|_, s| s.at.elapsed() < KEEP);
        if let Some(s) = replies.get(&slot) {
            if s.request != request {
                return ApiError(Error::Conflict {
                    code: "idempotency_key_reused",
                    message: "This Idempotency-Key was used with a different request.".to_owned(),
                })
                .into_response();
            }
            let mut resp = (s.status, s.body.clone()).into_response();
            if let Some(ct) = &s.content_type {
                resp.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
            }
            resp.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            return resp;
        }
    }
    let resp = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    let status = resp.status();
    if status.is_server_error() {
        return resp;
    }
    let (rparts, rbody) = resp.into_parts();
    let Ok(rbytes) = to_bytes(rbody, 4 * 1024 * 1024).await else {
        return ApiError(Error::internal("response too large to keep for Idempotency-Key")).into_response();
    };
    limits.replies.lock().unwrap_or_else(|p| p.into_inner()).insert(
        slot,
        Stored {
            at: Instant::now(),
            request,
            status,
            content_type: rparts.headers.get(header::CONTENT_TYPE).cloned(),
            body: rbytes.clone(),
        },
    );
    Response::from_parts(rparts, Body::from(rbytes))
}
