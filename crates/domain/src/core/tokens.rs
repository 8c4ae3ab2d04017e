//! Personal access tokens: made at Settings → Tokens after a browser sign-in, used as bearer
//! tokens on the Automation API. A token acts with its owner's current rights: a suspended or
//! deleted owner, a suspended tenant or a revoked or expired token stops it at once.

use super::{Core, SignedIn};
use crate::access::Principal;
use crate::audit::EventType;
use crate::error::{Error, Problems, Result};
use crate::ids::TenantId;
use crate::pat::{PersonalAccessToken, TokenScope};
use crate::tenant::TenantStatus;
use crate::token::{Secret, TokenHash};
use crate::user::{Directory, UserStatus};
use serde_json::json;
use time::Duration;
use uuid::Uuid;

/// What the New token form sends.
#[derive(Clone, Debug, Default)]
pub struct NewTokenRequest {
    pub name: String,
    pub scope: String,
    pub expires_in_days: String,
    /// For platform users: restrict to this tenant (empty: all the owner may reach).
    pub tenant_id: String,
}

/// Who is calling the API, and through which token.
#[derive(Clone, Debug)]
pub struct ApiCaller {
    pub principal: Principal,
    pub token: PersonalAccessToken,
}

impl ApiCaller {
    pub fn can_write(&self) -> bool {
        self.token.scope == TokenScope::ReadWrite
    }

    /// The tenants this token may touch: `None` means every tenant the owner may reach.
    pub fn tenant_limit(&self) -> Option<TenantId> {
        self.token.restrict_tenant_id.or(self.token.owner_tenant_id)
    }

    /// `NotFound` for a tenant outside the token's limit (never a hint that it exists).
    pub fn check_tenant(&self, tenant: TenantId) -> Result<()> {
        match self.tenant_limit() {
            Some(t) if t != tenant => Err(Error::NotFound),
            _ => Ok(()),
        }
    }
}

impl Core {
    pub async fn create_token(
        &self,
        signed_in: &SignedIn,
        req: NewTokenRequest,
    ) -> Result<(PersonalAccessToken, Secret)> {
        if signed_in.impersonation.is_some() || signed_in.session.must_change_password {
            return Err(Error::Forbidden);
        }
        self.create_token_for(&signed_in.user, &signed_in.principal, req, "console")
            .await
    }

    /// A token for an active platform user named by email, from the command line
    /// (`quarterdeck tokens create`), for bootstrapping automation.
    pub async fn create_token_from_cli(
        &self,
        email: &str,
        req: NewTokenRequest,
    ) -> Result<(PersonalAccessToken, Secret)> {
        let email = crate::email::EmailAddress::parse(email)?;
        let (user, _) = self
            .store
            .user_by_email(Directory::Platform, &email)
            .await?
            .filter(|(u, _)| u.status == UserStatus::Active)
            .ok_or_else(|| Error::field("email", "unknown_user", "No active platform user has this email."))?;
        let principal = self.principal_of(&user);
        self.create_token_for(&user, &principal, req, "cli").await
    }

