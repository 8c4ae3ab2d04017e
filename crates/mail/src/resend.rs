//! The `resend` transport: Resend's HTTP API (`POST /emails`).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use quarterdeck_domain::mail::{Email, Mailer, SendError};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde::{Deserialize, Serialize};

use crate::error_chain;

/// Resend's API, unless the settings say otherwise.
pub const DEFAULT_RESEND_API_URL: &str = "https://api.resend.com";

/// The limit on connecting, and on a whole request.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an error response's body goes into the error.
const MAX_ERROR_BODY: usize = 300;

fn default_api_url() -> String {
    DEFAULT_RESEND_API_URL.to_owned()
}

/// How to reach Resend.
#[derive(Clone, Deserialize)]
pub struct ResendSettings {
    /// `re_...`. Never logged.
    pub api_key: String,
    /// The `From` of every message, on a domain verified with Resend.
    pub from: String,
    /// The API's base; messages go to `{api_url}/emails`. [`DEFAULT_RESEND_API_URL`] unless set.
    #[serde(default = "default_api_url")]
    pub api_url: String,
}

impl fmt::Debug for ResendSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResendSettings")
            .field("api_key", &"<redacted>")
            .field("from", &self.from)
            .field("api_url", &self.api_url)
            .finish()
    }
}

/// Sends through Resend's HTTP API.
///
/// Failures: 429, 408 and 5xx answers, and connection errors and timeouts, are
/// [`SendError::Temporary`]; any other 4xx (validation, bad key, unverified domain, ...) is
/// [`SendError::Permanent`].
pub struct ResendMailer {
    client: reqwest::Client,
    endpoint: reqwest::Url,
    authorization: HeaderValue,
    from: String,
}

impl fmt::Debug for ResendMailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResendMailer")
            .field("endpoint", &self.endpoint.as_str())
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct SendEmailRequest<'a> {
    from: &'a str,
    to: [&'a str; 1],
    subject: &'a str,
    text: &'a str,
    html: &'a str,
}

impl ResendMailer {
    /// Checks the settings; makes no connection.
    pub fn new(settings: &ResendSettings) -> Result<Self, String> {
        let key = settings.api_key.trim();
        if key.is_empty() {
            return Err("resend: api_key is empty".to_owned());
        }
        let mut authorization = HeaderValue::from_str(&format!("Bearer {key}"))
            .map_err(|_| "resend: api_key has characters a header cannot carry".to_owned())?;
        authorization.set_sensitive(true);
        if settings.from.trim().is_empty() {
            return Err("resend: from is empty".to_owned());
        }
        let base = settings.api_url.trim().trim_end_matches('/');
        let endpoint = reqwest::Url::parse(&format!("{base}/emails"))
            .map_err(|e| format!("resend: api_url {:?} is not a URL: {e}", settings.api_url))?;
        if !matches!(endpoint.scheme(), "https" | "http") {
            return Err(format!("resend: api_url {:?} must be http(s)", settings.api_url));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(TIMEOUT)
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("quarterdeck/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("resend: cannot build the HTTP client: {}", error_chain(&e)))?;
        Ok(Self {
            client,
            endpoint,
            authorization,
            from: settings.from.clone(),
        })
    }
}

#[async_trait]
impl Mailer for ResendMailer {
    fn transport(&self) -> &'static str {
        "resend"
    }

    async fn send(&self, id: uuid::Uuid, email: &Email) -> Result<(), SendError> {
        let body = SendEmailRequest {
            from: &self.from,
            to: [&email.to],
            subject: &email.subject,
            text: &email.text,
            html: &email.html,
        };
        let response = self
            .client
            .post(self.endpoint.clone())
            .header(AUTHORIZATION, self.authorization.clone())
            // Resend keeps an idempotency key for 24 hours: an attempt repeated after a crash
            // (the outbox delivers at least once) is answered without sending a second email.
            .header("Idempotency-Key", format!("quarterdeck-{id}"))
            .json(&body)
            .send()
            .await
            .map_err(|e| {
                let detail = format!("resend: {}", error_chain(&e));
                if e.is_builder() {
                    SendError::Permanent(detail)
                } else {
                    SendError::Temporary(detail)
                }
            })?;
        let status = response.status();
        // The body only explains an error, or names the message on success: losing it is fine.
        let text = response.text().await.unwrap_or_default();
        if status.is_success() {
            let id = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_owned))
                .unwrap_or_default();
            tracing::debug!(
                transport = "resend",
                to = %email.to.escape_debug(),
                id = %id.escape_debug(),
                "email accepted by Resend"
            );
            return Ok(());
        }
        let detail = format!("resend: HTTP {status}: {}", explain(&text));
        if is_temporary(status) {
            Err(SendError::Temporary(detail))
        } else {
            Err(SendError::Permanent(detail))
        }
    }
}

/// Worth retrying: rate limited, timed out on their side, or their fault.
fn is_temporary(status: StatusCode) -> bool {
    !status.is_client_error() || status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::REQUEST_TIMEOUT
}

/// Resend's `{"name": ..., "message": ...}`, else the start of the body.
fn explain(body: &str) -> String {
    let parsed = serde_json::from_str::<serde_json::Value>(body).ok();
    let field = |k: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(k))
            .and_then(|x| x.as_str())
            .map(str::to_owned)
    };
    let text = match (field("name"), field("message")) {
        (Some(n), Some(m)) => format!("{n}: {m}"),
        (None, Some(m)) => m,
        _ if body.trim().is_empty() => "(no body)".to_owned(),
        _ => body.trim().to_owned(),
    };
    text.chars().take(MAX_ERROR_BODY).collect()
}
