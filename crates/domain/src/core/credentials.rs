//! Provider credentials: stored by tenant admins in the portal, resolved by the data plane
//! (`POST /v1/data-plane/credentials/resolve`), every resolution audited, coalesced per
//! (service token, credential, minute).

use super::{Core, ServiceCaller};
use crate::access::{InTenant, ManageProviderCredentials};
use crate::audit::EventType;
use crate::error::{Error, Result};
use crate::ids::TenantId;
use crate::provider::{
    CredentialInput, CredentialReads, ParsedCredential, Provider, ProviderCredential, ResolvedCredential, SecretHint,
};
use crate::service_token::ServiceScope;
use crate::tenant::TenantStatus;
use crate::user::Directory;
use crate::webhook::Published;
use serde_json::json;
use std::collections::BTreeMap;
use uuid::Uuid;

/// What a sealed credential is bound to: its tenant and its id.
fn binding(tenant: TenantId, id: Uuid) -> Vec<u8> {
    let mut aad = b"quarterdeck provider credential v1:".to_vec();
    aad.extend_from_slice(tenant.0.as_bytes());
    aad.extend_from_slice(id.as_bytes());
    aad
}

/// Unix minute of a time.
fn minute(t: time::OffsetDateTime) -> i64 {
    t.unix_timestamp().div_euclid(60)
}

impl Core {
    /// The catalog's providers, each with the tenant's stored credential if any.
    pub async fn provider_credentials(
        &self,
        auth: &InTenant<ManageProviderCredentials>,
    ) -> Result<Vec<(Provider, Option<ProviderCredential>)>> {
        self.tenant_of(Directory::Tenant(auth.tenant())).await?;
        let mut stored = self.store.provider_credentials(auth.tenant()).await?;
        Ok(self
            .config
            .providers
            .providers()
            .iter()
            .map(|p| {
                let c = stored
                    .iter()
                    .position(|c| c.provider == p.id)
                    .map(|i| stored.swap_remove(i));
                (p.clone(), c)
            })
            .collect())
    }

    /// How many providers the tenant has a credential for (the portal's dashboard).
    pub async fn provider_credential_count(&self, auth: &InTenant<ManageProviderCredentials>) -> Result<u64> {
        Ok(self.store.provider_credentials(auth.tenant()).await?.len() as u64)
    }

