//! Single sign-on with OpenID Connect: against a real provider (oidc-provider from npm, started
//! per test) for the flows, and against a mock provider for the answers a real one never gives
//! (wrong issuer or audience, bad signature, `alg: none`, expired, wrong nonce).
//!
//! Every refusal is checked for what matters: nobody signed in, nothing created or linked, and
//! a `SIGN_IN_FAILED` event naming the reason.

use crate::both;
use crate::helpers::*;
use crate::mock_op::{IdTokenSpec, MockOp, Signing};
use crate::oidc_provider::OidcProvider;
use quarterdeck_domain::user::{Directory, UserStatus};
use quarterdeck_domain::{EmailAddress, TenantId};

pub const CLIENT_ID: &str = "quarterdeck-test";
pub const CLIENT_SECRET: &str = "a client secret nobody logs";

/// A tenant `slug` with an admin signed in on its host.
pub struct Tenant {
    pub id: String,
    pub admin: TenantClient,
}

pub async fn tenant(app: &TestApp, name: &str, slug: &str) -> Tenant {
    if app.core.store().owner_exists().await.unwrap() {
        // Signed in already.
    } else {
        app.sign_in_owner().await;
    }
    let id = app.create_tenant(name, slug).await;
    let admin = app.tenant_admin(&id, slug, &format!("admin@{slug}.test")).await;
    Tenant { id, admin }
}

pub fn redirect_uri(app: &TestApp, slug: &str) -> String {
    format!("http://{slug}.localhost:{}/sso/oidc/callback", app.port())
}

pub async fn start_op(app: &TestApp, slugs: &[&str]) -> OidcProvider {
    let uris: Vec<String> = slugs
        .iter()
        .map(|s| {
            if s.is_empty() {
                format!("{}/sso/oidc/callback", app.base_url)
            } else {
                redirect_uri(app, s)
            }
        })
        .collect();
    let uris: Vec<&str> = uris.iter().map(String::as_str).collect();
    crate::oidc_provider::start(CLIENT_ID, CLIENT_SECRET, &uris).await
}

/// Save the tenant's OIDC connection through its portal form; returns the response.
pub async fn configure(
    admin: &TenantClient,
    issuer: &str,
    mode: &str,
    auto_provision: bool,
    roles: &[&str],
) -> reqwest::Response {
    let page = admin.get_html("/portal/settings/sso").await;
    let mut fields = vec![
        ("protocol", "oidc"),
        ("display_name", "Acme SSO"),
        ("mode", mode),
        ("issuer", issuer),
        ("client_id", CLIENT_ID),
        ("client_secret", CLIENT_SECRET),
        ("scopes", "email profile"),
        ("email_claim", "email"),
        ("name_claim", "name"),
    ];
    if auto_provision {
        fields.push(("auto_provision", "on"));
    }
    for r in roles {
        fields.push(("default_roles", r));
    }
    admin.post_form("/portal/settings/sso", &page, &fields).await
}

/// `GET /sso/start` on `c`'s host: the provider's URL the browser is sent to.
pub async fn start(c: &TenantClient) -> url::Url {
    let r = c.get("/sso/start").await;
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
    location(&r).parse().unwrap()
}

/// The callback URL's path and query, for the tenant client to open on its own host.
pub fn path_of(u: &url::Url) -> String {
    format!("{}?{}", u.path(), u.query().unwrap_or_default())
}

/// Sign in through the provider as `login`; returns the callback's response.
pub async fn sso_sign_in(c: &TenantClient, op: &OidcProvider, login: &str) -> reqwest::Response {
    let auth = start(c).await;
    let back = op.sign_in(&auth, login).await;
    c.get(&path_of(&back)).await
}

fn dir(tid: &str) -> Directory {
    Directory::Tenant(tid.parse::<TenantId>().unwrap())
}

async fn user(app: &TestApp, tid: &str, email: &str) -> Option<quarterdeck_domain::user::User> {
    app.core
        .store()
        .user_by_email(dir(tid), &EmailAddress::parse(email).unwrap())
        .await
        .unwrap()
        .map(|(u, _)| u)
}

async fn failures(app: &TestApp) -> Vec<String> {
    // Oldest first.
    app.events_of("SIGN_IN_FAILED")
        .await
        .iter()
        .rev()
        .filter(|e| e.details["method"] == "sso")
        .map(|e| e.details["reason"].as_str().unwrap_or_default().to_owned())
        .collect()
}

