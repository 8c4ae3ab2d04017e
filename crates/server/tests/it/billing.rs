//! The console's Billing view (every tenant's usage and cost for a month, its CSV) and the
//! tenant page's usage card and budget form (issue 12).

use crate::both;
use crate::data_plane::{owner, service_token};
use crate::helpers::*;
use crate::settings::platform_user;
use crate::usage::{send, tokens, until_tokens};
use quarterdeck_domain::TenantId;
use quarterdeck_domain::usage::Month;
use serde_json::json;

/// A console client signed in as a platform user made with these roles.
async fn signed_in_as(app: &TestApp, email: &str, roles: &[&str]) -> reqwest::Client {
    platform_user(app, email, roles).await;
    let c = TestApp::client_for(app);
    let login = c.get(app.url("/login")).send().await.unwrap().text().await.unwrap();
    let r = c
        .post(app.url("/login"))
        .form(&[
            ("csrf_token", csrf_token(&login).as_str()),
            ("email", email),
            ("password", OWNER_PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "{email} signs in");
    c
}

/// Tenants with these names and token counts this month, swept; returns their ids in order.
async fn tenants_with_tokens(app: &TestApp, tenants: &[(&str, &str, i64)]) -> Vec<String> {
    let owner = owner(app).await;
    let token = service_token(app, &["usage:write"], "").await;
    let mut ids = Vec::new();
    for (i, (name, slug, n)) in tenants.iter().enumerate() {
        let tid = app.create_tenant(name, slug).await;
        let (status, body) = send(app, &token, &json!([tokens(&format!("ev-{i}"), &tid, *n, "gpt-4o")])).await;
        assert_eq!(status, 200, "{body}");
        until_tokens(app, &owner, tid.parse::<TenantId>().unwrap(), *n).await;
        ids.push(tid);
    }
    ids
}

/// Where `name`'s row link is in the page (panics when it is not there).
fn position(html: &str, name: &str) -> usize {
    html.find(&format!(">{name}</a></th>"))
        .unwrap_or_else(|| panic!("{name} is not in the table"))
}

both!(
    async fn the_owner_and_the_billing_admin_see_each_tenants_cost_and_a_policy_admin_does_not(app) {
        // USD 2.50 per million tokens: 2,000,000 are USD 5.00, 400,000 are USD 1.00.
        let ids = tenants_with_tokens(&app, &[("Acme", "acme", 2_000_000), ("Bolt", "bolt", 400_000)]).await;
        let page = app.get_html("/billing").await;
        assert!(page.contains("href=\"/billing\""), "the owner has the nav item");
        assert!(page.contains(&format!("<a href=\"/tenants/{}\">Acme</a>", ids[0])), "{page}");
        for text in ["USD 5.00", "USD 1.00", "USD 6.00", "2,000,000", "400,000", "2,400,000", "LLM tokens", "(tokens)"] {
            assert!(page.contains(text), "{text} missing from the page");
        }
        assert!(position(&page, "Acme") < position(&page, "Bolt"), "largest cost first");
        let month = Month::of(app.clock_now()).to_string();
        assert!(page.contains(&format!("value=\"{month}\"")), "the month picker shows the month");

        let billing = signed_in_as(&app, "billing@example.com", &["billing-admin"]).await;
        let r = billing.get(app.url("/billing")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let page = r.text().await.unwrap();
        assert!(page.contains("href=\"/billing\"") && page.contains("USD 5.00") && page.contains("USD 6.00"));
        let tenant = billing.get(app.url(&format!("/tenants/{}", ids[0]))).send().await.unwrap().text().await.unwrap();
        assert!(tenant.contains("Usage and budget") && tenant.contains("USD 5.00") && tenant.contains("Save budget"));

        let policy = signed_in_as(&app, "policy@example.com", &["policy-admin"]).await;
        assert_eq!(policy.get(app.url("/billing")).send().await.unwrap().status(), 403);
        assert_eq!(policy.get(app.url("/billing.csv")).send().await.unwrap().status(), 403);
        let home = policy.get(app.url("/")).send().await.unwrap().text().await.unwrap();
        assert!(!home.contains("href=\"/billing\""), "no nav item without billing:read");
        let tenant = policy.get(app.url(&format!("/tenants/{}", ids[0]))).send().await.unwrap().text().await.unwrap();
        assert!(!tenant.contains("Usage and budget"));
    }
);

both!(
    async fn the_billing_table_sorts_by_the_clicked_column_and_refuses_a_bad_month(app) {
        tenants_with_tokens(&app, &[("Zed", "zed", 2_000_000), ("Alpha", "alpha", 400_000), ("Mid", "mid", 1_000_000)]).await;
        let order = |page: &str| {
            let mut names = ["Alpha", "Mid", "Zed"];
            names.sort_by_key(|n| position(page, n));
            names
        };
        let by_name = app.get_html("/billing?sort=name&dir=asc").await;
        assert_eq!(order(&by_name), ["Alpha", "Mid", "Zed"]);
        assert!(by_name.contains("aria-sort=\"ascending\""));
        assert!(by_name.contains("sort=name&#38;dir=desc"), "a second click turns it round");
        assert_eq!(order(&app.get_html("/billing?sort=name&dir=desc").await), ["Zed", "Mid", "Alpha"]);
        assert_eq!(order(&app.get_html("/billing?sort=cost&dir=asc").await), ["Alpha", "Mid", "Zed"]);
        assert_eq!(order(&app.get_html("/billing?sort=cost&dir=desc").await), ["Zed", "Mid", "Alpha"]);
        assert_eq!(order(&app.get_html("/billing?sort=events&dir=asc").await), ["Alpha", "Mid", "Zed"], "ties by name");

        let r = app.get("/billing?month=2026-13").await;
        assert_eq!(r.status(), 422);
        let page = r.text().await.unwrap();
        assert!(page.contains("Choose a month as YYYY-MM") && page.contains("value=\"2026-13\""), "{page}");
        let r = app.get("/billing.csv?month=nope").await;
        assert_eq!(r.status(), 422);
        // A month with nothing in it: every tenant at zero.
        let empty = app.get_html("/billing?month=2001-01").await;
        assert!(empty.contains("January 2001") && empty.contains("USD 0.00") && !empty.contains("USD 5.00"));
        assert!(empty.contains("month=2000-12") && empty.contains("month=2001-02"), "previous and next month links");
    }
);

both!(
    async fn the_csv_has_the_tables_columns_quoted_and_formulas_neutralised(app) {
        let ids = tenants_with_tokens(&app, &[("=SUM(A1)", "formula", 2_000_000), ("Acme, Inc.", "acme", 400_000)]).await;
        let month = Month::of(app.clock_now()).to_string();
        let r = app.get(&format!("/billing.csv?month={month}")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "text/csv; charset=utf-8");
        assert_eq!(r.headers()["content-disposition"], format!("attachment; filename=\"billing-{month}.csv\"").as_str());
        let body = r.text().await.unwrap();
        let lines: Vec<&str> = body.split("\r\n").collect();
        assert_eq!(
            lines[0],
            "Tenant,Tenant id,Status,Tier,LLM tokens (tokens),API requests (requests),Events,Cost (USD),Budget (USD),Budget used (%)"
        );
        assert_eq!(lines[1], format!("'=SUM(A1),{},active,standard,2000000,0,1,5.00,,", ids[0]));
        assert_eq!(lines[2], format!("\"Acme, Inc.\",{},active,standard,400000,0,1,1.00,,", ids[1]));
        assert_eq!(lines[3], "Total,,,,2400000,0,2,6.00,,");
        assert_eq!(lines[4], "", "the file ends with a line break");
    }
);

both!(
    async fn a_budget_is_set_from_the_tenant_page_with_field_errors_and_removed_audited(app) {
        app.sign_in_owner().await;
        let id = app.create_tenant("Acme", "acme").await;
        let path = format!("/tenants/{id}");
        let page = app.get_html(&path).await;
        assert!(page.contains("Usage and budget") && page.contains("None set") && !page.contains("Remove budget"));

        let r = app
            .post_form(&format!("{path}/budget"), &page, &[("amount", "abc"), ("threshold_percent", "150")])
            .await;
        assert_eq!(r.status(), 422);
        let html = r.text().await.unwrap();
        assert!(html.contains("id=\"budget-amount-error\">Enter the monthly amount as a number"), "{html}");
        assert!(html.contains("id=\"budget-threshold-error\">The alert threshold is a percentage from 1 to 100."));
        assert!(html.contains("value=\"abc\"") && html.contains("value=\"150\""), "the input is kept");
        assert!(app.events_of("BUDGET_SET").await.is_empty());

        let r = app
            .post_form(
                &format!("{path}/budget"),
                &page,
                &[("amount", "1,500"), ("threshold_percent", "75"), ("hard_limit", "on")],
            )
            .await;
        assert_eq!(r.status(), 303);
        assert_eq!(location(&r), format!("{path}?saved=budget#usage"));
        let shown = app.get_html(&format!("{path}?saved=budget")).await;
        assert!(shown.contains("Budget saved."));
        assert!(shown.contains("USD 1,500.00 per month · 0% used") && shown.contains("Alert at 75%; hard limit"), "{shown}");
        assert!(shown.contains("value=\"1500.00\"") && shown.contains("value=\"75\"") && shown.contains(" checked>"));
        let set = app.events_of("BUDGET_SET").await;
        assert_eq!(set.len(), 1);
        assert_eq!(set[0].actor_email.as_deref(), Some(OWNER_EMAIL));
        assert_eq!(set[0].tenant_id.map(|t| t.to_string()), Some(id.clone()));
        assert_eq!(set[0].details["amount"], 150_000);
        assert_eq!(set[0].details["hard_limit"], true);
        let billing = app.get_html("/billing").await;
        assert!(billing.contains("USD 1,500.00 <span class=\"muted\">· 0% used</span>"));

        let r = app.post_form(&format!("{path}/budget/delete"), &shown, &[]).await;
        assert_eq!(r.status(), 303);
        assert_eq!(location(&r), format!("{path}?saved=budget_removed#usage"));
        let after = app.get_html(&format!("{path}?saved=budget_removed")).await;
        assert!(after.contains("Budget removed.") && after.contains("None set"));
        let removed = app.events_of("BUDGET_REMOVED").await;
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].actor_email.as_deref(), Some(OWNER_EMAIL));
        // Nothing left to remove.
        let r = app.post_form(&format!("{path}/budget/delete"), &after, &[]).await;
        assert_eq!(r.status(), 404);
    }
);
