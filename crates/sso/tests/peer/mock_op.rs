//! A mock OpenID provider for the cases a real one will not produce: an axum server on
//! 127.0.0.1 serving discovery, a JWKS, a token endpoint and a userinfo endpoint. The test
//! queues what the token endpoint answers for a code ([`MockOp::answer`]); codes are single use
//! (a reused or unknown code gets `invalid_grant`, like a real provider). What the token endpoint
//! received is recorded ([`MockOp::token_requests`]).
//!
//! Signing uses the test-only RSA keys beside this file (`signing-key.pem`, published in the
//! JWKS as kid `good`; `other-key.pem`, never published unless [`MockOp::rotate_keys`]).
//!
//! Shared with other crates' tests (`#[path = ...] mod mock_op;`): only tokio, axum, serde_json,
//! url, time and openidconnect are used.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use openidconnect::core::{CoreHmacKey, CoreJwsSigningAlgorithm, CoreRsaPrivateSigningKey};
use openidconnect::{JsonWebKeyId, PrivateSigningKey};
use serde_json::{Map, Value, json};

const SIGNING_KEY_PEM: &str = include_str!("signing-key.pem");
const OTHER_KEY_PEM: &str = include_str!("other-key.pem");

/// How the ID token is signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signing {
    /// RS256 with the key the JWKS publishes.
    Good,
    /// RS256 with a key the JWKS does not publish (same `kid` as given).
    WrongKey,
    /// `alg: none`, no signature.
    AlgNone,
    /// Signed correctly, then the payload is changed (sub and email become mallory's).
    TamperedPayload,
    /// HS256 with this secret (a provider MACing with the client secret).
    Hs256(String),
}

/// An ID token to answer with, and what goes with it.
#[derive(Clone, Debug)]
pub struct IdTokenSpec {
    /// `None`: no `iss` claim.
    pub iss: Option<String>,
    /// One audience is sent as a string, several as an array, none as no claim.
    pub aud: Vec<String>,
    pub azp: Option<String>,
    /// `None`: no `sub` claim.
    pub sub: Option<String>,
    pub nonce: Option<String>,
    /// Unix seconds.
    pub exp: i64,
    pub iat: i64,
    pub email: Option<String>,
    pub email_verified: Option<Value>,
    pub name: Option<String>,
    pub at_hash: Option<String>,
    /// More claims (e.g. `upn`).
    pub extra: Map<String, Value>,
    pub signing: Signing,
    /// The JOSE `kid` (`Some("good")` by default); `None`: no kid.
    pub kid: Option<String>,
    /// What the userinfo endpoint answers for this answer's access token (`None`: 401).
    pub userinfo: Option<Value>,
}

impl IdTokenSpec {
    /// A token that passes every check at `now` (valid for an hour, issued a minute ago).
    pub fn valid(mock: &MockOp, client_id: &str, nonce: &str, now: time::OffsetDateTime) -> Self {
        let now = now.unix_timestamp();
        Self {
            iss: Some(mock.issuer.clone()),
            aud: vec![client_id.to_owned()],
            azp: None,
            sub: Some("mock-subject-1".to_owned()),
            nonce: Some(nonce.to_owned()),
            exp: now + 3600,
            iat: now - 60,
            email: Some("alice@example.test".to_owned()),
            email_verified: Some(Value::Bool(true)),
            name: Some("Alice Example".to_owned()),
            at_hash: None,
            extra: Map::new(),
            signing: Signing::Good,
            kid: Some("good".to_owned()),
            userinfo: None,
        }
    }

    fn payload(&self) -> Value {
        let mut claims = Map::new();
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                claims.insert(k.to_owned(), v);
            }
        };
        put("iss", self.iss.clone().map(Value::String));
        put(
            "aud",
            match self.aud.as_slice() {
                [] => None,
                [one] => Some(Value::String(one.clone())),
                many => Some(json!(many)),
            },
        );
        put("azp", self.azp.clone().map(Value::String));
        put("sub", self.sub.clone().map(Value::String));
        put("nonce", self.nonce.clone().map(Value::String));
        put("exp", Some(json!(self.exp)));
        put("iat", Some(json!(self.iat)));
        put("email", self.email.clone().map(Value::String));
        put("email_verified", self.email_verified.clone());
        put("name", self.name.clone().map(Value::String));
        put("at_hash", self.at_hash.clone().map(Value::String));
        for (k, v) in &self.extra {
            claims.insert(k.clone(), v.clone());
        }
        Value::Object(claims)
    }
}

