//! The customer's relay to its local MTA, over SMTP or LMTP: each MAIL, RCPT and DATA the
//! provider sends in the reversed session is passed on, and the local verdict is the provider's
//! reply, so a recipient the local MTA rejects is rejected to the provider at RCPT time, in the
//! same code class. The driver (`odmr`'s relay sink) turns each of the provider's commands into
//! an event ([`Relay::mail`], [`Relay::rcpt`], [`Relay::data`], [`Relay::body`], [`Relay::end`],
//! [`Relay::reset`], ...), then polls until [`RelayStep::Idle`]: bytes to write to the local MTA,
//! requests for its replies, the answer for the provider, verdicts on earlier messages.
//!
//! Invariants:
//! - **One verdict per message, in order, 2xx only after the local MTA's 2xx to the final
//!   dot.** Every [`Relay::end`] gets exactly one [`RelayStep::Verdict`], either during that
//!   call or later (read ahead of a later command's replies, or by [`Relay::settle`],
//!   [`Relay::reset`], [`Relay::close`]); verdicts come in the order of the ends. A verdict
//!   the connection took with it is `451 4.4.0`, never a 2xx; so is a reply to DATA that is
//!   neither 354 nor a refusal (a local MTA answering DATA with 250 would otherwise have the
//!   provider count as delivered a message that never left, or read its body as commands).
//! - **Replies are paired with commands by counting** (RFC 2920 §3.1): `expect` holds one entry
//!   per command written whose reply is not read yet, in order. Replies are read only when the
//!   event in hand needs one: octets the local MTA sends unasked wait in the buffer.
//! - **A transaction abandoned mid-DATA is never completed locally.** We cannot RSET inside
//!   DATA, and sending the end marker would deliver a truncated message; so the connection is
//!   dropped ([`RelayStep::Close`]), which makes the local MTA discard it. A 354 read early
//!   (DATA sent with the last RCPT) leaves the local MTA inside DATA before the provider's body
//!   is read, so a transaction abandoned from there on is dropped with the connection too.
//! - **LMTP takes one recipient per transaction**, so its single per-recipient reply after the
//!   dot (RFC 2033 §4.2) is exactly the one SMTP reply the provider needs (RFC 5321 §4.1.1.4),
//!   with nothing lost or duplicated: [`RelayCaps::max_recipients`] is 1, and a second RCPT in
//!   a transaction is refused here (`452 4.5.3`) without reaching the local MTA.
//! - **Only parameters the local MTA offered are passed on** (BODY with 8BITMIME, SMTPUTF8).
//! - **With the local MTA's PIPELINING, one local round trip per message** (RFC 2920): MAIL
//!   waits and goes out with the first RCPT; DATA rides with the last RCPT when the provider's
//!   DATA (or BDAT) is already read ([`Relay::expect_data`]); otherwise DATA waits and goes out
//!   before the first octet of the body; and the final dot waits for the next transaction's
//!   commands (RFC 2920 §3.1: message content may open a group), its reply read ahead of
//!   theirs. A local refusal of MAIL becomes the refusal of each RCPT, and one of DATA the
//!   verdict on the message: the provider's per-recipient outcomes are what they would be in
//!   lockstep. Without PIPELINING every command waits for its reply.
//! - **A verdict owed is read before anything that could lose it** (an RSET, a dropped
//!   connection, QUIT): [`Relay::reset`] and [`Relay::close`] send the final dot and read its
//!   reply first.
//! - **Once the connection is gone, nothing more is written or read**: every later command is
//!   refused with `451 4.4.0 local mail system unavailable: connection closed`.
//! - **Bounded memory**: at most [`FLUSH_AT`] octets of body (plus one chunk) wait before they
//!   are written; replies are parsed with the bounds of [`crate::reply`].
//!
//! No I/O, no clock: the driver writes, reads, times out and reports failures
//! ([`Relay::io_failed`], [`Relay::closed_by_peer`]).

