//! Events to the product: the public event catalog (stable, versioned payloads, never the audit
//! trail's internals), webhook endpoints and their subscriptions, Standard Webhooks signing, and
//! the retry schedule. Delivery is driven by `core/webhooks.rs`; the store writes each event in
//! the transaction of the change that causes it (the outbox) and fans it out to the endpoints
//! that subscribe.

use crate::api_key::ApiKey;
use crate::budget::{Budget, Crossing};
use crate::error::{Error, FieldError, Problems, Result};
use crate::ids::TenantId;
use crate::impersonation::Impersonation;
use crate::tenant::{Tenant, TenantStatus};
use crate::usage::Month;
use crate::user::User;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

/// The payloads' schema version, in every event (`"version": 1`). A field is only ever added
/// within a version; removing or changing one makes version 2.
pub const SCHEMA_VERSION: u32 = 1;
/// A delivery is retried for this long after its first attempt, then given up.
pub const RETRY_FOR: Duration = Duration::days(3);
/// An endpoint that has had no success for this long is disabled (and its owners emailed).
pub const DISABLE_AFTER: Duration = Duration::days(3);
/// Events are kept (and readable from the feed) this long.
pub const EVENT_RETENTION: Duration = Duration::days(30);
/// The longest a rolled secret stays valid beside the new one.
pub const MAX_ROLL_GRACE: Duration = Duration::days(7);
/// The default grace of a rolled secret.
pub const DEFAULT_ROLL_GRACE: Duration = Duration::hours(24);
/// The first retry's delay; each further retry doubles it, up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::seconds(5);
pub const MAX_BACKOFF: Duration = Duration::hours(2);
/// At most this many endpoints (a mature product's limits are of this order: Svix 50, Stripe 16
/// per mode); each event costs a delivery row per subscribed endpoint.
pub const MAX_ENDPOINTS: usize = 50;
/// The longest endpoint URL accepted.
pub const MAX_URL_CHARS: usize = 2048;
/// The longest description.
pub const MAX_DESCRIPTION_CHARS: usize = 200;

macro_rules! topics {
    ($($v:ident => $s:literal,)*) => {
        /// An event type of the public catalog.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Topic { $($v,)* }
        impl Topic {
            pub const ALL: &'static [Topic] = &[$(Topic::$v,)*];
            pub fn as_str(self) -> &'static str {
                match self { $(Topic::$v => $s,)* }
            }
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some(Topic::$v),)* _ => None }
            }
        }
    };
}

topics! {
    TenantCreated => "tenant.created",
    TenantUpdated => "tenant.updated",
    TenantStatusChanged => "tenant.status_changed",
    TenantDeleted => "tenant.deleted",
    UserInvited => "user.invited",
    UserActivated => "user.activated",
    UserRolesChanged => "user.roles_changed",
    UserSuspended => "user.suspended",
    UserDeleted => "user.deleted",
    ApiKeyCreated => "api_key.created",
    ApiKeyRevoked => "api_key.revoked",
    ProviderCredentialChanged => "provider_credential.changed",
    BudgetThresholdReached => "budget.threshold_reached",
    BudgetExceeded => "budget.exceeded",
    ImpersonationStarted => "impersonation.started",
    ImpersonationEnded => "impersonation.ended",
}

impl std::fmt::Display for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an endpoint subscribes to: exact event types, a family (`tenant.*`), or everything
/// (`*`). Parsed at the edge: every pattern names at least one event type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription(Vec<String>);

