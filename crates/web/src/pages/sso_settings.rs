//! Settings → Single sign-on: the identity provider of the platform (`/settings/sso`, for the
//! owner) or of a tenant (`/portal/settings/sso`, for its admins). One form for OIDC and SAML;
//! the page shows what to register at the provider (redirect URI, ACS URL, entity id).

use super::portal::PortalChrome;
use super::{Chrome, Errors, Opt, fmt_time, render};
use crate::auth::{CurrentSession, PortalSession, Site};
use crate::error::HtmlError;
use crate::sso::{SAML_SUPPORTED, SsoEndpoints};
use crate::state::AppState;
use askama::Template;
use axum::Form;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use quarterdeck_domain::Error;
use quarterdeck_domain::access::ReadTenants;
use quarterdeck_domain::core::SignedIn;
use quarterdeck_domain::role::Scope;
use quarterdeck_domain::sso::{IdentityProvider, ProtocolSettings, ProviderForm, SignInMode};
use quarterdeck_domain::tenant::TenantFilter;
use quarterdeck_domain::user::Directory;
use serde::Deserialize;

/// The form as posted (and as shown again with its errors).
#[derive(Default, Clone)]
pub struct SsoForm {
    pub protocol: String,
    pub display_name: String,
    pub mode: String,
    pub auto_provision: Option<String>,
    /// Roles arrive as repeated `default_roles` fields.
    pub default_roles: Vec<String>,
    pub default_tenant_id: String,
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    pub scopes: String,
    pub email_claim: String,
    pub name_claim: String,
    pub metadata_url: String,
    pub metadata_xml: String,
    pub email_attribute: String,
    pub name_attribute: String,
}

impl SsoForm {
    /// From the posted fields (`default_roles` repeats, so not through serde's structs).
    fn from_pairs(pairs: &[(String, String)]) -> Self {
        let mut f = Self::default();
        for (k, v) in pairs {
            let v = v.clone();
            match k.as_str() {
                "protocol" => f.protocol = v,
                "display_name" => f.display_name = v,
                "mode" => f.mode = v,
                "auto_provision" => f.auto_provision = Some(v),
                "default_roles" => f.default_roles.push(v),
                "default_tenant_id" => f.default_tenant_id = v,
                "issuer" => f.issuer = v,
                "client_id" => f.client_id = v,
                "client_secret" => f.client_secret = v,
                "scopes" => f.scopes = v,
                "email_claim" => f.email_claim = v,
                "name_claim" => f.name_claim = v,
                "metadata_url" => f.metadata_url = v,
                "metadata_xml" => f.metadata_xml = v,
                "email_attribute" => f.email_attribute = v,
                "name_attribute" => f.name_attribute = v,
                _ => {}
            }
        }
        f
    }

    fn from_provider(p: &IdentityProvider) -> Self {
        let mut f = Self {
            protocol: p.protocol().as_str().to_owned(),
            display_name: p.display_name.clone(),
            mode: p.mode.as_str().to_owned(),
            auto_provision: p.auto_provision.then(|| "on".to_owned()),
            default_roles: p.default_roles.clone(),
            default_tenant_id: p.default_tenant_id.map(|t| t.to_string()).unwrap_or_default(),
            ..Default::default()
        };
        match &p.settings {
            ProtocolSettings::Oidc(o) => {
                f.issuer = o.issuer.clone();
                f.client_id = o.client_id.clone();
                f.scopes = o.scopes.join(" ");
                f.email_claim = o.email_claim.clone();
                f.name_claim = o.name_claim.clone();
            }
            ProtocolSettings::Saml(s) => {
                f.metadata_url = s.metadata_url.clone().unwrap_or_default();
                f.metadata_xml = s.metadata_xml.clone();
                f.email_attribute = s.email_attribute.clone();
                f.name_attribute = s.name_attribute.clone();
            }
        }
        f
    }

    fn blank() -> Self {
        Self {
            protocol: "oidc".to_owned(),
            mode: SignInMode::Both.as_str().to_owned(),
            scopes: "email profile".to_owned(),
            email_claim: "email".to_owned(),
            name_claim: "name".to_owned(),
            ..Default::default()
        }
    }

