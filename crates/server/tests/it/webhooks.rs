//! Events to the product (issue 13): webhooks delivered by the real server to a real receiver
//! (`webhook_receiver.rs`: Node, verifying every delivery with the published `standardwebhooks`
//! library), and the events feed. Endpoints are made through `Core` with the owner's proof.
//!
//! The server's clock is the test's `ManualClock`: it stands still unless moved, so a retry's
//! back-off passes only when the test moves it (and tells the receiver, whose library checks
//! timestamps against its own clock).

use crate::data_plane::{api_key, owner};
use crate::data_plane_nodes::Node;
use crate::helpers::*;
use crate::webhook_receiver::{Answer, Delivery, Receiver, Rule};
use crate::{both, both_backends};
use quarterdeck::webhooks::PER_ENDPOINT;
use quarterdeck_domain::access::{Actor, ManageApiKeys, ManageTenants, ManageWebhooks, ReadTenants};
use quarterdeck_domain::audit::{EventType, NewEvent};
use quarterdeck_domain::core::EndpointWithSecret;
use quarterdeck_domain::tenant::{Tenant, TenantEdit, TenantName};
use quarterdeck_domain::webhook::{DeliveryView, Endpoint, EndpointDraft, Published, Topic};
use quarterdeck_domain::{Principal, TenantId, TenantSlug, TenantStatus};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

fn regions() -> Vec<String> {
    vec!["eu-west".to_owned(), "us-east".to_owned()]
}

/// An endpoint for `url` subscribed to `types`, made by the owner through `Core`.
async fn create_endpoint(
    app: &TestApp,
    who: &Principal,
    url: &str,
    types: &[&str],
    enabled: bool,
) -> quarterdeck_domain::Result<EndpointWithSecret> {
    let auth = who.require::<ManageWebhooks>().unwrap();
    let draft = EndpointDraft::parse(url, "test receiver", types, None, enabled, &regions()).unwrap();
    app.core.create_webhook_endpoint(&auth, draft).await
}

/// An endpoint at the receiver's hook `name`, whose secret the receiver verifies with.
async fn hook(
    app: &TestApp,
    who: &Principal,
    rx: &Receiver,
    name: &str,
    types: &[&str],
    enabled: bool,
) -> EndpointWithSecret {
    let made = create_endpoint(app, who, &rx.url(name), types, enabled).await.unwrap();
    assert!(made.secret.starts_with("whsec_"), "{}", made.secret);
    rx.set_secrets(name, &[&made.secret]).await;
    rx.set_clock(app.clock_now()).await;
    made
}

/// The endpoint's deliveries, oldest first.
async fn views(app: &TestApp, who: &Principal, endpoint: uuid::Uuid) -> Vec<DeliveryView> {
    let auth = who.require::<ManageWebhooks>().unwrap();
    let mut v = app.core.webhook_deliveries(&auth, endpoint, 200, None).await.unwrap();
    v.reverse();
    v
}

async fn endpoint_now(app: &TestApp, who: &Principal, endpoint: uuid::Uuid) -> Endpoint {
    let auth = who.require::<ManageWebhooks>().unwrap();
    app.core.webhook_endpoint(&auth, endpoint).await.unwrap()
}

/// Every event of the feed, oldest first, read page by page.
async fn feed(app: &TestApp, who: &Principal) -> Vec<Value> {
    let auth = who.require::<ManageWebhooks>().unwrap();
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = app.core.events_feed(&auth, after.as_deref(), &[], 3).await.unwrap();
        if page.events.is_empty() {
            return out;
        }
        out.extend(
            page.events
                .iter()
                .map(|e| serde_json::from_str::<Value>(&e.body).unwrap()),
        );
        after = Some(page.next_cursor);
    }
}

/// Moves the server's clock and tells the receiver.
async fn advance(app: &TestApp, rx: &Receiver, by: time::Duration) {
    app.clock.advance(by);
    rx.set_clock(app.clock_now()).await;
}

/// Waits until `check` holds, failing after `within`.
async fn poll_within<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the endpoint's delivery number `i` (oldest first) has had `attempts` attempts.
async fn attempted(
    app: &TestApp,
    who: &Principal,
    endpoint: uuid::Uuid,
    i: usize,
    attempts: u32,
    within: Duration,
) -> DeliveryView {
    poll_within(&format!("delivery {i} attempted {attempts} times"), within, || async {
        views(app, who, endpoint)
            .await
            .get(i)
            .is_some_and(|d| d.attempts >= attempts)
    })
    .await;
    views(app, who, endpoint).await.swap_remove(i)
}

async fn all_delivered(app: &TestApp, who: &Principal, endpoint: uuid::Uuid, n: usize) -> Vec<DeliveryView> {
    poll_within(
        &format!("{n} deliveries recorded as delivered"),
        Duration::from_secs(15),
        || async {
            let v = views(app, who, endpoint).await;
            v.len() == n && v.iter().all(|d| d.status == "delivered")
        },
    )
    .await;
    views(app, who, endpoint).await
}

fn manage(who: &Principal) -> quarterdeck_domain::Authorized<ManageTenants> {
    who.require::<ManageTenants>().unwrap()
}

async fn rename(app: &TestApp, who: &Principal, tenant: &str, name: &str) {
    let id: TenantId = tenant.parse().unwrap();
    let t = app
        .core
        .tenant(&who.require::<ReadTenants>().unwrap(), id)
        .await
        .unwrap();
    let edit = TenantEdit {
        name: TenantName::parse(name).unwrap(),
        region: t.region,
        tier: t.tier,
        metadata: t.metadata,
    };
    app.core.update_tenant(&manage(who), id, edit).await.unwrap();
}

