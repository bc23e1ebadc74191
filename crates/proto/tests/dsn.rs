//! Golden DSNs: each case composes a report from fixed data and compares it octet for octet with
//! `tests/dsn/NAME.eml`. `UPDATE_GOLDEN=1 cargo test -p odmr-proto --test dsn` rewrites them
//! (review the diff before committing).
//!
//! Then an independent parser reads every golden file: Python's `email` package, through
//! `tests/dsn/check_dsn.py`, must find the RFC 6522 structure and the per-recipient fields this
//! test expects. Without python3 that part is skipped with a message, and fails under CI=true.

use bytes::BytesMut;
use odmr_proto::dsn::{
    self, Action, Composed, ReceivedFrom, Report, ReportedRecipient, Returned, ReturnedAs,
};
use odmr_proto::envelope::Ret;
use odmr_proto::reply::parse_reply;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

/// Tue, 30 Apr 2024 09:58:12 +0000.
const ARRIVAL: i64 = 1_714_471_092;
/// Tue, 07 May 2024 10:00:00 +0000.
const NOW: i64 = 1_715_076_000;
const HOST: &str = "odmr.example.net";

const ORIGINAL: &[u8] = b"Received: from client.example ([192.0.2.7])\r\n\
\tby odmr.example.net (odmr) with ESMTP id s1.1\r\n\
\tfor <bob@example.org>;\r\n\
\tTue, 30 Apr 2024 09:58:12 +0000\r\n\
From: Alice <alice@sender.example>\r\n\
To: bob@example.org\r\n\
Subject: Quarterly figures\r\n\
Date: Tue, 30 Apr 2024 11:58:00 +0200\r\n\
Message-ID: <m1@sender.example>\r\n\
\r\n\
Hello Bob,\r\n\
\r\n\
the figures are below.\r\n";

fn original_8bit() -> Vec<u8> {
    "From: J\u{fc}rgen <juergen@sender.example>\r\n\
     To: bob@example.org\r\n\
     Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\
     MIME-Version: 1.0\r\n\
     Content-Type: text/plain; charset=utf-8\r\n\
     Content-Transfer-Encoding: 8bit\r\n\
     \r\n\
     Sch\u{f6}ne Gr\u{fc}\u{df}e aus M\u{fc}nchen.\r\n"
        .replace("J\u{fc}rgen", "Juergen")
        .into_bytes()
}

fn recipient(addr: &str, action: Action, status: &str) -> ReportedRecipient {
    ReportedRecipient {
        original_recipient: None,
        final_recipient: addr.into(),
        action,
        status: status.into(),
        remote_mta: None,
        diagnostic: None,
        last_attempt: Some(NOW),
        will_retry_until: None,
    }
}

/// A refusal by the customer's server, as the bounce job builds it from the reply the delivery
/// parsed and the store kept (`wire`: its lines separated by CRLF, the last one's end left out).
fn refused(addr: &str, wire: &str) -> ReportedRecipient {
    let mut b = BytesMut::from(format!("{wire}\r\n").as_str());
    let reply = parse_reply(&mut b).unwrap().unwrap();
    let status = reply.status.clone().unwrap_or_else(|| "5.0.0".into());
    ReportedRecipient {
        remote_mta: Some("mail.example.org".into()),
        diagnostic: Some(dsn::diagnostic_from_reply(&reply)),
        ..recipient(addr, Action::Failed, &status)
    }
}

fn base<'a>(
    unique: &str,
    explanation: String,
    recipients: Vec<ReportedRecipient>,
    returned: Returned<'a>,
) -> Report<'a> {
    Report {
        reporting_mta: HOST.into(),
        postmaster: format!("postmaster@{HOST}"),
        to: "alice@sender.example".into(),
        envid: None,
        arrival: ARRIVAL,
        received_from_mta: Some(ReceivedFrom {
            helo: "client.example".into(),
            ip: "192.0.2.7".into(),
        }),
        now: NOW,
        unique: unique.into(),
        explanation,
        recipients,
        returned,
        max_return: 10 * 1024 * 1024,
        seven_bit_only: false,
    }
}

/// What Python must see in one golden file.
struct Expect {
    subject: &'static str,
    parts: &'static [&'static str],
    returned_cte: Option<&'static str>,
    per_message: Vec<(&'static str, &'static str)>,
    recipients: Vec<Vec<(&'static str, &'static str)>>,
    returned_subject: Option<&'static str>,
    /// Whether the returned part holds the body.
    returned_body: bool,
    text: &'static [&'static str],
    eight_bit: bool,
    returned_as: ReturnedAs,
}

