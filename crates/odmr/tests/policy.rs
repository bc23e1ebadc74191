//! Per-domain policy at the MX, with real senders (swaks, Python's smtplib): recipient lists
//! (`550 5.1.1` at RCPT for an unknown local part, so nothing is accepted that would later
//! bounce to a possibly forged sender) and quotas (`452 4.2.2` at RCPT when the domain already
//! holds too many messages or bytes, and after DATA when this message would pass the byte
//! quota). The policy is set with `odmr domain set`, as an operator would.

mod common;
#[path = "peers/interop_util.rs"]
mod interop_util;

use common::{send_mail, Line, Server};

/// These tests change a domain's policy and expect the next RCPT to follow it, so the MX asks
/// the store at every RCPT (`lookup_cache = "0s"`; the cache has tests of its own).
fn provider() -> Server {
    let s = Server::start_with("lookup_cache = \"0s\"", "");
    s.account("acme", "secret-pw", &["example.org", "other.example"]);
    s
}

fn domain_set(server: &Server, args: &[&str]) {
    let mut all = vec!["domain", "set"];
    all.extend_from_slice(args);
    let (st, out, err) = server.cli(&all, None);
    assert_eq!(st, 0, "domain set {args:?}: {out}{err}");
}

/// RCPT's reply in a fresh session, after EHLO and MAIL.
fn rcpt_reply(server: &Server, rcpt: &str) -> String {
    let mut c = Line::connect(server.smtp);
    assert!(c.reply().starts_with("220"));
    assert!(c.ask("EHLO sender.test").starts_with("250"));
    assert!(c.ask("MAIL FROM:<a@sender.test>").starts_with("250"));
    let r = c.ask(&format!("RCPT TO:<{rcpt}>"));
    c.ask("QUIT");
    r
}

fn body(size: usize) -> String {
    let mut b = String::from("Subject: sized\n\n");
    while b.len() < size {
        b.push_str("0123456789012345678901234567890123456789012345678901234567890123456789\n");
    }
    b
}

#[test]
fn unknown_local_parts_are_refused_at_rcpt() {
    let server = provider();
    domain_set(&server, &["example.org", "--recipients", "bob,Alice"]);
    assert!(rcpt_reply(&server, "bob@example.org").starts_with("250"));
    assert!(
        rcpt_reply(&server, "ALICE@Example.org").starts_with("250"),
        "case-insensitive"
    );
    let r = rcpt_reply(&server, "mallory@example.org");
    assert!(r.starts_with("550 5.1.1"), "{r}");
    // RFC 5321 §4.5.1: postmaster is accepted whether listed or not.
    assert!(rcpt_reply(&server, "PostMaster@example.org").starts_with("250"));
    // Other domains stay catch-all.
    assert!(rcpt_reply(&server, "anyone@other.example").starts_with("250"));

    // swaks, a real sender, sees the refusal too and nothing is queued for it.
    if let Some(run) = interop_util::swaks(&[
        "--server",
        &server.smtp.to_string(),
        "--from",
        "a@sender.test",
        "--to",
        "mallory@example.org",
    ]) {
        assert!(run.all().contains("550 5.1.1"), "{}", run.all());
    }
    assert!(server.queue().as_array().unwrap().is_empty());

    // Back to catch-all.
    domain_set(&server, &["example.org", "--catch-all"]);
    assert!(rcpt_reply(&server, "mallory@example.org").starts_with("250"));
}

#[test]
fn message_quota_answers_452_at_rcpt() {
    let server = provider();
    domain_set(&server, &["example.org", "--max-messages", "2"]);
    for i in 0..2 {
        let r = send_mail(
            server.smtp,
            "a@sender.test",
            &[&format!("u{i}@example.org")],
            "Subject: q\n\nx\n",
        );
        assert!(r.starts_with("250"), "{r}");
    }
    let r = rcpt_reply(&server, "u3@example.org");
    assert!(r.starts_with("452 4.2.2"), "{r}");
    assert!(
        rcpt_reply(&server, "u3@other.example").starts_with("250"),
        "per domain"
    );
    // Raising the quota takes effect at once (no restart).
    domain_set(&server, &["example.org", "--max-messages", "none"]);
    assert!(rcpt_reply(&server, "u3@example.org").starts_with("250"));
}

