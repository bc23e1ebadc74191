//! Driver of the delivering client ([`odmr_proto::deliver`]): on the customer's connection after
//! the ATRN turnaround, and on the new connection of an ETRN queue run ([`super::etrn`]).
//!
//! Invariants:
//! - A recipient's state changes only on the customer's reply, recorded under the lease
//!   (fencing): 2xx delivered, 4xx stays queued with the reply, 5xx failed with the reply.
//! - A connection lost mid-transaction records nothing for that message: it stays queued.
//! - Bodies stream from the store chunk by chunk, so memory stays bounded whatever their size;
//!   the bodies of small messages are fetched a batch at a time (at most [`PREFETCH_BYTES`]).
//! - Outcomes are recorded by a recorder running beside the delivery, in batches, so the next
//!   message is on its way while the previous ones are written. The cost is bounded: at most
//!   [`UNRECORDED_MAX`] messages can have been delivered and not yet recorded, so a crash of
//!   this node re-delivers at most that many (never loses one). A session ends only after the
//!   recorder has written everything.
//! - STARTTLS, when asked for ([`OutboundTls`], on the connections we open: ETRN's, the
//!   notices' relay's): the handshake is refused if the peer sent anything after its 220 (those
//!   octets would otherwise be read as replies inside TLS: command injection; RFC 3207 §4.2),
//!   and a failed handshake ends the session with nothing sent, so the caller may try again in
//!   plaintext.
//! - A heartbeat renews the lease while the session runs; if the lease is lost (this node
//!   stalled past its expiry and another took over, or the operator broke it) or an outcome
//!   cannot be recorded, delivery stops at once.

use super::Shared;
use crate::net::conn::Conn;
use crate::net::driver::{Driver, Input, Stop};
use bytes::Bytes;
use odmr_proto::deliver::{DeliverStep, Deliverer, OutMessage, RcptOutcome, StartTls, Wait, MAX_IN_FLIGHT};
use odmr_proto::envelope::RcptEntry;
use odmr_store::{
    Lease, MessageId, Outcome, Pending, PendingRecipient, RecipientState, Reply, StoreError, CHUNK_SIZE,
};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// After a failed write (or a body the store could not give), how long to wait for replies the
/// customer may still send for the transactions before: long enough for a local MTA's content
/// checks, short enough not to hold the lease for a stalled customer.
const WRITE_FAILED_READ: Duration = Duration::from_secs(30);
/// Messages fetched from the store per query.
const BATCH: usize = 200;
/// Flush the body to the socket once this much is buffered.
const FLUSH_AT: usize = 256 * 1024;
/// Bodies up to this size are prefetched with their batch ...
const PREFETCH_SIZE: u64 = 64 * 1024;
/// ... up to this many bytes per batch.
const PREFETCH_BYTES: u64 = 4 * 1024 * 1024;
/// Messages whose outcomes one store transaction records, at most.
const RECORD_BATCH: usize = 64;
/// Messages whose outcomes wait for the recorder, at most (then the delivery waits).
const RECORD_QUEUE: usize = 64;
/// How long the recorder lets outcomes gather before it writes a batch short of
/// [`RECORD_BATCH`]: without it a recorder faster than the delivery writes every message in a
/// transaction of its own, and the store's round trips cost more than the delivery itself.
const RECORD_GATHER: Duration = Duration::from_millis(10);
/// Messages delivered and not yet recorded, at most: those queued for the recorder, those it is
/// writing, the one being handed to it, and those whose final 250 is on its way (the customer
/// holds them; we have not read the replies): one with DATA, up to [`MAX_IN_FLIGHT`] with BDAT.
/// tests/crash.rs kills the server mid-delivery and checks this bound (it has its own copy of
/// the figure, as has queue_cli.rs).
const UNRECORDED_MAX: usize = RECORD_QUEUE + RECORD_BATCH + 1 + MAX_IN_FLIGHT;
const _: () = assert!(
    UNRECORDED_MAX == 137,
    "update the bound in tests/crash.rs and tests/queue_cli.rs"
);

/// TLS for a delivery on a connection we opened (see [`super::outbound`]): when to ask for it
/// and how.
pub struct OutboundTls {
    pub policy: StartTls,
    pub connector: tokio_rustls::TlsConnector,
    /// The name the certificate must carry (checked only by a verifying connector).
    pub name: rustls_pki_types::ServerName<'static>,
}

