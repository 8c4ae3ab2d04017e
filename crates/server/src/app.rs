//! Building and running the server.

use crate::data_dir::DataDirLock;
use crate::serve::ConnectionLimits;
use crate::settings::Settings;
use anyhow::{Context, Result};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use quarterdeck_domain::clock::{Clock, SystemClock};
use quarterdeck_domain::core::Links;
use quarterdeck_domain::mail::Mailer;
use quarterdeck_domain::meters::Meters;
use quarterdeck_domain::password::PasswordHasher;
use quarterdeck_domain::session::SessionPolicy;
use quarterdeck_domain::token::{OsRandom, Random};
use quarterdeck_domain::{Core, CoreConfig};
use quarterdeck_store::{PoolLimits, StoreOptions};
use quarterdeck_web::{AppState, EdgeLimits, SettingRow, WebConfig};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// A built server: bound, migrated, ready to serve.
pub struct App {
    pub core: Arc<Core>,
    pub mailer: Arc<dyn Mailer>,
    pub listener: TcpListener,
    pub router: axum::Router,
    pub settings: Settings,
    /// What the accept loop enforces (`serve.rs`).
    pub connections: ConnectionLimits,
    /// Held while this server lives: no second `serve` on the same SQLite data directory.
    pub data_dir_lock: Option<DataDirLock>,
    /// The separate metrics listener (`metrics_listen`) and what it serves.
    pub metrics: Option<(TcpListener, axum::Router)>,
}

/// What can be swapped in tests.
pub struct Deps {
    pub clock: Arc<dyn Clock>,
    pub rng: Arc<dyn Random>,
}

impl Default for Deps {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            rng: Arc::new(OsRandom),
        }
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Open the store (running the control database's migrations) and build the core; the secret
/// key is read, or made on first start.
pub async fn core(settings: &Settings, deps: Deps) -> Result<Arc<Core>> {
    let secret_key = settings.secret_key(&*deps.rng)?;
    core_with_key(settings, deps, secret_key).await
}

/// Like [`core`] with a secret key already read (the audit commands never make one).
pub async fn core_with_key(
    settings: &Settings,
    deps: Deps,
    secret_key: quarterdeck_domain::sso::SecretKey,
) -> Result<Arc<Core>> {
    measured_core(settings, deps, secret_key, Meters::default()).await
}

/// The server's own Prometheus recorder (one per server, none installed globally) with the
/// latency buckets, and the handle `/metrics` renders it with.
pub fn prometheus() -> (Meters, PrometheusHandle) {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(quarterdeck_domain::meters::HTTP_DURATION.to_owned()),
            quarterdeck_domain::meters::HTTP_BUCKETS,
        )
        .map(PrometheusBuilder::build_recorder)
        .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
    let handle = recorder.handle();
    (Meters::new(Arc::new(recorder)), handle)
}

