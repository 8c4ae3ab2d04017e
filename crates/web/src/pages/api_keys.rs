//! Tenant API keys: the portal's **API keys** page (`/portal/api-keys`: list, New key, Roll,
//! Revoke; a new or rolled secret is shown once) for the tenant's admins and developers, and the
//! keys on the console's tenant page (metadata only, Revoke for who manages tenants). The rules
//! (scopes, limits, tenant status, grace periods) are the domain's.

use super::portal::PortalChrome;
use super::{Errors, ShownOnce, fmt_time, render};
use crate::auth::{CurrentSession, PortalSession};
use crate::error::{HtmlError, status_of};
use crate::state::AppState;
use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use quarterdeck_domain::access::{ManageApiKeys, ReadApiKeys};
use quarterdeck_domain::api_key::{ApiKey, NewApiKeyRequest};
use quarterdeck_domain::core::SignedIn;
use quarterdeck_domain::tenant::Tenant;
use quarterdeck_domain::{Error, TenantId};
use serde::Deserialize;
use time::OffsetDateTime;
use uuid::Uuid;

/// A key as the lists show it (never its secret).
pub struct KeyRow {
    pub id: String,
    pub name: String,
    /// `prefix…last4`
    pub masked: String,
    pub scopes: String,
    pub creator: String,
    pub created: String,
    pub last_used: String,
    pub expires: String,
    pub limit: String,
    pub state: &'static str,
}

impl KeyRow {
    pub fn of(k: &ApiKey, now: OffsetDateTime) -> Self {
        Self {
            id: k.id.to_string(),
            name: k.name.clone(),
            masked: k.masked(),
            scopes: k.scopes.join(", "),
            creator: k.created_by.clone().unwrap_or_else(|| "—".to_owned()),
            created: fmt_time(k.created_at),
            last_used: k.last_used_at.map(fmt_time).unwrap_or_else(|| "never".to_owned()),
            expires: k.expires_at.map(fmt_time).unwrap_or_else(|| "never".to_owned()),
            limit: k
                .requests_per_minute
                .map(|n| format!("{n}/min"))
                .unwrap_or_else(|| "none".to_owned()),
            state: k.state(now).as_str(),
        }
    }
}

/// The New key form as posted (and shown again with its errors).
#[derive(Default, Clone)]
pub struct KeyForm {
    pub name: String,
    /// Repeated `scopes` checkboxes.
    pub scopes: Vec<String>,
    pub expires_in_days: String,
    pub requests_per_minute: String,
}

impl KeyForm {
    fn from_pairs(pairs: &[(String, String)]) -> Self {
        let mut f = Self::default();
        for (k, v) in pairs {
            match k.as_str() {
                "name" => f.name = v.clone(),
                "scopes" => f.scopes.push(v.clone()),
                "expires_in_days" => f.expires_in_days = v.clone(),
                "requests_per_minute" => f.requests_per_minute = v.clone(),
                _ => {}
            }
        }
        f
    }

    fn request(&self) -> NewApiKeyRequest {
        NewApiKeyRequest {
            name: self.name.clone(),
            scopes: self.scopes.clone(),
            expires_in_days: self.expires_in_days.clone(),
            requests_per_minute: self.requests_per_minute.clone(),
        }
    }
}

/// One scope checkbox.
pub struct ScopeChoice {
    pub name: String,
    pub checked: bool,
}

#[derive(Template)]
#[template(path = "portal_api_keys.html")]
pub struct ApiKeysPage {
    pub chrome: PortalChrome,
    pub keys: Vec<KeyRow>,
    pub form: KeyForm,
    pub scopes: Vec<ScopeChoice>,
    pub errors: Errors,
    pub once: Option<ShownOnce>,
    pub notice: Option<&'static str>,
    /// A refusal that is not about one field (read-only tenant, a revoked key).
    pub problem: Option<String>,
    pub prefix: String,
    pub grace_choices: &'static [(&'static str, &'static str)],
}

#[derive(Deserialize, Default)]
pub struct DoneQuery {
    done: Option<String>,
}

/// The grace periods offered when rolling: (seconds, label).
pub const GRACE_CHOICES: [(&str, &str); 4] = [
    ("0", "None: the old secret stops at once"),
    ("3600", "1 hour"),
    ("86400", "24 hours"),
    ("604800", "7 days"),
];

async fn page(state: &AppState, s: &SignedIn, t: &Tenant, form: KeyForm, errors: Errors) -> Result<ApiKeysPage, Error> {
    let keys = state
        .core
        .api_keys(&s.principal.require_for_tenant::<ReadApiKeys>(t.id)?)
        .await?;
    let now = state.core.clock.now();
    let policy = &state.core.config.api_keys;
    let scopes = policy
        .scopes
        .iter()
        .map(|name| ScopeChoice {
            name: name.clone(),
            checked: form.scopes.iter().any(|c| c == name),
        })
        .collect();
    Ok(ApiKeysPage {
        chrome: PortalChrome::new(s, t, "api_keys"),
        keys: keys.iter().map(|k| KeyRow::of(k, now)).collect(),
        form,
        scopes,
        errors,
        once: None,
        notice: None,
        problem: None,
        prefix: policy.prefix.clone(),
        grace_choices: &GRACE_CHOICES,
    })
}

/// A blank form: the first scope ticked.
fn blank_form(state: &AppState) -> KeyForm {
    KeyForm {
        scopes: state.core.config.api_keys.scopes.iter().take(1).cloned().collect(),
        ..Default::default()
    }
}