impl Subscription {
    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> std::result::Result<Self, String> {
        let mut out: Vec<String> = Vec::new();
        for p in patterns {
            let p = p.as_ref().trim();
            if p.is_empty() {
                continue;
            }
            if !Topic::ALL.iter().any(|t| pattern_matches(p, *t)) {
                return Err(format!(
                    "“{}” is not an event type (nor `family.*`, nor `*`)",
                    clip(p, 60)
                ));
            }
            if !out.iter().any(|o| o == p) {
                out.push(p.to_owned());
            }
        }
        if out.is_empty() {
            return Err("choose at least one event type".to_owned());
        }
        out.sort();
        Ok(Self(out))
    }
    /// What the store kept (already parsed once): kept as it is.
    pub fn from_stored(patterns: Vec<String>) -> Self {
        Self(patterns)
    }
    pub fn patterns(&self) -> &[String] {
        &self.0
    }
    pub fn matches(&self, topic: Topic) -> bool {
        self.0.iter().any(|p| pattern_matches(p, topic))
    }
    /// Stored as one line, space-separated (no pattern holds a space).
    pub fn to_stored(&self) -> String {
        self.0.join(" ")
    }
    pub fn parse_stored(s: &str) -> Self {
        Self(s.split_whitespace().map(str::to_owned).collect())
    }
}

fn pattern_matches(pattern: &str, topic: Topic) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix(".*") {
        Some(family) => topic.as_str().split('.').next() == Some(family),
        None => pattern == topic.as_str(),
    }
}

