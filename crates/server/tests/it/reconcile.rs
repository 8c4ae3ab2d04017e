//! The reconcile pass's edge cases (issue 14): a change repaired after its user changed again
//! is written but published late and sends no email; findings about databases that no longer
//! hold are resolved, and a database lost again is marked again.

use crate::both;
use crate::crash::{Data, count, database_exists, delete_tenant_row, failing_commit, tenant_exec};
use crate::helpers::*;
use quarterdeck_domain::user::Directory;
use quarterdeck_domain::{EmailAddress, TenantId};

/// An invitation to `doomed` whose control side failed to commit (the tenant's did, with its
/// intent); returns the tenant's id and the user's id.
async fn half_written_invitation(app: &TestApp, doomed: &str) -> (String, String) {
    app.sign_in_owner().await;
    let tid = app.create_tenant("Acme", "acme").await;
    let (install, remove) = failing_commit(app.backend, doomed);
    for sql in &install {
        app.control_exec(sql).await;
    }
    assert!(app.invite(doomed, &tid, &["admin"]).await.status().is_server_error());
    for sql in remove {
        app.control_exec(sql).await;
    }
    let dir = Directory::Tenant(tid.parse::<TenantId>().unwrap());
    let email = EmailAddress::parse(doomed).unwrap();
    let (user, _) = app
        .core
        .store()
        .user_by_email(dir, &email)
        .await
        .unwrap()
        .expect("the tenant committed");
    (tid, user.id.to_string())
}

/// The owner acts on the user in the console (`revoke`, `resend`, `roles`…), a second later.
async fn act_on(app: &TestApp, tid: &str, uid: &str, action: &str, fields: &[(&str, &str)]) {
    app.clock.advance(time::Duration::seconds(1));
    let page = format!("/tenants/{tid}/users/{uid}");
    let html = app.get_html(&page).await;
    let r = app.post_form(&format!("{page}/{action}"), &html, fields).await;
    assert_eq!(r.status(), 303, "{action}");
}

/// The invitation emails to `to` in the outbox, by status.
async fn emails_to(data: &Data, to: &str) -> Vec<String> {
    let mut v = data
        .control(&format!("SELECT status FROM outbox WHERE to_addr = '{to}'"))
        .await;
    v.sort();
    v
}

/// The published body of the first `event_type` audit event.
async fn published(app: &TestApp, data: &Data, event_type: &str) -> serde_json::Value {
    let id = app.events_of(event_type).await[0].id.0.to_string();
    let id_sql = if app.pg_url.is_some() {
        format!("'{id}'")
    } else {
        format!("X'{}'", id.replace('-', ""))
    };
    let body = data
        .control(&format!("SELECT body FROM webhook_event WHERE id = {id_sql}"))
        .await;
    serde_json::from_str(&body[0]).unwrap()
}

both!(
    async fn a_change_repaired_after_its_invitation_was_revoked_is_published_late_and_sends_no_link(app) {
        let doomed = "doomed@acme.example";
        let (tid, uid) = half_written_invitation(&app, doomed).await;
        let data = Data::of(&app);
        // Before the pass, the owner revokes the (half-written) invitation: that change is
        // whole, so the trail now holds a later event about the same user.
        act_on(&app, &tid, &uid, "revoke", &[]).await;
        assert_eq!(app.events_of("INVITATION_REVOKED").await.len(), 1);

        app.clock.advance(time::Duration::seconds(61));
        let report = app.core.reconcile(time::Duration::minutes(1)).await.unwrap();
        assert_eq!((report.repaired, report.quarantined, report.failed), (1, 0, 0), "{report:?}");
        // The trail is whole: the invitation is there, at its own time, before the revocation.
        assert_eq!(app.events_of("USER_INVITED").await.len(), 1);
        let repaired = app.events_of("RECONCILE_REPAIRED").await;
        assert_eq!(repaired[0].details["late"], true, "{:?}", repaired[0].details);
        assert_eq!(repaired[0].details["emails_skipped"], 1);
        // No email for a revoked invitation; the published event says it is late.
        assert!(emails_to(&data, doomed).await.is_empty());
        let body = published(&app, &data, "USER_INVITED").await;
        assert_eq!(body["type"], "user.invited");
        assert_eq!(body["late"], true, "{body}");
        assert!(app.core.verify_audit_chain().await.unwrap().is_ok());
    }
);

