//! Platform users (read) and the audit trail.

use super::Core;
use crate::access::{Authorized, ReadAudit, ReadUsers};
use crate::audit::{AuditEvent, AuditFilter, AuditHead, AuditKey, ChainBreak, ChainVerifier};
use crate::audit_checkpoint::{Checkpoint, SignedCheckpoint};
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

    /// The key the audit chain, its head and its checkpoints are authenticated with.
    pub fn audit_key(&self) -> AuditKey {
        AuditKey::from_secret(&self.config.secret_key)
    }

    /// Walk the whole chain up to its head and check the head; `Ok(checked)` or the first break.
    pub async fn verify_audit_chain(&self) -> Result<std::result::Result<u64, ChainBreak>> {
        Ok(self.verify_audit(None).await?.map(|(n, _)| n))
    }

    /// Like [`Core::verify_audit_chain`], and the trail must still hold the checkpoint's event
    /// with the checkpoint's hash (a tail deleted, or the chain rewritten with its head, since
    /// the checkpoint was taken is named here).
    pub async fn verify_audit_checkpoint(
        &self,
        checkpoint: &SignedCheckpoint,
    ) -> Result<std::result::Result<u64, ChainBreak>> {
        Ok(self.verify_audit(Some(checkpoint.get())).await?.map(|(n, _)| n))
    }

    /// Verify the chain, then sign its head: a checkpoint is only ever taken of an intact trail.
    pub async fn take_audit_checkpoint(&self) -> Result<std::result::Result<SignedCheckpoint, ChainBreak>> {
        Ok(self
            .verify_audit(None)
            .await?
            .map(|(_, head)| Checkpoint::sign(&self.audit_key(), &head, self.clock.now())))
    }

    async fn verify_audit(&self, cp: Option<&Checkpoint>) -> Result<std::result::Result<(u64, AuditHead), ChainBreak>> {
        let head = self.store.audit_head().await?;
        // Events appended after the head was read are left for the next run; a checkpoint's
        // event is always looked for, even past a head that was moved back.
        let until = cp.map_or(head.seq, |c| c.seq.max(head.seq));
        let mut v = ChainVerifier::new(Some(self.audit_key()), head.keyed_from);
        let mut after = 0;
        'walk: loop {
            let batch = self.store.events_after(after, 1000).await?;
            let Some(last) = batch.last() else { break };
            after = last.seq;
            for e in &batch {
                if e.seq > until {
                    break 'walk;
                }
                if let Err(b) = v.check(e) {
                    return Ok(Err(b));
                }
                if let Some(c) = cp
                    && e.seq == c.seq
                    && e.hash != c.hash
                {
                    return Ok(Err(ChainBreak {
                        seq: e.seq,
                        id: Some(e.id),
                        reason: format!(
                            "it does not have the hash the checkpoint taken at {} records: the trail was rewritten",
                            c.taken_at
                        ),
                    }));
                }
            }
        }
        if let Some(c) = cp {
            if c.seq > v.last_seq() {
                return Ok(Err(ChainBreak {
                    seq: c.seq,
                    id: None,
                    reason: format!(
                        "the checkpoint taken at {} records event #{}, which is missing: the trail was truncated",
                        c.taken_at, c.seq
                    ),
                }));
            }
            if c.keyed_from != head.keyed_from {
                return Ok(Err(ChainBreak {
                    seq: head.keyed_from,
                    id: None,
                    reason: format!(
                        "the chain is keyed from #{} but the checkpoint taken at {} records #{}: the head was altered",
                        head.keyed_from, c.taken_at, c.keyed_from
                    ),
                }));
            }
        }
        if let Err(b) = v.finish(&head) {
            return Ok(Err(b));
        }
        // Nothing may lie past the head: every write moves the head with its event, so an
        // event beyond it was put there by someone else. (A write that commits while this runs
        // moves the head too: the head is read again before anything is said.)
        if let Some(e) = self.store.events_after(head.seq, 1).await?.into_iter().next()
            && e.seq > self.store.audit_head().await?.seq
        {
            return Ok(Err(ChainBreak {
                seq: e.seq,
                id: Some(e.id),
                reason: format!(
                    "event #{} lies beyond the chain's head (#{}): it was not written by this server",
                    e.seq, head.seq
                ),
            }));
        }
        Ok(Ok((v.checked, head)))
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

impl Core {
    /// The seq of the chain's head (for the checkpoint writer, which skips an unchanged trail).
    pub async fn audit_head_seq(&self) -> Result<i64> {
        Ok(self.store.audit_head().await?.seq)
    }
}
