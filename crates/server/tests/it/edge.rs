//! The server's edge: slow and idle connections, the connection cap, the request id, the
//! request timeout, load shedding and the body limit.
//!
//! These are about the HTTP server in front of the store, the same on both backends: they run
//! on SQLite only.

use crate::helpers::*;
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(("127.0.0.1", app.port())).await.unwrap()
}

/// Whether the server has closed this connection (EOF or reset; anything it sent first is
/// read and dropped).
fn closed_by_server(s: &TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match s.try_read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// Whatever the server answers on `s` until it closes it or `deadline` passes.
async fn read_answer(s: &mut TcpStream, within: Duration) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(within, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A request whose head is complete but whose body stops after a few bytes: in flight until
/// the server gives up on it.
async fn stalled_post(app: &TestApp, path: &str, extra_headers: &str) -> TcpStream {
    let mut s = connect(app).await;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost:{}\r\nContent-Type: application/x-www-form-urlencoded\r\n{extra_headers}Content-Length: 100\r\n\r\nSAMLResponse=",
        app.port()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s
}

fn request_id(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_slow_clients_do_not_starve_a_normal_request_and_are_closed_after_the_header_timeout() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| s.header_read_timeout_seconds = 2).await;
    let mut slow = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let mut s = connect(&app).await;
        s.write_all(b"GET /heal").await.unwrap();
        slow.push(s);
    }
    let started = Instant::now();
    let r = reqwest::Client::new()
        .get(app.url("/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a normal request took {:?} beside 2,000 slow clients",
        started.elapsed()
    );
    poll_until("the server to close every slow connection", || {
        let open = slow.iter().filter(|s| !closed_by_server(s)).count();
        async move { open == 0 }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_keep_alive_seconds() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.keep_alive_seconds = 1;
        s.header_read_timeout_seconds = 3600;
    })
    .await;
    let mut s = connect(&app).await;
    let req = format!("GET /healthz HTTP/1.1\r\nHost: localhost:{}\r\n\r\n", app.port());
    s.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\"ok\"") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    poll_until("the idle connection to be closed", || {
        let closed = closed_by_server(&s);
        async move { closed }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_a_new_client_is_served_and_idle_connections_make_room() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.max_connections = Some(10);
        s.keep_alive_seconds = 3600;
        s.header_read_timeout_seconds = 3600;
    })
    .await;
    let mut held = Vec::new();
    for i in 0..10 {
        let mut s = connect(&app).await;
        if i % 2 == 0 {
            s.write_all(b"GET /heal").await.unwrap();
        }
        held.push(s);
    }
    for _ in 0..3 {
        let r = reqwest::Client::new()
            .get(app.url("/healthz"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    poll_until("connections beyond the cap to be closed", || {
        let open = held.iter().filter(|s| !closed_by_server(s)).count();
        async move { open <= 9 }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_is_generated_returned_logged_and_shown_on_error_pages() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let a = app.get("/healthz").await;
    let b = app.get("/healthz").await;
    let (ida, idb) = (request_id(&a), request_id(&b));
    assert!(ida.len() >= 16, "{ida:?}");
    assert_ne!(ida, idb);
    assert!(
        app.logs.contains(&format!("request_id={ida}")),
        "the request's log lines name its id"
    );

    let page = app.get("/no-such-page").await;
    assert_eq!(page.status(), 404);
    let id = request_id(&page);
    assert!(!id.is_empty());
    assert!(
        page.text().await.unwrap().contains(&id),
        "the error page shows the request id"
    );

    let api = reqwest::Client::new()
        .get(app.url("/v1/admin/tenants"))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401);
    let id = request_id(&api);
    let body: Value = api.json().await.unwrap();
    assert_eq!(body["error"]["request_id"], id.as_str(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_is_accepted_from_a_trusted_proxy_only() {
    let direct = TestApp::spawn(Backend::Sqlite).await;
    let r = direct
        .client
        .get(direct.url("/healthz"))
        .header("x-request-id", "lb-7f3a")
        .send()
        .await
        .unwrap();
    let id = request_id(&r);
    assert!(!id.is_empty());
    assert_ne!(id, "lb-7f3a", "an untrusted client does not choose its request id");

    let proxied = TestApp::spawn_with(Backend::Sqlite, |s| s.trusted_proxies = vec!["127.0.0.1".into()]).await;
    let r = proxied
        .client
        .get(proxied.url("/no-such-page"))
        .header("x-request-id", "lb-7f3a")
        .send()
        .await
        .unwrap();
    assert_eq!(request_id(&r), "lb-7f3a");
    assert!(r.text().await.unwrap().contains("lb-7f3a"));
    assert!(proxied.logs.contains("request_id=lb-7f3a"));
    // Even a trusted proxy's id must be a short token, not a log-line forger.
    let r = proxied
        .client
        .get(proxied.url("/healthz"))
        .header("x-request-id", "x".repeat(300))
        .send()
        .await
        .unwrap();
    let id = request_id(&r);
    assert!(!id.is_empty() && id.len() <= 128, "{id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_takes_too_long_gets_408_with_a_stable_code() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| s.request_timeout_seconds = 1).await;
    // A page: a form whose body never comes.
    let mut s = stalled_post(&app, "/sso/saml/acs", "").await;
    let answer = read_answer(&mut s, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("x-request-id"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("text/html"), "{answer}");

    // The API: JSON with the code, as documented.
    app.sign_in_owner().await;
    let token = crate::api::token(&app, "read_write", "").await;
    let mut s = connect(&app).await;
    let head = format!(
        "POST /v1/admin/tenants HTTP/1.1\r\nHost: localhost:{}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\":",
        app.port()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let answer = read_answer(&mut s, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "request_timeout", "{body}");
    let doc: Value = app.get("/v1/openapi.json").await.json().await.unwrap();
    crate::openapi::check_response(&doc, "POST", "/v1/admin/tenants", 408, &body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_concurrency_limit_are_shed_with_503_not_queued() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| s.max_concurrent_requests = 1).await;
    let doc: Value = app.get("/v1/openapi.json").await.json().await.unwrap();
    // A request the server is working on: saving an identity provider whose issuer (on
    // loopback, which the tests allow) accepts the connection and never answers.
    let acme = crate::sso::tenant(&app, "Acme Corp", "acme").await;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://127.0.0.1:{}", silent.local_addr().unwrap().port());
    // The issuer's first accepted connection proves the form's POST is in the handler; only
    // then is the one slot known to be taken (the form page's GET before it is a request too).
    let (in_flight, handler_reached) = tokio::sync::oneshot::channel();
    let holding = tokio::spawn(async move {
        let mut held = Vec::new();
        let mut in_flight = Some(in_flight);
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
            if let Some(tx) = in_flight.take() {
                let _ = tx.send(());
            }
        }
    });
    let page = acme.admin.get_html("/portal/settings/sso").await;
    let form = tokio::spawn(async move {
        let fields = [
            ("protocol", "oidc"),
            ("display_name", "Acme SSO"),
            ("mode", "both"),
            ("issuer", issuer.as_str()),
            ("client_id", "quarterdeck"),
            ("client_secret", "secret"),
            ("scopes", "email profile"),
        ];
        acme.admin
            .post_form("/portal/settings/sso", &page, &fields)
            .await
            .status()
    });
    tokio::time::timeout(Duration::from_secs(5), handler_reached)
        .await
        .expect("the form's POST reached the issuer")
        .unwrap();
    let client = reqwest::Client::new();
    let r = client
        .get(app.url("/v1/admin/tenants"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "a request over the limit is shed, not queued");
    let retry = r.headers().get("retry-after").cloned();
    let body: Value = r.json().await.unwrap();
    assert!(retry.is_some(), "503 says when to come back");
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    crate::openapi::check_response(&doc, "GET", "/v1/admin/tenants", 503, &body);
    let page = client.get(app.url("/login")).send().await.unwrap();
    assert_eq!(page.status(), 503);
    form.abort();
    holding.abort();
    poll_until("the server to serve again once the request in flight is gone", || {
        let r = client.get(app.url("/healthz")).send();
        async move { r.await.unwrap().status() == 200 }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_bodies_take_no_concurrency_slot_and_get_408() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.max_concurrent_requests = 2;
        s.header_read_timeout_seconds = 2;
    })
    .await;
    // Many more slow bodies than there are slots, each with what gets a form's body read:
    // an anonymous CSRF cookie the server handed out.
    let client = reqwest::Client::new();
    let login = client.get(app.url("/login")).send().await.unwrap();
    let cookie = login
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
        .find(|c| c.contains("csrf"))
        .expect("an anonymous CSRF cookie");
    let mut slow = Vec::new();
    for _ in 0..20 {
        slow.push(stalled_post(&app, "/login", &format!("Cookie: {cookie}\r\n")).await);
    }
    let started = Instant::now();
    let page = client.get(app.url("/login")).send().await.unwrap();
    assert_eq!(page.status(), 200, "slow bodies held the slots");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered in {:?}",
        started.elapsed()
    );
    for s in &mut slow {
        let answer = read_answer(s, Duration::from_secs(10)).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_one_limit_get_413_on_forms_and_on_the_api() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| s.max_body_bytes = 4096).await;
    app.sign_in_owner().await;
    let big = "x".repeat(10_000);

    // A console form (with its CSRF token: the limit, not the guard, refuses it).
    let page = app.get_html("/tenants/new").await;
    let r = app
        .post_form(
            "/tenants",
            &page,
            &[
                ("name", &big),
                ("slug", "big"),
                ("region", "eu-west"),
                ("tier", "standard"),
            ],
        )
        .await;
    assert_eq!(r.status(), 413);
    let id = request_id(&r);
    assert!(r.text().await.unwrap().contains(&id));

    // A form sent in chunks (no Content-Length): the same limit while reading.
    let mut s = connect(&app).await;
    let chunk = format!("{:x}\r\nSAMLResponse={big}\r\n0\r\n\r\n", big.len() + 13);
    let head = format!(
        "POST /sso/saml/acs HTTP/1.1\r\nHost: localhost:{}\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{chunk}",
        app.port()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let answer = read_answer(&mut s, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // The API.
    let token = crate::api::token(&app, "read_write", "").await;
    let api = crate::api::Api::new(&app, &token);
    let (status, body) = api.post("/v1/admin/tenants", serde_json::json!({ "name": big })).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "body_too_large");
    // Under the limit, the same call works.
    let (status, body) = api
        .post("/v1/admin/tenants", serde_json::json!({ "name": "Small" }))
        .await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_reading_their_answers_are_closed_and_make_room_under_the_cap() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.max_connections = Some(4);
        s.request_timeout_seconds = 1;
        s.header_read_timeout_seconds = 1;
        s.keep_alive_seconds = 1;
    })
    .await;
    // Fill the cap with clients that pipeline many requests and never read an answer: the
    // answers fill the socket buffers and the server's writes stop making progress.
    let pipelined = format!("GET /login HTTP/1.1\r\nHost: localhost:{}\r\n\r\n", app.port()).repeat(400);
    let mut held = Vec::new();
    for _ in 0..4 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(1024).unwrap();
        let mut s = socket.connect(([127, 0, 0, 1], app.port()).into()).await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(2), s.write_all(pipelined.as_bytes())).await;
        held.push(s);
    }
    let client = reqwest::Client::new();
    poll_until("a new client to be served once the stalled ones are closed", || {
        let r = client.get(app.url("/healthz")).timeout(Duration::from_secs(2)).send();
        async move { r.await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    drop(held);
}
