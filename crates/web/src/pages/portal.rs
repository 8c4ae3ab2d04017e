//! The tenant's portal on its own host: `/portal` (dashboard), `/portal/team` (with Invite),
//! `/portal/users/{id}` and its actions, `/portal/audit`. Everything is scoped to the tenant of
//! the host; the rules (who may invite, which roles) are the domain's.

use super::audit::EventRow;
use super::people::{self, RoleOpt, UserRow, role_options};
use super::{Errors, render};
use crate::auth::PortalSession;
use crate::error::HtmlError;
use crate::state::AppState;
use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use quarterdeck_domain::access::{ManageDirectory, ManageProviderCredentials, ReadApiKeys, ReadDirectory, ReadUsage};
use quarterdeck_domain::core::SignedIn;
use quarterdeck_domain::role::{Capability, Scope};
use quarterdeck_domain::tenant::Tenant;
use quarterdeck_domain::user::Directory;
use quarterdeck_domain::{Error, UserId};
use serde::Deserialize;

/// What the portal layout needs.
pub struct PortalChrome {
    pub csrf_token: String,
    pub me_email: String,
    pub nav: &'static str,
    pub tenant_name: String,
    pub tenant_status: &'static str,
    pub tenant_status_label: &'static str,
    pub can_manage: bool,
    pub can_audit: bool,
    /// API keys (admins and developers) and provider credentials (admins) in the navigation.
    pub can_api_keys: bool,
    pub can_credentials: bool,
    /// Usage and Cost (who may read the tenant's usage: its admins, billing on the platform).
    pub can_usage: bool,
    /// "You are impersonating …" banner: (who, since when).
    pub impersonation: Option<(String, String)>,
}

impl PortalChrome {
    pub fn new(s: &SignedIn, t: &Tenant, nav: &'static str) -> Self {
        Self {
            csrf_token: s.session.csrf_token.clone(),
            me_email: s.user.email.to_string(),
            nav,
            tenant_name: t.name.as_str().to_owned(),
            tenant_status: t.status.as_str(),
            tenant_status_label: t.status.label(),
            can_manage: s.principal.can(&Capability::TenantUsersManage),
            can_audit: s.principal.can(&Capability::TenantAudit),
            can_api_keys: s.principal.require_for_tenant::<ReadApiKeys>(t.id).is_ok(),
            can_credentials: s
                .principal
                .require_for_tenant::<ManageProviderCredentials>(t.id)
                .is_ok(),
            can_usage: s.principal.require_for_tenant::<ReadUsage>(t.id).is_ok(),
            impersonation: s
                .impersonation
                .as_ref()
                .map(|i| (i.impersonator_email.clone(), super::fmt_time(i.started_at))),
        }
    }
}

#[derive(Template)]
#[template(path = "portal_dashboard.html")]
pub struct DashboardPage {
    pub chrome: PortalChrome,
    pub active: usize,
    pub invited: usize,
    pub suspended: usize,
    pub events: Option<Vec<EventRow>>,
    /// Live API keys, for who may see them.
    pub key_count: Option<u64>,
    /// Providers with a stored credential, for who may manage them.
    pub credential_count: Option<u64>,
    /// This month's cost and each meter's total, for who may read usage.
    pub usage: Option<super::usage::UsageCards>,
}

pub async fn dashboard(
    State(state): State<AppState>,
    PortalSession(s, t): PortalSession,
) -> Result<Response, HtmlError> {
    let users = state
        .core
        .users(&s.principal.require_in::<ReadDirectory>(Directory::Tenant(t.id))?)
        .await?;
    let count = |st: &str| users.iter().filter(|u| u.user.status.as_str() == st).count();
    let events = match state.core.tenant_events(&s.principal, t.id, None, 8).await {
        Ok(ev) => Some(ev.iter().map(EventRow::from).collect()),
        Err(Error::Forbidden) => None,
        Err(e) => return Err(e.into()),
    };
    let key_count = match s.principal.require_for_tenant::<ReadApiKeys>(t.id) {
        Ok(auth) => Some(state.core.api_key_count(&auth).await?),
        Err(_) => None,
    };
    let credential_count = match s.principal.require_for_tenant::<ManageProviderCredentials>(t.id) {
        Ok(auth) => Some(state.core.provider_credential_count(&auth).await?),
        Err(_) => None,
    };
    let usage = super::usage::dashboard_cards(&state, &s, &t).await?;
    Ok(render(&DashboardPage {
        chrome: PortalChrome::new(&s, &t, "dashboard"),
        usage,
        key_count,
        credential_count,
        active: count("ACTIVE"),
        invited: count("INVITED"),
        suspended: count("SUSPENDED"),
        events,
    }))
}

#[derive(Template)]
#[template(path = "portal_team.html")]
pub struct TeamPage {
    pub chrome: PortalChrome,
    pub users: Vec<UserRow>,
}

