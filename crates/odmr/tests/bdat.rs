//! CHUNKING (RFC 3030) on the receiving side, over real sockets: the provider's MX takes
//! messages by `BDAT`, pipelined as a CHUNKING sender writes them (whole transactions without
//! waiting), stores them byte for byte, reads and drops refused chunks so the session stays in
//! sync, and closes on a BDAT whose size it cannot know. The customer's reversed session takes
//! BDAT from the provider too (`peers/client_provider.py --bdat`).

#[path = "peers/client_util.rs"]
mod client_util;
mod common;
#[path = "peers/interop_util.rs"]
mod interop_util;

use client_util::*;
use common::{Line, Server};
use serde_json::{json, Value};

const PW: &str = "secret";

/// `BDAT` commands carrying `content` in chunks of `size` octets, the last with LAST.
fn chunks(content: &[u8], size: usize) -> Vec<u8> {
    let mut wire = Vec::new();
    let pieces: Vec<&[u8]> = content.chunks(size).collect();
    for (i, p) in pieces.iter().enumerate() {
        let last = if i + 1 == pieces.len() { " LAST" } else { "" };
        wire.extend_from_slice(format!("BDAT {}{last}\r\n", p.len()).as_bytes());
        wire.extend_from_slice(p);
    }
    wire
}

/// Connect to the MX and greet it; the EHLO reply must offer CHUNKING.
fn connect(server: &Server) -> Line {
    let mut c = Line::connect(server.smtp);
    assert!(c.reply().starts_with("220 "));
    let ehlo = c.ask("EHLO sender.test");
    assert!(ehlo.lines().any(|l| l == "250-CHUNKING"), "{ehlo}");
    c
}

/// The replies to come, one line each (none of them is multi-line).
fn replies(c: &mut Line, n: usize) -> Vec<String> {
    (0..n).map(|_| c.reply()).collect()
}

/// The stored message `id` without our `Received:` field.
fn stored_content(server: &Server, id: u64) -> Vec<u8> {
    let (st, out, err) = server.cli(&["queue", "show", &id.to_string(), "--body"], None);
    assert_eq!(st, 0, "queue show: {err}");
    // With --body, stdout is the message alone, exactly as stored.
    let (fields, rest) = split_received(out.as_bytes(), 1);
    assert!(
        fields[0].starts_with("Received: from sender.test (") && fields[0].contains("with ESMTP id "),
        "{fields:?}"
    );
    rest
}

fn queued_ids(server: &Server) -> Vec<u64> {
    let mut ids: Vec<u64> = server
        .queue()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    ids.sort_unstable();
    ids
}

#[test]
fn two_pipelined_bdat_messages_are_stored_intact() {
    let server = Server::start();
    server.account("acme", PW, &["example.org"]);
    // What would end or forge a message with DATA is plain content with BDAT.
    let one = "Subject: one\r\n\r\n.\r\n..two dots\r\nMAIL FROM:<evil@x.example>\r\n.\r\nlast\r\n";
    let two = "Subject: zwei\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGrüße ✓\r\n";
    let mut c = connect(&server);
    let mut wire = Vec::new();
    wire.extend_from_slice(b"MAIL FROM:<alice@sender.test>\r\nRCPT TO:<bob@example.org>\r\n");
    // Chunks of 7: boundaries fall inside CRLFs and before line-start dots.
    wire.extend_from_slice(&chunks(one.as_bytes(), 7));
    wire.extend_from_slice(b"RSET\r\nMAIL FROM:<alice@sender.test>\r\nRCPT TO:<carol@example.org>\r\n");
    wire.extend_from_slice(&chunks(two.as_bytes(), two.len()));
    wire.extend_from_slice(b"QUIT\r\n");
    c.send(&wire);

    let n_chunks = one.len().div_ceil(7);
    let mut want: Vec<String> = vec!["250 2.1.0 Sender OK".into(), "250 2.1.5 Recipient OK".into()];
    want.extend((1..n_chunks).map(|_| "250 2.0.0 7 octets received".to_string()));
    want.push("250 2.0.0 OK queued as *".into());
    want.extend(["250 2.0.0 OK", "250 2.1.0 Sender OK", "250 2.1.5 Recipient OK"].map(String::from));
    want.push("250 2.0.0 OK queued as *".into());
    want.push("221 *".into());
    let got = replies(&mut c, want.len());
    for (g, w) in got.iter().zip(&want) {
        assert!(
            odmr_proto::transcript::matches(w, g),
            "expected {w:?}, got {g:?}\nall: {got:#?}"
        );
    }
    assert_eq!(c.line(), None, "the server did not close after QUIT");

    let ids = queued_ids(&server);
    assert_eq!(ids.len(), 2, "{}", server.queue());
    assert_same_bytes(&stored_content(&server, ids[0]), one.as_bytes(), "message one");
    assert_same_bytes(&stored_content(&server, ids[1]), two.as_bytes(), "message two");
    let q = server.queue();
    let sizes: Vec<u64> = q
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["size"].as_u64().unwrap())
        .collect();
    assert!(sizes.iter().all(|&s| s > 0), "{q}");
}

