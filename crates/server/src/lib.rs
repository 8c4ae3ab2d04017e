//! The Quarterdeck server: settings, start-up and the background jobs. `main.rs` is the CLI;
//! the integration tests build the same [`App`] in-process.

pub mod app;
pub mod audit;
pub mod backup;
pub mod data_dir;
pub mod migrator;
pub mod reconcile;
pub mod serve;
pub mod settings;
pub mod telemetry;
pub mod webhooks;

pub use app::App;
pub use settings::Settings;
