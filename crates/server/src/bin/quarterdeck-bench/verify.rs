//! The `verify` phase: `POST /v1/data-plane/keys/verify` under load.
//!
//! Seeding goes through the product's own code, before the server starts: a `Core` opened on
//! the run's data directory (or database) with the server's settings creates the owner, a
//! personal access token whose principal creates the tenants (`Core::create_tenant`, as the
//! console and the Automation API do, each with its database) and the keys
//! (`Core::create_api_key`), and a service token (`Core::create_service_token_from_cli`, as
//! `quarterdeck service-tokens create`). The secrets stay in memory for the load.
//!
//! Then `quarterdeck serve` starts and the load generator (`verify_load.rs`) runs: a cold pass
//! over every key once, a uniform run (warm-up, then the measured window) and a Zipf run.

use super::verify_load::{self, Load, LoadSpec, Pick};
use super::{
    Backend, OWNER_EMAIL, OWNER_PASSWORD, Row, ServerPlan, fmt_ms, fmt_secs, percentile, progress, thread_shares,
    ticks_to_duration,
};
use anyhow::{Context, Result, anyhow};
use quarterdeck::Settings;
use quarterdeck::app::{self, Deps};
use quarterdeck_domain::access::{InTenant, ManageApiKeys, ManageTenants};
use quarterdeck_domain::api_key::NewApiKeyRequest;
use quarterdeck_domain::core::NewTokenRequest;
use quarterdeck_domain::service_token::NewServiceTokenRequest;
use quarterdeck_domain::tenant::{NewTenant, PriorityTier, Region, TenantName};
use quarterdeck_domain::{Core, TenantId, TenantSlug};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Targets of issue 11 for this 2-core machine with the load generator on it.
const TARGET_RATE: f64 = 20_000.0;
const TARGET_P99: Duration = Duration::from_millis(2);
const TARGET_CPU: Duration = Duration::from_micros(30);

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// verify: API keys seeded (spread evenly over the tenants).
    #[arg(long, default_value_t = 100_000)]
    pub verify_keys: usize,
    /// verify: tenants seeded (PostgreSQL: one database each).
    #[arg(long, default_value_t = 1_000)]
    pub verify_tenants: usize,
    /// verify: keep-alive connections of the load generator (one core, back-to-back requests).
    #[arg(long, default_value_t = 16)]
    pub verify_connections: usize,
    /// verify: seconds of warm-up before each measured window.
    #[arg(long, default_value_t = 5.0)]
    pub verify_warmup_seconds: f64,
    /// verify: seconds of each measured window.
    #[arg(long, default_value_t = 20.0)]
    pub verify_seconds: f64,
    /// verify: concurrent seeding operations (tenants, then keys).
    #[arg(long, default_value_t = 4)]
    pub verify_seed_concurrency: usize,
    /// verify: skip the cold pass (every key once, before any warm-up).
    #[arg(long)]
    pub verify_skip_cold: bool,
    /// verify: skip the Zipf-distributed run (s = 1: the hottest 1% of keys get ~62% of requests).
    #[arg(long)]
    pub verify_skip_zipf: bool,
}

struct Seeded {
    token: String,
    keys: Vec<String>,
    tenants: usize,
    tenants_took: Duration,
    keys_took: Duration,
}

