//! Single sign-on: configuring a directory's identity provider, and deciding who a verified
//! answer from it signs in.
//!
//! The protocol work (redirects, token exchange, signatures) is the web layer's, through
//! `quarterdeck-sso`; it calls, in order, [`Core::begin_sso`], [`Core::take_sso_attempt`], its
//! protocol check, then [`Core::complete_sso`]. Accounts are found by (issuer, subject) first;
//! an email is used only to link an existing user of the provider's own directory, and only
//! when the provider says it is verified; auto-provisioning is off unless configured, and gives
//! tenant roles only.

use super::{ClientInfo, Core, SignedIn};
use crate::access::{Actor, Principal};
use crate::audit::EventType;
use crate::email::EmailAddress;
use crate::error::{Error, FieldError, Problems, Result};
use crate::ids::{TenantId, UserId};
use crate::role::{Capability, Scope};
use crate::sso::{
    ExternalLogin, IdentityProvider, OidcSettings, Protocol, ProtocolSettings, ProviderForm, SamlSettings, SignInMode,
    SsoAttempt, provider_url, required_text,
};
use crate::tenant::{Tenant, TenantStatus};
use crate::token::{Secret, TokenHash};
use crate::user::{Directory, User, UserStatus};
use crate::webhook::{Published, Topic};
use serde_json::json;
use time::Duration;

/// How long a sign-in may stay at the identity provider.
const ATTEMPT_TTL: Duration = Duration::minutes(10);
/// Most single sign-on attempts pending at once per identity provider (so per directory: one
/// tenant flooded cannot stop another's sign-ins): what an unauthenticated
/// flood of `/sso/start` can make the database hold (each also expires after [`ATTEMPT_TTL`]).
pub const MAX_PENDING_ATTEMPTS: u64 = 10_000;
/// The largest metadata document accepted.
const MAX_METADATA_BYTES: usize = 256 * 1024;

/// A checked configuration, before the web layer's outside checks (OIDC discovery, SAML
/// metadata) and the save.
#[derive(Clone, Debug)]
pub struct ProviderDraft {
    pub dir: Directory,
    pub display_name: String,
    pub mode: SignInMode,
    pub auto_provision: bool,
    pub default_roles: Vec<String>,
    pub default_tenant_id: Option<TenantId>,
    pub settings: ProtocolSettings,
    /// A new client secret (OIDC); `None` keeps the stored one.
    pub new_secret: Option<String>,
    /// The stored provider this replaces, if any.
    pub existing: Option<IdentityProvider>,
}

impl ProviderDraft {
    /// The client secret to check discovery and sign in with: the new one, or the stored one.
    pub fn client_secret(&self, core: &Core) -> Result<String> {
        match (&self.new_secret, &self.existing) {
            (Some(s), _) => Ok(s.clone()),
            (None, Some(p)) => core.client_secret(p),
            (None, None) => Ok(String::new()),
        }
    }
}

/// What a sign-in needs to send the browser to the provider.
#[derive(Debug)]
pub struct SsoStart {
    pub provider: IdentityProvider,
    /// The `state` (OIDC) or `RelayState` (SAML).
    pub state: Secret,
    /// The value of the browser-binding cookie.
    pub binding: Secret,
    pub nonce: String,
    pub pkce_verifier: String,
    pub saml_request_id: String,
}

impl Core {
    /// Who may configure `dir`'s provider. A provider decides who can sign in as whom, so it
    /// takes both configuration and user-management rights: for the platform's, platform
    /// configuration and users (the owner); for a tenant's, that tenant's configuration and
    /// users, from inside the tenant. Never through an impersonation or an API token.
    async fn may_configure_sso(&self, by: &Principal, dir: Directory) -> Result<Option<Tenant>> {
        if by.impersonation_id.is_some() || by.token_id.is_some() {
            return Err(Error::Forbidden);
        }
        match (by.tenant_id, dir) {
            (None, Directory::Platform) if by.can(&Capability::PlatformConfig) && by.can(&Capability::UsersManage) => {}
            (Some(own), Directory::Tenant(t))
                if own == t && by.can(&Capability::TenantConfig) && by.can(&Capability::TenantUsersManage) => {}
            (Some(_), _) => return Err(Error::NotFound),
            _ => return Err(Error::Forbidden),
        }
        self.tenant_of(dir).await
    }

