//! Runs the example data plane.
//!
//! Environment: `QUARTERDECK_URL` (Quarterdeck's base URL), `QUARTERDECK_SERVICE_TOKEN` or
//! `QUARTERDECK_SERVICE_TOKEN_FILE` (a service token with `keys:verify`, `credentials:read` and
//! `usage:write`), `DATA_PLANE_PROVIDER` (default `openai`), `DATA_PLANE_LISTEN` (default
//! `127.0.0.1:8095`), `DATA_PLANE_SOURCE` (the usage events' `source`, default
//! `quarterdeck-example-data-plane`), `DATA_PLANE_TOKEN_METER` (default `llm.tokens`) and
//! `DATA_PLANE_REQUEST_METER` (default `api.requests`; either empty to report none),
//! `QUARTERDECK_WEBHOOK_SECRET` or `QUARTERDECK_WEBHOOK_SECRET_FILE` (the `whsec_…` secret of a
//! Quarterdeck webhook endpoint pointing at `/quarterdeck/webhooks`; two separated by a space
//! during a roll; unset: no webhook route), `RUST_LOG` (default `info`).

use std::env;

use anyhow::{Context, bail};
use quarterdeck_example_data_plane::{Config, UsageConfig, WebhookConfig, serve_until};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;
use url::Url;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();

    let config = config_from_env()?;
    let listen = env::var("DATA_PLANE_LISTEN").unwrap_or_else(|_| "127.0.0.1:8095".to_owned());
    let listener = TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(
        address = %listener.local_addr()?,
        quarterdeck = %config.quarterdeck_url,
        provider = %config.provider,
        "example data plane listening"
    );
    let stop = async {
        // An error here means no signal handler could be installed: then run until killed.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        tracing::info!("stopping");
    };
    serve_until(listener, config, stop).await.context("serving")
}

fn config_from_env() -> anyhow::Result<Config> {
    let url = env::var("QUARTERDECK_URL").context("QUARTERDECK_URL is not set")?;
    let quarterdeck_url = Url::parse(&url).context("QUARTERDECK_URL is not a URL")?;
    let Some(service_token) = secret_from_env("QUARTERDECK_SERVICE_TOKEN")? else {
        bail!("QUARTERDECK_SERVICE_TOKEN or QUARTERDECK_SERVICE_TOKEN_FILE must be set");
    };
    if service_token.is_empty() {
        bail!("the service token is empty");
    }
    let provider = env::var("DATA_PLANE_PROVIDER").unwrap_or_else(|_| "openai".to_owned());
    let defaults = UsageConfig::default();
    let meter = |name: &str, default: Option<String>| match env::var(name) {
        Ok(v) if v.trim().is_empty() => None,
        Ok(v) => Some(v.trim().to_owned()),
        Err(_) => default,
    };
    let usage = UsageConfig {
        source: env::var("DATA_PLANE_SOURCE").unwrap_or(defaults.source.clone()),
        token_meter: meter("DATA_PLANE_TOKEN_METER", defaults.token_meter.clone()),
        request_meter: meter("DATA_PLANE_REQUEST_METER", defaults.request_meter.clone()),
        ..defaults
    };
    if usage.source.trim().is_empty() {
        bail!("DATA_PLANE_SOURCE is empty");
    }
    let webhooks = secret_from_env("QUARTERDECK_WEBHOOK_SECRET")?.map(|secrets| WebhookConfig {
        secrets: secrets.split_whitespace().map(str::to_owned).collect(),
        ..WebhookConfig::new(String::new())
    });
    Ok(Config {
        quarterdeck_url,
        service_token,
        provider,
        usage,
        webhooks,
    })
}

/// `NAME` itself, or the contents of the file `NAME_FILE` (not both), trimmed; `None` if neither.
fn secret_from_env(name: &str) -> anyhow::Result<Option<String>> {
    let file = format!("{name}_FILE");
    match (env::var(name), env::var_os(&file)) {
        (Ok(_), Some(_)) => bail!("set {name} or {file}, not both"),
        (Ok(value), None) => Ok(Some(value.trim().to_owned())),
        (Err(_), Some(path)) => Ok(Some(
            std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {file} {}", path.to_string_lossy()))?
                .trim()
                .to_owned(),
        )),
        (Err(_), None) => Ok(None),
    }
}
