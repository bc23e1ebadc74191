//! `Deliverer` (the provider's SMTP client after the turnaround) fed arbitrary customer replies.
//!
//! Input: the common header, then what the customer's SMTP server sends. The decision tape
//! picks, at each `Ready`, `hold()` (with messages in flight), `quit()` or `send()` of a message (0 to 3 recipients, 8-bit or not,
//! BODY/SMTPUTF8/DSN parameters, various sizes); at most `MAX_MESSAGES` are sent, then `quit()`.
//! `SendBody` is answered with `body()` in two pieces and `body_end()`. Checks:
//! - no panic; every poll ends in a step; at most `MAX_IDLE_POLLS` polls in a row consume
//!   nothing, and the whole run takes a bounded number of polls;
//! - the body goes out dot-stuffed, exactly as `DotStuffer` makes it, or, when the customer
//!   offers CHUNKING and PIPELINING (and the message is within `BDAT_MAX`), as one
//!   `BDAT n LAST` whose count is exact and whose content ends in CRLF;
//! - RCPT names only recipients of the message being sent (the last one handed over);
//! - `Finished` reports the messages in the order they were sent (with PIPELINING the next one
//!   goes out while the previous awaits its final reply), with one outcome per recipient, and
//!   `Delivered` only after the final dot was sent (outcomes come only from the peer's replies);
//! - `Done` is final: polling again consumes nothing;
//! - STARTTLS (the policy comes from the flags' top bits): `StartTls` is answered like the
//!   driver does, closing if the peer sent anything after its 220, else `tls_started()`; with
//!   `Required`, no MAIL goes out before TLS is active, and with `Never` no STARTTLS at all.

#![no_main]

mod common;

use bytes::BytesMut;
use common::{feed, Input, Progress};
use libfuzzer_sys::fuzz_target;
use odmr_proto::deliver::{DeliverStep, Deliverer, OutMessage, RcptOutcome, StartTls, BDAT_MAX};
use odmr_proto::dot::DotStuffer;
use odmr_proto::envelope::RcptEntry;
use std::collections::VecDeque;

const MAX_MESSAGES: usize = 4;
const BODY: &[u8] = b"Subject: fuzz\r\n\r\n.dot line\r\n..\r\nno final CRLF";

fn message(d: u8, n: usize) -> OutMessage {
    let recipients = (0..usize::from(d % 4))
        .map(|i| RcptEntry {
            address: format!("r{n}.{i}@example.org"),
            params: if i % 2 == 0 {
                String::new()
            } else {
                "NOTIFY=FAILURE ORCPT=rfc822;x@example.org".into()
            },
        })
        .collect();
    OutMessage {
        mail_from: if d & 0x80 != 0 {
            String::new()
        } else {
            "alice@sender.example".into()
        },
        mail_params: ["", "BODY=8BITMIME", "SMTPUTF8", "BODY=7BIT RET=HDRS ENVID=x"]
            [usize::from((d >> 3) & 3)]
        .into(),
        size: [45, 1000, 2_000_000, 0][usize::from((d >> 5) & 3)],
        eight_bit: d & 4 != 0,
        recipients,
    }
}

fn stuffed(pieces: &[&[u8]]) -> Vec<u8> {
    let mut s = DotStuffer::new();
    let mut out = Vec::new();
    for p in pieces {
        s.stuff(p, &mut out);
    }
    s.finish(&mut out);
    out
}

/// The pieces as one `BDAT n LAST` chunk, the content completed with CRLF (as DATA's end
/// marker would).
fn chunked(pieces: &[&[u8]]) -> Vec<u8> {
    let mut content = pieces.concat();
    if !content.is_empty() && !content.ends_with(b"\r\n") {
        content.extend_from_slice(b"\r\n");
    }
    let mut out = format!("BDAT {} LAST\r\n", content.len()).into_bytes();
    out.extend_from_slice(&content);
    out
}

