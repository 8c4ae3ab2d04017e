//! `/v1/admin/webhooks` and `/v1/admin/events`: the product's webhook endpoints (list, get,
//! create, update, delete, roll the signing secret), each endpoint's deliveries (cursor-paged,
//! newest first, with resend), and the events feed (the same events, pulled in commit order).
//! The same domain operations as the console's Settings → Webhooks, so the same rules (the
//! outbound policy on the URL, at most 50 endpoints, a roll's grace of at most 7 days) and the
//! same audit events (`WEBHOOK_ENDPOINT_CREATED`, `_UPDATED`, `_DELETED`,
//! `WEBHOOK_DELIVERY_RESENT`) with the token's owner as the actor.
//!
//! Who may: a platform user's token with `platform:config` (`ManageWebhooks`: the owner), not
//! limited to a tenant (the endpoints and the feed span every tenant). A signing secret is in
//! the 201 of a create or roll only, and `null` in an `Idempotency-Key` replay.

use super::schema::ErrorBody;
use super::{Body, Caller, OptionalBody, Query, SecretFields, limit};
use crate::error::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use quarterdeck_domain::Error;
use quarterdeck_domain::access::{Authorized, ManageWebhooks};
use quarterdeck_domain::core::{EndpointWithSecret, MAX_FEED_PAGE};
use quarterdeck_domain::error::{FieldError, Problems};
use quarterdeck_domain::webhook::{DeliveryView, Endpoint, EndpointDraft, MAX_DESCRIPTION_CHARS, MAX_URL_CHARS, Topic};
use serde::{Deserialize, Deserializer, Serialize};
use time::{Duration, OffsetDateTime};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// The patterns an endpoint may subscribe to: every event type, each family (`tenant.*`), and
/// `*` (everything). The document lists them as the `event_types` items' `enum`.
pub fn subscription_patterns() -> Vec<String> {
    let mut out: Vec<String> = vec!["*".to_owned()];
    for t in Topic::ALL {
        let family = format!("{}.*", t.as_str().split('.').next().unwrap_or_default());
        if !out.contains(&family) {
            out.push(family);
        }
    }
    out.extend(Topic::ALL.iter().map(|t| t.as_str().to_owned()));
    out
}

/// A webhook endpoint, without its secret.
#[derive(Serialize, ToSchema)]
pub struct WebhookEndpointOut {
    pub id: Uuid,
    /// Where events are POSTed (https; checked by the outbound policy when saved and at each
    /// delivery).
    pub url: String,
    pub description: String,
    /// What it subscribes to: event types, families (`tenant.*`) or `*`, sorted.
    pub event_types: Vec<String>,
    /// Only this region's tenants' events; `null`: every region (and events about no tenant).
    #[schema(required = true)]
    pub region: Option<String>,
    pub enabled: bool,
    /// Why it is disabled: `manual`, or `failing` (no successful delivery for 3 days);
    /// `null` when enabled.
    #[schema(required = true)]
    pub disabled_reason: Option<String>,
    /// Since when every attempt has failed (`null`: the last attempt succeeded, or none yet).
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime, required = true)]
    pub failing_since: Option<OffsetDateTime>,
    /// Until when the secret replaced by the last roll still signs beside the current one
    /// (`null`: no such secret, or its grace is over).
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime, required = true)]
    pub previous_secret_valid_until: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

