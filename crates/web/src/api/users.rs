//! `/v1/admin/users` (platform users, or a tenant's with `tenant_id`), their role assignments
//! and invitations. The same domain operations as the console, so the same rules and events,
//! with the token's id in each event.

use super::schema::{CreatedUser, ErrorBody, UserList, UserOut};
use super::{Body, Caller, Query};
use crate::error::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use quarterdeck_domain::access::{ManageDirectory, ReadDirectory};
use quarterdeck_domain::core::{InviteRequest, NewUserRequest};
use quarterdeck_domain::user::{Directory, UserStatus};
use quarterdeck_domain::{Error, TenantId, UserId};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

/// Which directory a call is about: `tenant_id` given → that tenant's users; else the platform's
/// (a tenant's token always means its tenant).
#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Where {
    /// The tenant whose users these are; omitted: the platform's users (or, for a tenant's
    /// token, its tenant's).
    tenant_id: Option<String>,
}

fn directory(caller: &Caller, w: &Where) -> Result<Directory, Error> {
    let dir = match w.tenant_id.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => match caller.0.token.owner_tenant_id {
            Some(own) => Directory::Tenant(own),
            None => Directory::Platform,
        },
        Some(raw) => Directory::Tenant(raw.parse::<TenantId>().map_err(|_| Error::NotFound)?),
    };
    match dir {
        Directory::Tenant(t) => caller.0.check_tenant(t)?,
        Directory::Platform if caller.0.tenant_limit().is_some() => return Err(Error::NotFound),
        Directory::Platform => {}
    }
    Ok(dir)
}

fn user_id(raw: &str) -> Result<UserId, Error> {
    raw.parse().map_err(|_| Error::NotFound)
}