both!(
    async fn an_invited_user_signs_in_with_oidc_is_linked_activated_and_lands_on_the_portal(app) {
        let acme = tenant(&app, "Acme Corp", "acme").await;
        let op = start_op(&app, &["acme"]).await;
        let r = configure(&acme.admin, &op.issuer, "both", false, &[]).await;
        assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
        app.invite("bob@acme.test", &acme.id, &["developer"]).await;
        assert_eq!(user(&app, &acme.id, "bob@acme.test").await.unwrap().status, UserStatus::Invited);

        let bob = app.tenant_client("acme");
        let login_page = bob.get_html("/login").await;
        assert!(login_page.contains("Sign in with Acme SSO"), "the sign-in page offers the provider");
        let r = sso_sign_in(&bob, &op, "bob@acme.test").await;

        assert_eq!(r.status(), 303);
        assert_eq!(location(&r), "/portal");
        let portal = bob.get("/portal").await;
        assert_eq!(portal.status(), 200);
        let u = user(&app, &acme.id, "bob@acme.test").await.unwrap();
        assert_eq!(u.status, UserStatus::Active);
        assert_eq!(u.roles, vec!["developer"]);
        let linked = app.events_of("USER_LINKED").await;
        assert_eq!(linked.len(), 1);
        assert_eq!(linked[0].details["previous_status"], "INVITED");
        assert_eq!(linked[0].details["issuer"], op.issuer.as_str());
        let sign_ins = app.events_of("SIGN_IN_SUCCEEDED").await;
        assert!(sign_ins.iter().any(|e| e.details["method"] == "sso" && e.details["user_id"] == u.id.to_string()));

        // The next sign-in finds the account by (issuer, subject): no second link.
        let again = app.tenant_client("acme");
        let r = sso_sign_in(&again, &op, "bob@acme.test").await;
        assert_eq!(location(&r), "/portal");
        assert_eq!(app.events_of("USER_LINKED").await.len(), 1);
        assert!(!logs_contain(CLIENT_SECRET), "the client secret is in no log line");
    }
);

both!(
    async fn someone_unknown_is_refused_unless_auto_provisioning_is_on_and_then_gets_only_the_default_roles(app) {
        let acme = tenant(&app, "Acme Corp", "acme").await;
        let op = start_op(&app, &["acme"]).await;
        configure(&acme.admin, &op.issuer, "both", false, &[]).await;

        let carol = app.tenant_client("acme");
        let r = sso_sign_in(&carol, &op, "carol@acme.test").await;
        assert_eq!(r.status(), 401);
        assert!(r.text().await.unwrap().contains("no account for you here"));
        assert!(user(&app, &acme.id, "carol@acme.test").await.is_none());
        assert_eq!(carol.get("/portal").await.status(), 303, "not signed in");
        assert_eq!(failures(&app).await, vec!["not_provisioned"]);

        let r = configure(&acme.admin, &op.issuer, "both", true, &["viewer"]).await;
        assert_eq!(r.status(), 303);
        let r = sso_sign_in(&carol, &op, "carol@acme.test").await;
        assert_eq!(location(&r), "/portal");
        let u = user(&app, &acme.id, "carol@acme.test").await.unwrap();
        assert_eq!(u.status, UserStatus::Active);
        assert_eq!(u.roles, vec!["viewer"], "the default roles, not admin");
        assert_eq!(u.name.as_deref(), Some("carol"));
        let provisioned = app.events_of("USER_PROVISIONED").await;
        assert_eq!(provisioned.len(), 1);
        assert_eq!(provisioned[0].details["roles"], serde_json::json!(["viewer"]));
        assert_eq!(provisioned[0].tenant_id.unwrap().to_string(), acme.id);
    }
);

both!(
    async fn an_unverified_email_never_links_an_invited_user_or_provisions_one(app) {
        let acme = tenant(&app, "Acme Corp", "acme").await;
        let op = start_op(&app, &["acme"]).await;
        configure(&acme.admin, &op.issuer, "both", true, &["viewer"]).await;
        app.invite("dave@acme.test", &acme.id, &["developer"]).await;

        let c = app.tenant_client("acme");
        let r = sso_sign_in(&c, &op, "unverified.dave@acme.test").await;
        assert_eq!(r.status(), 401);
        let r2 = sso_sign_in(&c, &op, "unverified.erin@acme.test").await;
        assert_eq!(r2.status(), 401);

        assert_eq!(user(&app, &acme.id, "dave@acme.test").await.unwrap().status, UserStatus::Invited);
        assert!(user(&app, &acme.id, "erin@acme.test").await.is_none());
        assert!(app.events_of("USER_LINKED").await.is_empty());
        assert!(app.events_of("USER_PROVISIONED").await.is_empty());
        assert_eq!(failures(&app).await, vec!["email_not_verified", "email_not_verified"]);
    }
);