/// Said when the store refuses a renewal or a write because the operator broke the lease: an
/// action someone took, not a fault to look into (see `odmr lease break`).
const BROKEN: &str = "lease broken by the operator (odmr lease break)";

/// How a delivery session ended, for a caller that may try again.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// The TLS handshake after STARTTLS failed; nothing was delivered on this connection.
    pub tls_failed: bool,
}

pub async fn deliver(
    shared: &Shared,
    conn: &mut Conn,
    lease: &Lease,
    domains: &[String],
    tls: Option<&OutboundTls>,
) -> Ended {
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
                    match e {
                        StoreError::LeaseBroken => tracing::warn!("{BROKEN}; stopping delivery"),
                        e => tracing::error!(error = %e, "lease renewal failed; stopping delivery"),
                    }
                    lost.store(true, Ordering::SeqCst);
                    return;
                }
            }
        })
    };
    let (jobs, queue) = mpsc::channel(RECORD_QUEUE);
    let (((delivered, deferred, failed), ended), ()) = tokio::join!(
        run(shared, conn, domains, tls, &lost, jobs),
        recorder(shared, lease, queue, &lost)
    );
    heartbeat.abort();
    tracing::info!(delivered, deferred, failed, "delivery session finished");
    ended
}

/// What the recorder writes for one message.
struct RecordJob {
    outcomes: Vec<Outcome>,
    relayed: Option<Relayed>,
}

/// Recipients delivered to a customer without DSN who asked for NOTIFY=SUCCESS (RFC 3461
/// §5.2.2: we tell the sender "relayed").
struct Relayed {
    message: Pending,
    /// Each with the customer's reply.
    recipients: Vec<(PendingRecipient, Reply)>,
    /// The customer's name, for the notice.
    peer: String,
}

/// Records outcomes as they come, a batch per transaction. On a failure it stops delivery and
/// drops the queue, so the delivery's next hand-over fails too.
async fn recorder(shared: &Shared, lease: &Lease, mut queue: mpsc::Receiver<RecordJob>, lost: &AtomicBool) {
    let mut jobs = Vec::with_capacity(RECORD_BATCH);
    while queue.recv_many(&mut jobs, RECORD_BATCH).await > 0 {
        let deadline = tokio::time::Instant::now() + RECORD_GATHER;
        while jobs.len() < RECORD_BATCH {
            let room = RECORD_BATCH - jobs.len();
            match tokio::time::timeout_at(deadline, queue.recv_many(&mut jobs, room)).await {
                Ok(n) if n > 0 => {}
                // The delivery has ended (all its outcomes are here) or the time is up.
                _ => break,
            }
        }
        let outcomes: Vec<Outcome> = jobs
            .iter_mut()
            .flat_map(|j| std::mem::take(&mut j.outcomes))
            .collect();
        if let Err(e) = shared.store.record(lease, &outcomes).await {
            match e {
                StoreError::LeaseBroken => tracing::warn!(
                    messages = jobs.len(),
                    "{BROKEN}; stopping delivery (messages delivered but not recorded stay queued)"
                ),
                e => {
                    tracing::error!(error = %e, messages = jobs.len(), "cannot record outcomes; stopping delivery")
                }
            }
            lost.store(true, Ordering::SeqCst);
            return;
        }
        for job in jobs.drain(..) {
            if let Some(r) = job.relayed {
                if let Err(e) =
                    super::bounce::notify_relayed(shared, &r.message, &r.recipients, &r.peer).await
                {
                    tracing::warn!(msg = r.message.id, error = %e, "cannot queue the success notice");
                }
            }
        }
    }
}

/// The queue as the session reads it: batches of envelopes in id order, with the bodies of
/// the small ones.
struct Source<'a> {
    shared: &'a Shared,
    domains: &'a [String],
    batch: VecDeque<Pending>,
    bodies: HashMap<MessageId, Bytes>,
    after: Option<MessageId>,
    exhausted: bool,
}

