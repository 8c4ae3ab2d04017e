//! Verification of an HTTP-POST `SAMLResponse` (see the crate docs for the signature rule).

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use base64::Engine as _;
use roxmltree::Node;
use samael::crypto::{AllowedSignatureAlgorithm, Crypto, CryptoProvider, ReduceMode};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::xml::{self, NS_ASSERTION, NS_DSIG, NS_PROTOCOL};
use crate::{ALLOWED_CLOCK_SKEW, Assertion, IdpMetadata, MAX_RESPONSE_BASE64_LEN, SamlError, ServiceProvider};

const STATUS_SUCCESS: &str = "urn:oasis:names:tc:SAML:2.0:status:Success";
const BEARER: &str = "urn:oasis:names:tc:SAML:2.0:cm:bearer";
const NS_XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// Signature algorithms accepted (the digest must be of the same families): no SHA-1, no DSA.
const ALLOWED_ALGORITHMS: &[AllowedSignatureAlgorithm] = &[
    AllowedSignatureAlgorithm::RsaSha256,
    AllowedSignatureAlgorithm::RsaSha384,
    AllowedSignatureAlgorithm::RsaSha512,
    AllowedSignatureAlgorithm::EcdsaSha256,
    AllowedSignatureAlgorithm::EcdsaSha384,
    AllowedSignatureAlgorithm::EcdsaSha512,
];

/// libxml2 and xmlsec have process-global state (lazy initialisation, parser globals) that samael does not
/// guard on every path: every call into them goes through this lock.
static XMLSEC: Mutex<()> = Mutex::new(());

use SamlError::MalformedResponse as Malformed;

/// Verifies a base64 `SAMLResponse` posted to the ACS (HTTP-POST binding) for the request
/// `expected_in_response_to`, at time `now`, and returns the signed assertion's facts.
///
/// Enforced: the signature rule of the crate docs; a SAML 2.0 `Response` with status Success and exactly one
/// (unencrypted) assertion; assertion `Issuer` = metadata entity id; every `AudienceRestriction` lists
/// `sp.entity_id`; a bearer `SubjectConfirmationData` with `Recipient` = `sp.acs_url`, `InResponseTo` =
/// `expected_in_response_to` and a `NotOnOrAfter` in the future; `Conditions` `NotBefore`/`NotOnOrAfter`;
/// a non-empty `NameID`. All time bounds allow [`ALLOWED_CLOCK_SKEW`]. If the `Response` envelope carries
/// `Destination`, `InResponseTo` or `Issuer`, they must match too. IdP-initiated responses are refused.
pub fn verify_response(
    sp: &ServiceProvider,
    idp: &IdpMetadata,
    saml_response_b64: &str,
    expected_in_response_to: &str,
    now: OffsetDateTime,
) -> Result<Assertion, SamlError> {
    let result = verify(sp, idp, saml_response_b64, expected_in_response_to, now);
    if let Err(error) = &result {
        // The code only: assertion contents are never logged.
        tracing::debug!(code = error.code(), idp = %idp.entity_id, "SAML response refused");
    }
    result
}

fn verify(
    sp: &ServiceProvider,
    idp: &IdpMetadata,
    saml_response_b64: &str,
    expected: &str,
    now: OffsetDateTime,
) -> Result<Assertion, SamlError> {
    if expected.is_empty() {
        return Err(SamlError::WrongInResponseTo);
    }
    let text = decode(saml_response_b64)?;
    let raw = xml::parse(&text).ok_or(Malformed("the response is not well-formed XML (or has a DTD)"))?;
    let response = raw.root_element();
    if !xml::is(response, NS_PROTOCOL, "Response") || response.attribute("Version") != Some("2.0") {
        return Err(Malformed("the root element is not a SAML 2.0 samlp:Response"));
    }
    // Unauthenticated here, but it can only refuse (IdP error responses are often unsigned).
    check_status(response)?;
    if raw
        .descendants()
        .any(|n| xml::is(n, NS_ASSERTION, "EncryptedAssertion"))
    {
        return Err(Malformed("encrypted assertions are not supported"));
    }
    if raw
        .descendants()
        .filter(|n| xml::is(*n, NS_ASSERTION, "Assertion"))
        .count()
        != 1
    {
        return Err(Malformed("the response must carry exactly one assertion"));
    }
    if !raw.descendants().any(|n| xml::is(n, NS_DSIG, "Signature")) {
        return Err(SamlError::Unsigned);
    }

    let signed_text = reduce_to_signed(&text, idp)?;
    let signed = xml::parse(&signed_text).ok_or(Malformed("the signed part is not well-formed XML"))?;
    if xml::has_comments_or_pis(&signed) {
        // Exclusive c14n without comments drops them; a "#WithComments" signature could split the NameID.
        return Err(Malformed("the signed part holds comments or processing instructions"));
    }
    let root = signed.root_element();
    let assertion = if xml::is(root, NS_ASSERTION, "Assertion") {
        root
    } else if xml::is(root, NS_PROTOCOL, "Response") {
        match xml::only_child(root, NS_ASSERTION, "Assertion") {
            Ok(Some(assertion)) => assertion,
            _ => return Err(Malformed("the signed Response has no assertion child")),
        }
    } else {
        return Err(SamlError::Unsigned);
    };

    // Refusal-only checks on the envelope (signed or not).
    check_envelope(response, sp, idp, expected)?;
    read_assertion(assertion, sp, idp, expected, now)
}

