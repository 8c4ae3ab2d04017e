//! Provider credentials: a tenant's own credentials for the upstream providers the product's
//! data plane calls on its behalf (an AI gateway: the tenant's OpenAI or Anthropic key).
//!
//! The [`ProviderCatalog`] is configuration (`providers` in the settings file): each provider's
//! id, display name and fields, secret or not. A stored credential keeps its non-secret fields
//! in clear and its secret fields sealed together with the server's secret key, bound to the
//! tenant and the credential's id; after saving only a hint of each secret is shown (its last
//! four characters and a keyed fingerprint).

use crate::error::{FieldError, Problems, Result};
use crate::ids::TenantId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;
use uuid::Uuid;

/// Longest value of one field.
pub const MAX_FIELD_CHARS: usize = 4096;

/// One field a provider needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderField {
    /// The key in the resolved credential (`api_key`).
    pub name: String,
    /// What the form calls it (`API key`); the name if unset.
    #[serde(default)]
    pub label: String,
    /// Sealed at rest, never shown again after saving.
    #[serde(default)]
    pub secret: bool,
    #[serde(default)]
    pub required: bool,
}

/// A provider of the catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    /// Stable id (`openai`), what the data plane asks for.
    pub id: String,
    /// Display name (`OpenAI`).
    pub name: String,
    pub fields: Vec<ProviderField>,
}

/// The providers a deployment offers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProviderCatalog(Vec<Provider>);

fn field(name: &str, label: &str, secret: bool, required: bool) -> ProviderField {
    ProviderField {
        name: name.to_owned(),
        label: label.to_owned(),
        secret,
        required,
    }
}

impl Default for ProviderCatalog {
    /// OpenAI and Anthropic, the invitation runbook's example product's providers.
    fn default() -> Self {
        Self(vec![
            Provider {
                id: "openai".to_owned(),
                name: "OpenAI".to_owned(),
                fields: vec![
                    field("api_key", "API key", true, true),
                    field("organization", "Organization", false, false),
                    field("base_url", "Base URL", false, false),
                ],
            },
            Provider {
                id: "anthropic".to_owned(),
                name: "Anthropic".to_owned(),
                fields: vec![
                    field("api_key", "API key", true, true),
                    field("base_url", "Base URL", false, false),
                ],
            },
        ])
    }
}

/// Whether `s` can be a provider id (or field name) of a catalog: `[a-z0-9_-]{1,64}`. Anything
/// else names no provider, and is answered as such before any query (PostgreSQL refuses a NUL
/// in text with an error, not an empty answer).
pub fn is_provider_id(s: &str) -> bool {
    valid_ident(s)
}

fn valid_ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

impl ProviderCatalog {
    /// Checks a configured catalog: ids and field names are `[a-z0-9_-]{1,64}`, unique, and
    /// every provider has at least one field.
    pub fn new(mut providers: Vec<Provider>) -> std::result::Result<Self, String> {
        let mut ids = Vec::new();
        for p in &mut providers {
            if !valid_ident(&p.id) {
                return Err(format!(
                    "providers: id {:?} must be 1 to 64 of a-z, 0-9, '_', '-'",
                    p.id
                ));
            }
            if ids.contains(&p.id) {
                return Err(format!("providers: id {:?} appears twice", p.id));
            }
            ids.push(p.id.clone());
            if p.name.trim().is_empty() {
                p.name = p.id.clone();
            }
            if p.fields.is_empty() {
                return Err(format!("providers: {:?} has no fields", p.id));
            }
            let mut names = Vec::new();
            for f in &mut p.fields {
                if !valid_ident(&f.name) {
                    return Err(format!(
                        "providers: {:?} field {:?} must be 1 to 64 of a-z, 0-9, '_', '-'",
                        p.id, f.name
                    ));
                }
                if names.contains(&f.name) {
                    return Err(format!("providers: {:?} names field {:?} twice", p.id, f.name));
                }
                names.push(f.name.clone());
                if f.label.trim().is_empty() {
                    f.label = f.name.clone();
                }
            }
        }
        Ok(Self(providers))
    }

