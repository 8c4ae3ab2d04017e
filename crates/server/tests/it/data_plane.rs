//! The data plane's questions: tenant API keys verified with a service token, provider
//! credentials resolved and their reads audited (issue 11).

use crate::both;
use crate::helpers::*;
use quarterdeck_domain::access::{ManageApiKeys, ManageProviderCredentials};
use quarterdeck_domain::api_key::NewApiKeyRequest;
use quarterdeck_domain::service_token::NewServiceTokenRequest;
use quarterdeck_domain::user::Directory;
use quarterdeck_domain::{EmailAddress, Principal, TenantId};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The owner, signed in, as a principal for calling `Core` directly.
pub async fn owner(app: &TestApp) -> Principal {
    app.sign_in_owner().await;
    let email = EmailAddress::parse(OWNER_EMAIL).unwrap();
    let (user, _) = app
        .core
        .store()
        .user_by_email(Directory::Platform, &email)
        .await
        .unwrap()
        .unwrap();
    app.core.principal_of(&user)
}

/// A service token with these scopes (made as the CLI makes them).
pub async fn service_token(app: &TestApp, scopes: &[&str], region: &str) -> String {
    let req = NewServiceTokenRequest {
        name: "gateway".into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        region: region.into(),
        expires_in_days: String::new(),
    };
    let (_, secret) = app.core.create_service_token_from_cli(req).await.unwrap();
    secret.expose().to_owned()
}

/// A key of `tenant` with an optional limit; returns (key id, secret).
pub async fn api_key(app: &TestApp, who: &Principal, tenant: &str, rpm: &str) -> (uuid::Uuid, String) {
    let tenant: TenantId = tenant.parse().unwrap();
    let auth = who.require_for_tenant::<ManageApiKeys>(tenant).unwrap();
    let req = NewApiKeyRequest {
        name: "ci".into(),
        scopes: vec!["read".into()],
        expires_in_days: String::new(),
        requests_per_minute: rpm.into(),
    };
    let (key, secret) = app.core.create_api_key(&auth, req).await.unwrap();
    (key.id, secret.expose().to_owned())
}

pub async fn verify(app: &TestApp, token: &str, key: &str) -> (u16, Value) {
    let r = app
        .client
        .post(app.url("/v1/data-plane/keys/verify"))
        .bearer_auth(token)
        .json(&json!({ "key": key }))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

both!(
    async fn a_key_made_for_a_tenant_verifies_with_its_tenant_and_scopes(app) {
        let owner = owner(&app).await;
        let tid = app.create_tenant("Acme", "acme").await;
        let token = service_token(&app, &["keys:verify"], "").await;
        let (id, secret) = api_key(&app, &owner, &tid, "").await;
        assert!(secret.starts_with("qd_live_"), "{secret}");
        let (status, body) = verify(&app, &token, &secret).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["valid"], true);
        assert_eq!(body["tenant"]["id"], tid.as_str());
        assert_eq!(body["tenant"]["slug"], "acme");
        assert_eq!(body["tenant"]["status"], "active");
        assert_eq!(body["tenant"]["region"], "eu-west");
        assert_eq!(body["key"]["id"], id.to_string());
        assert_eq!(body["key"]["scopes"], json!(["read"]));
        let created = app.events_of("API_KEY_CREATED").await;
        assert_eq!(created.len(), 1);
        assert_eq!(created[0].details["key_id"], id.to_string());
        assert!(!created[0].details.to_string().contains(&secret), "the secret is never audited");
        let rows = app.control_rows("api_key_secret").await;
        assert_eq!(rows, 1);
    }
);

both!(
    async fn unknown_revoked_and_suspended_keys_do_not_verify_and_say_why(app) {
        let owner = owner(&app).await;
        let tid = app.create_tenant("Acme", "acme").await;
        let token = service_token(&app, &["keys:verify"], "").await;
        let (id, secret) = api_key(&app, &owner, &tid, "").await;
        let (status, body) = verify(&app, &token, "qd_live_nothing-like-this").await;
        assert_eq!((status, body["valid"].clone(), body["code"].clone()), (200, json!(false), json!("unknown")));

        let tenant: TenantId = tid.parse().unwrap();
        let auth = owner.require_for_tenant::<ManageApiKeys>(tenant).unwrap();
        app.core.revoke_api_key(&auth, id).await.unwrap();
        let (_, body) = verify(&app, &token, &secret).await;
        assert_eq!(body["code"], "revoked", "{body}");

        let (_, other) = api_key(&app, &owner, &tid, "").await;
        let page = app.get_html(&format!("/tenants/{tid}")).await;
        let r = app
            .post_form(&format!("/tenants/{tid}/status"), &page, &[("status", "suspended"), ("reason", "unpaid")])
            .await;
        assert_eq!(r.status(), 303);
        let (_, body) = verify(&app, &token, &other).await;
        assert_eq!(body["code"], "tenant_suspended", "{body}");
        let refused = app.core.create_api_key(&auth, NewApiKeyRequest {
            name: "more".into(),
            scopes: vec!["read".into()],
            ..Default::default()
        });
        assert_eq!(refused.await.unwrap_err().code(), "tenant_suspended");
    }
);

