//! Observability (issue 14): `/metrics` scraped after real traffic and parsed as the
//! Prometheus text format, who may scrape it (token, separate listener, nobody), `/readyz`
//! when the control database is there, behind on migrations or gone, and the JSON request
//! completion line.

use crate::both;
use crate::both_backends;
use crate::data_plane::{api_key, owner, service_token, verify};
use crate::helpers::*;
use std::collections::{BTreeMap, HashMap};

const TOKEN: &str = "metrics-token-0123456789";

/// One sample line: `name{labels} value`.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the text exposition format strictly: every line is `# HELP name …`, `# TYPE name
/// kind`, or a sample; every sample's family has a TYPE; a TYPE comes before its samples;
/// histogram buckets are monotone and `+Inf` equals `_count`. Panics (failing the test) on
/// anything else.
fn parse(text: &str) -> Vec<Sample> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars()
                .enumerate()
                .all(|(i, c)| c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()))
    };
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest
                .split_once(' ')
                .unwrap_or_else(|| panic!("HELP without text: {line}"));
            assert!(name_ok(name) && !help.is_empty(), "{line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(name_ok(name), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "TYPE twice: {line}"
            );
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment: {line}");
        // name{labels} value
        let (name, rest) = match line.find('{') {
            Some(i) => (&line[..i], &line[i..]),
            None => line.split_at(line.find(' ').unwrap_or_else(|| panic!("no value: {line}"))),
        };
        assert!(name_ok(name), "bad name in {line}");
        let mut labels = BTreeMap::new();
        let value_text = if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices().peekable();
            let mut end = None;
            loop {
                let (i, c) = chars.next().unwrap_or_else(|| panic!("unclosed labels: {line}"));
                if c == '}' {
                    end = Some(i);
                    break;
                }
                if c == ',' {
                    continue;
                }
                let mut key = String::from(c);
                loop {
                    let (_, c) = chars.next().unwrap();
                    if c == '=' {
                        break;
                    }
                    key.push(c);
                }
                assert!(name_ok(&key), "bad label name in {line}");
                assert_eq!(chars.next().map(|x| x.1), Some('"'), "{line}");
                let mut value = String::new();
                loop {
                    let (_, c) = chars.next().unwrap_or_else(|| panic!("unclosed value: {line}"));
                    match c {
                        '"' => break,
                        '\\' => match chars.next().unwrap().1 {
                            'n' => value.push('\n'),
                            '\\' => value.push('\\'),
                            '"' => value.push('"'),
                            other => panic!("bad escape \\{other} in {line}"),
                        },
                        c => value.push(c),
                    }
                }
                assert!(labels.insert(key, value).is_none(), "label twice: {line}");
                if end.is_some() {
                    break;
                }
            }
            body[end.unwrap() + 1..].to_owned()
        } else {
            rest.to_owned()
        };
        let value_text = value_text
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("no space before value: {line}"));
        let value: f64 = match value_text {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample before/without its TYPE: {line}");
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    // Histograms: per label set, buckets monotone in `le`, `+Inf` = `_count`.
    for (family, _) in types.iter().filter(|(_, t)| *t == "histogram") {
        let mut series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
        for s in samples.iter().filter(|s| s.name == format!("{family}_bucket")) {
            let mut key = s.labels.clone();
            let le = key.remove("le").expect("a bucket has le");
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            series.entry(key).or_default().push((le, s.value));
        }
        assert!(!series.is_empty(), "histogram {family} without buckets");
        for (key, mut buckets) in series {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{family} {key:?} not monotone: {buckets:?}"
            );
            let inf = buckets.last().unwrap();
            assert!(inf.0.is_infinite(), "{family} {key:?} without +Inf");
            let count = samples
                .iter()
                .find(|s| s.name == format!("{family}_count") && s.labels == key)
                .unwrap_or_else(|| panic!("{family} {key:?} without _count"));
            assert_eq!(inf.1, count.value, "{family} {key:?}: +Inf bucket = _count");
            assert!(
                samples
                    .iter()
                    .any(|s| s.name == format!("{family}_sum") && s.labels == key),
                "{family} {key:?} without _sum"
            );
        }
    }
    samples
}

/// The value of the series `name` with exactly these labels.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    samples
        .iter()
        .find(|s| s.name == name && s.labels == want)
        .map(|s| s.value)
}

async fn scrape(url: String, bearer: Option<&str>) -> reqwest::Response {
    let mut r = reqwest::Client::new().get(url);
    if let Some(b) = bearer {
        r = r.bearer_auth(b);
    }
    r.send().await.unwrap()
}