both!(
    async fn a_late_repair_never_cancels_the_newer_invitation_sent_since(app) {
        let doomed = "doomed@acme.example";
        let (tid, uid) = half_written_invitation(&app, doomed).await;
        let data = Data::of(&app);
        // The admin sends the invitation again (the first never arrived): a new link, queued.
        act_on(&app, &tid, &uid, "resend", &[]).await;
        assert_eq!(emails_to(&data, doomed).await, vec!["pending"]);

        app.clock.advance(time::Duration::seconds(61));
        let report = app.core.reconcile(time::Duration::minutes(1)).await.unwrap();
        assert_eq!(report.repaired, 1, "{report:?}");
        // The first link (replaced) is not sent; the new one stays queued, not cancelled.
        assert_eq!(emails_to(&data, doomed).await, vec!["pending"]);
        let repaired = app.events_of("RECONCILE_REPAIRED").await;
        assert_eq!(repaired[0].details["emails_skipped"], 1, "{:?}", repaired[0].details);
        let acme = app.tenant_client("acme");
        let r = acme.register(&app.invitation_link(doomed).await, ADMIN_PASSWORD).await;
        assert_eq!(r.status(), 303, "the newer link registers");
    }
);

both!(
    async fn a_late_repair_still_sends_an_invitation_that_is_current(app) {
        let doomed = "doomed@acme.example";
        let (tid, uid) = half_written_invitation(&app, doomed).await;
        let data = Data::of(&app);
        // A later change that leaves the invitation as it was: a role.
        act_on(&app, &tid, &uid, "roles", &[("roles", "admin"), ("roles", "viewer")]).await;

        app.clock.advance(time::Duration::seconds(61));
        let report = app.core.reconcile(time::Duration::minutes(1)).await.unwrap();
        assert_eq!(report.repaired, 1, "{report:?}");
        let repaired = app.events_of("RECONCILE_REPAIRED").await;
        assert_eq!(repaired[0].details["late"], true, "{:?}", repaired[0].details);
        assert!(repaired[0].details.get("emails_skipped").is_none(), "{:?}", repaired[0].details);
        assert_eq!(emails_to(&data, doomed).await, vec!["pending"]);
        let acme = app.tenant_client("acme");
        let r = acme.register(&app.invitation_link(doomed).await, ADMIN_PASSWORD).await;
        assert_eq!(r.status(), 303, "the link registers");
    }
);

/// Moves a tenant's database out of Quarterdeck's sight (`away`) or back (a restore).
async fn move_database(data: &Data, hex: &str, away: bool) {
    match &data.pg_url {
        Some(url) => {
            let control = url::Url::parse(url).unwrap().path().trim_start_matches('/').to_owned();
            let (live, hidden) = (format!("{control}_t_{hex}"), format!("{control}_away_{hex}"));
            let (from, to) = if away { (live, hidden) } else { (hidden, live) };
            let mut conn = pg_conn(url).await;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{from}'"
            )))
            .execute(&mut conn)
            .await
            .unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "ALTER DATABASE \"{from}\" RENAME TO \"{to}\""
            )))
            .execute(&mut conn)
            .await
            .unwrap();
        }
        None => {
            let (live, hidden) = (data.dir.join("tenants"), data.dir.clone());
            let (from, to) = if away { (live, hidden) } else { (hidden, live) };
            for suffix in ["", "-wal", "-shm"] {
                let name = format!("{hex}.db{suffix}");
                if from.join(&name).exists() {
                    std::fs::rename(from.join(&name), to.join(&name)).unwrap();
                }
            }
        }
    }
}

