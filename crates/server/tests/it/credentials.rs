//! Credentials: one-time passwords spent once (even by racers) and always expiring, password
//! changes that rotate the session and are throttled and audited like sign-in, token creation
//! following the tenant's status, and a throttle that an attacker cannot turn against the
//! account's owner.

use crate::helpers::*;
use crate::{both, both_backends};
use quarterdeck_domain::core::{ClientInfo, NewTokenRequest, NewUserRequest};
use quarterdeck_domain::user::Directory;

/// A tenant `acme` (made through the console, the owner signed in there) and a user in it
/// added with a one-time password; returns (tenant, otp).
async fn user_with_otp(app: &TestApp, email: &str, force_change: bool) -> (Directory, String) {
    app.sign_in_owner().await;
    let tid = app.create_tenant("Acme", "acme").await;
    let owner_email = quarterdeck_domain::EmailAddress::parse(OWNER_EMAIL).unwrap();
    let (owner, _) = app
        .core
        .store()
        .user_by_email(Directory::Platform, &owner_email)
        .await
        .unwrap()
        .unwrap();
    let by = app.core.principal_of(&owner);
    let dir = Directory::Tenant(tid.parse().unwrap());
    let req = NewUserRequest {
        email: email.into(),
        name: String::new(),
        role: "admin".into(),
        force_change,
    };
    let (_, otp) = app
        .core
        .add_user_with_password(
            &by.require_in::<quarterdeck_domain::access::ManageDirectory>(dir)
                .unwrap(),
            req,
        )
        .await
        .unwrap();
    (dir, otp)
}

both!(
    async fn six_simultaneous_sign_ins_with_one_forced_change_otp_let_exactly_one_in(app) {
        let (_, otp) = user_with_otp(&app, "casey@acme.example", true).await;
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(6));
        let mut racers = Vec::new();
        for _ in 0..6 {
            let c = app.tenant_client("acme");
            let page = c.get_html("/login").await;
            let (barrier, otp) = (barrier.clone(), otp.clone());
            racers.push(tokio::spawn(async move {
                barrier.wait().await;
                c.post_form("/login", &page, &[("email", "casey@acme.example"), ("password", &otp)])
                    .await
                    .status()
                    .as_u16()
            }));
        }
        let mut statuses = Vec::new();
        for r in racers {
            statuses.push(r.await.unwrap());
        }
        assert_eq!(statuses.iter().filter(|s| **s == 303).count(), 1, "{statuses:?}");
        assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 5, "{statuses:?}");
        assert_eq!(app.control_rows("session").await, 2, "the owner's and one of casey's, not six");
        let casey_in = app.events_of("SIGN_IN_SUCCEEDED").await.into_iter().filter(|e| e.actor_email.as_deref() == Some("casey@acme.example")).count();
        assert_eq!(casey_in, 1);
    }
);

both!(
    async fn a_one_time_password_without_forced_change_works_once(app) {
        let (_, otp) = user_with_otp(&app, "casey@acme.example", false).await;
        let first = app.tenant_client("acme");
        let r = first.sign_in("casey@acme.example", &otp).await;
        assert_eq!(r.status(), 303);
        assert_eq!(first.get("/portal").await.status(), 200, "no change forced");
        let second = app.tenant_client("acme");
        let r = second.sign_in("casey@acme.example", &otp).await;
        assert_eq!(r.status(), 401, "the same password a second time");
        // The user may choose their own password with the session the one use gave them.
        let page = first.get_html("/portal/password").await;
        let r = first
            .post_form("/portal/password", &page, &[("new_password", "casey's very own phrase"), ("confirm", "casey's very own phrase")])
            .await;
        assert_eq!(r.status(), 303);
        let r = second.sign_in("casey@acme.example", "casey's very own phrase").await;
        assert_eq!(r.status(), 303);
        let r = app.tenant_client("acme").sign_in("casey@acme.example", "casey's very own phrase").await;
        assert_eq!(r.status(), 303, "a password they chose works as often as they like");
    }
);

both!(
    async fn a_one_time_password_without_forced_change_expires(app) {
        let (dir, otp) = user_with_otp(&app, "casey@acme.example", false).await;
        let created = app.events_of("USER_CREATED").await;
        assert!(created[0].details["one_time_password_expires_at"].is_i64(), "{}", created[0].details);
        app.clock.advance(app.core.config.otp_ttl + time::Duration::seconds(1));
        let r = app.tenant_client("acme").sign_in("casey@acme.example", &otp).await;
        assert_eq!(r.status(), 401);
        let _ = dir;
    }
);

