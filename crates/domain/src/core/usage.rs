//! Usage ingestion and the sweep: `POST /v1/data-plane/usage` takes a batch into its region's
//! journal in one transaction and answers; the sweep moves journal entries into each tenant's
//! database in bulk (one transaction per tenant per sweep), refreshes the control database's
//! monthly summary from the tenant's rollups, and checks budgets.
//!
//! Exactly once: a tenant's raw events are keyed by (source, id), and only an insert that
//! wins is rolled up. A sweep that dies after a tenant's commit leaves its journal entries in
//! place; the next sweep finds them already there and counts nothing twice. The summary is
//! replaced from the rollups, never added to.

use super::Core;
use super::data_plane::ServiceCaller;
use crate::budget::{Budget, Crossing, Standing};
use crate::error::{Error, Result};
use crate::ids::TenantId;
use crate::service_token::ServiceScope;
use crate::store::ChangeKind;
use crate::usage::{
    Envelope, IngestLimits, JournalEntry, MeterTotal, Month, ParsedEvent, RejectReason, Rejected, UsageSubject,
    parse_events,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

/// How usage is taken in and kept.
#[derive(Clone, Debug)]
pub struct UsagePolicy {
    /// Raw events are dropped this long after their time (rollups stay).
    pub raw_retention: Duration,
    pub limits: IngestLimits,
    /// Events per second one service token may send (to one node); twice that in a burst.
    pub events_per_second: u32,
}

impl Default for UsagePolicy {
    fn default() -> Self {
        Self {
            raw_retention: Duration::days(35),
            limits: IngestLimits::default(),
            events_per_second: 200_000,
        }
    }
}

/// What `POST /v1/data-plane/usage` answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestReport {
    /// Events taken (durably) or already taken before: counted once either way.
    pub accepted: usize,
    pub rejected: Vec<Rejected>,
}

/// What one sweep of a region did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Journal entries read.
    pub taken: usize,
    /// Events new to their tenant's database.
    pub inserted: u64,
    pub tenants: usize,
    /// Whether the journal was read to its end.
    pub drained: bool,
    /// Another node holds the region's sweep.
    pub not_ours: bool,
}

/// Journal entries one sweep reads at most.
const SWEEP_TAKE: u32 = 50_000;
/// Tenants swept at once (each holds one tenant connection).
const SWEEP_PARALLEL: usize = 4;
/// How long a sweep lease lasts without renewal.
const SWEEP_LEASE: Duration = Duration::seconds(30);
/// How long a subject lookup is kept (the change feed drops it sooner).
const SUBJECT_TTL: Duration = Duration::seconds(10);
const MAX_SUBJECTS: usize = 200_000;

