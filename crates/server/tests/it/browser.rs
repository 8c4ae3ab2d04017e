//! The console in a real browser: chromedriver drives headless Chromium through the first run
//! (setup link → sign in → create a tenant → see it in the list and among the events) the way a
//! person would, with app.js running and the real CSP in force.
//!
//! Needs chromedriver and Chromium: `QUARTERDECK_TEST_CHROMEDRIVER` (default
//! /usr/bin/chromedriver) and `QUARTERDECK_TEST_CHROMIUM` (default /usr/bin/chromium). Without
//! them the test fails, saying so, unless `QUARTERDECK_TEST_SKIP_BROWSER=1`.
//!
//! Screenshots of the tenant list (1280 px and 390 px wide) go to `target/screenshots/`.

use crate::both;
use crate::helpers::{OWNER_EMAIL, OWNER_PASSWORD};
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long any one step may take before the test gives up.
const WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

both!(
    async fn the_first_owner_sets_up_signs_in_and_creates_a_tenant_in_a_real_browser(app) {
        // Arrange: the one-time link `serve` logs, and a browser.
        let Some(browser) = Browser::start().await else {
            return;
        };
        let token = app.core.setup_token_if_needed().await.unwrap().unwrap();
        let setup_link = format!("{}/setup?token={}", app.base_url, token.expose());
        let label = format!("{:?}", app.backend).to_lowercase();

        // Act and assert, step by step.
        browser.drive(|c| walk(c, setup_link, label)).await;
    }
);

/// The whole walk, as a person would do it.
async fn walk(c: Client, setup_link: String, label: String) {
    let started = Instant::now();
    let step = |name: &str| {
        eprintln!(
            "[browser {label}] {:>6} ms  {name}",
            started.elapsed().as_millis()
        )
    };

    // The setup link: create the owner.
    c.goto(&setup_link).await.unwrap();
    wait_for_text(&c, "h1", "Create the owner account").await;
    type_into(&c, "#email", OWNER_EMAIL).await;
    type_into(&c, "#password", OWNER_PASSWORD).await;
    type_into(&c, "#confirm", OWNER_PASSWORD).await;
    click(&c, "form[action='/setup'] button[type=submit]").await;
    let url = wait_for_path(&c, "/login").await;
    assert_eq!(
        url.query(),
        Some("setup=done"),
        "setup should land on /login?setup=done"
    );
    step("owner created through the setup link");

    // Sign in.
    wait_for_text(&c, "h1", "Sign in").await;
    type_into(&c, "#email", OWNER_EMAIL).await;
    type_into(&c, "#password", OWNER_PASSWORD).await;
    click(&c, "form[action='/login'] button[type=submit]").await;
    wait_for_path(&c, "/").await;
    wait_for_text(&c, "main h1", "Dashboard").await;
    step("signed in: dashboard");

    // Tenants → New Tenant.
    click(&c, "nav.nav a[href='/tenants']").await;
    wait_for_path(&c, "/tenants").await;
    wait_for_text(&c, "main h1", "Tenants").await;
    click(&c, ".page-header a[href='/tenants/new']").await;
    wait_for_path(&c, "/tenants/new").await;
    wait_for_text(&c, "main h1", "New Tenant").await;

    // app.js derives the slug from the name as it is typed.
    type_into(&c, "#name", "Acme Corp").await;
    let slug = wait_for_value(&c, "#slug", "acme-corp").await;
    assert_eq!(slug, "acme-corp");
    step("new tenant form: slug derived by app.js");

    // Submit with the default region and tier.
    click(&c, "form[action='/tenants'] button[type=submit]").await;
    let url = wait_for_path(&c, "/tenants").await;
    assert!(
        url.query().is_some_and(|q| q.starts_with("created=")),
        "creating should land on /tenants?created=…, got {url}"
    );
    // The toast goes away after 7 s; it is checked at once.
    wait_for_text(&c, "#toasts .toast", "Tenant 'Acme Corp' created.").await;
    let table = find(&c, "main table.table tbody")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        table.contains("Acme Corp"),
        "the tenant list should show the name: {table}"
    );
    assert!(
        table.contains("acme-corp"),
        "the tenant list should show the slug: {table}"
    );
    step("tenant created: toast and list row");

    // Screenshots of the list, wide and narrow (looked at by people, not asserted).
    screenshot(&c, &format!("tenants-1280-{label}"), 1280, 900).await;
    screenshot(&c, &format!("tenants-390-{label}"), 390, 844).await;
    c.set_window_size(1280, 900).await.unwrap();
    step("screenshots saved");

    // Events.
    click(&c, "nav.nav a[href='/audit']").await;
    wait_for_path(&c, "/audit").await;
    wait_for_text(&c, "main h1", "Events").await;
    wait_for_text(&c, "main table.table tbody", "TENANT_CREATED").await;
    step("events list shows TENANT_CREATED");
}