async fn revoke(app: &TestApp, who: &Principal, tenant: &str, key: uuid::Uuid) {
    let auth = who
        .require_for_tenant::<ManageApiKeys>(tenant.parse().unwrap())
        .unwrap();
    app.core.revoke_api_key(&auth, key).await.unwrap();
}

/// A key created and revoked: `api_key.created`, `api_key.revoked`.
async fn key_created_and_revoked(app: &TestApp, who: &Principal, tenant: &str) -> String {
    let (id, secret) = api_key(app, who, tenant, "").await;
    revoke(app, who, tenant, id).await;
    secret
}

fn types_of(ds: &[Delivery]) -> Vec<&str> {
    ds.iter().map(|d| d.event_type.as_deref().unwrap_or("?")).collect()
}

fn ids_of(ds: &[Delivery]) -> Vec<&str> {
    ds.iter().map(|d| d.id.as_str()).collect()
}

fn assert_verified(ds: &[Delivery]) {
    for d in ds {
        assert!(d.valid, "{} {:?} did not verify: {:?}", d.id, d.event_type, d.errors);
        assert_eq!(d.verified_with, vec![0], "{}: {:?}", d.id, d.errors);
        assert_eq!(d.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            d.body["id"].as_str(),
            Some(d.id.as_str()),
            "webhook-id is the event's id"
        );
    }
}

both!(
    async fn every_event_a_tenants_life_publishes_arrives_signed_and_verifies_with_the_library(app) {
        let owner = owner(&app).await;
        let rx = Receiver::start().await;
        let ep = hook(&app, &owner, &rx, "all", &["*"], true).await;
        let tid = app.create_tenant("Acme", "acme").await;
        let tenant: TenantId = tid.parse().unwrap();
        let r = app.invite("ada@acme.example", &tid, &["admin"]).await;
        assert_eq!(r.status(), 303);
        let key = key_created_and_revoked(&app, &owner, &tid).await;
        rename(&app, &owner, &tid, "Acme Two").await;
        app.core
            .set_tenant_status(&manage(&owner), tenant, TenantStatus::Suspended, "unpaid invoice")
            .await
            .unwrap();
        app.core.delete_tenant(&manage(&owner), tenant, "acme").await.unwrap();
        let expected = [
            "tenant.created",
            "user.invited",
            "api_key.created",
            "api_key.revoked",
            "tenant.updated",
            "tenant.status_changed",
            "tenant.deleted",
        ];
        let got = rx.wait_for("all", expected.len(), Duration::from_secs(15)).await;
        // One tenant: in the order they happened.
        assert_eq!(types_of(&got), expected);
        assert_verified(&got);
        let now = app.clock_now().unix_timestamp();
        for d in &got {
            assert_eq!(d.tenant.as_deref(), Some(tid.as_str()), "{:?}", d.event_type);
            assert_eq!(d.body["version"], 1);
            assert_eq!(d.timestamp, now, "the attempt's time on the server's clock");
            assert_eq!(d.signature.split(' ').count(), 1, "one secret, one signature");
            assert!(d.signature.starts_with("v1,"), "{}", d.signature);
        }
        let data = |t: &str| &got.iter().find(|d| d.event_type.as_deref() == Some(t)).unwrap().body["data"];
        assert_eq!(data("tenant.created")["tenant"]["slug"], "acme");
        assert_eq!(data("tenant.created")["tenant"]["region"], "eu-west");
        assert_eq!(data("tenant.created")["tenant"]["status"], "active");
        assert_eq!(data("user.invited")["user"]["email"], "ada@acme.example");
        assert_eq!(data("user.invited")["user"]["tenant_id"], tid.as_str());
        assert!(data("api_key.created")["api_key"]["revoked_at"].is_null());
        assert!(data("api_key.revoked")["api_key"]["revoked_at"].is_string());
        assert_eq!(data("tenant.updated")["tenant"]["name"], "Acme Two");
        assert_eq!(data("tenant.status_changed")["tenant"]["status"], "suspended");
        assert_eq!(data("tenant.status_changed")["previous_status"], "active");
        assert_eq!(data("tenant.status_changed")["reason"], "unpaid invoice");
        assert_eq!(data("tenant.deleted")["tenant"]["id"], tid.as_str());
        // Never a secret in a body.
        assert!(!got.iter().any(|d| d.raw.contains(&key) || d.raw.contains(&ep.secret)));

        // Each once: every delivery recorded as delivered, and nothing more arrived.
        let recorded = all_delivered(&app, &owner, ep.endpoint.id, expected.len()).await;
        assert!(recorded.iter().all(|d| d.attempts == 1 && d.last_status == Some(200)));
        assert_eq!(rx.deliveries("all").await.len(), expected.len());
        assert_eq!(
            app.core.webhook_counters().iter().find(|(k, _)| *k == "success").unwrap().1,
            expected.len() as u64
        );
    }
);

