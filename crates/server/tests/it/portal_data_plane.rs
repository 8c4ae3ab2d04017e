//! The data plane's pages (issue 11): API keys and provider credentials in the portal, the
//! tenant's keys on the console's tenant page, Settings → Service tokens. Everything goes
//! through the forms, and what the pages hand out is checked against the data-plane API.

use crate::both;
use crate::data_plane::{service_token, verify};
use crate::helpers::*;
use serde_json::{Value, json};

/// Invite `email` into the tenant with `role`, register and sign in on the tenant's host.
pub(crate) async fn member(app: &TestApp, tid: &str, slug: &str, email: &str, role: &str) -> TenantClient {
    let r = app.invite(email, tid, &[role]).await;
    assert_eq!(r.status(), 303, "invite {email} as {role}");
    let c = app.tenant_client(slug);
    c.register(&app.invitation_link(email).await, ADMIN_PASSWORD).await;
    let r = c.sign_in(email, ADMIN_PASSWORD).await;
    assert_eq!(r.status(), 303, "{email} signs in");
    c
}

/// The owner signed in, tenant Acme (`acme`) and its admin's browser.
async fn acme_with_admin(app: &TestApp) -> (String, TenantClient) {
    app.sign_in_owner().await;
    let tid = app.create_tenant("Acme", "acme").await;
    let admin = app.tenant_admin(&tid, "acme", "ada@acme.example").await;
    (tid, admin)
}

/// The secret a page shows once (`_secret_once.html`), if any.
pub(crate) fn shown_secret(html: &str) -> Option<String> {
    let rest = html.split("id=\"new-secret\">").nth(1)?;
    Some(rest.split('<').next()?.to_owned())
}

/// The id of the first key whose `action` the page offers (`…/api-keys/{id}/{action}`).
pub(crate) fn key_id_in(html: &str, action: &str) -> String {
    let marker = "/portal/api-keys/";
    html.split(marker)
        .skip(1)
        .find_map(|rest| {
            let (id, tail) = rest.split_once('/')?;
            tail.starts_with(action).then(|| id.to_owned())
        })
        .unwrap_or_else(|| panic!("no {action} form in the page"))
}

/// Create a key through the portal's form; returns the page that answers.
pub(crate) async fn create_key(c: &TenantClient, fields: &[(&str, &str)]) -> reqwest::Response {
    let page = c.get_html("/portal/api-keys").await;
    c.post_form("/portal/api-keys", &page, fields).await
}

