//! The OpenID Connect relying party against a real provider (oidc-provider, through
//! `tests/idp/oidc-provider.mjs`) and against a mock provider for what a real one will not do.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers, not only #[test] functions

#[path = "peer/mock_op.rs"]
mod mock_op;
#[path = "peer/oidc_provider.rs"]
mod oidc_provider;

use mock_op::{IdTokenSpec, MockOp, Signing};
use quarterdeck_sso::oidc::{OidcConfig, OidcError, RelyingParty, VerifiedClaims};
use serde_json::json;
use time::OffsetDateTime;
use time::macros::datetime;

/// A relying party allowed to reach the test providers on loopback.
fn rp() -> RelyingParty {
    let policy = quarterdeck_outbound::OutboundPolicy::from_ranges(&["127.0.0.0/8"]).unwrap();
    RelyingParty::new(std::sync::Arc::new(
        quarterdeck_outbound::Outbound::new(policy).unwrap(),
    ))
}

const CLIENT_ID: &str = "quarterdeck-test";
const CLIENT_SECRET: &str = "test-secret-with-:-and-%-in-it";
const REDIRECT_URI: &str = "http://127.0.0.1:1/sso/oidc/callback";
const STATE: &str = "state-0123456789abcdefghijklmnopqrstuvwxyzABCDEF";
const NONCE: &str = "nonce-0123456789abcdefghijklmnopqrstuvwxyzABCDEF";
const VERIFIER: &str = "verifier-0123456789abcdefghijklmnopqrstuvwxyzABCDEF";
/// The mock's clock (its tokens are stamped relative to it).
const NOW: OffsetDateTime = datetime!(2030-01-01 12:00 UTC);

fn config(issuer: &str) -> OidcConfig {
    OidcConfig::new(issuer, CLIENT_ID, CLIENT_SECRET)
}