    fn fingerprint(&self, value: &str) -> String {
        use hmac::{Hmac, Mac};
        let key = self.config.secret_key.derive("quarterdeck credential fingerprint v1");
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&key)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(value.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..6])
    }

    fn open_secrets(&self, c: &ProviderCredential) -> Result<BTreeMap<String, String>> {
        let json = self
            .config
            .secret_key
            .open_bound(&c.sealed, &binding(c.tenant_id, c.id))?;
        serde_json::from_str(&json).map_err(|_| Error::internal("a sealed provider credential is not a JSON object"))
    }

    /// Store or replace the tenant's credential for `provider`. Secret fields left empty keep
    /// their stored value.
    pub async fn set_provider_credential(
        &self,
        auth: &InTenant<ManageProviderCredentials>,
        provider: &str,
        input: &CredentialInput,
    ) -> Result<ProviderCredential> {
        let tenant = auth.tenant();
        self.writable_tenant(Directory::Tenant(tenant)).await?;
        let provider = self.config.providers.get(provider).ok_or(Error::NotFound)?;
        let existing = self.store.provider_credential(tenant, &provider.id).await?;
        let kept = match &existing {
            Some(c) => self.open_secrets(c).unwrap_or_default(),
            None => BTreeMap::new(),
        };
        let parsed = ParsedCredential::parse(provider, input, &kept)?;
        let now = self.clock.now();
        let id = existing.as_ref().map_or_else(Uuid::now_v7, |c| c.id);
        let sealed = self.config.secret_key.seal_bound(
            &serde_json::to_string(&parsed.secrets).map_err(Error::internal)?,
            &binding(tenant, id),
            self.rng.as_ref(),
        )?;
        let hints = parsed
            .secrets
            .iter()
            .map(|(k, v)| {
                let hint = SecretHint {
                    last_four: crate::provider::shown_tail(v),
                    fingerprint: self.fingerprint(v),
                };
                (k.clone(), hint)
            })
            .collect::<BTreeMap<_, _>>();
        let credential = ProviderCredential {
            id,
            tenant_id: tenant,
            provider: provider.id.clone(),
            fields: parsed.fields,
            hints,
            sealed,
            updated_by: auth.actor().email.clone(),
            created_at: existing.as_ref().map_or(now, |c| c.created_at),
            updated_at: now,
        };
        let event = self.new_event(
            EventType::ProviderCredentialSet,
            auth.actor(),
            Some(tenant),
            json!({
                "credential_id": id,
                "provider": provider.id,
                "replaced": existing.is_some(),
                "fields": credential.fields.keys().chain(credential.hints.keys()).collect::<Vec<_>>(),
                "fingerprints": credential.hints.iter().map(|(k, h)| (k.clone(), h.fingerprint.clone())).collect::<BTreeMap<_, _>>(),
            }),
        )
        .publish(Published::provider_credential(tenant, id, &provider.id, "set"));
        self.store.put_provider_credential(&credential, event).await?;
        Ok(credential)
    }

    /// Delete the tenant's credential for `provider` (allowed in any status: it only takes
    /// away); `NotFound` if there is none.
    pub async fn delete_provider_credential(
        &self,
        auth: &InTenant<ManageProviderCredentials>,
        provider: &str,
    ) -> Result<()> {
        let tenant = auth.tenant();
        if !crate::provider::is_provider_id(provider) {
            return Err(Error::NotFound);
        }
        self.tenant_of(Directory::Tenant(tenant)).await?;
        let existing = self
            .store
            .provider_credential(tenant, provider)
            .await?
            .ok_or(Error::NotFound)?;
        let event = self
            .new_event(
                EventType::ProviderCredentialDeleted,
                auth.actor(),
                Some(tenant),
                json!({ "credential_id": existing.id, "provider": existing.provider }),
            )
            .publish(Published::provider_credential(
                tenant,
                existing.id,
                &existing.provider,
                "deleted",
            ));
        if self.store.delete_provider_credential(tenant, provider, event).await? {
            Ok(())
        } else {
            Err(Error::NotFound)
        }
    }

    /// The tenant's credential for `provider`, every field in clear, for the data plane. The
    /// read is counted durably before it is answered; `PROVIDER_CREDENTIAL_READ` events follow
    /// once its minute has passed ([`Core::flush_credential_reads`]).
    pub async fn resolve_credential(
        &self,
        caller: &ServiceCaller,
        tenant_id: TenantId,
        provider: &str,
    ) -> Result<ResolvedCredential> {
        caller.require(ServiceScope::CredentialsRead)?;
        if !crate::provider::is_provider_id(provider) {
            return Err(Error::NotFound);
        }
        let tenant = self.store.tenant(tenant_id).await?.ok_or(Error::NotFound)?;
        if !caller.token.reaches(tenant.region.as_str()) {
            return Err(Error::NotFound);
        }
        if tenant.status == TenantStatus::Suspended {
            return Err(Error::TenantSuspended);
        }
        let credential = self
            .store
            .provider_credential(tenant_id, provider)
            .await?
            .ok_or(Error::NotFound)?;
        let mut fields = credential.fields.clone();
        fields.extend(self.open_secrets(&credential)?);
        let now = self.clock.now();
        self.store
            .count_credential_read(&CredentialReads {
                token_id: caller.token.id,
                token_name: caller.token.name.clone(),
                credential_id: credential.id,
                tenant_id,
                provider: credential.provider.clone(),
                window_start: minute(now),
                reads: 1,
                first_at: now,
                last_at: now,
            })
            .await?;
        Ok(ResolvedCredential {
            tenant_id,
            provider: credential.provider,
            credential_id: credential.id,
            fields,
            updated_at: credential.updated_at,
        })
    }

    /// Turn every credential-read tally of a minute that has passed into one
    /// `PROVIDER_CREDENTIAL_READ` event with its count (several nodes may run this: each
    /// tally is written once). Returns how many events were written.
    pub async fn flush_credential_reads(&self) -> Result<u64> {
        let now = self.clock.now();
        let mut written = 0;
        // A bounded number of pages per run: what is left waits for the next.
        for _ in 0..20 {
            let tallies = self.store.closed_credential_reads(minute(now), 100).await?;
            let n = tallies.len();
            for t in tallies {
                let mut actor = crate::access::Actor::system();
                actor.token_id = Some(t.token_id);
                let event = self.new_event(
                    EventType::ProviderCredentialRead,
                    &actor,
                    Some(t.tenant_id),
                    json!({
                        "credential_id": t.credential_id,
                        "provider": t.provider,
                        "service_token": { "id": t.token_id, "name": t.token_name },
                        "count": t.reads,
                        "first_at": super::rfc3339(t.first_at),
                        "last_at": super::rfc3339(t.last_at),
                    }),
                );
                if self.store.record_credential_reads(&t, event).await? {
                    written += 1;
                }
            }
            if n < 100 {
                break;
            }
        }
        Ok(written)
    }
}
