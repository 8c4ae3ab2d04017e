//! Tenant database migrations: in the background while serving, and up front by
//! `quarterdeck migrate`. Only tenants whose recorded schema version is below this binary's are
//! migrated (so a run that was interrupted resumes where it stopped), several at once
//! (`migrate_jobs`, `--jobs`). A tenant behind is not served (503 `tenant_migrating`) until its
//! migration has succeeded.

use quarterdeck_domain::{Core, TenantId};
use std::sync::Arc;
use std::time::Duration;

/// One tenant's outcome: migrations applied, or why it failed.
pub type Outcome = (TenantId, quarterdeck_domain::Result<usize>);

/// Migrate every live tenant that is behind, `jobs` at a time; `done` is told of each outcome
/// as it comes (the progress bar). Returns the outcomes in completion order.
pub async fn migrate_behind(
    core: &Arc<Core>,
    jobs: usize,
    done: impl Fn(&Outcome),
) -> quarterdeck_domain::Result<Vec<Outcome>> {
    let behind = core.tenants_behind().await?;
    let slots = Arc::new(tokio::sync::Semaphore::new(jobs.max(1)));
    let mut running = tokio::task::JoinSet::new();
    for id in behind {
        let (core, slots) = (core.clone(), slots.clone());
        running.spawn(async move {
            let _slot = slots.acquire_owned().await;
            (id, core.migrate_tenant_database(id).await)
        });
    }
    let mut out = Vec::new();
    while let Some(joined) = running.join_next().await {
        let outcome = joined.map_err(quarterdeck_domain::Error::internal)?;
        done(&outcome);
        out.push(outcome);
    }
    Ok(out)
}

/// While serving: migrate the tenants behind at start-up, then look again every minute of the
/// core's clock (looked at every second, so tests move it) — a tenant restored from an older
/// backup, or left behind by a failed attempt, is picked up without a restart.
pub async fn background(core: Arc<Core>, jobs: usize) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut next = core.clock.now();
    loop {
        tick.tick().await;
        let now = core.clock.now();
        if now < next {
            continue;
        }
        next = now + time::Duration::minutes(1);
        match migrate_behind(&core, jobs, |_| {}).await {
            Ok(outcomes) => {
                for (id, r) in outcomes {
                    match r {
                        Ok(n) => tracing::info!(tenant_id = %id, applied = n, "tenant database migrated"),
                        Err(e) => tracing::error!(tenant_id = %id, error = %e, "tenant database migration failed"),
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "could not list the tenants to migrate"),
        }
    }
}