use crate::dot::DotStuffer;
use crate::envelope::param;
use crate::reply::{parse_reply, Reply};
use bytes::BytesMut;
use std::collections::VecDeque;
use std::fmt::Display;

/// Body octets gathered before they are written to the local MTA.
pub const FLUSH_AT: usize = 64 * 1024;

/// Why the connection is gone when the local MTA closed it.
pub const PEER_CLOSED: &str = "the local mail system closed the connection";

/// Why a command cannot be sent once the connection is gone.
const CLOSED: &str = "connection closed";

/// The temporary failure given for a command or a message the local MTA could not answer.
pub fn unavailable(why: impl Display) -> Reply {
    Reply::new(451, "4.4.0", format!("local mail system unavailable: {why}"))
}

/// The provider's reply when the local MTA did not say 354 to DATA: its refusal, or, for a
/// reply that is no refusal (a 2xx, a 3xx other than 354), a temporary failure. A 2xx passed on
/// would make the provider count the message delivered though no octet of it was sent.
fn data_refusal(r: Reply) -> Reply {
    if r.is_transient() || r.is_permanent() {
        r
    } else {
        Reply::new(451, "4.5.0", format!("local mail system answered DATA with {r}"))
    }
}

/// What the local MTA can carry, from its EHLO (or LHLO) reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayCaps {
    /// Its SIZE; 0 when it states no limit.
    pub max_size: u64,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub pipelining: bool,
    /// Recipients per transaction the provider may send: 1 over LMTP (see the invariants).
    pub max_recipients: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayStep {
    /// Write [`Relay::output`] to the local MTA (all of it), then poll again; if the write
    /// fails, call [`Relay::io_failed`] first.
    Write,
    /// Read from the local MTA into the input buffer, then poll again (on end of stream call
    /// [`Relay::closed_by_peer`], on an error [`Relay::io_failed`]).
    NeedInput,
    /// The answer to the event in hand ([`Relay::mail`], [`Relay::rcpt`], [`Relay::data`]):
    /// `Ok`, or the reply to give the provider.
    Answer(Result<(), Reply>),
    /// The verdict on the oldest message that reached [`Relay::end`] and has none yet: the
    /// provider's reply to its final dot (or `BDAT LAST`).
    Verdict(Reply),
    /// Drop the connection now, writing nothing more (the output is empty).
    Close,
    /// The event in hand is done: wait for the next one.
    Idle,
    /// The local MTA cannot be used (its greeting or hello was refused, or the connection
    /// failed before it was ready): why. Final.
    Failed(String),
}

/// What the event in hand does once the replies it waits for are in.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Greeting,
    Hello,
    Helo,
    /// MAIL without PIPELINING.
    Mail,
    /// A RCPT alone.
    Rcpt,
    /// MAIL (if it waited), RCPT and DATA (if the provider's is next) in one group.
    RcptGroup {
        with_mail: bool,
        with_data: bool,
    },
    /// DATA without PIPELINING.
    Data,
    /// DATA sent before the first octet of the body, which waits in `held`.
    StartData(Then),
    /// The RSET after a refused DATA; `refusal` becomes the message's verdict.
    RsetAfterData {
        then: Then,
        refusal: Reply,
    },
    /// The verdicts owed are read; then the rest of the event.
    Finals(AfterFinals),
    /// RSET or QUIT: the reply does not matter.
    Ignore,
}

/// Where a DATA sent before the body came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    Body,
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterFinals {
    Idle,
    Reset,
    Close,
}

/// A reply owed by the local MTA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// The reply to a final dot: a message's verdict.
    Final,
    /// Any other reply: for the event in hand.
    Reply,
}

