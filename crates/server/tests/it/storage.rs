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
    let app = TestApp::spawn_with(Backend::Sqlite, |s| s.tenant_pool_max_open = Some(3)).await;
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
        &[],
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

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_is_created_owner_only_and_every_database_file_is_0600() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| s.data_dir = s.data_dir.join("data")).await;
    app.sign_in_owner().await;
    let id: TenantId = app.create_tenant("Acme Corp", "acme").await.parse().unwrap();
    let dir = app.data_dir().join("data");
    assert_eq!(mode(&dir), 0o700, "the data directory");
    assert_eq!(mode(&dir.join("tenants")), 0o700, "the tenants directory");
    let tenant = format!("tenants/{}.db", id.0.simple());
    let mut files = 0;
    for name in ["control.db", tenant.as_str()] {
        for suffix in ["", "-wal", "-shm"] {
            let path = dir.join(format!("{name}{suffix}"));
            if suffix.is_empty() || path.exists() {
                assert_eq!(mode(&path), 0o600, "{}", path.display());
                files += 1;
            }
        }
    }
    assert!(files >= 4, "the WAL files of the open databases were checked too");
    assert_eq!(mode(&dir.join("secret.key")), 0o600);
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_data_directory_readable_by_others_is_warned_about_at_start_up() {
    use std::os::unix::fs::PermissionsExt;
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.data_dir = s.data_dir.join("shared");
        std::fs::create_dir(&s.data_dir).unwrap();
        std::fs::set_permissions(&s.data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    })
    .await;
    assert!(
        app.logs.contains("is readable by other users"),
        "a warning names the loose data directory"
    );
    let quiet = TestApp::spawn_with(Backend::Sqlite, |s| s.data_dir = s.data_dir.join("data")).await;
    assert!(!quiet.logs.contains("is readable by other users"));
}

fn settings_on(dir: &std::path::Path, listener: &tokio::net::TcpListener) -> quarterdeck::Settings {
    let addr = listener.local_addr().unwrap();
    quarterdeck::Settings {
        listen: addr,
        base_url: format!("http://localhost:{}", addr.port()).parse().unwrap(),
        data_dir: dir.to_owned(),
        outbox_poll_ms: 3_600_000,
        ..quarterdeck::Settings::default()
    }
}

async fn start(dir: &std::path::Path) -> anyhow::Result<quarterdeck::App> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let settings = settings_on(dir, &listener);
    quarterdeck::App::with_listener(settings, listener, quarterdeck::app::Deps::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_serve_on_one_sqlite_data_directory_is_refused_with_a_clear_message() {
    // Beside a running server.
    let running = TestApp::spawn(Backend::Sqlite).await;
    let err = match start(running.data_dir()).await {
        Ok(_) => panic!("a second server started on the same data directory"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("another Quarterdeck"), "{err}");
    assert!(err.contains(&running.data_dir().display().to_string()), "{err}");

    // The lock lives as long as the server: once it is gone, a new one starts.
    let dir = tempfile::tempdir().unwrap();
    let first = start(dir.path()).await.unwrap();
    assert!(start(dir.path()).await.is_err());
    drop(first);
    start(dir.path()).await.unwrap();
}
