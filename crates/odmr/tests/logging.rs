//! The debug transcript (`ODMR_LOG=debug`): each session's SMTP and ODMR dialogue, commands and
//! replies, on the provider and on the customer, through the turnaround; never a password, an
//! AUTH exchange or a message body.

#[path = "peers/client_util.rs"]
mod client_util;
mod common;
#[path = "peers/interop_util.rs"]
mod interop_util;

use base64::Engine;
use client_util::{client_once, maildir_in, ProviderCfg};
use common::{send_mail, Line, Server};

const PASSWORD: &str = "s3cret-Passw0rd";
const BODY_SECRET: &str = "TOP-SECRET-BODY-LINE";

#[test]
fn debug_logs_show_the_dialogue_of_both_sides_but_no_secret() {
    let server = Server::start();
    server.account("acme", PASSWORD, &["example.org"]);

    // AUTH on the MX: PLAIN with its initial response, and a CRAM-MD5 exchange.
    let plain = base64::engine::general_purpose::STANDARD.encode(format!("\0acme\0{PASSWORD}"));
    let mut c = Line::connect(server.smtp);
    assert!(c.reply().starts_with("220"));
    assert!(c.ask("EHLO sender.test").starts_with("250"));
    let refused = c.ask(&format!("AUTH PLAIN {plain}"));
    assert!(!refused.starts_with("235"), "PLAIN without TLS: {refused}");
    assert!(c.ask("AUTH CRAM-MD5").starts_with("334"));
    let cram = base64::engine::general_purpose::STANDARD.encode(format!("acme {PASSWORD}"));
    assert!(c.ask(&cram).starts_with("535"));
    c.ask("QUIT");

    let reply = send_mail(
        server.smtp,
        "alice@sender.test",
        &["bob@example.org"],
        &format!("Subject: hello\r\n\r\n{BODY_SECRET}\r\n"),
    );
    assert!(reply.starts_with("250"), "{reply}");

    let dir = tempfile::tempdir().unwrap();
    let cfg = ProviderCfg::new(
        server.odmr.port(),
        "acme",
        PASSWORD,
        &["example.org"],
        maildir_in(dir.path()),
    )
    .write(dir.path());
    let once = client_once(&cfg);
    assert_eq!(once.code, Some(0), "{}", once.stderr);
    // The server writes its log from a thread of its own: wait for the session's last line.
    assert!(
        common::wait_until(5, || server.log().matches("C: QUIT").count() >= 3),
        "{}",
        server.log()
    );

    let provider = server.log();
    let customer = once.stderr;
    for (side, log, wanted) in [
        (
            "provider",
            &provider,
            &[
                "S: 220 odmr.test",
                "C: EHLO sender.test",
                "C: AUTH PLAIN …",
                "C: AUTH CRAM-MD5 …",
                "S: 334 …",
                "C: … (AUTH response not shown)",
                "C: MAIL FROM:<alice@sender.test>",
                "C: RCPT TO:<bob@example.org>",
                "octets of message data)",
                "C: ATRN example.org",
                "ATRN granted: the roles swap",
                // After the turnaround the provider is the client.
                "C: EHLO odmr.test",
                "C: QUIT",
            ][..],
        ),
        (
            "customer",
            &customer,
            &[
                "S: 220 odmr.test",
                "C: ATRN example.org",
                "ATRN granted: the roles swap",
                "S: 220 customer.test",
                "C: EHLO odmr.test",
                "C: MAIL FROM:<alice@sender.test>",
                "octets of message data)",
                "S: 221",
            ][..],
        ),
    ] {
        for w in wanted {
            assert!(log.contains(w), "the {side}'s debug log lacks {w:?}:\n{log}");
        }
        for secret in [PASSWORD, BODY_SECRET, plain.as_str(), cram.as_str()] {
            assert!(
                !log.contains(secret),
                "the {side}'s debug log shows {secret:?}:\n{log}"
            );
        }
    }
}
