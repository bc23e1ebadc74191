//! Helpers shared by `interop_fetchmail.rs` and `interop_senders.rs` (and the other tests that
//! drive real peers): running a real peer program under `timeout`, random ports, fetchmail and
//! swaks.
//!
//! Included with `#[path = "peers/interop_util.rs"] mod interop_util;` (the test file must also
//! declare `mod common;`).
#![allow(dead_code)]

use std::hash::{BuildHasher, Hasher};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What a finished peer program left behind.
#[derive(Debug)]
pub struct Run {
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// stdout and stderr together, for searching and for failure messages.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Run `program args…` under `timeout SECS`, with stdin closed, and panic if it had to be
/// killed: a peer that hangs is a failure, never a pass.
pub fn run_timeout(secs: u32, program: &Path, args: &[&str], envs: &[(&str, &Path)]) -> Run {
    let mut cmd = Command::new("timeout");
    cmd.arg("--kill-after=5")
        .arg(secs.to_string())
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run timeout(1)");
    let run = Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !matches!(run.code, Some(124) | Some(137) | None),
        "{} {args:?} hung and was killed after {secs} s:\n{}",
        program.display(),
        run.all()
    );
    run
}

/// A random number, without a dependency: std's per-process random hash keys.
pub fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

/// A port chosen at random in 20000..60000 that was free a moment ago (the caller retries
/// with another one if its program still fails to bind it).
pub fn random_free_port() -> u16 {
    loop {
        let port = 20000 + (random_u64() % 40000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Whether this process runs as root (smtp-sink then needs `-u`).
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// fetchmail with a home of its own: a 0700 directory that is its FETCHMAILHOME and HOME, and
/// holds its rc file and pidfile.
pub struct Fetchmail {
    program: PathBuf,
    home: tempfile::TempDir,
}

impl Fetchmail {
    /// `None` (test skipped) when fetchmail is not installed.
    pub fn find() -> Option<Fetchmail> {
        let program = crate::common::peer("fetchmail", "fetchmail")?;
        let home = tempfile::tempdir().unwrap();
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        Some(Fetchmail { program, home })
    }

    /// Write `rc` as the 0600 rc file (fetchmail refuses a more open one) and run fetchmail
    /// once with it (`-v`, under `timeout 60`).
    pub fn run(&self, rc: &str) -> Run {
        let home = self.home.path();
        let rc_file = home.join("fetchmailrc");
        std::fs::write(&rc_file, rc).unwrap();
        std::fs::set_permissions(&rc_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        // As root, fetchmail's lock is the global /var/run/fetchmail.pid, and a concurrent run
        // (another test) would make it give up: each run gets its own.
        let pidfile = home.join("fetchmail.pid");
        run_timeout(
            60,
            &self.program,
            &[
                "-f",
                rc_file.to_str().unwrap(),
                "--pidfile",
                pidfile.to_str().unwrap(),
                "-v",
            ],
            &[("FETCHMAILHOME", home), ("HOME", home)],
        )
    }
}

/// `swaks` under a 30 s timeout; `None` (test skipped) when swaks is not installed.
pub fn swaks(args: &[&str]) -> Option<Run> {
    let swaks = crate::common::peer("swaks", "swaks")?;
    Some(run_timeout(30, &swaks, args, &[]))
}

/// The reply lines swaks printed as received from the server (`<-` lines, and `<**` for
/// errors, which swaks writes to stderr).
pub fn swaks_replies(run: &Run) -> Vec<String> {
    run.all()
        .lines()
        .filter_map(|l| l.strip_prefix("<-  ").or_else(|| l.strip_prefix("<** ")))
        .map(str::to_string)
        .collect()
}

/// The server's reply (first line) to the first command swaks sent that starts with `cmd`.
pub fn swaks_reply_to(run: &Run, cmd: &str) -> Option<String> {
    let all = run.all();
    let mut lines = all
        .lines()
        .skip_while(|l| !l.strip_prefix(" -> ").is_some_and(|c| c.starts_with(cmd)));
    lines.next()?;
    lines
        .find_map(|l| l.strip_prefix("<-  ").or_else(|| l.strip_prefix("<** ")))
        .map(str::to_string)
}

/// fetchmail's rc file for `proto odmr`: the repository's `fetchmailrc.example`, with the
/// port, the account, the domains and the local MTA put in. Every fetchmail test thus runs the
/// example users start from; a line the replacements no longer find fails them.
pub fn odmr_rc(odmr_port: u16, user: &str, password: &str, domains: &[&str], smtp_port: u16) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fetchmailrc.example");
    let mut rc = std::fs::read_to_string(&path).expect("fetchmailrc.example");
    for (from, to) in [
        ("service 10366 ".to_string(), format!("service {odmr_port} ")),
        (
            "user \"acme\" password \"change me\"".to_string(),
            format!("user \"{user}\" password \"{password}\""),
        ),
        (
            "fetchdomains example.org\n".to_string(),
            format!("fetchdomains {}\n", domains.join(",")),
        ),
        (
            "smtphost 127.0.0.1/25\n".to_string(),
            format!("smtphost 127.0.0.1/{smtp_port}\n"),
        ),
    ] {
        assert!(rc.contains(&from), "fetchmailrc.example no longer has {from:?}");
        rc = rc.replace(&from, &to);
    }
    rc
}

/// Send one message with swaks into the MX at `smtp`. swaks turns LF into CRLF, dot-stuffs,
/// and always ends the data with one CRLF of its own, so the file holds `message` without its
/// final LF: then exactly `message` goes over the wire.
pub fn swaks_send(smtp: std::net::SocketAddr, from: &str, to: &[&str], message: &[u8]) -> Run {
    let data = message
        .strip_suffix(b"\n")
        .expect("a message ends with a line end");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), data).unwrap();
    let at_file = format!("@{}", file.path().display());
    let smtp = smtp.to_string();
    let to = to.join(",");
    swaks(&["--server", &smtp, "--from", from, "--to", &to, "--data", &at_file])
        .expect("swaks is checked by the caller")
}

/// The provider's reply to fetchmail's ATRN command, if it sent one: the first reply fetchmail
/// logged after the command (as `ODMR<`, or `SMTP<`).
pub fn atrn_reply(run: &Run) -> Option<String> {
    let all = run.all();
    let mut lines = all
        .lines()
        .skip_while(|l| !l.starts_with("fetchmail: ODMR> ATRN "));
    lines.next()?;
    lines
        .find_map(|l| {
            l.strip_prefix("fetchmail: ODMR< ")
                .or_else(|| l.strip_prefix("fetchmail: SMTP< "))
        })
        .map(str::to_string)
}
