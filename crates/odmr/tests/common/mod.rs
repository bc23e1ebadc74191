//! Test harness shared by the integration tests: a real `odmr server` process on 127.0.0.1
//! with port 0 listeners, the operator CLI against its store, and lookup of the real peers
//! (fetchmail, swaks, smtp-sink, python3 with aiosmtpd).
//!
//! A peer that is not installed skips the test with a message saying why ([`skip`], visible in
//! `cargo test`'s output without `--nocapture`), except under `CI=true`, where it fails: CI
//! installs every peer, so a missing one is a broken CI.
#![allow(dead_code)]

pub mod customer;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_odmr");

/// Directory of the helper scripts used as scripted peers.
pub fn peers_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers")
}

/// Find a real peer program, or explain why the test is skipped.
pub fn peer(program: &str, package: &str) -> Option<PathBuf> {
    let candidates = [
        format!("/usr/bin/{program}"),
        format!("/usr/sbin/{program}"),
        format!("/usr/local/bin/{program}"),
    ];
    if let Some(p) = candidates.iter().map(PathBuf::from).find(|p| p.exists()) {
        return Some(p);
    }
    skip(&format!(
        "{program} not installed (Debian package {package}; .ci/run installs it)"
    ));
    None
}

/// Report that the calling test is skipped, and why, where the test run shows it; under
/// `CI=true` fail instead (CI installs every peer, so a missing one is a broken CI).
///
/// libtest captures what a passing test prints with `eprintln!`, so a skip said that way is
/// invisible and the test just reads "ok". Writing to the stderr handle itself goes past the
/// capture: the line appears in `cargo test`'s output next to the test's "ok".
pub fn skip(reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{reason} (under CI=true a missing peer fails the test instead of skipping it)");
    }
    // libtest names each test's thread after the test.
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}