struct Case {
    name: &'static str,
    composed: Composed,
    expect: Expect,
}

const FAILED: &str = "Undelivered Mail Returned to Sender";
const DELAYED: &str = "Delayed Mail (still being retried)";
const FULL: &[&str] = &["text/plain", "message/delivery-status", "message/rfc822"];
const HDRS: &[&str] = &["text/plain", "message/delivery-status", "text/rfc822-headers"];

fn per_message(envid: Option<&'static str>) -> Vec<(&'static str, &'static str)> {
    let mut v = vec![
        ("reporting-mta", "dns; odmr.example.net"),
        ("received-from-mta", "dns; client.example (192.0.2.7)"),
        ("arrival-date", "Tue, 30 Apr 2024 09:58:12 +0000"),
    ];
    if let Some(e) = envid {
        v.insert(0, ("original-envelope-id", e));
    }
    v
}

const LAST: (&str, &str) = ("last-attempt-date", "Tue, 07 May 2024 10:00:00 +0000");

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let bob_refused = "550 5.1.1 <bob@example.org> unknown user";
    let bob = ["bob@example.org"];

    // 1. Refused by the customer's server, RET=FULL: the whole message comes back.
    let r = base(
        "4711",
        dsn::explain_refused(HOST, &bob, "mail.example.org"),
        vec![refused("bob@example.org", bob_refused)],
        Returned::for_ret(Some(Ret::Full), ORIGINAL),
    );
    let refused_fields = vec![
        ("final-recipient", "rfc822;bob@example.org"),
        ("action", "failed"),
        ("status", "5.1.1"),
        ("remote-mta", "dns; mail.example.org"),
        (
            "diagnostic-code",
            "smtp; 550 5.1.1 <bob@example.org> unknown user",
        ),
        LAST,
    ];
    cases.push(Case {
        name: "failure-ret-full",
        composed: dsn::compose(&r).unwrap(),
        expect: Expect {
            subject: FAILED,
            parts: FULL,
            returned_cte: Some("7bit"),
            per_message: per_message(None),
            recipients: vec![refused_fields.clone()],
            returned_subject: Some("Quarterly figures"),
            returned_body: true,
            text: &[
                "could not be delivered",
                "bob@example.org",
                "(mail.example.org), it refused the message",
            ],
            eight_bit: false,
            returned_as: ReturnedAs::Full,
        },
    });

    // 2. The same with RET=HDRS: only the header section, as text/rfc822-headers.
    let r = base(
        "4712",
        dsn::explain_refused(HOST, &bob, "mail.example.org"),
        vec![refused("bob@example.org", bob_refused)],
        Returned::for_ret(Some(Ret::Hdrs), ORIGINAL),
    );
    cases.push(Case {
        name: "failure-ret-hdrs",
        composed: dsn::compose(&r).unwrap(),
        expect: Expect {
            subject: FAILED,
            parts: HDRS,
            returned_cte: Some("7bit"),
            per_message: per_message(None),
            recipients: vec![refused_fields],
            returned_subject: Some("Quarterly figures"),
            returned_body: false,
            text: &["could not be delivered"],
            eight_bit: false,
            returned_as: ReturnedAs::Headers,
        },
    });

    // 3. Not collected within the hold time: failed with 4.4.7, ENVID and ORCPT echoed, no RET
    //    (the whole message, our choice).
    let stored_mail = "BODY=7BIT ENVID=QQ314159";
    let stored_rcpt = "NOTIFY=FAILURE ORCPT=rfc822;Bob+40Example.org";
    assert!(dsn::wants_failure(stored_rcpt) && !dsn::wants_delay(stored_rcpt));
    let mut r = base(
        "4713",
        dsn::explain_expired(HOST, &bob, 7),
        vec![ReportedRecipient {
            original_recipient: dsn::orcpt(stored_rcpt),
            ..recipient("bob@example.org", Action::Failed, "4.4.7")
        }],
        Returned::for_ret(dsn::ret(stored_mail), ORIGINAL),
    );
    r.envid = dsn::envid(stored_mail);
    cases.push(Case {
        name: "expired-envid-orcpt",
        composed: dsn::compose(&r).unwrap(),
        expect: Expect {
            subject: FAILED,
            parts: FULL,
            returned_cte: Some("7bit"),
            per_message: per_message(Some("QQ314159")),
            recipients: vec![vec![
                ("original-recipient", "rfc822;Bob@Example.org"),
                ("final-recipient", "rfc822;bob@example.org"),
                ("action", "failed"),
                ("status", "4.4.7"),
                LAST,
            ]],
            returned_subject: Some("Quarterly figures"),
            returned_body: true,
            text: &["held for its owner to collect", "not collected within 7 days"],
            eight_bit: false,
            returned_as: ReturnedAs::Full,
        },
    });

    // 4. Three recipients refused in one session, one with a multi-line reply, one with a
    //    reply without an enhanced code (5.0.0); RET=HDRS.
    let multi = "550-5.1.1 <bob@example.org> unknown user\r\n550-5.1.1 Please check the address\r\n550 5.1.1 and try again";
    let three = ["bob@example.org", "Carol@example.org", "dave@example.com"];
    let r = base(
        "4714",
        dsn::explain_refused(HOST, &three, "mail.example.org"),
        vec![
            refused("bob@example.org", multi),
            refused("Carol@example.org", "552 5.2.2 <Carol@example.org> mailbox full"),
            refused("dave@example.com", "550 no such user here"),
        ],
        Returned::HeadersOnly(ORIGINAL),
    );
    let rcpt = |addr, status, diag| {
        vec![
            ("final-recipient", addr),
            ("action", "failed"),
            ("status", status),
            ("remote-mta", "dns; mail.example.org"),
            ("diagnostic-code", diag),
            LAST,
        ]
    };
    cases.push(Case {
        name: "multi-recipient-multiline",
        composed: dsn::compose(&r).unwrap(),
        expect: Expect {
            subject: FAILED,
            parts: HDRS,
            returned_cte: Some("7bit"),
            per_message: per_message(None),
            recipients: vec![
                rcpt(
                    "rfc822;bob@example.org",
                    "5.1.1",
                    "smtp; 550-5.1.1 <bob@example.org> unknown user 550-5.1.1 Please check the address 550 \
                     5.1.1 and try again",
                ),
                rcpt(
                    "rfc822;Carol@example.org",
                    "5.2.2",
                    "smtp; 552 5.2.2 <Carol@example.org> mailbox full",
                ),
                rcpt("rfc822;dave@example.com", "5.0.0", "smtp; 550 no such user here"),
            ],
            returned_subject: Some("Quarterly figures"),
            returned_body: false,
            text: &[
                "following recipients:",
                "Carol@example.org",
                "example.org and example.com",
            ],
            eight_bit: false,
            returned_as: ReturnedAs::Headers,
        },
    });

    // 5. The delay warning: delayed 4.0.0 with Will-Retry-Until; headers only although no RET
    //    was given (RFC 3461 §6.2).
    let stored_rcpt = "ORCPT=rfc822;bob+40example.org";
    assert!(dsn::wants_delay(stored_rcpt));
    let until = ARRIVAL + 7 * 86_400;
    let r = base(
        "4715",
        dsn::explain_delayed(HOST, &bob, 24, until),
        vec![ReportedRecipient {
            original_recipient: dsn::orcpt(stored_rcpt),
            last_attempt: None,
            will_retry_until: Some(until),
            ..recipient("bob@example.org", Action::Delayed, "4.0.0")
        }],
        Returned::for_ret(None, ORIGINAL),
    );
    cases.push(Case {
        name: "delay-warning",
        composed: dsn::compose(&r).unwrap(),
        expect: Expect {
            subject: DELAYED,
            parts: HDRS,
            returned_cte: Some("7bit"),
            per_message: per_message(None),
            recipients: vec![vec![
                ("original-recipient", "rfc822;bob@example.org"),
                ("final-recipient", "rfc822;bob@example.org"),
                ("action", "delayed"),
                ("status", "4.0.0"),
                ("will-retry-until", "Tue, 07 May 2024 09:58:12 +0000"),
            ]],
            returned_subject: Some("Quarterly figures"),
            returned_body: false,
            text: &["warning only", "No error has occurred", "waiting to be collected"],
            eight_bit: false,
            returned_as: ReturnedAs::Headers,
        },
    });

    // 6. An 8-bit original returned whole: the part is marked 8bit and the DSN needs
    //    BODY=8BITMIME ([project] choice, see the dsn module).
    let eight = original_8bit();
    let r = base(
        "4716",
        dsn::explain_refused(HOST, &bob, "mail.example.org"),
        vec![refused("bob@example.org", bob_refused)],
        Returned::for_ret(Some(Ret::Full), &eight),
    );
    cases.push(Case {
        name: "eight-bit-original",
        composed: dsn::compose(&r).unwrap(),
        expect: Expect {
            subject: FAILED,
            parts: FULL,
            returned_cte: Some("8bit"),
            per_message: per_message(None),
            recipients: vec![vec![
                ("final-recipient", "rfc822;bob@example.org"),
                ("action", "failed"),
                ("status", "5.1.1"),
                ("remote-mta", "dns; mail.example.org"),
                (
                    "diagnostic-code",
                    "smtp; 550 5.1.1 <bob@example.org> unknown user",
                ),
                LAST,
            ]],
            returned_subject: Some("=?utf-8?q?Gr=C3=BC=C3=9Fe?="),
            returned_body: true,
            text: &["could not be delivered"],
            eight_bit: true,
            returned_as: ReturnedAs::Full,
        },
    });

    // 7. A UTF-8 recipient (SMTPUTF8): the report stays 7bit with the utf-8 address type
    //    (RFC 6533 §3), the text part is quoted-printable.
    let jerome = "j\u{e9}r\u{f4}me@example.org";
    let r = base(
        "4717",
        dsn::explain_refused(HOST, &[jerome], "mail.example.org"),
        vec![ReportedRecipient {
            original_recipient: dsn::orcpt("ORCPT=utf-8;j\\x{E9}r\\x{F4}me@example.org"),
            ..refused(jerome, "550 5.1.1 unknown user")
        }],
        Returned::for_ret(Some(Ret::Hdrs), ORIGINAL),
    );
    cases.push(Case {
        name: "utf8-recipient",
        composed: dsn::compose(&r).unwrap(),
        expect: Expect {
            subject: FAILED,
            parts: HDRS,
            returned_cte: Some("7bit"),
            per_message: per_message(None),
            recipients: vec![vec![
                ("original-recipient", "utf-8;j\\x{E9}r\\x{F4}me@example.org"),
                ("final-recipient", "utf-8;j\\x{E9}r\\x{F4}me@example.org"),
                ("action", "failed"),
                ("status", "5.1.1"),
                ("remote-mta", "dns; mail.example.org"),
                ("diagnostic-code", "smtp; 550 5.1.1 unknown user"),
                LAST,
            ]],
            returned_subject: Some("Quarterly figures"),
            returned_body: false,
            text: &["    j\u{e9}r\u{f4}me@example.org\n"],
            eight_bit: false,
            returned_as: ReturnedAs::Headers,
        },
    });
    cases
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/dsn")
}

