//! `/v1/admin/audit/events`: filtered, cursor-paged; and `/export` as NDJSON.

use super::{Caller, List};
use crate::error::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use quarterdeck_domain::access::ReadAudit;
use quarterdeck_domain::audit::{AuditEvent, AuditFilter};
use quarterdeck_domain::{Error, TenantId};
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    #[serde(rename = "type")]
    event_type: Option<String>,
    tenant_id: Option<String>,
    actor: Option<String>,
    /// RFC 3339, inclusive.
    from: Option<String>,
    /// RFC 3339, exclusive.
    to: Option<String>,
    limit: Option<u32>,
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
        Some(raw) => Some(raw.parse::<TenantId>().map_err(|_| Error::field("tenant_id", "invalid_id", "Not a tenant id."))?),
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
            Some(c) => Some(c.parse().map_err(|_| Error::field("cursor", "invalid_cursor", "Use the next_cursor of the previous page."))?),
        },
        limit,
    })
}

async fn read(state: &AppState, caller: &Caller, filter: &AuditFilter) -> Result<Vec<AuditEvent>, Error> {
    if caller.0.principal.tenant_id.is_some() {
        let t = filter.tenant_id.ok_or(Error::NotFound)?;
        return state.core.tenant_events(&caller.0.principal, t, filter.before_seq, filter.limit).await.map(|events| {
            events
                .into_iter()
                .filter(|e| filter.event_type.as_ref().is_none_or(|ty| *ty == e.event_type))
                .collect()
        });
    }
    let auth = caller.0.principal.require::<ReadAudit>()?;
    state.core.list_events(&auth, filter).await
}

pub async fn list(State(state): State<AppState>, caller: Caller, Query(q): Query<EventsQuery>) -> Result<Json<List<AuditEvent>>, ApiError> {
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let f = filter(&state, &caller, &q, limit + 1).await?;
    let mut items = read(&state, &caller, &f).await?;
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    let next_cursor = items.last().filter(|_| more).map(|e| e.seq.to_string());
    Ok(Json(List { items, next_cursor }))
}

/// Every matching event, oldest last, one JSON object a line.
pub async fn export(State(state): State<AppState>, caller: Caller, Query(q): Query<EventsQuery>) -> Result<Response, ApiError> {
    let mut f = filter(&state, &caller, &q, 1000).await?;
    let mut out = String::new();
    loop {
        let batch = read(&state, &caller, &f).await?;
        for e in &batch {
            out.push_str(&serde_json::to_string(e).map_err(Error::internal)?);
            out.push('\n');
        }
        match batch.last() {
            Some(last) if batch.len() == 1000 => f.before_seq = Some(last.seq),
            _ => break,
        }
        if out.len() > 64 * 1024 * 1024 {
            return Err(Error::field("limit", "export_too_large", "Narrow the export with from/to or tenant_id.").into());
        }
    }
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], out).into_response())
}
