//! The embedded backend: the control database and one file per tenant in the data directory.
//!
//! `{data_dir}/control.db` and `{data_dir}/tenants/{tenant_id}.db`, in WAL mode. File names
//! come from tenant ids (UUIDs), never from user input.

use crate::pools::{PoolCache, PoolLimits, TenantPool};
use crate::{db_err, mig_err};
use sqlx::Sqlite;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use std::path::{Path, PathBuf};
use std::time::Duration;

static CONTROL_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite/control");
static TENANT_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite/tenant");
static JOURNAL_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite/journal");

/// Multi-row statements use plain `?` parameters here (see `sql_usage.rs`).
const NUMBERED_PARAMS: bool = false;

/// Usage journal appends write one batch row per accepted batch (journal migration 0002);
/// per-event rows of older nodes are still read.
const JOURNAL_BATCH_ROWS: bool = true;

/// SQL's two-argument maximum (`usage_rollup` upserts of `max` meters).
const GREATEST: &str = "max";

/// A sweep writes a tenant's raw events and rollups with one short statement each, its rows
/// in one JSON array parameter read by `json_each`: the same text every time, so it is
/// prepared once per connection, where multi-row `VALUES` of varying length were parsed
/// anew for each chunk (12 % of the sweep's CPU in a profile) and cached in every
/// connection's statement cache.
const USAGE_ROWS_AS_JSON: bool = true;

/// A region's journal: its own file, with one writer at a time queued here.
type Journal = (SqlitePool, std::sync::Arc<tokio::sync::Mutex<()>>);

/// Unix microseconds.
type Ts = i64;

/// This binary's tenant schema version: the highest tenant migration it carries.
fn tenant_schema_version() -> i64 {
    TENANT_MIGRATIONS.iter().map(|m| m.version).max().unwrap_or(0)
}

/// Statements around a commit that must survive a power loss (a usage sweep's, before the
/// journal forgets its events): SQLite's connections run `synchronous = NORMAL`.
const DURABLE_COMMIT: Option<(&str, &str)> = Some(("PRAGMA synchronous = FULL", "PRAGMA synchronous = NORMAL"));

/// An audit event's `details.user_id` as text (the reconcile pass's late check).
const DETAILS_USER_ID: &str = "json_extract(details, '$.user_id')";

/// The outbox claim's locking clause (see `sql.rs`). The claim is one statement under SQLite's write lock: nothing to add.
const OUTBOX_CLAIM_LOCK: &str = "";

/// A transaction that reads, then writes on what it read (see `sql_limits.rs`): it takes the
/// file's write lock at its start, so no other connection (another `Core` on the same file
/// included) writes between its read and its write.
const LOCKING_BEGIN: &str = "BEGIN IMMEDIATE";

/// What a token's idempotency reservation takes first in its transaction: nothing here
/// (`LOCKING_BEGIN` holds the file's write lock already).
const IDEMPOTENCY_TOKEN_LOCK: Option<(&str, &str)> = None;
/// SQLite waits on its writer permit (in-process), never on a row lock.
const GUESS_LOCK_BOUND: Option<&str> = None;

fn enc_ts(t: time::OffsetDateTime) -> Ts {
    i64::try_from(t.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX)
}

fn dec_ts(micros: Ts) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

pub struct SqliteStore {
    pool: SqlitePool,
    /// One audited writer at a time on the control database, queued here (fairly, without
    /// sleeping) rather than in SQLite's busy handler.
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
    data_dir: PathBuf,
    tenants: PoolCache<Sqlite>,
    /// Keys the audit chain (see `with_audit_key`); without it no keyed event can be written.
    audit_key: Option<quarterdeck_domain::audit::AuditKey>,
    /// Seals the email bodies of intents (see `sql_reconcile.rs`).
    intent_key: Option<quarterdeck_domain::sso::SecretKey>,
    /// Each region's usage journal (`usage/<region>.db`), opened on first use.
    journals: tokio::sync::Mutex<std::collections::HashMap<String, Journal>>,
    /// Tenants a usage sweep writes at once.
    sweep_parallel: usize,
    /// Regions with a directory of their own (`{dir}/tenants/`, `{dir}/usage/`).
    region_dirs: std::collections::HashMap<String, PathBuf>,
    placements: crate::Placements,
}

fn options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(false)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true)
}

