//! The audit trail: append-only, each event chained to the one before by a SHA-256 hash.
//!
//! `hash = SHA-256(prev_hash ‖ seq ‖ id ‖ ts ‖ type ‖ actor ‖ tenant ‖ details)`, where the
//! first event's `prev_hash` is 32 zero bytes. The store assigns `seq` and `prev_hash` inside
//! the transaction that makes the change, so the chain has no forks and no gaps;
//! [`verify_chain`] names the first event whose hash or link does not hold.

use crate::access::Actor;
use crate::ids::{EventId, TenantId, UserId};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// Every kind of event Quarterdeck records. The strings are the public event types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum EventType {
    TenantCreated,
    TenantMetadataUpdated,
    TenantStatusChanged,
    TenantDeleted,
    OwnerCreated,
    SignInSucceeded,
    SignInFailed,
    SignedOut,
    PasswordChanged,
    PasswordChangeFailed,
    SessionsRevoked,
    UserInvited,
    UserRegistered,
    UserRoleAssigned,
    UserRoleRevoked,
    UserSuspended,
    UserReactivated,
    UserDeleted,
    InvitationResent,
    InvitationRevoked,
    UserCreated,
    PasswordReset,
    ImpersonationStarted,
    ImpersonationEnded,
    PatCreated,
    PatRevoked,
    IdentityProviderConfigured,
    IdentityProviderDeleted,
    UserProvisioned,
    UserLinked,
}

impl EventType {
    pub const ALL: [EventType; 30] = [
        Self::TenantCreated,
        Self::TenantMetadataUpdated,
        Self::TenantStatusChanged,
        Self::TenantDeleted,
        Self::OwnerCreated,
        Self::SignInSucceeded,
        Self::SignInFailed,
        Self::SignedOut,
        Self::PasswordChanged,
        Self::PasswordChangeFailed,
        Self::SessionsRevoked,
        Self::UserInvited,
        Self::UserRegistered,
        Self::UserRoleAssigned,
        Self::UserRoleRevoked,
        Self::UserSuspended,
        Self::UserReactivated,
        Self::UserDeleted,
        Self::InvitationResent,
        Self::InvitationRevoked,
        Self::UserCreated,
        Self::PasswordReset,
        Self::ImpersonationStarted,
        Self::ImpersonationEnded,
        Self::PatCreated,
        Self::PatRevoked,
        Self::IdentityProviderConfigured,
        Self::IdentityProviderDeleted,
        Self::UserProvisioned,
        Self::UserLinked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::TenantCreated => "TENANT_CREATED",
            Self::TenantMetadataUpdated => "TENANT_METADATA_UPDATED",
            Self::TenantStatusChanged => "TENANT_STATUS_CHANGED",
            Self::TenantDeleted => "TENANT_DELETED",
            Self::OwnerCreated => "OWNER_CREATED",
            Self::SignInSucceeded => "SIGN_IN_SUCCEEDED",
            Self::SignInFailed => "SIGN_IN_FAILED",
            Self::SignedOut => "SIGNED_OUT",
            Self::PasswordChanged => "PASSWORD_CHANGED",
            Self::PasswordChangeFailed => "PASSWORD_CHANGE_FAILED",
            Self::SessionsRevoked => "SESSIONS_REVOKED",
            Self::UserInvited => "USER_INVITED",
            Self::UserRegistered => "USER_REGISTERED",
            Self::UserRoleAssigned => "USER_ROLE_ASSIGNED",
            Self::UserRoleRevoked => "USER_ROLE_REVOKED",
            Self::UserSuspended => "USER_SUSPENDED",
            Self::UserReactivated => "USER_REACTIVATED",
            Self::UserDeleted => "USER_DELETED",
            Self::InvitationResent => "INVITATION_RESENT",
            Self::InvitationRevoked => "INVITATION_REVOKED",
            Self::UserCreated => "USER_CREATED",
            Self::PasswordReset => "PASSWORD_RESET",
            Self::ImpersonationStarted => "IMPERSONATION_STARTED",
            Self::ImpersonationEnded => "IMPERSONATION_ENDED",
            Self::PatCreated => "PAT_CREATED",
            Self::PatRevoked => "PAT_REVOKED",
            Self::IdentityProviderConfigured => "IDENTITY_PROVIDER_CONFIGURED",
            Self::IdentityProviderDeleted => "IDENTITY_PROVIDER_DELETED",
            Self::UserProvisioned => "USER_PROVISIONED",
            Self::UserLinked => "USER_LINKED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// An event about to be written (the store adds seq, hashes and writes it with the change).
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub id: EventId,
    pub ts: OffsetDateTime,
    pub event_type: EventType,
    pub actor: Actor,
    pub tenant_id: Option<TenantId>,
    pub details: Value,
}

impl NewEvent {
    /// `ts` is truncated to microseconds, the precision both databases keep.
    pub fn new(
        ts: OffsetDateTime,
        event_type: EventType,
        actor: &Actor,
        tenant_id: Option<TenantId>,
        mut details: Value,
    ) -> Self {
        if let Value::Object(map) = &mut details {
            map.entry("actor").or_insert_with(|| match actor.impersonation {
                None => serde_json::json!({ "user_id": actor.user_id, "email": actor.email }),
                Some((id, tenant)) => serde_json::json!({
                    "user_id": actor.user_id, "email": actor.email,
                    "impersonation_id": id, "impersonated_tenant_id": tenant,
                }),
            });
            if let Some(token) = actor.token_id {
                map.entry("token_id").or_insert_with(|| serde_json::json!(token));
            }
            if let Some((id, _)) = actor.impersonation {
                map.entry("impersonation_id").or_insert_with(|| serde_json::json!(id));
            }
        }
        let micros = ts.nanosecond() / 1_000 * 1_000;
        let ts = ts.replace_nanosecond(micros).unwrap_or(ts);
        Self {
            id: EventId::new(),
            ts,
            event_type,
            actor: actor.clone(),
            tenant_id,
            details,
        }
    }
}

/// An event as stored.
#[derive(Clone, Debug, Serialize)]
pub struct AuditEvent {
    pub seq: i64,
    pub id: EventId,
    #[serde(with = "time::serde::rfc3339")]
    pub ts: OffsetDateTime,
    pub event_type: String,
    pub actor_id: Option<UserId>,
    pub actor_email: Option<String>,
    pub tenant_id: Option<TenantId>,
    pub details: Value,
    pub prev_hash: String,
    pub hash: String,
}

/// The hash of the chain before its first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hash that links an event to `prev_hash` (hex in, hex out).
#[expect(clippy::too_many_arguments, reason = "every hashed field is an argument, in order")]
pub fn chain_hash(
    prev_hash: &str,
    seq: i64,
    id: EventId,
    ts: OffsetDateTime,
    event_type: &str,
    actor_id: Option<UserId>,
    actor_email: Option<&str>,
    tenant_id: Option<TenantId>,
    details: &Value,
) -> String {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    field(prev_hash.as_bytes());
    field(&seq.to_be_bytes());
    field(id.0.as_bytes());
    field(&(ts.unix_timestamp_nanos() / 1_000).to_be_bytes());
    field(event_type.as_bytes());
    field(actor_id.map(|u| u.to_string()).unwrap_or_default().as_bytes());
    field(actor_email.unwrap_or_default().as_bytes());
    field(tenant_id.map(|t| t.to_string()).unwrap_or_default().as_bytes());
    // serde_json's Map is a BTreeMap here, so keys serialise sorted: the same bytes whether
    // the details came from the caller or back from either database.
    field(details.to_string().as_bytes());
    hex::encode(h.finalize())
}

impl AuditEvent {
    /// The hash this event should carry, given its fields.
    pub fn expected_hash(&self) -> String {
        chain_hash(
            &self.prev_hash,
            self.seq,
            self.id,
            self.ts,
            &self.event_type,
            self.actor_id,
            self.actor_email.as_deref(),
            self.tenant_id,
            &self.details,
        )
    }
}

/// Where the chain first fails.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainBreak {
    pub seq: i64,
    pub id: EventId,
    pub reason: &'static str,
}

