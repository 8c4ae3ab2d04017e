//! The shared limits under abuse: what a client controls (an email's length, spaces in a
//! header, a made-up token, a query string, keys by the thousand) never grows the control
//! database without bound, breaks a statement, or buys a fresh limit (a burst of new
//! idempotency keys on two nodes included); a guess nobody ends lapses on its own.

use crate::api::token;
use crate::both;
use crate::helpers::*;
use serde_json::{Value, json};
use std::time::Duration;

/// The owner signed in, and a read_write personal access token of theirs: (secret, id).
async fn owner_token_and_id(app: &TestApp) -> (String, String) {
    app.sign_in_owner().await;
    let t = token(app, "read_write", "").await;
    let id = app.events_of("PAT_CREATED").await[0].details["token_id"]
        .as_str()
        .unwrap()
        .to_owned();
    (t, id)
}

both!(
    async fn sign_ins_with_huge_unique_emails_fail_like_unknown_users_and_keep_only_hashed_keys(app) {
        let page = app.get_html("/login").await;
        let mut failed = 0;
        for i in 0..50 {
            let email = format!("{i}-{}@example.com", "a".repeat(400 * 1024));
            let r = app
                .post_form("/login", &page, &[("email", &email), ("password", "wrong password!")])
                .await;
            let status = r.status().as_u16();
            assert!(matches!(status, 401 | 429 | 422), "sign-in {i}: {status}");
            failed += i64::from(status == 401);
        }
        assert!(failed >= 20, "the address's free attempts are answered: {failed}");
        // The address, and each failed guess's pair and account: a refused guess adds no row.
        assert_eq!(app.control_rows("sign_in_throttle").await, 1 + 2 * failed);
        let longest = app
            .control_value("SELECT CAST(coalesce(max(length(key)), 0) AS TEXT) FROM sign_in_throttle")
            .await;
        assert!(longest.parse::<u32>().unwrap() <= 80, "a throttle key of {longest} characters");
        let plain = app
            .control_value("SELECT CAST(count(*) AS TEXT) FROM sign_in_throttle WHERE key LIKE '%example.com%'")
            .await;
        assert_eq!(plain, "0", "no email in the clear");
        assert_eq!(app.control_rows("sign_in_guess").await, 0, "no guess left in flight");
    }
);

both!(
    async fn bearer_headers_differing_only_in_spaces_share_one_rate_limit(app) {
        app.sign_in_owner().await;
        let t = token(&app, "read", "").await;
        let c = reqwest::Client::new();
        let mut limited = false;
        for i in 0..301 {
            let header = if i % 2 == 0 { format!("Bearer {t}") } else { format!("Bearer  {t}") };
            let r = c
                .get(app.url("/v1/admin/tenants"))
                .header("authorization", header)
                .send()
                .await
                .unwrap();
            if r.status() == 429 {
                limited = true;
                break;
            }
            assert_eq!(r.status(), 200, "request {i}");
        }
        assert!(limited, "301 requests of one token in a minute and no 429");
        // One window of one token, written by the node's flush (not per request): the 300
        // requests let through, the refused one not counted.
        poll_until("the node's counts to be flushed", || async {
            app.control_rows("api_rate").await == 1
                && app.control_value("SELECT CAST(hits AS TEXT) FROM api_rate").await == "300"
        })
        .await;
    }
);

both!(
    async fn requests_that_do_not_authenticate_write_nothing_to_the_shared_limits(app) {
        let c = reqwest::Client::new();
        for i in 0..100 {
            let bearer = format!("qd_pat_{}", uuid::Uuid::new_v4().simple());
            let req = if i % 2 == 0 {
                c.get(app.url("/v1/admin/tenants"))
            } else {
                c.post(app.url("/v1/admin/tenants"))
                    .header("idempotency-key", format!("k{i}"))
                    .json(&json!({"name": "x", "slug": "x"}))
            };
            let r = req.bearer_auth(bearer).send().await.unwrap();
            assert_eq!(r.status(), 401, "request {i}");
        }
        assert_eq!(app.control_rows("api_rate").await, 0);
        assert_eq!(app.control_rows("api_idempotency").await, 0);
    }
);

