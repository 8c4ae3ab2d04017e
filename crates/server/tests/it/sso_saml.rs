//! Single sign-on with SAML 2.0 (the `saml` feature), against a real samlify identity provider
//! (`tests/idp/saml-idp.js`): SP-initiated sign-in through the ACS, and every forged or stale
//! answer refused with nothing created.

use crate::both;
use crate::helpers::*;
use crate::saml_idp::SamlIdp;
use crate::sso::{Tenant, path_of, start, tenant};
use quarterdeck_domain::EmailAddress;
use quarterdeck_domain::user::{Directory, UserStatus};

/// Save acme's SAML connection (metadata pasted) through the portal form.
async fn configure(admin: &TenantClient, idp: &SamlIdp, mode: &str, auto_provision: bool) -> reqwest::Response {
    let page = admin.get_html("/portal/settings/sso").await;
    let mut fields = vec![
        ("protocol", "saml"),
        ("display_name", "Acme SAML"),
        ("mode", mode),
        ("metadata_xml", idp.metadata_xml.as_str()),
        ("email_attribute", "email"),
        ("name_attribute", "name"),
        ("default_roles", "viewer"),
    ];
    if auto_provision {
        fields.push(("auto_provision", "on"));
    }
    admin.post_form("/portal/settings/sso", &page, &fields).await
}

pub async fn saml_tenant(app: &TestApp, auto_provision: bool) -> (Tenant, &'static SamlIdp) {
    let acme = tenant(app, "Acme Corp", "acme").await;
    let idp = crate::saml_idp::shared().await;
    let r = configure(&acme.admin, idp, "both", auto_provision).await;
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
    (acme, idp)
}

/// The identity provider's POST to the ACS, as a browser sends it from the provider's page.
async fn post_acs(c: &TenantClient, idp: &SamlIdp, saml_response: &str, relay_state: &str) -> reqwest::Response {
    c.client
        .post(c.url("/sso/saml/acs"))
        .header("origin", &idp.base)
        .header("sec-fetch-site", "cross-site")
        .form(&[("SAMLResponse", saml_response), ("RelayState", relay_state)])
        .send()
        .await
        .unwrap()
}

/// Start, answer as `variant`, post to the ACS, and follow to the finish in the same browser.
pub async fn saml_sign_in(c: &TenantClient, idp: &SamlIdp, email: &str, variant: &str) -> reqwest::Response {
    let auth = start(c).await;
    let answer = idp.respond(&auth, email, "Sam Saml", variant).await;
    let r = post_acs(c, idp, &answer.saml_response, &answer.relay_state).await;
    if r.status() != 303 {
        return r;
    }
    c.get(&location(&r)).await
}

async fn user(app: &TestApp, tid: &str, email: &str) -> Option<quarterdeck_domain::user::User> {
    app.core
        .store()
        .user_by_email(
            Directory::Tenant(tid.parse().unwrap()),
            &EmailAddress::parse(email).unwrap(),
        )
        .await
        .unwrap()
        .map(|(u, _)| u)
}

both!(
    async fn a_saml_sign_in_provisions_the_user_and_lands_on_the_portal_and_links_invitees(app) {
        let (acme, idp) = saml_tenant(&app, true).await;
        let page = app.tenant_client("acme").get_html("/login").await;
        assert!(page.contains("Sign in with Acme SAML"));

        let c = app.tenant_client("acme");
        let auth = start(&c).await;
        assert!(auth.as_str().starts_with(&format!("{}/sso?", idp.base)), "{auth}");
        let answer = idp.respond(&auth, "sam@acme.test", "Sam Saml", "ok").await;
        assert_eq!(answer.acs_url, c.url("/sso/saml/acs"));
        let r = post_acs(&c, idp, &answer.saml_response, &answer.relay_state).await;
        assert_eq!(r.status(), 303);
        assert!(location(&r).starts_with("/sso/saml/finish?state="));
        let r = c.get(&location(&r)).await;
        assert_eq!(location(&r), "/portal");
        assert_eq!(c.get("/portal").await.status(), 200);
        let sam = user(&app, &acme.id, "sam@acme.test").await.unwrap();
        assert_eq!(sam.roles, vec!["viewer"]);
        assert_eq!(sam.name.as_deref(), Some("Sam Saml"));
        let ev = app.events_of("USER_PROVISIONED").await;
        assert_eq!(ev[0].details["issuer"], format!("{}/metadata", idp.base));

        // The same response again: refused (its attempt is spent), nothing new.
        let r = post_acs(&app.tenant_client("acme"), idp, &answer.saml_response, &answer.relay_state).await;
        assert_eq!(r.status(), 401);
        assert_eq!(app.events_of("USER_PROVISIONED").await.len(), 1);

        // An invited user is linked by the verified email and becomes active.
        app.invite("tia@acme.test", &acme.id, &["developer"]).await;
        let r = saml_sign_in(&app.tenant_client("acme"), idp, "tia@acme.test", "ok").await;
        assert_eq!(location(&r), "/portal");
        let tia = user(&app, &acme.id, "tia@acme.test").await.unwrap();
        assert_eq!((tia.status, tia.roles), (UserStatus::Active, vec!["developer".to_owned()]));
        assert_eq!(app.events_of("USER_LINKED").await.len(), 1);
    }
);