both!(
    async fn token_creation_in_read_only_and_suspended_tenants_is_refused(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let ada = app.tenant_admin(&tid, "acme", "ada@acme.example").await;
        let dir = Directory::Tenant(tid.parse().unwrap());
        // A session taken before the suspension (a request in flight when it lands).
        let (_, in_flight) = app.core.sign_in(dir, "ada@acme.example", ADMIN_PASSWORD, &ClientInfo::default()).await.unwrap();

        let page = app.get_html(&format!("/tenants/{tid}")).await;
        app.post_form(&format!("/tenants/{tid}/status"), &page, &[("status", "read_only"), ("confirm", "acme")]).await;
        let tokens = ada.get_html("/portal/settings/tokens").await;
        let r = ada.post_form("/portal/settings/tokens", &tokens, &[("name", "ci"), ("scope", "read"), ("expires_in_days", "10")]).await;
        assert_eq!(r.status(), 403);
        assert!(r.text().await.unwrap().contains("read-only"));

        let page = app.get_html(&format!("/tenants/{tid}")).await;
        app.post_form(&format!("/tenants/{tid}/status"), &page, &[("status", "suspended"), ("confirm", "acme")]).await;
        let req = NewTokenRequest { name: "ci".into(), scope: "read".into(), expires_in_days: "10".into(), tenant_id: String::new() };
        let e = app.core.create_token(&in_flight, req).await.unwrap_err();
        assert_eq!(e.code(), "tenant_suspended");

        assert_eq!(app.control_rows("personal_access_token").await, 0);
        assert!(app.events_of("PAT_CREATED").await.is_empty());
    }
);

/// Sign in with a fresh client; returns it and its session cookie's value.
async fn signed_in_owner(app: &TestApp) -> (reqwest::Client, String) {
    app.core.bootstrap_owner(OWNER_EMAIL, OWNER_PASSWORD).await.unwrap();
    let c = client();
    let page = c.get(app.url("/login")).send().await.unwrap().text().await.unwrap();
    let r = post_form(
        &c,
        &app.url("/login"),
        &app.base_url,
        &page,
        &[("email", OWNER_EMAIL), ("password", OWNER_PASSWORD)],
    )
    .await;
    assert_eq!(r.status(), 303);
    (c, session_value(r.headers()))
}

fn session_value(headers: &reqwest::header::HeaderMap) -> String {
    let cookies = set_cookies(headers);
    let c = cookies
        .iter()
        .find(|c| c.starts_with("qd_session="))
        .expect("a session cookie");
    c["qd_session=".len()..].split(';').next().unwrap().to_owned()
}

