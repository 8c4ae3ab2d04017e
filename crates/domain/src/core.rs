//! The operations the web layer calls. Each checks its rules, builds its audit event and hands
//! both to the store, which writes them in one transaction.

use crate::access::{
    Actor, Authorized, ManageTenants, Principal, ReadAudit, ReadTenants, ReadUsers,
};
use crate::audit::{AuditEvent, AuditFilter, ChainBreak, ChainVerifier, EventType, NewEvent};
use crate::clock::Clock;
use crate::email::EmailAddress;
use crate::error::{Error, Problems, Result};
use crate::ids::{EventId, TenantId, UserId};
use crate::password::{NewPassword, PasswordHasher};
use crate::session::{Session, SessionPolicy};
use crate::store::Store;
use crate::tenant::{NewTenant, StatusCounts, Tenant, TenantEdit, TenantFilter, TenantStatus};
use crate::throttle::{Throttle, ThrottlePolicy};
use crate::token::{Random, Secret, TokenHash};
use crate::user::{PlatformUser, UserStatus};
use serde_json::json;
use std::sync::Arc;
use time::Duration;

/// Settings the core needs (the binary maps its settings file onto this).
#[derive(Clone, Debug)]
pub struct CoreConfig {
    pub sessions: SessionPolicy,
    pub password_min_chars: usize,
    pub regions: Vec<String>,
    pub setup_link_ttl: Duration,
    pub tenant_retention: Duration,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            sessions: SessionPolicy {
                idle: Duration::minutes(30),
                absolute: Duration::hours(12),
            },
            password_min_chars: 12,
            regions: vec!["default".to_owned()],
            setup_link_ttl: Duration::hours(24),
            tenant_retention: Duration::days(30),
        }
    }
}

/// A signed-in platform user's live session.
#[derive(Clone, Debug)]
pub struct SignedIn {
    pub session: Session,
    pub principal: Principal,
    pub user: PlatformUser,
}

/// Where a sign-in attempt comes from.
#[derive(Clone, Debug, Default)]
pub struct ClientInfo {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

pub struct Core {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub rng: Arc<dyn Random>,
    pub hasher: PasswordHasher,
    pub config: CoreConfig,
    account_throttle: Throttle,
    address_throttle: Throttle,
}

impl Core {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Random>,
        hasher: PasswordHasher,
        config: CoreConfig,
    ) -> Self {
        Self {
            store,
            clock,
            rng,
            hasher,
            config,
            account_throttle: Throttle::new(ThrottlePolicy::ACCOUNT),
            address_throttle: Throttle::new(ThrottlePolicy::ADDRESS),
        }
    }

    fn new_event(
        &self,
        t: EventType,
        actor: &Actor,
        tenant: Option<TenantId>,
        details: serde_json::Value,
    ) -> NewEvent {
        NewEvent::new(self.clock.now(), t, actor, tenant, details)
    }

    // ---- first run -------------------------------------------------------------------------

    /// If no owner exists, mint a fresh one-time setup token (replacing any earlier one) and
    /// return it, for `serve` to log as `{base_url}/setup?token=…`.
    pub async fn setup_token_if_needed(&self) -> Result<Option<Secret>> {
        if self.store.owner_exists().await? {
            return Ok(None);
        }
        let secret = Secret::generate(&*self.rng, "qd_setup_");
        let expires = self.clock.now() + self.config.setup_link_ttl;
        self.store.put_setup_token(&secret.hash(), expires).await?;
        Ok(Some(secret))
    }

    pub async fn setup_token_valid(&self, token: &str) -> Result<bool> {
        self.store
            .setup_token_valid(&TokenHash::of(token), self.clock.now())
            .await
    }

