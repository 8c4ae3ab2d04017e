//! The PostgreSQL backend: schema `identity` in the control database, and one database per
//! tenant (schema `security`), created when the tenant is created.
//!
//! A tenant database's name is `{prefix}_t_{tenant id as 32 hex digits}`, where the prefix is
//! the control database's name reduced to `[a-z0-9_]` (at most 24 characters): it is derived,
//! never taken from user input, and still quoted as an identifier.

use crate::pools::{PoolCache, PoolLimits, TenantPool};
use crate::{db_err, mig_err};
use sqlx::Postgres;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::str::FromStr;
use std::time::Duration;

static CONTROL_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres/control");
static TENANT_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres/tenant");
/// A region cluster's own journal (schema `journal` of the database its URL names).
static JOURNAL_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres/journal");

type Ts = time::OffsetDateTime;

/// This binary's tenant schema version: the highest tenant migration it carries.
fn tenant_schema_version() -> i64 {
    TENANT_MIGRATIONS.iter().map(|m| m.version).max().unwrap_or(0)
}

/// Multi-row statements number their parameters (`$1`…).
const NUMBERED_PARAMS: bool = true;

/// Usage journal appends write one row per event: the default region's journal lives in the
/// control database, whose schema has no batch table.
const JOURNAL_BATCH_ROWS: bool = false;

/// SQL's two-argument maximum (`usage_rollup` upserts of `max` meters).
const GREATEST: &str = "GREATEST";

/// Rows of a sweep as multi-row `VALUES` (see the SQLite store's `json_each` statements).
const USAGE_ROWS_AS_JSON: bool = false;

/// Statements around a commit that must survive a power loss: PostgreSQL's commits are
/// durable by default (`synchronous_commit = on`).
const DURABLE_COMMIT: Option<(&str, &str)> = None;

/// An audit event's `details.user_id` as text (the reconcile pass's late check).
const DETAILS_USER_ID: &str = "details->>'user_id'";

/// The outbox claim's locking clause (see `sql.rs`). Rows another worker is claiming are skipped, not waited for.
const OUTBOX_CLAIM_LOCK: &str = " FOR UPDATE SKIP LOCKED";

/// A transaction that reads, then writes on what it read (see `sql_limits.rs`): a plain one;
/// what it must not interleave with is excluded by an advisory lock it takes.
// READ COMMITTED whatever the cluster's default: each statement after the lock must see
// what the lock's previous holder committed (a snapshot taken at BEGIN would not).
const LOCKING_BEGIN: &str = "BEGIN ISOLATION LEVEL READ COMMITTED";

/// The token's advisory lock (`$1`: the token's id), held to the end of its idempotency
/// reservation's transaction: reservations of one token, on any node, count and insert one
/// after the other. The first key names the lock's use, so no other advisory lock collides.
/// Waiting is bounded (`lock_timeout`, 2 s: then 503 `busy`), so a burst of one token's new
/// keys holds no connection of the pool for long.
const IDEMPOTENCY_TOKEN_LOCK: Option<(&str, &str)> = Some((
    "SET LOCAL lock_timeout = '2s'",
    "SELECT pg_advisory_xact_lock(hashtext('quarterdeck.api_idempotency'), hashtext($1))",
));

/// Run first in a guess's reservation (`begin_guess`): a network's row is waited for 2 s at
/// most (then 503 `busy`), so a flood from one network never queues the pool's connections
/// behind its lock.
const GUESS_LOCK_BOUND: Option<&str> = Some("SET LOCAL lock_timeout = '2s'");

fn enc_ts(t: time::OffsetDateTime) -> Ts {
    t
}

fn dec_ts(t: Ts) -> time::OffsetDateTime {
    t
}

