//! Tenants: create, read, edit, change status, delete, purge.

use super::{Core, slug_taken};
use crate::access::{Authorized, ManageTenants, ReadTenants};
use crate::audit::EventType;
use crate::error::{Error, Result};
use crate::ids::TenantId;
use crate::tenant::{NewTenant, StatusCounts, Tenant, TenantEdit, TenantFilter, TenantStatus};
use crate::webhook::{Published, Topic};
use serde_json::json;

impl Core {
    // ---- tenants -------------------------------------------------------------------------------

    pub async fn create_tenant(&self, auth: &Authorized<ManageTenants>, new: NewTenant) -> Result<Tenant> {
        if self.store.slug_taken(&new.slug).await? {
            return Err(slug_taken());
        }
        let now = self.clock.now();
        let tenant = Tenant {
            id: TenantId::new(),
            slug: new.slug,
            name: new.name,
            region: new.region,
            tier: new.tier,
            status: TenantStatus::Active,
            metadata: new.metadata,
            created_at: now,
            updated_at: now,
        };
        let event = self
            .new_event(
                EventType::TenantCreated,
                auth.actor(),
                Some(tenant.id),
                json!({
                    "tenant_id": tenant.id, "slug": tenant.slug, "name": tenant.name,
                    "region": tenant.region, "tier": tenant.tier, "status": tenant.status,
                    "metadata": tenant.metadata,
                }),
            )
            .publish(Published::tenant(Topic::TenantCreated, &tenant));
        self.store.create_tenant(&tenant, event).await?;
        Ok(tenant)
    }

    pub async fn tenant(&self, _auth: &Authorized<ReadTenants>, id: TenantId) -> Result<Tenant> {
        self.store.tenant(id).await?.ok_or(Error::NotFound)
    }

    pub async fn list_tenants(
        &self,
        _auth: &Authorized<ReadTenants>,
        filter: &TenantFilter,
    ) -> Result<(Vec<Tenant>, u64)> {
        self.store.list_tenants(filter).await
    }

    pub async fn tenant_counts(&self, _auth: &Authorized<ReadTenants>) -> Result<StatusCounts> {
        self.store.tenant_counts().await
    }

    /// Edit name, region, tier and metadata. Records `TENANT_METADATA_UPDATED` with a diff per
    /// changed key (`{old, new}`; fields and metadata keys alike). No change, no event.
    pub async fn update_tenant(
        &self,
        auth: &Authorized<ManageTenants>,
        id: TenantId,
        edit: TenantEdit,
    ) -> Result<Tenant> {
        let old = self.store.tenant(id).await?.ok_or(Error::NotFound)?;
        let mut changes = serde_json::Map::new();
        let mut diff = |key: String, old: Option<&str>, new: Option<&str>| {
            if old != new {
                changes.insert(key, json!({ "old": old, "new": new }));
            }
        };
        diff("name".into(), Some(old.name.as_str()), Some(edit.name.as_str()));
        diff("region".into(), Some(old.region.as_str()), Some(edit.region.as_str()));
        diff("tier".into(), Some(old.tier.as_str()), Some(edit.tier.as_str()));
        let keys: std::collections::BTreeSet<&String> = old.metadata.keys().chain(edit.metadata.keys()).collect();
        for k in keys {
            diff(
                format!("metadata.{k}"),
                old.metadata.get(k).map(String::as_str),
                edit.metadata.get(k).map(String::as_str),
            );
        }
        if changes.is_empty() {
            return Ok(old);
        }
        let tenant = Tenant {
            name: edit.name,
            region: edit.region,
            tier: edit.tier,
            metadata: edit.metadata,
            updated_at: self.clock.now(),
            ..old.clone()
        };
        let event = self
            .new_event(
                EventType::TenantMetadataUpdated,
                auth.actor(),
                Some(id),
                json!({ "tenant_id": id, "changes": changes }),
            )
            .publish(Published::tenant(Topic::TenantUpdated, &tenant).moved_from(old.region.as_str()));
        self.store.update_tenant(&tenant, &old, event).await?;
        self.verifier.forget(crate::store::ChangeKind::Tenant, tenant.id.0);
        Ok(tenant)
    }

    pub async fn set_tenant_status(
        &self,
        auth: &Authorized<ManageTenants>,
        id: TenantId,
        status: TenantStatus,
        reason: &str,
    ) -> Result<Tenant> {
        let old = self.store.tenant(id).await?.ok_or(Error::NotFound)?;
        let reason = reason.trim();
        if reason.chars().count() > 500 {
            return Err(Error::field(
                "reason",
                "too_long",
                "A reason is at most 500 characters.",
            ));
        }
        if old.status == status {
            return Ok(old);
        }
        let tenant = Tenant {
            status,
            updated_at: self.clock.now(),
            ..old.clone()
        };
        let event = self.new_event(
            EventType::TenantStatusChanged,
            auth.actor(),
            Some(id),
            json!({ "tenant_id": id, "old": old.status, "new": status, "reason": (!reason.is_empty()).then_some(reason) }),
        )
        .publish(Published::tenant_status_changed(&tenant, old.status, (!reason.is_empty()).then_some(reason)));
        self.store.update_tenant(&tenant, &old, event).await?;
        self.verifier.forget(crate::store::ChangeKind::Tenant, tenant.id.0);
        if status == TenantStatus::Suspended {
            // Its users' sessions die at once (the session check refuses them anyway).
            self.store.delete_tenant_sessions(id).await?;
        }
        Ok(tenant)
    }

    /// Delete a tenant: the caller must type its slug. Out of service at once; the database
    /// is dropped after the retention period (`purge_deleted_tenants`).
    pub async fn delete_tenant(
        &self,
        auth: &Authorized<ManageTenants>,
        id: TenantId,
        typed_slug: &str,
    ) -> Result<Tenant> {
        let tenant = self.store.tenant(id).await?.ok_or(Error::NotFound)?;
        if typed_slug.trim() != tenant.slug.as_str() {
            return Err(Error::field(
                "confirm_slug",
                "mismatch",
                format!("Type {} to confirm.", tenant.slug),
            ));
        }
        let event = self
            .new_event(
                EventType::TenantDeleted,
                auth.actor(),
                Some(id),
                json!({ "tenant_id": id, "slug": tenant.slug, "name": tenant.name, "status": tenant.status }),
            )
            .publish(Published::tenant(Topic::TenantDeleted, &tenant));
        self.store.delete_tenant(id, self.clock.now(), event).await?;
        self.verifier.forget(crate::store::ChangeKind::Tenant, id.0);
        Ok(tenant)
    }

    /// Drop the databases of tenants deleted longer ago than the retention period.
    pub async fn purge_deleted_tenants(&self) -> Result<Vec<TenantId>> {
        self.store
            .purge_tenants(self.clock.now() - self.config.tenant_retention)
            .await
    }
}
