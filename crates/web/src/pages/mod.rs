//! The console's pages: one module per resource, one askama template struct per page.

pub mod api_keys;
pub mod audit;
pub mod billing;
pub mod chart;
pub mod dashboard;
pub mod impersonation;
pub mod login;
pub mod people;
pub mod portal;
pub mod provider_credentials;
pub mod register;
pub mod roles;
pub mod service_tokens;
pub mod settings;
pub mod setup;
pub mod sso;
pub mod sso_settings;
pub mod tenant_usage;
pub mod tenant_users;
pub mod tenants;
pub mod tokens;
pub mod usage;
pub mod users;
pub mod webhooks;

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use quarterdeck_domain::FieldError;
use quarterdeck_domain::core::SignedIn;
use time::OffsetDateTime;
use time::macros::format_description;

/// What the layouts need: the CSRF token, and in the console the user and active section.
pub struct Chrome {
    pub csrf_token: String,
    pub me_email: String,
    pub nav: &'static str,
    /// Whether the nav shows Billing (`billing:read`).
    pub billing: bool,
}

impl Chrome {
    pub fn console(s: &SignedIn, nav: &'static str) -> Self {
        Self {
            csrf_token: s.session.csrf_token.clone(),
            me_email: s.user.email.to_string(),
            nav,
            billing: s.principal.can(&quarterdeck_domain::role::Capability::BillingRead),
        }
    }
    pub fn signed_out(csrf_token: String) -> Self {
        Self {
            csrf_token,
            me_email: String::new(),
            nav: "",
            billing: false,
        }
    }
}

/// Render a template, or a bare 500 if rendering itself fails (logged).
pub fn render<T: Template>(t: &T) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "template rendering failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

/// Field messages for a form, looked up by field name in templates.
#[derive(Default)]
pub struct Errors(Vec<FieldError>);

impl Errors {
    pub fn from_fields(f: &[FieldError]) -> Self {
        Self(f.to_vec())
    }
    pub fn get(&self, field: &str) -> Option<&str> {
        self.0.iter().find(|e| e.field == field).map(|e| e.message.as_str())
    }
    pub fn has(&self, field: &str) -> bool {
        self.get(field).is_some()
    }
    /// Messages for fields with a prefix (e.g. `metadata[`), in order.
    pub fn starting_with(&self, prefix: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|e| e.field.starts_with(prefix))
            .map(|e| e.message.as_str())
            .collect()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

pub fn fmt_time(t: OffsetDateTime) -> String {
    t.format(format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC"))
        .unwrap_or_default()
}

#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    pub chrome: Chrome,
    pub status: u16,
    pub title: String,
    pub message: String,
    pub reference: Option<String>,
    /// The request's `x-request-id`, to quote to whoever reads the logs.
    pub request_id: Option<String>,
}

pub async fn not_found() -> Response {
    crate::error::HtmlError(quarterdeck_domain::Error::NotFound).into_response()
}

/// One `<option>` of a select.
pub struct Opt {
    pub value: String,
    pub label: String,
    pub selected: bool,
}

pub fn options<'a>(items: impl IntoIterator<Item = (&'a str, &'a str)>, selected: &str) -> Vec<Opt> {
    items
        .into_iter()
        .map(|(value, label)| Opt {
            value: value.to_owned(),
            label: label.to_owned(),
            selected: value == selected,
        })
        .collect()
}

/// A secret just made (an API key, a service token): shown on the page that answers the POST,
/// once, with Copy (`_secret_once.html`, as `once`).
pub struct ShownOnce {
    pub title: String,
    pub secret: String,
    /// What to do with it, or "".
    pub note: String,
    /// How Quarterdeck keeps it: [`ShownOnce::HASHED`] or [`ShownOnce::SEALED`].
    pub kept: &'static str,
}

impl ShownOnce {
    /// A secret Quarterdeck only ever checks (API keys, tokens).
    pub const HASHED: &'static str = "Quarterdeck keeps only a hash of it.";
    /// A secret Quarterdeck uses itself (a webhook signing secret).
    pub const SEALED: &'static str = "Quarterdeck keeps it encrypted, to sign with, and never shows it again.";
}
