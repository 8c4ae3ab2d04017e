//! Settings: defaults, then the TOML file, then `QUARTERDECK_*` environment variables (the
//! environment wins). Secrets can be read from files (`…_FILE`). Unknown keys in the file are
//! refused with a message that names them; unknown `QUARTERDECK_*` variables are warned about.

use anyhow::{Context, Result, bail};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Deserializer, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use url::Url;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Public URL of the base host; tenant hosts are `{slug}.` + its host.
    pub base_url: Url,
    /// SQLite databases (control and one per tenant).
    pub data_dir: PathBuf,
    /// `postgres://…` selects PostgreSQL (secret: may hold a password).
    pub database_url: Option<String>,
    pub database_url_file: Option<PathBuf>,
    /// Create the first owner at start-up if none exists.
    pub bootstrap_owner_email: Option<String>,
    pub bootstrap_owner_password: Option<String>,
    pub bootstrap_owner_password_file: Option<PathBuf>,
    /// Regions offered for new tenants (the first is the default), and where each keeps its
    /// tenant databases: a list of names (all with the control database), or a table per
    /// region (`[regions.eu] database_url = "postgres://…"` / `dir = "/var/lib/q/eu"`).
    pub regions: Regions,
    /// Minimum password length.
    pub password_min_length: usize,
    /// A session ends after this many minutes without a request.
    pub session_idle_minutes: u32,
    /// A session ends this many hours after sign-in, whatever the activity.
    pub session_absolute_hours: u32,
    /// Reverse proxies whose `X-Forwarded-For` is believed.
    #[serde(deserialize_with = "string_or_list")]
    pub trusted_proxies: Vec<String>,
    /// Address ranges (CIDR) outside the public internet that the server may fetch from on a
    /// user's say-so (OIDC discovery, JWKS, SAML metadata), e.g. `127.0.0.0/8` for a local
    /// identity provider. Empty: public addresses only.
    #[serde(deserialize_with = "string_or_list")]
    pub outbound_allow_private: Vec<String>,
    /// Days a deleted tenant's database is kept before it is dropped.
    pub tenant_retention_days: u32,
    /// At most this many tenant databases are open at once. Unset: see
    /// [`Settings::tenant_pools_open_at_most`].
    pub tenant_pool_max_open: Option<usize>,
    /// A tenant database unused this many seconds is closed.
    pub tenant_pool_idle_seconds: u64,
    /// PostgreSQL: the most connections opened to the cluster, all pools together.
    pub database_max_connections: u32,
    /// Tenant databases migrated at once, in the background while serving.
    pub migrate_jobs: usize,
    /// `text` or `json`.
    pub log_format: String,
    /// A tenant role catalog (TOML) replacing the built-in tenant roles.
    pub roles_file: Option<PathBuf>,
    /// Days an invitation link stays valid.
    pub invitation_ttl_days: u32,
    /// Hours a generated one-time password works (once).
    pub one_time_password_hours: u32,
    /// Minutes a "Switch to tenant" lasts before it ends by itself.
    pub impersonation_minutes: u32,
    /// `log` (the whole email at INFO), `smtp` or `resend`.
    pub email_transport: String,
    /// The `From` of every email.
    pub email_from: String,
    pub smtp_host: Option<String>,
    pub smtp_port: u16,
    pub smtp_username: Option<String>,
    pub smtp_password: Option<String>,
    pub smtp_password_file: Option<PathBuf>,
    /// `none`, `starttls` or `tls`.
    pub smtp_tls: String,
    pub resend_api_key: Option<String>,
    pub resend_api_key_file: Option<PathBuf>,
    pub resend_api_url: String,
    /// How often the worker looks for email to deliver, in milliseconds.
    pub outbox_poll_ms: u64,
    /// Whether this node sends webhooks (the delivery loop). Off for a node that should only
    /// serve requests; deliveries wait for a node that has it on.
    pub deliver_webhooks: bool,
    /// The key identity providers' client secrets are sealed with (64 hex characters or 32
    /// bytes in base64). Unset: `{data_dir}/secret.key`, made on first start.
    pub secret_key: Option<String>,
    pub secret_key_file: Option<PathBuf>,
    /// A client must send a request's head within this many seconds, or its connection is
    /// closed.
    pub header_read_timeout_seconds: u64,
    /// A connection with no request in progress is closed after this many seconds.
    pub keep_alive_seconds: u64,
    /// Most connections open at once (unset: well below the open-files limit); at the cap the
    /// longest-idle connection is closed for a new one.
    pub max_connections: Option<usize>,
    /// A request not answered within this many seconds gets 408 `request_timeout`.
    pub request_timeout_seconds: u64,
    /// At SIGTERM or Ctrl-C: how long requests in flight may take to finish before the
    /// process exits anyway (new connections are refused at once).
    pub shutdown_grace_seconds: u64,
    /// Most requests handled at once; more get 503 `overloaded` at once (never a queue).
    pub max_concurrent_requests: usize,
    /// Largest request body, forms and API alike; larger gets 413 `body_too_large`.
    pub max_body_bytes: usize,
    /// Minutes between signed checkpoints of the audit chain's head, written to
    /// `{data_dir}/audit-checkpoints/` (also one at start-up).
    pub audit_checkpoint_minutes: u32,
    /// Seconds a tenant-side change may wait for its control side (its audit event, emails)
    /// before the reconcile pass writes it (see `reconcile`).
    pub reconcile_margin_seconds: u32,
    /// The visible start of every new tenant API key (the tenant's developers see it as the
    /// product's key).
    pub api_key_prefix: String,
    /// The scopes a tenant API key may carry.
    #[serde(deserialize_with = "string_or_list")]
    pub api_key_scopes: Vec<String>,
    /// The providers tenants store credentials for (`[[providers]]` tables: id, name, fields
    /// with name, label, secret, required). Default: OpenAI and Anthropic.
    pub providers: Vec<quarterdeck_domain::provider::Provider>,
    /// What usage events are counted by (`[[meters]]` tables: type, name, value, aggregation
    /// sum/count/max, dimensions, unit). Default: `llm.tokens` (sum of `tokens`, by `model`)
    /// and `api.requests` (count, by `endpoint`).
    pub meters: Vec<quarterdeck_domain::usage::Meter>,
    /// The price book (`[pricing]`: currency, minor_units, `[[pricing.prices]]` with meter,
    /// when, unit_price in minor units, per, tiers).
    pub pricing: quarterdeck_domain::pricing::PricingSettings,
    /// Days raw usage events are kept in the tenant's database (hourly rollups are kept
    /// forever); also how far back an event may be dated, less a day. At least 8.
    pub usage_raw_retention_days: u32,
    /// Most events in one usage batch.
    pub usage_max_batch_events: usize,
    /// Usage events per second one service token may send to one node (twice that in a burst).
    pub usage_events_per_second: u32,
    /// Backpressure: while a region's usage sweep is further behind than this many seconds,
    /// new usage batches for it get 503 `usage_backlog`; 0 never refuses. Unset: 4 on SQLite,
    /// 30 on PostgreSQL (see [`Settings::usage_policy`]).
    pub usage_max_lag_seconds: Option<u32>,
    /// The bearer token `GET /metrics` requires (at least 16 characters). Unset: `/metrics` is
    /// not served (404).
    pub metrics_token: Option<String>,
    pub metrics_token_file: Option<PathBuf>,
    /// A second address serving only `GET /metrics`, without a token (for a scraper on a
    /// private network, e.g. `127.0.0.1:9464`). Unset: no second listener.
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            base_url: Url::parse("http://localhost:8090").unwrap_or_else(|_| unreachable!()),
            data_dir: PathBuf::from("./data"),
            database_url: None,
            database_url_file: None,
            bootstrap_owner_email: None,
            bootstrap_owner_password: None,
            bootstrap_owner_password_file: None,
            regions: Regions::named(&["default"]),
            password_min_length: 12,
            session_idle_minutes: 30,
            session_absolute_hours: 12,
            trusted_proxies: Vec::new(),
            outbound_allow_private: Vec::new(),
            tenant_retention_days: 30,
            tenant_pool_max_open: None,
            tenant_pool_idle_seconds: 300,
            database_max_connections: 20,
            migrate_jobs: 4,
            log_format: "text".to_owned(),
            roles_file: None,
            invitation_ttl_days: 7,
            one_time_password_hours: 72,
            impersonation_minutes: 60,
            email_transport: "log".to_owned(),
            email_from: "Quarterdeck <no-reply@localhost>".to_owned(),
            smtp_host: None,
            smtp_port: 587,
            smtp_username: None,
            smtp_password: None,
            smtp_password_file: None,
            smtp_tls: "starttls".to_owned(),
            resend_api_key: None,
            resend_api_key_file: None,
            resend_api_url: "https://api.resend.com".to_owned(),
            outbox_poll_ms: 1000,
            deliver_webhooks: true,
            secret_key: None,
            secret_key_file: None,
            header_read_timeout_seconds: 10,
            keep_alive_seconds: 5,
            max_connections: None,
            request_timeout_seconds: 30,
            shutdown_grace_seconds: 35,
            max_concurrent_requests: 512,
            max_body_bytes: 512 * 1024,
            audit_checkpoint_minutes: 60,
            reconcile_margin_seconds: 60,
            api_key_prefix: "qd_live_".to_owned(),
            api_key_scopes: vec!["read".to_owned(), "write".to_owned()],
            providers: quarterdeck_domain::provider::ProviderCatalog::default()
                .providers()
                .to_vec(),
            meters: quarterdeck_domain::usage::MeterCatalog::defaults(),
            pricing: default_pricing(),
            usage_raw_retention_days: 35,
            usage_max_batch_events: 1000,
            usage_events_per_second: 200_000,
            usage_max_lag_seconds: None,
            metrics_token: None,
            metrics_token_file: None,
            metrics_listen: None,
        }
    }
}

