//! Sign-in, sessions, sign-out and password changes, on the base host and on tenant hosts.

use super::{ClientInfo, Core, SignedIn};
use crate::access::Actor;
use crate::audit::EventType;
use crate::email::EmailAddress;
use crate::error::{Error, FieldError, Problems, Result};
use crate::password::NewPassword;
use crate::session::Session;
use crate::tenant::TenantStatus;
use crate::token::{Secret, TokenHash};
use crate::user::{Directory, User, UserStatus};
use serde_json::json;

impl Core {
    /// Check the email and password of a user of `dir`; on success start a new session (a new
    /// id, whatever the client had before). Unknown email, wrong password, a user who has not
    /// registered yet or is suspended: the same error after the same work (a full Argon2id
    /// verification). A suspended tenant's users cannot sign in.
    pub async fn sign_in(
        &self,
        dir: Directory,
        email: &str,
        password: &str,
        client: &ClientInfo,
    ) -> Result<(Secret, SignedIn)> {
        let result = self.check_sign_in(dir, email, password, client).await;
        self.meters.sign_in(match &result {
            Ok(_) => "success",
            Err(Error::InvalidCredentials) => "invalid_credentials",
            Err(Error::Throttled { .. }) => "throttled",
            Err(Error::TenantSuspended) => "tenant_suspended",
            Err(Error::Busy) => "busy",
            Err(_) => "error",
        });
        result
    }

    async fn check_sign_in(
        &self,
        dir: Directory,
        email: &str,
        password: &str,
        client: &ClientInfo,
    ) -> Result<(Secret, SignedIn)> {
        let now = self.clock.now();
        let tenant = self.tenant_of(dir).await?;
        if tenant.as_ref().is_some_and(|t| t.status == TenantStatus::Suspended) {
            return Err(Error::TenantSuspended);
        }
        let account_key = account_key(dir, email);
        let address_key = client.network();
        let guess = self.begin_guess(&account_key, &address_key, now).await?;

        // In an SSO-only directory no password signs anyone in; the answer (and the work
        // before it) is the same as for a wrong password.
        let passwords_allowed = self.sign_in_mode(dir).await?.allows_passwords();
        let found = match EmailAddress::parse(email) {
            Ok(e) => self.store.user_by_email(dir, &e).await?,
            Err(_) => None,
        };
        let stored = found.as_ref().and_then(|(_, c)| c.as_ref());
        // A generated one-time password never contains whitespace: what was pasted around it
        // is ignored.
        let typed = if stored.is_some_and(|c| c.is_otp()) {
            password.trim()
        } else {
            password
        };
        let verified = self.hasher.verify(typed, stored.map(|c| c.hash.as_str())).await?;
        let mut reason = if passwords_allowed {
            "invalid_credentials"
        } else {
            "sso_only"
        };
        let accepted = match &found {
            Some((user, Some(c)))
                if verified && c.usable(now) && passwords_allowed && user.status == UserStatus::Active =>
            {
                // A one-time password is spent by a conditional update: of concurrent
                // sign-ins with it, exactly one wins; the others fail like a wrong password.
                let won = !c.is_otp() || self.store.spend_otp(dir, user.id, &c.hash, now).await?;
                if !won {
                    reason = "one_time_password_spent";
                }
                won
            }
            _ => false,
        };
        let must_change = stored.is_some_and(|c| c.must_change);
        let user = match found {
            Some((user, Some(_))) if accepted => user,
            found => {
                guess.failed(now).await?;
                let actor = match &found {
                    Some((u, _)) => Actor::user(u.id, u.email.clone()),
                    None => Actor::system(),
                };
                let typed: String = email.trim().to_ascii_lowercase().chars().take(254).collect();
                let event = self.new_event(
                    EventType::SignInFailed,
                    &actor,
                    dir.tenant_id(),
                    json!({ "email": typed, "ip": client.ip, "reason": reason }),
                );
                self.store.append_event(event).await?;
                return Err(Error::InvalidCredentials);
            }
        };
        guess.succeeded(now).await?;

        self.start_session(dir, &user, must_change, client, json!({ "method": "password" }))
            .await
    }

