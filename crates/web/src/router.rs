//! The URL map: every route Quarterdeck serves, in one place.
//!
//! Layers, outermost first: security headers → base-host check → session loading → CSRF check
//! on every unsafe method. Handlers check permissions themselves, first thing.

use crate::auth::{csrf_guard, load_session};
use crate::error::ApiError;
use crate::pages::{audit, dashboard, login, settings, setup, tenants, users};
use crate::state::AppState;
use crate::{assets, pages};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

pub fn router(state: AppState) -> Router {
    Router::new()
        // Signed out
        .route("/login", get(login::form).post(login::submit))
        .route("/logout", post(login::logout))
        .route("/setup", get(setup::form).post(setup::submit))
        // Console
        .route("/", get(dashboard::show))
        .route("/tenants", get(tenants::list).post(tenants::create))
        .route("/tenants/new", get(tenants::new_form))
        .route("/tenants/{id}", get(tenants::show).post(tenants::update))
        .route("/tenants/{id}/status", post(tenants::change_status))
        .route("/tenants/{id}/delete", post(tenants::delete))
        .route("/users", get(users::list))
        .route("/audit", get(audit::list))
        .route("/audit/{id}", get(audit::show))
        .route("/settings", get(settings::show))
        .route("/settings/password", post(settings::change_password))
        .route(
            "/settings/sessions/revoke",
            post(settings::end_other_sessions),
        )
        // Machines
        .route("/healthz", get(health))
        .route("/static/{name}", get(assets::serve))
        .fallback(pages::not_found)
        .layer(from_fn_with_state(state.clone(), csrf_guard))
        .layer(from_fn_with_state(state.clone(), load_session))
        .layer(from_fn_with_state(state.clone(), base_host_only))
        .layer(from_fn(security_headers))
        .with_state(state)
}

/// Ready when the control database answers.
async fn health(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    state.core.store.owner_exists().await?;
    Ok(axum::Json(serde_json::json!({ "status": "ok" })))
}

/// The console answers on the base host only; any other `Host` gets a plain 404.
async fn base_host_only(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_ascii_lowercase);
    let expected = state.config.host();
    match host {
        Some(h) if h == expected || (req.uri().path() == "/healthz") => next.run(req).await,
        _ => pages::not_found().await.into_response(),
    }
}

async fn security_headers(req: Request, next: Next) -> Response {
    let is_static = req.uri().path().starts_with("/static/");
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !is_static {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}
