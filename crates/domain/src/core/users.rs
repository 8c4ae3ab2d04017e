//! Users: invite, list, change roles, suspend and reactivate, delete, resend and revoke the
//! invitation, and registration with the invitation link.
//!
//! The rules live here, not in forms: a tenant admin acts only inside their own tenant (another
//! tenant's ids are "not found"), grants only tenant roles, and only roles whose capabilities
//! they hold; nobody mixes platform and tenant roles on one user; writes inside a read-only or
//! suspended tenant are refused.

use super::Core;
use crate::access::{Authorized, InDirectory, ManageDirectory, Principal, ReadDirectory, ReadTenants};
use crate::audit::{EventType, NewEvent};
use crate::email::EmailAddress;
use crate::error::{Error, FieldError, Problems, Result};
use crate::ids::{TenantId, UserId};
use crate::password::NewPassword;
use crate::role::{Capability, Scope};
use crate::sso::SignInMode;
use crate::tenant::Tenant;
use crate::token::{Secret, TokenHash};
use crate::user::{Directory, InvitationState, NewInvitation, User, UserStatus, parse_display_name};
use crate::webhook::{Published, Topic};
use serde_json::json;
use time::macros::format_description;

/// What the invite forms send.
#[derive(Clone, Debug, Default)]
pub struct InviteRequest {
    pub email: String,
    pub name: String,
    pub roles: Vec<String>,
    /// For platform callers: the tenant to invite into (empty: a platform user). Ignored for
    /// tenant callers, who always invite into their own tenant.
    pub tenant_id: String,
}

impl InviteRequest {
    /// The directory an invitation is for: a tenant caller's own tenant, else the tenant the
    /// form names (none: the platform's).
    pub fn directory(&self, by: &Principal) -> Result<Directory> {
        Ok(match by.tenant_id {
            Some(own) => Directory::Tenant(own),
            None if self.tenant_id.trim().is_empty() => Directory::Platform,
            None => Directory::Tenant(
                self.tenant_id
                    .trim()
                    .parse::<TenantId>()
                    .map_err(|_| Error::field("tenant_id", "unknown_tenant", "Choose a tenant."))?,
            ),
        })
    }
}

/// A user with their invitation's state, for the Team pages.
#[derive(Clone, Debug)]
pub struct UserView {
    pub user: User,
    pub invitation: Option<InvitationState>,
}

impl Core {
    /// The tenant behind a proof to manage a directory's users (none for the platform's),
    /// which must exist and be writable.
    async fn may_manage(&self, auth: &InDirectory<'_, ManageDirectory>) -> Result<Option<Tenant>> {
        self.writable_tenant(auth.directory()).await
    }

    /// The tenant behind a proof to read a directory's users (none for the platform's).
    async fn may_read(&self, auth: &InDirectory<'_, ReadDirectory>) -> Result<Option<Tenant>> {
        self.tenant_of(auth.directory()).await
    }

    /// Parse roles for a user of `dir`, and check `by` may grant each of them.
    fn grantable_roles(&self, by: &Principal, dir: Directory, names: &[String]) -> Result<Vec<String>> {
        let (scope, roles) = self.catalog().parse_roles(names)?;
        let wanted = match dir {
            Directory::Platform => Scope::Platform,
            Directory::Tenant(_) => Scope::Tenant,
        };
        if scope != wanted {
            return Err(Error::field(
                "roles",
                "wrong_scope",
                match wanted {
                    Scope::Tenant => "A tenant's users hold tenant roles only.",
                    Scope::Platform => {
                        "Platform users hold platform roles only; choose a tenant to invite with tenant roles."
                    }
                },
            ));
        }
        for name in &roles {
            let role = self.catalog().role(name).ok_or(Error::Forbidden)?;
            if !by.may_grant(role) {
                return Err(Error::Forbidden);
            }
        }
        Ok(roles)
    }

    fn expires_text(&self, at: time::OffsetDateTime) -> String {
        at.format(format_description!("[year]-[month]-[day] [hour]:[minute] UTC"))
            .unwrap_or_default()
    }