both_backends!(
    async fn a_scrape_after_traffic_is_valid_exposition_with_each_request_sign_in_and_verification_counted(backend) {
        let app = TestApp::spawn_with(backend, |s| s.metrics_token = Some(TOKEN.into())).await;
        let owner = owner(&app).await; // one successful sign-in
        let tid = app.create_tenant("Acme", "acme").await;
        // A failed sign-in, from another browser.
        let c = client();
        let login = c.get(app.url("/login")).send().await.unwrap().text().await.unwrap();
        let r = post_form(
            &c,
            &app.url("/login"),
            &app.base_url,
            &login,
            &[("email", OWNER_EMAIL), ("password", "not the password")],
        )
        .await;
        assert_ne!(r.status(), 303);
        // Two key verifications: one valid, one unknown.
        let token = service_token(&app, &["keys:verify"], "").await;
        let (_, key) = api_key(&app, &owner, &tid, "").await;
        assert_eq!(verify(&app, &token, &key).await.1["valid"], true);
        assert_eq!(verify(&app, &token, "qd_live_nope").await.1["valid"], false);
        // A page with an id in its path.
        assert_eq!(app.get(&format!("/tenants/{tid}")).await.status(), 200);
        // A made-up method: counted, but not as a label of its own.
        reqwest::Client::new()
            .request(reqwest::Method::from_bytes(b"BREW").unwrap(), app.url("/login"))
            .send()
            .await
            .unwrap();
        // An email waiting in the outbox for a minute.
        app.invite("new@example.com", &tid, &["admin"]).await;
        app.clock.advance(time::Duration::seconds(90));

        let r = scrape(app.url("/metrics"), Some(TOKEN)).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");
        let text = r.text().await.unwrap();
        let s = parse(&text);

        let sign_ins = "quarterdeck_sign_ins_total";
        assert_eq!(value(&s, sign_ins, &[("outcome", "success")]), Some(1.0), "{text}");
        assert_eq!(value(&s, sign_ins, &[("outcome", "invalid_credentials")]), Some(1.0));
        assert_eq!(value(&s, sign_ins, &[("outcome", "throttled")]), Some(0.0));
        let keys = "quarterdeck_key_verifications_total";
        assert_eq!(value(&s, keys, &[("outcome", "valid")]), Some(1.0));
        assert_eq!(value(&s, keys, &[("outcome", "unknown")]), Some(1.0));
        assert_eq!(value(&s, keys, &[("outcome", "revoked")]), Some(0.0));

        // Requests by route template, never the path with the id.
        let req = "quarterdeck_http_requests_total";
        assert_eq!(
            value(&s, req, &[("route", "/tenants/{id}"), ("method", "GET"), ("status", "200")]),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(&s, req, &[("route", "/v1/data-plane/keys/verify"), ("method", "POST"), ("status", "200")]),
            Some(2.0)
        );
        let login_posts: f64 = s
            .iter()
            .filter(|x| x.name == req && x.labels["route"] == "/login" && x.labels["method"] == "POST")
            .map(|x| x.value)
            .sum();
        assert_eq!(login_posts, 2.0, "one success, one failure");
        let h = "quarterdeck_http_request_duration_seconds";
        assert_eq!(
            value(&s, &format!("{h}_count"), &[("route", "/tenants/{id}"), ("method", "GET")]),
            Some(1.0)
        );
        assert!(!text.contains(&tid) && !text.contains("acme"), "no ids or slugs in labels: {text}");
        assert!(!text.contains("BREW"));
        assert!(s.iter().any(|x| x.name == req && x.labels["method"] == "other"), "{text}");

        // Gauges read when scraped.
        assert_eq!(value(&s, "quarterdeck_outbox_pending", &[]), Some(app.outbox().await.len() as f64));
        assert!(value(&s, "quarterdeck_outbox_oldest_pending_age_seconds", &[]).unwrap() >= 90.0);
        assert!(value(&s, "quarterdeck_tenant_pools_open", &[]).is_some());
        assert!(value(&s, "quarterdeck_db_pool_connections", &[("state", "idle")]).is_some());
        assert!(value(&s, "quarterdeck_db_pool_connections", &[("state", "in_use")]).is_some());
        assert_eq!(value(&s, "quarterdeck_password_hash_queue_depth", &[]), Some(0.0));
        assert_eq!(value(&s, "quarterdeck_usage_events_total", &[("result", "accepted")]), Some(0.0));
        assert_eq!(value(&s, "quarterdeck_webhook_deliveries_total", &[("outcome", "success")]), Some(0.0));
        let backend_name = if backend == Backend::Sqlite { "sqlite" } else { "postgres" };
        assert_eq!(
            value(&s, "quarterdeck_build_info", &[("version", env!("CARGO_PKG_VERSION")), ("backend", backend_name)]),
            Some(1.0)
        );
        assert!(text.contains("# HELP quarterdeck_sign_ins_total "), "{text}");
        assert!(text.contains("# TYPE quarterdeck_http_request_duration_seconds histogram"), "{text}");
    }
);