/// The real provider stamps its tokens with the wall clock.
#[allow(clippy::disallowed_methods)]
fn wall_clock() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn query(url: &url::Url, name: &str) -> Option<String> {
    url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

// ---------------------------------------------------------------------------------------------
// The real provider

async fn real_sign_in(rp: &RelyingParty, cfg: &OidcConfig, op: &oidc_provider::OidcProvider, login: &str) -> String {
    let url = rp
        .authorization_url(cfg, REDIRECT_URI, STATE, NONCE, VERIFIER)
        .await
        .expect("authorization URL");
    let back = op.sign_in(&url, login).await;
    assert!(back.as_str().starts_with(REDIRECT_URI), "back at {back}");
    assert_eq!(query(&back, "state").as_deref(), Some(STATE), "back at {back}");
    assert_eq!(query(&back, "error"), None, "back at {back}");
    query(&back, "code").expect("a code")
}

#[tokio::test]
async fn a_real_provider_signs_people_in_verified_or_not() {
    let op = oidc_provider::start(CLIENT_ID, CLIENT_SECRET, &[REDIRECT_URI]).await;
    let rp = rp();
    let cfg = config(&op.issuer);
    rp.check(&cfg).await.expect("discovery");

    let code = real_sign_in(&rp, &cfg, &op, "Bob@Acme.test").await;
    let bob = rp
        .complete(&cfg, REDIRECT_URI, &code, NONCE, VERIFIER, wall_clock())
        .await
        .expect("complete");
    assert_eq!(bob.issuer, op.issuer);
    assert!(bob.subject.starts_with("acct-"), "{bob:?}");
    assert_eq!(bob.email.as_deref(), Some("bob@acme.test"));
    assert!(bob.email_verified);
    assert_eq!(bob.name.as_deref(), Some("bob"));

    // The same person again (another browser): the same subject.
    let code = real_sign_in(&rp, &cfg, &op, "bob@acme.test").await;
    let again = rp
        .complete(&cfg, REDIRECT_URI, &code, NONCE, VERIFIER, wall_clock())
        .await
        .expect("again");
    assert_eq!(again, bob);

    // `unverified.` logins: the same email, not verified, another subject.
    let code = real_sign_in(&rp, &cfg, &op, "unverified.bob@acme.test").await;
    let unverified = rp
        .complete(&cfg, REDIRECT_URI, &code, NONCE, VERIFIER, wall_clock())
        .await
        .expect("complete");
    assert_eq!(
        unverified,
        VerifiedClaims {
            email_verified: false,
            subject: unverified.subject.clone(),
            ..bob.clone()
        }
    );
    assert_ne!(unverified.subject, bob.subject);
}

#[tokio::test]
async fn a_real_provider_refuses_a_reused_code_and_a_wrong_pkce_verifier() {
    let op = oidc_provider::start(CLIENT_ID, CLIENT_SECRET, &[REDIRECT_URI]).await;
    let rp = rp();
    let cfg = config(&op.issuer);

    let code = real_sign_in(&rp, &cfg, &op, "carol@acme.test").await;
    rp.complete(&cfg, REDIRECT_URI, &code, NONCE, VERIFIER, wall_clock())
        .await
        .expect("first use");
    let err = rp
        .complete(&cfg, REDIRECT_URI, &code, NONCE, VERIFIER, wall_clock())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "token_exchange_failed", "{err}");
    assert!(err.to_string().contains("invalid_grant"), "{err}");

    let code = real_sign_in(&rp, &cfg, &op, "carol@acme.test").await;
    let other_verifier = format!("{VERIFIER}-other");
    let err = rp
        .complete(&cfg, REDIRECT_URI, &code, NONCE, &other_verifier, wall_clock())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "token_exchange_failed", "{err}");

    // A wrong client secret is refused by the provider too.
    let code = real_sign_in(&rp, &cfg, &op, "carol@acme.test").await;
    let wrong = OidcConfig {
        client_secret: "not-the-secret".into(),
        ..cfg.clone()
    };
    let err = rp
        .complete(&wrong, REDIRECT_URI, &code, NONCE, VERIFIER, wall_clock())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "token_exchange_failed", "{err}");
    assert!(!err.to_string().contains("not-the-secret"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// The mock provider

/// Completes a sign-in whose token endpoint answers `spec` (at the mock's clock, `NOW`).
async fn complete_with(
    mock: &MockOp,
    cfg: &OidcConfig,
    code: &str,
    spec: IdTokenSpec,
) -> Result<VerifiedClaims, OidcError> {
    mock.answer(code, spec);
    rp().complete(cfg, REDIRECT_URI, code, NONCE, VERIFIER, NOW).await
}

/// The error code for a token that differs from a valid one by `tweak`.
async fn refused(tweak: impl FnOnce(&mut IdTokenSpec, &MockOp)) -> String {
    let mock = mock_op::start().await;
    let mut spec = IdTokenSpec::valid(&mock, CLIENT_ID, NONCE, NOW);
    tweak(&mut spec, &mock);
    match complete_with(&mock, &config(&mock.issuer), "code-1", spec).await {
        Ok(claims) => panic!("accepted: {claims:?}"),
        Err(e) => e.code().to_owned(),
    }
}

#[tokio::test]
async fn a_valid_token_is_accepted_and_the_token_endpoint_gets_the_verifier_and_basic_credentials() {
    let mock = mock_op::start().await;
    let cfg = config(&mock.issuer);
    let claims = complete_with(&mock, &cfg, "code-1", IdTokenSpec::valid(&mock, CLIENT_ID, NONCE, NOW))
        .await
        .unwrap();
    assert_eq!(
        claims,
        VerifiedClaims {
            issuer: mock.issuer.clone(),
            subject: "mock-subject-1".into(),
            email: Some("alice@example.test".into()),
            email_verified: true,
            name: Some("Alice Example".into()),
        }
    );
    let requests = mock.token_requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.form.get("grant_type").map(String::as_str), Some("authorization_code"));
    assert_eq!(r.form.get("code").map(String::as_str), Some("code-1"));
    assert_eq!(r.form.get("redirect_uri").map(String::as_str), Some(REDIRECT_URI));
    assert_eq!(r.form.get("code_verifier").map(String::as_str), Some(VERIFIER));
    assert_eq!(
        r.basic_credentials(),
        Some((CLIENT_ID.to_owned(), CLIENT_SECRET.to_owned()))
    );
    assert!(!r.form.contains_key("client_secret"));
}

#[tokio::test]
async fn client_secret_post_is_used_when_it_is_all_the_provider_supports() {
    let mock = mock_op::start().await;
    mock.set_auth_methods(&["client_secret_post"]);
    let cfg = config(&mock.issuer);
    complete_with(&mock, &cfg, "code-1", IdTokenSpec::valid(&mock, CLIENT_ID, NONCE, NOW))
        .await
        .unwrap();
    let r = &mock.token_requests()[0];
    assert_eq!(r.authorization, None);
    assert_eq!(r.form.get("client_id").map(String::as_str), Some(CLIENT_ID));
    assert_eq!(r.form.get("client_secret").map(String::as_str), Some(CLIENT_SECRET));
    assert_eq!(r.form.get("code_verifier").map(String::as_str), Some(VERIFIER));
}

#[tokio::test]
async fn the_authorization_url_asks_for_the_code_flow_with_pkce_state_and_nonce() {
    let mock = mock_op::start().await;
    let mut cfg = config(&mock.issuer);
    cfg.scopes = vec!["email profile".into(), "openid".into(), "groups".into()];
    let url = rp()
        .authorization_url(&cfg, REDIRECT_URI, STATE, NONCE, VERIFIER)
        .await
        .unwrap();
    assert!(
        url.as_str().starts_with(&format!("{}/authorize?", mock.issuer)),
        "{url}"
    );
    let challenge = openidconnect::PkceCodeChallenge::from_code_verifier_sha256(&openidconnect::PkceCodeVerifier::new(
        VERIFIER.to_owned(),
    ));
    for (name, value) in [
        ("response_type", "code"),
        ("client_id", CLIENT_ID),
        ("redirect_uri", REDIRECT_URI),
        ("scope", "openid email profile groups"),
        ("state", STATE),
        ("nonce", NONCE),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ] {
        assert_eq!(query(&url, name).as_deref(), Some(value), "{name} in {url}");
    }
    assert!(
        !url.as_str().contains(CLIENT_SECRET) && !url.as_str().contains(VERIFIER),
        "{url}"
    );

    let err = rp()
        .authorization_url(&cfg, REDIRECT_URI, STATE, NONCE, "too-short")
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_request");
}

#[tokio::test]
async fn a_token_from_another_issuer_is_refused() {
    assert_eq!(
        refused(|s, _| s.iss = Some("http://127.0.0.1:1".into())).await,
        "wrong_issuer"
    );
}

#[tokio::test]
async fn a_token_for_another_client_is_refused() {
    assert_eq!(
        refused(|s, _| s.aud = vec!["someone-else".into()]).await,
        "wrong_audience"
    );
    // Several audiences: only with an azp naming this client.
    assert_eq!(
        refused(|s, _| s.aud.push("someone-else".into())).await,
        "wrong_audience"
    );
    assert_eq!(
        refused(|s, _| {
            s.aud.push("someone-else".into());
            s.azp = Some("someone-else".into());
        })
        .await,
        "wrong_audience"
    );
    let mock = mock_op::start().await;
    let mut spec = IdTokenSpec::valid(&mock, CLIENT_ID, NONCE, NOW);
    spec.aud.push("someone-else".into());
    spec.azp = Some(CLIENT_ID.into());
    complete_with(&mock, &config(&mock.issuer), "code-1", spec)
        .await
        .expect("azp names this client");
}

#[tokio::test]
async fn a_token_with_another_nonce_or_none_is_refused() {
    assert_eq!(
        refused(|s, _| s.nonce = Some("nonce-of-another-sign-in".into())).await,
        "nonce_mismatch"
    );
    assert_eq!(refused(|s, _| s.nonce = None).await, "nonce_mismatch");
}

#[tokio::test]
async fn an_expired_token_is_refused_and_so_is_one_completed_after_its_expiry() {
    assert_eq!(refused(|s, _| s.exp = NOW.unix_timestamp() - 1).await, "expired");
    assert_eq!(refused(|s, _| s.exp = NOW.unix_timestamp()).await, "expired");
    // Issued in the future (beyond five minutes of clock skew).
    assert_eq!(refused(|s, _| s.iat = NOW.unix_timestamp() + 600).await, "expired");

    // Valid at NOW; the clock moves past its expiry.
    let mock = mock_op::start().await;
    let cfg = config(&mock.issuer);
    let rp = rp();
    mock.answer("code-1", IdTokenSpec::valid(&mock, CLIENT_ID, NONCE, NOW));
    mock.answer("code-2", IdTokenSpec::valid(&mock, CLIENT_ID, NONCE, NOW));
    rp.complete(&cfg, REDIRECT_URI, "code-1", NONCE, VERIFIER, NOW)
        .await
        .expect("valid now");
    let later = NOW + time::Duration::hours(2);
    let err = rp
        .complete(&cfg, REDIRECT_URI, "code-2", NONCE, VERIFIER, later)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "expired", "{err}");
}