fn clip(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// A public event a change publishes: attached to its audit event ([`crate::audit::NewEvent`]),
/// written by the store in the same transaction. Its id is the audit event's id.
#[derive(Clone, Debug)]
pub struct Published {
    pub topic: Topic,
    pub tenant_id: Option<TenantId>,
    /// The tenant's region when the publisher has the tenant at hand (the store looks it up
    /// otherwise): a tenant's own events carry it, as its row may not exist yet or any more
    /// when the event is written.
    pub region: Option<String>,
    /// The tenant's region before the change, when the change moved it: endpoints limited to
    /// either region hear of the move.
    pub previous_region: Option<String>,
    pub data: Value,
    /// Written late, by the reconcile pass after a crash, when its subject had changed since:
    /// the body says `"late": true`, so a receiver knows a newer state may already be applied.
    pub late: bool,
}

fn tenant_json(t: &Tenant) -> Value {
    json!({
        "id": t.id, "slug": t.slug, "name": t.name, "region": t.region, "tier": t.tier,
        "status": t.status, "metadata": t.metadata,
        "created_at": rfc3339(t.created_at), "updated_at": rfc3339(t.updated_at),
    })
}

fn user_json(u: &User) -> Value {
    json!({
        "id": u.id, "email": u.email, "name": u.name, "status": u.status, "roles": u.roles,
        "tenant_id": u.tenant_id, "created_at": rfc3339(u.created_at),
    })
}

fn api_key_json(k: &ApiKey) -> Value {
    json!({
        "id": k.id, "tenant_id": k.tenant_id, "name": k.name, "scopes": k.scopes, "prefix": k.prefix,
        "last_four": k.last_four, "created_at": rfc3339(k.created_at),
        "expires_at": k.expires_at.map(rfc3339), "revoked_at": k.revoked_at.map(rfc3339),
    })
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Published {
    /// `tenant.updated` for a tenant whose region changed from `previous`.
    pub fn moved_from(mut self, previous: &str) -> Self {
        if self.region.as_deref() != Some(previous) {
            self.previous_region = Some(previous.to_owned());
        }
        self
    }

    /// `tenant.created`, `tenant.updated`, `tenant.deleted`: the tenant as it is after the change.
    pub fn tenant(topic: Topic, t: &Tenant) -> Self {
        Self {
            topic,
            tenant_id: Some(t.id),
            region: Some(t.region.as_str().to_owned()),
            previous_region: None,
            late: false,
            data: json!({ "tenant": tenant_json(t) }),
        }
    }
    pub fn tenant_status_changed(t: &Tenant, previous: TenantStatus, reason: Option<&str>) -> Self {
        Self {
            topic: Topic::TenantStatusChanged,
            tenant_id: Some(t.id),
            region: Some(t.region.as_str().to_owned()),
            previous_region: None,
            late: false,
            data: json!({ "tenant": tenant_json(t), "previous_status": previous, "reason": reason }),
        }
    }
    /// `user.invited`, `user.activated`, `user.suspended`, `user.deleted`: the user after the
    /// change (`tenant_id` null for a platform user).
    pub fn user(topic: Topic, u: &User) -> Self {
        Self {
            topic,
            tenant_id: u.tenant_id,
            region: None,
            previous_region: None,
            late: false,
            data: json!({ "user": user_json(u) }),
        }
    }
    pub fn user_roles_changed(u: &User, previous: &[String]) -> Self {
        Self {
            topic: Topic::UserRolesChanged,
            tenant_id: u.tenant_id,
            region: None,
            previous_region: None,
            late: false,
            data: json!({ "user": user_json(u), "previous_roles": previous }),
        }
    }
    pub fn api_key(topic: Topic, k: &ApiKey) -> Self {
        Self {
            topic,
            tenant_id: Some(k.tenant_id),
            region: None,
            previous_region: None,
            late: false,
            data: json!({ "api_key": api_key_json(k) }),
        }
    }
    /// `provider_credential.changed`: `action` is `set` or `deleted`; never a secret.
    pub fn provider_credential(tenant: TenantId, credential_id: Uuid, provider: &str, action: &str) -> Self {
        Self {
            topic: Topic::ProviderCredentialChanged,
            tenant_id: Some(tenant),
            region: None,
            previous_region: None,
            late: false,
            data: json!({
                "provider_credential": { "id": credential_id, "tenant_id": tenant, "provider": provider },
                "action": action,
            }),
        }
    }
    /// `budget.threshold_reached`, `budget.exceeded`: amounts in minor units.
    pub fn budget(crossing: Crossing, budget: &Budget, month: Month, spent: i64, currency: &str) -> Self {
        Self {
            topic: match crossing {
                Crossing::Threshold => Topic::BudgetThresholdReached,
                Crossing::Exceeded => Topic::BudgetExceeded,
            },
            tenant_id: Some(budget.tenant_id),
            region: None,
            previous_region: None,
            late: false,
            data: json!({
                "budget": {
                    "tenant_id": budget.tenant_id, "month": month.to_string(), "amount": budget.amount,
                    "currency": currency, "threshold_percent": budget.threshold_percent,
                    "hard_limit": budget.hard_limit,
                },
                "spent": spent,
            }),
        }
    }
    pub fn impersonation(topic: Topic, imp: &Impersonation, end_reason: Option<&str>) -> Self {
        Self {
            topic,
            tenant_id: Some(imp.tenant_id),
            region: None,
            previous_region: None,
            late: false,
            data: json!({
                "impersonation": {
                    "id": imp.id, "tenant_id": imp.tenant_id, "impersonator_id": imp.impersonator_id,
                    "impersonator_email": imp.impersonator_email, "reason": imp.reason,
                    "started_at": rfc3339(imp.started_at), "expires_at": rfc3339(imp.expires_at),
                    "ended_at": imp.ended_at.map(rfc3339),
                },
                "end_reason": end_reason,
            }),
        }
    }

    /// The JSON body every delivery of this event sends, byte for byte, and the feed returns.
    pub fn body(&self, id: Uuid, at: OffsetDateTime) -> String {
        let mut body = json!({
            "id": id,
            "type": self.topic.as_str(),
            "version": SCHEMA_VERSION,
            "timestamp": rfc3339(at),
            "tenant_id": self.tenant_id,
            "data": self.data,
        });
        if self.late
            && let Value::Object(map) = &mut body
        {
            map.insert("late".to_owned(), Value::Bool(true));
        }
        body.to_string()
    }
}

/// Someone changed the endpoint since the caller read it (a save is refused rather than
/// written over their change).
pub fn endpoint_changed() -> Error {
    Error::Conflict {
        code: "endpoint_changed",
        message: "the endpoint was changed by someone else since it was read; reload it and try again".to_owned(),
    }
}

/// A webhook endpoint, as stored. Its secrets are sealed (they must be read to sign).
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub id: Uuid,
    pub url: String,
    pub description: String,
    pub subscription: Subscription,
    /// Only this region's tenants' events (platform-wide events, such as a platform user's, are
    /// not sent to a region-limited endpoint).
    pub region: Option<String>,
    pub enabled: bool,
    /// `manual`, or `failing` (disabled after [`DISABLE_AFTER`] without a success).
    pub disabled_reason: Option<String>,
    pub secret_sealed: String,
    pub previous_secret_sealed: Option<String>,
    pub previous_secret_until: Option<OffsetDateTime>,
    /// Since when every attempt has failed (none since the last success).
    pub failing_since: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

impl Endpoint {
    /// Would this endpoint receive an event of `topic` about a tenant of `region` (or one
    /// that moved from `previous_region`)?
    pub fn wants(&self, topic: Topic, region: Option<&str>, previous_region: Option<&str>) -> bool {
        self.subscription.matches(topic)
            && match &self.region {
                None => true,
                Some(r) => region == Some(r.as_str()) || previous_region == Some(r.as_str()),
            }
    }
    /// Shown to people: the endpoint's state in one word.
    pub fn state(&self) -> &'static str {
        match (self.enabled, self.disabled_reason.as_deref()) {
            (true, _) if self.failing_since.is_some() => "failing",
            (true, _) => "enabled",
            (false, Some("failing")) => "disabled (failing)",
            (false, _) => "disabled",
        }
    }
}

/// What a person asks for when creating or editing an endpoint, parsed.
#[derive(Clone, Debug)]
pub struct EndpointDraft {
    pub url: url::Url,
    pub description: String,
    pub subscription: Subscription,
    pub region: Option<String>,
    pub enabled: bool,
}

impl EndpointDraft {
    /// Parses the form or API fields; every bad field is reported (`url`, `event_types`,
    /// `region`, `description`). Whether the URL's host may be fetched is the outbound policy's
    /// to say (checked by the core through [`WebhookSender::check`]).
    pub fn parse<S: AsRef<str>>(
        url: &str,
        description: &str,
        event_types: &[S],
        region: Option<&str>,
        enabled: bool,
        regions: &[String],
    ) -> Result<Self> {
        let mut problems = Problems::new();
        let mut bad = |field: &str, message: String| problems.push(FieldError::new(field, "invalid", message));
        let url = match parse_url(url) {
            Ok(u) => Some(u),
            Err(m) => {
                bad("url", m);
                None
            }
        };
        let description = description.trim().to_owned();
        if description.chars().count() > MAX_DESCRIPTION_CHARS {
            bad("description", format!("at most {MAX_DESCRIPTION_CHARS} characters"));
        }
        if description.chars().any(char::is_control) {
            bad("description", "must not contain control characters".to_owned());
        }
        let subscription = match Subscription::parse(event_types) {
            Ok(s) => Some(s),
            Err(m) => {
                bad("event_types", m);
                None
            }
        };
        let region = region.map(str::trim).filter(|r| !r.is_empty()).map(str::to_owned);
        if let Some(r) = &region
            && !regions.iter().any(|x| x == r)
        {
            bad("region", format!("unknown region; one of: {}", regions.join(", ")));
        }
        problems.finish()?;
        match (url, subscription) {
            (Some(url), Some(subscription)) => Ok(Self {
                url,
                description,
                subscription,
                region,
                enabled,
            }),
            _ => Err(Error::internal("webhook draft parsed without its problems")),
        }
    }
}

fn parse_url(raw: &str) -> std::result::Result<url::Url, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err("enter the endpoint's URL".to_owned());
    }
    if raw.chars().count() > MAX_URL_CHARS {
        return Err(format!("at most {MAX_URL_CHARS} characters"));
    }
    if raw.contains('\\') || raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("not a valid URL".to_owned());
    }
    let url = url::Url::parse(raw).map_err(|_| "not a valid absolute URL".to_owned())?;
    if url.scheme() != "https" && url.scheme() != "http" {
        return Err("must be an https:// URL".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain a user name or password".to_owned());
    }
    if url.host().is_none() {
        return Err("must name a host".to_owned());
    }
    if url.fragment().is_some() {
        return Err("must not contain a #fragment".to_owned());
    }
    Ok(url)
}

