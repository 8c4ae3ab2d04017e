//! Backpressure on usage ingestion (issue 12): while a region's sweep is further behind than
//! `usage_max_lag_seconds`, a batch for it is refused whole with 503 `usage_backlog`, so the
//! journal never runs further ahead of the usage pages than the sweep can catch up with.

use crate::data_plane::{owner, service_token};
use crate::helpers::*;
use crate::usage::{send, tokens, until_tokens};
use crate::{both, both_backends};
use quarterdeck_domain::TenantId;
use serde_json::json;
use time::Duration;

/// Another node takes the region's sweep and then does not sweep: this node's sweeper is
/// left out (its lease is made to lapse by moving the clock). Returns the other node's id.
async fn stall_the_sweep(app: &TestApp, region: &str) -> uuid::Uuid {
    let other = uuid::Uuid::new_v4();
    let store = app.core.store();
    poll_until("another node to hold the region's sweep", || async {
        app.clock.advance(Duration::seconds(31));
        let now = app.clock_now();
        store
            .claim_sweep(region, other, now, now + Duration::hours(1))
            .await
            .unwrap()
    })
    .await;
    other
}

both!(
    async fn a_batch_for_a_region_whose_sweep_is_behind_is_refused_whole_and_taken_once_it_caught_up(app) {
        let owner = owner(&app).await;
        let tid = app.create_tenant("Acme", "acme").await;
        let tenant: TenantId = tid.parse().unwrap();
        let token = service_token(&app, &["usage:write"], "").await;
        let region = app.core.usage_regions()[0].clone();
        let store = app.core.store();
        let (status, body) = send(&app, &token, &json!([tokens("e1", &tid, 5, "gpt-4o")])).await;
        assert_eq!(status, 200, "{body}");
        until_tokens(&app, &owner, tenant, 5).await;

        let other = stall_the_sweep(&app, &region).await;
        let batch = json!([tokens("e2", &tid, 7, "gpt-4o"), tokens("e3", &tid, 1, "gpt-4o")]);
        let r = app
            .client
            .post(app.url("/v1/data-plane/usage"))
            .bearer_auth(&token)
            .header("content-type", crate::usage::BATCH)
            .body(batch.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "1");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "usage_backlog", "{body}");
        let doc: serde_json::Value = app.get("/v1/openapi.json").await.json().await.unwrap();
        crate::openapi::check_response(&doc, "POST", "/v1/data-plane/usage", 503, &body);
        // Nothing of it was taken: the journal holds no entry (its sweep is stalled, so an
        // entry taken would still be there).
        assert_eq!(store.journal_backlog(&region).await.unwrap().0, 0);
        // A batch that cannot be read is still told so first.
        let (status, body) = send(&app, &token, &json!({ "not": "a batch" })).await;
        assert_eq!(status, 400, "{body}");

        // The other node catches up and lets the lease go; the same batch is taken, once.
        let now = app.clock_now();
        store.set_swept_through(&region, other, now).await.unwrap();
        store.claim_sweep(&region, other, now, now).await.unwrap();
        app.clock.advance(Duration::seconds(1));
        let (status, body) = send(&app, &token, &batch).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["accepted"], 2, "{body}");
        until_tokens(&app, &owner, tenant, 13).await;
        assert_eq!(store.usage_event_count(tenant).await.unwrap(), 3);
    }
);

both_backends!(
    async fn with_no_lag_limit_a_batch_is_taken_however_far_behind_the_sweep_is(backend) {
        let app = TestApp::spawn_with(backend, |s| s.usage_max_lag_seconds = Some(0)).await;
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let token = service_token(&app, &["usage:write"], "").await;
        let region = app.core.usage_regions()[0].clone();
        stall_the_sweep(&app, &region).await;
        let (status, body) = send(&app, &token, &json!([tokens("e1", &tid, 5, "gpt-4o")])).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(app.core.store().journal_backlog(&region).await.unwrap().0, 1);
    }
);

both!(
    async fn a_token_of_another_region_learns_nothing_of_a_regions_backlog(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let eu = service_token(&app, &["usage:write"], "eu-west").await;
        let us = service_token(&app, &["usage:write"], "us-east").await;
        stall_the_sweep(&app, "eu-west").await;
        let batch = json!([tokens("a", &tid, 1, "m")]);
        // The tenant is in eu-west: to a us-east token its id is no subject at all, backlog
        // or not.
        let (status, body) = send(&app, &us, &batch).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["rejected"][0]["code"], "unknown_subject", "{body}");
        let (status, body) = send(&app, &eu, &batch).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "usage_backlog", "{body}");
    }
);
