//! "Switch to tenant": the console starts it (`POST /tenants/{id}/impersonate`, with a
//! reason), the tenant's host takes the single-use handoff (`GET /impersonate?token=…`) and
//! opens a fresh session there, and "Stop impersonating" (`POST /impersonation/stop`) ends it
//! and returns to the tenant's page in the console.

use crate::auth::{CurrentSession, MaybeSession, PortalSession, Site, clear_session_cookie, session_cookie};
use crate::error::HtmlError;
use crate::state::AppState;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use quarterdeck_domain::{Error, TenantId};
use serde::Deserialize;

#[derive(Deserialize)]
pub struct StartForm {
    #[serde(default)]
    reason: String,
}

pub async fn start(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    Path(id): Path<String>,
    Form(f): Form<StartForm>,
) -> Result<Response, HtmlError> {
    let tenant_id: TenantId = id.parse().map_err(|_| Error::NotFound)?;
    let (handoff, tenant) = state
        .core
        .start_impersonation(&s.principal, tenant_id, &f.reason)
        .await?;
    let origin = state.core.config.links.origin(Some(tenant.slug.as_str()));
    Ok(Redirect::to(&format!("{origin}/impersonate?token={}", handoff.expose())).into_response())
}

#[derive(Deserialize)]
pub struct AcceptQuery {
    #[serde(default)]
    token: String,
}

/// On the tenant's host: the browser arrives from the console with the handoff token.
pub async fn accept(
    State(state): State<AppState>,
    site: Site,
    MaybeSession(previous): MaybeSession,
    Query(q): Query<AcceptQuery>,
) -> Result<Response, HtmlError> {
    let Site::Tenant(tenant) = site else {
        return Err(Error::NotFound.into());
    };
    let (secret, _) = state.core.accept_impersonation(tenant.id, &q.token).await?;
    if let Some(old) = previous {
        state.core.discard_session(&old).await?;
    }
    let mut resp = Redirect::to("/portal").into_response();
    if let Ok(v) = session_cookie(&state.config, secret.expose()).parse() {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(resp)
}

pub async fn stop(State(state): State<AppState>, PortalSession(s, _): PortalSession) -> Result<Response, HtmlError> {
    let tenant = state.core.stop_impersonation(&s).await?;
    let mut back = state.config.base_url.clone();
    back.set_path(&format!("/tenants/{tenant}"));
    let mut resp = Redirect::to(back.as_str()).into_response();
    if let Ok(v) = clear_session_cookie(&state.config).parse() {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(resp)
}