both!(
    async fn the_events_feed_returns_what_was_delivered_byte_for_byte_in_order(app) {
        let owner = owner(&app).await;
        let rx = Receiver::start().await;
        hook(&app, &owner, &rx, "all", &["*"], true).await;
        let acme = app.create_tenant("Acme", "acme").await;
        let globex = app.create_tenant("Globex", "globex").await;
        key_created_and_revoked(&app, &owner, &acme).await;
        rename(&app, &owner, &globex, "Globex Two").await;
        key_created_and_revoked(&app, &owner, &globex).await;
        let got = rx.wait_for("all", 7, Duration::from_secs(15)).await;
        assert_verified(&got);

        let events = feed(&app, &owner).await;
        assert_eq!(events.len(), 7, "{events:?}");
        let feed_types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            feed_types,
            [
                "tenant.created",
                "tenant.created",
                "api_key.created",
                "api_key.revoked",
                "tenant.updated",
                "api_key.created",
                "api_key.revoked"
            ]
        );
        // The same bodies, byte for byte, as the receiver got them.
        let auth = owner.require::<ManageWebhooks>().unwrap();
        let page = app.core.events_feed(&auth, None, &[], 500).await.unwrap();
        let delivered: BTreeMap<&str, &str> = got.iter().map(|d| (d.id.as_str(), d.raw.as_str())).collect();
        for e in &page.events {
            assert_eq!(delivered.get(e.id.to_string().as_str()), Some(&e.body.as_str()));
        }
        // Each tenant's deliveries came in the feed's order.
        for tenant in [&acme, &globex] {
            let in_feed: Vec<&str> = events
                .iter()
                .filter(|e| e["tenant_id"] == tenant.as_str())
                .map(|e| e["id"].as_str().unwrap())
                .collect();
            let received: Vec<&str> = got
                .iter()
                .filter(|d| d.tenant.as_deref() == Some(tenant.as_str()))
                .map(|d| d.id.as_str())
                .collect();
            assert_eq!(received, in_feed);
        }
        // Filtered by type; from a cursor; past the end.
        let revoked = app
            .core
            .events_feed(&auth, None, &["api_key.revoked".to_owned()], 500)
            .await
            .unwrap();
        assert_eq!(revoked.events.len(), 2);
        assert!(revoked.events.iter().all(|e| e.topic == "api_key.revoked"));
        let first3 = app.core.events_feed(&auth, None, &[], 3).await.unwrap();
        let rest = app
            .core
            .events_feed(&auth, Some(&first3.next_cursor), &[], 500)
            .await
            .unwrap();
        let ids: Vec<_> = first3.events.iter().chain(&rest.events).map(|e| e.id).collect();
        assert_eq!(ids, page.events.iter().map(|e| e.id).collect::<Vec<_>>());
        let end = app
            .core
            .events_feed(&auth, Some(&rest.next_cursor), &[], 500)
            .await
            .unwrap();
        assert!(end.events.is_empty());
        assert_eq!(end.next_cursor, rest.next_cursor);
        let bad = app.core.events_feed(&auth, None, &["tenant.nope".to_owned()], 10).await;
        assert!(bad.unwrap_err().fields().iter().any(|f| f.field == "types"));
    }
);

both!(
    async fn a_tenants_later_events_wait_while_its_first_is_retried_and_another_tenants_go_out_meanwhile(app) {
        let owner = owner(&app).await;
        let rx = Receiver::start().await;
        let a = app.create_tenant("Alpha", "alpha").await;
        let b = app.create_tenant("Beta", "beta").await;
        // Made after the tenants: their tenant.created events are not its.
        let ep = hook(&app, &owner, &rx, "h", &["tenant.*", "api_key.*"], true).await;
        rx.script("h", &[Rule::times(2, Answer::Status(500)).for_tenant(&a)]).await;
        for t in [&a, &b] {
            rename(&app, &owner, t, "Renamed").await;
            key_created_and_revoked(&app, &owner, t).await;
        }
        let of = |ds: &[Delivery], t: &str| -> Vec<Delivery> {
            ds.iter().filter(|d| d.tenant.as_deref() == Some(t)).cloned().collect()
        };
        // B's three arrive while A's first has been refused once and A's later two wait.
        poll_within("B's events and A's first attempt", Duration::from_secs(10), || async {
            let got = rx.deliveries("h").await;
            of(&got, &b).len() == 3 && !of(&got, &a).is_empty()
        })
        .await;
        attempted(&app, &owner, ep.endpoint.id, 0, 1, Duration::from_secs(10)).await;
        let got = rx.deliveries("h").await;
        assert_eq!(types_of(&of(&got, &b)), ["tenant.updated", "api_key.created", "api_key.revoked"]);
        let first = of(&got, &a);
        assert_eq!(types_of(&first), ["tenant.updated"]);
        assert_eq!(first[0].answer["status"], 500);
        let v = views(&app, &owner, ep.endpoint.id).await;
        let a_views: Vec<&DeliveryView> = v.iter().filter(|d| d.tenant_id.map(|t| t.to_string()) == Some(a.clone())).collect();
        assert_eq!(a_views.len(), 3);
        assert_eq!((a_views[0].status.as_str(), a_views[0].attempts, a_views[0].last_status), ("pending", 1, Some(500)));
        assert!(a_views[0].next_attempt_at.unwrap() > app.clock_now(), "retried after a back-off");
        for later in &a_views[1..] {
            assert_eq!((later.status.as_str(), later.attempts), ("pending", 0), "waits behind the first");
        }

        // The back-off passes: the first is retried (500 again), the later ones still wait.
        let next = a_views[0].next_attempt_at.unwrap();
        advance(&app, &rx, next - app.clock_now() + time::Duration::seconds(1)).await;
        let retried = attempted(&app, &owner, ep.endpoint.id, 0, 2, Duration::from_secs(10)).await;
        assert_eq!(retried.last_status, Some(500));
        assert_eq!(of(&rx.deliveries("h").await, &a).len(), 2);
        // Then it succeeds, and A's later events follow, in order.
        advance(&app, &rx, retried.next_attempt_at.unwrap() - app.clock_now() + time::Duration::seconds(1)).await;
        let got = rx.wait_for("h", 3 + 5, Duration::from_secs(10)).await;
        let a_got = of(&got, &a);
        assert_eq!(
            types_of(&a_got),
            ["tenant.updated", "tenant.updated", "tenant.updated", "api_key.created", "api_key.revoked"]
        );
        let in_feed: Vec<String> = feed(&app, &owner)
            .await
            .iter()
            .filter(|e| e["tenant_id"] == a.as_str() && e["type"] != "tenant.created")
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids_of(&a_got), [&in_feed[0], &in_feed[0], &in_feed[0], &in_feed[1], &in_feed[2]]);
        assert_verified(&got);
        all_delivered(&app, &owner, ep.endpoint.id, 6).await;
    }
);

