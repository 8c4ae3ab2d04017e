//! Quarterdeck's integration tests: one binary, the real server on port 0, a fresh database per
//! test, on SQLite and on PostgreSQL (`both!` writes each test once and runs it on both).
//!
//! PostgreSQL tests need `QUARTERDECK_TEST_PG_URL` (scripts/test starts a throwaway cluster and
//! sets it). Without it they fail, saying so, unless `QUARTERDECK_TEST_SKIP_PG=1`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests unwrap: a failure is the test failing"
)]

mod helpers;
#[path = "../../../mail/tests/mail/maildev.rs"]
#[allow(dead_code, reason = "shared with the mail crate's tests, which use all of it")]
mod maildev;
#[path = "../../../sso/tests/peer/mock_op.rs"]
mod mock_op;
#[path = "../../../sso/tests/peer/oidc_provider.rs"]
mod oidc_provider;
#[cfg(feature = "saml")]
#[path = "../../../saml/tests/peer/saml_idp.rs"]
mod saml_idp;

mod api;
mod api_keys_api;
mod audit;
mod auth;
mod backup;
mod billing;
mod browser;
mod browser_sso;
mod crash;
mod crash_usage;
mod credentials;
mod data_plane;
mod data_plane_nodes;
mod data_plane_security;
mod delivery_shutdown;
mod edge;
mod example_data_plane;
mod guessing;
mod impersonation;
mod invitations;
mod limits_abuse;
mod nodes;
mod observability;
mod openapi;
mod outbound;
mod outbox_lease;
mod pg_budget;
mod portal;
mod portal_data_plane;
mod portal_usage;
mod reconcile;
mod regions;
mod settings;
mod setup;
mod sso;
#[cfg(feature = "saml")]
mod sso_saml;
mod storage;
mod tenant_export;
mod tenants;
mod upgrades;
mod usage;
mod usage_api;
mod usage_backpressure;
mod usage_nodes;
mod webhook_claims;
mod webhook_receiver;
mod webhooks;
mod webhooks_api;
mod webhooks_pages;
