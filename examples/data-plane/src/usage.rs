//! Usage reporting: one CloudEvent per meter for each request served, queued in memory and sent
//! to Quarterdeck (`POST /v1/data-plane/usage`) in batches by a background task.
//!
//! Serving never waits for it: recording an event takes a short lock on a bounded queue, and a
//! full queue drops its oldest event (counted and logged) rather than block or grow. The sender
//! flushes every `flush_interval` or as soon as `batch_size` events are waiting; a batch that
//! meets a 429, a 5xx or no answer is sent again, unchanged — the same event ids, so Quarterdeck
//! counts each event once however often it arrives — after `Retry-After` or a growing pause.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::quarterdeck::{Quarterdeck, UsageOutcome};

/// Longest pause between two attempts at one batch.
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// How the service reports usage. `Default`: tokens to `llm.tokens`, requests to `api.requests`,
/// batches of 500 at least every second, at most 10,000 events waiting.
#[derive(Debug, Clone)]
pub struct UsageConfig {
    /// The CloudEvents `source`: this gateway's name and instance, e.g. `gateway-eu-1`.
    /// Quarterdeck deduplicates by (`source`, `id`).
    pub source: String,
    /// The meter (event `type`) for the tokens a request used, `data: {"tokens", "model"}`;
    /// `None` reports none.
    pub token_meter: Option<String>,
    /// The meter for each request served, `data: {"endpoint"}`; `None` reports none.
    pub request_meter: Option<String>,
    /// Most events in one batch (at most Quarterdeck's `usage_max_batch_events`).
    pub batch_size: usize,
    /// The longest an event waits before it is sent.
    pub flush_interval: Duration,
    /// Most events waiting; past it the oldest is dropped.
    pub queue_capacity: usize,
    /// The clock events are dated by (the wall clock unless a test injects another).
    pub now: fn() -> OffsetDateTime,
}

/// The wall clock.
#[expect(
    clippy::disallowed_methods,
    reason = "the example's one reading of the wall clock; UsageConfig::now lets tests inject theirs"
)]
pub fn system_now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

impl Default for UsageConfig {
    fn default() -> Self {
        UsageConfig {
            source: "quarterdeck-example-data-plane".to_owned(),
            token_meter: Some("llm.tokens".to_owned()),
            request_meter: Some("api.requests".to_owned()),
            batch_size: 500,
            flush_interval: Duration::from_secs(1),
            queue_capacity: 10_000,
            now: system_now,
        }
    }
}

/// What one served request used.
pub struct Served<'a> {
    /// The verified key's id: the events' `subject`.
    pub key_id: Uuid,
    /// The route served, e.g. `/v1/chat`.
    pub endpoint: &'a str,
    /// The model and the tokens used, when the request used any.
    pub tokens: Option<(&'a str, u64)>,
}

/// The queue and its counters, shared by the request handlers and the sender.
pub struct Reporter {
    config: UsageConfig,
    queue: Mutex<VecDeque<Value>>,
    wake: Notify,
    dropped: AtomicU64,
}

impl Reporter {
    pub fn new(mut config: UsageConfig) -> Arc<Reporter> {
        config.batch_size = config.batch_size.max(1);
        config.queue_capacity = config.queue_capacity.max(config.batch_size);
        Arc::new(Reporter {
            config,
            queue: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            dropped: AtomicU64::new(0),
        })
    }

    /// Whether any meter is configured at all.
    pub fn enabled(&self) -> bool {
        self.config.token_meter.is_some() || self.config.request_meter.is_some()
    }

    /// Queues the events of one served request. Never waits on the network.
    pub fn record(&self, served: &Served<'_>) {
        let now = (self.config.now)().format(&Rfc3339).unwrap_or_default();
        let mut events = Vec::with_capacity(2);
        if let (Some(meter), Some((model, tokens))) = (&self.config.token_meter, served.tokens) {
            events.push(self.event(meter, served.key_id, &now, json!({ "tokens": tokens, "model": model })));
        }
        if let Some(meter) = &self.config.request_meter {
            events.push(self.event(meter, served.key_id, &now, json!({ "endpoint": served.endpoint })));
        }
        for event in events {
            self.push(event);
        }
    }

