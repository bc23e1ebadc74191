//! Real senders into the MX listener (swaks, Python's smtplib), and smtplib as an ODMR client
//! up to ATRN. Every test checks what `odmr queue list --json` holds afterwards.

mod common;
#[path = "peers/interop_util.rs"]
mod interop_util;

use common::{Line, Server};
use interop_util::{run_timeout, swaks, swaks_replies, swaks_reply_to, Run};
use serde_json::Value;

/// Messages in the queue as (sender, [(recipient, domain, state, last_reply)]), sorted.
type Held = Vec<(String, Vec<(String, String, String, Option<String>)>)>;

fn held(server: &Server) -> Held {
    let q = server.queue();
    let mut v: Held = q
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert!(m["size"].as_u64().unwrap() > 0, "{m}");
            let mut r: Vec<_> = m["recipients"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        r["address"].as_str().unwrap().to_string(),
                        r["domain"].as_str().unwrap().to_string(),
                        r["state"].as_str().unwrap().to_string(),
                        match &r["last_reply"] {
                            Value::Null => None,
                            Value::String(s) => Some(s.clone()),
                            other => Some(other.to_string()),
                        },
                    )
                })
                .collect();
            r.sort();
            (m["sender"].as_str().unwrap().to_string(), r)
        })
        .collect();
    v.sort();
    v
}

/// A freshly queued recipient: state "queued", no reply recorded yet.
fn fresh(address: &str, domain: &str) -> (String, String, String, Option<String>) {
    (address.into(), domain.into(), "queued".into(), None)
}

