//! Quarterdeck's domain: tenants, platform users, roles, sessions and the audit trail.
//!
//! This crate holds the rules and the types that carry them ("parse, don't validate":
//! an [`EmailAddress`] or a [`TenantSlug`] that exists is valid), the store traits that the
//! storage crate implements, and [`Core`], the operations the web layer calls. It knows nothing
//! of HTTP or SQL.

pub mod access;
pub mod api_key;
pub mod audit;
pub mod audit_checkpoint;
pub mod budget;
pub mod clock;
pub mod core;
pub mod email;
pub mod error;
pub mod fields;
pub mod ids;
pub mod impersonation;
pub mod mail;
pub mod meters;
pub mod password;
pub mod pat;
pub mod pricing;
pub mod provider;
pub mod rate;
pub mod role;
pub mod service_token;
pub mod session;
pub mod sso;
pub mod store;
pub mod tenant;
pub mod throttle;
pub mod token;
pub mod usage;
pub mod user;
pub mod verifier;
pub mod webhook;

pub use crate::core::{Core, CoreConfig};
pub use access::{Authorized, Principal};
pub use clock::{Clock, ManualClock, SystemClock};
pub use email::EmailAddress;
pub use error::{Error, FieldError, Result};
pub use ids::{EventId, TenantId, UserId};
pub use tenant::{TenantSlug, TenantStatus};