    /// Create the first owner with the setup link's token; the token dies with it.
    pub async fn setup_owner(
        &self,
        token: &str,
        email: &str,
        name: &str,
        password: &str,
        confirm: &str,
    ) -> Result<PlatformUser> {
        if !self.setup_token_valid(token).await? {
            return Err(Error::LinkInvalid(
                "This setup link is invalid, spent or expired.",
            ));
        }
        let (email, name, password) = self.parse_new_account(email, name, password, confirm)?;
        let user = self.new_owner(email, name);
        let hash = self.hasher.hash(&password, &*self.rng).await?;
        let event = self.new_event(
            EventType::OwnerCreated,
            &Actor::user(user.id, user.email.clone()),
            None,
            json!({ "user_id": user.id, "email": user.email, "roles": user.roles, "via": "setup_link" }),
        );
        let created = self
            .store
            .create_owner_with_setup_token(
                &TokenHash::of(token),
                self.clock.now(),
                &user,
                &hash,
                event,
            )
            .await?;
        if created {
            Ok(user)
        } else {
            Err(Error::LinkInvalid(
                "This setup link is invalid, spent or expired.",
            ))
        }
    }

    /// Create the first owner from start-up settings, if no owner exists. Returns whether one
    /// was created.
    pub async fn bootstrap_owner(&self, email: &str, password: &str) -> Result<bool> {
        if self.store.owner_exists().await? {
            return Ok(false);
        }
        let (email, name, password) = self.parse_new_account(email, "", password, password)?;
        let user = self.new_owner(email, name);
        let hash = self.hasher.hash(&password, &*self.rng).await?;
        let event = self.new_event(
            EventType::OwnerCreated,
            &Actor::system(),
            None,
            json!({ "user_id": user.id, "email": user.email, "roles": user.roles, "via": "bootstrap" }),
        );
        self.store.create_platform_user(&user, &hash, event).await?;
        Ok(true)
    }

    fn parse_new_account(
        &self,
        email: &str,
        name: &str,
        password: &str,
        confirm: &str,
    ) -> Result<(EmailAddress, Option<String>, NewPassword)> {
        let mut p = Problems::new();
        let email = p.check(EmailAddress::parse(email));
        let name = p.check(crate::user::parse_display_name(name));
        let password = p.check(NewPassword::parse(
            password,
            self.config.password_min_chars,
            "password",
        ));
        if password.is_some() && password.as_ref().map(|p| p.expose()) != Some(confirm) {
            p.push(crate::error::FieldError::new(
                "confirm",
                "mismatch",
                "The passwords do not match.",
            ));
        }
        p.finish()?;
        match (email, name, password) {
            (Some(e), Some(n), Some(pw)) => Ok((e, n, pw)),
            _ => Err(Error::internal("validation passed without values")),
        }
    }

    fn new_owner(&self, email: EmailAddress, name: Option<String>) -> PlatformUser {
        PlatformUser {
            id: UserId::new(),
            email,
            name,
            status: UserStatus::Active,
            roles: vec!["owner".to_owned()],
            created_at: self.clock.now(),
        }
    }

    // ---- sign-in and sessions ----------------------------------------------------------------

