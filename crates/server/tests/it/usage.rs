//! Usage ingestion: CloudEvents batches journaled durably, swept into the tenants' databases
//! exactly once, budgets crossed once a month and the hard limit stopping keys (issue 12).

use crate::data_plane::{api_key, owner, service_token, verify};
use crate::helpers::*;
use crate::{both, both_backends};
use quarterdeck_domain::access::{ManageBudgets, ReadUsage};
use quarterdeck_domain::budget::BudgetRequest;
use quarterdeck_domain::usage::{JournalEntry, MeterCatalog, Month};
use quarterdeck_domain::{Principal, TenantId};
use serde_json::{Value, json};

pub const BATCH: &str = "application/cloudevents-batch+json";

/// A CloudEvent of `llm.tokens` for `subject`.
pub fn tokens(id: &str, subject: &str, n: i64, model: &str) -> Value {
    json!({
        "specversion": "1.0", "id": id, "source": "gateway-1", "type": "llm.tokens",
        "subject": subject, "data": { "tokens": n, "model": model }
    })
}

/// A journal entry of `value` `llm.tokens` for `tenant`, sent and received `now` (source
/// "s", no key, no dimension values); tests change what they need with `..entry(…)`.
pub fn entry(tenant: TenantId, id: &str, value: i64, now: time::OffsetDateTime) -> JournalEntry {
    JournalEntry {
        tenant_id: tenant,
        api_key_id: None,
        source: "s".into(),
        event_id: id.into(),
        meter: "llm.tokens".into(),
        time: now,
        value,
        dims: "{}".into(),
        received_at: now,
    }
}