    /// A new invitation token for `user`, with its email rendered. In a directory that signs
    /// in with single sign-on only, the email is a notice saying where and how to sign in: it
    /// carries no link to `/register` (which is off there).
    async fn new_invitation(&self, by: &Principal, user: &User, tenant: Option<&Tenant>) -> Result<NewInvitation> {
        let secret = Secret::generate(&*self.rng, "qd_inv_");
        let now = self.clock.now();
        let expires_at = now + self.config.invitation_ttl;
        let origin = self.config.links.origin(tenant.map(|t| t.slug.as_str()));
        let link = format!("{origin}/register?token={}", secret.expose());
        let org = tenant
            .map(|t| t.name.as_str())
            .unwrap_or("the Quarterdeck platform team");
        let email = match self.store.identity_provider(user.directory()).await? {
            Some(p) if p.mode == SignInMode::SsoOnly => (self.config.render_sso_notice)(
                user.email.as_str(),
                by.email.as_str(),
                org,
                &format!("{origin}/login"),
                &p.display_name,
            ),
            _ => (self.config.render_invitation)(
                user.email.as_str(),
                by.email.as_str(),
                org,
                &link,
                &self.expires_text(expires_at),
            ),
        };
        Ok(NewInvitation {
            token_hash: secret.hash(),
            created_at: now,
            expires_at,
            email,
        })
    }

    /// Invite a user: created `INVITED` with a single-use token valid for the invitation TTL,
    /// the email queued in the same step, `USER_INVITED` recorded.
    pub async fn invite(&self, auth: &InDirectory<'_, ManageDirectory>, req: InviteRequest) -> Result<User> {
        let (by, dir) = (auth.principal(), auth.directory());
        let tenant = match self.may_manage(auth).await {
            Err(Error::NotFound) if by.tenant_id.is_none() => {
                return Err(Error::field("tenant_id", "unknown_tenant", "There is no such tenant."));
            }
            other => other?,
        };
        let mut p = Problems::new();
        let email = p.check(EmailAddress::parse(&req.email));
        let name = p.check(parse_display_name(&req.name));
        let roles = match self.grantable_roles(by, dir, &req.roles) {
            Err(Error::Forbidden) => return Err(Error::Forbidden),
            other => p.check(other),
        };
        p.finish()?;
        let (Some(email), Some(name), Some(roles)) = (email, name, roles) else {
            return Err(Error::internal("validation passed without values"));
        };
        let user = User {
            id: UserId::new(),
            email,
            name,
            status: UserStatus::Invited,
            roles,
            tenant_id: dir.tenant_id(),
            created_at: self.clock.now(),
        };
        let invitation = self.new_invitation(by, &user, tenant.as_ref()).await?;
        let event = self
            .new_event(
                EventType::UserInvited,
                &by.actor(),
                dir.tenant_id(),
                json!({
                    "user_id": user.id, "email": user.email, "tenant_id": dir.tenant_id(),
                    "roles": user.roles, "status": "INVITED", "expires_at": invitation.expires_at.unix_timestamp(),
                }),
            )
            .publish(Published::user(Topic::UserInvited, &user));
        self.store.create_user(&user, None, Some(&invitation), event).await?;
        Ok(user)
    }

    pub async fn users(&self, auth: &InDirectory<'_, ReadDirectory>) -> Result<Vec<UserView>> {
        self.may_read(auth).await?;
        let dir = auth.directory();
        let users = self.store.list_users(dir).await?;
        let mut out = Vec::with_capacity(users.len());
        for user in users {
            let invitation = if user.status == UserStatus::Invited {
                self.store.invitation_state(dir, user.id).await?
            } else {
                None
            };
            out.push(UserView { user, invitation });
        }
        Ok(out)
    }

    pub async fn user_view(&self, auth: &InDirectory<'_, ReadDirectory>, id: UserId) -> Result<UserView> {
        self.may_read(auth).await?;
        let dir = auth.directory();
        let user = self.store.user(dir, id).await?.ok_or(Error::NotFound)?;
        let invitation = self.store.invitation_state(dir, id).await?;
        Ok(UserView { user, invitation })
    }

    async fn target(&self, auth: &InDirectory<'_, ManageDirectory>, id: UserId) -> Result<(Option<Tenant>, User)> {
        let tenant = self.may_manage(auth).await?;
        let (by, dir) = (auth.principal(), auth.directory());
        let user = self.store.user(dir, id).await?.ok_or(Error::NotFound)?;
        // Nobody changes a user holding a role they could not grant themselves.
        for name in &user.roles {
            if let Some(role) = self.catalog().role(name)
                && !by.may_grant(role)
            {
                return Err(Error::Forbidden);
            }
        }
        Ok((tenant, user))
    }

