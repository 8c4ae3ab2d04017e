//! A `serve` process stopped with SIGTERM while it delivers: a webhook attempt or an email in
//! flight finishes within the shutdown grace and is recorded once; a webhook attempt that
//! outlasts the grace is cut off and its lease given back; the emails of a claimed batch not
//! yet begun are given back, due again at once rather than when the 5-minute lease lapses.

use crate::crash::Data;
use crate::data_plane_nodes::Node;
use crate::helpers::*;
use crate::webhook_receiver::{Answer, Receiver, Rule};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// A node on fresh data, sending webhooks to loopback, stopped within `grace` seconds.
async fn node(data: &Data, grace: &str) -> Node {
    node_with(data, grace, &[]).await
}

async fn node_with(data: &Data, grace: &str, more: &[(&str, &str)]) -> Node {
    let mut env = vec![
        ("QUARTERDECK_BOOTSTRAP_OWNER_EMAIL", OWNER_EMAIL),
        ("QUARTERDECK_BOOTSTRAP_OWNER_PASSWORD", OWNER_PASSWORD),
        ("QUARTERDECK_OUTBOUND_ALLOW_PRIVATE", "127.0.0.0/8"),
        ("QUARTERDECK_SHUTDOWN_GRACE_SECONDS", grace),
    ];
    env.extend_from_slice(more);
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

/// Through the node's API at `base`: the tenant Acme; its id.
async fn acme(client: &reqwest::Client, base: &str, token: &str) -> String {
    let r = client
        .post(format!("{base}/v1/admin/tenants"))
        .bearer_auth(token)
        .json(&json!({ "name": "Acme", "slug": "acme" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
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
    acme(&client, &base, &token).await;
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
        // Answered 6 s after it arrives: the node is told to stop meanwhile.
        rx.script("slow", &[Rule::always(Answer::Slow(200, 6_000))]).await;
        let mut node = node_with(&data, "20", &[("QUARTERDECK_LOG", "info")]).await;
        let delivery = one_delivery(&node, &data, &rx, "slow").await;
        rx.wait_for("slow", 1, Duration::from_secs(20)).await;
        node.signal("TERM");
        let status = node.exited_within(Duration::from_secs(30)).await;
        assert!(status.success(), "{status:?}; log:\n{}", node.log());
        // In flight when the signal came (the node says so), and recorded before the exit.
        assert!(
            node.log()
                .contains("webhook attempts in flight finished after the shutdown signal"),
            "{}",
            node.log()
        );
        assert_eq!(state(&data, &delivery).await, "delivered 1 free");
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

/// A relay in front of an SMTP server that holds its first connection (passing nothing
/// either way, a network that stalls) until the test lets it go; says when it has arrived.
struct Relay {
    port: String,
    arrived: Option<tokio::sync::oneshot::Receiver<()>>,
    release: Option<tokio::sync::oneshot::Sender<()>>,
}

async fn stalling_relay(smtp_port: u16) -> Relay {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (arrived, arrived_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut first = Some((arrived, release));
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let held = first.take();
            tokio::spawn(async move {
                if let Some((arrived, release)) = held {
                    let _ = arrived.send(());
                    // Released, or never (the sender dropped with the test: the node's own
                    // cut-off ends it first).
                    if release.await.is_err() {
                        return;
                    }
                }
                let mut outbound = TcpStream::connect(("127.0.0.1", smtp_port)).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    Relay {
        port: port.to_string(),
        arrived: Some(arrived_rx),
        release: Some(release_tx),
    }
}

/// Five invitations queued by a first node that sends nothing and stops; then a second node
/// (stopped within `grace` seconds) that claims them in one batch and is stalled in its first
/// send. Returns the second node.
async fn stalled_in_a_batch_of_five(data: &Data, relay: &mut Relay, grace: &str) -> Node {
    let smtp = [
        ("QUARTERDECK_EMAIL_TRANSPORT", "smtp"),
        ("QUARTERDECK_SMTP_HOST", "127.0.0.1"),
        ("QUARTERDECK_SMTP_PORT", relay.port.as_str()),
        ("QUARTERDECK_SMTP_TLS", "none"),
        ("QUARTERDECK_EMAIL_FROM", "Quarterdeck <deck@example.com>"),
    ];
    // The first node's worker looks once at start, then not for an hour.
    let mut quiet = smtp.to_vec();
    quiet.push(("QUARTERDECK_OUTBOX_POLL_MS", "3600000"));
    let mut first = node_with(data, "20", &quiet).await;
    let base = first.url.replace("127.0.0.1", "localhost");
    let (client, token) = (reqwest::Client::new(), token(data));
    let tid = acme(&client, &base, &token).await;
    for i in 0..5 {
        let r = client
            .post(format!("{base}/v1/admin/users"))
            .bearer_auth(&token)
            .json(&json!({ "email": format!("user{i}@acme.example"), "roles": ["viewer"], "tenant_id": tid }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }
    first.signal("TERM");
    assert!(first.exited_within(Duration::from_secs(20)).await.success());
    assert_eq!(outbox_states(data).await, vec!["pending free"; 5]);
    let second = node_with(data, grace, &smtp).await;
    tokio::time::timeout(Duration::from_secs(20), relay.arrived.take().unwrap())
        .await
        .expect("the node did not begin sending")
        .unwrap();
    assert_eq!(outbox_states(data).await, vec!["pending leased"; 5]);
    second
}

/// The outbox's rows as `status lease` texts, sorted.
async fn outbox_states(data: &Data) -> Vec<String> {
    let mut rows = data
        .control("SELECT status || ' ' || CASE WHEN lease_token IS NULL THEN 'free' ELSE 'leased' END FROM outbox")
        .await;
    rows.sort();
    rows
}

crate::both_backends!(
    async fn an_email_being_sent_at_sigterm_is_finished_and_the_rest_of_its_batch_given_back(backend) {
        let (_dir, data) = Data::fresh(backend).await;
        let maildev = crate::maildev::Maildev::start();
        let mut relay = stalling_relay(maildev.smtp_port).await;
        let mut node = stalled_in_a_batch_of_five(&data, &mut relay, "20").await;
        node.signal("TERM");
        // The network moves again only once the node has been told to stop.
        relay.release.take().unwrap().send(()).unwrap();
        let status = node.exited_within(Duration::from_secs(30)).await;
        assert!(status.success(), "{status:?}; log:\n{}", node.log());
        let mut expected = vec!["pending free"; 4];
        expected.push("sent free");
        assert_eq!(outbox_states(&data).await, expected, "log:\n{}", node.log());
        assert_eq!(maildev.wait_for_emails(1).await.len(), 1);
    }
);

crate::both_backends!(
    async fn an_email_send_cut_off_by_the_grace_keeps_its_lease_and_the_rest_of_its_batch_is_given_back(backend) {
        let (_dir, data) = Data::fresh(backend).await;
        let maildev = crate::maildev::Maildev::start();
        let mut relay = stalling_relay(maildev.smtp_port).await;
        let mut node = stalled_in_a_batch_of_five(&data, &mut relay, "1").await;
        node.signal("TERM");
        let status = node.exited_within(Duration::from_secs(15)).await;
        assert!(status.success(), "{status:?}; log:\n{}", node.log());
        // The one being sent may have gone out: it waits for its lease to lapse (sent again
        // then, at least once); the four not begun are due again at once.
        let mut expected = vec!["pending free"; 4];
        expected.push("pending leased");
        assert_eq!(outbox_states(&data).await, expected, "log:\n{}", node.log());
    }
);