both!(
    async fn a_missing_database_restored_is_resolved_and_lost_again_is_marked_again(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let data = Data::of(&app);
        let hex = tid.parse::<uuid::Uuid>().unwrap().simple().to_string();
        let margin = time::Duration::minutes(1);
        let findings = "SELECT CAST(count(*) AS TEXT) FROM reconcile_finding WHERE kind = 'missing_database'";

        move_database(&data, &hex, true).await;
        let report = app.core.reconcile(margin).await.unwrap();
        assert_eq!(report.databases_missing, 1, "{report:?}");
        assert_eq!(count(&data.control(findings).await), 1);

        // Restored from a backup: the finding is resolved, with its event.
        move_database(&data, &hex, false).await;
        let report = app.core.reconcile(margin).await.unwrap();
        assert_eq!((report.databases_missing, report.resolved), (0, 1), "{report:?}");
        assert_eq!(count(&data.control(findings).await), 0);
        let resolved = app.events_of("RECONCILE_RESOLVED").await;
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].details["kind"], "missing_database");
        assert_eq!(resolved[0].details["reason"], "database_restored");
        let report = app.core.reconcile(margin).await.unwrap();
        assert!(report.is_empty(), "{report:?}");

        // Lost again: marked again (a finding that stayed would have hidden it).
        move_database(&data, &hex, true).await;
        app.core.reconcile(margin).await.unwrap();
        assert_eq!(app.events_of("RECONCILE_DATABASE_MISSING").await.len(), 2);
        move_database(&data, &hex, false).await;
        assert!(app.core.verify_audit_chain().await.unwrap().is_ok());
    }
);

both!(
    async fn a_database_noted_without_a_row_that_is_gone_before_the_margin_leaves_no_finding(app) {
        app.sign_in_owner().await;
        app.create_tenant("Acme", "acme").await;
        let data = Data::of(&app);
        let gone = app.create_tenant("Gone", "gone").await;
        let hex = gone.parse::<uuid::Uuid>().unwrap().simple().to_string();
        delete_tenant_row(&app, &gone).await;
        let notes = "SELECT CAST(count(*) AS TEXT) FROM reconcile_finding WHERE kind = 'orphan_database'";
        app.core.reconcile(time::Duration::minutes(1)).await.unwrap();
        assert_eq!(count(&data.control(notes).await), 1, "noted");

        // Its creator cleaned up (or an operator dropped it) within the margin: the note goes,
        // quietly (nobody was told of it).
        move_database(&data, &hex, true).await;
        assert!(!database_exists(&data, &hex).await);
        let report = app.core.reconcile(time::Duration::minutes(1)).await.unwrap();
        assert_eq!(report.resolved, 0, "{report:?}");
        assert_eq!(count(&data.control(notes).await), 0);
        assert!(app.events_of("RECONCILE_RESOLVED").await.is_empty());
    }
);

both!(
    async fn a_full_batch_of_intents_left_for_a_newer_node_does_not_hold_the_pass_in_a_loop(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let data = Data::of(&app);
        // 600 intents of a format this server does not read (more than a batch of 500).
        let sql = if app.pg_url.is_some() {
            "INSERT INTO pending_event (event_id, created_at, attempts, payload) \
             SELECT gen_random_uuid(), now() - interval '1 hour', 0, '{\"v\": 9}' FROM generate_series(1, 600)"
        } else {
            "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 600) \
             INSERT INTO pending_event (event_id, created_at, attempts, payload) SELECT randomblob(16), 0, 0, '{\"v\": 9}' FROM g"
        };
        tenant_exec(&data, &tid, sql).await;
        app.clock.advance(time::Duration::minutes(2));
        let pass = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            app.core.reconcile(time::Duration::minutes(1)),
        )
        .await
        .expect("the pass ends");
        let report = pass.unwrap();
        assert_eq!((report.skipped, report.repaired, report.quarantined), (500, 0, 0), "{report:?}");
        assert_eq!(count(&data.tenant(&tid, "SELECT CAST(count(*) AS TEXT) FROM pending_event").await), 600);
    }
);
