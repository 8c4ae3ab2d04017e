//! The Automation API's usage, cost and budget of a tenant (issue 12): every response checked
//! against the served OpenAPI document (`Api`).

use crate::api::{Api, token};
use crate::both;
use crate::data_plane::{api_key, owner, service_token};
use crate::helpers::*;
use crate::usage::{send, tokens, until_tokens};
use quarterdeck_domain::TenantId;
use quarterdeck_domain::usage::Month;
use reqwest::Method;
use serde_json::{Value, json};

fn meter<'a>(body: &'a Value, name: &str) -> &'a Value {
    body["meters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["meter"] == name)
        .unwrap_or_else(|| panic!("no meter {name} in {body}"))
}

fn field_of(body: &Value) -> &str {
    body["error"]["fields"][0]["field"].as_str().unwrap_or_default()
}

both!(
    async fn usage_and_cost_read_back_what_was_ingested_with_money_in_minor_units(app) {
        let owner = owner(&app).await;
        let tid = app.create_tenant("Acme", "acme").await;
        let (key, _) = api_key(&app, &owner, &tid, "").await;
        let svc = service_token(&app, &["usage:write"], "").await;
        let batch = json!([
            tokens("a", &key.to_string(), 2_000_000, "gpt-4o"),
            tokens("b", &tid, 400_000, "gpt-4o-mini"),
        ]);
        let (status, body) = send(&app, &svc, &batch).await;
        assert_eq!(status, 200, "{body}");
        until_tokens(&app, &owner, tid.parse::<TenantId>().unwrap(), 2_400_000).await;
        let api = Api::new(&app, &token(&app, "read", "").await);

        let (s, usage) = api.get(&format!("/v1/admin/tenants/{tid}/usage")).await;
        assert_eq!(s, 200, "{usage}");
        let today = app.clock_now().date();
        let ymd = |d: time::Date| d.to_string();
        assert_eq!(usage["to"], ymd(today));
        assert_eq!(usage["from"], ymd(today - time::Duration::days(29)), "the last 30 days by default");
        let m = meter(&usage, "llm.tokens");
        assert_eq!((m["total"].as_i64(), m["events"].as_i64()), (Some(2_400_000), Some(2)));
        assert_eq!(m["unit"], "tokens");
        let days = m["days"].as_array().unwrap();
        assert_eq!(days.len(), 30);
        assert_eq!(days[29], json!({ "date": ymd(today), "value": 2_400_000, "events": 2 }));
        assert_eq!(days[0]["value"], 0);
        assert_eq!(
            m["by_dimension"],
            json!([
                { "dimensions": { "model": "gpt-4o" }, "value": 2_000_000, "events": 1 },
                { "dimensions": { "model": "gpt-4o-mini" }, "value": 400_000, "events": 1 },
            ])
        );
        assert_eq!(m["by_key"][0], json!({ "api_key_id": key, "name": "ci", "value": 2_000_000, "events": 1 }));
        assert_eq!(m["by_key"][1]["api_key_id"], Value::Null);
        assert_eq!(meter(&usage, "api.requests")["total"], 0);
        assert!(usage["freshness"]["through"].is_string());
        assert!(usage["freshness"]["lag_seconds"].as_i64().unwrap() >= 0);

        let (s, one_day) = api.get(&format!("/v1/admin/tenants/{tid}/usage?from={today}&to={today}")).await;
        assert_eq!(s, 200, "{one_day}");
        assert_eq!(meter(&one_day, "llm.tokens")["days"].as_array().unwrap().len(), 1);

        let (s, cost) = api.get(&format!("/v1/admin/tenants/{tid}/cost?months=2")).await;
        assert_eq!(s, 200, "{cost}");
        assert_eq!((cost["currency"].as_str(), cost["minor_units"].as_i64()), (Some("USD"), Some(100)));
        let months = cost["months"].as_array().unwrap();
        assert_eq!(months.len(), 2);
        let now = Month::of(app.clock_now());
        assert_eq!(months[0]["month"], now.to_string());
        assert_eq!(months[1]["month"], now.previous().to_string());
        // USD 2.50 per million: 2,000,000 cost 500 cents, 400,000 cost 100.
        assert_eq!(months[0]["total"], 600);
        assert_eq!(
            months[0]["lines"][0],
            json!({ "meter": "llm.tokens", "dimensions": { "model": "gpt-4o" }, "quantity": 2_000_000,
                    "unit_price": 250, "per": 1_000_000, "cost": 500 })
        );
        assert_eq!(months[1], json!({ "month": now.previous().to_string(), "total": 0, "lines": [] }));
        assert_eq!(cost["budget"], Value::Null);

        for (path, field) in [
            (format!("/v1/admin/tenants/{tid}/usage?from=2026-02-30"), "from"),
            (format!("/v1/admin/tenants/{tid}/usage?to=yesterday"), "to"),
            (format!("/v1/admin/tenants/{tid}/usage?from=2026-01-10&to=2026-01-01"), "to"),
            (format!("/v1/admin/tenants/{tid}/usage?from=2024-01-01&to=2026-01-01"), "to"),
            (format!("/v1/admin/tenants/{tid}/cost?months=25"), "months"),
            (format!("/v1/admin/tenants/{tid}/cost?months=0"), "months"),
        ] {
            let (s, body) = api.get(&path).await;
            assert_eq!((s, field_of(&body)), (422, field), "{path}: {body}");
        }
        let (s, body) = api.get(&format!("/v1/admin/tenants/{tid}/cost?month=1")).await;
        assert_eq!(s, 422, "unknown parameters are refused: {body}");
    }
);