both!(
    async fn sso_only_turns_off_passwords_register_and_one_time_passwords_and_invitations_become_notices(app) {
        let acme = tenant(&app, "Acme Corp", "acme").await;
        app.invite("early@acme.test", &acme.id, &["viewer"]).await;
        let early_link = app.invitation_link("early@acme.test").await;
        let c = app.tenant_client("acme");
        // The sign-in form's CSRF token, from before passwords were turned off.
        let form_page = c.get_html("/login").await;
        let op = start_op(&app, &["acme"]).await;
        let r = configure(&acme.admin, &op.issuer, "sso_only", false, &[]).await;
        assert_eq!(r.status(), 303);

        // Password sign-in: the same answer as a wrong password, for a right one.
        let page = c.get_html("/login").await;
        assert!(page.contains("Sign in with Acme SSO"));
        assert!(!page.contains("name=\"password\""), "no password form");
        let right = c
            .post_form("/login", &form_page, &[("email", "admin@acme.test"), ("password", ADMIN_PASSWORD)])
            .await;
        let (rs, rb) = (right.status(), right.text().await.unwrap());
        let wrong = c
            .post_form("/login", &form_page, &[("email", "admin@acme.test"), ("password", "not the password")])
            .await;
        assert_eq!(rs, 401);
        assert_eq!(rs, wrong.status());
        let wb = wrong.text().await.unwrap();
        let strip = |s: &str| s.split("csrf_token").next().unwrap().to_owned();
        assert_eq!(strip(&rb), strip(&wb));

        // An invitation made earlier cannot be used to set a password.
        let path = &early_link[early_link.find("/register").unwrap()..];
        assert_eq!(c.get(path).await.status(), 403);

        // A new invitation is a notice: where and how to sign in, no link to /register.
        app.invite("new@acme.test", &acme.id, &["viewer"]).await;
        let mail = app.outbox().await.into_iter().rev().find(|m| m.to == "new@acme.test").unwrap();
        assert!(!mail.text.contains("/register"), "{}", mail.text);
        assert!(mail.text.contains(&format!("http://acme.localhost:{}/login", app.port())), "{}", mail.text);
        assert!(mail.text.contains("Acme SSO"));

        // One-time passwords: neither "Add user" nor "Reset password".
        let page = acme.admin.get_html("/portal/settings/users/new").await;
        let r = acme
            .admin
            .post_form(
                "/portal/settings/users/new",
                &page,
                &[("email", "otp@acme.test"), ("role", "viewer"), ("force_change", "on")],
            )
            .await;
        assert_eq!(r.status(), 403);
        assert!(user(&app, &acme.id, "otp@acme.test").await.is_none());

        // The invited user signs in through the provider and is linked.
        let r = sso_sign_in(&c, &op, "new@acme.test").await;
        assert_eq!(location(&r), "/portal");
        assert_eq!(user(&app, &acme.id, "new@acme.test").await.unwrap().status, UserStatus::Active);
    }
);

both!(
    async fn a_suspended_user_or_a_suspended_tenant_is_refused_even_with_a_valid_sign_in(app) {
        let acme = tenant(&app, "Acme Corp", "acme").await;
        let op = start_op(&app, &["acme"]).await;
        configure(&acme.admin, &op.issuer, "both", true, &["viewer"]).await;
        let c = app.tenant_client("acme");
        assert_eq!(location(&sso_sign_in(&c, &op, "fay@acme.test").await), "/portal");
        let fay = user(&app, &acme.id, "fay@acme.test").await.unwrap();

        let page = app.get_html(&format!("/tenants/{}/users/{}", acme.id, fay.id)).await;
        let r = app
            .post_form(&format!("/tenants/{}/users/{}/suspend", acme.id, fay.id), &page, &[])
            .await;
        assert_eq!(r.status(), 303);
        assert_eq!(c.get("/portal").await.status(), 303, "her session ended");
        let r = sso_sign_in(&app.tenant_client("acme"), &op, "fay@acme.test").await;
        assert_eq!(r.status(), 401);
        assert!(r.text().await.unwrap().contains("suspended"));

        // Another, active user of a suspended tenant.
        let page = app.get_html(&format!("/tenants/{}", acme.id)).await;
        let r = app
            .post_form(&format!("/tenants/{}/status", acme.id), &page, &[("status", "suspended"), ("confirm", "acme")])
            .await;
        assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
        let other = app.tenant_client("acme");
        assert_eq!(other.get("/sso/start").await.status(), 403, "no sign-in starts");
        assert!(user(&app, &acme.id, "gil@acme.test").await.is_none());
    }
);

