//! `quarterdeck`: serve the console, migrate databases, verify the audit chain.

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use quarterdeck::app::{self, App, Deps};
use quarterdeck::{Settings, telemetry};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "quarterdeck",
    version,
    about = "Self-hosted control plane for multi-tenant B2B SaaS"
)]
struct Cli {
    /// The settings file (default: ./quarterdeck.toml if present).
    #[arg(long, env = "QUARTERDECK_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (migrates the databases first).
    Serve,
    /// Migrate the control database and every tenant database not yet at this binary's schema
    /// (resumable: tenants already migrated are skipped), reporting per tenant and per region.
    Migrate {
        /// Tenant databases migrated at once.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
        jobs: u16,
    },
    /// Audit trail commands.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Personal access tokens for the Automation API.
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// Service tokens: the credentials of the product's own backend services (its data plane).
    ServiceTokens {
        #[command(subcommand)]
        command: ServiceTokensCommand,
    },
    /// SQLite: copy the control database, every tenant's and every usage journal (each
    /// consistent, while the server runs) and the secret key into DIR, with manifest.json.
    /// PostgreSQL: use pg_dump (docs/deploy.md).
    Backup {
        /// A new (or empty) directory.
        dir: PathBuf,
    },
    /// Tenant commands.
    Tenants {
        #[command(subcommand)]
        command: TenantsCommand,
    },
}

