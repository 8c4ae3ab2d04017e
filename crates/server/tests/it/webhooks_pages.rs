//! Settings → Webhooks in the console (issue 13): an endpoint created through the form with its
//! secret shown once, rolled, edited, disabled and enabled, deleted; forms that keep what was
//! typed; deliveries with Resend; who may not gets 403.

use crate::both;
use crate::helpers::*;
use crate::portal_data_plane::shown_secret;
use crate::webhooks_api::dead_url;

/// The endpoint id in a page that links to or posts to `/settings/webhooks/{id}/…`.
fn endpoint_id_in(html: &str) -> String {
    html.split("/settings/webhooks/")
        .skip(1)
        .find_map(|rest| {
            let id = rest.split(['/', '"', '?', '#']).next()?;
            (id.len() == 36).then(|| id.to_owned())
        })
        .expect("an endpoint's link in the page")
}

/// A browser signed in as a new platform user with `roles`.
/// The edit form's hidden `version` (the endpoint as the page was loaded).
fn version_in(page: &str) -> String {
    let at =
        page.find("name=\"version\" value=\"").expect("the edit form's version") + "name=\"version\" value=\"".len();
    page[at..].split('"').next().unwrap().to_owned()
}

async fn signed_in_as(app: &TestApp, email: &str, roles: &[&str]) -> TenantClient {
    crate::settings::platform_user(app, email, roles).await;
    let c = TenantClient {
        client: client(),
        origin: app.base_url.clone(),
    };
    assert_eq!(c.sign_in(email, OWNER_PASSWORD).await.status(), 303);
    c
}