pub async fn run(
    args: &VerifyArgs,
    backend: Backend,
    server_bin: &Path,
    database_url: Option<&str>,
    tck: u64,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let plan = ServerPlan::new(server_bin, database_url)?;
    // Until the server owns it, the run's directory goes with this phase (error or Ctrl-C).
    let mut dir = RemoveOnDrop(Some(plan.dir.clone()));
    let seeded = seed(args, &plan, database_url).await?;
    let b = backend.name();
    rows.push(Row::info(
        &format!("verify ({b}): seeded {} tenants", seeded.tenants),
        format!(
            "{} ({:.1} /s, Core::create_tenant)",
            fmt_secs(seeded.tenants_took),
            seeded.tenants as f64 / seeded.tenants_took.as_secs_f64()
        ),
    ));
    rows.push(Row::info(
        &format!("verify ({b}): seeded {} keys", seeded.keys.len()),
        format!(
            "{} ({:.0} /s, Core::create_api_key)",
            fmt_secs(seeded.keys_took),
            seeded.keys.len() as f64 / seeded.keys_took.as_secs_f64()
        ),
    ));

    progress("starting the server for the verification load");
    let mut server = plan.start()?;
    dir.0 = None;
    let ready = server.wait_ready(Duration::from_secs(120)).await?;
    rows.push(Row::info(
        &format!("  time to ready with {} tenants", seeded.tenants),
        fmt_secs(ready),
    ));
    let settled = wait_idle(&server, tck, Duration::from_secs(180)).await?;
    rows.push(Row::info(
        "  start-up work settled (server < 5% CPU) after",
        fmt_secs(settled),
    ));

    let keys = Arc::new(seeded.keys);
    let spec = |pick: Pick, warmup: f64, measure: Option<f64>| LoadSpec {
        addr: server_addr(&server.base),
        host: server.base.trim_start_matches("http://").to_owned(),
        token: seeded.token.clone(),
        keys: keys.clone(),
        connections: args.verify_connections.max(1),
        pick,
        warmup: Duration::from_secs_f64(warmup.max(0.0)),
        measure: measure.map(|s| Duration::from_secs_f64(s.max(0.5))),
    };
    let conns = args.verify_connections.max(1);

    if !args.verify_skip_cold {
        progress(&format!(
            "cold pass: every one of {} keys once, {conns} connections",
            keys.len()
        ));
        let load = measured(&server, tck, spec(Pick::EachOnce, 0.0, None)).await?;
        push_rows(
            rows,
            notes,
            &format!("verify cold pass (every key once, {conns} conns)"),
            &load,
            false,
        );
    }
    let warm = args.verify_warmup_seconds;
    let secs = args.verify_seconds;
    progress(&format!(
        "uniform keys: {warm} s warm-up, then {secs} s measured, {conns} connections"
    ));
    let load = measured(&server, tck, spec(Pick::Uniform, warm, Some(secs))).await?;
    push_rows(
        rows,
        notes,
        &format!("verify, uniform over all keys ({conns} conns)"),
        &load,
        true,
    );
    if !args.verify_skip_zipf {
        progress(&format!("Zipf keys: {warm} s warm-up, then {secs} s measured"));
        let pick = Pick::zipf(keys.len(), 1.0);
        let load = measured(&server, tck, spec(pick, warm, Some(secs))).await?;
        push_rows(rows, notes, &format!("verify, Zipf s=1 ({conns} conns)"), &load, true);
    }
    rows.push(Row::info(
        "  server RSS after the verification load",
        super::fmt_mib(server.status_kib("VmRSS")?),
    ));
    server.stop();
    notes.push(format!(
        "verify: keys seeded through Core (create_tenant, create_api_key) on the run's own {b} database before the \
         server starts; the load generator is one thread (tokio current_thread) with {conns} keep-alive HTTP/1.1 \
         connections sending POST /v1/data-plane/keys/verify back to back with pre-built headers; an error is any \
         answer other than 200 {{\"valid\": true, …}}; CPU per verification is the server's utime+stime over the \
         measured window divided by the verifications completed in it"
    ));
    notes.push(format!(
        "verify: closed loop, so mean latency ≈ connections / throughput (Little's law): {conns} connections at \
         20,000/s means 0.8 ms on average"
    ));
    Ok(())
}

pub(super) struct RemoveOnDrop(pub(super) Option<std::path::PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// `127.0.0.1:{port}` of `http://localhost:{port}`.
pub(super) fn server_addr(base: &str) -> std::net::SocketAddr {
    let port = base
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .unwrap_or(80);
    std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port))
}

/// Figures of one load run, with the server's and this process's CPU over its window.
struct Measured {
    load: Load,
    server_cpu: Duration,
    own_cpu: Duration,
    /// CPU used by everything else on the machine in the window (other processes).
    others_cpu: Duration,
    by_thread: String,
}

async fn measured(server: &super::Server, tck: u64, spec: LoadSpec) -> Result<Measured> {
    let (start_at, end_at) = spec.window(Instant::now() + Duration::from_millis(50));
    let handle = verify_load::start(spec, start_at, end_at)?;
    tokio::time::sleep_until(start_at.into()).await;
    let threads0 = server.thread_ticks();
    let cpu0 = server.cpu_ticks()?;
    let own0 = own_cpu_ticks();
    let machine0 = machine_busy_ticks();
    let load = match end_at {
        Some(end) => {
            tokio::time::sleep_until(end.into()).await;
            let sample = (
                server.cpu_ticks()?,
                own_cpu_ticks(),
                machine_busy_ticks(),
                server.thread_ticks(),
            );
            let load = handle.finish().await?;
            (load, sample)
        }
        None => {
            let load = handle.finish().await?;
            let sample = (
                server.cpu_ticks()?,
                own_cpu_ticks(),
                machine_busy_ticks(),
                server.thread_ticks(),
            );
            (load, sample)
        }
    };
    let (load, (cpu1, own1, machine1, threads1)) = load;
    let server_ticks = cpu1.saturating_sub(cpu0);
    let server_cpu = ticks_to_duration(server_ticks, tck);
    let own_cpu = ticks_to_duration(own1.saturating_sub(own0), tck);
    let machine = ticks_to_duration(machine1.saturating_sub(machine0), tck);
    Ok(Measured {
        by_thread: thread_shares(&threads0, &threads1, server_ticks),
        others_cpu: machine.saturating_sub(server_cpu + own_cpu),
        load,
        server_cpu,
        own_cpu,
    })
}

