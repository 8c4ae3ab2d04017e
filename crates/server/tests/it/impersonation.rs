//! Onboarding by impersonation (runbook-impersonation-onboarding): switch to the tenant, add
//! its first admin with a one-time password, stop; the customer signs in and must change it.

use crate::helpers::*;
use crate::{both, both_backends};

const REASON: &str = "Onboarding Acme's first admin (ticket 42)";

fn rcm(s: &mut quarterdeck::Settings) {
    s.roles_file = Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/roles-rcm.toml"));
}

/// Start impersonating `tid` from the console; returns the tenant-host browser, signed in.
pub(crate) async fn switch_to(app: &TestApp, tid: &str, slug: &str) -> TenantClient {
    let page = app.get_html(&format!("/tenants/{tid}")).await;
    assert!(
        page.contains("Every action will be audited under your platform user id")
            || page.contains("audited under your platform user id")
    );
    let r = app
        .post_form(&format!("/tenants/{tid}/impersonate"), &page, &[("reason", REASON)])
        .await;
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
    let handoff = location(&r);
    assert!(
        handoff.starts_with(&format!(
            "http://{slug}.localhost:{}/impersonate?token=qd_imp_",
            app.port()
        )),
        "{handoff}"
    );
    let tenant = app.tenant_client(slug);
    let r = tenant.get(&handoff[handoff.find("/impersonate").unwrap()..]).await;
    assert_eq!(r.status(), 303);
    assert_eq!(location(&r), "/portal");
    tenant
}

/// Add a user through Settings → Users; returns the one-time password shown.
async fn add_user(tenant: &TenantClient, email: &str, role: &str, force: bool) -> String {
    let form = tenant.get_html("/portal/settings/users/new").await;
    let mut fields = vec![("email", email), ("name", "Casey Customer"), ("role", role)];
    if force {
        fields.push(("force_change", "on"));
    }
    let r = tenant.post_form("/portal/settings/users/new", &form, &fields).await;
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    assert!(page.contains("This is the only time this password is shown"));
    otp_in(&page)
}

fn otp_in(page: &str) -> String {
    page.split("id=\"one-time-password\">")
        .nth(1)
        .unwrap()
        .split('<')
        .next()
        .unwrap()
        .to_owned()
}