/// GET `/` with exactly this session cookie.
async fn home_with(app: &TestApp, session: &str) -> u16 {
    client()
        .get(app.url("/"))
        .header("cookie", format!("qd_session={session}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

both!(
    async fn a_password_change_issues_a_new_session_id(app) {
        let (c, old) = signed_in_owner(&app).await;
        assert_eq!(home_with(&app, &old).await, 200);
        let page = c.get(app.url("/settings")).send().await.unwrap().text().await.unwrap();
        let r = post_form(&c, &app.url("/settings/password"), &app.base_url, &page, &[
            ("current_password", OWNER_PASSWORD), ("new_password", "a brand new passphrase"), ("confirm", "a brand new passphrase"),
        ]).await;
        assert_eq!(r.status(), 303);
        let new = session_value(r.headers());
        assert_ne!(new, old);
        assert_eq!(home_with(&app, &old).await, 303, "the old id is dead");
        assert_eq!(home_with(&app, &new).await, 200, "the new one works");
        assert_eq!(c.get(app.url("/settings")).send().await.unwrap().status(), 200, "the browser stays signed in");
    }
);

both!(
    async fn wrong_current_passwords_count_against_the_sign_in_throttle_and_are_audited(app) {
        let (c, _) = signed_in_owner(&app).await;
        let page = c.get(app.url("/settings")).send().await.unwrap().text().await.unwrap();
        let change = |current: &'static str| {
            let (c, page) = (c.clone(), page.clone());
            let (url, origin) = (app.url("/settings/password"), app.base_url.clone());
            async move {
                post_form(&c, &url, &origin, &page, &[
                    ("current_password", current), ("new_password", "a brand new passphrase"), ("confirm", "a brand new passphrase"),
                ]).await
            }
        };
        for _ in 0..6 {
            assert_eq!(change("not my password at all").await.status(), 422);
        }
        let r = change("not my password at all").await;
        assert_eq!(r.status(), 429, "the account's back-off, as at sign-in");
        assert!(r.headers().get("retry-after").is_some());
        let r = change(OWNER_PASSWORD).await;
        assert_eq!(r.status(), 429, "even the right one waits");
        // The same throttle as sign-in: the sign-in form from this address waits too.
        let login = app.get_html("/login").await;
        let r = app.post_form("/login", &login, &[("email", OWNER_EMAIL), ("password", OWNER_PASSWORD)]).await;
        assert_eq!(r.status(), 429);
        let failed = app.events_of("PASSWORD_CHANGE_FAILED").await;
        assert_eq!(failed.len(), 6);
        assert_eq!(failed[0].actor_email.as_deref(), Some(OWNER_EMAIL));
        assert!(!failed[0].details.to_string().contains("not my password"));
    }
);

/// Sign in from `ip` (the server trusts the loopback proxy's `X-Forwarded-For`).
async fn sign_in_from(app: &TestApp, ip: &str, password: &str) -> u16 {
    let c = client();
    let page = c
        .get(app.url("/login"))
        .header("x-forwarded-for", ip)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    c.post(app.url("/login"))
        .header("x-forwarded-for", ip)
        .header("origin", &app.base_url)
        .form(&[
            ("csrf_token", csrf_token(&page).as_str()),
            ("email", OWNER_EMAIL),
            ("password", password),
        ])
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

both_backends!(
    async fn wrong_passwords_from_rotating_addresses_do_not_lock_the_real_user_out(backend) {
        let app = TestApp::spawn_with(backend, |s| s.trusted_proxies = vec!["127.0.0.1".into()]).await;
        app.core.bootstrap_owner(OWNER_EMAIL, OWNER_PASSWORD).await.unwrap();
        for i in 0..30 {
            let status = sign_in_from(&app, &format!("10.0.0.{i}"), "guess guess guess").await;
            assert_eq!(status, 401, "guess {i} from a fresh address is answered");
        }
        assert_eq!(sign_in_from(&app, "10.9.9.9", OWNER_PASSWORD).await, 303, "the owner, from an address that never failed, gets in at once");
        // While the account is under attack, an address that has failed on it waits…
        for _ in 0..6 {
            sign_in_from(&app, "10.1.1.1", "guess guess guess").await;
        }
        assert_eq!(sign_in_from(&app, "10.0.0.1", "guess guess guess").await, 429, "an address that failed before backs off");
        assert_eq!(sign_in_from(&app, "10.1.1.1", OWNER_PASSWORD).await, 429, "the hammering address waits");
        // …and one that has not failed still does not.
        assert_eq!(sign_in_from(&app, "10.9.9.8", OWNER_PASSWORD).await, 303);
    }
);

both_backends!(
    async fn guesses_from_one_ipv6_network_count_as_one_client(backend) {
        let app = TestApp::spawn_with(backend, |s| s.trusted_proxies = vec!["127.0.0.1".into()]).await;
        app.core.bootstrap_owner(OWNER_EMAIL, OWNER_PASSWORD).await.unwrap();
        // A /64 holds 2^64 addresses: rotating through them must not buy fresh guesses.
        let mut statuses = Vec::new();
        for i in 1..=25 {
            statuses.push(sign_in_from(&app, &format!("2001:db8:1:2::{i:x}"), "guess guess guess").await);
        }
        assert!(statuses.contains(&429), "no back-off across one /64: {statuses:?}");
        assert_eq!(
            sign_in_from(&app, "2001:db8:1:2::ffff", "guess guess guess").await,
            429,
            "a fresh address in the same /64 waits too"
        );
        assert_eq!(sign_in_from(&app, "2001:db8:9:9::1", OWNER_PASSWORD).await, 303, "another network is not blocked");
    }
);

both_backends!(
    async fn a_burst_of_parallel_guesses_gets_no_more_tries_than_a_sequence(backend) {
        let app = TestApp::spawn_with(backend, |s| s.trusted_proxies = vec!["127.0.0.1".into()]).await;
        app.core.bootstrap_owner(OWNER_EMAIL, OWNER_PASSWORD).await.unwrap();
        // Every guess loads its form first, then all are sent at once.
        let mut ready = Vec::new();
        for _ in 0..30 {
            let c = client();
            let page = c.get(app.url("/login")).header("x-forwarded-for", "10.7.7.7").send().await.unwrap().text().await.unwrap();
            ready.push((c, csrf_token(&page)));
        }
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(ready.len()));
        let mut guesses = Vec::new();
        for (c, token) in ready {
            let (url, origin, barrier) = (app.url("/login"), app.base_url.clone(), barrier.clone());
            guesses.push(tokio::spawn(async move {
                let request = c.post(url).header("x-forwarded-for", "10.7.7.7").header("origin", origin).form(&[
                    ("csrf_token", token.as_str()),
                    ("email", OWNER_EMAIL),
                    ("password", "guess guess guess"),
                ]);
                barrier.wait().await;
                request.send().await.unwrap().status().as_u16()
            }));
        }
        let mut statuses = Vec::new();
        for g in guesses {
            statuses.push(g.await.unwrap());
        }
        let tried = statuses.iter().filter(|s| **s == 401).count();
        assert!(tried <= 6, "{tried} guesses were checked: {statuses:?}");
        assert!(statuses.iter().all(|s| *s == 401 || *s == 429), "{statuses:?}");
    }
);
