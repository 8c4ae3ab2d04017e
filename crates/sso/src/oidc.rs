//! The OpenID Connect relying party: the authorization code flow with PKCE (S256), state and
//! nonce, the ID token checked against the provider's published keys, and the person's email and
//! name read from the claims the directory's settings name (with userinfo as a fallback).
//!
//! Choices worth knowing:
//! - Every request (discovery, JWKS, token, userinfo) goes through `quarterdeck-outbound`: https
//!   only (http only to addresses `outbound_allow_private` allows), no private addresses unless
//!   allowed, no redirects, 10 seconds, 1 MiB for documents and 64 KiB for token and userinfo
//!   answers. The URLs discovery names are held to the same policy as the issuer.
//! - The issuer is compared verbatim (a trailing slash matters), as OpenID Connect Discovery
//!   requires.
//! - Error messages say what failed, never what the provider's answer contained.
//! - ID tokens must be signed with an asymmetric algorithm the provider advertises (RS256,
//!   ES256, PS256, EdDSA, ...). `none` is refused, and so are the HMAC algorithms (HS256...):
//!   the client secret is shared with the provider and with whoever configured the directory,
//!   so a MAC made with it proves nothing about who minted the token.
//! - Discovery (and the JWKS with it) is cached per issuer for five minutes; a token signed
//!   with a key the cached JWKS does not know triggers one fresh discovery (key rotation).
//! - Nothing secret (client secret, code, tokens, PKCE verifier, nonce) is logged or put into
//!   an error message.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreClientAuthMethod, CoreErrorResponseType, CoreGenderClaim, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm, CoreProviderMetadata, CoreResponseType,
    CoreRevocableToken, CoreRevocationErrorResponse, CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AccessToken, AccessTokenHash, AdditionalClaims, AsyncHttpClient, AuthType, AuthenticationFlow, AuthorizationCode,
    ClaimsVerificationError, Client, ClientId, ClientSecret, CsrfToken, DiscoveryError, EmptyExtraTokenFields,
    EndpointMaybeSet, EndpointNotSet, EndpointSet, HttpRequest, HttpResponse, IdToken, IdTokenClaims, IdTokenFields,
    IdTokenVerifier, IssuerUrl, JwsSigningAlgorithm, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, RequestTokenError, Scope, SignatureVerificationError, StandardErrorResponse, StandardTokenResponse,
    SubjectIdentifier, UserInfoError,
};
use quarterdeck_outbound::{DOCUMENT_LIMIT, Outbound, OutboundError, SMALL_LIMIT};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// How long a discovery document (and its JWKS) is reused.
const DISCOVERY_TTL: Duration = Duration::from_secs(5 * 60);
/// At most this many issuers are cached.
const DISCOVERY_CACHE_MAX: usize = 64;
/// How far in the future an ID token's `iat` may be (the provider's clock running ahead).
const IAT_LEEWAY_SECONDS: i64 = 5 * 60;

/// A directory's OpenID Connect settings, with its client secret opened.
#[derive(Clone, PartialEq, Eq)]
pub struct OidcConfig {
    /// The issuer, exactly as the provider names itself; discovery is at
    /// `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    /// Scopes to ask for; `openid` is always added. An entry may hold several, space-separated.
    pub scopes: Vec<String>,
    /// The claim holding the email (`email` when empty), e.g. `upn`.
    pub email_claim: String,
    /// The claim holding the display name (`name` when empty).
    pub name_claim: String,
}

impl OidcConfig {
    /// Settings asking for `openid email profile`, reading `email` and `name`.
    pub fn new(issuer: impl Into<String>, client_id: impl Into<String>, client_secret: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            scopes: vec!["email".to_owned(), "profile".to_owned()],
            email_claim: "email".to_owned(),
            name_claim: "name".to_owned(),
        }
    }

    fn email_claim(&self) -> &str {
        non_empty_or(&self.email_claim, "email")
    }

    fn name_claim(&self) -> &str {
        non_empty_or(&self.name_claim, "name")
    }

    /// `openid` first, then the configured scopes, split on spaces, without duplicates.
    fn scopes(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for scope in self.scopes.iter().flat_map(|s| s.split_whitespace()) {
            if scope != "openid" && !out.iter().any(|s| s == scope) {
                out.push(scope.to_owned());
            }
        }
        out
    }
}

