//! The `webhooks` phase: delivery throughput to a fast receiver.
//!
//! Seeded in process (`Core`): tenants, one webhook endpoint subscribed to everything but
//! *disabled*, then `api_key.created` events (a key created per event, spread over the
//! tenants): their deliveries wait, pending. Then the server starts, the endpoint is enabled,
//! and the time until the receiver (a loopback HTTP server in this process answering 204) has
//! every event once is the delivery throughput: signing, the claim's leases, one POST each,
//! the attempt's record, with a tenant's events in order.

use super::verify::{RemoveOnDrop, close, domain, settings_of};
use super::{Backend, OWNER_EMAIL, Row, ServerPlan, fmt_secs, progress};
use anyhow::{Context, Result, anyhow};
use quarterdeck::app::{self, Deps};
use quarterdeck_domain::access::{ManageApiKeys, ManageTenants, ManageWebhooks};
use quarterdeck_domain::api_key::NewApiKeyRequest;
use quarterdeck_domain::core::NewTokenRequest;
use quarterdeck_domain::tenant::{NewTenant, PriorityTier, Region, TenantName};
use quarterdeck_domain::webhook::EndpointDraft;
use quarterdeck_domain::{TenantId, TenantSlug};
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct WebhookArgs {
    /// webhooks: events delivered (one API key created per event).
    #[arg(long, default_value_t = 5_000)]
    pub webhook_events: usize,
    /// webhooks: tenants the events are spread over (a tenant's events go in order).
    #[arg(long, default_value_t = 100)]
    pub webhook_tenants: usize,
    /// webhooks: seconds allowed for the delivery.
    #[arg(long, default_value_t = 600.0)]
    pub webhook_timeout: f64,
}

#[derive(Default)]
struct Received {
    ids: HashSet<String>,
    requests: u64,
}