/// A signing secret: `whsec_` and 32 random bytes in base64, as the Standard Webhooks libraries
/// expect it.
pub fn new_secret(rng: &dyn crate::token::Random) -> String {
    let mut bytes = [0u8; 32];
    rng.fill(&mut bytes);
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// `v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>`.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .map_err(|_| Error::internal("a webhook secret is not base64"))?;
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).map_err(|_| Error::internal("webhook key"))?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// The delay before retry number `failures` (1 after the first failure): 5 s doubling to 2 h,
/// with "full jitter" over its upper half (`jitter` in 0..1), so endpoints that fail together
/// do not all retry together.
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    let base = FIRST_BACKOFF
        .checked_mul(1i32 << doublings.min(30))
        .unwrap_or(MAX_BACKOFF)
        .min(MAX_BACKOFF);
    let jitter = jitter.clamp(0.0, 1.0);
    base / 2 + (base / 2) * jitter
}

/// A delivery claimed by this node (its lease held), with what is needed to send it.
#[derive(Clone, Debug)]
pub struct Claimed {
    pub delivery_id: Uuid,
    /// This claim's lease: only its holder may record the attempt, and only until
    /// `leased_until` (after that another node may have claimed the delivery again).
    pub lease: Uuid,
    pub leased_until: OffsetDateTime,
    pub endpoint_id: Uuid,
    pub event_id: Uuid,
    pub topic: String,
    pub body: String,
    /// Attempts already made.
    pub attempts: u32,
    pub first_attempt_at: Option<OffsetDateTime>,
}

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// A 2xx within the time allowed.
    Delivered { status: u16, millis: u32 },
    /// Another status.
    Status { status: u16, millis: u32 },
    /// No answer (refused by the policy, unreachable, timed out…): the outbound error's code.
    Failed { code: String, millis: u32 },
}

