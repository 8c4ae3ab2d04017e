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

// ---- an attacker with write access to the database (issue 10, finding 5) ---------------------

/// The control database as an attacker with its credentials sees it: guards can be dropped,
/// rows deleted and rewritten at will.
enum Raw {
    Lite(sqlx::SqliteConnection),
    Pg(sqlx::PgConnection),
}

impl Raw {
    async fn open(app: &TestApp) -> Self {
        use sqlx::ConnectOptions;
        match app.backend {
            Backend::Sqlite => Raw::Lite(
                sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(app.data_dir().join("control.db"))
                    .connect()
                    .await
                    .unwrap(),
            ),
            Backend::Postgres => {
                let mut conn = pg_conn(app.pg_url.as_deref().unwrap()).await;
                sqlx::raw_sql("SET search_path = identity")
                    .execute(&mut conn)
                    .await
                    .unwrap();
                Raw::Pg(conn)
            }
        }
    }

    /// Run SQL as the attacker; `Err` when a guard refuses it.
    async fn exec(&mut self, sql: &'static str) -> Result<(), sqlx::Error> {
        match self {
            Raw::Lite(c) => sqlx::raw_sql(sql).execute(c).await.map(|_| ()),
            Raw::Pg(c) => sqlx::raw_sql(sql).execute(c).await.map(|_| ()),
        }
    }

    /// Drop every guard the schema has on the trail and its head.
    async fn drop_guards(&mut self) {
        let sql = match self {
            Raw::Lite(_) => {
                "DROP TRIGGER IF EXISTS tenant_audit_no_update; DROP TRIGGER IF EXISTS tenant_audit_no_delete; \
                 DROP TRIGGER IF EXISTS audit_head_forward_only; DROP TRIGGER IF EXISTS audit_head_no_delete;"
            }
            Raw::Pg(_) => {
                "DROP TRIGGER IF EXISTS tenant_audit_append_only ON tenant_audit; \
                 DROP TRIGGER IF EXISTS audit_head_forward_only ON audit_head; \
                 DROP TRIGGER IF EXISTS audit_head_no_truncate ON audit_head;"
            }
        };
        self.exec(sql).await.unwrap();
    }

    async fn delete_from(&mut self, seq: i64) {
        let q = "DELETE FROM tenant_audit WHERE seq >= $1";
        match self {
            Raw::Lite(c) => sqlx::query(q).bind(seq).execute(c).await.map(|_| ()).unwrap(),
            Raw::Pg(c) => sqlx::query(q).bind(seq).execute(c).await.map(|_| ()).unwrap(),
        };
    }

    async fn rewrite(&mut self, e: &quarterdeck_domain::audit::AuditEvent) {
        let q = "UPDATE tenant_audit SET details = $1, prev_hash = $2, hash = $3 WHERE seq = $4";
        let details = sqlx::types::Json(&e.details);
        match self {
            Raw::Lite(c) => sqlx::query(q)
                .bind(details)
                .bind(&e.prev_hash)
                .bind(&e.hash)
                .bind(e.seq)
                .execute(c)
                .await
                .map(|_| ())
                .unwrap(),
            Raw::Pg(c) => sqlx::query(q)
                .bind(details)
                .bind(&e.prev_hash)
                .bind(&e.hash)
                .bind(e.seq)
                .execute(c)
                .await
                .map(|_| ())
                .unwrap(),
        };
    }

    /// Point the head at (seq, hash), leaving the rest of the row as it is.
    async fn set_head(&mut self, seq: i64, hash: &str) {
        let q = "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1";
        match self {
            Raw::Lite(c) => sqlx::query(q)
                .bind(seq)
                .bind(hash)
                .execute(c)
                .await
                .map(|_| ())
                .unwrap(),
            Raw::Pg(c) => sqlx::query(q)
                .bind(seq)
                .bind(hash)
                .execute(c)
                .await
                .map(|_| ())
                .unwrap(),
        };
    }
}

async fn all_events(app: &TestApp) -> Vec<quarterdeck_domain::audit::AuditEvent> {
    app.core.store().events_after(0, 10_000).await.unwrap()
}

