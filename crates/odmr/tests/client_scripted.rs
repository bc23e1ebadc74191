//! `odmr client --once` against a scripted provider (`peers/client_provider.py`, Python
//! stdlib): it verifies our CRAM-MD5 with its own hmac, records the exact ATRN line and every
//! command, and then misbehaves as each test asks — refusing ATRN with each code, cutting the
//! connection mid-DATA, going silent after the turnaround, or sending its EHLO in the same
//! segment as the 250 to ATRN. Every test checks the exit code, what reached the local sink
//! (smtp-sink or a Maildir) and what the provider recorded.

#[path = "peers/client_util.rs"]
mod client_util;
mod common;
#[path = "peers/interop_util.rs"]
mod interop_util;

use client_util::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

const USER: &str = "acme";
const PASS: &str = "s3cret pass";

fn provider(args: &[&str]) -> Option<PyPeer> {
    let mut all = vec!["--user", USER, "--password", PASS, "--read-timeout", "20"];
    all.extend_from_slice(args);
    PyPeer::start("client_provider.py", &all, false)
}

/// Wait for the provider to finish its one connection; return its events, after checking it
/// saw nothing unexpected and that our CRAM-MD5 response verified.
fn finished(p: &PyPeer, run: &Once) -> Vec<Value> {
    finished_log(p, &run.stderr)
}

/// As [`finished`], with the client's log for the failure messages.
fn finished_log(p: &PyPeer, client_log: &str) -> Vec<Value> {
    assert!(
        p.wait_line(30, |l| l.contains("\"event\": \"done\"")),
        "the scripted provider did not finish: {:#?}\n{}\nclient:\n{client_log}",
        p.lines(),
        p.stderr(),
    );
    let ev = p.events();
    let errors: Vec<_> = ev.iter().filter(|e| e["event"] == "error").collect();
    assert!(
        errors.is_empty(),
        "the scripted provider saw: {errors:#?}\nall: {ev:#?}\nclient:\n{client_log}"
    );
    let auth: Vec<_> = ev.iter().filter(|e| e["event"] == "auth").collect();
    assert_eq!(
        auth,
        [&json!({"event": "auth", "user": USER, "ok": true})],
        "{ev:#?}\nclient:\n{client_log}"
    );
    ev
}

fn of<'a>(ev: &'a [Value], kind: &str) -> Vec<&'a Value> {
    ev.iter().filter(|e| e["event"] == kind).collect()
}

/// The commands the client sent before the turnaround, ATRN included, in order.
fn commands(ev: &[Value]) -> Vec<String> {
    ev.iter()
        .filter(|e| e["event"] == "cmd" || e["event"] == "atrn")
        .map(|e| e["line"].as_str().unwrap().to_string())
        .collect()
}

/// The replies the client gave after the turnaround to the command `cmd` (a verb, or
/// "DATA-END" for the end of a message).
fn replies_to(ev: &[Value], cmd: &str) -> Vec<String> {
    ev.iter()
        .filter(|e| {
            let to = e["to"].as_str().unwrap_or("");
            e["event"] == "reply" && (to == cmd || to.starts_with(&format!("{cmd} ")))
        })
        .map(|e| e["reply"].as_str().unwrap().to_string())
        .collect()
}

fn messages_file(dir: &Path, messages: Value) -> String {
    let f = dir.join("messages.json");
    std::fs::write(&f, messages.to_string()).unwrap();
    f.to_str().unwrap().to_string()
}

/// The EHLO keywords in the client's reply after the turnaround.
fn ehlo_keywords(ev: &[Value]) -> Vec<String> {
    let e = of(ev, "ehlo");
    assert_eq!(e.len(), 1, "{ev:#?}");
    e[0]["lines"].as_array().unwrap()[1..]
        .iter()
        .map(|l| l.as_str().unwrap()[4..].to_string())
        .collect()
}

// ----- 6. ATRN refusals, and the ATRN line -----

