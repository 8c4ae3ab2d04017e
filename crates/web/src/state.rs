//! What every handler can reach.

use quarterdeck_domain::Core;
use std::net::IpAddr;
use std::sync::Arc;
use url::Url;

/// One row of the effective settings shown on the Settings page (secrets already masked).
#[derive(Clone, Debug)]
pub struct SettingRow {
    pub key: String,
    pub env: String,
    pub value: String,
}

#[derive(Clone, Debug)]
pub struct WebConfig {
    /// The public URL of the base host. Links and origin checks use it, never request headers.
    pub base_url: Url,
    /// Peers whose `X-Forwarded-For` is believed (reverse proxies). Empty: believe nobody.
    pub trusted_proxies: Vec<IpAddr>,
    pub settings: Vec<SettingRow>,
    pub version: &'static str,
    /// The bearer token `GET /metrics` requires; `None`: `/metrics` is not served.
    pub metrics_token: Option<String>,
    /// Request timeout, concurrency limit, body limit (`edge.rs`).
    pub edge: crate::edge::EdgeLimits,
}

impl WebConfig {
    /// `scheme://host[:port]` of the base URL, as browsers send it in `Origin`.
    pub fn origin(&self) -> String {
        self.base_url.origin().ascii_serialization()
    }

    /// `host[:port]` of the base URL, as browsers send it in `Host`.
    pub fn host(&self) -> String {
        let host = self.base_url.host_str().unwrap_or("localhost");
        match self.base_url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        }
    }

    pub fn secure(&self) -> bool {
        self.base_url.scheme() == "https"
    }

    /// Cookie names get the `__Host-` prefix on https (which requires Secure, Path=/, no Domain).
    pub fn cookie_name(&self, base: &str) -> String {
        if self.secure() {
            format!("__Host-{base}")
        } else {
            base.to_owned()
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub core: Arc<Core>,
    pub config: Arc<WebConfig>,
    /// The single sign-on protocols (OIDC relying party, SAML service provider).
    pub sso: Arc<crate::sso::SsoProtocols>,
    /// Renders what the core's Prometheus recorder holds (`GET /metrics`).
    pub prometheus: metrics_exporter_prometheus::PrometheusHandle,
}