/// POST a batch; (status, body).
pub async fn send(app: &TestApp, token: &str, events: &Value) -> (u16, Value) {
    let r = app
        .client
        .post(app.url("/v1/data-plane/usage"))
        .bearer_auth(token)
        .header("content-type", BATCH)
        .body(events.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The tenant's total of `llm.tokens` this month, as the cost report's summary has it.
pub async fn month_tokens(app: &TestApp, who: &Principal, tenant: TenantId) -> i64 {
    let proof = who.require_for_tenant::<ReadUsage>(tenant).unwrap();
    let report = app.core.cost_report(&proof, 1).await.unwrap();
    report.months[0]
        .lines
        .iter()
        .filter(|l| l.meter == "llm.tokens")
        .map(|l| l.quantity)
        .sum()
}

/// Wait until the sweep has put `want` tokens of this month into the tenant's summary.
pub async fn until_tokens(app: &TestApp, who: &Principal, tenant: TenantId, want: i64) {
    poll_until(&format!("{want} tokens swept"), || async {
        month_tokens(app, who, tenant).await == want
    })
    .await;
}

both!(
    async fn a_batch_sent_twice_is_counted_once_in_the_tenants_own_database(app) {
        let owner = owner(&app).await;
        let tid = app.create_tenant("Acme", "acme").await;
        let tenant: TenantId = tid.parse().unwrap();
        let (key, _) = api_key(&app, &owner, &tid, "").await;
        let token = service_token(&app, &["usage:write"], "").await;
        let batch = json!([
            tokens("e1", &key.to_string(), 100, "gpt-4o"),
            tokens("e2", &key.to_string(), 20, "gpt-4o-mini"),
            tokens("e3", &tid, 3, "gpt-4o"),
            tokens("e1", &key.to_string(), 100, "gpt-4o"),
        ]);
        let (status, body) = send(&app, &token, &batch).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, json!({ "accepted": 4, "rejected": [] }));
        let (status, _) = send(&app, &token, &batch).await;
        assert_eq!(status, 200);
        until_tokens(&app, &owner, tenant, 123).await;
        // The rows themselves: three raw events in the tenant's database, whatever was resent.
        assert_eq!(app.core.store().usage_event_count(tenant).await.unwrap(), 3);
        let proof = owner.require_for_tenant::<ReadUsage>(tenant).unwrap();
        let today = app.clock_now().date();
        let report = app.core.usage_report(&proof, today, today).await.unwrap();
        let m = report.meters.iter().find(|m| m.meter.event_type == "llm.tokens").unwrap();
        assert_eq!((m.total, m.events), (123, 3));
        let by_key: Vec<_> = m.by_key.iter().map(|s| (s.label.as_str(), s.value)).collect();
        assert_eq!(by_key, vec![("ci", 120), ("(the tenant itself)", 3)]);
        let by_model: Vec<_> = m.by_dimension.iter().map(|s| (s.label.as_str(), s.value)).collect();
        assert_eq!(by_model, vec![("model=gpt-4o", 103), ("model=gpt-4o-mini", 20)]);
        assert!(report.freshness.through.is_some());
    }
);

both!(
    async fn each_bad_event_is_rejected_with_its_reason_and_the_rest_are_kept(app) {
        let owner = owner(&app).await;
        let tid = app.create_tenant("Acme", "acme").await;
        let tenant: TenantId = tid.parse().unwrap();
        let frozen = app.create_tenant("Frozen", "frozen").await;
        let page = app.get_html(&format!("/tenants/{frozen}")).await;
        let r = app
            .post_form(&format!("/tenants/{frozen}/status"), &page, &[("status", "suspended"), ("reason", "unpaid")])
            .await;
        assert!(r.status().is_redirection() || r.status().is_success(), "{}", r.status());
        let token = service_token(&app, &["usage:write"], "").await;
        let mut unknown_meter = tokens("b", &tid, 1, "m");
        unknown_meter["type"] = json!("gpu.seconds");
        let mut missing = tokens("d", &tid, 1, "m");
        missing["data"] = json!({ "model": "m" });
        let mut late = tokens("e", &tid, 1, "m");
        late["time"] = json!("2001-01-01T00:00:00Z");
        let mut fraction = tokens("g", &tid, 1, "m");
        fraction["data"]["tokens"] = json!(2.5);
        let batch = json!([
            tokens("a", &tid, 5, "m"),
            unknown_meter,
            tokens("c", &uuid::Uuid::new_v4().to_string(), 1, "m"),
            missing,
            late,
            tokens("f", &frozen, 1, "m"),
            fraction,
            "not an event",
        ]);
        let (status, body) = send(&app, &token, &batch).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["accepted"], 1);
        let codes: Vec<(u64, &str)> = body["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["index"].as_u64().unwrap(), r["code"].as_str().unwrap()))
            .collect();
        assert_eq!(
            codes,
            vec![
                (1, "unknown_meter"),
                (2, "unknown_subject"),
                (3, "missing_value"),
                (4, "bad_time"),
                (5, "tenant_suspended"),
                (6, "invalid_value"),
                (7, "invalid_event"),
            ]
        );
        assert_eq!(body["rejected"][0]["id"], "b");
        until_tokens(&app, &owner, tenant, 5).await;
    }
);

both!(
    async fn a_malformed_request_is_refused_whole_with_a_stable_code(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let token = service_token(&app, &["usage:write"], "").await;
        let post = |ct: &'static str, body: String| {
            app.client
                .post(app.url("/v1/data-plane/usage"))
                .bearer_auth(&token)
                .header("content-type", ct)
                .body(body)
                .send()
        };
        let r = post(BATCH, "{not json".into()).await.unwrap();
        assert_eq!(r.status(), 400);
        assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "invalid_json");
        let r = post(BATCH, tokens("x", &tid, 1, "m").to_string()).await.unwrap();
        assert_eq!(r.status(), 400);
        assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "invalid_batch");
        let r = post("text/plain", "[]".into()).await.unwrap();
        assert_eq!(r.status(), 415);
        assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "unsupported_media_type");
        let many: Vec<Value> = (0..1001).map(|i| tokens(&i.to_string(), &tid, 1, "m")).collect();
        let r = post(BATCH, Value::from(many).to_string()).await.unwrap();
        assert_eq!(r.status(), 413);
        assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "batch_too_large");
        // One event, as application/cloudevents+json.
        let r = post("application/cloudevents+json", tokens("one", &tid, 1, "m").to_string())
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.json::<Value>().await.unwrap()["accepted"], 1);
        // A token without usage:write, and none at all.
        let verify_only = service_token(&app, &["keys:verify"], "").await;
        let (status, body) = send(&app, &verify_only, &json!([])).await;
        assert_eq!((status, body["error"]["code"].as_str()), (403, Some("insufficient_scope")));
        let r = app
            .client
            .post(app.url("/v1/data-plane/usage"))
            .header("content-type", BATCH)
            .body("[]")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
);

