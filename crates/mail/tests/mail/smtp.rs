//! `SmtpMailer` against maildev, against a scripted SMTP server, and against nothing at all.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use quarterdeck_mail::{MailSettings, Mailer, SendError, SmtpSettings, SmtpTls, build};
use serde_json::Value;

use crate::maildev::Maildev;
use crate::{closed_port, sample_invitation, unescape_html};

const FROM: &str = "Quarterdeck <noreply@quarterdeck.test>";

fn smtp(port: u16) -> std::sync::Arc<dyn Mailer> {
    build(&MailSettings::Smtp(SmtpSettings {
        host: "127.0.0.1".to_owned(),
        port,
        username: None,
        password: None,
        tls: SmtpTls::None,
        from: FROM.to_owned(),
    }))
    .unwrap()
}

fn addresses(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list of addresses: {v}"))
        .iter()
        .map(|a| a["address"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn invitation_reaches_maildev_with_both_bodies_and_the_link_intact() {
    let maildev = Maildev::start();
    let mailer = smtp(maildev.smtp_port);
    assert_eq!(mailer.transport(), "smtp");
    let (email, link) = sample_invitation("alice@example.com");
    let id = uuid::Uuid::new_v4();

    mailer.send(id, &email).await.unwrap();

    let received = maildev.wait_for_emails(1).await;
    assert_eq!(received.len(), 1, "{received:#?}");
    let got = &received[0];
    // The outbox message's id names it, so a copy sent again after a crash is the same message.
    assert_eq!(
        got["headers"]["message-id"]
            .as_str()
            .map(|m| m.trim_matches(['<', '>'])),
        Some(format!("{id}@quarterdeck.test").as_str()),
        "{got:#}"
    );
    assert_eq!(addresses(&got["to"]), ["alice@example.com"], "{got:#}");
    assert_eq!(addresses(&got["from"]), ["noreply@quarterdeck.test"], "{got:#}");
    assert_eq!(got["from"][0]["name"], "Quarterdeck", "{got:#}");
    assert_eq!(got["subject"], "You're invited to Acme & Sons on Quarterdeck");
    assert_eq!(got["subject"].as_str().unwrap(), email.subject);

    let text = got["text"].as_str().unwrap_or_else(|| panic!("no text body: {got:#}"));
    let html = got["html"].as_str().unwrap_or_else(|| panic!("no HTML body: {got:#}"));
    // Both bodies arrive byte for byte (line endings aside) through the transfer encoding.
    assert_eq!(text.replace("\r\n", "\n").trim_end(), email.text.trim_end());
    assert_eq!(html.replace("\r\n", "\n").trim_end(), email.html.trim_end());
    assert!(text.contains(link), "{text}");
    assert!(html.contains(&format!("href=\"{link}\"")), "{html}");
    assert!(text.contains("Bob <script>alert(1)</script> has invited you"));
    assert!(!html.contains("<script>"), "{html}");
    assert!(unescape_html(html).contains("<strong>Bob <script>alert(1)</script></strong>"));

    // A second message goes over the pooled connection.
    let (second, _) = sample_invitation("carol@example.com");
    mailer.send(uuid::Uuid::new_v4(), &second).await.unwrap();
    let received = maildev.wait_for_emails(2).await;
    let mut to: Vec<String> = received.iter().flat_map(|e| addresses(&e["to"])).collect();
    to.sort();
    assert_eq!(to, ["alice@example.com", "carol@example.com"]);
}

#[tokio::test]
async fn a_server_that_is_down_is_a_temporary_failure() {
    let mailer = smtp(closed_port());
    let (email, _) = sample_invitation("alice@example.com");
    let started = Instant::now();
    let err = mailer.send(uuid::Uuid::new_v4(), &email).await.unwrap_err();
    assert!(matches!(err, SendError::Temporary(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_recipient_that_is_not_an_address_is_a_permanent_failure() {
    let mailer = smtp(closed_port());
    let (email, _) = sample_invitation("not an address");
    let err = mailer.send(uuid::Uuid::new_v4(), &email).await.unwrap_err();
    assert!(matches!(err, SendError::Permanent(_)), "{err:?}");
}

/// An SMTP server that accepts one connection and answers `RCPT TO` with `rcpt_reply`.
fn scripted_smtp(rcpt_reply: &'static str) -> (u16, JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut out = stream.try_clone().unwrap();
        let mut commands = Vec::new();
        out.write_all(b"220 scripted ESMTP\r\n").unwrap();
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let verb = line.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
            commands.push(verb.clone());
            let reply = match verb.as_str() {
                "EHLO" | "HELO" => "250 scripted",
                "MAIL" | "RSET" | "NOOP" => "250 2.0.0 ok",
                "RCPT" => rcpt_reply,
                "QUIT" => "221 2.0.0 bye",
                _ => "502 5.5.2 not in this script",
            };
            if out.write_all(format!("{reply}\r\n").as_bytes()).is_err() || verb == "QUIT" {
                break;
            }
        }
        commands
    });
    (port, server)
}

#[tokio::test]
async fn a_4xx_reply_is_a_temporary_failure() {
    let (port, server) = scripted_smtp("450 4.2.1 mailbox busy, try again later");
    let (email, _) = sample_invitation("alice@example.com");
    let err = smtp(port).send(uuid::Uuid::new_v4(), &email).await.unwrap_err();
    let SendError::Temporary(detail) = &err else {
        panic!("{err:?}")
    };
    assert!(detail.contains("mailbox busy"), "{detail}");
    drop(err);
    let commands = server.join().unwrap();
    assert!(commands.contains(&"RCPT".to_owned()), "{commands:?}");
}

#[tokio::test]
async fn a_5xx_reply_is_a_permanent_failure() {
    let (port, server) = scripted_smtp("550 5.1.1 no such user here");
    let (email, _) = sample_invitation("alice@example.com");
    let err = smtp(port).send(uuid::Uuid::new_v4(), &email).await.unwrap_err();
    let SendError::Permanent(detail) = &err else {
        panic!("{err:?}")
    };
    assert!(detail.contains("no such user"), "{detail}");
    drop(err);
    let commands = server.join().unwrap();
    assert!(commands.contains(&"RCPT".to_owned()), "{commands:?}");
}
