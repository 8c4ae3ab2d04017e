//! Drives the real webhook receiver of the tests: `node tests/webhook-receiver/receiver.mjs`,
//! which verifies every delivery with the published `standardwebhooks` library (npm, pinned in
//! the repository's package.json), started on a free port of 127.0.0.1 and killed on drop.
//!
//! One receiver serves any number of hooks (`/hooks/<name>`), each one endpoint of the test
//! with its own secrets and script. The library checks timestamps against its clock (five
//! minutes either way): [`Receiver::set_clock`] tells it the application's clock, which the
//! tests move by days.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub struct Receiver {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    client: reqwest::Client,
    _child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

/// How the receiver answers a delivery.
#[derive(Clone, Debug)]
pub enum Answer {
    Status(u16),
    /// This status after this many milliseconds.
    Slow(u16, u64),
    /// Never answers (the sender's 10 s timeout ends the attempt).
    Hang,
    /// A redirect (this status) to this URL.
    Redirect(u16, String),
}

impl Answer {
    fn to_json(&self) -> Value {
        match self {
            Self::Status(s) => json!({ "status": s }),
            Self::Slow(s, ms) => json!({ "status": s, "delay_ms": ms }),
            Self::Hang => json!({ "hang": true }),
            Self::Redirect(s, to) => json!({ "status": s, "redirect": to }),
        }
    }
}

/// One line of a hook's script: the first rule that matches a delivery (its tenant and type,
/// when given) and has times left answers it; no rule: 200.
#[derive(Clone, Debug)]
pub struct Rule {
    pub tenant: Option<String>,
    pub event_type: Option<String>,
    /// `None`: for ever.
    pub times: Option<u32>,
    pub answer: Answer,
}

impl Rule {
    /// Every delivery, for ever.
    pub fn always(answer: Answer) -> Self {
        Self {
            tenant: None,
            event_type: None,
            times: None,
            answer,
        }
    }
    /// The next `n` deliveries.
    pub fn times(n: u32, answer: Answer) -> Self {
        Self {
            times: Some(n),
            ..Self::always(answer)
        }
    }
    /// Only this tenant's deliveries.
    pub fn for_tenant(mut self, tenant: &str) -> Self {
        self.tenant = Some(tenant.to_owned());
        self
    }
}

/// A delivery as the receiver got it.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub id: String,
    pub timestamp: i64,
    pub signature: String,
    pub content_type: Option<String>,
    pub event_type: Option<String>,
    pub tenant: Option<String>,
    /// The parsed body.
    pub body: Value,
    /// The body as received, byte for byte.
    pub raw: String,
    /// Verified by the library with at least one of the hook's secrets.
    pub valid: bool,
    /// The indexes of the hook's secrets the signature verified with.
    pub verified_with: Vec<usize>,
    /// Why a secret did not verify.
    pub errors: Vec<String>,
    /// What it was answered: `{"status": n}`, `{"hang": true}`…
    pub answer: Value,
}

impl Delivery {
    fn from_json(v: &Value) -> Self {
        let s = |k: &str| v[k].as_str().map(str::to_owned);
        Self {
            id: s("id").unwrap_or_default(),
            timestamp: v["timestamp"].as_i64().unwrap_or(-1),
            signature: s("signature").unwrap_or_default(),
            content_type: s("content_type"),
            event_type: s("type"),
            tenant: s("tenant"),
            body: v["body"].clone(),
            raw: s("raw").unwrap_or_default(),
            valid: v["valid"].as_bool().unwrap_or(false),
            verified_with: v["verified_with"]
                .as_array()
                .map(|a| a.iter().filter_map(|i| i.as_u64()).map(|i| i as usize).collect())
                .unwrap_or_default(),
            errors: v["errors"]
                .as_array()
                .map(|a| a.iter().filter_map(|e| e.as_str().map(str::to_owned)).collect())
                .unwrap_or_default(),
            answer: v["answer"].clone(),
        }
    }
}

/// The directory holding the root `package.json` and `tests/webhook-receiver/`.
fn repo_root() -> PathBuf {
    let mut dir: &Path = Path::new(env!("CARGO_MANIFEST_DIR"));
    loop {
        if dir.join("package.json").is_file() && dir.join("tests/webhook-receiver/receiver.mjs").is_file() {
            return dir.to_path_buf();
        }
        dir = dir
            .parent()
            .expect("no directory above CARGO_MANIFEST_DIR holds package.json");
    }
}

impl Receiver {
    pub async fn start() -> Self {
        let root = repo_root();
        assert!(
            root.join("node_modules/standardwebhooks").is_dir(),
            "node_modules/standardwebhooks is missing: run `npm ci` at {} (scripts/test does)",
            root.display()
        );
        let mut child = Command::new("node")
            .arg(root.join("tests/webhook-receiver/receiver.mjs"))
            .current_dir(&root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn node (is Node.js installed, and `npm ci` run at the repository root?)");
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
        let line = match tokio::time::timeout(Duration::from_secs(30), out_lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            other => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                panic!(
                    "the webhook receiver did not start ({other:?}); stderr:\n{}",
                    stderr.lock().unwrap().join("\n")
                );
            }
        };
        tokio::spawn(async move { while let Ok(Some(_)) = out_lines.next_line().await {} });
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}"));
        let port = v["port"].as_u64().expect("port");
        Self {
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            _child: child,
            stderr,
        }
    }

    /// The URL of a hook, for an endpoint.
    pub fn url(&self, hook: &str) -> String {
        format!("{}/hooks/{hook}", self.base)
    }

    async fn control(&self, path: &str, body: Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("the receiver is gone ({e}); stderr:\n{}", self.stderr()));
        assert_eq!(r.status(), 200, "{path}: {}", r.text().await.unwrap_or_default());
    }

    /// The secrets a hook verifies with (each on its own).
    pub async fn set_secrets(&self, hook: &str, secrets: &[&str]) {
        self.control(&format!("/_hooks/{hook}/secrets"), json!({ "secrets": secrets }))
            .await;
    }

    /// Replaces a hook's script.
    pub async fn script(&self, hook: &str, rules: &[Rule]) {
        let rules: Vec<Value> = rules
            .iter()
            .map(
                |r| json!({ "tenant": r.tenant, "type": r.event_type, "times": r.times, "answer": r.answer.to_json() }),
            )
            .collect();
        self.control(&format!("/_hooks/{hook}/script"), json!({ "rules": rules }))
            .await;
    }

    /// The application's clock, for the library's timestamp check.
    pub async fn set_clock(&self, now: OffsetDateTime) {
        self.control("/_clock", json!({ "unix": now.unix_timestamp() })).await;
    }

    /// Every delivery a hook received, in order of arrival.
    pub async fn deliveries(&self, hook: &str) -> Vec<Delivery> {
        let r = self
            .client
            .get(format!("{}/_deliveries", self.base))
            .query(&[("hook", hook)])
            .send()
            .await
            .unwrap_or_else(|e| panic!("the receiver is gone ({e}); stderr:\n{}", self.stderr()));
        let list: Vec<Value> = r.json().await.unwrap();
        list.iter().map(Delivery::from_json).collect()
    }

    /// Polls until `hook` has received at least `n` deliveries (within `within`); returns them.
    pub async fn wait_for(&self, hook: &str, n: usize, within: Duration) -> Vec<Delivery> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let got = self.deliveries(hook).await;
            if got.len() >= n {
                return got;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "hook {hook} received {} of {n} deliveries within {within:?}: {:?}",
                got.len(),
                got.iter().map(|d| &d.event_type).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The receiver's stderr so far (for diagnostics).
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }
}
