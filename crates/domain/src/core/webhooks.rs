//! Webhook endpoints (the owner's: `ManageWebhooks`), delivery, and the events feed.
//!
//! Delivery: [`Core::claim_webhooks`] leases due deliveries (the head of each endpoint × tenant
//! queue, so a tenant's events arrive in order and a retried one holds back the later ones),
//! [`Core::deliver_webhook`] sends one, signed per the Standard Webhooks specification, through
//! the [`WebhookSender`] port (the outbound policy), and records the outcome: delivered,
//! retried after a jittered back-off, or given up after [`RETRY_FOR`]. An endpoint with no
//! success for [`DISABLE_AFTER`] is disabled and the owners are emailed; its deliveries stay
//! pending and go out when it is enabled again. The server runs the loop (`app.rs`): several
//! deliveries in flight, a few per endpoint, so a slow endpoint never holds up the others.

use super::Core;
use crate::access::{Actor, Authorized, ManageWebhooks};
use crate::audit::EventType;
use crate::error::{Error, Result};
use crate::user::{Directory, UserStatus};
use crate::webhook::{
    Attempt, Claimed, DEFAULT_ROLL_GRACE, DISABLE_AFTER, DeliveryView, EVENT_RETENTION, Endpoint, EndpointDraft,
    FeedEvent, MAX_ENDPOINTS, MAX_ROLL_GRACE, Next, RETRY_FOR, WebhookSender, backoff, new_secret, sign,
};
use serde_json::json;
use std::sync::Arc;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

/// How long a claimed delivery is this node's: well past the 10 s an attempt may take.
pub const DELIVERY_LEASE: Duration = Duration::seconds(60);
/// The most events one feed page returns.
pub const MAX_FEED_PAGE: u32 = 500;

/// An endpoint created or its secret rolled: the secret is shown once.
#[derive(Clone)]
pub struct EndpointWithSecret {
    pub endpoint: Endpoint,
    pub secret: String,
}

impl std::fmt::Debug for EndpointWithSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointWithSecret")
            .field("endpoint", &self.endpoint)
            .field("secret", &"[redacted]")
            .finish()
    }
}

/// An endpoint's URL as the audit trail and notices keep it: its origin only. A path or a
/// query may carry the receiver's own credential (`/services/T…/B…/<secret>`, `?token=…`),
/// and the audit trail cannot be purged; so only their presence is kept (`/…`).
fn audited_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => {
            let origin = u.origin().ascii_serialization();
            if u.path() != "/" || u.query().is_some() || u.fragment().is_some() {
                format!("{origin}/…")
            } else {
                origin
            }
        }
        Err(_) => "(unparsable)".to_owned(),
    }
}

/// A page of the events feed: the events (their JSON bodies, as delivered) and the cursor to
/// ask with next (the last event's, or the one asked with when there was none).
#[derive(Clone, Debug)]
pub struct FeedPage {
    pub events: Vec<FeedEvent>,
    pub next_cursor: String,
}

/// The feed's cursor: opaque to callers (`evc_` and the sequence number).
pub fn feed_cursor(seq: i64) -> String {
    format!("evc_{seq}")
}

/// A time as the store keeps it (microseconds), so what is returned equals what is read later.
fn to_micros(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(t.nanosecond() / 1000 * 1000).unwrap_or(t)
}

/// An edit's `updated_at`: now, and always later than the edited version's, so a stale
/// `based_on` is told apart even within one microsecond (or under a frozen test clock).
fn after(old: &Endpoint, now: OffsetDateTime) -> OffsetDateTime {
    to_micros(now).max(old.updated_at + Duration::microseconds(1))
}

fn parse_cursor(s: &str) -> Result<i64> {
    s.strip_prefix("evc_")
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse::<i64>().ok())
        .ok_or_else(|| {
            Error::field(
                "after",
                "invalid_cursor",
                "Use the next_cursor of an earlier page (evc_…).",
            )
        })
}

impl Core {
    /// The port webhooks are sent through (the server gives it the outbound client).
    pub fn set_webhook_sender(&mut self, sender: Arc<dyn WebhookSender>) {
        self.webhooks = sender;
    }

