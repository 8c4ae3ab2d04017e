//! Per-address limits on the endpoints that take a secret (invitation, setup and handoff
//! links, single sign-on answers) and on starting single sign-on, which writes a row.

use crate::both;
use crate::helpers::*;
use time::Duration;

/// A server that believes `X-Forwarded-For` from the test (so each request can come from an
/// address of its choosing).
async fn behind_proxy(backend: Backend) -> TestApp {
    TestApp::spawn_with(backend, |s| s.trusted_proxies = vec!["127.0.0.1".to_owned()]).await
}

/// How long a guess reserved by the tests on a core stays in flight unless settled.
const IN_FLIGHT: std::time::Duration = std::time::Duration::from_secs(60);

/// Such a server with the owner signed in and the tenant Acme, and a client of Acme's host.
async fn acme_behind_proxy(backend: Backend) -> (TestApp, TenantClient) {
    let app = behind_proxy(backend).await;
    app.sign_in_owner().await;
    app.create_tenant("Acme", "acme").await;
    let c = app.tenant_client("acme");
    (app, c)
}

async fn get_from(c: &TenantClient, path: &str, address: &str) -> reqwest::Response {
    c.client
        .get(c.url(path))
        .header("x-forwarded-for", address)
        .send()
        .await
        .unwrap()
}

/// `n` guesses at invitation links from `address`, all sent at once (each waits at a barrier
/// until every one is ready); their statuses and `Retry-After`s.
async fn burst(c: &TenantClient, address: &str, n: usize) -> Vec<(u16, Option<u64>)> {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(n));
    let mut guesses = tokio::task::JoinSet::new();
    for i in 0..n {
        let request = c
            .client
            .get(c.url(&format!("/register?token=qd_inv_burst{i}")))
            .header("x-forwarded-for", address);
        let barrier = barrier.clone();
        guesses.spawn(async move {
            barrier.wait().await;
            let r = request.send().await.unwrap();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse().unwrap());
            (r.status().as_u16(), retry)
        });
    }
    guesses.join_all().await
}

crate::both_backends!(
    async fn a_burst_of_parallel_guesses_at_a_link_gets_no_more_answers_than_the_free_misses(backend) {
        use quarterdeck_domain::core::limits::{LINK_FREE_MISSES, link_miss_key};
        let (app, c) = acme_behind_proxy(backend).await;
        let guesser = "203.0.113.30";
        let answers = burst(&c, guesser, 40).await;
        let answered = answers.iter().filter(|(s, _)| *s == 410).count();
        assert_eq!(
            answered,
            usize::try_from(LINK_FREE_MISSES).unwrap(),
            "only the free misses reach the handler, however many guesses are in flight: {answers:?}"
        );
        for (status, retry) in &answers {
            assert!(*status == 410 || *status == 429, "{answers:?}");
            if *status == 429 {
                assert!(retry.is_some_and(|r| r >= 1), "a 429 says when to come back: {answers:?}");
            }
        }
        let key = link_miss_key(guesser);
        assert_eq!(
            app.control_value(&format!("SELECT CAST(failures AS TEXT) FROM sign_in_throttle WHERE key = '{key}'"))
                .await,
            "20",
            "every answered guess is a miss on record"
        );
        assert_eq!(app.control_rows("sign_in_guess").await, 0, "no guess is left in flight");
        // The guesser backs off; another address is served.
        assert_eq!(get_from(&c, "/register?token=qd_inv_after", guesser).await.status(), 429);
        assert_eq!(get_from(&c, "/register?token=qd_inv_after", "198.51.100.30").await.status(), 410);
    }
);

