//! A buffered connection with a timeout on every read and write.
//!
//! Invariants:
//! - The input buffer lives as long as the connection and is never replaced: bytes read but not
//!   yet consumed by one machine are the start of what the next machine reads. That is exactly
//!   what the ODMR turnaround needs (the customer's 220 may arrive with or right after our 250).
//! - Every read and write has a deadline (RFC 5321 §4.5.3.2), so no peer can hang a session.
//! - Reads are bounded in size per call; the machines consume or discard what they read, so the
//!   buffer stays bounded too.

use super::transcript::Transcript;
use bytes::{BufMut, BytesMut};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const READ_CHUNK: usize = 64 * 1024;
/// Most read at once while commands are expected ([`Conn::fill_commands`]).
const COMMAND_CHUNK: usize = 1024;

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

    /// The stream and the bytes read but not yet consumed, for a byte-level splice.
    pub fn into_parts(self) -> Option<(Box<dyn Stream>, BytesMut)> {
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

    /// Read more input where commands are expected: at most 1 KiB at once. A machine answers
    /// all the complete commands it is given before its output is written, and a reply can be
    /// forty times its command (EHLO), so what a peer that pipelines and never reads can make
    /// us hold is bounded by what one read brings. 1 KiB holds any pipelined group a real
    /// client sends.
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

    /// Write `out` completely and clear it.
    pub async fn send(&mut self, out: &mut Vec<u8>, timeout: Duration) -> Result<(), ConnError> {
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

    pub async fn shutdown(&mut self) {
        if let Some(s) = self.stream.as_mut() {
            let _ = tokio::time::timeout(Duration::from_secs(5), s.shutdown()).await;
        }
    }
}
