//! The Maildir sink: each recipient's copy is written to `tmp/`, fsync'd, and only then renamed
//! into `new/` (and `new/` fsync'd), so a `250` to the provider always names a file that survives
//! a crash, and a reader never sees a half-written message.
//!
//! Invariants, and why:
//! - The Maildir path comes from an operator's template with per-recipient placeholders. The
//!   substituted values come from the network, so each must be one safe path component (no `/`,
//!   no leading `.`, no control characters, not empty): a recipient can never name a directory
//!   outside the template's shape. An unsafe address is refused at RCPT with `550 5.1.3`.
//! - One temporary file per recipient, because each copy carries its own `Delivered-To:`.
//!   Nothing is kept in memory beyond one bounded write buffer shared by all copies, so a 50 MiB
//!   message costs 64 KiB of memory however many recipients it has.
//! - Every temporary file is owned by a [`TmpFile`] whose `Drop` unlinks it unless it was
//!   delivered: a reset, an error, a dropped connection or a cancelled future cannot leave
//!   litter in `tmp/`.
//! - All or nothing per transaction: the provider gets one reply for all recipients, so if any
//!   copy cannot be made durable the copies already renamed are taken back out of `new/` and the
//!   reply is `451` (a retry may then duplicate a copy a reader already moved, never lose one).
//! - Local trouble (disk full, permissions, a path that is not a directory) is an operator's
//!   problem and answers `4xx`, so mail stays queued at the provider instead of bouncing.
//! - Blocking file-system calls run on tokio's blocking pool, never on the session's task.
//! - Files have LF line ends unless `line_ends = "crlf"` (see [`super::line_ends`]), the added
//!   headers included; `,S=` in the name is the size of the file as written.

use super::line_ends::LineEnder;
use super::{SinkCaps, SinkError};
use crate::client::config::LineEnds;
use odmr_proto::reply::Reply;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// Most recipients in one transaction (advertised; the SMTP layer answers 452 beyond it).
pub const MAX_RECIPIENTS: usize = 100;
/// Body bytes gathered before one write to every copy.
const FLUSH_AT: usize = 64 * 1024;
/// Longest value we put in one path component (NAME_MAX on common file systems).
const MAX_COMPONENT: usize = 255;
const EXAMPLE: &str = "maildir = \"/var/mail/{domain}/{local}\"";

/// A template split into literal text and placeholders. Shared with the command sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Part<K> {
    Lit(String),
    Key(K),
}

/// Split `template` at `{name}` placeholders, resolving each name with `lookup`. The error
/// says what is wrong, for the caller to wrap with the configuration key and an example.
pub(super) fn parse_template<K>(
    template: &str,
    lookup: impl Fn(&str) -> Option<K>,
) -> Result<Vec<Part<K>>, String> {
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        lit.push_str(&rest[..i]);
        if rest[i..].starts_with('}') {
            return Err(format!("a '}}' without its '{{' in {template:?}"));
        }
        let after = &rest[i + 1..];
        let Some(end) = after.find(['}', '{']).filter(|&e| after[e..].starts_with('}')) else {
            return Err(format!("a '{{' without its '}}' in {template:?}"));
        };
        let name = &after[..end];
        let Some(key) = lookup(name) else {
            return Err(format!("unknown placeholder {{{name}}} in {template:?}"));
        };
        if !lit.is_empty() {
            parts.push(Part::Lit(std::mem::take(&mut lit)));
        }
        parts.push(Part::Key(key));
        rest = &after[end + 1..];
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        parts.push(Part::Lit(lit));
    }
    Ok(parts)
}

/// `local@domain` → (local, domain), at the last `@` (a quoted local part may hold one).
/// An address without `@` (`postmaster`) has an empty domain.
pub(super) fn split_address(address: &str) -> (&str, &str) {
    address.rsplit_once('@').unwrap_or((address, ""))
}

/// True if `s` holds a character that must never reach a header, a path or an argv.
pub(super) fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Domain,
    Local,
    Address,
}

impl Key {
    fn lookup(name: &str) -> Option<Key> {
        match name {
            "domain" => Some(Key::Domain),
            "local" => Some(Key::Local),
            "address" => Some(Key::Address),
            _ => None,
        }
    }
    fn what(self) -> &'static str {
        match self {
            Key::Domain => "domain",
            Key::Local => "local part",
            Key::Address => "address",
        }
    }
}

