//! What the readiness check and `/metrics` read from a backend (`impl_observe!`, instantiated
//! by each backend beside `impl_store!`): each at most one small query.

/// The readiness check's answer from the applied versions of the control migrations.
pub(crate) fn migrations_done(migrator: &sqlx::migrate::Migrator, applied: &[i64]) -> bool {
    migrator
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .all(|m| applied.contains(&m.version))
}

/// How long the readiness check waits for the control database.
pub(crate) const READY_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

macro_rules! impl_observe {
    ($store:ty) => {
        impl $store {
            /// The control database answers, and every control migration is applied.
            async fn readiness(&self) -> std::result::Result<(), &'static str> {
                let applied = tokio::time::timeout(
                    crate::observe::READY_WAIT,
                    sqlx::query_scalar::<_, i64>("SELECT version FROM _sqlx_migrations WHERE success").fetch_all(&self.pool),
                )
                .await;
                match applied {
                    Ok(Ok(v)) if crate::observe::migrations_done(&CONTROL_MIGRATIONS, &v) => Ok(()),
                    Ok(Ok(_)) => Err("migrations_pending"),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "readiness: the control database did not answer");
                        Err("database_unavailable")
                    }
                    Err(_) => Err("database_unavailable"),
                }
            }

            /// The outbox's depth and oldest entry (one query), the pools from memory.
            async fn gauges(
                &self,
                now: time::OffsetDateTime,
            ) -> quarterdeck_domain::Result<quarterdeck_domain::meters::StoreGauges> {
                let (pending, oldest): (i64, Option<Ts>) =
                    sqlx::query_as("SELECT count(*), min(created_at) FROM outbox WHERE status = 'pending'")
                        .fetch_one(&self.pool)
                        .await
                        .map_err(db_err)?;
                let age = oldest.map_or(0.0, |t| (now - dec_ts(t)).as_seconds_f64().max(0.0));
                Ok(quarterdeck_domain::meters::StoreGauges {
                    outbox_pending: u64::try_from(pending).unwrap_or(0),
                    outbox_oldest_age_seconds: age,
                    tenant_pools_open: self.open_tenant_pools().await as u64,
                    control_connections: u64::from(self.pool.size()),
                    control_idle: self.pool.num_idle() as u64,
                })
            }
        }
    };
}
pub(crate) use impl_observe;
