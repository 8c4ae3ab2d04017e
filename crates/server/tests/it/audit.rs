//! The audit trail: the Events page, the chain, and tamper detection.

use crate::both;
use crate::helpers::*;

both!(
    async fn the_events_page_filters_by_type_tenant_actor_and_time(app) {
        app.sign_in_owner().await;
        let id = app.create_tenant("Acme Corp", "acme").await;
        app.create_tenant("Globex", "globex").await;

        let all = app.get_html("/audit").await;
        assert!(all.contains("TENANT_CREATED") && all.contains("SIGN_IN_SUCCEEDED"));
        let by_type = app.get_html("/audit?type=TENANT_CREATED").await;
        assert!(!by_type.contains(">SIGN_IN_SUCCEEDED</a>"));
        let by_tenant = app.get_html(&format!("/audit?tenant={id}")).await;
        assert_eq!(by_tenant.matches(">TENANT_CREATED</a>").count(), 1);
        let by_slug = app.get_html("/audit?tenant=globex").await;
        assert_eq!(by_slug.matches(">TENANT_CREATED</a>").count(), 1);
        let by_actor = app.get_html("/audit?actor=nobody").await;
        assert!(by_actor.contains("No events match."));
        let future = app.get_html("/audit?from=2999-01-01").await;
        assert!(future.contains("No events match."));
        let bad = app.get_html("/audit?from=yesterday").await;
        assert!(bad.contains("Use a date like 2026-11-23."));
    }
);

both!(
    async fn the_event_page_shows_details_and_the_chain_links(app) {
        app.sign_in_owner().await;
        app.create_tenant("Acme Corp", "acme").await;
        let e = &app.events_of("TENANT_CREATED").await[0];
        let page = app.get_html(&format!("/audit/{}", e.id)).await;
        assert!(page.contains(&e.hash) && page.contains(&e.prev_hash));
        assert!(page.contains("Acme Corp"));
        assert_eq!(app.get("/audit/nope").await.status(), 404);
    }
);

both!(
    async fn the_events_page_pages_with_a_cursor(app) {
        app.sign_in_owner().await;
        for i in 0..55 {
            let client = quarterdeck_domain::core::ClientInfo {
                ip: Some(format!("10.0.1.{i}")),
                user_agent: None,
            };
            let _ = app.core.sign_in(quarterdeck_domain::user::Directory::Platform, &format!("nobody{i}@example.com"), "x", &client).await;
        }
        let first = app.get_html("/audit").await;
        let next = first.split("href=\"").find(|s| s.starts_with("/audit?") && s.contains("before=")).unwrap();
        let next = next.split('"').next().unwrap().replace("&amp;", "&");
        let second = app.get_html(&next).await;
        assert!(second.contains("OWNER_CREATED"), "the oldest event is on the second page");
    }
);

both!(
    async fn the_chain_verifies_and_a_tampered_event_is_named(app) {
        app.sign_in_owner().await;
        app.create_tenant("Acme Corp", "acme").await;
        app.create_tenant("Globex", "globex").await;
        let n = app.event_types().await.len() as u64;
        assert_eq!(app.core.verify_audit_chain().await.unwrap(), Ok(n));

        // The table refuses changes …
        let target = app.events_of("TENANT_CREATED").await.pop().unwrap(); // the oldest one
        let refused = tamper(&app, target.seq, false).await;
        assert!(refused.is_err(), "an UPDATE on the audit table must be refused");
        // … and if someone with the database's keys forces one, verify names it.
        tamper(&app, target.seq, true).await.unwrap();
        let broken = app.core.verify_audit_chain().await.unwrap().unwrap_err();
        assert_eq!(broken.seq, target.seq);
    }
);

/// Rewrite one event's details directly in the database (dropping the guard if `force`).
async fn tamper(app: &TestApp, seq: i64, force: bool) -> Result<(), sqlx::Error> {
    match app.backend {
        Backend::Sqlite => {
            use sqlx::ConnectOptions;
            let path = app.data_dir().join("control.db");
            let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(path)
                .connect()
                .await?;
            if force {
                sqlx::raw_sql("DROP TRIGGER tenant_audit_no_update")
                    .execute(&mut conn)
                    .await?;
            }
            sqlx::query("UPDATE tenant_audit SET details = '{\"name\":\"Evil\"}' WHERE seq = $1")
                .bind(seq)
                .execute(&mut conn)
                .await?;
        }
        Backend::Postgres => {
            let mut conn = pg_conn(app.pg_url.as_deref().unwrap()).await;
            if force {
                sqlx::raw_sql("ALTER TABLE identity.tenant_audit DISABLE TRIGGER tenant_audit_append_only")
                    .execute(&mut conn)
                    .await?;
            }
            sqlx::query("UPDATE identity.tenant_audit SET details = '{\"name\":\"Evil\"}' WHERE seq = $1")
                .bind(seq)
                .execute(&mut conn)
                .await?;
        }
    }
    Ok(())
}

both!(
    async fn concurrent_audited_writes_keep_one_unbroken_chain(app) {
        app.core.bootstrap_owner(OWNER_EMAIL, OWNER_PASSWORD).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..40 {
            let core = app.core.clone();
            tasks.push(tokio::spawn(async move {
                let client = quarterdeck_domain::core::ClientInfo {
                    ip: Some(format!("10.0.0.{i}")),
                    user_agent: None,
                };
                let _ = core.sign_in(quarterdeck_domain::user::Directory::Platform, &format!("user{i}@example.com"), "wrong password", &client).await;
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(app.core.verify_audit_chain().await.unwrap(), Ok(41));
    }
);