/// Why a value cannot be one path component, or `None` if it can.
fn component_problem(value: &str) -> Option<&'static str> {
    if value.is_empty() {
        Some("is empty")
    } else if value.starts_with('.') {
        Some("starts with a dot")
    } else if value.contains('/') {
        Some("contains a slash")
    } else if has_control(value) {
        Some("contains a control character")
    } else if value.len() > MAX_COMPONENT {
        Some("is too long")
    } else {
        None
    }
}

/// One recipient accepted at RCPT, with its Maildir.
#[derive(Debug, Clone)]
struct Rcpt {
    address: String,
    dir: PathBuf,
}

/// A copy being written in `tmp/`. Unlinked on drop unless delivered.
struct TmpFile {
    file: Option<File>,
    path: PathBuf,
    /// The Maildir (the parent of `tmp/` and `new/`).
    dir: PathBuf,
    name: String,
    recipient: String,
    written: u64,
    delivered: bool,
}

impl Drop for TmpFile {
    fn drop(&mut self) {
        if self.delivered {
            return;
        }
        self.file = None;
        match std::fs::remove_file(&self.path) {
            Ok(()) => tracing::debug!(path = %self.path.display(), "removed temporary Maildir file"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %self.path.display(), error = %e,
                "cannot remove temporary Maildir file"),
        }
    }
}

/// What went wrong while the body arrived; reported by `end`.
#[derive(Debug)]
enum Fault {
    TooBig,
    Io(FsError),
}

/// A file-system failure, with the path it concerns: local trouble, answered `451`.
#[derive(Debug, thiserror::Error)]
pub(super) enum FsError {
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
    #[error("{}: already exists", .0.display())]
    Exists(PathBuf),
    #[error("{}: already closed", .0.display())]
    Closed(PathBuf),
    #[error("file-system task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// `map_err` for an io::Error about `path`.
fn at(path: &Path) -> impl FnOnce(io::Error) -> FsError + '_ {
    move |error| FsError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// Delivers into one Maildir per recipient, chosen by a path template.
pub struct Maildir {
    template: Vec<Part<Key>>,
    max_size: u64,
    /// The line ends of the files ([`LineEnds::Lf`] unless set after `new`).
    pub line_ends: LineEnds,
    /// This message's conversion, started at DATA.
    lines: LineEnder,
    sender: Option<String>,
    rcpts: Vec<Rcpt>,
    in_data: bool,
    copies: Vec<TmpFile>,
    pending: Vec<u8>,
    size: u64,
    fault: Option<Fault>,
}

impl Maildir {
    /// `template` is an absolute path with `{domain}`, `{local}` or `{address}` placeholders,
    /// filled in per recipient; `max_size` 0 means no limit.
    pub fn new(template: &str, max_size: u64) -> Result<Self, SinkError> {
        let invalid = |problem: String, fix: String| SinkError::Invalid {
            key: "maildir",
            value: template.to_string(),
            problem,
            fix,
        };
        let parts = parse_template(template, Key::lookup).map_err(|e| {
            invalid(
                e,
                format!("the placeholders are {{domain}}, {{local}} and {{address}}, e.g. {EXAMPLE}"),
            )
        })?;
        if !template.starts_with('/') {
            return Err(invalid(
                "not an absolute path: where mail lands would depend on the directory the client \
                 was started in"
                    .into(),
                format!("write the whole path, e.g. {EXAMPLE}"),
            ));
        }
        if has_control(template) {
            return Err(invalid(
                "contains a control character".into(),
                format!("e.g. {EXAMPLE}"),
            ));
        }
        Ok(Maildir {
            template: parts,
            max_size,
            line_ends: LineEnds::Lf,
            lines: LineEnder::new(LineEnds::Lf),
            sender: None,
            rcpts: Vec::new(),
            in_data: false,
            copies: Vec::new(),
            pending: Vec::new(),
            size: 0,
            fault: None,
        })
    }

    pub fn caps(&self) -> SinkCaps {
        SinkCaps {
            max_size: self.max_size,
            eight_bit_mime: true,
            smtputf8: true,
            max_recipients: MAX_RECIPIENTS,
        }
    }

    pub async fn mail(&mut self, from: &str, _params: &str) -> Result<(), Reply> {
        self.clear();
        if has_control(from) {
            return Err(Reply::new(
                501,
                "5.1.7",
                "control character in the sender address",
            ));
        }
        self.sender = Some(from.to_string());
        Ok(())
    }

