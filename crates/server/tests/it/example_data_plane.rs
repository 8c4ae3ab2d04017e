//! The example data plane (`examples/data-plane`, the SaaS product's own gateway) in front of a
//! real Quarterdeck: a tenant's key works, a revoked key is refused within a second, a
//! suspended tenant is refused, a key over its limit gets 429; the requests it serves are
//! counted exactly in the tenant's usage, and a hard budget stops the key (402). With a webhook
//! endpoint pointing at it (`tenant.*`), it provisions each tenant Quarterdeck creates and
//! refuses a tenant's traffic once it hears the tenant was suspended.

use crate::both;
use crate::data_plane::{api_key, owner, service_token};
use crate::helpers::*;
use crate::portal_data_plane::{create_key, key_id_in, shown_secret};
use quarterdeck_domain::TenantId;
use quarterdeck_domain::TenantStatus;
use quarterdeck_domain::access::{ManageBudgets, ManageProviderCredentials, ManageTenants, ManageWebhooks, ReadUsage};
use quarterdeck_domain::budget::BudgetRequest;
use quarterdeck_domain::webhook::EndpointDraft;
use serde_json::{Value, json};
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
        let mut config = quarterdeck_example_data_plane::Config::new(app.base_url.parse().unwrap(), token, "openai");
        config.usage.source = "gateway-it-1".to_owned();
        config.usage.flush_interval = Duration::from_millis(100);
        tokio::spawn(quarterdeck_example_data_plane::serve(listener, config));
        Self {
            url,
            client: reqwest::Client::new(),
        }
    }

    /// The gateway with Quarterdeck's webhooks: an endpoint (subscribed to `tenant.*`, made by
    /// the owner) at its `/quarterdeck/webhooks`, verified with the endpoint's secret. Returns
    /// what the gateway knows of its tenants, and the endpoint's id.
    async fn start_with_webhooks(
        app: &TestApp,
        who: &quarterdeck_domain::Principal,
        token: &str,
    ) -> (Self, quarterdeck_example_data_plane::Tenants, uuid::Uuid) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let auth = who.require::<ManageWebhooks>().unwrap();
        let regions = ["eu-west".to_owned(), "us-east".to_owned()];
        let draft = EndpointDraft::parse(
            &format!("{url}/quarterdeck/webhooks"),
            "example gateway",
            &["tenant.*"],
            None,
            true,
            &regions,
        )
        .unwrap();
        let made = app.core.create_webhook_endpoint(&auth, draft).await.unwrap();
        let mut config = quarterdeck_example_data_plane::Config::new(app.base_url.parse().unwrap(), token, "openai");
        config.usage.source = "gateway-it-hooks".to_owned();
        let webhooks = quarterdeck_example_data_plane::WebhookConfig::new(made.secret);
        let tenants = webhooks.tenants.clone();
        config.webhooks = Some(webhooks);
        tokio::spawn(quarterdeck_example_data_plane::serve(listener, config));
        let gateway = Self {
            url,
            client: reqwest::Client::new(),
        };
        (gateway, tenants, made.endpoint.id)
    }

    async fn whoami(&self, key: &str) -> reqwest::Response {
        self.client
            .get(format!("{}/v1/whoami", self.url))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
    }

    async fn chat(&self, key: &str, prompt: &str) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/chat", self.url))
            .bearer_auth(key)
            .json(&json!({ "prompt": prompt }))
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
        let token = service_token(&app, &["keys:verify", "credentials:read", "usage:write"], "").await;
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
        let token = service_token(&app, &["keys:verify", "credentials:read", "usage:write"], "").await;
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

