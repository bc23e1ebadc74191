//! A buffered connection with a timeout on every read and write.
//!
//! Invariants:
//! - The input buffer lives as long as the connection and is never replaced: bytes read but not
//!   yet consumed by one machine are the start of what the next machine reads. That is exactly
//!   what the ODMR turnaround needs (the customer's 220 may arrive with or right after our 250).
//! - Every read and write has a deadline (RFC 5321 §4.5.3.2), so no peer can hang a session.
//! - Reads are bounded in size per call; the machines consume or discard what they read, so the
//!   buffer stays bounded too.
//! - Output handed to [`Conn::exchange`] and not yet written waits in the connection, in order,
//!   ahead of anything written later ([`Conn::send`] writes it first); the connection reads no
//!   more input while more than [`UNSENT_MAX`] octets of it wait, so a peer that sends and never
//!   reads is held to what one read can make us answer.

use super::transcript::Transcript;
use bytes::{BufMut, BytesMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const READ_CHUNK: usize = 64 * 1024;
/// Most read at once while commands are expected ([`Conn::fill_commands`]): what a peer that
/// pipelines and never reads can make us answer at once (EHLO's reply is ~40 times its size,
/// so 512 octets of EHLO make ~20 KiB of replies).
const COMMAND_CHUNK: usize = 512;
/// Most output left unsent while more input is read ([`Conn::exchange`]).
pub const UNSENT_MAX: usize = 4 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("connection already closed")]
    Closed,
    #[error("plaintext arrived after STARTTLS (possible command injection); closing")]
    PlaintextAfterStartTls,
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    #[error("timed out after {0:?} connecting")]
    ConnectTimeout(Duration),
    #[error("timed out after {0:?} waiting for the peer")]
    ReadTimeout(Duration),
    #[error("timed out after {0:?} writing to the peer")]
    WriteTimeout(Duration),
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
}

/// Any byte stream a session can run on: TCP, a Unix socket, and (later) TLS over either.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

pub struct Conn {
    /// `None` only for the moment of a TLS upgrade.
    stream: Option<Box<dyn Stream>>,
    tls: bool,
    /// Write each CRLF-terminated line in its own TLS record (see [`Conn::one_line_per_record`]).
    line_records: bool,
    pub buf: BytesMut,
    /// The peer's address; unspecified for a Unix socket.
    pub peer: SocketAddr,
    /// SHA-256 of the client certificate the peer presented in the TLS handshake (verified
    /// against `[tls] client_ca`), for SASL EXTERNAL.
    pub client_cert: Option<[u8; 32]>,
    /// The debug transcript of the dialogue, when debug logging asks for it.
    transcript: Option<Box<Transcript>>,
    /// Output handed over and not yet written ([`Conn::exchange`]).
    unsent: Vec<u8>,
    /// Octets were written since the last flush.
    unflushed: bool,
}

/// How much one read may bring ([`Conn::exchange`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadSize {
    /// Where commands are expected: at most 512 octets (see [`Conn::fill_commands`]).
    Commands,
    /// Message data or replies: up to 64 KiB.
    Data,
}

impl ReadSize {
    fn limit(self) -> usize {
        match self {
            ReadSize::Commands => COMMAND_CHUNK,
            ReadSize::Data => READ_CHUNK,
        }
    }
}

/// A failed [`Conn::exchange`], by the direction that failed.
#[derive(Debug)]
pub enum ExchangeError {
    /// Writing failed or made no progress within the timeout.
    Write(ConnError),
    /// Reading failed, or nothing arrived within the timeout.
    Read(ConnError),
}

/// What one poll of [`Conn::poll_exchange`] achieved.
enum Progress {
    Wrote,
    Read(usize),
}

impl Conn {
    pub fn new(stream: TcpStream, peer: SocketAddr) -> Self {
        // We batch our own writes (one flush per pipelined group), so Nagle only adds latency.
        let _ = stream.set_nodelay(true);
        Self::from_stream(Box::new(stream), peer)
    }

    pub fn from_stream(stream: Box<dyn Stream>, peer: SocketAddr) -> Self {
        Conn {
            stream: Some(stream),
            tls: false,
            line_records: false,
            buf: BytesMut::with_capacity(COMMAND_CHUNK),
            peer,
            client_cert: None,
            // An accepted connection: the peer is the client (until an ODMR turnaround).
            transcript: Transcript::new(false),
            unsent: Vec::new(),
            unflushed: false,
        }
    }

