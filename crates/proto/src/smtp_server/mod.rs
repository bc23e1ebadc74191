//! An ESMTP server dialogue. It serves two places: the provider's inbound MX (which accepts
//! mail for hosted domains only), and the customer's side of the reversed ODMR session (which
//! relays each command to the local mail system and answers with its verdict).
//!
//! The machine lives here: its configuration, its steps, the poll loop and the command
//! dispatch. Each concern has a module of its own, with its invariants at its top:
//! `transaction` (MAIL, RCPT, DATA, DSN parameters, the driver's verdicts, the deferred
//! commit), `bdat` (CHUNKING, RFC 3030) and `etrn` (RFC 1985). What an ESMTP server is before
//! it knows what it serves (the line reader and output, the greeting, EHLO/HELO/QUIT, STARTTLS,
//! AUTH, the error limit) is the ESMTP core (`esmtp.rs`), shared with [`crate::odmr`].
//!
//! Invariants:
//! - **Bounded memory.** Command lines are capped (and overlong ones discarded while they
//!   arrive); the body leaves in bounded pieces ([`BODY_CHUNK`], see `transaction`).
//! - **STARTTLS drops buffered input.** After the 220 to STARTTLS the machine returns
//!   [`ServerStep::StartTls`] and consumes nothing more; the driver must find the input buffer
//!   empty before the handshake, or close the connection: plaintext sent after STARTTLS must
//!   never be executed inside the TLS session (command injection); the ESMTP core reads no line
//!   between the 220 and [`SmtpServer::tls_started`]. After the handshake,
//!   [`SmtpServer::tls_started`] forgets everything learnt before it (RFC 3207 §4.2).
//! - **Pipelining.** Replies accumulate in the output buffer while commands remain in the input;
//!   the driver flushes whenever the machine asks for more input (RFC 2920 §3.2).
//! - **AUTH only identifies.** With [`SmtpServer::enable_auth`] the MX offers AUTH (the exchange
//!   is [`crate::auth`], driven by the ESMTP core as for the ODMR listener); a successful AUTH
//!   names the account for ETRN and the `Received:` header, and nothing else: recipients are
//!   still checked one by one, so it never opens relaying.
//! - **One driver decision at a time.** A step that needs an answer (a verdict, a lookup) is
//!   returned again by every `poll` until the driver gives it.

mod bdat;
mod etrn;
mod transaction;

pub use bdat::{parse_bdat, BdatSyntaxError};
pub use etrn::EtrnVerdict;
pub use transaction::RcptVerdict;

use crate::auth::{AuthAnswer, AuthConfig, AuthStep};
use crate::data::DataReceiver;
use crate::envelope::{MailEnvelope, RcptEntry};
use crate::esmtp::{esmtp_accessors, Esmtp, EsmtpStep, Listener};
use crate::line::split_verb;
use crate::reply::Reply;
use bdat::{Chunk, Chunking};
use bytes::BytesMut;

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
    Closed,
}

pub struct SmtpServer {
    cfg: ServerConfig,
    peer: PeerInfo,
    /// Output, line reader, error count, STARTTLS and AUTH; a deferred verdict
    /// ([`SmtpServer::defer_commit`]) holds the replies behind it there.
    esmtp: Esmtp,
    state: State,
    pending: Option<ServerStep>,
    /// Messages opened in this session (the number in each `Received:` id).
    opened: u64,
    helo: Option<(String, bool)>,
    mail: Option<(String, String)>,
    rcpts: Vec<RcptEntry>,
    data: Option<DataReceiver>,
    chunking: Chunking,
    body: Vec<u8>,
    messages: u64,
}

impl SmtpServer {
    /// A new session; the 220 greeting is already in the output.
    pub fn new(cfg: ServerConfig, peer: PeerInfo) -> Self {
        let listener = Listener {
            hostname: cfg.hostname.clone(),
            // ENHANCEDSTATUSCODES is offered, so every 2xx/4xx/5xx carries one (RFC 2034 §4) —
            // except the greeting and HELO/EHLO replies, which are built without a status.
            enhanced: true,
            max_line: MAX_COMMAND_LINE,
            max_errors: cfg.max_errors,
            starttls: cfg.starttls,
        };
        SmtpServer {
            esmtp: Esmtp::new(listener, "ESMTP odmr ready"),
            state: State::Command,
            pending: None,
            opened: 0,
            helo: None,
            mail: None,
            rcpts: Vec::new(),
            data: None,
            chunking: Chunking::Idle,
            body: Vec::new(),
            messages: 0,
            cfg,
            peer,
        }
    }

