//! The SAML service provider against a real IdP (samlify under node, `tests/idp/saml-idp.js`): every
//! response here is produced and signed by it; nothing is mocked.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
#![allow(
    clippy::disallowed_methods,
    reason = "the real IdP stamps real times, so these tests read the real clock"
)]

#[path = "peer/saml_idp.rs"]
mod saml_idp;

use base64::Engine as _;
use quarterdeck_saml::{
    ALLOWED_CLOCK_SKEW, Assertion, AuthnRequest, IdpMetadata, MetadataField, SamlError, ServiceProvider, authn_request,
    parse_idp_metadata, verify_response,
};
use saml_idp::{IdpResponse, SamlIdp};
use time::{Duration, OffsetDateTime};

const SP_ENTITY_ID: &str = "https://acme.quarterdeck.test/saml/metadata";
const ACS_URL: &str = "https://acme.quarterdeck.test/saml/acs";
const REQUEST_ID: &str = "_0123456789abcdef0123456789abcdef";
const RELAY_STATE: &str = "rs-5f1c9a0e7b2d4c68";

fn sp() -> ServiceProvider {
    ServiceProvider {
        entity_id: SP_ENTITY_ID.to_owned(),
        acs_url: ACS_URL.to_owned(),
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// The shared IdP, its parsed metadata and our AuthnRequest to it.
struct SignIn {
    idp: &'static SamlIdp,
    metadata: IdpMetadata,
    request: AuthnRequest,
}

async fn sign_in() -> SignIn {
    let idp = saml_idp::shared().await;
    let metadata = parse_idp_metadata(&idp.metadata_xml).unwrap();
    let request = authn_request(&sp(), &metadata, REQUEST_ID, RELAY_STATE, now()).unwrap();
    SignIn { idp, metadata, request }
}

impl SignIn {
    async fn answer(&self, variant: &str) -> IdpResponse {
        self.idp
            .respond(&self.request.url, "alice@example.com", "Alice Liddell", variant)
            .await
    }

    fn verify(&self, response: &IdpResponse) -> Result<Assertion, SamlError> {
        verify_response(&sp(), &self.metadata, &response.saml_response, REQUEST_ID, now())
    }

    async fn refusal_of(&self, variant: &str) -> &'static str {
        let response = self.answer(variant).await;
        match self.verify(&response) {
            Ok(assertion) => panic!(
                "variant {variant} was accepted: {assertion:?} (name_id {})",
                assertion.name_id
            ),
            Err(error) => error.code(),
        }
    }
}

// --- the happy path ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_signed_response_to_our_request_yields_the_users_identity() {
    let sign_in = sign_in().await;

    let response = sign_in.answer("ok").await;
    let assertion = sign_in.verify(&response).unwrap();

    assert_eq!(assertion.issuer, format!("{}/metadata", sign_in.idp.base));
    assert_eq!(assertion.issuer, sign_in.metadata.entity_id);
    assert_eq!(assertion.name_id, "alice@example.com");
    assert_eq!(assertion.attributes["email"], vec!["alice@example.com".to_owned()]);
    assert_eq!(assertion.attributes["name"], vec!["Alice Liddell".to_owned()]);
    assert!(
        assertion.id.starts_with('_') && assertion.id.len() > 16,
        "assertion id {}",
        assertion.id
    );
    let left = assertion.not_on_or_after - now();
    assert!(
        left > Duration::minutes(4) && left <= Duration::minutes(5),
        "expires in {left}"
    );
}

#[tokio::test]
async fn the_idp_reads_our_acs_url_and_relay_state_from_the_redirect_request() {
    let sign_in = sign_in().await;

    let response = sign_in.answer("ok").await;

    let url = &sign_in.request.url;
    assert_eq!(url.as_str().split('?').next().unwrap(), sign_in.metadata.sso_url);
    assert_eq!(sign_in.request.id, REQUEST_ID);
    assert_eq!(response.acs_url, ACS_URL);
    assert_eq!(response.relay_state, RELAY_STATE);
}

#[tokio::test]
async fn a_response_signed_only_at_the_response_level_covers_its_assertion_and_is_accepted() {
    let sign_in = sign_in().await;

    let response = sign_in.answer("response_signed").await;
    let assertion = sign_in.verify(&response).unwrap();

    assert_eq!(assertion.name_id, "alice@example.com");
}

#[tokio::test]
async fn a_response_whose_response_and_assertion_are_both_signed_is_accepted() {
    let sign_in = sign_in().await;

    let response = sign_in.answer("both_signed").await;
    let assertion = sign_in.verify(&response).unwrap();

    assert_eq!(assertion.name_id, "alice@example.com");
    assert_eq!(assertion.attributes["email"], vec!["alice@example.com".to_owned()]);
}