    fn to_domain(&self) -> ProviderForm {
        ProviderForm {
            protocol: self.protocol.clone(),
            display_name: self.display_name.clone(),
            mode: self.mode.clone(),
            auto_provision: self.auto_provision.is_some(),
            default_roles: self.default_roles.clone(),
            default_tenant_id: self.default_tenant_id.clone(),
            issuer: self.issuer.clone(),
            client_id: self.client_id.clone(),
            client_secret: self.client_secret.clone(),
            scopes: self.scopes.clone(),
            email_claim: self.email_claim.clone(),
            name_claim: self.name_claim.clone(),
            metadata_xml: self.metadata_xml.clone(),
            metadata_url: self.metadata_url.clone(),
            email_attribute: self.email_attribute.clone(),
            name_attribute: self.name_attribute.clone(),
        }
    }
}

pub struct RoleChoice {
    pub name: String,
    pub description: String,
    pub checked: bool,
}

/// What both pages show.
pub struct SsoPanel {
    pub form: SsoForm,
    pub errors: Errors,
    pub configured: bool,
    pub has_secret: bool,
    pub updated: String,
    pub endpoints: SsoEndpoints,
    pub modes: Vec<Opt>,
    pub roles: Vec<RoleChoice>,
    /// The platform page only: the tenant auto-provisioned users join.
    pub tenants: Option<Vec<Opt>>,
    pub saml_supported: bool,
    pub action: &'static str,
    pub notice: Option<&'static str>,
}

#[derive(Template)]
#[template(path = "sso_settings.html")]
pub struct ConsoleSsoPage {
    pub chrome: Chrome,
    pub panel: SsoPanel,
}

#[derive(Template)]
#[template(path = "portal_sso.html")]
pub struct PortalSsoPage {
    pub chrome: PortalChrome,
    pub panel: SsoPanel,
}

#[derive(Deserialize, Default)]
pub struct SsoQuery {
    done: Option<String>,
}

fn notice(q: &SsoQuery) -> Option<&'static str> {
    match q.done.as_deref() {
        Some("saved") => Some("Single sign-on settings saved."),
        Some("deleted") => Some("Single sign-on removed: users sign in with passwords."),
        _ => None,
    }
}

async fn panel(
    state: &AppState,
    s: &SignedIn,
    site: &Site,
    stored: Option<&IdentityProvider>,
    form: SsoForm,
    errors: Errors,
    action: &'static str,
) -> Result<SsoPanel, Error> {
    let roles = state
        .core
        .catalog()
        .roles()
        .iter()
        .filter(|r| r.scope == Scope::Tenant)
        .map(|r| RoleChoice {
            name: r.name.clone(),
            description: r.description.clone(),
            checked: form.default_roles.iter().any(|n| n == &r.name),
        })
        .collect();
    let tenants = match (site.directory(), s.principal.require::<ReadTenants>()) {
        (Directory::Platform, Ok(read)) => {
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
                label: "— none —".to_owned(),
                selected: form.default_tenant_id.is_empty(),
            }];
            opts.extend(list.iter().map(|t| Opt {
                value: t.id.to_string(),
                label: format!("{} ({})", t.name.as_str(), t.slug),
                selected: t.id.to_string() == form.default_tenant_id,
            }));
            Some(opts)
        }
        (Directory::Platform, Err(_)) => Some(Vec::new()),
        _ => None,
    };
    let modes = [SignInMode::Both, SignInMode::SsoOnly, SignInMode::Password]
        .into_iter()
        .map(|m| Opt {
            value: m.as_str().to_owned(),
            label: m.label().to_owned(),
            selected: form.mode == m.as_str(),
        })
        .collect();
    Ok(SsoPanel {
        configured: stored.is_some(),
        has_secret: stored.is_some_and(|p| p.sealed_secret.is_some()),
        updated: stored.map(|p| fmt_time(p.updated_at)).unwrap_or_default(),
        endpoints: SsoEndpoints::for_origin(&site.origin(state)),
        modes,
        roles,
        tenants,
        saml_supported: SAML_SUPPORTED,
        action,
        notice: None,
        form,
        errors,
    })
}