both!(
    async fn a_token_limited_to_a_region_cannot_report_for_another_regions_tenant(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let token = service_token(&app, &["usage:write"], "us-east").await;
        let (status, body) = send(&app, &token, &json!([tokens("a", &tid, 1, "m")])).await;
        assert_eq!(status, 200);
        assert_eq!(body["accepted"], 0);
        assert_eq!(body["rejected"][0]["code"], "unknown_subject");
    }
);

both_backends!(
    async fn a_flood_from_one_token_is_rate_limited_with_retry_after(backend) {
        let app = TestApp::spawn_with(backend, |s| s.usage_events_per_second = 10).await;
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let token = service_token(&app, &["usage:write"], "").await;
        // A burst of twice the rate is allowed; the next event is not.
        let burst: Vec<Value> = (0..20).map(|i| tokens(&format!("a{i}"), &tid, 1, "m")).collect();
        let (status, body) = send(&app, &token, &Value::from(burst)).await;
        assert_eq!((status, body["accepted"].as_u64()), (200, Some(20)), "{body}");
        let r = app
            .client
            .post(app.url("/v1/data-plane/usage"))
            .bearer_auth(&token)
            .header("content-type", BATCH)
            .body(json!([tokens("over", &tid, 1, "m")]).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 429);
        let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "rate_limited");
        // Another token is not held back by this one's flood.
        let other = service_token(&app, &["usage:write"], "").await;
        let (status, _) = send(&app, &other, &json!([tokens("b", &tid, 1, "m")])).await;
        assert_eq!(status, 200);
    }
);

both!(
    async fn a_sweep_repeated_after_a_crash_counts_nothing_twice(app) {
        let owner = owner(&app).await;
        let tid = app.create_tenant("Acme", "acme").await;
        let tenant: TenantId = tid.parse().unwrap();
        let meters = MeterCatalog::new(MeterCatalog::defaults()).unwrap();
        let now = app.clock_now();
        let entries: Vec<JournalEntry> = (0..3)
            .map(|i| JournalEntry {
                dims: r#"{"model":"m"}"#.into(),
                ..entry(tenant, &format!("id-{i}"), 10, now)
            })
            .collect();
        let store = app.core.store();
        let first = store.apply_usage(tenant, &entries, &meters).await.unwrap();
        assert_eq!(first.inserted, 3);
        // The "crash": the same entries applied again, as a sweep that died before deleting
        // them from the journal would.
        let again = store.apply_usage(tenant, &entries, &meters).await.unwrap();
        assert_eq!(again.inserted, 0);
        assert_eq!(again.months, first.months);
        assert_eq!(again.months[0].0, Month::of(now));
        assert_eq!(again.months[0].1[0].value, 30);
        store
            .put_usage_months(&[(Month::of(now), tenant, again.months[0].1.clone())])
            .await
            .unwrap();
        assert_eq!(month_tokens(&app, &owner, tenant).await, 30);
    }
);

