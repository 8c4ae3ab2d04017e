//! The glue between the domain's single sign-on and the protocols (`quarterdeck-sso`): the
//! URLs this service answers at, the redirect to the provider, and the checks of its answer.
//! Every URL here is built from the configured base URL and the tenant's slug, never from a
//! request's headers.

use quarterdeck_domain::Error;
use quarterdeck_domain::core::{ProviderDraft, SsoStart};
use quarterdeck_domain::sso::{ExternalLogin, IdentityProvider, OidcSettings, ProtocolSettings, SsoAttempt};
use quarterdeck_outbound::{DOCUMENT_LIMIT, Outbound};
use quarterdeck_sso::oidc::{OidcConfig, OidcError, RelyingParty};
use std::sync::Arc;

/// The endpoints an identity provider is told about, for one site.
#[derive(Clone, Debug)]
pub struct SsoEndpoints {
    /// OIDC redirect URI.
    pub redirect_uri: String,
    /// SAML assertion consumer service (HTTP-POST).
    pub acs_url: String,
    /// SAML service provider entity id.
    pub sp_entity_id: String,
}

impl SsoEndpoints {
    /// For the site whose origin (from the configured base URL) is `origin`.
    pub fn for_origin(origin: &str) -> Self {
        Self {
            redirect_uri: format!("{origin}/sso/oidc/callback"),
            acs_url: format!("{origin}/sso/saml/acs"),
            sp_entity_id: format!("{origin}/sso/saml/metadata"),
        }
    }
}

/// Why a protocol check refused an answer: the domain's reason (what the person is told) and
/// the protocol's own code (what the audit trail records).
pub struct Refusal {
    pub reason: &'static str,
    pub detail: String,
}

/// Whether this build can sign in with SAML.
pub const SAML_SUPPORTED: bool = cfg!(feature = "saml");

pub struct SsoProtocols {
    oidc: RelyingParty,
    /// Every fetch on an administrator's say-so (SAML metadata here, OIDC in `oidc`).
    outbound: Arc<Outbound>,
}

impl SsoProtocols {
    pub fn new(outbound: Arc<Outbound>) -> Self {
        Self {
            oidc: RelyingParty::new(Arc::clone(&outbound)),
            outbound,
        }
    }

    fn oidc_config(o: &OidcSettings, client_secret: String) -> OidcConfig {
        OidcConfig {
            issuer: o.issuer.clone(),
            client_id: o.client_id.clone(),
            client_secret,
            scopes: o.scopes.clone(),
            email_claim: o.email_claim.clone(),
            name_claim: o.name_claim.clone(),
        }
    }

    /// The outside checks before a configuration is saved: OIDC discovery answers for the
    /// issuer; SAML metadata (pasted, or fetched from its URL) names an entity, a redirect
    /// endpoint and a signing certificate. Problems are field errors on the form.
    pub async fn check_draft(&self, core: &quarterdeck_domain::Core, draft: &mut ProviderDraft) -> Result<(), Error> {
        let secret = draft.client_secret(core)?;
        match &mut draft.settings {
            ProtocolSettings::Oidc(o) => {
                if let Err(e) = self.oidc.check(&Self::oidc_config(o, secret)).await {
                    return Err(Error::field(
                        "issuer",
                        "discovery_failed",
                        format!("The issuer's OpenID configuration could not be used: {e}."),
                    ));
                }
                Ok(())
            }
            ProtocolSettings::Saml(s) => {
                if s.metadata_xml.is_empty()
                    && let Some(url) = &s.metadata_url
                {
                    s.metadata_xml = self.fetch_metadata(url).await?;
                }
                let entity_id = saml_entity_id(&s.metadata_xml)?;
                s.idp_entity_id = entity_id;
                Ok(())
            }
        }
    }

    async fn fetch_metadata(&self, url: &str) -> Result<String, Error> {
        let fail = |why: &str| {
            Error::field(
                "metadata_url",
                "metadata_unreachable",
                format!("The metadata could not be fetched from this URL: {why}."),
            )
        };
        let body = self
            .outbound
            .get(url, DOCUMENT_LIMIT)
            .await
            .map_err(|e| fail(&e.to_string()))?;
        String::from_utf8(body).map_err(|_| fail("it is not text"))
    }

