//! Abuse resistance that needs memory across sessions: connection counts (overall and per IP)
//! and AUTH failure throttling (per IP and per account).
//!
//! Invariants:
//! - A connection slot is held by a guard and freed when the session ends, however it ends.
//! - Never lock out before 3 failures (RFC 4954 §9). After that each failure adds a delay, and
//!   past the lockout threshold AUTH is refused with a temporary error until the window
//!   passes, so a legitimate customer recovers by itself.
//! - State is per node and bounded: entries older than the window are pruned.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Failures (per IP, and per account) before AUTH is refused for `lockout`.
    pub auth_lockout_after: u32,
    pub lockout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1000,
            max_connections_per_ip: 20,
            auth_lockout_after: 10,
            lockout: Duration::from_secs(15 * 60),
        }
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

#[derive(Default)]
struct Failures {
    by_ip: HashMap<IpAddr, (u32, Instant)>,
    by_account: HashMap<String, (u32, Instant)>,
}

pub struct Guards {
    limits: Limits,
    counts: Arc<Mutex<Counts>>,
    failures: Mutex<Failures>,
}

/// Holds one connection slot until dropped.
pub struct Slot {
    ip: IpAddr,
    counts: Arc<Mutex<Counts>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

/// What the AUTH throttle says before an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthGate {
    /// Go ahead, after this delay (zero for the first failures).
    Proceed(Duration),
    /// Too many failures: refuse with 454 4.7.0 for now.
    LockedOut,
}

impl Guards {
    pub fn new(limits: Limits) -> Self {
        Guards {
            limits,
            counts: Arc::default(),
            failures: Mutex::default(),
        }
    }

    /// Take a connection slot, or say which limit is reached.
    pub fn connect(&self, ip: IpAddr) -> Result<Slot, &'static str> {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if c.total >= self.limits.max_connections {
            return Err("too many connections");
        }
        let n = c.per_ip.entry(ip).or_default();
        if *n >= self.limits.max_connections_per_ip {
            return Err("too many connections from your address");
        }
        *n += 1;
        c.total += 1;
        Ok(Slot {
            ip,
            counts: self.counts.clone(),
        })
    }

    /// Before an AUTH attempt from `ip` (the account is not known yet for every mechanism).
    pub fn auth_gate(&self, ip: IpAddr, account: Option<&str>) -> AuthGate {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let window = self.limits.lockout;
        f.by_ip.retain(|_, (_, t)| t.elapsed() < window);
        f.by_account.retain(|_, (_, t)| t.elapsed() < window);
        let by_ip = f.by_ip.get(&ip).map_or(0, |(n, _)| *n);
        let by_account = account.and_then(|a| f.by_account.get(a)).map_or(0, |(n, _)| *n);
        let worst = by_ip.max(by_account);
        if worst >= self.limits.auth_lockout_after.max(3) {
            return AuthGate::LockedOut;
        }
        // RFC 4954 §9: no penalty for the first few; then a growing delay (capped).
        let delay = if worst < 3 {
            Duration::ZERO
        } else {
            Duration::from_millis(500 * u64::from(worst - 2)).min(Duration::from_secs(5))
        };
        AuthGate::Proceed(delay)
    }

    pub fn auth_failed(&self, ip: IpAddr, account: &str) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let e = f.by_ip.entry(ip).or_insert((0, now));
        *e = (e.0 + 1, now);
        let e = f.by_account.entry(account.to_string()).or_insert((0, now));
        *e = (e.0 + 1, now);
        // Bound memory under a spray of made-up account names.
        if f.by_account.len() > 100_000 {
            f.by_account.clear();
        }
    }

    pub fn auth_succeeded(&self, ip: IpAddr, account: &str) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        f.by_ip.remove(&ip);
        f.by_account.remove(account);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    #[test]
    fn connection_slots_are_counted_and_freed() {
        let g = Guards::new(Limits {
            max_connections: 3,
            max_connections_per_ip: 2,
            ..Limits::default()
        });
        let a = g.connect(ip(1)).unwrap();
        let _b = g.connect(ip(1)).unwrap();
        assert!(g.connect(ip(1)).is_err(), "per-IP limit");
        let _c = g.connect(ip(2)).unwrap();
        assert!(g.connect(ip(3)).is_err(), "overall limit");
        drop(a);
        assert!(g.connect(ip(1)).is_ok());
    }

    #[test]
    fn auth_failures_delay_then_lock_out_but_never_before_three() {
        let g = Guards::new(Limits {
            auth_lockout_after: 5,
            ..Limits::default()
        });
        for _ in 0..3 {
            assert_eq!(
                g.auth_gate(ip(1), Some("acme")),
                AuthGate::Proceed(Duration::ZERO)
            );
            g.auth_failed(ip(1), "acme");
        }
        assert!(matches!(g.auth_gate(ip(1), Some("acme")), AuthGate::Proceed(d) if d > Duration::ZERO));
        g.auth_failed(ip(1), "acme");
        g.auth_failed(ip(1), "acme");
        assert_eq!(g.auth_gate(ip(1), None), AuthGate::LockedOut);
        // The account is locked from another address too.
        assert_eq!(g.auth_gate(ip(9), Some("acme")), AuthGate::LockedOut);
        assert_eq!(
            g.auth_gate(ip(9), Some("other")),
            AuthGate::Proceed(Duration::ZERO)
        );
        g.auth_succeeded(ip(1), "acme");
        assert_eq!(
            g.auth_gate(ip(1), Some("acme")),
            AuthGate::Proceed(Duration::ZERO)
        );
    }
}
