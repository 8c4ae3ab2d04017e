//! `POST /v1/data-plane/usage`: usage events from the product's services, as CloudEvents 1.0
//! JSON (a batch, `application/cloudevents-batch+json`, or one event,
//! `application/cloudevents+json`). Each event is accepted or rejected on its own; accepted
//! means durable (in the region's journal) before the answer is sent.

use super::data_plane::Service;
use crate::error::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use quarterdeck_domain::usage::RejectReason;
use serde::Serialize;
use utoipa::ToSchema;

/// One usage event (CloudEvents 1.0, JSON).
#[allow(
    dead_code,
    reason = "the documented shape of the request; the handler reads it as JSON values"
)]
#[derive(ToSchema)]
pub struct UsageEvent {
    /// `1.0`.
    pub specversion: String,
    /// The deduplication key: counted once per (`source`, `id`) however often it is sent.
    pub id: String,
    /// The sending service, e.g. `gateway-eu-1`.
    pub source: String,
    /// The meter, e.g. `llm.tokens`.
    #[schema(rename = "type")]
    pub r#type: String,
    /// The tenant API key's id, or the tenant's id.
    #[schema(format = Uuid)]
    pub subject: String,
    /// When it happened (RFC 3339); now if absent. At most 5 minutes ahead, and within the
    /// raw-event window.
    #[schema(format = DateTime)]
    pub time: Option<String>,
    /// The quantity (the meter's value field, a non-negative integer) and dimensions.
    #[schema(value_type = Object)]
    pub data: Option<serde_json::Value>,
}

/// One event that was not accepted.
#[derive(Serialize, ToSchema)]
pub struct RejectedEvent {
    /// Its position in the batch (0-based).
    pub index: usize,
    /// Its `id`, when it had a usable one.
    #[schema(required = true)]
    pub id: Option<String>,
    #[schema(schema_with = reject_codes)]
    pub code: String,
    pub message: String,
}

fn reject_codes() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(RejectReason::ALL.map(RejectReason::as_str)))
        .build()
}

/// What became of a batch.
#[derive(Serialize, ToSchema)]
pub struct UsageAccepted {
    /// Events taken (durably), including ones sent before: each is counted once.
    pub accepted: usize,
    pub rejected: Vec<RejectedEvent>,
}

/// Report usage events.
#[utoipa::path(post, path = "/v1/data-plane/usage", tag = "data-plane",
    security(("service_token" = [])),
    request_body(content(
        (Vec<UsageEvent> = "application/cloudevents-batch+json"),
        (UsageEvent = "application/cloudevents+json"),
    )),
    responses(
        (status = 200, description = "Each event accepted or rejected with its reason", body = UsageAccepted),
        (status = 400, description = "Not JSON, or not the envelope's shape", body = super::schema::ErrorBody),
        (status = 401, description = "Missing, unknown, revoked or expired service token", body = super::schema::ErrorBody),
        (status = 403, description = "The token lacks usage:write", body = super::schema::ErrorBody),
        (status = 413, description = "More events than a batch may hold (batch_too_large), or a body over the size limit", body = super::schema::ErrorBody),
        (status = 415, description = "Not a CloudEvents JSON media type", body = super::schema::ErrorBody),
        (status = 429, description = "The token's event rate is spent (Retry-After)", body = super::schema::ErrorBody),
        (status = 503, description = "`usage_backlog`: the region's sweep is further behind than `usage_max_lag_seconds`, so nothing of the batch was taken; send it again whole after `Retry-After` seconds. Also `busy` (the journal could not be written) and `overloaded` (too many requests at once), both with `Retry-After`", body = super::schema::ErrorBody),
    ))]
pub async fn ingest(
    State(state): State<AppState>,
    Service(caller): Service,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<UsageAccepted>, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let report = state.core.ingest_usage(&caller, &body, content_type).await?;
    Ok(Json(UsageAccepted {
        accepted: report.accepted,
        rejected: report
            .rejected
            .into_iter()
            .map(|r| RejectedEvent {
                index: r.index,
                id: r.id,
                code: r.code.as_str().to_owned(),
                message: r.message,
            })
            .collect(),
    }))
}
