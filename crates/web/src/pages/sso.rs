//! Signing in through the site's identity provider.
//!
//! `GET /sso/start` begins (a single-use attempt bound to this browser by a cookie) and sends
//! the browser to the provider. The answer comes back to `GET /sso/oidc/callback` (OIDC) or as
//! the provider's cross-site `POST /sso/saml/acs` (SAML; it carries no cookie, so the verified
//! answer waits for the browser's own `GET /sso/saml/finish`, which must present the cookie).
//! The platform's provider is also offered on its default tenant's host (when that tenant has
//! no provider of its own): every step of a sign-in happens on one host.

use super::login;
use crate::auth::{
    MaybeSession, PeerAddr, SSO_BINDING_COOKIE, Site, clear_sso_binding_cookie, client_info, read_cookie,
    session_cookie, sso_binding_cookie,
};
use crate::error::HtmlError;
use crate::sso::{SsoEndpoints, verify_saml};
use crate::state::AppState;
use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use quarterdeck_domain::Error;
use quarterdeck_domain::core::ClientInfo;
use quarterdeck_domain::user::Directory;
use serde::Deserialize;

fn endpoints(state: &AppState, site: &Site) -> SsoEndpoints {
    SsoEndpoints::for_origin(&site.origin(state))
}

fn landing(site: &Site) -> &'static str {
    match site {
        Site::Tenant(_) => "/portal",
        Site::Base => "/",
    }
}

