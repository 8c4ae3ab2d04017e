//! Form fields several requests share (the name of a token or key, an optional expiry in
//! days), parsed once so every form says the same about them.

use crate::error::{FieldError, Problems};
use time::Duration;

/// Longest optional expiry, in days (ten years).
pub const MAX_EXPIRY_DAYS: i64 = 3650;

/// A name: trimmed, 1–100 characters, no control characters. `what` is what the name is of
/// (`key`, `token`), for the message. An invalid name is reported on `name` and returned as
/// it came (the caller does not use it: `Problems::finish` fails).
pub(crate) fn name(p: &mut Problems, raw: &str, what: &str) -> String {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        p.push(FieldError::new(
            "name",
            "invalid_name",
            format!("Name the {what} (at most 100 characters)."),
        ));
    }
    name.to_owned()
}

/// `expires_in_days`: empty for never, else 1 to [`MAX_EXPIRY_DAYS`].
pub(crate) fn optional_expiry(p: &mut Problems, raw: &str) -> Option<Duration> {
    match raw.trim() {
        "" => None,
        raw => match raw.parse::<i64>() {
            Ok(d) if (1..=MAX_EXPIRY_DAYS).contains(&d) => Some(Duration::days(d)),
            _ => {
                p.push(FieldError::new(
                    "expires_in_days",
                    "invalid_expiry",
                    format!("Choose an expiry between 1 and {MAX_EXPIRY_DAYS} days, or none."),
                ));
                None
            }
        },
    }
}