both!(
    async fn unsigned_tampered_wrapped_misaddressed_expired_or_foreign_assertions_are_refused(app) {
        let (acme, idp) = saml_tenant(&app, true).await;
        for variant in [
            "unsigned",
            "tampered",
            "wrapped",
            "other_signer",
            "wrong_audience",
            "wrong_recipient",
            "expired",
            "wrong_in_response_to",
        ] {
            let c = app.tenant_client("acme");
            let r = saml_sign_in(&c, idp, "victim@acme.test", variant).await;
            assert_eq!(r.status(), 401, "{variant}");
            assert!(r.text().await.unwrap().contains("could not be verified"), "{variant}");
            assert_eq!(c.get("/portal").await.status(), 303, "{variant}: not signed in");
            let last = app.events_of("SIGN_IN_FAILED").await.into_iter().next().unwrap();
            assert_eq!(last.details["reason"], "invalid_response", "{variant}");
        }
        assert!(user(&app, &acme.id, "victim@acme.test").await.is_none());
        assert!(app.events_of("USER_PROVISIONED").await.is_empty());

        // Comment injection: the NameID is read whole, or refused; never as the part before it.
        let c = app.tenant_client("acme");
        let _ = saml_sign_in(&c, idp, "victim@acme.test", "comment_injection").await;
        assert!(user(&app, &acme.id, "victim@acme.test").await.is_none());
    }
);

both!(
    async fn a_response_the_attacker_got_cannot_sign_in_the_victims_browser(app) {
        let (acme, idp) = saml_tenant(&app, true).await;
        let attacker = app.tenant_client("acme");
        let auth = start(&attacker).await;
        let answer = idp.respond(&auth, "mallory@acme.test", "Mallory", "ok").await;

        // The victim's browser is made to post it (login CSRF): verified at the ACS, but the
        // finish needs the browser that started the sign-in.
        let victim = app.tenant_client("acme");
        let r = post_acs(&victim, idp, &answer.saml_response, &answer.relay_state).await;
        assert_eq!(r.status(), 303);
        let r = victim.get(&location(&r)).await;
        assert_eq!(r.status(), 401);
        assert_eq!(victim.get("/portal").await.status(), 303);
        assert!(user(&app, &acme.id, "mallory@acme.test").await.is_none());
        let _ = path_of;
    }
);

both!(
    async fn an_assertion_id_is_accepted_once(app) {
        let (acme, _) = saml_tenant(&app, false).await;
        let provider = app
            .core
            .store()
            .identity_provider(Directory::Tenant(acme.id.parse().unwrap()))
            .await
            .unwrap()
            .unwrap();
        let until = app.clock_now() + time::Duration::minutes(5);
        assert!(app.core.store().record_assertion_id(provider.id, "_a1", until).await.unwrap());
        assert!(!app.core.store().record_assertion_id(provider.id, "_a1", until).await.unwrap());
        assert!(app.core.store().record_assertion_id(provider.id, "_a2", until).await.unwrap());
    }
);

both!(
    async fn saml_metadata_that_cannot_be_used_is_a_field_error_and_nothing_is_saved(app) {
        let acme = tenant(&app, "Acme Corp", "acme").await;
        let page = acme.admin.get_html("/portal/settings/sso").await;
        for (xml, url) in [("<not-metadata/>", ""), ("", "http://127.0.0.1:9/metadata"), ("", "")] {
            let r = acme
                .admin
                .post_form(
                    "/portal/settings/sso",
                    &page,
                    &[
                        ("protocol", "saml"),
                        ("display_name", "Acme SAML"),
                        ("mode", "both"),
                        ("metadata_xml", xml),
                        ("metadata_url", url),
                    ],
                )
                .await;
            assert_eq!(r.status(), 422, "{xml} {url}");
            assert!(r.text().await.unwrap().contains("field-error"));
        }
        assert!(app.events_of("IDENTITY_PROVIDER_CONFIGURED").await.is_empty());
        // By URL: fetched once at save.
        let idp = crate::saml_idp::shared().await;
        let r = acme
            .admin
            .post_form(
                "/portal/settings/sso",
                &page,
                &[
                    ("protocol", "saml"),
                    ("display_name", "Acme SAML"),
                    ("mode", "both"),
                    ("metadata_url", &format!("{}/metadata", idp.base)),
                ],
            )
            .await;
        assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
    }
);
