//! The Settings page and the console's permission checks.

use crate::both;
use crate::helpers::*;

both!(
    async fn the_settings_page_shows_effective_settings_with_secrets_masked(app) {
        app.sign_in_owner().await;
        let page = app.get_html("/settings").await;
        assert!(page.contains("QUARTERDECK_BASE_URL"));
        assert!(page.contains(&app.base_url));
        if let Some(url) = &app.pg_url {
            assert!(!page.contains(url.as_str()), "the database URL is a secret");
            assert!(page.contains("(set)"));
        }
    }
);

both!(
    async fn signing_out_other_sessions_keeps_this_one(app) {
        app.sign_in_owner().await;
        let other = client();
        let login = other.get(app.url("/login")).send().await.unwrap().text().await.unwrap();
        other
            .post(app.url("/login"))
            .form(&[("csrf_token", csrf_token(&login).as_str()), ("email", OWNER_EMAIL), ("password", OWNER_PASSWORD)])
            .send()
            .await
            .unwrap();
        let page = app.get_html("/settings").await;
        let r = app.post_form("/settings/sessions/revoke", &page, &[]).await;
        assert_eq!(r.status(), 303);
        assert_eq!(app.get("/").await.status(), 200);
        assert_eq!(other.get(app.url("/")).send().await.unwrap().status(), 303);
        assert_eq!(app.events_of("SESSIONS_REVOKED").await[0].details["sessions_ended"], 1);
    }
);

/// Make a platform user with the given roles directly in the store (inviting comes later).
pub async fn platform_user(app: &TestApp, email: &str, roles: &[&str]) {
    use quarterdeck_domain::password::NewPassword;
    let user = quarterdeck_domain::user::User {
        id: quarterdeck_domain::UserId::new(),
        email: quarterdeck_domain::EmailAddress::parse(email).unwrap(),
        name: None,
        status: quarterdeck_domain::user::UserStatus::Active,
        roles: roles.iter().map(|r| r.to_string()).collect(),
        tenant_id: None,
        created_at: app.clock_now(),
    };
    let pw = NewPassword::parse(OWNER_PASSWORD, 12, "password").unwrap();
    let hash = app.core.hasher.hash(&pw, &*app.core.rng).await.unwrap();
    let event = quarterdeck_domain::audit::NewEvent::new(
        app.clock_now(),
        quarterdeck_domain::audit::EventType::OwnerCreated,
        &quarterdeck_domain::access::Actor::system(),
        None,
        serde_json::json!({ "test_fixture": true }),
    );
    app.core
        .store()
        .create_user(
            &user,
            Some(&quarterdeck_domain::user::Credential::password(hash)),
            None,
            event,
        )
        .await
        .unwrap();
}

both!(
    async fn only_the_owner_may_change_tenants_the_other_platform_roles_may_read(app) {
        app.sign_in_owner().await;
        let id = app.create_tenant("Acme Corp", "acme").await;
        let owner_page = app.get_html(&format!("/tenants/{id}")).await;
        assert!(owner_page.contains("Delete tenant"));
        let dash = app.get_html("/").await;
        app.post_form("/logout", &dash, &[]).await;

        for role in ["policy-admin", "billing-admin"] {
            let email = format!("{role}@example.com");
            platform_user(&app, &email, &[role]).await;
            let c = TestApp::client_for(&app);
            let login = c.get(app.url("/login")).send().await.unwrap().text().await.unwrap();
            let r = c
                .post(app.url("/login"))
                .form(&[("csrf_token", csrf_token(&login).as_str()), ("email", email.as_str()), ("password", OWNER_PASSWORD)])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 303);
            // May read …
            let list = c.get(app.url("/tenants")).send().await.unwrap();
            assert_eq!(list.status(), 200, "{role}");
            let list = list.text().await.unwrap();
            assert!(list.contains("acme") && !list.contains("New Tenant"), "{role}");
            let page = c.get(app.url(&format!("/tenants/{id}"))).send().await.unwrap().text().await.unwrap();
            assert!(!page.contains("Delete tenant"), "{role}");
            // … may not change.
            assert_eq!(c.get(app.url("/tenants/new")).send().await.unwrap().status(), 403);
            let token = csrf_token(&page);
            for (path, form) in [
                ("/tenants".to_owned(), vec![("name", "X"), ("slug", "x-corp"), ("region", "eu-west"), ("tier", "standard")]),
                (format!("/tenants/{id}"), vec![("name", "X"), ("region", "eu-west"), ("tier", "standard")]),
                (format!("/tenants/{id}/status"), vec![("status", "suspended")]),
                (format!("/tenants/{id}/delete"), vec![("confirm_slug", "acme")]),
            ] {
                let mut f = vec![("csrf_token", token.as_str())];
                f.extend(form);
                let r = c.post(app.url(&path)).form(&f).send().await.unwrap();
                assert_eq!(r.status(), 403, "{role} {path}");
            }
        }
        // billing-admin may not read the audit trail or the users.
        let c = TestApp::client_for(&app);
        let login = c.get(app.url("/login")).send().await.unwrap().text().await.unwrap();
        c.post(app.url("/login"))
            .form(&[("csrf_token", csrf_token(&login).as_str()), ("email", "billing-admin@example.com"), ("password", OWNER_PASSWORD)])
            .send()
            .await
            .unwrap();
        assert_eq!(c.get(app.url("/audit")).send().await.unwrap().status(), 403);
        assert_eq!(c.get(app.url("/users")).send().await.unwrap().status(), 403);
        let settings = c.get(app.url("/settings")).send().await.unwrap().text().await.unwrap();
        assert!(!settings.contains("Effective settings"));
        // Nothing changed.
        assert_eq!(app.events_of("TENANT_CREATED").await.len(), 1);
        assert!(app.events_of("TENANT_STATUS_CHANGED").await.is_empty());
        assert!(app.events_of("TENANT_DELETED").await.is_empty());
    }
);

both!(
    async fn the_users_page_lists_platform_users_with_their_roles(app) {
        app.sign_in_owner().await;
        platform_user(&app, "policy@example.com", &["policy-admin"]).await;
        let page = app.get_html("/users").await;
        assert!(page.contains(OWNER_EMAIL) && page.contains("policy@example.com") && page.contains("policy-admin"));
    }
);
