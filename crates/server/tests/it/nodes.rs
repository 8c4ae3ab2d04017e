//! Several nodes on one database (issue 14): three real `serve` processes on one PostgreSQL
//! database behind a round-robin client walk the invitation runbook, share the sign-in
//! throttle and `Idempotency-Key` replies, and lose nothing when one is killed under load; a
//! node sent SIGTERM finishes its request in flight, refuses new connections and exits 0;
//! job leases go to one node at a time.

use crate::both;
use crate::data_plane_nodes::Node;
use crate::helpers::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Nodes behind a load balancer: every node has the same base URL (the host users see), and
/// each request goes to the next node, with that host in its `Host` header.
struct Cluster {
    nodes: Vec<Node>,
    /// `host:port` of the shared base URL.
    host: String,
    next: AtomicUsize,
}

impl Cluster {
    fn origin(&self) -> String {
        format!("http://{}", self.host)
    }

    /// The next node's index (round-robin).
    fn pick(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.nodes.len()
    }

    /// A request to node `i` for `path` on `host` (the base host or a tenant's).
    fn request(
        &self,
        c: &reqwest::Client,
        method: reqwest::Method,
        i: usize,
        host: &str,
        path: &str,
    ) -> reqwest::RequestBuilder {
        c.request(method, format!("{}{path}", self.nodes[i].url))
            .header("host", host)
    }

    async fn get_html(&self, c: &reqwest::Client, i: usize, host: &str, path: &str) -> String {
        let r = self
            .request(c, reqwest::Method::GET, i, host, path)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "GET {path} on node {i}");
        r.text().await.unwrap()
    }

    /// GET the form page on node `i`, POST it (with its CSRF token) on node `j`.
    async fn form(
        &self,
        c: &reqwest::Client,
        (i, j): (usize, usize),
        host: &str,
        page: &str,
        action: &str,
        fields: &[(&str, &str)],
    ) -> reqwest::Response {
        let html = self.get_html(c, i, host, page).await;
        let token = csrf_token(&html);
        let mut form: Vec<(&str, &str)> = vec![("csrf_token", token.as_str())];
        form.extend_from_slice(fields);
        self.request(c, reqwest::Method::POST, j, host, action)
            .header("origin", format!("http://{host}"))
            .form(&form)
            .send()
            .await
            .unwrap()
    }
}

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

