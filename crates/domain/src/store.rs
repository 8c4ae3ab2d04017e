//! The storage ports. `quarterdeck-store` implements them on SQLite and on PostgreSQL.
//!
//! Every method that changes something takes the [`NewEvent`] that records it and writes both
//! in one transaction: there is no way to change state without its audit event.

use crate::api_key::{ApiKey, KeyRecord};
use crate::audit::{AuditEvent, AuditFilter, NewEvent};
use crate::email::EmailAddress;
use crate::error::Result;
use crate::ids::{EventId, TenantId, UserId};
use crate::impersonation::{Impersonation, ImpersonationEnd};
use crate::mail::Email;
use crate::pat::PersonalAccessToken;
use crate::provider::{CredentialReads, ProviderCredential};
use crate::service_token::ServiceToken;
use crate::session::Session;
use crate::sso::{ExternalLogin, IdentityProvider, SsoAttempt};
use crate::tenant::{StatusCounts, Tenant, TenantFilter, TenantSlug};
use crate::token::TokenHash;
use crate::user::{Credential, Directory, InvitationState, NewInvitation, StoredCredential, User, UserStatus};
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
    /// Write name, region, tier, metadata, status and updated_at — only if the row still has
    /// the status and updated_at of `read` (what the change was computed from): otherwise a
    /// `tenant_changed` conflict, so an edit never writes back a status a concurrent change
    /// replaced (a suspension undone by a metadata edit that read the tenant before it).
    async fn update_tenant(&self, tenant: &Tenant, read: &Tenant, event: NewEvent) -> Result<()>;
    /// Take the tenant out of service now; its database is dropped by [`Self::purge_tenants`].
    async fn delete_tenant(&self, id: TenantId, at: OffsetDateTime, event: NewEvent) -> Result<()>;
    /// Drop the databases of tenants deleted before `deleted_before`; returns their ids.
    async fn purge_tenants(&self, deleted_before: OffsetDateTime) -> Result<Vec<TenantId>>;
    /// Ids of every live tenant (for `migrate`).
    async fn tenant_ids(&self) -> Result<Vec<TenantId>>;
    /// Run the tenant database's migrations and record its schema version; returns how many
    /// were applied.
    async fn migrate_tenant(&self, id: TenantId) -> Result<usize>;
    /// Live tenants whose recorded schema version is below this binary's (not served until
    /// migrated), oldest first.
    async fn tenants_behind(&self) -> Result<Vec<TenantId>>;
}

#[async_trait]
pub trait UserStore: Send + Sync {
    async fn owner_exists(&self) -> Result<bool>;
    /// Insert a user (in its directory) with its roles, its password hash or its invitation
    /// (whose email goes to the outbox), and its event. An email in use in that directory is a
    /// validation error on `email`; nothing is left behind.
    async fn create_user(
        &self,
        user: &User,
        credential: Option<&Credential>,
        invitation: Option<&NewInvitation>,
        event: NewEvent,
    ) -> Result<()>;
    /// The user and their stored password (`None` until they set one).
    async fn user_by_email(
        &self,
        dir: Directory,
        email: &EmailAddress,
    ) -> Result<Option<(User, Option<StoredCredential>)>>;
    async fn user(&self, dir: Directory, id: UserId) -> Result<Option<User>>;
    async fn list_users(&self, dir: Directory) -> Result<Vec<User>>;
    /// The user's invitation and the delivery state of its latest email.
    async fn invitation_state(&self, dir: Directory, user: UserId) -> Result<Option<InvitationState>>;
    /// Replace the password (a reset also ends the user's sessions, in the same step).
    async fn set_password(
        &self,
        dir: Directory,
        id: UserId,
        credential: &Credential,
        end_sessions: bool,
        event: NewEvent,
    ) -> Result<()>;
    /// Spend a one-time password (after a successful verification of `hash`): a conditional
    /// update — unspent, unexpired at `at`, still this hash. `false` when another sign-in
    /// spent it first (or it was replaced or expired meanwhile): the caller fails.
    async fn spend_otp(&self, dir: Directory, id: UserId, hash: &str, at: OffsetDateTime) -> Result<bool>;
    /// Replace the user's roles; one event per role added or removed. `ending`: the live
    /// impersonations of a platform user that end with the change (each with its
    /// `IMPERSONATION_ENDED`, written only if it was still live), in the same transaction.
    async fn set_roles(
        &self,
        dir: Directory,
        id: UserId,
        roles: &[String],
        events: Vec<NewEvent>,
        ending: &[ImpersonationEnd],
    ) -> Result<()>;
    /// Change the status; leaving ACTIVE ends the user's sessions in the same step, and the
    /// impersonations in `ending` (as for [`UserStore::set_roles`]).
    async fn set_user_status(
        &self,
        dir: Directory,
        id: UserId,
        status: UserStatus,
        event: NewEvent,
        ending: &[ImpersonationEnd],
    ) -> Result<()>;
    /// Delete the user, their roles, invitation and sessions, and end the impersonations in
    /// `ending` (as for [`UserStore::set_roles`]).
    async fn delete_user(&self, dir: Directory, id: UserId, event: NewEvent, ending: &[ImpersonationEnd])
    -> Result<()>;
    /// Replace the invitation (a new token: the old one dies; pending emails are cancelled),
    /// or with `None` revoke it.
    async fn replace_invitation(
        &self,
        dir: Directory,
        user: UserId,
        invitation: Option<&NewInvitation>,
        at: OffsetDateTime,
        event: NewEvent,
    ) -> Result<()>;
    /// The INVITED user a live invitation token belongs to.
    async fn invited_user(&self, dir: Directory, token: &TokenHash, now: OffsetDateTime) -> Result<Option<User>>;
    /// Spend the token and activate its user with this password, atomically: of any number of
    /// concurrent calls with one token, exactly one gets `Some`.
    async fn accept_invitation(
        &self,
        dir: Directory,
        token: &TokenHash,
        now: OffsetDateTime,
        password_hash: &str,
        event: NewEvent,
    ) -> Result<Option<User>>;