fn decode(b64: &str) -> Result<String, SamlError> {
    if b64.len() > MAX_RESPONSE_BASE64_LEN {
        return Err(Malformed("the response is too large"));
    }
    let compact: Vec<u8> = b64.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|_| Malformed("the response is not base64"))?;
    String::from_utf8(bytes).map_err(|_| Malformed("the response is not UTF-8"))
}

/// xmlsec verifies every signature against the metadata certificates; the result is exactly the content one
/// verified reference digested (the signed `Response` when it and its assertion are both signed).
fn reduce_to_signed(text: &str, idp: &IdpMetadata) -> Result<String, SamlError> {
    let _xmlsec = XMLSEC.lock().unwrap_or_else(PoisonError::into_inner);
    Crypto::reduce_xml_to_signed_with_allowed_algorithms(
        text,
        &idp.signing_certs,
        ReduceMode::PreDigest,
        Some(ALLOWED_ALGORITHMS),
    )
    .map_err(|_| SamlError::BadSignature)
}

fn check_status(response: Node<'_, '_>) -> Result<(), SamlError> {
    let status = xml::only_child(response, NS_PROTOCOL, "Status")
        .ok()
        .flatten()
        .ok_or(Malformed("the response has no single Status"))?;
    let code = xml::only_child(status, NS_PROTOCOL, "StatusCode")
        .ok()
        .flatten()
        .ok_or(Malformed("the response has no single StatusCode"))?;
    let value = code.attribute("Value").unwrap_or_default();
    if value == STATUS_SUCCESS {
        return Ok(());
    }
    let mut status = value.to_owned();
    if let Some(second) = xml::children(code, NS_PROTOCOL, "StatusCode").find_map(|c| c.attribute("Value")) {
        status.push_str(" / ");
        status.push_str(second);
    }
    let status: String = status
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(300)
        .collect();
    Err(SamlError::StatusNotSuccess { status })
}

fn issuer_text(node: Node<'_, '_>) -> Result<Option<String>, SamlError> {
    match xml::only_child(node, NS_ASSERTION, "Issuer") {
        Ok(Some(issuer)) => xml::text_only(issuer)
            .map(|t| Some(t.trim().to_owned()))
            .ok_or(Malformed("the Issuer is not text")),
        Ok(None) => Ok(None),
        Err(()) => Err(Malformed("more than one Issuer")),
    }
}

fn check_envelope(
    response: Node<'_, '_>,
    sp: &ServiceProvider,
    idp: &IdpMetadata,
    expected: &str,
) -> Result<(), SamlError> {
    if issuer_text(response)?.is_some_and(|issuer| issuer != idp.entity_id) {
        return Err(SamlError::WrongIssuer);
    }
    if response
        .attribute("Destination")
        .is_some_and(|destination| destination != sp.acs_url)
    {
        return Err(SamlError::WrongRecipient);
    }
    if response
        .attribute("InResponseTo")
        .is_some_and(|in_response_to| in_response_to != expected)
    {
        return Err(SamlError::WrongInResponseTo);
    }
    Ok(())
}

fn instant(value: &str) -> Result<OffsetDateTime, SamlError> {
    let value = value.trim();
    OffsetDateTime::parse(value, &Rfc3339)
        // SAML times are UTC; tolerate a missing "Z".
        .or_else(|_| OffsetDateTime::parse(&format!("{value}Z"), &Rfc3339))
        .map_err(|_| Malformed("a time value is not an xs:dateTime"))
}

fn not_yet_valid(not_before: Option<&str>, now: OffsetDateTime) -> Result<(), SamlError> {
    match not_before {
        Some(value) if now + ALLOWED_CLOCK_SKEW < instant(value)? => Err(SamlError::NotYetValid),
        _ => Ok(()),
    }
}

fn expired(not_on_or_after: &str, now: OffsetDateTime) -> Result<OffsetDateTime, SamlError> {
    let bound = instant(not_on_or_after)?;
    if now - ALLOWED_CLOCK_SKEW >= bound {
        Err(SamlError::Expired)
    } else {
        Ok(bound)
    }
}

