//! Usage across nodes (issue 12): three `serve` processes on one PostgreSQL database take the
//! same events, each sweeping under the region's lease; every event is counted once and a
//! budget's crossings are recorded (and emailed) once. The region's sweep lease is renewed only
//! by its holder, taken over only once it lapsed, and free at once when given back.

use crate::data_plane::{owner, service_token};
use crate::data_plane_nodes::Node;
use crate::helpers::*;
use crate::usage::{BATCH, tokens, until_tokens};
use quarterdeck_domain::TenantId;
use quarterdeck_domain::access::ManageBudgets;
use quarterdeck_domain::budget::BudgetRequest;
use serde_json::Value;

async fn post(base: &str, token: &str, batch: &Value) -> u16 {
    reqwest::Client::new()
        .post(format!("{base}/v1/data-plane/usage"))
        .bearer_auth(token)
        .header("content-type", BATCH)
        .body(batch.to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn events_sent_to_every_node_are_counted_once_and_a_budget_is_crossed_once() {
    let Some(app) = TestApp::spawn_pg().await else { return };
    let owner = owner(&app).await;
    let tid = app.create_tenant("Acme", "acme").await;
    let tenant: TenantId = tid.parse().unwrap();
    app.tenant_admin(&tid, "acme", "admin@acme.example").await;
    let token = service_token(&app, &["usage:write"], "").await;
    // USD 1.00 with a hard limit: 400,000 tokens at the default USD 2.50 per million.
    let billing = owner.require::<ManageBudgets>().unwrap();
    let budget = BudgetRequest {
        amount: "1".into(),
        threshold_percent: String::new(),
        hard_limit: true,
    };
    app.core.set_budget(&billing, tenant, &budget).await.unwrap();
    let (a, b) = tokio::join!(Node::start(&app), Node::start(&app));
    let this = app.url("");
    for i in 0..30 {
        let batch: Vec<Value> = (0..100)
            .map(|j| tokens(&format!("{i}-{j}"), &tid, 1000, "gpt-4o"))
            .collect();
        let batch = Value::from(batch);
        // The same batch to all three at once: a retry that went to another node.
        let (x, y, z) = tokio::join!(
            post(&this, &token, &batch),
            post(&a.url, &token, &batch),
            post(&b.url, &token, &batch)
        );
        assert_eq!((x, y, z), (200, 200, 200));
    }
    until_tokens(&app, &owner, tenant, 3_000_000).await;
    assert_eq!(app.core.store().usage_event_count(tenant).await.unwrap(), 3000);
    assert_eq!(app.events_of("BUDGET_THRESHOLD_REACHED").await.len(), 1);
    assert_eq!(app.events_of("BUDGET_EXCEEDED").await.len(), 1);
    // The rows themselves (another node's worker may have sent them already).
    let to_admin = app
        .control_value(
            "SELECT CAST(count(*) AS TEXT) FROM outbox WHERE to_addr = 'admin@acme.example' AND subject LIKE '%budget%'",
        )
        .await;
    assert_eq!(to_admin, "2", "one threshold email and one limit email");
}

crate::both!(
    async fn a_sweep_lease_is_renewed_only_by_its_holder_and_taken_over_only_once_it_lapsed(app) {
        use quarterdeck_domain::core::SWEEP_LEASE;
        // A region nobody else sweeps; two holders standing for two nodes.
        let region = "lease-test";
        let store = app.core.store();
        let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        let now = app.clock_now();
        assert!(store.claim_sweep(region, a, now, now + SWEEP_LEASE).await.unwrap());
        // Another node neither claims nor renews a live lease, and gives back nothing.
        assert!(!store.claim_sweep(region, b, now, now + SWEEP_LEASE).await.unwrap());
        assert!(!store.renew_sweep(region, b, now + SWEEP_LEASE * 2).await.unwrap());
        assert!(!store.release_sweep(region, b).await.unwrap());
        // The holder renews it; lapsed, another node takes it, and the old holder's renewal
        // (a sweep still running there) no longer holds anything.
        assert!(store.renew_sweep(region, a, now + SWEEP_LEASE).await.unwrap());
        app.clock.advance(SWEEP_LEASE + time::Duration::seconds(1));
        let later = app.clock_now();
        assert!(store.claim_sweep(region, b, later, later + SWEEP_LEASE).await.unwrap());
        assert!(!store.renew_sweep(region, a, later + SWEEP_LEASE).await.unwrap());
        assert!(!store.claim_sweep(region, a, later, later + SWEEP_LEASE).await.unwrap());
        // Given back (a node stopping), it is free at once.
        assert!(store.release_sweep(region, b).await.unwrap());
        assert!(store.claim_sweep(region, a, later, later + SWEEP_LEASE).await.unwrap());
    }
);