/// A readable account of where two byte strings differ, line by line.
fn diff(expected: &[u8], actual: &[u8]) -> String {
    let e: Vec<&[u8]> = expected.split(|&b| b == b'\n').collect();
    let a: Vec<&[u8]> = actual.split(|&b| b == b'\n').collect();
    let mut out = String::new();
    let mut shown = 0;
    for i in 0..e.len().max(a.len()) {
        let (x, y) = (e.get(i), a.get(i));
        if x != y {
            if let Some(x) = x {
                out.push_str(&format!(
                    "{:4} - {}\n",
                    i + 1,
                    String::from_utf8_lossy(x).escape_debug()
                ));
            }
            if let Some(y) = y {
                out.push_str(&format!(
                    "{:4} + {}\n",
                    i + 1,
                    String::from_utf8_lossy(y).escape_debug()
                ));
            }
            shown += 1;
            if shown == 20 {
                out.push_str("     (more differences not shown)\n");
                break;
            }
        }
    }
    out
}

#[test]
fn golden_files() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut failures = Vec::new();
    for c in cases() {
        let path = golden_dir().join(format!("{}.eml", c.name));
        let got = &c.composed.bytes;
        // Rules that hold whatever the golden says.
        assert_eq!(c.composed.eight_bit, c.expect.eight_bit, "{}: eight_bit", c.name);
        assert_eq!(c.composed.returned, c.expect.returned_as, "{}: returned", c.name);
        assert!(!c.composed.smtputf8, "{}", c.name);
        for l in got.split(|&b| b == b'\n') {
            assert!(
                l.len() <= 999 && l.ends_with(b"\r") || l.is_empty(),
                "{}: bad line {l:?}",
                c.name
            );
        }
        if update {
            let tmp = path.with_extension("eml.tmp");
            std::fs::write(&tmp, got).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
            continue;
        }
        match std::fs::read(&path) {
            Ok(want) if &want == got => {}
            Ok(want) => failures.push(format!(
                "{}: differs from the golden file\n{}",
                c.name,
                diff(&want, got)
            )),
            Err(e) => failures.push(format!("{}: cannot read {}: {e}", c.name, path.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(if the change is intended: UPDATE_GOLDEN=1 cargo test -p odmr-proto --test dsn, then review git diff)",
        failures.join("\n")
    );
}

fn python3() -> Option<()> {
    let ok = Command::new("python3")
        .args(["-c", "import email, json"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(());
    }
    let msg = "python3 with the email package is not installed: the golden DSNs are not checked by an independent parser";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg} (CI=true: a missing peer is a failure)");
    }
    // Past libtest's capture (which takes `eprintln!`), so the skip shows in the test run.
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("SKIPPED python_email_reads_every_golden_file: {msg}\n").as_bytes(),
    );
    None
}

