//! The harness's own SMTP clients, used only where no peer can do the job: a load generator
//! that speaks STARTTLS (smtp-source cannot), a sender of one very large message, a scripted
//! ODMR customer that times ATRN → first MAIL FROM, and a holder of idle connections. They are
//! measuring instruments, not peers under test.
//!
//! Invariants: every read and write has a timeout ([`IO_TIMEOUT`]); the load generator works in
//! lockstep like smtp-source (one command, one reply), so its figures compare with
//! smtp-source's; a reply that is not the expected one ends that session with an error, it is
//! never counted as accepted.

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use rustls_pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub const IO_TIMEOUT: Duration = Duration::from_secs(60);

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A reply: its code and its lines' text joined by `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

impl Reply {
    pub fn is(&self, class: u16) -> bool {
        self.code / 100 == class
    }
}

/// One SMTP connection, plain or (after [`Conn::starttls`]) TLS.
pub struct Conn {
    io: BufReader<Box<dyn Io>>,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> Result<Conn> {
        let s = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("connect to {addr} timed out"))?
            .with_context(|| format!("connect to {addr}"))?;
        s.set_nodelay(true)?;
        Ok(Conn {
            io: BufReader::new(Box::new(s)),
        })
    }

    /// One line without its CRLF.
    pub async fn line(&mut self) -> Result<String> {
        let mut buf = Vec::new();
        let n = tokio::time::timeout(IO_TIMEOUT, self.io.read_until(b'\n', &mut buf))
            .await
            .map_err(|_| anyhow!("no line within {IO_TIMEOUT:?}"))??;
        if n == 0 {
            bail!("connection closed");
        }
        while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            buf.pop();
        }
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// A whole reply (every line of a multi-line one).
    pub async fn reply(&mut self) -> Result<Reply> {
        let mut text = Vec::new();
        loop {
            let l = self.line().await?;
            let code: u16 = l
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| anyhow!("not a reply: {l:?}"))?;
            let last = l.as_bytes().get(3) != Some(&b'-');
            text.push(l.get(4..).unwrap_or("").to_string());
            if last {
                return Ok(Reply {
                    code,
                    text: text.join("\n"),
                });
            }
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        tokio::time::timeout(IO_TIMEOUT, async {
            self.io.write_all(bytes).await?;
            self.io.flush().await
        })
        .await
        .map_err(|_| anyhow!("write timed out"))??;
        Ok(())
    }

    /// Send a command line and read its reply.
    pub async fn cmd(&mut self, line: &str) -> Result<Reply> {
        self.send(format!("{line}\r\n").as_bytes()).await?;
        self.reply().await
    }

    /// Send a command and insist on a reply class.
    pub async fn expect(&mut self, line: &str, class: u16) -> Result<Reply> {
        let r = self.cmd(line).await?;
        if !r.is(class) {
            bail!("{line:?} got {} {}", r.code, r.text);
        }
        Ok(r)
    }

    /// STARTTLS (after EHLO) and the TLS handshake; the caller sends EHLO again.
    pub async fn starttls(mut self, tls: Arc<rustls::ClientConfig>, name: &str) -> Result<Conn> {
        self.expect("STARTTLS", 2).await?;
        if !self.io.buffer().is_empty() {
            bail!("server sent data after its STARTTLS reply");
        }
        let io = self.io.into_inner();
        let name = ServerName::try_from(name.to_string())?;
        let s = tokio::time::timeout(
            IO_TIMEOUT,
            tokio_rustls::TlsConnector::from(tls).connect(name, io),
        )
        .await
        .map_err(|_| anyhow!("TLS handshake timed out"))??;
        Ok(Conn {
            io: BufReader::new(Box::new(s)),
        })
    }
}

