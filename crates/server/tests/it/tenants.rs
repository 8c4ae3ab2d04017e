//! Tenants: create, list, edit, status, delete — with validation and audit events.

use crate::both;
use crate::helpers::*;

both!(
    async fn creating_a_tenant_provisions_its_database_and_records_tenant_created(app) {
        app.sign_in_owner().await;

        let id = app.create_tenant("Acme Corp", "acme-corp").await;

        let list = app.get_html(&format!("/tenants?created={id}")).await;
        assert!(list.contains("Tenant &#39;Acme Corp&#39; created.") || list.contains("Tenant 'Acme Corp' created."), "{list}");
        assert!(list.contains("data-timeout-ms=\"7000\""));
        assert!(list.contains("acme-corp"));
        let events = app.events_of("TENANT_CREATED").await;
        assert_eq!(events.len(), 1);
        let d = &events[0].details;
        assert_eq!(d["tenant_id"], id);
        assert_eq!(d["name"], "Acme Corp");
        assert_eq!(d["status"], "active");
        assert_eq!(d["metadata"], serde_json::json!({}));
        assert_eq!(d["actor"]["email"], OWNER_EMAIL);
        assert_eq!(events[0].tenant_id.unwrap().to_string(), id);
        let migrated = app.core.store().migrate_tenant(id.parse().unwrap()).await.unwrap();
        assert_eq!(migrated, 0, "the tenant database was created and migrated with the tenant");
    }
);

both!(
    async fn new_tenant_reports_each_bad_field_and_creates_nothing(app) {
        app.sign_in_owner().await;
        let page = app.get_html("/tenants/new").await;
        let long_name = "x".repeat(101);
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (vec![("name", ""), ("slug", "ok-slug"), ("region", "eu-west"), ("tier", "standard")], "Enter a name."),
            (vec![("name", &long_name), ("slug", "ok-slug"), ("region", "eu-west"), ("tier", "standard")], "A name is at most 100 characters."),
            (vec![("name", "Acme"), ("slug", ""), ("region", "eu-west"), ("tier", "standard")], "Enter a slug."),
            (vec![("name", "Acme"), ("slug", "Acme_Corp"), ("region", "eu-west"), ("tier", "standard")], "Use lowercase letters"),
            (vec![("name", "Acme"), ("slug", "-acme"), ("region", "eu-west"), ("tier", "standard")], "cannot start or end with a hyphen"),
            (vec![("name", "Acme"), ("slug", "www"), ("region", "eu-west"), ("tier", "standard")], "This slug is reserved"),
            (vec![("name", "Acme"), ("slug", "../etc"), ("region", "eu-west"), ("tier", "standard")], "Use lowercase letters"),
            (vec![("name", "Acme"), ("slug", "acme"), ("region", "mars"), ("tier", "standard")], "Choose one of: eu-west, us-east."),
            (vec![("name", "Acme"), ("slug", "acme"), ("region", "eu-west"), ("tier", "platinum")], "Choose standard, high or critical."),
        ];
        for (form, message) in cases {
            let r = app.post_form("/tenants", &page, &form).await;
            assert_eq!(r.status(), 422, "{form:?}");
            let body = r.text().await.unwrap();
            assert!(body.contains(message), "{form:?}: expected {message:?}");
            assert!(body.contains("aria-invalid=\"true\""));
        }
        let too_long = "a".repeat(64);
        let r = app.post_form("/tenants", &page, &[("name", "Acme"), ("slug", &too_long), ("region", "eu-west"), ("tier", "standard")]).await;
        assert_eq!(r.status(), 422);
        assert!(app.events_of("TENANT_CREATED").await.is_empty());
        let (tenants, total) = app.core.store().list_tenants(&Default::default()).await.unwrap();
        assert!(tenants.is_empty() && total == 0);
    }
);

both!(
    async fn a_slug_in_use_is_refused_with_a_field_message(app) {
        app.sign_in_owner().await;
        app.create_tenant("Acme Corp", "acme").await;
        let page = app.get_html("/tenants/new").await;
        let r = app.post_form("/tenants", &page, &[("name", "Acme Again"), ("slug", "acme"), ("region", "eu-west"), ("tier", "high")]).await;
        assert_eq!(r.status(), 422);
        let body = r.text().await.unwrap();
        assert!(body.contains("This slug is already in use"));
        assert!(body.contains("value=\"Acme Again\""), "the form keeps what was typed");
        assert_eq!(app.events_of("TENANT_CREATED").await.len(), 1);
    }
);

