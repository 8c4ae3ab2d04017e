//! Webhook claims and what a delivery carries, driven through the core on a node that does not
//! deliver (`deliver_webhooks = false`), so the test decides when a claim is made and what it
//! finds: leases per claim, the per-endpoint cap, a claim gone stale, region-limited endpoints,
//! and expired impersonations.

use crate::both_backends;
use crate::helpers::*;
use quarterdeck_domain::access::{Authorized, ManageWebhooks};
use quarterdeck_domain::user::{User, UserStatus};
use quarterdeck_domain::webhook::{Attempt, EndpointDraft};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

async fn quiet_node(backend: Backend) -> TestApp {
    TestApp::spawn_with(backend, |s| s.deliver_webhooks = false).await
}

/// The owner's proof, as the console would hold it.
fn owner(app: &TestApp) -> Authorized<ManageWebhooks> {
    let user = User {
        id: quarterdeck_domain::ids::UserId::new(),
        email: quarterdeck_domain::email::EmailAddress::parse(OWNER_EMAIL).unwrap(),
        name: None,
        status: UserStatus::Active,
        roles: vec!["owner".to_owned()],
        tenant_id: None,
        created_at: app.clock_now(),
    };
    app.core.principal_of(&user).require::<ManageWebhooks>().unwrap()
}

async fn endpoint(app: &TestApp, url: &str, region: Option<&str>) -> Uuid {
    let regions = vec!["eu-west".to_owned(), "us-east".to_owned()];
    let draft = EndpointDraft::parse(url, "test", &["tenant.*"], region, true, &regions).unwrap();
    app.core
        .create_webhook_endpoint(&owner(app), draft)
        .await
        .unwrap()
        .endpoint
        .id
}

async fn tenant_in(app: &TestApp, slug: &str, region: &str) -> String {
    let page = app.get_html("/tenants/new").await;
    let r = app
        .post_form(
            "/tenants",
            &page,
            &[("name", slug), ("slug", slug), ("region", region), ("tier", "standard")],
        )
        .await;
    assert_eq!(r.status(), 303, "create failed: {}", r.text().await.unwrap());
    location(&r).split("created=").nth(1).unwrap().to_owned()
}

/// A receiver on loopback that answers every request 200 and counts them.
async fn counting_receiver() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://127.0.0.1:{}/hook", listener.local_addr().unwrap().port());
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                seen.fetch_add(1, Ordering::SeqCst);
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    (url, hits)
}

async fn delivery_row(app: &TestApp, delivery: Uuid) -> (String, i64, bool) {
    let status = app
        .control_value(&format!(
            "SELECT status FROM webhook_delivery WHERE id = {}",
            id_literal(app, delivery)
        ))
        .await;
    let attempts = app
        .control_value(&format!(
            "SELECT CAST(attempts AS TEXT) FROM webhook_delivery WHERE id = {}",
            id_literal(app, delivery)
        ))
        .await;
    let leased = app
        .control_value(&format!(
            "SELECT CASE WHEN lease_token IS NULL THEN 'no' ELSE 'yes' END FROM webhook_delivery WHERE id = {}",
            id_literal(app, delivery)
        ))
        .await;
    (status, attempts.parse().unwrap(), leased == "yes")
}

/// A uuid as an SQL literal: PostgreSQL's uuid text, SQLite's 16-byte blob.
fn id_literal(app: &TestApp, id: Uuid) -> String {
    match app.backend {
        Backend::Postgres => format!("'{id}'"),
        Backend::Sqlite => format!("X'{}'", id.simple()),
    }
}

both_backends!(
    async fn one_endpoints_backlog_does_not_hide_another_endpoints_due_delivery(backend) {
        let app = quiet_node(backend).await;
        app.sign_in_owner().await;
        let busy = endpoint(&app, "http://127.0.0.1:9/busy", None).await;
        for i in 0..5 {
            app.create_tenant(&format!("Backlog {i}"), &format!("backlog-{i}")).await;
        }
        let quiet = endpoint(&app, "http://127.0.0.1:9/quiet", None).await;
        app.create_tenant("Last", "last").await;
        // This node is sending two of the busy endpoint's already, its cap: a claim for one
        // more slot must find the quiet endpoint's delivery behind the busy one's backlog.
        let in_flight = HashMap::from([(busy, 2)]);
        let claimed = app.core.claim_webhooks(1, &in_flight, 2).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].endpoint_id, quiet);
        assert_eq!(claimed[0].topic, "tenant.created");
        // Without the busy endpoint at its cap, each endpoint gets its turn before either gets
        // a second: the busy one's first, then the quiet one has nothing left, then the busy
        // one's next tenants.
        let claimed = app.core.claim_webhooks(3, &HashMap::new(), 2).await.unwrap();
        let endpoints: Vec<Uuid> = claimed.iter().map(|c| c.endpoint_id).collect();
        assert_eq!(endpoints, vec![busy, busy]);
    }
);