async fn resolve(app: &TestApp, token: &str, tid: &str, provider: &str) -> (u16, Value) {
    let r = app
        .client
        .post(app.url("/v1/data-plane/credentials/resolve"))
        .bearer_auth(token)
        .json(&json!({ "tenant_id": tid, "provider": provider }))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

both!(
    async fn an_admin_creates_a_key_in_the_portal_whose_secret_is_shown_once_and_verifies(app) {
        let (_tid, admin) = acme_with_admin(&app).await;
        let token = service_token(&app, &["keys:verify"], "").await;

        // Field errors name the field and keep what was typed.
        let r = create_key(&admin, &[("name", ""), ("scopes", "write"), ("expires_in_days", "0"), ("requests_per_minute", "lots")]).await;
        assert_eq!(r.status(), 422);
        let page = r.text().await.unwrap();
        assert!(page.contains("Name the key"), "{page}");
        assert!(page.contains("Choose an expiry between 1 and 3650 days"));
        assert!(page.contains("requests per minute, or none"));
        assert!(page.contains("value=\"lots\"") && page.contains("value=\"write\" checked"), "values kept");
        assert!(shown_secret(&page).is_none());

        let r = create_key(&admin, &[("name", "billing prod"), ("scopes", "read"), ("scopes", "write"), ("expires_in_days", "30"), ("requests_per_minute", "120")]).await;
        assert_eq!(r.status(), 200);
        let page = r.text().await.unwrap();
        let secret = shown_secret(&page).expect("the new secret on the page");
        assert!(secret.starts_with("qd_live_"), "{secret}");
        assert!(page.contains("it will not be shown again"));
        assert!(page.contains("data-copy=\"new-secret\""), "a Copy button");
        let (status, body) = verify(&app, &token, &secret).await;
        assert_eq!((status, body["valid"].clone()), (200, json!(true)), "{body}");
        assert_eq!(body["key"]["scopes"], json!(["read", "write"]));
        assert_eq!(body["limits"]["requests_per_minute"], 120, "{body}");

        // Afterwards: listed masked, never again in full, and never in the audit trail.
        let list = admin.get_html("/portal/api-keys").await;
        assert!(!list.contains(&secret), "the list never shows the secret");
        assert!(list.contains(&format!("qd_live_…{}", &secret[secret.len() - 4..])), "masked prefix…last4");
        assert!(list.contains("billing prod") && list.contains("ada@acme.example") && list.contains("120/min"));
        let created = app.events_of("API_KEY_CREATED").await;
        assert_eq!(created.len(), 1);
        assert_eq!(created[0].actor_email.as_deref(), Some("ada@acme.example"));
        assert!(!serde_json::to_string(&created[0]).unwrap().contains(&secret[8..]), "never audited");
        let dashboard = admin.get_html("/portal").await;
        assert!(dashboard.contains("Live API keys"), "the dashboard counts keys");
        assert!(dashboard.contains("href=\"/portal/api-keys\"") && dashboard.contains("href=\"/portal/provider-credentials\""));
    }
);

both!(
    async fn a_developer_manages_keys_but_not_credentials_and_a_viewer_sees_neither(app) {
        let (tid, _admin) = acme_with_admin(&app).await;
        let dev = member(&app, &tid, "acme", "dev@acme.example", "developer").await;
        let nav = dev.get_html("/portal").await;
        assert!(nav.contains("href=\"/portal/api-keys\""), "developers see API keys");
        assert!(!nav.contains("href=\"/portal/provider-credentials\""), "but not provider credentials");
        assert_eq!(dev.get("/portal/provider-credentials").await.status(), 403);
        let r = create_key(&dev, &[("name", "dev key"), ("scopes", "read")]).await;
        assert_eq!(r.status(), 200);
        assert!(shown_secret(&r.text().await.unwrap()).is_some());
        let page = dev.get_html("/portal/api-keys").await;
        let r = dev.post_form("/portal/provider-credentials/openai", &page, &[("api_key", "sk-dev-0000")]).await;
        assert_eq!(r.status(), 403);

        let viewer = member(&app, &tid, "acme", "val@acme.example", "viewer").await;
        let nav = viewer.get_html("/portal").await;
        assert!(!nav.contains("/portal/api-keys") && !nav.contains("/portal/provider-credentials"), "no links");
        assert!(!nav.contains("Live API keys"), "no counts either");
        assert_eq!(viewer.get("/portal/api-keys").await.status(), 403);
        assert_eq!(viewer.get("/portal/provider-credentials").await.status(), 403);
        let r = viewer.post_form("/portal/api-keys", &nav, &[("name", "sneaky"), ("scopes", "read")]).await;
        assert_eq!(r.status(), 403);
        assert_eq!(app.events_of("API_KEY_CREATED").await.len(), 1, "only the developer's");
    }
);

both!(
    async fn rolling_with_grace_shows_a_new_secret_and_revoking_refuses_the_key(app) {
        let (_tid, admin) = acme_with_admin(&app).await;
        let token = service_token(&app, &["keys:verify"], "").await;
        let page = create_key(&admin, &[("name", "gateway"), ("scopes", "read")]).await.text().await.unwrap();
        let old = shown_secret(&page).unwrap();

        let list = admin.get_html("/portal/api-keys").await;
        assert!(list.contains("value=\"3600\"") && list.contains("value=\"604800\""), "grace choices");
        let id = key_id_in(&list, "roll");
        let r = admin.post_form(&format!("/portal/api-keys/{id}/roll"), &list, &[("grace_seconds", "3600")]).await;
        assert_eq!(r.status(), 200);
        let page = r.text().await.unwrap();
        let new = shown_secret(&page).expect("the rolled secret on the page");
        assert_ne!(new, old);
        assert!(page.contains("keeps working until"), "says until when the old one works");
        assert_eq!(verify(&app, &token, &old).await.1["valid"], true, "old secret within its grace");
        assert_eq!(verify(&app, &token, &new).await.1["valid"], true);
        let list = admin.get_html("/portal/api-keys").await;
        assert!(!list.contains(&new) && !list.contains(&old));
        assert!(list.contains(&format!("…{}", &new[new.len() - 4..])), "the list shows the new last four");

        let r = admin.post_form(&format!("/portal/api-keys/{id}/revoke"), &list, &[]).await;
        assert_eq!(r.status(), 303);
        assert_eq!(location(&r), "/portal/api-keys?done=revoked");
        let (_, body) = verify(&app, &token, &new).await;
        assert_eq!(body["code"], "revoked", "{body}");
        let list = admin.get_html(&location(&r)).await;
        assert!(list.contains("badge-revoked") && list.contains("Key revoked"));
        assert!(!list.contains(&format!("/portal/api-keys/{id}/roll")), "no Roll for a revoked key");
        // A bad grace period is a message on the page, not an error page.
        let r = admin.post_form(&format!("/portal/api-keys/{id}/roll"), &list, &[("grace_seconds", "3600")]).await;
        assert_eq!(r.status(), 409);
        assert!(r.text().await.unwrap().contains("This key is revoked"));
    }
);

both!(
    async fn a_read_only_tenant_refuses_new_keys_with_a_clear_message(app) {
        let (tid, admin) = acme_with_admin(&app).await;
        assert_eq!(create_key(&admin, &[("name", "early"), ("scopes", "read")]).await.status(), 200);
        let page = app.get_html(&format!("/tenants/{tid}")).await;
        let r = app.post_form(&format!("/tenants/{tid}/status"), &page, &[("status", "read_only"), ("reason", "audit")]).await;
        assert_eq!(r.status(), 303);
        let r = create_key(&admin, &[("name", "late"), ("scopes", "read")]).await;
        assert_eq!(r.status(), 403);
        let page = r.text().await.unwrap();
        assert!(page.contains("The tenant is read-only: changes are not allowed."), "{page}");
        assert!(page.contains("value=\"late\""), "what was typed stays");
        assert!(shown_secret(&page).is_none());
        assert_eq!(app.control_rows("api_key").await, 1, "only the key made before");
        let id = key_id_in(&page, "roll");
        let r = admin.post_form(&format!("/portal/api-keys/{id}/roll"), &page, &[("grace_seconds", "0")]).await;
        assert_eq!(r.status(), 403);
        let page = r.text().await.unwrap();
        assert!(page.contains("The tenant is read-only") && shown_secret(&page).is_none());
        assert!(app.events_of("API_KEY_ROLLED").await.is_empty());
        let page = admin.get_html("/portal/provider-credentials").await;
        let r = admin.post_form("/portal/provider-credentials/openai", &page, &[("api_key", "sk-late-1234")]).await;
        assert_eq!(r.status(), 403);
        assert!(r.text().await.unwrap().contains("read-only"));
    }
);

both!(
    async fn a_provider_credential_shows_only_its_hint_resolves_in_full_and_an_empty_secret_keeps_it(app) {
        let (tid, admin) = acme_with_admin(&app).await;
        let token = service_token(&app, &["credentials:read"], "").await;
        let secret = "sk-test-4f9a8b7c6d5e4f3a2b1cWXYZ";
        let page = admin.get_html("/portal/provider-credentials").await;
        assert!(page.contains("OpenAI") && page.contains("Anthropic"), "a card per provider");
        assert!(page.contains("type=\"password\""));

        // A required secret left empty on a new credential: the field's message.
        let r = admin.post_form("/portal/provider-credentials/openai", &page, &[("api_key", ""), ("organization", "org-acme")]).await;
        assert_eq!(r.status(), 422);
        let again = r.text().await.unwrap();
        assert!(again.contains("Enter the API key.") && again.contains("value=\"org-acme\""), "{again}");

        let r = admin.post_form("/portal/provider-credentials/openai", &page, &[("api_key", secret), ("organization", "org-acme")]).await;
        assert_eq!(r.status(), 303);
        let page = admin.get_html(&location(&r)).await;
        assert!(!page.contains(secret) && !page.contains("sk-test-4f9a"), "the secret never comes back");
        assert!(page.contains("…WXYZ"), "last four");
        let fingerprint = app.control_value("SELECT CAST(hints AS TEXT) FROM provider_credential").await;
        let fingerprint: Value = serde_json::from_str(&fingerprint).unwrap();
        let fingerprint = fingerprint["api_key"]["fingerprint"].as_str().unwrap().to_owned();
        assert!(page.contains(&fingerprint), "the fingerprint");
        assert!(page.contains("org-acme") && page.contains("ada@acme.example"), "fields in clear, who changed it");
        assert!(page.contains("Leave empty to keep it"));
        let (status, body) = resolve(&app, &token, &tid, "openai").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["fields"]["api_key"], secret);

        // Saved again with the secret left empty: kept; the clear field changes.
        let r = admin.post_form("/portal/provider-credentials/openai", &page, &[("api_key", ""), ("organization", "org-two")]).await;
        assert_eq!(r.status(), 303);
        let (_, body) = resolve(&app, &token, &tid, "openai").await;
        assert_eq!((body["fields"]["api_key"].as_str(), body["fields"]["organization"].as_str()), (Some(secret), Some("org-two")));
        let dashboard = admin.get_html("/portal").await;
        assert!(dashboard.contains("Provider credentials"));

        // Delete.
        let r = admin.post_form("/portal/provider-credentials/openai/delete", &page, &[]).await;
        assert_eq!(r.status(), 303);
        assert_eq!(resolve(&app, &token, &tid, "openai").await.0, 404);
        assert_eq!(app.events_of("PROVIDER_CREDENTIAL_SET").await.len(), 2);
        assert_eq!(app.events_of("PROVIDER_CREDENTIAL_DELETED").await.len(), 1);
        for e in app.events_of("PROVIDER_CREDENTIAL_SET").await {
            assert!(!serde_json::to_string(&e).unwrap().contains("sk-test"), "never audited");
        }
    }
);

