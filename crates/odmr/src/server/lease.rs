//! Who holds a delivery lease, and the startup sweep that frees the leases of this node's dead
//! sessions, so that a server restarted after a crash (kill -9, the OOM killer, an abort)
//! delivers its customers' mail at once instead of answering `451` until the dead process's
//! leases expire. After a reboot nothing is swept (the boot id changed, see below); by then the
//! leases have usually expired anyway.
//!
//! A holder names the session that took the lease, and which process that was:
//! `<hostname>/<pid>/<session> boot=<boot id> pidns=<pid namespace> start=<start time>`.
//! - The boot id (`/proc/sys/kernel/random/boot_id`) is random per boot of a kernel: equal boot
//!   ids mean the same machine (or VM), since the same boot.
//! - The pid namespace (the inode of `/proc/self/ns/pid`) says whose numbering the pid is in:
//!   containers on one kernel each have their own.
//! - The start time (field 22 of `/proc/<pid>/stat`, clock ticks since boot) tells a process
//!   from a later one that was given the same pid.
//!
//! Invariants of the sweep:
//! - **Only this node's leases, only dead holders.** A lease is dropped only if its holder has
//!   this process's boot id and pid namespace, and the holder process is provably gone: no such
//!   pid, a zombie, or the pid now belongs to a process started at another time. Leases of
//!   other machines, other containers or other boots, holders without these fields (older
//!   versions, systems without `/proc`), live processes and processes that cannot be checked are
//!   left alone to expire after `[odmr] lease_ttl`. The hostname plays no part: in a fleet it
//!   need not be unique (containers often share one), the boot id and pid namespace are.
//! - **Fencing still protects correctness.** Every outcome is recorded under the lease's token,
//!   so even a lease dropped wrongly could not corrupt the queue: its holder would stop at its
//!   next write. The cost would be a duplicate delivery, hence the conservative checks.
//! - A dropped lease is deleted by token only: if it expired and another session took the
//!   domain meanwhile, the new lease (another token) is untouched.

use odmr_store::{Store, StoreError};
use std::collections::BTreeMap;

/// Which process, on which kernel and in which pid numbering.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Process {
    boot: String,
    pidns: u64,
    pid: u32,
    start: u64,
}

/// This process, as it signs the leases it takes.
#[derive(Debug, Clone)]
pub struct Identity {
    hostname: String,
    pid: u32,
    /// `None` where `/proc` cannot say: then holders carry no identity and nothing is swept.
    me: Option<Process>,
}

impl Identity {
    pub fn of_this_process() -> Identity {
        let pid = std::process::id();
        let me = (|| {
            Some(Process {
                boot: read_boot_id()?,
                pidns: read_pidns("self")?,
                pid,
                start: read_stat("self")?.1,
            })
        })();
        Identity {
            hostname: hostname(),
            pid,
            me,
        }
    }

    /// The holder text of a lease taken by `session` of this process.
    pub fn holder(&self, session: &str) -> String {
        let base = format!("{}/{}/{}", self.hostname, self.pid, session);
        match &self.me {
            Some(p) => format!("{base} boot={} pidns={} start={}", p.boot, p.pidns, p.start),
            None => base,
        }
    }
}

/// A holder as operators read it (`odmr lease list`): `host/pid/session`, without the process
/// identity that only the sweep needs.
pub fn shown(holder: &str) -> &str {
    holder.split_whitespace().next().unwrap_or(holder)
}

/// What the system says about a pid of our namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// No process has this pid.
    Gone,
    /// A process with this start time has it.
    Started(u64),
    /// It cannot be told (e.g. `/proc` mounted with `hidepid`): assume alive.
    Unknown,
}