/// Rewrite every event from `from_seq` on with plain SHA-256 links (what anyone can compute
/// without the server's key), after `alter` has changed what it wants, and move the head.
async fn rechain_plain(
    app: &TestApp,
    raw: &mut Raw,
    from_seq: i64,
    alter: impl Fn(&mut quarterdeck_domain::audit::AuditEvent),
) {
    let mut prev = quarterdeck_domain::audit::GENESIS_HASH.to_owned();
    let mut last = 0;
    for mut e in all_events(app).await {
        if e.seq >= from_seq {
            alter(&mut e);
            e.prev_hash = prev.clone();
            e.hash = e.expected_hash();
            raw.rewrite(&e).await;
        }
        prev = e.hash.clone();
        last = e.seq;
    }
    raw.set_head(last, &prev).await;
}

both!(
    async fn deleting_the_tail_with_the_trigger_dropped_is_reported(app) {
        app.sign_in_owner().await;
        app.create_tenant("Acme Corp", "acme").await;
        app.create_tenant("Globex", "globex").await;
        let events = all_events(&app).await;
        let n = events.len() as i64;
        let mut raw = Raw::open(&app).await;
        raw.drop_guards().await;
        raw.delete_from(n - 1).await;
        let broken = app.core.verify_audit_chain().await.unwrap().unwrap_err();
        assert_eq!(broken.seq, n - 1, "{broken:?}");
    }
);

both!(
    async fn deleting_the_tail_and_rewinding_the_head_is_reported(app) {
        app.sign_in_owner().await;
        app.create_tenant("Acme Corp", "acme").await;
        app.create_tenant("Globex", "globex").await;
        let events = all_events(&app).await;
        let n = events.len();
        let mut raw = Raw::open(&app).await;
        raw.drop_guards().await;
        raw.delete_from(events[n - 2].seq).await;
        raw.set_head(events[n - 3].seq, &events[n - 3].hash).await;
        assert!(app.core.verify_audit_chain().await.unwrap().is_err(), "a rewound head must be noticed");
    }
);

both!(
    async fn a_rewound_head_is_not_signed_afresh_by_the_next_write(app) {
        app.sign_in_owner().await;
        app.create_tenant("Acme Corp", "acme").await;
        app.create_tenant("Globex", "globex").await;
        let events = all_events(&app).await;
        let n = events.len();
        let mut raw = Raw::open(&app).await;
        raw.drop_guards().await;
        raw.delete_from(events[n - 1].seq).await;
        raw.set_head(events[n - 2].seq, &events[n - 2].hash).await;
        // Any audited write, even an anonymous failed sign-in, must not paper over it.
        let anonymous = TestApp::client_for(&app);
        let page = anonymous.get(app.url("/login")).send().await.unwrap().text().await.unwrap();
        let _ = post_form(
            &anonymous,
            &app.url("/login"),
            &app.base_url,
            &page,
            &[("email", "nobody@example.com"), ("password", "wrong password 1")],
        )
        .await;
        assert!(app.core.verify_audit_chain().await.unwrap().is_err(), "the rewound head was signed afresh");
        assert_eq!(all_events(&app).await.len(), n - 1, "an event was built on the rewound head");
    }
);

both!(
    async fn an_event_slipped_in_past_the_head_is_reported(app) {
        app.sign_in_owner().await;
        app.create_tenant("Acme Corp", "acme").await;
        let mut raw = Raw::open(&app).await;
        let copy_last = match raw {
            Raw::Lite(_) => {
                "INSERT INTO tenant_audit (seq, id, ts, event_type, actor_id, actor_email, tenant_id, details, prev_hash, hash) \
                 SELECT seq + 1, randomblob(16), ts, event_type, actor_id, actor_email, tenant_id, details, hash, hash \
                 FROM tenant_audit WHERE seq = (SELECT max(seq) FROM tenant_audit)"
            }
            Raw::Pg(_) => {
                "INSERT INTO tenant_audit (seq, id, ts, event_type, actor_id, actor_email, tenant_id, details, prev_hash, hash) \
                 SELECT seq + 1, gen_random_uuid(), ts, event_type, actor_id, actor_email, tenant_id, details, hash, hash \
                 FROM tenant_audit WHERE seq = (SELECT max(seq) FROM tenant_audit)"
            }
        };
        raw.exec(copy_last).await.unwrap();
        let broken = app.core.verify_audit_chain().await.unwrap().unwrap_err();
        assert!(broken.reason.contains("beyond the chain's head"), "{broken:?}");
    }
);

