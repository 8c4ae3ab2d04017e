//! One error type for every domain operation, with stable codes.
//!
//! The web crate renders it twice: as JSON (`{"error": {"code", "message", "fields"}}`) and as
//! HTML (a page, or field messages beside a form). Codes are part of the public interface.

use serde::Serialize;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A message about one input field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub code: &'static str,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            code,
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 422: one or more fields are invalid.
    #[error("Some fields are invalid.")]
    Validation(Vec<FieldError>),
    /// 404: no such object, or not one the caller may know of.
    #[error("Not found.")]
    NotFound,
    /// 401: not signed in, or the session has ended.
    #[error("Sign-in required.")]
    Unauthenticated,
    /// 401: the email or password is wrong (deliberately does not say which).
    #[error("The email or password is incorrect.")]
    InvalidCredentials,
    /// 403: signed in, but the caller's roles do not allow this.
    #[error("You do not have permission to do this.")]
    Forbidden,
    /// 403: the request failed the cross-site request forgery check.
    #[error("The form has expired or did not come from this site. Reload the page and try again.")]
    CsrfRejected,
    /// 403: the token's scope does not allow this call (a read token on a write).
    #[error("This token is read-only: use a read-write token for changes.")]
    InsufficientScope,
    /// 403: the user signed in with a one-time password and must change it first.
    #[error("Change your password first: it was a one-time password.")]
    PasswordChangeRequired,
    /// 403: the tenant is read-only.
    #[error("The tenant is read-only: changes are not allowed.")]
    TenantReadOnly,
    /// 403: the tenant is suspended.
    #[error("This tenant is suspended: sign-in and changes are not allowed.")]
    TenantSuspended,
    /// 403: the organisation signs in with single sign-on only (no passwords, no `/register`,
    /// no one-time passwords).
    #[error("This organisation signs in with single sign-on: passwords are not used here.")]
    SsoOnly,
    /// 401: single sign-on did not sign anyone in; the reason is one of [`SSO_REASONS`].
    #[error("{}", sso_message(.0))]
    SsoFailed(&'static str),
    /// 409: the change conflicts with the current state.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// 410: a one-time link is spent, expired or unknown.
    #[error("{0}")]
    LinkInvalid(&'static str),
    /// 429: too many attempts; try again after the given number of seconds.
    #[error("Too many attempts. Try again in {retry_after_secs} seconds.")]
    Throttled { retry_after_secs: u64 },
    /// 400: the request as a whole cannot be read (not JSON, not the expected shape).
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// 413: the request holds more than a limit allows (e.g. events in a batch).
    #[error("{message}")]
    TooLarge { code: &'static str, message: String },
    /// 415: the body's media type is not one this endpoint reads.
    #[error("{message}")]
    Unsupported { code: &'static str, message: String },
    /// 429: a caller's rate limit is spent; try again after the given number of seconds.
    #[error("Rate limit reached. Try again in {retry_after_secs} seconds.")]
    RateLimited { retry_after_secs: u64 },
    /// 503: the tenant's database is not at this binary's schema version yet; it is being
    /// migrated (try again shortly).
    #[error("This tenant is being upgraded. Try again shortly.")]
    TenantMigrating,
    /// 503: usage for a region is not taken while its sweep is further behind than
    /// `usage_max_lag_seconds` (send the batch again after `Retry-After`).
    #[error(
        "Usage is not being taken right now: the events already taken are still being filed. Send the batch again shortly."
    )]
    UsageBacklog,
    /// 503: the server is busy (e.g. the password-hashing queue is full).
    #[error("The server is busy. Try again shortly.")]
    Busy,
    /// 500: something failed inside; the detail is logged, never shown.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The stable code clients can match on.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Validation(_) => "validation_failed",
            Error::NotFound => "not_found",
            Error::Unauthenticated => "unauthenticated",
            Error::InvalidCredentials => "invalid_credentials",
            Error::Forbidden => "forbidden",
            Error::CsrfRejected => "csrf_rejected",
            Error::PasswordChangeRequired => "password_change_required",
            Error::InsufficientScope => "insufficient_scope",
            Error::TenantReadOnly => "tenant_read_only",
            Error::TenantSuspended => "tenant_suspended",
            Error::Conflict { code, .. } => code,
            Error::LinkInvalid(_) => "link_invalid",
            Error::SsoOnly => "sso_only",
            Error::SsoFailed(_) => "sso_failed",
            Error::Throttled { .. } => "too_many_attempts",
            Error::BadRequest { code, .. } | Error::TooLarge { code, .. } | Error::Unsupported { code, .. } => code,
            Error::RateLimited { .. } => "rate_limited",
            Error::Busy => "busy",
            Error::UsageBacklog => "usage_backlog",
            Error::TenantMigrating => "tenant_migrating",
            Error::Internal(_) => "internal",
        }
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        Error::Internal(e.to_string())
    }

    pub fn field(field: &str, code: &'static str, message: impl Into<String>) -> Self {
        Error::Validation(vec![FieldError::new(field, code, message)])
    }

    /// The field errors, if this is a validation error.
    pub fn fields(&self) -> &[FieldError] {
        match self {
            Error::Validation(f) => f,
            _ => &[],
        }
    }
}

/// Collects field errors while parsing a form, so every bad field is reported at once.
#[derive(Default, Debug)]
pub struct Problems(Vec<FieldError>);

impl Problems {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keep the value if `r` is Ok; otherwise remember the field errors.
    pub fn check<T>(&mut self, r: Result<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(Error::Validation(mut f)) => {
                self.0.append(&mut f);
                None
            }
            Err(other) => {
                self.0.push(FieldError::new("_", "invalid", other.to_string()));
                None
            }
        }
    }

    pub fn push(&mut self, e: FieldError) {
        self.0.push(e);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Ok(()) when nothing was wrong, else the collected validation error.
    pub fn finish(self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Error::Validation(self.0))
        }
    }
}

/// Why a single sign-on attempt signed nobody in (the audit event's `reason`). The protocol's
/// own finding (a bad signature, the wrong audience) goes to the audit trail and the log as
/// `detail`; the person is told only what they can act on.
pub const SSO_REASONS: &[(&str, &str)] = &[
    (
        "attempt_invalid",
        "This sign-in has expired or was already used. Start again.",
    ),
    ("not_configured", "Single sign-on is not set up here."),
    (
        "provider_error",
        "The identity provider did not complete the sign-in. Try again, or ask your administrator.",
    ),
    (
        "invalid_response",
        "The identity provider's answer could not be verified, so nobody was signed in.",
    ),
    (
        "replayed",
        "This sign-in answer was used before, so nobody was signed in. Start again.",
    ),
    (
        "email_not_verified",
        "Your identity provider has not verified your email address, so it cannot be linked to an account here.",
    ),
    (
        "not_provisioned",
        "There is no account for you here yet. Ask an administrator of your organisation to add you.",
    ),
    (
        "user_suspended",
        "Your account is suspended. Ask an administrator of your organisation.",
    ),
    (
        "account_exists",
        "An account with your email address already exists here and signs in with its password. \
         Ask an administrator of your organisation.",
    ),
];

fn sso_message(reason: &str) -> &'static str {
    SSO_REASONS
        .iter()
        .find(|(r, _)| *r == reason)
        .map_or("Single sign-on did not work. Try again.", |(_, m)| m)
}
