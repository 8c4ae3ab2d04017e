//! The one way the server fetches a URL that a user gave it (directly, or through a document a
//! user pointed it at): OIDC discovery and every URL it names (JWKS, token, userinfo), SAML
//! metadata. [`Outbound`] is the only HTTP client for those; nothing else builds one.
//!
//! What holds for every request:
//! - The URL is parsed with `url::Url` (what is checked is what is fetched); it has no user
//!   name or password; it is `https`, or `http` when every address of its host is inside a range
//!   of `outbound_allow_private` (a local identity provider in development and tests).
//! - Every address it connects to is checked by [`OutboundPolicy`]: public, or inside an allowed
//!   range. Host names are resolved by a resolver that checks the addresses it returns, so the
//!   address checked is the address connected to (no window for DNS rebinding): only the
//!   permitted addresses of a name are handed to the connector, and a name with none is
//!   refused; literal addresses are checked before the request. A refused address is refused before any
//!   connection is attempted, with one message whatever the port.
//! - No redirects, no proxy from the environment, 5 s to connect, 10 s in all, and the answer is
//!   read in pieces and abandoned past a size limit.
//! - Errors ([`OutboundError`]) say what failed in words fit for a form, never what the remote
//!   server sent.

mod policy;

pub use policy::{Cidr, OutboundPolicy, Verdict, is_public};

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// Time allowed to connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for a whole request: resolving, connecting, sending, and reading the answer.
pub const TOTAL_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest document read: discovery, JWKS, SAML metadata.
pub const DOCUMENT_LIMIT: usize = 1024 * 1024;
/// The largest small answer read: a token response, userinfo.
pub const SMALL_LIMIT: usize = 64 * 1024;

/// Why a fetch failed, in words for the person who typed the URL. Nothing here comes from the
/// remote server except its status code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OutboundError {
    #[error("the HTTP client could not start")]
    ClientUnavailable,
    #[error("it is not a valid absolute URL")]
    InvalidUrl,
    #[error("only https:// URLs are fetched")]
    Scheme,
    #[error("the URL must not contain a user name or password")]
    Credentials,
    #[error("http:// is only used for addresses that outbound_allow_private allows; this one needs https://")]
    PlainHttp,
    #[error(
        "the address resolves to a private or reserved network address, which outbound_allow_private does not allow"
    )]
    Refused,
    #[error("the host name could not be resolved")]
    Unresolvable,
    #[error("no connection could be made (refused, unreachable, or the TLS handshake failed)")]
    Unreachable,
    #[error("no answer within {} s", TOTAL_TIMEOUT.as_secs())]
    Timeout,
    #[error("the server answered with a redirect (HTTP {0}), which is not followed: give the final URL")]
    Redirect(u16),
    #[error("the server answered HTTP {0}")]
    Status(u16),
    #[error("the answer was larger than {}", size(*.0))]
    TooLarge(usize),
    #[error("the answer broke off")]
    BrokeOff,
}

impl OutboundError {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::ClientUnavailable => "client_unavailable",
            Self::InvalidUrl => "invalid_url",
            Self::Scheme => "scheme_refused",
            Self::Credentials => "credentials_in_url",
            Self::PlainHttp => "plain_http_refused",
            Self::Refused => "address_refused",
            Self::Unresolvable => "unresolvable",
            Self::Unreachable => "unreachable",
            Self::Timeout => "timeout",
            Self::Redirect(_) => "redirect",
            Self::Status(_) => "http_status",
            Self::TooLarge(_) => "too_large",
            Self::BrokeOff => "broke_off",
        }
    }
}

fn size(bytes: usize) -> String {
    if bytes >= 1024 * 1024 && bytes.is_multiple_of(1024 * 1024) {
        format!("{} MiB", bytes / (1024 * 1024))
    } else if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} bytes")
    }
}

/// The HTTP client for fetches on a user's say-so. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Outbound {
    policy: Arc<OutboundPolicy>,
    /// For `https` URLs: public or allowed addresses.
    https: reqwest::Client,
    /// For `http` URLs: allowed addresses only.
    http: reqwest::Client,
}

