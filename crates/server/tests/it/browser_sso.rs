//! Single sign-on in a real browser: chromedriver drives headless Chromium from the tenant's
//! sign-in page through a real identity provider (on 127.0.0.1, plain http) and back, with
//! app.js running, the real CSP in force and the real cookie rules (SameSite=Lax, host-only)
//! applied by the browser rather than by a test client.
//!
//! - OIDC (the runbook's story): acme's admin has configured an OIDC connection at a real
//!   oidc-provider; bob was invited as a developer. In Chromium he opens acme's sign-in page,
//!   clicks "Sign in with Acme SSO", signs in on the provider's login form and lands on acme's
//!   portal; he is now active and linked (USER_LINKED).
//! - SAML (the `saml` feature): acme uses the samlify test IdP with auto-provisioning. Sam clicks
//!   "Sign in with Acme SAML", fills the IdP's form, whose page auto-posts the signed response to
//!   the ACS (cross-site: no cookie), which sends the browser to `/sso/saml/finish` (its own
//!   cookie) and on to the portal; sam is provisioned as a viewer (USER_PROVISIONED).
//!
//! SQLite only, like the other browser tests' single-server walks. Needs chromedriver and
//! Chromium: `QUARTERDECK_TEST_CHROMEDRIVER` (default /usr/bin/chromedriver) and
//! `QUARTERDECK_TEST_CHROMIUM` (default /usr/bin/chromium); skipped with
//! `QUARTERDECK_TEST_SKIP_BROWSER=1`. The harness is a trimmed copy of `browser.rs`'s.

use crate::helpers::{Backend, TestApp};
use crate::sso::{configure, start_op, tenant};
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use quarterdeck_domain::EmailAddress;
use quarterdeck_domain::user::{Directory, User, UserStatus};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long any one step may take before the test gives up.
const WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

const BOB: &str = "bob@acme.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invited_user_signs_in_with_oidc_in_a_real_browser_is_linked_and_lands_on_the_portal() {
    // Arrange: a browser; acme with its OIDC connection at a real provider; bob invited.
    let steps = Steps::new("oidc");
    let Some(browser) = Browser::start().await else {
        return;
    };
    let app = TestApp::spawn(Backend::Sqlite).await;
    let acme = tenant(&app, "Acme Corp", "acme").await;
    let op = start_op(&app, &["acme"]).await;
    let r = configure(&acme.admin, &op.issuer, "both", false, &[]).await;
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
    let r = app.invite(BOB, &acme.id, &["developer"]).await;
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
    assert_eq!(user(&app, &acme.id, BOB).await.unwrap().status, UserStatus::Invited);
    steps.step("chromedriver, oidc-provider and the server up; acme configured; bob invited");

    // Act: bob, in Chromium.
    let origin = format!("http://acme.localhost:{}", app.port());
    let issuer = url::Url::parse(&op.issuer).unwrap();
    let walk_origin = origin.clone();
    let walk_steps = steps.clone();
    browser
        .drive(move |c| async move {
            let steps = walk_steps;
            c.goto(&format!("{walk_origin}/login")).await.unwrap();
            wait_for_text(&c, "main h1", "Sign in to Acme Corp").await;
            let button = find(&c, "#sso-sign-in").await;
            assert_eq!(button.text().await.unwrap(), "Sign in with Acme SSO");
            button.click().await.unwrap();
            let at_op = wait_for_url(&c, "the provider's login form", |u| u.origin() == issuer.origin()).await;
            steps.step(&format!(
                "clicked Sign in with Acme SSO: at the provider ({})",
                at_op.path()
            ));

            // The provider's development login form: any login and password; the login is the email.
            type_into(&c, "input[name=login]", BOB).await;
            type_into(&c, "input[name=password]", "any password").await;
            click(&c, "form button[type=submit]").await;
            steps.step("submitted the provider's login form");

            // Back at acme's portal (after a consent page, should the provider show one). Waits
            // for the URL, not for navigation events: the way back is a chain of redirects.
            let consented = AtomicBool::new(false);
            let portal = format!("{walk_origin}/portal");
            let url = poll(&c, "acme's portal", || async {
                let url = c.current_url().await.ok()?;
                if url.as_str() == portal {
                    return Some(url);
                }
                if !consented.load(Ordering::Relaxed)
                    && url.origin() == issuer.origin()
                    && let Ok(button) = c
                        .find(Locator::Css(
                            "form input[name=prompt][value=consent] ~ button[type=submit]",
                        ))
                        .await
                {
                    consented.store(button.click().await.is_ok(), Ordering::Relaxed);
                }
                None
            })
            .await;
            let consented = consented.into_inner();
            assert_eq!(url.path(), "/portal");
            assert_eq!(url.host_str(), Some("acme.localhost"), "{url}");
            wait_for_text(&c, "main h1", "Acme Corp").await;
            wait_for_text(&c, ".sidebar .me-email", BOB).await;
            steps.step(&format!(
                "landed on acme's portal as bob{}",
                if consented { " (after a consent page)" } else { "" }
            ));

            // Signed in for real: the portal stays open on a fresh load.
            c.goto(&format!("{walk_origin}/portal/team")).await.unwrap();
            wait_for_path(&c, "/portal/team").await;
            wait_for_text(&c, "main table.table tbody", BOB).await;
            steps.step("the session holds: /portal/team lists bob");
        })
        .await;

    // Assert: bob is active with his invited role, linked once, signed in by SSO.
    let bob = user(&app, &acme.id, BOB).await.unwrap();
    assert_eq!(bob.status, UserStatus::Active);
    assert_eq!(bob.roles, vec!["developer"]);
    let linked = app.events_of("USER_LINKED").await;
    assert_eq!(linked.len(), 1, "{linked:#?}");
    assert_eq!(linked[0].details["previous_status"], "INVITED");
    assert_eq!(linked[0].details["issuer"], op.issuer.as_str());
    assert_eq!(linked[0].tenant_id.unwrap().to_string(), acme.id);
    let sign_ins = app.events_of("SIGN_IN_SUCCEEDED").await;
    assert!(
        sign_ins
            .iter()
            .any(|e| e.details["method"] == "sso" && e.details["user_id"] == bob.id.to_string()),
        "{sign_ins:#?}"
    );
    assert!(app.events_of("USER_PROVISIONED").await.is_empty());
    steps.step("bob ACTIVE (developer); USER_LINKED and SIGN_IN_SUCCEEDED (sso) recorded");
}

