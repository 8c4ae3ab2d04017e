//! Driver for the test SAML IdP `tests/idp/saml-idp.js` (samlify, run by node). Shared with other crates'
//! tests through `#[path]`: it needs only tokio (process, time), reqwest (json), serde_json and url.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test helper")]
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};

/// A running test IdP; killed when dropped.
pub struct SamlIdp {
    /// `http://127.0.0.1:N`
    pub base: String,
    /// `GET /metadata` (entityID `{base}/metadata`, HTTP-Redirect SSO at `{base}/sso`).
    pub metadata_xml: String,
    child: tokio::process::Child,
}

/// What `POST /respond` answers: the response to post to `acs_url` as `SAMLResponse`, with `RelayState`.
#[derive(Debug, Clone)]
pub struct IdpResponse {
    pub acs_url: String,
    pub saml_response: String,
    pub relay_state: String,
}

/// The repository root: the closest ancestor of this crate holding `package.json`.
pub fn repo_root() -> PathBuf {
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    while !dir.join("package.json").is_file() {
        assert!(dir.pop(), "no package.json above {}", env!("CARGO_MANIFEST_DIR"));
    }
    dir
}

/// Reads the child's first stdout line (tokio without its `io-util` feature: poll `AsyncRead` by hand).
async fn first_line(stdout: &mut tokio::process::ChildStdout) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let mut buf = ReadBuf::new(&mut byte);
        std::future::poll_fn(|cx| Pin::new(&mut *stdout).poll_read(cx, &mut buf))
            .await
            .unwrap();
        match buf.filled() {
            [] => panic!("saml-idp exited before printing its port (its stderr is in the OS temp dir)"),
            [b'\n'] => return String::from_utf8(line).unwrap(),
            [b] => line.push(*b),
            _ => unreachable!(),
        }
    }
}

/// Starts the IdP (`node tests/idp/saml-idp.js` from the repository root) and fetches its metadata.
///
/// The node process is killed when the `SamlIdp` drops, and exits by itself once this test process is gone
/// (it watches its stdin, a pipe held by the `Child`), so even a `static` one leaves no orphan.
pub async fn start() -> SamlIdp {
    let root = repo_root();
    // Not inherited: node would switch a shared stderr pipe to non-blocking under the test harness.
    let log_path = std::env::temp_dir().join(format!("quarterdeck-saml-idp-{}.log", std::process::id()));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .unwrap();
    let mut child = tokio::process::Command::new("node")
        .arg(root.join("tests/idp/saml-idp.js"))
        .arg("--exit-on-stdin-eof")
        .current_dir(&root)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node (is Node.js installed and `npm ci` done at the repository root?)");
    let mut stdout = child.stdout.take().unwrap();
    let line = tokio::time::timeout(Duration::from_secs(30), first_line(&mut stdout))
        .await
        .unwrap_or_else(|_| panic!("saml-idp printed no port within 30 s (see {})", log_path.display()));
    let port = serde_json::from_str::<serde_json::Value>(&line).unwrap()["port"]
        .as_u64()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let metadata = reqwest::get(format!("{base}/metadata")).await.unwrap();
    assert!(metadata.status().is_success(), "GET /metadata: {}", metadata.status());
    let metadata_xml = metadata.text().await.unwrap();
    SamlIdp {
        base,
        metadata_xml,
        child,
    }
}

/// One IdP for the whole test binary, started on first use (its first answer costs node ~3 s of CPU for
/// samlify's schema validator, so tests that do not need their own process share this one).
pub async fn shared() -> &'static SamlIdp {
    static SHARED: tokio::sync::OnceCell<SamlIdp> = tokio::sync::OnceCell::const_new();
    SHARED.get_or_init(start).await
}

impl SamlIdp {
    /// The IdP's answer to the AuthnRequest in `authn_request_url` for this user, as `variant` (`ok`,
    /// `unsigned`, `tampered`, `wrapped`, `other_signer`, `wrong_audience`, `wrong_recipient`, `expired`,
    /// `wrong_in_response_to`, `comment_injection`; accepted too: `response_signed` (only the Response is
    /// signed) and `both_signed`).
    pub async fn respond(&self, authn_request_url: &url::Url, email: &str, name: &str, variant: &str) -> IdpResponse {
        self.respond_with(
            authn_request_url,
            serde_json::json!({ "email": email, "name": name, "variant": variant }),
        )
        .await
    }

    /// Like [`SamlIdp::respond`] with any extra `/respond` fields (`name_id`, `attacker_email`).
    pub async fn respond_with(&self, authn_request_url: &url::Url, mut body: serde_json::Value) -> IdpResponse {
        let query = |key: &str| {
            authn_request_url
                .query_pairs()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.into_owned())
        };
        body["saml_request"] = query("SAMLRequest")
            .expect("no SAMLRequest in the AuthnRequest URL")
            .into();
        body["relay_state"] = query("RelayState").unwrap_or_default().into();
        let answer = reqwest::Client::new()
            .post(format!("{}/respond", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = answer.status();
        let text = answer.text().await.unwrap();
        assert!(status.is_success(), "POST /respond: {status}: {text}");
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let field = |key: &str| {
            json[key]
                .as_str()
                .unwrap_or_else(|| panic!("no {key} in {text}"))
                .to_owned()
        };
        IdpResponse {
            acs_url: field("acs_url"),
            saml_response: field("saml_response"),
            relay_state: field("relay_state"),
        }
    }

    /// The process id of the node process (for diagnostics).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}
