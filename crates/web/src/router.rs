//! The URL map: every route Quarterdeck serves, in one place.
//!
//! Layers, outermost first: the edge's request id (`edge.rs`) → security headers → the edge's
//! error rendering, load shedding, timeout and body limit → site (base host or a tenant's
//! host, else 404) → session loading → CSRF check on every unsafe method. The data-plane API
//! (`/v1/data-plane/…`, service tokens), `/metrics` (the `metrics_token`) and `/readyz` sit beside those
//! three: any host, no cookies. Handlers
//! check permissions themselves, first thing.

use crate::auth::{csrf_guard, guard_token_endpoints, load_session, resolve_site};
use crate::error::ApiError;
use crate::pages::{
    api_keys, audit, billing, dashboard, impersonation, login, portal, provider_credentials, register, roles,
    service_tokens, settings, setup, sso, sso_settings, tenant_usage, tenant_users, tenants, tokens, usage, users,
    webhooks,
};
use crate::state::AppState;
use crate::{assets, edge, pages};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

pub fn router(state: AppState) -> Router {
    // Every endpoint that takes a secret from a link or a form (or, for /sso/start, writes a
    // row before anyone has proved anything): per-address limits before the handler runs.
    let token_endpoints = Router::new()
        .route("/setup", get(setup::form).post(setup::submit))
        .route("/register", get(register::form).post(register::submit))
        .route("/impersonate", get(impersonation::accept))
        // Single sign-on (base host: the platform's provider; tenant hosts: the tenant's, or the
        // platform's on its default tenant's host)
        .route("/sso/start", get(sso::start))
        .route("/sso/oidc/callback", get(sso::oidc_callback))
        .route("/sso/saml/acs", post(sso::saml_acs))
        .route("/sso/saml/finish", get(sso::saml_finish))
        .route_layer(from_fn_with_state(state.clone(), guard_token_endpoints));
    let routes = Router::new()
        .merge(token_endpoints)
        // Signed out
        .route("/login", get(login::form).post(login::submit))
        .route("/logout", post(login::logout))
        // Console (base host)
        .route("/", get(dashboard::home))
        .route("/tenants", get(tenants::list).post(tenants::create))
        .route("/tenants/new", get(tenants::new_form))
        .route("/tenants/{id}", get(tenants::show).post(tenants::update))
        .route("/tenants/{id}/status", post(tenants::change_status))
        .route("/tenants/{id}/delete", post(tenants::delete))
        .route("/tenants/{id}/budget", post(tenant_usage::set_budget))
        .route("/tenants/{id}/budget/delete", post(tenant_usage::remove_budget))
        .route("/tenants/{id}/impersonate", post(impersonation::start))
        .route("/tenants/{tid}/api-keys/{id}/revoke", post(api_keys::console_revoke))
        .route("/tenants/{tid}/users/{uid}", get(users::show_tenant_user))
        .route("/tenants/{tid}/users/{uid}/{action}", post(users::act_tenant_user))
        .route("/users", get(users::list))
        .route("/users/new", get(users::new_form).post(users::create))
        .route("/users/{id}", get(users::show_platform))
        .route("/users/{id}/{action}", post(users::act_platform))
        .route("/roles", get(roles::list))
        .route("/billing", get(billing::show))
        .route("/billing.csv", get(billing::export))
        .route("/audit", get(audit::list))
        .route("/audit/{id}", get(audit::show))
        .route("/settings", get(settings::show))
        .route("/settings/password", post(settings::change_password))
        .route("/settings/sessions/revoke", post(settings::end_other_sessions))
        .route("/settings/tokens", get(tokens::console).post(tokens::console_create))
        .route("/settings/tokens/{id}/revoke", post(tokens::console_revoke))
        .route(
            "/settings/service-tokens",
            get(service_tokens::list).post(service_tokens::create),
        )
        .route("/settings/service-tokens/{id}/revoke", post(service_tokens::revoke))
        .route("/settings/webhooks", get(webhooks::list).post(webhooks::create))
        .route("/settings/webhooks/new", get(webhooks::new_form))
        .route("/settings/webhooks/{id}", get(webhooks::show).post(webhooks::update))
        .route("/settings/webhooks/{id}/enable", post(webhooks::enable))
        .route("/settings/webhooks/{id}/disable", post(webhooks::disable))
        .route("/settings/webhooks/{id}/roll", post(webhooks::roll))
        .route("/settings/webhooks/{id}/delete", post(webhooks::delete))
        .route(
            "/settings/webhooks/{id}/deliveries/{delivery_id}/resend",
            post(webhooks::resend),
        )
        .route(
            "/settings/sso",
            get(sso_settings::console).post(sso_settings::console_save),
        )
        .route("/settings/sso/delete", post(sso_settings::console_delete))
        // Portal (tenant hosts)
        .route("/portal", get(portal::dashboard))
        .route("/portal/team", get(portal::team))
        .route("/portal/team/invite", get(portal::invite_form).post(portal::invite))
        .route("/portal/users/{id}", get(portal::user))
        .route("/portal/users/{id}/{action}", post(portal::act))
        .route("/portal/audit", get(portal::audit))
        .route("/portal/api-keys", get(api_keys::list).post(api_keys::create))
        .route("/portal/api-keys/{id}/roll", post(api_keys::roll))
        .route("/portal/api-keys/{id}/revoke", post(api_keys::revoke))
        .route("/portal/provider-credentials", get(provider_credentials::list))
        .route(
            "/portal/provider-credentials/{provider}",
            post(provider_credentials::save),
        )
        .route(
            "/portal/provider-credentials/{provider}/delete",
            post(provider_credentials::delete),
        )
        .route("/portal/usage", get(usage::usage))
        .route("/portal/usage.csv", get(usage::usage_csv))
        .route("/portal/cost", get(usage::cost))
        .route("/portal/settings/users", get(tenant_users::list))
        .route(
            "/portal/settings/users/new",
            get(tenant_users::add_form).post(tenant_users::add),
        )
        .route("/portal/settings/users/{id}/reset", post(tenant_users::reset))
        .route(
            "/portal/settings/tokens",
            get(tokens::portal).post(tokens::portal_create),
        )
        .route("/portal/settings/tokens/{id}/revoke", post(tokens::portal_revoke))
        .route(
            "/portal/settings/sso",
            get(sso_settings::portal).post(sso_settings::portal_save),
        )
        .route("/portal/settings/sso/delete", post(sso_settings::portal_delete))
        .route(
            "/portal/password",
            get(tenant_users::change_form).post(tenant_users::change),
        )
        .route("/impersonation/stop", post(impersonation::stop))
        // Automation API (bearer tokens; no cookies, no CSRF)
        .nest(
            "/v1",
            crate::api::router(&state)
                .layer(axum::Extension(std::sync::Arc::new(crate::api::ApiLimits)))
                .layer(from_fn(edge::note_route)),
        )
        // Machines
        .route("/healthz", get(health))
        .route("/static/{name}", get(assets::serve))
        .fallback(pages::not_found)
        .layer(from_fn_with_state(state.clone(), csrf_guard))
        .layer(from_fn_with_state(state.clone(), load_session))
        .layer(from_fn_with_state(state.clone(), resolve_site))
        .layer(from_fn(edge::note_route));
    // The data plane (service tokens) and the metrics (their own bearer token): any host name
    // (a data plane or a Prometheus often reaches Quarterdeck by an internal name), no site,
    // session or CSRF layer.
    let routes = Router::new()
        .nest(
            "/v1/data-plane",
            crate::api::data_plane::router().layer(from_fn(edge::note_route)),
        )
        .route("/metrics", get(crate::metrics::serve))
        .route("/readyz", get(crate::metrics::ready))
        .layer(from_fn(edge::note_route))
        .merge(routes);
    let routes = edge::limits(routes, state.config.edge)
        .layer(from_fn_with_state(content_security_policy(&state), security_headers));
    let meters = state.core.meters().clone();
    edge::request_ids(
        routes,
        std::sync::Arc::new(state.config.trusted_proxies.clone()),
        meters,
    )
    .with_state(state)
}