both_backends!(
    async fn single_sign_ons_are_counted_by_protocol_and_outcome_beside_password_sign_ins(backend) {
        let app = TestApp::spawn_with(backend, |s| s.metrics_token = Some(TOKEN.into())).await;
        let (_acme, mock) = crate::sso::mock_tenant(&app).await;
        let sso = "quarterdeck_sso_sign_ins_total";
        let s = parse(&scrape(app.url("/metrics"), Some(TOKEN)).await.text().await.unwrap());
        let passwords_before = value(&s, "quarterdeck_sign_ins_total", &[("outcome", "success")]);
        for protocol in ["oidc", "saml"] {
            for outcome in ["success", "invalid_response", "error"] {
                assert_eq!(value(&s, sso, &[("protocol", protocol), ("outcome", outcome)]), Some(0.0), "{protocol} {outcome}");
            }
        }
        // Refused (an ID token from another issuer), signed in, and an answer to an attempt
        // nobody started (no provider known: protocol `unknown`).
        let r = crate::sso::mock_sign_in(&app, &mock, |s| s.iss = Some("https://evil.example".into())).await;
        assert_eq!(r.status(), 401);
        let r = crate::sso::mock_sign_in(&app, &mock, |_| {}).await;
        assert_eq!(location(&r), "/portal");
        let r = app.tenant_client("acme").get("/sso/oidc/callback?code=c&state=nobody-started-this").await;
        assert_ne!(r.status(), 303);

        let text = scrape(app.url("/metrics"), Some(TOKEN)).await.text().await.unwrap();
        let s = parse(&text);
        assert_eq!(value(&s, sso, &[("protocol", "oidc"), ("outcome", "success")]), Some(1.0), "{text}");
        assert_eq!(value(&s, sso, &[("protocol", "oidc"), ("outcome", "invalid_response")]), Some(1.0));
        assert_eq!(value(&s, sso, &[("protocol", "unknown"), ("outcome", "attempt_invalid")]), Some(1.0));
        assert_eq!(value(&s, sso, &[("protocol", "saml"), ("outcome", "success")]), Some(0.0));
        let total: f64 = s.iter().filter(|x| x.name == sso).map(|x| x.value).sum();
        assert_eq!(total, 3.0, "each sign-in counted once: {text}");
        // Password sign-ins are their own family, unchanged by single sign-on.
        assert_eq!(value(&s, "quarterdeck_sign_ins_total", &[("outcome", "success")]), passwords_before);
        assert!(text.contains("# HELP quarterdeck_sso_sign_ins_total "), "{text}");
    }
);

#[cfg(feature = "saml")]
both_backends!(
    async fn saml_sign_ins_are_counted_under_their_protocol(backend) {
        let app = TestApp::spawn_with(backend, |s| s.metrics_token = Some(TOKEN.into())).await;
        let (_acme, idp) = crate::sso_saml::saml_tenant(&app, true).await;
        let c = app.tenant_client("acme");
        let r = crate::sso_saml::saml_sign_in(&c, idp, "sam@acme.test", "ok").await;
        assert_eq!(location(&r), "/portal");
        let r = crate::sso_saml::saml_sign_in(&app.tenant_client("acme"), idp, "eve@acme.test", "tampered").await;
        assert_eq!(r.status(), 401);
        let text = scrape(app.url("/metrics"), Some(TOKEN)).await.text().await.unwrap();
        let s = parse(&text);
        let sso = "quarterdeck_sso_sign_ins_total";
        assert_eq!(value(&s, sso, &[("protocol", "saml"), ("outcome", "success")]), Some(1.0), "{text}");
        assert_eq!(value(&s, sso, &[("protocol", "saml"), ("outcome", "invalid_response")]), Some(1.0));
        assert_eq!(value(&s, sso, &[("protocol", "oidc"), ("outcome", "success")]), Some(0.0));
    }
);

