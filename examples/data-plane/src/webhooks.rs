//! Quarterdeck's webhooks, received at `POST /quarterdeck/webhooks`: the gateway learns of its
//! tenants' lifecycle without polling. The endpoint subscribes to `tenant.*`.
//!
//! Each delivery is verified per the Standard Webhooks specification before anything is done
//! with it: `webhook-signature` holds one or more `v1,<base64 HMAC-SHA256>` over
//! `{webhook-id}.{webhook-timestamp}.{body}` keyed with the secret's base64 after `whsec_` (two
//! during a roll's grace: either may match), and `webhook-timestamp` must be within five minutes
//! of now. A delivery that does not verify is answered 401 and ignored. Deliveries are at least
//! once: a `webhook-id` already applied is answered 2xx and not applied again.
//!
//! What the gateway does with them ([`Tenants`]): `tenant.created` provisions the tenant (here a
//! record; a real gateway would create the tenant's resources), `tenant.updated` and
//! `tenant.status_changed` keep its slug and status, `tenant.deleted` deprovisions it. A
//! tenant whose status is `suspended` is refused at the gateway (403 `tenant_suspended`) from
//! the moment its event arrives, whatever a verification answered before. Quarterdeck sends
//! one tenant's events in order, so applying each as it comes is enough.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use time::OffsetDateTime;
use uuid::Uuid;

/// How far a delivery's timestamp may be from now, either way (the specification's default).
pub const TOLERANCE_SECONDS: i64 = 5 * 60;
/// How many delivery ids are remembered for deduplication.
const SEEN_CAPACITY: usize = 10_000;

/// How the webhooks are received. `Debug` never prints the secret.
#[derive(Clone)]
pub struct WebhookConfig {
    /// The endpoint's signing secret (`whsec_…`), shown once when the endpoint was created or
    /// its secret rolled. During a roll, give both: either verifies.
    pub secrets: Vec<String>,
    /// What the gateway knows of its tenants; share a clone to look at it.
    pub tenants: Tenants,
    /// The clock the timestamps are checked against (the wall clock; tests inject theirs).
    pub now: fn() -> OffsetDateTime,
}

impl WebhookConfig {
    pub fn new(secret: impl Into<String>) -> WebhookConfig {
        WebhookConfig {
            secrets: vec![secret.into()],
            tenants: Tenants::default(),
            now: crate::usage::system_now,
        }
    }
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("secrets", &format!("[{} redacted]", self.secrets.len()))
            .finish_non_exhaustive()
    }
}

/// How much older than the last applied event an event must be to be ignored as sent again.
const STALE_SLACK: time::Duration = time::Duration::minutes(1);

/// A tenant as the gateway knows it from its events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantState {
    pub slug: String,
    /// `active`, `read_only` or `suspended`, as the last event said.
    pub status: String,
    /// Provisioned by `tenant.created`; false once `tenant.deleted` deprovisioned it.
    pub provisioned: bool,
    /// When the last event applied happened (its `timestamp`): an older one arriving later (a
    /// Resend, or an event given up and sent again) is not applied over it.
    pub as_of: Option<OffsetDateTime>,
}

/// The gateway's tenants, by id, as their events told it; shared by the receiver and the
/// request handlers.
#[derive(Clone, Debug, Default)]
pub struct Tenants(Arc<Mutex<HashMap<Uuid, TenantState>>>);

