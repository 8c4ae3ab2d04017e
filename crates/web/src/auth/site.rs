//! Which site a request is for, from its `Host`: the base host (the platform console) or a
//! tenant's host `{slug}.{base host}` (the tenant's portal). Anything else is a plain 404.

use crate::error::HtmlError;
use crate::state::AppState;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use quarterdeck_domain::tenant::Tenant;
use quarterdeck_domain::user::Directory;
use quarterdeck_domain::{Error, TenantSlug};

#[derive(Clone, Debug)]
pub enum Site {
    Base,
    Tenant(Box<Tenant>),
}

impl Site {
    pub fn directory(&self) -> Directory {
        match self {
            Site::Base => Directory::Platform,
            Site::Tenant(t) => Directory::Tenant(t.id),
        }
    }

    /// The origin browsers send in `Origin` for this site.
    pub fn origin(&self, state: &AppState) -> String {
        match self {
            Site::Base => state.config.origin(),
            Site::Tenant(t) => state.core.config.links.origin(Some(t.slug.as_str())),
        }
    }
}

/// Middleware: resolve the site once; unknown hosts and unknown (or deleted) tenants get 404.
pub async fn resolve_site(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
        .unwrap_or_default();
    let base = state.config.host();
    let site = if host == base {
        Some(Site::Base)
    } else if let Some(label) = host.strip_suffix(&format!(".{base}"))
        && let Ok(slug) = TenantSlug::parse(label)
        && slug.as_str() == label
    {
        match state.core.tenant_for_host(&slug).await {
            Ok(Some(t)) => Some(Site::Tenant(Box::new(t))),
            Ok(None) => None,
            Err(e) => return HtmlError(e).into_response(),
        }
    } else {
        None
    };
    match site {
        Some(site) => {
            if let Site::Tenant(t) = &site {
                crate::edge::note_tenant(&req, t.slug.as_str());
            }
            req.extensions_mut().insert(site);
            next.run(req).await
        }
        None if req.uri().path() == "/healthz" => {
            req.extensions_mut().insert(Site::Base);
            next.run(req).await
        }
        None => HtmlError(Error::NotFound).into_response(),
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Site {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Site>()
            .cloned()
            .ok_or_else(|| HtmlError(Error::NotFound).into_response())
    }
}