both!(
    async fn an_answer_is_used_once_and_only_by_the_browser_that_started_the_sign_in(app) {
        let acme = tenant(&app, "Acme Corp", "acme").await;
        let op = start_op(&app, &["acme"]).await;
        configure(&acme.admin, &op.issuer, "both", true, &["viewer"]).await;

        // Login CSRF: the attacker's own answer, opened by the victim's browser.
        let attacker = app.tenant_client("acme");
        let auth = start(&attacker).await;
        let back = op.sign_in(&auth, "mallory@acme.test").await;
        let victim = app.tenant_client("acme");
        let r = victim.get(&path_of(&back)).await;
        assert_eq!(r.status(), 401);
        assert!(r.text().await.unwrap().contains("expired or was already used"));
        assert!(user(&app, &acme.id, "mallory@acme.test").await.is_none());

        // The same answer again, in the right browser: the attempt is spent.
        let c = app.tenant_client("acme");
        let auth = start(&c).await;
        let back = op.sign_in(&auth, "hal@acme.test").await;
        assert_eq!(location(&c.get(&path_of(&back)).await), "/portal");
        let r = c.get(&path_of(&back)).await;
        assert_eq!(r.status(), 401);
        assert_eq!(failures(&app).await, vec!["attempt_invalid", "attempt_invalid"]);
    }
);

both!(
    async fn tenant_a_provider_never_signs_in_or_touches_a_user_of_tenant_b(app) {
        let acme = tenant(&app, "Acme Corp", "acme").await;
        let beta = app.create_tenant("Beta Inc", "beta").await;
        app.invite("ivy@beta.test", &beta, &["viewer"]).await;
        let op = start_op(&app, &["acme"]).await;
        configure(&acme.admin, &op.issuer, "both", false, &[]).await;

        let c = app.tenant_client("acme");
        let r = sso_sign_in(&c, &op, "ivy@beta.test").await;
        assert_eq!(r.status(), 401, "not found in acme's directory: refused");
        assert_eq!(user(&app, &beta, "ivy@beta.test").await.unwrap().status, UserStatus::Invited);
        assert!(user(&app, &acme.id, "ivy@beta.test").await.is_none());

        // Even with auto-provisioning, an acme account is made; beta's user is untouched and
        // the acme session is worthless on beta's host.
        configure(&acme.admin, &op.issuer, "both", true, &["viewer"]).await;
        let r = sso_sign_in(&c, &op, "ivy@beta.test").await;
        assert_eq!(location(&r), "/portal");
        assert_eq!(user(&app, &beta, "ivy@beta.test").await.unwrap().status, UserStatus::Invited);
        assert!(user(&app, &acme.id, "ivy@beta.test").await.is_some());
        let on_beta = app.tenant_client("beta");
        assert_eq!(on_beta.get("/portal").await.status(), 303);
        // And beta's host has no provider: nothing to start.
        assert_eq!(on_beta.get("/sso/start").await.status(), 401);
    }
);