impl SqliteStore {
    pub async fn open(
        data_dir: &Path,
        limits: PoolLimits,
        regions: &[(String, crate::RegionLocation)],
    ) -> quarterdeck_domain::Result<Self> {
        let tenants_dir = data_dir.join("tenants");
        private_dir(&tenants_dir).map_err(|e| {
            quarterdeck_domain::Error::Internal(format!(
                "cannot create the data directory {}: {e}",
                tenants_dir.display()
            ))
        })?;
        let mut region_dirs = std::collections::HashMap::new();
        for (name, location) in regions {
            match location {
                crate::RegionLocation::Shared => {}
                crate::RegionLocation::Postgres(_) => {
                    return Err(quarterdeck_domain::Error::Internal(format!(
                        "region {name:?} names a database_url, but the store is SQLite: give it a dir"
                    )));
                }
                crate::RegionLocation::Dir(dir) => {
                    let tenants = dir.join("tenants");
                    private_dir(&tenants).map_err(|e| {
                        quarterdeck_domain::Error::Internal(format!(
                            "region {name:?}: cannot create {}: {e}",
                            tenants.display()
                        ))
                    })?;
                    region_dirs.insert(name.clone(), dir.clone());
                }
            }
        }
        private_file(&data_dir.join("control.db"))?;
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options(&data_dir.join("control.db")).create_if_missing(true))
            .await
            .map_err(db_err)?;
        CONTROL_MIGRATIONS.run(&pool).await.map_err(mig_err)?;
        Ok(Self {
            pool,
            writer: std::sync::Arc::new(tokio::sync::Mutex::new(())),
            data_dir: data_dir.to_owned(),
            // Files, not connections: the only cap is `max_open` pools.
            tenants: PoolCache::new(limits, limits.max_open, None),
            audit_key: None,
            intent_key: None,
            journals: tokio::sync::Mutex::new(std::collections::HashMap::new()),
            // A tenant's sweep on SQLite mostly waits on its files (opening, the checkpoint
            // and WAL removal when an evicted pool closes): an eighth of the open pools.
            sweep_parallel: (limits.max_open / 8).clamp(1, 16),
            region_dirs,
            placements: crate::Placements::default(),
        })
    }

    /// The directory holding a region's `tenants/` and `usage/`: its own, or the data dir.
    fn region_dir(&self, region: &str) -> &Path {
        self.region_dirs
            .get(region)
            .map_or(self.data_dir.as_path(), PathBuf::as_path)
    }

    /// Whether two regions keep their tenant databases in the same place.
    fn same_place(&self, a: &str, b: &str) -> bool {
        self.region_dirs.get(a) == self.region_dirs.get(b)
    }

    /// The directory of a tenant's region (looked up once; the data dir when no region has a
    /// directory of its own, or for a tenant without a row).
    async fn tenant_region_dir(&self, id: TenantId) -> Result<&Path> {
        if self.region_dirs.is_empty() {
            return Ok(&self.data_dir);
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
                    return Ok(&self.data_dir);
                };
                self.placements
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(id, region.clone());
                region
            }
        };
        Ok(self.region_dir(&region))
    }

    /// The region's usage journal: `{data_dir}/usage/{region}.db`, created and migrated on
    /// first use. A file of its own so that ingestion never waits for the control database's
    /// writer (the audit chain), and so that a region's usage stays in its region's storage.
    async fn journal_pool(&self, region: &str) -> Result<(SqlitePool, Option<std::sync::Arc<tokio::sync::Mutex<()>>>)> {
        if region.is_empty()
            || region.len() > 32
            || !region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(Error::Internal(format!(
                "refusing unsafe region name {region:?} for a journal file"
            )));
        }
        let mut journals = self.journals.lock().await;
        if let Some((pool, lock)) = journals.get(region) {
            return Ok((pool.clone(), Some(lock.clone())));
        }
        let dir = self.region_dir(region).join("usage");
        private_dir(&dir).map_err(|e| Error::Internal(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(format!("{region}.db"));
        private_file(&path)?;
        let pool = SqlitePoolOptions::new()
            .max_connections(3)
            // A batch is acknowledged once its journal commit returns: FULL makes that commit
            // survive a power loss too (NORMAL, the other databases' setting, survives a
            // process crash only). One fsync per accepted batch.
            .connect_with(
                options(&path)
                    .create_if_missing(true)
                    .synchronous(SqliteSynchronous::Full),
            )
            .await
            .map_err(db_err)?;
        JOURNAL_MIGRATIONS.run(&pool).await.map_err(mig_err)?;
        let lock = std::sync::Arc::new(tokio::sync::Mutex::new(()));
        journals.insert(region.to_owned(), (pool.clone(), lock.clone()));
        Ok((pool, Some(lock)))
    }

    async fn writer_permit(&self) -> Option<crate::WriterPermit> {
        Some(self.writer.clone().lock_owned().await)
    }

    async fn tenant_path(&self, id: TenantId) -> Result<PathBuf> {
        Ok(self
            .tenant_region_dir(id)
            .await?
            .join("tenants")
            .join(format!("{}.db", id.0.simple())))
    }

    /// The pool of a user directory: the control database, or a tenant's file (which must
    /// exist: a lookup never creates one).
    async fn dir_pool(&self, dir: Directory) -> Result<TenantPool<Sqlite>> {
        match dir {
            Directory::Platform => Ok(TenantPool::unleased(self.pool.clone())),
            Directory::Tenant(id) => {
                // Checked whenever the pool is opened: a tenant behind this binary's schema is
                // not served.
                if !self.tenants.is_open(id) {
                    crate::ensure_current(&self.pool, id, tenant_schema_version()).await?;
                }
                self.tenant_pool(id, false).await
            }
        }
    }

    async fn tenant_pool(&self, id: TenantId, create: bool) -> Result<TenantPool<Sqlite>> {
        let opts = options(&self.tenant_path(id).await?).create_if_missing(create);
        self.tenants
            .get(id, |_| {
                SqlitePoolOptions::new()
                    .max_connections(2)
                    .min_connections(0)
                    .idle_timeout(Duration::from_secs(60))
                    .connect_lazy_with(opts.clone())
            })
            .await
    }

    /// Create and migrate the tenant's file (in its region's directory); returns its name
    /// (relative to the data dir, or the full path in a region's own directory).
    async fn provision_tenant_db(&self, id: TenantId, region: &str) -> Result<String> {
        self.placements
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, region.to_owned());
        let path = self.tenant_path(id).await?;
        private_file(&path)?;
        let pool = self.tenant_pool(id, true).await?;
        TENANT_MIGRATIONS.run(&*pool).await.map_err(mig_err)?;
        sqlx::query("INSERT INTO tenant_info (id, tenant_id, created_at) VALUES (1, $1, unixepoch() * 1000000)")
            .bind(id.0)
            .execute(&*pool)
            .await
            .map_err(db_err)?;
        Ok(if self.region_dirs.contains_key(region) {
            path.display().to_string()
        } else {
            format!("tenants/{}.db", id.0.simple())
        })
    }

    async fn drop_tenant_db(&self, id: TenantId, _db_name: &str) -> Result<()> {
        self.tenants.remove(id).await;
        let path = self.tenant_path(id).await?;
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.clone().into_os_string();
            p.push(suffix);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Error::Internal(format!("cannot remove {}: {e}", path.display())));
                }
            }
        }
        self.placements
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
        Ok(())
    }

    async fn migrate_tenant_db(&self, id: TenantId, _db_name: &str) -> Result<usize> {
        let pool = self.tenant_pool(id, false).await?;
        let before = applied(&pool).await;
        TENANT_MIGRATIONS.run(&*pool).await.map_err(mig_err)?;
        Ok(applied(&pool).await.saturating_sub(before))
    }

    /// The name `drop_tenant_db` takes for a tenant's file.
    fn tenant_db_name(&self, id: TenantId) -> String {
        format!("tenants/{}.db", id.0.simple())
    }

    /// Whether the reconcile pass may drop an orphan tenant database itself: the data dir (and each region dir) belongs to this deployment alone.
    fn orphans_droppable(&self) -> bool {
        true
    }

    /// The tenants whose database exists, whatever the tenant rows say (the reconcile pass
    /// compares the two): every `tenants/<32 hex>.db` file of the data dir and of every region
    /// dir. A file found in a region's dir is placed there (unless the tenant's place is known
    /// already), so that settling an orphan acts on the file that was found.
    async fn list_tenant_databases(&self) -> Result<Vec<TenantId>> {
        let mut places: Vec<(Option<&String>, &Path)> = vec![(None, self.data_dir.as_path())];
        for (region, dir) in &self.region_dirs {
            if places.iter().all(|(_, d)| *d != dir.as_path()) {
                places.push((Some(region), dir.as_path()));
            }
        }
        let mut ids = Vec::new();
        for (region, base) in places {
            let dir = base.join("tenants");
            let entries =
                std::fs::read_dir(&dir).map_err(|e| Error::Internal(format!("cannot list {}: {e}", dir.display())))?;
            for entry in entries {
                let entry = entry.map_err(|e| Error::Internal(format!("cannot list {}: {e}", dir.display())))?;
                let name = entry.file_name();
                let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".db")) else {
                    continue;
                };
                if hex.len() == 32
                    && let Ok(id) = uuid::Uuid::parse_str(hex)
                {
                    let id = TenantId(id);
                    if ids.contains(&id) {
                        continue;
                    }
                    if let Some(region) = region {
                        self.placements
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .entry(id)
                            .or_insert_with(|| region.clone());
                    }
                    ids.push(id);
                }
            }
        }
        Ok(ids)
    }

    /// How many tenant pools are open now (for tests and the benchmark).
    pub async fn open_tenant_pools(&self) -> usize {
        self.tenants.open_count()
    }
}

