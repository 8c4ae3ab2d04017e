//! Storage: the database per tenant, its names, the pools, migrations.

use crate::both;
use crate::helpers::*;
use quarterdeck_domain::TenantId;

both!(
    async fn each_tenant_gets_a_database_of_its_own(app) {
        app.sign_in_owner().await;
        let id: TenantId = app.create_tenant("Acme Corp", "acme").await.parse().unwrap();
        match app.backend {
            Backend::Sqlite => {
                let file = app.data_dir().join("tenants").join(format!("{}.db", id.0.simple()));
                assert!(file.exists(), "{file:?}");
            }
            Backend::Postgres => {
                let mut conn = pg_conn(app.pg_url.as_deref().unwrap()).await;
                let control: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&mut conn).await.unwrap();
                let name = format!("{control}_t_{}", id.0.simple());
                let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
                    .bind(&name)
                    .fetch_optional(&mut conn)
                    .await
                    .unwrap();
                assert_eq!(exists, Some(1), "database {name}");
                // The tenant database holds schema `security`.
                let mut url = url::Url::parse(app.pg_url.as_deref().unwrap()).unwrap();
                url.set_path(&format!("/{name}"));
                let mut tenant_conn = pg_conn(url.as_str()).await;
                let owner: uuid::Uuid = sqlx::query_scalar("SELECT tenant_id FROM security.tenant_info")
                    .fetch_one(&mut tenant_conn)
                    .await
                    .unwrap();
                assert_eq!(owner, id.0);
                // The control database has the runbook's names.
                let status: String = sqlx::query_scalar("SELECT status FROM identity.tenant WHERE id = $1")
                    .bind(id.0)
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
                assert_eq!(status, "active");
                let rows: Vec<(String,)> = sqlx::query_as(
                    "SELECT event_type FROM identity.tenant_audit WHERE tenant_id = $1 AND ts > now() - interval '1 hour' ORDER BY ts",
                )
                .bind(id.0)
                .fetch_all(&mut conn)
                .await
                .unwrap();
                assert_eq!(rows, vec![("TENANT_CREATED".to_owned(),)]);
            }
        }
    }
);

both!(
    async fn migrate_reports_every_tenant_and_is_idempotent(app) {
        app.sign_in_owner().await;
        app.create_tenant("One", "one").await;
        app.create_tenant("Two", "two").await;
        let report = quarterdeck::app::migrate_tenants(&app.core).await.unwrap();
        assert_eq!(report.len(), 2);
        assert!(report.iter().all(|(_, r)| matches!(r, Ok(0))));
    }
);

#[tokio::test]
async fn tenant_pools_are_capped_and_the_least_recently_used_is_closed() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| s.tenant_pool_max_open = 3).await;
    app.sign_in_owner().await;
    for i in 0..6 {
        app.create_tenant(&format!("T{i}"), &format!("t-{i}")).await;
    }
    let store = quarterdeck_store::SqliteStore::open(
        app.data_dir(),
        quarterdeck_store::PoolLimits {
            max_open: 3,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    for id in quarterdeck_domain::store::TenantStore::tenant_ids(&store)
        .await
        .unwrap()
    {
        quarterdeck_domain::store::TenantStore::migrate_tenant(&store, id)
            .await
            .unwrap();
        assert!(store.open_tenant_pools().await <= 3);
    }
    assert_eq!(store.open_tenant_pools().await, 3);
}

both!(
    async fn a_failed_tenant_creation_leaves_no_database_behind(app) {
        app.sign_in_owner().await;
        app.create_tenant("Acme", "acme").await;
        // Race the slug check: create the same slug through the core directly, past the form.
        let principal = quarterdeck_domain::Principal::new(
            quarterdeck_domain::UserId::new(),
            quarterdeck_domain::EmailAddress::parse(OWNER_EMAIL).unwrap(),
            vec!["owner".into()],
            None,
            app.core.catalog(),
        );
        let auth = principal.require::<quarterdeck_domain::access::ManageTenants>().unwrap();
        let tenant = quarterdeck_domain::tenant::Tenant {
            id: TenantId::new(),
            slug: quarterdeck_domain::TenantSlug::parse("acme").unwrap(),
            name: quarterdeck_domain::tenant::TenantName::parse("Dup").unwrap(),
            region: quarterdeck_domain::tenant::Region::from_stored("eu-west".into()),
            tier: quarterdeck_domain::tenant::PriorityTier::Standard,
            status: quarterdeck_domain::TenantStatus::Active,
            metadata: Default::default(),
            created_at: app.clock_now(),
            updated_at: app.clock_now(),
        };
        let event = quarterdeck_domain::audit::NewEvent::new(
            app.clock_now(),
            quarterdeck_domain::audit::EventType::TenantCreated,
            auth.actor(),
            Some(tenant.id),
            serde_json::json!({}),
        );
        let err = app.core.store().create_tenant(&tenant, event).await.unwrap_err();
        assert_eq!(err.fields()[0].code, "slug_taken");
        match app.backend {
            Backend::Sqlite => {
                let file = app.data_dir().join("tenants").join(format!("{}.db", tenant.id.0.simple()));
                assert!(!file.exists());
            }
            Backend::Postgres => {
                let mut conn = pg_conn(app.pg_url.as_deref().unwrap()).await;
                let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pg_database WHERE datname LIKE $1")
                    .bind(format!("%{}", tenant.id.0.simple()))
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
                assert_eq!(n, 0);
            }
        }
        assert_eq!(app.events_of("TENANT_CREATED").await.len(), 1, "no event for the failed one");
        assert_eq!(app.core.verify_audit_chain().await.unwrap().map(|_| ()), Ok(()));
    }
);