impl Attempt {
    pub fn ok(&self) -> bool {
        matches!(self, Self::Delivered { .. })
    }
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Delivered { status, .. } | Self::Status { status, .. } => Some(*status),
            Self::Failed { .. } => None,
        }
    }
    pub fn millis(&self) -> u32 {
        match self {
            Self::Delivered { millis, .. } | Self::Status { millis, .. } | Self::Failed { millis, .. } => *millis,
        }
    }
    /// For the console: `HTTP 500`, `timeout`, `address_refused`…
    pub fn error(&self) -> Option<String> {
        match self {
            Self::Delivered { .. } => None,
            Self::Status { status, .. } => Some(format!("HTTP {status}")),
            Self::Failed { code, .. } => Some(code.clone()),
        }
    }
    /// The metrics' outcome label.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Delivered { .. } => "success",
            Self::Status { .. } => "http_error",
            Self::Failed { code, .. } if code == "timeout" => "timeout",
            Self::Failed { code, .. } if code == "address_refused" || code == "plain_http_refused" => "refused",
            Self::Failed { code, .. } if code == "signing_failed" => "signing_failed",
            Self::Failed { .. } => "network_error",
        }
    }
}

/// What happens to a delivery after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    Delivered,
    RetryAt(OffsetDateTime),
    /// Given up after [`RETRY_FOR`].
    GaveUp,
}

/// The port the core sends webhooks through (`quarterdeck-outbound` under the outbound policy:
/// https only unless allowed, no private addresses, no redirects, 10 s).
#[async_trait::async_trait]
pub trait WebhookSender: Send + Sync {
    /// Would a POST to `url` be allowed (scheme and every address of its host)? `Err` says why,
    /// in words for the form.
    async fn check(&self, url: &url::Url) -> std::result::Result<(), String>;
    /// POST `body` with `headers`; the attempt's outcome (never an error: a failure is an outcome).
    async fn post(&self, url: &str, headers: Vec<(String, String)>, body: Vec<u8>) -> Attempt;
}

