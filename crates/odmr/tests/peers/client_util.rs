//! Helpers shared by `client.rs` and `client_scripted.rs`, the tests of `odmr client`: the
//! client's config file, running it (`--once` under `timeout`, or as a daemon), the local MTA
//! (Postfix's `smtp-sink`, which dumps each transaction with its exact envelope), the Python
//! peers (`client_*.py`), Maildir listings and byte comparisons. The other tests that relay
//! into smtp-sink (`etrn.rs`, `tls.rs`, `interop_fetchmail.rs`, …) use it for that too.
//!
//! Included with `#[path = "peers/client_util.rs"] mod client_util;` (the test file must also
//! declare `mod common;` and `#[path = "peers/interop_util.rs"] mod interop_util;`).
#![allow(dead_code)]

use crate::common;
use crate::interop_util::{is_root, random_free_port, random_u64};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The customer's name in its EHLO/LHLO and in the Received: field it adds.
pub const CUSTOMER: &str = "customer.test";

// ----- the client's configuration -----

/// One `[[provider]]` table. `deliver` is the body of `[provider.deliver]`, e.g.
/// `smtp = "127.0.0.1:PORT"`; `domains` `None` leaves the key out.
pub struct ProviderCfg<'a> {
    pub port: u16,
    pub user: &'a str,
    pub password: &'a str,
    pub domains: Option<&'a [&'a str]>,
    pub deliver: String,
    pub interval: &'a str,
    pub timeout: &'a str,
    pub atrn_timeout: &'a str,
}

impl<'a> ProviderCfg<'a> {
    pub fn new(port: u16, user: &'a str, password: &'a str, domains: &'a [&'a str], deliver: String) -> Self {
        ProviderCfg {
            port,
            user,
            password,
            domains: Some(domains),
            deliver,
            interval: "1s",
            timeout: "5s",
            atrn_timeout: "10m",
        }
    }

    pub fn toml(&self) -> String {
        let domains = match self.domains {
            None => String::new(),
            Some(d) => format!(
                "domains = [{}]\n",
                d.iter().map(|d| format!("{d:?}")).collect::<Vec<_>>().join(", ")
            ),
        };
        format!(
            "[[provider]]\nname = \"isp\"\nhost = \"127.0.0.1\"\nport = {port}\nuser = {user:?}\n\
             password = {password:?}\n{domains}tls = \"none\"\ninterval = {interval:?}\n\
             timeout = {timeout:?}\natrn_timeout = {atrn:?}\n[provider.deliver]\n{deliver}\n",
            port = self.port,
            user = self.user,
            password = self.password,
            interval = self.interval,
            timeout = self.timeout,
            atrn = self.atrn_timeout,
            deliver = self.deliver,
        )
    }

    /// Write the whole config file (our hostname plus this one provider) into `dir`.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join(format!("client-{}.toml", random_u64() % 1_000_000));
        std::fs::write(&path, format!("hostname = \"{CUSTOMER}\"\n{}", self.toml())).unwrap();
        path
    }
}

/// `deliver` values.
pub fn smtp_to(port: u16) -> String {
    format!("smtp = \"127.0.0.1:{port}\"")
}
pub fn lmtp_to(port: u16) -> String {
    format!("lmtp = \"127.0.0.1:{port}\"")
}
pub fn splice_to(port: u16) -> String {
    format!("splice = \"127.0.0.1:{port}\"")
}
/// Maildirs under `root`: `root/{domain}/{local}`.
pub fn maildir_in(root: &Path) -> String {
    format!("maildir = \"{}/{{domain}}/{{local}}\"", root.display())
}

// ----- running the client -----

/// A finished `odmr client --once`.
#[derive(Debug)]
pub struct Once {
    pub code: Option<i32>,
    pub stderr: String,
    pub elapsed: Duration,
}

/// That the run exited `code` (0 delivered, 1 no mail, 2 error, 3 authentication failed);
/// `what` names the run in the failure, with its exit and its logs.
pub fn expect_code(run: &Once, code: i32, what: &str) {
    assert_eq!(
        run.code,
        Some(code),
        "{what}: odmr client --once exited {:?}:\n{}",
        run.code,
        run.stderr
    );
}

