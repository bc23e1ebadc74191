//! An ESMTP server dialogue. It serves two places: the provider's inbound MX (which accepts
//! mail for hosted domains only), and the customer's side of the reversed ODMR session (which
//! relays each command to the local mail system and answers with its verdict).
//!
//! Invariants:
//! - **250 after DATA only once the message is durable.** The machine never writes that reply
//!   itself: it emits [`ServerStep::EndData`] and waits for [`SmtpServer::committed`], which the
//!   driver calls after the store commit.
//! - **Never an open relay.** Every RCPT goes to the driver as [`ServerStep::CheckRecipient`]; only
//!   a verdict of [`RcptVerdict::Accept`] adds the recipient.
//! - **Bounded memory.** Command lines are capped (and overlong ones discarded while they
//!   arrive); the body leaves the machine in chunks of at most [`BODY_CHUNK`] octets; a message
//!   over the size limit stops being buffered and is refused with 552 at its end.
//! - **Only CRLF.CRLF ends DATA** (see [`crate::data`]); bare LF/CR, NUL or a mail loop get 554
//!   and the message is discarded, never split into a second one.
//! - **STARTTLS drops buffered input.** After the 220 to STARTTLS the machine returns
//!   [`ServerStep::StartTls`] and consumes nothing more; the driver must find the input buffer
//!   empty before the handshake, or close the connection: plaintext sent after STARTTLS must
//!   never be executed inside the TLS session (command injection). After the handshake,
//!   [`SmtpServer::tls_started`] forgets everything learnt before it (RFC 3207 §4.2).
//! - **Pipelining.** Replies accumulate in the output buffer while commands remain in the input;
//!   the driver flushes whenever the machine asks for more input (RFC 2920 §3.2).
//! - **AUTH only identifies.** With [`SmtpServer::enable_auth`] the MX offers AUTH (the exchange
//!   is [`crate::auth`], shared with the ODMR listener); a successful AUTH names the account for
//!   ETRN and the `Received:` header, and nothing else: recipients are still checked one by one,
//!   so it never opens relaying.
//! - **ETRN is decided by the driver and never inside a transaction** (RFC 1985 §5): with
//!   `etrn` set, a well-formed `ETRN [@]node` becomes [`ServerStep::Etrn`]; the reply is one
//!   line, from [`SmtpServer::etrn_verdict`], and the queue run starts only after it.
//!
//! CHUNKING (RFC 3030), with [`ServerConfig::chunking`]:
//! - **`BDAT n [LAST]` is followed by exactly `n` octets, and they are always read before the
//!   reply**, whether the chunk is taken or refused (RFC 3030 §2: a refused chunk is read and
//!   discarded). Chunk octets are never parsed as commands: that keeps the session in sync with
//!   a pipelining client, and is what stops smuggling through BDAT. A BDAT whose size cannot be
//!   parsed therefore closes the session (501, then [`ServerStep::Close`]): where its chunk
//!   ends is unknown, so nothing after it can be trusted to be a command.
//! - **A BDAT message is the same message as by DATA for the driver**: the first chunk brings
//!   [`ServerStep::StartData`] (no 354 is written), the octets leave as [`ServerStep::Body`]
//!   pieces of at most [`BODY_CHUNK`] after our `Received:` header, and `BDAT ... LAST` ends it
//!   with [`ServerStep::EndData`] — so the 250 for it, too, waits for
//!   [`SmtpServer::committed`]. The content is judged as DATA content (raw mode of
//!   [`crate::data`]: dots are content; bare CR/LF, NUL, loops and size get the same replies
//!   at LAST); a last line without CRLF gets one (see [`crate::data`] for why).
//! - **A chunk is answered on its own** (`250 2.0.0 <n> octets received`, after its octets
//!   were read); only the LAST chunk's reply means the message was accepted.
//! - **A refused chunk ends the transaction** (RFC 3030 §2: the client must consider it failed
//!   and send no more chunks): the driver is told ([`ServerStep::AbortData`] if a message was
//!   open, else [`ServerStep::Reset`]), and BDATs still in flight are read, discarded and
//!   answered `503` until RSET, EHLO/HELO or MAIL. A chunk that would take the message over
//!   the size limit is refused with `552` at that chunk, before a byte of it is stored: the
//!   client learns it early, and memory stays bounded.
//! - **DATA after BDAT in a transaction gets `503`** (RFC 3030 §2); RSET, EHLO/HELO or QUIT
//!   between chunks abandon the message ([`ServerStep::Reset`], or the driver finds
//!   [`SmtpServer::in_data`] true at the end of the session).

use crate::atrn::{parse_domain, quote};
use crate::auth::{AuthAnswer, AuthConfig, AuthEvent, AuthResult, AuthServer, AuthStep, MAX_AUTH_LINE};
use crate::data::{DataError, DataLimits, DataReceiver, DataStatus};
use crate::envelope::{
    address_domain, mail_params_text, rcpt_params_text, split_dsn_params, DsnParams, DsnVerb, MailEnvelope,
    RcptEntry,
};
use crate::line::{split_verb, Line, LineReader};
use crate::reply::Reply;
use bytes::{Buf, BytesMut};
use std::borrow::Cow;

/// Command lines up to this length are accepted: 512 (RFC 5321) plus the extensions we offer and
/// generous slack for DSN parameters (RFC 3461 §5.4 asks for at least 1036).
pub const MAX_COMMAND_LINE: usize = 2048;
/// The body is handed to the driver in pieces of this size.
pub const BODY_CHUNK: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub hostname: String,
    /// 0: no fixed maximum (advertised as `SIZE 0`, RFC 1870 §4), for the customer's reversed
    /// session in front of a local MTA that states no limit: the body streams through to it,
    /// and it enforces its own.
    pub max_message_size: u64,
    pub max_recipients: usize,
    /// More `Received:` headers than this is a mail loop (RFC 5321 §6.3 suggests ≥ 100).
    pub max_received: usize,
    /// After this many refused commands the session is closed with 421.
    pub max_errors: usize,
    /// Offer 8BITMIME (and accept `BODY=8BITMIME`).
    pub eight_bit_mime: bool,
    /// Offer SMTPUTF8 (and accept the `SMTPUTF8` parameter). Implies 8BITMIME (RFC 6531 §3.1).
    pub smtputf8: bool,
    /// Ask the driver about each MAIL ([`ServerStep::CheckSender`]) instead of accepting it.
    pub check_sender: bool,
    /// Offer STARTTLS (the driver has a certificate and TLS is not active yet).
    pub starttls: bool,
    /// Messages accepted per session; MAIL after that gets 421 and the session ends.
    pub max_messages: u64,
    /// Offer DSN (RFC 3461) and accept its parameters. The provider's MX does: it keeps them
    /// and owes the DSNs. The customer's reversed side does not, since its sinks neither pass
    /// them on nor report.
    pub dsn: bool,
    /// Offer ETRN (RFC 1985) and pass each request to the driver ([`ServerStep::Etrn`]).
    pub etrn: bool,
    /// Offer CHUNKING (RFC 3030) and take messages by `BDAT`. Without it BDAT gets 502 like
    /// any command we do not implement.
    pub chunking: bool,
}

