//! What the server counts for `/metrics`, through the `metrics` crate's `Recorder` (the server
//! gives each `Core` its own Prometheus recorder, so two servers in one process — the tests —
//! never mix their numbers; nothing is installed globally).
//!
//! Labels never carry customer data: outcomes and reasons are fixed words, routes are the
//! matched templates (`/tenants/{id}`), never paths.

use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder, Unit};
use std::sync::Arc;

const META: Metadata<'static> = Metadata::new("quarterdeck", Level::INFO, Some(module_path!()));

pub const HTTP_REQUESTS: &str = "quarterdeck_http_requests_total";
pub const HTTP_DURATION: &str = "quarterdeck_http_request_duration_seconds";
pub const SIGN_INS: &str = "quarterdeck_sign_ins_total";
pub const SSO_SIGN_INS: &str = "quarterdeck_sso_sign_ins_total";
pub const KEY_VERIFICATIONS: &str = "quarterdeck_key_verifications_total";
pub const KEY_LOOKUPS: &str = "quarterdeck_key_verification_lookups_total";
pub const WEBHOOK_DELIVERIES: &str = "quarterdeck_webhook_deliveries_total";
pub const USAGE_EVENTS: &str = "quarterdeck_usage_events_total";
pub const OUTBOX_PENDING: &str = "quarterdeck_outbox_pending";
pub const OUTBOX_OLDEST: &str = "quarterdeck_outbox_oldest_pending_age_seconds";
pub const TENANT_POOLS_OPEN: &str = "quarterdeck_tenant_pools_open";
pub const PASSWORD_HASH_QUEUE: &str = "quarterdeck_password_hash_queue_depth";
pub const PASSWORD_HASH_ACTIVE: &str = "quarterdeck_password_hash_active";
pub const DB_CONNECTIONS: &str = "quarterdeck_db_pool_connections";
pub const BUILD_INFO: &str = "quarterdeck_build_info";

/// The latency buckets of `quarterdeck_http_request_duration_seconds` (seconds).
pub const HTTP_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Outcomes of a password sign-in.
pub const SIGN_IN_OUTCOMES: &[&str] = &[
    "success",
    "invalid_credentials",
    "throttled",
    "tenant_suspended",
    "busy",
    "error",
];
/// Protocols of a single sign-on (`unknown`: an answer whose attempt named no provider).
pub const SSO_PROTOCOLS: &[&str] = &["oidc", "saml", "unknown"];
/// Outcomes of a single sign-on: `success`, the refusal's reason (as in its `SIGN_IN_FAILED`
/// event), or `error` (the server failed).
pub const SSO_OUTCOMES: &[&str] = &[
    "success",
    "attempt_invalid",
    "provider_error",
    "invalid_response",
    "replayed",
    "not_configured",
    "email_not_verified",
    "account_exists",
    "not_provisioned",
    "user_suspended",
    "error",
];
/// Outcomes of a data-plane key verification (`valid`, a refusal's code, or `busy` / `error`).
pub const KEY_OUTCOMES: &[&str] = &[
    "valid",
    "unknown",
    "expired",
    "revoked",
    "tenant_suspended",
    "budget_exceeded",
    "rate_limited",
    "busy",
    "error",
];

/// The numbers a scrape reads from the store (each at most one small query).
#[derive(Clone, Debug, Default)]
pub struct StoreGauges {
    /// Emails waiting in the outbox.
    pub outbox_pending: u64,
    /// Seconds since the oldest waiting email was queued (0 when none waits).
    pub outbox_oldest_age_seconds: f64,
    /// Tenant connection pools open now.
    pub tenant_pools_open: u64,
    /// Control database connections: open, and of those idle.
    pub control_connections: u64,
    pub control_idle: u64,
}

/// The recorder and the handles the core counts with.
#[derive(Clone)]
pub struct Meters {
    recorder: Arc<dyn Recorder + Send + Sync>,
}

impl Default for Meters {
    fn default() -> Self {
        Self::new(Arc::new(metrics::NoopRecorder))
    }
}

impl std::fmt::Debug for Meters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Meters")
    }
}