both!(
    async fn the_connection_form_checks_every_field_and_keeps_the_secret_sealed(app) {
        let acme = tenant(&app, "Acme Corp", "acme").await;
        let page = acme.admin.get_html("/portal/settings/sso").await;
        assert!(page.contains(&redirect_uri(&app, "acme")), "the redirect URI to register is shown");
        assert!(page.contains(&format!("http://acme.localhost:{}/sso/saml/acs", app.port())));

        // Nothing filled in.
        let r = acme
            .admin
            .post_form("/portal/settings/sso", &page, &[("protocol", "oidc"), ("mode", "both")])
            .await;
        assert_eq!(r.status(), 422);
        let body = r.text().await.unwrap();
        for msg in ["Enter the name on the sign-in button.", "Enter the URL.", "Enter the client id.", "Enter the client secret."] {
            assert!(body.contains(msg), "{msg}");
        }
        // Plain http to a public host, a platform role as a default, auto-provisioning without roles.
        let r = acme
            .admin
            .post_form(
                "/portal/settings/sso",
                &page,
                &[
                    ("protocol", "oidc"),
                    ("mode", "both"),
                    ("display_name", "X"),
                    ("issuer", "http://idp.example.com"),
                    ("client_id", "c"),
                    ("client_secret", "s"),
                    ("default_roles", "owner"),
                ],
            )
            .await;
        assert_eq!(r.status(), 422);
        let body = r.text().await.unwrap();
        assert!(body.contains("must be reached over https://"));
        assert!(body.contains("never a platform role"));
        // An issuer with no discovery document.
        let op = start_op(&app, &["acme"]).await;
        let r = configure(&acme.admin, &format!("{}/nowhere", op.issuer), "both", false, &[]).await;
        assert_eq!(r.status(), 422);
        let body = r.text().await.unwrap();
        assert!(body.contains("OpenID configuration could not be used"));
        assert!(!body.contains(CLIENT_SECRET), "a typed secret is not sent back");
        assert!(app.events_of("IDENTITY_PROVIDER_CONFIGURED").await.is_empty(), "nothing saved");

        // Saved: the event says what changed, never the secret; the database holds it sealed.
        assert_eq!(configure(&acme.admin, &op.issuer, "both", false, &[]).await.status(), 303);
        let ev = app.events_of("IDENTITY_PROVIDER_CONFIGURED").await;
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].details["issuer"], op.issuer.as_str());
        assert_eq!(ev[0].details["client_secret_changed"], true);
        assert!(!ev[0].details.to_string().contains(CLIENT_SECRET));
        let stored = app.core.store().identity_provider(dir(&acme.id)).await.unwrap().unwrap();
        let sealed = stored.sealed_secret.clone().unwrap();
        assert!(!sealed.contains(CLIENT_SECRET));
        assert_eq!(app.core.client_secret(&stored).unwrap(), CLIENT_SECRET);
        let page = acme.admin.get_html("/portal/settings/sso").await;
        assert!(!page.contains(CLIENT_SECRET), "the page never shows the secret");

        // Saving again without a secret keeps it.
        let page = acme.admin.get_html("/portal/settings/sso").await;
        let r = acme
            .admin
            .post_form(
                "/portal/settings/sso",
                &page,
                &[
                    ("protocol", "oidc"),
                    ("mode", "sso_only"),
                    ("display_name", "Acme SSO"),
                    ("issuer", &op.issuer),
                    ("client_id", CLIENT_ID),
                ],
            )
            .await;
        assert_eq!(r.status(), 303);
        let stored = app.core.store().identity_provider(dir(&acme.id)).await.unwrap().unwrap();
        assert_eq!(app.core.client_secret(&stored).unwrap(), CLIENT_SECRET);

        // Another issuer with the stored secret: the secret must be typed again.
        let page = acme.admin.get_html("/portal/settings/sso").await;
        let r = acme
            .admin
            .post_form(
                "/portal/settings/sso",
                &page,
                &[
                    ("protocol", "oidc"),
                    ("mode", "both"),
                    ("display_name", "Acme SSO"),
                    ("issuer", "https://attacker.example"),
                    ("client_id", CLIENT_ID),
                ],
            )
            .await;
        assert_eq!(r.status(), 422);
        assert!(r.text().await.unwrap().contains("Enter the client secret."));

        // Another tenant's admin has their own page.
        let beta = app.create_tenant("Beta Inc", "beta").await;
        let beta_admin = app.tenant_admin(&beta, "beta", "admin@beta.test").await;
        let beta_page = beta_admin.get_html("/portal/settings/sso").await;
        assert!(!beta_page.contains(&op.issuer), "beta sees only its own connection");

        // Removing it brings passwords back.
        let page = acme.admin.get_html("/portal/settings/sso").await;
        let r = acme.admin.post_form("/portal/settings/sso/delete", &page, &[]).await;
        assert_eq!(r.status(), 303);
        assert_eq!(app.events_of("IDENTITY_PROVIDER_DELETED").await.len(), 1);
        assert!(app.tenant_client("acme").get_html("/login").await.contains("name=\"password\""));
    }
);