#[derive(Subcommand)]
enum TenantsCommand {
    /// Write one tenant's data as JSON lines (users, roles, API keys' and provider
    /// credentials' metadata, usage rollups, audit events; no secret, no hash), audited as
    /// TENANT_EXPORTED.
    Export {
        slug: String,
        /// Write to this file (created owner-only) instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ServiceTokensCommand {
    /// Create a service token and print it once (audited as SERVICE_TOKEN_CREATED).
    Create {
        #[arg(long)]
        name: String,
        /// `keys:verify`, `usage:write` or `credentials:read`; repeat for several.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Only this region's tenants.
        #[arg(long, default_value = "")]
        region: String,
        /// Days until it expires (1–3650); never if unset.
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
}

#[derive(Subcommand)]
enum TokensCommand {
    /// Create a token for an active platform user and print it once (audited as PAT_CREATED).
    Create {
        /// The owner: an active platform user's email.
        #[arg(long)]
        email: String,
        #[arg(long)]
        name: String,
        /// `read` or `read_write`.
        #[arg(long, default_value = "read")]
        scope: String,
        /// Days until it expires (1–365).
        #[arg(long, default_value_t = 30)]
        days: u32,
        /// Restrict it to one tenant (its id).
        #[arg(long, default_value = "")]
        tenant_id: String,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the chain from the first event to its head; name the first bad event.
    Verify {
        /// Also prove the trail still holds the event a signed checkpoint file records.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
    },
    /// Sign the head of an intact chain and write the checkpoint (default: a new file in
    /// `{data_dir}/audit-checkpoints/`); ship it off this machine.
    Checkpoint {
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref())?;
    telemetry::init(&settings.log_format);
    for var in Settings::unknown_env_vars() {
        tracing::warn!("ignoring {var}: it is not a Quarterdeck setting (see the README)");
    }
    match cli.command {
        Command::Serve => {
            let app = App::build(settings, Deps::default()).await?;
            tracing::info!(
                listen = %app.local_addr()?,
                base_url = %app.settings.base_url,
                storage = app.core.backend(),
                "Quarterdeck is ready"
            );
            app.run(shutdown_signal()).await
        }
        Command::Migrate { jobs } => {
            let core = app::core(&settings, Deps::default()).await?;
            println!("control database: migrated ({})", core.backend());
            let behind = core.tenants_behind().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            let bar = std::io::IsTerminal::is_terminal(&std::io::stdout()).then(|| {
                let bar = indicatif::ProgressBar::new(behind.len() as u64);
                if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} tenants {msg}") {
                    bar.set_style(style);
                }
                bar
            });
            let outcomes = quarterdeck::migrator::migrate_behind(&core, usize::from(jobs), |(_, r)| {
                if let Some(bar) = &bar {
                    bar.inc(1);
                    if r.is_err() {
                        bar.set_message("(some failed)");
                    }
                }
            })
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            // Per region: (migrated, failed).
            let mut regions: std::collections::BTreeMap<String, (usize, usize)> = std::collections::BTreeMap::new();
            let mut failures = Vec::new();
            for (id, r) in &outcomes {
                let tenant = core
                    .tenant_of(quarterdeck_domain::user::Directory::Tenant(*id))
                    .await
                    .ok()
                    .flatten();
                let region = tenant.as_ref().map_or("?".to_owned(), |t| t.region.as_str().to_owned());
                let slug = tenant.as_ref().map_or("?".to_owned(), |t| t.slug.as_str().to_owned());
                let counts = regions.entry(region.clone()).or_default();
                match r {
                    Ok(n) => {
                        counts.0 += 1;
                        println!("tenant {slug} ({id}, region {region}): ok ({n} migration(s) applied)");
                    }
                    Err(e) => {
                        counts.1 += 1;
                        println!("tenant {slug} ({id}, region {region}): FAILED: {e}");
                        failures.push(format!("{slug} ({id}): {e}"));
                    }
                }
            }
            for (region, (ok, failed)) in &regions {
                println!("region {region}: {ok} migrated, {failed} failed");
            }
            println!(
                "{} tenant database(s) migrated, {} failed; the others were already up to date",
                outcomes.len() - failures.len(),
                failures.len()
            );
            if !failures.is_empty() {
                bail!(
                    "{} tenant database(s) could not be migrated:\n{}",
                    failures.len(),
                    failures.join("\n")
                );
            }
            Ok(())
        }
        Command::Tokens {
            command:
                TokensCommand::Create {
                    email,
                    name,
                    scope,
                    days,
                    tenant_id,
                },
        } => {
            let core = app::core(&settings, Deps::default()).await?;
            let req = quarterdeck_domain::core::NewTokenRequest {
                name,
                scope,
                expires_in_days: days.to_string(),
                tenant_id,
            };
            let (_, secret) = core.create_token_from_cli(&email, req).await.map_err(cli_error)?;
            println!("{}", secret.expose());
            Ok(())
        }
        Command::ServiceTokens {
            command:
                ServiceTokensCommand::Create {
                    name,
                    scopes,
                    region,
                    expires_in_days,
                },
        } => {
            let core = app::core(&settings, Deps::default()).await?;
            let req = quarterdeck_domain::service_token::NewServiceTokenRequest {
                name,
                scopes,
                region,
                expires_in_days: expires_in_days.map(|d| d.to_string()).unwrap_or_default(),
            };
            let (_, secret) = core.create_service_token_from_cli(req).await.map_err(cli_error)?;
            println!("{}", secret.expose());
            Ok(())
        }
        Command::Audit { command } => audit(&settings, command).await,
        Command::Tenants {
            command: TenantsCommand::Export { slug, out },
        } => {
            // The file first: an export that cannot be written is never recorded as made.
            let file = match &out {
                Some(path) => {
                    let mut opts = std::fs::OpenOptions::new();
                    opts.write(true).create_new(true);
                    #[cfg(unix)]
                    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
                    Some(
                        opts.open(path)
                            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?,
                    )
                }
                None => None,
            };
            let core = app::core(&settings, Deps::default()).await?;
            let lines = core.export_tenant_from_cli(&slug).await.map_err(cli_error)?;
            let mut text = String::new();
            for l in &lines {
                text.push_str(&serde_json::to_string(l)?);
                text.push('\n');
            }
            match (file, out) {
                (Some(mut f), Some(path)) => {
                    use std::io::Write;
                    f.write_all(text.as_bytes())?;
                    eprintln!("{} line(s) written to {}", lines.len(), path.display());
                }
                _ => print!("{text}"),
            }
            Ok(())
        }
        Command::Backup { dir } => {
            if settings.database_url.is_some() {
                bail!(
                    "quarterdeck backup copies SQLite data directories only; on PostgreSQL back up with pg_dump \
                     (the control database, every tenant database, each region's cluster): see docs/deploy.md, Backups"
                );
            }
            let manifest =
                quarterdeck::backup::backup(&settings.data_dir, &dir, &quarterdeck_domain::SystemClock).await?;
            println!(
                "backed up {} file(s) ({} tenant database(s)) into {}",
                manifest.files.len(),
                manifest.tenant_ids.len(),
                dir.display()
            );
            Ok(())
        }
    }
}

/// A domain error as a command-line error, naming every bad field.
fn cli_error(e: quarterdeck_domain::Error) -> anyhow::Error {
    let fields: Vec<String> = e
        .fields()
        .iter()
        .map(|f| format!("{}: {}", f.field, f.message))
        .collect();
    anyhow::anyhow!("{e} {}", fields.join("; "))
}

/// `audit verify [--checkpoint FILE]` and `audit checkpoint [--out FILE]`: with the server's
/// existing secret key only (a new key would verify nothing).
async fn audit(settings: &Settings, command: AuditCommand) -> Result<()> {
    let key = settings.existing_secret_key()?;
    let core = app::core_with_key(settings, Deps::default(), key).await?;
    match command {
        AuditCommand::Verify { checkpoint } => {
            let (result, of) = match &checkpoint {
                None => (core.verify_audit_chain().await, None),
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .map_err(|e| anyhow::anyhow!("cannot read the checkpoint {}: {e}", path.display()))?;
                    let cp = quarterdeck_domain::audit_checkpoint::Checkpoint::parse(&text, &core.audit_key())
                        .map_err(|e| anyhow::anyhow!("checkpoint {} REFUSED: {e}", path.display()))?;
                    let of = format!(
                        "; it holds event #{} of the checkpoint taken at {}",
                        cp.get().seq,
                        cp.get().taken_at
                    );
                    (core.verify_audit_checkpoint(&cp).await, Some(of))
                }
            };
            match result.map_err(|e| anyhow::anyhow!("{e}"))? {
                Ok(n) => {
                    println!("audit chain intact: {n} event(s) verified{}", of.unwrap_or_default());
                    Ok(())
                }
                Err(b) => {
                    let id = b.id.map(|id| format!(" ({id})")).unwrap_or_default();
                    println!("audit chain BROKEN at event #{}{id}: {}", b.seq, b.reason);
                    std::process::exit(1);
                }
            }
        }
        AuditCommand::Checkpoint { out } => {
            let dir = quarterdeck::audit::checkpoint_dir(settings);
            let (path, cp) = quarterdeck::audit::write_checkpoint(&core, &dir, out.as_deref()).await?;
            println!(
                "checkpoint of event #{} (hash {}) written to {}",
                cp.get().seq,
                cp.get().hash,
                path.display()
            );
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}
