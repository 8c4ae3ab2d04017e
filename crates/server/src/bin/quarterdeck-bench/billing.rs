//! The `billing` phase: the console's cross-tenant billing overview with many tenants.
//!
//! Tenants are created through `Core::create_tenant` (each with its database); each gets a
//! month's summary rows (`llm.tokens` by model, `api.requests`) written through the store's
//! `put_usage_months` in big batches, as the sweep writes them. Then `Core::billing` (what
//! the Billing page calls, one query on the control database's summary) is timed here, in
//! process: this branch has no `/billing` page to time over HTTP yet.

use super::ingest::open_store;
use super::ingest_load::MODELS;
use super::verify::{RemoveOnDrop, close, domain, settings_of};
use super::{Backend, OWNER_EMAIL, Row, ServerPlan, fmt_ms, fmt_secs, percentile, progress};
use anyhow::{Context, Result, anyhow};
use quarterdeck::app::{self, Deps};
use quarterdeck_domain::access::{ManageTenants, ViewBilling};
use quarterdeck_domain::core::NewTokenRequest;
use quarterdeck_domain::tenant::{NewTenant, PriorityTier, Region, TenantName};
use quarterdeck_domain::usage::{MeterTotal, Month};
use quarterdeck_domain::{TenantId, TenantSlug};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const TARGET: Duration = Duration::from_secs(1);

#[derive(clap::Args)]
pub struct BillingArgs {
    /// billing: tenants created (each with its database) and given a month's summary.
    #[arg(long, default_value_t = 10_000)]
    pub billing_tenants: usize,
    /// billing: timed calls of the overview.
    #[arg(long, default_value_t = 10)]
    pub billing_samples: usize,
    /// billing: concurrent tenant creations while seeding.
    #[arg(long, default_value_t = 4)]
    pub billing_seed_concurrency: usize,
}

pub async fn run(
    args: &BillingArgs,
    backend: Backend,
    server_bin: &Path,
    database_url: Option<&str>,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let plan = ServerPlan::new(server_bin, database_url)?;
    let _dir = RemoveOnDrop(Some(plan.dir.clone()));
    let settings = settings_of(&plan, database_url)?;
    quarterdeck::data_dir::prepare(&settings.data_dir, database_url.is_none())?;
    let core = app::core(&settings, Deps::default()).await?;
    core.bootstrap_owner(OWNER_EMAIL, super::OWNER_PASSWORD)
        .await
        .map_err(domain)?;
    let (_, pat) = core
        .create_token_from_cli(
            OWNER_EMAIL,
            NewTokenRequest {
                name: "bench billing".to_owned(),
                scope: "read_write".to_owned(),
                expires_in_days: "1".to_owned(),
                tenant_id: String::new(),
            },
        )
        .await
        .map_err(domain)?;
    let principal = core.api_caller(pat.expose()).await.map_err(domain)?.principal;
    let manage = Arc::new(principal.require::<ManageTenants>().map_err(domain)?);
    let region = settings.regions.first().cloned().context("no region in the settings")?;

    // Tenants.
    let n = args.billing_tenants.max(1);
    let conc = args.billing_seed_concurrency.max(1);
    progress(&format!(
        "billing: creating {n} tenants through Core::create_tenant, {conc} at a time"
    ));
    let t0 = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conc {
        let (core, manage, next, region, regions) = (
            core.clone(),
            manage.clone(),
            next.clone(),
            region.clone(),
            settings.regions.clone(),
        );
        tasks.spawn(async move {
            let mut made: Vec<TenantId> = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(made);
                }
                let new = NewTenant {
                    slug: TenantSlug::parse(&format!("billing-{i:05}")).map_err(domain)?,
                    name: TenantName::parse(&format!("Billing tenant {i}")).map_err(domain)?,
                    region: Region::parse(&region, &regions).map_err(domain)?,
                    tier: PriorityTier::Standard,
                    metadata: Default::default(),
                };
                made.push(core.create_tenant(&manage, new).await.map_err(domain)?.id);
                if (i + 1) % 500 == 0 {
                    progress(&format!("  {} tenants ({:.0} s)", i + 1, t0.elapsed().as_secs_f64()));
                }
            }
        });
    }
    let mut tenants = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        tenants.extend(r.map_err(|e| anyhow!("{e}"))??);
    }
    let tenants_took = t0.elapsed();
    rows.push(Row::info(
        &format!("billing ({}): created {} tenants", backend.name(), tenants.len()),
        format!(
            "{} ({:.1} /s, Core::create_tenant)",
            fmt_secs(tenants_took),
            tenants.len() as f64 / tenants_took.as_secs_f64()
        ),
    ));

    // A month's summary for each.
    let month = Month::of(quarterdeck_domain::clock::Clock::now(
        &quarterdeck_domain::clock::SystemClock,
    ));
    let store = open_store(&settings).await?;
    let t0 = Instant::now();
    let mut summary_rows = 0;
    for (c, chunk) in tenants.chunks(2_000).enumerate() {
        let batch: Vec<(Month, TenantId, Vec<MeterTotal>)> = chunk
            .iter()
            .enumerate()
            .map(|(j, t)| {
                let k = (c * 2_000 + j) as i64;
                let mut totals: Vec<MeterTotal> = MODELS
                    .iter()
                    .enumerate()
                    .map(|(m, model)| MeterTotal {
                        meter: "llm.tokens".to_owned(),
                        dims: format!("{{\"model\":\"{model}\"}}"),
                        value: 1_000 * (k % 997 + 1) * (m as i64 + 1),
                        events: k % 89 + 1,
                    })
                    .collect();
                totals.push(MeterTotal {
                    meter: "api.requests".to_owned(),
                    dims: "{\"endpoint\":\"/v1/chat\"}".to_owned(),
                    value: k % 5_000 + 1,
                    events: k % 5_000 + 1,
                });
                (month, *t, totals)
            })
            .collect();
        summary_rows += batch.iter().map(|(_, _, t)| t.len()).sum::<usize>();
        store.put_usage_months(&batch).await.map_err(domain)?;
    }
    rows.push(Row::info(
        &format!("  summary rows for {month} (put_usage_months)"),
        format!("{summary_rows} in {}", fmt_secs(t0.elapsed())),
    ));
    drop(store);

    // The overview.
    let view = principal.require::<ViewBilling>().map_err(domain)?;
    let samples = args.billing_samples.max(1);
    progress(&format!("billing: timing Core::billing {samples} times"));
    let mut times = Vec::with_capacity(samples + 1);
    let mut listed = 0;
    for s in 0..=samples {
        let t = Instant::now();
        let overview = core.billing(&view, month).await.map_err(domain)?;
        let took = t.elapsed();
        listed = overview.rows.len();
        if s == 0 {
            rows.push(Row::info("  Core::billing, first call", fmt_ms(took)));
        } else {
            times.push(took);
        }
    }
    let p50 = percentile(&times, 0.5);
    let max = times.iter().max().copied().unwrap_or_default();
    rows.push(Row::check(
        &format!("  Core::billing({month}), {listed} tenants: p50 / max"),
        format!("{} / {}", fmt_ms(p50), fmt_ms(max)),
        "< 1 s",
        max < TARGET && listed == tenants.len(),
    ));
    close(core).await;
    notes.push(format!(
        "billing: timed in process (Core::billing, as the Billing page would call it; no /billing page on this \
         branch), {samples} calls after a first one, on the run's own {} database",
        backend.name()
    ));
    Ok(())
}