/// Incremental verifier: feed it events in `seq` order.
#[derive(Debug)]
pub struct ChainVerifier {
    prev_hash: String,
    prev_seq: i64,
    pub checked: u64,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self {
            prev_hash: GENESIS_HASH.to_owned(),
            prev_seq: 0,
            checked: 0,
        }
    }
}

impl ChainVerifier {
    pub fn check(&mut self, e: &AuditEvent) -> Result<(), ChainBreak> {
        let fail = |reason| ChainBreak {
            seq: e.seq,
            id: e.id,
            reason,
        };
        if e.seq != self.prev_seq + 1 {
            return Err(fail("a gap in the sequence: an event before this one is missing"));
        }
        if e.prev_hash != self.prev_hash {
            return Err(fail("its link does not match the previous event's hash"));
        }
        if e.hash != e.expected_hash() {
            return Err(fail("its contents do not match its hash (it was altered)"));
        }
        self.prev_hash = e.hash.clone();
        self.prev_seq = e.seq;
        self.checked += 1;
        Ok(())
    }
}

/// Filter and page for listing events (newest first, keyset paging on `seq`).
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub event_type: Option<String>,
    pub tenant_id: Option<TenantId>,
    /// Matches the actor's email, case-insensitively, as a substring.
    pub actor: Option<String>,
    pub from: Option<OffsetDateTime>,
    pub to: Option<OffsetDateTime>,
    /// Only events with `seq` below this (the next page's cursor).
    pub before_seq: Option<i64>,
    pub limit: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(seq: i64, prev: &str) -> AuditEvent {
        let mut e = AuditEvent {
            seq,
            id: EventId::new(),
            ts: OffsetDateTime::UNIX_EPOCH,
            event_type: "TENANT_CREATED".into(),
            actor_id: None,
            actor_email: Some("a@b.io".into()),
            tenant_id: None,
            details: json!({"b": 1, "a": "x"}),
            prev_hash: prev.into(),
            hash: String::new(),
        };
        e.hash = e.expected_hash();
        e
    }

    #[test]
    fn an_intact_chain_verifies_and_an_altered_event_is_named() {
        let a = event(1, GENESIS_HASH);
        let mut b = event(2, &a.hash);
        let c = event(3, &b.hash);
        let mut v = ChainVerifier::default();
        for e in [&a, &b, &c] {
            v.check(e).unwrap();
        }
        b.details = json!({"b": 2, "a": "x"});
        let mut v = ChainVerifier::default();
        v.check(&a).unwrap();
        assert_eq!(v.check(&b).unwrap_err().seq, 2);
    }
}