impl fmt::Debug for OidcConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcConfig")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("scopes", &self.scopes)
            .field("email_claim", &self.email_claim)
            .field("name_claim", &self.name_claim)
            .finish()
    }
}

fn non_empty_or<'a>(value: &'a str, default: &'a str) -> &'a str {
    let v = value.trim();
    if v.is_empty() { default } else { v }
}

/// What a provider vouched for, after every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedClaims {
    pub issuer: String,
    pub subject: String,
    pub email: Option<String>,
    /// The `email_verified` claim from where the email was read; `false` when absent.
    pub email_verified: bool,
    pub name: Option<String>,
}

impl From<VerifiedClaims> for quarterdeck_domain::sso::ExternalLogin {
    fn from(c: VerifiedClaims) -> Self {
        Self {
            issuer: c.issuer,
            subject: c.subject,
            email: c.email,
            email_verified: c.email_verified,
            name: c.name,
        }
    }
}

/// Why a provider's configuration or answer was refused. Messages are safe to show an
/// administrator: they never hold a secret, a code or a token.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("discovery failed: {0}")]
    DiscoveryFailed(String),
    #[error("the token exchange failed: {0}")]
    TokenExchangeFailed(String),
    #[error("invalid ID token: {0}")]
    InvalidIdToken(String),
    #[error("wrong issuer: {0}")]
    WrongIssuer(String),
    #[error("wrong audience: {0}")]
    WrongAudience(String),
    #[error("bad signature: {0}")]
    BadSignature(String),
    #[error("unsupported algorithm: {0}")]
    UnsupportedAlgorithm(String),
    #[error("expired: {0}")]
    Expired(String),
    #[error("the ID token's nonce does not match the sign-in's")]
    NonceMismatch,
    #[error("missing claim: {0}")]
    MissingClaim(String),
    #[error("userinfo failed: {0}")]
    UserinfoFailed(String),
    #[error("the userinfo answer is about another subject than the ID token")]
    UserinfoMismatch,
    /// The caller passed something unusable (a PKCE verifier of the wrong length, a redirect URI
    /// that is not a URL, an empty state or nonce...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl OidcError {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::DiscoveryFailed(_) => "discovery_failed",
            Self::TokenExchangeFailed(_) => "token_exchange_failed",
            Self::InvalidIdToken(_) => "invalid_id_token",
            Self::WrongIssuer(_) => "wrong_issuer",
            Self::WrongAudience(_) => "wrong_audience",
            Self::BadSignature(_) => "bad_signature",
            Self::UnsupportedAlgorithm(_) => "unsupported_algorithm",
            Self::Expired(_) => "expired",
            Self::NonceMismatch => "nonce_mismatch",
            Self::MissingClaim(_) => "missing_claim",
            Self::UserinfoFailed(_) => "userinfo_failed",
            Self::UserinfoMismatch => "userinfo_mismatch",
            Self::InvalidRequest(_) => "invalid_request",
        }
    }
}

/// Every claim besides the standard ones, so that any claim name can be configured.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
struct OtherClaims(HashMap<String, Value>);
impl AdditionalClaims for OtherClaims {}

type OidcIdToken = IdToken<OtherClaims, CoreGenderClaim, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm>;
type OidcIdTokenClaims = IdTokenClaims<OtherClaims, CoreGenderClaim>;
type OidcTokenResponse = StandardTokenResponse<
    IdTokenFields<
        OtherClaims,
        EmptyExtraTokenFields,
        CoreGenderClaim,
        CoreJweContentEncryptionAlgorithm,
        CoreJwsSigningAlgorithm,
    >,
    CoreTokenType,
>;
type OidcClient = Client<
    OtherClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    OidcTokenResponse,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;
type Verifier<'a> = IdTokenVerifier<'a, CoreJsonWebKey>;

#[derive(Debug)]
struct Cached {
    metadata: Arc<CoreProviderMetadata>,
    fetched: Instant,
}

/// The relying party. One per process is enough: it holds the discovery cache, and fetches
/// through the outbound policy's client.
#[derive(Debug)]
pub struct RelyingParty {
    outbound: Arc<Outbound>,
    discovery: Mutex<HashMap<String, Cached>>,
}

impl RelyingParty {
    pub fn new(outbound: Arc<Outbound>) -> Self {
        Self {
            outbound,
            discovery: Mutex::new(HashMap::new()),
        }
    }

