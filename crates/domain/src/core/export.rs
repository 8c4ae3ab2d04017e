//! One tenant's data as JSON lines (`quarterdeck tenants export SLUG`): the tenant, its users
//! (never a password hash), the tenant roles, its API keys' metadata (never a secret or its
//! hash), its provider credentials' metadata (the hints, never a sealed value), its hourly
//! usage rollups and its audit events. Audited `TENANT_EXPORTED` (with the counts) before
//! anything is handed out.

use super::Core;
use crate::access::Actor;
use crate::audit::{AuditFilter, EventType};
use crate::error::{Error, Result};
use crate::tenant::TenantSlug;
use crate::user::Directory;
use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;

/// Audit events read per page.
const PAGE: u32 = 1000;

impl Core {
    /// The export, one JSON object per line, each with its `type`: `tenant`, `user`, `role`,
    /// `api_key`, `provider_credential`, `usage_rollup`, `audit_event`. For the command line,
    /// which acts as the system (whoever runs it holds the server's data).
    pub async fn export_tenant_from_cli(&self, slug: &str) -> Result<Vec<Value>> {
        let slug = TenantSlug::parse(slug)?;
        let tenant = self.store.tenant_by_slug(&slug).await?.ok_or(Error::NotFound)?;
        let id = tenant.id;
        let users = self.store.list_users(Directory::Tenant(id)).await?;
        let roles: Vec<_> = self.config.catalog.tenant_roles().cloned().collect();
        let keys = self.store.api_keys_of(id).await?;
        let credentials = self.store.provider_credentials(id).await?;
        let now = self.clock.now();
        let rollups = self
            .store
            .usage_rollups(id, time::OffsetDateTime::UNIX_EPOCH, now + time::Duration::hours(1))
            .await?;
        let mut events = Vec::new();
        let mut before = None;
        loop {
            let page = self
                .store
                .list_events(&AuditFilter {
                    tenant_id: Some(id),
                    before_seq: before,
                    limit: PAGE,
                    ..AuditFilter::default()
                })
                .await?;
            let done = page.len() < PAGE as usize;
            before = page.last().map(|e| e.seq);
            events.extend(page);
            if done || before.is_none() {
                break;
            }
        }
        events.reverse();
        let counts = json!({
            "users": users.len(),
            "roles": roles.len(),
            "api_keys": keys.len(),
            "provider_credentials": credentials.len(),
            "usage_rollups": rollups.len(),
            "audit_events": events.len(),
        });
        let event = self.new_event(
            EventType::TenantExported,
            &Actor::system(),
            Some(id),
            json!({ "slug": tenant.slug.as_str(), "via": "cli", "counts": counts }),
        );
        self.store.append_event(event).await?;

        let tagged = |kind: &str, v: Value| -> Value {
            let mut v = v;
            if let Value::Object(m) = &mut v {
                m.insert("type".to_owned(), Value::String(kind.to_owned()));
            }
            v
        };
        let to = |v: &dyn erased::Ser| -> Result<Value> { v.value() };
        let mut out = Vec::with_capacity(1 + users.len() + roles.len() + keys.len() + events.len());
        out.push(tagged("tenant", to(&tenant)?));
        for u in &users {
            out.push(tagged("user", to(u)?));
        }
        for r in &roles {
            out.push(tagged("role", to(r)?));
        }
        for k in &keys {
            out.push(tagged("api_key", to(k)?));
        }
        for c in &credentials {
            out.push(tagged("provider_credential", to(c)?));
        }
        for r in &rollups {
            out.push(json!({
                "type": "usage_rollup",
                "hour": r.hour.format(&Rfc3339).map_err(Error::internal)?,
                "meter": r.meter,
                "dimensions": serde_json::from_str::<Value>(&r.dims).unwrap_or(Value::String(r.dims.clone())),
                "api_key_id": r.api_key_id,
                "value": r.value,
                "events": r.events,
            }));
        }
        for e in &events {
            out.push(tagged("audit_event", to(e)?));
        }
        Ok(out)
    }
}

/// `serde_json::to_value` behind a trait object, so one closure serves every type.
mod erased {
    use crate::error::{Error, Result};

    pub trait Ser {
        fn value(&self) -> Result<serde_json::Value>;
    }

    impl<T: serde::Serialize> Ser for T {
        fn value(&self) -> Result<serde_json::Value> {
            serde_json::to_value(self).map_err(Error::internal)
        }
    }
}