async fn measured_core(
    settings: &Settings,
    deps: Deps,
    secret_key: quarterdeck_domain::sso::SecretKey,
    meters: Meters,
) -> Result<Arc<Core>> {
    let store = quarterdeck_store::open(&StoreOptions {
        database_url: settings.database_url.clone(),
        data_dir: settings.data_dir.clone(),
        tenant_pools: PoolLimits {
            max_open: settings.tenant_pools_open_at_most(crate::serve::raise_open_files_limit()),
            idle: Duration::from_secs(settings.tenant_pool_idle_seconds),
            max_connections: settings.database_max_connections,
            ..PoolLimits::default()
        },
        audit_key: quarterdeck_domain::audit::AuditKey::from_secret(&secret_key),
        intent_key: quarterdeck_store::intent_key(&secret_key),
        regions: settings.regions.locations(),
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))
    .context("opening the database")?;
    let hasher =
        PasswordHasher::new(cores(), Duration::from_secs(10), &*deps.rng).map_err(|e| anyhow::anyhow!("{e}"))?;
    let config = CoreConfig {
        sessions: SessionPolicy {
            idle: time::Duration::minutes(i64::from(settings.session_idle_minutes)),
            absolute: time::Duration::hours(i64::from(settings.session_absolute_hours)),
        },
        password_min_chars: settings.password_min_length,
        regions: settings.regions.names(),
        setup_link_ttl: time::Duration::hours(24),
        invitation_ttl: time::Duration::days(i64::from(settings.invitation_ttl_days)),
        otp_ttl: time::Duration::hours(i64::from(settings.one_time_password_hours)),
        impersonation_ttl: time::Duration::minutes(i64::from(settings.impersonation_minutes)),
        tenant_retention: time::Duration::days(i64::from(settings.tenant_retention_days)),
        catalog: settings.catalog()?,
        links: Links {
            scheme: settings.base_url.scheme().to_owned(),
            host: match settings.base_url.port() {
                Some(p) => format!("{}:{p}", settings.base_url.host_str().unwrap_or("localhost")),
                None => settings.base_url.host_str().unwrap_or("localhost").to_owned(),
            },
        },
        render_invitation: quarterdeck_mail::invitation_email,
        render_notice: quarterdeck_mail::notice_email,
        render_sso_notice: quarterdeck_mail::sso_notice_email,
        secret_key,
        api_keys: settings.api_key_policy()?,
        providers: settings.provider_catalog()?,
        meters: settings.usage_catalogs()?.0,
        pricing: settings.usage_catalogs()?.1,
        usage: settings.usage_policy(),
    };
    let mut core = Core::new(store, deps.clock, deps.rng, hasher, config);
    core.set_meters(meters);
    core.set_webhook_sender(Arc::new(crate::webhooks::OutboundWebhooks(Arc::new(
        quarterdeck_outbound::Outbound::new(settings.outbound_policy()?)
            .map_err(|e| anyhow::anyhow!("the outbound HTTP client: {e}"))?,
    ))));
    Ok(Arc::new(core))
}

impl App {
    /// Bind, migrate, create the bootstrap owner or log the setup link.
    pub async fn build(settings: Settings, deps: Deps) -> Result<Self> {
        let listener = crate::serve::bind(settings.listen)
            .with_context(|| format!("cannot listen on {} (QUARTERDECK_LISTEN)", settings.listen))?;
        Self::with_listener(settings, listener, deps).await
    }