both_backends!(
    async fn a_claim_whose_lease_ran_out_is_not_sent_and_the_next_claim_has_a_lease_of_its_own(backend) {
        let app = quiet_node(backend).await;
        app.sign_in_owner().await;
        let (url, hits) = counting_receiver().await;
        endpoint(&app, &url, None).await;
        app.create_tenant("Acme", "acme").await;
        let first = app.core.claim_webhooks(10, &HashMap::new(), 16).await.unwrap();
        assert_eq!(first.len(), 1);
        // The node stalls past its lease; the delivery is claimed again (here, by the same
        // node: a lease belongs to a claim, not to a node).
        app.clock.advance(time::Duration::seconds(61));
        let second = app.core.claim_webhooks(10, &HashMap::new(), 16).await.unwrap();
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].delivery_id, first[0].delivery_id);
        assert_ne!(second[0].lease, first[0].lease);
        let stale = app.core.deliver_webhook(first[0].clone()).await.unwrap();
        assert_eq!(
            stale,
            Attempt::Failed {
                code: "lease_expired".to_owned(),
                millis: 0
            }
        );
        assert_eq!(hits.load(Ordering::SeqCst), 0, "a stale claim sent the webhook");
        let sent = app.core.deliver_webhook(second[0].clone()).await.unwrap();
        assert!(sent.ok(), "{sent:?}");
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        assert_eq!(
            delivery_row(&app, first[0].delivery_id).await,
            ("delivered".to_owned(), 1, false)
        );
    }
);

both_backends!(
    async fn a_delivery_claimed_before_its_endpoint_was_disabled_is_not_sent_and_is_given_back(backend) {
        let app = quiet_node(backend).await;
        app.sign_in_owner().await;
        let (url, hits) = counting_receiver().await;
        let id = endpoint(&app, &url, None).await;
        app.create_tenant("Acme", "acme").await;
        let claimed = app.core.claim_webhooks(10, &HashMap::new(), 16).await.unwrap();
        assert_eq!(claimed.len(), 1);
        app.core
            .set_webhook_endpoint_enabled(&owner(&app), id, false)
            .await
            .unwrap();
        let attempt = app.core.deliver_webhook(claimed[0].clone()).await.unwrap();
        assert!(!attempt.ok());
        assert_eq!(hits.load(Ordering::SeqCst), 0, "sent to a disabled endpoint");
        assert_eq!(
            delivery_row(&app, claimed[0].delivery_id).await,
            ("pending".to_owned(), 0, false)
        );
        // Enabled again, it goes out.
        app.core
            .set_webhook_endpoint_enabled(&owner(&app), id, true)
            .await
            .unwrap();
        let claimed = app.core.claim_webhooks(10, &HashMap::new(), 16).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert!(app.core.deliver_webhook(claimed[0].clone()).await.unwrap().ok());
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }
);

both_backends!(
    async fn a_retried_delivery_is_not_claimed_before_its_back_off_ends(backend) {
        let app = quiet_node(backend).await;
        app.sign_in_owner().await;
        // Nothing listens on port 9: the attempt fails at once.
        endpoint(&app, "http://127.0.0.1:9/down", None).await;
        app.create_tenant("Acme", "acme").await;
        let claimed = app.core.claim_webhooks(10, &HashMap::new(), 16).await.unwrap();
        assert!(!app.core.deliver_webhook(claimed[0].clone()).await.unwrap().ok());
        assert!(app.core.claim_webhooks(10, &HashMap::new(), 16).await.unwrap().is_empty());
        // The first back-off is 2.5 to 5 s.
        app.clock.advance(time::Duration::seconds(6));
        let again = app.core.claim_webhooks(10, &HashMap::new(), 16).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].attempts, 1);
    }
);

