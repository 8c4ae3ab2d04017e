//! Delivering the outbox: due messages go through the configured transport; temporary failures
//! are retried with exponential back-off (and jitter), permanent ones and exhausted retries are
//! marked failed. A message is marked sent only after the transport accepted it, by the one
//! worker of the process, so each is delivered once.

use super::Core;
use crate::error::Result;
use crate::mail::{Mailer, SendError};
use time::Duration;

/// Attempts before a message is given up.
pub const MAX_ATTEMPTS: i64 = 12;

impl Core {
    /// Deliver what is due now; returns how many were delivered.
    pub async fn deliver_due(&self, mailer: &dyn Mailer) -> Result<usize> {
        let due = self.store.due_messages(self.clock.now(), 20).await?;
        let mut delivered = 0;
        for m in due {
            match mailer.send(&m.email).await {
                Ok(()) => {
                    self.store.mark_sent(m.id, self.clock.now()).await?;
                    delivered += 1;
                }
                Err(SendError::Temporary(e)) if m.attempts + 1 < MAX_ATTEMPTS => {
                    let retry_at = self.clock.now() + self.backoff(m.attempts);
                    tracing::warn!(message_id = %m.id, attempts = m.attempts + 1, error = %e, "email delivery failed; will retry");
                    self.store.mark_attempt_failed(m.id, Some(retry_at), &e).await?;
                }
                Err(e) => {
                    tracing::error!(message_id = %m.id, error = %e, "email delivery failed; giving up");
                    self.store.mark_attempt_failed(m.id, None, &e.to_string()).await?;
                }
            }
        }
        Ok(delivered)
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
