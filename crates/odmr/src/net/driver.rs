//! The driver loop's I/O, shared by every dialogue: each session keeps its own `match` on its
//! machine's steps (they differ: store commits, sinks, leases) and comes here whenever the
//! machine needs input, ends, or must have everything out before something else happens
//! (a TLS handshake, a turnaround, a commit acknowledged at once).
//!
//! Invariants:
//! - **Writes and reads go together.** While the machine waits for input, what it queued is
//!   written and more input is read at the same time ([`Conn::exchange`]): neither side of a
//!   pipelining dialogue waits for the other's buffers to drain.
//! - **Bounded memory for a peer that never reads.** No input is read while more than
//!   [`crate::net::conn::UNSENT_MAX`] octets of output wait, and a read where commands are
//!   expected brings at most 512 octets ([`ReadSize::Commands`]): what a peer can make us hold
//!   is what the machine answers to that, plus that bound.
//! - **Every wait has a deadline.** The timeout bounds the time without progress either way; a
//!   write that cannot progress ends the session without a reply (none could reach the peer), a
//!   read that times out ends it with the machine's own 421 ([`Machine::abort`]).
//! - **Shutdown is the machine's to say.** When the server shuts down while a machine waits for
//!   commands ([`Input::Commands`]), the machine queues its 421 in its own form
//!   ([`Machine::shutdown`]: with an enhanced status code only where it offers them), which is
//!   written before the session ends. A message in flight ([`Input::Data`]) is not interrupted:
//!   the shutdown applies once it is done.
//! - **Order is kept.** Output is written in the order the machine queued it; output still
//!   unsent when input arrived goes out before anything queued later ([`Driver::flush`]).

use super::conn::{Conn, ConnError, ExchangeError, ReadSize};
use std::time::Duration;
use tokio::sync::watch;

/// What the driver needs of a protocol machine.
pub trait Machine {
    /// Bytes to send; the driver takes them (and clears the buffer).
    fn output(&mut self) -> &mut Vec<u8>;

    /// The server shuts down: queue the reply that says so, if this side sends one (a server's
    /// 421). A client's machine has none.
    fn shutdown(&mut self) {}

    /// The peer went quiet or the connection failed (`why`): queue the reply that says so, if
    /// this side sends one (a server's 421, RFC 5321 §4.5.3.2.7).
    fn abort(&mut self, _why: &str) {}
}

impl Machine for odmr_proto::smtp_server::SmtpServer {
    fn output(&mut self) -> &mut Vec<u8> {
        self.output()
    }
    fn shutdown(&mut self) {
        self.shutdown()
    }
    fn abort(&mut self, why: &str) {
        self.abort(why)
    }
}

impl Machine for odmr_proto::odmr::OdmrSession {
    fn output(&mut self) -> &mut Vec<u8> {
        self.output()
    }
    fn shutdown(&mut self) {
        self.shutdown()
    }
    fn abort(&mut self, why: &str) {
        self.abort(why)
    }
}

impl Machine for odmr_proto::customer::Customer {
    fn output(&mut self) -> &mut Vec<u8> {
        self.output()
    }
}

impl Machine for odmr_proto::deliver::Deliverer {
    fn output(&mut self) -> &mut Vec<u8> {
        self.output()
    }
}

/// What the machine waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Commands: reads of at most 512 octets; a shutdown ends the session.
    Commands,
    /// Message data: reads of up to 64 KiB; a shutdown waits until the message is done.
    Data,
    /// A client's replies: reads of up to 64 KiB.
    Replies,
}

/// Why a session's exchange ended it.
#[derive(Debug)]
pub enum Stop {
    /// The peer closed the connection.
    Closed,
    /// The server is shutting down; the machine's 421 was written (if it could be).
    Shutdown,
    /// Writing failed or timed out (nothing more was sent).
    WriteFailed(ConnError),
    /// Reading failed or timed out; the machine's 421 (if it has one) was written.
    ReadFailed(ConnError),
}

impl Stop {
    /// Log why the session ended; `peer` names the other side ("client", "customer").
    pub fn log(&self, peer: &str) {
        match self {
            Stop::Closed => tracing::debug!("{peer} closed the connection"),
            Stop::Shutdown => tracing::debug!("shutting down; session ended"),
            Stop::WriteFailed(e) => tracing::info!(error = %e, "write failed"),
            Stop::ReadFailed(e) => tracing::info!(error = %e, "session ended"),
        }
    }
}

pub struct Driver {
    timeout: Duration,
    shutdown: Option<watch::Receiver<bool>>,
}

impl Driver {
    /// A driver whose waits last at most `timeout` each (see [`Driver::need_input`]).
    pub fn new(timeout: Duration) -> Self {
        Driver {
            timeout,
            shutdown: None,
        }
    }

    /// Listen to `shutdown` (`true`: the server is shutting down) while commands are read.
    pub fn with_shutdown(mut self, shutdown: watch::Receiver<bool>) -> Self {
        self.shutdown = Some(shutdown);
        self
    }

    /// The machine needs input: write what it queued while reading more, within the default
    /// timeout. `Ok(n)`: `n > 0` octets more in `conn.buf`.
    pub async fn need_input<M: Machine>(
        &mut self,
        conn: &mut Conn,
        m: &mut M,
        input: Input,
    ) -> Result<usize, Stop> {
        let timeout = self.timeout;
        self.need_input_within(conn, m, input, timeout).await
    }

    /// [`Driver::need_input`] with this `timeout` (a client waiting for ATRN's reply, or for
    /// the reply to a message's final dot, waits longer than for others).
    pub async fn need_input_within<M: Machine>(
        &mut self,
        conn: &mut Conn,
        m: &mut M,
        input: Input,
        timeout: Duration,
    ) -> Result<usize, Stop> {
        let size = match input {
            Input::Commands => ReadSize::Commands,
            Input::Data | Input::Replies => ReadSize::Data,
        };
        let read = match self.shutdown.as_mut() {
            Some(rx) if input == Input::Commands => {
                if *rx.borrow_and_update() {
                    None
                } else {
                    tokio::select! {
                        r = conn.exchange(m.output(), size, timeout) => Some(r),
                        // A sender gone (`Err`) means no shutdown is coming.
                        Ok(()) = rx.changed() => None,
                    }
                }
            }
            _ => Some(conn.exchange(m.output(), size, timeout).await),
        };
        match read {
            None => {
                m.shutdown();
                let _ = self.flush(conn, m).await;
                Err(Stop::Shutdown)
            }
            Some(Ok(0)) => Err(Stop::Closed),
            Some(Ok(n)) => Ok(n),
            Some(Err(ExchangeError::Write(e))) => Err(Stop::WriteFailed(e)),
            Some(Err(ExchangeError::Read(e))) => {
                m.abort(&e.to_string());
                let _ = self.flush(conn, m).await;
                Err(Stop::ReadFailed(e))
            }
        }
    }

    /// Write everything unsent and what the machine queued, reading nothing: before a TLS
    /// handshake, a turnaround, the end of the session, or a reply that must leave at once.
    pub async fn flush<M: Machine>(&mut self, conn: &mut Conn, m: &mut M) -> Result<(), ConnError> {
        conn.send(m.output(), self.timeout).await
    }
}
