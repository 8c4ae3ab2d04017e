//! Crash recovery's store side (see `quarterdeck_domain::core` `reconcile`): the intent a
//! tenant-side write leaves in the tenant's database (`pending_event`, written by `DirTx` in
//! `sql.rs`), its repair in the control database, and the findings (`reconcile_finding`).
//!
//! `impl_reconcile_store!(StoreType, DbType)` needs, beside what `impl_store!` needs, the
//! backend's `list_tenant_databases` and `tenant_db_name` (in `sqlite.rs` / `postgres.rs`).
//!
//! Over 600 lines on purpose for now: the intent's format (plan, sealing, reading) and the
//! store side of every reconcile step share one macro body for both backends; splitting the
//! store macros into modules is issue 16's.

use quarterdeck_domain::access::Actor;
use quarterdeck_domain::audit::{EventType, NewEvent};
use quarterdeck_domain::ids::{EventId, TenantId, UserId};
use quarterdeck_domain::sso::SecretKey;
use quarterdeck_domain::token::OsRandom;
use quarterdeck_domain::webhook::{Published, Topic};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

/// What the control side of one tenant-side write holds: its audit events (with what they
/// publish) and the control-side operations, in the order they ran. Serialized as the
/// intent's payload (JSON; `v` is the format's version).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct ControlPlan {
    pub(crate) v: u32,
    pub(crate) events: Vec<PlannedEvent>,
    pub(crate) ops: Vec<ControlOp>,
}

/// Intent formats this server reads: 1 (the plan in clear, written before 2 existed, and by
/// a store opened without the secret key) and 2 (the whole plan sealed).
///
/// A format-2 intent as stored: the format-1 plan's JSON, sealed.
#[derive(Serialize, Deserialize)]
struct SealedPlan {
    v: u32,
    sealed: String,
}

/// What a sealed plan is bound to: the tenant whose database holds it and its event.
fn binding(tenant: Uuid, event_id: Uuid) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[..16].copy_from_slice(tenant.as_bytes());
    b[16..].copy_from_slice(event_id.as_bytes());
    b
}

/// The largest intent payload read (a server writes a few kilobytes; anything larger did not
/// come from one and is quarantined unread).
pub(crate) const MAX_INTENT_BYTES: i64 = 1 << 20;

/// A plan's JSON sealed as format 2 for `tenant`'s database and `event_id`.
pub(crate) fn seal_plan_json(key: &SecretKey, tenant: Uuid, event_id: Uuid, plain: &str) -> Result<String, String> {
    let sealed = key
        .seal_bound(plain, &binding(tenant, event_id), &OsRandom)
        .map_err(|e| e.to_string())?;
    serde_json::to_string(&SealedPlan { v: 2, sealed }).map_err(|e| e.to_string())
}

/// Why a stored intent cannot be used by this server.
#[derive(Debug)]
pub(crate) enum Unusable {
    /// A format, event type, topic or operation of a newer server: left for it.
    Newer(String),
    /// Not an intent this deployment wrote (not JSON, a seal that does not open, another
    /// tenant named inside): quarantined.
    Unreadable(String),
}

impl ControlPlan {
    pub(crate) fn new(events: &[NewEvent]) -> Self {
        Self {
            v: 1,
            events: events.iter().map(PlannedEvent::from_event).collect(),
            ops: Vec::new(),
        }
    }

    /// The payload as stored in the tenant's database. The plan holds live secrets (an
    /// invitation's link) and says what the server is to write and send, and the tenant's
    /// database can be read and written by more than the server (a region's own cluster or
    /// directory, dumps of tenant databases): with a key, the whole plan is sealed, bound to
    /// the tenant and the event (format 2), so it can be neither read nor forged there;
    /// without one (a store opened without the secret key), format 1 in clear.
    pub(crate) fn into_payload(self, key: Option<&SecretKey>, tenant: Uuid, event_id: Uuid) -> Result<String, String> {
        let plain = serde_json::to_string(&self).map_err(|e| e.to_string())?;
        match key {
            None => Ok(plain),
            Some(key) => seal_plan_json(key, tenant, event_id, &plain),
        }
    }

    /// The plan of a stored payload read from `tenant`'s database for intent `event_id`.
    pub(crate) fn from_payload(
        payload: &str,
        key: Option<&SecretKey>,
        tenant: Uuid,
        event_id: Uuid,
    ) -> Result<Self, Unusable> {
        let value: Value =
            serde_json::from_str(payload).map_err(|e| Unusable::Unreadable(format!("the intent is not JSON: {e}")))?;
        let plain = match value.get("v").and_then(Value::as_u64) {
            // In clear: written only by a store without the key. Where intents are sealed, one
            // in clear was written by someone else (whoever can write the tenant's database).
            Some(1) if key.is_some() => {
                return Err(Unusable::Unreadable(
                    "an intent in clear where intents are sealed".to_owned(),
                ));
            }
            Some(1) => value,
            Some(2) => {
                let sealed: SealedPlan = serde_json::from_value(value)
                    .map_err(|e| Unusable::Unreadable(format!("a sealed intent without its seal: {e}")))?;
                let key = key
                    .ok_or_else(|| Unusable::Unreadable("a sealed intent, and no secret key to open it".to_owned()))?;
                let text = key
                    .open_bound(&sealed.sealed, &binding(tenant, event_id))
                    .map_err(|e| Unusable::Unreadable(format!("the sealed intent does not open here: {e}")))?;
                serde_json::from_str(&text)
                    .map_err(|e| Unusable::Unreadable(format!("a sealed intent that is not JSON: {e}")))?
            }
            other => {
                return Err(Unusable::Newer(format!(
                    "an intent of format {} (this server reads 1 and 2)",
                    other.map_or_else(|| "none".to_owned(), |v| v.to_string())
                )));
            }
        };
        if plain.get("v").and_then(Value::as_u64) != Some(1) {
            return Err(Unusable::Unreadable(
                "a sealed intent whose plan is not format 1".to_owned(),
            ));
        }
        let plan: ControlPlan = serde_json::from_value(plain)
            .map_err(|e| Unusable::Newer(format!("an intent this server cannot read: {e}")))?;
        // Whatever its format, an intent acts for the tenant whose database holds it only.
        let foreign = plan.events.iter().any(|e| e.tenant_id != Some(tenant))
            || plan
                .ops
                .iter()
                .any(|op| matches!(op, ControlOp::Email { tenant_id, .. } if *tenant_id != Some(tenant)));
        if foreign {
            return Err(Unusable::Unreadable("the intent names another tenant".to_owned()));
        }
        Ok(plan)
    }
}

