//! The mapping from Quarterdeck's answers to this service's responses, walked over HTTP against a
//! loopback stand-in for Quarterdeck that answers canned JSON (the end-to-end test against a real
//! Quarterdeck lives in the server's integration suite).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use url::Url;
use uuid::Uuid;

use super::{Config, UsageConfig, bearer_key, last_four, serve};

mod usage;
mod webhooks;

const SERVICE_TOKEN: &str = "qd_svc_test_token";
const TENANT: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001);
const TENANT_WITHOUT_CREDENTIAL: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0002);
const TENANT_SUSPENDED_SINCE: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0003);
const KEY: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_00aa);
const PROVIDER_SECRET: &str = "sk-test-abcdefgh1234";

#[derive(Default)]
struct Calls {
    verify: AtomicUsize,
    resolve: AtomicUsize,
    /// Each usage post: when, its content type, its body.
    usage: Mutex<Vec<(Instant, String, Value)>>,
    /// How the next usage posts are answered (status, Retry-After); 200 when none is left.
    usage_script: Mutex<VecDeque<(StatusCode, Option<u64>)>>,
}

impl Calls {
    fn usage_posts(&self) -> Vec<(Instant, String, Value)> {
        self.usage.lock().unwrap().clone()
    }

    /// Every event of the posts answered 200, in order.
    fn events_taken(&self) -> Vec<Value> {
        let answers: Vec<_> = self.usage_posts();
        answers
            .into_iter()
            .filter(|(_, _, body)| body["_taken"] == true)
            .flat_map(|(_, _, body)| body["events"].as_array().unwrap().clone())
            .collect()
    }
}

fn valid(tenant: Uuid) -> Value {
    json!({
        "valid": true,
        "tenant": {"id": tenant, "slug": "acme", "status": "active", "tier": "pro", "region": "eu"},
        "key": {"id": KEY, "name": "backend", "scopes": ["read", "write"], "expires_at": null},
        "limits": {"requests_per_minute": 60, "remaining": 59, "reset_seconds": 12}
    })
}

fn error(status: StatusCode, code: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": "canned", "request_id": "r1"}})),
    )
        .into_response()
}

fn authorized(headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {SERVICE_TOKEN}"))
}

/// Quarterdeck's verify endpoint, answering by the key it is given.
async fn fake_verify(State(calls): State<Arc<Calls>>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    calls.verify.fetch_add(1, Ordering::SeqCst);
    if !authorized(&headers) {
        return error(StatusCode::UNAUTHORIZED, "unauthenticated");
    }
    let invalid = |code: &str| Json(json!({"valid": false, "code": code})).into_response();
    match body["key"].as_str().unwrap_or_default() {
        "qd_live_good" => Json(valid(TENANT)).into_response(),
        "qd_live_nocredential" => Json(valid(TENANT_WITHOUT_CREDENTIAL)).into_response(),
        "qd_live_suspendedsince" => Json(valid(TENANT_SUSPENDED_SINCE)).into_response(),
        "qd_live_expired" => invalid("expired"),
        "qd_live_revoked" => invalid("revoked"),
        "qd_live_suspended" => invalid("tenant_suspended"),
        "qd_live_novel" => invalid("insufficient_credits"),
        "qd_live_overbudget" => invalid("budget_exceeded"),
        "qd_live_limited" => {
            Json(json!({"valid": false, "code": "rate_limited", "retry_after_seconds": 7})).into_response()
        }
        "qd_live_boom" => error(StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        "qd_live_busy" => error(StatusCode::SERVICE_UNAVAILABLE, "busy"),
        "qd_live_garbled" => (StatusCode::OK, "<html>a proxy page</html>").into_response(),
        "qd_live_hollow" => Json(json!({"valid": true})).into_response(),
        "qd_live_slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Json(valid(TENANT)).into_response()
        }
        _ => invalid("unknown"),
    }
}

