//! First run: the one-time setup link and the bootstrap owner.

use crate::both;
use crate::helpers::*;

both!(
    async fn the_setup_link_creates_the_first_owner_once_and_then_stops_working(app) {
        // Arrange
        let token = app.core.setup_token_if_needed().await.unwrap().unwrap();
        let link = format!("/setup?token={}", token.expose());
        let page = app.get_html(&link).await;
        assert!(page.contains("Create the owner account"));

        // Act
        let r = app
            .post_form(
                "/setup",
                &page,
                &[
                    ("token", token.expose()),
                    ("email", "first@example.com"),
                    ("name", "First Owner"),
                    ("password", OWNER_PASSWORD),
                    ("confirm", OWNER_PASSWORD),
                ],
            )
            .await;

        // Assert
        assert_eq!(r.status(), 303);
        assert_eq!(location(&r), "/login?setup=done");
        assert_eq!(app.get(&link).await.status(), 410);
        let again = app
            .post_form(
                "/setup",
                &page,
                &[("token", token.expose()), ("email", "second@example.com"), ("password", OWNER_PASSWORD), ("confirm", OWNER_PASSWORD)],
            )
            .await;
        assert_eq!(again.status(), 410);
        assert!(app.core.setup_token_if_needed().await.unwrap().is_none(), "no new link once an owner exists");
        let created = app.events_of("OWNER_CREATED").await;
        assert_eq!(created.len(), 1);
        assert_eq!(created[0].details["via"], "setup_link");
        assert_eq!(created[0].details["email"], "first@example.com");
        app.sign_in("first@example.com", OWNER_PASSWORD).await;
    }
);

both!(
    async fn the_setup_form_reports_every_bad_field_and_keeps_the_link_alive(app) {
        let token = app.core.setup_token_if_needed().await.unwrap().unwrap();
        let page = app.get_html(&format!("/setup?token={}", token.expose())).await;

        let r = app
            .post_form(
                "/setup",
                &page,
                &[("token", token.expose()), ("email", "not-an-email"), ("password", "short"), ("confirm", "other")],
            )
            .await;

        assert_eq!(r.status(), 422);
        let body = r.text().await.unwrap();
        assert!(body.contains("Enter an email address like name@example.com."), "{body}");
        assert!(body.contains("Use at least 12 characters."));
        assert!(body.contains("value=\"not-an-email\""), "the typed email is kept");
        assert!(app.events_of("OWNER_CREATED").await.is_empty());
        assert_eq!(app.get(&format!("/setup?token={}", token.expose())).await.status(), 200);
    }
);

both!(
    async fn an_unknown_or_expired_setup_link_is_refused(app) {
        assert_eq!(app.get("/setup?token=qd_setup_forged").await.status(), 410);
        let token = app.core.setup_token_if_needed().await.unwrap().unwrap();
        app.clock.advance(time::Duration::hours(25));
        assert_eq!(app.get(&format!("/setup?token={}", token.expose())).await.status(), 410);
    }
);

both!(
    async fn the_bootstrap_owner_is_created_once_and_audited(app) {
        assert!(app.core.bootstrap_owner(OWNER_EMAIL, OWNER_PASSWORD).await.unwrap());
        assert!(!app.core.bootstrap_owner("other@example.com", OWNER_PASSWORD).await.unwrap());
        let created = app.events_of("OWNER_CREATED").await;
        assert_eq!(created.len(), 1);
        assert_eq!(created[0].details["via"], "bootstrap");
        assert!(created[0].actor_email.is_none(), "the system created it");
    }
);
