use super::*;

fn session(max: u64) -> SmtpServer {
    let mut cfg = ServerConfig::new("mx.example.net");
    cfg.max_message_size = max;
    SmtpServer::new(
        cfg,
        PeerInfo {
            ip: "192.0.2.1".into(),
            session: "s1".into(),
        },
    )
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
    assert_eq!(s.poll(&mut input), ServerStep::NeedInput);
    let out = String::from_utf8(std::mem::take(s.output())).unwrap();
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
    let mut s = SmtpServer::new(
        cfg,
        PeerInfo {
            ip: "192.0.2.1".into(),
            session: "s".into(),
        },
    );
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
    let mut s = SmtpServer::new(
        cfg,
        PeerInfo {
            ip: "192.0.2.9".into(),
            session: "r".into(),
        },
    );
    let mut input = BytesMut::from("EHLO provider\r\n");
    assert_eq!(s.poll(&mut input), ServerStep::NeedInput);
    let ehlo = String::from_utf8(std::mem::take(s.output())).unwrap();
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
    assert_eq!(s.poll(&mut input), ServerStep::NeedInput);
    let out = String::from_utf8(std::mem::take(s.output())).unwrap();
    assert!(
        out.contains("452 4.5.3") && out.ends_with("250 2.0.0 OK\r\n"),
        "{out}"
    );
}

#[test]
fn starttls_stops_consuming_and_forgets_the_session() {
    let mut cfg = ServerConfig::new("mx.example.net");
    cfg.starttls = true;
    let mut s = SmtpServer::new(
        cfg,
        PeerInfo {
            ip: "192.0.2.1".into(),
            session: "t".into(),
        },
    );
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
    assert_eq!(s.poll(&mut input), ServerStep::NeedInput);
    let out = String::from_utf8(std::mem::take(s.output())).unwrap();
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
    assert_eq!(s.poll(&mut input), ServerStep::NeedInput);
    let ehlo = String::from_utf8(std::mem::take(s.output())).unwrap();
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
    let mut s = SmtpServer::new(
        cfg,
        PeerInfo {
            ip: "192.0.2.9".into(),
            session: "r".into(),
        },
    );
    let mut input = BytesMut::from(
        "EHLO provider\r\nMAIL FROM:<a@b.example> RET=FULL\r\nMAIL FROM:<a@b.example>\r\n\
         RCPT TO:<x@c.example> NOTIFY=NEVER\r\n",
    );
    assert_eq!(s.poll(&mut input), ServerStep::NeedInput);
    let out = String::from_utf8(std::mem::take(s.output())).unwrap();
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
    let mut s = SmtpServer::new(
        cfg,
        PeerInfo {
            ip: "192.0.2.1".into(),
            session: "m".into(),
        },
    );
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
    let mut s = SmtpServer::new(
        cfg,
        PeerInfo {
            ip: "192.0.2.1".into(),
            session: "e".into(),
        },
    );
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
    assert_eq!(s.poll(&mut input), ServerStep::NeedInput);
    let out = String::from_utf8(std::mem::take(s.output())).unwrap();
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
        assert_eq!(s.poll(&mut input), ServerStep::NeedInput);
        let out = String::from_utf8(std::mem::take(s.output())).unwrap();
        assert_eq!(out, format!("{want}250 2.0.0 OK\r\n"));
    }
}

#[test]
fn auth_identifies_for_the_received_header_but_recipients_are_still_checked() {
    let mut s = mx(true, true);
    let mut input = BytesMut::from("EHLO c\r\nAUTH PLAIN\r\n");
    assert_eq!(s.poll(&mut input), ServerStep::NeedInput);
    let out = String::from_utf8(std::mem::take(s.output())).unwrap();
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
    assert_eq!(s.poll(&mut input), ServerStep::NeedInput);
    let out = String::from_utf8(std::mem::take(s.output())).unwrap();
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
    let mut s = SmtpServer::new(
        cfg,
        PeerInfo {
            ip: "192.0.2.1".into(),
            session: "t".into(),
        },
    );
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
    assert_eq!(s.poll(&mut input), ServerStep::NeedInput);
    let out = String::from_utf8(std::mem::take(s.output())).unwrap();
    assert!(!out.contains("STARTTLS\r\n250"), "{out}");
    assert!(
        out.ends_with("503 5.5.1 STARTTLS is not allowed after AUTH\r\n"),
        "{out}"
    );
}