both!(
    async fn the_owner_sees_a_tenants_keys_on_its_page_and_revokes_one(app) {
        let (tid, admin) = acme_with_admin(&app).await;
        let token = service_token(&app, &["keys:verify"], "").await;
        let page = create_key(&admin, &[("name", "mobile app"), ("scopes", "read")]).await.text().await.unwrap();
        let secret = shown_secret(&page).unwrap();
        let id = key_id_in(&admin.get_html("/portal/api-keys").await, "revoke");

        let page = app.get_html(&format!("/tenants/{tid}")).await;
        assert!(page.contains("mobile app") && page.contains(&format!("qd_live_…{}", &secret[secret.len() - 4..])));
        assert!(!page.contains(&secret), "metadata only");
        let action = format!("/tenants/{tid}/api-keys/{id}/revoke");
        assert!(page.contains(&action), "a Revoke button");

        // Who only reads tenants sees the keys but may not revoke them.
        app.invite("bill@example.com", "", &["billing-admin"]).await;
        let bill = TenantClient { client: client(), origin: app.base_url.clone() };
        bill.register(&app.invitation_link("bill@example.com").await, ADMIN_PASSWORD).await;
        assert_eq!(bill.sign_in("bill@example.com", ADMIN_PASSWORD).await.status(), 303);
        let theirs = bill.get_html(&format!("/tenants/{tid}")).await;
        assert!(theirs.contains("mobile app") && !theirs.contains(&action));
        assert_eq!(bill.post_form(&action, &theirs, &[]).await.status(), 403);
        assert_eq!(verify(&app, &token, &secret).await.1["valid"], true);

        let r = app.post_form(&action, &page, &[]).await;
        assert_eq!(r.status(), 303);
        assert_eq!(verify(&app, &token, &secret).await.1["code"], "revoked");
        let revoked = app.events_of("API_KEY_REVOKED").await;
        assert_eq!(revoked.len(), 1);
        assert_eq!(revoked[0].actor_email.as_deref(), Some(OWNER_EMAIL));
        assert_eq!(revoked[0].tenant_id.map(|t| t.to_string()).as_deref(), Some(tid.as_str()));
        assert_eq!(revoked[0].details["key_id"], id);
        let page = app.get_html(&format!("/tenants/{tid}?saved=key_revoked")).await;
        assert!(page.contains("API key revoked.") && !page.contains(&action));
    }
);