both!(
    async fn an_endpoint_answering_500_gets_the_same_event_after_each_backoff_until_it_recovers(app) {
        let owner = owner(&app).await;
        let rx = Receiver::start().await;
        let ep = hook(&app, &owner, &rx, "flaky", &["tenant.*"], true).await;
        rx.script("flaky", &[Rule::times(3, Answer::Status(500))]).await;
        app.create_tenant("Acme", "acme").await;
        let mut delays = Vec::new();
        for n in 1..=3 {
            let d = attempted(&app, &owner, ep.endpoint.id, 0, n, Duration::from_secs(10)).await;
            assert_eq!((d.status.as_str(), d.last_status), ("pending", Some(500)), "attempt {n}");
            assert_eq!(d.last_error.as_deref(), Some("HTTP 500"));
            assert_eq!(endpoint_now(&app, &owner, ep.endpoint.id).await.state(), "failing");
            let wait = d.next_attempt_at.unwrap() - app.clock_now();
            delays.push(wait);
            // Not before the back-off: nothing more arrives while the clock stands still.
            assert_eq!(rx.deliveries("flaky").await.len(), n as usize);
            advance(&app, &rx, wait + time::Duration::seconds(1)).await;
        }
        // 5 s doubling, with jitter over each upper half.
        assert!(delays[0] >= time::Duration::milliseconds(2500) && delays[0] <= time::Duration::seconds(5), "{delays:?}");
        assert!(delays[1] >= time::Duration::seconds(5) && delays[1] <= time::Duration::seconds(10), "{delays:?}");
        assert!(delays[2] >= time::Duration::seconds(10) && delays[2] <= time::Duration::seconds(20), "{delays:?}");
        let done = all_delivered(&app, &owner, ep.endpoint.id, 1).await;
        assert_eq!((done[0].attempts, done[0].last_status), (4, Some(200)));
        let got = rx.deliveries("flaky").await;
        assert_eq!(got.len(), 4);
        assert_verified(&got);
        assert!(got.iter().all(|d| d.id == got[0].id), "the same event id on every attempt");
        assert!(got.windows(2).all(|w| w[0].timestamp < w[1].timestamp), "each attempt signed at its time");
        assert_eq!(endpoint_now(&app, &owner, ep.endpoint.id).await.state(), "enabled");
    }
);

both!(
    async fn an_endpoint_that_hangs_fails_after_ten_seconds_and_delays_no_other_endpoint(app) {
        let owner = owner(&app).await;
        let rx = Receiver::start().await;
        // Disabled while the three tenants are made (a database each, slow on PostgreSQL), so
        // that every attempt starts after `started`, and the fast path's time is its own.
        let hang = hook(&app, &owner, &rx, "hang", &["tenant.*"], false).await;
        rx.script("hang", &[Rule::always(Answer::Hang)]).await;
        let slow = hook(&app, &owner, &rx, "slow", &["tenant.*"], false).await;
        rx.script("slow", &[Rule::always(Answer::Slow(200, 2_000))]).await;
        let fast = hook(&app, &owner, &rx, "fast", &["tenant.*"], false).await;
        for (name, slug) in [("Acme", "acme"), ("Globex", "globex"), ("Initech", "initech")] {
            app.create_tenant(name, slug).await;
        }
        let started = Instant::now();
        let auth = owner.require::<ManageWebhooks>().unwrap();
        for ep in [&hang, &slow, &fast] {
            app.core.set_webhook_endpoint_enabled(&auth, ep.endpoint.id, true).await.unwrap();
        }
        // The fast endpoint has everything, recorded, while the hanging attempts are still open.
        let got = rx.wait_for("fast", 3, Duration::from_secs(5)).await;
        assert_verified(&got);
        all_delivered(&app, &owner, fast.endpoint.id, 3).await;
        assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());
        poll_within("each hanging attempt open", Duration::from_secs(5), || async {
            rx.deliveries("hang").await.len() == 3
        })
        .await;
        assert!(views(&app, &owner, hang.endpoint.id).await.iter().all(|d| d.attempts == 0));
        // A slow 2xx within the 10 s is a success.
        let s = all_delivered(&app, &owner, slow.endpoint.id, 3).await;
        assert!(s.iter().all(|d| d.attempts == 1 && d.last_response_ms.unwrap() >= 2_000), "{s:?}");
        // The hanging ones fail at 10 s, and are retried later.
        poll_within("the hanging attempts to time out", Duration::from_secs(20), || async {
            views(&app, &owner, hang.endpoint.id).await.iter().all(|d| d.attempts == 1)
        })
        .await;
        assert!(started.elapsed() >= Duration::from_secs(10));
        for d in views(&app, &owner, hang.endpoint.id).await {
            assert_eq!(d.status, "pending");
            assert_eq!(d.last_error.as_deref(), Some("timeout"), "{d:?}");
            assert_eq!(d.last_status, None);
            assert!(d.last_response_ms.unwrap() >= 9_900, "{d:?}");
            assert!(d.next_attempt_at.unwrap() > app.clock_now());
        }
        assert_eq!(
            app.core.webhook_counters().iter().find(|(k, _)| *k == "timeout").unwrap().1,
            3
        );
    }
);