/// 453 / 450 / 451 / 530 to ATRN give exit 1 / 2 / 2 / 2; each time the client sends QUIT
/// right after the refusal (and nothing else), and nothing is delivered.
#[test]
fn atrn_refusals_give_their_exit_codes_and_a_quit() {
    for (reply, code) in [
        ("453 You have no mail", 1),
        ("450 4.7.0 Requested domain not available", 2),
        ("451 4.3.0 Another session is delivering the domain", 2),
        ("530 5.7.0 Authentication required", 2),
    ] {
        let Some(p) = provider(&["--atrn-reply", reply]) else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("mail");
        let config =
            ProviderCfg::new(p.port, USER, PASS, &["example.org"], maildir_in(&root)).write(dir.path());
        let run = client_once(&config);
        let ev = finished(&p, &run);
        expect_code(&run, code, reply);
        assert_eq!(
            commands(&ev),
            [
                &format!("EHLO {CUSTOMER}"),
                "AUTH CRAM-MD5",
                "ATRN example.org",
                "QUIT"
            ],
            "{reply}: {ev:#?}"
        );
        let code_text = &reply[..3];
        assert!(
            run.stderr
                .contains(if code == 1 { "no mail waiting" } else { code_text }),
            "{reply}: the log does not say why:\n{}",
            run.stderr
        );
        assert!(all_files(&root).is_empty(), "{reply}: something was delivered");
        assert!(
            of(&ev, "greeting").is_empty(),
            "{reply}: the client turned around"
        );
    }
}

/// Without `domains`, or with `domains = []`, the client sends a bare "ATRN" (all of the
/// account's domains); with two domains, "ATRN a.example,b.example".
#[test]
fn atrn_line_is_bare_without_domains_and_comma_separated_with_two() {
    let two = ["a.example", "b.example"];
    let none: [&str; 0] = [];
    for (domains, want) in [
        (None, "ATRN"),
        (Some(&none[..]), "ATRN"),
        (Some(&two[..]), "ATRN a.example,b.example"),
    ] {
        let Some(p) = provider(&["--atrn-reply", "453 You have no mail"]) else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let mut pc = ProviderCfg::new(p.port, USER, PASS, &[], maildir_in(&dir.path().join("mail")));
        pc.domains = domains;
        let config = pc.write(dir.path());
        let run = client_once(&config);
        let ev = finished(&p, &run);
        expect_code(&run, 1, want);
        let atrn: Vec<_> = of(&ev, "atrn")
            .iter()
            .map(|e| e["line"].as_str().unwrap())
            .collect();
        assert_eq!(atrn, [want], "domains {domains:?}");
    }
}

// ----- 7. the provider drops mid-DATA -----

/// Two messages: the first complete, the second cut after 200 000 octets of its body (more
/// than the relay buffers, so part of it has already reached the local MTA).
fn drop_scenario(dir: &Path) -> (String, String) {
    let first = "Subject: complete\n\nthe first message, complete\n".to_string();
    let mut cut = "Subject: cut\n\n".to_string();
    while cut.len() < 300_000 {
        cut.push_str("a line of the message that will be cut off by the provider\n");
    }
    let file = messages_file(
        dir,
        json!([
            {"from": "alice@sender.test", "to": ["bob@example.org"], "data": first},
            {"from": "alice@sender.test", "to": ["carol@example.org"], "data": cut},
        ]),
    );
    (file, first)
}

/// Check the provider's side of a cut session: the first message got a 250 after its data,
/// the second got 354 and was then cut; the client reported an error (exit 2).
fn check_cut_session(ev: &[Value], run: &Once) {
    let ends = replies_to(ev, "DATA-END");
    assert_eq!(ends.len(), 1, "{ev:#?}");
    assert!(
        ends[0].starts_with("250 "),
        "the complete message was not acknowledged: {ends:?}"
    );
    let data = replies_to(ev, "DATA");
    assert!(data.len() == 2 && data[1].starts_with("354"), "{ev:#?}");
    assert_eq!(of(ev, "dropped").len(), 1, "{ev:#?}");
    expect_code(run, 2, "session cut mid-DATA");
    assert_eq!(
        run.stderr.matches("message delivered").count(),
        1,
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("closed the connection"),
        "the log does not say the provider went away:\n{}",
        run.stderr
    );
}