both!(
    async fn a_budget_is_set_read_and_removed_by_token_audited_and_scoped(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let other = app.create_tenant("Other", "other").await;
        let api = Api::new(&app, &token(&app, "read_write", "").await);
        let budget = format!("/v1/admin/tenants/{tid}/budget");
        let (s, body) = api.get(&budget).await;
        assert_eq!((s, body["error"]["code"].as_str()), (404, Some("not_found")));

        let (s, body) = api
            .call(Method::PUT, &budget, Some(json!({ "amount": "1500.00", "threshold_percent": 75, "hard_limit": true })))
            .await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(body["amount"], 150_000);
        assert_eq!(body["currency"], "USD");
        assert_eq!(body["threshold_percent"], 75);
        assert_eq!(body["hard_limit"], true);
        assert_eq!((body["spent"].as_i64(), body["standing"].as_str()), (Some(0), Some("within")));
        let (s, read) = api.get(&budget).await;
        assert_eq!(s, 200);
        assert_eq!(read["amount"], 150_000);
        let (_, cost) = api.get(&format!("/v1/admin/tenants/{tid}/cost")).await;
        assert_eq!(cost["budget"]["amount"], 150_000);
        let set = app.events_of("BUDGET_SET").await;
        assert_eq!(set.len(), 1);
        assert_eq!(set[0].actor_email.as_deref(), Some(OWNER_EMAIL));
        assert_eq!(set[0].details["amount"], 150_000);

        for (b, field) in [
            (json!({ "amount": "abc" }), "amount"),
            (json!({ "amount": "10", "threshold_percent": 150 }), "threshold_percent"),
            (json!({ "amount": "10", "extra": 1 }), "_body"),
            (json!({ "threshold_percent": 50 }), "_body"),
        ] {
            let (s, body) = api.call(Method::PUT, &budget, Some(b.clone())).await;
            assert_eq!((s, field_of(&body)), (422, field), "{b}: {body}");
        }
        assert_eq!(app.events_of("BUDGET_SET").await.len(), 1, "nothing set by a refused call");

        // A read-only token reads, and may not write.
        let read_only = Api::new(&app, &token(&app, "read", "").await);
        assert_eq!(read_only.get(&budget).await.0, 200);
        let (s, body) = read_only.call(Method::PUT, &budget, Some(json!({ "amount": "1" }))).await;
        assert_eq!((s, body["error"]["code"].as_str()), (403, Some("insufficient_scope")), "{body}");
        let (s, body) = read_only.call(Method::DELETE, &budget, None).await;
        assert_eq!((s, body["error"]["code"].as_str()), (403, Some("insufficient_scope")));

        // A token limited to another tenant finds nothing here.
        let scoped = Api::new(&app, &token(&app, "read_write", &other).await);
        for path in [format!("/v1/admin/tenants/{tid}/usage"), format!("/v1/admin/tenants/{tid}/cost"), budget.clone()] {
            let (s, body) = scoped.get(&path).await;
            assert_eq!((s, body["error"]["code"].as_str()), (404, Some("not_found")), "{path}");
        }
        let (s, _) = scoped.call(Method::PUT, &budget, Some(json!({ "amount": "1" }))).await;
        assert_eq!(s, 404);
        let (s, _) = scoped.call(Method::DELETE, &budget, None).await;
        assert_eq!(s, 404);
        let (s, own) = scoped.get(&format!("/v1/admin/tenants/{other}/cost")).await;
        assert_eq!(s, 200, "its own tenant: {own}");

        let (s, _) = api.call(Method::DELETE, &budget, None).await;
        assert_eq!(s, 204);
        assert_eq!(api.get(&budget).await.0, 404);
        assert_eq!(api.call(Method::DELETE, &budget, None).await.0, 404);
        let removed = app.events_of("BUDGET_REMOVED").await;
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].actor_email.as_deref(), Some(OWNER_EMAIL));

        // Every status these calls answered is in the document.
        let doc: Value = app.get("/v1/openapi.json").await.json().await.unwrap();
        let ops = &doc["paths"]["/v1/admin/tenants/{id}/budget"];
        for (method, statuses) in [("get", &["200", "401", "403", "404"][..]), ("put", &["200", "401", "403", "404", "422"]), ("delete", &["204", "401", "403", "404"])] {
            for status in statuses {
                assert!(ops[method]["responses"][*status].is_object(), "{method} {status}");
            }
        }
        for p in ["usage", "cost"] {
            let op = &doc["paths"][format!("/v1/admin/tenants/{{id}}/{p}")]["get"];
            for status in ["200", "401", "403", "404", "422"] {
                assert!(op["responses"][status].is_object(), "{p} {status}");
            }
        }
    }
);