    pub async fn rcpt(&mut self, to: &str, _params: &str) -> Result<(), Reply> {
        if self.sender.is_none() || self.in_data {
            return Err(Reply::new(503, "5.5.1", "MAIL first"));
        }
        let dir = self.maildir_for(to).inspect_err(|r| {
            tracing::warn!(recipient = to, reply = %r, "recipient refused: unsafe for a Maildir path");
        })?;
        if self.rcpts.iter().any(|r| r.address == to) {
            return Ok(());
        }
        if self.rcpts.len() >= MAX_RECIPIENTS {
            return Err(Reply::new(452, "4.5.3", "too many recipients"));
        }
        let d = dir.clone();
        match blocking(move || ensure_maildir(&d)).await {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(recipient = to, path = %dir.display(), error = %e,
                    "cannot create the Maildir");
                return Err(Reply::new(
                    451,
                    "4.3.0",
                    format!("cannot create the Maildir: {e}"),
                ));
            }
        }
        tracing::debug!(recipient = to, path = %dir.display(), "recipient accepted");
        self.rcpts.push(Rcpt {
            address: to.to_string(),
            dir,
        });
        Ok(())
    }

    pub async fn data(&mut self) -> Result<(), Reply> {
        let Some(sender) = self.sender.clone() else {
            return Err(Reply::new(503, "5.5.1", "MAIL first"));
        };
        if self.rcpts.is_empty() {
            return Err(Reply::new(503, "5.5.1", "no valid recipients"));
        }
        if self.in_data {
            return Err(Reply::new(503, "5.5.1", "DATA already started"));
        }
        let rcpts = self.rcpts.clone();
        let s = sender.clone();
        let lines = LineEnder::new(self.line_ends);
        let eol = lines.eol();
        match blocking(move || open_copies(&s, &rcpts, eol)).await {
            Ok(copies) => {
                self.copies = copies;
                self.lines = lines;
                self.in_data = true;
                self.size = 0;
                self.fault = None;
                Ok(())
            }
            Err(e) => {
                tracing::warn!(sender, error = %e, "cannot start writing to the Maildir");
                Err(Reply::new(
                    451,
                    "4.3.0",
                    format!("cannot write to the Maildir: {e}"),
                ))
            }
        }
    }

    pub async fn body(&mut self, chunk: &[u8]) {
        if !self.in_data || self.fault.is_some() {
            return;
        }
        self.size = self.size.saturating_add(chunk.len() as u64);
        if self.max_size > 0 && self.size > self.max_size {
            tracing::info!(
                sender = self.sender.as_deref().unwrap_or(""),
                max_size = self.max_size,
                "message too big for the Maildir sink; discarding"
            );
            self.fault = Some(Fault::TooBig);
            self.discard();
            return;
        }
        self.lines.push(chunk, &mut self.pending);
        if self.pending.len() >= FLUSH_AT {
            self.flush().await;
        }
    }

    pub async fn end(&mut self) -> Reply {
        if !self.in_data {
            self.clear();
            return Reply::new(451, "4.3.0", "no message in progress");
        }
        if self.fault.is_none() {
            self.lines.finish(&mut self.pending);
            if !self.pending.is_empty() {
                self.flush().await;
            }
        }
        let sender = self.sender.clone().unwrap_or_default();
        let reply = match self.fault.take() {
            Some(Fault::TooBig) => Reply::new(
                552,
                "5.3.4",
                format!("message exceeds the maximum size of {} octets", self.max_size),
            ),
            Some(Fault::Io(e)) => Reply::new(451, "4.3.0", format!("cannot write to the Maildir: {e}")),
            None => {
                let copies = std::mem::take(&mut self.copies);
                match blocking(move || commit(copies)).await {
                    Ok(done) => {
                        for (recipient, path, size) in &done {
                            tracing::info!(sender, recipient, path = %path.display(), size,
                                "delivered to Maildir");
                        }
                        Reply::new(250, "2.0.0", "delivered to Maildir")
                    }
                    Err(e) => {
                        tracing::warn!(sender, error = %e, "Maildir delivery failed; nothing delivered");
                        Reply::new(451, "4.3.0", format!("cannot write to the Maildir: {e}"))
                    }
                }
            }
        };
        self.clear();
        reply
    }

    pub async fn reset(&mut self) {
        self.clear();
    }

    /// Forget the transaction; dropping the copies unlinks their temporary files.
    fn clear(&mut self) {
        self.sender = None;
        self.rcpts.clear();
        self.in_data = false;
        self.copies.clear();
        self.pending = Vec::new();
        self.size = 0;
        self.fault = None;
    }