    /// Delivery counts by outcome since this process started (`/metrics`).
    pub fn webhook_counters(&self) -> Vec<(&'static str, u64)> {
        self.webhook_counts.snapshot()
    }

    pub async fn webhook_endpoints(&self, _auth: &Authorized<ManageWebhooks>) -> Result<Vec<Endpoint>> {
        self.store.webhook_endpoints().await
    }

    pub async fn webhook_endpoint(&self, _auth: &Authorized<ManageWebhooks>, id: Uuid) -> Result<Endpoint> {
        self.store.webhook_endpoint(id).await?.ok_or(Error::NotFound)
    }

    /// The URL must be one the outbound policy would send to (https, no private address unless
    /// `outbound_allow_private` allows it): checked now, for a clear message, and again at each
    /// delivery.
    async fn check_endpoint_url(&self, draft: &EndpointDraft) -> Result<()> {
        self.webhooks
            .check(&draft.url)
            .await
            .map_err(|m| Error::field("url", "url_refused", m))
    }

    pub async fn create_webhook_endpoint(
        &self,
        auth: &Authorized<ManageWebhooks>,
        draft: EndpointDraft,
    ) -> Result<EndpointWithSecret> {
        self.check_endpoint_url(&draft).await?;
        let now = to_micros(self.clock.now());
        let id = Uuid::now_v7();
        let secret = new_secret(self.rng.as_ref());
        let endpoint = Endpoint {
            id,
            url: draft.url.to_string(),
            description: draft.description,
            subscription: draft.subscription,
            region: draft.region,
            enabled: draft.enabled,
            disabled_reason: (!draft.enabled).then(|| "manual".to_owned()),
            secret_sealed: self.config.secret_key.seal(&secret, id, self.rng.as_ref())?,
            previous_secret_sealed: None,
            previous_secret_until: None,
            failing_since: None,
            created_at: now,
            updated_at: now,
        };
        let event = self.new_event(
            EventType::WebhookEndpointCreated,
            auth.actor(),
            None,
            json!({ "endpoint_id": id, "url": audited_url(&endpoint.url), "event_types": endpoint.subscription.patterns(),
                    "region": endpoint.region, "enabled": endpoint.enabled }),
        );
        self.store
            .create_webhook_endpoint(&endpoint, MAX_ENDPOINTS, event)
            .await?;
        Ok(EndpointWithSecret { endpoint, secret })
    }

    /// Replaces the URL, description, subscription, region and enabled state. Enabling a
    /// disabled endpoint sends what is pending for it at once.
    ///
    /// `based_on`: the `updated_at` of the endpoint the caller's values were built from (a
    /// form as it was loaded, a PATCH's read). If the endpoint changed since, nothing is
    /// written: `Conflict { code: "endpoint_changed" }`, so one owner's save never silently
    /// undoes another's (a region limit, a new URL).
    pub async fn update_webhook_endpoint(
        &self,
        auth: &Authorized<ManageWebhooks>,
        id: Uuid,
        draft: EndpointDraft,
        based_on: OffsetDateTime,
    ) -> Result<Endpoint> {
        let old = self.webhook_endpoint(auth, id).await?;
        if old.updated_at != based_on {
            return Err(crate::webhook::endpoint_changed());
        }
        if draft.url.as_str() != old.url {
            self.check_endpoint_url(&draft).await?;
        }
        let now = after(&old, self.clock.now());
        let enabling = draft.enabled && !old.enabled;
        let mut e = old.clone();
        e.url = draft.url.to_string();
        e.description = draft.description;
        e.subscription = draft.subscription;
        e.region = draft.region;
        e.enabled = draft.enabled;
        if enabling {
            e.disabled_reason = None;
            e.failing_since = None;
        } else if !draft.enabled && old.enabled {
            e.disabled_reason = Some("manual".to_owned());
        }
        e.updated_at = now;
        let event = self.new_event(
            EventType::WebhookEndpointUpdated,
            auth.actor(),
            None,
            json!({
                "endpoint_id": id, "url": audited_url(&e.url), "event_types": e.subscription.patterns(), "region": e.region,
                "enabled": e.enabled, "previous": { "url": audited_url(&old.url), "event_types": old.subscription.patterns(),
                "region": old.region, "enabled": old.enabled },
            }),
        );
        self.store
            .update_webhook_endpoint(
                &e,
                old.updated_at,
                enabling.then_some(to_micros(self.clock.now())),
                event,
            )
            .await?;
        Ok(e)
    }