    /// Fetches and checks discovery (and the JWKS), bypassing the cache: used when an
    /// administrator saves the configuration, so a wrong issuer is reported there.
    pub async fn check(&self, cfg: &OidcConfig) -> Result<(), OidcError> {
        let metadata = self.fetch_metadata(&cfg.issuer).await?;
        tracing::debug!(issuer = %cfg.issuer, "OIDC discovery checked");
        drop(metadata);
        Ok(())
    }

    /// The authorization URL: the code flow with PKCE (S256), `state` and `nonce` as given.
    pub async fn authorization_url(
        &self,
        cfg: &OidcConfig,
        redirect_uri: &str,
        state: &str,
        nonce: &str,
        pkce_verifier: &str,
    ) -> Result<url::Url, OidcError> {
        check_opaque("state", state)?;
        check_opaque("nonce", nonce)?;
        check_pkce_verifier(pkce_verifier)?;
        let (metadata, _) = self.metadata(&cfg.issuer).await?;
        let client = client_for(&metadata, cfg, redirect_uri)?;
        let challenge = PkceCodeChallenge::from_code_verifier_sha256(&PkceCodeVerifier::new(pkce_verifier.to_owned()));
        let state = state.to_owned();
        let nonce = nonce.to_owned();
        let mut request = client
            .authorize_url(
                AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
                move || CsrfToken::new(state),
                move || Nonce::new(nonce),
            )
            .set_pkce_challenge(challenge);
        for scope in cfg.scopes() {
            request = request.add_scope(Scope::new(scope));
        }
        let (url, _, _) = request.url();
        Ok(url)
    }

    /// Exchanges the code (with the PKCE verifier) and verifies the ID token against `now`.
    pub async fn complete(
        &self,
        cfg: &OidcConfig,
        redirect_uri: &str,
        code: &str,
        nonce: &str,
        pkce_verifier: &str,
        now: time::OffsetDateTime,
    ) -> Result<VerifiedClaims, OidcError> {
        let result = self
            .complete_inner(cfg, redirect_uri, code, nonce, pkce_verifier, now)
            .await;
        if let Err(e) = &result {
            tracing::info!(issuer = %cfg.issuer, code = e.code(), error = %e, "OIDC sign-in refused");
        }
        result
    }