crate::both_backends!(
    async fn guesses_in_flight_on_two_nodes_at_once_add_up_to_the_free_misses(backend) {
        use quarterdeck_domain::core::limits::{LINK_FREE_MISSES, link_miss_key};
        let (app, c) = acme_behind_proxy(backend).await;
        // Node B (another core on the database: its own connections, and on SQLite its own
        // writer queue) reserves guesses while node A (the app's server) is guessed at.
        let b = app.second_core(|_| {}).await;
        let guesser = "203.0.113.31";
        let on_b = async {
            let mut reserving = tokio::task::JoinSet::new();
            for _ in 0..30 {
                let b = b.clone();
                reserving.spawn(async move { b.begin_link_guess(guesser, IN_FLIGHT).await });
            }
            reserving.join_all().await
        };
        let (answers, reserved) = tokio::join!(burst(&c, guesser, 30), on_b);
        let answered = answers.iter().filter(|(s, _)| *s == 410).count();
        let mut held = Vec::new();
        for r in reserved {
            match r {
                Ok(guess) => held.push(guess),
                Err(quarterdeck_domain::Error::Throttled { retry_after_secs }) => assert!(retry_after_secs >= 1),
                Err(e) => panic!("{e}"),
            }
        }
        assert!(answers.iter().all(|(s, _)| *s == 410 || *s == 429), "{answers:?}");
        assert_eq!(
            answered + held.len(),
            usize::try_from(LINK_FREE_MISSES).unwrap(),
            "{answered} answered on A, {} in flight on B",
            held.len()
        );
        let in_flight = app.control_rows("sign_in_guess").await;
        assert_eq!(usize::try_from(in_flight).unwrap(), held.len(), "B's guesses are the ones in flight");
        // B's guesses miss too: twenty misses on record, none in flight, and both nodes refuse.
        for guess in held {
            guess.missed().await.unwrap();
        }
        let key = link_miss_key(guesser);
        assert_eq!(
            app.control_value(&format!("SELECT CAST(failures AS TEXT) FROM sign_in_throttle WHERE key = '{key}'"))
                .await,
            "20"
        );
        assert_eq!(app.control_rows("sign_in_guess").await, 0);
        let r = get_from(&c, "/register?token=qd_inv_after", guesser).await;
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "2");
        assert!(matches!(
            b.begin_link_guess(guesser, IN_FLIGHT).await,
            Err(quarterdeck_domain::Error::Throttled { retry_after_secs: 2 })
        ));
    }
);

crate::both_backends!(
    async fn opening_the_real_link_or_correcting_its_form_is_never_counted_as_a_miss(backend) {
        use quarterdeck_domain::core::limits::link_miss_key;
        let app = behind_proxy(backend).await;
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        app.invite("a@acme.example", &tid, &["admin"]).await;
        let link = app.invitation_link("a@acme.example").await;
        let real = link[link.find("/register").unwrap()..].to_owned();
        let token = real.split("token=").nth(1).unwrap().to_owned();
        let c = app.tenant_client("acme");
        let invitee = "203.0.113.32";
        let mut page = String::new();
        for i in 0..25 {
            let r = get_from(&c, &real, invitee).await;
            assert_eq!(r.status(), 200, "open {i} of the real link");
            page = r.text().await.unwrap();
        }
        // A password the form refuses (422) is no miss either.
        for i in 0..25 {
            let r = c
                .client
                .post(c.url("/register"))
                .header("x-forwarded-for", invitee)
                .header("origin", &c.origin)
                .form(&[
                    ("csrf_token", csrf_token(&page).as_str()),
                    ("token", &token),
                    ("password", "short"),
                    ("confirm", "short"),
                ])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 422, "attempt {i} at the form");
        }
        let key = link_miss_key(invitee);
        assert_eq!(
            app.control_value(&format!("SELECT CAST(count(*) AS TEXT) FROM sign_in_throttle WHERE key = '{key}' AND failures > 0"))
                .await,
            "0",
            "no miss on record"
        );
        assert_eq!(app.control_rows("sign_in_guess").await, 0, "every guess was given back");
        // So the invitee still has every free miss: twenty mistyped links, then the back-off.
        for i in 0..20 {
            assert_eq!(get_from(&c, &format!("/register?token=qd_inv_typo{i}"), invitee).await.status(), 410);
        }
        assert_eq!(get_from(&c, &real, invitee).await.status(), 429);
    }
);