fn push_rows(rows: &mut Vec<Row>, notes: &mut Vec<String>, title: &str, m: &Measured, checked: bool) {
    let l = &m.load;
    let secs = l.window.as_secs_f64();
    let rate = l.ok as f64 / secs;
    rows.push(Row::info(
        title,
        format!("{} ok, {} errors in {}", l.ok, l.errors, fmt_secs(l.window)),
    ));
    let p50 = percentile(&l.latencies, 0.50);
    let p99 = percentile(&l.latencies, 0.99);
    let max = l.latencies.iter().max().copied().unwrap_or_default();
    let per = if l.ok > 0 {
        m.server_cpu.div_f64(l.ok as f64)
    } else {
        Duration::ZERO
    };
    let lat = format!("{} / {} / {}", fmt_ms(p50), fmt_ms(p99), fmt_ms(max));
    let cpu = format!("{:.1} µs", per.as_secs_f64() * 1e6);
    if checked {
        rows.push(Row::check(
            "  verifications per second",
            format!("{rate:.0} /s"),
            "≥ 20,000 /s",
            rate >= TARGET_RATE,
        ));
        rows.push(Row::check(
            "  latency p50 / p99 / max",
            lat,
            "p99 ≤ 2 ms",
            p99 <= TARGET_P99 && l.ok > 0,
        ));
        rows.push(Row::check(
            "  server CPU per verification",
            cpu,
            "≤ 30 µs",
            per <= TARGET_CPU && l.ok > 0,
        ));
        rows.push(Row::check(
            "  errors (non-200 or valid=false)",
            l.errors.to_string(),
            "0",
            l.errors == 0,
        ));
    } else {
        rows.push(Row::info("  verifications per second", format!("{rate:.0} /s")));
        rows.push(Row::info("  latency p50 / p99 / max", lat));
        rows.push(Row::info("  server CPU per verification", cpu));
        rows.push(Row::info("  errors (non-200 or valid=false)", l.errors.to_string()));
    }
    rows.push(Row::info("  server CPU by thread", m.by_thread.clone()));
    rows.push(Row::info(
        "  CPU: server / load generator / other processes",
        format!(
            "{:.2} / {:.2} / {:.2} cores",
            m.server_cpu.as_secs_f64() / secs,
            m.own_cpu.as_secs_f64() / secs,
            m.others_cpu.as_secs_f64() / secs
        ),
    ));
    if !l.first_errors.is_empty() {
        notes.push(format!(
            "{title}: {} error(s), e.g.: {}",
            l.errors,
            l.first_errors.join(" | ")
        ));
    }
}

/// CPU ticks of this process, exited threads included (the load generator's thread may have
/// ended by the time of the last sample).
pub(super) fn own_cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    fields.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// Busy ticks of the whole machine (`/proc/stat`: all but idle and iowait).
pub(super) fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else {
        return 0;
    };
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    v.iter()
        .take(8)
        .sum::<u64>()
        .saturating_sub(v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0))
}