    async fn complete_inner(
        &self,
        cfg: &OidcConfig,
        redirect_uri: &str,
        code: &str,
        nonce: &str,
        pkce_verifier: &str,
        now: time::OffsetDateTime,
    ) -> Result<VerifiedClaims, OidcError> {
        check_opaque("code", code)?;
        check_opaque("nonce", nonce)?;
        check_pkce_verifier(pkce_verifier)?;
        let now = chrono::DateTime::<chrono::Utc>::from_timestamp(now.unix_timestamp(), now.nanosecond())
            .ok_or_else(|| OidcError::InvalidRequest("the current time is out of range".to_owned()))?;
        let small = Capped {
            outbound: &self.outbound,
            limit: SMALL_LIMIT,
        };
        let (mut metadata, mut from_cache) = self.metadata(&cfg.issuer).await?;
        let client = client_for(&metadata, cfg, redirect_uri)?;

        let response = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| OidcError::DiscoveryFailed(format!("the provider has no token endpoint ({e})")))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_owned()))
            .request_async(&small)
            .await
            .map_err(token_error)?;
        let id_token = response
            .extra_fields()
            .id_token()
            .ok_or_else(|| OidcError::InvalidIdToken("the token response holds no id_token".to_owned()))?;

        let nonce = Nonce::new(nonce.to_owned());
        let claims = loop {
            let verifier = verifier_for(&metadata, cfg, now)?;
            match verify(id_token, &verifier, &nonce, response.access_token()) {
                Ok(claims) => break claims,
                // A key the cached JWKS does not know: the provider may have rotated its keys.
                Err(ClaimsVerificationError::SignatureVerification(SignatureVerificationError::NoMatchingKey))
                    if from_cache =>
                {
                    tracing::debug!(issuer = %cfg.issuer, "unknown signing key: refreshing discovery");
                    metadata = self.fetch_metadata(&cfg.issuer).await?;
                    from_cache = false;
                }
                Err(e) => return Err(claims_error(e)),
            }
        };

        // Several audiences: the token must have been issued to this client (azp). And an
        // azp, when present, must be this client.
        let audiences = claims.audiences();
        match claims.authorized_party() {
            Some(azp) if azp.as_str() != cfg.client_id => {
                return Err(OidcError::WrongAudience(format!(
                    "the token was issued to `{}` (azp), not to this client",
                    azp.as_str()
                )));
            }
            None if audiences.len() > 1 => {
                return Err(OidcError::WrongAudience(
                    "several audiences and no azp naming this client".to_owned(),
                ));
            }
            _ => {}
        }

        let subject = claims.subject().as_str().to_owned();
        if subject.is_empty() {
            return Err(OidcError::MissingClaim("sub".to_owned()));
        }
        let raw = claims_map(&claims);
        let mut email = string_claim(&raw, cfg.email_claim());
        let mut email_verified = email.is_some() && bool_claim(&raw, "email_verified");
        let mut name = string_claim(&raw, cfg.name_claim());

        if (email.is_none() || name.is_none()) && metadata.userinfo_endpoint().is_some() {
            let info = client
                .user_info(
                    response.access_token().clone(),
                    Some(SubjectIdentifier::new(subject.clone())),
                )
                .map_err(|e| OidcError::UserinfoFailed(e.to_string()))?
                .request_async::<OtherClaims, _, CoreGenderClaim>(&small)
                .await
                .map_err(userinfo_error)?;
            let info = claims_map(&info);
            if email.is_none() {
                email = string_claim(&info, cfg.email_claim());
                email_verified = email.is_some() && bool_claim(&info, "email_verified");
            }
            if name.is_none() {
                name = string_claim(&info, cfg.name_claim());
            }
        }

        Ok(VerifiedClaims {
            issuer: claims.issuer().as_str().to_owned(),
            subject,
            email,
            email_verified,
            name,
        })
    }

    /// The provider's metadata, from the cache when fresh; the flag says it came from the cache.
    async fn metadata(&self, issuer: &str) -> Result<(Arc<CoreProviderMetadata>, bool), OidcError> {
        if let Some(cached) = self.cached(issuer) {
            return Ok((cached, true));
        }
        Ok((self.fetch_metadata(issuer).await?, false))
    }

    fn cached(&self, issuer: &str) -> Option<Arc<CoreProviderMetadata>> {
        let cache = self.discovery.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        cache
            .get(issuer)
            .filter(|c| c.fetched.elapsed() < DISCOVERY_TTL)
            .map(|c| Arc::clone(&c.metadata))
    }

    /// Fetches discovery and the JWKS, checks them, and caches them.
    async fn fetch_metadata(&self, issuer: &str) -> Result<Arc<CoreProviderMetadata>, OidcError> {
        let issuer_url = issuer_url(issuer)?;
        let document = Capped {
            outbound: &self.outbound,
            limit: DOCUMENT_LIMIT,
        };
        let metadata = CoreProviderMetadata::discover_async(issuer_url, &document)
            .await
            .map_err(discovery_error)?;
        check_metadata(&metadata)?;
        let metadata = Arc::new(metadata);
        let mut cache = self.discovery.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if cache.len() >= DISCOVERY_CACHE_MAX && !cache.contains_key(issuer) {
            cache.retain(|_, c| c.fetched.elapsed() < DISCOVERY_TTL);
            if cache.len() >= DISCOVERY_CACHE_MAX {
                let oldest = cache.iter().min_by_key(|(_, c)| c.fetched).map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    cache.remove(&oldest);
                }
            }
        }
        cache.insert(
            issuer.to_owned(),
            Cached {
                metadata: Arc::clone(&metadata),
                fetched: Instant::now(),
            },
        );
        Ok(metadata)
    }
}

/// The outbound client as openidconnect's HTTP client, reading at most `limit` bytes.
struct Capped<'a> {
    outbound: &'a Outbound,
    limit: usize,
}

impl<'c> AsyncHttpClient<'c> for Capped<'_> {
    type Error = OutboundError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, OutboundError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.outbound.send(request, self.limit))
    }
}

/// The issuer as a URL: `http(s)`, no query, fragment or credentials. Whether it may be fetched
/// (https, or http to an allowed address) is the outbound policy's to say. Kept verbatim (no
/// normalisation): the provider must name itself identically.
fn issuer_url(issuer: &str) -> Result<IssuerUrl, OidcError> {
    let bad = |why: &str| Err(OidcError::DiscoveryFailed(format!("the issuer {why}")));
    let Ok(url) = url::Url::parse(issuer) else {
        return bad("is not a URL");
    };
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
        return bad("must not have a query, a fragment or credentials");
    }
    if url.host().is_none() || !matches!(url.scheme(), "https" | "http") {
        return bad("must be an https URL");
    }
    IssuerUrl::new(issuer.to_owned()).or_else(|_| bad("is not a URL"))
}

