//! The test harness: `TestApp::spawn(Backend)` starts a real server with a fresh database.

use quarterdeck::Settings;
use quarterdeck::app::{App, Deps};
use quarterdeck_domain::Core;
use quarterdeck_domain::clock::ManualClock;
use quarterdeck_domain::token::OsRandom;
use reqwest::header::HeaderMap;
use std::sync::Arc;
use time::OffsetDateTime;

pub const OWNER_EMAIL: &str = "owner@example.com";
pub const OWNER_PASSWORD: &str = "correct horse battery staple";
/// The password tenant admins made by `TestApp::tenant_admin` choose.
pub const ADMIN_PASSWORD: &str = "a long and lovely passphrase";
/// Every test app's PostgreSQL connection budget (`database_max_connections`): scripts/test
/// runs RUST_TEST_THREADS=4 tests at once against one cluster with the default limit of 100.
pub const TEST_DB_BUDGET: u32 = 10;

/// Write one async test body once; run it on both backends.
///
/// `both!(fn name(app) { ... })` makes `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! both {
    ($(#[$m:meta])* async fn $name:ident($app:ident) $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            async fn run($app: $crate::helpers::TestApp) $body
            $(#[$m])*
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                run($crate::helpers::TestApp::spawn($crate::helpers::Backend::Sqlite).await).await
            }
            $(#[$m])*
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(app) = $crate::helpers::TestApp::spawn_pg().await {
                    run(app).await
                }
            }
        }
    };
}