    fn event(&self, meter: &str, subject: Uuid, time: &str, data: Value) -> Value {
        json!({
            "specversion": "1.0",
            "id": Uuid::now_v7(),
            "source": self.config.source,
            "type": meter,
            "subject": subject,
            "time": time,
            "datacontenttype": "application/json",
            "data": data,
        })
    }

    fn push(&self, event: Value) {
        let waiting = {
            let mut queue = self.queue();
            let dropped = if queue.len() >= self.config.queue_capacity {
                queue.pop_front();
                Some(self.dropped.fetch_add(1, Ordering::Relaxed) + 1)
            } else {
                None
            };
            queue.push_back(event);
            if let Some(total) = dropped {
                // The first drop, then every thousandth: a full queue must not flood the log.
                if total == 1 || total % 1000 == 0 {
                    tracing::warn!(dropped_total = total, "usage queue full; dropped the oldest event");
                }
            }
            queue.len()
        };
        if waiting >= self.config.batch_size {
            self.wake.notify_one();
        }
    }

    /// Events dropped because the queue was full, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Events waiting to be sent.
    pub fn waiting(&self) -> usize {
        self.queue().len()
    }

    pub(crate) fn take_batch(&self) -> Vec<Value> {
        let mut queue = self.queue();
        let n = queue.len().min(self.config.batch_size);
        queue.drain(..n).collect()
    }

    fn queue(&self) -> MutexGuard<'_, VecDeque<Value>> {
        // A panic while holding the lock leaves a queue of whole events: keep using it.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends what is waiting now, batch by batch, each until Quarterdeck has it.
    pub async fn flush(&self, quarterdeck: &Quarterdeck) {
        loop {
            let batch = self.take_batch();
            if batch.is_empty() {
                return;
            }
            send(quarterdeck, batch).await;
        }
    }

    /// The sender: flushes every `flush_interval`, or sooner when a batch is full. Runs until
    /// the runtime stops.
    pub async fn run(self: Arc<Self>, quarterdeck: Quarterdeck) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.config.flush_interval) => {}
                () = self.wake.notified() => {}
            }
            self.flush(&quarterdeck).await;
        }
    }
}

/// What Quarterdeck answers a batch it took (200).
#[derive(Deserialize)]
pub struct BatchAnswer {
    pub accepted: usize,
    pub rejected: Vec<RejectedEvent>,
}

#[derive(Deserialize)]
pub struct RejectedEvent {
    pub id: Option<String>,
    pub code: String,
}

/// Sends one batch until Quarterdeck has taken it, or has refused it for good (a 4xx other than
/// 429: retrying the same body would not help; logged as an error).
async fn send(quarterdeck: &Quarterdeck, batch: Vec<Value>) {
    let body = Value::Array(batch);
    let mut pause = Duration::from_millis(250);
    loop {
        match quarterdeck.report_usage(&body).await {
            UsageOutcome::Taken(answer) => {
                for rejected in &answer.rejected {
                    // Permanent: the event is wrong (unknown meter, bad time, …), not the moment.
                    tracing::warn!(id = ?rejected.id, code = %rejected.code, "Quarterdeck rejected a usage event");
                }
                tracing::debug!(accepted = answer.accepted, "usage batch sent");
                return;
            }
            UsageOutcome::Refused { status, code } => {
                let events = body.as_array().map_or(0, Vec::len);
                tracing::error!(%status, %code, events, "Quarterdeck refused a usage batch; dropped it");
                return;
            }
            UsageOutcome::Later { retry_after } => {
                let wait = retry_after.map_or(pause, |d| d.min(MAX_PAUSE * 2));
                tracing::warn!(
                    wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    "usage batch not taken; sending it again"
                );
                tokio::time::sleep(wait).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
        }
    }
}
