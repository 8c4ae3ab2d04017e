//! Personal access tokens for the Automation API: `qd_pat_…`, shown once, stored as a hash,
//! scoped (read or read-write), expiring (at most a year), optionally restricted to one
//! tenant. A token acts with its owner's *current* rights.

use crate::error::{Error, Result};
use crate::ids::{TenantId, UserId};
use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenScope {
    /// GET only.
    Read,
    ReadWrite,
}

impl TokenScope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::ReadWrite => "read_write",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "read" => Ok(Self::Read),
            "read_write" => Ok(Self::ReadWrite),
            _ => Err(Error::field("scope", "invalid_scope", "Choose read or read_write.")),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct PersonalAccessToken {
    pub id: Uuid,
    pub name: String,
    pub scope: TokenScope,
    pub owner_id: UserId,
    pub owner_email: String,
    /// The owner's tenant, for a tenant user's token.
    pub owner_tenant_id: Option<TenantId>,
    /// Only this tenant's resources, if set.
    pub restrict_tenant_id: Option<TenantId>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

impl PersonalAccessToken {
    pub fn is_live(&self, now: OffsetDateTime) -> bool {
        self.revoked_at.is_none() && now < self.expires_at
    }
}
