//! Tenants: their parsed fields, status and metadata.

use crate::error::{Error, FieldError, Problems, Result};
use crate::ids::TenantId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use time::OffsetDateTime;

/// A tenant's slug: a DNS label (lowercase letters, digits, inner hyphens, 1–63 characters),
/// not reserved, immutable once the tenant exists. It is the tenant's host name label.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantSlug(String);

/// Labels that would collide with the product's own hosts or confuse users.
pub const RESERVED_SLUGS: &[&str] = &[
    "www",
    "api",
    "admin",
    "login",
    "logout",
    "auth",
    "sso",
    "oauth",
    "oidc",
    "saml",
    "app",
    "console",
    "portal",
    "static",
    "assets",
    "cdn",
    "mail",
    "smtp",
    "imap",
    "pop",
    "ftp",
    "status",
    "help",
    "support",
    "docs",
    "root",
    "system",
    "platform",
    "quarterdeck",
    "localhost",
    "setup",
    "register",
    "billing",
    "internal",
    "dashboard",
    "health",
    "metrics",
];

impl TenantSlug {
    pub const MAX_LEN: usize = 63;

    pub fn parse(input: &str) -> Result<Self> {
        let s = input.trim();
        let err = |code: &'static str, msg: &str| Err(Error::field("slug", code, msg));
        if s.is_empty() {
            return err("required", "Enter a slug.");
        }
        if s.len() > Self::MAX_LEN {
            return err("too_long", "A slug is at most 63 characters.");
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return err("invalid_slug", "Use lowercase letters a–z, digits and hyphens only.");
        }
        if s.starts_with('-') || s.ends_with('-') {
            return err("invalid_slug", "A slug cannot start or end with a hyphen.");
        }
        if s.len() >= 4 && &s[2..4] == "--" {
            return err(
                "invalid_slug",
                "A slug cannot have hyphens in the third and fourth places (reserved by DNS).",
            );
        }
        if RESERVED_SLUGS.contains(&s) {
            return err("reserved_slug", "This slug is reserved; choose another.");
        }
        Ok(Self(s.to_owned()))
    }

    /// A slug suggestion derived from a display name ("Acme Corp" → "acme-corp").
    pub fn suggest(name: &str) -> String {
        let mut out = String::new();
        for c in name.trim().chars() {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() {
                out.push(c);
            } else if !out.is_empty() && !out.ends_with('-') {
                out.push('-');
            }
        }
        let mut s: String = out.trim_matches('-').chars().take(Self::MAX_LEN).collect();
        while s.ends_with('-') {
            s.pop();
        }
        s
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantSlug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl TryFrom<String> for TenantSlug {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s)
    }
}
impl From<TenantSlug> for String {
    fn from(s: TenantSlug) -> String {
        s.0
    }
}

/// A tenant's display name: 1–100 characters, no control characters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantName(String);

impl TenantName {
    pub const MAX_LEN: usize = 100;
    pub fn parse(input: &str) -> Result<Self> {
        let s = input.trim();
        if s.is_empty() {
            return Err(Error::field("name", "required", "Enter a name."));
        }
        if s.chars().count() > Self::MAX_LEN {
            return Err(Error::field("name", "too_long", "A name is at most 100 characters."));
        }
        if s.chars().any(char::is_control) {
            return Err(Error::field(
                "name",
                "invalid",
                "A name cannot contain control characters.",
            ));
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for TenantName {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s)
    }
}
impl From<TenantName> for String {
    fn from(s: TenantName) -> String {
        s.0
    }
}

/// The three tenant statuses (PRODUCT.md §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantStatus {
    Active,
    ReadOnly,
    Suspended,
}

impl TenantStatus {
    pub const ALL: [TenantStatus; 3] = [Self::Active, Self::ReadOnly, Self::Suspended];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::ReadOnly => "read_only",
            Self::Suspended => "suspended",
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Self::Active => "Active",
            Self::ReadOnly => "Read-only",
            Self::Suspended => "Suspended",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| Error::field("status", "invalid_status", "Choose active, read_only or suspended."))
    }
    /// Whether writes inside the tenant are allowed; otherwise the error that says why.
    pub fn check_writable(self) -> Result<()> {
        match self {
            Self::Active => Ok(()),
            Self::ReadOnly => Err(Error::TenantReadOnly),
            Self::Suspended => Err(Error::TenantSuspended),
        }
    }
}

/// How urgently the platform team attends to a tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PriorityTier {
    Standard,
    High,
    Critical,
}

impl PriorityTier {
    pub const ALL: [PriorityTier; 3] = [Self::Standard, Self::High, Self::Critical];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standard => "standard",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Self::Standard => "Standard",
            Self::High => "High",
            Self::Critical => "Critical",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| Error::field("tier", "invalid_tier", "Choose standard, high or critical."))
    }
}

/// A region the deployment offers (from settings), checked against that list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Region(String);