    /// Where to send the browser for a sign-in that just began.
    pub async fn redirect_url(
        &self,
        core: &quarterdeck_domain::Core,
        start: &SsoStart,
        endpoints: &SsoEndpoints,
    ) -> Result<String, Refusal> {
        match &start.provider.settings {
            ProtocolSettings::Oidc(o) => {
                let secret = core.client_secret(&start.provider).map_err(|e| Refusal {
                    reason: "provider_error",
                    detail: e.to_string(),
                })?;
                self.oidc
                    .authorization_url(
                        &Self::oidc_config(o, secret),
                        &endpoints.redirect_uri,
                        start.state.expose(),
                        &start.nonce,
                        &start.pkce_verifier,
                    )
                    .await
                    .map(|u| u.to_string())
                    .map_err(|e| Refusal {
                        reason: "provider_error",
                        detail: format!("{}: {e}", e.code()),
                    })
            }
            ProtocolSettings::Saml(s) => saml_redirect(s, start, endpoints, core.clock.now()),
        }
    }

    /// Check an OIDC answer (the code) and read who it is.
    pub async fn verify_oidc(
        &self,
        core: &quarterdeck_domain::Core,
        provider: &IdentityProvider,
        attempt: &SsoAttempt,
        code: &str,
        endpoints: &SsoEndpoints,
    ) -> Result<ExternalLogin, Refusal> {
        let ProtocolSettings::Oidc(o) = &provider.settings else {
            return Err(Refusal {
                reason: "invalid_response",
                detail: "an OIDC answer for a SAML provider".to_owned(),
            });
        };
        let secret = core.client_secret(provider).map_err(|e| Refusal {
            reason: "provider_error",
            detail: e.to_string(),
        })?;
        self.oidc
            .complete(
                &Self::oidc_config(o, secret),
                &endpoints.redirect_uri,
                code,
                &attempt.nonce,
                &attempt.pkce_verifier,
                core.clock.now(),
            )
            .await
            .map(|claims| {
                let mut login = ExternalLogin::from(claims);
                // `email_verified` speaks of the `email` claim: an address read from another
                // claim (`upn`, `preferred_username`) is shown, never trusted to link or provision.
                if !(o.email_claim.is_empty() || o.email_claim == "email") {
                    login.email_verified = false;
                }
                login
            })
            .map_err(|e| Refusal {
                reason: match e {
                    OidcError::DiscoveryFailed(_)
                    | OidcError::TokenExchangeFailed(_)
                    | OidcError::UserinfoFailed(_) => "provider_error",
                    _ => "invalid_response",
                },
                detail: format!("{}: {e}", e.code()),
            })
    }
}

/// A verified SAML assertion, with what replay protection needs.
pub struct SamlAnswer {
    pub login: ExternalLogin,
    pub assertion_id: String,
    pub not_on_or_after: time::OffsetDateTime,
}

#[cfg(feature = "saml")]
mod saml_glue {
    use super::*;
    use quarterdeck_domain::sso::SamlSettings;
    use quarterdeck_sso::saml;

    pub fn entity_id(xml: &str) -> Result<String, Error> {
        saml::parse_idp_metadata(xml).map(|m| m.entity_id).map_err(|e| {
            Error::field(
                "metadata_xml",
                "invalid_metadata",
                format!("This metadata cannot be used: {e}."),
            )
        })
    }

    fn sp(endpoints: &SsoEndpoints) -> saml::ServiceProvider {
        saml::ServiceProvider {
            entity_id: endpoints.sp_entity_id.clone(),
            acs_url: endpoints.acs_url.clone(),
        }
    }

    fn idp(s: &SamlSettings) -> Result<saml::IdpMetadata, Refusal> {
        saml::parse_idp_metadata(&s.metadata_xml).map_err(|e| Refusal {
            reason: "provider_error",
            detail: format!("{}: {e}", e.code()),
        })
    }

