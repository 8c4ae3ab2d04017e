//! `quarterdeck-bench`: start the release `quarterdeck serve` as a child process and measure it
//! from outside, the way an operator would see it: time to ready, idle memory, sign-ins under a
//! burst of concurrent clients (throughput, server CPU per sign-in against one Argon2id hash
//! measured here, peak memory), an authenticated page (requests per second, server CPU per
//! request), tenant creation through the console form (latency p50/p99), invitations into one
//! tenant through the Automation API (per second, p50/p99, server CPU per invitation; tokens made
//! with `quarterdeck tokens create`, one per 250 requests) and the invitees' registrations from
//! the links left pending in the outbox (per second, p50/p99, server CPU per registration against
//! one hash).
//!
//! The `verify` phase (`verify.rs`) seeds tenants and API keys through the product's own code
//! and measures `POST /v1/data-plane/keys/verify` with a lean keep-alive load generator.
//!
//! The `ingest` phase (`ingest.rs`) seeds tenants and keys the same way, posts usage batches
//! (`POST /v1/data-plane/usage`) and checks that every unique event was counted exactly once.
//!
//! Server CPU is read from `/proc/<pid>/stat` (utime + stime) before and after each phase;
//! memory from `/proc/<pid>/status` (VmRSS, VmHWM). Linux only.
//!
//! `scripts/bench` builds the release binaries and runs this against SQLite and a throwaway
//! PostgreSQL cluster.

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, ValueEnum};
use quarterdeck_domain::password::{M_COST_KIB, NewPassword, P_COST, PasswordHasher, T_COST};
use quarterdeck_domain::token::OsRandom;
use reqwest::StatusCode;
use reqwest::redirect::Policy;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Barrier, watch};

#[path = "quarterdeck-bench/billing.rs"]
mod billing;
#[path = "quarterdeck-bench/ingest.rs"]
mod ingest;
#[path = "quarterdeck-bench/ingest_load.rs"]
mod ingest_load;
#[path = "quarterdeck-bench/verify.rs"]
mod verify;
#[path = "quarterdeck-bench/verify_load.rs"]
mod verify_load;
#[path = "quarterdeck-bench/webhooks.rs"]
mod webhooks;

const OWNER_EMAIL: &str = "bench-owner@example.com";
const OWNER_PASSWORD: &str = "bench-owner-password-1234";
/// The password each invitee registers with.
const INVITEE_PASSWORD: &str = "bench-invitee-password-1234";
/// The outbox worker's poll interval for the whole run: one tick at start-up, then none.
const OUTBOX_POLL_MS: u64 = 3_600_000;
/// The Automation API allows a token this many requests a minute (then 429 + Retry-After).
const API_LIMIT_PER_MINUTE: usize = 300;
/// Requests sent with one token: a token is created per this many, well under its limit.
const REQUESTS_PER_TOKEN: usize = 250;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    /// Target for tenant creation p99.
    fn tenant_p99_target(self) -> Duration {
        match self {
            Backend::Sqlite => Duration::from_millis(20),
            Backend::Postgres => Duration::from_millis(150),
        }
    }
}

/// A part of the benchmark.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Phase {
    /// Start-up, sign-ins, console pages, tenant creation, invitations, registrations.
    Console,
    /// Data-plane key verification (100k keys in 1k tenants by default).
    Verify,
    /// Usage ingestion (batches of CloudEvents across 1k tenants), then the exactly-once check.
    Ingest,
    /// The cross-tenant billing overview with 10k tenants (not in the default phases).
    Billing,
    /// Webhook delivery throughput to a loopback receiver (not in the default phases).
    Webhooks,
}

#[derive(Parser)]
#[command(
    name = "quarterdeck-bench",
    about = "Benchmark the release `quarterdeck serve` binary from outside (Linux only)"
)]
struct Cli {
    /// Storage backend for the server under test.
    #[arg(long, value_enum, default_value = "sqlite")]
    backend: Backend,
    /// PostgreSQL only: URL of an admin (or empty) database; a fresh database is created in
    /// the same cluster for this run and dropped afterwards, with its tenant databases.
    #[arg(long)]
    database_url: Option<String>,
    /// The `quarterdeck` binary (default: the one next to this executable).
    #[arg(long)]
    server: Option<PathBuf>,
    /// Concurrent sign-ins (one client, cookie jar and connection each).
    #[arg(long, default_value_t = 256)]
    signins: usize,
    /// Tenants created one after another through the console form.
    #[arg(long, default_value_t = 100)]
    tenants: usize,
    /// Seconds of load on each authenticated page.
    #[arg(long, default_value_t = 4.0)]
    page_seconds: f64,
    /// Concurrent requests on the authenticated page.
    #[arg(long, default_value_t = 8)]
    page_concurrency: usize,
    /// Users invited into one tenant through the Automation API (then registered); 0 skips both.
    #[arg(long, default_value_t = 200)]
    invitations: usize,
    /// Concurrent invitations (`POST /v1/admin/users`).
    #[arg(long, default_value_t = 8)]
    invite_concurrency: usize,
    /// Concurrent registrations (`POST /register`).
    #[arg(long, default_value_t = 8)]
    register_concurrency: usize,
    /// Argon2id hashes measured in this process (the median is the reference).
    #[arg(long, default_value_t = 10)]
    hash_samples: usize,
    /// The phases to run, comma-separated (`--only verify` runs the verification alone).
    #[arg(long, alias = "only", value_enum, value_delimiter = ',', default_values_t = [Phase::Console, Phase::Verify, Phase::Ingest])]
    phases: Vec<Phase>,
    #[command(flatten)]
    verify: verify::VerifyArgs,
    #[command(flatten)]
    ingest: ingest::IngestArgs,
    #[command(flatten)]
    billing: billing::BillingArgs,
    #[command(flatten)]
    webhooks: webhooks::WebhookArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    match bench(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quarterdeck-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn bench(cli: Cli) -> Result<()> {
    let server_bin = match &cli.server {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("quarterdeck"),
    };
    if !server_bin.is_file() {
        bail!(
            "the server binary {} does not exist: build it with `cargo build --release -p quarterdeck --bins`",
            server_bin.display()
        );
    }
    let admin_url = match cli.backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(
            cli.database_url
                .as_deref()
                .context("--backend postgres needs --database-url URL (an admin database)")?,
        ),
    };
    let tck = clock_ticks_per_second();
    let machine = Machine::read();
    let mut rows: Vec<Row> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let mut failure = None;
    for phase in [
        Phase::Console,
        Phase::Verify,
        Phase::Ingest,
        Phase::Billing,
        Phase::Webhooks,
    ] {
        if !cli.phases.contains(&phase) {
            continue;
        }
        // Each phase on its own fresh database (PostgreSQL: created here, dropped after it).
        let pg = match admin_url {
            Some(url) => Some(PgScratch::create(url).await?),
            None => None,
        };
        let url = pg.as_ref().map(|p| p.url.as_str());
        // On Ctrl-C or SIGTERM the phase is dropped, which kills the server; the databases
        // are dropped below either way.
        let result = tokio::select! {
            r = async {
                match phase {
                    Phase::Console => run(&cli, &server_bin, url, &machine, tck, &mut rows, &mut notes).await,
                    Phase::Verify => verify::run(&cli.verify, cli.backend, &server_bin, url, tck, &mut rows, &mut notes).await,
                    Phase::Ingest => ingest::run(&cli.ingest, cli.backend, &server_bin, url, tck, &mut rows, &mut notes).await,
                    Phase::Billing => billing::run(&cli.billing, cli.backend, &server_bin, url, &mut rows, &mut notes).await,
                    Phase::Webhooks => webhooks::run(&cli.webhooks, cli.backend, &server_bin, url, &mut rows, &mut notes).await,
                }
            } => r,
            () = interrupted() => Err(anyhow!("interrupted")),
        };
        if let Some(pg) = pg {
            let t = Instant::now();
            match pg.drop_all().await {
                Ok(n) => progress(&format!(
                    "dropped {n} benchmark database(s) in {}",
                    fmt_secs(t.elapsed())
                )),
                Err(e) => eprintln!("quarterdeck-bench: warning: could not drop the databases: {e:#}"),
            }
        }
        if let Err(e) = result {
            failure = Some(e);
            break;
        }
    }
    notes.push(format!(
        "server CPU from /proc/<pid>/stat at {tck} ticks/s; the load generator runs on the same {} core(s)",
        machine.cores
    ));
    print!("{}", render_report(&cli, &machine, &rows, &notes));
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn interrupted() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = term => {},
    }
}

