//! `/v1/admin/tenants`: list, get, create, update, change status, delete.

use super::{Body, Caller, List, Page};
use crate::error::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use quarterdeck_domain::access::{ManageTenants, ReadTenants};
use quarterdeck_domain::error::Problems;
use quarterdeck_domain::tenant::{
    Metadata, NewTenant, PriorityTier, Region, Tenant, TenantEdit, TenantFilter, TenantName, parse_metadata,
};
use quarterdeck_domain::{Error, TenantId, TenantSlug, TenantStatus};
use serde::Deserialize;

fn id(raw: &str) -> Result<TenantId, Error> {
    raw.parse().map_err(|_| Error::NotFound)
}

async fn visible(state: &AppState, caller: &Caller, raw: &str) -> Result<Tenant, ApiError> {
    let read = caller.0.principal.require::<ReadTenants>()?;
    let tid = id(raw)?;
    caller.0.check_tenant(tid)?;
    Ok(state.core.tenant(&read, tid).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    q: Option<String>,
    status: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

pub async fn list(State(state): State<AppState>, caller: Caller, Query(q): Query<ListQuery>) -> Result<Json<List<Tenant>>, ApiError> {
    let read = caller.0.principal.require::<ReadTenants>()?;
    let page = Page { limit: q.limit, cursor: q.cursor.clone() };
    if let Some(only) = caller.0.tenant_limit() {
        let t = state.core.tenant(&read, only).await?;
        return Ok(Json(List { items: vec![t], next_cursor: None }));
    }
    let offset: u32 = match page.cursor.as_deref() {
        None => 0,
        Some(c) => c.parse().map_err(|_| Error::field("cursor", "invalid_cursor", "Use the next_cursor of the previous page."))?,
    };
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(TenantStatus::parse(s)?),
    };
    let filter = TenantFilter { search: q.q, status, limit: page.limit(), offset };
    let (items, total) = state.core.list_tenants(&read, &filter).await?;
    let next = u64::from(offset) + items.len() as u64;
    Ok(Json(List { next_cursor: (next < total).then(|| next.to_string()), items }))
}

pub async fn get(State(state): State<AppState>, caller: Caller, Path(raw): Path<String>) -> Result<Json<Tenant>, ApiError> {
    Ok(Json(visible(&state, &caller, &raw).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    name: String,
    slug: Option<String>,
    region: Option<String>,
    tier: Option<String>,
    #[serde(default)]
    metadata: Metadata,
}

fn parse_new(state: &AppState, b: &CreateTenant) -> Result<NewTenant, Error> {
    let mut p = Problems::new();
    let name = p.check(TenantName::parse(&b.name));
    let slug = p.check(TenantSlug::parse(b.slug.as_deref().unwrap_or(&TenantSlug::suggest(&b.name))));
    let regions = &state.core.config.regions;
    let region = p.check(Region::parse(b.region.as_deref().unwrap_or(&regions[0]), regions));
    let tier = p.check(PriorityTier::parse(b.tier.as_deref().unwrap_or("standard")));
    let rows: Vec<(String, String)> = b.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let metadata = p.check(parse_metadata(&rows));
    p.finish()?;
    match (name, slug, region, tier, metadata) {
        (Some(name), Some(slug), Some(region), Some(tier), Some(metadata)) => Ok(NewTenant { slug, name, region, tier, metadata }),
        _ => Err(Error::internal("validation passed without values")),
    }
}

pub async fn create(State(state): State<AppState>, caller: Caller, Body(b): Body<CreateTenant>) -> Result<Response, ApiError> {
    let auth = caller.0.principal.require::<ManageTenants>()?;
    if caller.0.tenant_limit().is_some() {
        return Err(Error::Forbidden.into());
    }
    let new = parse_new(&state, &b)?;
    let t = state.core.create_tenant(&auth, new).await?;
    Ok((StatusCode::CREATED, Json(t)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    name: Option<String>,
    region: Option<String>,
    tier: Option<String>,
    /// Replaces the metadata (send the whole map).
    metadata: Option<Metadata>,
}

pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    Body(b): Body<UpdateTenant>,
) -> Result<Json<Tenant>, ApiError> {
    let auth = caller.0.principal.require::<ManageTenants>()?;
    let current = visible(&state, &caller, &raw).await?;
    let mut p = Problems::new();
    let name = match &b.name {
        Some(n) => p.check(TenantName::parse(n)),
        None => Some(current.name.clone()),
    };
    let region = match &b.region {
        Some(r) => p.check(Region::parse(r, &state.core.config.regions)),
        None => Some(current.region.clone()),
    };
    let tier = match &b.tier {
        Some(t) => p.check(PriorityTier::parse(t)),
        None => Some(current.tier),
    };
    let metadata = match &b.metadata {
        Some(m) => p.check(parse_metadata(&m.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>())),
        None => Some(current.metadata.clone()),
    };
    p.finish()?;
    let (Some(name), Some(region), Some(tier), Some(metadata)) = (name, region, tier, metadata) else {
        return Err(Error::internal("validation passed without values").into());
    };
    Ok(Json(state.core.update_tenant(&auth, current.id, TenantEdit { name, region, tier, metadata }).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetStatus {
    status: String,
    #[serde(default)]
    reason: String,
}

pub async fn set_status(
    State(state): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    Body(b): Body<SetStatus>,
) -> Result<Json<Tenant>, ApiError> {
    let auth = caller.0.principal.require::<ManageTenants>()?;
    let current = visible(&state, &caller, &raw).await?;
    let status = TenantStatus::parse(&b.status)?;
    Ok(Json(state.core.set_tenant_status(&auth, current.id, status, &b.reason).await?))
}

pub async fn delete(State(state): State<AppState>, caller: Caller, Path(raw): Path<String>) -> Result<StatusCode, ApiError> {
    let auth = caller.0.principal.require::<ManageTenants>()?;
    let current = visible(&state, &caller, &raw).await?;
    state.core.delete_tenant(&auth, current.id, current.slug.as_str()).await?;
    Ok(StatusCode::NO_CONTENT)
}