/// Into smtp-sink: the complete message is there exactly once, and nothing of the cut one
/// (the relay must drop its local connection rather than finish the truncated message).
#[test]
fn provider_drop_mid_data_delivers_only_the_complete_message_via_smtp() {
    let Some(sink) = SmtpSink::start(false) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (file, first) = drop_scenario(dir.path());
    let Some(p) = provider(&["--messages", &file, "--after", "drop", "--drop-after", "200000"]) else {
        return;
    };
    let config = ProviderCfg::new(p.port, USER, PASS, &["example.org"], smtp_to(sink.port)).write(dir.path());
    let run = client_once(&config);
    let ev = finished(&p, &run);
    check_cut_session(&ev, &run);
    // What the relay announces is what smtp-sink offers: 8BITMIME, no SMTPUTF8, and (smtp-sink
    // states no limit) "SIZE 0", no fixed maximum (RFC 1870 §4): smtp-sink decides.
    let kw = ehlo_keywords(&ev);
    for k in ["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "SIZE 0"] {
        assert!(kw.iter().any(|x| x == k), "EHLO lacks {k}: {kw:?}");
    }
    assert!(!kw.iter().any(|x| x == "SMTPUTF8"), "{kw:?}");

    std::thread::sleep(Duration::from_millis(300));
    let got = sink.messages();
    assert_eq!(got.len(), 1, "smtp-sink got {got:#?}\nclient:\n{}", run.stderr);
    assert_eq!(got[0].rcpts, ["<bob@example.org>"]);
    let (fields, rest) = split_received(&got[0].content, 1);
    assert!(fields[0].contains(&format!("by {CUSTOMER} ")), "{fields:?}");
    assert_same_bytes(&rest, first.as_bytes(), "the complete message");
}