fn progress(msg: &str) {
    eprintln!("quarterdeck-bench: {msg}");
}

// ---- the run ------------------------------------------------------------------------------

async fn run(
    cli: &Cli,
    server_bin: &Path,
    database_url: Option<&str>,
    machine: &Machine,
    tck: u64,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> Result<()> {
    // Start-up.
    progress(&format!(
        "starting {} serve ({})",
        server_bin.display(),
        cli.backend.name()
    ));
    let mut server = Server::spawn(server_bin, database_url)?;
    let ready = server.wait_ready(Duration::from_secs(60)).await?;
    rows.push(Row::check(
        "time to ready (spawn → 200 /healthz)",
        fmt_secs(ready),
        "≤ 0.5 s",
        ready <= Duration::from_millis(500),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = server.status_kib("VmRSS")?;
    let startup_peak = server.status_kib("VmHWM")?;
    rows.push(Row::check(
        "idle RSS (1 s after ready)",
        fmt_mib(idle_rss),
        "≤ 30 MiB",
        idle_rss <= 30 * 1024,
    ));
    rows.push(Row::info("peak RSS during start-up", fmt_mib(startup_peak)));

    // One Argon2id hash, here, single-threaded.
    progress(&format!("timing {} Argon2id hashes in this process", cli.hash_samples));
    let hash = measure_hash(cli.hash_samples.max(1)).await?;
    rows.push(Row::info(
        &format!("one Argon2id hash (m={M_COST_KIB} KiB, t={T_COST}, p={P_COST}), CPU"),
        fmt_ms(hash.cpu),
    ));
    rows.push(Row::info("  same, wall time", fmt_ms(hash.wall)));
    if hash.wall.as_secs_f64() > hash.cpu.as_secs_f64() * 1.1 {
        notes.push(format!(
            "one hash took {} of wall time for {} of CPU: something else was using the CPU (load average {})",
            fmt_ms(hash.wall),
            fmt_ms(hash.cpu),
            machine.load
        ));
    }

    // Concurrent sign-ins.
    let peak_reset = server.reset_peak_rss();
    if !peak_reset {
        notes.push("could not reset the server's VmHWM: the sign-in peak below includes start-up".to_owned());
    }
    progress(&format!("{} concurrent sign-ins", cli.signins));
    let threads_before = server.thread_ticks();
    let cpu_before = server.cpu_ticks()?;
    let s = sign_in_burst(&server, cli.signins.max(1)).await?;
    let cpu_ticks = server.cpu_ticks()?.saturating_sub(cpu_before);
    let cpu = ticks_to_duration(cpu_ticks, tck);
    let signin_threads = thread_shares(&threads_before, &server.thread_ticks(), cpu_ticks);
    let signin_peak = server.status_kib("VmHWM")?;
    let ok = s.ok as u32;
    let rate = f64::from(ok) / s.elapsed.as_secs_f64();
    rows.push(Row::info(
        &format!("sign-ins: {} concurrent", cli.signins),
        format!(
            "{} ok, {} × 503, {} × 429, {} other",
            s.ok,
            s.busy,
            s.throttled,
            s.failed.len()
        ),
    ));
    rows.push(Row::info("sign-ins per second", format!("{rate:.1} /s")));
    rows.push(Row::info(
        "  sign-in latency p50 / p99 / max",
        format!(
            "{} / {} / {}",
            fmt_ms(percentile(&s.latencies, 0.50)),
            fmt_ms(percentile(&s.latencies, 0.99)),
            fmt_ms(s.latencies.iter().max().copied().unwrap_or_default())
        ),
    ));
    if ok > 0 {
        let per = cpu / ok;
        let ratio = per.as_secs_f64() / hash.cpu.as_secs_f64();
        rows.push(Row::info("server CPU per sign-in", fmt_ms(per)));
        rows.push(Row::check(
            "CPU per sign-in / one hash",
            format!("{ratio:.2}"),
            "≤ 1.2",
            ratio <= 1.2,
        ));
        rows.push(Row::info("  server CPU by thread", signin_threads));
    } else {
        rows.push(Row::miss("CPU per sign-in / one hash", "no sign-in succeeded", "≤ 1.2"));
    }
    rows.push(Row::check(
        &format!("peak RSS, {} concurrent sign-ins", cli.signins),
        fmt_mib(signin_peak),
        "< 128 MiB",
        signin_peak < 128 * 1024,
    ));
    if s.ok + s.busy + s.throttled != cli.signins {
        notes.push(format!(
            "{} sign-in(s) failed otherwise, e.g.: {}",
            s.failed.len(),
            s.failed.first().map(String::as_str).unwrap_or("?")
        ));
    }
    let client = s
        .signed_in
        .context("no sign-in succeeded: cannot measure the console pages")?;

    // Tenant creation through the console form.
    progress(&format!("creating {} tenants through POST /tenants", cli.tenants));
    let cpu_before = server.cpu_ticks()?;
    let t = create_tenants(&server, &client, cli.tenants.max(1)).await?;
    let cpu = ticks_to_duration(server.cpu_ticks()?.saturating_sub(cpu_before), tck);
    let p50 = percentile(&t.latencies, 0.50);
    let p99 = percentile(&t.latencies, 0.99);
    let target = cli.backend.tenant_p99_target();
    rows.push(Row::info(
        &format!("tenant creation ({}), {} created", cli.backend.name(), t.ok),
        format!("{} failed", t.failed.len()),
    ));
    rows.push(Row::info("  tenant creation p50", fmt_ms(p50)));
    rows.push(Row::check(
        "  tenant creation p99",
        fmt_ms(p99),
        &format!("≤ {} ms", target.as_millis()),
        p99 <= target && t.failed.is_empty(),
    ));
    rows.push(Row::info(
        "  tenant creation max",
        fmt_ms(t.latencies.iter().max().copied().unwrap_or_default()),
    ));
    if t.ok > 0 {
        rows.push(Row::info("  server CPU per tenant creation", fmt_ms(cpu / t.ok as u32)));
    }
    if let Some(first) = t.failed.first() {
        notes.push(format!("{} tenant creation(s) failed, e.g.: {first}", t.failed.len()));
    }

    // Authenticated pages.
    for path in ["/", "/tenants"] {
        progress(&format!(
            "GET {path} for {} s, {} concurrent",
            cli.page_seconds, cli.page_concurrency
        ));
        let p = page_load(
            &server,
            &client,
            path,
            cli.page_concurrency.max(1),
            Duration::from_secs_f64(cli.page_seconds.max(0.5)),
            tck,
        )
        .await?;
        let label = if path == "/" {
            "GET / (dashboard)".to_owned()
        } else {
            format!("GET {path} ({} tenants, 25 a page)", t.ok)
        };
        rows.push(Row::info(
            &format!("{label} requests per second"),
            format!("{:.0} /s", p.ok as f64 / p.elapsed.as_secs_f64()),
        ));
        if p.ok > 0 {
            let per = p.cpu / p.ok as u32;
            rows.push(Row::check(
                "  server CPU per request",
                format!("{:.1} µs", per.as_secs_f64() * 1e6),
                "≤ 50 µs",
                per <= Duration::from_micros(50),
            ));
            rows.push(Row::info("  server CPU by thread", p.by_thread.clone()));
            rows.push(Row::info(
                "  latency p50 / p99",
                format!(
                    "{} / {}",
                    fmt_ms(percentile(&p.latencies, 0.50)),
                    fmt_ms(percentile(&p.latencies, 0.99))
                ),
            ));
        }
        if let Some(first) = p.failed.first() {
            notes.push(format!(
                "GET {path}: {} request(s) failed, e.g.: {first}",
                p.failed.len()
            ));
        }
    }

    // Invitations through the Automation API, into the first tenant, then their registrations.
    if cli.invitations > 0
        && let Some(slug) = t.first.as_deref()
    {
        progress(&format!(
            "inviting {} users into {slug} through POST /v1/admin/users, {} concurrent",
            cli.invitations, cli.invite_concurrency
        ));
        let inv = invite_users(&server, tck, slug, cli.invitations, cli.invite_concurrency).await?;
        let b = &inv.batch;
        rows.push(Row::info(
            &format!(
                "invitations: {} into one tenant, {} concurrent, {} token(s)",
                cli.invitations, cli.invite_concurrency, inv.tokens
            ),
            b.counts(),
        ));
        rows.push(Row::info("invitations per second", b.rate()));
        rows.push(Row::info("  invitation latency p50 / p99 / max", b.latency()));
        if b.ok > 0 {
            rows.push(Row::info("  server CPU per invitation", fmt_ms(b.cpu / b.ok as u32)));
            rows.push(Row::info("  server CPU by thread", b.by_thread.clone()));
        }
        if b.throttled > 0 {
            notes.push(format!(
                "{} invitation(s) got 429 (Retry-After up to {} s) despite one token per {REQUESTS_PER_TOKEN} requests",
                b.throttled,
                b.retry_after.map_or("?".to_owned(), |s| s.to_string())
            ));
        }
        if let Some(first) = b.failed.first() {
            notes.push(format!("{} invitation(s) failed, e.g.: {first}", b.failed.len()));
        }

        progress(&format!(
            "registering the invitees from the outbox links, {} concurrent",
            cli.register_concurrency
        ));
        let reg = register_users(&server, tck, database_url, slug, cli.register_concurrency).await?;
        let b = &reg.batch;
        rows.push(Row::info(
            &format!(
                "registrations: {} outbox links, {} concurrent",
                reg.links, cli.register_concurrency
            ),
            b.counts(),
        ));
        rows.push(Row::info("registrations per second", b.rate()));
        rows.push(Row::info("  registration latency p50 / p99 / max", b.latency()));
        if b.ok > 0 {
            let per = b.cpu / b.ok as u32;
            rows.push(Row::info("  server CPU per registration", fmt_ms(per)));
            rows.push(Row::info(
                "  CPU per registration / one hash",
                format!("{:.2}", per.as_secs_f64() / hash.cpu.as_secs_f64()),
            ));
            rows.push(Row::info("  server CPU by thread", b.by_thread.clone()));
        }
        rows.push(Row::info(
            "  GET of the link (form + cookie) p50 / p99",
            format!(
                "{} / {}",
                fmt_ms(percentile(&reg.forms, 0.50)),
                fmt_ms(percentile(&reg.forms, 0.99))
            ),
        ));
        if reg.links != inv.batch.ok {
            notes.push(format!(
                "{} invitation(s) succeeded but {} registration link(s) were pending in the outbox",
                inv.batch.ok, reg.links
            ));
        }
        if let Some(first) = b.failed.first() {
            notes.push(format!("{} registration(s) failed, e.g.: {first}", b.failed.len()));
        }
        notes.push(format!(
            "an invitation is POST /v1/admin/users with a bearer token made beforehand by `quarterdeck tokens create` \
             (read_write; one per {REQUESTS_PER_TOKEN} requests, the limit being {API_LIMIT_PER_MINUTE} a minute per token)"
        ));
        notes.push(format!(
            "the server runs with QUARTERDECK_OUTBOX_POLL_MS={OUTBOX_POLL_MS}, so invitation emails stay pending: \
             the CPU per invitation leaves out delivering its email"
        ));
        notes.push(
            "a registration is POST /register on the tenant's host with the link's token (the GET of the link for \
             its form and cookie happens before the clock starts); it hashes one password"
                .to_owned(),
        );
    } else if cli.invitations > 0 {
        notes.push("no tenant was created: invitations and registrations skipped".to_owned());
    }

    let final_rss = server.status_kib("VmRSS")?;
    let final_peak = server.status_kib("VmHWM")?;
    rows.push(Row::info("RSS at the end", fmt_mib(final_rss)));
    rows.push(Row::info("peak RSS since the sign-in burst", fmt_mib(final_peak)));

    server.stop();
    notes.push(
        "a sign-in is POST /login (the GET /login for its form and cookie happens before the clock starts)".to_owned(),
    );
    notes.push(
        "CPU per sign-in / one hash divides by the hash's median CPU time (its wall time on an idle machine)"
            .to_owned(),
    );
    Ok(())
}

// ---- the server under test ------------------------------------------------------------------

struct Server {
    child: Child,
    pid: u32,
    bin: PathBuf,
    dir: PathBuf,
    /// `QUARTERDECK_DATA_DIR` (SQLite: `control.db` is here).
    data: PathBuf,
    /// The `QUARTERDECK_*` settings it runs with (for the CLI too).
    env: Vec<(&'static str, OsString)>,
    log: PathBuf,
    base: String,
    started: Instant,
}

/// A server's directory, address and settings, before it starts (the verify phase seeds its
/// database in between).
struct ServerPlan {
    bin: PathBuf,
    dir: PathBuf,
    data: PathBuf,
    addr: SocketAddr,
    env: Vec<(&'static str, OsString)>,
    log: PathBuf,
    base: String,
}

impl ServerPlan {
    fn new(bin: &Path, database_url: Option<&str>) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("quarterdeck-bench-{}", uuid::Uuid::new_v4().simple()));
        let data = dir.join("data");
        std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
        let port = free_port()?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let base = format!("http://localhost:{port}");
        let log = dir.join("server.log");
        let mut env: Vec<(&'static str, OsString)> = vec![
            ("QUARTERDECK_LISTEN", addr.to_string().into()),
            ("QUARTERDECK_BASE_URL", base.clone().into()),
            ("QUARTERDECK_DATA_DIR", data.clone().into()),
            ("QUARTERDECK_BOOTSTRAP_OWNER_EMAIL", OWNER_EMAIL.into()),
            ("QUARTERDECK_BOOTSTRAP_OWNER_PASSWORD", OWNER_PASSWORD.into()),
            // The outbox worker ticks once at start-up, then idles: the invitation emails stay
            // pending in the outbox, where the registration phase reads their links.
            ("QUARTERDECK_OUTBOX_POLL_MS", OUTBOX_POLL_MS.to_string().into()),
        ];
        if let Some(url) = database_url {
            env.push(("QUARTERDECK_DATABASE_URL", url.into()));
        }
        Ok(Self {
            bin: bin.to_owned(),
            dir,
            data,
            addr,
            env,
            log,
            base,
        })
    }

    /// Start `quarterdeck serve` with these settings.
    fn start(self) -> Result<Server> {
        let out = File::create(&self.log)?;
        let err = out.try_clone()?;
        let mut cmd = settings_command(&self.bin, &self.dir, &self.env);
        cmd.arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let started = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        let pid = child.id();
        Ok(Server {
            child,
            pid,
            bin: self.bin,
            dir: self.dir,
            data: self.data,
            env: self.env,
            log: self.log,
            base: self.base,
            started,
        })
    }
}

impl Server {
    fn spawn(bin: &Path, database_url: Option<&str>) -> Result<Self> {
        ServerPlan::new(bin, database_url)?.start()
    }

    /// Run `quarterdeck <args>` with the server's settings; its standard output.
    async fn cli(&self, args: &[&str]) -> Result<String> {
        let mut cmd = settings_command(&self.bin, &self.dir, &self.env);
        cmd.args(args).stdin(Stdio::null());
        let what = format!("quarterdeck {}", args.join(" "));
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await?
            .with_context(|| format!("running {what}"))?;
        if !out.status.success() {
            bail!(
                "{what} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Poll GET /healthz until it answers 200; the time since spawning.
    async fn wait_ready(&mut self, limit: Duration) -> Result<Duration> {
        let client = self.client(false, Duration::from_secs(2))?;
        let url = format!("{}/healthz", self.base);
        loop {
            if let Ok(r) = client.get(&url).send().await
                && r.status() == StatusCode::OK
            {
                return Ok(self.started.elapsed());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the server exited ({status}) before it was ready; its log:\n{}",
                    self.log_tail()
                );
            }
            if self.started.elapsed() > limit {
                bail!(
                    "the server was not ready within {} s; its log:\n{}",
                    limit.as_secs(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// A client that reaches `localhost` on the server's address (no IPv6 detour).
    fn client(&self, cookies: bool, timeout: Duration) -> Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .cookie_store(cookies)
            .redirect(Policy::none())
            .resolve("localhost", SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .timeout(timeout)
            .build()?)
    }

    /// A client with a cookie jar for the tenant host `{slug}.localhost`.
    fn tenant_client(&self, slug: &str, timeout: Duration) -> Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .cookie_store(true)
            .redirect(Policy::none())
            .resolve(&format!("{slug}.localhost"), SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .timeout(timeout)
            .build()?)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The origin of a tenant's host: `http://{slug}.localhost:{port}`.
    fn tenant_origin(&self, slug: &str) -> String {
        self.base.replacen("://", &format!("://{slug}."), 1)
    }

    fn cpu_ticks(&self) -> Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .with_context(|| format!("reading /proc/{}/stat", self.pid))?;
        // The command name (field 2) may hold spaces: count from the last ')'.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .context("unexpected /proc/<pid>/stat")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
        let utime: u64 = fields.get(11).context("no utime")?.parse()?;
        let stime: u64 = fields.get(12).context("no stime")?.parse()?;
        Ok(utime + stime)
    }

    /// (name, CPU ticks) of each live thread, by thread id.
    fn thread_ticks(&self) -> BTreeMap<String, (String, u64)> {
        let mut out = BTreeMap::new();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return out;
        };
        for task in tasks.flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            let (Some((head, rest)), Some(open)) = (stat.rsplit_once(')'), stat.find('(')) else {
                continue;
            };
            let name = head.get(open + 1..).unwrap_or("?").to_owned();
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
                + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
            out.insert(task.file_name().to_string_lossy().into_owned(), (name, ticks));
        }
        out
    }

    /// A `kB` line of `/proc/<pid>/status`, in KiB.
    fn status_kib(&self, key: &str) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next())
            .context(format!("{key} not in /proc/<pid>/status"))?
            .parse()
            .map_err(|e| anyhow!("{key}: {e}"))
    }

    /// Reset VmHWM to the current RSS (Linux ≥ 4.0); false if refused.
    fn reset_peak_rss(&self) -> bool {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid), "5").is_ok()
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `bin` in `dir` with exactly the settings `env` (nothing `QUARTERDECK_*` inherited from the
/// caller's environment).
fn settings_command(bin: &Path, dir: &Path, env: &[(&'static str, OsString)]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.current_dir(dir);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("QUARTERDECK_") || k == "RUST_LOG" {
            cmd.env_remove(k.as_ref());
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(100)
}

fn ticks_to_duration(ticks: u64, tck: u64) -> Duration {
    Duration::from_secs_f64(ticks as f64 / tck as f64)
}

/// CPU time of this process in ns: the sum over its live threads of
/// `/proc/self/task/*/schedstat` (time on CPU, nanosecond resolution).
fn own_cpu_ns() -> Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task")?.flatten() {
        if let Ok(s) = std::fs::read_to_string(task.path().join("schedstat")) {
            total += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(total)
}

// ---- one hash -----------------------------------------------------------------------------

struct HashTiming {
    /// Median wall time of one hash.
    wall: Duration,
    /// Median CPU time of one hash (this process, all threads: nothing else runs meanwhile).
    cpu: Duration,
}

/// Hash with the domain's hasher (one slot: one hash at a time), `samples` times, after one
/// warm-up (page faults on the buffer, code paging in).
async fn measure_hash(samples: usize) -> Result<HashTiming> {
    let hasher =
        PasswordHasher::new(1, Duration::from_secs(60), &OsRandom).map_err(|e| anyhow!("building the hasher: {e}"))?;
    let pw = NewPassword::parse("correct horse battery staple", 12, "password").map_err(|e| anyhow!("{e}"))?;
    let mut walls = Vec::with_capacity(samples);
    let mut cpus = Vec::with_capacity(samples);
    for i in 0..=samples {
        let cpu0 = own_cpu_ns()?;
        let t = Instant::now();
        hasher.hash(&pw, &OsRandom).await.map_err(|e| anyhow!("hashing: {e}"))?;
        let wall = t.elapsed();
        let cpu = Duration::from_nanos(own_cpu_ns()?.saturating_sub(cpu0));
        if i > 0 {
            walls.push(wall);
            cpus.push(cpu);
        }
    }
    Ok(HashTiming {
        wall: percentile(&walls, 0.5),
        cpu: percentile(&cpus, 0.5),
    })
}

// ---- sign-ins -----------------------------------------------------------------------------

#[derive(Default)]
struct SignIns {
    ok: usize,
    busy: usize,
    throttled: usize,
    failed: Vec<String>,
    latencies: Vec<Duration>,
    elapsed: Duration,
    signed_in: Option<reqwest::Client>,
}

enum Outcome {
    Ok,
    Busy,
    /// 429, with its Retry-After in seconds.
    Throttled(Option<u64>),
    Failed(String),
}

/// `n` clients each fetch the form (cookie + token), then all post it at once.
async fn sign_in_burst(server: &Server, n: usize) -> Result<SignIns> {
    let barrier = Arc::new(Barrier::new(n + 1));
    let (start_tx, start_rx) = watch::channel(false);
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let client = server.client(true, Duration::from_secs(120))?;
        let login = server.url("/login");
        let barrier = barrier.clone();
        let mut start = start_rx.clone();
        tasks.push(tokio::spawn(async move {
            let token = fetch_login_form(&client, &login).await;
            barrier.wait().await;
            let _ = start.wait_for(|s| *s).await;
            let t = Instant::now();
            let outcome = match token {
                Ok(token) => post_login(&client, &login, &token).await,
                Err(e) => Outcome::Failed(format!("GET /login: {e:#}")),
            };
            (outcome, t.elapsed(), client)
        }));
    }
    barrier.wait().await;
    let t0 = Instant::now();
    start_tx.send(true)?;
    let mut out = SignIns::default();
    for task in tasks {
        let (outcome, latency, client) = task.await?;
        match outcome {
            Outcome::Ok => {
                out.ok += 1;
                out.latencies.push(latency);
                if out.signed_in.is_none() {
                    out.signed_in = Some(client);
                }
            }
            Outcome::Busy => out.busy += 1,
            Outcome::Throttled(_) => out.throttled += 1,
            Outcome::Failed(e) => out.failed.push(e),
        }
    }
    out.elapsed = t0.elapsed();
    Ok(out)
}

async fn fetch_login_form(client: &reqwest::Client, url: &str) -> Result<String> {
    let r = client.get(url).send().await?;
    if r.status() != StatusCode::OK {
        bail!("status {}", r.status());
    }
    let html = r.text().await?;
    attr_after(&html, "name=\"csrf_token\" value=\"")
        .map(str::to_owned)
        .context("no csrf_token field in the sign-in form")
}

async fn post_login(client: &reqwest::Client, url: &str, token: &str) -> Outcome {
    let sent = client
        .post(url)
        .form(&[
            ("csrf_token", token),
            ("email", OWNER_EMAIL),
            ("password", OWNER_PASSWORD),
            ("next", "/"),
        ])
        .send()
        .await;
    let r = match sent {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(format!("POST /login: {e}")),
    };
    let status = r.status();
    let retry = retry_after(&r);
    let has_session = r
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.contains("qd_session=")));
    // Read the body so the connection is reusable.
    let _ = r.bytes().await;
    match status {
        StatusCode::SEE_OTHER if has_session => Outcome::Ok,
        StatusCode::SERVICE_UNAVAILABLE => Outcome::Busy,
        StatusCode::TOO_MANY_REQUESTS => Outcome::Throttled(retry),
        s => Outcome::Failed(format!("POST /login: status {s}")),
    }
}

/// A response's Retry-After in seconds, if any.
fn retry_after(r: &reqwest::Response) -> Option<u64> {
    r.headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// The value of the double-quoted attribute that `marker` ends just inside of.
fn attr_after<'a>(html: &'a str, marker: &str) -> Option<&'a str> {
    let start = html.find(marker)? + marker.len();
    let len = html[start..].find('"')?;
    Some(&html[start..start + len]).filter(|v| !v.is_empty())
}

// ---- tenants ------------------------------------------------------------------------------

#[derive(Default)]
struct Created {
    ok: usize,
    /// The slug of the first tenant created.
    first: Option<String>,
    failed: Vec<String>,
    latencies: Vec<Duration>,
}

async fn session_csrf(server: &Server, client: &reqwest::Client) -> Result<String> {
    let r = client.get(server.url("/tenants/new")).send().await?;
    if r.status() != StatusCode::OK {
        bail!("GET /tenants/new: status {}", r.status());
    }
    let html = r.text().await?;
    attr_after(&html, "<meta name=\"csrf-token\" content=\"")
        .map(str::to_owned)
        .context("no csrf-token meta tag on /tenants/new")
}

async fn create_tenants(server: &Server, client: &reqwest::Client, n: usize) -> Result<Created> {
    let token = session_csrf(server, client).await?;
    let url = server.url("/tenants");
    let mut out = Created::default();
    for i in 0..n {
        let name = format!("Bench Tenant {i:04}");
        let slug = format!("bench-{i:04}");
        let t = Instant::now();
        let sent = client
            .post(&url)
            .form(&[
                ("csrf_token", token.as_str()),
                ("name", name.as_str()),
                ("slug", slug.as_str()),
                ("region", "default"),
                ("tier", "standard"),
            ])
            .send()
            .await;
        let result = match sent {
            Ok(r) => {
                let status = r.status();
                let created = r
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|l| l.starts_with("/tenants?created="));
                let _ = r.bytes().await;
                if status == StatusCode::SEE_OTHER && created {
                    Ok(())
                } else {
                    Err(format!("POST /tenants ({slug}): status {status}"))
                }
            }
            Err(e) => Err(format!("POST /tenants ({slug}): {e}")),
        };
        let latency = t.elapsed();
        match result {
            Ok(()) => {
                out.ok += 1;
                out.latencies.push(latency);
                out.first.get_or_insert(slug);
            }
            Err(e) => out.failed.push(e),
        }
    }
    Ok(out)
}

// ---- invitations and registrations --------------------------------------------------------

/// A batch of requests, `concurrency` at a time, and the server's CPU meanwhile.
#[derive(Default)]
struct Batch {
    ok: usize,
    busy: usize,
    throttled: usize,
    /// The largest Retry-After of the 429s.
    retry_after: Option<u64>,
    failed: Vec<String>,
    latencies: Vec<Duration>,
    elapsed: Duration,
    cpu: Duration,
    by_thread: String,
}

impl Batch {
    fn counts(&self) -> String {
        format!(
            "{} ok, {} × 503, {} × 429, {} other",
            self.ok,
            self.busy,
            self.throttled,
            self.failed.len()
        )
    }

    fn latency(&self) -> String {
        format!(
            "{} / {} / {}",
            fmt_ms(percentile(&self.latencies, 0.50)),
            fmt_ms(percentile(&self.latencies, 0.99)),
            fmt_ms(self.latencies.iter().max().copied().unwrap_or_default())
        )
    }

    fn rate(&self) -> String {
        format!("{:.1} /s", self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9))
    }
}

/// Run `job(0)` … `job(n - 1)` from `concurrency` workers; latencies of the successes.
async fn run_batch<F, Fut>(server: &Server, tck: u64, n: usize, concurrency: usize, job: F) -> Result<Batch>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let job = Arc::new(job);
    let next = Arc::new(AtomicUsize::new(0));
    let threads_before = server.thread_ticks();
    let cpu_before = server.cpu_ticks()?;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.clamp(1, n.max(1)) {
        let job = job.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let t = Instant::now();
                let outcome = job(i).await;
                done.push((outcome, t.elapsed()));
            }
            done
        }));
    }
    let mut out = Batch::default();
    for task in tasks {
        for (outcome, latency) in task.await? {
            match outcome {
                Outcome::Ok => {
                    out.ok += 1;
                    out.latencies.push(latency);
                }
                Outcome::Busy => out.busy += 1,
                Outcome::Throttled(retry) => {
                    out.throttled += 1;
                    out.retry_after = out.retry_after.max(retry);
                }
                Outcome::Failed(e) => out.failed.push(e),
            }
        }
    }
    out.elapsed = t0.elapsed();
    let cpu_ticks = server.cpu_ticks()?.saturating_sub(cpu_before);
    out.cpu = ticks_to_duration(cpu_ticks, tck);
    out.by_thread = thread_shares(&threads_before, &server.thread_ticks(), cpu_ticks);
    Ok(out)
}

