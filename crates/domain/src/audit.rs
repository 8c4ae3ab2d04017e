//! The audit trail: append-only, each event chained to the one before.
//!
//! `hash = MAC(prev_hash ‖ seq ‖ id ‖ ts ‖ type ‖ actor ‖ tenant ‖ details)`, where the first
//! event's `prev_hash` is 32 zero bytes. The MAC is HMAC-SHA256 with the [`AuditKey`] (derived
//! from the server's secret key, which is not in the database) for every event from the head's
//! `keyed_from` on; events written before the chain was keyed (migration 0003) keep their plain
//! SHA-256 links and still verify. The store assigns `seq` and `prev_hash` inside the
//! transaction that makes the change, so the chain has no forks and no gaps, and it keeps a
//! head row (last seq and hash, `keyed_from`, and a MAC over the three) that only moves
//! forward; [`ChainVerifier`] names the first event whose hash or link does not hold, and
//! [`ChainVerifier::finish`] checks the last event against the head (a deleted tail).

use crate::access::Actor;
use crate::ids::{EventId, TenantId, UserId};
use hmac::{Hmac, Mac};
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
    TenantExported,
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
    ServiceTokenCreated,
    ServiceTokenRevoked,
    ApiKeyCreated,
    ApiKeyRolled,
    ApiKeyRevoked,
    ProviderCredentialSet,
    ProviderCredentialDeleted,
    ProviderCredentialRead,
    BudgetSet,
    BudgetRemoved,
    BudgetThresholdReached,
    BudgetExceeded,
    WebhookEndpointCreated,
    WebhookEndpointUpdated,
    WebhookEndpointDeleted,
    WebhookDeliveryResent,
    ReconcileRepaired,
    ReconcileQuarantined,
    ReconcileDatabaseDropped,
    ReconcileDatabaseMissing,
    ReconcileResolved,
}

impl EventType {
    pub const ALL: [EventType; 52] = [
        Self::TenantCreated,
        Self::TenantMetadataUpdated,
        Self::TenantStatusChanged,
        Self::TenantDeleted,
        Self::TenantExported,
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
        Self::ServiceTokenCreated,
        Self::ServiceTokenRevoked,
        Self::ApiKeyCreated,
        Self::ApiKeyRolled,
        Self::ApiKeyRevoked,
        Self::ProviderCredentialSet,
        Self::ProviderCredentialDeleted,
        Self::ProviderCredentialRead,
        Self::BudgetSet,
        Self::BudgetRemoved,
        Self::BudgetThresholdReached,
        Self::BudgetExceeded,
        Self::WebhookEndpointCreated,
        Self::WebhookEndpointUpdated,
        Self::WebhookEndpointDeleted,
        Self::WebhookDeliveryResent,
        Self::ReconcileRepaired,
        Self::ReconcileQuarantined,
        Self::ReconcileDatabaseDropped,
        Self::ReconcileDatabaseMissing,
        Self::ReconcileResolved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::TenantCreated => "TENANT_CREATED",
            Self::TenantMetadataUpdated => "TENANT_METADATA_UPDATED",
            Self::TenantStatusChanged => "TENANT_STATUS_CHANGED",
            Self::TenantDeleted => "TENANT_DELETED",
            Self::TenantExported => "TENANT_EXPORTED",
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
            Self::ServiceTokenCreated => "SERVICE_TOKEN_CREATED",
            Self::ServiceTokenRevoked => "SERVICE_TOKEN_REVOKED",
            Self::ApiKeyCreated => "API_KEY_CREATED",
            Self::ApiKeyRolled => "API_KEY_ROLLED",
            Self::ApiKeyRevoked => "API_KEY_REVOKED",
            Self::ProviderCredentialSet => "PROVIDER_CREDENTIAL_SET",
            Self::ProviderCredentialDeleted => "PROVIDER_CREDENTIAL_DELETED",
            Self::ProviderCredentialRead => "PROVIDER_CREDENTIAL_READ",
            Self::BudgetSet => "BUDGET_SET",
            Self::BudgetRemoved => "BUDGET_REMOVED",
            Self::BudgetThresholdReached => "BUDGET_THRESHOLD_REACHED",
            Self::BudgetExceeded => "BUDGET_EXCEEDED",
            Self::WebhookEndpointCreated => "WEBHOOK_ENDPOINT_CREATED",
            Self::WebhookEndpointUpdated => "WEBHOOK_ENDPOINT_UPDATED",
            Self::WebhookEndpointDeleted => "WEBHOOK_ENDPOINT_DELETED",
            Self::WebhookDeliveryResent => "WEBHOOK_DELIVERY_RESENT",
            Self::ReconcileRepaired => "RECONCILE_REPAIRED",
            Self::ReconcileQuarantined => "RECONCILE_QUARANTINED",
            Self::ReconcileDatabaseDropped => "RECONCILE_DATABASE_DROPPED",
            Self::ReconcileDatabaseMissing => "RECONCILE_DATABASE_MISSING",
            Self::ReconcileResolved => "RECONCILE_RESOLVED",
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
    /// The public event this change publishes (webhooks and the events feed), written by the
    /// store in the same transaction; its id is this event's id.
    pub published: Option<crate::webhook::Published>,
}

impl NewEvent {
    /// This change also publishes `p` to the product (see [`crate::webhook`]).
    #[must_use]
    pub fn publish(mut self, p: crate::webhook::Published) -> Self {
        self.published = Some(p);
        self
    }

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
            published: None,
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

/// The context string the audit key is derived from the server's secret key with.
pub const AUDIT_KEY_CONTEXT: &str = "quarterdeck audit chain v2";

/// The key the chain, its head and its checkpoints are authenticated with: derived from the
/// server's `secret_key`, never stored in the database.
#[derive(Clone)]
pub struct AuditKey([u8; 32]);

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey(***)")
    }
}

