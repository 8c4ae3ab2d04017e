//! "Switch to tenant": a platform user acting inside a tenant, time-boxed, every action
//! attributed to them.

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
