//! The example data plane (`examples/data-plane`, the SaaS product's own gateway) in front of a
//! real Quarterdeck: a tenant's key works, a revoked key is refused within a second, a
//! suspended tenant is refused, a key over its limit gets 429.

use crate::both;
use crate::data_plane::{api_key, owner, service_token};
use crate::helpers::*;
use crate::portal_data_plane::{create_key, key_id_in, shown_secret};
use quarterdeck_domain::TenantId;
use quarterdeck_domain::access::ManageProviderCredentials;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The most a change may take to reach every node (issue 11).
const PROPAGATION: Duration = Duration::from_secs(1);

struct Gateway {
    url: String,
    client: reqwest::Client,
}

impl Gateway {
    async fn start(app: &TestApp, token: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let config = quarterdeck_example_data_plane::Config {
            quarterdeck_url: app.base_url.parse().unwrap(),
            service_token: token.to_owned(),
            provider: "openai".to_owned(),
        };
        tokio::spawn(quarterdeck_example_data_plane::serve(listener, config));
        Self {
            url,
            client: reqwest::Client::new(),
        }
    }

    async fn whoami(&self, key: &str) -> reqwest::Response {
        self.client
            .get(format!("{}/v1/whoami", self.url))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
    }

    /// Polls until `key` gets `status`, failing unless it happens within `within` of `since`.
    async fn refused_within(&self, key: &str, status: u16, since: Instant, within: Duration) {
        loop {
            let got = self.whoami(key).await.status().as_u16();
            if got == status {
                let took = since.elapsed();
                assert!(took <= within, "refused only after {took:?}");
                return;
            }
            assert!(
                since.elapsed() <= within,
                "still {got} after {within:?}, expected {status}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn store_openai_key(app: &TestApp, who: &quarterdeck_domain::Principal, tenant: &str, secret: &str) {
    let tenant: TenantId = tenant.parse().unwrap();
    let auth = who.require_for_tenant::<ManageProviderCredentials>(tenant).unwrap();
    let input = BTreeMap::from([("api_key".to_owned(), secret.to_owned())]);
    app.core.set_provider_credential(&auth, "openai", &input).await.unwrap();
}

both!(
    async fn a_key_made_in_the_portal_works_at_the_example_gateway_until_revoked_there_within_a_second(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let admin = app.tenant_admin(&tid, "acme", "ada@acme.example").await;
        let page = admin.get_html("/portal/provider-credentials").await;
        let r = admin
            .post_form("/portal/provider-credentials/openai", &page, &[("api_key", "sk-acme-0123456789wxyz")])
            .await;
        assert_eq!(r.status(), 303);
        let token = service_token(&app, &["keys:verify", "credentials:read"], "").await;
        let gateway = Gateway::start(&app, &token).await;
        let r = create_key(&admin, &[("name", "gateway"), ("scopes", "read")]).await;
        let html = r.text().await.unwrap();
        let key = shown_secret(&html).expect("the new key is shown once");

        let r = gateway.whoami(&key).await;
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["tenant"]["slug"], "acme");
        assert_eq!(body["tenant"]["id"], tid.as_str());
        assert_eq!(body["key"]["name"], "gateway");
        assert_eq!(body["credential"]["last_four"], "wxyz");
        assert!(!body.to_string().contains("sk-acme"), "the gateway never echoes the credential");

        let list = admin.get_html("/portal/api-keys").await;
        let id = key_id_in(&list, "revoke");
        let r = admin.post_form(&format!("/portal/api-keys/{id}/revoke"), &list, &[]).await;
        assert_eq!(r.status(), 303);
        let revoked_at = Instant::now();
        gateway.refused_within(&key, 401, revoked_at, PROPAGATION).await;
        let body: Value = gateway.whoami(&key).await.json().await.unwrap();
        assert_eq!(body["error"], "revoked");
    }
);

both!(
    async fn the_example_gateway_refuses_a_suspended_tenant_and_a_key_over_its_limit(app) {
        let owner = owner(&app).await;
        let acme = app.create_tenant("Acme", "acme").await;
        let globex = app.create_tenant("Globex", "globex").await;
        store_openai_key(&app, &owner, &acme, "sk-acme-0123456789wxyz").await;
        store_openai_key(&app, &owner, &globex, "sk-globex-0123456789").await;
        let token = service_token(&app, &["keys:verify", "credentials:read"], "").await;
        let gateway = Gateway::start(&app, &token).await;

        let (_, limited) = api_key(&app, &owner, &globex, "3").await;
        for _ in 0..3 {
            assert_eq!(gateway.whoami(&limited).await.status(), 200);
        }
        let r = gateway.whoami(&limited).await;
        assert_eq!(r.status(), 429);
        let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        // A sliding window: the used-up minute still weighs on the next one.
        assert!((1..=120).contains(&retry), "Retry-After {retry}");

        let (_, key) = api_key(&app, &owner, &acme, "").await;
        assert_eq!(gateway.whoami(&key).await.status(), 200);
        let page = app.get_html(&format!("/tenants/{acme}")).await;
        let r = app
            .post_form(&format!("/tenants/{acme}/status"), &page, &[("status", "suspended"), ("reason", "unpaid")])
            .await;
        assert_eq!(r.status(), 303);
        let suspended_at = Instant::now();
        gateway.refused_within(&key, 403, suspended_at, PROPAGATION).await;
        let body: Value = gateway.whoami(&key).await.json().await.unwrap();
        assert_eq!(body["error"], "tenant_suspended");
    }
);
