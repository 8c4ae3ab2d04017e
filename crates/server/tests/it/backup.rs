//! `quarterdeck backup DIR` (issue 14): a running server's SQLite data copied file by file
//! with a manifest, and the copy served by a new server where people sign in; PostgreSQL
//! refused with the way to do it.

use crate::audit::cli_in;
use crate::both;
use crate::helpers::*;
use sha2::Digest;

both!(
    async fn a_backup_of_a_running_server_opens_as_a_new_server_where_users_sign_in(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        app.tenant_admin(&tid, "acme", "ada@acme.test").await;
        let out = tempfile::tempdir().unwrap();
        let dir = out.path().join("backup");
        let o = cli_in(&app, app.data_dir(), &["backup", dir.to_str().unwrap()]).await;
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        if app.pg_url.is_some() {
            assert!(!o.status.success(), "{text}");
            assert!(text.contains("pg_dump") && text.contains("docs/deploy.md"), "{text}");
            assert!(!dir.exists());
            return;
        }
        assert!(o.status.success(), "{text}");

        // The manifest names every file with its size and SHA-256, and the tenant.
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["version"], 1);
        assert_eq!(manifest["tenant_ids"], serde_json::json!([tid]));
        let files = manifest["files"].as_array().unwrap();
        let paths: Vec<&str> = files.iter().map(|f| f["path"].as_str().unwrap()).collect();
        assert!(paths.contains(&"control.db") && paths.contains(&"secret.key"), "{paths:?}");
        let simple = tid.replace('-', "");
        assert!(paths.contains(&format!("tenants/{simple}.db").as_str()), "{paths:?}");
        for f in files {
            let bytes = std::fs::read(dir.join(f["path"].as_str().unwrap())).unwrap();
            assert_eq!(f["bytes"], bytes.len() as u64);
            assert_eq!(f["sha256"], hex::encode(sha2::Sha256::digest(&bytes)));
        }

        // The copy, served by a new server: the owner and the tenant's admin sign in.
        let restored = TestApp::spawn_with(Backend::Sqlite, |s| s.data_dir = dir.clone()).await;
        restored.sign_in(OWNER_EMAIL, OWNER_PASSWORD).await;
        restored.tenant_client("acme").sign_in("ada@acme.test", ADMIN_PASSWORD).await;
        // The same secret key, so the audit trail still verifies.
        assert!(restored.core.verify_audit_chain().await.unwrap().is_ok());
    }
);

// SQLite only: `quarterdeck backup` is SQLite's (PostgreSQL's is pg_dump, docs/deploy.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_between_the_control_copy_and_the_tenant_copy_gets_its_event_back_on_restore() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    app.sign_in_owner().await;
    let tid = app.create_tenant("Acme", "acme").await;
    let out = tempfile::tempdir().unwrap();
    let backup = |name: &str| {
        let dir = out.path().join(name);
        let app = &app;
        async move {
            let o = cli_in(app, app.data_dir(), &["backup", dir.to_str().unwrap()]).await;
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            dir
        }
    };
    // The control database as copied before the change, the tenant's as copied after it: a
    // backup copies the control database first, and the change came in between.
    let before = backup("before").await;
    let r = app.invite("ada@acme.test", &tid, &["admin"]).await;
    assert_eq!(r.status(), 303);
    let after = backup("after").await;
    std::fs::copy(before.join("control.db"), after.join("control.db")).unwrap();
    // …restored three hours later: the intent settled long before the restored server starts.
    {
        use sqlx::ConnectOptions;
        let tenant_db = after.join("tenants").join(format!("{}.db", tid.replace('-', "")));
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(tenant_db)
            .connect()
            .await
            .unwrap();
        let hours = 3 * 3_600_000_000i64;
        let r = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE pending_event SET settled_at = settled_at - {hours}, created_at = created_at - {hours} WHERE settled_at IS NOT NULL"
        )))
        .execute(&mut conn)
        .await
        .unwrap();
        assert_eq!(r.rows_affected(), 1, "Ada's settled intent is in the tenant's copy");
    }

    // Restored: the tenant holds Ada and her settled intent, the control database neither her
    // event nor her email. The server's start-up pass writes them back.
    let restored = TestApp::spawn_with(Backend::Sqlite, |s| s.data_dir = after.clone()).await;
    poll_until("the restored server's start-up pass", || async {
        !restored.events_of("USER_INVITED").await.is_empty()
    })
    .await;
    let invited = restored.events_of("USER_INVITED").await;
    assert_eq!(invited.len(), 1);
    assert_eq!(invited[0].details["email"], "ada@acme.test");
    let repaired = restored.events_of("RECONCILE_REPAIRED").await;
    assert_eq!(repaired.len(), 1);
    assert_eq!(repaired[0].details["after_restore"], true, "{:?}", repaired[0].details);
    assert!(restored.core.verify_audit_chain().await.unwrap().is_ok());
    // Her invitation works from the restored server's email.
    let link = emailed_link(&restored, &after, "ada@acme.test").await;
    let r = restored.tenant_client("acme").register(&link, ADMIN_PASSWORD).await;
    assert_eq!(r.status(), 303);
}

/// The link of the email to `to` the start-up pass wrote back, whatever the restored server's
/// outbox worker has done with it: its first run may have sent it already (the log transport
/// writes it to the log, then the row is marked sent and its body emptied). Read from the
/// outbox row (in the restored data directory, `data_dir`) while it still holds the body, else
/// from the log line.
async fn emailed_link(app: &TestApp, data_dir: &std::path::Path, to: &str) -> String {
    use sqlx::ConnectOptions;
    let body = format!(
        "SELECT COALESCE((SELECT body_text FROM outbox WHERE to_addr = '{to}' ORDER BY created_at DESC LIMIT 1), '')"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(data_dir.join("control.db"))
            .read_only(true)
            .connect()
            .await
            .unwrap();
        let text: String = sqlx::query_scalar(sqlx::AssertSqlSafe(body.clone()))
            .fetch_one(&mut conn)
            .await
            .unwrap();
        let link = if text.is_empty() {
            logged_link(&app.logs.text(), to)
        } else {
            Some(link_in(&text))
        };
        if let Some(link) = link {
            return link;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no email to {to}, pending or sent"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The link in the log transport's line for an email to `to` (its text on one line, newlines
/// written as `\n`).
fn logged_link(logs: &str, to: &str) -> Option<String> {
    let line = logs
        .lines()
        .rev()
        .find(|l| l.contains("(log transport): whole message follows") && l.contains(&format!("to={to} ")))?;
    let text = &line[line.find(" text=")?..];
    let link = link_in(text);
    Some(link.split('\\').next().unwrap_or_default().to_owned())
}