impl Source<'_> {
    async fn next(&mut self) -> Option<Pending> {
        if self.batch.is_empty() && !self.exhausted {
            self.refill().await;
        }
        let p = self.batch.pop_front()?;
        self.after = Some(self.after.map_or(p.id, |a| a.max(p.id)));
        Some(p)
    }

    async fn refill(&mut self) {
        let store = &self.shared.store;
        let b = match store.pending(self.domains, self.after, BATCH).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "queue read failed; ending the session");
                self.exhausted = true;
                return;
            }
        };
        self.exhausted = b.len() < BATCH;
        let mut budget = PREFETCH_BYTES;
        let small: Vec<MessageId> = b
            .iter()
            .filter(|p| p.size > 0 && p.size <= PREFETCH_SIZE)
            .take_while(|p| {
                budget = budget.saturating_sub(p.size);
                budget > 0
            })
            .map(|p| p.id)
            .collect();
        self.bodies.clear();
        match store.read_first_chunks(&small).await {
            Ok(chunks) => self.bodies.extend(chunks),
            // Not fatal: each body is then read on its own.
            Err(e) => tracing::warn!(error = %e, "body prefetch failed"),
        }
        self.batch = b.into();
    }

    /// Recipients to try again in this session (the customer took fewer per transaction).
    fn again(&mut self, p: Pending) {
        self.batch.push_front(p);
    }
}