impl ServerConfig {
    pub fn new(hostname: impl Into<String>) -> Self {
        ServerConfig {
            hostname: hostname.into(),
            max_message_size: 50 * 1024 * 1024,
            max_recipients: 100,
            max_received: 100,
            max_errors: 20,
            eight_bit_mime: true,
            smtputf8: true,
            check_sender: false,
            starttls: false,
            max_messages: 10_000,
            dsn: true,
            etrn: false,
            chunking: false,
        }
    }
}

/// Who is connected: recorded in the `Received:` header.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The client's IP address, as text.
    pub ip: String,
    /// Session id, used as the `id` of the `Received:` header and in logs.
    pub session: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerStep {
    /// Flush the output, then read more input (and call `poll` again).
    NeedInput,
    /// Only with `check_sender`: decide on MAIL; answer with [`SmtpServer::sender_verdict`].
    CheckSender { from: String, params: String },
    /// Decide whether `address` is hosted here; answer with [`SmtpServer::recipient_verdict`].
    CheckRecipient { address: String, domain: String },
    /// The client sent DATA (or its first BDAT) for this envelope: open a store writer, then
    /// call [`SmtpServer::data_ready`] (or [`SmtpServer::data_refused`]).
    StartData(MailEnvelope),
    /// Append these octets to the open message.
    Body(Vec<u8>),
    /// The body is complete and valid: commit it durably, then call [`SmtpServer::committed`].
    EndData { size: u64, eight_bit: bool },
    /// The body was refused, or a BDAT chunk of it (the reply is queued, or follows once the
    /// chunk was read): discard the open message.
    AbortData,
    /// The client abandoned an open transaction (RSET, or EHLO/HELO again), or a refused BDAT
    /// chunk ended it before a message was opened: reset whatever the driver opened for it
    /// (with BDAT that can be a message: a store writer to abort). No answer is needed.
    Reset,
    /// The 220 to STARTTLS is in the output: flush it, check that no input is buffered (else
    /// close), run the TLS handshake, then call [`SmtpServer::tls_started`].
    StartTls,
    /// An AUTH lookup (only after [`SmtpServer::enable_auth`]): answer with
    /// [`SmtpServer::auth_answer`].
    Auth(AuthStep),
    /// Only with `etrn`: `ETRN node`, or `ETRN @node` (`subdomains`: every domain equal to
    /// `node` or ending in `.node`, RFC 1985 §5.3). `node` is a valid, lower-cased domain. Decide
    /// and answer with [`SmtpServer::etrn_verdict`]; start the queue run only after that (RFC
    /// 1985 §5.1: the reply does not wait for it).
    Etrn { node: String, subdomains: bool },
    /// Flush the output and close the connection.
    Close,
    /// Only after [`SmtpServer::defer_commit`]: the machine cannot go on before the deferred
    /// verdict (it would need more input, or the next step is not one that may pass it): call
    /// [`SmtpServer::committed`] now.
    Settle,
}

/// The driver's answer to [`ServerStep::Etrn`] (RFC 1985 §5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtrnVerdict {
    /// 250: queuing started; nothing said about whether mail exists.
    Started,
    /// 251: nothing is waiting for the node.
    NoMessages,
    /// 252: pending messages, number unknown; queuing started.
    Pending,
    /// 253: this many pending messages; queuing started.
    PendingCount(u64),
    /// 458: the queue cannot be run now; the text says why (e.g. "delivery already in
    /// progress").
    Unable(String),
    /// 459: not allowed. One text for every reason, so the reply does not tell who owns a
    /// domain (RFC 1985 §5.1 leaves the refusal to the server; docs/protocol-decisions.md).
    NotAllowed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptVerdict {
    Accept,
    /// The domain is not hosted here (550 5.7.1).
    NotHosted,
    /// Any other refusal, e.g. a temporary store error (451).
    Refuse(Reply),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Command,
    AwaitSender {
        from: String,
        params: String,
    },
    AwaitRcpt {
        address: String,
        params: String,
    },
    /// Waiting for `data_ready`/`data_refused`; `chunk` is the first BDAT's chunk when the
    /// message comes by BDAT (then there is no 354, and the chunk is read next).
    AwaitDataStart {
        chunk: Option<Chunk>,
    },
    Data,
    /// Reading the octets of a BDAT chunk into the open message.
    Chunk(Chunk),
    /// Reading and dropping the octets of a refused BDAT chunk; `reply` is given after them.
    Discard {
        remaining: u64,
        reply: Reply,
    },
    AwaitCommit,
    /// Waiting for the driver's answer to an AUTH lookup.
    AwaitAuth,
    /// Waiting for the driver's ETRN verdict; the node as the client gave it (for the reply).
    AwaitEtrn {
        shown: String,
    },
    /// Waiting for the driver's TLS handshake.
    Tls,
    Closed,
}

/// A BDAT chunk being read: its declared size, the octets still to come, and whether it ends
/// the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Chunk {
    size: u64,
    remaining: u64,
    last: bool,
}

/// Where the current transaction stands with BDAT (RFC 3030).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunking {
    /// No BDAT in this transaction: DATA is still possible.
    Idle,
    /// A message is open and takes chunks (`data` holds its raw-mode receiver).
    Open,
    /// A chunk was refused, which ended the transaction: BDATs already in flight are read,
    /// discarded and answered 503 until RSET, EHLO/HELO or MAIL start afresh.
    Failed,
}

/// Why the arguments of a BDAT command cannot be used (`chunk-size [SP "LAST"]`, RFC 3030 §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BdatSyntaxError {
    #[error("chunk size missing")]
    MissingSize,
    #[error("chunk size is not a decimal number of octets that fits 64 bits")]
    BadSize,
    #[error("only LAST may follow the chunk size")]
    BadEndMarker,
}

/// Parses the arguments of BDAT: the chunk size, and whether `LAST` (any case) follows.
pub fn parse_bdat(args: &[u8]) -> Result<(u64, bool), BdatSyntaxError> {
    let mut words = args.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let size = words.next().ok_or(BdatSyntaxError::MissingSize)?;
    // `1*DIGIT`: no sign, no spaces, which `u64::from_str` alone would not all refuse.
    if !size.iter().all(u8::is_ascii_digit) {
        return Err(BdatSyntaxError::BadSize);
    }
    let size = std::str::from_utf8(size)
        .ok()
        .and_then(|d| d.parse::<u64>().ok())
        .ok_or(BdatSyntaxError::BadSize)?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case(b"LAST") => true,
        Some(_) => return Err(BdatSyntaxError::BadEndMarker),
    };
    if words.next().is_some() {
        return Err(BdatSyntaxError::BadEndMarker);
    }
    Ok((size, last))
}