    pub fn providers(&self) -> &[Provider] {
        &self.0
    }

    pub fn get(&self, id: &str) -> Option<&Provider> {
        self.0.iter().find(|p| p.id == id)
    }
}

/// A secret shorter than this shows no last four characters: of a PIN or a short password
/// they would be most of it (and hints are kept in clear, beside the sealed values).
pub const MIN_CHARS_FOR_TAIL: usize = 16;

/// The last four characters of a secret field's value, or "" for a short one.
pub fn shown_tail(secret: &str) -> String {
    if secret.chars().count() < MIN_CHARS_FOR_TAIL {
        String::new()
    } else {
        crate::api_key::last_four(secret)
    }
}

/// What is shown of a stored secret field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretHint {
    /// Empty for a secret shorter than [`MIN_CHARS_FOR_TAIL`].
    pub last_four: String,
    /// 12 hex characters of HMAC-SHA256 (a key derived from the secret key) over the value:
    /// the same secret saved twice shows the same fingerprint; it reveals nothing of it.
    pub fingerprint: String,
}

/// A tenant's stored credential for one provider.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProviderCredential {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub provider: String,
    /// The non-secret fields, in clear.
    pub fields: BTreeMap<String, String>,
    /// One hint per secret field.
    pub hints: BTreeMap<String, SecretHint>,
    /// The secret fields (a JSON object), sealed; never serialised.
    #[serde(skip)]
    pub sealed: String,
    pub updated_by: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// The values a form sends for one provider: field name → value. An empty secret field on a
/// provider that already has a credential keeps the stored value (the form never shows it).
pub type CredentialInput = BTreeMap<String, String>;

/// The input split into clear and secret fields, checked against the provider's fields.
pub struct ParsedCredential {
    pub fields: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, String>,
}

impl ParsedCredential {
    /// `kept`: the secret fields of the stored credential (empty for a new one), used for
    /// secret fields left empty.
    pub fn parse(provider: &Provider, input: &CredentialInput, kept: &BTreeMap<String, String>) -> Result<Self> {
        let mut p = Problems::new();
        for name in input.keys() {
            if !provider.fields.iter().any(|f| &f.name == name) {
                p.push(FieldError::new(
                    name,
                    "unknown_field",
                    format!("{} has no field {name}.", provider.name),
                ));
            }
        }
        let mut fields = BTreeMap::new();
        let mut secrets = BTreeMap::new();
        for f in &provider.fields {
            let value = input.get(&f.name).map(|v| v.trim()).unwrap_or("");
            if value.chars().count() > MAX_FIELD_CHARS || value.chars().any(char::is_control) {
                p.push(FieldError::new(
                    &f.name,
                    "invalid_value",
                    format!("{} must be one line of at most {MAX_FIELD_CHARS} characters.", f.label),
                ));
                continue;
            }
            let value = if value.is_empty() && f.secret {
                kept.get(&f.name).map(String::as_str).unwrap_or("")
            } else {
                value
            };
            if value.is_empty() {
                if f.required {
                    p.push(FieldError::new(&f.name, "required", format!("Enter the {}.", f.label)));
                }
                continue;
            }
            if f.secret {
                secrets.insert(f.name.clone(), value.to_owned());
            } else {
                fields.insert(f.name.clone(), value.to_owned());
            }
        }
        p.finish()?;
        Ok(Self { fields, secrets })
    }
}

/// What the data plane gets: every field in clear.
#[derive(Clone, Serialize)]
pub struct ResolvedCredential {
    pub tenant_id: TenantId,
    pub provider: String,
    pub credential_id: Uuid,
    pub fields: BTreeMap<String, String>,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl std::fmt::Display for ResolvedCredential {
    /// Never the values (for logs that print one by mistake).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "credential {} ({}) of tenant {}",
            self.credential_id, self.provider, self.tenant_id
        )
    }
}

