//! Outgoing email: the message, and the port its transports implement.
//!
//! Messages are rendered by the domain's callers (templates live with the mail crate), written
//! to an outbox in the same transaction as the change that caused them, and delivered by a
//! worker through a [`Mailer`]. Transports: `log` (the whole message at INFO, by design),
//! `smtp`, `resend`.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// A rendered email, ready to send.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Email {
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Why a delivery attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Worth retrying later (connection refused, timeout, 5xx, 429).
    #[error("temporary delivery failure: {0}")]
    Temporary(String),
    /// Retrying will not help (address refused, bad credentials, 4xx).
    #[error("permanent delivery failure: {0}")]
    Permanent(String),
}

/// A way to deliver email.
#[async_trait]
pub trait Mailer: Send + Sync {
    /// `log`, `smtp` or `resend`.
    fn transport(&self) -> &'static str;
    /// Send `email`. `id` is the outbox message's id, the same at every attempt: a transport
    /// names the message by it (SMTP `Message-ID`, Resend `Idempotency-Key`), so a message
    /// sent again after a crash (at least once) is recognised as the same message.
    async fn send(&self, id: uuid::Uuid, email: &Email) -> Result<(), SendError>;
}
