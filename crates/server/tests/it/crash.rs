//! Crashes and partial failure (issue 14): a change committed in a tenant's database whose
//! control side (audit event, email) did not commit is repaired by the reconcile pass, once; a
//! server killed with SIGKILL under load loses no acknowledged invitation and leaves no
//! duplicate and no orphan; email kept through an hour of SMTP outage goes out once.
//!
//! Over 600 lines: the crash tests share `Data` and the fault helpers defined here (the
//! reconcile and usage kill tests import them).

use crate::data_plane_nodes::Node;
use crate::helpers::*;
use crate::{both, both_backends};
use quarterdeck_domain::user::Directory;
use quarterdeck_domain::{EmailAddress, TenantId};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a test's data lives, read directly (the rows themselves), on either backend.
pub(crate) struct Data {
    pub(crate) dir: PathBuf,
    pub(crate) pg_url: Option<String>,
}

impl Data {
    /// A new data directory (and, on PostgreSQL, a new database) for servers the test runs
    /// itself; the directory lives as long as the returned guard.
    pub(crate) async fn fresh(backend: Backend) -> (tempfile::TempDir, Self) {
        let dir = tempfile::tempdir().unwrap();
        let pg_url = match backend {
            Backend::Postgres => Some(create_pg_database().await),
            Backend::Sqlite => None,
        };
        let data = Self {
            dir: dir.path().to_owned(),
            pg_url,
        };
        (dir, data)
    }

    pub(crate) fn of(app: &TestApp) -> Self {
        Self {
            dir: app.data_dir().to_owned(),
            pg_url: app.pg_url.clone(),
        }
    }

    /// The first column of every row of `sql` (text) in the control database.
    pub(crate) async fn control(&self, sql: &str) -> Vec<String> {
        match &self.pg_url {
            Some(url) => pg_strings(url, "identity", sql).await,
            None => sqlite_strings(&self.dir.join("control.db"), sql).await,
        }
    }

    /// The first column of every row of `sql` (text) in the tenant's own database.
    pub(crate) async fn tenant(&self, tid: &str, sql: &str) -> Vec<String> {
        let hex = tid.parse::<uuid::Uuid>().unwrap().simple().to_string();
        match &self.pg_url {
            Some(url) => {
                let mut u = url::Url::parse(url).unwrap();
                let control = u.path().trim_start_matches('/').to_owned();
                u.set_path(&format!("/{control}_t_{hex}"));
                pg_strings(u.as_str(), "security", sql).await
            }
            None => sqlite_strings(&self.dir.join("tenants").join(format!("{hex}.db")), sql).await,
        }
    }

    /// The first column of every row of `sql` (text) in the usage journal of the default
    /// region (on PostgreSQL, in the control database).
    pub(crate) async fn journal(&self, sql: &str) -> Vec<String> {
        match &self.pg_url {
            Some(url) => pg_strings(url, "identity", sql).await,
            None => sqlite_strings(&self.dir.join("usage").join("default.db"), sql).await,
        }
    }

    /// An event's detail field as text, in this backend's SQL.
    pub(crate) fn detail(&self, field: &str) -> String {
        match self.pg_url {
            Some(_) => format!("details->>'{field}'"),
            None => format!("json_extract(details, '$.{field}')"),
        }
    }

