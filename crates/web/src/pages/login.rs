//! `/login` and `/logout`, on the base host (platform users) and on tenant hosts (the tenant's
//! users). Platform users land on `/`, tenant users on `/portal`.

use super::{Chrome, render};
use crate::auth::{
    MaybeSession, PeerAddr, Site, anon_csrf_token, clear_session_cookie, client_info, safe_next, session_cookie,
};
use crate::error::HtmlError;
use crate::state::AppState;
use askama::Template;
use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use quarterdeck_domain::Error;
use serde::Deserialize;

#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    pub chrome: Chrome,
    pub email: String,
    pub next: String,
    pub error: Option<String>,
    pub notice: Option<&'static str>,
    /// The tenant's name on its host; `None` on the base host.
    pub organisation: Option<String>,
    /// Example organisation address, for the base host's guidance.
    pub org_example: String,
    /// The identity provider's button text, when the site offers single sign-on.
    pub sso: Option<String>,
    /// Whether the email and password form is shown (not in an SSO-only directory).
    pub passwords: bool,
}

#[derive(Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
    setup: Option<String>,
    registered: Option<String>,
}

fn landing(site: &Site, next: Option<&str>) -> String {
    let next = safe_next(next);
    match site {
        Site::Tenant(_) if next == "/" || !next.starts_with("/portal") => "/portal".to_owned(),
        _ => next,
    }
}

async fn page(state: &AppState, site: &Site, token: String, email: String, next: String) -> LoginPage {
    // If the provider cannot be read, the page still offers what it can: passwords.
    let offer = state.core.sso_offer(site.directory()).await.ok().flatten();
    LoginPage {
        passwords: offer.as_ref().is_none_or(|p| p.mode.allows_passwords()),
        sso: offer.map(|p| p.display_name),
        chrome: Chrome::signed_out(token),
        email,
        next,
        error: None,
        notice: None,
        organisation: match site {
            Site::Tenant(t) => Some(t.name.as_str().to_owned()),
            Site::Base => None,
        },
        org_example: state.core.config.links.origin(Some("your-org")),
    }
}

fn with_cookie(mut resp: Response, set_cookie: Option<String>) -> Response {
    if let Some(c) = set_cookie.and_then(|c| c.parse().ok()) {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

pub async fn form(
    State(state): State<AppState>,
    site: Site,
    MaybeSession(session): MaybeSession,
    headers: HeaderMap,
    Query(q): Query<LoginQuery>,
) -> Response {
    if session.is_some() {
        return Redirect::to(&landing(&site, q.next.as_deref())).into_response();
    }
    let (token, set_cookie) = anon_csrf_token(&state.config, &headers, &*state.core.rng);
    let mut p = page(&state, &site, token, String::new(), safe_next(q.next.as_deref())).await;
    p.notice = if q.setup.is_some() {
        Some("Your owner account is ready. Sign in with it.")
    } else if q.registered.is_some() {
        Some("Your password is set. Sign in with it.")
    } else {
        None
    };
    with_cookie(render(&p), set_cookie)
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    next: Option<String>,
}

pub async fn submit(
    State(state): State<AppState>,
    site: Site,
    MaybeSession(previous): MaybeSession,
    headers: HeaderMap,
    peer: PeerAddr,
    Form(f): Form<LoginForm>,
) -> Response {
    let client = client_info(&state, &headers, &peer);
    match state
        .core
        .sign_in(site.directory(), &f.email, &f.password, &client)
        .await
    {
        Ok((secret, _signed_in)) => {
            // Whoever was signed in on this browser before is signed out: one session a browser.
            if let Some(old) = previous {
                let _ = state.core.discard_session(&old).await;
            }
            let mut resp = Redirect::to(&landing(&site, f.next.as_deref())).into_response();
            if let Ok(v) = session_cookie(&state.config, secret.expose()).parse() {
                resp.headers_mut().append(header::SET_COOKIE, v);
            }
            resp
        }
        Err(e @ (Error::InvalidCredentials | Error::Throttled { .. } | Error::Busy | Error::TenantSuspended)) => {
            let (token, set_cookie) = anon_csrf_token(&state.config, &headers, &*state.core.rng);
            let status = crate::error::status_of(&e);
            let mut p = page(
                &state,
                &site,
                token,
                f.email.trim().chars().take(254).collect(),
                safe_next(f.next.as_deref()),
            )
            .await;
            p.error = Some(e.to_string());
            let mut resp = with_cookie((status, render(&p)).into_response(), set_cookie);
            if let Error::Throttled { retry_after_secs } = e
                && let Ok(v) = retry_after_secs.to_string().parse()
            {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            resp
        }
        Err(other) => HtmlError(other).into_response(),
    }
}

/// The sign-in page with an error (a refused single sign-on), with the error's status.
pub async fn error_page(state: &AppState, site: &Site, headers: &HeaderMap, e: &Error) -> Response {
    let (token, set_cookie) = anon_csrf_token(&state.config, headers, &*state.core.rng);
    let mut p = page(state, site, token, String::new(), "/".to_owned()).await;
    p.error = Some(e.to_string());
    with_cookie((crate::error::status_of(e), render(&p)).into_response(), set_cookie)
}

pub async fn logout(State(state): State<AppState>, MaybeSession(session): MaybeSession) -> Response {
    if let Some(s) = session
        && let Err(e) = state.core.sign_out(&s).await
    {
        return HtmlError(e).into_response();
    }
    let mut resp = Redirect::to("/login").into_response();
    if let Ok(v) = clear_session_cookie(&state.config).parse() {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}
