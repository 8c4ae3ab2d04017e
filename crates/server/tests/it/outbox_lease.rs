//! Finding 11: two processes delivering from one database never send one message twice: the
//! outbox rows are claimed with a lease, atomically.

use crate::both_backends;
use crate::helpers::*;
use quarterdeck::Settings;
use quarterdeck::app::Deps;
use quarterdeck_domain::clock::ManualClock;
use quarterdeck_domain::token::OsRandom;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const INVITATIONS: usize = 200;

both_backends!(
    async fn two_workers_on_one_database_send_each_of_200_invitations_exactly_once(backend) {
        let maildev = crate::maildev::Maildev::start();
        let port = maildev.smtp_port;
        // The app's own worker ticks once at start (nothing to send yet), then idles.
        let app = TestApp::spawn_with(backend, |s| {
            mail_to(s, port);
            s.outbox_poll_ms = 3_600_000;
        })
        .await;
        app.sign_in_owner().await;
        let tid = app.create_tenant("Acme", "acme").await;
        for i in 0..INVITATIONS {
            let r = app.invite(&format!("user{i}@acme.example"), &tid, &["viewer"]).await;
            assert_eq!(r.status(), 303, "invitation {i}");
        }
        assert_eq!(app.outbox().await.len(), INVITATIONS);

        // Two workers, each with its own store (its own connections, as a second process has)
        // on this app's database, and its own SMTP client, racing over the same outbox.
        let mut workers = Vec::new();
        for _ in 0..2 {
            let mut settings = Settings {
                data_dir: app.data_dir().to_owned(),
                database_url: app.pg_url.clone(),
                ..Settings::default()
            };
            mail_to(&mut settings, port);
            let deps = Deps {
                clock: Arc::new(ManualClock::new(app.clock_now())),
                rng: Arc::new(OsRandom),
            };
            let core = quarterdeck::app::core(&settings, deps).await.unwrap();
            let mailer = quarterdeck_mail::build(&settings.mail_settings().unwrap()).unwrap();
            workers.push((core, mailer));
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        let tasks: Vec<_> = workers
            .into_iter()
            .map(|(core, mailer)| {
                tokio::spawn(async move {
                    let mut sent = 0;
                    loop {
                        sent += core.deliver_due(&*mailer).await.unwrap();
                        let far = core.clock.now() + time::Duration::days(3650);
                        if core.store().due_messages(far, 1).await.unwrap().is_empty() {
                            return sent;
                        }
                        assert!(Instant::now() < deadline, "the outbox did not empty in time");
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        let mut sent = Vec::new();
        for t in tasks {
            sent.push(t.await.unwrap());
        }

        // Every message was marked sent once the loops end; maildev has had every send.
        let emails = maildev.wait_for_emails(INVITATIONS).await;
        let mut per_recipient: HashMap<String, usize> = HashMap::new();
        for m in &emails {
            for to in m["to"].as_array().unwrap() {
                *per_recipient.entry(to["address"].as_str().unwrap().to_owned()).or_default() += 1;
            }
        }
        let twice: Vec<_> = per_recipient.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "{} recipients got more than one email (workers sent {sent:?}): {twice:?}",
            twice.len()
        );
        assert_eq!(emails.len(), INVITATIONS, "workers sent {sent:?}");
        for i in 0..INVITATIONS {
            assert_eq!(per_recipient.get(&format!("user{i}@acme.example")), Some(&1), "user{i}");
        }
    }
);
