//! `/roles`: every role, its scope and what it can do.

use super::{Chrome, render};
use crate::auth::CurrentSession;
use crate::error::HtmlError;
use crate::state::AppState;
use askama::Template;
use axum::extract::State;
use axum::response::Response;
use quarterdeck_domain::access::ReadTenants;

pub struct RoleRow {
    pub name: String,
    pub scope: &'static str,
    pub description: String,
    pub capabilities: String,
    pub is_admin_role: bool,
}

#[derive(Template)]
#[template(path = "roles.html")]
pub struct RolesPage {
    pub chrome: Chrome,
    pub roles: Vec<RoleRow>,
}

pub async fn list(State(state): State<AppState>, CurrentSession(s): CurrentSession) -> Result<Response, HtmlError> {
    s.principal.require::<ReadTenants>()?;
    let catalog = state.core.catalog();
    let roles = catalog
        .roles()
        .iter()
        .map(|r| RoleRow {
            name: r.name.clone(),
            scope: r.scope.as_str(),
            description: r.description.clone(),
            capabilities: r.capability_names().join(", "),
            is_admin_role: r.name == catalog.admin_role(),
        })
        .collect();
    Ok(render(&RolesPage {
        chrome: Chrome::console(&s, "roles"),
        roles,
    }))
}