both!(
    async fn the_platform_provider_links_platform_users_and_provisions_others_into_its_default_tenant(app) {
        app.sign_in_owner().await;
        let acme = app.create_tenant("Acme Corp", "acme").await;
        let op = start_op(&app, &["", "acme"]).await;
        let page = app.get_html("/settings/sso").await;
        let r = app
            .post_form(
                "/settings/sso",
                &page,
                &[
                    ("protocol", "oidc"),
                    ("display_name", "Corp SSO"),
                    ("mode", "both"),
                    ("issuer", &op.issuer),
                    ("client_id", CLIENT_ID),
                    ("client_secret", CLIENT_SECRET),
                    ("auto_provision", "on"),
                    ("default_tenant_id", &acme),
                    ("default_roles", "developer"),
                ],
            )
            .await;
        assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());

        // A platform user invited ahead of time: linked, on the console.
        app.invite("ops@corp.test", "", &["billing-admin"]).await;
        let browser = client();
        let r = browser.get(app.url("/sso/start")).send().await.unwrap();
        let back = op.sign_in(&location(&r).parse().unwrap(), "ops@corp.test").await;
        let cookie = set_cookies(r.headers()).into_iter().find(|c| c.starts_with("qd_sso=")).unwrap();
        let cookie = cookie.split(';').next().unwrap().to_owned();
        let r = browser
            .get(app.url(&path_of(&back)))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(location(&r), "/", "{}", r.text().await.unwrap());
        let ops = app
            .core
            .store()
            .user_by_email(Directory::Platform, &EmailAddress::parse("ops@corp.test").unwrap())
            .await
            .unwrap()
            .unwrap()
            .0;
        assert_eq!(ops.status, UserStatus::Active);
        assert_eq!(ops.roles, vec!["billing-admin"], "linking never changes roles");

        // Someone unknown on the console: never made a platform user.
        let r = browser.get(app.url("/sso/start")).send().await.unwrap();
        let cookie = set_cookies(r.headers()).into_iter().find(|c| c.starts_with("qd_sso=")).unwrap();
        let cookie = cookie.split(';').next().unwrap().to_owned();
        let back = op.sign_in(&location(&r).parse().unwrap(), "newbie@corp.test").await;
        let r = browser.get(app.url(&path_of(&back))).header("cookie", &cookie).send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert!(
            app.core
                .store()
                .user_by_email(Directory::Platform, &EmailAddress::parse("newbie@corp.test").unwrap())
                .await
                .unwrap()
                .is_none(),
            "never a platform user"
        );

        // On the default tenant's host (no provider of its own) the platform's provider is
        // offered, and someone unknown is created there with the tenant roles chosen.
        let on_acme = app.tenant_client("acme");
        assert!(on_acme.get_html("/login").await.contains("Sign in with Corp SSO"));
        let r = sso_sign_in(&on_acme, &op, "newbie@corp.test").await;
        assert_eq!(location(&r), "/portal");
        assert_eq!(on_acme.get("/portal").await.status(), 200);
        let newbie = user(&app, &acme, "newbie@corp.test").await.unwrap();
        assert_eq!(newbie.roles, vec!["developer"]);
        // Another tenant's host does not offer it.
        let beta = app.create_tenant("Beta Inc", "beta").await;
        let _ = beta;
        assert!(!app.tenant_client("beta").get_html("/login").await.contains("Corp SSO"));
    }
);

both!(
    async fn only_the_owner_and_tenant_admins_configure_providers_never_an_impersonation(app) {
        app.sign_in_owner().await;
        let acme = app.create_tenant("Acme Corp", "acme").await;
        // A policy admin has platform configuration rights but no say over users.
        app.invite("policy@corp.test", "", &["policy-admin"]).await;
        let policy = client();
        let link = app.invitation_link("policy@corp.test").await;
        let path = &link[link.find("/register").unwrap()..];
        let page = policy.get(app.url(path)).send().await.unwrap().text().await.unwrap();
        let token = path.split("token=").nth(1).unwrap();
        let fields = [("token", token), ("password", ADMIN_PASSWORD), ("confirm", ADMIN_PASSWORD)];
        let r = post_form(&policy, &app.url("/register"), &app.base_url, &page, &fields).await;
        assert_eq!(r.status(), 303);
        let page = policy.get(app.url("/login")).send().await.unwrap().text().await.unwrap();
        let fields = [("email", "policy@corp.test"), ("password", ADMIN_PASSWORD)];
        post_form(&policy, &app.url("/login"), &app.base_url, &page, &fields).await;
        assert_eq!(policy.get(app.url("/settings/sso")).send().await.unwrap().status(), 403);

        // The owner, switched into the tenant, may not install a provider there.
        let page = app.get_html(&format!("/tenants/{acme}")).await;
        let r = app
            .post_form(&format!("/tenants/{acme}/impersonate"), &page, &[("reason", "support ticket 1")])
            .await;
        let handoff = location(&r);
        let imp = app.tenant_client("acme");
        let r = imp.get(&handoff[handoff.find("/impersonate").unwrap()..]).await;
        assert_eq!(r.status(), 303);
        assert_eq!(imp.get("/portal/settings/sso").await.status(), 403);
        assert!(app.events_of("IDENTITY_PROVIDER_CONFIGURED").await.is_empty());
    }
);