#[test]
fn refused_chunks_are_read_and_dropped_and_a_bad_bdat_closes() {
    let server = Server::start_with("max_message_size = 65536", "");
    server.account("acme", PW, &["example.org"]);
    let mut c = connect(&server);
    // Commands hidden in chunks that are refused must never run.
    let hidden = b"RSET\r\nMAIL FROM:<evil@x.example>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n";
    let mut wire = Vec::new();
    // No transaction yet.
    wire.extend_from_slice(format!("BDAT {}\r\n", hidden.len()).as_bytes());
    wire.extend_from_slice(hidden);
    // Bare LF: judged at LAST, like DATA content.
    wire.extend_from_slice(b"MAIL FROM:<alice@sender.test>\r\nRCPT TO:<bob@example.org>\r\n");
    wire.extend_from_slice(&chunks(b"Subject: x\r\n\r\nbare\nLF\r\n", 10));
    // Over the size limit at the second chunk; the chunk in flight behind it gets 503.
    wire.extend_from_slice(b"MAIL FROM:<alice@sender.test>\r\nRCPT TO:<bob@example.org>\r\n");
    for n in [40_000, 40_000] {
        wire.extend_from_slice(format!("BDAT {n}\r\n").as_bytes());
        wire.extend(std::iter::repeat_n(b'x', n));
    }
    wire.extend_from_slice(format!("BDAT {} LAST\r\n", hidden.len()).as_bytes());
    wire.extend_from_slice(hidden);
    wire.extend_from_slice(b"RSET\r\n");
    // Abandoned between chunks: the open message is dropped.
    wire.extend_from_slice(b"MAIL FROM:<alice@sender.test>\r\nRCPT TO:<bob@example.org>\r\n");
    wire.extend_from_slice(b"BDAT 12\r\nSubject: a\r\n");
    wire.extend_from_slice(b"RSET\r\n");
    c.send(&wire);
    let got = replies(&mut c, 16);
    let want = [
        "503 5.5.1 Need MAIL command first",
        "250 2.1.0 Sender OK",
        "250 2.1.5 Recipient OK",
        "250 2.0.0 10 octets received",
        "250 2.0.0 10 octets received",
        "554 5.6.0 Message refused: bare CR or LF; lines must end with CRLF",
        "250 2.1.0 Sender OK",
        "250 2.1.5 Recipient OK",
        "250 2.0.0 40000 octets received",
        "552 5.3.4 Message size exceeds the limit of 65536 octets",
        "503 5.5.1 A chunk of this transaction was refused; send RSET",
        "250 2.0.0 OK",
        "250 2.1.0 Sender OK",
        "250 2.1.5 Recipient OK",
        "250 2.0.0 12 octets received",
        "250 2.0.0 OK",
    ];
    assert_eq!(got, want);
    assert!(
        server.logged("message abandoned by the client between chunks"),
        "{}",
        server.log()
    );

    // A size we cannot read: what follows cannot be told from commands, so the session ends.
    c.send(b"BDAT many LAST\r\nNOOP\r\n");
    let r = c.reply();
    assert!(r.starts_with("421 4.5.4 Syntax: BDAT chunk-size [LAST]: "), "{r}");
    assert_eq!(c.line(), None, "the session goes on after an unparsable BDAT");
    assert!(
        server.queue().as_array().unwrap().is_empty(),
        "{}",
        server.queue()
    );
}

