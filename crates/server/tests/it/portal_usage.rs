//! The portal's Usage and Cost pages (issue 12): usage sent through the data plane shows on
//! the tenant admin's pages as a chart, tables, a CSV and priced months against the budget;
//! members who may not read usage get neither the pages nor the links.

use crate::both;
use crate::data_plane::{api_key, owner, service_token, verify};
use crate::helpers::*;
use crate::portal_data_plane::member;
use crate::usage::{send, tokens, until_tokens};
use quarterdeck_domain::access::{ManageApiKeys, ManageBudgets};
use quarterdeck_domain::api_key::NewApiKeyRequest;
use quarterdeck_domain::budget::BudgetRequest;
use quarterdeck_domain::usage::Month;
use quarterdeck_domain::{Principal, TenantId};
use serde_json::json;
use time::Duration;

/// Acme with its admin's browser, two keys (`ci`, and one named `=cmd`) and 2.6 M tokens of
/// today: 2 M of gpt-4o (1 M per key), 600 k of gpt-4o-mini (400 k by `ci`, 200 k sent for
/// the tenant itself).
struct Acme {
    tid: String,
    tenant: TenantId,
    owner: Principal,
    admin: TenantClient,
    ci: uuid::Uuid,
    ci_secret: String,
    cmd: uuid::Uuid,
    token: String,
}

async fn acme_with_usage(app: &TestApp) -> Acme {
    let owner = owner(app).await;
    let tid = app.create_tenant("Acme", "acme").await;
    let tenant: TenantId = tid.parse().unwrap();
    let admin = app.tenant_admin(&tid, "acme", "ada@acme.example").await;
    let (ci, ci_secret) = api_key(app, &owner, &tid, "").await;
    let auth = owner.require_for_tenant::<ManageApiKeys>(tenant).unwrap();
    let req = NewApiKeyRequest {
        name: "=cmd".into(),
        scopes: vec!["read".into()],
        expires_in_days: String::new(),
        requests_per_minute: String::new(),
    };
    let (cmd, _) = app.core.create_api_key(&auth, req).await.unwrap();
    let token = service_token(app, &["usage:write", "keys:verify"], "").await;
    let batch = json!([
        tokens("u1", &ci.to_string(), 1_000_000, "gpt-4o"),
        tokens("u2", &ci.to_string(), 400_000, "gpt-4o-mini"),
        tokens("u3", &cmd.id.to_string(), 1_000_000, "gpt-4o"),
        tokens("u4", &tid, 200_000, "gpt-4o-mini"),
    ]);
    let (status, body) = send(app, &token, &batch).await;
    assert_eq!((status, body["accepted"].as_u64()), (200, Some(4)), "{body}");
    until_tokens(app, &owner, tenant, 2_600_000).await;
    Acme {
        tid,
        tenant,
        owner,
        admin,
        ci,
        ci_secret,
        cmd: cmd.id,
        token,
    }
}

/// The `<section id="{id}">` of a page, up to its end.
fn section<'a>(page: &'a str, id: &str) -> &'a str {
    let start = page
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the page:\n{page}"));
    let rest = &page[start..];
    &rest[..rest.find("</section>").unwrap_or(rest.len())]
}

/// A table row's cells, as the templates write them.
fn row(cells: &[&str]) -> String {
    let mut out = String::from("<tr>");
    for (i, c) in cells.iter().enumerate() {
        if i == 0 {
            out.push_str(&format!("<td>{c}</td>"));
        } else {
            out.push_str(&format!("<td class=\"num\">{c}</td>"));
        }
    }
    out.push_str("</tr>");
    out
}