/// A message of `size` octets of body (lines of 76 characters) under a few header fields, with
/// CRLF line ends, dot-safe (no line starts with a dot), ending in CRLF.
pub fn message(to: &str, size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: <sender@source.bench.test>\r\nTo: <{to}>\r\nSubject: bench\r\n\
         Message-ID: <bench@source.bench.test>\r\n\r\n"
    )
    .into_bytes();
    let line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcd\r\n";
    let mut left = size;
    while left > 0 {
        let take = left.min(line.len());
        if take < line.len() {
            // The last, shorter line still ends in CRLF.
            m.extend_from_slice(&line[..take.saturating_sub(2)]);
            m.extend_from_slice(b"\r\n");
        } else {
            m.extend_from_slice(line);
        }
        left -= take;
    }
    m
}

// ----- the load generator -----

/// A load: `messages` messages over `sessions` concurrent sessions.
#[derive(Debug, Clone)]
pub struct Load {
    pub sessions: usize,
    pub messages: u64,
    pub size: usize,
    pub to: String,
    /// RFC 2920: MAIL, RCPT and DATA in one write, their replies read together, and each
    /// message's final dot followed in the same write by the next message's MAIL, RCPT and DATA
    /// (§3.1: message content may open a group), as `odmr server` delivers: one round trip per
    /// message (the server must announce PIPELINING). Otherwise lockstep, like smtp-source.
    pub pipelining: bool,
}

#[derive(Debug)]
pub struct LoadResult {
    /// Messages that got a 250 at the end of data.
    pub accepted: u64,
    pub elapsed: Duration,
    /// The first error of each session that ended in one.
    pub errors: Vec<String>,
    /// The run stopped at its time limit.
    pub timed_out: bool,
}

/// Send the load to `addr`, over STARTTLS when `tls` is given, within `limit`.
pub async fn load(
    addr: SocketAddr,
    l: &Load,
    tls: Option<Arc<rustls::ClientConfig>>,
    limit: Duration,
) -> LoadResult {
    let next = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let body = Arc::new(message(&l.to, l.size));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..l.sessions {
        let (next, accepted, body, tls, l) = (
            next.clone(),
            accepted.clone(),
            body.clone(),
            tls.clone(),
            l.clone(),
        );
        tasks.spawn(async move { session(addr, &l, tls, &next, &accepted, &body).await });
    }
    let mut errors = Vec::new();
    let timed_out = tokio::time::timeout(limit, async {
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(format!("{e:#}")),
                Err(e) => errors.push(format!("session task: {e}")),
            }
        }
    })
    .await
    .is_err();
    tasks.abort_all();
    LoadResult {
        accepted: accepted.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        errors,
        timed_out,
    }
}

async fn session(
    addr: SocketAddr,
    l: &Load,
    tls: Option<Arc<rustls::ClientConfig>>,
    next: &AtomicU64,
    accepted: &AtomicU64,
    body: &[u8],
) -> Result<()> {
    let mut c = Conn::connect(addr).await?;
    let greeting = c.reply().await?;
    if !greeting.is(2) {
        bail!("greeting {} {}", greeting.code, greeting.text);
    }
    let mut ehlo = c.expect("EHLO source.bench.test", 2).await?;
    if let Some(tls) = tls {
        c = c.starttls(tls, "localhost").await?;
        ehlo = c.expect("EHLO source.bench.test", 2).await?;
    }
    if l.pipelining && !ehlo.text.lines().any(|x| x.eq_ignore_ascii_case("PIPELINING")) {
        bail!("the server does not announce PIPELINING");
    }
    let envelope = format!(
        "MAIL FROM:<sender@source.bench.test>\r\nRCPT TO:<{}>\r\nDATA\r\n",
        l.to
    );
    if l.pipelining {
        pipelined(&mut c, &envelope, body, l.messages, next, accepted).await?;
        let _ = c.cmd("QUIT").await;
        return Ok(());
    }
    while next.fetch_add(1, Ordering::Relaxed) < l.messages {
        c.expect("MAIL FROM:<sender@source.bench.test>", 2).await?;
        c.expect(&format!("RCPT TO:<{}>", l.to), 2).await?;
        c.expect("DATA", 3).await?;
        c.send(body).await?;
        c.send(b".\r\n").await?;
        let r = c.reply().await?;
        if !r.is(2) {
            bail!("end of data got {} {}", r.code, r.text);
        }
        accepted.fetch_add(1, Ordering::Relaxed);
    }
    let _ = c.cmd("QUIT").await;
    Ok(())
}