/// One control-side operation of a tenant-side write.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum ControlOp {
    /// An email queued in the outbox.
    Email {
        to: String,
        subject: String,
        text: String,
        html: String,
        tenant_id: Option<Uuid>,
        user_id: Option<Uuid>,
        at: i64,
    },
    /// The user's sessions deleted.
    DeleteSessions { user_id: Uuid },
    /// The user's pending emails cancelled.
    CancelPending { user_id: Uuid },
    /// An impersonation ended (with its event, if it was still live).
    EndImpersonation {
        id: Uuid,
        at: i64,
        reason: String,
        event: Box<PlannedEvent>,
    },
}

/// A `NewEvent` as stored in an intent.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct PlannedEvent {
    id: Uuid,
    /// Unix nanoseconds.
    ts: i64,
    event_type: String,
    actor_user_id: Option<Uuid>,
    actor_email: Option<String>,
    actor_impersonation: Option<(Uuid, Uuid)>,
    actor_token_id: Option<Uuid>,
    tenant_id: Option<Uuid>,
    details: Value,
    published: Option<PlannedPublished>,
}

#[derive(Debug, Serialize, Deserialize)]
struct PlannedPublished {
    topic: String,
    tenant_id: Option<Uuid>,
    region: Option<String>,
    previous_region: Option<String>,
    data: Value,
}

pub(crate) fn nanos(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

pub(crate) fn from_nanos(n: i64) -> Result<OffsetDateTime, String> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(n)).map_err(|e| format!("a time out of range: {e}"))
}

impl PlannedEvent {
    pub(crate) fn id(&self) -> Uuid {
        self.id
    }

    pub(crate) fn ts(&self) -> OffsetDateTime {
        from_nanos(self.ts).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    pub(crate) fn from_event(e: &NewEvent) -> Self {
        Self {
            id: e.id.0,
            ts: nanos(e.ts),
            event_type: e.event_type.as_str().to_owned(),
            actor_user_id: e.actor.user_id.map(|u| u.0),
            actor_email: e.actor.email.clone(),
            actor_impersonation: e.actor.impersonation.map(|(i, t)| (i, t.0)),
            actor_token_id: e.actor.token_id,
            tenant_id: e.tenant_id.map(|t| t.0),
            details: e.details.clone(),
            published: e.published.as_ref().map(|p| PlannedPublished {
                topic: p.topic.as_str().to_owned(),
                tenant_id: p.tenant_id.map(|t| t.0),
                region: p.region.clone(),
                previous_region: p.previous_region.clone(),
                data: p.data.clone(),
            }),
        }
    }

    /// The event again, exactly as it was to be written (same id, time, details).
    pub(crate) fn to_event(&self) -> Result<NewEvent, String> {
        let event_type =
            EventType::parse(&self.event_type).ok_or_else(|| format!("unknown event type {:?}", self.event_type))?;
        let published = match &self.published {
            None => None,
            Some(p) => Some(Published {
                topic: Topic::parse(&p.topic).ok_or_else(|| format!("unknown published topic {:?}", p.topic))?,
                tenant_id: p.tenant_id.map(TenantId),
                region: p.region.clone(),
                previous_region: p.previous_region.clone(),
                data: p.data.clone(),
                late: false,
            }),
        };
        Ok(NewEvent {
            id: EventId(self.id),
            ts: from_nanos(self.ts)?,
            event_type,
            actor: Actor {
                user_id: self.actor_user_id.map(UserId),
                email: self.actor_email.clone(),
                impersonation: self.actor_impersonation.map(|(i, t)| (i, TenantId(t))),
                token_id: self.actor_token_id,
            },
            tenant_id: self.tenant_id.map(TenantId),
            details: self.details.clone(),
            published,
        })
    }
}

/// An intent's payload as kept in a quarantine finding: the emails' bodies (an invitation's
/// link is a live secret) are blanked; a payload that is not JSON is not kept at all.
pub(crate) fn redact(payload: &str) -> String {
    let Ok(mut v) = serde_json::from_str::<Value>(payload) else {
        return String::new();
    };
    if let Some(ops) = v.get_mut("ops").and_then(Value::as_array_mut) {
        for op in ops {
            if op.get("op").and_then(Value::as_str) == Some("email")
                && let Some(o) = op.as_object_mut()
            {
                o.insert("text".to_owned(), Value::String(String::new()));
                o.insert("html".to_owned(), Value::String(String::new()));
            }
        }
    }
    v.to_string()
}

/// An impersonation's end reason as the domain spells it (a `&'static str`).
pub(crate) fn end_reason(s: &str) -> &'static str {
    match s {
        "expired" => "expired",
        "stopped" => "stopped",
        "rights_revoked" => "rights_revoked",
        "impersonator_suspended" => "impersonator_suspended",
        "impersonator_removed" => "impersonator_removed",
        _ => "reconciled",
    }
}