    /// A new session for `user` on the host of `dir` (a new id, whatever the client had), with
    /// `SIGN_IN_SUCCEEDED` (`details` say how: password or single sign-on).
    pub(crate) async fn start_session(
        &self,
        dir: Directory,
        user: &User,
        must_change: bool,
        client: &ClientInfo,
        mut details: serde_json::Value,
    ) -> Result<(Secret, SignedIn)> {
        let now = self.clock.now();
        let tenant = self.tenant_of(dir).await?;
        let secret = Secret::generate(&*self.rng, "");
        let csrf = Secret::generate(&*self.rng, "");
        let session = Session {
            id_hash: secret.hash(),
            user_id: user.id,
            tenant_id: dir.tenant_id(),
            csrf_token: csrf.expose().to_owned(),
            created_at: now,
            last_seen_at: now,
            expires_at: now + self.config.sessions.absolute,
            user_agent: client.user_agent.clone().map(|ua| ua.chars().take(256).collect()),
            ip: client.ip.clone(),
            impersonation_id: None,
            must_change_password: must_change,
        };
        self.store.create_session(&session).await?;
        let principal = self.principal_of(user);
        details["user_id"] = json!(user.id);
        details["ip"] = json!(client.ip);
        let event = self.new_event(EventType::SignInSucceeded, &principal.actor(), dir.tenant_id(), details);
        self.store.append_event(event).await?;
        Ok((
            secret,
            SignedIn {
                session,
                principal,
                user: user.clone(),
                tenant,
                impersonation: None,
            },
        ))
    }

