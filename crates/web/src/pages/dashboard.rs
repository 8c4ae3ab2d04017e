//! `/`: tenant counts by status and the latest events.

use super::audit::EventRow;
use super::{Chrome, render};
use crate::auth::{MaybeSession, Site};
use crate::error::HtmlError;
use crate::state::AppState;
use askama::Template;
use axum::extract::State;
use axum::response::Response;
use axum::response::{IntoResponse, Redirect};
use quarterdeck_domain::access::{ReadAudit, ReadTenants};
use quarterdeck_domain::audit::AuditFilter;
use quarterdeck_domain::core::SignedIn;
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

/// `/`: the platform dashboard on the base host; the portal on a tenant's host.
pub async fn home(
    State(state): State<AppState>,
    site: Site,
    MaybeSession(s): MaybeSession,
) -> Result<Response, HtmlError> {
    match (site, s) {
        (Site::Tenant(_), _) => Ok(Redirect::to("/portal").into_response()),
        (Site::Base, None) => Ok(Redirect::to("/login").into_response()),
        (Site::Base, Some(s)) => show(&state, &s).await,
    }
}

async fn show(state: &AppState, s: &SignedIn) -> Result<Response, HtmlError> {
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
        chrome: Chrome::console(s, "dashboard"),
        counts,
        events,
        can_manage: s.principal.can(&Capability::TenantsManage),
    }))
}
