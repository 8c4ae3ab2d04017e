//! A `serve` process stopped with SIGTERM while a webhook attempt is in flight: the attempt
//! finishes within the shutdown grace and is recorded once; one that outlasts the grace is cut
//! off and its lease given back, so it is due again at once rather than when the lease lapses.

use crate::crash::Data;
use crate::data_plane_nodes::Node;
use crate::helpers::*;
use crate::webhook_receiver::{Answer, Receiver, Rule};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A node on fresh data, sending webhooks to loopback, stopped within `grace` seconds.
async fn node(data: &Data, grace: &str) -> Node {
    let env = [
        ("QUARTERDECK_BOOTSTRAP_OWNER_EMAIL", OWNER_EMAIL),
        ("QUARTERDECK_BOOTSTRAP_OWNER_PASSWORD", OWNER_PASSWORD),
        ("QUARTERDECK_OUTBOUND_ALLOW_PRIVATE", "127.0.0.0/8"),
        ("QUARTERDECK_SHUTDOWN_GRACE_SECONDS", grace),
    ];
    Node::start_on(&data.dir, data.pg_url.as_deref(), &env).await
}

/// An owner's API token on `data` (from the CLI).
fn token(data: &Data) -> String {
    let (ok, out) = data.cli(&[
        "tokens",
        "create",
        "--email",
        OWNER_EMAIL,
        "--name",
        "hooks",
        "--scope",
        "read_write",
        "--days",
        "1",
    ]);
    assert!(ok, "{out}");
    out.split_whitespace()
        .find(|w| w.starts_with("qd_"))
        .unwrap_or_else(|| panic!("no token in {out}"))
        .to_owned()
}

/// Through the node's API: an endpoint at the receiver's hook `name` (for `tenant.*`), then a
/// tenant, whose `tenant.created` is the one delivery. Returns the delivery's `seq`.
async fn one_delivery(node: &Node, data: &Data, rx: &Receiver, name: &str) -> String {
    let base = node.url.replace("127.0.0.1", "localhost");
    let (client, token) = (reqwest::Client::new(), token(data));
    let r = client
        .post(format!("{base}/v1/admin/webhooks"))
        .bearer_auth(&token)
        .json(&json!({ "url": rx.url(name), "event_types": ["tenant.*"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let made: Value = r.json().await.unwrap();
    rx.set_secrets(name, &[made["secret"].as_str().unwrap()]).await;
    let r = client
        .post(format!("{base}/v1/admin/tenants"))
        .bearer_auth(&token)
        .json(&json!({ "name": "Acme", "slug": "acme" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let rows = data.control("SELECT CAST(seq AS TEXT) FROM webhook_delivery").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    rows[0].clone()
}

/// The delivery's status, attempts and whether it is leased, as one text.
async fn state(data: &Data, id: &str) -> String {
    let rows = data
        .control(&format!(
            "SELECT status || ' ' || CAST(attempts AS TEXT) || ' ' || \
             CASE WHEN lease_token IS NULL THEN 'free' ELSE 'leased' END \
             FROM webhook_delivery WHERE seq = {id}"
        ))
        .await;
    rows.first().cloned().unwrap_or_default()
}

crate::both_backends!(
    async fn a_webhook_attempt_in_flight_at_sigterm_finishes_and_is_recorded_once_before_the_node_exits(backend) {
        let (_dir, data) = Data::fresh(backend).await;
        let rx = Receiver::start().await;
        // Answered 3 s after it arrives: the node is told to stop meanwhile.
        rx.script("slow", &[Rule::always(Answer::Slow(200, 3_000))]).await;
        let mut node = node(&data, "20").await;
        let delivery = one_delivery(&node, &data, &rx, "slow").await;
        rx.wait_for("slow", 1, Duration::from_secs(20)).await;
        let signalled = Instant::now();
        node.signal("TERM");
        let status = node.exited_within(Duration::from_secs(20)).await;
        assert!(status.success(), "{status:?}; log:\n{}", node.log());
        assert!(
            signalled.elapsed() >= Duration::from_secs(1),
            "the node exited {:?} after SIGTERM, before the receiver could answer",
            signalled.elapsed()
        );
        assert_eq!(state(&data, &delivery).await, "delivered 1 free");
        assert_eq!(rx.deliveries("slow").await.len(), 1, "sent once");
    }
);

crate::both_backends!(
    async fn a_webhook_attempt_outlasting_the_shutdown_grace_is_cut_off_and_its_lease_given_back(backend) {
        let (_dir, data) = Data::fresh(backend).await;
        let rx = Receiver::start().await;
        rx.script("hang", &[Rule::always(Answer::Hang)]).await;
        let mut node = node(&data, "1").await;
        let delivery = one_delivery(&node, &data, &rx, "hang").await;
        rx.wait_for("hang", 1, Duration::from_secs(20)).await;
        assert_eq!(state(&data, &delivery).await, "pending 0 leased");
        node.signal("TERM");
        // The grace (1 s), not the attempt's own 10 s limit, bounds the stop.
        let status = node.exited_within(Duration::from_secs(8)).await;
        assert!(status.success(), "{status:?}; log:\n{}", node.log());
        assert_eq!(
            state(&data, &delivery).await,
            "pending 0 free",
            "not recorded as an attempt, and due again at once; log:\n{}",
            node.log()
        );
        assert!(node.log().contains("were cut off; their leases are given back"), "{}", node.log());
    }
);
