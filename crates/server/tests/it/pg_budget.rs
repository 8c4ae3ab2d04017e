//! PostgreSQL with its default connection limit (issue 10, section 2): whatever the number of
//! tenants, Quarterdeck keeps to its connection budget (`database_max_connections`, which the
//! harness sets to [`TEST_DB_BUDGET`] for every test app). PostgreSQL only; scripts/test runs the
//! cluster with PostgreSQL's default `max_connections = 100`.

use crate::helpers::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

/// Tenants created (one after another) and then visited. Tenant creation dominates the run.
const TENANTS: usize = 1000;
/// Concurrent clients in the last pass.
const CLIENTS: usize = 8;

/// Samples how many connections Quarterdeck has open to this test's databases (the control
/// database and its tenants', by application_name), every few milliseconds, keeping the most.
struct Sampler {
    max: Arc<AtomicI64>,
    samples: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    async fn start(control_url: &str) -> Self {
        let control_db = url::Url::parse(control_url)
            .unwrap()
            .path()
            .trim_start_matches('/')
            .to_owned();
        // The test's own connection is to the admin database, under another application name.
        let mut conn = pg_conn(&pg_admin_url().unwrap()).await;
        let max = Arc::new(AtomicI64::new(0));
        let samples = Arc::new(AtomicI64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, n, s) = (max.clone(), samples.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                let open: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'quarterdeck' \
                     AND (datname = $1 OR starts_with(datname, $1 || '_t_'))",
                )
                .bind(&control_db)
                .fetch_one(&mut conn)
                .await
                .unwrap();
                m.fetch_max(open, Ordering::Relaxed);
                n.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Self {
            max,
            samples,
            stop,
            task,
        }
    }

    fn max(&self) -> i64 {
        self.max.load(Ordering::Relaxed)
    }

    async fn finish(self) -> (i64, i64) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        (self.max.load(Ordering::Relaxed), self.samples.load(Ordering::Relaxed))
    }
}

/// One client that can reach every tenant's host (`t-{i}.localhost`).
fn tenants_client(port: u16) -> reqwest::Client {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut b = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
    for i in 0..TENANTS {
        b = b.resolve(&format!("t-{i}.localhost"), addr);
    }
    b.build().unwrap()
}

/// A request on tenant `i`'s host that needs its database: a registration link (unknown token:
/// the tenant's invitations are looked up, and the answer is 410). Each tenant's requests come
/// from their own address (through the trusted proxy), so the per-address guessing limit stays
/// out of the way.
async fn visit(client: &reqwest::Client, port: u16, i: usize, pass: u8) -> u16 {
    let url = format!("http://t-{i}.localhost:{port}/register?token=qd_inv_not_a_real_token");
    let r = client
        .get(url)
        .header("x-forwarded-for", format!("10.{}.{}.{pass}", i / 256, i % 256))
        .send()
        .await
        .unwrap();
    r.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_tenants_stay_within_the_connection_budget_on_a_default_postgresql() {
    if pg_admin_url().is_none() {
        return;
    }
    let app = TestApp::spawn_with(Backend::Postgres, |s| {
        s.trusted_proxies = vec!["127.0.0.1".to_owned()];
    })
    .await;
    let budget = i64::from(TEST_DB_BUDGET);
    let sampler = Sampler::start(app.pg_url.as_deref().unwrap()).await;
    app.sign_in_owner().await;

    // 1. Tenants, one after another: every creation answers 303 (the helper asserts it).
    let started = Instant::now();
    for i in 0..TENANTS {
        app.create_tenant(&format!("Tenant {i}"), &format!("t-{i}")).await;
        assert!(
            sampler.max() <= budget,
            "after tenant {i}: {} connections open, budget {budget}",
            sampler.max()
        );
    }
    let created = started.elapsed();

    // 2. A request to each tenant's host in turn.
    let port = app.port();
    let client = tenants_client(port);
    let started = Instant::now();
    for i in 0..TENANTS {
        let status = visit(&client, port, i, 1).await;
        assert_eq!(status, 410, "tenant {i}, in turn");
    }
    let in_turn = started.elapsed();

    // 3. The same from 8 concurrent clients.
    let started = Instant::now();
    let mut clients = Vec::new();
    for k in 0..CLIENTS {
        let client = client.clone();
        clients.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for i in (k..TENANTS).step_by(CLIENTS) {
                statuses.push((i, visit(&client, port, i, 2).await));
            }
            statuses
        }));
    }
    for c in clients {
        for (i, status) in c.await.unwrap() {
            assert_eq!(status, 410, "tenant {i}, concurrently");
        }
    }
    let concurrent = started.elapsed();

    let (max, samples) = sampler.finish().await;
    eprintln!(
        "pg_budget: {TENANTS} tenants created in {created:?}, visited in turn in {in_turn:?}, \
         by {CLIENTS} clients in {concurrent:?}; at most {max} connections open ({samples} samples, budget {budget})"
    );
    assert!(samples > 100, "the sampler ran ({samples} samples)");
    assert!(max > 1, "the sampler saw Quarterdeck's connections ({max})");
    assert!(max <= budget, "{max} connections open at once; the budget is {budget}");
}