/// What a response means: `ok` when it is the expected one; 503, 429 as such; else a failure
/// with the start of the body.
async fn outcome_of(sent: reqwest::Result<reqwest::Response>, what: &str, ok: bool) -> Outcome {
    let r = match sent {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(format!("{what}: {e}")),
    };
    let status = r.status();
    let retry = retry_after(&r);
    let body = r.text().await.unwrap_or_default();
    match status {
        _ if ok => Outcome::Ok,
        StatusCode::SERVICE_UNAVAILABLE => Outcome::Busy,
        StatusCode::TOO_MANY_REQUESTS => Outcome::Throttled(retry),
        s => Outcome::Failed(format!(
            "{what}: status {s}: {}",
            body.chars().take(200).collect::<String>()
        )),
    }
}

/// Read-write tokens for the Automation API, made with `quarterdeck tokens create` (as an
/// operator would), one per [`REQUESTS_PER_TOKEN`] requests.
async fn create_tokens(server: &Server, requests: usize) -> Result<Vec<String>> {
    let mut tokens = Vec::new();
    for k in 1..=requests.div_ceil(REQUESTS_PER_TOKEN).max(1) {
        let name = format!("bench-{k}");
        let out = server
            .cli(&[
                "tokens",
                "create",
                "--email",
                OWNER_EMAIL,
                "--name",
                &name,
                "--scope",
                "read_write",
                "--days",
                "1",
            ])
            .await?;
        let token = out
            .lines()
            .map(str::trim)
            .rfind(|l| l.starts_with("qd_pat_"))
            .with_context(|| format!("`quarterdeck tokens create` printed no token: {out}"))?;
        tokens.push(token.to_owned());
    }
    Ok(tokens)
}