impl Region {
    pub fn parse(input: &str, allowed: &[String]) -> Result<Self> {
        let s = input.trim();
        if allowed.iter().any(|r| r == s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(Error::field(
                "region",
                "invalid_region",
                format!("Choose one of: {}.", allowed.join(", ")),
            ))
        }
    }
    /// A region read back from storage (it was checked when written).
    pub fn from_stored(s: String) -> Self {
        Self(s)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Tenant metadata: string keys to string values, bounded.
pub type Metadata = BTreeMap<String, String>;

pub const METADATA_MAX_ENTRIES: usize = 50;
pub const METADATA_KEY_MAX: usize = 64;
pub const METADATA_VALUE_MAX: usize = 512;

/// Parses metadata rows (as a form sends them: possibly blank rows) into a map.
pub fn parse_metadata(rows: &[(String, String)]) -> Result<Metadata> {
    let mut problems = Problems::new();
    let mut map = Metadata::new();
    for (i, (k, v)) in rows.iter().enumerate() {
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() && v.is_empty() {
            continue;
        }
        let field = format!("metadata[{i}]");
        if k.is_empty() {
            problems.push(FieldError::new(&field, "required", "Enter a key for this value."));
        } else if k.len() > METADATA_KEY_MAX {
            problems.push(FieldError::new(&field, "too_long", "A key is at most 64 characters."));
        } else if !k.chars().all(|c| c.is_ascii_alphanumeric() || "._-:/".contains(c)) {
            problems.push(FieldError::new(
                &field,
                "invalid_key",
                "Keys use letters, digits and . _ - : / only.",
            ));
        } else if v.chars().count() > METADATA_VALUE_MAX || v.chars().any(char::is_control) {
            problems.push(FieldError::new(
                &field,
                "invalid_value",
                "A value is at most 512 characters, without control characters.",
            ));
        } else if map.insert(k.to_owned(), v.to_owned()).is_some() {
            problems.push(FieldError::new(&field, "duplicate_key", "This key appears twice."));
        }
    }
    if map.len() > METADATA_MAX_ENTRIES {
        problems.push(FieldError::new("metadata", "too_many", "At most 50 metadata entries."));
    }
    problems.finish()?;
    Ok(map)
}

/// A tenant as stored.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Tenant {
    pub id: TenantId,
    pub slug: TenantSlug,
    pub name: TenantName,
    pub region: Region,
    pub tier: PriorityTier,
    pub status: TenantStatus,
    pub metadata: Metadata,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// What New Tenant asks for, parsed.
#[derive(Clone, Debug)]
pub struct NewTenant {
    pub slug: TenantSlug,
    pub name: TenantName,
    pub region: Region,
    pub tier: PriorityTier,
    pub metadata: Metadata,
}

/// The editable fields (the slug never changes).
#[derive(Clone, Debug)]
pub struct TenantEdit {
    pub name: TenantName,
    pub region: Region,
    pub tier: PriorityTier,
    pub metadata: Metadata,
}

/// Filter and page for the tenant list.
#[derive(Clone, Debug, Default)]
pub struct TenantFilter {
    /// Matches slug or name, case-insensitively, as a substring.
    pub search: Option<String>,
    pub status: Option<TenantStatus>,
    pub limit: u32,
    pub offset: u32,
}

/// Tenant counts for the dashboard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StatusCounts {
    pub active: u64,
    pub read_only: u64,
    pub suspended: u64,
}

impl StatusCounts {
    pub fn total(&self) -> u64 {
        self.active + self.read_only + self.suspended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_must_be_dns_labels_and_not_reserved() {
        assert!(TenantSlug::parse("acme-corp").is_ok());
        assert!(TenantSlug::parse("a1").is_ok());
        for bad in [
            "", "Acme", "-acme", "acme-", "ac_me", "../x", "a\0b", "www", "admin", "xn--abc", "acmé",
        ] {
            assert!(TenantSlug::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(TenantSlug::parse(&"a".repeat(64)).is_err());
        assert!(TenantSlug::parse(&"a".repeat(63)).is_ok());
    }

    #[test]
    fn slug_suggestions_are_valid_labels() {
        assert_eq!(TenantSlug::suggest("Acme Corp"), "acme-corp");
        assert_eq!(
            TenantSlug::suggest("  Acme   Behavioral Health!! "),
            "acme-behavioral-health"
        );
        assert_eq!(TenantSlug::suggest("Ünïcode Ltd"), "n-code-ltd");
    }

    #[test]
    fn metadata_rows_are_bounded_and_blank_rows_ignored() {
        let rows = vec![("plan".into(), "gold".into()), (String::new(), String::new())];
        assert_eq!(parse_metadata(&rows).unwrap().len(), 1);
        let dup = vec![("a".into(), "1".into()), ("a".into(), "2".into())];
        assert!(parse_metadata(&dup).is_err());
        let long = vec![("k".into(), "v".repeat(513))];
        assert!(parse_metadata(&long).is_err());
    }
}