/// The stored settings as a panel.
async fn show_panel(state: &AppState, s: &SignedIn, site: &Site, action: &'static str) -> Result<SsoPanel, Error> {
    let stored = state.core.identity_provider(&s.principal, site.directory()).await?;
    let form = stored.as_ref().map_or_else(SsoForm::blank, SsoForm::from_provider);
    panel(state, s, site, stored.as_ref(), form, Errors::default(), action).await
}

/// Check and save; `Ok(None)` when saved, else the panel with the form's field messages.
async fn save(
    state: &AppState,
    s: &SignedIn,
    site: &Site,
    mut f: SsoForm,
    action: &'static str,
) -> Result<Option<SsoPanel>, Error> {
    let dir = site.directory();
    let result = async {
        let mut draft = state
            .core
            .check_provider_form(&s.principal, dir, &f.to_domain())
            .await?;
        state.sso.check_draft(&state.core, &mut draft).await?;
        state.core.save_identity_provider(&s.principal, draft).await
    }
    .await;
    match result {
        Ok(_) => Ok(None),
        Err(Error::Validation(fields)) => {
            let stored = state.core.identity_provider(&s.principal, dir).await?;
            // A typed secret is never sent back to the browser.
            f.client_secret.clear();
            Ok(Some(
                panel(state, s, site, stored.as_ref(), f, Errors::from_fields(&fields), action).await?,
            ))
        }
        Err(e) => Err(e),
    }
}

// ---- console --------------------------------------------------------------------------------

pub async fn console(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    site: Site,
    Query(q): Query<SsoQuery>,
) -> Result<Response, HtmlError> {
    let mut panel = show_panel(&state, &s, &site, "/settings/sso").await?;
    panel.notice = notice(&q);
    Ok(render(&ConsoleSsoPage {
        chrome: Chrome::console(&s, "settings"),
        panel,
    }))
}

pub async fn console_save(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    site: Site,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, HtmlError> {
    let f = SsoForm::from_pairs(&pairs);
    match save(&state, &s, &site, f, "/settings/sso").await? {
        None => Ok(Redirect::to("/settings/sso?done=saved").into_response()),
        Some(panel) => Ok((
            StatusCode::UNPROCESSABLE_ENTITY,
            render(&ConsoleSsoPage {
                chrome: Chrome::console(&s, "settings"),
                panel,
            }),
        )
            .into_response()),
    }
}

pub async fn console_delete(
    State(state): State<AppState>,
    CurrentSession(s): CurrentSession,
    site: Site,
) -> Result<Response, HtmlError> {
    state
        .core
        .delete_identity_provider(&s.principal, site.directory())
        .await?;
    Ok(Redirect::to("/settings/sso?done=deleted").into_response())
}

// ---- portal ---------------------------------------------------------------------------------

pub async fn portal(
    State(state): State<AppState>,
    PortalSession(s, t): PortalSession,
    site: Site,
    Query(q): Query<SsoQuery>,
) -> Result<Response, HtmlError> {
    let mut panel = show_panel(&state, &s, &site, "/portal/settings/sso").await?;
    panel.notice = notice(&q);
    Ok(render(&PortalSsoPage {
        chrome: PortalChrome::new(&s, &t, "sso"),
        panel,
    }))
}

pub async fn portal_save(
    State(state): State<AppState>,
    PortalSession(s, t): PortalSession,
    site: Site,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, HtmlError> {
    let f = SsoForm::from_pairs(&pairs);
    match save(&state, &s, &site, f, "/portal/settings/sso").await? {
        None => Ok(Redirect::to("/portal/settings/sso?done=saved").into_response()),
        Some(panel) => Ok((
            StatusCode::UNPROCESSABLE_ENTITY,
            render(&PortalSsoPage {
                chrome: PortalChrome::new(&s, &t, "sso"),
                panel,
            }),
        )
            .into_response()),
    }
}

pub async fn portal_delete(
    State(state): State<AppState>,
    PortalSession(s, _): PortalSession,
    site: Site,
) -> Result<Response, HtmlError> {
    state
        .core
        .delete_identity_provider(&s.principal, site.directory())
        .await?;
    Ok(Redirect::to("/portal/settings/sso?done=deleted").into_response())
}
