//! Finding 11: two processes delivering from one database never send one message twice: the
//! outbox rows are claimed with a lease, atomically.

use crate::helpers::*;
use crate::{both, both_backends};
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

both!(
    async fn concurrent_claims_each_take_at_most_their_batch_and_never_one_message_twice(app) {
        // 300 messages due in an hour, put in place directly (the claim is what is under test;
        // not yet due for the app's own worker, whose clock stays put).
        const DUE: usize = 300;
        let due_at = app.clock_now() + time::Duration::hours(1);
        let secs = due_at.unix_timestamp();
        let sql = if app.pg_url.is_some() {
            format!(
                "INSERT INTO outbox (id, to_addr, subject, body_text, body_html, status, next_attempt_at, created_at) \
                 SELECT gen_random_uuid(), 'c' || g || '@example.com', 's', 't', 'h', 'pending', \
                   to_timestamp({secs}), to_timestamp({secs}) + g * interval '1 millisecond' \
                 FROM generate_series(1, {DUE}) g"
            )
        } else {
            format!(
                "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {DUE}) \
                 INSERT INTO outbox (id, to_addr, subject, body_text, body_html, status, next_attempt_at, created_at) \
                 SELECT randomblob(16), 'c' || n || '@example.com', 's', 't', 'h', 'pending', \
                   {secs} * 1000000, {secs} * 1000000 + n * 1000 FROM g"
            )
        };
        app.control_exec(&sql).await;

        // Eight workers claim batches of 10 at once, over the store's own connections, until
        // nothing is left; nothing is sent or marked, so every claim stays held.
        let now = app.clock_now() + time::Duration::hours(2);
        let mut workers = Vec::new();
        for _ in 0..8 {
            let store = app.core.store().clone();
            workers.push(tokio::spawn(async move {
                let mut batches = Vec::new();
                loop {
                    let lease = uuid::Uuid::new_v4();
                    let batch = store
                        .claim_due_messages(now, lease, now + time::Duration::minutes(5), 10)
                        .await
                        .unwrap();
                    if batch.is_empty() {
                        return batches;
                    }
                    batches.push(batch.into_iter().map(|m| m.id).collect::<Vec<_>>());
                }
            }));
        }
        let mut claimed = Vec::new();
        for w in workers {
            for batch in w.await.unwrap() {
                assert!(batch.len() <= 10, "one claim took {} messages", batch.len());
                claimed.extend(batch);
            }
        }
        let distinct: std::collections::HashSet<_> = claimed.iter().collect();
        assert_eq!(distinct.len(), claimed.len(), "a message claimed by two live leases");
        assert_eq!(claimed.len(), DUE, "every due message claimed");
    }
);
