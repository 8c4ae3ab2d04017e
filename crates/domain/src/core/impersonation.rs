//! "Switch to tenant": start (on the base host, with a reason), hand off to the tenant's host
//! with a single-use token, the time-boxed session there, and its end (stop or expiry).

use super::{Core, SignedIn};
use crate::access::{Actor, Principal};
use crate::audit::EventType;
use crate::error::{Error, Result};
use crate::ids::{TenantId, UserId};
use crate::impersonation::{Impersonation, ImpersonationEnd};
use crate::role::Capability;
use crate::session::Session;
use crate::token::{Secret, TokenHash};
use crate::user::Directory;
use crate::webhook::{Published, Topic};
use serde_json::json;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

/// How long the handoff link from the base host to the tenant's host works.
const HANDOFF_TTL: Duration = Duration::seconds(60);

impl Core {
    /// Start impersonating: only a platform user holding the impersonation capability, with a
    /// reason. Records `IMPERSONATION_STARTED`; returns the handoff token the tenant's host
    /// takes (once) to open the impersonation session there, and the tenant. The rights are
    /// checked before the tenant is read, so the answer says nothing of which tenants exist.
    pub async fn start_impersonation(
        &self,
        by: &Principal,
        tenant: TenantId,
        reason: &str,
    ) -> Result<(Secret, crate::tenant::Tenant)> {
        if by.tenant_id.is_some() || by.impersonation_id.is_some() {
            return Err(Error::Forbidden);
        }
        if !by.can(&Capability::Impersonate) {
            return Err(Error::Forbidden);
        }
        let tenant = self.store.tenant(tenant).await?.ok_or(Error::NotFound)?;
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(Error::field(
                "reason",
                "required",
                "Say why you are switching to this tenant: it is recorded.",
            ));
        }
        if reason.chars().count() > 500 || reason.chars().any(char::is_control) {
            return Err(Error::field(
                "reason",
                "invalid",
                "A reason is at most 500 characters, on one line.",
            ));
        }
        let now = self.clock.now();
        let imp = Impersonation {
            id: Uuid::now_v7(),
            impersonator_id: by.user_id,
            impersonator_email: by.email.to_string(),
            tenant_id: tenant.id,
            reason: reason.to_owned(),
            started_at: now,
            expires_at: now + self.config.impersonation_ttl,
            ended_at: None,
        };
        let event = self
            .new_event(
                EventType::ImpersonationStarted,
                &by.actor(),
                Some(tenant.id),
                json!({
                    "impersonation_id": imp.id, "impersonator_id": by.user_id, "impersonator_email": by.email,
                    "tenant_id": tenant.id, "tenant_slug": tenant.slug, "reason": imp.reason,
                    "expires_at": imp.expires_at.unix_timestamp(),
                }),
            )
            .publish(Published::impersonation(Topic::ImpersonationStarted, &imp, None));
        let handoff = Secret::generate(&*self.rng, "qd_imp_");
        self.store
            .start_impersonation(&imp, &handoff.hash(), now + HANDOFF_TTL, event)
            .await?;
        Ok((handoff, tenant))
    }

    /// On the tenant's host: spend the handoff token and open the impersonation session (a new
    /// session id, marked as an impersonation).
    pub async fn accept_impersonation(&self, tenant: TenantId, handoff: &str) -> Result<(Secret, SignedIn)> {
        let invalid =
            Error::LinkInvalid("This switch-to-tenant link is invalid or has expired. Start again from the console.");
        if handoff.is_empty() || handoff.len() > 128 {
            return Err(invalid);
        }
        let now = self.clock.now();
        let Some(imp) = self.store.take_handoff(&TokenHash::of(handoff), now).await? else {
            return Err(invalid);
        };
        if imp.tenant_id != tenant || !imp.is_live(now) {
            return Err(invalid);
        }
        let secret = Secret::generate(&*self.rng, "");
        let csrf = Secret::generate(&*self.rng, "");
        let session = Session {
            id_hash: secret.hash(),
            user_id: imp.impersonator_id,
            tenant_id: Some(tenant),
            csrf_token: csrf.expose().to_owned(),
            created_at: now,
            last_seen_at: now,
            expires_at: imp.expires_at,
            user_agent: None,
            ip: None,
            impersonation_id: Some(imp.id),
            must_change_password: false,
        };
        self.store.create_session(&session).await?;
        let signed_in = self
            .impersonation_session(session, imp.id, now)
            .await?
            .ok_or(Error::LinkInvalid(
                "This switch-to-tenant link is invalid or has expired. Start again from the console.",
            ))?;
        Ok((secret, signed_in))
    }

    /// The signed-in state of an impersonation session, or `None` (and the end recorded) once
    /// it has expired.
    pub(super) async fn impersonation_session(
        &self,
        session: Session,
        id: Uuid,
        now: OffsetDateTime,
    ) -> Result<Option<SignedIn>> {
        let Some(imp) = self.store.impersonation(id).await? else {
            self.store.delete_session(&session.id_hash).await?;
            return Ok(None);
        };
        if imp.ended_at.is_some() {
            self.store.delete_session(&session.id_hash).await?;
            return Ok(None);
        }
        if now >= imp.expires_at {
            self.end_impersonation(&imp, "expired").await?;
            return Ok(None);
        }
        if !self.config.sessions.is_live(&session, now) {
            self.end_impersonation(&imp, "idle").await?;
            return Ok(None);
        }
        // A deleted tenant ends it; a suspended one may still be looked at.
        let Some(tenant) = self.store.tenant(imp.tenant_id).await? else {
            self.end_impersonation(&imp, "tenant_deleted").await?;
            return Ok(None);
        };
        let Some(user) = self.store.user(Directory::Platform, imp.impersonator_id).await? else {
            self.end_impersonation(&imp, "impersonator_removed").await?;
            return Ok(None);
        };
        if user.status != crate::user::UserStatus::Active {
            self.end_impersonation(&imp, "impersonator_suspended").await?;
            return Ok(None);
        }
        // The impersonator's rights now, not when they started: a platform user who may no
        // longer impersonate is out at their next request.
        if user.tenant_id.is_some() || !self.principal_of(&user).can(&Capability::Impersonate) {
            self.end_impersonation(&imp, "rights_revoked").await?;
            return Ok(None);
        }
        if self.config.sessions.needs_touch(&session, now) {
            self.store.touch_session(&session.id_hash, now).await?;
        }
        let principal = Principal::impersonating(user.id, user.email.clone(), tenant.id, imp.id, self.catalog());
        Ok(Some(SignedIn {
            session,
            principal,
            user,
            tenant: Some(tenant),
            impersonation: Some(imp),
        }))
    }

    /// Ends the impersonations that expired unused (their end is otherwise seen only at the
    /// next request of their session), so each has its `impersonation.ended`. Housekeeping.
    pub async fn end_expired_impersonations(&self) -> Result<usize> {
        let mut ended = 0;
        loop {
            let batch = self.store.expired_impersonations(self.clock.now(), 100).await?;
            let n = batch.len();
            for imp in &batch {
                self.end_impersonation(imp, "expired").await?;
            }
            ended += n;
            if n < 100 {
                return Ok(ended);
            }
        }
    }

    /// End `imp` (once) with its `IMPERSONATION_ENDED` and its sessions.
    pub(super) async fn end_impersonation(&self, imp: &Impersonation, reason: &'static str) -> Result<()> {
        let end = self.impersonation_end(imp, reason)?;
        self.store.end_impersonation(imp.id, end.at, reason, end.event).await?;
        Ok(())
    }

    /// What ending `imp` now writes: its `IMPERSONATION_ENDED`, attributed to the
    /// impersonator inside the impersonation.
    pub(super) fn impersonation_end(&self, imp: &Impersonation, reason: &'static str) -> Result<ImpersonationEnd> {
        let mut actor = Actor::user(
            imp.impersonator_id,
            crate::email::EmailAddress::parse(&imp.impersonator_email)?,
        );
        actor.impersonation = Some((imp.id, imp.tenant_id));
        // An expired one ended when it expired, however late that is noticed.
        let now = match reason {
            "expired" => self.clock.now().min(imp.expires_at),
            _ => self.clock.now(),
        };
        let event = self
            .new_event(
                EventType::ImpersonationEnded,
                &actor,
                Some(imp.tenant_id),
                json!({
                    "impersonation_id": imp.id, "impersonator_id": imp.impersonator_id,
                    "impersonator_email": imp.impersonator_email, "tenant_id": imp.tenant_id,
                    "reason": reason, "duration_seconds": (now - imp.started_at).whole_seconds(),
                }),
            )
            .publish(Published::impersonation(
                Topic::ImpersonationEnded,
                &Impersonation {
                    ended_at: Some(now),
                    ..imp.clone()
                },
                Some(reason),
            ));
        Ok(ImpersonationEnd {
            id: imp.id,
            at: now,
            reason,
            event,
        })
    }

    /// The live impersonations of a platform user that end with a change of their roles or
    /// status (written in that change's transaction); none for a tenant user.
    pub(super) async fn impersonations_ending(
        &self,
        dir: Directory,
        user: UserId,
        reason: &'static str,
    ) -> Result<Vec<ImpersonationEnd>> {
        if dir != Directory::Platform {
            return Ok(Vec::new());
        }
        self.store
            .live_impersonations_of(user)
            .await?
            .iter()
            .map(|imp| self.impersonation_end(imp, reason))
            .collect()
    }

    /// "Stop impersonating": records `IMPERSONATION_ENDED` and ends the tenant-host session.
    /// Returns the tenant, whose console page the browser goes back to.
    pub async fn stop_impersonation(&self, signed_in: &SignedIn) -> Result<TenantId> {
        let Some(imp) = &signed_in.impersonation else {
            return Err(Error::NotFound);
        };
        self.end_impersonation(imp, "stopped").await?;
        Ok(imp.tenant_id)
    }
}
