//! `/tenants`: list, New Tenant, the tenant page (edit, status, delete; its usage card is in
//! `tenant_usage.rs`).

use super::{Chrome, Errors, Opt, fmt_time, options, render};
use crate::auth::CurrentSession;
use crate::error::HtmlError;
use crate::state::AppState;
use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use quarterdeck_domain::access::{ManageTenants, ReadTenants};
use quarterdeck_domain::core::SignedIn;
use quarterdeck_domain::error::Problems;
use quarterdeck_domain::role::Capability;
use quarterdeck_domain::tenant::{
    NewTenant, PriorityTier, Region, Tenant, TenantEdit, TenantFilter, TenantName, parse_metadata,
};
use quarterdeck_domain::{Error, TenantId, TenantSlug, TenantStatus};
use serde::Deserialize;

const PAGE_SIZE: u32 = 25;

/// A tenant as the list shows it.
pub struct TenantRow {
    pub id: String,
    pub name: String,
    pub slug: String,
    pub region: String,
    pub tier: &'static str,
    pub status: &'static str,
    pub status_label: &'static str,
    pub created: String,
}

impl From<&Tenant> for TenantRow {
    fn from(t: &Tenant) -> Self {
        Self {
            id: t.id.to_string(),
            name: t.name.as_str().to_owned(),
            slug: t.slug.to_string(),
            region: t.region.as_str().to_owned(),
            tier: t.tier.label(),
            status: t.status.as_str(),
            status_label: t.status.label(),
            created: fmt_time(t.created_at),
        }
    }
}

pub(super) fn tenant_id(raw: &str) -> Result<TenantId, Error> {
    raw.parse().map_err(|_| Error::NotFound)
}

// ---- list ---------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
pub struct ListQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    status: String,
    page: Option<u32>,
    created: Option<String>,
}

#[derive(Template)]
#[template(path = "tenants_list.html")]
pub struct ListPage {
    pub chrome: Chrome,
    pub tenants: Vec<TenantRow>,
    pub q: String,
    pub status: String,
    pub statuses: Vec<Opt>,
    pub page: u32,
    pub pages: u32,
    pub total: u64,
    pub prev_link: Option<String>,
    pub next_link: Option<String>,
    pub can_manage: bool,
    pub created_toast: Option<(String, String)>,
    pub admin_role: String,
    pub can_impersonate: bool,
}

pub async fn list(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    Query(q): Query<ListQuery>,
) -> Result<Response, HtmlError> {
    let auth = s.principal.require::<ReadTenants>()?;
    let page = q.page.unwrap_or(1).clamp(1, 100_000);
    let status = TenantStatus::parse(&q.status).ok();
    let filter = TenantFilter {
        search: Some(q.q.chars().take(100).collect()),
        status,
        limit: PAGE_SIZE,
        offset: (page - 1) * PAGE_SIZE,
    };
    let (tenants, total) = state.core.list_tenants(&auth, &filter).await?;
    let pages = u32::try_from(total.div_ceil(u64::from(PAGE_SIZE)))
        .unwrap_or(u32::MAX)
        .max(1);
    let link = |p: u32| {
        let qs = serde_urlencoded::to_string([("q", q.q.as_str()), ("status", q.status.as_str())]).unwrap_or_default();
        format!("/tenants?{qs}&page={p}")
    };
    let created_toast = match q.created.as_deref().map(str::parse::<TenantId>) {
        Some(Ok(id)) => match state.core.tenant(&auth, id).await {
            Ok(t) => Some((t.name.as_str().to_owned(), t.id.to_string())),
            Err(Error::NotFound) => None,
            Err(e) => return Err(e.into()),
        },
        _ => None,
    };
    Ok(render(&ListPage {
        chrome: Chrome::console(&s, "tenants"),
        tenants: tenants.iter().map(TenantRow::from).collect(),
        q: q.q.clone(),
        status: status.map(|s| s.as_str().to_owned()).unwrap_or_default(),
        statuses: status_options(status.map(|s| s.as_str()).unwrap_or("")),
        page,
        pages,
        total,
        prev_link: (page > 1).then(|| link(page - 1)),
        next_link: (page < pages).then(|| link(page + 1)),
        can_manage: s.principal.can(&Capability::TenantsManage),
        created_toast,
        admin_role: state.core.catalog().admin_role().to_owned(),
        can_impersonate: s.principal.can(&Capability::Impersonate),
    }))
}

// ---- new ----------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "tenants_new.html")]
pub struct NewPage {
    pub chrome: Chrome,
    pub name: String,
    pub slug: String,
    pub regions: Vec<Opt>,
    pub tiers: Vec<Opt>,
    pub errors: Errors,
}

fn tier_options(selected: &str) -> Vec<Opt> {
    options(PriorityTier::ALL.iter().map(|t| (t.as_str(), t.label())), selected)
}

fn region_options(regions: &[String], selected: &str) -> Vec<Opt> {
    options(regions.iter().map(|r| (r.as_str(), r.as_str())), selected)
}