fn probe(pid: u32) -> Probe {
    if let Some((state, start)) = read_stat(&pid.to_string()) {
        // A zombie (killed, not yet reaped by its parent) is as dead as a process can be.
        if matches!(state, 'Z' | 'X') {
            return Probe::Gone;
        }
        return Probe::Started(start);
    }
    // `kill(pid, 0)` checks existence without sending anything. Never with pid ≤ 0, which would
    // address a process group.
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return Probe::Unknown;
    };
    if p <= 0 {
        return Probe::Unknown;
    }
    // SAFETY: signal 0 sends nothing; `p` is a positive pid.
    let r = unsafe { libc::kill(p, 0) };
    if r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        Probe::Gone
    } else {
        Probe::Unknown
    }
}

/// Whether the lease `holder` was taken by a process of this node that is now surely dead.
fn dead_on_this_node(me: &Process, holder: &str, probe: impl Fn(u32) -> Probe) -> bool {
    let Some(h) = parse_holder(holder) else {
        return false;
    };
    if h.boot != me.boot || h.pidns != me.pidns {
        return false;
    }
    if h.pid == me.pid && h.start == me.start {
        return false;
    }
    match probe(h.pid) {
        Probe::Gone => true,
        Probe::Started(s) => s != h.start,
        Probe::Unknown => false,
    }
}

fn parse_holder(holder: &str) -> Option<Process> {
    let mut words = holder.split_whitespace();
    let mut path = words.next()?.split('/');
    let _host = path.next()?;
    let pid = path.next()?.parse().ok()?;
    let (mut boot, mut pidns, mut start) = (None, None, None);
    for w in words {
        match w.split_once('=') {
            Some(("boot", v)) if !v.is_empty() => boot = Some(v.to_string()),
            Some(("pidns", v)) => pidns = v.parse().ok(),
            Some(("start", v)) => start = v.parse().ok(),
            _ => {}
        }
    }
    Some(Process {
        boot: boot?,
        pidns: pidns?,
        pid,
        start: start?,
    })
}

/// Drop the leases of this node's dead processes (see the module's invariants); returns how
/// many leases were dropped.
pub async fn sweep(store: &Store, me: &Identity) -> Result<usize, StoreError> {
    let Some(my) = &me.me else {
        tracing::debug!("no process identity from /proc: leases of dead sessions expire by themselves");
        return Ok(0);
    };
    // One lease may span several domains (rows); decide once per token.
    let mut dead = BTreeMap::new();
    for row in store.lease_list().await? {
        if dead_on_this_node(my, &row.holder, probe) {
            dead.entry(row.token.clone())
                .or_insert_with(|| (row.lease(), Vec::new()))
                .1
                .push(row.domain);
        }
    }
    for (lease, domains) in dead.values() {
        store.lease_release(lease).await?;
        tracing::info!(holder = %lease.holder, domains = %domains.join(","), "freed the lease of a dead session of this node");
    }
    Ok(dead.len())
}

fn read_boot_id() -> Option<String> {
    let s = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let s = s.trim();
    (!s.is_empty() && !s.contains(char::is_whitespace)).then(|| s.to_string())
}

/// The inode of `/proc/<who>/ns/pid` (`pid:[4026531836]`).
fn read_pidns(who: &str) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{who}/ns/pid")).ok()?;
    let s = link.to_str()?;
    s.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
}

/// Fields 3 (`state`) and 22 (`starttime`) of `/proc/<who>/stat`.
fn read_stat(who: &str) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{who}/stat")).ok()?;
    stat_fields(&stat)
}