    /// Connect to `host:port` (TCP) or `unix:/path`, within `timeout`.
    pub async fn connect(target: &str, timeout: Duration) -> Result<Conn, ConnError> {
        let fut = async {
            if let Some(path) = target.strip_prefix("unix:") {
                let s = tokio::net::UnixStream::connect(path).await?;
                let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
                Ok::<_, std::io::Error>(Conn::from_stream(Box::new(s), unspecified))
            } else {
                let s = TcpStream::connect(target).await?;
                let peer = s.peer_addr()?;
                Ok(Conn::new(s, peer))
            }
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => {
                let mut conn = r?;
                // We connected: we are the client (until an ODMR turnaround).
                conn.transcript = Transcript::new(true);
                Ok(conn)
            }
            Err(_) => Err(ConnError::ConnectTimeout(timeout)),
        }
    }

    /// The stream and the bytes read but not yet consumed, for a byte-level splice. `None`
    /// also when output is still unsent (the caller must [`Conn::send`] first).
    pub fn into_parts(self) -> Option<(Box<dyn Stream>, BytesMut)> {
        if !self.unsent.is_empty() {
            return None;
        }
        Some((self.stream?, self.buf))
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Write every line in its own TLS record from now on. fetchmail over implicit TLS waits on
    /// the raw socket after reading one line, so lines sharing a record with it stall until a
    /// timeout (see docs/peers.md); one record per line serves it, at a cost other clients
    /// need not pay.
    pub fn one_line_per_record(&mut self, on: bool) {
        self.line_records = on && self.tls;
    }

    fn stream(&mut self) -> Result<&mut Box<dyn Stream>, ConnError> {
        self.stream.as_mut().ok_or(ConnError::Closed)
    }

    /// The plaintext stream, for a TLS handshake. Refuses (and the caller must close) when
    /// plaintext is still buffered: it arrived after STARTTLS and must never be executed.
    fn take_for_handshake(&mut self) -> Result<Box<dyn Stream>, ConnError> {
        if !self.unsent.is_empty() {
            return Err(ConnError::Closed);
        }
        if !self.buf.is_empty() {
            self.buf.clear();
            return Err(ConnError::PlaintextAfterStartTls);
        }
        self.stream.take().ok_or(ConnError::Closed)
    }

    async fn handshake<S>(
        timeout: Duration,
        fut: impl std::future::Future<Output = std::io::Result<S>>,
    ) -> Result<S, ConnError> {
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(ConnError::Tls(e.to_string())),
            Err(_) => Err(ConnError::ReadTimeout(timeout)),
        }
    }