fn status_options(selected: &str) -> Vec<Opt> {
    options(TenantStatus::ALL.iter().map(|s| (s.as_str(), s.label())), selected)
}

pub async fn new_form(State(state): State<AppState>, CurrentSession(s): CurrentSession) -> Result<Response, HtmlError> {
    s.principal.require::<ManageTenants>()?;
    let region = state.core.config.regions.first().cloned().unwrap_or_default();
    Ok(render(&NewPage {
        chrome: Chrome::console(&s, "tenants"),
        name: String::new(),
        slug: String::new(),
        regions: region_options(&state.core.config.regions, &region),
        tiers: tier_options("standard"),
        errors: Errors::default(),
    }))
}

#[derive(Deserialize)]
pub struct NewForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    slug: String,
    #[serde(default)]
    region: String,
    #[serde(default)]
    tier: String,
}

impl NewForm {
    fn parse(&self, regions: &[String]) -> Result<NewTenant, Error> {
        let mut p = Problems::new();
        let name = p.check(TenantName::parse(&self.name));
        let slug = p.check(TenantSlug::parse(&self.slug));
        let region = p.check(Region::parse(&self.region, regions));
        let tier = p.check(PriorityTier::parse(&self.tier));
        p.finish()?;
        match (name, slug, region, tier) {
            (Some(name), Some(slug), Some(region), Some(tier)) => Ok(NewTenant {
                slug,
                name,
                region,
                tier,
                metadata: Default::default(),
            }),
            _ => Err(Error::internal("validation passed without values")),
        }
    }
}

pub async fn create(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    Form(f): Form<NewForm>,
) -> Result<Response, HtmlError> {
    let auth = s.principal.require::<ManageTenants>()?;
    let result = match f.parse(&state.core.config.regions) {
        Ok(new) => state.core.create_tenant(&auth, new).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(t) => Ok(Redirect::to(&format!("/tenants?created={}", t.id)).into_response()),
        Err(Error::Validation(fields)) => Ok((
            StatusCode::UNPROCESSABLE_ENTITY,
            render(&NewPage {
                chrome: Chrome::console(&s, "tenants"),
                regions: region_options(&state.core.config.regions, &f.region),
                tiers: tier_options(&f.tier),
                name: f.name,
                slug: f.slug,
                errors: Errors::from_fields(&fields),
            }),
        )
            .into_response()),
        Err(e) => Err(e.into()),
    }
}

// ---- the tenant page ----------------------------------------------------------------------

#[derive(Template)]
#[template(path = "tenants_show.html")]
pub struct ShowPage {
    pub chrome: Chrome,
    pub t: TenantRow,
    pub updated: String,
    pub can_manage: bool,
    pub name: String,
    pub metadata: Vec<(String, String)>,
    pub regions: Vec<Opt>,
    pub tiers: Vec<Opt>,
    pub statuses: Vec<Opt>,
    pub errors: Errors,
    pub notice: Option<&'static str>,
    pub open_dialog: &'static str,
    pub team: Vec<super::people::UserRow>,
    pub team_link_base: String,
    pub can_impersonate: bool,
    pub admin_role: String,
    pub can_invite: bool,
    /// The tenant's API keys (metadata), for who may read them; Revoke for who manages them.
    pub keys: Option<Vec<super::api_keys::KeyRow>>,
    pub can_revoke_keys: bool,
    /// This month's usage and cost, and the budget, for who may read them.
    pub usage: Option<super::tenant_usage::UsageCard>,
}

#[derive(Deserialize, Default)]
pub struct ShowQuery {
    saved: Option<String>,
}

fn show_page(s: &SignedIn, t: &Tenant, regions: &[String]) -> ShowPage {
    ShowPage {
        chrome: Chrome::console(s, "tenants"),
        t: TenantRow::from(t),
        updated: fmt_time(t.updated_at),
        can_manage: s.principal.can(&Capability::TenantsManage),
        name: t.name.as_str().to_owned(),
        metadata: t.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        regions: region_options(regions, t.region.as_str()),
        tiers: tier_options(t.tier.as_str()),
        statuses: status_options(t.status.as_str()),
        errors: Errors::default(),
        notice: None,
        open_dialog: "",
        team: Vec::new(),
        team_link_base: format!("/tenants/{}/users/", t.id),
        can_impersonate: s.principal.can(&Capability::Impersonate),
        admin_role: String::new(),
        can_invite: s.principal.can(&Capability::UsersManage),
        keys: None,
        can_revoke_keys: s
            .principal
            .require_for_tenant::<quarterdeck_domain::access::ManageApiKeys>(t.id)
            .is_ok(),
        usage: None,
    }
}

/// The tenant page with its Team section filled in.
pub(super) async fn full_page(state: &AppState, s: &SignedIn, t: &Tenant) -> Result<ShowPage, Error> {
    let mut page = show_page(s, t, &state.core.config.regions);
    let now = state.core.clock.now();
    page.team = state
        .core
        .users(&s.principal.require_in::<quarterdeck_domain::access::ReadDirectory>(
            quarterdeck_domain::user::Directory::Tenant(t.id),
        )?)
        .await?
        .iter()
        .map(|v| super::people::UserRow::from_view(v, now))
        .collect();
    page.admin_role = state.core.catalog().admin_role().to_owned();
    page.keys = super::api_keys::tenant_keys(state, s, t.id).await?;
    page.usage = super::tenant_usage::usage_card(state, s, t.id).await?;
    Ok(page)
}

