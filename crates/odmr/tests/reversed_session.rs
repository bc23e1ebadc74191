//! The reversed session (RFC 2645 §5.2.1, §5.3) against a scripted customer:
//! `tests/peers/odmr_customer.py` authenticates with smtplib's CRAM-MD5, sends ATRN and, after the
//! `250`, plays the customer's SMTP server on the same connection as its flags say. It reports as
//! JSON what it received: the ATRN reply, EHLO/HELO, every command (with how many bytes were
//! already waiting behind it, which shows pipelining) and every message with its envelope and
//! dot-unstuffed body. Mail goes in through the real MX listener; the outcome is read back with
//! `odmr queue list --json`.

mod common;

use base64::Engine;
use common::customer::Running;
use common::{send_mail, Line, Server};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

const PW: &str = "s3cret-pw";

/// Run the customer (common::customer) to the end; it must exit 0 (it found nothing unexpected).
fn customer(py: &Path, server: &Server, user: &str, domains: Option<&str>, flags: &[&str]) -> Value {
    common::customer::run(py, server, user, PW, domains, flags)
}

fn mail(server: &Server, from: &str, to: &[&str], body: &str) {
    let r = send_mail(server.smtp, from, to, body);
    assert!(r.starts_with("250"), "MX refused the message: {r}");
}

/// The provider prepends exactly one `Received:` header; what follows must be the message as sent.
fn after_received(body: &str) -> &str {
    assert!(
        body.starts_with("Received: from sender.test "),
        "no Received: first: {body:?}"
    );
    let mut pos = body.find("\r\n").expect("header line") + 2;
    while body[pos..].starts_with('\t') || body[pos..].starts_with(' ') {
        pos += body[pos..].find("\r\n").expect("folded line") + 2;
    }
    &body[pos..]
}

fn body_bytes(m: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(m["body_b64"].as_str().expect("body"))
        .unwrap()
}

