//! `/audit` (filtered, paged) and `/audit/{id}` (one event).

use super::{Chrome, Opt, fmt_time, options, render};
use crate::auth::CurrentSession;
use crate::error::HtmlError;
use crate::state::AppState;
use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use quarterdeck_domain::access::{ReadAudit, ReadTenants};
use quarterdeck_domain::audit::{AuditEvent, AuditFilter, EventType};
use quarterdeck_domain::{Error, EventId, TenantId, TenantSlug};
use serde::Deserialize;
use time::macros::format_description;
use time::{Date, Duration};

pub const PAGE_SIZE: u32 = 50;

/// An event as the tables show it.
pub struct EventRow {
    pub id: String,
    pub ts: String,
    pub event_type: String,
    pub actor: String,
    pub tenant_id: String,
    pub summary: String,
}

impl From<&AuditEvent> for EventRow {
    fn from(e: &AuditEvent) -> Self {
        let pick = |k: &str| e.details.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        let summary = pick("name")
            .or_else(|| pick("slug"))
            .or_else(|| pick("email"))
            .or_else(|| {
                e.details
                    .get("changes")
                    .and_then(|c| c.as_object())
                    .map(|c| c.keys().cloned().collect::<Vec<_>>().join(", "))
            })
            .unwrap_or_default();
        Self {
            id: e.id.to_string(),
            ts: fmt_time(e.ts),
            event_type: e.event_type.clone(),
            actor: e.actor_email.clone().unwrap_or_else(|| "system".to_owned()),
            tenant_id: e.tenant_id.map(|t| t.to_string()).unwrap_or_default(),
            summary,
        }
    }
}

#[derive(Deserialize, Default)]
pub struct AuditQuery {
    #[serde(default, rename = "type")]
    event_type: String,
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    actor: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    before: Option<i64>,
}

#[derive(Template)]
#[template(path = "audit_list.html")]
pub struct AuditPage {
    pub chrome: Chrome,
    pub types: Vec<Opt>,
    pub q_tenant: String,
    pub q_actor: String,
    pub q_from: String,
    pub q_to: String,
    pub problem: Option<String>,
    pub events: Vec<EventRow>,
    pub next_page: Option<String>,
    pub first_page: Option<String>,
}

fn parse_date(s: &str, field: &str) -> Result<Option<Date>, Error> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    Date::parse(s, format_description!("[year]-[month]-[day]"))
        .map(Some)
        .map_err(|_| Error::field(field, "invalid_date", "Use a date like 2026-11-23."))
}

pub async fn list(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    Query(q): Query<AuditQuery>,
) -> Result<Response, HtmlError> {
    let auth = s.principal.require::<ReadAudit>()?;
    let mut problem = None;
    let mut filter = AuditFilter {
        limit: PAGE_SIZE + 1,
        before_seq: q.before,
        ..Default::default()
    };
    if !q.event_type.is_empty() {
        filter.event_type = Some(q.event_type.clone());
    }
    if !q.actor.trim().is_empty() {
        filter.actor = Some(q.actor.trim().to_owned());
    }
    let tenant = q.tenant.trim();
    if !tenant.is_empty() {
        filter.tenant_id = match tenant.parse::<TenantId>() {
            Ok(id) => Some(id),
            Err(_) => match (TenantSlug::parse(tenant), s.principal.require::<ReadTenants>()) {
                (Ok(slug), Ok(auth)) => match state.core.tenant_by_slug(&auth, &slug).await? {
                    Some(t) => Some(t.id),
                    None => {
                        problem = Some(format!("No tenant with slug {tenant}."));
                        Some(TenantId(uuid::Uuid::nil()))
                    }
                },
                _ => {
                    problem = Some("Enter a tenant slug or id.".to_owned());
                    Some(TenantId(uuid::Uuid::nil()))
                }
            },
        };
    }
    match (parse_date(&q.from, "from"), parse_date(&q.to, "to")) {
        (Ok(from), Ok(to)) => {
            filter.from = from.map(|d| d.midnight().assume_utc());
            filter.to = to.map(|d| d.midnight().assume_utc() + Duration::days(1));
        }
        (Err(e), _) | (_, Err(e)) => problem = Some(e.fields().first().map(|f| f.message.clone()).unwrap_or_default()),
    }
    let mut events = state.core.list_events(&auth, &filter).await?;
    let has_more = events.len() > PAGE_SIZE as usize;
    events.truncate(PAGE_SIZE as usize);
    let query_without_cursor = serde_urlencoded::to_string([
        ("type", q.event_type.as_str()),
        ("tenant", q.tenant.as_str()),
        ("actor", q.actor.as_str()),
        ("from", q.from.as_str()),
        ("to", q.to.as_str()),
    ])
    .unwrap_or_default();
    let next_page = match events.last() {
        Some(last) if has_more => Some(format!("/audit?{query_without_cursor}&before={}", last.seq)),
        _ => None,
    };
    let first_page = q.before.map(|_| format!("/audit?{query_without_cursor}"));
    Ok(render(&AuditPage {
        chrome: Chrome::console(&s, "audit"),
        types: options(EventType::ALL.iter().map(|t| (t.as_str(), t.as_str())), &q.event_type),
        q_tenant: q.tenant,
        q_actor: q.actor,
        q_from: q.from,
        q_to: q.to,
        problem,
        events: events.iter().map(EventRow::from).collect(),
        next_page,
        first_page,
    }))
}

#[derive(Template)]
#[template(path = "audit_event.html")]
pub struct EventPage {
    pub chrome: Chrome,
    pub row: EventRow,
    pub seq: i64,
    pub actor_id: String,
    pub details: String,
    pub hash: String,
    pub prev_hash: String,
}

pub async fn show(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    Path(id): Path<String>,
) -> Result<Response, HtmlError> {
    let auth = s.principal.require::<ReadAudit>()?;
    let id: EventId = id.parse().map_err(|_| Error::NotFound)?;
    let e = state.core.event(&auth, id).await?;
    Ok(render(&EventPage {
        chrome: Chrome::console(&s, "audit"),
        row: EventRow::from(&e),
        seq: e.seq,
        actor_id: e.actor_id.map(|a| a.to_string()).unwrap_or_default(),
        details: serde_json::to_string_pretty(&e.details).unwrap_or_default(),
        hash: e.hash.clone(),
        prev_hash: e.prev_hash.clone(),
    }))
}
