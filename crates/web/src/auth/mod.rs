//! Who is asking: sessions from cookies, CSRF checks on unsafe requests, the client address.

mod cookies;
mod csrf;
mod guessing;
mod session;
mod site;

pub use cookies::{
    SSO_BINDING_COOKIE, anon_csrf_token, clear_session_cookie, clear_sso_binding_cookie, read_cookie, session_cookie,
    sso_binding_cookie,
};
pub use csrf::{ANON_CSRF_COOKIE, csrf_guard};
pub use guessing::guard_token_endpoints;
pub use session::{
    CurrentSession, MaybeSession, PeerAddr, PortalSession, SESSION_COOKIE, client_info, load_session, safe_next,
};
pub use site::{Site, resolve_site};