fn command_lines(report: &Value) -> Vec<&str> {
    report["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["line"].as_str().unwrap())
        .collect()
}

fn messages(report: &Value) -> &Vec<Value> {
    report["messages"].as_array().unwrap()
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect()
}

fn rcpt_commands(m: &Value) -> Vec<(&str, &str)> {
    m["rcpt_commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["address"].as_str().unwrap(), r["reply"].as_str().unwrap()))
        .collect()
}

fn states(server: &Server) -> Vec<(String, String, String)> {
    server.recipient_states()
}

fn st(addr: &str, state: &str, reply: &str) -> (String, String, String) {
    (addr.to_string(), state.to_string(), reply.to_string())
}

/// Number of finished reversed sessions in the server log.
fn finished_sessions(server: &Server) -> usize {
    server.log().matches("delivery session finished").count()
}

/// Wait until the server has finished `n` reversed sessions (it notices a dropped connection
/// asynchronously).
fn wait_sessions(server: &Server, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while finished_sessions(server) < n {
        assert!(
            Instant::now() < deadline,
            "session {n} did not finish; log:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

const BODY1: &str = "From: alice@sender.test\r\nTo: bob@example.org\r\nSubject: one\r\n\r\nFirst message.\r\n.leading dot\r\n..two dots\r\n.\r\nlast line\r\n";
const BODY2: &str = "Subject: two\r\n\r\nSecond message.\r\n";
const BODY3: &str = "Subject: three\r\n\r\n. a dot and a space\r\n\r\nafter an empty line\r\n";

#[test]
fn pipelined_delivery_of_three_messages_then_no_mail() {
    let Some(py) = common::python() else { return };
    let server = Server::start();
    server.account("acme", PW, &["example.org"]);
    mail(&server, "alice@sender.test", &["bob@example.org"], BODY1);
    mail(
        &server,
        "carol@sender.test",
        &["dave@example.org", "erin@example.org"],
        BODY2,
    );
    mail(&server, "", &["bob@example.org"], BODY3);

    let r = customer(&py, &server, "acme", Some("example.org"), &[]);
    assert_eq!(r["atrn_code"], 250, "{r}");
    assert_eq!(r["ehlo"], "EHLO odmr.test");
    assert_eq!(
        command_lines(&r),
        [
            "EHLO odmr.test",
            "MAIL FROM:<alice@sender.test>",
            "RCPT TO:<bob@example.org>",
            "DATA",
            "MAIL FROM:<carol@sender.test>",
            "RCPT TO:<dave@example.org>",
            "RCPT TO:<erin@example.org>",
            "DATA",
            "MAIL FROM:<>",
            "RCPT TO:<bob@example.org>",
            "DATA",
            "QUIT",
        ]
    );
    // PIPELINING was offered: each MAIL arrived with its RCPTs and DATA behind it in one write.
    for c in r["commands"].as_array().unwrap() {
        if c["line"].as_str().unwrap().starts_with("MAIL") {
            assert!(c["ahead"].as_u64().unwrap() > 0, "MAIL not pipelined: {r}");
        }
    }
    let m = messages(&r);
    assert_eq!(m.len(), 3);
    let want = [
        ("alice@sender.test", vec!["bob@example.org"], BODY1),
        (
            "carol@sender.test",
            vec!["dave@example.org", "erin@example.org"],
            BODY2,
        ),
        ("", vec!["bob@example.org"], BODY3),
    ];
    for (m, (from, rcpts, body)) in m.iter().zip(want) {
        assert_eq!(m["mail_from"], from);
        // 7-bit mail, no SIZE offered: no parameters at all.
        assert_eq!(m["mail_params"], "");
        assert_eq!(strs(&m["rcpts"]), rcpts);
        assert_eq!(m["complete"], true);
        assert_eq!(after_received(m["body_latin1"].as_str().unwrap()), body);
    }
    assert_eq!(r["quit"], true);
    assert_eq!(r["provider_closed"], true);
    assert_eq!(server.queue(), serde_json::json!([]));

    let again = customer(&py, &server, "acme", Some("example.org"), &[]);
    assert_eq!(again["atrn_code"], 453, "{again}");
    assert_eq!(again["commands"], serde_json::json!([]));
}

#[test]
fn without_pipelining_and_with_ehlo_refused_commands_go_one_at_a_time() {
    let Some(py) = common::python() else { return };
    let server = Server::start();
    server.account("acme", PW, &["example.org"]);

    // A customer that does not offer PIPELINING: every command waits for the previous reply.
    mail(
        &server,
        "alice@sender.test",
        &["p@example.org", "q@example.org"],
        BODY2,
    );
    let r = customer(&py, &server, "acme", Some("example.org"), &["--no-pipelining"]);
    assert_eq!(r["atrn_code"], 250, "{r}");
    assert_eq!(
        command_lines(&r),
        [
            "EHLO odmr.test",
            "MAIL FROM:<alice@sender.test>",
            "RCPT TO:<p@example.org>",
            "RCPT TO:<q@example.org>",
            "DATA",
            "QUIT"
        ]
    );
    for c in r["commands"].as_array().unwrap() {
        assert_eq!(c["ahead"], 0, "a command was sent before the previous reply: {r}");
    }
    assert_eq!(
        strs(&messages(&r)[0]["rcpts"]),
        ["p@example.org", "q@example.org"]
    );
    assert_eq!(
        after_received(messages(&r)[0]["body_latin1"].as_str().unwrap()),
        BODY2
    );
    assert_eq!(server.queue(), serde_json::json!([]));

    // A customer whose MTA does not know EHLO: the provider falls back to HELO, and with HELO
    // there are no extensions, so no parameters and no pipelining.
    mail(
        &server,
        "carol@sender.test",
        &["p@example.org", "q@example.org"],
        BODY3,
    );
    let r = customer(&py, &server, "acme", Some("example.org"), &["--reject-ehlo"]);
    assert_eq!(r["ehlo"], "EHLO odmr.test");
    assert_eq!(r["helo"], "HELO odmr.test");
    assert_eq!(
        command_lines(&r),
        [
            "EHLO odmr.test",
            "HELO odmr.test",
            "MAIL FROM:<carol@sender.test>",
            "RCPT TO:<p@example.org>",
            "RCPT TO:<q@example.org>",
            "DATA",
            "QUIT"
        ]
    );
    for c in r["commands"].as_array().unwrap() {
        assert_eq!(c["ahead"], 0, "a command was sent before the previous reply: {r}");
    }
    let m = &messages(&r)[0];
    assert_eq!(m["mail_params"], "");
    assert_eq!(after_received(m["body_latin1"].as_str().unwrap()), BODY3);
    assert_eq!(r["quit"], true);
    assert_eq!(server.queue(), serde_json::json!([]));
}

#[test]
fn each_recipient_gets_its_own_outcome_and_only_deferred_ones_are_retried() {
    let Some(py) = common::python() else { return };
    let server = Server::start();
    server.account("acme", PW, &["example.org"]);
    mail(
        &server,
        "alice@sender.test",
        &["x@example.org", "y@example.org", "z@example.org"],
        BODY2,
    );

    let r = customer(
        &py,
        &server,
        "acme",
        Some("example.org"),
        &[
            "--rcpt-reply",
            "y@example.org=450 4.2.1 Mailbox busy, try later",
            "--rcpt-reply",
            "z@example.org=550 5.1.1 No such user",
        ],
    );
    let m = messages(&r);
    assert_eq!(m.len(), 1, "{r}");
    assert_eq!(
        rcpt_commands(&m[0]),
        [
            ("x@example.org", "250 2.1.5 Recipient OK"),
            ("y@example.org", "450 4.2.1 Mailbox busy, try later"),
            ("z@example.org", "550 5.1.1 No such user"),
        ]
    );
    assert_eq!(strs(&m[0]["rcpts"]), ["x@example.org"]);
    assert_eq!(m[0]["complete"], true);
    assert_eq!(after_received(m[0]["body_latin1"].as_str().unwrap()), BODY2);
    assert_eq!(
        states(&server),
        [
            st("x@example.org", "delivered", "250 2.0.0 OK queued"),
            st("y@example.org", "queued", "450 4.2.1 Mailbox busy, try later"),
            st("z@example.org", "failed", "550 5.1.1 No such user"),
        ]
    );
    assert_eq!(server.queue().as_array().unwrap().len(), 1);

    // Next time the customer takes y; x was delivered and z failed, so neither is sent again.
    let r = customer(&py, &server, "acme", Some("example.org"), &[]);
    assert_eq!(r["atrn_code"], 250, "{r}");
    let m = messages(&r);
    assert_eq!(m.len(), 1, "{r}");
    assert_eq!(
        rcpt_commands(&m[0]),
        [("y@example.org", "250 2.1.5 Recipient OK")]
    );
    assert_eq!(after_received(m[0]["body_latin1"].as_str().unwrap()), BODY2);
    assert_eq!(
        states(&server),
        [
            st("x@example.org", "delivered", "250 2.0.0 OK queued"),
            st("y@example.org", "delivered", "250 2.0.0 OK queued"),
            st("z@example.org", "failed", "550 5.1.1 No such user"),
        ]
    );
    // Only the failed recipient is left, and it is not mail to fetch.
    let r = customer(&py, &server, "acme", Some("example.org"), &[]);
    assert_eq!(r["atrn_code"], 453, "{r}");
}

#[test]
fn the_reply_to_the_final_dot_decides_for_every_recipient() {
    let Some(py) = common::python() else { return };
    let server = Server::start();
    server.account("acme", PW, &["example.org"]);
    mail(
        &server,
        "alice@sender.test",
        &["p@example.org", "q@example.org"],
        BODY1,
    );

    // 4xx after the body: both recipients stay queued with that reply.
    let r = customer(
        &py,
        &server,
        "acme",
        Some("example.org"),
        &["--data-reply", "451 4.3.0 Disk full, try later"],
    );
    let m = messages(&r);
    assert_eq!(m.len(), 1, "{r}");
    assert_eq!(strs(&m[0]["rcpts"]), ["p@example.org", "q@example.org"]);
    assert_eq!(m[0]["complete"], true);
    assert_eq!(r["quit"], true);
    assert_eq!(
        states(&server),
        [
            st("p@example.org", "queued", "451 4.3.0 Disk full, try later"),
            st("q@example.org", "queued", "451 4.3.0 Disk full, try later"),
        ]
    );

    // 5xx after the body: both fail, with that reply.
    let r = customer(
        &py,
        &server,
        "acme",
        Some("example.org"),
        &["--data-reply", "554 5.6.0 Content rejected"],
    );
    let m = messages(&r);
    assert_eq!(m.len(), 1, "{r}");
    assert_eq!(strs(&m[0]["rcpts"]), ["p@example.org", "q@example.org"]);
    assert_eq!(after_received(m[0]["body_latin1"].as_str().unwrap()), BODY1);
    assert_eq!(
        states(&server),
        [
            st("p@example.org", "failed", "554 5.6.0 Content rejected"),
            st("q@example.org", "failed", "554 5.6.0 Content rejected"),
        ]
    );
    let r = customer(&py, &server, "acme", Some("example.org"), &[]);
    assert_eq!(r["atrn_code"], 453, "{r}");
}

#[test]
fn only_the_granted_domains_recipients_are_delivered() {
    let Some(py) = common::python() else { return };
    let server = Server::start();
    server.account("acme", PW, &["example.org", "example.net"]);
    server.account("other", PW, &["other.test"]);
    mail(
        &server,
        "alice@sender.test",
        &["a@example.org", "b@example.net", "c@other.test"],
        BODY2,
    );

    // ATRN example.org: only a@example.org, although the account also owns example.net.
    let r = customer(&py, &server, "acme", Some("example.org"), &[]);
    let m = messages(&r);
    assert_eq!(m.len(), 1, "{r}");
    assert_eq!(
        rcpt_commands(&m[0]),
        [("a@example.org", "250 2.1.5 Recipient OK")]
    );
    assert_eq!(after_received(m[0]["body_latin1"].as_str().unwrap()), BODY2);
    assert_eq!(
        states(&server),
        [
            st("a@example.org", "delivered", "250 2.0.0 OK queued"),
            st("b@example.net", "queued", ""),
            st("c@other.test", "queued", ""),
        ]
    );

    // A bare ATRN means all of the account's domains: b@example.net, never c@other.test.
    let r = customer(&py, &server, "acme", None, &[]);
    assert_eq!(r["atrn_command"], "ATRN");
    let m = messages(&r);
    assert_eq!(m.len(), 1, "{r}");
    assert_eq!(
        rcpt_commands(&m[0]),
        [("b@example.net", "250 2.1.5 Recipient OK")]
    );
    assert_eq!(
        states(&server),
        [
            st("a@example.org", "delivered", "250 2.0.0 OK queued"),
            st("b@example.net", "delivered", "250 2.0.0 OK queued"),
            st("c@other.test", "queued", ""),
        ]
    );

    // The other account fetches its own recipient; then the message is gone.
    let r = customer(&py, &server, "other", None, &[]);
    let m = messages(&r);
    assert_eq!(rcpt_commands(&m[0]), [("c@other.test", "250 2.1.5 Recipient OK")]);
    assert_eq!(after_received(m[0]["body_latin1"].as_str().unwrap()), BODY2);
    assert_eq!(server.queue(), serde_json::json!([]));
}

#[test]
fn a_second_atrn_for_a_domain_being_delivered_gets_451() {
    let Some(py) = common::python() else { return };
    let server = Server::start();
    server.account("acme", PW, &["example.org", "example.net"]);
    for i in 0..3 {
        mail(
            &server,
            "alice@sender.test",
            &[&format!("u{i}@example.org")],
            BODY2,
        );
    }
    mail(&server, "alice@sender.test", &["v@example.net"], BODY3);

    // Customer 1 gets example.org and sits on the lease for 4 s before greeting.
    let started = Instant::now();
    let (first, atrn) = Running::start(&py, &server, "acme", PW, Some("example.org"), &["--hold", "4"]);
    assert!(atrn.starts_with("250"), "{atrn}");

    // Meanwhile: the same domain, and a list overlapping it, are busy.
    let r = customer(&py, &server, "acme", Some("example.org"), &[]);
    assert_eq!(r["atrn_code"], 451, "{r}");
    assert_eq!(r["commands"], serde_json::json!([]));
    let r = customer(&py, &server, "acme", Some("example.net,example.org"), &[]);
    assert_eq!(r["atrn_code"], 451, "{r}");
    assert_eq!(r["commands"], serde_json::json!([]));
    // The lease is per domain: example.net alone is free and delivered now.
    let net = customer(&py, &server, "acme", Some("example.net"), &[]);
    assert_eq!(net["atrn_code"], 250, "{net}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the probes outlasted customer 1's hold; the test proves nothing"
    );

    let first = first.finish();
    assert_eq!(first["quit"], true);
    let mut seen: Vec<String> = [&first, &net]
        .iter()
        .flat_map(|r| messages(r).iter())
        .flat_map(|m| {
            strs(&m["rcpts"])
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            "u0@example.org",
            "u1@example.org",
            "u2@example.org",
            "v@example.net"
        ]
    );
    assert_eq!(
        messages(&net)
            .iter()
            .map(|m| m["rcpts"][0].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["v@example.net"]
    );
    assert_eq!(server.queue(), serde_json::json!([]));
}

#[test]
fn a_connection_dropped_inside_data_leaves_the_message_queued() {
    let Some(py) = common::python() else { return };
    let server = Server::start();
    server.account("acme", PW, &["example.org"]);
    let body: String = (0..60)
        .map(|i| format!("line {i:03} of a message that is cut off in the middle\r\n"))
        .collect();
    mail(&server, "alice@sender.test", &["bob@example.org"], &body);

    let r = customer(
        &py,
        &server,
        "acme",
        Some("example.org"),
        &["--drop-after-data-bytes", "300"],
    );
    assert_eq!(r["dropped"], true, "{r}");
    let m = messages(&r);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0]["complete"], false);
    assert!(m[0]["body_len"].as_u64().unwrap() < body.len() as u64);
    wait_sessions(&server, 1);
    assert_eq!(states(&server), [st("bob@example.org", "queued", "")]);

    // The next ATRN delivers it, whole. (The provider releases the lease just after it notices
    // the lost connection, so an ATRN in that instant may still see 451; it must not stay so.)
    let deadline = Instant::now() + Duration::from_secs(5);
    let r = loop {
        let r = customer(&py, &server, "acme", Some("example.org"), &[]);
        if r["atrn_code"] != 451 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(r["atrn_code"], 250, "{r}");
    let m = messages(&r);
    assert_eq!(m.len(), 1);
    assert_eq!(after_received(m[0]["body_latin1"].as_str().unwrap()), body);
    assert_eq!(server.queue(), serde_json::json!([]));
}

#[test]
fn a_customer_that_never_greets_is_given_up_and_the_lease_released() {
    let Some(py) = common::python() else { return };
    let server = Server::start_with("", "reply_timeout = \"2s\"");
    server.account("acme", PW, &["example.org"]);
    mail(&server, "alice@sender.test", &["bob@example.org"], BODY1);

    let r = customer(
        &py,
        &server,
        "acme",
        Some("example.org"),
        &["--no-greeting", "--timeout", "15"],
    );
    assert_eq!(r["atrn_code"], 250, "{r}");
    assert_eq!(r["provider_closed"], true);
    let after = r["closed_after_seconds"].as_f64().unwrap();
    assert!(
        (1.5..8.0).contains(&after),
        "closed after {after} s with reply_timeout 2s"
    );
    assert_eq!(r["commands"], serde_json::json!([]));
    assert_eq!(states(&server), [st("bob@example.org", "queued", "")]);

    // The connection closed only after the session ended: the lease is free at once.
    let r = customer(&py, &server, "acme", Some("example.org"), &[]);
    assert_eq!(r["atrn_code"], 250, "{r}");
    assert_eq!(
        after_received(messages(&r)[0]["body_latin1"].as_str().unwrap()),
        BODY1
    );
    assert_eq!(server.queue(), serde_json::json!([]));
}

#[test]
fn a_greeting_that_arrives_with_the_atrn_is_not_lost() {
    let Some(py) = common::python() else { return };
    let server = Server::start();
    server.account("acme", PW, &["example.org"]);
    mail(&server, "alice@sender.test", &["bob@example.org"], BODY1);
    mail(&server, "carol@sender.test", &["dave@example.org"], BODY3);

    let r = customer(
        &py,
        &server,
        "acme",
        Some("example.org"),
        &["--greeting-with-atrn"],
    );
    assert_eq!(r["atrn_code"], 250, "{r}");
    assert_eq!(
        command_lines(&r),
        [
            "EHLO odmr.test",
            "MAIL FROM:<alice@sender.test>",
            "RCPT TO:<bob@example.org>",
            "DATA",
            "MAIL FROM:<carol@sender.test>",
            "RCPT TO:<dave@example.org>",
            "DATA",
            "QUIT"
        ]
    );
    assert_eq!(
        after_received(messages(&r)[0]["body_latin1"].as_str().unwrap()),
        BODY1
    );
    assert_eq!(
        after_received(messages(&r)[1]["body_latin1"].as_str().unwrap()),
        BODY3
    );
    assert_eq!(server.queue(), serde_json::json!([]));
}

#[test]
fn eight_bit_mail_waits_for_a_customer_with_8bitmime() {
    let Some(py) = common::python() else { return };
    let server = Server::start();
    server.account("acme", PW, &["example.org"]);
    let utf8 = "Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße aus Köln, ½ € und ✓.\r\n";
    mail(&server, "alice@sender.test", &["bob@example.org"], utf8);
    // Declared BODY=8BITMIME with 7-bit content: the declaration alone makes it 8-bit mail.
    let mut c = Line::connect(server.smtp);
    assert!(c.reply().starts_with("220"));
    assert!(c.ask("EHLO sender.test").starts_with("250"));
    assert!(c
        .ask("MAIL FROM:<carol@sender.test> BODY=8BITMIME")
        .starts_with("250"));
    assert!(c.ask("RCPT TO:<dave@example.org>").starts_with("250"));
    assert!(c.ask("DATA").starts_with("354"));
    c.send(format!("{BODY2}.\r\n").as_bytes());
    let r = c.reply();
    assert!(r.starts_with("250"), "{r}");
    c.ask("QUIT");

    // No 8BITMIME: nothing is sent, both wait with the reason recorded.
    let r = customer(&py, &server, "acme", Some("example.org"), &["--no-8bitmime"]);
    assert_eq!(r["atrn_code"], 250, "{r}");
    assert_eq!(command_lines(&r), ["EHLO odmr.test", "QUIT"]);
    let held = "450 4.6.3 8-bit message held: the customer does not offer 8BITMIME";
    assert_eq!(
        states(&server),
        [
            st("bob@example.org", "queued", held),
            st("dave@example.org", "queued", held)
        ]
    );

    // With 8BITMIME: BODY=8BITMIME on MAIL and the octets arrive untouched.
    let r = customer(&py, &server, "acme", Some("example.org"), &[]);
    let m = messages(&r);
    assert_eq!(m.len(), 2, "{r}");
    assert_eq!(m[0]["mail_from"], "alice@sender.test");
    assert_eq!(m[0]["mail_params"], "BODY=8BITMIME");
    let got = body_bytes(&m[0]);
    let got = std::str::from_utf8(&got).expect("UTF-8 arrived intact");
    assert_eq!(after_received(got), utf8);
    assert_eq!(m[1]["mail_from"], "carol@sender.test");
    assert_eq!(m[1]["mail_params"], "BODY=8BITMIME");
    assert_eq!(after_received(m[1]["body_latin1"].as_str().unwrap()), BODY2);
    assert_eq!(server.queue(), serde_json::json!([]));
}

#[test]
fn a_message_over_the_customers_size_fails_and_the_rest_is_delivered() {
    let Some(py) = common::python() else { return };
    let server = Server::start();
    server.account("acme", PW, &["example.org"]);
    let big = format!(
        "Subject: big\r\n\r\n{}",
        format!("{}\r\n", "0123456789".repeat(8)).repeat(61)
    );
    assert!(big.len() > 5000, "{}", big.len());
    mail(&server, "alice@sender.test", &["big@example.org"], &big);
    mail(&server, "carol@sender.test", &["small@example.org"], BODY2);
    let q = server.queue();
    let sizes: Vec<u64> = q
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["size"].as_u64().unwrap())
        .collect();
    assert!(sizes[0] > 1000 && sizes[1] < 1000, "{sizes:?}");

    let r = customer(&py, &server, "acme", Some("example.org"), &["--size", "1000"]);
    assert_eq!(r["atrn_code"], 250, "{r}");
    // The big one is never offered; the small one carries its size.
    assert_eq!(
        command_lines(&r),
        [
            "EHLO odmr.test",
            &format!("MAIL FROM:<carol@sender.test> SIZE={}", sizes[1]),
            "RCPT TO:<small@example.org>",
            "DATA",
            "QUIT"
        ]
    );
    let m = &messages(&r)[0];
    assert_eq!(after_received(m["body_latin1"].as_str().unwrap()), BODY2);
    assert_eq!(
        m["body_len"].as_u64().unwrap(),
        sizes[1],
        "SIZE= must be the size of what is sent"
    );
    let states = states(&server);
    assert_eq!(states.len(), 1, "{states:?}");
    assert_eq!(
        (states[0].0.as_str(), states[0].1.as_str()),
        ("big@example.org", "failed")
    );
    assert_eq!(
        states[0].2,
        format!(
            "552 5.3.4 message of {} octets exceeds the customer's SIZE limit of 1000",
            sizes[0]
        )
    );
}