impl Outbound {
    /// A client that cannot be built is an error: there is no fallback to a default client.
    pub fn new(policy: OutboundPolicy) -> Result<Self, OutboundError> {
        let policy = Arc::new(policy);
        let build = |plain_http: bool| {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(TOTAL_TIMEOUT)
                .https_only(!plain_http)
                .user_agent(concat!("quarterdeck/", env!("CARGO_PKG_VERSION")))
                .dns_resolver(Arc::new(CheckingResolver {
                    policy: Arc::clone(&policy),
                    plain_http,
                }))
                .build()
                .map_err(|e| {
                    tracing::error!(error = %e, "the outbound HTTP client could not be built");
                    OutboundError::ClientUnavailable
                })
        };
        Ok(Self {
            https: build(false)?,
            http: build(true)?,
            policy,
        })
    }

    pub fn policy(&self) -> &OutboundPolicy {
        &self.policy
    }

    /// `GET url`: the body of a `2xx` answer, at most `limit` bytes.
    pub async fn get(&self, url: &str, limit: usize) -> Result<Vec<u8>, OutboundError> {
        // Parsed as a URL first (a backslash is a `/` in an http URL), then sent as that URL.
        let url = Url::parse(url).map_err(|_| OutboundError::InvalidUrl)?;
        let request = http::Request::get(url.as_str())
            .body(Vec::new())
            .map_err(|_| OutboundError::InvalidUrl)?;
        let response = self.send(request, limit).await?;
        if !response.status().is_success() {
            return Err(OutboundError::Status(response.status().as_u16()));
        }
        Ok(response.into_body())
    }

    /// Sends `request` under the policy and reads at most `limit` bytes of the answer, whatever
    /// its status (a `3xx` is an error: redirects are not followed).
    pub async fn send(
        &self,
        request: http::Request<Vec<u8>>,
        limit: usize,
    ) -> Result<http::Response<Vec<u8>>, OutboundError> {
        let result = tokio::time::timeout(TOTAL_TIMEOUT, self.send_inner(request, limit))
            .await
            .unwrap_or(Err(OutboundError::Timeout));
        if let Err(e) = &result {
            tracing::info!(code = e.code(), error = %e, "outbound request refused or failed");
        }
        result
    }

    async fn send_inner(
        &self,
        request: http::Request<Vec<u8>>,
        limit: usize,
    ) -> Result<http::Response<Vec<u8>>, OutboundError> {
        let mut response = self.answer(request).await?;
        let status = response.status();
        if response.content_length().is_some_and(|n| n > limit as u64) {
            return Err(OutboundError::TooLarge(limit));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| match from_reqwest(&e) {
            OutboundError::Timeout => OutboundError::Timeout,
            _ => OutboundError::BrokeOff,
        })? {
            if body.len() + chunk.len() > limit {
                return Err(OutboundError::TooLarge(limit));
            }
            body.extend_from_slice(&chunk);
        }
        let mut out = http::Response::new(body);
        *out.status_mut() = status;
        *out.headers_mut() = std::mem::take(response.headers_mut());
        Ok(out)
    }

    /// Sends `request` under the policy and returns the answer with its body unread; a redirect
    /// is an error (never followed).
    async fn answer(&self, request: http::Request<Vec<u8>>) -> Result<reqwest::Response, OutboundError> {
        let url = Url::parse(&request.uri().to_string()).map_err(|_| OutboundError::InvalidUrl)?;
        let client = self.preflight(&url).await?;
        let (parts, body) = request.into_parts();
        let response = client
            .request(parts.method, url)
            .headers(parts.headers)
            .body(body)
            .send()
            .await
            .map_err(|e| from_reqwest(&e))?;
        let status = response.status();
        if status.is_redirection() {
            return Err(OutboundError::Redirect(status.as_u16()));
        }
        Ok(response)
    }

