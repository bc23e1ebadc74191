//! Driver of the delivering client ([`odmr_proto::deliver`]): on the customer's connection after
//! the ATRN turnaround, and on the new connection of an ETRN queue run ([`super::etrn`]).
//!
//! Invariants:
//! - A recipient's state changes only on the customer's reply, recorded under the lease
//!   (fencing): 2xx delivered, 4xx stays queued with the reply, 5xx failed with the reply.
//! - A connection lost mid-transaction records nothing for that message: it stays queued.
//! - Bodies stream from the store chunk by chunk, so memory stays bounded whatever their size.
//! - A heartbeat renews the lease while the session runs; if the lease is lost (this node
//!   stalled past its expiry and another took over) delivery stops at once.

use super::Shared;
use crate::net::conn::Conn;
use odmr_proto::deliver::{DeliverStep, Deliverer, OutMessage, RcptOutcome, Wait};
use odmr_proto::envelope::RcptEntry;
use odmr_store::{Lease, Outcome, Pending, RecipientState};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Messages fetched from the store per query.
const BATCH: usize = 200;
/// Flush the body to the socket once this much is buffered.
const FLUSH_AT: usize = 256 * 1024;

pub async fn deliver(shared: &Shared, conn: &mut Conn, lease: &Lease, domains: &[String]) {
    let lost = Arc::new(AtomicBool::new(false));
    let ttl = shared.cfg.odmr.lease_ttl;
    let heartbeat = {
        let store = shared.store.clone();
        let lease = lease.clone();
        let lost = lost.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 3).await;
                if let Err(e) = store.lease_renew(&lease, ttl).await {
                    tracing::error!(error = %e, "lease renewal failed; stopping delivery");
                    lost.store(true, Ordering::SeqCst);
                    return;
                }
            }
        })
    };
    let (delivered, deferred, failed) = run(shared, conn, lease, domains, &lost).await;
    heartbeat.abort();
    tracing::info!(delivered, deferred, failed, "delivery session finished");
}

async fn run(
    shared: &Shared,
    conn: &mut Conn,
    lease: &Lease,
    domains: &[String],
    lost: &AtomicBool,
) -> (u64, u64, u64) {
    let c = &shared.cfg.odmr;
    let store = &shared.store;
    let mut d = Deliverer::new(shared.cfg.hostname.clone());
    let mut batch: VecDeque<Pending> = VecDeque::new();
    let mut after = None;
    let mut exhausted = false;
    let mut current: Option<Pending> = None;
    let (mut delivered, mut deferred, mut failed) = (0u64, 0u64, 0u64);
    loop {
        match d.poll(&mut conn.buf) {
            DeliverStep::NeedInput => {
                if let Err(e) = conn.send(d.output(), c.reply_timeout).await {
                    tracing::warn!(error = %e, "customer connection failed");
                    break;
                }
                let timeout = match d.waiting_for() {
                    Wait::DataFinal => c.data_timeout,
                    _ => c.reply_timeout,
                };
                match conn.fill(timeout).await {
                    Ok(0) => {
                        tracing::warn!("customer closed the connection; undelivered mail stays queued");
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "customer connection failed; undelivered mail stays queued");
                        break;
                    }
                }
            }
            DeliverStep::Ready => {
                if lost.load(Ordering::SeqCst) {
                    d.quit();
                    continue;
                }
                if batch.is_empty() && !exhausted {
                    match store.pending(domains, after, BATCH).await {
                        Ok(b) => {
                            exhausted = b.len() < BATCH;
                            batch = b.into();
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "queue read failed; ending the session");
                            exhausted = true;
                        }
                    }
                }
                let Some(p) = batch.pop_front() else {
                    d.quit();
                    continue;
                };
                after = Some(p.id);
                d.send(OutMessage {
                    mail_from: p.mail_from.clone(),
                    mail_params: p.mail_params.clone(),
                    size: p.size,
                    eight_bit: p.eight_bit,
                    recipients: p
                        .recipients
                        .iter()
                        .map(|r| RcptEntry {
                            address: r.address.clone(),
                            params: r.params.clone(),
                        })
                        .collect(),
                });
                current = Some(p);
            }
            DeliverStep::SendBody => {
                let Some(p) = current.as_ref() else { break };
                if let Err(e) = stream_body(shared, conn, &mut d, p.id).await {
                    tracing::warn!(msg = p.id, error = %e, "body transfer failed; message stays queued");
                    break;
                }
            }
            DeliverStep::Finished(outcomes) => {
                let Some(p) = current.take() else { continue };
                let mut rec = Vec::with_capacity(outcomes.len());
                let mut again = Vec::new();
                // RFC 3461 §5.2.2: a customer without DSN got no NOTIFY, so the sender who asked
                // for SUCCESS is told "relayed" by us.
                let mut relayed = Vec::new();
                let peer = match d.peer_name() {
                    Some(name) => name.to_string(),
                    None => format!("[{}]", conn.peer.ip()),
                };
                let remote_mta = (!d.verdict_was_local()).then(|| peer.clone());
                for (r, o) in p.recipients.iter().zip(outcomes.iter()) {
                    let state = match o {
                        RcptOutcome::Again(_) => {
                            // The customer takes fewer recipients per transaction: send these
                            // in the next transaction of this session.
                            again.push(r.clone());
                            continue;
                        }
                        RcptOutcome::Delivered(reply) => {
                            delivered += 1;
                            if !d.caps().dsn && odmr_proto::dsn::wants_success(&r.params) {
                                relayed.push((r.clone(), reply.one_line()));
                            }
                            RecipientState::Delivered
                        }
                        RcptOutcome::Deferred(_) => {
                            deferred += 1;
                            RecipientState::Queued
                        }
                        RcptOutcome::Failed(_) => {
                            failed += 1;
                            RecipientState::Failed
                        }
                    };
                    tracing::info!(msg = p.id, rcpt = %r.address, domain = %r.domain, result = state.as_str(), reply = %o.reply(), "recipient");
                    rec.push(Outcome {
                        recipient: r.id,
                        state,
                        reply: Some(o.reply().one_line()),
                        remote_mta: remote_mta.clone(),
                    });
                }
                if let Err(e) = store.record(lease, &rec).await {
                    tracing::error!(msg = p.id, error = %e, "cannot record outcomes; stopping delivery");
                    lost.store(true, Ordering::SeqCst);
                } else if !relayed.is_empty() {
                    if let Err(e) = super::bounce::notify_relayed(shared, &p, &relayed, &peer).await {
                        tracing::warn!(msg = p.id, error = %e, "cannot queue the success notice");
                    }
                }
                if !again.is_empty() {
                    batch.push_front(Pending {
                        recipients: again,
                        ..p
                    });
                }
            }
            DeliverStep::Done => {
                let _ = conn.send(d.output(), c.reply_timeout).await;
                if let Some(e) = d.error() {
                    tracing::warn!(error = %e, "reversed session ended early; undelivered mail stays queued");
                }
                break;
            }
        }
    }
    (delivered, deferred, failed)
}

async fn stream_body(shared: &Shared, conn: &mut Conn, d: &mut Deliverer, id: i64) -> anyhow::Result<()> {
    let timeout = shared.cfg.odmr.reply_timeout;
    let mut chunk = 0u32;
    while let Some(bytes) = shared.store.read_body(id, chunk).await? {
        d.body(&bytes);
        if d.output().len() >= FLUSH_AT {
            conn.send(d.output(), timeout).await?;
        }
        chunk += 1;
    }
    d.body_end();
    Ok(())
}
