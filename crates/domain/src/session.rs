//! Server-side sessions. The cookie carries a random 256-bit id; the database keeps its hash.

use crate::ids::{TenantId, UserId};
use crate::token::TokenHash;
use time::{Duration, OffsetDateTime};

#[derive(Clone, Debug)]
pub struct Session {
    pub id_hash: TokenHash,
    pub user_id: UserId,
    /// `None` for a platform session (base host); a tenant's id for a tenant-host session.
    pub tenant_id: Option<TenantId>,
    /// The synchronizer token every unsafe request of this session must carry.
    pub csrf_token: String,
    pub created_at: OffsetDateTime,
    pub last_seen_at: OffsetDateTime,
    /// Absolute end, whatever the activity.
    pub expires_at: OffsetDateTime,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    /// Set on a tenant-host session opened by "Switch to tenant"; `user_id` is then the
    /// impersonating platform user.
    pub impersonation_id: Option<uuid::Uuid>,
    /// Signed in with a one-time password: nothing but a password change until it is done.
    pub must_change_password: bool,
}

/// Idle and absolute limits.
#[derive(Clone, Copy, Debug)]
pub struct SessionPolicy {
    pub idle: Duration,
    pub absolute: Duration,
}

impl SessionPolicy {
    pub fn is_live(&self, s: &Session, now: OffsetDateTime) -> bool {
        now < s.expires_at && now - s.last_seen_at < self.idle
    }
    /// Whether `last_seen_at` is stale enough to be worth a write.
    pub fn needs_touch(&self, s: &Session, now: OffsetDateTime) -> bool {
        now - s.last_seen_at >= Duration::seconds(60)
    }
}
