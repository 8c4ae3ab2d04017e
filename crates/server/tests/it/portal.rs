//! The roles page, the RCM roles file, and the portal's pages.

use crate::both;
use crate::helpers::*;

both!(
    async fn the_roles_page_lists_every_role_with_its_scope_and_capabilities(app) {
        app.sign_in_owner().await;
        let page = app.get_html("/roles").await;
        for r in ["owner", "policy-admin", "billing-admin", "admin", "developer", "viewer"] {
            assert!(page.contains(&format!(">{r}")), "{r}");
        }
        assert!(page.contains("tenant:users:manage"));
    }
);

#[tokio::test]
async fn the_rcm_roles_file_replaces_the_tenant_roles_and_names_tenant_admin() {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/roles-rcm.toml");
    let app = TestApp::spawn_with(Backend::Sqlite, |s| s.roles_file = Some(file)).await;
    app.sign_in_owner().await;
    let roles = app.get_html("/roles").await;
    for r in ["TENANT_ADMIN", "BILLING_LEAD", "BILLER", "READONLY"] {
        assert!(roles.contains(r), "{r}");
    }
    assert!(roles.contains("Manage users, roles, all tenant config."));
    assert!(!roles.contains(">developer"));
    let tid = app.create_tenant("Acme Behavioral Health", "acme").await;
    let list = app.get_html(&format!("/tenants?created={tid}")).await;
    assert!(
        list.contains("role=TENANT_ADMIN"),
        "Invite admin preselects TENANT_ADMIN"
    );
}

#[test]
fn a_bad_roles_file_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("roles.toml");
    std::fs::write(
        &path,
        "admin_role = \"X\"\n[[roles]]\nname = \"Y\"\ndescription = \"\"\ncapabilities = []\n",
    )
    .unwrap();
    let s = quarterdeck::Settings {
        roles_file: Some(path),
        ..Default::default()
    };
    let err = s.catalog().unwrap_err().to_string();
    assert!(err.contains("roles.toml") && err.contains("admin_role"), "{err}");
}

#[test]
fn a_real_transport_with_the_localhost_base_url_is_refused_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.toml");
    std::fs::write(&path, "email_transport = \"smtp\"\nsmtp_host = \"mail.example.com\"\n").unwrap();
    let err = quarterdeck::Settings::load(Some(&path)).unwrap_err().to_string();
    assert!(err.contains("QUARTERDECK_BASE_URL"), "{err}");
}
