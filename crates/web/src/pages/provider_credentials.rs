//! The portal's **Provider credentials** (`/portal/provider-credentials`): one card per provider
//! of the catalog (`providers` in settings) with what is stored — non-secret fields in clear, a
//! hint of each secret (last four and fingerprint), who changed it and when — a form to set or
//! replace it (secret inputs stay empty; empty keeps the stored value) and Delete. Tenant admins
//! only (`tenant:config`). The secrets themselves never reach this page.

use super::portal::PortalChrome;
use super::{Errors, fmt_time, render};
use crate::auth::PortalSession;
use crate::error::{HtmlError, status_of};
use crate::state::AppState;
use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use quarterdeck_domain::Error;
use quarterdeck_domain::access::ManageProviderCredentials;
use quarterdeck_domain::core::SignedIn;
use quarterdeck_domain::provider::{CredentialInput, Provider, ProviderCredential, SecretHint};
use quarterdeck_domain::tenant::Tenant;
use serde::Deserialize;

/// One input of a provider's form.
pub struct FieldView {
    pub name: String,
    pub label: String,
    pub input_id: String,
    pub secret: bool,
    pub required: bool,
    /// Non-secret fields: the stored (or just typed) value. Secret fields: always "".
    pub value: String,
    pub error: Option<String>,
    /// Secret fields: "…abcd · fingerprint 0123456789ab" when stored.
    pub hint: Option<String>,
}

/// One provider's card.
pub struct ProviderCard {
    pub id: String,
    pub name: String,
    pub stored: bool,
    pub fields: Vec<FieldView>,
    /// Stored fields for the summary: (label, shown value, is a secret hint).
    pub summary: Vec<(String, String, bool)>,
    pub updated_by: String,
    pub updated: String,
    pub has_errors: bool,
}

#[derive(Template)]
#[template(path = "portal_provider_credentials.html")]
pub struct CredentialsPage {
    pub chrome: PortalChrome,
    pub cards: Vec<ProviderCard>,
    pub notice: Option<String>,
    pub problem: Option<String>,
}

/// What a failed save puts back on its card: the provider, the typed values, the messages.
struct Retry<'a> {
    provider: &'a str,
    input: &'a CredentialInput,
    errors: Errors,
}

/// "…abcd · fingerprint 0123…", or only the fingerprint for a secret too short to show a tail.
fn hint_text(h: &SecretHint, between: &str) -> String {
    if h.last_four.is_empty() {
        format!("fingerprint {}", h.fingerprint)
    } else {
        format!("…{}{between}{}", h.last_four, h.fingerprint)
    }
}

fn card(p: &Provider, stored: Option<&ProviderCredential>, retry: Option<&Retry<'_>>) -> ProviderCard {
    let retry = retry.filter(|r| r.provider == p.id);
    let fields = p
        .fields
        .iter()
        .map(|f| {
            let hint = stored
                .and_then(|c| c.hints.get(&f.name))
                .map(|h| hint_text(h, " · fingerprint "));
            let value = if f.secret {
                String::new()
            } else if let Some(r) = retry {
                r.input.get(&f.name).cloned().unwrap_or_default()
            } else {
                stored.and_then(|c| c.fields.get(&f.name)).cloned().unwrap_or_default()
            };
            FieldView {
                name: f.name.clone(),
                label: f.label.clone(),
                input_id: format!("pc-{}-{}", p.id, f.name),
                secret: f.secret,
                required: f.required,
                value,
                error: retry.and_then(|r| r.errors.get(&f.name)).map(str::to_owned),
                hint,
            }
        })
        .collect();
    let summary = stored
        .map(|c| {
            p.fields
                .iter()
                .filter_map(|f| {
                    if let Some(h) = c.hints.get(&f.name) {
                        Some((f.label.clone(), hint_text(h, "  ·  "), true))
                    } else {
                        c.fields.get(&f.name).map(|v| (f.label.clone(), v.clone(), false))
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    ProviderCard {
        id: p.id.clone(),
        name: p.name.clone(),
        stored: stored.is_some(),
        fields,
        summary,
        updated_by: stored
            .and_then(|c| c.updated_by.clone())
            .unwrap_or_else(|| "—".to_owned()),
        updated: stored.map(|c| fmt_time(c.updated_at)).unwrap_or_default(),
        has_errors: retry.is_some_and(|r| !r.errors.is_empty()),
    }
}

async fn page(state: &AppState, s: &SignedIn, t: &Tenant, retry: Option<&Retry<'_>>) -> Result<CredentialsPage, Error> {
    let auth = s.principal.require_for_tenant::<ManageProviderCredentials>(t.id)?;
    let providers = state.core.provider_credentials(&auth).await?;
    Ok(CredentialsPage {
        chrome: PortalChrome::new(s, t, "provider_credentials"),
        cards: providers.iter().map(|(p, c)| card(p, c.as_ref(), retry)).collect(),
        notice: None,
        problem: None,
    })
}

#[derive(Deserialize, Default)]
pub struct DoneQuery {
    done: Option<String>,
    provider: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    PortalSession(s, t): PortalSession,
    Query(q): Query<DoneQuery>,
) -> Result<Response, HtmlError> {
    let mut p = page(&state, &s, &t, None).await?;
    let name = q
        .provider
        .as_deref()
        .and_then(|id| state.core.config.providers.get(id))
        .map(|p| p.name.clone())
        .unwrap_or_else(|| "The provider".to_owned());
    p.notice = match q.done.as_deref() {
        Some("saved") => Some(format!("{name} credential saved.")),
        Some("deleted") => Some(format!("{name} credential deleted.")),
        _ => None,
    };
    Ok(render(&p))
}

pub async fn save(
    State(state): State<AppState>,
    PortalSession(s, t): PortalSession,
    Path(provider): Path<String>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, HtmlError> {
    let auth = s.principal.require_for_tenant::<ManageProviderCredentials>(t.id)?;
    let input: CredentialInput = pairs.into_iter().filter(|(k, _)| k != "csrf_token").collect();
    match state.core.set_provider_credential(&auth, &provider, &input).await {
        Ok(c) => Ok(Redirect::to(&format!(
            "/portal/provider-credentials?done=saved&provider={}",
            c.provider
        ))
        .into_response()),
        Err(Error::Validation(fields)) => {
            let retry = Retry {
                provider: &provider,
                input: &input,
                errors: Errors::from_fields(&fields),
            };
            let mut p = page(&state, &s, &t, Some(&retry)).await?;
            p.problem = Some("Check the fields marked below.".to_owned());
            Ok((axum::http::StatusCode::UNPROCESSABLE_ENTITY, render(&p)).into_response())
        }
        Err(e @ (Error::TenantReadOnly | Error::TenantSuspended)) => {
            let mut p = page(&state, &s, &t, None).await?;
            p.problem = Some(e.to_string());
            Ok((status_of(&e), render(&p)).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn delete(
    State(state): State<AppState>,
    PortalSession(s, t): PortalSession,
    Path(provider): Path<String>,
) -> Result<Response, HtmlError> {
    let auth = s.principal.require_for_tenant::<ManageProviderCredentials>(t.id)?;
    state.core.delete_provider_credential(&auth, &provider).await?;
    Ok(Redirect::to(&format!(
        "/portal/provider-credentials?done=deleted&provider={provider}"
    ))
    .into_response())
}