pub struct Relay {
    lmtp: bool,
    name: String,
    caps: RelayCaps,
    /// To write now.
    out: Vec<u8>,
    /// The end of the last message (its last body octets and the dot), waiting to go out with
    /// the next transaction's commands; its reply is owed once it is written.
    fin: Vec<u8>,
    /// Written later: a MAIL waiting for the first RCPT, or body octets (waiting for
    /// [`FLUSH_AT`], or for the DATA still to be sent).
    held: Vec<u8>,
    stuffer: DotStuffer,
    expect: VecDeque<Expect>,
    /// Replies to the event in hand, in order.
    got: Vec<Reply>,
    op: Option<Op>,
    steps: VecDeque<RelayStep>,
    /// The connection is gone: nothing is written or read any more.
    closed: bool,
    /// Why the connection was lost while the event in hand waited for a reply.
    lost: Option<String>,
    failed_setup: Option<String>,
    /// A transaction is open locally (MAIL accepted, or sent/waiting with PIPELINING).
    in_tx: bool,
    /// The local MTA is (or will be, once DATA goes out) inside DATA.
    in_data: bool,
    /// The provider got its go-ahead, and DATA waits to be sent before the body.
    data_unsent: bool,
    /// The provider's DATA or BDAT follows the next RCPT: send DATA with that RCPT.
    data_next: bool,
    /// MAIL waits in `held`: its reply comes with the first RCPT's.
    mail_unsent: bool,
    /// The local MTA refused MAIL: every RCPT of this transaction gets that reply.
    mail_refused: Option<Reply>,
    /// The reply to a DATA sent with the last RCPT, for [`Relay::data`].
    early_data: Option<Reply>,
    /// The message cannot be completed: its verdict, given at [`Relay::end`].
    failed: Option<Reply>,
    /// Recipients the local MTA accepted in this transaction.
    accepted: usize,
}

impl Relay {
    /// A session with a local MTA whose greeting comes next; `name` is ours, for EHLO (LHLO).
    /// Poll until [`RelayStep::Idle`] (ready: [`Relay::caps`] is known) or
    /// [`RelayStep::Failed`].
    pub fn new(lmtp: bool, name: impl Into<String>) -> Self {
        let mut r = Relay {
            lmtp,
            name: name.into(),
            caps: RelayCaps {
                max_size: 0,
                eight_bit_mime: false,
                smtputf8: false,
                pipelining: false,
                max_recipients: if lmtp { 1 } else { 100 },
            },
            out: Vec::new(),
            fin: Vec::new(),
            held: Vec::new(),
            stuffer: DotStuffer::new(),
            expect: VecDeque::new(),
            got: Vec::new(),
            op: None,
            steps: VecDeque::new(),
            closed: false,
            lost: None,
            failed_setup: None,
            in_tx: false,
            in_data: false,
            data_unsent: false,
            data_next: false,
            mail_unsent: false,
            mail_refused: None,
            early_data: None,
            failed: None,
            accepted: 0,
        };
        r.op = Some(Op::Greeting);
        r.expect.push_back(Expect::Reply);
        r
    }

    /// A local MTA that states no limit (`SIZE` bare or 0, or no SIZE at all) gives 0: the
    /// provider is told "no fixed maximum" and sends whatever it holds, which streams through
    /// to the local MTA, the one that knows its limit (a 552 from it reaches the provider).
    pub fn caps(&self) -> &RelayCaps {
        &self.caps
    }