fn read_assertion(
    assertion: Node<'_, '_>,
    sp: &ServiceProvider,
    idp: &IdpMetadata,
    expected: &str,
    now: OffsetDateTime,
) -> Result<Assertion, SamlError> {
    if assertion.attribute("Version") != Some("2.0") {
        return Err(Malformed("the assertion is not SAML 2.0"));
    }
    let id = assertion
        .attribute("ID")
        .filter(|id| !id.is_empty())
        .ok_or(Malformed("the assertion has no ID"))?;
    let issuer = issuer_text(assertion)?.ok_or(Malformed("the assertion has no Issuer"))?;
    if issuer != idp.entity_id {
        return Err(SamlError::WrongIssuer);
    }

    let conditions = xml::only_child(assertion, NS_ASSERTION, "Conditions")
        .map_err(|()| Malformed("more than one Conditions"))?
        .ok_or(SamlError::WrongAudience)?;
    not_yet_valid(conditions.attribute("NotBefore"), now)?;
    let conditions_expiry = conditions
        .attribute("NotOnOrAfter")
        .map(|value| expired(value, now))
        .transpose()?;
    let mut restrictions = xml::children(conditions, NS_ASSERTION, "AudienceRestriction").peekable();
    if restrictions.peek().is_none() {
        return Err(SamlError::WrongAudience);
    }
    for restriction in restrictions {
        let mut audiences = xml::children(restriction, NS_ASSERTION, "Audience");
        if !audiences.any(|a| xml::text_only(a).is_some_and(|text| text.trim() == sp.entity_id)) {
            return Err(SamlError::WrongAudience);
        }
    }

    let subject = xml::only_child(assertion, NS_ASSERTION, "Subject")
        .map_err(|()| Malformed("more than one Subject"))?
        .ok_or(SamlError::MissingSubject)?;
    let name_id = match xml::only_child(subject, NS_ASSERTION, "NameID") {
        Ok(Some(node)) => xml::text_only(node).ok_or(Malformed("the NameID is not plain text"))?,
        Ok(None) => return Err(SamlError::MissingSubject),
        Err(()) => return Err(Malformed("more than one NameID")),
    };
    let name_id = name_id.trim();
    if name_id.is_empty() {
        return Err(SamlError::MissingSubject);
    }
    let confirmation_expiry = bearer_confirmation(subject, sp, expected, now)?;
    let not_on_or_after = conditions_expiry.map_or(confirmation_expiry, |c| c.min(confirmation_expiry));

    Ok(Assertion {
        issuer,
        name_id: name_id.to_owned(),
        id: id.to_owned(),
        not_on_or_after,
        attributes: attributes(assertion),
    })
}

/// The first bearer confirmation meeting every rule wins; otherwise the first failure is reported.
/// Returns its `NotOnOrAfter`.
fn bearer_confirmation(
    subject: Node<'_, '_>,
    sp: &ServiceProvider,
    expected: &str,
    now: OffsetDateTime,
) -> Result<OffsetDateTime, SamlError> {
    let mut first_error = None;
    for confirmation in xml::children(subject, NS_ASSERTION, "SubjectConfirmation") {
        if confirmation.attribute("Method") != Some(BEARER) {
            continue;
        }
        let outcome = match xml::only_child(confirmation, NS_ASSERTION, "SubjectConfirmationData") {
            Ok(Some(data)) => check_confirmation_data(data, sp, expected, now),
            Ok(None) => Err(SamlError::MissingSubject),
            Err(()) => Err(Malformed("more than one SubjectConfirmationData")),
        };
        match outcome {
            Ok(bound) => return Ok(bound),
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    Err(first_error.unwrap_or(SamlError::MissingSubject))
}

fn check_confirmation_data(
    data: Node<'_, '_>,
    sp: &ServiceProvider,
    expected: &str,
    now: OffsetDateTime,
) -> Result<OffsetDateTime, SamlError> {
    not_yet_valid(data.attribute("NotBefore"), now)?;
    let bound = expired(
        data.attribute("NotOnOrAfter")
            .ok_or(Malformed("the bearer confirmation has no NotOnOrAfter"))?,
        now,
    )?;
    if data.attribute("Recipient") != Some(sp.acs_url.as_str()) {
        return Err(SamlError::WrongRecipient);
    }
    if data.attribute("InResponseTo") != Some(expected) {
        return Err(SamlError::WrongInResponseTo);
    }
    Ok(bound)
}

fn attributes(assertion: Node<'_, '_>) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for statement in xml::children(assertion, NS_ASSERTION, "AttributeStatement") {
        for attribute in xml::children(statement, NS_ASSERTION, "Attribute") {
            let Some(name) = attribute.attribute("Name") else {
                continue;
            };
            let values = out.entry(name.to_owned()).or_default();
            for value in xml::children(attribute, NS_ASSERTION, "AttributeValue") {
                if value
                    .attribute((NS_XSI, "nil"))
                    .is_some_and(|nil| matches!(nil.trim(), "true" | "1"))
                {
                    continue;
                }
                // Structured (element) values are skipped: only text values are reported.
                if let Some(text) = xml::text_only(value) {
                    values.push(text.trim().to_owned());
                }
            }
        }
    }
    out
}