async fn run(
    shared: &Shared,
    conn: &mut Conn,
    domains: &[String],
    tls: Option<&OutboundTls>,
    lost: &AtomicBool,
    record: mpsc::Sender<RecordJob>,
) -> ((u64, u64, u64), Ended) {
    let c = &shared.cfg.odmr;
    let mut d = Deliverer::new(shared.cfg.hostname.clone());
    d.set_starttls(tls.map_or(StartTls::Never, |t| t.policy));
    let mut ended = Ended::default();
    let mut source = Source {
        shared,
        domains,
        batch: VecDeque::new(),
        bodies: HashMap::new(),
        after: None,
        exhausted: false,
    };
    // Messages handed to the machine and not yet finished, in the order it reports them.
    let mut in_flight: VecDeque<Pending> = VecDeque::new();
    // The customer's name for notices, once its greeting is known (the same for every message).
    let mut peer_name: Option<String> = None;
    let (mut delivered, mut deferred, mut failed) = (0u64, 0u64, 0u64);
    let mut greeted = false;
    let mut write_failed = false;
    let mut driver = Driver::new(c.reply_timeout);
    loop {
        match d.poll(&mut conn.buf) {
            DeliverStep::NeedInput => {
                if write_failed {
                    d.output().clear();
                }
                let timeout = match d.waiting_for() {
                    _ if write_failed => WRITE_FAILED_READ,
                    Wait::DataFinal => c.data_timeout,
                    _ => c.reply_timeout,
                };
                match driver
                    .need_input_within(conn, &mut d, Input::Replies, timeout)
                    .await
                {
                    Ok(_) => {}
                    Err(Stop::WriteFailed(e)) if !write_failed => {
                        // The customer may have delivered messages whose replies are already
                        // here (with BDAT up to a window of them): read those before giving
                        // up, or they would be delivered again.
                        tracing::warn!(error = %e, "customer connection failed; reading the replies already sent");
                        write_failed = true;
                        conn.discard_unsent();
                    }
                    Err(Stop::Closed) => {
                        tracing::warn!("customer closed the connection; undelivered mail stays queued");
                        break;
                    }
                    Err(Stop::WriteFailed(e) | Stop::ReadFailed(e)) => {
                        tracing::warn!(error = %e, "customer connection failed; undelivered mail stays queued");
                        break;
                    }
                    // A delivery does not listen for the shutdown.
                    Err(Stop::Shutdown) => break,
                }
            }
            DeliverStep::Ready if write_failed => {
                if d.in_flight() == 0 {
                    break;
                }
                d.hold();
            }
            // Nothing more reaches the customer: end the body unsent, so the replies to the
            // transactions before it can still be read.
            DeliverStep::SendBody if write_failed => d.body_end(),
            DeliverStep::Ready => {
                if !greeted {
                    greeted = true;
                    let caps = d.caps();
                    // How the mail will move; tells an operator why one customer drains faster.
                    tracing::info!(
                        customer = d.peer_name().unwrap_or("?"),
                        pipelining = caps.pipelining,
                        chunking = caps.chunking,
                        size = caps.size.unwrap_or(0),
                        "customer ready for delivery"
                    );
                }
                let next = if lost.load(Ordering::SeqCst) {
                    None
                } else {
                    source.next().await
                };
                let Some(p) = next else {
                    if d.in_flight() > 0 {
                        // The last replies may yet ask for recipients to be sent again.
                        d.hold();
                    } else {
                        d.quit();
                    }
                    continue;
                };
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
                in_flight.push_back(p);
            }
            DeliverStep::SendBody => {
                // The machine has one message on the wire before its dot: the last handed over.
                let Some(p) = in_flight.back() else { break };
                let (id, size) = (p.id, p.size);
                let prefetched = source.bodies.remove(&id);
                if let Err(e) = send_body(shared, conn, &mut driver, &mut d, id, size, prefetched).await {
                    tracing::warn!(msg = id, error = %e, "body transfer failed; message stays queued");
                    // Nothing more goes out; the replies to the transactions before this one
                    // may already be here (see `write_failed`).
                    write_failed = true;
                    d.body_end();
                }
            }
            DeliverStep::Finished(outcomes) => {
                let Some(p) = in_flight.pop_front() else { continue };
                let mut rec = Vec::with_capacity(outcomes.len());
                let mut again = Vec::new();
                let mut relayed = Vec::new();
                let peer = peer_name
                    .get_or_insert_with(|| match d.peer_name() {
                        Some(name) => name.to_string(),
                        None => format!("[{}]", conn.peer.ip()),
                    })
                    .clone();
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
                                relayed.push((r.clone(), reply.clone()));
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
                    // The reply is recorded as given; the log shows it on one line.
                    tracing::info!(msg = p.id, rcpt = %r.address, domain = %r.domain, result = state.as_str(), reply = %o.reply().one_line(), "recipient");
                    rec.push(Outcome {
                        recipient: r.id,
                        state,
                        reply: Some(o.reply().clone()),
                        remote_mta: remote_mta.clone(),
                    });
                }
                let relayed = (!relayed.is_empty()).then(|| Relayed {
                    message: p.clone(),
                    recipients: relayed,
                    peer,
                });
                if !again.is_empty() {
                    source.again(Pending {
                        recipients: again,
                        ..p
                    });
                }
                if record
                    .send(RecordJob {
                        outcomes: rec,
                        relayed,
                    })
                    .await
                    .is_err()
                {
                    // The recorder failed and said why; `lost` is set, so we QUIT at the next
                    // Ready.
                    lost.store(true, Ordering::SeqCst);
                }
            }
            DeliverStep::StartTls => {
                let Some(t) = tls else { break };
                // Nothing of ours may be left unsent under the handshake.
                if let Err(e) = driver.flush(conn, &mut d).await {
                    tracing::warn!(error = %e, "customer connection failed before the TLS handshake");
                    break;
                }
                match conn
                    .connect_tls(&t.connector, t.name.clone(), c.reply_timeout)
                    .await
                {
                    Ok(()) => {
                        tracing::info!(customer = d.peer_name().unwrap_or("?"), "TLS established");
                        d.tls_started();
                    }
                    Err(e) => {
                        tracing::warn!(customer = d.peer_name().unwrap_or("?"), error = %e, "TLS handshake failed");
                        ended.tls_failed = true;
                        break;
                    }
                }
            }
            DeliverStep::Done => {
                if !write_failed {
                    let _ = driver.flush(conn, &mut d).await;
                }
                if let Some(e) = d.error() {
                    tracing::warn!(error = %e, "reversed session ended early; undelivered mail stays queued");
                }
                break;
            }
        }
    }
    ((delivered, deferred, failed), ended)
}

/// The body of message `id` (`size` octets), from the prefetched first chunk or chunk by chunk.
async fn send_body(
    shared: &Shared,
    conn: &mut Conn,
    driver: &mut Driver,
    d: &mut Deliverer,
    id: MessageId,
    size: u64,
    prefetched: Option<Bytes>,
) -> anyhow::Result<()> {
    let mut sent = 0u64;
    let mut chunk = 0u32;
    if let Some(first) = prefetched {
        d.body(&first);
        sent += first.len() as u64;
        chunk = 1;
    }
    // Chunks are CHUNK_SIZE octets but the last, so the size says how many there are: no
    // query just to learn that the body has ended.
    while sent < size {
        let Some(bytes) = shared.store.read_body(id, chunk).await? else {
            anyhow::bail!("the stored body ends at {sent} of {size} octets");
        };
        debug_assert!(bytes.len() <= CHUNK_SIZE);
        d.body(&bytes);
        sent += bytes.len() as u64;
        if d.output().len() >= FLUSH_AT {
            driver.flush(conn, d).await?;
        }
        chunk += 1;
    }
    d.body_end();
    Ok(())
}