both!(
    async fn a_hard_budget_stops_the_tenants_keys_until_it_is_raised(app) {
        let owner = owner(&app).await;
        let tid = app.create_tenant("Acme", "acme").await;
        let tenant: TenantId = tid.parse().unwrap();
        app.tenant_admin(&tid, "acme", "admin@acme.example").await;
        let (key, secret) = api_key(&app, &owner, &tid, "").await;
        let usage = service_token(&app, &["usage:write", "keys:verify"], "").await;
        let billing = owner.require::<ManageBudgets>().unwrap();
        // USD 10.00 with a hard limit; 2.50 per million tokens by default.
        let req = BudgetRequest {
            amount: "10".into(),
            threshold_percent: "80".into(),
            hard_limit: true,
        };
        app.core.set_budget(&billing, tenant, &req).await.unwrap();
        // 3.5 M tokens = USD 8.75: past the 80 % threshold, under the budget.
        let (s, _) = send(&app, &usage, &json!([tokens("a", &key.to_string(), 3_500_000, "m")])).await;
        assert_eq!(s, 200);
        until_tokens(&app, &owner, tenant, 3_500_000).await;
        poll_until("the threshold event", || async {
            !app.events_of("BUDGET_THRESHOLD_REACHED").await.is_empty()
        })
        .await;
        assert_eq!(verify(&app, &usage, &secret).await.1["valid"], true);
        // Another 1 M: USD 11.25, over.
        send(&app, &usage, &json!([tokens("b", &key.to_string(), 1_000_000, "m")])).await;
        poll_until("the key stopped", || async {
            verify(&app, &usage, &secret).await.1["code"] == "budget_exceeded"
        })
        .await;
        assert_eq!(app.events_of("BUDGET_EXCEEDED").await.len(), 1);
        assert_eq!(app.events_of("BUDGET_THRESHOLD_REACHED").await.len(), 1);
        let outbox = app.outbox().await;
        let to_admin: Vec<_> = outbox.iter().filter(|m| m.to == "admin@acme.example").collect();
        assert!(to_admin.iter().any(|m| m.subject.contains("80%")), "{to_admin:?}");
        assert!(to_admin.iter().any(|m| m.subject.contains("reached its monthly budget")));
        // More usage does not write the events again.
        send(&app, &usage, &json!([tokens("c", &key.to_string(), 1, "m")])).await;
        until_tokens(&app, &owner, tenant, 4_500_001).await;
        assert_eq!(app.events_of("BUDGET_EXCEEDED").await.len(), 1);
        // A raised budget lets the key work again at once.
        let raised = BudgetRequest {
            amount: "100".into(),
            threshold_percent: String::new(),
            hard_limit: true,
        };
        let status = app.core.set_budget(&billing, tenant, &raised).await.unwrap();
        assert!(!status.blocked);
        assert_eq!(verify(&app, &usage, &secret).await.1["valid"], true);
        assert_eq!(app.events_of("BUDGET_SET").await.len(), 2);
    }
);

both!(
    async fn a_quantity_past_the_cap_or_an_id_with_a_nul_is_refused_alone(app) {
        let owner = owner(&app).await;
        let tid = app.create_tenant("Acme", "acme").await;
        let tenant: TenantId = tid.parse().unwrap();
        let token = service_token(&app, &["usage:write"], "").await;
        let batch = json!([
            tokens("ok", &tid, 7, "m"),
            tokens("huge", &tid, 1_000_000_000_001, "m"),
            tokens("nul\u{0}id", &tid, 1, "m"),
            tokens("ok-2", &tid, 1, "nul\u{0}model"),
        ]);
        let (status, body) = send(&app, &token, &batch).await;
        // PostgreSQL's text refuses NUL: before, the whole batch failed there with 503.
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["accepted"], 1);
        let codes: Vec<&str> = body["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["code"].as_str().unwrap())
            .collect();
        assert_eq!(codes, vec!["invalid_value", "invalid_event", "invalid_event"]);
        until_tokens(&app, &owner, tenant, 7).await;
    }
);