#[cfg(feature = "saml")]
mod saml {
    use super::*;
    use crate::helpers::TenantClient;
    use crate::saml_idp::SamlIdp;

    const SAM: &str = "sam@acme.test";

    /// Save acme's SAML connection (metadata pasted, auto-provisioning as viewer) through the
    /// portal form.
    async fn configure_saml(admin: &TenantClient, idp: &SamlIdp) {
        let page = admin.get_html("/portal/settings/sso").await;
        let fields = [
            ("protocol", "saml"),
            ("display_name", "Acme SAML"),
            ("mode", "both"),
            ("metadata_xml", idp.metadata_xml.as_str()),
            ("email_attribute", "email"),
            ("name_attribute", "name"),
            ("default_roles", "viewer"),
            ("auto_provision", "on"),
        ];
        let r = admin.post_form("/portal/settings/sso", &page, &fields).await;
        assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn someone_new_signs_in_with_saml_in_a_real_browser_is_provisioned_and_lands_on_the_portal() {
        // Arrange: a browser; acme with SAML at the test IdP, auto-provisioning viewers.
        let steps = Steps::new("saml");
        let Some(browser) = Browser::start().await else {
            return;
        };
        let app = TestApp::spawn(Backend::Sqlite).await;
        let acme = tenant(&app, "Acme Corp", "acme").await;
        let idp = crate::saml_idp::shared().await;
        configure_saml(&acme.admin, idp).await;
        steps.step("chromedriver, the SAML IdP and the server up; acme configured");

        // Act: sam, in Chromium.
        let origin = format!("http://acme.localhost:{}", app.port());
        let idp_origin = url::Url::parse(&idp.base).unwrap().origin();
        let walk_origin = origin.clone();
        let walk_steps = steps.clone();
        browser
            .drive(move |c| async move {
                let steps = walk_steps;
                c.goto(&format!("{walk_origin}/login")).await.unwrap();
                wait_for_text(&c, "main h1", "Sign in to Acme Corp").await;
                let button = find(&c, "#sso-sign-in").await;
                assert_eq!(button.text().await.unwrap(), "Sign in with Acme SAML");
                button.click().await.unwrap();
                wait_for_url(&c, "the IdP's sign-in page", |u| {
                    u.origin() == idp_origin && u.path() == "/sso"
                })
                .await;
                wait_for_text(&c, "h1", "Test IdP sign-in").await;
                steps.step("clicked Sign in with Acme SAML: at the IdP's /sso");

                type_into(&c, "#email", SAM).await;
                type_into(&c, "#name", "Sam Saml").await;
                click(&c, "#sign-in").await;
                steps.step("submitted the IdP's form (its page auto-posts to the ACS)");

                // IdP → POST /sso/saml/acs → /sso/saml/finish → /portal: wait for the URL.
                let url = wait_for_url(&c, "acme's portal", |u| u.as_str() == format!("{walk_origin}/portal")).await;
                assert_eq!(url.path(), "/portal");
                assert_eq!(url.host_str(), Some("acme.localhost"), "{url}");
                wait_for_text(&c, "main h1", "Acme Corp").await;
                wait_for_text(&c, ".sidebar .me-email", SAM).await;
                steps.step("landed on acme's portal as sam");

                c.goto(&format!("{walk_origin}/portal/team")).await.unwrap();
                wait_for_path(&c, "/portal/team").await;
                wait_for_text(&c, "main table.table tbody", SAM).await;
                steps.step("the session holds: /portal/team lists sam");
            })
            .await;

        // Assert: sam was provisioned with the default role, from this IdP.
        let sam = user(&app, &acme.id, SAM).await.unwrap();
        assert_eq!(sam.status, UserStatus::Active);
        assert_eq!(sam.roles, vec!["viewer"]);
        assert_eq!(sam.name.as_deref(), Some("Sam Saml"));
        let provisioned = app.events_of("USER_PROVISIONED").await;
        assert_eq!(provisioned.len(), 1, "{provisioned:#?}");
        assert_eq!(provisioned[0].details["issuer"], format!("{}/metadata", idp.base));
        assert_eq!(provisioned[0].tenant_id.unwrap().to_string(), acme.id);
        let sign_ins = app.events_of("SIGN_IN_SUCCEEDED").await;
        assert!(
            sign_ins
                .iter()
                .any(|e| e.details["method"] == "sso" && e.details["user_id"] == sam.id.to_string()),
            "{sign_ins:#?}"
        );
        steps.step("sam ACTIVE (viewer); USER_PROVISIONED and SIGN_IN_SUCCEEDED (sso) recorded");
    }
}

async fn user(app: &TestApp, tid: &str, email: &str) -> Option<User> {
    app.core
        .store()
        .user_by_email(
            Directory::Tenant(tid.parse().unwrap()),
            &EmailAddress::parse(email).unwrap(),
        )
        .await
        .unwrap()
        .map(|(u, _)| u)
}

/// Prints how far into the test each step finished.
#[derive(Clone)]
struct Steps {
    label: &'static str,
    started: Instant,
}

impl Steps {
    fn new(label: &'static str) -> Self {
        Self {
            label,
            started: Instant::now(),
        }
    }