    /// Drop the copies (and their files) but stay in DATA, so `end` can report the fault.
    fn discard(&mut self) {
        self.copies.clear();
        self.pending = Vec::new();
    }

    /// Write the gathered body bytes to every copy.
    async fn flush(&mut self) {
        let buf = std::mem::take(&mut self.pending);
        let mut copies = std::mem::take(&mut self.copies);
        let result = tokio::task::spawn_blocking(move || {
            let r = write_all(&mut copies, &buf);
            (copies, buf, r)
        })
        .await;
        let e = match result {
            Ok((copies, mut buf, r)) => {
                self.copies = copies;
                buf.clear();
                self.pending = buf;
                match r {
                    Ok(()) => return,
                    Err(e) => e,
                }
            }
            Err(e) => FsError::Task(e),
        };
        tracing::warn!(sender = self.sender.as_deref().unwrap_or(""), error = %e,
            "cannot write to the Maildir; the message will be refused with 451");
        self.fault = Some(Fault::Io(e));
        self.discard();
    }

    /// The Maildir for `to`, or the reply refusing it.
    fn maildir_for(&self, to: &str) -> Result<PathBuf, Reply> {
        let refuse = |what: &str, why: &str| {
            Reply::new(
                550,
                "5.1.3",
                format!("cannot deliver to <{to}>: the {what} {why}"),
            )
        };
        if has_control(to) {
            return Err(refuse("address", "contains a control character"));
        }
        let (local, domain) = split_address(to);
        let domain = domain.to_lowercase();
        let address = if domain.is_empty() {
            local.to_string()
        } else {
            format!("{local}@{domain}")
        };
        let mut path = String::new();
        for part in &self.template {
            match part {
                Part::Lit(s) => path.push_str(s),
                Part::Key(k) => {
                    let v = match k {
                        Key::Domain => domain.as_str(),
                        Key::Local => local,
                        Key::Address => address.as_str(),
                    };
                    if let Some(why) = component_problem(v) {
                        return Err(refuse(k.what(), why));
                    }
                    path.push_str(v);
                }
            }
        }
        // Belt and braces: whatever the template's literal text, the result has no `.`/`..`
        // component made by a substitution.
        if path.split('/').any(|c| c == "." || c == "..") {
            return Err(refuse("address", "makes an unsafe path"));
        }
        Ok(PathBuf::from(path))
    }
}

/// Run blocking file-system work off the session's task.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FsError> + Send + 'static,
) -> Result<T, FsError> {
    tokio::task::spawn_blocking(f).await?
}

/// Create `dir` and its `tmp`, `new` and `cur` (mode 0700) where missing.
fn ensure_maildir(dir: &Path) -> Result<(), FsError> {
    let mut b = DirBuilder::new();
    b.recursive(true).mode(0o700);
    for d in [
        dir.to_path_buf(),
        dir.join("tmp"),
        dir.join("new"),
        dir.join("cur"),
    ] {
        b.create(&d).map_err(at(&d))?;
    }
    Ok(())
}

