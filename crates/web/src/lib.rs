//! Quarterdeck's HTTP layer: the URL map, sessions and CSRF, the console pages, and the two
//! renderings of domain errors (an HTML page for the console, JSON for machines).

mod api;
mod assets;
mod auth;
mod edge;
mod error;
mod metrics;
mod pages;
mod router;
mod sso;
pub use sso::SsoProtocols;
mod state;

pub use edge::EdgeLimits;
pub use router::{metrics_router, router};
pub use state::{AppState, SettingRow, WebConfig};
