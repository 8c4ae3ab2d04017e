//! Reading usage and cost (a tenant's, or every tenant's for a month) and setting budgets.
//!
//! A tenant's usage comes from its own database's hourly rollups; cost comes from the control
//! database's monthly summary (kept by the sweep), priced with the current price book at
//! read time, so the portal, the console and the API agree to the minor unit.

use super::Core;
use crate::access::{Authorized, InTenant, ManageBudgets, ReadUsage, ViewBilling};
use crate::budget::{Budget, BudgetRequest, BudgetStatus};
use crate::error::{Error, Result};
use crate::ids::TenantId;
use crate::pricing::AppliedPrice;
use crate::tenant::{PriorityTier, Tenant, TenantFilter};
use crate::usage::{Aggregation, Meter, MeterTotal, Month};
use std::collections::{BTreeMap, HashMap};
use time::{Date, Duration, OffsetDateTime};
use uuid::Uuid;

/// The longest span a usage report covers.
pub const MAX_REPORT_DAYS: i64 = 366;

/// How fresh usage figures are: every event received before `through` is counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Freshness {
    pub through: Option<OffsetDateTime>,
    pub now: OffsetDateTime,
}

impl Freshness {
    /// Seconds behind now (`None`: nothing swept yet).
    pub fn lag_seconds(&self) -> Option<i64> {
        self.through.map(|t| (self.now - t).whole_seconds().max(0))
    }
}

/// One day of one meter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DayValue {
    pub day: Date,
    pub value: i64,
    pub events: i64,
}

/// A breakdown line: a combination of dimension values, or an API key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Share {
    /// The dimension values as people read them, or the key's name.
    pub label: String,
    /// Canonical dimension key, or the key's id ("" for events sent for the tenant itself).
    pub key: String,
    pub value: i64,
    pub events: i64,
}

/// One meter over a report's days.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeterUsage {
    pub meter: Meter,
    /// Every day of the span, zero when nothing was used.
    pub days: Vec<DayValue>,
    pub total: i64,
    pub events: i64,
    pub by_dimension: Vec<Share>,
    pub by_key: Vec<Share>,
}

/// A tenant's usage over a span of days.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageReport {
    pub from: Date,
    /// Inclusive.
    pub to: Date,
    pub meters: Vec<MeterUsage>,
    pub freshness: Freshness,
}

/// One row of the usage CSV: a day, a meter, dimension values and a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRow {
    pub day: Date,
    pub meter: String,
    pub dims: String,
    pub api_key_id: Option<Uuid>,
    pub api_key_name: String,
    pub value: i64,
    pub events: i64,
}

/// One priced line of a month.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CostLine {
    pub meter: String,
    pub meter_name: String,
    pub dims: String,
    pub quantity: i64,
    pub price: Option<AppliedPrice>,
    pub cost: i64,
}

/// A month's cost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MonthCost {
    pub month: Month,
    pub total: i64,
    pub lines: Vec<CostLine>,
}

/// A tenant's cost: this month and the ones before, and the budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CostReport {
    pub currency: String,
    /// Newest first; the first is the current month (to date).
    pub months: Vec<MonthCost>,
    pub budget: Option<BudgetStatus>,
    pub freshness: Freshness,
}

/// One tenant in the Billing view.
#[derive(Clone, Debug)]
pub struct BillingRow {
    pub tenant: Tenant,
    pub cost: i64,
    pub events: i64,
    /// Per meter (type), the month's quantity.
    pub quantities: BTreeMap<String, i64>,
    pub budget: Option<Budget>,
}

/// Every tenant's usage and cost for a month.
#[derive(Clone, Debug)]
pub struct BillingOverview {
    pub month: Month,
    pub currency: String,
    pub rows: Vec<BillingRow>,
    pub total: i64,
}

/// Most tenants the Billing view lists.
const BILLING_TENANTS: u32 = 100_000;

impl Core {
    fn fold_of(&self, meter: &str) -> Aggregation {
        self.config
            .meters
            .get(meter)
            .map_or(Aggregation::Sum, |m| m.aggregation)
    }

