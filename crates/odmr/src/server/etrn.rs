//! ETRN (RFC 1985) on the MX listener: who may release which domains, and the queue run that
//! follows, over a new outbound connection to the account's fixed destination.
//!
//! Decision, in this order (RFC 1985 §5.1 leaves it to the server; our rules, also in
//! docs/protocol-decisions.md):
//! 1. The node's domains: `ETRN node` names one domain; `ETRN @node` every domain equal to
//!    `node` or ending in `.node` (RFC 1985 §5.3). Only domains of accounts that allow this
//!    client count: the session authenticated (AUTH on the MX) as the owning account, or the
//!    client's address is inside one of the account's `etrn_from` networks. None → `459`, with
//!    the same text whether the domain is unknown or another customer's (nothing leaks).
//! 2. An account without an ETRN destination → `458`.
//! 3. The per-domain lease, the one ATRN takes: held by a running delivery (ATRN, or an earlier
//!    ETRN still running) → `458`. This is also the rate limit **[project]**: one queue run per
//!    domain at a time; a second ETRN while one runs gets `458`, and may simply be repeated
//!    later. Nothing else throttles ETRN, as every run is bounded by what is queued.
//! 4. Nothing queued → `251` (the lease is given back at once); otherwise `253 <n>`.
//!
//! Then, after the reply (RFC 1985 §5.1: the client is not kept waiting for the run), a
//! background task per account connects to the destination (with a connect timeout) and runs
//! the same delivering client as after an ATRN turnaround ([`super::deliver`]): the same lease
//! with its heartbeat, the same per-recipient outcomes recorded under it. An unreachable
//! destination leaves everything queued; the lease is released either way.
//!
//! TLS on that connection follows `smtp.etrn_tls` ([`super::outbound`]: `may` by default).

use super::Shared;
use ipnet::IpNet;
use odmr_proto::smtp_server::EtrnVerdict;
use odmr_store::{Account, Lease};
use std::net::IpAddr;
use std::sync::Arc;
use tracing::Instrument;

/// One account's share of a request: the domains to run and where to.
struct Run {
    account: String,
    domains: Vec<String>,
    destination: String,
    lease: Lease,
}

/// Whether `ip` is inside one of `networks` (CIDR text as stored; unreadable entries count as
/// no match). IPv4-mapped IPv6 addresses are compared as IPv4.
pub fn allowed_from(ip: IpAddr, networks: &[String]) -> bool {
    let ip = ip.to_canonical();
    networks.iter().any(|n| match n.parse::<IpNet>() {
        Ok(net) => net.contains(&ip),
        Err(_) => {
            tracing::warn!(network = %n, "unreadable etrn_from network ignored");
            false
        }
    })
}

/// The domains of `a` that the node names.
fn matching(a: &Account, node: &str, subdomains: bool) -> Vec<String> {
    let suffix = format!(".{node}");
    a.domains
        .iter()
        .filter(|d| d.as_str() == node || (subdomains && d.ends_with(&suffix)))
        .cloned()
        .collect()
}

