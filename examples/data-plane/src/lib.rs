//! An example data plane: the SaaS product's own service (here an AI gateway) that serves a
//! tenant's applications. Each request carries `Authorization: Bearer <tenant API key>`; the
//! service asks Quarterdeck who is calling (`/v1/data-plane/keys/verify`), fetches the tenant's
//! provider credential (`/v1/data-plane/credentials/resolve`) and answers with the tenant it
//! served — never the credential itself, only its last four characters.
//!
//! It fails closed: when Quarterdeck cannot be asked, nothing is served (503). It keeps no cache
//! of its own (Quarterdeck caches), so a revocation is seen by the next request.
//!
//! Each request served is reported as usage (`/v1/data-plane/usage`, see [`usage`]): the tokens
//! it used and the request itself, with the verified key as the subject, sent in batches in the
//! background.
//!
//! With a webhook secret configured, it also receives Quarterdeck's `tenant.*` webhooks at
//! `POST /quarterdeck/webhooks` (see [`webhooks`]): verified, it provisions a tenant on
//! `tenant.created` and refuses a tenant's traffic once `tenant.status_changed` says suspended.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::routing::{get, post};
use serde::Serialize;
use tokio::net::TcpListener;
use url::Url;
use uuid::Uuid;

mod quarterdeck;
mod refusal;
pub mod usage;
pub mod webhooks;

pub use refusal::Refusal;
pub use usage::UsageConfig;
pub use webhooks::{TenantState, Tenants, WebhookConfig};

use quarterdeck::{Credential, Quarterdeck, Verified};

/// The largest request body `/v1/chat` accepts.
const BODY_LIMIT: usize = 64 * 1024;
/// No Quarterdeck key comes close; anything longer is not a key.
const KEY_MAX_LEN: usize = 512;
/// The model a chat gets when it names none.
const DEFAULT_MODEL: &str = "gpt-4o-mini";
/// Longest model name a chat may ask for (it becomes a usage dimension).
const MODEL_MAX_LEN: usize = 64;
/// How long a stopping service keeps sending the usage still queued.
const FINAL_FLUSH: Duration = Duration::from_secs(5);

/// What the service needs to know. `Debug` never prints the service token.
#[derive(Clone)]
pub struct Config {
    /// Quarterdeck's base URL (base host), e.g. `https://quarterdeck.example.com`.
    pub quarterdeck_url: Url,
    /// A `qd_svc_…` service token with the scopes `keys:verify`, `credentials:read` and
    /// `usage:write`.
    pub service_token: String,
    /// The provider whose credential is resolved for each request, e.g. `openai`.
    pub provider: String,
    /// How usage is reported.
    pub usage: UsageConfig,
    /// Quarterdeck's webhooks (`POST /quarterdeck/webhooks`), when an endpoint's secret is
    /// given; `None`: no webhook route.
    pub webhooks: Option<WebhookConfig>,
}

