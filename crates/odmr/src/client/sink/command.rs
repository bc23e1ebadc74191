//! The command sink: each message is piped into a local delivery program (procmail,
//! dovecot-lda, a script), and the program's exit status is the verdict.
//!
//! Invariants, and why:
//! - No shell ever runs. The template is split into argv once, at start-up, with shell quoting
//!   rules (`shell-words`); placeholders are then substituted inside single argv elements. An
//!   address may legally hold `;`, `$`, quotes or spaces, and none of it can become code.
//! - A substituted value can never become an option: if an argv element *starts* with a
//!   placeholder and the value starts with `-`, the address is refused at MAIL/RCPT (a program
//!   would otherwise read `-oQ/tmp` as a flag). The program name takes no placeholders at all.
//! - One recipient per transaction (`max_recipients = 1`): one run of a program gives one exit
//!   status, which cannot honestly answer for several recipients.
//! - The message is spooled to an unlinked temporary file as it arrives (never held in memory)
//!   and becomes the program's stdin, so the program sees exactly the bytes received, with LF
//!   line ends as local delivery programs expect unless `line_ends = "crlf"` (see
//!   [`super::line_ends`]).
//! - `250` only on exit 0. Exit 75 (EX_TEMPFAIL), death by a signal, a timeout, or a program
//!   that cannot be started are temporary (`451`): they are local trouble, and mail must stay
//!   queued at the provider rather than bounce. Any other exit is the program's permanent
//!   refusal (`554`), reported with the first line of its stderr.
//! - The program runs in its own process group; on timeout (or if the session drops us
//!   mid-run) the whole group is killed, so a hung helper cannot outlive the delivery. The group
//!   is signalled only while the child is unreaped, so its id cannot have been reused.
//! - Output is bounded: stdout and stderr are drained (a chatty program must not block on a
//!   full pipe) but only the first few KiB are kept for the reply and the log.

use super::line_ends::LineEnder;
use super::maildir::{has_control, parse_template, split_address, Part};
use super::{SinkCaps, SinkError};
use crate::client::config::LineEnds;
use odmr_proto::reply::Reply;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Child;

/// How long a delivery program may run before it is killed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// Exit status meaning "try again later" (sysexits.h).
const EX_TEMPFAIL: i32 = 75;
/// Output kept from each of stdout and stderr.
const KEEP_OUTPUT: usize = 4096;
/// Longest stderr excerpt put in a reply.
const REPLY_TEXT: usize = 200;
/// Body bytes gathered before one write to the spool file.
const FLUSH_AT: usize = 64 * 1024;
/// After the program exits, how long its output pipes may stay open (a leftover grandchild).
const DRAIN_GRACE: Duration = Duration::from_secs(2);
const EXAMPLE: &str = "command = \"/usr/lib/dovecot/dovecot-lda -f {sender} -a {recipient}\"";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Sender,
    Recipient,
    Local,
    Domain,
}

impl Key {
    fn lookup(name: &str) -> Option<Key> {
        match name {
            "sender" => Some(Key::Sender),
            "recipient" => Some(Key::Recipient),
            "local" => Some(Key::Local),
            "domain" => Some(Key::Domain),
            _ => None,
        }
    }
}

#[derive(Debug)]
enum Fault {
    TooBig,
    Io(String),
}

/// Pipes each message into a program, one recipient per run.
pub struct Command {
    program: String,
    /// The arguments after the program, each split into text and placeholders.
    args: Vec<Vec<Part<Key>>>,
    max_size: u64,
    /// How long one run may take before the program (and its process group) is killed
    /// ([`DEFAULT_TIMEOUT`] unless set after `new`).
    pub timeout: Duration,
    /// Where the spool file goes; `None` is the system's temporary directory, which may be a
    /// RAM-backed tmpfs, so a state directory on disk is better for large messages.
    pub spool_dir: Option<PathBuf>,
    /// The line ends of what the program reads ([`LineEnds::Lf`] unless set after `new`).
    pub line_ends: LineEnds,
    /// This message's conversion, started at DATA.
    lines: LineEnder,
    sender: Option<String>,
    recipient: Option<String>,
    spool: Option<File>,
    pending: Vec<u8>,
    size: u64,
    in_data: bool,
    fault: Option<Fault>,
}

