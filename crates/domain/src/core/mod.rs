//! The operations the web layer calls, one module per area. Each checks its rules, builds its
//! audit event and hands both to the store, which writes them in one transaction.

mod api_keys;
mod audit;
mod auth;
mod billing;
mod credentials;
mod data_plane;
mod export;
mod impersonation;
pub mod limits;
mod outbox;
mod reconcile;
mod setup;
mod sso;
mod tenants;
mod tokens;
mod usage;
mod users;
mod webhooks;

pub use billing::{
    BillingOverview, BillingRow, CostLine, CostReport, DayValue, Freshness, MAX_REPORT_DAYS, MeterUsage, MonthCost,
    Share, UsageReport, UsageRow,
};
pub use data_plane::{ServiceCaller, Verification};
pub use limits::{
    API_REQUESTS_PER_MINUTE, GUESS_IN_FLIGHT, Guess, IDEMPOTENCY_KEYS_PER_TOKEN, IDEMPOTENT_REPLY_KEPT,
    IdempotencyStart, LinkGuess, request_digest,
};
pub use outbox::{MAX_ATTEMPTS, OutboxStop};
pub use reconcile::{
    DATABASE_MARGIN, DEFAULT_MARGIN as DEFAULT_RECONCILE_MARGIN, MAX_REPAIR_ATTEMPTS, ReconcileReport,
};
pub use sso::{ProviderDraft, SsoStart};
pub use tokens::{ApiCaller, NewTokenRequest};
pub use usage::{IngestReport, SWEEP_LEASE, SweepReport, UsagePolicy};
pub use users::{InviteRequest, NewUserRequest, UserView};
pub use webhooks::{DELIVERY_LEASE, EndpointWithSecret, FeedPage, MAX_FEED_PAGE, feed_cursor};

use crate::access::{Actor, Principal};
use crate::audit::{EventType, NewEvent};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::ids::TenantId;
use crate::mail::Email;
use crate::password::PasswordHasher;
use crate::role::Catalog;
use crate::session::{Session, SessionPolicy};
use crate::store::Store;
use crate::tenant::Tenant;
use crate::token::Random;
use crate::user::{Directory, User};
use std::sync::Arc;
use time::Duration;

/// Renders the invitation email: (to, inviter, organisation, link, expires) → the message.
pub type RenderInvitation = fn(&str, &str, &str, &str, &str) -> Email;
/// Renders the notice an SSO-only organisation sends instead: (to, inviter, organisation,
/// sign-in link, identity provider's name) → the message.
pub type RenderSsoNotice = fn(&str, &str, &str, &str, &str) -> Email;
/// Renders a notice: (to, subject, message, link text, link) → the message.
pub type RenderNotice = fn(&str, &str, &str, &str, &str) -> Email;