pub struct SmtpServer {
    cfg: ServerConfig,
    peer: PeerInfo,
    out: Vec<u8>,
    lines: LineReader,
    state: State,
    pending: Option<ServerStep>,
    /// A verdict is deferred ([`SmtpServer::defer_commit`]); replies since wait in `held`.
    deferred: bool,
    held: Vec<u8>,
    /// Messages opened in this session (the number in each `Received:` id).
    opened: u64,
    helo: Option<(String, bool)>,
    mail: Option<(String, String)>,
    rcpts: Vec<RcptEntry>,
    data: Option<DataReceiver>,
    chunking: Chunking,
    body: Vec<u8>,
    errors: usize,
    messages: u64,
    tls: bool,
    client_cert: bool,
    auth: Option<AuthServer>,
}

impl SmtpServer {
    /// A new session; the 220 greeting is already in the output.
    pub fn new(cfg: ServerConfig, peer: PeerInfo) -> Self {
        let mut s = SmtpServer {
            lines: LineReader::new(MAX_COMMAND_LINE),
            out: Vec::with_capacity(1024),
            state: State::Command,
            pending: None,
            deferred: false,
            held: Vec::new(),
            opened: 0,
            helo: None,
            mail: None,
            rcpts: Vec::new(),
            data: None,
            chunking: Chunking::Idle,
            body: Vec::new(),
            errors: 0,
            messages: 0,
            tls: false,
            client_cert: false,
            auth: None,
            cfg,
            peer,
        };
        let greet = Reply::new(220, "", format!("{} ESMTP odmr ready", s.cfg.hostname));
        s.reply(greet);
        s
    }