/// Like `both!`, for tests that start their own server(s): the body gets the `Backend`.
#[macro_export]
macro_rules! both_backends {
    ($(#[$m:meta])* async fn $name:ident($backend:ident) $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            async fn run($backend: $crate::helpers::Backend) $body
            $(#[$m])*
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                run($crate::helpers::Backend::Sqlite).await
            }
            $(#[$m])*
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if $crate::helpers::pg_admin_url().is_some() {
                    run($crate::helpers::Backend::Postgres).await
                }
            }
        }
    };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestApp {
    pub backend: Backend,
    pub base_url: String,
    pub core: Arc<Core>,
    pub clock: Arc<ManualClock>,
    pub client: reqwest::Client,
    /// The PostgreSQL database of this test (control database), if any.
    pub pg_url: Option<String>,
    /// What this server logged (its own runtime's threads log here, and to the process-wide
    /// capture): one test's assertions about logs never see another test's lines.
    pub logs: LogBuffer,
    _dir: tempfile::TempDir,
    _server: ServerRuntime,
}

/// The runtime a test's server runs on, stopped with the test.
struct ServerRuntime(Option<tokio::runtime::Runtime>);

impl Drop for ServerRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

pub fn pg_admin_url() -> Option<String> {
    match std::env::var("QUARTERDECK_TEST_PG_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ if std::env::var("QUARTERDECK_TEST_SKIP_PG").as_deref() == Ok("1") => None,
        _ => panic!(
            "QUARTERDECK_TEST_PG_URL is not set: run the suite with scripts/test (it starts PostgreSQL), \
             or set QUARTERDECK_TEST_SKIP_PG=1 to skip the PostgreSQL half"
        ),
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, |_| {}).await
    }

    /// `None` when PostgreSQL tests are skipped.
    pub async fn spawn_pg() -> Option<Self> {
        pg_admin_url()?;
        Some(Self::spawn(Backend::Postgres).await)
    }

    /// A server whose email goes to a real SMTP server (maildev), delivered by the worker.
    pub async fn spawn_with_mail(backend: Backend) -> (Self, crate::maildev::Maildev) {
        let maildev = crate::maildev::Maildev::start();
        let port = maildev.smtp_port;
        let app = Self::spawn_with(backend, |s| mail_to(s, port)).await;
        (app, maildev)
    }

    pub async fn spawn_with(backend: Backend, tweak: impl FnOnce(&mut Settings)) -> Self {
        capture_logs();
        let dir = tempfile::tempdir().unwrap();
        // Bound as `serve` binds (its backlog: edge.rs floods it with 2,000 connections).
        let listener = quarterdeck::serve::bind(([127, 0, 0, 1], 0).into()).unwrap();
        let port = listener.local_addr().unwrap().port();
        let base_url = format!("http://localhost:{port}");
        let pg_url = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(create_pg_database().await),
        };
        let mut settings = Settings {
            // The worker idles in most tests: they read the outbox directly.
            outbox_poll_ms: 3_600_000,
            listen: listener.local_addr().unwrap(),
            base_url: base_url.parse().unwrap(),
            data_dir: dir.path().to_owned(),
            database_url: pg_url.clone(),
            regions: quarterdeck::settings::Regions::named(&["eu-west", "us-east"]),
            database_max_connections: TEST_DB_BUDGET,
            // The test identity providers listen on loopback.
            outbound_allow_private: vec!["127.0.0.0/8".into()],
            ..Settings::default()
        };
        tweak(&mut settings);
        let clock = Arc::new(ManualClock::new(real_now()));
        let deps = Deps {
            clock: clock.clone(),
            rng: Arc::new(OsRandom),
        };
        // What start-up logs (the setup link, warnings about the data directory) lands in
        // this test's buffer too.
        let logs = LogBuffer::default();
        let json = settings.log_format == "json";
        let app = tracing::instrument::WithSubscriber::with_subscriber(
            App::with_listener(settings.clone(), listener, deps),
            log_dispatch(vec![logs.clone(), LOGS.get().unwrap().clone()], json),
        )
        .await
        .unwrap();
        let core = app.core.clone();
        let runtime = server_runtime(&logs, json);
        runtime.spawn(async move {
            app.run(std::future::pending()).await.unwrap();
        });
        Self {
            backend,
            base_url,
            core,
            clock,
            client: client(),
            pg_url,
            logs,
            _dir: dir,
            _server: ServerRuntime(Some(runtime)),
        }
    }

    /// Another node's `Core` on this app's database: its own connections and in-memory
    /// state, as a second `serve` process has (on SQLite too, where two processes cannot
    /// serve one data directory), on this app's clock (moving `app.clock` moves both).
    /// `tweak` sets what the test's own server was started with.
    pub async fn second_core(&self, tweak: impl FnOnce(&mut Settings)) -> Arc<Core> {
        let mut settings = Settings {
            data_dir: self.data_dir().to_owned(),
            database_url: self.pg_url.clone(),
            regions: quarterdeck::settings::Regions::named(&["eu-west", "us-east"]),
            database_max_connections: 4,
            ..Settings::default()
        };
        tweak(&mut settings);
        let deps = Deps {
            clock: self.clock.clone(),
            rng: Arc::new(OsRandom),
        };
        quarterdeck::app::core(&settings, deps).await.unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    pub fn data_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn get_html(&self, path: &str) -> String {
        self.get(path).await.text().await.unwrap()
    }

    /// POST a form with the CSRF token taken from `page`'s HTML.
    pub async fn post_form(&self, path: &str, page: &str, fields: &[(&str, &str)]) -> reqwest::Response {
        post_form(&self.client, &self.url(path), &self.base_url, page, fields).await
    }

    /// Create the owner (as the bootstrap settings would) and sign in with it.
    pub async fn sign_in_owner(&self) -> String {
        self.core.bootstrap_owner(OWNER_EMAIL, OWNER_PASSWORD).await.unwrap();
        self.sign_in(OWNER_EMAIL, OWNER_PASSWORD).await
    }

    /// Sign in through the form; returns the dashboard's HTML.
    pub async fn sign_in(&self, email: &str, password: &str) -> String {
        let page = self.get_html("/login").await;
        let r = self
            .post_form("/login", &page, &[("email", email), ("password", password)])
            .await;
        assert_eq!(r.status(), 303, "sign-in failed: {}", r.text().await.unwrap());
        self.get_html("/").await
    }

    /// Create a tenant through the console; returns its id.
    pub async fn create_tenant(&self, name: &str, slug: &str) -> String {
        let page = self.get_html("/tenants/new").await;
        let r = self
            .post_form(
                "/tenants",
                &page,
                &[
                    ("name", name),
                    ("slug", slug),
                    ("region", "eu-west"),
                    ("tier", "standard"),
                ],
            )
            .await;
        assert_eq!(r.status(), 303, "create failed: {}", r.text().await.unwrap());
        let location = location(&r);
        location.split("created=").nth(1).unwrap().to_owned()
    }

    pub async fn event_types(&self) -> Vec<String> {
        let filter = quarterdeck_domain::audit::AuditFilter {
            limit: 1000,
            ..Default::default()
        };
        let mut events = self.core.store().list_events(&filter).await.unwrap();
        events.reverse();
        events.into_iter().map(|e| e.event_type).collect()
    }

    pub async fn events_of(&self, event_type: &str) -> Vec<quarterdeck_domain::audit::AuditEvent> {
        let filter = quarterdeck_domain::audit::AuditFilter {
            event_type: Some(event_type.to_owned()),
            limit: 1000,
            ..Default::default()
        };
        self.core.store().list_events(&filter).await.unwrap()
    }
}

