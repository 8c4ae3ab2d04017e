//! Onboarding by invitation (runbook-invite-onboarding): invite, email, register, sign in on
//! the tenant's host, land on /portal, invite the rest of the team.

use crate::helpers::*;
use crate::{both, both_backends};
use serde_json::Value;

/// The text body of the latest email maildev received for `to`.
async fn received(maildev: &crate::maildev::Maildev, to: &str, n: usize) -> Value {
    let mut waited = 0;
    loop {
        let mails: Vec<Value> = maildev
            .emails()
            .await
            .into_iter()
            .filter(|m| m["to"].as_array().is_some_and(|a| a.iter().any(|t| t["address"] == to)))
            .collect();
        if mails.len() >= n {
            return mails[n - 1].clone();
        }
        waited += 1;
        assert!(waited < 100, "no email to {to} after 10 s");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

both_backends!(
    async fn the_invitation_runbook_works_end_to_end_with_real_email(backend) {
        let (app, maildev) = TestApp::spawn_with_mail(backend).await;
        app.sign_in_owner().await;

        // Step 1: create the tenant; the toast links to the invite form with the admin role.
        let tid = app.create_tenant("Acme Corp", "acme").await;
        let list = app.get_html(&format!("/tenants?created={tid}")).await;
        let invite_link = format!("/users/new?tenant_id={tid}&amp;role=admin");
        assert!(list.contains(&invite_link), "the toast's Invite admin link");
        assert!(list.contains("Invite admin →"));
        // Step 2: the Team section has the same deep links.
        let tenant_page = app.get_html(&format!("/tenants/{tid}")).await;
        assert!(tenant_page.contains(&invite_link) && tenant_page.contains("Invite with other role…"));
        // Step 3: the form arrives with the tenant and the admin role filled in.
        let form = app.get_html(&format!("/users/new?tenant_id={tid}&role=admin")).await;
        assert!(form.contains(&format!("value=\"{tid}\" selected")));
        assert!(form.contains("value=\"admin\" checked"));
        let r = app.post_form("/users/new", &form, &[("email", "ada@acme.example"), ("name", "Ada"), ("tenant_id", &tid), ("roles", "admin")]).await;
        assert_eq!(r.status(), 303);
        let invited = &app.events_of("USER_INVITED").await[0];
        assert_eq!(invited.details["email"], "ada@acme.example");
        assert_eq!(invited.details["tenant_id"], tid.as_str());
        assert_eq!(invited.details["roles"], serde_json::json!(["admin"]));
        assert_eq!(invited.details["status"], "INVITED");
        assert_eq!(invited.details["actor"]["email"], OWNER_EMAIL);

        // Step 4: the email arrives, with the link on the tenant's host.
        let mail = received(&maildev, "ada@acme.example", 1).await;
        let text = mail["text"].as_str().unwrap();
        assert!(text.contains(OWNER_EMAIL) && text.contains("Acme Corp"), "who invited, to which organisation: {text}");
        let link = link_in(text);
        assert!(link.starts_with(&format!("http://acme.localhost:{}/register?token=qd_inv_", app.port())), "{link}");
        let token = link.split("token=").nth(1).unwrap();
        assert!(!logs_contain(token), "with SMTP, the invitation token is in no log");
        assert!(mail["html"].as_str().unwrap().contains("Set your password"));
        // The Team section shows it delivered.
        let team = app.get_html(&format!("/tenants/{tid}")).await;
        assert!(team.contains("ada@acme.example") && team.contains("INVITED") && team.contains("delivered"));

        let acme = app.tenant_client("acme");
        let r = acme.register(&link, "a long and lovely passphrase").await;
        assert_eq!(r.status(), 303);
        assert_eq!(location(&r), "/login?registered=true");
        let login = acme.get_html("/login?registered=true").await;
        assert!(login.contains("Your password is set."));
        // The link is spent.
        let path = &link[link.find("/register").unwrap()..];
        let again = acme.get(path).await;
        assert_eq!(again.status(), 410);
        assert!(again.text().await.unwrap().contains("invitation link is invalid or has expired"));

        // Sign in on the tenant's host and land on /portal.
        let r = acme.sign_in("ada@acme.example", "a long and lovely passphrase").await;
        assert_eq!(r.status(), 303);
        assert_eq!(location(&r), "/portal");
        let portal = acme.get_html("/portal").await;
        assert!(portal.contains("Acme Corp"));

        // Step 5: the admin invites a developer, without the owner.
        let invite = acme.get_html("/portal/team/invite").await;
        assert!(invite.contains("developer") && !invite.contains("value=\"owner\""), "tenant roles only");
        let r = acme.post_form("/portal/team/invite", &invite, &[("email", "dev@acme.example"), ("roles", "developer")]).await;
        assert_eq!(r.status(), 303);
        let mail = received(&maildev, "dev@acme.example", 1).await;
        let dev = app.tenant_client("acme");
        assert_eq!(dev.register(&link_in(mail["text"].as_str().unwrap()), "another long passphrase").await.status(), 303);
        let r = dev.sign_in("dev@acme.example", "another long passphrase").await;
        assert_eq!(location(&r), "/portal");
        // A developer cannot manage users.
        assert_eq!(dev.get("/portal/team/invite").await.status(), 403);

        // The audit trail, with the runbook's payloads.
        let types = app.event_types().await;
        for t in ["TENANT_CREATED", "USER_INVITED", "USER_REGISTERED"] {
            assert!(types.iter().any(|x| x == t), "{t}");
        }
        assert_eq!(app.events_of("USER_INVITED").await.len(), 2);
        let registered = app.events_of("USER_REGISTERED").await;
        assert_eq!(registered.len(), 2);
        assert_eq!(registered[1].details["email"], "ada@acme.example");
        let audit = acme.get_html("/portal/audit").await;
        assert!(audit.contains("USER_REGISTERED") && audit.contains("USER_INVITED"));
        // Users live in the tenant's own database.
        let users = app.core.store().list_users(quarterdeck_domain::user::Directory::Tenant(tid.parse().unwrap())).await.unwrap();
        assert_eq!(users.len(), 2);
        assert!(app.core.store().user_by_email(quarterdeck_domain::user::Directory::Platform, &quarterdeck_domain::EmailAddress::parse("ada@acme.example").unwrap()).await.unwrap().is_none());
    }
);

both!(
    async fn an_invitation_expires_after_seven_days_by_the_clock(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        app.invite("a@acme.example", &tid, &["admin"]).await;
        let link = app.invitation_link("a@acme.example").await;
        let acme = app.tenant_client("acme");
        let path = &link[link.find("/register").unwrap()..];
        app.clock.advance(time::Duration::days(7) - time::Duration::seconds(1));
        assert_eq!(acme.get(path).await.status(), 200, "valid until the seventh day ends");
        app.clock.advance(time::Duration::seconds(2));
        let r = acme.get(path).await;
        assert_eq!(r.status(), 410);
        assert!(r.text().await.unwrap().contains("invitation link is invalid or has expired"));
    }
);

both!(
    async fn resending_kills_the_old_link_and_revoking_kills_the_new_one(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        app.invite("a@acme.example", &tid, &["admin"]).await;
        let old = app.invitation_link("a@acme.example").await;
        let user = app.events_of("USER_INVITED").await[0].details["user_id"].as_str().unwrap().to_owned();
        let page = app.get_html(&format!("/tenants/{tid}/users/{user}")).await;
        assert_eq!(app.post_form(&format!("/tenants/{tid}/users/{user}/resend"), &page, &[]).await.status(), 303);
        let new = app.invitation_link("a@acme.example").await;
        assert_ne!(old, new);
        assert_eq!(app.outbox().await.len(), 1, "the old email was cancelled");
        let acme = app.tenant_client("acme");
        assert_eq!(acme.get(&old[old.find("/register").unwrap()..]).await.status(), 410);
        assert_eq!(acme.get(&new[new.find("/register").unwrap()..]).await.status(), 200);

        assert_eq!(app.post_form(&format!("/tenants/{tid}/users/{user}/revoke"), &page, &[]).await.status(), 303);
        assert_eq!(acme.get(&new[new.find("/register").unwrap()..]).await.status(), 410);
        assert_eq!(app.events_of("INVITATION_RESENT").await.len(), 1);
        assert_eq!(app.events_of("INVITATION_REVOKED").await.len(), 1);
    }
);

both!(
    async fn twenty_racing_registrations_with_one_token_let_exactly_one_win(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        app.invite("a@acme.example", &tid, &["admin"]).await;
        let link = app.invitation_link("a@acme.example").await;
        let path = link[link.find("/register").unwrap()..].to_owned();
        let token = path.split("token=").nth(1).unwrap().to_owned();
        // Every racer holds the form (and its CSRF cookie) before anyone submits: a racer who
        // opened the link after the winner had registered would have had no form to submit.
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(20));
        let mut tasks = Vec::new();
        for i in 0..20 {
            let c = app.tenant_client("acme");
            let page = c.get_html(&path).await;
            let (token, barrier) = (token.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                let pw = format!("racing passphrase number {i}");
                barrier.wait().await;
                c.post_form("/register", &page, &[("token", &token), ("password", &pw), ("confirm", &pw)])
                    .await
                    .status()
                    .as_u16()
            }));
        }
        let mut statuses = Vec::new();
        for t in tasks {
            statuses.push(t.await.unwrap());
        }
        assert_eq!(statuses.iter().filter(|s| **s == 303).count(), 1, "{statuses:?}");
        assert!(statuses.iter().all(|s| *s == 303 || *s == 410), "{statuses:?}");
        assert_eq!(app.events_of("USER_REGISTERED").await.len(), 1);
    }
);