/// What the rest of the flow relies on.
fn check_metadata(metadata: &CoreProviderMetadata) -> Result<(), OidcError> {
    if metadata.token_endpoint().is_none() {
        return Err(OidcError::DiscoveryFailed(
            "the provider advertises no token endpoint".to_owned(),
        ));
    }
    let code = metadata.response_types_supported().iter().any(|types| {
        let types: &[CoreResponseType] = types;
        types == [CoreResponseType::Code]
    });
    if !code {
        return Err(OidcError::DiscoveryFailed(
            "the provider does not support the authorization code flow".to_owned(),
        ));
    }
    if allowed_algorithms(metadata).is_empty() {
        return Err(OidcError::UnsupportedAlgorithm(
            "the provider signs ID tokens only with `none` or an HMAC algorithm; an asymmetric one (e.g. RS256) is required"
                .to_owned(),
        ));
    }
    Ok(())
}

/// The advertised ID token algorithms, less `none` and the HMAC ones.
fn allowed_algorithms(metadata: &CoreProviderMetadata) -> Vec<CoreJwsSigningAlgorithm> {
    metadata
        .id_token_signing_alg_values_supported()
        .iter()
        .filter(|alg| !matches!(alg, CoreJwsSigningAlgorithm::None) && !alg.uses_shared_secret())
        .cloned()
        .collect()
}

fn client_for(metadata: &CoreProviderMetadata, cfg: &OidcConfig, redirect_uri: &str) -> Result<OidcClient, OidcError> {
    let redirect = RedirectUrl::new(redirect_uri.to_owned())
        .map_err(|_| OidcError::InvalidRequest("the redirect URI is not a URL".to_owned()))?;
    // client_secret_basic unless the provider supports only client_secret_post (the default,
    // when not advertised, is client_secret_basic).
    let auth_type = match metadata.token_endpoint_auth_methods_supported() {
        Some(methods)
            if !methods.contains(&CoreClientAuthMethod::ClientSecretBasic)
                && methods.contains(&CoreClientAuthMethod::ClientSecretPost) =>
        {
            AuthType::RequestBody
        }
        _ => AuthType::BasicAuth,
    };
    Ok(OidcClient::from_provider_metadata(
        metadata.clone(),
        ClientId::new(cfg.client_id.clone()),
        Some(ClientSecret::new(cfg.client_secret.clone())),
    )
    .set_redirect_uri(redirect)
    .set_auth_type(auth_type))
}

/// A verifier for this client against the provider's keys, at `now`. A public-client verifier:
/// HMAC-signed tokens are refused (see the module documentation).
fn verifier_for<'a>(
    metadata: &CoreProviderMetadata,
    cfg: &OidcConfig,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Verifier<'a>, OidcError> {
    let algorithms = allowed_algorithms(metadata);
    if algorithms.is_empty() {
        return Err(OidcError::UnsupportedAlgorithm(
            "the provider advertises no asymmetric algorithm".to_owned(),
        ));
    }
    let latest_iat = now + chrono::Duration::seconds(IAT_LEEWAY_SECONDS);
    Ok(Verifier::new_public_client(
        ClientId::new(cfg.client_id.clone()),
        metadata.issuer().clone(),
        metadata.jwks().clone(),
    )
    .set_allowed_algs(algorithms)
    .set_time_fn(move || now)
    .set_issue_time_verifier_fn(move |iat| {
        if iat > latest_iat {
            Err(format!("ID token issued in the future ({iat})"))
        } else {
            Ok(())
        }
    })
    // Other audiences are judged by azp after verification.
    .set_other_audience_verifier_fn(|_| true))
}

/// Verifies the token (signature, iss, aud, exp, iat, nonce) and its at_hash when present.
fn verify(
    id_token: &OidcIdToken,
    verifier: &Verifier<'_>,
    nonce: &Nonce,
    access_token: &AccessToken,
) -> Result<OidcIdTokenClaims, ClaimsVerificationError> {
    let claims = id_token.claims(verifier, nonce)?;
    if let Some(expected) = claims.access_token_hash() {
        let alg = id_token
            .signing_alg()
            .map_err(ClaimsVerificationError::SignatureVerification)?;
        let key = id_token
            .signing_key(verifier)
            .map_err(ClaimsVerificationError::SignatureVerification)?;
        let actual = AccessTokenHash::from_token(access_token, alg, key)
            .map_err(|e| ClaimsVerificationError::Unsupported(format!("at_hash: {e}")))?;
        if actual != *expected {
            return Err(ClaimsVerificationError::Other(
                "at_hash does not match the access token".to_owned(),
            ));
        }
    }
    Ok(claims.clone())
}