/// Errors a person can act on, shown on the page rather than as an error page.
fn shown_on_page(e: &Error) -> bool {
    matches!(
        e,
        Error::TenantReadOnly | Error::TenantSuspended | Error::Conflict { .. } | Error::Validation(_)
    )
}

pub async fn list(
    State(state): State<AppState>,
    PortalSession(s, t): PortalSession,
    Query(q): Query<DoneQuery>,
) -> Result<Response, HtmlError> {
    let mut p = page(&state, &s, &t, blank_form(&state), Errors::default()).await?;
    p.notice = match q.done.as_deref() {
        Some("revoked") => Some("Key revoked: it no longer verifies."),
        _ => None,
    };
    Ok(render(&p))
}

pub async fn create(
    State(state): State<AppState>,
    PortalSession(s, t): PortalSession,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, HtmlError> {
    let auth = s.principal.require_for_tenant::<ManageApiKeys>(t.id)?;
    let form = KeyForm::from_pairs(&pairs);
    match state.core.create_api_key(&auth, form.request()).await {
        Ok((key, secret)) => {
            let mut p = page(&state, &s, &t, blank_form(&state), Errors::default()).await?;
            p.once = Some(ShownOnce {
                title: format!("Key “{}” created", key.name),
                secret: secret.expose().to_owned(),
                note: "Send it the way the product's documentation says (usually Authorization: Bearer <key>)."
                    .to_owned(),
                kept: ShownOnce::HASHED,
            });
            Ok(render(&p))
        }
        Err(Error::Validation(fields)) => {
            let p = page(&state, &s, &t, form, Errors::from_fields(&fields)).await?;
            Ok((StatusCode::UNPROCESSABLE_ENTITY, render(&p)).into_response())
        }
        Err(e) if shown_on_page(&e) => {
            let mut p = page(&state, &s, &t, form, Errors::default()).await?;
            p.problem = Some(e.to_string());
            Ok((status_of(&e), render(&p)).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
pub struct RollForm {
    #[serde(default)]
    grace_seconds: String,
}

fn key_id(raw: &str) -> Result<Uuid, Error> {
    raw.parse().map_err(|_| Error::NotFound)
}

pub async fn roll(
    State(state): State<AppState>,
    PortalSession(s, t): PortalSession,
    Path(id): Path<String>,
    Form(f): Form<RollForm>,
) -> Result<Response, HtmlError> {
    let auth = s.principal.require_for_tenant::<ManageApiKeys>(t.id)?;
    let id = key_id(&id)?;
    let grace = f.grace_seconds.trim().parse::<i64>().unwrap_or(0);
    match state.core.roll_api_key(&auth, id, &f.grace_seconds).await {
        Ok((key, secret)) => {
            let mut p = page(&state, &s, &t, blank_form(&state), Errors::default()).await?;
            let note = match key.rolled_at.filter(|_| grace > 0) {
                Some(at) => format!(
                    "The old secret keeps working until {}; move your applications to this one before then.",
                    fmt_time(at + time::Duration::seconds(grace))
                ),
                None => "The old secret stopped working at once.".to_owned(),
            };
            p.once = Some(ShownOnce {
                title: format!("New secret for “{}”", key.name),
                secret: secret.expose().to_owned(),
                note,
                kept: ShownOnce::HASHED,
            });
            Ok(render(&p))
        }
        Err(e) if shown_on_page(&e) => {
            let mut p = page(&state, &s, &t, blank_form(&state), Errors::default()).await?;
            p.problem = Some(match &e {
                Error::Validation(fields) => fields.iter().map(|f| f.message.clone()).collect::<Vec<_>>().join(" "),
                other => other.to_string(),
            });
            Ok((status_of(&e), render(&p)).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn revoke(
    State(state): State<AppState>,
    PortalSession(s, t): PortalSession,
    Path(id): Path<String>,
) -> Result<Response, HtmlError> {
    let auth = s.principal.require_for_tenant::<ManageApiKeys>(t.id)?;
    state.core.revoke_api_key(&auth, key_id(&id)?).await?;
    Ok(Redirect::to("/portal/api-keys?done=revoked").into_response())
}

// ---- console: the tenant page --------------------------------------------------------------

/// The keys the console's tenant page shows: `None` for who may not read them.
pub async fn tenant_keys(state: &AppState, s: &SignedIn, tenant: TenantId) -> Result<Option<Vec<KeyRow>>, Error> {
    let Ok(auth) = s.principal.require_for_tenant::<ReadApiKeys>(tenant) else {
        return Ok(None);
    };
    let now = state.core.clock.now();
    let keys = state.core.api_keys(&auth).await?;
    Ok(Some(keys.iter().map(|k| KeyRow::of(k, now)).collect()))
}

/// `POST /tenants/{id}/api-keys/{key_id}/revoke`: who manages tenants.
pub async fn console_revoke(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    Path((tid, id)): Path<(String, String)>,
) -> Result<Response, HtmlError> {
    let tenant: TenantId = tid.parse().map_err(|_| Error::NotFound)?;
    let auth = s.principal.require_for_tenant::<ManageApiKeys>(tenant)?;
    state.core.revoke_api_key(&auth, key_id(&id)?).await?;
    Ok(Redirect::to(&format!("/tenants/{tenant}?saved=key_revoked#api-keys")).into_response())
}