    /// Like [`App::build`] on a listener already bound (tests bind port 0 first, so that the
    /// base URL can name the port).
    pub async fn with_listener(settings: Settings, listener: TcpListener, deps: Deps) -> Result<Self> {
        let open_files = crate::serve::raise_open_files_limit();
        let sqlite = settings.database_url.is_none();
        crate::data_dir::prepare(&settings.data_dir, sqlite)?;
        let data_dir_lock = if sqlite {
            Some(crate::data_dir::lock(&settings.data_dir)?)
        } else {
            None
        };
        let connections = ConnectionLimits {
            header_read_timeout: Duration::from_secs(settings.header_read_timeout_seconds),
            keep_alive: Duration::from_secs(settings.keep_alive_seconds),
            stall_timeout: Duration::from_secs(settings.request_timeout_seconds + settings.header_read_timeout_seconds),
            shutdown_grace: Duration::from_secs(settings.shutdown_grace_seconds),
            max_connections: settings.max_connections.unwrap_or_else(|| {
                crate::serve::default_max_connections(open_files, settings.tenant_pools_open_at_most(open_files))
            }),
        };
        let mailer =
            quarterdeck_mail::build(&settings.mail_settings()?).map_err(|e| anyhow::anyhow!("email settings: {e}"))?;
        let metrics_listener = match settings.metrics_listen {
            Some(addr) => Some({
                if !addr.ip().is_loopback() {
                    // No token there: whoever reaches the address reads the metrics.
                    tracing::warn!(
                        %addr,
                        "metrics_listen is not a loopback address: /metrics there has no token, so keep the address on a network only the scraper reaches"
                    );
                }
                crate::serve::bind(addr)
                    .with_context(|| format!("cannot listen on {addr} (QUARTERDECK_METRICS_LISTEN)"))?
            }),
            None => None,
        };
        let (meters, prometheus) = prometheus();
        let secret_key = settings.secret_key(&*deps.rng)?;
        let core = measured_core(&settings, deps, secret_key, meters).await?;
        if data_dir_lock.is_some() {
            // This server holds the data directory: what another one had leased, it left dying.
            match core.release_dead_leases().await {
                Ok(0) => {}
                Ok(released) => tracing::warn!(
                    released,
                    "released the leases a server that stopped without finishing left on emails, webhook deliveries and usage sweeps"
                ),
                // Not fatal: they lapse on their own.
                Err(e) => {
                    tracing::warn!(error = %e, "could not release the leases a stopped server left; they lapse on their own")
                }
            }
        }

        if let (Some(email), Some(password)) = (&settings.bootstrap_owner_email, &settings.bootstrap_owner_password) {
            let created = core
                .bootstrap_owner(email, password)
                .await
                .map_err(|e| anyhow::anyhow!("QUARTERDECK_BOOTSTRAP_OWNER_*: {e} {:?}", e.fields()))?;
            if created {
                tracing::info!(email = %email, "created the first owner from QUARTERDECK_BOOTSTRAP_OWNER_EMAIL");
            }
        }
        if let Some(token) = core.setup_token_if_needed().await.map_err(|e| anyhow::anyhow!("{e}"))? {
            let mut link = settings.base_url.join("/setup").context("building the setup link")?;
            link.query_pairs_mut().append_pair("token", token.expose());
            tracing::warn!("No owner exists yet. Open this one-time link within 24 hours to create one: {link}");
        }

        let web = WebConfig {
            base_url: settings.base_url.clone(),
            trusted_proxies: settings.trusted_proxy_ips()?,
            settings: settings
                .rows()
                .into_iter()
                .map(|(key, env, value)| SettingRow { key, env, value })
                .collect(),
            version: env!("CARGO_PKG_VERSION"),
            metrics_token: settings.metrics_token.clone(),
            edge: EdgeLimits {
                request_timeout: Duration::from_secs(settings.request_timeout_seconds),
                max_concurrent_requests: settings.max_concurrent_requests,
                max_body_bytes: settings.max_body_bytes,
                body_read_timeout: Duration::from_secs(settings.header_read_timeout_seconds),
            },
        };
        let state = AppState {
            core: core.clone(),
            config: Arc::new(web),
            sso: Arc::new(quarterdeck_web::SsoProtocols::new(Arc::new(
                quarterdeck_outbound::Outbound::new(settings.outbound_policy()?)
                    .map_err(|e| anyhow::anyhow!("the outbound HTTP client: {e}"))?,
            ))),
            prometheus,
        };
        let metrics = metrics_listener.map(|l| (l, quarterdeck_web::metrics_router(state.clone())));
        let router = quarterdeck_web::router(state);
        Ok(Self {
            core,
            mailer,
            listener,
            router,
            settings,
            connections,
            data_dir_lock,
            metrics,
        })
    }