/// The id of the tenant `slug`, through `GET /v1/admin/tenants`.
async fn tenant_id(server: &Server, client: &reqwest::Client, token: &str, slug: &str) -> Result<String> {
    let r = client
        .get(server.url("/v1/admin/tenants"))
        .query(&[("q", slug), ("limit", "200")])
        .bearer_auth(token)
        .send()
        .await?;
    let status = r.status();
    if status != StatusCode::OK {
        bail!(
            "GET /v1/admin/tenants: status {status}: {}",
            r.text().await.unwrap_or_default()
        );
    }
    let list: serde_json::Value = r.json().await?;
    list["items"]
        .as_array()
        .and_then(|items| items.iter().find(|t| t["slug"] == slug))
        .and_then(|t| t["id"].as_str())
        .map(str::to_owned)
        .with_context(|| format!("tenant {slug} not in GET /v1/admin/tenants"))
}

struct Invitations {
    batch: Batch,
    tokens: usize,
}

/// Invite `n` users as `admin` into the tenant `slug` through `POST /v1/admin/users`.
async fn invite_users(server: &Server, tck: u64, slug: &str, n: usize, concurrency: usize) -> Result<Invitations> {
    // Request 0 looks the tenant up; requests 1..=n invite.
    let tokens = Arc::new(create_tokens(server, n + 1).await?);
    let client = server.client(false, Duration::from_secs(60))?;
    let tenant = tenant_id(server, &client, &tokens[0], slug).await?;
    let url = server.url("/v1/admin/users");
    let count = tokens.len();
    let batch = run_batch(server, tck, n, concurrency, move |i| {
        let token = tokens[(i + 1) / REQUESTS_PER_TOKEN].clone();
        let body = serde_json::json!({
            "email": format!("bench-invitee-{i:04}@example.com"),
            "roles": ["admin"],
            "tenant_id": tenant,
        });
        let sent = client.post(&url).bearer_auth(token).json(&body).send();
        async move {
            let sent = sent.await;
            let ok = sent.as_ref().is_ok_and(|r| r.status() == StatusCode::CREATED);
            outcome_of(sent, "POST /v1/admin/users", ok).await
        }
    })
    .await?;
    Ok(Invitations { batch, tokens: count })
}