both!(
    async fn the_owner_creates_a_service_token_that_authenticates_and_others_may_not(app) {
        app.sign_in_owner().await;
        let settings = app.get_html("/settings").await;
        assert!(settings.contains("href=\"/settings/service-tokens\""));
        let page = app.get_html("/settings/service-tokens").await;
        assert!(page.contains("keys:verify") && page.contains("credentials:read") && page.contains("All regions"));
        let r = app.post_form("/settings/service-tokens", &page, &[("name", ""), ("region", "mars")]).await;
        assert_eq!(r.status(), 422);
        let again = r.text().await.unwrap();
        assert!(again.contains("Name the token") && again.contains("Choose at least one scope"), "{again}");
        let r = app
            .post_form("/settings/service-tokens", &page, &[("name", "gateway"), ("scopes", "keys:verify"), ("region", "eu-west"), ("expires_in_days", "90")])
            .await;
        assert_eq!(r.status(), 200);
        let page = r.text().await.unwrap();
        let token = shown_secret(&page).expect("the token, once");
        assert!(token.starts_with("qd_svc_"));
        let (status, body) = verify(&app, &token, "qd_live_unknown-key").await;
        assert_eq!((status, body["code"].clone()), (200, json!("unknown")), "it authenticates: {body}");
        let list = app.get_html("/settings/service-tokens").await;
        assert!(!list.contains(&token) && list.contains("gateway") && list.contains("eu-west"));
        let event = &app.events_of("SERVICE_TOKEN_CREATED").await[0];
        assert!(!serde_json::to_string(event).unwrap().contains(&token[7..]));

        // Revoke: the token stops working.
        let id = list.split("/settings/service-tokens/").nth(1).unwrap().split('/').next().unwrap().to_owned();
        let r = app.post_form(&format!("/settings/service-tokens/{id}/revoke"), &list, &[]).await;
        assert_eq!(r.status(), 303);
        assert_eq!(verify(&app, &token, "qd_live_unknown-key").await.0, 401);

        // A platform user without platform:config (policy-admin has it) gets 403 and no link.
        app.invite("pol@example.com", "", &["billing-admin"]).await;
        let pol = TenantClient { client: client(), origin: app.base_url.clone() };
        pol.register(&app.invitation_link("pol@example.com").await, ADMIN_PASSWORD).await;
        assert_eq!(pol.sign_in("pol@example.com", ADMIN_PASSWORD).await.status(), 303);
        assert_eq!(pol.get("/settings/service-tokens").await.status(), 403);
        let settings = pol.get_html("/settings").await;
        assert!(!settings.contains("/settings/service-tokens"));
        let r = pol.post_form("/settings/service-tokens", &settings, &[("name", "x"), ("scopes", "keys:verify")]).await;
        assert_eq!(r.status(), 403);
        assert_eq!(app.events_of("SERVICE_TOKEN_CREATED").await.len(), 1);
    }
);

