//! `GET /metrics`: counters in the Prometheus text format, for whoever holds the
//! `metrics_token` (`Authorization: Bearer <token>`; Prometheus's `authorization.credentials`).
//! Without that setting the path is not served (404); a missing or wrong token gets 401.
//!
//! Only process-wide numbers: no label carries a tenant, a user, an endpoint's URL or any
//! other customer data. Counters count since this process started (Prometheus's `rate()`
//! handles restarts); with several nodes, each is scraped on its own.

use crate::state::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::fmt::Write;

/// The exposition format's content type.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

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
    let mut resp = render(&state).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    resp
}

/// Compares in time that depends on the length only (the token's length is no secret).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The page: every family with its `HELP` and `TYPE`, every outcome even at zero.
fn render(state: &AppState) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP quarterdeck_webhook_deliveries_total Webhook delivery attempts by outcome since this process started; \
         gave_up counts deliveries abandoned after 3 days of retries (their last attempt is also counted by its outcome)."
    );
    let _ = writeln!(out, "# TYPE quarterdeck_webhook_deliveries_total counter");
    for (outcome, n) in state.core.webhook_counters() {
        let _ = writeln!(out, "quarterdeck_webhook_deliveries_total{{outcome=\"{outcome}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP quarterdeck_key_verification_lookups_total Database lookups made by data-plane key verifications that missed this node's cache."
    );
    let _ = writeln!(out, "# TYPE quarterdeck_key_verification_lookups_total counter");
    let _ = writeln!(
        out,
        "quarterdeck_key_verification_lookups_total {}",
        state.core.verifier_lookups()
    );
    let _ = writeln!(
        out,
        "# HELP quarterdeck_build_info The running version and storage backend (always 1)."
    );
    let _ = writeln!(out, "# TYPE quarterdeck_build_info gauge");
    let _ = writeln!(
        out,
        "quarterdeck_build_info{{version=\"{}\",backend=\"{}\"}} 1",
        escape(state.config.version),
        escape(state.core.backend())
    );
    out
}

/// A label value as the exposition format needs it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
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
