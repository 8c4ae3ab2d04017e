//! The server's edge: what every request meets before the routes, built from tower-http and
//! tower layers.
//!
//! Outermost first:
//! 1. `x-request-id`: kept only from a trusted proxy (`trusted_proxies`) and only if it is a
//!    short token, else made here (a UUID); returned on the response, a field of the request's
//!    tracing span (so of every log line the request causes), and on every error page and JSON
//!    error (`request_id`).
//! 2. (the security headers, in `router.rs`)
//! 3. Edge errors rendered like any other error: 408 `request_timeout`, 413 `body_too_large`,
//!    503 `overloaded` (JSON under `/v1`, a page elsewhere).
//! 4. The whole body read before the request takes a concurrency slot, within
//!    `body_read_timeout` (408) and the body limit (413): a client that sends its body slowly
//!    holds a connection, never one of the slots every other request needs.
//! 5. A concurrency limit that sheds (503 with `Retry-After`) instead of queueing.
//! 6. A request timeout (408).
//! 7. One body limit for every route, forms and API alike (413): a `Content-Length` over it
//!    is refused before the body is read, a chunked body when it grows past it.

use crate::error::edge_error;
use axum::Router;
use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, StatusCode, Uri};
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use quarterdeck_domain::meters::Meters;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The edge's limits (settings `request_timeout_seconds`, `max_concurrent_requests`,
/// `max_body_bytes`).
#[derive(Clone, Copy, Debug)]
pub struct EdgeLimits {
    pub request_timeout: Duration,
    pub max_concurrent_requests: usize,
    pub max_body_bytes: usize,
    /// How long a client has to send a request's whole body (`header_read_timeout_seconds`,
    /// at most the request timeout).
    pub body_read_timeout: Duration,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            max_concurrent_requests: 512,
            max_body_bytes: 512 * 1024,
            body_read_timeout: Duration::from_secs(10),
        }
    }
}

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being handled (for error pages and JSON errors).
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok().filter(|id| !id.is_empty())
}

fn is_api(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

/// Layers 3 to 7, around the routes (inside the security headers).
pub fn limits<S: Clone + Send + Sync + 'static>(router: Router<S>, limits: EdgeLimits) -> Router<S> {
    router
        .layer(RequestBodyLimitLayer::new(limits.max_body_bytes))
        // One limit: axum's own (2 MiB on its extractors) is off.
        .layer(DefaultBodyLimit::disable())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(shed))
                .layer(LoadShedLayer::new())
                .layer(GlobalConcurrencyLimitLayer::new(limits.max_concurrent_requests.max(1))),
        )
        .layer(from_fn_with_state(limits, read_body_first))
        .layer(from_fn(render_edge_errors))
}

/// Layer 1, outermost; inside the request's span, the measurement of every request (its
/// counter and latency, and the completion log line).
pub fn request_ids<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    trusted_proxies: Arc<Vec<IpAddr>>,
    meters: Meters,
) -> Router<S> {
    router
        .layer(from_fn_with_state(meters, observe))
        .layer(from_fn(scope_request_id))
        .layer(PropagateRequestIdLayer::new(X_REQUEST_ID))
        // No ERROR line per 5xx (a shedding server would log one per refused request):
        // internal errors are logged once, with their reference, where they happen.
        .layer(TraceLayer::new_for_http().make_span_with(request_span).on_failure(()))
        .layer(SetRequestIdLayer::new(X_REQUEST_ID, MakeRequestUuid))
        .layer(from_fn_with_state(trusted_proxies, distrust_request_id))
}

/// A request id is taken from the request only when a trusted proxy sent it and it is a short
/// token (it goes into log lines and pages).
async fn distrust_request_id(State(trusted): State<Arc<Vec<IpAddr>>>, mut req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_canonical());
    let sent = req.headers().get_all(&X_REQUEST_ID).iter().collect::<Vec<_>>();
    let keep = peer.is_some_and(|p| trusted.iter().any(|t| t.to_canonical() == p))
        && sent.len() == 1
        && sent.first().is_some_and(|v| acceptable_id(v.as_bytes()));
    if !keep {
        req.headers_mut().remove(&X_REQUEST_ID);
    }
    next.run(req).await
}

fn acceptable_id(v: &[u8]) -> bool {
    (1..=128).contains(&v.len()) && v.iter().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
}

