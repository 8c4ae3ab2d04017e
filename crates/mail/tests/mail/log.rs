//! `LogMailer`: the whole message at INFO, greppable by the recipient's address.

use std::io::Write;
use std::sync::{Arc, Mutex};

use quarterdeck_mail::{MailSettings, build};

use crate::sample_invitation;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn logs_the_whole_message_on_the_recipients_line() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mailer = build(&MailSettings::Log {
        from: "Quarterdeck <noreply@quarterdeck.test>".to_owned(),
    })
    .unwrap();
    assert_eq!(mailer.transport(), "log");
    let (email, link) = sample_invitation("alice@example.com");
    mailer.send(uuid::Uuid::new_v4(), &email).await.unwrap();

    let out = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    // What `grep alice@example.com` shows an operator: one line with everything on it.
    let line = out
        .lines()
        .find(|l| l.contains("alice@example.com"))
        .unwrap_or_else(|| panic!("no line names the recipient:\n{out}"));
    assert!(line.contains(" INFO "), "{line}");
    assert!(line.contains(link), "{line}");
    assert!(line.contains("noreply@quarterdeck.test"), "{line}");
    assert!(line.contains(&email.subject), "{line}");
    assert!(line.contains("has invited you to join Acme & Sons"), "{line}");
    assert!(line.contains("3 July 2026 at 14:00 UTC"), "{line}");
}