impl Config {
    /// A configuration with the default usage reporting.
    pub fn new(quarterdeck_url: Url, service_token: impl Into<String>, provider: impl Into<String>) -> Config {
        Config {
            quarterdeck_url,
            service_token: service_token.into(),
            provider: provider.into(),
            usage: UsageConfig::default(),
            webhooks: None,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("quarterdeck_url", &self.quarterdeck_url.as_str())
            .field("service_token", &"[redacted]")
            .field("provider", &self.provider)
            .field("usage", &self.usage)
            .field("webhooks", &self.webhooks)
            .finish()
    }
}

struct App {
    quarterdeck: Quarterdeck,
    provider: String,
    usage: Arc<usage::Reporter>,
    /// The tenants as their webhooks told (with webhooks configured).
    tenants: Option<Tenants>,
}

impl App {
    /// Who Quarterdeck says is calling, unless the tenant's webhooks said it is suspended.
    async fn verify(&self, key: &str) -> Result<Verified, Refusal> {
        let caller = self.quarterdeck.verify(key).await?;
        if self.tenants.as_ref().is_some_and(|t| t.suspended(caller.tenant.id)) {
            return Err(Refusal::TenantSuspended);
        }
        Ok(caller)
    }
}

/// The service's routes: `POST /v1/chat` and `GET /v1/whoami`; starts the usage sender on the
/// current Tokio runtime.
///
/// Fails (`InvalidInput`) when the Quarterdeck URL is not http(s) or the service token cannot be
/// sent in a header, (`Other`) outside a Tokio runtime.
pub fn router(config: Config) -> std::io::Result<Router> {
    Ok(start(config)?.0)
}

fn start(config: Config) -> std::io::Result<(Router, Arc<App>)> {
    let quarterdeck = Quarterdeck::new(&config.quarterdeck_url, &config.service_token)?;
    let usage = usage::Reporter::new(config.usage);
    if usage.enabled() {
        let runtime = tokio::runtime::Handle::try_current().map_err(std::io::Error::other)?;
        runtime.spawn(usage.clone().run(quarterdeck.clone()));
    }
    let receiver = config.webhooks.map(webhooks::Receiver::new).transpose()?.map(Arc::new);
    let app = Arc::new(App {
        quarterdeck,
        provider: config.provider,
        usage,
        tenants: receiver.as_ref().map(|r| r.tenants().clone()),
    });
    let mut router = Router::new()
        .route("/v1/whoami", get(whoami))
        .route("/v1/chat", post(chat))
        .with_state(app.clone());
    if let Some(receiver) = receiver {
        router = router.merge(
            Router::new()
                .route("/quarterdeck/webhooks", post(webhooks::receive))
                .with_state(receiver),
        );
    }
    Ok((router.layer(DefaultBodyLimit::max(BODY_LIMIT)), app))
}

/// Serves [`router`] on `listener` until the listener fails.
pub async fn serve(listener: TcpListener, config: Config) -> std::io::Result<()> {
    serve_until(listener, config, std::future::pending()).await
}

/// Serves [`router`] on `listener` until `shutdown` completes, then finishes the requests in
/// progress and sends the usage still queued (for at most 5 s).
pub async fn serve_until(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (router, app) = start(config)?;
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await?;
    if tokio::time::timeout(FINAL_FLUSH, app.usage.flush(&app.quarterdeck))
        .await
        .is_err()
    {
        tracing::warn!(lost = app.usage.waiting(), "stopped before all usage was sent");
    }
    Ok(())
}

/// The answer to a served request.
#[derive(Debug, Serialize)]
struct Served {
    tenant: ServedTenant,
    key: ServedKey,
    provider: String,
    credential: ServedCredential,
    /// What the request used (chats only).
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Used>,
}

/// Tokens in the manner of the providers' answers.
#[derive(Debug, Clone, Serialize)]
struct Used {
    model: String,
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

#[derive(Debug, Serialize)]
struct ServedTenant {
    id: Uuid,
    slug: String,
}

#[derive(Debug, Serialize)]
struct ServedKey {
    id: Uuid,
    name: String,
    scopes: Vec<String>,
}

#[derive(Debug, Serialize)]
struct ServedCredential {
    last_four: Option<String>,
}

async fn whoami(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Json<Served>, Refusal> {
    let key = bearer_key(&headers)?;
    let caller = app.verify(key).await?;
    let credential = app.quarterdeck.resolve(caller.tenant.id, &app.provider).await?;
    app.usage.record(&usage::Served {
        key_id: caller.key.id,
        endpoint: "/v1/whoami",
        tokens: None,
    });
    Ok(Json(served(caller, &app.provider, &credential, None)))
}

/// Stands for the gateway's real work (forwarding the prompt to the provider with the tenant's
/// credential): verifies, reads the body, resolves, "completes" (see [`complete`]), says whom
/// it served and reports what was used.
async fn chat(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Result<Json<Served>, Refusal> {
    let key = bearer_key(&headers)?;
    let caller = app.verify(key).await?;
    // Only a verified caller's body is looked at, and it is read before the credential is
    // resolved, so a bad request costs no audited credential read.
    let prompt: serde_json::Value = serde_json::from_slice(&body).map_err(|_| Refusal::InvalidBody)?;
    let used = complete(&prompt)?;
    let credential = app.quarterdeck.resolve(caller.tenant.id, &app.provider).await?;
    app.usage.record(&usage::Served {
        key_id: caller.key.id,
        endpoint: "/v1/chat",
        tokens: Some((&used.model, used.total_tokens)),
    });
    Ok(Json(served(caller, &app.provider, &credential, Some(used))))
}

/// The stand-in for the provider: it echoes the prompt, so the completion has as many tokens
/// as the prompt, counted as one token per four characters (at least one). The prompt is the
/// body's `prompt` string, or else the whole body; the model is `model` (a plain name of up to
/// 64 characters), else `gpt-4o-mini`.
fn complete(body: &serde_json::Value) -> Result<Used, Refusal> {
    let model = match body.get("model") {
        None => DEFAULT_MODEL.to_owned(),
        Some(serde_json::Value::String(m))
            if !m.is_empty()
                && m.len() <= MODEL_MAX_LEN
                && m.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/')) =>
        {
            m.clone()
        }
        Some(_) => return Err(Refusal::InvalidBody),
    };
    let chars = match body.get("prompt") {
        Some(serde_json::Value::String(p)) => p.chars().count(),
        _ => body.to_string().chars().count(),
    };
    let prompt_tokens = u64::try_from(chars.div_ceil(4).max(1)).unwrap_or(u64::MAX);
    Ok(Used {
        model,
        prompt_tokens,
        completion_tokens: prompt_tokens,
        total_tokens: prompt_tokens.saturating_mul(2),
    })
}

fn served(caller: Verified, provider: &str, credential: &Credential, usage: Option<Used>) -> Served {
    tracing::info!(tenant_id = %caller.tenant.id, key_id = %caller.key.id, provider, "served");
    let api_key = credential.fields.get("api_key").and_then(|v| v.as_str());
    Served {
        tenant: ServedTenant {
            id: caller.tenant.id,
            slug: caller.tenant.slug,
        },
        key: ServedKey {
            id: caller.key.id,
            name: caller.key.name,
            scopes: caller.key.scopes,
        },
        provider: provider.to_owned(),
        credential: ServedCredential {
            last_four: api_key.and_then(last_four),
        },
        usage,
    }
}

/// The last four characters of a secret, only when it is long enough (8+) that they say little.
fn last_four(secret: &str) -> Option<String> {
    let chars: Vec<char> = secret.chars().collect();
    (chars.len() >= 8).then(|| chars[chars.len() - 4..].iter().collect())
}

/// The key of `Authorization: Bearer <key>` (scheme case-insensitive). Anything else — no header,
/// another scheme, an empty or over-long key, a key with spaces — is a missing key.
fn bearer_key(headers: &HeaderMap) -> Result<&str, Refusal> {
    let value = headers.get(AUTHORIZATION).ok_or(Refusal::MissingKey)?;
    let value = value.to_str().map_err(|_| Refusal::MissingKey)?;
    let (scheme, key) = value.split_once(' ').ok_or(Refusal::MissingKey)?;
    let key = key.trim();
    let well_formed = scheme.eq_ignore_ascii_case("bearer")
        && !key.is_empty()
        && key.len() <= KEY_MAX_LEN
        && !key.contains(char::is_whitespace);
    if well_formed { Ok(key) } else { Err(Refusal::MissingKey) }
}

#[cfg(test)]
mod tests;