    async fn create_token_for(
        &self,
        user: &crate::user::User,
        principal: &Principal,
        req: NewTokenRequest,
        via: &str,
    ) -> Result<(PersonalAccessToken, Secret)> {
        // A tenant user's token is a write in their tenant: refused in a read-only or
        // suspended one, like every other.
        self.writable_tenant(Directory::of(user.tenant_id)).await?;
        let mut p = Problems::new();
        let name = crate::fields::name(&mut p, &req.name, "token");
        let scope = p.check(TokenScope::parse(&req.scope));
        let days = match req.expires_in_days.trim().parse::<i64>() {
            Ok(d) if (1..=365).contains(&d) => Some(d),
            _ => {
                p.push(crate::error::FieldError::new(
                    "expires_in_days",
                    "invalid_expiry",
                    "Choose an expiry between 1 and 365 days.",
                ));
                None
            }
        };
        let restrict = match (user.tenant_id, req.tenant_id.trim()) {
            (Some(own), _) => Some(own),
            (None, "") => None,
            (None, raw) => match raw.parse::<TenantId>() {
                Ok(t) if self.store.tenant(t).await?.is_some() => Some(t),
                _ => {
                    p.push(crate::error::FieldError::new(
                        "tenant_id",
                        "unknown_tenant",
                        "There is no such tenant.",
                    ));
                    None
                }
            },
        };
        p.finish()?;
        let (Some(scope), Some(days)) = (scope, days) else {
            return Err(Error::internal("validation passed without values"));
        };
        let now = self.clock.now();
        let pat = PersonalAccessToken {
            id: Uuid::now_v7(),
            name,
            scope,
            owner_id: user.id,
            owner_email: user.email.to_string(),
            owner_tenant_id: user.tenant_id,
            restrict_tenant_id: restrict,
            created_at: now,
            expires_at: now + Duration::days(days),
            last_used_at: None,
            revoked_at: None,
        };
        let secret = Secret::generate(&*self.rng, "qd_pat_");
        let event = self.new_event(
            EventType::PatCreated,
            &principal.actor(),
            user.tenant_id,
            json!({
                "token_id": pat.id, "name": pat.name, "scope": pat.scope, "owner_id": pat.owner_id,
                "restrict_tenant_id": pat.restrict_tenant_id, "expires_at": pat.expires_at.unix_timestamp(),
                "via": via,
            }),
        );
        self.store.create_pat(&pat, &secret.hash(), event).await?;
        Ok((pat, secret))
    }

    pub async fn tokens(&self, signed_in: &SignedIn) -> Result<Vec<PersonalAccessToken>> {
        self.store.pats_of(signed_in.user.id).await
    }

    pub async fn revoke_token(&self, signed_in: &SignedIn, id: Uuid) -> Result<()> {
        let event = self.new_event(
            EventType::PatRevoked,
            &signed_in.principal.actor(),
            signed_in.user.tenant_id,
            json!({ "token_id": id, "owner_id": signed_in.user.id }),
        );
        if self
            .store
            .revoke_pat(id, signed_in.user.id, self.clock.now(), event)
            .await?
        {
            // Its kept Idempotency-Key replies die with it (they are never replayed to a
            // token that does not authenticate; housekeeping would drop them within a day).
            if let Err(e) = self.forget_idempotent(&id.to_string()).await {
                tracing::warn!(error = %e, "could not drop the kept replies of a revoked token");
            }
            Ok(())
        } else {
            Err(Error::NotFound)
        }
    }

    /// The caller behind a bearer token, or `Unauthenticated` (unknown, expired, revoked, or
    /// its owner or tenant no longer allowed in).
    pub async fn api_caller(&self, bearer: &str) -> Result<ApiCaller> {
        if !bearer.starts_with("qd_pat_") || bearer.len() > 128 {
            return Err(Error::Unauthenticated);
        }
        let now = self.clock.now();
        let pat = self
            .store
            .pat_by_hash(&TokenHash::of(bearer))
            .await?
            .ok_or(Error::Unauthenticated)?;
        if !pat.is_live(now) {
            return Err(Error::Unauthenticated);
        }
        let dir = Directory::of(pat.owner_tenant_id);
        let owner = self
            .store
            .user(dir, pat.owner_id)
            .await?
            .ok_or(Error::Unauthenticated)?;
        if owner.status != UserStatus::Active {
            return Err(Error::Unauthenticated);
        }
        for t in [pat.owner_tenant_id, pat.restrict_tenant_id].into_iter().flatten() {
            match self.store.tenant(t).await? {
                Some(tenant) if tenant.status != TenantStatus::Suspended => {}
                _ => return Err(Error::Unauthenticated),
            }
        }
        if pat.last_used_at.is_none_or(|t| now - t >= Duration::minutes(1)) {
            self.store.touch_pat(pat.id, now).await?;
        }
        let mut principal = self.principal_of(&owner);
        principal.token_id = Some(pat.id);
        Ok(ApiCaller { principal, token: pat })
    }
}
