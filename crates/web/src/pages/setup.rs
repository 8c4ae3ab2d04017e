//! `/setup?token=…`: the one-time first-run link that creates the first owner.

use super::{Chrome, Errors, render};
use crate::auth::anon_csrf_token;
use crate::error::HtmlError;
use crate::state::AppState;
use askama::Template;
use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use quarterdeck_domain::Error;
use serde::Deserialize;

#[derive(Template)]
#[template(path = "setup.html")]
pub struct SetupPage {
    pub chrome: Chrome,
    pub token: String,
    pub email: String,
    pub name: String,
    pub min_password: usize,
    pub errors: Errors,
}

#[derive(Deserialize)]
pub struct SetupQuery {
    #[serde(default)]
    token: String,
}

pub async fn form(State(state): State<AppState>, headers: HeaderMap, Query(q): Query<SetupQuery>) -> Response {
    match state.core.setup_token_valid(&q.token).await {
        Ok(true) => {}
        Ok(false) => {
            return HtmlError(Error::LinkInvalid("This setup link is invalid, spent or expired.")).into_response();
        }
        Err(e) => return HtmlError(e).into_response(),
    }
    let (csrf, set_cookie) = anon_csrf_token(&state.config, &headers, &*state.core.rng);
    let page = SetupPage {
        chrome: Chrome::signed_out(csrf),
        token: q.token,
        email: String::new(),
        name: String::new(),
        min_password: state.core.config.password_min_chars,
        errors: Errors::default(),
    };
    let mut resp = render(&page);
    if let Some(c) = set_cookie.and_then(|c| c.parse().ok()) {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

#[derive(Deserialize)]
pub struct SetupForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    confirm: String,
}

pub async fn submit(State(state): State<AppState>, headers: HeaderMap, Form(f): Form<SetupForm>) -> Response {
    match state
        .core
        .setup_owner(&f.token, &f.email, &f.name, &f.password, &f.confirm)
        .await
    {
        Ok(_) => Redirect::to("/login?setup=done").into_response(),
        Err(Error::Validation(fields)) => {
            let (csrf, _) = anon_csrf_token(&state.config, &headers, &*state.core.rng);
            let page = SetupPage {
                chrome: Chrome::signed_out(csrf),
                token: f.token,
                email: f.email,
                name: f.name,
                min_password: state.core.config.password_min_chars,
                errors: Errors::from_fields(&fields),
            };
            (StatusCode::UNPROCESSABLE_ENTITY, render(&page)).into_response()
        }
        Err(e) => HtmlError(e).into_response(),
    }
}