    /// Replace a user's roles: `USER_ROLE_ASSIGNED` / `USER_ROLE_REVOKED` per role.
    pub async fn set_user_roles(
        &self,
        auth: &InDirectory<'_, ManageDirectory>,
        id: UserId,
        roles: &[String],
    ) -> Result<()> {
        let (_, user) = self.target(auth, id).await?;
        let (by, dir) = (auth.principal(), auth.directory());
        let roles = self.grantable_roles(by, dir, roles)?;
        let mut events: Vec<NewEvent> = Vec::new();
        for r in roles.iter().filter(|r| !user.roles.contains(r)) {
            events.push(self.new_event(
                EventType::UserRoleAssigned,
                &by.actor(),
                dir.tenant_id(),
                json!({ "user_id": id, "email": user.email, "role": r, "tenant_id": dir.tenant_id() }),
            ));
        }
        for r in user.roles.iter().filter(|r| !roles.contains(r)) {
            events.push(self.new_event(
                EventType::UserRoleRevoked,
                &by.actor(),
                dir.tenant_id(),
                json!({ "user_id": id, "email": user.email, "role": r, "tenant_id": dir.tenant_id() }),
            ));
        }
        if events.is_empty() {
            return Ok(());
        }
        let after = User {
            roles: roles.clone(),
            ..user.clone()
        };
        events[0] = events[0]
            .clone()
            .publish(Published::user_roles_changed(&after, &user.roles));
        // A platform user who may no longer impersonate stops now, in the same step.
        let still_may = self
            .principal_of(&User {
                roles: roles.clone(),
                ..user.clone()
            })
            .can(&Capability::Impersonate);
        let ending = if still_may {
            Vec::new()
        } else {
            self.impersonations_ending(dir, id, "rights_revoked").await?
        };
        self.store.set_roles(dir, id, &roles, events, &ending).await
    }

    /// Suspend (sessions end at once) or reactivate a user.
    pub async fn set_user_suspended(
        &self,
        auth: &InDirectory<'_, ManageDirectory>,
        id: UserId,
        suspend: bool,
    ) -> Result<()> {
        let (_, user) = self.target(auth, id).await?;
        let (by, dir) = (auth.principal(), auth.directory());
        if user.id == by.user_id {
            return Err(Error::Conflict {
                code: "self_action",
                message: "You cannot suspend yourself.".to_owned(),
            });
        }
        let (status, event_type) = match (suspend, user.status) {
            (true, UserStatus::Active) => (UserStatus::Suspended, EventType::UserSuspended),
            (false, UserStatus::Suspended) => (UserStatus::Active, EventType::UserReactivated),
            (true, _) => {
                return Err(Error::Conflict {
                    code: "not_active",
                    message: "Only an active user can be suspended.".to_owned(),
                });
            }
            (false, _) => {
                return Err(Error::Conflict {
                    code: "not_suspended",
                    message: "The user is not suspended.".to_owned(),
                });
            }
        };
        let event = self
            .new_event(
                event_type,
                &by.actor(),
                dir.tenant_id(),
                json!({ "user_id": id, "email": user.email, "tenant_id": dir.tenant_id() }),
            )
            .publish(Published::user(
                if suspend {
                    Topic::UserSuspended
                } else {
                    Topic::UserActivated
                },
                &User { status, ..user.clone() },
            ));
        let ending = if suspend {
            self.impersonations_ending(dir, id, "impersonator_suspended").await?
        } else {
            Vec::new()
        };
        self.store.set_user_status(dir, id, status, event, &ending).await
    }

    /// Delete a user: gone from sign-in at once. `USER_DELETED`.
    pub async fn delete_user(&self, auth: &InDirectory<'_, ManageDirectory>, id: UserId) -> Result<()> {
        let (_, user) = self.target(auth, id).await?;
        let (by, dir) = (auth.principal(), auth.directory());
        if user.id == by.user_id {
            return Err(Error::Conflict {
                code: "self_action",
                message: "You cannot delete yourself.".to_owned(),
            });
        }
        let event = self.new_event(
            EventType::UserDeleted,
            &by.actor(),
            dir.tenant_id(),
            json!({ "user_id": id, "email": user.email, "roles": user.roles, "status": user.status, "tenant_id": dir.tenant_id() }),
        )
        .publish(Published::user(Topic::UserDeleted, &user));
        let ending = self.impersonations_ending(dir, id, "impersonator_removed").await?;
        self.store.delete_user(dir, id, event, &ending).await
    }

