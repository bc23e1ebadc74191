//! A buffered connection with a timeout on every read and write.
//!
//! Invariants:
//! - The input buffer lives as long as the connection and is never replaced: bytes read but not
//!   yet consumed by one machine are the start of what the next machine reads. That is exactly
//!   what the ODMR turnaround needs (the customer's 220 may arrive with or right after our 250).
//! - Every read and write has a deadline (RFC 5321 §4.5.3.2), so no peer can hang a session.
//! - Reads are bounded in size per call; the machines consume or discard what they read, so the
//!   buffer stays bounded too.

use bytes::BytesMut;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const READ_CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("timed out after {0:?} waiting for the peer")]
    ReadTimeout(Duration),
    #[error("timed out after {0:?} writing to the peer")]
    WriteTimeout(Duration),
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
}

pub struct Conn {
    stream: TcpStream,
    pub buf: BytesMut,
    pub peer: SocketAddr,
}

impl Conn {
    pub fn new(stream: TcpStream, peer: SocketAddr) -> Self {
        // We batch our own writes (one flush per pipelined group), so Nagle only adds latency.
        let _ = stream.set_nodelay(true);
        Conn {
            stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
            peer,
        }
    }

    /// Read more input. `Ok(0)` means the peer closed the connection.
    pub async fn fill(&mut self, timeout: Duration) -> Result<usize, ConnError> {
        self.buf.reserve(READ_CHUNK);
        match tokio::time::timeout(timeout, self.stream.read_buf(&mut self.buf)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(ConnError::ReadTimeout(timeout)),
        }
    }

    /// Write `out` completely and clear it.
    pub async fn send(&mut self, out: &mut Vec<u8>, timeout: Duration) -> Result<(), ConnError> {
        if out.is_empty() {
            return Ok(());
        }
        let res = tokio::time::timeout(timeout, self.stream.write_all(out)).await;
        out.clear();
        match res {
            Ok(r) => Ok(r?),
            Err(_) => Err(ConnError::WriteTimeout(timeout)),
        }
    }

    pub async fn shutdown(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.stream.shutdown()).await;
    }
}
