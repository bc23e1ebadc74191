//! The provider's delivering SMTP client, run on the customer's connection after ATRN's 250
//! (RFC 2645 §5.3). The same machine serves ETRN's outbound connections later.
//!
//! Invariants:
//! - **Outcomes come only from the peer's replies.** A recipient is `Delivered` only after a 2xx
//!   to the final dot; a transaction cut off (EOF, timeout) yields no outcome at all, so the
//!   driver leaves the message queued.
//! - **Replies are paired with commands by counting, never by code or text** (RFC 2920 §3.1):
//!   `expect` is the queue of commands whose replies are outstanding, each tagged with its
//!   transaction.
//! - **With PIPELINING, the next transaction's MAIL, RCPT and DATA follow the final dot** in the
//!   same write, so a message costs one round trip instead of two (RFC 2920 §3.1: message
//!   content may open a group). At most one transaction is on the wire before its final dot,
//!   and `Finished` reports transactions strictly in the order they were started.
//! - **With CHUNKING (and PIPELINING), no round trip per message at all** (RFC 3030): the body goes out as
//!   `BDAT n LAST` right behind MAIL and RCPT, so nothing waits for a 354, and up to
//!   [`MAX_IN_FLIGHT`] whole transactions are on the wire at once. Every transaction after the
//!   first starts with RSET: RFC 3030 does not say in which state a failed `BDAT` leaves the
//!   server, and a MAIL pipelined behind it must never land in a half-open transaction (its
//!   recipients would join the failed message's envelope).
//! - **One chunk per message, and only for messages up to [`BDAT_MAX`]**: the body is gathered
//!   and goes out as one `BDAT n LAST` whose count is the length of the octets that follow it
//!   (never the stored size), with the CRLF the content needs, as DATA's end marker adds it.
//!   Larger messages go with DATA: for them a 354 costs nothing that matters, and a peer that
//!   refused their recipients would otherwise have to refuse many chunks in a row, which a
//!   server counting errors (Postfix closes after 20) would take for abuse and end the session
//!   with every message behind it.
//! - **Only the recipients handed to [`Deliverer::send`] are named**; the driver restricts them
//!   to the granted domains.
//! - **STARTTLS (RFC 3207), on connections the provider opens** (an ETRN queue run's, the
//!   notices' relay's; [`StartTls`]): asked for right
//!   after the first EHLO when the peer offers it, and then everything the peer said before TLS
//!   is forgotten: its capabilities come from a new EHLO (§4.2), and any octet it sent after its
//!   220 is never read as a reply (the driver refuses the handshake then: command injection).
//!   With [`StartTls::Required`] no transaction starts in plaintext.
//! - **Nothing is sent that the peer did not offer.** Without 8BITMIME an 8-bit message is not
//!   sent (it stays queued with a recorded reason, see [`Deliverer::send`]); SIZE, DSN and
//!   SMTPUTF8 parameters are passed only when offered.

use crate::dot::DotStuffer;
use crate::envelope::{orcpt_without_smtputf8, param, RcptEntry};
use crate::reply::{parse_reply, Reply, ReplyError};
use bytes::BytesMut;
use std::collections::VecDeque;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerCaps {
    pub esmtp: bool,
    pub pipelining: bool,
    /// `Some(0)` means "no fixed limit".
    pub size: Option<u64>,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub dsn: bool,
    /// RFC 3030 CHUNKING: the body goes out with BDAT instead of DATA.
    pub chunking: bool,
    /// RFC 3207 STARTTLS.
    pub starttls: bool,
}

impl PeerCaps {
    fn from_ehlo(r: &Reply) -> Self {
        let mut c = PeerCaps {
            esmtp: true,
            ..Default::default()
        };
        for l in r.lines.iter().skip(1) {
            let mut w = l.split_whitespace();
            let kw = w.next().unwrap_or("").to_ascii_uppercase();
            match kw.as_str() {
                "PIPELINING" => c.pipelining = true,
                "8BITMIME" => c.eight_bit_mime = true,
                "SMTPUTF8" => c.smtputf8 = true,
                "DSN" => c.dsn = true,
                "CHUNKING" => c.chunking = true,
                "STARTTLS" => c.starttls = true,
                "SIZE" => c.size = Some(w.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                _ => {}
            }
        }
        c
    }
}

/// A message to deliver, already restricted to the recipients this session may deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutMessage {
    pub mail_from: String,
    pub mail_params: String,
    pub size: u64,
    pub eight_bit: bool,
    pub recipients: Vec<RcptEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptOutcome {
    Delivered(Reply),
    Deferred(Reply),
    Failed(Reply),
    /// Refused at RCPT for "too many recipients" (452, or 552 5.5.3) while others in the same
    /// transaction were accepted: send it again, in a new transaction, in this session
    /// (RFC 5321 §4.5.3.1.10). LMTP-fronted customers accept one recipient per transaction.
    Again(Reply),
}

impl RcptOutcome {
    /// The verdict on the message, from the reply to the final dot: the only reply that can
    /// make a recipient delivered.
    fn from_final(r: &Reply) -> Self {
        if r.is_positive() {
            RcptOutcome::Delivered(r.clone())
        } else {
            Self::from_refusal(r)
        }
    }