/// `odmr client --config CONFIG --once`, under `timeout 60` (a hang fails the test), with
/// debug logs on stderr.
pub fn client_once(config: &Path) -> Once {
    let start = Instant::now();
    let out = client_command("60", &["--once"], config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run odmr client");
    let once = Once {
        code: out.status.code(),
        stderr: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        elapsed: start.elapsed(),
    };
    assert!(
        !matches!(once.code, Some(124) | Some(137) | None),
        "odmr client --once hung and was killed after 60 s:\n{}",
        once.stderr
    );
    once
}

/// `odmr client ARGS… --config CONFIG` under `timeout SECS`, with debug logs and stdin closed.
fn client_command(secs: &str, args: &[&str], config: &Path) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.args(["--kill-after=5", secs, common::BIN, "client"])
        .args(args)
        .arg("--config")
        .arg(config)
        .env("ODMR_LOG", "info,odmr=debug")
        .stdin(Stdio::null());
    cmd
}

/// `odmr client --config CONFIG` running as a daemon (under `timeout 180`), its stderr
/// collected as it comes.
pub struct Daemon {
    child: Option<Child>,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    pub fn start(config: &Path) -> Daemon {
        let mut child = client_command("180", &[], config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start odmr client");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = l.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Daemon {
            child: Some(child),
            log,
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Wait up to `secs` for `f(log)`.
    pub fn wait_log(&self, secs: u64, f: impl Fn(&str) -> bool) -> bool {
        wait_until(secs, || f(&self.log()))
    }

    /// The `odmr` process itself (the child of our `timeout`).
    pub fn pid(&self) -> u32 {
        let t = self.child.as_ref().expect("running").id();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let children =
                std::fs::read_to_string(format!("/proc/{t}/task/{t}/children")).unwrap_or_default();
            if let Some(p) = children.split_whitespace().next() {
                return p.parse().unwrap();
            }
            assert!(Instant::now() < deadline, "timeout(1) has no child");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send a signal (e.g. "USR1") to the odmr process.
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(st.success(), "kill -{sig} failed");
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGTERM to odmr; its exit code (timeout(1) passes it on), or `None` if it did not exit
    /// within `secs`.
    pub fn terminate(&mut self, secs: u64) -> Option<i32> {
        self.signal("TERM");
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM to timeout(1), which passes it on to odmr.
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let _ = c.wait();
        }
    }
}

pub use crate::common::wait_until;

// ----- the local MTA: smtp-sink -----

/// A running `smtp-sink -d DIR/%M.` (with `-L`: LMTP) on a random port.
pub struct SmtpSink {
    /// The TCP port (0 when listening on a Unix socket).
    pub port: u16,
    /// The Unix socket, when listening on one.
    pub socket: Option<PathBuf>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// One transaction as smtp-sink dumped it.
#[derive(Debug, Clone)]
pub struct Dumped {
    /// `X-Mail-Args`: the MAIL FROM argument and its parameters.
    pub mail: String,
    /// `X-Rcpt-Args`, in order.
    pub rcpts: Vec<String>,
    /// `X-Helo-Args`.
    pub helo: String,
    /// `X-Client-Proto` (ESMTP, LMTP).
    pub proto: String,
    /// The message (smtp-sink's own `Received:` removed, dot-stuffing undone, LF line ends).
    pub content: Vec<u8>,
}

impl SmtpSink {
    /// `None` (test skipped) when Postfix's smtp-sink is not installed.
    pub fn start(lmtp: bool) -> Option<SmtpSink> {
        Self::start_with(lmtp, &[])
    }

    /// With extra smtp-sink options (e.g. `-8`: no 8BITMIME).
    pub fn start_with(lmtp: bool, options: &[&str]) -> Option<SmtpSink> {
        let program = common::peer("smtp-sink", "postfix")?;
        for _ in 0..10 {
            let port = random_free_port();
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("dump")).unwrap();
            let name = format!("sink{}.test", random_u64() % 1_000_000);
            let listen = format!("127.0.0.1:{port}");
            let child = Self::spawn(&program, &name, lmtp, options, dir.path(), &listen);
            let mut sink = SmtpSink {
                port,
                socket: None,
                dir,
                child: Some(child),
            };
            if sink.wait_ready(&name) {
                return Some(sink);
            }
        }
        panic!("smtp-sink could not be started on any of 10 random ports");
    }

    /// smtp-sink greeting as `name`, listening on `listen`, dumping into `dir/dump`.
    fn spawn(program: &Path, name: &str, lmtp: bool, options: &[&str], dir: &Path, listen: &str) -> Child {
        let mut cmd = Command::new("timeout");
        // A safety net only: Drop stops it long before.
        cmd.arg("300").arg(program).args(["-h", name]);
        if is_root() {
            cmd.args(["-u", "root"]);
        }
        if lmtp {
            cmd.arg("-L");
        }
        cmd.args(options)
            .arg("-d")
            .arg(format!("{}/dump/%M.", dir.display()))
            .arg(listen)
            .arg("16")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd.spawn().expect("start smtp-sink")
    }

    /// smtp-sink on a Unix socket (`unix:PATH`) in its own directory.
    pub fn start_unix(lmtp: bool) -> Option<SmtpSink> {
        let program = common::peer("smtp-sink", "postfix")?;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("dump")).unwrap();
        let socket = dir.path().join("sink.sock");
        let name = format!("usink{}.test", random_u64() % 1_000_000);
        let listen = format!("unix:{}", socket.display());
        let child = Self::spawn(&program, &name, lmtp, &[], dir.path(), &listen);
        let mut sink = SmtpSink {
            port: 0,
            socket: Some(socket.clone()),
            dir,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(s) = std::os::unix::net::UnixStream::connect(&socket) {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut greeting = String::new();
                let _ = BufReader::new(&s).read_line(&mut greeting);
                let _ = (&s).write_all(b"QUIT\r\n");
                assert!(
                    greeting.contains(&name),
                    "another server on {}: {greeting}",
                    socket.display()
                );
                return Some(sink);
            }
            if sink.child.as_mut().unwrap().try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("smtp-sink did not start on {}", socket.display());
    }

    fn wait_ready(&mut self, name: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.as_mut().unwrap().try_wait().unwrap().is_some() {
                return false;
            }
            if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut greeting = String::new();
                let _ = BufReader::new(&s).read_line(&mut greeting);
                let _ = (&s).write_all(b"QUIT\r\n");
                return greeting.starts_with("220 ") && greeting.contains(name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Like [`SmtpSink::messages`], but `None` while a dump is still being written (a file
    /// not yet ending in the empty line smtp-sink closes it with), for polling while a delivery
    /// runs.
    pub fn try_messages(&self) -> Option<Vec<Dumped>> {
        let complete = std::fs::read_dir(self.dir.path().join("dump"))
            .unwrap()
            .all(|e| std::fs::read(e.unwrap().path()).is_ok_and(|b| b.ends_with(b"\n\n")));
        complete.then(|| self.messages())
    }

    /// Every transaction dumped so far, sorted by sender then recipients.
    pub fn messages(&self) -> Vec<Dumped> {
        let mut v: Vec<Dumped> = std::fs::read_dir(self.dir.path().join("dump"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|f| parse_dump(&std::fs::read(&f).unwrap(), &f))
            .collect();
        v.sort_by(|a, b| (&a.mail, &a.rcpts).cmp(&(&b.mail, &b.rcpts)));
        v
    }

    /// Forget every transaction dumped so far.
    pub fn clear(&self) {
        let dump = self.dir.path().join("dump");
        std::fs::remove_dir_all(&dump).unwrap();
        std::fs::create_dir(&dump).unwrap();
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

/// smtp-sink's dump: its X- records, its three-line `Received:`, the message, an empty line.
fn parse_dump(bytes: &[u8], file: &Path) -> Dumped {
    let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    assert_eq!(
        lines.pop(),
        Some(&b""[..]),
        "{}: not newline-terminated",
        file.display()
    );
    assert_eq!(
        lines.pop(),
        Some(&b""[..]),
        "{}: no trailing empty line",
        file.display()
    );
    let (mut mail, mut rcpts, mut helo, mut proto) = (None, Vec::new(), String::new(), String::new());
    let mut i = 0;
    loop {
        let l = String::from_utf8_lossy(lines[i]).into_owned();
        i += 1;
        if let Some(v) = l.strip_prefix("X-Mail-Args: ") {
            assert!(mail.is_none(), "{}: two X-Mail-Args", file.display());
            mail = Some(v.to_string());
        } else if let Some(v) = l.strip_prefix("X-Rcpt-Args: ") {
            rcpts.push(v.to_string());
        } else if let Some(v) = l.strip_prefix("X-Helo-Args: ") {
            helo = v.to_string();
        } else if let Some(v) = l.strip_prefix("X-Client-Proto: ") {
            proto = v.to_string();
        } else if l.starts_with("Received: ") {
            assert!(lines[i].starts_with(b"\tby ") && lines[i + 1].starts_with(b"\t"));
            i += 2;
            break;
        }
    }
    let mut content = lines[i..].join(&b'\n');
    content.push(b'\n');
    Dumped {
        mail: mail.unwrap_or_else(|| panic!("{}: no X-Mail-Args", file.display())),
        rcpts,
        helo,
        proto,
        content,
    }
}

// ----- the provider's queue -----

/// (address, state) of every recipient in the provider's queue.
pub fn states(server: &common::Server) -> Vec<(String, String)> {
    server
        .recipient_states()
        .into_iter()
        .map(|(a, s, _)| (a, s))
        .collect()
}

/// An expected (address, state) entry of [`states`].
pub fn pair(a: &str, s: &str) -> (String, String) {
    (a.to_string(), s.to_string())
}

// ----- message content -----

/// Split `n` leading `Received:` fields (each with its folded continuation lines) off
/// `content`; returns (the fields, the rest). Works for LF and CRLF line ends.
pub fn split_received(content: &[u8], n: usize) -> (Vec<String>, Vec<u8>) {
    let mut fields = Vec::new();
    let mut at = 0;
    for k in 0..n {
        assert!(
            content[at..].starts_with(b"Received: "),
            "expected Received: field #{} at offset {at}; content starts:\n{}",
            k + 1,
            String::from_utf8_lossy(&content[..content.len().min(at + 600)])
        );
        let start = at;
        loop {
            let nl = at + content[at..].iter().position(|&b| b == b'\n').expect("line end") + 1;
            at = nl;
            if !matches!(content.get(at), Some(b'\t') | Some(b' ')) {
                break;
            }
        }
        fields.push(String::from_utf8_lossy(&content[start..at]).into_owned());
    }
    (fields, content[at..].to_vec())
}

/// The two Received: fields in a delivered message are the customer's (first: it received the
/// message from the provider) and the provider's (from the sender); check both, return the rest.
pub fn strip_both_received(content: &[u8]) -> Vec<u8> {
    let (fields, rest) = split_received(content, 2);
    assert!(
        fields[0].starts_with("Received: from odmr.test ") && fields[0].contains(&format!("by {CUSTOMER} ")),
        "first Received: is not the customer's: {:?}",
        fields[0]
    );
    assert!(
        fields[1].contains(&format!("by {} ", common::HOSTNAME)),
        "second Received: is not the provider's: {:?}",
        fields[1]
    );
    rest
}

/// Assert two byte strings are equal, reporting the first difference (not megabytes of text).
pub fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let ctx =
        |b: &[u8]| String::from_utf8_lossy(&b[at.saturating_sub(80)..b.len().min(at + 80)]).into_owned();
    panic!(
        "{what}: {} octets received, {} expected; first difference at offset {at}:\n got: {:?}\nwant: {:?}",
        got.len(),
        want.len(),
        ctx(got),
        ctx(want)
    );
}

/// LF line ends to CRLF.
pub fn crlf(lf: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(lf.len() + lf.len() / 40);
    for &b in lf {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// A message exercising transparency: lines starting with '.', a lone '.', 8-bit UTF-8,
/// trailing white space and a line of exactly 998 octets. LF line ends.
pub fn tricky_message(to: &str) -> String {
    let mut long = String::from("L");
    while long.len() < 998 {
        long.push_str(&format!("{:09} ", long.len()));
    }
    long.truncate(998);
    let mut long8 = String::from("ü");
    while long8.len() < 996 {
        long8.push_str("äöü ");
    }
    while long8.len() < 998 {
        long8.push('x');
    }
    assert_eq!((long.len(), long8.len()), (998, 998));
    format!(
        "From: Alice <alice@sender.test>\n\
         To: {to}\n\
         Subject: client test: dots, 8-bit, long lines\n\
         Message-ID: <tricky.{}@sender.test>\n\
         MIME-Version: 1.0\n\
         Content-Type: text/plain; charset=utf-8\n\
         Content-Transfer-Encoding: 8bit\n\
         \n\
         First line.\n\
         .a line starting with a dot\n\
         ..two dots\n\
         .\n\
         (a lone dot above, which is not the end)\n\
         . \n\
         Grüße aus Köln — ünïcödé ✓ 日本語\n\
         trailing spaces   \n\
         \ttab-indented\t\n\
         {long}\n\
         {long8}\n\
         .{}\n\
         last line\n",
        random_u64(),
        &long[1..]
    )
}

/// About `size` octets of text: numbered lines of varying length up to 998 octets, some
/// starting with '.', some lone dots, some 8-bit. LF line ends.
pub fn big_message(to: &str, size: usize) -> String {
    let mut m = format!(
        "From: big@sender.test\nTo: {to}\nSubject: a big one\nMIME-Version: 1.0\n\
         Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
    );
    let mut i: usize = 0;
    while m.len() < size {
        i += 1;
        let len = (i * 7919) % 990;
        let mut line = match i % 11 {
            0 => ".".to_string(),
            1 => format!(".dot line {i} "),
            2 => format!("Grüße {i} ✓ "),
            _ => format!("{i:08} "),
        };
        while line.len() < len {
            line.push_str("abcdefghij");
        }
        while line.len() > 998 {
            line.pop();
        }
        m.push_str(&line);
        m.push('\n');
    }
    m
}

// ----- Maildir -----

/// The files in `dir` (empty if it does not exist), sorted.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// Every regular file below `dir`, recursively, sorted.
pub fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for p in files(&d) {
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The Maildir of `local@domain` under `root` (`root/{domain}/{local}`): (new, tmp, cur) files.
pub fn maildir(root: &Path, domain: &str, local: &str) -> (Vec<PathBuf>, Vec<PathBuf>, Vec<PathBuf>) {
    let d = root.join(domain).join(local);
    (
        files(&d.join("new")),
        files(&d.join("tmp")),
        files(&d.join("cur")),
    )
}

/// A self-signed certificate for "localhost" and its key, written as `cert.pem` and `key.pem`
/// into `dir`: for a peer offering STARTTLS to a client that does not check it.
pub fn self_signed_localhost(dir: &Path) -> (PathBuf, PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.key_pair.serialize_pem()).unwrap();
    (cert_file, key_file)
}

/// A scripted local MTA (aiosmtpd) whose answers come from a rules file.
pub struct LocalMta {
    pub peer: PyPeer,
    rules: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl LocalMta {
    pub fn start() -> Option<LocalMta> {
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("rules.json");
        std::fs::write(&rules, "{}").unwrap();
        let peer = PyPeer::start("client_local_mta.py", &[rules.to_str().unwrap()], true)?;
        Some(LocalMta {
            peer,
            rules,
            _dir: dir,
        })
    }

    pub fn rules(&self, v: serde_json::Value) {
        std::fs::write(&self.rules, v.to_string()).unwrap();
    }

    /// The transactions that reached the end of data: (sender, recipients, reply, content).
    pub fn data(&self) -> Vec<(String, Vec<String>, String, Vec<u8>)> {
        use base64::Engine;
        self.peer
            .events()
            .iter()
            .filter(|e| e["event"] == "data")
            .map(|e| {
                (
                    e["from"].as_str().unwrap().to_string(),
                    e["rcpts"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|r| r.as_str().unwrap().to_string())
                        .collect(),
                    e["reply"].as_str().unwrap().to_string(),
                    base64::engine::general_purpose::STANDARD
                        .decode(e["content"].as_str().unwrap())
                        .unwrap(),
                )
            })
            .collect()
    }
}

// ----- Python peers -----

/// A `client_*.py` script under `timeout 120`: the first line of its stdout is its port; the
/// following lines are collected.
pub struct PyPeer {
    pub port: u16,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

/// `timeout 120 PYTHON peers/SCRIPT`, as every Python peer runs (a hang cannot outlive the test
/// by much), talking over its stdin and stdout.
pub fn python_peer(python: &Path, script: &str) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.args(["--kill-after=5", "120"])
        .arg(python)
        .arg(common::peers_dir().join(script))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    cmd
}

impl PyPeer {
    /// `None` (test skipped) without Debian's python3 (and, with `aiosmtpd`, its aiosmtpd).
    pub fn start(script: &str, args: &[&str], aiosmtpd: bool) -> Option<PyPeer> {
        let python = if aiosmtpd {
            common::python()?
        } else {
            common::peer("python3", "python3")?
        };
        let mut child = python_peer(&python, script)
            .args(args)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start python3");
        let stdin = child.stdin.take();
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut first = true;
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if first {
                    let _ = tx.send(line);
                    first = false;
                } else {
                    l.lock().unwrap().push(line);
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let e = stderr.clone();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut e = e.lock().unwrap();
                e.push_str(&line);
                e.push('\n');
            }
        });
        let port = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(p) => p
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{script}: bad port line {p:?}")),
            Err(_) => {
                let _ = child.kill();
                panic!("{script} did not start:\n{}", stderr.lock().unwrap());
            }
        };
        Some(PyPeer {
            port,
            child: Some(child),
            stdin,
            lines,
            stderr,
        })
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The stdout lines as JSON events.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.lines()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    /// Wait up to `secs` for a stdout line satisfying `f`.
    pub fn wait_line(&self, secs: u64, f: impl Fn(&str) -> bool) -> bool {
        wait_until(secs, || self.lines().iter().any(|l| f(l)))
    }

    /// Write a command line to its stdin.
    pub fn tell(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for PyPeer {
    fn drop(&mut self) {
        self.stdin.take();
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let _ = c.wait();
        }
    }
}