both!(
    async fn the_list_searches_filters_and_pages(app) {
        app.sign_in_owner().await;
        for i in 0..27 {
            app.create_tenant(&format!("Tenant {i:02}"), &format!("tenant-{i:02}")).await;
        }
        app.create_tenant("Globex 100%", "globex").await;
        let page1 = app.get_html("/tenants").await;
        assert!(page1.contains("Page 1 of 2"));
        let page2 = app.get_html("/tenants?page=2").await;
        assert!(page2.contains("Page 2 of 2"));
        let found = app.get_html("/tenants?q=GLOBEX").await;
        assert!(found.contains("globex") && !found.contains("tenant-01"));
        let wildcard = app.get_html("/tenants?q=%25").await;
        assert!(wildcard.contains("globex") && !wildcard.contains("tenant-01"), "% is matched literally");
        let none = app.get_html("/tenants?status=suspended").await;
        assert!(none.contains("No tenants match."));
    }
);

both!(
    async fn editing_records_a_diff_per_key_and_no_event_without_a_change(app) {
        app.sign_in_owner().await;
        let id = app.create_tenant("Acme Corp", "acme").await;
        let page = app.get_html(&format!("/tenants/{id}")).await;

        let r = app
            .post_form(
                &format!("/tenants/{id}"),
                &page,
                &[("name", "Acme Corporation"), ("region", "us-east"), ("tier", "high"), ("meta_key", "plan"), ("meta_value", "gold"), ("meta_key", ""), ("meta_value", "")],
            )
            .await;
        assert_eq!(r.status(), 303);
        let r2 = app
            .post_form(
                &format!("/tenants/{id}"),
                &page,
                &[("name", "Acme Corporation"), ("region", "us-east"), ("tier", "high"), ("meta_key", "plan"), ("meta_value", "gold")],
            )
            .await;
        assert_eq!(r2.status(), 303);

        let events = app.events_of("TENANT_METADATA_UPDATED").await;
        assert_eq!(events.len(), 1, "the second save changed nothing");
        let changes = &events[0].details["changes"];
        assert_eq!(changes["name"], serde_json::json!({"old": "Acme Corp", "new": "Acme Corporation"}));
        assert_eq!(changes["region"], serde_json::json!({"old": "eu-west", "new": "us-east"}));
        assert_eq!(changes["metadata.plan"], serde_json::json!({"old": null, "new": "gold"}));
        assert_eq!(events[0].details["tenant_id"], id);
        let shown = app.get_html(&format!("/tenants/{id}")).await;
        assert!(shown.contains("Acme Corporation") && shown.contains("value=\"gold\""));
    }
);

both!(
    async fn bad_metadata_is_refused_and_nothing_changes(app) {
        app.sign_in_owner().await;
        let id = app.create_tenant("Acme Corp", "acme").await;
        let page = app.get_html(&format!("/tenants/{id}")).await;
        let long_value = "v".repeat(513);
        for rows in [
            vec![("meta_key", "a b"), ("meta_value", "x")],
            vec![("meta_key", ""), ("meta_value", "orphan value")],
            vec![("meta_key", "k"), ("meta_value", long_value.as_str())],
            vec![("meta_key", "k"), ("meta_value", "1"), ("meta_key", "k"), ("meta_value", "2")],
        ] {
            let mut form = vec![("name", "Renamed"), ("region", "eu-west"), ("tier", "standard")];
            form.extend(rows);
            let r = app.post_form(&format!("/tenants/{id}"), &page, &form).await;
            assert_eq!(r.status(), 422, "{form:?}");
        }
        assert!(app.events_of("TENANT_METADATA_UPDATED").await.is_empty());
        let t = app.core.store().tenant(id.parse().unwrap()).await.unwrap().unwrap();
        assert_eq!(t.name.as_str(), "Acme Corp");
    }
);

