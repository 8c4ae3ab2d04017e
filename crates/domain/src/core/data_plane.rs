//! What the product's data plane asks: who is behind a tenant API key
//! (`POST /v1/data-plane/keys/verify`), with the callers' service tokens authenticated here.

use super::Core;
use crate::api_key::{KeyRecord, MAX_KEY_CHARS, Refusal};
use crate::error::{Error, Result};
use crate::service_token::{SERVICE_TOKEN_PREFIX, ServiceScope, ServiceToken};
use crate::token::TokenHash;
use time::Duration;

/// A data-plane caller: a live service token.
#[derive(Clone, Debug)]
pub struct ServiceCaller {
    pub token: ServiceToken,
}

impl ServiceCaller {
    /// `InsufficientScope` unless the token carries `scope`.
    pub fn require(&self, scope: ServiceScope) -> Result<()> {
        if self.token.has(scope) {
            Ok(())
        } else {
            Err(Error::InsufficientScope)
        }
    }

    /// The audit actor of what this token does: no user, the token's id.
    pub fn actor(&self) -> crate::access::Actor {
        let mut a = crate::access::Actor::system();
        a.token_id = Some(self.token.id);
        a
    }
}

/// The answer to a verification.
#[derive(Clone, Debug, PartialEq)]
pub enum Verification {
    Valid {
        record: std::sync::Arc<KeyRecord>,
        limits: Limits,
    },
    Invalid {
        refusal: Refusal,
        /// For `rate_limited`: when to try again.
        retry_after_secs: Option<u64>,
    },
}

/// The key's rate limit as it stands after this request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub requests_per_minute: Option<u32>,
    pub remaining: Option<u64>,
    pub reset_seconds: Option<u64>,
}

impl Verification {
    pub fn invalid(refusal: Refusal) -> Self {
        Self::Invalid {
            refusal,
            retry_after_secs: None,
        }
    }
}

/// Service tokens' last use is written at most this often per token.
const TOUCH_EVERY: Duration = Duration::minutes(1);

impl Core {
    /// The live service token behind a bearer value, or `Unauthenticated` (unknown, revoked,
    /// expired, or not a service token at all).
    pub async fn authenticate_service(&self, bearer: &str) -> Result<ServiceCaller> {
        if !bearer.starts_with(SERVICE_TOKEN_PREFIX) || bearer.len() > MAX_KEY_CHARS {
            return Err(Error::Unauthenticated);
        }
        let now = self.clock.now();
        let token = self
            .store
            .service_token_by_hash(&TokenHash::of(bearer))
            .await?
            .filter(|t| t.is_live(now))
            .ok_or(Error::Unauthenticated)?;
        if token.last_used_at.is_none_or(|t| now - t >= TOUCH_EVERY) {
            self.store.touch_service_tokens(&[token.id], now).await?;
        }
        Ok(ServiceCaller { token })
    }

    /// Who is behind a tenant API key. Anything that is not a live key of a reachable tenant
    /// is `{"valid": false}` with the reason; only the caller's own faults are errors.
    pub async fn verify_api_key(&self, caller: &ServiceCaller, key: &str) -> Result<Verification> {
        caller.require(ServiceScope::KeysVerify)?;
        if key.is_empty() || key.len() > MAX_KEY_CHARS || key.chars().any(|c| c.is_control() || c == ' ') {
            return Ok(Verification::invalid(Refusal::Unknown));
        }
        let now = self.clock.now();
        let Some(record) = self.store.key_for_verification(&TokenHash::of(key)).await? else {
            return Ok(Verification::invalid(Refusal::Unknown));
        };
        if !caller.token.reaches(record.tenant.region.as_str()) {
            return Ok(Verification::invalid(Refusal::Unknown));
        }
        if let Err(refusal) = record.judge(now) {
            return Ok(Verification::invalid(refusal));
        }
        let limits = Limits {
            requests_per_minute: record.key.requests_per_minute,
            ..Limits::default()
        };
        Ok(Verification::Valid {
            record: std::sync::Arc::new(record),
            limits,
        })
    }
}
