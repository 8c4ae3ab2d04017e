//! Sign-in, sessions, cookies, CSRF and throttling.

use crate::helpers::*;
use crate::{both, both_backends};

both!(
    async fn signing_in_lands_on_the_dashboard_and_records_the_event(app) {
        let dash = app.sign_in_owner().await;
        assert!(dash.contains("<h1>Dashboard</h1>"));
        let ok = app.events_of("SIGN_IN_SUCCEEDED").await;
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].actor_email.as_deref(), Some(OWNER_EMAIL));
    }
);

both!(
    async fn an_unknown_email_and_a_wrong_password_get_the_same_answer(app) {
        app.core.bootstrap_owner(OWNER_EMAIL, OWNER_PASSWORD).await.unwrap();
        let page = app.get_html("/login").await;

        let unknown = app.post_form("/login", &page, &[("email", "nobody@example.com"), ("password", "wrong password!")]).await;
        let wrong = app.post_form("/login", &page, &[("email", OWNER_EMAIL), ("password", "wrong password!")]).await;

        assert_eq!(unknown.status(), 401);
        assert_eq!(unknown.status(), wrong.status());
        let mut h1: Vec<_> = unknown.headers().keys().map(|k| k.as_str().to_owned()).collect();
        let mut h2: Vec<_> = wrong.headers().keys().map(|k| k.as_str().to_owned()).collect();
        h1.sort();
        h2.sort();
        assert_eq!(h1, h2);
        let (b1, b2) = (unknown.text().await.unwrap(), wrong.text().await.unwrap());
        assert_eq!(b1.replace("nobody@example.com", OWNER_EMAIL), b2, "only the echoed email differs");
        assert!(b1.contains("The email or password is incorrect"));
        assert_eq!(app.events_of("SIGN_IN_FAILED").await.len(), 2);
    }
);