    /// Turns an endpoint on or off (the console's button; the API's PATCH of `enabled`).
    pub async fn set_webhook_endpoint_enabled(
        &self,
        auth: &Authorized<ManageWebhooks>,
        id: Uuid,
        enabled: bool,
    ) -> Result<Endpoint> {
        let old = self.webhook_endpoint(auth, id).await?;
        let draft = EndpointDraft {
            url: url::Url::parse(&old.url).map_err(Error::internal)?,
            description: old.description.clone(),
            subscription: old.subscription.clone(),
            region: old.region.clone(),
            enabled,
        };
        if old.enabled == enabled {
            return Ok(old);
        }
        // The URL is unchanged, so not checked again.
        self.update_webhook_endpoint(auth, id, draft, old.updated_at).await
    }

    /// A new signing secret (shown once); the old one keeps signing beside it for `grace`
    /// (default 24 h, at most 7 days), so receivers can switch without losing an event.
    pub async fn roll_webhook_secret(
        &self,
        auth: &Authorized<ManageWebhooks>,
        id: Uuid,
        grace: Option<Duration>,
    ) -> Result<EndpointWithSecret> {
        let grace = grace.unwrap_or(DEFAULT_ROLL_GRACE);
        if grace < Duration::ZERO || grace > MAX_ROLL_GRACE {
            return Err(Error::field(
                "grace_seconds",
                "invalid",
                "between 0 and 604800 (7 days)",
            ));
        }
        let old = self.webhook_endpoint(auth, id).await?;
        let now = after(&old, self.clock.now());
        let secret = new_secret(self.rng.as_ref());
        let mut e = old.clone();
        e.previous_secret_sealed = (grace > Duration::ZERO).then(|| old.secret_sealed.clone());
        e.previous_secret_until = (grace > Duration::ZERO).then_some(now + grace);
        e.secret_sealed = self.config.secret_key.seal(&secret, id, self.rng.as_ref())?;
        e.updated_at = now;
        let event = self.new_event(
            EventType::WebhookEndpointUpdated,
            auth.actor(),
            None,
            json!({ "endpoint_id": id, "secret_rolled": true, "previous_valid_until": e.previous_secret_until.map(crate::webhook::rfc3339) }),
        );
        self.store
            .update_webhook_endpoint(&e, old.updated_at, None, event)
            .await?;
        Ok(EndpointWithSecret { endpoint: e, secret })
    }

    pub async fn delete_webhook_endpoint(&self, auth: &Authorized<ManageWebhooks>, id: Uuid) -> Result<()> {
        let old = self.webhook_endpoint(auth, id).await?;
        let event = self.new_event(
            EventType::WebhookEndpointDeleted,
            auth.actor(),
            None,
            json!({ "endpoint_id": id, "url": audited_url(&old.url) }),
        );
        self.store.delete_webhook_endpoint(id, event).await
    }

    /// The endpoint's deliveries, newest first (`before`: a delivery id, for the next page).
    pub async fn webhook_deliveries(
        &self,
        auth: &Authorized<ManageWebhooks>,
        endpoint: Uuid,
        limit: u32,
        before: Option<Uuid>,
    ) -> Result<Vec<DeliveryView>> {
        self.webhook_endpoint(auth, endpoint).await?;
        self.store
            .webhook_deliveries(endpoint, limit.clamp(1, 200), before)
            .await
    }

