//! Child processes under time limits, their memory from /proc, free ports and the file limit.
//!
//! Invariants:
//! - Every child is spawned with `kill_on_drop`, so dropping the measurement that owns it (a
//!   panic, an error, or Ctrl-C dropping the whole run) kills it: nothing outlives the harness
//!   except what daemonizes itself (Postfix, which has its own guard in `peers.rs`).
//! - Every wait has a deadline; a child that overruns is killed and reported as timed out.
//! - Output is drained continuously (a full pipe would stall a child and skew its timing), and
//!   only the first and last lines are kept, so a chatty child cannot grow our memory.

use anyhow::{bail, Context, Result};
use std::collections::VecDeque;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Lines kept from the start and from the end of a child's output.
const KEEP_FIRST: usize = 200;
const KEEP_LAST: usize = 200;

#[derive(Default)]
struct Output {
    first: Vec<String>,
    last: VecDeque<String>,
}

/// A running child whose stdout and stderr are collected (first and last lines).
pub struct Proc {
    child: Child,
    out: Arc<Mutex<Output>>,
    pub started: Instant,
}

/// How a child ended.
#[derive(Debug)]
pub struct Finished {
    /// `None`: it overran its deadline and was killed.
    pub status: Option<ExitStatus>,
    pub elapsed: Duration,
    pub output: String,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// A short description for an error message.
    pub fn describe(&self, name: &str) -> String {
        match self.status {
            None => format!(
                "{name} timed out after {:.1} s; output:\n{}",
                self.elapsed.as_secs_f64(),
                self.output
            ),
            Some(s) => format!("{name} exited with {s}; output:\n{}", self.output),
        }
    }
}

impl Proc {
    /// Spawn `cmd` with stdin closed and its output collected.
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Proc> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| format!("cannot start {name}"))?;
        let out = Arc::new(Mutex::new(Output::default()));
        if let Some(o) = child.stdout.take() {
            tokio::spawn(collect(BufReader::new(o), out.clone()));
        }
        if let Some(e) = child.stderr.take() {
            tokio::spawn(collect(BufReader::new(e), out.clone()));
        }
        Ok(Proc {
            child,
            out,
            started: Instant::now(),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The first lines of output (where start-up messages are).
    pub fn first_lines(&self) -> Vec<String> {
        self.out.lock().unwrap().first.clone()
    }

    /// What was collected: the first lines, then (if more came) the last lines.
    pub fn output(&self) -> String {
        let o = self.out.lock().unwrap();
        let mut s = o.first.join("\n");
        if !o.last.is_empty() {
            s.push_str("\n[...]\n");
            s.push_str(&o.last.iter().cloned().collect::<Vec<_>>().join("\n"));
        }
        s
    }

    /// Whether it has exited (without waiting).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Wait up to `limit` for it to exit; kill it if it does not.
    pub async fn wait(mut self, limit: Duration) -> Finished {
        let status = match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(Ok(s)) => Some(s),
            _ => {
                let _ = self.child.kill().await;
                None
            }
        };
        let elapsed = self.started.elapsed();
        // Let the collectors read what is left in the pipes.
        tokio::time::sleep(Duration::from_millis(20)).await;
        Finished {
            status,
            elapsed,
            output: self.output(),
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited after `grace`.
    pub async fn stop(self, grace: Duration) -> Finished {
        if let Some(pid) = self.child.id() {
            signal(pid, libc::SIGTERM);
        }
        self.wait(grace).await
    }
}

async fn collect<R: tokio::io::AsyncRead + Unpin>(r: BufReader<R>, out: Arc<Mutex<Output>>) {
    let mut lines = r.lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut o = out.lock().unwrap();
        if o.first.len() < KEEP_FIRST {
            o.first.push(line);
        } else {
            if o.last.len() == KEEP_LAST {
                o.last.pop_front();
            }
            o.last.push_back(line);
        }
    }
}

/// Run `cmd` to completion within `limit`.
pub async fn run(name: &str, cmd: Command, limit: Duration) -> Result<Finished> {
    Ok(Proc::spawn(name, cmd)?.wait(limit).await)
}

pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) with a pid we spawned; no memory is shared.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !matches!(
            s.rsplit_once(") ").map(|(_, r)| r.chars().next()),
            Some(Some('Z'))
        ),
        Err(_) => false,
    }
}

// ----- memory -----

/// Resident memory of a process, from /proc/PID/status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mem {
    /// VmRSS, KiB.
    pub rss_kib: u64,
    /// VmHWM (peak RSS since start or the last reset), KiB.
    pub hwm_kib: u64,
}

impl Mem {
    pub fn rss_mib(&self) -> f64 {
        self.rss_kib as f64 / 1024.0
    }
}

/// Parse the `VmRSS:` and `VmHWM:` lines of /proc/PID/status.
pub fn parse_status(text: &str) -> Option<Mem> {
    let field = |key: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    };
    Some(Mem {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

pub fn mem(pid: u32) -> Result<Mem> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    match parse_status(&text) {
        Some(m) => Ok(m),
        None => bail!("no VmRSS/VmHWM in /proc/{pid}/status"),
    }
}

/// Reset a process's VmHWM to its current RSS (`echo 5 > /proc/PID/clear_refs`); false if the
/// kernel refused.
pub fn reset_hwm(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

// ----- ports and limits -----

/// A port that was free a moment ago on 127.0.0.1, for peers that need a port number on their
/// command line (smtp-sink, Postfix). Callers must check that the server answering is theirs.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Raise our soft limit of open files to the hard limit (children inherit it); returns the new
/// soft limit.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim = want;
            }
        }
    }
    // rlim_t is u64 on Linux but not everywhere.
    #[allow(clippy::unnecessary_cast)]
    let cur = lim.rlim_cur as u64;
    cur
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Copy the files of a directory (not recursive): a stopped store, to run several variants on
/// the same queue.
pub fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_type()?.is_file() {
            std::fs::copy(e.path(), to.join(e.file_name()))
                .with_context(|| format!("copy {}", e.path().display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read() {
        let text =
            "Name:\todmr\nVmPeak:\t  123456 kB\nVmHWM:\t   40960 kB\nVmRSS:\t   20480 kB\nThreads:\t3\n";
        let m = parse_status(text).unwrap();
        assert_eq!(
            m,
            Mem {
                rss_kib: 20480,
                hwm_kib: 40960
            }
        );
        assert_eq!(m.rss_mib(), 20.0);
        assert_eq!(
            parse_status("Name:\tx\nVmRSS:\t1 kB\n"),
            None,
            "no VmHWM (a kernel thread)"
        );
    }

    #[test]
    fn our_own_status_parses() {
        let m = mem(std::process::id()).unwrap();
        assert!(m.rss_kib > 0 && m.hwm_kib >= m.rss_kib, "{m:?}");
        assert!(alive(std::process::id()));
    }

    #[tokio::test]
    async fn a_child_over_its_limit_is_killed() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let f = run("sleep", cmd, Duration::from_millis(200)).await.unwrap();
        assert!(f.status.is_none());
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let f = run("sh", cmd, Duration::from_secs(10)).await.unwrap();
        assert_eq!(f.status.and_then(|s| s.code()), Some(3));
        assert!(
            f.output.contains("out") && f.output.contains("err"),
            "{}",
            f.output
        );
    }
}