both!(
    async fn a_post_without_the_csrf_token_is_refused(app) {
        let (_tid, admin) = acme_with_admin(&app).await;
        let r = admin
            .client
            .post(admin.url("/portal/api-keys"))
            .header("origin", &admin.origin)
            .form(&[("name", "forged"), ("scopes", "read")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        assert_eq!(app.control_rows("api_key").await, 0);
        let r = create_key(&admin, &[("name", "real"), ("scopes", "read")]).await;
        assert_eq!(r.status(), 200, "with the token it works");
    }
);

both!(
    async fn an_admin_creates_a_key_and_copies_it_at_phone_width_in_a_real_browser(app) {
        // Arrange: Acme with its admin, a service token, a browser.
        let Some(browser) = crate::browser::Browser::start().await else {
            return;
        };
        let (_tid, _admin) = acme_with_admin(&app).await;
        let token = service_token(&app, &["keys:verify"], "").await;
        let origin = format!("http://acme.localhost:{}", app.port());
        let label = format!("{:?}", app.backend).to_lowercase();
        let shown = std::sync::Arc::new(std::sync::Mutex::new(String::new()));

        // Act: sign in at 390×844, API keys → New key → Create → Copy.
        let seen = shown.clone();
        browser
            .drive(|s| async move {
                use crate::browser::{click, find, screenshot, sign_in, type_into, wait_for_path, wait_for_text};
                let c = s.open().await;
                c.set_window_size(390, 844).await.unwrap();
                c.goto(&format!("{origin}/login")).await.unwrap();
                sign_in(&c, "ada@acme.example", ADMIN_PASSWORD, "/portal").await;
                click(&c, "nav.nav a[href='/portal/api-keys']").await;
                wait_for_path(&c, "/portal/api-keys").await;
                wait_for_text(&c, "main h1", "API keys").await;
                type_into(&c, "#key-name", "mobile app").await;
                type_into(&c, "#key-rpm", "60").await;
                click(&c, "form[action='/portal/api-keys'] button[type=submit]").await;
                wait_for_text(&c, "#secret-once-title", "created").await;
                let secret = find(&c, "#new-secret").await.text().await.unwrap();
                assert!(secret.starts_with("qd_live_"), "{secret}");
                wait_for_text(&c, ".secret-once .alert", "will not be shown again").await;

                // Copy: headless Chromium may or may not grant the clipboard; what the page
                // shows is the button's own word for it.
                click(&c, "button[data-copy='new-secret']").await;
                wait_for_text(&c, "button[data-copy='new-secret']", "Copied").await;

                // Nothing sticks out sideways at phone width.
                fits(&c, "the new key").await;
                screenshot(&c, &format!("portal-api-keys-390-{label}"), 390, 844).await;
                *seen.lock().unwrap() = secret.clone();

                // The list (its table scrolls inside its card); Roll through its dialog.
                click(&c, "nav.nav a[href='/portal/api-keys']").await;
                wait_for_text(&c, "#keys table", "mobile app").await;
                fits(&c, "the key list").await;
                click(&c, "button[data-confirm-dialog^='roll-']").await;
                wait_for_text(&c, "dialog[open] h2", "Roll").await;
                click(&c, "dialog[open] button[type=submit]").await;
                wait_for_text(&c, "#secret-once-title", "New secret").await;
                let rolled = find(&c, "#new-secret").await.text().await.unwrap();
                assert!(rolled.starts_with("qd_live_") && rolled != secret);
                wait_for_text(&c, ".secret-once", "keeps working until").await;

                // Provider credentials at phone width.
                click(&c, "nav.nav a[href='/portal/provider-credentials']").await;
                wait_for_text(&c, "main h1", "Provider credentials").await;
                fits(&c, "provider credentials").await;
                screenshot(&c, &format!("portal-provider-credentials-390-{label}"), 390, 844).await;
            })
            .await;

        // Assert: what the page showed is a working key.
        let secret = shown.lock().unwrap().clone();
        let (status, body) = verify(&app, &token, &secret).await;
        assert_eq!((status, body["valid"].clone()), (200, json!(true)), "{body}");
        assert_eq!(body["limits"]["requests_per_minute"], 60);
    }
);

/// The page is no wider than the window (no sideways scrolling).
pub(crate) async fn fits(c: &fantoccini::Client, what: &str) {
    let widths = c
        .execute(
            "return [document.documentElement.scrollWidth, window.innerWidth];",
            vec![],
        )
        .await
        .unwrap();
    let (scroll, inner) = (widths[0].as_f64().unwrap(), widths[1].as_f64().unwrap());
    assert!(
        scroll <= inner,
        "{what}: the page is {scroll} px wide in a {inner} px window"
    );
}
