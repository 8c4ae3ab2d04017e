//! The outbound-HTTP policy seen from the SSO settings form: what the server fetches on an
//! administrator's say-so (OIDC discovery and what it names, SAML metadata) never reaches an
//! address outside the public internet unless `outbound_allow_private` allows it, follows no
//! redirect, reads no more than 1 MiB, and never shows the remote body in the form's error.
//!
//! The peers here are raw HTTP responders on loopback addresses (127.0.0.1, 127.0.0.2) that count
//! their connections; "no connection" is read from a listener's accept queue, without waiting.

use crate::helpers::*;
use crate::sso::{configure, tenant};
use crate::{both, both_backends};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a peer must never see: a connection.
const MARKER: &str = "INTERNAL-ONLY-7f3a9c";

/// A listener that must not be connected to, checked without waiting: a connection the server
/// made would be in the accept queue by the time the form was answered.
struct Untouched(std::net::TcpListener);

impl Untouched {
    fn bind(ip: &str) -> Self {
        let l = std::net::TcpListener::bind((ip, 0)).unwrap();
        l.set_nonblocking(true).unwrap();
        Self(l)
    }
    fn port(&self) -> u16 {
        self.0.local_addr().unwrap().port()
    }
    fn assert_no_connection(&self) {
        match self.0.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("the server connected to a refused address: {other:?}"),
        }
    }
}

/// A raw HTTP responder: each path answers with a full HTTP response; connections are counted.
struct Peer {
    ip: String,
    port: u16,
    routes: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    connections: Arc<AtomicUsize>,
}

impl Peer {
    async fn start(ip: &str) -> Self {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let routes: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let connections = Arc::new(AtomicUsize::new(0));
        let (r, c) = (routes.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let r = r.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head);
                    let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                    let answer = r.lock().unwrap().get(&path).cloned();
                    let answer = answer.unwrap_or_else(|| respond("404 Not Found", "text/plain", "no such path"));
                    let _ = socket.write_all(&answer).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Self {
            ip: ip.to_owned(),
            port,
            routes,
            connections,
        }
    }

    fn base(&self) -> String {
        format!("http://{}:{}", self.ip, self.port)
    }

    fn route(&self, path: &str, answer: Vec<u8>) {
        self.routes.lock().unwrap().insert(path.to_owned(), answer);
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Serves a discovery document naming itself as the issuer, with `jwks_uri` as given.
    fn discovery(&self, jwks_uri: &str, padding: usize) {
        let doc = discovery_doc(&self.base(), jwks_uri, padding);
        self.route(
            "/.well-known/openid-configuration",
            respond("200 OK", "application/json", &doc),
        );
    }
}

fn discovery_doc(issuer: &str, jwks_uri: &str, padding: usize) -> String {
    format!(
        r#"{{"issuer":"{issuer}","authorization_endpoint":"{issuer}/auth","token_endpoint":"{issuer}/token",
        "jwks_uri":"{jwks_uri}","response_types_supported":["code"],"subject_types_supported":["public"],
        "id_token_signing_alg_values_supported":["RS256"]{}}}"#,
        " ".repeat(padding)
    )
}