both!(
    async fn rewriting_an_event_and_recomputing_every_later_hash_is_reported(app) {
        app.sign_in_owner().await;
        app.create_tenant("Acme Corp", "acme").await;
        app.create_tenant("Globex", "globex").await;
        let target = app.events_of("TENANT_CREATED").await.pop().unwrap(); // the oldest one
        let mut raw = Raw::open(&app).await;
        raw.drop_guards().await;
        rechain_plain(&app, &mut raw, target.seq, |e| {
            if e.seq == target.seq {
                e.details = serde_json::json!({"name": "Evil"});
            }
        })
        .await;
        let broken = app.core.verify_audit_chain().await.unwrap().unwrap_err();
        assert_eq!(broken.seq, target.seq, "{broken:?}");
    }
);

both!(
    async fn the_chain_head_only_moves_forward(app) {
        app.sign_in_owner().await;
        app.create_tenant("Acme Corp", "acme").await;
        let mut raw = Raw::open(&app).await;
        assert!(raw.exec("UPDATE audit_head SET seq = seq - 1").await.is_err(), "the head moved back");
        assert!(raw.exec("DELETE FROM audit_head").await.is_err(), "the head was deleted");
        assert!(raw.exec("UPDATE audit_head SET keyed_from = keyed_from + 1000").await.is_err(), "keyed_from moved");
        // Appending still works.
        app.create_tenant("Globex", "globex").await;
        let n = all_events(&app).await.len() as u64;
        assert_eq!(app.core.verify_audit_chain().await.unwrap(), Ok(n));
    }
);

/// Run the `quarterdeck` binary on the test server's data (as an operator would).
async fn cli(app: &TestApp, args: &[&str]) -> std::process::Output {
    cli_in(app, app.data_dir(), args).await
}

