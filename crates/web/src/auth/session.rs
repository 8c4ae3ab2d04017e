//! Loading the session once per request, and the extractor handlers use.

use super::cookies::read_cookie;
use super::site::Site;
use crate::error::HtmlError;
use crate::state::AppState;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use quarterdeck_domain::core::{ClientInfo, SignedIn};
use quarterdeck_domain::tenant::Tenant;
use quarterdeck_domain::user::Directory;
use std::net::{IpAddr, SocketAddr};

pub const SESSION_COOKIE: &str = "qd_session";

/// The request's session, if it has a live one (set by [`load_session`]).
#[derive(Clone)]
pub struct MaybeSession(pub Option<SignedIn>);

/// Middleware: resolve the session cookie once, for the CSRF check and the handlers.
pub async fn load_session(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let name = state.config.cookie_name(SESSION_COOKIE);
    let signed_in = match read_cookie(req.headers(), &name) {
        Some(v) if !v.is_empty() && v.len() <= 128 => match state.core.session(site_dir(&req), &v).await {
            Ok(s) => s,
            Err(e) => return HtmlError(e).into_response(),
        },
        _ => None,
    };
    req.extensions_mut().insert(MaybeSession(signed_in));
    next.run(req).await
}

fn site_dir(req: &Request) -> Directory {
    req.extensions()
        .get::<Site>()
        .map(Site::directory)
        .unwrap_or(Directory::Platform)
}

/// A console handler's argument: a signed-in platform user on the base host. Without a
/// session the browser is sent to sign in (and back here afterwards); on a tenant's host the
/// console does not exist (404).
pub struct CurrentSession(pub SignedIn);

impl FromRequestParts<AppState> for CurrentSession {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &AppState) -> Result<Self, Self::Rejection> {
        if !matches!(parts.extensions.get::<Site>(), Some(Site::Base)) {
            return Err(HtmlError(quarterdeck_domain::Error::NotFound).into_response());
        }
        match parts.extensions.get::<MaybeSession>() {
            Some(MaybeSession(Some(s))) => Ok(Self(s.clone())),
            _ => Err(login_redirect(&parts.uri)),
        }
    }
}

/// A portal handler's argument: a signed-in user of the tenant whose host this is.
pub struct PortalSession(pub SignedIn, pub Tenant);

impl FromRequestParts<AppState> for PortalSession {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(Site::Tenant(t)) = parts.extensions.get::<Site>() else {
            return Err(HtmlError(quarterdeck_domain::Error::NotFound).into_response());
        };
        match parts.extensions.get::<MaybeSession>() {
            Some(MaybeSession(Some(s))) if s.session.must_change_password && parts.uri.path() != "/portal/password" => {
                // Signed in with a one-time password: nothing else until it is changed.
                if parts.method == axum::http::Method::GET {
                    Err(Redirect::to("/portal/password").into_response())
                } else {
                    Err(HtmlError(quarterdeck_domain::Error::PasswordChangeRequired).into_response())
                }
            }
            Some(MaybeSession(Some(s))) => Ok(Self(s.clone(), (**t).clone())),
            _ => Err(login_redirect(&parts.uri)),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for MaybeSession {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<MaybeSession>()
            .cloned()
            .unwrap_or(MaybeSession(None)))
    }
}

/// The TCP peer's address, when the server was started with connection info.
pub struct PeerAddr(pub Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for PeerAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0)))
    }
}

fn login_redirect(uri: &Uri) -> Response {
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    if path == "/" {
        return Redirect::to("/login").into_response();
    }
    let next: String = url::form_urlencoded::byte_serialize(path.as_bytes()).collect();
    Redirect::to(&format!("/login?next={next}")).into_response()
}

/// Only a same-origin path that starts with exactly one `/` is followed after sign-in;
/// anything else (`//evil`, `/\evil`, `https:…`, control characters) becomes `/`.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.starts_with("/\\")
                && n.len() <= 2048
                && n.chars().all(|c| c.is_ascii_graphic()) =>
        {
            n.to_owned()
        }
        _ => "/".to_owned(),
    }
}

/// The client's address (believing `X-Forwarded-For` only from configured proxies) and agent.
pub fn client_info(state: &AppState, headers: &HeaderMap, peer: &PeerAddr) -> ClientInfo {
    // Canonical forms throughout: on a dual-stack listener an IPv4 peer arrives as
    // `::ffff:a.b.c.d`, which must match `a.b.c.d` in `trusted_proxies` and key the same throttle.
    let trusted = |ip: &IpAddr| state.config.trusted_proxies.iter().any(|t| t.to_canonical() == *ip);
    let peer_ip = peer.0.map(|a| a.ip().to_canonical());
    let ip = match peer_ip {
        Some(p) if trusted(&p) => headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.split(',')
                    .rev()
                    .filter_map(|s| s.trim().parse::<IpAddr>().ok())
                    .map(|ip| ip.to_canonical())
                    .find(|ip| !trusted(ip))
            })
            .or(Some(p)),
        other => other,
    };
    ClientInfo {
        ip: ip.map(|i| i.to_string()),
        user_agent: headers
            .get(axum::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn only_same_origin_paths_are_followed_after_sign_in() {
        assert_eq!(safe_next(Some("/tenants?page=2")), "/tenants?page=2");
        for bad in [
            "//evil.io",
            "/\\evil.io",
            "https://evil.io",
            "javascript:alert(1)",
            "evil",
            "/a\r\nb",
            "/ａ",
            "",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad:?}");
        }
        assert_eq!(safe_next(None), "/");
    }
}