    /// Check the email and password; on success start a new session (a new id, whatever the
    /// client had before). Unknown email and wrong password give the same error after the same
    /// work (a full Argon2id verification).
    pub async fn sign_in(
        &self,
        email: &str,
        password: &str,
        client: &ClientInfo,
    ) -> Result<(Secret, SignedIn)> {
        let now = self.clock.now();
        let account_key = email.trim().to_ascii_lowercase();
        let address_key = client.ip.clone().unwrap_or_default();
        let wait = [
            self.account_throttle.check(&account_key, now),
            self.address_throttle.check(&address_key, now),
        ]
        .into_iter()
        .flatten()
        .max();
        if let Some(retry_after_secs) = wait {
            return Err(Error::Throttled { retry_after_secs });
        }

        let found = match EmailAddress::parse(email) {
            Ok(e) => self.store.platform_user_by_email(&e).await?,
            Err(_) => None,
        };
        let verified = self
            .hasher
            .verify(password, found.as_ref().map(|(_, h)| h.as_str()))
            .await?;
        let user = match found {
            Some((user, _)) if verified && user.status == UserStatus::Active => user,
            found => {
                self.account_throttle.record_failure(&account_key, now);
                self.address_throttle.record_failure(&address_key, now);
                let actor = match &found {
                    Some((u, _)) => Actor::user(u.id, u.email.clone()),
                    None => Actor::system(),
                };
                let event = self.new_event(
                    EventType::SignInFailed,
                    &actor,
                    None,
                    json!({ "email": account_key.chars().take(254).collect::<String>(), "reason": "invalid_credentials", "ip": client.ip }),
                );
                self.store.append_event(event).await?;
                return Err(Error::InvalidCredentials);
            }
        };
        self.account_throttle.record_success(&account_key);

        let secret = Secret::generate(&*self.rng, "");
        let csrf = Secret::generate(&*self.rng, "");
        let session = Session {
            id_hash: secret.hash(),
            user_id: user.id,
            tenant_id: None,
            csrf_token: csrf.expose().to_owned(),
            created_at: now,
            last_seen_at: now,
            expires_at: now + self.config.sessions.absolute,
            user_agent: client
                .user_agent
                .clone()
                .map(|ua| ua.chars().take(256).collect()),
            ip: client.ip.clone(),
        };
        self.store.create_session(&session).await?;
        let principal = Principal::new(user.id, user.email.clone(), user.roles.clone());
        let event = self.new_event(
            EventType::SignInSucceeded,
            &principal.actor(),
            None,
            json!({ "user_id": user.id, "ip": client.ip }),
        );
        self.store.append_event(event).await?;
        Ok((
            secret,
            SignedIn {
                session,
                principal,
                user,
            },
        ))
    }

    /// The live session behind a cookie value, if any. Ends sessions past their limits, and
    /// refuses users who are no longer active.
    pub async fn session(&self, cookie_value: &str) -> Result<Option<SignedIn>> {
        let hash = TokenHash::of(cookie_value);
        let Some(session) = self.store.session(&hash).await? else {
            return Ok(None);
        };
        let now = self.clock.now();
        if !self.config.sessions.is_live(&session, now) {
            self.store.delete_session(&hash).await?;
            return Ok(None);
        }
        let Some(user) = self.store.platform_user(session.user_id).await? else {
            self.store.delete_session(&hash).await?;
            return Ok(None);
        };
        if user.status != UserStatus::Active {
            self.store.delete_user_sessions(user.id, None).await?;
            return Ok(None);
        }
        if self.config.sessions.needs_touch(&session, now) {
            self.store.touch_session(&hash, now).await?;
        }
        let principal = Principal::new(user.id, user.email.clone(), user.roles.clone());
        Ok(Some(SignedIn {
            session,
            principal,
            user,
        }))
    }

    pub async fn sign_out(&self, signed_in: &SignedIn) -> Result<()> {
        self.store
            .delete_session(&signed_in.session.id_hash)
            .await?;
        let event = self.new_event(
            EventType::SignedOut,
            &signed_in.principal.actor(),
            None,
            json!({ "user_id": signed_in.user.id }),
        );
        self.store.append_event(event).await
    }

    /// Change one's own password (current password required); other sessions end.
    pub async fn change_password(
        &self,
        signed_in: &SignedIn,
        current: &str,
        new: &str,
        confirm: &str,
    ) -> Result<()> {
        let new = NewPassword::parse(new, self.config.password_min_chars, "new_password");
        let mut p = Problems::new();
        let new = p.check(new);
        if new.is_some() && new.as_ref().map(|n| n.expose()) != Some(confirm) {
            p.push(crate::error::FieldError::new(
                "confirm",
                "mismatch",
                "The passwords do not match.",
            ));
        }
        p.finish()?;
        let Some(new) = new else {
            return Err(Error::internal("validation passed without a password"));
        };
        let stored = self
            .store
            .platform_user_by_email(&signed_in.user.email)
            .await?
            .map(|(_, h)| h);
        if !self.hasher.verify(current, stored.as_deref()).await? {
            return Err(Error::field(
                "current_password",
                "wrong_password",
                "The current password is not correct.",
            ));
        }
        let hash = self.hasher.hash(&new, &*self.rng).await?;
        let event = self.new_event(
            EventType::PasswordChanged,
            &signed_in.principal.actor(),
            None,
            json!({ "user_id": signed_in.user.id }),
        );
        self.store
            .set_password(signed_in.user.id, &hash, event)
            .await?;
        self.store
            .delete_user_sessions(signed_in.user.id, Some(&signed_in.session.id_hash))
            .await?;
        Ok(())
    }

