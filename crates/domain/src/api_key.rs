//! Tenant API keys: what a tenant's applications send to the product's data plane, which asks
//! Quarterdeck who is calling (`POST /v1/data-plane/keys/verify`).
//!
//! A key is metadata (name, scopes from the configured catalog, optional expiry and
//! requests-per-minute limit) plus one secret, or two while a roll's grace period runs: the
//! replaced secret keeps working until its `not_after`. Secrets are shown once and stored as
//! SHA-256 ([`crate::token::TokenHash`]); the list shows the visible prefix and the last four
//! characters.

use crate::error::{Error, FieldError, Problems, Result};
use crate::ids::TenantId;
use crate::tenant::{PriorityTier, Region, TenantSlug, TenantStatus};
use serde::Serialize;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

/// The longest grace period a roll may give the replaced secret.
pub const MAX_ROLL_GRACE: Duration = Duration::days(7);
/// The highest per-key limit one can set (requests per minute).
pub const MAX_REQUESTS_PER_MINUTE: u32 = 1_000_000;
/// The longest key a verification looks up; anything longer is unknown without a lookup.
pub const MAX_KEY_CHARS: usize = 200;

/// What a deployment configures about keys (`api_key_prefix`, `api_key_scopes`).
#[derive(Clone, Debug)]
pub struct ApiKeyPolicy {
    /// The visible start of every new secret (`qd_live_`): the tenant's developers see it as
    /// the product's key.
    pub prefix: String,
    /// The scopes a key may carry.
    pub scopes: Vec<String>,
}

impl Default for ApiKeyPolicy {
    fn default() -> Self {
        Self {
            prefix: "qd_live_".to_owned(),
            scopes: vec!["read".to_owned(), "write".to_owned()],
        }
    }
}

impl ApiKeyPolicy {
    /// A prefix is 1–20 characters of `[A-Za-z0-9_-]`; a scope 1–64 of `[a-z0-9:._-]`, and at
    /// least one scope is configured.
    pub fn new(prefix: &str, scopes: Vec<String>) -> std::result::Result<Self, String> {
        let ok_prefix = !prefix.is_empty()
            && prefix.len() <= 20
            && prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ok_prefix {
            return Err(format!(
                "api_key_prefix {prefix:?} must be 1 to 20 letters, digits, '_' or '-'"
            ));
        }
        if scopes.is_empty() {
            return Err("api_key_scopes must name at least one scope".to_owned());
        }
        for s in &scopes {
            let ok = !s.is_empty()
                && s.len() <= 64
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ":._-".contains(c));
            if !ok {
                return Err(format!(
                    "api_key_scopes: {s:?} must be 1 to 64 of a-z, 0-9, ':', '.', '_', '-'"
                ));
            }
        }
        Ok(Self {
            prefix: prefix.to_owned(),
            scopes,
        })
    }
}

/// A tenant's API key, without its secret.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ApiKey {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub name: String,
    pub scopes: Vec<String>,
    /// The visible prefix the secret started with when it was made.
    pub prefix: String,
    /// The last four characters of the current secret.
    pub last_four: String,
    pub requests_per_minute: Option<u32>,
    /// The creator's email.
    pub created_by: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub rolled_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

impl ApiKey {
    pub fn state(&self, now: OffsetDateTime) -> KeyState {
        if self.revoked_at.is_some() {
            KeyState::Revoked
        } else if self.expires_at.is_some_and(|e| e <= now) {
            KeyState::Expired
        } else {
            KeyState::Active
        }
    }

    /// What the list shows of the secret: `qd_live_…abcd`.
    pub fn masked(&self) -> String {
        format!("{}…{}", self.prefix, self.last_four)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    Active,
    Expired,
    Revoked,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }
}

/// What a New API key form or API call sends, unparsed.
#[derive(Clone, Debug, Default)]
pub struct NewApiKeyRequest {
    pub name: String,
    pub scopes: Vec<String>,
    /// Empty: never expires.
    pub expires_in_days: String,
    /// Empty: no limit.
    pub requests_per_minute: String,
}

/// A [`NewApiKeyRequest`] parsed against the policy.
#[derive(Clone, Debug)]
pub struct NewApiKey {
    pub name: String,
    pub scopes: Vec<String>,
    pub expires_in: Option<Duration>,
    pub requests_per_minute: Option<u32>,
}

impl NewApiKey {
    /// Every bad field at once.
    pub fn parse(req: &NewApiKeyRequest, policy: &ApiKeyPolicy) -> Result<Self> {
        let mut p = Problems::new();
        let name = crate::fields::name(&mut p, &req.name, "key");
        let mut scopes: Vec<String> = Vec::new();
        for s in &req.scopes {
            let s = s.trim();
            if !policy.scopes.iter().any(|known| known == s) {
                p.push(FieldError::new(
                    "scopes",
                    "invalid_scope",
                    format!("Choose scopes from: {}.", policy.scopes.join(", ")),
                ));
                break;
            }
            if !scopes.iter().any(|have| have == s) {
                scopes.push(s.to_owned());
            }
        }
        if req.scopes.is_empty() {
            p.push(FieldError::new("scopes", "invalid_scope", "Choose at least one scope."));
        }
        let expires_in = crate::fields::optional_expiry(&mut p, &req.expires_in_days);
        let requests_per_minute = match req.requests_per_minute.trim() {
            "" => None,
            raw => match raw.parse::<u32>() {
                Ok(n) if (1..=MAX_REQUESTS_PER_MINUTE).contains(&n) => Some(n),
                _ => {
                    p.push(FieldError::new(
                        "requests_per_minute",
                        "invalid_limit",
                        format!("Choose a limit between 1 and {MAX_REQUESTS_PER_MINUTE} requests per minute, or none."),
                    ));
                    None
                }
            },
        };
        p.finish()?;
        Ok(Self {
            name,
            scopes,
            expires_in,
            requests_per_minute,
        })
    }
}

