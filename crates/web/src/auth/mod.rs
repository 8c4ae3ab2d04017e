//! Who is asking: sessions from cookies, CSRF checks on unsafe requests, the client address.

mod cookies;
mod csrf;
mod session;
mod site;

pub use cookies::{anon_csrf_token, clear_session_cookie, session_cookie};
pub use csrf::{ANON_CSRF_COOKIE, csrf_guard};
pub use session::{
    CurrentSession, MaybeSession, PeerAddr, PortalSession, SESSION_COOKIE, client_info, load_session, safe_next,
};
pub use site::{Site, resolve_site};
