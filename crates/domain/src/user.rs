//! Users: platform users live in the control database, tenant users in their tenant's own
//! database. Both share one shape; [`Directory`] says where a user lives.

use crate::email::EmailAddress;
use crate::error::{Error, Result};
use crate::ids::{TenantId, UserId};
use crate::mail::Email;
use crate::token::TokenHash;
use serde::Serialize;
use time::OffsetDateTime;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UserStatus {
    Invited,
    Active,
    Suspended,
}

impl UserStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Invited => "INVITED",
            Self::Active => "ACTIVE",
            Self::Suspended => "SUSPENDED",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "INVITED" => Ok(Self::Invited),
            "ACTIVE" => Ok(Self::Active),
            "SUSPENDED" => Ok(Self::Suspended),
            other => Err(Error::internal(format!("unknown user status {other:?}"))),
        }
    }
}

/// Where a user lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Directory {
    /// The control database: the platform team.
    Platform,
    /// A tenant's own database.
    Tenant(TenantId),
}

impl Directory {
    pub fn tenant_id(self) -> Option<TenantId> {
        match self {
            Directory::Platform => None,
            Directory::Tenant(t) => Some(t),
        }
    }
    pub fn of(tenant_id: Option<TenantId>) -> Self {
        tenant_id.map_or(Directory::Platform, Directory::Tenant)
    }
}

/// A user: a member of the platform team (`tenant_id` is `None`) or of one tenant.
#[derive(Clone, Debug, Serialize)]
pub struct User {
    pub id: UserId,
    pub email: EmailAddress,
    pub name: Option<String>,
    pub status: UserStatus,
    pub roles: Vec<String>,
    pub tenant_id: Option<TenantId>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl User {
    pub fn directory(&self) -> Directory {
        Directory::of(self.tenant_id)
    }
}

/// A password to store: a hash, and for a generated one-time password its expiry (it then
/// works once).
#[derive(Clone, Debug)]
pub struct Credential {
    pub hash: String,
    pub otp_expires_at: Option<OffsetDateTime>,
    /// The user must change it at their next sign-in.
    pub must_change: bool,
}

impl Credential {
    pub fn password(hash: String) -> Self {
        Self {
            hash,
            otp_expires_at: None,
            must_change: false,
        }
    }
}

/// A stored password as sign-in sees it.
#[derive(Clone, Debug)]
pub struct StoredCredential {
    pub hash: String,
    pub otp_expires_at: Option<OffsetDateTime>,
    pub otp_used_at: Option<OffsetDateTime>,
    pub must_change: bool,
}

impl StoredCredential {
    pub fn is_otp(&self) -> bool {
        self.otp_expires_at.is_some()
    }
    /// Whether it may be used now: a one-time password only once and before it expires.
    pub fn usable(&self, now: OffsetDateTime) -> bool {
        match self.otp_expires_at {
            None => true,
            Some(exp) => self.otp_used_at.is_none() && now < exp,
        }
    }
}

/// A pending invitation to write with a new user (or to replace one with on resend).
#[derive(Clone, Debug)]
pub struct NewInvitation {
    pub token_hash: TokenHash,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    /// The email carrying the link, for the outbox.
    pub email: Email,
}

/// Where an invitation's email is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Queued; not delivered yet (maybe retrying).
    Pending,
    Sent,
    /// Given up after the retries.
    Failed,
}

impl Delivery {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sent => "sent",
            Self::Failed => "failed",
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Self::Pending => "not delivered yet",
            Self::Sent => "delivered",
            Self::Failed => "delivery failed",
        }
    }
}

/// The state of a user's invitation, for the Team pages.
#[derive(Clone, Debug, Serialize)]
pub struct InvitationState {
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    pub spent: bool,
    pub revoked: bool,
    pub delivery: Option<Delivery>,
    pub attempts: i64,
}

/// A display name: optional, at most 100 characters, no control characters.
pub fn parse_display_name(input: &str) -> Result<Option<String>> {
    let s = input.trim();
    if s.is_empty() {
        return Ok(None);
    }
    if s.chars().count() > 100 || s.chars().any(char::is_control) {
        return Err(Error::field(
            "name",
            "invalid_name",
            "A name is at most 100 characters, without control characters.",
        ));
    }
    Ok(Some(s.to_owned()))
}
