//! Usage reporting: what each served request reports, how batches survive a busy Quarterdeck,
//! and that a full queue never holds a request up.

use std::collections::BTreeSet;

use super::*;
use crate::usage::{Reporter, Served};

/// Polls until `done` holds, for at most 5 s.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn each_served_request_is_reported_as_cloudevents_in_a_batch_with_its_key_as_subject() {
    let world = World::start().await;
    let (status, _, body) = world
        .chat(
            Some("Bearer qd_live_good"),
            r#"{"prompt": "twelve chars", "model": "gpt-4o"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["usage"]["total_tokens"], 6);
    assert_eq!(world.whoami("qd_live_good").await.0, StatusCode::OK);
    // Refused requests are not usage.
    assert_eq!(world.whoami("qd_live_revoked").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        world.chat(Some("Bearer qd_live_good"), r#"{"model": 7}"#).await.0,
        StatusCode::BAD_REQUEST
    );

    until("three events", || world.calls.events_taken().len() == 3).await;
    let posts = world.calls.usage_posts();
    assert!(
        posts
            .iter()
            .all(|(_, ct, _)| ct == "application/cloudevents-batch+json")
    );
    let events = world.calls.events_taken();
    let tokens: Vec<_> = events.iter().filter(|e| e["type"] == "llm.tokens").collect();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0]["data"], json!({"tokens": 6, "model": "gpt-4o"}));
    let requests: Vec<_> = events.iter().filter(|e| e["type"] == "api.requests").collect();
    let endpoints: BTreeSet<_> = requests
        .iter()
        .map(|e| e["data"]["endpoint"].as_str().unwrap())
        .collect();
    assert_eq!(endpoints, BTreeSet::from(["/v1/chat", "/v1/whoami"]));
    let mut ids = BTreeSet::new();
    for event in &events {
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["source"], "gateway-test-1");
        assert_eq!(event["subject"], KEY.to_string());
        let id: Uuid = event["id"].as_str().unwrap().parse().unwrap();
        assert_eq!(id.get_version_num(), 7);
        assert!(ids.insert(id), "ids are unique");
        let time = time::OffsetDateTime::parse(
            event["time"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        assert!((crate::usage::system_now() - time).whole_seconds().abs() < 10);
    }
}

#[tokio::test]
async fn a_batch_quarterdeck_could_not_take_is_sent_again_with_the_same_ids_after_retry_after() {
    let world = World::start().await;
    world.calls.usage_script.lock().unwrap().extend([
        (StatusCode::SERVICE_UNAVAILABLE, None),
        (StatusCode::TOO_MANY_REQUESTS, Some(1)),
    ]);
    assert_eq!(world.whoami("qd_live_good").await.0, StatusCode::OK);
    until("the batch taken", || world.calls.events_taken().len() == 1).await;
    let posts = world.calls.usage_posts();
    assert_eq!(posts.len(), 3, "503, 429, then taken");
    let ids: Vec<_> = posts.iter().map(|(_, _, b)| b["events"][0]["id"].clone()).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "one id throughout: {ids:?}");
    let waited = posts[2].0 - posts[1].0;
    assert!(
        waited >= Duration::from_secs(1),
        "Retry-After: 1 honoured, waited {waited:?}"
    );
}

#[tokio::test]
async fn a_batch_quarterdeck_refuses_for_good_is_not_sent_again() {
    let world = World::start().await;
    world
        .calls
        .usage_script
        .lock()
        .unwrap()
        .push_back((StatusCode::FORBIDDEN, None));
    assert_eq!(world.whoami("qd_live_good").await.0, StatusCode::OK);
    until("the post", || world.calls.usage_posts().len() == 1).await;
    // The next request's events are sent; the refused batch is not among them.
    assert_eq!(world.whoami("qd_live_good").await.0, StatusCode::OK);
    until("the next batch", || world.calls.events_taken().len() == 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(world.calls.usage_posts().len(), 2);
}

#[tokio::test]
async fn a_full_queue_drops_its_oldest_events_and_counts_them() {
    let reporter = Reporter::new(UsageConfig {
        token_meter: None,
        batch_size: 3,
        queue_capacity: 3,
        ..UsageConfig::default()
    });
    let started = Instant::now();
    for i in 0..5u128 {
        reporter.record(&Served {
            key_id: Uuid::from_u128(i),
            endpoint: "/v1/whoami",
            tokens: None,
        });
    }
    assert!(started.elapsed() < Duration::from_millis(100), "recording never waits");
    assert_eq!(reporter.dropped(), 2);
    assert_eq!(reporter.waiting(), 3);
    let subjects: Vec<_> = reporter
        .take_batch()
        .iter()
        .map(|e| e["subject"].as_str().unwrap().to_owned())
        .collect();
    let newest: Vec<_> = (2..5u128).map(|i| Uuid::from_u128(i).to_string()).collect();
    assert_eq!(subjects, newest);
}

#[tokio::test]
async fn a_tenant_over_its_hard_budget_is_a_402_with_a_message() {
    let world = World::start().await;
    let (status, _, body) = world.whoami("qd_live_overbudget").await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(body["error"], "budget_exceeded");
    assert!(body["message"].as_str().unwrap().contains("monthly budget"), "{body}");
    assert_eq!(world.calls.resolve.load(Ordering::SeqCst), 0);
}
