//! maildev (npm, pinned in the repository's package.json): a real SMTP server whose HTTP API
//! shows what it received. Each test starts its own on free ports and stops it on drop.
//!
//! The binary is `node_modules/.bin/maildev` at the repository root. When it is missing, the
//! first test that needs it runs `npm ci` there (`npm install` without a lock file), once per
//! test process; without Node.js and npm that fails with a message saying what to install.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Serialises installing maildev between the tests of this process.
static INSTALL: Mutex<()> = Mutex::new(());

const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Maildev {
    child: Child,
    pub smtp_port: u16,
    pub web_port: u16,
    log: PathBuf,
}

fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// `node_modules/.bin/maildev`, installing it first if it is missing.
fn maildev_bin() -> PathBuf {
    let root = repo_root();
    let bin = root.join("node_modules/.bin/maildev");
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if bin.exists() {
        return bin;
    }
    let args: &[&str] = if root.join("package-lock.json").exists() {
        &["ci", "--no-audit", "--no-fund"]
    } else {
        &["install", "--no-audit", "--no-fund"]
    };
    let command = format!("npm {}", args.join(" "));
    eprintln!(
        "{} is missing: running `{command}` in {}",
        bin.display(),
        root.display()
    );
    let output = Command::new("npm")
        .args(args)
        .current_dir(&root)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run npm ({e}). These tests need maildev from npm: install Node.js (>= 20) \
                 and npm, then run `{command}` in {}",
                root.display()
            )
        });
    assert!(
        output.status.success(),
        "`{command}` in {} failed ({}):\n{}\n{}",
        root.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        bin.exists(),
        "`{command}` succeeded but {} is still missing: is maildev in package.json's devDependencies?",
        bin.display()
    );
    bin
}

/// Two distinct ports that were free a moment ago.
fn free_ports() -> (u16, u16) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (a.local_addr().unwrap().port(), b.local_addr().unwrap().port())
}

fn listening(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// The SMTP port of a mail server that is down, for a maildev started there later
/// ([`Maildev::start_on`]). Held meanwhile by a socket bound with `SO_REUSEADDR` but not
/// listening: connecting to it is refused, as to a server that is down, and no other socket is
/// given the port (neither `bind` to port 0 nor an outgoing connection picks a bound port), as
/// a port freed after binding it could be. maildev binds it beside that socket (Linux lets a
/// `SO_REUSEADDR` socket bind where the others do not listen; Node.js sets the option), and
/// the hold ends once maildev listens.
#[allow(dead_code, reason = "the server's tests use it; this file is shared with them")]
pub struct DownSmtp {
    _held: tokio::net::TcpSocket,
    pub port: u16,
}

#[allow(dead_code, reason = "the server's tests use it; this file is shared with them")]
impl DownSmtp {
    pub fn hold() -> DownSmtp {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let port = socket.local_addr().unwrap().port();
        DownSmtp { _held: socket, port }
    }
}

impl Maildev {
    /// A running maildev on 127.0.0.1, SMTP and web API both accepting connections.
    pub fn start() -> Maildev {
        Self::start_on(None)
    }

    /// Like [`Maildev::start`], on the port of a "down" SMTP server (to bring it up).
    pub fn start_on(smtp: Option<DownSmtp>) -> Maildev {
        let bin = maildev_bin();
        for attempt in 1..=3 {
            let (free_smtp, web_port) = free_ports();
            let smtp_port = smtp.as_ref().map_or(free_smtp, |down| down.port);
            let log = std::env::temp_dir().join(format!("quarterdeck-maildev-{}-{smtp_port}.log", std::process::id()));
            let out = File::create(&log).unwrap();
            let err = out.try_clone().unwrap();
            let child = Command::new(&bin)
                .args(["--ip", "127.0.0.1", "--web-ip", "127.0.0.1"])
                .args(["-s", &smtp_port.to_string(), "-w", &web_port.to_string()])
                .current_dir(repo_root())
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let mut maildev = Maildev {
                child,
                smtp_port,
                web_port,
                log,
            };
            match maildev.wait_ready() {
                Ok(()) => {
                    drop(smtp);
                    return maildev;
                }
                Err(why) => eprintln!("maildev, attempt {attempt}: {why}; its output:\n{}", maildev.output()),
            }
        }
        panic!("maildev did not start in 3 attempts (its output is above)");
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Err(format!("it exited early ({status})"));
            }
            if listening(self.smtp_port) && listening(self.web_port) {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(format!(
                    "not listening on ports {} and {} after {START_TIMEOUT:?}",
                    self.smtp_port, self.web_port
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What maildev printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every message received so far, as maildev's API shows them.
    pub async fn emails(&self) -> Vec<Value> {
        let url = format!("http://127.0.0.1:{}/api/email", self.web_port);
        let response = reqwest::get(&url).await.unwrap();
        assert!(response.status().is_success(), "GET {url}: {}", response.status());
        response.json().await.unwrap()
    }

    /// Waits (up to 10 s) until maildev has received `n` messages, and returns them.
    pub async fn wait_for_emails(&self, n: usize) -> Vec<Value> {
        let started = Instant::now();
        loop {
            let emails = self.emails().await;
            if emails.len() >= n {
                return emails;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "maildev received {} of {n} messages; its output:\n{}",
                emails.len(),
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Maildev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}