fn respond(status: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn redirect_to(location: &str) -> Vec<u8> {
    format!("HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").into_bytes()
}

/// Post acme's SAML settings with a metadata URL; returns (status, page).
async fn save_metadata_url(admin: &TenantClient, url: &str) -> (u16, String) {
    let page = admin.get_html("/portal/settings/sso").await;
    let r = admin
        .post_form(
            "/portal/settings/sso",
            &page,
            &[
                ("protocol", "saml"),
                ("display_name", "Acme SAML"),
                ("mode", "both"),
                ("metadata_xml", ""),
                ("metadata_url", url),
            ],
        )
        .await;
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Post acme's OIDC settings with `issuer`; returns (status, page).
async fn save_issuer(admin: &TenantClient, issuer: &str) -> (u16, String) {
    let r = configure(admin, issuer, "both", false, &[]).await;
    (r.status().as_u16(), r.text().await.unwrap())
}

const NOT_ALLOWED: &str = "outbound_allow_private does not allow";

both_backends!(
    async fn a_backslash_url_or_localhost_is_refused_before_any_connection_when_no_private_range_is_allowed(backend) {
        let app = TestApp::spawn_with(backend, |s| s.outbound_allow_private.clear()).await;
        let acme = tenant(&app, "Acme Corp", "acme").await;
        let victim = Untouched::bind("127.0.0.1");
        let port = victim.port();
        // A string split reads the host as `….localhost`; a URL parser (and the HTTP client)
        // as 127.0.0.1:port.
        let (status, page) = save_metadata_url(&acme.admin, &format!("http://127.0.0.1:{port}\\.localhost:1/x")).await;
        assert_eq!(status, 422, "{page}");
        assert!(page.contains("field-error"), "{page}");
        victim.assert_no_connection();
        // A name resolving to a loopback address is refused like the address itself, for the
        // metadata URL and for the issuer, whatever the port.
        let (status, page) = save_metadata_url(&acme.admin, &format!("http://localhost:{port}/metadata")).await;
        assert_eq!(status, 422, "{page}");
        assert!(page.contains(NOT_ALLOWED), "{page}");
        let (status, page) = save_issuer(&acme.admin, &format!("http://localhost:{port}")).await;
        assert_eq!(status, 422, "{page}");
        assert!(page.contains(NOT_ALLOWED), "{page}");
        let (_, closed_port_page) = save_issuer(&acme.admin, "http://localhost:1").await;
        assert!(closed_port_page.contains(NOT_ALLOWED), "{closed_port_page}");
        victim.assert_no_connection();
        assert!(app.events_of("IDENTITY_PROVIDER_CONFIGURED").await.is_empty());
    }
);

both_backends!(
    async fn discovery_naming_a_plain_http_jwks_uri_on_a_host_not_allowed_is_refused_and_its_body_never_shown(
        backend
    ) {
        let app = TestApp::spawn_with(backend, |s| s.outbound_allow_private = vec!["127.0.0.1/32".into()]).await;
        let acme = tenant(&app, "Acme Corp", "acme").await;
        let internal = Peer::start("127.0.0.2").await;
        internal.route(
            "/jwks",
            respond("200 OK", "application/json", &format!(r#"{{"keys":"{MARKER}"}}"#)),
        );
        let issuer = Peer::start("127.0.0.1").await;
        issuer.discovery(&format!("{}/jwks", internal.base()), 0);

        let (status, page) = save_issuer(&acme.admin, &issuer.base()).await;
        assert_eq!(status, 422, "{page}");
        assert!(page.contains(NOT_ALLOWED), "{page}");
        assert!(!page.contains(MARKER), "the remote body shows in the form");
        assert_eq!(issuer.connections(), 1, "discovery was fetched");
        assert_eq!(internal.connections(), 0, "the internal host was never connected to");
        assert!(app.events_of("IDENTITY_PROVIDER_CONFIGURED").await.is_empty());
    }
);

both!(
    async fn what_an_allowed_provider_answers_never_shows_in_the_form_error(app) {
        let acme = tenant(&app, "Acme Corp", "acme").await;
        let op = Peer::start("127.0.0.1").await;
        // A JWKS that is not one, quoting the marker.
        op.discovery(&format!("{}/jwks", op.base()), 0);
        op.route(
            "/jwks",
            respond("200 OK", "application/json", &format!(r#"{{"keys":"{MARKER}"}}"#)),
        );
        let (status, page) = save_issuer(&acme.admin, &op.base()).await;
        assert_eq!(status, 422, "{page}");
        assert!(!page.contains(MARKER), "{page}");
        // A discovery document naming another issuer (the marker).
        let doc = discovery_doc(&format!("https://{MARKER}.example"), &format!("{}/jwks", op.base()), 0);
        op.route("/.well-known/openid-configuration", respond("200 OK", "application/json", &doc));
        let (status, page) = save_issuer(&acme.admin, &op.base()).await;
        assert_eq!(status, 422, "{page}");
        assert!(!page.contains(MARKER), "{page}");
        // An error status with the marker in its body.
        op.route(
            "/.well-known/openid-configuration",
            respond("500 Internal Server Error", "text/plain", MARKER),
        );
        let (status, page) = save_issuer(&acme.admin, &op.base()).await;
        assert_eq!(status, 422, "{page}");
        assert!(page.contains("HTTP 500"), "{page}");
        assert!(!page.contains(MARKER), "{page}");
    }
);

both!(
    async fn a_redirect_from_the_issuer_or_the_metadata_url_is_not_followed(app) {
        let acme = tenant(&app, "Acme Corp", "acme").await;
        let elsewhere = Peer::start("127.0.0.1").await;
        elsewhere.discovery(&format!("{}/jwks", elsewhere.base()), 0);
        elsewhere.route("/jwks", respond("200 OK", "application/json", r#"{"keys":[]}"#));
        elsewhere.route("/metadata", respond("200 OK", "application/xml", "<EntityDescriptor/>"));
        let op = Peer::start("127.0.0.1").await;
        op.route(
            "/.well-known/openid-configuration",
            redirect_to(&format!("{}/.well-known/openid-configuration", elsewhere.base())),
        );
        op.route("/metadata", redirect_to(&format!("{}/metadata", elsewhere.base())));

        let (status, page) = save_issuer(&acme.admin, &op.base()).await;
        assert_eq!(status, 422, "{page}");
        assert!(page.contains("which is not followed"), "{page}");
        let (status, page) = save_metadata_url(&acme.admin, &format!("{}/metadata", op.base())).await;
        assert_eq!(status, 422, "{page}");
        assert!(page.contains("which is not followed"), "{page}");
        assert_eq!(op.connections(), 2);
        assert_eq!(elsewhere.connections(), 0, "a redirect was followed");
    }
);

both!(
    async fn a_discovery_document_or_metadata_larger_than_1_mib_is_cut_off_with_a_clear_error(app) {
        let acme = tenant(&app, "Acme Corp", "acme").await;
        let op = Peer::start("127.0.0.1").await;
        // Valid JSON, padded past 1 MiB.
        op.discovery(&format!("{}/jwks", op.base()), 1024 * 1024);
        op.route("/jwks", respond("200 OK", "application/json", r#"{"keys":[]}"#));
        op.route(
            "/metadata",
            respond("200 OK", "application/xml", &format!("<x>{}</x>", " ".repeat(1024 * 1024))),
        );
        let (status, page) = save_issuer(&acme.admin, &op.base()).await;
        assert_eq!(status, 422, "{page}");
        assert!(page.contains("larger than 1 MiB"), "{page}");
        let (status, page) = save_metadata_url(&acme.admin, &format!("{}/metadata", op.base())).await;
        assert_eq!(status, 422, "{page}");
        assert!(page.contains("larger than 1 MiB"), "{page}");
        assert!(app.events_of("IDENTITY_PROVIDER_CONFIGURED").await.is_empty());
    }
);