impl AuditKey {
    pub fn from_secret(secret: &crate::sso::SecretKey) -> Self {
        Self(secret.derive(AUDIT_KEY_CONTEXT))
    }

    /// HMAC-SHA256 over length-prefixed fields, in hex. The first field names what is
    /// authenticated (`event`, `head`, `checkpoint`), so no MAC can stand for another kind.
    pub fn mac(&self, fields: &[&[u8]]) -> String {
        let mut h = FieldHasher::Keyed(Box::new(
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!("HMAC takes any key")),
        ));
        for f in fields {
            h.field(f);
        }
        h.finish()
    }
}

enum FieldHasher {
    Plain(Sha256),
    Keyed(Box<Hmac<Sha256>>),
}

impl FieldHasher {
    fn field(&mut self, bytes: &[u8]) {
        let len = (bytes.len() as u64).to_be_bytes();
        match self {
            Self::Plain(h) => {
                Digest::update(h, len);
                Digest::update(h, bytes);
            }
            Self::Keyed(h) => {
                Mac::update(&mut **h, &len);
                Mac::update(&mut **h, bytes);
            }
        }
    }
    fn finish(self) -> String {
        match self {
            Self::Plain(h) => hex::encode(h.finalize()),
            Self::Keyed(h) => hex::encode(h.finalize().into_bytes()),
        }
    }
}

/// The link of an event: plain SHA-256 (`key` = `None`, events from before the chain was keyed)
/// or HMAC-SHA256 with the audit key (hex in, hex out).
#[expect(clippy::too_many_arguments, reason = "every hashed field is an argument, in order")]
pub fn chain_hash(
    key: Option<&AuditKey>,
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
    let mut h = match key {
        None => FieldHasher::Plain(Sha256::new()),
        Some(k) => {
            let mut h = FieldHasher::Keyed(Box::new(
                <Hmac<Sha256> as Mac>::new_from_slice(&k.0).unwrap_or_else(|_| unreachable!("HMAC takes any key")),
            ));
            h.field(b"event");
            h
        }
    };
    h.field(prev_hash.as_bytes());
    h.field(&seq.to_be_bytes());
    h.field(id.0.as_bytes());
    h.field(&(ts.unix_timestamp_nanos() / 1_000).to_be_bytes());
    h.field(event_type.as_bytes());
    h.field(actor_id.map(|u| u.to_string()).unwrap_or_default().as_bytes());
    h.field(actor_email.unwrap_or_default().as_bytes());
    h.field(tenant_id.map(|t| t.to_string()).unwrap_or_default().as_bytes());
    // serde_json's Map is a BTreeMap here, so keys serialise sorted: the same bytes whether
    // the details came from the caller or back from either database.
    h.field(details.to_string().as_bytes());
    h.finish()
}

impl AuditEvent {
    /// The plain SHA-256 link this event would carry in an unkeyed chain (what anyone can
    /// compute, and what events written before the chain was keyed carry).
    pub fn expected_hash(&self) -> String {
        self.hash_with(None)
    }

    /// The link this event should carry: keyed with `key`, or plain.
    pub fn hash_with(&self, key: Option<&AuditKey>) -> String {
        chain_hash(
            key,
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

/// The head of the chain as stored: the last event's seq and hash, the first keyed seq, and a
/// MAC over the three (absent only before the first keyed event is written).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditHead {
    pub seq: i64,
    pub hash: String,
    pub keyed_from: i64,
    pub mac: Option<String>,
}

/// The MAC the head row carries for (seq, hash, keyed_from).
pub fn head_mac(key: &AuditKey, seq: i64, hash: &str, keyed_from: i64) -> String {
    key.mac(&[b"head", &seq.to_be_bytes(), hash.as_bytes(), &keyed_from.to_be_bytes()])
}

/// Where the chain first fails (`id`: the event, when there is one to name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainBreak {
    pub seq: i64,
    pub id: Option<EventId>,
    pub reason: String,
}

/// Incremental verifier: feed it events in `seq` order, then [`ChainVerifier::finish`] it
/// against the head.
#[derive(Debug)]
pub struct ChainVerifier {
    key: Option<AuditKey>,
    keyed_from: i64,
    prev_hash: String,
    prev_seq: i64,
    pub checked: u64,
}

impl Default for ChainVerifier {
    /// A chain that was never keyed (every link plain SHA-256).
    fn default() -> Self {
        Self::new(None, i64::MAX)
    }
}

impl ChainVerifier {
    /// Events from `keyed_from` on must carry MACs with `key`.
    pub fn new(key: Option<AuditKey>, keyed_from: i64) -> Self {
        Self {
            key,
            keyed_from,
            prev_hash: GENESIS_HASH.to_owned(),
            prev_seq: 0,
            checked: 0,
        }
    }

