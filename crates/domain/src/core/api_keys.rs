//! Tenant API keys (portal, console and Automation API) and service tokens (console, CLI).
//! Verification by the data plane is in `data_plane.rs`.

use super::Core;
use crate::access::{Authorized, InTenant, ManageApiKeys, ManageServiceTokens, ReadApiKeys};
use crate::api_key::{ApiKey, NewApiKey, NewApiKeyRequest, last_four, parse_grace};
use crate::audit::EventType;
use crate::error::{Error, Result};
use crate::service_token::{NewServiceToken, NewServiceTokenRequest, SERVICE_TOKEN_PREFIX, ServiceToken};
use crate::store::ChangeKind;
use crate::token::Secret;
use crate::user::Directory;
use crate::webhook::{Published, Topic};
use serde_json::json;
use uuid::Uuid;

impl Core {
    /// A new key in the proof's tenant; the secret is returned once. Refused in a read-only or
    /// suspended tenant.
    pub async fn create_api_key(
        &self,
        auth: &InTenant<ManageApiKeys>,
        req: NewApiKeyRequest,
    ) -> Result<(ApiKey, Secret)> {
        let tenant = auth.tenant();
        self.writable_tenant(Directory::Tenant(tenant)).await?;
        let new = NewApiKey::parse(&req, &self.config.api_keys)?;
        let now = self.clock.now();
        let secret = Secret::generate(self.rng.as_ref(), &self.config.api_keys.prefix);
        let key = ApiKey {
            id: Uuid::now_v7(),
            tenant_id: tenant,
            name: new.name,
            scopes: new.scopes,
            prefix: self.config.api_keys.prefix.clone(),
            last_four: last_four(secret.expose()),
            requests_per_minute: new.requests_per_minute,
            created_by: auth.actor().email.clone(),
            created_at: now,
            expires_at: new.expires_in.map(|d| now + d),
            last_used_at: None,
            rolled_at: None,
            revoked_at: None,
        };
        let event = self
            .new_event(
                EventType::ApiKeyCreated,
                auth.actor(),
                Some(tenant),
                json!({
                    "key_id": key.id,
                    "name": key.name,
                    "scopes": key.scopes,
                    "expires_at": key.expires_at.map(super::rfc3339),
                    "requests_per_minute": key.requests_per_minute,
                }),
            )
            .publish(Published::api_key(Topic::ApiKeyCreated, &key));
        self.store.create_api_key(&key, &secret.hash(), event).await?;
        Ok((key, secret))
    }

    /// The tenant's keys, newest first (metadata only).
    pub async fn api_keys(&self, auth: &InTenant<ReadApiKeys>) -> Result<Vec<ApiKey>> {
        self.tenant_of(Directory::Tenant(auth.tenant())).await?;
        self.store.api_keys_of(auth.tenant()).await
    }

    pub async fn api_key(&self, auth: &InTenant<ReadApiKeys>, id: Uuid) -> Result<ApiKey> {
        self.tenant_of(Directory::Tenant(auth.tenant())).await?;
        self.store.api_key(auth.tenant(), id).await?.ok_or(Error::NotFound)
    }

    /// How many live keys the tenant has (the portal's dashboard).
    pub async fn api_key_count(&self, auth: &InTenant<ReadApiKeys>) -> Result<u64> {
        self.store.api_key_count(auth.tenant()).await
    }

    /// A new secret for the key; the old one keeps working for `grace_seconds` (0 to 7 days).
    pub async fn roll_api_key(
        &self,
        auth: &InTenant<ManageApiKeys>,
        id: Uuid,
        grace_seconds: &str,
    ) -> Result<(ApiKey, Secret)> {
        let tenant = auth.tenant();
        self.writable_tenant(Directory::Tenant(tenant)).await?;
        let grace = parse_grace(grace_seconds)?;
        let key = self.store.api_key(tenant, id).await?.ok_or(Error::NotFound)?;
        if key.revoked_at.is_some() {
            return Err(Error::Conflict {
                code: "api_key_revoked",
                message: "This key is revoked: create a new one.".to_owned(),
            });
        }
        let now = self.clock.now();
        let secret = Secret::generate(self.rng.as_ref(), &self.config.api_keys.prefix);
        let four = last_four(secret.expose());
        let old_until = now + grace;
        let event = self.new_event(
            EventType::ApiKeyRolled,
            auth.actor(),
            Some(tenant),
            json!({
                "key_id": id,
                "name": key.name,
                "grace_seconds": grace.whole_seconds(),
                "old_secret_until": super::rfc3339(old_until),
            }),
        );
        let roll = crate::store::KeyRoll {
            new_hash: secret.hash(),
            last_four: four,
            old_until,
            at: now,
        };
        if !self.store.roll_api_key(tenant, id, &roll, event).await? {
            return Err(Error::NotFound);
        }
        self.verifier.forget(ChangeKind::ApiKey, id);
        let key = self.store.api_key(tenant, id).await?.ok_or(Error::NotFound)?;
        Ok((key, secret))
    }