    /// Bytes to send. The driver writes them out and clears the buffer.
    pub fn output(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// The client's HELO/EHLO name, once given.
    pub fn helo(&self) -> Option<&str> {
        self.helo.as_ref().map(|(h, _)| h.as_str())
    }

    /// Offer AUTH in this session (the MX listener): `seed` random per session and `unix_time`
    /// the current time, which make CRAM-MD5 challenges and SCRAM nonces unique. Call before the
    /// first `poll`.
    pub fn enable_auth(&mut self, cfg: AuthConfig, seed: u64, unix_time: u64) {
        let host = self.cfg.hostname.clone();
        // The MX offers ENHANCEDSTATUSCODES, so AUTH replies carry them too.
        self.auth = Some(AuthServer::new(cfg, host, true, seed, unix_time));
    }

    /// The account the client authenticated as, if any.
    pub fn account(&self) -> Option<&str> {
        self.auth.as_ref().and_then(AuthServer::account)
    }

    /// The SASL mechanism of the last AUTH command (for logs).
    pub fn mechanism(&self) -> Option<&str> {
        self.auth.as_ref().and_then(AuthServer::mechanism)
    }

    /// A user whose SCRAM proof just failed ([`AuthServer::take_proof_failure`]): the driver
    /// counts it towards the AUTH lockout.
    pub fn take_auth_failure(&mut self) -> Option<String> {
        self.auth.as_mut().and_then(AuthServer::take_proof_failure)
    }

    /// The TLS handshake produced a verified client certificate: offer SASL EXTERNAL.
    pub fn set_client_cert(&mut self) {
        self.client_cert = true;
    }

    /// The TLS handshake after STARTTLS succeeded: start over from the greeting state, without
    /// a new greeting, forgetting the client's name (RFC 3207 §4.2). STARTTLS is no longer
    /// offered.
    pub fn tls_started(&mut self) {
        self.reset_tx();
        self.helo = None;
        self.tls = true;
        if let Some(a) = self.auth.as_mut() {
            a.reset();
        }
        self.state = State::Command;
    }

    /// TLS is active (STARTTLS done, or the driver says the connection was TLS from the start).
    pub fn set_tls(&mut self) {
        self.tls = true;
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Messages accepted in this session so far.
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// The peer closed the connection or it timed out: `true` if a message was in flight
    /// (the driver must then discard it). With BDAT that includes the time between chunks,
    /// when the machine reads commands but the message is open.
    pub fn in_data(&self) -> bool {
        matches!(
            self.state,
            State::Data | State::AwaitCommit | State::AwaitDataStart { .. } | State::Chunk(_)
        ) || self.chunking == Chunking::Open
    }

    fn reply(&mut self, r: Reply) {
        if r.is_permanent() {
            self.errors += 1;
        }
        // ENHANCEDSTATUSCODES is offered, so every 2xx/4xx/5xx carries one (RFC 2034 §4) —
        // except the greeting and HELO/EHLO replies, which are built without a status.
        // Behind a deferred verdict, replies wait: they must follow it (RFC 2920 §3.2).
        let out = if self.deferred {
            &mut self.held
        } else {
            &mut self.out
        };
        r.write(out, true);
    }

    /// The driver's answer to [`ServerStep::EndData`] when the verdict comes later: the machine
    /// goes on with the commands already buffered behind the message (RSET, MAIL, RCPT, DATA,
    /// BDAT, NOOP, and the next message's content), keeping their replies behind the verdict's, and
    /// returns [`ServerStep::Settle`] before anything else, before waiting for input and before
    /// the next message ends. So at most one verdict is ever outstanding, and a peer that waits
    /// for it before sending more is never kept waiting. [`SmtpServer::committed`] gives it.
    ///
    /// This lets the customer's relay send a message's final dot to its local MTA together with
    /// the next transaction's commands, one local round trip per message.
    pub fn defer_commit(&mut self) {
        if self.state != State::AwaitCommit {
            return;
        }
        self.pending = None;
        self.deferred = true;
        self.reset_tx();
        self.state = State::Command;
    }

    /// Whether the machine may go on past a deferred verdict: the next command line is complete
    /// and belongs to a transaction (its replies can wait behind the verdict; anything else,
    /// such as QUIT or EHLO, must not overtake it). RSET passes: a delivering client may open
    /// each transaction with one (ours does, with BDAT).
    fn may_pass_verdict(&self, input: &[u8]) -> bool {
        if self.auth.as_ref().is_some_and(AuthServer::in_exchange) {
            return false;
        }
        let Some(nl) = input.iter().position(|&b| b == b'\n') else {
            return false;
        };
        let line = &input[..nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let (verb, _) = split_verb(line);
        matches!(verb.as_str(), "RSET" | "MAIL" | "RCPT" | "DATA" | "BDAT" | "NOOP")
    }

    fn reset_tx(&mut self) {
        self.mail = None;
        self.rcpts.clear();
        self.data = None;
        self.chunking = Chunking::Idle;
        self.body.clear();
    }

    /// Advance the dialogue with the bytes in `input` (consumed as they are used).
    pub fn poll(&mut self, input: &mut BytesMut) -> ServerStep {
        let step = self.step(input);
        if self.deferred && matches!(step, ServerStep::NeedInput | ServerStep::Close) {
            // The peer may be waiting for the deferred verdict (or a 354 held behind it), and
            // closing would lose it: the verdict first. Both steps come back on the next poll.
            return ServerStep::Settle;
        }
        step
    }

    fn step(&mut self, input: &mut BytesMut) -> ServerStep {
        if let Some(p) = &self.pending {
            return p.clone();
        }
        loop {
            if self.deferred && self.state == State::Command && !self.may_pass_verdict(input) {
                return ServerStep::Settle;
            }
            match self.state {
                State::Closed => return ServerStep::Close,
                State::Tls => return ServerStep::StartTls,
                State::AwaitSender { .. }
                | State::AwaitRcpt { .. }
                | State::AwaitDataStart { .. }
                | State::AwaitCommit
                | State::AwaitAuth
                | State::AwaitEtrn { .. } => {
                    // A decision is outstanding; `pending` holds it. Unreachable in a correct
                    // driver, harmless otherwise.
                    return ServerStep::NeedInput;
                }
                State::Data => return self.poll_data(input),
                State::Chunk(c) => match self.poll_chunk(c, input) {
                    Some(step) => return step,
                    None => continue,
                },
                State::Discard { .. } => {
                    if !self.discard_chunk(input) {
                        return ServerStep::NeedInput;
                    }
                    continue;
                }
                State::Command => {}
            }
            let auth_errors = self.auth.as_ref().map_or(0, AuthServer::errors);
            if self.errors + auth_errors > self.cfg.max_errors {
                self.reply(Reply::new(
                    421,
                    "4.7.0",
                    format!("{} too many errors, closing", self.cfg.hostname),
                ));
                self.state = State::Closed;
                return ServerStep::Close;
            }
            let exchange = self.auth.as_ref().is_some_and(AuthServer::in_exchange);
            self.lines
                .set_max(if exchange { MAX_AUTH_LINE } else { MAX_COMMAND_LINE });
            let line = match self.lines.next_line(input) {
                None => return ServerStep::NeedInput,
                Some(Line::TooLong) => {
                    if let Some(a) = self.auth.as_mut() {
                        a.abort();
                    }
                    self.reply(Reply::new(500, "5.5.6", "Line too long"));
                    continue;
                }
                Some(Line::BareLf) => {
                    self.reply(Reply::new(
                        500,
                        "5.5.2",
                        "Bare LF is not allowed; end lines with CRLF",
                    ));
                    continue;
                }
                Some(Line::Ok(l)) => l,
            };
            let step = match self.auth.as_mut() {
                Some(a) if exchange => {
                    let ev = a.line(&line, &mut self.out);
                    self.auth_event(ev)
                }
                _ => self.command(&line),
            };
            if let Some(step) = step {
                match step {
                    ServerStep::Close => self.state = State::Closed,
                    ServerStep::StartTls => self.state = State::Tls,
                    // Notices: the machine goes on by itself (a refused chunk is read next).
                    ServerStep::Reset | ServerStep::AbortData => {}
                    _ => self.pending = Some(step.clone()),
                }
                return step;
            }
        }
    }

    fn command(&mut self, line: &[u8]) -> Option<ServerStep> {
        if line.iter().any(|&b| b == 0 || b == b'\r') {
            self.reply(Reply::new(500, "5.5.2", "NUL or bare CR in command"));
            return None;
        }
        let (verb, args) = split_verb(line);
        let has_args = !args.iter().all(|b| *b == b' ');
        match verb.as_str() {
            "EHLO" | "HELO" => {
                let name = String::from_utf8_lossy(args).trim().to_string();
                if name.is_empty() || name.contains(' ') && !name.starts_with('[') {
                    self.reply(Reply::new(501, "5.5.4", format!("Syntax: {verb} hostname")));
                    return None;
                }
                let had_tx = self.mail.is_some();
                self.reset_tx();
                let esmtp = verb == "EHLO";
                let greet = format!("{} greets {}", self.cfg.hostname, name);
                self.helo = Some((name, esmtp));
                if esmtp {
                    let mut lines = vec![
                        greet,
                        "PIPELINING".into(),
                        format!("SIZE {}", self.cfg.max_message_size),
                    ];
                    if self.cfg.eight_bit_mime || self.cfg.smtputf8 {
                        lines.push("8BITMIME".into());
                    }
                    lines.push("ENHANCEDSTATUSCODES".into());
                    if self.cfg.dsn {
                        lines.push("DSN".into());
                    }
                    if self.cfg.smtputf8 {
                        lines.push("SMTPUTF8".into());
                    }
                    if self.cfg.chunking {
                        lines.push("CHUNKING".into());
                    }
                    if self.cfg.starttls && !self.tls && self.account().is_none() {
                        lines.push("STARTTLS".into());
                    }
                    if let Some(a) = self.auth.as_ref().filter(|a| a.account().is_none()) {
                        let mechs = a.mechanisms(self.tls, self.client_cert);
                        lines.push(format!("AUTH {}", mechs.join(" ")));
                    }
                    if self.cfg.etrn {
                        lines.push("ETRN".into());
                    }
                    lines.push("HELP".into());
                    Reply::multi(250, lines).write(&mut self.out, false);
                } else {
                    Reply::multi(250, vec![self.cfg.hostname.clone()]).write(&mut self.out, false);
                }
                if had_tx {
                    return Some(ServerStep::Reset);
                }
            }
            "MAIL" => return self.mail(line),
            "RCPT" => return self.rcpt(line),
            "BDAT" if self.cfg.chunking => return self.bdat(args),
            "DATA" => {
                if has_args {
                    self.reply(Reply::new(501, "5.5.4", "DATA takes no arguments"));
                } else if self.chunking != Chunking::Idle {
                    // RFC 3030 §2. An open BDAT message stays open: the client must RSET.
                    self.reply(Reply::new(
                        503,
                        "5.5.1",
                        "DATA is not allowed after BDAT in the same transaction",
                    ));
                } else if self.mail.is_none() {
                    self.reply(Reply::new(503, "5.5.1", "Need MAIL command first"));
                } else if self.rcpts.is_empty() {
                    self.reply(Reply::new(554, "5.5.1", "No valid recipients"));
                } else {
                    let (from, params) = self.mail.clone().unwrap_or_default();
                    self.state = State::AwaitDataStart { chunk: None };
                    return Some(ServerStep::StartData(MailEnvelope {
                        mail_from: from,
                        mail_params: params,
                        recipients: self.rcpts.clone(),
                    }));
                }
            }
            "RSET" => {
                let had_tx = self.mail.is_some();
                self.reset_tx();
                self.reply(Reply::new(250, "2.0.0", "OK"));
                if had_tx {
                    return Some(ServerStep::Reset);
                }
            }
            "NOOP" => self.reply(Reply::new(250, "2.0.0", "OK")),
            "QUIT" => {
                self.reply(Reply::new(
                    221,
                    "2.0.0",
                    format!("{} closing connection", self.cfg.hostname),
                ));
                return Some(ServerStep::Close);
            }
            "HELP" => {
                let bdat = if self.cfg.chunking { " BDAT" } else { "" };
                let mut text = format!("Commands: EHLO HELO MAIL RCPT DATA{bdat} RSET NOOP QUIT HELP VRFY");
                if self.auth.is_some() {
                    text.push_str(" AUTH");
                }
                if self.cfg.etrn {
                    text.push_str(" ETRN");
                }
                self.reply(Reply::new(214, "2.0.0", text))
            }
            "VRFY" => self.reply(Reply::new(
                252,
                "2.5.0",
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            "STARTTLS" if self.cfg.starttls && !self.tls => {
                if has_args {
                    self.reply(Reply::new(501, "5.5.4", "STARTTLS takes no arguments"));
                } else if self.mail.is_some() {
                    self.reply(Reply::new(
                        503,
                        "5.5.1",
                        "STARTTLS is not allowed inside a mail transaction",
                    ));
                } else if self.account().is_some() {
                    // What was learnt before TLS must be forgotten (RFC 3207 §4.2), and
                    // forgetting an authentication the client believes in only confuses it.
                    self.reply(Reply::new(503, "5.5.1", "STARTTLS is not allowed after AUTH"));
                } else {
                    self.reply(Reply::new(220, "2.0.0", "Ready to start TLS"));
                    return Some(ServerStep::StartTls);
                }
            }
            "STARTTLS" if self.tls => self.reply(Reply::new(503, "5.5.1", "TLS is already active")),
            "AUTH" if self.auth.is_some() => {
                if self.mail.is_some() {
                    // RFC 4954 §4.
                    self.reply(Reply::new(
                        503,
                        "5.5.1",
                        "AUTH is not allowed inside a mail transaction",
                    ));
                } else if !self.helo.as_ref().is_some_and(|(_, esmtp)| *esmtp) {
                    // AUTH is a service extension: only an EHLO session knows it exists.
                    self.reply(Reply::new(503, "5.5.1", "Send EHLO first"));
                } else {
                    let args = String::from_utf8_lossy(args).trim().to_string();
                    let (tls, cert) = (self.tls, self.client_cert);
                    let ev = match self.auth.as_mut() {
                        Some(a) => a.command(&args, tls, cert, &mut self.out),
                        None => AuthEvent::Continue,
                    };
                    return self.auth_event(ev);
                }
            }
            "ETRN" if self.cfg.etrn => return self.etrn(args),
            // BDAT without CHUNKING offered: a client that sends it anyway also sends its chunk,
            // whose octets then come as commands. They are refused one by one like any bad
            // command (and count towards `max_errors`); a size we never offered to honour is not
            // a reason to start reading data.
            "EXPN" | "TURN" | "ATRN" | "ETRN" | "AUTH" | "STARTTLS" | "BDAT" => self.reply(Reply::new(
                502,
                "5.5.1",
                format!("{verb} not implemented on this listener"),
            )),
            _ => self.reply(Reply::new(500, "5.5.2", "Command unrecognized")),
        }
        None
    }

    fn auth_event(&mut self, ev: AuthEvent) -> Option<ServerStep> {
        match ev {
            AuthEvent::Continue => None,
            AuthEvent::Ask(step) => {
                self.state = State::AwaitAuth;
                Some(ServerStep::Auth(step))
            }
            AuthEvent::Close => Some(ServerStep::Close),
        }
    }

    /// The driver's answer to [`ServerStep::Auth`]: `Some(true)` when the session is now
    /// authenticated (the 235 is in the output), `Some(false)` when the attempt failed (535),
    /// `None` when neither is known yet (SCRAM goes on) or for a temporary failure (454).
    pub fn auth_answer(&mut self, answer: AuthAnswer) -> Option<bool> {
        if self.state != State::AwaitAuth {
            return None;
        }
        let a = self.auth.as_mut()?;
        let r = a.answer(answer, &mut self.out);
        if !a.awaiting() {
            self.pending = None;
            self.state = State::Command;
        }
        match r {
            AuthResult::Succeeded => Some(true),
            AuthResult::Failed => Some(false),
            AuthResult::FailedClose => {
                self.state = State::Closed;
                Some(false)
            }
            AuthResult::Pending => None,
        }
    }

    /// `ETRN [@|#]node` (RFC 1985 §5).
    fn etrn(&mut self, args: &[u8]) -> Option<ServerStep> {
        if self.mail.is_some() {
            self.reply(Reply::new(
                503,
                "5.5.1",
                "ETRN is not allowed inside a mail transaction",
            ));
            return None;
        }
        let arg = String::from_utf8_lossy(args).trim().to_string();
        if arg.is_empty() {
            // 501, not the 500 of RFC 1985 §7's example: the command is known here and only its
            // parameter is missing, which is what 501 says (RFC 5321 §4.2.2; RFC 1985 §5.1 lists
            // 501 for syntax errors in parameters). A 500 would claim ETRN is unknown.
            self.reply(Reply::new(501, "5.5.4", "Syntax: ETRN [@]node"));
            return None;
        }
        if let Some(queue) = arg.strip_prefix('#') {
            // We keep one queue, indexed by domain; there are no named queues to start. 459
            // ("not allowed", with the reason) as sendmail answers an unknown queue group: it
            // is a refusal of this request, not a failure to run an existing queue (458).
            let text = format!(
                "<#{}> not allowed: no such queue, ask by domain name",
                quote(queue)
            );
            self.reply(Reply::new(459, "4.5.4", text));
            return None;
        }
        let (subdomains, name) = match arg.strip_prefix('@') {
            Some(n) => (true, n),
            None => (false, arg.as_str()),
        };
        match parse_domain(name) {
            Ok(node) => {
                let shown = if subdomains {
                    format!("@{node}")
                } else {
                    node.clone()
                };
                self.state = State::AwaitEtrn { shown };
                Some(ServerStep::Etrn { node, subdomains })
            }
            Err(e) => {
                self.reply(Reply::new(501, "5.5.4", format!("Syntax: ETRN [@]node: {e}")));
                None
            }
        }
    }

    /// The driver's answer to [`ServerStep::Etrn`]: one reply line.
    pub fn etrn_verdict(&mut self, verdict: EtrnVerdict) {
        let State::AwaitEtrn { shown } = std::mem::replace(&mut self.state, State::Command) else {
            return;
        };
        self.pending = None;
        let r = match verdict {
            EtrnVerdict::Started => Reply::new(250, "2.0.0", format!("Queuing for node {shown} started")),
            EtrnVerdict::NoMessages => {
                Reply::new(251, "2.0.0", format!("OK, no messages waiting for node {shown}"))
            }
            EtrnVerdict::Pending => Reply::new(
                252,
                "2.0.0",
                format!("OK, pending messages for node {shown} started"),
            ),
            EtrnVerdict::PendingCount(n) => Reply::new(
                253,
                "2.0.0",
                format!("OK, {n} pending messages for node {shown} started"),
            ),
            EtrnVerdict::Unable(why) => Reply::new(
                458,
                "4.3.0",
                format!("Unable to queue messages for node {shown}: {why}"),
            ),
            EtrnVerdict::NotAllowed => Reply::new(
                459,
                "4.7.1",
                format!("Node {shown} not allowed: not a domain this client may release"),
            ),
        };
        self.reply(r);
    }

    fn mail(&mut self, line: &[u8]) -> Option<ServerStep> {
        if self.helo.is_none() {
            self.reply(Reply::new(503, "5.5.1", "Send EHLO or HELO first"));
            return None;
        }
        if self.mail.is_some() {
            self.reply(Reply::new(503, "5.5.1", "Nested MAIL command"));
            return None;
        }
        // A new transaction: BDATs of a failed one are no longer expected.
        self.chunking = Chunking::Idle;
        if self.messages >= self.cfg.max_messages {
            let host = self.cfg.hostname.clone();
            self.reply(Reply::new(
                421,
                "4.7.0",
                format!("{host} too many messages in one session, reconnect"),
            ));
            return Some(ServerStep::Close);
        }
        // `None`: refused, the reply is written; there is no step for the driver.
        let (mut l, dsn) = self.dsn_params(line, DsnVerb::Mail)?;
        l.extend_from_slice(b"\r\n");
        let from = match smtp_proto::Request::parse(&mut l.iter()) {
            Ok(smtp_proto::Request::Mail { from }) => from,
            Err(e) => {
                self.reply(param_error(e, "MAIL FROM:<address> [parameters]"));
                return None;
            }
            Ok(_) => {
                self.reply(Reply::new(501, "5.5.4", "Syntax: MAIL FROM:<address>"));
                return None;
            }
        };
        if self.cfg.max_message_size > 0 && from.size as u64 > self.cfg.max_message_size {
            self.reply(Reply::new(
                552,
                "5.3.4",
                format!(
                    "Message size exceeds the limit of {} octets",
                    self.cfg.max_message_size
                ),
            ));
            return None;
        }
        let params = match mail_params_text(&from, &dsn) {
            Ok(p) => p,
            Err(e) => {
                self.reply(Reply::new(555, "5.5.4", format!("MAIL {e}")));
                return None;
            }
        };
        let has = |k: &str| crate::envelope::param(&params, k).is_some();
        if (!self.cfg.smtputf8 && has("SMTPUTF8"))
            || (!(self.cfg.eight_bit_mime || self.cfg.smtputf8)
                && crate::envelope::param(&params, "BODY") == Some("8BITMIME"))
        {
            self.reply(Reply::new(555, "5.5.4", "MAIL parameter not offered here"));
            return None;
        }
        let from = from.address.to_string();
        // RFC 6531 §3.4: a non-ASCII address only in a transaction that declared SMTPUTF8, or a
        // customer's MTA without SMTPUTF8 would get it later (and bounce it).
        if !from.is_ascii() && !has("SMTPUTF8") {
            self.reply(non_ascii_address(&from));
            return None;
        }
        if self.cfg.check_sender {
            self.state = State::AwaitSender {
                from: from.clone(),
                params: params.clone(),
            };
            return Some(ServerStep::CheckSender { from, params });
        }
        self.mail = Some((from, params));
        self.reply(Reply::new(250, "2.1.0", "Sender OK"));
        None
    }

    /// Split the DSN parameters off a MAIL/RCPT line; on a bad or unoffered one, reply and
    /// return `None`. Repeats and invalid values get 501 (RFC 3461 §4.5, §5.1: MUST for MAIL,
    /// SHOULD for RCPT); DSN parameters when DSN is not offered get 555 like any other
    /// parameter of an extension we did not list (RFC 5321 §4.1.1.11).
    fn dsn_params(&mut self, line: &[u8], verb: DsnVerb) -> Option<(Vec<u8>, DsnParams)> {
        match split_dsn_params(line, verb) {
            Ok((_, dsn)) if !self.cfg.dsn && !dsn.is_empty() => {
                self.reply(Reply::new(555, "5.5.4", "DSN parameters are not offered here"));
                None
            }
            Ok(v) => Some(v),
            Err(e) => {
                self.reply(Reply::new(501, "5.5.4", format!("Invalid DSN parameter: {e}")));
                None
            }
        }
    }

    /// The driver's answer to [`ServerStep::CheckSender`]: `Ok` accepts, or the reply to give.
    pub fn sender_verdict(&mut self, verdict: Result<(), Reply>) {
        let State::AwaitSender { from, params } = std::mem::replace(&mut self.state, State::Command) else {
            return;
        };
        self.pending = None;
        match verdict {
            Ok(()) => {
                self.mail = Some((from, params));
                self.reply(Reply::new(250, "2.1.0", "Sender OK"));
            }
            Err(r) => self.reply(r),
        }
    }

    fn rcpt(&mut self, line: &[u8]) -> Option<ServerStep> {
        if self.mail.is_none() {
            self.reply(Reply::new(503, "5.5.1", "Need MAIL command first"));
            return None;
        }
        if self.chunking == Chunking::Open {
            // The envelope went to the driver with the first chunk: a recipient added now would
            // be told 250 and never get the message.
            self.reply(Reply::new(503, "5.5.1", "RCPT is not allowed after BDAT"));
            return None;
        }
        // `None`: refused, the reply is written; there is no step for the driver.
        let (mut l, dsn) = self.dsn_params(line, DsnVerb::Rcpt)?;
        l.extend_from_slice(b"\r\n");
        let to = match smtp_proto::Request::parse(&mut l.iter()) {
            Ok(smtp_proto::Request::Rcpt { to }) => to,
            Err(e) => {
                self.reply(param_error(e, "RCPT TO:<address> [parameters]"));
                return None;
            }
            Ok(_) => {
                self.reply(Reply::new(501, "5.5.4", "Syntax: RCPT TO:<address>"));
                return None;
            }
        };
        let params = match rcpt_params_text(&to, &dsn) {
            Ok(p) => p,
            Err(e) => {
                self.reply(Reply::new(555, "5.5.4", format!("RCPT {e}")));
                return None;
            }
        };
        let mut address: String = match to.address {
            Cow::Borrowed(a) => a.to_string(),
            Cow::Owned(a) => a,
        };
        let utf8 = self
            .mail
            .as_ref()
            .is_some_and(|(_, p)| crate::envelope::param(p, "SMTPUTF8").is_some());
        if !address.is_ascii() && !utf8 {
            self.reply(non_ascii_address(&address));
            return None;
        }
        // RFC 5321 §4.5.1: `<Postmaster>` without a domain MUST be accepted; it means this
        // host's postmaster, so the driver decides on it as on postmaster@<our host name>.
        // (smtp-proto gives it as an empty address, like `<>`: the line tells them apart.)
        if address.is_empty() && names_bare_postmaster(line) {
            address = format!("postmaster@{}", self.cfg.hostname);
        }
        if self.rcpts.len() >= self.cfg.max_recipients {
            self.reply(Reply::new(452, "4.5.3", "Too many recipients"));
            return None;
        }
        let Some(domain) = address_domain(&address) else {
            self.reply(Reply::new(
                550,
                "5.1.3",
                format!("<{address}>: a domain is required"),
            ));
            return None;
        };
        self.state = State::AwaitRcpt {
            address: address.clone(),
            params,
        };
        Some(ServerStep::CheckRecipient { address, domain })
    }

    /// The driver's answer to [`ServerStep::CheckRecipient`].
    pub fn recipient_verdict(&mut self, verdict: RcptVerdict) {
        let State::AwaitRcpt { address, params } = std::mem::replace(&mut self.state, State::Command) else {
            return;
        };
        self.pending = None;
        match verdict {
            RcptVerdict::Accept => {
                if self.rcpts.iter().all(|r| r.address != address) {
                    self.rcpts.push(RcptEntry { address, params });
                }
                self.reply(Reply::new(250, "2.1.5", "Recipient OK"));
            }
            RcptVerdict::NotHosted => self.reply(Reply::new(
                550,
                "5.7.1",
                format!("<{address}>: relay access denied, domain not hosted here"),
            )),
            RcptVerdict::Refuse(r) => self.reply(r),
        }
    }

    /// The driver opened the store writer. `date` is the RFC 5322 date for the `Received:`
    /// header (time is passed in; the machine has no clock).
    pub fn data_ready(&mut self, date: &str) {
        let State::AwaitDataStart { chunk } = self.state else {
            return;
        };
        self.pending = None;
        let limits = DataLimits {
            max_size: match self.cfg.max_message_size {
                0 => u64::MAX,
                max => max,
            },
            max_received: self.cfg.max_received,
        };
        self.body.clear();
        self.opened += 1;
        self.body.extend_from_slice(self.received_header(date).as_bytes());
        match chunk {
            None => {
                self.reply(Reply::new(354, "", "End data with <CR><LF>.<CR><LF>"));
                self.data = Some(DataReceiver::new(limits));
                self.state = State::Data;
            }
            // BDAT has no 354: its chunk is on its way already.
            Some(c) => {
                self.data = Some(DataReceiver::chunked(limits));
                self.chunking = Chunking::Open;
                self.state = State::Chunk(c);
            }
        }
    }

    /// The driver could not open a message (e.g. the store is unavailable). For a BDAT the
    /// reply follows once the chunk has been read (and dropped).
    pub fn data_refused(&mut self, reply: Reply) {
        let State::AwaitDataStart { chunk } = self.state else {
            return;
        };
        self.pending = None;
        self.reset_tx();
        match chunk {
            None => {
                self.reply(reply);
                self.state = State::Command;
            }
            Some(c) => {
                self.chunking = Chunking::Failed;
                self.state = State::Discard {
                    remaining: c.remaining,
                    reply,
                };
            }
        }
    }

    /// `BDAT size [LAST]` (RFC 3030 §2), with CHUNKING offered.
    fn bdat(&mut self, args: &[u8]) -> Option<ServerStep> {
        let (size, last) = match parse_bdat(args) {
            Ok(v) => v,
            Err(e) => {
                // Not knowing the size, we cannot skip the chunk; reading on would take its
                // octets for commands, and a message's content must never become commands (SMTP
                // smuggling). So the session ends here, with the one reply that may close it
                // (RFC 5321 §3.8: 421; "4.5.4", invalid command arguments).
                self.reply(Reply::new(
                    421,
                    "4.5.4",
                    format!("Syntax: BDAT chunk-size [LAST]: {e}; closing the session"),
                ));
                return Some(ServerStep::Close);
            }
        };
        // Every refusal below is given only after the chunk was read and dropped (RFC 3030 §2).
        if self.chunking == Chunking::Failed {
            let reply = Reply::new(503, "5.5.1", "A chunk of this transaction was refused; send RSET");
            self.state = State::Discard {
                remaining: size,
                reply,
            };
            return None;
        }
        if self.mail.is_none() {
            let reply = Reply::new(503, "5.5.1", "Need MAIL command first");
            self.state = State::Discard {
                remaining: size,
                reply,
            };
            return None;
        }
        let open = self.chunking == Chunking::Open;
        if !open && self.rcpts.is_empty() {
            return Some(self.refuse_chunk(size, Reply::new(554, "5.5.1", "No valid recipients")));
        }
        // In raw mode the receiver's size is exactly the chunk octets taken so far.
        let so_far = self.data.as_ref().map_or(0, DataReceiver::size);
        let max = self.cfg.max_message_size;
        if max > 0 && so_far.saturating_add(size) > max {
            return Some(self.refuse_chunk(size, self.too_big()));
        }
        let chunk = Chunk {
            size,
            remaining: size,
            last,
        };
        if open {
            self.state = State::Chunk(chunk);
            return None;
        }
        let (from, params) = self.mail.clone().unwrap_or_default();
        self.state = State::AwaitDataStart { chunk: Some(chunk) };
        Some(ServerStep::StartData(MailEnvelope {
            mail_from: from,
            mail_params: params,
            recipients: self.rcpts.clone(),
        }))
    }

    /// Refuses the BDAT chunk of `size` octets that comes next, which ends the transaction:
    /// the chunk is read and dropped, then `reply` is given. Returns the step that tells the
    /// driver.
    fn refuse_chunk(&mut self, size: u64, reply: Reply) -> ServerStep {
        let step = if self.chunking == Chunking::Open {
            ServerStep::AbortData
        } else {
            ServerStep::Reset
        };
        self.reset_tx();
        self.chunking = Chunking::Failed;
        self.state = State::Discard {
            remaining: size,
            reply,
        };
        step
    }

    /// Reads and drops the octets of a refused chunk, then queues its reply. `false` while
    /// octets of it are still to come.
    fn discard_chunk(&mut self, input: &mut BytesMut) -> bool {
        let State::Discard { remaining, .. } = &mut self.state else {
            return true;
        };
        let n = (*remaining).min(input.len() as u64);
        input.advance(n as usize); // n <= input.len()
        *remaining -= n;
        if *remaining > 0 {
            return false;
        }
        if let State::Discard { reply, .. } = std::mem::replace(&mut self.state, State::Command) {
            // Not counted as an error: a pipelining client has every chunk of a refused message
            // on its way before it can know (a large message would otherwise end the session).
            let counted = self.errors;
            self.reply(reply);
            self.errors = counted;
        }
        true
    }

    /// Reads the octets of chunk `c` into the open message. `None` once a non-last chunk is in
    /// and answered (commands follow); otherwise the step for the driver.
    fn poll_chunk(&mut self, mut c: Chunk, input: &mut BytesMut) -> Option<ServerStep> {
        loop {
            if self.body.len() >= BODY_CHUNK {
                return Some(ServerStep::Body(std::mem::take(&mut self.body)));
            }
            let Some(rx) = self.data.as_mut() else {
                // Unreachable: a chunk is read only into an open message.
                self.state = State::Command;
                return None;
            };
            if c.remaining > 0 {
                if input.is_empty() {
                    return Some(if self.body.is_empty() {
                        ServerStep::NeedInput
                    } else {
                        ServerStep::Body(std::mem::take(&mut self.body))
                    });
                }
                // Never past the chunk (what follows is the next command), and never more than
                // fills the current Body piece.
                let room = BODY_CHUNK - self.body.len();
                let n = usize::try_from(c.remaining)
                    .unwrap_or(usize::MAX)
                    .min(input.len())
                    .min(room);
                let mut octets = input.split_to(n);
                rx.feed(&mut octets, &mut self.body);
                c.remaining -= n as u64;
                self.state = State::Chunk(c);
                continue;
            }
            if !c.last {
                self.state = State::Command;
                self.reply(Reply::new(250, "2.0.0", format!("{} octets received", c.size)));
                return None;
            }
            if !rx.is_done() {
                // Hand over what is buffered first, so the CRLF `finish` may add never takes a
                // Body piece over BODY_CHUNK.
                if !self.body.is_empty() {
                    return Some(ServerStep::Body(std::mem::take(&mut self.body)));
                }
                rx.finish(&mut self.body);
                continue;
            }
            if !self.body.is_empty() {
                return Some(ServerStep::Body(std::mem::take(&mut self.body)));
            }
            return Some(self.end_message());
        }
    }

    fn received_header(&self, date: &str) -> String {
        let (helo, esmtp) = self.helo.clone().unwrap_or_default();
        // RFC 3848: "A" for an authenticated session, "S" for TLS.
        let with = match (esmtp, self.tls, self.account().is_some()) {
            (true, true, true) => "ESMTPSA",
            (true, false, true) => "ESMTPA",
            (true, true, false) => "ESMTPS",
            (true, false, false) => "ESMTP",
            (false, true, _) => "SMTPS",
            (false, false, _) => "SMTP",
        };
        let for_clause = match self.rcpts.as_slice() {
            [one] => format!("\r\n\tfor <{}>", one.address),
            _ => String::new(),
        };
        format!(
            "Received: from {helo} ([{ip}])\r\n\tby {host} (odmr) with {with} id {id}.{n}{for_clause};\r\n\t{date}\r\n",
            ip = self.peer.ip,
            host = self.cfg.hostname,
            id = self.peer.session,
            n = self.opened,
        )
    }

    fn poll_data(&mut self, input: &mut BytesMut) -> ServerStep {
        let Some(rx) = self.data.as_mut() else {
            self.state = State::Command;
            return ServerStep::NeedInput;
        };
        if self.body.len() >= BODY_CHUNK {
            return ServerStep::Body(std::mem::take(&mut self.body));
        }
        match rx.feed(input, &mut self.body) {
            DataStatus::NeedMore => {
                if self.body.is_empty() {
                    ServerStep::NeedInput
                } else {
                    ServerStep::Body(std::mem::take(&mut self.body))
                }
            }
            DataStatus::Done => {
                if !self.body.is_empty() {
                    // Hand over the tail first; the next poll finds the receiver done again
                    // with nothing more to add.
                    return ServerStep::Body(std::mem::take(&mut self.body));
                }
                self.end_message()
            }
        }
    }

    /// The whole message is in (final dot, or the LAST chunk) and handed over: ask for the
    /// commit, or refuse it by its content.
    fn end_message(&mut self) -> ServerStep {
        if self.deferred {
            // One verdict outstanding at most; the next poll comes back here.
            return ServerStep::Settle;
        }
        let Some(rx) = self.data.take() else {
            // Unreachable: only an open message ends.
            self.state = State::Command;
            return ServerStep::NeedInput;
        };
        match rx.verdict() {
            Ok(()) => {
                self.state = State::AwaitCommit;
                let step = ServerStep::EndData {
                    size: rx.size(),
                    eight_bit: rx.eight_bit(),
                };
                self.pending = Some(step.clone());
                step
            }
            Err(e) => {
                let r = match e {
                    DataError::TooBig => self.too_big(),
                    DataError::BareLineEnd => Reply::new(
                        554,
                        "5.6.0",
                        "Message refused: bare CR or LF; lines must end with CRLF",
                    ),
                    DataError::Nul => Reply::new(554, "5.6.0", "Message refused: NUL octets are not allowed"),
                    DataError::TooManyReceived(n) => Reply::new(
                        554,
                        "5.4.6",
                        format!("Mail loop: too many Received headers ({n})"),
                    ),
                };
                self.reply(r);
                self.reset_tx();
                self.state = State::Command;
                ServerStep::AbortData
            }
        }
    }

    fn too_big(&self) -> Reply {
        Reply::new(
            552,
            "5.3.4",
            format!(
                "Message size exceeds the limit of {} octets",
                self.cfg.max_message_size
            ),
        )
    }

    /// The driver's answer to [`ServerStep::EndData`]: `Ok(text)` for the 250 once the message
    /// is durable (e.g. "OK queued as 12"), or the reply to give (typically 451) when the commit
    /// failed.
    ///
    /// After [`SmtpServer::defer_commit`] it gives the deferred verdict, whatever the state, and
    /// the replies held behind it follow.
    pub fn committed(&mut self, result: Result<String, Reply>) {
        if self.deferred {
            self.deferred = false;
            self.give_verdict(result);
            let held = std::mem::take(&mut self.held);
            self.out.extend_from_slice(&held);
            self.held = held;
            self.held.clear();
            return;
        }
        if self.state != State::AwaitCommit {
            return;
        }
        self.pending = None;
        self.give_verdict(result);
        self.reset_tx();
        self.state = State::Command;
    }

    fn give_verdict(&mut self, result: Result<String, Reply>) {
        match result {
            Ok(text) => {
                self.messages += 1;
                self.reply(Reply::new(250, "2.0.0", text));
            }
            Err(r) => self.reply(r),
        }
    }
}

fn param_error(e: smtp_proto::Error, syntax: &str) -> Reply {
    use smtp_proto::Error as E;
    match e {
        E::InvalidSenderAddress => Reply::new(553, "5.1.7", "Bad sender address syntax"),
        E::InvalidRecipientAddress => Reply::new(553, "5.1.3", "Bad recipient address syntax"),
        E::UnsupportedParameter { param } => {
            Reply::new(555, "5.5.4", format!("Unsupported parameter {param}"))
        }
        E::InvalidParameter { param } => Reply::new(501, "5.5.4", format!("Invalid value for {param}")),
        _ => Reply::new(501, "5.5.4", format!("Syntax: {syntax}")),
    }
}

/// Whether a RCPT line's path is `<Postmaster>` (any case), with no domain.
fn names_bare_postmaster(line: &[u8]) -> bool {
    let Some(open) = line.iter().position(|&b| b == b'<') else {
        return false;
    };
    let rest = &line[open + 1..];
    rest.iter()
        .position(|&b| b == b'>')
        .is_some_and(|close| rest[..close].eq_ignore_ascii_case(b"postmaster"))
}

/// RFC 6531 §3.7.4 (X.6.7): a non-ASCII address in a transaction without SMTPUTF8.
fn non_ascii_address(address: &str) -> Reply {
    Reply::new(
        553,
        "5.6.7",
        format!(
            "<{}>: a non-ASCII address needs MAIL FROM with SMTPUTF8",
            address.escape_default()
        ),
    )
}

#[cfg(test)]
mod tests;