/// The registration links of the pending emails in the outbox that point at `origin`.
async fn pending_links(server: &Server, database_url: Option<&str>, origin: &str) -> Result<Vec<String>> {
    use sqlx::Connection;
    let bodies: Vec<String> = match database_url {
        Some(url) => {
            let mut c = sqlx::PgConnection::connect(url).await?;
            let v = sqlx::query_scalar("SELECT body_text FROM identity.outbox WHERE status = 'pending'")
                .fetch_all(&mut c)
                .await?;
            c.close().await?;
            v
        }
        None => {
            let opts = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(server.data.join("control.db"))
                .busy_timeout(Duration::from_secs(10));
            let mut c = sqlx::SqliteConnection::connect_with(&opts).await?;
            let v = sqlx::query_scalar("SELECT body_text FROM outbox WHERE status = 'pending'")
                .fetch_all(&mut c)
                .await?;
            c.close().await?;
            v
        }
    };
    let prefix = format!("{origin}/register?token=");
    Ok(bodies
        .iter()
        .filter_map(|b| {
            let rest = &b[b.find(&prefix)?..];
            let end = rest
                .find(|c: char| c.is_whitespace() || matches!(c, '"' | '<' | '>' | ')'))
                .unwrap_or(rest.len());
            Some(rest[..end].to_owned())
        })
        .collect())
}