    /// Revoke the key at once (every node refuses it within a second). Allowed in any tenant
    /// status: it only takes away.
    pub async fn revoke_api_key(&self, auth: &InTenant<ManageApiKeys>, id: Uuid) -> Result<ApiKey> {
        let tenant = auth.tenant();
        self.tenant_of(Directory::Tenant(tenant)).await?;
        let key = self.store.api_key(tenant, id).await?.ok_or(Error::NotFound)?;
        if key.revoked_at.is_some() {
            return Ok(key);
        }
        let event = self
            .new_event(
                EventType::ApiKeyRevoked,
                auth.actor(),
                Some(tenant),
                json!({ "key_id": id, "name": key.name }),
            )
            .publish(Published::api_key(
                Topic::ApiKeyRevoked,
                &ApiKey {
                    revoked_at: Some(self.clock.now()),
                    ..key.clone()
                },
            ));
        self.store.revoke_api_key(tenant, id, self.clock.now(), event).await?;
        self.verifier.forget(ChangeKind::ApiKey, id);
        self.store.api_key(tenant, id).await?.ok_or(Error::NotFound)
    }

    /// A service token; the secret is returned once.
    pub async fn create_service_token(
        &self,
        auth: &Authorized<ManageServiceTokens>,
        req: NewServiceTokenRequest,
    ) -> Result<(ServiceToken, Secret)> {
        self.create_service_token_as(auth.actor(), req, "console").await
    }

    /// A service token from the command line (`quarterdeck service-tokens create`), for
    /// bootstrapping a data plane; recorded as made by the system.
    pub async fn create_service_token_from_cli(&self, req: NewServiceTokenRequest) -> Result<(ServiceToken, Secret)> {
        self.create_service_token_as(&crate::access::Actor::system(), req, "cli")
            .await
    }

    async fn create_service_token_as(
        &self,
        actor: &crate::access::Actor,
        req: NewServiceTokenRequest,
        via: &str,
    ) -> Result<(ServiceToken, Secret)> {
        let new = NewServiceToken::parse(&req, &self.config.regions)?;
        let now = self.clock.now();
        let secret = Secret::generate(self.rng.as_ref(), SERVICE_TOKEN_PREFIX);
        let token = ServiceToken {
            id: Uuid::now_v7(),
            name: new.name,
            scopes: new.scopes,
            region: new.region,
            created_by: actor.email.clone(),
            created_at: now,
            expires_at: new.expires_in.map(|d| now + d),
            last_used_at: None,
            revoked_at: None,
        };
        let event = self.new_event(
            EventType::ServiceTokenCreated,
            actor,
            None,
            json!({
                "service_token_id": token.id,
                "name": token.name,
                "scopes": token.scopes,
                "region": token.region,
                "expires_at": token.expires_at.map(super::rfc3339),
                "via": via,
            }),
        );
        self.store.create_service_token(&token, &secret.hash(), event).await?;
        Ok((token, secret))
    }

    pub async fn service_tokens(&self, _auth: &Authorized<ManageServiceTokens>) -> Result<Vec<ServiceToken>> {
        self.store.service_tokens().await
    }

    /// Revoke a service token; `NotFound` if there is no live one with this id.
    pub async fn revoke_service_token(&self, auth: &Authorized<ManageServiceTokens>, id: Uuid) -> Result<()> {
        let name = self
            .store
            .service_tokens()
            .await?
            .into_iter()
            .find(|t| t.id == id && t.revoked_at.is_none())
            .map(|t| t.name)
            .ok_or(Error::NotFound)?;
        let event = self.new_event(
            EventType::ServiceTokenRevoked,
            auth.actor(),
            None,
            json!({ "service_token_id": id, "name": name }),
        );
        if self.store.revoke_service_token(id, self.clock.now(), event).await? {
            self.verifier.forget(ChangeKind::ServiceToken, id);
            Ok(())
        } else {
            Err(Error::NotFound)
        }
    }
}
