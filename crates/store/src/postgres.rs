//! The PostgreSQL backend: schema `identity` in the control database, and one database per
//! tenant (schema `security`), created when the tenant is created.
//!
//! A tenant database's name is `{prefix}_t_{tenant id as 32 hex digits}`, where the prefix is
//! the control database's name reduced to `[a-z0-9_]` (at most 24 characters): it is derived,
//! never taken from user input, and still quoted as an identifier.

use crate::pools::{PoolCache, PoolLimits};
use crate::{db_err, mig_err};
use sqlx::Postgres;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::str::FromStr;
use std::time::Duration;

static CONTROL_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres/control");
static TENANT_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres/tenant");

type Ts = time::OffsetDateTime;

fn enc_ts(t: time::OffsetDateTime) -> Ts {
    t
}

fn dec_ts(t: Ts) -> time::OffsetDateTime {
    t
}

pub struct PgStore {
    pool: PgPool,
    base: PgConnectOptions,
    prefix: String,
    tenants: PoolCache<Postgres>,
    /// Keys the audit chain (see `with_audit_key`); without it no keyed event can be written.
    audit_key: Option<quarterdeck_domain::audit::AuditKey>,
}

fn with_schema(opts: PgConnectOptions, schema: &str) -> PgConnectOptions {
    opts.options([("search_path", schema)])
}

impl PgStore {
    pub async fn open(url: &str, limits: PoolLimits) -> quarterdeck_domain::Result<Self> {
        let base = PgConnectOptions::from_str(url).map_err(db_err)?;
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
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(with_schema(base.clone(), "identity"))
            .await
            .map_err(db_err)?;
        CONTROL_MIGRATIONS.run(&pool).await.map_err(mig_err)?;
        Ok(Self {
            pool,
            base,
            prefix,
            tenants: PoolCache::new(limits),
            audit_key: None,
        })
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
    async fn dir_pool(&self, dir: Directory) -> Result<PgPool> {
        match dir {
            Directory::Platform => Ok(self.pool.clone()),
            Directory::Tenant(id) => self.tenant_pool(id, &self.db_name(id)).await,
        }
    }

    async fn tenant_pool(&self, id: TenantId, db_name: &str) -> Result<PgPool> {
        let opts = with_schema(self.base.clone().database(Self::check_name(db_name)?), "security");
        let max = self.tenants.limits().connections_per_tenant;
        self.tenants
            .get(id, || async move {
                Ok(PgPoolOptions::new()
                    .max_connections(max)
                    .min_connections(0)
                    .idle_timeout(Duration::from_secs(60))
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_lazy_with(opts))
            })
            .await
    }

    async fn provision_tenant_db(&self, id: TenantId) -> Result<String> {
        let name = self.db_name(id);
        let quoted = format!("\"{}\"", Self::check_name(&name)?);
        // The name is derived from a UUID and checked by `check_name`: safe to splice.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {quoted}")))
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        let ready = async {
            // Create the schema first (see `open`), on a connection without search_path.
            let setup = PgPoolOptions::new()
                .max_connections(1)
                .connect_with(self.base.clone().database(&name))
                .await
                .map_err(db_err)?;
            sqlx::query("CREATE SCHEMA IF NOT EXISTS security")
                .execute(&setup)
                .await
                .map_err(db_err)?;
            setup.close().await;
            let pool = self.tenant_pool(id, &name).await?;
            TENANT_MIGRATIONS.run(&pool).await.map_err(mig_err)?;
            sqlx::query("INSERT INTO tenant_info (id, tenant_id, created_at) VALUES (1, $1, now())")
                .bind(id.0)
                .execute(&pool)
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
        self.tenants.remove(id).await;
        let quoted = format!("\"{}\"", Self::check_name(db_name)?);
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"
        )))
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn migrate_tenant_db(&self, id: TenantId, db_name: &str) -> Result<usize> {
        let pool = self.tenant_pool(id, db_name).await?;
        sqlx::query("CREATE SCHEMA IF NOT EXISTS security")
            .execute(&pool)
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
        let before = count(pool.clone()).await;
        TENANT_MIGRATIONS.run(&pool).await.map_err(mig_err)?;
        Ok(count(pool).await.saturating_sub(before))
    }

    /// The name of a tenant's database (for tests and operators).
    pub fn tenant_database_name(&self, id: TenantId) -> String {
        self.db_name(id)
    }

    pub async fn open_tenant_pools(&self) -> usize {
        self.tenants.open_count().await
    }
}

crate::sql::impl_store!(PgStore, Postgres);
crate::sql_sso::impl_sso_store!(PgStore, Postgres);

impl quarterdeck_domain::store::Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }
}
