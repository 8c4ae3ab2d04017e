//! First run: the one-time setup link and the bootstrap owner.

use super::Core;
use crate::access::Actor;
use crate::audit::EventType;
use crate::email::EmailAddress;
use crate::error::{Error, Problems, Result};
use crate::ids::UserId;
use crate::password::NewPassword;
use crate::token::{Secret, TokenHash};
use crate::user::{User, UserStatus};
use serde_json::json;

impl Core {
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
    ) -> Result<User> {
        if !self.setup_token_valid(token).await? {
            return Err(Error::LinkInvalid("This setup link is invalid, spent or expired."));
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
            .create_owner_with_setup_token(&TokenHash::of(token), self.clock.now(), &user, &hash, event)
            .await?;
        if created {
            Ok(user)
        } else {
            Err(Error::LinkInvalid("This setup link is invalid, spent or expired."))
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
        self.store
            .create_user(&user, Some(&crate::user::Credential::password(hash)), None, event)
            .await?;
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
        let password = p.check(NewPassword::parse(password, self.config.password_min_chars, "password"));
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

    fn new_owner(&self, email: EmailAddress, name: Option<String>) -> User {
        User {
            id: UserId::new(),
            email,
            name,
            status: UserStatus::Active,
            roles: vec!["owner".to_owned()],
            tenant_id: None,
            created_at: self.clock.now(),
        }
    }
}
