//! Settings → Service tokens (`/settings/service-tokens`): the data plane's credentials
//! (`qd_svc_…`), for the owner (platform configuration). A new token is shown once.

use super::{Chrome, Errors, Opt, ShownOnce, fmt_time, render};
use crate::auth::CurrentSession;
use crate::error::HtmlError;
use crate::state::AppState;
use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use quarterdeck_domain::Error;
use quarterdeck_domain::access::{Authorized, ManageServiceTokens};
use quarterdeck_domain::core::SignedIn;
use quarterdeck_domain::service_token::{NewServiceTokenRequest, ServiceScope, ServiceToken};
use serde::Deserialize;
use time::OffsetDateTime;

pub struct ServiceTokenRow {
    pub id: String,
    pub name: String,
    pub scopes: String,
    pub region: String,
    pub creator: String,
    pub created: String,
    pub last_used: String,
    pub expires: String,
    pub state: &'static str,
}

impl ServiceTokenRow {
    fn of(t: &ServiceToken, now: OffsetDateTime) -> Self {
        Self {
            id: t.id.to_string(),
            name: t.name.clone(),
            scopes: t.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
            region: t.region.clone().unwrap_or_else(|| "all".to_owned()),
            creator: t.created_by.clone().unwrap_or_else(|| "—".to_owned()),
            created: fmt_time(t.created_at),
            last_used: t.last_used_at.map(fmt_time).unwrap_or_else(|| "never".to_owned()),
            expires: t.expires_at.map(fmt_time).unwrap_or_else(|| "never".to_owned()),
            state: if t.revoked_at.is_some() {
                "revoked"
            } else if t.is_live(now) {
                "active"
            } else {
                "expired"
            },
        }
    }
}

/// The form as posted (scopes repeat).
#[derive(Default, Clone)]
pub struct ServiceTokenForm {
    pub name: String,
    pub scopes: Vec<String>,
    pub region: String,
    pub expires_in_days: String,
}

impl ServiceTokenForm {
    fn from_pairs(pairs: &[(String, String)]) -> Self {
        let mut f = Self::default();
        for (k, v) in pairs {
            match k.as_str() {
                "name" => f.name = v.clone(),
                "scopes" => f.scopes.push(v.clone()),
                "region" => f.region = v.clone(),
                "expires_in_days" => f.expires_in_days = v.clone(),
                _ => {}
            }
        }
        f
    }

    fn blank() -> Self {
        Self {
            scopes: vec![ServiceScope::KeysVerify.as_str().to_owned()],
            ..Default::default()
        }
    }
}

pub struct ScopeChoice {
    pub name: &'static str,
    pub checked: bool,
}

#[derive(Template)]
#[template(path = "service_tokens.html")]
pub struct ServiceTokensPage {
    pub chrome: Chrome,
    pub tokens: Vec<ServiceTokenRow>,
    pub form: ServiceTokenForm,
    pub scopes: Vec<ScopeChoice>,
    pub regions: Vec<Opt>,
    pub errors: Errors,
    pub once: Option<ShownOnce>,
    pub notice: Option<&'static str>,
}

async fn page(
    state: &AppState,
    s: &SignedIn,
    auth: &Authorized<ManageServiceTokens>,
    form: ServiceTokenForm,
    errors: Errors,
) -> Result<ServiceTokensPage, Error> {
    let now = state.core.clock.now();
    let tokens = state.core.service_tokens(auth).await?;
    let scopes = ServiceScope::ALL
        .iter()
        .map(|sc| ScopeChoice {
            name: sc.as_str(),
            checked: form.scopes.iter().any(|c| c == sc.as_str()),
        })
        .collect();
    let mut regions = vec![Opt {
        value: String::new(),
        label: "All regions".to_owned(),
        selected: form.region.is_empty(),
    }];
    regions.extend(state.core.config.regions.iter().map(|r| Opt {
        value: r.clone(),
        label: r.clone(),
        selected: *r == form.region,
    }));
    Ok(ServiceTokensPage {
        chrome: Chrome::console(s, "settings"),
        tokens: tokens.iter().map(|t| ServiceTokenRow::of(t, now)).collect(),
        form,
        scopes,
        regions,
        errors,
        once: None,
        notice: None,
    })
}

#[derive(Deserialize, Default)]
pub struct DoneQuery {
    done: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    Query(q): Query<DoneQuery>,
) -> Result<Response, HtmlError> {
    let auth = s.principal.require::<ManageServiceTokens>()?;
    let mut p = page(&state, &s, &auth, ServiceTokenForm::blank(), Errors::default()).await?;
    p.notice = match q.done.as_deref() {
        Some("revoked") => Some("Service token revoked."),
        _ => None,
    };
    Ok(render(&p))
}

pub async fn create(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, HtmlError> {
    let auth = s.principal.require::<ManageServiceTokens>()?;
    let f = ServiceTokenForm::from_pairs(&pairs);
    let req = NewServiceTokenRequest {
        name: f.name.clone(),
        scopes: f.scopes.clone(),
        region: f.region.clone(),
        expires_in_days: f.expires_in_days.clone(),
    };
    match state.core.create_service_token(&auth, req).await {
        Ok((token, secret)) => {
            let mut p = page(&state, &s, &auth, ServiceTokenForm::blank(), Errors::default()).await?;
            p.once = Some(ShownOnce {
                title: format!("Service token “{}” created", token.name),
                secret: secret.expose().to_owned(),
                note: "Give it to the service as Authorization: Bearer <token> for /v1/data-plane/…".to_owned(),
                kept: ShownOnce::HASHED,
            });
            Ok(render(&p))
        }
        Err(Error::Validation(fields)) => {
            let p = page(&state, &s, &auth, f, Errors::from_fields(&fields)).await?;
            Ok((StatusCode::UNPROCESSABLE_ENTITY, render(&p)).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn revoke(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    Path(id): Path<String>,
) -> Result<Response, HtmlError> {
    let auth = s.principal.require::<ManageServiceTokens>()?;
    let id = id.parse().map_err(|_| Error::NotFound)?;
    state.core.revoke_service_token(&auth, id).await?;
    Ok(Redirect::to("/settings/service-tokens?done=revoked").into_response())
}