/// A cluster that holds tenant databases: the control cluster, or a region's own.
struct Cluster {
    /// The database the cluster was named by: tenant databases are created and dropped from
    /// here, and the region's usage journal lives in it (the control pool for the control
    /// cluster; schema `journal` for a region's).
    pool: PgPool,
    base: PgConnectOptions,
    /// This cluster's tenant pools, within this cluster's own connection budget.
    tenants: PoolCache<Postgres>,
}

pub struct PgStore {
    pool: PgPool,
    /// `clusters[0]` is the control cluster; then one per region with a URL of its own.
    clusters: Vec<Cluster>,
    /// Region name → index in `clusters` (regions not listed: the control cluster).
    region_cluster: std::collections::HashMap<String, usize>,
    placements: crate::Placements,
    prefix: String,
    /// How long a request waits for a connection before it is refused as busy.
    wait: Duration,
    /// Keys the audit chain (see `with_audit_key`); without it no keyed event can be written.
    audit_key: Option<quarterdeck_domain::audit::AuditKey>,
    /// Seals the email bodies of intents (see `sql_reconcile.rs`).
    intent_key: Option<quarterdeck_domain::sso::SecretKey>,
    /// Tenants a usage sweep writes at once: half the tenant connection slots (the other
    /// half stays for requests), at most 8. Mostly waiting (connecting, the commit's fsync),
    /// so more than the cores.
    sweep_parallel: usize,
}

fn with_schema(opts: PgConnectOptions, schema: &str) -> PgConnectOptions {
    opts.options([("search_path", schema)])
}

impl PgStore {
    pub async fn open(
        url: &str,
        limits: PoolLimits,
        regions: &[(String, crate::RegionLocation)],
    ) -> quarterdeck_domain::Result<Self> {
        let base = PgConnectOptions::from_str(url)
            .map_err(db_err)?
            .application_name("quarterdeck");
        let (control_connections, tenant_slots) = limits.pg_split();
        let control_db = base.get_database().unwrap_or("postgres").to_owned();
        let mut prefix: String = control_db
            .to_ascii_lowercase()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(24)
            .collect();
        if prefix.is_empty() {
            prefix = "qd".to_owned();
        }
        // The schema must exist before sqlx creates its bookkeeping table in it.
        let bootstrap = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(base.clone())
            .await
            .map_err(db_err)?;
        sqlx::query("CREATE SCHEMA IF NOT EXISTS identity")
            .execute(&bootstrap)
            .await
            .map_err(db_err)?;
        bootstrap.close().await;
        // Control connections are kept (no idle timeout, no lifetime): a connection closed and
        // another opened at once could, for a moment, both be on the server.
        let pool = PgPoolOptions::new()
            .max_connections(control_connections)
            .acquire_timeout(limits.wait)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(with_schema(base.clone(), "identity"))
            .await
            .map_err(db_err)?;
        CONTROL_MIGRATIONS.run(&pool).await.map_err(mig_err)?;
        // A tenant's connection is closed after a second unused (`tenant_pool_idle_seconds`
        // if shorter), and its slot given back once its backend has ended.
        let tenant_limits = PoolLimits {
            idle: limits.idle.min(Duration::from_secs(1)),
            ..limits
        };
        let mut clusters = vec![Cluster {
            pool: pool.clone(),
            base: base.clone(),
            tenants: PoolCache::new(tenant_limits, tenant_slots, Some(retire(pool.clone(), limits.wait))),
        }];
        let mut region_cluster = std::collections::HashMap::new();
        for (name, location) in regions {
            match location {
                crate::RegionLocation::Shared => {}
                crate::RegionLocation::Dir(_) => {
                    return Err(Error::Internal(format!(
                        "region {name:?} names a directory, but the store is PostgreSQL: give it a database_url"
                    )));
                }
                crate::RegionLocation::Postgres(url) => {
                    let cluster = Self::open_region(name, url, limits, tenant_limits).await?;
                    region_cluster.insert(name.clone(), clusters.len());
                    clusters.push(cluster);
                }
            }
        }
        Ok(Self {
            pool,
            clusters,
            region_cluster,
            placements: crate::Placements::default(),
            prefix,
            wait: limits.wait,
            audit_key: None,
            intent_key: None,
            sweep_parallel: (tenant_slots / 2).clamp(1, 8),
        })
    }

