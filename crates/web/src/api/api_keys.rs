//! `/v1/admin/tenants/{id}/api-keys`: a tenant's API keys (the ones its applications send to
//! the product's data plane): list, get, create, roll, revoke. The same domain operations as the
//! portal and the console, so the same rules (tenant status, scopes from the catalog, a grace of
//! at most 7 days) and the same audit events, with the token's id in each.
//!
//! Who may: a tenant user's token, in its own tenant only, with `tenant:api_keys` (admins and
//! developers); a platform user's token with `tenants:manage` (`tenants:read` to read), within
//! the token's tenant restriction. Another tenant's keys are 404. A secret is in the 201 of a
//! create or roll only, never logged, and blanked (`null`) in an `Idempotency-Key` replay.

use super::schema::ErrorBody;
use super::{Body, Caller, Query, SecretFields, limit};
use crate::error::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use quarterdeck_domain::access::{ManageApiKeys, ReadApiKeys};
use quarterdeck_domain::api_key::{ApiKey, KeyState, NewApiKeyRequest};
use quarterdeck_domain::token::Secret;
use quarterdeck_domain::{Error, TenantId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// A key's state now: `revoked` wins over `expired`.
#[derive(Serialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum ApiKeyState {
    Active,
    Expired,
    Revoked,
}

impl From<KeyState> for ApiKeyState {
    fn from(s: KeyState) -> Self {
        match s {
            KeyState::Active => Self::Active,
            KeyState::Expired => Self::Expired,
            KeyState::Revoked => Self::Revoked,
        }
    }
}

/// A tenant API key, without its secret.
#[derive(Serialize, ToSchema)]
pub struct ApiKeyOut {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    /// From the configured catalog (`api_key_scopes`).
    pub scopes: Vec<String>,
    /// The visible start of the secret (`qd_live_`).
    pub prefix: String,
    /// The last four characters of the current secret.
    pub last_four: String,
    pub state: ApiKeyState,
    /// `null`: no limit.
    #[schema(required = true, minimum = 1)]
    pub requests_per_minute: Option<u32>,
    /// The creator's email (`null` when made by the system).
    #[schema(required = true)]
    pub created_by: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// `null`: never expires.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime, required = true)]
    pub expires_at: Option<OffsetDateTime>,
    /// Coalesced: may lag the last verification by a minute.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime, required = true)]
    pub last_used_at: Option<OffsetDateTime>,
    /// When the secret was last replaced.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime, required = true)]
    pub rolled_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime, required = true)]
    pub revoked_at: Option<OffsetDateTime>,
}