both!(
    async fn odd_ids_and_dimension_values_are_stored_exactly_and_told_apart(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let tenant: TenantId = tid.parse().unwrap();
        let meters = MeterCatalog::new(MeterCatalog::defaults()).unwrap();
        let now = app.clock_now();
        let dims = r#"{"model":"gpt-4o \"mini\" \\ ✓ 😀"}"#;
        let event = |id: &str, value: i64| JournalEntry {
            source: "gate \"1\"".into(),
            dims: dims.into(),
            ..entry(tenant, id, value, now)
        };
        let store = app.core.store();
        // Ids that look like numbers stay text: "1", "01" and "1.0" are three events.
        let batch = [event("1", 1), event("01", 2), event("1.0", 4), event("'; --", 8), event("-1", -16)];
        let applied = store.apply_usage(tenant, &batch, &meters).await.unwrap();
        assert_eq!(applied.inserted, 5);
        let again = store.apply_usage(tenant, &batch, &meters).await.unwrap();
        assert_eq!(again.inserted, 0);
        assert_eq!(store.usage_event_count(tenant).await.unwrap(), 5);
        let rollups = store
            .usage_rollups(tenant, now - time::Duration::hours(1), now + time::Duration::hours(1))
            .await
            .unwrap();
        assert_eq!(rollups.len(), 1, "{rollups:?}");
        assert_eq!(rollups[0].dims, dims);
        assert_eq!((rollups[0].value, rollups[0].events), (1 + 2 + 4 + 8 - 16, 5));
    }
);

both!(
    async fn rollups_saturate_instead_of_failing_the_tenants_every_sweep(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let tenant: TenantId = tid.parse().unwrap();
        let meters = MeterCatalog::new(MeterCatalog::defaults()).unwrap();
        let now = app.clock_now();
        let big = |id: &str| entry(tenant, id, i64::MAX / 2 + 1, now);
        let store = app.core.store();
        // Before, the second apply failed (bigint out of range / integer overflow), and the
        // tenant's entries stayed in the journal for ever.
        store.apply_usage(tenant, &[big("a")], &meters).await.unwrap();
        let applied = store.apply_usage(tenant, &[big("b")], &meters).await.unwrap();
        assert_eq!(applied.inserted, 1);
        assert_eq!(applied.months[0].1[0].value, i64::MAX);
    }
);

both!(
    async fn a_budget_raised_on_another_node_is_enforced_again_when_exceeded_anew(app) {
        let owner = owner(&app).await;
        let tid = app.create_tenant("Acme", "acme").await;
        let tenant: TenantId = tid.parse().unwrap();
        let (key, secret) = api_key(&app, &owner, &tid, "").await;
        let token = service_token(&app, &["usage:write", "keys:verify"], "").await;
        let billing = owner.require::<ManageBudgets>().unwrap();
        let one_dollar = BudgetRequest {
            amount: "1".into(),
            threshold_percent: String::new(),
            hard_limit: true,
        };
        app.core.set_budget(&billing, tenant, &one_dollar).await.unwrap();
        send(&app, &token, &json!([tokens("a", &key.to_string(), 500_000, "m")])).await;
        poll_until("the key stopped", || async {
            verify(&app, &token, &secret).await.1["code"] == "budget_exceeded"
        })
        .await;
        // Another node raises the budget: this node's core is not told, only the database.
        let now = app.clock_now();
        let raised = quarterdeck_domain::budget::Budget {
            tenant_id: tenant,
            amount: 200,
            threshold_percent: 80,
            hard_limit: true,
            updated_by: None,
            updated_at: now + time::Duration::seconds(1),
        };
        let event = quarterdeck_domain::audit::NewEvent::new(
            now,
            quarterdeck_domain::audit::EventType::BudgetSet,
            &quarterdeck_domain::access::Actor::system(),
            Some(tenant),
            json!({}),
        );
        app.core
            .store()
            .put_budget(&raised, &Month::of(now).to_string(), event)
            .await
            .unwrap();
        poll_until("the key working again", || async {
            verify(&app, &token, &secret).await.1["valid"] == true
        })
        .await;
        // USD 2.50 in all: past the raised USD 2.00.
        send(&app, &token, &json!([tokens("b", &key.to_string(), 500_000, "m")])).await;
        poll_until("the key stopped again", || async {
            verify(&app, &token, &secret).await.1["code"] == "budget_exceeded"
        })
        .await;
        assert_eq!(app.events_of("BUDGET_EXCEEDED").await.len(), 2);
    }
);