/// Into a Maildir: bob's complete message is in new/, carol's cut one nowhere (new/ and tmp/
/// empty), and no litter anywhere.
#[test]
fn provider_drop_mid_data_delivers_only_the_complete_message_into_maildir() {
    let dir = tempfile::tempdir().unwrap();
    let (file, first) = drop_scenario(dir.path());
    let Some(p) = provider(&["--messages", &file, "--after", "drop", "--drop-after", "200000"]) else {
        return;
    };
    let root = dir.path().join("mail");
    let config = ProviderCfg::new(p.port, USER, PASS, &["example.org"], maildir_in(&root)).write(dir.path());
    let run = client_once(&config);
    let ev = finished(&p, &run);
    check_cut_session(&ev, &run);

    let (bob_new, bob_tmp, _) = maildir(&root, "example.org", "bob");
    let (carol_new, carol_tmp, _) = maildir(&root, "example.org", "carol");
    assert_eq!(bob_new.len(), 1, "{:?}", all_files(&root));
    assert!(
        carol_new.is_empty(),
        "the cut message was delivered: {carol_new:?}"
    );
    assert!(
        bob_tmp.is_empty() && carol_tmp.is_empty(),
        "litter in tmp/: {bob_tmp:?} {carol_tmp:?}"
    );
    assert_eq!(all_files(&root), bob_new);
    let bytes = std::fs::read(&bob_new[0]).unwrap();
    let head = "Return-Path: <alice@sender.test>\nDelivered-To: bob@example.org\n";
    assert!(
        bytes.starts_with(head.as_bytes()),
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let (_, rest) = split_received(&bytes[head.len()..], 1);
    assert_same_bytes(&rest, first.as_bytes(), "the complete message");
}

// ----- 8. the provider goes silent -----

/// After the turnaround the provider reads our 220 and sends nothing: with timeout = "2s" the
/// client closes the connection within a few seconds and reports an error.
#[test]
fn silent_provider_after_turnaround_is_timed_out() {
    let Some(p) = provider(&["--after", "silent"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("mail");
    let mut pc = ProviderCfg::new(p.port, USER, PASS, &["example.org"], maildir_in(&root));
    pc.timeout = "2s";
    let config = pc.write(dir.path());
    let run = client_once(&config);
    let ev = finished(&p, &run);
    expect_code(&run, 2, "silent provider");
    assert!(
        run.elapsed < Duration::from_secs(10),
        "took {:?}:\n{}",
        run.elapsed,
        run.stderr
    );
    let closed = of(&ev, "client_closed");
    assert_eq!(
        closed.len(),
        1,
        "the client did not close the connection: {ev:#?}"
    );
    let after = closed[0]["after"].as_f64().unwrap();
    assert!(
        (1.5..8.0).contains(&after),
        "closed {after} s after its greeting (timeout 2 s)"
    );
    assert!(of(&ev, "greeting")[0]["reply"]
        .as_str()
        .unwrap()
        .starts_with("220 "));
    assert!(all_files(&root).is_empty());
}

// ----- 9. the 250 and the EHLO in one segment -----

/// The provider writes "250 …\r\nEHLO provider.test\r\n" in one go: the client must keep the
/// EHLO it read along with the 250, greet, answer it, and receive the message.
#[test]
fn atrn_reply_and_ehlo_in_one_segment_are_both_used() {
    let dir = tempfile::tempdir().unwrap();
    let body = "Subject: coalesced\n\nthe 250 and the EHLO came together\n";
    let file = messages_file(
        dir.path(),
        json!([{"from": "alice@sender.test", "to": ["bob@example.org"], "data": body}]),
    );
    let Some(p) = provider(&["--messages", &file, "--coalesce"]) else {
        return;
    };
    let root = dir.path().join("mail");
    let config = ProviderCfg::new(p.port, USER, PASS, &["example.org"], maildir_in(&root)).write(dir.path());
    let run = client_once(&config);
    let ev = finished(&p, &run);
    expect_code(&run, 0, "coalesced turnaround");
    // The Maildir sink takes 8-bit and SMTPUTF8 mail, up to max_message_size (50 MiB).
    let kw = ehlo_keywords(&ev);
    for k in [
        "PIPELINING",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
        "SIZE 52428800",
    ] {
        assert!(kw.iter().any(|x| x == k), "EHLO lacks {k}: {kw:?}");
    }
    let ends = replies_to(&ev, "DATA-END");
    assert!(ends.len() == 1 && ends[0].starts_with("250 "), "{ev:#?}");
    assert!(replies_to(&ev, "QUIT")[0].starts_with("221"), "{ev:#?}");
    let (new, tmp, _) = maildir(&root, "example.org", "bob");
    assert_eq!(new.len(), 1, "{:?}\n{}", all_files(&root), run.stderr);
    assert!(tmp.is_empty());
    let bytes = std::fs::read(&new[0]).unwrap();
    let head = "Return-Path: <alice@sender.test>\nDelivered-To: bob@example.org\n";
    assert!(bytes.starts_with(head.as_bytes()));
    let (fields, rest) = split_received(&bytes[head.len()..], 1);
    assert!(
        fields[0].starts_with("Received: from provider.test "),
        "{fields:?}"
    );
    assert_same_bytes(&rest, body.as_bytes(), "the message");
}

/// The same, through the splice: the EHLO that came with the 250 is already in the client's
/// buffer and must reach the local MTA first (here smtp-sink, which then answers it), so the
/// provider's session with smtp-sink works and the message arrives.
#[test]
fn atrn_reply_and_ehlo_in_one_segment_through_the_splice() {
    let Some(sink) = SmtpSink::start(false) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let body = "Subject: coalesced, spliced\n\nthe EHLO went ahead of the local greeting\n";
    let file = messages_file(
        dir.path(),
        json!([{"from": "alice@sender.test", "to": ["bob@example.org"], "data": body}]),
    );
    let Some(p) = provider(&["--messages", &file, "--coalesce"]) else {
        return;
    };
    let config =
        ProviderCfg::new(p.port, USER, PASS, &["example.org"], splice_to(sink.port)).write(dir.path());
    let run = client_once(&config);
    let ev = finished(&p, &run);
    expect_code(&run, 0, "coalesced turnaround, spliced");
    let greeting = of(&ev, "greeting");
    assert!(
        greeting[0]["reply"].as_str().unwrap().starts_with("220 sink"),
        "the greeting is not smtp-sink's: {ev:#?}"
    );
    let ends = replies_to(&ev, "DATA-END");
    assert!(ends.len() == 1 && ends[0].starts_with("250 "), "{ev:#?}");
    let got = sink.messages();
    assert_eq!(got.len(), 1, "smtp-sink got {got:#?}\nclient:\n{}", run.stderr);
    assert_eq!(
        got[0].helo, "provider.test",
        "the provider's own EHLO should reach smtp-sink"
    );
    assert_eq!(got[0].rcpts, ["<bob@example.org>"]);
    assert_same_bytes(&got[0].content, body.as_bytes(), "the spliced message");
}

/// A local MTA that offers STARTTLS (aiosmtpd with a certificate, `peers/tls_destination.py`)
/// behind the splice: the provider sees its EHLO reply without STARTTLS (the reversed session
/// never offers TLS, RFC 3207 §4.2) and everything else as the local MTA sent it; the message
/// arrives, in plaintext.
#[test]
fn the_splice_hides_the_local_mtas_starttls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = self_signed_localhost(dir.path());
    let local = PyPeer::start(
        "tls_destination.py",
        &[cert_file.to_str().unwrap(), key_file.to_str().unwrap()],
        true,
    );
    let Some(local) = local else { return };
    let body = "Subject: spliced\n\nno TLS in the reversed session\n";
    let file = messages_file(
        dir.path(),
        json!([{"from": "alice@sender.test", "to": ["bob@example.org"], "data": body}]),
    );
    let Some(p) = provider(&["--messages", &file]) else {
        return;
    };
    let config =
        ProviderCfg::new(p.port, USER, PASS, &["example.org"], splice_to(local.port)).write(dir.path());
    let run = client_once(&config);
    let ev = finished(&p, &run);
    expect_code(&run, 0, "spliced to a local MTA offering STARTTLS");
    let keywords = ehlo_keywords(&ev);
    assert!(
        !keywords.iter().any(|k| k.eq_ignore_ascii_case("STARTTLS")),
        "STARTTLS reached the provider: {keywords:?}"
    );
    assert!(
        keywords.iter().any(|k| k == "8BITMIME") && keywords.last().is_some_and(|k| k == "HELP"),
        "the other keywords should pass as they were: {keywords:?}"
    );
    let data: Vec<Value> = local
        .events()
        .into_iter()
        .filter(|e| e["event"] == "data")
        .collect();
    assert_eq!(data.len(), 1, "{data:?}\nclient:\n{}", run.stderr);
    assert_eq!(data[0]["tls"], json!(false));
}

// ----- the daemon stopped mid-message -----

/// The daemon is receiving a message (the provider has sent part of its body and stalls):
/// SIGTERM stops it at once with status 0, the half-received message is nowhere in the
/// Maildir (its tmp/ file removed), the message completed before it is in new/, and the
/// provider sees the connection closed.
#[test]
fn sigterm_mid_message_stops_at_once_and_leaves_nothing_half_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let (file, first) = drop_scenario(dir.path());
    let Some(p) = provider(&["--messages", &file, "--after", "stall", "--drop-after", "200000"]) else {
        return;
    };
    let root = dir.path().join("mail");
    let mut pc = ProviderCfg::new(p.port, USER, PASS, &["example.org"], maildir_in(&root));
    pc.interval = "1h";
    pc.timeout = "60s";
    let config = pc.write(dir.path());
    let mut d = Daemon::start(&config);
    assert!(
        p.wait_line(15, |l| l.contains("\"stalled\"")),
        "the provider did not get to the stall: {:?}\nclient:\n{}",
        p.lines(),
        d.log()
    );
    // The cut message is being received: its temporary file exists.
    assert!(
        wait_until(5, || maildir(&root, "example.org", "carol").1.len() == 1),
        "no tmp/ file for the message in flight: {:?}\n{}",
        all_files(&root),
        d.log()
    );

    let start = std::time::Instant::now();
    assert_eq!(d.terminate(10), Some(0), "SIGTERM:\n{}", d.log());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?} to stop",
        start.elapsed()
    );
    let log = d.log();
    let ev = finished_log(&p, &log);
    assert_eq!(of(&ev, "client_closed").len(), 1, "{ev:#?}");
    let ends = replies_to(&ev, "DATA-END");
    assert!(ends.len() == 1 && ends[0].starts_with("250 "), "{ev:#?}");

    let (bob_new, bob_tmp, _) = maildir(&root, "example.org", "bob");
    let (carol_new, carol_tmp, _) = maildir(&root, "example.org", "carol");
    assert_eq!(bob_new.len(), 1, "{:?}", all_files(&root));
    assert!(
        carol_new.is_empty(),
        "the half-received message was delivered: {carol_new:?}"
    );
    assert!(
        bob_tmp.is_empty() && carol_tmp.is_empty(),
        "litter in tmp/: {bob_tmp:?} {carol_tmp:?}"
    );
    let bytes = std::fs::read(&bob_new[0]).unwrap();
    let head = "Return-Path: <alice@sender.test>\nDelivered-To: bob@example.org\n";
    assert!(bytes.starts_with(head.as_bytes()));
    let (_, rest) = split_received(&bytes[head.len()..], 1);
    assert_same_bytes(&rest, first.as_bytes(), "the complete message");
}

