//! Single sign-on: the identity provider a directory trusts, the sign-in attempts in flight, and
//! what a verified answer from a provider says about the person signing in.
//!
//! The protocols themselves (OIDC, SAML) live outside the domain (`quarterdeck-sso`); they turn
//! an identity provider's answer into an [`ExternalLogin`], and the core decides who that is:
//! accounts are keyed by (issuer, subject), linked to an invited user only on a verified email,
//! provisioned only when the provider says so.

use crate::error::{Error, FieldError, Problems, Result};
use crate::ids::TenantId;
use crate::user::Directory;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// How the users of a directory sign in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignInMode {
    /// Built-in email and password only (the provider is configured but not offered).
    Password,
    /// The provider and built-in passwords.
    Both,
    /// The provider only: no password sign-in, no `/register`, no one-time passwords.
    SsoOnly,
}

impl SignInMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Password => "password",
            Self::Both => "both",
            Self::SsoOnly => "sso_only",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim() {
            "password" => Ok(Self::Password),
            "both" => Ok(Self::Both),
            "sso_only" => Ok(Self::SsoOnly),
            _ => Err(Error::field("mode", "invalid_mode", "Choose how users sign in.")),
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Self::Password => "Built-in passwords only",
            Self::Both => "Single sign-on and passwords",
            Self::SsoOnly => "Single sign-on only",
        }
    }
    pub fn offers_sso(self) -> bool {
        self != Self::Password
    }
    pub fn allows_passwords(self) -> bool {
        self != Self::SsoOnly
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Oidc,
    Saml,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Oidc => "oidc",
            Self::Saml => "saml",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim() {
            "oidc" => Ok(Self::Oidc),
            "saml" => Ok(Self::Saml),
            _ => Err(Error::field(
                "protocol",
                "invalid_protocol",
                "Choose OpenID Connect or SAML.",
            )),
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Self::Oidc => "OpenID Connect",
            Self::Saml => "SAML 2.0",
        }
    }
}

/// OpenID Connect settings (the client secret is kept apart, sealed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OidcSettings {
    /// The issuer; discovery is at `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    pub client_id: String,
    /// Scopes besides `openid`.
    pub scopes: Vec<String>,
    /// The claim holding the email (`email`, or e.g. `upn`).
    pub email_claim: String,
    /// The claim holding the display name.
    pub name_claim: String,
}

/// SAML settings: the identity provider's metadata, kept as given (its certificates are read
/// from it at each sign-in), and what was read from it when it was saved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamlSettings {
    pub metadata_xml: String,
    /// Where the metadata was fetched from, if it came from a URL.
    pub metadata_url: Option<String>,
    /// The identity provider's entity id (from the metadata).
    pub idp_entity_id: String,
    /// The attribute holding the email (the NameID when empty).
    pub email_attribute: String,
    pub name_attribute: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "protocol", rename_all = "snake_case")]
pub enum ProtocolSettings {
    Oidc(OidcSettings),
    Saml(SamlSettings),
}

impl ProtocolSettings {
    pub fn protocol(&self) -> Protocol {
        match self {
            Self::Oidc(_) => Protocol::Oidc,
            Self::Saml(_) => Protocol::Saml,
        }
    }
}