/// The state and start time in a `stat` line. The command name (field 2) is in parentheses and
/// may hold spaces and parentheses itself, so fields are counted from the last `)`: field 3
/// comes first.
fn stat_fields(stat: &str) -> Option<(char, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(22 - 4)?.parse().ok()?;
    Some((state, start))
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "node".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Process {
        Process {
            boot: "b0".into(),
            pidns: 7,
            pid: 100,
            start: 5000,
        }
    }

    #[test]
    fn holders_round_trip() {
        let id = Identity {
            hostname: "mx1".into(),
            pid: 100,
            me: Some(me()),
        };
        let h = id.holder("abc");
        assert_eq!(h, "mx1/100/abc boot=b0 pidns=7 start=5000");
        assert_eq!(parse_holder(&h), Some(me()));
        let bare = Identity {
            hostname: "mx1".into(),
            pid: 100,
            me: None,
        };
        assert_eq!(bare.holder("abc"), "mx1/100/abc");
        assert_eq!(shown(&h), "mx1/100/abc");
        assert_eq!(shown("mx1/100/abc"), "mx1/100/abc");
        assert_eq!(shown(""), "");
        for h in [
            "mx1/100/abc",
            "node-1",
            "",
            "mx1/x/abc boot=b0 pidns=7 start=5000",
            "mx1/100/abc boot= pidns=7 start=5000",
            "mx1/100/abc boot=b0 start=5000",
        ] {
            assert_eq!(parse_holder(h), None, "{h:?}");
        }
    }

    #[test]
    fn only_provably_dead_holders_of_this_node_are_swept() {
        let me = me();
        let h = |boot: &str, ns: u64, pid: u32, start: u64| {
            format!("mx1/{pid}/s boot={boot} pidns={ns} start={start}")
        };
        let gone = |_| Probe::Gone;
        let unknown = |_| Probe::Unknown;
        // A dead process of ours: no such pid, or its pid reused by a later process.
        assert!(dead_on_this_node(&me, &h("b0", 7, 42, 10), gone));
        assert!(dead_on_this_node(&me, &h("b0", 7, 42, 10), |_| Probe::Started(
            99
        )));
        // An earlier process that had our own pid.
        assert!(dead_on_this_node(&me, &h("b0", 7, 100, 10), |_| Probe::Started(
            5000
        )));
        // Alive, or cannot tell.
        assert!(!dead_on_this_node(&me, &h("b0", 7, 42, 10), |_| Probe::Started(
            10
        )));
        assert!(!dead_on_this_node(&me, &h("b0", 7, 42, 10), unknown));
        assert!(!dead_on_this_node(&me, &h("b0", 7, 100, 5000), gone), "ourselves");
        // Another boot, another container's pids, another format: never.
        assert!(!dead_on_this_node(&me, &h("b1", 7, 42, 10), gone));
        assert!(!dead_on_this_node(&me, &h("b0", 8, 42, 10), gone));
        assert!(!dead_on_this_node(&me, "mx1/42/s", gone));
        assert!(!dead_on_this_node(&me, "node-1", gone));
    }

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "4242 (odd) name) (x) S 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 \
                    987654 1000 100 18446744073709551615";
        assert_eq!(stat_fields(line), Some(('S', 987654)));
        assert_eq!(stat_fields(&line.replace(") S ", ") Z ")), Some(('Z', 987654)));
        assert_eq!(stat_fields("garbage"), None);
        assert_eq!(stat_fields("1 (x) S 1"), None);
    }

    #[test]
    fn this_process_is_alive_and_identified() {
        let id = Identity::of_this_process();
        let Some(me) = id.me.clone() else {
            // No /proc here: the sweep is off, which the integration tests do not rely on.
            return;
        };
        assert_eq!(probe(me.pid), Probe::Started(me.start));
        let holder = id.holder("s");
        assert_eq!(parse_holder(&holder), Some(me.clone()));
        assert!(!dead_on_this_node(&me, &holder, probe));
        // Beyond any pid_max: no such process. Pids that would address process groups: never
        // probed with kill.
        assert_eq!(probe(i32::MAX as u32), Probe::Gone);
        assert_eq!(probe(0), Probe::Unknown);
        assert_eq!(probe(u32::MAX), Probe::Unknown);
    }

    #[test]
    fn a_zombie_holder_is_dead_a_running_one_is_not() {
        if Identity::of_this_process().me.is_none() {
            return;
        }
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        assert!(matches!(probe(pid), Probe::Started(_)));
        child.kill().unwrap();
        // Killed but not reaped: a zombie until `wait`.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while probe(pid) != Probe::Gone {
            assert!(
                std::time::Instant::now() < deadline,
                "{:?}",
                read_stat(&pid.to_string())
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(read_stat(&pid.to_string()).map(|s| s.0), Some('Z'));
        child.wait().unwrap();
    }
}