both_backends!(
    async fn an_endpoint_limited_to_a_region_gets_that_regions_tenant_created(backend) {
        let app = quiet_node(backend).await;
        app.sign_in_owner().await;
        let us = endpoint(&app, "http://127.0.0.1:9/us", Some("us-east")).await;
        let eu = endpoint(&app, "http://127.0.0.1:9/eu", Some("eu-west")).await;
        tenant_in(&app, "yankee", "us-east").await;
        let claimed = app.core.claim_webhooks(10, &HashMap::new(), 16).await.unwrap();
        let to: Vec<(Uuid, &str)> = claimed.iter().map(|c| (c.endpoint_id, c.topic.as_str())).collect();
        assert_eq!(to, vec![(us, "tenant.created")]);
        assert!(!to.iter().any(|(e, _)| *e == eu));
    }
);

both_backends!(
    async fn an_endpoint_url_is_audited_by_its_origin_without_a_path_or_query_that_may_hold_a_secret(backend) {
        let app = quiet_node(backend).await;
        app.sign_in_owner().await;
        endpoint(&app, "http://127.0.0.1:9/hook?token=receiver-sekrit", None).await;
        endpoint(&app, "http://127.0.0.1:9/services/T0/B0/path-sekrit", None).await;
        let events = app.events_of("WEBHOOK_ENDPOINT_CREATED").await;
        assert_eq!(events.len(), 2);
        for e in &events {
            let details = e.details.to_string();
            assert!(!details.contains("sekrit") && !details.contains("hook"), "{details}");
            assert_eq!(e.details["url"], "http://127.0.0.1:9/…");
        }
    }
);

both_backends!(
    async fn an_impersonation_that_expired_unused_is_ended_by_housekeeping_with_its_event(backend) {
        let app = quiet_node(backend).await;
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let page = app.get_html(&format!("/tenants/{tid}")).await;
        let r = app
            .post_form(
                &format!("/tenants/{tid}/impersonate"),
                &page,
                &[("reason", "Support ticket 42")],
            )
            .await;
        assert!(r.status().is_success() || r.status().is_redirection(), "{}", r.status());
        // Nobody opens it; its 30 minutes pass.
        app.clock.advance(time::Duration::hours(2));
        assert_eq!(app.core.end_expired_impersonations().await.unwrap(), 1);
        assert_eq!(app.core.end_expired_impersonations().await.unwrap(), 0);
        let ended = app.events_of("IMPERSONATION_ENDED").await;
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].details["reason"], "expired");
        let feed = app
            .core
            .events_feed(&owner(&app), None, &["impersonation.ended".to_owned()], 10)
            .await
            .unwrap();
        assert_eq!(feed.events.len(), 1);
        let body: serde_json::Value = serde_json::from_str(&feed.events[0].body).unwrap();
        assert_eq!(body["data"]["end_reason"], "expired");
        // It ended when it expired, not when housekeeping noticed.
        let imp = &body["data"]["impersonation"];
        assert_eq!(imp["ended_at"], imp["expires_at"]);
    }
);

both_backends!(
    async fn narrowing_an_endpoint_cancels_what_it_would_no_longer_be_sent_and_resend_refuses_it(backend) {
        let app = quiet_node(backend).await;
        app.sign_in_owner().await;
        let id = endpoint(&app, "http://127.0.0.1:9/all", None).await;
        app.core
            .set_webhook_endpoint_enabled(&owner(&app), id, false)
            .await
            .unwrap();
        tenant_in(&app, "yankee", "us-east").await;
        tenant_in(&app, "europa", "eu-west").await;
        // Pointed at the EU receiver, limited to eu-west, and enabled: only eu-west's event goes.
        let e = app.core.webhook_endpoint(&owner(&app), id).await.unwrap();
        let regions = vec!["eu-west".to_owned(), "us-east".to_owned()];
        let draft = EndpointDraft::parse(&e.url, "eu", &["*"], Some("eu-west"), true, &regions).unwrap();
        app.core
            .update_webhook_endpoint(&owner(&app), id, draft, e.updated_at)
            .await
            .unwrap();
        let claimed = app.core.claim_webhooks(10, &HashMap::new(), 16).await.unwrap();
        assert_eq!(claimed.len(), 1);
        let body: serde_json::Value = serde_json::from_str(&claimed[0].body).unwrap();
        assert_eq!(body["data"]["tenant"]["slug"], "europa");
        let deliveries = app
            .core
            .webhook_deliveries(&owner(&app), id, 10, None)
            .await
            .unwrap();
        let cancelled: Vec<_> = deliveries.iter().filter(|d| d.status == "cancelled").collect();
        assert_eq!(cancelled.len(), 1);
        let err = app
            .core
            .resend_webhook_delivery(&owner(&app), id, cancelled[0].id)
            .await
            .unwrap_err();
        assert!(matches!(err, quarterdeck_domain::Error::Conflict { code: "not_subscribed", .. }), "{err:?}");
    }
);

