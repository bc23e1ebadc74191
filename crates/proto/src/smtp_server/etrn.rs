//! `ETRN` (RFC 1985): a client asks the server to start the queue for a node.
//!
//! Invariants:
//! - **ETRN is decided by the driver and never inside a transaction** (RFC 1985 §5): with
//!   [`ServerConfig::etrn`] set, a well-formed `ETRN [@]node` becomes [`ServerStep::Etrn`]; the
//!   reply is one line, from [`SmtpServer::etrn_verdict`], and the queue run starts only after
//!   it.
//! - **The reply does not tell who owns a domain**: every refusal is the one 459 of
//!   [`EtrnVerdict::NotAllowed`]; named queues (`ETRN #queue`) are refused without asking the
//!   driver, as we keep one queue indexed by domain.

#[cfg(doc)]
use super::ServerConfig;
use super::{ServerStep, SmtpServer, State};
use crate::atrn::{parse_domain, quote};
use crate::reply::Reply;

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

impl SmtpServer {
    /// `ETRN [@|#]node` (RFC 1985 §5).
    pub(super) fn etrn(&mut self, args: &[u8]) -> Option<ServerStep> {
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
}
