//! The two calls this service makes to Quarterdeck, and how their answers become a verified
//! caller, a credential or a [`Refusal`].
//!
//! Stateless on purpose: every request asks Quarterdeck, so a revoked key or a suspended tenant is
//! refused at once. Quarterdeck keeps its own cache of verified keys (invalidated across its nodes
//! within 1 s) and answers in well under a millisecond when warm, so a second cache here would only
//! stretch the time a revoked key keeps working.

use std::io;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use serde::Deserialize;
use serde_json::json;
use url::Url;
use uuid::Uuid;

use crate::refusal::Refusal;
use crate::usage::BatchAnswer;

/// Every call to Quarterdeck ends within this time, connection included.
const TIMEOUT: Duration = Duration::from_secs(2);
/// A usage batch (up to a few hundred KiB, off the request path) may take longer.
const USAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// A caller whose key Quarterdeck vouched for.
#[derive(Debug, Clone)]
pub struct Verified {
    pub tenant: Tenant,
    pub key: Key,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Tenant {
    pub id: Uuid,
    pub slug: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Key {
    pub id: Uuid,
    pub name: String,
    pub scopes: Vec<String>,
}

/// The tenant's credential for a provider. Deliberately no `Debug`: it holds the secret fields.
pub struct Credential {
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// The answer of `POST /v1/data-plane/keys/verify` (200), valid or not.
#[derive(Deserialize)]
struct VerifyAnswer {
    valid: bool,
    tenant: Option<Tenant>,
    key: Option<Key>,
    code: Option<String>,
    retry_after_seconds: Option<u64>,
}

/// Quarterdeck's error body: `{"error": {"code", "message", …}}`.
#[derive(Deserialize)]
struct ErrorAnswer {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
}

/// The client for Quarterdeck's data-plane API: one connection pool, the service token as a
/// sensitive header (never printed, never logged). Cloning shares the pool.
#[derive(Clone)]
pub struct Quarterdeck {
    http: reqwest::Client,
    verify_url: Url,
    resolve_url: Url,
    usage_url: Url,
    authorization: HeaderValue,
}

/// What became of a usage batch.
pub enum UsageOutcome {
    /// Taken (200): each event accepted or rejected on its own.
    Taken(BatchAnswer),
    /// Refused for good (a 4xx other than 429): the same body would be refused again.
    Refused { status: StatusCode, code: String },
    /// Not taken now (429, 5xx, unreachable, timed out): send the same batch again, after
    /// `retry_after` when Quarterdeck said.
    Later { retry_after: Option<Duration> },
}

impl Quarterdeck {
    pub fn new(base: &Url, service_token: &str) -> io::Result<Self> {
        if !matches!(base.scheme(), "http" | "https") {
            return Err(invalid_input("the Quarterdeck URL must be http or https"));
        }
        let mut authorization = HeaderValue::try_from(format!("Bearer {service_token}"))
            .map_err(|_| invalid_input("the service token holds characters a header cannot carry"))?;
        authorization.set_sensitive(true);
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(io::Error::other)?;
        Ok(Quarterdeck {
            http,
            verify_url: endpoint(base, &["v1", "data-plane", "keys", "verify"])?,
            resolve_url: endpoint(base, &["v1", "data-plane", "credentials", "resolve"])?,
            usage_url: endpoint(base, &["v1", "data-plane", "usage"])?,
            authorization,
        })
    }

    /// Asks Quarterdeck whether `key` may be served.
    pub async fn verify(&self, key: &str) -> Result<Verified, Refusal> {
        let response = self.post(&self.verify_url, json!({ "key": key })).await?;
        if response.status() != StatusCode::OK {
            tracing::error!(status = %response.status(), "Quarterdeck refused to verify a key; failing closed");
            return Err(Refusal::QuarterdeckUnavailable);
        }
        let answer: VerifyAnswer = response.json().await.map_err(|e| {
            tracing::error!(error = %e, "unreadable verification answer; failing closed");
            Refusal::QuarterdeckUnavailable
        })?;
        verification(answer)
    }

    /// Fetches the tenant's credential for `provider`.
    pub async fn resolve(&self, tenant_id: Uuid, provider: &str) -> Result<Credential, Refusal> {
        let body = json!({ "tenant_id": tenant_id, "provider": provider });
        let response = self.post(&self.resolve_url, body).await?;
        match response.status() {
            StatusCode::OK => {
                #[derive(Deserialize)]
                struct Resolved {
                    fields: serde_json::Map<String, serde_json::Value>,
                }
                let resolved: Resolved = response.json().await.map_err(|e| {
                    tracing::error!(error = %e, "unreadable credential answer; failing closed");
                    Refusal::QuarterdeckUnavailable
                })?;
                Ok(Credential {
                    fields: resolved.fields,
                })
            }
            StatusCode::NOT_FOUND => Err(Refusal::ProviderCredentialMissing),
            StatusCode::FORBIDDEN => {
                // Either the tenant was suspended since its key was verified, or our service token
                // lacks `credentials:read` (our misconfiguration, not the caller's fault).
                let code = response
                    .json::<ErrorAnswer>()
                    .await
                    .map(|a| a.error.code)
                    .unwrap_or_default();
                if code == "tenant_suspended" {
                    Err(Refusal::TenantSuspended)
                } else {
                    tracing::error!(%code, "Quarterdeck refused to resolve a credential; failing closed");
                    Err(Refusal::QuarterdeckUnavailable)
                }
            }
            status => {
                tracing::error!(%status, "Quarterdeck refused to resolve a credential; failing closed");
                Err(Refusal::QuarterdeckUnavailable)
            }
        }
    }

    /// Sends a batch of usage events (a JSON array of CloudEvents).
    pub async fn report_usage(&self, batch: &serde_json::Value) -> UsageOutcome {
        let sent = self
            .http
            .post(self.usage_url.clone())
            .header(AUTHORIZATION, self.authorization.clone())
            .header(CONTENT_TYPE, "application/cloudevents-batch+json")
            .timeout(USAGE_TIMEOUT)
            .body(batch.to_string())
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => {
                tracing::warn!(error = %causes(&e), "Quarterdeck unreachable for usage");
                return UsageOutcome::Later { retry_after: None };
            }
        };
        let status = response.status();
        if status == StatusCode::OK {
            return match response.json::<BatchAnswer>().await {
                Ok(answer) => UsageOutcome::Taken(answer),
                // The body was cut or garbled on its way back: sending again is safe (same ids).
                Err(_) => UsageOutcome::Later { retry_after: None },
            };
        }
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            return UsageOutcome::Later { retry_after };
        }
        let code = response
            .json::<ErrorAnswer>()
            .await
            .map(|a| a.error.code)
            .unwrap_or_default();
        UsageOutcome::Refused { status, code }
    }

    async fn post(&self, url: &Url, body: serde_json::Value) -> Result<reqwest::Response, Refusal> {
        self.http
            .post(url.clone())
            .header(AUTHORIZATION, self.authorization.clone())
            .json(&body)
            .send()
            .await
            .map_err(|e| {
                // The error names the URL, never the headers, so the token stays out of the log.
                tracing::error!(error = %causes(&e), "Quarterdeck unreachable; failing closed");
                Refusal::QuarterdeckUnavailable
            })
    }
}

/// A verification answer in this service's terms.
fn verification(answer: VerifyAnswer) -> Result<Verified, Refusal> {
    if answer.valid {
        return match (answer.tenant, answer.key) {
            (Some(tenant), Some(key)) => Ok(Verified { tenant, key }),
            _ => {
                tracing::error!("a valid verification answer without tenant or key; failing closed");
                Err(Refusal::QuarterdeckUnavailable)
            }
        };
    }
    match answer.code.as_deref() {
        Some("unknown") => Err(Refusal::UnknownKey),
        Some("expired") => Err(Refusal::ExpiredKey),
        Some("revoked") => Err(Refusal::RevokedKey),
        Some("tenant_suspended") => Err(Refusal::TenantSuspended),
        Some("budget_exceeded") => Err(Refusal::BudgetExceeded),
        Some("rate_limited") => Err(Refusal::RateLimited {
            retry_after_seconds: answer.retry_after_seconds.unwrap_or(1),
        }),
        other => {
            // A code newer than this example: still a "no".
            tracing::warn!(code = ?other, "unrecognised refusal code; answering as an unknown key");
            Err(Refusal::UnknownKey)
        }
    }
}

/// `base` with `segments` appended to its path (a path prefix such as `/quarterdeck/` is kept).
fn endpoint(base: &Url, segments: &[&str]) -> io::Result<Url> {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.path_segments_mut()
        .map_err(|()| invalid_input("the Quarterdeck URL cannot carry a path"))?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

/// An error and its sources on one line ("error sending request: connection refused").
fn causes(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

fn invalid_input(message: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}
