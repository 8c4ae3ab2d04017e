//! Outgoing email: the transports behind the domain's [`Mailer`] port, and the templates that
//! render the messages.
//!
//! Transports:
//! - [`LogMailer`] (`log`): delivers nothing; writes the whole message at INFO so an operator can
//!   find a link by grepping the recipient's address. The only place a secret (an invitation
//!   link) is logged, by design.
//! - [`SmtpMailer`] (`smtp`): any SMTP relay, plain, STARTTLS or implicit TLS (rustls with the
//!   ring provider).
//! - [`ResendMailer`] (`resend`): Resend's HTTP API.
//!
//! [`build`] picks one from [`MailSettings`]. Every transport maps its failures onto
//! [`SendError::Temporary`] (worth retrying) or [`SendError::Permanent`] (not).

mod log;
mod resend;
mod smtp;
mod templates;

use std::sync::Arc;

pub use quarterdeck_domain::mail::{Email, Mailer, SendError};
use serde::Deserialize;

pub use crate::log::LogMailer;
pub use crate::resend::{DEFAULT_RESEND_API_URL, ResendMailer, ResendSettings};
pub use crate::smtp::{SmtpMailer, SmtpSettings, SmtpTls};
pub use crate::templates::{invitation_email, notice_email, sso_notice_email};

/// Which transport delivers email, with its settings.
///
/// Deserialises from a table tagged by `transport`, for example
/// `{ transport = "smtp", host = "smtp.example.com", port = 587, tls = "starttls", from = "..." }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "transport", rename_all = "lowercase")]
pub enum MailSettings {
    /// Write each message to the log at INFO instead of sending it.
    Log {
        /// The `From` shown in the log line.
        from: String,
    },
    Smtp(SmtpSettings),
    Resend(ResendSettings),
}

/// The transport that `settings` describe. Checks the settings (addresses parse, a key is
/// given, ...) and says what is wrong in the error. Makes no connection.
pub fn build(settings: &MailSettings) -> Result<Arc<dyn Mailer>, String> {
    Ok(match settings {
        MailSettings::Log { from } => Arc::new(LogMailer::new(from.clone())),
        MailSettings::Smtp(s) => Arc::new(SmtpMailer::new(s)?),
        MailSettings::Resend(s) => Arc::new(ResendMailer::new(s)?),
    })
}

/// An error and its sources, joined with `: `.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        source = e.source();
    }
    out
}