impl Command {
    /// `template` is a program and its arguments, quoted as in a shell (no shell runs), with
    /// `{sender}`, `{recipient}`, `{local}`, `{domain}` in the arguments; `max_size` 0 means no
    /// limit.
    pub fn new(template: &str, max_size: u64) -> Result<Self, SinkError> {
        let invalid = |problem: String| SinkError::Invalid {
            key: "command",
            value: template.to_string(),
            problem,
            fix: format!("e.g. {EXAMPLE}"),
        };
        let words = shell_words::split(template).map_err(|e| {
            invalid(format!(
                "cannot split {template:?} into arguments ({e}): check the quoting"
            ))
        })?;
        let Some((program, rest)) = words.split_first() else {
            return Err(invalid("no program given".into()));
        };
        if program.is_empty() || program.contains(['{', '}']) {
            return Err(invalid(format!(
                "the program name {program:?} cannot be empty or hold placeholders: give a fixed path"
            )));
        }
        if has_control(template) {
            return Err(invalid(format!("{template:?} contains a control character")));
        }
        let args = rest
            .iter()
            .map(|w| parse_template(w, Key::lookup))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                invalid(format!(
                    "{e}; the placeholders are {{sender}}, {{recipient}}, {{local}} and {{domain}}"
                ))
            })?;
        Ok(Command {
            program: program.clone(),
            args,
            max_size,
            timeout: DEFAULT_TIMEOUT,
            spool_dir: None,
            line_ends: LineEnds::Lf,
            lines: LineEnder::new(LineEnds::Lf),
            sender: None,
            recipient: None,
            spool: None,
            pending: Vec::new(),
            size: 0,
            in_data: false,
            fault: None,
        })
    }

    pub fn caps(&self) -> SinkCaps {
        SinkCaps {
            max_size: self.max_size,
            eight_bit_mime: true,
            smtputf8: true,
            max_recipients: 1,
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
        if let Some(k) = self.option_like(&[(Key::Sender, from)]) {
            tracing::warn!(sender = from, placeholder = ?k, "sender refused: would become an option");
            return Err(Reply::new(
                553,
                "5.1.7",
                "a sender address starting with '-' cannot be passed to the delivery command",
            ));
        }
        self.sender = Some(from.to_string());
        Ok(())
    }

    pub async fn rcpt(&mut self, to: &str, _params: &str) -> Result<(), Reply> {
        if self.sender.is_none() || self.in_data {
            return Err(Reply::new(503, "5.5.1", "MAIL first"));
        }
        if self.recipient.is_some() {
            return Err(Reply::new(452, "4.5.3", "one recipient per transaction"));
        }
        if has_control(to) {
            return Err(Reply::new(
                550,
                "5.1.3",
                format!("control character in <{}>", to.escape_debug()),
            ));
        }
        let (local, domain) = split_address(to);
        let domain = domain.to_lowercase();
        if let Some(k) =
            self.option_like(&[(Key::Recipient, to), (Key::Local, local), (Key::Domain, &domain)])
        {
            tracing::warn!(recipient = to, placeholder = ?k, "recipient refused: would become an option");
            return Err(Reply::new(
                550,
                "5.1.3",
                format!(
                    "cannot deliver to <{to}>: an address part starting with '-' \
                     cannot be passed to the delivery command"
                ),
            ));
        }
        self.recipient = Some(to.to_string());
        Ok(())
    }

    pub async fn data(&mut self) -> Result<(), Reply> {
        if self.sender.is_none() {
            return Err(Reply::new(503, "5.5.1", "MAIL first"));
        }
        if self.recipient.is_none() {
            return Err(Reply::new(503, "5.5.1", "no valid recipients"));
        }
        if self.in_data {
            return Err(Reply::new(503, "5.5.1", "DATA already started"));
        }
        let dir = self.spool_dir.clone();
        let spool = tokio::task::spawn_blocking(move || match dir {
            Some(d) => tempfile::tempfile_in(d),
            None => tempfile::tempfile(),
        })
        .await;
        match spool {
            Ok(Ok(f)) => {
                self.spool = Some(f);
                self.lines = LineEnder::new(self.line_ends);
                self.in_data = true;
                self.size = 0;
                self.fault = None;
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot create the spool file for the delivery command");
                Err(Reply::new(451, "4.3.0", format!("cannot spool the message: {e}")))
            }
            Err(e) => Err(Reply::new(451, "4.3.0", format!("cannot spool the message: {e}"))),
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
                "message too big for the command sink; discarding"
            );
            self.fault = Some(Fault::TooBig);
            self.spool = None;
            self.pending = Vec::new();
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
            self.flush().await;
        }
        let reply = match self.fault.take() {
            Some(Fault::TooBig) => Reply::new(
                552,
                "5.3.4",
                format!("message exceeds the maximum size of {} octets", self.max_size),
            ),
            Some(Fault::Io(e)) => Reply::new(451, "4.3.0", format!("cannot spool the message: {e}")),
            None => self.run().await,
        };
        self.clear();
        reply
    }

    pub async fn reset(&mut self) {
        self.clear();
    }

    fn clear(&mut self) {
        self.sender = None;
        self.recipient = None;
        self.spool = None;
        self.pending = Vec::new();
        self.size = 0;
        self.in_data = false;
        self.fault = None;
    }

    /// The placeholder whose value would start an argv element with `-`, if any.
    fn option_like(&self, values: &[(Key, &str)]) -> Option<Key> {
        values.iter().find_map(|&(k, v)| {
            let leads = self.args.iter().any(|a| a.first() == Some(&Part::Key(k)));
            (leads && v.starts_with('-')).then_some(k)
        })
    }

    /// Append the gathered body bytes to the spool file (`run` rewinds it for the program).
    async fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let (Some(mut file), buf) = (self.spool.take(), std::mem::take(&mut self.pending)) else {
            return;
        };
        let r = tokio::task::spawn_blocking(move || {
            let r = file.write_all(&buf);
            (file, buf, r)
        })
        .await;
        let e = match r {
            Ok((file, mut buf, Ok(()))) => {
                self.spool = Some(file);
                buf.clear();
                self.pending = buf;
                return;
            }
            Ok((_, _, Err(e))) => e.to_string(),
            Err(e) => format!("writer task failed: {e}"),
        };
        tracing::warn!(sender = self.sender.as_deref().unwrap_or(""), error = %e,
            "cannot write the spool file; the message will be refused with 451");
        self.fault = Some(Fault::Io(e));
        self.spool = None;
    }

    /// The argv after the program, with this transaction's values substituted.
    fn argv(&self, sender: &str, recipient: &str) -> Vec<String> {
        let (local, domain) = split_address(recipient);
        let domain = domain.to_lowercase();
        self.args
            .iter()
            .map(|parts| {
                parts
                    .iter()
                    .map(|p| match p {
                        Part::Lit(s) => s.as_str(),
                        Part::Key(Key::Sender) => sender,
                        Part::Key(Key::Recipient) => recipient,
                        Part::Key(Key::Local) => local,
                        Part::Key(Key::Domain) => domain.as_str(),
                    })
                    .collect()
            })
            .collect()
    }

    /// Run the program on the spooled message and turn its fate into the reply.
    async fn run(&mut self) -> Reply {
        let sender = self.sender.clone().unwrap_or_default();
        let recipient = self.recipient.clone().unwrap_or_default();
        let Some(mut spool) = self.spool.take() else {
            return Reply::new(451, "4.3.0", "no spooled message");
        };
        let stdin = match spool.seek(SeekFrom::Start(0)) {
            Ok(_) => spool,
            Err(e) => return Reply::new(451, "4.3.0", format!("cannot read the spooled message: {e}")),
        };
        let program = self.program.as_str();
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(self.argv(&sender, &recipient))
            .env("ODMR_SENDER", &sender)
            .env("ODMR_RECIPIENT", &recipient)
            .stdin(Stdio::from(stdin))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(sender, recipient, program, error = %e, "cannot run the delivery command");
                return Reply::new(451, "4.3.0", format!("cannot run {program}: {e}"));
            }
        };
        let stdout = child.stdout.take().map(|s| tokio::spawn(capture(s)));
        let stderr = child.stderr.take().map(|s| tokio::spawn(capture(s)));
        let mut running = Running::new(child);
        let status = match tokio::time::timeout(self.timeout, running.child.wait()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                running.kill().await;
                tracing::error!(sender, recipient, program, error = %e,
                    "cannot wait for the delivery command");
                return Reply::new(451, "4.3.0", format!("lost track of {program}: {e}"));
            }
            Err(_) => {
                running.kill().await;
                for h in [stdout, stderr].into_iter().flatten() {
                    h.abort();
                }
                tracing::warn!(sender, recipient, program, timeout = ?self.timeout,
                    "delivery command timed out; killed");
                return Reply::new(
                    451,
                    "4.4.7",
                    format!(
                        "{program} did not finish within {}s; killed",
                        self.timeout.as_secs_f64()
                    ),
                );
            }
        };
        let (out, err) = tokio::join!(collect(stdout), collect(stderr));
        let reply = verdict(program, status, &err);
        let stderr_text = String::from_utf8_lossy(&err);
        let stdout_text = String::from_utf8_lossy(&out);
        if reply.is_positive() {
            tracing::info!(sender, recipient, program, "delivered by command");
            if !err.is_empty() || !out.is_empty() {
                tracing::debug!(sender, recipient, program, stdout = %stdout_text, stderr = %stderr_text,
                    "delivery command output");
            }
        } else {
            tracing::warn!(sender, recipient, program, status = %status, reply = %reply,
                stdout = %stdout_text, stderr = %stderr_text, "delivery command failed");
        }
        reply
    }
}