/// A receiver as fast as this machine allows: counts `webhook-id`s, answers 204.
async fn receiver() -> Result<(std::net::SocketAddr, Arc<Mutex<Received>>)> {
    let got: Arc<Mutex<Received>> = Arc::default();
    let state = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap| {
            let state = state.clone();
            async move {
                let id = headers
                    .get("webhook-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let mut s = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                s.requests += 1;
                s.ids.insert(id);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, got))
}

pub async fn run(
    args: &WebhookArgs,
    backend: Backend,
    server_bin: &Path,
    database_url: Option<&str>,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let mut plan = ServerPlan::new(server_bin, database_url)?;
    plan.env
        .push(("QUARTERDECK_OUTBOUND_ALLOW_PRIVATE", "127.0.0.0/8".into()));
    let mut dir = RemoveOnDrop(Some(plan.dir.clone()));
    let mut settings = settings_of(&plan, database_url)?;
    settings.outbound_allow_private = vec!["127.0.0.0/8".to_owned()];
    quarterdeck::data_dir::prepare(&settings.data_dir, database_url.is_none())?;
    let (addr, got) = receiver().await?;
    let b = backend.name();

    let t0 = Instant::now();
    let core = app::core(&settings, Deps::default()).await?;
    core.bootstrap_owner(OWNER_EMAIL, super::OWNER_PASSWORD)
        .await
        .map_err(domain)?;
    let (_, pat) = core
        .create_token_from_cli(
            OWNER_EMAIL,
            NewTokenRequest {
                name: "bench webhooks".to_owned(),
                scope: "read_write".to_owned(),
                expires_in_days: "1".to_owned(),
                tenant_id: String::new(),
            },
        )
        .await
        .map_err(domain)?;
    let principal = core.api_caller(pat.expose()).await.map_err(domain)?.principal;
    let manage = principal.require::<ManageTenants>().map_err(domain)?;
    let hooks = principal.require::<ManageWebhooks>().map_err(domain)?;
    let region = settings.regions.first().cloned().context("no region in the settings")?;
    let n_tenants = args.webhook_tenants.max(1);
    progress(&format!("webhooks: seeding {n_tenants} tenants"));
    let mut tenants: Vec<TenantId> = Vec::with_capacity(n_tenants);
    for i in 0..n_tenants {
        let new = NewTenant {
            slug: TenantSlug::parse(&format!("hooks-{i:05}")).map_err(domain)?,
            name: TenantName::parse(&format!("Hooks tenant {i}")).map_err(domain)?,
            region: Region::parse(&region, &settings.regions).map_err(domain)?,
            tier: PriorityTier::Standard,
            metadata: Default::default(),
        };
        tenants.push(core.create_tenant(&manage, new).await.map_err(domain)?.id);
    }
    let draft = EndpointDraft::parse(
        &format!("http://{addr}/hook"),
        "bench receiver",
        &["*"],
        None,
        false,
        &settings.regions,
    )
    .map_err(domain)?;
    let endpoint = core
        .create_webhook_endpoint(&hooks, draft)
        .await
        .map_err(domain)?
        .endpoint;
    let n = args.webhook_events.max(1);
    progress(&format!(
        "webhooks: publishing {n} api_key.created events over {n_tenants} tenants (endpoint disabled)"
    ));
    let t_events = Instant::now();
    for i in 0..n {
        let tenant = tenants[i % tenants.len()];
        let proof = principal.require_for_tenant::<ManageApiKeys>(tenant).map_err(domain)?;
        let req = NewApiKeyRequest {
            name: format!("bench key {i}"),
            scopes: core.config.api_keys.scopes.iter().take(1).cloned().collect(),
            expires_in_days: String::new(),
            requests_per_minute: String::new(),
        };
        core.create_api_key(&proof, req).await.map_err(domain)?;
    }
    let events_took = t_events.elapsed();
    rows.push(Row::info(
        &format!("webhooks ({b}): seeded {n_tenants} tenants, {n} events"),
        format!(
            "{} (events {:.0} /s, each an API key created)",
            fmt_secs(t0.elapsed()),
            n as f64 / events_took.as_secs_f64()
        ),
    ));

    progress("starting the server; then enabling the endpoint");
    let mut server = plan.start()?;
    dir.0 = None;
    server.wait_ready(Duration::from_secs(120)).await?;
    let t_deliver = Instant::now();
    core.set_webhook_endpoint_enabled(&hooks, endpoint.id, true)
        .await
        .map_err(domain)?;
    let limit = Duration::from_secs_f64(args.webhook_timeout.max(1.0));
    let mut done = None;
    while t_deliver.elapsed() < limit {
        let unique = got.lock().map_err(|_| anyhow!("receiver poisoned"))?.ids.len();
        if unique >= n {
            done = Some(t_deliver.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Anything sent twice would arrive now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (unique, requests) = {
        let g = got.lock().map_err(|_| anyhow!("receiver poisoned"))?;
        (g.ids.len(), g.requests)
    };
    let rss = server.status_kib("VmRSS")?;
    server.stop();
    close(core).await;
    match done {
        Some(took) => rows.push(Row::info(
            &format!("webhooks ({b}): {n} events delivered to a loopback receiver"),
            format!("{} → {:.0} events/s", fmt_secs(took), n as f64 / took.as_secs_f64()),
        )),
        None => rows.push(Row::check(
            &format!("webhooks ({b}): {n} events delivered"),
            format!("{unique} within {}", fmt_secs(limit)),
            "all",
            false,
        )),
    }
    rows.push(Row::check(
        "  each event received once",
        format!("{unique} unique of {requests} requests"),
        "= n, no repeat",
        unique == n && requests == n as u64,
    ));
    rows.push(Row::info("  server RSS after", format!("{} MiB", rss / 1024)));
    notes.push(format!(
        "webhooks: {n} api_key.created events over {n_tenants} tenants queued for a disabled endpoint, then \
         delivered after enabling it; the receiver is in the bench process (axum, 204); one server node; \
         64 attempts in flight per node, 16 per endpoint"
    ));
    Ok(())
}