// ---------- the browser ----------

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

    /// Open a session, run `walk` with it, close the session, then pass on any panic.
    async fn drive<F, Fut>(&self, walk: F)
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let profile = self.dir.path().join("profile");
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
        // chromedriver speaks plain HTTP on localhost: no TLS stack (fantoccini without
        // features; hyper-util as a dev-dependency for the connector).
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot open a WebDriver session with {} ({e})",
                    self.chromium
                )
            });
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
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(&path).is_file()))
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

// ---------- steps and waits ----------

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
            let url = c
                .current_url()
                .await
                .map(|u| u.to_string())
                .unwrap_or_default();
            let body = body_text(c).await;
            panic!("timed out after {WAIT:?} waiting for {what}\nat {url}\npage text:\n{body}");
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn body_text(c: &Client) -> String {
    match c.find(Locator::Css("body")).await {
        Ok(body) => body.text().await.unwrap_or_default(),
        Err(_) => String::new(),
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
        el.text()
            .await
            .ok()
            .filter(|t| t.contains(text))
            .map(|_| ())
    })
    .await;
}

/// Wait until the `css` input's value is `value`; returns it.
async fn wait_for_value(c: &Client, css: &str, value: &str) -> String {
    poll(c, &format!("{css} to have the value {value:?}"), || async {
        let el = c.find(Locator::Css(css)).await.ok()?;
        el.prop("value").await.ok().flatten().filter(|v| v == value)
    })
    .await
}

/// Wait until the page's path is `path`; returns the URL.
async fn wait_for_path(c: &Client, path: &str) -> url::Url {
    poll(c, &format!("the path {path}"), || async {
        c.current_url().await.ok().filter(|u| u.path() == path)
    })
    .await
}

async fn type_into(c: &Client, css: &str, text: &str) {
    find(c, css).await.send_keys(text).await.unwrap();
}

async fn click(c: &Client, css: &str) {
    find(c, css).await.click().await.unwrap();
}

/// Resize the window to `width`×`height`, save a PNG of the viewport as `name`.png, and print
/// what a person should look at: the page being wider than the window, and what sticks out.
async fn screenshot(c: &Client, name: &str, width: u32, height: u32) {
    c.set_window_size(width, height).await.unwrap();
    // A still picture: wait for running CSS animations (the toast's slide-in) to end.
    poll(c, "CSS animations to finish", || async {
        let running = c
            .execute(
                "return document.getAnimations().filter((a) => a.playState === 'running').length;",
                vec![],
            )
            .await
            .ok()?;
        (running.as_u64() == Some(0)).then_some(())
    })
    .await;
    let layout = c.execute(LAYOUT_JS, vec![]).await.unwrap();
    let png = c.screenshot().await.unwrap();
    let dir = screenshot_dir();
    let path = dir.join(format!("{name}.png"));
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, &png)) {
        Ok(()) => eprintln!("screenshot {}: {layout}", path.display()),
        Err(e) => eprintln!("screenshot {} not saved: {e}", path.display()),
    }
    let client = layout["client"].as_f64().unwrap_or_default();
    let scroll = layout["scroll"].as_f64().unwrap_or_default();
    if scroll > client {
        eprintln!(
            "NOTE {name}: the page is {} px wider than the window (a horizontal scrollbar); \
             sticking out: {}",
            scroll - client,
            layout["sticking_out"]
        );
    }
}

/// The window and page widths, and up to five elements that stick out of the page on the right
/// (not counting fixed ones, or ones inside a scrolling or clipping box).
const LAYOUT_JS: &str = r##"
const d = document.documentElement, cw = d.clientWidth;
const inBox = (e) => {
  for (let p = e.parentElement; p && p !== d; p = p.parentElement) {
    if (getComputedStyle(p).overflowX !== "visible") return true;
  }
  return false;
};
const name = (e) => e.tagName.toLowerCase() + (e.id ? "#" + e.id : "") +
  (typeof e.className === "string" && e.className.trim() ? "." + e.className.trim().split(/\s+/).join(".") : "");
const out = [...document.body.querySelectorAll("*")]
  .filter((e) => e.getBoundingClientRect().right > cw + 0.5 && getComputedStyle(e).position !== "fixed" && !inBox(e))
  .slice(0, 5)
  .map((e) => name(e) + " (right edge " + Math.round(e.getBoundingClientRect().right) + " px)");
return { window: innerWidth, client: cw, scroll: d.scrollWidth, sticking_out: out };
"##;

/// `target/screenshots`, next to the test binary's `target/<profile>/deps`.
fn screenshot_dir() -> PathBuf {
    let from_exe = std::env::current_exe().ok().and_then(|exe| {
        let deps = exe.parent()?;
        (deps.file_name()? == "deps").then(|| deps.parent()?.parent().map(Path::to_path_buf))?
    });
    from_exe
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
        .join("screenshots")
}