both!(
    async fn the_owner_creates_an_endpoint_through_the_form_and_sees_its_secret_once(app) {
        app.sign_in_owner().await;
        let settings = app.get_html("/settings").await;
        assert!(settings.contains("href=\"/settings/webhooks\""), "linked from Settings");
        let list = app.get_html("/settings/webhooks").await;
        assert!(list.contains("No endpoints yet") && list.contains("href=\"/settings/webhooks/new\""));
        let form = app.get_html("/settings/webhooks/new").await;
        for needle in ["value=\"*\"", "value=\"tenant.*\"", "value=\"tenant.status_changed\"", "value=\"budget.*\"", "value=\"impersonation.ended\"", ">All regions<", ">eu-west<", ">us-east<", "name=\"enabled\" value=\"on\" checked"] {
            assert!(form.contains(needle), "{needle}");
        }

        // Refused by the outbound policy: 422, everything typed kept, the field marked.
        let r = app
            .post_form("/settings/webhooks", &form, &[("url", "http://93.184.216.34/hooks"), ("description", "provisioning"), ("event_types", "tenant.created"), ("event_types", "user.*"), ("region", "us-east")])
            .await;
        assert_eq!(r.status(), 422);
        let again = r.text().await.unwrap();
        assert!(again.contains("value=\"http://93.184.216.34/hooks\"") && again.contains("value=\"provisioning\""), "the input is kept");
        assert!(again.contains("value=\"tenant.created\" checked") && again.contains("value=\"user.*\" checked") && !again.contains("value=\"tenant.deleted\" checked"));
        assert!(again.contains("<option value=\"us-east\" selected>"));
        assert!(again.contains("id=\"new-url-error\"") && again.contains("aria-invalid=\"true\""), "the URL is marked");
        assert!(!again.contains("name=\"enabled\" value=\"on\" checked"), "unchecked stays unchecked");
        // No event type: said so, by the field.
        let r = app.post_form("/settings/webhooks", &form, &[("url", "not a url"), ("description", "x")]).await;
        assert_eq!(r.status(), 422);
        let again = r.text().await.unwrap();
        assert!(again.contains("choose at least one event type") && again.contains("id=\"new-types-error\""), "{again}");
        assert!(again.contains("not a valid URL"));
        assert_eq!(app.control_rows("webhook_endpoint").await, 0);

        // Created: the secret once, on the endpoint's page; the family replaces its members.
        let url = dead_url();
        let r = app
            .post_form("/settings/webhooks", &form, &[("url", &url), ("description", "provisioning"), ("event_types", "tenant.*"), ("event_types", "tenant.created"), ("event_types", "user.invited"), ("region", "eu-west"), ("enabled", "on")])
            .await;
        assert_eq!(r.status(), 200);
        let page = r.text().await.unwrap();
        let secret = shown_secret(&page).expect("the secret, once");
        assert!(secret.starts_with("whsec_"), "{secret}");
        assert!(page.contains("keeps it encrypted"), "says how it is kept");
        let id = endpoint_id_in(&page);
        let stored = app.control_value("SELECT event_types FROM webhook_endpoint").await;
        assert_eq!(stored, "tenant.* user.invited");
        assert_eq!(app.control_value("SELECT region FROM webhook_endpoint").await, "eu-west");
        // Audited by its origin only: a path may hold the receiver's credential.
        let origin = url.trim_end_matches("/hooks");
        assert_eq!(app.events_of("WEBHOOK_ENDPOINT_CREATED").await[0].details["url"], format!("{origin}/…"));
        let shown = app.get_html(&format!("/settings/webhooks/{id}")).await;
        assert!(!shown.contains(&secret[6..]) && shown.contains(&url) && shown.contains("tenant.*, user.invited"));
        let list = app.get_html("/settings/webhooks").await;
        assert!(list.contains(&url) && list.contains("eu-west") && list.contains("badge-active") && !list.contains(&secret[6..]));

        // Roll with a bad grace: refused, said so; then rolled: a new secret, once.
        let r = app.post_form(&format!("/settings/webhooks/{id}/roll"), &shown, &[("grace_hours", "500")]).await;
        assert_eq!(r.status(), 422);
        assert!(r.text().await.unwrap().contains("The secret was not rolled: from 0 to 168 hours"));
        let r = app.post_form(&format!("/settings/webhooks/{id}/roll"), &shown, &[("grace_hours", "1")]).await;
        assert_eq!(r.status(), 200);
        let page = r.text().await.unwrap();
        let new = shown_secret(&page).expect("the new secret, once");
        assert!(new.starts_with("whsec_") && new != secret);
        assert!(page.contains("the old one also signs until"));
        let shown = app.get_html(&format!("/settings/webhooks/{id}")).await;
        assert!(!shown.contains(&new[6..]) && !shown.contains(&secret[6..]) && shown.contains("Previous secret"));
        assert_eq!(app.events_of("WEBHOOK_ENDPOINT_UPDATED").await[0].details["secret_rolled"], true);

        // Edit with a bad URL: 422, the typed values kept, nothing changed; then saved.
        let r = app
            .post_form(&format!("/settings/webhooks/{id}"), &shown, &[("url", "https://10.0.0.7/hooks"), ("description", "edited"), ("event_types", "api_key.revoked"), ("region", ""), ("version", &version_in(&shown))])
            .await;
        assert_eq!(r.status(), 422);
        let again = r.text().await.unwrap();
        assert!(again.contains("value=\"https://10.0.0.7/hooks\"") && again.contains("value=\"edited\"") && again.contains("value=\"api_key.revoked\" checked"));
        assert!(again.contains("id=\"edit-url-error\""));
        assert_eq!(app.control_value("SELECT description FROM webhook_endpoint").await, "provisioning");
        let r = app
            .post_form(&format!("/settings/webhooks/{id}"), &shown, &[("url", &url), ("description", "edited"), ("event_types", "*"), ("event_types", "api_key.revoked"), ("region", ""), ("version", &version_in(&shown))])
            .await;
        assert_eq!(r.status(), 303);
        assert_eq!(location(&r), format!("/settings/webhooks/{id}?done=saved"));
        let shown = app.get_html(&location(&r)).await;
        assert!(shown.contains("Endpoint saved.") && shown.contains("edited"));
        assert_eq!(app.control_value("SELECT event_types FROM webhook_endpoint").await, "*");
        assert_eq!(app.control_value("SELECT CAST(count(*) AS TEXT) FROM webhook_endpoint WHERE region IS NULL").await, "1");

        // Disable, then enable.
        let r = app.post_form(&format!("/settings/webhooks/{id}/disable"), &shown, &[]).await;
        assert_eq!(r.status(), 303);
        let shown = app.get_html(&location(&r)).await;
        assert!(shown.contains("Endpoint disabled") && shown.contains("disabled by hand") && shown.contains(&format!("/settings/webhooks/{id}/enable")));
        assert_eq!(app.control_value("SELECT disabled_reason FROM webhook_endpoint").await, "manual");
        let r = app.post_form(&format!("/settings/webhooks/{id}/enable"), &shown, &[]).await;
        assert_eq!(r.status(), 303);
        let shown = app.get_html(&location(&r)).await;
        assert!(shown.contains("Endpoint enabled") && shown.contains(&format!("/settings/webhooks/{id}/disable")));

        // A form without its CSRF token is refused.
        let r = app
            .client
            .post(app.url(&format!("/settings/webhooks/{id}/delete")))
            .header("origin", &app.base_url)
            .form(&[("x", "y")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        assert_eq!(app.control_rows("webhook_endpoint").await, 1);

        // Delete (confirmed in a dialog of the danger zone): gone, audited.
        assert!(shown.contains("id=\"danger-zone\"") && shown.contains("data-confirm-dialog=\"delete-dialog\""));
        let r = app.post_form(&format!("/settings/webhooks/{id}/delete"), &shown, &[]).await;
        assert_eq!(r.status(), 303);
        assert_eq!(location(&r), "/settings/webhooks?done=deleted");
        assert!(app.get_html("/settings/webhooks?done=deleted").await.contains("Endpoint deleted."));
        assert_eq!(app.control_rows("webhook_endpoint").await, 0);
        assert_eq!(app.events_of("WEBHOOK_ENDPOINT_DELETED").await.len(), 1);
        assert_eq!(app.get(&format!("/settings/webhooks/{id}")).await.status(), 404);
    }
);

both!(
    async fn resend_on_the_endpoint_page_queues_a_new_pending_delivery(app) {
        app.sign_in_owner().await;
        let form = app.get_html("/settings/webhooks/new").await;
        let r = app.post_form("/settings/webhooks", &form, &[("url", &dead_url()), ("event_types", "tenant.*"), ("enabled", "on")]).await;
        assert_eq!(r.status(), 200);
        let id = endpoint_id_in(&r.text().await.unwrap());
        app.create_tenant("Acme", "acme").await;
        poll_until("the first attempt", || async {
            app.control_value("SELECT CAST(attempts AS TEXT) FROM webhook_delivery").await == "1"
        })
        .await;

        let page = app.get_html(&format!("/settings/webhooks/{id}")).await;
        let event = app.events_of("TENANT_CREATED").await[0].id.0.to_string();
        assert!(page.contains("tenant.created") && page.contains(&event) && page.contains("unreachable"), "the delivery's row");
        assert!(page.contains("badge-invited\">pending"), "pending, with its next retry");
        let resend = page.split("/deliveries/").nth(1).unwrap().split('/').next().unwrap().to_owned();
        let r = app.post_form(&format!("/settings/webhooks/{id}/deliveries/{resend}/resend"), &page, &[]).await;
        assert_eq!(r.status(), 303);
        assert_eq!(location(&r), format!("/settings/webhooks/{id}?done=resent#deliveries"));
        assert_eq!(app.control_rows("webhook_delivery").await, 2);
        assert_eq!(app.control_value("SELECT CAST(count(*) AS TEXT) FROM webhook_delivery WHERE status = 'pending' AND attempts = 0").await, "1", "a new delivery, waiting its turn");
        let page = app.get_html(&format!("/settings/webhooks/{id}?done=resent")).await;
        assert!(page.contains("Delivery queued again"));
        assert_eq!(page.matches("/resend\"").count(), 2, "a Resend button per row");
        let resent = app.events_of("WEBHOOK_DELIVERY_RESENT").await;
        assert_eq!(resent[0].details["delivery_id"], resend.as_str());
        assert_eq!(resent[0].actor_email.as_deref(), Some(OWNER_EMAIL));
        // The deliveries table scrolls inside its card at phone width, like every table.
        assert!(page.contains("<section class=\"card\" id=\"deliveries\">") && page.split("id=\"deliveries\"").nth(1).unwrap().contains("<div class=\"table-wrap\"><table class=\"table\">"));
    }
);

both!(
    async fn a_platform_user_without_platform_config_gets_403_and_no_link(app) {
        app.sign_in_owner().await;
        let form = app.get_html("/settings/webhooks/new").await;
        let r = app.post_form("/settings/webhooks", &form, &[("url", &dead_url()), ("event_types", "*"), ("enabled", "on")]).await;
        let id = endpoint_id_in(&r.text().await.unwrap());

        let bill = signed_in_as(&app, "billing@example.com", &["billing-admin"]).await;
        let settings = bill.get_html("/settings").await;
        assert!(!settings.contains("/settings/webhooks"));
        for path in ["/settings/webhooks".to_owned(), "/settings/webhooks/new".to_owned(), format!("/settings/webhooks/{id}")] {
            assert_eq!(bill.get(&path).await.status(), 403, "{path}");
        }
        for path in ["/settings/webhooks".to_owned(), format!("/settings/webhooks/{id}/disable"), format!("/settings/webhooks/{id}/roll"), format!("/settings/webhooks/{id}/delete")] {
            let r = bill.post_form(&path, &settings, &[("url", "http://127.0.0.1:9/x"), ("event_types", "*")]).await;
            assert_eq!(r.status(), 403, "{path}");
        }
        assert_eq!(app.control_rows("webhook_endpoint").await, 1);
        assert_eq!(app.events_of("WEBHOOK_ENDPOINT_UPDATED").await.len(), 0);
    }
);

both!(
    async fn the_webhook_pages_work_at_phone_width_in_a_real_browser(app) {
        // Arrange: an endpoint with a delivery (made over HTTP), a browser.
        let Some(browser) = crate::browser::Browser::start().await else {
            return;
        };
        app.sign_in_owner().await;
        let form = app.get_html("/settings/webhooks/new").await;
        let r = app.post_form("/settings/webhooks", &form, &[("url", &dead_url()), ("description", "provisioning service for every region"), ("event_types", "tenant.*"), ("enabled", "on")]).await;
        let id = endpoint_id_in(&r.text().await.unwrap());
        app.create_tenant("Acme", "acme").await;
        poll_until("the first attempt", || async {
            app.control_value("SELECT CAST(attempts AS TEXT) FROM webhook_delivery").await == "1"
        })
        .await;
        let base = app.base_url.clone();
        let url = dead_url();
        let label = format!("{:?}", app.backend).to_lowercase();
        let endpoint = id.clone();

        // Act and assert: at 390×844, a new endpoint through the form, then the first one's page.
        browser
            .drive(|s| async move {
                use crate::browser::{click, find, screenshot, sign_in, type_into, wait_for_path, wait_for_text};
                use crate::portal_data_plane::fits;
                let c = s.open().await;
                c.set_window_size(390, 844).await.unwrap();
                c.goto(&format!("{base}/login")).await.unwrap();
                sign_in(&c, OWNER_EMAIL, OWNER_PASSWORD, "/").await;
                c.goto(&format!("{base}/settings")).await.unwrap();
                click(&c, "main a[href='/settings/webhooks']").await;
                wait_for_text(&c, "main h1", "Webhooks").await;
                fits(&c, "the endpoint list").await;
                click(&c, "main .page-header a[href='/settings/webhooks/new']").await;
                wait_for_path(&c, "/settings/webhooks/new").await;
                fits(&c, "the new endpoint form").await;
                screenshot(&c, &format!("webhooks-new-390-{label}"), 390, 1600).await;
                type_into(&c, "#new-url", &url).await;
                click(&c, "input[name='event_types'][value='user.*']").await;
                click(&c, "form[action='/settings/webhooks'] button[type=submit]").await;
                wait_for_text(&c, "#secret-once-title", "signing secret").await;
                let secret = find(&c, "#new-secret").await.text().await.unwrap();
                assert!(secret.starts_with("whsec_"), "{secret}");
                fits(&c, "the new endpoint with its secret").await;

                // The first endpoint: its deliveries' table scrolls inside its card.
                c.goto(&format!("{base}/settings/webhooks/{endpoint}")).await.unwrap();
                wait_for_text(&c, "#deliveries table", "tenant.created").await;
                fits(&c, "the endpoint's page").await;
                screenshot(&c, &format!("webhook-endpoint-390-{label}"), 390, 844).await;
                click(&c, "button[data-confirm-dialog='roll-dialog']").await;
                wait_for_text(&c, "dialog[open] h2", "Roll the signing secret?").await;
                fits(&c, "the roll dialog").await;
                click(&c, "dialog[open] button[type=submit]").await;
                wait_for_text(&c, "#secret-once-title", "also signs until").await;
                let rolled = find(&c, "#new-secret").await.text().await.unwrap();
                assert!(rolled.starts_with("whsec_") && rolled != secret);
                click(&c, "#danger-zone button[data-confirm-dialog='delete-dialog']").await;
                wait_for_text(&c, "dialog[open] h2", "Delete this endpoint?").await;
                click(&c, "dialog[open] button[type=submit]").await;
                wait_for_path(&c, "/settings/webhooks").await;
                crate::browser::toast(&c, "Endpoint deleted.").await;
                fits(&c, "the list after the delete").await;
            })
            .await;

        // The browser's changes are the real rows.
        assert_eq!(app.control_rows("webhook_endpoint").await, 1, "one made, one deleted");
        assert_eq!(app.control_value("SELECT event_types FROM webhook_endpoint").await, "user.*");
        assert_eq!(app.events_of("WEBHOOK_ENDPOINT_DELETED").await[0].details["endpoint_id"], id.as_str());
    }
);

both!(
    async fn a_save_from_a_page_loaded_before_someone_elses_change_is_refused_and_their_change_kept(app) {
        app.sign_in_owner().await;
        let form = app.get_html("/settings/webhooks/new").await;
        let r = app
            .post_form("/settings/webhooks", &form, &[("url", "http://127.0.0.1:9/hooks"), ("description", "provisioning"), ("event_types", "tenant.*"), ("enabled", "on")])
            .await;
        assert_eq!(r.status(), 200);
        let id = endpoint_id_in(&r.text().await.unwrap());
        // Owner A loads the edit page; owner B limits the endpoint to one region meanwhile.
        let stale = app.get_html(&format!("/settings/webhooks/{id}")).await;
        let fresh = app.get_html(&format!("/settings/webhooks/{id}")).await;
        let r = app
            .post_form(&format!("/settings/webhooks/{id}"), &fresh, &[("url", "http://127.0.0.1:9/hooks"), ("description", "provisioning"), ("event_types", "tenant.*"), ("region", "eu-west"), ("version", &version_in(&fresh))])
            .await;
        assert_eq!(r.status(), 303);
        // A saves a new description from the page loaded before: refused, B's region kept.
        let r = app
            .post_form(&format!("/settings/webhooks/{id}"), &stale, &[("url", "http://127.0.0.1:9/hooks"), ("description", "renamed"), ("event_types", "tenant.*"), ("region", ""), ("version", &version_in(&stale))])
            .await;
        assert_eq!(r.status(), 409);
        let page = r.text().await.unwrap();
        assert!(page.contains("changed by someone else"), "{page}");
        assert!(page.contains("value=\"renamed\""), "what was typed is kept");
        assert_eq!(app.control_value("SELECT region FROM webhook_endpoint").await, "eu-west");
        assert_eq!(app.control_value("SELECT description FROM webhook_endpoint").await, "provisioning");
        assert_eq!(app.events_of("WEBHOOK_ENDPOINT_UPDATED").await.len(), 1);
        // Having seen the endpoint as it is now, A saves again from the page they got: applied.
        let r = app
            .post_form(&format!("/settings/webhooks/{id}"), &page, &[("url", "http://127.0.0.1:9/hooks"), ("description", "renamed"), ("event_types", "tenant.*"), ("region", "eu-west"), ("version", &version_in(&page))])
            .await;
        assert_eq!(r.status(), 303);
        assert_eq!(app.control_value("SELECT description FROM webhook_endpoint").await, "renamed");
    }
);
