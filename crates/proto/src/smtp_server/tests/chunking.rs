//! CHUNKING (RFC 3030): BDAT messages, refused chunks, and the deferred commit they are
//! pipelined behind.

use super::*;

/// A session offering CHUNKING, size limit `max` (0: none), greeting already taken.
fn chunking(max: u64) -> SmtpServer {
    let mut cfg = ServerConfig::new("mx.example.net");
    cfg.max_message_size = max;
    cfg.chunking = true;
    let mut s = server(cfg, "192.0.2.1", "b");
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