both_backends!(
    async fn the_impersonation_runbook_holds_with_its_validation_table(backend) {
        let app = TestApp::spawn_with(backend, rcm).await;
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme Behavioral Health", "acme").await;

        // 1. Switch to tenant (the modal asks for a reason); a banner on every page.
        let list = app.get_html("/tenants").await;
        assert!(list.contains("Switch to tenant"));
        let imp = switch_to(&app, &tid, "acme").await;
        let portal = imp.get_html("/portal").await;
        assert!(portal.contains("Impersonating.") && portal.contains(OWNER_EMAIL) && portal.contains("Stop impersonating"));

        // 2. Settings → Users → Add user: TENANT_ADMIN, forced change; the password once.
        let users = imp.get_html("/portal/settings/users").await;
        assert!(users.contains("Stop impersonating"));
        let form = imp.get_html("/portal/settings/users/new").await;
        assert!(form.contains("value=\"TENANT_ADMIN\" selected"), "the admin role is preselected");
        assert!(form.contains("name=\"force_change\" value=\"on\" checked"));
        let otp = add_user(&imp, "it.lead@acme.example", "TENANT_ADMIN", true).await;
        assert!(otp.len() >= 16 && !otp.contains(char::is_whitespace));
        let later = imp.get_html("/portal/settings/users").await;
        assert!(!later.contains(&otp), "never shown again");

        // 4. Stop impersonating: back to the tenant's page in the console.
        let r = imp.post_form("/impersonation/stop", &later, &[]).await;
        assert_eq!(r.status(), 303);
        assert_eq!(location(&r), format!("http://localhost:{}/tenants/{tid}", app.port()));
        assert_eq!(imp.get("/portal").await.status(), 303, "the impersonation session is gone");
        assert_eq!(app.get(&format!("/tenants/{tid}")).await.status(), 200);

        // 3. The customer signs in at the tenant's host (whitespace pasted around the password
        //    is ignored), must change the password, then lands on /portal.
        let customer = app.tenant_client("acme");
        let r = customer.sign_in("it.lead@acme.example", &format!("  {otp}\n")).await;
        assert_eq!(r.status(), 303);
        assert_eq!(customer.get("/portal").await.status(), 303);
        assert_eq!(location(&customer.get("/portal/team").await), "/portal/password");
        let team = customer.get_html("/portal/password").await;
        let r = customer.post_form("/portal/team/invite", &team, &[("email", "x@acme.example"), ("roles", "READONLY")]).await;
        assert_eq!(r.status(), 403);
        assert!(r.text().await.unwrap().contains("Change your password first"));
        let r = customer.post_form("/portal/password", &team, &[("new_password", "the customer's own passphrase"), ("confirm", "the customer's own passphrase")]).await;
        assert_eq!(r.status(), 303);
        assert_eq!(location(&r), "/portal");
        assert_eq!(customer.get("/portal").await.status(), 200);
        assert_eq!(app.events_of("PASSWORD_CHANGED").await.len(), 1);

        // Validation table.
        let dir = quarterdeck_domain::user::Directory::Tenant(tid.parse().unwrap());
        let tenant_users = app.core.store().list_users(dir).await.unwrap();
        assert_eq!(tenant_users.len(), 1, "security.app_user count is 1");
        assert_eq!(tenant_users[0].roles, vec!["TENANT_ADMIN".to_owned()]);
        let base = app.tenant_client("acme");
        assert_eq!(base.sign_in("it.lead@acme.example", "the customer's own passphrase").await.status(), 303, "login at the tenant host succeeds");
        let c = client();
        let login = c.get(app.url("/login")).send().await.unwrap().text().await.unwrap();
        let r = c
            .post(app.url("/login"))
            .form(&[("csrf_token", csrf_token(&login).as_str()), ("email", "it.lead@acme.example"), ("password", "the customer's own passphrase")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "not at the bare host");
        assert!(r.text().await.unwrap().contains("organisation"));

        // 5. The audit trail, master side: started, the user creation, ended, in order.
        let mut tenant_events: Vec<_> = app
            .core
            .store()
            .list_events(&quarterdeck_domain::audit::AuditFilter { tenant_id: Some(tid.parse().unwrap()), limit: 100, ..Default::default() })
            .await
            .unwrap();
        tenant_events.reverse();
        let types: Vec<&str> = tenant_events.iter().map(|e| e.event_type.as_str()).collect();
        let pos = |t: &str| types.iter().position(|x| *x == t).unwrap_or_else(|| panic!("{t} in {types:?}"));
        assert!(pos("IMPERSONATION_STARTED") < pos("USER_CREATED") && pos("USER_CREATED") < pos("IMPERSONATION_ENDED"), "{types:?}");
        let created = &tenant_events[pos("USER_CREATED")];
        assert_eq!(created.actor_email.as_deref(), Some(OWNER_EMAIL), "attributed to the platform user");
        let started = &tenant_events[pos("IMPERSONATION_STARTED")];
        assert_eq!(created.details["impersonation_id"], started.details["impersonation_id"]);
        assert_eq!(started.details["reason"], REASON);
        assert_eq!(tenant_events[pos("IMPERSONATION_ENDED")].details["reason"], "stopped");
        // The one-time password is in no event.
        assert!(tenant_events.iter().all(|e| !e.details.to_string().contains(&otp)));
        // Tenant side: the tenant's admin sees it in the portal's audit page.
        let audit = base.get_html("/portal/audit").await;
        assert!(audit.contains("IMPERSONATION_STARTED") && audit.contains("USER_CREATED") && audit.contains(OWNER_EMAIL));

        if let Some(url) = &app.pg_url {
            // The runbook's own SQL, verbatim but for the tenant id.
            let sql = "SELECT event_type, ts, details\nFROM identity.tenant_audit\nWHERE tenant_id = '<acme tenant_id>' AND ts > now() - interval '1 hour'\nORDER BY ts;"
                .replace("<acme tenant_id>", &tid);
            let mut conn = pg_conn(url).await;
            let rows: Vec<(String, time::OffsetDateTime, serde_json::Value)> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(&mut conn).await.unwrap();
            let seen: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
            let at = |t: &str| seen.iter().position(|x| *x == t).unwrap_or_else(|| panic!("{t} in {seen:?}"));
            assert!(at("IMPERSONATION_STARTED") < at("USER_CREATED") && at("USER_CREATED") < at("IMPERSONATION_ENDED"));
            // And the tenant database's own tables.
            let control: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&mut conn).await.unwrap();
            let mut t_url = url::Url::parse(url).unwrap();
            t_url.set_path(&format!("/{control}_t_{}", tid.replace('-', "")));
            let mut tconn = pg_conn(t_url.as_str()).await;
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM security.app_user").fetch_one(&mut tconn).await.unwrap();
            assert_eq!(n, 1);
            let role: String = sqlx::query_scalar("SELECT r.role FROM security.user_role r JOIN security.app_user u ON u.id = r.user_id WHERE u.email = 'it.lead@acme.example'")
                .fetch_one(&mut tconn)
                .await
                .unwrap();
            assert_eq!(role, "TENANT_ADMIN");
        }
    }
);