macro_rules! impl_reconcile_store {
    ($Store:ty, $Db:ty) => {
        mod reconcile_impl {
            use super::*;
            use quarterdeck_domain::audit::NewEvent;
            use quarterdeck_domain::error::{Error, Result};
            use quarterdeck_domain::ids::{TenantId, UserId};
            use quarterdeck_domain::impersonation::ImpersonationEnd;
            use quarterdeck_domain::mail::Email;
            use quarterdeck_domain::store::{DatabaseFinding, IntentOutcome, OrphanOutcome, PendingIntent, ReconcileStore};
            use quarterdeck_domain::user::Directory;
            use $crate::sql_reconcile::{ControlOp, ControlPlan, MAX_INTENT_BYTES, Unusable, end_reason, from_nanos, redact};
            use sqlx::{Row, Transaction};
            use time::OffsetDateTime;
            use uuid::Uuid;

            impl $Store {
                /// Takes the chain's lock in `tx` (as every audited writer does first) without
                /// appending: what is read next is read after every audited writer before.
                async fn lock_chain(tx: &mut Transaction<'static, $Db>) -> Result<()> {
                    sqlx::query("UPDATE audit_head SET seq = seq WHERE id = 1").execute(&mut **tx).await.map_err(db_err)?;
                    Ok(())
                }

                /// The chain's lock, then whether the intent's event is in the trail: the
                /// change's own control transaction holds that lock until it commits or fails,
                /// and so does any repair or quarantine of the intent, so of them one acts.
                async fn lock_and_find_event(tx: &mut Transaction<'static, $Db>, intent: &PendingIntent) -> Result<bool> {
                    Self::lock_chain(tx).await?;
                    Ok(sqlx::query("SELECT 1 AS one FROM tenant_audit WHERE id = $1")
                        .bind(intent.event_id.0)
                        .fetch_optional(&mut **tx)
                        .await
                        .map_err(db_err)?
                        .is_some())
                }

                /// Whether the trail (read under the chain's lock) has an event about the same
                /// user as `first`, the intent's own event, stamped after it (by the nodes'
                /// clocks): the user changed since. An event about no user (no `user_id` in its
                /// details) is never late.
                async fn later_event_about_user(tx: &mut Transaction<'static, $Db>, intent: &PendingIntent, first: &NewEvent) -> Result<bool> {
                    let Some(user) = first.details.get("user_id").and_then(serde_json::Value::as_str) else {
                        return Ok(false);
                    };
                    let sql = format!(
                        "SELECT 1 AS one FROM tenant_audit WHERE tenant_id = $1 AND ts > $2 AND {DETAILS_USER_ID} = $3 LIMIT 1"
                    );
                    Ok(sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(intent.tenant_id.0)
                        .bind(enc_ts(first.ts))
                        .bind(user)
                        .fetch_optional(&mut **tx)
                        .await
                        .map_err(db_err)?
                        .is_some())
                }

                /// An intent's payload: `None` if the row is gone, `Some(None)` if it is larger
                /// than [`MAX_INTENT_BYTES`] (not read: nothing a server wrote is that large).
                async fn intent_payload(pool: &sqlx::Pool<$Db>, intent: &PendingIntent) -> Result<Option<Option<String>>> {
                    let row = sqlx::query("SELECT CAST(length(payload) AS BIGINT) AS n FROM pending_event WHERE event_id = $1")
                        .bind(intent.event_id.0)
                        .fetch_optional(pool)
                        .await
                        .map_err(db_err)?;
                    let Some(row) = row else { return Ok(None) };
                    let n: i64 = row.try_get("n").map_err(db_err)?;
                    if n > MAX_INTENT_BYTES {
                        return Ok(Some(None));
                    }
                    let payload: Option<String> = sqlx::query_scalar("SELECT payload FROM pending_event WHERE event_id = $1")
                        .bind(intent.event_id.0)
                        .fetch_optional(pool)
                        .await
                        .map_err(db_err)?;
                    Ok(payload.map(Some))
                }

                /// Whether `user`'s invitation in the tenant's database is still the one made at
                /// `at` (unix nanoseconds), neither spent, revoked nor expired at `now`.
                async fn invitation_current(tenant: &mut <$Db as sqlx::Database>::Connection, user: Uuid, at: i64, now: OffsetDateTime) -> Result<bool> {
                    let at = from_nanos(at).map_err(Error::internal)?;
                    Ok(sqlx::query(
                        "SELECT 1 AS one FROM invitation WHERE user_id = $1 AND created_at = $2 AND spent_at IS NULL AND revoked_at IS NULL \
                         AND expires_at > $3",
                    )
                    .bind(user)
                    .bind(enc_ts(at))
                    .bind(enc_ts(now))
                    .fetch_optional(&mut *tenant)
                    .await
                    .map_err(db_err)?
                    .is_some())
                }

                /// The intent's control side is in the trail: it is settled (kept an hour for
                /// backups, like one its writer settled).
                async fn settle_intent(&self, intent: &PendingIntent, at: OffsetDateTime) {
                    let done = async {
                        let pool = self.dir_pool(Directory::Tenant(intent.tenant_id)).await?;
                        sqlx::query("UPDATE pending_event SET settled_at = $2, reopened = $3 WHERE event_id = $1")
                            .bind(intent.event_id.0)
                            .bind(enc_ts(at))
                            .bind(false)
                            .execute(&*pool)
                            .await
                            .map_err(db_err)
                    }
                    .await;
                    if let Err(e) = done {
                        tracing::warn!(tenant_id = %intent.tenant_id, error = %e, "reconcile: cannot mark an intent settled (the next pass finds its event written)");
                    }
                }

                /// The intent is kept in the control database (quarantined): removed here.
                async fn drop_intent(&self, intent: &PendingIntent) {
                    let done = async {
                        let pool = self.dir_pool(Directory::Tenant(intent.tenant_id)).await?;
                        sqlx::query("DELETE FROM pending_event WHERE event_id = $1")
                            .bind(intent.event_id.0)
                            .execute(&*pool)
                            .await
                            .map_err(db_err)
                    }
                    .await;
                    if let Err(e) = done {
                        tracing::warn!(tenant_id = %intent.tenant_id, error = %e, "reconcile: cannot remove a quarantined intent (the next pass will)");
                    }
                }

                /// Runs one planned control-side operation in `tx`.
                async fn apply_op(&self, tx: &mut Transaction<'static, $Db>, op: &ControlOp) -> Result<()> {
                    match op {
                        ControlOp::Email { to, subject, text, html, tenant_id, user_id, at } => {
                            let email = Email { to: to.clone(), subject: subject.clone(), text: text.clone(), html: html.clone() };
                            let at = from_nanos(*at).map_err(Error::internal)?;
                            Self::enqueue(tx, &email, tenant_id.map(TenantId), user_id.map(UserId), at).await
                        }
                        ControlOp::DeleteSessions { user_id } => {
                            sqlx::query("DELETE FROM session WHERE user_id = $1").bind(user_id).execute(&mut **tx).await.map_err(db_err)?;
                            Ok(())
                        }
                        ControlOp::CancelPending { user_id } => Self::cancel_pending(tx, UserId(*user_id)).await,
                        ControlOp::EndImpersonation { id, at, reason, event } => {
                            let end = ImpersonationEnd {
                                id: *id,
                                at: from_nanos(*at).map_err(Error::internal)?,
                                reason: end_reason(reason),
                                event: event.to_event().map_err(Error::internal)?,
                            };
                            self.end_impersonations_in(tx, std::slice::from_ref(&end)).await
                        }
                    }
                }
            }

            fn intent_from_row(tenant: TenantId, r: &<$Db as sqlx::Database>::Row) -> Result<PendingIntent> {
                Ok(PendingIntent {
                    tenant_id: tenant,
                    event_id: quarterdeck_domain::ids::EventId(r.try_get("event_id").map_err(db_err)?),
                    created_at: dec_ts(r.try_get("created_at").map_err(db_err)?),
                    attempts: r.try_get::<i32, _>("attempts").map(i64::from).or_else(|_| r.try_get::<i64, _>("attempts")).map_err(db_err)?,
                    reopened: r.try_get::<bool, _>("reopened").map_err(db_err)?,
                })
            }

            /// Every planned event, or why the plan cannot be used.
            fn plan_events(plan: &ControlPlan) -> std::result::Result<Vec<NewEvent>, String> {
                if plan.v != 1 {
                    return Err(format!("an intent of format {} (this server reads 1)", plan.v));
                }
                for op in &plan.ops {
                    if let ControlOp::EndImpersonation { event, at, .. } = op {
                        event.to_event()?;
                        from_nanos(*at)?;
                    }
                    if let ControlOp::Email { at, .. } = op {
                        from_nanos(*at)?;
                    }
                }
                plan.events.iter().map(|e| e.to_event()).collect()
            }

            #[async_trait::async_trait]
            impl ReconcileStore for $Store {
                async fn pending_intents(&self, tenant: TenantId, before: OffsetDateTime, limit: u32) -> Result<Vec<PendingIntent>> {
                    let pool = self.dir_pool(Directory::Tenant(tenant)).await?;
                    let rows = sqlx::query(
                        "SELECT event_id, created_at, attempts, reopened FROM pending_event WHERE settled_at IS NULL AND created_at < $1 ORDER BY created_at LIMIT $2",
                    )
                    .bind(enc_ts(before))
                    .bind(i64::from(limit))
                    .fetch_all(&*pool)
                    .await
                    .map_err(db_err)?;
                    rows.iter().map(|r| intent_from_row(tenant, r)).collect()
                }

                async fn reopen_settled_without_event(&self, tenant: TenantId) -> Result<u64> {
                    let pool = self.dir_pool(Directory::Tenant(tenant)).await?;
                    let mut reopened = 0;
                    let mut after: Option<(Ts, Uuid)> = None;
                    // Page through them, checking each page against the trail.
                    loop {
                        let rows = match &after {
                            None => sqlx::query(
                                "SELECT event_id, created_at FROM pending_event WHERE settled_at IS NOT NULL \
                                 ORDER BY created_at, event_id LIMIT 500",
                            )
                            .fetch_all(&*pool)
                            .await,
                            Some((at, id)) => sqlx::query(
                                "SELECT event_id, created_at FROM pending_event WHERE settled_at IS NOT NULL \
                                 AND (created_at > $1 OR (created_at = $1 AND event_id > $2)) ORDER BY created_at, event_id LIMIT 500",
                            )
                            .bind(*at)
                            .bind(*id)
                            .fetch_all(&*pool)
                            .await,
                        }
                        .map_err(db_err)?;
                        let mut page = Vec::with_capacity(rows.len());
                        for r in &rows {
                            page.push((r.try_get::<Ts, _>("created_at").map_err(db_err)?, r.try_get::<Uuid, _>("event_id").map_err(db_err)?));
                        }
                        let Some(last) = page.last() else { break };
                        after = Some(*last);
                        let marks: Vec<String> = (1..=page.len()).map(|i| format!("${i}")).collect();
                        let sql = format!("SELECT id FROM tenant_audit WHERE id IN ({})", marks.join(", "));
                        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                        for (_, id) in &page {
                            q = q.bind(*id);
                        }
                        let found: std::collections::HashSet<Uuid> = q
                            .fetch_all(&self.pool)
                            .await
                            .map_err(db_err)?
                            .iter()
                            .map(|r| r.try_get::<Uuid, _>("id"))
                            .collect::<std::result::Result<_, _>>()
                            .map_err(db_err)?;
                        for (_, id) in page.iter().filter(|(_, id)| !found.contains(id)) {
                            reopened += sqlx::query("UPDATE pending_event SET settled_at = NULL, reopened = $2 WHERE event_id = $1 AND settled_at IS NOT NULL")
                                .bind(*id)
                                .bind(true)
                                .execute(&*pool)
                                .await
                                .map_err(db_err)?
                                .rows_affected();
                        }
                        if page.len() < 500 {
                            break;
                        }
                    }
                    Ok(reopened)
                }

                async fn prune_settled_intents(&self, tenant: TenantId, before: OffsetDateTime) -> Result<u64> {
                    let pool = self.dir_pool(Directory::Tenant(tenant)).await?;
                    Ok(sqlx::query("DELETE FROM pending_event WHERE settled_at IS NOT NULL AND settled_at < $1")
                        .bind(enc_ts(before))
                        .execute(&*pool)
                        .await
                        .map_err(db_err)?
                        .rows_affected())
                }

                async fn repair_intent(&self, intent: &PendingIntent, mut repaired: NewEvent) -> Result<IntentOutcome> {
                    let pool = self.dir_pool(Directory::Tenant(intent.tenant_id)).await?;
                    let Some(payload) = Self::intent_payload(&pool, intent).await? else {
                        // Gone meanwhile: its writer (or another pass) settled it.
                        return Ok(IntentOutcome::AlreadyApplied);
                    };
                    let Some(payload) = payload else {
                        return Ok(IntentOutcome::Unreadable(format!("an intent larger than {MAX_INTENT_BYTES} bytes")));
                    };
                    // Not JSON, sealed by another key or for another tenant or intent, in clear
                    // where intents are sealed, naming another tenant: unreadable (quarantined).
                    // A newer format, or an event type / topic / operation this binary does not
                    // know: left for a newer node (a rolling upgrade), never quarantined.
                    let plan = match ControlPlan::from_payload(&payload, self.intent_key.as_ref(), intent.tenant_id.0, intent.event_id.0) {
                        Ok(p) => p,
                        Err(Unusable::Newer(why)) => return Ok(IntentOutcome::Skipped(why)),
                        Err(Unusable::Unreadable(why)) => return Ok(IntentOutcome::Unreadable(why)),
                    };
                    let events = match plan_events(&plan) {
                        Ok(e) => e,
                        Err(why) => return Ok(IntentOutcome::Skipped(why)),
                    };
                    if events.first().map(|e| e.id) != Some(intent.event_id) {
                        return Ok(IntentOutcome::Unreadable("the intent's events do not start with its event".to_owned()));
                    }
                    let now = repaired.ts;
                    let writer = self.writer_permit().await;
                    let mut tx = self.pool.begin().await.map_err(db_err)?;
                    // The event is written at most once.
                    if Self::lock_and_find_event(&mut tx, intent).await? {
                        drop(tx);
                        drop(writer);
                        self.settle_intent(intent, now).await;
                        return Ok(IntentOutcome::AlreadyApplied);
                    }
                    // The tenant's connection after the chain's lock, in the order of every
                    // audited write (`begin_dir`): the other order deadlocks with a write to
                    // the same tenant on a one-connection pool.
                    let mut tenant = pool.acquire().await.map_err(db_err)?;
                    // Late: the trail already holds a later event about the same user. The
                    // events are still written (the trail is complete, each at its own time),
                    // and what they publish says `late`: a receiver may hold a newer state.
                    let late = Self::later_event_about_user(&mut tx, intent, &events[0]).await?;
                    let mut events = events;
                    if late {
                        for e in &mut events {
                            if let Some(p) = &mut e.published {
                                p.late = true;
                            }
                        }
                    }
                    for e in &events {
                        Self::append_in(&mut tx, e, self.audit_key.as_ref()).await?;
                    }
                    // An invitation email is queued only if its invitation is still the user's
                    // current one (read under the chain's lock: a resend or revocation that
                    // committed since is seen, one still to come cancels it as usual); and
                    // cancelling the user's pending emails reaches only those queued before
                    // this change, never a newer invitation's.
                    let before = events[0].ts;
                    let mut emails_skipped = 0;
                    for op in &plan.ops {
                        match op {
                            ControlOp::Email { user_id: Some(user), at, .. } => {
                                if !Self::invitation_current(&mut tenant, *user, *at, now).await? {
                                    emails_skipped += 1;
                                    continue;
                                }
                                self.apply_op(&mut tx, op).await?;
                            }
                            ControlOp::CancelPending { user_id } => {
                                sqlx::query(
                                    "UPDATE outbox SET status = 'cancelled', body_text = '', body_html = '' \
                                     WHERE user_id = $1 AND status = 'pending' AND created_at <= $2",
                                )
                                .bind(*user_id)
                                .bind(enc_ts(before))
                                .execute(&mut *tx)
                                .await
                                .map_err(db_err)?;
                            }
                            _ => self.apply_op(&mut tx, op).await?,
                        }
                    }
                    drop(tenant);
                    drop(pool);
                    if let serde_json::Value::Object(map) = &mut repaired.details {
                        map.insert(
                            "event_types".to_owned(),
                            serde_json::json!(events.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>()),
                        );
                        if late {
                            map.insert("late".to_owned(), serde_json::json!(true));
                        }
                        if emails_skipped > 0 {
                            map.insert("emails_skipped".to_owned(), serde_json::json!(emails_skipped));
                        }
                    }
                    Self::append_in(&mut tx, &repaired, self.audit_key.as_ref()).await?;
                    tx.commit().await.map_err(db_err)?;
                    drop(writer);
                    self.settle_intent(intent, now).await;
                    Ok(IntentOutcome::Repaired)
                }

                async fn note_intent_failure(&self, intent: &PendingIntent) -> Result<()> {
                    let pool = self.dir_pool(Directory::Tenant(intent.tenant_id)).await?;
                    sqlx::query("UPDATE pending_event SET attempts = attempts + 1 WHERE event_id = $1")
                        .bind(intent.event_id.0)
                        .execute(&*pool)
                        .await
                        .map_err(db_err)?;
                    Ok(())
                }

                async fn quarantine_intent(&self, intent: &PendingIntent, reason: &str, mut event: NewEvent) -> Result<bool> {
                    let pool = self.dir_pool(Directory::Tenant(intent.tenant_id)).await?;
                    // Kept (redacted) unless too large to keep.
                    let payload = Self::intent_payload(&pool, intent).await?.flatten();
                    drop(pool);
                    let payload = payload.map(|p| redact(&p));
                    if let serde_json::Value::Object(map) = &mut event.details {
                        map.entry("reason").or_insert_with(|| serde_json::json!(reason));
                    }
                    let writer = self.writer_permit().await;
                    let mut tx = self.pool.begin().await.map_err(db_err)?;
                    // A repair and a quarantine of one intent (two nodes' passes) cannot both happen.
                    if Self::lock_and_find_event(&mut tx, intent).await? {
                        drop(tx);
                        drop(writer);
                        self.settle_intent(intent, event.ts).await;
                        return Ok(false);
                    }
                    let done = sqlx::query(
                        "INSERT INTO reconcile_finding (kind, subject, tenant_id, reason, payload, first_seen, quarantined_at) \
                         VALUES ('intent', $1, $2, $3, $4, $5, $5) ON CONFLICT (kind, subject) DO NOTHING",
                    )
                    .bind(intent.event_id.0.to_string())
                    .bind(intent.tenant_id.0)
                    .bind(reason)
                    .bind(payload)
                    .bind(enc_ts(event.ts))
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                    let new = done.rows_affected() == 1;
                    if new {
                        Self::append_in(&mut tx, &event, self.audit_key.as_ref()).await?;
                    }
                    tx.commit().await.map_err(db_err)?;
                    drop(writer);
                    self.drop_intent(intent).await;
                    Ok(new)
                }

                async fn tenant_databases(&self) -> Result<Vec<TenantId>> {
                    self.list_tenant_databases().await
                }

                async fn tenant_row_ids(&self) -> Result<Vec<TenantId>> {
                    let rows = sqlx::query("SELECT id FROM tenant").fetch_all(&self.pool).await.map_err(db_err)?;
                    rows.iter().map(|r| Ok(TenantId(r.try_get::<Uuid, _>("id").map_err(db_err)?))).collect()
                }

                async fn note_orphan_database(&self, tenant: TenantId, now: OffsetDateTime) -> Result<OffsetDateTime> {
                    sqlx::query(
                        "INSERT INTO reconcile_finding (kind, subject, tenant_id, reason, first_seen) \
                         VALUES ('orphan_database', $1, $2, 'a database without a tenant row', $3) ON CONFLICT (kind, subject) DO NOTHING",
                    )
                    .bind(tenant.0.to_string())
                    .bind(tenant.0)
                    .bind(enc_ts(now))
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
                    let row = sqlx::query("SELECT first_seen FROM reconcile_finding WHERE kind = 'orphan_database' AND subject = $1")
                        .bind(tenant.0.to_string())
                        .fetch_one(&self.pool)
                        .await
                        .map_err(db_err)?;
                    Ok(dec_ts(row.try_get("first_seen").map_err(db_err)?))
                }

                async fn settle_orphan_database(&self, tenant: TenantId, now: OffsetDateTime, dropped: NewEvent, quarantined: NewEvent) -> Result<OrphanOutcome> {
                    let subject = tenant.0.to_string();
                    let _writer = self.writer_permit().await;
                    let mut tx = self.pool.begin().await.map_err(db_err)?;
                    // Under the chain's lock (which a tenant's creation takes to insert its
                    // row): a row that appeared since means it was a tenant being created.
                    Self::lock_chain(&mut tx).await?;
                    let has_row = sqlx::query("SELECT 1 AS one FROM tenant WHERE id = $1")
                        .bind(tenant.0)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db_err)?
                        .is_some();
                    if has_row {
                        sqlx::query("DELETE FROM reconcile_finding WHERE kind = 'orphan_database' AND subject = $1")
                            .bind(&subject)
                            .execute(&mut *tx)
                            .await
                            .map_err(db_err)?;
                        tx.commit().await.map_err(db_err)?;
                        return Ok(OrphanOutcome::Unchanged);
                    }
                    let quarantined_before = sqlx::query(
                        "SELECT 1 AS one FROM reconcile_finding WHERE kind = 'orphan_database' AND subject = $1 AND quarantined_at IS NOT NULL",
                    )
                    .bind(&subject)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_err)?
                    .is_some();
                    if quarantined_before {
                        return Ok(OrphanOutcome::Unchanged);
                    }
                    // (users, whether its own `tenant_info` names this tenant)
                    let users: std::result::Result<(i64, bool), Error> = async {
                        let pool = self.dir_pool(Directory::Tenant(tenant)).await?;
                        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM app_user")
                            .fetch_one(&*pool)
                            .await
                            .and_then(|r| r.try_get("n"))
                            .map_err(db_err)?;
                        let named: Option<Uuid> = sqlx::query_scalar("SELECT tenant_id FROM tenant_info WHERE id = 1")
                            .fetch_optional(&*pool)
                            .await
                            .map_err(db_err)?;
                        Ok((n, named == Some(tenant.0)))
                    }
                    .await;
                    // Dropped automatically only where the place is this deployment's alone
                    // (`orphans_droppable`: a SQLite data dir; never a PostgreSQL cluster, which
                    // another deployment may share under a colliding prefix) and the database
                    // names this tenant itself; otherwise quarantined for an operator.
                    if self.orphans_droppable() && matches!(users, Ok((0, true))) {
                        // Nothing was ever served from it (a tenant is served only once its row
                        // exists): dropped, then the event; a failed drop writes no event.
                        self.drop_tenant_db(tenant, &self.tenant_db_name(tenant)).await?;
                        Self::append_in(&mut tx, &dropped, self.audit_key.as_ref()).await?;
                        sqlx::query("DELETE FROM reconcile_finding WHERE kind = 'orphan_database' AND subject = $1")
                            .bind(&subject)
                            .execute(&mut *tx)
                            .await
                            .map_err(db_err)?;
                        tx.commit().await.map_err(db_err)?;
                        return Ok(OrphanOutcome::Dropped);
                    }
                    let (code, reason) = match users {
                        Ok((n, true)) if n > 0 => ("has_users", format!("a database without a tenant row holds {n} users")),
                        Ok((n, named)) => (
                            "unverified",
                            format!("a database without a tenant row ({n} users, names this tenant: {named}); never dropped automatically here"),
                        ),
                        Err(e) => ("unreadable", format!("a database without a tenant row that cannot be read: {e}")),
                    };
                    sqlx::query("UPDATE reconcile_finding SET quarantined_at = $2, reason = $3 WHERE kind = 'orphan_database' AND subject = $1")
                        .bind(&subject)
                        .bind(enc_ts(now))
                        .bind(&reason)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                    let mut quarantined = quarantined;
                    if let serde_json::Value::Object(map) = &mut quarantined.details {
                        map.insert("reason".to_owned(), serde_json::json!(code));
                    }
                    Self::append_in(&mut tx, &quarantined, self.audit_key.as_ref()).await?;
                    tx.commit().await.map_err(db_err)?;
                    Ok(OrphanOutcome::Quarantined)
                }

                async fn database_findings(&self) -> Result<Vec<(DatabaseFinding, TenantId)>> {
                    let rows = sqlx::query("SELECT kind, tenant_id FROM reconcile_finding WHERE kind IN ('orphan_database', 'missing_database')")
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db_err)?;
                    let mut out = Vec::with_capacity(rows.len());
                    for r in &rows {
                        let kind: String = r.try_get("kind").map_err(db_err)?;
                        let kind = if kind == DatabaseFinding::Orphan.as_str() { DatabaseFinding::Orphan } else { DatabaseFinding::Missing };
                        let tenant: Option<Uuid> = r.try_get("tenant_id").map_err(db_err)?;
                        if let Some(t) = tenant {
                            out.push((kind, TenantId(t)));
                        }
                    }
                    Ok(out)
                }

                async fn resolve_database_finding(&self, kind: DatabaseFinding, tenant: TenantId, event: NewEvent) -> Result<bool> {
                    let _writer = self.writer_permit().await;
                    let mut tx = self.pool.begin().await.map_err(db_err)?;
                    Self::lock_chain(&mut tx).await?;
                    let row = sqlx::query("SELECT quarantined_at FROM reconcile_finding WHERE kind = $1 AND subject = $2")
                        .bind(kind.as_str())
                        .bind(tenant.0.to_string())
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db_err)?;
                    let Some(row) = row else { return Ok(false) };
                    let quarantined: Option<Ts> = row.try_get("quarantined_at").map_err(db_err)?;
                    sqlx::query("DELETE FROM reconcile_finding WHERE kind = $1 AND subject = $2")
                        .bind(kind.as_str())
                        .bind(tenant.0.to_string())
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                    if quarantined.is_some() {
                        Self::append_in(&mut tx, &event, self.audit_key.as_ref()).await?;
                    }
                    tx.commit().await.map_err(db_err)?;
                    Ok(quarantined.is_some())
                }

                async fn mark_missing_database(&self, tenant: TenantId, now: OffsetDateTime, event: NewEvent) -> Result<bool> {
                    let writer = self.writer_permit().await;
                    let mut tx = self.pool.begin().await.map_err(db_err)?;
                    Self::lock_chain(&mut tx).await?;
                    let live = sqlx::query("SELECT 1 AS one FROM tenant WHERE id = $1 AND deleted_at IS NULL")
                        .bind(tenant.0)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db_err)?
                        .is_some();
                    if !live {
                        return Ok(false);
                    }
                    let done = sqlx::query(
                        "INSERT INTO reconcile_finding (kind, subject, tenant_id, reason, first_seen, quarantined_at) \
                         VALUES ('missing_database', $1, $2, 'a live tenant whose database is missing', $3, $3) ON CONFLICT (kind, subject) DO NOTHING",
                    )
                    .bind(tenant.0.to_string())
                    .bind(tenant.0)
                    .bind(enc_ts(now))
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                    if done.rows_affected() != 1 {
                        return Ok(false);
                    }
                    Self::append_in(&mut tx, &event, self.audit_key.as_ref()).await?;
                    tx.commit().await.map_err(db_err)?;
                    drop(writer);
                    Ok(true)
                }
            }
        }
    };
}

