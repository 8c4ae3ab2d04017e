//! `quarterdeck tenants export SLUG` (issue 14): one tenant's data as JSON lines, audited
//! `TENANT_EXPORTED` with the counts, and never a secret or a hash in it.

use crate::audit::cli_in;
use crate::both;
use crate::data_plane::{api_key, owner};
use quarterdeck_domain::access::ManageProviderCredentials;
use quarterdeck_domain::audit::AuditFilter;
use serde_json::Value;

both!(
    async fn a_tenant_exports_as_json_lines_without_any_secret_and_the_export_is_audited(app) {
        let owner = owner(&app).await;
        let tid = app.create_tenant("Acme", "acme").await;
        app.create_tenant("Globex", "globex").await;
        app.tenant_admin(&tid, "acme", "ada@acme.test").await;
        let (key_id, key_secret) = api_key(&app, &owner, &tid, "").await;
        let auth = owner.require_for_tenant::<ManageProviderCredentials>(tid.parse().unwrap()).unwrap();
        let cred_secret = "sk-live-export-0000111122223333";
        let input = std::collections::BTreeMap::from([("api_key".to_owned(), cred_secret.to_owned())]);
        app.core.set_provider_credential(&auth, "openai", &input).await.unwrap();

        let o = cli_in(&app, app.data_dir(), &["tenants", "export", "acme"]).await;
        let text = String::from_utf8(o.stdout).unwrap();
        assert!(o.status.success(), "{text}{}", String::from_utf8_lossy(&o.stderr));
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let of = |t: &str| lines.iter().filter(|l| l["type"] == t).collect::<Vec<_>>();
        assert_eq!(of("tenant").len(), 1);
        assert_eq!(of("tenant")[0]["slug"], "acme");
        assert!(of("user").iter().any(|u| u["email"] == "ada@acme.test"), "{text}");
        assert!(!of("role").is_empty());
        assert_eq!(of("api_key").len(), 1);
        assert_eq!(of("api_key")[0]["id"], key_id.to_string());
        assert_eq!(of("provider_credential").len(), 1);
        assert_eq!(of("provider_credential")[0]["provider"], "openai");
        let audit = of("audit_event");
        assert!(audit.iter().any(|e| e["event_type"] == "TENANT_CREATED"), "{text}");
        assert!(audit.iter().all(|e| e["tenant_id"] == tid.as_str()), "only this tenant's events");
        assert!(!text.contains("globex"));

        // No secret, no hash.
        assert!(!text.contains("$argon2"), "a password hash: {text}");
        assert!(!text.contains(&key_secret), "an API key's secret");
        let key_hash = app.control_value("SELECT secret_hash FROM api_key_secret").await;
        assert!(!text.contains(&key_hash), "an API key's hash");
        assert!(!text.contains(cred_secret), "a credential's secret");
        let sealed = app.control_value("SELECT sealed FROM provider_credential").await;
        assert!(!text.contains(&sealed), "a sealed credential");

        // Audited, with the counts, by the system.
        let events = app
            .core
            .store()
            .list_events(&AuditFilter {
                event_type: Some("TENANT_EXPORTED".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].tenant_id.unwrap().to_string(), tid);
        assert_eq!(events[0].details["counts"]["api_keys"], 1);
        assert_eq!(events[0].details["counts"]["audit_events"], audit.len());
        assert_eq!(events[0].actor_id, None);

        // To a file, owner-only; an unknown slug is an error.
        let file = app.data_dir().join("acme.jsonl");
        let o = cli_in(&app, app.data_dir(), &["tenants", "export", "acme", "--out", file.to_str().unwrap()]).await;
        assert!(o.status.success());
        assert!(std::fs::read_to_string(&file).unwrap().lines().count() >= lines.len());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        let o = cli_in(&app, app.data_dir(), &["tenants", "export", "nobody"]).await;
        assert!(!o.status.success());
    }
);