both!(
    async fn a_crossing_judged_against_a_budget_since_changed_is_not_recorded(app) {
        let owner = owner(&app).await;
        let tid = app.create_tenant("Acme", "acme").await;
        let tenant: TenantId = tid.parse().unwrap();
        let billing = owner.require::<ManageBudgets>().unwrap();
        let req = |amount: &str| BudgetRequest {
            amount: amount.into(),
            threshold_percent: String::new(),
            hard_limit: true,
        };
        let old = app.core.set_budget(&billing, tenant, &req("1")).await.unwrap();
        app.clock.advance(time::Duration::seconds(1));
        app.core.set_budget(&billing, tenant, &req("100")).await.unwrap();
        let now = app.clock_now();
        let event = quarterdeck_domain::audit::NewEvent::new(
            now,
            quarterdeck_domain::audit::EventType::BudgetExceeded,
            &quarterdeck_domain::access::Actor::system(),
            Some(tenant),
            json!({}),
        );
        // A sweep that read the old budget and finished after the raise.
        let recorded = app
            .core
            .store()
            .record_budget_crossing(
                tenant,
                &Month::of(now).to_string(),
                quarterdeck_domain::budget::Crossing::Exceeded,
                old.budget.updated_at,
                Some(Month::of(now).end()),
                &[],
                event,
            )
            .await
            .unwrap();
        assert!(!recorded);
        assert_eq!(app.core.store().budget_block(tenant).await.unwrap(), None);
        assert!(app.events_of("BUDGET_EXCEEDED").await.is_empty());
    }
);

both!(
    async fn raw_events_are_kept_for_the_window_after_they_arrive_whatever_time_they_claim(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let tenant: TenantId = tid.parse().unwrap();
        let meters = MeterCatalog::new(MeterCatalog::defaults()).unwrap();
        let now = app.clock_now();
        let backdated = JournalEntry {
            time: now - time::Duration::days(34),
            ..entry(tenant, "old", 1, now)
        };
        let store = app.core.store();
        store.apply_usage(tenant, std::slice::from_ref(&backdated), &meters).await.unwrap();
        // A day later the housekeeping prunes what arrived more than 35 days ago: not this one,
        // so a resend is still recognised.
        app.clock.advance(time::Duration::days(1));
        app.core.prune_usage().await.unwrap();
        assert_eq!(store.usage_event_count(tenant).await.unwrap(), 1);
        let again = store.apply_usage(tenant, &[backdated], &meters).await.unwrap();
        assert_eq!(again.inserted, 0);
        app.clock.advance(time::Duration::days(35));
        app.core.prune_usage().await.unwrap();
        assert_eq!(store.usage_event_count(tenant).await.unwrap(), 0);
    }
);

