//! Tenant API keys through the Automation API (`/v1/admin/tenants/{id}/api-keys`, issue 11):
//! create, list, get, roll, revoke with a personal access token; the secret shown once and
//! never replayed; tenant limits, scopes and statuses; every response checked against the
//! OpenAPI document, the data plane's verification included.

use crate::api::{Api, token};
use crate::both;
use crate::data_plane::{service_token, verify};
use crate::helpers::*;
use crate::openapi::check_response;
use serde_json::{Value, json};

async fn document(app: &TestApp) -> Value {
    app.client
        .get(app.url("/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Verify `key` with a service token, checking the answer against the document.
async fn verified(app: &TestApp, doc: &Value, service: &str, key: &str) -> Value {
    let (status, body) = verify(app, service, key).await;
    check_response(doc, "POST", "/v1/data-plane/keys/verify", status, &body);
    assert_eq!(status, 200, "{body}");
    body
}

/// A POST with an `Idempotency-Key`, its answer checked against the document; returns
/// (status, headers, raw body).
async fn idempotent_post(
    app: &TestApp,
    doc: &Value,
    pat: &str,
    path: &str,
    key: &str,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, String) {
    let r = reqwest::Client::new()
        .post(app.url(path))
        .bearer_auth(pat)
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    check_response(doc, "POST", path, status, &serde_json::from_str(&text).unwrap());
    (status, headers, text)
}

/// A tenant admin's personal access token (made in the portal).
pub async fn tenant_admin_token(app: &TestApp, tid: &str, slug: &str, email: &str) -> String {
    let admin = app.tenant_admin(tid, slug, email).await;
    let page = admin.get_html("/portal/settings/tokens").await;
    let r = admin
        .post_form(
            "/portal/settings/tokens",
            &page,
            &[("name", "ci"), ("scope", "read_write"), ("expires_in_days", "10")],
        )
        .await;
    let html = r.text().await.unwrap();
    html.split("id=\"new-token\">")
        .nth(1)
        .unwrap()
        .split('<')
        .next()
        .unwrap()
        .to_owned()
}

both!(
    async fn a_token_creates_lists_gets_rolls_and_revokes_keys_that_the_data_plane_verifies(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let api = Api::new(&app, &token(&app, "read_write", "").await);
        let doc = document(&app).await;
        let service = service_token(&app, &["keys:verify"], "").await;
        let keys = format!("/v1/admin/tenants/{tid}/api-keys");

        let (s, created) = api
            .post(&keys, json!({"name": "gateway", "scopes": ["read"], "expires_in_days": 30, "requests_per_minute": 120}))
            .await;
        assert_eq!(s, 201, "{created}");
        let secret = created["secret"].as_str().unwrap().to_owned();
        assert!(secret.starts_with("qd_live_"), "{secret}");
        let key = &created["key"];
        let id = key["id"].as_str().unwrap().to_owned();
        assert_eq!(key["tenant_id"], tid.as_str());
        assert_eq!((key["name"].as_str(), key["state"].as_str()), (Some("gateway"), Some("active")));
        assert_eq!(key["scopes"], json!(["read"]));
        assert_eq!(key["prefix"], "qd_live_");
        assert_eq!(key["last_four"].as_str().unwrap(), &secret[secret.len() - 4..]);
        assert_eq!(key["requests_per_minute"], 120);
        assert_eq!(key["created_by"], OWNER_EMAIL);
        assert!(key["expires_at"].is_string() && key["revoked_at"].is_null(), "{key}");

        // The data plane knows it at once.
        let v = verified(&app, &doc, &service, &secret).await;
        assert_eq!(v["valid"], true, "{v}");
        assert_eq!((v["tenant"]["id"].as_str(), v["key"]["id"].as_str()), (Some(tid.as_str()), Some(id.as_str())));
        assert_eq!(v["limits"]["requests_per_minute"], 120);

        // Listed and read back as metadata only.
        let (s, list) = api.get(&keys).await;
        assert_eq!(s, 200, "{list}");
        assert_eq!(list["items"].as_array().unwrap().len(), 1);
        assert_eq!((list["items"][0]["id"].as_str(), &list["next_cursor"]), (Some(id.as_str()), &Value::Null));
        let (s, got) = api.get(&format!("{keys}/{id}")).await;
        assert_eq!((s, got["id"].as_str()), (200, Some(id.as_str())));
        assert!(!list.to_string().contains(&secret) && !got.to_string().contains(&secret));
        assert_eq!(api.get(&format!("{keys}/{}", uuid::Uuid::now_v7())).await.0, 404);
        assert_eq!(api.get(&format!("{keys}/not-a-key")).await.0, 404);
        assert_eq!(api.get(&format!("/v1/admin/tenants/{}/api-keys", uuid::Uuid::now_v7())).await.0, 404);

        // Roll: a new secret; the old one works through the grace period only.
        let (s, rolled) = api.post(&format!("{keys}/{id}/roll"), json!({"grace_seconds": 3600})).await;
        assert_eq!(s, 201, "{rolled}");
        let new = rolled["secret"].as_str().unwrap().to_owned();
        assert_ne!(new, secret);
        assert_eq!(rolled["key"]["id"], id.as_str());
        assert!(rolled["key"]["rolled_at"].is_string());
        assert_eq!(verified(&app, &doc, &service, &secret).await["valid"], true, "within the grace");
        assert_eq!(verified(&app, &doc, &service, &new).await["valid"], true);

        // Revoke, twice: the second answers the revoked key as it is.
        let (s, revoked) = api.post(&format!("{keys}/{id}/revoke"), json!({})).await;
        assert_eq!((s, revoked["state"].as_str()), (200, Some("revoked")), "{revoked}");
        assert!(revoked["revoked_at"].is_string());
        let (s, again) = api.call(reqwest::Method::POST, &format!("{keys}/{id}/revoke"), None).await;
        assert_eq!((s, &again["revoked_at"]), (200, &revoked["revoked_at"]));
        assert_eq!(app.events_of("API_KEY_REVOKED").await.len(), 1, "revoked once");
        let v = verified(&app, &doc, &service, &new).await;
        assert_eq!((v["valid"].as_bool(), v["code"].as_str()), (Some(false), Some("revoked")), "{v}");
        let (s, e) = api.post(&format!("{keys}/{id}/roll"), json!({"grace_seconds": 0})).await;
        assert_eq!((s, e["error"]["code"].as_str()), (409, Some("api_key_revoked")));

        // Audited with the token, never with a secret; never logged.
        let created = &app.events_of("API_KEY_CREATED").await[0];
        assert!(created.details["token_id"].is_string(), "{}", created.details);
        assert_eq!(app.events_of("API_KEY_ROLLED").await.len(), 1);
        for event in app.events_of("API_KEY_CREATED").await.iter().chain(&app.events_of("API_KEY_ROLLED").await) {
            let details = event.details.to_string();
            assert!(!details.contains(&secret[8..]) && !details.contains(&new[8..]), "{details}");
        }
        assert!(!logs_contain(&secret[8..]) && !logs_contain(&new[8..]), "a secret was logged");

        // Pages: newest first, cursor to cursor.
        for name in ["two", "three"] {
            assert_eq!(api.post(&keys, json!({"name": name, "scopes": ["read", "write"]})).await.0, 201);
        }
        let (_, first) = api.get(&format!("{keys}?limit=2")).await;
        assert_eq!(first["items"].as_array().unwrap().len(), 2);
        assert_eq!(first["items"][0]["name"], "three");
        let cursor = first["next_cursor"].as_str().unwrap();
        let (_, last) = api.get(&format!("{keys}?limit=2&cursor={cursor}")).await;
        assert_eq!(last["items"].as_array().unwrap().len(), 1);
        assert_eq!((last["items"][0]["id"].as_str(), &last["next_cursor"]), (Some(id.as_str()), &Value::Null));
        for q in ["limit=0", "limit=201", "cursor=abc", "state=active"] {
            let (s, e) = api.get(&format!("{keys}?{q}")).await;
            assert_eq!(s, 422, "{q}: {e}");
        }
    }
);

both!(
    async fn an_idempotent_replay_of_a_create_or_roll_holds_no_secret(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let pat = token(&app, "read_write", "").await;
        let doc = document(&app).await;
        let path = format!("/v1/admin/tenants/{tid}/api-keys");
        let body = json!({"name": "gateway", "scopes": ["read"]});

        let (s, _, first) = idempotent_post(&app, &doc, &pat, &path, "create-gateway-1", &body).await;
        assert_eq!(s, 201, "{first}");
        let first: Value = serde_json::from_str(&first).unwrap();
        let secret = first["secret"].as_str().unwrap().to_owned();
        let (s, headers, text) = idempotent_post(&app, &doc, &pat, &path, "create-gateway-1", &body).await;
        assert_eq!(s, 201);
        assert_eq!(headers["idempotent-replayed"], "true");
        assert_eq!(headers["idempotent-replay-redacted"], "secret");
        assert!(!text.contains(&secret[8..]), "the kept reply holds no secret: {text}");
        let replay: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(replay["secret"], Value::Null);
        assert_eq!(replay["key"]["id"], first["key"]["id"]);
        assert_eq!(app.events_of("API_KEY_CREATED").await.len(), 1, "created once");

        let id = first["key"]["id"].as_str().unwrap();
        let roll = format!("{path}/{id}/roll");
        let grace = json!({"grace_seconds": 60});
        let (s, _, rolled) = idempotent_post(&app, &doc, &pat, &roll, "roll-gateway-1", &grace).await;
        assert_eq!(s, 201, "{rolled}");
        let new = serde_json::from_str::<Value>(&rolled).unwrap()["secret"].as_str().unwrap().to_owned();
        let (s, headers, text) = idempotent_post(&app, &doc, &pat, &roll, "roll-gateway-1", &grace).await;
        assert_eq!((s, headers["idempotent-replay-redacted"].to_str().unwrap()), (201, "secret"));
        assert!(!text.contains(&new[8..]), "{text}");
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["secret"], Value::Null);
        assert_eq!(app.events_of("API_KEY_ROLLED").await.len(), 1, "rolled once");
    }
);

both!(
    async fn a_tenant_users_token_reaches_its_own_tenants_keys_and_no_others(app) {
        app.sign_in_owner().await;
        let acme = app.create_tenant("Acme", "acme").await;
        let globex = app.create_tenant("Globex", "globex").await;
        let owner = Api::new(&app, &token(&app, "read_write", "").await);
        let (_, theirs) = owner.post(&format!("/v1/admin/tenants/{globex}/api-keys"), json!({"name": "globex", "scopes": ["read"]})).await;
        let theirs = theirs["key"]["id"].as_str().unwrap().to_owned();

        let ada = Api::new(&app, &tenant_admin_token(&app, &acme, "acme", "ada@acme.example").await);
        let (s, mine) = ada.post(&format!("/v1/admin/tenants/{acme}/api-keys"), json!({"name": "mine", "scopes": ["write"]})).await;
        assert_eq!(s, 201, "{mine}");
        assert_eq!(mine["key"]["created_by"], "ada@acme.example");
        let (s, list) = ada.get(&format!("/v1/admin/tenants/{acme}/api-keys")).await;
        assert_eq!((s, list["items"].as_array().unwrap().len()), (200, 1));

        // Another tenant's keys do not exist for this token, under either tenant's path.
        assert_eq!(ada.get(&format!("/v1/admin/tenants/{globex}/api-keys")).await.0, 404);
        assert_eq!(ada.get(&format!("/v1/admin/tenants/{globex}/api-keys/{theirs}")).await.0, 404);
        assert_eq!(ada.get(&format!("/v1/admin/tenants/{acme}/api-keys/{theirs}")).await.0, 404);
        let (s, _) = ada.post(&format!("/v1/admin/tenants/{globex}/api-keys"), json!({"name": "sneaky", "scopes": ["read"]})).await;
        assert_eq!(s, 404);
        assert_eq!(ada.post(&format!("/v1/admin/tenants/{globex}/api-keys/{theirs}/revoke"), json!({})).await.0, 404);
        assert_eq!(ada.post(&format!("/v1/admin/tenants/{acme}/api-keys/{theirs}/revoke"), json!({})).await.0, 404);
        assert_eq!(ada.post(&format!("/v1/admin/tenants/{globex}/api-keys/{theirs}/roll"), json!({"grace_seconds": 0})).await.0, 404);

        // So does a platform token restricted to Acme.
        let restricted = Api::new(&app, &token(&app, "read_write", &acme).await);
        assert_eq!(restricted.get(&format!("/v1/admin/tenants/{globex}/api-keys")).await.0, 404);
        assert_eq!(restricted.get(&format!("/v1/admin/tenants/{acme}/api-keys")).await.0, 200);
        let (_, theirs_now) = owner.get(&format!("/v1/admin/tenants/{globex}/api-keys/{theirs}")).await;
        assert_eq!(theirs_now["state"], "active", "untouched");
        assert_eq!(app.events_of("API_KEY_CREATED").await.len(), 2);
    }
);

both!(
    async fn read_tokens_bad_bodies_and_long_graces_are_refused_with_codes_and_fields(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let keys = format!("/v1/admin/tenants/{tid}/api-keys");
        let read = Api::new(&app, &token(&app, "read", "").await);
        let (s, e) = read.post(&keys, json!({"name": "ci", "scopes": ["read"]})).await;
        assert_eq!((s, e["error"]["code"].as_str()), (403, Some("insufficient_scope")));
        assert_eq!(read.get(&keys).await.0, 200, "a read token reads");

        let api = Api::new(&app, &token(&app, "read_write", "").await);
        let (s, e) = api
            .post(&keys, json!({"name": " ", "scopes": ["admin"], "expires_in_days": 0, "requests_per_minute": -1}))
            .await;
        assert_eq!((s, e["error"]["code"].as_str()), (422, Some("validation_failed")), "{e}");
        let fields: Vec<&str> = e["error"]["fields"].as_array().unwrap().iter().map(|f| f["field"].as_str().unwrap()).collect();
        assert_eq!(fields, ["name", "scopes", "expires_in_days", "requests_per_minute"]);
        let (s, e) = api.post(&keys, json!({"name": "ci", "scopes": []})).await;
        assert_eq!((s, e["error"]["fields"][0]["field"].as_str()), (422, Some("scopes")));
        let (s, e) = api.post(&keys, json!({"name": "ci", "scopes": ["read"], "secret": "qd_live_mine"})).await;
        assert_eq!(s, 422);
        assert!(e["error"]["fields"][0]["message"].as_str().unwrap().contains("unknown field"), "{e}");
        let (s, e) = api.post(&keys, json!({"name": "ci", "scopes": ["read"], "expires_in_days": 3651})).await;
        assert_eq!((s, e["error"]["fields"][0]["field"].as_str()), (422, Some("expires_in_days")));
        assert!(app.events_of("API_KEY_CREATED").await.is_empty());

        let (_, k) = api.post(&keys, json!({"name": "ci", "scopes": ["read"]})).await;
        let roll = format!("{keys}/{}/roll", k["key"]["id"].as_str().unwrap());
        for grace in [json!(604_801), json!(-1), json!(1.5)] {
            let (s, e) = api.post(&roll, json!({ "grace_seconds": grace })).await;
            assert_eq!((s, e["error"]["fields"][0]["field"].as_str()), (422, Some("grace_seconds")), "{grace}: {e}");
            assert_eq!(e["error"]["fields"][0]["code"], "invalid_grace");
        }
        let (s, e) = api.post(&roll, json!({})).await;
        assert_eq!(s, 422, "the grace is required: {e}");
        assert!(e["error"]["fields"][0]["message"].as_str().unwrap().contains("grace_seconds"), "{e}");
        assert!(app.events_of("API_KEY_ROLLED").await.is_empty());
        let (s, _) = api.post(&roll, json!({"grace_seconds": 604_800})).await;
        assert_eq!(s, 201, "seven days is the most");
        // JSON Schema's integers: 60.0 is 60.
        assert_eq!(api.post(&roll, json!({"grace_seconds": 60.0})).await.0, 201);
        let (s, e) = api.post(&keys, json!({"name": "ci", "scopes": ["read"], "expires_in_days": 2.5})).await;
        assert_eq!((s, e["error"]["fields"][0]["field"].as_str()), (422, Some("expires_in_days")));
        let (s, k) = api.post(&keys, json!({"name": "ci", "scopes": ["read"], "requests_per_minute": 600.0})).await;
        assert_eq!((s, &k["key"]["requests_per_minute"]), (201, &json!(600)));
    }
);

both!(
    async fn a_read_only_or_suspended_tenant_gets_no_new_secrets_but_can_revoke(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let api = Api::new(&app, &token(&app, "read_write", "").await);
        let keys = format!("/v1/admin/tenants/{tid}/api-keys");
        let (_, k) = api.post(&keys, json!({"name": "ci", "scopes": ["read"]})).await;
        let id = k["key"]["id"].as_str().unwrap().to_owned();

        for (status, code) in [("read_only", "tenant_read_only"), ("suspended", "tenant_suspended")] {
            let (s, _) = api.post(&format!("/v1/admin/tenants/{tid}/status"), json!({"status": status})).await;
            assert_eq!(s, 200);
            let (s, e) = api.post(&keys, json!({"name": "more", "scopes": ["read"]})).await;
            assert_eq!((s, e["error"]["code"].as_str()), (403, Some(code)), "{status}");
            let (s, e) = api.post(&format!("{keys}/{id}/roll"), json!({"grace_seconds": 0})).await;
            assert_eq!((s, e["error"]["code"].as_str()), (403, Some(code)), "{status}");
            assert_eq!(api.get(&keys).await.0, 200, "still listed");
        }
        let (s, revoked) = api.post(&format!("{keys}/{id}/revoke"), json!({})).await;
        assert_eq!((s, revoked["state"].as_str()), (200, Some("revoked")), "taking away is always allowed");
        assert_eq!(app.events_of("API_KEY_CREATED").await.len(), 1);
        assert!(app.events_of("API_KEY_ROLLED").await.is_empty());
    }
);

/// POST a data-plane call; the answer checked against the document.
async fn data_plane(app: &TestApp, doc: &Value, token: &str, path: &str, body: Value) -> (u16, Value) {
    let r = app
        .client
        .post(app.url(path))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    check_response(doc, "POST", path, status, &body);
    (status, body)
}

both!(
    async fn the_data_planes_answers_and_refusals_match_the_document(app) {
        use quarterdeck_domain::access::ManageProviderCredentials;
        let owner = crate::data_plane::owner(&app).await;
        let tid = app.create_tenant("Acme", "acme").await;
        let doc = document(&app).await;
        let service = service_token(&app, &["keys:verify", "credentials:read"], "").await;
        let (_, secret) = crate::data_plane::api_key(&app, &owner, &tid, "").await;
        let v = verified(&app, &doc, &service, &secret).await;
        assert_eq!((v["valid"].as_bool(), &v["limits"]["requests_per_minute"]), (Some(true), &Value::Null), "{v}");
        assert!(v["key"]["expires_at"].is_null() && v.get("code").is_none(), "{v}");
        let v = verified(&app, &doc, &service, "qd_live_nothing").await;
        assert_eq!((v["valid"].as_bool(), v["code"].as_str()), (Some(false), Some("unknown")));
        assert!(v.get("tenant").is_none() && v.get("retry_after_seconds").is_none(), "{v}");

        let verify = "/v1/data-plane/keys/verify";
        let resolve = "/v1/data-plane/credentials/resolve";
        let (s, e) = data_plane(&app, &doc, &service, verify, json!({"key": 1})).await;
        assert_eq!((s, e["error"]["code"].as_str()), (422, Some("validation_failed")));
        assert_eq!(data_plane(&app, &doc, "qd_svc_wrong", verify, json!({"key": secret})).await.0, 401);
        let pat = crate::api::token(&app, "read_write", "").await;
        assert_eq!(data_plane(&app, &doc, &pat, verify, json!({"key": secret})).await.0, 401, "a personal access token is no service token");
        let verifier = service_token(&app, &["keys:verify"], "").await;
        let (s, e) = data_plane(&app, &doc, &verifier, resolve, json!({"tenant_id": tid, "provider": "openai"})).await;
        assert_eq!((s, e["error"]["code"].as_str()), (403, Some("insufficient_scope")));

        let auth = owner.require_for_tenant::<ManageProviderCredentials>(tid.parse().unwrap()).unwrap();
        let input = std::collections::BTreeMap::from([("api_key".to_owned(), "sk-test-abcdefgh1234".to_owned())]);
        app.core.set_provider_credential(&auth, "openai", &input).await.unwrap();
        let (s, c) = data_plane(&app, &doc, &service, resolve, json!({"tenant_id": tid, "provider": "openai"})).await;
        assert_eq!((s, c["fields"]["api_key"].as_str()), (200, Some("sk-test-abcdefgh1234")), "{c}");
        let (s, _) = data_plane(&app, &doc, &service, resolve, json!({"tenant_id": tid, "provider": "anthropic"})).await;
        assert_eq!(s, 404);
        let (s, e) = data_plane(&app, &doc, &service, resolve, json!({"tenant_id": "acme", "provider": "openai"})).await;
        assert_eq!((s, e["error"]["fields"][0]["field"].as_str()), (422, Some("tenant_id")));
    }
);