/// A sender that refuses everything (a core built without one: tests of other areas).
#[derive(Debug, Default)]
pub struct NoSender;

#[async_trait::async_trait]
impl WebhookSender for NoSender {
    async fn check(&self, _url: &url::Url) -> std::result::Result<(), String> {
        Err("webhooks cannot be sent from this server".to_owned())
    }
    async fn post(&self, _url: &str, _headers: Vec<(String, String)>, _body: Vec<u8>) -> Attempt {
        Attempt::Failed {
            code: "client_unavailable".to_owned(),
            millis: 0,
        }
    }
}

/// A delivery as the console and the API show it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeliveryView {
    pub id: Uuid,
    pub endpoint_id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    pub tenant_id: Option<Uuid>,
    /// `pending`, `delivered` or `failed` (given up).
    pub status: String,
    pub attempts: u32,
    pub last_status: Option<u16>,
    pub last_response_ms: Option<u32>,
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_attempt_at: Option<OffsetDateTime>,
    /// When the next attempt is due (pending only).
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_attempt_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// An event of the feed.
#[derive(Clone, Debug)]
pub struct FeedEvent {
    pub seq: i64,
    pub id: Uuid,
    pub topic: String,
    pub body: String,
    pub occurred_at: OffsetDateTime,
}

/// Counters of delivery attempts by outcome, since this process started (`/metrics`).
#[derive(Debug, Default)]
pub struct DeliveryCounters {
    counts: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

impl DeliveryCounters {
    pub fn count(&self, outcome: &'static str) {
        let mut c = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *c.entry(outcome).or_default() += 1;
    }
    /// Every outcome (zero included), in a stable order.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let c = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        [
            "success",
            "http_error",
            "timeout",
            "network_error",
            "refused",
            "signing_failed",
            "gave_up",
        ]
        .into_iter()
        .map(|k| (k, c.get(k).copied().unwrap_or(0)))
        .collect()
    }
}

#[cfg(test)]
#[path = "webhook_examples.rs"]
mod examples;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_family_pattern_matches_its_family_only() {
        let s = Subscription::parse(&["tenant.*"]).unwrap();
        assert!(s.matches(Topic::TenantCreated));
        assert!(s.matches(Topic::TenantStatusChanged));
        assert!(!s.matches(Topic::UserInvited));
        assert!(Subscription::parse(&["tenants.*"]).is_err());
        assert!(Subscription::parse(&["tenant.created", "nope"]).is_err());
        assert!(Subscription::parse::<&str>(&[]).is_err());
        assert!(Subscription::parse(&["*"]).unwrap().matches(Topic::BudgetExceeded));
    }

    #[test]
    fn the_backoff_doubles_from_five_seconds_to_two_hours_within_its_jitter() {
        assert_eq!(backoff(1, 1.0), Duration::seconds(5));
        assert_eq!(backoff(1, 0.0), Duration::milliseconds(2500));
        assert_eq!(backoff(2, 1.0), Duration::seconds(10));
        assert_eq!(backoff(40, 1.0), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX, 0.5), MAX_BACKOFF * 3 / 4);
    }

    #[test]
    fn a_url_with_credentials_or_another_scheme_is_refused_by_field() {
        let regions = vec!["default".to_owned()];
        for bad in [
            "ftp://x.example",
            "https://u:p@x.example/",
            "not a url",
            "",
            "https://x.example/#f",
        ] {
            let e = EndpointDraft::parse(bad, "", &["*"], None, true, &regions).unwrap_err();
            assert!(e.fields().iter().any(|f| f.field == "url"), "{bad}: {e:?}");
        }
    }
}