/// The identity provider of a directory: the platform's or one tenant's.
#[derive(Clone, Debug)]
pub struct IdentityProvider {
    pub id: uuid::Uuid,
    /// `None`: the platform's (the base host's sign-in page).
    pub tenant_id: Option<TenantId>,
    pub display_name: String,
    pub mode: SignInMode,
    /// Create an account on the first sign-in of someone unknown (off unless enabled).
    pub auto_provision: bool,
    /// Roles an auto-provisioned user gets (tenant roles only).
    pub default_roles: Vec<String>,
    /// The platform provider only: the tenant it also serves (on that tenant's host, when the
    /// tenant has no provider of its own), where it provisions new users.
    pub default_tenant_id: Option<TenantId>,
    pub settings: ProtocolSettings,
    /// The OIDC client secret, sealed (see [`SecretKey`]).
    pub sealed_secret: Option<String>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

impl IdentityProvider {
    pub fn directory(&self) -> Directory {
        Directory::of(self.tenant_id)
    }
    pub fn protocol(&self) -> Protocol {
        self.settings.protocol()
    }
    /// Whether this is the platform's provider serving a tenant's host (its default tenant).
    pub fn serves_as_platform_default(&self, dir: Directory) -> bool {
        self.tenant_id.is_none()
            && dir != Directory::Platform
            && self.default_tenant_id.map(Directory::Tenant) == Some(dir)
    }
}

/// The key for [`IdentityProvider::scope_key`]-style uniqueness: one provider per directory.
pub fn scope_key(dir: Directory) -> String {
    match dir {
        Directory::Platform => "platform".to_owned(),
        Directory::Tenant(t) => t.to_string(),
    }
}

/// What the configuration forms send (strings as typed; [`crate::core::Core`] checks them).
#[derive(Clone, Debug, Default)]
pub struct ProviderForm {
    pub protocol: String,
    pub display_name: String,
    pub mode: String,
    pub auto_provision: bool,
    pub default_roles: Vec<String>,
    pub default_tenant_id: String,
    // OIDC
    pub issuer: String,
    pub client_id: String,
    /// Empty: keep the stored secret.
    pub client_secret: String,
    pub scopes: String,
    pub email_claim: String,
    pub name_claim: String,
    // SAML
    pub metadata_xml: String,
    pub metadata_url: String,
    pub email_attribute: String,
    pub name_attribute: String,
}

/// Checks the web layer runs against the outside world before a provider is saved (discovery
/// for OIDC, metadata for SAML): the domain knows no HTTP, so the caller passes the result.
#[derive(Clone, Debug)]
pub enum ProviderCheck {
    Oidc,
    /// The metadata as fetched or pasted, and the entity id read from it.
    Saml {
        metadata_xml: String,
        idp_entity_id: String,
    },
}

/// A person as a provider vouched for them, after the protocol checks (signature, issuer,
/// audience, expiry, nonce or InResponseTo) passed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalLogin {
    pub issuer: String,
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub name: Option<String>,
}

/// A sign-in in flight between the redirect to the provider and its answer. Single use.
#[derive(Clone, Debug)]
pub struct SsoAttempt {
    pub state_hash: crate::token::TokenHash,
    pub provider_id: uuid::Uuid,
    /// The host it started on (`None`: the base host).
    pub tenant_id: Option<TenantId>,
    /// The hash of the browser-binding cookie: the answer must come back to the same browser.
    pub binding_hash: crate::token::TokenHash,
    pub nonce: String,
    pub pkce_verifier: String,
    pub saml_request_id: Option<String>,
    /// A SAML answer verified at the ACS, waiting for the browser to come back with its cookie.
    pub outcome: Option<ExternalLogin>,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// The key client secrets are sealed with (XChaCha20-Poly1305): 32 bytes from the settings or
/// the data directory. A sealed value is bound to its provider's id.
#[derive(Clone)]
pub struct SecretKey([u8; 32]);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(***)")
    }
}

const SEALED_PREFIX: &str = "v1.";