/// Wait until the server uses under 5% of a core over a second (start-up migrations of every
/// tenant database done); the time waited.
pub(super) async fn wait_idle(server: &super::Server, tck: u64, limit: Duration) -> Result<Duration> {
    let t0 = Instant::now();
    loop {
        let a = server.cpu_ticks()?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let used = ticks_to_duration(server.cpu_ticks()?.saturating_sub(a), tck);
        if used < Duration::from_millis(50) {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > limit {
            progress("the server was still busy after start-up; measuring anyway");
            return Ok(t0.elapsed());
        }
    }
}

// ---- seeding ------------------------------------------------------------------------------

pub(super) fn domain(e: quarterdeck_domain::Error) -> anyhow::Error {
    let fields: Vec<String> = e
        .fields()
        .iter()
        .map(|f| format!("{}: {}", f.field, f.message))
        .collect();
    anyhow!("{e} {}", fields.join("; "))
}

/// The server's settings as `quarterdeck serve` will read them from the plan's environment.
pub(super) fn settings_of(plan: &ServerPlan, database_url: Option<&str>) -> Result<Settings> {
    Ok(Settings {
        listen: plan.addr,
        base_url: url::Url::parse(&plan.base)?,
        data_dir: plan.data.clone(),
        database_url: database_url.map(str::to_owned),
        ..Settings::default()
    })
}

async fn seed(args: &VerifyArgs, plan: &ServerPlan, database_url: Option<&str>) -> Result<Seeded> {
    let settings = settings_of(plan, database_url)?;
    quarterdeck::data_dir::prepare(&settings.data_dir, database_url.is_none())?;
    let core = app::core(&settings, Deps::default()).await?;
    core.bootstrap_owner(OWNER_EMAIL, OWNER_PASSWORD)
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
    let principal = core.api_caller(pat.expose()).await.map_err(domain)?.principal;
    let manage = Arc::new(principal.require::<ManageTenants>().map_err(domain)?);
    let region = settings.regions.first().cloned().context("no region in the settings")?;

    // Tenants.
    let n_tenants = args.verify_tenants.max(1);
    let conc = args.verify_seed_concurrency.max(1);
    progress(&format!(
        "seeding {n_tenants} tenants through Core::create_tenant, {conc} at a time"
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
            let mut made: Vec<(usize, TenantId)> = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n_tenants {
                    return Ok::<_, anyhow::Error>(made);
                }
                let new = NewTenant {
                    slug: TenantSlug::parse(&format!("bench-{i:05}")).map_err(domain)?,
                    name: TenantName::parse(&format!("Bench tenant {i}")).map_err(domain)?,
                    region: Region::parse(&region, &regions).map_err(domain)?,
                    tier: PriorityTier::Standard,
                    metadata: Default::default(),
                };
                let t = core.create_tenant(&manage, new).await.map_err(domain)?;
                made.push((i, t.id));
                if (i + 1) % 100 == 0 {
                    progress(&format!("  {} tenants ({:.0} s)", i + 1, t0.elapsed().as_secs_f64()));
                }
            }
        });
    }
    let mut tenants: Vec<(usize, TenantId)> = Vec::with_capacity(n_tenants);
    while let Some(r) = tasks.join_next().await {
        tenants.extend(r??);
    }
    tenants.sort_unstable_by_key(|(i, _)| *i);
    let tenants_took = t0.elapsed();

    // Keys: key i in tenant i mod n.
    let in_tenant: Vec<InTenant<ManageApiKeys>> = tenants
        .iter()
        .map(|(_, id)| principal.require_for_tenant::<ManageApiKeys>(*id).map_err(domain))
        .collect::<Result<_>>()?;
    let in_tenant = Arc::new(in_tenant);
    let n_keys = args.verify_keys.max(1);
    progress(&format!(
        "seeding {n_keys} keys through Core::create_api_key, {conc} at a time"
    ));
    let t0 = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conc {
        let (core, in_tenant, next) = (core.clone(), in_tenant.clone(), next.clone());
        tasks.spawn(async move {
            let mut made: Vec<(usize, String)> = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n_keys {
                    return Ok::<_, anyhow::Error>(made);
                }
                let auth = &in_tenant[i % in_tenant.len()];
                let req = NewApiKeyRequest {
                    name: format!("bench key {i}"),
                    scopes: vec!["read".to_owned()],
                    expires_in_days: String::new(),
                    requests_per_minute: String::new(),
                };
                let (_, secret) = core.create_api_key(auth, req).await.map_err(domain)?;
                made.push((i, secret.expose().to_owned()));
                if (i + 1) % 10_000 == 0 {
                    progress(&format!("  {} keys ({:.0} s)", i + 1, t0.elapsed().as_secs_f64()));
                }
            }
        });
    }
    let mut keys: Vec<(usize, String)> = Vec::with_capacity(n_keys);
    while let Some(r) = tasks.join_next().await {
        keys.extend(r??);
    }
    keys.sort_unstable_by_key(|(i, _)| *i);
    let keys_took = t0.elapsed();

    let (_, token) = core
        .create_service_token_from_cli(NewServiceTokenRequest {
            name: "bench data plane".to_owned(),
            scopes: vec!["keys:verify".to_owned()],
            region: String::new(),
            expires_in_days: String::new(),
        })
        .await
        .map_err(domain)?;
    close(core).await;
    Ok(Seeded {
        token: token.expose().to_owned(),
        keys: keys.into_iter().map(|(_, k)| k).collect(),
        tenants: tenants.len(),
        tenants_took,
        keys_took,
    })
}

/// Let go of the seeding `Core` (its pools close as they drop) before the server opens the
/// same database.
pub(super) async fn close(core: Arc<Core>) {
    drop(core);
    tokio::time::sleep(Duration::from_millis(200)).await;
}