#[tokio::test]
async fn the_browser_login_page_posts_a_verifiable_response_to_our_acs() {
    let sign_in = sign_in().await;
    let http = reqwest::Client::new();

    let page = http
        .get(sign_in.request.url.clone())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(r#"id="email""#) && page.contains(r#"id="name""#) && page.contains(r#"id="sign-in""#));
    let form: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(sign_in.request.url.query_pairs())
        .append_pair("email", "bob@example.com")
        .append_pair("name", "Bob")
        .finish();
    let posted = http
        .post(format!("{}/sso/login", sign_in.idp.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let hidden = |name: &str| {
        let start = posted.find(&format!(r#"name="{name}" value=""#)).unwrap() + name.len() + 15;
        posted[start..].split('"').next().unwrap().to_owned()
    };
    let assertion = verify_response(&sp(), &sign_in.metadata, &hidden("SAMLResponse"), REQUEST_ID, now()).unwrap();

    assert!(posted.contains(&format!(r#"action="{ACS_URL}""#)));
    assert_eq!(hidden("RelayState"), RELAY_STATE);
    assert_eq!(assertion.name_id, "bob@example.com");
    assert_eq!(assertion.attributes["name"], vec!["Bob".to_owned()]);
}

// --- replay-relevant facts ----------------------------------------------------------------------------------

#[tokio::test]
async fn verifying_the_same_response_twice_gives_the_same_assertion_id_for_the_replay_check() {
    let sign_in = sign_in().await;
    let response = sign_in.answer("ok").await;

    let first = sign_in.verify(&response).unwrap();
    let second = sign_in.verify(&response).unwrap();

    assert_eq!(first.id, second.id);
    assert_eq!(first.not_on_or_after, second.not_on_or_after);
}

#[tokio::test]
async fn two_sign_ins_get_different_assertion_ids() {
    let sign_in = sign_in().await;

    let first = sign_in.verify(&sign_in.answer("ok").await).unwrap();
    let second = sign_in.verify(&sign_in.answer("ok").await).unwrap();

    assert_ne!(first.id, second.id);
}

// --- each attack or mistake the IdP can produce is refused with its code -----------------------------------

#[tokio::test]
async fn a_response_without_any_signature_is_refused_as_unsigned() {
    let sign_in = sign_in().await;
    assert_eq!(sign_in.refusal_of("unsigned").await, "unsigned");
}

#[tokio::test]
async fn a_response_whose_email_was_changed_after_signing_is_refused_as_bad_signature() {
    let sign_in = sign_in().await;
    assert_eq!(sign_in.refusal_of("tampered").await, "bad_signature");
}

#[tokio::test]
async fn an_unsigned_assertion_injected_before_the_signed_one_is_refused() {
    let sign_in = sign_in().await;
    let response = sign_in
        .idp
        .respond_with(
            &sign_in.request.url,
            serde_json::json!({ "email": "alice@example.com", "name": "Alice", "variant": "wrapped",
                                "attacker_email": "mallory@evil.test" }),
        )
        .await;

    let error = sign_in.verify(&response).unwrap_err();

    assert_eq!(error.code(), "malformed_response", "{error}");
}

#[tokio::test]
async fn a_response_signed_by_a_key_not_in_the_metadata_is_refused_as_bad_signature() {
    let sign_in = sign_in().await;
    assert_eq!(sign_in.refusal_of("other_signer").await, "bad_signature");
}

#[tokio::test]
async fn an_assertion_for_another_audience_is_refused() {
    let sign_in = sign_in().await;
    assert_eq!(sign_in.refusal_of("wrong_audience").await, "wrong_audience");
}

#[tokio::test]
async fn an_assertion_for_another_recipient_is_refused() {
    let sign_in = sign_in().await;
    assert_eq!(sign_in.refusal_of("wrong_recipient").await, "wrong_recipient");
}

#[tokio::test]
async fn an_assertion_whose_validity_ended_ten_minutes_ago_is_refused_as_expired() {
    let sign_in = sign_in().await;
    assert_eq!(sign_in.refusal_of("expired").await, "expired");
}

#[tokio::test]
async fn a_response_to_another_request_is_refused() {
    let sign_in = sign_in().await;
    assert_eq!(sign_in.refusal_of("wrong_in_response_to").await, "wrong_in_response_to");
}

#[tokio::test]
async fn a_comment_inside_the_name_id_never_truncates_it() {
    let sign_in = sign_in().await;
    let response = sign_in
        .idp
        .respond(&sign_in.request.url, "victim@example.com", "Eve", "comment_injection")
        .await;

    let result = sign_in.verify(&response);

    match result {
        Ok(assertion) => {
            assert_eq!(assertion.name_id, "victim@example.com.evil.test");
            assert_eq!(
                assertion.attributes["email"],
                vec!["victim@example.com.evil.test".to_owned()]
            );
        }
        Err(error) => assert_eq!(error.code(), "malformed_response"),
    }
}

// --- the verifier's own inputs: clock, expected request, SP identity ---------------------------------------

#[tokio::test]
async fn a_valid_response_verified_after_its_expiry_plus_skew_is_refused_as_expired() {
    let sign_in = sign_in().await;
    let response = sign_in.answer("ok").await;
    let expiry = sign_in.verify(&response).unwrap().not_on_or_after;

    let within_skew = verify_response(
        &sp(),
        &sign_in.metadata,
        &response.saml_response,
        REQUEST_ID,
        expiry + Duration::seconds(30),
    );
    let past_skew = verify_response(
        &sp(),
        &sign_in.metadata,
        &response.saml_response,
        REQUEST_ID,
        expiry + ALLOWED_CLOCK_SKEW,
    );
    let much_later = verify_response(
        &sp(),
        &sign_in.metadata,
        &response.saml_response,
        REQUEST_ID,
        now() + Duration::hours(1),
    );

    assert!(within_skew.is_ok(), "{within_skew:?}");
    assert_eq!(past_skew.unwrap_err().code(), "expired");
    assert_eq!(much_later.unwrap_err().code(), "expired");
}

#[tokio::test]
async fn a_response_verified_before_its_not_before_minus_skew_is_refused_as_not_yet_valid() {
    let sign_in = sign_in().await;
    let response = sign_in.answer("ok").await;

    let error = verify_response(
        &sp(),
        &sign_in.metadata,
        &response.saml_response,
        REQUEST_ID,
        now() - Duration::minutes(2),
    )
    .unwrap_err();

    assert_eq!(error.code(), "not_yet_valid");
}

#[tokio::test]
async fn a_response_checked_against_a_different_pending_request_id_is_refused() {
    let sign_in = sign_in().await;
    let response = sign_in.answer("ok").await;

    let other = verify_response(
        &sp(),
        &sign_in.metadata,
        &response.saml_response,
        "_ffffffffffffffff",
        now(),
    );
    let empty = verify_response(&sp(), &sign_in.metadata, &response.saml_response, "", now());

    assert_eq!(other.unwrap_err().code(), "wrong_in_response_to");
    assert_eq!(empty.unwrap_err().code(), "wrong_in_response_to");
}

#[tokio::test]
async fn a_response_for_us_is_refused_by_a_service_provider_with_another_identity() {
    let sign_in = sign_in().await;
    let response = sign_in.answer("ok").await;
    let other_entity = ServiceProvider {
        entity_id: "https://other.quarterdeck.test/saml/metadata".into(),
        ..sp()
    };
    let other_acs = ServiceProvider {
        acs_url: "https://other.quarterdeck.test/saml/acs".into(),
        ..sp()
    };

    let audience = verify_response(
        &other_entity,
        &sign_in.metadata,
        &response.saml_response,
        REQUEST_ID,
        now(),
    );
    let recipient = verify_response(
        &other_acs,
        &sign_in.metadata,
        &response.saml_response,
        REQUEST_ID,
        now(),
    );

    assert_eq!(audience.unwrap_err().code(), "wrong_audience");
    assert_eq!(recipient.unwrap_err().code(), "wrong_recipient");
}

#[tokio::test]
async fn a_response_is_refused_as_wrong_issuer_when_the_metadata_names_another_entity() {
    let sign_in = sign_in().await;
    let response = sign_in.answer("ok").await;
    let renamed = sign_in.idp.metadata_xml.replace(
        &format!(r#"entityID="{}/metadata""#, sign_in.idp.base),
        r#"entityID="https://impostor.example.test/metadata""#,
    );
    let metadata = parse_idp_metadata(&renamed).unwrap();

    let error = verify_response(&sp(), &metadata, &response.saml_response, REQUEST_ID, now()).unwrap_err();

    assert_eq!(error.code(), "wrong_issuer");
}

#[tokio::test]
async fn verification_is_safe_from_many_threads_at_once() {
    let sign_in = sign_in().await;
    let good = sign_in.answer("ok").await.saml_response;
    let forged = sign_in.answer("tampered").await.saml_response;
    let metadata = sign_in.metadata.clone();

    let outcomes: Vec<(bool, bool)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    (0..5).fold((true, true), |(all_ok, all_refused), _| {
                        let ok = verify_response(&sp(), &metadata, &good, REQUEST_ID, now()).is_ok();
                        let refused = verify_response(&sp(), &metadata, &forged, REQUEST_ID, now())
                            .is_err_and(|e| e.code() == "bad_signature");
                        (all_ok && ok, all_refused && refused)
                    })
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });

    assert!(outcomes.iter().all(|&(ok, refused)| ok && refused), "{outcomes:?}");
}

// --- malformed input never panics ---------------------------------------------------------------------------

#[tokio::test]
async fn garbage_and_oversized_input_is_refused_as_malformed_without_panicking() {
    let sign_in = sign_in().await;
    let billion_laughs = r#"<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" Version="2.0">&c;</samlp:Response>"#;
    let deep = format!("{}{}", "<a>".repeat(100_000), "</a>".repeat(100_000));
    let inputs = [
        String::new(),
        "%%% not base64 %%%".to_owned(),
        b64("this is not XML"),
        base64::engine::general_purpose::STANDARD.encode([0xff, 0xfe, 0x00, 0x3c]),
        b64("<html><body>not SAML</body></html>"),
        b64(r#"<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" Version="2.0"><samlp:Status>"#),
        b64(billion_laughs),
        b64(&deep),
        "A".repeat(2 * 1024 * 1024),
    ];

    for input in &inputs {
        let error = verify_response(&sp(), &sign_in.metadata, input, REQUEST_ID, now()).unwrap_err();
        assert_eq!(
            error.code(),
            "malformed_response",
            "{error} for input of {} bytes",
            input.len()
        );
    }
}

#[tokio::test]
async fn an_idp_error_status_is_refused_as_status_not_success() {
    let sign_in = sign_in().await;
    let error_response = format!(
        r#"<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="_e1" Version="2.0" IssueInstant="2030-01-01T00:00:00Z" InResponseTo="{REQUEST_ID}"><saml:Issuer>{}</saml:Issuer><samlp:Status><samlp:StatusCode Value="urn:oasis:names:tc:SAML:2.0:status:Responder"><samlp:StatusCode Value="urn:oasis:names:tc:SAML:2.0:status:AuthnFailed"/></samlp:StatusCode></samlp:Status></samlp:Response>"#,
        sign_in.metadata.entity_id
    );

    let error = verify_response(&sp(), &sign_in.metadata, &b64(&error_response), REQUEST_ID, now()).unwrap_err();

    assert_eq!(error.code(), "status_not_success");
    assert!(error.to_string().contains("AuthnFailed"), "{error}");
}

// --- metadata and request parameters ------------------------------------------------------------------------

#[tokio::test]
async fn the_idps_metadata_yields_its_entity_id_redirect_endpoint_and_signing_certificate() {
    let idp = saml_idp::start().await;

    let metadata = parse_idp_metadata(&idp.metadata_xml).unwrap();

    assert_eq!(metadata.entity_id, format!("{}/metadata", idp.base));
    assert_eq!(metadata.sso_url, format!("{}/sso", idp.base));
    assert_eq!(metadata.signing_certificate_count(), 1);
    assert_eq!(metadata.xml(), idp.metadata_xml);
}

#[tokio::test]
async fn broken_metadata_is_refused_with_the_field_at_fault() {
    let idp = saml_idp::shared().await;
    let real = &idp.metadata_xml;
    let key_descriptor = &real[real.find("<KeyDescriptor").unwrap()..real.find("</KeyDescriptor>").unwrap() + 16];
    let certificate_start = real.find("<ds:X509Certificate>").unwrap() + 20;
    let cases: [(String, MetadataField); 7] = [
        ("this is not XML".into(), MetadataField::Xml),
        (r#"<!DOCTYPE x [<!ENTITY e "e">]><x>&e;</x>"#.into(), MetadataField::Xml),
        ("<EntityDescriptor/>".into(), MetadataField::Xml),
        (real.replace(key_descriptor, ""), MetadataField::SigningCertificate),
        (
            format!("{}!!{}", &real[..certificate_start], &real[certificate_start..]),
            MetadataField::SigningCertificate,
        ),
        (
            real.replace("bindings:HTTP-Redirect", "bindings:HTTP-POST"),
            MetadataField::SsoUrl,
        ),
        (
            real.replace(&format!(r#"entityID="{}/metadata""#, idp.base), ""),
            MetadataField::EntityId,
        ),
    ];

    for (xml, field) in cases {
        let error = parse_idp_metadata(&xml).unwrap_err();
        assert_eq!(error.code(), "invalid_metadata");
        assert_eq!(error.metadata_field(), Some(field), "{error}");
    }
}

#[tokio::test]
async fn request_ids_that_are_not_xsd_ids_and_overlong_relay_states_are_refused() {
    let idp = saml_idp::shared().await;
    let metadata = parse_idp_metadata(&idp.metadata_xml).unwrap();

    let bad_id = authn_request(&sp(), &metadata, "0bad id", RELAY_STATE, now());
    let long_relay = authn_request(&sp(), &metadata, REQUEST_ID, &"r".repeat(81), now());

    assert_eq!(bad_id.unwrap_err().code(), "invalid_request");
    assert_eq!(long_relay.unwrap_err().code(), "invalid_request");
}