pub async fn show(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    Path(id): Path<String>,
    Query(q): Query<ShowQuery>,
) -> Result<Response, HtmlError> {
    let auth = s.principal.require::<ReadTenants>()?;
    let t = state.core.tenant(&auth, tenant_id(&id)?).await?;
    let mut page = full_page(&state, &s, &t).await?;
    page.notice = match q.saved.as_deref() {
        Some("details") => Some("Changes saved."),
        Some("status") => Some("Status changed."),
        Some("key_revoked") => Some("API key revoked."),
        Some("budget") => Some("Budget saved."),
        Some("budget_removed") => Some("Budget removed."),
        _ => None,
    };
    Ok(render(&page))
}

/// The edit form arrives as ordered pairs, because metadata rows repeat `meta_key`/`meta_value`.
fn field<'a>(pairs: &'a [(String, String)], name: &str) -> &'a str {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

pub async fn update(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    Path(id): Path<String>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, HtmlError> {
    let auth = s.principal.require::<ManageTenants>()?;
    let read = s.principal.require::<ReadTenants>()?;
    let id = tenant_id(&id)?;
    let current = state.core.tenant(&read, id).await?;
    let keys = pairs.iter().filter(|(k, _)| k == "meta_key").map(|(_, v)| v.clone());
    let values = pairs.iter().filter(|(k, _)| k == "meta_value").map(|(_, v)| v.clone());
    let rows: Vec<(String, String)> = keys.zip(values).collect();
    let mut p = Problems::new();
    let name = p.check(TenantName::parse(field(&pairs, "name")));
    let region = p.check(Region::parse(field(&pairs, "region"), &state.core.config.regions));
    let tier = p.check(PriorityTier::parse(field(&pairs, "tier")));
    let metadata = p.check(parse_metadata(&rows));
    let result = match (p.finish(), name, region, tier, metadata) {
        (Ok(()), Some(name), Some(region), Some(tier), Some(metadata)) => {
            let edit = TenantEdit {
                name,
                region,
                tier,
                metadata,
            };
            state.core.update_tenant(&auth, id, edit).await.map(|_| ())
        }
        (Err(e), ..) => Err(e),
        _ => Err(Error::internal("validation passed without values")),
    };
    match result {
        Ok(()) => Ok(Redirect::to(&format!("/tenants/{id}?saved=details")).into_response()),
        Err(Error::Validation(fields)) => {
            let mut page = full_page(&state, &s, &current).await?;
            page.name = field(&pairs, "name").to_owned();
            page.regions = region_options(&state.core.config.regions, field(&pairs, "region"));
            page.tiers = tier_options(field(&pairs, "tier"));
            page.metadata = rows;
            page.errors = Errors::from_fields(&fields);
            Ok((StatusCode::UNPROCESSABLE_ENTITY, render(&page)).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
pub struct StatusForm {
    #[serde(default)]
    status: String,
    #[serde(default)]
    reason: String,
}

pub async fn change_status(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    Path(id): Path<String>,
    Form(f): Form<StatusForm>,
) -> Result<Response, HtmlError> {
    let auth = s.principal.require::<ManageTenants>()?;
    let id = tenant_id(&id)?;
    let result = match TenantStatus::parse(&f.status) {
        Ok(status) => state
            .core
            .set_tenant_status(&auth, id, status, &f.reason)
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => Ok(Redirect::to(&format!("/tenants/{id}?saved=status")).into_response()),
        Err(Error::Validation(fields)) => {
            let read = s.principal.require::<ReadTenants>()?;
            let current = state.core.tenant(&read, id).await?;
            let mut page = full_page(&state, &s, &current).await?;
            page.errors = Errors::from_fields(&fields);
            page.open_dialog = "status-dialog";
            Ok((StatusCode::UNPROCESSABLE_ENTITY, render(&page)).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
pub struct DeleteForm {
    #[serde(default)]
    confirm_slug: String,
}

pub async fn delete(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    Path(id): Path<String>,
    Form(f): Form<DeleteForm>,
) -> Result<Response, HtmlError> {
    let auth = s.principal.require::<ManageTenants>()?;
    let id = tenant_id(&id)?;
    match state.core.delete_tenant(&auth, id, &f.confirm_slug).await {
        Ok(_) => Ok(Redirect::to("/tenants").into_response()),
        Err(Error::Validation(fields)) => {
            let read = s.principal.require::<ReadTenants>()?;
            let current = state.core.tenant(&read, id).await?;
            let mut page = full_page(&state, &s, &current).await?;
            page.errors = Errors::from_fields(&fields);
            page.open_dialog = "delete-dialog";
            Ok((StatusCode::UNPROCESSABLE_ENTITY, render(&page)).into_response())
        }
        Err(e) => Err(e.into()),
    }
}
