//! Crash recovery: the reconcile pass.
//!
//! A write to a tenant's users commits in the tenant's database first and in the control
//! database (its audit events, outbox emails, sessions, published webhooks) second. A crash
//! (or a control-side failure) between the two commits would leave the change without its
//! event; so the tenant's transaction also writes an *intent* (what the control side must
//! hold), removed once the control side has committed. The pass, at start-up and periodically:
//!
//! - **intents** are marked settled when their control side commits and kept [`SETTLED_KEPT`]
//!   (for backups); at start-up, before anything is pruned, the settled ones are checked
//!   against the trail, and those whose event is missing (a control database restored from a
//!   backup older than the tenant's) are reopened and repaired like open ones
//!   (`RECONCILE_REPAIRED` says `after_restore`).
//! - **open intents** older than the margin (by the injected clock): if their event is in the trail
//!   the intent is simply removed; otherwise the control side is written, once (the store checks
//!   the event's absence under the chain's lock, so concurrent passes on several nodes cannot
//!   both write it), in one transaction with a `RECONCILE_REPAIRED` event per repaired change
//!   (details: the event id and types repaired). An intent that cannot be read, or whose repair
//!   failed [`MAX_REPAIR_ATTEMPTS`] times, is quarantined: kept in the control database
//!   (`reconcile_finding`) with `RECONCILE_QUARANTINED`, and removed from the tenant's.
//! - **databases without a tenant row** (a crash between creating the database and inserting
//!   the row): noted when first seen; after [`DATABASE_MARGIN`], dropped if they hold no user
//!   (`RECONCILE_DATABASE_DROPPED`: a tenant row never existed, so nothing could have been
//!   written there but its schema), otherwise kept and quarantined.
//! - **live tenant rows without a database**: reported (an error in the log at every pass)
//!   and marked once with `RECONCILE_DATABASE_MISSING`. Never recreated empty: an empty
//!   database would hide the loss (sign-ins failing as "unknown user") instead of surfacing it;
//!   the operator restores it from a backup.
//! - **findings that no longer hold** (an orphan that got its row or is gone, a missing
//!   database restored or its tenant deleted) are removed; a quarantined one with
//!   `RECONCILE_RESOLVED` (details: kind, reason code). A database lost again is marked again.
//! - a change repaired **late** (its user changed after it, per the trail) is still written,
//!   but published with `"late": true` and its emails not sent (`RECONCILE_REPAIRED` says
//!   `late` and `emails_skipped`).

use super::Core;
use crate::access::Actor;
use crate::audit::EventType;
use crate::error::{Error, Result};
use crate::ids::TenantId;
use crate::store::{DatabaseFinding, IntentOutcome, OrphanOutcome, PendingIntent};
use serde_json::json;
use std::collections::HashSet;
use time::Duration;

/// A database without a tenant row is left alone this long after it was first seen (a
/// tenant being created has its database a moment before its row).
pub const DATABASE_MARGIN: Duration = Duration::minutes(10);

/// Failed repairs of one intent before it is quarantined.
pub const MAX_REPAIR_ATTEMPTS: i64 = 5;

/// The default margin before an intent is repaired (`reconcile_margin_seconds`).
pub const DEFAULT_MARGIN: Duration = Duration::minutes(1);

/// How long an intent is kept after its control side committed: a backup that copies the
/// control database first and the tenants' after, taking less than this, still holds the
/// intent of every change made meanwhile (`quarterdeck backup` on SQLite; the same order is
/// documented for `pg_dump`).
pub const SETTLED_KEPT: Duration = Duration::hours(1);

/// Intents read from one tenant at a time.
const BATCH: u32 = 500;

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Changes whose control side was written now.
    pub repaired: usize,
    /// Intents whose control side had committed (only the intent was left).
    pub already_applied: usize,
    /// Intents quarantined now.
    pub quarantined: usize,
    /// Repairs that failed this time (tried again next pass).
    pub failed: usize,
    pub databases_dropped: usize,
    pub databases_quarantined: usize,
    /// Live tenants whose database is missing (all of them, not only the newly marked).
    pub databases_missing: usize,
    /// Intents left for a newer node (a newer format, an unknown event type or topic).
    pub skipped: usize,
    /// Quarantined findings about databases that no longer hold (`RECONCILE_RESOLVED`).
    pub resolved: usize,
    /// Settled intents reopened at start-up (their events missing from the trail).
    pub reopened: usize,
}

impl ReconcileReport {
    /// Whether the pass changed anything.
    pub fn is_empty(&self) -> bool {
        Self {
            skipped: 0,
            ..self.clone()
        } == Self::default()
    }
}