fn smtplib(args: &[&str]) -> Option<Value> {
    let python = common::python()?;
    let script = common::peers_dir().join("interop_smtplib.py");
    let mut all = vec![script.to_str().unwrap()];
    all.extend_from_slice(args);
    let run = run_timeout(30, &python, &all, &[]);
    assert_eq!(
        run.code,
        Some(0),
        "interop_smtplib.py {args:?} failed:\n{}",
        run.all()
    );
    Some(serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", run.all())))
}

fn swaks_to(server: &Server, from: &str, to: &str, extra: &[&str]) -> Option<Run> {
    let smtp = server.smtp.to_string();
    let mut args = vec!["--server", smtp.as_str(), "--from", from, "--to", to];
    args.extend_from_slice(extra);
    swaks(&args)
}

fn server_ab(smtp_extra: &str) -> Server {
    let server = Server::start_with(smtp_extra, "");
    server.account("acct-a", "pass-a", &["a.example"]);
    server.account("acct-b", "pass-b", &["b.example"]);
    server
}

/// 5. swaks' single- and multi-recipient sends are accepted and held exactly as sent.
#[test]
fn swaks_sends_are_queued_with_their_envelope() {
    let server = server_ab("");
    let Some(r) = swaks_to(
        &server,
        "alice@sender.test",
        "u@a.example",
        &["--header", "Subject: one"],
    ) else {
        return;
    };
    assert_eq!(r.code, Some(0), "swaks:\n{}", r.all());
    let r = swaks_to(
        &server,
        "bob@sender.test",
        "x@a.example,y@a.example,z@b.example",
        &["--header", "Subject: three"],
    )
    .unwrap();
    assert_eq!(r.code, Some(0), "swaks:\n{}", r.all());
    assert!(r.all().contains("250 2.0.0"), "swaks:\n{}", r.all());

    assert_eq!(
        held(&server),
        vec![
            (
                "alice@sender.test".into(),
                vec![fresh("u@a.example", "a.example")]
            ),
            (
                "bob@sender.test".into(),
                vec![
                    fresh("x@a.example", "a.example"),
                    fresh("y@a.example", "a.example"),
                    fresh("z@b.example", "b.example"),
                ]
            ),
        ]
    );
}

/// 6. A recipient in a domain no account owns is refused at RCPT with 550 5.7.1 (no open
///    relay, not even for a subdomain of a hosted one), and nothing is queued.
#[test]
fn swaks_to_an_unhosted_domain_is_refused_at_rcpt() {
    let server = server_ab("");
    let Some(r) = swaks_to(&server, "alice@sender.test", "u@a.example", &[]) else {
        return;
    };
    assert_eq!(r.code, Some(0), "swaks:\n{}", r.all());
    let before = held(&server);
    assert_eq!(before.len(), 1);

    for to in [
        "someone@unhosted.example",
        "someone@sub.a.example",
        "someone@example",
    ] {
        let r = swaks_to(&server, "mallory@sender.test", to, &["--quit-after", "RCPT"]).unwrap();
        let rcpt = swaks_reply_to(&r, "RCPT TO:").unwrap_or_default();
        assert!(rcpt.starts_with("550 5.7.1 "), "RCPT {to}: {rcpt:?}\n{}", r.all());
        // swaks: 24 = "RCPT error".
        assert_eq!(r.code, Some(24), "swaks:\n{}", r.all());
    }
    // The whole send, not just a probe: refused, and swaks never reaches DATA.
    let r = swaks_to(&server, "mallory@sender.test", "someone@unhosted.example", &[]).unwrap();
    assert_eq!(r.code, Some(24), "swaks:\n{}", r.all());
    assert!(
        !swaks_replies(&r).iter().any(|l| l.starts_with("354")),
        "{}",
        r.all()
    );
    assert_eq!(held(&server), before, "the queue changed");
}

/// 7. With `max_message_size = "100KiB"`: a SIZE= over the limit is refused at MAIL (552),
///    a body over the limit sent without SIZE= is refused at its end (552); neither is queued,
///    and the server goes on accepting normal mail, in the same session and in new ones.
#[test]
fn oversized_messages_are_refused_with_552_and_the_server_keeps_serving() {
    let limit = 100 * 1024;
    let server = server_ab("max_message_size = \"100KiB\"");

    // The limit, as announced and enforced at MAIL, exactly at the boundary.
    let mut c = Line::connect(server.smtp);
    assert!(c.reply().starts_with("220"));
    let ehlo = c.ask("EHLO probe.test");
    assert!(ehlo.lines().any(|l| l == format!("250-SIZE {limit}")), "{ehlo}");
    let r = c.ask(&format!("MAIL FROM:<p@sender.test> SIZE={}", limit + 1));
    assert!(r.starts_with("552 "), "SIZE over the limit: {r}");
    let r = c.ask(&format!("MAIL FROM:<p@sender.test> SIZE={limit}"));
    assert!(r.starts_with("250 "), "SIZE at the limit: {r}");
    assert!(c.ask("RSET").starts_with("250"));

    // smtplib declares SIZE=<len> itself when offered SIZE: refused at MAIL.
    let Some(v) = smtplib(&[
        "send",
        &server.smtp.port().to_string(),
        "py@sender.test",
        "u@a.example",
        "--size",
        &(2 * limit).to_string(),
    ]) else {
        return;
    };
    assert_eq!(v["error"], "SMTPSenderRefused", "{v}");
    assert_eq!(v["code"], 552, "{v}");

    // swaks sends no SIZE=: the body itself goes over the limit and is refused at its end.
    let big = tempfile::NamedTempFile::new().unwrap();
    let mut data = b"Subject: big\n\n".to_vec();
    while data.len() <= 2 * limit {
        data.extend_from_slice(&[b'y'; 99]);
        data.push(b'\n');
    }
    std::fs::write(big.path(), &data).unwrap();
    let at = format!("@{}", big.path().display());
    let Some(r) = swaks_to(&server, "sw@sender.test", "u@a.example", &["--data", &at]) else {
        return;
    };
    assert!(!r.all().contains("SIZE="), "swaks declared a size:\n{}", r.all());
    assert!(
        swaks_reply_to(&r, "DATA").is_some_and(|l| l.starts_with("354")),
        "{}",
        r.all()
    );
    let end = swaks_reply_to(&r, ".").unwrap_or_default();
    assert!(end.starts_with("552 "), "end of data: {end:?}\n{}", r.all());
    assert_ne!(r.code, Some(0), "swaks reported success");
    assert_eq!(held(&server), vec![], "an oversized message was queued");

    // The probe session is still usable after its 552.
    let body = "Subject: small\n\nsmall enough\n";
    let r = common::send_mail(server.smtp, "after@sender.test", &["u@a.example"], body);
    assert!(r.starts_with("250 "), "{r}");
    assert!(c.ask("NOOP").starts_with("250"));
    assert!(c.ask("QUIT").starts_with("221"));

    let r = swaks_to(&server, "normal@sender.test", "v@b.example", &[]).unwrap();
    assert_eq!(r.code, Some(0), "swaks:\n{}", r.all());
    assert_eq!(
        held(&server),
        vec![
            (
                "after@sender.test".into(),
                vec![fresh("u@a.example", "a.example")]
            ),
            (
                "normal@sender.test".into(),
                vec![fresh("v@b.example", "b.example")]
            ),
        ]
    );
}

/// 8. Python's smtplib: `sendmail` is queued (and an unhosted recipient among good ones is
///    reported refused with 550); against the ODMR listener, CRAM-MD5 succeeds with 235 for the
///    right password, fails with 535 for a wrong one or an unknown account, and ATRN gets 530
///    before AUTH and 453 after it when there is no mail.
#[test]
fn python_smtplib_sends_and_authenticates_with_cram_md5() {
    let server = server_ab("");

    // Against the ODMR listener, while nothing is held.
    let odmr = server.odmr.port().to_string();
    let Some(v) = smtplib(&["odmr", &odmr, "acct-a", "pass-a", "a.example"]) else {
        return;
    };
    assert_eq!(v["ehlo"], 250, "{v}");
    let features: Vec<&str> = v["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(features.contains(&"ATRN"), "{v}");
    // One AUTH line listing CRAM-MD5 (fetchmail's only mechanism) among others.
    assert!(
        features
            .iter()
            .any(|f| f.starts_with("AUTH ") && f.split(' ').any(|m| m == "CRAM-MD5")),
        "{v}"
    );
    assert_eq!(v["atrn_before_auth"][0], 530, "{v}");
    assert_eq!(v["auth"][0], 235, "{v}");
    assert_eq!(v["atrn"][0], 453, "ATRN with no mail: {v}");

    for (user, pass) in [("acct-b", "wrong"), ("acct-b", "pass-a"), ("nobody", "pass-b")] {
        let v = smtplib(&["odmr", &odmr, user, pass, "b.example"]).unwrap();
        assert_eq!(
            v["auth"]["error"], "SMTPAuthenticationError",
            "{user}/{pass}: {v}"
        );
        assert_eq!(v["auth"]["code"], 535, "{user}/{pass}: {v}");
        assert_eq!(v["atrn"], Value::Null);
    }

    // Into the MX: one good recipient per customer and an unhosted one, which smtplib reports
    // as refused while the message goes through for the others.
    let msg = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        msg.path(),
        b"From: py@sender.test\r\nSubject: from smtplib\r\n\r\nhello\r\n",
    )
    .unwrap();
    let v = smtplib(&[
        "send",
        &server.smtp.port().to_string(),
        "py@sender.test",
        "p1@a.example,nobody@unhosted.example,p2@b.example",
        "--file",
        msg.path().to_str().unwrap(),
    ])
    .unwrap();
    let refused = v["refused"].as_object().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(refused.len(), 1, "{v}");
    assert_eq!(v["refused"]["nobody@unhosted.example"][0], 550, "{v}");
    assert!(
        v["refused"]["nobody@unhosted.example"][1]
            .as_str()
            .unwrap()
            .starts_with("5.7.1"),
        "{v}"
    );
    assert_eq!(
        held(&server),
        vec![(
            "py@sender.test".into(),
            vec![
                fresh("p1@a.example", "a.example"),
                fresh("p2@b.example", "b.example")
            ]
        )]
    );
}