    /// A refusal at MAIL, RCPT or DATA. Only a 5xx is permanent; anything else (4xx, or a
    /// reply that makes no sense here, such as 250 to DATA) leaves the message queued: a
    /// confused customer must never make us count undelivered mail as delivered (found by
    /// fuzzing).
    fn from_refusal(r: &Reply) -> Self {
        if r.is_permanent() {
            RcptOutcome::Failed(r.clone())
        } else {
            RcptOutcome::Deferred(r.clone())
        }
    }
    pub fn reply(&self) -> &Reply {
        match self {
            RcptOutcome::Delivered(r)
            | RcptOutcome::Deferred(r)
            | RcptOutcome::Failed(r)
            | RcptOutcome::Again(r) => r,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliverStep {
    /// Flush the output, then read more input.
    NeedInput,
    /// The session is ready for a message: call [`Deliverer::send`] or [`Deliverer::quit`]. With
    /// PIPELINING this comes while the previous message still awaits its final reply.
    Ready,
    /// The peer said 354 (or, with CHUNKING, the envelope is sent): stream the body with
    /// [`Deliverer::body`], then [`Deliverer::body_end`].
    SendBody,
    /// The oldest message handed to `send` and not yet reported is finished: one outcome per
    /// recipient, in order. Messages are reported in the order they were sent.
    Finished(Vec<RcptOutcome>),
    /// The session is over; close the connection. [`Deliverer::error`] says why, if it failed.
    Done,
    /// The peer said 220 to STARTTLS: do the TLS handshake (refusing it if the peer sent anything
    /// after that 220), then call [`Deliverer::tls_started`]. If the handshake fails, the
    /// connection is unusable: close it.
    StartTls,
}

/// Whether the delivering client asks for TLS (RFC 3207) after EHLO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartTls {
    /// Never (the ATRN turnaround: TLS, if any, was negotiated before ATRN).
    Never,
    /// When the peer offers it; otherwise, or if the peer refuses it, in plaintext
    /// (opportunistic, RFC 7435).
    IfOffered,
    /// Always: a peer that does not offer STARTTLS or refuses it gets no mail (QUIT).
    Required,
}

/// What the machine waits for, so the driver can pick the RFC 5321 §4.5.3.2 timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Greeting,
    Command,
    DataStart,
    DataFinal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Mail,
    Rcpt(usize),
    Data,
    /// The reply to a `BDAT n` that is not the last chunk.
    Chunk,
    /// The reply to the final dot, or to `BDAT n LAST`.
    Final,
    /// The reply to a "." sent after a 354 with no accepted recipient; ignored.
    EmptyFinal,
    Rset,
    Quit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Greeting,
    Ehlo,
    Helo,
    /// STARTTLS is sent; its reply is awaited.
    StartTls,
    /// The peer said 220 to STARTTLS: the driver does the handshake.
    Handshake,
    /// Transactions: see [`Deliverer::ready`] for when another may start.
    Open,
    /// QUIT is sent; replies still owed to earlier transactions come first.
    Quit,
    Done,
}

/// Where one transaction stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Decided here without a command (see [`Deliverer::send`]); reported in its turn.
    Local(RcptOutcome),
    /// Replies to MAIL, RCPT or DATA (or the RSET after a refusal) are outstanding.
    Commands,
    /// The peer said 354 (or, with CHUNKING, the envelope is sent): the driver streams the
    /// body.
    Body,
    /// The final dot is sent; its reply is the only one outstanding.
    AwaitFinal,
    /// Every reply is in: the outcomes wait to be reported in order.
    Decided(Vec<RcptOutcome>),
}

#[derive(Debug)]
struct Tx {
    /// Pairs the replies in `expect` with their transaction.
    seq: u64,
    phase: Phase,
    recipients: Vec<RcptEntry>,
    mail: Option<Reply>,
    rcpts: Vec<Option<Reply>>,
    data: Option<Reply>,
    /// The first reply to a `BDAT n` (not LAST) that was not a 2xx.
    chunk: Option<Reply>,
    fin: Option<Reply>,
    /// Replies still owed to this transaction.
    owed: usize,
    /// SMTPUTF8 is in effect for this transaction (declared on its MAIL).
    utf8: bool,
    /// The body goes out as one `BDAT n LAST`, not with DATA.
    bdat: bool,
}

/// Transactions in flight at once. With DATA at most one of them is on the wire before its final
/// dot (the others await their final reply or were decided locally); with BDAT all of them may
/// be awaiting replies. The driver's bound on delivered-but-unrecorded messages counts them.
pub const MAX_IN_FLIGHT: usize = 8;

/// Messages up to this size go with BDAT when the peer offers it (see the module's invariants);
/// it also bounds what one session holds of a body at once.
pub const BDAT_MAX: u64 = 1024 * 1024;

pub struct Deliverer {
    hostname: String,
    out: Vec<u8>,
    state: State,
    caps: PeerCaps,
    /// Outstanding replies, oldest first, each with the `seq` of its transaction.
    expect: VecDeque<(u64, Expect)>,
    /// Transactions in the order they were started; reported (`Finished`) in the same order.
    txs: VecDeque<Tx>,
    next_seq: u64,
    /// A 421 ended the session: every undecided recipient is deferred with it.
    closing: Option<Reply>,
    /// The driver had nothing to send (see [`Deliverer::hold`]).
    holding: bool,
    stuffer: DotStuffer,
    /// With CHUNKING: the body's last piece so far, held back so that it can go out as
    /// `BDAT n LAST` (see [`Deliverer::body`]).
    chunk: Vec<u8>,
    /// With CHUNKING: the last two octets of the body so far (zero-padded) and its length, to
    /// tell whether it ends in CRLF.
    tail: [u8; 2],
    body_len: u64,
    /// A MAIL was sent in this session (with CHUNKING, the next transaction starts with RSET).
    mail_sent: bool,
    error: Option<String>,
    /// The name the peer gave in its 220 greeting, for the Remote-MTA of a notice.
    peer_name: Option<String>,
    /// The transaction last reported `Finished` was decided here (see [`Deliverer::send`]).
    local_verdict: bool,
    starttls: StartTls,
    /// TLS is active (the driver called [`Deliverer::tls_started`]).
    tls: bool,
}

impl Deliverer {
    /// Start after the turnaround: the first thing expected is the customer's 220.
    pub fn new(hostname: impl Into<String>) -> Self {
        Deliverer {
            hostname: hostname.into(),
            out: Vec::with_capacity(4096),
            state: State::Greeting,
            caps: PeerCaps::default(),
            expect: VecDeque::new(),
            txs: VecDeque::new(),
            next_seq: 0,
            closing: None,
            holding: false,
            stuffer: DotStuffer::new(),
            chunk: Vec::new(),
            tail: [0; 2],
            body_len: 0,
            mail_sent: false,
            error: None,
            peer_name: None,
            local_verdict: false,
            starttls: StartTls::Never,
            tls: false,
        }
    }

    /// Whether to ask for TLS after EHLO (before the session starts; [`StartTls::Never`] unless
    /// set).
    pub fn set_starttls(&mut self, policy: StartTls) {
        self.starttls = policy;
    }

    /// The TLS handshake after STARTTLS succeeded: forget what the peer said before it and
    /// greet it again (RFC 3207 §4.2).
    pub fn tls_started(&mut self) {
        if self.state != State::Handshake {
            return;
        }
        self.tls = true;
        self.caps = PeerCaps::default();
        let h = format!("EHLO {}", self.hostname);
        self.cmd(&h);
        self.state = State::Ehlo;
    }

    /// Whether TLS is active on this session.
    pub fn tls_active(&self) -> bool {
        self.tls
    }

    /// Whether the outcomes last reported by [`DeliverStep::Finished`] were decided here (over
    /// SIZE, 8-bit or UTF-8 the peer cannot take) rather than replied by the peer: such a reply
    /// must not be reported as the peer's (no Remote-MTA or Diagnostic-Code in a notice).
    pub fn verdict_was_local(&self) -> bool {
        self.local_verdict
    }

    /// The first word of the peer's 220 greeting (its host name by RFC 5321 §4.2), once seen.
    pub fn peer_name(&self) -> Option<&str> {
        self.peer_name.as_deref()
    }

    pub fn output(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }
    pub fn caps(&self) -> &PeerCaps {
        &self.caps
    }
    /// Why the session failed, if it did (greeting refused, protocol error, 421).
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Transactions started and not yet reported `Finished`.
    pub fn in_flight(&self) -> usize {
        self.txs.len()
    }

    pub fn waiting_for(&self) -> Wait {
        match (&self.state, self.expect.front()) {
            (State::Greeting, _) => Wait::Greeting,
            (_, Some((_, Expect::Data | Expect::Chunk))) => Wait::DataStart,
            (_, Some((_, Expect::Final | Expect::EmptyFinal))) => Wait::DataFinal,
            _ => Wait::Command,
        }
    }

