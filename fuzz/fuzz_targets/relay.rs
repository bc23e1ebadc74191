//! `Relay` (the customer's relay to its local MTA) fed arbitrary local-MTA replies and provider
//! events.
//!
//! Input: the common header, then what the local MTA sends (read in the tape's pieces whenever
//! the machine asks for input; end of stream is `closed_by_peer()`). Flags (octet 0): bit 0
//! LMTP, bit 1 large body pieces (past the relay's write threshold), bit 2 a write fails
//! (`io_failed`) at the write whose number is the flags' top bits. The decision tape picks each
//! provider event among those the reversed session can send at that point (MAIL, RCPT with or
//! without the provider's DATA already read, DATA, body pieces, the end of the body, RSET,
//! a settle, QUIT), as `SmtpServer` in customer mode would. Checks:
//! - no panic; every event ends in `Idle` within a bounded number of polls, the machine's
//!   setup in `Idle` or `Failed`;
//! - MAIL, RCPT and DATA get exactly one `Answer`, other events none; over LMTP at most one
//!   recipient per transaction is accepted;
//! - every message that reached `end` gets exactly one `Verdict`, in order: never more
//!   verdicts than ends, and none owed once `verdict_owed()` says so or after the session is
//!   closed;
//! - a 2xx verdict only after the local MTA's 2xx to a final dot: a `DialogueObserver`
//!   following what the machine wrote and the replies it consumed must have seen at least as
//!   many accepted messages as the machine gave 2xx verdicts;
//! - nothing is written or read after `Close`; each write stays bounded (the body waits up to
//!   `FLUSH_AT` octets), and all of them together are bounded by the events and the body.

#![no_main]

mod common;

use bytes::BytesMut;
use common::{Input, Progress};
use libfuzzer_sys::fuzz_target;
use odmr_proto::dialogue::{DialogueObserver, Event};
use odmr_proto::relay::{Relay, RelayStep, FLUSH_AT};

const MAX_EVENTS: usize = 200;
const BODY: &[u8] = b"Subject: fuzz\r\n\r\n.dot line\r\n..\r\nx\r\n.\r\nno final CRLF";
const BIG: usize = FLUSH_AT / 2 + 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No transaction.
    Idle,
    /// MAIL accepted; `accepted` recipients so far.
    Tx,
    /// DATA accepted: body pieces, then the end.
    Data,
}

/// Follows what the relay writes and the replies it consumes; counts accepted final dots.
struct Watch {
    observer: DialogueObserver,
    accepted: usize,
}

impl Watch {
    fn client(&mut self, bytes: &[u8]) {
        let mut n = 0;
        self.observer.client(bytes, &mut |e| {
            if let Event::Verdict { accepted: true } = e {
                n += 1
            }
        });
        self.accepted += n;
    }
    fn server(&mut self, bytes: &[u8]) {
        let mut n = 0;
        self.observer.server(bytes, &mut |e| {
            if let Event::Verdict { accepted: true } = e {
                n += 1
            }
        });
        self.accepted += n;
    }
}

struct Run<'a> {
    m: Relay,
    input: BytesMut,
    chunks: common::Chunks<'a>,
    progress: Progress,
    watch: Watch,
    eof: bool,
    closed: bool,
    failed: bool,
    writes: usize,
    fail_at: Option<usize>,
    written: usize,
    ends: usize,
    verdicts: usize,
    ok_verdicts: usize,
}