both!(
    async fn idempotency_keeps_a_digest_no_404_and_at_most_a_thousand_keys_per_token(app) {
        let (t, token_id) = owner_token_and_id(&app).await;
        let c = reqwest::Client::new();
        let big = "q".repeat(32 * 1024);
        // An unmatched route: its 404 is not kept.
        let r = c
            .post(app.url(&format!("/v1/admin/nothing?{big}")))
            .bearer_auth(&t)
            .header("idempotency-key", "k-404")
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        assert_eq!(app.control_rows("api_idempotency").await, 0, "a 404 is not kept");
        // A kept reply is bound to a digest of the request, not the request.
        let r = c
            .post(app.url(&format!("/v1/admin/tenants?{big}")))
            .bearer_auth(&t)
            .header("idempotency-key", "k-create")
            .json(&json!({"name": "Acme", "slug": "acme"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        assert_eq!(
            app.control_value("SELECT CAST(max(length(request)) AS TEXT) FROM api_idempotency").await,
            "64"
        );
        assert_eq!(
            app.control_value("SELECT CAST(count(*) AS TEXT) FROM api_idempotency").await,
            "1"
        );
        // 999 more live keys (as if sent over the day): the token is at its cap.
        fill_keys(&app, &token_id, 999).await;
        let r = c
            .post(app.url("/v1/admin/tenants"))
            .bearer_auth(&t)
            .header("idempotency-key", "one-too-many")
            .json(&json!({"name": "Beta", "slug": "beta"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 429);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "idempotency_limit", "{body}");
        assert_eq!(app.control_rows("api_idempotency").await, 1000);
        // A key it holds still replays; a request without a key still runs.
        let r = c
            .post(app.url(&format!("/v1/admin/tenants?{big}")))
            .bearer_auth(&t)
            .header("idempotency-key", "k-create")
            .json(&json!({"name": "Acme", "slug": "acme"}))
            .send()
            .await
            .unwrap();
        assert_eq!((r.status().as_u16(), r.headers().get("idempotent-replayed").is_some()), (201, true));
        let r = c
            .post(app.url("/v1/admin/tenants"))
            .bearer_auth(&t)
            .json(&json!({"name": "Beta", "slug": "beta"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
);

/// `n` live keys of the token (kept replies, as if sent over the day), written directly.
async fn fill_keys(app: &TestApp, token_id: &str, n: u32) {
    let fill = if app.pg_url.is_some() {
        format!(
            "INSERT INTO api_idempotency (token_hash, key, request, holder, reserved_until, status, expires_at) \
             SELECT '{token_id}', 'fill-' || g, 'x', gen_random_uuid(), now(), 200, now() + interval '1 day' \
             FROM generate_series(1, {n}) g"
        )
    } else {
        format!(
            "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {n}) \
             INSERT INTO api_idempotency (token_hash, key, request, holder, reserved_until, status, expires_at) \
             SELECT '{token_id}', 'fill-' || n, 'x', randomblob(16), 0, 200, 9000000000000000 FROM g"
        )
    };
    app.control_exec(&fill).await;
}

both!(
    async fn parallel_new_idempotency_keys_never_take_a_token_past_its_thousand_live_keys_on_any_node(app) {
        use quarterdeck_domain::core::{IDEMPOTENCY_KEYS_PER_TOKEN, IdempotencyStart};
        const FREE: usize = 8;
        const OVER_HTTP: usize = 40;
        const ON_SECOND_NODE: usize = 16;
        let (t, token_id) = owner_token_and_id(&app).await;
        let cap = usize::try_from(IDEMPOTENCY_KEYS_PER_TOKEN).unwrap();
        fill_keys(&app, &token_id, u32::try_from(cap - FREE).unwrap()).await;
        // Another node on the same database (its own connections, and on SQLite its own
        // writer queue): reservations there race the server's.
        let second = app.second_core(|_| {}).await;

        // The burst: new keys over HTTP and on the second node at once, while the table's
        // rows are counted over and over.
        let done = std::sync::atomic::AtomicBool::new(false);
        let burst = async {
            let mut http = tokio::task::JoinSet::new();
            for i in 0..OVER_HTTP {
                // A request the handler refuses (422): its reply is kept, so its key stays live.
                let r = app
                    .client
                    .post(app.url("/v1/admin/tenants"))
                    .bearer_auth(&t)
                    .header("idempotency-key", format!("burst-{i}"))
                    .json(&json!({"name": "", "slug": format!("-{i}-")}));
                http.spawn(async move {
                    let r = r.send().await.unwrap();
                    (r.status().as_u16(), r.json::<Value>().await.unwrap())
                });
            }
            let mut on_second = tokio::task::JoinSet::new();
            for i in 0..ON_SECOND_NODE {
                let (second, token_id) = (second.clone(), token_id.clone());
                on_second.spawn(async move {
                    second
                        .start_idempotent(&token_id, &format!("second-{i}"), "POST /v1/admin/tenants", Duration::from_secs(60))
                        .await
                        .unwrap()
                });
            }
            let answers = http.join_all().await;
            let reserved = on_second.join_all().await;
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            (answers, reserved)
        };
        let sampler = async {
            let (mut most, mut samples) = (0, 0);
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                most = most.max(app.control_rows("api_idempotency").await);
                samples += 1;
            }
            (most, samples)
        };
        let ((answers, reserved), (most, samples)) = tokio::join!(burst, sampler);

        let mut admitted = 0;
        for (status, body) in answers {
            match status {
                422 => admitted += 1,
                429 => assert_eq!(body["error"]["code"], "idempotency_limit", "{body}"),
                other => panic!("{other}: {body}"),
            }
        }
        for r in reserved {
            match r {
                IdempotencyStart::Run(_) => admitted += 1,
                IdempotencyStart::Full => {}
                other => panic!("{other:?}"),
            }
        }
        let rows = app.control_rows("api_idempotency").await;
        eprintln!(
            "[{:?}] {admitted} of {} new keys admitted; at most {most} rows in {samples} counts during the burst",
            app.backend,
            OVER_HTTP + ON_SECOND_NODE
        );
        assert_eq!(admitted, FREE, "exactly the free keys are taken");
        assert_eq!(rows, IDEMPOTENCY_KEYS_PER_TOKEN as i64, "the token holds exactly its cap");
        assert!(most <= IDEMPOTENCY_KEYS_PER_TOKEN as i64, "{most} rows during the burst");
    }
);

both!(
    async fn a_guess_nobody_ends_lapses_on_its_own_however_busy_its_address(app) {
        let address = "192.0.2.9";
        let start = app.clock_now();
        // 21 guesses from one address, on as many accounts, whose node died mid-guess.
        for i in 0..21 {
            let guess = app.core.begin_guess(&format!("acct-{i}"), address, start).await.unwrap();
            std::mem::forget(guess);
        }
        assert_eq!(app.control_rows("sign_in_guess").await, 42, "pair and address of each");
        // Another guess every 50 s: refused while the stale ones count, and counted itself
        // only if admitted.
        app.clock.advance(time::Duration::seconds(50));
        let refused = app.core.begin_guess("acct-x", address, app.clock_now()).await;
        assert!(refused.is_err(), "22 in flight on one address");
        assert_eq!(app.control_rows("sign_in_guess").await, 42, "a refused guess is not counted");
        app.clock.advance(time::Duration::seconds(50));
        let admitted = app.core.begin_guess("acct-x", address, app.clock_now()).await;
        assert!(admitted.is_ok(), "60 s after the stale guesses began they count no more");
        // A guess dropped before its outcome was written is given back. (Its rows are the
        // ones that end past the stale ones: housekeeping may delete the lapsed ones meanwhile.)
        let later = start + time::Duration::seconds(100);
        let sql = if app.pg_url.is_some() {
            format!(
                "SELECT CAST(count(*) AS text) FROM sign_in_guess WHERE until > to_timestamp({})",
                later.unix_timestamp()
            )
        } else {
            format!(
                "SELECT CAST(count(*) AS TEXT) FROM sign_in_guess WHERE until > {}",
                later.unix_timestamp_nanos() / 1000
            )
        };
        assert_eq!(app.control_value(&sql).await, "2", "pair and address of the admitted guess");
        drop(admitted);
        poll_until("the dropped guess to be given back", || async { app.control_value(&sql).await == "0" }).await;
    }
);
