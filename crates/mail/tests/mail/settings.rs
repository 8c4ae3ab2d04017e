//! `MailSettings`: reading them, checking them, and keeping secrets out of `Debug`.

use quarterdeck_mail::{DEFAULT_RESEND_API_URL, MailSettings, ResendSettings, SmtpSettings, SmtpTls, build};
use serde_json::json;

fn smtp() -> SmtpSettings {
    SmtpSettings {
        host: "smtp.example.com".to_owned(),
        port: 587,
        username: Some("quarterdeck".to_owned()),
        password: Some("hunter2-smtp-secret".to_owned()),
        tls: SmtpTls::StartTls,
        from: "Quarterdeck <noreply@example.com>".to_owned(),
    }
}

fn resend() -> ResendSettings {
    ResendSettings {
        api_key: "re_secret_key".to_owned(),
        from: "Quarterdeck <noreply@example.com>".to_owned(),
        api_url: DEFAULT_RESEND_API_URL.to_owned(),
    }
}

#[test]
fn reads_each_transport_from_a_tagged_table() {
    let s: MailSettings = serde_json::from_value(json!({
        "transport": "smtp", "host": "smtp.example.com", "port": 587,
        "from": "noreply@example.com",
    }))
    .unwrap();
    let MailSettings::Smtp(s) = s else { panic!("{s:?}") };
    assert_eq!(s.tls, SmtpTls::StartTls, "STARTTLS unless told otherwise");
    assert_eq!((s.username, s.password), (None, None));

    for (name, tls) in [
        ("none", SmtpTls::None),
        ("starttls", SmtpTls::StartTls),
        ("tls", SmtpTls::Tls),
    ] {
        let s: MailSettings = serde_json::from_value(json!({
            "transport": "smtp", "host": "h", "port": 465, "from": "a@b.c", "tls": name,
        }))
        .unwrap();
        let MailSettings::Smtp(s) = s else { panic!("{s:?}") };
        assert_eq!(s.tls, tls);
    }

    let s: MailSettings = serde_json::from_value(json!({
        "transport": "resend", "api_key": "re_x", "from": "a@b.c",
    }))
    .unwrap();
    let MailSettings::Resend(s) = s else { panic!("{s:?}") };
    assert_eq!(s.api_url, "https://api.resend.com");

    let s: MailSettings = serde_json::from_value(json!({ "transport": "log", "from": "a@b.c" })).unwrap();
    assert!(matches!(s, MailSettings::Log { .. }));

    assert!(serde_json::from_value::<MailSettings>(json!({ "transport": "carrier-pigeon" })).is_err());
}

#[tokio::test]
async fn builds_each_transport() {
    // Building makes no connection: these hosts need not exist.
    for tls in [SmtpTls::None, SmtpTls::StartTls, SmtpTls::Tls] {
        let mailer = build(&MailSettings::Smtp(SmtpSettings { tls, ..smtp() })).unwrap();
        assert_eq!(mailer.transport(), "smtp");
    }
    assert_eq!(build(&MailSettings::Resend(resend())).unwrap().transport(), "resend");
    let log = build(&MailSettings::Log {
        from: "a@b.c".to_owned(),
    })
    .unwrap();
    assert_eq!(log.transport(), "log");
}

#[test]
fn building_needs_no_runtime() {
    assert!(build(&MailSettings::Smtp(smtp())).is_ok());
    assert!(build(&MailSettings::Resend(resend())).is_ok());
}

#[test]
fn refuses_settings_that_cannot_work() {
    let err = |s: MailSettings| build(&s).err().unwrap_or_else(|| panic!("accepted {s:?}"));

    let e = err(MailSettings::Smtp(SmtpSettings {
        from: "not an address".to_owned(),
        ..smtp()
    }));
    assert!(e.contains("from"), "{e}");
    let e = err(MailSettings::Smtp(SmtpSettings {
        password: None,
        ..smtp()
    }));
    assert!(e.contains("password"), "{e}");
    let e = err(MailSettings::Smtp(SmtpSettings {
        username: Some(String::new()),
        ..smtp()
    }));
    assert!(e.contains("username"), "{e}");
    let e = err(MailSettings::Smtp(SmtpSettings {
        host: " ".to_owned(),
        ..smtp()
    }));
    assert!(e.contains("host"), "{e}");
    let e = err(MailSettings::Smtp(SmtpSettings { port: 0, ..smtp() }));
    assert!(e.contains("port"), "{e}");

    let e = err(MailSettings::Resend(ResendSettings {
        api_key: String::new(),
        ..resend()
    }));
    assert!(e.contains("api_key"), "{e}");
    let e = err(MailSettings::Resend(ResendSettings {
        api_url: "not a url".to_owned(),
        ..resend()
    }));
    assert!(e.contains("api_url"), "{e}");
    let e = err(MailSettings::Resend(ResendSettings {
        api_url: "ftp://x".to_owned(),
        ..resend()
    }));
    assert!(e.contains("api_url"), "{e}");
    let e = err(MailSettings::Resend(ResendSettings {
        from: String::new(),
        ..resend()
    }));
    assert!(e.contains("from"), "{e}");
}

#[tokio::test]
async fn secrets_stay_out_of_debug_output() {
    let settings = format!("{:?} {:?}", MailSettings::Smtp(smtp()), MailSettings::Resend(resend()));
    assert!(!settings.contains("hunter2-smtp-secret"), "{settings}");
    assert!(!settings.contains("re_secret_key"), "{settings}");
    assert!(settings.contains("smtp.example.com"), "{settings}");

    let smtp = quarterdeck_mail::SmtpMailer::new(&smtp()).unwrap();
    let resend = quarterdeck_mail::ResendMailer::new(&resend()).unwrap();
    let mailers = format!("{smtp:?} {resend:?}");
    assert!(!mailers.contains("hunter2-smtp-secret"), "{mailers}");
    assert!(!mailers.contains("re_secret_key"), "{mailers}");
}