/// The reply for a program that ended with `status` and wrote `stderr`.
fn verdict(program: &str, status: ExitStatus, stderr: &[u8]) -> Reply {
    let why = first_line(stderr);
    let with = |s: String| if why.is_empty() { s } else { format!("{s}: {why}") };
    match (status.code(), status.signal()) {
        (Some(0), _) => Reply::new(250, "2.0.0", "delivered"),
        (Some(EX_TEMPFAIL), _) => Reply::new(
            451,
            "4.3.0",
            with(format!("{program} failed temporarily (exit 75)")),
        ),
        (Some(n), _) => Reply::new(
            554,
            "5.3.0",
            with(format!("{program} refused the message (exit {n})")),
        ),
        (None, Some(sig)) => Reply::new(451, "4.3.0", format!("{program} was killed by signal {sig}")),
        (None, None) => Reply::new(451, "4.3.0", format!("{program} ended abnormally ({status})")),
    }
}

/// The first non-blank line of `bytes`, printable ASCII only, at most [`REPLY_TEXT`] characters.
fn first_line(bytes: &[u8]) -> String {
    let line = bytes
        .split(|&b| b == b'\n' || b == b'\r')
        .find(|l| l.iter().any(|b| !b.is_ascii_whitespace()))
        .unwrap_or(&[]);
    let mut s: String = line
        .iter()
        .map(|&b| match b {
            b'\t' => ' ',
            0x20..=0x7e => b as char,
            _ => '?',
        })
        .collect();
    let trimmed = s.trim();
    if trimmed.len() != s.len() {
        s = trimmed.to_string();
    }
    if s.len() > REPLY_TEXT {
        s.truncate(REPLY_TEXT);
        s.push_str("...");
    }
    s
}

