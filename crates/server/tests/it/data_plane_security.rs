//! The security review of issue 11's data-plane surface: each finding's regression test, and
//! the attacks that were tried and held (tenant isolation, capabilities, CSRF on every new
//! form, malformed data-plane input).

use crate::both;
use crate::data_plane::{api_key, owner, service_token, verify};
use crate::helpers::*;
use quarterdeck_domain::TenantId;
use quarterdeck_domain::access::ManageProviderCredentials;
use serde_json::json;
use std::collections::BTreeMap;

both!(
    async fn a_short_provider_secret_is_never_shown_again_nor_kept_in_clear_in_its_hint(app) {
        // A catalog may have short secret fields (a PIN, a password): "the last four
        // characters" of a 6-character secret are most of it, and the hint is in clear, in
        // the database and on the page.
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let admin = app.tenant_admin(&tid, "acme", "ada@acme.example").await;
        let page = admin.get_html("/portal/provider-credentials").await;
        let r = admin
            .post_form("/portal/provider-credentials/anthropic", &page, &[("api_key", "pw4242")])
            .await;
        assert_eq!(r.status(), 303, "saved");
        let page = admin.get_html("/portal/provider-credentials").await;
        assert!(page.contains("Stored"), "the credential is there");
        assert!(!page.contains("4242"), "no part of a short secret on the page");
        let hints: String = app.control_value("SELECT CAST(hints AS TEXT) FROM provider_credential").await;
        assert!(!hints.contains("4242"), "no part of a short secret in clear at rest: {hints}");
        // A long one still shows its last four, as designed.
        let r = admin
            .post_form(
                "/portal/provider-credentials/openai",
                &page,
                &[("api_key", "sk-proj-abcdefghijklmnop9876")],
            )
            .await;
        assert_eq!(r.status(), 303);
        assert!(admin.get_html("/portal/provider-credentials").await.contains("9876"));
        // And the data plane still resolves the short one in full.
        let token = service_token(&app, &["credentials:read"], "").await;
        let r = app
            .client
            .post(app.url("/v1/data-plane/credentials/resolve"))
            .bearer_auth(&token)
            .json(&json!({ "tenant_id": tid, "provider": "anthropic" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["fields"]["api_key"], "pw4242");
    }
);

both!(
    async fn a_resolved_credential_printed_with_debug_shows_no_secret(app) {
        let owner = owner(&app).await;
        let tid = app.create_tenant("Acme", "acme").await;
        let tenant: TenantId = tid.parse().unwrap();
        let auth = owner.require_for_tenant::<ManageProviderCredentials>(tenant).unwrap();
        let input = BTreeMap::from([("api_key".to_owned(), "sk-live-secret-0000111122223333".to_owned())]);
        app.core.set_provider_credential(&auth, "openai", &input).await.unwrap();
        let token = service_token(&app, &["credentials:read"], "").await;
        let caller = app.core.authenticate_service(&token).await.unwrap();
        let resolved = app.core.resolve_credential(&caller, tenant, "openai").await.unwrap();
        assert_eq!(resolved.fields["api_key"], "sk-live-secret-0000111122223333");
        let printed = format!("{resolved:?} {resolved:#?}");
        assert!(!printed.contains("sk-live"), "a `?` in a log line must not print the secret: {printed}");
        assert!(printed.contains("api_key"), "the field names are still there");
    }
);

both!(
    async fn a_tenant_admin_reaches_no_other_tenants_key_through_any_portal_or_console_form(app) {
        // Arrange: Acme with its admin, Globex with a key the data plane verifies.
        let owner = owner(&app).await;
        let acme = app.create_tenant("Acme", "acme").await;
        let globex = app.create_tenant("Globex", "globex").await;
        let (globex_key, secret) = api_key(&app, &owner, &globex, "").await;
        let token = service_token(&app, &["keys:verify"], "").await;
        let admin = app.tenant_admin(&acme, "acme", "ada@acme.example").await;
        let page = admin.get_html("/portal/api-keys").await;
        let events = app.control_value("SELECT CAST(count(*) AS TEXT) FROM tenant_audit WHERE event_type LIKE 'API_KEY%' OR event_type LIKE 'PROVIDER%' OR event_type LIKE 'SERVICE_TOKEN%'").await;

        // Act: Globex's key id through Acme's own forms, and Globex's tenant id in the console's.
        for (path, fields) in [
            (format!("/portal/api-keys/{globex_key}/roll"), vec![("grace_seconds", "0")]),
            (format!("/portal/api-keys/{globex_key}/revoke"), vec![]),
            (format!("/tenants/{globex}/api-keys/{globex_key}/revoke"), vec![]),
            (format!("/tenants/{acme}/api-keys/{globex_key}/revoke"), vec![]),
        ] {
            let r = admin.post_form(&path, &page, &fields).await;
            assert!(
                [403, 404].contains(&r.status().as_u16()),
                "{path}: {}",
                r.status()
            );
        }

        // Assert: nothing changed, nothing recorded, the key still verifies with its secret.
        assert_eq!(app.control_value("SELECT CAST(count(*) AS TEXT) FROM tenant_audit WHERE event_type LIKE 'API_KEY%' OR event_type LIKE 'PROVIDER%' OR event_type LIKE 'SERVICE_TOKEN%'").await, events);
        assert_eq!(app.control_rows("api_key_secret").await, 1);
        assert_eq!(verify(&app, &token, &secret).await.1["valid"], true);
    }
);

both!(
    async fn every_new_form_refuses_a_post_without_its_csrf_token(app) {
        let owner = owner(&app).await;
        let tid = app.create_tenant("Acme", "acme").await;
        let (key, _) = api_key(&app, &owner, &tid, "").await;
        let admin = app.tenant_admin(&tid, "acme", "ada@acme.example").await;
        let page = admin.get_html("/portal/provider-credentials").await;
        let r = admin
            .post_form("/portal/provider-credentials/openai", &page, &[("api_key", "sk-kept-1234567890")])
            .await;
        assert_eq!(r.status(), 303);
        let st_page = app.get_html("/settings/service-tokens").await;
        let r = app
            .post_form(
                "/settings/service-tokens",
                &st_page,
                &[("name", "gw"), ("scopes", "keys:verify")],
            )
            .await;
        assert_eq!(r.status(), 200);
        let st_id = app.core.store().service_tokens().await.unwrap()[0].id;
        let before = rows(&app).await;

        let tenant_posts = [
            ("/portal/api-keys".to_owned(), vec![("name", "forged"), ("scopes", "read")]),
            (format!("/portal/api-keys/{key}/roll"), vec![("grace_seconds", "0")]),
            (format!("/portal/api-keys/{key}/revoke"), vec![]),
            ("/portal/provider-credentials/openai".to_owned(), vec![("api_key", "sk-forged-000000000")]),
            ("/portal/provider-credentials/openai/delete".to_owned(), vec![]),
        ];
        for (path, fields) in &tenant_posts {
            for origin in [admin.origin.as_str(), "https://evil.example"] {
                let r = admin
                    .client
                    .post(admin.url(path))
                    .header("origin", origin)
                    .form(fields)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 403, "{path} from {origin}");
            }
        }
        let console_posts = [
            ("/settings/service-tokens".to_owned(), vec![("name", "forged"), ("scopes", "keys:verify")]),
            (format!("/settings/service-tokens/{st_id}/revoke"), vec![]),
            (format!("/tenants/{tid}/api-keys/{key}/revoke"), vec![]),
        ];
        for (path, fields) in &console_posts {
            let r = app
                .client
                .post(app.url(path))
                .header("origin", &app.base_url)
                .form(fields)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 403, "{path}");
        }
        assert_eq!(rows(&app).await, before, "no change, no event");
        assert_eq!(app.control_rows("service_token").await, 1);
        let sealed = app.control_value("SELECT CAST(hints AS TEXT) FROM provider_credential").await;
        assert!(!sealed.contains("0000"), "the credential was not replaced");
    }
);

