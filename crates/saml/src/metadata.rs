//! IdP metadata: parsed and checked once, at configuration time.

use samael::crypto::{CertificateDer, decode_x509_cert};
use samael::metadata::{EntityDescriptor, HTTP_REDIRECT_BINDING};

use crate::xml::{self, NS_METADATA};
use crate::{MetadataField, SamlError};

/// Largest metadata document accepted (bytes).
const MAX_METADATA_LEN: usize = 1024 * 1024;

/// A checked IdP description: what [`crate::authn_request`] and [`crate::verify_response`] need.
///
/// Store [`IdpMetadata::xml`] and parse it again with [`parse_idp_metadata`] when loading configuration.
/// The metadata's own XML signature (if any) is not checked: the administrator vouches for the document.
#[derive(Clone)]
pub struct IdpMetadata {
    /// `EntityDescriptor/@entityID`: the required `Issuer` of assertions.
    pub entity_id: String,
    /// The `SingleSignOnService` location with the HTTP-Redirect binding.
    pub sso_url: String,
    pub(crate) signing_certs: Vec<CertificateDer>,
    xml: String,
}

impl IdpMetadata {
    /// The metadata document as given, to store.
    pub fn xml(&self) -> &str {
        &self.xml
    }

    /// How many signing certificates verification will accept (rollover metadata lists several).
    pub fn signing_certificate_count(&self) -> usize {
        self.signing_certs.len()
    }
}

impl std::fmt::Debug for IdpMetadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdpMetadata")
            .field("entity_id", &self.entity_id)
            .field("sso_url", &self.sso_url)
            .field("signing_certificates", &self.signing_certs.len())
            .finish_non_exhaustive()
    }
}

fn invalid(field: MetadataField, reason: &'static str) -> SamlError {
    SamlError::InvalidMetadata { field, reason }
}

/// Parses and checks IdP metadata: one `EntityDescriptor` with an `entityID`, an `IDPSSODescriptor` with a
/// `SingleSignOnService` for the HTTP-Redirect binding (an absolute http(s) URL), and at least one signing
/// certificate (`KeyDescriptor use="signing"`, or without `use`), each a parseable X.509 certificate.
pub fn parse_idp_metadata(xml: &str) -> Result<IdpMetadata, SamlError> {
    if xml.len() > MAX_METADATA_LEN {
        return Err(invalid(MetadataField::Xml, "the metadata document is too large"));
    }
    let doc = xml::parse(xml).ok_or(invalid(
        MetadataField::Xml,
        "not a well-formed XML document (or has a DTD)",
    ))?;
    if !xml::is(doc.root_element(), NS_METADATA, "EntityDescriptor") {
        return Err(invalid(
            MetadataField::Xml,
            "the root element must be a SAML 2.0 md:EntityDescriptor",
        ));
    }
    let descriptor: EntityDescriptor = xml
        .parse()
        .map_err(|_| invalid(MetadataField::Xml, "not a SAML 2.0 metadata EntityDescriptor"))?;

    let entity_id = descriptor
        .entity_id
        .as_deref()
        .map(str::trim)
        .unwrap_or_default()
        .to_owned();
    if entity_id.is_empty() {
        return Err(invalid(MetadataField::EntityId, "the EntityDescriptor has no entityID"));
    }
    let idps = descriptor.idp_sso_descriptors.unwrap_or_default();
    if idps.is_empty() {
        return Err(invalid(
            MetadataField::Xml,
            "the metadata has no IDPSSODescriptor (is it an SP's?)",
        ));
    }

    let sso_url = idps
        .iter()
        .flat_map(|idp| idp.single_sign_on_services.iter())
        .find(|service| service.binding == HTTP_REDIRECT_BINDING)
        .map(|service| service.location.trim().to_owned())
        .ok_or(invalid(
            MetadataField::SsoUrl,
            "no SingleSignOnService with the HTTP-Redirect binding",
        ))?;
    match url::Url::parse(&sso_url) {
        Ok(url) if matches!(url.scheme(), "https" | "http") && url.has_host() => {}
        _ => {
            return Err(invalid(
                MetadataField::SsoUrl,
                "the HTTP-Redirect SSO location is not an absolute http(s) URL",
            ));
        }
    }

    let key_descriptors: Vec<_> = idps.iter().flat_map(|idp| idp.key_descriptors.iter()).collect();
    let mut signing: Vec<_> = key_descriptors.iter().filter(|k| k.is_signing()).collect();
    if signing.is_empty() {
        // A KeyDescriptor without `use` is valid for both signing and encryption.
        signing = key_descriptors
            .iter()
            .filter(|k| k.key_use.as_deref().is_none_or(str::is_empty))
            .collect();
    }
    let mut signing_certs = Vec::new();
    for encoded in signing
        .iter()
        .filter_map(|k| k.key_info.x509_data.as_ref())
        .flat_map(|d| d.certificates.iter())
    {
        let der = decode_x509_cert(encoded).map_err(|_| {
            invalid(
                MetadataField::SigningCertificate,
                "a signing certificate is not valid base64",
            )
        })?;
        openssl::x509::X509::from_der(der.der_data()).map_err(|_| {
            invalid(
                MetadataField::SigningCertificate,
                "a signing certificate is not an X.509 certificate",
            )
        })?;
        signing_certs.push(der);
    }
    if signing_certs.is_empty() {
        return Err(invalid(
            MetadataField::SigningCertificate,
            "the IdP metadata lists no signing certificate",
        ));
    }

    Ok(IdpMetadata {
        entity_id,
        sso_url,
        signing_certs,
        xml: xml.to_owned(),
    })
}