both!(
    async fn only_the_owner_may_switch_to_a_tenant(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let page = app.get_html(&format!("/tenants/{tid}")).await;
        let dash = app.get_html("/").await;
        app.post_form("/logout", &dash, &[]).await;
        for role in ["policy-admin", "billing-admin"] {
            let email = format!("{role}@example.com");
            let user = quarterdeck_domain::user::User {
                id: quarterdeck_domain::UserId::new(),
                email: quarterdeck_domain::EmailAddress::parse(&email).unwrap(),
                name: None,
                status: quarterdeck_domain::user::UserStatus::Active,
                roles: vec![role.to_owned()],
                tenant_id: None,
                created_at: app.clock_now(),
            };
            let pw = quarterdeck_domain::password::NewPassword::parse(OWNER_PASSWORD, 12, "p").unwrap();
            let hash = app.core.hasher.hash(&pw, &*app.core.rng).await.unwrap();
            let ev = quarterdeck_domain::audit::NewEvent::new(app.clock_now(), quarterdeck_domain::audit::EventType::OwnerCreated, &quarterdeck_domain::access::Actor::system(), None, serde_json::json!({}));
            app.core.store().create_user(&user, Some(&quarterdeck_domain::user::Credential::password(hash)), None, ev).await.unwrap();
            app.sign_in(&email, OWNER_PASSWORD).await;
            let shown = app.get_html(&format!("/tenants/{tid}")).await;
            assert!(!shown.contains("Switch to tenant"), "{role}");
            let r = app.post_form(&format!("/tenants/{tid}/impersonate"), &shown, &[("reason", REASON)]).await;
            assert_eq!(r.status(), 403, "{role}");
            let dash = app.get_html("/").await;
            app.post_form("/logout", &dash, &[]).await;
        }
        let _ = page;
        assert!(app.events_of("IMPERSONATION_STARTED").await.is_empty());
    }
);

both!(
    async fn a_reason_is_required_and_a_handoff_link_works_once_on_its_own_host(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        app.create_tenant("Globex", "globex").await;
        let page = app.get_html(&format!("/tenants/{tid}")).await;
        let r = app.post_form(&format!("/tenants/{tid}/impersonate"), &page, &[("reason", "  ")]).await;
        assert_eq!(r.status(), 422);
        let r = app.post_form(&format!("/tenants/{tid}/impersonate"), &page, &[("reason", REASON)]).await;
        let handoff = location(&r);
        let path = &handoff[handoff.find("/impersonate").unwrap()..];
        assert_eq!(app.tenant_client("globex").get(path).await.status(), 410, "not on another tenant's host");
        assert_eq!(app.tenant_client("acme").get(path).await.status(), 410, "a refused attempt does not leave it usable elsewhere… nor twice");
    }
);