#[test]
fn byte_quota_answers_452_after_data_then_at_rcpt() {
    let server = provider();
    domain_set(&server, &["example.org", "--max-bytes", "5k"]);
    let r = send_mail(server.smtp, "a@sender.test", &["bob@example.org"], &body(3000));
    assert!(r.starts_with("250"), "{r}");
    // This one would take the domain over 5 KiB: refused after DATA, not queued.
    let r = send_mail(server.smtp, "a@sender.test", &["bob@example.org"], &body(3000));
    assert!(r.starts_with("452 4.2.2"), "{r}");
    assert_eq!(server.queue().as_array().unwrap().len(), 1);
    // A small one still fits; then the domain is full and RCPT says so.
    let r = send_mail(server.smtp, "a@sender.test", &["bob@example.org"], &body(1500));
    assert!(r.starts_with("250"), "{r}");
    domain_set(&server, &["example.org", "--max-bytes", "4500"]);
    let r = rcpt_reply(&server, "bob@example.org");
    assert!(r.starts_with("452 4.2.2"), "{r}");
}

/// RFC 5321 §4.5.1: `<Postmaster>` without a domain is the server's own postmaster,
/// postmaster@<hostname>: refused while nobody holds that name, and accepted and queued for the
/// account that does (how an operator receives it: host the server's name like a customer's
/// domain and fetch it with ATRN).
#[test]
fn bare_postmaster_is_the_server_names_postmaster() {
    let server = provider();
    let r = rcpt_reply(&server, "Postmaster");
    assert!(r.starts_with("550 5.7.1 <postmaster@odmr.test>"), "{r}");
    server.account("ops", "ops-pw", &["odmr.test"]);
    let mut c = Line::connect(server.smtp);
    c.reply();
    c.ask("EHLO sender.test");
    assert!(c.ask("MAIL FROM:<a@sender.test>").starts_with("250"));
    let r = c.ask("RCPT TO:<postmaster>");
    assert!(r.starts_with("250"), "{r}");
    assert!(c.ask("DATA").starts_with("354"));
    let r = c.ask("Subject: abuse report\r\n\r\nsee attached\r\n.");
    assert!(r.starts_with("250"), "{r}");
    c.ask("QUIT");
    let q = server.queue();
    assert_eq!(q[0]["recipients"][0]["address"], "postmaster@odmr.test", "{q}");
}

/// RFC 6531: a non-ASCII address needs SMTPUTF8 on MAIL (else a customer MTA without SMTPUTF8
/// would get it later and bounce it).
#[test]
fn non_ascii_addresses_need_smtputf8() {
    let server = provider();
    let mut c = Line::connect(server.smtp);
    c.reply();
    c.ask("EHLO sender.test");
    let r = c.ask("MAIL FROM:<j\u{f6}rg@sender.test>");
    assert!(r.starts_with("553 5.6.7"), "{r}");
    assert!(c.ask("MAIL FROM:<a@sender.test>").starts_with("250"));
    let r = c.ask("RCPT TO:<j\u{f6}rg@example.org>");
    assert!(r.starts_with("553 5.6.7"), "{r}");
    c.ask("RSET");
    assert!(c
        .ask("MAIL FROM:<j\u{f6}rg@sender.test> SMTPUTF8")
        .starts_with("250"));
    let r = c.ask("RCPT TO:<j\u{f6}rg@example.org>");
    assert!(r.starts_with("250"), "{r}");
    c.ask("QUIT");
}

/// A domain has one spelling (odmr_proto::domain::Domain): a recipient whose domain carries
/// the root dot and capitals is held under the domain ATRN names, and delivered by it, with its
/// address as the sender wrote it. (Held under `example.org.` it was never found by ATRN, and
/// went back to its sender when it expired.)
#[test]
fn a_root_dot_and_capitals_name_the_same_domain() {
    let Some(py) = common::python() else { return };
    let s = provider();
    let r = rcpt_reply(&s, "bob@Example.ORG.");
    assert!(r.starts_with("250"), "{r}");
    let reply = send_mail(
        s.smtp,
        "a@sender.test",
        &["bob@Example.ORG."],
        "Subject: dotted\r\n\r\nhi\r\n",
    );
    assert!(reply.starts_with("250"), "{reply}");
    let r = common::customer::run(&py, &s, "acme", "secret-pw", Some("example.org"), &[]);
    assert_eq!(r["atrn_code"], 250, "{r}");
    assert_eq!(common::customer::received_rcpts(&r), ["bob@Example.ORG."]);
    assert_eq!(s.queue(), serde_json::json!([]));
}