struct Registrations {
    links: usize,
    forms: Vec<Duration>,
    batch: Batch,
}

/// Register every invitee whose link is pending in the outbox: GET the link (form and
/// `qd_csrf` cookie; not timed), then `POST /register`, `concurrency` at a time.
async fn register_users(
    server: &Server,
    tck: u64,
    database_url: Option<&str>,
    slug: &str,
    concurrency: usize,
) -> Result<Registrations> {
    let origin = server.tenant_origin(slug);
    let links = pending_links(server, database_url, &origin).await?;
    let client = server.tenant_client(slug, Duration::from_secs(120))?;
    let mut forms = Vec::with_capacity(links.len());
    let mut posts = Vec::with_capacity(links.len());
    for link in &links {
        let t = Instant::now();
        let r = client.get(link).send().await?;
        let status = r.status();
        let html = r.text().await?;
        forms.push(t.elapsed());
        if status != StatusCode::OK {
            bail!("GET {origin}/register?token=…: status {status}");
        }
        let field = |name: &str| {
            attr_after(&html, &format!("name=\"{name}\" value=\""))
                .map(str::to_owned)
                .with_context(|| format!("no {name} field in the registration form"))
        };
        posts.push((field("csrf_token")?, field("token")?));
    }
    let url = format!("{origin}/register");
    let posts = Arc::new(posts);
    let batch = run_batch(server, tck, links.len(), concurrency, move |i| {
        let (csrf, token) = &posts[i];
        let sent = client
            .post(&url)
            .form(&[
                ("csrf_token", csrf.as_str()),
                ("token", token.as_str()),
                ("password", INVITEE_PASSWORD),
                ("confirm", INVITEE_PASSWORD),
            ])
            .send();
        async move {
            let sent = sent.await;
            let ok = sent.as_ref().is_ok_and(|r| {
                r.status() == StatusCode::SEE_OTHER
                    && r.headers()
                        .get(reqwest::header::LOCATION)
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|l| l.starts_with("/login?registered"))
            });
            outcome_of(sent, "POST /register", ok).await
        }
    })
    .await?;
    Ok(Registrations {
        links: links.len(),
        forms,
        batch,
    })
}