    /// Replace any setup token by this one.
    async fn put_setup_token(&self, hash: &TokenHash, expires_at: OffsetDateTime) -> Result<()>;
    /// Whether a live setup token has this hash.
    async fn setup_token_valid(&self, hash: &TokenHash, now: OffsetDateTime) -> Result<bool>;
    /// Spend the setup token and create the first owner, atomically. `Ok(false)` if the token
    /// was spent, expired or unknown: nothing is written then.
    async fn create_owner_with_setup_token(
        &self,
        hash: &TokenHash,
        now: OffsetDateTime,
        user: &User,
        password_hash: &str,
        event: NewEvent,
    ) -> Result<bool>;
}

#[async_trait]
pub trait ImpersonationStore: Send + Sync {
    /// Record the start (with its event) and the single-use handoff token's hash.
    async fn start_impersonation(
        &self,
        imp: &Impersonation,
        handoff: &TokenHash,
        handoff_expires_at: OffsetDateTime,
        event: NewEvent,
    ) -> Result<()>;
    /// Spend a handoff token: the live impersonation it opens, once.
    async fn take_handoff(&self, handoff: &TokenHash, now: OffsetDateTime) -> Result<Option<Impersonation>>;
    async fn impersonation(&self, id: uuid::Uuid) -> Result<Option<Impersonation>>;
    /// The live (not ended) impersonations started by a platform user.
    async fn live_impersonations_of(&self, impersonator: UserId) -> Result<Vec<Impersonation>>;
    /// Impersonations past their expiry that were never ended (nobody used them after it),
    /// oldest first, at most `limit`.
    async fn expired_impersonations(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<Impersonation>>;
    /// End it (once: `false` if it had ended already) and delete its sessions, with the event.
    async fn end_impersonation(
        &self,
        id: uuid::Uuid,
        at: OffsetDateTime,
        reason: &str,
        event: NewEvent,
    ) -> Result<bool>;
}

/// An email waiting in the outbox.
#[derive(Clone, Debug)]
pub struct OutboxMessage {
    pub id: uuid::Uuid,
    pub email: Email,
    pub attempts: i64,
}

#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Pending messages whose next attempt is due, oldest first, leased or not (to look at:
    /// delivery claims them with [`OutboxStore::claim_due_messages`]).
    async fn due_messages(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<OutboxMessage>>;
    /// Claim up to `limit` due messages that no live lease holds, oldest first, for the lease
    /// `lease` until `lease_until`, atomically: a message is claimed by one worker only, even
    /// across processes (SQLite: one conditional `UPDATE … RETURNING`; PostgreSQL: `FOR UPDATE
    /// SKIP LOCKED`). An expired lease (a worker that died) frees the message again.
    async fn claim_due_messages(
        &self,
        now: OffsetDateTime,
        lease: uuid::Uuid,
        lease_until: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<OutboxMessage>>;
    /// Delivered: mark it, blank the bodies (the link must not outlive its delivery) and end
    /// the lease. Only the lease's holder can; returns false if the lease was lost.
    async fn mark_sent(&self, id: uuid::Uuid, lease: uuid::Uuid, at: OffsetDateTime) -> Result<bool>;
    /// The node is stopping: the messages still pending under `lease` (claimed, not yet
    /// attempted), but `except`, are given back, due again at once for any worker. Returns
    /// how many.
    async fn release_message_lease(&self, lease: uuid::Uuid, except: Option<uuid::Uuid>) -> Result<u64>;
    /// Failed: release the lease and retry at `retry_at` (the back-off), or with `None` give up
    /// (status `failed`). Only the lease's holder can; returns false if the lease was lost.
    async fn mark_attempt_failed(
        &self,
        id: uuid::Uuid,
        lease: uuid::Uuid,
        retry_at: Option<OffsetDateTime>,
        error: &str,
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
    /// Delete every session on a tenant's host (the tenant was suspended or deleted).
    async fn delete_tenant_sessions(&self, tenant: TenantId) -> Result<u64>;
    /// Delete the sessions that ended before `before` (housekeeping).
    async fn delete_expired_sessions(&self, idle_before: OffsetDateTime, now: OffsetDateTime) -> Result<u64>;
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
    /// The chain's head row (the last seq and hash, where keying starts, its MAC).
    async fn audit_head(&self) -> Result<crate::audit::AuditHead>;
}

#[async_trait]
pub trait TokenStore: Send + Sync {
    async fn create_pat(&self, pat: &PersonalAccessToken, hash: &TokenHash, event: NewEvent) -> Result<()>;
    async fn pats_of(&self, owner: UserId) -> Result<Vec<PersonalAccessToken>>;
    async fn pat_by_hash(&self, hash: &TokenHash) -> Result<Option<PersonalAccessToken>>;
    /// Revoke one of `owner`'s tokens; `false` if there is no such live token.
    async fn revoke_pat(&self, id: uuid::Uuid, owner: UserId, at: OffsetDateTime, event: NewEvent) -> Result<bool>;
    async fn touch_pat(&self, id: uuid::Uuid, at: OffsetDateTime) -> Result<()>;
}

#[async_trait]
pub trait SsoStore: Send + Sync {
    /// Create or replace the provider of its directory, with its event.
    async fn put_identity_provider(&self, provider: &IdentityProvider, event: NewEvent) -> Result<()>;
    async fn identity_provider(&self, dir: Directory) -> Result<Option<IdentityProvider>>;
    /// Remove the directory's provider (linked identities stay, unused); `false` if none.
    async fn delete_identity_provider(&self, dir: Directory, event: NewEvent) -> Result<bool>;
    /// Record an attempt, unless `max_pending` live attempts exist already (`false`: nothing
    /// written).
    async fn put_sso_attempt(&self, attempt: &SsoAttempt, max_pending: u64) -> Result<bool>;
    /// Spend an attempt: the live one with this state, once.
    async fn take_sso_attempt(&self, state: &TokenHash, now: OffsetDateTime) -> Result<Option<SsoAttempt>>;
    /// Record a SAML assertion id as used; `false` if it was used before (a replay).
    async fn record_assertion_id(&self, provider: uuid::Uuid, id: &str, expires_at: OffsetDateTime) -> Result<bool>;
    /// The user of `dir` an external identity is linked to; with `provider`, only an identity
    /// that provider linked.
    async fn user_by_identity(
        &self,
        dir: Directory,
        issuer: &str,
        subject: &str,
        provider: Option<uuid::Uuid>,
    ) -> Result<Option<User>>;
    /// Link an external identity to an existing user; an INVITED user becomes ACTIVE (their
    /// invitation spent) in the same step.
    async fn link_identity(
        &self,
        dir: Directory,
        user: UserId,
        provider: uuid::Uuid,
        login: &ExternalLogin,
        at: OffsetDateTime,
        event: NewEvent,
    ) -> Result<()>;
    /// Create an ACTIVE user (no password) with its roles and its external identity.
    async fn provision_user(
        &self,
        user: &User,
        provider: uuid::Uuid,
        login: &ExternalLogin,
        event: NewEvent,
    ) -> Result<()>;
    async fn touch_identity(&self, dir: Directory, issuer: &str, subject: &str, at: OffsetDateTime) -> Result<()>;
    /// Forget expired attempts and assertion ids (housekeeping).
    async fn delete_expired_sso(&self, now: OffsetDateTime) -> Result<u64>;
}

/// One entry of the data-plane change feed: something verification caches must forget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataPlaneChange {
    pub seq: i64,
    pub kind: ChangeKind,
    pub subject: uuid::Uuid,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// An API key was revoked or rolled (subject: the key's id).
    ApiKey,
    /// A tenant's status, region or tier changed, or it was deleted (subject: the tenant's id).
    Tenant,
    /// A service token was revoked (subject: its id).
    ServiceToken,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ApiKey => "api_key",
            Self::Tenant => "tenant",
            Self::ServiceToken => "service_token",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Self::ApiKey, Self::Tenant, Self::ServiceToken]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// A roll of an API key's secret.
#[derive(Clone, Debug)]
pub struct KeyRoll {
    pub new_hash: TokenHash,
    pub last_four: String,
    /// When the secrets it replaces stop working (the grace end; now for none).
    pub old_until: OffsetDateTime,
    pub at: OffsetDateTime,
}

/// Service tokens, tenant API keys, provider credentials, and what the data plane needs of
/// them. Revocations, rolls and tenant changes append to the change feed in their own
/// transaction (tenant changes in [`TenantStore::update_tenant`] and
/// [`TenantStore::delete_tenant`]).
#[async_trait]
pub trait DataPlaneStore: Send + Sync {
    async fn create_service_token(&self, token: &ServiceToken, hash: &TokenHash, event: NewEvent) -> Result<()>;
    /// Newest first.
    async fn service_tokens(&self) -> Result<Vec<ServiceToken>>;
    async fn service_token_by_hash(&self, hash: &TokenHash) -> Result<Option<ServiceToken>>;
    /// Revoke a live token (with a change-feed entry); `false` if there is none.
    async fn revoke_service_token(&self, id: uuid::Uuid, at: OffsetDateTime, event: NewEvent) -> Result<bool>;
    /// Record last use (coalesced by the caller).
    async fn touch_service_tokens(&self, ids: &[uuid::Uuid], at: OffsetDateTime) -> Result<()>;

    /// Insert the key and its first secret, after re-checking under the audit lock that the
    /// tenant is writable.
    async fn create_api_key(&self, key: &ApiKey, hash: &TokenHash, event: NewEvent) -> Result<()>;
    /// A tenant's keys, newest first.
    async fn api_keys_of(&self, tenant: TenantId) -> Result<Vec<ApiKey>>;
    async fn api_key(&self, tenant: TenantId, id: uuid::Uuid) -> Result<Option<ApiKey>>;
    /// How many live (not revoked) keys the tenant has.
    async fn api_key_count(&self, tenant: TenantId) -> Result<u64>;
    /// A new secret for a live key: the current secrets stop at `old_until` (now for no
    /// grace), the new one is added, `last_four` and `rolled_at` change, and the change feed
    /// records it, in one transaction under the writable check. `false` if no live key.
    async fn roll_api_key(&self, tenant: TenantId, id: uuid::Uuid, roll: &KeyRoll, event: NewEvent) -> Result<bool>;
    /// Revoke a live key (with a change-feed entry); `false` if there is none. Allowed in any
    /// tenant status (revoking only takes away).
    async fn revoke_api_key(
        &self,
        tenant: TenantId,
        id: uuid::Uuid,
        at: OffsetDateTime,
        event: NewEvent,
    ) -> Result<bool>;
    /// The key, its tenant and this secret's grace end, by the secret's hash: one query.
    async fn key_for_verification(&self, hash: &TokenHash) -> Result<Option<KeyRecord>>;
    /// Record last use (coalesced by the caller: one statement per flush, not per request).
    async fn touch_api_keys(&self, ids: &[uuid::Uuid], at: OffsetDateTime) -> Result<()>;
    /// Add each key's requests counted here since the last flush to its minute (`window`,
    /// unix minutes), and return every key's totals over all nodes: (this minute, the one
    /// before). Old windows are dropped on the way.
    async fn add_key_hits(&self, window: i64, hits: &[(uuid::Uuid, u64)]) -> Result<Vec<(uuid::Uuid, u64, u64)>>;

    /// The change feed after `after`, oldest first.
    async fn data_plane_changes(&self, after: i64, limit: u32) -> Result<Vec<DataPlaneChange>>;
    /// The newest seq of the feed (0 when empty).
    async fn data_plane_head(&self) -> Result<i64>;

    /// Insert or replace the tenant's credential for its provider, under the writable check.
    async fn put_provider_credential(&self, credential: &ProviderCredential, event: NewEvent) -> Result<()>;
    async fn provider_credentials(&self, tenant: TenantId) -> Result<Vec<ProviderCredential>>;
    async fn provider_credential(&self, tenant: TenantId, provider: &str) -> Result<Option<ProviderCredential>>;
    /// `false` if there was none.
    async fn delete_provider_credential(&self, tenant: TenantId, provider: &str, event: NewEvent) -> Result<bool>;
    /// Count one resolution in its (token, credential, minute) tally.
    async fn count_credential_read(&self, read: &CredentialReads) -> Result<()>;
    /// Tallies of minutes before `window` (unix minutes), oldest first.
    async fn closed_credential_reads(&self, window: i64, limit: u32) -> Result<Vec<CredentialReads>>;
    /// Write the tally's event and delete the tally in one transaction, only if it still
    /// holds `tally.reads` (another node may have written it first): `false` then.
    async fn record_credential_reads(&self, tally: &CredentialReads, event: NewEvent) -> Result<bool>;
}

/// What one sweep did in one tenant's database.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Events inserted (not seen before).
    pub inserted: u64,
    /// For each month the entries touched, the tenant's month totals (after the sweep) of each
    /// meter and dimension values the entries touched.
    pub months: Vec<(crate::usage::Month, Vec<crate::usage::MeterTotal>)>,
}

/// Usage: the per-region ingestion journal, the tenant databases' raw events and rollups,
/// the control database's monthly summary, and budgets.
#[async_trait]
pub trait UsageStore: Send + Sync {
    /// How many tenants a sweep should write at once (each holds one tenant connection).
    fn sweep_parallelism(&self) -> usize;
    /// What each id stands for, for ingestion: a live tenant, or an API key of one (its
    /// tenant's region and status). Unknown ids and deleted tenants are absent. One query.
    async fn usage_subjects(&self, ids: &[uuid::Uuid]) -> Result<Vec<(uuid::Uuid, crate::usage::UsageSubject)>>;
    /// Append accepted events to the region's journal, in one transaction.
    async fn journal_append(&self, region: &str, entries: &[crate::usage::JournalEntry]) -> Result<()>;
    /// The region's oldest journal rows after `after`, about `limit` entries (a row holding
    /// many is taken whole), and where the next take goes on from.
    async fn journal_take(
        &self,
        region: &str,
        after: crate::usage::JournalCursor,
        limit: u32,
    ) -> Result<crate::usage::JournalTake>;
    /// After a sweep, in one transaction: delete the rows in `done`, and replace the entries of
    /// each row in `kept` with the ones given (the entries of tenants held back).
    async fn journal_settle(
        &self,
        region: &str,
        done: &[crate::usage::JournalKey],
        kept: &[(crate::usage::JournalKey, Vec<crate::usage::JournalEntry>)],
    ) -> Result<()>;
    /// How many entries wait in the region's journal, and when the oldest was received.
    async fn journal_backlog(&self, region: &str) -> Result<(u64, Option<OffsetDateTime>)>;
    /// Take or renew the region's sweep lease for `holder` until `until`; `false` while another
    /// holder's lease is live.
    async fn claim_sweep(
        &self,
        region: &str,
        holder: uuid::Uuid,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<bool>;
    /// Extend the region's sweep lease to `until` if `holder` still holds it (never taking
    /// it from another holder); `false` if it does not.
    async fn renew_sweep(&self, region: &str, holder: uuid::Uuid, until: OffsetDateTime) -> Result<bool>;
    /// Give the region's sweep lease back if `holder` holds it (another node may claim it at
    /// once); `true` if it did.
    async fn release_sweep(&self, region: &str, holder: uuid::Uuid) -> Result<bool>;
    /// Everything the region received before `through` is in the tenants' databases.
    async fn set_swept_through(&self, region: &str, holder: uuid::Uuid, through: OffsetDateTime) -> Result<()>;
    async fn swept_through(&self, region: &str) -> Result<Option<OffsetDateTime>>;

    /// In the tenant's database, in one transaction: insert the entries not seen before (by
    /// source and id) and fold those into the hourly rollups; then read the tenant's totals
    /// for every month the entries touch.
    async fn apply_usage(
        &self,
        tenant: TenantId,
        entries: &[crate::usage::JournalEntry],
        meters: &crate::usage::MeterCatalog,
    ) -> Result<Applied>;
    /// The tenant's rollups with `from <= hour < to`.
    async fn usage_rollups(
        &self,
        tenant: TenantId,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<Vec<crate::usage::Rollup>>;
    /// The tenant's totals per meter and dimension values with `from <= hour < to`.
    async fn usage_totals(
        &self,
        tenant: TenantId,
        from: OffsetDateTime,
        to: OffsetDateTime,
        meters: &crate::usage::MeterCatalog,
    ) -> Result<Vec<crate::usage::MeterTotal>>;
    /// Drop the tenant's raw events received before `before` (rollups stay).
    async fn prune_usage_events(&self, tenant: TenantId, before: OffsetDateTime) -> Result<u64>;
    /// How many raw events the tenant's database holds (the benchmark's exactly-once count).
    async fn usage_event_count(&self, tenant: TenantId) -> Result<u64>;

    /// Write these rows of the monthly summary (each replacing the row of its month, tenant,
    /// meter and dimension values), in one transaction.
    async fn put_usage_months(
        &self,
        rows: &[(crate::usage::Month, TenantId, Vec<crate::usage::MeterTotal>)],
    ) -> Result<()>;
    /// Every tenant's totals for a month.
    async fn usage_month(&self, month: crate::usage::Month) -> Result<Vec<(TenantId, crate::usage::MeterTotal)>>;
    /// One tenant's totals for a month.
    async fn usage_month_of(
        &self,
        month: crate::usage::Month,
        tenant: TenantId,
    ) -> Result<Vec<crate::usage::MeterTotal>>;

    /// Set the tenant's budget (under the writable-tenant check: none), forget this month's
    /// crossings and any block, and note the tenant in the change feed, with its event.
    async fn put_budget(&self, budget: &crate::budget::Budget, month: &str, event: NewEvent) -> Result<()>;
    /// Remove the budget (and any block), with its event; `false` if there was none.
    async fn delete_budget(&self, tenant: TenantId, event: NewEvent) -> Result<bool>;
    async fn budget(&self, tenant: TenantId) -> Result<Option<crate::budget::Budget>>;
    async fn budgets(&self) -> Result<Vec<crate::budget::Budget>>;
    /// Until when the tenant's keys are stopped by its hard limit, if they are.
    async fn budget_block(&self, tenant: TenantId) -> Result<Option<OffsetDateTime>>;
    /// Record a crossing once per tenant and month: the event, the emails and (with
    /// `block_until`) the block and a change-feed entry, in one transaction — only while the
    /// tenant's budget is still the one judged (`budget_at`, its `updated_at`). `false` if it
    /// was already recorded (by this or another node) or the budget changed meanwhile.
    #[allow(clippy::too_many_arguments, reason = "one transaction's every part")]
    async fn record_budget_crossing(
        &self,
        tenant: TenantId,
        month: &str,
        crossing: crate::budget::Crossing,
        budget_at: OffsetDateTime,
        block_until: Option<OffsetDateTime>,
        emails: &[Email],
        event: NewEvent,
    ) -> Result<bool>;
}

/// Webhook endpoints, their deliveries, and the events feed (control database). Events and
/// their deliveries are written by the audited transaction of the change that publishes them
/// (`NewEvent::published`), not through this trait.
#[async_trait]
pub trait WebhookStore: Send + Sync {
    /// Every endpoint, oldest first.
    async fn webhook_endpoints(&self) -> Result<Vec<crate::webhook::Endpoint>>;
    async fn webhook_endpoint(&self, id: uuid::Uuid) -> Result<Option<crate::webhook::Endpoint>>;
    /// Refused with `Conflict { code: "too_many_endpoints" }` past `max`.
    async fn create_webhook_endpoint(&self, e: &crate::webhook::Endpoint, max: usize, event: NewEvent) -> Result<()>;
    /// Writes the fields an owner edits (URL, description, subscription, region, enabled and
    /// its reason, the secrets) if the row is still as read (`updated_at == read_at`): else
    /// `NotFound`, or `Conflict { code: "endpoint_changed" }` when someone changed it meanwhile.
    /// `redeliver_from`: re-enabled, so `failing_since` is cleared and the endpoint's pending
    /// deliveries are due at once with a fresh window.
    async fn update_webhook_endpoint(
        &self,
        e: &crate::webhook::Endpoint,
        read_at: OffsetDateTime,
        redeliver_from: Option<OffsetDateTime>,
        event: NewEvent,
    ) -> Result<()>;
    /// Deletes it and its deliveries; `NotFound` if it was not there.
    async fn delete_webhook_endpoint(&self, id: uuid::Uuid, event: NewEvent) -> Result<()>;
    /// Disables an endpoint that is still failing since `failing_since` (no success since),
    /// with its audit event and the owners' emails; false if it recovered or was changed.
    async fn disable_failing_endpoint(
        &self,
        id: uuid::Uuid,
        failing_since: OffsetDateTime,
        emails: &[Email],
        event: NewEvent,
    ) -> Result<bool>;
    /// Claims up to `limit` due deliveries until `lease_until`, under a lease of this claim's own:
    /// pending, due, not leased, of an enabled endpoint, and the first pending one of their
    /// (endpoint, tenant) (later events of a tenant wait for the earlier ones). At most
    /// `per_endpoint` per endpoint counting `in_flight` (what this node is already sending),
    /// chosen in the query, so one endpoint's backlog neither takes every slot nor hides the
    /// other endpoints' due deliveries. They are claimed by one conditional update that checks
    /// all of this again for each, so across nodes one attempt is made per delivery at a time.
    async fn claim_webhook_deliveries(
        &self,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: u32,
        in_flight: &std::collections::HashMap<uuid::Uuid, u32>,
        per_endpoint: u32,
    ) -> Result<Vec<crate::webhook::Claimed>>;
    /// Gives a claimed delivery back unattempted (its endpoint was disabled or deleted meanwhile).
    async fn release_webhook_lease(&self, delivery: uuid::Uuid, lease: uuid::Uuid) -> Result<()>;
    /// Records an attempt (only the lease's holder can: `None` if the lease was lost), the
    /// delivery's next state, and the endpoint's `failing_since` (cleared by a success, set by
    /// the first failure). Returns the endpoint's `failing_since` after it.
    async fn finish_webhook_attempt(
        &self,
        delivery: uuid::Uuid,
        lease: uuid::Uuid,
        at: OffsetDateTime,
        attempt: &crate::webhook::Attempt,
        next: crate::webhook::Next,
    ) -> Result<Option<Option<OffsetDateTime>>>;
    /// The endpoint's deliveries, newest first, before `before` (a delivery id) if given.
    async fn webhook_deliveries(
        &self,
        endpoint: uuid::Uuid,
        limit: u32,
        before: Option<uuid::Uuid>,
    ) -> Result<Vec<crate::webhook::DeliveryView>>;
    async fn webhook_delivery(&self, id: uuid::Uuid) -> Result<Option<crate::webhook::DeliveryView>>;
    /// Queues the delivery's event again to its endpoint (a new delivery, due now); `NotFound`
    /// if the delivery or its event is gone.
    async fn resend_webhook_delivery(
        &self,
        delivery: uuid::Uuid,
        new_id: uuid::Uuid,
        now: OffsetDateTime,
        event: NewEvent,
    ) -> Result<crate::webhook::DeliveryView>;
    /// Events after `after` (their seq) in order, of the given types (all if empty).
    async fn published_after(
        &self,
        after: i64,
        topics: &[String],
        limit: u32,
    ) -> Result<Vec<crate::webhook::FeedEvent>>;
    /// Drops events that occurred before `before` and their deliveries; returns how many events.
    async fn prune_webhook_events(&self, before: OffsetDateTime) -> Result<u64>;
}

/// A reply kept for an `Idempotency-Key` (its secret fields already blanked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptReply {
    /// What was asked: method, path and query, SHA-256 of the body.
    pub request: String,
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
    /// The top-level fields set to `null` because they held a secret.
    pub redacted: Vec<String>,
}

/// What an `Idempotency-Key` stands for when a request comes with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdempotencySlot {
    /// Reserved for this request (under the holder id it was asked with).
    Reserved,
    /// Another request with this key is still running (`request`: what it asked).
    Running { request: String },
    /// Its reply is kept.
    Done(KeptReply),
    /// A new key, but the token already has as many live keys as it may.
    Full,
}

/// State every node shares through the control database: the sign-in throttle's rows, the
/// Automation API's rate windows and idempotency replies, and job leases. Nothing here is
/// audited (counters and caches, not changes anyone made).
#[async_trait]
pub trait LimitStore: Send + Sync {
    /// Judge a guess and, only if `judge` admits it, count it in flight on each of `pending`
    /// as `guess` until `until` (each guess expires on its own: a node that died mid-guess
    /// leaves nothing stuck past it). `judge` sees the rows of `pending` then `read`, in that
    /// order (a missing key as the default row), `pending` counting the live guesses of every
    /// node plus this one. The rows of `pending` are locked (in the order of their keys) while
    /// judging, so of concurrent guesses each sees the ones admitted before it.
    async fn begin_guess(
        &self,
        guess: uuid::Uuid,
        pending: &[String],
        read: &[String],
        now: OffsetDateTime,
        until: OffsetDateTime,
        judge: &crate::throttle::GuessJudge,
    ) -> Result<std::result::Result<(), u64>>;
    /// A key's row as it stands, without locking or writing anything: its failures and the
    /// guesses in flight on it now (`pending`); the default row when it has none.
    async fn guess_state(&self, key: &str, now: OffsetDateTime) -> Result<crate::throttle::ThrottleRow>;
    /// End a guess: no longer in flight; one more failure on `failed` (counting from 1 again
    /// when the last one was at or before `forget_before`); no failure on record for `cleared`.
    /// Rows are locked in the order of their keys (as `begin_guess` does).
    async fn end_guess(
        &self,
        guess: uuid::Uuid,
        failed: &[String],
        cleared: &[String],
        now: OffsetDateTime,
        forget_before: OffsetDateTime,
    ) -> Result<()>;
    /// Add each token's (its id's) requests counted on a node to its window (unix minutes), in
    /// one transaction; each token's count in the window over every node after it.
    async fn add_api_hits(&self, window: i64, hits: &[(String, u64)]) -> Result<Vec<(String, u64)>>;
    /// Add each key's count from a node to `counter`'s `window` (the counter's own unit), in
    /// one transaction, the row kept until `expires_at`; each key's count in the window over
    /// every node after it.
    async fn add_counts(
        &self,
        counter: &str,
        window: i64,
        expires_at: OffsetDateTime,
        hits: &[(String, u64)],
    ) -> Result<Vec<(String, u64)>>;
    /// `counter`'s counts of `key` in `windows` over every node (windows without a row left out).
    async fn read_counts(&self, counter: &str, key: &str, windows: &[i64]) -> Result<Vec<(i64, u64)>>;
    /// Reserve `key` of the token (its id) for `request` (a digest) under `holder` until
    /// `reserved_until`, unless it is reserved (and not past its reservation) or its reply
    /// kept (and not expired), or the token already has `max_live` other live keys (`Full`).
    #[allow(clippy::too_many_arguments)]
    async fn reserve_idempotency_key(
        &self,
        token_hash: &str,
        key: &str,
        request: &str,
        holder: uuid::Uuid,
        now: OffsetDateTime,
        reserved_until: OffsetDateTime,
        max_live: u64,
    ) -> Result<IdempotencySlot>;
    /// Keep the reply of a reservation still held by `holder`, until `expires_at`.
    async fn keep_idempotent_reply(
        &self,
        token_hash: &str,
        key: &str,
        holder: uuid::Uuid,
        reply: &KeptReply,
        expires_at: OffsetDateTime,
    ) -> Result<()>;
    /// Give a reservation back (its request failed or went away).
    async fn release_idempotency_key(&self, token_hash: &str, key: &str, holder: uuid::Uuid) -> Result<()>;
    /// Drop every reply kept for the token (it no longer authenticates).
    async fn forget_idempotent_replies(&self, token_hash: &str) -> Result<()>;
    /// Take the job's lease until `until` if it is free (expired at `now`): one conditional
    /// statement, so of nodes asking at once one wins. `true` if `holder` took it.
    async fn claim_job(&self, name: &str, holder: &str, now: OffsetDateTime, until: OffsetDateTime) -> Result<bool>;
    /// Move the end of `holder`'s lease of the job to `until`; `false` if it is not theirs.
    async fn extend_job(&self, name: &str, holder: &str, until: OffsetDateTime) -> Result<bool>;
    /// End `holder`'s lease now (another node may take the job at once).
    async fn release_job(&self, name: &str, holder: &str, now: OffsetDateTime) -> Result<()>;
    /// Delete what has expired: throttle rows with no failure since `forget_before` and
    /// nothing in flight, rate windows before `window_before`, idempotency rows past their
    /// expiry. How many rows.
    async fn prune_limits(&self, now: OffsetDateTime, forget_before: OffsetDateTime, window_before: i64)
    -> Result<u64>;
}

/// A tenant-side change whose control side (audit events, outbox, sessions) may be missing:
/// its intent row, written in the tenant's transaction (see [`ReconcileStore`]).
#[derive(Clone, Debug)]
pub struct PendingIntent {
    pub tenant_id: TenantId,
    /// The change's (first) audit event: the control side is there iff this event is.
    pub event_id: EventId,
    pub created_at: OffsetDateTime,
    /// Failed repairs so far.
    pub attempts: i64,
    /// It had settled, and the start-up pass reopened it: its event is not in the trail (a
    /// control database restored from a backup older than the tenant's).
    pub reopened: bool,
}

/// What a repair of one intent found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IntentOutcome {
    /// The event was in the trail already (the control side had committed): intent removed.
    AlreadyApplied,
    /// The control side was written now, with the `RECONCILE_REPAIRED` event.
    Repaired,
    /// The intent cannot be read (why): it must be quarantined.
    Unreadable(String),
    /// The intent is JSON but of a newer format, or names an event type / topic / operation
    /// this binary does not know (why): left for a newer node (rolling upgrade).
    Skipped(String),
}

