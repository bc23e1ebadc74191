//! `odmr queue …`: what is held, for whom, and what the customer last said about it; and which
//! domains a delivering session holds right now.

use super::open_store;
use crate::config::Config;
use clap::Subcommand;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Subcommand)]
pub enum QueueCmd {
    /// List held messages with each recipient's state and last reply.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// List the live delivery leases: the domains a session is delivering right now (ATRN for
    /// them gets 451 until the lease is released or expires), with the holding process.
    Leases {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

pub async fn queue(cfg: &Config, cmd: QueueCmd) -> anyhow::Result<()> {
    let store = open_store(cfg).await?;
    let result = match cmd {
        QueueCmd::List { json } => list(&store, json).await,
        QueueCmd::Leases { json } => leases(&store, json).await,
    };
    store.close().await;
    result
}

async fn leases(store: &odmr_store::Store, json: bool) -> anyhow::Result<()> {
    let rows = store.lease_list().await?;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64;
    if json {
        let v: Vec<_> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "domain": r.domain,
                    "holder": r.holder,
                    "expires_at_ms": r.expires_at,
                    "expires_in_ms": (r.expires_at - now_ms).max(0),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if rows.is_empty() {
        println!("no domain is being delivered");
    } else {
        println!("{:<30}  {:>8}  HOLDER", "DOMAIN", "EXPIRES");
        for r in &rows {
            let secs = ((r.expires_at - now_ms).max(0) + 999) / 1000;
            println!("{:<30}  {:>8}  {}", r.domain, format!("{secs}s"), r.holder);
        }
    }
    Ok(())
}

async fn list(store: &odmr_store::Store, json: bool) -> anyhow::Result<()> {
    let list = store.queue_list().await?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    if json {
        let v: Vec<_> = list
            .iter()
            .map(|m| {
                serde_json::json!({
                    "id": m.id,
                    "received_at": m.received_at,
                    "age_seconds": (now - m.received_at).max(0),
                    "size": m.size,
                    "sender": m.mail_from,
                    "recipients": m.recipients.iter().map(|r| serde_json::json!({
                        "address": r.address,
                        "domain": r.domain,
                        "state": r.state.as_str(),
                        "last_reply": r.last_reply,
                        "attempts": r.attempts,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if list.is_empty() {
        println!("queue is empty");
    } else {
        println!("{:>8}  {:>8}  {:>10}  SENDER", "ID", "AGE", "SIZE");
        for m in &list {
            let from = if m.mail_from.is_empty() {
                "<>"
            } else {
                &m.mail_from
            };
            println!(
                "{:>8}  {:>8}  {:>10}  {}",
                m.id,
                age((now - m.received_at).max(0)),
                m.size,
                from
            );
            for r in &m.recipients {
                let reply = r
                    .last_reply
                    .as_deref()
                    .map(|x| format!("  ({x})"))
                    .unwrap_or_default();
                println!("{:>30}  {:<9}  {}{}", "", r.state.as_str(), r.address, reply);
            }
        }
        println!("{} message(s)", list.len());
    }
    Ok(())
}

fn age(secs: i64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}
