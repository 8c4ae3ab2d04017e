//! `GET /metrics`: the Prometheus text format, rendered from the core's own recorder (the
//! `metrics` crate with `metrics-exporter-prometheus`, nothing installed globally), and
//! `GET /readyz`.
//!
//! Two ways to reach the metrics, never public by accident: on the main listener only with the
//! `metrics_token` setting and its bearer (`Authorization: Bearer <token>`; Prometheus's
//! `authorization.credentials`) — without that setting the path is 404, a missing or wrong
//! token gets 401 — and on the separate `metrics_listen` address without a token (bind it to
//! a private interface).
//!
//! Only process-wide numbers: no label carries a tenant, a user, an endpoint's URL or any
//! other customer data; HTTP requests are labelled by their route's template. Counters count
//! since this process started (Prometheus's `rate()` handles restarts); with several nodes,
//! each is scraped on its own. Gauges that need the database (the outbox) are read when
//! scraped, with one small query.

use crate::state::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The exposition format's content type.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// On the main listener: only for the `metrics_token`'s holder.
pub async fn serve(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(expected) = state.config.metrics_token.as_deref() else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    if !same(given.as_bytes(), expected.as_bytes()) {
        let mut resp = (StatusCode::UNAUTHORIZED, "a bearer token (metrics_token) is required\n").into_response();
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"metrics\""),
        );
        return resp;
    }
    render(&state).await
}

/// On the separate `metrics_listen` address: no token (the address is the protection).
pub async fn serve_open(State(state): State<AppState>) -> Response {
    render(&state).await
}

/// `GET /readyz`: 200 when the control database answers and its migrations are all applied,
/// else 503 with the reason (`database_unavailable`, `migrations_pending`). `/healthz` says
/// only that the process serves.
pub async fn ready(State(state): State<AppState>) -> Response {
    match state.core.readiness().await {
        Ok(()) => axum::Json(serde_json::json!({ "status": "ready" })).into_response(),
        Err(reason) => {
            let mut resp = (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({ "status": "unavailable", "reason": reason })),
            )
                .into_response();
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            resp
        }
    }
}

/// Compares in time that depends on the length only (the token's length is no secret).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The page: the gauges brought up to date, then every family with its `HELP` and `TYPE`.
/// A gauge the database could not give keeps its last value (and the failure is logged): the
/// scrape itself still answers.
async fn render(state: &AppState) -> Response {
    if let Err(e) = state.core.observe().await {
        tracing::warn!(error = %e, "metrics: reading the gauges from the database failed");
    }
    let m = state.core.meters();
    m.gauge(
        quarterdeck_domain::meters::BUILD_INFO,
        &[("version", state.config.version), ("backend", state.core.backend())],
    )
    .set(1.0);
    state.prometheus.run_upkeep();
    let mut resp = state.prometheus.render().into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_equal_only_when_equal() {
        assert!(same(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!same(b"0123456789abcdef", b"0123456789abcdeF"));
        assert!(!same(b"0123456789abcdef", b"0123456789abcde"));
        assert!(!same(b"", b"0123456789abcdef"));
    }
}
