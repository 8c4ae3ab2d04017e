//! `/login` and `/logout` on the base host.

use super::{Chrome, render};
use crate::auth::{
    CurrentSession, PeerAddr, anon_csrf_token, clear_session_cookie, client_info, safe_next,
    session_cookie,
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
}

#[derive(Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
    setup: Option<String>,
}

pub async fn form(
    State(state): State<AppState>,
    session: Option<CurrentSession>,
    headers: HeaderMap,
    Query(q): Query<LoginQuery>,
) -> Response {
    if session.is_some() {
        return Redirect::to(&safe_next(q.next.as_deref())).into_response();
    }
    let (token, set_cookie) = anon_csrf_token(&state.config, &headers, &*state.core.rng);
    let page = LoginPage {
        chrome: Chrome::signed_out(token),
        email: String::new(),
        next: safe_next(q.next.as_deref()),
        error: None,
        notice: q
            .setup
            .is_some()
            .then_some("Your owner account is ready. Sign in with it."),
    };
    with_cookie(render(&page), set_cookie)
}

fn with_cookie(mut resp: Response, set_cookie: Option<String>) -> Response {
    if let Some(c) = set_cookie.and_then(|c| c.parse().ok()) {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
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
    headers: HeaderMap,
    peer: PeerAddr,
    Form(f): Form<LoginForm>,
) -> Response {
    let client = client_info(&state, &headers, &peer);
    let next = safe_next(f.next.as_deref());
    match state.core.sign_in(&f.email, &f.password, &client).await {
        Ok((secret, _signed_in)) => {
            let mut resp = Redirect::to(&next).into_response();
            if let Ok(v) = session_cookie(&state.config, secret.expose()).parse() {
                resp.headers_mut().append(header::SET_COOKIE, v);
            }
            resp
        }
        Err(e @ (Error::InvalidCredentials | Error::Throttled { .. } | Error::Busy)) => {
            let (token, set_cookie) = anon_csrf_token(&state.config, &headers, &*state.core.rng);
            let status = crate::error::status_of(&e);
            let page = LoginPage {
                chrome: Chrome::signed_out(token),
                email: f.email.trim().chars().take(254).collect(),
                next,
                error: Some(e.to_string()),
                notice: None,
            };
            let mut resp = with_cookie((status, render(&page)).into_response(), set_cookie);
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

pub async fn logout(State(state): State<AppState>, session: Option<CurrentSession>) -> Response {
    if let Some(CurrentSession(s)) = session
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
