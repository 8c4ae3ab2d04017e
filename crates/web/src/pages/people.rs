//! What the console's and the portal's user pages share: rows, role choices, the invite form,
//! and the user actions (roles, suspend, reactivate, delete, resend, revoke).

use super::fmt_time;
use axum::response::{IntoResponse, Redirect, Response};
use quarterdeck_domain::access::ManageDirectory;
use quarterdeck_domain::access::Principal;
use quarterdeck_domain::core::{Core, InviteRequest, UserView};
use quarterdeck_domain::role::{Catalog, Scope};
use quarterdeck_domain::user::Directory;
use quarterdeck_domain::{Error, UserId};

/// A user as the Team tables show them.
pub struct UserRow {
    pub id: String,
    pub email: String,
    pub name: String,
    pub roles: String,
    pub status: &'static str,
    pub created: String,
    /// For invited users: "delivered", "not delivered yet", "delivery failed", "revoked",
    /// "expired".
    pub invitation: Option<String>,
    pub invitation_expires: String,
}

impl UserRow {
    pub fn from_view(v: &UserView, now: time::OffsetDateTime) -> Self {
        let invitation = v
            .invitation
            .as_ref()
            .filter(|_| v.user.status.as_str() == "INVITED")
            .map(|i| {
                if i.revoked {
                    "revoked".to_owned()
                } else if i.expires_at <= now {
                    "expired".to_owned()
                } else {
                    i.delivery
                        .map(|d| d.label().to_owned())
                        .unwrap_or_else(|| "not sent".to_owned())
                }
            });
        Self {
            id: v.user.id.to_string(),
            email: v.user.email.to_string(),
            name: v.user.name.clone().unwrap_or_default(),
            roles: v.user.roles.join(", "),
            status: v.user.status.as_str(),
            created: fmt_time(v.user.created_at),
            invitation,
            invitation_expires: v
                .invitation
                .as_ref()
                .map(|i| fmt_time(i.expires_at))
                .unwrap_or_default(),
        }
    }
}

/// A role as a checkbox.
pub struct RoleOpt {
    pub name: String,
    pub description: String,
    pub checked: bool,
}

/// The roles `by` may offer for `scope`, with `selected` checked.
pub fn role_options(catalog: &Catalog, by: &Principal, scope: Option<Scope>, selected: &[String]) -> Vec<RoleOpt> {
    catalog
        .roles()
        .iter()
        .filter(|r| scope.is_none_or(|s| r.scope == s) && by.may_grant(r))
        .map(|r| RoleOpt {
            name: r.name.clone(),
            description: r.description.clone(),
            checked: selected.contains(&r.name),
        })
        .collect()
}

/// Whether `by` may act on `user` from a user page: manages users, is not looking at themselves,
/// and could grant every role the user holds.
pub fn may_act_on(
    catalog: &Catalog,
    by: &Principal,
    manage: &quarterdeck_domain::role::Capability,
    user: &quarterdeck_domain::user::User,
) -> bool {
    by.can(manage)
        && user.id != by.user_id
        && user
            .roles
            .iter()
            .all(|r| catalog.role(r).is_none_or(|r| by.may_grant(r)))
}

/// Parses an invite or roles form (repeated `roles` fields) into its pairs.
pub fn field<'a>(pairs: &'a [(String, String)], name: &str) -> &'a str {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

pub fn all(pairs: &[(String, String)], name: &str) -> Vec<String> {
    pairs
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .collect()
}

pub fn invite_request(pairs: &[(String, String)]) -> InviteRequest {
    InviteRequest {
        email: field(pairs, "email").to_owned(),
        name: field(pairs, "name").to_owned(),
        roles: all(pairs, "roles"),
        tenant_id: field(pairs, "tenant_id").to_owned(),
    }
}

/// Run a user action and go back to the user's page (or to `gone_to` after a delete).
pub async fn act(
    core: &Core,
    by: &Principal,
    dir: Directory,
    id: &str,
    action: &str,
    pairs: &[(String, String)],
    (back, gone_to): (&str, &str),
) -> Result<Response, Error> {
    let id: UserId = id.parse().map_err(|_| Error::NotFound)?;
    let done = match action {
        "roles" => {
            core.set_user_roles(&by.require_in::<ManageDirectory>(dir)?, id, &all(pairs, "roles"))
                .await?;
            "roles"
        }
        "suspend" => {
            core.set_user_suspended(&by.require_in::<ManageDirectory>(dir)?, id, true)
                .await?;
            "suspended"
        }
        "reactivate" => {
            core.set_user_suspended(&by.require_in::<ManageDirectory>(dir)?, id, false)
                .await?;
            "reactivated"
        }
        "resend" => {
            core.resend_invitation(&by.require_in::<ManageDirectory>(dir)?, id)
                .await?;
            "resent"
        }
        "revoke" => {
            core.revoke_invitation(&by.require_in::<ManageDirectory>(dir)?, id)
                .await?;
            "revoked"
        }
        "delete" => {
            core.delete_user(&by.require_in::<ManageDirectory>(dir)?, id).await?;
            return Ok(Redirect::to(gone_to).into_response());
        }
        _ => return Err(Error::NotFound),
    };
    Ok(Redirect::to(&format!("{back}?done={done}")).into_response())
}

pub fn done_message(done: Option<&str>) -> Option<&'static str> {
    match done? {
        "invited" => Some("Invitation sent."),
        "roles" => Some("Roles saved."),
        "suspended" => Some("User suspended; their sessions have ended."),
        "reactivated" => Some("User reactivated."),
        "resent" => Some("A new invitation link was sent; the old one no longer works."),
        "revoked" => Some("Invitation revoked; its link no longer works."),
        _ => None,
    }
}
