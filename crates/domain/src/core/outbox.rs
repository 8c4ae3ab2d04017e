//! Delivering the outbox: due messages go through the configured transport; temporary failures
//! are retried with exponential back-off (and jitter), permanent ones and exhausted retries are
//! marked failed.
//!
//! Several workers may deliver from one database (two processes on one PostgreSQL database,
//! or on one SQLite data directory): each batch is *claimed* with a lease first (atomically,
//! see [`crate::store::OutboxStore::claim_due_messages`]), so a message is sent by the worker
//! that holds its lease and by no other. A failure releases the lease with the back-off; a
//! worker that dies mid-batch leaves its leases to expire after [`LEASE`], and the messages are
//! claimed again (at least once, never twice while a lease lives); one that stops cleanly
//! finishes the message it is sending and gives the rest of its batch back.

use super::Core;
use crate::error::Result;
use crate::mail::{Mailer, SendError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use time::Duration;
use uuid::Uuid;

/// Attempts before a message is given up.
pub const MAX_ATTEMPTS: i64 = 12;

/// How long a claimed batch is reserved for its worker.
pub const LEASE: Duration = Duration::minutes(5);

/// Messages claimed at once.
const BATCH: u32 = 10;

/// Told by the server when it stops ([`OutboxStop::stop`]); knows the batch's lease and the
/// message being sent, so a send cut off after the shutdown grace can still give back the
/// rest of its batch ([`Core::give_back_cut_off_batch`]).
#[derive(Debug, Default)]
pub struct OutboxStop {
    stopping: AtomicBool,
    /// (the batch's lease, the message being sent).
    sending: Mutex<Option<(Uuid, Uuid)>>,
}

impl OutboxStop {
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn sending(&self, now: Option<(Uuid, Uuid)>) {
        *self.sending.lock().unwrap_or_else(PoisonError::into_inner) = now;
    }
}

impl Core {
    /// Deliver what is due now, a claimed batch at a time until none is left; returns how
    /// many were delivered.
    pub async fn deliver_due(&self, mailer: &dyn Mailer) -> Result<usize> {
        self.deliver_due_until(mailer, &OutboxStop::default()).await
    }

    /// [`Core::deliver_due`], stopping between two messages once `stopping` is told (the node
    /// is shutting down): the message being sent is finished, and the rest of the claimed
    /// batch is given back at once instead of waiting under this node's lease for 5 minutes.
    pub async fn deliver_due_until(&self, mailer: &dyn Mailer, stopping: &OutboxStop) -> Result<usize> {
        let mut delivered = 0;
        while !stopping.stopping() {
            let (sent, claimed) = self.deliver_batch(mailer, stopping).await?;
            delivered += sent;
            if claimed < BATCH as usize {
                break;
            }
        }
        Ok(delivered)
    }

    /// Claim one batch and deliver it; returns (delivered, claimed).
    async fn deliver_batch(&self, mailer: &dyn Mailer, stopping: &OutboxStop) -> Result<(usize, usize)> {
        let mut token = [0u8; 16];
        self.rng.fill(&mut token);
        let lease = uuid::Uuid::from_bytes(token);
        let now = self.clock.now();
        let lease_until = now + LEASE;
        let due = self.store.claim_due_messages(now, lease, lease_until, BATCH).await?;
        let claimed = due.len();
        let mut delivered = 0;
        for m in due {
            if stopping.stopping() {
                let given = self.store.release_message_lease(lease, None).await?;
                tracing::info!(
                    messages = given,
                    "the node is stopping: claimed emails not yet sent are given back"
                );
                return Ok((delivered, 0));
            }
            // Never send on a lease about to run out: another worker may claim it then. What is
            // left is claimed again once the lease has expired.
            if self.clock.now() + Duration::minutes(1) > lease_until {
                tracing::warn!(message_id = %m.id, "outbox lease nearly expired; leaving the rest of the batch");
                return Ok((delivered, 0));
            }
            // Being sent until its outcome is recorded: a cut-off meanwhile leaves it leased.
            stopping.sending(Some((lease, m.id)));
            match mailer.send(m.id, &m.email).await {
                Ok(()) => {
                    if !self.store.mark_sent(m.id, lease, self.clock.now()).await? {
                        tracing::warn!(message_id = %m.id, "email sent, but its outbox lease had been lost");
                    }
                    delivered += 1;
                }
                Err(SendError::Temporary(e)) if m.attempts + 1 < MAX_ATTEMPTS => {
                    let retry_at = self.clock.now() + self.backoff(m.attempts);
                    tracing::warn!(message_id = %m.id, attempts = m.attempts + 1, error = %e, "email delivery failed; will retry");
                    self.store.mark_attempt_failed(m.id, lease, Some(retry_at), &e).await?;
                }
                Err(e) => {
                    tracing::error!(message_id = %m.id, error = %e, "email delivery failed; giving up");
                    self.store
                        .mark_attempt_failed(m.id, lease, None, &e.to_string())
                        .await?;
                }
            }
            stopping.sending(None);
        }
        Ok((delivered, claimed))
    }

    /// After a send was cut off at shutdown (it outlasted the grace): the rest of its batch is
    /// given back, but for the message being sent (it may have gone out: its lease lapses, and
    /// it is sent again then, at least once).
    pub async fn give_back_cut_off_batch(&self, stopping: &OutboxStop) -> Result<u64> {
        let sending = *stopping.sending.lock().unwrap_or_else(PoisonError::into_inner);
        match sending {
            Some((lease, message)) => self.store.release_message_lease(lease, Some(message)).await,
            None => Ok(0),
        }
    }

    /// At the start of the only server its database can have (SQLite): the leases a server
    /// that died left on emails, webhook deliveries and usage sweeps are released, so their
    /// work resumes now (see [`crate::store::Store::release_dead_leases`]).
    pub async fn release_dead_leases(&self) -> Result<u64> {
        self.store.release_dead_leases(&self.usage_regions()).await
    }

    /// 5 s, 10 s, 20 s … capped at an hour, plus up to 20% jitter.
    fn backoff(&self, attempts: i64) -> Duration {
        let base = Duration::seconds(5) * 2i32.pow(u32::try_from(attempts.clamp(0, 10)).unwrap_or(10));
        let base = base.min(Duration::hours(1));
        let mut b = [0u8; 1];
        self.rng.fill(&mut b);
        base + base * (f64::from(b[0]) / 255.0 * 0.2)
    }
}
