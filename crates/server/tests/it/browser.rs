//! The console and the portal in a real browser: chromedriver drives headless Chromium the way
//! a person would, with app.js running and the real CSP in force.
//!
//! - The first run: setup link → sign in → create a tenant → see it in the list and among the
//!   events.
//! - The invitation runbook: the owner creates a tenant and invites its admin from the toast; the
//!   admin sets a password from the emailed link (a real SMTP server, maildev), signs in on the
//!   tenant's host and invites a developer, who does the same in a browser of their own; the
//!   owner's events show it all.
//! - The impersonation runbook: with the RCM roles, the owner creates a tenant, switches to it
//!   through the confirmation modal (a reason), adds its first admin with a one-time password
//!   under Settings → Users, and stops; the admin signs in at the tenant's host in a browser of
//!   their own with the password (pasted with spaces around it), must change it, and lands on the
//!   portal; the owner's events for the tenant show the switch, the user and the stop, as them.
//!
//! Needs chromedriver and Chromium: `QUARTERDECK_TEST_CHROMEDRIVER` (default
//! /usr/bin/chromedriver) and `QUARTERDECK_TEST_CHROMIUM` (default /usr/bin/chromium). Without
//! them the tests fail, saying so, unless `QUARTERDECK_TEST_SKIP_BROWSER=1`.
//!
//! Screenshots go to `target/screenshots/`: the tenant list (1280 and 390 px wide), the portal
//! (1280 px), the console's and the portal's invite forms (390 px, the whole form), the
//! "Switch to tenant" modal and the portal with the impersonation banner (1280 px), and the
//! one-time password page (390 px, the whole page).

use crate::helpers::{OWNER_EMAIL, OWNER_PASSWORD, TestApp, link_in};
use crate::maildev::Maildev;
use crate::{both, both_backends};
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
        browser
            .drive(|s| async move { walk(s.open().await, setup_link, label).await })
            .await;
    }
);

both_backends!(
    async fn the_invitation_runbook_walks_through_in_a_real_browser(backend) {
        // Arrange: a browser, a server whose email goes to maildev, and the owner.
        let steps = Steps::new(format!("{backend:?}").to_lowercase());
        let Some(browser) = Browser::start().await else {
            return;
        };
        let (app, maildev) = TestApp::spawn_with_mail(backend).await;
        app.core
            .bootstrap_owner(OWNER_EMAIL, OWNER_PASSWORD)
            .await
            .unwrap();
        steps.step("chromedriver, maildev and the server up; owner created");
        let runbook = Runbook {
            base_url: app.base_url.clone(),
            tenant_origin: format!("http://acme-corp.localhost:{}", app.port()),
            maildev: Arc::new(maildev),
            steps,
        };

        // Act and assert, step by step.
        browser
            .drive(|s| walk_the_runbook(s, runbook))
            .await;
    }
);

both_backends!(
    async fn the_impersonation_runbook_walks_through_in_a_real_browser(backend) {
        // Arrange: a browser, a server with the RCM roles (TENANT_ADMIN, …), and the owner.
        let steps = Steps::new(format!("{backend:?}").to_lowercase());
        let Some(browser) = Browser::start().await else {
            return;
        };
        let app = TestApp::spawn_with(backend, |s| {
            s.roles_file = Some(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/roles-rcm.toml"),
            );
        })
        .await;
        app.core
            .bootstrap_owner(OWNER_EMAIL, OWNER_PASSWORD)
            .await
            .unwrap();
        steps.step("chromedriver and the server (RCM roles) up; owner created");
        let run = Onboarding {
            base_url: app.base_url.clone(),
            tenant_origin: format!("http://{ACME_BH_SLUG}.localhost:{}", app.port()),
            now: app.clock_now(),
            steps,
        };

        // Act and assert, step by step.
        browser
            .drive(|s| walk_the_impersonation_runbook(s, run))
            .await;
    }
);

/// The whole first run, as a person would do it.
async fn walk(c: Client, setup_link: String, label: String) {
    let steps = Steps::new(label);
    let label = &steps.label;

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
    steps.step("owner created through the setup link");

    // Sign in.
    wait_for_text(&c, "h1", "Sign in").await;
    sign_in(&c, OWNER_EMAIL, OWNER_PASSWORD, "/").await;
    wait_for_text(&c, "main h1", "Dashboard").await;
    steps.step("signed in: dashboard");

    // Tenants → New Tenant → "Acme Corp".
    let url = create_acme_corp(&c).await;
    assert!(
        url.query().is_some_and(|q| q.starts_with("created=")),
        "creating should land on /tenants?created=…, got {url}"
    );
    // The toast goes away 7 s after the page loaded (`toast` loads it again if it is gone).
    toast(&c, "Tenant 'Acme Corp' created.").await;
    let table = find(&c, "main table.table tbody").await.text().await.unwrap();
    assert!(
        table.contains("Acme Corp"),
        "the tenant list should show the name: {table}"
    );
    assert!(
        table.contains("acme-corp"),
        "the tenant list should show the slug: {table}"
    );
    steps.step("tenant created: toast and list row");

    // Screenshots of the list, wide and narrow (looked at by people, not asserted).
    screenshot(&c, &format!("tenants-1280-{label}"), 1280, 900).await;
    screenshot(&c, &format!("tenants-390-{label}"), 390, 844).await;
    c.set_window_size(1280, 900).await.unwrap();
    steps.step("screenshots saved");

    // Events.
    click(&c, "nav.nav a[href='/audit']").await;
    wait_for_path(&c, "/audit").await;
    wait_for_text(&c, "main h1", "Events").await;
    wait_for_text(&c, "main table.table tbody", "TENANT_CREATED").await;
    steps.step("events list shows TENANT_CREATED");
}