#[tokio::test]
async fn a_token_signed_with_another_key_is_refused() {
    assert_eq!(refused(|s, _| s.signing = Signing::WrongKey).await, "bad_signature");
    // Under a kid the JWKS does not have.
    assert_eq!(
        refused(|s, _| {
            s.signing = Signing::WrongKey;
            s.kid = Some("unknown".into());
        })
        .await,
        "bad_signature"
    );
}

#[tokio::test]
async fn an_unsigned_token_is_refused() {
    assert_eq!(
        refused(|s, _| s.signing = Signing::AlgNone).await,
        "unsupported_algorithm"
    );
}

#[tokio::test]
async fn a_token_maced_with_the_client_secret_is_refused_even_if_advertised() {
    assert_eq!(
        refused(|s, m| {
            m.set_signing_algs(&["RS256", "HS256"]);
            s.signing = Signing::Hs256(CLIENT_SECRET.into());
        })
        .await,
        "unsupported_algorithm"
    );
}

#[tokio::test]
async fn a_tampered_token_is_refused() {
    assert_eq!(
        refused(|s, _| s.signing = Signing::TamperedPayload).await,
        "bad_signature"
    );
}

#[tokio::test]
async fn a_token_without_subject_is_refused() {
    assert_eq!(refused(|s, _| s.sub = None).await, "missing_claim");
}