fn map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("<not a string>").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn owned(v: &[(&str, &str)]) -> BTreeMap<String, String> {
    v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn python_email_reads_every_golden_file() {
    if python3().is_none() {
        return;
    }
    let cases = cases();
    let files: Vec<PathBuf> = cases
        .iter()
        .map(|c| golden_dir().join(format!("{}.eml", c.name)))
        .collect();
    let out = Command::new("python3")
        .arg(golden_dir().join("check_dsn.py"))
        .args(&files)
        .output()
        .expect("run check_dsn.py");
    assert!(
        out.status.success(),
        "check_dsn.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON from check_dsn.py");
    assert_eq!(seen.len(), cases.len());
    for (c, s) in cases.iter().zip(&seen) {
        let e = &c.expect;
        let n = c.name;
        let str_of = |k: &str| s[k].as_str().map(String::from);
        assert_eq!(s["content_type"], "multipart/report", "{n}");
        assert_eq!(s["report_type"], "delivery-status", "{n}");
        assert_eq!(s["defects"], Value::Array(vec![]), "{n}: MIME defects");
        assert_eq!(str_of("subject").as_deref(), Some(e.subject), "{n}");
        assert_eq!(str_of("to").as_deref(), Some("alice@sender.example"), "{n}");
        assert_eq!(
            str_of("from").as_deref(),
            Some("Mail Delivery System <postmaster@odmr.example.net>"),
            "{n}"
        );
        assert_eq!(str_of("auto_submitted").as_deref(), Some("auto-replied"), "{n}");
        assert_eq!(
            str_of("message_id"),
            Some(format!("<{}>", c.composed.message_id)),
            "{n}"
        );
        let parts: Vec<&str> = s["parts"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(parts, e.parts, "{n}");
        assert_eq!(
            s["status_cte"], "7bit",
            "{n}: message/delivery-status must be 7bit"
        );
        assert_eq!(str_of("returned_cte").as_deref(), e.returned_cte, "{n}");
        assert_eq!(
            map(&s["per_message"]),
            owned(&e.per_message),
            "{n}: per-message fields"
        );
        let rcpts: Vec<BTreeMap<String, String>> =
            s["recipients"].as_array().unwrap().iter().map(map).collect();
        let want: Vec<BTreeMap<String, String>> = e.recipients.iter().map(|r| owned(r)).collect();
        assert_eq!(rcpts, want, "{n}: per-recipient fields");
        assert_eq!(s["returned"]["subject"].as_str(), e.returned_subject, "{n}");
        let body = s["returned"]["body"].as_str();
        if e.returned_body {
            assert!(
                body.is_some_and(|b| b.contains("Hello Bob") || b.contains("Sch\u{f6}ne Gr\u{fc}\u{df}e")),
                "{n}: {body:?}"
            );
        } else {
            assert!(body.is_none(), "{n}");
        }
        // The text is wrapped: compare with whitespace runs collapsed.
        let squash = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
        let text = s["text"].as_str().unwrap_or_default();
        for t in e.text {
            assert!(
                squash(text).contains(&squash(t)),
                "{n}: {t:?} not in the text part:\n{text}"
            );
        }
    }
}