/// Read a pipe to its end, keeping the first [`KEEP_OUTPUT`] bytes.
async fn capture(mut r: impl AsyncRead + Unpin) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = KEEP_OUTPUT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// What a capture task kept, waiting at most [`DRAIN_GRACE`] for the pipe to close.
async fn collect(h: Option<tokio::task::JoinHandle<Vec<u8>>>) -> Vec<u8> {
    let Some(mut h) = h else { return Vec::new() };
    match tokio::time::timeout(DRAIN_GRACE, &mut h).await {
        Ok(Ok(v)) => v,
        Ok(Err(_)) => Vec::new(),
        Err(_) => {
            h.abort();
            Vec::new()
        }
    }
}

/// A running program, leader of its own process group. Dropped unreaped (the session went
/// away mid-run), it kills the whole group.
struct Running {
    child: Child,
    pgid: Option<i32>,
}

impl Running {
    fn new(child: Child) -> Self {
        let pgid = child.id().and_then(|p| i32::try_from(p).ok()).filter(|&p| p > 1);
        Running { child, pgid }
    }

    /// Kill the group while the leader is unreaped (so the id is still ours), then reap it.
    fn kill_group(&mut self) {
        if let (Some(pgid), Ok(None)) = (self.pgid, self.child.try_wait()) {
            // SAFETY: kill(2) takes plain integers and touches no memory of ours. The negative
            // id names the process group our unreaped child leads, which cannot have been reused.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }

    async fn kill(&mut self) {
        self.kill_group();
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill_group();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Instant;

    fn q(p: &Path) -> String {
        shell_words::quote(p.to_str().unwrap()).into_owned()
    }

    async fn deliver(c: &mut Command, from: &str, to: &str, body: &[u8]) -> Reply {
        c.mail(from, "BODY=8BITMIME").await.unwrap();
        c.rcpt(to, "").await.unwrap();
        c.data().await.unwrap();
        for chunk in body.chunks(5003) {
            c.body(chunk).await;
        }
        c.end().await
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

    /// A chunk boundary between a CR and its LF, a bare CR, and a CR at the very end: the
    /// program reads LF line ends, everything else as received.
    #[tokio::test]
    async fn the_program_reads_lf_line_ends_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let t = format!("/bin/sh -c 'cat > \"$1\"' sh {}", q(&out));
        let mut c = Command::new(&t, 0).unwrap();
        c.mail("s@y", "").await.unwrap();
        c.rcpt("a@x", "").await.unwrap();
        c.data().await.unwrap();
        for chunk in [&b"Subject: a\r"[..], b"\n\r", b"\nbare\rCR\r\n", b"end\r"] {
            c.body(chunk).await;
        }
        assert_eq!(c.end().await.code, 250);
        assert_eq!(std::fs::read(&out).unwrap(), b"Subject: a\n\nbare\rCR\nend\r");
    }

    fn sample_body() -> Vec<u8> {
        let mut b = b"Received: by customer\r\nSubject: \xc3\xa9\xff\r\n\r\n".to_vec();
        b.extend(std::iter::repeat_n(b'y', 998));
        b.extend_from_slice(b"\r\n");
        for i in 0..20_000 {
            b.extend_from_slice(format!("{i}: ").as_bytes());
            b.extend_from_slice(b"\x00\x01\x80\xfe\r\n");
        }
        b
    }

    #[tokio::test]
    async fn exit_0_stdin_argv_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("msg");
        let script = concat!(
            r#"cat > "$1"; printf "%s|%s|%s|%s|%s|%s\n" "$2" "$3" "$4" "$5" "#,
            r#""$ODMR_SENDER" "$ODMR_RECIPIENT" > "$1.args""#
        );
        let t = format!(
            "/bin/sh -c {} sh {} {{sender}} {{recipient}} {{local}} x-{{domain}}-y",
            shell_words::quote(script),
            q(&out)
        );
        let mut c = Command::new(&t, 0).unwrap();
        let body = sample_body();
        let r = deliver(&mut c, "s@origin.example", "Bob@Example.ORG", &body).await;
        assert_eq!((r.code, r.status.as_deref()), (250, Some("2.0.0")), "{r}");
        assert!(
            std::fs::read(&out).unwrap() == lf(&body),
            "stdin must be the message with LF line ends, otherwise byte-exact"
        );
        let args = std::fs::read_to_string(dir.path().join("msg.args")).unwrap();
        assert_eq!(
            args,
            "s@origin.example|Bob@Example.ORG|Bob|x-example.org-y|s@origin.example|Bob@Example.ORG\n"
        );
        // The next transaction works, with the null sender; with line_ends = "crlf" the program
        // reads the bytes as received.
        c.line_ends = LineEnds::Crlf;
        let r = deliver(&mut c, "", "a@b.example", b"second\r\n").await;
        assert_eq!(r.code, 250, "{r}");
        assert_eq!(std::fs::read(&out).unwrap(), b"second\r\n");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("msg.args")).unwrap(),
            "|a@b.example|a|x-b.example-y||a@b.example\n"
        );
    }

