//! Tenants placed by region (issue 14): each region keeps its tenant databases (and its usage
//! journal) where the settings say — a PostgreSQL cluster of its own, or a directory of its
//! own on SQLite — and a tenant leaves no trace in another region's.

use crate::both_backends;
use crate::data_plane::{api_key, owner, service_token};
use crate::helpers::*;
use crate::usage::{send, tokens, until_tokens};
use quarterdeck::settings::{RegionPlace, Regions};
use quarterdeck_domain::TenantId;
use quarterdeck_domain::access::{ManageDirectory, ManageProviderCredentials};
use quarterdeck_domain::core::NewUserRequest;
use quarterdeck_domain::user::Directory;
use serde_json::json;
use sqlx::ConnectOptions;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A throwaway PostgreSQL cluster of the test's own (the region `eu`), from the binaries
/// scripts/test uses; stopped and removed when dropped, also when the test fails.
pub(crate) struct PgCluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    as_postgres: bool,
}

impl PgCluster {
    /// Starts one, or panics: a requested PostgreSQL half must fail, never skip.
    fn start() -> Self {
        let bin = PathBuf::from(std::env::var("QUARTERDECK_TEST_PG_BIN").expect(
            "QUARTERDECK_TEST_PG_BIN is not set: run with scripts/test (it exports PostgreSQL's bin directory)",
        ));
        let as_postgres = String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout)
            .unwrap()
            .trim()
            == "0";
        // Under /tmp so that the postgres user can reach it and the socket path stays short.
        let dir = tempfile::Builder::new()
            .prefix("qd-region-")
            .tempdir_in("/tmp")
            .unwrap();
        if as_postgres {
            let ok = Command::new("chown").arg("postgres:").arg(dir.path()).status().unwrap();
            assert!(ok.success(), "chown of the second cluster's directory failed");
        }
        let mut cluster = Self {
            bin,
            dir,
            port: 0,
            as_postgres,
        };
        let data = cluster.dir.path().join("data");
        let out = cluster
            .run("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        cluster.port = port;
        let options = format!(
            "-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{}' -c fsync=off",
            cluster.dir.path().display()
        );
        let out = cluster
            .run("pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(cluster.dir.path().join("postgres.log"))
            .args(["-w", "-t", "60", "-o", &options, "start"])
            .output()
            .unwrap();
        let log = std::fs::read_to_string(cluster.dir.path().join("postgres.log")).unwrap_or_default();
        assert!(
            out.status.success(),
            "the second PostgreSQL cluster did not start: {log}"
        );
        cluster
    }

    /// One of the PostgreSQL programs, as the postgres user when we are root.
    fn run(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut c = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        c.current_dir(self.dir.path());
        c
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = self
            .run("pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "-w", "-t", "30", "stop"])
            .output();
    }
}

async fn databases(url: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT datname::text FROM pg_database")
        .fetch_all(&mut pg_conn(url).await)
        .await
        .unwrap()
}

async fn pg_count(url: &str, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&mut pg_conn(url).await)
        .await
        .unwrap()
}

async fn sqlite_count(file: &Path, sql: &str) -> i64 {
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(file)
        .read_only(true)
        .connect()
        .await
        .unwrap();
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

/// Create a tenant in `region` through the console; returns its id.
pub(crate) async fn create_in(app: &TestApp, slug: &str, region: &str) -> TenantId {
    let page = app.get_html("/tenants/new").await;
    let r = app
        .post_form(
            "/tenants",
            &page,
            &[("name", slug), ("slug", slug), ("region", region), ("tier", "standard")],
        )
        .await;
    assert_eq!(r.status(), 303, "create failed: {}", r.text().await.unwrap());
    location(&r).split("created=").nth(1).unwrap().parse().unwrap()
}

/// Where the test put each region: PostgreSQL (eu's cluster, the URLs of eu's and us's region
/// databases) or SQLite (the two directories).
pub(crate) enum Places {
    Pg {
        _eu: PgCluster,
        eu_url: String,
        us_url: String,
    },
    Sqlite {
        eu: tempfile::TempDir,
        us: tempfile::TempDir,
    },
}

pub(crate) async fn places(backend: Backend) -> Places {
    match backend {
        Backend::Postgres => {
            let eu = PgCluster::start();
            let eu_url = eu.url("postgres");
            // us: a database of its own on the cluster scripts/test started (which also holds
            // the control database).
            let admin = pg_admin_url().unwrap();
            let name = format!("qdr_us_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut pg_conn(&admin).await)
                .await
                .unwrap();
            let mut us_url = url::Url::parse(&admin).unwrap();
            us_url.set_path(&format!("/{name}"));
            Places::Pg {
                _eu: eu,
                eu_url,
                us_url: us_url.to_string(),
            }
        }
        Backend::Sqlite => Places::Sqlite {
            eu: tempfile::tempdir().unwrap(),
            us: tempfile::tempdir().unwrap(),
        },
    }
}

impl Places {
    pub(crate) fn regions(&self) -> Regions {
        let (eu, us) = match self {
            Places::Pg { eu_url, us_url, .. } => (
                RegionPlace {
                    database_url: Some(eu_url.clone()),
                    ..Default::default()
                },
                RegionPlace {
                    database_url: Some(us_url.clone()),
                    ..Default::default()
                },
            ),
            Places::Sqlite { eu, us } => (
                RegionPlace {
                    dir: Some(eu.path().to_owned()),
                    ..Default::default()
                },
                RegionPlace {
                    dir: Some(us.path().to_owned()),
                    ..Default::default()
                },
            ),
        };
        Regions::named(&[]).with("eu", eu).with("us", us)
    }
}

both_backends!(
    async fn a_tenant_created_in_eu_lives_and_dies_on_eus_storage_and_leaves_no_trace_in_us(backend) {
        let places = places(backend).await;
        let regions = places.regions();
        let app = TestApp::spawn_with(backend, |s| s.regions = regions).await;
        let owner = owner(&app).await;
        let acme = create_in(&app, "acme", "eu").await;
        let bolt = create_in(&app, "bolt", "us").await;

        // The console shows each tenant's region.
        let list = app.get_html("/tenants").await;
        assert!(list.contains("<td>eu</td>") && list.contains("<td>us</td>"), "{list}");
        let page = app.get_html(&format!("/tenants/{acme}")).await;
        assert!(page.contains("<dt>Region</dt><dd>eu</dd>"), "{page}");

        // The effective settings name each region's place, never a region's URL (it may hold
        // a password).
        let settings = app.get_html("/settings").await;
        match &places {
            Places::Pg { eu_url, us_url, .. } => {
                assert!(settings.contains("eu (own cluster: •••••• (set))"), "{settings}");
                assert!(!settings.contains(eu_url.as_str()) && !settings.contains(us_url.as_str()));
            }
            Places::Sqlite { eu, .. } => {
                assert!(settings.contains(&format!("eu ({})", eu.path().display())), "{settings}");
            }
        }

        // A user, an API key, a provider credential and swept usage for acme.
        let dir = Directory::Tenant(acme);
        let req = NewUserRequest {
            email: "casey@acme.example".into(),
            name: String::new(),
            role: "admin".into(),
            force_change: false,
        };
        app.core
            .add_user_with_password(&owner.require_in::<ManageDirectory>(dir).unwrap(), req)
            .await
            .unwrap();
        let (key, _) = api_key(&app, &owner, &acme.to_string(), "").await;
        let auth = owner.require_for_tenant::<ManageProviderCredentials>(acme).unwrap();
        let input = BTreeMap::from([("api_key".to_owned(), "sk-test-1234567890abcd".to_owned())]);
        app.core.set_provider_credential(&auth, "openai", &input).await.unwrap();
        let token = service_token(&app, &["usage:write"], "").await;
        let batch = json!([
            tokens("e1", &key.to_string(), 100, "gpt-4o"),
            tokens("e2", &acme.to_string(), 20, "gpt-4o"),
            tokens("b1", &bolt.to_string(), 7, "gpt-4o"),
        ]);
        let (status, body) = send(&app, &token, &batch).await;
        assert_eq!(status, 200, "{body}");
        until_tokens(&app, &owner, acme, 120).await;
        until_tokens(&app, &owner, bolt, 7).await;

        match &places {
            Places::Pg { eu_url, us_url, .. } => {
                let control = app.pg_url.clone().unwrap();
                let prefix = url::Url::parse(&control).unwrap().path().trim_start_matches('/').to_owned();
                let acme_db = format!("{prefix}_t_{}", acme.0.simple());
                let bolt_db = format!("{prefix}_t_{}", bolt.0.simple());
                let admin = pg_admin_url().unwrap();
                // acme's database is on eu's cluster, with its user and its raw usage …
                assert!(databases(eu_url).await.contains(&acme_db));
                assert!(!databases(eu_url).await.contains(&bolt_db));
                let mut acme_url = url::Url::parse(eu_url).unwrap();
                acme_url.set_path(&format!("/{acme_db}"));
                let acme_url = acme_url.to_string();
                assert_eq!(
                    pg_count(&acme_url, "SELECT count(*) FROM security.app_user WHERE email = 'casey@acme.example'").await,
                    1
                );
                assert_eq!(
                    pg_count(&acme_url, "SELECT count(*) FROM security.usage_event").await,
                    2
                );
                // … and eu's journal was eu's: swept there, never in the control database's.
                assert_eq!(
                    pg_count(eu_url, "SELECT count(*) FROM journal.usage_journal_state WHERE region = 'eu' AND swept_through IS NOT NULL").await,
                    1
                );
                // No trace of acme on us's cluster: no database, nothing in a journal there.
                assert!(!databases(&admin).await.contains(&acme_db));
                assert!(databases(&admin).await.contains(&bolt_db));
                assert_eq!(pg_count(us_url, &format!("SELECT count(*) FROM journal.usage_journal WHERE tenant_id = '{}'", acme.0)).await, 0);
                assert_eq!(
                    pg_count(us_url, "SELECT count(*) FROM journal.usage_journal_state WHERE region = 'eu'").await,
                    0
                );
                assert_eq!(
                    pg_count(&control, "SELECT count(*) FROM identity.usage_journal_state").await,
                    0
                );
            }
            Places::Sqlite { eu, us } => {
                let file = |dir: &Path, id: TenantId| dir.join("tenants").join(format!("{}.db", id.0.simple()));
                assert!(file(eu.path(), acme).exists());
                assert!(!file(us.path(), acme).exists() && !file(app.data_dir(), acme).exists());
                assert!(file(us.path(), bolt).exists() && !file(eu.path(), bolt).exists());
                assert_eq!(
                    sqlite_count(&file(eu.path(), acme), "SELECT count(*) FROM app_user WHERE email = 'casey@acme.example'").await,
                    1
                );
                assert_eq!(sqlite_count(&file(eu.path(), acme), "SELECT count(*) FROM usage_event").await, 2);
                // Each region's journal in its own directory.
                assert!(eu.path().join("usage/eu.db").exists() && us.path().join("usage/us.db").exists());
                assert!(!us.path().join("usage/eu.db").exists() && !app.data_dir().join("usage/eu.db").exists());
            }
        }

        // `quarterdeck migrate` reports per region (both tenants recorded as behind first).
        crate::upgrades::set_behind(&app, "acme").await;
        crate::upgrades::set_behind(&app, "bolt").await;
        let mut toml = String::new();
        for (name, place) in places.regions().places() {
            toml.push_str(&format!("[regions.{name}]\n"));
            if let Some(url) = &place.database_url {
                toml.push_str(&format!("database_url = {url:?}\n"));
            }
            if let Some(dir) = &place.dir {
                toml.push_str(&format!("dir = {:?}\n", dir.display().to_string()));
            }
        }
        let out = crate::upgrades::migrate(&app, &toml, &["--jobs", "2"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("region eu: 1 migrated, 0 failed"), "{stdout}");
        assert!(stdout.contains("region us: 1 migrated, 0 failed"), "{stdout}");

        // Its database stays where it was made: moving it to a region kept elsewhere is refused.
        let t = app.core.tenant_of(dir).await.unwrap().unwrap();
        let edit = quarterdeck_domain::tenant::TenantEdit {
            name: t.name.clone(),
            region: quarterdeck_domain::tenant::Region::parse("us", &["eu".to_owned(), "us".to_owned()]).unwrap(),
            tier: t.tier,
            metadata: t.metadata.clone(),
        };
        let manage = owner.require::<quarterdeck_domain::access::ManageTenants>().unwrap();
        let err = app.core.update_tenant(&manage, acme, edit).await.unwrap_err();
        assert_eq!(err.fields()[0].code, "region_moves_data");
        assert_eq!(app.core.tenant_of(dir).await.unwrap().unwrap().region.as_str(), "eu");

        // Deleted and purged: dropped where it lived.
        let page = app.get_html(&format!("/tenants/{acme}")).await;
        let r = app
            .post_form(&format!("/tenants/{acme}/delete"), &page, &[("confirm_slug", "acme")])
            .await;
        assert_eq!(r.status(), 303);
        app.clock.advance(time::Duration::days(31));
        assert_eq!(app.core.purge_deleted_tenants().await.unwrap(), vec![acme]);
        match &places {
            Places::Pg { eu_url, .. } => {
                let prefix = url::Url::parse(app.pg_url.as_deref().unwrap())
                    .unwrap()
                    .path()
                    .trim_start_matches('/')
                    .to_owned();
                assert!(!databases(eu_url).await.contains(&format!("{prefix}_t_{}", acme.0.simple())));
            }
            Places::Sqlite { eu, .. } => {
                assert!(!eu.path().join("tenants").join(format!("{}.db", acme.0.simple())).exists());
            }
        }
    }
);