/// Send email by SMTP to 127.0.0.1:`port`, polled every 50 ms.
pub fn mail_to(s: &mut Settings, port: u16) {
    s.email_transport = "smtp".into();
    s.smtp_host = Some("127.0.0.1".into());
    s.smtp_port = port;
    s.smtp_tls = "none".into();
    s.email_from = "Quarterdeck <deck@example.com>".into();
    s.outbox_poll_ms = 50;
}

pub fn location(r: &reqwest::Response) -> String {
    r.headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

pub fn set_cookies(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// POST a form from `origin` with the CSRF token taken from `page`'s HTML.
pub async fn post_form(
    client: &reqwest::Client,
    url: &str,
    origin: &str,
    page: &str,
    fields: &[(&str, &str)],
) -> reqwest::Response {
    let token = csrf_token(page);
    let mut form: Vec<(&str, &str)> = vec![("csrf_token", token.as_str())];
    form.extend_from_slice(fields);
    client
        .post(url)
        .header("origin", origin)
        .form(&form)
        .send()
        .await
        .unwrap()
}

/// The first `csrf_token` hidden field's value in a page.
pub fn csrf_token(html: &str) -> String {
    let marker = "name=\"csrf_token\" value=\"";
    html.split(marker)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_default()
        .to_owned()
}

#[expect(clippy::disallowed_methods, reason = "the manual clock starts at the real time")]
pub fn real_now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// A fresh PostgreSQL database for one test; returns its URL.
pub async fn create_pg_database() -> String {
    use sqlx::ConnectOptions;
    let admin = pg_admin_url().unwrap();
    let name = format!("qdt_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let opts: sqlx::postgres::PgConnectOptions = admin.parse().unwrap();
    let mut conn = opts.connect().await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let mut url = url::Url::parse(&admin).unwrap();
    url.set_path(&format!("/{name}"));
    url.to_string()
}

/// A direct connection to the test's PostgreSQL control database (search_path unset).
pub async fn pg_conn(url: &str) -> sqlx::PgConnection {
    use sqlx::ConnectOptions;
    let opts: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    opts.connect().await.unwrap()
}

impl TestApp {
    pub fn clock_now(&self) -> OffsetDateTime {
        use quarterdeck_domain::Clock;
        self.clock.now()
    }
}

impl TestApp {
    /// A second browser (its own cookie jar) against the same server.
    pub fn client_for(_app: &TestApp) -> reqwest::Client {
        client()
    }
}

impl TestApp {
    /// A browser on a tenant's host (`{slug}.localhost:PORT`), with its own cookie jar.
    pub fn tenant_client(&self, slug: &str) -> TenantClient {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port()));
        let host = format!("{slug}.localhost");
        let client = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .resolve(&host, addr)
            .build()
            .unwrap();
        TenantClient {
            client,
            origin: format!("http://{host}:{}", self.port()),
        }
    }

    pub fn port(&self) -> u16 {
        self.base_url.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// The pending emails in the outbox (the worker is idle in tests unless mail is on).
    pub async fn outbox(&self) -> Vec<quarterdeck_domain::mail::Email> {
        let far = self.clock_now() + time::Duration::days(3650);
        self.core
            .store()
            .due_messages(far, 1000)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.email)
            .collect()
    }

    /// The registration link of the latest email to `to` in the outbox.
    pub async fn invitation_link(&self, to: &str) -> String {
        let mail = self
            .outbox()
            .await
            .into_iter()
            .rev()
            .find(|m| m.to == to)
            .unwrap_or_else(|| panic!("no email to {to}"));
        link_in(&mail.text)
    }

    /// Invite `email` as admin of the tenant `tid` (host `slug`), register with the emailed
    /// link and sign in there; returns that browser.
    pub async fn tenant_admin(&self, tid: &str, slug: &str, email: &str) -> TenantClient {
        self.invite(email, tid, &["admin"]).await;
        let c = self.tenant_client(slug);
        c.register(&self.invitation_link(email).await, ADMIN_PASSWORD).await;
        c.sign_in(email, ADMIN_PASSWORD).await;
        c
    }

    /// Invite through the console form; returns the response.
    pub async fn invite(&self, email: &str, tenant_id: &str, roles: &[&str]) -> reqwest::Response {
        let page = self.get_html("/users/new").await;
        let mut form: Vec<(&str, &str)> = vec![("email", email), ("tenant_id", tenant_id)];
        for r in roles {
            form.push(("roles", r));
        }
        self.post_form("/users/new", &page, &form).await
    }
}

/// The `/register?token=…` link in an email body.
pub fn link_in(text: &str) -> String {
    let start = text.find("http").unwrap();
    let rest = &text[start..];
    let link: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"' && *c != '<')
        .collect();
    assert!(link.contains("/register?token="), "{link}");
    link
}

/// A browser on a tenant's host.
pub struct TenantClient {
    pub client: reqwest::Client,
    pub origin: String,
}

impl TenantClient {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn get_html(&self, path: &str) -> String {
        self.get(path).await.text().await.unwrap()
    }

    pub async fn post_form(&self, path: &str, page: &str, fields: &[(&str, &str)]) -> reqwest::Response {
        post_form(&self.client, &self.url(path), &self.origin, page, fields).await
    }

    /// Open a registration link (any host in it is replaced by this client's) and set the
    /// password; returns the POST's response.
    pub async fn register(&self, link: &str, password: &str) -> reqwest::Response {
        let path = &link[link.find("/register").unwrap()..];
        let page = self.get(path).await;
        assert_eq!(page.status(), 200, "{link}");
        let page = page.text().await.unwrap();
        let token = path.split("token=").nth(1).unwrap().to_owned();
        self.post_form(
            "/register",
            &page,
            &[("token", &token), ("password", password), ("confirm", password)],
        )
        .await
    }

    pub async fn sign_in(&self, email: &str, password: &str) -> reqwest::Response {
        let page = self.get_html("/login").await;
        self.post_form("/login", &page, &[("email", email), ("password", password)])
            .await
    }
}

/// Everything every server of this test process logged (at every level), to check that no
/// secret is ever logged.
static LOGS: std::sync::OnceLock<LogBuffer> = std::sync::OnceLock::new();

/// Captured log output.
#[derive(Clone, Default)]
pub struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl LogBuffer {
    pub fn contains(&self, needle: &str) -> bool {
        String::from_utf8_lossy(&self.0.lock().unwrap()).contains(needle)
    }

    /// Everything captured so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Writes to this test's buffer and to the process-wide one.
struct LogSink(Vec<LogBuffer>);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for b in &self.0 {
            b.0.lock().unwrap().extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The text format, or with `json` the server's own JSON format (`log_format = "json"`).
fn log_dispatch(buffers: Vec<LogBuffer>, json: bool) -> tracing::Dispatch {
    if json {
        return quarterdeck::telemetry::json_dispatch(move || LogSink(buffers.clone()));
    }
    tracing::Dispatch::new(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || LogSink(buffers.clone()))
            .finish(),
    )
}

/// What the test code itself logs (direct `core` calls) goes to the process-wide capture.
fn capture_logs() {
    LOGS.get_or_init(|| {
        let buf = LogBuffer::default();
        let _ = tracing::dispatcher::set_global_default(log_dispatch(vec![buf.clone()], false));
        buf
    });
}

/// A runtime for one test's server whose threads log into `logs` (and the process-wide
/// capture): everything the server does — requests, the outbox worker, housekeeping — runs
/// on it.
fn server_runtime(logs: &LogBuffer, json: bool) -> tokio::runtime::Runtime {
    let dispatch = log_dispatch(vec![logs.clone(), LOGS.get().unwrap().clone()], json);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || {
            // Kept for the thread's life: the thread is the runtime's, and ends with it.
            std::mem::forget(tracing::dispatcher::set_default(&dispatch));
        })
        .build()
        .unwrap()
}

/// Whether anything logged so far, by any test's server, contains `needle` (for checks that
/// no secret is ever logged; a test's own positive checks use `app.logs`).
pub fn logs_contain(needle: &str) -> bool {
    LOGS.get().unwrap().contains(needle)
}

impl TestApp {
    /// `SELECT count(*) FROM {table}` in the control database, on either backend: the rows
    /// themselves, not what the product says about them.
    pub async fn control_rows(&self, table: &str) -> i64 {
        use sqlx::ConnectOptions;
        let sql = format!("SELECT count(*) FROM {table}");
        match &self.pg_url {
            Some(url) => {
                let mut conn = pg_conn(url).await;
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM identity.{table}")))
                    .fetch_one(&mut conn)
                    .await
                    .unwrap()
            }
            None => {
                let opts = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(self.data_dir().join("control.db"))
                    .read_only(true);
                let mut conn = opts.connect().await.unwrap();
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .fetch_one(&mut conn)
                    .await
                    .unwrap()
            }
        }
    }
}

impl TestApp {
    /// The first column of the first row of `sql` (a text value) in the control database,
    /// on either backend (PostgreSQL: with the control schema on the search path).
    pub async fn control_value(&self, sql: &str) -> String {
        use sqlx::ConnectOptions;
        match &self.pg_url {
            Some(url) => {
                let mut conn = pg_conn(url).await;
                sqlx::query("SET search_path TO identity")
                    .execute(&mut conn)
                    .await
                    .unwrap();
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
                    .fetch_one(&mut conn)
                    .await
                    .unwrap()
            }
            None => {
                let opts = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(self.data_dir().join("control.db"))
                    .read_only(true);
                let mut conn = opts.connect().await.unwrap();
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
                    .fetch_one(&mut conn)
                    .await
                    .unwrap()
            }
        }
    }
}

impl TestApp {
    /// Runs one statement on the control database, on either backend, as an operator (or a
    /// fault) would: for tests that put the database in a state the product never makes.
    pub async fn control_exec(&self, sql: &str) {
        use sqlx::ConnectOptions;
        match &self.pg_url {
            Some(url) => {
                let mut conn = pg_conn(url).await;
                sqlx::query("SET search_path TO identity")
                    .execute(&mut conn)
                    .await
                    .unwrap();
                sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
            None => {
                let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(self.data_dir().join("control.db"))
                    .busy_timeout(std::time::Duration::from_secs(10))
                    .connect()
                    .await
                    .unwrap();
                sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
        }
    }
}

/// Wait until `check` holds, polling every 20 ms, failing the test after 10 s.
pub async fn poll_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
