//! The emails Quarterdeck sends, rendered from `templates/` (one askama struct per template).
//!
//! HTML bodies are escaped by askama; text bodies are plain text and not escaped. Values are
//! flattened to one line first, so a name cannot add lines to a subject or a body.

use askama::Template;
use quarterdeck_domain::mail::Email;

#[derive(Template)]
#[template(path = "invitation.txt")]
struct InvitationText<'a> {
    inviter: &'a str,
    organisation: &'a str,
    link: &'a str,
    expires: &'a str,
}

#[derive(Template)]
#[template(path = "invitation.html")]
struct InvitationHtml<'a> {
    inviter: &'a str,
    organisation: &'a str,
    link: &'a str,
    expires: &'a str,
}

/// The invitation to an organisation, with its `Set your password` link.
///
/// `inviter` is who sent it as it should be shown (a name, or `Name (address)`); `expires` is
/// when the link stops working, written to follow "expires on", for example
/// `3 July 2026 at 14:00 UTC`.
pub fn invitation_email(to: &str, inviter: &str, organisation: &str, link: &str, expires: &str) -> Email {
    let inviter = one_line(inviter);
    let organisation = one_line(organisation);
    let link = one_line(link);
    let expires = one_line(expires);
    let (inviter, organisation, link, expires) =
        (inviter.as_str(), organisation.as_str(), link.as_str(), expires.as_str());
    let text = InvitationText {
        inviter,
        organisation,
        link,
        expires,
    }
    .render();
    let html = InvitationHtml {
        inviter,
        organisation,
        link,
        expires,
    }
    .render();
    // Rendering `&str`s cannot fail; should it ever, the message still carries what matters.
    let fallback = || {
        format!(
            "{inviter} has invited you to join {organisation} on Quarterdeck.\n\n\
             Set your password: {link}\n\nThis link expires on {expires}.\n"
        )
    };
    let text = text.unwrap_or_else(|e| {
        tracing::error!(error = %e, "rendering invitation.txt failed");
        fallback()
    });
    let html = html.unwrap_or_else(|e| {
        tracing::error!(error = %e, "rendering invitation.html failed");
        format!("<pre>{}</pre>", escape_html(&fallback()))
    });
    Email {
        to: one_line(to),
        subject: format!("You're invited to {organisation} on Quarterdeck"),
        text,
        html,
    }
}

#[derive(Template)]
#[template(path = "sso_notice.txt")]
struct SsoNoticeText<'a> {
    inviter: &'a str,
    organisation: &'a str,
    link: &'a str,
    provider: &'a str,
}

#[derive(Template)]
#[template(path = "sso_notice.html")]
struct SsoNoticeHtml<'a> {
    inviter: &'a str,
    organisation: &'a str,
    link: &'a str,
    provider: &'a str,
}

/// What an organisation that signs in with single sign-on only sends instead of an invitation:
/// where to sign in and with which provider. It carries no token (there is no password to set).
pub fn sso_notice_email(to: &str, inviter: &str, organisation: &str, link: &str, provider: &str) -> Email {
    let (inviter, organisation, link, provider) = (
        one_line(inviter),
        one_line(organisation),
        one_line(link),
        one_line(provider),
    );
    let (inviter, organisation, link, provider) = (
        inviter.as_str(),
        organisation.as_str(),
        link.as_str(),
        provider.as_str(),
    );
    let fallback =
        || format!("{inviter} has added you to {organisation} on Quarterdeck.\n\nSign in with {provider}: {link}\n");
    let text = SsoNoticeText {
        inviter,
        organisation,
        link,
        provider,
    }
    .render()
    .unwrap_or_else(|e| {
        tracing::error!(error = %e, "rendering sso_notice.txt failed");
        fallback()
    });
    let html = SsoNoticeHtml {
        inviter,
        organisation,
        link,
        provider,
    }
    .render()
    .unwrap_or_else(|e| {
        tracing::error!(error = %e, "rendering sso_notice.html failed");
        format!("<pre>{}</pre>", escape_html(&fallback()))
    });
    Email {
        to: one_line(to),
        subject: format!("You've been added to {organisation} on Quarterdeck"),
        text,
        html,
    }
}

#[derive(Template)]
#[template(path = "notice.txt")]
struct NoticeText<'a> {
    message: &'a str,
    link_text: &'a str,
    link: &'a str,
}

#[derive(Template)]
#[template(path = "notice.html")]
struct NoticeHtml<'a> {
    subject: &'a str,
    message: &'a str,
    link_text: &'a str,
    link: &'a str,
}

/// A notice to a person about something that happened (a budget crossed, a webhook endpoint
/// disabled): one paragraph and one link.
pub fn notice_email(to: &str, subject: &str, message: &str, link_text: &str, link: &str) -> Email {
    let (subject, message, link_text, link) = (
        one_line(subject),
        one_line(message),
        one_line(link_text),
        one_line(link),
    );
    let (subject, message, link_text, link) = (subject.as_str(), message.as_str(), link_text.as_str(), link.as_str());
    let fallback = || format!("{message}\n\n{link_text}: {link}\n");
    let text = NoticeText {
        message,
        link_text,
        link,
    }
    .render()
    .unwrap_or_else(|e| {
        tracing::error!(error = %e, "rendering notice.txt failed");
        fallback()
    });
    let html = NoticeHtml {
        subject,
        message,
        link_text,
        link,
    }
    .render()
    .unwrap_or_else(|e| {
        tracing::error!(error = %e, "rendering notice.html failed");
        format!("<pre>{}</pre>", escape_html(&fallback()))
    });
    Email {
        to: one_line(to),
        subject: subject.to_owned(),
        text,
        html,
    }
}

/// `s` with each run of control characters (newlines, tabs, ...) made one space, trimmed.
fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_control = false;
    for c in s.trim().chars() {
        if c.is_control() {
            if !in_control {
                out.push(' ');
            }
            in_control = true;
        } else {
            out.push(c);
            in_control = false;
        }
    }
    out
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_flattens_control_characters() {
        assert_eq!(one_line("  Acme\r\n\tLtd \n"), "Acme Ltd");
        assert_eq!(one_line("plain"), "plain");
    }

    #[test]
    fn escape_html_escapes_the_five() {
        assert_eq!(
            escape_html(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
