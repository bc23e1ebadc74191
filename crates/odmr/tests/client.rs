//! `odmr client`, the customer, against a real `odmr server` (the provider) over real sockets:
//! mail goes into the provider's MX, `odmr client --once` (or the daemon) fetches it with
//! EHLO, AUTH CRAM-MD5 and ATRN, and hands it to each kind of sink — a real local MTA
//! (Postfix's `smtp-sink`, SMTP and LMTP, which dumps every transaction with its exact
//! envelope), a Maildir, a command, or a byte splice — or to a scripted local MTA
//! (`peers/client_local_mta.py`, aiosmtpd) that refuses as told.
//!
//! Every test checks what arrived where, byte for byte where it matters, and what is left in
//! the provider's queue; exit codes are checked as `--once` documents them (0 delivered, 1 no
//! mail, 2 error, 3 authentication failed).

#[path = "peers/client_util.rs"]
mod client_util;
mod common;
#[path = "peers/interop_util.rs"]
mod interop_util;

use client_util::*;
use common::{send_mail, Server};
use serde_json::json;
use std::path::Path;
use std::time::Duration;

const USER: &str = "acme";
const PASS: &str = "acme-secret";

/// A provider with the account `acme` owning example.org.
fn provider() -> Server {
    let s = Server::start();
    s.account(USER, PASS, &["example.org"]);
    s
}

fn config(server: &Server, deliver: String, dir: &Path) -> std::path::PathBuf {
    ProviderCfg::new(server.odmr.port(), USER, PASS, &["example.org"], deliver).write(dir)
}

fn inject(server: &Server, from: &str, to: &[&str], body: &str) {
    let r = send_mail(server.smtp, from, to, body);
    assert!(
        r.starts_with("250"),
        "the provider did not accept the message: {r}"
    );
}

/// After a delivering run: the provider's queue is empty, and a second `--once` finds no mail
/// (exit 1) and delivers nothing.
fn expect_drained(server: &Server, config: &Path) {
    assert_eq!(server.queue(), json!([]), "the provider still holds mail");
    let again = client_once(config);
    expect_code(&again, 1, "second poll");
    assert!(again.stderr.contains("no mail waiting"), "{}", again.stderr);
    assert!(!again.stderr.contains("message delivered"), "{}", again.stderr);
}

const M1: &str =
    "From: alice@sender.test\nTo: bob@example.org, carol@example.org\nSubject: one\n\nhello bob and carol\n";
const M2: &str = "From: MAILER-DAEMON@sender.test\nSubject: a bounce (null sender)\n\nbounce body\n";

// ----- 1. one test per sink -----

/// SMTP relay into smtp-sink: each message arrives once, with its exact envelope (null sender
/// included, both recipients in one transaction), our EHLO name, and the content behind the
/// two Received: fields (the customer's, then the provider's).
#[test]
fn smtp_sink_gets_exact_envelopes_and_content() {
    let Some(sink) = SmtpSink::start(false) else {
        return;
    };
    let server = provider();
    inject(
        &server,
        "alice@sender.test",
        &["bob@example.org", "carol@example.org"],
        M1,
    );
    inject(&server, "", &["postmaster@example.org"], M2);
    let dir = tempfile::tempdir().unwrap();
    let config = config(&server, smtp_to(sink.port), dir.path());

    let run = client_once(&config);
    expect_code(&run, 0, "delivering poll");
    let got = sink.messages();
    assert_eq!(got.len(), 2, "smtp-sink got {got:#?}\nclient:\n{}", run.stderr);
    let (null, alice) = (&got[0], &got[1]);
    assert_eq!(alice.mail, "<alice@sender.test>");
    assert_eq!(alice.rcpts, ["<bob@example.org>", "<carol@example.org>"]);
    assert_eq!(null.mail, "<>");
    assert_eq!(null.rcpts, ["<postmaster@example.org>"]);
    for d in &got {
        assert_eq!((d.helo.as_str(), d.proto.as_str()), (CUSTOMER, "ESMTP"));
    }
    assert_same_bytes(&strip_both_received(&alice.content), M1.as_bytes(), "message 1");
    assert_same_bytes(&strip_both_received(&null.content), M2.as_bytes(), "message 2");
    expect_drained(&server, &config);
    assert_eq!(sink.messages().len(), 2, "the second poll relayed something");
}

/// LMTP into `smtp-sink -L`: a two-recipient message arrives as two transactions of one
/// recipient each (the customer answers 452 to the second RCPT and the provider resends it),
/// each recipient exactly once, with the same content.
#[test]
fn lmtp_sink_gets_one_recipient_per_transaction_and_no_duplicates() {
    let Some(sink) = SmtpSink::start(true) else { return };
    let server = provider();
    inject(
        &server,
        "alice@sender.test",
        &["bob@example.org", "carol@example.org"],
        M1,
    );
    let dir = tempfile::tempdir().unwrap();
    let config = config(&server, lmtp_to(sink.port), dir.path());

    let run = client_once(&config);
    expect_code(&run, 0, "delivering poll");
    let got = sink.messages();
    assert_eq!(got.len(), 2, "smtp-sink -L got {got:#?}\nclient:\n{}", run.stderr);
    let rcpts: Vec<_> = got.iter().map(|d| d.rcpts.clone()).collect();
    assert_eq!(rcpts, [vec!["<bob@example.org>"], vec!["<carol@example.org>"]]);
    for d in &got {
        assert_eq!(d.mail, "<alice@sender.test>");
        assert_eq!((d.helo.as_str(), d.proto.as_str()), (CUSTOMER, "LMTP"));
        assert_same_bytes(&strip_both_received(&d.content), M1.as_bytes(), "LMTP copy");
    }
    expect_drained(&server, &config);
    assert_eq!(sink.messages().len(), 2, "the second poll relayed something");
}

