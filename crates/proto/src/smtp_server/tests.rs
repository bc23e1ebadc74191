use super::*;

mod chunking;

/// A session configured by `cfg`, with a client at `ip`, logged as session `id`.
fn server(cfg: ServerConfig, ip: &str, id: &str) -> SmtpServer {
    SmtpServer::new(
        cfg,
        PeerInfo {
            ip: ip.into(),
            session: id.into(),
        },
    )
}

fn session(max: u64) -> SmtpServer {
    let mut cfg = ServerConfig::new("mx.example.net");
    cfg.max_message_size = max;
    server(cfg, "192.0.2.1", "s1")
}

/// Poll until the session wants more input; returns what it sent meanwhile.
#[track_caller]
fn replies(s: &mut SmtpServer, input: &mut BytesMut) -> String {
    assert_eq!(s.poll(input), ServerStep::NeedInput);
    String::from_utf8(std::mem::take(s.output())).unwrap()
}

/// Run to the DATA phase with one accepted recipient.
fn to_data(s: &mut SmtpServer, input: &mut BytesMut) {
    input.extend_from_slice(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@example.org>\r\nDATA\r\n");
    assert!(matches!(s.poll(input), ServerStep::CheckRecipient { .. }));
    s.recipient_verdict(RcptVerdict::Accept);
    assert!(matches!(s.poll(input), ServerStep::StartData(_)));
    s.data_ready("Sun, 22 Nov 2026 12:00:00 +0000");
    s.output().clear();
}

#[test]
fn shutdown_and_abort_421s_carry_enhanced_status_and_pass_held_replies() {
    let mut s = session(0);
    let mut input = BytesMut::new();
    s.output().clear();
    s.shutdown();
    s.abort("timed out");
    assert_eq!(
        s.output().as_slice(),
        b"421 4.3.2 mx.example.net shutting down, try again later\r\n\
          421 4.4.2 mx.example.net timed out, closing\r\n"
    );
    // Behind a deferred verdict the 421 still goes out at once.
    s.output().clear();
    to_data(&mut s, &mut input);
    input.extend_from_slice(b"x\r\n.\r\n");
    while !matches!(s.poll(&mut input), ServerStep::EndData { .. }) {}
    s.defer_commit();
    s.shutdown();
    assert!(
        s.output().starts_with(b"421 4.3.2 "),
        "{:?}",
        String::from_utf8_lossy(s.output())
    );
}

#[test]
fn large_bodies_leave_in_bounded_chunks() {
    let mut s = session(64 << 20);
    let mut input = BytesMut::new();
    to_data(&mut s, &mut input);
    let line = [b'a'; 998];
    let mut total = 0usize;
    let mut biggest = 0usize;
    for _ in 0..10_000 {
        input.extend_from_slice(&line);
        input.extend_from_slice(b"\r\n");
        loop {
            match s.poll(&mut input) {
                ServerStep::Body(b) => {
                    biggest = biggest.max(b.len());
                    total += b.len();
                }
                ServerStep::NeedInput => break,
                other => panic!("{other:?}"),
            }
        }
    }
    input.extend_from_slice(b".\r\n");
    loop {
        match s.poll(&mut input) {
            ServerStep::Body(b) => total += b.len(),
            ServerStep::EndData { size, .. } => {
                assert_eq!(size, 10_000 * 1000);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(biggest <= 2 * BODY_CHUNK, "chunk of {biggest}");
    assert!(total > 10_000 * 1000, "received header plus body");
    s.committed(Ok("OK queued as 7".into()));
    assert_eq!(s.output().as_slice(), b"250 2.0.0 OK queued as 7\r\n");
}

#[test]
fn size_zero_is_no_fixed_maximum() {
    let mut s = session(0);
    let mut input = BytesMut::from("EHLO c\r\nMAIL FROM:<a@b.example> SIZE=999999999999\r\n");
    assert!(matches!(
        s.poll(&mut input),
        ServerStep::CheckSender { .. } | ServerStep::NeedInput
    ));
    let out = String::from_utf8(s.output().clone()).unwrap();
    assert!(out.contains("250-SIZE 0\r\n"), "{out}");
    assert!(!out.contains("552"), "{out}");
}

#[test]
fn oversized_body_is_refused_at_the_end_and_the_session_goes_on() {
    let mut s = session(65536);
    let mut input = BytesMut::new();
    to_data(&mut s, &mut input);
    input.extend_from_slice(&vec![b'x'; 200_000]);
    input.extend_from_slice(b"\r\n.\r\nNOOP\r\n");
    let mut streamed = 0;
    loop {
        match s.poll(&mut input) {
            ServerStep::Body(b) => streamed += b.len(),
            ServerStep::AbortData => break,
            other => panic!("{other:?}"),
        }
    }
    assert!(
        streamed <= 65536 + 1024,
        "kept streaming past the limit: {streamed}"
    );
    let out = replies(&mut s, &mut input);
    assert!(out.starts_with("552 5.3.4 "), "{out}");
    assert!(out.ends_with("250 2.0.0 OK\r\n"), "{out}");
}

#[test]
fn commit_failure_is_a_temporary_refusal() {
    let mut s = session(1 << 20);
    let mut input = BytesMut::from("");
    to_data(&mut s, &mut input);
    input.extend_from_slice(b"hi\r\n.\r\n");
    while !matches!(s.poll(&mut input), ServerStep::EndData { .. }) {}
    s.committed(Err(Reply::new(451, "4.3.0", "try later")));
    assert_eq!(s.output().as_slice(), b"451 4.3.0 try later\r\n");
    // The transaction is over: RCPT needs a new MAIL.
    input.extend_from_slice(b"RCPT TO:<x@example.org>\r\n");
    s.output().clear();
    assert_eq!(s.poll(&mut input), ServerStep::NeedInput);
    assert!(s.output().starts_with(b"503"));
}

#[test]
fn too_many_errors_closes_with_421() {
    let mut s = session(1 << 20);
    let mut input = BytesMut::from(&b"BOGUS\r\n".repeat(30)[..]);
    assert_eq!(s.poll(&mut input), ServerStep::Close);
    let out = String::from_utf8(std::mem::take(s.output())).unwrap();
    assert!(out.trim_end().ends_with("too many errors, closing"), "{out}");
}

#[test]
fn too_many_recipients_gets_452() {
    let mut cfg = ServerConfig::new("mx");
    cfg.max_recipients = 100;
    let mut s = server(cfg, "192.0.2.1", "s");
    let mut input = BytesMut::from("HELO c\r\nMAIL FROM:<>\r\n");
    for i in 0..101 {
        input.extend_from_slice(format!("RCPT TO:<u{i}@example.org>\r\n").as_bytes());
    }
    let mut accepted = 0;
    loop {
        match s.poll(&mut input) {
            ServerStep::CheckRecipient { .. } => {
                accepted += 1;
                s.recipient_verdict(RcptVerdict::Accept)
            }
            ServerStep::NeedInput => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(accepted, 100);
    let out = String::from_utf8(std::mem::take(s.output())).unwrap();
    assert!(out.ends_with("452 4.5.3 Too many recipients\r\n"), "{out}");
}

#[test]
fn customer_mode_asks_about_senders_and_offers_only_what_the_sink_carries() {
    let mut cfg = ServerConfig::new("cust.example");
    cfg.check_sender = true;
    cfg.eight_bit_mime = false;
    cfg.smtputf8 = false;
    cfg.max_recipients = 1;
    let mut s = server(cfg, "192.0.2.9", "r");
    let mut input = BytesMut::from("EHLO provider\r\n");
    let ehlo = replies(&mut s, &mut input);
    assert!(
        !ehlo.contains("8BITMIME") && !ehlo.contains("SMTPUTF8") && ehlo.contains("PIPELINING"),
        "{ehlo}"
    );

    input.extend_from_slice(b"MAIL FROM:<a@b.example> BODY=8BITMIME\r\nMAIL FROM:<a@b.example>\r\n");
    assert_eq!(
        s.poll(&mut input),
        ServerStep::CheckSender {
            from: "a@b.example".into(),
            params: String::new()
        }
    );
    s.sender_verdict(Err(Reply::new(451, "4.3.0", "local MTA busy")));
    let out = String::from_utf8(std::mem::take(s.output())).unwrap();
    assert!(
        out.starts_with("555 ") && out.ends_with("451 4.3.0 local MTA busy\r\n"),
        "{out}"
    );

    input.extend_from_slice(
        b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@c.example>\r\nRCPT TO:<y@c.example>\r\nRSET\r\n",
    );
    assert!(matches!(s.poll(&mut input), ServerStep::CheckSender { .. }));
    s.sender_verdict(Ok(()));
    assert!(matches!(s.poll(&mut input), ServerStep::CheckRecipient { .. }));
    s.recipient_verdict(RcptVerdict::Accept);
    // One recipient per transaction: the second gets 452, then RSET tells the driver.
    assert_eq!(s.poll(&mut input), ServerStep::Reset);
    let out = replies(&mut s, &mut input);
    assert!(
        out.contains("452 4.5.3") && out.ends_with("250 2.0.0 OK\r\n"),
        "{out}"
    );
}

#[test]
fn starttls_stops_consuming_and_forgets_the_session() {
    let mut cfg = ServerConfig::new("mx.example.net");
    cfg.starttls = true;
    let mut s = server(cfg, "192.0.2.1", "t");
    let mut input = BytesMut::from("EHLO c\r\nSTARTTLS\r\nHELP\r\n");
    assert_eq!(s.poll(&mut input), ServerStep::StartTls);
    // The injected HELP is still buffered: the driver must see it and refuse to go on.
    assert_eq!(&input[..], b"HELP\r\n");
    let out = String::from_utf8(std::mem::take(s.output())).unwrap();
    assert!(
        out.contains("250-STARTTLS") && out.ends_with("220 2.0.0 Ready to start TLS\r\n"),
        "{out}"
    );
    assert_eq!(
        s.poll(&mut input),
        ServerStep::StartTls,
        "nothing is consumed until the handshake"
    );
    input.clear();
    s.tls_started();
    assert_eq!(s.helo(), None);
    input.extend_from_slice(b"MAIL FROM:<a@b.example>\r\nEHLO c\r\nSTARTTLS\r\n");
    let out = replies(&mut s, &mut input);
    assert!(out.starts_with("503 5.5.1 Send EHLO"), "{out}");
    assert!(
        !out.contains("STARTTLS\r\n250") && !out.contains("-STARTTLS"),
        "{out}"
    );
    assert!(out.ends_with("503 5.5.1 TLS is already active\r\n"), "{out}");
}

#[test]
fn dsn_is_offered_and_its_parameters_checked_and_kept() {
    let mut s = session(1 << 20);
    let mut input = BytesMut::from("EHLO c\r\n");
    let ehlo = replies(&mut s, &mut input);
    assert!(ehlo.contains("\r\n250-DSN\r\n"), "{ehlo}");

    input.extend_from_slice(
        b"MAIL FROM:<a@b.example> RET=HDRS RET=FULL\r\n\
          MAIL FROM:<a@b.example> ENVID=x+ZZ\r\n\
          MAIL FROM:<a@b.example> ENVID=QQ+2B1 ret=full BODY=8BITMIME\r\n\
          RCPT TO:<x@example.org> NOTIFY=NEVER,FAILURE\r\n\
          RCPT TO:<x@example.org> ORCPT=rfc822;x@example.org ORCPT=rfc822;y@example.org\r\n\
          RCPT TO:<x@example.org> NOTIFY=failure,delay ORCPT=rfc822;X+40example.org\r\n\
          DATA\r\n",
    );
    assert!(matches!(s.poll(&mut input), ServerStep::CheckRecipient { .. }));
    s.recipient_verdict(RcptVerdict::Accept);
    let ServerStep::StartData(env) = s.poll(&mut input) else {
        panic!("no DATA")
    };
    assert_eq!(env.mail_params, "BODY=8BITMIME RET=FULL ENVID=QQ+2B1");
    assert_eq!(
        env.recipients[0].params,
        "NOTIFY=FAILURE,DELAY ORCPT=rfc822;X+40example.org"
    );
    let out = String::from_utf8(std::mem::take(s.output())).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "501 5.5.4 Invalid DSN parameter: RET given more than once",
            "501 5.5.4 Invalid DSN parameter: ENVID must be 1 to 100 characters of xtext encoding printable US-ASCII",
            "250 2.1.0 Sender OK",
            "501 5.5.4 Invalid DSN parameter: NOTIFY=NEVER cannot be combined with other values",
            "501 5.5.4 Invalid DSN parameter: ORCPT given more than once",
            "250 2.1.5 Recipient OK",
        ]
    );
}

#[test]
fn without_dsn_its_parameters_are_not_offered() {
    let mut cfg = ServerConfig::new("cust.example");
    cfg.dsn = false;
    let mut s = server(cfg, "192.0.2.9", "r");
    let mut input = BytesMut::from(
        "EHLO provider\r\nMAIL FROM:<a@b.example> RET=FULL\r\nMAIL FROM:<a@b.example>\r\n\
         RCPT TO:<x@c.example> NOTIFY=NEVER\r\n",
    );
    let out = replies(&mut s, &mut input);
    assert!(!out.contains("DSN\r\n"), "{out}");
    assert!(
        out.ends_with(
            "555 5.5.4 DSN parameters are not offered here\r\n250 2.1.0 Sender OK\r\n\
             555 5.5.4 DSN parameters are not offered here\r\n"
        ),
        "{out}"
    );
}

#[test]
fn messages_per_session_are_limited() {
    let mut cfg = ServerConfig::new("mx");
    cfg.max_messages = 1;
    let mut s = server(cfg, "192.0.2.1", "m");
    let mut input = BytesMut::new();
    to_data(&mut s, &mut input);
    input.extend_from_slice(b"x\r\n.\r\nMAIL FROM:<a@b.example>\r\n");
    while !matches!(s.poll(&mut input), ServerStep::EndData { .. }) {}
    s.committed(Ok("OK".into()));
    assert_eq!(s.poll(&mut input), ServerStep::Close);
    assert!(s
        .output()
        .ends_with(b"421 4.7.0 mx too many messages in one session, reconnect\r\n"));
}

fn mx(etrn: bool, auth: bool) -> SmtpServer {
    let mut cfg = ServerConfig::new("mx");
    cfg.etrn = etrn;
    let mut s = server(cfg, "192.0.2.1", "e");
    if auth {
        s.enable_auth(AuthConfig::default(), 3, 1_800_000_000);
    }
    s.output().clear();
    s
}

#[test]
fn etrn_and_auth_are_offered_only_when_enabled() {
    let mut s = mx(false, false);
    let mut input = BytesMut::from("EHLO c\r\nETRN example.org\r\nAUTH CRAM-MD5\r\n");
    let out = replies(&mut s, &mut input);
    assert!(!out.contains("250-ETRN") && !out.contains("250-AUTH"), "{out}");
    assert!(out.contains("502 5.5.1 ETRN not implemented"), "{out}");
    assert!(
        out.ends_with("502 5.5.1 AUTH not implemented on this listener\r\n"),
        "{out}"
    );
}

#[test]
fn every_etrn_verdict_is_one_line_with_its_code() {
    for (v, want) in [
        (
            EtrnVerdict::Started,
            "250 2.0.0 Queuing for node @example.org started\r\n",
        ),
        (
            EtrnVerdict::NoMessages,
            "251 2.0.0 OK, no messages waiting for node @example.org\r\n",
        ),
        (
            EtrnVerdict::Pending,
            "252 2.0.0 OK, pending messages for node @example.org started\r\n",
        ),
        (
            EtrnVerdict::PendingCount(3),
            "253 2.0.0 OK, 3 pending messages for node @example.org started\r\n",
        ),
        (
            EtrnVerdict::Unable("busy".into()),
            "458 4.3.0 Unable to queue messages for node @example.org: busy\r\n",
        ),
        (
            EtrnVerdict::NotAllowed,
            "459 4.7.1 Node @example.org not allowed: not a domain this client may release\r\n",
        ),
    ] {
        let mut s = mx(true, false);
        let mut input = BytesMut::from("ETRN @Example.ORG\r\nNOOP\r\n");
        assert_eq!(
            s.poll(&mut input),
            ServerStep::Etrn {
                node: "example.org".into(),
                subdomains: true
            }
        );
        // Nothing more is read until the verdict.
        assert!(matches!(s.poll(&mut input), ServerStep::Etrn { .. }));
        assert_eq!(&input[..], b"NOOP\r\n");
        s.etrn_verdict(v);
        let out = replies(&mut s, &mut input);
        assert_eq!(out, format!("{want}250 2.0.0 OK\r\n"));
    }
}

#[test]
fn auth_identifies_for_the_received_header_but_recipients_are_still_checked() {
    let mut s = mx(true, true);
    let mut input = BytesMut::from("EHLO c\r\nAUTH PLAIN\r\n");
    let out = replies(&mut s, &mut input);
    assert!(out.contains("250-AUTH SCRAM-SHA-256 CRAM-MD5\r\n"), "{out}");
    assert!(
        out.ends_with("504 5.5.4 Mechanism available only after STARTTLS\r\n"),
        "{out}"
    );
    input.extend_from_slice(b"AUTH SCRAM-SHA-256\r\n");
    assert_eq!(s.poll(&mut input), ServerStep::NeedInput);
    assert_eq!(s.output().as_slice(), b"334 \r\n");
    s.output().clear();
    use crate::sasl::scram::{ScramClient, ScramVerifier};
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut client = ScramClient::new("acme", "pencil", "cnonce").unwrap();
    input.extend_from_slice(format!("{}\r\n", b64.encode(client.client_first())).as_bytes());
    assert_eq!(
        s.poll(&mut input),
        ServerStep::Auth(AuthStep::LookupScram { user: "acme".into() })
    );
    let v = ScramVerifier::from_password("pencil", b"0123456789abcdef", 4096).unwrap();
    assert_eq!(s.auth_answer(AuthAnswer::Scram(Some(v))), None);
    let out = String::from_utf8(std::mem::take(s.output())).unwrap();
    let first = b64.decode(out.trim_end().strip_prefix("334 ").unwrap()).unwrap();
    input.extend_from_slice(format!("{}\r\n", b64.encode(client.server_first(&first).unwrap())).as_bytes());
    let out = replies(&mut s, &mut input);
    client
        .server_final(&b64.decode(out.trim_end().strip_prefix("334 ").unwrap()).unwrap())
        .unwrap();
    input.extend_from_slice(b"\r\n");
    assert_eq!(s.poll(&mut input), ServerStep::NeedInput);
    assert_eq!(s.output().as_slice(), b"235 2.7.0 Authentication successful\r\n");
    assert_eq!(s.account(), Some("acme"));
    s.output().clear();

    input.extend_from_slice(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@elsewhere.example>\r\n");
    assert!(matches!(s.poll(&mut input), ServerStep::CheckRecipient { .. }));
    s.recipient_verdict(RcptVerdict::NotHosted);
    input.extend_from_slice(b"RCPT TO:<x@example.org>\r\nDATA\r\n");
    assert!(matches!(s.poll(&mut input), ServerStep::CheckRecipient { .. }));
    s.recipient_verdict(RcptVerdict::Accept);
    let ServerStep::StartData(env) = s.poll(&mut input) else {
        panic!()
    };
    assert_eq!(env.recipients.len(), 1, "the refused recipient stays refused");
    s.data_ready("Sun, 22 Nov 2026 12:00:00 +0000");
    input.extend_from_slice(b"x\r\n.\r\n");
    let ServerStep::Body(b) = s.poll(&mut input) else {
        panic!()
    };
    let header = String::from_utf8(b).unwrap();
    assert!(header.contains("with ESMTPA id e.1"), "{header}");
}

#[test]
fn starttls_is_refused_after_auth() {
    let mut cfg = ServerConfig::new("mx");
    cfg.starttls = true;
    let mut s = server(cfg, "192.0.2.1", "t");
    s.enable_auth(AuthConfig::default(), 3, 1);
    s.output().clear();
    let mut input = BytesMut::from("EHLO c\r\nAUTH CRAM-MD5\r\n");
    s.poll(&mut input);
    let out = String::from_utf8(std::mem::take(s.output())).unwrap();
    let challenge = out
        .lines()
        .last()
        .unwrap()
        .strip_prefix("334 ")
        .unwrap()
        .to_string();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let r = crate::sasl::cram_md5::client_response("acme", b"pw", &b64.decode(challenge).unwrap());
    input.extend_from_slice(format!("{}\r\n", b64.encode(r)).as_bytes());
    assert!(matches!(
        s.poll(&mut input),
        ServerStep::Auth(AuthStep::LookupSecret { .. })
    ));
    let secret = crate::sasl::cram_md5::CramSecret::from_password(b"pw");
    assert_eq!(s.auth_answer(AuthAnswer::Secret(Some(secret))), Some(true));
    input.extend_from_slice(b"EHLO c\r\nSTARTTLS\r\n");
    let out = replies(&mut s, &mut input);
    assert!(!out.contains("STARTTLS\r\n250"), "{out}");
    assert!(
        out.ends_with("503 5.5.1 STARTTLS is not allowed after AUTH\r\n"),
        "{out}"
    );
}