/// How long the replaced secret of a roll keeps working: 0 to 7 days, in seconds.
pub fn parse_grace(raw: &str) -> Result<Duration> {
    match raw.trim().parse::<i64>() {
        Ok(s) if (0..=MAX_ROLL_GRACE.whole_seconds()).contains(&s) => Ok(Duration::seconds(s)),
        _ => Err(Error::field(
            "grace_seconds",
            "invalid_grace",
            "Choose a grace period between 0 seconds and 7 days.",
        )),
    }
}

/// The last four characters of a secret (what the list shows).
pub fn last_four(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    chars[chars.len().saturating_sub(4)..].iter().collect()
}

/// The tenant as the data plane sees it in a verification.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TenantSnapshot {
    pub id: TenantId,
    pub slug: TenantSlug,
    pub status: TenantStatus,
    pub tier: PriorityTier,
    pub region: Region,
    /// Deleted tenants' keys are unknown.
    #[serde(skip)]
    pub deleted: bool,
}

/// Everything a verification needs about one secret, read in one query.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyRecord {
    pub key: ApiKey,
    /// When this secret stops working (a roll's grace end), if it was replaced.
    pub secret_not_after: Option<OffsetDateTime>,
    pub tenant: TenantSnapshot,
    /// Until when the tenant's hard budget limit stops its keys, if it does.
    pub budget_block: Option<OffsetDateTime>,
}

/// Why a key does not verify (the `code` of `{"valid": false}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    Unknown,
    Expired,
    Revoked,
    TenantSuspended,
    BudgetExceeded,
    RateLimited,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
            Self::TenantSuspended => "tenant_suspended",
            Self::BudgetExceeded => "budget_exceeded",
            Self::RateLimited => "rate_limited",
        }
    }
}

impl KeyRecord {
    /// The key's own verdict at `now`, before any rate limit: a revoked key, then an expired
    /// key or a replaced secret past its grace, then the tenant's status, then a hard budget limit reached this month.
    pub fn judge(&self, now: OffsetDateTime) -> std::result::Result<(), Refusal> {
        if self.tenant.deleted {
            return Err(Refusal::Unknown);
        }
        if self.key.revoked_at.is_some() {
            return Err(Refusal::Revoked);
        }
        if self.secret_not_after.is_some_and(|t| t <= now) {
            return Err(Refusal::Revoked);
        }
        if self.key.expires_at.is_some_and(|t| t <= now) {
            return Err(Refusal::Expired);
        }
        if self.tenant.status == TenantStatus::Suspended {
            return Err(Refusal::TenantSuspended);
        }
        if self.budget_block.is_some_and(|until| now < until) {
            return Err(Refusal::BudgetExceeded);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests unwrap")]
    use super::*;

    fn req(name: &str, scopes: &[&str], days: &str, rpm: &str) -> NewApiKeyRequest {
        NewApiKeyRequest {
            name: name.to_owned(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            expires_in_days: days.to_owned(),
            requests_per_minute: rpm.to_owned(),
        }
    }

    #[test]
    fn a_new_key_reports_every_bad_field_at_once() {
        let err = NewApiKey::parse(&req("", &["admin"], "0", "-1"), &ApiKeyPolicy::default()).unwrap_err();
        let fields: Vec<&str> = err.fields().iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["name", "scopes", "expires_in_days", "requests_per_minute"]);
    }

    #[test]
    fn scopes_come_from_the_catalog_once_each() {
        let k = NewApiKey::parse(
            &req("ci", &["read", "read", "write"], "", "60"),
            &ApiKeyPolicy::default(),
        )
        .unwrap();
        assert_eq!(k.scopes, ["read", "write"]);
        assert_eq!(k.requests_per_minute, Some(60));
        assert_eq!(k.expires_in, None);
    }

    #[test]
    fn a_grace_period_is_at_most_seven_days() {
        assert_eq!(parse_grace("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_grace("604800").unwrap(), Duration::days(7));
        assert!(parse_grace("604801").is_err());
        assert!(parse_grace("-1").is_err());
    }

    #[test]
    fn the_policy_refuses_a_prefix_or_scope_that_would_break_keys() {
        assert!(ApiKeyPolicy::new("qd live", vec!["read".into()]).is_err());
        assert!(ApiKeyPolicy::new("acme_", vec![]).is_err());
        assert!(ApiKeyPolicy::new("acme_", vec!["Read Write".into()]).is_err());
        assert!(ApiKeyPolicy::new("acme_", vec!["chat:write".into()]).is_ok());
    }

    #[test]
    fn last_four_is_the_end_of_the_secret() {
        assert_eq!(last_four("qd_live_abcdef"), "cdef");
        assert_eq!(last_four("ab"), "ab");
    }
}