both!(
    async fn a_provider_id_with_a_nul_or_odd_bytes_is_not_found_rather_than_a_500(app) {
        // PostgreSQL refuses a NUL in text: an unchecked provider id reached the query and
        // answered 500 on the data plane and in the portal.
        let owner = owner(&app).await;
        let tid = app.create_tenant("Acme", "acme").await;
        let tenant: TenantId = tid.parse().unwrap();
        let auth = owner.require_for_tenant::<ManageProviderCredentials>(tenant).unwrap();
        let input = BTreeMap::from([("api_key".to_owned(), "sk-live-0000111122223333".to_owned())]);
        app.core.set_provider_credential(&auth, "openai", &input).await.unwrap();
        let token = service_token(&app, &["credentials:read"], "").await;
        for provider in ["openai\u{0000}", "\u{0000}", "open\u{0000}ai", "openai\u{ffff}"] {
            let r = app
                .client
                .post(app.url("/v1/data-plane/credentials/resolve"))
                .bearer_auth(&token)
                .json(&json!({ "tenant_id": tid, "provider": provider }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 404, "resolve {provider:?}");
        }
        let admin = app.tenant_admin(&tid, "acme", "ada@acme.example").await;
        let page = admin.get_html("/portal/provider-credentials").await;
        for path in ["/portal/provider-credentials/openai%00/delete", "/portal/provider-credentials/openai%00"] {
            let r = admin.post_form(path, &page, &[("api_key", "sk-x-000000000000000")]).await;
            assert_eq!(r.status(), 404, "{path}");
        }
        assert_eq!(app.control_rows("provider_credential").await, 1, "still stored");
    }
);

/// The audit trail's length and the live keys.
async fn rows(app: &TestApp) -> (String, String) {
    (
        app.control_value("SELECT CAST(count(*) AS TEXT) FROM tenant_audit WHERE event_type LIKE 'API_KEY%' OR event_type LIKE 'PROVIDER%' OR event_type LIKE 'SERVICE_TOKEN%'").await,
        app.control_value("SELECT CAST(count(*) AS TEXT) FROM api_key WHERE revoked_at IS NULL").await,
    )
}

both!(
    async fn the_data_plane_reads_no_cookie_and_answers_odd_input_without_a_5xx(app) {
        let owner = owner(&app).await;
        let tid = app.create_tenant("Acme", "acme").await;
        let (_, secret) = api_key(&app, &owner, &tid, "").await;
        let token = service_token(&app, &["keys:verify", "credentials:read"], "").await;

        // The owner's signed-in browser, without a bearer: a session is not a credential here.
        let r = app
            .client
            .post(app.url("/v1/data-plane/keys/verify"))
            .json(&json!({ "key": secret }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        // A personal access token is not a service token either.
        let r = app
            .client
            .post(app.url("/v1/data-plane/keys/verify"))
            .bearer_auth("qd_pat_0000000000000000000000000000000000000000000")
            .json(&json!({ "key": secret }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);

        let deep = "{\"key\":[1]}".to_owned();
        let nested = format!("{{\"key\":{}\"x\"{}}}", "[".repeat(5000), "]".repeat(5000));
        let verify_bodies: Vec<(String, &str)> = vec![
            (deep, "json"),
            (nested, "json"),
            ("[\"key\"]".to_owned(), "json"),
            ("{\"key\":\"a\",\"key\":\"b\"}".to_owned(), "json"),
            ("{\"key\":\"qd_live_\u{0000}\"}".to_owned(), "json"),
            ("{\"key\":\"\\ud800\"}".to_owned(), "json"),
            ("key=x".to_owned(), "form"),
        ];
        for (body, kind) in verify_bodies {
            let ct = if kind == "json" { "application/json" } else { "application/x-www-form-urlencoded" };
            let r = app
                .client
                .post(app.url("/v1/data-plane/keys/verify"))
                .bearer_auth(&token)
                .header("content-type", ct)
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert!(r.status().is_client_error(), "{body:.60}: {}", r.status());
        }
        for key in [
            "x".repeat(100_000),
            format!("{secret}\u{200b}"),
            format!(" {secret}"),
            secret.to_uppercase(),
            "qd_live_ａｂｃ".to_owned(),
            String::new(),
        ] {
            let (status, body) = verify(&app, &token, &key).await;
            assert_eq!(status, 200, "{key:.40}");
            assert_eq!(body["valid"], false, "{key:.40}");
        }
        for tenant_id in ["not-a-uuid", "", "00000000-0000-0000-0000-000000000000", "../../etc"] {
            let r = app
                .client
                .post(app.url("/v1/data-plane/credentials/resolve"))
                .bearer_auth(&token)
                .json(&json!({ "tenant_id": tenant_id, "provider": "openai" }))
                .send()
                .await
                .unwrap();
            assert!([404, 422].contains(&r.status().as_u16()), "{tenant_id}: {}", r.status());
        }
        for provider in ["", "../openai", "OPENAI", "openai\u{0000}", &"p".repeat(10_000)] {
            let r = app
                .client
                .post(app.url("/v1/data-plane/credentials/resolve"))
                .bearer_auth(&token)
                .json(&json!({ "tenant_id": tid, "provider": provider }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 404, "{provider:.20}");
        }
    }
);
