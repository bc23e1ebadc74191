//! `odmr lease …`: which session is delivering which domain, and breaking a stuck lease.
//!
//! A lease row per domain is the only lock of delivery (see the store). Breaking one is safe
//! because every outcome a holder records is checked against its token (fencing): the holder's
//! next write is refused and it stops. It is wasteful only: a message the holder already handed
//! over but could not record stays queued and is delivered again.

use super::open_store;
use super::out;
use crate::config::Config;
use crate::server::lease::shown;
use anyhow::bail;
use clap::Subcommand;
use serde_json::json;

#[derive(Subcommand)]
pub enum LeaseCmd {
    /// List the domains being delivered: the holder (host/process/session) and when the lease
    /// runs out. A running session renews its lease; an expired one is taken over by the next
    /// ATRN.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Remove the lease of a domain, so another ATRN may deliver it at once.
    #[command(
        long_about = "Remove the lease of a domain, so another ATRN may deliver it at once.\n\n\
        Safe but wasteful. Every outcome the holder records is checked against its lease \
        (fencing), so the holder's delivery stops at its next write: nothing is recorded twice, \
        and nothing is lost. But a message it had already handed to the customer without \
        recording it stays queued and is delivered again. Use it for a lease whose holder is \
        stuck or gone; an expired lease needs no breaking."
    )]
    Break {
        /// The leased domain, as `odmr lease list` shows it.
        domain: String,
    },
}

pub async fn lease(cfg: &Config, cmd: LeaseCmd) -> anyhow::Result<()> {
    let store = open_store(cfg).await?;
    let result = run(&store, cmd).await;
    store.close().await;
    result
}

async fn run(store: &odmr_store::Store, cmd: LeaseCmd) -> anyhow::Result<()> {
    match cmd {
        LeaseCmd::List { json } => {
            let mut list = store.lease_list().await?;
            // host/pid/session, as the help says; the process identity after it is the sweep's.
            for l in &mut list {
                l.holder = shown(&l.holder).to_string();
            }
            // Whole seconds left, rounded up so a live lease never shows 0; by the store's
            // clock, which decides when the lease runs out.
            let left = |expires_in_ms: i64| (expires_in_ms + 999).div_euclid(1000);
            if json {
                let v: Vec<_> = list
                    .iter()
                    .map(|l| {
                        json!({
                            "domain": l.domain,
                            "holder": l.holder,
                            "token": l.token,
                            "expires_at_ms": l.expires_at,
                            "expires_in_seconds": left(l.expires_in_ms),
                            "expired": l.expires_in_ms <= 0,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if list.is_empty() {
                println!("no leases: no domain is being delivered");
            } else {
                let dw = list.iter().map(|l| l.domain.len()).max().unwrap_or(0).max(6);
                let hw = list.iter().map(|l| l.holder.len()).max().unwrap_or(0).max(6);
                println!("{:dw$}  {:hw$}  EXPIRES", "DOMAIN", "HOLDER");
                for l in &list {
                    let expires = if l.expires_in_ms <= 0 {
                        format!("expired {} ago", out::age(-l.expires_in_ms / 1000))
                    } else {
                        format!("in {} s", left(l.expires_in_ms))
                    };
                    let domain = if l.domain == odmr_store::OUTBOUND_QUEUE {
                        format!("{} (notices)", l.domain)
                    } else {
                        l.domain.clone()
                    };
                    println!("{domain:dw$}  {:hw$}  {expires}", l.holder);
                }
            }
        }
        LeaseCmd::Break { domain } => {
            // Leniently: the notices' lease is under `@outbound`, which is no domain.
            let domain = odmr_proto::domain::Domain::parse(&domain)
                .map_or_else(|_| domain.trim().to_string(), |d| d.into_string());
            let holder = store
                .lease_list()
                .await?
                .into_iter()
                .find(|l| l.domain == domain)
                .map(|l| shown(&l.holder).to_string());
            if !store.lease_break(&domain).await? {
                bail!("no lease on {domain}: nothing is delivering it; see `odmr lease list`");
            }
            tracing::debug!(%domain, holder = holder.as_deref().unwrap_or(""), "operator broke a lease");
            println!(
                "lease of {domain} broken{}; that delivery stops at its next write",
                holder.map(|h| format!(" (holder {h})")).unwrap_or_default()
            );
        }
    }
    Ok(())
}