/// What became of a tenant database without a tenant row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrphanOutcome {
    /// It held no user: dropped, with `RECONCILE_DATABASE_DROPPED`.
    Dropped,
    /// It holds users: kept, quarantined with `RECONCILE_QUARANTINED` (once).
    Quarantined,
    /// Nothing done: quarantined by an earlier pass, or its tenant row exists now (a tenant
    /// that was being created).
    Unchanged,
}

/// Crash recovery (see `Core::reconcile`): writes to a tenant's users commit in the tenant's
/// database first, with an intent row saying what the control database must then hold.
#[async_trait]
pub trait ReconcileStore: Send + Sync {
    /// The tenant's open (not settled) intents created before `before`, oldest first.
    async fn pending_intents(&self, tenant: TenantId, before: OffsetDateTime, limit: u32)
    -> Result<Vec<PendingIntent>>;
    /// Reopens the tenant's settled intents whose event is not in the trail (a control
    /// database restored from a backup older than the tenant's): they are open again, marked
    /// reopened, for the pass to repair. Returns how many.
    async fn reopen_settled_without_event(&self, tenant: TenantId) -> Result<u64>;
    /// Deletes the tenant's intents settled before `before`; returns how many.
    async fn prune_settled_intents(&self, tenant: TenantId, before: OffsetDateTime) -> Result<u64>;
    /// Writes the intent's control side (its events, then `repaired`) unless its event is in the
    /// trail already (checked under the chain's lock: once, whoever else repairs), and removes
    /// the intent.
    async fn repair_intent(&self, intent: &PendingIntent, repaired: NewEvent) -> Result<IntentOutcome>;
    /// Counts a failed repair.
    async fn note_intent_failure(&self, intent: &PendingIntent) -> Result<()>;
    /// Keeps the intent in the control database as a finding (with `event`, whose details get
    /// the reason; once) and removes it from the tenant's. False if it was quarantined before.
    async fn quarantine_intent(&self, intent: &PendingIntent, reason: &str, event: NewEvent) -> Result<bool>;
    /// The tenants whose database exists (whatever the tenant rows say).
    async fn tenant_databases(&self) -> Result<Vec<TenantId>>;
    /// Every tenant with a row, deleted or not.
    async fn tenant_row_ids(&self) -> Result<Vec<TenantId>>;
    /// Records a database without a tenant row (once); returns when it was first seen.
    async fn note_orphan_database(&self, tenant: TenantId, now: OffsetDateTime) -> Result<OffsetDateTime>;
    /// A database without a tenant row, seen long enough: dropped if it holds no user (with
    /// `dropped`), else quarantined (with `quarantined`, once).
    async fn settle_orphan_database(
        &self,
        tenant: TenantId,
        now: OffsetDateTime,
        dropped: NewEvent,
        quarantined: NewEvent,
    ) -> Result<OrphanOutcome>;
    /// Marks a live tenant whose database is missing (with `event`, once); true if newly marked.
    async fn mark_missing_database(&self, tenant: TenantId, now: OffsetDateTime, event: NewEvent) -> Result<bool>;
    /// The open findings about databases: orphans (noted or quarantined) and missing ones.
    async fn database_findings(&self) -> Result<Vec<(DatabaseFinding, TenantId)>>;
    /// A database finding that no longer holds is removed; when it had been quarantined (an
    /// operator was told), `event` is written in the same transaction. Returns whether it was.
    async fn resolve_database_finding(&self, kind: DatabaseFinding, tenant: TenantId, event: NewEvent) -> Result<bool>;
}