both!(
    async fn a_disabled_endpoint_gets_nothing_until_enabled_then_everything_pending_in_order(app) {
        let owner = owner(&app).await;
        let rx = Receiver::start().await;
        let off = hook(&app, &owner, &rx, "off", &["*"], false).await;
        assert_eq!(off.endpoint.state(), "disabled");
        let witness = hook(&app, &owner, &rx, "witness", &["*"], true).await;
        let tid = app.create_tenant("Acme", "acme").await;
        rename(&app, &owner, &tid, "Acme Two").await;
        key_created_and_revoked(&app, &owner, &tid).await;
        // The enabled endpoint has had them all: the loop went by the disabled one.
        let seen = rx.wait_for("witness", 4, Duration::from_secs(10)).await;
        all_delivered(&app, &owner, witness.endpoint.id, 4).await;
        assert!(rx.deliveries("off").await.is_empty());
        let pending = views(&app, &owner, off.endpoint.id).await;
        assert_eq!(pending.len(), 4);
        assert!(pending.iter().all(|d| d.status == "pending" && d.attempts == 0));

        let auth = owner.require::<ManageWebhooks>().unwrap();
        let on = app.core.set_webhook_endpoint_enabled(&auth, off.endpoint.id, true).await.unwrap();
        assert_eq!(on.state(), "enabled");
        let got = rx.wait_for("off", 4, Duration::from_secs(10)).await;
        assert_verified(&got);
        assert_eq!(ids_of(&got), ids_of(&seen), "what was pending, in order");
        all_delivered(&app, &owner, off.endpoint.id, 4).await;
        assert_eq!(app.events_of("WEBHOOK_ENDPOINT_UPDATED").await.len(), 1);
    }
);

both!(
    async fn an_endpoint_failing_for_three_days_is_disabled_its_owners_emailed_and_it_is_audited(app) {
        let owner = owner(&app).await;
        let rx = Receiver::start().await;
        let down = hook(&app, &owner, &rx, "down", &["tenant.*"], true).await;
        rx.script("down", &[Rule::always(Answer::Status(503))]).await;
        let up = hook(&app, &owner, &rx, "up", &["tenant.*"], true).await;
        let t0 = app.clock_now();
        let tid = app.create_tenant("Acme", "acme").await;
        attempted(&app, &owner, down.endpoint.id, 0, 1, Duration::from_secs(10)).await;
        let e = endpoint_now(&app, &owner, down.endpoint.id).await;
        assert_eq!(e.failing_since.map(|t| t.unix_timestamp()), Some(t0.unix_timestamp()));
        assert!(e.enabled);

        // Two days on: still failing, still enabled.
        advance(&app, &rx, time::Duration::days(2)).await;
        attempted(&app, &owner, down.endpoint.id, 0, 2, Duration::from_secs(10)).await;
        assert!(endpoint_now(&app, &owner, down.endpoint.id).await.enabled);
        assert!(app.outbox().await.iter().all(|m| !m.subject.contains("webhook")));

        // Three days after the first failure: disabled at the next failure.
        advance(&app, &rx, time::Duration::days(1) + time::Duration::minutes(1)).await;
        attempted(&app, &owner, down.endpoint.id, 0, 3, Duration::from_secs(10)).await;
        poll_within("the endpoint disabled", Duration::from_secs(10), || async {
            !endpoint_now(&app, &owner, down.endpoint.id).await.enabled
        })
        .await;
        let e = endpoint_now(&app, &owner, down.endpoint.id).await;
        assert_eq!(e.disabled_reason.as_deref(), Some("failing"));
        assert_eq!(e.state(), "disabled (failing)");
        let mails: Vec<_> = app
            .outbox()
            .await
            .into_iter()
            .filter(|m| m.subject == "A webhook endpoint was disabled")
            .collect();
        assert_eq!(mails.len(), 1, "one email, to the one owner");
        assert_eq!(mails[0].to, OWNER_EMAIL);
        // The endpoint by its origin (its path may hold the receiver's credential) and its link.
        let origin = url::Url::parse(&rx.url("down")).unwrap().origin().ascii_serialization();
        assert!(mails[0].text.contains(&format!("{origin}/…")), "{}", mails[0].text);
        assert!(!mails[0].text.contains(&rx.url("down")), "{}", mails[0].text);
        assert!(mails[0].text.contains(&format!("/settings/webhooks/{}", down.endpoint.id)));
        let audited: Vec<_> = app
            .events_of("WEBHOOK_ENDPOINT_UPDATED")
            .await
            .into_iter()
            .filter(|e| e.details["reason"] == "failing")
            .collect();
        assert_eq!(audited.len(), 1);
        assert_eq!(audited[0].details["endpoint_id"], down.endpoint.id.to_string());
        assert_eq!(audited[0].details["enabled"], false);

        // Disabled: a new event waits for it, while the healthy endpoint gets it.
        rename(&app, &owner, &tid, "Acme Two").await;
        rx.wait_for("up", 2, Duration::from_secs(10)).await;
        all_delivered(&app, &owner, up.endpoint.id, 2).await;
        assert_eq!(rx.deliveries("down").await.len(), 3);
        let v = views(&app, &owner, down.endpoint.id).await;
        assert_eq!(v.len(), 2);
        assert_eq!((v[1].status.as_str(), v[1].attempts), ("pending", 0));
        assert_verified(&rx.deliveries("down").await);
    }
);