    fn cmd(&mut self, s: &str) {
        self.out.extend_from_slice(s.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// Queue a command of transaction `seq` (or of none, for QUIT) whose reply we then owe.
    fn command(&mut self, seq: u64, s: &str, what: Expect) {
        self.cmd(s);
        self.owe(seq, what);
    }

    /// A reply of transaction `seq` is now owed (its command is in the output).
    fn owe(&mut self, seq: u64, what: Expect) {
        self.expect.push_back((seq, what));
        if let Some(tx) = self.txs.iter_mut().find(|t| t.seq == seq) {
            tx.owed += 1;
        }
    }

    /// Whether another transaction may start now. With PIPELINING the next MAIL, RCPT and DATA
    /// follow the previous message's final dot in the same write (RFC 2920 §3.1 lets message
    /// content open a group), so each message costs one round trip, not two; the peer answers
    /// in order, so the final reply still decides the earlier message alone. Without
    /// PIPELINING, one transaction at a time.
    fn ready(&self) -> bool {
        if self.state != State::Open || self.closing.is_some() {
            return false;
        }
        if self.txs.is_empty() {
            return true;
        }
        !self.holding
            && self.caps.pipelining
            && self.txs.len() < MAX_IN_FLIGHT
            && self
                .txs
                .iter()
                .all(|t| matches!(t.phase, Phase::Local(_) | Phase::AwaitFinal | Phase::Decided(_)))
    }

    pub fn poll(&mut self, input: &mut BytesMut) -> DeliverStep {
        loop {
            if let Some(f) = self.pop_finished() {
                return DeliverStep::Finished(f);
            }
            if self.state == State::Done {
                return DeliverStep::Done;
            }
            if self.state == State::Handshake {
                return DeliverStep::StartTls;
            }
            if self.txs.iter().any(|t| t.phase == Phase::Body) {
                return DeliverStep::SendBody;
            }
            if self.ready() {
                return DeliverStep::Ready;
            }
            let reply = match parse_reply(input) {
                Ok(Some(r)) => r,
                Ok(None) => return DeliverStep::NeedInput,
                Err(e) => {
                    self.protocol_error(e);
                    continue;
                }
            };
            self.on_reply(reply);
        }
    }

    /// The oldest transaction, once decided (in-order reporting: a later message decided first
    /// waits for the earlier ones).
    fn pop_finished(&mut self) -> Option<Vec<RcptOutcome>> {
        let front = self.txs.front()?;
        let local = match &front.phase {
            Phase::Local(_) => true,
            Phase::Decided(_) => false,
            _ => return None,
        };
        let tx = self.txs.pop_front()?;
        self.local_verdict = local;
        Some(match tx.phase {
            Phase::Local(o) => vec![o; tx.recipients.len()],
            Phase::Decided(v) => v,
            _ => unreachable!("checked above"),
        })
    }

    fn protocol_error(&mut self, e: ReplyError) {
        self.error = Some(format!("customer sent an invalid reply: {e}"));
        self.keep_decided();
        self.state = State::Done;
    }

    /// The session broke: transactions still waiting for replies get no outcome (they stay
    /// queued), and neither do those after them, so that what is reported is always the oldest
    /// transactions, in order (the driver pairs them with its messages by counting).
    fn keep_decided(&mut self) {
        let undecided = self
            .txs
            .iter()
            .position(|t| !matches!(t.phase, Phase::Local(_) | Phase::Decided(_)));
        if let Some(i) = undecided {
            self.txs.truncate(i);
        }
    }

    fn on_reply(&mut self, r: Reply) {
        match self.state {
            State::Greeting => {
                if r.code == 220 {
                    self.peer_name = r
                        .lines
                        .first()
                        .and_then(|l| l.split_whitespace().next())
                        .filter(|n| n.len() <= 255 && n.bytes().all(|b| b.is_ascii_graphic()))
                        .map(str::to_string);
                    let h = format!("EHLO {}", self.hostname);
                    self.cmd(&h);
                    self.state = State::Ehlo;
                } else if r.code == 554 {
                    // RFC 5321 §3.1: still QUIT politely.
                    self.error = Some(format!("customer refused the session: {r}"));
                    self.quit_now();
                } else {
                    self.error = Some(format!("customer greeting was not 220: {r}"));
                    self.state = State::Done;
                }
            }
            State::Ehlo => {
                if r.is_positive() {
                    self.caps = PeerCaps::from_ehlo(&r);
                    self.state = State::Open;
                    self.after_greeting();
                } else if r.is_permanent() {
                    let h = format!("HELO {}", self.hostname);
                    self.cmd(&h);
                    self.state = State::Helo;
                } else {
                    self.error = Some(format!("customer refused EHLO: {r}"));
                    self.state = State::Done;
                }
            }
            State::Helo => {
                if r.is_positive() {
                    self.caps = PeerCaps::default();
                    self.state = State::Open;
                    self.after_greeting();
                } else {
                    self.error = Some(format!("customer refused HELO: {r}"));
                    self.quit_now();
                }
            }
            State::StartTls => {
                if r.code == 220 {
                    self.state = State::Handshake;
                } else if self.starttls == StartTls::Required {
                    self.error = Some(format!("customer refused STARTTLS, which is required: {r}"));
                    self.quit_now();
                } else {
                    // RFC 3207 §4: the client decides whether to go on; opportunistic TLS does,
                    // with what the first EHLO said.
                    self.state = State::Open;
                }
            }
            State::Open | State::Quit => self.tx_reply(r),
            State::Handshake | State::Done => {}
        }
    }

    /// EHLO (or HELO) is answered: ask for TLS if the policy says so, else start.
    fn after_greeting(&mut self) {
        if self.tls || self.starttls == StartTls::Never {
            return;
        }
        if self.caps.starttls {
            self.cmd("STARTTLS");
            self.state = State::StartTls;
        } else if self.starttls == StartTls::Required {
            self.error = Some("customer does not offer STARTTLS, which is required".into());
            self.quit_now();
        }
    }

    fn quit_now(&mut self) {
        self.cmd("QUIT");
        self.expect.push_back((u64::MAX, Expect::Quit));
        self.state = State::Quit;
    }

    /// Start a transaction. Messages the peer cannot take as they are finish without a command
    /// being sent (reported in their turn, after the transactions started before them):
    /// - over the peer's SIZE limit: failed, `552 5.3.4` (RFC 1870 §6.2);
    /// - 8-bit content to a peer without 8BITMIME, or an SMTPUTF8 message to a peer without
    ///   SMTPUTF8: deferred, `450 4.6.3`/`4.6.7`, so the message stays queued with a visible
    ///   reason until the customer's MTA offers the extension or the message expires. We do not
    ///   downgrade content (RFC 6152 §3 allows only lossless conversion) and we do not bounce
    ///   mail the customer may well take once its configuration is fixed.
    pub fn send(&mut self, msg: OutMessage) {
        if !self.ready() {
            return;
        }
        self.holding = false;
        let n = msg.recipients.len();
        let seq = self.next_seq;
        self.next_seq += 1;
        let synthetic = |code, st: &str, text: &str| Reply::new(code, st, text.to_string());
        let refusal = match self.caps.size {
            Some(max) if max > 0 && msg.size > max => Some(RcptOutcome::Failed(synthetic(
                552,
                "5.3.4",
                &format!(
                    "message of {} octets exceeds the customer's SIZE limit of {max}",
                    msg.size
                ),
            ))),
            _ if (msg.eight_bit || param(&msg.mail_params, "BODY") == Some("8BITMIME"))
                && !self.caps.eight_bit_mime =>
            {
                Some(RcptOutcome::Deferred(synthetic(
                    450,
                    "4.6.3",
                    "8-bit message held: the customer does not offer 8BITMIME",
                )))
            }
            _ if param(&msg.mail_params, "SMTPUTF8").is_some() && !self.caps.smtputf8 => {
                Some(RcptOutcome::Deferred(synthetic(
                    450,
                    "4.6.7",
                    "SMTPUTF8 message held: the customer does not offer SMTPUTF8",
                )))
            }
            _ => None,
        };
        let mut tx = Tx {
            seq,
            phase: Phase::Commands,
            recipients: msg.recipients,
            mail: None,
            rcpts: vec![None; n],
            data: None,
            chunk: None,
            fin: None,
            owed: 0,
            utf8: false,
            bdat: self.bdat() && msg.size <= BDAT_MAX,
        };
        if let Some(o) = refusal {
            tx.phase = Phase::Local(o);
            self.txs.push_back(tx);
            return;
        }
        if n == 0 {
            tx.phase = Phase::Decided(Vec::new());
            self.txs.push_back(tx);
            return;
        }
        let mut mail = format!("MAIL FROM:<{}>", msg.mail_from);
        if self.caps.size.is_some() {
            mail.push_str(&format!(" SIZE={}", msg.size));
        }
        if self.caps.eight_bit_mime {
            if msg.eight_bit || param(&msg.mail_params, "BODY") == Some("8BITMIME") {
                mail.push_str(" BODY=8BITMIME");
            } else if param(&msg.mail_params, "BODY") == Some("7BIT") {
                mail.push_str(" BODY=7BIT");
            }
        }
        if self.caps.smtputf8 && param(&msg.mail_params, "SMTPUTF8").is_some() {
            mail.push_str(" SMTPUTF8");
            tx.utf8 = true;
        }
        if self.caps.dsn {
            for k in ["RET", "ENVID"] {
                if let Some(v) = param(&msg.mail_params, k) {
                    mail.push_str(&format!(" {k}={v}"));
                }
            }
        }
        self.txs.push_back(tx);
        if self.bdat() && self.mail_sent {
            // See the module's invariants: a failed BDAT may leave the previous transaction
            // open on the peer's side.
            self.command(seq, "RSET", Expect::Rset);
        }
        self.mail_sent = true;
        self.command(seq, &mail, Expect::Mail);
        if self.caps.pipelining {
            for i in 0..n {
                let r = self.rcpt_cmd(seq, i);
                self.command(seq, &r, Expect::Rcpt(i));
            }
            if self.tx(seq).is_some_and(|t| t.bdat) {
                // No 354 to wait for: the body follows at once (RFC 3030 §4.2).
                self.begin_body(seq);
            } else {
                self.command(seq, "DATA", Expect::Data);
            }
        }
    }

    /// Whether bodies go out as BDAT: the peer offers CHUNKING and PIPELINING (see the module's
    /// invariants; in lockstep BDAT would save only the 354).
    fn bdat(&self) -> bool {
        self.caps.chunking && self.caps.pipelining
    }

    fn begin_body(&mut self, seq: u64) {
        self.stuffer = DotStuffer::new();
        self.chunk.clear();
        self.tail = [0; 2];
        self.body_len = 0;
        if let Some(tx) = self.tx_mut(seq) {
            tx.phase = Phase::Body;
        }
    }

    /// `BDAT n [LAST]` and its `n` octets.
    fn send_chunk(&mut self, seq: u64, octets: &[u8], last: bool) {
        if last {
            self.command(seq, &format!("BDAT {} LAST", octets.len()), Expect::Final);
        } else {
            self.command(seq, &format!("BDAT {}", octets.len()), Expect::Chunk);
        }
        self.out.extend_from_slice(octets);
    }

    fn rcpt_cmd(&self, seq: u64, i: usize) -> String {
        let tx = self.tx(seq).expect("transaction in flight");
        let r = &tx.recipients[i];
        let mut s = format!("RCPT TO:<{}>", r.address);
        if self.caps.dsn {
            if let Some(v) = param(&r.params, "NOTIFY") {
                s.push_str(&format!(" NOTIFY={v}"));
            }
            if let Some(v) = param(&r.params, "ORCPT") {
                // Raw UTF-8 in ORCPT is allowed only under SMTPUTF8 (RFC 6533 §3).
                let v = if tx.utf8 {
                    v.into()
                } else {
                    orcpt_without_smtputf8(v)
                };
                s.push_str(&format!(" ORCPT={v}"));
            }
        }
        s
    }

    fn tx(&self, seq: u64) -> Option<&Tx> {
        self.txs.iter().find(|t| t.seq == seq)
    }
    fn tx_mut(&mut self, seq: u64) -> Option<&mut Tx> {
        self.txs.iter_mut().find(|t| t.seq == seq)
    }

    fn tx_reply(&mut self, r: Reply) {
        let Some((seq, what)) = self.expect.pop_front() else {
            self.error = Some(format!("unexpected reply from customer: {r}"));
            self.keep_decided();
            self.state = State::Done;
            return;
        };
        if what == Expect::Quit {
            self.state = State::Done;
            return;
        }
        if r.code == 421 {
            // The peer is going away: everything not yet decided is deferred.
            self.error = Some(format!("customer closed the session: {r}"));
            self.closing = Some(r);
            self.expect.clear();
            let seqs: Vec<u64> = self.txs.iter().map(|t| t.seq).collect();
            for s in seqs {
                self.decide(s);
            }
            self.state = State::Done;
            return;
        }
        let pipelining = self.caps.pipelining;
        let (ok, go) = (r.is_positive(), r.code == 354);
        let Some(tx) = self.tx_mut(seq) else { return };
        tx.owed = tx.owed.saturating_sub(1);
        let n = tx.rcpts.len();
        match what {
            Expect::Mail => tx.mail = Some(r),
            Expect::Rcpt(i) => tx.rcpts[i] = Some(r),
            Expect::Data => tx.data = Some(r),
            // A refused chunk refuses the message, like a refused DATA (the first refusal
            // counts; the peer discards the chunks that were already on their way).
            Expect::Chunk if !ok && tx.chunk.is_none() => tx.chunk = Some(r),
            Expect::Final => tx.fin = Some(r),
            _ => {}
        }
        match what {
            Expect::Mail => {
                if !pipelining {
                    if ok {
                        let c = self.rcpt_cmd(seq, 0);
                        self.command(seq, &c, Expect::Rcpt(0));
                    } else {
                        self.decide(seq);
                    }
                }
            }
            Expect::Rcpt(i) => {
                if !pipelining {
                    if i + 1 < n {
                        let c = self.rcpt_cmd(seq, i + 1);
                        self.command(seq, &c, Expect::Rcpt(i + 1));
                    } else if self.any_accepted(seq) {
                        self.command(seq, "DATA", Expect::Data);
                    } else {
                        self.command(seq, "RSET", Expect::Rset);
                    }
                }
            }
            Expect::Data => {
                if go && self.any_accepted(seq) {
                    self.begin_body(seq);
                } else if go {
                    // RFC 2920 §3.1: a 354 with no valid recipient gets an empty message.
                    self.command(seq, ".", Expect::EmptyFinal);
                } else {
                    self.command(seq, "RSET", Expect::Rset);
                }
            }
            Expect::EmptyFinal => self.command(seq, "RSET", Expect::Rset),
            Expect::Chunk | Expect::Final | Expect::Rset | Expect::Quit => {}
        }
        if self
            .tx(seq)
            .is_some_and(|t| t.owed == 0 && matches!(t.phase, Phase::Commands | Phase::AwaitFinal))
        {
            self.decide(seq);
        }
    }

    fn any_accepted(&self, seq: u64) -> bool {
        self.tx(seq).is_some_and(|tx| {
            tx.mail.as_ref().is_some_and(Reply::is_positive)
                && tx
                    .rcpts
                    .iter()
                    .any(|r| r.as_ref().is_some_and(Reply::is_positive))
        })
    }

    /// Turn the replies of transaction `seq` into one outcome per recipient (it is then
    /// reported in its turn). Transactions already decided keep their outcomes.
    fn decide(&mut self, seq: u64) {
        let closing = self.closing.clone();
        let Some(tx) = self.tx_mut(seq) else { return };
        if matches!(tx.phase, Phase::Local(_) | Phase::Decided(_)) {
            return;
        }
        let lost = || Reply::new(451, "4.4.2", "no reply from customer");
        let progress = tx.mail.as_ref().is_some_and(Reply::is_positive)
            && tx
                .rcpts
                .iter()
                .any(|r| r.as_ref().is_some_and(Reply::is_positive));
        let too_many = |r: &Reply| r.code == 452 || (r.code == 552 && r.status.as_deref() == Some("5.5.3"));
        let outcomes = tx
            .rcpts
            .iter()
            .map(|rr| {
                let decided = match (&tx.mail, rr, &tx.data, &tx.fin) {
                    (Some(m), _, _, _) if !m.is_positive() => Some(RcptOutcome::from_refusal(m)),
                    (_, Some(r), _, _) if too_many(r) && progress && closing.is_none() => {
                        Some(RcptOutcome::Again(r.clone()))
                    }
                    (_, Some(r), _, _) if too_many(r) => Some(RcptOutcome::Deferred(r.clone())),
                    (_, Some(r), _, _) if !r.is_positive() => Some(RcptOutcome::from_refusal(r)),
                    (_, _, Some(d), _) if d.code != 354 => Some(RcptOutcome::from_refusal(d)),
                    _ if tx.chunk.is_some() => tx.chunk.as_ref().map(RcptOutcome::from_refusal),
                    (_, _, _, Some(f)) => Some(RcptOutcome::from_final(f)),
                    _ => None,
                };
                match (decided, &closing) {
                    (Some(o @ RcptOutcome::Failed(_)), _) | (Some(o), None) => o,
                    (_, Some(c)) => RcptOutcome::Deferred(c.clone()),
                    (None, None) => RcptOutcome::Deferred(lost()),
                }
            })
            .collect();
        tx.phase = Phase::Decided(outcomes);
    }

    /// Part of the body (unstuffed octets as stored); dot-stuffed into the output.
    ///
    /// With BDAT the body is gathered, to go out as one chunk at [`Deliverer::body_end`]. A body
    /// longer than its stated size (it was under [`BDAT_MAX`]) never makes that buffer grow
    /// past twice the limit: the part gathered goes out as a chunk of its own first.
    pub fn body(&mut self, chunk: &[u8]) {
        let Some((seq, bdat)) = self
            .txs
            .iter()
            .find(|t| t.phase == Phase::Body)
            .map(|t| (t.seq, t.bdat))
        else {
            return;
        };
        if !bdat {
            self.stuffer.stuff(chunk, &mut self.out);
            return;
        }
        if chunk.is_empty() {
            return;
        }
        if (self.chunk.len() + chunk.len()) as u64 > 2 * BDAT_MAX {
            let held = std::mem::take(&mut self.chunk);
            self.send_chunk(seq, &held, false);
            self.chunk = held;
            self.chunk.clear();
        }
        self.chunk.extend_from_slice(chunk);
        self.tail = match chunk {
            [.., a, b] => [*a, *b],
            [b] => [self.tail[1], *b],
            [] => self.tail,
        };
        self.body_len += chunk.len() as u64;
    }

    /// The body is complete: send the end marker (or, with CHUNKING, the last chunk). Content
    /// that does not end in CRLF gets one, as RFC 5321 §4.1.1.4 has the sender add it before
    /// the final dot; empty content stays empty.
    pub fn body_end(&mut self) {
        let Some((seq, bdat)) = self
            .txs
            .iter()
            .find(|t| t.phase == Phase::Body)
            .map(|t| (t.seq, t.bdat))
        else {
            return;
        };
        if bdat {
            if self.body_len > 0 && self.tail != *b"\r\n" {
                self.chunk.extend_from_slice(b"\r\n");
            }
            let last = std::mem::take(&mut self.chunk);
            self.send_chunk(seq, &last, true);
            self.chunk = last;
            self.chunk.clear();
        } else {
            self.stuffer.finish(&mut self.out);
            self.owe(seq, Expect::Final);
        }
        if let Some(tx) = self.tx_mut(seq) {
            tx.phase = Phase::AwaitFinal;
        }
    }

    /// Nothing to send now, but messages are in flight: read their replies first (one may yet
    /// need its refused recipients sent again); `Ready` comes back once they are all reported.
    pub fn hold(&mut self) {
        if self.ready() {
            self.holding = true;
        }
    }

    /// No more messages: send QUIT (after the final dot of a message still awaiting its reply,
    /// if there is one; that reply is still read and reported before `Done`).
    pub fn quit(&mut self) {
        if self.ready() {
            self.quit_now();
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    /// Drive the machine: feed the customer's `peer` bytes, return what the provider wrote.
    fn feed(d: &mut Deliverer, peer: &str) -> (String, DeliverStep) {
        let mut input = BytesMut::from(peer);
        let step = d.poll(&mut input);
        assert!(
            input.is_empty() || step != DeliverStep::NeedInput,
            "unconsumed input"
        );
        (String::from_utf8(std::mem::take(d.output())).unwrap(), step)
    }

    fn msg(rcpts: &[&str]) -> OutMessage {
        OutMessage {
            mail_from: "alice@sender.example".into(),
            mail_params: String::new(),
            size: 20,
            eight_bit: false,
            recipients: rcpts
                .iter()
                .map(|a| RcptEntry {
                    address: a.to_string(),
                    params: String::new(),
                })
                .collect(),
        }
    }

    const EHLO_FULL: &str = "250-customer\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 1000\r\n";

    fn ready(ehlo_reply: &str) -> Deliverer {
        let mut d = Deliverer::new("odmr.example.net");
        assert_eq!(
            feed(&mut d, "220 customer ready\r\n"),
            ("EHLO odmr.example.net\r\n".into(), DeliverStep::NeedInput)
        );
        assert_eq!(feed(&mut d, ehlo_reply).1, DeliverStep::Ready);
        d
    }

    /// Greeted with `policy`, the first EHLO answered with `ehlo_reply`.
    fn greeted(policy: StartTls, ehlo_reply: &str) -> (Deliverer, String, DeliverStep) {
        let mut d = Deliverer::new("odmr.example.net");
        d.set_starttls(policy);
        feed(&mut d, "220 customer ready\r\n");
        let (out, step) = feed(&mut d, ehlo_reply);
        (d, out, step)
    }

    const EHLO_TLS: &str = "250-customer\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 STARTTLS\r\n";

    #[test]
    fn starttls_when_offered_then_everything_from_a_new_ehlo() {
        let (mut d, out, step) = greeted(StartTls::IfOffered, EHLO_TLS);
        assert_eq!((out.as_str(), &step), ("STARTTLS\r\n", &DeliverStep::NeedInput));
        // Anything the peer sends after its 220 stays unread, for the driver to refuse.
        let mut input = BytesMut::from("220 go ahead\r\n250 injected\r\n");
        assert_eq!(d.poll(&mut input), DeliverStep::StartTls);
        assert_eq!(&input[..], b"250 injected\r\n");
        assert_eq!(
            d.poll(&mut BytesMut::new()),
            DeliverStep::StartTls,
            "until tls_started"
        );
        d.tls_started();
        assert!(d.tls_active());
        assert_eq!(feed(&mut d, "").0, "EHLO odmr.example.net\r\n");
        // The capabilities are the second EHLO's alone: CHUNKING said in plaintext is forgotten.
        assert_eq!(
            feed(&mut d, "250-customer\r\n250 STARTTLS\r\n").1,
            DeliverStep::Ready
        );
        assert!(!d.caps().chunking && !d.caps().pipelining);
        d.send(msg(&["x@example.org"]));
        assert!(feed(&mut d, "").0.starts_with("MAIL FROM:"), "no second STARTTLS");
    }

    #[test]
    fn opportunistic_tls_goes_on_in_plaintext_when_not_offered_or_refused() {
        let (d, out, step) = greeted(StartTls::IfOffered, EHLO_FULL);
        assert_eq!((out.as_str(), step), ("", DeliverStep::Ready));
        assert!(!d.tls_active() && d.caps().pipelining);

        let (mut d, _, _) = greeted(StartTls::IfOffered, EHLO_TLS);
        assert_eq!(
            feed(&mut d, "454 4.7.0 TLS not available\r\n").1,
            DeliverStep::Ready
        );
        assert!(
            !d.tls_active() && d.caps().chunking,
            "the first EHLO's capabilities"
        );
        assert_eq!(d.error(), None);
    }

    #[test]
    fn required_tls_quits_when_not_offered_or_refused() {
        for (ehlo, then) in [(EHLO_FULL, None), (EHLO_TLS, Some("454 4.7.0 not now\r\n"))] {
            let (mut d, mut out, mut step) = greeted(StartTls::Required, ehlo);
            if let Some(refusal) = then {
                assert_eq!(out, "STARTTLS\r\n");
                (out, step) = feed(&mut d, refusal);
            }
            assert_eq!(
                (out.as_str(), &step),
                ("QUIT\r\n", &DeliverStep::NeedInput),
                "{ehlo}"
            );
            assert!(d.error().unwrap().contains("STARTTLS"), "{:?}", d.error());
            assert_eq!(feed(&mut d, "221 bye\r\n").1, DeliverStep::Done);
        }
        // A HELO-only peer cannot offer it either.
        let (mut d, out, _) = greeted(StartTls::Required, "502 5.5.1 EHLO unknown\r\n");
        assert_eq!(out, "HELO odmr.example.net\r\n");
        assert_eq!(feed(&mut d, "250 hi\r\n").0, "QUIT\r\n");
    }

    #[test]
    fn never_asks_for_tls_even_when_offered() {
        let (d, out, step) = greeted(StartTls::Never, EHLO_TLS);
        assert_eq!((out.as_str(), step), ("", DeliverStep::Ready));
        assert!(d.caps().starttls && !d.tls_active());
    }

    #[test]
    fn pipelined_transaction_with_mixed_recipient_replies() {
        let mut d = ready(EHLO_FULL);
        assert!(d.caps().pipelining && d.caps().eight_bit_mime);
        d.send(msg(&["x@example.org", "y@example.org", "z@example.org"]));
        let (out, step) = feed(&mut d, "");
        assert_eq!(
            out,
            "MAIL FROM:<alice@sender.example> SIZE=20\r\nRCPT TO:<x@example.org>\r\nRCPT TO:<y@example.org>\r\nRCPT TO:<z@example.org>\r\nDATA\r\n"
        );
        assert_eq!(step, DeliverStep::NeedInput);
        let (_, step) = feed(
            &mut d,
            "250 ok\r\n250 ok\r\n450 4.2.0 busy\r\n550 5.1.1 unknown\r\n354 go\r\n",
        );
        assert_eq!(step, DeliverStep::SendBody);
        d.body(b"Subject: x\r\n\r\n.dot\r\n");
        d.body_end();
        // The next transaction (here QUIT) may follow the final dot at once.
        let (out, step) = feed(&mut d, "");
        assert_eq!(out, "Subject: x\r\n\r\n..dot\r\n.\r\n");
        assert_eq!(step, DeliverStep::Ready);
        d.quit();
        let (out, step) = feed(&mut d, "");
        assert_eq!((out.as_str(), step), ("QUIT\r\n", DeliverStep::NeedInput));
        let (_, step) = feed(&mut d, "250 2.0.0 queued\r\n");
        let DeliverStep::Finished(o) = step else {
            panic!("{step:?}")
        };
        assert!(matches!(&o[0], RcptOutcome::Delivered(r) if r.code == 250));
        assert!(matches!(&o[1], RcptOutcome::Deferred(r) if r.code == 450));
        assert!(
            matches!(&o[2], RcptOutcome::Failed(r) if r.code == 550 && r.status.as_deref() == Some("5.1.1"))
        );
        assert_eq!(feed(&mut d, "").1, DeliverStep::NeedInput);
        assert_eq!(feed(&mut d, "221 bye\r\n").1, DeliverStep::Done);
    }

    /// RFC 2920 §3.1: the next MAIL, RCPT and DATA go out right behind the final dot, and the
    /// replies are still paired by counting: the final reply decides the first message alone.
    #[test]
    fn the_next_transaction_is_pipelined_behind_the_final_dot() {
        let mut d = ready(EHLO_FULL);
        d.send(msg(&["x@example.org"]));
        feed(&mut d, "");
        assert_eq!(
            feed(&mut d, "250 ok\r\n250 ok\r\n354 go\r\n").1,
            DeliverStep::SendBody
        );
        d.body(b"one\r\n");
        d.body_end();
        assert_eq!(feed(&mut d, ""), ("one\r\n.\r\n".into(), DeliverStep::Ready));
        assert_eq!(d.waiting_for(), Wait::DataFinal);
        // A message the peer cannot take is decided here, but reported in its turn.
        let mut big = msg(&["w@example.org"]);
        big.size = 5000;
        d.send(big);
        assert_eq!(feed(&mut d, "").1, DeliverStep::Ready);
        d.send(msg(&["y@example.org", "z@example.org"]));
        let (out, step) = feed(&mut d, "");
        assert_eq!(
            out,
            "MAIL FROM:<alice@sender.example> SIZE=20\r\nRCPT TO:<y@example.org>\r\nRCPT TO:<z@example.org>\r\nDATA\r\n"
        );
        assert_eq!(step, DeliverStep::NeedInput);
        assert_eq!(d.in_flight(), 3);
        let mut input = BytesMut::from("451 4.3.0 try later\r\n250 ok\r\n250 ok\r\n550 no\r\n354 go\r\n");
        let DeliverStep::Finished(o) = d.poll(&mut input) else {
            panic!()
        };
        assert!(matches!(&o[..], [RcptOutcome::Deferred(r)] if r.code == 451));
        assert!(!d.verdict_was_local());
        let DeliverStep::Finished(o) = d.poll(&mut input) else {
            panic!()
        };
        assert!(matches!(&o[..], [RcptOutcome::Failed(r)] if r.code == 552));
        assert!(d.verdict_was_local());
        assert_eq!(d.poll(&mut input), DeliverStep::SendBody);
        assert!(input.is_empty());
        d.body(b"two");
        d.body_end();
        assert_eq!(d.poll(&mut input), DeliverStep::Ready);
        d.quit();
        input.extend_from_slice(b"250 queued\r\n221 bye\r\n");
        let DeliverStep::Finished(o) = d.poll(&mut input) else {
            panic!()
        };
        assert!(matches!(&o[..], [RcptOutcome::Delivered(_), RcptOutcome::Failed(r)] if r.code == 550));
        assert_eq!(d.poll(&mut input), DeliverStep::Done);
    }

    const EHLO_CHUNKING: &str = "250-customer\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 8BITMIME\r\n";

    fn finished(d: &mut Deliverer, input: &mut BytesMut) -> Vec<RcptOutcome> {
        match d.poll(input) {
            DeliverStep::Finished(o) => o,
            step => panic!("expected Finished, got {step:?}"),
        }
    }

    /// RFC 3030: with CHUNKING and PIPELINING whole transactions go out without waiting for
    /// any reply: no 354, the body raw (no dot-stuffing) in `BDAT n` chunks, the last one
    /// marked LAST; every transaction after the first starts with RSET. The replies are then
    /// paired by counting, each message decided by its own.
    #[test]
    fn chunking_sends_whole_transactions_without_waiting() {
        let mut d = ready(EHLO_CHUNKING);
        assert!(d.caps().chunking);
        d.send(msg(&["x@example.org"]));
        assert_eq!(
            feed(&mut d, ""),
            (
                "MAIL FROM:<alice@sender.example>\r\nRCPT TO:<x@example.org>\r\n".into(),
                DeliverStep::SendBody
            )
        );
        d.body(b"Subject: x\r\n\r\n.dot\r\n");
        d.body_end();
        assert_eq!(
            feed(&mut d, ""),
            (
                "BDAT 20 LAST\r\nSubject: x\r\n\r\n.dot\r\n".into(),
                DeliverStep::Ready
            )
        );
        d.send(msg(&["y@example.org", "z@example.org"]));
        assert_eq!(
            feed(&mut d, ""),
            (
                "RSET\r\nMAIL FROM:<alice@sender.example>\r\nRCPT TO:<y@example.org>\r\nRCPT TO:<z@example.org>\r\n".into(),
                DeliverStep::SendBody
            )
        );
        // In pieces, and without a final CRLF: the last chunk carries it.
        d.body(b"Subject: y\r");
        d.body(b"\n\r\nno end");
        d.body_end();
        let (out, step) = feed(&mut d, "");
        assert_eq!(out, "BDAT 22 LAST\r\nSubject: y\r\n\r\nno end\r\n");
        assert_eq!(step, DeliverStep::Ready);
        assert_eq!(d.in_flight(), 2);
        d.quit();
        assert_eq!(feed(&mut d, "").0, "QUIT\r\n");
        let mut input = BytesMut::from(
            "250 ok\r\n250 ok\r\n250 2.0.0 first\r\n250 reset\r\n250 ok\r\n250 ok\r\n550 5.1.1 no z\r\n250 2.0.0 second\r\n221 bye\r\n",
        );
        assert!(
            matches!(&finished(&mut d, &mut input)[..], [RcptOutcome::Delivered(r)] if r.lines[0] == "first")
        );
        assert!(matches!(
            &finished(&mut d, &mut input)[..],
            [RcptOutcome::Delivered(r), RcptOutcome::Failed(f)] if r.lines[0] == "second" && f.code == 550
        ));
        assert_eq!(d.poll(&mut input), DeliverStep::Done);
    }

    /// A refused chunk refuses the message (the first refusal counts, not the LAST's 503);
    /// recipients refused at RCPT keep their own reply; empty content is `BDAT 0 LAST`. A body
    /// longer than it said (over twice `BDAT_MAX`) goes out in more than one chunk, each count
    /// exact.
    #[test]
    fn chunk_and_recipient_refusals_decide_under_chunking() {
        let mut d = ready(EHLO_CHUNKING);
        d.send(msg(&["x@example.org"]));
        feed(&mut d, "");
        let big = vec![b'a'; BDAT_MAX as usize + 10];
        d.body(&big);
        d.body(&big);
        d.body_end();
        let out = feed(&mut d, "").0;
        let first = format!("BDAT {}\r\n", big.len());
        assert!(out.starts_with(&first), "{}", &out[..40]);
        let last = format!("BDAT {} LAST\r\n", big.len() + 2);
        assert_eq!(&out[first.len() + big.len()..][..last.len()], last);
        assert_eq!(out.len(), first.len() + last.len() + 2 * big.len() + 2);
        d.send(msg(&["y@example.org"]));
        assert!(feed(&mut d, "").0.ends_with("RCPT TO:<y@example.org>\r\n"));
        d.body_end();
        assert_eq!(feed(&mut d, "").0, "BDAT 0 LAST\r\n");
        d.hold();
        let mut input = BytesMut::from(
            "250 ok\r\n250 ok\r\n552 5.3.4 too big\r\n503 5.5.1 failed earlier\r\n250 reset\r\n250 ok\r\n550 5.1.1 unknown\r\n554 5.5.1 no valid recipients\r\n",
        );
        assert!(matches!(&finished(&mut d, &mut input)[..], [RcptOutcome::Failed(r)] if r.code == 552));
        assert!(
            matches!(&finished(&mut d, &mut input)[..], [RcptOutcome::Failed(r)] if r.status.as_deref() == Some("5.1.1"))
        );
    }

    /// A message over `BDAT_MAX` goes with DATA even when the peer offers CHUNKING (one refusal
    /// for its whole body, not one per chunk); the session still opens it with RSET.
    #[test]
    fn a_large_message_goes_with_data_under_chunking() {
        let mut d = ready(EHLO_CHUNKING);
        let mut big = msg(&["x@example.org"]);
        big.size = BDAT_MAX + 1;
        d.send(big);
        assert_eq!(
            feed(&mut d, "").0,
            "MAIL FROM:<alice@sender.example>\r\nRCPT TO:<x@example.org>\r\nDATA\r\n"
        );
        assert_eq!(
            feed(&mut d, "250 ok\r\n250 ok\r\n354 go\r\n").1,
            DeliverStep::SendBody
        );
        d.body(b".x\r\n");
        d.body_end();
        assert_eq!(feed(&mut d, ""), ("..x\r\n.\r\n".into(), DeliverStep::Ready));
        d.send(msg(&["y@example.org"]));
        assert!(feed(&mut d, "").0.starts_with("RSET\r\nMAIL FROM:"));
    }

    /// A nonsense 354 to a chunk is not a success: the message stays queued even if LAST
    /// then gets a 250.
    #[test]
    fn a_354_to_a_chunk_never_counts_as_delivered() {
        let mut d = ready(EHLO_CHUNKING);
        d.send(msg(&["x@example.org"]));
        feed(&mut d, "");
        let big = vec![b'a'; BDAT_MAX as usize + 10];
        d.body(&big);
        d.body(&big);
        d.body_end();
        feed(&mut d, "");
        d.hold();
        let mut input = BytesMut::from("250 ok\r\n250 ok\r\n354 what\r\n250 2.0.0 queued\r\n");
        assert!(matches!(&finished(&mut d, &mut input)[..], [RcptOutcome::Deferred(r)] if r.code == 354));
    }

    /// CHUNKING without PIPELINING: DATA, as before. BDAT's gain is whole transactions on the
    /// wire at once; in lockstep it would save only the 354.
    #[test]
    fn chunking_without_pipelining_keeps_data() {
        let mut d = ready("250-customer\r\n250 CHUNKING\r\n");
        d.send(msg(&["x@example.org"]));
        assert_eq!(feed(&mut d, "").0, "MAIL FROM:<alice@sender.example>\r\n");
        assert_eq!(feed(&mut d, "250 ok\r\n").0, "RCPT TO:<x@example.org>\r\n");
        assert_eq!(feed(&mut d, "250 ok\r\n").0, "DATA\r\n");
        assert_eq!(feed(&mut d, "354 go\r\n").1, DeliverStep::SendBody);
        d.body(b".hi\r\n");
        d.body_end();
        assert_eq!(feed(&mut d, "").0, "..hi\r\n.\r\n");
    }

    /// Nothing to send but a message awaits its final reply: `hold` reads it first, so a
    /// recipient refused as "too many" can still be sent again before QUIT.
    #[test]
    fn hold_reads_the_replies_in_flight_before_ready_comes_back() {
        let mut d = ready(EHLO_FULL);
        d.send(msg(&["x@example.org", "y@example.org"]));
        feed(&mut d, "");
        feed(
            &mut d,
            "250 ok\r\n250 ok\r\n452 4.5.3 one at a time\r\n354 go\r\n",
        );
        d.body(b"hi\r\n");
        d.body_end();
        assert_eq!(feed(&mut d, "").1, DeliverStep::Ready);
        d.hold();
        assert_eq!(feed(&mut d, ""), (String::new(), DeliverStep::NeedInput));
        let DeliverStep::Finished(o) = feed(&mut d, "250 ok\r\n").1 else {
            panic!()
        };
        assert!(matches!(&o[1], RcptOutcome::Again(_)));
        assert_eq!(feed(&mut d, "").1, DeliverStep::Ready);
        d.send(msg(&["y@example.org"]));
        assert!(feed(&mut d, "").0.starts_with("MAIL FROM:"));
    }

    /// The connection breaks with a message awaiting its final reply and the next one on the
    /// wire: neither gets an outcome (both stay queued), and nothing after them is reported.
    #[test]
    fn a_broken_pipeline_reports_only_the_decided_prefix() {
        let mut d = ready(EHLO_FULL);
        d.send(msg(&["x@example.org"]));
        feed(&mut d, "");
        feed(&mut d, "250 ok\r\n250 ok\r\n354 go\r\n");
        d.body(b"one\r\n");
        d.body_end();
        feed(&mut d, "");
        d.send(msg(&["y@example.org"]));
        feed(&mut d, "");
        assert_eq!(feed(&mut d, "garbage\r\n").1, DeliverStep::Done);
        assert_eq!(d.in_flight(), 0);
    }

    #[test]
    fn lockstep_without_pipelining_and_helo_fallback() {
        let mut d = Deliverer::new("p.example");
        feed(&mut d, "220 hi\r\n");
        let (out, _) = feed(&mut d, "502 no EHLO here\r\n");
        assert_eq!(out, "HELO p.example\r\n");
        assert_eq!(feed(&mut d, "250 hello\r\n").1, DeliverStep::Ready);
        d.send(msg(&["x@example.org", "y@example.org"]));
        assert_eq!(feed(&mut d, "").0, "MAIL FROM:<alice@sender.example>\r\n");
        assert_eq!(feed(&mut d, "250 ok\r\n").0, "RCPT TO:<x@example.org>\r\n");
        assert_eq!(feed(&mut d, "250 ok\r\n").0, "RCPT TO:<y@example.org>\r\n");
        assert_eq!(feed(&mut d, "250 ok\r\n").0, "DATA\r\n");
        assert_eq!(feed(&mut d, "354 go\r\n").1, DeliverStep::SendBody);
        d.body(b"hi");
        d.body_end();
        assert_eq!(feed(&mut d, "").0, "hi\r\n.\r\n");
        let DeliverStep::Finished(o) = feed(&mut d, "451 4.3.0 later\r\n").1 else {
            panic!()
        };
        assert!(o.iter().all(|r| matches!(r, RcptOutcome::Deferred(_))));
    }

    #[test]
    fn too_many_recipients_are_sent_again_only_when_others_went_through() {
        let mut d = ready(EHLO_FULL);
        d.send(msg(&["x@example.org", "y@example.org"]));
        feed(&mut d, "");
        feed(
            &mut d,
            "250 ok\r\n250 ok\r\n452 4.5.3 one at a time\r\n354 go\r\n",
        );
        d.body(b"hi\r\n");
        d.body_end();
        assert_eq!(feed(&mut d, "").1, DeliverStep::Ready);
        // The driver sends the next message (here: the one recipient again) behind the dot.
        d.send(msg(&["y@example.org"]));
        feed(&mut d, "");
        let DeliverStep::Finished(o) = feed(&mut d, "250 ok\r\n").1 else {
            panic!()
        };
        assert!(matches!(&o[0], RcptOutcome::Delivered(_)));
        assert!(matches!(&o[1], RcptOutcome::Again(r) if r.code == 452));

        // No recipient accepted at all: no progress, so it is an ordinary deferral.
        assert_eq!(
            feed(&mut d, "250 ok\r\n452 4.5.3 full\r\n503 no\r\n").0,
            "RSET\r\n"
        );
        let DeliverStep::Finished(o) = feed(&mut d, "250 ok\r\n").1 else {
            panic!()
        };
        assert!(matches!(&o[0], RcptOutcome::Deferred(r) if r.code == 452));
    }

    #[test]
    fn a_250_to_data_never_counts_as_delivered() {
        let mut d = ready(EHLO_FULL);
        d.send(msg(&["x@example.org"]));
        feed(&mut d, "");
        let (out, _) = feed(&mut d, "250 ok\r\n250 ok\r\n250 ok\r\n");
        assert_eq!(out, "RSET\r\n");
        let DeliverStep::Finished(o) = feed(&mut d, "250 ok\r\n").1 else {
            panic!()
        };
        assert!(
            matches!(&o[0], RcptOutcome::Deferred(r) if r.code == 250),
            "{o:?}"
        );
    }

    #[test]
    fn all_recipients_refused_sends_rset_not_data() {
        let mut d = ready("250-c\r\n250 8BITMIME\r\n");
        d.send(msg(&["x@example.org"]));
        feed(&mut d, "");
        assert_eq!(feed(&mut d, "250 ok\r\n").0, "RCPT TO:<x@example.org>\r\n");
        assert_eq!(feed(&mut d, "550 no\r\n").0, "RSET\r\n");
        let DeliverStep::Finished(o) = feed(&mut d, "250 ok\r\n").1 else {
            panic!()
        };
        assert!(matches!(&o[0], RcptOutcome::Failed(_)));
        assert_eq!(feed(&mut d, "").1, DeliverStep::Ready);
    }

    #[test]
    fn pipelined_354_without_valid_recipients_gets_an_empty_message() {
        let mut d = ready(EHLO_FULL);
        d.send(msg(&["x@example.org"]));
        feed(&mut d, "");
        let (out, _) = feed(&mut d, "250 ok\r\n550 no\r\n354 go\r\n");
        assert_eq!(out, ".\r\n");
        assert_eq!(feed(&mut d, "554 no valid recipients\r\n").0, "RSET\r\n");
        let DeliverStep::Finished(o) = feed(&mut d, "250 ok\r\n").1 else {
            panic!()
        };
        assert!(matches!(&o[0], RcptOutcome::Failed(r) if r.code == 550));
    }

    #[test]
    fn mail_refused_decides_every_recipient() {
        let mut d = ready(EHLO_FULL);
        d.send(msg(&["x@example.org", "y@example.org"]));
        feed(&mut d, "");
        let (out, step) = feed(&mut d, "451 4.3.0 later\r\n503 no\r\n503 no\r\n503 no\r\n");
        assert_eq!(out, "RSET\r\n");
        assert_eq!(step, DeliverStep::NeedInput);
        let DeliverStep::Finished(o) = feed(&mut d, "250 ok\r\n").1 else {
            panic!()
        };
        assert!(o
            .iter()
            .all(|r| matches!(r, RcptOutcome::Deferred(r) if r.code == 451)));
    }

    #[test]
    fn a_421_mid_transaction_defers_and_ends() {
        let mut d = ready(EHLO_FULL);
        d.send(msg(&["x@example.org"]));
        feed(&mut d, "");
        let DeliverStep::Finished(o) = feed(&mut d, "421 4.3.2 shutting down\r\n").1 else {
            panic!()
        };
        assert!(matches!(&o[0], RcptOutcome::Deferred(r) if r.code == 421));
        assert_eq!(feed(&mut d, "").1, DeliverStep::Done);
        assert!(d.error().is_some());
    }

    #[test]
    fn size_and_eight_bit_are_decided_without_sending() {
        let mut d = ready(EHLO_FULL);
        let mut big = msg(&["x@example.org"]);
        big.size = 5000;
        d.send(big);
        let (out, step) = feed(&mut d, "");
        assert_eq!(out, "");
        let DeliverStep::Finished(o) = step else { panic!() };
        assert!(matches!(&o[0], RcptOutcome::Failed(r) if r.code == 552));

        let mut d = ready("250-c\r\n250 PIPELINING\r\n");
        let mut eight = msg(&["x@example.org"]);
        eight.eight_bit = true;
        d.send(eight);
        let (out, step) = feed(&mut d, "");
        assert_eq!(out, "");
        let DeliverStep::Finished(o) = step else { panic!() };
        assert!(matches!(&o[0], RcptOutcome::Deferred(r) if r.to_string().contains("8BITMIME")));
    }

    /// RFC 6533 §3: raw UTF-8 in ORCPT only under SMTPUTF8; otherwise the `\x{HEX}` form.
    #[test]
    fn a_utf8_orcpt_is_sent_raw_only_under_smtputf8() {
        let mut m = msg(&["bob@example.org"]);
        m.recipients[0].params = "NOTIFY=FAILURE ORCPT=utf-8;pelé@example.org".into();
        let mut d = ready("250-c\r\n250-PIPELINING\r\n250 DSN\r\n");
        d.send(m.clone());
        let out = feed(&mut d, "").0;
        assert!(
            out.contains("RCPT TO:<bob@example.org> NOTIFY=FAILURE ORCPT=utf-8;pel\\x{E9}@example.org\r\n"),
            "{out}"
        );
        m.mail_params = "SMTPUTF8".into();
        let mut d = ready("250-c\r\n250-PIPELINING\r\n250-SMTPUTF8\r\n250-8BITMIME\r\n250 DSN\r\n");
        d.send(m);
        let out = feed(&mut d, "").0;
        assert!(out.contains(" SMTPUTF8\r\n"), "{out}");
        assert!(out.contains("ORCPT=utf-8;pelé@example.org\r\n"), "{out}");
    }

    #[test]
    fn eight_bit_is_declared_when_offered() {
        let mut d = ready(EHLO_FULL);
        let mut eight = msg(&["x@example.org"]);
        eight.eight_bit = true;
        d.send(eight);
        let (out, _) = feed(&mut d, "");
        assert!(
            out.starts_with("MAIL FROM:<alice@sender.example> SIZE=20 BODY=8BITMIME\r\n"),
            "{out}"
        );
    }

    #[test]
    fn local_verdicts_are_marked() {
        let mut d = Deliverer::new("odmr.test");
        let mut input =
            BytesMut::from(&b"220 customer.test ESMTP\r\n250-customer.test\r\n250 SIZE 100\r\n"[..]);
        assert!(matches!(d.poll(&mut input), DeliverStep::Ready));
        assert_eq!(d.peer_name(), Some("customer.test"));
        let msg = |size| OutMessage {
            mail_from: "a@b.example".into(),
            mail_params: String::new(),
            size,
            eight_bit: false,
            recipients: vec![RcptEntry {
                address: "x@y.example".into(),
                params: String::new(),
            }],
        };
        d.send(msg(1000));
        assert!(matches!(d.poll(&mut input), DeliverStep::Finished(_)));
        assert!(d.verdict_was_local());
        assert!(matches!(d.poll(&mut input), DeliverStep::Ready));
        d.send(msg(10));
        input.extend_from_slice(b"250 ok\r\n250 ok\r\n550 no thanks\r\n250 reset\r\n");
        assert!(matches!(d.poll(&mut input), DeliverStep::Finished(_)));
        assert!(!d.verdict_was_local());
    }

    #[test]
    fn greeting_refusal_and_garbage() {
        let mut d = Deliverer::new("p");
        assert_eq!(feed(&mut d, "554 go away\r\n").0, "QUIT\r\n");
        assert_eq!(feed(&mut d, "221 bye\r\n").1, DeliverStep::Done);
        assert!(d.error().unwrap().contains("554"));

        let mut d = Deliverer::new("p");
        assert_eq!(feed(&mut d, "hello there\r\n").1, DeliverStep::Done);
        assert!(d.error().is_some());
    }

    #[test]
    fn greeting_split_across_reads() {
        let mut d = Deliverer::new("p");
        assert_eq!(feed(&mut d, "").1, DeliverStep::NeedInput);
        let mut input = BytesMut::from("22");
        assert_eq!(d.poll(&mut input), DeliverStep::NeedInput);
        input.extend_from_slice(b"0 ok\r\n");
        assert_eq!(d.poll(&mut input), DeliverStep::NeedInput);
        assert_eq!(d.output().as_slice(), b"EHLO p\r\n");
    }
}
