//! SP-initiated `AuthnRequest` for the HTTP-Redirect binding (unsigned: the IdP must not require signed requests).

use samael::metadata::HTTP_POST_BINDING;
use samael::schema::{Issuer, NameIdPolicy};

use crate::{IdpMetadata, SamlError, ServiceProvider};

/// Relay state limit from the SAML bindings specification (3.4.3: at most 80 bytes).
const MAX_RELAY_STATE_LEN: usize = 80;
const MAX_REQUEST_ID_LEN: usize = 256;

/// A request to send the browser to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthnRequest {
    /// The request `ID`: keep it (e.g. with the relay state) and pass it to [`crate::verify_response`].
    pub id: String,
    /// The IdP SSO URL with `SAMLRequest` (deflated, base64) and `RelayState` query parameters.
    pub url: url::Url,
}

/// Whether `id` is an `xsd:ID` (an NCName), restricted to ASCII.
fn is_xsd_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && id.len() <= MAX_REQUEST_ID_LEN
}

/// Builds the HTTP-Redirect URL for an `AuthnRequest` asking for an HTTP-POST response to `sp.acs_url`.
///
/// `request_id` must be an `xsd:ID` (e.g. `"_"` + 32 hex characters from the caller's randomness);
/// `relay_state` at most 80 bytes (omitted from the URL when empty).
pub fn authn_request(
    sp: &ServiceProvider,
    idp: &IdpMetadata,
    request_id: &str,
    relay_state: &str,
    now: time::OffsetDateTime,
) -> Result<AuthnRequest, SamlError> {
    if !is_xsd_id(request_id) {
        return Err(SamlError::InvalidRequest(
            "the request id is not an xsd:ID (e.g. \"_\" + hex)",
        ));
    }
    if relay_state.len() > MAX_RELAY_STATE_LEN {
        return Err(SamlError::InvalidRequest("the relay state is longer than 80 bytes"));
    }
    if sp.entity_id.trim().is_empty() {
        return Err(SamlError::InvalidRequest("the SP entity id is empty"));
    }
    if url::Url::parse(&sp.acs_url).is_err() {
        return Err(SamlError::InvalidRequest("the SP ACS URL is not an absolute URL"));
    }
    let issue_instant = chrono::DateTime::from_timestamp(now.unix_timestamp(), now.nanosecond())
        .ok_or(SamlError::InvalidRequest("the clock is out of range"))?;

    let request = samael::schema::AuthnRequest {
        id: request_id.to_owned(),
        version: "2.0".to_owned(),
        issue_instant,
        destination: Some(idp.sso_url.clone()),
        issuer: Some(Issuer {
            format: Some("urn:oasis:names:tc:SAML:2.0:nameid-format:entity".to_owned()),
            value: Some(sp.entity_id.clone()),
            ..Issuer::default()
        }),
        name_id_policy: Some(NameIdPolicy {
            allow_create: Some(true),
            ..NameIdPolicy::default()
        }),
        assertion_consumer_service_url: Some(sp.acs_url.clone()),
        protocol_binding: Some(HTTP_POST_BINDING.to_owned()),
        ..samael::schema::AuthnRequest::default()
    };
    let url = request
        .redirect(relay_state)
        .ok()
        .flatten()
        .ok_or(SamlError::InvalidRequest(
            "the request could not be encoded for the IdP SSO URL",
        ))?;
    Ok(AuthnRequest {
        id: request_id.to_owned(),
        url,
    })
}

#[cfg(test)]
mod tests {
    use super::is_xsd_id;

    #[test]
    fn request_ids_must_be_ncnames() {
        assert!(is_xsd_id("_0123456789abcdef0123456789abcdef"));
        assert!(is_xsd_id("id-1.a"));
        assert!(!is_xsd_id(""));
        assert!(!is_xsd_id("1abc"));
        assert!(!is_xsd_id("_a b"));
        assert!(!is_xsd_id("_a\"b"));
        assert!(!is_xsd_id("_é"));
    }
}