/// List users.
#[utoipa::path(get, path = "/v1/admin/users", tag = "users", params(Where),
    responses((status = 200, body = UserList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(w): Query<Where>,
) -> Result<Json<UserList>, ApiError> {
    let dir = directory(&caller, &w)?;
    let users = state
        .core
        .users(&caller.0.principal.require_in::<ReadDirectory>(dir)?)
        .await?;
    Ok(Json(UserList {
        items: users.into_iter().map(UserOut::from).collect(),
        next_cursor: None,
    }))
}

/// One user.
#[utoipa::path(get, path = "/v1/admin/users/{id}", tag = "users", params(("id" = Uuid, Path, description = "User id"), Where),
    responses((status = 200, body = UserOut), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(w): Query<Where>,
) -> Result<Json<UserOut>, ApiError> {
    let dir = directory(&caller, &w)?;
    Ok(Json(
        state
            .core
            .user_view(&caller.0.principal.require_in::<ReadDirectory>(dir)?, user_id(&id)?)
            .await?
            .into(),
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Delivery {
    /// Email an invitation link (the default).
    Invitation,
    /// Return a one-time password in this response, once (tenant users only).
    OneTimePassword,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    #[schema(format = Email, max_length = 254)]
    email: String,
    #[serde(default)]
    #[schema(max_length = 100)]
    name: String,
    #[schema(min_items = 1)]
    roles: Vec<String>,
    /// The tenant to create the user in (its id); omitted or empty: a platform user.
    tenant_id: Option<String>,
    delivery: Option<Delivery>,
    /// With a one-time password: must they change it at first sign-in (default true)?
    force_password_change: Option<bool>,
}

/// Create a user: by invitation (`USER_INVITED`, the link goes by email) or with a one-time
/// password returned once (`USER_CREATED`, tenant users only).
#[utoipa::path(post, path = "/v1/admin/users", tag = "users", request_body = CreateUser,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 200, description = "Replays the first response for the same key and body")),
    responses((status = 201, body = CreatedUser), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Body(b): Body<CreateUser>,
) -> Result<Response, ApiError> {
    let w = Where {
        tenant_id: b.tenant_id.clone(),
    };
    let dir = directory(&caller, &w)?;
    let by = &caller.0.principal;
    let (user, otp) = match b.delivery.unwrap_or(Delivery::Invitation) {
        Delivery::Invitation => {
            let req = InviteRequest {
                email: b.email,
                name: b.name,
                roles: b.roles,
                tenant_id: dir.tenant_id().map(|t| t.to_string()).unwrap_or_default(),
            };
            (
                state
                    .core
                    .invite(&by.require_in::<ManageDirectory>(req.directory(by)?)?, req)
                    .await?,
                None,
            )
        }
        Delivery::OneTimePassword => {
            let [role] = b.roles.as_slice() else {
                return Err(
                    Error::field("roles", "one_role", "With a one-time password, give exactly one role.").into(),
                );
            };
            let req = NewUserRequest {
                email: b.email,
                name: b.name,
                role: role.clone(),
                force_change: b.force_password_change.unwrap_or(true),
            };
            let (user, otp) = state
                .core
                .add_user_with_password(&by.require_in::<ManageDirectory>(dir)?, req)
                .await?;
            (user, Some(otp))
        }
    };
    let mut resp = (
        StatusCode::CREATED,
        Json(CreatedUser {
            user: user.into(),
            one_time_password: otp,
        }),
    )
        .into_response();
    resp.extensions_mut()
        .insert(super::SecretFields(&["one_time_password"]));
    Ok(resp)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    /// `ACTIVE` or `SUSPENDED`.
    #[schema(pattern = "^(ACTIVE|SUSPENDED)$")]
    status: Option<String>,
    /// Replace the roles.
    #[schema(min_items = 1)]
    roles: Option<Vec<String>>,
}

/// Suspend or reactivate (`status`), or replace the roles.
#[utoipa::path(patch, path = "/v1/admin/users/{id}", tag = "users", request_body = UpdateUser, params(("id" = Uuid, Path, description = "User id"), Where),
    responses((status = 200, body = UserOut), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(w): Query<Where>,
    Body(b): Body<UpdateUser>,
) -> Result<Json<UserOut>, ApiError> {
    let dir = directory(&caller, &w)?;
    let id = user_id(&id)?;
    let by = &caller.0.principal;
    if let Some(roles) = &b.roles {
        state
            .core
            .set_user_roles(&by.require_in::<ManageDirectory>(dir)?, id, roles)
            .await?;
    }
    match b.status.as_deref() {
        None => {}
        Some("SUSPENDED") | Some("ACTIVE") => {
            let want = b.status.as_deref() == Some("SUSPENDED");
            let current = state
                .core
                .user_view(&by.require_in::<ReadDirectory>(dir)?, id)
                .await?
                .user
                .status;
            let is_suspended = current == UserStatus::Suspended;
            if want != is_suspended {
                state
                    .core
                    .set_user_suspended(&by.require_in::<ManageDirectory>(dir)?, id, want)
                    .await?;
            }
        }
        Some(_) => return Err(Error::field("status", "invalid_status", "Use ACTIVE or SUSPENDED.").into()),
    }
    Ok(Json(
        state
            .core
            .user_view(&by.require_in::<ReadDirectory>(dir)?, id)
            .await?
            .into(),
    ))
}

/// Delete a user: gone from sign-in at once (`USER_DELETED`).
#[utoipa::path(delete, path = "/v1/admin/users/{id}", tag = "users", params(("id" = Uuid, Path, description = "User id"), Where),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(w): Query<Where>,
) -> Result<StatusCode, ApiError> {
    let dir = directory(&caller, &w)?;
    state
        .core
        .delete_user(&caller.0.principal.require_in::<ManageDirectory>(dir)?, user_id(&id)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn change_role(
    state: &AppState,
    caller: &Caller,
    id: &str,
    role: &str,
    w: &Where,
    assign: bool,
) -> Result<Json<UserOut>, ApiError> {
    let dir = directory(caller, w)?;
    let id = user_id(id)?;
    let by = &caller.0.principal;
    let mut roles = state
        .core
        .user_view(&by.require_in::<ReadDirectory>(dir)?, id)
        .await?
        .user
        .roles;
    if assign {
        if !roles.iter().any(|r| r == role) {
            roles.push(role.to_owned());
        }
    } else {
        roles.retain(|r| r != role);
    }
    state
        .core
        .set_user_roles(&by.require_in::<ManageDirectory>(dir)?, id, &roles)
        .await?;
    Ok(Json(
        state
            .core
            .user_view(&by.require_in::<ReadDirectory>(dir)?, id)
            .await?
            .into(),
    ))
}

/// Assign a role (`USER_ROLE_ASSIGNED`).
#[utoipa::path(put, path = "/v1/admin/users/{id}/roles/{role}", tag = "role assignments", params(("id" = Uuid, Path, description = "User id"), ("role" = String, Path, description = "Role name"), Where),
    responses((status = 200, body = UserOut), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn assign_role(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, role)): Path<(String, String)>,
    Query(w): Query<Where>,
) -> Result<Json<UserOut>, ApiError> {
    change_role(&state, &caller, &id, &role, &w, true).await
}

/// Revoke a role (`USER_ROLE_REVOKED`).
#[utoipa::path(delete, path = "/v1/admin/users/{id}/roles/{role}", tag = "role assignments", params(("id" = Uuid, Path, description = "User id"), ("role" = String, Path, description = "Role name"), Where),
    responses((status = 200, body = UserOut), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn revoke_role(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, role)): Path<(String, String)>,
    Query(w): Query<Where>,
) -> Result<Json<UserOut>, ApiError> {
    change_role(&state, &caller, &id, &role, &w, false).await
}

/// Pending invitations (users still `INVITED`), with their delivery state.
#[utoipa::path(get, path = "/v1/admin/invitations", tag = "invitations", params(Where),
    responses((status = 200, body = UserList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn invitations(
    State(state): State<AppState>,
    caller: Caller,
    Query(w): Query<Where>,
) -> Result<Json<UserList>, ApiError> {
    let dir = directory(&caller, &w)?;
    let users = state
        .core
        .users(&caller.0.principal.require_in::<ReadDirectory>(dir)?)
        .await?;
    let items = users
        .into_iter()
        .filter(|v| v.user.status == UserStatus::Invited)
        .map(UserOut::from)
        .collect();
    Ok(Json(UserList {
        items,
        next_cursor: None,
    }))
}

/// Resend: a new link; the old one dies (`INVITATION_RESENT`).
#[utoipa::path(post, path = "/v1/admin/users/{id}/invitation/resend", tag = "invitations", params(("id" = Uuid, Path, description = "User id"), Where),
    responses((status = 200, body = UserOut), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn resend_invitation(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(w): Query<Where>,
) -> Result<Json<UserOut>, ApiError> {
    let dir = directory(&caller, &w)?;
    let id = user_id(&id)?;
    state
        .core
        .resend_invitation(&caller.0.principal.require_in::<ManageDirectory>(dir)?, id)
        .await?;
    Ok(Json(
        state
            .core
            .user_view(&caller.0.principal.require_in::<ReadDirectory>(dir)?, id)
            .await?
            .into(),
    ))
}

/// Revoke: the link dies (`INVITATION_REVOKED`).
#[utoipa::path(delete, path = "/v1/admin/users/{id}/invitation", tag = "invitations", params(("id" = Uuid, Path, description = "User id"), Where),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn revoke_invitation(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(w): Query<Where>,
) -> Result<StatusCode, ApiError> {
    let dir = directory(&caller, &w)?;
    state
        .core
        .revoke_invitation(&caller.0.principal.require_in::<ManageDirectory>(dir)?, user_id(&id)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
