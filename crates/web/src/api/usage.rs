//! `/v1/admin/tenants/{id}/usage`, `/cost` and `/budget`: a tenant's metered usage, what it
//! costs, and its monthly budget. The same domain operations as the portal and the console, so
//! the figures agree to the minor unit, and setting or removing a budget is audited
//! (`BUDGET_SET`, `BUDGET_REMOVED`) with the token's owner as the actor.
//!
//! Who may: reading, a tenant user's token in its own tenant with `tenant:config` (admins), or a
//! platform user's token with `billing:read` (owner, billing-admin); budgets are set and removed
//! by platform users with `billing:manage`. Another tenant's figures are 404. Money is integer
//! minor units of `currency` (`minor_units` per major unit), never a float.

use super::schema::ErrorBody;
use super::{Body, Caller, Query};
use crate::error::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use quarterdeck_domain::access::{ManageBudgets, ReadUsage};
use quarterdeck_domain::budget::{BudgetRequest, BudgetStatus, Standing};
use quarterdeck_domain::core::{CostReport, Freshness, Share, UsageReport};
use quarterdeck_domain::usage::dims_of;
use quarterdeck_domain::{Error, TenantId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::macros::format_description;
use time::{Date, Duration, OffsetDateTime};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// How current the figures are.
#[derive(Serialize, ToSchema)]
pub struct FreshnessOut {
    /// Every event received before this instant is counted; `null` when nothing was swept yet.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime, required = true)]
    pub through: Option<OffsetDateTime>,
    /// Seconds between `through` and now; `null` when nothing was swept yet.
    #[schema(required = true, minimum = 0)]
    pub lag_seconds: Option<i64>,
}

impl From<&Freshness> for FreshnessOut {
    fn from(f: &Freshness) -> Self {
        Self {
            through: f.through,
            lag_seconds: f.lag_seconds(),
        }
    }
}

/// One day of one meter.
#[derive(Serialize, ToSchema)]
pub struct UsageDay {
    /// `YYYY-MM-DD` (UTC).
    #[schema(format = Date)]
    pub date: String,
    pub value: i64,
    pub events: i64,
}

/// The usage of one combination of dimension values.
#[derive(Serialize, ToSchema)]
pub struct DimensionShare {
    /// The dimension values (empty when the events had none).
    pub dimensions: BTreeMap<String, String>,
    pub value: i64,
    pub events: i64,
}

/// The usage of one API key (or of the tenant itself).
#[derive(Serialize, ToSchema)]
pub struct KeyShare {
    /// `null`: events sent for the tenant itself.
    #[schema(required = true)]
    pub api_key_id: Option<Uuid>,
    /// The key's name (or a note for a deleted key or the tenant itself).
    pub name: String,
    pub value: i64,
    pub events: i64,
}

/// One meter over the span.
#[derive(Serialize, ToSchema)]
pub struct MeterUsageOut {
    /// The meter's id (its CloudEvents `type`), e.g. `llm.tokens`.
    pub meter: String,
    pub name: String,
    /// The unit of its quantities (`null` when none is configured).
    #[schema(required = true)]
    pub unit: Option<String>,
    /// `sum`, `count` or `max`.
    pub aggregation: String,
    pub total: i64,
    pub events: i64,
    /// Every day of the span, zero when nothing was used.
    pub days: Vec<UsageDay>,
    /// Largest first.
    pub by_dimension: Vec<DimensionShare>,
    /// Largest first.
    pub by_key: Vec<KeyShare>,
}

/// A tenant's usage over a span of whole UTC days.
#[derive(Serialize, ToSchema)]
pub struct UsageOut {
    pub tenant_id: Uuid,
    #[schema(format = Date)]
    pub from: String,
    /// Inclusive.
    #[schema(format = Date)]
    pub to: String,
    /// One per configured meter.
    pub meters: Vec<MeterUsageOut>,
    pub freshness: FreshnessOut,
}

/// One priced line of a month: a meter and a combination of dimension values.
#[derive(Serialize, ToSchema)]
pub struct CostLineOut {
    pub meter: String,
    pub dimensions: BTreeMap<String, String>,
    pub quantity: i64,
    /// Minor units per `per` units of quantity; `null` when no price applies (cost 0).
    #[schema(required = true)]
    pub unit_price: Option<i64>,
    #[schema(required = true, minimum = 1)]
    pub per: Option<i64>,
    /// Minor units.
    pub cost: i64,
}

/// A month's cost.
#[derive(Serialize, ToSchema)]
pub struct MonthCostOut {
    /// `YYYY-MM`.
    pub month: String,
    /// Minor units.
    pub total: i64,
    /// Largest cost first.
    pub lines: Vec<CostLineOut>,
}

/// Where the month stands against the budget.
#[derive(Serialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum BudgetStanding {
    Within,
    ThresholdReached,
    Exceeded,
}

