//! `ResendMailer` against a loopback HTTP server that plays Resend's API and records what it got.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use quarterdeck_mail::{MailSettings, Mailer, ResendSettings, SendError, build};
use serde_json::{Value, json};

use crate::{closed_port, sample_invitation};

const KEY: &str = "re_test";
const FROM: &str = "Quarterdeck <noreply@quarterdeck.test>";

#[derive(Debug)]
struct Request {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

type Log = Arc<Mutex<Vec<Request>>>;

/// Answers every request with `status` and `body`; returns its base URL and what it received.
async fn fake_resend(status: StatusCode, body: &'static str) -> (String, Log) {
    let log: Log = Arc::default();
    let app = Router::new()
        .fallback(
            move |State(log): State<Log>, method: Method, uri: Uri, headers: HeaderMap, received: Bytes| async move {
                log.lock().unwrap().push(Request {
                    method,
                    uri,
                    headers,
                    body: received,
                });
                (status, [(header::CONTENT_TYPE, "application/json")], body)
            },
        )
        .with_state(log.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), log)
}

fn resend(api_url: String) -> Arc<dyn Mailer> {
    build(&MailSettings::Resend(ResendSettings {
        api_key: KEY.to_owned(),
        from: FROM.to_owned(),
        api_url,
    }))
    .unwrap()
}

#[tokio::test]
async fn posts_the_message_as_resend_expects() {
    let (base, log) = fake_resend(StatusCode::OK, r#"{"id":"49a3999c-0ce1-4ea6-ab68-afcd6dc2e794"}"#).await;
    // A trailing slash on the base URL must not double the slash.
    let mailer = resend(format!("{base}/"));
    assert_eq!(mailer.transport(), "resend");
    let (email, _) = sample_invitation("alice@example.com");
    let id = uuid::Uuid::new_v4();

    mailer.send(id, &email).await.unwrap();

    let log = log.lock().unwrap();
    assert_eq!(log.len(), 1, "{log:?}");
    let req = &log[0];
    // Every attempt of one outbox message carries the same key: Resend answers a repeat
    // (after a crash between its answer and our record) without sending again.
    assert_eq!(
        req.headers.get("idempotency-key").and_then(|v| v.to_str().ok()),
        Some(format!("quarterdeck-{id}").as_str())
    );
    assert_eq!(req.method, Method::POST);
    assert_eq!(req.uri.path(), "/emails");
    assert_eq!(req.uri.query(), None);
    assert_eq!(req.headers[header::AUTHORIZATION], "Bearer re_test");
    let content_type = req.headers[header::CONTENT_TYPE].to_str().unwrap();
    assert!(content_type.starts_with("application/json"), "{content_type}");
    let body: Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(
        body,
        json!({
            "from": FROM,
            "to": ["alice@example.com"],
            "subject": email.subject,
            "text": email.text,
            "html": email.html,
        })
    );
}

#[tokio::test]
async fn a_5xx_is_a_temporary_failure() {
    let (base, log) = fake_resend(StatusCode::INTERNAL_SERVER_ERROR, "").await;
    let (email, _) = sample_invitation("alice@example.com");
    let err = resend(base).send(uuid::Uuid::new_v4(), &email).await.unwrap_err();
    assert!(matches!(err, SendError::Temporary(_)), "{err:?}");
    assert!(err.to_string().contains("500"), "{err}");
    assert!(!err.to_string().contains(KEY), "{err}");
    assert_eq!(log.lock().unwrap().len(), 1, "one attempt, no retries inside");
}

#[tokio::test]
async fn a_429_is_a_temporary_failure() {
    let (base, _) = fake_resend(
        StatusCode::TOO_MANY_REQUESTS,
        r#"{"statusCode":429,"name":"rate_limit_exceeded","message":"Too many requests."}"#,
    )
    .await;
    let (email, _) = sample_invitation("alice@example.com");
    let err = resend(base).send(uuid::Uuid::new_v4(), &email).await.unwrap_err();
    assert!(matches!(err, SendError::Temporary(_)), "{err:?}");
}

#[tokio::test]
async fn a_422_is_a_permanent_failure_that_says_why() {
    let (base, _) = fake_resend(
        StatusCode::UNPROCESSABLE_ENTITY,
        r#"{"statusCode":422,"name":"validation_error","message":"Invalid `to` field."}"#,
    )
    .await;
    let (email, _) = sample_invitation("alice@example.com");
    let err = resend(base).send(uuid::Uuid::new_v4(), &email).await.unwrap_err();
    let SendError::Permanent(detail) = &err else {
        panic!("{err:?}")
    };
    assert!(detail.contains("422"), "{detail}");
    assert!(detail.contains("validation_error: Invalid `to` field."), "{detail}");
    assert!(!detail.contains(KEY), "{detail}");
}

#[tokio::test]
async fn an_api_that_is_down_is_a_temporary_failure() {
    let (email, _) = sample_invitation("alice@example.com");
    let err = resend(format!("http://127.0.0.1:{}", closed_port()))
        .send(uuid::Uuid::new_v4(), &email)
        .await
        .unwrap_err();
    assert!(matches!(err, SendError::Temporary(_)), "{err:?}");
    assert!(!err.to_string().contains(KEY), "{err}");
}