/// What a reconcile finding about a tenant's database says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatabaseFinding {
    /// A database without a tenant row.
    Orphan,
    /// A live tenant without its database.
    Missing,
}

impl DatabaseFinding {
    /// The finding's `kind` as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Orphan => "orphan_database",
            Self::Missing => "missing_database",
        }
    }
}

/// Everything the core needs from storage.
#[async_trait]
pub trait Store:
    TenantStore
    + UserStore
    + SessionStore
    + AuditStore
    + OutboxStore
    + ImpersonationStore
    + TokenStore
    + SsoStore
    + DataPlaneStore
    + UsageStore
    + WebhookStore
    + LimitStore
    + ReconcileStore
{
    /// "sqlite" or "postgres", for the settings page and logs.
    fn backend(&self) -> &'static str;
    /// The control database answers and every control migration of this binary is applied;
    /// else `database_unavailable` or `migrations_pending`.
    async fn control_readiness(&self) -> std::result::Result<(), &'static str>;
    /// The numbers `/metrics` reads when scraped (one small query, the rest from memory).
    async fn store_gauges(&self, now: OffsetDateTime) -> Result<crate::meters::StoreGauges>;
    /// Called by a server starting as the only one its database can have (SQLite, with the
    /// data directory's lock held): the leases on outbox emails, webhook deliveries and the
    /// usage sweeps of `regions` can only have been left by a server that died, so they are
    /// released and its work resumes now, not when they lapse (5 min, 60 s, 30 s). Returns
    /// how many. On PostgreSQL, where other nodes may be alive, nothing is released.
    async fn release_dead_leases(&self, regions: &[String]) -> Result<u64>;
}