// PostgreSQL only: SQLite is the single-node embedded engine (one `serve` per data directory,
// enforced by its lock file), so there is no cluster to test on it. Skipped only when
// QUARTERDECK_TEST_SKIP_PG=1; with QUARTERDECK_TEST_PG_URL set, every failure fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_walk_the_runbook_share_limits_and_lose_nothing_when_one_is_killed() {
    let Some(app) = TestApp::spawn_pg().await else { return };
    let maildev = crate::maildev::Maildev::start();
    app.core.bootstrap_owner(OWNER_EMAIL, OWNER_PASSWORD).await.unwrap();
    let smtp_port = maildev.smtp_port.to_string();
    let env = [
        ("QUARTERDECK_BASE_URL", app.base_url.as_str()),
        ("QUARTERDECK_EMAIL_TRANSPORT", "smtp"),
        ("QUARTERDECK_SMTP_HOST", "127.0.0.1"),
        ("QUARTERDECK_SMTP_PORT", smtp_port.as_str()),
        ("QUARTERDECK_SMTP_TLS", "none"),
        ("QUARTERDECK_EMAIL_FROM", "Quarterdeck <deck@example.com>"),
        ("QUARTERDECK_OUTBOX_POLL_MS", "50"),
    ];
    let (a, b, c) = tokio::join!(
        Node::start_with(&app, &env),
        Node::start_with(&app, &env),
        Node::start_with(&app, &env)
    );
    let host = app.base_url.trim_start_matches("http://").to_owned();
    let lb = Cluster {
        nodes: vec![a, b, c],
        host: host.clone(),
        next: AtomicUsize::new(0),
    };
    let (na, nb, nc) = (0, 1, 2);

    // The runbook: the owner signs in on A, creates a tenant on B, invites its admin on C.
    let owner = browser();
    let r = lb
        .form(
            &owner,
            (na, na),
            &host,
            "/login",
            "/login",
            &[("email", OWNER_EMAIL), ("password", OWNER_PASSWORD)],
        )
        .await;
    assert_eq!(r.status(), 303, "sign-in on A");
    let r = lb
        .form(
            &owner,
            (nb, nb),
            &host,
            "/tenants/new",
            "/tenants",
            &[
                ("name", "Acme"),
                ("slug", "acme"),
                ("region", "default"),
                ("tier", "standard"),
            ],
        )
        .await;
    assert_eq!(r.status(), 303, "tenant created on B: {}", r.text().await.unwrap());
    let tid = location(&r).split("created=").nth(1).unwrap().to_owned();
    let r = lb
        .form(
            &owner,
            (nc, nc),
            &host,
            "/users/new",
            "/users/new",
            &[("email", "admin@acme.example"), ("tenant_id", &tid), ("roles", "admin")],
        )
        .await;
    assert!(
        r.status().is_redirection() || r.status() == 200,
        "invited on C: {}",
        r.status()
    );
    let mail = maildev.wait_for_emails(1).await;
    let text = mail
        .iter()
        .find(|m| m["to"][0]["address"] == "admin@acme.example")
        .and_then(|m| m["text"].as_str())
        .unwrap_or_else(|| panic!("no invitation email: {mail:?}"))
        .to_owned();
    let link = link_in(&text);
    let path = &link[link.find("/register").unwrap()..];
    let token = path.split("token=").nth(1).unwrap().to_owned();
    // The admin registers on A with the emailed link, and signs in on B.
    let tenant_host = format!("acme.{host}");
    let admin = browser();
    let r = lb
        .form(
            &admin,
            (na, na),
            &tenant_host,
            path,
            "/register",
            &[
                ("token", &token),
                ("password", ADMIN_PASSWORD),
                ("confirm", ADMIN_PASSWORD),
            ],
        )
        .await;
    assert!(r.status().is_redirection(), "registered on A: {}", r.status());
    let r = lb
        .form(
            &admin,
            (nb, nb),
            &tenant_host,
            "/login",
            "/login",
            &[("email", "admin@acme.example"), ("password", ADMIN_PASSWORD)],
        )
        .await;
    assert_eq!(r.status(), 303, "the admin signs in on B");
    lb.get_html(&admin, nc, &tenant_host, "/portal").await;

    // The sign-in throttle is one for all nodes: six failures spread over them, then every
    // node holds the account back.
    let guesser = browser();
    for i in 0..6 {
        let r = lb
            .form(
                &guesser,
                (i % 3, i % 3),
                &host,
                "/login",
                "/login",
                &[("email", "victim@example.com"), ("password", "wrong")],
            )
            .await;
        assert!(![303, 429].contains(&r.status().as_u16()), "guess {i}: {}", r.status());
    }
    for i in 0..3 {
        let r = lb
            .form(
                &guesser,
                (i, i),
                &host,
                "/login",
                "/login",
                &[("email", "victim@example.com"), ("password", "wrong")],
            )
            .await;
        assert_eq!(r.status(), 429, "node {i} holds the throttled account back");
        assert!(r.headers().contains_key("retry-after"));
    }

    // An Idempotency-Key's reply is one for all nodes: B and C replay A's create.
    let api_token = {
        let html = lb.get_html(&owner, na, &host, "/settings/tokens").await;
        let t = csrf_token(&html);
        let r = lb
            .request(&owner, reqwest::Method::POST, nb, &host, "/settings/tokens")
            .header("origin", lb.origin())
            .form(&[
                ("csrf_token", t.as_str()),
                ("name", "ci"),
                ("scope", "read_write"),
                ("expires_in_days", "30"),
                ("tenant_id", ""),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let html = r.text().await.unwrap();
        html.split("id=\"new-token\">")
            .nth(1)
            .unwrap()
            .split('<')
            .next()
            .unwrap()
            .trim()
            .to_owned()
    };
    let api = reqwest::Client::new();
    let mut ids = BTreeSet::new();
    for i in 0..3 {
        let r = lb
            .request(&api, reqwest::Method::POST, i, &host, "/v1/admin/tenants")
            .bearer_auth(&api_token)
            .header("idempotency-key", "create-globex-1")
            .json(&json!({"name": "Globex", "region": "default"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "node {i}");
        assert_eq!(r.headers().contains_key("idempotent-replayed"), i > 0, "node {i}");
        ids.insert(r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1, "one tenant, whichever node answered");
    let globex = app
        .events_of("TENANT_CREATED")
        .await
        .into_iter()
        .filter(|e| e.details["name"] == "Globex")
        .count();
    assert_eq!(globex, 1, "created once");

    // Under load, one node killed: 200 invitations at once, spread over the nodes; C is
    // killed once 40 have been answered.
    const LOAD: usize = 200;
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let answered = Arc::new(AtomicUsize::new(0));
    let lb = Arc::new(lb);
    let mut load = Vec::new();
    for n in 0..LOAD {
        let (lb, api, acked, answered) = (lb.clone(), api.clone(), acked.clone(), answered.clone());
        let (api_token, tid, host) = (api_token.clone(), tid.clone(), host.clone());
        load.push(tokio::spawn(async move {
            let email = format!("u{n}@acme.example");
            let i = lb.pick();
            let r = lb
                .request(&api, reqwest::Method::POST, i, &host, "/v1/admin/users")
                .bearer_auth(&api_token)
                .json(&json!({"email": email, "roles": ["viewer"], "tenant_id": tid}))
                .timeout(Duration::from_secs(30))
                .send()
                .await;
            answered.fetch_add(1, Ordering::Relaxed);
            match r {
                Ok(r) if r.status() == 201 => acked.lock().unwrap().push(email),
                Ok(r) if r.status().is_server_error() => {}
                Ok(r) => panic!("invitation {n} on node {i}: {} {}", r.status(), r.text().await.unwrap()),
                // The killed node's requests: no answer, nothing acknowledged.
                Err(_) => {}
            }
        }));
    }
    poll_until("40 invitations answered", || async {
        answered.load(Ordering::Relaxed) >= 40
    })
    .await;
    lb.nodes[nc].signal("KILL");
    let killed_at = app.control_value("SELECT extract(epoch FROM now())::text").await;
    for t in load {
        t.await.unwrap();
    }
    let acked: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();
    assert!(acked.len() >= 40, "the survivors kept answering: {}", acked.len());

    // Every acknowledged invitation is in the tenant's database with its event; none twice.
    let tenant: quarterdeck_domain::TenantId = tid.parse().unwrap();
    let dir = quarterdeck_domain::user::Directory::Tenant(tenant);
    let mut per_email: BTreeMap<String, usize> = BTreeMap::new();
    for e in app.events_of("USER_INVITED").await {
        *per_email
            .entry(e.details["email"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    let mut found = 0;
    for email in &acked {
        let parsed = quarterdeck_domain::EmailAddress::parse(email).unwrap();
        let user = app.core.store().user_by_email(dir, &parsed).await.unwrap();
        if user.is_some() && per_email.get(email).copied().unwrap_or(0) >= 1 {
            found += 1;
        }
    }
    let duplicated = per_email.values().filter(|n| **n > 1).count();
    let committed_unanswered = per_email
        .keys()
        .filter(|e| e.starts_with('u') && !acked.contains(*e))
        .count();

    // Email: the outbox delivers at least once. Wait until the survivors have sent everything
    // but what the killed node had claimed (it waits for its 5-minute lease); a message it
    // had handed to SMTP but not yet marked sent when it died is in maildev already.
    // A lease runs 5 minutes from its claim: the killed node's claims end by its death + 5 min,
    // every claim after that later.
    let dead_lease = format!("leased_until IS NOT NULL AND extract(epoch FROM leased_until) <= {killed_at} + 300");
    let load_pending = "FROM outbox WHERE status = 'pending' AND to_addr LIKE 'u%@acme.example'";
    let held_sql = format!("SELECT count(*)::text {load_pending} AND {dead_lease}");
    let other_sql = format!("SELECT count(*)::text {load_pending} AND NOT ({dead_lease})");
    let left_sql = format!("SELECT count(*)::text {load_pending}");
    let sent_sql = "SELECT count(*)::text FROM outbox WHERE status = 'sent' AND to_addr LIKE 'u%@acme.example'";
    let per_recipient = |emails: &[Value]| {
        let mut n: BTreeMap<String, usize> = BTreeMap::new();
        for m in emails {
            let to = m["to"][0]["address"].as_str().unwrap_or_default();
            if to.starts_with('u') {
                *n.entry(to.to_owned()).or_default() += 1;
            }
        }
        n
    };
    // Until nothing is left but the killed node's claims, and those stop changing: `held` also
    // counts a survivor's claim from before the kill while it is being sent (sent within
    // moments), so held and sent must read the same three times, a second apart.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last: Option<(String, usize)> = None;
    let mut same = 0;
    let held: usize = loop {
        let (other, held, sent) = (
            app.control_value(&other_sql).await,
            app.control_value(&held_sql).await,
            app.control_value(sent_sql).await.parse::<usize>().unwrap(),
        );
        let delivered: usize = per_recipient(&maildev.emails().await).values().sum();
        let now = (held.clone(), sent);
        same = if last.as_ref() == Some(&now) { same + 1 } else { 0 };
        if other == "0" && same >= 2 && delivered >= sent {
            break held.parse().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the survivors did not send what they could: {other} pending, {held} held by the killed node, {sent} sent, {delivered} in maildev"
        );
        last = Some(now);
        tokio::time::sleep(Duration::from_millis(1000)).await;
    };
    let sent_by_survivors: usize = app.control_value(sent_sql).await.parse().unwrap();
    // What the killed node sent but never marked: delivered, and still pending.
    let before_lapse = per_recipient(&maildev.emails().await);
    let mut unmarked = BTreeSet::new();
    for to in before_lapse.keys() {
        let status = app
            .control_value(&format!("SELECT status FROM outbox WHERE to_addr = '{to}'"))
            .await;
        if status == "pending" {
            unmarked.insert(to.clone());
        }
    }
    // Five minutes later (its lease lapsed, as if the clock had moved), a survivor sends them.
    app.control_exec(&format!(
        "UPDATE outbox SET leased_until = now() WHERE status = 'pending' AND {dead_lease}"
    ))
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let sent = loop {
        let (left, sent) = (
            app.control_value(&left_sql).await,
            app.control_value(sent_sql).await.parse::<usize>().unwrap(),
        );
        let delivered: usize = per_recipient(&maildev.emails().await).values().sum();
        if left == "0" && delivered >= sent {
            break sent;
        }
        assert!(
            Instant::now() < deadline,
            "the lapsed claims were not sent: {left} left, {sent} sent"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let after = per_recipient(&maildev.emails().await);
    let twice: BTreeSet<String> = after
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(to, _)| to.clone())
        .collect();
    let thrice = after.values().filter(|n| **n > 2).count();
    // A copy sent again is the same message: both carry the outbox message's Message-ID, so
    // the recipient's mail system shows one (and Resend, keyed by it, sends none twice).
    let emails = maildev.emails().await;
    for to in &twice {
        let ids: BTreeSet<&str> = emails
            .iter()
            .filter(|e| e["to"][0]["address"].as_str() == Some(to.as_str()))
            .filter_map(|e| e["headers"]["message-id"].as_str())
            .collect();
        assert_eq!(ids.len(), 1, "the copies to {to} are one message: {ids:?}");
    }

    eprintln!(
        "nodes kill test (postgres): acknowledged {}, found {found}, duplicated {duplicated}, committed but unanswered {committed_unanswered}; \
         emails: {sent_by_survivors} sent before the killed node's lease lapsed, {held} held by it ({} of them sent by it but not marked), \
         {sent} sent in the end, {} recipients got one twice",
        acked.len(),
        unmarked.len(),
        twice.len()
    );
    assert_eq!(
        found,
        acked.len(),
        "every acknowledged invitation is there with its event"
    );
    assert_eq!(duplicated, 0, "no invitation twice");
    assert_eq!(
        sent,
        per_email.len() - 1,
        "every invitation's email sent (the admin's aside)"
    );
    // At least once: the only emails sent twice are those the killed node handed to SMTP but
    // could not mark sent before it died (at most its claimed batch), and none thrice.
    assert!(
        twice.is_subset(&unmarked),
        "sent twice: {twice:?}; sent by the killed node unmarked: {unmarked:?}"
    );
    assert!(unmarked.len() <= held && held <= 10, "{unmarked:?} of {held}");
    assert_eq!(thrice, 0);

    // Sessions and API tokens still work on the survivors.
    for i in [na, nb] {
        let r = lb
            .request(&owner, reqwest::Method::GET, i, &host, "/")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "the owner's session on node {i}");
        let r = lb
            .request(&admin, reqwest::Method::GET, i, &tenant_host, "/portal")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "the admin's session on node {i}");
        let r = lb
            .request(&api, reqwest::Method::GET, i, &host, "/v1/admin/tenants")
            .bearer_auth(&api_token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "the API token on node {i}");
    }
}

both!(
    async fn sigterm_lets_the_request_in_flight_finish_refuses_new_connections_and_exits_zero(app) {
        let mut node = Node::start_with(
            &app,
            &[("QUARTERDECK_LOG", "warn,tower_http=debug"), ("QUARTERDECK_SHUTDOWN_GRACE_SECONDS", "5")],
        )
        .await;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], node.port));
        let started = |log: &str| log.matches("started processing request").count();
        let before = started(&node.log());
        // A slow request: its head and half its body now, the rest after the signal.
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\n\r\nab")
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while started(&node.log()) <= before {
            assert!(Instant::now() < deadline, "the slow request never started; log:\n{}", node.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        node.signal("TERM");
        let signalled = Instant::now();
        poll_until("new connections to be refused", || async {
            tokio::net::TcpStream::connect(addr).await.is_err()
        })
        .await;
        slow.write_all(b"cd").await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(10), slow.read_to_string(&mut answer))
            .await
            .expect("the answer, then the connection closed")
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let status = node.exited_within(Duration::from_secs(5)).await;
        assert_eq!(status.code(), Some(0), "exit status; log:\n{}", node.log());
        assert!(signalled.elapsed() < Duration::from_secs(5), "{:?}", signalled.elapsed());
    }
);

both!(
    async fn a_job_lease_goes_to_one_node_at_a_time_and_comes_back_when_released_or_lapsed(app) {
        let hour = time::Duration::hours(1);
        assert!(app.core.claim_job("test-job", "node-a", hour).await.unwrap());
        assert!(!app.core.claim_job("test-job", "node-b", hour).await.unwrap(), "held by A");
        assert!(!app.core.claim_job("test-job", "node-a", hour).await.unwrap(), "not even A twice in a period");
        assert!(!app.core.hold_job_until("test-job", "node-b", app.clock_now() + hour).await.unwrap(), "only its holder extends it");
        app.core.release_job("test-job", "node-b").await.unwrap();
        assert!(!app.core.claim_job("test-job", "node-b", hour).await.unwrap(), "B cannot release A's lease");
        app.core.release_job("test-job", "node-a").await.unwrap();
        assert!(app.core.claim_job("test-job", "node-b", time::Duration::minutes(10)).await.unwrap(), "released: B takes it");
        app.clock.advance(time::Duration::minutes(11));
        assert!(app.core.claim_job("test-job", "node-c", hour).await.unwrap(), "a dead node's lease lapses");
        assert_eq!(
            app.control_value("SELECT holder FROM job_lease WHERE name = 'test-job'").await,
            "node-c"
        );
    }
);

both!(
    async fn an_idempotency_key_held_by_a_node_that_died_is_free_after_its_reservation(app) {
        use quarterdeck_domain::core::IdempotencyStart;
        use quarterdeck_domain::store::KeptReply;
        let run = Duration::from_secs(60);
        let IdempotencyStart::Run(dead) = app.core.start_idempotent("tok", "k1", "POST /x", run).await.unwrap() else {
            panic!("a new key is reserved")
        };
        assert!(matches!(
            app.core.start_idempotent("tok", "k1", "POST /x", run).await.unwrap(),
            IdempotencyStart::Running { .. }
        ));
        // Its node died: nothing keeps or releases the key; past the reservation it is free.
        app.clock.advance(time::Duration::seconds(61));
        let IdempotencyStart::Run(live) = app.core.start_idempotent("tok", "k1", "POST /x", run).await.unwrap() else {
            panic!("a lapsed reservation is taken over")
        };
        let reply = KeptReply {
            request: "POST /x".into(),
            status: 201,
            content_type: Some("application/json".into()),
            body: br#"{"id":"t1"}"#.to_vec(),
            redacted: vec!["secret".into()],
        };
        // The dead holder can no longer keep anything; the live one's reply is replayed.
        app.core.keep_idempotent("tok", "k1", dead, &KeptReply { status: 500, ..reply.clone() }).await.unwrap();
        app.core.keep_idempotent("tok", "k1", live, &reply).await.unwrap();
        match app.core.start_idempotent("tok", "k1", "POST /x", run).await.unwrap() {
            IdempotencyStart::Replay(kept) => assert_eq!(kept, reply),
            other => panic!("{other:?}"),
        }
        // Kept 24 hours, then deleted by housekeeping. The server's own housekeeping (its
        // start-up run may still be going) can delete it first: the table is what counts.
        app.core.prune_limits().await.unwrap();
        assert_eq!(app.control_rows("api_idempotency").await, 1, "kept before its 24 hours");
        app.clock.advance(time::Duration::hours(24));
        app.core.prune_limits().await.unwrap();
        assert_eq!(app.control_rows("api_idempotency").await, 0);
    }
);

both!(
    async fn a_job_that_runs_past_its_lease_renews_it_so_no_second_node_starts(app) {
        let lease = time::Duration::minutes(10);
        assert!(app.core.claim_job("long-job", "node-a", lease).await.unwrap());
        // The lease's end in unix µs, read from the row itself.
        let lease_until = || async {
            let sql = if app.pg_url.is_some() {
                "SELECT CAST(CAST(extract(epoch FROM until) * 1000000 AS bigint) AS text) FROM job_lease WHERE name = 'long-job'"
            } else {
                "SELECT CAST(until AS TEXT) FROM job_lease WHERE name = 'long-job'"
            };
            app.control_value(sql).await.parse::<i128>().unwrap()
        };
        let micros = |t: time::OffsetDateTime| t.unix_timestamp_nanos() / 1000;
        let run = async {
            // A run of 20 minutes by the clock: twice its lease.
            for _ in 0..4 {
                app.clock.advance(time::Duration::minutes(5));
                let want = micros(app.clock_now() + time::Duration::minutes(9));
                poll_until("the running job's lease to be renewed", || async { lease_until().await >= want }).await;
                assert!(
                    !app.core.claim_job("long-job", "node-b", lease).await.unwrap(),
                    "another node starts a job that is still running"
                );
            }
        };
        quarterdeck::app::run_under_lease(&app.core, "long-job", "node-a", lease, Duration::from_millis(50), run).await;
        assert_eq!(
            app.control_value("SELECT holder FROM job_lease WHERE name = 'long-job'").await,
            "node-a"
        );
    }
);

crate::both_backends!(
    async fn a_service_tokens_usage_budget_spent_on_one_node_is_refused_on_the_other(backend) {
        use crate::usage::{BATCH, send, tokens};
        let app = TestApp::spawn_with(backend, |s| s.usage_events_per_second = 10).await;
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let token = crate::data_plane::service_token(&app, &["usage:write"], "").await;
        // Node B spends the token's whole burst (twice the rate) and flushes its count.
        let b = app.second_core(|s| s.usage_events_per_second = 10).await;
        let caller = b.authenticate_service(&token).await.unwrap();
        let burst: Vec<Value> = (0..20).map(|i| tokens(&format!("b{i}"), &tid, 1, "m")).collect();
        let report = b
            .ingest_usage(&caller, Value::from(burst).to_string().as_bytes(), Some(BATCH))
            .await
            .unwrap();
        assert_eq!(report.accepted, 20);
        b.flush_limit_counts().await.unwrap();
        let id = caller.token.id.to_string();
        let row = format!(
            "SELECT CAST(hits AS TEXT) FROM limit_count WHERE counter = 'usage_events' AND key = '{id}'"
        );
        assert_eq!(app.control_value(&row).await, "20", "one row per token and window, its id as the key");

        // Node A (the app's server) refuses the next event: one budget for the cluster.
        let r = app
            .client
            .post(app.url("/v1/data-plane/usage"))
            .bearer_auth(&token)
            .header("content-type", BATCH)
            .body(json!([tokens("a0", &tid, 1, "m")]).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 429);
        let retry: i64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=3).contains(&retry), "the burst slides out of the 2-second window: {retry}");
        assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "rate_limited");
        // And B itself, having flushed, refuses more too.
        let over = json!([tokens("b-over", &tid, 1, "m")]).to_string();
        assert!(matches!(
            b.ingest_usage(&caller, over.as_bytes(), Some(BATCH)).await,
            Err(quarterdeck_domain::Error::RateLimited { .. })
        ));

        // After Retry-After the event is taken, on A; A's flush adds it to the new window's row.
        app.clock.advance(time::Duration::seconds(retry));
        let (status, body) = send(&app, &token, &json!([tokens("a1", &tid, 1, "m")])).await;
        assert_eq!((status, body["accepted"].as_u64()), (200, Some(1)), "{body}");
        poll_until("node A's count to be flushed", || async {
            app.control_value(&format!(
                "SELECT CAST(coalesce(sum(hits), 0) AS TEXT) FROM limit_count WHERE counter = 'usage_events' AND key = '{id}'"
            ))
            .await
                == "21"
        })
        .await;
        // Housekeeping deletes windows nobody's judgement reads any more.
        app.clock.advance(time::Duration::seconds(10));
        app.core.prune_limits().await.unwrap();
        assert_eq!(app.control_rows("limit_count").await, 0);
    }
);
