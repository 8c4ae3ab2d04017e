//! The data-plane API under `/v1/data-plane/`: what the product's own backend services ask,
//! with a service token (`qd_svc_…`) as bearer. Served on any host name (the data plane often
//! reaches Quarterdeck by an internal name), outside the site, session and CSRF layers: no
//! cookie is ever read here.

use super::Body;
use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::{FromRequestParts, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::routing::post;
use axum::{Json, Router};
use quarterdeck_domain::api_key::{KeyRecord, Refusal};
use quarterdeck_domain::core::{ServiceCaller, Verification};
use quarterdeck_domain::{Error, TenantId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/keys/verify", post(verify))
        .route("/credentials/resolve", post(resolve))
        .route("/usage", post(super::usage_ingest::ingest))
        .fallback(|| async { ApiError(Error::NotFound) })
}

/// A live service token.
pub struct Service(pub ServiceCaller);

impl FromRequestParts<AppState> for Service {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(ApiError(Error::Unauthenticated))?;
        Ok(Service(state.core.authenticate_service(bearer.trim()).await?))
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The tenant API key the data plane received.
    pub key: String,
}

#[allow(
    dead_code,
    reason = "the documented shape of the answer; `verify` writes it borrowed (VerifyAnswer)"
)]
#[derive(Serialize, ToSchema)]
pub struct VerifiedTenant {
    pub id: uuid::Uuid,
    pub slug: String,
    /// `active` or `read_only` (a suspended tenant's keys do not verify).
    pub status: String,
    pub tier: String,
    pub region: String,
}

#[allow(
    dead_code,
    reason = "the documented shape of the answer; `verify` writes it borrowed (VerifyAnswer)"
)]
#[derive(Serialize, ToSchema)]
pub struct VerifiedKey {
    pub id: uuid::Uuid,
    pub name: String,
    pub scopes: Vec<String>,
    /// `null`: never expires.
    #[schema(value_type = Option<String>, format = DateTime, required = true)]
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<time::OffsetDateTime>,
}

#[derive(Serialize, ToSchema)]
pub struct KeyLimits {
    /// The key's limit; `null` when it has none (and so are the other two).
    #[schema(required = true)]
    pub requests_per_minute: Option<u32>,
    /// Requests left in the current minute.
    #[schema(required = true)]
    pub remaining: Option<u64>,
    /// Seconds until the count resets.
    #[schema(required = true)]
    pub reset_seconds: Option<u64>,
}

/// The schema of a constant `true` or `false` (what `valid` is in each verdict).
fn constant(value: bool) -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::Boolean)
        .enum_values(Some([value]))
        .build()
}

fn always_true() -> utoipa::openapi::Object {
    constant(true)
}

fn always_false() -> utoipa::openapi::Object {
    constant(false)
}

/// Why a key does not verify.
fn refusal_codes() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(
            [
                Refusal::Unknown,
                Refusal::Expired,
                Refusal::Revoked,
                Refusal::TenantSuspended,
                Refusal::BudgetExceeded,
                Refusal::RateLimited,
            ]
            .map(Refusal::as_str),
        ))
        .build()
}

/// The key verifies: whose it is and what it may do.
#[derive(Serialize, ToSchema)]
pub struct KeyValid {
    #[schema(schema_with = always_true)]
    pub valid: bool,
    pub tenant: VerifiedTenant,
    pub key: VerifiedKey,
    pub limits: KeyLimits,
}

/// The key does not verify, and why.
#[derive(Serialize, ToSchema)]
pub struct KeyInvalid {
    #[schema(schema_with = always_false)]
    pub valid: bool,
    /// `unknown`, `expired`, `revoked`, `tenant_suspended` or `rate_limited`.
    #[schema(schema_with = refusal_codes)]
    pub code: String,
    /// Only with `rate_limited`: seconds until a request may succeed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, minimum = 0)]
    pub retry_after_seconds: Option<u64>,
}

/// `{"valid": true, tenant, key, limits}` or `{"valid": false, code, retry_after_seconds?}`.
#[allow(
    dead_code,
    reason = "the documented shape of the answer; `verify` writes it borrowed (VerifyAnswer)"
)]
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum VerifyResponse {
    Valid(KeyValid),
    Invalid(KeyInvalid),
}

/// The JSON of [`VerifyResponse`], borrowed from the cached record: nothing of the key or
/// the tenant is copied per request.
#[derive(Serialize)]
struct VerifyAnswer<'a> {
    valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<TenantRef<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<KeyRef<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limits: Option<KeyLimits>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_seconds: Option<u64>,
}