    /// The separate metrics listener's address, if `metrics_listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serve until `shutdown` completes, with the housekeeping jobs alongside. Then: no new
    /// connection is accepted, requests in flight get `shutdown_grace_seconds` to finish, the
    /// background loops stop, and a housekeeping run cut short gives its lease back. Email
    /// sends and webhook attempts in flight finish within the same grace, and what they had
    /// claimed but not begun is given back (an attempt cut off after the grace: its webhook
    /// lease is given back, an email's lapses after 5 minutes).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let node: Arc<str> = Arc::from(node_name());
        let jobs = Arc::new(Jobs::default());
        let housekeeping = tokio::spawn(housekeeping(self.core.clone(), node.clone(), jobs.clone()));
        let reconcile = tokio::spawn(crate::reconcile::run(
            self.core.clone(),
            time::Duration::seconds(i64::from(self.settings.reconcile_margin_seconds)),
        ));
        let migrator = tokio::spawn(crate::migrator::background(
            self.core.clone(),
            self.settings.migrate_jobs,
        ));
        // Told when the shutdown begins, so email sends and webhook attempts in flight finish
        // alongside the requests in flight (within the same grace) and nothing new is claimed.
        let (stop_delivery, stopping) = tokio::sync::watch::channel(false);
        let outbox = tokio::spawn(deliver_outbox(
            self.core.clone(),
            self.mailer.clone(),
            Duration::from_millis(self.settings.outbox_poll_ms.max(10)),
            stopping.clone(),
            self.connections.shutdown_grace,
        ));
        let checkpoints = tokio::spawn(crate::audit::checkpoints(
            self.core.clone(),
            crate::audit::checkpoint_dir(&self.settings),
            time::Duration::minutes(i64::from(self.settings.audit_checkpoint_minutes)),
        ));
        let stop_flushes = tokio::sync::watch::Sender::new(false);
        let (feed, flushes, sweeper) = (
            tokio::spawn(verifier_feed(self.core.clone())),
            tokio::spawn(verifier_flushes(self.core.clone(), stop_flushes.subscribe())),
            tokio::spawn(usage_sweeper(self.core.clone())),
        );
        let webhooks = self.settings.deliver_webhooks.then(|| {
            tokio::spawn(crate::webhooks::deliver(
                self.core.clone(),
                stopping,
                self.connections.shutdown_grace,
            ))
        });
        // When the signal came: the deliveries' time runs from it, like the requests'.
        let signalled = Arc::new(std::sync::OnceLock::new());
        let shutdown = {
            let signalled = signalled.clone();
            async move {
                shutdown.await;
                let _ = signalled.set(tokio::time::Instant::now());
                stop_delivery.send_replace(true);
            }
        };
        let metrics = self.metrics.map(|(listener, router)| {
            let limits = self.connections;
            tokio::spawn(async move {
                if let Err(e) = crate::serve::serve(listener, router, limits, std::future::pending()).await {
                    tracing::error!(error = %e, "the metrics listener stopped");
                }
            })
        });
        let result = crate::serve::serve(self.listener, self.router, self.connections, shutdown).await;
        if let Some(m) = metrics {
            m.abort();
        }
        feed.abort();
        // Key hits and last use counted in memory are written once more, then the loop ends.
        stop_flushes.send_replace(true);
        if tokio::time::timeout(FINAL_FLUSH, flushes).await.is_err() {
            tracing::warn!("the final flush of API key counts did not finish in time");
        }
        sweeper.abort();
        // Once its sweep has stopped (no renewal after it), the usage sweep's lease is given
        // back: another node sweeps at once rather than when it lapses.
        let _ = sweeper.await;
        self.core.release_usage_sweeps().await;
        // Both end by themselves within the grace from the signal (cutting off what is still
        // running then, and giving back what they can); past that and a margin for those last
        // writes, they are aborted.
        let from = signalled.get().copied().unwrap_or_else(tokio::time::Instant::now);
        let deadline = from + self.connections.shutdown_grace + GIVE_BACK_WITHIN;
        for (what, task) in [("webhook delivery", webhooks), ("the outbox", Some(outbox))] {
            if let Some(mut task) = task
                && tokio::time::timeout_at(deadline, &mut task).await.is_err()
            {
                task.abort();
                tracing::warn!("{what} did not stop in time; aborted");
            }
        }
        housekeeping.abort();
        reconcile.abort();
        migrator.abort();
        checkpoints.abort();
        // Another node may run at once what this one was running.
        for job in jobs.running() {
            match self.core.release_job(job, &node).await {
                Ok(()) => tracing::info!(job, "gave back the lease of a job cut short by the shutdown"),
                Err(e) => tracing::warn!(job, error = %e, "could not give back a job's lease; it lapses by itself"),
            }
        }
        drop(self.data_dir_lock);
        tracing::info!("stopped");
        result.context("serving")
    }
}

