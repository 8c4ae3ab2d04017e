//! CSRF protection for every unsafe request, in one place so no handler can forget it.
//!
//! 1. A browser's `Sec-Fetch-Site` other than `same-origin`/`none`, or an `Origin` other than
//!    the base URL's, is refused.
//! 2. The request must carry the synchronizer token: the session's, or for signed-out forms
//!    (sign-in, setup) the anonymous double-submit cookie's, in an `x-csrf-token` header or a
//!    `csrf_token` form field.
//!
//! A refusal is a 403 and nothing runs.

use super::cookies::read_cookie;
use super::session::MaybeSession;
use crate::error::HtmlError;
use crate::state::AppState;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use quarterdeck_domain::Error;
use quarterdeck_domain::token::constant_time_eq;

pub const ANON_CSRF_COOKIE: &str = "qd_csrf";

fn is_safe(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

pub async fn csrf_guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    // The Automation API takes bearer tokens only and ignores cookies: nothing to forge.
    // The SAML ACS takes the identity provider's cross-site POST: the signed assertion, its
    // InResponseTo and the single-use RelayState protect it, and the browser's cookie-bound
    // GET that follows decides who signs in (see pages/sso.rs).
    if is_safe(req.method()) || req.uri().path().starts_with("/v1/") || req.uri().path() == "/sso/saml/acs" {
        return next.run(req).await;
    }
    let refuse = || HtmlError(Error::CsrfRejected).into_response();
    let headers = req.headers();
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && site != "same-origin"
        && site != "none"
    {
        return refuse();
    }
    let site_origin = req
        .extensions()
        .get::<super::site::Site>()
        .map(|s| s.origin(&state))
        .unwrap_or_else(|| state.config.origin());
    if let Some(origin) = headers.get(header::ORIGIN)
        && origin.to_str().ok() != Some(site_origin.as_str())
    {
        return refuse();
    }
    let expected = match req.extensions().get::<MaybeSession>() {
        Some(MaybeSession(Some(s))) => Some(s.session.csrf_token.clone()),
        _ => read_cookie(headers, &state.config.cookie_name(ANON_CSRF_COOKIE)),
    };
    let Some(expected) = expected.filter(|e| !e.is_empty()) else {
        return refuse();
    };
    if let Some(sent) = headers.get("x-csrf-token").and_then(|v| v.to_str().ok()) {
        return if constant_time_eq(sent, &expected) {
            next.run(req).await
        } else {
            refuse()
        };
    }
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return refuse();
    }
    let (parts, body) = req.into_parts();
    // The edge's body limit (`max_body_bytes`) bounds every body; past it, its 413.
    let Ok(bytes) = to_bytes(body, usize::MAX).await else {
        return axum::http::StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let sent = url::form_urlencoded::parse(&bytes)
        .find(|(k, _)| k == "csrf_token")
        .map(|(_, v)| v.into_owned());
    match sent {
        Some(sent) if constant_time_eq(&sent, &expected) => {
            next.run(Request::from_parts(parts, Body::from(bytes))).await
        }
        _ => refuse(),
    }
}
