//! `/v1/admin/tenants`: list, get, create, update, change status, delete.

use super::schema::{ErrorBody, TenantList, TenantOut};
use super::{Body, Caller, Query, limit};
use crate::error::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use quarterdeck_domain::access::{ManageTenants, ReadTenants};
use quarterdeck_domain::error::Problems;
use quarterdeck_domain::tenant::{
    Metadata, NewTenant, PriorityTier, Region, Tenant, TenantEdit, TenantFilter, TenantName, parse_metadata,
};
use quarterdeck_domain::{Error, TenantId, TenantSlug, TenantStatus};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

fn id(raw: &str) -> Result<TenantId, Error> {
    raw.parse().map_err(|_| Error::NotFound)
}

async fn visible(state: &AppState, caller: &Caller, raw: &str) -> Result<Tenant, ApiError> {
    let read = caller.0.principal.require::<ReadTenants>()?;
    let tid = id(raw)?;
    caller.0.check_tenant(tid)?;
    Ok(state.core.tenant(&read, tid).await?)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Matches name or slug.
    q: Option<String>,
    /// `active`, `read_only` or `suspended`.
    #[param(pattern = "^(active|read_only|suspended)?$")]
    status: Option<String>,
    /// 1–200, default 50.
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
    /// The previous page's `next_cursor`.
    cursor: Option<String>,
}

