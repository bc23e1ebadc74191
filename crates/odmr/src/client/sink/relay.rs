//! Relay to the local MTA over SMTP or LMTP, in lockstep with the provider: each MAIL, RCPT and
//! DATA is passed on and the local verdict is the provider's reply, so a recipient the local MTA
//! rejects is rejected to the provider at RCPT time, in the same code class.
//!
//! Invariants:
//! - **250 to the provider only after the local MTA's 250** for the final dot.
//! - **A transaction abandoned mid-DATA is never completed locally.** We cannot RSET inside
//!   DATA, and sending the end marker would deliver a truncated message; so we drop the local
//!   connection, which makes the local MTA discard it.
//! - **LMTP takes one recipient per transaction**, so its single per-recipient reply after the
//!   dot (RFC 2033 §4.2) is exactly the one SMTP reply the provider needs (RFC 5321 §4.1.1.4),
//!   with nothing lost or duplicated.
//! - Only parameters the local MTA offered are passed on.
//! - **With the local MTA's PIPELINING, one local round trip per message** (RFC 2920): MAIL
//!   waits in the buffer and goes out with the first RCPT; DATA rides with the last RCPT when
//!   the provider's DATA (or BDAT) is already read ([`Relay::expect_data`]); and the final dot
//!   waits for the next transaction's commands, its reply read ahead of theirs
//!   ([`Relay::end`], [`Relay::take_final`]; the reversed session defers that verdict with
//!   `SmtpServer::defer_commit`, so the provider's replies keep their order). A local refusal
//!   of MAIL becomes the refusal of each RCPT, and one of DATA the reply to the final dot: the
//!   provider's per-recipient outcomes are what they would be in lockstep.
//! - **A verdict owed is read before anything that could lose it** (an RSET, a dropped
//!   connection, QUIT): [`Relay::reset`] and [`Relay::close`] read it first.
//! - A 354 sent early leaves the local MTA inside DATA before the provider's body is read, so
//!   a transaction abandoned from there on is dropped with the connection, as mid-body.

use super::{SinkCaps, SinkError};
use crate::client::config::Endpoint;
use crate::net::conn::Conn;
use odmr_proto::dot::DotStuffer;
use odmr_proto::envelope::param;
use odmr_proto::reply::{parse_reply, Reply};
use std::time::Duration;

const FLUSH_AT: usize = 64 * 1024;

pub struct Relay {
    target: String,
    conn: Option<Conn>,
    caps: SinkCaps,
    timeout: Duration,
    out: Vec<u8>,
    stuffer: DotStuffer,
    in_data: bool,
    in_tx: bool,
    failed: Option<Reply>,
    /// The local MTA offered PIPELINING.
    pipelining: bool,
    /// MAIL is in `out`, not yet sent: its reply comes with the first RCPT's.
    mail_unsent: bool,
    /// The local MTA refused MAIL: every RCPT of this transaction gets that reply.
    mail_refused: Option<Reply>,
    /// We said 354 to the provider, and DATA is not yet sent to the local MTA (the body so far
    /// waits in `out`).
    data_unsent: bool,
    /// The provider's DATA or BDAT follows the next RCPT: send DATA with that RCPT.
    data_next: bool,
    /// The reply to a DATA sent early with the last RCPT, for [`Relay::data`] to pass on.
    early_data: Option<Reply>,
    /// A message's final dot is sent (or waits in `out`) and its reply is the next the local
    /// MTA owes us (see [`Relay::end`]).
    owed_final: bool,
    /// That reply, once read ahead of a later command's, for [`Relay::take_final`].
    final_reply: Option<Reply>,
    /// How many octets at the start of `out` end that message (its last body octets and the
    /// dot) while they wait to leave with the next transaction's commands.
    final_unsent: usize,
}

fn unavailable(why: impl std::fmt::Display) -> Reply {
    Reply::new(451, "4.4.0", format!("local mail system unavailable: {why}"))
}

