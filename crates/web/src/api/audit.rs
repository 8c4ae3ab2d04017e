//! `/v1/admin/audit/events`: filtered, cursor-paged; and `/export` as NDJSON.

use super::schema::{ErrorBody, EventList, EventOut};
use super::{Caller, Query, limit};
use crate::error::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use quarterdeck_domain::access::ReadAudit;
use quarterdeck_domain::audit::{AuditEvent, AuditFilter};
use quarterdeck_domain::{Error, TenantId};
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::IntoParams;

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// An event type, e.g. `TENANT_CREATED`.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    event_type: Option<String>,
    tenant_id: Option<String>,
    /// Part of the actor's email.
    actor: Option<String>,
    /// RFC 3339, inclusive.
    from: Option<String>,
    /// RFC 3339, exclusive.
    to: Option<String>,
    /// 1–500, default 50.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// The previous page's `next_cursor`.
    cursor: Option<String>,
}

fn time(raw: Option<&str>, field: &str) -> Result<Option<OffsetDateTime>, Error> {
    match raw.filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => OffsetDateTime::parse(s, &Rfc3339)
            .map(Some)
            .map_err(|_| Error::field(field, "invalid_time", "Use an RFC 3339 time like 2026-11-23T12:00:00Z.")),
    }
}

/// The filter, limited to what this caller may see: a tenant's token sees its tenant only.
async fn filter(state: &AppState, caller: &Caller, q: &EventsQuery, limit: u32) -> Result<AuditFilter, Error> {
    let tenant_id = match q.tenant_id.as_deref().filter(|s| !s.is_empty()) {
        Some(raw) => Some(
            raw.parse::<TenantId>()
                .map_err(|_| Error::field("tenant_id", "invalid_id", "Not a tenant id."))?,
        ),
        None => caller.0.tenant_limit(),
    };
    if let Some(t) = tenant_id {
        caller.0.check_tenant(t)?;
    }
    let _ = state;
    Ok(AuditFilter {
        event_type: q.event_type.clone().filter(|s| !s.is_empty()),
        tenant_id,
        actor: q.actor.clone(),
        from: time(q.from.as_deref(), "from")?,
        to: time(q.to.as_deref(), "to")?,
        before_seq: match q.cursor.as_deref() {
            None | Some("") => None,
            Some(c) => {
                Some(c.parse().map_err(|_| {
                    Error::field("cursor", "invalid_cursor", "Use the next_cursor of the previous page.")
                })?)
            }
        },
        limit,
    })
}

async fn read(state: &AppState, caller: &Caller, filter: &AuditFilter) -> Result<Vec<AuditEvent>, Error> {
    if caller.0.principal.tenant_id.is_some() {
        let t = filter.tenant_id.ok_or(Error::NotFound)?;
        return state
            .core
            .tenant_events(&caller.0.principal, t, filter.before_seq, filter.limit)
            .await
            .map(|events| {
                events
                    .into_iter()
                    .filter(|e| filter.event_type.as_ref().is_none_or(|ty| *ty == e.event_type))
                    .collect()
            });
    }
    let auth = caller.0.principal.require::<ReadAudit>()?;
    state.core.list_events(&auth, filter).await
}

/// Audit events, newest first, filtered and cursor-paged.
#[utoipa::path(get, path = "/v1/admin/audit/events", tag = "audit", params(EventsQuery),
    responses((status = 200, body = EventList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<EventsQuery>,
) -> Result<Json<EventList>, ApiError> {
    let limit = limit(q.limit, 50, 500)?;
    let f = filter(&state, &caller, &q, limit + 1).await?;
    let mut items = read(&state, &caller, &f).await?;
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    let next_cursor = items.last().filter(|_| more).map(|e| e.seq.to_string());
    Ok(Json(EventList {
        items: items.into_iter().map(EventOut::from).collect(),
        next_cursor,
    }))
}

/// The export's filters: those of the list, without paging.
#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// An event type, e.g. `TENANT_CREATED`.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    event_type: Option<String>,
    tenant_id: Option<String>,
    /// Part of the actor's email.
    actor: Option<String>,
    /// RFC 3339, inclusive.
    from: Option<String>,
    /// RFC 3339, exclusive.
    to: Option<String>,
}

/// Every matching event, newest first, one JSON object a line (NDJSON).
#[utoipa::path(get, path = "/v1/admin/audit/events/export", tag = "audit", params(ExportQuery),
    responses((status = 200, content_type = "application/x-ndjson", body = String), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn export(
    State(state): State<AppState>,
    caller: Caller,
    Query(x): Query<ExportQuery>,
) -> Result<Response, ApiError> {
    let q = EventsQuery {
        event_type: x.event_type,
        tenant_id: x.tenant_id,
        actor: x.actor,
        from: x.from,
        to: x.to,
        limit: None,
        cursor: None,
    };
    let mut f = filter(&state, &caller, &q, 1000).await?;
    let mut out = String::new();
    loop {
        let batch = read(&state, &caller, &f).await?;
        for e in &batch {
            out.push_str(&serde_json::to_string(&EventOut::from(e.clone())).map_err(Error::internal)?);
            out.push('\n');
        }
        match batch.last() {
            Some(last) if batch.len() == 1000 => f.before_seq = Some(last.seq),
            _ => break,
        }
        if out.len() > 64 * 1024 * 1024 {
            return Err(Error::field(
                "limit",
                "export_too_large",
                "Narrow the export with from/to or tenant_id.",
            )
            .into());
        }
    }
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], out).into_response())
}
