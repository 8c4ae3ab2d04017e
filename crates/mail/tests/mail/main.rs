//! The mail crate's tests against real peers: maildev (a real SMTP server, from npm), a
//! scripted SMTP server and a loopback HTTP server standing in for Resend's API.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod log;
mod maildev;
mod resend;
mod settings;
mod smtp;
mod templates;

/// A port on 127.0.0.1 that nothing listens on (just now).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// An invitation with everything a template must get right: markup in a name, an ampersand, and a
/// link long enough to be wrapped by the transfer encoding.
pub fn sample_invitation(to: &str) -> (quarterdeck_mail::Email, &'static str) {
    let link = "https://acme.quarterdeck.test/invitations/accept?token=qdi_7Hc2mJ0pXq4Lw9Zr5Tb8Yv1Ns6Kd3Fg0Ue7Ai2Oy4Rt9Wx5Bc1Ve8Pl3Mn6Sj0Gh";
    let email = quarterdeck_mail::invitation_email(
        to,
        "Bob <script>alert(1)</script>",
        "Acme & Sons",
        link,
        "3 July 2026 at 14:00 UTC",
    );
    (email, link)
}

/// `html` with its character references (`&amp;`, `&#60;`, ...) read back as a browser would.
pub fn unescape_html(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let Some(end) = rest.find(';').filter(|&e| e <= 10) else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..end];
        let c = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match c {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}