#[tokio::test]
async fn a_wrong_at_hash_is_refused() {
    assert_eq!(
        refused(|s, _| s.at_hash = Some("AAAAAAAAAAAAAAAAAAAAAA".into())).await,
        "invalid_id_token"
    );
}

#[tokio::test]
async fn the_email_comes_from_userinfo_when_the_token_lacks_it_and_only_for_the_same_subject() {
    // The userinfo answer is about someone else.
    let code = refused(|s, _| {
        s.email = None;
        s.email_verified = None;
        s.userinfo = Some(json!({ "sub": "someone-else", "email": "eve@example.test", "email_verified": true }));
    })
    .await;
    assert_eq!(code, "userinfo_mismatch");

    // The same subject: email (and its email_verified) from userinfo, the name from the token.
    let mock = mock_op::start().await;
    let mut spec = IdTokenSpec::valid(&mock, CLIENT_ID, NONCE, NOW);
    spec.email = None;
    spec.email_verified = None;
    spec.userinfo = Some(json!({ "sub": "mock-subject-1", "email": "alice@corp.test", "email_verified": "true" }));
    let claims = complete_with(&mock, &config(&mock.issuer), "code-1", spec)
        .await
        .unwrap();
    assert_eq!(claims.email.as_deref(), Some("alice@corp.test"));
    assert!(claims.email_verified);
    assert_eq!(claims.name.as_deref(), Some("Alice Example"));

    // No userinfo endpoint: no email, not verified.
    let mock = mock_op::start().await;
    mock.set_userinfo_endpoint(false);
    let mut spec = IdTokenSpec::valid(&mock, CLIENT_ID, NONCE, NOW);
    spec.email = None;
    let claims = complete_with(&mock, &config(&mock.issuer), "code-1", spec)
        .await
        .unwrap();
    assert_eq!((claims.email, claims.email_verified), (None, false));

    // A userinfo endpoint that refuses the access token.
    let code = refused(|s, _| s.email = None).await;
    assert_eq!(code, "userinfo_failed");
}

#[tokio::test]
async fn custom_claim_names_are_read_and_email_verified_defaults_to_false() {
    let mock = mock_op::start().await;
    let mut cfg = config(&mock.issuer);
    cfg.email_claim = "upn".into();
    cfg.name_claim = "display_name".into();
    let mut spec = IdTokenSpec::valid(&mock, CLIENT_ID, NONCE, NOW);
    spec.email_verified = None;
    spec.extra.insert("upn".into(), json!("alice@corp.test"));
    spec.extra.insert("display_name".into(), json!("Alice (Corp)"));
    let claims = complete_with(&mock, &cfg, "code-1", spec).await.unwrap();
    assert_eq!(claims.email.as_deref(), Some("alice@corp.test"));
    assert_eq!(claims.name.as_deref(), Some("Alice (Corp)"));
    assert!(!claims.email_verified);
}

