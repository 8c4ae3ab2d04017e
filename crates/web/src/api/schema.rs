//! What the API returns, as documented types: the OpenAPI document is generated from these
//! and from the handlers' annotations.

use quarterdeck_domain::audit::AuditEvent;
use quarterdeck_domain::core::UserView;
use quarterdeck_domain::tenant::Tenant;
use quarterdeck_domain::user::{InvitationState, User};
use serde::Serialize;
use std::collections::BTreeMap;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Serialize, ToSchema)]
pub struct TenantOut {
    pub id: Uuid,
    /// DNS label; the tenant's host is `{slug}.{base host}`.
    pub slug: String,
    pub name: String,
    pub region: String,
    /// `standard`, `high` or `critical`.
    pub tier: String,
    /// `active`, `read_only` or `suspended`.
    pub status: String,
    pub metadata: BTreeMap<String, String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

impl From<Tenant> for TenantOut {
    fn from(t: Tenant) -> Self {
        Self {
            id: t.id.0,
            slug: t.slug.to_string(),
            name: t.name.as_str().to_owned(),
            region: t.region.as_str().to_owned(),
            tier: t.tier.as_str().to_owned(),
            status: t.status.as_str().to_owned(),
            metadata: t.metadata,
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct TenantList {
    pub items: Vec<TenantOut>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct InvitationOut {
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: OffsetDateTime,
    pub spent: bool,
    pub revoked: bool,
    /// `pending`, `sent` or `failed` (the latest email's state), if any.
    pub delivery: Option<String>,
    pub attempts: i64,
}

impl From<InvitationState> for InvitationOut {
    fn from(i: InvitationState) -> Self {
        Self {
            expires_at: i.expires_at,
            spent: i.spent,
            revoked: i.revoked,
            delivery: i.delivery.map(|d| d.as_str().to_owned()),
            attempts: i.attempts,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct UserOut {
    pub id: Uuid,
    pub email: String,
    pub name: Option<String>,
    /// `INVITED`, `ACTIVE` or `SUSPENDED`.
    pub status: String,
    pub roles: Vec<String>,
    /// `null` for platform users.
    pub tenant_id: Option<Uuid>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    pub invitation: Option<InvitationOut>,
}

impl From<User> for UserOut {
    fn from(u: User) -> Self {
        Self {
            id: u.id.0,
            email: u.email.to_string(),
            name: u.name,
            status: u.status.as_str().to_owned(),
            roles: u.roles,
            tenant_id: u.tenant_id.map(|t| t.0),
            created_at: u.created_at,
            invitation: None,
        }
    }
}

impl From<UserView> for UserOut {
    fn from(v: UserView) -> Self {
        let mut out = UserOut::from(v.user);
        out.invitation = v.invitation.map(InvitationOut::from);
        out
    }
}

#[derive(Serialize, ToSchema)]
pub struct UserList {
    pub items: Vec<UserOut>,
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct CreatedUser {
    pub user: UserOut,
    /// Only with `delivery: one_time_password`; never returned again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub one_time_password: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct EventOut {
    pub seq: i64,
    pub id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub ts: OffsetDateTime,
    pub event_type: String,
    pub actor_id: Option<Uuid>,
    pub actor_email: Option<String>,
    pub tenant_id: Option<Uuid>,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

impl From<AuditEvent> for EventOut {
    fn from(e: AuditEvent) -> Self {
        Self {
            seq: e.seq,
            id: e.id.0,
            ts: e.ts,
            event_type: e.event_type,
            actor_id: e.actor_id.map(|a| a.0),
            actor_email: e.actor_email,
            tenant_id: e.tenant_id.map(|t| t.0),
            details: e.details,
            prev_hash: e.prev_hash,
            hash: e.hash,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct EventList {
    pub items: Vec<EventOut>,
    pub next_cursor: Option<String>,
}

/// Every error: a stable `code`, a message, and for validation the fields.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<FieldOut>>,
    /// The request's `x-request-id`, to quote to whoever reads the logs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct FieldOut {
    pub field: String,
    pub code: String,
    pub message: String,
}