/// This process's name in job leases: host, process id and a random suffix.
fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    format!(
        "{}:{}:{}",
        if host.is_empty() { "node" } else { host },
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// The jobs this node is running under a lease right now.
#[derive(Default)]
struct Jobs(std::sync::Mutex<Vec<&'static str>>);

impl Jobs {
    fn start(&self, job: &'static str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(job);
    }

    fn end(&self, job: &'static str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).retain(|j| *j != job);
    }

    fn running(&self) -> Vec<&'static str> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// How long the last flush of in-memory counts may take at shutdown.
const FINAL_FLUSH: Duration = Duration::from_secs(10);
/// At shutdown, how long the delivery loops may take past the grace to give back what they
/// had claimed.
pub(crate) const GIVE_BACK_WITHIN: Duration = Duration::from_secs(5);

/// The lease names of the jobs one node at a time runs.
pub const HOUSEKEEPING_JOB: &str = "housekeeping";
/// Housekeeping runs once per period, on one node.
const HOUSEKEEPING_PERIOD: time::Duration = time::Duration::hours(1);
/// A run's lease, renewed every third of it while the run goes on: a node that dies mid-run
/// holds the job this long at most.
const HOUSEKEEPING_RUN_LEASE: time::Duration = time::Duration::minutes(10);
/// How often each node looks whether the job is due (free).
const HOUSEKEEPING_CHECK: Duration = Duration::from_secs(60);

/// Housekeeping once per hour on whichever node claims it: expired sessions deleted, the
/// databases of tenants past retention dropped, raw usage past retention, expired
/// impersonations, published events past the feed's days, and expired shared limits (tenant
/// migrations run in `migrator::background`).
async fn housekeeping(core: Arc<Core>, node: Arc<str>, jobs: Arc<Jobs>) {
    let mut tick = tokio::time::interval(HOUSEKEEPING_CHECK);
    loop {
        tick.tick().await;
        match core.claim_job(HOUSEKEEPING_JOB, &node, HOUSEKEEPING_RUN_LEASE).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "could not claim housekeeping");
                continue;
            }
        }
        jobs.start(HOUSEKEEPING_JOB);
        let started = core.clock.now();
        run_under_lease(
            &core,
            HOUSEKEEPING_JOB,
            &node,
            HOUSEKEEPING_RUN_LEASE,
            renew_every(HOUSEKEEPING_RUN_LEASE),
            housekeeping_run(&core),
        )
        .await;
        // Done: the lease now marks the period as covered.
        if let Err(e) = core
            .hold_job_until(HOUSEKEEPING_JOB, &node, started + HOUSEKEEPING_PERIOD)
            .await
        {
            tracing::warn!(error = %e, "could not record the housekeeping run; another node may repeat it");
        }
        jobs.end(HOUSEKEEPING_JOB);
    }
}

/// A third of a lease: how often a job renews it while it runs.
fn renew_every(lease: time::Duration) -> Duration {
    Duration::try_from(lease / 3).unwrap_or(Duration::from_secs(60))
}

/// Run `work` (a job whose lease `node` holds) while a side task renews the lease to `lease`
/// from now every `every`: however long the run, no other node starts the job while this one
/// is alive (a node that dies stops renewing, and its lease lapses). A renewal that finds the
/// lease gone (it lapsed and another node took it) is logged: the job may run twice.
pub async fn run_under_lease<F: Future>(
    core: &Arc<Core>,
    job: &'static str,
    node: &str,
    lease: time::Duration,
    every: Duration,
    work: F,
) -> F::Output {
    let (core2, node2) = (core.clone(), node.to_owned());
    let renewer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            match core2.hold_job_until(job, &node2, core2.clock.now() + lease).await {
                Ok(true) => {}
                Ok(false) => tracing::warn!(job, "lost the lease of a running job; another node may run it too"),
                Err(e) => tracing::warn!(job, error = %e, "could not renew a running job's lease"),
            }
        }
    });
    // Stops the renewals however `work` ends (this future dropped at shutdown included).
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _renewer = AbortOnDrop(renewer);
    work.await
}

/// One housekeeping run (each step on its own: one failing does not stop the others).
async fn housekeeping_run(core: &Core) {
    if let Err(e) = core.delete_expired().await {
        tracing::warn!(error = %e, "clean-up of expired sessions and sign-in attempts failed");
    }
    match core.purge_deleted_tenants().await {
        Ok(ids) if !ids.is_empty() => tracing::info!(
            count = ids.len(),
            "dropped the databases of deleted tenants past retention"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "purging deleted tenants failed"),
    }
    match core.prune_usage().await {
        Ok(n) if n > 0 => tracing::info!(events = n, "dropped raw usage events past retention"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "dropping raw usage events past retention failed"),
    }
    match core.end_expired_impersonations().await {
        Ok(n) if n > 0 => tracing::info!(count = n, "ended impersonations that expired unused"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "ending expired impersonations failed"),
    }
    match core.prune_webhook_events().await {
        Ok(n) if n > 0 => tracing::info!(events = n, "dropped published events past the feed's 30 days"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "dropping published events past retention failed"),
    }
    match core.prune_limits().await {
        Ok(n) if n > 0 => tracing::info!(rows = n, "dropped expired throttle, rate and idempotency rows"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "dropping expired throttle, rate and idempotency rows failed"),
    }
}

/// How often the usage journals are swept into the tenants' databases.
const SWEEP_TICK: Duration = Duration::from_millis(250);

