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
    Envelope, IngestLimits, JournalCursor, JournalEntry, JournalKey, MeterTotal, Month, ParsedEvent, RejectReason,
    Rejected, UsageSubject, parse_events,
};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

/// How usage is taken in and kept.
#[derive(Clone, Debug)]
pub struct UsagePolicy {
    /// Raw events are dropped this long after their time (rollups stay).
    pub raw_retention: Duration,
    pub limits: IngestLimits,
    /// Events per second one service token may send (over every node: see
    /// `Core::take_usage_budget`); twice that in a burst.
    pub events_per_second: u32,
    /// Backpressure: while a region's last complete sweep began longer ago than this (the
    /// usage pages would be staler), new batches for it are refused with 503 `usage_backlog`
    /// and `Retry-After`, so the journal never runs further ahead of the pages than the sweep
    /// can catch up with. `None`: never refused (the journal just grows).
    pub max_lag: Option<Duration>,
}

impl Default for UsagePolicy {
    fn default() -> Self {
        Self {
            raw_retention: Duration::days(35),
            limits: IngestLimits::default(),
            events_per_second: 200_000,
            max_lag: Some(Duration::seconds(4)),
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

/// Journal entries one sweep reads at most (~50 MB at most in memory). Large, because a
/// sweep's cost is mostly per tenant touched (on PostgreSQL a connection and an fsync each),
/// not per event: the more a sweep carries, the less it costs per event.
const SWEEP_TAKE: u32 = 200_000;
/// Most tenants swept at once (the store says how many: `sweep_parallelism`).
const SWEEP_PARALLEL_MAX: usize = 16;
/// How long a region's sweep lease lasts without renewal: a node that dies holding it holds
/// up the region's sweep this long at most. Its holder renews it at each sweep (every 250 ms)
/// and, while a sweep runs, every [`SWEEP_RENEW_EVERY`].
pub const SWEEP_LEASE: Duration = Duration::seconds(8);
/// How often a running sweep renews its lease (a fourth of it: three renewals may be slow or
/// fail before it lapses).
const SWEEP_RENEW_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
/// A sweep that finishes no step (the journal read, a tenant) for this long is abandoned and
/// its lease left to lapse: a connection hung mid-statement (a failover's black hole) must
/// not keep the lease renewed, and the region refused by backpressure, for ever.
const SWEEP_STALL: std::time::Duration = std::time::Duration::from_secs(60);
/// How long a subject lookup is kept (the change feed drops it sooner).
const SUBJECT_TTL: Duration = Duration::seconds(10);
/// How long a node trusts its last reading of a region's `swept_through` (backpressure costs
/// one small read per region this often, not one per batch).
const LAG_READ_EVERY: Duration = Duration::milliseconds(250);
/// Appends closer together than this are counted together (backpressure's bookkeeping).
const APPEND_BUCKET: Duration = Duration::milliseconds(100);
const APPEND_BUCKETS_KEPT: usize = 10_000;
/// The sweep's speed assumed before this node has measured one (events per second).
const DRAIN_RATE_UNMEASURED: f64 = 50_000.0;
/// The backlog a node lets grow: what the sweep moves in this share of `max_lag` (the rest
/// is for the pass under way and the read of `swept_through`).
const BACKLOG_SHARE_OF_LAG: f64 = 0.75;
const MAX_SUBJECTS: usize = 200_000;

/// Ingestion's per-node state: subject lookups, the crossings already recorded, and this
/// node's sweep identity (each token's event budget is every node's: `core/limits.rs`).
#[derive(Debug)]
pub struct UsageState {
    subjects: Mutex<HashMap<Uuid, (Option<UsageSubject>, OffsetDateTime)>>,
    /// Crossings recorded, by the budget version they were judged against (a changed budget
    /// starts afresh on every node without being told).
    crossings: Mutex<HashSet<(TenantId, Month, &'static str, OffsetDateTime)>>,
    /// Per region: where the next sweep reads from (0: the start).
    cursors: Mutex<HashMap<String, JournalCursor>>,
    /// Per region: when the pass now under way began (its first sweep read from the start).
    /// A pass is complete when a sweep reaches the journal's end, however many sweeps it
    /// took: everything received before it began is then swept (but kept-back tenants').
    pass_started: Mutex<HashMap<String, OffsetDateTime>>,
    /// Tenants whose database could not be written: failures so far, and not before when.
    resting: Mutex<HashMap<TenantId, (u32, OffsetDateTime)>>,
    /// Per region: the sweep's `swept_through` as last read (or set here), when this node
    /// first saw that value (by its own clock: the sweeping node's clock may be off from
    /// this one's), and when it was last read; backpressure reads it again once that is
    /// older than [`LAG_READ_EVERY`].
    swept: Mutex<HashMap<String, SweptSeen>>,
    /// Per region: events this node journaled, by when (in [`APPEND_BUCKET`]s), for as long
    /// as no complete sweep covers them.
    appended: Mutex<HashMap<String, VecDeque<(OffsetDateTime, u64)>>>,
    /// Per region: events per second this node's recent sweeps moved (a moving average).
    drain_rate: Mutex<HashMap<String, f64>>,
    pub(crate) node: Uuid,
}

impl Default for UsageState {
    fn default() -> Self {
        Self {
            subjects: Mutex::new(HashMap::new()),
            crossings: Mutex::new(HashSet::new()),
            cursors: Mutex::new(HashMap::new()),
            pass_started: Mutex::new(HashMap::new()),
            resting: Mutex::new(HashMap::new()),
            swept: Mutex::new(HashMap::new()),
            appended: Mutex::new(HashMap::new()),
            drain_rate: Mutex::new(HashMap::new()),
            node: Uuid::new_v4(),
        }
    }
}

/// A lock that a panic elsewhere does not poison for good.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A region's `swept_through` as one node knows it (see `UsageState::swept`).
#[derive(Clone, Copy, Debug)]
struct SweptSeen {
    through: OffsetDateTime,
    /// By this node's clock: when `through` was set (here) or first read.
    since: OffsetDateTime,
    read_at: OffsetDateTime,
}

impl UsageState {
    /// `through` set by this node's sweep (`skew: None`), or read from the store at `now`
    /// (written by whichever node sweeps, by its clock). A value read is taken as no older
    /// than `skew` before `now`, so a sweeping node whose clock is ahead of this one's makes
    /// this node refuse nothing (a pass longer than that is seen as shorter). An older value
    /// than the one known (a read that raced a newer sweep) changes nothing but the read time.
    fn saw_swept_through(&self, region: &str, through: OffsetDateTime, now: OffsetDateTime, skew: Option<Duration>) {
        let mut all = lock(&self.swept);
        match all.get_mut(region) {
            Some(k) if through <= k.through => k.read_at = k.read_at.max(now),
            _ => {
                let since = match skew {
                    None => through,
                    Some(skew) => through.clamp(now - skew, now),
                };
                all.insert(
                    region.to_owned(),
                    SweptSeen {
                        through,
                        since,
                        read_at: now,
                    },
                );
            }
        }
    }

    fn cursor(&self, region: &str) -> JournalCursor {
        lock(&self.cursors).get(region).copied().unwrap_or_default()
    }

    fn set_cursor(&self, region: &str, at: JournalCursor) {
        lock(&self.cursors).insert(region.to_owned(), at);
    }

    /// Whether the tenant is being left alone after failures.
    fn resting(&self, t: TenantId, now: OffsetDateTime) -> bool {
        lock(&self.resting).get(&t).is_some_and(|(_, until)| now < *until)
    }

    /// Count a failure and rest the tenant for 2^n seconds (at most 5 minutes).
    fn failed(&self, t: TenantId, now: OffsetDateTime) -> u32 {
        let mut r = lock(&self.resting);
        let e = r.entry(t).or_insert((0, now));
        e.0 = e.0.saturating_add(1);
        e.1 = now + Duration::seconds((1_i64 << e.0.min(9)).min(300));
        e.0
    }

    /// `n` events journaled for `region` at `at`.
    fn journaled(&self, region: &str, at: OffsetDateTime, n: u64) {
        let mut all = lock(&self.appended);
        let q = all.entry(region.to_owned()).or_default();
        match q.back_mut() {
            Some((t, count)) if at - *t < APPEND_BUCKET => *count += n,
            _ => {
                if q.len() >= APPEND_BUCKETS_KEPT {
                    q.pop_front();
                }
                q.push_back((at, n));
            }
        }
    }

    /// Events this node journaled for `region` since `through` (what no complete sweep
    /// covers yet); what is older is forgotten.
    fn journaled_since(&self, region: &str, through: OffsetDateTime) -> u64 {
        let mut all = lock(&self.appended);
        let Some(q) = all.get_mut(region) else { return 0 };
        while q.front().is_some_and(|(t, _)| *t + APPEND_BUCKET <= through) {
            q.pop_front();
        }
        q.iter().map(|(_, n)| n).sum()
    }

    /// A sweep of this node moved `events` in `seconds`.
    fn swept(&self, region: &str, events: usize, seconds: f64) {
        if events < 1_000 || seconds <= 0.0 {
            return;
        }
        let rate = events as f64 / seconds;
        let mut all = lock(&self.drain_rate);
        let r = all.entry(region.to_owned()).or_insert(rate);
        *r = (*r + rate) / 2.0;
    }

    fn recovered(&self, t: TenantId) {
        lock(&self.resting).remove(&t);
    }

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
        // The rate budget first: a flood costs no lookup (a batch later refused for backlog
        // has spent its share, as any refused request would).
        self.take_usage_budget(caller.token.id, parsed.len() + rejected.len(), policy.events_per_second)
            .await?;
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
        // Backpressure, for the regions the batch would write (a subject outside the token's
        // region is `unknown_subject` whatever that region's state), before anything is
        // journaled: a batch answered `usage_backlog` is sent again whole.
        for (region, entries) in &by_region {
            self.refuse_if_backlogged(region, now, entries.len() as u64)
                .await
                .inspect_err(|e| {
                    if matches!(e, Error::UsageBacklog) {
                        self.meters
                            .usage_backlog_refusal((parsed.len() + rejected.len()) as u64);
                    }
                })?;
        }
        for (region, entries) in &by_region {
            self.store.journal_append(region, entries).await.map_err(|e| match e {
                Error::Internal(detail) => {
                    tracing::warn!(error = %detail, region, "the usage journal could not be written; answering busy");
                    Error::Busy
                }
                other => other,
            })?;
            if policy.max_lag.is_some() {
                self.usage.journaled(region, now, entries.len() as u64);
            }
        }
        rejected.sort_by_key(|r| r.index);
        self.meters.usage_events(accepted as u64, rejected.len() as u64);
        Ok(IngestReport { accepted, rejected })
    }

    /// Backpressure: `Error::UsageBacklog` while the region's last complete pass began more
    /// than `max_lag` ago, or before it would: when what this node journaled since then, with
    /// the `incoming` events, is more than the sweep moves in [`BACKLOG_SHARE_OF_LAG`] of
    /// `max_lag` at the speed last measured here (a backlog refused only once it is late takes
    /// longer than `max_lag` to sweep). Every node reads the same `swept_through` (the
    /// sweeping node's), at most every [`LAG_READ_EVERY`], and judges it by its own clock
    /// (`UsageState::saw_swept_through`); each counts its own events. A region never swept
    /// yet is not refused.
    async fn refuse_if_backlogged(&self, region: &str, now: OffsetDateTime, incoming: u64) -> Result<()> {
        let Some(max_lag) = self.config.usage.max_lag else {
            return Ok(());
        };
        let known = lock(&self.usage.swept).get(region).copied();
        let seen = match known {
            Some(k) if now - k.read_at < LAG_READ_EVERY => Some(k),
            _ => {
                let through = self.store.swept_through(region).await.map_err(|e| match e {
                    Error::Internal(detail) => {
                        tracing::warn!(error = %detail, region, "the usage sweep's progress could not be read; answering busy");
                        Error::Busy
                    }
                    other => other,
                })?;
                if let Some(through) = through {
                    self.usage.saw_swept_through(region, through, now, Some(max_lag / 2));
                }
                lock(&self.usage.swept).get(region).copied()
            }
        };
        let Some(seen) = seen else { return Ok(()) };
        if now - seen.since > max_lag {
            return Err(Error::UsageBacklog);
        }
        let rate = lock(&self.usage.drain_rate)
            .get(region)
            .copied()
            .unwrap_or(DRAIN_RATE_UNMEASURED);
        let budget = rate * max_lag.as_seconds_f64() * BACKLOG_SHARE_OF_LAG;
        let pending = self.usage.journaled_since(region, seen.since);
        if pending > 0 && (pending + incoming) as f64 > budget {
            return Err(Error::UsageBacklog);
        }
        Ok(())
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
    /// monthly summary rewritten for what changed, budgets checked, the journal entries
    /// deleted. Only the holder of the region's lease sweeps (several nodes may try).
    ///
    /// A tenant whose database cannot be written keeps its entries and is left alone for a
    /// while (doubling up to 5 minutes); reads go on past its entries (a cursor that wraps
    /// when the journal's end is reached), so it never holds up the other tenants.
    ///
    /// The lease is renewed every [`SWEEP_RENEW_EVERY`] while the sweep runs, and only while
    /// this node still holds it (a renewal never takes it from another node). A sweep whose
    /// lease was lost (it lapsed, and another node took it) stops: no new tenant is begun and
    /// nothing is settled; the new holder reads the same entries, and those already applied
    /// count nothing twice.
    pub async fn sweep_usage(&self, region: &str) -> Result<SweepReport> {
        let started = self.clock.now();
        let node = self.usage.node;
        if !self
            .store
            .claim_sweep(region, node, started, started + SWEEP_LEASE)
            .await?
        {
            return Ok(SweepReport {
                not_ours: true,
                ..SweepReport::default()
            });
        }
        let lost = AtomicBool::new(false);
        let progress = AtomicUsize::new(0);
        let renewals = async {
            let mut last = (0, std::time::Instant::now());
            loop {
                tokio::time::sleep(SWEEP_RENEW_EVERY).await;
                let steps = progress.load(Ordering::SeqCst);
                if steps != last.0 {
                    last = (steps, std::time::Instant::now());
                } else if last.1.elapsed() >= SWEEP_STALL {
                    tracing::warn!(
                        region,
                        "a usage sweep made no progress for a minute; abandoned, its lease left to lapse"
                    );
                    return true;
                }
                let now = self.clock.now();
                match self.store.renew_sweep(region, node, now + SWEEP_LEASE).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(region, "a running usage sweep lost its lease; it stops");
                        lost.store(true, Ordering::SeqCst);
                        return false;
                    }
                    // Tried again at the next period: the lease outlasts a few failures.
                    Err(e) => tracing::warn!(region, error = %e, "a running usage sweep could not renew its lease"),
                }
            }
        };
        let sweep = self.sweep_leased(region, started, &lost, &progress);
        tokio::pin!(sweep, renewals);
        loop {
            tokio::select! {
                report = &mut sweep => return report,
                // Lost: the sweep sees the flag and stops at its next step. Stalled: dropped
                // here (its open transactions roll back; the new holder reads its entries).
                stalled = &mut renewals, if !lost.load(Ordering::SeqCst) => {
                    if stalled {
                        lost.store(true, Ordering::SeqCst);
                        self.usage.set_cursor(region, JournalCursor::default());
                        return Err(Error::Internal(format!("the usage sweep of region {region} stalled")));
                    }
                }
            }
        }
    }

    /// The sweep proper, run while `sweep_usage` renews the lease (`lost` once it could not).
    async fn sweep_leased(
        &self,
        region: &str,
        started: OffsetDateTime,
        lost: &AtomicBool,
        progress: &AtomicUsize,
    ) -> Result<SweepReport> {
        let node = self.usage.node;
        let lost_it = |after: JournalCursor| {
            // Read again from here if this node sweeps the region again.
            self.usage.set_cursor(region, after);
            Ok(SweepReport {
                not_ours: true,
                ..SweepReport::default()
            })
        };
        let t0 = std::time::Instant::now();
        let after = self.usage.cursor(region);
        let pass_started = if after == JournalCursor::default() {
            lock(&self.usage.pass_started).insert(region.to_owned(), started);
            started
        } else {
            lock(&self.usage.pass_started).get(region).copied().unwrap_or(started)
        };
        let take = self.store.journal_take(region, after, SWEEP_TAKE).await?;
        progress.fetch_add(1, Ordering::SeqCst);
        let taken = take.entries;
        let full = take.full;
        self.usage
            .set_cursor(region, if full { take.next } else { JournalCursor::default() });
        // Each tenant's entries, with the row each came from (a batch row mixes tenants).
        let read = t0.elapsed();
        let mut keys: Vec<JournalKey> = Vec::with_capacity(take.rows.len());
        let mut row_sizes: Vec<usize> = Vec::with_capacity(take.rows.len());
        let mut by_tenant: BTreeMap<TenantId, (Vec<u32>, Vec<JournalEntry>)> = BTreeMap::new();
        for (i, row) in take.rows.into_iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            keys.push(row.key);
            row_sizes.push(row.entries.len());
            for e in row.entries {
                let slot = by_tenant.entry(e.tenant_id).or_default();
                slot.0.push(i);
                slot.1.push(e);
            }
        }
        let ids: Vec<Uuid> = by_tenant.keys().map(|t| t.0).collect();
        let live: HashMap<Uuid, UsageSubject> = if ids.is_empty() {
            HashMap::new()
        } else {
            self.store.usage_subjects(&ids).await?.into_iter().collect()
        };
        // Entries of tenants held back (resting, or failing now): (row, entry).
        let mut kept: Vec<(u32, JournalEntry)> = Vec::new();
        let mut work: Vec<(TenantId, Vec<u32>, Vec<JournalEntry>)> = Vec::new();
        let mut held = false;
        for (t, (rows, entries)) in by_tenant {
            if !live.contains_key(&t.0) {
                tracing::warn!(tenant = %t.0, events = entries.len(), "usage for a deleted tenant dropped");
            } else if self.usage.resting(t, started) {
                held = true;
                kept.extend(rows.into_iter().zip(entries));
            } else {
                work.push((t, rows, entries));
            }
        }
        let tenants = work.len();
        let queue = Mutex::new(work);
        let results = Mutex::new(Vec::new());
        let parallel = self.store.sweep_parallelism().clamp(1, SWEEP_PARALLEL_MAX);
        let (queue_ref, results_ref) = (&queue, &results);
        let worker = |i: usize| async move {
            if i >= parallel {
                return;
            }
            loop {
                if lost.load(Ordering::SeqCst) {
                    break;
                }
                let next = lock(queue_ref).pop();
                let Some((t, rows, entries)) = next else { break };
                let outcome = self.store.apply_usage(t, &entries, &self.config.meters).await;
                progress.fetch_add(1, Ordering::SeqCst);
                lock(results_ref).push((t, rows, entries, outcome));
            }
        };
        tokio::join!(
            worker(0),
            worker(1),
            worker(2),
            worker(3),
            worker(4),
            worker(5),
            worker(6),
            worker(7),
            worker(8),
            worker(9),
            worker(10),
            worker(11),
            worker(12),
            worker(13),
            worker(14),
            worker(15)
        );
        let applied_in = t0.elapsed();
        if lost.load(Ordering::SeqCst) {
            return lost_it(after);
        }
        let mut inserted = 0;
        let mut months = Vec::new();
        for (t, rows, entries, outcome) in results.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner) {
            match outcome {
                Ok(applied) => {
                    self.usage.recovered(t);
                    inserted += applied.inserted;
                    for (m, totals) in applied.months {
                        months.push((m, t, totals));
                    }
                }
                Err(e) => {
                    held = true;
                    kept.extend(rows.into_iter().zip(entries));
                    let failures = self.usage.failed(t, started);
                    if failures.is_power_of_two() {
                        tracing::warn!(tenant = %t.0, failures, error = %e,
                            "usage could not be applied to the tenant's database; kept, and tried again later");
                    }
                }
            }
        }
        // Settled only by the lease's holder: renewed once more (if this node still holds it)
        // for the last steps.
        let now = self.clock.now();
        if lost.load(Ordering::SeqCst) || !self.store.renew_sweep(region, node, now + SWEEP_LEASE).await? {
            return lost_it(after);
        }
        self.store.put_usage_months(&months).await?;
        if let Err(e) = self.check_budgets(&months, &live).await {
            tracing::warn!(error = %e, "budgets could not be checked; the next sweep tries again");
        }
        let (done, kept) = settle(&keys, &row_sizes, kept);
        self.store.journal_settle(region, &done, &kept).await?;
        // The journal's end reached: everything received before the pass began is in (but
        // for a tenant being held back, which the warning names). A pass may take several
        // sweeps: entries kept back for a failing tenant can fill a whole take for ever, and
        // must not stop the others' freshness.
        let drained = !full && after == JournalCursor::default();
        if !full {
            self.store.set_swept_through(region, node, pass_started).await?;
            self.usage
                .saw_swept_through(region, pass_started, self.clock.now(), None);
        }
        self.usage.swept(region, taken, t0.elapsed().as_secs_f64());
        tracing::debug!(
            region,
            taken,
            tenants,
            read_ms = read.as_millis() as u64,
            applied_ms = applied_in.as_millis() as u64,
            total_ms = t0.elapsed().as_millis() as u64,
            "usage sweep"
        );
        Ok(SweepReport {
            taken,
            inserted,
            tenants,
            drained: drained && !held,
            not_ours: false,
        })
    }