crate::both_backends!(
    async fn a_guess_nobody_settles_is_given_back_when_dropped_and_lapses_when_its_node_died(backend) {
        use quarterdeck_domain::core::limits::{LINK_FREE_MISSES, link_miss_key};
        let (app, c) = acme_behind_proxy(backend).await;
        let guesser = "203.0.113.33";
        // Dropped unsettled (its request went away, its handler panicked): given back.
        let dropped = app.core.begin_link_guess(guesser, IN_FLIGHT).await.unwrap();
        assert_eq!(app.control_rows("sign_in_guess").await, 1);
        drop(dropped);
        poll_until("the dropped guess is given back", || async {
            app.control_rows("sign_in_guess").await == 0
        })
        .await;
        // Reserved by a node that then died: nothing settles them, nothing gives them back.
        for _ in 0..LINK_FREE_MISSES {
            std::mem::forget(app.core.begin_link_guess(guesser, IN_FLIGHT).await.unwrap());
        }
        let r = get_from(&c, "/register?token=qd_inv_while_held", guesser).await;
        assert_eq!(r.status(), 429, "twenty guesses in flight");
        assert_eq!(
            r.headers()["retry-after"],
            "1",
            "refused only for guesses in flight: again in a second, not after a back-off"
        );
        assert_eq!(app.control_rows("sign_in_guess").await, 20, "the refused guess was not counted");
        // Starting single sign-on carries no secret: the guesses in flight do not hold it up.
        let r = get_from(&c, "/sso/start", guesser).await;
        assert_ne!(r.status(), 429);
        assert_eq!(app.control_rows("sign_in_guess").await, 20, "and it reserved nothing");
        // Their time in flight over, they no longer count: the guesser is answered, and has
        // made one miss.
        app.clock.advance(time::Duration::try_from(IN_FLIGHT).unwrap());
        assert_eq!(get_from(&c, "/register?token=qd_inv_later", guesser).await.status(), 410);
        let key = link_miss_key(guesser);
        assert_eq!(
            app.control_value(&format!("SELECT CAST(failures AS TEXT) FROM sign_in_throttle WHERE key = '{key}'"))
                .await,
            "1"
        );
        // Housekeeping deletes the lapsed ones.
        app.core.prune_limits().await.unwrap();
        assert_eq!(app.control_rows("sign_in_guess").await, 0);
    }
);

crate::both_backends!(
    async fn guessing_links_from_one_address_is_met_with_429_while_other_addresses_are_served(backend) {
        let app = behind_proxy(backend).await;
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        app.invite("a@acme.example", &tid, &["admin"]).await;
        let link = app.invitation_link("a@acme.example").await;
        let real = link[link.find("/register").unwrap()..].to_owned();
        let c = app.tenant_client("acme");
        let guesser = "203.0.113.7";
        for i in 0..20 {
            let r = get_from(&c, &format!("/register?token=qd_inv_guess{i}"), guesser).await;
            assert_eq!(r.status(), 410, "guess {i} is simply a bad link");
        }
        for path in ["/register?token=qd_inv_guess20", "/impersonate?token=qd_guess", real.as_str()] {
            let r = get_from(&c, path, guesser).await;
            assert_eq!(r.status(), 429, "{path}: the guesser backs off, whatever it asks for");
            let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
            assert!(retry >= 1, "{retry}");
        }
        // The guesser's misses never lock out anyone else: the invitee opens the real link.
        let r = get_from(&c, &real, "198.51.100.9").await;
        assert_eq!(r.status(), 200);
        // The back-off ends.
        app.clock.advance(Duration::minutes(16));
        let r = get_from(&c, "/register?token=qd_inv_guess21", guesser).await;
        assert_eq!(r.status(), 410);
    }
);

crate::both_backends!(
    async fn handoff_and_setup_tokens_are_limited_like_invitations(backend) {
        let (app, c) = acme_behind_proxy(backend).await;
        for i in 0..20 {
            let r = get_from(&c, &format!("/impersonate?token=qd_guess{i}"), "203.0.113.8").await;
            assert!(r.status().is_client_error() && r.status() != 429, "{}", r.status());
        }
        let r = get_from(&c, "/impersonate?token=qd_guess_last", "203.0.113.8").await;
        assert_eq!(r.status(), 429);
        for i in 0..20 {
            let r = app
                .client
                .get(app.url(&format!("/setup?token=qd_setup_guess{i}")))
                .header("x-forwarded-for", "203.0.113.9")
                .send()
                .await
                .unwrap();
            assert!(r.status().is_client_error() && r.status() != 429, "{}", r.status());
        }
        let r = app
            .client
            .get(app.url("/setup?token=qd_setup_last"))
            .header("x-forwarded-for", "203.0.113.9")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 429);
    }
);

crate::both_backends!(
    async fn starting_single_sign_on_is_limited_per_address_before_any_row_is_written(backend) {
        let app = behind_proxy(backend).await;
        crate::sso::mock_tenant(&app).await;
        let c = app.tenant_client("acme");
        let before = app.control_rows("sso_attempt").await;
        for i in 0..60 {
            let r = get_from(&c, "/sso/start", "203.0.113.10").await;
            assert_eq!(r.status(), 303, "start {i}");
        }
        let r = get_from(&c, "/sso/start", "203.0.113.10").await;
        assert_eq!(r.status(), 429);
        assert!(r.headers().contains_key("retry-after"));
        assert_eq!(app.control_rows("sso_attempt").await - before, 60, "the refused start wrote nothing");
        // Another address still starts, and a new window lets the first one in again.
        assert_eq!(get_from(&c, "/sso/start", "198.51.100.10").await.status(), 303);
        app.clock.advance(Duration::minutes(1));
        assert_eq!(get_from(&c, "/sso/start", "203.0.113.10").await.status(), 303);
    }
);