impl WebhookEndpointOut {
    fn of(e: Endpoint, now: OffsetDateTime) -> Self {
        Self {
            id: e.id,
            url: e.url,
            description: e.description,
            event_types: e.subscription.patterns().to_vec(),
            region: e.region,
            enabled: e.enabled,
            disabled_reason: if e.enabled { None } else { e.disabled_reason },
            failing_since: e.failing_since,
            previous_secret_valid_until: e
                .previous_secret_until
                .filter(|until| e.previous_secret_sealed.is_some() && *until > now),
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct WebhookEndpointList {
    /// Oldest first; every endpoint (there are at most 50), so there is no next page.
    pub items: Vec<WebhookEndpointOut>,
}

/// A new endpoint, or one whose secret was rolled, with its signing secret shown this once.
#[derive(Serialize, ToSchema)]
pub struct WebhookEndpointWithSecret {
    pub endpoint: WebhookEndpointOut,
    /// The signing secret (`whsec_` and base64, as Standard Webhooks libraries take it), never
    /// returned again; `null` in an `Idempotency-Key` replay (named in
    /// `Idempotent-Replay-Redacted`).
    #[schema(required = true)]
    pub secret: Option<String>,
}

/// One delivery of one event to one endpoint.
#[derive(Serialize, ToSchema)]
pub struct WebhookDeliveryOut {
    pub id: Uuid,
    pub endpoint_id: Uuid,
    /// The event's id (the `webhook-id` header, and `id` in the body).
    pub event_id: Uuid,
    /// e.g. `tenant.created`.
    pub event_type: String,
    /// `null` for an event about no tenant.
    #[schema(required = true)]
    pub tenant_id: Option<Uuid>,
    /// `pending` (waiting for its first attempt or a retry), `delivered`, `failed` (given
    /// up after 3 days of retries), or `cancelled` (the endpoint's types or region changed so
    /// that it no longer gets this event).
    #[schema(pattern = "^(pending|delivered|failed|cancelled)$")]
    pub status: String,
    /// Attempts made so far.
    #[schema(minimum = 0)]
    pub attempts: u32,
    /// The HTTP status of the last attempt (`null`: no attempt yet, or no answer).
    #[schema(required = true, minimum = 100, maximum = 999)]
    pub last_status: Option<u16>,
    /// How long the last attempt took, in milliseconds.
    #[schema(required = true, minimum = 0)]
    pub last_response_ms: Option<u32>,
    /// Why the last attempt failed (`HTTP 500`, `timeout`, `address_refused`, …); `null` when
    /// it succeeded or none was made.
    #[schema(required = true)]
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime, required = true)]
    pub last_attempt_at: Option<OffsetDateTime>,
    /// When the next attempt is due (`pending` only; an endpoint that is disabled sends
    /// nothing until it is enabled again).
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime, required = true)]
    pub next_attempt_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

