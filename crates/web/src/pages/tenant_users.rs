//! The tenant's Settings → Users (runbook-impersonation-onboarding): Add user with a generated
//! one-time password shown exactly once, and Reset password. The same place for a tenant admin
//! and for an impersonating platform admin. Also the forced password change.

use super::people::{RoleOpt, UserRow, role_options};
use super::portal::PortalChrome;
use super::{Chrome, Errors, render};
use crate::auth::{PortalSession, session_cookie};
use crate::error::HtmlError;
use crate::state::AppState;
use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use quarterdeck_domain::access::{ManageDirectory, ReadDirectory};
use quarterdeck_domain::core::NewUserRequest;
use quarterdeck_domain::role::{Capability, Scope};
use quarterdeck_domain::user::Directory;
use quarterdeck_domain::{Error, UserId};
use serde::Deserialize;

#[derive(Template)]
#[template(path = "portal_settings_users.html")]
pub struct UsersPage {
    pub chrome: PortalChrome,
    pub users: Vec<UserRow>,
    /// The organisation signs in with single sign-on only: no one-time passwords here.
    pub sso_only: bool,
}

pub async fn list(State(state): State<AppState>, PortalSession(s, t): PortalSession) -> Result<Response, HtmlError> {
    if !s.principal.can(&Capability::TenantUsersManage) {
        return Err(Error::Forbidden.into());
    }
    let now = state.core.clock.now();
    let users = state
        .core
        .users(&s.principal.require_in::<ReadDirectory>(Directory::Tenant(t.id))?)
        .await?;
    let mode = state.core.sign_in_mode(Directory::Tenant(t.id)).await?;
    Ok(render(&UsersPage {
        chrome: PortalChrome::new(&s, &t, "settings"),
        users: users.iter().map(|v| UserRow::from_view(v, now)).collect(),
        sso_only: !mode.allows_passwords(),
    }))
}

#[derive(Template)]
#[template(path = "portal_add_user.html")]
pub struct AddUserPage {
    pub chrome: PortalChrome,
    pub email: String,
    pub name: String,
    pub roles: Vec<RoleOpt>,
    pub force_change: bool,
    pub errors: Errors,
}

pub async fn add_form(
    State(state): State<AppState>,
    PortalSession(s, t): PortalSession,
) -> Result<Response, HtmlError> {
    if !s.principal.can(&Capability::TenantUsersManage) {
        return Err(Error::Forbidden.into());
    }
    let admin = state.core.catalog().admin_role().to_owned();
    Ok(render(&AddUserPage {
        chrome: PortalChrome::new(&s, &t, "settings"),
        email: String::new(),
        name: String::new(),
        roles: role_options(state.core.catalog(), &s.principal, Some(Scope::Tenant), &[admin]),
        force_change: true,
        errors: Errors::default(),
    }))
}

/// The one page that ever shows a one-time password.
#[derive(Template)]
#[template(path = "portal_one_time_password.html")]
pub struct OneTimePasswordPage {
    pub chrome: PortalChrome,
    pub email: String,
    pub password: String,
    pub created: bool,
    pub expires_hours: i64,
    pub force_change: bool,
}

#[derive(Deserialize)]
pub struct AddForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    role: String,
    /// A checkbox: present when checked.
    force_change: Option<String>,
}

pub async fn add(
    State(state): State<AppState>,
    PortalSession(s, t): PortalSession,
    Form(f): Form<AddForm>,
) -> Result<Response, HtmlError> {
    let force_change = f.force_change.is_some();
    let req = NewUserRequest {
        email: f.email.clone(),
        name: f.name.clone(),
        role: f.role.clone(),
        force_change,
    };
    match state
        .core
        .add_user_with_password(
            &s.principal.require_in::<ManageDirectory>(Directory::Tenant(t.id))?,
            req,
        )
        .await
    {
        Ok((user, password)) => Ok(render(&OneTimePasswordPage {
            chrome: PortalChrome::new(&s, &t, "settings"),
            email: user.email.to_string(),
            password,
            created: true,
            expires_hours: state.core.config.otp_ttl.whole_hours(),
            force_change,
        })),
        Err(Error::Validation(fields)) => Ok((
            StatusCode::UNPROCESSABLE_ENTITY,
            render(&AddUserPage {
                chrome: PortalChrome::new(&s, &t, "settings"),
                roles: role_options(
                    state.core.catalog(),
                    &s.principal,
                    Some(Scope::Tenant),
                    std::slice::from_ref(&f.role),
                ),
                email: f.email,
                name: f.name,
                force_change,
                errors: Errors::from_fields(&fields),
            }),
        )
            .into_response()),
        Err(e) => Err(e.into()),
    }
}

pub async fn reset(
    State(state): State<AppState>,
    PortalSession(s, t): PortalSession,
    Path(id): Path<String>,
) -> Result<Response, HtmlError> {
    let id: UserId = id.parse().map_err(|_| Error::NotFound)?;
    let dir = Directory::Tenant(t.id);
    let password = state
        .core
        .reset_password(&s.principal.require_in::<ManageDirectory>(dir)?, id)
        .await?;
    let user = state
        .core
        .user_view(&s.principal.require_in::<ReadDirectory>(dir)?, id)
        .await?
        .user;
    Ok(render(&OneTimePasswordPage {
        chrome: PortalChrome::new(&s, &t, "settings"),
        email: user.email.to_string(),
        password,
        created: false,
        expires_hours: state.core.config.otp_ttl.whole_hours(),
        force_change: true,
    }))
}

// ---- the forced change --------------------------------------------------------------------

#[derive(Template)]
#[template(path = "change_password.html")]
pub struct ChangePage {
    pub chrome: Chrome,
    pub email: String,
    pub min_password: usize,
    pub errors: Errors,
}

pub async fn change_form(State(state): State<AppState>, PortalSession(s, _): PortalSession) -> Response {
    render(&ChangePage {
        chrome: Chrome::signed_out(s.session.csrf_token.clone()),
        email: s.user.email.to_string(),
        min_password: state.core.config.password_min_chars,
        errors: Errors::default(),
    })
}

#[derive(Deserialize)]
pub struct ChangeForm {
    #[serde(default)]
    new_password: String,
    #[serde(default)]
    confirm: String,
}

pub async fn change(
    State(state): State<AppState>,
    PortalSession(s, _): PortalSession,
    Form(f): Form<ChangeForm>,
) -> Result<Response, HtmlError> {
    match state.core.change_forced_password(&s, &f.new_password, &f.confirm).await {
        Ok(secret) => {
            let mut resp = Redirect::to("/portal").into_response();
            if let Ok(v) = session_cookie(&state.config, secret.expose()).parse() {
                resp.headers_mut().append(header::SET_COOKIE, v);
            }
            Ok(resp)
        }
        Err(Error::Validation(fields)) => Ok((
            StatusCode::UNPROCESSABLE_ENTITY,
            render(&ChangePage {
                chrome: Chrome::signed_out(s.session.csrf_token.clone()),
                email: s.user.email.to_string(),
                min_password: state.core.config.password_min_chars,
                errors: Errors::from_fields(&fields),
            }),
        )
            .into_response()),
        Err(e) => Err(e.into()),
    }
}