both!(
    async fn the_store_keeps_at_most_the_cap_of_pending_sign_in_attempts(app) {
        use quarterdeck_domain::sso::SsoAttempt;
        use quarterdeck_domain::token::TokenHash;
        let (_acme, _mock) = crate::sso::mock_tenant(&app).await;
        let c = app.tenant_client("acme");
        assert_eq!(c.get("/sso/start").await.status(), 303);
        let provider = app
            .core
            .store()
            .identity_provider(quarterdeck_domain::user::Directory::Tenant(_acme.id.parse().unwrap()))
            .await
            .unwrap()
            .unwrap();
        let now = app.clock_now();
        let attempt = |n: u8| SsoAttempt {
            state_hash: TokenHash::of(&format!("state-{n}")),
            provider_id: provider.id,
            tenant_id: None,
            binding_hash: TokenHash::of("binding"),
            nonce: String::new(),
            pkce_verifier: String::new(),
            saml_request_id: None,
            outcome: None,
            created_at: now,
            expires_at: now + Duration::minutes(10),
        };
        // One attempt is pending already (the start above): a cap of 3 takes two more.
        assert!(app.core.store().put_sso_attempt(&attempt(1), 3).await.unwrap());
        assert!(app.core.store().put_sso_attempt(&attempt(2), 3).await.unwrap());
        assert!(!app.core.store().put_sso_attempt(&attempt(3), 3).await.unwrap());
        assert_eq!(app.control_rows("sso_attempt").await, 3);
        // The cap is per provider: another directory's sign-ins still start.
        let other = SsoAttempt {
            provider_id: uuid::Uuid::now_v7(),
            ..attempt(4)
        };
        assert!(app.core.store().put_sso_attempt(&other, 3).await.unwrap(), "one directory's full cap blocked another's");
    }
);

/// The limits keep an address under the SHA-256 (hex) of it, never the address itself.
async fn assert_no_address_in_the_clear(app: &TestApp, table: &str) {
    let sql = format!("SELECT CAST(count(*) AS TEXT) FROM {table} WHERE key LIKE '%203.0.113%'");
    assert_eq!(app.control_value(&sql).await, "0", "an address in the clear in {table}");
}

crate::both_backends!(
    async fn link_misses_on_two_nodes_add_up_to_one_limit_kept_under_a_hashed_key(backend) {
        use quarterdeck_domain::core::limits::link_miss_key;
        let (app, c) = acme_behind_proxy(backend).await;
        let b = app.second_core(|_| {}).await;
        let guesser = "203.0.113.21";
        // Ten misses reach node A (the app's server), ten node B (its core, as B's HTTP layer
        // records them).
        for i in 0..10 {
            let r = get_from(&c, &format!("/register?token=qd_inv_guess{i}"), guesser).await;
            assert_eq!(r.status(), 410, "guess {i}");
        }
        for _ in 0..10 {
            b.begin_link_guess(guesser, IN_FLIGHT).await.unwrap().missed().await.unwrap();
        }
        // Twenty misses over the cluster: A holds the address back, and so does B.
        let r = get_from(&c, "/register?token=qd_inv_guess_on_a", guesser).await;
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "2");
        assert!(matches!(
            b.begin_link_guess(guesser, IN_FLIGHT).await,
            Err(quarterdeck_domain::Error::Throttled { retry_after_secs: 2 })
        ));
        let key = link_miss_key(guesser);
        assert_eq!(key.len(), 64);
        assert_eq!(
            app.control_value(&format!("SELECT CAST(failures AS TEXT) FROM sign_in_throttle WHERE key = '{key}'"))
                .await,
            "20"
        );
        assert_no_address_in_the_clear(&app, "sign_in_throttle").await;
        // The back-off ends for both at once.
        app.clock.advance(Duration::seconds(2));
        b.begin_link_guess(guesser, IN_FLIGHT).await.unwrap().not_missed().await.unwrap();
        assert_eq!(get_from(&c, "/register?token=qd_inv_guess_later", guesser).await.status(), 410);
    }
);