both_backends!(
    async fn metrics_are_not_found_without_a_token_refused_with_a_wrong_one_and_open_on_their_own_listener(backend) {
        // Neither setting: nothing serves the metrics.
        let app = TestApp::spawn(backend).await;
        assert_eq!(scrape(app.url("/metrics"), None).await.status(), 404);
        assert_eq!(scrape(app.url("/metrics"), Some(TOKEN)).await.status(), 404);
        drop(app);

        // A token: only its holder.
        let app = TestApp::spawn_with(backend, |s| s.metrics_token = Some(TOKEN.into())).await;
        assert_eq!(scrape(app.url("/metrics"), None).await.status(), 401);
        assert_eq!(scrape(app.url("/metrics"), Some("metrics-token-012345678X")).await.status(), 401);
        assert_eq!(scrape(app.url("/metrics"), Some(TOKEN)).await.status(), 200);
        drop(app);

        // A separate listener: open there, and still not on the main one.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let app = TestApp::spawn_with(backend, |s| {
            s.metrics_listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
        })
        .await;
        let r = scrape(format!("http://127.0.0.1:{port}/metrics"), None).await;
        assert_eq!(r.status(), 200);
        let s = parse(&r.text().await.unwrap());
        assert!(value(&s, "quarterdeck_outbox_pending", &[]).is_some());
        assert_eq!(scrape(format!("http://127.0.0.1:{port}/login"), None).await.status(), 404);
        assert_eq!(scrape(app.url("/metrics"), None).await.status(), 404);
    }
);

/// `/readyz` now: past the second for which the server reuses its last answer.
async fn readyz(app: &TestApp) -> (u16, serde_json::Value) {
    app.clock.advance(time::Duration::seconds(2));
    let r = reqwest::Client::new().get(app.url("/readyz")).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

both!(
    async fn readyz_answers_503_with_a_reason_while_migrations_are_pending_or_the_database_is_gone(app) {
        assert_eq!(readyz(&app).await, (200, serde_json::json!({"status": "ready"})));
        // /healthz is about the process only; it stays.
        assert_eq!(app.get("/healthz").await.status(), 200);

        // The newest control migration not applied (as after deploying a binary whose
        // migrations have not run).
        app.control_exec(
            "UPDATE _sqlx_migrations SET success = false WHERE version = (SELECT max(version) FROM _sqlx_migrations)",
        )
        .await;
        let (status, body) = readyz(&app).await;
        assert_eq!((status, body["reason"].as_str()), (503, Some("migrations_pending")));
        app.control_exec("UPDATE _sqlx_migrations SET success = true").await;
        assert_eq!(readyz(&app).await.0, 200);

        // The database gone.
        match &app.pg_url {
            None => {
                // The volume lost under the process: its file is no longer where it opened it.
                let db = app.data_dir().join("control.db");
                let away = app.data_dir().join("control.db.moved");
                std::fs::rename(&db, &away).unwrap();
                let (status, body) = readyz(&app).await;
                assert_eq!((status, body["reason"].as_str()), (503, Some("database_unavailable")));
                std::fs::rename(&away, &db).unwrap();
            }
            Some(url) => {
                // No connection allowed any more, and the open ones ended.
                let name = url.rsplit('/').next().unwrap().split('?').next().unwrap().to_owned();
                let mut admin = pg_conn(&pg_admin_url().unwrap()).await;
                sqlx::query(sqlx::AssertSqlSafe(format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false")))
                    .execute(&mut admin)
                    .await
                    .unwrap();
                sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
                    .bind(&name)
                    .execute(&mut admin)
                    .await
                    .unwrap();
                let (status, body) = readyz(&app).await;
                assert_eq!((status, body["reason"].as_str()), (503, Some("database_unavailable")));
                sqlx::query(sqlx::AssertSqlSafe(format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true")))
                    .execute(&mut admin)
                    .await
                    .unwrap();
            }
        }
        poll_until("ready again", || async { readyz(&app).await.0 == 200 }).await;
    }
);

both_backends!(
    async fn json_logs_end_each_request_with_its_id_route_status_duration_and_tenant(backend) {
        let app = TestApp::spawn_with(backend, |s| s.log_format = "json".into()).await;
        app.sign_in_owner().await;
        app.create_tenant("Acme", "acme").await;
        let r = app.tenant_client("acme").get("/login").await;
        assert_eq!(r.status(), 200);
        let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        let find = || {
            app.logs
                .text()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["message"] == "request completed" && v["request_id"] == id.as_str())
        };
        poll_until("the completion line", || async { find().is_some() }).await;
        let line = find().unwrap();
        assert_eq!(line["route"], "/login", "{line}");
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["tenant"], "acme", "{line}");
        assert_eq!(line["level"], "INFO", "{line}");
        assert!(line["duration_ms"].as_f64().unwrap() >= 0.0, "{line}");
        // A request on the base host has no tenant.
        let r = app.get("/tenants").await;
        let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        poll_until("the base host's line", || async {
            app.logs.text().lines().any(|l| l.contains(&id) && l.contains("request completed"))
        })
        .await;
        let line: serde_json::Value = app
            .logs
            .text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message"] == "request completed" && v["request_id"] == id.as_str())
            .unwrap();
        assert_eq!(line["route"], "/tenants");
        assert!(line.get("tenant").is_none(), "{line}");
    }
);