impl ApiKeyOut {
    fn of(k: ApiKey, now: OffsetDateTime) -> Self {
        Self {
            state: k.state(now).into(),
            id: k.id,
            tenant_id: k.tenant_id.0,
            name: k.name,
            scopes: k.scopes,
            prefix: k.prefix,
            last_four: k.last_four,
            requests_per_minute: k.requests_per_minute,
            created_by: k.created_by,
            created_at: k.created_at,
            expires_at: k.expires_at,
            last_used_at: k.last_used_at,
            rolled_at: k.rolled_at,
            revoked_at: k.revoked_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ApiKeyList {
    /// Newest first.
    pub items: Vec<ApiKeyOut>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// A new or rolled key with its secret, shown this once.
#[derive(Serialize, ToSchema)]
pub struct ApiKeyWithSecret {
    pub key: ApiKeyOut,
    /// The secret (`qd_live_…`), never returned again; `null` in an `Idempotency-Key` replay
    /// (named in `Idempotent-Replay-Redacted`).
    #[schema(required = true)]
    pub secret: Option<String>,
}

fn tenant(caller: &Caller, raw: &str) -> Result<TenantId, Error> {
    let t: TenantId = raw.parse().map_err(|_| Error::NotFound)?;
    caller.0.check_tenant(t)?;
    Ok(t)
}

fn key_id(raw: &str) -> Result<Uuid, Error> {
    raw.parse().map_err(|_| Error::NotFound)
}

fn now(state: &AppState) -> OffsetDateTime {
    state.core.clock.now()
}

/// A 201 with the secret, marked so a kept reply blanks it.
fn with_secret(state: &AppState, key: ApiKey, secret: &Secret) -> Response {
    let body = ApiKeyWithSecret {
        key: ApiKeyOut::of(key, now(state)),
        secret: Some(secret.expose().to_owned()),
    };
    let mut resp = (StatusCode::CREATED, Json(body)).into_response();
    resp.extensions_mut().insert(SecretFields(&["secret"]));
    resp
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// 1–200, default 50.
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
    /// The previous page's `next_cursor`.
    cursor: Option<String>,
}

/// The tenant's keys, newest first (metadata only; revoked ones included).
#[utoipa::path(get, path = "/v1/admin/tenants/{id}/api-keys", tag = "api keys",
    params(("id" = Uuid, Path, description = "Tenant id"), ListQuery),
    responses((status = 200, body = ApiKeyList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<ApiKeyList>, ApiError> {
    let tid = tenant(&caller, &raw)?;
    let auth = caller.0.principal.require_for_tenant::<ReadApiKeys>(tid)?;
    let page_size = limit(q.limit, 50, 200)? as usize;
    let offset: usize = match q.cursor.as_deref() {
        None | Some("") => 0,
        Some(c) => c
            .parse()
            .map_err(|_| Error::field("cursor", "invalid_cursor", "Use the next_cursor of the previous page."))?,
    };
    let keys = state.core.api_keys(&auth).await?;
    let total = keys.len();
    let at = now(&state);
    let items: Vec<ApiKeyOut> = keys
        .into_iter()
        .skip(offset)
        .take(page_size)
        .map(|k| ApiKeyOut::of(k, at))
        .collect();
    let next = offset.saturating_add(items.len());
    Ok(Json(ApiKeyList {
        next_cursor: (!items.is_empty() && next < total).then(|| next.to_string()),
        items,
    }))
}

/// One key (metadata only).
#[utoipa::path(get, path = "/v1/admin/tenants/{id}/api-keys/{key_id}", tag = "api keys",
    params(("id" = Uuid, Path, description = "Tenant id"), ("key_id" = Uuid, Path, description = "Key id")),
    responses((status = 200, body = ApiKeyOut), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path((raw, key)): Path<(String, String)>,
) -> Result<Json<ApiKeyOut>, ApiError> {
    let tid = tenant(&caller, &raw)?;
    let auth = caller.0.principal.require_for_tenant::<ReadApiKeys>(tid)?;
    let key = state.core.api_key(&auth, key_id(&key)?).await?;
    Ok(Json(ApiKeyOut::of(key, now(&state))))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    /// What the key is for (at most 100 characters).
    #[schema(min_length = 1, max_length = 100)]
    name: String,
    /// From the configured catalog (`api_key_scopes`; by default `read`, `write`).
    #[schema(min_items = 1)]
    scopes: Vec<String>,
    /// Omitted or `null`: never expires.
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 3650)]
    expires_in_days: Option<serde_json::Number>,
    /// Omitted or `null`: no limit.
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 1_000_000)]
    requests_per_minute: Option<serde_json::Number>,
}

/// A JSON number as the domain's parsers read it: a whole number as digits (`30.0` is 30, as
/// JSON Schema's `integer` says), anything else as written, for the parser to refuse with its
/// field's name.
fn whole(n: &serde_json::Number) -> String {
    if let Some(i) = n.as_i64() {
        return i.to_string();
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{f:.0}"),
        _ => n.to_string(),
    }
}

/// Create a key (`API_KEY_CREATED`); its secret is in this response only. Refused in a
/// read-only or suspended tenant.
#[utoipa::path(post, path = "/v1/admin/tenants/{id}/api-keys", tag = "api keys", request_body = CreateApiKey,
    params(("id" = Uuid, Path, description = "Tenant id"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 200, description = "Replays the first response for the same key and body (the secret as `null`)")),
    responses((status = 201, body = ApiKeyWithSecret), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    Body(b): Body<CreateApiKey>,
) -> Result<Response, ApiError> {
    let tid = tenant(&caller, &raw)?;
    let auth = caller.0.principal.require_for_tenant::<ManageApiKeys>(tid)?;
    let req = NewApiKeyRequest {
        name: b.name,
        scopes: b.scopes,
        expires_in_days: b.expires_in_days.as_ref().map(whole).unwrap_or_default(),
        requests_per_minute: b.requests_per_minute.as_ref().map(whole).unwrap_or_default(),
    };
    let (key, secret) = state.core.create_api_key(&auth, req).await?;
    Ok(with_secret(&state, key, &secret))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollApiKey {
    /// How long the replaced secret keeps working: 0 (not at all) to 604800 (7 days).
    #[schema(value_type = i64, minimum = 0, maximum = 604_800)]
    grace_seconds: serde_json::Number,
}

/// Replace the key's secret (`API_KEY_ROLLED`): the new one is in this response only; the old
/// one keeps working for `grace_seconds`. A revoked key cannot be rolled (409
/// `api_key_revoked`).
#[utoipa::path(post, path = "/v1/admin/tenants/{id}/api-keys/{key_id}/roll", tag = "api keys", request_body = RollApiKey,
    params(("id" = Uuid, Path, description = "Tenant id"), ("key_id" = Uuid, Path, description = "Key id"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 200, description = "Replays the first response for the same key and body (the secret as `null`)")),
    responses((status = 201, body = ApiKeyWithSecret), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn roll(
    State(state): State<AppState>,
    caller: Caller,
    Path((raw, key)): Path<(String, String)>,
    Body(b): Body<RollApiKey>,
) -> Result<Response, ApiError> {
    let tid = tenant(&caller, &raw)?;
    let auth = caller.0.principal.require_for_tenant::<ManageApiKeys>(tid)?;
    let id = key_id(&key)?;
    let (key, secret) = state.core.roll_api_key(&auth, id, &whole(&b.grace_seconds)).await?;
    Ok(with_secret(&state, key, &secret))
}

/// Revoke the key at once (`API_KEY_REVOKED`; every node refuses it within a second). Allowed
/// whatever the tenant's status; revoking a revoked key answers it as it is.
#[utoipa::path(post, path = "/v1/admin/tenants/{id}/api-keys/{key_id}/revoke", tag = "api keys",
    params(("id" = Uuid, Path, description = "Tenant id"), ("key_id" = Uuid, Path, description = "Key id"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 200, description = "Replays the first response for the same key")),
    responses((status = 200, body = ApiKeyOut), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path((raw, key)): Path<(String, String)>,
) -> Result<Json<ApiKeyOut>, ApiError> {
    let tid = tenant(&caller, &raw)?;
    let auth = caller.0.principal.require_for_tenant::<ManageApiKeys>(tid)?;
    let key = state.core.revoke_api_key(&auth, key_id(&key)?).await?;
    Ok(Json(ApiKeyOut::of(key, now(&state))))
}