impl From<Standing> for BudgetStanding {
    fn from(s: Standing) -> Self {
        match s {
            Standing::Within => Self::Within,
            Standing::ThresholdReached => Self::ThresholdReached,
            Standing::Exceeded => Self::Exceeded,
        }
    }
}

/// A tenant's monthly budget and where this month stands.
#[derive(Serialize, ToSchema)]
pub struct BudgetOut {
    pub tenant_id: Uuid,
    pub currency: String,
    /// Per calendar month (UTC), in minor units.
    pub amount: i64,
    /// The alert threshold, in percent of `amount`.
    #[schema(minimum = 1, maximum = 100)]
    pub threshold_percent: u8,
    /// Whether reaching `amount` stops the tenant's API keys (`budget_exceeded`).
    pub hard_limit: bool,
    /// `YYYY-MM`, the month `spent` is for (the current one).
    pub month: String,
    /// This month to date, minor units.
    pub spent: i64,
    /// `spent` in percent of `amount` (may pass 100).
    pub percent_used: i64,
    pub standing: BudgetStanding,
    /// Whether the hard limit is stopping the tenant's keys now.
    pub blocked: bool,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

impl BudgetOut {
    fn of(b: &BudgetStatus, currency: &str) -> Self {
        Self {
            tenant_id: b.budget.tenant_id.0,
            currency: currency.to_owned(),
            amount: b.budget.amount,
            threshold_percent: b.budget.threshold_percent,
            hard_limit: b.budget.hard_limit,
            month: b.month.clone(),
            spent: b.spent,
            percent_used: b.percent(),
            standing: b.standing.into(),
            blocked: b.blocked,
            updated_at: b.budget.updated_at,
        }
    }
}

/// A tenant's cost: this month to date and the months before, newest first.
#[derive(Serialize, ToSchema)]
pub struct CostOut {
    pub tenant_id: Uuid,
    /// ISO 4217 code of every amount.
    pub currency: String,
    /// Minor units per major unit (100 for cents).
    pub minor_units: i64,
    /// Newest first; the first is the current month to date.
    pub months: Vec<MonthCostOut>,
    /// `null` when the tenant has no budget.
    #[schema(required = true)]
    pub budget: Option<BudgetOut>,
    pub freshness: FreshnessOut,
}

fn tenant(caller: &Caller, raw: &str) -> Result<TenantId, Error> {
    let t: TenantId = raw.parse().map_err(|_| Error::NotFound)?;
    caller.0.check_tenant(t)?;
    Ok(t)
}

/// The latest date a report may end on (its next midnight must exist).
const LAST_DATE: Date = time::macros::date!(9999 - 12 - 30);
const FIRST_DATE: Date = time::macros::date!(2000 - 01 - 01);

fn date(field: &str, raw: &str) -> Result<Date, Error> {
    let bad = || {
        Error::field(
            field,
            "invalid_date",
            "Use a date as YYYY-MM-DD, from 2000-01-01 to 9999-12-30.",
        )
    };
    let d = Date::parse(raw.trim(), format_description!("[year]-[month]-[day]")).map_err(|_| bad())?;
    if !(FIRST_DATE..=LAST_DATE).contains(&d) {
        return Err(bad());
    }
    Ok(d)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// First day (`YYYY-MM-DD`, UTC); default: 29 days before `to`.
    #[param(format = Date)]
    from: Option<String>,
    /// Last day, included (`YYYY-MM-DD`, UTC); default: today. At most 366 days in all.
    #[param(format = Date)]
    to: Option<String>,
}

/// The tenant's usage per meter over whole UTC days (default: the last 30), with daily values
/// and breakdowns by dimension values and by API key. A bad date is 422 `invalid_date` on its
/// field; `to` before `from`, or more than 366 days, is 422 `invalid_range` on `to`.
#[utoipa::path(get, path = "/v1/admin/tenants/{id}/usage", tag = "usage",
    params(("id" = Uuid, Path, description = "Tenant id"), UsageQuery),
    responses((status = 200, body = UsageOut), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn usage(
    State(state): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    Query(q): Query<UsageQuery>,
) -> Result<Json<UsageOut>, ApiError> {
    let tid = tenant(&caller, &raw)?;
    let auth = caller.0.principal.require_for_tenant::<ReadUsage>(tid)?;
    let today = state.core.clock.now().date();
    let to_parsed = q.to.as_deref().map(|t| date("to", t)).transpose();
    let from_parsed = q.from.as_deref().map(|f| date("from", f)).transpose();
    let (from, to) = match (from_parsed, to_parsed) {
        (Ok(f), Ok(t)) => {
            let to = t.unwrap_or(today);
            let from = f.unwrap_or_else(|| to.checked_sub(Duration::days(29)).unwrap_or(to));
            (from, to)
        }
        (Err(Error::Validation(mut a)), Err(Error::Validation(b))) => {
            a.extend(b);
            return Err(Error::Validation(a).into());
        }
        (Err(e), _) | (_, Err(e)) => return Err(e.into()),
    };
    let report = state.core.usage_report(&auth, from, to).await?;
    Ok(Json(usage_out(tid, &report)))
}

fn ymd(d: Date) -> String {
    d.format(format_description!("[year]-[month]-[day]"))
        .unwrap_or_default()
}

fn key_share(s: &Share) -> KeyShare {
    KeyShare {
        api_key_id: Uuid::parse_str(&s.key).ok(),
        name: s.label.clone(),
        value: s.value,
        events: s.events,
    }
}

fn usage_out(tid: TenantId, r: &UsageReport) -> UsageOut {
    UsageOut {
        tenant_id: tid.0,
        from: ymd(r.from),
        to: ymd(r.to),
        meters: r
            .meters
            .iter()
            .map(|m| MeterUsageOut {
                meter: m.meter.event_type.clone(),
                name: m.meter.name.clone(),
                unit: m.meter.unit.clone(),
                aggregation: m.meter.aggregation.as_str().to_owned(),
                total: m.total,
                events: m.events,
                days: m
                    .days
                    .iter()
                    .map(|d| UsageDay {
                        date: ymd(d.day),
                        value: d.value,
                        events: d.events,
                    })
                    .collect(),
                by_dimension: m
                    .by_dimension
                    .iter()
                    .map(|s| DimensionShare {
                        dimensions: dims_of(&s.key),
                        value: s.value,
                        events: s.events,
                    })
                    .collect(),
                by_key: m.by_key.iter().map(key_share).collect(),
            })
            .collect(),
        freshness: (&r.freshness).into(),
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CostQuery {
    /// How many months, the current one first: 1–24, default 1.
    #[param(minimum = 1, maximum = 24)]
    months: Option<u32>,
}

/// The tenant's cost this month to date and the months before (newest first), each line
/// priced with the current price book, and its budget. `months` outside 1–24 is 422
/// `invalid_months`.
#[utoipa::path(get, path = "/v1/admin/tenants/{id}/cost", tag = "usage",
    params(("id" = Uuid, Path, description = "Tenant id"), CostQuery),
    responses((status = 200, body = CostOut), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn cost(
    State(state): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    Query(q): Query<CostQuery>,
) -> Result<Json<CostOut>, ApiError> {
    let tid = tenant(&caller, &raw)?;
    let auth = caller.0.principal.require_for_tenant::<ReadUsage>(tid)?;
    let months = match q.months {
        None => 1,
        Some(n) if (1..=24).contains(&n) => n,
        Some(_) => {
            return Err(Error::field("months", "invalid_months", "Ask for 1 to 24 months.").into());
        }
    };
    let report = state.core.cost_report(&auth, months).await?;
    Ok(Json(cost_out(tid, &report, state.core.config.pricing.minor_units())))
}

fn cost_out(tid: TenantId, r: &CostReport, minor_units: i64) -> CostOut {
    CostOut {
        tenant_id: tid.0,
        currency: r.currency.clone(),
        minor_units,
        months: r
            .months
            .iter()
            .map(|m| MonthCostOut {
                month: m.month.to_string(),
                total: m.total,
                lines: m
                    .lines
                    .iter()
                    .map(|l| CostLineOut {
                        meter: l.meter.clone(),
                        dimensions: dims_of(&l.dims),
                        quantity: l.quantity,
                        unit_price: l.price.as_ref().map(|p| p.unit_price),
                        per: l.price.as_ref().map(|p| p.per),
                        cost: l.cost,
                    })
                    .collect(),
            })
            .collect(),
        budget: r.budget.as_ref().map(|b| BudgetOut::of(b, &r.currency)),
        freshness: (&r.freshness).into(),
    }
}

/// The tenant's budget and where this month stands; 404 when it has none.
#[utoipa::path(get, path = "/v1/admin/tenants/{id}/budget", tag = "usage",
    params(("id" = Uuid, Path, description = "Tenant id")),
    responses((status = 200, body = BudgetOut), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_budget(
    State(state): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Json<BudgetOut>, ApiError> {
    let tid = tenant(&caller, &raw)?;
    let auth = caller.0.principal.require_for_tenant::<ReadUsage>(tid)?;
    let status = state.core.budget_status(&auth).await?.ok_or(Error::NotFound)?;
    Ok(Json(BudgetOut::of(&status, state.core.config.pricing.currency())))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetBudget {
    /// Per calendar month, in major units as text (`"1500"`, `"1500.00"`), more than zero, with
    /// at most the currency's decimal places.
    #[schema(example = "1500.00")]
    amount: String,
    /// The alert threshold in percent of `amount`; omitted or `null`: 80.
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 100)]
    threshold_percent: Option<serde_json::Number>,
    /// Whether reaching `amount` stops the tenant's API keys for the rest of the month;
    /// omitted or `null`: false.
    hard_limit: Option<bool>,
}

/// A JSON number as the domain's parser reads it: a whole number as digits (`80.0` is 80),
/// anything else as written, for the parser to refuse with its field's name.
fn whole(n: &serde_json::Number) -> String {
    if let Some(i) = n.as_i64() {
        return i.to_string();
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{f:.0}"),
        _ => n.to_string(),
    }
}

/// Set (or replace) the tenant's budget (`BUDGET_SET`). This month's alerts start over
/// against the new amount and are checked at once. Bad values are 422 on `amount`
/// (`invalid_amount`) or `threshold_percent` (`invalid_threshold`).
#[utoipa::path(put, path = "/v1/admin/tenants/{id}/budget", tag = "usage", request_body = SetBudget,
    params(("id" = Uuid, Path, description = "Tenant id")),
    responses((status = 200, body = BudgetOut), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn put_budget(
    State(state): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    Body(b): Body<SetBudget>,
) -> Result<Json<BudgetOut>, ApiError> {
    let tid = tenant(&caller, &raw)?;
    let auth = caller.0.principal.require::<ManageBudgets>()?;
    let req = BudgetRequest {
        amount: b.amount,
        threshold_percent: b.threshold_percent.as_ref().map(whole).unwrap_or_default(),
        hard_limit: b.hard_limit.unwrap_or(false),
    };
    let status = state.core.set_budget(&auth, tid, &req).await?;
    Ok(Json(BudgetOut::of(&status, state.core.config.pricing.currency())))
}

/// Remove the tenant's budget (`BUDGET_REMOVED`): no more alerts, no limit. 404 when it has
/// none.
#[utoipa::path(delete, path = "/v1/admin/tenants/{id}/budget", tag = "usage",
    params(("id" = Uuid, Path, description = "Tenant id")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_budget(
    State(state): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    let tid = tenant(&caller, &raw)?;
    let auth = caller.0.principal.require::<ManageBudgets>()?;
    state.core.remove_budget(&auth, tid).await?;
    Ok(StatusCode::NO_CONTENT)
}
