//! Settings → Tokens: personal access tokens for the Automation API, on the base host for
//! platform users (`/settings/tokens`) and on a tenant's host for its admins
//! (`/portal/settings/tokens`). A new token is shown once.

use super::portal::PortalChrome;
use super::{Chrome, Errors, Opt, fmt_time, render};
use crate::auth::{CurrentSession, PortalSession};
use crate::error::HtmlError;
use crate::state::AppState;
use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use quarterdeck_domain::core::{NewTokenRequest, SignedIn};
use quarterdeck_domain::role::Capability;
use quarterdeck_domain::tenant::TenantFilter;
use quarterdeck_domain::{Error, access::ReadTenants};
use serde::Deserialize;

pub struct TokenRow {
    pub id: String,
    pub name: String,
    pub scope: &'static str,
    pub tenant: String,
    pub created: String,
    pub last_used: String,
    pub expires: String,
    pub state: &'static str,
}

/// What both pages show.
pub struct TokensPanel {
    pub tokens: Vec<TokenRow>,
    pub tenants: Vec<Opt>,
    pub form: NewTokenForm,
    pub errors: Errors,
    /// The token just made: shown here once.
    pub new_secret: Option<String>,
    pub action: &'static str,
}

#[derive(Deserialize, Default, Clone)]
pub struct NewTokenForm {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub scope: String,
    #[serde(default)]
    pub expires_in_days: String,
    #[serde(default)]
    pub tenant_id: String,
}

#[derive(Template)]
#[template(path = "tokens.html")]
pub struct ConsoleTokensPage {
    pub chrome: Chrome,
    pub panel: TokensPanel,
}

#[derive(Template)]
#[template(path = "portal_tokens.html")]
pub struct PortalTokensPage {
    pub chrome: PortalChrome,
    pub panel: TokensPanel,
}

async fn panel(
    state: &AppState,
    s: &SignedIn,
    form: NewTokenForm,
    errors: Errors,
    new_secret: Option<String>,
    action: &'static str,
) -> Result<TokensPanel, Error> {
    let now = state.core.clock.now();
    let tokens = state.core.tokens(s).await?;
    let tenants = match (s.user.tenant_id, s.principal.require::<ReadTenants>()) {
        (None, Ok(read)) => {
            let (list, _) = state
                .core
                .list_tenants(
                    &read,
                    &TenantFilter {
                        limit: 1000,
                        ..Default::default()
                    },
                )
                .await?;
            let mut opts = vec![Opt {
                value: String::new(),
                label: "All tenants I may reach".to_owned(),
                selected: form.tenant_id.is_empty(),
            }];
            opts.extend(list.iter().map(|t| Opt {
                value: t.id.to_string(),
                label: format!("{} ({})", t.name.as_str(), t.slug),
                selected: t.id.to_string() == form.tenant_id,
            }));
            opts
        }
        _ => Vec::new(),
    };
    Ok(TokensPanel {
        tokens: tokens
            .iter()
            .map(|t| TokenRow {
                id: t.id.to_string(),
                name: t.name.clone(),
                scope: t.scope.as_str(),
                tenant: t
                    .restrict_tenant_id
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "—".to_owned()),
                created: fmt_time(t.created_at),
                last_used: t.last_used_at.map(fmt_time).unwrap_or_else(|| "never".to_owned()),
                expires: fmt_time(t.expires_at),
                state: if t.revoked_at.is_some() {
                    "revoked"
                } else if t.expires_at <= now {
                    "expired"
                } else {
                    "active"
                },
            })
            .collect(),
        tenants,
        form,
        errors,
        new_secret,
        action,
    })
}

fn default_form() -> NewTokenForm {
    NewTokenForm {
        scope: "read".to_owned(),
        expires_in_days: "30".to_owned(),
        ..Default::default()
    }
}

fn request(f: &NewTokenForm) -> NewTokenRequest {
    NewTokenRequest {
        name: f.name.clone(),
        scope: f.scope.clone(),
        expires_in_days: f.expires_in_days.clone(),
        tenant_id: f.tenant_id.clone(),
    }
}

/// Create a token from the form: the panel with the new token shown once, or with the form's
/// field messages.
async fn create(
    state: &AppState,
    s: &SignedIn,
    f: NewTokenForm,
    action: &'static str,
) -> Result<(StatusCode, TokensPanel), Error> {
    let (status, form, errors, secret) = match state.core.create_token(s, request(&f)).await {
        Ok((_, secret)) => (
            StatusCode::OK,
            default_form(),
            Errors::default(),
            Some(secret.expose().to_owned()),
        ),
        Err(Error::Validation(fields)) => (StatusCode::UNPROCESSABLE_ENTITY, f, Errors::from_fields(&fields), None),
        Err(e) => return Err(e),
    };
    Ok((status, panel(state, s, form, errors, secret, action).await?))
}

// ---- console --------------------------------------------------------------------------------

pub async fn console(State(state): State<AppState>, CurrentSession(s): CurrentSession) -> Result<Response, HtmlError> {
    let panel = panel(&state, &s, default_form(), Errors::default(), None, "/settings/tokens").await?;
    Ok(render(&ConsoleTokensPage {
        chrome: Chrome::console(&s, "settings"),
        panel,
    }))
}

pub async fn console_create(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    Form(f): Form<NewTokenForm>,
) -> Result<Response, HtmlError> {
    let (status, panel) = create(&state, &s, f, "/settings/tokens").await?;
    Ok((
        status,
        render(&ConsoleTokensPage {
            chrome: Chrome::console(&s, "settings"),
            panel,
        }),
    )
        .into_response())
}

pub async fn console_revoke(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    Path(id): Path<String>,
) -> Result<Response, HtmlError> {
    state
        .core
        .revoke_token(&s, id.parse().map_err(|_| Error::NotFound)?)
        .await?;
    Ok(Redirect::to("/settings/tokens").into_response())
}

// ---- portal ---------------------------------------------------------------------------------

fn portal_admin(s: &SignedIn) -> Result<(), Error> {
    if s.principal.can(&Capability::TenantUsersManage) {
        Ok(())
    } else {
        Err(Error::Forbidden)
    }
}

pub async fn portal(State(state): State<AppState>, PortalSession(s, t): PortalSession) -> Result<Response, HtmlError> {
    portal_admin(&s)?;
    let panel = panel(
        &state,
        &s,
        default_form(),
        Errors::default(),
        None,
        "/portal/settings/tokens",
    )
    .await?;
    Ok(render(&PortalTokensPage {
        chrome: PortalChrome::new(&s, &t, "tokens"),
        panel,
    }))
}

pub async fn portal_create(
    State(state): State<AppState>,
    PortalSession(s, t): PortalSession,
    Form(f): Form<NewTokenForm>,
) -> Result<Response, HtmlError> {
    portal_admin(&s)?;
    let (status, panel) = create(&state, &s, f, "/portal/settings/tokens").await?;
    Ok((
        status,
        render(&PortalTokensPage {
            chrome: PortalChrome::new(&s, &t, "tokens"),
            panel,
        }),
    )
        .into_response())
}

pub async fn portal_revoke(
    State(state): State<AppState>,
    PortalSession(s, _): PortalSession,
    Path(id): Path<String>,
) -> Result<Response, HtmlError> {
    state
        .core
        .revoke_token(&s, id.parse().map_err(|_| Error::NotFound)?)
        .await?;
    Ok(Redirect::to("/portal/settings/tokens").into_response())
}