both!(
    async fn requests_through_the_example_gateway_are_counted_exactly_and_a_hard_budget_stops_its_key(app) {
        let owner = owner(&app).await;
        let acme = app.create_tenant("Acme", "acme").await;
        let tenant: TenantId = acme.parse().unwrap();
        store_openai_key(&app, &owner, &acme, "sk-acme-0123456789wxyz").await;
        let token = service_token(&app, &["keys:verify", "credentials:read", "usage:write"], "").await;
        let gateway = Gateway::start(&app, &token).await;
        let (key_id, key) = api_key(&app, &owner, &acme, "").await;

        const N: i64 = 7;
        let mut tokens = 0;
        for i in 0..N {
            let r = gateway.chat(&key, &"x".repeat(40 * (i as usize + 1))).await;
            assert_eq!(r.status(), 200);
            let body: Value = r.json().await.unwrap();
            tokens += body["usage"]["total_tokens"].as_i64().unwrap();
        }
        // 40, 80, … 280 characters: 10 + 20 + … + 70 prompt tokens, echoed.
        assert_eq!(tokens, 2 * 280);

        // The tenant's usage (what the portal's usage page reads) counts exactly N requests and
        // the tokens the gateway answered, all under the key, once the sweep has them.
        let proof = owner.require_for_tenant::<ReadUsage>(tenant).unwrap();
        let today = app.clock_now().date();
        let (from, to) = (today.previous_day().unwrap(), today.next_day().unwrap());
        let total = |report: &quarterdeck_domain::core::UsageReport, meter: &str| {
            report.meters.iter().find(|m| m.meter.event_type == meter).map_or(0, |m| m.total)
        };
        poll_until("the gateway's usage swept", || async {
            let report = app.core.usage_report(&proof, from, to).await.unwrap();
            total(&report, "api.requests") == N && total(&report, "llm.tokens") == tokens
        })
        .await;
        let report = app.core.usage_report(&proof, from, to).await.unwrap();
        let requests = report.meters.iter().find(|m| m.meter.event_type == "api.requests").unwrap();
        assert_eq!(requests.events, N);
        assert_eq!(requests.by_key.len(), 1);
        assert_eq!(requests.by_key[0].key, key_id.to_string());
        assert_eq!(requests.by_key[0].value, N);
        assert_eq!(requests.by_dimension[0].label, "endpoint=/v1/chat");
        let llm = report.meters.iter().find(|m| m.meter.event_type == "llm.tokens").unwrap();
        assert_eq!((llm.total, llm.events), (tokens, N));
        assert_eq!(llm.by_dimension[0].label, "model=gpt-4o-mini");
        let cost = app.core.cost_report(&proof, 1).await.unwrap();
        let quantity = |meter: &str| -> i64 {
            cost.months[0].lines.iter().filter(|l| l.meter == meter).map(|l| l.quantity).sum()
        };
        assert_eq!((quantity("api.requests"), quantity("llm.tokens")), (N, tokens));
        // The raw events themselves: one per meter per request, however the batches went.
        assert_eq!(app.core.store().usage_event_count(tenant).await.unwrap(), 2 * N as u64);

        // USD 0.05 with a hard limit: 20,000 tokens at USD 2.50 per million. Each chat of
        // 16,000 characters uses 8,000.
        let billing = owner.require::<ManageBudgets>().unwrap();
        let budget = BudgetRequest {
            amount: "0.05".into(),
            threshold_percent: String::new(),
            hard_limit: true,
        };
        app.core.set_budget(&billing, tenant, &budget).await.unwrap();
        let big = "y".repeat(16_000);
        let mut served = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        let refused = loop {
            let r = gateway.chat(&key, &big).await;
            if r.status() != 200 {
                break (r.status().as_u16(), r.json::<Value>().await.unwrap());
            }
            served += 1;
            assert!(Instant::now() < deadline, "the key still works after {served} chats");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(served >= 3, "stopped only past the budget, after {served} chats");
        assert_eq!(refused.0, 402, "{}", refused.1);
        assert_eq!(refused.1["error"], "budget_exceeded");
        assert!(refused.1["message"].as_str().unwrap().contains("monthly budget"));
        let status = app.core.budget_status(&proof).await.unwrap().unwrap();
        assert!(status.blocked);
        assert!(status.spent >= 5, "spent {}", status.spent);
        assert_eq!(app.events_of("BUDGET_EXCEEDED").await.len(), 1);
    }
);

both!(
    async fn the_example_gateway_provisions_a_tenant_from_its_webhook_and_refuses_it_once_told_it_is_suspended(app) {
        let owner = owner(&app).await;
        let token = service_token(&app, &["keys:verify", "credentials:read", "usage:write"], "").await;
        let (gateway, tenants, endpoint) = Gateway::start_with_webhooks(&app, &owner, &token).await;

        // Created in the console: the gateway hears tenant.created and provisions it.
        let acme = app.create_tenant("Acme", "acme").await;
        let tenant: TenantId = acme.parse().unwrap();
        poll_until("the gateway to provision acme", || async { tenants.get(tenant.0).is_some() }).await;
        let state = tenants.get(tenant.0).unwrap();
        assert!(state.provisioned);
        assert_eq!((state.slug.as_str(), state.status.as_str()), ("acme", "active"));
        store_openai_key(&app, &owner, &acme, "sk-acme-0123456789wxyz").await;
        let (_, key) = api_key(&app, &owner, &acme, "").await;
        assert_eq!(gateway.whoami(&key).await.status(), 200);

        // Suspended: the gateway hears it and refuses the tenant's traffic.
        let manage = owner.require::<ManageTenants>().unwrap();
        app.core
            .set_tenant_status(&manage, tenant, TenantStatus::Suspended, "unpaid")
            .await
            .unwrap();
        poll_until("the gateway to hear of the suspension", || async {
            tenants.get(tenant.0).is_some_and(|t| t.status == "suspended")
        })
        .await;
        let r = gateway.whoami(&key).await;
        assert_eq!(r.status(), 403);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "tenant_suspended");

        // Active again: served again. Deleted: deprovisioned.
        app.core
            .set_tenant_status(&manage, tenant, TenantStatus::Active, "paid")
            .await
            .unwrap();
        poll_until("the gateway to hear of the reactivation", || async {
            tenants.get(tenant.0).is_some_and(|t| t.status == "active")
        })
        .await;
        assert_eq!(gateway.whoami(&key).await.status(), 200);
        app.core.delete_tenant(&manage, tenant, "acme").await.unwrap();
        poll_until("the gateway to deprovision acme", || async {
            tenants.get(tenant.0).is_some_and(|t| !t.provisioned)
        })
        .await;

        // Every delivery verified and answered 204 at the first attempt; a forged one is refused.
        let auth = owner.require::<ManageWebhooks>().unwrap();
        // The gateway applies an event before it answers: the last answer may still be on its way.
        poll_until("every delivery recorded", || async {
            let d = app.core.webhook_deliveries(&auth, endpoint, 50, None).await.unwrap();
            d.len() == 4 && d.iter().all(|d| d.status != "pending")
        })
        .await;
        let deliveries = app.core.webhook_deliveries(&auth, endpoint, 50, None).await.unwrap();
        let types: Vec<&str> = deliveries.iter().rev().map(|d| d.event_type.as_str()).collect();
        assert_eq!(
            types,
            ["tenant.created", "tenant.status_changed", "tenant.status_changed", "tenant.deleted"]
        );
        assert!(
            deliveries.iter().all(|d| d.status == "delivered" && d.attempts == 1 && d.last_status == Some(204)),
            "{deliveries:?}"
        );
        let forged = gateway
            .client
            .post(format!("{}/quarterdeck/webhooks", gateway.url))
            .header("webhook-id", "evt_forged")
            .header("webhook-timestamp", app.clock_now().unix_timestamp().to_string())
            .header("webhook-signature", "v1,bm90IGEgc2lnbmF0dXJlIGF0IGFsbCwgbm90IG9uZQ==")
            .body(r#"{"type": "tenant.created", "data": {"tenant": {"id": "0190a000-0000-7000-8000-000000000001"}}}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status(), 401);
        assert!(tenants.get("0190a000-0000-7000-8000-000000000001".parse().unwrap()).is_none());
    }
);
