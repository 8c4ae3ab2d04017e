//! Service tokens: the credential of the product's own backend services (its data plane).
//! `qd_svc_…`, shown once, SHA-256 at rest. Unlike personal access tokens they act for no user
//! and reach only `/v1/data-plane/…`, within their scopes and (optionally) one region.

use crate::error::{Error, FieldError, Problems, Result};
use serde::Serialize;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

/// The visible start of every service token.
pub const SERVICE_TOKEN_PREFIX: &str = "qd_svc_";

/// What a service token may do on the data-plane API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum ServiceScope {
    /// `POST /v1/data-plane/keys/verify`.
    #[serde(rename = "keys:verify")]
    KeysVerify,
    /// Report usage (the usage issue).
    #[serde(rename = "usage:write")]
    UsageWrite,
    /// `POST /v1/data-plane/credentials/resolve`.
    #[serde(rename = "credentials:read")]
    CredentialsRead,
}

impl ServiceScope {
    pub const ALL: [ServiceScope; 3] = [Self::KeysVerify, Self::UsageWrite, Self::CredentialsRead];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::KeysVerify => "keys:verify",
            Self::UsageWrite => "usage:write",
            Self::CredentialsRead => "credentials:read",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s.trim())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServiceToken {
    pub id: Uuid,
    pub name: String,
    pub scopes: Vec<ServiceScope>,
    /// Only tenants of this region, if set.
    pub region: Option<String>,
    pub created_by: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

impl ServiceToken {
    pub fn is_live(&self, now: OffsetDateTime) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
    }

    pub fn has(&self, scope: ServiceScope) -> bool {
        self.scopes.contains(&scope)
    }

    /// Whether a tenant in `region` is within this token's reach.
    pub fn reaches(&self, region: &str) -> bool {
        self.region.as_deref().is_none_or(|r| r == region)
    }
}

/// What the New service token form, or the CLI, sends.
#[derive(Clone, Debug, Default)]
pub struct NewServiceTokenRequest {
    pub name: String,
    pub scopes: Vec<String>,
    /// Empty: every region.
    pub region: String,
    /// Empty: never expires.
    pub expires_in_days: String,
}

/// A parsed [`NewServiceTokenRequest`].
#[derive(Clone, Debug)]
pub struct NewServiceToken {
    pub name: String,
    pub scopes: Vec<ServiceScope>,
    pub region: Option<String>,
    pub expires_in: Option<Duration>,
}

impl NewServiceToken {
    /// Every bad field at once; `regions` are the configured ones.
    pub fn parse(req: &NewServiceTokenRequest, regions: &[String]) -> Result<Self> {
        let mut p = Problems::new();
        let name = crate::fields::name(&mut p, &req.name, "token");
        let mut scopes = Vec::new();
        for s in &req.scopes {
            match ServiceScope::parse(s) {
                Some(sc) if !scopes.contains(&sc) => scopes.push(sc),
                Some(_) => {}
                None => {
                    p.push(FieldError::new(
                        "scopes",
                        "invalid_scope",
                        "Choose scopes from keys:verify, usage:write, credentials:read.",
                    ));
                    break;
                }
            }
        }
        if req.scopes.is_empty() {
            p.push(FieldError::new("scopes", "invalid_scope", "Choose at least one scope."));
        }
        let region = match req.region.trim() {
            "" => None,
            r if regions.iter().any(|known| known == r) => Some(r.to_owned()),
            _ => {
                p.push(FieldError::new(
                    "region",
                    "invalid_region",
                    format!("Choose a region from: {}, or none.", regions.join(", ")),
                ));
                None
            }
        };
        let expires_in = crate::fields::optional_expiry(&mut p, &req.expires_in_days);
        p.finish()?;
        Ok(Self {
            name,
            scopes,
            region,
            expires_in,
        })
    }
}

/// The refusal of a data-plane call whose token lacks a scope.
pub fn missing_scope() -> Error {
    Error::InsufficientScope
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests unwrap")]
    use super::*;

    #[test]
    fn a_service_token_reports_every_bad_field_and_knows_three_scopes() {
        let regions = vec!["eu".to_owned()];
        let bad = NewServiceTokenRequest {
            name: " ".into(),
            scopes: vec!["keys:verify".into(), "admin".into()],
            region: "us".into(),
            expires_in_days: "x".into(),
        };
        let err = NewServiceToken::parse(&bad, &regions).unwrap_err();
        let fields: Vec<&str> = err.fields().iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["name", "scopes", "region", "expires_in_days"]);
        let good = NewServiceTokenRequest {
            name: "gateway".into(),
            scopes: vec!["keys:verify".into(), "credentials:read".into()],
            region: "eu".into(),
            expires_in_days: "".into(),
        };
        let t = NewServiceToken::parse(&good, &regions).unwrap();
        assert_eq!(t.scopes, [ServiceScope::KeysVerify, ServiceScope::CredentialsRead]);
        assert_eq!(t.region.as_deref(), Some("eu"));
    }
}