    /// A new link for an invited user; the old one dies. `INVITATION_RESENT`.
    pub async fn resend_invitation(&self, auth: &InDirectory<'_, ManageDirectory>, id: UserId) -> Result<()> {
        let (tenant, user) = self.target(auth, id).await?;
        let (by, dir) = (auth.principal(), auth.directory());
        if user.status != UserStatus::Invited {
            return Err(Error::Conflict {
                code: "not_invited",
                message: "This user has already registered.".to_owned(),
            });
        }
        let invitation = self.new_invitation(by, &user, tenant.as_ref()).await?;
        let event = self.new_event(
            EventType::InvitationResent,
            &by.actor(),
            dir.tenant_id(),
            json!({ "user_id": id, "email": user.email, "tenant_id": dir.tenant_id(), "expires_at": invitation.expires_at.unix_timestamp() }),
        );
        self.store
            .replace_invitation(dir, id, Some(&invitation), self.clock.now(), event)
            .await
    }

    /// Kill a pending invitation's link. `INVITATION_REVOKED`.
    pub async fn revoke_invitation(&self, auth: &InDirectory<'_, ManageDirectory>, id: UserId) -> Result<()> {
        let (_, user) = self.target(auth, id).await?;
        let (by, dir) = (auth.principal(), auth.directory());
        if user.status != UserStatus::Invited {
            return Err(Error::Conflict {
                code: "not_invited",
                message: "This user has already registered.".to_owned(),
            });
        }
        let event = self.new_event(
            EventType::InvitationRevoked,
            &by.actor(),
            dir.tenant_id(),
            json!({ "user_id": id, "email": user.email, "tenant_id": dir.tenant_id() }),
        );
        self.store
            .replace_invitation(dir, id, None, self.clock.now(), event)
            .await
    }

    /// The invited user behind a registration link on the host of `dir`.
    pub async fn invitation(&self, dir: Directory, token: &str) -> Result<User> {
        let invalid = Error::LinkInvalid("invitation link is invalid or has expired");
        if token.is_empty() || token.len() > 128 {
            return Err(invalid);
        }
        if let Some(t) = self
            .tenant_of(dir)
            .await
            .map_err(|_| Error::LinkInvalid("invitation link is invalid or has expired"))?
        {
            t.status.check_writable()?;
        }
        self.passwords_allowed(dir).await?;
        self.store
            .invited_user(dir, &TokenHash::of(token), self.clock.now())
            .await?
            .ok_or(invalid)
    }

    /// Set the password with an invitation link: the user becomes `ACTIVE`, the token is spent,
    /// `USER_REGISTERED` is recorded. Of concurrent attempts with one token, one wins.
    pub async fn register(&self, dir: Directory, token: &str, password: &str, confirm: &str) -> Result<User> {
        let user = self.invitation(dir, token).await?;
        let mut p = Problems::new();
        let password = p.check(NewPassword::parse(password, self.config.password_min_chars, "password"));
        if password.is_some() && password.as_ref().map(|x| x.expose()) != Some(confirm) {
            p.push(FieldError::new("confirm", "mismatch", "The passwords do not match."));
        }
        p.finish()?;
        let Some(password) = password else {
            return Err(Error::internal("validation passed without a password"));
        };
        let hash = self.hasher.hash(&password, &*self.rng).await?;
        let event = self.new_event(
            EventType::UserRegistered,
            &crate::access::Actor::user(user.id, user.email.clone()),
            dir.tenant_id(),
            json!({ "user_id": user.id, "email": user.email, "tenant_id": dir.tenant_id(), "roles": user.roles, "status": "ACTIVE" }),
        )
        .publish(Published::user(
            Topic::UserActivated,
            &User {
                status: UserStatus::Active,
                ..user.clone()
            },
        ));
        self.store
            .accept_invitation(dir, &TokenHash::of(token), self.clock.now(), &hash, event)
            .await?
            .ok_or(Error::LinkInvalid("invitation link is invalid or has expired"))
    }

    /// Find tenant users by email across every tenant (platform callers who may read tenants).
    pub async fn find_tenant_users(&self, _auth: &Authorized<ReadTenants>, email: &str) -> Result<Vec<(Tenant, User)>> {
        let email = EmailAddress::parse(email)?;
        let mut found = Vec::new();
        for id in self.store.tenant_ids().await? {
            if let Some((user, _)) = self.store.user_by_email(Directory::Tenant(id), &email).await?
                && let Some(t) = self.store.tenant(id).await?
            {
                found.push((t, user));
            }
        }
        Ok(found)
    }
}

/// What "Add user" in the tenant's Settings → Users sends.
#[derive(Clone, Debug, Default)]
pub struct NewUserRequest {
    pub email: String,
    pub name: String,
    pub role: String,
    pub force_change: bool,
}

