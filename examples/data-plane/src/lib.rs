//! An example data plane: the SaaS product's own service (here an AI gateway) that serves a
//! tenant's applications. Each request carries `Authorization: Bearer <tenant API key>`; the
//! service asks Quarterdeck who is calling (`/v1/data-plane/keys/verify`), fetches the tenant's
//! provider credential (`/v1/data-plane/credentials/resolve`) and answers with the tenant it
//! served — never the credential itself, only its last four characters.
//!
//! It fails closed: when Quarterdeck cannot be asked, nothing is served (503). It keeps no cache
//! of its own (Quarterdeck caches), so a revocation is seen by the next request.

use std::fmt;
use std::sync::Arc;

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

pub use refusal::Refusal;

use quarterdeck::{Credential, Quarterdeck, Verified};

/// The largest request body `/v1/chat` accepts.
const BODY_LIMIT: usize = 64 * 1024;
/// No Quarterdeck key comes close; anything longer is not a key.
const KEY_MAX_LEN: usize = 512;

/// What the service needs to know. `Debug` never prints the service token.
#[derive(Clone)]
pub struct Config {
    /// Quarterdeck's base URL (base host), e.g. `https://quarterdeck.example.com`.
    pub quarterdeck_url: Url,
    /// A `qd_svc_…` service token with the scopes `keys:verify` and `credentials:read`.
    pub service_token: String,
    /// The provider whose credential is resolved for each request, e.g. `openai`.
    pub provider: String,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("quarterdeck_url", &self.quarterdeck_url.as_str())
            .field("service_token", &"[redacted]")
            .field("provider", &self.provider)
            .finish()
    }
}

struct App {
    quarterdeck: Quarterdeck,
    provider: String,
}

/// The service's routes: `POST /v1/chat` and `GET /v1/whoami`.
///
/// Fails (`InvalidInput`) when the Quarterdeck URL is not http(s) or the service token cannot be
/// sent in a header.
pub fn router(config: Config) -> std::io::Result<Router> {
    let app = App {
        quarterdeck: Quarterdeck::new(&config.quarterdeck_url, &config.service_token)?,
        provider: config.provider,
    };
    Ok(Router::new()
        .route("/v1/whoami", get(whoami))
        .route("/v1/chat", post(chat))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(Arc::new(app)))
}

/// Serves [`router`] on `listener` until the listener fails.
pub async fn serve(listener: TcpListener, config: Config) -> std::io::Result<()> {
    axum::serve(listener, router(config)?).await
}

/// The answer to a served request.
#[derive(Debug, Serialize)]
struct Served {
    tenant: ServedTenant,
    key: ServedKey,
    provider: String,
    credential: ServedCredential,
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
    let caller = app.quarterdeck.verify(key).await?;
    let credential = app.quarterdeck.resolve(caller.tenant.id, &app.provider).await?;
    Ok(Json(served(caller, &app.provider, &credential)))
}

/// Stands for the gateway's real work (forwarding the prompt to the provider with the tenant's
/// credential): verifies, reads the body, resolves, and says whom it served.
async fn chat(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Result<Json<Served>, Refusal> {
    let key = bearer_key(&headers)?;
    let caller = app.quarterdeck.verify(key).await?;
    // Only a verified caller's body is looked at, and it is read before the credential is
    // resolved, so a bad request costs no audited credential read.
    let _prompt: serde_json::Value = serde_json::from_slice(&body).map_err(|_| Refusal::InvalidBody)?;
    let credential = app.quarterdeck.resolve(caller.tenant.id, &app.provider).await?;
    Ok(Json(served(caller, &app.provider, &credential)))
}

fn served(caller: Verified, provider: &str, credential: &Credential) -> Served {
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