impl Relay {
    /// Connect, read the greeting and learn the local MTA's capabilities (EHLO, or LHLO).
    pub async fn connect(
        endpoint: &Endpoint,
        lmtp: bool,
        name: &str,
        timeout: Duration,
    ) -> Result<Relay, SinkError> {
        let target = endpoint.to_string();
        let err = |reason: String| SinkError::Unreachable {
            target: target.clone(),
            reason,
        };
        let conn = Conn::connect(&target, timeout)
            .await
            .map_err(|e| err(e.to_string()))?;
        let mut r = Relay {
            target: target.clone(),
            conn: Some(conn),
            caps: SinkCaps {
                max_size: 0,
                eight_bit_mime: false,
                smtputf8: false,
                max_recipients: if lmtp { 1 } else { 100 },
            },
            timeout,
            out: Vec::new(),
            stuffer: DotStuffer::new(),
            in_data: false,
            in_tx: false,
            failed: None,
            pipelining: false,
            mail_unsent: false,
            mail_refused: None,
            data_unsent: false,
            data_next: false,
            early_data: None,
            owed_final: false,
            final_reply: None,
            final_unsent: 0,
        };
        let greeting = r.read_reply().await.map_err(|e| err(e.to_string()))?;
        if greeting.code != 220 {
            return Err(err(format!("greeting was {greeting}")));
        }
        let hello = if lmtp { "LHLO" } else { "EHLO" };
        let mut reply = r
            .command(&format!("{hello} {name}"))
            .await
            .map_err(|e| err(e.to_string()))?;
        if !reply.is_positive() && !lmtp {
            reply = r
                .command(&format!("HELO {name}"))
                .await
                .map_err(|e| err(e.to_string()))?;
            if reply.is_positive() {
                reply.lines.truncate(1);
            }
        }
        if !reply.is_positive() {
            return Err(err(format!("{hello} was refused: {reply}")));
        }
        for l in reply.lines.iter().skip(1) {
            let mut w = l.split_whitespace();
            match w.next().unwrap_or("").to_ascii_uppercase().as_str() {
                "8BITMIME" => r.caps.eight_bit_mime = true,
                "PIPELINING" => r.pipelining = true,
                "SMTPUTF8" => r.caps.smtputf8 = true,
                "SIZE" => r.caps.max_size = w.next().and_then(|n| n.parse().ok()).unwrap_or(0),
                _ => {}
            }
        }
        tracing::debug!(target = %r.target, caps = ?r.caps, "local mail system ready");
        Ok(r)
    }

    /// A local MTA that states no limit (`SIZE` bare or 0, or no SIZE at all) gives 0: the
    /// provider is told "no fixed maximum" and sends whatever it holds, which streams through
    /// to the local MTA, the one that knows its limit (a 552 from it reaches the provider).
    pub fn caps(&self) -> SinkCaps {
        self.caps.clone()
    }

    /// The next reply to a command of ours. A final reply still owed comes first: it is kept
    /// for [`Relay::take_final`] (or, if it cannot be read, a 451 in its place).
    async fn read_reply(&mut self) -> Result<Reply, String> {
        self.read_reply_owed().await?;
        self.read_raw().await
    }