/// Decide on `ETRN [@]node` from `ip` (authenticated as `account`, if any), and start the queue
/// runs the verdict announces.
pub async fn request(
    shared: &Arc<Shared>,
    ip: IpAddr,
    account: Option<&str>,
    node: &str,
    subdomains: bool,
    session: &str,
) -> EtrnVerdict {
    let shown = if subdomains {
        format!("@{node}")
    } else {
        node.to_string()
    };
    let store = &shared.store;
    let accounts = match store.account_list().await {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "account lookup failed");
            return EtrnVerdict::Unable("temporary lookup failure, try again later".into());
        }
    };
    let mut wanted = Vec::new();
    for a in accounts {
        let domains = matching(&a, node, subdomains);
        if domains.is_empty() {
            continue;
        }
        if account == Some(a.name.as_str()) || allowed_from(ip, &a.etrn_from) {
            wanted.push((a, domains));
        }
    }
    if wanted.is_empty() {
        tracing::info!(node = %shown, authenticated = account.unwrap_or("-"), "ETRN refused: not allowed");
        return EtrnVerdict::NotAllowed;
    }
    if let Some((a, _)) = wanted.iter().find(|(a, _)| a.etrn_destination.is_none()) {
        tracing::info!(node = %shown, account = %a.name, "ETRN refused: the account has no ETRN destination");
        return EtrnVerdict::Unable("no ETRN destination is set for this node".into());
    }
    let holder = shared.identity.holder(session);
    let mut runs: Vec<Run> = Vec::new();
    let mut refusal = None;
    for (a, domains) in wanted {
        match store
            .lease_acquire(&domains, &holder, shared.cfg.odmr.lease_ttl)
            .await
        {
            Ok(Some(lease)) => runs.push(Run {
                account: a.name,
                destination: a.etrn_destination.unwrap_or_default(),
                domains,
                lease,
            }),
            Ok(None) => {
                tracing::info!(node = %shown, account = %a.name, "ETRN refused: a delivery for these domains is already running");
                refusal = Some("delivery already in progress, try again later");
                break;
            }
            Err(e) => {
                tracing::error!(error = %e, "lease acquisition failed");
                refusal = Some("temporary failure, try again later");
                break;
            }
        }
    }
    let mut total = 0u64;
    if refusal.is_none() {
        for r in &runs {
            match store.pending_count(&r.domains).await {
                Ok(n) => total += n,
                Err(e) => {
                    tracing::error!(error = %e, "queue lookup failed");
                    refusal = Some("temporary failure, try again later");
                    break;
                }
            }
        }
    }
    if refusal.is_some() || total == 0 {
        for r in &runs {
            release(shared, &r.lease).await;
        }
        return match refusal {
            Some(why) => EtrnVerdict::Unable(why.into()),
            None => {
                tracing::info!(node = %shown, "ETRN: no mail waiting");
                EtrnVerdict::NoMessages
            }
        };
    }
    for r in runs {
        let domains = r.domains.join(",");
        tracing::info!(node = %shown, account = %r.account, domains = %domains, destination = %r.destination, "ETRN accepted: queue run starting");
        let span = tracing::info_span!("etrn", account = %r.account, domains = %domains, destination = %r.destination);
        let shared2 = shared.clone();
        shared.spawn_background(Box::pin(queue_run(shared2, r).instrument(span)));
    }
    EtrnVerdict::PendingCount(total)
}

/// Connect to the destination and deliver under the lease; release it whatever happens.
async fn queue_run(shared: Arc<Shared>, r: Run) {
    let timeout = shared.cfg.smtp.etrn_connect_timeout;
    shared
        .etrn_tls
        .deliver(&shared, &r.destination, timeout, &r.lease, &r.domains)
        .await;
    release(&shared, &r.lease).await;
    tracing::info!("ETRN queue run finished");
}

async fn release(shared: &Shared, lease: &Lease) {
    if let Err(e) = shared.store.lease_release(lease).await {
        tracing::warn!(error = %e, "lease release failed; it expires by itself");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_match_v4_v6_and_mapped_addresses() {
        let nets = vec![
            "192.0.2.0/24".to_string(),
            "2001:db8::/32".to_string(),
            "junk".into(),
        ];
        assert!(allowed_from("192.0.2.7".parse().unwrap(), &nets));
        assert!(allowed_from("::ffff:192.0.2.7".parse().unwrap(), &nets));
        assert!(allowed_from("2001:db8::1".parse().unwrap(), &nets));
        assert!(!allowed_from("198.51.100.1".parse().unwrap(), &nets));
        assert!(!allowed_from("127.0.0.1".parse().unwrap(), &[]));
    }

    #[test]
    fn a_node_names_itself_and_with_at_its_subdomains_only() {
        let a = Account {
            name: "acme".into(),
            domains: vec![
                "example.org".into(),
                "a.example.org".into(),
                "b.c.example.org".into(),
                "badexample.org".into(),
            ],
            created_at: 0,
            etrn_destination: None,
            etrn_from: Vec::new(),
        };
        assert_eq!(matching(&a, "example.org", false), ["example.org"]);
        assert_eq!(
            matching(&a, "example.org", true),
            ["example.org", "a.example.org", "b.c.example.org"]
        );
        assert_eq!(matching(&a, "c.example.org", true), ["b.c.example.org"]);
        assert!(matching(&a, "c.example.org", false).is_empty());
    }
}
