//! The Automation API: personal access tokens and `/v1/admin/**`.

use crate::both;
use crate::helpers::*;
use serde_json::{Value, json};

/// Make a token through Settings → Tokens; returns it (shown once).
pub async fn token(app: &TestApp, scope: &str, tenant_id: &str) -> String {
    let page = app.get_html("/settings/tokens").await;
    let r = app
        .post_form(
            "/settings/tokens",
            &page,
            &[
                ("name", "ci"),
                ("scope", scope),
                ("expires_in_days", "30"),
                ("tenant_id", tenant_id),
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

pub struct Api<'a> {
    app: &'a TestApp,
    token: String,
    client: reqwest::Client,
    doc: std::sync::OnceLock<Value>,
}

impl<'a> Api<'a> {
    pub fn new(app: &'a TestApp, token: &str) -> Self {
        Self {
            app,
            token: token.to_owned(),
            client: reqwest::Client::new(),
            doc: std::sync::OnceLock::new(),
        }
    }

    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .client
            .request(method.clone(), self.app.url(path))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        // Every response the tests see must match the OpenAPI document.
        if self.doc.get().is_none() {
            let doc: Value = self
                .client
                .get(self.app.url("/v1/openapi.json"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let _ = self.doc.set(doc);
        }
        if path.starts_with("/v1/admin/")
            && !(status == 404 && body["error"]["code"] == "not_found" && path.contains("nothing"))
        {
            crate::openapi::check_response(self.doc.get().unwrap(), method.as_str(), path, status, &body);
        }
        (status, body)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
}

both!(
    async fn a_token_is_shown_once_stored_hashed_and_works_as_a_bearer(app) {
        app.sign_in_owner().await;
        let t = token(&app, "read_write", "").await;
        assert!(t.starts_with("qd_pat_"));
        let list = app.get_html("/settings/tokens").await;
        assert!(!list.contains(&t), "never shown again");
        assert!(list.contains("ci") && list.contains("read_write"));
        let created = &app.events_of("PAT_CREATED").await[0];
        assert!(!created.details.to_string().contains(&t));
        assert!(!logs_contain(&t[7..]), "a token was logged");

        let api = Api::new(&app, &t);
        let (s, body) = api.get("/v1/admin/tenants").await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(body["items"], json!([]));
        let after = app.get_html("/settings/tokens").await;
        assert!(!after.contains(">never<"), "last used is recorded");
    }
);

both!(
    async fn missing_unknown_expired_and_revoked_tokens_get_401(app) {
        app.sign_in_owner().await;
        let c = reqwest::Client::new();
        let r = c.get(app.url("/v1/admin/tenants")).send().await.unwrap();
        assert_eq!(r.status(), 401);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthenticated");
        assert_eq!(Api::new(&app, "qd_pat_forged").get("/v1/admin/tenants").await.0, 401);

        let t = token(&app, "read", "").await;
        assert_eq!(Api::new(&app, &t).get("/v1/admin/tenants").await.0, 200);
        app.clock.advance(time::Duration::days(31));
        assert_eq!(Api::new(&app, &t).get("/v1/admin/tenants").await.0, 401, "expired");

        app.sign_in(OWNER_EMAIL, OWNER_PASSWORD).await;
        let t = token(&app, "read", "").await;
        let page = app.get_html("/settings/tokens").await;
        let id = page.split("/settings/tokens/").nth(1).unwrap().split('/').next().unwrap().to_owned();
        let live = page.split("/settings/tokens/").filter(|s| s.contains("/revoke")).count();
        assert!(live >= 1);
        let r = app.post_form(&format!("/settings/tokens/{id}/revoke"), &page, &[]).await;
        assert_eq!(r.status(), 303);
        assert_eq!(app.events_of("PAT_REVOKED").await.len(), 1);
        assert_eq!(Api::new(&app, &t).get("/v1/admin/tenants").await.0, 401, "revoked");
    }
);

both!(
    async fn the_api_drives_the_invitation_runbook_and_role_changes(app) {
        app.sign_in_owner().await;
        let api = Api::new(&app, &token(&app, "read_write", "").await);
        // Step 1: create the tenant.
        let (s, t) = api.post("/v1/admin/tenants", json!({"name": "Acme Corp", "region": "eu-west", "tier": "high"})).await;
        assert_eq!(s, 201, "{t}");
        assert_eq!(t["slug"], "acme-corp");
        let tid = t["id"].as_str().unwrap().to_owned();
        // Steps 2–3: invite the admin.
        let (s, u) = api.post("/v1/admin/users", json!({"email": "ada@acme.example", "roles": ["admin"], "tenant_id": tid})).await;
        assert_eq!(s, 201, "{u}");
        assert_eq!(u["user"]["status"], "INVITED");
        let uid = u["user"]["id"].as_str().unwrap().to_owned();
        assert!(u.get("one_time_password").is_none());
        let invited = &app.events_of("USER_INVITED").await[0];
        assert!(invited.details["token_id"].is_string(), "the token's id is in the event");
        // The link goes out as email, never in a response.
        let (_, listed) = api.get(&format!("/v1/admin/invitations?tenant_id={tid}")).await;
        assert_eq!(listed["items"].as_array().unwrap().len(), 1);
        assert!(!listed.to_string().contains("qd_inv_"));
        // Role changes.
        let (s, _) = api.call(reqwest::Method::PUT, &format!("/v1/admin/users/{uid}/roles/developer?tenant_id={tid}"), None).await;
        assert_eq!(s, 200);
        let (s, after) = api.call(reqwest::Method::DELETE, &format!("/v1/admin/users/{uid}/roles/admin?tenant_id={tid}"), None).await;
        assert_eq!(s, 200);
        assert_eq!(after["roles"], json!(["developer"]));
        assert_eq!(app.events_of("USER_ROLE_ASSIGNED").await.len(), 1);
        assert_eq!(app.events_of("USER_ROLE_REVOKED").await.len(), 1);
        // A user with a one-time password, returned once.
        let (s, c) = api
            .post("/v1/admin/users", json!({"email": "bob@acme.example", "roles": ["viewer"], "tenant_id": tid, "delivery": "one_time_password"}))
            .await;
        assert_eq!(s, 201, "{c}");
        let otp = c["one_time_password"].as_str().unwrap().to_owned();
        assert_eq!(app.events_of("USER_CREATED").await.len(), 1);
        let bob = c["user"]["id"].as_str().unwrap().to_owned();
        let (_, got) = api.get(&format!("/v1/admin/users/{bob}?tenant_id={tid}")).await;
        assert!(!got.to_string().contains(&otp));
        // Delete.
        let (s, _) = api.call(reqwest::Method::DELETE, &format!("/v1/admin/users/{bob}?tenant_id={tid}"), None).await;
        assert_eq!(s, 204);
        assert_eq!(app.events_of("USER_DELETED").await.len(), 1);
        // Audit events, filtered and paged.
        let (s, ev) = api.get(&format!("/v1/admin/audit/events?tenant_id={tid}&limit=2")).await;
        assert_eq!(s, 200);
        assert_eq!(ev["items"].as_array().unwrap().len(), 2);
        let cursor = ev["next_cursor"].as_str().unwrap();
        let (_, ev2) = api.get(&format!("/v1/admin/audit/events?tenant_id={tid}&limit=2&cursor={cursor}")).await;
        assert_ne!(ev["items"][0]["id"], ev2["items"][0]["id"]);
        let r = reqwest::Client::new().get(app.url(&format!("/v1/admin/audit/events/export?tenant_id={tid}"))).bearer_auth(&api.token).send().await.unwrap();
        assert_eq!(r.headers()["content-type"], "application/x-ndjson");
        let lines = r.text().await.unwrap();
        assert!(lines.lines().all(|l| serde_json::from_str::<Value>(l).is_ok()));
        assert!(lines.contains("TENANT_CREATED"));
    }
);

both!(
    async fn bodies_with_unknown_fields_or_bad_values_are_refused_with_codes(app) {
        app.sign_in_owner().await;
        let api = Api::new(&app, &token(&app, "read_write", "").await);
        let (s, e) = api.post("/v1/admin/tenants", json!({"name": "Acme", "status": "active"})).await;
        assert_eq!(s, 422);
        assert_eq!(e["error"]["code"], "validation_failed");
        assert!(e["error"]["fields"][0]["message"].as_str().unwrap().contains("unknown field"));
        let (s, e) = api.post("/v1/admin/tenants", json!({"name": "", "slug": "www"})).await;
        assert_eq!(s, 422);
        let fields: Vec<&str> = e["error"]["fields"].as_array().unwrap().iter().map(|f| f["field"].as_str().unwrap()).collect();
        assert!(fields.contains(&"name") && fields.contains(&"slug"), "{e}");
        let (s, e) = api.post("/v1/admin/users", json!({"email": "x@example.com", "roles": ["owner"], "is_platform_admin": true})).await;
        assert_eq!(s, 422, "{e}");
        let r = reqwest::Client::new().post(app.url("/v1/admin/tenants")).bearer_auth(&api.token).body("{").header("content-type", "application/json").send().await.unwrap();
        assert_eq!(r.status(), 422);
        // An array is not a body (serde would fill the struct field by field).
        let (s, e) = api.post("/v1/admin/tenants", json!(["Array Corp", "array-corp", null, "critical", {}])).await;
        assert_eq!((s, e["error"]["fields"][0]["code"].as_str()), (422, Some("invalid_body")));
        // Query strings: unknown or malformed parameters are a JSON 422, limits are not clamped.
        for q in ["x=1", "limit=abc", "limit=-1", "limit=0", "limit=201", "limit=4294967296"] {
            let (s, e) = api.get(&format!("/v1/admin/tenants?{q}")).await;
            assert_eq!(s, 422, "{q}: {e}");
            assert!(e["error"]["code"].is_string(), "{q}");
        }
        assert_eq!(api.get("/v1/admin/tenants?cursor=").await.0, 200, "an empty cursor is the first page");
        assert_eq!(api.get("/v1/admin/audit/events?limit=501").await.0, 422);
        let (s, _) = api.get("/v1/admin/tenants/not-an-id").await;
        assert_eq!(s, 404);
        let (s, e) = api.get("/v1/admin/nothing-here").await;
        assert_eq!(s, 404);
        assert_eq!(e["error"]["code"], "not_found");
        assert!(app.events_of("TENANT_CREATED").await.is_empty());
    }
);

both!(
    async fn a_read_token_cannot_write_and_roles_still_apply(app) {
        app.sign_in_owner().await;
        let read = Api::new(&app, &token(&app, "read", "").await);
        let (s, e) = read.post("/v1/admin/tenants", json!({"name": "Acme"})).await;
        assert_eq!(s, 403);
        assert_eq!(e["error"]["code"], "insufficient_scope");
        assert!(app.events_of("TENANT_CREATED").await.is_empty());
    }
);

both!(
    async fn a_tenant_restricted_token_sees_only_its_tenant_and_another_is_not_found(app) {
        app.sign_in_owner().await;
        let acme = app.create_tenant("Acme", "acme").await;
        let globex = app.create_tenant("Globex", "globex").await;
        let api = Api::new(&app, &token(&app, "read_write", &acme).await);
        let (_, list) = api.get("/v1/admin/tenants").await;
        assert_eq!(list["items"].as_array().unwrap().len(), 1);
        assert_eq!(list["items"][0]["id"], acme.as_str());
        assert_eq!(api.get(&format!("/v1/admin/tenants/{globex}")).await.0, 404);
        assert_eq!(api.get(&format!("/v1/admin/users?tenant_id={globex}")).await.0, 404);
        let (s, _) = api.post("/v1/admin/users", json!({"email": "x@globex.example", "roles": ["viewer"], "tenant_id": globex})).await;
        assert_eq!(s, 404);
        assert_eq!(api.get("/v1/admin/users").await.0, 404, "not the platform's users either");
        assert!(app.events_of("USER_INVITED").await.is_empty());
    }
);

both!(
    async fn suspending_the_owner_or_the_tokens_tenant_stops_the_token_at_once(app) {
        app.sign_in_owner().await;
        let acme = app.create_tenant("Acme", "acme").await;
        let api = Api::new(&app, &token(&app, "read", &acme).await);
        assert_eq!(api.get("/v1/admin/tenants").await.0, 200);
        let page = app.get_html(&format!("/tenants/{acme}")).await;
        app.post_form(&format!("/tenants/{acme}/status"), &page, &[("status", "suspended")]).await;
        assert_eq!(api.get("/v1/admin/tenants").await.0, 401);

        // A tenant admin's token dies with their suspension.
        app.post_form(&format!("/tenants/{acme}/status"), &page, &[("status", "active")]).await;
        app.invite("ada@acme.example", &acme, &["admin"]).await;
        let ada = app.tenant_client("acme");
        ada.register(&app.invitation_link("ada@acme.example").await, "a long and lovely passphrase").await;
        ada.sign_in("ada@acme.example", "a long and lovely passphrase").await;
        let page = ada.get_html("/portal/settings/tokens").await;
        let r = ada.post_form("/portal/settings/tokens", &page, &[("name", "ada"), ("scope", "read_write"), ("expires_in_days", "10")]).await;
        let html = r.text().await.unwrap();
        let t = html.split("id=\"new-token\">").nth(1).unwrap().split('<').next().unwrap().to_owned();
        let ada_api = Api::new(&app, &t);
        let (s, users) = ada_api.get("/v1/admin/users").await;
        assert_eq!(s, 200, "{users}");
        assert_eq!(users["items"].as_array().unwrap().len(), 1, "their own tenant's users");
        assert_eq!(ada_api.get("/v1/admin/tenants").await.0, 403, "no platform rights");
        let (s, _) = ada_api.post("/v1/admin/users", json!({"email": "x@example.com", "roles": ["owner"]})).await;
        assert!(s == 403 || s == 422, "{s}");
        let ada_id = app.events_of("USER_INVITED").await[0].details["user_id"].as_str().unwrap().to_owned();
        let page = app.get_html(&format!("/tenants/{acme}/users/{ada_id}")).await;
        app.post_form(&format!("/tenants/{acme}/users/{ada_id}/suspend"), &page, &[]).await;
        assert_eq!(ada_api.get("/v1/admin/users").await.0, 401);
    }
);

both!(
    async fn an_idempotency_key_replays_the_first_create(app) {
        app.sign_in_owner().await;
        let api = Api::new(&app, &token(&app, "read_write", "").await);
        let send = |body: Value| {
            reqwest::Client::new()
                .post(app.url("/v1/admin/tenants"))
                .bearer_auth(&api.token)
                .header("idempotency-key", "create-acme-1")
                .json(&body)
                .send()
        };
        let first = send(json!({"name": "Acme"})).await.unwrap();
        assert_eq!(first.status(), 201);
        let a: Value = first.json().await.unwrap();
        let again = send(json!({"name": "Acme"})).await.unwrap();
        assert_eq!(again.status(), 201);
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        let b: Value = again.json().await.unwrap();
        assert_eq!(a["id"], b["id"]);
        assert_eq!(app.events_of("TENANT_CREATED").await.len(), 1, "created once");
        let other = send(json!({"name": "Globex"})).await.unwrap();
        assert_eq!(other.status(), 409);
    }
);

both!(
    async fn an_impersonation_session_cannot_create_tokens(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let page = app.get_html(&format!("/tenants/{tid}")).await;
        let r = app.post_form(&format!("/tenants/{tid}/impersonate"), &page, &[("reason", "look")]).await;
        let handoff = location(&r);
        let imp = app.tenant_client("acme");
        imp.get(&handoff[handoff.find("/impersonate").unwrap()..]).await;
        let portal = imp.get_html("/portal").await;
        assert!(!portal.contains("/portal/settings/tokens"), "no Tokens link while impersonating");
        let r = imp.post_form("/portal/settings/tokens", &portal, &[("name", "sneaky"), ("scope", "read_write"), ("expires_in_days", "10")]).await;
        assert_eq!(r.status(), 403);
        assert!(app.events_of("PAT_CREATED").await.is_empty());
    }
);

both!(
    async fn token_expiry_is_required_and_at_most_a_year(app) {
        app.sign_in_owner().await;
        let page = app.get_html("/settings/tokens").await;
        for days in ["", "0", "366", "abc"] {
            let r = app.post_form("/settings/tokens", &page, &[("name", "x"), ("scope", "read"), ("expires_in_days", days)]).await;
            assert_eq!(r.status(), 422, "{days:?}");
        }
        let r = app.post_form("/settings/tokens", &page, &[("name", ""), ("scope", "admin"), ("expires_in_days", "5")]).await;
        assert_eq!(r.status(), 422);
        assert!(app.events_of("PAT_CREATED").await.is_empty());
    }
);

both!(
    async fn every_endpoint_answers_and_audits_through_the_same_domain_operations(app) {
        app.sign_in_owner().await;
        let api = Api::new(&app, &token(&app, "read_write", "").await);
        use reqwest::Method as M;
        let (_, t) = api.post("/v1/admin/tenants", json!({"name": "Acme", "slug": "acme", "metadata": {"plan": "gold"}})).await;
        let tid = t["id"].as_str().unwrap().to_owned();
        assert_eq!(t["metadata"]["plan"], "gold");
        // PATCH metadata: a diff per key.
        let (s, t) = api.call(M::PATCH, &format!("/v1/admin/tenants/{tid}"), Some(json!({"metadata": {"plan": "platinum"}, "tier": "critical"}))).await;
        assert_eq!(s, 200, "{t}");
        assert_eq!(t["tier"], "critical");
        let diff = &app.events_of("TENANT_METADATA_UPDATED").await[0].details["changes"];
        assert_eq!(diff["metadata.plan"], json!({"old": "gold", "new": "platinum"}));
        let (s, _) = api.call(M::PATCH, &format!("/v1/admin/tenants/{tid}"), Some(json!({"tier": "platinum"}))).await;
        assert_eq!(s, 422);
        // Status.
        let (s, t) = api.post(&format!("/v1/admin/tenants/{tid}/status"), json!({"status": "read_only", "reason": "audit"})).await;
        assert_eq!((s, t["status"].as_str()), (200, Some("read_only")));
        let (s, e) = api.post("/v1/admin/users", json!({"email": "a@acme.example", "roles": ["admin"], "tenant_id": tid})).await;
        assert_eq!((s, e["error"]["code"].as_str()), (403, Some("tenant_read_only")), "writes follow the tenant's status");
        api.post(&format!("/v1/admin/tenants/{tid}/status"), json!({"status": "active"})).await;
        // Users: create, get, suspend, reactivate, invitation resend and revoke.
        let (_, c) = api.post("/v1/admin/users", json!({"email": "a@acme.example", "name": "Ada", "roles": ["admin"], "tenant_id": tid})).await;
        let uid = c["user"]["id"].as_str().unwrap().to_owned();
        let (s, u) = api.get(&format!("/v1/admin/users/{uid}?tenant_id={tid}")).await;
        assert_eq!((s, u["invitation"]["spent"].as_bool()), (200, Some(false)));
        let (s, _) = api.post(&format!("/v1/admin/users/{uid}/invitation/resend?tenant_id={tid}"), json!({})).await;
        assert_eq!(s, 200);
        assert_eq!(app.events_of("INVITATION_RESENT").await.len(), 1);
        let (s, _) = api.call(M::DELETE, &format!("/v1/admin/users/{uid}/invitation?tenant_id={tid}"), None).await;
        assert_eq!(s, 204);
        assert_eq!(app.events_of("INVITATION_REVOKED").await.len(), 1);
        let (_, c) = api
            .post("/v1/admin/users", json!({"email": "b@acme.example", "roles": ["viewer"], "tenant_id": tid, "delivery": "one_time_password", "force_password_change": false}))
            .await;
        let bob = c["user"]["id"].as_str().unwrap().to_owned();
        let (s, u) = api.call(M::PATCH, &format!("/v1/admin/users/{bob}?tenant_id={tid}"), Some(json!({"status": "SUSPENDED"}))).await;
        assert_eq!((s, u["status"].as_str()), (200, Some("SUSPENDED")));
        let (s, u) = api.call(M::PATCH, &format!("/v1/admin/users/{bob}?tenant_id={tid}"), Some(json!({"status": "ACTIVE", "roles": ["developer"]}))).await;
        assert_eq!((s, u["status"].as_str()), (200, Some("ACTIVE")));
        assert_eq!(u["roles"], json!(["developer"]));
        let (s, _) = api.call(M::PATCH, &format!("/v1/admin/users/{bob}?tenant_id={tid}"), Some(json!({"status": "DELETED"}))).await;
        assert_eq!(s, 422);
        let (s, _) = api.post("/v1/admin/users", json!({"email": "c@acme.example", "roles": ["viewer", "developer"], "tenant_id": tid, "delivery": "one_time_password"})).await;
        assert_eq!(s, 422, "one role with a one-time password");
        assert_eq!(app.events_of("USER_SUSPENDED").await.len(), 1);
        assert_eq!(app.events_of("USER_REACTIVATED").await.len(), 1);
        // Paging errors and the platform's users.
        assert_eq!(api.get("/v1/admin/tenants?cursor=abc").await.0, 422);
        assert_eq!(api.get("/v1/admin/audit/events?from=yesterday").await.0, 422);
        let (s, users) = api.get("/v1/admin/users").await;
        assert_eq!(s, 200);
        assert_eq!(users["items"][0]["email"], OWNER_EMAIL);
        // Delete the tenant.
        let (s, _) = api.call(M::DELETE, &format!("/v1/admin/tenants/{tid}"), None).await;
        assert_eq!(s, 204);
        assert_eq!(api.get(&format!("/v1/admin/tenants/{tid}")).await.0, 404);
        let deleted = &app.events_of("TENANT_DELETED").await[0];
        assert!(deleted.details["token_id"].is_string());
    }
);

both!(
    async fn a_rate_limited_token_gets_429_with_retry_after(app) {
        app.sign_in_owner().await;
        let t = token(&app, "read", "").await;
        let c = reqwest::Client::new();
        let mut limited = None;
        for _ in 0..320 {
            let r = c.get(app.url("/v1/admin/tenants")).bearer_auth(&t).send().await.unwrap();
            if r.status() == 429 {
                limited = Some(r);
                break;
            }
        }
        let r = limited.expect("no 429 after 320 requests in a minute");
        assert!(r.headers().get("retry-after").is_some());
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "too_many_attempts");
    }
);

both!(
    async fn a_replayed_create_holds_no_one_time_password_and_dies_with_its_token(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let t = token(&app, "read_write", "").await;
        let body = json!({"email": "bob@acme.example", "roles": ["viewer"], "tenant_id": tid, "delivery": "one_time_password"});
        let send = |token: &str| {
            reqwest::Client::new()
                .post(app.url("/v1/admin/users"))
                .bearer_auth(token)
                .header("idempotency-key", "create-bob-1")
                .json(&body)
                .send()
        };
        let first = send(&t).await.unwrap();
        assert_eq!(first.status(), 201);
        let first: Value = first.json().await.unwrap();
        let otp = first["one_time_password"].as_str().unwrap().to_owned();

        let again = send(&t).await.unwrap();
        assert_eq!(again.status(), 201);
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        assert_eq!(again.headers()["idempotent-replay-redacted"], "one_time_password");
        let text = again.text().await.unwrap();
        assert!(!text.contains(&otp), "the kept reply holds no one-time password: {text}");
        let again: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(again["one_time_password"], Value::Null);
        assert_eq!(again["user"]["id"], first["user"]["id"]);

        // Revoke the token in the console: its kept replies are gone with it.
        let id = app.events_of("PAT_CREATED").await[0].details["token_id"].as_str().unwrap().to_owned();
        let page = app.get_html("/settings/tokens").await;
        let r = app.post_form(&format!("/settings/tokens/{id}/revoke"), &page, &[]).await;
        assert_eq!(r.status(), 303);
        let after = send(&t).await.unwrap();
        assert_eq!(after.status(), 401);
        assert!(after.headers().get("idempotent-replayed").is_none());
        let text = after.text().await.unwrap();
        assert!(!text.contains(&otp) && !text.contains("bob@acme.example"), "{text}");
        assert_eq!(app.events_of("USER_CREATED").await.len(), 1, "created once");
    }
);

both!(
    async fn concurrent_requests_with_one_idempotency_key_run_once(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let t = token(&app, "read_write", "").await;
        let created = reqwest::Client::new()
            .post(app.url("/v1/admin/users"))
            .bearer_auth(&t)
            .json(&json!({"email": "bob@acme.example", "roles": ["viewer"], "tenant_id": tid}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
        let id = created.json::<Value>().await.unwrap()["user"]["id"].as_str().unwrap().to_owned();
        let url = app.url(&format!("/v1/admin/users/{id}/invitation/resend?tenant_id={tid}"));
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(10));
        let mut racers = Vec::new();
        for _ in 0..10 {
            let (url, t, barrier) = (url.clone(), t.clone(), barrier.clone());
            racers.push(tokio::spawn(async move {
                let request = reqwest::Client::new().post(url).bearer_auth(t).header("idempotency-key", "resend-bob-1");
                barrier.wait().await;
                let r = request.send().await.unwrap();
                let replayed = r.headers().contains_key("idempotent-replayed");
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                (status, replayed, body["error"]["code"].as_str().unwrap_or_default().to_owned())
            }));
        }
        let mut answers = Vec::new();
        for r in racers {
            answers.push(r.await.unwrap());
        }
        let ran = answers.iter().filter(|(s, replayed, _)| *s == 200 && !replayed).count();
        assert_eq!(ran, 1, "{answers:?}");
        for (status, replayed, code) in &answers {
            assert!(
                (*status == 200 && (*replayed || ran == 1)) || (*status == 409 && code == "idempotency_key_in_use"),
                "every other racer is a replay or told the key is in use: {answers:?}"
            );
        }
        assert_eq!(app.events_of("INVITATION_RESENT").await.len(), 1, "resent once");
    }
);