crate::both_backends!(
    async fn single_sign_on_starts_on_two_nodes_share_one_budget_per_address_and_minute(backend) {
        use quarterdeck_domain::core::limits::sso_start_key;
        let app = behind_proxy(backend).await;
        crate::sso::mock_tenant(&app).await;
        let c = app.tenant_client("acme");
        let b = app.second_core(|_| {}).await;
        let address = "203.0.113.22";
        let before = app.control_rows("sso_attempt").await;
        for i in 0..30 {
            assert_eq!(get_from(&c, "/sso/start", address).await.status(), 303, "start {i} on A");
            b.count_sso_start(address).await.unwrap();
        }
        // Sixty over the cluster: the next start is refused on either node, before it writes.
        let r = get_from(&c, "/sso/start", address).await;
        assert_eq!(r.status(), 429);
        let now = app.clock_now().unix_timestamp();
        let to_next_minute = 60 - now.rem_euclid(60);
        assert_eq!(r.headers()["retry-after"], to_next_minute.to_string().as_str());
        assert!(matches!(
            b.count_sso_start(address).await,
            Err(quarterdeck_domain::Error::Throttled { .. })
        ));
        assert_eq!(app.control_rows("sso_attempt").await - before, 30, "A's refused start wrote nothing");
        let key = sso_start_key(address);
        assert_eq!(
            app.control_value(&format!(
                "SELECT CAST(hits AS TEXT) FROM limit_count WHERE counter = 'sso_start' AND key = '{key}' AND window_start = {}",
                now.div_euclid(60)
            ))
            .await,
            "60",
            "one row for the address and minute; the refused starts wrote nothing"
        );
        assert_no_address_in_the_clear(&app, "limit_count").await;
        // The next minute starts afresh on both.
        app.clock.advance(Duration::seconds(to_next_minute));
        assert_eq!(get_from(&c, "/sso/start", address).await.status(), 303);
        b.count_sso_start(address).await.unwrap();
    }
);

// PostgreSQL only (SQLite serves a data directory from one process): two real `serve`
// processes, each with its own connections, guessed at through both at once. Their clocks
// are the system's, so a guess the burst sends after the back-off of the 20th miss (2 s,
// then 4 s more) is rightly answered; the burst is sent at once, and the bound allows for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_spread_over_two_serve_processes_gets_no_more_answers_than_the_free_misses() {
    use crate::data_plane_nodes::Node;
    use quarterdeck_domain::core::limits::link_miss_key;
    let Some(app) = TestApp::spawn_pg().await else { return };
    app.sign_in_owner().await;
    app.create_tenant("Acme", "acme").await;
    let env = [
        ("QUARTERDECK_BASE_URL", app.base_url.as_str()),
        ("QUARTERDECK_TRUSTED_PROXIES", "127.0.0.1"),
    ];
    let (a, b) = tokio::join!(Node::start_with(&app, &env), Node::start_with(&app, &env));
    let host = format!("acme.{}", app.base_url.trim_start_matches("http://"));
    let guesser = "203.0.113.34";
    let client = reqwest::Client::new();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(40));
    let mut guesses = tokio::task::JoinSet::new();
    for i in 0..40 {
        let node = if i % 2 == 0 { &a } else { &b };
        let request = client
            .get(format!("{}/register?token=qd_inv_spread{i}", node.url))
            .header("host", &host)
            .header("x-forwarded-for", guesser);
        let barrier = barrier.clone();
        guesses.spawn(async move {
            barrier.wait().await;
            request.send().await.unwrap().status().as_u16()
        });
    }
    let started = std::time::Instant::now();
    let statuses = guesses.join_all().await;
    let took = started.elapsed();
    let answered = statuses.iter().filter(|s| **s == 410).count();
    assert!(statuses.iter().all(|s| *s == 410 || *s == 429), "{statuses:?}");
    // One more answer per back-off the burst outlasted (2 s, then 4 s more, …): none when it
    // took under 2 s, as it does.
    let (mut bound, mut backoffs, mut step) = (20, 0u64, 2u64);
    while took.as_secs() >= backoffs + step {
        bound += 1;
        backoffs += step;
        step *= 2;
    }
    assert!(answered <= bound, "{answered} answered in {took:?}: {statuses:?}");
    assert!(answered >= 20, "the free misses are answered: {statuses:?}");
    let key = link_miss_key(guesser);
    assert_eq!(
        app.control_value(&format!(
            "SELECT CAST(failures AS TEXT) FROM sign_in_throttle WHERE key = '{key}'"
        ))
        .await,
        answered.to_string(),
        "every answer a miss on record"
    );
    assert_eq!(app.control_rows("sign_in_guess").await, 0, "nothing left in flight");
    eprintln!("40 guesses over two nodes: {answered} answered in {took:?}");
}