    /// Sends a delivery's event to its endpoint again (a new delivery, due now).
    pub async fn resend_webhook_delivery(
        &self,
        auth: &Authorized<ManageWebhooks>,
        endpoint: Uuid,
        delivery: Uuid,
    ) -> Result<DeliveryView> {
        let d = self.store.webhook_delivery(delivery).await?.ok_or(Error::NotFound)?;
        if d.endpoint_id != endpoint {
            return Err(Error::NotFound);
        }
        let new_id = Uuid::now_v7();
        let event = self.new_event(
            EventType::WebhookDeliveryResent,
            auth.actor(),
            None,
            json!({ "endpoint_id": endpoint, "delivery_id": delivery, "new_delivery_id": new_id,
                    "event_id": d.event_id, "event_type": d.event_type }),
        );
        self.store
            .resend_webhook_delivery(delivery, new_id, self.clock.now(), event)
            .await
    }

    /// The events after `after` (a cursor from an earlier page; from the oldest kept without
    /// one), of `types` (all when empty; each must be an event type), at most `limit`.
    pub async fn events_feed(
        &self,
        _auth: &Authorized<ManageWebhooks>,
        after: Option<&str>,
        types: &[String],
        limit: u32,
    ) -> Result<FeedPage> {
        let from = after.map(parse_cursor).transpose()?.unwrap_or(0);
        for t in types {
            if crate::webhook::Topic::parse(t).is_none() {
                return Err(Error::field(
                    "types",
                    "unknown_event_type",
                    format!("“{}” is not an event type", t.chars().take(60).collect::<String>()),
                ));
            }
        }
        let events = self
            .store
            .published_after(from, types, limit.clamp(1, MAX_FEED_PAGE))
            .await?;
        let next_cursor = feed_cursor(events.last().map_or(from, |e| e.seq));
        Ok(FeedPage { events, next_cursor })
    }

    /// Gives back a claim whose attempt was cut off (the node is stopping): the delivery is
    /// due again at once, for any node, instead of when the lease lapses. A claim already
    /// spent (the attempt was recorded) or taken over is left as it is.
    pub async fn release_webhook_claim(&self, delivery: Uuid, lease: Uuid) -> Result<()> {
        self.store.release_webhook_lease(delivery, lease).await
    }