    /// `POST url` with `headers` and `body` (a webhook): the answer's status, all that counts.
    /// Up to `drain` bytes of its body are read (so the connection can be used again) and
    /// dropped; a longer or broken body does not change the answer.
    pub async fn post(
        &self,
        url: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
        drain: usize,
    ) -> Result<u16, OutboundError> {
        let url = Url::parse(url).map_err(|_| OutboundError::InvalidUrl)?;
        let mut request = http::Request::post(url.as_str());
        for (k, v) in headers {
            request = request.header(k.as_str(), v.as_str());
        }
        let request = request.body(body).map_err(|_| OutboundError::InvalidUrl)?;
        let deadline = tokio::time::Instant::now() + TOTAL_TIMEOUT;
        let result = tokio::time::timeout_at(deadline, self.answer(request))
            .await
            .unwrap_or(Err(OutboundError::Timeout));
        let mut response = match result {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(code = e.code(), error = %e, "outbound request refused or failed");
                return Err(e);
            }
        };
        let status = response.status().as_u16();
        if response.content_length().is_none_or(|n| n <= drain as u64) {
            let _ = tokio::time::timeout_at(deadline, async {
                let mut read = 0;
                while let Ok(Some(chunk)) = response.chunk().await {
                    read += chunk.len();
                    if read > drain {
                        break;
                    }
                }
            })
            .await;
        }
        Ok(status)
    }

    /// Would a request to `url` be sent (its form, and every address of its host under the
    /// policy)? For a form to say so when the URL is saved; each request checks again.
    pub async fn check(&self, url: &str) -> Result<(), OutboundError> {
        let url = Url::parse(url).map_err(|_| OutboundError::InvalidUrl)?;
        self.preflight(&url).await.map(|_| ())
    }

    /// The checks made before anything is sent: the URL's form, and the addresses of its host
    /// (resolved here for a clear message; the connection's own resolution checks again).
    /// Returns the client for its scheme.
    async fn preflight(&self, url: &Url) -> Result<&reqwest::Client, OutboundError> {
        let plain_http = match url.scheme() {
            "https" => false,
            "http" => true,
            _ => return Err(OutboundError::Scheme),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(OutboundError::Credentials);
        }
        let addresses: Vec<IpAddr> = match url.host() {
            Some(Host::Ipv4(ip)) => vec![IpAddr::V4(ip)],
            Some(Host::Ipv6(ip)) => vec![IpAddr::V6(ip)],
            Some(Host::Domain(name)) => resolve(name).await?.into_iter().map(|a| a.ip()).collect(),
            None => return Err(OutboundError::InvalidUrl),
        };
        permitted(&self.policy, &addresses, |ip| *ip, plain_http)?;
        Ok(if plain_http { &self.http } else { &self.https })
    }
}

async fn resolve(name: &str) -> Result<Vec<SocketAddr>, OutboundError> {
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((name, 0))
        .await
        .map_err(|_| OutboundError::Unresolvable)?
        .collect();
    if addresses.is_empty() {
        return Err(OutboundError::Unresolvable);
    }
    Ok(addresses)
}

/// The addresses that may be connected to: for `https`, public or allowed ones; for plain
/// `http`, allowed ones only. None left is an error: [`OutboundError::PlainHttp`] when plain
/// http was all that stood in the way, else [`OutboundError::Refused`].
fn permitted<A: Copy>(
    policy: &OutboundPolicy,
    addresses: &[A],
    ip: impl Fn(&A) -> IpAddr,
    plain_http: bool,
) -> Result<Vec<A>, OutboundError> {
    let mut public = false;
    let kept: Vec<A> = addresses
        .iter()
        .filter(|a| match policy.verdict(ip(a)) {
            Verdict::Allowed => true,
            Verdict::Public => {
                public = true;
                !plain_http
            }
            Verdict::Refused => false,
        })
        .copied()
        .collect();
    match kept.is_empty() {
        false => Ok(kept),
        true if public => Err(OutboundError::PlainHttp),
        true => Err(OutboundError::Refused),
    }
}

/// The resolver of both clients: the addresses it hands to the connector are the checked ones.
#[derive(Debug)]
struct CheckingResolver {
    policy: Arc<OutboundPolicy>,
    plain_http: bool,
}

impl Resolve for CheckingResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.policy);
        let plain_http = self.plain_http;
        let name = name.as_str().to_owned();
        Box::pin(async move {
            let addresses = resolve(&name).await?;
            let kept = permitted(&policy, &addresses, SocketAddr::ip, plain_http)?;
            let addrs: Addrs = Box::new(kept.into_iter());
            Ok(addrs)
        })
    }
}

/// A reqwest error in the policy's words: the resolver's own refusal when it is the cause.
fn from_reqwest(e: &reqwest::Error) -> OutboundError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(ours) = s.downcast_ref::<OutboundError>() {
            return ours.clone();
        }
        source = s.source();
    }
    if e.is_timeout() {
        OutboundError::Timeout
    } else {
        OutboundError::Unreachable
    }
}

#[cfg(test)]
mod tests;