both!(
    async fn an_active_account_is_never_taken_over_by_a_matching_email(app) {
        let acme = tenant(&app, "Acme Corp", "acme").await;
        let op = start_op(&app, &["acme"]).await;
        configure(&acme.admin, &op.issuer, "both", true, &["viewer"]).await;
        // admin@acme.test signs in with a password; the provider vouches for the same email.
        let r = sso_sign_in(&app.tenant_client("acme"), &op, "admin@acme.test").await;
        assert_eq!(r.status(), 401);
        let body = r.text().await.unwrap();
        assert!(body.contains("already exists here"), "{body}");
        assert!(app.events_of("USER_LINKED").await.is_empty());
        assert_eq!(failures(&app).await, vec!["account_exists"]);
    }
);

// ---- the answers a real provider never gives, from a mock provider --------------------------

/// Configure acme's provider at the mock; returns the mock.
pub async fn mock_tenant(app: &TestApp) -> (Tenant, MockOp) {
    let acme = tenant(app, "Acme Corp", "acme").await;
    let mock = crate::mock_op::start().await;
    let r = configure(&acme.admin, &mock.issuer, "both", true, &["viewer"]).await;
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
    (acme, mock)
}

/// Start a sign-in, queue `tweak`ed answer for it at the mock, and come back with the code.
pub async fn mock_sign_in(app: &TestApp, mock: &MockOp, tweak: impl FnOnce(&mut IdTokenSpec)) -> reqwest::Response {
    let c = app.tenant_client("acme");
    let auth = start(&c).await;
    let q: std::collections::HashMap<String, String> = auth.query_pairs().into_owned().collect();
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["redirect_uri"], redirect_uri(app, "acme"));
    let code = format!("code-{}", uuid::Uuid::new_v4().simple());
    let mut spec = IdTokenSpec::valid(mock, CLIENT_ID, &q["nonce"], app.clock_now());
    tweak(&mut spec);
    mock.answer(&code, spec);
    c.get(&format!("/sso/oidc/callback?code={code}&state={}", q["state"]))
        .await
}

async fn assert_refused(app: &TestApp, acme: &Tenant, r: reqwest::Response, detail: &str) {
    assert_eq!(r.status(), 401, "{detail}");
    assert!(r.text().await.unwrap().contains("could not be verified"), "{detail}");
    assert!(
        user(app, &acme.id, "alice@example.test").await.is_none(),
        "{detail}: nobody created"
    );
    let last = app.events_of("SIGN_IN_FAILED").await.into_iter().next().unwrap();
    assert_eq!(last.details["reason"], "invalid_response", "{detail}");
    assert!(
        last.details["detail"].as_str().unwrap().starts_with(detail),
        "{detail}: {}",
        last.details["detail"]
    );
}

both!(
    async fn id_tokens_with_a_wrong_issuer_audience_nonce_or_expiry_are_refused(app) {
        let (acme, mock) = mock_tenant(&app).await;
        let r = mock_sign_in(&app, &mock, |s| s.iss = Some("https://evil.example".into())).await;
        assert_refused(&app, &acme, r, "wrong_issuer").await;
        let r = mock_sign_in(&app, &mock, |s| s.aud = vec!["someone-else".into()]).await;
        assert_refused(&app, &acme, r, "wrong_audience").await;
        let r = mock_sign_in(&app, &mock, |s| s.nonce = Some("not-the-nonce".into())).await;
        assert_refused(&app, &acme, r, "nonce_mismatch").await;
        let now = app.clock_now().unix_timestamp();
        let r = mock_sign_in(&app, &mock, |s| {
            s.iat = now - 7200;
            s.exp = now - 3600;
        })
        .await;
        assert_refused(&app, &acme, r, "expired").await;

        // The server's clock decides: a token valid for an hour, and the clock moved past it.
        let c = app.tenant_client("acme");
        let auth = start(&c).await;
        let q: std::collections::HashMap<String, String> = auth.query_pairs().into_owned().collect();
        mock.answer("late", IdTokenSpec::valid(&mock, CLIENT_ID, &q["nonce"], app.clock_now()));
        app.clock.advance(time::Duration::minutes(9));
        let mut spec = IdTokenSpec::valid(&mock, CLIENT_ID, &q["nonce"], app.clock_now() - time::Duration::hours(2));
        spec.exp = (app.clock_now() - time::Duration::minutes(1)).unix_timestamp();
        mock.answer("late2", spec);
        let r = c.get(&format!("/sso/oidc/callback?code=late2&state={}", q["state"])).await;
        assert_refused(&app, &acme, r, "expired").await;
    }
);