both_backends!(
    async fn a_receiver_on_a_private_address_is_refused_when_the_endpoint_is_created(backend) {
        // The default policy: no private range allowed.
        let app = TestApp::spawn_with(backend, |s| s.outbound_allow_private = Vec::new()).await;
        let owner = owner(&app).await;
        let rx = Receiver::start().await;
        let port = rx.base.rsplit(':').next().unwrap().to_owned();
        for url in [
            rx.url("private"),
            format!("https://127.0.0.1:{port}/hooks/private"),
            format!("https://localhost:{port}/hooks/private"),
            format!("https://[::1]:{port}/hooks/private"),
        ] {
            let err = create_endpoint(&app, &owner, &url, &["*"], true).await.unwrap_err();
            let field = err.fields().iter().find(|f| f.field == "url");
            assert_eq!(field.map(|f| f.code), Some("url_refused"), "{url}: {err:?}");
        }
        let auth = owner.require::<ManageWebhooks>().unwrap();
        assert!(app.core.webhook_endpoints(&auth).await.unwrap().is_empty());
        assert!(app.events_of("WEBHOOK_ENDPOINT_CREATED").await.is_empty());
        app.create_tenant("Acme", "acme").await;
        assert!(rx.deliveries("private").await.is_empty());
    }
);

both!(
    async fn a_redirect_is_not_followed_and_counts_as_a_failed_attempt(app) {
        let owner = owner(&app).await;
        let rx = Receiver::start().await;
        let ep = hook(&app, &owner, &rx, "moved", &["tenant.*"], true).await;
        rx.script("moved", &[Rule::always(Answer::Redirect(307, rx.url("target")))]).await;
        app.create_tenant("Acme", "acme").await;
        let d = attempted(&app, &owner, ep.endpoint.id, 0, 1, Duration::from_secs(10)).await;
        assert_eq!(d.status, "pending");
        assert_eq!(d.last_status, Some(307));
        assert_eq!(d.last_error.as_deref(), Some("HTTP 307"));
        assert!(d.next_attempt_at.unwrap() > app.clock_now(), "retried after a back-off");
        let got = rx.deliveries("moved").await;
        assert_eq!(got.len(), 1);
        assert_verified(&got);
        assert!(rx.deliveries("target").await.is_empty(), "the redirect was not followed");
        assert_eq!(endpoint_now(&app, &owner, ep.endpoint.id).await.state(), "failing");
    }
);

both!(
    async fn during_a_rolls_grace_both_secrets_sign_and_the_library_verifies_with_either(app) {
        let owner = owner(&app).await;
        let rx = Receiver::start().await;
        let ep = hook(&app, &owner, &rx, "roll", &["tenant.*"], true).await;
        let auth = owner.require::<ManageWebhooks>().unwrap();
        let rolled = app
            .core
            .roll_webhook_secret(&auth, ep.endpoint.id, Some(time::Duration::hours(1)))
            .await
            .unwrap();
        assert_ne!(rolled.secret, ep.secret);
        // Secret 0 the old, 1 the new: each verified on its own.
        rx.set_secrets("roll", &[&ep.secret, &rolled.secret]).await;
        let tid = app.create_tenant("Acme", "acme").await;
        let got = rx.wait_for("roll", 1, Duration::from_secs(10)).await;
        assert_eq!(got[0].verified_with, vec![0, 1], "{:?}", got[0].errors);
        assert_eq!(got[0].signature.split(' ').count(), 2);

        // Past the grace, only the new secret signs.
        advance(&app, &rx, time::Duration::hours(1) + time::Duration::seconds(1)).await;
        rename(&app, &owner, &tid, "Acme Two").await;
        let got = rx.wait_for("roll", 2, Duration::from_secs(10)).await;
        assert!(got[1].valid);
        assert_eq!(got[1].verified_with, vec![1], "{:?}", got[1].errors);
        assert_eq!(got[1].signature.split(' ').count(), 1);
        assert!(got[1].errors[0].contains("No matching signature"), "{:?}", got[1].errors);
        // A zero grace drops the old secret at once.
        let again = app
            .core
            .roll_webhook_secret(&auth, ep.endpoint.id, Some(time::Duration::ZERO))
            .await
            .unwrap();
        rx.set_secrets("roll", &[&rolled.secret, &again.secret]).await;
        rename(&app, &owner, &tid, "Acme Three").await;
        let got = rx.wait_for("roll", 3, Duration::from_secs(10)).await;
        assert_eq!(got[2].verified_with, vec![1], "{:?}", got[2].errors);
    }
);