    /// The seq of the last event checked (0 before any).
    pub fn last_seq(&self) -> i64 {
        self.prev_seq
    }

    pub fn check(&mut self, e: &AuditEvent) -> Result<(), ChainBreak> {
        let fail = |reason: &str| ChainBreak {
            seq: e.seq,
            id: Some(e.id),
            reason: reason.to_owned(),
        };
        if e.seq != self.prev_seq + 1 {
            return Err(fail("a gap in the sequence: an event before this one is missing"));
        }
        if e.prev_hash != self.prev_hash {
            return Err(fail("its link does not match the previous event's hash"));
        }
        let expected = if e.seq >= self.keyed_from {
            match &self.key {
                Some(k) => e.hash_with(Some(k)),
                None => return Err(fail("the chain is keyed from here on, and no audit key was given")),
            }
        } else {
            e.expected_hash()
        };
        if e.hash != expected {
            return Err(fail(
                "its contents do not match its hash (it was altered, or its hash was recomputed without the server's key)",
            ));
        }
        self.prev_hash = e.hash.clone();
        self.prev_seq = e.seq;
        self.checked += 1;
        Ok(())
    }

    /// After the last event up to `head.seq`: the head must be authentic and the last event
    /// must be the one it records (a deleted tail, or a head moved back, is named here).
    pub fn finish(&self, head: &AuditHead) -> Result<(), ChainBreak> {
        let at = |seq: i64, reason: String| ChainBreak { seq, id: None, reason };
        match (&head.mac, &self.key) {
            (Some(mac), Some(key)) => {
                if *mac != head_mac(key, head.seq, &head.hash, head.keyed_from) {
                    return Err(at(
                        head.seq,
                        format!(
                            "the chain's head record (#{}) was altered or moved back: its MAC does not match \
                             (events after it may have been deleted)",
                            head.seq
                        ),
                    ));
                }
            }
            (Some(_), None) => return Err(at(head.seq, "no audit key was given to check the head with".to_owned())),
            // No MAC yet: legitimate only before the first keyed event.
            (None, _) if head.seq >= head.keyed_from => {
                return Err(at(
                    head.seq,
                    "the chain's head record lost its MAC although keyed events exist: it was altered".to_owned(),
                ));
            }
            (None, _) => {}
        }
        if self.prev_seq < head.seq {
            return Err(at(
                self.prev_seq + 1,
                format!(
                    "the trail ends at #{} but its head records #{}: events #{}–#{} were deleted",
                    self.prev_seq,
                    head.seq,
                    self.prev_seq + 1,
                    head.seq
                ),
            ));
        }
        if self.prev_hash != head.hash {
            return Err(at(
                head.seq,
                format!("the last event #{} does not match the hash its head records", head.seq),
            ));
        }
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

    fn keyed(seq: i64, prev: &str, key: &AuditKey) -> AuditEvent {
        let mut e = event(seq, prev);
        e.hash = e.hash_with(Some(key));
        e
    }

    #[test]
    fn plain_links_pass_only_before_keyed_from_and_the_head_catches_a_deleted_tail() {
        let key = AuditKey::from_secret(&crate::sso::SecretKey::from_bytes([7; 32]));
        let a = event(1, GENESIS_HASH); // written before the chain was keyed
        let b = keyed(2, &a.hash, &key);
        let c = keyed(3, &b.hash, &key);
        let head = |e: &AuditEvent| AuditHead {
            seq: e.seq,
            hash: e.hash.clone(),
            keyed_from: 2,
            mac: Some(head_mac(&key, e.seq, &e.hash, 2)),
        };
        let mut v = ChainVerifier::new(Some(key.clone()), 2);
        for e in [&a, &b, &c] {
            v.check(e).unwrap();
        }
        v.finish(&head(&c)).unwrap();

        // c deleted: the head still records it.
        let mut v = ChainVerifier::new(Some(key.clone()), 2);
        v.check(&a).unwrap();
        v.check(&b).unwrap();
        assert_eq!(v.finish(&head(&c)).unwrap_err().seq, 3);
        // … and a head moved back to b without the key has no valid MAC.
        let mut rewound = head(&b);
        rewound.mac = head(&c).mac;
        assert_eq!(v.finish(&rewound).unwrap_err().seq, 2);
        assert_eq!(v.finish(&AuditHead { mac: None, ..head(&b) }).unwrap_err().seq, 2);

        // b with a plain link where a keyed one is due.
        let mut plain_b = b.clone();
        plain_b.hash = plain_b.expected_hash();
        let mut v = ChainVerifier::new(Some(key), 2);
        v.check(&a).unwrap();
        assert_eq!(v.check(&plain_b).unwrap_err().seq, 2);
    }
}
