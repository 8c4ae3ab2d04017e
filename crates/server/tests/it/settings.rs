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