/// Open one temporary file per recipient and write its delivery headers, each line ended with
/// `eol`.
fn open_copies(sender: &str, rcpts: &[Rcpt], eol: &str) -> Result<Vec<TmpFile>, FsError> {
    let mut copies = Vec::with_capacity(rcpts.len());
    for r in rcpts {
        let name = unique_name();
        let path = r.dir.join("tmp").join(&name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(at(&path))?;
        let mut copy = TmpFile {
            file: Some(file),
            path,
            dir: r.dir.clone(),
            name,
            recipient: r.address.clone(),
            written: 0,
            delivered: false,
        };
        let header = format!("Return-Path: <{sender}>{eol}Delivered-To: {}{eol}", r.address);
        copy.write(header.as_bytes())?;
        copies.push(copy);
    }
    Ok(copies)
}

impl TmpFile {
    fn write(&mut self, buf: &[u8]) -> Result<(), FsError> {
        let Some(f) = self.file.as_mut() else {
            return Err(FsError::Closed(self.path.clone()));
        };
        f.write_all(buf).map_err(at(&self.path))?;
        self.written += buf.len() as u64;
        Ok(())
    }
}

fn write_all(copies: &mut [TmpFile], buf: &[u8]) -> Result<(), FsError> {
    copies.iter_mut().try_for_each(|c| c.write(buf))
}

/// Make every copy durable, then move each into `new/`; on any failure take back what was
/// moved, so the transaction is all or nothing. Returns (recipient, path, size) per copy.
fn commit(mut copies: Vec<TmpFile>) -> Result<Vec<(String, PathBuf, u64)>, FsError> {
    for c in &mut copies {
        let f = c.file.take();
        if let Some(f) = f {
            f.sync_all().map_err(at(&c.path))?;
        }
    }
    let mut moved: Vec<PathBuf> = Vec::with_capacity(copies.len());
    let rollback = |moved: &[PathBuf]| {
        for p in moved {
            if let Err(e) = std::fs::remove_file(p) {
                tracing::error!(path = %p.display(), error = %e,
                    "cannot take back a Maildir copy after a failed delivery; it may be delivered twice");
            }
        }
    };
    for c in &copies {
        let target = c.dir.join("new").join(format!("{},S={}", c.name, c.written));
        let r = if target.symlink_metadata().is_ok() {
            Err(FsError::Exists(target.clone()))
        } else {
            std::fs::rename(&c.path, &target).map_err(at(&target))
        };
        if let Err(e) = r {
            rollback(&moved);
            return Err(e);
        }
        moved.push(target);
    }
    let mut dirs: Vec<PathBuf> = copies.iter().map(|c| c.dir.join("new")).collect();
    dirs.sort();
    dirs.dedup();
    for d in &dirs {
        if let Err(e) = File::open(d).and_then(|f| f.sync_all()) {
            rollback(&moved);
            return Err(at(d)(e));
        }
    }
    let mut done = Vec::with_capacity(copies.len());
    for (c, path) in copies.iter_mut().zip(moved) {
        c.delivered = true;
        done.push((c.recipient.clone(), path, c.written));
    }
    Ok(done)
}

/// A file name unique to this host: `<secs>.M<micros>P<pid>Q<counter>.<hostname>` (the Maildir
/// specification's form; the counter makes it unique within the process).
fn unique_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    format!(
        "{}.M{}P{}Q{}.{}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        hostname()
    )
}