// ----- the customer's reversed session -----

const USER: &str = "acme";
const PASS: &str = "s3cret pass";

/// The replies the scripted provider recorded to `cmd` ("DATA-END" for a LAST chunk).
fn replies_to(ev: &[Value], cmd: &str) -> Vec<String> {
    ev.iter()
        .filter(|e| e["event"] == "reply" && e["to"].as_str().unwrap_or("").starts_with(cmd))
        .map(|e| e["reply"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_customer_takes_bdat_from_the_provider() {
    let dir = tempfile::tempdir().unwrap();
    let tricky = tricky_message("bob@example.org");
    // No final line end: the customer stores it with one, as a DATA sender would have sent it.
    let unended = "Subject: no line end\n\nthe last line has none";
    let file = dir.path().join("messages.json");
    let messages = json!([
        {"from": "alice@sender.test", "to": ["bob@example.org"], "data": tricky},
        {"from": "alice@sender.test", "to": ["carol@example.org"], "data": unended},
    ]);
    std::fs::write(&file, messages.to_string()).unwrap();
    let args = [
        "--user",
        USER,
        "--password",
        PASS,
        "--read-timeout",
        "20",
        "--messages",
        file.to_str().unwrap(),
        "--bdat",
        "100",
    ];
    let Some(p) = PyPeer::start("client_provider.py", &args, false) else {
        return;
    };
    let root = dir.path().join("mail");
    let config = ProviderCfg::new(p.port, USER, PASS, &["example.org"], maildir_in(&root)).write(dir.path());
    let run = client_once(&config);
    assert!(
        p.wait_line(30, |l| l.contains("\"event\": \"done\"")),
        "the scripted provider did not finish: {:#?}\n{}\nclient:\n{}",
        p.lines(),
        p.stderr(),
        run.stderr
    );
    let ev = p.events();
    let errors: Vec<_> = ev.iter().filter(|e| e["event"] == "error").collect();
    assert!(
        errors.is_empty(),
        "{errors:#?}\nall: {ev:#?}\nclient:\n{}",
        run.stderr
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);

    let ends = replies_to(&ev, "DATA-END");
    assert!(
        ends.len() == 2
            && ends
                .iter()
                .all(|r| r.starts_with("250 2.0.0 OK delivered locally")),
        "{ev:#?}"
    );
    let chunk_replies = replies_to(&ev, "BDAT ");
    assert!(
        !chunk_replies.is_empty() && chunk_replies.iter().all(|r| r == "250 2.0.0 100 octets received"),
        "{chunk_replies:?}"
    );
    for (local, body) in [
        ("bob", tricky.as_bytes().to_vec()),
        ("carol", format!("{unended}\n").into_bytes()),
    ] {
        let (new, tmp, _) = maildir(&root, "example.org", local);
        assert_eq!(new.len(), 1, "{local}: {:?}\n{}", all_files(&root), run.stderr);
        assert!(tmp.is_empty());
        let bytes = std::fs::read(&new[0]).unwrap();
        let head = format!("Return-Path: <alice@sender.test>\nDelivered-To: {local}@example.org\n");
        assert!(bytes.starts_with(head.as_bytes()), "{local}");
        let (fields, rest) = split_received(&bytes[head.len()..], 1);
        assert!(
            fields[0].starts_with("Received: from provider.test "),
            "{fields:?}"
        );
        assert_same_bytes(&rest, &body, local);
    }
}