impl Core {
    /// One reconcile pass (see the module's documentation); intents younger than `margin`
    /// are left to their own writer.
    pub async fn reconcile(&self, margin: Duration) -> Result<ReconcileReport> {
        self.reconcile_pass(margin, false).await
    }

    /// The pass a server runs when it starts: [`Core::reconcile`], and the settled intents
    /// of the last hour checked against the trail too (a control database restored from a
    /// backup taken before their change gets their events back).
    pub async fn reconcile_at_start(&self, margin: Duration) -> Result<ReconcileReport> {
        self.reconcile_pass(margin, true).await
    }

    async fn reconcile_pass(&self, margin: Duration, with_settled: bool) -> Result<ReconcileReport> {
        let now = self.clock.now();
        let mut report = ReconcileReport::default();
        // Rows before databases: a tenant created meanwhile then looks like a database without
        // a row (settled only after a margin, and re-checked then), never like a row without
        // a database.
        let rows: HashSet<TenantId> = self.store.tenant_row_ids().await?.into_iter().collect();
        let live = self.store.tenant_ids().await?;
        let databases: HashSet<TenantId> = self.store.tenant_databases().await?.into_iter().collect();
        let live_set: HashSet<TenantId> = live.iter().copied().collect();
        for t in live {
            if !databases.contains(&t) {
                report.databases_missing += 1;
                tracing::error!(tenant_id = %t, "the tenant's database is missing; restore it from a backup");
                let event = self.new_event(
                    EventType::ReconcileDatabaseMissing,
                    &Actor::system(),
                    Some(t),
                    json!({ "tenant_id": t }),
                );
                self.store.mark_missing_database(t, now, event).await?;
                continue;
            }
            self.reconcile_tenant(t, now, margin, with_settled, &mut report).await;
        }
        for t in databases.iter().filter(|t| !rows.contains(t)) {
            let first_seen = self.store.note_orphan_database(*t, now).await?;
            if now - first_seen < DATABASE_MARGIN {
                continue;
            }
            let dropped = self.new_event(
                EventType::ReconcileDatabaseDropped,
                &Actor::system(),
                Some(*t),
                json!({ "tenant_id": t, "reason": "a database without a tenant row, holding no user" }),
            );
            let quarantined = self.new_event(
                EventType::ReconcileQuarantined,
                &Actor::system(),
                Some(*t),
                json!({ "kind": "orphan_database", "tenant_id": t, "reason": "a database without a tenant row holds users" }),
            );
            match self.store.settle_orphan_database(*t, now, dropped, quarantined).await? {
                OrphanOutcome::Dropped => report.databases_dropped += 1,
                OrphanOutcome::Quarantined => report.databases_quarantined += 1,
                OrphanOutcome::Unchanged => {}
            }
        }
        self.resolve_findings(&rows, &live_set, &databases, &mut report).await?;
        if !report.is_empty() {
            tracing::info!(?report, "reconcile pass");
        }
        Ok(report)
    }

    /// Findings about databases that no longer hold are removed: an orphan that got its row
    /// (a creation that finished) or is gone (dropped by an operator), a missing database
    /// restored or whose tenant was deleted since. One an operator was told of (quarantined)
    /// gets `RECONCILE_RESOLVED`; a database that goes missing again is marked again.
    async fn resolve_findings(
        &self,
        rows: &HashSet<TenantId>,
        live: &HashSet<TenantId>,
        databases: &HashSet<TenantId>,
        report: &mut ReconcileReport,
    ) -> Result<()> {
        for (kind, t) in self.store.database_findings().await? {
            let why = match kind {
                DatabaseFinding::Orphan if rows.contains(&t) => "tenant_row_found",
                DatabaseFinding::Orphan if !databases.contains(&t) => "database_gone",
                DatabaseFinding::Missing if databases.contains(&t) => "database_restored",
                DatabaseFinding::Missing if !live.contains(&t) => "tenant_deleted",
                _ => continue,
            };
            let event = self.new_event(
                EventType::ReconcileResolved,
                &Actor::system(),
                Some(t),
                json!({ "kind": kind.as_str(), "tenant_id": t, "reason": why }),
            );
            if self.store.resolve_database_finding(kind, t, event).await? {
                report.resolved += 1;
                tracing::info!(tenant_id = %t, kind = kind.as_str(), reason = why, "reconcile: a finding no longer holds");
            }
        }
        Ok(())
    }