both!(
    async fn the_usage_page_charts_each_day_and_breaks_the_total_down_by_model_and_key(app) {
        let acme = acme_with_usage(&app).await;
        let page = acme.admin.get_html("/portal/usage").await;

        // The last 30 days ending today, in the form.
        let today = app.clock_now().date();
        let from = today - Duration::days(29);
        assert!(page.contains(&format!("id=\"usage-from\" type=\"date\" name=\"from\" value=\"{from}\"")), "{page}");
        assert!(page.contains(&format!("id=\"usage-to\" type=\"date\" name=\"to\" value=\"{today}\"")));
        assert!(page.contains("Up to date as of ") && page.contains(" s ago)"), "freshness");
        let csv = format!("href=\"/portal/usage.csv?from={from}&#38;to={today}\"");
        assert!(page.contains(&csv), "CSV link {csv}: {}", &page[page.find("usage.csv").unwrap_or(0)..][..80]);

        // Tokens: a chart with a bar per day, its name in words, and the same numbers beneath.
        let tokens = section(&page, "meter-llm-tokens");
        assert!(tokens.contains("<svg class=\"chart\"") && tokens.contains("role=\"img\""));
        assert_eq!(tokens.matches("<rect class=\"chart-bar\"").count(), 30, "one bar per day");
        assert!(tokens.contains(&format!(
            "LLM tokens per day from {from} to {today}: 2,600,000 tokens in all; the most, 2,600,000 tokens, on {today}."
        )));
        assert!(tokens.contains(&format!("<title>{today}: 2,600,000 tokens</title>")), "the bar's tooltip");
        assert!(tokens.contains(&format!("<title>{from}: 0 tokens</title>")));
        assert!(tokens.contains(&format!(
            "<td class=\"mono\">{today}</td><td class=\"num\">2,600,000 tokens</td><td class=\"num\">4</td>"
        )));
        assert!(tokens.contains(&format!("<td class=\"mono\">{from}</td><td class=\"num\">0 tokens</td><td class=\"num\">0</td>")));
        assert!(tokens.contains("<th scope=\"row\">Total</th><td class=\"num\">2,600,000 tokens</td><td class=\"num\">4</td>"));
        assert!(tokens.contains(&row(&["model=gpt-4o", "2,000,000 tokens", "76 %", "2"])), "{tokens}");
        assert!(tokens.contains(&row(&["model=gpt-4o-mini", "600,000 tokens", "23 %", "2"])));
        assert!(tokens.contains(&row(&["ci", "1,400,000 tokens", "53 %", "2"])));
        assert!(tokens.contains(&row(&["=cmd", "1,000,000 tokens", "38 %", "1"])));
        assert!(tokens.contains(&row(&["(the tenant itself)", "200,000 tokens", "7 %", "1"])));

        // Requests: nothing used, said so.
        let requests = section(&page, "meter-api-requests");
        assert!(requests.contains(&format!("No API requests from {from} to {today}.")), "{requests}");
        assert!(!requests.contains("<svg"));

        // One day: one bar.
        let page = acme.admin.get_html(&format!("/portal/usage?from={today}&to={today}")).await;
        assert_eq!(section(&page, "meter-llm-tokens").matches("<rect class=\"chart-bar\"").count(), 1);
    }
);

both!(
    async fn a_range_ending_before_it_starts_is_refused_next_to_the_field_and_kept(app) {
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        let admin = app.tenant_admin(&tid, "acme", "ada@acme.example").await;

        let r = admin.get("/portal/usage?from=2026-03-10&to=2026-03-01").await;
        assert_eq!(r.status(), 422);
        let page = r.text().await.unwrap();
        assert!(page.contains("Check the dates marked below."));
        assert!(page.contains("value=\"2026-03-10\"") && page.contains("value=\"2026-03-01\""), "kept");
        assert!(page.contains("name=\"to\" value=\"2026-03-01\" aria-invalid=\"true\" aria-describedby=\"usage-to-error\">"), "{page}");
        assert!(page.contains("<p class=\"field-error\" id=\"usage-to-error\">The end date is before the start date.</p>"));
        assert!(!page.contains("<svg class=\"chart\""));

        let r = admin.get("/portal/usage?from=yesterday&to=2026-03-01").await;
        assert_eq!(r.status(), 422);
        let page = r.text().await.unwrap();
        assert!(page.contains("id=\"usage-from-error\">Enter a date as YYYY-MM-DD"), "{page}");
        assert!(page.contains("value=\"yesterday\""));
        assert!(!page.contains("usage-to-error"), "only the bad field is marked");

        // Too long a span, and the CSV says the same.
        let r = admin.get("/portal/usage?from=2024-01-01&to=2026-01-01").await;
        assert_eq!(r.status(), 422);
        assert!(r.text().await.unwrap().contains("Choose at most 366 days."));
        assert_eq!(admin.get("/portal/usage.csv?from=2026-03-10&to=2026-03-01").await.status(), 422);

        // A range with nothing in it.
        let page = admin.get_html("/portal/usage?from=2020-01-01&to=2020-01-31").await;
        assert!(page.contains("No usage from 2020-01-01 to 2020-01-31"), "{page}");
    }
);

