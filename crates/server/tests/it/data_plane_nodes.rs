//! Verification across nodes (issue 11): two real `serve` processes on one PostgreSQL database
//! refuse a revoked key, a suspended tenant's key and a rolled secret past its grace within
//! 1 s, and share a key's rate limit; in one process, unknown keys are cached, a stale change
//! feed turns the cache off, last use is written coalesced.

use crate::both;
use crate::data_plane::{api_key, owner, service_token, verify};
use crate::helpers::*;
use quarterdeck_domain::access::{ManageApiKeys, ManageTenants};
use quarterdeck_domain::{TenantId, TenantStatus};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The bound the issue sets: no node accepts a key more than this after the change.
const BOUND: Duration = Duration::from_secs(1);

/// A `quarterdeck serve` process, stopped (SIGKILL) when dropped: on the test's PostgreSQL
/// database (`start`, `start_with`; on SQLite a data directory of its own), or on any data
/// directory and database (`start_on`: several nodes in turn on the same data, SQLite too).
pub struct Node {
    child: std::process::Child,
    pub url: String,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    pub async fn start(app: &TestApp) -> Self {
        Self::start_with(app, &[]).await
    }

    /// A node with these settings in its environment besides the test's (`QUARTERDECK_…`).
    pub async fn start_with(app: &TestApp, env: &[(&str, &str)]) -> Self {
        let secret_key = std::fs::read_to_string(app.data_dir().join("secret.key")).unwrap();
        Self::spawn(None, Some(secret_key.trim()), app.pg_url.as_deref(), env).await
    }

    /// A node on `data_dir` (its secret key file, and on SQLite its databases) and, if given,
    /// the PostgreSQL database `database_url`: several nodes in turn on the same data.
    pub async fn start_on(data_dir: &std::path::Path, database_url: Option<&str>, env: &[(&str, &str)]) -> Self {
        Self::spawn(Some(data_dir), None, database_url, env).await
    }

    /// The port is one that was free a moment ago: another socket can take it before the
    /// node binds it. Then the node exits (cannot listen) and is started again on another
    /// port; and it is ready only once it is the one listening there, so a `/healthz` answered
    /// by whatever took the port is not taken for it.
    async fn spawn(
        data_dir: Option<&std::path::Path>,
        secret_key: Option<&str>,
        database_url: Option<&str>,
        env: &[(&str, &str)],
    ) -> Self {
        const ATTEMPTS: usize = 5;
        for attempt in 1..=ATTEMPTS {
            let mut node = Self::spawn_once(data_dir, secret_key, database_url, env);
            match node.ready().await {
                Ok(()) => return node,
                Err(log) if attempt < ATTEMPTS && log.contains("cannot listen on") => {
                    eprintln!(
                        "node, attempt {attempt}: port {} taken meanwhile; again on another",
                        node.port
                    );
                }
                Err(log) => panic!("the node exited before it was ready; its log:\n{log}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn spawn_once(
        data_dir: Option<&std::path::Path>,
        secret_key: Option<&str>,
        database_url: Option<&str>,
        env: &[(&str, &str)],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.path().join("node.log")).unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_quarterdeck"));
        cmd.arg("serve")
            .current_dir(dir.path())
            .env_remove("QUARTERDECK_CONFIG")
            .env_remove("QUARTERDECK_SECRET_KEY_FILE")
            .env_remove("QUARTERDECK_SECRET_KEY")
            .env_remove("QUARTERDECK_DATABASE_URL")
            .env("QUARTERDECK_DATA_DIR", data_dir.unwrap_or(dir.path()))
            .env("QUARTERDECK_DATABASE_MAX_CONNECTIONS", "6")
            .env("QUARTERDECK_LISTEN", format!("127.0.0.1:{port}"))
            .env("QUARTERDECK_BASE_URL", format!("http://localhost:{port}"))
            .env("QUARTERDECK_LOG", "warn");
        if let Some(key) = secret_key {
            cmd.env("QUARTERDECK_SECRET_KEY", key);
        }
        if let Some(url) = database_url {
            cmd.env("QUARTERDECK_DATABASE_URL", url);
        }
        let child = cmd
            .envs(env.iter().copied())
            // The log goes to standard output; panics to standard error.
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            port,
            dir,
        }
    }

    /// Waits (up to 10 s) until this process listens on its port and answers `/healthz` there;
    /// `Err(its log)` if it exited first.
    async fn ready(&mut self) -> Result<(), String> {
        let client = reqwest::Client::new();
        let health = format!("{}/healthz", self.url);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.child.try_wait().unwrap().is_some() {
                return Err(self.log());
            }
            if listens_on(self.child.id(), self.port)
                && client.get(&health).send().await.is_ok_and(|r| r.status() == 200)
            {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "the node did not answer /healthz within 10 s; its log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no shutdown, no flush, nothing finished.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// What the node logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }

    /// Send the process a signal (`TERM`, `KILL`) with the `kill` command.
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// Wait up to `within` for the process to exit; its exit status.
    pub async fn exited_within(&mut self, within: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < within,
                "the node did not exit within {within:?}; its log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn verify(&self, token: &str, key: &str) -> Value {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/data-plane/keys/verify", self.url))
            .bearer_auth(token)
            .json(&json!({ "key": key }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }
}

/// Whether process `pid` holds the socket listening on 127.0.0.1:`port` (or any address):
/// the listening sockets of `/proc/net/tcp` on that port, matched by inode against the
/// process's open files. Where there is no `/proc` (not Linux), true: the health check alone.
fn listens_on(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return true;
    };
    // Columns: sl, local address (hex ip:port), remote address, state (0A = listen), ..., inode.
    let sockets: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            let inode = f.get(9)?;
            (local == port && *f.get(3)? == "0A").then(|| format!("socket:[{inode}]"))
        })
        .collect();
    if sockets.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| sockets.iter().any(|s| target.as_os_str() == s.as_str()))
    })
}

