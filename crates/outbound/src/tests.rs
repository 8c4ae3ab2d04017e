#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A listener that must never see a connection: checked without waiting (a connection the
/// client made would already be in the accept queue when the request returns).
struct Untouched(std::net::TcpListener);

impl Untouched {
    fn bind() -> Self {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        Self(l)
    }
    fn port(&self) -> u16 {
        self.0.local_addr().unwrap().port()
    }
    fn assert_no_connection(&self) {
        match self.0.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("the listener was connected to: {other:?}"),
        }
    }
}

/// A server on 127.0.0.1 that answers every connection with `answer` (after reading the
/// request head) and counts connections.
async fn answering(answer: Vec<u8>) -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = socket.write_all(&answer).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (port, count)
}

fn loopback_allowed() -> Outbound {
    Outbound::new(OutboundPolicy::from_ranges(&["127.0.0.1/8"]).unwrap()).unwrap()
}

#[tokio::test]
async fn a_backslash_url_is_read_as_its_real_host_and_refused_without_a_connection() {
    let victim = Untouched::bind();
    let out = Outbound::new(OutboundPolicy::default()).unwrap();
    // A string split says the host is `…\.localhost`; the URL parser (and reqwest) say 127.0.0.1.
    let url = format!("http://127.0.0.1:{}\\.localhost:1/x", victim.port());
    assert_eq!(out.get(&url, DOCUMENT_LIMIT).await, Err(OutboundError::Refused));
    victim.assert_no_connection();
}

#[tokio::test]
async fn a_host_name_resolving_to_loopback_is_refused_before_connecting_when_not_allowed() {
    let victim = Untouched::bind();
    let out = Outbound::new(OutboundPolicy::default()).unwrap();
    for url in [
        format!("http://localhost:{}/", victim.port()),
        format!("https://localhost:{}/", victim.port()),
        format!("https://[::ffff:127.0.0.1]:{}/", victim.port()),
    ] {
        assert_eq!(
            out.get(&url, DOCUMENT_LIMIT).await,
            Err(OutboundError::Refused),
            "{url}"
        );
    }
    victim.assert_no_connection();
}

#[tokio::test]
async fn the_refusal_is_the_same_whatever_the_port() {
    let open = Untouched::bind();
    let out = Outbound::new(OutboundPolicy::default()).unwrap();
    let a = out
        .get(&format!("https://127.0.0.1:{}/", open.port()), DOCUMENT_LIMIT)
        .await;
    let b = out.get("https://127.0.0.1:1/", DOCUMENT_LIMIT).await;
    assert_eq!(a, b);
    assert_eq!(
        a.unwrap_err().to_string(),
        "the address resolves to a private or reserved network address, which outbound_allow_private does not allow"
    );
    open.assert_no_connection();
}

#[tokio::test]
async fn plain_http_to_a_public_address_credentials_and_other_schemes_are_refused() {
    let out = loopback_allowed();
    assert_eq!(
        out.get("http://1.1.1.1/", DOCUMENT_LIMIT).await,
        Err(OutboundError::PlainHttp)
    );
    assert_eq!(
        out.get("https://user:pw@127.0.0.1:1/", DOCUMENT_LIMIT).await,
        Err(OutboundError::Credentials)
    );
    assert_eq!(
        out.get("ftp://127.0.0.1/", DOCUMENT_LIMIT).await,
        Err(OutboundError::Scheme)
    );
    assert_eq!(
        out.get("not a url", DOCUMENT_LIMIT).await,
        Err(OutboundError::InvalidUrl)
    );
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    let (target, target_hits) = answering(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec()).await;
    let (port, hits) = answering(
        format!("HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:{target}/\r\ncontent-length: 0\r\n\r\n").into_bytes(),
    )
    .await;
    let out = loopback_allowed();
    let err = out
        .get(&format!("http://127.0.0.1:{port}/"), DOCUMENT_LIMIT)
        .await
        .unwrap_err();
    assert_eq!(err, OutboundError::Redirect(302));
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(target_hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_answer_past_the_limit_is_cut_off_whether_announced_or_streamed() {
    let big = vec![b'x'; DOCUMENT_LIMIT + 1];
    let mut announced = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", big.len()).into_bytes();
    announced.extend_from_slice(&big);
    let mut streamed = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n".to_vec();
    streamed.extend_from_slice(&big);
    let out = loopback_allowed();
    for answer in [announced, streamed] {
        let (port, _) = answering(answer).await;
        let err = out
            .get(&format!("http://127.0.0.1:{port}/"), DOCUMENT_LIMIT)
            .await
            .unwrap_err();
        assert_eq!(err, OutboundError::TooLarge(DOCUMENT_LIMIT));
        assert_eq!(err.to_string(), "the answer was larger than 1 MiB");
    }
}

#[tokio::test]
async fn an_error_status_says_the_status_and_never_the_body() {
    let (port, _) =
        answering(b"HTTP/1.1 404 Not Found\r\ncontent-length: 21\r\n\r\nSECRET-INTERNAL-BODY!".to_vec()).await;
    let out = loopback_allowed();
    let err = out
        .get(&format!("http://127.0.0.1:{port}/"), DOCUMENT_LIMIT)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "the server answered HTTP 404");
}

#[tokio::test]
async fn an_allowed_address_is_fetched() {
    let (port, _) = answering(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello".to_vec()).await;
    let body = loopback_allowed()
        .get(&format!("http://localhost:{port}/"), DOCUMENT_LIMIT)
        .await;
    // `localhost` may resolve to ::1 too, which 127.0.0.1/8 does not allow: only 127.0.0.1 is
    // connected to.
    assert_eq!(body.unwrap(), b"hello");
    let body = loopback_allowed()
        .get(&format!("http://127.0.0.1:{port}/"), DOCUMENT_LIMIT)
        .await
        .unwrap();
    assert_eq!(body, b"hello");
}

#[tokio::test]
async fn a_post_is_answered_by_its_status_even_when_the_body_is_long_or_broken() {
    let big = vec![b'x'; 200 * 1024];
    let mut announced = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", big.len()).into_bytes();
    announced.extend_from_slice(&big);
    let mut streamed = b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n".to_vec();
    streamed.extend_from_slice(&big);
    // A body shorter than announced: the connection closes mid-body.
    let broken = b"HTTP/1.1 202 Accepted\r\ncontent-length: 100\r\n\r\npartial".to_vec();
    let out = loopback_allowed();
    for (answer, status) in [(announced, 200), (streamed, 204), (broken, 202)] {
        let (port, _) = answering(answer).await;
        let got = out
            .post(&format!("http://127.0.0.1:{port}/"), &[], b"{}".to_vec(), 1024)
            .await;
        assert_eq!(got, Ok(status));
    }
}

#[tokio::test]
async fn a_post_is_not_redirected() {
    let (target, target_hits) = answering(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec()).await;
    let (port, _) = answering(
        format!("HTTP/1.1 307 Temporary Redirect\r\nlocation: http://127.0.0.1:{target}/\r\ncontent-length: 0\r\n\r\n")
            .into_bytes(),
    )
    .await;
    let got = loopback_allowed()
        .post(&format!("http://127.0.0.1:{port}/"), &[], b"{}".to_vec(), 1024)
        .await;
    assert_eq!(got, Err(OutboundError::Redirect(307)));
    assert_eq!(target_hits.load(Ordering::SeqCst), 0);
}