both!(
    async fn a_change_that_rolls_back_publishes_nothing(app) {
        let owner = owner(&app).await;
        let rx = Receiver::start().await;
        let ep = hook(&app, &owner, &rx, "all", &["*"], true).await;
        app.create_tenant("Acme", "acme").await;
        // The store's own transaction, with a duplicate slug: the tenant insert fails after the
        // audit event and its public event were written in the same transaction.
        let now = app.clock_now();
        let dup = Tenant {
            id: TenantId::new(),
            slug: TenantSlug::parse("acme").unwrap(),
            name: TenantName::parse("Acme again").unwrap(),
            region: quarterdeck_domain::tenant::Region::parse("eu-west", &regions()).unwrap(),
            tier: quarterdeck_domain::tenant::PriorityTier::Standard,
            status: TenantStatus::Active,
            metadata: Default::default(),
            created_at: now,
            updated_at: now,
        };
        let event = NewEvent::new(now, EventType::TenantCreated, &Actor::system(), Some(dup.id), json!({}))
            .publish(Published::tenant(Topic::TenantCreated, &dup));
        assert!(app.core.store().create_tenant(&dup, event).await.is_err());
        // And through Core, twice at once with one slug, a few times: one of each pair wins.
        let auth = manage(&owner);
        for i in 0..3 {
            let new = || quarterdeck_domain::tenant::NewTenant {
                slug: TenantSlug::parse(&format!("race-{i}")).unwrap(),
                name: TenantName::parse("Race").unwrap(),
                region: quarterdeck_domain::tenant::Region::parse("eu-west", &regions()).unwrap(),
                tier: quarterdeck_domain::tenant::PriorityTier::Standard,
                metadata: Default::default(),
            };
            let (x, y) = tokio::join!(app.core.create_tenant(&auth, new()), app.core.create_tenant(&auth, new()));
            assert_eq!(u8::from(x.is_ok()) + u8::from(y.is_ok()), 1, "{x:?} {y:?}");
        }
        let got = rx.wait_for("all", 4, Duration::from_secs(10)).await;
        all_delivered(&app, &owner, ep.endpoint.id, 4).await;
        assert_eq!(rx.deliveries("all").await.len(), 4);
        let events = feed(&app, &owner).await;
        assert_eq!(events.len(), 4, "{events:?}");
        let ids: HashSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
        assert!(!ids.contains(dup.id.to_string().as_str()));
        assert!(!got.iter().any(|d| d.body["data"]["tenant"]["name"] == "Acme again"));
        let slugs: HashSet<&str> = got.iter().map(|d| d.body["data"]["tenant"]["slug"].as_str().unwrap()).collect();
        assert_eq!(slugs, HashSet::from(["acme", "race-0", "race-1", "race-2"]));
        assert_eq!(app.events_of("TENANT_CREATED").await.len(), 4, "no audit event either");
    }
);

both!(
    async fn an_endpoint_limited_to_a_region_gets_that_regions_tenants_events_from_their_creation_on(app) {
        let owner = owner(&app).await;
        let rx = Receiver::start().await;
        let auth = owner.require::<ManageWebhooks>().unwrap();
        let draft = EndpointDraft::parse(&rx.url("eu"), "eu only", &["*"], Some("eu-west"), true, &regions()).unwrap();
        let eu = app.core.create_webhook_endpoint(&auth, draft).await.unwrap();
        rx.set_secrets("eu", &[&eu.secret]).await;
        rx.set_clock(app.clock_now()).await;
        let everything = hook(&app, &owner, &rx, "all", &["*"], true).await;
        // An eu-west tenant (the console's default region), a us-east one, a platform user.
        let acme = app.create_tenant("Acme", "acme").await;
        let new = quarterdeck_domain::tenant::NewTenant {
            slug: TenantSlug::parse("globex").unwrap(),
            name: TenantName::parse("Globex").unwrap(),
            region: quarterdeck_domain::tenant::Region::parse("us-east", &regions()).unwrap(),
            tier: quarterdeck_domain::tenant::PriorityTier::Standard,
            metadata: Default::default(),
        };
        let globex = app.core.create_tenant(&manage(&owner), new).await.unwrap().id.to_string();
        assert_eq!(app.invite("ops@platform.example", "", &["owner"]).await.status(), 303);
        rename(&app, &owner, &acme, "Acme Two").await;
        rename(&app, &owner, &globex, "Globex Two").await;
        // The unlimited endpoint has all five: the loop has been by.
        rx.wait_for("all", 5, Duration::from_secs(10)).await;
        all_delivered(&app, &owner, everything.endpoint.id, 5).await;
        let got = rx.wait_for("eu", 2, Duration::from_secs(10)).await;
        assert_verified(&got);
        assert_eq!(types_of(&got), ["tenant.created", "tenant.updated"], "acme's, from its creation");
        assert!(got.iter().all(|d| d.tenant.as_deref() == Some(acme.as_str())));
        all_delivered(&app, &owner, eu.endpoint.id, 2).await;
    }
);

/// Arranges `n` more queue heads beside the endpoint's delivery `of`: copies of it, each under
/// a queue key of its own (as if `n` more tenants had an event waiting), written straight into
/// the control database. Cheaper than creating `n` tenants, each with its database.
async fn more_queue_heads(app: &TestApp, of: uuid::Uuid, n: usize) {
    use sqlx::ConnectOptions;
    const SQL: &str = "INSERT INTO webhook_delivery (id, endpoint_id, event_seq, order_key, status, attempts, next_attempt_at, created_at) \
         SELECT $1, endpoint_id, event_seq, $2, status, attempts, next_attempt_at, created_at FROM webhook_delivery WHERE id = $3";
    match &app.pg_url {
        Some(url) => {
            let mut conn = pg_conn(url).await;
            sqlx::query("SET search_path TO identity")
                .execute(&mut conn)
                .await
                .unwrap();
            for i in 0..n {
                let done = sqlx::query(SQL)
                    .bind(uuid::Uuid::now_v7())
                    .bind(format!("arranged-{i}"))
                    .bind(of)
                    .execute(&mut conn)
                    .await
                    .unwrap();
                assert_eq!(done.rows_affected(), 1);
            }
        }
        None => {
            let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(app.data_dir().join("control.db"))
                .busy_timeout(Duration::from_secs(10))
                .connect()
                .await
                .unwrap();
            for i in 0..n {
                let done = sqlx::query(SQL)
                    .bind(uuid::Uuid::now_v7())
                    .bind(format!("arranged-{i}"))
                    .bind(of)
                    .execute(&mut conn)
                    .await
                    .unwrap();
                assert_eq!(done.rows_affected(), 1);
            }
        }
    }
}