both!(
    async fn an_impersonation_session_cannot_start_another_or_reach_the_console_and_tenant_users_cannot_reach_it(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let imp = switch_to(&app, &tid, "acme").await;
        let portal = imp.get_html("/portal").await;
        let r = imp.post_form(&format!("/tenants/{tid}/impersonate"), &portal, &[("reason", REASON)]).await;
        assert_eq!(r.status(), 404, "the console does not exist on a tenant's host");
        assert_eq!(imp.get("/settings").await.status(), 404, "nor the impersonator's own settings");
        assert_eq!(app.events_of("IMPERSONATION_STARTED").await.len(), 1);
        // A tenant user cannot stop, start or take over anything.
        let otp = add_user(&imp, "ada@acme.example", "admin", false).await;
        let ada = app.tenant_client("acme");
        assert_eq!(ada.sign_in("ada@acme.example", &otp).await.status(), 303);
        let page = ada.get_html("/portal").await;
        assert!(!page.contains("Stop impersonating"));
        assert_eq!(ada.post_form("/impersonation/stop", &page, &[]).await.status(), 404);
        assert_eq!(app.events_of("IMPERSONATION_ENDED").await.len(), 0);
    }
);

both!(
    async fn writes_on_read_only_and_suspended_tenants_are_refused_for_impersonators_who_may_still_look(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        for (status, words) in [("read_only", "read-only"), ("suspended", "suspended")] {
            let page = app.get_html(&format!("/tenants/{tid}")).await;
            app.post_form(&format!("/tenants/{tid}/status"), &page, &[("status", status)]).await;
            let imp = switch_to(&app, &tid, "acme").await;
            assert_eq!(imp.get("/portal").await.status(), 200, "{status}: may look");
            let form = imp.get_html("/portal/settings/users/new").await;
            let r = imp.post_form("/portal/settings/users/new", &form, &[("email", "x@acme.example"), ("role", "admin"), ("force_change", "on")]).await;
            assert_eq!(r.status(), 403, "{status}");
            assert!(r.text().await.unwrap().contains(words), "{status}");
            imp.post_form("/impersonation/stop", &form, &[]).await;
        }
        assert!(app.events_of("USER_CREATED").await.is_empty());
        assert!(app.core.store().list_users(quarterdeck_domain::user::Directory::Tenant(tid.parse().unwrap())).await.unwrap().is_empty());
    }
);

both!(
    async fn a_one_time_password_works_once_and_not_after_it_expires(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let imp = switch_to(&app, &tid, "acme").await;
        let first = add_user(&imp, "a@acme.example", "admin", true).await;
        let second = add_user(&imp, "b@acme.example", "admin", true).await;

        let a = app.tenant_client("acme");
        assert_eq!(a.sign_in("a@acme.example", &first).await.status(), 303);
        let page = a.get_html("/portal/password").await;
        a.post_form("/logout", &page, &[]).await;
        assert_eq!(app.tenant_client("acme").sign_in("a@acme.example", &first).await.status(), 401, "once");

        app.clock.advance(time::Duration::hours(72) + time::Duration::seconds(1));
        assert_eq!(app.tenant_client("acme").sign_in("b@acme.example", &second).await.status(), 401, "expired");
    }
);

both!(
    async fn reset_password_kills_the_old_password_and_sessions_and_shows_a_new_one_once(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let imp = switch_to(&app, &tid, "acme").await;
        let otp = add_user(&imp, "a@acme.example", "admin", true).await;
        let a = app.tenant_client("acme");
        a.sign_in("a@acme.example", &otp).await;
        let page = a.get_html("/portal/password").await;
        a.post_form("/portal/password", &page, &[("new_password", "my own long passphrase"), ("confirm", "my own long passphrase")]).await;
        assert_eq!(a.get("/portal").await.status(), 200);

        let user = app.events_of("USER_CREATED").await[0].details["user_id"].as_str().unwrap().to_owned();
        let users = imp.get_html("/portal/settings/users").await;
        let r = imp.post_form(&format!("/portal/settings/users/{user}/reset"), &users, &[]).await;
        assert_eq!(r.status(), 200);
        let new_otp = otp_in(&r.text().await.unwrap());
        assert_ne!(new_otp, otp);
        assert!(!logs_contain(&otp) && !logs_contain(&new_otp), "a one-time password was logged");
        assert_eq!(a.get("/portal").await.status(), 303, "their sessions ended");
        assert_eq!(app.tenant_client("acme").sign_in("a@acme.example", "my own long passphrase").await.status(), 401, "the old password is dead");
        assert_eq!(app.tenant_client("acme").sign_in("a@acme.example", &new_otp).await.status(), 303);
        let reset = &app.events_of("PASSWORD_RESET").await[0];
        assert!(reset.details["impersonation_id"].is_string());
        assert!(!reset.details.to_string().contains(&new_otp));
    }
);