/// This host's name as Maildir file names may carry it: `/`, `:` and `,` escaped as octal.
fn hostname() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        let mut buf = [0u8; 256];
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call; we read
        // only up to the first NUL (or the whole buffer if the name was truncated).
        let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        let raw = if r == 0 {
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            String::from_utf8_lossy(&buf[..end]).into_owned()
        } else {
            String::new()
        };
        let mut out = String::new();
        for ch in raw.chars() {
            match ch {
                '/' => out.push_str("\\057"),
                ':' => out.push_str("\\072"),
                ',' => out.push_str("\\054"),
                c if c.is_ascii_graphic() => out.push(c),
                _ => {}
            }
        }
        if out.is_empty() {
            out.push_str("localhost");
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn template(root: &Path) -> String {
        format!("{}/{{domain}}/{{local}}", root.display())
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        };
        v.sort();
        v
    }

    /// A body with 8-bit octets, a 998-octet line and more than one flush's worth of bytes.
    fn sample_body() -> Vec<u8> {
        let mut b = b"Received: from provider by customer; Thu, 1 Jan 2026 00:00:00 +0000\r\n".to_vec();
        b.extend_from_slice(b"Subject: caf\xc3\xa9 \xff\xfe\r\n\r\n");
        b.extend(std::iter::repeat_n(b'x', 998));
        b.extend_from_slice(b"\r\n");
        for i in 0..3000 {
            b.extend_from_slice(format!("line {i} ").as_bytes());
            b.extend_from_slice(b"\x80\x81 \xe2\x82\xac\r\n");
        }
        b.extend_from_slice(b".leading dot already unstuffed\r\n");
        b
    }

    /// CRLF pairs to LF, octet by octet: what the default line ends make of a body.
    fn lf(crlf: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(crlf.len());
        for (i, &b) in crlf.iter().enumerate() {
            if !(b == b'\r' && crlf.get(i + 1) == Some(&b'\n')) {
                out.push(b);
            }
        }
        out
    }

    async fn send(m: &mut Maildir, from: &str, to: &[&str], body: &[u8]) -> Reply {
        m.mail(from, "BODY=8BITMIME").await.unwrap();
        for t in to {
            m.rcpt(t, "").await.unwrap();
        }
        m.data().await.unwrap();
        for chunk in body.chunks(7001) {
            m.body(chunk).await;
        }
        m.end().await
    }

    #[tokio::test]
    async fn two_recipients_in_two_domains() {
        let root = tempfile::tempdir().unwrap();
        let mut m = Maildir::new(&template(root.path()), 0).unwrap();
        let body = sample_body();
        let r = send(
            &mut m,
            "sender@origin.example",
            &["alice@Example.ORG", "bob@other.example"],
            &body,
        )
        .await;
        assert_eq!(r.code, 250, "{r}");
        assert_eq!(r.status.as_deref(), Some("2.0.0"));

        for (dir, rcpt) in [
            ("example.org/alice", "alice@Example.ORG"),
            ("other.example/bob", "bob@other.example"),
        ] {
            let md = root.path().join(dir);
            for sub in ["tmp", "new", "cur"] {
                let meta = std::fs::metadata(md.join(sub)).unwrap();
                assert!(meta.is_dir());
                assert_eq!(meta.permissions().mode() & 0o777, 0o700);
            }
            assert!(files(&md.join("tmp")).is_empty());
            assert!(files(&md.join("cur")).is_empty());
            let new = files(&md.join("new"));
            assert_eq!(new.len(), 1, "{new:?}");
            let got = std::fs::read(&new[0]).unwrap();
            let mut want =
                format!("Return-Path: <sender@origin.example>\nDelivered-To: {rcpt}\n").into_bytes();
            want.extend_from_slice(&lf(&body));
            assert!(got == want, "content differs for {rcpt}");
            let name = new[0].file_name().unwrap().to_str().unwrap().to_string();
            assert!(name.ends_with(&format!(",S={}", want.len())), "{name}");
            let (secs, rest) = name.split_once(".M").unwrap();
            assert!(secs.parse::<u64>().is_ok(), "{name}");
            assert!(rest.contains(&format!("P{}Q", std::process::id())), "{name}");
            assert!(!name.contains('/') && !name.contains(':'), "{name}");
        }
    }

    #[tokio::test]
    async fn next_transaction_after_end_and_null_sender() {
        let root = tempfile::tempdir().unwrap();
        let mut m = Maildir::new(&format!("{}/{{address}}", root.path().display()), 0).unwrap();
        assert_eq!(send(&mut m, "", &["a@x.example"], b"one\r\n").await.code, 250);
        assert_eq!(
            send(&mut m, "s@y.example", &["a@X.example"], b"two\r\n")
                .await
                .code,
            250
        );
        let new = files(&root.path().join("a@x.example/new"));
        assert_eq!(new.len(), 2);
        let all: Vec<Vec<u8>> = new.iter().map(|p| std::fs::read(p).unwrap()).collect();
        assert!(all.contains(&b"Return-Path: <>\nDelivered-To: a@x.example\none\n".to_vec()));
        let two = b"Return-Path: <s@y.example>\nDelivered-To: a@X.example\ntwo\n";
        assert!(all.contains(&two.to_vec()));
    }

    /// LF by default, the headers we add included, with a chunk boundary between a CR and its
    /// LF and a bare CR kept; `line_ends = "crlf"` writes the bytes as received.
    #[tokio::test]
    async fn line_ends_are_lf_unless_crlf_is_asked_for() {
        let chunks: [&[u8]; 4] = [b"Subject: a\r", b"\n\r\nbare\rCR, bare\nLF\r", b"\n\xff\r", b"\n"];
        let cases = [
            (
                LineEnds::Lf,
                &b"Return-Path: <s@y>\nDelivered-To: a@x.example\nSubject: a\n\nbare\rCR, bare\nLF\n\xff\n"[..],
            ),
            (
                LineEnds::Crlf,
                &b"Return-Path: <s@y>\r\nDelivered-To: a@x.example\r\nSubject: a\r\n\r\nbare\rCR, bare\nLF\r\n\xff\r\n"[..],
            ),
        ];
        for (mode, want) in cases {
            let root = tempfile::tempdir().unwrap();
            let mut m = Maildir::new(&template(root.path()), 0).unwrap();
            m.line_ends = mode;
            m.mail("s@y", "").await.unwrap();
            m.rcpt("a@x.example", "").await.unwrap();
            m.data().await.unwrap();
            for c in chunks {
                m.body(c).await;
            }
            assert_eq!(m.end().await.code, 250);
            let new = files(&root.path().join("x.example/a/new"));
            let got = std::fs::read(&new[0]).unwrap();
            assert_eq!(got, want, "{mode:?}: {}", String::from_utf8_lossy(&got));
            let name = new[0].to_string_lossy().into_owned();
            assert!(name.ends_with(&format!(",S={}", want.len())), "{mode:?}: {name}");
        }
    }

    #[tokio::test]
    async fn duplicate_recipient_gets_one_copy() {
        let root = tempfile::tempdir().unwrap();
        let mut m = Maildir::new(&template(root.path()), 0).unwrap();
        assert_eq!(
            send(&mut m, "s@y", &["a@x.example", "a@x.example"], b"hi\r\n")
                .await
                .code,
            250
        );
        assert_eq!(files(&root.path().join("x.example/a/new")).len(), 1);
    }

    #[tokio::test]
    async fn unsafe_addresses_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let mut m = Maildir::new(&template(root.path()), 0).unwrap();
        m.mail("s@y.example", "").await.unwrap();
        for bad in [
            ".hidden@x.example",
            "..@x.example",
            ".@x.example",
            "\"a/b\"@x.example",
            "@x.example",
            "a@",
            "postmaster",
            "a@..",
            "a@.x.example",
            "a@x/y",
            "a\u{0}b@x.example",
            "a\tb@x.example",
            "a\r\nb@x.example",
        ] {
            let r = m.rcpt(bad, "").await.unwrap_err();
            assert_eq!(
                (r.code, r.status.as_deref()),
                (550, Some("5.1.3")),
                "{bad:?}: {r}"
            );
        }
        let long = format!("{}@x.example", "a".repeat(300));
        assert_eq!(m.rcpt(&long, "").await.unwrap_err().code, 550);
        // Nothing was created for them, and a good recipient still works.
        assert!(files(root.path()).is_empty());
        m.rcpt("ok.name+tag@x.example", "").await.unwrap();
        assert!(root.path().join("x.example/ok.name+tag/new").is_dir());
    }

    #[tokio::test]
    async fn template_validation() {
        for bad in [
            "/var/mail/{user}",
            "/var/mail/{domain",
            "/var/mail/domain}",
            "/var/mail/{}",
            "var/mail/{local}",
            "",
        ] {
            let e = Maildir::new(bad, 0).err().unwrap().to_string();
            assert!(e.contains("deliver.maildir"), "{bad:?}: {e}");
            assert!(e.contains("/var/mail/{domain}/{local}"), "{bad:?}: {e}");
        }
        let e = Maildir::new("/var/{nope}/x", 0).err().unwrap().to_string();
        assert!(e.contains("{nope}"), "{e}");
        for good in [
            "/var/mail/{domain}/{local}",
            "/srv/{address}/Maildir",
            "/var/mail/all",
            "/m/{local}.{domain}",
        ] {
            Maildir::new(good, 0).unwrap();
        }
        let m = Maildir::new("/var/mail/{domain}/{local}", 1234).unwrap();
        assert_eq!(
            m.caps(),
            SinkCaps {
                max_size: 1234,
                eight_bit_mime: true,
                smtputf8: true,
                max_recipients: 100
            }
        );
    }

    #[tokio::test]
    async fn maildir_path_is_a_file_gives_451_at_rcpt() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("x.example")).unwrap();
        std::fs::write(root.path().join("x.example/a"), b"not a directory").unwrap();
        let mut m = Maildir::new(&template(root.path()), 0).unwrap();
        m.mail("s@y", "").await.unwrap();
        let r = m.rcpt("a@x.example", "").await.unwrap_err();
        assert_eq!((r.code, r.status.as_deref()), (451, Some("4.3.0")), "{r}");
        // Another recipient in the same transaction is unaffected.
        m.rcpt("b@x.example", "").await.unwrap();
        m.data().await.unwrap();
        m.body(b"hello\r\n").await;
        assert_eq!(m.end().await.code, 250);
    }

    #[tokio::test]
    async fn failure_at_end_gives_451_and_leaves_nothing() {
        let root = tempfile::tempdir().unwrap();
        let mut m = Maildir::new(&template(root.path()), 0).unwrap();
        m.mail("s@y", "").await.unwrap();
        m.rcpt("a@x.example", "").await.unwrap();
        m.rcpt("b@x.example", "").await.unwrap();
        m.data().await.unwrap();
        m.body(&sample_body()).await;
        // b's new/ turns into a regular file: its rename must fail after a's succeeded.
        let b_new = root.path().join("x.example/b/new");
        std::fs::remove_dir(&b_new).unwrap();
        std::fs::write(&b_new, b"").unwrap();
        let r = m.end().await;
        assert_eq!((r.code, r.status.as_deref()), (451, Some("4.3.0")), "{r}");
        assert!(r.one_line().contains("new"), "{r}");
        for who in ["a", "b"] {
            assert!(
                files(&root.path().join(format!("x.example/{who}/tmp"))).is_empty(),
                "{who}"
            );
        }
        assert!(
            files(&root.path().join("x.example/a/new")).is_empty(),
            "a's copy must be taken back"
        );
    }

    #[tokio::test]
    async fn tmp_unwritable_at_data_gives_451() {
        let root = tempfile::tempdir().unwrap();
        let mut m = Maildir::new(&template(root.path()), 0).unwrap();
        m.mail("s@y", "").await.unwrap();
        m.rcpt("a@x.example", "").await.unwrap();
        m.rcpt("b@x.example", "").await.unwrap();
        let b_tmp = root.path().join("x.example/b/tmp");
        std::fs::remove_dir(&b_tmp).unwrap();
        std::fs::write(&b_tmp, b"").unwrap();
        let r = m.data().await.unwrap_err();
        assert_eq!((r.code, r.status.as_deref()), (451, Some("4.3.0")), "{r}");
        assert!(files(&root.path().join("x.example/a/tmp")).is_empty());
        m.reset().await;
    }

    #[tokio::test]
    async fn size_limit_gives_552_and_leaves_nothing() {
        let root = tempfile::tempdir().unwrap();
        let mut m = Maildir::new(&template(root.path()), 100_000).unwrap();
        m.mail("s@y", "").await.unwrap();
        m.rcpt("a@x.example", "").await.unwrap();
        m.data().await.unwrap();
        let chunk = vec![b'z'; 30_000];
        for _ in 0..4 {
            m.body(&chunk).await;
        }
        let r = m.end().await;
        assert_eq!((r.code, r.status.as_deref()), (552, Some("5.3.4")), "{r}");
        assert!(files(&root.path().join("x.example/a/tmp")).is_empty());
        assert!(files(&root.path().join("x.example/a/new")).is_empty());
        // Exactly at the limit is fine.
        m.mail("s@y", "").await.unwrap();
        m.rcpt("a@x.example", "").await.unwrap();
        m.data().await.unwrap();
        m.body(&vec![b'z'; 100_000]).await;
        assert_eq!(m.end().await.code, 250);
    }

    #[tokio::test]
    async fn reset_and_drop_remove_tmp_files() {
        let root = tempfile::tempdir().unwrap();
        let tmp = root.path().join("x.example/a/tmp");
        let mut m = Maildir::new(&template(root.path()), 0).unwrap();
        m.mail("s@y", "").await.unwrap();
        m.rcpt("a@x.example", "").await.unwrap();
        m.data().await.unwrap();
        m.body(&sample_body()).await;
        assert_eq!(files(&tmp).len(), 1);
        m.reset().await;
        assert!(files(&tmp).is_empty());
        assert_eq!(m.end().await.code, 451, "end without a transaction");

        m.mail("s@y", "").await.unwrap();
        m.rcpt("a@x.example", "").await.unwrap();
        m.data().await.unwrap();
        m.body(b"partial").await;
        assert_eq!(files(&tmp).len(), 1);
        drop(m);
        assert!(files(&tmp).is_empty());
        assert!(files(&root.path().join("x.example/a/new")).is_empty());
    }

    #[tokio::test]
    async fn out_of_order_calls_are_refused_without_panic() {
        let root = tempfile::tempdir().unwrap();
        let mut m = Maildir::new(&template(root.path()), 0).unwrap();
        assert_eq!(m.rcpt("a@x.example", "").await.unwrap_err().code, 503);
        assert_eq!(m.data().await.unwrap_err().code, 503);
        m.body(b"ignored").await;
        assert_eq!(m.end().await.code, 451);
        m.mail("s@y", "").await.unwrap();
        assert_eq!(m.data().await.unwrap_err().code, 503);
        assert_eq!(m.mail("a\rb@y", "").await.unwrap_err().code, 501);
        assert!(files(root.path()).is_empty());
    }

    #[test]
    fn template_parts() {
        let p = parse_template("/a/{domain}-{local}/b", Key::lookup).unwrap();
        assert_eq!(
            p,
            vec![
                Part::Lit("/a/".into()),
                Part::Key(Key::Domain),
                Part::Lit("-".into()),
                Part::Key(Key::Local),
                Part::Lit("/b".into())
            ]
        );
        assert!(parse_template("{a{domain}}", Key::lookup).is_err());
        assert_eq!(split_address("\"a@b\"@c"), ("\"a@b\"", "c"));
        assert_eq!(split_address("postmaster"), ("postmaster", ""));
        let h = hostname();
        assert!(!h.is_empty() && !h.contains('/') && !h.contains(':') && !h.contains(','));
    }
}