    pub fn redirect(
        s: &SamlSettings,
        start: &SsoStart,
        endpoints: &SsoEndpoints,
        now: time::OffsetDateTime,
    ) -> Result<String, Refusal> {
        saml::authn_request(
            &sp(endpoints),
            &idp(s)?,
            &start.saml_request_id,
            start.state.expose(),
            now,
        )
        .map(|r| r.url.to_string())
        .map_err(|e| Refusal {
            reason: "provider_error",
            detail: format!("{}: {e}", e.code()),
        })
    }

    pub fn verify(
        s: &SamlSettings,
        attempt: &SsoAttempt,
        saml_response: &str,
        endpoints: &SsoEndpoints,
        now: time::OffsetDateTime,
    ) -> Result<SamlAnswer, Refusal> {
        let expected = attempt.saml_request_id.as_deref().unwrap_or_default();
        let a = saml::verify_response(&sp(endpoints), &idp(s)?, saml_response, expected, now).map_err(|e| Refusal {
            reason: match e {
                saml::SamlError::StatusNotSuccess { .. } => "provider_error",
                _ => "invalid_response",
            },
            detail: format!("{}: {e}", e.code()),
        })?;
        let attr = |name: &str| {
            (!name.is_empty())
                .then(|| a.attributes.get(name).and_then(|v| v.first()).cloned())
                .flatten()
        };
        let email = attr(&s.email_attribute).or_else(|| a.name_id.contains('@').then(|| a.name_id.clone()));
        let name = attr(&s.name_attribute);
        // A signed assertion from the directory's own identity provider vouches for the email,
        // unless it says otherwise.
        let email_verified = a
            .attributes
            .get("email_verified")
            .and_then(|v| v.first())
            .is_none_or(|v| !v.eq_ignore_ascii_case("false"));
        Ok(SamlAnswer {
            login: ExternalLogin {
                issuer: a.issuer,
                subject: a.name_id,
                email,
                email_verified,
                name,
            },
            assertion_id: a.id,
            not_on_or_after: a.not_on_or_after,
        })
    }
}

#[cfg(feature = "saml")]
fn saml_entity_id(xml: &str) -> Result<String, Error> {
    saml_glue::entity_id(xml)
}

#[cfg(not(feature = "saml"))]
fn saml_entity_id(_xml: &str) -> Result<String, Error> {
    Err(Error::field(
        "protocol",
        "saml_unavailable",
        "This build of Quarterdeck has no SAML support (build it with the `saml` feature).",
    ))
}

#[cfg(feature = "saml")]
fn saml_redirect(
    s: &quarterdeck_domain::sso::SamlSettings,
    start: &SsoStart,
    endpoints: &SsoEndpoints,
    now: time::OffsetDateTime,
) -> Result<String, Refusal> {
    saml_glue::redirect(s, start, endpoints, now)
}

#[cfg(not(feature = "saml"))]
fn saml_redirect(
    _s: &quarterdeck_domain::sso::SamlSettings,
    _start: &SsoStart,
    _endpoints: &SsoEndpoints,
    _now: time::OffsetDateTime,
) -> Result<String, Refusal> {
    Err(Refusal {
        reason: "not_configured",
        detail: "this build has no SAML support".to_owned(),
    })
}

/// Check a SAML answer posted to the ACS.
#[cfg(feature = "saml")]
pub fn verify_saml(
    provider: &IdentityProvider,
    attempt: &SsoAttempt,
    saml_response: &str,
    endpoints: &SsoEndpoints,
    now: time::OffsetDateTime,
) -> Result<SamlAnswer, Refusal> {
    match &provider.settings {
        ProtocolSettings::Saml(s) => saml_glue::verify(s, attempt, saml_response, endpoints, now),
        ProtocolSettings::Oidc(_) => Err(Refusal {
            reason: "invalid_response",
            detail: "a SAML answer for an OIDC provider".to_owned(),
        }),
    }
}

#[cfg(not(feature = "saml"))]
pub fn verify_saml(
    _provider: &IdentityProvider,
    _attempt: &SsoAttempt,
    _saml_response: &str,
    _endpoints: &SsoEndpoints,
    _now: time::OffsetDateTime,
) -> Result<SamlAnswer, Refusal> {
    Err(Refusal {
        reason: "not_configured",
        detail: "this build has no SAML support".to_owned(),
    })
}