    /// Sign out every other session of the caller; returns how many ended.
    pub async fn end_other_sessions(&self, signed_in: &SignedIn) -> Result<u64> {
        let n = self
            .store
            .delete_user_sessions(signed_in.user.id, Some(&signed_in.session.id_hash))
            .await?;
        let event = self.new_event(
            EventType::SessionsRevoked,
            &signed_in.principal.actor(),
            None,
            json!({ "user_id": signed_in.user.id, "sessions_ended": n }),
        );
        self.store.append_event(event).await?;
        Ok(n)
    }

    // ---- tenants -------------------------------------------------------------------------------

    pub async fn create_tenant(
        &self,
        auth: &Authorized<ManageTenants>,
        new: NewTenant,
    ) -> Result<Tenant> {
        if self.store.slug_taken(&new.slug).await? {
            return Err(slug_taken());
        }
        let now = self.clock.now();
        let tenant = Tenant {
            id: TenantId::new(),
            slug: new.slug,
            name: new.name,
            region: new.region,
            tier: new.tier,
            status: TenantStatus::Active,
            metadata: new.metadata,
            created_at: now,
            updated_at: now,
        };
        let event = self.new_event(
            EventType::TenantCreated,
            auth.actor(),
            Some(tenant.id),
            json!({
                "tenant_id": tenant.id, "slug": tenant.slug, "name": tenant.name,
                "region": tenant.region, "tier": tenant.tier, "status": tenant.status,
                "metadata": tenant.metadata,
            }),
        );
        self.store.create_tenant(&tenant, event).await?;
        Ok(tenant)
    }

    pub async fn tenant(&self, _auth: &Authorized<ReadTenants>, id: TenantId) -> Result<Tenant> {
        self.store.tenant(id).await?.ok_or(Error::NotFound)
    }

    pub async fn list_tenants(
        &self,
        _auth: &Authorized<ReadTenants>,
        filter: &TenantFilter,
    ) -> Result<(Vec<Tenant>, u64)> {
        self.store.list_tenants(filter).await
    }

    pub async fn tenant_counts(&self, _auth: &Authorized<ReadTenants>) -> Result<StatusCounts> {
        self.store.tenant_counts().await
    }

    /// Edit name, region, tier and metadata. Records `TENANT_METADATA_UPDATED` with a diff per
    /// changed key (`{old, new}`; fields and metadata keys alike). No change, no event.
    pub async fn update_tenant(
        &self,
        auth: &Authorized<ManageTenants>,
        id: TenantId,
        edit: TenantEdit,
    ) -> Result<Tenant> {
        let old = self.store.tenant(id).await?.ok_or(Error::NotFound)?;
        let mut changes = serde_json::Map::new();
        let mut diff = |key: String, old: Option<&str>, new: Option<&str>| {
            if old != new {
                changes.insert(key, json!({ "old": old, "new": new }));
            }
        };
        diff(
            "name".into(),
            Some(old.name.as_str()),
            Some(edit.name.as_str()),
        );
        diff(
            "region".into(),
            Some(old.region.as_str()),
            Some(edit.region.as_str()),
        );
        diff(
            "tier".into(),
            Some(old.tier.as_str()),
            Some(edit.tier.as_str()),
        );
        let keys: std::collections::BTreeSet<&String> =
            old.metadata.keys().chain(edit.metadata.keys()).collect();
        for k in keys {
            diff(
                format!("metadata.{k}"),
                old.metadata.get(k).map(String::as_str),
                edit.metadata.get(k).map(String::as_str),
            );
        }
        if changes.is_empty() {
            return Ok(old);
        }
        let tenant = Tenant {
            name: edit.name,
            region: edit.region,
            tier: edit.tier,
            metadata: edit.metadata,
            updated_at: self.clock.now(),
            ..old
        };
        let event = self.new_event(
            EventType::TenantMetadataUpdated,
            auth.actor(),
            Some(id),
            json!({ "tenant_id": id, "changes": changes }),
        );
        self.store.update_tenant(&tenant, event).await?;
        Ok(tenant)
    }

