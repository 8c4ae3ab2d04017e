//! The `log` transport.

use async_trait::async_trait;
use quarterdeck_domain::mail::{Email, Mailer, SendError};

/// Delivers nothing: writes each message to the log instead.
///
/// One INFO event per message carries the recipient, the sender, the subject and the whole text
/// body (with its links), on one line (newlines escaped as `\n`), so that
/// `grep alice@example.com` finds the link. The HTML body follows in a DEBUG event. By design
/// this is the one place where a secret (an invitation link) is written to the log: use it in
/// development, or where an operator hands links out by hand.
#[derive(Clone, Debug)]
pub struct LogMailer {
    from: String,
}

impl LogMailer {
    pub fn new(from: impl Into<String>) -> Self {
        Self { from: from.into() }
    }
}

#[async_trait]
impl Mailer for LogMailer {
    fn transport(&self) -> &'static str {
        "log"
    }

    async fn send(&self, id: uuid::Uuid, email: &Email) -> Result<(), SendError> {
        tracing::info!(
            transport = "log",
            message_id = %id,
            to = %one_line(&email.to),
            from = %one_line(&self.from),
            subject = %one_line(&email.subject),
            text = %one_line(&email.text),
            "email not sent (log transport): whole message follows"
        );
        tracing::debug!(
            transport = "log",
            to = %one_line(&email.to),
            html = %one_line(&email.html),
            "email HTML body (log transport)"
        );
        Ok(())
    }
}

/// `s` with its control characters (newlines, ...) escaped, `\n` and the like, so that one
/// message is one line of the log.
fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_line_escapes_control_characters_only() {
        assert_eq!(
            super::one_line("You're <in>\r\n\tnow\u{7}"),
            "You're <in>\\r\\n\\tnow\\u{7}"
        );
    }
}
