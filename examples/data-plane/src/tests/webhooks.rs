//! Quarterdeck's webhooks at `POST /quarterdeck/webhooks`: a verified `tenant.*` event
//! provisions a tenant or changes what the gateway knows of it; a suspension refuses the
//! tenant's traffic at the gateway even while Quarterdeck (here a stand-in) still verifies
//! its key; anything that does not verify changes nothing. The end-to-end walk against a real
//! Quarterdeck lives in the server's integration suite.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use time::OffsetDateTime;

use super::*;
use crate::{Tenants, WebhookConfig};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const ROLLED: &str = "whsec_c2VjcmV0IG51bWJlciB0d28gZm9yIHRoZSByb2xs";

fn fixed_now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
}

fn sign(secret: &str, id: &str, ts: i64, body: &str) -> String {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.{body}").as_bytes());
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

fn event(id: &str, event_type: &str, status: &str) -> String {
    event_at(id, event_type, status, "2027-01-15T08:00:00Z")
}

fn event_at(id: &str, event_type: &str, status: &str, timestamp: &str) -> String {
    json!({
        "id": id, "type": event_type, "version": 1, "timestamp": timestamp,
        "tenant_id": TENANT,
        "data": {"tenant": {"id": TENANT, "slug": "acme", "status": status}, "previous_status": null, "reason": null}
    })
    .to_string()
}

struct Hooks {
    world: World,
    tenants: Tenants,
}

impl Hooks {
    async fn start() -> Hooks {
        let config = WebhookConfig {
            secrets: vec![SECRET.to_owned(), ROLLED.to_owned()],
            now: fixed_now,
            ..WebhookConfig::new(String::new())
        };
        let tenants = config.tenants.clone();
        Hooks {
            world: World::with_webhooks(config).await,
            tenants,
        }
    }

    async fn post(&self, id: &str, ts: i64, signature: &str, body: &str) -> StatusCode {
        let r = self
            .world
            .http
            .post(self.world.data_plane.join("quarterdeck/webhooks").unwrap())
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        StatusCode::from_u16(r.status().as_u16()).unwrap()
    }

    /// A delivery signed with `SECRET` now.
    async fn deliver(&self, id: &str, event_type: &str, status: &str) -> StatusCode {
        let body = event(id, event_type, status);
        let ts = fixed_now().unix_timestamp();
        self.post(id, ts, &sign(SECRET, id, ts, &body), &body).await
    }

    /// A delivery, signed now, of an event that happened at `at`.
    async fn deliver_at(&self, id: &str, event_type: &str, status: &str, at: &str) -> StatusCode {
        let body = event_at(id, event_type, status, at);
        let ts = fixed_now().unix_timestamp();
        self.post(id, ts, &sign(SECRET, id, ts, &body), &body).await
    }
}

#[tokio::test]
async fn a_signed_suspension_refuses_the_tenant_at_the_gateway_while_quarterdeck_still_verifies_its_key() {
    let hooks = Hooks::start().await;
    assert_eq!(
        hooks.deliver("evt_1", "tenant.created", "active").await,
        StatusCode::NO_CONTENT
    );
    let acme = hooks.tenants.get(TENANT).unwrap();
    assert!(acme.provisioned);
    assert_eq!((acme.slug.as_str(), acme.status.as_str()), ("acme", "active"));
    assert_eq!(hooks.world.whoami("qd_live_good").await.0, StatusCode::OK);

    assert_eq!(
        hooks.deliver("evt_2", "tenant.status_changed", "suspended").await,
        StatusCode::NO_CONTENT
    );
    let (status, _, body) = hooks.world.whoami("qd_live_good").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"], "tenant_suspended");
    // The stand-in still says valid: the refusal is the gateway's own.
    assert_eq!(hooks.world.calls.verify.load(Ordering::SeqCst), 2);
    let (status, _, body) = hooks
        .world
        .chat(Some("Bearer qd_live_good"), r#"{"prompt": "hi"}"#)
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("tenant_suspended"))
    );

    // Reactivated, then deleted (deprovisioned).
    assert_eq!(
        hooks.deliver("evt_3", "tenant.status_changed", "active").await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(hooks.world.whoami("qd_live_good").await.0, StatusCode::OK);
    assert_eq!(
        hooks.deliver("evt_4", "tenant.deleted", "active").await,
        StatusCode::NO_CONTENT
    );
    assert!(!hooks.tenants.get(TENANT).unwrap().provisioned);
}

#[tokio::test]
async fn a_delivery_that_does_not_verify_is_refused_and_changes_nothing() {
    let hooks = Hooks::start().await;
    let now = fixed_now().unix_timestamp();
    let body = event("evt_1", "tenant.created", "active");
    let good = sign(SECRET, "evt_1", now, &body);
    let cases = [
        (
            "another secret",
            "evt_1",
            now,
            sign("whsec_b3RoZXIgc2VjcmV0IGVudGlyZWx5", "evt_1", now, &body),
            body.clone(),
        ),
        (
            "a changed body",
            "evt_1",
            now,
            good.clone(),
            body.replace("acme", "evil"),
        ),
        ("another id", "evt_9", now, good.clone(), body.clone()),
        (
            "six minutes old",
            "evt_1",
            now - 360,
            sign(SECRET, "evt_1", now - 360, &body),
            body.clone(),
        ),
        (
            "six minutes ahead",
            "evt_1",
            now + 360,
            sign(SECRET, "evt_1", now + 360, &body),
            body.clone(),
        ),
        ("no v1 prefix", "evt_1", now, good.replace("v1,", "v2,"), body.clone()),
    ];
    for (what, id, ts, signature, body) in cases {
        assert_eq!(
            hooks.post(id, ts, &signature, &body).await,
            StatusCode::UNAUTHORIZED,
            "{what}"
        );
    }
    assert_eq!(hooks.tenants.get(TENANT), None);
    // Within the tolerance, and signed by the rolled secret beside another signature: accepted.
    let ts = now - 200;
    let both = format!(
        "{} {}",
        sign("whsec_b3RoZXIgc2VjcmV0IGVudGlyZWx5", "evt_1", ts, &body),
        sign(ROLLED, "evt_1", ts, &body)
    );
    assert_eq!(hooks.post("evt_1", ts, &both, &body).await, StatusCode::NO_CONTENT);
    assert!(hooks.tenants.get(TENANT).unwrap().provisioned);
}

#[tokio::test]
async fn a_delivery_received_again_is_acknowledged_and_not_applied_twice() {
    let hooks = Hooks::start().await;
    assert_eq!(
        hooks.deliver("evt_1", "tenant.created", "active").await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        hooks.deliver("evt_2", "tenant.status_changed", "suspended").await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        hooks.deliver("evt_3", "tenant.status_changed", "active").await,
        StatusCode::NO_CONTENT
    );
    // evt_2 again (a retry whose first answer was lost): acknowledged, not applied.
    assert_eq!(
        hooks.deliver("evt_2", "tenant.status_changed", "suspended").await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(hooks.tenants.get(TENANT).unwrap().status, "active");
    assert_eq!(hooks.world.whoami("qd_live_good").await.0, StatusCode::OK);
}

#[test]
fn a_secret_that_is_not_base64_is_refused_and_the_config_never_prints_secrets() {
    let config = WebhookConfig::new("whsec_not base64!");
    assert!(crate::webhooks::Receiver::new(config).is_err());
    let printed = format!("{:?}", WebhookConfig::new(SECRET));
    assert!(!printed.contains("MfKQ9r8"), "{printed}");
}

#[tokio::test]
async fn an_older_event_sent_again_never_undoes_a_newer_one_nor_brings_back_a_deleted_tenant() {
    let hooks = Hooks::start().await;
    let created = "2027-01-15T08:00:00Z";
    for (id, event_type, status, at) in [
        ("evt_1", "tenant.created", "active", created),
        ("evt_2", "tenant.status_changed", "read_only", "2027-01-15T09:00:00.5Z"),
        ("evt_3", "tenant.status_changed", "suspended", "2027-01-15T10:00:00Z"),
    ] {
        assert_eq!(
            hooks.deliver_at(id, event_type, status, at).await,
            StatusCode::NO_CONTENT
        );
    }
    // The owner resends evt_2 (a new delivery of the same event, its id evicted or not): it is
    // older than the suspension, which stands.
    assert_eq!(
        hooks
            .deliver_at("evt_2b", "tenant.status_changed", "read_only", "2027-01-15T09:00:00.5Z")
            .await,
        StatusCode::NO_CONTENT
    );
    assert!(hooks.tenants.suspended(TENANT));
    assert_eq!(
        hooks
            .deliver_at("evt_4", "tenant.deleted", "suspended", "2027-01-15T11:00:00Z")
            .await,
        StatusCode::NO_CONTENT
    );
    // Its tenant.created resent after the deletion: not provisioned again.
    assert_eq!(
        hooks.deliver_at("evt_1b", "tenant.created", "active", created).await,
        StatusCode::NO_CONTENT
    );
    let t = hooks.tenants.get(TENANT).unwrap();
    assert!(!t.provisioned);
    assert_eq!(t.status, "deleted");
}

#[tokio::test]
async fn an_event_stamped_moments_before_the_last_one_is_still_applied() {
    // Two nodes' clocks a little apart: the reactivation committed after the suspension but
    // carries a time 200 ms earlier.
    let hooks = Hooks::start().await;
    for (id, event_type, status, at) in [
        ("evt_1", "tenant.created", "active", "2027-01-15T08:00:00Z"),
        ("evt_2", "tenant.status_changed", "suspended", "2027-01-15T10:00:00Z"),
        ("evt_3", "tenant.status_changed", "active", "2027-01-15T09:59:59.8Z"),
    ] {
        assert_eq!(
            hooks.deliver_at(id, event_type, status, at).await,
            StatusCode::NO_CONTENT
        );
    }
    assert!(!hooks.tenants.suspended(TENANT));
}