/// The base URL a first run uses; links built from it only work on this machine.
pub const DEFAULT_BASE_URL: &str = "http://localhost:8090/";

/// Every setting: (key, is secret, meaning) — the env var is `QUARTERDECK_` + KEY.
pub const KEYS: &[(&str, bool)] = &[
    ("listen", false),
    ("base_url", false),
    ("data_dir", false),
    ("database_url", true),
    ("database_url_file", false),
    ("bootstrap_owner_email", false),
    ("bootstrap_owner_password", true),
    ("bootstrap_owner_password_file", false),
    ("regions", false),
    ("password_min_length", false),
    ("session_idle_minutes", false),
    ("session_absolute_hours", false),
    ("trusted_proxies", false),
    ("outbound_allow_private", false),
    ("tenant_retention_days", false),
    ("tenant_pool_max_open", false),
    ("tenant_pool_idle_seconds", false),
    ("database_max_connections", false),
    ("migrate_jobs", false),
    ("log_format", false),
    ("roles_file", false),
    ("invitation_ttl_days", false),
    ("one_time_password_hours", false),
    ("impersonation_minutes", false),
    ("email_transport", false),
    ("email_from", false),
    ("smtp_host", false),
    ("smtp_port", false),
    ("smtp_username", false),
    ("smtp_password", true),
    ("smtp_password_file", false),
    ("smtp_tls", false),
    ("resend_api_key", true),
    ("resend_api_key_file", false),
    ("resend_api_url", false),
    ("outbox_poll_ms", false),
    ("deliver_webhooks", false),
    ("secret_key", true),
    ("secret_key_file", false),
    ("header_read_timeout_seconds", false),
    ("keep_alive_seconds", false),
    ("max_connections", false),
    ("request_timeout_seconds", false),
    ("shutdown_grace_seconds", false),
    ("max_concurrent_requests", false),
    ("max_body_bytes", false),
    ("audit_checkpoint_minutes", false),
    ("reconcile_margin_seconds", false),
    ("api_key_prefix", false),
    ("api_key_scopes", false),
    ("providers", false),
    ("meters", false),
    ("pricing", false),
    ("usage_raw_retention_days", false),
    ("usage_max_batch_events", false),
    ("usage_events_per_second", false),
    ("usage_max_lag_seconds", false),
    ("metrics_token", true),
    ("metrics_token_file", false),
    ("metrics_listen", false),
];