/// The pipelined session: envelope; then body, dot and the next envelope in one write, the
/// replies to all of them read together.
async fn pipelined(
    c: &mut Conn,
    envelope: &str,
    body: &[u8],
    messages: u64,
    next: &AtomicU64,
    accepted: &AtomicU64,
) -> Result<()> {
    if next.fetch_add(1, Ordering::Relaxed) >= messages {
        return Ok(());
    }
    let mut out = envelope.as_bytes().to_vec();
    loop {
        if !out.is_empty() {
            c.send(&out).await?;
        }
        for (what, class) in [("MAIL", 2), ("RCPT", 2), ("DATA", 3)] {
            let r = c.reply().await?;
            if !r.is(class) {
                bail!("{what} got {} {}", r.code, r.text);
            }
        }
        let more = next.fetch_add(1, Ordering::Relaxed) < messages;
        out.clear();
        out.extend_from_slice(body);
        out.extend_from_slice(b".\r\n");
        if more {
            out.extend_from_slice(envelope.as_bytes());
        }
        c.send(&out).await?;
        let r = c.reply().await?;
        if !r.is(2) {
            bail!("end of data got {} {}", r.code, r.text);
        }
        accepted.fetch_add(1, Ordering::Relaxed);
        if !more {
            return Ok(());
        }
        // The next envelope is already sent: read its replies at the top, without sending.
        out.clear();
    }
}

// ----- one large message -----

/// Send one message with a body of `size` octets to `to` through `addr`; returns the time from
/// MAIL FROM to the 250 after the data.
pub async fn send_big(addr: SocketAddr, to: &str, size: u64) -> Result<Duration> {
    let mut c = Conn::connect(addr).await?;
    c.reply().await?;
    c.expect("EHLO big.bench.test", 2).await?;
    let started = Instant::now();
    c.expect(&format!("MAIL FROM:<big@source.bench.test> SIZE={size}"), 2)
        .await?;
    c.expect(&format!("RCPT TO:<{to}>"), 2).await?;
    c.expect("DATA", 3).await?;
    c.send(format!("From: <big@source.bench.test>\r\nTo: <{to}>\r\nSubject: big\r\n\r\n").as_bytes())
        .await?;
    // 1 MiB blocks of 76-character lines, so our own memory stays small.
    let block = message_lines(1 << 20);
    let mut left = size;
    while left > 0 {
        let take = left.min(block.len() as u64) as usize;
        if take == block.len() {
            c.send(&block).await?;
        } else {
            c.send(&message_lines(take)).await?;
        }
        left -= take as u64;
    }
    c.send(b".\r\n").await?;
    let r = tokio::time::timeout(Duration::from_secs(600), c.reply())
        .await
        .map_err(|_| anyhow!("no reply after the data"))??;
    if !r.is(2) {
        bail!("end of data got {} {}", r.code, r.text);
    }
    let elapsed = started.elapsed();
    let _ = c.cmd("QUIT").await;
    Ok(elapsed)
}

/// `n` octets of 76-character CRLF lines (the last may be shorter, still CRLF-terminated).
fn message_lines(n: usize) -> Vec<u8> {
    let m = message("x@x", n);
    let start = m
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or(0);
    m[start..].to_vec()
}

// ----- the scripted customer -----