both!(
    async fn a_rolled_key_keeps_its_old_secret_only_for_the_grace_period(app) {
        let owner = owner(&app).await;
        let tid = app.create_tenant("Acme", "acme").await;
        let token = service_token(&app, &["keys:verify"], "").await;
        let (id, old) = api_key(&app, &owner, &tid, "").await;
        let auth = owner.require_for_tenant::<ManageApiKeys>(tid.parse().unwrap()).unwrap();
        let (key, new) = app.core.roll_api_key(&auth, id, "3600").await.unwrap();
        assert_ne!(old, new.expose());
        assert_eq!(key.last_four, new.expose()[new.expose().len() - 4..]);
        assert_eq!(verify(&app, &token, &old).await.1["valid"], true);
        assert_eq!(verify(&app, &token, new.expose()).await.1["valid"], true);
        app.clock.advance(time::Duration::seconds(3601));
        let (_, body) = verify(&app, &token, &old).await;
        assert_eq!(body["code"], "revoked", "{body}");
        assert_eq!(verify(&app, &token, new.expose()).await.1["valid"], true);
        assert_eq!(app.events_of("API_KEY_ROLLED").await.len(), 1);
    }
);

both!(
    async fn a_service_token_without_the_scope_or_of_another_region_gets_nothing(app) {
        let owner = owner(&app).await;
        let tid = app.create_tenant("Acme", "acme").await;
        let (_, secret) = api_key(&app, &owner, &tid, "").await;
        let reader = service_token(&app, &["credentials:read"], "").await;
        let (status, body) = verify(&app, &reader, &secret).await;
        assert_eq!((status, body["error"]["code"].clone()), (403, json!("insufficient_scope")));
        let us = service_token(&app, &["keys:verify"], "us-east").await;
        let (_, body) = verify(&app, &us, &secret).await;
        assert_eq!(body["code"], "unknown", "a key of another region is not even known: {body}");
        let (status, _) = verify(&app, "qd_svc_wrong", &secret).await;
        assert_eq!(status, 401);
        let r = app
            .client
            .post(app.url("/v1/data-plane/keys/verify"))
            .bearer_auth(&us)
            .json(&json!({ "key": 42 }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422);
    }
);

both!(
    async fn a_resolved_credential_is_audited_once_a_minute_with_its_count(app) {
        let owner = owner(&app).await;
        let tid = app.create_tenant("Acme", "acme").await;
        let tenant: TenantId = tid.parse().unwrap();
        let auth = owner.require_for_tenant::<ManageProviderCredentials>(tenant).unwrap();
        let input = BTreeMap::from([("api_key".to_owned(), "sk-test-1234567890abcd".to_owned())]);
        let stored = app.core.set_provider_credential(&auth, "openai", &input).await.unwrap();
        assert_eq!(stored.hints["api_key"].last_four, "abcd");
        let token = service_token(&app, &["credentials:read"], "").await;
        for _ in 0..3 {
            let r = app
                .client
                .post(app.url("/v1/data-plane/credentials/resolve"))
                .bearer_auth(&token)
                .json(&json!({ "tenant_id": tid, "provider": "openai" }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["fields"]["api_key"], "sk-test-1234567890abcd");
        }
        assert_eq!(app.core.flush_credential_reads().await.unwrap(), 0, "the minute is not over");
        app.clock.advance(time::Duration::seconds(61));
        // The server's own flush (every ~10 s) may write it first: either way, once.
        app.core.flush_credential_reads().await.unwrap();
        let reads = app.events_of("PROVIDER_CREDENTIAL_READ").await;
        assert_eq!(reads.len(), 1);
        assert_eq!(reads[0].details["count"], 3);
        assert!(!reads[0].details.to_string().contains("sk-test"));
        let sealed: String = app.control_value("SELECT sealed FROM provider_credential").await;
        assert!(!sealed.contains("sk-test"), "sealed at rest");
    }
);