impl From<DeliveryView> for WebhookDeliveryOut {
    fn from(d: DeliveryView) -> Self {
        Self {
            id: d.id,
            endpoint_id: d.endpoint_id,
            event_id: d.event_id,
            event_type: d.event_type,
            tenant_id: d.tenant_id,
            status: d.status,
            attempts: d.attempts,
            last_status: d.last_status,
            last_response_ms: d.last_response_ms,
            last_error: d.last_error,
            last_attempt_at: d.last_attempt_at,
            next_attempt_at: d.next_attempt_at,
            created_at: d.created_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct WebhookDeliveryList {
    /// Newest first.
    pub items: Vec<WebhookDeliveryOut>,
    /// Pass as `before` for the next (older) page; `null` on the last one.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// An event, exactly the JSON body its webhooks deliver.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct WebhookEventOut {
    /// The event's id (also the `webhook-id` of its deliveries): deduplicate by it.
    pub id: Uuid,
    /// The event type, e.g. `tenant.created`.
    #[serde(rename = "type")]
    #[schema(rename = "type")]
    pub event_type: String,
    /// The schema version of `data` (fields are only ever added within a version).
    #[schema(minimum = 1)]
    pub version: u32,
    /// When the change happened (RFC 3339, UTC).
    #[schema(format = DateTime)]
    pub timestamp: String,
    /// The tenant it is about; `null` for an event about no tenant (a platform user's).
    #[schema(required = true)]
    pub tenant_id: Option<Uuid>,
    /// The event's payload; its shape per type is in `docs/data-plane.md`.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// A page of the events feed.
#[derive(Serialize, ToSchema)]
pub struct EventFeed {
    /// Oldest first, in commit order.
    pub items: Vec<WebhookEventOut>,
    /// Ask again with `after` set to this: the last event's position, or the one asked with
    /// when there was nothing new. Never `null`: a consumer keeps it and polls with it.
    #[schema(pattern = "^evc_[0-9]+$")]
    pub next_cursor: String,
}

/// The permission, for a token not limited to one tenant (the endpoints and the feed span
/// every tenant).
fn manage(caller: &Caller) -> Result<Authorized<ManageWebhooks>, Error> {
    let auth = caller.0.principal.require::<ManageWebhooks>()?;
    if caller.0.tenant_limit().is_some() {
        return Err(Error::Forbidden);
    }
    Ok(auth)
}

fn id(raw: &str) -> Result<Uuid, Error> {
    raw.parse().map_err(|_| Error::NotFound)
}

fn now(state: &AppState) -> OffsetDateTime {
    state.core.clock.now()
}

/// The event types, as strictly as the document says: each one of the catalog's patterns,
/// exactly (the domain would also trim and skip blanks; the API refuses them, as its schema
/// does).
fn check_event_types(types: &[String], problems: &mut Problems) {
    let known = subscription_patterns();
    if types.is_empty() {
        problems.push(FieldError::new(
            "event_types",
            "invalid",
            "choose at least one event type",
        ));
    }
    if let Some(bad) = types.iter().find(|t| !known.contains(t)) {
        problems.push(FieldError::new(
            "event_types",
            "unknown_event_type",
            format!(
                "“{}” is not an event type (nor `family.*`, nor `*`)",
                bad.chars().take(60).collect::<String>()
            ),
        ));
    }
}

/// The lengths the document promises, counted before the domain trims anything.
fn check_lengths(url: Option<&str>, description: Option<&str>, problems: &mut Problems) {
    if let Some(u) = url
        && u.chars().count() > MAX_URL_CHARS
    {
        problems.push(FieldError::new(
            "url",
            "invalid",
            format!("at most {MAX_URL_CHARS} characters"),
        ));
    }
    if let Some(d) = description
        && d.chars().count() > MAX_DESCRIPTION_CHARS
    {
        problems.push(FieldError::new(
            "description",
            "invalid",
            format!("at most {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
}

/// The endpoint as stored (times at the store's precision, as a later GET shows them).
async fn stored(state: &AppState, auth: &Authorized<ManageWebhooks>, id: Uuid) -> Result<WebhookEndpointOut, Error> {
    let e = state.core.webhook_endpoint(auth, id).await?;
    Ok(WebhookEndpointOut::of(e, now(state)))
}

/// A 201 with the secret, marked so a kept reply blanks it.
async fn with_secret(
    state: &AppState,
    auth: &Authorized<ManageWebhooks>,
    e: EndpointWithSecret,
) -> Result<Response, Error> {
    let body = WebhookEndpointWithSecret {
        endpoint: stored(state, auth, e.endpoint.id).await?,
        secret: Some(e.secret),
    };
    let mut resp = (StatusCode::CREATED, Json(body)).into_response();
    resp.extensions_mut().insert(SecretFields(&["secret"]));
    Ok(resp)
}

/// Every endpoint, oldest first (without secrets).
#[utoipa::path(get, path = "/v1/admin/webhooks", tag = "webhooks",
    responses((status = 200, body = WebhookEndpointList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<WebhookEndpointList>, ApiError> {
    let auth = manage(&caller)?;
    let at = now(&state);
    let items = state
        .core
        .webhook_endpoints(&auth)
        .await?
        .into_iter()
        .map(|e| WebhookEndpointOut::of(e, at))
        .collect();
    Ok(Json(WebhookEndpointList { items }))
}

/// One endpoint (without its secret).
#[utoipa::path(get, path = "/v1/admin/webhooks/{id}", tag = "webhooks",
    params(("id" = Uuid, Path, description = "Endpoint id")),
    responses((status = 200, body = WebhookEndpointOut), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Json<WebhookEndpointOut>, ApiError> {
    let auth = manage(&caller)?;
    let e = state.core.webhook_endpoint(&auth, id(&raw)?).await?;
    Ok(Json(WebhookEndpointOut::of(e, now(&state))))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookEndpoint {
    /// `https://…` on a public address (`http://` only to a range `outbound_allow_private`
    /// allows); no user name or password, no `#fragment`. Refused by the outbound policy: 422
    /// with field `url`, code `url_refused`.
    #[schema(min_length = 1, max_length = 2048)]
    url: String,
    /// What it is for (at most 200 characters, no control characters).
    #[schema(max_length = 200)]
    description: Option<String>,
    /// Event types (`tenant.created`), families (`tenant.*`) or `*`.
    #[schema(min_items = 1, inline, value_type = Vec<EventTypePattern>)]
    event_types: Vec<String>,
    /// One of the configured regions: only that region's tenants' events. Omitted or `null`:
    /// every region.
    region: Option<String>,
    /// Default `true`. A disabled endpoint keeps its events queued until it is enabled.
    enabled: Option<bool>,
}

/// An event type, a family (`tenant.*`) or `*`: the document's `enum` for `event_types`.
/// Kept equal to [`subscription_patterns`] (a unit test compares them).
#[derive(Serialize, ToSchema)]
#[allow(dead_code, reason = "never built: only its schema is used, as the document's enum")]
pub enum EventTypePattern {
    #[serde(rename = "*")]
    All,
    #[serde(rename = "tenant.*")]
    TenantFamily,
    #[serde(rename = "user.*")]
    UserFamily,
    #[serde(rename = "api_key.*")]
    ApiKeyFamily,
    #[serde(rename = "provider_credential.*")]
    ProviderCredentialFamily,
    #[serde(rename = "budget.*")]
    BudgetFamily,
    #[serde(rename = "impersonation.*")]
    ImpersonationFamily,
    #[serde(rename = "tenant.created")]
    TenantCreated,
    #[serde(rename = "tenant.updated")]
    TenantUpdated,
    #[serde(rename = "tenant.status_changed")]
    TenantStatusChanged,
    #[serde(rename = "tenant.deleted")]
    TenantDeleted,
    #[serde(rename = "user.invited")]
    UserInvited,
    #[serde(rename = "user.activated")]
    UserActivated,
    #[serde(rename = "user.roles_changed")]
    UserRolesChanged,
    #[serde(rename = "user.suspended")]
    UserSuspended,
    #[serde(rename = "user.deleted")]
    UserDeleted,
    #[serde(rename = "api_key.created")]
    ApiKeyCreated,
    #[serde(rename = "api_key.revoked")]
    ApiKeyRevoked,
    #[serde(rename = "provider_credential.changed")]
    ProviderCredentialChanged,
    #[serde(rename = "budget.threshold_reached")]
    BudgetThresholdReached,
    #[serde(rename = "budget.exceeded")]
    BudgetExceeded,
    #[serde(rename = "impersonation.started")]
    ImpersonationStarted,
    #[serde(rename = "impersonation.ended")]
    ImpersonationEnded,
}

/// Create an endpoint (`WEBHOOK_ENDPOINT_CREATED`); its signing secret is in this response
/// only. At most 50 endpoints (409 `too_many_endpoints`).
#[utoipa::path(post, path = "/v1/admin/webhooks", tag = "webhooks", request_body = CreateWebhookEndpoint,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 200, description = "Replays the first response for the same key and body (the secret as `null`)")),
    responses((status = 201, body = WebhookEndpointWithSecret), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Body(b): Body<CreateWebhookEndpoint>,
) -> Result<Response, ApiError> {
    let auth = manage(&caller)?;
    let mut p = Problems::new();
    check_lengths(Some(&b.url), b.description.as_deref(), &mut p);
    check_event_types(&b.event_types, &mut p);
    let draft = p.check(EndpointDraft::parse(
        &b.url,
        b.description.as_deref().unwrap_or_default(),
        &b.event_types,
        b.region.as_deref(),
        b.enabled.unwrap_or(true),
        &state.core.config.regions,
    ));
    p.finish()?;
    let draft = draft.ok_or_else(|| Error::internal("webhook draft passed without a value"))?;
    let created = state.core.create_webhook_endpoint(&auth, draft).await?;
    Ok(with_secret(&state, &auth, created).await?)
}

/// `null` and absent differ for `region` (all regions / unchanged).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhookEndpoint {
    /// A new URL (checked by the outbound policy, like a new endpoint's).
    #[schema(min_length = 1, max_length = 2048)]
    url: Option<String>,
    #[schema(max_length = 200)]
    description: Option<String>,
    /// Replaces the subscription (send the whole list).
    #[schema(min_items = 1, inline, value_type = Option<Vec<EventTypePattern>>)]
    event_types: Option<Vec<String>>,
    /// A configured region; `null` or `""`: every region. Omitted: unchanged.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    region: Option<Option<String>>,
    /// Enabling a disabled endpoint sends what is pending for it at once, in order.
    enabled: Option<bool>,
}

/// Change an endpoint (`WEBHOOK_ENDPOINT_UPDATED`): what the body names; the rest stays.
#[utoipa::path(patch, path = "/v1/admin/webhooks/{id}", tag = "webhooks", request_body = UpdateWebhookEndpoint,
    params(("id" = Uuid, Path, description = "Endpoint id")),
    responses((status = 200, body = WebhookEndpointOut), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    Body(b): Body<UpdateWebhookEndpoint>,
) -> Result<Json<WebhookEndpointOut>, ApiError> {
    let auth = manage(&caller)?;
    let current = state.core.webhook_endpoint(&auth, id(&raw)?).await?;
    let mut p = Problems::new();
    check_lengths(b.url.as_deref(), b.description.as_deref(), &mut p);
    if let Some(types) = &b.event_types {
        check_event_types(types, &mut p);
    }
    let region = match &b.region {
        None => current.region.clone(),
        Some(r) => r.clone(),
    };
    let draft = p.check(EndpointDraft::parse(
        b.url.as_deref().unwrap_or(&current.url),
        b.description.as_deref().unwrap_or(&current.description),
        b.event_types.as_deref().unwrap_or(current.subscription.patterns()),
        region.as_deref(),
        b.enabled.unwrap_or(current.enabled),
        &state.core.config.regions,
    ));
    p.finish()?;
    let draft = draft.ok_or_else(|| Error::internal("webhook draft passed without a value"))?;
    let e = state
        .core
        .update_webhook_endpoint(&auth, current.id, draft, current.updated_at)
        .await?;
    Ok(Json(WebhookEndpointOut::of(e, now(&state))))
}

/// Delete an endpoint and its deliveries (`WEBHOOK_ENDPOINT_DELETED`). Nothing more is sent to
/// it, not even what is pending.
#[utoipa::path(delete, path = "/v1/admin/webhooks/{id}", tag = "webhooks",
    params(("id" = Uuid, Path, description = "Endpoint id")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    let auth = manage(&caller)?;
    state.core.delete_webhook_endpoint(&auth, id(&raw)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RollWebhookSecret {
    /// How long the replaced secret keeps signing beside the new one: 0 (not at all) to 604800
    /// (7 days). Default 86400 (24 hours).
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 604_800)]
    grace_seconds: Option<serde_json::Number>,
}

/// A whole number of seconds within what a roll allows, or the field's error.
fn grace(n: &serde_json::Number) -> Result<Duration, Error> {
    let whole = n.as_i64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 1e15)
            .map(|f| f as i64)
    });
    match whole {
        Some(s) if (0..=604_800).contains(&s) => Ok(Duration::seconds(s)),
        _ => Err(Error::field(
            "grace_seconds",
            "invalid",
            "a whole number of seconds from 0 to 604800 (7 days)",
        )),
    }
}

/// Replace the signing secret (`WEBHOOK_ENDPOINT_UPDATED`, `secret_rolled`): the new one is in
/// this response only; deliveries are signed with both during `grace_seconds`. The body may be
/// omitted (a grace of 24 hours).
#[utoipa::path(post, path = "/v1/admin/webhooks/{id}/roll-secret", tag = "webhooks", request_body = Option<RollWebhookSecret>,
    params(("id" = Uuid, Path, description = "Endpoint id"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 200, description = "Replays the first response for the same key and body (the secret as `null`)")),
    responses((status = 201, body = WebhookEndpointWithSecret), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn roll_secret(
    State(state): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    OptionalBody(b): OptionalBody<RollWebhookSecret>,
) -> Result<Response, ApiError> {
    let auth = manage(&caller)?;
    let endpoint = id(&raw)?;
    let grace = b.unwrap_or_default().grace_seconds.as_ref().map(grace).transpose()?;
    let rolled = state.core.roll_webhook_secret(&auth, endpoint, grace).await?;
    Ok(with_secret(&state, &auth, rolled).await?)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    /// 1–100, default 50.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// The previous page's `next_cursor` (a delivery id): deliveries older than it.
    #[param(format = Uuid)]
    before: Option<String>,
}

/// The endpoint's deliveries, newest first.
#[utoipa::path(get, path = "/v1/admin/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = Uuid, Path, description = "Endpoint id"), DeliveriesQuery),
    responses((status = 200, body = WebhookDeliveryList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn deliveries(
    State(state): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    Query(q): Query<DeliveriesQuery>,
) -> Result<Json<WebhookDeliveryList>, ApiError> {
    let auth = manage(&caller)?;
    let endpoint = id(&raw)?;
    let page_size = limit(q.limit, 50, 100)?;
    let before = match q.before.as_deref() {
        None => None,
        Some(b) => Some(
            b.parse::<Uuid>()
                .map_err(|_| Error::field("before", "invalid_cursor", "Use the next_cursor of the previous page."))?,
        ),
    };
    let mut items = state
        .core
        .webhook_deliveries(&auth, endpoint, page_size + 1, before)
        .await?;
    let more = items.len() > page_size as usize;
    items.truncate(page_size as usize);
    let next_cursor = items.last().filter(|_| more).map(|d| d.id.to_string());
    Ok(Json(WebhookDeliveryList {
        items: items.into_iter().map(WebhookDeliveryOut::from).collect(),
        next_cursor,
    }))
}

/// Send a delivery's event to its endpoint again (`WEBHOOK_DELIVERY_RESENT`): a new delivery,
/// due now, behind what is already pending for the same tenant.
#[utoipa::path(post, path = "/v1/admin/webhooks/{id}/deliveries/{delivery_id}/resend", tag = "webhooks",
    params(("id" = Uuid, Path, description = "Endpoint id"), ("delivery_id" = Uuid, Path, description = "Delivery id"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 200, description = "Replays the first response for the same key")),
    responses((status = 201, body = WebhookDeliveryOut), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn resend(
    State(state): State<AppState>,
    caller: Caller,
    Path((raw, delivery)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let auth = manage(&caller)?;
    let d = state
        .core
        .resend_webhook_delivery(&auth, id(&raw)?, id(&delivery)?)
        .await?;
    Ok((StatusCode::CREATED, Json(WebhookDeliveryOut::from(d))).into_response())
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FeedQuery {
    /// The `next_cursor` of an earlier page; without it, from the oldest event kept (30 days).
    #[param(pattern = "^evc_[0-9]+$")]
    after: Option<String>,
    /// Only these event types, comma-separated (exact types, e.g.
    /// `tenant.created,tenant.deleted`); all when omitted.
    types: Option<String>,
    /// 1–500, default 100.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
}

/// The events, oldest first, after `after`: the same JSON bodies webhooks deliver. A consumer
/// that reads until a page is shorter than `limit` has everything that committed before it
/// asked; it keeps `next_cursor` and asks again later.
#[utoipa::path(get, path = "/v1/admin/events", tag = "webhooks", params(FeedQuery),
    responses((status = 200, body = EventFeed), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn feed(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<FeedQuery>,
) -> Result<Json<EventFeed>, ApiError> {
    let auth = manage(&caller)?;
    let page_size = limit(q.limit, 100, MAX_FEED_PAGE)?;
    let after = q.after.as_deref();
    let types: Vec<String> = q
        .types
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    let page = state.core.events_feed(&auth, after, &types, page_size).await?;
    let items = page
        .events
        .iter()
        .map(|e| serde_json::from_str::<WebhookEventOut>(&e.body).map_err(Error::internal))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(EventFeed {
        items,
        next_cursor: page.next_cursor,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_event_type_enum_is_every_pattern_the_catalog_has() {
        let schema = serde_json::to_value(<EventTypePattern as utoipa::PartialSchema>::schema()).unwrap();
        let documented: Vec<String> = schema["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(documented, subscription_patterns());
    }
}