    /// A region's own cluster: its database (schema `journal`, migrated) and its budget of
    /// `database_max_connections`: 2 for the journal and administration, the rest for its
    /// tenant pools.
    async fn open_region(name: &str, url: &str, limits: PoolLimits, tenant_limits: PoolLimits) -> Result<Cluster> {
        let described = |e: sqlx::Error| Error::Internal(format!("region {name:?}: database: {e}"));
        let base = PgConnectOptions::from_str(url)
            .map_err(described)?
            .application_name("quarterdeck");
        let bootstrap = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(limits.wait.max(Duration::from_secs(10)))
            .connect_with(base.clone())
            .await
            .map_err(described)?;
        sqlx::query("CREATE SCHEMA IF NOT EXISTS journal")
            .execute(&bootstrap)
            .await
            .map_err(described)?;
        bootstrap.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(limits.wait)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(with_schema(base.clone(), "journal"))
            .await
            .map_err(described)?;
        JOURNAL_MIGRATIONS.run(&pool).await.map_err(mig_err)?;
        let slots = usize::try_from(limits.max_connections.saturating_sub(2).max(1)).unwrap_or(1);
        Ok(Cluster {
            tenants: PoolCache::new(tenant_limits, slots, Some(retire(pool.clone(), limits.wait))),
            pool,
            base,
        })
    }

    /// Where a region's tenant databases live.
    fn cluster_of_region(&self, region: &str) -> &Cluster {
        let i = self.region_cluster.get(region).copied().unwrap_or(0);
        self.clusters.get(i).unwrap_or(&self.clusters[0])
    }

    /// Whether two regions keep their tenant databases in the same place.
    fn same_place(&self, a: &str, b: &str) -> bool {
        self.region_cluster.get(a) == self.region_cluster.get(b)
    }

