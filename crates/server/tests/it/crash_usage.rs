//! Usage under SIGKILL (issue 14, with issue 12's ingestion): a server killed at a random point
//! of 1,000 usage batches loses no acknowledged event, and after the restart and a client that
//! sends every batch again, each event is counted exactly once, raw and in the rollups.

use crate::both_backends;
use crate::crash::{Data, count};
use crate::data_plane_nodes::Node;
use crate::helpers::*;
use crate::usage::{BATCH, tokens};
use quarterdeck_domain::core::SWEEP_LEASE;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

const BATCHES: usize = 1000;
const PER_BATCH: usize = 10;
const TENANTS: usize = 5;
const IN_FLIGHT: usize = 20;

/// Batch `i`: its events' ids, each event's tenant (round-robin) and its tokens.
fn batch(i: usize, tenants: &[String]) -> (Vec<String>, serde_json::Value) {
    let mut ids = Vec::with_capacity(PER_BATCH);
    let mut events = Vec::with_capacity(PER_BATCH);
    for j in 0..PER_BATCH {
        let id = format!("b{i}-{j}");
        events.push(tokens(
            &id,
            &tenants[(i * PER_BATCH + j) % TENANTS],
            tokens_of(j),
            "gpt-4o",
        ));
        ids.push(id);
    }
    (ids, serde_json::Value::from(events))
}

fn tokens_of(j: usize) -> i64 {
    100 + j as i64
}

/// What [`send_all`] saw: the ids of the acknowledged batches' events, and how many batches
/// were answered (acknowledged, or refused with 503 by a server under load).
struct Sent {
    acked: Vec<String>,
    answered: usize,
}

/// Send the batches with at most IN_FLIGHT at once. `kill_after`: once that many batches are
/// answered (200 or 503: counting only 200s, a loaded run could send every batch before the
/// chosen count and wait for the time cap), it returns, the rest still in flight, for the
/// caller to kill the server.
async fn send_all(url: &str, token: &str, tenants: &[String], kill_after: Option<usize>) -> Sent {
    let client = reqwest::Client::new();
    let acked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (killed_tx, killed_rx) = tokio::sync::watch::channel(false);
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..BATCHES {
        let permit = slots.clone().acquire_owned().await.unwrap();
        if *killed_rx.borrow() {
            break;
        }
        let (ids, body) = batch(i, tenants);
        let (client, url, token, acked, answered, killed_tx) = (
            client.clone(),
            url.to_owned(),
            token.to_owned(),
            acked.clone(),
            answered.clone(),
            killed_tx.clone(),
        );
        requests.spawn(async move {
            let _permit = permit;
            // Sending again (no kill coming), a batch refused with 503 (`usage_backlog` while
            // the sweep catches up) is sent again after its Retry-After, as a client would.
            let deadline = Instant::now() + Duration::from_secs(60);
            let (status, report) = loop {
                let r = client
                    .post(format!("{url}/v1/data-plane/usage"))
                    .bearer_auth(&token)
                    .header("content-type", BATCH)
                    .body(body.to_string())
                    .send()
                    .await;
                let Ok(r) = r else { return };
                let status = r.status();
                let retry = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                // Cut off mid-answer by the kill: not acknowledged.
                let Ok(report) = r.json::<serde_json::Value>().await else {
                    return;
                };
                match retry {
                    Some(secs) if status == 503 && kill_after.is_none() && Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_secs(secs.clamp(1, 5))).await;
                    }
                    _ => break (status, report),
                }
            };
            if status == 200 {
                assert_eq!(report["rejected"], serde_json::json!([]), "batch {i}: {report}");
                acked.lock().unwrap().extend(ids);
            } else {
                assert_eq!(status, 503, "batch {i}: {report}");
            }
            let n = answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            if Some(n) == kill_after {
                let _ = killed_tx.send(true);
            }
        });
    }
    if kill_after.is_some() {
        // The kill comes from the caller: wait for the chosen answer, then hand over.
        let mut rx = killed_rx.clone();
        if !*rx.borrow_and_update() {
            let _ = tokio::time::timeout(Duration::from_secs(120), rx.changed()).await;
        }
        let acked_now = acked.clone();
        tokio::spawn(async move {
            while requests.join_next().await.is_some() {}
            drop(acked_now);
        });
    } else {
        while requests.join_next().await.is_some() {}
    }
    let acked = acked.lock().unwrap().clone();
    Sent {
        acked,
        answered: answered.load(std::sync::atomic::Ordering::SeqCst),
    }
}

