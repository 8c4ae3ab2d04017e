//! Platform users (read) and the audit trail.

use super::Core;
use crate::access::{Authorized, ReadAudit, ReadUsers};
use crate::audit::{AuditEvent, AuditFilter, ChainBreak, ChainVerifier};
use crate::error::{Error, Result};
use crate::ids::EventId;
use crate::user::User;

impl Core {
    // ---- users and audit --------------------------------------------------------------------------

    pub async fn list_platform_users(&self, _auth: &Authorized<ReadUsers>) -> Result<Vec<User>> {
        self.store.list_users(crate::user::Directory::Platform).await
    }

    pub async fn list_events(&self, _auth: &Authorized<ReadAudit>, filter: &AuditFilter) -> Result<Vec<AuditEvent>> {
        self.store.list_events(filter).await
    }

    pub async fn event(&self, _auth: &Authorized<ReadAudit>, id: EventId) -> Result<AuditEvent> {
        self.store.event(id).await?.ok_or(Error::NotFound)
    }

    /// Walk the whole chain; `Ok(checked)` or the first break.
    pub async fn verify_audit_chain(&self) -> Result<std::result::Result<u64, ChainBreak>> {
        let mut v = ChainVerifier::default();
        let mut after = 0;
        loop {
            let batch = self.store.events_after(after, 1000).await?;
            let Some(last) = batch.last() else { break };
            after = last.seq;
            for e in &batch {
                if let Err(b) = v.check(e) {
                    return Ok(Err(b));
                }
            }
        }
        Ok(Ok(v.checked))
    }
}

impl Core {
    /// A tenant's own events, for its portal: its users with the audit capability only.
    pub async fn tenant_events(
        &self,
        by: &crate::access::Principal,
        tenant: crate::ids::TenantId,
        before_seq: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditEvent>> {
        if by.tenant_id != Some(tenant) {
            return Err(crate::error::Error::NotFound);
        }
        if !by.can(&crate::role::Capability::TenantAudit) {
            return Err(crate::error::Error::Forbidden);
        }
        let filter = AuditFilter {
            tenant_id: Some(tenant),
            before_seq,
            limit,
            ..Default::default()
        };
        self.store.list_events(&filter).await
    }
}