fn request_id_of(req: &Request) -> &str {
    req.headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// Every log line inside a request carries its method, path and id (the span is INFO, so
/// it is there at the default filter).
fn request_span(req: &Request<Body>) -> tracing::Span {
    tracing::info_span!(
        "request",
        method = %req.method(),
        path = %req.uri().path(),
        request_id = %request_id_of(req),
    )
}

async fn scope_request_id(req: Request, next: Next) -> Response {
    let id = request_id_of(&req).to_owned();
    REQUEST_ID.scope(id, next.run(req)).await
}

/// Reads the whole body (bounded in size and time) before the request goes further in, so
/// that the slots of the concurrency limit are held only by requests the server can work on.
async fn read_body_first(State(limits): State<EdgeLimits>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    }
    let (parts, body) = req.into_parts();
    let within = limits.body_read_timeout.min(limits.request_timeout);
    match tokio::time::timeout(within, axum::body::to_bytes(body, limits.max_body_bytes)).await {
        Err(_) => StatusCode::REQUEST_TIMEOUT.into_response(),
        Ok(Ok(bytes)) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_large {
                StatusCode::PAYLOAD_TOO_LARGE.into_response()
            } else {
                // The client went away or sent a broken body.
                StatusCode::BAD_REQUEST.into_response()
            }
        }
    }
}

/// The 408 of the timeout, the 413 of the body limit (or of an extractor that hit it) are
/// answered like every other error; a domain error already rendered (marked
/// [`crate::error::Rendered`], such as 413 `batch_too_large`) is left as it is.
async fn render_edge_errors(req: Request, next: Next) -> Response {
    let api = is_api(req.uri().path());
    let resp = next.run(req).await;
    // A domain error already rendered (e.g. 413 `batch_too_large`) says what it means.
    if resp.extensions().get::<crate::error::Rendered>().is_some() {
        return resp;
    }
    match resp.status() {
        StatusCode::PAYLOAD_TOO_LARGE => edge_error(
            api,
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "Too large",
            "The request body is larger than this server accepts.",
        ),
        StatusCode::REQUEST_TIMEOUT => edge_error(
            api,
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "Took too long",
            "The request took too long and was stopped. Check whether it took effect before trying again.",
        ),
        _ => resp,
    }
}

/// The concurrency limit's refusal (or, should it ever happen, another layer error).
async fn shed(uri: Uri, err: tower::BoxError) -> Response {
    let api = is_api(uri.path());
    if err.is::<tower::load_shed::error::Overloaded>() {
        edge_error(
            api,
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "Busy",
            "The server is handling as many requests as it takes at once. Try again in a moment.",
        )
    } else {
        tracing::error!(error = %err, "a layer of the edge failed");
        edge_error(
            api,
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Something went wrong",
            "The server could not finish this request.",
        )
    }
}

/// What the inner layers learn about a request that the outer measurement reports: the
/// matched route template (set where the route matched, nested routers included) and the
/// tenant whose host it came to.
#[derive(Clone, Default)]
pub struct Notes(Arc<std::sync::Mutex<Noted>>);

#[derive(Default)]
struct Noted {
    route: Option<String>,
    tenant: Option<String>,
}

impl Notes {
    fn with<T>(&self, f: impl FnOnce(&mut Noted) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

/// Records the tenant (its slug) a request is for, for the completion log line.
pub fn note_tenant(req: &Request, slug: &str) {
    if let Some(n) = req.extensions().get::<Notes>() {
        n.with(|n| n.tenant = Some(slug.to_owned()));
    }
}

/// Middleware on each router that has routes: records the matched route's template (never
/// the path itself: no ids in metric labels). The innermost router's template wins.
pub async fn note_route(req: Request, next: Next) -> Response {
    if let (Some(n), Some(p)) = (
        req.extensions().get::<Notes>(),
        req.extensions().get::<axum::extract::MatchedPath>(),
    ) {
        let p = p.as_str().to_owned();
        n.with(|n| n.route = Some(p));
    }
    next.run(req).await
}

/// Counts the request by route template, method and status, records its latency, and logs
/// its completion (request id, route, status, duration, tenant).
async fn observe(State(meters): State<Meters>, mut req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let notes = Notes::default();
    req.extensions_mut().insert(notes.clone());
    let method = req.method().clone();
    let request_id = request_id_of(&req).to_owned();
    let resp = next.run(req).await;
    let elapsed = started.elapsed();
    let (route, tenant) = notes.with(|n| (n.route.take(), n.tenant.take()));
    let route = route.unwrap_or_else(|| "unmatched".to_owned());
    let status = resp.status().as_u16();
    // A label from a closed set: a client may send any extension method.
    let method_label = match method.as_str() {
        m @ ("GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS") => m,
        _ => "other",
    };
    meters.http_request(&route, method_label, status, elapsed.as_secs_f64());
    let duration_ms = elapsed.as_secs_f64() * 1000.0;
    match tenant {
        Some(tenant) => tracing::info!(
            request_id = %request_id,
            route = %route,
            status,
            duration_ms,
            tenant = %tenant,
            "request completed"
        ),
        None => tracing::info!(
            request_id = %request_id,
            route = %route,
            status,
            duration_ms,
            "request completed"
        ),
    }
    resp
}
