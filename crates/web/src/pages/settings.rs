//! `/settings`: your account (password, other sessions) and the effective settings.

use super::{Chrome, Errors, render};
use crate::auth::{CurrentSession, PeerAddr, client_info, session_cookie};
use crate::error::HtmlError;
use crate::state::{AppState, SettingRow};
use askama::Template;
use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use quarterdeck_domain::Error;
use quarterdeck_domain::core::SignedIn;
use quarterdeck_domain::role::Capability;
use serde::Deserialize;

#[derive(Template)]
#[template(path = "settings.html")]
pub struct SettingsPage {
    pub chrome: Chrome,
    pub email: String,
    pub roles: String,
    pub min_password: usize,
    pub errors: Errors,
    pub notice: Option<String>,
    pub settings: Option<Vec<SettingRow>>,
    pub backend: &'static str,
    pub version: &'static str,
    /// Settings → Service tokens, for who may manage them.
    pub can_service_tokens: bool,
    /// Settings → Webhooks, for who may manage them.
    pub can_webhooks: bool,
}

fn page(state: &AppState, s: &SignedIn) -> SettingsPage {
    SettingsPage {
        chrome: Chrome::console(s, "settings"),
        email: s.user.email.to_string(),
        roles: s.user.roles.join(", "),
        min_password: state.core.config.password_min_chars,
        errors: Errors::default(),
        notice: None,
        settings: s
            .principal
            .can(&Capability::SettingsRead)
            .then(|| state.config.settings.clone()),
        backend: state.core.backend(),
        version: state.config.version,
        can_service_tokens: s
            .principal
            .require::<quarterdeck_domain::access::ManageServiceTokens>()
            .is_ok(),
        can_webhooks: s
            .principal
            .require::<quarterdeck_domain::access::ManageWebhooks>()
            .is_ok(),
    }
}

#[derive(Deserialize, Default)]
pub struct SettingsQuery {
    done: Option<String>,
    ended: Option<u64>,
}

pub async fn show(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    Query(q): Query<SettingsQuery>,
) -> Response {
    let mut p = page(&state, &s);
    p.notice = match q.done.as_deref() {
        Some("password") => Some("Password changed. Your other sessions were signed out.".to_owned()),
        Some("sessions") => Some(format!("Signed out of {} other session(s).", q.ended.unwrap_or(0))),
        _ => None,
    };
    render(&p)
}

#[derive(Deserialize)]
pub struct PasswordForm {
    #[serde(default)]
    current_password: String,
    #[serde(default)]
    new_password: String,
    #[serde(default)]
    confirm: String,
}

/// A new session id for this browser after the change (every other session has ended).
pub async fn change_password(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    headers: HeaderMap,
    peer: PeerAddr,
    Form(f): Form<PasswordForm>,
) -> Result<Response, HtmlError> {
    let client = client_info(&state, &headers, &peer);
    match state
        .core
        .change_password(&s, &f.current_password, &f.new_password, &f.confirm, &client)
        .await
    {
        Ok(secret) => {
            let mut resp = Redirect::to("/settings?done=password").into_response();
            if let Ok(v) = session_cookie(&state.config, secret.expose()).parse() {
                resp.headers_mut().append(header::SET_COOKIE, v);
            }
            Ok(resp)
        }
        Err(Error::Validation(fields)) => {
            let mut p = page(&state, &s);
            p.errors = Errors::from_fields(&fields);
            Ok((StatusCode::UNPROCESSABLE_ENTITY, render(&p)).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn end_other_sessions(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
) -> Result<Response, HtmlError> {
    let n = state.core.end_other_sessions(&s).await?;
    Ok(Redirect::to(&format!("/settings?done=sessions&ended={n}")).into_response())
}
