//! Logs: human-readable text by default, JSON with `log_format = "json"`. `QUARTERDECK_LOG`
//! (or `RUST_LOG`) sets the filter.
//!
//! Every line a request causes is in its span (method, path, `request_id`); each request ends
//! with one `request completed` line carrying `request_id`, `route` (the matched template),
//! `status`, `duration_ms` and, on a tenant's host, `tenant` (its slug). In JSON those are
//! top-level keys of the line (the event's fields flattened), with the span under `span`.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

pub fn init(format: &str) {
    let filter = std::env::var("QUARTERDECK_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info,sqlx=warn".to_owned());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_target(false);
    let _ = if format == "json" {
        builder.json().flatten_event(true).with_current_span(true).try_init()
    } else {
        builder.try_init()
    };
}

/// The JSON format of [`init`], writing to `writer` at every level (for the tests' capture).
pub fn json_dispatch<W>(writer: W) -> tracing::Dispatch
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing::Dispatch::new(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_target(false)
            .with_writer(writer)
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .finish(),
    )
}