impl Run<'_> {
    /// Polls until `Idle` (or `Failed`); returns the answers given.
    fn pump(&mut self) -> Vec<Result<(), odmr_proto::reply::Reply>> {
        let mut answers = Vec::new();
        self.progress.fed();
        loop {
            let before = self.input.clone();
            let step = self.m.poll(&mut self.input);
            let used = before.len() - self.input.len();
            self.progress.poll(before.len(), self.input.len(), &step);
            assert!(self.progress.polls < 1_000_000, "too many polls");
            if used > 0 {
                assert!(!self.closed, "read after Close");
                self.watch.server(&before[..used]);
            }
            common::trace(&step, self.m.output());
            match step {
                RelayStep::Write => {
                    assert!(!self.closed, "write after Close");
                    let out = std::mem::take(self.m.output());
                    assert!(!out.is_empty(), "Write with nothing to write");
                    assert!(
                        out.len() <= FLUSH_AT + 2 * BIG + 4096,
                        "one write of {} octets",
                        out.len()
                    );
                    self.written += out.len();
                    self.writes += 1;
                    if Some(self.writes) == self.fail_at {
                        self.m.io_failed("write failed");
                    } else {
                        self.watch.client(&out);
                    }
                }
                RelayStep::NeedInput => {
                    assert!(!self.closed, "NeedInput after Close");
                    match self.chunks.next_chunk() {
                        Some(c) => {
                            self.input.extend_from_slice(c);
                            self.progress.fed();
                        }
                        None => {
                            assert!(!self.eof, "NeedInput after end of stream");
                            self.eof = true;
                            self.m.closed_by_peer();
                        }
                    }
                }
                RelayStep::Answer(a) => answers.push(a),
                RelayStep::Verdict(v) => {
                    self.verdicts += 1;
                    assert!(self.verdicts <= self.ends, "a verdict for no message: {v}");
                    if v.is_positive() {
                        self.ok_verdicts += 1;
                        assert!(
                            self.ok_verdicts <= self.watch.accepted,
                            "a 2xx verdict without the local MTA's 2xx to a final dot: {v}"
                        );
                    }
                }
                RelayStep::Close => {
                    assert!(!self.closed, "Close twice");
                    assert!(self.m.output().is_empty(), "Close with output left");
                    self.closed = true;
                }
                RelayStep::Idle => break,
                RelayStep::Failed(_) => {
                    self.failed = true;
                    break;
                }
            }
        }
        if !self.m.verdict_owed() {
            assert_eq!(self.verdicts, self.ends, "a message without a verdict");
        }
        answers
    }

    /// An event that is answered once.
    fn answered(&mut self) -> Result<(), odmr_proto::reply::Reply> {
        let mut a = self.pump();
        assert_eq!(a.len(), 1, "not one answer: {a:?}");
        a.pop().expect("one answer")
    }

    fn quiet(&mut self) {
        let a = self.pump();
        assert!(a.is_empty(), "an answer to an event that has none: {a:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Input {
        flags,
        mut decisions,
        chunks,
    } = Input::parse(data);
    let lmtp = flags & 1 != 0;
    let big = flags & 2 != 0;
    let mut r = Run {
        m: Relay::new(lmtp, "relay.example"),
        input: BytesMut::new(),
        chunks,
        progress: Progress::default(),
        watch: Watch {
            observer: DialogueObserver::new(),
            accepted: 0,
        },
        eof: false,
        closed: false,
        failed: false,
        writes: 0,
        fail_at: (flags & 4 != 0).then_some(usize::from(flags >> 3)),
        written: 0,
        ends: 0,
        verdicts: 0,
        ok_verdicts: 0,
    };
    r.quiet();
    if r.failed {
        return;
    }
    let max_recipients = r.m.caps().max_recipients;
    assert_eq!(max_recipients, if lmtp { 1 } else { 100 });

    let mut phase = Phase::Idle;
    let mut accepted = 0usize;
    let mut body_total = 0usize;
    let mut events = 0usize;
    let mut body_pos = 0usize;
    while events < MAX_EVENTS {
        events += 1;
        let d = decisions.next();
        match phase {
            Phase::Idle => match d % 8 {
                0..=4 => {
                    let params =
                        ["", "BODY=8BITMIME", "SMTPUTF8", "BODY=7BIT SMTPUTF8"][usize::from(d >> 3) % 4];
                    r.m.mail("alice@sender.example", params);
                    if r.answered().is_ok() {
                        phase = Phase::Tx;
                        accepted = 0;
                    }
                }
                5 => {
                    r.m.settle();
                    r.quiet();
                }
                6 => {
                    r.m.reset();
                    r.quiet();
                }
                _ => break,
            },
            Phase::Tx => match d % 8 {
                4 | 5 if accepted > 0 => {
                    r.m.data();
                    if r.answered().is_ok() {
                        phase = Phase::Data;
                        body_pos = 0;
                    } else {
                        // receive.rs: a refused DATA resets the sink, the server the transaction.
                        r.m.reset();
                        r.quiet();
                        phase = Phase::Idle;
                    }
                }
                6 => {
                    r.m.reset();
                    r.quiet();
                    phase = Phase::Idle;
                }
                7 => {
                    r.m.settle();
                    r.quiet();
                }
                _ => {
                    if d & 0x10 != 0 {
                        r.m.expect_data();
                    }
                    r.m.rcpt(&format!("r{events}@example.org"));
                    if r.answered().is_ok() {
                        accepted += 1;
                        assert!(
                            accepted <= max_recipients,
                            "more recipients than the local MTA takes"
                        );
                    }
                }
            },
            Phase::Data => match d % 4 {
                0 | 1 => {
                    let piece: Vec<u8> = if big {
                        BODY.iter().copied().cycle().take(BIG).collect()
                    } else {
                        let n = usize::from(d >> 2) % (BODY.len() + 1);
                        let start = body_pos % BODY.len();
                        BODY[start..].iter().chain(BODY).copied().take(n).collect()
                    };
                    body_pos += piece.len();
                    body_total += piece.len();
                    r.m.body(&piece);
                    r.quiet();
                }
                2 => {
                    r.ends += 1;
                    r.m.end();
                    r.quiet();
                    phase = Phase::Idle;
                }
                _ => {
                    // Abandoned mid-message (RSET, a dropped provider connection).
                    r.m.reset();
                    r.quiet();
                    phase = Phase::Idle;
                }
            },
        }
        let bound = 2 * body_total + 600 * events + 4096;
        assert!(
            r.written <= bound,
            "{} octets written for {events} events",
            r.written
        );
        if r.m.is_closed() && !r.m.verdict_owed() && d % 3 == 0 {
            break;
        }
    }
    r.m.close();
    r.quiet();
    assert!(!r.m.verdict_owed(), "a verdict still owed after close");
    assert_eq!(r.verdicts, r.ends, "every message gets exactly one verdict");
    let bound = 2 * body_total + 600 * (events + 1) + 4096;
    assert!(r.written <= bound, "{} octets written", r.written);
});