    esmtp_accessors!();

    /// The client's HELO/EHLO name, once given.
    pub fn helo(&self) -> Option<&str> {
        self.helo.as_ref().map(|(h, _)| h.as_str())
    }

    /// Offer AUTH in this session (the MX listener): `seed` random per session and `unix_time`
    /// the current time, which make CRAM-MD5 challenges and SCRAM nonces unique. Call before the
    /// first `poll`.
    pub fn enable_auth(&mut self, cfg: AuthConfig, seed: u64, unix_time: u64) {
        // The MX offers ENHANCEDSTATUSCODES, so AUTH replies carry them too.
        self.esmtp.enable_auth(cfg, seed, unix_time);
    }

    /// The TLS handshake after STARTTLS succeeded: start over from the greeting state, without
    /// a new greeting, forgetting the client's name (RFC 3207 §4.2). STARTTLS is no longer
    /// offered.
    pub fn tls_started(&mut self) {
        self.reset_tx();
        self.helo = None;
        self.esmtp.tls_started();
        self.state = State::Command;
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

    /// While a recipient is checked ([`ServerStep::CheckRecipient`]): whether it is the
    /// transaction's last, as far as the input already read shows: the client's next command
    /// in `input` is DATA or BDAT. A driver that relays may then send its DATA with the
    /// recipient.
    pub fn data_follows(&self, input: &[u8]) -> bool {
        let starts = |p: &[u8]| input.len() >= p.len() && input[..p.len()].eq_ignore_ascii_case(p);
        matches!(self.state, State::AwaitRcpt { .. }) && (starts(b"DATA\r\n") || starts(b"BDAT "))
    }

    /// Behind a deferred verdict, replies wait: they must follow it (RFC 2920 §3.2).
    fn reply(&mut self, r: Reply) {
        self.esmtp.reply(r);
    }

    /// Advance the dialogue with the bytes in `input` (consumed as they are used).
    pub fn poll(&mut self, input: &mut BytesMut) -> ServerStep {
        let step = self.step(input);
        if self.esmtp.holding() && matches!(step, ServerStep::NeedInput | ServerStep::Close) {
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
            if self.esmtp.holding() && self.state == State::Command && !self.may_pass_verdict(input) {
                return ServerStep::Settle;
            }
            match self.state {
                State::Closed => return ServerStep::Close,
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
            let next = self.esmtp.next(input);
            let Some(step) = next.or_command(|line| self.command(line)) else {
                continue;
            };
            match step {
                ServerStep::Close => self.state = State::Closed,
                ServerStep::Auth(_) => {
                    self.state = State::AwaitAuth;
                    self.pending = Some(step.clone());
                }
                // Notices: the machine goes on by itself (a refused chunk is read next; after
                // STARTTLS, the ESMTP core reads nothing until the handshake).
                ServerStep::NeedInput | ServerStep::StartTls | ServerStep::Reset | ServerStep::AbortData => {}
                _ => self.pending = Some(step.clone()),
            }
            return step;
        }
    }

    fn command(&mut self, line: &[u8]) -> Option<ServerStep> {
        let (verb, args) = split_verb(line);
        let has_args = !args.iter().all(|b| *b == b' ');
        match verb.as_str() {
            "EHLO" | "HELO" => {
                let name = String::from_utf8_lossy(args).trim().to_string();
                if name.is_empty() || name.contains(' ') && !name.starts_with('[') {
                    self.esmtp.helo_syntax(&verb);
                    return None;
                }
                let had_tx = self.mail.is_some();
                self.reset_tx();
                let esmtp = verb == "EHLO";
                if esmtp {
                    let keywords = self.ehlo_keywords();
                    self.esmtp.ehlo(&name, keywords);
                } else {
                    self.esmtp.helo();
                }
                self.helo = Some((name, esmtp));
                if had_tx {
                    return Some(ServerStep::Reset);
                }
            }
            "MAIL" => return self.mail(line),
            "RCPT" => return self.rcpt(line),
            "BDAT" if self.cfg.chunking => return self.bdat(args),
            "DATA" => return self.data(has_args),
            "RSET" => {
                let had_tx = self.mail.is_some();
                self.reset_tx();
                self.esmtp.ok();
                if had_tx {
                    return Some(ServerStep::Reset);
                }
            }
            "NOOP" => self.esmtp.ok(),
            "QUIT" => {
                self.esmtp.quit();
                return Some(ServerStep::Close);
            }
            "HELP" => {
                let bdat = if self.cfg.chunking { " BDAT" } else { "" };
                let mut text = format!("Commands: EHLO HELO MAIL RCPT DATA{bdat} RSET NOOP QUIT HELP VRFY");
                if self.esmtp.auth_offered() {
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
            "STARTTLS" if self.esmtp.may_start_tls() => {
                let refusal = if self.mail.is_some() {
                    let text = "STARTTLS is not allowed inside a mail transaction";
                    Some(Reply::new(503, "5.5.1", text))
                } else if self.account().is_some() {
                    // What was learnt before TLS must be forgotten (RFC 3207 §4.2), and
                    // forgetting an authentication the client believes in only confuses it.
                    Some(Reply::new(503, "5.5.1", "STARTTLS is not allowed after AUTH"))
                } else {
                    None
                };
                if self.esmtp.starttls(has_args, refusal) {
                    return Some(ServerStep::StartTls);
                }
            }
            "STARTTLS" if self.is_tls() => self.reply(Reply::new(503, "5.5.1", "TLS is already active")),
            "AUTH" if self.esmtp.auth_offered() => {
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
                    return self.esmtp.auth_command(args);
                }
            }
            "ETRN" if self.cfg.etrn => return self.etrn(args),
            // BDAT without CHUNKING offered: a client that sends it anyway also sends its chunk,
            // whose octets then come as commands. They are refused one by one like any bad
            // command (and count towards `max_errors`); a size we never offered to honour is not
            // a reason to start reading data.
            "EXPN" | "TURN" | "ATRN" | "ETRN" | "AUTH" | "STARTTLS" | "BDAT" => {
                self.esmtp.not_implemented(&verb, "this listener")
            }
            _ => self.esmtp.unrecognized(),
        }
        None
    }

    /// The service extensions of the EHLO reply, after the greeting line and before HELP.
    fn ehlo_keywords(&self) -> Vec<String> {
        let mut k = vec!["PIPELINING".into(), format!("SIZE {}", self.cfg.max_message_size)];
        if self.cfg.eight_bit_mime || self.cfg.smtputf8 {
            k.push("8BITMIME".into());
        }
        k.push("ENHANCEDSTATUSCODES".into());
        if self.cfg.dsn {
            k.push("DSN".into());
        }
        if self.cfg.smtputf8 {
            k.push("SMTPUTF8".into());
        }
        if self.cfg.chunking {
            k.push("CHUNKING".into());
        }
        k.extend(self.esmtp.starttls_keyword());
        k.extend(self.esmtp.auth_keyword());
        if self.cfg.etrn {
            k.push("ETRN".into());
        }
        k
    }

    /// The driver's answer to [`ServerStep::Auth`]: `Some(true)` when the session is now
    /// authenticated (the 235 is in the output), `Some(false)` when the attempt failed (535),
    /// `None` when neither is known yet (SCRAM goes on) or for a temporary failure (454).
    pub fn auth_answer(&mut self, answer: AuthAnswer) -> Option<bool> {
        if self.state != State::AwaitAuth {
            return None;
        }
        let a = self.esmtp.auth_answer(answer)?;
        if !a.waiting {
            self.pending = None;
            self.state = if a.close { State::Closed } else { State::Command };
        }
        a.authenticated
    }
}

impl EsmtpStep for ServerStep {
    const NEED_INPUT: Self = ServerStep::NeedInput;
    const START_TLS: Self = ServerStep::StartTls;
    const CLOSE: Self = ServerStep::Close;
    fn auth(step: AuthStep) -> Self {
        ServerStep::Auth(step)
    }
}

#[cfg(test)]
mod tests;