/// List tenants (a tenant-limited token sees its tenant only).
#[utoipa::path(get, path = "/v1/admin/tenants", tag = "tenants", params(ListQuery),
    responses((status = 200, body = TenantList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<TenantList>, ApiError> {
    let read = caller.0.principal.require::<ReadTenants>()?;
    let page_size = limit(q.limit, 50, 200)?;
    if let Some(only) = caller.0.tenant_limit() {
        let t = state.core.tenant(&read, only).await?;
        return Ok(Json(TenantList {
            items: vec![t.into()],
            next_cursor: None,
        }));
    }
    let offset: u32 = match q.cursor.as_deref() {
        None | Some("") => 0,
        Some(c) => c
            .parse()
            .map_err(|_| Error::field("cursor", "invalid_cursor", "Use the next_cursor of the previous page."))?,
    };
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(TenantStatus::parse(s)?),
    };
    let filter = TenantFilter {
        search: q.q,
        status,
        limit: page_size,
        offset,
    };
    let (items, total) = state.core.list_tenants(&read, &filter).await?;
    let next = u64::from(offset) + items.len() as u64;
    Ok(Json(TenantList {
        next_cursor: (next < total).then(|| next.to_string()),
        items: items.into_iter().map(TenantOut::from).collect(),
    }))
}

/// One tenant.
#[utoipa::path(get, path = "/v1/admin/tenants/{id}", tag = "tenants", params(("id" = Uuid, Path, description = "Tenant id")),
    responses((status = 200, body = TenantOut), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Json<TenantOut>, ApiError> {
    Ok(Json(visible(&state, &caller, &raw).await?.into()))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    #[schema(min_length = 1, max_length = 100)]
    name: String,
    /// A DNS label; derived from the name when omitted. Immutable.
    #[schema(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    slug: Option<String>,
    /// One of the configured regions; the first when omitted.
    region: Option<String>,
    #[schema(pattern = "^(standard|high|critical)$")]
    tier: Option<String>,
    #[serde(default)]
    metadata: Metadata,
}

fn parse_new(state: &AppState, b: &CreateTenant) -> Result<NewTenant, Error> {
    let mut p = Problems::new();
    let name = p.check(TenantName::parse(&b.name));
    let slug = p.check(TenantSlug::parse(
        b.slug.as_deref().unwrap_or(&TenantSlug::suggest(&b.name)),
    ));
    let regions = &state.core.config.regions;
    let region = p.check(Region::parse(b.region.as_deref().unwrap_or(&regions[0]), regions));
    let tier = p.check(PriorityTier::parse(b.tier.as_deref().unwrap_or("standard")));
    let rows: Vec<(String, String)> = b.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let metadata = p.check(parse_metadata(&rows));
    p.finish()?;
    match (name, slug, region, tier, metadata) {
        (Some(name), Some(slug), Some(region), Some(tier), Some(metadata)) => Ok(NewTenant {
            slug,
            name,
            region,
            tier,
            metadata,
        }),
        _ => Err(Error::internal("validation passed without values")),
    }
}

/// Create a tenant (and its database). `slug` defaults from the name, `region` to the first
/// configured one, `tier` to `standard`.
#[utoipa::path(post, path = "/v1/admin/tenants", tag = "tenants", request_body = CreateTenant,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 200, description = "Replays the first response for the same key and body")),
    responses((status = 201, body = TenantOut), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Body(b): Body<CreateTenant>,
) -> Result<Response, ApiError> {
    let auth = caller.0.principal.require::<ManageTenants>()?;
    if caller.0.tenant_limit().is_some() {
        return Err(Error::Forbidden.into());
    }
    let new = parse_new(&state, &b)?;
    let t = state.core.create_tenant(&auth, new).await?;
    Ok((StatusCode::CREATED, Json(TenantOut::from(t))).into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    #[schema(min_length = 1, max_length = 100)]
    name: Option<String>,
    region: Option<String>,
    #[schema(pattern = "^(standard|high|critical)$")]
    tier: Option<String>,
    /// Replaces the metadata (send the whole map).
    metadata: Option<Metadata>,
}

/// Update name, region, tier or metadata (`TENANT_METADATA_UPDATED` with a diff per key).
#[utoipa::path(patch, path = "/v1/admin/tenants/{id}", tag = "tenants", request_body = UpdateTenant, params(("id" = Uuid, Path, description = "Tenant id")),
    responses((status = 200, body = TenantOut), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    Body(b): Body<UpdateTenant>,
) -> Result<Json<TenantOut>, ApiError> {
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
        Some(m) => p.check(parse_metadata(
            &m.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>(),
        )),
        None => Some(current.metadata.clone()),
    };
    p.finish()?;
    let (Some(name), Some(region), Some(tier), Some(metadata)) = (name, region, tier, metadata) else {
        return Err(Error::internal("validation passed without values").into());
    };
    Ok(Json(
        state
            .core
            .update_tenant(
                &auth,
                current.id,
                TenantEdit {
                    name,
                    region,
                    tier,
                    metadata,
                },
            )
            .await?
            .into(),
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetStatus {
    #[schema(pattern = "^(active|read_only|suspended)$")]
    status: String,
    #[serde(default)]
    #[schema(max_length = 500)]
    reason: String,
}

/// Change the status: `active`, `read_only` or `suspended`.
#[utoipa::path(post, path = "/v1/admin/tenants/{id}/status", tag = "tenants", request_body = SetStatus, params(("id" = Uuid, Path, description = "Tenant id")),
    responses((status = 200, body = TenantOut), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn set_status(
    State(state): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    Body(b): Body<SetStatus>,
) -> Result<Json<TenantOut>, ApiError> {
    let auth = caller.0.principal.require::<ManageTenants>()?;
    let current = visible(&state, &caller, &raw).await?;
    let status = TenantStatus::parse(&b.status)?;
    Ok(Json(
        state
            .core
            .set_tenant_status(&auth, current.id, status, &b.reason)
            .await?
            .into(),
    ))
}

/// Delete a tenant: out of service at once, its database dropped after the retention period.
#[utoipa::path(delete, path = "/v1/admin/tenants/{id}", tag = "tenants", params(("id" = Uuid, Path, description = "Tenant id")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    let auth = caller.0.principal.require::<ManageTenants>()?;
    let current = visible(&state, &caller, &raw).await?;
    state
        .core
        .delete_tenant(&auth, current.id, current.slug.as_str())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