pub async fn team(State(state): State<AppState>, PortalSession(s, t): PortalSession) -> Result<Response, HtmlError> {
    let now = state.core.clock.now();
    let users = state
        .core
        .users(&s.principal.require_in::<ReadDirectory>(Directory::Tenant(t.id))?)
        .await?;
    Ok(render(&TeamPage {
        chrome: PortalChrome::new(&s, &t, "team"),
        users: users.iter().map(|v| UserRow::from_view(v, now)).collect(),
    }))
}

#[derive(Template)]
#[template(path = "portal_invite.html")]
pub struct InvitePage {
    pub chrome: PortalChrome,
    pub email: String,
    pub name: String,
    pub roles: Vec<RoleOpt>,
    pub errors: Errors,
}

#[derive(Deserialize, Default)]
pub struct InviteQuery {
    #[serde(default)]
    role: String,
}

pub async fn invite_form(
    State(state): State<AppState>,
    PortalSession(s, t): PortalSession,
    Query(q): Query<InviteQuery>,
) -> Result<Response, HtmlError> {
    if !s.principal.can(&Capability::TenantUsersManage) {
        return Err(Error::Forbidden.into());
    }
    let selected: Vec<String> = if q.role.is_empty() { vec![] } else { vec![q.role] };
    Ok(render(&InvitePage {
        chrome: PortalChrome::new(&s, &t, "team"),
        email: String::new(),
        name: String::new(),
        roles: role_options(state.core.catalog(), &s.principal, Some(Scope::Tenant), &selected),
        errors: Errors::default(),
    }))
}

pub async fn invite(
    State(state): State<AppState>,
    PortalSession(s, t): PortalSession,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, HtmlError> {
    // Always the caller's own tenant: a tenant_id in the form is ignored by the domain.
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
        Ok(user) => Ok(Redirect::to(&format!("/portal/users/{}?done=invited", user.id)).into_response()),
        Err(Error::Validation(fields)) => Ok((
            StatusCode::UNPROCESSABLE_ENTITY,
            render(&InvitePage {
                chrome: PortalChrome::new(&s, &t, "team"),
                roles: role_options(state.core.catalog(), &s.principal, Some(Scope::Tenant), &req.roles),
                email: req.email,
                name: req.name,
                errors: Errors::from_fields(&fields),
            }),
        )
            .into_response()),
        Err(e) => Err(e.into()),
    }
}

#[derive(Template)]
#[template(path = "portal_user.html")]
pub struct UserPage {
    pub chrome: PortalChrome,
    pub u: UserRow,
    pub roles: Vec<RoleOpt>,
    pub can_manage: bool,
    pub action_base: String,
    pub notice: Option<&'static str>,
}

#[derive(Deserialize, Default)]
pub struct DoneQuery {
    done: Option<String>,
}

pub async fn user(
    State(state): State<AppState>,
    PortalSession(s, t): PortalSession,
    Path(id): Path<String>,
    Query(q): Query<DoneQuery>,
) -> Result<Response, HtmlError> {
    let id: UserId = id.parse().map_err(|_| Error::NotFound)?;
    let view = state
        .core
        .user_view(&s.principal.require_in::<ReadDirectory>(Directory::Tenant(t.id))?, id)
        .await?;
    let can_manage = people::may_act_on(
        state.core.catalog(),
        &s.principal,
        &Capability::TenantUsersManage,
        &view.user,
    );
    Ok(render(&UserPage {
        chrome: PortalChrome::new(&s, &t, "team"),
        u: UserRow::from_view(&view, state.core.clock.now()),
        roles: role_options(
            state.core.catalog(),
            &s.principal,
            Some(Scope::Tenant),
            &view.user.roles,
        ),
        can_manage,
        action_base: format!("/portal/users/{id}"),
        notice: people::done_message(q.done.as_deref()),
    }))
}

pub async fn act(
    State(state): State<AppState>,
    PortalSession(s, t): PortalSession,
    Path((id, action)): Path<(String, String)>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, HtmlError> {
    let back = format!("/portal/users/{id}");
    Ok(people::act(
        &state.core,
        &s.principal,
        Directory::Tenant(t.id),
        &id,
        &action,
        &pairs,
        (&back, "/portal/team"),
    )
    .await?)
}

#[derive(Template)]
#[template(path = "portal_audit.html")]
pub struct AuditPage {
    pub chrome: PortalChrome,
    pub events: Vec<EventRow>,
    pub next_page: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct AuditQuery {
    before: Option<i64>,
}

pub async fn audit(
    State(state): State<AppState>,
    PortalSession(s, t): PortalSession,
    Query(q): Query<AuditQuery>,
) -> Result<Response, HtmlError> {
    let page = super::audit::PAGE_SIZE;
    let mut events = state.core.tenant_events(&s.principal, t.id, q.before, page + 1).await?;
    let more = events.len() > page as usize;
    events.truncate(page as usize);
    let next_page = events
        .last()
        .filter(|_| more)
        .map(|e| format!("/portal/audit?before={}", e.seq));
    Ok(render(&AuditPage {
        chrome: PortalChrome::new(&s, &t, "audit"),
        events: events.iter().map(EventRow::from).collect(),
        next_page,
    }))
}