/// What the token endpoint received.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub form: HashMap<String, String>,
    pub authorization: Option<String>,
}

impl TokenRequest {
    /// The client id and secret from `Authorization: Basic` (form-url-decoded, RFC 6749 2.3.1).
    pub fn basic_credentials(&self) -> Option<(String, String)> {
        let encoded = self.authorization.as_deref()?.strip_prefix("Basic ")?;
        let decoded = String::from_utf8(base64_decode(encoded)?).ok()?;
        let (id, secret) = decoded.split_once(':')?;
        Some((form_decode(id), form_decode(secret)))
    }
}

struct Answer {
    id_token: String,
    access_token: String,
}

struct Inner {
    discovery_issuer: String,
    auth_methods: Vec<String>,
    signing_algs: Vec<String>,
    userinfo_endpoint: bool,
    rotated: bool,
    answers: HashMap<String, Answer>,
    userinfo: HashMap<String, Value>,
    requests: Vec<TokenRequest>,
}

struct Keys {
    good: CoreRsaPrivateSigningKey,
    other: CoreRsaPrivateSigningKey,
}

#[derive(Clone)]
struct Shared {
    issuer: String,
    inner: Arc<Mutex<Inner>>,
    keys: Arc<Keys>,
}

pub struct MockOp {
    pub issuer: String,
    shared: Shared,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for MockOp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

pub async fn start() -> MockOp {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the mock OP");
    let issuer = format!("http://{}", listener.local_addr().expect("local addr"));
    let keys = Keys {
        good: CoreRsaPrivateSigningKey::from_pem(SIGNING_KEY_PEM, Some(JsonWebKeyId::new("good".to_owned())))
            .expect("signing-key.pem"),
        other: CoreRsaPrivateSigningKey::from_pem(OTHER_KEY_PEM, Some(JsonWebKeyId::new("rotated".to_owned())))
            .expect("other-key.pem"),
    };
    let shared = Shared {
        issuer: issuer.clone(),
        inner: Arc::new(Mutex::new(Inner {
            discovery_issuer: issuer.clone(),
            auth_methods: vec!["client_secret_basic".to_owned(), "client_secret_post".to_owned()],
            signing_algs: vec!["RS256".to_owned()],
            userinfo_endpoint: true,
            rotated: false,
            answers: HashMap::new(),
            userinfo: HashMap::new(),
            requests: Vec::new(),
        })),
        keys: Arc::new(keys),
    };
    let app = Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route("/token", post(token))
        .route("/userinfo", get(userinfo))
        .with_state(shared.clone());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    MockOp { issuer, shared, server }
}

impl MockOp {
    /// Queues the token endpoint's answer for `code` (single use).
    pub fn answer(&self, code: &str, spec: IdTokenSpec) {
        let access_token = format!("mock-at-{code}");
        let id_token = self.sign(&spec);
        let mut inner = self.shared.inner.lock().unwrap();
        if let Some(info) = spec.userinfo {
            inner.userinfo.insert(access_token.clone(), info);
        }
        inner.answers.insert(code.to_owned(), Answer { id_token, access_token });
    }

    /// What the token endpoint received so far.
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.shared.inner.lock().unwrap().requests.clone()
    }

    /// The `issuer` the discovery document claims (to point it elsewhere).
    pub fn set_discovery_issuer(&self, issuer: &str) {
        self.shared.inner.lock().unwrap().discovery_issuer = issuer.to_owned();
    }

    /// `token_endpoint_auth_methods_supported`.
    pub fn set_auth_methods(&self, methods: &[&str]) {
        self.shared.inner.lock().unwrap().auth_methods = methods.iter().map(|m| (*m).to_owned()).collect();
    }

    /// `id_token_signing_alg_values_supported`.
    pub fn set_signing_algs(&self, algs: &[&str]) {
        self.shared.inner.lock().unwrap().signing_algs = algs.iter().map(|m| (*m).to_owned()).collect();
    }

    /// Whether discovery advertises a userinfo endpoint.
    pub fn set_userinfo_endpoint(&self, advertised: bool) {
        self.shared.inner.lock().unwrap().userinfo_endpoint = advertised;
    }

    /// Key rotation: from now on the JWKS publishes only the other key (kid `rotated`), and
    /// `Signing::Good` tokens queued afterwards are signed with it.
    pub fn rotate_keys(&self) {
        self.shared.inner.lock().unwrap().rotated = true;
    }