/// The field names of a map whose values may be secrets: what a `Debug` shows of it.
struct Names<'a>(&'a BTreeMap<String, String>);

impl std::fmt::Debug for Names<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.0.keys().map(|k| (k, "***"))).finish()
    }
}

impl std::fmt::Debug for ParsedCredential {
    /// Field names only: a `?` in a log line must never print a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParsedCredential")
            .field("fields", &self.fields)
            .field("secrets", &Names(&self.secrets))
            .finish()
    }
}

impl std::fmt::Debug for ResolvedCredential {
    /// Every field is a secret here (they are all in clear): names only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedCredential")
            .field("tenant_id", &self.tenant_id)
            .field("provider", &self.provider)
            .field("credential_id", &self.credential_id)
            .field("fields", &Names(&self.fields))
            .field("updated_at", &self.updated_at)
            .finish()
    }
}

/// The credential-read tally of one (service token, credential, minute): turned into one
/// `PROVIDER_CREDENTIAL_READ` event once the minute has passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialReads {
    pub token_id: Uuid,
    pub token_name: String,
    pub credential_id: Uuid,
    pub tenant_id: TenantId,
    pub provider: String,
    /// Unix minute.
    pub window_start: i64,
    pub reads: i64,
    pub first_at: OffsetDateTime,
    pub last_at: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests unwrap")]
    use super::*;

    fn openai() -> Provider {
        ProviderCatalog::default().get("openai").unwrap().clone()
    }

    #[test]
    fn a_credential_keeps_its_stored_secret_when_the_field_is_left_empty() {
        let kept = BTreeMap::from([("api_key".to_owned(), "sk-old".to_owned())]);
        let input = BTreeMap::from([
            ("api_key".to_owned(), "".to_owned()),
            ("organization".to_owned(), " org-1 ".to_owned()),
        ]);
        let parsed = ParsedCredential::parse(&openai(), &input, &kept).unwrap();
        assert_eq!(parsed.secrets["api_key"], "sk-old");
        assert_eq!(parsed.fields["organization"], "org-1");
        assert!(!parsed.fields.contains_key("base_url"));
    }

    #[test]
    fn a_new_credential_needs_its_required_fields_and_no_others() {
        let input = BTreeMap::from([("token".to_owned(), "x".to_owned())]);
        let err = ParsedCredential::parse(&openai(), &input, &BTreeMap::new()).unwrap_err();
        let fields: Vec<&str> = err.fields().iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["token", "api_key"]);
    }

    #[test]
    fn a_parsed_credential_printed_with_debug_shows_no_secret() {
        let input = BTreeMap::from([
            ("api_key".to_owned(), "sk-live-0000111122223333".to_owned()),
            ("organization".to_owned(), "org-1".to_owned()),
        ]);
        let parsed = ParsedCredential::parse(&openai(), &input, &BTreeMap::new()).unwrap();
        let printed = format!("{parsed:?} {parsed:#?}");
        assert!(!printed.contains("sk-live"), "{printed}");
        assert!(printed.contains("api_key") && printed.contains("org-1"), "{printed}");
    }

    #[test]
    fn a_short_secret_shows_no_tail() {
        assert_eq!(shown_tail("pw4242"), "");
        assert_eq!(shown_tail("0123456789abcde"), "");
        assert_eq!(shown_tail("0123456789abcdef"), "cdef");
        assert_eq!(shown_tail("sk-proj-abcdefghijklmnop9876"), "9876");
    }

    #[test]
    fn a_catalog_refuses_duplicate_ids_and_bad_field_names() {
        let mut twice = ProviderCatalog::default().0;
        twice.push(twice[0].clone());
        assert!(ProviderCatalog::new(twice).is_err());
        let mut bad = ProviderCatalog::default().0;
        bad[0].fields[0].name = "API Key".to_owned();
        assert!(ProviderCatalog::new(bad).is_err());
    }
}