/// The default price book: USD 2.50 per million LLM tokens, USD 0.10 per thousand requests.
fn default_pricing() -> quarterdeck_domain::pricing::PricingSettings {
    use quarterdeck_domain::pricing::{Price, PricingSettings};
    PricingSettings {
        currency: "USD".to_owned(),
        minor_units: 100,
        prices: vec![
            Price {
                meter: "llm.tokens".to_owned(),
                when: Default::default(),
                unit_price: 250,
                per: 1_000_000,
                tiers: Default::default(),
            },
            Price {
                meter: "api.requests".to_owned(),
                when: Default::default(),
                unit_price: 10,
                per: 1_000,
                tiers: Default::default(),
            },
        ],
    }
}

/// Where one region's tenant databases live (`[regions.NAME]`); nothing set: with the control
/// database.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionPlace {
    /// PostgreSQL: the region's own cluster (the URL names a database Quarterdeck keeps the
    /// region's usage journal in, and creates the tenant databases from). Secret.
    pub database_url: Option<String>,
    pub database_url_file: Option<PathBuf>,
    /// SQLite: the region's own directory (`tenants/` and `usage/` in it).
    pub dir: Option<PathBuf>,
}

/// The `regions` setting: names in order (the first is the default for new tenants), each with
/// its place. A list (or `QUARTERDECK_REGIONS=a,b`) puts every region with the control
/// database; a table of tables (ordered by name) may give a region its own place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Regions {
    names: Vec<String>,
    places: Vec<RegionPlace>,
}

impl Regions {
    /// Regions that all keep their databases with the control database.
    pub fn named(names: &[&str]) -> Self {
        Self {
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            places: names.iter().map(|_| RegionPlace::default()).collect(),
        }
    }

    /// A region with its place (replacing one of that name).
    pub fn with(mut self, name: &str, place: RegionPlace) -> Self {
        match self.names.iter().position(|n| n == name) {
            Some(i) => {
                if let Some(p) = self.places.get_mut(i) {
                    *p = place;
                }
            }
            None => {
                self.names.push(name.to_owned());
                self.places.push(place);
            }
        }
        self
    }

    /// The region names, in order.
    pub fn names(&self) -> Vec<String> {
        self.names.clone()
    }

    /// Each region with its place.
    pub fn places(&self) -> impl Iterator<Item = (&String, &RegionPlace)> {
        self.names.iter().zip(self.places.iter())
    }

    /// For the store: where each region's tenant databases live.
    pub fn locations(&self) -> Vec<(String, quarterdeck_store::RegionLocation)> {
        self.places()
            .map(|(n, p)| {
                let location = match (&p.database_url, &p.dir) {
                    (Some(url), _) => quarterdeck_store::RegionLocation::Postgres(url.clone()),
                    (None, Some(dir)) => quarterdeck_store::RegionLocation::Dir(dir.clone()),
                    (None, None) => quarterdeck_store::RegionLocation::Shared,
                };
                (n.clone(), location)
            })
            .collect()
    }
}

impl std::ops::Deref for Regions {
    type Target = Vec<String>;
    fn deref(&self) -> &Vec<String> {
        &self.names
    }
}

impl Serialize for Regions {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // A list when every region is with the control database (so that a table in the
        // settings file replaces the default instead of merging with it).
        if self.places.iter().all(|p| *p == RegionPlace::default()) {
            self.names.serialize(s)
        } else {
            let map: std::collections::BTreeMap<&String, &RegionPlace> = self.places().collect();
            map.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Regions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            One(String),
            Many(Vec<String>),
            Placed(std::collections::BTreeMap<String, RegionPlace>),
        }
        let form = Form::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "regions must be a list of names, a comma-separated string, or a table per region with database_url or dir",
            )
        })?;
        let names: Vec<String> = match form {
            Form::One(s) => s
                .split(',')
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty())
                .collect(),
            Form::Many(v) => v,
            Form::Placed(map) => {
                let (names, places) = map.into_iter().unzip();
                return Ok(Self { names, places });
            }
        };
        Ok(Self {
            places: names.iter().map(|_| RegionPlace::default()).collect(),
            names,
        })
    }
}

