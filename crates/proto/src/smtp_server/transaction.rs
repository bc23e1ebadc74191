//! The mail transaction: MAIL (with the DSN parameters, RFC 3461), RCPT, DATA, the message
//! content handed to the driver, and the driver's verdicts on each of them.
//!
//! Invariants:
//! - **250 after DATA only once the message is durable.** The machine never writes that reply
//!   itself: it emits [`ServerStep::EndData`] and waits for [`SmtpServer::committed`], which the
//!   driver calls after the store commit.
//! - **Never an open relay.** Every RCPT goes to the driver as [`ServerStep::CheckRecipient`]; only
//!   a verdict of [`RcptVerdict::Accept`] adds the recipient.
//! - **Bounded memory.** The body leaves the machine in chunks of at most [`BODY_CHUNK`] octets;
//!   a message over the size limit stops being buffered and is refused with 552 at its end.
//! - **Only CRLF.CRLF ends DATA** (see [`crate::data`]); bare LF/CR, NUL or a mail loop get 554
//!   and the message is discarded, never split into a second one.
//! - **At most one verdict is outstanding** ([`SmtpServer::defer_commit`]): replies to the
//!   commands that go on behind it are held, and follow it in command order (RFC 2920 §3.2).
//! - **DSN parameters only where DSN is offered** ([`ServerConfig::dsn`]): repeats and invalid
//!   values get 501, DSN parameters without DSN 555; the valid ones are kept in the envelope.

use super::bdat::Chunking;
#[cfg(doc)]
use super::ServerConfig;
use super::{ServerStep, SmtpServer, State, BODY_CHUNK};
use crate::data::{DataError, DataLimits, DataReceiver, DataStatus};
use crate::envelope::{
    address_domain, mail_params_text, rcpt_params_text, split_dsn_params, DsnParams, DsnVerb, MailEnvelope,
    RcptEntry,
};
use crate::line::split_verb;
use crate::reply::Reply;
use bytes::BytesMut;
use std::borrow::Cow;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptVerdict {
    Accept,
    /// The domain is not hosted here (550 5.7.1).
    NotHosted,
    /// Any other refusal, e.g. a temporary store error (451).
    Refuse(Reply),
}

impl SmtpServer {
    pub(super) fn mail(&mut self, line: &[u8]) -> Option<ServerStep> {
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

    pub(super) fn rcpt(&mut self, line: &[u8]) -> Option<ServerStep> {
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

    /// `DATA`: the envelope goes to the driver, which opens a message for it.
    pub(super) fn data(&mut self, has_args: bool) -> Option<ServerStep> {
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
            self.state = State::AwaitDataStart { chunk: None };
            return Some(ServerStep::StartData(self.envelope()));
        }
        None
    }

    /// The transaction's envelope, for [`ServerStep::StartData`].
    pub(super) fn envelope(&self) -> MailEnvelope {
        let (from, params) = self.mail.clone().unwrap_or_default();
        MailEnvelope {
            mail_from: from,
            mail_params: params,
            recipients: self.rcpts.clone(),
        }
    }

    fn received_header(&self, date: &str) -> String {
        let (helo, esmtp) = self.helo.clone().unwrap_or_default();
        // RFC 3848: "A" for an authenticated session, "S" for TLS.
        let with = match (esmtp, self.is_tls(), self.account().is_some()) {
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

    pub(super) fn poll_data(&mut self, input: &mut BytesMut) -> ServerStep {
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
    pub(super) fn end_message(&mut self) -> ServerStep {
        if self.esmtp.holding() {
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

    pub(super) fn too_big(&self) -> Reply {
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
        if self.esmtp.holding() {
            let verdict = self.verdict(result);
            self.esmtp.release(verdict);
            return;
        }
        if self.state != State::AwaitCommit {
            return;
        }
        self.pending = None;
        let verdict = self.verdict(result);
        self.reply(verdict);
        self.reset_tx();
        self.state = State::Command;
    }

    /// The reply to a commit's result; a message accepted counts.
    fn verdict(&mut self, result: Result<String, Reply>) -> Reply {
        match result {
            Ok(text) => {
                self.messages += 1;
                Reply::new(250, "2.0.0", text)
            }
            Err(r) => r,
        }
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
        self.esmtp.hold();
        self.reset_tx();
        self.state = State::Command;
    }

    /// Whether the machine may go on past a deferred verdict: the next command line is complete
    /// and belongs to a transaction (its replies can wait behind the verdict; anything else,
    /// such as QUIT or EHLO, must not overtake it). RSET passes: a delivering client may open
    /// each transaction with one (ours does, with BDAT).
    pub(super) fn may_pass_verdict(&self, input: &[u8]) -> bool {
        if self.esmtp.in_auth_exchange() {
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

    pub(super) fn reset_tx(&mut self) {
        self.mail = None;
        self.rcpts.clear();
        self.data = None;
        self.chunking = Chunking::Idle;
        self.body.clear();
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
