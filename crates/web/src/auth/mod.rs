//! Who is asking: sessions from cookies, CSRF checks on unsafe requests, the client address.

mod cookies;
mod csrf;
mod session;

pub use cookies::{anon_csrf_token, clear_session_cookie, session_cookie};
pub use csrf::{ANON_CSRF_COOKIE, csrf_guard};
pub use session::{CurrentSession, PeerAddr, SESSION_COOKIE, client_info, load_session, safe_next};