    /// The live session behind a cookie value on the host of `dir`, if any. Ends sessions past
    /// their limits; refuses users who are no longer active, and every session of a suspended
    /// or deleted tenant.
    pub async fn session(&self, dir: Directory, cookie_value: &str) -> Result<Option<SignedIn>> {
        let hash = TokenHash::of(cookie_value);
        let Some(session) = self.store.session(&hash).await? else {
            return Ok(None);
        };
        if Directory::of(session.tenant_id) != dir {
            // Made on another host: worthless here (the cookie is host-only anyway).
            return Ok(None);
        }
        let now = self.clock.now();
        if let Some(imp_id) = session.impersonation_id {
            return self.impersonation_session(session, imp_id, now).await;
        }
        if !self.config.sessions.is_live(&session, now) {
            self.store.delete_session(&hash).await?;
            return Ok(None);
        }
        let tenant = match dir {
            Directory::Platform => None,
            Directory::Tenant(id) => match self.store.tenant(id).await? {
                Some(t) if t.status != TenantStatus::Suspended => Some(t),
                _ => {
                    self.store.delete_tenant_sessions(id).await?;
                    return Ok(None);
                }
            },
        };
        let Some(user) = self.store.user(dir, session.user_id).await? else {
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
        let principal = self.principal_of(&user);
        Ok(Some(SignedIn {
            session,
            principal,
            user,
            tenant,
            impersonation: None,
        }))
    }

    /// Sign out. Signing out of an impersonation ends it (`IMPERSONATION_ENDED`, reason
    /// `signed_out`) with its session.
    pub async fn sign_out(&self, signed_in: &SignedIn) -> Result<()> {
        if let Some(imp) = &signed_in.impersonation {
            return self.end_impersonation(imp, "signed_out").await;
        }
        self.store.delete_session(&signed_in.session.id_hash).await?;
        let event = self.new_event(
            EventType::SignedOut,
            &signed_in.principal.actor(),
            signed_in.user.tenant_id,
            json!({ "user_id": signed_in.user.id }),
        );
        self.store.append_event(event).await
    }

    /// Change one's own password (current password required). Every session of the user ends
    /// and a new one starts for this browser (a new id, returned). A wrong current password is
    /// a guess: it counts against the sign-in throttle of the account and the client's address
    /// (which then answers `Throttled` here and at sign-in) and is recorded
    /// (`PASSWORD_CHANGE_FAILED`).
    pub async fn change_password(
        &self,
        signed_in: &SignedIn,
        current: &str,
        new: &str,
        confirm: &str,
        client: &ClientInfo,
    ) -> Result<Secret> {
        if signed_in.impersonation.is_some() {
            // An impersonation never changes the impersonator's credentials.
            return Err(Error::Forbidden);
        }
        let now = self.clock.now();
        let dir = signed_in.user.directory();
        let account_key = account_key(dir, signed_in.user.email.as_str());
        let address_key = client.network();
        let guess = self.begin_guess(&account_key, &address_key, now).await?;
        let mut p = Problems::new();
        let new = p.check(NewPassword::parse(new, self.config.password_min_chars, "new_password"));
        if new.is_some() && new.as_ref().map(|n| n.expose()) != Some(confirm) {
            p.push(FieldError::new("confirm", "mismatch", "The passwords do not match."));
        }
        p.finish()?;
        let Some(new) = new else {
            return Err(Error::internal("validation passed without a password"));
        };
        let stored = self
            .store
            .user_by_email(dir, &signed_in.user.email)
            .await?
            .and_then(|(_, c)| c);
        if !self
            .hasher
            .verify(current, stored.as_ref().map(|c| c.hash.as_str()))
            .await?
        {
            guess.failed(now).await?;
            let event = self.new_event(
                EventType::PasswordChangeFailed,
                &signed_in.principal.actor(),
                signed_in.user.tenant_id,
                json!({ "user_id": signed_in.user.id, "ip": client.ip, "reason": "wrong_current_password" }),
            );
            self.store.append_event(event).await?;
            return Err(Error::field(
                "current_password",
                "wrong_password",
                "The current password is not correct.",
            ));
        }
        guess.succeeded(now).await?;
        self.store_new_password(signed_in, &new).await?;
        self.replace_sessions(signed_in).await
    }

    /// After a password change: every session of the user ends, and this browser gets a new
    /// one (a new id) that is not held to a forced change.
    async fn replace_sessions(&self, signed_in: &SignedIn) -> Result<Secret> {
        self.store.delete_user_sessions(signed_in.user.id, None).await?;
        let now = self.clock.now();
        let secret = Secret::generate(&*self.rng, "");
        let csrf = Secret::generate(&*self.rng, "");
        let session = Session {
            id_hash: secret.hash(),
            csrf_token: csrf.expose().to_owned(),
            created_at: now,
            last_seen_at: now,
            expires_at: now + self.config.sessions.absolute,
            must_change_password: false,
            ..signed_in.session.clone()
        };
        self.store.create_session(&session).await?;
        Ok(secret)
    }

    async fn store_new_password(&self, signed_in: &SignedIn, new: &NewPassword) -> Result<()> {
        let hash = self.hasher.hash(new, &*self.rng).await?;
        let event = self.new_event(
            EventType::PasswordChanged,
            &signed_in.principal.actor(),
            signed_in.user.tenant_id,
            json!({ "user_id": signed_in.user.id, "email": signed_in.user.email }),
        );
        let dir = signed_in.user.directory();
        self.store
            .set_password(
                dir,
                signed_in.user.id,
                &crate::user::Credential::password(hash),
                false,
                event,
            )
            .await
    }

    /// The change after a one-time password: no current password asked (they have just
    /// signed in with it, and it works no more). For a forced change, or a user whose password
    /// is still the (spent) one-time password they signed in with. Every session of the user
    /// ends, and a new one starts (a new id).
    pub async fn change_forced_password(&self, signed_in: &SignedIn, new: &str, confirm: &str) -> Result<Secret> {
        if signed_in.impersonation.is_some() {
            return Err(Error::Forbidden);
        }
        if !signed_in.session.must_change_password {
            let stored = self
                .store
                .user_by_email(signed_in.user.directory(), &signed_in.user.email)
                .await?
                .and_then(|(_, c)| c);
            if !stored.is_some_and(|c| c.is_otp()) {
                return Err(Error::Forbidden);
            }
        }
        let mut p = Problems::new();
        let new = p.check(NewPassword::parse(new, self.config.password_min_chars, "new_password"));
        if new.is_some() && new.as_ref().map(|n| n.expose()) != Some(confirm) {
            p.push(FieldError::new("confirm", "mismatch", "The passwords do not match."));
        }
        p.finish()?;
        let Some(new) = new else {
            return Err(Error::internal("validation passed without a password"));
        };
        self.store_new_password(signed_in, &new).await?;
        self.replace_sessions(signed_in).await
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
            signed_in.user.tenant_id,
            json!({ "user_id": signed_in.user.id, "sessions_ended": n }),
        );
        self.store.append_event(event).await?;
        Ok(n)
    }
}

/// The throttle's name for an account: its directory and the email as typed (normalised), so
/// unknown accounts are throttled like known ones.
/// The throttle's account key: the directory and the typed email, lower-cased, at most 254
/// characters (no address is longer; a longer one is an unknown user and fails like one).
fn account_key(dir: Directory, email: &str) -> String {
    let email: String = email.trim().to_ascii_lowercase().chars().take(254).collect();
    format!("{}:{email}", dir.tenant_id().map(|t| t.to_string()).unwrap_or_default())
}
