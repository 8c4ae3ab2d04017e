//! The `smtp` transport: lettre over Tokio, TLS by rustls with the ring provider.

use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::{AsyncSmtpTransportBuilder, Error as SmtpError};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use quarterdeck_domain::mail::{Email, Mailer, SendError};
use serde::Deserialize;

use crate::error_chain;

/// The limit on connecting and on each SMTP command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// The limit on one whole delivery (connect, TLS, AUTH, the transaction).
const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// How the connection to the SMTP server is secured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain text. Only for a relay on the same host or a trusted network (or a test server).
    None,
    /// Plain connection upgraded with STARTTLS, which is required: a server that does not offer
    /// it is an error. Usually port 587.
    #[default]
    StartTls,
    /// TLS from the first byte ("SMTPS"). Usually port 465.
    Tls,
}

/// Where and how to reach the SMTP server.
#[derive(Clone, Deserialize)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    /// With `password`; both or neither. Empty counts as not set.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// `none`, `starttls` (the default) or `tls`.
    #[serde(default)]
    pub tls: SmtpTls,
    /// The `From` of every message, `Name <address>` or a bare address.
    pub from: String,
}

impl fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("from", &self.from)
            .finish()
    }
}

/// Sends through an SMTP server, reusing connections from a small pool.
///
/// Failures: a 5xx reply (recipient refused, authentication failed, ...) or a recipient that is
/// not an address is [`SendError::Permanent`]; everything else (connection refused, timeouts, 4xx
/// replies, TLS and protocol trouble) is [`SendError::Temporary`].
pub struct SmtpMailer {
    host: String,
    port: u16,
    tls: SmtpTls,
    from: Mailbox,
    builder: AsyncSmtpTransportBuilder,
    /// Built on the first send: the pool spawns its clean-up task, which needs a Tokio runtime.
    transport: OnceLock<AsyncSmtpTransport<Tokio1Executor>>,
}

impl fmt::Debug for SmtpMailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpMailer")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl SmtpMailer {
    /// Checks the settings; makes no connection (and needs no runtime).
    pub fn new(settings: &SmtpSettings) -> Result<Self, String> {
        let host = settings.host.trim();
        if host.is_empty() {
            return Err("smtp: host is empty".to_owned());
        }
        if settings.port == 0 {
            return Err("smtp: port must be between 1 and 65535".to_owned());
        }
        let from: Mailbox = settings
            .from
            .parse()
            .map_err(|e| format!("smtp: from {:?} is not an email address: {e}", settings.from))?;
        let username = settings.username.as_deref().filter(|u| !u.is_empty());
        let password = settings.password.as_deref().filter(|p| !p.is_empty());
        let credentials = match (username, password) {
            (Some(u), Some(p)) => Some(Credentials::new(u.to_owned(), p.to_owned())),
            (None, None) => None,
            (Some(_), None) => return Err("smtp: username is set but password is not".to_owned()),
            (None, Some(_)) => return Err("smtp: password is set but username is not".to_owned()),
        };
        let builder = match settings.tls {
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
            SmtpTls::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
                .map_err(|e| format!("smtp: STARTTLS to {host}: {}", error_chain(&e)))?,
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host)
                .map_err(|e| format!("smtp: TLS to {host}: {}", error_chain(&e)))?,
        };
        let mut builder = builder.port(settings.port).timeout(Some(COMMAND_TIMEOUT));
        if let Some(c) = credentials {
            builder = builder.credentials(c);
        }
        Ok(Self {
            host: host.to_owned(),
            port: settings.port,
            tls: settings.tls,
            from,
            builder,
            transport: OnceLock::new(),
        })
    }

    fn message(&self, id: uuid::Uuid, email: &Email) -> Result<Message, SendError> {
        let to: Mailbox = email
            .to
            .parse()
            .map_err(|e| SendError::Permanent(format!("recipient {:?} is not an email address: {e}", email.to)))?;
        Message::builder()
            // The outbox message's id, the same at every attempt: a copy sent again after a
            // crash carries the Message-ID of the first, so mail systems treat it as one.
            .message_id(Some(format!("<{id}@{}>", self.from.email.domain())))
            .from(self.from.clone())
            .to(to)
            .subject(email.subject.clone())
            .multipart(MultiPart::alternative_plain_html(
                email.text.clone(),
                email.html.clone(),
            ))
            .map_err(|e| SendError::Permanent(format!("cannot build the message: {e}")))
    }

    fn classify(&self, err: &SmtpError) -> SendError {
        let detail = format!("smtp {}:{}: {}", self.host, self.port, error_chain(err));
        if err.is_permanent() {
            SendError::Permanent(detail)
        } else {
            SendError::Temporary(detail)
        }
    }
}

#[async_trait]
impl Mailer for SmtpMailer {
    fn transport(&self) -> &'static str {
        "smtp"
    }

    async fn send(&self, id: uuid::Uuid, email: &Email) -> Result<(), SendError> {
        let message = self.message(id, email)?;
        let transport = self
            .transport
            .get_or_init(|| self.builder.clone().build::<Tokio1Executor>());
        match tokio::time::timeout(SEND_TIMEOUT, transport.send(message)).await {
            Ok(Ok(response)) => {
                tracing::debug!(
                    transport = "smtp",
                    to = %email.to.escape_debug(),
                    reply = %response.code(),
                    "email accepted by the SMTP server"
                );
                Ok(())
            }
            Ok(Err(e)) => Err(self.classify(&e)),
            Err(_) => Err(SendError::Temporary(format!(
                "smtp {}:{}: delivery took longer than {} s",
                self.host,
                self.port,
                SEND_TIMEOUT.as_secs()
            ))),
        }
    }
}