both!(
    async fn the_csv_lists_each_day_meter_model_and_key_with_formulas_neutralised(app) {
        let acme = acme_with_usage(&app).await;
        let today = app.clock_now().date();
        let r = acme.admin.get(&format!("/portal/usage.csv?from={today}&to={today}")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "text/csv; charset=utf-8");
        assert_eq!(
            r.headers()["content-disposition"].to_str().unwrap(),
            format!("attachment; filename=\"usage-acme-{today}-{today}.csv\"")
        );
        let body = r.text().await.unwrap();
        // Rows by model, then key id ("" for the tenant itself).
        let mut gpt4o = [(acme.ci.to_string(), "ci"), (acme.cmd.to_string(), "'=cmd")];
        gpt4o.sort();
        let mut want = String::from("date,meter,dimensions,api_key_id,api_key_name,value,events\r\n");
        for (id, name) in gpt4o {
            want.push_str(&format!("{today},llm.tokens,model=gpt-4o,{id},{name},1000000,1\r\n"));
        }
        want.push_str(&format!("{today},llm.tokens,model=gpt-4o-mini,,(the tenant itself),200000,1\r\n"));
        want.push_str(&format!("{today},llm.tokens,model=gpt-4o-mini,{},ci,400000,1\r\n", acme.ci));
        assert_eq!(body, want);
    }
);

both!(
    async fn the_cost_page_prices_the_month_and_shows_the_budget_until_it_stops_the_keys(app) {
        let acme = acme_with_usage(&app).await;
        let month = Month::of(app.clock_now());

        // USD 2.50 per million tokens: 2 M of gpt-4o is USD 5.00, 600 k of mini USD 1.50.
        let page = acme.admin.get_html("/portal/cost").await;
        let current = section(&page, &format!("month-{month}"));
        assert!(current.contains(&format!("{} to date", month.label())));
        assert!(current.contains("<strong class=\"cost-total\">USD 6.50</strong>"), "{current}");
        let line = |dims: &str, q: &str, cost: &str| {
            format!(
                "<tr><td>LLM tokens</td><td>{dims}</td><td class=\"num\">{q}</td><td class=\"num\">USD 2.50 / 1,000,000 tokens</td><td class=\"num\">{cost}</td></tr>"
            )
        };
        assert!(current.contains(&line("model=gpt-4o", "2,000,000 tokens", "USD 5.00")));
        assert!(current.contains(&line("model=gpt-4o-mini", "600,000 tokens", "USD 1.50")));
        let previous = section(&page, "previous-months");
        assert_eq!(previous.matches("<td class=\"num\">USD 0.00</td>").count(), 5, "{previous}");
        assert!(previous.contains(&month.previous().label()));
        assert!(section(&page, "budget").contains("No budget is set"));
        assert!(page.contains("Up to date as of "));

        // A hard budget of USD 10.00: 65 % spent.
        let billing = acme.owner.require::<ManageBudgets>().unwrap();
        let req = BudgetRequest {
            amount: "10".into(),
            threshold_percent: String::new(),
            hard_limit: true,
        };
        app.core.set_budget(&billing, acme.tenant, &req).await.unwrap();
        let page = acme.admin.get_html("/portal/cost").await;
        let budget = section(&page, "budget");
        assert!(budget.contains("<progress id=\"budget-progress\" max=\"1000\" value=\"650\">"), "{budget}");
        assert!(budget.contains("USD 6.50 of USD 10.00 (65 %)"));
        assert!(budget.contains("80 % (USD 8.00)"));
        assert!(budget.contains("Yes: API keys stop when the budget is reached"));
        assert!(budget.contains("Within budget"));
        assert!(!page.contains("budget-blocked"));

        // Another 2 M tokens of gpt-4o: USD 11.50, over; the keys stop and the page says so.
        let (s, _) = send(&app, &acme.token, &json!([tokens("u5", &acme.ci.to_string(), 2_000_000, "gpt-4o")])).await;
        assert_eq!(s, 200);
        until_tokens(&app, &acme.owner, acme.tenant, 4_600_000).await;
        poll_until("the blocked notice", || async {
            acme.admin.get_html("/portal/cost").await.contains("id=\"budget-blocked\"")
        })
        .await;
        let page = acme.admin.get_html("/portal/cost").await;
        assert!(page.contains("<strong>API keys are stopped: budget reached.</strong>"));
        let budget = section(&page, "budget");
        assert!(budget.contains("<progress id=\"budget-progress\" max=\"1000\" value=\"1000\">"), "{budget}");
        assert!(budget.contains("USD 11.50 of USD 10.00 (115 %)") && budget.contains("Budget reached"));
        poll_until("the key stopped", || async {
            verify(&app, &acme.token, &acme.ci_secret).await.1["code"] == "budget_exceeded"
        })
        .await;
        let dashboard = acme.admin.get_html("/portal").await;
        assert!(dashboard.contains("Budget reached: API keys stopped"), "{dashboard}");
    }
);

