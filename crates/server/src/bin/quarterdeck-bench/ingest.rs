//! The `ingest` phase: `POST /v1/data-plane/usage` under load, then the exactly-once check.
//!
//! Seeding goes through the product's own code before the server starts (as in `verify.rs`):
//! tenants (`Core::create_tenant`), one API key each (`Core::create_api_key`), and a service
//! token with `usage:write`. Subjects mix tenant ids and key ids. Then `quarterdeck serve`
//! starts and the load generator (`ingest_load.rs`) posts batches of CloudEvents for a fixed
//! time (or event count), 1 % of them duplicates of events already accepted.
//!
//! While the load runs, this process reads the region's journal every second through its own
//! store handle (`journal_backlog`, `swept_through`): how far behind the sweep is. After the
//! load, it waits until the journal is drained, stops the server, and checks the tenants'
//! databases and the monthly summary against what it sent: the raw events of all tenants must
//! number the unique events sent, and the summary's `llm.tokens` must sum their tokens.

use super::ingest_load::{self, IngestSpec, Sent};
use super::verify::{
    RemoveOnDrop, close, domain, machine_busy_ticks, own_cpu_ticks, server_addr, settings_of, wait_idle,
};
use super::{
    Backend, OWNER_EMAIL, Row, ServerPlan, fmt_ms, fmt_secs, percentile, progress, thread_shares, ticks_to_duration,
};
use anyhow::{Context, Result, anyhow, bail};
use quarterdeck::app::{self, Deps};
use quarterdeck_domain::access::{InTenant, ManageApiKeys, ManageTenants};
use quarterdeck_domain::api_key::NewApiKeyRequest;
use quarterdeck_domain::core::NewTokenRequest;
use quarterdeck_domain::service_token::NewServiceTokenRequest;
use quarterdeck_domain::store::Store;
use quarterdeck_domain::tenant::{NewTenant, PriorityTier, Region, TenantName};
use quarterdeck_domain::usage::Month;
use quarterdeck_domain::{TenantId, TenantSlug};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Targets of issue 12 for this 2-core machine with the load generator on it.
fn target_rate(backend: Backend) -> f64 {
    match backend {
        Backend::Sqlite => 50_000.0,
        Backend::Postgres => 20_000.0,
    }
}
const TARGET_LAG: Duration = Duration::from_secs(5);

#[derive(clap::Args)]
pub struct IngestArgs {
    /// ingest: tenants seeded (one API key each; subjects are tenant ids and key ids).
    #[arg(long, default_value_t = 1_000)]
    pub ingest_tenants: usize,
    /// ingest: concurrent clients (keep-alive connections), each posting batches back to back.
    #[arg(long, default_value_t = 8)]
    pub ingest_connections: usize,
    /// ingest: events in a batch.
    #[arg(long, default_value_t = 500)]
    pub ingest_batch: usize,
    /// ingest: percentage of each batch that repeats events already accepted.
    #[arg(long, default_value_t = 1.0)]
    pub ingest_duplicate_percent: f64,
    /// ingest: seconds of load (no batch starts after).
    #[arg(long, default_value_t = 60.0)]
    pub ingest_seconds: f64,
    /// ingest: stop after this many events (duplicates included) instead, if sooner.
    #[arg(long)]
    pub ingest_events: Option<u64>,
    /// ingest: seconds to wait for the journal to drain after the load.
    #[arg(long, default_value_t = 300.0)]
    pub ingest_drain_timeout: f64,
    /// ingest: concurrent seeding operations.
    #[arg(long, default_value_t = 4)]
    pub ingest_seed_concurrency: usize,
}

struct Seeded {
    token: String,
    tenants: Vec<TenantId>,
    /// (subject id, tenant index): each tenant's id and its key's id.
    subjects: Vec<(String, u32)>,
    took: Duration,
}

/// One sample of the journal during the load.
struct Sample {
    backlog: u64,
    /// Age of the oldest entry still in the journal.
    oldest: Duration,
    /// How far `swept_through` (what the usage pages call fresh) is behind now.
    through: Option<Duration>,
}