/// LMTP over a Unix socket (`lmtp = "unix:/path"`), the usual way to reach a local LMTP
/// server: the same one-recipient transactions.
#[test]
fn lmtp_sink_over_a_unix_socket() {
    let Some(sink) = SmtpSink::start_unix(true) else {
        return;
    };
    let server = provider();
    inject(
        &server,
        "alice@sender.test",
        &["bob@example.org", "carol@example.org"],
        M1,
    );
    let dir = tempfile::tempdir().unwrap();
    let socket = sink.socket.clone().unwrap();
    let config = config(
        &server,
        format!("lmtp = \"unix:{}\"", socket.display()),
        dir.path(),
    );

    let run = client_once(&config);
    expect_code(&run, 0, "delivering poll");
    let got = sink.messages();
    let rcpts: Vec<_> = got.iter().map(|d| d.rcpts.clone()).collect();
    assert_eq!(
        rcpts,
        [vec!["<bob@example.org>"], vec!["<carol@example.org>"]],
        "{}",
        run.stderr
    );
    for d in &got {
        assert_eq!(d.proto, "LMTP");
        assert_same_bytes(&strip_both_received(&d.content), M1.as_bytes(), "LMTP copy");
    }
    expect_drained(&server, &config);
}

/// Maildir: one file per recipient in DIR/example.org/LOCAL/new, headed by Return-Path and
/// Delivered-To, then the two Received: fields and the message with LF line ends; the
/// `,S=` size in the name is the file's size; nothing in tmp/ or cur/, nothing elsewhere.
#[test]
fn maildir_sink_writes_one_file_per_recipient() {
    let server = provider();
    inject(
        &server,
        "alice@sender.test",
        &["bob@example.org", "carol@example.org"],
        M1,
    );
    inject(&server, "", &["bob@example.org"], M2);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("mail");
    let config = config(&server, maildir_in(&root), dir.path());

    let run = client_once(&config);
    expect_code(&run, 0, "delivering poll");
    let (bob_new, bob_tmp, bob_cur) = maildir(&root, "example.org", "bob");
    let (carol_new, carol_tmp, carol_cur) = maildir(&root, "example.org", "carol");
    assert_eq!(
        (bob_new.len(), carol_new.len()),
        (2, 1),
        "{bob_new:?} {carol_new:?}\n{}",
        run.stderr
    );
    assert!(
        bob_tmp.is_empty() && carol_tmp.is_empty(),
        "tmp/ not empty: {bob_tmp:?} {carol_tmp:?}"
    );
    assert!(bob_cur.is_empty() && carol_cur.is_empty());
    assert_eq!(all_files(&root).len(), 3, "{:?}", all_files(&root));

    let mut seen = Vec::new();
    for (file, rcpt) in bob_new
        .iter()
        .map(|f| (f, "bob@example.org"))
        .chain(carol_new.iter().map(|f| (f, "carol@example.org")))
    {
        let bytes = std::fs::read(file).unwrap();
        let name = file.file_name().unwrap().to_str().unwrap();
        let size: usize = name
            .rsplit_once(",S=")
            .expect(",S= in the name")
            .1
            .parse()
            .unwrap();
        assert_eq!(size, bytes.len(), "{name}: S= is not the file size");
        let (sender, want) = if bytes.starts_with(b"Return-Path: <>\n") {
            ("", M2)
        } else {
            ("alice@sender.test", M1)
        };
        let head = format!("Return-Path: <{sender}>\nDelivered-To: {rcpt}\n");
        assert!(
            bytes.starts_with(head.as_bytes()),
            "{name} does not start with {head:?}:\n{}",
            String::from_utf8_lossy(&bytes)
        );
        let rest = strip_both_received(&bytes[head.len()..]);
        assert_same_bytes(&rest, want.as_bytes(), name);
        assert!(
            !bytes.contains(&b'\r'),
            "{name}: a CR in a Maildir file with LF line ends"
        );
        seen.push((rcpt, sender));
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("bob@example.org", ""),
            ("bob@example.org", "alice@sender.test"),
            ("carol@example.org", "alice@sender.test")
        ]
    );
    expect_drained(&server, &config);
    assert_eq!(all_files(&root).len(), 3, "the second poll delivered something");
}

/// The command sink: the template is split into argv once and the address goes into one
/// argument, never through a shell, so a recipient full of shell syntax (legal in a local part)
/// is only a file name. One run per recipient, the message on stdin with LF line ends.
#[test]
fn command_sink_runs_the_program_per_recipient_without_a_shell() {
    let server = provider();
    let nasty = "a`id`$HOME@example.org";
    inject(&server, "alice@sender.test", &["bob@example.org", nasty], M1);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    // $0 = OUT, $1 = the recipient, $2 = the sender, all as argv elements.
    let template = format!(
        r#"/bin/sh -c 'cat > "$0/$1.eml" && printf %s "$2" > "$0/$1.from"' {} {{recipient}} {{sender}}"#,
        out.display()
    );
    let deliver = format!("command = {}", toml_string(&template));
    let config = config(&server, deliver, dir.path());

    let run = client_once(&config);
    expect_code(&run, 0, "delivering poll");
    let mut names: Vec<String> = files(&out)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want = vec![
        "bob@example.org.eml".to_string(),
        "bob@example.org.from".to_string(),
        format!("{nasty}.eml"),
        format!("{nasty}.from"),
    ];
    want.sort();
    assert_eq!(
        names, want,
        "files written by the command\nclient:\n{}",
        run.stderr
    );
    for rcpt in ["bob@example.org", nasty] {
        let body = std::fs::read(out.join(format!("{rcpt}.eml"))).unwrap();
        assert_same_bytes(&strip_both_received(&body), M1.as_bytes(), rcpt);
        assert!(!body.contains(&b'\r'), "{rcpt}: a CR on the command's stdin");
        let from = std::fs::read_to_string(out.join(format!("{rcpt}.from"))).unwrap();
        assert_eq!(from, "alice@sender.test");
    }
    assert_eq!(
        run.stderr.matches("message delivered").count(),
        2,
        "one run per recipient expected:\n{}",
        run.stderr
    );
    expect_drained(&server, &config);
    assert_eq!(files(&out).len(), 4, "the second poll ran the command");
}