    async fn read_raw(&mut self) -> Result<Reply, String> {
        let conn = self.conn.as_mut().ok_or("connection closed")?;
        loop {
            match parse_reply(&mut conn.buf) {
                Ok(Some(r)) => return Ok(r),
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
            match conn.fill(self.timeout).await {
                Ok(0) => return Err("the local mail system closed the connection".into()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    async fn command(&mut self, line: &str) -> Result<Reply, String> {
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
        self.flush().await?;
        self.read_reply().await
    }

    async fn flush(&mut self) -> Result<(), String> {
        self.final_unsent = 0;
        let conn = self.conn.as_mut().ok_or("connection closed")?;
        conn.send(&mut self.out, self.timeout)
            .await
            .map_err(|e| e.to_string())
    }

    /// A command whose failure to get any reply is a temporary local failure.
    async fn ask(&mut self, line: &str) -> Result<(), Reply> {
        match self.command(line).await {
            Ok(r) if r.is_positive() || r.code == 354 => Ok(()),
            Ok(r) => Err(r),
            Err(e) => {
                self.conn = None;
                Err(unavailable(e))
            }
        }
    }

    pub async fn mail(&mut self, from: &str, params: &str) -> Result<(), Reply> {
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
        if self.pipelining {
            if self.conn.is_none() {
                return Err(unavailable("connection closed"));
            }
            self.out.extend_from_slice(cmd.as_bytes());
            self.out.extend_from_slice(b"\r\n");
            self.mail_unsent = true;
            self.in_tx = true;
            return Ok(());
        }
        let r = self.ask(&cmd).await;
        self.in_tx = r.is_ok();
        r
    }

    /// The provider's DATA (or BDAT) is already buffered behind the RCPT about to be relayed:
    /// with the local MTA's PIPELINING, DATA goes out with that RCPT (RFC 2920 §3.1 lets DATA
    /// end a group), saving a round trip.
    pub fn expect_data(&mut self) {
        self.data_next = self.pipelining;
    }

    pub async fn rcpt(&mut self, to: &str, _params: &str) -> Result<(), Reply> {
        let with_data = std::mem::take(&mut self.data_next);
        if let Some(r) = &self.mail_refused {
            return Err(r.clone());
        }
        if !self.mail_unsent && !with_data {
            return self.ask(&format!("RCPT TO:<{to}>")).await;
        }
        // MAIL (if not sent yet), this RCPT and DATA (if it follows) in one write; their
        // replies in order.
        let with_mail = std::mem::take(&mut self.mail_unsent);
        self.out
            .extend_from_slice(format!("RCPT TO:<{to}>\r\n").as_bytes());
        if with_data {
            self.out.extend_from_slice(b"DATA\r\n");
        }
        let replies = 1 + usize::from(with_mail) + usize::from(with_data);
        let mut got = Vec::with_capacity(replies);
        if let Err(e) = self.flush().await {
            self.conn = None;
            return Err(unavailable(e));
        }
        for _ in 0..replies {
            match self.read_reply().await {
                Ok(r) => got.push(r),
                Err(e) => {
                    self.conn = None;
                    return Err(unavailable(e));
                }
            }
        }
        let data = with_data.then(|| got.pop()).flatten();
        let rcpt = got.pop().expect("one reply per command");
        if let Some(mail) = got.pop().filter(|m| !m.is_positive()) {
            self.in_tx = false;
            self.mail_refused = Some(mail.clone());
            return Err(mail);
        }
        if let Some(d) = data {
            if d.code == 354 {
                // The local MTA now waits for the body: from here on only the final dot or
                // a dropped connection ends its transaction.
                self.in_data = true;
            }
            self.early_data = Some(d);
        }
        if rcpt.is_positive() {
            Ok(())
        } else {
            Err(rcpt)
        }
    }

    pub async fn data(&mut self) -> Result<(), Reply> {
        self.failed = None;
        self.stuffer = DotStuffer::new();
        if let Some(r) = self.early_data.take() {
            // DATA went out with the last RCPT.
            return if r.code == 354 { Ok(()) } else { Err(r) };
        }
        if self.pipelining {
            self.data_unsent = true;
        } else {
            self.ask("DATA").await?;
        }
        self.in_data = true;
        Ok(())
    }

    /// Sends the DATA we owe the local MTA, before any of the body. A refusal (or no reply)
    /// becomes the message's verdict.
    async fn start_data(&mut self) {
        self.data_unsent = false;
        let body = std::mem::take(&mut self.out);
        let reply = self.command("DATA").await;
        self.out = body;
        match reply {
            Ok(r) if r.code == 354 => {}
            Ok(r) => {
                // Still in the transaction locally: RSET it; no byte of the body was sent, so
                // the connection stays usable for the next message.
                self.out.clear();
                let _ = self.command("RSET").await;
                self.in_data = false;
                self.in_tx = false;
                self.failed = Some(r);
            }
            Err(e) => {
                self.conn = None;
                self.failed = Some(unavailable(e));
            }
        }
    }

    pub async fn body(&mut self, chunk: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        self.stuffer.stuff(chunk, &mut self.out);
        if self.out.len() >= FLUSH_AT {
            if self.data_unsent {
                self.start_data().await;
                if self.failed.is_some() {
                    return;
                }
            }
            if let Err(e) = self.flush().await {
                self.failed = Some(unavailable(e));
            }
        }
    }

    /// The body is complete. With the local MTA's PIPELINING the final dot is not waited for:
    /// it leaves with the next transaction's commands (RFC 2920 §3.1: message content may open
    /// a group), so a message costs one local round trip; its reply is read ahead of theirs and
    /// handed over by [`Relay::take_final`], or by [`Relay::settle`] when nothing follows.
    /// `None` then; otherwise the verdict.
    pub async fn end(&mut self) -> Option<Reply> {
        if self.data_unsent && self.failed.is_none() {
            self.start_data().await;
        }
        // False if the local MTA refused DATA (start_data reset the transaction).
        let local_in_data = self.in_data;
        self.in_data = false;
        self.in_tx = false;
        if let Some(r) = self.failed.take() {
            if local_in_data {
                // Part of the body may have left: never let the local MTA complete it.
                self.conn = None;
            }
            self.out.clear();
            return Some(r);
        }
        self.stuffer.finish(&mut self.out);
        // SMTP: one reply. LMTP: one per accepted recipient, and we accept one per transaction.
        self.owed_final = true;
        self.final_unsent = self.out.len();
        if self.pipelining {
            return None;
        }
        self.settle().await
    }

    /// The final reply read ahead of a later command's, if there is one.
    pub fn take_final(&mut self) -> Option<Reply> {
        self.final_reply.take()
    }

    /// The final reply still owed, read now (the dot leaves if it still waits in the buffer).
    pub async fn settle(&mut self) -> Option<Reply> {
        self.read_final().await;
        self.final_reply.take()
    }

    /// Reads the final reply still owed into `final_reply`, sending first what ends that
    /// message if it still waits in `out` (and only that: a MAIL buffered behind it stays).
    async fn read_final(&mut self) {
        if !self.owed_final {
            return;
        }
        let rest = self.out.split_off(self.final_unsent.min(self.out.len()));
        let sent = self.flush().await;
        self.out = rest;
        if let Err(e) = sent {
            self.owed_final = false;
            self.conn = None;
            self.final_reply = Some(unavailable(e));
            return;
        }
        if let Err(e) = self.read_reply_owed().await {
            self.conn = None;
            tracing::debug!(error = %e, "no final reply from the local mail system");
        }
    }

    /// Reads just the owed final reply (into `final_reply`).
    async fn read_reply_owed(&mut self) -> Result<(), String> {
        if std::mem::take(&mut self.owed_final) {
            match self.read_raw().await {
                Ok(r) => self.final_reply = Some(r),
                Err(e) => {
                    self.final_reply = Some(unavailable(&e));
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    pub async fn reset(&mut self) {
        // The previous message's verdict first: what follows may drop the connection or the
        // buffer its dot waits in.
        self.read_final().await;
        self.early_data = None;
        self.data_next = false;
        if self.mail_unsent {
            // Nothing of this transaction has left yet.
            self.mail_unsent = false;
            self.in_tx = false;
        }
        if self.in_data && self.data_unsent {
            // DATA never left, so neither did the body: an RSET is enough.
            self.in_data = false;
            self.data_unsent = false;
            self.out.clear();
        }
        self.mail_refused = None;
        if self.in_data {
            // Never finish a truncated message: drop the connection instead.
            self.conn = None;
            self.in_data = false;
        } else if self.in_tx && self.conn.is_some() {
            let _ = self.command("RSET").await;
        }
        self.in_tx = false;
        self.out.clear();
    }

    pub async fn close(mut self) {
        self.read_final().await;
        if self.mail_unsent {
            self.out.clear();
        }
        if self.conn.is_some() && !self.in_data {
            let _ = self.command("QUIT").await;
        }
        if let Some(mut c) = self.conn.take() {
            c.shutdown().await;
        }
    }
}
