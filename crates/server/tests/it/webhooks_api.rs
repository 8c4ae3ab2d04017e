//! Webhook endpoints, their deliveries and the events feed through the Automation API
//! (`/v1/admin/webhooks`, `/v1/admin/events`, issue 13), and `GET /metrics`: the signing secret
//! shown once, every change audited, every bad input a JSON error with a code, who may not
//! gets 403; every response checked against the OpenAPI document (through `Api`).

use crate::api::{Api, token};
use crate::api_keys_api::tenant_admin_token;
use crate::helpers::*;
use crate::{both, both_backends};
use reqwest::Method;
use serde_json::{Value, json};

/// A loopback URL nothing listens on (`outbound_allow_private` allows loopback in the tests):
/// deliveries to it fail (`unreachable`) and stay pending, which is all these tests need. Port
/// 9 (discard), below the ephemeral range: no test's socket takes it, as a port freed after
/// binding it could be taken (and then answer).
pub fn dead_url() -> String {
    "http://127.0.0.1:9/hooks".to_owned()
}

/// A read-write token of a platform user with `roles` (made in the store, signed in through the
/// form, the token made at Settings → Tokens).
pub async fn platform_token(app: &TestApp, email: &str, roles: &[&str]) -> String {
    crate::settings::platform_user(app, email, roles).await;
    let c = client();
    let login = c.get(app.url("/login")).send().await.unwrap().text().await.unwrap();
    let r = post_form(
        &c,
        &app.url("/login"),
        &app.base_url,
        &login,
        &[("email", email), ("password", OWNER_PASSWORD)],
    )
    .await;
    assert_eq!(r.status(), 303, "{email} signs in");
    let page = c
        .get(app.url("/settings/tokens"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let r = post_form(
        &c,
        &app.url("/settings/tokens"),
        &app.base_url,
        &page,
        &[
            ("name", "ci"),
            ("scope", "read_write"),
            ("expires_in_days", "30"),
            ("tenant_id", ""),
        ],
    )
    .await;
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    html.split("id=\"new-token\">")
        .nth(1)
        .unwrap()
        .split('<')
        .next()
        .unwrap()
        .to_owned()
}

/// Every audit event's details, as one string: to check that no secret is in any of them.
async fn audit_text(app: &TestApp) -> String {
    let filter = quarterdeck_domain::audit::AuditFilter {
        limit: 1000,
        ..Default::default()
    };
    serde_json::to_string(&app.core.store().list_events(&filter).await.unwrap()).unwrap()
}

both!(
    async fn an_owner_token_creates_lists_updates_rolls_and_deletes_an_endpoint_and_the_secret_is_shown_only_twice(app) {
        app.sign_in_owner().await;
        let pat = token(&app, "read_write", "").await;
        let api = Api::new(&app, &pat);
        let url = dead_url();

        let (s, created) = api
            .post("/v1/admin/webhooks", json!({"url": url, "description": "provisioning", "event_types": ["user.invited", "tenant.*"]}))
            .await;
        assert_eq!(s, 201, "{created}");
        let secret = created["secret"].as_str().unwrap().to_owned();
        assert!(secret.starts_with("whsec_") && secret.len() > 40, "{secret}");
        let e = &created["endpoint"];
        let id = e["id"].as_str().unwrap().to_owned();
        assert_eq!((e["url"].as_str(), e["description"].as_str()), (Some(url.as_str()), Some("provisioning")));
        assert_eq!(e["event_types"], json!(["tenant.*", "user.invited"]), "sorted");
        assert_eq!((&e["region"], &e["enabled"], &e["disabled_reason"]), (&Value::Null, &json!(true), &Value::Null));
        assert_eq!((&e["failing_since"], &e["previous_secret_valid_until"]), (&Value::Null, &Value::Null));
        let made = app.events_of("WEBHOOK_ENDPOINT_CREATED").await;
        assert_eq!(made.len(), 1);
        assert_eq!((made[0].details["endpoint_id"].as_str(), made[0].actor_email.as_deref()), (Some(id.as_str()), Some(OWNER_EMAIL)));

        // Listed and read back, never with the secret.
        let (s, list) = api.get("/v1/admin/webhooks").await;
        assert_eq!((s, list["items"].as_array().unwrap().len()), (200, 1), "{list}");
        assert_eq!(list["items"][0]["id"], id.as_str());
        let (s, got) = api.get(&format!("/v1/admin/webhooks/{id}")).await;
        assert_eq!((s, &got), (200, e));
        assert!(!list.to_string().contains(&secret[6..]) && !got.to_string().contains(&secret[6..]));

        // PATCH changes what it names; `region: null` means every region again.
        let path = format!("/v1/admin/webhooks/{id}");
        let (s, patched) = api
            .call(Method::PATCH, &path, Some(json!({"description": "all of it", "event_types": ["*"], "region": "eu-west", "enabled": false})))
            .await;
        assert_eq!(s, 200, "{patched}");
        assert_eq!((patched["description"].as_str(), &patched["event_types"]), (Some("all of it"), &json!(["*"])));
        assert_eq!((patched["region"].as_str(), &patched["enabled"], patched["disabled_reason"].as_str()), (Some("eu-west"), &json!(false), Some("manual")));
        assert_eq!(patched["url"], url.as_str(), "unchanged");
        let (s, patched) = api.call(Method::PATCH, &path, Some(json!({"region": null, "enabled": true}))).await;
        assert_eq!(s, 200, "{patched}");
        assert_eq!((&patched["region"], &patched["enabled"], &patched["disabled_reason"]), (&Value::Null, &json!(true), &Value::Null));
        assert_eq!(patched["description"], "all of it", "unchanged");
        let updated = app.events_of("WEBHOOK_ENDPOINT_UPDATED").await;
        assert_eq!(updated.len(), 2);
        assert_eq!(updated[1].details["previous"]["region"], Value::Null, "oldest last: the first patch set the region from none");
        assert_eq!(updated[0].details["previous"]["region"], "eu-west");

        // Roll: a new secret, once; the old one signs beside it for the grace.
        let (s, rolled) = api.post(&format!("{path}/roll-secret"), json!({"grace_seconds": 3600})).await;
        assert_eq!(s, 201, "{rolled}");
        let new = rolled["secret"].as_str().unwrap().to_owned();
        assert!(new.starts_with("whsec_") && new != secret);
        let until = time::OffsetDateTime::parse(rolled["endpoint"]["previous_secret_valid_until"].as_str().unwrap(), &time::format_description::well_known::Rfc3339).unwrap();
        assert!(((until - app.clock_now()) - time::Duration::hours(1)).abs() < time::Duration::seconds(1), "{until}");
        // Without a body: the default grace of a day.
        let (s, again) = api.call(Method::POST, &format!("{path}/roll-secret"), None).await;
        assert_eq!(s, 201, "{again}");
        let third = again["secret"].as_str().unwrap().to_owned();
        assert!(third != new && third != secret);
        let until = time::OffsetDateTime::parse(again["endpoint"]["previous_secret_valid_until"].as_str().unwrap(), &time::format_description::well_known::Rfc3339).unwrap();
        assert!(((until - app.clock_now()) - time::Duration::hours(24)).abs() < time::Duration::seconds(1), "{until}");
        let (s, refused) = api.post(&format!("{path}/roll-secret"), json!({"grace_seconds": 604_801})).await;
        assert_eq!((s, refused["error"]["fields"][0]["field"].as_str()), (422, Some("grace_seconds")), "{refused}");
        let (_, got) = api.get(&path).await;
        for s in [&secret, &new, &third] {
            assert!(!got.to_string().contains(&s[6..]), "GET never shows a secret");
        }
        let rolls = app.events_of("WEBHOOK_ENDPOINT_UPDATED").await;
        assert_eq!(rolls.len(), 4);
        assert_eq!(rolls[0].details["secret_rolled"], true);
        let audit = audit_text(&app).await;
        for s in [&secret, &new, &third] {
            assert!(!audit.contains(&s[6..]), "a secret in the audit trail");
            assert!(!logs_contain(&s[6..]), "a secret was logged");
        }
        let sealed = app.control_value("SELECT secret_sealed FROM webhook_endpoint").await;
        assert!(!sealed.contains(&third[6..]), "sealed at rest");

        // A replayed create (Idempotency-Key) has the secret as null.
        let body = json!({"url": dead_url(), "event_types": ["api_key.created"]});
        let mut secrets = Vec::new();
        for _ in 0..2 {
            let r = reqwest::Client::new()
                .post(app.url("/v1/admin/webhooks"))
                .bearer_auth(&pat)
                .header("idempotency-key", "hook-1")
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            let v: Value = r.json().await.unwrap();
            secrets.push(v["secret"].clone());
        }
        assert!(secrets[0].as_str().unwrap().starts_with("whsec_"));
        assert_eq!(secrets[1], Value::Null, "a replay holds no secret");
        assert_eq!(app.events_of("WEBHOOK_ENDPOINT_CREATED").await.len(), 2, "created once");

        // Delete: gone, audited.
        let (s, _) = api.call(Method::DELETE, &path, None).await;
        assert_eq!(s, 204);
        assert_eq!(api.get(&path).await.0, 404);
        assert_eq!(api.call(Method::DELETE, &path, None).await.0, 404);
        let deleted = app.events_of("WEBHOOK_ENDPOINT_DELETED").await;
        assert_eq!((deleted.len(), deleted[0].details["endpoint_id"].as_str()), (1, Some(id.as_str())));
        assert_eq!(app.control_rows("webhook_endpoint").await, 1, "the other one is left");
    }
);

async fn create(api: &Api<'_>, body: Value) -> (u16, Value) {
    api.post("/v1/admin/webhooks", body).await
}

both!(
    async fn every_bad_input_is_a_json_error_with_a_code_and_never_a_500(app) {
        app.sign_in_owner().await;
        let api = Api::new(&app, &token(&app, "read_write", "").await);
        let field = |v: &Value| (v["error"]["code"].as_str().map(str::to_owned), v["error"]["fields"][0]["field"].as_str().map(str::to_owned), v["error"]["fields"][0]["code"].as_str().map(str::to_owned));
        let ok = dead_url();

        for (body, want_field, want_code) in [
            (json!({"url": ok, "event_types": ["tenant.nope"]}), "event_types", "unknown_event_type"),
            (json!({"url": ok, "event_types": []}), "event_types", "invalid"),
            (json!({"url": ok, "event_types": [" tenant.created"]}), "event_types", "unknown_event_type"),
            // plain http to a public address, and https to a private one: the outbound policy
            (json!({"url": "http://93.184.216.34/hooks", "event_types": ["*"]}), "url", "url_refused"),
            (json!({"url": "https://10.1.2.3/hooks", "event_types": ["*"]}), "url", "url_refused"),
            (json!({"url": "https://[::1]:1/hooks", "event_types": ["*"]}), "url", "url_refused"),
            (json!({"url": "ftp://files.example/x", "event_types": ["*"]}), "url", "invalid"),
            (json!({"url": "https://u:p@hooks.example/", "event_types": ["*"]}), "url", "invalid"),
            (json!({"url": ok, "event_types": ["*"], "region": "mars"}), "region", "invalid"),
            (json!({"url": ok, "event_types": ["*"], "description": " ".repeat(201)}), "description", "invalid"),
            (json!({"url": ok, "event_types": ["*"], "secret": "whsec_mine"}), "_body", "invalid_body"),
            (json!({"event_types": ["*"]}), "_body", "invalid_body"),
        ] {
            let (s, v) = create(&api, body.clone()).await;
            assert_eq!(s, 422, "{body}: {v}");
            assert_eq!(field(&v), (Some("validation_failed".into()), Some(want_field.into()), Some(want_code.into())), "{body}: {v}");
        }
        assert_eq!(app.control_rows("webhook_endpoint").await, 0, "nothing was made");

        // Unknown or malformed ids: 404 everywhere.
        let nobody = uuid::Uuid::now_v7();
        for (m, p) in [
            (Method::GET, format!("/v1/admin/webhooks/{nobody}")),
            (Method::PATCH, format!("/v1/admin/webhooks/{nobody}")),
            (Method::DELETE, format!("/v1/admin/webhooks/{nobody}")),
            (Method::POST, format!("/v1/admin/webhooks/{nobody}/roll-secret")),
            (Method::GET, format!("/v1/admin/webhooks/{nobody}/deliveries")),
            (Method::POST, format!("/v1/admin/webhooks/{nobody}/deliveries/{nobody}/resend")),
            (Method::GET, "/v1/admin/webhooks/not-an-id".to_owned()),
        ] {
            let body = (m == Method::PATCH).then(|| json!({"description": "x"}));
            let (s, v) = api.call(m.clone(), &p, body).await;
            assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")), "{m} {p}: {v}");
        }

        // The feed's cursor, types and limit.
        for (q, want_field, want_code) in [
            ("after=bogus", "after", "invalid_cursor"),
            ("after=evc_-1", "after", "invalid_cursor"),
            ("after=evc_99999999999999999999", "after", "invalid_cursor"),
            ("types=tenant.created,tenant.nope", "types", "unknown_event_type"),
            ("types=tenant.*", "types", "unknown_event_type"),
            ("limit=0", "limit", "invalid_limit"),
            ("limit=501", "limit", "invalid_limit"),
        ] {
            let (s, v) = api.get(&format!("/v1/admin/events?{q}")).await;
            assert_eq!(s, 422, "{q}: {v}");
            assert_eq!(field(&v), (Some("validation_failed".into()), Some(want_field.into()), Some(want_code.into())), "{q}: {v}");
        }
        let (s, v) = api.get("/v1/admin/events?cursor=evc_1").await;
        assert_eq!((s, field(&v).1.as_deref()), (422, Some("_query")), "unknown parameters are refused: {v}");

        // A real endpoint's deliveries with a bad `before`; and the 51st endpoint.
        let (s, first) = create(&api, json!({"url": ok, "event_types": ["*"]})).await;
        assert_eq!(s, 201, "{first}");
        let id = first["endpoint"]["id"].as_str().unwrap();
        let (s, v) = api.get(&format!("/v1/admin/webhooks/{id}/deliveries?before=yesterday")).await;
        assert_eq!((s, field(&v).1.as_deref(), field(&v).2.as_deref()), (422, Some("before"), Some("invalid_cursor")), "{v}");
        for i in 1..50 {
            let (s, v) = create(&api, json!({"url": format!("{ok}/{i}"), "event_types": ["*"]})).await;
            assert_eq!(s, 201, "endpoint {i}: {v}");
        }
        let (s, v) = create(&api, json!({"url": ok, "event_types": ["*"]})).await;
        assert_eq!((s, v["error"]["code"].as_str()), (409, Some("too_many_endpoints")), "{v}");
        assert_eq!(app.control_rows("webhook_endpoint").await, 50);
        assert!(!app.logs.contains("internal error"), "no 500 on the way");
    }
);

both!(
    async fn only_the_owners_unrestricted_token_may_manage_webhooks_or_read_the_feed(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let owner = Api::new(&app, &token(&app, "read_write", "").await);
        let (s, created) = owner.post("/v1/admin/webhooks", json!({"url": dead_url(), "event_types": ["*"]})).await;
        assert_eq!(s, 201);
        let id = created["endpoint"]["id"].as_str().unwrap().to_owned();

        let billing = Api::new(&app, &platform_token(&app, "billing@example.com", &["billing-admin"]).await);
        let admin = Api::new(&app, &tenant_admin_token(&app, &tid, "acme", "ada@acme.example").await);
        let limited = Api::new(&app, &token(&app, "read_write", &tid).await);
        for (who, api) in [("billing-admin", &billing), ("tenant admin", &admin), ("owner's tenant-limited token", &limited)] {
            for (m, p, body) in [
                (Method::GET, "/v1/admin/webhooks".to_owned(), None),
                (Method::POST, "/v1/admin/webhooks".to_owned(), Some(json!({"url": "http://127.0.0.1:9/x", "event_types": ["*"]}))),
                (Method::GET, format!("/v1/admin/webhooks/{id}"), None),
                (Method::PATCH, format!("/v1/admin/webhooks/{id}"), Some(json!({"enabled": false}))),
                (Method::POST, format!("/v1/admin/webhooks/{id}/roll-secret"), None),
                (Method::GET, format!("/v1/admin/webhooks/{id}/deliveries"), None),
                (Method::DELETE, format!("/v1/admin/webhooks/{id}"), None),
                (Method::GET, "/v1/admin/events".to_owned(), None),
            ] {
                let (s, v) = api.call(m.clone(), &p, body).await;
                assert_eq!((s, v["error"]["code"].as_str()), (403, Some("forbidden")), "{who}: {m} {p}: {v}");
            }
        }
        // A read-only owner token reads but changes nothing.
        let read = Api::new(&app, &token(&app, "read", "").await);
        assert_eq!(read.get("/v1/admin/webhooks").await.0, 200);
        assert_eq!(read.get("/v1/admin/events").await.0, 200);
        let (s, v) = read.call(Method::POST, &format!("/v1/admin/webhooks/{id}/roll-secret"), None).await;
        assert_eq!((s, v["error"]["code"].as_str()), (403, Some("insufficient_scope")));
        assert_eq!(app.events_of("WEBHOOK_ENDPOINT_UPDATED").await.len(), 0);
        assert_eq!(app.events_of("WEBHOOK_ENDPOINT_DELETED").await.len(), 0);
        assert_eq!(app.control_rows("webhook_endpoint").await, 1);
    }
);

both!(
    async fn the_feed_returns_the_events_in_commit_order_with_a_cursor_and_a_type_filter(app) {
        app.sign_in_owner().await;
        let api = Api::new(&app, &token(&app, "read_write", "").await);
        let a = app.create_tenant("Alpha", "alpha").await;
        let b = app.create_tenant("Beta", "beta").await;
        let (s, _) = api.post(&format!("/v1/admin/tenants/{a}/status"), json!({"status": "suspended", "reason": "unpaid"})).await;
        assert_eq!(s, 200);

        let wanted = "types=tenant.created,tenant.status_changed";
        let (s, page) = api.get(&format!("/v1/admin/events?{wanted}")).await;
        assert_eq!(s, 200, "{page}");
        let items = page["items"].as_array().unwrap();
        let seen: Vec<(&str, &str)> = items.iter().map(|e| (e["type"].as_str().unwrap(), e["tenant_id"].as_str().unwrap())).collect();
        assert_eq!(seen, [("tenant.created", a.as_str()), ("tenant.created", b.as_str()), ("tenant.status_changed", a.as_str())]);
        let changed = &items[2];
        assert_eq!((changed["version"].as_u64(), changed["data"]["previous_status"].as_str(), changed["data"]["reason"].as_str()), (Some(1), Some("active"), Some("unpaid")));
        assert_eq!((changed["data"]["tenant"]["slug"].as_str(), changed["data"]["tenant"]["status"].as_str()), (Some("alpha"), Some("suspended")));
        // Each item is the stored body, as webhooks deliver it.
        for e in items {
            let stored = app.control_value(&format!("SELECT body FROM webhook_event WHERE body LIKE '%{}%'", e["id"].as_str().unwrap())).await;
            assert_eq!(&serde_json::from_str::<Value>(&stored).unwrap(), e);
        }
        let created = app.events_of("TENANT_CREATED").await;
        assert_eq!(items[1]["id"], created[0].id.0.to_string(), "the event's id is its audit event's");

        // One at a time with the cursor: the same three, then nothing and the same cursor.
        let mut after = String::new();
        let mut walked = Vec::new();
        loop {
            let q = if after.is_empty() { format!("{wanted}&limit=1") } else { format!("{wanted}&limit=1&after={after}") };
            let (s, page) = api.get(&format!("/v1/admin/events?{q}")).await;
            assert_eq!(s, 200, "{page}");
            let cursor = page["next_cursor"].as_str().unwrap().to_owned();
            match page["items"].as_array().unwrap().as_slice() {
                [] => {
                    assert_eq!(cursor, after, "an empty page keeps the cursor");
                    break;
                }
                [one] => walked.push(one["id"].clone()),
                more => panic!("limit=1 answered {}", more.len()),
            }
            assert_ne!(cursor, after);
            after = cursor;
        }
        assert_eq!(walked, items.iter().map(|e| e["id"].clone()).collect::<Vec<_>>());

        // Later events come after the cursor; the type filter leaves the others out.
        let (s, _) = api.call(Method::DELETE, &format!("/v1/admin/tenants/{b}"), None).await;
        assert_eq!(s, 204);
        let (_, later) = api.get(&format!("/v1/admin/events?after={after}")).await;
        let types: Vec<&str> = later["items"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["tenant.deleted"]);
        let (_, only) = api.get(&format!("/v1/admin/events?types=tenant.status_changed&after={after}")).await;
        assert_eq!(only["items"], json!([]));
        // Without a filter, every event (the owner's own too), oldest first.
        let (_, all) = api.get("/v1/admin/events?limit=500").await;
        let all: Vec<&Value> = all["items"].as_array().unwrap().iter().collect();
        let stamps: Vec<&str> = all.iter().map(|e| e["timestamp"].as_str().unwrap()).collect();
        assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{stamps:?}");
        assert_eq!(all.len() as i64, app.control_rows("webhook_event").await);
    }
);

both!(
    async fn an_event_makes_a_delivery_row_that_is_paged_and_resent_as_a_new_pending_delivery(app) {
        app.sign_in_owner().await;
        let api = Api::new(&app, &token(&app, "read_write", "").await);
        let (s, created) = api.post("/v1/admin/webhooks", json!({"url": dead_url(), "event_types": ["tenant.created"]})).await;
        assert_eq!(s, 201);
        let id = created["endpoint"]["id"].as_str().unwrap().to_owned();
        let deliveries = format!("/v1/admin/webhooks/{id}/deliveries");
        let tid = app.create_tenant("Acme", "acme").await;

        // The delivery loop tries it at once; nothing listens, so it waits for a retry.
        poll_until("the first attempt", || async { api.get(&deliveries).await.1["items"][0]["attempts"].as_u64() >= Some(1) }).await;
        // The retry is due later by the test's clock, which stands still: the row stays as it is.
        let first = api.get(&deliveries).await.1["items"][0].clone();
        assert_eq!((first["event_type"].as_str(), first["tenant_id"].as_str(), first["status"].as_str()), (Some("tenant.created"), Some(tid.as_str()), Some("pending")), "{first}");
        assert_eq!((first["last_error"].as_str(), &first["last_status"]), (Some("unreachable"), &Value::Null), "{first}");
        assert!(first["next_attempt_at"].is_string() && first["last_attempt_at"].is_string(), "{first}");
        let event = app.events_of("TENANT_CREATED").await;
        assert_eq!(first["event_id"], event[0].id.0.to_string());

        // Resend: a new delivery of the same event, pending.
        let did = first["id"].as_str().unwrap();
        let (s, resent) = api.post(&format!("{deliveries}/{did}/resend"), json!({})).await;
        assert_eq!(s, 201, "{resent}");
        assert_ne!(resent["id"], first["id"]);
        assert_eq!((&resent["event_id"], resent["status"].as_str(), resent["attempts"].as_u64()), (&first["event_id"], Some("pending"), Some(0)));
        let audited = app.events_of("WEBHOOK_DELIVERY_RESENT").await;
        assert_eq!((audited.len(), &audited[0].details["delivery_id"], &audited[0].details["new_delivery_id"]), (1, &first["id"], &resent["id"]));
        let rows = app.control_value("SELECT CAST(count(*) AS TEXT) FROM webhook_delivery WHERE status = 'pending'").await;
        assert_eq!(rows, "2", "the endpoint's first delivery and the resent one");

        // Newest first, one per page.
        let (_, page) = api.get(&format!("{deliveries}?limit=1")).await;
        assert_eq!((&page["items"][0]["id"], page["next_cursor"].as_str()), (&resent["id"], resent["id"].as_str()));
        let (_, page) = api.get(&format!("{deliveries}?limit=1&before={}", resent["id"].as_str().unwrap())).await;
        assert_eq!((&page["items"][0]["id"], &page["next_cursor"]), (&first["id"], &Value::Null));

        // Another endpoint's delivery is not this one's to resend.
        let (_, other) = api.post("/v1/admin/webhooks", json!({"url": dead_url(), "event_types": ["user.invited"]})).await;
        let other = other["endpoint"]["id"].as_str().unwrap();
        assert_eq!(api.post(&format!("/v1/admin/webhooks/{other}/deliveries/{did}/resend"), json!({})).await.0, 404);
    }
);

both_backends!(
    async fn metrics_count_deliveries_by_outcome_for_the_metrics_tokens_holder_only(backend) {
        let app = TestApp::spawn_with(backend, |s| s.metrics_token = Some("metrics-token-0123456789".into())).await;
        app.sign_in_owner().await;
        let api = Api::new(&app, &token(&app, "read_write", "").await);
        let scrape = |bearer: Option<&'static str>| {
            let mut r = reqwest::Client::new().get(app.url("/metrics"));
            if let Some(b) = bearer {
                r = r.bearer_auth(b);
            }
            async move { r.send().await.unwrap() }
        };
        let r = scrape(None).await;
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"metrics\"");
        assert_eq!(scrape(Some("metrics-token-012345678X")).await.status(), 401);
        let r = scrape(Some("metrics-token-0123456789")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");
        let text = r.text().await.unwrap();
        for outcome in ["success", "http_error", "timeout", "network_error", "refused", "gave_up"] {
            assert!(text.contains(&format!("quarterdeck_webhook_deliveries_total{{outcome=\"{outcome}\"}} 0\n")), "{text}");
        }
        assert!(text.contains("# TYPE quarterdeck_webhook_deliveries_total counter"));
        assert!(text.contains(&format!("backend=\"{}\"}} 1", if backend == Backend::Sqlite { "sqlite" } else { "postgres" })), "{text}");

        // A failed attempt is counted; nothing about the tenant or the endpoint is shown.
        let url = dead_url();
        let (s, _) = api.post("/v1/admin/webhooks", json!({"url": url, "event_types": ["tenant.*"]})).await;
        assert_eq!(s, 201);
        app.create_tenant("Secretive Corp", "secretive").await;
        poll_until("a counted attempt", || async {
            !scrape(Some("metrics-token-0123456789")).await.text().await.unwrap().contains("{outcome=\"network_error\"} 0\n")
        })
        .await;
        let text = scrape(Some("metrics-token-0123456789")).await.text().await.unwrap();
        let line = text.lines().find(|l| l.starts_with("quarterdeck_webhook_deliveries_total{outcome=\"network_error\"}")).unwrap();
        assert!(line.rsplit(' ').next().unwrap().parse::<u64>().unwrap() >= 1, "{line}");
        assert!(text.contains("{outcome=\"success\"} 0\n"));
        assert!(!text.contains("secretive") && !text.contains(&url), "no customer data: {text}");
        // Served on any host name (a scraper may use the node's address).
        let by_ip = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/metrics", app.port()))
            .bearer_auth("metrics-token-0123456789")
            .send()
            .await
            .unwrap();
        assert_eq!(by_ip.status(), 200);
    }
);

both!(
    async fn without_a_metrics_token_there_is_no_metrics_page(app) {
        let r = app.get("/metrics").await;
        assert_eq!(r.status(), 404);
        let r = reqwest::Client::new().get(app.url("/metrics")).bearer_auth("anything-at-all-0123").send().await.unwrap();
        assert_eq!(r.status(), 404);
    }
);

both!(
    async fn the_openapi_document_describes_the_webhook_operations(app) {
        let doc: Value = app.get("/v1/openapi.json").await.json().await.unwrap();
        for (p, ops) in [
            ("/v1/admin/webhooks", &["get", "post"][..]),
            ("/v1/admin/webhooks/{id}", &["get", "patch", "delete"][..]),
            ("/v1/admin/webhooks/{id}/roll-secret", &["post"][..]),
            ("/v1/admin/webhooks/{id}/deliveries", &["get"][..]),
            ("/v1/admin/webhooks/{id}/deliveries/{delivery_id}/resend", &["post"][..]),
            ("/v1/admin/events", &["get"][..]),
        ] {
            for op in ops {
                let o = &doc["paths"][p][op];
                assert_eq!(o["security"], json!([{"bearer": []}]), "{op} {p}");
                for status in ["401", "403", "408", "413", "503"] {
                    assert!(o["responses"][status].is_object(), "{op} {p} {status}");
                }
            }
        }
        let body = &doc["components"]["schemas"]["CreateWebhookEndpoint"];
        let patterns: Vec<&str> = body["properties"]["event_types"]["items"]["enum"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert!(patterns.contains(&"tenant.*") && patterns.contains(&"*") && patterns.contains(&"impersonation.ended"), "{patterns:?}");
        assert_eq!(doc["paths"]["/v1/admin/webhooks/{id}/roll-secret"]["post"]["requestBody"]["required"], Value::Null, "the roll's body is optional");
    }
);