both!(
    async fn the_session_id_changes_at_sign_in_and_the_cookie_is_host_only_and_httponly(app) {
        app.core.bootstrap_owner(OWNER_EMAIL, OWNER_PASSWORD).await.unwrap();
        // A fixated id set before sign-in …
        let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
        let url: url::Url = app.base_url.parse().unwrap();
        jar.add_cookie_str("qd_session=attacker-chosen-id", &url);
        let client = reqwest::Client::builder()
            .cookie_provider(jar.clone())
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let page = client.get(app.url("/login")).send().await.unwrap().text().await.unwrap();
        let r = client
            .post(app.url("/login"))
            .form(&[("csrf_token", csrf_token(&page).as_str()), ("email", OWNER_EMAIL), ("password", OWNER_PASSWORD)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
        let cookies = set_cookies(r.headers());
        let session = cookies.iter().find(|c| c.starts_with("qd_session=")).unwrap();
        // … is not the one after.
        assert!(!session.starts_with("qd_session=attacker-chosen-id"));
        assert!(session.contains("HttpOnly"));
        assert!(session.contains("SameSite=Lax"));
        assert!(session.contains("Path=/"));
        assert!(!session.to_ascii_lowercase().contains("domain="), "host-only: {session}");
        assert!(!session.contains("Secure"), "http base URL: no Secure flag");
        // The fixated id is worthless.
        let fixated = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let r = fixated.get(app.url("/")).header("cookie", "qd_session=attacker-chosen-id").send().await.unwrap();
        assert_eq!(r.status(), 303);
    }
);

/// The `Set-Cookie` of `name` in a response.
fn set_cookie(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no Set-Cookie for {name}: {:?}", r.headers()))
}

fn cookie_value(set_cookie: &str) -> &str {
    set_cookie.split(';').next().unwrap().split_once('=').unwrap().1
}

both_backends!(
    async fn on_https_the_session_cookie_is_secure_with_the_host_prefix(backend) {
        // TLS ends at a proxy in front: the server speaks http, its base URL says https.
        let app = TestApp::spawn_with(backend, |s| {
            s.base_url = format!("https://localhost:{}", s.listen.port()).parse().unwrap();
        })
        .await;
        app.core.bootstrap_owner(OWNER_EMAIL, OWNER_PASSWORD).await.unwrap();
        let origin = format!("https://localhost:{}", app.port());
        let plain = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();

        let page = plain.get(app.url("/login")).send().await.unwrap();
        let csrf_cookie = set_cookie(&page, "__Host-qd_csrf");
        for flag in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
            assert!(csrf_cookie.contains(flag), "{flag}: {csrf_cookie}");
        }
        let csrf = cookie_value(&csrf_cookie).to_owned();
        let html = page.text().await.unwrap();
        let r = plain
            .post(app.url("/login"))
            .header("origin", &origin)
            .header("cookie", format!("__Host-qd_csrf={csrf}"))
            .form(&[("csrf_token", csrf_token(&html).as_str()), ("email", OWNER_EMAIL), ("password", OWNER_PASSWORD)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
        let session = set_cookie(&r, "__Host-qd_session");
        let attributes: Vec<&str> = session.split(';').skip(1).map(str::trim).collect();
        for flag in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
            assert!(attributes.contains(&flag), "{flag}: {session}");
        }
        assert!(!session.to_ascii_lowercase().contains("domain="), "host-only: {session}");
        assert!(r.headers().get_all("set-cookie").iter().all(|c| !c.to_str().unwrap().starts_with("qd_session=")), "no unprefixed cookie");
        // The cookie is the session.
        let home = plain
            .get(app.url("/"))
            .header("cookie", format!("__Host-qd_session={}", cookie_value(&session)))
            .send()
            .await
            .unwrap();
        assert_eq!(home.status(), 200);
        let unprefixed = plain
            .get(app.url("/"))
            .header("cookie", format!("qd_session={}", cookie_value(&session)))
            .send()
            .await
            .unwrap();
        assert_eq!(unprefixed.status(), 303, "only the prefixed name is read");
    }
);

both!(
    async fn signing_out_ends_the_session_on_the_server(app) {
        app.sign_in_owner().await;
        let dash = app.get_html("/").await;
        let cookie_before = app.client.get(app.url("/")).send().await.unwrap();
        assert_eq!(cookie_before.status(), 200);
        let r = app.post_form("/logout", &dash, &[]).await;
        assert_eq!(r.status(), 303);
        assert_eq!(location(&r), "/login");
        assert_eq!(app.get("/").await.status(), 303);
        assert_eq!(app.events_of("SIGNED_OUT").await.len(), 1);
    }
);

both!(
    async fn a_stolen_cookie_dies_with_sign_out(app) {
        app.core.bootstrap_owner(OWNER_EMAIL, OWNER_PASSWORD).await.unwrap();
        let page = app.get_html("/login").await;
        let r = app.post_form("/login", &page, &[("email", OWNER_EMAIL), ("password", OWNER_PASSWORD)]).await;
        let cookie = set_cookies(r.headers()).into_iter().find(|c| c.starts_with("qd_session=")).unwrap();
        let value = cookie.split(';').next().unwrap().to_owned();
        let thief = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        assert_eq!(thief.get(app.url("/")).header("cookie", &value).send().await.unwrap().status(), 200);
        let dash = app.get_html("/").await;
        app.post_form("/logout", &dash, &[]).await;
        assert_eq!(thief.get(app.url("/")).header("cookie", &value).send().await.unwrap().status(), 303);
    }
);

both!(
    async fn sessions_end_after_the_idle_and_the_absolute_timeouts(app) {
        app.sign_in_owner().await;
        app.clock.advance(time::Duration::minutes(29));
        assert_eq!(app.get("/").await.status(), 200, "activity within the idle limit keeps it alive");
        app.clock.advance(time::Duration::minutes(31));
        assert_eq!(app.get("/").await.status(), 303, "idle too long");

        app.sign_in(OWNER_EMAIL, OWNER_PASSWORD).await;
        for _ in 0..25 {
            app.clock.advance(time::Duration::minutes(29));
            if app.get("/").await.status() != 200 {
                break;
            }
        }
        assert_eq!(app.get("/").await.status(), 303, "12 hours is the absolute limit");
    }
);

both!(
    async fn unsafe_requests_without_a_valid_csrf_token_or_from_another_site_are_refused(app) {
        app.sign_in_owner().await;
        let before = app.event_types().await.len();
        let form = [("name", "Evil"), ("slug", "evil"), ("region", "eu-west"), ("tier", "standard")];

        // No token.
        let r = app.client.post(app.url("/tenants")).form(&form).send().await.unwrap();
        assert_eq!(r.status(), 403);
        // A wrong token.
        let mut with_wrong = vec![("csrf_token", "forged")];
        with_wrong.extend_from_slice(&form);
        let r = app.client.post(app.url("/tenants")).form(&with_wrong).send().await.unwrap();
        assert_eq!(r.status(), 403);
        // Another session's token.
        let other = TestApp::spawn(Backend::Sqlite).await;
        other.sign_in_owner().await;
        let foreign = csrf_token(&other.get_html("/").await);
        let mut with_foreign = vec![("csrf_token", foreign.as_str())];
        with_foreign.extend_from_slice(&form);
        let r = app.client.post(app.url("/tenants")).form(&with_foreign).send().await.unwrap();
        assert_eq!(r.status(), 403);
        // The right token, but a cross-site Origin or Sec-Fetch-Site.
        let page = app.get_html("/tenants/new").await;
        let token = csrf_token(&page);
        let mut good = vec![("csrf_token", token.as_str())];
        good.extend_from_slice(&form);
        let r = app.client.post(app.url("/tenants")).header("origin", "https://evil.example").form(&good).send().await.unwrap();
        assert_eq!(r.status(), 403);
        let r = app.client.post(app.url("/tenants")).header("sec-fetch-site", "cross-site").form(&good).send().await.unwrap();
        assert_eq!(r.status(), 403);

        // Nothing changed.
        assert_eq!(app.event_types().await.len(), before);
        let (tenants, _) = app.core.store().list_tenants(&Default::default()).await.unwrap();
        assert!(tenants.is_empty());
        // And the token works when it is right.
        let r = app.client.post(app.url("/tenants")).header("origin", &app.base_url).form(&good).send().await.unwrap();
        assert_eq!(r.status(), 303);
    }
);

both!(
    async fn sign_in_without_the_anonymous_csrf_cookie_is_refused(app) {
        app.core.bootstrap_owner(OWNER_EMAIL, OWNER_PASSWORD).await.unwrap();
        let page = app.get_html("/login").await;
        let fresh = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let r = fresh
            .post(app.url("/login"))
            .form(&[("csrf_token", csrf_token(&page).as_str()), ("email", OWNER_EMAIL), ("password", OWNER_PASSWORD)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
    }
);

both!(
    async fn repeated_failures_are_throttled_and_the_owner_gets_back_in_after_the_back_off(app) {
        app.core.bootstrap_owner(OWNER_EMAIL, OWNER_PASSWORD).await.unwrap();
        let page = app.get_html("/login").await;
        for _ in 0..6 {
            let r = app.post_form("/login", &page, &[("email", OWNER_EMAIL), ("password", "guess guess guess")]).await;
            assert_eq!(r.status(), 401);
        }
        let r = app.post_form("/login", &page, &[("email", OWNER_EMAIL), ("password", OWNER_PASSWORD)]).await;
        assert_eq!(r.status(), 429, "even the right password waits out the back-off");
        assert!(r.headers().get("retry-after").is_some());
        // Unknown accounts are throttled the same way (nothing to learn from a 429).
        for _ in 0..6 {
            app.post_form("/login", &page, &[("email", "nobody@example.com"), ("password", "guess guess guess")]).await;
        }
        let r = app.post_form("/login", &page, &[("email", "nobody@example.com"), ("password", "guess")]).await;
        assert_eq!(r.status(), 429);

        app.clock.advance(time::Duration::seconds(3));
        let r = app.post_form("/login", &page, &[("email", OWNER_EMAIL), ("password", OWNER_PASSWORD)]).await;
        assert_eq!(r.status(), 303, "the victim gets in after the back-off");
    }
);

both!(
    async fn pages_need_a_session_and_the_way_back_is_kept(app) {
        let r = app.get("/tenants?page=2").await;
        assert_eq!(r.status(), 303);
        assert_eq!(location(&r), "/login?next=%2Ftenants%3Fpage%3D2");
        let r = app.get("/login?next=//evil.example").await;
        let html = r.text().await.unwrap();
        assert!(html.contains("name=\"next\" value=\"/\""), "an off-site next is dropped");
    }
);

both!(
    async fn changing_the_password_ends_the_other_sessions(app) {
        app.sign_in_owner().await;
        let other = client();
        let page = other.get(app.url("/login")).send().await.unwrap().text().await.unwrap();
        other
            .post(app.url("/login"))
            .form(&[("csrf_token", csrf_token(&page).as_str()), ("email", OWNER_EMAIL), ("password", OWNER_PASSWORD)])
            .send()
            .await
            .unwrap();
        assert_eq!(other.get(app.url("/")).send().await.unwrap().status(), 200);

        let settings = app.get_html("/settings").await;
        let bad = app
            .post_form("/settings/password", &settings, &[("current_password", "wrong"), ("new_password", "a new long passphrase"), ("confirm", "a new long passphrase")])
            .await;
        assert_eq!(bad.status(), 422);
        assert!(bad.text().await.unwrap().contains("The current password is not correct."));
        let r = app
            .post_form("/settings/password", &settings, &[("current_password", OWNER_PASSWORD), ("new_password", "a new long passphrase"), ("confirm", "a new long passphrase")])
            .await;
        assert_eq!(r.status(), 303);

        assert_eq!(app.get("/").await.status(), 200, "this session stays");
        assert_eq!(other.get(app.url("/")).send().await.unwrap().status(), 303, "the other one ended");
        assert_eq!(app.events_of("PASSWORD_CHANGED").await.len(), 1);
        let dash = app.get_html("/").await;
        app.post_form("/logout", &dash, &[]).await;
        app.sign_in(OWNER_EMAIL, "a new long passphrase").await;
    }
);

both!(
    async fn pages_carry_security_headers(app) {
        let r = app.get("/login").await;
        let h = r.headers();
        assert!(h["content-security-policy"].to_str().unwrap().contains("default-src 'self'"));
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert_eq!(h["cache-control"], "no-store");
    }
);

both!(
    async fn another_host_gets_a_plain_not_found(app) {
        let r = app.client.get(app.url("/login")).header("host", "evil.example").send().await.unwrap();
        assert_eq!(r.status(), 404);
    }
);