// ---- authenticated pages ------------------------------------------------------------------

struct PageLoad {
    ok: usize,
    failed: Vec<String>,
    latencies: Vec<Duration>,
    elapsed: Duration,
    cpu: Duration,
    /// Where the server's CPU went, by thread name.
    by_thread: String,
}

/// "name 52%, other 48%": the share of `total` ticks each thread name used between two
/// samples (per thread id; threads that ended in between are "exited threads").
fn thread_shares(
    before: &BTreeMap<String, (String, u64)>,
    after: &BTreeMap<String, (String, u64)>,
    total: u64,
) -> String {
    if total == 0 {
        return "—".to_owned();
    }
    let mut by_name: BTreeMap<&str, u64> = BTreeMap::new();
    for (tid, (name, ticks)) in after {
        let earlier = before.get(tid).map_or(0, |(_, t)| *t);
        *by_name.entry(name.as_str()).or_insert(0) += ticks.saturating_sub(earlier);
    }
    let mut shares: Vec<(u64, &str)> = by_name
        .into_iter()
        .filter(|(_, t)| *t > 0)
        .map(|(n, t)| (t, n))
        .collect();
    shares.sort_unstable_by(|a, b| b.cmp(a));
    let named: u64 = shares.iter().map(|(t, _)| t).sum();
    let pct = |t: u64| t as f64 * 100.0 / total as f64;
    let mut parts: Vec<String> = shares
        .iter()
        .map(|(t, name)| format!("{name} {:.0}%", pct(*t)))
        .collect();
    if total > named {
        parts.push(format!("exited threads {:.0}%", pct(total - named)));
    }
    parts.join(", ")
}

async fn get_page(client: &reqwest::Client, url: &str) -> Result<()> {
    let r = client.get(url).send().await?;
    let status = r.status();
    r.bytes().await?;
    if status != StatusCode::OK {
        bail!("status {status}");
    }
    Ok(())
}