    /// Every region's sweep, each until it has read its journal to the end or another node
    /// holds it (the server calls this every ~250 ms). A region that fails is logged and the
    /// others are still swept.
    pub async fn sweep_all_usage(&self) -> Result<u64> {
        let mut inserted = 0;
        let mut failed = None;
        for region in self.usage_regions() {
            loop {
                match self.sweep_usage(&region).await {
                    Ok(r) => {
                        inserted += r.inserted;
                        if r.not_ours || r.taken < SWEEP_TAKE as usize {
                            break;
                        }
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(inserted),
        }
    }

    /// Give back the sweep leases this node holds (at shutdown, once its sweeps have stopped):
    /// another node sweeps at once instead of when the lease lapses. A region whose lease
    /// could not be given back is logged; its lease lapses by itself.
    pub async fn release_usage_sweeps(&self) {
        for region in self.usage_regions() {
            match self.store.release_sweep(&region, self.usage.node).await {
                Ok(true) => tracing::info!(region, "gave back the usage sweep's lease"),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(region, error = %e, "could not give back the usage sweep's lease; it lapses by itself")
                }
            }
        }
    }

    /// Drop raw events received before the retention window in every tenant (hourly
    /// housekeeping).
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
        let micros = totals
            .iter()
            .map(|t| self.config.pricing.cost_micros(&t.meter, &t.dims, tier, t.value).0)
            .fold(0_i128, i128::saturating_add);
        crate::pricing::round_micros(micros)
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
        let mut seen = HashSet::new();
        for (m, t, _) in touched {
            let (Some(budget), Some(subject)) = (budgets.get(t), live.get(&t.0)) else {
                continue;
            };
            if !seen.insert(*t) {
                continue;
            }
            let totals = self.store.usage_month_of(*m, *t).await?;
            let spent = self.cost_of(&totals, subject.tier);
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
            let key = (budget.tenant_id, month, c.as_str(), budget.updated_at);
            if lock(&self.usage.crossings).contains(&key) {
                continue;
            }
            self.record_crossing(budget, month, spent, c).await?;
            let mut known = lock(&self.usage.crossings);
            known.retain(|(_, m, _, _)| *m == month);
            known.insert(key);
        }
        Ok(())
    }

    /// Forget the crossings recorded in memory for a tenant (its budget changed).
    pub(crate) fn forget_crossings(&self, tenant: TenantId) {
        lock(&self.usage.crossings).retain(|(t, _, _, _)| *t != tenant);
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
        let event = self
            .new_event(
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
            )
            .publish(crate::webhook::Published::budget(
                c,
                budget,
                month,
                spent,
                book.currency(),
            ));
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
            .map(|to| (self.config.render_notice)(&to, &subject, &what, "See usage and cost", &link))
            .collect();
        let recorded = self
            .store
            .record_budget_crossing(
                budget.tenant_id,
                &month.to_string(),
                c,
                budget.updated_at,
                block_until,
                &emails,
                event,
            )
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

/// What becomes of each row a sweep read, given the entries held back (row, entry): a row
/// with none is deleted, a row with only held entries stays as it is, and a row with some is
/// rewritten to hold just those (its other tenants' entries are in their databases now).
fn settle(
    keys: &[JournalKey],
    row_sizes: &[usize],
    kept: Vec<(u32, JournalEntry)>,
) -> (Vec<JournalKey>, Vec<(JournalKey, Vec<JournalEntry>)>) {
    let mut by_row: BTreeMap<u32, Vec<JournalEntry>> = BTreeMap::new();
    for (row, e) in kept {
        by_row.entry(row).or_default().push(e);
    }
    let mut done = Vec::with_capacity(keys.len());
    let mut rewrite = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let i32 = u32::try_from(i).unwrap_or(u32::MAX);
        match by_row.remove(&i32) {
            None => done.push(*key),
            Some(held) if held.len() == row_sizes.get(i).copied().unwrap_or(0) => {}
            Some(held) => rewrite.push((*key, held)),
        }
    }
    (done, rewrite)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests unwrap")]
    use super::*;

    fn entry_of(t: u128, id: &str) -> JournalEntry {
        JournalEntry {
            tenant_id: TenantId(Uuid::from_u128(t)),
            api_key_id: None,
            source: "s".into(),
            event_id: id.into(),
            meter: "llm.tokens".into(),
            time: OffsetDateTime::UNIX_EPOCH,
            value: 1,
            dims: "{}".into(),
            received_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_row_is_deleted_kept_or_rewritten_by_what_its_held_tenants_left_in_it() {
        let keys = [
            JournalKey::Batch(1),
            JournalKey::Batch(2),
            JournalKey::Event(7),
            JournalKey::Batch(3),
        ];
        // Row 0: two tenants, one held; row 1: nothing held; row 2 (per event): held; row 3:
        // its only tenant held.
        let sizes = [3, 2, 1, 2];
        let held = vec![
            (0, entry_of(2, "b")),
            (2, entry_of(2, "c")),
            (3, entry_of(2, "d")),
            (3, entry_of(2, "e")),
        ];
        let (done, rewrite) = settle(&keys, &sizes, held);
        assert_eq!(done, vec![JournalKey::Batch(2)]);
        assert_eq!(rewrite, vec![(JournalKey::Batch(1), vec![entry_of(2, "b")])]);
    }
}
