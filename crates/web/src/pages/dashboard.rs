//! `/`: tenant counts by status and the latest events.

use super::audit::EventRow;
use super::{Chrome, render};
use crate::auth::CurrentSession;
use crate::error::HtmlError;
use crate::state::AppState;
use askama::Template;
use axum::extract::State;
use axum::response::Response;
use quarterdeck_domain::access::{ReadAudit, ReadTenants};
use quarterdeck_domain::audit::AuditFilter;
use quarterdeck_domain::role::Capability;
use quarterdeck_domain::tenant::StatusCounts;

#[derive(Template)]
#[template(path = "dashboard.html")]
pub struct DashboardPage {
    pub chrome: Chrome,
    pub counts: StatusCounts,
    pub events: Option<Vec<EventRow>>,
    pub can_manage: bool,
}

pub async fn show(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
) -> Result<Response, HtmlError> {
    let read = s.principal.require::<ReadTenants>()?;
    let counts = state.core.tenant_counts(&read).await?;
    let events = match s.principal.require::<ReadAudit>() {
        Ok(audit) => {
            let filter = AuditFilter {
                limit: 8,
                ..Default::default()
            };
            let events = state.core.list_events(&audit, &filter).await?;
            Some(events.iter().map(EventRow::from).collect())
        }
        Err(_) => None,
    };
    Ok(render(&DashboardPage {
        chrome: Chrome::console(&s, "dashboard"),
        counts,
        events,
        can_manage: s.principal.can(&Capability::TenantsManage),
    }))
}
