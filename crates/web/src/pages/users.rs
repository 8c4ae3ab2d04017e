//! `/users`: the platform's users, finding a tenant user by email, inviting (`/users/new`),
//! and the user pages with their actions (`/users/{id}`, `/tenants/{tid}/users/{uid}`).

use super::people::{self, RoleOpt, UserRow, role_options};
use super::{Chrome, Errors, Opt, render};
use crate::auth::CurrentSession;
use crate::error::HtmlError;
use crate::state::AppState;
use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use quarterdeck_domain::access::{ManageDirectory, ReadDirectory, ReadTenants};
use quarterdeck_domain::core::SignedIn;
use quarterdeck_domain::role::{Capability, Scope};
use quarterdeck_domain::tenant::TenantFilter;
use quarterdeck_domain::user::Directory;
use quarterdeck_domain::{Error, TenantId, UserId};
use serde::Deserialize;

pub struct FoundRow {
    pub tenant_id: String,
    pub tenant_name: String,
    pub user: UserRow,
}

#[derive(Template)]
#[template(path = "users.html")]
pub struct UsersPage {
    pub chrome: Chrome,
    pub users: Vec<UserRow>,
    pub can_invite: bool,
    pub find_email: String,
    pub found: Option<Vec<FoundRow>>,
    pub find_error: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct UsersQuery {
    #[serde(default)]
    email: String,
}

pub async fn list(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    Query(q): Query<UsersQuery>,
) -> Result<Response, HtmlError> {
    let now = state.core.clock.now();
    let users = state
        .core
        .users(&s.principal.require_in::<ReadDirectory>(Directory::Platform)?)
        .await?;
    let (mut found, mut find_error) = (None, None);
    if !q.email.trim().is_empty() {
        let hits = match s.principal.require::<ReadTenants>() {
            Ok(auth) => state.core.find_tenant_users(&auth, &q.email).await,
            Err(e) => Err(e),
        };
        match hits {
            Ok(hits) => {
                found = Some(
                    hits.iter()
                        .map(|(t, u)| FoundRow {
                            tenant_id: t.id.to_string(),
                            tenant_name: t.name.as_str().to_owned(),
                            user: UserRow::from_view(
                                &quarterdeck_domain::core::UserView {
                                    user: u.clone(),
                                    invitation: None,
                                },
                                now,
                            ),
                        })
                        .collect(),
                )
            }
            Err(Error::Validation(f)) => find_error = f.first().map(|f| f.message.clone()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(render(&UsersPage {
        chrome: Chrome::console(&s, "users"),
        users: users.iter().map(|v| UserRow::from_view(v, now)).collect(),
        can_invite: s.principal.can(&Capability::UsersManage),
        find_email: q.email,
        found,
        find_error,
    }))
}

// ---- invite -------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "users_new.html")]
pub struct InvitePage {
    pub chrome: Chrome,
    pub email: String,
    pub name: String,
    pub tenants: Vec<Opt>,
    pub tenant_roles: Vec<RoleOpt>,
    pub platform_roles: Vec<RoleOpt>,
    pub errors: Errors,
}

#[derive(Deserialize, Default)]
pub struct InviteQuery {
    #[serde(default)]
    tenant_id: String,
    #[serde(default)]
    role: String,
}

async fn invite_page(
    state: &AppState,
    s: &SignedIn,
    tenant_id: &str,
    roles: &[String],
    email: String,
    name: String,
    errors: Errors,
) -> Result<InvitePage, Error> {
    let read = s.principal.require::<ReadTenants>()?;
    let filter = TenantFilter {
        limit: 1000,
        ..Default::default()
    };
    let (tenants, _) = state.core.list_tenants(&read, &filter).await?;
    let mut opts = vec![Opt {
        value: String::new(),
        label: "— Platform team (no tenant) —".to_owned(),
        selected: tenant_id.is_empty(),
    }];
    opts.extend(tenants.iter().map(|t| Opt {
        value: t.id.to_string(),
        label: format!("{} ({})", t.name.as_str(), t.slug),
        selected: t.id.to_string() == tenant_id,
    }));
    let catalog = state.core.catalog();
    Ok(InvitePage {
        chrome: Chrome::console(s, "users"),
        email,
        name,
        tenants: opts,
        tenant_roles: role_options(catalog, &s.principal, Some(Scope::Tenant), roles),
        platform_roles: role_options(catalog, &s.principal, Some(Scope::Platform), roles),
        errors,
    })
}

pub async fn new_form(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    Query(q): Query<InviteQuery>,
) -> Result<Response, HtmlError> {
    if !s.principal.can(&Capability::UsersManage) {
        return Err(Error::Forbidden.into());
    }
    let roles: Vec<String> = if q.role.is_empty() {
        vec![]
    } else {
        vec![q.role.clone()]
    };
    Ok(render(
        &invite_page(
            &state,
            &s,
            &q.tenant_id,
            &roles,
            String::new(),
            String::new(),
            Errors::default(),
        )
        .await?,
    ))
}

pub async fn create(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, HtmlError> {
    let req = people::invite_request(&pairs);
    match state
        .core
        .invite(
            &s.principal
                .require_in::<ManageDirectory>(req.directory(&s.principal)?)?,
            req.clone(),
        )
        .await
    {
        Ok(user) => Ok(Redirect::to(&match user.tenant_id {
            Some(t) => format!("/tenants/{t}/users/{}?done=invited", user.id),
            None => format!("/users/{}?done=invited", user.id),
        })
        .into_response()),
        Err(Error::Validation(fields)) => {
            let page = invite_page(
                &state,
                &s,
                &req.tenant_id,
                &req.roles,
                req.email,
                req.name,
                Errors::from_fields(&fields),
            )
            .await?;
            Ok((StatusCode::UNPROCESSABLE_ENTITY, render(&page)).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

// ---- the user page ------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "users_show.html")]
pub struct UserPage {
    pub chrome: Chrome,
    pub u: UserRow,
    pub tenant_name: Option<String>,
    pub tenant_id: String,
    pub roles: Vec<RoleOpt>,
    pub can_manage: bool,
    pub action_base: String,
    pub notice: Option<&'static str>,
}

#[derive(Deserialize, Default)]
pub struct DoneQuery {
    done: Option<String>,
}

async fn user_page(
    state: &AppState,
    s: &SignedIn,
    dir: Directory,
    id: &str,
    done: Option<&str>,
) -> Result<Response, HtmlError> {
    let id: UserId = id.parse().map_err(|_| Error::NotFound)?;
    let view = state
        .core
        .user_view(&s.principal.require_in::<ReadDirectory>(dir)?, id)
        .await?;
    let tenant = state.core.tenant_of(dir).await?;
    let scope = match dir {
        Directory::Platform => Scope::Platform,
        Directory::Tenant(_) => Scope::Tenant,
    };
    let action_base = match dir {
        Directory::Platform => format!("/users/{id}"),
        Directory::Tenant(t) => format!("/tenants/{t}/users/{id}"),
    };
    let can_manage = people::may_act_on(state.core.catalog(), &s.principal, &Capability::UsersManage, &view.user);
    Ok(render(&UserPage {
        chrome: Chrome::console(s, "users"),
        u: UserRow::from_view(&view, state.core.clock.now()),
        tenant_name: tenant.as_ref().map(|t| t.name.as_str().to_owned()),
        tenant_id: tenant.as_ref().map(|t| t.id.to_string()).unwrap_or_default(),
        roles: role_options(state.core.catalog(), &s.principal, Some(scope), &view.user.roles),
        can_manage,
        action_base,
        notice: people::done_message(done),
    }))
}

pub async fn show_platform(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    Path(id): Path<String>,
    Query(q): Query<DoneQuery>,
) -> Result<Response, HtmlError> {
    user_page(&state, &s, Directory::Platform, &id, q.done.as_deref()).await
}

fn tenant_dir(raw: &str) -> Result<Directory, Error> {
    raw.parse::<TenantId>()
        .map(Directory::Tenant)
        .map_err(|_| Error::NotFound)
}

pub async fn show_tenant_user(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    Path((tid, id)): Path<(String, String)>,
    Query(q): Query<DoneQuery>,
) -> Result<Response, HtmlError> {
    user_page(&state, &s, tenant_dir(&tid)?, &id, q.done.as_deref()).await
}

pub async fn act_platform(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    Path((id, action)): Path<(String, String)>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, HtmlError> {
    let back = format!("/users/{id}");
    Ok(people::act(
        &state.core,
        &s.principal,
        Directory::Platform,
        &id,
        &action,
        &pairs,
        (&back, "/users"),
    )
    .await?)
}

pub async fn act_tenant_user(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    Path((tid, id, action)): Path<(String, String, String)>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, HtmlError> {
    let dir = tenant_dir(&tid)?;
    let back = format!("/tenants/{tid}/users/{id}");
    let gone = format!("/tenants/{tid}");
    Ok(people::act(&state.core, &s.principal, dir, &id, &action, &pairs, (&back, &gone)).await?)
}