/// Every tenant's raw event ids.
async fn raw_ids(data: &Data, tenants: &[String]) -> HashSet<String> {
    let mut all = HashSet::new();
    for t in tenants {
        all.extend(data.tenant(t, "SELECT event_id FROM usage_event").await);
    }
    all
}

both_backends!(
    async fn a_server_killed_with_sigkill_under_1000_usage_batches_loses_no_acknowledged_event_and_counts_each_once(backend) {
        let test_started = Instant::now();
        let (dir, data) = Data::fresh(backend).await;
        let pg_url = data.pg_url.clone();
        let env = [
            ("QUARTERDECK_BOOTSTRAP_OWNER_EMAIL", OWNER_EMAIL),
            ("QUARTERDECK_BOOTSTRAP_OWNER_PASSWORD", OWNER_PASSWORD),
            ("QUARTERDECK_DATABASE_MAX_CONNECTIONS", "10"),
        ];
        let mut node = Node::start_on(dir.path(), pg_url.as_deref(), &env).await;
        let base = node.url.replace("127.0.0.1", "localhost");
        let token = |args: &[&str]| {
            let (ok, out) = data.cli(args);
            assert!(ok, "{out}");
            out.split_whitespace()
                .find(|w| w.starts_with("qd_"))
                .unwrap_or_else(|| panic!("no token in {out}"))
                .to_owned()
        };
        let admin = token(&["tokens", "create", "--email", OWNER_EMAIL, "--name", "setup", "--scope", "read_write", "--days", "1"]);
        let usage = token(&["service-tokens", "create", "--name", "gateway", "--scope", "usage:write"]);
        let client = reqwest::Client::new();
        let mut tenants = Vec::new();
        for i in 0..TENANTS {
            let r = client
                .post(format!("{base}/v1/admin/tenants"))
                .bearer_auth(&admin)
                .json(&serde_json::json!({"name": format!("Load {i}"), "slug": format!("load{i}")}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            tenants.push(r.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_owned());
        }

        // Killed at a random point: after some hundreds of acknowledged batches, plus a random
        // part of a batch's time, with others still in flight.
        let kill_after = 100 + (uuid::Uuid::new_v4().as_u128() % 600) as usize;
        let started = Instant::now();
        let Sent { acked, answered } = send_all(&base, &usage, &tenants, Some(kill_after)).await;
        let jitter = Duration::from_micros((uuid::Uuid::new_v4().as_u128() % 20_000) as u64);
        tokio::time::sleep(jitter).await;
        node.kill();
        let acked: HashSet<String> = acked.into_iter().collect();
        eprintln!(
            "[{backend:?}] killed after {answered} answered batches, {} acknowledged usage events ({:?} of load)",
            acked.len(),
            started.elapsed()
        );

        // Restarted: the journal left by the kill is swept; every acknowledged event arrives.
        // On SQLite the restarted server is the only one there can be, and takes the killed
        // one's sweep lease back at once; on PostgreSQL, where other nodes may live, it waits
        // for that lease to lapse: at most SWEEP_LEASE after the kill (the killed node renewed
        // it last at most then), so within SWEEP_LEASE of the restart, plus the drain.
        let killed = Instant::now();
        let node = Node::start_on(dir.path(), pg_url.as_deref(), &env).await;
        let restarted = Instant::now();
        let lease = Duration::try_from(SWEEP_LEASE).unwrap();
        let within = match backend {
            Backend::Sqlite => Duration::from_secs(10),
            Backend::Postgres => lease + Duration::from_secs(5),
        };
        let deadline = restarted + within;
        let found = loop {
            let found = raw_ids(&data, &tenants).await;
            if acked.iter().all(|id| found.contains(id)) || Instant::now() > deadline {
                break found;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let lost = acked.iter().filter(|id| !found.contains(*id)).count();
        let recovered_in = restarted.elapsed();
        eprintln!(
            "[{backend:?}] restarted {:?} after the kill; every acknowledged event swept {recovered_in:?} after the restart \
             ({:?} after the kill; sweep lease {lease:?})",
            restarted - killed,
            killed.elapsed()
        );
        assert!(
            recovered_in <= within,
            "the restarted node took the sweep over and drained it {recovered_in:?} after the restart (bound {within:?}); node log:\n{}",
            node.log()
        );

        // The client sends every batch again (it cannot know what the kill cut off): each
        // event counted once, raw and in the rollups.
        let base = node.url.replace("127.0.0.1", "localhost");
        let resent = send_all(&base, &usage, &tenants, None).await.acked;
        assert_eq!(resent.len(), BATCHES * PER_BATCH, "every batch accepted on the restarted node");
        let deadline = Instant::now() + Duration::from_secs(30);
        while raw_ids(&data, &tenants).await.len() < BATCHES * PER_BATCH {
            assert!(Instant::now() < deadline, "not every event swept; node log:\n{}", node.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut duplicated = 0i64;
        let mut raw_total = 0i64;
        for (n, t) in tenants.iter().enumerate() {
            let raw = count(&data.tenant(t, "SELECT CAST(count(*) AS TEXT) FROM usage_event").await);
            let rolled = count(&data.tenant(t, "SELECT CAST(COALESCE(SUM(events), 0) AS TEXT) FROM usage_rollup").await);
            let value = count(&data.tenant(t, "SELECT CAST(COALESCE(SUM(value), 0) AS TEXT) FROM usage_rollup").await);
            let want: i64 = (0..BATCHES * PER_BATCH)
                .filter(|k| k % TENANTS == n)
                .map(|k| tokens_of(k % PER_BATCH))
                .sum();
            duplicated += (rolled - raw).abs() + i64::from(value != want);
            raw_total += raw;
        }
        // Stopped gracefully, the node gives the sweep's lease back: another node would sweep
        // at once, not a lease later.
        let held = "SELECT CAST(count(*) AS TEXT) FROM usage_journal_state WHERE holder IS NOT NULL";
        assert_eq!(count(&data.journal(held).await), 1, "the sweeping node holds the lease");
        let mut node = node;
        node.signal("TERM");
        assert!(node.exited_within(Duration::from_secs(20)).await.success(), "{}", node.log());
        assert_eq!(count(&data.journal(held).await), 0, "the lease given back at shutdown; node log:\n{}", node.log());
        drop(node);
        let (intact, verify) = data.cli(&["audit", "verify"]);
        eprintln!(
            "[{backend:?}] usage kill test: acknowledged {} events, found {} of them {recovered_in:?} after the restart, lost {lost}; \
             after every batch was sent again: {raw_total} raw events (of {} unique), duplicated {duplicated}; audit verify: {}",
            acked.len(),
            acked.iter().filter(|id| found.contains(*id)).count(),
            BATCHES * PER_BATCH,
            verify.trim()
        );
        assert!(answered >= kill_after, "killed by the time cap after {answered} answered batches, not after {kill_after}");
        assert!(!acked.is_empty(), "every one of {answered} answered batches was a 503: nothing to check");
        assert_eq!(lost, 0);
        assert_eq!(raw_total, (BATCHES * PER_BATCH) as i64);
        assert_eq!(duplicated, 0);
        assert!(intact, "{verify}");
        eprintln!("[{backend:?}] usage kill test took {:?}", test_started.elapsed());
    }
);