/// Variables with the prefix that are not settings but are known (not warned about).
const OTHER_VARS: &[&str] = &["CONFIG", "LOG"];

fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s
            .split(',')
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect(),
        OneOrMany::Many(v) => v,
    })
}

impl Settings {
    /// Load from `config_path` (if given, it must exist; else `./quarterdeck.toml` if present)
    /// and the environment.
    pub fn load(config_path: Option<&Path>) -> Result<Self> {
        let mut fig = Figment::from(Serialized::defaults(Settings::default()));
        match config_path {
            Some(p) => {
                if !p.exists() {
                    bail!("the settings file {} does not exist", p.display());
                }
                fig = fig.merge(Toml::file_exact(p));
            }
            None if Path::new("quarterdeck.toml").exists() => {
                fig = fig.merge(Toml::file_exact("quarterdeck.toml"));
            }
            None => {}
        }
        let known: Vec<String> = KEYS.iter().map(|(k, _)| k.to_string()).collect();
        fig = fig.merge(Env::prefixed("QUARTERDECK_").filter(move |k| known.iter().any(|n| k == n.as_str())));
        let mut s: Settings = fig.extract().map_err(|e| anyhow::anyhow!(describe(e)))?;
        s.database_url = secret_from(s.database_url.take(), s.database_url_file.as_deref(), "database_url")?;
        s.bootstrap_owner_password = secret_from(
            s.bootstrap_owner_password.take(),
            s.bootstrap_owner_password_file.as_deref(),
            "bootstrap_owner_password",
        )?;
        s.smtp_password = secret_from(s.smtp_password.take(), s.smtp_password_file.as_deref(), "smtp_password")?;
        s.secret_key = secret_from(s.secret_key.take(), s.secret_key_file.as_deref(), "secret_key")?;
        s.resend_api_key = secret_from(
            s.resend_api_key.take(),
            s.resend_api_key_file.as_deref(),
            "resend_api_key",
        )?;
        s.metrics_token = secret_from(s.metrics_token.take(), s.metrics_token_file.as_deref(), "metrics_token")?;
        for (name, place) in s.regions.names.iter().zip(s.regions.places.iter_mut()) {
            place.database_url = secret_from(
                place.database_url.take(),
                place.database_url_file.as_deref(),
                &format!("regions.{name}.database_url"),
            )?;
        }
        s.validate()?;
        Ok(s)
    }

