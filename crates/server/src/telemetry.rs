//! Logs: human-readable text by default, JSON with `log_format = "json"`. `QUARTERDECK_LOG`
//! (or `RUST_LOG`) sets the filter.

use tracing_subscriber::EnvFilter;

pub fn init(format: &str) {
    let filter = std::env::var("QUARTERDECK_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info,sqlx=warn".to_owned());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_target(false);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