impl SecretKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// 64 hex characters, or 32 bytes in (URL-safe or standard) base64.
    pub fn parse(text: &str) -> Option<Self> {
        use base64::Engine;
        let t = text.trim();
        let bytes = if t.len() == 64 && t.chars().all(|c| c.is_ascii_hexdigit()) {
            hex::decode(t).ok()?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t))
                .ok()?
        };
        Some(Self(bytes.try_into().ok()?))
    }

    pub fn generate(rng: &dyn crate::token::Random) -> Self {
        let mut b = [0u8; 32];
        rng.fill(&mut b);
        Self(b)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A subkey for one purpose: HMAC-SHA256 keyed with this key over `context`, a string
    /// naming the purpose and its version (e.g. `"quarterdeck audit chain v2"`). Subkeys for
    /// different contexts are unrelated, so no use of one helps against another.
    pub fn derive(&self, context: &str) -> [u8; 32] {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(context.as_bytes());
        mac.finalize().into_bytes().into()
    }

    pub fn seal(&self, plaintext: &str, bound_to: uuid::Uuid, rng: &dyn crate::token::Random) -> Result<String> {
        self.seal_bound(plaintext, bound_to.as_bytes(), rng)
    }

    /// Seal `plaintext` bound to `aad` (associated data): it opens only with the same bytes,
    /// so a sealed value copied to another row (another provider, tenant or credential) is
    /// unreadable there.
    pub fn seal_bound(&self, plaintext: &str, aad: &[u8], rng: &dyn crate::token::Random) -> Result<String> {
        use base64::Engine;
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        let cipher = chacha20poly1305::XChaCha20Poly1305::new((&self.0).into());
        let mut nonce = [0u8; 24];
        rng.fill(&mut nonce);
        let ct = cipher
            .encrypt(
                (&nonce).into(),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad,
                },
            )
            .map_err(|_| Error::internal("sealing a secret failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(format!(
            "{SEALED_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out)
        ))
    }

    /// Open a sealed value; a wrong key, another provider's value or a tampered one is an
    /// internal error (the configuration must be saved again).
    pub fn open(&self, sealed: &str, bound_to: uuid::Uuid) -> Result<String> {
        self.open_bound(sealed, bound_to.as_bytes())
    }

    /// Open a value sealed by [`SecretKey::seal_bound`] with the same `aad`.
    pub fn open_bound(&self, sealed: &str, aad: &[u8]) -> Result<String> {
        use base64::Engine;
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        let unreadable = || Error::internal("a sealed secret cannot be opened with this secret key");
        let raw = sealed.strip_prefix(SEALED_PREFIX).ok_or_else(unreadable)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(raw)
            .map_err(|_| unreadable())?;
        if bytes.len() < 24 + 16 {
            return Err(unreadable());
        }
        let (nonce, ct) = bytes.split_at(24);
        let cipher = chacha20poly1305::XChaCha20Poly1305::new((&self.0).into());
        let pt = cipher
            .decrypt(nonce.into(), Payload { msg: ct, aad })
            .map_err(|_| unreadable())?;
        String::from_utf8(pt).map_err(|_| unreadable())
    }
}

/// A short text field: trimmed, required, at most `max` characters, no control characters.
pub(crate) fn required_text(p: &mut Problems, field: &str, value: &str, max: usize, what: &str) -> Option<String> {
    let v = value.trim();
    if v.is_empty() {
        p.push(FieldError::new(field, "required", format!("Enter {what}.")));
        return None;
    }
    if v.chars().count() > max || v.chars().any(char::is_control) {
        p.push(FieldError::new(
            field,
            "invalid",
            format!(
                "{} is at most {max} characters, without control characters.",
                capitalise(what)
            ),
        ));
        return None;
    }
    Some(v.to_owned())
}