/// Quarterdeck's resolve endpoint: a credential for [`TENANT`] and `openai` only.
async fn fake_resolve(State(calls): State<Arc<Calls>>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    calls.resolve.fetch_add(1, Ordering::SeqCst);
    if !authorized(&headers) {
        return error(StatusCode::UNAUTHORIZED, "unauthenticated");
    }
    let tenant: Uuid = body["tenant_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_default();
    if tenant == TENANT_SUSPENDED_SINCE {
        return error(StatusCode::FORBIDDEN, "tenant_suspended");
    }
    if tenant != TENANT || body["provider"] != "openai" {
        return error(StatusCode::NOT_FOUND, "not_found");
    }
    Json(json!({
        "tenant_id": tenant,
        "provider": "openai",
        "credential_id": Uuid::from_u128(7),
        "fields": {"api_key": PROVIDER_SECRET, "base_url": "https://api.openai.com/v1"},
        "updated_at": "2026-12-01T10:00:00Z"
    }))
    .into_response()
}

/// Quarterdeck's usage endpoint: records each post, answers by the script (else 200).
async fn fake_usage(State(calls): State<Arc<Calls>>, headers: HeaderMap, body: String) -> Response {
    let scripted = calls.usage_script.lock().unwrap().pop_front();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let events: Value = serde_json::from_str(&body).unwrap();
    let taken = authorized(&headers) && scripted.is_none();
    calls
        .usage
        .lock()
        .unwrap()
        .push((Instant::now(), content_type, json!({"_taken": taken, "events": events})));
    if !authorized(&headers) {
        return error(StatusCode::UNAUTHORIZED, "unauthenticated");
    }
    match scripted {
        Some((status, retry_after)) => {
            let mut response = error(status, "scripted");
            if let Some(seconds) = retry_after {
                response.headers_mut().insert("retry-after", seconds.into());
            }
            response
        }
        None => {
            let n = events.as_array().map_or(0, Vec::len);
            Json(json!({"accepted": n, "rejected": []})).into_response()
        }
    }
}

async fn listen(router: Router) -> Url {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

/// A fake Quarterdeck (and its call counts) with the data plane in front of it.
struct World {
    data_plane: Url,
    calls: Arc<Calls>,
    http: reqwest::Client,
}

impl World {
    async fn start() -> World {
        World::with(SERVICE_TOKEN, "openai").await
    }

    async fn with(service_token: &str, provider: &str) -> World {
        let calls = Arc::new(Calls::default());
        let quarterdeck = Router::new()
            .route("/v1/data-plane/keys/verify", post(fake_verify))
            .route("/v1/data-plane/credentials/resolve", post(fake_resolve))
            .route("/v1/data-plane/usage", post(fake_usage))
            .with_state(calls.clone());
        let quarterdeck_url = listen(quarterdeck).await;
        World::in_front_of(quarterdeck_url, calls, service_token, provider).await
    }

    async fn in_front_of(quarterdeck_url: Url, calls: Arc<Calls>, service_token: &str, provider: &str) -> World {
        World::in_front_of_with(quarterdeck_url, calls, service_token, provider, None).await
    }

    /// The data plane with Quarterdeck's webhooks received as `webhooks` says.
    async fn with_webhooks(webhooks: crate::WebhookConfig) -> World {
        let calls = Arc::new(Calls::default());
        let quarterdeck = Router::new()
            .route("/v1/data-plane/keys/verify", post(fake_verify))
            .route("/v1/data-plane/credentials/resolve", post(fake_resolve))
            .route("/v1/data-plane/usage", post(fake_usage))
            .with_state(calls.clone());
        let quarterdeck_url = listen(quarterdeck).await;
        World::in_front_of_with(quarterdeck_url, calls, SERVICE_TOKEN, "openai", Some(webhooks)).await
    }

    async fn in_front_of_with(
        quarterdeck_url: Url,
        calls: Arc<Calls>,
        service_token: &str,
        provider: &str,
        webhooks: Option<crate::WebhookConfig>,
    ) -> World {
        let mut config = Config::new(quarterdeck_url, service_token, provider);
        config.webhooks = webhooks;
        config.usage = UsageConfig {
            source: "gateway-test-1".to_owned(),
            flush_interval: Duration::from_millis(50),
            ..UsageConfig::default()
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let data_plane = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        tokio::spawn(serve(listener, config));
        World {
            data_plane,
            calls,
            http: reqwest::Client::new(),
        }
    }

    async fn whoami(&self, key: &str) -> (StatusCode, HeaderMap, Value) {
        let request = self
            .http
            .get(self.data_plane.join("v1/whoami").unwrap())
            .bearer_auth(key);
        answer(request).await
    }

    async fn chat(&self, authorization: Option<&str>, body: &str) -> (StatusCode, HeaderMap, Value) {
        let mut request = self
            .http
            .post(self.data_plane.join("v1/chat").unwrap())
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        answer(request).await
    }
}

async fn answer(request: reqwest::RequestBuilder) -> (StatusCode, HeaderMap, Value) {
    let response = request.send().await.unwrap();
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    let mut headers = HeaderMap::new();
    for (name, value) in response.headers() {
        headers.insert(
            name.as_str().parse::<axum::http::HeaderName>().unwrap(),
            value.to_str().unwrap().parse().unwrap(),
        );
    }
    let text = response.text().await.unwrap();
    assert!(!text.contains(PROVIDER_SECRET), "the credential leaked: {text}");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, body)
}

#[tokio::test]
async fn a_verified_key_is_served_with_its_tenant_key_and_the_credential_last_four() {
    let world = World::start().await;
    let expected = json!({
        "tenant": {"id": TENANT, "slug": "acme"},
        "key": {"id": KEY, "name": "backend", "scopes": ["read", "write"]},
        "provider": "openai",
        "credential": {"last_four": "1234"}
    });

    let (status, _, body) = world.whoami("qd_live_good").await;
    assert_eq!((status, body), (StatusCode::OK, expected.clone()));

    // A chat also says what it used: "hello" is 2 tokens, echoed.
    let mut chatted = expected.clone();
    chatted["usage"] = json!({"model": "gpt-4o-mini", "prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4});
    let (status, _, body) = world.chat(Some("Bearer qd_live_good"), r#"{"prompt": "hello"}"#).await;
    assert_eq!((status, body), (StatusCode::OK, chatted.clone()));

    // Without a `prompt`, the whole body is the prompt: `[1,2]`, 5 characters.
    let (status, _, body) = world.chat(Some("bearer qd_live_good"), "[1, 2]").await;
    assert_eq!((status, body), (StatusCode::OK, chatted));
    assert_eq!(world.calls.verify.load(Ordering::SeqCst), 3);
    assert_eq!(world.calls.resolve.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_missing_or_malformed_authorization_is_a_missing_key_and_quarterdeck_is_not_asked() {
    let world = World::start().await;
    for authorization in [
        None,
        Some("Bearer"),
        Some("Bearer "),
        Some("Basic qd_live_good"),
        Some("Bearer a b"),
        Some("qd_live_good"),
    ] {
        let (status, _, body) = world.chat(authorization, "{}").await;
        assert_eq!(
            (status, body),
            (StatusCode::UNAUTHORIZED, json!({"error": "missing_key"})),
            "{authorization:?}"
        );
    }
    let (status, _, body) = world.whoami(&"k".repeat(600)).await;
    assert_eq!(
        (status, body),
        (StatusCode::UNAUTHORIZED, json!({"error": "missing_key"}))
    );
    assert_eq!(world.calls.verify.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn each_refusal_of_quarterdeck_has_its_status_and_code() {
    let world = World::start().await;
    let cases = [
        ("qd_live_nobody", StatusCode::UNAUTHORIZED, "unknown"),
        ("qd_live_expired", StatusCode::UNAUTHORIZED, "expired"),
        ("qd_live_revoked", StatusCode::UNAUTHORIZED, "revoked"),
        ("qd_live_novel", StatusCode::UNAUTHORIZED, "unknown"),
        ("qd_live_suspended", StatusCode::FORBIDDEN, "tenant_suspended"),
        ("qd_live_suspendedsince", StatusCode::FORBIDDEN, "tenant_suspended"),
        (
            "qd_live_nocredential",
            StatusCode::FAILED_DEPENDENCY,
            "provider_credential_missing",
        ),
    ];
    for (key, expected_status, code) in cases {
        let (status, _, body) = world.whoami(key).await;
        assert_eq!((status, body), (expected_status, json!({"error": code})), "{key}");
    }
    // A refused key never reaches the credential (whose reads are audited).
    assert_eq!(world.calls.resolve.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_rate_limited_key_is_a_429_with_quarterdecks_retry_after() {
    let world = World::start().await;
    let (status, headers, body) = world.whoami("qd_live_limited").await;
    assert_eq!(
        (status, body),
        (StatusCode::TOO_MANY_REQUESTS, json!({"error": "rate_limited"}))
    );
    assert_eq!(headers.get("retry-after").unwrap(), "7");
}

#[tokio::test]
async fn a_verified_caller_with_a_body_that_is_not_json_is_a_bad_request_without_a_credential_read() {
    let world = World::start().await;
    let (status, _, body) = world.chat(Some("Bearer qd_live_good"), "hello").await;
    assert_eq!(
        (status, body),
        (StatusCode::BAD_REQUEST, json!({"error": "invalid_body"}))
    );
    assert_eq!(world.calls.resolve.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn when_quarterdeck_errs_or_answers_nonsense_nothing_is_served() {
    let world = World::start().await;
    for key in ["qd_live_boom", "qd_live_busy", "qd_live_garbled", "qd_live_hollow"] {
        let (status, _, body) = world.whoami(key).await;
        assert_eq!(
            (status, body),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "quarterdeck_unavailable"})
            ),
            "{key}"
        );
    }
}

#[tokio::test]
async fn a_service_token_quarterdeck_refuses_fails_closed() {
    let world = World::with("qd_svc_wrong", "openai").await;
    let (status, _, body) = world.whoami("qd_live_good").await;
    assert_eq!(
        (status, body),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "quarterdeck_unavailable"})
        )
    );
}

#[tokio::test]
async fn a_provider_the_tenant_has_no_credential_for_is_a_424() {
    let world = World::with(SERVICE_TOKEN, "anthropic").await;
    let (status, _, body) = world.whoami("qd_live_good").await;
    assert_eq!(
        (status, body),
        (
            StatusCode::FAILED_DEPENDENCY,
            json!({"error": "provider_credential_missing"})
        )
    );
}

#[tokio::test]
async fn an_unreachable_quarterdeck_fails_closed() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("http://{}/", closed.local_addr().unwrap())).unwrap();
    drop(closed);
    let world = World::in_front_of(url, Arc::default(), SERVICE_TOKEN, "openai").await;
    let (status, _, body) = world.whoami("qd_live_good").await;
    assert_eq!(
        (status, body),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "quarterdeck_unavailable"})
        )
    );
}

#[tokio::test]
async fn a_quarterdeck_that_does_not_answer_within_two_seconds_fails_closed() {
    let world = World::start().await;
    let started = Instant::now();
    let (status, _, body) = world.whoami("qd_live_slow").await;
    assert_eq!(
        (status, body),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "quarterdeck_unavailable"})
        )
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_path_prefix_of_the_quarterdeck_url_is_kept() {
    let calls = Arc::new(Calls::default());
    let quarterdeck = Router::new()
        .route("/qd/v1/data-plane/keys/verify", post(fake_verify))
        .route("/qd/v1/data-plane/credentials/resolve", post(fake_resolve))
        .with_state(calls.clone());
    let base = listen(quarterdeck).await.join("qd").unwrap();
    let world = World::in_front_of(base, calls, SERVICE_TOKEN, "openai").await;
    let (status, _, _) = world.whoami("qd_live_good").await;
    assert_eq!(status, StatusCode::OK);
}

#[test]
fn the_config_never_prints_the_service_token() {
    let config = Config::new(
        Url::parse("https://quarterdeck.example.com").unwrap(),
        SERVICE_TOKEN,
        "openai",
    );
    assert!(!format!("{config:?}").contains(SERVICE_TOKEN));
}

#[test]
fn a_config_quarterdeck_cannot_be_reached_with_is_refused() {
    let mut config = Config::new(
        Url::parse("ftp://quarterdeck.example.com").unwrap(),
        SERVICE_TOKEN,
        "openai",
    );
    assert!(super::router(config.clone()).is_err());
    config.quarterdeck_url = Url::parse("https://quarterdeck.example.com").unwrap();
    config.service_token = "qd_svc_\nbroken".to_owned();
    assert!(super::router(config).is_err());
}

#[test]
fn only_the_last_four_of_a_long_enough_secret_are_shown() {
    assert_eq!(last_four("sk-abcdefgh1234").as_deref(), Some("1234"));
    assert_eq!(last_four("short"), None);
}

#[test]
fn the_bearer_scheme_is_case_insensitive_and_the_key_trimmed() {
    let mut headers = HeaderMap::new();
    headers.insert("authorization", "BEARER  qd_live_x ".parse().unwrap());
    assert_eq!(bearer_key(&headers), Ok("qd_live_x"));
}