pub(crate) use impl_reconcile_store;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quarantined_payload_keeps_no_email_body_and_a_plan_survives_its_round_trip() {
        let plan = ControlPlan {
            v: 1,
            events: Vec::new(),
            ops: vec![
                ControlOp::CancelPending { user_id: Uuid::nil() },
                ControlOp::Email {
                    to: "a@example.com".to_owned(),
                    subject: "You're invited".to_owned(),
                    text: "https://x/register?token=secret".to_owned(),
                    html: "<a href=\"https://x/register?token=secret\">".to_owned(),
                    tenant_id: None,
                    user_id: None,
                    at: 0,
                },
            ],
        };
        let json = serde_json::to_string(&plan).unwrap();
        let back: ControlPlan = serde_json::from_str(&json).unwrap();
        assert!(matches!(back.ops[0], ControlOp::CancelPending { .. }));
        let kept = redact(&json);
        assert!(!kept.contains("secret"), "{kept}");
        assert!(kept.contains("a@example.com"), "{kept}");
        assert_eq!(redact("not json"), "");
    }

    #[test]
    fn an_intent_is_sealed_to_its_tenant_and_event_and_opens_only_there() {
        let key = SecretKey::from_bytes([3; 32]);
        let (tenant, other_tenant) = (Uuid::from_u128(10), Uuid::from_u128(11));
        let plan = |email_tenant: Uuid| ControlPlan {
            v: 1,
            events: Vec::new(),
            ops: vec![ControlOp::Email {
                to: "a@example.com".to_owned(),
                subject: "You're invited".to_owned(),
                text: "https://x/register?token=secret".to_owned(),
                html: "<a href=\"https://x/register?token=secret\">".to_owned(),
                tenant_id: Some(email_tenant),
                user_id: None,
                at: 0,
            }],
        };
        let (event, other) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let stored = plan(tenant).into_payload(Some(&key), tenant, event).unwrap();
        assert!(
            !stored.contains("secret") && !stored.contains("a@example.com"),
            "{stored}"
        );
        assert!(stored.contains("\"v\":2"), "{stored}");
        let opened = ControlPlan::from_payload(&stored, Some(&key), tenant, event).unwrap();
        let ControlOp::Email { text, .. } = &opened.ops[0] else {
            panic!()
        };
        assert_eq!(text, "https://x/register?token=secret");
        // Moved to another intent or tenant, or read with another key: unreadable.
        for (k, t, e) in [
            (&key, tenant, other),
            (&key, other_tenant, event),
            (&SecretKey::from_bytes([4; 32]), tenant, event),
        ] {
            assert!(matches!(
                ControlPlan::from_payload(&stored, Some(k), t, e),
                Err(Unusable::Unreadable(_))
            ));
        }
        // Format 1 (in clear: a store without the key) is read only by a store without the
        // key, and only for the tenant it names; where intents are sealed it is a forgery.
        let clear = plan(tenant).into_payload(None, tenant, event).unwrap();
        assert!(clear.contains("\"v\":1") && clear.contains("token=secret"));
        assert!(ControlPlan::from_payload(&clear, None, tenant, event).is_ok());
        assert!(matches!(
            ControlPlan::from_payload(&clear, Some(&key), tenant, event),
            Err(Unusable::Unreadable(_))
        ));
        let forged = plan(other_tenant).into_payload(None, tenant, event).unwrap();
        assert!(matches!(
            ControlPlan::from_payload(&forged, None, tenant, event),
            Err(Unusable::Unreadable(_))
        ));
        // A newer format is left alone; a payload that is not JSON is unreadable.
        assert!(matches!(
            ControlPlan::from_payload(r#"{"v":3}"#, Some(&key), tenant, event),
            Err(Unusable::Newer(_))
        ));
        assert!(matches!(
            ControlPlan::from_payload("not json", Some(&key), tenant, event),
            Err(Unusable::Unreadable(_))
        ));
    }
}
