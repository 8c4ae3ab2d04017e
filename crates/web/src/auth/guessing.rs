//! Per-address limits on the endpoints that take a secret from a link or a form — invitation
//! and setup links, impersonation handoffs, single sign-on answers — and on starting single
//! sign-on, which writes a row before anyone has proved anything.
//!
//! - **Misses**: a response that says the secret was no good (any 4xx but 422, which is a
//!   form the user can correct, and 429 itself) counts against the client's address; after
//!   `LINK_FREE_MISSES` (20) the address backs off exponentially (2 s doubling, at most 15
//!   minutes) and gets 429 with `Retry-After` before the handler runs. A 10,000-guess scan is
//!   thus slowed to a crawl, while a user who mistyped a link a few times is not noticed.
//!   Every request that carries a secret is a guess in flight from before its handler runs
//!   until its answer is known (`Core::begin_link_guess`, reserved in the store): it counts
//!   as a miss meanwhile, so a burst of parallel guesses, on however many nodes, gets no more
//!   handler runs than the free misses (one refused only for the guesses in flight is told
//!   to try again in a second). A network backing off, or with its allowance in flight, is
//!   refused from a read that locks and writes nothing; the reservation itself waits 2 s at
//!   most for the network's row on PostgreSQL (then 503 `busy`). Its answer then keeps it as
//!   a miss or gives it back (anything else: 2xx, 3xx, 422, 5xx); a request that goes away
//!   first (the client hung up, the handler panicked, the request timed out) gives it back
//!   as it is dropped, and one whose node died lapses on its own after the request timeout
//!   and a margin.
//! - **Starts**: `GET /sso/start` carries no secret and is not reserved: it is refused while
//!   the network backs off, and allowed `SSO_STARTS_PER_MINUTE` (60) times per address per
//!   clock minute, counted before the handler writes anything (the core also caps the
//!   attempts pending overall).
//!
//! The address is the one `client_info` believes (`X-Forwarded-For` only from trusted proxies),
//! as a network (`ClientInfo::network`). The counting is the core's (`core/limits.rs`), in the
//! control database under hashed keys, so every node enforces one limit; this layer only maps
//! it onto HTTP.

use super::session::{PeerAddr, client_info};
use crate::error::HtmlError;
use crate::state::AppState;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::time::Duration;

/// How much longer than the request timeout a guess may stay in flight when nobody settles
/// it (its node died): past it, it no longer counts.
const IN_FLIGHT_MARGIN: Duration = Duration::from_secs(30);

/// Whether a response says that the secret the request carried was no good.
fn is_miss(status: axum::http::StatusCode) -> bool {
    status.is_client_error() && status.as_u16() != 422 && status.as_u16() != 429
}

/// The route layer on every token-consuming endpoint (see the URL map).
pub async fn guard_token_endpoints(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let peer = PeerAddr(req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0));
    let address = client_info(&state, req.headers(), &peer).network();
    if req.uri().path() == "/sso/start" {
        // It carries no secret (it cannot miss): not reserved, refused only while the
        // network backs off, and counted per minute before it writes anything.
        let checked = match state.core.check_link_backoff(&address).await {
            Ok(()) => state.core.count_sso_start(&address).await,
            Err(e) => Err(e),
        };
        return match checked {
            Ok(()) => next.run(req).await,
            Err(e) => HtmlError(e).into_response(),
        };
    }
    let running_for = state.config.edge.request_timeout + IN_FLIGHT_MARGIN;
    // From here until it is settled (or dropped), the guess counts as a miss on every node.
    let guess = match state.core.begin_link_guess(&address, running_for).await {
        Ok(guess) => guess,
        Err(e) => return HtmlError(e).into_response(),
    };
    let resp = next.run(req).await;
    settle(guess, is_miss(resp.status())).await;
    resp
}

/// Keep the guess as a miss, or give it back. A failure is only logged: the answer stands (a
/// guess not given back lapses on its own; a miss not recorded is one miss fewer).
async fn settle(guess: quarterdeck_domain::core::LinkGuess, miss: bool) {
    let settled = if miss {
        guess.missed().await
    } else {
        guess.not_missed().await
    };
    if let Err(e) = settled {
        tracing::warn!(error = %e, miss, "could not settle a guess at a secret-bearing link");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
