//! Per-address limits on the endpoints that take a secret from a link or a form — invitation
//! and setup links, impersonation handoffs, single sign-on answers — and on starting single
//! sign-on, which writes a row before anyone has proved anything.
//!
//! - **Misses**: a response that says the secret was no good (any 4xx but 422, which is a
//!   form the user can correct, and 429 itself) counts against the client's address; after
//!   [`FREE_MISSES`] the address backs off exponentially (2 s doubling, at most 15 minutes)
//!   and gets 429 with `Retry-After` before the handler runs. A 10,000-guess scan is thus
//!   slowed to a crawl, while a user who mistyped a link a few times is not noticed.
//! - **Starts**: `GET /sso/start` is allowed [`STARTS_PER_WINDOW`] times per address per
//!   [`START_WINDOW`], counted before the handler writes anything (the core also caps the
//!   attempts pending overall).
//!
//! The address is the one `client_info` believes (`X-Forwarded-For` only from trusted proxies).
//! State is in memory, per process (unlike the sign-in throttle, which is shared by every node
//! through the control database; a known gap in docs/ARCHITECTURE.md).

use super::session::{PeerAddr, client_info};
use crate::error::HtmlError;
use crate::state::AppState;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use quarterdeck_domain::Error;
use quarterdeck_domain::throttle::{Throttle, ThrottlePolicy};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use time::{Duration, OffsetDateTime};

/// Misses an address may make before it backs off.
pub const FREE_MISSES: u32 = 20;
/// Single sign-on starts an address may make per window.
pub const STARTS_PER_WINDOW: u32 = 60;
pub const START_WINDOW: Duration = Duration::minutes(1);
/// Most addresses remembered for starts before old windows are swept.
const MAX_TRACKED: usize = 100_000;

const MISS_POLICY: ThrottlePolicy = ThrottlePolicy {
    // The throttle starts backing off at the failure after its free ones: the request after
    // the FREE_MISSES-th miss waits.
    free_attempts: FREE_MISSES - 1,
    base: Duration::seconds(2),
    max: Duration::minutes(15),
    forget_after: Duration::hours(1),
};

/// The limits' state, shared by every request of this process.
#[derive(Debug)]
pub struct GuessingLimits {
    misses: Throttle,
    starts: Mutex<HashMap<String, (OffsetDateTime, u32)>>,
}

impl Default for GuessingLimits {
    fn default() -> Self {
        Self {
            misses: Throttle::new(MISS_POLICY),
            starts: Mutex::new(HashMap::new()),
        }
    }
}

impl GuessingLimits {
    /// Count a start; `Some(seconds)` to wait when the address is over its rate.
    fn start(&self, address: &str, now: OffsetDateTime) -> Option<u64> {
        let mut starts = self.starts.lock().unwrap_or_else(|p| p.into_inner());
        if starts.len() > MAX_TRACKED {
            starts.retain(|_, (began, _)| now - *began < START_WINDOW);
        }
        let entry = starts.entry(address.to_owned()).or_insert((now, 0));
        if now - entry.0 >= START_WINDOW {
            *entry = (now, 0);
        }
        if entry.1 >= STARTS_PER_WINDOW {
            let left = START_WINDOW - (now - entry.0);
            return Some(left.whole_seconds().max(1) as u64);
        }
        entry.1 += 1;
        None
    }
}

/// Whether a response says that the secret the request carried was no good.
fn is_miss(status: axum::http::StatusCode) -> bool {
    status.is_client_error() && status.as_u16() != 422 && status.as_u16() != 429
}

/// The route layer on every token-consuming endpoint (see the URL map).
pub async fn guard_token_endpoints(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let peer = PeerAddr(req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0));
    let address = client_info(&state, req.headers(), &peer).network();
    let now = state.core.clock.now();
    let limits = &state.guessing;
    if let Some(retry_after_secs) = limits.misses.check(&address, now) {
        return HtmlError(Error::Throttled { retry_after_secs }).into_response();
    }
    if req.uri().path() == "/sso/start"
        && let Some(retry_after_secs) = limits.start(&address, now)
    {
        return HtmlError(Error::Throttled { retry_after_secs }).into_response();
    }
    let resp = next.run(req).await;
    if is_miss(resp.status()) {
        limits.misses.record_failure(&address, now);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_are_counted_per_address_and_window() {
        let l = GuessingLimits::default();
        let t0 = OffsetDateTime::UNIX_EPOCH;
        for _ in 0..STARTS_PER_WINDOW {
            assert_eq!(l.start("a", t0), None);
        }
        assert_eq!(l.start("a", t0), Some(60));
        assert_eq!(l.start("b", t0), None, "another address has its own budget");
        assert_eq!(l.start("a", t0 + START_WINDOW), None, "a new window starts afresh");
    }

    #[test]
    fn only_answers_about_the_secret_are_misses() {
        use axum::http::StatusCode;
        for s in [
            StatusCode::GONE,
            StatusCode::NOT_FOUND,
            StatusCode::FORBIDDEN,
            StatusCode::BAD_REQUEST,
        ] {
            assert!(is_miss(s), "{s}");
        }
        for s in [
            StatusCode::OK,
            StatusCode::SEE_OTHER,
            StatusCode::UNPROCESSABLE_ENTITY,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::INTERNAL_SERVER_ERROR,
        ] {
            assert!(!is_miss(s), "{s}");
        }
    }
}