/// Moves accepted usage from each region's journal into the tenants' databases (a sweep
/// reads until the journal is drained; only the node holding a region's lease sweeps it).
async fn usage_sweeper(core: Arc<Core>) {
    let mut tick = tokio::time::interval(SWEEP_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        match core.sweep_all_usage().await {
            Ok(_) if failing => {
                failing = false;
                tracing::info!("usage sweeps work again");
            }
            Ok(_) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "sweeping the usage journal failed; the entries stay for the next sweep");
            }
            Err(_) => {}
        }
    }
}

/// How often the verification cache reads the change feed and flushes rate counts.
const VERIFIER_TICK: Duration = Duration::from_millis(200);

/// Keeps the verification cache honest: the change feed read every ~200 ms. A task of its
/// own, so that slow flushes never delay it (a feed not read for 800 ms turns the cache off).
async fn verifier_feed(core: Arc<Core>) {
    let mut tick = tokio::time::interval(VERIFIER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        match core.sync_verifier().await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("the data-plane change feed is read again; verification cache on");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "cannot read the data-plane change feed; verifying from the database");
            }
            Err(_) => {}
        }
    }
}

/// Rate counts flushed every ~200 ms; last use of keys and tokens and the credential-read
/// tallies every ~10 s (last use is for people reading a list: a write per key every 10 s at
/// most, batched, keeps it off the verification's cost even over 100,000 busy keys).
///
/// When `stop` changes (shutdown) it flushes everything once more and returns: a stop never
/// cuts a flush short, so the counts of the last moments are written, not lost.
async fn verifier_flushes(core: Arc<Core>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(VERIFIER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.changed() => true,
        };
        // The last round writes everything.
        n = if last { 0 } else { n.wrapping_add(1) };
        if let Err(e) = core.flush_key_hits().await {
            tracing::warn!(error = %e, "flushing API key rate counts failed; kept for the next flush");
        }
        if let Err(e) = core.flush_limit_counts().await {
            tracing::warn!(error = %e, "flushing Automation API and usage rate counts failed; kept for the next flush");
        }
        if n.is_multiple_of(50)
            && let Err(e) = core.flush_key_use().await
        {
            tracing::warn!(error = %e, "recording last use of API keys and service tokens failed");
        }
        if n.is_multiple_of(50)
            && let Err(e) = core.flush_credential_reads().await
        {
            tracing::warn!(error = %e, "writing provider-credential read events failed");
        }
        if last {
            return;
        }
    }
}

/// The outbox worker: the one place email is sent from.
async fn deliver_outbox(
    core: Arc<Core>,
    mailer: Arc<dyn Mailer>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
    grace: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stopping = quarterdeck_domain::core::OutboxStop::default();
    let told = |stop: &tokio::sync::watch::Receiver<bool>| *stop.borrow() || stop.has_changed().is_err();
    while !told(&stop) {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => continue,
        }
        let run = core.deliver_due_until(&*mailer, &stopping);
        tokio::pin!(run);
        let result = tokio::select! {
            r = &mut run => r,
            _ = stop.changed() => {
                // The message being sent is finished (within the grace); the batch's rest is
                // given back. Cut off after the grace: the rest is given back all the same,
                // and the one being sent keeps its lease (it may have gone out).
                stopping.stop();
                match tokio::time::timeout(grace, &mut run).await {
                    Ok(r) => r,
                    Err(_) => {
                        // `run` is no longer polled: the send is stopped where it was.
                        tracing::warn!("an email was still being sent after the shutdown grace; cut off, its lease lapses");
                        match tokio::time::timeout(crate::app::GIVE_BACK_WITHIN, core.give_back_cut_off_batch(&stopping)).await {
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => tracing::warn!(error = %e, "could not give back the emails of a cut-off batch; their lease lapses"),
                            Err(_) => tracing::warn!("the emails of a cut-off batch could not be given back in time; their lease lapses"),
                        }
                        return;
                    }
                }
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "the outbox worker could not read or update the outbox");
        }
    }
}

/// Migrate every tenant database; one result per tenant.
pub async fn migrate_tenants(
    core: &Core,
) -> quarterdeck_domain::Result<Vec<(quarterdeck_domain::TenantId, quarterdeck_domain::Result<usize>)>> {
    core.migrate_tenant_databases().await
}