impl Meters {
    /// Describes every family (their `# HELP`) and registers every fixed outcome at zero, so a
    /// scrape shows each series before it first happens.
    pub fn new(recorder: Arc<dyn Recorder + Send + Sync>) -> Self {
        let m = Self { recorder };
        let counters: &[(&'static str, &'static str)] = &[
            (
                HTTP_REQUESTS,
                "HTTP requests by matched route template, method and status.",
            ),
            (SIGN_INS, "Password sign-ins (console and portal) by outcome."),
            (
                SSO_SIGN_INS,
                "Single sign-ons (OIDC and SAML, console and portal) by protocol and outcome.",
            ),
            (
                KEY_VERIFICATIONS,
                "Data-plane API key verifications by outcome (valid, or the refusal).",
            ),
            (
                KEY_LOOKUPS,
                "Database lookups made by data-plane key verifications that missed this node's cache.",
            ),
            (
                WEBHOOK_DELIVERIES,
                "Webhook delivery attempts by outcome; gave_up counts deliveries abandoned after 3 days of retries.",
            ),
            (
                USAGE_EVENTS,
                "Usage events received by the data plane, by result (accepted, rejected; refused_backlog: in a batch refused whole because the sweep is behind).",
            ),
        ];
        for (name, help) in counters {
            m.recorder.describe_counter((*name).into(), None, (*help).into());
        }
        let gauges: &[(&'static str, &'static str)] = &[
            (OUTBOX_PENDING, "Emails waiting in the outbox (read when scraped)."),
            (
                OUTBOX_OLDEST,
                "Age of the oldest email waiting in the outbox, 0 when none waits (read when scraped).",
            ),
            (TENANT_POOLS_OPEN, "Tenant database pools open on this node."),
            (PASSWORD_HASH_QUEUE, "Password hashes waiting for a hashing slot."),
            (PASSWORD_HASH_ACTIVE, "Password hashes being computed now."),
            (
                DB_CONNECTIONS,
                "Control database connections of this node, by state (idle, in_use).",
            ),
            (BUILD_INFO, "The running version and storage backend (always 1)."),
        ];
        for (name, help) in gauges {
            m.recorder.describe_gauge((*name).into(), None, (*help).into());
        }
        m.recorder.describe_histogram(
            HTTP_DURATION.into(),
            Some(Unit::Seconds),
            "HTTP request latency by matched route template and method.".into(),
        );
        for o in SIGN_IN_OUTCOMES {
            m.counter(SIGN_INS, &[("outcome", o)]).absolute(0);
        }
        for p in SSO_PROTOCOLS {
            for o in SSO_OUTCOMES {
                m.counter(SSO_SIGN_INS, &[("protocol", p), ("outcome", o)]).absolute(0);
            }
        }
        for o in KEY_OUTCOMES {
            m.counter(KEY_VERIFICATIONS, &[("outcome", o)]).absolute(0);
        }
        for r in ["accepted", "rejected", "refused_backlog"] {
            m.counter(USAGE_EVENTS, &[("result", r)]).absolute(0);
        }
        m
    }

    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        self.recorder.register_counter(&key(name, labels), &META)
    }

    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        self.recorder.register_gauge(&key(name, labels), &META)
    }

    pub fn histogram(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Histogram {
        self.recorder.register_histogram(&key(name, labels), &META)
    }

    pub fn sign_in(&self, outcome: &'static str) {
        self.counter(SIGN_INS, &[("outcome", outcome)]).increment(1);
    }

    pub fn sso_sign_in(&self, protocol: &'static str, outcome: &'static str) {
        self.counter(SSO_SIGN_INS, &[("protocol", protocol), ("outcome", outcome)])
            .increment(1);
    }

    pub fn key_verification(&self, outcome: &'static str) {
        self.counter(KEY_VERIFICATIONS, &[("outcome", outcome)]).increment(1);
    }

    pub fn usage_events(&self, accepted: u64, rejected: u64) {
        self.counter(USAGE_EVENTS, &[("result", "accepted")])
            .increment(accepted);
        self.counter(USAGE_EVENTS, &[("result", "rejected")])
            .increment(rejected);
    }

    /// A batch of `events` refused whole with `usage_backlog` (the sweep is behind).
    pub fn usage_backlog_refusal(&self, events: u64) {
        self.counter(USAGE_EVENTS, &[("result", "refused_backlog")])
            .increment(events);
    }

    /// One finished HTTP request (`route` is the matched template or `unmatched`).
    pub fn http_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let status = status.to_string();
        self.counter(
            HTTP_REQUESTS,
            &[("route", route), ("method", method), ("status", &status)],
        )
        .increment(1);
        self.histogram(HTTP_DURATION, &[("route", route), ("method", method)])
            .record(seconds);
    }
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    Key::from_parts(
        name,
        labels
            .iter()
            .map(|(k, v)| Label::new(*k, (*v).to_owned()))
            .collect::<Vec<_>>(),
    )
}