    /// The provider of `dir`, for its settings page.
    pub async fn identity_provider(&self, by: &Principal, dir: Directory) -> Result<Option<IdentityProvider>> {
        self.may_configure_sso(by, dir).await?;
        self.store.identity_provider(dir).await
    }

    /// How users of `dir` sign in (built-in passwords when no provider is configured).
    pub async fn sign_in_mode(&self, dir: Directory) -> Result<SignInMode> {
        Ok(self
            .store
            .identity_provider(dir)
            .await?
            .map_or(SignInMode::Password, |p| p.mode))
    }

    /// The provider the sign-in page of `dir` offers, if any: its own; for a tenant without
    /// one, the platform's provider when this tenant is its default tenant.
    pub async fn sso_offer(&self, dir: Directory) -> Result<Option<IdentityProvider>> {
        match self.store.identity_provider(dir).await? {
            Some(own) => Ok(Some(own).filter(|p| p.mode.offers_sso())),
            None if dir == Directory::Platform => Ok(None),
            None => Ok(self
                .store
                .identity_provider(Directory::Platform)
                .await?
                .filter(|p| p.mode.offers_sso() && p.serves_as_platform_default(dir))),
        }
    }

    /// Refuse password-based steps (registration, one-time passwords) in an SSO-only directory.
    pub(crate) async fn passwords_allowed(&self, dir: Directory) -> Result<()> {
        if self.sign_in_mode(dir).await?.allows_passwords() {
            Ok(())
        } else {
            Err(Error::SsoOnly)
        }
    }

    /// The OIDC client secret of a stored provider.
    pub fn client_secret(&self, provider: &IdentityProvider) -> Result<String> {
        match &provider.sealed_secret {
            Some(sealed) => self.config.secret_key.open(sealed, provider.id),
            None => Ok(String::new()),
        }
    }