async fn page_load(
    server: &Server,
    client: &reqwest::Client,
    path: &str,
    concurrency: usize,
    duration: Duration,
    tck: u64,
) -> Result<PageLoad> {
    let url = server.url(path);
    // Warm up: open the connections, fill caches.
    for _ in 0..concurrency.max(50) {
        get_page(client, &url)
            .await
            .with_context(|| format!("GET {path} (warm-up)"))?;
    }
    let threads_before = server.thread_ticks();
    let cpu_before = server.cpu_ticks()?;
    let t0 = Instant::now();
    let deadline = t0 + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let client = client.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failed = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                match get_page(&client, &url).await {
                    Ok(()) => latencies.push(t.elapsed()),
                    Err(e) => failed.push(format!("{e:#}")),
                }
            }
            (latencies, failed)
        }));
    }
    let mut latencies = Vec::new();
    let mut failed = Vec::new();
    for task in tasks {
        let (l, f) = task.await?;
        latencies.extend(l);
        failed.extend(f);
    }
    let elapsed = t0.elapsed();
    let cpu_ticks = server.cpu_ticks()?.saturating_sub(cpu_before);
    let by_thread = thread_shares(&threads_before, &server.thread_ticks(), cpu_ticks);
    Ok(PageLoad {
        ok: latencies.len(),
        failed,
        latencies,
        elapsed,
        cpu: ticks_to_duration(cpu_ticks, tck),
        by_thread,
    })
}

// ---- PostgreSQL scratch database ----------------------------------------------------------

struct PgScratch {
    admin_url: String,
    name: String,
    url: String,
}

impl PgScratch {
    async fn create(admin_url: &str) -> Result<Self> {
        use sqlx::Connection;
        let name = format!("qdbench_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let mut url = url::Url::parse(admin_url).context("--database-url is not a URL")?;
        url.set_path(&format!("/{name}"));
        let mut admin = sqlx::PgConnection::connect(admin_url)
            .await
            .context("connecting to --database-url")?;
        // The name is ours: lowercase letters, digits and `_` only.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .with_context(|| format!("CREATE DATABASE {name}"))?;
        admin.close().await?;
        progress(&format!("created database {name}"));
        Ok(Self {
            admin_url: admin_url.to_owned(),
            name,
            url: url.to_string(),
        })
    }

    /// Drop the control database and the tenant databases (`{name}_t_…`) of this run.
    async fn drop_all(&self) -> Result<usize> {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(&self.admin_url).await?;
        let names: Vec<String> = sqlx::query_scalar("SELECT datname FROM pg_database")
            .fetch_all(&mut admin)
            .await?;
        let tenant_prefix = format!("{}_t_", self.name);
        let mut dropped = 0;
        for db in names
            .iter()
            .filter(|d| **d == self.name || d.starts_with(&tenant_prefix))
        {
            if !db
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                continue;
            }
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"
            )))
            .execute(&mut admin)
            .await?;
            dropped += 1;
        }
        admin.close().await?;
        Ok(dropped)
    }
}

// ---- figures and the report ---------------------------------------------------------------

/// Nearest-rank percentile (`q` in 0..=1) of unsorted samples; zero when empty.
fn percentile(samples: &[Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut v = samples.to_vec();
    v.sort_unstable();
    let rank = (q * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn fmt_ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn fmt_secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn fmt_mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

struct Row {
    name: String,
    value: String,
    target: String,
    /// `None` for a figure without a target.
    pass: Option<bool>,
}

impl Row {
    fn check(name: &str, value: String, target: &str, pass: bool) -> Self {
        Self {
            name: name.to_owned(),
            value,
            target: target.to_owned(),
            pass: Some(pass),
        }
    }
    fn miss(name: &str, value: &str, target: &str) -> Self {
        Self::check(name, value.to_owned(), target, false)
    }
    fn info(name: &str, value: String) -> Self {
        Self {
            name: name.to_owned(),
            value,
            target: String::new(),
            pass: None,
        }
    }
}

struct Machine {
    cores: String,
    cpu: String,
    memory: String,
    kernel: String,
    /// The 1-minute load average when the run started.
    load: String,
}

impl Machine {
    fn read() -> Self {
        let cores = Command::new("nproc")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .or_else(|| std::thread::available_parallelism().ok().map(|n| n.to_string()))
            .unwrap_or_else(|| "?".to_owned());
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0))
            .unwrap_or_else(|| "?".to_owned());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "?".to_owned());
        let load = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next().map(str::to_owned))
            .unwrap_or_else(|| "?".to_owned());
        Self {
            cores,
            cpu,
            memory,
            kernel,
            load,
        }
    }
}

fn render_report(cli: &Cli, m: &Machine, rows: &[Row], notes: &[String]) -> String {
    use std::fmt::Write;
    let w_name = rows
        .iter()
        .map(|r| r.name.chars().count())
        .max()
        .unwrap_or(0)
        .max("figure".len());
    let w_value = rows
        .iter()
        .map(|r| r.value.chars().count())
        .max()
        .unwrap_or(0)
        .max("value".len());
    let w_target = rows
        .iter()
        .map(|r| r.target.chars().count())
        .max()
        .unwrap_or(0)
        .max("target".len());
    let pad = |s: &str, w: usize| {
        let n = s.chars().count();
        format!("{s}{}", " ".repeat(w.saturating_sub(n)))
    };
    let mut out = String::new();
    let _ = writeln!(out);
    let _ = writeln!(out, "== Quarterdeck benchmark: backend {} ==", cli.backend.name());
    let _ = writeln!(
        out,
        "machine: {} core(s) (nproc), {}, {} RAM, Linux {}, load average {} at the start",
        m.cores, m.cpu, m.memory, m.kernel, m.load
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{}  {}  {}  result",
        pad("figure", w_name),
        pad("value", w_value),
        pad("target", w_target)
    );
    let _ = writeln!(
        out,
        "{}",
        "-".repeat(w_name + w_value + w_target + 2 * 3 + "result".len())
    );
    for r in rows {
        let result = match r.pass {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => "",
        };
        let line = format!(
            "{}  {}  {}  {result}",
            pad(&r.name, w_name),
            pad(&r.value, w_value),
            pad(&r.target, w_target)
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    let checks: Vec<&Row> = rows.iter().filter(|r| r.pass.is_some()).collect();
    let passed = checks.iter().filter(|r| r.pass == Some(true)).count();
    let _ = writeln!(out);
    let _ = writeln!(out, "{passed} of {} targets met", checks.len());
    for n in notes {
        let _ = writeln!(out, "note: {n}");
    }
    out
}