pub async fn cli_in(app: &TestApp, data_dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_quarterdeck"));
    cmd.args(args)
        .current_dir(data_dir)
        .env_remove("QUARTERDECK_CONFIG")
        .env_remove("QUARTERDECK_SECRET_KEY")
        .env_remove("QUARTERDECK_SECRET_KEY_FILE")
        .env("QUARTERDECK_DATA_DIR", data_dir)
        .env("QUARTERDECK_LOG", "error");
    match &app.pg_url {
        Some(url) => cmd.env("QUARTERDECK_DATABASE_URL", url),
        None => cmd.env_remove("QUARTERDECK_DATABASE_URL"),
    };
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn out(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

both!(
    async fn an_intact_trail_with_a_checkpoint_verifies(app) {
        app.sign_in_owner().await;
        app.create_tenant("Acme Corp", "acme").await;
        let file = app.data_dir().join("cp.json");
        let taken = cli(&app, &["audit", "checkpoint", "--out", file.to_str().unwrap()]).await;
        assert!(taken.status.success(), "{}", out(&taken));
        let head = all_events(&app).await.pop().unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains(&head.hash), "the checkpoint names the last event's hash: {text}");
        app.create_tenant("Globex", "globex").await;
        let verified = cli(&app, &["audit", "verify", "--checkpoint", file.to_str().unwrap()]).await;
        assert!(verified.status.success(), "{}", out(&verified));
        assert!(out(&verified).contains(&format!("#{}", head.seq)), "{}", out(&verified));
    }
);

both!(
    async fn a_checkpoint_then_a_deleted_tail_fails_verify_naming_the_event(app) {
        app.sign_in_owner().await;
        app.create_tenant("Acme Corp", "acme").await;
        let file = app.data_dir().join("cp.json");
        let taken = cli(&app, &["audit", "checkpoint", "--out", file.to_str().unwrap()]).await;
        assert!(taken.status.success(), "{}", out(&taken));
        let at = all_events(&app).await.pop().unwrap();
        app.create_tenant("Globex", "globex").await;
        // The attacker deletes everything from the checkpointed event on and re-points the head
        // at what is left: without the checkpoint, nothing in the database says what is gone.
        let mut raw = Raw::open(&app).await;
        raw.drop_guards().await;
        raw.delete_from(at.seq).await;
        let left = all_events(&app).await.pop().unwrap();
        raw.set_head(left.seq, &left.hash).await;
        let verified = cli(&app, &["audit", "verify", "--checkpoint", file.to_str().unwrap()]).await;
        assert!(!verified.status.success(), "{}", out(&verified));
        assert!(out(&verified).contains(&format!("#{}", at.seq)), "{}", out(&verified));
    }
);

both!(
    async fn a_forged_checkpoint_is_refused(app) {
        app.sign_in_owner().await;
        app.create_tenant("Acme Corp", "acme").await;
        let file = app.data_dir().join("cp.json");
        let taken = cli(&app, &["audit", "checkpoint", "--out", file.to_str().unwrap()]).await;
        assert!(taken.status.success(), "{}", out(&taken));
        let mut cp: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        cp["seq"] = serde_json::json!(cp["seq"].as_i64().unwrap() - 1);
        let forged = app.data_dir().join("forged.json");
        std::fs::write(&forged, cp.to_string()).unwrap();
        let verified = cli(&app, &["audit", "verify", "--checkpoint", forged.to_str().unwrap()]).await;
        assert!(!verified.status.success(), "{}", out(&verified));
        assert!(out(&verified).contains("signature"), "{}", out(&verified));
    }
);

both!(
    async fn audit_verify_without_the_secret_key_says_what_is_wrong(app) {
        app.sign_in_owner().await;
        let key = app.data_dir().join("secret.key");
        std::fs::rename(&key, app.data_dir().join("moved.key")).unwrap();
        let verified = cli(&app, &["audit", "verify"]).await;
        assert!(!verified.status.success(), "{}", out(&verified));
        assert!(out(&verified).contains("secret.key"), "{}", out(&verified));
        assert!(!key.exists(), "audit verify must not make a new key");
    }
);

both!(
    async fn a_checkpoint_is_written_at_start_and_again_after_the_period(app) {
        app.sign_in_owner().await;
        let dir = app.data_dir().join("audit-checkpoints");
        let count = || std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        poll_until("the first checkpoint", || async { count() >= 1 }).await;
        let first = count();
        app.create_tenant("Acme Corp", "acme").await;
        app.clock.advance(time::Duration::minutes(61));
        poll_until("the next checkpoint", || async { count() > first }).await;
    }
);

both!(
    async fn the_migration_keeps_a_pre_keyed_trail_verifiable(app) {
        app.sign_in_owner().await;
        app.create_tenant("Acme Corp", "acme").await;
        // Take the database back to before migration 0003: an unkeyed trail, plain links, the
        // head without keyed_from or MAC, the migration not applied.
        let mut raw = Raw::open(&app).await;
        raw.drop_guards().await;
        rechain_plain(&app, &mut raw, 1, |_| {}).await;
        raw.exec("ALTER TABLE audit_head DROP COLUMN keyed_from; ALTER TABLE audit_head DROP COLUMN mac;")
            .await
            .unwrap();
        let forget = match app.backend {
            Backend::Sqlite => "DELETE FROM _sqlx_migrations WHERE version = 3",
            Backend::Postgres => {
                "DELETE FROM _sqlx_migrations WHERE version = 3; DROP FUNCTION audit_head_forward_only();"
            }
        };
        raw.exec(forget).await.unwrap();
        let old = all_events(&app).await.len() as i64;
        // Start again on the same data: 0003 runs, the old events keep their plain links.
        let settings = quarterdeck::Settings {
            data_dir: app.data_dir().to_owned(),
            database_url: app.pg_url.clone(),
            ..Default::default()
        };
        let core = quarterdeck::app::core(&settings, quarterdeck::app::Deps::default()).await.unwrap();
        assert_eq!(core.verify_audit_chain().await.unwrap(), Ok(old as u64));
        let client = quarterdeck_domain::core::ClientInfo { ip: None, user_agent: None };
        let _ = core.sign_in(quarterdeck_domain::user::Directory::Platform, "nobody@example.com", "x", &client).await;
        let events = all_events(&app).await;
        let new = events.last().unwrap();
        assert_eq!(new.seq, old + 1);
        assert_ne!(new.hash, new.expected_hash(), "events after the migration are keyed");
        assert_eq!(core.verify_audit_chain().await.unwrap(), Ok(old as u64 + 1));
        // And the old part still cannot be rewritten unnoticed from the head on.
        let mut raw = Raw::open(&app).await;
        assert!(raw.exec("UPDATE audit_head SET seq = seq - 1").await.is_err());
    }
);