#[tokio::test]
async fn discovery_naming_another_issuer_is_refused() {
    let mock = mock_op::start().await;
    mock.set_discovery_issuer("http://127.0.0.1:1");
    let cfg = config(&mock.issuer);
    let rp = rp();
    let err = rp.check(&cfg).await.unwrap_err();
    assert_eq!(err.code(), "wrong_issuer", "{err}");
    let err = rp
        .authorization_url(&cfg, REDIRECT_URI, STATE, NONCE, VERIFIER)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "wrong_issuer", "{err}");
    mock.answer("code-1", IdTokenSpec::valid(&mock, CLIENT_ID, NONCE, NOW));
    let err = rp
        .complete(&cfg, REDIRECT_URI, "code-1", NONCE, VERIFIER, NOW)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "wrong_issuer", "{err}");
    // A trailing slash is another issuer too (compared verbatim).
    let mock = mock_op::start().await;
    let err = rp.check(&config(&format!("{}/", mock.issuer))).await.unwrap_err();
    assert_eq!(err.code(), "wrong_issuer", "{err}");
}

#[tokio::test]
async fn check_reports_unreachable_insecure_or_hmac_only_providers() {
    let rp = rp();
    let err = rp.check(&config("http://127.0.0.1:1")).await.unwrap_err();
    assert_eq!(err.code(), "discovery_failed", "{err}");
    // Plain http to a public address (a literal: no DNS needed) is refused before connecting.
    let err = rp.check(&config("http://93.184.216.34")).await.unwrap_err();
    assert_eq!(err.code(), "discovery_failed", "{err}");
    assert!(err.to_string().contains("https"), "{err}");
    // So is a private address outside outbound_allow_private, whatever the port.
    let err = rp.check(&config("https://10.0.0.1:8443")).await.unwrap_err();
    assert!(
        err.to_string().contains("outbound_allow_private does not allow"),
        "{err}"
    );

    let mock = mock_op::start().await;
    rp.check(&config(&mock.issuer)).await.expect("a good provider");
    mock.set_signing_algs(&["HS256", "none"]);
    let err = rp.check(&config(&mock.issuer)).await.unwrap_err();
    assert_eq!(err.code(), "unsupported_algorithm", "{err}");
}

#[tokio::test]
async fn a_reused_code_is_refused_by_the_mock_as_by_a_real_provider() {
    let mock = mock_op::start().await;
    let cfg = config(&mock.issuer);
    let rp = rp();
    mock.answer("code-1", IdTokenSpec::valid(&mock, CLIENT_ID, NONCE, NOW));
    rp.complete(&cfg, REDIRECT_URI, "code-1", NONCE, VERIFIER, NOW)
        .await
        .expect("first use");
    let err = rp
        .complete(&cfg, REDIRECT_URI, "code-1", NONCE, VERIFIER, NOW)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "token_exchange_failed", "{err}");
    assert!(err.to_string().contains("invalid_grant"), "{err}");
    assert!(!err.to_string().contains("code-1"), "{err}");
}

#[tokio::test]
async fn rotated_keys_are_picked_up_despite_the_discovery_cache() {
    let mock = mock_op::start().await;
    let cfg = config(&mock.issuer);
    let rp = rp();
    mock.answer("code-1", IdTokenSpec::valid(&mock, CLIENT_ID, NONCE, NOW));
    rp.complete(&cfg, REDIRECT_URI, "code-1", NONCE, VERIFIER, NOW)
        .await
        .expect("before rotation");
    mock.rotate_keys();
    mock.answer("code-2", IdTokenSpec::valid(&mock, CLIENT_ID, NONCE, NOW));
    rp.complete(&cfg, REDIRECT_URI, "code-2", NONCE, VERIFIER, NOW)
        .await
        .expect("after rotation");
    // The key that was rotated out is refused.
    let mut spec = IdTokenSpec::valid(&mock, CLIENT_ID, NONCE, NOW);
    spec.signing = Signing::WrongKey;
    spec.kid = Some("good".into());
    mock.answer("code-3", spec);
    let err = rp
        .complete(&cfg, REDIRECT_URI, "code-3", NONCE, VERIFIER, NOW)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "bad_signature", "{err}");
}
