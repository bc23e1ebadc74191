//! The peers measured beside odmr: Postfix's `smtp-source` (the load generator) and `smtp-sink`
//! (the no-disk ceiling), a throwaway Postfix instance that holds mail durably on loopback, and
//! fetchmail as the ODMR client people run. How we drive them, and their quirks: docs/peers.md.
//!
//! Invariants:
//! - A peer that is missing or cannot start is reported as unavailable with the reason; it never
//!   aborts the run (the caller decides whether that is a failure, e.g. under CI).
//! - Every peer listens on 127.0.0.1 on a port found free just before; we only use it once its
//!   greeting carries the random host name we gave it, so a stranger on a reused port is never
//!   measured.
//! - The throwaway Postfix lives entirely in its own directory (config, queue, data, log) and is
//!   always stopped: by [`Postfix::drop`], which also runs when a panic or Ctrl-C drops the
//!   measurement that owns it.

use crate::procs::{self, Finished, Proc};
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::process::Command;

/// Find a peer program in the usual places; the error says which package provides it.
pub fn find(program: &str, package: &str) -> Result<PathBuf, String> {
    for dir in [
        "/usr/sbin",
        "/usr/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/lib/postfix/sbin",
    ] {
        let p = Path::new(dir).join(program);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(format!("{program} not installed (Debian package {package})"))
}

fn random_name(prefix: &str) -> String {
    format!("{prefix}{}.bench.test", rand::random::<u32>() % 1_000_000)
}

/// Wait until a server on 127.0.0.1:`port` greets with `name` in its 220.
fn greets_as(port: u16, name: &str, limit: Duration, mut still_running: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if !still_running() {
            return false;
        }
        if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut greeting = String::new();
            let _ = BufReader::new(&s).read_line(&mut greeting);
            let _ = (&s).write_all(b"QUIT\r\n");
            return greeting.starts_with("220") && greeting.contains(name);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

// ----- smtp-source -----

/// One `smtp-source` run.
#[derive(Debug, Clone)]
pub struct Source {
    pub sessions: usize,
    pub messages: u64,
    pub size: usize,
    pub to: String,
}

impl Source {
    /// `smtp-source -s S -m N -l SIZE -d -f … -t TO -M source.bench.test 127.0.0.1:PORT`,
    /// started (the caller times and waits).
    pub fn spawn(&self, program: &Path, port: u16) -> Result<Proc> {
        let mut cmd = Command::new(program);
        cmd.args([
            "-s",
            &self.sessions.to_string(),
            "-m",
            &self.messages.to_string(),
            "-l",
            &self.size.to_string(),
            // Keep each session open for its next message, like a real sending MTA.
            "-d",
            "-f",
            "sender@source.bench.test",
            "-t",
            &self.to,
            "-M",
            "source.bench.test",
            &format!("127.0.0.1:{port}"),
        ]);
        Proc::spawn("smtp-source", cmd)
    }
}

// ----- smtp-sink -----

/// A running `smtp-sink` on 127.0.0.1: accepts everything, stores nothing.
pub struct SmtpSink {
    pub port: u16,
    proc: Proc,
}

impl SmtpSink {
    /// With `max_connections`, raise smtp-sink's limit of simultaneous connections (`-m`,
    /// default 256; beyond it connections wait in the kernel's queue, ungreeted).
    pub async fn start(program: &Path, max_connections: Option<usize>) -> Result<SmtpSink> {
        for _ in 0..10 {
            let port = procs::free_port()?;
            let name = random_name("sink");
            let mut cmd = Command::new(program);
            cmd.args(["-h", &name]);
            if procs::is_root() {
                cmd.args(["-u", "root"]);
            }
            if let Some(m) = max_connections {
                cmd.args(["-m", &m.to_string()]);
            }
            cmd.arg(format!("127.0.0.1:{port}")).arg("1024");
            let mut proc = Proc::spawn("smtp-sink", cmd)?;
            let ok = {
                let name = name.clone();
                let proc_ref = &mut proc;
                tokio::task::block_in_place(|| {
                    greets_as(port, &name, Duration::from_secs(10), || {
                        proc_ref.exited().is_none()
                    })
                })
            };
            if ok {
                return Ok(SmtpSink { port, proc });
            }
        }
        bail!("smtp-sink could not be started on any of 10 random ports")
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid().unwrap_or(0)
    }
}

// ----- the throwaway Postfix -----

/// A Postfix instance of our own on loopback, holding every message it accepts (one fsync per
/// message before its 250, like our store).
pub struct Postfix {
    pub port: u16,
    program: PathBuf,
    conf: PathBuf,
    queue: PathBuf,
    log: PathBuf,
    stopped: bool,
}

impl Postfix {
    /// Configure and start an instance under `base` that accepts mail for `domain` and holds
    /// it; with `tls` (certificate, key) it also offers STARTTLS. The error is the reason it is
    /// unavailable.
    pub async fn start(base: &Path, domain: &str, tls: Option<(&Path, &Path)>) -> Result<Postfix, String> {
        let program = find("postfix", "postfix")?;
        if !procs::is_root() {
            return Err("postfix start needs root".into());
        }
        let mut last = String::new();
        for attempt in 0..3 {
            let dir = base.join(format!("postfix-{attempt}-{}", rand::random::<u32>()));
            match Self::try_start(&program, &dir, domain, tls).await {
                Ok(p) => return Ok(p),
                Err(e) => last = format!("{e:#}"),
            }
        }
        Err(format!("postfix did not start: {last}"))
    }

    async fn try_start(
        program: &Path,
        dir: &Path,
        domain: &str,
        tls: Option<(&Path, &Path)>,
    ) -> Result<Postfix> {
        let conf = dir.join("conf");
        let queue = dir.join("queue");
        let data = dir.join("data");
        for d in [&conf, &queue, &data] {
            std::fs::create_dir_all(d)?;
        }
        // The daemons run as the postfix user: they must reach the queue through our
        // directories (the harness makes its work directory 0755 as well).
        for d in [dir, &conf, &queue] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
        }
        chown_to_postfix(&data)?;
        let port = procs::free_port()?;
        let name = random_name("postfix");
        let log = dir.join("maillog");
        let mut main = format!(
            "compatibility_level = 2\n\
             queue_directory = {queue}\n\
             data_directory = {data}\n\
             maillog_file_prefixes = {dir}\n\
             maillog_file = {log}\n\
             mail_owner = postfix\n\
             setgid_group = postdrop\n\
             inet_interfaces = loopback-only\n\
             inet_protocols = ipv4\n\
             myhostname = {name}\n\
             mydestination = {domain}\n\
             local_recipient_maps =\n\
             alias_maps =\n\
             alias_database =\n\
             local_transport = discard:\n\
             smtpd_end_of_data_restrictions = check_client_access static:HOLD\n",
            queue = queue.display(),
            data = data.display(),
            dir = dir.display(),
            log = log.display(),
        );
        if let Some((cert, key)) = tls {
            main.push_str(&format!(
                "smtpd_tls_security_level = may\nsmtpd_tls_cert_file = {}\nsmtpd_tls_key_file = {}\n",
                cert.display(),
                key.display()
            ));
        }
        std::fs::write(conf.join("main.cf"), main)?;
        // No chroot: the queue is wherever the harness's work directory is.
        let master = format!(
            "127.0.0.1:{port} inet n - n - - smtpd\n{}",
            [
                "pickup unix n - n 60 1 pickup",
                "cleanup unix n - n - 0 cleanup",
                "qmgr unix n - n 300 1 qmgr",
                "tlsmgr unix - - n 1000? 1 tlsmgr",
                "rewrite unix - - n - - trivial-rewrite",
                "bounce unix - - n - 0 bounce",
                "defer unix - - n - 0 bounce",
                "trace unix - - n - 0 bounce",
                "verify unix - - n - 1 verify",
                "flush unix n - n 1000? 0 flush",
                "proxymap unix - - n - - proxymap",
                "smtp unix - - n - - smtp",
                "relay unix - - n - - smtp",
                "showq unix n - n - - showq",
                "error unix - - n - - error",
                "retry unix - - n - - error",
                "discard unix - - n - - discard",
                "local unix - n n - - local",
                "anvil unix - - n - 1 anvil",
                "scache unix - - n - 1 scache",
                "postlog unix-dgram n - n - 1 postlogd",
            ]
            .join("\n")
        );
        std::fs::write(conf.join("master.cf"), master + "\n")?;
        let pf = Postfix {
            port,
            program: program.to_path_buf(),
            conf,
            queue,
            log,
            stopped: false,
        };
        let f = pf.command("start").await?;
        if !f.success() {
            // `postfix` prints only to a terminal; its reasons are in the log file.
            bail!("{}; log:\n{}", f.describe("postfix start"), pf.log_tail());
        }
        let ok = tokio::task::block_in_place(|| greets_as(port, &name, Duration::from_secs(20), || true));
        if !ok {
            bail!(
                "postfix started but 127.0.0.1:{port} does not greet as {name}; log:\n{}",
                pf.log_tail()
            );
        }
        Ok(pf)
    }

    async fn command(&self, verb: &str) -> Result<Finished> {
        let mut cmd = Command::new(&self.program);
        cmd.arg("-c").arg(&self.conf).arg(verb);
        procs::run("postfix", cmd, Duration::from_secs(60)).await
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Messages in the hold queue: every message it accepted, if it kept its promise.
    pub fn held(&self) -> u64 {
        count_files(&self.queue.join("hold"))
    }

    /// `postfix stop`, then make sure the master is gone.
    pub async fn stop(mut self) {
        let _ = self.command("stop").await;
        self.reap();
        self.stopped = true;
    }

    /// Wait for the master to go; kill it (and its process group) if it does not.
    fn reap(&self) {
        let Some(pid) = std::fs::read_to_string(self.queue.join("pid/master.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while procs::alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if procs::alive(pid) {
            procs::signal(pid, libc::SIGKILL);
            // The master is a session leader: its daemons share its process group.
            // SAFETY: kill(2) on the process group of the master we started.
            unsafe {
                libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
            }
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        // Synchronous on purpose: this also runs while a panic or Ctrl-C unwinds.
        let _ = std::process::Command::new(&self.program)
            .arg("-c")
            .arg(&self.conf)
            .arg("stop")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        self.reap();
    }
}

fn chown_to_postfix(path: &Path) -> Result<()> {
    let name = std::ffi::CString::new("postfix")?;
    // SAFETY: getpwnam with a valid C string; the result is read at once, before any other
    // call that could overwrite its static buffer.
    let (uid, gid) = unsafe {
        let pw = libc::getpwnam(name.as_ptr());
        if pw.is_null() {
            bail!("no postfix user");
        }
        ((*pw).pw_uid, (*pw).pw_gid)
    };
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: chown with a valid C string.
    if unsafe { libc::chown(c.as_ptr(), uid, gid) } != 0 {
        bail!("chown {}: {}", path.display(), std::io::Error::last_os_error());
    }
    Ok(())
}

/// Regular files under `dir`, recursively (Postfix may hash queue directories).
pub fn count_files(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => count_files(&e.path()),
            Ok(t) if t.is_file() => 1,
            _ => 0,
        })
        .sum()
}

// ----- fetchmail -----

/// A running `fetchmail` (`proto odmr`) for our account, relaying into 127.0.0.1:`sink`; with
/// `ca` it uses implicit TLS (`ssl`, polling `localhost` so the name matches the certificate):
/// fetchmail has no STARTTLS for ODMR.
pub struct Fetchmail {
    pub proc: Proc,
    _home: tempfile::TempDir,
}

impl Fetchmail {
    pub fn spawn(
        program: &Path,
        base: &Path,
        odmr_port: u16,
        sink: u16,
        ca: Option<&Path>,
    ) -> Result<Fetchmail> {
        let home = tempfile::Builder::new()
            .prefix("fetchmail-")
            .tempdir_in(base)
            .context("fetchmail home")?;
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700))?;
        let rc = home.path().join("fetchmailrc");
        let (host, ssl) = match ca {
            Some(ca) => (
                "localhost",
                format!("    ssl sslcertck sslcertfile \"{}\"\n", ca.display()),
            ),
            None => ("127.0.0.1", String::new()),
        };
        std::fs::write(
            &rc,
            format!(
                "set no syslog\n\
                 poll {host} service {odmr_port} proto odmr\n    \
                     user \"{user}\" password \"{pass}\"\n    \
                     fetchdomains {domain}\n    \
                     smtphost 127.0.0.1/{sink}\n{ssl}",
                user = crate::odmr::USER,
                pass = crate::odmr::PASSWORD,
                domain = crate::odmr::DOMAIN,
            ),
        )?;
        std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o600))?;
        // As root fetchmail's lock is global (/var/run/fetchmail.pid): use our own.
        let pidfile = home.path().join("fetchmail.pid");
        let mut cmd = Command::new(program);
        cmd.arg("-f")
            .arg(&rc)
            .arg("--pidfile")
            .arg(&pidfile)
            .env("FETCHMAILHOME", home.path())
            .env("HOME", home.path());
        Ok(Fetchmail {
            proc: Proc::spawn("fetchmail", cmd)?,
            _home: home,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_counted_recursively() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), "").unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/b"), "").unwrap();
        std::fs::write(d.path().join("sub/c"), "").unwrap();
        assert_eq!(count_files(d.path()), 3);
        assert_eq!(count_files(&d.path().join("missing")), 0);
    }

    #[test]
    fn missing_program_names_its_package() {
        let e = find("no-such-program-bench", "pkg-x").unwrap_err();
        assert!(e.contains("pkg-x"), "{e}");
    }
}