both!(
    async fn a_token_only_works_on_its_own_tenants_host(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        app.create_tenant("Globex", "globex").await;
        app.invite("a@acme.example", &tid, &["admin"]).await;
        let link = app.invitation_link("a@acme.example").await;
        let path = &link[link.find("/register").unwrap()..];
        assert_eq!(app.tenant_client("globex").get(path).await.status(), 410);
        assert_eq!(app.get(path).await.status(), 410, "nor on the base host");
        assert_eq!(app.tenant_client("acme").get(path).await.status(), 200);
    }
);

both!(
    async fn links_come_from_base_url_whatever_the_request_headers_say(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let page = app.get_html("/users/new").await;
        let r = app
            .client
            .post(app.url("/users/new"))
            .header("x-forwarded-host", "evil.example")
            .header("forwarded", "host=evil.example")
            .header("x-forwarded-proto", "https")
            .form(&[("csrf_token", csrf_token(&page).as_str()), ("email", "a@acme.example"), ("tenant_id", &tid), ("roles", "admin")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
        let link = app.invitation_link("a@acme.example").await;
        assert!(link.starts_with(&format!("http://acme.localhost:{}/register?token=", app.port())), "{link}");
    }
);

both!(
    async fn roles_are_checked_in_the_domain_and_refusals_write_nothing(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let other = app.create_tenant("Globex", "globex").await;
        // Mixed scopes and platform roles for a tenant are refused.
        let r = app.invite("x@acme.example", &tid, &["admin", "owner"]).await;
        assert_eq!(r.status(), 422);
        assert!(r.text().await.unwrap().contains("never both"));
        let r = app.invite("x@acme.example", &tid, &["owner"]).await;
        assert_eq!(r.status(), 422);
        let r = app.invite("x@acme.example", &tid, &[]).await;
        assert_eq!(r.status(), 422);
        let r = app.invite("not-an-email", &tid, &["admin"]).await;
        assert_eq!(r.status(), 422);
        assert!(app.events_of("USER_INVITED").await.is_empty());

        // A tenant admin …
        let acme = app.tenant_admin(&tid, "acme", "ada@acme.example").await;
        let form = acme.get_html("/portal/team/invite").await;
        let before = app.event_types().await.len();
        // … cannot grant a platform role,
        let r = acme.post_form("/portal/team/invite", &form, &[("email", "evil@acme.example"), ("roles", "owner")]).await;
        assert_eq!(r.status(), 422);
        // … cannot invite into another tenant (the tenant_id is ignored: always their own),
        let r = acme.post_form("/portal/team/invite", &form, &[("email", "spy@acme.example"), ("roles", "viewer"), ("tenant_id", &other)]).await;
        assert_eq!(r.status(), 303);
        let globex_users = app.core.store().list_users(quarterdeck_domain::user::Directory::Tenant(other.parse().unwrap())).await.unwrap();
        assert!(globex_users.is_empty());
        // … and cannot reach the console.
        assert_eq!(acme.get("/tenants").await.status(), 404);
        assert_eq!(acme.get("/users/new").await.status(), 404);
        assert_eq!(app.event_types().await.len(), before + 1, "only the viewer invitation was written");
    }
);

both!(
    async fn another_tenants_user_ids_are_not_found_from_the_portal(app) {
        app.sign_in_owner().await;
        let acme_id = app.create_tenant("Acme", "acme").await;
        let globex_id = app.create_tenant("Globex", "globex").await;
        app.invite("ada@acme.example", &acme_id, &["admin"]).await;
        app.invite("gus@globex.example", &globex_id, &["admin"]).await;
        let gus = app.events_of("USER_INVITED").await[0].details["user_id"].as_str().unwrap().to_owned();
        let acme = app.tenant_client("acme");
        acme.register(&app.invitation_link("ada@acme.example").await, "a long and lovely passphrase").await;
        acme.sign_in("ada@acme.example", "a long and lovely passphrase").await;
        assert_eq!(acme.get(&format!("/portal/users/{gus}")).await.status(), 404);
        let page = acme.get_html("/portal/team").await;
        for action in ["suspend", "delete", "resend", "revoke", "roles"] {
            let r = acme.post_form(&format!("/portal/users/{gus}/{action}"), &page, &[("roles", "viewer")]).await;
            assert_eq!(r.status(), 404, "{action}");
        }
        assert!(app.events_of("USER_DELETED").await.is_empty());
    }
);

both!(
    async fn a_suspended_tenants_users_cannot_sign_in_and_their_sessions_die(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let acme = app.tenant_admin(&tid, "acme", "ada@acme.example").await;
        assert_eq!(acme.get("/portal").await.status(), 200);

        let page = app.get_html(&format!("/tenants/{tid}")).await;
        app.post_form(&format!("/tenants/{tid}/status"), &page, &[("status", "suspended")]).await;

        assert_eq!(acme.get("/portal").await.status(), 303, "the session died at once");
        let fresh = app.tenant_client("acme");
        let r = fresh.sign_in("ada@acme.example", "a long and lovely passphrase").await;
        assert_eq!(r.status(), 403);
        assert!(r.text().await.unwrap().contains("suspended"));
    }
);

both!(
    async fn a_read_only_tenant_refuses_writes_with_the_reason(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let acme = app.tenant_admin(&tid, "acme", "ada@acme.example").await;
        let page = app.get_html(&format!("/tenants/{tid}")).await;
        app.post_form(&format!("/tenants/{tid}/status"), &page, &[("status", "read_only")]).await;

        assert_eq!(acme.get("/portal/team").await.status(), 200, "reading works");
        let form = acme.get_html("/portal/team").await;
        let r = acme.post_form("/portal/team/invite", &form, &[("email", "b@acme.example"), ("roles", "viewer")]).await;
        assert_eq!(r.status(), 403);
        assert!(r.text().await.unwrap().contains("read-only"));
        let r = app.invite("c@acme.example", &tid, &["viewer"]).await;
        assert_eq!(r.status(), 403, "the platform too");
        assert_eq!(app.events_of("USER_INVITED").await.len(), 1);
    }
);

both!(
    async fn a_tenant_user_at_the_base_host_is_told_to_use_their_organisations_address(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        app.invite("ada@acme.example", &tid, &["admin"]).await;
        app.tenant_client("acme").register(&app.invitation_link("ada@acme.example").await, "a long and lovely passphrase").await;
        let dash = app.get_html("/").await;
        app.post_form("/logout", &dash, &[]).await;

        let page = app.get_html("/login").await;
        let tenant_user = app.post_form("/login", &page, &[("email", "ada@acme.example"), ("password", "a long and lovely passphrase")]).await;
        let nobody = app.post_form("/login", &page, &[("email", "zed@acme.example"), ("password", "a long and lovely passphrase")]).await;
        assert_eq!(tenant_user.status(), 401);
        assert_eq!(nobody.status(), 401);
        let (a, b) = (tenant_user.text().await.unwrap(), nobody.text().await.unwrap());
        assert!(a.contains("sign in at their organisation"));
        assert_eq!(a.replace("ada@", "zed@"), b, "the same words whether the email exists or not");
    }
);

both!(
    async fn unknown_tenant_hosts_get_a_plain_not_found(app) {
        let nope = app.tenant_client("nope");
        assert_eq!(nope.get("/login").await.status(), 404);
        let r = app.client.get(app.url("/login")).header("host", format!("a.b.localhost:{}", app.port())).send().await.unwrap();
        assert_eq!(r.status(), 404);
    }
);

both_backends!(
    async fn with_smtp_down_the_invitation_is_kept_and_delivered_once_when_it_is_back(backend) {
        // SMTP down, its port held for the maildev that brings it back.
        let down = crate::maildev::DownSmtp::hold();
        let app = TestApp::spawn_with(backend, |s| mail_to(s, down.port)).await;
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        assert_eq!(app.invite("ada@acme.example", &tid, &["admin"]).await.status(), 303);
        // The worker tries and fails (this server's own log says why); the invitation is kept,
        // shown as not delivered.
        poll_until("the worker's failed attempt", || async {
            app.logs.contains("email delivery failed; will retry")
        })
        .await;
        let page = app.get_html(&format!("/tenants/{tid}")).await;
        assert!(page.contains("not delivered yet"), "{page}");
        assert_eq!(app.outbox().await.len(), 1);

        // The server comes back; once the back-off passes, the email goes out exactly once.
        let maildev = crate::maildev::Maildev::start_on(Some(down));
        app.clock.advance(time::Duration::minutes(10));
        received(&maildev, "ada@acme.example", 1).await;
        // Marked sent in the outbox: however far the clock moves, nothing is due again.
        poll_until("the email marked sent", || async { app.outbox().await.is_empty() }).await;
        app.clock.advance(time::Duration::hours(2));
        assert!(app.outbox().await.is_empty());
        assert_eq!(maildev.emails().await.len(), 1, "once, not twice");
        app.sign_in(OWNER_EMAIL, OWNER_PASSWORD).await; // the clock moved past the idle limit
        let page = app.get_html(&format!("/tenants/{tid}")).await;
        assert!(page.contains("· delivered"), "{page}");
        assert!(app.outbox().await.is_empty());
    }
);

both!(
    async fn admins_change_roles_suspend_reactivate_and_delete_with_events(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        app.invite("ada@acme.example", &tid, &["admin"]).await;
        let acme = app.tenant_client("acme");
        acme.register(&app.invitation_link("ada@acme.example").await, "a long and lovely passphrase").await;
        let ada = app.events_of("USER_INVITED").await[0].details["user_id"].as_str().unwrap().to_owned();
        let base = format!("/tenants/{tid}/users/{ada}");
        let page = app.get_html(&base).await;

        assert_eq!(app.post_form(&format!("{base}/roles"), &page, &[("roles", "developer"), ("roles", "viewer")]).await.status(), 303);
        let assigned: Vec<_> = app.events_of("USER_ROLE_ASSIGNED").await.iter().map(|e| e.details["role"].as_str().unwrap().to_owned()).collect();
        assert_eq!(assigned.len(), 2);
        assert_eq!(app.events_of("USER_ROLE_REVOKED").await[0].details["role"], "admin");

        acme.sign_in("ada@acme.example", "a long and lovely passphrase").await;
        assert_eq!(acme.get("/portal").await.status(), 200);
        assert_eq!(app.post_form(&format!("{base}/suspend"), &page, &[]).await.status(), 303);
        assert_eq!(acme.get("/portal").await.status(), 303, "sessions end at once");
        assert_eq!(acme.sign_in("ada@acme.example", "a long and lovely passphrase").await.status(), 401);
        assert_eq!(app.post_form(&format!("{base}/reactivate"), &page, &[]).await.status(), 303);
        assert_eq!(acme.sign_in("ada@acme.example", "a long and lovely passphrase").await.status(), 303);
        assert_eq!(app.post_form(&format!("{base}/delete"), &page, &[]).await.status(), 303);
        assert_eq!(acme.get("/portal").await.status(), 303);
        assert_eq!(acme.sign_in("ada@acme.example", "a long and lovely passphrase").await.status(), 401);
        for t in ["USER_SUSPENDED", "USER_REACTIVATED", "USER_DELETED"] {
            assert_eq!(app.events_of(t).await.len(), 1, "{t}");
        }
        assert_eq!(app.get(&base).await.status(), 404);
    }
);

both!(
    async fn platform_users_are_invited_and_register_on_the_base_host(app) {
        app.sign_in_owner().await;
        let r = app.invite("pol@example.com", "", &["policy-admin"]).await;
        assert_eq!(r.status(), 303);
        let link = app.invitation_link("pol@example.com").await;
        assert!(link.starts_with(&format!("http://localhost:{}/register?token=", app.port())));
        let c = client();
        let path = &link[link.find("/register").unwrap()..];
        let page = c.get(app.url(path)).send().await.unwrap().text().await.unwrap();
        let token = path.split("token=").nth(1).unwrap();
        let r = c
            .post(app.url("/register"))
            .form(&[("csrf_token", csrf_token(&page).as_str()), ("token", token), ("password", "policy passphrase!"), ("confirm", "policy passphrase!")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
        let login = c.get(app.url("/login")).send().await.unwrap().text().await.unwrap();
        let r = c
            .post(app.url("/login"))
            .form(&[("csrf_token", csrf_token(&login).as_str()), ("email", "pol@example.com"), ("password", "policy passphrase!")])
            .send()
            .await
            .unwrap();
        assert_eq!(location(&r), "/", "platform roles land on the dashboard");
        let invited = &app.events_of("USER_INVITED").await[0];
        assert!(invited.details["tenant_id"].is_null());
    }
);

both!(
    async fn nothing_commits_in_a_tenant_after_its_suspension_even_with_writes_in_flight(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let owner = app.core.store().user_by_email(quarterdeck_domain::user::Directory::Platform, &quarterdeck_domain::EmailAddress::parse(OWNER_EMAIL).unwrap()).await.unwrap().unwrap().0;
        let principal = app.core.principal_of(&owner);
        let mut tasks = Vec::new();
        for i in 0..30 {
            let core = app.core.clone();
            let p = principal.clone();
            let tid = tid.clone();
            tasks.push(tokio::spawn(async move {
                let req = quarterdeck_domain::core::InviteRequest {
                    email: format!("u{i}@acme.example"),
                    name: String::new(),
                    roles: vec!["viewer".into()],
                    tenant_id: tid,
                };
                let auth = p
                    .require_in::<quarterdeck_domain::access::ManageDirectory>(req.directory(&p).unwrap())
                    .unwrap();
                core.invite(&auth, req).await.is_ok()
            }));
        }
        // Suspend while the invitations are under way: once the first has committed.
        poll_until("the first invitation", || async { !app.events_of("USER_INVITED").await.is_empty() }).await;
        let page = app.get_html(&format!("/tenants/{tid}")).await;
        assert_eq!(app.post_form(&format!("/tenants/{tid}/status"), &page, &[("status", "suspended")]).await.status(), 303);
        let mut ok = 0;
        for t in tasks {
            if t.await.unwrap() {
                ok += 1;
            }
        }
        let suspended = app.events_of("TENANT_STATUS_CHANGED").await[0].seq;
        let invited = app.events_of("USER_INVITED").await;
        assert_eq!(invited.len(), ok);
        assert!(invited.iter().all(|e| e.seq < suspended), "an invitation committed after the suspension");
        let users = app.core.store().list_users(quarterdeck_domain::user::Directory::Tenant(tid.parse().unwrap())).await.unwrap();
        assert_eq!(users.len(), ok, "no user without its event");
    }
);