    /// The intents of one tenant; a failure is logged and left for the next pass.
    async fn reconcile_tenant(
        &self,
        t: TenantId,
        now: time::OffsetDateTime,
        margin: Duration,
        with_settled: bool,
        report: &mut ReconcileReport,
    ) {
        // At start-up first: settled intents whose event the trail lacks (a restored control
        // database) are reopened, whatever their age, before anything old is pruned.
        if with_settled {
            match self.store.reopen_settled_without_event(t).await {
                Ok(0) => {}
                Ok(n) => {
                    report.reopened += usize::try_from(n).unwrap_or(usize::MAX);
                    tracing::warn!(tenant_id = %t, reopened = n, "reconcile: changes whose events the (restored) control database lacks are repaired");
                }
                Err(e) => {
                    report.failed += 1;
                    tracing::warn!(tenant_id = %t, error = %e, "reconcile: cannot check the tenant's settled intents");
                    // Nothing is pruned until they have been checked.
                    return;
                }
            }
        }
        if let Err(e) = self.store.prune_settled_intents(t, now - SETTLED_KEPT).await {
            tracing::warn!(tenant_id = %t, error = %e, "reconcile: cannot delete the tenant's old settled intents");
        }
        let before = now - margin;
        loop {
            let intents = match self.store.pending_intents(t, before, BATCH).await {
                Ok(i) => i,
                Err(e) => {
                    tracing::warn!(tenant_id = %t, error = %e, "reconcile: cannot read the tenant's intents");
                    return;
                }
            };
            let failed_before = report.failed;
            let progress = |r: &ReconcileReport| r.repaired + r.already_applied + r.quarantined;
            let progress_before = progress(report);
            let n = intents.len();
            for i in &intents {
                self.reconcile_intent(i, report).await;
            }
            // A full batch that settled nothing (intents left for a newer node) would be read
            // again as it is: the rest waits for the next pass.
            if n < BATCH as usize || report.failed > failed_before || progress(report) == progress_before {
                return;
            }
        }
    }

    async fn reconcile_intent(&self, i: &PendingIntent, report: &mut ReconcileReport) {
        let repaired = self.new_event(
            EventType::ReconcileRepaired,
            &Actor::system(),
            Some(i.tenant_id),
            if i.reopened {
                // Its control side had committed: the control database was restored from
                // before it.
                json!({ "event_id": i.event_id, "pending_since": super::rfc3339(i.created_at), "after_restore": true })
            } else {
                json!({ "event_id": i.event_id, "pending_since": super::rfc3339(i.created_at) })
            },
        );
        // The raw text stays in the control `reconcile_finding` row; the tenant-visible audit
        // event carries only a fixed reason code.
        let (code, reason) = match self.store.repair_intent(i, repaired).await {
            Ok(IntentOutcome::AlreadyApplied) => {
                report.already_applied += 1;
                return;
            }
            Ok(IntentOutcome::Repaired) => {
                report.repaired += 1;
                tracing::warn!(tenant_id = %i.tenant_id, event_id = %i.event_id.0, "reconcile: wrote the missing control side of a change");
                return;
            }
            Ok(IntentOutcome::Skipped(why)) => {
                report.skipped += 1;
                tracing::warn!(tenant_id = %i.tenant_id, event_id = %i.event_id.0, %why, "reconcile: left an intent this server cannot apply for a newer node");
                return;
            }
            Ok(IntentOutcome::Unreadable(why)) => ("unreadable", why),
            // Busy is load, not a fault of the intent: it does not count towards quarantine.
            Err(Error::Busy) => {
                report.failed += 1;
                tracing::warn!(tenant_id = %i.tenant_id, event_id = %i.event_id.0, "reconcile: busy; trying again next pass");
                return;
            }
            Err(e) if i.attempts + 1 >= MAX_REPAIR_ATTEMPTS => (
                "repair_failed",
                format!("the repair failed {MAX_REPAIR_ATTEMPTS} times, last: {e}"),
            ),
            Err(e) => {
                report.failed += 1;
                tracing::warn!(tenant_id = %i.tenant_id, event_id = %i.event_id.0, error = %e, "reconcile: repair failed; trying again next pass");
                if let Err(e) = self.store.note_intent_failure(i).await {
                    tracing::warn!(tenant_id = %i.tenant_id, error = %e, "reconcile: cannot count a failed repair");
                }
                return;
            }
        };
        let event = self.new_event(
            EventType::ReconcileQuarantined,
            &Actor::system(),
            Some(i.tenant_id),
            json!({ "kind": "intent", "event_id": i.event_id, "reason": code }),
        );
        match self.store.quarantine_intent(i, &reason, event).await {
            Ok(true) => {
                report.quarantined += 1;
                tracing::error!(tenant_id = %i.tenant_id, event_id = %i.event_id.0, %reason, "reconcile: quarantined a change whose control side cannot be written");
            }
            Ok(false) => {}
            Err(e) => {
                report.failed += 1;
                tracing::warn!(tenant_id = %i.tenant_id, error = %e, "reconcile: cannot quarantine an intent");
            }
        }
    }
}
