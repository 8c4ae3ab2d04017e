//! The invitation email's text and HTML bodies.

use quarterdeck_mail::invitation_email;

use crate::unescape_html;

const LINK: &str = "https://acme.quarterdeck.test/invitations/accept?token=qdi_abc123&source=email";

#[test]
fn both_bodies_say_who_invited_you_to_what_and_until_when() {
    let email = invitation_email(
        "alice@example.com",
        "Bob Stone",
        "Acme",
        LINK,
        "3 July 2026 at 14:00 UTC",
    );
    assert_eq!(email.to, "alice@example.com");
    assert_eq!(email.subject, "You're invited to Acme on Quarterdeck");
    for body in [&email.text, &email.html] {
        assert!(body.contains("Bob Stone"), "{body}");
        assert!(body.contains("Acme"), "{body}");
        assert!(body.contains("3 July 2026 at 14:00 UTC"), "{body}");
    }
    assert!(email.text.contains(LINK), "{}", email.text);
    assert!(
        email
            .text
            .contains("Bob Stone has invited you to join Acme on Quarterdeck."),
        "{}",
        email.text
    );
    assert!(
        email.text.contains("This link expires on 3 July 2026 at 14:00 UTC."),
        "{}",
        email.text
    );
    // In HTML the `&` of the query is escaped, and a client reads it back as `&`.
    assert!(!email.html.contains(LINK), "{}", email.html);
    let html = unescape_html(&email.html);
    assert_eq!(html.matches(&format!("href=\"{LINK}\"")).count(), 2, "{html}");
    assert!(html.contains(&format!(">{LINK}</a>")), "{html}");
    assert!(email.html.contains(">Set your password</a>"), "{}", email.html);
    assert!(email.html.starts_with("<!DOCTYPE html>"));
}

#[test]
fn html_escapes_names_and_text_keeps_them_as_written() {
    let email = invitation_email(
        "alice@example.com",
        "Bob <script>alert(1)</script>",
        "Acme & \"Sons\" <b>",
        LINK,
        "<soon>",
    );
    assert!(!email.html.contains("<script>"), "{}", email.html);
    assert!(!email.html.contains("<b>"), "{}", email.html);
    assert!(!email.html.contains("<soon>"), "{}", email.html);
    let html = unescape_html(&email.html);
    assert!(
        html.contains("<strong>Bob <script>alert(1)</script></strong>"),
        "{html}"
    );
    assert!(html.contains("<strong>Acme & \"Sons\" <b></strong>"), "{html}");
    assert!(html.contains("expires on <soon>."), "{html}");
    // Plain text is not HTML: escaping it would show the entities to the reader.
    assert!(
        email.text.contains("Bob <script>alert(1)</script> has invited you"),
        "{}",
        email.text
    );
    assert_eq!(email.subject, "You're invited to Acme & \"Sons\" <b> on Quarterdeck");
}

#[test]
fn a_name_cannot_add_lines() {
    let email = invitation_email(
        "alice@example.com",
        "Bob\r\nBcc: eve@example.com",
        "Acme\nLtd",
        LINK,
        "tomorrow",
    );
    assert_eq!(email.subject, "You're invited to Acme Ltd on Quarterdeck");
    assert!(!email.subject.contains('\n'));
    assert!(
        email
            .text
            .starts_with("Bob Bcc: eve@example.com has invited you to join Acme Ltd"),
        "{}",
        email.text
    );
}

#[test]
fn unescape_html_reads_references_back() {
    assert_eq!(
        unescape_html("a &amp; b &#60;c&#62; &#x27;d&#39; &quot;e&#34; & f &bogus; g"),
        "a & b <c> 'd' \"e\" & f &bogus; g"
    );
}