    /// `quarterdeck ARGS…` on this data; returns (success, stdout).
    pub(crate) fn cli(&self, args: &[&str]) -> (bool, String) {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_quarterdeck"));
        cmd.args(args)
            .env_remove("QUARTERDECK_CONFIG")
            .env_remove("QUARTERDECK_SECRET_KEY")
            .env_remove("QUARTERDECK_SECRET_KEY_FILE")
            .env_remove("QUARTERDECK_DATABASE_URL")
            .env("QUARTERDECK_DATA_DIR", &self.dir)
            .env("QUARTERDECK_LOG", "error");
        if let Some(url) = &self.pg_url {
            cmd.env("QUARTERDECK_DATABASE_URL", url);
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success() || !stdout.is_empty(),
            "quarterdeck {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), stdout)
    }
}

pub(crate) async fn pg_strings(url: &str, schema: &str, sql: &str) -> Vec<String> {
    let mut conn = pg_conn(url).await;
    sqlx::query(sqlx::AssertSqlSafe(format!("SET search_path TO {schema}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let rows: Vec<Option<String>> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_all(&mut conn)
        .await
        .unwrap();
    rows.into_iter().map(Option::unwrap_or_default).collect()
}

async fn sqlite_strings(path: &Path, sql: &str) -> Vec<String> {
    use sqlx::ConnectOptions;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .busy_timeout(std::time::Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    let rows: Vec<Option<String>> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_all(&mut conn)
        .await
        .unwrap();
    rows.into_iter().map(Option::unwrap_or_default).collect()
}

pub(crate) fn count(rows: &[String]) -> i64 {
    rows[0].parse().unwrap()
}

/// The statements that make the control database's commit fail (not the statement: the
/// COMMIT, after the tenant's has succeeded) when an email to `to` is queued: a deferred
/// constraint, checked at commit.
pub(crate) fn failing_commit(backend: Backend, to: &str) -> (Vec<String>, Vec<&'static str>) {
    match backend {
        Backend::Sqlite => (
            vec![
                "CREATE TABLE crash_parent (x TEXT PRIMARY KEY)".to_owned(),
                "CREATE TABLE crash_probe (x TEXT REFERENCES crash_parent (x) DEFERRABLE INITIALLY DEFERRED)"
                    .to_owned(),
                format!(
                    "CREATE TRIGGER crash_fail AFTER INSERT ON outbox WHEN NEW.to_addr = '{to}' \
                     BEGIN INSERT INTO crash_probe (x) VALUES ('nothing'); END"
                ),
            ],
            vec![
                "DROP TRIGGER crash_fail",
                "DROP TABLE crash_probe",
                "DROP TABLE crash_parent",
            ],
        ),
        Backend::Postgres => (
            vec![
                "CREATE FUNCTION crash_fail() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN RAISE EXCEPTION 'the control database failed at commit'; END $$"
                    .to_owned(),
                format!(
                    "CREATE CONSTRAINT TRIGGER crash_fail AFTER INSERT ON outbox DEFERRABLE INITIALLY DEFERRED \
                     FOR EACH ROW WHEN (NEW.to_addr = '{to}') EXECUTE FUNCTION crash_fail()"
                ),
            ],
            vec!["DROP TRIGGER crash_fail ON outbox", "DROP FUNCTION crash_fail()"],
        ),
    }
}

both!(
    async fn an_invitation_whose_control_commit_failed_gets_its_event_and_email_once_from_the_reconcile_pass(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let data = Data::of(&app);
        let doomed = "doomed@acme.example";
        let (install, remove) = failing_commit(app.backend, doomed);
        for sql in &install {
            app.control_exec(sql).await;
        }
        assert!(app.invite(doomed, &tid, &["admin"]).await.status().is_server_error());

        // Half-written: the user is in the tenant's database, with its intent; no event, no email.
        let dir = Directory::Tenant(tid.parse::<TenantId>().unwrap());
        let email = EmailAddress::parse(doomed).unwrap();
        let (user, _) = app.core.store().user_by_email(dir, &email).await.unwrap().expect("the tenant committed");
        let invited = format!("SELECT CAST(count(*) AS TEXT) FROM tenant_audit WHERE event_type = 'USER_INVITED' AND {} = '{doomed}'", data.detail("email"));
        let emails = format!("SELECT CAST(count(*) AS TEXT) FROM outbox WHERE to_addr = '{doomed}'");
        let intents = "SELECT CAST(count(*) AS TEXT) FROM pending_event";
        let open_intents = "SELECT CAST(count(*) AS TEXT) FROM pending_event WHERE settled_at IS NULL";
        assert_eq!(count(&data.control(&invited).await), 0);
        assert_eq!(count(&data.control(&emails).await), 0);
        assert_eq!(count(&data.tenant(&tid, intents).await), 1);
        // The intent is sealed: its invitation link is a live secret, and what it says the
        // server is to write and send must not be forgeable by whoever can write the tenant's
        // database.
        let payload = data.tenant(&tid, "SELECT payload FROM pending_event").await.remove(0);
        assert!(payload.contains("\"v\":2"), "{payload}");
        assert!(!payload.contains("token=") && !payload.contains(doomed), "{payload}");
        for sql in remove {
            app.control_exec(sql).await;
        }

        // Younger than the margin: left to its own writer.
        let margin = time::Duration::minutes(1);
        let report = app.core.reconcile(margin).await.unwrap();
        assert_eq!(report.repaired, 0, "{report:?}");
        assert_eq!(count(&data.control(&invited).await), 0);

        app.clock.advance(time::Duration::seconds(61));
        let report = app.core.reconcile(margin).await.unwrap();
        assert_eq!((report.repaired, report.quarantined, report.failed), (1, 0, 0), "{report:?}");
        assert_eq!(count(&data.control(&invited).await), 1);
        let event = &app.events_of("USER_INVITED").await[0];
        assert_eq!(event.details["user_id"], user.id.to_string());
        let repaired = app.events_of("RECONCILE_REPAIRED").await;
        assert_eq!(repaired.len(), 1);
        assert_eq!(repaired[0].details["event_id"], event.id.0.to_string());
        assert_eq!(repaired[0].details["event_types"], serde_json::json!(["USER_INVITED"]));
        assert_eq!(count(&data.control(&emails).await), 1);
        assert_eq!(app.outbox().await.iter().filter(|m| m.to == doomed).count(), 1);
        // Settled now (kept an hour for backups), no longer open.
        assert_eq!(count(&data.tenant(&tid, open_intents).await), 0);
        assert_eq!(count(&data.tenant(&tid, intents).await), 1);
        assert!(app.core.verify_audit_chain().await.unwrap().is_ok());

        // The invitation works: its link (from the repaired email) registers the user.
        let acme = app.tenant_client("acme");
        let r = acme.register(&app.invitation_link(doomed).await, ADMIN_PASSWORD).await;
        assert_eq!(r.status(), 303);

        // Again: nothing to do, nothing written.
        let head = app.core.audit_head_seq().await.unwrap();
        app.clock.advance(time::Duration::hours(1));
        let report = app.core.reconcile(margin).await.unwrap();
        assert!(report.is_empty(), "{report:?}");
        assert_eq!(app.core.audit_head_seq().await.unwrap(), head);
        assert_eq!(count(&data.control(&invited).await), 1);
        assert_eq!(count(&data.control(&emails).await), 1);
        let (intact, out) = data.cli(&["audit", "verify"]);
        assert!(intact, "{out}");
    }
);

both!(
    async fn an_intent_that_cannot_be_read_is_quarantined_once_with_its_event(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let data = Data::of(&app);
        let doomed = "doomed@acme.example";
        let (install, remove) = failing_commit(app.backend, doomed);
        for sql in &install {
            app.control_exec(sql).await;
        }
        assert!(app.invite(doomed, &tid, &["admin"]).await.status().is_server_error());
        for sql in remove {
            app.control_exec(sql).await;
        }
        // What a newer server (or a damaged disk) could leave: a payload this one cannot read.
        let id = tid.parse::<TenantId>().unwrap();
        tenant_exec(&data, &tid, "UPDATE pending_event SET payload = 'not json {'").await;
        app.clock.advance(time::Duration::minutes(2));
        let report = app.core.reconcile(time::Duration::minutes(1)).await.unwrap();
        assert_eq!((report.repaired, report.quarantined), (0, 1), "{report:?}");
        let q = app.events_of("RECONCILE_QUARANTINED").await;
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].details["kind"], "intent");
        // Tenant-visible: a fixed reason code, never the raw error text (that stays in the
        // control finding row).
        assert_eq!(q[0].details["reason"], "unreadable", "{:?}", q[0].details);
        assert_eq!(q[0].tenant_id, Some(id));
        assert_eq!(count(&data.control("SELECT CAST(count(*) AS TEXT) FROM reconcile_finding WHERE kind = 'intent' AND quarantined_at IS NOT NULL").await), 1);
        let kept = data.control("SELECT payload FROM reconcile_finding WHERE kind = 'intent'").await;
        assert_eq!(kept, vec![String::new()], "a payload that is not JSON is not kept");
        assert_eq!(count(&data.tenant(&tid, "SELECT CAST(count(*) AS TEXT) FROM pending_event").await), 0);
        assert!(app.events_of("USER_INVITED").await.is_empty());
        let report = app.core.reconcile(time::Duration::minutes(1)).await.unwrap();
        assert!(report.is_empty(), "{report:?}");
        assert!(app.core.verify_audit_chain().await.unwrap().is_ok());
    }
);

both!(
    async fn a_tenant_database_without_a_row_is_dropped_after_the_margin_and_a_missing_one_is_marked_once(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let data = Data::of(&app);
        // A crash between creating a tenant's database and inserting its row: the row is gone.
        let orphan = app.create_tenant("Gone", "gone").await;
        let orphan_id = orphan.parse::<uuid::Uuid>().unwrap();
        let hex = orphan_id.simple().to_string();
        delete_tenant_row(&app, &orphan).await;
        let report = app.core.reconcile(time::Duration::minutes(1)).await.unwrap();
        assert_eq!(report.databases_dropped, 0, "noted, not dropped yet: {report:?}");
        app.clock.advance(time::Duration::minutes(11));
        let report = app.core.reconcile(time::Duration::minutes(1)).await.unwrap();
        if data.pg_url.is_some() {
            // A cluster may be shared with another deployment whose prefix collides: never
            // dropped automatically, only quarantined (with a reason code, no raw text).
            assert_eq!((report.databases_dropped, report.databases_quarantined), (0, 1), "{report:?}");
            let q = app.events_of("RECONCILE_QUARANTINED").await;
            assert_eq!(q.len(), 1);
            assert_eq!(q[0].details["reason"], "unverified", "{:?}", q[0].details);
            assert!(database_exists(&data, &hex).await);
            remove_database(&app, &data, &hex).await;
        } else {
            // The data dir is this deployment's alone and the file's own tenant_info names it.
            assert_eq!(report.databases_dropped, 1, "{report:?}");
            let dropped = app.events_of("RECONCILE_DATABASE_DROPPED").await;
            assert_eq!(dropped.len(), 1);
            assert_eq!(dropped[0].details["tenant_id"], orphan);
        }
        assert!(!database_exists(&data, &hex).await);

        // A live tenant whose database vanished: reported at every pass, marked once, never
        // recreated empty.
        let acme_hex = tid.parse::<uuid::Uuid>().unwrap().simple().to_string();
        remove_database(&app, &data, &acme_hex).await;
        let report = app.core.reconcile(time::Duration::minutes(1)).await.unwrap();
        assert_eq!(report.databases_missing, 1, "{report:?}");
        let report = app.core.reconcile(time::Duration::minutes(1)).await.unwrap();
        assert_eq!(report.databases_missing, 1, "{report:?}");
        assert_eq!(app.events_of("RECONCILE_DATABASE_MISSING").await.len(), 1);
        assert!(!database_exists(&data, &acme_hex).await);
        assert!(app.core.verify_audit_chain().await.unwrap().is_ok());
    }
);

/// Runs one statement in the tenant's own database.
pub(crate) async fn tenant_exec(data: &Data, tid: &str, sql: &str) {
    use sqlx::ConnectOptions;
    let hex = tid.parse::<uuid::Uuid>().unwrap().simple().to_string();
    match &data.pg_url {
        Some(url) => {
            let mut u = url::Url::parse(url).unwrap();
            let control = u.path().trim_start_matches('/').to_owned();
            u.set_path(&format!("/{control}_t_{hex}"));
            let mut conn = pg_conn(u.as_str()).await;
            sqlx::query("SET search_path TO security")
                .execute(&mut conn)
                .await
                .unwrap();
            sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&mut conn)
                .await
                .unwrap();
        }
        None => {
            let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(data.dir.join("tenants").join(format!("{hex}.db")))
                .busy_timeout(std::time::Duration::from_secs(10))
                .connect()
                .await
                .unwrap();
            sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }
}

/// Removes a tenant's row as if it had never been inserted (its audit event stays: the
/// trail cannot be edited).
pub(crate) async fn delete_tenant_row(app: &TestApp, tid: &str) {
    let id = match app.backend {
        Backend::Postgres => format!("'{tid}'"),
        Backend::Sqlite => format!("X'{}'", tid.parse::<uuid::Uuid>().unwrap().simple()),
    };
    app.control_exec(&format!("DELETE FROM tenant WHERE id = {id}")).await;
}

pub(crate) async fn database_exists(data: &Data, hex: &str) -> bool {
    match &data.pg_url {
        Some(url) => {
            let control = url::Url::parse(url).unwrap().path().trim_start_matches('/').to_owned();
            let n = pg_strings(
                url,
                "public",
                &format!("SELECT CAST(count(*) AS TEXT) FROM pg_database WHERE datname = '{control}_t_{hex}'"),
            )
            .await;
            count(&n) == 1
        }
        None => data.dir.join("tenants").join(format!("{hex}.db")).exists(),
    }
}

/// Takes a tenant's database away underneath the server (a lost volume).
async fn remove_database(app: &TestApp, data: &Data, hex: &str) {
    let _ = app;
    match &data.pg_url {
        Some(url) => {
            let control = url::Url::parse(url).unwrap().path().trim_start_matches('/').to_owned();
            let mut conn = pg_conn(url).await;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE \"{control}_t_{hex}\" WITH (FORCE)"
            )))
            .execute(&mut conn)
            .await
            .unwrap();
        }
        None => {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(data.dir.join("tenants").join(format!("{hex}.db{suffix}")));
            }
        }
    }
}

