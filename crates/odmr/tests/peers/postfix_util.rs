//! A throwaway Postfix (smtpd, cleanup, queue manager) as the customer's local MTA, for the
//! tests that need a real one rather than `smtp-sink`: it offers PIPELINING and CHUNKING,
//! checks envelopes as a real MTA does, and keeps what it accepted where `postqueue` and
//! `postcat` can show it.
//!
//! Each instance has its own configuration, queue and data directories under a temporary
//! directory, listens on 127.0.0.1 only (a random free port, in its own `master.cf`), accepts
//! mail for the domains it is given (`mydestination`; relaying is refused) and holds every
//! message it accepts in its hold queue (`smtpd_end_of_data_restrictions` with `HOLD`), so
//! nothing is ever delivered anywhere. Its log goes to a file of its own (`maillog_file`). It
//! is stopped on drop, also while a failed assertion unwinds (and by a watchdog after 10
//! minutes, should the test process be killed without unwinding).
//!
//! `postfix start` needs root: as another user the test is skipped with the reason (CI runs
//! as root). A missing Postfix skips the test, or fails it under `CI=true` (see
//! `common::peer`).
//!
//! Included with `#[path = "peers/postfix_util.rs"] mod postfix_util;` (the test file must
//! also declare `mod common;` and `#[path = "peers/interop_util.rs"] mod interop_util;`).
#![allow(dead_code)]

use crate::common;
use crate::interop_util::{is_root, random_free_port, random_u64, run_timeout};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running Postfix instance of our own.
pub struct Postfix {
    /// The SMTP port on 127.0.0.1.
    pub port: u16,
    /// Its `myhostname`, random, in its greeting and in the Received: field it adds.
    pub name: String,
    postfix: PathBuf,
    postqueue: PathBuf,
    postcat: PathBuf,
    conf: PathBuf,
    queue: PathBuf,
    log: PathBuf,
    stopped: bool,
    /// Stops the instance after 10 minutes should this process die without running Drop
    /// (killed by a signal); Drop ends it first.
    watchdog: Option<Child>,
    // Last: removed after Drop has stopped the instance.
    _dir: tempfile::TempDir,
}

/// One message in the hold queue, as `postqueue -j` and `postcat` show it.
#[derive(Debug, Clone)]
pub struct Held {
    pub queue_id: String,
    /// The envelope sender ("" for the null sender).
    pub sender: String,
    /// The envelope recipients, in Postfix's order.
    pub recipients: Vec<String>,
    /// The message as stored (LF line ends), Postfix's own Received: field first.
    pub content: Vec<u8>,
}