// --- CHUNKING / BDAT (RFC 3030) ---

/// A session offering CHUNKING, size limit `max` (0: none), greeting already taken.
fn chunking(max: u64) -> SmtpServer {
    let mut cfg = ServerConfig::new("mx.example.net");
    cfg.max_message_size = max;
    cfg.chunking = true;
    let mut s = SmtpServer::new(
        cfg,
        PeerInfo {
            ip: "192.0.2.1".into(),
            session: "b".into(),
        },
    );
    s.output().clear();
    s
}

/// What a driver saw: the output, the steps other than `Body`, the messages committed, the
/// body octets streamed (committed or not) and the largest `Body` piece.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Seen {
    out: String,
    steps: Vec<&'static str>,
    messages: Vec<Vec<u8>>,
    streamed: Vec<u8>,
    biggest: usize,
}

/// A driver as the MX's: recipients at `refused.example` are not hosted, everything else is
/// accepted; messages are opened (unless `refuse_open`) and committed. Feeds `input` in
/// reads of `read` octets, polling until the machine wants more; stops at `Close`.
fn drive(s: &mut SmtpServer, input: &[u8], read: usize, refuse_open: bool) -> Seen {
    let mut seen = Seen::default();
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    let mut open = false;
    let mut reads = input.chunks(read.max(1));
    loop {
        let step = s.poll(&mut buf);
        seen.out
            .push_str(&String::from_utf8_lossy(&std::mem::take(s.output())));
        match step {
            ServerStep::NeedInput => match reads.next() {
                Some(r) => buf.extend_from_slice(r),
                None => break,
            },
            ServerStep::CheckRecipient { domain, .. } => {
                s.recipient_verdict(if domain == "refused.example" {
                    RcptVerdict::NotHosted
                } else {
                    RcptVerdict::Accept
                })
            }
            ServerStep::StartData(_) => {
                seen.steps.push("StartData");
                assert!(!open);
                if refuse_open {
                    s.data_refused(Reply::new(451, "4.3.0", "store unavailable"));
                } else {
                    open = true;
                    s.data_ready("Sun, 22 Nov 2026 12:00:00 +0000");
                }
            }
            ServerStep::Body(b) => {
                assert!(open, "Body outside a message");
                assert!(!b.is_empty());
                seen.biggest = seen.biggest.max(b.len());
                seen.streamed.extend_from_slice(&b);
                body.extend_from_slice(&b);
            }
            ServerStep::EndData { size, .. } => {
                seen.steps.push("EndData");
                assert!(open);
                open = false;
                let header_end = body.windows(2).position(|w| w == b";\r").unwrap();
                // Our Received: header: two more lines after its "for" clause.
                let content_start =
                    header_end + body[header_end..].windows(2).position(|w| w == b"\r\n").unwrap() + 2;
                let content_start = content_start
                    + body[content_start..]
                        .windows(2)
                        .position(|w| w == b"\r\n")
                        .unwrap()
                    + 2;
                assert!(body.starts_with(b"Received: from c ([192.0.2.1])"));
                assert_eq!(
                    size,
                    (body.len() - content_start) as u64,
                    "EndData size is the content's"
                );
                seen.messages.push(body.split_off(content_start));
                body.clear();
                s.committed(Ok(format!("OK queued as {}", seen.messages.len())));
            }
            ServerStep::AbortData => {
                seen.steps.push("AbortData");
                assert!(open);
                open = false;
                body.clear();
            }
            ServerStep::Reset => {
                seen.steps.push("Reset");
                open = false;
                body.clear();
            }
            ServerStep::Close => {
                seen.steps.push("Close");
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    seen.out
        .push_str(&String::from_utf8_lossy(&std::mem::take(s.output())));
    seen
}

/// The replies of `seen`, one per line.
fn replies(seen: &Seen) -> Vec<&str> {
    seen.out.lines().collect()
}

/// `BDAT n LAST` with `content`, n its length.
fn bdat_last(content: &[u8]) -> Vec<u8> {
    let mut v = format!("BDAT {} LAST\r\n", content.len()).into_bytes();
    v.extend_from_slice(content);
    v
}

const TX: &[u8] = b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@example.org>\r\n";

#[test]
fn chunking_is_offered_only_when_configured() {
    let mut s = chunking(1000);
    // BINARYMIME is not offered (RFC 3030 §3), and DATA still works (§2).
    let mut input = b"EHLO c\r\nHELP\r\nMAIL FROM:<a@b.example> BODY=BINARYMIME\r\n".to_vec();
    input.extend_from_slice(TX);
    input.extend_from_slice(b"DATA\r\n.x\r\n.\r\n");
    let seen = drive(&mut s, &input, 1 << 20, false);
    assert!(seen.out.contains("\r\n250-CHUNKING\r\n"), "{}", seen.out);
    assert!(seen.out.contains("DATA BDAT RSET"), "{}", seen.out);
    assert!(seen.out.contains("\r\n555 5.5.4 "), "{}", seen.out);
    assert_eq!(seen.messages, [b"x\r\n".to_vec()]);

    // Without it: no keyword, and BDAT is a command we do not implement, as before.
    let mut s = session(1000);
    s.output().clear();
    let mut input = b"EHLO c\r\nHELP\r\n".to_vec();
    input.extend_from_slice(TX);
    input.extend_from_slice(b"BDAT 3 LAST\r\n");
    let seen = drive(&mut s, &input, 1 << 20, false);
    assert!(!seen.out.contains("CHUNKING"), "{}", seen.out);
    let help = seen.out.lines().find(|l| l.starts_with("214 ")).unwrap();
    assert!(!help.contains("BDAT"), "{help}");
    assert!(
        seen.out
            .ends_with("502 5.5.1 BDAT not implemented on this listener\r\n"),
        "{}",
        seen.out
    );
}

#[test]
fn two_pipelined_bdat_messages_in_one_write() {
    let one = b"Subject: one\r\n\r\n.\r\nMAIL FROM:<evil@x.example>\r\n.\r\n".to_vec();
    let two = b"Subject: two\r\n\r\n..two dots stay two\r\n".to_vec();
    let mut input = b"EHLO c\r\n".to_vec();
    input.extend_from_slice(TX);
    input.extend_from_slice(&bdat_last(&one));
    input.extend_from_slice(b"RSET\r\n");
    input.extend_from_slice(TX);
    input.extend_from_slice(&bdat_last(&two));
    input.extend_from_slice(b"QUIT\r\n");
    let whole = drive(&mut chunking(1000), &input, input.len(), false);
    assert_eq!(whole.messages, [one, two]);
    assert_eq!(
        whole.steps,
        ["StartData", "EndData", "StartData", "EndData", "Close"]
    );
    let r = replies(&whole);
    assert!(r[0].starts_with("250-mx.example.net greets c"), "{r:?}");
    let after_ehlo: Vec<&str> = r
        .iter()
        .copied()
        .skip_while(|l| l.starts_with("250-"))
        .skip(1)
        .collect();
    assert_eq!(
        after_ehlo,
        [
            "250 2.1.0 Sender OK",
            "250 2.1.5 Recipient OK",
            "250 2.0.0 OK queued as 1",
            "250 2.0.0 OK",
            "250 2.1.0 Sender OK",
            "250 2.1.5 Recipient OK",
            "250 2.0.0 OK queued as 2",
            "221 2.0.0 mx.example.net closing connection",
        ]
    );
    // However the client's octets arrive, the outcome is the same.
    for read in [1, 2, 3, 7, 64] {
        let seen = drive(&mut chunking(1000), &input, read, false);
        assert_eq!(
            Seen { biggest: 0, ..seen },
            Seen {
                biggest: 0,
                ..whole.clone()
            },
            "reads of {read}"
        );
    }
}

/// A driver as the customer's relay: every recipient accepted, every message opened, every
/// verdict deferred. At each `Settle`, `verdict` sees the output so far and gives the
/// verdict. Returns the output and the steps, up to `Close` or `NeedInput`.
fn drive_deferring(
    s: &mut SmtpServer,
    buf: &mut BytesMut,
    mut verdict: impl FnMut(&str) -> Result<String, Reply>,
) -> (String, Vec<&'static str>) {
    let (mut out, mut steps, mut outstanding) = (String::new(), Vec::new(), false);
    loop {
        let step = s.poll(buf);
        out.push_str(&String::from_utf8_lossy(&std::mem::take(s.output())));
        match step {
            ServerStep::CheckRecipient { .. } => s.recipient_verdict(RcptVerdict::Accept),
            ServerStep::StartData(_) => {
                steps.push("StartData");
                s.data_ready("Sun, 22 Nov 2026 12:00:00 +0000");
            }
            ServerStep::Body(_) => {}
            ServerStep::EndData { .. } => {
                steps.push("EndData");
                assert!(!outstanding, "a second verdict deferred");
                outstanding = true;
                s.defer_commit();
            }
            ServerStep::Settle => {
                steps.push("Settle");
                assert!(outstanding, "Settle without a deferred verdict");
                outstanding = false;
                s.committed(verdict(&out));
            }
            ServerStep::Close => {
                steps.push("Close");
                return (out, steps);
            }
            ServerStep::NeedInput => {
                steps.push("NeedInput");
                return (out, steps);
            }
            step => panic!("unexpected {step:?}"),
        }
    }
}

/// The customer's relay defers each verdict (it reads the local MTA's final reply with the
/// next transaction's): the machine goes on with the RSET, MAIL, RCPT and BDAT already
/// read, holds their replies behind the verdict, and asks for the verdict (`Settle`)
/// before the next message ends and before QUIT; the replies come out in command order.
#[test]
fn a_deferred_verdict_lets_the_next_transaction_through_in_reply_order() {
    let mut input = b"EHLO c\r\n".to_vec();
    input.extend_from_slice(TX);
    input.extend_from_slice(&bdat_last(b"one\r\n"));
    // As our provider opens every transaction after the first, with BDAT.
    input.extend_from_slice(b"RSET\r\n");
    input.extend_from_slice(TX);
    input.extend_from_slice(&bdat_last(b"two\r\n"));
    input.extend_from_slice(b"QUIT\r\n");
    let (out, steps) = drive_deferring(&mut chunking(1000), &mut BytesMut::from(&input[..]), |out| {
        let given = out.matches("queued as").count();
        // Nothing behind the verdict has left yet.
        assert_eq!(out.matches("Sender OK").count(), given + 1, "{out}");
        Ok(format!("OK queued as {}", given + 1))
    });
    assert_eq!(
        steps,
        [
            "StartData",
            "EndData",
            "StartData",
            "Settle",
            "EndData",
            "Settle",
            "Close"
        ]
    );
    // Exactly the replies of a driver that commits at once.
    let at_once = drive(&mut chunking(1000), &input, input.len(), false);
    assert_eq!(out, at_once.out);
    assert_eq!(out.matches("OK queued as").count(), 2, "{out}");

    // Nothing more buffered: the verdict is asked for before the machine waits for input.
    let mut buf = BytesMut::from(&b"EHLO c\r\n"[..]);
    buf.extend_from_slice(TX);
    buf.extend_from_slice(&bdat_last(b"one\r\n"));
    let (out, steps) = drive_deferring(&mut chunking(1000), &mut buf, |_| {
        Err(Reply::new(451, "4.4.0", "local mail system unavailable"))
    });
    assert_eq!(steps, ["StartData", "EndData", "Settle", "NeedInput"]);
    assert!(
        out.ends_with("451 4.4.0 local mail system unavailable\r\n"),
        "{out}"
    );
}

/// A verdict is deferred and the client then sends what ends the session (a BDAT whose
/// size cannot be read: 421 and close) or waits for a 354: the verdict is asked for first,
/// and goes out before the replies behind it.
#[test]
fn a_deferred_verdict_is_settled_before_closing_or_waiting() {
    for (next, last) in [
        (&b"BDAT x LAST\r\n"[..], "421 4.5.4"),
        (
            &b"MAIL FROM:<a@b.example>\r\nRCPT TO:<y@example.org>\r\nDATA\r\n"[..],
            "354 ",
        ),
    ] {
        let mut buf = BytesMut::from(&b"EHLO c\r\n"[..]);
        buf.extend_from_slice(TX);
        buf.extend_from_slice(&bdat_last(b"one\r\n"));
        buf.extend_from_slice(next);
        let (out, _) = drive_deferring(&mut chunking(1000), &mut buf, |out| {
            assert!(!out.contains(last), "{last} left before the verdict: {out}");
            Ok("OK delivered".into())
        });
        let verdict = out.find("250 2.0.0 OK delivered").expect("verdict sent");
        assert!(out[verdict..].contains(last), "{out}");
    }
}

#[test]
fn a_message_in_several_chunks_is_kept_verbatim() {
    // Chunks cut inside a CRLF and right before a line-start dot.
    let mut input = b"EHLO c\r\n".to_vec();
    input.extend_from_slice(TX);
    input.extend_from_slice(b"BDAT 13\r\nSubject: x\r\n\r");
    input.extend_from_slice(b"BDAT 0\r\n");
    input.extend_from_slice(b"bdat 3\r\n\n.\r");
    input.extend_from_slice(b"BDAT 10 last\r\n\n.a\r\nend\r\n");
    input.extend_from_slice(b"NOOP\r\n");
    let whole = drive(&mut chunking(1000), &input, input.len(), false);
    assert_eq!(whole.messages, [b"Subject: x\r\n\r\n.\r\n.a\r\nend\r\n".to_vec()]);
    assert_eq!(whole.steps, ["StartData", "EndData"]);
    assert!(
        whole.out.ends_with(
            "250 2.1.5 Recipient OK\r\n250 2.0.0 13 octets received\r\n250 2.0.0 0 octets received\r\n\
             250 2.0.0 3 octets received\r\n250 2.0.0 OK queued as 1\r\n250 2.0.0 OK\r\n"
        ),
        "{}",
        whole.out
    );
    for read in [1, 5, 13] {
        let seen = drive(&mut chunking(1000), &input, read, false);
        assert_eq!(
            Seen { biggest: 0, ..seen },
            Seen {
                biggest: 0,
                ..whole.clone()
            },
            "reads of {read}"
        );
    }
}

#[test]
fn an_empty_last_chunk_and_an_unterminated_line() {
    let mut input = b"EHLO c\r\n".to_vec();
    input.extend_from_slice(TX);
    input.extend_from_slice(b"BDAT 0 LAST\r\n");
    input.extend_from_slice(TX);
    input.extend_from_slice(b"BDAT 9\r\nSubject: ");
    input.extend_from_slice(b"BDAT 1 LAST\r\nx");
    let seen = drive(&mut chunking(1000), &input, 4, false);
    // An empty message, as `DATA` then `.` gives; the line without CRLF gets one.
    assert_eq!(seen.messages, [b"".to_vec(), b"Subject: x\r\n".to_vec()]);
}

#[test]
fn large_chunks_leave_in_bounded_body_pieces() {
    let mut content = Vec::new();
    while content.len() < 5 * BODY_CHUNK {
        content.extend_from_slice(&[b'a'; 78]);
        content.extend_from_slice(b"\r\n");
    }
    let mut input = b"EHLO c\r\n".to_vec();
    input.extend_from_slice(TX);
    let half = content.len() / 2;
    input.extend_from_slice(format!("BDAT {half}\r\n").as_bytes());
    input.extend_from_slice(&content[..half]);
    input.extend_from_slice(&bdat_last(&content[half..]));
    let seen = drive(&mut chunking(0), &input, 100_000, false);
    assert_eq!(seen.messages, [content]);
    assert!(seen.biggest <= BODY_CHUNK, "a Body piece of {}", seen.biggest);
}

#[test]
fn content_is_judged_as_with_data_at_the_last_chunk() {
    for (content, want) in [
        (
            &b"a\nb\r\n"[..],
            "554 5.6.0 Message refused: bare CR or LF; lines must end with CRLF",
        ),
        (
            b"a\r",
            "554 5.6.0 Message refused: bare CR or LF; lines must end with CRLF",
        ),
        (
            b"a\x00\r\n",
            "554 5.6.0 Message refused: NUL octets are not allowed",
        ),
        (
            b"Received: a\r\nReceived: b\r\nReceived: c\r\n\r\n",
            "554 5.4.6 Mail loop: too many Received headers (3)",
        ),
        // 10 octets plus the CRLF that ends the last line: over a limit of 11.
        (
            b"0123456789x",
            "552 5.3.4 Message size exceeds the limit of 11 octets",
        ),
    ] {
        // The size case at its limit, the others far from it.
        let mut s = chunking(if want.starts_with("552") { 11 } else { 1000 });
        s.cfg.max_received = 2;
        let mut input = b"EHLO c\r\n".to_vec();
        input.extend_from_slice(TX);
        input.extend_from_slice(format!("BDAT {}\r\n", content.len() - 1).as_bytes());
        input.extend_from_slice(&content[..content.len() - 1]);
        input.extend_from_slice(&bdat_last(&content[content.len() - 1..]));
        input.extend_from_slice(b"NOOP\r\n");
        let seen = drive(&mut s, &input, 3, false);
        assert!(seen.messages.is_empty(), "{content:?}");
        assert_eq!(seen.steps, ["StartData", "AbortData"], "{content:?}");
        let r = replies(&seen);
        assert_eq!(r[r.len() - 2..], [want, "250 2.0.0 OK"], "{content:?}");
    }
}

/// Review findings: a RCPT after the first chunk would be told 250 and never get the
/// message; the chunks of a refused message, all on their way before the client can know,
/// must not count as errors (25 of them would otherwise end the session with 421).
#[test]
fn no_recipient_after_bdat_and_refused_chunks_are_not_errors() {
    let mut input = b"EHLO c\r\n".to_vec();
    input.extend_from_slice(TX);
    input.extend_from_slice(b"BDAT 4\r\nab\r\nRCPT TO:<y@example.org>\r\n");
    input.extend_from_slice(&bdat_last(b"cd\r\n"));
    input.extend_from_slice(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@refused.example>\r\n");
    for _ in 0..25 {
        input.extend_from_slice(b"BDAT 3\r\nab\n");
    }
    input.extend_from_slice(b"RSET\r\nNOOP\r\n");
    let seen = drive(&mut chunking(1000), &input, input.len(), false);
    let r = replies(&seen);
    assert!(r.contains(&"503 5.5.1 RCPT is not allowed after BDAT"), "{r:?}");
    assert_eq!(seen.messages, [b"ab\r\ncd\r\n".to_vec()]);
    assert_eq!(
        r.iter().filter(|l| l.starts_with("503 5.5.1 A chunk")).count(),
        24
    );
    assert_eq!(&r[r.len() - 2..], ["250 2.0.0 OK", "250 2.0.0 OK"], "{r:?}");
}

#[test]
fn refused_bdats_are_read_and_discarded_before_the_reply() {
    // Each chunk carries what would be commands if it were not skipped.
    let smuggled = b"RSET\r\nMAIL FROM:<e@x.example>\r\n";
    let chunk = |last: &str| {
        let mut v = format!("BDAT {}{last}\r\n", smuggled.len()).into_bytes();
        v.extend_from_slice(smuggled);
        v
    };
    let mut input = b"EHLO c\r\n".to_vec();
    // No MAIL yet.
    input.extend_from_slice(&chunk(""));
    // No accepted recipient: the chunk ends the transaction, and what is in flight gets 503.
    input.extend_from_slice(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@refused.example>\r\n");
    input.extend_from_slice(&chunk(""));
    input.extend_from_slice(&chunk(" LAST"));
    input.extend_from_slice(b"DATA\r\nRSET\r\n");
    // After LAST the transaction is over.
    input.extend_from_slice(TX);
    input.extend_from_slice(&bdat_last(b"ok\r\n"));
    input.extend_from_slice(&chunk(" LAST"));
    input.extend_from_slice(b"NOOP\r\n");
    for read in [1, 4, input.len()] {
        let seen = drive(&mut chunking(1000), &input, read, false);
        let r: Vec<&str> = replies(&seen)
            .into_iter()
            .skip_while(|l| l.starts_with("250-"))
            .skip(1)
            .collect();
        assert_eq!(
            r,
            [
                "503 5.5.1 Need MAIL command first",
                "250 2.1.0 Sender OK",
                "550 5.7.1 <x@refused.example>: relay access denied, domain not hosted here",
                "554 5.5.1 No valid recipients",
                "503 5.5.1 A chunk of this transaction was refused; send RSET",
                "503 5.5.1 DATA is not allowed after BDAT in the same transaction",
                "250 2.0.0 OK",
                "250 2.1.0 Sender OK",
                "250 2.1.5 Recipient OK",
                "250 2.0.0 OK queued as 1",
                "503 5.5.1 Need MAIL command first",
                "250 2.0.0 OK",
            ],
            "reads of {read}"
        );
        assert_eq!(seen.steps, ["Reset", "StartData", "EndData"]);
        assert_eq!(seen.messages, [b"ok\r\n".to_vec()]);
    }
}

#[test]
fn data_after_bdat_is_refused_and_the_message_stays_open_until_rset() {
    let mut s = chunking(1000);
    let mut input = b"EHLO c\r\n".to_vec();
    input.extend_from_slice(TX);
    input.extend_from_slice(b"BDAT 3\r\nab\n");
    input.extend_from_slice(b"DATA\r\n");
    let seen = drive(&mut s, &input, 1 << 20, false);
    assert!(
        seen.out.ends_with("250 2.0.0 3 octets received\r\n503 5.5.1 DATA is not allowed after BDAT in the same transaction\r\n"),
        "{}",
        seen.out
    );
    assert!(s.in_data(), "the BDAT message is open between chunks");
    let seen = drive(&mut s, b"RSET\r\n", 1 << 20, false);
    assert_eq!(seen.steps, ["Reset"]);
    assert_eq!(seen.out, "250 2.0.0 OK\r\n");
    assert!(!s.in_data());
}

#[test]
fn rset_ehlo_or_quit_between_chunks_abandon_the_message() {
    for (cmd, step, last) in [
        ("RSET", "Reset", "250 2.0.0 OK"),
        ("EHLO c", "Reset", "250 HELP"),
        ("QUIT", "Close", "221 2.0.0 mx.example.net closing connection"),
    ] {
        let mut s = chunking(1000);
        let mut input = b"EHLO c\r\n".to_vec();
        input.extend_from_slice(TX);
        input.extend_from_slice(b"BDAT 4\r\nab\r\n");
        let seen = drive(&mut s, &input, 1 << 20, false);
        assert_eq!(seen.steps, ["StartData"]);
        assert!(s.in_data());
        let seen = drive(&mut s, format!("{cmd}\r\n").as_bytes(), 1 << 20, false);
        assert_eq!(seen.steps, [step], "{cmd}");
        assert_eq!(replies(&seen).last(), Some(&last), "{cmd}");
        // After QUIT the driver finds in_data() true and discards the message itself.
        assert_eq!(s.in_data(), cmd == "QUIT", "{cmd}");
    }
    // The abandoned message is not delivered; a new transaction works as usual.
    let mut s = chunking(1000);
    let mut input = b"EHLO c\r\n".to_vec();
    input.extend_from_slice(TX);
    input.extend_from_slice(b"BDAT 4\r\nab\r\nRSET\r\n");
    input.extend_from_slice(TX);
    input.extend_from_slice(&bdat_last(b"cd\r\n"));
    let seen = drive(&mut s, &input, 2, false);
    assert_eq!(seen.steps, ["StartData", "Reset", "StartData", "EndData"]);
    assert_eq!(seen.messages, [b"cd\r\n".to_vec()]);
}

#[test]
fn a_chunk_over_the_size_limit_is_refused_at_once_and_not_stored() {
    let mut input = b"EHLO c\r\n".to_vec();
    input.extend_from_slice(TX);
    input.extend_from_slice(b"BDAT 60\r\n");
    input.extend_from_slice(&[b'x'; 60]);
    input.extend_from_slice(b"BDAT 60\r\n");
    input.extend_from_slice(&[b'y'; 60]);
    // Already in flight: read, dropped, 503.
    input.extend_from_slice(&bdat_last(b"z\r\n"));
    input.extend_from_slice(b"RSET\r\n");
    // The first chunk alone too big: nothing is opened.
    input.extend_from_slice(TX);
    input.extend_from_slice(&bdat_last(&[b'w'; 101]));
    input.extend_from_slice(b"NOOP\r\n");
    let mut s = chunking(100);
    let seen = drive(&mut s, &input, 16, false);
    assert!(seen.messages.is_empty());
    assert_eq!(seen.steps, ["StartData", "AbortData", "Reset"]);
    let r: Vec<&str> = replies(&seen)
        .into_iter()
        .skip_while(|l| l.starts_with("250-"))
        .skip(1)
        .collect();
    assert_eq!(
        r,
        [
            "250 2.1.0 Sender OK",
            "250 2.1.5 Recipient OK",
            "250 2.0.0 60 octets received",
            "552 5.3.4 Message size exceeds the limit of 100 octets",
            "503 5.5.1 A chunk of this transaction was refused; send RSET",
            "250 2.0.0 OK",
            "250 2.1.0 Sender OK",
            "250 2.1.5 Recipient OK",
            "552 5.3.4 Message size exceeds the limit of 100 octets",
            "250 2.0.0 OK",
        ]
    );
    // Nothing of the refused chunks reached the driver (which may not even have been
    // handed all of the first: the message was aborted).
    let text = String::from_utf8_lossy(&seen.streamed);
    let (header, content) = text.split_once("+0000\r\n").unwrap();
    assert!(header.starts_with("Received: "), "{text}");
    assert!(
        content.len() <= 60 && content.bytes().all(|b| b == b'x'),
        "{text}"
    );
}

#[test]
fn a_refused_open_sends_its_reply_after_the_chunk() {
    let mut input = b"EHLO c\r\n".to_vec();
    input.extend_from_slice(TX);
    input.extend_from_slice(&bdat_last(b"NOOP\r\n"));
    input.extend_from_slice(b"RCPT TO:<x@example.org>\r\n");
    let seen = drive(&mut chunking(1000), &input, 3, true);
    assert_eq!(seen.steps, ["StartData"]);
    assert!(
        seen.out.ends_with(
            "250 2.1.5 Recipient OK\r\n451 4.3.0 store unavailable\r\n503 5.5.1 Need MAIL command first\r\n"
        ),
        "{}",
        seen.out
    );
}

#[test]
fn a_commit_failure_after_last_is_the_chunk_reply() {
    let mut s = chunking(1000);
    let mut input = BytesMut::from("EHLO c\r\n");
    input.extend_from_slice(TX);
    input.extend_from_slice(&bdat_last(b"hi\r\n"));
    assert!(matches!(s.poll(&mut input), ServerStep::CheckRecipient { .. }));
    s.recipient_verdict(RcptVerdict::Accept);
    assert!(matches!(s.poll(&mut input), ServerStep::StartData(_)));
    assert!(s.in_data());
    s.data_ready("Sun, 22 Nov 2026 12:00:00 +0000");
    assert!(matches!(s.poll(&mut input), ServerStep::Body(_)));
    assert_eq!(
        s.poll(&mut input),
        ServerStep::EndData {
            size: 4,
            eight_bit: false
        }
    );
    // No 250 is written before the commit.
    assert!(s.output().ends_with(b"250 2.1.5 Recipient OK\r\n"));
    assert_eq!(
        s.poll(&mut input),
        ServerStep::EndData {
            size: 4,
            eight_bit: false
        }
    );
    s.output().clear();
    s.committed(Err(Reply::new(451, "4.3.0", "try later")));
    assert_eq!(s.output().as_slice(), b"451 4.3.0 try later\r\n");
    assert!(!s.in_data());
}

#[test]
fn an_unparsable_bdat_closes_the_session() {
    for args in [
        "",
        " ",
        "x",
        "-1",
        "+1",
        "1.5",
        "18446744073709551616",
        "1 LASTX",
        "1 LAST X",
        "1 FIRST",
        "1\tLAST",
    ] {
        let mut s = chunking(1000);
        let mut input = b"EHLO c\r\n".to_vec();
        input.extend_from_slice(TX);
        input.extend_from_slice(format!("BDAT {args}\r\nNOOP\r\n").as_bytes());
        let seen = drive(&mut s, &input, 1 << 20, false);
        assert_eq!(seen.steps, ["Close"], "{args:?}");
        let last = replies(&seen).last().copied().unwrap_or_default();
        assert!(
            last.starts_with("421 4.5.4 Syntax: BDAT chunk-size [LAST]: ")
                && last.ends_with("closing the session"),
            "{args:?}: {last}"
        );
        // The NOOP that follows is never executed.
        assert!(!seen.out.contains("250 2.0.0 OK"), "{args:?}");
        let mut rest = BytesMut::from("NOOP\r\n");
        assert_eq!(s.poll(&mut rest), ServerStep::Close);
    }
    assert_eq!(parse_bdat(b"0"), Ok((0, false)));
    assert_eq!(parse_bdat(b"007 last"), Ok((7, true)));
    assert_eq!(parse_bdat(b"18446744073709551615 LaSt "), Ok((u64::MAX, true)));
}

#[test]
fn a_huge_declared_chunk_is_refused_without_waiting_for_it() {
    // With a limit, a chunk over it is refused at once; the session then reads (and drops)
    // what the client sends of it, and memory never grows with the declared size.
    let mut s = chunking(1000);
    let mut input = b"EHLO c\r\n".to_vec();
    input.extend_from_slice(TX);
    input.extend_from_slice(b"BDAT 18446744073709551615 LAST\r\n");
    input.extend_from_slice(&[b'x'; 10_000]);
    let seen = drive(&mut s, &input, 1000, false);
    assert_eq!(seen.steps, ["Reset"]);
    assert!(!s.in_data());
    assert!(seen.out.ends_with("250 2.1.5 Recipient OK\r\n"), "{}", seen.out);
}