    /// Claims up to `limit` due deliveries for this node, at most `per_endpoint` in flight per
    /// endpoint counting `in_flight` (what this node is sending now).
    pub async fn claim_webhooks(
        &self,
        limit: u32,
        in_flight: &std::collections::HashMap<Uuid, u32>,
        per_endpoint: u32,
    ) -> Result<Vec<Claimed>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now = self.clock.now();
        self.store
            .claim_webhook_deliveries(now, now + DELIVERY_LEASE, limit, in_flight, per_endpoint)
            .await
    }

    /// The headers of one attempt: `webhook-id`, `webhook-timestamp`, `webhook-signature`
    /// (one `v1,` signature per valid secret: two during a roll's grace).
    fn signed_headers(&self, e: &Endpoint, c: &Claimed, now: OffsetDateTime) -> Result<Vec<(String, String)>> {
        let id = c.event_id.to_string();
        let ts = now.unix_timestamp();
        let mut sigs = vec![sign(
            &self.config.secret_key.open(&e.secret_sealed, e.id)?,
            &id,
            ts,
            c.body.as_bytes(),
        )?];
        if let (Some(prev), Some(until)) = (&e.previous_secret_sealed, e.previous_secret_until)
            && now < until
        {
            sigs.push(sign(
                &self.config.secret_key.open(prev, e.id)?,
                &id,
                ts,
                c.body.as_bytes(),
            )?);
        }
        Ok(vec![
            ("content-type".to_owned(), "application/json".to_owned()),
            ("webhook-id".to_owned(), id),
            ("webhook-timestamp".to_owned(), ts.to_string()),
            ("webhook-signature".to_owned(), sigs.join(" ")),
        ])
    }

    /// One attempt of a claimed delivery, and what follows from it. Nothing is sent when the
    /// lease ran out before the attempt could start (another node may hold the delivery now),
    /// nor when the endpoint was disabled or deleted since the claim (the delivery is given
    /// back, unattempted).
    pub async fn deliver_webhook(&self, c: Claimed) -> Result<Attempt> {
        let now = self.clock.now();
        if now >= c.leased_until {
            return Ok(Attempt::Failed {
                code: "lease_expired".to_owned(),
                millis: 0,
            });
        }
        let endpoint = match self.store.webhook_endpoint(c.endpoint_id).await? {
            Some(e) if e.enabled => e,
            other => {
                self.store.release_webhook_lease(c.delivery_id, c.lease).await?;
                let code = if other.is_some() {
                    "endpoint_disabled"
                } else {
                    "endpoint_deleted"
                };
                return Ok(Attempt::Failed {
                    code: code.to_owned(),
                    millis: 0,
                });
            }
        };
        let attempt = match self.signed_headers(&endpoint, &c, now) {
            Ok(headers) => {
                self.webhooks
                    .post(&endpoint.url, headers, c.body.clone().into_bytes())
                    .await
            }
            Err(e) => {
                // A secret that no longer opens (the secret key was changed): an attempt that
                // failed, retried with back-off like any other, and said once in the log.
                tracing::error!(endpoint = %endpoint.id, error = %e, "a webhook could not be signed");
                Attempt::Failed {
                    code: "signing_failed".to_owned(),
                    millis: 0,
                }
            }
        };
        let at = self.clock.now();
        let first = c.first_attempt_at.unwrap_or(now);
        let next = if attempt.ok() {
            Next::Delivered
        } else if at - first >= RETRY_FOR && endpoint.failing_since.is_none_or(|s| at - s < DISABLE_AFTER) {
            // This event keeps failing while others get through: give it up, so the tenant's
            // later events are not held back for ever (Resend sends it again).
            Next::GaveUp
        } else {
            let mut b = [0u8; 2];
            self.rng.fill(&mut b);
            let jitter = f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX);
            Next::RetryAt(at + backoff(c.attempts + 1, jitter))
        };
        self.webhook_counts.count(attempt.outcome());
        if next == Next::GaveUp {
            self.webhook_counts.count("gave_up");
            tracing::warn!(endpoint = %endpoint.id, event = %c.event_id, "a webhook delivery was given up after 3 days of retries");
        }
        let failing = self
            .store
            .finish_webhook_attempt(c.delivery_id, c.lease, at, &attempt, next)
            .await?;
        if let Some(Some(since)) = failing
            && at - since >= DISABLE_AFTER
            && endpoint.enabled
        {
            self.disable_failing(&endpoint, since).await?;
        }
        Ok(attempt)
    }

    async fn disable_failing(&self, e: &Endpoint, since: OffsetDateTime) -> Result<()> {
        let owners: Vec<String> = self
            .store
            .list_users(Directory::Platform)
            .await?
            .into_iter()
            .filter(|u| u.status == UserStatus::Active && u.roles.iter().any(|r| r == "owner"))
            .map(|u| u.email.to_string())
            .collect();
        let link = format!("{}/settings/webhooks/{}", self.config.links.origin(None), e.id);
        let name = match e.description.trim() {
            "" => audited_url(&e.url),
            d => format!("“{d}” ({})", audited_url(&e.url)),
        };
        let message = format!(
            "The webhook endpoint {name} has failed every delivery since {} and was disabled. \
             Its events are kept for 30 days: enable it again to send what is pending.",
            crate::webhook::rfc3339(since)
        );
        let emails: Vec<_> = owners
            .iter()
            .map(|to| {
                (self.config.render_notice)(
                    to,
                    "A webhook endpoint was disabled",
                    &message,
                    "Open the endpoint",
                    &link,
                )
            })
            .collect();
        let event = self.new_event(
            EventType::WebhookEndpointUpdated,
            &Actor::system(),
            None,
            json!({ "endpoint_id": e.id, "url": audited_url(&e.url), "enabled": false, "reason": "failing",
                        "failing_since": crate::webhook::rfc3339(since) }),
        );
        if self.store.disable_failing_endpoint(e.id, since, &emails, event).await? {
            tracing::warn!(endpoint = %e.id, "a webhook endpoint failing for 3 days was disabled; the owners were emailed");
        }
        Ok(())
    }

    /// Drops events (and their deliveries) older than the feed keeps them.
    pub async fn prune_webhook_events(&self) -> Result<u64> {
        self.store
            .prune_webhook_events(self.clock.now() - EVENT_RETENTION)
            .await
    }
}
