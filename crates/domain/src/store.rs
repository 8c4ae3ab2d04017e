//! The storage ports. `quarterdeck-store` implements them on SQLite and on PostgreSQL.
//!
//! Every method that changes something takes the [`NewEvent`] that records it and writes both
//! in one transaction: there is no way to change state without its audit event.

use crate::audit::{AuditEvent, AuditFilter, NewEvent};
use crate::email::EmailAddress;
use crate::error::Result;
use crate::ids::{EventId, TenantId, UserId};
use crate::session::Session;
use crate::tenant::{StatusCounts, Tenant, TenantFilter, TenantSlug};
use crate::token::TokenHash;
use crate::user::PlatformUser;
use async_trait::async_trait;
use time::OffsetDateTime;

#[async_trait]
pub trait TenantStore: Send + Sync {
    /// Provision the tenant's own database, migrate it, then insert the tenant and its event.
    /// A slug already in use (by a live or a not yet purged tenant) is a validation error on
    /// `slug`; nothing is left behind.
    async fn create_tenant(&self, tenant: &Tenant, event: NewEvent) -> Result<()>;
    async fn tenant(&self, id: TenantId) -> Result<Option<Tenant>>;
    async fn tenant_by_slug(&self, slug: &TenantSlug) -> Result<Option<Tenant>>;
    /// Whether the slug is taken, including by deleted tenants not yet purged.
    async fn slug_taken(&self, slug: &TenantSlug) -> Result<bool>;
    async fn list_tenants(&self, filter: &TenantFilter) -> Result<(Vec<Tenant>, u64)>;
    async fn tenant_counts(&self) -> Result<StatusCounts>;
    /// Write name, region, tier, metadata, status and updated_at.
    async fn update_tenant(&self, tenant: &Tenant, event: NewEvent) -> Result<()>;
    /// Take the tenant out of service now; its database is dropped by [`Self::purge_tenants`].
    async fn delete_tenant(&self, id: TenantId, at: OffsetDateTime, event: NewEvent) -> Result<()>;
    /// Drop the databases of tenants deleted before `deleted_before`; returns their ids.
    async fn purge_tenants(&self, deleted_before: OffsetDateTime) -> Result<Vec<TenantId>>;
    /// Ids of every live tenant (for `migrate`).
    async fn tenant_ids(&self) -> Result<Vec<TenantId>>;
    /// Run the tenant database's migrations; returns how many were applied.
    async fn migrate_tenant(&self, id: TenantId) -> Result<usize>;
}

#[async_trait]
pub trait UserStore: Send + Sync {
    async fn owner_exists(&self) -> Result<bool>;
    /// Insert a platform user with roles and password hash. An email in use is a validation
    /// error on `email`.
    async fn create_platform_user(
        &self,
        user: &PlatformUser,
        password_hash: &str,
        event: NewEvent,
    ) -> Result<()>;
    /// The user and their password hash.
    async fn platform_user_by_email(
        &self,
        email: &EmailAddress,
    ) -> Result<Option<(PlatformUser, String)>>;
    async fn platform_user(&self, id: UserId) -> Result<Option<PlatformUser>>;
    async fn list_platform_users(&self) -> Result<Vec<PlatformUser>>;
    async fn set_password(&self, id: UserId, password_hash: &str, event: NewEvent) -> Result<()>;

    /// Replace any setup token by this one.
    async fn put_setup_token(&self, hash: &TokenHash, expires_at: OffsetDateTime) -> Result<()>;
    /// Whether a live setup token has this hash.
    async fn setup_token_valid(&self, hash: &TokenHash, now: OffsetDateTime) -> Result<bool>;
    /// Spend the setup token and create the first owner, atomically. `Ok(false)` if the token
    /// was spent, expired or unknown (or an owner exists already): nothing is written then.
    async fn create_owner_with_setup_token(
        &self,
        hash: &TokenHash,
        now: OffsetDateTime,
        user: &PlatformUser,
        password_hash: &str,
        event: NewEvent,
    ) -> Result<bool>;
}

#[async_trait]
pub trait SessionStore: Send + Sync {
    async fn create_session(&self, session: &Session) -> Result<()>;
    async fn session(&self, id_hash: &TokenHash) -> Result<Option<Session>>;
    async fn touch_session(&self, id_hash: &TokenHash, at: OffsetDateTime) -> Result<()>;
    async fn delete_session(&self, id_hash: &TokenHash) -> Result<()>;
    /// Delete a user's sessions except `keep`; returns how many ended.
    async fn delete_user_sessions(&self, user: UserId, keep: Option<&TokenHash>) -> Result<u64>;
    /// Delete the sessions that ended before `before` (housekeeping).
    async fn delete_expired_sessions(
        &self,
        idle_before: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<u64>;
}

#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Append an event that goes with no other change (sign-in, sign-out).
    async fn append_event(&self, event: NewEvent) -> Result<()>;
    /// Newest first, filtered, at most `filter.limit`.
    async fn list_events(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>>;
    async fn event(&self, id: EventId) -> Result<Option<AuditEvent>>;
    /// Oldest first, `seq > after_seq`, at most `limit` (for `audit verify`).
    async fn events_after(&self, after_seq: i64, limit: u32) -> Result<Vec<AuditEvent>>;
}

/// Everything the core needs from storage.
pub trait Store: TenantStore + UserStore + SessionStore + AuditStore {
    /// "sqlite" or "postgres", for the settings page and logs.
    fn backend(&self) -> &'static str;
}