both!(
    async fn impersonation_ends_by_itself_after_its_time_box(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let imp = switch_to(&app, &tid, "acme").await;
        app.clock.advance(time::Duration::minutes(29));
        assert_eq!(imp.get("/portal").await.status(), 200);
        app.clock.advance(time::Duration::minutes(29));
        assert_eq!(imp.get("/portal").await.status(), 200);
        app.clock.advance(time::Duration::minutes(3));
        assert_eq!(imp.get("/portal").await.status(), 303, "61 minutes: over");
        let ended = app.events_of("IMPERSONATION_ENDED").await;
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].details["reason"], "expired");
    }
);

both!(
    async fn the_session_id_changes_when_impersonation_starts_and_the_old_one_dies_when_it_stops(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let page = app.get_html(&format!("/tenants/{tid}")).await;
        let r = app.post_form(&format!("/tenants/{tid}/impersonate"), &page, &[("reason", REASON)]).await;
        let handoff = location(&r);
        let tenant = app.tenant_client("acme");
        let r = tenant.get(&handoff[handoff.find("/impersonate").unwrap()..]).await;
        let cookie = set_cookies(r.headers()).into_iter().find(|c| c.starts_with("qd_session=")).unwrap();
        let value = cookie.split(';').next().unwrap().to_owned();
        assert!(cookie.contains("HttpOnly") && !cookie.to_lowercase().contains("domain="));
        let portal = tenant.get_html("/portal").await;
        tenant.post_form("/impersonation/stop", &portal, &[]).await;
        let raw = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .resolve("acme.localhost", std::net::SocketAddr::from(([127, 0, 0, 1], app.port())))
            .build()
            .unwrap();
        let r = raw.get(format!("http://acme.localhost:{}/portal", app.port())).header("cookie", &value).send().await.unwrap();
        assert_eq!(r.status(), 303, "the impersonation session id is dead after stop");
    }
);

// ---- the impersonator's rights, re-checked ---------------------------------------------------

const DEPUTY: &str = "deputy@example.com";