// ---------- the invitation runbook ----------

const ADMIN_EMAIL: &str = "ada@acme.example";
const ADMIN_PASSWORD: &str = "a long and lovely passphrase";
const DEV_EMAIL: &str = "dev@acme.example";
const DEV_PASSWORD: &str = "another long passphrase";

/// What the runbook's walk needs from the test: where the server is, and the mailbox.
struct Runbook {
    base_url: String,
    /// `http://acme-corp.localhost:PORT`, the tenant's host (Chromium resolves *.localhost).
    tenant_origin: String,
    maildev: Arc<Maildev>,
    steps: Steps,
}

/// The runbook (runbook-invite-onboarding), as the three people would do it: the owner and the
/// admin in one browser (their cookies are host-only, so the console and the portal sessions
/// live side by side), the developer in a fresh one.
async fn walk_the_runbook(s: Sessions, run: Runbook) {
    let Runbook {
        base_url,
        tenant_origin,
        maildev,
        steps,
    } = run;
    let label = &steps.label;
    let c = s.open().await;
    steps.step("browser open");

    // The owner signs in on the base host.
    c.goto(&format!("{base_url}/login")).await.unwrap();
    wait_for_text(&c, "h1", "Sign in").await;
    sign_in(&c, OWNER_EMAIL, OWNER_PASSWORD, "/").await;
    wait_for_text(&c, "main h1", "Dashboard").await;
    steps.step("owner signed in: dashboard");

    // Step 1: the New Tenant form; the toast offers to invite the tenant's admin.
    let url = create_acme_corp(&c).await;
    let listed = Instant::now();
    let tenant_id =
        query_param(&url, "created").unwrap_or_else(|| panic!("creating should land on /tenants?created=…, got {url}"));
    // The toast's link, read with its text in one round trip and followed (a click could
    // come after the toast has removed itself, 7 s after the page loaded).
    let created = toast(&c, "Tenant 'Acme Corp' created.").await;
    assert_eq!(created.link.as_deref(), Some("Invite admin →"), "{created:?}");
    let href = created.href.clone().expect("the toast's link has an href");
    c.goto(&format!("{base_url}{href}")).await.unwrap();
    steps.step(&format!(
        "tenant created; followed the toast's Invite admin → {} ms after the list loaded",
        listed.elapsed().as_millis()
    ));

    // Step 3: the invite form arrives with the tenant selected and the admin role checked.
    let url = wait_for_path(&c, "/users/new").await;
    wait_for_text(&c, "main h1", "Invite user").await;
    assert_eq!(query_param(&url, "tenant_id").as_deref(), Some(&*tenant_id));
    assert_eq!(query_param(&url, "role").as_deref(), Some("admin"));
    assert_eq!(
        find(&c, "#tenant_id").await.prop("value").await.unwrap(),
        Some(tenant_id.clone()),
        "the new tenant should be selected"
    );
    assert_eq!(
        find(&c, "#tenant_id option:checked").await.text().await.unwrap(),
        "Acme Corp (acme-corp)"
    );
    assert_eq!(checked_roles(&c).await, ["admin"], "only admin is checked");
    type_into(&c, "#email", ADMIN_EMAIL).await;
    type_into(&c, "#name", "Ada").await;
    // Narrow, and tall enough for the whole form (the roles are below a phone's fold).
    screenshot(&c, &format!("invite-390-{label}"), 390, 1400).await;
    c.set_window_size(1280, 900).await.unwrap();
    click_button(&c, "Send Invitation").await;
    let url = wait_for_url(&c, "the invited user's page", |u| {
        u.path().starts_with(&format!("/tenants/{tenant_id}/users/"))
    })
    .await;
    let ada_id = url.path().rsplit('/').next().unwrap().to_owned();
    toast(&c, "Invitation sent.").await;
    wait_for_text(&c, "main h1", ADMIN_EMAIL).await;
    steps.step("admin invited from the prefilled form");

    // Step 4: the email arrives; its link opens the tenant's host; the admin sets a password.
    let link = emailed_link(&c, &maildev, ADMIN_EMAIL).await;
    assert!(
        link.starts_with(&format!("{tenant_origin}/register?token=")),
        "the link should be on the tenant's host: {link}"
    );
    steps.step("invitation email received by maildev");
    register(&c, &link, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    steps.step("admin set a password: /login?registered=true");

    // The admin signs in on the tenant's host and lands on the portal.
    sign_in(&c, ADMIN_EMAIL, ADMIN_PASSWORD, "/portal").await;
    wait_for_text(&c, "main h1", "Acme Corp").await;
    wait_for_text(&c, ".sidebar .me-email", ADMIN_EMAIL).await;
    screenshot(&c, &format!("portal-1280-{label}"), 1280, 900).await;
    steps.step("admin signed in on the tenant's host: /portal");

    // Step 5: Team → Invite → a developer.
    click(&c, "nav.nav a[href='/portal/team']").await;
    wait_for_path(&c, "/portal/team").await;
    wait_for_text(&c, "main h1", "Team").await;
    wait_for_text(&c, "main table.table tbody", ADMIN_EMAIL).await;
    click(&c, ".page-header a[href='/portal/team/invite']").await;
    wait_for_path(&c, "/portal/team/invite").await;
    wait_for_text(&c, "main h1", "Invite to Acme Corp").await;
    assert!(
        c.find_all(Locator::Css("input[name=roles][value=owner]"))
            .await
            .unwrap()
            .is_empty(),
        "the portal offers tenant roles only"
    );
    assert!(checked_roles(&c).await.is_empty(), "no role is checked yet");
    type_into(&c, "#email", DEV_EMAIL).await;
    click(&c, "input[name=roles][value=developer]").await;
    assert_eq!(checked_roles(&c).await, ["developer"]);
    screenshot(&c, &format!("portal-invite-390-{label}"), 390, 1100).await;
    c.set_window_size(1280, 900).await.unwrap();
    click_button(&c, "Send Invitation").await;
    wait_for_url(&c, "the invited developer's page", |u| {
        u.path().starts_with("/portal/users/")
    })
    .await;
    toast(&c, "Invitation sent.").await;
    wait_for_text(&c, "main h1", DEV_EMAIL).await;
    steps.step("admin invited a developer from the portal");

    // The developer, in a browser of their own: the emailed link, a password, the portal.
    let link = emailed_link(&c, &maildev, DEV_EMAIL).await;
    let dev = s.open().await;
    register(&dev, &link, DEV_EMAIL, DEV_PASSWORD).await;
    sign_in(&dev, DEV_EMAIL, DEV_PASSWORD, "/portal").await;
    wait_for_text(&dev, "main h1", "Acme Corp").await;
    wait_for_text(&dev, ".sidebar .me-email", DEV_EMAIL).await;
    assert!(
        dev.find_all(Locator::Css("a[href='/portal/team/invite']"))
            .await
            .unwrap()
            .is_empty(),
        "a developer is not offered Invite"
    );
    steps.step("developer registered and signed in (second browser): /portal");

    // The owner's console, still signed in on the base host: Audit → Events.
    c.goto(&format!("{base_url}/")).await.unwrap();
    wait_for_text(&c, "main h1", "Dashboard").await;
    wait_for_text(&c, ".sidebar .me-email", OWNER_EMAIL).await;
    click(&c, "nav.nav a[href='/audit']").await;
    wait_for_path(&c, "/audit").await;
    wait_for_text(&c, "main h1", "Events").await;
    let rows = event_rows(&c).await;
    let count = |t: &str| rows.iter().filter(|r| r.event_type == t).count();
    let found = |t: &str, subject: &str| {
        rows.iter()
            .find(|r| r.event_type == t && r.subject == subject)
            .unwrap_or_else(|| panic!("no {t} event for {subject} among {rows:#?}"))
    };
    assert_eq!(count("TENANT_CREATED"), 1, "{rows:#?}");
    assert_eq!(count("USER_INVITED"), 2, "{rows:#?}");
    assert_eq!(count("USER_REGISTERED"), 2, "{rows:#?}");
    assert_eq!(found("USER_INVITED", ADMIN_EMAIL).actor, OWNER_EMAIL);
    assert_eq!(found("USER_INVITED", DEV_EMAIL).actor, ADMIN_EMAIL);
    found("USER_REGISTERED", ADMIN_EMAIL);
    found("USER_REGISTERED", DEV_EMAIL);
    steps.step("owner's events: TENANT_CREATED, USER_INVITED ×2, USER_REGISTERED ×2");

    // The admin's USER_INVITED, in detail: the runbook's payload.
    let href = found("USER_INVITED", ADMIN_EMAIL).href.clone();
    click(&c, &format!("main table.table a[href='{href}']")).await;
    wait_for_path(&c, &href).await;
    wait_for_text(&c, "main h1", "USER_INVITED").await;
    let json = find(&c, "main pre.json").await.text().await.unwrap();
    let details: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("the details should be JSON ({e}): {json}"));
    assert_eq!(details["user_id"], ada_id.as_str(), "{details:#}");
    assert_eq!(details["email"], ADMIN_EMAIL, "{details:#}");
    assert_eq!(details["tenant_id"], tenant_id.as_str(), "{details:#}");
    assert_eq!(details["roles"], serde_json::json!(["admin"]), "{details:#}");
    assert_eq!(details["status"], "INVITED", "{details:#}");
    assert_eq!(details["actor"]["email"], OWNER_EMAIL, "{details:#}");
    assert!(
        details["actor"]["user_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{details:#}"
    );
    steps.step("USER_INVITED detail: user_id, email, tenant_id, roles, status, actor");
}

// ---------- the impersonation runbook ----------

const ACME_BH: &str = "Acme Behavioral Health";
const ACME_BH_SLUG: &str = "acme-behavioral-health";
const REASON: &str = "Onboarding Acme's first admin (ticket 42)";
const IT_LEAD_EMAIL: &str = "it.lead@acme.example";
const IT_LEAD_NAME: &str = "Casey Customer";
const IT_LEAD_PASSWORD: &str = "the customer's own passphrase";

/// What the impersonation walk needs from the test.
struct Onboarding {
    base_url: String,
    /// `http://acme-behavioral-health.localhost:PORT`, the tenant's host.
    tenant_origin: String,
    /// The server's clock, which stands still: the time the banner shows.
    now: time::OffsetDateTime,
    steps: Steps,
}

/// The runbook (runbook-impersonation-onboarding), as the two people would do it: the owner in
/// one browser (console and, while impersonating, the tenant's portal), the tenant's new admin
/// in a fresh one.
async fn walk_the_impersonation_runbook(s: Sessions, run: Onboarding) {
    let Onboarding {
        base_url,
        tenant_origin,
        now,
        steps,
    } = run;
    let label = &steps.label;
    let tenant_host = format!("{ACME_BH_SLUG}.localhost");
    let c = s.open().await;
    steps.step("browser open");

    // The owner signs in on the base host and creates the tenant.
    c.goto(&format!("{base_url}/login")).await.unwrap();
    wait_for_text(&c, "h1", "Sign in").await;
    sign_in(&c, OWNER_EMAIL, OWNER_PASSWORD, "/").await;
    wait_for_text(&c, "main h1", "Dashboard").await;
    steps.step("owner signed in: dashboard");
    let url = create_tenant(&c, ACME_BH, ACME_BH_SLUG).await;
    let tenant_id =
        query_param(&url, "created").unwrap_or_else(|| panic!("creating should land on /tenants?created=…, got {url}"));
    toast(&c, &format!("Tenant '{ACME_BH}' created.")).await;
    steps.step("tenant created: /tenants?created=…");

    // Step 1: the row's "Switch to tenant" opens the confirmation modal; a reason; confirm.
    let dialog = format!("dialog#impersonate-{tenant_id}");
    let switch = find(
        &c,
        &format!("main table.table tbody button[data-confirm-dialog='impersonate-{tenant_id}']"),
    )
    .await;
    assert_eq!(switch.text().await.unwrap(), "Switch to tenant");
    switch.click().await.unwrap();
    poll(&c, &format!("{dialog} to open"), || async {
        let el = c.find(Locator::Css(&dialog)).await.ok()?;
        el.prop("open").await.ok().flatten().filter(|v| v == "true").map(|_| ())
    })
    .await;
    wait_for_text(&c, &format!("{dialog} h2"), &format!("Switch to {ACME_BH}?")).await;
    wait_for_text(&c, &dialog, "Every action will be audited under your platform user id").await;
    type_into(&c, &format!("{dialog} input[name=reason]"), REASON).await;
    screenshot(&c, &format!("impersonate-modal-1280-{label}"), 1280, 900).await;
    let url = submit_to_another_host(
        &c,
        &format!("{dialog} button[type=submit]"),
        "the tenant's portal",
        |u| u.host_str() == Some(tenant_host.as_str()) && u.path() == "/portal",
    )
    .await;
    assert_eq!(url.as_str(), format!("{tenant_origin}/portal"));
    steps.step("switched to the tenant through the modal: the tenant's /portal");

    // The banner: who, since when, and the way out.
    wait_for_text(&c, "main h1", ACME_BH).await;
    let banner = find(&c, "main .impersonation-banner").await.text().await.unwrap();
    assert!(
        banner.starts_with("Impersonating.")
            && banner.contains(&format!("You are {OWNER_EMAIL}, acting inside {ACME_BH} since ")),
        "the banner should say who and where: {banner}"
    );
    let since = banner
        .split(" since ")
        .nth(1)
        .and_then(|rest| rest.get(..23))
        .and_then(|t| {
            time::PrimitiveDateTime::parse(
                t,
                time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC"),
            )
            .ok()
        })
        .unwrap_or_else(|| panic!("the banner should say since when: {banner}"))
        .assume_utc();
    assert_eq!(since, now.replace_nanosecond(0).unwrap(), "since when: {banner}");
    assert_eq!(
        find(&c, "main .impersonation-banner button[type=submit]")
            .await
            .text()
            .await
            .unwrap(),
        "Stop impersonating"
    );
    screenshot(&c, &format!("impersonating-portal-1280-{label}"), 1280, 900).await;
    steps.step("banner: who, since when, Stop impersonating");

    // Step 2: Settings → Users → Add user: TENANT_ADMIN, the forced change left checked.
    click(&c, "nav.nav a[href='/portal/settings/users']").await;
    wait_for_path(&c, "/portal/settings/users").await;
    wait_for_text(&c, "main h1", "Users").await;
    wait_for_text(&c, "main .impersonation-banner", "Stop impersonating").await;
    click(&c, ".page-header a[href='/portal/settings/users/new']").await;
    wait_for_path(&c, "/portal/settings/users/new").await;
    wait_for_text(&c, "main h1", "Add user").await;
    type_into(&c, "#email", IT_LEAD_EMAIL).await;
    type_into(&c, "#name", IT_LEAD_NAME).await;
    let role = find(&c, "#role").await;
    role.select_by_value("TENANT_ADMIN").await.unwrap();
    assert_eq!(role.prop("value").await.unwrap().as_deref(), Some("TENANT_ADMIN"));
    assert!(
        find(&c, "input[name=force_change]").await.is_selected().await.unwrap(),
        "the forced change is checked by default"
    );
    click_button(&c, "Add user").await;
    wait_for_text(&c, "main h1", "User added").await;
    wait_for_text(&c, "main .page-header", IT_LEAD_EMAIL).await;
    wait_for_text(
        &c,
        "main .card .alert-warning",
        "This is the only time this password is shown",
    )
    .await;
    // Read once, as the runbook says: from the page.
    let otp = find(&c, "#one-time-password").await.text().await.unwrap();
    assert!(
        otp.len() >= 16 && !otp.contains(char::is_whitespace),
        "a one-time password: {otp:?}"
    );
    // Tall enough for the whole page (the banner takes room on a phone).
    screenshot(&c, &format!("one-time-password-390-{label}"), 390, 1000).await;
    c.set_window_size(1280, 900).await.unwrap();
    // The Copy button (app.js) copies it and says so.
    click(&c, "main button[data-copy='one-time-password']").await;
    wait_for_text(&c, "main button[data-copy='one-time-password']", "Copied").await;
    steps.step("TENANT_ADMIN added; the one-time password read from the page; Copy says Copied");

    // Shown once: not on the users page (nor anywhere in its HTML) afterwards.
    click(&c, "nav.nav a[href='/portal/settings/users']").await;
    wait_for_path(&c, "/portal/settings/users").await;
    wait_for_text(&c, "main h1", "Users").await;
    wait_for_text(&c, "main table.table tbody", IT_LEAD_EMAIL).await;
    wait_for_text(&c, "main table.table tbody", "TENANT_ADMIN").await;
    assert!(
        !c.source().await.unwrap().contains(&otp),
        "the one-time password is shown once"
    );
    steps.step("Settings → Users again: the user listed, the password gone");

    // Step 4: Stop impersonating → the tenant's page in the console, on the base host.
    let back = format!("/tenants/{tenant_id}");
    let url = submit_to_another_host(
        &c,
        "main .impersonation-banner button[type=submit]",
        "the tenant's page in the console",
        |u| u.host_str() == Some("localhost") && u.path() == back,
    )
    .await;
    assert_eq!(url.as_str(), format!("{base_url}{back}"));
    wait_for_text(&c, "main h1", ACME_BH).await;
    wait_for_text(&c, ".sidebar .me-email", OWNER_EMAIL).await;
    steps.step("stopped: back on the tenant's page in the console");

    // The impersonation session is gone from the tenant's host.
    c.goto(&format!("{tenant_origin}/portal")).await.unwrap();
    let url = wait_for_path(&c, "/login").await;
    assert_eq!(url.host_str(), Some(tenant_host.as_str()), "{url}");
    steps.step("the tenant's /portal now asks to sign in");

    // Step 3: the new admin, in a browser of their own, pastes the password with spaces around
    // it (the runbook's troubleshooting case), must choose their own, and lands on the portal.
    let admin = s.open().await;
    steps.step("second browser open");
    admin.goto(&format!("{tenant_origin}/login")).await.unwrap();
    wait_for_text(&admin, "main h1", &format!("Sign in to {ACME_BH}")).await;
    sign_in(&admin, IT_LEAD_EMAIL, &format!(" {otp} "), "/portal/password").await;
    wait_for_text(&admin, "main h1", "Choose a new password").await;
    wait_for_text(&admin, ".auth-card p", IT_LEAD_EMAIL).await;
    for path in ["/portal", "/portal/settings/users", "/portal/team"] {
        admin.goto(&format!("{tenant_origin}{path}")).await.unwrap();
        let url = admin.current_url().await.unwrap();
        assert_eq!(
            url.as_str(),
            format!("{tenant_origin}/portal/password"),
            "{path} should send them to change the password first"
        );
    }
    wait_for_text(&admin, "main h1", "Choose a new password").await;
    steps.step("signed in with the one-time password (second browser): /portal/password");
    type_into(&admin, "#new_password", IT_LEAD_PASSWORD).await;
    type_into(&admin, "#confirm", IT_LEAD_PASSWORD).await;
    click_button(&admin, "Set password").await;
    let url = wait_for_path(&admin, "/portal").await;
    assert_eq!(url.host_str(), Some(tenant_host.as_str()), "{url}");
    wait_for_text(&admin, "main h1", ACME_BH).await;
    wait_for_text(&admin, ".sidebar .me-email", IT_LEAD_EMAIL).await;
    assert!(
        admin
            .find_all(Locator::Css(".impersonation-banner"))
            .await
            .unwrap()
            .is_empty(),
        "the tenant's own admin sees no impersonation banner"
    );
    steps.step("new password set: /portal");

    // Step 5: the owner's console: Audit → Events, filtered by the tenant.
    c.goto(&format!("{base_url}/")).await.unwrap();
    wait_for_text(&c, "main h1", "Dashboard").await;
    click(&c, "nav.nav a[href='/audit']").await;
    wait_for_path(&c, "/audit").await;
    wait_for_text(&c, "main h1", "Events").await;
    type_into(&c, "#f-tenant", ACME_BH_SLUG).await;
    click(&c, "form.filters button[type=submit]").await;
    wait_for_url(&c, "the events filtered by the tenant", |u| {
        u.path() == "/audit" && query_param(u, "tenant").as_deref() == Some(ACME_BH_SLUG)
    })
    .await;
    let rows = event_rows(&c).await;
    eprintln!("[browser {label}] the tenant's events, newest first:");
    for r in &rows {
        eprintln!("    {:<24} {:<20} {}", r.event_type, r.actor, r.subject);
    }
    assert!(
        rows.iter().all(|r| r.tenant == tenant_id),
        "only the tenant's events: {rows:#?}"
    );
    let at = |t: &str| {
        let mut found = rows.iter().enumerate().filter(|(_, r)| r.event_type == t);
        let (i, row) = found.next().unwrap_or_else(|| panic!("no {t} among {rows:#?}"));
        assert!(found.next().is_none(), "one {t}: {rows:#?}");
        assert_eq!(row.actor, OWNER_EMAIL, "{t} is the owner's: {rows:#?}");
        (i, row)
    };
    let (ended, _) = at("IMPERSONATION_ENDED");
    let (created, user_created) = at("USER_CREATED");
    let (started, _) = at("IMPERSONATION_STARTED");
    assert!(
        ended < created && created < started,
        "newest first: started, created, ended: {rows:#?}"
    );
    assert_eq!(user_created.subject, IT_LEAD_EMAIL, "{rows:#?}");
    assert!(
        !c.source().await.unwrap().contains(&otp),
        "the one-time password is in no event"
    );
    steps.step("owner's events for the tenant: IMPERSONATION_STARTED, USER_CREATED, IMPERSONATION_ENDED");
}

// ---------- steps the walks share ----------

/// Tenants → New Tenant → "Acme Corp" (slug derived by app.js) with the default region and tier;
/// returns the URL it lands on (`/tenants?created=…`).
async fn create_acme_corp(c: &Client) -> url::Url {
    create_tenant(c, "Acme Corp", "acme-corp").await
}

/// Tenants → New Tenant → `name`, checking that app.js derives `slug` from it; default region
/// and tier. Returns the URL it lands on (`/tenants?created=…`).
async fn create_tenant(c: &Client, name: &str, slug: &str) -> url::Url {
    click(c, "nav.nav a[href='/tenants']").await;
    wait_for_path(c, "/tenants").await;
    wait_for_text(c, "main h1", "Tenants").await;
    click(c, ".page-header a[href='/tenants/new']").await;
    wait_for_path(c, "/tenants/new").await;
    wait_for_text(c, "main h1", "New Tenant").await;
    type_into(c, "#name", name).await;
    wait_for_value(c, "#slug", slug).await;
    click(c, "form[action='/tenants'] button[type=submit]").await;
    wait_for_path(c, "/tenants").await
}

/// Fill the sign-in form on the current page and wait to land on `landing`.
pub(crate) async fn sign_in(c: &Client, email: &str, password: &str, landing: &str) {
    type_into(c, "#email", email).await;
    type_into(c, "#password", password).await;
    click(c, "form[action='/login'] button[type=submit]").await;
    wait_for_path(c, landing).await;
}

/// Open an emailed invitation link, set the password, and land on the tenant host's
/// `/login?registered=true` with its notice.
async fn register(c: &Client, link: &str, email: &str, password: &str) {
    c.goto(link).await.unwrap();
    wait_for_text(c, "main h1", "Set your password").await;
    let intro = find(c, ".auth-card p").await.text().await.unwrap();
    assert!(
        intro.contains("Acme Corp") && intro.contains(email),
        "the page should say to which organisation, as whom: {intro}"
    );
    type_into(c, "#password", password).await;
    type_into(c, "#confirm", password).await;
    click_button(c, "Set password").await;
    let url = wait_for_path(c, "/login").await;
    assert_eq!(url.query(), Some("registered=true"), "{url}");
    assert_eq!(url.host_str(), Some("acme-corp.localhost"), "{url}");
    wait_for_text(c, ".alert-success", "Your password is set.").await;
    wait_for_text(c, "main h1", "Sign in to Acme Corp").await;
}

/// The `/register?token=…` link in the text body of the first email maildev received for `to`.
async fn emailed_link(c: &Client, maildev: &Maildev, to: &str) -> String {
    let text = poll(c, &format!("an email to {to} in maildev"), || async {
        maildev.emails().await.into_iter().find_map(|m| {
            let to_them = m["to"].as_array().is_some_and(|a| a.iter().any(|t| t["address"] == to));
            to_them.then(|| m["text"].as_str().unwrap_or_default().to_owned())
        })
    })
    .await;
    link_in(&text)
}

/// The values of the checked `roles` checkboxes.
async fn checked_roles(c: &Client) -> Vec<String> {
    let mut values = Vec::new();
    for el in c.find_all(Locator::Css("input[name=roles]:checked")).await.unwrap() {
        values.push(el.attr("value").await.unwrap().unwrap_or_default());
    }
    values
}

/// A row of the events table.
#[derive(Debug)]
struct EventRow {
    event_type: String,
    href: String,
    actor: String,
    tenant: String,
    subject: String,
}

async fn event_rows(c: &Client) -> Vec<EventRow> {
    find(c, "main table.table tbody tr").await;
    let mut rows = Vec::new();
    for tr in c.find_all(Locator::Css("main table.table tbody tr")).await.unwrap() {
        let mut cells = Vec::new();
        for td in tr.find_all(Locator::Css("td")).await.unwrap() {
            cells.push(td.text().await.unwrap().trim().to_owned());
        }
        let link = tr.find(Locator::Css("td:nth-child(2) a")).await.unwrap();
        rows.push(EventRow {
            event_type: cells[1].clone(),
            href: link.attr("href").await.unwrap().unwrap_or_default(),
            actor: cells[2].clone(),
            tenant: cells[3].clone(),
            subject: cells[4].clone(),
        });
    }
    rows
}

fn query_param(url: &url::Url, name: &str) -> Option<String> {
    url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// Prints how far into the walk each step finished.
struct Steps {
    label: String,
    started: Instant,
}

impl Steps {
    fn new(label: String) -> Self {
        Self {
            label,
            started: Instant::now(),
        }
    }

    fn step(&self, name: &str) {
        eprintln!(
            "[browser {}] {:>6} ms  {name}",
            self.label,
            self.started.elapsed().as_millis()
        );
    }
}

// ---------- the browser ----------

/// chromedriver (in its own process group, so Chromium goes with it) and a fresh profile.
/// Dropping it kills them all, also when the test panics.
pub(crate) struct Browser {
    driver: Child,
    url: String,
    chromium: String,
    dir: tempfile::TempDir,
}

impl Browser {
    /// `None` when browser tests are skipped; panics when the browser cannot be found or started.
    pub(crate) async fn start() -> Option<Self> {
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

    /// Run `walk`, which opens as many sessions as it needs; then close them all and pass on
    /// any panic.
    pub(crate) async fn drive<F, Fut>(&self, walk: F)
    where
        F: FnOnce(Sessions) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let sessions = Sessions {
            url: self.url.clone(),
            chromium: self.chromium.clone(),
            dir: self.dir.path().to_owned(),
            opened: Arc::default(),
            count: Arc::default(),
        };
        // Run the walk as a task so that a failed assertion still lets the sessions close.
        let outcome = tokio::spawn(walk(sessions.clone())).await;
        let opened = std::mem::take(&mut *sessions.opened.lock().unwrap());
        for client in opened {
            let _ = client.close().await;
        }
        if let Err(e) = outcome {
            match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(e) => panic!("the browser walk did not finish: {e}"),
            }
        }
    }
}

/// Opens WebDriver sessions for a walk, each a fresh Chromium with a profile (cookies) of its
/// own; `Browser::drive` closes them.
#[derive(Clone)]
pub(crate) struct Sessions {
    url: String,
    chromium: String,
    dir: PathBuf,
    opened: Arc<Mutex<Vec<Client>>>,
    count: Arc<AtomicUsize>,
}

impl Sessions {
    pub(crate) async fn open(&self) -> Client {
        let n = self.count.fetch_add(1, Ordering::Relaxed);
        let profile = self.dir.join(format!("profile-{n}"));
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
            .unwrap_or_else(|e| panic!("cannot open a WebDriver session with {} ({e})", self.chromium));
        self.opened.lock().unwrap().push(client.clone());
        client
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

// ---------- steps and waits ----------

/// Poll `check` until it gives a value or `WAIT` runs out; then panic with `what` and the page.
pub(crate) async fn poll<T, F, Fut>(c: &Client, what: &str, mut check: F) -> T
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

pub(crate) async fn find(c: &Client, css: &str) -> Element {
    poll(c, &format!("element {css}"), || async {
        c.find(Locator::Css(css)).await.ok()
    })
    .await
}

/// A toast's link (`#toasts .toast a`): its text and href.
#[derive(Debug)]
pub(crate) struct Toast {
    pub link: Option<String>,
    pub href: Option<String>,
}

/// The toast, its link and the page's age (ms since it began loading), in one round trip.
const TOAST_JS: &str = r#"
var t = document.querySelector('#toasts .toast');
var a = t ? t.querySelector('a') : null;
return {
  text: t ? t.textContent : null,
  link: a ? a.textContent : null,
  href: a ? a.getAttribute('href') : null,
  age: performance.now()
};
"#;

/// Wait until the toast says `text`; returns its link. A toast removes itself 7 s after its page
/// loaded: on a loaded machine the test may come to it later than that. Then (no toast, and the
/// page older than 7 s) the page, whose notice is in its URL, is loaded again and read at once.
pub(crate) async fn toast(c: &Client, text: &str) -> Toast {
    poll(c, &format!("a toast saying {text:?}"), || async {
        let v = c.execute(TOAST_JS, vec![]).await.ok()?;
        let field = |k: &str| v[k].as_str().map(|s| s.trim().to_owned());
        match field("text") {
            Some(t) if t.contains(text) => Some(Toast {
                link: field("link"),
                href: field("href"),
            }),
            None if v["age"].as_f64().is_some_and(|ms| ms >= 7000.0) => {
                let _ = c.refresh().await;
                None
            }
            _ => None,
        }
    })
    .await
}

/// Wait until the first `css` element's text contains `text`.
pub(crate) async fn wait_for_text(c: &Client, css: &str, text: &str) {
    poll(c, &format!("{css} to contain {text:?}"), || async {
        let el = c.find(Locator::Css(css)).await.ok()?;
        el.text().await.ok().filter(|t| t.contains(text)).map(|_| ())
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
pub(crate) async fn wait_for_path(c: &Client, path: &str) -> url::Url {
    wait_for_url(c, &format!("the path {path}"), |u| u.path() == path).await
}

/// Wait until the page's URL passes `ok`; returns it.
async fn wait_for_url(c: &Client, what: &str, ok: impl Fn(&url::Url) -> bool) -> url::Url {
    poll(c, what, || async { c.current_url().await.ok().filter(|u| ok(u)) }).await
}

/// Click `css`, a submit button whose form redirects to another host, and wait until the URL
/// passes `ok`; returns it. Fails at once, naming the directive, when the page's
/// Content-Security-Policy stops the navigation (browsers apply `form-action` to the redirects
/// that follow a submission too), rather than timing out on the page that stayed.
async fn submit_to_another_host(c: &Client, css: &str, what: &str, ok: impl Fn(&url::Url) -> bool) -> url::Url {
    c.execute(CSP_WATCH_JS, vec![]).await.unwrap();
    let before = c.current_url().await.unwrap();
    click(c, css).await;
    poll(c, what, || async {
        let url = c.current_url().await.ok()?;
        if ok(&url) {
            return Some(url);
        }
        // The listener lives in the page that was submitted: once another page is loaded,
        // there is nothing to read.
        if url == before
            && let Ok(found) = c.execute("return window.__qdCspViolations || [];", vec![]).await
            && let Some(found) = found.as_array().filter(|a| !a.is_empty())
        {
            panic!(
                "the browser refused to go on to {what}: the page's Content-Security-Policy blocked \
                 the navigation after submitting {css}\nat {url}\nviolations: {found:?}"
            );
        }
        None
    })
    .await
}

/// Records the page's CSP violations (directive and blocked URL) in `window.__qdCspViolations`.
const CSP_WATCH_JS: &str = r#"
window.__qdCspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__qdCspViolations.push(e.effectiveDirective + " blocked " + e.blockedURI + " (policy: " + e.originalPolicy + ")");
});
"#;

pub(crate) async fn type_into(c: &Client, css: &str, text: &str) {
    find(c, css).await.send_keys(text).await.unwrap();
}

pub(crate) async fn click(c: &Client, css: &str) {
    find(c, css).await.click().await.unwrap();
}

/// Click the button in `main` whose text is `label`, as a person would find it.
async fn click_button(c: &Client, label: &str) {
    let xpath = format!("//main//button[normalize-space()='{label}']");
    let button = poll(c, &format!("a button {label:?}"), || async {
        c.find(Locator::XPath(&xpath)).await.ok()
    })
    .await;
    button.click().await.unwrap();
}

/// Resize the window to `width`×`height`, save a PNG of the viewport as `name`.png, and print
/// what a person should look at: the page being wider than the window, and what sticks out.
pub(crate) async fn screenshot(c: &Client, name: &str, width: u32, height: u32) {
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
/// (not counting fixed ones, or ones inside a scrolling or clipping box; an absolutely positioned
/// element is only clipped by boxes at or above its containing block, so one that escapes a
/// scrolling table, like a visually hidden label in a header cell, is counted).
const LAYOUT_JS: &str = r##"
const d = document.documentElement, cw = d.clientWidth;
const inBox = (e) => {
  const from = getComputedStyle(e).position === "absolute" ? e.offsetParent : e.parentElement;
  for (let p = from; p && p !== d && p !== document.body; p = p.parentElement) {
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
