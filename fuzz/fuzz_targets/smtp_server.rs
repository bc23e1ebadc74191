//! `SmtpServer` driven by arbitrary client bytes, as the async driver does.
//!
//! Input: the common header, then what the client sends. Flags (octet 0): bit 0 offer STARTTLS,
//! bit 1 `check_sender` (customer mode), bit 2 `eight_bit_mime`, bit 3 `smtputf8`, bits 4-5 the
//! message size limit (64, 1000, 50 MiB, 0 = none), bit 6 small recipient and `Received:` limits, bit 7
//! one message per session. CHUNKING (BDAT) is offered, as both drivers do, except when bits 6
//! and 7 are both set (no octet is left for a flag of its own; those inputs keep BDAT's 502
//! path, whose chunk octets then arrive as commands). In MX mode (`check_sender` off) AUTH and
//! ETRN are offered, as `odmr server` does by default. Every decision step is answered from the decision tape (accept
//! or refuse a sender or recipient, `data_ready` or `data_refused`, `committed` Ok or Err, an
//! AUTH answer, an ETRN verdict).
//! STARTTLS is handled as the driver does: handshake (`tls_started`) if no input is buffered,
//! otherwise the connection is closed. Checks:
//! - no panic, and every poll ends in a step: `NeedInput` once the input is used up, or
//!   `Close`/`StartTls` (at most `MAX_IDLE_POLLS` polls in a row consume nothing);
//! - after `NeedInput` fewer than `MAX_COMMAND_LINE` octets stay buffered (bounded memory;
//!   `MAX_AUTH_LINE` when AUTH is offered, for SASL exchange lines);
//! - authenticated only in the `auth_answer` call that writes the 235;
//! - `Etrn` names a valid lower-case domain, and each verdict is answered with one line with
//!   its code;
//! - output bounded by what was consumed; the body of one message (including our `Received:`
//!   header) never exceeds the size limit by more than the header;
//! - `CheckRecipient` names the domain of the address; `EndData`'s size is within the limit;
//! - `in_data()` is true exactly while a message is open at the driver (from `data_ready` to
//!   `EndData`, `AbortData` or `Reset`), whenever the machine asks for input: with BDAT that
//!   includes the time between chunks, and a refused chunk being skipped opens nothing;
//! - `Reset` or `AbortData` is how an open message ends without `EndData`; nothing else does;
//! - `Close` and `StartTls` are final until answered: polling again consumes nothing;
//! - in customer mode the driver sometimes defers a verdict (`defer_commit`): at most one is
//!   ever outstanding, `Settle` comes only then, and never `NeedInput` or `Close` before it.

#![no_main]

mod common;

use bytes::BytesMut;
use common::{check_output_bound, feed, Input, Progress};
use libfuzzer_sys::fuzz_target;
use odmr_proto::auth::{AuthAnswer, AuthConfig, AuthStep, MAX_AUTH_LINE};
use odmr_proto::envelope::address_domain;
use odmr_proto::reply::Reply;
use odmr_proto::sasl::cram_md5::CramSecret;
use odmr_proto::smtp_server::{
    EtrnVerdict, PeerInfo, RcptVerdict, ServerConfig, ServerStep, SmtpServer, MAX_COMMAND_LINE,
};

/// Our `Received:` header is at most this long: the HELO name and the address are each bounded
/// by the command line length.
const MAX_RECEIVED_HEADER: u64 = 3 * MAX_COMMAND_LINE as u64 + 512;