/// The separate metrics listener (`metrics_listen`): `GET /metrics` without a token, nothing
/// else.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(crate::metrics::serve_open))
        .fallback(|| async { (axum::http::StatusCode::NOT_FOUND, "not found\n") })
        .with_state(state)
}

/// Ready when the control database answers.
async fn health(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    state.core.ready().await?;
    Ok(axum::Json(serde_json::json!({ "status": "ok" })))
}

/// The CSP, made once. Browsers apply `form-action` to the redirects that follow a form
/// submission too: "Switch to tenant" posts on the base host and lands on the tenant's host,
/// "Stop impersonating" the other way round, so both the base origin and the tenant hosts are
/// allowed as form targets (CSRF protection still guards every one of them).
fn content_security_policy(state: &AppState) -> HeaderValue {
    let links = &state.core.config.links;
    let csp = format!(
        "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self' {s}://{h} {s}://*.{h}; object-src 'none'",
        s = links.scheme,
        h = links.host,
    );
    HeaderValue::from_str(&csp).unwrap_or_else(|_| HeaderValue::from_static("default-src 'self'; form-action 'self'"))
}

async fn security_headers(State(csp): State<HeaderValue>, req: Request, next: Next) -> Response {
    let is_static = req.uri().path().starts_with("/static/");
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, csp);
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if !is_static {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}