/// The claims as one JSON object (standard claims under their names, the others as sent).
fn claims_map<T: Serialize>(claims: &T) -> Map<String, Value> {
    match serde_json::to_value(claims) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

fn string_claim(claims: &Map<String, Value>, name: &str) -> Option<String> {
    match claims.get(name) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        _ => None,
    }
}

/// `true` only for `true` (or the string `"true"`, which some providers send).
fn bool_claim(claims: &Map<String, Value>, name: &str) -> bool {
    match claims.get(name) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

/// A caller-supplied opaque value: non-empty, printable ASCII, at most 8 KiB (some providers'
/// codes run to kilobytes).
fn check_opaque(what: &str, value: &str) -> Result<(), OidcError> {
    if value.is_empty() || value.len() > 8192 || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(OidcError::InvalidRequest(format!("the {what} is empty or malformed")));
    }
    Ok(())
}

/// RFC 7636: 43 to 128 characters of `[A-Za-z0-9-._~]`.
fn check_pkce_verifier(verifier: &str) -> Result<(), OidcError> {
    let ok = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    if ok {
        Ok(())
    } else {
        Err(OidcError::InvalidRequest(
            "the PKCE verifier must be 43 to 128 URL-safe characters".to_owned(),
        ))
    }
}

/// Discovery's failure in words: what failed, never what the provider sent (not the body, not
/// the issuer it claims, not its headers).
fn discovery_error(e: DiscoveryError<OutboundError>) -> OidcError {
    match e {
        DiscoveryError::Validation(_) => OidcError::WrongIssuer(
            "the discovery document names another issuer than the one configured (they must match exactly, trailing slash included)"
                .to_owned(),
        ),
        DiscoveryError::Response(status, _, _) if status.as_u16() != 200 => {
            OidcError::DiscoveryFailed(format!("{}", OutboundError::Status(status.as_u16())))
        }
        DiscoveryError::Response(..) => {
            OidcError::DiscoveryFailed("the discovery document or the JWKS is not served as JSON".to_owned())
        }
        DiscoveryError::Parse(_) => {
            OidcError::DiscoveryFailed("the discovery document or the JWKS is not valid".to_owned())
        }
        DiscoveryError::Request(e) => OidcError::DiscoveryFailed(e.to_string()),
        DiscoveryError::UrlParse(_) => OidcError::DiscoveryFailed("the issuer is not a URL".to_owned()),
        _ => OidcError::DiscoveryFailed("the discovery request could not be made".to_owned()),
    }
}

fn token_error(e: RequestTokenError<OutboundError, StandardErrorResponse<CoreErrorResponseType>>) -> OidcError {
    match e {
        RequestTokenError::ServerResponse(answer) => {
            let mut msg = format!("the provider answered `{}`", answer.error().as_ref());
            if let Some(description) = answer.error_description() {
                let description: String = description.chars().filter(|c| !c.is_control()).take(200).collect();
                msg.push_str(&format!(" ({description})"));
            }
            OidcError::TokenExchangeFailed(msg)
        }
        RequestTokenError::Request(e) => OidcError::TokenExchangeFailed(format!("the token endpoint: {e}")),
        RequestTokenError::Parse(_, body) => unparsable_token_response(&body),
        RequestTokenError::Other(msg) => OidcError::TokenExchangeFailed(msg),
    }
}

/// The token response did not parse: say whether the ID token lacks a required claim, is
/// malformed, or whether the response itself is. (Nothing of the body goes into the message.)
fn unparsable_token_response(body: &[u8]) -> OidcError {
    let malformed = || OidcError::TokenExchangeFailed("the token endpoint's answer is malformed".to_owned());
    let Ok(Value::Object(response)) = serde_json::from_slice::<Value>(body) else {
        return malformed();
    };
    let Some(Value::String(jwt)) = response.get("id_token") else {
        return malformed();
    };
    let payload = jwt
        .split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|p| serde_json::from_slice::<Value>(&p).ok());
    let Some(Value::Object(claims)) = payload else {
        return OidcError::InvalidIdToken("the id_token is not a JWT".to_owned());
    };
    for claim in ["iss", "sub", "aud", "exp", "iat"] {
        if !claims.contains_key(claim) {
            return OidcError::MissingClaim(claim.to_owned());
        }
    }
    OidcError::InvalidIdToken("the id_token could not be parsed".to_owned())
}