    async fn freshness(&self, region: &str) -> Freshness {
        let through = self.store.swept_through(region).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the usage journal's freshness could not be read");
            None
        });
        Freshness {
            through,
            now: self.clock.now(),
        }
    }

    async fn live_tenant(&self, id: TenantId) -> Result<Tenant> {
        self.store.tenant(id).await?.ok_or(Error::NotFound)
    }

    /// A tenant's usage from `from` to `to` (whole UTC days, both included).
    pub async fn usage_report(&self, proof: &InTenant<ReadUsage>, from: Date, to: Date) -> Result<UsageReport> {
        let tenant = self.live_tenant(proof.tenant()).await?;
        check_span(from, to)?;
        let rollups = self
            .store
            .usage_rollups(
                tenant.id,
                from.midnight().assume_utc(),
                (to + Duration::days(1)).midnight().assume_utc(),
            )
            .await?;
        let names = self.key_names(tenant.id).await?;
        let mut meters = Vec::new();
        for m in self.config.meters.meters() {
            let agg = m.aggregation;
            let fold = |a: i64, b: i64| agg.fold(a, b);
            let mut days: BTreeMap<Date, (i64, i64)> = BTreeMap::new();
            let mut dims: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
            let mut keys: BTreeMap<String, (i64, i64)> = BTreeMap::new();
            let (mut total, mut events) = (0_i64, 0_i64);
            for r in rollups.iter().filter(|r| r.meter == m.event_type) {
                let d = days.entry(r.hour.date()).or_default();
                *d = (fold(d.0, r.value), d.1 + r.events);
                let x = dims.entry(r.dims.as_str()).or_default();
                *x = (fold(x.0, r.value), x.1 + r.events);
                let k = keys
                    .entry(r.api_key_id.map(|k| k.to_string()).unwrap_or_default())
                    .or_default();
                *k = (fold(k.0, r.value), k.1 + r.events);
                total = fold(total, r.value);
                events += r.events;
            }
            let mut day_values = Vec::new();
            let mut d = from;
            while d <= to {
                let (value, ev) = days.get(&d).copied().unwrap_or_default();
                day_values.push(DayValue {
                    day: d,
                    value,
                    events: ev,
                });
                d = d.next_day().unwrap_or(Date::MAX);
                if d == Date::MAX {
                    break;
                }
            }
            let mut by_dimension: Vec<Share> = dims
                .into_iter()
                .map(|(k, (value, events))| Share {
                    label: crate::usage::dims_label(k),
                    key: k.to_owned(),
                    value,
                    events,
                })
                .collect();
            by_dimension.sort_by(|a, b| b.value.cmp(&a.value).then(a.label.cmp(&b.label)));
            let mut by_key: Vec<Share> = keys
                .into_iter()
                .map(|(k, (value, events))| Share {
                    label: key_label(&names, &k),
                    key: k,
                    value,
                    events,
                })
                .collect();
            by_key.sort_by(|a, b| b.value.cmp(&a.value).then(a.label.cmp(&b.label)));
            meters.push(MeterUsage {
                meter: m.clone(),
                days: day_values,
                total,
                events,
                by_dimension,
                by_key,
            });
        }
        Ok(UsageReport {
            from,
            to,
            meters,
            freshness: self.freshness(tenant.region.as_str()).await,
        })
    }

    /// The rows of a usage CSV: per day, meter, dimension values and key.
    pub async fn usage_rows(&self, proof: &InTenant<ReadUsage>, from: Date, to: Date) -> Result<Vec<UsageRow>> {
        let tenant = self.live_tenant(proof.tenant()).await?;
        check_span(from, to)?;
        let rollups = self
            .store
            .usage_rollups(
                tenant.id,
                from.midnight().assume_utc(),
                (to + Duration::days(1)).midnight().assume_utc(),
            )
            .await?;
        let names = self.key_names(tenant.id).await?;
        let mut rows: BTreeMap<(Date, String, String, String), (i64, i64)> = BTreeMap::new();
        for r in rollups {
            let agg = self.fold_of(&r.meter);
            let k = (
                r.hour.date(),
                r.meter,
                r.dims,
                r.api_key_id.map(|k| k.to_string()).unwrap_or_default(),
            );
            let slot = rows.entry(k).or_default();
            *slot = (agg.fold(slot.0, r.value), slot.1 + r.events);
        }
        Ok(rows
            .into_iter()
            .map(|((day, meter, dims, key), (value, events))| UsageRow {
                day,
                meter,
                dims,
                api_key_id: Uuid::parse_str(&key).ok(),
                api_key_name: key_label(&names, &key),
                value,
                events,
            })
            .collect())
    }

    async fn key_names(&self, tenant: TenantId) -> Result<HashMap<String, String>> {
        Ok(self
            .store
            .api_keys_of(tenant)
            .await?
            .into_iter()
            .map(|k| (k.id.to_string(), k.name))
            .collect())
    }

    /// A tenant's cost this month (to date) and the `months - 1` before, newest first, with
    /// its budget.
    pub async fn cost_report(&self, proof: &InTenant<ReadUsage>, months: u32) -> Result<CostReport> {
        let tenant = self.live_tenant(proof.tenant()).await?;
        let now = self.clock.now();
        let mut m = Month::of(now);
        let mut out = Vec::new();
        for _ in 0..months.clamp(1, 24) {
            let totals = self.store.usage_month_of(m, tenant.id).await?;
            out.push(self.price_month(m, &totals, tenant.tier));
            m = m.previous();
        }
        let budget = self
            .budget_status_of(&tenant, out.first().map_or(0, |c| c.total))
            .await?;
        Ok(CostReport {
            currency: self.config.pricing.currency().to_owned(),
            months: out,
            budget,
            freshness: self.freshness(tenant.region.as_str()).await,
        })
    }

    fn price_month(&self, month: Month, totals: &[MeterTotal], tier: PriorityTier) -> MonthCost {
        let mut lines: Vec<CostLine> = totals
            .iter()
            .map(|t| {
                let (cost, price) = self.config.pricing.cost(&t.meter, &t.dims, tier, t.value);
                CostLine {
                    meter_name: self
                        .config
                        .meters
                        .get(&t.meter)
                        .map_or_else(|| t.meter.clone(), |m| m.name.clone()),
                    meter: t.meter.clone(),
                    dims: t.dims.clone(),
                    quantity: t.value,
                    price,
                    cost,
                }
            })
            .collect();
        lines.sort_by(|a, b| {
            b.cost
                .cmp(&a.cost)
                .then(a.meter.cmp(&b.meter))
                .then(a.dims.cmp(&b.dims))
        });
        MonthCost {
            month,
            // Lines added first, rounded once (see `PriceBook::cost_micros`).
            total: self.cost_of(totals, tier),
            lines,
        }
    }

    async fn budget_status_of(&self, tenant: &Tenant, spent: i64) -> Result<Option<BudgetStatus>> {
        let Some(budget) = self.store.budget(tenant.id).await? else {
            return Ok(None);
        };
        let now = self.clock.now();
        let blocked = self.store.budget_block(tenant.id).await?.is_some_and(|u| now < u);
        Ok(Some(BudgetStatus::new(budget, Month::of(now), spent, blocked)))
    }

    /// A tenant's budget and where this month stands (the tenant page, the API).
    pub async fn budget_status(&self, proof: &InTenant<ReadUsage>) -> Result<Option<BudgetStatus>> {
        let tenant = self.live_tenant(proof.tenant()).await?;
        let now = self.clock.now();
        let totals = self.store.usage_month_of(Month::of(now), tenant.id).await?;
        let spent = self.cost_of(&totals, tenant.tier);
        self.budget_status_of(&tenant, spent).await
    }

    /// Every tenant's usage and cost for a month (the console's Billing view), from the
    /// control database's summary: one query, whatever the number of tenants.
    pub async fn billing(&self, _proof: &Authorized<ViewBilling>, month: Month) -> Result<BillingOverview> {
        let (tenants, _) = self
            .store
            .list_tenants(&TenantFilter {
                search: None,
                status: None,
                limit: BILLING_TENANTS,
                offset: 0,
            })
            .await?;
        let mut totals: HashMap<TenantId, Vec<MeterTotal>> = HashMap::new();
        for (t, total) in self.store.usage_month(month).await? {
            totals.entry(t).or_default().push(total);
        }
        let budgets: HashMap<TenantId, Budget> = self
            .store
            .budgets()
            .await?
            .into_iter()
            .map(|b| (b.tenant_id, b))
            .collect();
        let mut rows = Vec::with_capacity(tenants.len());
        for tenant in tenants {
            let t = totals.remove(&tenant.id).unwrap_or_default();
            let mut quantities = BTreeMap::new();
            for x in &t {
                let agg = self.fold_of(&x.meter);
                let q = quantities.entry(x.meter.clone()).or_insert(0);
                *q = agg.fold(*q, x.value);
            }
            rows.push(BillingRow {
                cost: self.cost_of(&t, tenant.tier),
                events: t.iter().map(|x| x.events).sum(),
                quantities,
                budget: budgets.get(&tenant.id).cloned(),
                tenant,
            });
        }
        rows.sort_by(|a, b| {
            b.cost
                .cmp(&a.cost)
                .then(a.tenant.name.as_str().cmp(b.tenant.name.as_str()))
        });
        Ok(BillingOverview {
            month,
            currency: self.config.pricing.currency().to_owned(),
            total: rows.iter().map(|r| r.cost).fold(0, i64::saturating_add),
            rows,
        })
    }

    /// Set a tenant's budget (`BUDGET_SET`). This month's crossings start over against the
    /// new amount, and are checked at once: a budget set below what is already spent warns
    /// (and, with a hard limit, stops the keys) now, not at the next event.
    pub async fn set_budget(
        &self,
        proof: &Authorized<ManageBudgets>,
        tenant: TenantId,
        req: &BudgetRequest,
    ) -> Result<BudgetStatus> {
        let t = self.live_tenant(tenant).await?;
        let (amount, threshold_percent) = req.parse(self.config.pricing.minor_units())?;
        let now = self.clock.now();
        let month = Month::of(now);
        let budget = Budget {
            tenant_id: t.id,
            amount,
            threshold_percent,
            hard_limit: req.hard_limit,
            updated_by: proof.actor().user_id,
            updated_at: now,
        };
        let event = self.new_event(
            crate::audit::EventType::BudgetSet,
            proof.actor(),
            Some(t.id),
            serde_json::json!({
                "amount": amount,
                "currency": self.config.pricing.currency(),
                "threshold_percent": threshold_percent,
                "hard_limit": req.hard_limit,
            }),
        );
        self.store.put_budget(&budget, &month.to_string(), event).await?;
        self.verifier.forget(crate::store::ChangeKind::Tenant, t.id.0);
        self.forget_crossings(t.id);
        let totals = self.store.usage_month_of(month, t.id).await?;
        let spent = self.cost_of(&totals, t.tier);
        self.record_standing(&budget, month, spent).await?;
        let blocked = self.store.budget_block(t.id).await?.is_some_and(|u| now < u);
        Ok(BudgetStatus::new(budget, month, spent, blocked))
    }

    /// Remove a tenant's budget (`BUDGET_REMOVED`): no alerts, no limit.
    pub async fn remove_budget(&self, proof: &Authorized<ManageBudgets>, tenant: TenantId) -> Result<()> {
        let t = self.live_tenant(tenant).await?;
        let event = self.new_event(
            crate::audit::EventType::BudgetRemoved,
            proof.actor(),
            Some(t.id),
            serde_json::json!({}),
        );
        if !self.store.delete_budget(t.id, event).await? {
            return Err(Error::NotFound);
        }
        self.verifier.forget(crate::store::ChangeKind::Tenant, t.id.0);
        self.forget_crossings(t.id);
        Ok(())
    }
}

fn key_label(names: &HashMap<String, String>, key: &str) -> String {
    if key.is_empty() {
        return "(the tenant itself)".to_owned();
    }
    names
        .get(key)
        .cloned()
        .unwrap_or_else(|| format!("deleted key {}", &key[..8.min(key.len())]))
}

fn check_span(from: Date, to: Date) -> Result<()> {
    if to < from {
        return Err(Error::field(
            "to",
            "invalid_range",
            "The end date is before the start date.",
        ));
    }
    if (to - from).whole_days() >= MAX_REPORT_DAYS {
        return Err(Error::field(
            "to",
            "invalid_range",
            format!("Choose at most {MAX_REPORT_DAYS} days."),
        ));
    }
    Ok(())
}