fuzz_target!(|data: &[u8]| {
    let Input {
        flags,
        mut decisions,
        mut chunks,
    } = Input::parse(data);
    let split = usize::from(flags) % (BODY.len() + 1);
    let mut d = Deliverer::new("odmr.example.net");
    let policy = [StartTls::Never, StartTls::IfOffered, StartTls::Required, StartTls::IfOffered]
        [usize::from(flags >> 6)];
    d.set_starttls(policy);
    let mut input = BytesMut::new();
    let mut progress = Progress::default();
    let total_input = chunks.total_len();

    let mut sent = 0usize;
    // Messages handed over and not yet reported, oldest first, each with "final dot sent".
    let mut in_flight: VecDeque<(OutMessage, bool)> = VecDeque::new();

    loop {
        let before = input.len();
        let step = d.poll(&mut input);
        let after = input.len();
        progress.poll(before, after, &step);
        assert!(
            progress.polls <= 64 + 8 * total_input,
            "{} polls for {total_input} octets of input",
            progress.polls
        );
        let _ = d.waiting_for();
        let _ = d.caps();
        let out = std::mem::take(d.output());
        common::trace(&step, &out);
        for line in out.split(|&b| b == b'\n') {
            if line.starts_with(b"MAIL FROM:") && policy == StartTls::Required {
                assert!(d.tls_active(), "MAIL in plaintext although TLS is required");
            }
            if line.starts_with(b"STARTTLS") {
                assert_ne!(policy, StartTls::Never, "STARTTLS though never asked for");
                assert!(!d.tls_active(), "STARTTLS inside TLS");
            }
            if let Some(rest) = line.strip_prefix(b"RCPT TO:<") {
                let addr = &rest[..rest.iter().position(|&b| b == b'>').expect("RCPT without '>'")];
                let named = in_flight
                    .back()
                    .is_some_and(|(m, _)| m.recipients.iter().any(|r| r.address.as_bytes() == addr));
                assert!(
                    named,
                    "RCPT for {:?}, not a recipient of the message",
                    String::from_utf8_lossy(addr)
                );
            }
        }

        match step {
            DeliverStep::NeedInput => {
                if !feed(&mut chunks, &mut input, &mut progress) {
                    break;
                }
            }
            DeliverStep::Ready => {
                let dec = decisions.next();
                if dec % 8 == 6 && d.in_flight() > 0 {
                    d.hold();
                } else if sent >= MAX_MESSAGES || dec % 8 == 7 {
                    d.quit();
                } else {
                    let m = message(dec, sent);
                    sent += 1;
                    d.send(m.clone());
                    in_flight.push_back((m, false));
                }
            }
            DeliverStep::SendBody => {
                let (m, dot) = in_flight.back_mut().expect("SendBody without a message");
                assert!(!*dot, "SendBody twice for one message");
                *dot = true;
                let bdat = d.caps().chunking && d.caps().pipelining && m.size <= BDAT_MAX;
                let (a, b) = BODY.split_at(split);
                d.body(a);
                d.body(b);
                d.body_end();
                let expected = if bdat {
                    chunked(&[a, b])
                } else {
                    stuffed(&[a, b])
                };
                assert_eq!(*d.output(), expected, "body not sent as it should be");
                d.output().clear();
            }
            DeliverStep::Finished(outcomes) => {
                let (m, dot) = in_flight.pop_front().expect("Finished without a message");
                assert_eq!(outcomes.len(), m.recipients.len(), "one outcome per recipient");
                assert_eq!(d.in_flight(), in_flight.len(), "reported out of order");
                if outcomes.iter().any(|o| matches!(o, RcptOutcome::Delivered(_))) {
                    assert!(dot, "Delivered without the final dot: {outcomes:?}");
                }
            }
            DeliverStep::StartTls => {
                // The driver refuses a handshake behind plaintext octets (command injection)
                // and closes; the machine is not polled again.
                if !input.is_empty() {
                    break;
                }
                d.tls_started();
            }
            DeliverStep::Done => {
                assert_eq!(d.poll(&mut input), DeliverStep::Done);
                assert_eq!(input.len(), after, "input consumed after Done");
                break;
            }
        }
    }
});