both_backends!(
    async fn a_tenant_moved_to_another_region_is_told_to_endpoints_of_both_regions(backend) {
        let app = quiet_node(backend).await;
        app.sign_in_owner().await;
        let tid = tenant_in(&app, "mover", "eu-west").await;
        let eu = endpoint(&app, "http://127.0.0.1:9/eu", Some("eu-west")).await;
        let us = endpoint(&app, "http://127.0.0.1:9/us", Some("us-east")).await;
        let page = app.get_html(&format!("/tenants/{tid}")).await;
        let r = app
            .post_form(
                &format!("/tenants/{tid}"),
                &page,
                &[("name", "mover"), ("region", "us-east"), ("tier", "standard")],
            )
            .await;
        assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
        let claimed = app.core.claim_webhooks(10, &HashMap::new(), 16).await.unwrap();
        let mut to: Vec<(Uuid, String)> = claimed.iter().map(|c| (c.endpoint_id, c.topic.clone())).collect();
        to.sort();
        let mut want = vec![(eu, "tenant.updated".to_owned()), (us, "tenant.updated".to_owned())];
        want.sort();
        assert_eq!(to, want);
    }
);

both_backends!(
    async fn an_endpoint_whose_region_is_no_longer_configured_keeps_it_on_its_edit_form(backend) {
        let app = quiet_node(backend).await;
        app.sign_in_owner().await;
        // Made when `ap-south` was a configured region (this server has eu-west and us-east).
        let was = vec!["ap-south".to_owned()];
        let draft = EndpointDraft::parse("http://127.0.0.1:9/ap", "asia", &["*"], Some("ap-south"), true, &was).unwrap();
        let id = app
            .core
            .create_webhook_endpoint(&owner(&app), draft)
            .await
            .unwrap()
            .endpoint
            .id;
        let page = app.get_html(&format!("/settings/webhooks/{id}")).await;
        assert!(
            page.contains("<option value=\"ap-south\" selected>ap-south (no longer configured)</option>"),
            "{page}"
        );
        // Saved as shown: refused, not widened to every region.
        let at = page.find("name=\"version\" value=\"").unwrap() + "name=\"version\" value=\"".len();
        let version = page[at..].split('"').next().unwrap().to_owned();
        let r = app
            .post_form(
                &format!("/settings/webhooks/{id}"),
                &page,
                &[
                    ("url", "http://127.0.0.1:9/ap"),
                    ("description", "asia"),
                    ("event_types", "*"),
                    ("region", "ap-south"),
                    ("version", &version),
                ],
            )
            .await;
        assert_eq!(r.status(), 422);
        assert_eq!(app.control_value("SELECT region FROM webhook_endpoint").await, "ap-south");
    }
);

both_backends!(
    async fn a_delivery_that_cannot_be_signed_is_a_failed_attempt_retried_later_and_nothing_is_sent(backend) {
        let app = quiet_node(backend).await;
        app.sign_in_owner().await;
        let (url, hits) = counting_receiver().await;
        endpoint(&app, &url, None).await;
        app.create_tenant("Acme", "acme").await;
        // The secret no longer opens (as after a change of the server's secret key).
        app.control_exec("UPDATE webhook_endpoint SET secret_sealed = 'not-a-sealed-secret'").await;
        let claimed = app.core.claim_webhooks(10, &HashMap::new(), 16).await.unwrap();
        let attempt = app.core.deliver_webhook(claimed[0].clone()).await.unwrap();
        assert_eq!(
            attempt,
            Attempt::Failed {
                code: "signing_failed".to_owned(),
                millis: 0
            }
        );
        assert_eq!(hits.load(Ordering::SeqCst), 0);
        assert_eq!(
            delivery_row(&app, claimed[0].delivery_id).await,
            ("pending".to_owned(), 1, false)
        );
        assert!(app
            .core
            .webhook_counters()
            .contains(&("signing_failed", 1)));
    }
);
