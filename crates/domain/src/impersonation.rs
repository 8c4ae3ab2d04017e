//! "Switch to tenant": a platform user acting inside a tenant, time-boxed, every action
//! attributed to them.

use crate::audit::NewEvent;
use crate::ids::{TenantId, UserId};
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Clone, Debug)]
pub struct Impersonation {
    pub id: Uuid,
    pub impersonator_id: UserId,
    pub impersonator_email: String,
    pub tenant_id: TenantId,
    pub reason: String,
    pub started_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub ended_at: Option<OffsetDateTime>,
}

impl Impersonation {
    pub fn is_live(&self, now: OffsetDateTime) -> bool {
        self.ended_at.is_none() && now < self.expires_at
    }
}

/// An impersonation to end together with another change (of its impersonator's roles or
/// status), in that change's transaction: set `ended_at` and `end_reason` if it is still live,
/// then write `event` (its `IMPERSONATION_ENDED`) and delete its sessions.
#[derive(Clone, Debug)]
pub struct ImpersonationEnd {
    pub id: Uuid,
    pub at: OffsetDateTime,
    pub reason: &'static str,
    pub event: NewEvent,
}