/// Poll each node until it refuses `key` with `code`: no request asked more than `bound` after
/// `since` may be accepted, and the refusal stays. A request's time is when it was asked, not
/// when its answer came: a verification asked within the bound may be answered after it (a
/// loaded machine), and the node judged it when it was asked.
async fn refused_by_all_within(nodes: &[&Node], token: &str, key: &str, code: &str, since: Instant, bound: Duration) {
    for (i, node) in nodes.iter().enumerate() {
        loop {
            let asked = Instant::now();
            let body = node.verify(token, key).await;
            if body["valid"] == false {
                assert_eq!(body["code"], code, "node {i}: {body}");
                break;
            }
            assert!(
                asked.saturating_duration_since(since) <= bound,
                "node {i} still accepts the key when asked {:?} after the change",
                asked.saturating_duration_since(since)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for node in nodes {
        assert_eq!(node.verify(token, key).await["valid"], false, "a refusal stays");
    }
}

/// Two nodes, a tenant, a verify-scoped token and an owner with a key of `rpm` (empty: none).
async fn two_nodes_and_a_key(
    app: &TestApp,
    rpm: &str,
) -> (
    Node,
    Node,
    String,
    TenantId,
    uuid::Uuid,
    String,
    quarterdeck_domain::Principal,
) {
    let owner = owner(app).await;
    let tid = app.create_tenant("Acme", "acme").await;
    let token = service_token(app, &["keys:verify"], "").await;
    let (id, secret) = api_key(app, &owner, &tid, rpm).await;
    let (a, b) = tokio::join!(Node::start(app), Node::start(app));
    (a, b, token, tid.parse().unwrap(), id, secret, owner)
}

#[tokio::test]
async fn a_key_revoked_on_one_node_is_refused_by_every_node_within_a_second() {
    let Some(app) = TestApp::spawn_pg().await else { return };
    let (a, b, token, tenant, id, secret, owner) = two_nodes_and_a_key(&app, "").await;
    for _ in 0..3 {
        assert_eq!(a.verify(&token, &secret).await["valid"], true);
        assert_eq!(b.verify(&token, &secret).await["valid"], true);
    }
    let auth = owner.require_for_tenant::<ManageApiKeys>(tenant).unwrap();
    app.core.revoke_api_key(&auth, id).await.unwrap();
    let revoked = Instant::now();
    refused_by_all_within(&[&a, &b], &token, &secret, "revoked", revoked, BOUND).await;
}

#[tokio::test]
async fn a_suspended_tenants_keys_are_refused_by_every_node_within_a_second() {
    let Some(app) = TestApp::spawn_pg().await else { return };
    let (a, b, token, tenant, _, secret, owner) = two_nodes_and_a_key(&app, "").await;
    assert_eq!(a.verify(&token, &secret).await["valid"], true);
    assert_eq!(b.verify(&token, &secret).await["valid"], true);
    let auth = owner.require::<ManageTenants>().unwrap();
    app.core
        .set_tenant_status(&auth, tenant, TenantStatus::Suspended, "unpaid")
        .await
        .unwrap();
    let suspended = Instant::now();
    refused_by_all_within(&[&a, &b], &token, &secret, "tenant_suspended", suspended, BOUND).await;
}

#[tokio::test]
async fn a_rolled_secret_is_refused_by_every_node_once_its_grace_is_over() {
    let Some(app) = TestApp::spawn_pg().await else { return };
    let (a, b, token, tenant, id, old, owner) = two_nodes_and_a_key(&app, "").await;
    assert_eq!(a.verify(&token, &old).await["valid"], true);
    assert_eq!(b.verify(&token, &old).await["valid"], true);
    // The nodes read the real clock: the roll's grace end must be in real time too.
    app.clock.advance(real_now() - app.clock_now());
    let auth = owner.require_for_tenant::<ManageApiKeys>(tenant).unwrap();
    // 5 s of grace: the roll and four verifications on a loaded machine must fit in it.
    let (_, new) = app.core.roll_api_key(&auth, id, "5").await.unwrap();
    let grace_end = Instant::now() + Duration::from_secs(5);
    for node in [&a, &b] {
        assert_eq!(node.verify(&token, new.expose()).await["valid"], true);
        let body = node.verify(&token, &old).await;
        assert_eq!(body["valid"], true, "within the grace: {body}");
    }
    tokio::time::sleep_until(grace_end.into()).await;
    refused_by_all_within(&[&a, &b], &token, &old, "revoked", grace_end, BOUND).await;
    assert_eq!(a.verify(&token, new.expose()).await["valid"], true);
}

#[tokio::test]
async fn a_keys_rate_limit_is_shared_by_the_nodes() {
    let Some(app) = TestApp::spawn_pg().await else { return };
    let (a, b, token, _, _, secret, _) = two_nodes_and_a_key(&app, "10").await;
    for i in 0..10 {
        let node = if i % 2 == 0 { &a } else { &b };
        let body = node.verify(&token, &secret).await;
        assert_eq!(body["valid"], true, "request {i}: {body}");
        assert_eq!(body["limits"]["requests_per_minute"], 10);
        // Let the node's flush and the other's read pass now and then.
        if i % 4 == 3 {
            tokio::time::sleep(Duration::from_millis(450)).await;
        }
    }
    let tenth = Instant::now();
    for node in [&a, &b] {
        loop {
            let body = node.verify(&token, &secret).await;
            if body["valid"] == false {
                assert_eq!(body["code"], "rate_limited", "{body}");
                assert!(body["retry_after_seconds"].as_u64().unwrap() >= 1, "{body}");
                break;
            }
            assert!(
                tenth.elapsed() <= BOUND,
                "a node still lets the key through after {:?}",
                tenth.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The service caller of a fresh verify-scoped token.
async fn caller(app: &TestApp) -> quarterdeck_domain::core::ServiceCaller {
    let token = service_token(app, &["keys:verify"], "").await;
    app.core.authenticate_service(&token).await.unwrap()
}

/// Wait until the server's poller has read the change feed (a repeated verification of a
/// cached key makes no lookup).
async fn cache_on(app: &TestApp, caller: &quarterdeck_domain::core::ServiceCaller, key: &str) {
    poll_until("the verification cache to serve", || async {
        let before = app.core.verifier_lookups();
        let v = app.core.verify_api_key(caller, key).await.unwrap();
        let v2 = app.core.verify_api_key(caller, key).await.unwrap();
        assert_eq!(v, v2);
        app.core.verifier_lookups() == before
    })
    .await;
}

both!(
    async fn an_unknown_key_costs_one_database_lookup_a_minute_and_a_malformed_one_none(app) {
        let caller = caller(&app).await;
        let unknown = format!("qd_live_{}", "x".repeat(43));
        let before = app.core.verifier_lookups();
        for _ in 0..1000 {
            let v = app.core.verify_api_key(&caller, &unknown).await.unwrap();
            assert_eq!(v, quarterdeck_domain::core::Verification::invalid(quarterdeck_domain::api_key::Refusal::Unknown));
        }
        assert_eq!(app.core.verifier_lookups() - before, 1, "one lookup for 1,000 verifications");
        for malformed in ["", "qd_live_short", "qd_live_with spaces and more characters than needed here ok", &"y".repeat(500)] {
            let v = app.core.verify_api_key(&caller, malformed).await.unwrap();
            assert!(matches!(v, quarterdeck_domain::core::Verification::Invalid { .. }));
        }
        assert_eq!(app.core.verifier_lookups() - before, 1, "malformed keys are not looked up");
        app.clock.advance(time::Duration::seconds(61));
        app.core.verify_api_key(&caller, &unknown).await.unwrap();
        assert_eq!(app.core.verifier_lookups() - before, 2, "looked up again after a minute");
    }
);

both!(
    async fn with_the_change_feed_unread_for_a_second_no_answer_comes_from_the_cache(app) {
        let owner = owner(&app).await;
        let tid = app.create_tenant("Acme", "acme").await;
        let caller = caller(&app).await;
        let (id, secret) = api_key(&app, &owner, &tid, "").await;
        cache_on(&app, &caller, &secret).await;

        app.core.pause_verifier_feed(true);
        app.clock.advance(time::Duration::milliseconds(1001));
        let before = app.core.verifier_lookups();
        let v = app.core.verify_api_key(&caller, &secret).await.unwrap();
        assert!(matches!(v, quarterdeck_domain::core::Verification::Valid { .. }));
        assert_eq!(app.core.verifier_lookups(), before + 1, "read from the database, not the cache");
        let auth = owner.require_for_tenant::<ManageApiKeys>(tid.parse().unwrap()).unwrap();
        app.core.revoke_api_key(&auth, id).await.unwrap();
        let v = app.core.verify_api_key(&caller, &secret).await.unwrap();
        assert_eq!(v, quarterdeck_domain::core::Verification::invalid(quarterdeck_domain::api_key::Refusal::Revoked));

        app.core.pause_verifier_feed(false);
        let (_, other) = api_key(&app, &owner, &tid, "").await;
        cache_on(&app, &caller, &other).await;
    }
);

both!(
    async fn a_key_with_a_limit_says_what_remains_then_when_to_retry(app) {
        let owner = owner(&app).await;
        let tid = app.create_tenant("Acme", "acme").await;
        let token = service_token(&app, &["keys:verify"], "").await;
        let (_, secret) = api_key(&app, &owner, &tid, "3").await;
        for left in [2, 1, 0] {
            let (status, body) = verify(&app, &token, &secret).await;
            assert_eq!(status, 200);
            assert_eq!(body["valid"], true, "{body}");
            assert_eq!(body["limits"]["requests_per_minute"], 3);
            assert_eq!(body["limits"]["remaining"], left, "{body}");
            let reset = body["limits"]["reset_seconds"].as_u64().unwrap();
            assert!((1..=60).contains(&reset), "{body}");
        }
        let (_, body) = verify(&app, &token, &secret).await;
        assert_eq!(body["valid"], false);
        assert_eq!(body["code"], "rate_limited");
        let retry = body["retry_after_seconds"].as_u64().unwrap();
        assert!((1..=120).contains(&retry), "{body}");
        // Counted in the database by the flush (refusals are not counted).
        poll_until("the hits to be flushed", || async {
            app.control_value("SELECT CAST(COALESCE(SUM(hits), 0) AS TEXT) FROM api_key_rate").await == "3"
        })
        .await;
        app.clock.advance(time::Duration::seconds(i64::try_from(retry).unwrap()));
        // (A flush may still be settling: poll, refusals are not counted.)
        poll_until("the key to verify after the retry time", || async {
            verify(&app, &token, &secret).await.1["valid"] == true
        })
        .await;
    }
);

both!(
    async fn last_use_of_keys_and_tokens_is_written_by_the_flush_not_per_request(app) {
        let owner = owner(&app).await;
        let tid = app.create_tenant("Acme", "acme").await;
        let token = service_token(&app, &["keys:verify"], "").await;
        let (_, secret) = api_key(&app, &owner, &tid, "").await;
        for _ in 0..5 {
            assert_eq!(verify(&app, &token, &secret).await.1["valid"], true);
        }
        poll_until("last use of the key and the token to be written", || async {
            app.core.flush_key_use().await.unwrap();
            app.control_value("SELECT CAST(COUNT(*) AS TEXT) FROM api_key WHERE last_used_at IS NOT NULL").await == "1"
                && app.control_value("SELECT CAST(COUNT(*) AS TEXT) FROM service_token WHERE last_used_at IS NOT NULL").await
                    == "1"
        })
        .await;
    }
);

both!(
    async fn a_revoked_service_token_is_refused_within_a_second_though_it_was_cached(app) {
        let owner = owner(&app).await;
        let token = service_token(&app, &["keys:verify"], "").await;
        let caller = app.core.authenticate_service(&token).await.unwrap();
        app.core.authenticate_service(&token).await.unwrap();
        let auth = owner.require::<quarterdeck_domain::access::ManageServiceTokens>().unwrap();
        app.core.revoke_service_token(&auth, caller.token.id).await.unwrap();
        let revoked = Instant::now();
        poll_until("the revoked token to be refused", || async {
            app.core.authenticate_service(&token).await.is_err()
        })
        .await;
        assert!(revoked.elapsed() <= BOUND, "refused only after {:?}", revoked.elapsed());
        let (status, _) = verify(&app, &token, &format!("qd_live_{}", "x".repeat(43))).await;
        assert_eq!(status, 401);
    }
);