/// One ODMR session: AUTH CRAM-MD5, `ATRN domain`, then play the customer's server until the
/// provider's first MAIL FROM, answer it 421 and close (the mail stays queued for the next
/// round). Returns the time from sending ATRN to reading MAIL FROM, or `None` when the ATRN was
/// answered with anything but 250 (e.g. 451: the lease of the previous round not yet free).
pub async fn atrn_turnaround(
    addr: SocketAddr,
    user: &str,
    password: &str,
    domain: &str,
) -> Result<Option<Duration>> {
    let mut c = Conn::connect(addr).await?;
    c.reply().await?;
    c.expect("EHLO customer.bench.test", 2).await?;
    let challenge = c.expect("AUTH CRAM-MD5", 3).await?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let challenge = b64
        .decode(challenge.text.trim())
        .context("CRAM-MD5 challenge is not base64")?;
    let response = odmr_proto::sasl::cram_md5::client_response(user, password.as_bytes(), &challenge);
    c.expect(&b64.encode(response), 2).await?;
    let sent = Instant::now();
    let r = c.cmd(&format!("ATRN {domain}")).await?;
    if r.code != 250 {
        let _ = c.cmd("QUIT").await;
        return Ok(None);
    }
    // The roles are reversed: we are the server now.
    c.send(b"220 customer.bench.test ready\r\n").await?;
    loop {
        let l = c.line().await?;
        let verb = l.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" | "HELO" => c.send(b"250 customer.bench.test\r\n").await?,
            "MAIL" => {
                let t = sent.elapsed();
                c.send(b"421 4.3.0 bench: measured, closing\r\n").await?;
                return Ok(Some(t));
            }
            "QUIT" => bail!("the provider sent QUIT before any MAIL FROM"),
            _ => c.send(b"250 OK\r\n").await?,
        }
    }
}

// ----- idle connections -----

/// Open `n` connections to `addr` (at most `parallel` opening at once), each read up to the end
/// of its greeting, and keep them. Fails at the first connection refused or not greeted.
pub async fn open_idle(addr: SocketAddr, n: usize, parallel: usize) -> Result<Vec<TcpStream>> {
    let mut out = Vec::with_capacity(n);
    let mut set = tokio::task::JoinSet::new();
    let mut started = 0;
    while out.len() < n {
        while started < n && set.len() < parallel {
            set.spawn(greeted(addr));
            started += 1;
        }
        match set.join_next().await {
            Some(Ok(Ok(s))) => out.push(s),
            Some(Ok(Err(e))) => bail!("idle connection {}: {e:#}", out.len() + 1),
            Some(Err(e)) => bail!("idle connection task: {e}"),
            None => break,
        }
    }
    Ok(out)
}

async fn greeted(addr: SocketAddr) -> Result<TcpStream> {
    use tokio::io::AsyncReadExt;
    let mut s = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("connect timed out"))??;
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !got.ends_with(b"\n") {
        let k = tokio::time::timeout(IO_TIMEOUT, s.read(&mut buf))
            .await
            .map_err(|_| anyhow!("no greeting"))??;
        if k == 0 {
            bail!("closed before its greeting");
        }
        got.extend_from_slice(&buf[..k]);
    }
    if !got.starts_with(b"220") {
        bail!("greeted with {:?}", String::from_utf8_lossy(&got));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_has_the_asked_body_size_and_crlf_lines() {
        for size in [0usize, 1, 2, 3, 77, 78, 79, 1024, 10_000] {
            let m = message("u@x.test", size);
            let body_at = m.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            let body = &m[body_at..];
            assert!(body.len().abs_diff(size) <= 2, "size {size}: body {}", body.len());
            assert!(body.is_empty() || body.ends_with(b"\r\n"), "size {size}");
            assert!(!body.split(|b| *b == b'\n').any(|l| l.starts_with(b".")));
            assert!(!body.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'));
        }
    }

    #[test]
    fn big_message_blocks_are_whole_lines() {
        let b = message_lines(1 << 20);
        assert!(b.len().abs_diff(1 << 20) <= 2);
        assert!(b.ends_with(b"\r\n"));
    }
}