    /// The cluster of a tenant's database (its region's, looked up once; the control cluster
    /// when every region is there, or for a tenant without a row).
    async fn cluster(&self, id: TenantId) -> Result<&Cluster> {
        if self.region_cluster.is_empty() {
            return Ok(&self.clusters[0]);
        }
        let known = self
            .placements
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id)
            .cloned();
        let region = match known {
            Some(r) => r,
            None => {
                let region: Option<String> = sqlx::query_scalar("SELECT region FROM tenant WHERE id = $1")
                    .bind(id.0)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?;
                let Some(region) = region else {
                    return Ok(&self.clusters[0]);
                };
                self.placements
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(id, region.clone());
                region
            }
        };
        Ok(self.cluster_of_region(&region))
    }

    /// A region's usage journal: a table of the database of its own cluster, or of the control
    /// database for regions on the control cluster. PostgreSQL serialises its writers itself.
    async fn journal_pool(&self, region: &str) -> Result<(PgPool, Option<std::sync::Arc<tokio::sync::Mutex<()>>>)> {
        Ok((self.cluster_of_region(region).pool.clone(), None))
    }

    /// PostgreSQL queues writers itself (the audit head's row lock).
    async fn writer_permit(&self) -> Option<crate::WriterPermit> {
        None
    }

    fn db_name(&self, id: TenantId) -> String {
        format!("{}_t_{}", self.prefix, id.0.simple())
    }

    fn check_name(name: &str) -> Result<&str> {
        if !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            Ok(name)
        } else {
            Err(Error::Internal(format!("refusing unsafe database name {name:?}")))
        }
    }

    /// The pool of a user directory: the control database, or a tenant's database.
    async fn dir_pool(&self, dir: Directory) -> Result<TenantPool<Postgres>> {
        match dir {
            Directory::Platform => Ok(TenantPool::unleased(self.pool.clone())),
            Directory::Tenant(id) => {
                // Checked whenever the pool is opened (a second after its last use at most):
                // a tenant behind this binary's schema is not served.
                if !self.cluster(id).await?.tenants.is_open(id) {
                    crate::ensure_current(&self.pool, id, tenant_schema_version()).await?;
                }
                self.tenant_pool(id, &self.db_name(id)).await
            }
        }
    }

    /// A tenant's pool: one connection (one slot of its cluster's budget), closed after a
    /// second idle.
    async fn tenant_pool(&self, id: TenantId, db_name: &str) -> Result<TenantPool<Postgres>> {
        let cluster = self.cluster(id).await?;
        let opts = with_schema(cluster.base.clone().database(Self::check_name(db_name)?), "security");
        let wait = self.wait;
        cluster
            .tenants
            .get(id, |backends| {
                PgPoolOptions::new()
                    .max_connections(1)
                    .min_connections(0)
                    // The cache closes the whole pool when idle (and gives its slot back).
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .acquire_timeout(wait)
                    .after_connect(move |conn, _| {
                        let backends = backends.clone();
                        Box::pin(async move {
                            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                                .fetch_one(&mut *conn)
                                .await?;
                            backends
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .push(pid);
                            Ok(())
                        })
                    })
                    .connect_lazy_with(opts.clone())
            })
            .await
    }

    async fn provision_tenant_db(&self, id: TenantId, region: &str) -> Result<String> {
        self.placements
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, region.to_owned());
        let name = self.db_name(id);
        let quoted = format!("\"{}\"", Self::check_name(&name)?);
        // The name is derived from a UUID and checked by `check_name`: safe to splice.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {quoted}")))
            .execute(&self.cluster_of_region(region).pool)
            .await
            .map_err(db_err)?;
        let ready = async {
            // Create the schema first (see `open`); on the tenant's own pool, so that the
            // connection counts against the budget (a search_path naming a schema that does
            // not exist yet is allowed, and is looked up again once it does).
            let pool = self.tenant_pool(id, &name).await?;
            sqlx::query("CREATE SCHEMA IF NOT EXISTS security")
                .execute(&*pool)
                .await
                .map_err(db_err)?;
            TENANT_MIGRATIONS.run(&*pool).await.map_err(mig_err)?;
            sqlx::query("INSERT INTO tenant_info (id, tenant_id, created_at) VALUES (1, $1, now())")
                .bind(id.0)
                .execute(&*pool)
                .await
                .map_err(db_err)?;
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = ready {
            let _ = self.drop_tenant_db(id, &name).await;
            return Err(e);
        }
        Ok(name)
    }

    async fn drop_tenant_db(&self, id: TenantId, db_name: &str) -> Result<()> {
        let cluster = self.cluster(id).await?;
        cluster.tenants.remove(id).await;
        let quoted = format!("\"{}\"", Self::check_name(db_name)?);
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"
        )))
        .execute(&cluster.pool)
        .await
        .map_err(db_err)?;
        self.placements
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
        Ok(())
    }

    async fn migrate_tenant_db(&self, id: TenantId, db_name: &str) -> Result<usize> {
        let pool = self.tenant_pool(id, db_name).await?;
        sqlx::query("CREATE SCHEMA IF NOT EXISTS security")
            .execute(&*pool)
            .await
            .map_err(db_err)?;
        let count = |p: PgPool| async move {
            sqlx::query("SELECT COUNT(*) AS n FROM _sqlx_migrations")
                .fetch_one(&p)
                .await
                .and_then(|r| r.try_get::<i64, _>("n"))
                .map(|n| usize::try_from(n).unwrap_or(0))
                .unwrap_or(0)
        };
        let before = count((*pool).clone()).await;
        TENANT_MIGRATIONS.run(&*pool).await.map_err(mig_err)?;
        Ok(count((*pool).clone()).await.saturating_sub(before))
    }

    /// The name `drop_tenant_db` takes for a tenant's database.
    fn tenant_db_name(&self, id: TenantId) -> String {
        self.db_name(id)
    }

    /// Whether the reconcile pass may drop an orphan tenant database itself: a cluster may hold another deployment's databases under a colliding prefix.
    fn orphans_droppable(&self) -> bool {
        false
    }

    /// The tenants whose database exists, whatever the tenant rows say (the reconcile pass
    /// compares the two): every database named `{prefix}_t_{32 hex}` of the control cluster and
    /// of every region's own cluster. A database found on a region's cluster is placed there
    /// (unless the tenant's place is known already), so that settling an orphan acts on the
    /// cluster it was found on.
    async fn list_tenant_databases(&self) -> Result<Vec<TenantId>> {
        let stem = format!("{}_t_", self.prefix);
        let mut ids = Vec::new();
        for (i, cluster) in self.clusters.iter().enumerate() {
            let region = self
                .region_cluster
                .iter()
                .find(|(_, c)| **c == i)
                .map(|(r, _)| r.clone());
            let names: Vec<String> =
                sqlx::query_scalar("SELECT datname::text FROM pg_database WHERE starts_with(datname::text, $1)")
                    .bind(&stem)
                    .fetch_all(&cluster.pool)
                    .await
                    .map_err(db_err)?;
            for id in names
                .iter()
                .filter_map(|n| n.strip_prefix(&stem))
                .filter(|hex| hex.len() == 32)
                .filter_map(|hex| uuid::Uuid::parse_str(hex).ok())
                .map(TenantId)
            {
                if ids.contains(&id) {
                    continue;
                }
                if i != 0
                    && let Some(region) = &region
                {
                    self.placements
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .entry(id)
                        .or_insert_with(|| region.clone());
                }
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// The name of a tenant's database (for tests and operators).
    pub fn tenant_database_name(&self, id: TenantId) -> String {
        self.db_name(id)
    }

    pub async fn open_tenant_pools(&self) -> usize {
        self.clusters.iter().map(|c| c.tenants.open_count()).sum()
    }
}

/// Wait (polling, up to `wait`) until the given backends have left `pg_stat_activity`: a
/// connection closed by the client ends on the server a moment later, and its slot must not be
/// reused before, or the cluster would briefly see one connection more than the budget.
fn retire(control: PgPool, wait: Duration) -> crate::pools::Retire {
    std::sync::Arc::new(move |pids: Vec<i32>| {
        let control = control.clone();
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                let left: std::result::Result<i64, _> =
                    sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)")
                        .bind(&pids)
                        .fetch_one(&control)
                        .await;
                match left {
                    Ok(0) => return,
                    Ok(_) if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Ok(n) => {
                        tracing::warn!(
                            backends = n,
                            "closed tenant connections still on the server; reusing their slot"
                        );
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not check that closed tenant connections ended");
                        return;
                    }
                }
            }
        })
    })
}

crate::sql::impl_store!(PgStore, Postgres);
crate::sql_sso::impl_sso_store!(PgStore, Postgres);
crate::sql_data_plane::impl_data_plane_store!(PgStore, Postgres);
crate::sql_limits::impl_limit_store!(PgStore, Postgres);
crate::sql_usage::impl_usage_store!(PgStore, Postgres);
crate::sql_webhooks::impl_webhook_store!(PgStore, Postgres);
crate::sql_reconcile::impl_reconcile_store!(PgStore, Postgres);

crate::observe::impl_observe!(PgStore);

#[async_trait::async_trait]
impl quarterdeck_domain::store::Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }
    async fn control_readiness(&self) -> std::result::Result<(), &'static str> {
        self.readiness().await
    }
    async fn store_gauges(&self, now: time::OffsetDateTime) -> Result<quarterdeck_domain::meters::StoreGauges> {
        self.gauges(now).await
    }
    async fn release_dead_leases(&self, _regions: &[String]) -> Result<u64> {
        Ok(0)
    }
}
