//! Relay to the local MTA over SMTP or LMTP: the driver of [`odmr_proto::relay`], which makes
//! every protocol decision (what goes out when, which reply answers what, the verdicts and
//! their order; its invariants are there). This side connects, writes, reads with the
//! configured timeout, and tells the machine when the connection fails.

use super::{SinkCaps, SinkError};
use crate::client::config::Endpoint;
use crate::net::conn::Conn;
use bytes::BytesMut;
use odmr_proto::relay::{unavailable, Relay as Machine, RelayStep};
use odmr_proto::reply::Reply;
use std::collections::VecDeque;
use std::time::Duration;

pub struct Relay {
    conn: Option<Conn>,
    m: Machine,
    timeout: Duration,
    /// Verdicts the machine gave that the reversed session has not taken yet, oldest first.
    verdicts: VecDeque<Reply>,
    /// The setup failed: why.
    failed: Option<String>,
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
            conn: Some(conn),
            m: Machine::new(lmtp, name),
            timeout,
            verdicts: VecDeque::new(),
            failed: None,
        };
        r.run().await;
        if let Some(reason) = r.failed.take() {
            return Err(err(reason));
        }
        tracing::debug!(target = %target, caps = ?r.caps(), "local mail system ready");
        Ok(r)
    }

    pub fn caps(&self) -> SinkCaps {
        let c = self.m.caps();
        SinkCaps {
            max_size: c.max_size,
            eight_bit_mime: c.eight_bit_mime,
            smtputf8: c.smtputf8,
            max_recipients: c.max_recipients,
        }
    }

    /// Polls the machine until it waits for the next event, doing the I/O it asks for. Returns
    /// its answer to the event, if it gave one.
    async fn run(&mut self) -> Option<Result<(), Reply>> {
        let mut answer = None;
        let mut no_input = BytesMut::new();
        loop {
            let input = self.conn.as_mut().map_or(&mut no_input, |c| &mut c.buf);
            match self.m.poll(input) {
                RelayStep::Write => {
                    let sent = match self.conn.as_mut() {
                        Some(c) => c
                            .send(self.m.output(), self.timeout)
                            .await
                            .map_err(|e| e.to_string()),
                        None => Err("connection closed".into()),
                    };
                    if let Err(e) = sent {
                        tracing::debug!(error = %e, "writing to the local mail system failed");
                        self.m.output().clear();
                        self.m.io_failed(e);
                    }
                }
                RelayStep::NeedInput => match self.conn.as_mut() {
                    Some(c) => match c.fill(self.timeout).await {
                        Ok(0) => self.m.closed_by_peer(),
                        Ok(_) => {}
                        Err(e) => {
                            tracing::debug!(error = %e, "reading from the local mail system failed");
                            self.m.io_failed(e);
                        }
                    },
                    None => self.m.io_failed("connection closed"),
                },
                RelayStep::Answer(a) => answer = Some(a),
                RelayStep::Verdict(v) => self.verdicts.push_back(v),
                RelayStep::Close => self.conn = None,
                RelayStep::Idle => return answer,
                RelayStep::Failed(why) => {
                    self.failed = Some(why);
                    return answer;
                }
            }
        }
    }

    async fn answer(&mut self) -> Result<(), Reply> {
        self.run()
            .await
            .unwrap_or_else(|| Err(unavailable("no answer from the relay")))
    }

    pub async fn mail(&mut self, from: &str, params: &str) -> Result<(), Reply> {
        self.m.mail(from, params);
        self.answer().await
    }

    /// The provider's DATA (or BDAT) is already buffered behind the RCPT about to be relayed.
    pub fn expect_data(&mut self) {
        self.m.expect_data();
    }

    pub async fn rcpt(&mut self, to: &str, _params: &str) -> Result<(), Reply> {
        self.m.rcpt(to);
        self.answer().await
    }

    pub async fn data(&mut self) -> Result<(), Reply> {
        self.m.data();
        self.answer().await
    }

    pub async fn body(&mut self, chunk: &[u8]) {
        self.m.body(chunk);
        self.run().await;
    }

    /// The body is complete: the verdict, or `None` when it comes later (with the local MTA's
    /// PIPELINING): from [`Relay::take_final`] after a later call, or [`Relay::settle`].
    pub async fn end(&mut self) -> Option<Reply> {
        self.m.end();
        self.run().await;
        if self.m.verdict_owed() {
            None
        } else {
            self.verdicts.pop_back()
        }
    }

    /// The verdict on an earlier message that a later call brought in, if there is one.
    pub fn take_final(&mut self) -> Option<Reply> {
        self.verdicts.pop_front()
    }

    /// The verdict still owed, waited for now.
    pub async fn settle(&mut self) -> Option<Reply> {
        self.m.settle();
        self.run().await;
        self.verdicts.pop_front()
    }

    pub async fn reset(&mut self) {
        self.m.reset();
        self.run().await;
    }

    pub async fn close(mut self) {
        self.m.close();
        self.run().await;
        if let Some(mut c) = self.conn.take() {
            c.shutdown().await;
        }
    }
}
