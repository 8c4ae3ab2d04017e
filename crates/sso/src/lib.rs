//! Single sign-on protocols: [`oidc`], the OpenID Connect relying party that turns an identity
//! provider's answer into what the domain calls an `ExternalLogin`.

pub mod oidc;

/// The SAML 2.0 service provider (`quarterdeck-saml`), with the `saml` feature.
#[cfg(feature = "saml")]
pub use quarterdeck_saml as saml;
