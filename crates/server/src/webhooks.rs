//! Webhook delivery on this node: the outbound client as the domain's [`WebhookSender`], and
//! the loop that claims due deliveries and sends them, several at a time.
//!
//! At most [`IN_FLIGHT`] attempts run at once on a node, and at most [`PER_ENDPOINT`] of them
//! for one endpoint, so an endpoint that hangs (each attempt ends after 10 s) holds a few slots
//! and never the others. Claims are leases in the database, so several nodes share the work
//! and each delivery is attempted by one of them at a time.

use crate::app::GIVE_BACK_WITHIN;
use quarterdeck_domain::core::Core;
use quarterdeck_domain::webhook::{Attempt, WebhookSender};
use quarterdeck_outbound::Outbound;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Attempts in flight on one node.
pub const IN_FLIGHT: u32 = 64;
/// Attempts in flight on one node for one endpoint.
pub const PER_ENDPOINT: u32 = 16;
/// How long the loop rests when nothing was due.
const IDLE: Duration = Duration::from_millis(200);
/// The most of an endpoint's answer read (then dropped, so the connection is reused): only
/// its status matters.
const ANSWER_LIMIT: usize = 64 * 1024;

/// Sends through the outbound policy: https (http only to allowed ranges), no private
/// addresses, no redirects, 10 s in all.
pub struct OutboundWebhooks(pub Arc<Outbound>);

#[async_trait::async_trait]
impl WebhookSender for OutboundWebhooks {
    async fn check(&self, url: &url::Url) -> Result<(), String> {
        self.0.check(url.as_str()).await.map_err(|e| e.to_string())
    }

    async fn post(&self, url: &str, headers: Vec<(String, String)>, body: Vec<u8>) -> Attempt {
        let started = Instant::now();
        let result = self.0.post(url, &headers, body, ANSWER_LIMIT).await;
        let millis = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
        match result {
            Ok(status) if (200..300).contains(&status) => Attempt::Delivered { status, millis },
            Ok(status) => Attempt::Status { status, millis },
            Err(quarterdeck_outbound::OutboundError::Redirect(status)) => Attempt::Status { status, millis },
            Err(e) => Attempt::Failed {
                code: e.code().to_owned(),
                millis,
            },
        }
    }
}

/// The in-flight count of each endpoint on this node.
type Busy = Arc<Mutex<HashMap<Uuid, u32>>>;

/// Claims and sends due deliveries until `stop` says the server is stopping (or its sender is
/// gone). Then it claims nothing more and lets the attempts in flight finish, for at most
/// `grace`; an attempt still running after that is cut off and its lease given back at once,
/// so another node (or this one, restarted) sends it without waiting for the lease to lapse.
pub async fn deliver(core: Arc<Core>, mut stop: tokio::sync::watch::Receiver<bool>, grace: Duration) {
    let in_flight: Busy = Arc::default();
    let freed = Arc::new(tokio::sync::Notify::new());
    // The attempts running, and the claim each holds (to give back if it is cut off).
    let mut attempts = tokio::task::JoinSet::new();
    let mut claims: HashMap<tokio::task::Id, (Uuid, Uuid)> = HashMap::new();
    // Claimed after the stop signal came: given back unsent.
    let mut unstarted: Vec<(Uuid, Uuid)> = Vec::new();
    let mut failing = false;
    let stopping = |stop: &tokio::sync::watch::Receiver<bool>| *stop.borrow() || stop.has_changed().is_err();
    while !stopping(&stop) {
        while let Some(done) = attempts.try_join_next_with_id() {
            claims.remove(&done.map_or_else(|e| e.id(), |(id, ())| id));
        }
        let busy = in_flight.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let free = IN_FLIGHT.saturating_sub(busy.values().sum());
        let claimed = match core.claim_webhooks(free, &busy, PER_ENDPOINT).await {
            Ok(c) => {
                if failing {
                    failing = false;
                    tracing::info!("webhook deliveries can be claimed again");
                }
                c
            }
            Err(e) => {
                if !failing {
                    failing = true;
                    tracing::warn!(error = %e, "claiming webhook deliveries failed; trying again");
                }
                Vec::new()
            }
        };
        if claimed.is_empty() {
            // Nothing due now. An attempt that ends may make its tenant's next event due (or
            // free a slot): look again as soon as one does, else after a while.
            tokio::select! {
                _ = stop.changed() => {}
                () = tokio::time::sleep(IDLE), if busy.is_empty() => {}
                _ = tokio::time::timeout(IDLE, freed.notified()), if !busy.is_empty() => {}
            }
            continue;
        }
        if stopping(&stop) {
            // Told to stop while claiming: nothing new is sent after the signal.
            unstarted.extend(claimed.iter().map(|c| (c.delivery_id, c.lease)));
            break;
        }
        for c in claimed {
            let endpoint = c.endpoint_id;
            let claim = (c.delivery_id, c.lease);
            *in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(endpoint)
                .or_default() += 1;
            let (core, in_flight, freed) = (core.clone(), in_flight.clone(), freed.clone());
            let task = attempts.spawn(async move {
                if let Err(e) = core.deliver_webhook(c).await {
                    tracing::warn!(error = %e, endpoint = %endpoint, "a webhook attempt could not be recorded; its lease runs out and it is tried again");
                }
                let mut m = in_flight.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(n) = m.get_mut(&endpoint) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        m.remove(&endpoint);
                    }
                }
                freed.notify_one();
            });
            claims.insert(task.id(), claim);
        }
    }
    finish(&core, attempts, claims, unstarted, grace).await;
}

/// At shutdown: the attempts in flight get until `grace` runs out; the rest are cut off and
/// their claims given back, with those of `unstarted` (within [`GIVE_BACK_WITHIN`]: a
/// database that does not answer then leaves them to lapse).
async fn finish(
    core: &Core,
    mut attempts: tokio::task::JoinSet<()>,
    mut claims: HashMap<tokio::task::Id, (Uuid, Uuid)>,
    unstarted: Vec<(Uuid, Uuid)>,
    grace: Duration,
) {
    let running = attempts.len();
    let deadline = tokio::time::Instant::now() + grace;
    while let Ok(Some(done)) = tokio::time::timeout_at(deadline, attempts.join_next_with_id()).await {
        claims.remove(&done.map_or_else(|e| e.id(), |(id, ())| id));
    }
    if attempts.is_empty() {
        if running > 0 {
            tracing::info!(
                attempts = running,
                "webhook attempts in flight finished after the shutdown signal"
            );
        }
    } else {
        attempts.abort_all();
        while let Some(done) = attempts.join_next_with_id().await {
            // One that finished after all keeps nothing to give back.
            if let Ok((id, ())) = done {
                claims.remove(&id);
            }
        }
        tracing::warn!(
            attempts = claims.len(),
            "webhook attempts still in flight after the shutdown grace period were cut off; their leases are given back"
        );
    }
    let give_back: Vec<(Uuid, Uuid)> = claims.into_values().chain(unstarted).collect();
    let released = async {
        for (delivery, lease) in &give_back {
            if let Err(e) = core.release_webhook_claim(*delivery, *lease).await {
                tracing::warn!(delivery = %delivery, error = %e, "could not give back a webhook lease; it lapses by itself");
            }
        }
    };
    if tokio::time::timeout(GIVE_BACK_WITHIN, released).await.is_err() {
        tracing::warn!("webhook leases could not all be given back in time; the rest lapse by themselves");
    }
}
