//! `/register?token=…`: an invitee sets their password (on their tenant's host, or on the
//! base host for platform users). Any bad link gets the same words.

use super::{Chrome, Errors, render};
use crate::auth::{Site, anon_csrf_token};
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
#[template(path = "register.html")]
pub struct RegisterPage {
    pub chrome: Chrome,
    pub token: String,
    pub email: String,
    pub organisation: String,
    pub min_password: usize,
    pub errors: Errors,
}

#[derive(Deserialize)]
pub struct RegisterQuery {
    #[serde(default)]
    token: String,
}

fn organisation(site: &Site) -> String {
    match site {
        Site::Tenant(t) => t.name.as_str().to_owned(),
        Site::Base => "the Quarterdeck platform team".to_owned(),
    }
}

pub async fn form(
    State(state): State<AppState>,
    site: Site,
    headers: HeaderMap,
    Query(q): Query<RegisterQuery>,
) -> Response {
    let user = match state.core.invitation(site.directory(), &q.token).await {
        Ok(u) => u,
        Err(e) => return HtmlError(e).into_response(),
    };
    let (csrf, set_cookie) = anon_csrf_token(&state.config, &headers, &*state.core.rng);
    let mut resp = render(&RegisterPage {
        chrome: Chrome::signed_out(csrf),
        token: q.token,
        email: user.email.to_string(),
        organisation: organisation(&site),
        min_password: state.core.config.password_min_chars,
        errors: Errors::default(),
    });
    if let Some(c) = set_cookie.and_then(|c| c.parse().ok()) {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

#[derive(Deserialize)]
pub struct RegisterForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    confirm: String,
}

pub async fn submit(
    State(state): State<AppState>,
    site: Site,
    headers: HeaderMap,
    Form(f): Form<RegisterForm>,
) -> Response {
    match state
        .core
        .register(site.directory(), &f.token, &f.password, &f.confirm)
        .await
    {
        Ok(_) => Redirect::to("/login?registered=true").into_response(),
        Err(Error::Validation(fields)) => {
            let email = match state.core.invitation(site.directory(), &f.token).await {
                Ok(u) => u.email.to_string(),
                Err(e) => return HtmlError(e).into_response(),
            };
            let (csrf, _) = anon_csrf_token(&state.config, &headers, &*state.core.rng);
            let page = RegisterPage {
                chrome: Chrome::signed_out(csrf),
                token: f.token,
                email,
                organisation: organisation(&site),
                min_password: state.core.config.password_min_chars,
                errors: Errors::from_fields(&fields),
            };
            (StatusCode::UNPROCESSABLE_ENTITY, render(&page)).into_response()
        }
        Err(e) => HtmlError(e).into_response(),
    }
}