/// Owner-only directories (0700, parents too): the databases hold password hashes, session
/// hashes and the audit trail.
fn private_dir(path: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path)
}

/// Create a database file owner-only (0600) before SQLite opens it (an existing one is left
/// as it is): SQLite gives its `-wal` and `-shm` files the database file's mode.
fn private_file(path: &Path) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .map(drop)
        .map_err(|e| Error::Internal(format!("cannot create {}: {e}", path.display())))
}

async fn applied(pool: &SqlitePool) -> usize {
    sqlx::query("SELECT COUNT(*) AS n FROM _sqlx_migrations")
        .fetch_one(pool)
        .await
        .and_then(|r| r.try_get::<i64, _>("n"))
        .map(|n| usize::try_from(n).unwrap_or(0))
        .unwrap_or(0)
}

crate::sql::impl_store!(SqliteStore, Sqlite);
crate::sql_sso::impl_sso_store!(SqliteStore, Sqlite);
crate::sql_data_plane::impl_data_plane_store!(SqliteStore, Sqlite);
crate::sql_limits::impl_limit_store!(SqliteStore, Sqlite);
crate::sql_usage::impl_usage_store!(SqliteStore, Sqlite);
crate::sql_webhooks::impl_webhook_store!(SqliteStore, Sqlite);
crate::sql_reconcile::impl_reconcile_store!(SqliteStore, Sqlite);