fuzz_target!(|data: &[u8]| {
    let Input {
        flags,
        mut decisions,
        mut chunks,
    } = Input::parse(data);
    let mut cfg = ServerConfig::new("mx.example.net");
    cfg.starttls = flags & 1 != 0;
    cfg.check_sender = flags & 2 != 0;
    cfg.eight_bit_mime = flags & 4 != 0;
    cfg.smtputf8 = flags & 8 != 0;
    cfg.max_message_size = [64, 1000, 50 << 20, 0][usize::from((flags >> 4) & 3)];
    if flags & 0x40 != 0 {
        cfg.max_recipients = 2;
        cfg.max_received = 1;
    }
    if flags & 0x80 != 0 {
        cfg.max_messages = 1;
    }
    cfg.chunking = flags & 0xC0 != 0xC0;
    // 0 is "no fixed maximum" (RFC 1870 §4: the customer's session in front of a local MTA that
    // states none); the body still streams in bounded pieces.
    let max_size = match cfg.max_message_size {
        0 => u64::MAX,
        m => m,
    };
    let mx = !cfg.check_sender;
    cfg.etrn = mx;
    let mut s = SmtpServer::new(
        cfg,
        PeerInfo {
            ip: "192.0.2.1".into(),
            session: "fuzz".into(),
        },
    );
    if mx {
        s.enable_auth(AuthConfig::default(), 0x5eed, 1_800_000_000);
    }
    let max_buffered = if mx { MAX_AUTH_LINE } else { MAX_COMMAND_LINE };

    let mut input = BytesMut::new();
    let mut progress = Progress::default();
    let mut out_total = s.output().len();
    s.output().clear();
    let mut consumed = 0usize;
    let mut body_len: u64 = 0;
    let mut in_message = false;
    let mut queued = 0u64;
    // A verdict deferred by the customer's driver (`defer_commit`): whether it will be a 250.
    let mut deferred: Option<bool> = None;

    loop {
        let before = input.len();
        let step = s.poll(&mut input);
        let after = input.len();
        progress.poll(before, after, &step);
        consumed += before - after;
        out_total += s.output().len();
        common::trace(&step, s.output());
        s.output().clear();
        check_output_bound(out_total, consumed);

        match step {
            ServerStep::NeedInput => {
                assert!(deferred.is_none(), "waiting for input with a verdict deferred");
                assert!(
                    input.len() < max_buffered,
                    "{} octets buffered after NeedInput",
                    input.len()
                );
                assert_eq!(
                    s.in_data(),
                    in_message,
                    "in_data() disagrees with the open message"
                );
                if !feed(&mut chunks, &mut input, &mut progress) {
                    // End of stream: the driver asks whether a message was in flight.
                    let _ = s.in_data();
                    break;
                }
            }
            ServerStep::CheckSender { .. } => {
                if decisions.next() % 3 == 2 {
                    s.sender_verdict(Err(Reply::new(451, "4.3.0", "local MTA busy")));
                } else {
                    s.sender_verdict(Ok(()));
                }
            }
            ServerStep::CheckRecipient { address, domain } => {
                assert_eq!(address_domain(&address).as_deref(), Some(domain.as_str()));
                match decisions.next() % 4 {
                    0 | 1 => s.recipient_verdict(RcptVerdict::Accept),
                    2 => s.recipient_verdict(RcptVerdict::NotHosted),
                    _ => s.recipient_verdict(RcptVerdict::Refuse(Reply::new(
                        451,
                        "4.3.0",
                        "store unavailable",
                    ))),
                }
            }
            ServerStep::StartData(env) => {
                assert!(!env.recipients.is_empty(), "DATA with no recipient");
                assert!(!in_message);
                if decisions.next() % 5 == 4 {
                    s.data_refused(Reply::new(451, "4.3.0", "store unavailable"));
                } else {
                    s.data_ready("Sun, 22 Nov 2026 12:00:00 +0000");
                    in_message = true;
                    body_len = 0;
                }
            }
            ServerStep::Body(b) => {
                assert!(in_message, "Body outside a message");
                assert!(!b.is_empty(), "empty Body step");
                body_len += b.len() as u64;
                assert!(
                    body_len <= max_size.saturating_add(MAX_RECEIVED_HEADER),
                    "{body_len} body octets streamed with a limit of {max_size}"
                );
            }
            ServerStep::EndData { size, .. } => {
                assert!(in_message);
                assert!(size <= max_size, "EndData of {size} octets, limit {max_size}");
                assert!(deferred.is_none(), "a second verdict deferred");
                in_message = false;
                let d = decisions.next();
                if !mx && d % 8 >= 5 {
                    // The customer's relay: the verdict comes with a later reply.
                    s.defer_commit();
                    deferred = Some(d % 8 != 7);
                } else if d % 4 == 3 {
                    s.committed(Err(Reply::new(451, "4.3.0", "commit failed")));
                } else {
                    queued += 1;
                    s.committed(Ok(format!("OK queued as {queued}")));
                    assert_eq!(s.messages(), queued);
                }
            }
            ServerStep::Settle => {
                let Some(ok) = deferred.take() else {
                    panic!("Settle without a deferred verdict")
                };
                if ok {
                    queued += 1;
                    s.committed(Ok(format!("OK queued as {queued}")));
                    assert_eq!(s.messages(), queued);
                } else {
                    s.committed(Err(Reply::new(451, "4.3.0", "commit failed")));
                }
            }
            ServerStep::AbortData => {
                assert!(in_message);
                in_message = false;
            }
            // RSET or EHLO, also between BDAT chunks with a message open; or a refused first
            // chunk ended the transaction.
            ServerStep::Reset => in_message = false,
            ServerStep::Auth(step) => {
                assert!(
                    mx && s.account().is_none(),
                    "AUTH step while not offered or authenticated"
                );
                if matches!(step, AuthStep::CheckPassword { .. } | AuthStep::External { .. }) {
                    assert!(s.is_tls(), "PLAIN/LOGIN/EXTERNAL without TLS");
                }
                let answer = match (decisions.next() % 3, &step) {
                    (2, _) => AuthAnswer::TemporaryFailure,
                    (d, AuthStep::LookupSecret { .. }) => {
                        AuthAnswer::Secret((d == 0).then(|| CramSecret::from_password(b"pw")))
                    }
                    (_, AuthStep::LookupScram { .. }) => AuthAnswer::Scram(None),
                    (d, AuthStep::CheckPassword { .. }) => AuthAnswer::Password(d == 0),
                    (d, AuthStep::External { .. }) => AuthAnswer::External((d == 0).then(|| "acme".into())),
                };
                let r = s.auth_answer(answer);
                let out = std::mem::take(s.output());
                out_total += out.len();
                assert_eq!(
                    r == Some(true),
                    out.starts_with(b"235 2.7.0 Authentication successful\r\n"),
                    "auth_answer() = {r:?}, wrote {:?}",
                    String::from_utf8_lossy(&out)
                );
                assert_eq!(r == Some(true), s.account().is_some());
            }
            ServerStep::Etrn { node, subdomains: _ } => {
                assert!(mx, "ETRN step while not offered");
                assert!(
                    node.contains('.')
                        && node
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'),
                    "ETRN node {node:?}"
                );
                let (verdict, code) = match decisions.next() % 6 {
                    0 => (EtrnVerdict::Started, b"250 "),
                    1 => (EtrnVerdict::NoMessages, b"251 "),
                    2 => (EtrnVerdict::Pending, b"252 "),
                    3 => (EtrnVerdict::PendingCount(7), b"253 "),
                    4 => (EtrnVerdict::Unable("busy".into()), b"458 "),
                    _ => (EtrnVerdict::NotAllowed, b"459 "),
                };
                s.etrn_verdict(verdict);
                let out = std::mem::take(s.output());
                out_total += out.len();
                assert!(
                    out.starts_with(code) && out.iter().filter(|&&b| b == b'\n').count() == 1,
                    "ETRN reply {:?}",
                    String::from_utf8_lossy(&out)
                );
            }
            ServerStep::StartTls => {
                let again = s.poll(&mut input);
                assert_eq!(again, ServerStep::StartTls);
                assert_eq!(
                    input.len(),
                    after,
                    "input consumed while waiting for the handshake"
                );
                if !input.is_empty() {
                    // Plaintext after STARTTLS: the driver closes the connection.
                    break;
                }
                s.tls_started();
                assert!(s.is_tls());
                assert_eq!(s.helo(), None);
            }
            ServerStep::Close => {
                assert!(deferred.is_none(), "closing with a verdict deferred");
                assert_eq!(s.poll(&mut input), ServerStep::Close);
                assert_eq!(input.len(), after, "input consumed after Close");
                break;
            }
        }
    }
});