// ----- local delivery impossible -----

/// Run `--once` with the local target on a port where nothing listens; return the provider's
/// stdout lines and the run, after checking exit 2 and a log line naming the target.
fn poll_with_local_down(deliver: impl Fn(u16) -> String) -> Option<(Vec<String>, Once)> {
    let closed = interop_util::random_free_port();
    let deliver = deliver(closed);
    let p = provider(&[])?;
    let dir = tempfile::tempdir().unwrap();
    let config = ProviderCfg::new(p.port, USER, PASS, &["example.org"], deliver.clone()).write(dir.path());
    let run = client_once(&config);
    expect_code(&run, 2, &deliver);
    assert!(
        run.stderr.contains(&format!("127.0.0.1:{closed}")),
        "{deliver}: the log does not name the local target:\n{}",
        run.stderr
    );
    // And which provider of which config file could not be polled.
    let at = format!(
        "provider \"isp\" (127.0.0.1:{}) in {}: local delivery is not possible",
        p.port,
        config.display()
    );
    assert!(
        run.stderr.contains(&at),
        "{deliver}: the log does not say {at:?}:\n{}",
        run.stderr
    );
    std::thread::sleep(Duration::from_millis(200));
    Some((p.lines(), run))
}

/// The local mail system is down (nothing listens on its port): the client finds out before
/// ATRN and does not ask for the mail at all — the provider sees no connection, so it keeps
/// everything and no session is turned around for nothing; `--once` exits 2 with a log line
/// naming the local target.
#[test]
fn local_mta_down_means_no_atrn() {
    for deliver in [smtp_to, lmtp_to] {
        let Some((lines, run)) = poll_with_local_down(deliver) else {
            return;
        };
        assert!(
            lines.is_empty(),
            "the provider was contacted: {lines:#?}\nclient:\n{}",
            run.stderr
        );
        assert!(
            run.stderr.contains("local delivery is not possible"),
            "{}",
            run.stderr
        );
    }
}

/// The same for the splice, which needs the local SMTP server just as much: poll.rs promises
/// "no ATRN is sent while local delivery is impossible".
#[test]
fn splice_target_down_means_no_atrn() {
    let Some((lines, run)) = poll_with_local_down(splice_to) else {
        return;
    };
    let atrn: Vec<_> = lines.iter().filter(|l| l.contains("\"atrn\"")).collect();
    assert!(
        atrn.is_empty(),
        "ATRN was sent although the splice target is down: {lines:#?}\nclient:\n{}",
        run.stderr
    );
}