    #[tokio::test]
    async fn exit_statuses_map_to_replies() {
        let cases: [(&str, u16, &str, &str); 5] = [
            ("exit 75", 451, "4.3.0", "exit 75"),
            (
                "echo 'no such user' >&2; echo more >&2; exit 1",
                554,
                "5.3.0",
                "no such user",
            ),
            (
                "printf '\\n  \\tbad \\001\\303\\251 thing\\r\\n' >&2; exit 67",
                554,
                "5.3.0",
                "bad ??? thing",
            ),
            ("kill -9 $$", 451, "4.3.0", "signal 9"),
            ("kill -TERM $$", 451, "4.3.0", "signal 15"),
        ];
        for (script, code, status, text) in cases {
            let t = format!(
                "/bin/sh -c {}",
                shell_words::quote(&format!("cat >/dev/null; {script}"))
            );
            let mut c = Command::new(&t, 0).unwrap();
            let r = deliver(&mut c, "s@y", "r@x", b"hello\r\n").await;
            assert_eq!(
                (r.code, r.status.as_deref()),
                (code, Some(status)),
                "{script}: {r}"
            );
            assert!(r.one_line().contains(text), "{script}: {r}");
            assert!(!r.one_line().contains("more"), "{script}: {r}");
        }
    }

    #[tokio::test]
    async fn huge_stderr_is_bounded() {
        let t = "/bin/sh -c 'head -c 3000000 /dev/zero | tr \"\\000\" x >&2; exit 1'";
        let mut c = Command::new(t, 0).unwrap();
        let r = deliver(&mut c, "s@y", "r@x", b"hello\r\n").await;
        assert_eq!(r.code, 554);
        assert!(r.one_line().len() < 400, "{}", r.one_line().len());
    }