/// Ingestion's per-node state: subject lookups, each token's event budget, the crossings
/// already recorded, and this node's sweep identity.
#[derive(Debug)]
pub struct UsageState {
    subjects: Mutex<HashMap<Uuid, (Option<UsageSubject>, OffsetDateTime)>>,
    buckets: Mutex<HashMap<Uuid, Bucket>>,
    crossings: Mutex<HashSet<(TenantId, Month, &'static str)>>,
    pub(crate) node: Uuid,
}

impl Default for UsageState {
    fn default() -> Self {
        Self {
            subjects: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
            crossings: Mutex::new(HashSet::new()),
            node: Uuid::new_v4(),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Events available, in thousandths.
    milli: i128,
    at: OffsetDateTime,
}

impl UsageState {
    /// A change from the feed (or made here): forget what it touches.
    pub fn forget(&self, kind: ChangeKind, subject: Uuid) {
        let mut s = self.subjects.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match kind {
            ChangeKind::Tenant => {
                s.retain(|id, (v, _)| *id != subject && v.as_ref().is_none_or(|v| v.tenant_id.0 != subject))
            }
            ChangeKind::ApiKey => {
                s.remove(&subject);
            }
            ChangeKind::ServiceToken => {}
        }
    }

    /// Take `n` events from the token's bucket, or say when to come back.
    fn take(&self, token: Uuid, n: usize, rate: u32, now: OffsetDateTime) -> Result<()> {
        let rate = i128::from(rate.max(1));
        let cap = rate * 2 * 1000;
        let need = i128::try_from(n).unwrap_or(i128::MAX).saturating_mul(1000);
        let mut b = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if b.len() > 100_000 {
            b.clear();
        }
        let e = b.entry(token).or_insert(Bucket { milli: cap, at: now });
        let elapsed_ms = (now - e.at).whole_milliseconds().max(0);
        e.milli = (e.milli + elapsed_ms * rate).min(cap);
        e.at = now;
        if e.milli >= need {
            e.milli -= need;
            Ok(())
        } else {
            let missing = need - e.milli;
            let secs = (missing + rate * 1000 - 1) / (rate * 1000);
            Err(Error::RateLimited {
                retry_after_secs: u64::try_from(secs.max(1)).unwrap_or(60),
            })
        }
    }
}

impl Core {
    /// Take a batch of usage events: each is accepted (journaled durably before this
    /// returns, in one transaction per region the batch mentions) or rejected with its reason.
    pub async fn ingest_usage(
        &self,
        caller: &ServiceCaller,
        body: &[u8],
        content_type: Option<&str>,
    ) -> Result<IngestReport> {
        caller.require(ServiceScope::UsageWrite)?;
        let envelope = Envelope::from_content_type(content_type)?;
        let now = self.clock.now();
        let policy = &self.config.usage;
        let (parsed, mut rejected) = parse_events(body, envelope, &self.config.meters, &policy.limits, now)?;
        self.usage.take(
            caller.token.id,
            parsed.len() + rejected.len(),
            policy.events_per_second,
            now,
        )?;
        let subjects = self.usage_subjects(&parsed, now).await?;
        let mut by_region: BTreeMap<&str, Vec<JournalEntry>> = BTreeMap::new();
        let mut accepted = 0;
        for e in &parsed {
            let reject = |code: RejectReason, message: &str| Rejected {
                index: e.index,
                id: Some(e.id.clone()),
                code,
                message: message.to_owned(),
            };
            match subjects.get(&e.subject) {
                Some(s) if caller.token.region.as_deref().is_none_or(|r| r == s.region) => {
                    if s.suspended {
                        rejected.push(reject(
                            RejectReason::TenantSuspended,
                            "The subject's tenant is suspended.",
                        ));
                        continue;
                    }
                    accepted += 1;
                    by_region.entry(s.region.as_str()).or_default().push(entry(e, s, now));
                }
                _ => rejected.push(reject(
                    RejectReason::UnknownSubject,
                    "`subject` is neither a tenant API key's id nor a tenant's id.",
                )),
            }
        }
        for (region, entries) in &by_region {
            self.store.journal_append(region, entries).await.map_err(|e| match e {
                Error::Internal(detail) => {
                    tracing::warn!(error = %detail, region, "the usage journal could not be written; answering busy");
                    Error::Busy
                }
                other => other,
            })?;
        }
        rejected.sort_by_key(|r| r.index);
        Ok(IngestReport { accepted, rejected })
    }

    /// What each subject of a batch stands for: from this node's cache, the rest in one query.
    async fn usage_subjects(&self, parsed: &[ParsedEvent], now: OffsetDateTime) -> Result<HashMap<Uuid, UsageSubject>> {
        let wanted: HashSet<Uuid> = parsed.iter().map(|e| e.subject).collect();
        let mut found = HashMap::with_capacity(wanted.len());
        let mut missing = Vec::new();
        {
            let cache = self
                .usage
                .subjects
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for id in &wanted {
                match cache.get(id) {
                    Some((v, at)) if now - *at < SUBJECT_TTL => {
                        if let Some(v) = v {
                            found.insert(*id, v.clone());
                        }
                    }
                    _ => missing.push(*id),
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let looked_up = self.store.usage_subjects(&missing).await.map_err(|e| match e {
            Error::Internal(detail) => {
                tracing::warn!(error = %detail, "usage subjects could not be read; answering busy");
                Error::Busy
            }
            other => other,
        })?;
        let mut cache = self
            .usage
            .subjects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() + missing.len() > MAX_SUBJECTS {
            cache.clear();
        }
        let looked_up: HashMap<Uuid, UsageSubject> = looked_up.into_iter().collect();
        for id in missing {
            let v = looked_up.get(&id).cloned();
            if let Some(v) = &v {
                found.insert(id, v.clone());
            }
            cache.insert(id, (v, now));
        }
        Ok(found)
    }

    /// The regions whose journals this node may sweep (all configured regions).
    pub fn usage_regions(&self) -> Vec<String> {
        self.config.regions.clone()
    }

    /// Move a region's journal into its tenants' databases: one transaction per tenant, the
    /// monthly summary replaced for what changed, budgets checked, the journal entries
    /// deleted. Only the holder of the region's lease sweeps (several nodes may try).
    pub async fn sweep_usage(&self, region: &str) -> Result<SweepReport> {
        let started = self.clock.now();
        if !self
            .store
            .claim_sweep(region, self.usage.node, started, started + SWEEP_LEASE)
            .await?
        {
            return Ok(SweepReport {
                not_ours: true,
                ..SweepReport::default()
            });
        }
        let batch = self.store.journal_take(region, SWEEP_TAKE).await?;
        let taken = batch.len();
        if batch.is_empty() {
            self.store.set_swept_through(region, self.usage.node, started).await?;
            return Ok(SweepReport {
                drained: true,
                ..SweepReport::default()
            });
        }
        let mut by_tenant: BTreeMap<TenantId, (Vec<i64>, Vec<JournalEntry>)> = BTreeMap::new();
        for (seq, e) in batch {
            let slot = by_tenant.entry(e.tenant_id).or_default();
            slot.0.push(seq);
            slot.1.push(e);
        }
        let ids: Vec<Uuid> = by_tenant.keys().map(|t| t.0).collect();
        let live: HashMap<Uuid, UsageSubject> = self.store.usage_subjects(&ids).await?.into_iter().collect();
        let mut done_seqs: Vec<i64> = Vec::with_capacity(taken);
        let mut work: Vec<(TenantId, Vec<i64>, Vec<JournalEntry>)> = Vec::new();
        for (t, (seqs, entries)) in by_tenant {
            if live.contains_key(&t.0) {
                work.push((t, seqs, entries));
            } else {
                tracing::warn!(tenant = %t.0, events = entries.len(), "usage for a deleted tenant dropped");
                done_seqs.extend(seqs);
            }
        }
        let tenants = work.len();
        let queue = Mutex::new(work);
        let results = Mutex::new(Vec::new());
        let worker = || async {
            loop {
                let next = queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop();
                let Some((t, seqs, entries)) = next else { break };
                let outcome = self.store.apply_usage(t, &entries, &self.config.meters).await;
                results
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push((t, seqs, outcome));
            }
        };
        tokio::join!(worker(), worker(), worker(), worker());
        debug_assert_eq!(SWEEP_PARALLEL, 4);
        let mut inserted = 0;
        let mut failed = false;
        let mut months = Vec::new();
        for (t, seqs, outcome) in results.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner) {
            match outcome {
                Ok(applied) => {
                    inserted += applied.inserted;
                    done_seqs.extend(seqs);
                    for (m, totals) in applied.months {
                        months.push((m, t, totals));
                    }
                }
                Err(e) => {
                    failed = true;
                    tracing::warn!(tenant = %t.0, error = %e, "usage could not be applied to the tenant's database; kept for the next sweep");
                }
            }
        }
        self.store.put_usage_months(&months).await?;
        if let Err(e) = self.check_budgets(&months, &live).await {
            tracing::warn!(error = %e, "budgets could not be checked; the next sweep tries again");
        }
        self.store.journal_delete(region, &done_seqs).await?;
        let drained = taken < SWEEP_TAKE as usize && !failed;
        if drained {
            self.store.set_swept_through(region, self.usage.node, started).await?;
        }
        Ok(SweepReport {
            taken,
            inserted,
            tenants,
            drained,
            not_ours: false,
        })
    }

    /// Every region's sweep until each is drained or another node holds it (the server
    /// calls this every ~250 ms).
    pub async fn sweep_all_usage(&self) -> Result<u64> {
        let mut inserted = 0;
        for region in self.usage_regions() {
            loop {
                let r = self.sweep_usage(&region).await?;
                inserted += r.inserted;
                if r.drained || r.not_ours || r.taken == 0 {
                    break;
                }
            }
        }
        Ok(inserted)
    }

    /// Drop raw events past the retention window in every tenant (hourly housekeeping).
    pub async fn prune_usage(&self) -> Result<u64> {
        let before = self.clock.now() - self.config.usage.raw_retention;
        let mut dropped = 0;
        for t in self.store.tenant_ids().await? {
            match self.store.prune_usage_events(t, before).await {
                Ok(n) => dropped += n,
                Err(e) => tracing::warn!(tenant = %t.0, error = %e, "old usage events could not be dropped"),
            }
        }
        Ok(dropped)
    }

    /// The cost of a month's totals for a tenant of `tier`, in minor units.
    pub(crate) fn cost_of(&self, totals: &[MeterTotal], tier: crate::tenant::PriorityTier) -> i64 {
        totals
            .iter()
            .map(|t| self.config.pricing.cost(&t.meter, &t.dims, tier, t.value).0)
            .fold(0_i64, i64::saturating_add)
    }

    /// After a sweep: for each tenant with a budget whose current month moved, record the
    /// threshold and the excess once (emails to its admins, the block for a hard limit).
    async fn check_budgets(
        &self,
        months: &[(Month, TenantId, Vec<MeterTotal>)],
        live: &HashMap<Uuid, UsageSubject>,
    ) -> Result<()> {
        let current = Month::of(self.clock.now());
        let touched: Vec<_> = months.iter().filter(|(m, _, _)| *m == current).collect();
        if touched.is_empty() {
            return Ok(());
        }
        let budgets: HashMap<TenantId, Budget> = self
            .store
            .budgets()
            .await?
            .into_iter()
            .map(|b| (b.tenant_id, b))
            .collect();
        for (m, t, totals) in touched {
            let (Some(budget), Some(subject)) = (budgets.get(t), live.get(&t.0)) else {
                continue;
            };
            let spent = self.cost_of(totals, subject.tier);
            self.record_standing(budget, *m, spent).await?;
        }
        Ok(())
    }

    /// Record the crossings `spent` makes against `budget` this month, once each.
    pub(crate) async fn record_standing(&self, budget: &Budget, month: Month, spent: i64) -> Result<()> {
        let standing = budget.standing(spent);
        let mut crossings = Vec::new();
        if standing >= Standing::ThresholdReached {
            crossings.push(Crossing::Threshold);
        }
        if standing == Standing::Exceeded {
            crossings.push(Crossing::Exceeded);
        }
        for c in crossings {
            let key = (budget.tenant_id, month, c.as_str());
            if self
                .usage
                .crossings
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(&key)
            {
                continue;
            }
            self.record_crossing(budget, month, spent, c).await?;
            self.usage
                .crossings
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(key);
        }
        Ok(())
    }

    /// Forget the crossings recorded in memory for a tenant (its budget changed).
    pub(crate) fn forget_crossings(&self, tenant: TenantId) {
        self.usage
            .crossings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|(t, _, _)| *t != tenant);
    }

    async fn record_crossing(&self, budget: &Budget, month: Month, spent: i64, c: Crossing) -> Result<()> {
        let Some(tenant) = self.store.tenant(budget.tenant_id).await? else {
            return Ok(());
        };
        let book = &self.config.pricing;
        let (event_type, block_until) = match c {
            Crossing::Threshold => (crate::audit::EventType::BudgetThresholdReached, None),
            Crossing::Exceeded => (
                crate::audit::EventType::BudgetExceeded,
                budget.hard_limit.then(|| month.end()),
            ),
        };
        let event = self.new_event(
            event_type,
            &crate::access::Actor::system(),
            Some(budget.tenant_id),
            serde_json::json!({
                "month": month.to_string(),
                "amount": budget.amount,
                "spent": spent,
                "currency": book.currency(),
                "threshold_percent": budget.threshold_percent,
                "hard_limit": budget.hard_limit,
            }),
        );
        let link = format!("{}/portal/cost", self.config.links.origin(Some(tenant.slug.as_str())));
        let (subject, what) = match c {
            Crossing::Threshold => (
                format!(
                    "{} has used {}% of its monthly budget",
                    tenant.name.as_str(),
                    budget.threshold_percent
                ),
                format!(
                    "{} has spent {} of its {} budget for {}.",
                    tenant.name.as_str(),
                    book.format(spent),
                    book.format(budget.amount),
                    month.label()
                ),
            ),
            Crossing::Exceeded => (
                format!("{} has reached its monthly budget", tenant.name.as_str()),
                if budget.hard_limit {
                    format!(
                        "{} has spent {} of its {} budget for {}. Its API keys are stopped until the month ends or the budget is raised.",
                        tenant.name.as_str(),
                        book.format(spent),
                        book.format(budget.amount),
                        month.label()
                    )
                } else {
                    format!(
                        "{} has spent {} of its {} budget for {}.",
                        tenant.name.as_str(),
                        book.format(spent),
                        book.format(budget.amount),
                        month.label()
                    )
                },
            ),
        };
        let emails: Vec<crate::mail::Email> = self
            .tenant_admin_emails(budget.tenant_id)
            .await?
            .into_iter()
            .map(|to| {
                let text = format!("{what}\n\nSee usage and cost: {link}\n");
                crate::mail::Email {
                    to,
                    subject: subject.clone(),
                    html: text.clone(),
                    text,
                }
            })
            .collect();
        let recorded = self
            .store
            .record_budget_crossing(budget.tenant_id, &month.to_string(), c, block_until, &emails, event)
            .await?;
        if recorded && block_until.is_some() {
            self.verifier.forget(ChangeKind::Tenant, budget.tenant_id.0);
        }
        Ok(())
    }

    /// The addresses of a tenant's active users who hold its configuration (its admins).
    async fn tenant_admin_emails(&self, tenant: TenantId) -> Result<Vec<String>> {
        let users = self.store.list_users(crate::user::Directory::Tenant(tenant)).await?;
        Ok(users
            .into_iter()
            .filter(|u| u.status == crate::user::UserStatus::Active)
            .filter(|u| {
                self.config
                    .catalog
                    .capabilities_of(&u.roles)
                    .contains(&crate::role::Capability::TenantConfig)
            })
            .map(|u| u.email.as_str().to_owned())
            .collect())
    }
}

fn entry(e: &ParsedEvent, s: &UsageSubject, now: OffsetDateTime) -> JournalEntry {
    JournalEntry {
        tenant_id: s.tenant_id,
        api_key_id: s.api_key_id,
        source: e.source.clone(),
        event_id: e.id.clone(),
        meter: e.meter.clone(),
        time: e.time,
        value: e.value,
        dims: e.dims.clone(),
        received_at: now,
    }
}