/// A second platform owner (the first, signed in on `app.client`, acts on them), signed in on
/// their own browser and impersonating `acme`; returns (their id, the tenant-host browser).
async fn deputy_impersonating(app: &TestApp) -> (String, TenantClient) {
    app.sign_in_owner().await;
    let tid = app.create_tenant("Acme", "acme").await;
    let user = quarterdeck_domain::user::User {
        id: quarterdeck_domain::UserId::new(),
        email: quarterdeck_domain::EmailAddress::parse(DEPUTY).unwrap(),
        name: None,
        status: quarterdeck_domain::user::UserStatus::Active,
        roles: vec!["owner".to_owned()],
        tenant_id: None,
        created_at: app.clock_now(),
    };
    let pw = quarterdeck_domain::password::NewPassword::parse(OWNER_PASSWORD, 12, "p").unwrap();
    let hash = app.core.hasher.hash(&pw, &*app.core.rng).await.unwrap();
    let ev = quarterdeck_domain::audit::NewEvent::new(
        app.clock_now(),
        quarterdeck_domain::audit::EventType::OwnerCreated,
        &quarterdeck_domain::access::Actor::system(),
        None,
        serde_json::json!({}),
    );
    app.core
        .store()
        .create_user(
            &user,
            Some(&quarterdeck_domain::user::Credential::password(hash)),
            None,
            ev,
        )
        .await
        .unwrap();
    let deputy = client();
    let login = deputy
        .get(app.url("/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let r = post_form(
        &deputy,
        &app.url("/login"),
        &app.base_url,
        &login,
        &[("email", DEPUTY), ("password", OWNER_PASSWORD)],
    )
    .await;
    assert_eq!(r.status(), 303);
    let page = deputy
        .get(app.url(&format!("/tenants/{tid}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let r = post_form(
        &deputy,
        &app.url(&format!("/tenants/{tid}/impersonate")),
        &app.base_url,
        &page,
        &[("reason", REASON)],
    )
    .await;
    assert_eq!(r.status(), 303);
    let handoff = location(&r);
    let tenant = app.tenant_client("acme");
    let r = tenant.get(&handoff[handoff.find("/impersonate").unwrap()..]).await;
    assert_eq!(r.status(), 303);
    assert_eq!(tenant.get("/portal").await.status(), 200);
    (user.id.to_string(), tenant)
}

/// The owner acts on the deputy from the console; then the impersonation is over at once (the
/// row and the event are there before the deputy makes another request), and so is the
/// deputy's tenant-host session.
async fn acting_on_the_impersonator_ends_it(app: &TestApp, action: &str, fields: &[(&str, &str)], reason: &str) {
    let (deputy, imp) = deputy_impersonating(app).await;
    let page = app.get_html(&format!("/users/{deputy}")).await;
    let r = app.post_form(&format!("/users/{deputy}/{action}"), &page, fields).await;
    assert_eq!(r.status(), 303, "{action}");
    let ended = app.events_of("IMPERSONATION_ENDED").await;
    assert_eq!(ended.len(), 1, "{action}: ended in the same step");
    assert_eq!(ended[0].details["reason"], reason);
    assert_eq!(ended[0].actor_email.as_deref(), Some(DEPUTY));
    let id: uuid::Uuid = ended[0].details["impersonation_id"].as_str().unwrap().parse().unwrap();
    let row = app.core.store().impersonation(id).await.unwrap().unwrap();
    assert!(row.ended_at.is_some(), "{action}: ended_at set");
    let r = imp.get("/portal").await;
    assert_eq!(r.status(), 303, "{action}: the impersonation session is dead");
    let portal = imp.get("/portal/settings/users/new").await;
    assert_eq!(portal.status(), 303);
    assert_eq!(app.events_of("IMPERSONATION_ENDED").await.len(), 1, "no second end");
}

both!(
    async fn demoting_the_impersonator_ends_their_impersonation(app) {
        acting_on_the_impersonator_ends_it(&app, "roles", &[("roles", "billing-admin")], "rights_revoked").await;
    }
);

both!(
    async fn suspending_the_impersonator_ends_their_impersonation(app) {
        acting_on_the_impersonator_ends_it(&app, "suspend", &[], "impersonator_suspended").await;
    }
);

both!(
    async fn deleting_the_impersonator_ends_their_impersonation(app) {
        acting_on_the_impersonator_ends_it(&app, "delete", &[], "impersonator_removed").await;
    }
);

both!(
    async fn an_impersonator_who_lost_the_right_is_refused_on_their_next_request(app) {
        // A change that bypasses the console (e.g. a roles file edited) is still caught: the
        // rights are re-read on every request.
        let (deputy, imp) = deputy_impersonating(&app).await;
        let id: quarterdeck_domain::UserId = deputy.parse().unwrap();
        let ev = quarterdeck_domain::audit::NewEvent::new(app.clock_now(), quarterdeck_domain::audit::EventType::UserRoleRevoked, &quarterdeck_domain::access::Actor::system(), None, serde_json::json!({}));
        app.core.store().set_roles(quarterdeck_domain::user::Directory::Platform, id, &["billing-admin".to_owned()], vec![ev], &[]).await.unwrap();
        assert_eq!(imp.get("/portal").await.status(), 303);
        let ended = app.events_of("IMPERSONATION_ENDED").await;
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].details["reason"], "rights_revoked");
    }
);

both!(
    async fn signing_out_while_impersonating_ends_the_impersonation(app) {
        let (_, imp) = deputy_impersonating(&app).await;
        let portal = imp.get_html("/portal").await;
        let r = imp.post_form("/logout", &portal, &[]).await;
        assert_eq!(r.status(), 303);
        let ended = app.events_of("IMPERSONATION_ENDED").await;
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].details["reason"], "signed_out");
        let id: uuid::Uuid = ended[0].details["impersonation_id"].as_str().unwrap().parse().unwrap();
        assert!(app.core.store().impersonation(id).await.unwrap().unwrap().ended_at.is_some());
        assert_eq!(imp.get("/portal").await.status(), 303);
    }
);