    fn validate(&self) -> Result<()> {
        self.api_key_policy()?;
        self.provider_catalog()?;
        if !matches!(self.base_url.scheme(), "http" | "https") || self.base_url.host_str().is_none() {
            bail!("base_url (QUARTERDECK_BASE_URL) must be an http:// or https:// URL with a host");
        }
        if self.base_url.path() != "/" || self.base_url.query().is_some() {
            bail!(
                "base_url (QUARTERDECK_BASE_URL) must not have a path or query: Quarterdeck is served at the root of its host"
            );
        }
        if self.regions.is_empty() {
            bail!("regions (QUARTERDECK_REGIONS) must name at least one region");
        }
        for (r, place) in self.regions.places() {
            if place.dir.is_some() && (place.database_url.is_some() || place.database_url_file.is_some()) {
                bail!("regions.{r}: give either database_url (PostgreSQL) or dir (SQLite), not both");
            }
            if let Some(url) = &place.database_url {
                if self.database_url.is_none() {
                    bail!(
                        "regions.{r}.database_url: a region on its own PostgreSQL cluster needs the control database on PostgreSQL too (database_url); on SQLite give the region a dir"
                    );
                }
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    bail!("regions.{r}.database_url must start with postgres://");
                }
            }
            if place.dir.is_some() && self.database_url.is_some() {
                bail!(
                    "regions.{r}.dir: a directory places a region's databases on SQLite; on PostgreSQL give the region a database_url"
                );
            }
            if r.is_empty()
                || r.len() > 32
                || !r.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                || !r
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                bail!(
                    "regions (QUARTERDECK_REGIONS): {r:?} must be 1 to 32 lowercase letters, digits and hyphens, starting with a letter or digit"
                );
            }
        }
        self.usage_catalogs()?;
        if let Some(t) = &self.metrics_token
            && (t.chars().count() < 16 || t.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            bail!(
                "metrics_token (QUARTERDECK_METRICS_TOKEN) must be at least 16 characters, without spaces or control characters"
            );
        }
        if self.usage_raw_retention_days > 3650 {
            bail!("usage_raw_retention_days (QUARTERDECK_USAGE_RAW_RETENTION_DAYS) must be at most 3650");
        }
        if self.usage_raw_retention_days < 8 {
            bail!(
                "usage_raw_retention_days (QUARTERDECK_USAGE_RAW_RETENTION_DAYS) must be at least 8: duplicates are recognised for as long as raw events are kept, and that must be at least 7 days"
            );
        }
        if !(1..=10_000).contains(&self.usage_max_batch_events) {
            bail!("usage_max_batch_events (QUARTERDECK_USAGE_MAX_BATCH_EVENTS) must be between 1 and 10000");
        }
        if self.tenant_pool_max_open == Some(0) {
            bail!(
                "tenant_pool_max_open (QUARTERDECK_TENANT_POOL_MAX_OPEN) must be at least 1 (unset: chosen by the backend and the open-files limit)"
            );
        }
        if self.usage_max_lag_seconds.is_some_and(|s| s > 3600) {
            bail!("usage_max_lag_seconds (QUARTERDECK_USAGE_MAX_LAG_SECONDS) must be at most 3600 (0: never refuse)");
        }
        if self.usage_events_per_second == 0 {
            bail!("usage_events_per_second (QUARTERDECK_USAGE_EVENTS_PER_SECOND) must be at least 1");
        }
        if self.usage_max_batch_events as u64 > 2 * u64::from(self.usage_events_per_second) {
            bail!(
                "usage_max_batch_events ({}) is more than twice usage_events_per_second ({}): a full batch could never be accepted",
                self.usage_max_batch_events,
                self.usage_events_per_second
            );
        }
        if self.database_max_connections < 4 {
            bail!(
                "database_max_connections (QUARTERDECK_DATABASE_MAX_CONNECTIONS) must be at least 4 (2 for the control database, the rest for tenants)"
            );
        }
        if !(1..=64).contains(&self.migrate_jobs) {
            bail!("migrate_jobs (QUARTERDECK_MIGRATE_JOBS) must be between 1 and 64");
        }
        if self.password_min_length < 8 {
            bail!("password_min_length (QUARTERDECK_PASSWORD_MIN_LENGTH) must be at least 8");
        }
        if self.session_idle_minutes == 0 || self.session_absolute_hours == 0 {
            bail!("session_idle_minutes and session_absolute_hours must be at least 1");
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            bail!("log_format (QUARTERDECK_LOG_FORMAT) must be text or json");
        }
        self.trusted_proxy_ips()?;
        self.outbound_policy()?;
        if self.one_time_password_hours == 0 || self.one_time_password_hours > 24 * 7 {
            bail!("one_time_password_hours (QUARTERDECK_ONE_TIME_PASSWORD_HOURS) must be between 1 and 168");
        }
        if self.impersonation_minutes == 0 || self.impersonation_minutes > 24 * 60 {
            bail!("impersonation_minutes (QUARTERDECK_IMPERSONATION_MINUTES) must be between 1 and 1440");
        }
        if self.invitation_ttl_days == 0 || self.invitation_ttl_days > 30 {
            bail!("invitation_ttl_days (QUARTERDECK_INVITATION_TTL_DAYS) must be between 1 and 30");
        }
        if self.email_transport != "log" && self.base_url.as_str() == DEFAULT_BASE_URL {
            bail!(
                "QUARTERDECK_EMAIL_TRANSPORT={} sends links built from base_url, which is still the local default {DEFAULT_BASE_URL}: \
                 recipients could not open them. Set QUARTERDECK_BASE_URL (base_url) to Quarterdeck's public URL",
                self.email_transport
            );
        }
        if self.audit_checkpoint_minutes == 0 || self.audit_checkpoint_minutes > 7 * 24 * 60 {
            bail!("audit_checkpoint_minutes (QUARTERDECK_AUDIT_CHECKPOINT_MINUTES) must be between 1 and 10080");
        }
        if self.reconcile_margin_seconds > 24 * 3600 {
            bail!("reconcile_margin_seconds (QUARTERDECK_RECONCILE_MARGIN_SECONDS) must be at most 86400");
        }
        self.mail_settings()?;
        for (key, value) in [
            ("header_read_timeout_seconds", self.header_read_timeout_seconds),
            ("keep_alive_seconds", self.keep_alive_seconds),
            ("request_timeout_seconds", self.request_timeout_seconds),
            ("shutdown_grace_seconds", self.shutdown_grace_seconds),
        ] {
            if !(1..=3600).contains(&value) {
                bail!(
                    "{key} (QUARTERDECK_{}) must be between 1 and 3600",
                    key.to_ascii_uppercase()
                );
            }
        }
        if self.max_connections == Some(0) || self.max_concurrent_requests == 0 {
            bail!("max_connections and max_concurrent_requests must be at least 1");
        }
        if self.max_body_bytes < 1024 {
            bail!("max_body_bytes (QUARTERDECK_MAX_BODY_BYTES) must be at least 1024");
        }
        Ok(())
    }

    /// The email transport's settings, checked.
    pub fn mail_settings(&self) -> Result<quarterdeck_mail::MailSettings> {
        use quarterdeck_mail::{MailSettings, ResendSettings, SmtpSettings, SmtpTls};
        Ok(match self.email_transport.as_str() {
            "log" => MailSettings::Log {
                from: self.email_from.clone(),
            },
            "smtp" => MailSettings::Smtp(SmtpSettings {
                host: self
                    .smtp_host
                    .clone()
                    .context("QUARTERDECK_EMAIL_TRANSPORT=smtp needs QUARTERDECK_SMTP_HOST (smtp_host)")?,
                port: self.smtp_port,
                username: self.smtp_username.clone(),
                password: self.smtp_password.clone(),
                tls: match self.smtp_tls.as_str() {
                    "none" => SmtpTls::None,
                    "starttls" => SmtpTls::StartTls,
                    "tls" => SmtpTls::Tls,
                    other => bail!("smtp_tls (QUARTERDECK_SMTP_TLS) must be none, starttls or tls, not {other:?}"),
                },
                from: self.email_from.clone(),
            }),
            "resend" => MailSettings::Resend(ResendSettings {
                api_key: self
                    .resend_api_key
                    .clone()
                    .context("QUARTERDECK_EMAIL_TRANSPORT=resend needs QUARTERDECK_RESEND_API_KEY (resend_api_key)")?,
                from: self.email_from.clone(),
                api_url: self.resend_api_url.clone(),
            }),
            other => bail!("email_transport (QUARTERDECK_EMAIL_TRANSPORT) must be log, smtp or resend, not {other:?}"),
        })
    }

    /// The role catalog: built-in, or the platform roles plus `roles_file`'s tenant roles.
    /// The API key prefix and scope catalog, checked.
    /// The meters and the price book, checked against each other.
    pub fn usage_catalogs(
        &self,
    ) -> Result<(
        quarterdeck_domain::usage::MeterCatalog,
        quarterdeck_domain::pricing::PriceBook,
    )> {
        let meters =
            quarterdeck_domain::usage::MeterCatalog::new(self.meters.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
        let pricing = quarterdeck_domain::pricing::PriceBook::new(self.pricing.clone(), &meters)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok((meters, pricing))
    }

    /// How usage is taken in and kept.
    pub fn usage_policy(&self) -> quarterdeck_domain::core::UsagePolicy {
        let days = i64::from(self.usage_raw_retention_days);
        quarterdeck_domain::core::UsagePolicy {
            raw_retention: time::Duration::days(days),
            limits: quarterdeck_domain::usage::IngestLimits {
                max_batch: self.usage_max_batch_events,
                max_age: time::Duration::days(days - 1),
                max_skew: time::Duration::minutes(5),
            },
            events_per_second: self.usage_events_per_second,
            // PostgreSQL's sweep opens a connection per tenant (a database each), so a pass over
            // a thousand busy tenants takes longer than 4 s however small the backlog: a 4 s
            // limit there only stops ingestion (the benchmark: 9,000 events/s, lag still 16 s).
            // 30 s bounds the backlog without throttling what the sweep can keep up with.
            max_lag: match self.usage_max_lag_seconds {
                Some(0) => None,
                Some(s) => Some(time::Duration::seconds(i64::from(s))),
                None if self.database_url.is_some() => Some(time::Duration::seconds(30)),
                None => Some(time::Duration::seconds(4)),
            },
        }
    }

    /// `tenant_pool_max_open`, or when unset: on PostgreSQL 64 (connections are the budget
    /// there, `database_max_connections`); on SQLite enough for a thousand busy tenants
    /// (1,024: the usage sweep writes every tenant that sent events, and reopening each file
    /// on every sweep — a pool cache smaller than the tenants — cost the benchmark more than
    /// half its throughput), fewer when the open-files limit is low (6 files a tenant, 1,280
    /// kept for connections and the rest), at least 64.
    pub fn tenant_pools_open_at_most(&self, open_files: Option<u64>) -> usize {
        if let Some(n) = self.tenant_pool_max_open {
            return n;
        }
        if self.database_url.is_some() {
            return 64;
        }
        let limit = open_files.and_then(|n| usize::try_from(n).ok()).unwrap_or(1024);
        (limit.saturating_sub(1_280) / 6).clamp(64, 1_024)
    }

    pub fn api_key_policy(&self) -> Result<quarterdeck_domain::api_key::ApiKeyPolicy> {
        quarterdeck_domain::api_key::ApiKeyPolicy::new(&self.api_key_prefix, self.api_key_scopes.clone())
            .map_err(|e| anyhow::anyhow!("{e} (QUARTERDECK_API_KEY_PREFIX / QUARTERDECK_API_KEY_SCOPES)"))
    }

    /// The provider catalog, checked.
    pub fn provider_catalog(&self) -> Result<quarterdeck_domain::provider::ProviderCatalog> {
        quarterdeck_domain::provider::ProviderCatalog::new(self.providers.clone()).map_err(|e| anyhow::anyhow!("{e}"))
    }

    pub fn catalog(&self) -> Result<quarterdeck_domain::role::Catalog> {
        match &self.roles_file {
            None => Ok(quarterdeck_domain::role::Catalog::default()),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("roles_file (QUARTERDECK_ROLES_FILE): cannot read {}", path.display()))?;
                let file: quarterdeck_domain::role::RolesFile = toml::from_str(&text)
                    .with_context(|| format!("roles_file {}: not a valid roles file", path.display()))?;
                quarterdeck_domain::role::Catalog::from_file(file)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
            }
        }
    }

    pub fn trusted_proxy_ips(&self) -> Result<Vec<IpAddr>> {
        self.trusted_proxies
            .iter()
            .map(|p| {
                p.parse()
                    .with_context(|| format!("trusted_proxies: {p:?} is not an IP address"))
            })
            .collect()
    }

    /// The policy for fetches on a user's say-so, from `outbound_allow_private`.
    pub fn outbound_policy(&self) -> Result<quarterdeck_outbound::OutboundPolicy> {
        quarterdeck_outbound::OutboundPolicy::from_ranges(&self.outbound_allow_private)
            .map_err(|e| anyhow::anyhow!("outbound_allow_private (QUARTERDECK_OUTBOUND_ALLOW_PRIVATE): {e}"))
    }

    /// Warn about `QUARTERDECK_*` variables that are not settings (likely typos).
    pub fn unknown_env_vars() -> Vec<String> {
        std::env::vars()
            .map(|(k, _)| k)
            .filter_map(|k| k.strip_prefix("QUARTERDECK_").map(str::to_owned))
            .filter(|k| {
                let lower = k.to_ascii_lowercase();
                !KEYS.iter().any(|(n, _)| *n == lower) && !OTHER_VARS.contains(&k.as_str()) && !k.starts_with("TEST_")
            })
            .map(|k| format!("QUARTERDECK_{k}"))
            .collect()
    }

    /// The key that seals identity providers' client secrets: `secret_key` (or its file), else
    /// `{data_dir}/secret.key`, created (owner-only) with a new random key on first use.
    pub fn secret_key(
        &self,
        rng: &dyn quarterdeck_domain::token::Random,
    ) -> Result<quarterdeck_domain::sso::SecretKey> {
        use quarterdeck_domain::sso::SecretKey;
        let invalid =
            |from: &str| anyhow::anyhow!("{from}: not a secret key (64 hex characters, or 32 bytes in base64)");
        if let Some(text) = &self.secret_key {
            return SecretKey::parse(text).ok_or_else(|| invalid("secret_key (QUARTERDECK_SECRET_KEY)"));
        }
        let path = self.data_dir.join("secret.key");
        match std::fs::read_to_string(&path) {
            Ok(text) => SecretKey::parse(&text).ok_or_else(|| invalid(&path.display().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = SecretKey::generate(rng);
                crate::data_dir::create_private_dir(&self.data_dir)
                    .with_context(|| format!("creating the data directory {}", self.data_dir.display()))?;
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let mut file = options
                    .open(&path)
                    .with_context(|| format!("creating {}", path.display()))?;
                std::io::Write::write_all(&mut file, format!("{}\n", key.to_hex()).as_bytes())
                    .with_context(|| format!("writing {}", path.display()))?;
                tracing::info!(path = %path.display(), "created the secret key that seals identity providers' client secrets");
                Ok(key)
            }
            Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
        }
    }

    /// The secret key as it already is, never a new one: what the audit commands check the
    /// chain with. A missing key is an error that says where it was looked for.
    pub fn existing_secret_key(&self) -> Result<quarterdeck_domain::sso::SecretKey> {
        use quarterdeck_domain::sso::SecretKey;
        if self.secret_key.is_some() {
            return self.secret_key(&quarterdeck_domain::token::OsRandom);
        }
        let path = self.data_dir.join("secret.key");
        match std::fs::read_to_string(&path) {
            Ok(text) => SecretKey::parse(&text).ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: not a secret key (64 hex characters, or 32 bytes in base64)",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "no secret key: {} does not exist and secret_key (QUARTERDECK_SECRET_KEY or QUARTERDECK_SECRET_KEY_FILE) \
                 is not set. The audit chain is keyed with the server's secret key: point data_dir \
                 (QUARTERDECK_DATA_DIR) at the server's data directory, or set the same secret key the server uses. \
                 A new key would not verify anything, so none is made",
                path.display()
            ),
            Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
        }
    }

    /// The effective settings, secrets masked, for the Settings page.
    pub fn rows(&self) -> Vec<(String, String, String)> {
        let value = serde_json::to_value(self).unwrap_or_default();
        KEYS.iter()
            .map(|(k, secret)| {
                let v = &value[*k];
                let shown = match v {
                    // A region's URL may hold a password: said to be set, never shown.
                    _ if *k == "regions" => self
                        .regions
                        .places()
                        .map(|(n, p)| match (&p.database_url, &p.dir) {
                            (Some(_), _) => format!("{n} (own cluster: •••••• (set))"),
                            (None, Some(dir)) => format!("{n} ({})", dir.display()),
                            (None, None) => n.clone(),
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                    serde_json::Value::Null => "—".to_owned(),
                    _ if *secret => "•••••• (set)".to_owned(),
                    serde_json::Value::String(s) => s.clone(),
                    // Lists of names, or of tables (providers) by their ids.
                    serde_json::Value::Array(a) => a
                        .iter()
                        .filter_map(|x| x.as_str().or_else(|| x["id"].as_str()))
                        .collect::<Vec<_>>()
                        .join(", "),
                    other => other.to_string(),
                };
                (k.to_string(), format!("QUARTERDECK_{}", k.to_ascii_uppercase()), shown)
            })
            .collect()
    }
}

fn secret_from(value: Option<String>, file: Option<&Path>, key: &str) -> Result<Option<String>> {
    match (value, file) {
        (Some(_), Some(_)) => bail!("set {key} or {key}_file, not both"),
        (v, None) => Ok(v),
        (None, Some(path)) => {
            let s =
                std::fs::read_to_string(path).with_context(|| format!("{key}_file: cannot read {}", path.display()))?;
            Ok(Some(s.trim_end_matches(['\r', '\n']).to_owned()))
        }
    }
}

/// figment's error, with the key named in words a person acts on.
fn describe(e: figment::Error) -> String {
    let mut out = Vec::new();
    for err in e {
        let key = err.path.join(".");
        let msg = match &err.kind {
            figment::error::Kind::UnknownField(field, _) => {
                format!("unknown setting `{field}` in the settings file (see the README for the list)")
            }
            other => {
                if key.is_empty() {
                    other.to_string()
                } else {
                    format!("setting `{key}` (QUARTERDECK_{}): {other}", key.to_ascii_uppercase())
                }
            }
        };
        out.push(msg);
    }
    out.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_in_the_file_are_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("qd-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("q.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\nbase_ulr = \"http://x\"\n").unwrap();
        let err = Settings::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("base_ulr"), "{err}");
    }

    #[test]
    fn regions_read_as_a_list_or_a_table_per_region_and_a_region_url_is_never_shown() {
        let dir = std::env::temp_dir().join(format!("qd-regions-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("q.toml");
        std::fs::write(&path, "regions = [\"eu\", \"us\"]\n").unwrap();
        let s = Settings::load(Some(&path)).unwrap();
        assert_eq!(s.regions.names(), ["eu", "us"]);
        assert!(
            s.regions
                .locations()
                .iter()
                .all(|(_, l)| *l == quarterdeck_store::RegionLocation::Shared)
        );
        std::fs::write(
            &path,
            "database_url = \"postgres://q@control/q\"\n[regions.us]\ndatabase_url = \"postgres://q:pw@pg-us/q\"\n[regions.eu]\n",
        )
        .unwrap();
        let s = Settings::load(Some(&path)).unwrap();
        assert_eq!(s.regions.names(), ["eu", "us"]);
        assert_eq!(
            s.regions.locations()[1].1,
            quarterdeck_store::RegionLocation::Postgres("postgres://q:pw@pg-us/q".into())
        );
        let shown = s.rows().into_iter().find(|r| r.0 == "regions").unwrap().2;
        assert_eq!(shown, "eu, us (own cluster: •••••• (set))");
        // A directory is for SQLite, a URL for PostgreSQL.
        std::fs::write(&path, "[regions.eu]\ndatabase_url = \"postgres://q@pg-eu/q\"\n").unwrap();
        let e = Settings::load(Some(&path)).unwrap_err().to_string();
        assert!(e.contains("regions.eu.database_url"), "{e}");
        std::fs::write(
            &path,
            "database_url = \"postgres://q@control/q\"\n[regions.eu]\ndir = \"/x\"\n",
        )
        .unwrap();
        let e = Settings::load(Some(&path)).unwrap_err().to_string();
        assert!(e.contains("regions.eu.dir"), "{e}");
    }

    #[test]
    fn tenant_pools_fit_a_thousand_sqlite_tenants_within_the_open_files_limit() {
        let sqlite = Settings::default();
        assert_eq!(sqlite.tenant_pools_open_at_most(Some(1_048_576)), 1_024);
        assert_eq!(sqlite.tenant_pools_open_at_most(Some(4_096)), (4_096 - 1_280) / 6);
        assert_eq!(sqlite.tenant_pools_open_at_most(Some(1_024)), 64);
        assert_eq!(sqlite.tenant_pools_open_at_most(None), 64);
        let postgres = Settings {
            database_url: Some("postgres://localhost/q".into()),
            ..Settings::default()
        };
        assert_eq!(postgres.tenant_pools_open_at_most(Some(1_048_576)), 64);
        let set = Settings {
            tenant_pool_max_open: Some(3),
            ..Settings::default()
        };
        assert_eq!(set.tenant_pools_open_at_most(Some(1_048_576)), 3);
        assert!(
            Settings {
                tenant_pool_max_open: Some(0),
                ..Settings::default()
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn usage_backpressure_waits_longer_on_postgresql_unless_set() {
        let sqlite = Settings::default();
        assert_eq!(sqlite.usage_policy().max_lag, Some(time::Duration::seconds(4)));
        let postgres = Settings {
            database_url: Some("postgres://localhost/q".into()),
            ..Settings::default()
        };
        assert_eq!(postgres.usage_policy().max_lag, Some(time::Duration::seconds(30)));
        let set = Settings {
            usage_max_lag_seconds: Some(10),
            ..postgres
        };
        assert_eq!(set.usage_policy().max_lag, Some(time::Duration::seconds(10)));
        let off = Settings {
            usage_max_lag_seconds: Some(0),
            ..Settings::default()
        };
        assert_eq!(off.usage_policy().max_lag, None);
    }

    #[test]
    fn usage_settings_that_could_never_work_are_refused_at_start() {
        let refused = |s: Settings| s.validate().unwrap_err().to_string();
        let base = Settings::default;
        assert!(base().validate().is_ok());
        let e = refused(Settings {
            usage_raw_retention_days: 7,
            ..base()
        });
        assert!(e.contains("usage_raw_retention_days"), "{e}");
        let e = refused(Settings {
            usage_raw_retention_days: 4_000_000,
            ..base()
        });
        assert!(e.contains("at most 3650"), "{e}");
        let e = refused(Settings {
            usage_events_per_second: 100,
            ..base()
        });
        assert!(e.contains("usage_max_batch_events"), "{e}");
        let e = refused(Settings {
            regions: Regions::named(&["EU_West"]),
            ..base()
        });
        assert!(e.contains("EU_West"), "{e}");
        let mut bad_price = base();
        bad_price.pricing.prices[0].meter = "gpu.seconds".into();
        let e = refused(bad_price);
        assert!(e.contains("gpu.seconds"), "{e}");
    }

    #[test]
    fn secrets_are_masked_in_rows() {
        let s = Settings {
            database_url: Some("postgres://u:hunter2@db/x".into()),
            ..Default::default()
        };
        let rows = s.rows();
        assert!(rows.iter().all(|(_, _, v)| !v.contains("hunter2")));
    }
}