both!(
    async fn a_dead_endpoint_with_hundreds_of_tenants_waiting_delays_no_other_endpoint(app) {
        let owner = owner(&app).await;
        let rx = Receiver::start().await;
        // Disabled while its queue is arranged: 301 tenants' events waiting for it.
        let dead = hook(&app, &owner, &rx, "dead", &["tenant.*"], false).await;
        rx.script("dead", &[Rule::always(Answer::Hang)]).await;
        let tid = app.create_tenant("Acme", "acme").await;
        let head = views(&app, &owner, dead.endpoint.id).await[0].id;
        more_queue_heads(&app, head, 300).await;
        let auth = owner.require::<ManageWebhooks>().unwrap();
        // No attempt to it starts before this instant, and each lasts 10 s (the timeout), so by
        // `e` after it each of its 16 slots has begun at most e / 10 s + 1 attempts.
        let enabled = Instant::now();
        let at_most = || {
            let windows = u32::try_from(enabled.elapsed().as_secs() / 10).unwrap() + 1;
            usize::try_from(PER_ENDPOINT * windows).unwrap()
        };
        app.core.set_webhook_endpoint_enabled(&auth, dead.endpoint.id, true).await.unwrap();
        // It takes its share of the node's slots (16), each hanging for 10 s.
        poll_within("the dead endpoint's attempts to start", Duration::from_secs(5), || async {
            rx.deliveries("dead").await.len() >= 16
        })
        .await;
        let open = rx.deliveries("dead").await.len();
        let bound = at_most();
        assert!(open <= bound, "at most 16 at once to one endpoint: {open} (bound {bound})");

        // Another endpoint's event, newer than all of those: delivered at once all the same.
        let live = hook(&app, &owner, &rx, "live", &["tenant.*"], true).await;
        let started = Instant::now();
        rename(&app, &owner, &tid, "Acme Two").await;
        let got = rx.wait_for("live", 1, Duration::from_secs(5)).await;
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert_verified(&got);
        all_delivered(&app, &owner, live.endpoint.id, 1).await;
        let tried = rx.deliveries("dead").await.len();
        let bound = at_most();
        assert!(tried <= bound, "at most 16 at once to one endpoint: {tried} attempts (bound {bound})");
    }
);

/// Two `serve` processes beside the test's own server, on one PostgreSQL database: 200 events,
/// each delivered exactly once to a receiver that always answers 200.
///
/// The test's own server does not deliver: its clock stands still, so the leases it takes
/// (its time + 60 s) would look lapsed to the real-clock nodes a minute into the run, and they
/// would send again what it is still sending. Only the two nodes deliver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_deliver_two_hundred_events_each_exactly_once() {
    if pg_admin_url().is_none() {
        return;
    }
    let app = TestApp::spawn_with(Backend::Postgres, |s| s.deliver_webhooks = false).await;
    let owner = owner(&app).await;
    let rx = Receiver::start().await;
    hook(&app, &owner, &rx, "nodes", &["api_key.*"], true).await;
    let mut tenants = Vec::new();
    for i in 0..10 {
        tenants.push(app.create_tenant(&format!("Tenant {i}"), &format!("tenant-{i}")).await);
    }
    let allow = [("QUARTERDECK_OUTBOUND_ALLOW_PRIVATE", "127.0.0.0/8")];
    let (_a, _b) = tokio::join!(Node::start_with(&app, &allow), Node::start_with(&app, &allow));
    const N: usize = 200;
    for i in 0..N {
        api_key(&app, &owner, &tenants[i % tenants.len()], "").await;
    }
    let got = rx.wait_for("nodes", N, Duration::from_secs(60)).await;
    poll_within("every delivery recorded", Duration::from_secs(30), || async {
        app.control_value("SELECT CAST(count(*) AS TEXT) FROM webhook_delivery WHERE status = 'delivered'")
            .await
            == N.to_string()
    })
    .await;
    let got_now = rx.deliveries("nodes").await;
    let unique: HashSet<&str> = got_now.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(unique.len(), N);
    assert_eq!(
        got_now.len(),
        N,
        "no event twice: {} requests for {N} events",
        got_now.len()
    );
    assert_verified(&got);
    assert_eq!(
        app.control_value("SELECT CAST(max(attempts) AS TEXT) FROM webhook_delivery")
            .await,
        "1"
    );
    // The nodes sign with the real clock, seconds after the test's server's clock stopped (ten
    // tenants and two nodes started since): what they sent is signed later than that.
    let frozen = app.clock_now().unix_timestamp();
    let by_nodes = got_now.iter().filter(|d| d.timestamp > frozen).count();
    eprintln!("deliveries signed after the test server's clock: {by_nodes} of {N}");
    assert!(by_nodes > 0, "the nodes delivered nothing");
    // Each tenant's events in order.
    let events = feed(&app, &owner).await;
    for t in &tenants {
        let in_feed: Vec<&str> = events
            .iter()
            .filter(|e| e["tenant_id"] == t.as_str() && e["type"] == "api_key.created")
            .map(|e| e["id"].as_str().unwrap())
            .collect();
        let received: Vec<&str> = got_now
            .iter()
            .filter(|d| d.tenant.as_deref() == Some(t.as_str()))
            .map(|d| d.id.as_str())
            .collect();
        assert_eq!(received, in_feed, "tenant {t}");
    }
}
