//! Storage: the domain's store traits on SQLite (embedded, the default) and PostgreSQL.
//!
//! Both backends run the same SQL text (`$n` placeholders, `RETURNING`, `ON CONFLICT`), written
//! once in [`sql`] as a macro that each backend instantiates with its own pool type and time
//! encoding; only what truly differs (opening databases, creating and dropping a tenant's
//! database) is written per backend. On PostgreSQL the connections' `search_path` is the
//! schema (`identity` for the control database, `security` for a tenant's), so the SQL names
//! tables without a schema on both.

mod observe;
mod pools;
mod postgres;
mod sql;
mod sql_data_plane;
mod sql_limits;
mod sql_reconcile;
mod sql_sso;
mod sql_usage;
mod sql_webhooks;
mod sqlite;

pub use pools::{PoolLimits, TenantPool};

/// The region of a tenant, looked up in the control database once and remembered (a tenant's
/// placement never changes: a region change that would move its database is refused).
pub(crate) type Placements = std::sync::Mutex<std::collections::HashMap<quarterdeck_domain::TenantId, String>>;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

use quarterdeck_domain::error::{Error, Result};
use quarterdeck_domain::store::Store;
use std::path::PathBuf;
use std::sync::Arc;

/// Held while an audited write transaction is open (see `begin_audited`).
pub(crate) type WriterPermit = tokio::sync::OwnedMutexGuard<()>;

/// Where the data lives.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// `postgres://…` selects PostgreSQL; `None` selects SQLite files in `data_dir`.
    pub database_url: Option<String>,
    pub data_dir: PathBuf,
    pub tenant_pools: PoolLimits,
    /// Where each region's tenant databases live (regions not named here, and
    /// [`RegionLocation::Shared`] ones: the control cluster / the data directory's `tenants/`).
    pub regions: Vec<(String, RegionLocation)>,
    /// The key the audit chain is authenticated with (derived from the server's secret key).
    pub audit_key: quarterdeck_domain::audit::AuditKey,
    /// The key the email bodies kept in a tenant write's intent are sealed with (derived from
    /// the server's secret key: [`intent_key`]).
    pub intent_key: quarterdeck_domain::sso::SecretKey,
}

/// The intent-sealing subkey of the server's secret key.
pub fn intent_key(secret: &quarterdeck_domain::sso::SecretKey) -> quarterdeck_domain::sso::SecretKey {
    quarterdeck_domain::sso::SecretKey::from_bytes(secret.derive("quarterdeck intent v2"))
}

/// An intent payload as a server with `secret` seals `plan` (a format-1 plan's JSON) for
/// `tenant`'s database and `event_id`: for tests that put intents of a newer server in place.
#[doc(hidden)]
pub fn sealed_intent_payload(
    secret: &quarterdeck_domain::sso::SecretKey,
    tenant: uuid::Uuid,
    event_id: uuid::Uuid,
    plan: &str,
) -> std::result::Result<String, String> {
    sql_reconcile::seal_plan_json(&intent_key(secret), tenant, event_id, plan)
}

/// Where a region's tenant databases (and its usage journal) live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegionLocation {
    /// With the control database: the control cluster (PostgreSQL) or `{data_dir}/tenants/`.
    Shared,
    /// PostgreSQL: a cluster of the region's own; the URL names the database that holds the
    /// region's journal and from which its tenant databases are created and dropped.
    Postgres(String),
    /// SQLite: a directory of the region's own (`{dir}/tenants/`, `{dir}/usage/`).
    Dir(PathBuf),
}

/// Open (and migrate) the control database for the configured backend.
pub async fn open(opts: &StoreOptions) -> Result<Arc<dyn Store>> {
    match &opts.database_url {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => Ok(Arc::new(
            PgStore::open(url, opts.tenant_pools, &opts.regions)
                .await?
                .with_audit_key(opts.audit_key.clone())
                .with_intent_key(opts.intent_key.clone()),
        )),
        Some(other) => Err(Error::Internal(format!(
            "QUARTERDECK_DATABASE_URL must start with postgres:// (got a URL with scheme {:?})",
            other.split(':').next().unwrap_or_default()
        ))),
        None => Ok(Arc::new(
            SqliteStore::open(&opts.data_dir, opts.tenant_pools, &opts.regions)
                .await?
                .with_audit_key(opts.audit_key.clone())
                .with_intent_key(opts.intent_key.clone()),
        )),
    }
}

/// Map a database error: unique violations on a known column become field errors, the rest
/// are internal (logged by the web layer, never shown).
pub(crate) fn db_err(e: sqlx::Error) -> Error {
    // No connection within the wait: the connection budget is spent. A 503 with Retry-After,
    // never a 500 after the driver's timeout.
    if matches!(e, sqlx::Error::PoolTimedOut) {
        tracing::warn!("no database connection free in time; refusing as busy");
        return Error::Busy;
    }
    // PostgreSQL's `lock_timeout` (a bounded wait for a row or advisory lock) ran out.
    if let Some(db) = e.as_database_error()
        && db.code().as_deref() == Some("55P03")
    {
        tracing::warn!("a lock was not had in time; refusing as busy");
        return Error::Busy;
    }
    if let Some(db) = e.as_database_error()
        && db.is_unique_violation()
    {
        {
            let text = format!("{} {}", db.message(), db.constraint().unwrap_or_default());
            if text.contains("slug") {
                return Error::field("slug", "slug_taken", "This slug is already in use; choose another.");
            }
            if text.contains("user_identity") {
                return Error::field(
                    "subject",
                    "identity_taken",
                    "This identity is already linked to an account.",
                );
            }
            if text.contains("email") {
                return Error::field("email", "email_taken", "A user with this email already exists.");
            }
        }
    }
    Error::Internal(format!("database: {e}"))
}

/// Refuse a tenant whose recorded schema version is below `target` (503 `tenant_migrating`):
/// one indexed read of the control database, made when the tenant's pool is opened. A tenant
/// without a row is left to the caller (not found later).
pub(crate) async fn ensure_current<DB>(
    control: &sqlx::Pool<DB>,
    id: quarterdeck_domain::TenantId,
    target: i64,
) -> Result<()>
where
    DB: sqlx::Database,
    for<'c> &'c sqlx::Pool<DB>: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    uuid::Uuid: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: for<'r> sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    (i64,): for<'r> sqlx::FromRow<'r, <DB as sqlx::Database>::Row>,
{
    let version: Option<i64> = sqlx::query_scalar("SELECT schema_version FROM tenant WHERE id = $1")
        .bind(id.0)
        .fetch_optional(control)
        .await
        .map_err(db_err)?;
    match version {
        Some(v) if v < target => Err(Error::TenantMigrating),
        _ => Ok(()),
    }
}

pub(crate) fn mig_err(e: sqlx::migrate::MigrateError) -> Error {
    Error::Internal(format!("migration: {e}"))
}
