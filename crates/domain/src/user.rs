//! Platform users (the control database). Tenant users arrive with the invitation issue.

use crate::email::EmailAddress;
use crate::error::{Error, Result};
use crate::ids::UserId;
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

/// A platform user: a member of the platform team.
#[derive(Clone, Debug, Serialize)]
pub struct PlatformUser {
    pub id: UserId,
    pub email: EmailAddress,
    pub name: Option<String>,
    pub status: UserStatus,
    pub roles: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
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