/// How links in emails are built: from the configured base URL, never from a request.
#[derive(Clone, Debug)]
pub struct Links {
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]` of the base URL.
    pub host: String,
}

impl Links {
    /// The origin users of `dir` sign in at: the base host, or `{slug}.{base host}`.
    pub fn origin(&self, tenant_slug: Option<&str>) -> String {
        match tenant_slug {
            Some(slug) => format!("{}://{slug}.{}", self.scheme, self.host),
            None => format!("{}://{}", self.scheme, self.host),
        }
    }
}

/// Settings the core needs (the binary maps its settings file onto this).
#[derive(Clone, Debug)]
pub struct CoreConfig {
    pub sessions: SessionPolicy,
    pub password_min_chars: usize,
    pub regions: Vec<String>,
    pub setup_link_ttl: Duration,
    pub invitation_ttl: Duration,
    /// How long a generated one-time password works (once).
    pub otp_ttl: Duration,
    /// How long "Switch to tenant" lasts before it ends by itself.
    pub impersonation_ttl: Duration,
    pub tenant_retention: Duration,
    pub catalog: Catalog,
    pub links: Links,
    pub render_invitation: RenderInvitation,
    pub render_sso_notice: RenderSsoNotice,
    pub render_notice: RenderNotice,
    /// Seals the client secrets of identity providers and the tenants' provider credentials.
    pub secret_key: crate::sso::SecretKey,
    /// The prefix and scope catalog of tenant API keys.
    pub api_keys: crate::api_key::ApiKeyPolicy,
    /// The providers tenants store credentials for.
    pub providers: crate::provider::ProviderCatalog,
    /// The meters usage events are counted by.
    pub meters: crate::usage::MeterCatalog,
    /// The price book cost is computed with.
    pub pricing: crate::pricing::PriceBook,
    /// Usage ingestion's limits and the raw events' retention.
    pub usage: UsagePolicy,
}

fn plain_invitation(to: &str, inviter: &str, org: &str, link: &str, expires: &str) -> Email {
    let text = format!("{inviter} invited you to {org}.\n\nSet your password: {link}\n\nThe link expires {expires}.\n");
    Email {
        to: to.to_owned(),
        subject: format!("You're invited to {org}"),
        html: text.clone(),
        text,
    }
}

fn plain_sso_notice(to: &str, inviter: &str, org: &str, link: &str, provider: &str) -> Email {
    let text = format!("{inviter} added you to {org}.\n\nSign in with {provider}: {link}\n");
    Email {
        to: to.to_owned(),
        subject: format!("You've been added to {org}"),
        html: text.clone(),
        text,
    }
}

fn plain_notice(to: &str, subject: &str, message: &str, link_text: &str, link: &str) -> Email {
    let text = format!("{message}\n\n{link_text}: {link}\n");
    Email {
        to: to.to_owned(),
        subject: subject.to_owned(),
        html: text.clone(),
        text,
    }
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            sessions: SessionPolicy {
                idle: Duration::minutes(30),
                absolute: Duration::hours(12),
            },
            password_min_chars: 12,
            regions: vec!["default".to_owned()],
            setup_link_ttl: Duration::hours(24),
            invitation_ttl: Duration::days(7),
            otp_ttl: Duration::hours(72),
            impersonation_ttl: Duration::minutes(60),
            tenant_retention: Duration::days(30),
            catalog: Catalog::default(),
            links: Links {
                scheme: "http".to_owned(),
                host: "localhost:8090".to_owned(),
            },
            render_invitation: plain_invitation,
            render_sso_notice: plain_sso_notice,
            render_notice: plain_notice,
            secret_key: crate::sso::SecretKey::from_bytes([0; 32]),
            api_keys: crate::api_key::ApiKeyPolicy::default(),
            providers: crate::provider::ProviderCatalog::default(),
            meters: crate::usage::MeterCatalog::default(),
            pricing: crate::pricing::PriceBook::default(),
            usage: UsagePolicy::default(),
        }
    }
}

/// A signed-in user's live session.
#[derive(Clone, Debug)]
pub struct SignedIn {
    pub session: Session,
    pub principal: Principal,
    pub user: User,
    /// The tenant, for a session on a tenant's host.
    pub tenant: Option<Tenant>,
    /// When a platform user is acting inside the tenant ("Switch to tenant").
    pub impersonation: Option<crate::impersonation::Impersonation>,
}

/// Where a sign-in attempt comes from.
#[derive(Clone, Debug, Default)]
pub struct ClientInfo {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl ClientInfo {
    /// The network the client's address stands for, as throttles count it: an IPv4 address
    /// itself (IPv4-mapped IPv6 included), an IPv6 address's /64 — one subscriber's network,
    /// which holds 2^64 addresses an attacker can rotate through for free. Empty when unknown.
    pub fn network(&self) -> String {
        match self.ip.as_deref().map(str::parse::<std::net::IpAddr>) {
            Some(Ok(ip)) => match ip.to_canonical() {
                std::net::IpAddr::V4(v4) => v4.to_string(),
                std::net::IpAddr::V6(v6) => {
                    let s = v6.segments();
                    format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
                }
            },
            Some(Err(_)) => self.ip.clone().unwrap_or_default(),
            None => String::new(),
        }
    }
}

pub struct Core {
    /// Reachable only through `Core`'s operations, which check who may call them.
    store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub rng: Arc<dyn Random>,
    pub hasher: PasswordHasher,
    pub config: CoreConfig,
    /// The data plane's caches and counters (see [`crate::verifier`]).
    verifier: crate::verifier::Verifier,
    /// Usage ingestion's per-node state (see [`usage`]).
    usage: usage::UsageState,
    /// Where webhooks are sent through (see [`webhooks`]).
    webhooks: Arc<dyn crate::webhook::WebhookSender>,
    webhook_counts: crate::webhook::DeliveryCounters,
    /// What `/metrics` shows (see [`crate::meters`]).
    meters: crate::meters::Meters,
    /// The last readiness answer and when it was read (see [`Core::readiness`]).
    readiness: tokio::sync::Mutex<Option<(time::OffsetDateTime, std::result::Result<(), &'static str>)>>,
    /// The Automation API's per-token counts on this node (see [`limits`]).
    api_rates: limits::SharedCounts,
    /// Usage events per service token on this node (see [`limits`]).
    usage_counts: limits::SharedCounts,
}

/// How long a readiness answer is reused.
const READINESS_REUSE: time::Duration = time::Duration::seconds(1);

impl Core {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Random>,
        hasher: PasswordHasher,
        config: CoreConfig,
    ) -> Self {
        Self {
            store,
            clock,
            rng,
            hasher,
            config,
            verifier: crate::verifier::Verifier::new(),
            usage: usage::UsageState::default(),
            webhooks: Arc::new(crate::webhook::NoSender),
            webhook_counts: crate::webhook::DeliveryCounters::default(),
            meters: crate::meters::Meters::default(),
            readiness: tokio::sync::Mutex::new(None),
            api_rates: limits::SharedCounts::api(),
            usage_counts: limits::SharedCounts::new(
                Some(limits::USAGE_COUNTER),
                i64::try_from(limits::USAGE_WINDOW.whole_milliseconds()).unwrap_or(2_000),
            ),
        }
    }

    fn new_event(&self, t: EventType, actor: &Actor, tenant: Option<TenantId>, details: serde_json::Value) -> NewEvent {
        NewEvent::new(self.clock.now(), t, actor, tenant, details)
    }

    pub fn catalog(&self) -> &Catalog {
        &self.config.catalog
    }

    /// A principal for a user, with the capabilities their roles grant.
    pub fn principal_of(&self, user: &User) -> Principal {
        Principal::new(
            user.id,
            user.email.clone(),
            user.roles.clone(),
            user.tenant_id,
            &self.config.catalog,
        )
    }

    /// The store itself, for tests that arrange or inspect rows directly. Not in a build
    /// without the `test-support` feature.
    #[cfg(feature = "test-support")]
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// `sqlite` or `postgres`, for the settings page and start-up log.
    pub fn backend(&self) -> &'static str {
        self.store.backend()
    }

    /// Whether the control database answers (the health check).
    pub async fn ready(&self) -> Result<()> {
        self.store.owner_exists().await.map(|_| ())
    }

    /// The readiness check: the control database answers and every control migration this
    /// binary embeds is applied. `Err(reason)`: `database_unavailable` or `migrations_pending`.
    ///
    /// `/readyz` is public and load balancers poll it: an answer is reused for a second (by
    /// the injected clock), and callers arriving while one is read wait for it, so a flood of
    /// probes costs at most one control query a second per node.
    pub async fn readiness(&self) -> std::result::Result<(), &'static str> {
        let mut last = self.readiness.lock().await;
        let now = self.clock.now();
        if let Some((at, answer)) = *last
            && now >= at
            && now - at < READINESS_REUSE
        {
            return answer;
        }
        let answer = self.store.control_readiness().await;
        *last = Some((self.clock.now(), answer));
        answer
    }

    /// Where the core counts (the server gives it its Prometheus recorder).
    pub fn set_meters(&mut self, meters: crate::meters::Meters) {
        self.meters = meters;
    }

    pub fn meters(&self) -> &crate::meters::Meters {
        &self.meters
    }

    /// Brings the gauges and the counters kept elsewhere up to date before a scrape: one
    /// small query (the outbox), the rest from memory.
    pub async fn observe(&self) -> Result<()> {
        use crate::meters::*;
        let m = &self.meters;
        for (outcome, n) in self.webhook_counters() {
            m.counter(WEBHOOK_DELIVERIES, &[("outcome", outcome)]).absolute(n);
        }
        m.counter(KEY_LOOKUPS, &[]).absolute(self.verifier_lookups());
        let (waiting, active) = self.hasher.load();
        m.gauge(PASSWORD_HASH_QUEUE, &[]).set(waiting as f64);
        m.gauge(PASSWORD_HASH_ACTIVE, &[]).set(active as f64);
        let g = self.store.store_gauges(self.clock.now()).await?;
        m.gauge(OUTBOX_PENDING, &[]).set(g.outbox_pending as f64);
        m.gauge(OUTBOX_OLDEST, &[]).set(g.outbox_oldest_age_seconds);
        m.gauge(TENANT_POOLS_OPEN, &[]).set(g.tenant_pools_open as f64);
        m.gauge(DB_CONNECTIONS, &[("state", "idle")]).set(g.control_idle as f64);
        m.gauge(DB_CONNECTIONS, &[("state", "in_use")])
            .set(g.control_connections.saturating_sub(g.control_idle) as f64);
        Ok(())
    }

    /// The live tenant served at `{slug}.{base host}`, if any (the host decides the site before
    /// anyone has signed in; a tenant's existence is public through its host anyway).
    pub async fn tenant_for_host(&self, slug: &crate::tenant::TenantSlug) -> Result<Option<Tenant>> {
        self.store.tenant_by_slug(slug).await
    }

    /// A tenant by slug, for platform users who may read tenants.
    pub async fn tenant_by_slug(
        &self,
        _auth: &crate::access::Authorized<crate::access::ReadTenants>,
        slug: &crate::tenant::TenantSlug,
    ) -> Result<Option<Tenant>> {
        self.store.tenant_by_slug(slug).await
    }

    /// Ends a session that a new one replaces (sign-in, switch to tenant, SSO on a browser
    /// that was already signed in): no event, the new session's own event says what happened.
    pub async fn discard_session(&self, old: &SignedIn) -> Result<()> {
        self.store.delete_session(&old.session.id_hash).await
    }

    /// Housekeeping: sessions idle or past their absolute lifetime, spent SSO attempts.
    pub async fn delete_expired(&self) -> Result<(u64, u64)> {
        let now = self.clock.now();
        let sessions = self
            .store
            .delete_expired_sessions(now - self.config.sessions.idle, now)
            .await?;
        let sso = self.store.delete_expired_sso(now).await?;
        Ok((sessions, sso))
    }

    /// Brings every tenant database to the latest schema; one failure does not stop the rest.
    /// One result (migrations applied, or the error) per tenant.
    /// Live tenants not yet at this binary's schema version (not served until migrated).
    pub async fn tenants_behind(&self) -> Result<Vec<TenantId>> {
        self.store.tenants_behind().await
    }

    /// Migrate one tenant's database (and record its version); returns how many migrations
    /// were applied.
    pub async fn migrate_tenant_database(&self, id: TenantId) -> Result<usize> {
        self.store.migrate_tenant(id).await
    }

    pub async fn migrate_tenant_databases(&self) -> Result<Vec<(TenantId, Result<usize>)>> {
        let ids = self.store.tenant_ids().await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let r = self.store.migrate_tenant(id).await;
            out.push((id, r));
        }
        Ok(out)
    }

    /// The live tenant behind a directory (`None` for the platform); a deleted tenant is
    /// not found.
    pub async fn tenant_of(&self, dir: Directory) -> Result<Option<Tenant>> {
        match dir {
            Directory::Platform => Ok(None),
            Directory::Tenant(id) => Ok(Some(self.store.tenant(id).await?.ok_or(Error::NotFound)?)),
        }
    }
}

impl Core {
    /// The tenant-status check of every write in a tenant (`tenant_read_only`,
    /// `tenant_suspended`); returns the tenant. The store repeats it inside the write's
    /// transaction, under the audit lock, so a concurrent status change cannot slip between.
    pub(crate) async fn writable_tenant(&self, dir: Directory) -> Result<Option<Tenant>> {
        let tenant = self.tenant_of(dir).await?;
        if let Some(t) = &tenant {
            t.status.check_writable()?;
        }
        Ok(tenant)
    }
}

pub(crate) fn slug_taken() -> Error {
    Error::field("slug", "slug_taken", "This slug is already in use; choose another.")
}

/// A time as RFC 3339, for event details.
pub(crate) fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::ClientInfo;

    fn network(ip: &str) -> String {
        ClientInfo {
            ip: Some(ip.to_owned()),
            user_agent: None,
        }
        .network()
    }

    #[test]
    fn throttles_count_an_ipv6_client_by_its_64_and_a_mapped_ipv4_client_by_its_address() {
        assert_eq!(network("2001:db8:1:2::1"), network("2001:db8:1:2:ffff::9"));
        assert_ne!(network("2001:db8:1:2::1"), network("2001:db8:1:3::1"));
        assert_eq!(network("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(network("192.0.2.7"), "192.0.2.7");
        assert_eq!(ClientInfo::default().network(), "");
    }
}