fn add_cookie(resp: &mut Response, cookie: String) {
    if let Ok(v) = cookie.parse() {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// A refused sign-in: the sign-in page again, with the reason.
async fn refused(state: &AppState, site: &Site, headers: &HeaderMap, e: Error) -> Response {
    match e {
        e @ (Error::SsoFailed(_) | Error::TenantSuspended | Error::TenantReadOnly | Error::Throttled { .. }) => {
            let mut resp = login::error_page(state, site, headers, &e).await;
            add_cookie(&mut resp, clear_sso_binding_cookie(&state.config));
            resp
        }
        other => HtmlError(other).into_response(),
    }
}

pub async fn start(State(state): State<AppState>, site: Site, headers: HeaderMap, peer: PeerAddr) -> Response {
    let client = client_info(&state, &headers, &peer);
    let start = match state.core.begin_sso(site.directory()).await {
        Ok(s) => s,
        Err(e) => return refused(&state, &site, &headers, e).await,
    };
    match state
        .sso
        .redirect_url(&state.core, &start, &endpoints(&state, &site))
        .await
    {
        Ok(url) => {
            let mut resp = Redirect::to(&url).into_response();
            add_cookie(&mut resp, sso_binding_cookie(&state.config, start.binding.expose()));
            resp
        }
        Err(r) => {
            let e = state
                .core
                .sso_refused(site.directory(), Some(&start.provider), r.reason, &r.detail, &client)
                .await;
            refused(&state, &site, &headers, e).await
        }
    }
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    #[serde(default)]
    code: String,
    #[serde(default)]
    state: String,
    error: Option<String>,
}

pub async fn oidc_callback(
    State(state): State<AppState>,
    site: Site,
    MaybeSession(previous): MaybeSession,
    headers: HeaderMap,
    peer: PeerAddr,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let client = client_info(&state, &headers, &peer);
    let dir = site.directory();
    let binding = read_cookie(&headers, &state.config.cookie_name(SSO_BINDING_COOKIE)).unwrap_or_default();
    let (attempt, provider) = match state
        .core
        .take_sso_attempt(dir, &q.state, Some(&binding), &client)
        .await
    {
        Ok(a) => a,
        Err(e) => return refused(&state, &site, &headers, e).await,
    };
    if let Some(err) = q.error {
        let detail: String = err.chars().filter(char::is_ascii_graphic).take(100).collect();
        let e = state
            .core
            .sso_refused(
                dir,
                Some(&provider),
                "provider_error",
                &format!("provider answered {detail}"),
                &client,
            )
            .await;
        return refused(&state, &site, &headers, e).await;
    }
    let login = match state
        .sso
        .verify_oidc(&state.core, &provider, &attempt, &q.code, &endpoints(&state, &site))
        .await
    {
        Ok(l) => l,
        Err(r) => {
            let e = state
                .core
                .sso_refused(dir, Some(&provider), r.reason, &r.detail, &client)
                .await;
            return refused(&state, &site, &headers, e).await;
        }
    };
    finish(&state, &site, &headers, previous, dir, &provider, login, &client).await
}

#[derive(Deserialize)]
pub struct AcsForm {
    #[serde(rename = "SAMLResponse", default)]
    saml_response: String,
    #[serde(rename = "RelayState", default)]
    relay_state: String,
}

/// The identity provider's POST (cross-site: no cookies, no CSRF token; the signed assertion,
/// its InResponseTo and the single-use RelayState are what protect it).
pub async fn saml_acs(
    State(state): State<AppState>,
    site: Site,
    headers: HeaderMap,
    peer: PeerAddr,
    Form(f): Form<AcsForm>,
) -> Response {
    let client = client_info(&state, &headers, &peer);
    let dir = site.directory();
    let (attempt, provider) = match state.core.take_sso_attempt(dir, &f.relay_state, None, &client).await {
        Ok(a) if a.0.outcome.is_none() => a,
        Ok((_, p)) => {
            let e = state
                .core
                .sso_refused(
                    dir,
                    Some(&p),
                    "attempt_invalid",
                    "a second answer for one attempt",
                    &client,
                )
                .await;
            return refused(&state, &site, &headers, e).await;
        }
        Err(e) => return refused(&state, &site, &headers, e).await,
    };
    let now = state.core.clock.now();
    // xmlsec works under one process-wide lock: off the async workers.
    let verified = {
        let (provider, attempt, response, endpoints) = (
            provider.clone(),
            attempt.clone(),
            f.saml_response,
            endpoints(&state, &site),
        );
        tokio::task::spawn_blocking(move || verify_saml(&provider, &attempt, &response, &endpoints, now)).await
    };
    let verified = match verified {
        Ok(v) => v,
        Err(e) => return HtmlError(Error::internal(format!("SAML verification task: {e}"))).into_response(),
    };
    let answer = match verified {
        Ok(a) => a,
        Err(r) => {
            let e = state
                .core
                .sso_refused(dir, Some(&provider), r.reason, &r.detail, &client)
                .await;
            return refused(&state, &site, &headers, e).await;
        }
    };
    if let Err(e) = state
        .core
        .check_assertion_replay(dir, &provider, &answer.assertion_id, answer.not_on_or_after, &client)
        .await
    {
        return refused(&state, &site, &headers, e).await;
    }
    let relay = f.relay_state.clone();
    if let Err(e) = state.core.park_saml_outcome(attempt, answer.login).await {
        return HtmlError(e).into_response();
    }
    let q: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("state", &relay)
        .finish();
    Redirect::to(&format!("/sso/saml/finish?{q}")).into_response()
}

#[derive(Deserialize)]
pub struct FinishQuery {
    #[serde(default)]
    state: String,
}

pub async fn saml_finish(
    State(state): State<AppState>,
    site: Site,
    MaybeSession(previous): MaybeSession,
    headers: HeaderMap,
    peer: PeerAddr,
    Query(q): Query<FinishQuery>,
) -> Response {
    let client = client_info(&state, &headers, &peer);
    let dir = site.directory();
    let binding = read_cookie(&headers, &state.config.cookie_name(SSO_BINDING_COOKIE)).unwrap_or_default();
    let (attempt, provider) = match state
        .core
        .take_sso_attempt(dir, &q.state, Some(&binding), &client)
        .await
    {
        Ok(a) => a,
        Err(e) => return refused(&state, &site, &headers, e).await,
    };
    let Some(login) = attempt.outcome else {
        let e = state
            .core
            .sso_refused(
                dir,
                Some(&provider),
                "attempt_invalid",
                "no verified answer yet",
                &client,
            )
            .await;
        return refused(&state, &site, &headers, e).await;
    };
    finish(&state, &site, &headers, previous, dir, &provider, login, &client).await
}

#[allow(clippy::too_many_arguments)]
async fn finish(
    state: &AppState,
    site: &Site,
    headers: &HeaderMap,
    previous: Option<quarterdeck_domain::core::SignedIn>,
    dir: Directory,
    provider: &quarterdeck_domain::sso::IdentityProvider,
    login: quarterdeck_domain::sso::ExternalLogin,
    client: &ClientInfo,
) -> Response {
    match state.core.complete_sso(dir, provider, login, client).await {
        Ok((secret, _)) => {
            // Whoever was signed in on this browser before is signed out: one session a browser.
            if let Some(old) = previous {
                let _ = state.core.discard_session(&old).await;
            }
            let mut resp = Redirect::to(landing(site)).into_response();
            add_cookie(&mut resp, session_cookie(&state.config, secret.expose()));
            add_cookie(&mut resp, clear_sso_binding_cookie(&state.config));
            resp
        }
        Err(e) => refused(state, site, headers, e).await,
    }
}