fn capitalise(s: &str) -> String {
    let s = s.strip_prefix("the ").or_else(|| s.strip_prefix("a ")).unwrap_or(s);
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// An `http(s)` URL without credentials or fragment, judged on its parsed host (what the HTTP
/// client will connect to — a string split would read `http://a:1\\.localhost/` as a loopback
/// host). `https` is required except for loopback hosts (development and tests); whether an
/// address may really be fetched is the outbound policy's to say (`outbound_allow_private`).
pub(crate) fn provider_url(p: &mut Problems, field: &str, value: &str) -> Option<String> {
    // Kept exactly as typed (a trailing slash included): an OIDC issuer is compared verbatim.
    let v = value.trim();
    let bad = |p: &mut Problems, msg: &str| {
        p.push(FieldError::new(field, "invalid_url", msg.to_owned()));
        None
    };
    if v.is_empty() {
        return bad(p, "Enter the URL.");
    }
    // A backslash is read as a slash by URL parsers: refused, so what is stored is what is
    // fetched.
    if v.contains('\\') || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad(p, "Enter the URL without backslashes or spaces.");
    }
    let Ok(url) = url::Url::parse(v) else {
        return bad(p, "Enter a full URL, starting with https://.");
    };
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return bad(p, "Enter the URL without a user name, password or #fragment.");
    }
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => {
            let d = d.to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => return bad(p, "Enter a full URL, starting with https://."),
    };
    match url.scheme() {
        "https" => Some(v.to_owned()),
        "http" if loopback => Some(v.to_owned()),
        "http" => bad(p, "The identity provider must be reached over https://."),
        _ => bad(p, "Enter a full URL, starting with https://."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Counter(std::sync::atomic::AtomicU8);
    impl crate::token::Random for Counter {
        fn fill(&self, buf: &mut [u8]) {
            for b in buf {
                *b = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    #[test]
    fn a_sealed_secret_opens_only_with_its_key_and_for_its_provider() {
        let rng = Counter(std::sync::atomic::AtomicU8::new(0));
        let key = SecretKey::generate(&rng);
        let other = SecretKey::generate(&rng);
        let id = uuid::Uuid::new_v4();
        let sealed = key.seal("s3cr3t", id, &rng).unwrap();
        assert!(!sealed.contains("s3cr3t"));
        assert_eq!(key.open(&sealed, id).unwrap(), "s3cr3t");
        assert!(other.open(&sealed, id).is_err());
        assert!(key.open(&sealed, uuid::Uuid::new_v4()).is_err());
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(key.open(&tampered, id).is_err());
    }

    #[test]
    fn a_secret_key_parses_from_hex_or_base64_and_nothing_shorter() {
        let hex = "00".repeat(32);
        assert!(SecretKey::parse(&hex).is_some());
        assert!(SecretKey::parse("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").is_some());
        assert!(SecretKey::parse("short").is_none());
        assert!(format!("{:?}", SecretKey::parse(&hex).unwrap()).contains("***"));
    }

    #[test]
    fn provider_urls_need_https_except_on_loopback() {
        let mut p = Problems::new();
        assert_eq!(
            provider_url(&mut p, "issuer", "https://idp.example.com/"),
            Some("https://idp.example.com/".to_owned())
        );
        assert!(provider_url(&mut p, "issuer", "http://127.0.0.1:9000").is_some());
        assert!(p.is_empty());
        assert!(provider_url(&mut p, "issuer", "http://idp.example.com").is_none());
        assert!(provider_url(&mut p, "issuer", "https://user@idp.example.com").is_none());
        assert!(provider_url(&mut p, "issuer", "javascript:alert(1)").is_none());
        assert!(provider_url(&mut p, "issuer", "idp.example.com").is_none());
    }

    #[test]
    fn a_provider_url_is_judged_on_its_parsed_host() {
        let mut p = Problems::new();
        // A string split reads the host as `10.0.0.5:8080\.localhost`; a URL parser (and the
        // HTTP client) as 10.0.0.5.
        assert!(provider_url(&mut p, "metadata_url", "http://10.0.0.5:8080\\.localhost:1/x").is_none());
        assert!(provider_url(&mut p, "metadata_url", "http://10.0.0.5:8080/.localhost:1/x").is_none());
        assert!(provider_url(&mut p, "metadata_url", "http://evil.example#.localhost").is_none());
        assert!(provider_url(&mut p, "metadata_url", "http://evil.example?.localhost:1").is_none());
        assert!(provider_url(&mut p, "metadata_url", "http://a.localhost@evil.example/").is_none());
        assert!(provider_url(&mut p, "metadata_url", "http://sso.localhost:9000/metadata").is_some());
        assert!(provider_url(&mut p, "metadata_url", "http://[::1]:9000/metadata").is_some());
    }
}