/// The command's exit status is the verdict per recipient: 0 delivered, 75 (EX_TEMPFAIL)
/// stays queued with a 451, any other status is a permanent failure (554, with the program's
/// stderr in the recorded reply). A refusal makes `--once` report an error (2).
#[test]
fn command_exit_status_decides_each_recipient() {
    let server = provider();
    inject(
        &server,
        "alice@sender.test",
        &["ok@example.org", "temp@example.org", "perm@example.org"],
        M1,
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let template = format!(
        r#"/bin/sh -c 'case "$1" in temp@*) exit 75;; perm@*) echo "no such mailbox here" >&2; exit 67;; esac; cat > "$0/$1.eml"' {} {{recipient}}"#,
        out.display()
    );
    let config = config(
        &server,
        format!("command = {}", toml_string(&template)),
        dir.path(),
    );

    let run = client_once(&config);
    expect_code(&run, 2, "poll with refusals");
    let want = format!(
        "poll finished: provider \"isp\" (127.0.0.1:{}) in {}: the local mail system refused 2 ",
        server.odmr.port(),
        config.display()
    );
    assert!(run.stderr.contains(&want), "want {want:?} in:\n{}", run.stderr);
    let st = server.recipient_states();
    let find = |a: &str| st.iter().find(|s| s.0 == a).cloned().unwrap_or_default();
    assert_eq!(find("ok@example.org").1, "delivered", "{st:?}\n{}", run.stderr);
    let temp = find("temp@example.org");
    assert!(
        temp.1 == "queued" && temp.2.starts_with("451"),
        "{temp:?}\n{}",
        run.stderr
    );
    let perm = find("perm@example.org");
    assert!(
        perm.1 == "failed" && perm.2.starts_with("554") && perm.2.contains("no such mailbox here"),
        "{perm:?}\n{}",
        run.stderr
    );
    let names: Vec<_> = files(&out)
        .iter()
        .map(|p| p.file_name().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["ok@example.org.eml"]);
    let body = std::fs::read(out.join("ok@example.org.eml")).unwrap();
    assert_same_bytes(&strip_both_received(&body), M1.as_bytes(), "ok@example.org");
}

/// Splice: after the turnaround the provider talks to smtp-sink itself through the client's
/// byte copy: smtp-sink sees the provider's EHLO name and only the provider's Received:.
#[test]
fn splice_sink_copies_the_session_to_smtp_sink() {
    let Some(sink) = SmtpSink::start(false) else {
        return;
    };
    let server = provider();
    inject(
        &server,
        "alice@sender.test",
        &["bob@example.org", "carol@example.org"],
        M1,
    );
    inject(&server, "", &["postmaster@example.org"], M2);
    let dir = tempfile::tempdir().unwrap();
    let config = config(&server, splice_to(sink.port), dir.path());

    let run = client_once(&config);
    expect_code(&run, 0, "splicing poll");
    let got = sink.messages();
    assert_eq!(got.len(), 2, "smtp-sink got {got:#?}\nclient:\n{}", run.stderr);
    let (null, alice) = (&got[0], &got[1]);
    assert_eq!(alice.mail, "<alice@sender.test>");
    assert_eq!(alice.rcpts, ["<bob@example.org>", "<carol@example.org>"]);
    assert_eq!(null.mail, "<>");
    assert_eq!(null.rcpts, ["<postmaster@example.org>"]);
    for (d, want) in [(alice, M1), (null, M2)] {
        assert_eq!(
            d.helo,
            common::HOSTNAME,
            "smtp-sink should talk to the provider itself"
        );
        let (fields, rest) = split_received(&d.content, 1);
        assert!(
            fields[0].contains(&format!("by {} ", common::HOSTNAME)),
            "{fields:?}"
        );
        assert_same_bytes(&rest, want.as_bytes(), "spliced message");
    }
    expect_drained(&server, &config);
    assert_eq!(sink.messages().len(), 2, "the second poll relayed something");
}

/// The relay offers the provider what the local MTA offers: behind `smtp-sink -8` (no
/// 8BITMIME) the customer does not offer 8BITMIME either, so the provider sends the 7-bit
/// message and holds the 8-bit one with the reason recorded (450 4.6.3), rather than have it
/// downgraded or refused.
#[test]
fn relay_offers_only_what_the_local_mta_offers() {
    let Some(sink) = SmtpSink::start_with(false, &["-8"]) else {
        return;
    };
    let server = provider();
    inject(&server, "alice@sender.test", &["bob@example.org"], M1);
    inject(
        &server,
        "alice@sender.test",
        &["carol@example.org"],
        &tricky_message("carol@example.org"),
    );
    let dir = tempfile::tempdir().unwrap();
    let config = config(&server, smtp_to(sink.port), dir.path());

    let run = client_once(&config);
    expect_code(&run, 0, "the 7-bit message was delivered");
    let got = sink.messages();
    assert_eq!(got.len(), 1, "smtp-sink -8 got {got:#?}\nclient:\n{}", run.stderr);
    assert_eq!(got[0].mail, "<alice@sender.test>");
    assert_eq!(got[0].rcpts, ["<bob@example.org>"]);
    assert_same_bytes(
        &strip_both_received(&got[0].content),
        M1.as_bytes(),
        "7-bit message",
    );
    let st = server.recipient_states();
    assert_eq!(st.len(), 1, "{st:?}");
    assert_eq!(
        (st[0].0.as_str(), st[0].1.as_str()),
        ("carol@example.org", "queued")
    );
    assert!(st[0].2.starts_with("450 4.6.3"), "{st:?}");
}

// ----- 2. bodies, byte for byte -----

const BIG: usize = 20 * 1024 * 1024;

/// 8-bit text, 998-octet lines, lines starting with '.', and a 20 MiB message, through the
/// SMTP relay into smtp-sink: identical behind the two Received: fields (smtp-sink writes LF).
#[test]
fn bodies_are_byte_exact_through_the_smtp_sink() {
    let Some(sink) = SmtpSink::start(false) else {
        return;
    };
    let server = provider();
    let tricky = tricky_message("bob@example.org");
    let big = big_message("bob@example.org", BIG);
    inject(&server, "alice@sender.test", &["bob@example.org"], &tricky);
    inject(&server, "big@sender.test", &["bob@example.org"], &big);
    let dir = tempfile::tempdir().unwrap();
    let config = config(&server, smtp_to(sink.port), dir.path());

    let run = client_once(&config);
    expect_code(&run, 0, "delivering poll");
    let got = sink.messages();
    assert_eq!(
        got.len(),
        2,
        "smtp-sink got {} messages\nclient:\n{}",
        got.len(),
        run.stderr
    );
    let (alice, bigd) = (&got[0], &got[1]);
    // Both are 8-bit: the provider declares it, and the relay passes it on (smtp-sink offers
    // 8BITMIME).
    assert_eq!(alice.mail, "<alice@sender.test> BODY=8BITMIME");
    assert_eq!(bigd.mail, "<big@sender.test> BODY=8BITMIME");
    assert_same_bytes(
        &strip_both_received(&alice.content),
        tricky.as_bytes(),
        "tricky message",
    );
    assert_same_bytes(
        &strip_both_received(&bigd.content),
        big.as_bytes(),
        "20 MiB message",
    );
    assert_eq!(server.queue(), json!([]));
}

/// The same bodies into a Maildir: identical but for the line ends (LF) behind Return-Path,
/// Delivered-To and the two Received: fields; with `line_ends = "crlf"`, byte for byte as
/// received.
#[test]
fn bodies_are_byte_exact_into_the_maildir() {
    let server = provider();
    let tricky = tricky_message("bob@example.org");
    let big = big_message("bob@example.org", BIG);
    let dir = tempfile::tempdir().unwrap();
    for (line_ends, eol) in [("", "\n"), ("line_ends = \"crlf\"\n", "\r\n")] {
        inject(&server, "alice@sender.test", &["bob@example.org"], &tricky);
        inject(&server, "big@sender.test", &["bob@example.org"], &big);
        let root = dir.path().join(format!("mail{}", eol.len()));
        let config = config(&server, format!("{line_ends}{}", maildir_in(&root)), dir.path());

        let run = client_once(&config);
        expect_code(&run, 0, "delivering poll");
        let (new, tmp, _) = maildir(&root, "example.org", "bob");
        assert_eq!(new.len(), 2, "{eol:?}: {new:?}\nclient:\n{}", run.stderr);
        assert!(tmp.is_empty(), "{tmp:?}");
        let mut checked = 0;
        for f in &new {
            let bytes = std::fs::read(f).unwrap();
            for (sender, want) in [("alice@sender.test", &tricky), ("big@sender.test", &big)] {
                let head = format!("Return-Path: <{sender}>{eol}Delivered-To: bob@example.org{eol}");
                let want = match eol {
                    "\n" => want.as_bytes().to_vec(),
                    _ => crlf(want.as_bytes()),
                };
                if let Some(rest) = bytes.strip_prefix(head.as_bytes()) {
                    assert_same_bytes(&strip_both_received(rest), &want, sender);
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 2, "{eol:?}: the two files are not the two messages");
        assert_eq!(server.queue(), json!([]));
    }
}

// ----- 3. the local MTA says no -----

/// 451 at the end of data: `--once` exits 2, the provider keeps both recipients queued with
/// the 451 recorded; once the local MTA accepts, the next poll delivers the message exactly
/// once (exit 0) and the queue is empty.
#[test]
fn local_mta_451_keeps_the_mail_queued_until_the_next_poll() {
    let Some(mta) = LocalMta::start() else { return };
    let server = provider();
    inject(
        &server,
        "alice@sender.test",
        &["bob@example.org", "carol@example.org"],
        M1,
    );
    let dir = tempfile::tempdir().unwrap();
    let config = config(&server, smtp_to(mta.peer.port), dir.path());

    mta.rules(json!({"data": "451 4.3.0 local queue full, try later"}));
    let run = client_once(&config);
    expect_code(&run, 2, "poll with a local 451");
    assert!(
        run.stderr.contains("451 4.3.0 local queue full"),
        "the log does not name the local refusal:\n{}",
        run.stderr
    );
    let st = server.recipient_states();
    assert_eq!(st.len(), 2, "{st:?}");
    for (addr, state, reply) in &st {
        assert_eq!(state, "queued", "{addr}: {st:?}");
        assert!(
            reply.starts_with("451") && reply.contains("local queue full"),
            "{addr}: {reply:?}"
        );
    }
    let data = mta.data();
    assert_eq!(data.len(), 1, "{data:?}");
    assert!(data[0].2.starts_with("451"));

    mta.rules(json!({}));
    let run = client_once(&config);
    expect_code(&run, 0, "poll after the local MTA recovered");
    let data = mta.data();
    assert_eq!(
        data.len(),
        2,
        "{:?}",
        data.iter().map(|d| (&d.0, &d.1, &d.2)).collect::<Vec<_>>()
    );
    let (from, rcpts, reply, content) = &data[1];
    assert_eq!(
        (from.as_str(), reply.as_str()),
        ("alice@sender.test", "250 2.0.0 OK queued")
    );
    assert_eq!(rcpts, &["bob@example.org", "carol@example.org"]);
    assert_same_bytes(
        &strip_both_received(content),
        &crlf(M1.as_bytes()),
        "relayed message",
    );
    expect_drained(&server, &config);
    assert_eq!(mta.data().len(), 2, "delivered again");
}

/// A local MTA with PIPELINING gets MAIL together with the first RCPT, and DATA only with the
/// body: its refusals still land on the right recipients. MAIL refused (550) fails both
/// recipients of that message with the local reply; DATA refused (452) defers the message with
/// the local reply; and the same connection then delivers the next message (a refused DATA
/// leaves the local transaction reset, not the connection dropped).
#[test]
fn pipelined_local_mta_refusing_mail_or_data_decides_the_right_recipients() {
    let Some(mta) = LocalMta::start() else { return };
    let server = provider();
    inject(
        &server,
        "eve@sender.test",
        &["bob@example.org", "carol@example.org"],
        M1,
    );
    inject(&server, "alice@sender.test", &["dave@example.org"], M1);
    inject(&server, "alice@sender.test", &["bob@example.org"], M2);
    let dir = tempfile::tempdir().unwrap();
    let config = config(&server, smtp_to(mta.peer.port), dir.path());

    mta.rules(json!({
        "pipelining": true,
        "mail": {"eve@sender.test": "550 5.7.1 not from you"},
        "data_command": {"dave@example.org": "452 4.3.1 insufficient system storage"},
    }));
    let run = client_once(&config);
    expect_code(&run, 2, "poll with local refusals");
    let st = server.recipient_states();
    let by = |a: &str| st.iter().find(|s| s.0 == a).cloned();
    assert_eq!(
        st.len(),
        3,
        "one message delivered and removed, three recipients left: {st:?}"
    );
    for a in ["bob@example.org", "carol@example.org"] {
        let (_, state, reply) = by(a).unwrap_or_else(|| panic!("{a}: {st:?}"));
        assert_eq!(state, "failed", "{a}: {st:?}");
        assert!(
            reply.starts_with("550 5.7.1") && reply.contains("not from you"),
            "{a}: {reply}"
        );
    }
    let (_, state, reply) = by("dave@example.org").unwrap();
    assert_eq!(state, "queued", "{st:?}");
    assert!(reply.starts_with("452 4.3.1"), "{reply}");
    let data = mta.data();
    assert_eq!(
        data.len(),
        1,
        "{:?}",
        data.iter().map(|d| (&d.0, &d.1, &d.2)).collect::<Vec<_>>()
    );
    assert_eq!(
        (data[0].0.as_str(), data[0].1.as_slice()),
        ("alice@sender.test", &["bob@example.org".to_string()][..])
    );
    assert_same_bytes(
        &strip_both_received(&data[0].3),
        &crlf(M2.as_bytes()),
        "relayed message",
    );

    mta.rules(json!({"pipelining": true}));
    let run = client_once(&config);
    expect_code(&run, 0, "poll after the local MTA recovered");
    let data = mta.data();
    assert_eq!(data.len(), 2);
    assert_eq!(data[1].1, ["dave@example.org"]);
}

/// 550 at RCPT for one of two recipients: that one is failed at the provider with the 550
/// recorded, the other is delivered in a transaction of its own; `--once` reports the refusal
/// (exit 2) and nothing is left to fetch.
#[test]
fn local_mta_550_for_one_recipient_fails_only_that_one() {
    let Some(mta) = LocalMta::start() else { return };
    let server = provider();
    inject(
        &server,
        "alice@sender.test",
        &["bob@example.org", "carol@example.org"],
        M1,
    );
    let dir = tempfile::tempdir().unwrap();
    let config = config(&server, smtp_to(mta.peer.port), dir.path());

    mta.rules(json!({"rcpt": {"carol@example.org": "550 5.1.1 <carol@example.org>: no such user"}}));
    let run = client_once(&config);
    expect_code(&run, 2, "poll with a refused recipient");
    let st = server.recipient_states();
    assert_eq!(st.len(), 2, "{st:?}");
    assert_eq!(st[0].0, "bob@example.org");
    assert_eq!(st[0].1, "delivered", "{st:?}");
    assert_eq!(st[1].0, "carol@example.org");
    assert_eq!(st[1].1, "failed", "{st:?}");
    assert!(
        st[1].2.starts_with("550 5.1.1") && st[1].2.contains("no such user"),
        "{st:?}"
    );
    let data = mta.data();
    assert_eq!(
        data.len(),
        1,
        "{:?}",
        data.iter().map(|d| (&d.0, &d.1, &d.2)).collect::<Vec<_>>()
    );
    assert_eq!(data[0].1, ["bob@example.org"]);
    assert_same_bytes(
        &strip_both_received(&data[0].3),
        &crlf(M1.as_bytes()),
        "relayed message",
    );

    let again = client_once(&config);
    expect_code(&again, 1, "nothing left to fetch");
    assert_eq!(mta.data().len(), 1);
}

/// 451 at RCPT for one recipient: it stays queued with the 451, the other is delivered; the
/// next poll delivers just the deferred one.
#[test]
fn local_mta_451_for_one_recipient_defers_only_that_one() {
    let Some(mta) = LocalMta::start() else { return };
    let server = provider();
    inject(
        &server,
        "alice@sender.test",
        &["bob@example.org", "carol@example.org"],
        M1,
    );
    let dir = tempfile::tempdir().unwrap();
    let config = config(&server, smtp_to(mta.peer.port), dir.path());

    // Without an enhanced status code, as an MTA that does not offer ENHANCEDSTATUSCODES
    // answers: the client gives it one of its class (it offers the extension to the provider).
    mta.rules(json!({"rcpt": {"carol@example.org": "451 <carol@example.org>: mailbox busy"}}));
    let run = client_once(&config);
    expect_code(&run, 2, "poll with a deferred recipient");
    let st = server.recipient_states();
    assert_eq!(
        (st[0].0.as_str(), st[0].1.as_str()),
        ("bob@example.org", "delivered"),
        "{st:?}"
    );
    assert_eq!(
        (st[1].0.as_str(), st[1].1.as_str()),
        ("carol@example.org", "queued"),
        "{st:?}"
    );
    assert!(
        st[1].2.starts_with("451 4.0.0 <carol@example.org>: mailbox busy"),
        "{st:?}"
    );

    mta.rules(json!({}));
    let run = client_once(&config);
    expect_code(&run, 0, "poll after the mailbox was freed");
    let data = mta.data();
    let rcpts: Vec<_> = data.iter().map(|d| d.1.clone()).collect();
    assert_eq!(rcpts, [vec!["bob@example.org"], vec!["carol@example.org"]]);
    expect_drained(&server, &config);
}

/// Through the splice the local MTA answers 451 at the end of data: the provider keeps the
/// message (queued, 451 recorded), so `--once` must report a local delivery error (2), as it
/// does for the SMTP relay — not 0, "mail was delivered".
#[test]
fn splice_reports_a_local_refusal_as_an_error() {
    let Some(mta) = LocalMta::start() else { return };
    let server = provider();
    inject(&server, "alice@sender.test", &["bob@example.org"], M1);
    let dir = tempfile::tempdir().unwrap();
    let config = config(&server, splice_to(mta.peer.port), dir.path());

    mta.rules(json!({"data": "451 4.3.0 local queue full, try later"}));
    let run = client_once(&config);
    let data = mta.data();
    assert_eq!(
        data.len(),
        1,
        "{:?}",
        data.iter().map(|d| (&d.0, &d.1, &d.2)).collect::<Vec<_>>()
    );
    assert!(data[0].2.starts_with("451"));
    let st = server.recipient_states();
    assert_eq!(
        (st[0].0.as_str(), st[0].1.as_str()),
        ("bob@example.org", "queued"),
        "{st:?}"
    );
    assert!(st[0].2.starts_with("451 4.3.0"), "{st:?}");
    expect_code(
        &run,
        2,
        "the local MTA refused the only message (through the splice)",
    );
}

// ----- 4. refusals before the turnaround -----

/// A wrong password: 535, exit 3, a log line that says authentication failed; the mail stays.
#[test]
fn wrong_password_exits_3_and_says_so() {
    let server = provider();
    inject(&server, "alice@sender.test", &["bob@example.org"], M1);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("mail");
    let config = ProviderCfg::new(
        server.odmr.port(),
        USER,
        "not-the-password",
        &["example.org"],
        maildir_in(&root),
    )
    .write(dir.path());

    let run = client_once(&config);
    expect_code(&run, 3, "wrong password");
    assert!(
        run.stderr.contains("authentication failed") && run.stderr.contains("535"),
        "the log does not name the cause:\n{}",
        run.stderr
    );
    assert_eq!(states(&server), [pair("bob@example.org", "queued")]);
    assert!(all_files(&root).is_empty());
}

/// Asking for a domain of another account: 450, exit 2, a log line naming the refusal and the
/// domain; nothing is delivered and nothing changes in the queue.
#[test]
fn foreign_domain_exits_2_with_450() {
    let server = provider();
    server.account("other", "other-secret", &["other.example"]);
    inject(
        &server,
        "alice@sender.test",
        &["bob@example.org", "dave@other.example"],
        M1,
    );
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("mail");
    let config = ProviderCfg::new(
        server.odmr.port(),
        USER,
        PASS,
        &["other.example"],
        maildir_in(&root),
    )
    .write(dir.path());

    let run = client_once(&config);
    expect_code(&run, 2, "foreign domain");
    assert!(
        run.stderr.contains("ATRN refused")
            && run.stderr.contains("450")
            && run.stderr.contains("other.example"),
        "the log does not name the cause:\n{}",
        run.stderr
    );
    let st = server.recipient_states();
    assert_eq!(
        st,
        [
            ("bob@example.org".to_string(), "queued".to_string(), String::new()),
            (
                "dave@other.example".to_string(),
                "queued".to_string(),
                String::new()
            ),
        ]
    );
    assert!(all_files(&root).is_empty());
}

/// Nothing listens at the provider's address: exit 2, and the log says which provider of
/// which config file could not be reached, and why.
#[test]
fn unreachable_provider_exits_2_and_says_so() {
    let closed = interop_util::random_free_port();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("mail");
    let config = ProviderCfg::new(closed, USER, PASS, &["example.org"], maildir_in(&root)).write(dir.path());
    let run = client_once(&config);
    expect_code(&run, 2, "unreachable provider");
    let want = format!(
        "poll failed: provider \"isp\" (127.0.0.1:{closed}) in {}: connect: Connection refused",
        config.display()
    );
    assert!(
        run.stderr.contains(&want),
        "the log does not say {want:?}:\n{}",
        run.stderr
    );
    assert!(all_files(&root).is_empty());
}

// ----- 5. the daemon -----

/// `odmr client` without --once, interval 1 s, polling the provider through a forwarder whose
/// port stays put: mail injected while it runs arrives within seconds; the provider is killed
/// (and the forwarder closed: connection refused) — the daemon keeps running and logs each
/// failed poll; the provider restarts (on new ports, behind the same forwarder port) and new
/// mail arrives without restarting the client; SIGTERM stops it with status 0.
#[test]
fn daemon_delivers_while_running_rides_out_an_outage_and_stops_on_sigterm() {
    let mut server = provider();
    let Some(mut fwd) = PyPeer::start("client_forwarder.py", &[&server.odmr.port().to_string()], false)
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("mail");
    let mut pc = ProviderCfg::new(fwd.port, USER, PASS, &["example.org"], maildir_in(&root));
    pc.interval = "1s";
    pc.timeout = "2s";
    let config = pc.write(dir.path());
    let mut d = Daemon::start(&config);
    assert!(
        d.wait_log(15, |l| l.contains("no mail waiting")),
        "no first poll:\n{}",
        d.log()
    );

    inject(
        &server,
        "alice@sender.test",
        &["bob@example.org"],
        "Subject: first\n\nwhile running\n",
    );
    let bob = |n: usize| maildir(&root, "example.org", "bob").0.len() == n;
    assert!(
        wait_until(10, || bob(1)),
        "not delivered within 10 s:\n{}",
        d.log()
    );
    assert!(
        wait_until(5, || server.queue() == json!([])),
        "{:?}",
        server.queue()
    );

    // The outage.
    server.kill();
    fwd.tell("down");
    assert!(fwd.wait_line(5, |l| l == "ok down"), "{:?}", fwd.lines());
    let before = d.log().matches("poll failed").count();
    assert!(
        d.wait_log(15, |l| l.matches("poll failed").count() >= before + 2),
        "no failed polls logged during the outage:\n{}",
        d.log()
    );
    assert!(d.running(), "the daemon died during the outage:\n{}", d.log());
    let want = format!(
        "provider \"isp\" (127.0.0.1:{}) in {}: connect: ",
        fwd.port,
        config.display()
    );
    assert!(
        d.log().contains(&want),
        "the log does not say {want:?}:\n{}",
        d.log()
    );

    // The provider is back (new ports, same store), behind the same address.
    server.spawn();
    fwd.tell(&format!("up {}", server.odmr.port()));
    assert!(fwd.wait_line(5, |l| l.starts_with("ok up")), "{:?}", fwd.lines());
    inject(
        &server,
        "alice@sender.test",
        &["bob@example.org"],
        "Subject: second\n\nafter the outage\n",
    );
    assert!(
        wait_until(15, || bob(2)),
        "not delivered after the outage:\n{}",
        d.log()
    );
    assert!(
        wait_until(5, || server.queue() == json!([])),
        "{:?}",
        server.queue()
    );
    let (new, tmp, _) = maildir(&root, "example.org", "bob");
    assert!(tmp.is_empty());
    let mut subjects: Vec<String> = new
        .iter()
        .map(|f| {
            let t = String::from_utf8(std::fs::read(f).unwrap()).unwrap();
            t.lines()
                .find_map(|l| l.strip_prefix("Subject: "))
                .unwrap()
                .to_string()
        })
        .collect();
    subjects.sort();
    assert_eq!(subjects, ["first", "second"]);

    assert_eq!(d.terminate(10), Some(0), "SIGTERM:\n{}", d.log());
}

/// With interval 1 h the daemon polls once at start and then waits; SIGUSR1 makes it poll at
/// once, and the mail arrives.
#[test]
fn sigusr1_polls_at_once() {
    let server = provider();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("mail");
    let mut pc = ProviderCfg::new(
        server.odmr.port(),
        USER,
        PASS,
        &["example.org"],
        maildir_in(&root),
    );
    pc.interval = "1h";
    let config = pc.write(dir.path());
    let mut d = Daemon::start(&config);
    assert!(
        d.wait_log(15, |l| l.contains("no mail waiting") && l.contains("next poll")),
        "no first poll:\n{}",
        d.log()
    );
    // Let the poller reach its wait (the log line comes just before it).
    std::thread::sleep(Duration::from_millis(300));
    inject(
        &server,
        "alice@sender.test",
        &["bob@example.org"],
        "Subject: usr1\n\nfetch me now\n",
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        maildir(&root, "example.org", "bob").0.len(),
        0,
        "polled without being asked"
    );

    d.signal("USR1");
    assert!(
        wait_until(10, || maildir(&root, "example.org", "bob").0.len() == 1),
        "SIGUSR1 did not make it poll:\n{}",
        d.log()
    );
    assert!(d.log().contains("SIGUSR1"), "{}", d.log());
    assert!(
        wait_until(5, || server.queue() == json!([])),
        "{:?}",
        server.queue()
    );
    assert_eq!(d.terminate(10), Some(0), "SIGTERM:\n{}", d.log());
}

// ----- 6. the config file -----

/// `odmr ARGS` with only `env` of the config variables set (under `timeout`: a client that
/// starts polling instead of refusing its config fails the test rather than hang it); the exit
/// status, and stdout and stderr together.
fn odmr(args: &[&str], env: &[(&str, &Path)]) -> (Option<i32>, String) {
    let mut cmd = std::process::Command::new("timeout");
    cmd.args(["--kill-after=5", "30", common::BIN])
        .args(args)
        .env_remove("ODMR_CONFIG")
        .env_remove("ODMR_CLIENT_CONFIG")
        .stdin(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run odmr");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// A server config given to the client, and a client config given to the server and to an
/// operator's command: each is refused with a hint naming the right command, not with serde's
/// "unknown field".
#[test]
fn a_config_of_the_wrong_kind_gets_a_hint() {
    let server = provider();
    let dir = tempfile::tempdir().unwrap();
    let client = config(&server, maildir_in(&dir.path().join("mail")), dir.path());
    let (server_cfg, client_cfg) = (server.config.to_str().unwrap(), client.to_str().unwrap());

    let (code, err) = odmr(&["client", "--once", "--config", server_cfg], &[]);
    assert_eq!(code, Some(2), "{err}");
    let want = format!(
        "config file {server_cfg}: this looks like a server config (it has [store], [smtp], [odmr]); \
         `odmr client` needs a client config (see odmr-client.example.toml); the server reads it \
         with `odmr server --config {server_cfg}`"
    );
    assert!(err.contains(&want), "want {want:?} in:\n{err}");
    assert!(!err.contains("unknown field"), "{err}");

    for args in [&["server"][..], &["queue", "list"]] {
        let (code, err) = odmr(&[args, &["--config", client_cfg]].concat(), &[]);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        let want = format!(
            "config file {client_cfg}: this looks like a client config (it has [[provider]]); \
             `odmr server` and the operators' commands need a server config (see \
             odmr.example.toml); the client reads it with `odmr client --config {client_cfg}`"
        );
        assert!(err.contains(&want), "{args:?}: want {want:?} in:\n{err}");
    }
    // Given the right way round, both are read: the client polls (no mail: 1).
    assert_eq!(
        odmr(&["client", "--once", "--config", client_cfg], &[]).0,
        Some(1)
    );
    let (code, err) = odmr(&["queue", "list", "--config", server_cfg], &[]);
    assert_eq!(code, Some(0), "{err}");
}

/// The client reads $ODMR_CLIENT_CONFIG, not the server's $ODMR_CONFIG; without either it
/// reads /etc/odmr/odmr-client.toml, and says so when $ODMR_CONFIG was set in vain.
#[test]
fn the_client_has_its_own_default_config_and_variable() {
    let server = provider();
    let dir = tempfile::tempdir().unwrap();
    let client = config(&server, maildir_in(&dir.path().join("mail")), dir.path());

    let (code, err) = odmr(&["client", "--once"], &[("ODMR_CLIENT_CONFIG", &client)]);
    assert_eq!(
        code,
        Some(1),
        "the client did not read $ODMR_CLIENT_CONFIG:\n{err}"
    );
    assert!(err.contains("no mail waiting"), "{err}");
    // The server's variable is for the server's commands, which read their file from it.
    let (code, err) = odmr(
        &["queue", "list"],
        &[("ODMR_CONFIG", &server.config), ("ODMR_CLIENT_CONFIG", &client)],
    );
    assert_eq!(code, Some(0), "{err}");

    if Path::new("/etc/odmr/odmr-client.toml").exists() {
        eprintln!("skipped the default-path check: /etc/odmr/odmr-client.toml exists here");
        return;
    }
    let (code, err) = odmr(&["client", "--once"], &[("ODMR_CONFIG", &server.config)]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("cannot read config file /etc/odmr/odmr-client.toml")
            && err.contains("ODMR_CONFIG is set, but it is for the server")
            && err.contains("ODMR_CLIENT_CONFIG"),
        "{err}"
    );
}

/// `--help` says which file each command reads, and which variable overrides it.
#[test]
fn help_names_both_default_configs() {
    let (code, help) = odmr(&["client", "--help"], &[]);
    assert_eq!(code, Some(0), "{help}");
    for want in [
        "$ODMR_CLIENT_CONFIG",
        "/etc/odmr/odmr-client.toml",
        "$ODMR_CONFIG",
        "/etc/odmr/odmr.toml",
    ] {
        assert!(help.contains(want), "{want} is not in:\n{help}");
    }
}

/// A relative Maildir path and a domain that is not one are refused when the config is read,
/// by the daemon as by `--once`, naming the file, the key and the fix; nothing is polled.
#[test]
fn what_every_poll_would_trip_on_is_refused_at_start() {
    let server = provider();
    inject(&server, "alice@sender.test", &["bob@example.org"], M1);
    let dir = tempfile::tempdir().unwrap();
    let relative = config(&server, "maildir = \"Maildir/{local}\"".into(), dir.path());
    let bad_domain = ProviderCfg::new(
        server.odmr.port(),
        USER,
        PASS,
        &["example.org", "not a domain"],
        maildir_in(&dir.path().join("mail")),
    )
    .write(dir.path());
    let cases = [
        (
            &relative,
            "provider[0].deliver.maildir = \"Maildir/{local}\": not an absolute path",
            "e.g. maildir = \"/var/mail/{domain}/{local}\"",
        ),
        (
            &bad_domain,
            "provider[0].domains = \"not a domain\"",
            "a domain name such as \"example.org\": letters, digits, hyphens and dots",
        ),
    ];
    for (cfg, what, fix) in cases {
        let path = cfg.to_str().unwrap();
        for args in [
            &["client", "--config", path][..],
            &["client", "--once", "--config", path],
        ] {
            let (code, err) = odmr(args, &[]);
            assert_eq!(code, Some(2), "{args:?}: {err}");
            assert!(
                err.contains(&format!("config file {path}: {what}")) && err.contains(fix),
                "{args:?}: {err}"
            );
        }
    }
    assert_eq!(
        server.queue().as_array().map(Vec::len),
        Some(1),
        "something was fetched"
    );
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}