both!(
    async fn id_tokens_with_a_bad_signature_no_signature_or_a_tampered_payload_are_refused(app) {
        let (acme, mock) = mock_tenant(&app).await;
        let r = mock_sign_in(&app, &mock, |s| s.signing = Signing::WrongKey).await;
        assert_refused(&app, &acme, r, "bad_signature").await;
        let r = mock_sign_in(&app, &mock, |s| s.signing = Signing::AlgNone).await;
        assert_eq!(r.status(), 401);
        assert!(user(&app, &acme.id, "alice@example.test").await.is_none());
        let r = mock_sign_in(&app, &mock, |s| s.signing = Signing::TamperedPayload).await;
        assert_refused(&app, &acme, r, "bad_signature").await;
        let r = mock_sign_in(&app, &mock, |s| s.signing = Signing::Hs256(CLIENT_SECRET.into())).await;
        assert_eq!(r.status(), 401);
        assert!(user(&app, &acme.id, "alice@example.test").await.is_none());
        assert!(app.events_of("USER_PROVISIONED").await.is_empty());

        // And a good one signs in (the mock is not simply refusing everything).
        let r = mock_sign_in(&app, &mock, |_| {}).await;
        assert_eq!(location(&r), "/portal");
        let ev = app.events_of("USER_PROVISIONED").await;
        assert_eq!(ev[0].details["subject"], "mock-subject-1");
        // PKCE and the client's credentials reached the token endpoint.
        let req = mock.token_requests().into_iter().last().unwrap();
        assert!(req.form.get("code_verifier").is_some_and(|v| v.len() >= 43));
    }
);

both!(
    async fn a_reused_authorization_code_signs_nobody_in(app) {
        let (acme, mock) = mock_tenant(&app).await;
        let c = app.tenant_client("acme");
        let auth = start(&c).await;
        let q: std::collections::HashMap<String, String> = auth.query_pairs().into_owned().collect();
        mock.answer("once", IdTokenSpec::valid(&mock, CLIENT_ID, &q["nonce"], app.clock_now()));
        assert_eq!(location(&c.get(&format!("/sso/oidc/callback?code=once&state={}", q["state"])).await), "/portal");
        // A new attempt in another browser, replaying the spent code.
        let other = app.tenant_client("acme");
        let auth = start(&other).await;
        let q: std::collections::HashMap<String, String> = auth.query_pairs().into_owned().collect();
        let r = other.get(&format!("/sso/oidc/callback?code=once&state={}", q["state"])).await;
        assert_eq!(r.status(), 401);
        let last = app.events_of("SIGN_IN_FAILED").await.into_iter().next().unwrap();
        assert_eq!(last.details["reason"], "provider_error");
        assert!(last.details["detail"].as_str().unwrap().starts_with("token_exchange_failed"));
        assert_eq!(app.events_of("USER_PROVISIONED").await.len(), 1);
        let _ = acme;
    }
);

both!(
    async fn a_read_only_tenant_signs_in_linked_users_but_links_and_provisions_nobody(app) {
        let acme = tenant(&app, "Acme Corp", "acme").await;
        let op = start_op(&app, &["acme"]).await;
        configure(&acme.admin, &op.issuer, "both", true, &["viewer"]).await;
        assert_eq!(location(&sso_sign_in(&app.tenant_client("acme"), &op, "kim@acme.test").await), "/portal");
        app.invite("lee@acme.test", &acme.id, &["viewer"]).await;

        let page = app.get_html(&format!("/tenants/{}", acme.id)).await;
        let r = app
            .post_form(&format!("/tenants/{}/status", acme.id), &page, &[("status", "read_only"), ("confirm", "acme")])
            .await;
        assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());

        // Kim is linked already: signing in changes nothing, so it works.
        assert_eq!(location(&sso_sign_in(&app.tenant_client("acme"), &op, "kim@acme.test").await), "/portal");
        // Linking Lee or creating Nia would be a change: refused, nothing written.
        for who in ["lee@acme.test", "nia@acme.test"] {
            let r = sso_sign_in(&app.tenant_client("acme"), &op, who).await;
            assert_eq!(r.status(), 403, "{who}");
            assert!(r.text().await.unwrap().contains("read-only"), "{who}");
        }
        assert_eq!(user(&app, &acme.id, "lee@acme.test").await.unwrap().status, UserStatus::Invited);
        assert!(user(&app, &acme.id, "nia@acme.test").await.is_none());
        assert_eq!(app.events_of("USER_PROVISIONED").await.len(), 1);
        assert!(app.events_of("USER_LINKED").await.is_empty());
    }
);
