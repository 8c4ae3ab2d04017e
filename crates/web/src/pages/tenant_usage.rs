//! The tenant page's "Usage and budget" card (for who may read the tenant's usage) and its
//! budget form (`POST /tenants/{id}/budget`, `POST /tenants/{id}/budget/delete`, for who
//! manages budgets).

use super::tenants::{full_page, tenant_id};
use super::{Errors, render};
use crate::auth::CurrentSession;
use crate::error::HtmlError;
use crate::state::AppState;
use axum::Form;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use quarterdeck_domain::access::{ManageBudgets, ReadTenants, ReadUsage};
use quarterdeck_domain::budget::{BudgetStatus, Standing};
use quarterdeck_domain::core::SignedIn;
use quarterdeck_domain::pricing::{PriceBook, group};
use quarterdeck_domain::{Error, TenantId};
use serde::Deserialize;
use std::collections::BTreeMap;

/// One meter's total this month.
pub struct MeterTotalRow {
    pub name: String,
    pub quantity: String,
    pub unit: String,
}

/// The budget as the card shows it.
pub struct BudgetView {
    pub amount: String,
    pub threshold_percent: u8,
    pub hard_limit: bool,
    pub percent: i64,
    /// `within`, `threshold_reached`, `exceeded`.
    pub standing: &'static str,
    pub standing_label: &'static str,
    pub blocked: bool,
}

/// What the budget form holds: the saved budget, or what was sent back with errors.
#[derive(Deserialize, Default, Clone)]
pub struct BudgetForm {
    #[serde(default)]
    pub amount: String,
    #[serde(default)]
    pub threshold_percent: String,
    #[serde(default)]
    pub hard_limit: Option<String>,
}

/// The card.
pub struct UsageCard {
    pub month_label: String,
    pub cost: String,
    pub currency: String,
    pub meters: Vec<MeterTotalRow>,
    pub budget: Option<BudgetView>,
    /// Whether the budget form is shown.
    pub can_manage: bool,
    pub form: BudgetForm,
    pub errors: Errors,
}

/// Minor units as major units for the form's input (`1500.00`).
fn major(minor: i64, minor_units: i64) -> String {
    let places: usize = match minor_units {
        1 => 0,
        10 => 1,
        1000 => 3,
        _ => 2,
    };
    let unit = minor_units.unsigned_abs().max(1);
    let abs = minor.unsigned_abs();
    if places == 0 {
        (abs / unit).to_string()
    } else {
        format!("{}.{:0places$}", abs / unit, abs % unit)
    }
}

fn budget_view(b: &BudgetStatus, prices: &PriceBook) -> BudgetView {
    BudgetView {
        amount: prices.format(b.budget.amount),
        threshold_percent: b.budget.threshold_percent,
        hard_limit: b.budget.hard_limit,
        percent: b.percent(),
        standing: b.standing.as_str(),
        standing_label: match b.standing {
            Standing::Within => "Within budget",
            Standing::ThresholdReached => "Alert threshold reached",
            Standing::Exceeded => "Budget exceeded",
        },
        blocked: b.blocked,
    }
}

/// The card for this tenant, or `None` for who may not read its usage (or a tenant that is
/// gone).
pub async fn usage_card(state: &AppState, s: &SignedIn, tenant: TenantId) -> Result<Option<UsageCard>, Error> {
    let Ok(proof) = s.principal.require_for_tenant::<ReadUsage>(tenant) else {
        return Ok(None);
    };
    let report = match state.core.cost_report(&proof, 1).await {
        Ok(r) => r,
        Err(Error::NotFound) => return Ok(None),
        Err(e) => return Err(e),
    };
    let prices = &state.core.config.pricing;
    let meters_cfg = &state.core.config.meters;
    let (month_label, cost, lines) = match report.months.first() {
        Some(m) => (m.month.label(), m.total, m.lines.as_slice()),
        None => (String::new(), 0, &[][..]),
    };
    let mut per_meter: BTreeMap<&str, i64> = BTreeMap::new();
    for l in lines {
        let agg = meters_cfg.get(&l.meter).map(|m| m.aggregation);
        let q = per_meter.entry(l.meter.as_str()).or_insert(0);
        *q = agg.map_or(*q + l.quantity, |a| a.fold(*q, l.quantity));
    }
    let meters = meters_cfg
        .meters()
        .iter()
        .map(|m| MeterTotalRow {
            name: m.name.clone(),
            quantity: group(
                per_meter
                    .get(m.event_type.as_str())
                    .copied()
                    .unwrap_or(0)
                    .unsigned_abs(),
            ),
            unit: m.unit.clone().unwrap_or_default(),
        })
        .collect();
    let form = report
        .budget
        .as_ref()
        .map(|b| BudgetForm {
            amount: major(b.budget.amount, prices.minor_units()),
            threshold_percent: b.budget.threshold_percent.to_string(),
            hard_limit: b.budget.hard_limit.then(|| "on".to_owned()),
        })
        .unwrap_or_else(|| BudgetForm {
            threshold_percent: quarterdeck_domain::budget::DEFAULT_THRESHOLD_PERCENT.to_string(),
            ..BudgetForm::default()
        });
    Ok(Some(UsageCard {
        month_label,
        cost: prices.format(cost),
        currency: report.currency.clone(),
        meters,
        budget: report.budget.as_ref().map(|b| budget_view(b, prices)),
        can_manage: s.principal.require::<ManageBudgets>().is_ok(),
        form,
        errors: Errors::default(),
    }))
}

pub async fn set_budget(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    Path(id): Path<String>,
    Form(f): Form<BudgetForm>,
) -> Result<Response, HtmlError> {
    let auth = s.principal.require::<ManageBudgets>()?;
    let id = tenant_id(&id)?;
    let req = quarterdeck_domain::budget::BudgetRequest {
        amount: f.amount.clone(),
        threshold_percent: f.threshold_percent.clone(),
        hard_limit: f.hard_limit.is_some(),
    };
    match state.core.set_budget(&auth, id, &req).await {
        Ok(_) => Ok(Redirect::to(&format!("/tenants/{id}?saved=budget#usage")).into_response()),
        Err(Error::Validation(fields)) => {
            let read = s.principal.require::<ReadTenants>()?;
            let current = state.core.tenant(&read, id).await?;
            let mut page = full_page(&state, &s, &current).await?;
            if let Some(card) = page.usage.as_mut() {
                card.form = f;
                card.errors = Errors::from_fields(&fields);
            }
            Ok((StatusCode::UNPROCESSABLE_ENTITY, render(&page)).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn remove_budget(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    Path(id): Path<String>,
) -> Result<Response, HtmlError> {
    let auth = s.principal.require::<ManageBudgets>()?;
    let id = tenant_id(&id)?;
    state.core.remove_budget(&auth, id).await?;
    Ok(Redirect::to(&format!("/tenants/{id}?saved=budget_removed#usage")).into_response())
}