    /// Check a configuration form: field-level errors for everything wrong, nothing saved.
    pub async fn check_provider_form(&self, by: &Principal, dir: Directory, f: &ProviderForm) -> Result<ProviderDraft> {
        let tenant = self.may_configure_sso(by, dir).await?;
        if let Some(t) = &tenant {
            t.status.check_writable()?;
        }
        let existing = self.store.identity_provider(dir).await?;
        let mut p = Problems::new();
        let protocol = p.check(Protocol::parse(&f.protocol));
        let display_name = required_text(
            &mut p,
            "display_name",
            &f.display_name,
            60,
            "the name on the sign-in button",
        );
        let mode = p.check(SignInMode::parse(&f.mode));

        let default_roles = if f.auto_provision || f.default_roles.iter().any(|r| !r.trim().is_empty()) {
            match self.catalog().parse_roles(&f.default_roles) {
                Ok((Scope::Tenant, roles)) => {
                    for name in &roles {
                        let grantable = self.catalog().role(name).is_some_and(|r| by.may_grant(r));
                        if !grantable {
                            p.push(FieldError::new(
                                "default_roles",
                                "not_grantable",
                                format!("You cannot grant the role {name:?}, so new users cannot get it either."),
                            ));
                        }
                    }
                    roles
                }
                Ok((Scope::Platform, _)) => {
                    p.push(FieldError::new(
                        "default_roles",
                        "wrong_scope",
                        "New users get tenant roles only, never a platform role.",
                    ));
                    Vec::new()
                }
                Err(Error::Validation(mut errs)) => {
                    for e in &mut errs {
                        e.field = "default_roles".to_owned();
                    }
                    for e in errs {
                        p.push(e);
                    }
                    Vec::new()
                }
                Err(e) => return Err(e),
            }
        } else {
            Vec::new()
        };

        let default_tenant_id = match dir {
            Directory::Tenant(_) => None,
            Directory::Platform if f.default_tenant_id.trim().is_empty() => {
                if f.auto_provision {
                    p.push(FieldError::new(
                        "default_tenant_id",
                        "required",
                        "Choose the tenant new users are created in.",
                    ));
                }
                None
            }
            Directory::Platform => match f.default_tenant_id.trim().parse::<TenantId>() {
                Ok(id) if self.store.tenant(id).await?.is_some() => Some(id),
                _ => {
                    p.push(FieldError::new(
                        "default_tenant_id",
                        "unknown_tenant",
                        "There is no such tenant.",
                    ));
                    None
                }
            },
        };

        let mut new_secret = None;
        let settings = match protocol {
            Some(Protocol::Oidc) => {
                let issuer = provider_url(&mut p, "issuer", &f.issuer);
                let client_id = required_text(&mut p, "client_id", &f.client_id, 255, "the client id");
                let secret = f.client_secret.trim();
                // The stored secret is only kept for the same client at the same issuer: it is
                // never sent to a server it was not given for.
                let has_stored = existing.as_ref().is_some_and(|e| match &e.settings {
                    ProtocolSettings::Oidc(o) => {
                        e.sealed_secret.is_some() && o.issuer == f.issuer.trim() && o.client_id == f.client_id.trim()
                    }
                    ProtocolSettings::Saml(_) => false,
                });
                if secret.is_empty() && !has_stored {
                    p.push(FieldError::new("client_secret", "required", "Enter the client secret."));
                } else if secret.chars().count() > 1024 || secret.chars().any(char::is_control) {
                    p.push(FieldError::new(
                        "client_secret",
                        "invalid",
                        "A client secret is at most 1024 characters, on one line.",
                    ));
                } else if !secret.is_empty() {
                    new_secret = Some(secret.to_owned());
                }
                // None given: what every provider needs to say who someone is.
                let typed = if f.scopes.trim().is_empty() {
                    "email profile"
                } else {
                    f.scopes.as_str()
                };
                let scopes: Vec<String> = typed
                    .split(|c: char| c.is_whitespace() || c == ',')
                    .filter(|s| !s.is_empty() && *s != "openid")
                    .map(str::to_owned)
                    .collect();
                if scopes.len() > 20
                    || scopes
                        .iter()
                        .any(|s| s.len() > 64 || !s.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '\\'))
                {
                    p.push(FieldError::new(
                        "scopes",
                        "invalid",
                        "Scopes are words separated by spaces (at most 20).",
                    ));
                }
                let email_claim = claim_name(&mut p, "email_claim", &f.email_claim, "email");
                let name_claim = claim_name(&mut p, "name_claim", &f.name_claim, "name");
                match (issuer, client_id) {
                    (Some(issuer), Some(client_id)) => Some(ProtocolSettings::Oidc(OidcSettings {
                        issuer,
                        client_id,
                        scopes,
                        email_claim,
                        name_claim,
                    })),
                    _ => None,
                }
            }
            Some(Protocol::Saml) => {
                let xml = f.metadata_xml.trim();
                let url = f.metadata_url.trim();
                let metadata_url = if url.is_empty() {
                    None
                } else {
                    provider_url(&mut p, "metadata_url", url)
                };
                if xml.is_empty() && metadata_url.is_none() && url.is_empty() {
                    p.push(FieldError::new(
                        "metadata_xml",
                        "required",
                        "Paste the identity provider's metadata XML, or enter its metadata URL.",
                    ));
                }
                if xml.len() > MAX_METADATA_BYTES {
                    p.push(FieldError::new(
                        "metadata_xml",
                        "too_long",
                        "The metadata is at most 256 KB.",
                    ));
                }
                let email_attribute = claim_name(&mut p, "email_attribute", &f.email_attribute, "");
                let name_attribute = claim_name(&mut p, "name_attribute", &f.name_attribute, "");
                Some(ProtocolSettings::Saml(SamlSettings {
                    metadata_xml: xml.to_owned(),
                    metadata_url,
                    // Read from the metadata by the web layer's check.
                    idp_entity_id: String::new(),
                    email_attribute,
                    name_attribute,
                }))
            }
            None => None,
        };
        p.finish()?;
        let (Some(display_name), Some(mode), Some(settings)) = (display_name, mode, settings) else {
            return Err(Error::internal("validation passed without values"));
        };
        Ok(ProviderDraft {
            dir,
            display_name,
            mode,
            auto_provision: f.auto_provision,
            default_roles,
            default_tenant_id,
            settings,
            new_secret,
            existing,
        })
    }

    /// Save a checked configuration (after the web layer's outside checks), with
    /// `IDENTITY_PROVIDER_CONFIGURED`. The client secret is sealed; it is never in the event.
    pub async fn save_identity_provider(&self, by: &Principal, draft: ProviderDraft) -> Result<IdentityProvider> {
        let tenant = self.may_configure_sso(by, draft.dir).await?;
        if let Some(t) = &tenant {
            t.status.check_writable()?;
        }
        let now = self.clock.now();
        let id = draft.existing.as_ref().map_or_else(uuid::Uuid::now_v7, |e| e.id);
        let sealed_secret = match (&draft.settings, &draft.new_secret, &draft.existing) {
            (ProtocolSettings::Saml(_), _, _) => None,
            (ProtocolSettings::Oidc(_), Some(s), _) => Some(self.config.secret_key.seal(s, id, &*self.rng)?),
            (ProtocolSettings::Oidc(o), None, Some(e)) if matches!(&e.settings, ProtocolSettings::Oidc(old) if old.issuer == o.issuer && old.client_id == o.client_id) => {
                e.sealed_secret.clone()
            }
            (ProtocolSettings::Oidc(_), None, _) => {
                return Err(Error::field("client_secret", "required", "Enter the client secret."));
            }
        };
        let provider = IdentityProvider {
            id,
            tenant_id: draft.dir.tenant_id(),
            display_name: draft.display_name,
            mode: draft.mode,
            auto_provision: draft.auto_provision,
            default_roles: draft.default_roles,
            default_tenant_id: draft.default_tenant_id,
            settings: draft.settings,
            sealed_secret,
            created_at: draft.existing.as_ref().map_or(now, |e| e.created_at),
            updated_at: now,
        };
        let mut details = json!({
            "provider_id": provider.id,
            "tenant_id": provider.tenant_id,
            "protocol": provider.protocol().as_str(),
            "display_name": provider.display_name,
            "mode": provider.mode.as_str(),
            "auto_provision": provider.auto_provision,
            "default_roles": provider.default_roles,
            "default_tenant_id": provider.default_tenant_id,
            "created": draft.existing.is_none(),
            "client_secret_changed": draft.new_secret.is_some(),
        });
        match &provider.settings {
            ProtocolSettings::Oidc(o) => {
                details["issuer"] = json!(o.issuer);
                details["client_id"] = json!(o.client_id);
            }
            ProtocolSettings::Saml(s) => {
                details["idp_entity_id"] = json!(s.idp_entity_id);
                details["metadata_url"] = json!(s.metadata_url);
            }
        }
        let event = self.new_event(
            EventType::IdentityProviderConfigured,
            &by.actor(),
            provider.tenant_id,
            details,
        );
        self.store.put_identity_provider(&provider, event).await?;
        Ok(provider)
    }

    /// Remove `dir`'s provider: its users sign in with passwords again (linked identities are
    /// kept, so configuring the same provider again finds the same accounts).
    pub async fn delete_identity_provider(&self, by: &Principal, dir: Directory) -> Result<()> {
        let tenant = self.may_configure_sso(by, dir).await?;
        if let Some(t) = &tenant {
            t.status.check_writable()?;
        }
        let Some(existing) = self.store.identity_provider(dir).await? else {
            return Err(Error::NotFound);
        };
        let event = self.new_event(
            EventType::IdentityProviderDeleted,
            &by.actor(),
            dir.tenant_id(),
            json!({ "provider_id": existing.id, "tenant_id": dir.tenant_id(), "protocol": existing.protocol().as_str() }),
        );
        if !self.store.delete_identity_provider(dir, event).await? {
            return Err(Error::NotFound);
        }
        Ok(())
    }

    /// Start a sign-in with `dir`'s provider: the single-use attempt the answer must match.
    pub async fn begin_sso(&self, dir: Directory) -> Result<SsoStart> {
        let tenant = self.tenant_of(dir).await?;
        if tenant.as_ref().is_some_and(|t| t.status == TenantStatus::Suspended) {
            return Err(Error::TenantSuspended);
        }
        let provider = self.sso_offer(dir).await?.ok_or(Error::SsoFailed("not_configured"))?;
        let now = self.clock.now();
        let state = Secret::generate(&*self.rng, "");
        let binding = Secret::generate(&*self.rng, "");
        let nonce = Secret::generate(&*self.rng, "").expose().to_owned();
        let pkce_verifier = Secret::generate(&*self.rng, "").expose().to_owned();
        let mut id = [0u8; 16];
        self.rng.fill(&mut id);
        let saml_request_id = format!("_{}", hex::encode(id));
        let attempt = SsoAttempt {
            state_hash: state.hash(),
            provider_id: provider.id,
            tenant_id: dir.tenant_id(),
            binding_hash: binding.hash(),
            nonce: nonce.clone(),
            pkce_verifier: pkce_verifier.clone(),
            saml_request_id: (provider.protocol() == Protocol::Saml).then(|| saml_request_id.clone()),
            outcome: None,
            created_at: now,
            expires_at: now + ATTEMPT_TTL,
        };
        if !self.store.put_sso_attempt(&attempt, MAX_PENDING_ATTEMPTS).await? {
            tracing::warn!(
                cap = MAX_PENDING_ATTEMPTS,
                "single sign-on attempts pending reached the cap; new sign-ins wait"
            );
            return Err(Error::Throttled { retry_after_secs: 60 });
        }
        Ok(SsoStart {
            provider,
            state,
            binding,
            nonce,
            pkce_verifier,
            saml_request_id,
        })
    }

    /// Spend the attempt an answer names (by its `state` / `RelayState`), with its provider.
    /// `binding` is the browser-binding cookie: required to match, except at the SAML ACS,
    /// where the identity provider's cross-site POST carries no cookie (`None`); the browser's
    /// own request that follows must then present it ([`Self::park_saml_outcome`]).
    pub async fn take_sso_attempt(
        &self,
        dir: Directory,
        state: &str,
        binding: Option<&str>,
        client: &ClientInfo,
    ) -> Result<(SsoAttempt, IdentityProvider)> {
        let now = self.clock.now();
        let attempt = match self.store.take_sso_attempt(&TokenHash::of(state), now).await? {
            Some(a) if a.tenant_id == dir.tenant_id() => a,
            _ => {
                return Err(self
                    .sso_refused(dir, None, "attempt_invalid", "unknown state", client)
                    .await);
            }
        };
        if let Some(b) = binding
            && TokenHash::of(b) != attempt.binding_hash
        {
            return Err(self
                .sso_refused(
                    dir,
                    None,
                    "attempt_invalid",
                    "answer came back to another browser",
                    client,
                )
                .await);
        }
        match self.sso_offer(dir).await? {
            Some(p) if p.id == attempt.provider_id => Ok((attempt, p)),
            other => Err(self
                .sso_refused(
                    dir,
                    other.as_ref(),
                    "not_configured",
                    "provider changed during sign-in",
                    client,
                )
                .await),
        }
    }

    /// Keep a SAML answer verified at the ACS until the same browser comes back for it.
    pub async fn park_saml_outcome(&self, mut attempt: SsoAttempt, login: ExternalLogin) -> Result<()> {
        let now = self.clock.now();
        attempt.outcome = Some(login);
        attempt.expires_at = attempt.expires_at.min(now + Duration::minutes(2));
        // A verified answer taking the place of its own (spent) attempt: never refused by the cap.
        self.store.put_sso_attempt(&attempt, u64::MAX).await.map(|_| ())
    }

    /// Refuse a SAML assertion whose id was seen before.
    pub async fn check_assertion_replay(
        &self,
        dir: Directory,
        provider: &IdentityProvider,
        assertion_id: &str,
        expires_at: time::OffsetDateTime,
        client: &ClientInfo,
    ) -> Result<()> {
        // Remember it at least as long as it could be accepted (with the allowed skew).
        let keep_until = expires_at.max(self.clock.now()) + Duration::minutes(5);
        if self
            .store
            .record_assertion_id(provider.id, assertion_id, keep_until)
            .await?
        {
            Ok(())
        } else {
            Err(self
                .sso_refused(dir, Some(provider), "replayed", "assertion id used before", client)
                .await)
        }
    }

    /// Record a refused single sign-on (`SIGN_IN_FAILED` with the reason and the protocol's
    /// finding) and return the error to show.
    pub async fn sso_refused(
        &self,
        dir: Directory,
        provider: Option<&IdentityProvider>,
        reason: &'static str,
        detail: &str,
        client: &ClientInfo,
    ) -> Error {
        tracing::info!(reason, detail, tenant_id = ?dir.tenant_id(), "single sign-on refused");
        let detail: String = detail.chars().take(300).collect();
        let event = self.new_event(
            EventType::SignInFailed,
            &Actor::system(),
            dir.tenant_id(),
            json!({
                "method": "sso", "reason": reason, "detail": detail,
                "provider_id": provider.map(|p| p.id), "ip": client.ip,
            }),
        );
        match self.store.append_event(event).await {
            Ok(()) => {
                // Counted once its event is written (a failure to write it is counted as an
                // `error` by the caller instead).
                self.meters
                    .sso_sign_in(provider.map_or("unknown", |p| p.protocol().as_str()), reason);
                Error::SsoFailed(reason)
            }
            Err(e) => e,
        }
    }

    /// Who a verified answer signs in, on the host of `dir`: the account linked to its
    /// (issuer, subject), else an *invited* user of `dir` with that verified email (linked now,
    /// and active), else — only if enabled, and only in a tenant — a new user with the default
    /// roles. An existing active account is never taken over by email; a suspended user, a
    /// suspended tenant or an unverified email signs nobody in.
    pub async fn complete_sso(
        &self,
        dir: Directory,
        provider: &IdentityProvider,
        login: ExternalLogin,
        client: &ClientInfo,
    ) -> Result<(Secret, SignedIn)> {
        let result = self.sign_in_with_sso(dir, provider, login, client).await;
        match &result {
            Ok(_) => self.meters.sso_sign_in(provider.protocol().as_str(), "success"),
            // Counted with their reason where they were refused (`sso_refused`).
            Err(Error::SsoFailed(_) | Error::TenantSuspended) => {}
            Err(_) => self.meters.sso_sign_in(provider.protocol().as_str(), "error"),
        }
        result
    }

    async fn sign_in_with_sso(
        &self,
        dir: Directory,
        provider: &IdentityProvider,
        login: ExternalLogin,
        client: &ClientInfo,
    ) -> Result<(Secret, SignedIn)> {
        let refuse = |reason: &'static str, detail: String| async move {
            self.sso_refused(dir, Some(provider), reason, &detail, client).await
        };
        if provider.directory() != dir && !provider.serves_as_platform_default(dir) {
            return Err(refuse("not_configured", "the provider does not serve this host".to_owned()).await);
        }
        if login.subject.trim().is_empty() || login.issuer.trim().is_empty() {
            return Err(refuse("invalid_response", "no issuer or subject".to_owned()).await);
        }
        // In its default tenant, the platform's provider finds only the identities it linked.
        let only_mine = provider.serves_as_platform_default(dir).then_some(provider.id);
        let now = self.clock.now();
        let linked = self
            .store
            .user_by_identity(dir, &login.issuer, &login.subject, only_mine)
            .await?;
        let user = match linked {
            Some(user) => {
                if user.status != UserStatus::Active {
                    return Err(refuse(
                        "user_suspended",
                        format!("user {} is {}", user.id, user.status.as_str()),
                    )
                    .await);
                }
                self.check_tenant_for_sign_in(dir, provider, client).await?;
                self.store
                    .touch_identity(dir, &login.issuer, &login.subject, now)
                    .await?;
                user
            }
            None => {
                let email = match (&login.email, login.email_verified) {
                    (Some(e), true) => match EmailAddress::parse(e) {
                        Ok(e) => e,
                        Err(_) => {
                            return Err(refuse("invalid_response", "email claim is not an address".to_owned()).await);
                        }
                    },
                    _ => {
                        return Err(refuse(
                            "email_not_verified",
                            format!("subject {} has no verified email", login.subject),
                        )
                        .await);
                    }
                };
                match self.store.user_by_email(dir, &email).await? {
                    Some((user, _)) if user.status == UserStatus::Invited => {
                        self.link(dir, provider, &login, user, client).await?
                    }
                    Some((user, _)) if user.status == UserStatus::Suspended => {
                        return Err(refuse("user_suspended", format!("user {} is suspended", user.id)).await);
                    }
                    Some((user, _)) => {
                        return Err(refuse(
                            "account_exists",
                            format!("user {} is active and not linked to this identity", user.id),
                        )
                        .await);
                    }
                    None => self.provision(dir, provider, &login, email, client).await?,
                }
            }
        };
        self.start_session(dir, &user, false, client, sso_details(provider, &login))
            .await
    }

    async fn check_tenant_for_sign_in(
        &self,
        d: Directory,
        provider: &IdentityProvider,
        client: &ClientInfo,
    ) -> Result<()> {
        if let Some(t) = self.tenant_of(d).await?
            && t.status == TenantStatus::Suspended
        {
            self.sso_refused(d, Some(provider), "user_suspended", "tenant suspended", client)
                .await;
            return Err(Error::TenantSuspended);
        }
        Ok(())
    }

    /// Link an invited user found by verified email; they become active.
    async fn link(
        &self,
        d: Directory,
        provider: &IdentityProvider,
        login: &ExternalLogin,
        user: User,
        client: &ClientInfo,
    ) -> Result<User> {
        if user.status == UserStatus::Suspended {
            return Err(self
                .sso_refused(
                    d,
                    Some(provider),
                    "user_suspended",
                    &format!("user {} is suspended", user.id),
                    client,
                )
                .await);
        }
        if user.status == UserStatus::Invited
            && self
                .store
                .invitation_state(d, user.id)
                .await?
                .is_some_and(|i| i.revoked)
        {
            return Err(self
                .sso_refused(
                    d,
                    Some(provider),
                    "not_provisioned",
                    "the invitation was revoked",
                    client,
                )
                .await);
        }
        self.check_tenant_for_sign_in(d, provider, client).await?;
        if let Some(t) = self.tenant_of(d).await? {
            t.status.check_writable()?;
        }
        let now = self.clock.now();
        let linked = self.new_event(
            EventType::UserLinked,
            &Actor::user(user.id, user.email.clone()),
            d.tenant_id(),
            json!({
                "user_id": user.id, "email": user.email, "tenant_id": d.tenant_id(),
                "provider_id": provider.id, "issuer": login.issuer, "subject": login.subject,
                "previous_status": user.status.as_str(), "status": "ACTIVE",
            }),
        );
        // Only an invited user becomes active by linking; an active one stays as they were.
        let event = if user.status == UserStatus::Invited {
            linked.publish(Published::user(
                Topic::UserActivated,
                &User {
                    status: UserStatus::Active,
                    ..user.clone()
                },
            ))
        } else {
            linked
        };
        match self
            .store
            .link_identity(d, user.id, provider.id, login, now, event)
            .await
        {
            Ok(()) => {}
            // Suspended or deleted meanwhile (the suspension wins), or linked by a concurrent
            // answer: nobody is signed in, nothing was written.
            Err(Error::NotFound | Error::Validation(_)) => {
                return Err(self
                    .sso_refused(
                        d,
                        Some(provider),
                        "attempt_invalid",
                        "the user changed during sign-in",
                        client,
                    )
                    .await);
            }
            Err(e) => return Err(e),
        }
        self.store.user(d, user.id).await?.ok_or(Error::NotFound)
    }

    /// Create a user of the tenant `target` for someone unknown, if the provider allows it
    /// (never a platform user).
    async fn provision(
        &self,
        target: Directory,
        provider: &IdentityProvider,
        login: &ExternalLogin,
        email: EmailAddress,
        client: &ClientInfo,
    ) -> Result<User> {
        if !provider.auto_provision || provider.default_roles.is_empty() || target == Directory::Platform {
            return Err(self
                .sso_refused(
                    target,
                    Some(provider),
                    "not_provisioned",
                    "no account and auto-provisioning is off",
                    client,
                )
                .await);
        }
        // Only tenant roles, whatever is stored.
        let roles = match self.catalog().parse_roles(&provider.default_roles) {
            Ok((Scope::Tenant, roles)) => roles,
            _ => return Err(Error::internal("a provider's default roles are not tenant roles")),
        };
        let tenant = self.tenant_of(target).await?;
        if let Some(t) = &tenant {
            if t.status == TenantStatus::Suspended {
                self.sso_refused(target, Some(provider), "user_suspended", "tenant suspended", client)
                    .await;
            }
            t.status.check_writable()?;
        }
        let name = login
            .name
            .as_deref()
            .and_then(|n| crate::user::parse_display_name(n).ok().flatten());
        let user = User {
            id: UserId::new(),
            email,
            name,
            status: UserStatus::Active,
            roles,
            tenant_id: target.tenant_id(),
            created_at: self.clock.now(),
        };
        let event = self
            .new_event(
                EventType::UserProvisioned,
                &Actor::user(user.id, user.email.clone()),
                target.tenant_id(),
                json!({
                    "user_id": user.id, "email": user.email, "tenant_id": target.tenant_id(),
                    "roles": user.roles, "status": "ACTIVE", "provider_id": provider.id,
                    "issuer": login.issuer, "subject": login.subject,
                }),
            )
            .publish(Published::user(Topic::UserActivated, &user));
        match self.store.provision_user(&user, provider.id, login, event).await {
            Ok(()) => Ok(user),
            // Someone took the email (or the identity) a moment ago: nothing was written.
            Err(Error::Validation(_)) => Err(self
                .sso_refused(
                    target,
                    Some(provider),
                    "not_provisioned",
                    "the email or identity was taken concurrently",
                    client,
                )
                .await),
            Err(e) => Err(e),
        }
    }
}

fn sso_details(provider: &IdentityProvider, login: &ExternalLogin) -> serde_json::Value {
    json!({
        "method": "sso", "provider_id": provider.id, "protocol": provider.protocol().as_str(),
        "issuer": login.issuer, "subject": login.subject,
    })
}

/// A claim or attribute name: empty means `default`.
fn claim_name(p: &mut Problems, field: &str, value: &str, default: &str) -> String {
    let v = value.trim();
    if v.is_empty() {
        return default.to_owned();
    }
    if v.len() > 255 || v.chars().any(|c| c.is_control() || c.is_whitespace()) {
        p.push(FieldError::new(
            field,
            "invalid",
            "A claim name is one word, at most 255 characters.",
        ));
        return default.to_owned();
    }
    v.to_owned()
}