impl Postfix {
    /// Start an instance accepting mail for `domains`, with `extra` lines appended to its
    /// `main.cf`. `None` (test skipped) when Postfix is missing or we are not root.
    pub fn start(domains: &[&str], extra: &str) -> Option<Postfix> {
        let postfix = common::peer("postfix", "postfix")?;
        let postqueue = common::peer("postqueue", "postfix")?;
        let postcat = common::peer("postcat", "postfix")?;
        if !is_root() {
            common::skip("a throwaway Postfix needs root (`postfix start`); CI runs as root");
            return None;
        }
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(&postfix, &postqueue, &postcat, domains, extra) {
                Ok(p) => return Some(p),
                Err(e) => last = e,
            }
        }
        panic!("postfix did not start in 3 attempts; the last one:\n{last}");
    }

    fn try_start(
        postfix: &Path,
        postqueue: &Path,
        postcat: &Path,
        domains: &[&str],
        extra: &str,
    ) -> Result<Postfix, String> {
        let dir = tempfile::Builder::new().prefix("postfix-").tempdir().unwrap();
        let base = dir.path().to_path_buf();
        let (conf, queue, data) = (base.join("conf"), base.join("queue"), base.join("data"));
        for d in [&conf, &queue, &data] {
            std::fs::create_dir(d).unwrap();
        }
        // The daemons run as the postfix user: they must reach the queue through our
        // directories, and write their data directory.
        for d in [&base, &conf, &queue] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let st = Command::new("chown")
            .args(["postfix:postfix"])
            .arg(&data)
            .status()
            .expect("run chown");
        assert!(st.success(), "chown postfix:postfix {}: {st}", data.display());

        let port = random_free_port();
        let name = format!("postfix{}.test", random_u64() % 1_000_000);
        let log = base.join("maillog");
        let main = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {queue}\n\
             data_directory = {data}\n\
             maillog_file_prefixes = {base}\n\
             maillog_file = {log}\n\
             mail_owner = postfix\n\
             setgid_group = postdrop\n\
             inet_interfaces = loopback-only\n\
             inet_protocols = ipv4\n\
             myhostname = {name}\n\
             mydestination = {domains}\n\
             local_recipient_maps =\n\
             alias_maps =\n\
             alias_database =\n\
             local_transport = discard:\n\
             biff = no\n\
             # A customer's MTA takes mail for its own domains only, from anyone.\n\
             smtpd_relay_restrictions = reject_unauth_destination\n\
             # Keep every header as it came (no rewriting, no missing headers added).\n\
             local_header_rewrite_clients =\n\
             # Hold every accepted message: the tests read it with postcat.\n\
             smtpd_end_of_data_restrictions = check_client_access static:HOLD\n\
             {extra}\n",
            queue = queue.display(),
            data = data.display(),
            base = base.display(),
            log = log.display(),
            domains = domains.join(", "),
        );
        std::fs::write(conf.join("main.cf"), main).unwrap();
        // No chroot: the queue is in our temporary directory.
        let services = [
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
        ];
        let master = format!("127.0.0.1:{port} inet n - n - - smtpd\n{}\n", services.join("\n"));
        std::fs::write(conf.join("master.cf"), master).unwrap();

        let mut pf = Postfix {
            port,
            name,
            postfix: postfix.to_path_buf(),
            postqueue: postqueue.to_path_buf(),
            postcat: postcat.to_path_buf(),
            conf,
            queue,
            log,
            stopped: false,
            watchdog: None,
            _dir: dir,
        };
        let run = pf.postfix_command("start");
        if run.code != Some(0) {
            // `postfix` prints to a terminal only; its reasons are in the log file.
            pf.stopped = true;
            return Err(format!(
                "postfix start exited {:?}: {}\nlog:\n{}",
                run.code,
                run.all(),
                pf.log_tail(30)
            ));
        }
        // From here on Drop stops it, whatever happens; the watchdog, if we are killed.
        pf.watchdog = Command::new("sh")
            .args([
                "-c",
                "sleep 600 & s=$!; trap 'kill $s; exit 0' TERM; wait $s; exec \"$0\" -c \"$1\" stop",
            ])
            .arg(&pf.postfix)
            .arg(&pf.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        if !pf.greets() {
            return Err(format!(
                "postfix started but 127.0.0.1:{port} does not greet as {}; log:\n{}",
                pf.name,
                pf.log_tail(30)
            ));
        }
        Ok(pf)
    }

    fn postfix_command(&self, verb: &str) -> crate::interop_util::Run {
        run_timeout(60, &self.postfix, &["-c", self.conf.to_str().unwrap(), verb], &[])
    }

    /// Whether 127.0.0.1:port greets with our name within 20 s.
    fn greets(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut greeting = String::new();
                let _ = BufReader::new(&s).read_line(&mut greeting);
                let _ = (&s).write_all(b"QUIT\r\n");
                return greeting.starts_with("220 ") && greeting.contains(&self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Its whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of its log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// smtpd's summary of each finished session, e.g. `ehlo=1 mail=2 rcpt=3 bdat=2 quit=1
    /// commands=9` (a refused command shows as `rcpt=2/3`).
    pub fn sessions(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("postfix/smtpd[") && l.contains(": disconnect from "))
            .filter_map(|l| l.split_once("]: disconnect from ").map(|(_, r)| r))
            .filter_map(|r| r.split_once(' ').map(|(_, counts)| counts.to_string()))
            // Our own readiness probe (connect, read the greeting, QUIT).
            .filter(|c| c != "quit=1 commands=1")
            .collect()
    }

    /// Every message in its queues (all held, if it kept its promise), sorted by sender then
    /// recipients.
    pub fn held(&self) -> Vec<Held> {
        let run = run_timeout(
            30,
            &self.postqueue,
            &["-c", self.conf.to_str().unwrap(), "-j"],
            &[],
        );
        assert_eq!(
            run.code,
            Some(0),
            "postqueue -j failed:\n{}\nlog:\n{}",
            run.all(),
            self.log_tail(20)
        );
        let mut held: Vec<Held> = run
            .stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: serde_json::Value =
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("postqueue -j ({e}): {l}"));
                assert_eq!(
                    v["queue_name"],
                    "hold",
                    "not held: {l}\nlog:\n{}",
                    self.log_tail(20)
                );
                let queue_id = v["queue_id"].as_str().unwrap().to_string();
                let content = self.postcat(&queue_id, "-bh");
                // postqueue shows the null sender as MAILER-DAEMON; the queue file has it as is.
                let envelope = String::from_utf8_lossy(&self.postcat(&queue_id, "-e")).into_owned();
                let sender = envelope
                    .lines()
                    .find_map(|l| l.strip_prefix("sender:"))
                    .unwrap_or_else(|| panic!("no sender record in {queue_id}:\n{envelope}"))
                    .trim()
                    .to_string();
                Held {
                    sender,
                    recipients: v["recipients"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|r| r["address"].as_str().unwrap().to_string())
                        .collect(),
                    queue_id,
                    content,
                }
            })
            .collect();
        held.sort_by(|a, b| (&a.sender, &a.recipients).cmp(&(&b.sender, &b.recipients)));
        held
    }

    /// `postcat -c CONF WHAT -q QUEUE_ID`: with `-bh` a queued message's header and body,
    /// exactly as stored; with `-e` its envelope records.
    fn postcat(&self, queue_id: &str, what: &str) -> Vec<u8> {
        let out = Command::new("timeout")
            .args(["--kill-after=5", "30"])
            .arg(&self.postcat)
            .arg("-c")
            .arg(&self.conf)
            .args([what, "-q", queue_id])
            .stdin(Stdio::null())
            .output()
            .expect("run postcat");
        assert!(
            out.status.success(),
            "postcat {what} -q {queue_id} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// `postfix stop`, then make sure its master is gone.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if let Some(mut w) = self.watchdog.take() {
            let _ = Command::new("kill").args(["-TERM", &w.id().to_string()]).status();
            let _ = w.wait();
        }
        let master = std::fs::read_to_string(self.queue.join("pid/master.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        // Not `run_timeout`: this also runs while a panic unwinds, and must not panic again.
        let _ = Command::new("timeout")
            .args(["--kill-after=5", "30"])
            .arg(&self.postfix)
            .arg("-c")
            .arg(&self.conf)
            .arg("stop")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let Some(pid) = master else { return };
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if alive(pid) {
            // The master leads its own process group, shared by its daemons.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Whether process `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "PID (comm) STATE …"; comm may hold spaces and parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}