    #[tokio::test]
    async fn no_shell_injection() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("pwned");
        let evil = format!("\"a;touch {}\"@example.org", marker.display());
        let evil_sender = format!(
            "$(touch {})`touch {}`@x.example",
            marker.display(),
            marker.display()
        );
        let out = dir.path().join("out");
        let script = r#"printf "%s\n%s\n%s\n" "$1" "$2" "$3" > "$4""#;
        let t = format!(
            "/bin/sh -c {} sh {{recipient}} {{local}} {{sender}} {}",
            shell_words::quote(script),
            q(&out)
        );
        let mut c = Command::new(&t, 0).unwrap();
        let r = deliver(&mut c, &evil_sender, &evil, b"x\r\n").await;
        assert_eq!(r.code, 250, "{r}");
        let (local, _) = split_address(&evil);
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            format!("{evil}\n{local}\n{evil_sender}\n")
        );
        // And with a program that is not a shell at all.
        let mut c = Command::new("/bin/echo {recipient} {local} {sender}", 0).unwrap();
        assert_eq!(deliver(&mut c, &evil_sender, &evil, b"x\r\n").await.code, 250);
        assert!(!marker.exists(), "an address was executed");
    }

    #[tokio::test]
    async fn option_injection_refused() {
        let mut c = Command::new("/bin/true -f {sender} {recipient} --user={local}", 0).unwrap();
        let r = c.mail("-oQ/tmp/x@y", "").await.unwrap_err();
        assert_eq!((r.code, r.status.as_deref()), (553, Some("5.1.7")), "{r}");
        c.mail("s@y", "").await.unwrap();
        let r = c.rcpt("-bt@x.example", "").await.unwrap_err();
        assert_eq!((r.code, r.status.as_deref()), (550, Some("5.1.3")), "{r}");
        // Inside an element (--user=-x) it is harmless.
        let mut c = Command::new("/bin/true --user={local}", 0).unwrap();
        assert_eq!(deliver(&mut c, "-s@y", "-x@y", b"x\r\n").await.code, 250);
    }

    #[tokio::test]
    async fn timeout_kills_the_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let t = format!(
            "/bin/sh -c 'sleep 60 & echo $! > \"$1\"; wait' sh {}",
            q(&pidfile)
        );
        let mut c = Command::new(&t, 0).unwrap();
        c.timeout = Duration::from_millis(500);
        let start = Instant::now();
        let r = deliver(&mut c, "s@y", "r@x", b"x\r\n").await;
        assert_eq!((r.code, r.status.as_deref()), (451, Some("4.4.7")), "{r}");
        assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
        let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        // The grandchild is gone (or a zombie waiting for init).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat.rsplit_once(')').map(|(_, s)| s.trim_start().chars().next());
            if stat.is_empty() || state == Some(Some('Z')) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "grandchild {pid} still running: {stat}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn leftover_grandchild_does_not_hold_up_the_reply() {
        // The program exits 0 but leaves a background process holding stdout open.
        let mut c = Command::new("/bin/sh -c 'cat >/dev/null; sleep 4 & exit 0'", 0).unwrap();
        let start = Instant::now();
        let r = deliver(&mut c, "s@y", "r@x", b"x\r\n").await;
        assert_eq!(r.code, 250, "{r}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn program_not_found_is_temporary() {
        let mut c = Command::new("/nonexistent/deliver-odmr {recipient}", 0).unwrap();
        let r = deliver(&mut c, "s@y", "r@x", b"x\r\n").await;
        assert_eq!((r.code, r.status.as_deref()), (451, Some("4.3.0")), "{r}");
        assert!(r.one_line().contains("/nonexistent/deliver-odmr"), "{r}");
    }

    #[tokio::test]
    async fn one_recipient_per_transaction_and_size_limit() {
        let mut c = Command::new("/bin/sh -c 'cat >/dev/null'", 10).unwrap();
        assert_eq!(
            c.caps(),
            SinkCaps {
                max_size: 10,
                eight_bit_mime: true,
                smtputf8: true,
                max_recipients: 1
            }
        );
        c.mail("s@y", "").await.unwrap();
        c.rcpt("a@x", "").await.unwrap();
        let r = c.rcpt("b@x", "").await.unwrap_err();
        assert_eq!((r.code, r.status.as_deref()), (452, Some("4.5.3")));
        c.data().await.unwrap();
        c.body(b"0123456789").await;
        c.body(b"a").await;
        let r = c.end().await;
        assert_eq!((r.code, r.status.as_deref()), (552, Some("5.3.4")), "{r}");
        assert_eq!(deliver(&mut c, "s@y", "a@x", b"0123456789").await.code, 250);
    }

    #[tokio::test]
    async fn template_validation() {
        for bad in [
            "",
            "   ",
            "/usr/bin/deliver {user}",
            "/usr/bin/deliver 'unclosed",
            "/usr/bin/deliver {recipient",
            "{sender}/bin/x",
            "/usr/bin/deliver \"a\u{7}b\"",
        ] {
            let e = Command::new(bad, 0).err().unwrap().to_string();
            assert!(e.contains("deliver.command"), "{bad:?}: {e}");
            assert!(e.contains("e.g."), "{bad:?}: {e}");
        }
        let e = Command::new("/x {nope}", 0).err().unwrap().to_string();
        assert!(e.contains("{nope}") && e.contains("{recipient}"), "{e}");
        let c = Command::new("procmail -f {sender} -a '{local} at {domain}'", 0).unwrap();
        assert_eq!(c.program, "procmail");
        assert_eq!(
            c.argv("s@y", "L@D.example"),
            ["-f", "s@y", "-a", "L at d.example"]
        );
    }

    #[tokio::test]
    async fn reset_and_out_of_order_calls() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let t = format!("/bin/sh -c 'cat > \"$1\"' sh {}", q(&out));
        let mut c = Command::new(&t, 0).unwrap();
        c.spool_dir = Some(dir.path().to_path_buf());
        assert_eq!(c.rcpt("a@x", "").await.unwrap_err().code, 503);
        assert_eq!(c.data().await.unwrap_err().code, 503);
        c.body(b"ignored").await;
        assert_eq!(c.end().await.code, 451);
        c.mail("s@y", "").await.unwrap();
        assert_eq!(c.data().await.unwrap_err().code, 503);
        c.rcpt("a@x", "").await.unwrap();
        c.data().await.unwrap();
        c.body(b"abandoned").await;
        c.reset().await;
        assert!(!out.exists());
        assert_eq!(deliver(&mut c, "s@y", "a@x", b"kept\r\n").await.code, 250);
        assert_eq!(std::fs::read(&out).unwrap(), b"kept\n");
        // The spool file is unlinked: only `out` is in the directory.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["out"]);
    }

    #[test]
    fn first_line_is_sanitised_and_bounded() {
        assert_eq!(first_line(b"\r\n\n  hello\tworld \r\nsecond"), "hello world");
        assert_eq!(first_line(b"\x1b[31mred\xff"), "?[31mred?");
        assert_eq!(first_line(b""), "");
        let long = first_line(&[b'a'; 5000]);
        assert_eq!(long.len(), REPLY_TEXT + 3);
    }
}
