//! SAML 2.0 service provider for Quarterdeck: SP-initiated sign-in with the HTTP-Redirect binding for the
//! `AuthnRequest` and the HTTP-POST binding for the `Response`.
//!
//! * [`parse_idp_metadata`] checks an IdP's metadata once, at configuration time, and keeps what verification
//!   needs (entity id, SSO endpoint, signing certificates, the raw XML to store).
//! * [`authn_request`] builds the redirect URL to the IdP (the caller supplies the request id and relay state).
//! * [`verify_response`] verifies a posted `SAMLResponse`.
//!
//! # Signature rule
//! XML signatures are checked by xmlsec (through samael), never by hand. The response is accepted only when
//! **every** `ds:Signature` in the document verifies against a signing certificate from the metadata
//! (RSA/ECDSA with SHA-256/384/512 only; SHA-1 is refused), **and** the single assertion is covered by one
//! of them: either its own enveloped signature, or an enveloped signature over the whole `Response`. The
//! document is then reduced to exactly the bytes xmlsec digested (samael's `ReduceMode::PreDigest`), and
//! every fact about the user is read from that reduced, verified XML only. A response whose signature covers
//! neither (e.g. a signed `Response` whose reference points elsewhere) is refused as [`SamlError::Unsigned`].
//! Unsigned envelope fields (status, `InResponseTo`, `Destination`, `Issuer` of an unsigned `Response`) are
//! only ever used to *refuse*, never to accept.
//!
//! # Threads
//! libxml2/xmlsec keep process-global state and samael initialises it lazily; this crate serialises every
//! call into xmlsec behind one process-wide mutex, so all functions are safe to call from any thread
//! (e.g. a multi-threaded tokio runtime). A verification takes a few milliseconds; run it in
//! `spawn_blocking` if that matters to the caller.
//!
//! # Replays
//! [`Assertion::id`] and [`Assertion::not_on_or_after`] are returned so the caller can refuse a second use
//! of the same assertion; keep each id until `not_on_or_after + ALLOWED_CLOCK_SKEW`.

mod metadata;
mod request;
mod response;
mod xml;

use std::collections::BTreeMap;

pub use metadata::{IdpMetadata, parse_idp_metadata};
pub use request::{AuthnRequest, authn_request};
pub use response::verify_response;

/// Clock skew allowed between this service and the IdP on every validity bound.
pub const ALLOWED_CLOCK_SKEW: time::Duration = time::Duration::seconds(60);

/// Largest `SAMLResponse` (base64 characters) accepted; larger input is refused before decoding.
pub const MAX_RESPONSE_BASE64_LEN: usize = 1024 * 1024;

/// This service provider, as the IdP knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceProvider {
    /// The SP entity id: sent as the request `Issuer` and required in the assertion's `Audience`.
    pub entity_id: String,
    /// The assertion consumer service URL (HTTP-POST): required as `Recipient` (and `Destination`).
    pub acs_url: String,
}

/// A verified assertion. Only content covered by a verified signature ends up here.
#[derive(Clone, PartialEq, Eq)]
pub struct Assertion {
    /// The assertion `Issuer` (equal to the metadata entity id).
    pub issuer: String,
    /// The subject's `NameID`, as its full canonical text (surrounding whitespace trimmed).
    pub name_id: String,
    /// The assertion `ID`: record it to refuse replays.
    pub id: String,
    /// The earliest of the `Conditions` and bearer `SubjectConfirmationData` `NotOnOrAfter` bounds.
    pub not_on_or_after: time::OffsetDateTime,
    /// Attribute name → values (text values only), from the signed `AttributeStatement`s.
    pub attributes: BTreeMap<String, Vec<String>>,
}

impl std::fmt::Debug for Assertion {
    // Assertion contents are personal data: never print them (ids and bounds are fine).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assertion")
            .field("issuer", &self.issuer)
            .field("id", &self.id)
            .field("not_on_or_after", &self.not_on_or_after)
            .field("name_id", &"<redacted>")
            .field("attributes", &format_args!("<{} redacted>", self.attributes.len()))
            .finish()
    }
}

/// The metadata field an [`SamlError::InvalidMetadata`] is about (for a configuration form).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetadataField {
    /// The document as a whole (not XML, not an `EntityDescriptor`, …).
    Xml,
    /// `EntityDescriptor/@entityID`.
    EntityId,
    /// `IDPSSODescriptor/SingleSignOnService` with the HTTP-Redirect binding.
    SsoUrl,
    /// `IDPSSODescriptor/KeyDescriptor` signing certificates.
    SigningCertificate,
}

impl MetadataField {
    /// Stable snake_case name of the field.
    pub fn as_str(self) -> &'static str {
        match self {
            MetadataField::Xml => "xml",
            MetadataField::EntityId => "entity_id",
            MetadataField::SsoUrl => "sso_url",
            MetadataField::SigningCertificate => "signing_certificate",
        }
    }
}

impl std::fmt::Display for MetadataField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why metadata, a request or a response was refused. Messages never contain assertion contents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SamlError {
    #[error("invalid IdP metadata ({field}): {reason}")]
    InvalidMetadata { field: MetadataField, reason: &'static str },
    #[error("cannot build the SAML request: {0}")]
    InvalidRequest(&'static str),
    #[error("malformed SAML response: {0}")]
    MalformedResponse(&'static str),
    #[error("the SAML assertion is not covered by a signature")]
    Unsigned,
    #[error("the SAML response signature does not verify against the IdP's signing certificates")]
    BadSignature,
    #[error("the SAML issuer is not the configured IdP")]
    WrongIssuer,
    #[error("the SAML assertion is not addressed to this service provider (Audience)")]
    WrongAudience,
    #[error("the SAML response is addressed to another endpoint (Recipient/Destination)")]
    WrongRecipient,
    #[error("the SAML response does not answer the pending request (InResponseTo)")]
    WrongInResponseTo,
    #[error("the SAML assertion is not yet valid")]
    NotYetValid,
    #[error("the SAML assertion has expired")]
    Expired,
    #[error("the IdP answered with a non-success status ({status})")]
    StatusNotSuccess {
        /// The status code URI(s), sanitised (printable ASCII, bounded length).
        status: String,
    },
    #[error("the SAML assertion has no usable subject (NameID)")]
    MissingSubject,
}

impl SamlError {
    /// Stable snake_case code, for logs, metrics and user-facing error pages.
    pub fn code(&self) -> &'static str {
        match self {
            SamlError::InvalidMetadata { .. } => "invalid_metadata",
            SamlError::InvalidRequest(_) => "invalid_request",
            SamlError::MalformedResponse(_) => "malformed_response",
            SamlError::Unsigned => "unsigned",
            SamlError::BadSignature => "bad_signature",
            SamlError::WrongIssuer => "wrong_issuer",
            SamlError::WrongAudience => "wrong_audience",
            SamlError::WrongRecipient => "wrong_recipient",
            SamlError::WrongInResponseTo => "wrong_in_response_to",
            SamlError::NotYetValid => "not_yet_valid",
            SamlError::Expired => "expired",
            SamlError::StatusNotSuccess { .. } => "status_not_success",
            SamlError::MissingSubject => "missing_subject",
        }
    }

    /// For [`SamlError::InvalidMetadata`], the field at fault.
    pub fn metadata_field(&self) -> Option<MetadataField> {
        match self {
            SamlError::InvalidMetadata { field, .. } => Some(*field),
            _ => None,
        }
    }
}