fn claims_error(e: ClaimsVerificationError) -> OidcError {
    use SignatureVerificationError as S;
    match e {
        ClaimsVerificationError::Expired(msg) => OidcError::Expired(msg),
        ClaimsVerificationError::InvalidAudience(msg) => OidcError::WrongAudience(msg),
        ClaimsVerificationError::InvalidIssuer(msg) => OidcError::WrongIssuer(msg),
        ClaimsVerificationError::InvalidNonce(_) => OidcError::NonceMismatch,
        ClaimsVerificationError::SignatureVerification(S::NoSignature) => {
            OidcError::UnsupportedAlgorithm("the ID token is not signed (alg `none`)".to_owned())
        }
        ClaimsVerificationError::SignatureVerification(e @ (S::DisallowedAlg(_) | S::UnsupportedAlg(_))) => {
            OidcError::UnsupportedAlgorithm(e.to_string())
        }
        ClaimsVerificationError::SignatureVerification(e) => OidcError::BadSignature(e.to_string()),
        other => OidcError::InvalidIdToken(other.to_string()),
    }
}

fn userinfo_error(e: UserInfoError<OutboundError>) -> OidcError {
    match e {
        UserInfoError::ClaimsVerification(ClaimsVerificationError::InvalidSubject(_)) => OidcError::UserinfoMismatch,
        UserInfoError::ClaimsVerification(e) => OidcError::UserinfoFailed(e.to_string()),
        UserInfoError::Response(status, _, _) => {
            OidcError::UserinfoFailed(format!("the userinfo endpoint answered HTTP {}", status.as_u16()))
        }
        UserInfoError::Request(e) => OidcError::UserinfoFailed(format!("the userinfo endpoint: {e}")),
        UserInfoError::Parse(_) => OidcError::UserinfoFailed("the userinfo answer is malformed".to_owned()),
        _ => OidcError::UserinfoFailed("the userinfo request could not be made".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuers_are_http_s_urls_without_credentials_query_or_fragment() {
        assert!(issuer_url("https://idp.example.com").is_ok());
        assert!(issuer_url("https://idp.example.com/tenant/v2.0/").is_ok());
        assert!(issuer_url("http://127.0.0.1:9000").is_ok());
        for bad in [
            "ftp://idp.example.com",
            "https://u:p@idp.example.com",
            "https://idp.example.com?x=1",
            "idp",
        ] {
            assert_eq!(
                issuer_url(bad).map(|_| ()).unwrap_err().code(),
                "discovery_failed",
                "{bad}"
            );
        }
    }

    #[test]
    fn openid_is_always_first_and_scopes_are_deduplicated() {
        let mut cfg = OidcConfig::new("https://idp.example.com", "c", "s");
        cfg.scopes = vec!["openid email".into(), "profile".into(), "email".into(), " ".into()];
        assert_eq!(cfg.scopes(), vec!["email", "profile"]);
    }

    #[test]
    fn the_secret_never_shows_in_debug_output() {
        let cfg = OidcConfig::new("https://idp.example.com", "c", "hunter2-secret");
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }

    #[test]
    fn pkce_verifiers_follow_rfc_7636() {
        assert!(check_pkce_verifier(&"a".repeat(43)).is_ok());
        assert!(check_pkce_verifier(&"a".repeat(42)).is_err());
        assert!(check_pkce_verifier(&"a".repeat(129)).is_err());
        assert!(check_pkce_verifier(&format!("{}+", "a".repeat(43))).is_err());
    }

    #[test]
    fn string_booleans_are_read() {
        let map: Map<String, Value> =
            serde_json::from_str(r#"{"a":true,"b":"true","c":"false","d":1,"e":" x@y "}"#).unwrap();
        assert!(bool_claim(&map, "a") && bool_claim(&map, "b"));
        assert!(!bool_claim(&map, "c") && !bool_claim(&map, "d") && !bool_claim(&map, "z"));
        assert_eq!(string_claim(&map, "e").as_deref(), Some("x@y"));
    }
}