/// The alphabet of generated one-time passwords: no look-alikes, no whitespace.
const OTP_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghjkmnpqrstuvwxyz23456789";

impl Core {
    fn generate_otp(&self) -> String {
        let mut bytes = [0u8; 20];
        self.rng.fill(&mut bytes);
        // 20 characters from 55: ~115 bits. Rejection is not needed for a password (the tiny
        // bias of `% 56` costs well under a bit).
        bytes
            .iter()
            .map(|b| OTP_ALPHABET[usize::from(*b) % OTP_ALPHABET.len()] as char)
            .collect()
    }

    async fn otp_credential(&self, force_change: bool) -> Result<(String, crate::user::Credential)> {
        let otp = self.generate_otp();
        let hash = self
            .hasher
            .hash(&NewPassword::parse(&otp, 1, "password")?, &*self.rng)
            .await?;
        let credential = crate::user::Credential {
            hash,
            // Always: a one-time password expires and works once; `force_change` only says
            // whether the user must choose a new one before anything else.
            otp_expires_at: Some(self.clock.now() + self.config.otp_ttl),
            must_change: force_change,
        };
        Ok((otp, credential))
    }

    /// "Add user" with a generated one-time password, returned here once and never again
    /// (it is in no event, log or later response). `USER_CREATED`.
    pub async fn add_user_with_password(
        &self,
        auth: &InDirectory<'_, ManageDirectory>,
        req: NewUserRequest,
    ) -> Result<(User, String)> {
        let (by, dir) = (auth.principal(), auth.directory());
        let Directory::Tenant(own) = dir else {
            return Err(Error::field(
                "tenant_id",
                "tenant_required",
                "One-time passwords are for tenant users; invite platform users.",
            ));
        };
        self.may_manage(auth).await?;
        self.passwords_allowed(dir).await?;
        let mut p = Problems::new();
        let email = p.check(EmailAddress::parse(&req.email));
        let name = p.check(parse_display_name(&req.name));
        let roles = match self.grantable_roles(by, dir, std::slice::from_ref(&req.role)) {
            Err(Error::Forbidden) => return Err(Error::Forbidden),
            Err(Error::Validation(f)) => {
                for mut e in f {
                    e.field = "role".to_owned();
                    p.push(e);
                }
                None
            }
            other => p.check(other),
        };
        p.finish()?;
        let (Some(email), Some(name), Some(roles)) = (email, name, roles) else {
            return Err(Error::internal("validation passed without values"));
        };
        let user = User {
            id: UserId::new(),
            email,
            name,
            status: UserStatus::Active,
            roles,
            tenant_id: Some(own),
            created_at: self.clock.now(),
        };
        let (otp, credential) = self.otp_credential(req.force_change).await?;
        let event = self
            .new_event(
                EventType::UserCreated,
                &by.actor(),
                Some(own),
                json!({
                    "user_id": user.id, "email": user.email, "tenant_id": own, "roles": user.roles,
                    "status": "ACTIVE", "force_password_change": req.force_change,
                    "one_time_password_expires_at": credential.otp_expires_at.map(|t| t.unix_timestamp()),
                }),
            )
            .publish(Published::user(Topic::UserActivated, &user));
        self.store.create_user(&user, Some(&credential), None, event).await?;
        Ok((user, otp))
    }

    /// "Reset password": a new one-time password (returned once), the old password and the
    /// user's sessions dead, a change forced at the next sign-in. `PASSWORD_RESET`.
    pub async fn reset_password(&self, auth: &InDirectory<'_, ManageDirectory>, id: UserId) -> Result<String> {
        let (_, user) = self.target(auth, id).await?;
        let (by, dir) = (auth.principal(), auth.directory());
        if user.status == UserStatus::Invited {
            return Err(Error::Conflict {
                code: "not_registered",
                message: "This user has not registered yet: resend the invitation instead.".to_owned(),
            });
        }
        self.passwords_allowed(dir).await?;
        let (otp, credential) = self.otp_credential(true).await?;
        let event = self.new_event(
            EventType::PasswordReset,
            &by.actor(),
            dir.tenant_id(),
            json!({
                "user_id": id, "email": user.email, "tenant_id": dir.tenant_id(),
                "one_time_password_expires_at": credential.otp_expires_at.map(|t| t.unix_timestamp()),
            }),
        );
        self.store.set_password(dir, id, &credential, true, event).await?;
        Ok(otp)
    }
}