both!(
    async fn a_sweep_takes_an_older_nodes_per_event_rows_beside_batch_rows(app) {
        // A rolling upgrade: a node before batch rows journaled one row per event; this node
        // journals a row per batch (on SQLite; PostgreSQL's journal stays per event). The
        // sweep moves both, once each.
        let owner = owner(&app).await;
        let tid = app.create_tenant("Acme", "acme").await;
        let tenant: TenantId = tid.parse().unwrap();
        let token = service_token(&app, &["usage:write"], "").await;
        let region = app.core.usage_regions()[0].clone();
        let store = app.core.store();
        store.journal_backlog(&region).await.unwrap();
        let micros = app.clock_now().unix_timestamp_nanos() / 1_000;
        match &app.pg_url {
            Some(_) => {
                app.control_exec(&format!(
                    "INSERT INTO usage_journal (region, tenant_id, api_key_id, source, event_id, meter, event_time, value, dims, received_at) \
                     VALUES ('{region}', '{tid}', NULL, 'gateway-1', 'old-1', 'llm.tokens', now(), 7, '{{\"model\":\"gpt-4o\"}}', now())"
                ))
                .await
            }
            None => {
                use sqlx::ConnectOptions;
                let file = app.data_dir().join("usage").join(format!("{region}.db"));
                let mut conn = sqlx::sqlite::SqliteConnectOptions::new().filename(file).connect().await.unwrap();
                sqlx::query(
                    "INSERT INTO usage_journal (region, tenant_id, api_key_id, source, event_id, meter, event_time, value, dims, received_at) \
                     VALUES (?, ?, NULL, 'gateway-1', 'old-1', 'llm.tokens', ?, 7, '{\"model\":\"gpt-4o\"}', ?)",
                )
                .bind(&region)
                .bind(tenant.0)
                .bind(micros as i64)
                .bind(micros as i64)
                .execute(&mut conn)
                .await
                .unwrap();
            }
        }
        // The same event again in a batch (counted once), and two new ones.
        let batch = json!([
            tokens("old-1", &tid, 7, "gpt-4o"),
            tokens("new-1", &tid, 100, "gpt-4o"),
            tokens("new-2", &tid, 20, "gpt-4o-mini"),
        ]);
        let (status, body) = send(&app, &token, &batch).await;
        assert_eq!(status, 200, "{body}");
        until_tokens(&app, &owner, tenant, 127).await;
        assert_eq!(store.usage_event_count(tenant).await.unwrap(), 3);
        poll_until("the journal emptied", || async {
            store.journal_backlog(&region).await.unwrap() == (0, None)
        })
        .await;
    }
);

both!(
    async fn a_journal_row_settled_with_a_tenant_held_back_keeps_just_that_tenants_entries(app) {
        use quarterdeck_domain::usage::{JournalCursor, JournalKey};
        // A region nobody sweeps, so that only this test settles its rows.
        let region = "settle-test";
        let store = app.core.store();
        let (a, b) = (TenantId(uuid::Uuid::new_v4()), TenantId(uuid::Uuid::new_v4()));
        let now = app.clock_now();
        let entry = |tenant_id: TenantId, id: &str| entry(tenant_id, id, 1, now);
        store
            .journal_append(region, &[entry(a, "a-1"), entry(b, "b-1"), entry(a, "a-2")])
            .await
            .unwrap();
        let take = store.journal_take(region, JournalCursor::default(), 1000).await.unwrap();
        assert_eq!((take.entries, take.full), (3, false));
        // As a sweep settles it when `a` was applied and `b` was held back.
        let mut done = Vec::new();
        let mut kept: Vec<(JournalKey, Vec<JournalEntry>)> = Vec::new();
        for row in &take.rows {
            let held: Vec<JournalEntry> = row.entries.iter().filter(|e| e.tenant_id == b).cloned().collect();
            if held.is_empty() {
                done.push(row.key);
            } else if held.len() < row.entries.len() {
                kept.push((row.key, held));
            }
        }
        store.journal_settle(region, &done, &kept).await.unwrap();
        assert_eq!(store.journal_backlog(region).await.unwrap().0, 1);
        let left = store.journal_take(region, JournalCursor::default(), 1000).await.unwrap();
        let ids: Vec<(TenantId, &str)> = left
            .rows
            .iter()
            .flat_map(|r| r.entries.iter().map(|e| (e.tenant_id, e.event_id.as_str())))
            .collect();
        assert_eq!(ids, vec![(b, "b-1")]);
    }
);
