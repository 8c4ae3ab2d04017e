//! `/users`: the platform's users.

use super::{Chrome, fmt_time, render};
use crate::auth::CurrentSession;
use crate::error::HtmlError;
use crate::state::AppState;
use askama::Template;
use axum::extract::State;
use axum::response::Response;
use quarterdeck_domain::access::ReadUsers;

pub struct UserRow {
    pub email: String,
    pub name: String,
    pub roles: String,
    pub status: &'static str,
    pub created: String,
}

#[derive(Template)]
#[template(path = "users.html")]
pub struct UsersPage {
    pub chrome: Chrome,
    pub users: Vec<UserRow>,
}

pub async fn list(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
) -> Result<Response, HtmlError> {
    let auth = s.principal.require::<ReadUsers>()?;
    let users = state.core.list_platform_users(&auth).await?;
    let users = users
        .into_iter()
        .map(|u| UserRow {
            email: u.email.to_string(),
            name: u.name.unwrap_or_default(),
            roles: u.roles.join(", "),
            status: u.status.as_str(),
            created: fmt_time(u.created_at),
        })
        .collect();
    Ok(render(&UsersPage {
        chrome: Chrome::console(&s, "users"),
        users,
    }))
}