    fn step(&self, name: &str) {
        eprintln!(
            "[browser sso {}] {:>6} ms  {name}",
            self.label,
            self.started.elapsed().as_millis()
        );
    }
}

// ---------- the browser (a trimmed copy of browser.rs's) ----------

/// chromedriver (in its own process group, so Chromium goes with it) and a fresh profile.
/// Dropping it kills them all, also when the test panics.
struct Browser {
    driver: Child,
    url: String,
    chromium: String,
    dir: tempfile::TempDir,
}

impl Browser {
    /// `None` when browser tests are skipped; panics when the browser cannot be found or started.
    async fn start() -> Option<Self> {
        if std::env::var("QUARTERDECK_TEST_SKIP_BROWSER").as_deref() == Ok("1") {
            eprintln!("QUARTERDECK_TEST_SKIP_BROWSER=1: browser test skipped");
            return None;
        }
        let driver = program("QUARTERDECK_TEST_CHROMEDRIVER", "/usr/bin/chromedriver");
        let chromium = program("QUARTERDECK_TEST_CHROMIUM", "/usr/bin/chromium");

        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log_path = dir.path().join("chromedriver.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new(&driver)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start chromedriver ({driver}): {e}"))
        };
        let mut browser = Self {
            driver: child,
            url: format!("http://127.0.0.1:{port}"),
            chromium,
            dir,
        };
        browser.wait_until_ready(&log_path).await;
        Some(browser)
    }

    async fn wait_until_ready(&mut self, log_path: &Path) {
        let http = reqwest::Client::new();
        let status_url = format!("{}/status", self.url);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(exit)) = self.driver.try_wait() {
                let log = std::fs::read_to_string(log_path).unwrap_or_default();
                panic!("chromedriver exited at start ({exit}):\n{log}");
            }
            if let Ok(r) = http.get(&status_url).send().await
                && r.status().is_success()
            {
                return;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(log_path).unwrap_or_default();
                panic!("chromedriver did not answer on {status_url} within {WAIT:?}:\n{log}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Open a session (a fresh Chromium and profile), run `walk` in it, close it, and pass on
    /// any panic.
    async fn drive<F, Fut>(&self, walk: F)
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let client = self.open().await;
        // Run the walk as a task so that a failed assertion still lets the session close.
        let outcome = tokio::spawn(walk(client.clone())).await;
        let _ = client.close().await;
        if let Err(e) = outcome {
            match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(e) => panic!("the browser walk did not finish: {e}"),
            }
        }
    }

    async fn open(&self) -> Client {
        let profile: PathBuf = self.dir.path().join("profile");
        let caps = serde_json::json!({
            "goog:chromeOptions": {
                "binary": self.chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }
        });
        let serde_json::Value::Object(caps) = caps else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("cannot open a WebDriver session with {} ({e})", self.chromium))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: chromedriver and any Chromium it left behind.
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The program an environment variable names (or the default); panics, saying what to do, when it
/// is not there.
fn program(var: &str, default: &str) -> String {
    let path = std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned());
    let found = if path.contains('/') {
        Path::new(&path).is_file()
    } else {
        std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(&path).is_file()))
    };
    assert!(
        found,
        "{path} not found: the browser test needs chromedriver and Chromium. Install them \
         (apt-get install chromium chromium-driver; CI does), point {var} at it, \
         or set QUARTERDECK_TEST_SKIP_BROWSER=1 to skip this test"
    );
    path
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

