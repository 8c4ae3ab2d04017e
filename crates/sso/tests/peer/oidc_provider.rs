//! Drives the real OpenID provider of the tests: `node tests/idp/oidc-provider.mjs` (oidc-provider
//! with its development interactions), started on a free port of 127.0.0.1.
//!
//! Logins: any login and password are accepted; the login is the email (lower-cased); a login
//! `unverified.<email>` signs in as `<email>` with `email_verified: false`; `sub` is
//! `acct-` + 24 hex digits derived from the login (stable, not the email); `name` is the email's
//! local part. Consent is automatic.
//!
//! Shared with other crates' tests (`#[path = ...] mod oidc_provider;`): only tokio, reqwest,
//! serde_json and url are used.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub struct OidcProvider {
    pub issuer: String,
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

/// The directory holding the root `package.json` (and `node_modules`), found by walking up.
pub fn repo_root() -> PathBuf {
    let mut dir: &Path = Path::new(env!("CARGO_MANIFEST_DIR"));
    loop {
        if dir.join("package.json").is_file() && dir.join("tests/idp/oidc-provider.mjs").is_file() {
            return dir.to_path_buf();
        }
        dir = dir
            .parent()
            .expect("no directory above CARGO_MANIFEST_DIR holds package.json");
    }
}

/// Starts the provider with one confidential client (client_secret_basic, code flow, PKCE).
pub async fn start(client_id: &str, client_secret: &str, redirect_uris: &[&str]) -> OidcProvider {
    let root = repo_root();
    let mut child = Command::new("node")
        .arg(root.join("tests/idp/oidc-provider.mjs"))
        .current_dir(&root)
        .env("CLIENT_ID", client_id)
        .env("CLIENT_SECRET", client_secret)
        .env("REDIRECT_URIS", redirect_uris.join(","))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node (is Node.js installed, and `npm ci` run at the repository root?)");

    // Keep stderr (oidc-provider's warnings, a crash) to tell why, if it does not start.
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let mut err_lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let kept = Arc::clone(&stderr);
    tokio::spawn(async move {
        while let Ok(Some(line)) = err_lines.next_line().await {
            let mut kept = kept.lock().unwrap();
            if kept.len() < 200 {
                kept.push(line);
            }
        }
    });

    let mut out_lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), out_lines.next_line()).await;
    let line = match first {
        Ok(Ok(Some(line))) => line,
        other => {
            // Give stderr a moment to be read.
            tokio::time::sleep(Duration::from_millis(200)).await;
            panic!(
                "oidc-provider did not start ({other:?}); stderr:\n{}",
                stderr.lock().unwrap().join("\n")
            );
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = out_lines.next_line().await {} });
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}"));
    let issuer = v["issuer"].as_str().expect("issuer").to_owned();
    OidcProvider { issuer, child, stderr }
}

impl OidcProvider {
    /// Signs in as `login` through the development interactions, starting from the relying
    /// party's authorization URL, and returns where the provider sends the browser back: the
    /// redirect URI with `code` and `state` (or `error`). Uses its own cookie jar, so each call
    /// is a fresh browser.
    pub async fn sign_in(&self, authorization_url: &url::Url, login: &str) -> url::Url {
        let http = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .expect("reqwest client");
        let issuer = url::Url::parse(&self.issuer).expect("issuer URL");
        let mut current = authorization_url.clone();
        let mut response = http
            .get(current.clone())
            .send()
            .await
            .expect("GET the authorization URL");
        for _ in 0..20 {
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .expect("a redirect without Location");
                let next = current.join(location).expect("a bad Location");
                if next.origin() != issuer.origin() {
                    return next;
                }
                current = next;
                response = http.get(current.clone()).send().await.expect("follow a redirect");
                continue;
            }
            let body = response.text().await.unwrap_or_default();
            assert!(
                status.is_success(),
                "oidc-provider answered {status} at {current}:\n{body}"
            );
            let action = form_action(&body).unwrap_or_else(|| panic!("no form at {current}:\n{body}"));
            let action = current.join(&action).expect("a bad form action");
            let fields: Vec<(&str, &str)> = if body.contains(r#"name="prompt" value="login""#) {
                vec![("prompt", "login"), ("login", login), ("password", "any password")]
            } else if body.contains(r#"name="prompt" value="consent""#) {
                vec![("prompt", "consent")]
            } else {
                panic!("an unexpected interaction at {current}:\n{body}");
            };
            current = action;
            response = http
                .post(current.clone())
                .form(&fields)
                .send()
                .await
                .expect("submit the interaction");
        }
        panic!("too many steps signing in at {}", self.issuer);
    }

    /// The provider's stderr so far (for diagnostics).
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Stops the provider now (it also stops when dropped).
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// The `action` of the page's first form, HTML entities for `&` undone.
fn form_action(html: &str) -> Option<String> {
    let form = &html[html.find("<form")?..];
    let start = form.find("action=\"")? + "action=\"".len();
    let end = start + form[start..].find('"')?;
    Some(
        form[start..end]
            .replace("&amp;", "&")
            .replace("&#x2F;", "/")
            .replace("&#47;", "/"),
    )
}