    fn sign(&self, spec: &IdTokenSpec) -> String {
        let rotated = self.shared.inner.lock().unwrap().rotated;
        let keys = &self.shared.keys;
        let (current, stale) = if rotated {
            (&keys.other, &keys.good)
        } else {
            (&keys.good, &keys.other)
        };
        let rs256 = CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256;
        let mut header = json!({ "alg": "RS256", "typ": "JWT" });
        let kid = if rotated && spec.kid.as_deref() == Some("good") {
            Some("rotated".to_owned())
        } else {
            spec.kid.clone()
        };
        if let Some(kid) = kid {
            header["kid"] = Value::String(kid);
        }
        let payload = spec.payload();
        match &spec.signing {
            Signing::AlgNone => {
                let header = json!({ "alg": "none", "typ": "JWT" });
                format!("{}.{}.", b64_json(&header), b64_json(&payload))
            }
            Signing::Hs256(secret) => {
                header["alg"] = Value::String("HS256".to_owned());
                header.as_object_mut().unwrap().remove("kid");
                let input = format!("{}.{}", b64_json(&header), b64_json(&payload));
                let key = CoreHmacKey::new(secret.as_bytes().to_vec());
                let sig = key
                    .sign(&CoreJwsSigningAlgorithm::HmacSha256, input.as_bytes())
                    .unwrap();
                format!("{input}.{}", b64url(&sig))
            }
            signing => {
                let key = if *signing == Signing::WrongKey { stale } else { current };
                let input = format!("{}.{}", b64_json(&header), b64_json(&payload));
                let sig = key.sign(&rs256, input.as_bytes()).unwrap();
                if *signing == Signing::TamperedPayload {
                    let mut tampered = payload.clone();
                    tampered["sub"] = Value::String("mallory".to_owned());
                    tampered["email"] = Value::String("mallory@evil.test".to_owned());
                    format!("{}.{}.{}", b64_json(&header), b64_json(&tampered), b64url(&sig))
                } else {
                    format!("{input}.{}", b64url(&sig))
                }
            }
        }
    }
}

async fn discovery(State(s): State<Shared>) -> Json<Value> {
    let inner = s.inner.lock().unwrap();
    let mut doc = json!({
        "issuer": inner.discovery_issuer,
        "authorization_endpoint": format!("{}/authorize", s.issuer),
        "token_endpoint": format!("{}/token", s.issuer),
        "jwks_uri": format!("{}/jwks", s.issuer),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": inner.signing_algs,
        "token_endpoint_auth_methods_supported": inner.auth_methods,
        "scopes_supported": ["openid", "email", "profile"],
        "code_challenge_methods_supported": ["S256"],
    });
    if inner.userinfo_endpoint {
        doc["userinfo_endpoint"] = Value::String(format!("{}/userinfo", s.issuer));
    }
    Json(doc)
}

async fn jwks(State(s): State<Shared>) -> Json<Value> {
    let rotated = s.inner.lock().unwrap().rotated;
    let key = if rotated { &s.keys.other } else { &s.keys.good };
    Json(json!({ "keys": [key.as_verification_key()] }))
}

async fn token(State(s): State<Shared>, headers: HeaderMap, Form(form): Form<HashMap<String, String>>) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut inner = s.inner.lock().unwrap();
    let code = form.get("code").cloned().unwrap_or_default();
    inner.requests.push(TokenRequest {
        form: form.clone(),
        authorization,
    });
    if form.get("grant_type").map(String::as_str) != Some("authorization_code") {
        return oauth_error("unsupported_grant_type");
    }
    match inner.answers.remove(&code) {
        Some(answer) => Json(json!({
            "access_token": answer.access_token,
            "token_type": "Bearer",
            "expires_in": 300,
            "id_token": answer.id_token,
        }))
        .into_response(),
        None => oauth_error("invalid_grant"),
    }
}

fn oauth_error(error: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": error, "error_description": "refused by the mock OP" })),
    )
        .into_response()
}

async fn userinfo(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    match s.inner.lock().unwrap().userinfo.get(token) {
        Some(info) => Json(info.clone()).into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"")],
        )
            .into_response(),
    }
}

fn b64_json(value: &Value) -> String {
    b64url(serde_json::to_string(value).unwrap().as_bytes())
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// base64url without padding (RFC 7515), written out to keep the dependencies few.
fn b64url(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            let c = B64[((n >> (18 - 6 * i)) & 63) as usize];
            out.push(match c {
                b'+' => '-',
                b'/' => '_',
                c => char::from(c),
            });
        }
    }
    out
}

/// Standard base64 (padding optional); `None` on anything else.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.trim_end_matches('=').bytes() {
        let v = B64.iter().position(|b| *b == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn form_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("v={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}