crate::observe::impl_observe!(SqliteStore);

#[async_trait::async_trait]
impl quarterdeck_domain::store::Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }
    async fn control_readiness(&self) -> std::result::Result<(), &'static str> {
        // The file this node opened must still be where it was (a volume unmounted or the
        // file removed: what is written now would be lost).
        if !self.data_dir.join("control.db").exists() {
            return Err("database_unavailable");
        }
        self.readiness().await
    }
    async fn store_gauges(&self, now: time::OffsetDateTime) -> Result<quarterdeck_domain::meters::StoreGauges> {
        self.gauges(now).await
    }
    async fn release_dead_leases(&self, regions: &[String]) -> Result<u64> {
        let mut released = 0;
        for sql in [
            "UPDATE outbox SET lease_token = NULL, leased_until = NULL WHERE status = 'pending' AND lease_token IS NOT NULL",
            "UPDATE webhook_delivery SET lease_token = NULL, leased_until = NULL WHERE status = 'pending' AND lease_token IS NOT NULL",
        ] {
            released += sqlx::query(sql)
                .execute(&self.pool)
                .await
                .map_err(db_err)?
                .rows_affected();
        }
        for region in regions {
            let (pool, lock) = self.journal_pool(region).await?;
            let _writer = match &lock {
                Some(l) => Some(l.lock().await),
                None => None,
            };
            released += sqlx::query(
                "UPDATE usage_journal_state SET holder = NULL, lease_until = NULL WHERE holder IS NOT NULL",
            )
            .execute(&pool)
            .await
            .map_err(db_err)?
            .rows_affected();
        }
        Ok(released)
    }
}