pub async fn run(
    args: &IngestArgs,
    backend: Backend,
    server_bin: &Path,
    database_url: Option<&str>,
    tck: u64,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let plan = ServerPlan::new(server_bin, database_url)?;
    let mut dir = RemoveOnDrop(Some(plan.dir.clone()));
    let settings = settings_of(&plan, database_url)?;
    let region = settings.regions.first().cloned().context("no region in the settings")?;
    let seeded = seed(args, &plan, database_url).await?;
    let b = backend.name();
    rows.push(Row::info(
        &format!("ingest ({b}): seeded {} tenants + 1 key each", seeded.tenants.len()),
        format!("{} (Core::create_tenant, Core::create_api_key)", fmt_secs(seeded.took)),
    ));

    progress("starting the server for the ingestion load");
    let mut server = plan.start()?;
    dir.0 = None;
    server.wait_ready(Duration::from_secs(120)).await?;
    let settled = wait_idle(&server, tck, Duration::from_secs(180)).await?;
    rows.push(Row::info("  start-up work settled after", fmt_secs(settled)));

    // This process's own handle on the same database: the journal and, later, the check.
    let store = open_store(&settings).await?;

    let conns = args.ingest_connections.max(1);
    let batch = args.ingest_batch.clamp(2, 10_000);
    let dups = ((batch as f64) * args.ingest_duplicate_percent / 100.0).round() as usize;
    let seconds = args.ingest_seconds.max(1.0);
    let spec = IngestSpec {
        addr: server_addr(&server.base),
        host: server.base.trim_start_matches("http://").to_owned(),
        token: seeded.token.clone(),
        subjects: Arc::new(seeded.subjects),
        tenants: seeded.tenants.len(),
        connections: conns,
        batch,
        duplicates: dups,
        deadline: Instant::now() + Duration::from_secs_f64(seconds),
        max_events: args.ingest_events,
        run: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
    };
    progress(&format!(
        "ingest: {conns} clients, batches of {batch} ({dups} duplicates each), {seconds} s{}",
        args.ingest_events
            .map(|n| format!(" or {n} events"))
            .unwrap_or_default()
    ));
    let month_at_start = Month::of(quarterdeck_domain::clock::Clock::now(
        &quarterdeck_domain::clock::SystemClock,
    ));
    let threads0 = server.thread_ticks();
    let cpu0 = server.cpu_ticks()?;
    let own0 = own_cpu_ticks();
    let machine0 = machine_busy_ticks();
    let handle = ingest_load::start(spec)?;
    let (sent, samples) = sample_while(handle, &*store, &region).await?;
    let cpu1 = server.cpu_ticks()?;
    let server_ticks = cpu1.saturating_sub(cpu0);
    let server_cpu = ticks_to_duration(server_ticks, tck);
    let own_cpu = ticks_to_duration(own_cpu_ticks().saturating_sub(own0), tck);
    let machine = ticks_to_duration(machine_busy_ticks().saturating_sub(machine0), tck);
    let by_thread = thread_shares(&threads0, &server.thread_ticks(), server_ticks);

    // Drain.
    progress("load done; waiting for the journal to drain");
    let t_drain = Instant::now();
    let limit = Duration::from_secs_f64(args.ingest_drain_timeout.max(1.0));
    let mut drained = None;
    while t_drain.elapsed() < limit {
        let (n, _) = store.journal_backlog(&region).await.map_err(domain)?;
        if n == 0 {
            drained = Some(t_drain.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drain_cpu = ticks_to_duration(server.cpu_ticks()?.saturating_sub(cpu1), tck);
    let rss = server.status_kib("VmRSS")?;
    server.stop();

    // Figures of the load.
    let secs = sent.window.as_secs_f64();
    let unique_rate = sent.unique as f64 / secs;
    rows.push(Row::info(
        &format!("ingest ({b}), {conns} clients, batches of {batch}"),
        format!(
            "{} batches, {} events ({} unique, {} duplicates) in {}",
            sent.batches,
            sent.events,
            sent.unique,
            sent.duplicates,
            fmt_secs(sent.window)
        ),
    ));
    rows.push(Row::check(
        "  unique events accepted per second",
        format!("{unique_rate:.0} /s"),
        &format!("≥ {:.0} /s", target_rate(backend)),
        unique_rate >= target_rate(backend) && sent.batches > 0,
    ));
    rows.push(Row::info(
        "  events accepted per second (with duplicates)",
        format!("{:.0} /s", sent.events as f64 / secs),
    ));
    rows.push(Row::info(
        "  batch latency p50 / p99 / max",
        format!(
            "{} / {} / {}",
            fmt_ms(percentile(&sent.latencies, 0.50)),
            fmt_ms(percentile(&sent.latencies, 0.99)),
            fmt_ms(sent.latencies.iter().max().copied().unwrap_or_default())
        ),
    ));
    let per_event = |cpu: Duration, n: u64| {
        if n == 0 {
            "-".to_owned()
        } else {
            format!("{:.2} µs", cpu.as_secs_f64() * 1e6 / n as f64)
        }
    };
    rows.push(Row::info(
        "  server CPU per event, during the load",
        per_event(server_cpu, sent.events),
    ));
    rows.push(Row::info(
        "  server CPU per unique event, load + drain",
        per_event(server_cpu + drain_cpu, sent.unique),
    ));
    rows.push(Row::info("  server CPU by thread", by_thread));
    rows.push(Row::info(
        "  CPU: server / load generator / other processes",
        format!(
            "{:.2} / {:.2} / {:.2} cores",
            server_cpu.as_secs_f64() / secs,
            own_cpu.as_secs_f64() / secs,
            machine.saturating_sub(server_cpu + own_cpu).as_secs_f64() / secs
        ),
    ));
    rows.push(Row::info(
        "  retried batches / abandoned / rejected events",
        format!("{} / {} / {}", sent.retries, sent.abandoned, sent.rejected),
    ));
    rows.push(Row::info(
        "  refused by backpressure (503 usage_backlog) / still refused at the end",
        format!(
            "{} answers / {} batches (not taken, not counted)",
            sent.backlogged, sent.unsent
        ),
    ));
    let max_oldest = samples.iter().map(|s| s.oldest).max().unwrap_or_default();
    let max_backlog = samples.iter().map(|s| s.backlog).max().unwrap_or(0);
    let max_through = samples.iter().filter_map(|s| s.through).max();
    rows.push(Row::check(
        "  sweep lag during the load (oldest journal entry, max)",
        fmt_secs(max_oldest),
        "≤ 5 s",
        max_oldest <= TARGET_LAG && !samples.is_empty(),
    ));
    rows.push(Row::info(
        "  swept_through behind now (the pages' freshness), max",
        max_through.map_or_else(|| "never set".to_owned(), fmt_secs),
    ));
    rows.push(Row::info(
        "  journal backlog, max (sampled each second)",
        format!("{max_backlog} events"),
    ));
    rows.push(Row::info(
        "  drained after the load stopped",
        drained.map_or_else(|| format!("not within {}", fmt_secs(limit)), fmt_secs),
    ));
    rows.push(Row::info("  server RSS after the load", super::fmt_mib(rss)));
    if !sent.first_errors.is_empty() {
        notes.push(format!("ingest: first errors: {}", sent.first_errors.join(" | ")));
    }

    // The exactly-once check.
    let passed = if drained.is_some() {
        check(&*store, &seeded.tenants, &sent, month_at_start, rows).await?
    } else {
        rows.push(Row::miss(
            "  exactly-once check",
            "the journal did not drain",
            "raw = unique sent",
        ));
        false
    };
    drop(store);
    notes.push(format!(
        "ingest: seeded through Core on the run's own {b} database before the server starts; {conns} keep-alive \
         HTTP/1.1 clients on one load-generator thread post {batch}-event batches back to back for {seconds} s; \
         each batch holds {dups} duplicates of events already accepted (a connection's first batch: of events \
         earlier in it); a failed batch (transport error, 408, 429, 503) is sent again unchanged; rates are over \
         the whole run (first send to last answer); CPU per event is the server's utime+stime over the load \
         divided by the events accepted (the sweep into the tenants' databases runs in the same process and is \
         included)"
    ));
    notes.push(
        "ingest: the lag is sampled each second through this process's own store handle: the age of the oldest \
         entry still in the region's journal (journal_backlog), and how far the region's swept_through is behind"
            .to_owned(),
    );
    if passed {
        Ok(())
    } else {
        bail!("the ingestion exactly-once check failed (see the report)")
    }
}

pub(super) async fn open_store(settings: &quarterdeck::Settings) -> Result<Arc<dyn Store>> {
    let secret = settings.secret_key(&*Deps::default().rng)?;
    quarterdeck_store::open(&quarterdeck_store::StoreOptions {
        database_url: settings.database_url.clone(),
        data_dir: settings.data_dir.clone(),
        tenant_pools: quarterdeck_store::PoolLimits {
            max_connections: 8,
            ..quarterdeck_store::PoolLimits::default()
        },
        audit_key: quarterdeck_domain::audit::AuditKey::from_secret(&secret),
        intent_key: quarterdeck_store::intent_key(&secret),
        regions: settings.regions.locations(),
    })
    .await
    .map_err(domain)
}

/// Run the load to its end, sampling the journal each second meanwhile.
async fn sample_while(handle: ingest_load::Handle, store: &dyn Store, region: &str) -> Result<(Sent, Vec<Sample>)> {
    let mut samples = Vec::new();
    let finish = handle.finish();
    tokio::pin!(finish);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            sent = &mut finish => return Ok((sent?, samples)),
            _ = tick.tick() => {
                let now = quarterdeck_domain::clock::Clock::now(&quarterdeck_domain::clock::SystemClock);
                let (backlog, oldest) = store.journal_backlog(region).await.map_err(domain)?;
                let through = store.swept_through(region).await.map_err(domain)?;
                let age = |t: time::OffsetDateTime| Duration::try_from(now - t).unwrap_or_default();
                samples.push(Sample {
                    backlog,
                    oldest: oldest.map(age).unwrap_or_default(),
                    through: through.map(age),
                });
            }
        }
    }
}

/// Raw events and the summary against what was sent; PASS or FAIL rows.
async fn check(
    store: &dyn Store,
    tenants: &[TenantId],
    sent: &Sent,
    month: Month,
    rows: &mut Vec<Row>,
) -> Result<bool> {
    progress("exactly-once check: counting raw events in every tenant's database");
    let t0 = Instant::now();
    let mut raw = 0_u64;
    let mut raw_off = 0;
    for (i, t) in tenants.iter().enumerate() {
        let n = store.usage_event_count(*t).await.map_err(domain)?;
        raw += n;
        if n != sent.per_tenant[i].0 {
            raw_off += 1;
        }
    }
    let mut months = vec![month];
    let now = Month::of(quarterdeck_domain::clock::Clock::now(
        &quarterdeck_domain::clock::SystemClock,
    ));
    if now != month {
        months.push(now);
    }
    let mut tokens = 0_i64;
    let mut summary_events = 0_i64;
    let mut by_tenant: std::collections::HashMap<TenantId, i64> = std::collections::HashMap::new();
    for m in months {
        for (t, total) in store.usage_month(m).await.map_err(domain)? {
            if total.meter == "llm.tokens" {
                tokens += total.value;
                summary_events += total.events;
                *by_tenant.entry(t).or_default() += total.value;
            }
        }
    }
    let tokens_off = tenants
        .iter()
        .enumerate()
        .filter(|(i, t)| by_tenant.get(t).copied().unwrap_or(0) != sent.per_tenant[*i].1)
        .count();
    let clean = sent.rejected == 0 && sent.abandoned == 0;
    let raw_ok = raw == sent.unique && raw_off == 0 && clean;
    let tokens_ok = tokens == sent.tokens && tokens_off == 0 && summary_events == sent.unique as i64 && clean;
    rows.push(Row::check(
        "  exactly once: raw events in all tenants = unique sent",
        format!("{raw} = {} ({raw_off} tenants differ)", sent.unique),
        "equal",
        raw_ok,
    ));
    rows.push(Row::check(
        "  exactly once: summary llm.tokens = tokens of unique sent",
        format!(
            "{tokens} = {} ({tokens_off} tenants differ; {summary_events} events)",
            sent.tokens
        ),
        "equal",
        tokens_ok,
    ));
    progress(&format!(
        "exactly-once check: {} (raw {raw} vs {} unique; tokens {tokens} vs {}), {}",
        if raw_ok && tokens_ok { "PASS" } else { "FAIL" },
        sent.unique,
        sent.tokens,
        fmt_secs(t0.elapsed())
    ));
    Ok(raw_ok && tokens_ok)
}

async fn seed(args: &IngestArgs, plan: &ServerPlan, database_url: Option<&str>) -> Result<Seeded> {
    let t0 = Instant::now();
    let settings = settings_of(plan, database_url)?;
    quarterdeck::data_dir::prepare(&settings.data_dir, database_url.is_none())?;
    let core = app::core(&settings, Deps::default()).await?;
    core.bootstrap_owner(OWNER_EMAIL, super::OWNER_PASSWORD)
        .await
        .map_err(domain)?;
    let (_, pat) = core
        .create_token_from_cli(
            OWNER_EMAIL,
            NewTokenRequest {
                name: "bench seeding".to_owned(),
                scope: "read_write".to_owned(),
                expires_in_days: "1".to_owned(),
                tenant_id: String::new(),
            },
        )
        .await
        .map_err(domain)?;
    let principal = Arc::new(core.api_caller(pat.expose()).await.map_err(domain)?.principal);
    let manage = Arc::new(principal.require::<ManageTenants>().map_err(domain)?);
    let region = settings.regions.first().cloned().context("no region in the settings")?;
    let n = args.ingest_tenants.max(1);
    let conc = args.ingest_seed_concurrency.max(1);
    progress(&format!(
        "seeding {n} tenants and a key each through Core, {conc} at a time"
    ));
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conc {
        let (core, manage, principal, next, region, regions) = (
            core.clone(),
            manage.clone(),
            principal.clone(),
            next.clone(),
            region.clone(),
            settings.regions.clone(),
        );
        tasks.spawn(async move {
            let mut made: Vec<(usize, TenantId, uuid::Uuid)> = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(made);
                }
                let new = NewTenant {
                    slug: TenantSlug::parse(&format!("ingest-{i:05}")).map_err(domain)?,
                    name: TenantName::parse(&format!("Ingest tenant {i}")).map_err(domain)?,
                    region: Region::parse(&region, &regions).map_err(domain)?,
                    tier: PriorityTier::Standard,
                    metadata: Default::default(),
                };
                let t = core.create_tenant(&manage, new).await.map_err(domain)?;
                let auth: InTenant<ManageApiKeys> = principal.require_for_tenant(t.id).map_err(domain)?;
                let req = NewApiKeyRequest {
                    name: format!("ingest key {i}"),
                    scopes: vec!["read".to_owned()],
                    expires_in_days: String::new(),
                    requests_per_minute: String::new(),
                };
                let (key, _) = core.create_api_key(&auth, req).await.map_err(domain)?;
                made.push((i, t.id, key.id));
                if (i + 1) % 100 == 0 {
                    progress(&format!("  {} tenants ({:.0} s)", i + 1, t0.elapsed().as_secs_f64()));
                }
            }
        });
    }
    let mut made = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        made.extend(r.map_err(|e| anyhow!("{e}"))??);
    }
    made.sort_unstable_by_key(|(i, _, _)| *i);
    let (_, token) = core
        .create_service_token_from_cli(NewServiceTokenRequest {
            name: "bench usage".to_owned(),
            scopes: vec!["usage:write".to_owned()],
            region: String::new(),
            expires_in_days: String::new(),
        })
        .await
        .map_err(domain)?;
    close(core).await;
    let mut subjects = Vec::with_capacity(2 * made.len());
    for (i, (_, t, k)) in made.iter().enumerate() {
        let i = u32::try_from(i)?;
        subjects.push((t.0.to_string(), i));
        subjects.push((k.to_string(), i));
    }
    Ok(Seeded {
        token: token.expose().to_owned(),
        tenants: made.into_iter().map(|(_, t, _)| t).collect(),
        subjects,
        took: t0.elapsed(),
    })
}
