//! Cookie handling: host-only (no Domain), HttpOnly, SameSite=Lax, Secure + `__Host-` on https.

use crate::state::WebConfig;
use axum::http::HeaderMap;
use axum::http::header::COOKIE;

/// The value of cookie `name` in the request, if present.
pub fn read_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn cookie(config: &WebConfig, name: &str, value: &str, max_age: Option<i64>) -> String {
    let mut c = format!("{}={value}; Path=/; HttpOnly; SameSite=Lax", config.cookie_name(name));
    if config.secure() {
        c.push_str("; Secure");
    }
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    c
}

/// The `Set-Cookie` value for a new session (a browser-session cookie; the server enforces
/// the idle and absolute limits).
pub fn session_cookie(config: &WebConfig, value: &str) -> String {
    cookie(config, super::SESSION_COOKIE, value, None)
}

pub fn clear_session_cookie(config: &WebConfig) -> String {
    cookie(config, super::SESSION_COOKIE, "", Some(0))
}

/// The anonymous CSRF token for signed-out forms (double-submit): the request's cookie if it
/// has a well-formed one, else a new one, with the `Set-Cookie` to send when it is new.
pub fn anon_csrf_token(
    config: &WebConfig,
    headers: &HeaderMap,
    rng: &dyn quarterdeck_domain::token::Random,
) -> (String, Option<String>) {
    if let Some(v) = read_cookie(headers, &config.cookie_name(super::ANON_CSRF_COOKIE))
        && v.len() == 43
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return (v, None);
    }
    let token = quarterdeck_domain::token::Secret::generate(rng, "");
    let value = token.expose().to_owned();
    let set = cookie(config, super::ANON_CSRF_COOKIE, &value, None);
    (value, Some(set))
}

/// The cookie that binds a single sign-on attempt to the browser that started it (10 minutes).
pub fn sso_binding_cookie(config: &WebConfig, value: &str) -> String {
    cookie(config, SSO_BINDING_COOKIE, value, Some(600))
}

pub fn clear_sso_binding_cookie(config: &WebConfig) -> String {
    cookie(config, SSO_BINDING_COOKIE, "", Some(0))
}

pub const SSO_BINDING_COOKIE: &str = "qd_sso";