both!(
    async fn status_changes_are_audited_with_the_reason(app) {
        app.sign_in_owner().await;
        let id = app.create_tenant("Acme Corp", "acme").await;
        let page = app.get_html(&format!("/tenants/{id}")).await;
        let r = app.post_form(&format!("/tenants/{id}/status"), &page, &[("status", "suspended"), ("reason", "unpaid invoices")]).await;
        assert_eq!(r.status(), 303);
        let bad = app.post_form(&format!("/tenants/{id}/status"), &page, &[("status", "deleted")]).await;
        assert_eq!(bad.status(), 422);
        let events = app.events_of("TENANT_STATUS_CHANGED").await;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].details["old"], "active");
        assert_eq!(events[0].details["new"], "suspended");
        assert_eq!(events[0].details["reason"], "unpaid invoices");
        let dash = app.get_html("/").await;
        assert!(dash.contains("Suspended"));
    }
);

both!(
    async fn deleting_needs_the_typed_slug_and_takes_the_tenant_out_of_service(app) {
        app.sign_in_owner().await;
        let id = app.create_tenant("Acme Corp", "acme").await;
        let page = app.get_html(&format!("/tenants/{id}")).await;
        let wrong = app.post_form(&format!("/tenants/{id}/delete"), &page, &[("confirm_slug", "acm")]).await;
        assert_eq!(wrong.status(), 422);
        assert!(app.events_of("TENANT_DELETED").await.is_empty());

        let r = app.post_form(&format!("/tenants/{id}/delete"), &page, &[("confirm_slug", "acme")]).await;
        assert_eq!(r.status(), 303);
        assert_eq!(app.get(&format!("/tenants/{id}")).await.status(), 404);
        let events = app.events_of("TENANT_DELETED").await;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].details["name"], "Acme Corp");
        assert_eq!(events[0].details["status"], "active");
        // The slug stays reserved until the database is purged after retention …
        let new_page = app.get_html("/tenants/new").await;
        let again = app.post_form("/tenants", &new_page, &[("name", "Acme"), ("slug", "acme"), ("region", "eu-west"), ("tier", "standard")]).await;
        assert_eq!(again.status(), 422);
        // … and is free once the retention period has passed.
        app.clock.advance(time::Duration::days(31));
        let purged = app.core.purge_deleted_tenants().await.unwrap();
        assert_eq!(purged.len(), 1);
        app.sign_in(OWNER_EMAIL, OWNER_PASSWORD).await;
        app.create_tenant("Acme", "acme").await;
    }
);

both!(
    async fn unknown_and_malformed_tenant_ids_are_not_found(app) {
        app.sign_in_owner().await;
        assert_eq!(app.get("/tenants/not-a-uuid").await.status(), 404);
        assert_eq!(app.get(&format!("/tenants/{}", uuid::Uuid::now_v7())).await.status(), 404);
    }
);

both!(
    async fn an_edit_computed_before_a_suspension_cannot_write_the_old_status_back(app) {
        use quarterdeck_domain::access::Actor;
        use quarterdeck_domain::audit::{EventType, NewEvent};
        app.sign_in_owner().await;
        let id = app.create_tenant("Acme", "acme").await;
        let tid: quarterdeck_domain::TenantId = id.parse().unwrap();
        // An edit reads the tenant (active)…
        let read = app.core.store().tenant(tid).await.unwrap().unwrap();
        // …a suspension commits meanwhile…
        let page = app.get_html(&format!("/tenants/{id}")).await;
        let r = app
            .post_form(&format!("/tenants/{id}/status"), &page, &[("status", "suspended"), ("reason", "unpaid")])
            .await;
        assert_eq!(r.status(), 303);
        // …then the edit writes what it computed from its read.
        let mut edited = read.clone();
        edited.name = quarterdeck_domain::tenant::TenantName::parse("Acme Renamed").unwrap();
        edited.updated_at = app.clock_now();
        let event = NewEvent::new(
            app.clock_now(),
            EventType::TenantMetadataUpdated,
            &Actor::system(),
            Some(tid),
            serde_json::json!({}),
        );
        let err = app.core.store().update_tenant(&edited, &read, event).await.unwrap_err();
        assert_eq!(err.code(), "tenant_changed");
        let now = app.core.store().tenant(tid).await.unwrap().unwrap();
        assert_eq!(now.status, quarterdeck_domain::TenantStatus::Suspended, "the suspension holds");
        assert_eq!(now.name.as_str(), "Acme", "and the stale edit wrote nothing");
    }
);