    /// What to write at [`RelayStep::Write`].
    pub fn output(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// Whether a message that reached [`Relay::end`] still waits for its verdict.
    pub fn verdict_owed(&self) -> bool {
        !self.fin.is_empty() || self.expect.contains(&Expect::Final)
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The next step, with the local MTA's octets read so far in `input` (a reply is taken
    /// off its front only when the event in hand needs one). Poll after every event until
    /// [`RelayStep::Idle`].
    pub fn poll(&mut self, input: &mut BytesMut) -> RelayStep {
        loop {
            if let Some(s) = self.steps.pop_front() {
                return s;
            }
            if let Some(why) = &self.failed_setup {
                return RelayStep::Failed(why.clone());
            }
            if !self.out.is_empty() {
                return RelayStep::Write;
            }
            let Some(op) = self.op.take() else {
                return RelayStep::Idle;
            };
            if !self.expect.is_empty() {
                self.op = Some(op);
                match parse_reply(input) {
                    Ok(None) => return RelayStep::NeedInput,
                    Ok(Some(r)) => match self.expect.pop_front() {
                        Some(Expect::Final) => self.steps.push_back(RelayStep::Verdict(r)),
                        _ => self.got.push(r),
                    },
                    Err(e) => self.lose(e.to_string()),
                }
                continue;
            }
            let lost = self.lost.take();
            let got = std::mem::take(&mut self.got);
            self.complete(op, got, lost);
        }
    }

    /// The connection failed (a write, a read, a timeout): `why`, for the replies it costs.
    pub fn io_failed(&mut self, why: impl Display) {
        self.lose(why.to_string());
    }

    /// The local MTA closed the connection.
    pub fn closed_by_peer(&mut self) {
        self.lose(PEER_CLOSED.into());
    }

    // ----- events from the provider's side -----

    /// The provider's MAIL. Answered `Ok` at once with PIPELINING (MAIL goes out with the first
    /// RCPT).
    pub fn mail(&mut self, from: &str, params: &str) {
        let mut cmd = format!("MAIL FROM:<{from}>");
        if self.caps.eight_bit_mime {
            if let Some(b) = param(params, "BODY") {
                cmd.push_str(&format!(" BODY={b}"));
            }
        }
        if self.caps.smtputf8 && param(params, "SMTPUTF8").is_some() {
            cmd.push_str(" SMTPUTF8");
        }
        self.mail_refused = None;
        self.early_data = None;
        self.accepted = 0;
        if !self.caps.pipelining {
            self.ask(&cmd, Op::Mail);
            return;
        }
        if self.closed {
            self.answer(Err(unavailable(CLOSED)));
            return;
        }
        line(&mut self.held, &cmd);
        self.mail_unsent = true;
        self.in_tx = true;
        self.answer(Ok(()));
    }

    /// The provider's DATA (or BDAT) is already read behind the RCPT about to be relayed: with
    /// the local MTA's PIPELINING, DATA goes out with that RCPT (RFC 2920 §3.1 lets DATA end a
    /// group), saving a round trip.
    pub fn expect_data(&mut self) {
        self.data_next = self.caps.pipelining;
    }

    /// The provider's RCPT.
    pub fn rcpt(&mut self, to: &str) {
        let with_data = std::mem::take(&mut self.data_next);
        if let Some(r) = &self.mail_refused {
            self.answer(Err(r.clone()));
            return;
        }
        if self.lmtp && self.accepted >= 1 {
            self.answer(Err(Reply::new(452, "4.5.3", "Too many recipients")));
            return;
        }
        let cmd = format!("RCPT TO:<{to}>");
        if !self.mail_unsent && !with_data {
            self.ask(&cmd, Op::Rcpt);
            return;
        }
        let with_mail = std::mem::take(&mut self.mail_unsent);
        if !self.begin(Op::RcptGroup { with_mail, with_data }) {
            return;
        }
        self.send_fin();
        if with_mail {
            self.out.append(&mut self.held);
            self.expect.push_back(Expect::Reply);
        }
        self.command(&cmd);
        if with_data {
            self.command("DATA");
        }
    }

    /// The provider's DATA (or first BDAT): `Ok` gives it the go-ahead.
    pub fn data(&mut self) {
        self.failed = None;
        self.stuffer = DotStuffer::new();
        if let Some(r) = self.early_data.take() {
            // DATA went out with the last RCPT.
            let a = if r.code == 354 {
                Ok(())
            } else {
                Err(data_refusal(r))
            };
            self.answer(a);
        } else if self.caps.pipelining {
            // DATA waits for the body: it goes out before its first octet.
            self.data_unsent = true;
            self.in_data = true;
            self.answer(Ok(()));
        } else {
            self.ask("DATA", Op::Data);
        }
    }

    /// Part of the message (unstuffed, our Received: header first). A failure is remembered
    /// and is the verdict at [`Relay::end`].
    pub fn body(&mut self, chunk: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        self.stuffer.stuff(chunk, &mut self.held);
        if self.held.len() < FLUSH_AT {
            return;
        }
        if self.data_unsent {
            self.start_data(Then::Body);
        } else {
            self.flush_body();
        }
    }

    /// The body is complete. With PIPELINING the final dot waits for the next transaction's
    /// commands and its verdict comes later; otherwise (or when the message already failed)
    /// the verdict comes now.
    pub fn end(&mut self) {
        if self.data_unsent && self.failed.is_none() {
            self.start_data(Then::End);
        } else {
            self.finish_end();
        }
    }

    /// The verdict still owed on the last message, read now (its dot goes out if it waits).
    pub fn settle(&mut self) {
        self.read_finals(AfterFinals::Idle);
    }

    /// Abandon the transaction (the provider's RSET, a refused DATA, a dropped connection).
    pub fn reset(&mut self) {
        self.read_finals(AfterFinals::Reset);
    }

    /// The session is over: the verdict owed is read, then QUIT unless the local MTA is inside
    /// DATA (the connection is then just closed).
    pub fn close(&mut self) {
        self.read_finals(AfterFinals::Close);
    }

    // ----- inside -----

    fn answer(&mut self, a: Result<(), Reply>) {
        self.steps.push_back(RelayStep::Answer(a));
    }

    /// The event in hand is `op`. False when the connection is gone: `op` then completes as
    /// failed, and any verdict owed is given now.
    fn begin(&mut self, op: Op) -> bool {
        self.op = Some(op);
        if self.closed {
            self.fail_owed(CLOSED);
            self.lost = Some(CLOSED.into());
            return false;
        }
        true
    }

    /// A command whose reply the event waits for.
    fn ask(&mut self, cmd: &str, op: Op) {
        if self.begin(op) {
            self.command(cmd);
        }
    }

    fn command(&mut self, cmd: &str) {
        self.send_fin();
        line(&mut self.out, cmd);
        self.expect.push_back(Expect::Reply);
    }

    /// The last message's end goes out, if it waits; its reply is then owed.
    fn send_fin(&mut self) {
        if !self.fin.is_empty() {
            self.out.append(&mut self.fin);
            self.expect.push_back(Expect::Final);
        }
    }

    fn flush_body(&mut self) {
        if self.closed {
            if self.failed.is_none() {
                self.failed = Some(unavailable(CLOSED));
            }
            return;
        }
        self.send_fin();
        self.out.append(&mut self.held);
    }

    /// DATA, before any of the body (which waits in `held`).
    fn start_data(&mut self, then: Then) {
        self.data_unsent = false;
        self.ask("DATA", Op::StartData(then));
    }

    fn read_finals(&mut self, then: AfterFinals) {
        if self.verdict_owed() {
            if self.begin(Op::Finals(then)) {
                self.send_fin();
            }
        } else {
            self.after_finals(then);
        }
    }

    fn after_finals(&mut self, then: AfterFinals) {
        match then {
            AfterFinals::Idle => {}
            AfterFinals::Reset => self.finish_reset(),
            AfterFinals::Close => {
                if self.mail_unsent {
                    self.held.clear();
                }
                if !self.closed && !self.in_data {
                    self.ask("QUIT", Op::Ignore);
                }
            }
        }
    }

    fn finish_reset(&mut self) {
        self.early_data = None;
        self.data_next = false;
        self.mail_refused = None;
        self.accepted = 0;
        if self.mail_unsent {
            // Nothing of this transaction has left yet.
            self.mail_unsent = false;
            self.in_tx = false;
        }
        if self.in_data && self.data_unsent {
            // DATA never left, so neither did the body: an RSET is enough.
            self.in_data = false;
            self.data_unsent = false;
        }
        self.held.clear();
        if self.in_data {
            // Never finish a truncated message: drop the connection instead.
            self.in_data = false;
            self.in_tx = false;
            self.drop_conn(CLOSED);
        } else if std::mem::take(&mut self.in_tx) && !self.closed {
            self.ask("RSET", Op::Ignore);
        }
    }

    fn finish_end(&mut self) {
        let local_in_data = self.in_data;
        self.in_data = false;
        self.in_tx = false;
        if let Some(r) = self.failed.take() {
            if local_in_data {
                // Part of the body may have left: never let the local MTA complete it.
                self.drop_conn(CLOSED);
            }
            self.held.clear();
            self.steps.push_back(RelayStep::Verdict(r));
            return;
        }
        // An end still waiting (only if `end` came twice without a command between) goes
        // first, with its own reply owed.
        self.send_fin();
        self.stuffer.finish(&mut self.held);
        std::mem::swap(&mut self.fin, &mut self.held);
        // SMTP: one reply. LMTP: one per accepted recipient, and we accept one per transaction.
        if !self.caps.pipelining {
            self.read_finals(AfterFinals::Idle);
        }
    }

    /// Every verdict owed is `unavailable(why)`: the connection is gone.
    fn fail_owed(&mut self, why: &str) {
        for e in std::mem::take(&mut self.expect) {
            if e == Expect::Final {
                self.steps.push_back(RelayStep::Verdict(unavailable(why)));
            }
        }
        if !self.fin.is_empty() {
            self.fin.clear();
            self.steps.push_back(RelayStep::Verdict(unavailable(why)));
        }
    }

    /// The connection is gone, or dropped on purpose (`why` then says "connection closed").
    fn drop_conn(&mut self, why: &str) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.fail_owed(why);
        self.out.clear();
        self.held.clear();
        if self.in_data && self.failed.is_none() {
            self.failed = Some(unavailable(why));
        }
        self.steps.push_back(RelayStep::Close);
    }

    fn lose(&mut self, why: String) {
        self.drop_conn(&why);
        if self.op.is_some() && self.lost.is_none() {
            self.lost = Some(why);
        }
    }

    /// The replies `op` waited for are in (`got`), or the connection was lost (`lost`).
    fn complete(&mut self, op: Op, mut got: Vec<Reply>, lost: Option<String>) {
        let reply = match lost {
            Some(why) => Err(why),
            None => got.pop().ok_or_else(|| CLOSED.to_string()),
        };
        // `ask`'s reading of a reply: a 2xx (or 354) goes on.
        let asked = |r: &Result<Reply, String>| match r {
            Ok(r) if r.is_positive() || r.code == 354 => Ok(()),
            Ok(r) => Err(r.clone()),
            Err(why) => Err(unavailable(why)),
        };
        match op {
            Op::Greeting => match reply {
                Ok(r) if r.code == 220 => {
                    let hello = if self.lmtp { "LHLO" } else { "EHLO" };
                    let cmd = format!("{hello} {}", self.name);
                    self.ask(&cmd, Op::Hello);
                }
                Ok(r) => self.fail_setup(format!("greeting was {r}")),
                Err(why) => self.fail_setup(why),
            },
            Op::Hello => match reply {
                Ok(r) if !r.is_positive() && !self.lmtp => {
                    let cmd = format!("HELO {}", self.name);
                    self.ask(&cmd, Op::Helo);
                }
                Ok(r) => self.ready(r),
                Err(why) => self.fail_setup(why),
            },
            Op::Helo => match reply {
                Ok(mut r) => {
                    if r.is_positive() {
                        r.lines.truncate(1);
                    }
                    self.ready(r);
                }
                Err(why) => self.fail_setup(why),
            },
            Op::Mail => {
                let a = asked(&reply);
                self.in_tx = a.is_ok();
                self.answer(a);
            }
            Op::Rcpt => {
                let a = asked(&reply);
                if a.is_ok() {
                    self.accepted += 1;
                }
                self.answer(a);
            }
            Op::RcptGroup { with_mail, with_data } => {
                let rcpt = match reply {
                    Ok(r) => r,
                    Err(why) => {
                        self.answer(Err(unavailable(why)));
                        return;
                    }
                };
                // `got` now holds MAIL's reply (if it went) and RCPT's; the last one popped
                // was DATA's if it went, else RCPT's.
                let (rcpt, data) = if with_data {
                    (got.pop(), Some(rcpt))
                } else {
                    (Some(rcpt), None)
                };
                let mail = if with_mail { got.pop() } else { None };
                let Some(rcpt) = rcpt else {
                    self.answer(Err(unavailable(CLOSED)));
                    return;
                };
                if let Some(m) = mail.filter(|m| !m.is_positive()) {
                    self.in_tx = false;
                    self.mail_refused = Some(m.clone());
                    self.answer(Err(m));
                    return;
                }
                if let Some(d) = data {
                    if d.code == 354 {
                        // The local MTA now waits for the body: from here on only the final
                        // dot or a dropped connection ends its transaction.
                        self.in_data = true;
                    }
                    self.early_data = Some(d);
                }
                if rcpt.is_positive() {
                    self.accepted += 1;
                    self.answer(Ok(()));
                } else {
                    self.answer(Err(rcpt));
                }
            }
            Op::Data => {
                let a = match reply {
                    Ok(r) if r.code == 354 => Ok(()),
                    Ok(r) => Err(data_refusal(r)),
                    Err(why) => Err(unavailable(why)),
                };
                self.in_data = a.is_ok();
                self.answer(a);
            }
            Op::StartData(then) => {
                match reply {
                    Ok(r) if r.code == 354 => {}
                    Ok(r) => {
                        // Still in the transaction locally: RSET it; no octet of the body was
                        // sent, so the connection stays usable for the next message.
                        self.held.clear();
                        let refusal = data_refusal(r);
                        self.ask("RSET", Op::RsetAfterData { then, refusal });
                        return;
                    }
                    Err(why) => {
                        if self.failed.is_none() {
                            self.failed = Some(unavailable(why));
                        }
                    }
                }
                self.resume(then);
            }
            Op::RsetAfterData { then, refusal } => {
                self.in_data = false;
                self.in_tx = false;
                self.failed = Some(refusal);
                self.resume(then);
            }
            Op::Finals(then) => self.after_finals(then),
            Op::Ignore => {}
        }
    }

    /// Back to the event that had to send DATA first.
    fn resume(&mut self, then: Then) {
        match then {
            Then::Body if self.failed.is_none() => self.flush_body(),
            Then::Body => {}
            Then::End => self.finish_end(),
        }
    }

    fn ready(&mut self, r: Reply) {
        if !r.is_positive() {
            let hello = if self.lmtp { "LHLO" } else { "EHLO" };
            self.fail_setup(format!("{hello} was refused: {r}"));
            return;
        }
        for l in r.lines.iter().skip(1) {
            let mut w = l.split_whitespace();
            match w.next().unwrap_or("").to_ascii_uppercase().as_str() {
                "8BITMIME" => self.caps.eight_bit_mime = true,
                "PIPELINING" => self.caps.pipelining = true,
                "SMTPUTF8" => self.caps.smtputf8 = true,
                "SIZE" => self.caps.max_size = w.next().and_then(|n| n.parse().ok()).unwrap_or(0),
                _ => {}
            }
        }
    }

    fn fail_setup(&mut self, why: String) {
        self.closed = true;
        self.out.clear();
        self.expect.clear();
        self.op = None;
        self.failed_setup = Some(why);
    }
}

fn line(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests;
