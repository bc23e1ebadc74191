//! Where the customer puts each message it receives: the local MTA (SMTP or LMTP, relayed in
//! lockstep), a Maildir, or a command.
//!
//! The contract every sink keeps: [`Sink::end`] returns a `250` only once the message is durable
//! in the sink (the local MTA said 250, the Maildir file is fsync'd and renamed into `new/`, the
//! command exited 0). The reversed session passes that reply to the provider, so a `250` there
//! moves responsibility, and nothing acknowledged can be lost.
//!
//! A sink that cannot give one honest verdict for several recipients (a command run per
//! recipient; LMTP's per-recipient replies) takes one recipient per transaction
//! (`max_recipients = 1`); the provider then sends the others in further transactions. SMTP
//! has one reply after the data (RFC 5321 §4.1.1.4), LMTP one per recipient (RFC 2033 §4.2):
//! this way no mixed result ever has to be folded into one reply.

pub mod command;
pub mod line_ends;
pub mod maildir;
pub mod relay;

use odmr_proto::reply::Reply;

/// What the sink can carry, advertised to the provider in our EHLO reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkCaps {
    pub max_size: u64,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub max_recipients: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot reach the local mail system at {target}: {reason}")]
    Unreachable { target: String, reason: String },
    /// A `[provider.deliver]` value that cannot work: checked when the config is loaded, so
    /// the client refuses to start rather than fail at every poll.
    #[error("deliver.{key} = {value:?}: {problem}; {fix}")]
    Invalid {
        key: &'static str,
        value: String,
        problem: String,
        fix: String,
    },
}

pub enum Sink {
    Relay(Box<relay::Relay>),
    Maildir(maildir::Maildir),
    Command(command::Command),
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Sink::Relay($s) => $e,
            Sink::Maildir($s) => $e,
            Sink::Command($s) => $e,
        }
    };
}

impl Sink {
    pub fn caps(&self) -> SinkCaps {
        each!(self, s => s.caps())
    }
    /// MAIL: `Ok` or the reply to give the provider.
    pub async fn mail(&mut self, from: &str, params: &str) -> Result<(), Reply> {
        each!(self, s => s.mail(from, params).await)
    }
    /// RCPT: `Ok` or the reply to give the provider (same class as the local verdict).
    pub async fn rcpt(&mut self, to: &str, params: &str) -> Result<(), Reply> {
        each!(self, s => s.rcpt(to, params).await)
    }
    /// The provider's DATA (or BDAT) is already buffered behind the next RCPT: a sink that can
    /// ask for both at once does (the relay, with the local MTA's PIPELINING).
    pub fn expect_data(&mut self) {
        if let Sink::Relay(r) = self {
            r.expect_data();
        }
    }
    /// DATA is about to start (the provider gets 354 on `Ok`).
    pub async fn data(&mut self) -> Result<(), Reply> {
        each!(self, s => s.data().await)
    }
    /// Part of the message (unstuffed, our Received: header first). A failure is remembered
    /// and reported by `end`.
    pub async fn body(&mut self, chunk: &[u8]) {
        each!(self, s => s.body(chunk).await)
    }
    /// The message is complete: the final reply, `250` only once the sink holds it durably.
    /// `None` when the verdict comes later (the relay sends the final dot with the next
    /// transaction's commands): from [`Sink::take_final`] after a later call, or
    /// [`Sink::settle`].
    pub async fn end(&mut self) -> Option<Reply> {
        match self {
            Sink::Relay(s) => s.end().await,
            Sink::Maildir(s) => Some(s.end().await),
            Sink::Command(s) => Some(s.end().await),
        }
    }
    /// The verdict on the previous message, if a later call brought it in.
    pub fn take_final(&mut self) -> Option<Reply> {
        match self {
            Sink::Relay(s) => s.take_final(),
            Sink::Maildir(_) | Sink::Command(_) => None,
        }
    }
    /// The verdict still owed on the previous message, waited for now.
    pub async fn settle(&mut self) -> Option<Reply> {
        match self {
            Sink::Relay(s) => s.settle().await,
            Sink::Maildir(_) | Sink::Command(_) => None,
        }
    }
    /// Abandon the current transaction (RSET, a dropped connection, a refused message).
    pub async fn reset(&mut self) {
        each!(self, s => s.reset().await)
    }
    /// The session is over.
    pub async fn close(self) {
        match self {
            Sink::Relay(s) => s.close().await,
            Sink::Maildir(_) | Sink::Command(_) => {}
        }
    }
}