#[derive(Serialize)]
struct TenantRef<'a> {
    id: uuid::Uuid,
    slug: &'a str,
    status: &'static str,
    tier: &'static str,
    region: &'a str,
}

#[derive(Serialize)]
struct KeyRef<'a> {
    id: uuid::Uuid,
    name: &'a str,
    scopes: &'a [String],
    #[serde(with = "time::serde::rfc3339::option")]
    expires_at: Option<time::OffsetDateTime>,
}

fn answer(v: &Verification) -> VerifyAnswer<'_> {
    match v {
        Verification::Valid { record, limits } => {
            let KeyRecord { key, tenant, .. } = &**record;
            VerifyAnswer {
                valid: true,
                tenant: Some(TenantRef {
                    id: tenant.id.0,
                    slug: tenant.slug.as_str(),
                    status: tenant.status.as_str(),
                    tier: tenant.tier.as_str(),
                    region: tenant.region.as_str(),
                }),
                key: Some(KeyRef {
                    id: key.id,
                    name: &key.name,
                    scopes: &key.scopes,
                    expires_at: key.expires_at,
                }),
                limits: Some(KeyLimits {
                    requests_per_minute: limits.requests_per_minute,
                    remaining: limits.remaining,
                    reset_seconds: limits.reset_seconds,
                }),
                code: None,
                retry_after_seconds: None,
            }
        }
        Verification::Invalid {
            refusal,
            retry_after_secs,
        } => VerifyAnswer {
            valid: false,
            tenant: None,
            key: None,
            limits: None,
            code: Some(refusal.as_str()),
            retry_after_seconds: retry_after_secs.filter(|_| *refusal == Refusal::RateLimited),
        },
    }
}

/// Who is behind a tenant API key.
#[utoipa::path(post, path = "/v1/data-plane/keys/verify", tag = "data-plane",
    security(("service_token" = [])),
    request_body = VerifyRequest,
    responses(
        (status = 200, description = "The verdict (valid or not)", body = VerifyResponse),
        (status = 401, description = "Missing, unknown, revoked or expired service token", body = super::schema::ErrorBody),
        (status = 403, description = "The token lacks keys:verify", body = super::schema::ErrorBody),
        (status = 422, description = "Malformed body", body = super::schema::ErrorBody),
    ))]
pub async fn verify(
    State(state): State<AppState>,
    Service(caller): Service,
    Body(req): Body<VerifyRequest>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let verdict = state.core.verify_api_key(&caller, &req.key).await?;
    // The answer's shape is `VerifyResponse` (the schema above).
    Ok(Json(answer(&verdict)).into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// The tenant's id.
    #[schema(format = Uuid)]
    pub tenant_id: String,
    /// A provider id of the catalog (`openai`).
    pub provider: String,
}

/// The credential, every field in clear (send it only over TLS).
#[derive(Serialize, ToSchema)]
pub struct ResolveResponse {
    pub tenant_id: uuid::Uuid,
    pub provider: String,
    pub credential_id: uuid::Uuid,
    pub fields: std::collections::BTreeMap<String, String>,
    #[schema(value_type = String, format = DateTime)]
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: time::OffsetDateTime,
}

/// The tenant's credential for a provider.
#[utoipa::path(post, path = "/v1/data-plane/credentials/resolve", tag = "data-plane",
    security(("service_token" = [])),
    request_body = ResolveRequest,
    responses(
        (status = 200, description = "The credential's fields", body = ResolveResponse),
        (status = 401, description = "Missing, unknown, revoked or expired service token", body = super::schema::ErrorBody),
        (status = 403, description = "The token lacks credentials:read, or the tenant is suspended", body = super::schema::ErrorBody),
        (status = 404, description = "No such tenant (within the token's region) or no credential stored", body = super::schema::ErrorBody),
        (status = 422, description = "Malformed body", body = super::schema::ErrorBody),
    ))]
pub async fn resolve(
    State(state): State<AppState>,
    Service(caller): Service,
    Body(req): Body<ResolveRequest>,
) -> Result<Json<ResolveResponse>, ApiError> {
    let tenant_id: TenantId = req
        .tenant_id
        .trim()
        .parse()
        .map_err(|_| Error::field("tenant_id", "invalid_id", "Send the tenant's id (a UUID)."))?;
    let c = state.core.resolve_credential(&caller, tenant_id, &req.provider).await?;
    Ok(Json(ResolveResponse {
        tenant_id: c.tenant_id.0,
        provider: c.provider,
        credential_id: c.credential_id,
        fields: c.fields,
        updated_at: c.updated_at,
    }))
}