both!(
    async fn the_dashboard_shows_the_months_cost_and_meters_to_who_may_read_usage_only(app) {
        let acme = acme_with_usage(&app).await;
        let month = Month::of(app.clock_now()).label();
        let dashboard = acme.admin.get_html("/portal").await;
        assert!(dashboard.contains(&format!(
            "<a class=\"stat usage-stat\" href=\"/portal/cost\" id=\"stat-cost\"><span class=\"stat-label\">Cost in {month}</span><span class=\"stat-value\">USD 6.50</span>"
        )), "{dashboard}");
        assert!(dashboard.contains(&format!(
            "id=\"stat-usage-llm-tokens\"><span class=\"stat-label\">LLM tokens in {month}</span><span class=\"stat-value\">2,600,000</span><span class=\"stat-meta\">tokens</span>"
        )));
        assert!(dashboard.contains(&format!(
            "id=\"stat-usage-api-requests\"><span class=\"stat-label\">API requests in {month}</span><span class=\"stat-value\">0</span>"
        )));
        assert!(dashboard.contains("href=\"/portal/usage\"") && dashboard.contains("href=\"/portal/cost\""), "nav links");

        // A viewer: no cards, no links, and the pages refuse.
        let viewer = member(&app, &acme.tid, "acme", "val@acme.example", "viewer").await;
        let nav = viewer.get_html("/portal").await;
        assert!(nav.contains("Active members"), "{nav}");
        assert!(!nav.contains("/portal/usage") && !nav.contains("/portal/cost"), "no links");
        assert!(!nav.contains("stat-cost") && !nav.contains("LLM tokens"), "no cards");
        for path in ["/portal/usage", "/portal/usage.csv", "/portal/cost"] {
            assert_eq!(viewer.get(path).await.status(), 403, "{path}");
        }
    }
);

both!(
    async fn the_owner_impersonating_the_tenant_reads_its_usage_and_cost(app) {
        let acme = acme_with_usage(&app).await;
        let support = crate::impersonation::switch_to(&app, &acme.tid, "acme").await;
        let dashboard = support.get_html("/portal").await;
        assert!(dashboard.contains("Impersonating.") && dashboard.contains("href=\"/portal/usage\""), "{dashboard}");
        assert!(dashboard.contains("id=\"stat-cost\""));
        let page = support.get_html("/portal/usage").await;
        assert!(section(&page, "meter-llm-tokens").contains("2,600,000 tokens"));
        let page = support.get_html("/portal/cost").await;
        assert!(page.contains("<strong class=\"cost-total\">USD 6.50</strong>"));
    }
);

both!(
    async fn the_usage_page_draws_its_chart_at_phone_width_in_a_real_browser(app) {
        let Some(browser) = crate::browser::Browser::start().await else {
            return;
        };
        let _acme = acme_with_usage(&app).await;
        let origin = format!("http://acme.localhost:{}", app.port());
        let label = format!("{:?}", app.backend).to_lowercase();
        browser
            .drive(|s| async move {
                use crate::browser::{click, find, screenshot, sign_in, wait_for_path, wait_for_text};
                let c = s.open().await;
                c.set_window_size(390, 844).await.unwrap();
                c.goto(&format!("{origin}/login")).await.unwrap();
                sign_in(&c, "ada@acme.example", ADMIN_PASSWORD, "/portal").await;
                click(&c, "nav.nav a[href='/portal/usage']").await;
                wait_for_path(&c, "/portal/usage").await;
                wait_for_text(&c, "main h1", "Usage").await;
                let chart = find(&c, "#meter-llm-tokens svg.chart").await;
                let size = chart.rectangle().await.unwrap();
                assert!(size.2 > 100.0 && size.3 > 50.0, "the chart is drawn: {size:?}");
                let bars = c
                    .execute("return document.querySelectorAll('#meter-llm-tokens rect.chart-bar').length;", vec![])
                    .await
                    .unwrap();
                assert_eq!(bars.as_u64(), Some(30));
                crate::portal_data_plane::fits(&c, "the usage page").await;
                screenshot(&c, &format!("portal-usage-390-{label}"), 390, 844).await;

                click(&c, "nav.nav a[href='/portal/cost']").await;
                wait_for_text(&c, "main h1", "Cost").await;
                crate::portal_data_plane::fits(&c, "the cost page").await;
                screenshot(&c, &format!("portal-cost-390-{label}"), 390, 844).await;

                // And wide, for a person to look at.
                screenshot(&c, &format!("portal-cost-1280-{label}"), 1280, 900).await;
                click(&c, "nav.nav a[href='/portal/usage']").await;
                wait_for_text(&c, "main h1", "Usage").await;
                screenshot(&c, &format!("portal-usage-1280-{label}"), 1280, 900).await;
            })
            .await;
    }
);