/// Debian's python3 with aiosmtpd (the first python3 on PATH may lack Debian's modules).
pub fn python() -> Option<PathBuf> {
    let p = peer("python3", "python3")?;
    let ok = Command::new(&p)
        .args(["-c", "import aiosmtpd"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(p);
    }
    skip("python3 module aiosmtpd not installed (Debian package python3-aiosmtpd)");
    None
}

pub struct Server {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub smtp: SocketAddr,
    pub odmr: SocketAddr,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    /// `ODMR_LOG` of the server process.
    log_filter: &'static str,
}

/// Tests read the server's debug log (the dialogue included) unless they say otherwise.
const DEBUG_LOG: &str = "info,odmr=debug";

pub const HOSTNAME: &str = "odmr.test";

impl Server {
    /// Start a server with the default test config plus `extra` TOML lines appended to the
    /// `[smtp]` section (e.g. `max_message_size = "1MiB"`).
    pub fn start() -> Server {
        Self::start_with("", "")
    }

    /// [`Server::start_with`], logging at `info` only: for loads where a debug line per
    /// command would make the log the bottleneck.
    pub fn start_quiet(smtp_extra: &str, odmr_extra: &str) -> Server {
        Self::start_logging(smtp_extra, odmr_extra, "info")
    }

    pub fn start_with(smtp_extra: &str, odmr_extra: &str) -> Server {
        Self::start_logging(smtp_extra, odmr_extra, DEBUG_LOG)
    }

    fn start_logging(smtp_extra: &str, odmr_extra: &str, log_filter: &'static str) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("odmr.toml");
        let store = dir.path().join("store");
        std::fs::write(
            &config,
            format!(
                "hostname = \"{HOSTNAME}\"\n[store]\nurl = \"sqlite:{}\"\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n{smtp_extra}\n[odmr]\nlisten = [\"127.0.0.1:0\"]\n{odmr_extra}\n",
                store.display()
            ),
        )
        .unwrap();
        let mut s = Server {
            dir,
            config,
            smtp: "0.0.0.0:0".parse().unwrap(),
            odmr: "0.0.0.0:0".parse().unwrap(),
            child: None,
            log: Arc::new(Mutex::new(String::new())),
            log_filter,
        };
        s.spawn();
        s
    }

    /// A second server process on the same store, with the same configuration (so its own
    /// port-0 listeners): another node of a fleet sharing one store.
    pub fn sibling(&self) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("odmr.toml");
        std::fs::copy(&self.config, &config).expect("copy the config");
        let mut s = Server {
            dir,
            config,
            smtp: "0.0.0.0:0".parse().unwrap(),
            odmr: "0.0.0.0:0".parse().unwrap(),
            child: None,
            log: Arc::new(Mutex::new(String::new())),
            log_filter: self.log_filter,
        };
        s.spawn();
        s
    }

    /// (Re)start the server process on the same store and config.
    pub fn spawn(&mut self) {
        let mut child = Command::new(BIN)
            .args(["server", "--config"])
            .arg(&self.config)
            .env("ODMR_LOG", self.log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start odmr server");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening") {
                    let kind = field(&line, "kind=");
                    let addr = field(&line, "addr=");
                    let _ = tx.send((kind, addr));
                }
                log.lock().unwrap().push_str(&line);
                log.lock().unwrap().push('\n');
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let (mut smtp, mut odmr) = (None, None);
        while smtp.is_none() || odmr.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok((kind, addr)) = rx.recv_timeout(left) else {
                let _ = child.kill();
                panic!("server did not start; log:\n{}", self.log.lock().unwrap());
            };
            let addr: SocketAddr = addr.parse().expect("listening address");
            match kind.as_str() {
                "smtp" => smtp = Some(addr),
                "odmr" => odmr = Some(addr),
                _ => {}
            }
        }
        self.smtp = smtp.unwrap();
        self.odmr = odmr.unwrap();
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Whether the log shows `what` within a few seconds (the server writes its log from a
    /// thread of its own, so a line may trail the event it reports by a moment).
    pub fn logged(&self, what: &str) -> bool {
        wait_until(5, || self.log().contains(what))
    }

    /// Send SIGTERM and wait for a clean exit; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        unsafe_sigterm(child.id());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("server did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server process's id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A field of the server's /proc/PID/status in KiB (`VmRSS`, `VmHWM` for the peak).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid().expect("running")))
            .expect("/proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/PID/status"))
    }

    /// Kill the server without warning (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Run an operator command against this server's config; returns (status, stdout, stderr).
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
        cli_with(&self.config, args, stdin)
    }

    /// Add an account with domains; panics on failure.
    pub fn account(&self, name: &str, password: &str, domains: &[&str]) {
        let mut args = vec!["account", "add", name, "--password-stdin"];
        for d in domains {
            args.push("--domain");
            args.push(d);
        }
        let (st, out, err) = self.cli(&args, Some(&format!("{password}\n")));
        assert_eq!(st, 0, "account add failed: {out}{err}");
    }

    /// `odmr queue list --json`, parsed.
    pub fn queue(&self) -> serde_json::Value {
        let (st, out, err) = self.cli(&["queue", "list", "--json"], None);
        assert_eq!(st, 0, "queue list failed: {err}");
        serde_json::from_str(&out).expect("queue json")
    }

    /// The states of every queued recipient, as (address, state, last_reply) sorted.
    pub fn recipient_states(&self) -> Vec<(String, String, String)> {
        let q = self.queue();
        let mut v: Vec<_> = q
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|m| m["recipients"].as_array().unwrap().clone())
            .map(|r| {
                (
                    r["address"].as_str().unwrap().to_string(),
                    r["state"].as_str().unwrap().to_string(),
                    r["last_reply"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        v.sort();
        v
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn cli_with(config: &Path, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run odmr");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn field(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or("")
        .trim_matches('"')
        .to_string()
}

fn unsafe_sigterm(pid: u32) {
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
}

/// A minimal line-oriented SMTP client over a real socket, for transcripts and probes.
pub struct Line {
    pub stream: std::net::TcpStream,
    buf: Vec<u8>,
}

impl Line {
    pub fn connect(addr: SocketAddr) -> Line {
        let stream = std::net::TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Line {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    pub fn cmd(&mut self, line: &str) {
        self.send(format!("{line}\r\n").as_bytes());
    }

    /// The next line without CRLF; `None` at EOF.
    pub fn line(&mut self) -> Option<String> {
        loop {
            if let Some(nl) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let l = String::from_utf8_lossy(&self.buf[..nl]).into_owned();
                self.buf.drain(..nl + 2);
                return Some(l);
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => panic!(
                    "read failed: {e}; buffered: {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
            }
        }
    }

    /// A whole reply (all lines of a multi-line reply), joined by '\n'.
    pub fn reply(&mut self) -> String {
        let mut all = Vec::new();
        loop {
            let l = self.line().expect("connection closed while waiting for a reply");
            let last = l.as_bytes().get(3) != Some(&b'-');
            all.push(l);
            if last {
                return all.join("\n");
            }
        }
    }

    /// Send a command and return its reply.
    pub fn ask(&mut self, line: &str) -> String {
        self.cmd(line);
        self.reply()
    }
}

/// Polls `f` until it holds (true) or `secs` seconds have passed (false).
pub fn wait_until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Send one message through the MX listener with our line client; returns the final reply.
pub fn send_mail(addr: SocketAddr, from: &str, to: &[&str], body: &str) -> String {
    let mut c = Line::connect(addr);
    assert!(c.reply().starts_with("220"));
    assert!(c.ask("EHLO sender.test").starts_with("250"));
    assert!(c.ask(&format!("MAIL FROM:<{from}>")).starts_with("250"));
    for t in to {
        let r = c.ask(&format!("RCPT TO:<{t}>"));
        assert!(r.starts_with("250"), "RCPT {t}: {r}");
    }
    assert!(c.ask("DATA").starts_with("354"));
    let mut data = body.replace("\r\n", "\n").replace('\n', "\r\n");
    if !data.ends_with("\r\n") {
        data.push_str("\r\n");
    }
    let stuffed = data
        .split("\r\n")
        .map(|l| {
            if l.starts_with('.') {
                format!(".{l}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n");
    c.send(stuffed.as_bytes());
    c.send(b".\r\n");
    let r = c.reply();
    c.ask("QUIT");
    r
}