    /// Server side of STARTTLS or implicit TLS.
    pub async fn accept_tls(
        &mut self,
        acceptor: &tokio_rustls::TlsAcceptor,
        timeout: Duration,
    ) -> Result<(), ConnError> {
        let plain = self.take_for_handshake()?;
        let s = Self::handshake(timeout, acceptor.accept(plain)).await?;
        use sha2::Digest;
        self.client_cert = s
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| sha2::Sha256::digest(c.as_ref()).into());
        self.stream = Some(Box::new(s));
        self.tls = true;
        Ok(())
    }

    /// STARTTLS on a server: send `reply` (the 220 the machine queued), then the handshake.
    pub async fn starttls(
        &mut self,
        reply: &mut Vec<u8>,
        acceptor: &tokio_rustls::TlsAcceptor,
        timeout: Duration,
    ) -> Result<(), ConnError> {
        self.send(reply, timeout).await?;
        self.accept_tls(acceptor, timeout).await
    }

    /// Client side of STARTTLS or implicit TLS.
    pub async fn connect_tls(
        &mut self,
        connector: &tokio_rustls::TlsConnector,
        name: rustls_pki_types::ServerName<'static>,
        timeout: Duration,
    ) -> Result<(), ConnError> {
        let plain = self.take_for_handshake()?;
        let s = Self::handshake(timeout, connector.connect(name, plain)).await?;
        self.stream = Some(Box::new(s));
        self.tls = true;
        Ok(())
    }

    /// Read more input (message data: up to 64 KiB at once). `Ok(0)` means the peer closed
    /// the connection.
    pub async fn fill(&mut self, timeout: Duration) -> Result<usize, ConnError> {
        self.fill_up_to(READ_CHUNK, timeout).await
    }

    /// Read more input where commands are expected: at most 512 octets at once. A machine answers
    /// all the complete commands it is given before its output is written, and a reply can be
    /// forty times its command (EHLO), so what a peer that pipelines and never reads can make
    /// us hold is bounded by what one read brings. A larger pipelined group just takes several
    /// reads.
    pub async fn fill_commands(&mut self, timeout: Duration) -> Result<usize, ConnError> {
        self.fill_up_to(COMMAND_CHUNK, timeout).await
    }

    async fn fill_up_to(&mut self, limit: usize, timeout: Duration) -> Result<usize, ConnError> {
        // `read_buf` reads up to the spare capacity; take what is there and add up to `limit`.
        self.buf.reserve(limit);
        let before = self.buf.len();
        let stream = self.stream.as_mut().ok_or(ConnError::Closed)?;
        let spare = self.buf.capacity() - before;
        let mut limited = (&mut self.buf).limit(spare.min(limit));
        match tokio::time::timeout(timeout, stream.read_buf(&mut limited)).await {
            Ok(r) => {
                let n = r?;
                if let Some(t) = self.transcript.as_mut() {
                    t.received(&self.buf[before..]);
                }
                Ok(n)
            }
            Err(_) => Err(ConnError::ReadTimeout(timeout)),
        }
    }

    /// Write `out` (after the output still unsent, if any) completely and clear it.
    pub async fn send(&mut self, out: &mut Vec<u8>, timeout: Duration) -> Result<(), ConnError> {
        if !self.unsent.is_empty() {
            self.unsent.append(out);
            loop {
                let wrote =
                    tokio::time::timeout(timeout, std::future::poll_fn(|cx| self.poll_write_out(cx))).await;
                match wrote {
                    Err(_) => return Err(ConnError::WriteTimeout(timeout)),
                    Ok(Err(e)) => return Err(e),
                    Ok(Ok(true)) => {}
                    Ok(Ok(false)) => return Ok(()),
                }
            }
        }
        if out.is_empty() {
            return Ok(());
        }
        if let Some(t) = self.transcript.as_mut() {
            t.sent(out);
        }
        let line_records = self.line_records;
        let stream = self.stream()?;
        let write = async {
            if line_records {
                // One write + flush per line: tokio-rustls seals each flush into its own record.
                for line in out.split_inclusive(|&b| b == b'\n') {
                    stream.write_all(line).await?;
                    stream.flush().await?;
                }
                Ok(())
            } else {
                stream.write_all(out).await?;
                stream.flush().await
            }
        };
        let res = tokio::time::timeout(timeout, write).await;
        out.clear();
        match res {
            Ok(r) => Ok(r?),
            Err(_) => Err(ConnError::WriteTimeout(timeout)),
        }
    }

    /// Hand `out` over to be written (after what is still unsent) and clear it; then write
    /// while reading more input, at the same time, until a read brings something. `Ok(0)`: the
    /// peer closed the connection (what was unsent is then written, if it can be). Output may
    /// remain unsent when input arrives: a later exchange or [`Conn::send`] writes it. No read
    /// is made while more than [`UNSENT_MAX`] octets wait. `timeout` is the longest time
    /// without progress either way.
    ///
    /// Cancel-safe: what was written and read before it is dropped is accounted for.
    pub async fn exchange(
        &mut self,
        out: &mut Vec<u8>,
        size: ReadSize,
        timeout: Duration,
    ) -> Result<usize, ExchangeError> {
        self.unsent.append(out);
        loop {
            let step = std::future::poll_fn(|cx| self.poll_exchange(cx, size.limit()));
            match tokio::time::timeout(timeout, step).await {
                Ok(Ok(Progress::Wrote)) => {}
                Ok(Ok(Progress::Read(0))) => {
                    // A peer that half-closed still gets the replies to what it sent.
                    let _ = self.send(&mut Vec::new(), timeout).await;
                    return Ok(0);
                }
                Ok(Ok(Progress::Read(n))) => return Ok(n),
                Ok(Err(e)) => return Err(e),
                Err(_) if self.unsent.is_empty() && !self.unflushed => {
                    return Err(ExchangeError::Read(ConnError::ReadTimeout(timeout)))
                }
                Err(_) => return Err(ExchangeError::Write(ConnError::WriteTimeout(timeout))),
            }
        }
    }

    /// Drop the output not yet written: after a failed write, nothing more reaches the peer.
    pub fn discard_unsent(&mut self) {
        self.unsent.clear();
        self.unflushed = false;
    }

    /// Write (or flush) some of the unsent output: `Ok(true)` on progress, `Ok(false)` once
    /// everything is written and flushed.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, ConnError>> {
        let Some(stream) = self.stream.as_mut() else {
            return Poll::Ready(Err(ConnError::Closed));
        };
        if self.unflushed {
            // With one record per line, each line is flushed before the next is written.
            match Pin::new(&mut **stream).poll_flush(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending => return Poll::Pending,
            }
            self.unflushed = false;
            return Poll::Ready(Ok(true));
        }
        if self.unsent.is_empty() {
            return Poll::Ready(Ok(false));
        }
        let end = if self.line_records {
            self.unsent
                .iter()
                .position(|&b| b == b'\n')
                .map_or(self.unsent.len(), |i| i + 1)
        } else {
            self.unsent.len()
        };
        let n = match Pin::new(&mut **stream).poll_write(cx, &self.unsent[..end]) {
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
            Poll::Pending => return Poll::Pending,
        };
        if n == 0 {
            return Poll::Ready(Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into()));
        }
        if let Some(t) = self.transcript.as_mut() {
            t.sent(&self.unsent[..n]);
        }
        self.unflushed = self.unsent[n - 1] == b'\n' && self.line_records || n == self.unsent.len();
        self.unsent.drain(..n);
        Poll::Ready(Ok(true))
    }

    fn poll_exchange(&mut self, cx: &mut Context<'_>, limit: usize) -> Poll<Result<Progress, ExchangeError>> {
        match self.poll_write_out(cx) {
            Poll::Ready(Ok(true)) => return Poll::Ready(Ok(Progress::Wrote)),
            Poll::Ready(Err(e)) => return Poll::Ready(Err(ExchangeError::Write(e))),
            Poll::Ready(Ok(false)) | Poll::Pending => {}
        }
        if self.unsent.len() > UNSENT_MAX {
            // Only the write can make room: its waker is registered.
            return Poll::Pending;
        }
        let Some(stream) = self.stream.as_mut() else {
            return Poll::Ready(Err(ExchangeError::Read(ConnError::Closed)));
        };
        let before = self.buf.len();
        self.buf.resize(before + limit, 0);
        let mut rb = tokio::io::ReadBuf::new(&mut self.buf[before..]);
        let polled = Pin::new(&mut **stream).poll_read(cx, &mut rb);
        let n = rb.filled().len();
        self.buf.truncate(before + n);
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(ExchangeError::Read(e.into()))),
            Poll::Ready(Ok(())) => {
                if let Some(t) = self.transcript.as_mut() {
                    t.received(&self.buf[before..]);
                }
                Poll::Ready(Ok(Progress::Read(n)))
            }
        }
    }

    pub async fn shutdown(&mut self) {
        if let Some(s) = self.stream.as_mut() {
            let _ = tokio::time::timeout(Duration::from_secs(5), s.shutdown()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connection over an in-memory pipe holding at most `capacity` octets each way, and the
    /// peer's end.
    fn pair(capacity: usize) -> (Conn, tokio::io::DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(capacity);
        let peer = SocketAddr::from(([192, 0, 2, 1], 25));
        (Conn::from_stream(Box::new(ours), peer), theirs)
    }

    #[tokio::test]
    async fn exchange_writes_the_output_and_reads_what_arrives() {
        let (mut conn, mut peer) = pair(64 * 1024);
        peer.write_all(b"EHLO x\r\n").await.unwrap();
        let mut out = b"220 ready\r\n".to_vec();
        let n = conn
            .exchange(&mut out, ReadSize::Commands, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!((n, &conn.buf[..]), (8, &b"EHLO x\r\n"[..]));
        assert!(out.is_empty(), "the output was taken");
        // Whatever is still unsent goes out with the next write; here all of it already did.
        conn.send(&mut Vec::new(), Duration::from_secs(5)).await.unwrap();
        let mut got = [0u8; 11];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"220 ready\r\n");
    }

    /// A peer that sends and never reads: with more than UNSENT_MAX octets waiting, nothing more
    /// is read (the peer's commands stay in the pipe), and the stalled write ends the exchange
    /// as a write failure once the timeout passes without progress.
    #[tokio::test]
    async fn no_reads_while_too_much_output_waits_for_a_peer_that_never_reads() {
        let (mut conn, mut peer) = pair(1024);
        peer.write_all(b"EHLO x\r\n").await.unwrap();
        let mut out = vec![b'x'; UNSENT_MAX * 4];
        let r = conn
            .exchange(&mut out, ReadSize::Commands, Duration::from_millis(200))
            .await;
        assert!(
            matches!(r, Err(ExchangeError::Write(ConnError::WriteTimeout(_)))),
            "{r:?}"
        );
        assert!(
            conn.buf.is_empty(),
            "read {:?} while the peer read nothing",
            conn.buf
        );
    }

    /// Commands are read at most 512 octets at a time, message data up to 64 KiB.
    #[tokio::test]
    async fn command_reads_are_small_data_reads_large() {
        let (mut conn, mut peer) = pair(256 * 1024);
        peer.write_all(&vec![b'a'; 100 * 1024]).await.unwrap();
        let n = conn
            .exchange(&mut Vec::new(), ReadSize::Commands, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(n <= COMMAND_CHUNK, "{n}");
        let m = conn
            .exchange(&mut Vec::new(), ReadSize::Data, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(m > COMMAND_CHUNK && m <= READ_CHUNK, "{m}");
    }

    /// Nothing to write and nothing arriving: a read timeout, not a write one.
    #[tokio::test]
    async fn silence_is_a_read_timeout() {
        let (mut conn, _peer) = pair(1024);
        let r = conn
            .exchange(&mut Vec::new(), ReadSize::Commands, Duration::from_millis(100))
            .await;
        assert!(
            matches!(r, Err(ExchangeError::Read(ConnError::ReadTimeout(_)))),
            "{r:?}"
        );
    }
}
