//! Building and running the server.

use crate::settings::Settings;
use anyhow::{Context, Result};
use quarterdeck_domain::clock::{Clock, SystemClock};
use quarterdeck_domain::core::Links;
use quarterdeck_domain::mail::Mailer;
use quarterdeck_domain::password::PasswordHasher;
use quarterdeck_domain::session::SessionPolicy;
use quarterdeck_domain::token::{OsRandom, Random};
use quarterdeck_domain::{Core, CoreConfig};
use quarterdeck_store::{PoolLimits, StoreOptions};
use quarterdeck_web::{AppState, SettingRow, WebConfig};
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

/// Open the store (running the control database's migrations) and build the core.
pub async fn core(settings: &Settings, deps: Deps) -> Result<Arc<Core>> {
    let store = quarterdeck_store::open(&StoreOptions {
        database_url: settings.database_url.clone(),
        data_dir: settings.data_dir.clone(),
        tenant_pools: PoolLimits {
            max_open: settings.tenant_pool_max_open,
            connections_per_tenant: 2,
            idle: Duration::from_secs(settings.tenant_pool_idle_seconds),
        },
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
        regions: settings.regions.clone(),
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
        render_sso_notice: quarterdeck_mail::sso_notice_email,
        secret_key: settings.secret_key(&*deps.rng)?,
    };
    Ok(Arc::new(Core::new(store, deps.clock, deps.rng, hasher, config)))
}

impl App {
    /// Bind, migrate, create the bootstrap owner or log the setup link.
    pub async fn build(settings: Settings, deps: Deps) -> Result<Self> {
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {} (QUARTERDECK_LISTEN)", settings.listen))?;
        Self::with_listener(settings, listener, deps).await
    }

    /// Like [`App::build`] on a listener already bound (tests bind port 0 first, so that the
    /// base URL can name the port).
    pub async fn with_listener(settings: Settings, listener: TcpListener, deps: Deps) -> Result<Self> {
        let mailer =
            quarterdeck_mail::build(&settings.mail_settings()?).map_err(|e| anyhow::anyhow!("email settings: {e}"))?;
        let core = core(&settings, deps).await?;

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
        };
        let router = quarterdeck_web::router(AppState {
            core: core.clone(),
            config: Arc::new(web),
            sso: Arc::new(quarterdeck_web::SsoProtocols::new(Arc::new(
                quarterdeck_outbound::Outbound::new(settings.outbound_policy()?)
                    .map_err(|e| anyhow::anyhow!("the outbound HTTP client: {e}"))?,
            ))),
            guessing: Arc::default(),
        });
        Ok(Self {
            core,
            mailer,
            listener,
            router,
            settings,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serve until `shutdown` completes, with the housekeeping jobs alongside.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let housekeeping = tokio::spawn(housekeeping(self.core.clone(), self.settings.clone()));
        let outbox = tokio::spawn(deliver_outbox(
            self.core.clone(),
            self.mailer.clone(),
            Duration::from_millis(self.settings.outbox_poll_ms.max(10)),
        ));
        let result = axum::serve(
            self.listener,
            self.router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await;
        housekeeping.abort();
        outbox.abort();
        result.context("serving")
    }
}

/// Every tenant database migrated (in the background at start-up), then hourly: expired
/// sessions deleted and the databases of tenants past retention dropped.
async fn housekeeping(core: Arc<Core>, settings: Settings) {
    match migrate_tenants(&core).await {
        Ok(report) => {
            for (id, r) in report {
                if let Err(e) = r {
                    tracing::error!(tenant_id = %id, error = %e, "tenant database migration failed");
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "could not list tenants to migrate"),
    }
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        let now = core.clock.now();
        let idle = time::Duration::minutes(i64::from(settings.session_idle_minutes));
        if let Err(e) = core.store.delete_expired_sessions(now - idle, now).await {
            tracing::warn!(error = %e, "session clean-up failed");
        }
        if let Err(e) = core.store.delete_expired_sso(now).await {
            tracing::warn!(error = %e, "single sign-on clean-up failed");
        }
        match core.purge_deleted_tenants().await {
            Ok(ids) if !ids.is_empty() => tracing::info!(
                count = ids.len(),
                "dropped the databases of deleted tenants past retention"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "purging deleted tenants failed"),
        }
    }
}

/// The outbox worker: the one place email is sent from.
async fn deliver_outbox(core: Arc<Core>, mailer: Arc<dyn Mailer>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = core.deliver_due(&*mailer).await {
            tracing::warn!(error = %e, "the outbox worker could not read or update the outbox");
        }
    }
}

/// Migrate every tenant database; one result per tenant.
pub async fn migrate_tenants(
    core: &Core,
) -> quarterdeck_domain::Result<Vec<(quarterdeck_domain::TenantId, quarterdeck_domain::Result<usize>)>> {
    let ids = core.store.tenant_ids().await?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let r = core.store.migrate_tenant(id).await;
        out.push((id, r));
    }
    Ok(out)
}