// ---------- waits ----------

/// Poll `check` until it gives a value or `WAIT` runs out; then panic with `what` and the page.
async fn poll<T, F, Fut>(c: &Client, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            let url = c.current_url().await.map(|u| u.to_string()).unwrap_or_default();
            let body = match c.find(Locator::Css("body")).await {
                Ok(body) => body.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            panic!("timed out after {WAIT:?} waiting for {what}\nat {url}\npage text:\n{body}");
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn find(c: &Client, css: &str) -> Element {
    poll(c, &format!("element {css}"), || async {
        c.find(Locator::Css(css)).await.ok()
    })
    .await
}

/// Wait until the first `css` element's text contains `text`.
async fn wait_for_text(c: &Client, css: &str, text: &str) {
    poll(c, &format!("{css} to contain {text:?}"), || async {
        let el = c.find(Locator::Css(css)).await.ok()?;
        el.text().await.ok().filter(|t| t.contains(text)).map(|_| ())
    })
    .await;
}

/// Wait until the page's path is `path`; returns the URL.
async fn wait_for_path(c: &Client, path: &str) -> url::Url {
    wait_for_url(c, &format!("the path {path}"), |u| u.path() == path).await
}

/// Wait until the page's URL passes `ok`; returns it.
async fn wait_for_url(c: &Client, what: &str, ok: impl Fn(&url::Url) -> bool) -> url::Url {
    poll(c, what, || async { c.current_url().await.ok().filter(|u| ok(u)) }).await
}

async fn type_into(c: &Client, css: &str, text: &str) {
    find(c, css).await.send_keys(text).await.unwrap();
}

async fn click(c: &Client, css: &str) {
    find(c, css).await.click().await.unwrap();
}