/// Invitations fired at once (at most this many in flight).
const INVITATIONS: usize = 1000;
const IN_FLIGHT: usize = 50;
/// The Automation API allows 300 requests a minute per token: the load is spread over tokens.
const TOKENS: usize = 5;

both_backends!(
    async fn a_server_killed_with_sigkill_under_1000_invitations_loses_no_acknowledged_one_and_leaves_no_duplicate_or_orphan(backend) {
        let (dir, data) = Data::fresh(backend).await;
        let pg_url = data.pg_url.clone();
        let env = [
            ("QUARTERDECK_BOOTSTRAP_OWNER_EMAIL", OWNER_EMAIL),
            ("QUARTERDECK_BOOTSTRAP_OWNER_PASSWORD", OWNER_PASSWORD),
            ("QUARTERDECK_DATABASE_MAX_CONNECTIONS", "10"),
            // Repair at once at start-up (the test's clock is the real one).
            ("QUARTERDECK_RECONCILE_MARGIN_SECONDS", "0"),
        ];
        let mut node = Node::start_on(dir.path(), pg_url.as_deref(), &env).await;
        // The Automation API is served on the base host.
        let base = node.url.replace("127.0.0.1", "localhost");
        let tokens: Vec<String> = (0..TOKENS)
            .map(|i| {
                let (ok, out) = data.cli(&["tokens", "create", "--email", OWNER_EMAIL, "--name", &format!("load {i}"), "--scope", "read_write", "--days", "1"]);
                assert!(ok, "{out}");
                out.split_whitespace().find(|w| w.starts_with("qd_")).unwrap_or_else(|| panic!("no token in {out}")).to_owned()
            })
            .collect();
        let client = reqwest::Client::new();
        let r = client
            .post(format!("{base}/v1/admin/tenants"))
            .bearer_auth(&tokens[0])
            .json(&serde_json::json!({"name": "Load", "slug": "load"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let tid = r.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_owned();

        // Kill at a random point: after some hundreds of answers. Acknowledged (2xx) or shed
        // (503, the server under load) alike: counting only 2xx, a loaded run could end its
        // 1,000 requests before the chosen count and be killed by the time cap instead.
        let kill_after = 100 + (uuid::Uuid::new_v4().as_u128() % 700) as usize;
        let acknowledged = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (killed_tx, mut killed_rx) = tokio::sync::watch::channel(false);
        let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
        let mut requests = tokio::task::JoinSet::new();
        let started = std::time::Instant::now();
        for i in 0..INVITATIONS {
            let permit = slots.clone().acquire_owned().await.unwrap();
            if *killed_rx.borrow_and_update() {
                break;
            }
            let (client, url, token, tid, acknowledged, answered, killed_tx) = (
                client.clone(),
                base.clone(),
                tokens[i % TOKENS].clone(),
                tid.clone(),
                acknowledged.clone(),
                answered.clone(),
                killed_tx.clone(),
            );
            requests.spawn(async move {
                let _permit = permit;
                let email = format!("user{i}@load.example");
                let r = client
                    .post(format!("{url}/v1/admin/users"))
                    .bearer_auth(&token)
                    .json(&serde_json::json!({"email": email, "roles": ["viewer"], "tenant_id": tid}))
                    .send()
                    .await;
                if let Ok(r) = r {
                    let status = r.status();
                    if status.is_success() {
                        acknowledged.lock().unwrap().push(email);
                    } else if status != 503 {
                        panic!("invitation {i}: {status} {}", r.text().await.unwrap_or_default());
                    }
                    if answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == kill_after {
                        let _ = killed_tx.send(true);
                    }
                }
            });
            // Kill as soon as the chosen answer has come, with the rest still in flight.
            if *killed_rx.borrow() {
                break;
            }
        }
        if !*killed_rx.borrow() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(120), killed_rx.changed()).await;
        }
        // …plus a random part of a write's time, so the kill lands anywhere in one.
        let jitter = std::time::Duration::from_micros((uuid::Uuid::new_v4().as_u128() % 20_000) as u64);
        tokio::time::sleep(jitter).await;
        node.kill();
        while requests.join_next().await.is_some() {}
        let acknowledged: Vec<String> = acknowledged.lock().unwrap().clone();
        let answered = answered.load(std::sync::atomic::Ordering::SeqCst);
        eprintln!(
            "[{backend:?}] killed after {answered} answers, {} of them acknowledged invitations ({:?} of load)",
            acknowledged.len(),
            started.elapsed()
        );

        // What the kill left: open intents of changes whose control side may not have committed
        // (settled ones are kept an hour for backups).
        let intents = "SELECT CAST(count(*) AS TEXT) FROM pending_event WHERE settled_at IS NULL";
        let left = count(&data.tenant(&tid, intents).await);
        // A node on the same data: its start-up pass repairs what the kill left half-written.
        let node = Node::start_on(dir.path(), pg_url.as_deref(), &env).await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while count(&data.tenant(&tid, intents).await) > 0 {
            assert!(std::time::Instant::now() < deadline, "intents left after reconcile; node log:\n{}", node.log());
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        drop(node);

        let users = data.tenant(&tid, "SELECT email FROM app_user").await;
        let invited = data
            .control(&format!("SELECT {} FROM tenant_audit WHERE event_type = 'USER_INVITED'", data.detail("email")))
            .await;
        let emails = data.control("SELECT to_addr FROM outbox").await;
        let repaired = data.control("SELECT CAST(count(*) AS TEXT) FROM tenant_audit WHERE event_type = 'RECONCILE_REPAIRED'").await;
        let tally = |v: &[String]| {
            let mut m: HashMap<String, usize> = HashMap::new();
            for x in v {
                *m.entry(x.clone()).or_default() += 1;
            }
            m
        };
        let (user_set, event_tally, email_tally) = (users.iter().cloned().collect::<HashSet<_>>(), tally(&invited), tally(&emails));
        let lost = acknowledged.iter().filter(|e| !user_set.contains(*e) || event_tally.get(*e) != Some(&1)).count();
        let duplicated = (users.len() - user_set.len())
            + event_tally.values().filter(|n| **n > 1).count()
            + email_tally.values().filter(|n| **n > 1).count();
        let orphans = users.iter().filter(|e| !event_tally.contains_key(*e)).count()
            + event_tally.keys().filter(|e| !user_set.contains(*e)).count()
            + users.iter().filter(|e| !email_tally.contains_key(*e)).count();
        let (intact, verify) = data.cli(&["audit", "verify"]);
        eprintln!(
            "[{backend:?}] acknowledged {}, found {} of them (users in the tenant: {}, USER_INVITED events: {}), \
             lost {lost}, duplicated {duplicated}, orphans {orphans}, intents left by the kill {left}, \
             repaired by reconcile {}, audit verify: {}",
            acknowledged.len(),
            acknowledged.iter().filter(|e| user_set.contains(*e)).count(),
            users.len(),
            invited.len(),
            repaired[0],
            verify.trim()
        );
        assert!(answered >= kill_after, "killed by the time cap after {answered} answers, not after {kill_after}");
        assert!(!acknowledged.is_empty(), "every one of {answered} answers was a 503: nothing to check");
        assert_eq!(lost, 0);
        assert_eq!(duplicated, 0);
        assert_eq!(orphans, 0);
        assert!(intact, "{verify}");
    }
);

both_backends!(
    async fn with_smtp_unreachable_for_an_hour_every_invitation_is_delivered_once_when_it_is_back(backend) {
        // SMTP down, its port held for the maildev that brings it back.
        let down = crate::maildev::DownSmtp::hold();
        let app = TestApp::spawn_with(backend, |s| mail_to(s, down.port)).await;
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let data = Data::of(&app);
        let people: Vec<String> = (0..5).map(|i| format!("p{i}@acme.example")).collect();
        for p in &people {
            assert_eq!(app.invite(p, &tid, &["viewer"]).await.status(), 303);
        }
        // An hour of outage, five minutes at a time: the worker keeps trying (and failing),
        // backing off; at each step it catches up (nothing left due).
        for _ in 0..12 {
            app.clock.advance(time::Duration::minutes(5));
            poll_until("the worker to try everything due", || async {
                app.core.store().due_messages(app.clock_now(), 100).await.unwrap().is_empty()
            })
            .await;
        }
        let attempts = data.control("SELECT CAST(attempts AS TEXT) FROM outbox").await;
        assert_eq!(attempts.len(), people.len(), "every email kept");
        for a in &attempts {
            let a: i64 = a.parse().unwrap();
            assert!(a >= 6, "{a} attempts in the hour");
        }
        assert_eq!(app.outbox().await.len(), people.len(), "none given up");

        let maildev = crate::maildev::Maildev::start_on(Some(down));
        app.clock.advance(time::Duration::hours(1));
        let got = maildev.wait_for_emails(people.len()).await;
        poll_until("every email marked sent", || async { app.outbox().await.is_empty() }).await;
        // However far the clock moves now, nothing goes out again.
        app.clock.advance(time::Duration::hours(2));
        let sent = "SELECT CAST(count(*) AS TEXT) FROM outbox WHERE status = 'sent'";
        assert_eq!(count(&data.control(sent).await), i64::try_from(people.len()).unwrap());
        let again = maildev.emails().await;
        assert_eq!(again.len(), got.len());
        for p in &people {
            let n = again
                .iter()
                .filter(|m| m["to"].as_array().is_some_and(|to| to.iter().any(|t| t["address"] == p.as_str())))
                .count();
            assert_eq!(n, 1, "{p}: delivered {n} times");
        }
        assert_eq!(again.len(), people.len());
    }
);

both_backends!(
    async fn a_tenant_living_in_a_region_with_its_own_storage_is_not_marked_missing_by_a_reconcile_pass(backend) {
        let places = crate::regions::places(backend).await;
        let regions = places.regions();
        let app = TestApp::spawn_with(backend, |s| s.regions = regions).await;
        crate::data_plane::owner(&app).await;
        let acme = crate::regions::create_in(&app, "acme", "eu").await;
        let report = app.core.reconcile(time::Duration::minutes(1)).await.unwrap();
        assert_eq!(report.databases_missing, 0, "{report:?}");
        assert_eq!(report.databases_dropped + report.databases_quarantined, 0, "{report:?}");
        let data = Data::of(&app);
        // The only tenant: any finding about a database would be about acme's.
        let _ = acme;
        let missing = data
            .control("SELECT CAST(count(*) AS TEXT) FROM reconcile_finding WHERE kind <> 'intent'")
            .await;
        assert_eq!(count(&missing), 0, "{missing:?}");

        // An orphan in that region (its row gone) is found there and settled there.
        let gone = crate::regions::create_in(&app, "gone", "eu").await;
        delete_tenant_row(&app, &gone.to_string()).await;
        let report = app.core.reconcile(time::Duration::minutes(1)).await.unwrap();
        assert_eq!(report.databases_missing, 0, "{report:?}");
        app.clock.advance(time::Duration::minutes(11));
        let report = app.core.reconcile(time::Duration::minutes(1)).await.unwrap();
        assert_eq!(report.databases_dropped + report.databases_quarantined, 1, "{report:?}");
        let mut found = app.events_of("RECONCILE_DATABASE_DROPPED").await;
        found.extend(app.events_of("RECONCILE_QUARANTINED").await);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].details["tenant_id"], gone.to_string());
        if let crate::regions::Places::Sqlite { eu, .. } = &places {
            let file = eu.path().join("tenants").join(format!("{}.db", gone.0.simple()));
            assert!(!file.exists(), "{}", file.display());
        }
    }
);