    pub async fn set_tenant_status(
        &self,
        auth: &Authorized<ManageTenants>,
        id: TenantId,
        status: TenantStatus,
        reason: &str,
    ) -> Result<Tenant> {
        let old = self.store.tenant(id).await?.ok_or(Error::NotFound)?;
        let reason = reason.trim();
        if reason.chars().count() > 500 {
            return Err(Error::field(
                "reason",
                "too_long",
                "A reason is at most 500 characters.",
            ));
        }
        if old.status == status {
            return Ok(old);
        }
        let tenant = Tenant {
            status,
            updated_at: self.clock.now(),
            ..old.clone()
        };
        let event = self.new_event(
            EventType::TenantStatusChanged,
            auth.actor(),
            Some(id),
            json!({ "tenant_id": id, "old": old.status, "new": status, "reason": (!reason.is_empty()).then_some(reason) }),
        );
        self.store.update_tenant(&tenant, event).await?;
        Ok(tenant)
    }

    /// Delete a tenant: the caller must type its slug. Out of service at once; the database
    /// is dropped after the retention period (`purge_deleted_tenants`).
    pub async fn delete_tenant(
        &self,
        auth: &Authorized<ManageTenants>,
        id: TenantId,
        typed_slug: &str,
    ) -> Result<Tenant> {
        let tenant = self.store.tenant(id).await?.ok_or(Error::NotFound)?;
        if typed_slug.trim() != tenant.slug.as_str() {
            return Err(Error::field(
                "confirm_slug",
                "mismatch",
                format!("Type {} to confirm.", tenant.slug),
            ));
        }
        let event = self.new_event(
            EventType::TenantDeleted,
            auth.actor(),
            Some(id),
            json!({ "tenant_id": id, "slug": tenant.slug, "name": tenant.name, "status": tenant.status }),
        );
        self.store
            .delete_tenant(id, self.clock.now(), event)
            .await?;
        Ok(tenant)
    }

    /// Drop the databases of tenants deleted longer ago than the retention period.
    pub async fn purge_deleted_tenants(&self) -> Result<Vec<TenantId>> {
        self.store
            .purge_tenants(self.clock.now() - self.config.tenant_retention)
            .await
    }

    // ---- users and audit --------------------------------------------------------------------------

    pub async fn list_platform_users(
        &self,
        _auth: &Authorized<ReadUsers>,
    ) -> Result<Vec<PlatformUser>> {
        self.store.list_platform_users().await
    }

    pub async fn list_events(
        &self,
        _auth: &Authorized<ReadAudit>,
        filter: &AuditFilter,
    ) -> Result<Vec<AuditEvent>> {
        self.store.list_events(filter).await
    }

    pub async fn event(&self, _auth: &Authorized<ReadAudit>, id: EventId) -> Result<AuditEvent> {
        self.store.event(id).await?.ok_or(Error::NotFound)
    }

    /// Walk the whole chain; `Ok(checked)` or the first break.
    pub async fn verify_audit_chain(&self) -> Result<std::result::Result<u64, ChainBreak>> {
        let mut v = ChainVerifier::default();
        let mut after = 0;
        loop {
            let batch = self.store.events_after(after, 1000).await?;
            let Some(last) = batch.last() else { break };
            after = last.seq;
            for e in &batch {
                if let Err(b) = v.check(e) {
                    return Ok(Err(b));
                }
            }
        }
        Ok(Ok(v.checked))
    }
}

pub(crate) fn slug_taken() -> Error {
    Error::field(
        "slug",
        "slug_taken",
        "This slug is already in use; choose another.",
    )
}