impl Tenants {
    pub fn get(&self, id: Uuid) -> Option<TenantState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).get(&id).cloned()
    }

    /// Refused at the gateway: the tenant's last status event said suspended.
    pub fn suspended(&self, id: Uuid) -> bool {
        self.get(id).is_some_and(|t| t.status == "suspended")
    }

    /// Applies a tenant event. Events arrive in order per tenant, except a delivery sent again
    /// (Resend, or one given up after 3 days and resent): so an event older than what was
    /// applied already is ignored, and a deleted tenant is never provisioned again.
    fn apply(&self, event_type: &str, at: Option<OffsetDateTime>, data: &Value) {
        let tenant = &data["tenant"];
        let Some(id) = tenant["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()) else {
            return;
        };
        let slug = tenant["slug"].as_str().unwrap_or_default().to_owned();
        let status = tenant["status"].as_str().unwrap_or_default().to_owned();
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = map.get(&id) {
            // A minute's slack: events of one tenant a few milliseconds apart may carry times
            // from two nodes' clocks, or be committed in the other order than they were
            // stamped; a Resend comes much later (and a recent id is caught by `first_time`).
            let stale = matches!((known.as_of, at), (Some(k), Some(a)) if a + STALE_SLACK < k);
            if stale || known.status == "deleted" {
                tracing::info!(tenant_id = %id, event_type, "an older or post-deletion tenant event ignored");
                return;
            }
        }
        match event_type {
            "tenant.created" => {
                tracing::info!(tenant_id = %id, slug, "tenant provisioned");
                map.insert(
                    id,
                    TenantState {
                        slug,
                        status,
                        provisioned: true,
                        as_of: at,
                    },
                );
            }
            "tenant.updated" | "tenant.status_changed" => {
                if event_type == "tenant.status_changed" {
                    tracing::info!(tenant_id = %id, status, "tenant status changed");
                }
                let entry = map.entry(id).or_insert_with(|| TenantState {
                    slug: slug.clone(),
                    status: status.clone(),
                    // Created before this gateway listened: provision it now.
                    provisioned: true,
                    as_of: at,
                });
                entry.slug = slug;
                entry.status = status;
                entry.as_of = at;
            }
            "tenant.deleted" => {
                tracing::info!(tenant_id = %id, "tenant deprovisioned");
                let entry = map.entry(id).or_insert_with(|| TenantState {
                    slug,
                    status: String::new(),
                    provisioned: false,
                    as_of: at,
                });
                entry.provisioned = false;
                entry.status = "deleted".to_owned();
                entry.as_of = at;
            }
            _ => {}
        }
    }
}

/// The receiver's state: the config and the ids already applied.
pub(crate) struct Receiver {
    config: WebhookConfig,
    keys: Vec<Vec<u8>>,
    seen: Mutex<(HashSet<String>, VecDeque<String>)>,
}

impl Receiver {
    /// Fails (`InvalidInput`) when a secret is not `whsec_` and base64.
    pub(crate) fn new(config: WebhookConfig) -> std::io::Result<Receiver> {
        let keys = config
            .secrets
            .iter()
            .map(|s| {
                base64::engine::general_purpose::STANDARD
                    .decode(s.trim().strip_prefix("whsec_").unwrap_or(s.trim()))
                    .ok()
                    .filter(|k| !k.is_empty())
                    .ok_or_else(|| {
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidInput,
                            "a webhook secret is not `whsec_` followed by base64",
                        )
                    })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        if keys.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "no webhook secret",
            ));
        }
        Ok(Receiver {
            config,
            keys,
            seen: Mutex::new((HashSet::new(), VecDeque::new())),
        })
    }

    pub(crate) fn tenants(&self) -> &Tenants {
        &self.config.tenants
    }

    /// The delivery's id when its signature and timestamp verify.
    fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Option<String> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let id = header("webhook-id")?;
        let ts = header("webhook-timestamp")?;
        let timestamp: i64 = ts.parse().ok()?;
        let now = (self.config.now)().unix_timestamp();
        if (now - timestamp).abs() > TOLERANCE_SECONDS {
            return None;
        }
        let signatures = header("webhook-signature")?;
        let verified = signatures.split(' ').any(|sig| {
            let Some(b64) = sig.strip_prefix("v1,") else {
                return false;
            };
            let Ok(given) = base64::engine::general_purpose::STANDARD.decode(b64) else {
                return false;
            };
            self.keys.iter().any(|key| {
                let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(key) else {
                    return false;
                };
                mac.update(id.as_bytes());
                mac.update(b".");
                mac.update(ts.as_bytes());
                mac.update(b".");
                mac.update(body);
                // Constant-time comparison.
                mac.verify_slice(&given).is_ok()
            })
        });
        verified.then(|| id.to_owned())
    }

    /// True the first time an id is seen (then remembered, among the last 10,000).
    fn first_time(&self, id: &str) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let (set, order) = &mut *seen;
        if set.contains(id) {
            return false;
        }
        set.insert(id.to_owned());
        order.push_back(id.to_owned());
        if order.len() > SEEN_CAPACITY
            && let Some(old) = order.pop_front()
        {
            set.remove(&old);
        }
        true
    }
}

/// `POST /quarterdeck/webhooks`.
pub(crate) async fn receive(State(rx): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(id) = rx.verify(&headers, &body) else {
        tracing::warn!("a webhook delivery did not verify; ignored");
        return (StatusCode::UNAUTHORIZED, Json(json!({ "error": "invalid_signature" }))).into_response();
    };
    let Ok(event) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, Json(json!({ "error": "invalid_body" }))).into_response();
    };
    if rx.first_time(&id) {
        let event_type = event["type"].as_str().unwrap_or_default();
        let at = event["timestamp"]
            .as_str()
            .and_then(|t| OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok());
        rx.config.tenants.apply(event_type, at, &event["data"]);
    }
    StatusCode::NO_CONTENT.into_response()
}