both!(
    async fn an_intent_of_a_newer_format_or_an_unknown_event_type_is_left_for_a_newer_node_not_quarantined(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let data = Data::of(&app);
        let hex = |n: u8| format!("{:032x}", u128::from(n) + 0xabc);
        // A newer server's intent naming an event type this one does not know, sealed with
        // this deployment's key, as a newer node would.
        let secret = std::fs::read_to_string(app.data_dir().join("secret.key")).unwrap();
        let secret = quarterdeck_domain::sso::SecretKey::parse(&secret).unwrap();
        let newer = format!(
            r#"{{"v": 1, "events": [{{"id": "{}", "ts": 0, "event_type": "SOMETHING_NEW", "actor_user_id": null, "actor_email": null, "actor_impersonation": null, "actor_token_id": null, "tenant_id": "{tid}", "details": {{}}, "published": null}}], "ops": []}}"#,
            uuid::Uuid::parse_str(&hex(2)).unwrap()
        );
        let sealed = quarterdeck_store::sealed_intent_payload(
            &secret,
            tid.parse().unwrap(),
            uuid::Uuid::parse_str(&hex(2)).unwrap(),
            &newer,
        )
        .unwrap();
        for (n, payload) in [(1u8, r#"{"v": 3, "events": [], "ops": []}"#.to_owned()), (2u8, sealed)] {
            let id = uuid::Uuid::parse_str(&hex(n)).unwrap();
            let sql = match &data.pg_url {
                Some(_) => format!("INSERT INTO pending_event (event_id, created_at, attempts, payload) VALUES ('{id}', now() - interval '1 hour', 0, '{payload}')"),
                None => format!("INSERT INTO pending_event (event_id, created_at, attempts, payload) VALUES (X'{}', 0, 0, '{payload}')", id.simple()),
            };
            tenant_exec(&data, &tid, &sql).await;
        }
        app.clock.advance(time::Duration::minutes(2));
        let report = app.core.reconcile(time::Duration::minutes(1)).await.unwrap();
        assert_eq!((report.skipped, report.quarantined, report.repaired), (2, 0, 0), "{report:?}");
        assert_eq!(count(&data.tenant(&tid, "SELECT CAST(count(*) AS TEXT) FROM pending_event").await), 2);
        assert_eq!(count(&data.control("SELECT CAST(count(*) AS TEXT) FROM reconcile_finding").await), 0);
        assert!(app.events_of("RECONCILE_QUARANTINED").await.is_empty());
    }
);
