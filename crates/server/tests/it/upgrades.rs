//! Upgrades (issue 14): a tenant whose database is behind this binary's schema is not served
//! (503 `tenant_migrating` with `Retry-After`) while the others are, until the background
//! migration (or `quarterdeck migrate`) has brought it up; `migrate` is parallel, resumable
//! and names the tenants it could not migrate.

use crate::both_backends;
use crate::helpers::*;
use quarterdeck_domain::TenantId;
use quarterdeck_domain::user::Directory;
use std::process::{Command, Output};

/// Run `quarterdeck migrate` (a real process) on the test server's databases, with the given
/// extra TOML (e.g. regions) and arguments.
pub fn migrate(app: &TestApp, extra_toml: &str, args: &[&str]) -> Output {
    let config = app.data_dir().join("migrate.toml");
    let mut toml = format!("data_dir = {:?}\n", app.data_dir().display().to_string());
    if let Some(url) = &app.pg_url {
        toml.push_str(&format!("database_url = {url:?}\n"));
    }
    toml.push_str(extra_toml);
    std::fs::write(&config, toml).unwrap();
    Command::new(env!("CARGO_BIN_EXE_quarterdeck"))
        .arg("--config")
        .arg(&config)
        .arg("migrate")
        .args(args)
        .env_remove("QUARTERDECK_REGIONS")
        .env_remove("QUARTERDECK_DATABASE_URL")
        .env_remove("QUARTERDECK_DATA_DIR")
        .output()
        .unwrap()
}

/// Record the tenant `slug` as behind this binary's schema (as a tenant of an older release
/// would be after the new binary's control migration).
pub async fn set_behind(app: &TestApp, slug: &str) {
    app.control_exec(&format!("UPDATE tenant SET schema_version = 0 WHERE slug = '{slug}'"))
        .await;
}

async fn recorded_version(app: &TestApp, slug: &str) -> String {
    app.control_value(&format!(
        "SELECT CAST(schema_version AS TEXT) FROM tenant WHERE slug = '{slug}'"
    ))
    .await
}

both_backends!(
    async fn a_tenant_behind_the_schema_gets_503_while_others_are_served_until_the_background_migration(backend) {
        // Pools close as soon as they are unused, so every request opens (and checks) anew.
        let app = TestApp::spawn_with(backend, |s| s.tenant_pool_idle_seconds = 0).await;
        app.sign_in_owner().await;
        let acme = app.create_tenant("Acme", "acme").await;
        let bolt = app.create_tenant("Bolt", "bolt").await;
        let ada = app.tenant_admin(&acme, "acme", "ada@acme.example").await;
        let bea = app.tenant_admin(&bolt, "bolt", "bea@bolt.example").await;
        let current = recorded_version(&app, "acme").await;
        assert_ne!(current, "0");

        set_behind(&app, "acme").await;
        poll_until("acme refused while behind", || async { ada.get("/portal").await.status() == 503 }).await;
        let r = ada.get("/portal").await;
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "5");
        let id: TenantId = acme.parse().unwrap();
        let err = app.core.tenant_of(Directory::Tenant(id)).await.map(|_| ());
        assert!(err.is_ok(), "the directory (control) still answers");
        let err = app
            .core
            .store()
            .list_users(Directory::Tenant(id))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "tenant_migrating");
        // The other tenant is served meanwhile.
        assert_eq!(bea.get("/portal").await.status(), 200);

        // The background migration looks again every minute (of the server's clock).
        app.clock.advance(time::Duration::minutes(2));
        poll_until("acme served once migrated", || async { ada.get("/portal").await.status() == 200 }).await;
        assert_eq!(recorded_version(&app, "acme").await, current);
    }
);

both_backends!(
    async fn migrate_with_two_jobs_migrates_those_behind_is_a_no_op_again_and_names_a_broken_tenant(backend) {
        let app = TestApp::spawn(backend).await;
        app.sign_in_owner().await;
        app.create_tenant("Alpha", "alpha").await;
        app.create_tenant("Beta", "beta").await;
        let gamma = app.create_tenant("Gamma", "gamma").await;
        let current = recorded_version(&app, "alpha").await;
        set_behind(&app, "alpha").await;
        set_behind(&app, "beta").await;

        let out = migrate(&app, "", &["--jobs", "2"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("2 tenant database(s) migrated, 0 failed"), "{stdout}");
        assert!(stdout.contains("region eu-west: 2 migrated, 0 failed"), "{stdout}");
        for slug in ["alpha", "beta", "gamma"] {
            assert_eq!(recorded_version(&app, slug).await, current);
        }

        // Resumable: nothing left to do.
        let out = migrate(&app, "", &["--jobs", "2"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}");
        assert!(stdout.contains("0 tenant database(s) migrated, 0 failed"), "{stdout}");

        // A tenant behind whose database is gone: a non-zero exit naming it.
        let id: TenantId = gamma.parse().unwrap();
        match &app.pg_url {
            Some(url) => {
                let prefix = url::Url::parse(url).unwrap().path().trim_start_matches('/').to_owned();
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE \"{prefix}_t_{}\" WITH (FORCE)",
                    id.0.simple()
                )))
                .execute(&mut pg_conn(&pg_admin_url().unwrap()).await)
                .await
                .unwrap();
            }
            None => {
                let file = app.data_dir().join("tenants").join(format!("{}.db", id.0.simple()));
                for suffix in ["", "-wal", "-shm"] {
                    let mut p = file.clone().into_os_string();
                    p.push(suffix);
                    let _ = std::fs::remove_file(p);
                }
            }
        }
        set_behind(&app, "gamma").await;
        let out = migrate(&app, "", &["--jobs", "2"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stdout}");
        assert!(stderr.contains(&format!("gamma ({gamma})")), "{stderr}");
        assert!(stdout.contains("region eu-west: 0 migrated, 1 failed"), "{stdout}");
        assert_eq!(recorded_version(&app, "gamma").await, "0");
    }
);
