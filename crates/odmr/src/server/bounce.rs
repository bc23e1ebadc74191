//! The end of a message's life on the provider: expiry, failure notices (bounces), delay
//! warnings, and the relay that carries the notices out.
//!
//! Invariants:
//! - A notice is queued in the same store transaction that settles its recipients
//!   ([`Store::settle_failed`], [`Store::settle_delayed`]), so a crash can neither lose a notice
//!   nor send one twice.
//! - Notices leave through `[bounce] relay` like held mail leaves through ATRN: under a lease on
//!   [`OUTBOUND_QUEUE`] (one sender in the whole fleet at a time), removed only after the relay's
//!   `250`, kept and retried (1 min doubling to 30 min by default) while the relay is down or
//!   answers 4xx.
//! - Never a notice to the null sender (RFC 5321 §4.5.5, RFC 3461 §5.2), nor to a recipient
//!   whose NOTIFY excludes it (RFC 3461 §5.2.5–6): those recipients are settled silently.
//! - Every pass is bounded (batches) and runs every `[queue] scan_interval`, so expiry is acted
//!   on within that interval of its deadline.
//! - Failure notices are composed in one place, [`settle_failed`], which `odmr queue bounce`
//!   calls too, so that the operator's bounce leaves with its notices queued and a notice is the
//!   same whoever composed it. Two composers at once (the CLI and a server's pass) are safe:
//!   the store queues a notice only with the transaction that turns its recipients from
//!   `failed` to `bounced`, and only one transaction can do that.

use std::sync::Arc;
use std::time::{Duration, Instant};

use odmr_proto::dsn::{self, Action, ReceivedFrom, Report, ReportedRecipient, Returned};
use odmr_store::{
    Notice, OutboundMessage, Pending, PendingRecipient, RecipientStatus, Reply, Store, StoreError,
    OUTBOUND_QUEUE,
};

use super::Shared;
use crate::config::Config;
use tracing::Instrument;

/// Notices composed per store query.
const BATCH: usize = 50;
/// The longest wait between attempts to reach the relay.
const MAX_RETRY: Duration = Duration::from_secs(30 * 60);
/// How long to wait for the relay's TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Most header octets returned in a headers-only notice.
const MAX_HEADER_SECTION: usize = 256 * 1024;

/// The job's memory between passes.
struct State {
    /// Delay warnings: every message up to this (received_at, id) was looked at.
    delay_cursor: (i64, i64),
    /// When the relay may be tried again, and the wait after the next failure.
    relay_next: Instant,
    relay_wait: Duration,
}

/// Runs until the server shuts down.
pub async fn run(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let mut state = State {
        delay_cursor: (0, 0),
        relay_next: Instant::now(),
        relay_wait: shared.cfg.bounce.retry,
    };
    if shared.cfg.bounce.relay.is_none() {
        tracing::warn!("no [bounce] relay configured: delivery status notices are queued (see `odmr queue list --domain {OUTBOUND_QUEUE}`) but not sent");
    }
    let mut tick = tokio::time::interval(shared.cfg.queue.scan_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        if let Err(e) = pass(&shared, &mut state).await {
            tracing::error!(error = %e, "queue maintenance failed; retrying at the next pass");
        }
    }
}

async fn pass(shared: &Shared, state: &mut State) -> anyhow::Result<()> {
    let store = &shared.store;
    let expired = store.expire(shared.cfg.queue.max_age).await?;
    if expired > 0 {
        tracing::info!(
            recipients = expired,
            "hold time over: returning mail to its senders"
        );
    }
    settle_failed(&shared.cfg, store, log_failed).await?;
    if let Some(delay) = shared.cfg.queue.delay_warning {
        let until = now() - secs(delay);
        loop {
            let batch = store.notices_delayed(until, state.delay_cursor, BATCH).await?;
            for n in &batch {
                notify_delayed(Ctx::of(shared), n).await?;
                state.delay_cursor = (n.received_at, n.id);
            }
            if batch.len() < BATCH {
                break;
            }
        }
    }
    send_notices(shared, state).await
}

/// What a notice is made from: the server's settings and its store. Not [`Shared`], so that
/// `odmr queue bounce`, which has no server, composes the same notices.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    cfg: &'a Config,
    store: &'a Store,
}

impl<'a> Ctx<'a> {
    fn of(shared: &'a Shared) -> Ctx<'a> {
        Ctx {
            cfg: &shared.cfg,
            store: &shared.store,
        }
    }
}

/// What became of one message's failed recipients.
pub enum Settled {
    /// A failure notice to the sender was queued, reporting these recipients.
    Notice(Vec<String>),
    /// Settled without a notice: null sender, or NOTIFY without FAILURE for every one.
    Silent,
}

/// Settles every failed recipient of the store, message by message: its failure notice (or
/// none) is composed and queued in the transaction that settles the recipients. `each` is told
/// what became of each message, for the server's log or the command's count. Bounded: messages
/// are read [`BATCH`] at a time.
pub async fn settle_failed(
    cfg: &Config,
    store: &Store,
    mut each: impl FnMut(&Notice, &Settled),
) -> anyhow::Result<()> {
    let ctx = Ctx { cfg, store };
    loop {
        let batch = store.notices_failed(BATCH).await?;
        for n in &batch {
            each(n, &notify_failed(ctx, n).await?);
        }
        if batch.len() < BATCH {
            return Ok(());
        }
    }
}

/// The server's log of [`settle_failed`]: a line per recipient.
fn log_failed(n: &Notice, settled: &Settled) {
    match settled {
        Settled::Notice(reported) => {
            for rcpt in reported {
                tracing::info!(msg = n.id, %rcpt, to = %n.mail_from, "undeliverable; notice queued for the sender");
            }
        }
        Settled::Silent => {
            for r in &n.recipients {
                tracing::warn!(msg = n.id, rcpt = %r.address, reply = r.last_reply.as_ref().map(Reply::one_line).unwrap_or_default(),
                    "undeliverable; no notice (null sender or NOTIFY without FAILURE)");
            }
        }
    }
}

/// Composes (or not) the failure notice for the failed recipients of one message and settles them.
async fn notify_failed(ctx: Ctx<'_>, n: &Notice) -> anyhow::Result<Settled> {
    let ids: Vec<i64> = n.recipients.iter().map(|r| r.id).collect();
    let wanted: Vec<&RecipientStatus> = n
        .recipients
        .iter()
        .filter(|r| dsn::wants_failure(&r.params))
        .collect();
    if n.mail_from.is_empty() || wanted.is_empty() {
        ctx.store.settle_failed(&ids, None).await?;
        return Ok(Settled::Silent);
    }
    let mut recipients = Vec::with_capacity(wanted.len());
    for r in &wanted {
        let status = r
            .status
            .clone()
            .or_else(|| r.last_reply.as_ref().and_then(|reply| reply.status.clone()))
            .unwrap_or_else(|| "5.0.0".into());
        recipients.push(reported(r, Action::Failed, status, None));
    }
    let explanation = failure_text(ctx, &wanted).await;
    let notice = compose(ctx, n, recipients, explanation, true).await?;
    ctx.store.settle_failed(&ids, Some(&notice)).await?;
    Ok(Settled::Notice(
        wanted.iter().map(|r| r.address.clone()).collect(),
    ))
}

/// Composes (or not) the delay warning for the waiting recipients of one message and settles them.
async fn notify_delayed(ctx: Ctx<'_>, n: &Notice) -> anyhow::Result<()> {
    let ids: Vec<i64> = n.recipients.iter().map(|r| r.id).collect();
    let wanted: Vec<&RecipientStatus> = n
        .recipients
        .iter()
        .filter(|r| dsn::wants_delay(&r.params))
        .collect();
    if wanted.is_empty() {
        return Ok(ctx.store.settle_delayed(&ids, None).await?);
    }
    let mut recipients = Vec::with_capacity(wanted.len());
    for r in &wanted {
        let until = n.received_at + secs(max_age(ctx, &r.domain).await);
        // A customer's 4xx explains the wait better than the generic 4.0.0 ("waiting").
        let status = r
            .last_reply
            .as_ref()
            .and_then(|reply| reply.status.clone())
            .filter(|s| s.starts_with('4'))
            .unwrap_or_else(|| "4.0.0".into());
        recipients.push(reported(r, Action::Delayed, status, Some(until)));
    }
    let addresses: Vec<&str> = wanted.iter().map(|r| r.address.as_str()).collect();
    let waited_hours = u64::try_from((now() - n.received_at) / 3600).unwrap_or(0);
    let until = n.received_at + secs(max_age(ctx, &wanted[0].domain).await);
    let explanation = dsn::explain_delayed(&ctx.cfg.hostname, &addresses, waited_hours, until);
    let notice = compose(ctx, n, recipients, explanation, false).await?;
    tracing::info!(msg = n.id, to = %n.mail_from, recipients = wanted.len(), "delay warning queued for the sender");
    Ok(ctx.store.settle_delayed(&ids, Some(&notice)).await?)
}

/// Queues a "relayed" notice for recipients just delivered to a customer without DSN whose
/// sender asked for NOTIFY=SUCCESS. Courtesy only: headers are not returned (RFC 3461 §6.2 allows
/// it for reports without failures) and a crash right after the delivery may lose the notice.
pub async fn notify_relayed(
    shared: &Shared,
    p: &Pending,
    delivered: &[(PendingRecipient, Reply)],
    remote: &str,
) -> anyhow::Result<()> {
    if p.mail_from.is_empty() || delivered.is_empty() {
        return Ok(());
    }
    let addresses: Vec<&str> = delivered.iter().map(|(r, _)| r.address.as_str()).collect();
    let recipients = delivered
        .iter()
        .map(|(r, reply)| ReportedRecipient {
            original_recipient: dsn::orcpt(&r.params),
            final_recipient: r.address.clone(),
            action: Action::Relayed,
            status: reply
                .status
                .clone()
                .filter(|s| s.starts_with('2'))
                .unwrap_or_else(|| "2.0.0".into()),
            remote_mta: Some(remote.to_string()),
            diagnostic: Some(dsn::diagnostic_from_reply(reply)),
            last_attempt: Some(now()),
            will_retry_until: None,
        })
        .collect();
    let report = Report {
        reporting_mta: shared.cfg.hostname.clone(),
        postmaster: format!("postmaster@{}", shared.cfg.hostname),
        to: p.mail_from.clone(),
        envid: dsn::envid(&p.mail_params),
        arrival: p.received_at,
        received_from_mta: None,
        now: now(),
        unique: format!("{}.{}", p.id, rand::random::<u32>()),
        explanation: dsn::explain_relayed(&shared.cfg.hostname, &addresses, remote),
        recipients,
        returned: Returned::Nothing,
        max_return: 0,
        seven_bit_only: false,
    };
    let notice = outbound(&p.mail_from, dsn::compose(&report)?);
    shared.store.queue_notice(&notice).await?;
    tracing::info!(msg = p.id, to = %p.mail_from, recipients = delivered.len(), "success notice (relayed) queued for the sender");
    Ok(())
}

fn reported(r: &RecipientStatus, action: Action, status: String, until: Option<i64>) -> ReportedRecipient {
    // Remote-MTA and Diagnostic-Code only when a peer's reply is what we report (RFC 3464
    // §2.3.5–6); the reply in its wire form, each line on a line of the field (RFC 3461 §9.2).
    let (remote_mta, diagnostic) = match (&r.remote_mta, &r.last_reply) {
        (Some(m), Some(reply)) => (Some(m.clone()), Some(dsn::diagnostic_from_reply(reply))),
        _ => (None, None),
    };
    ReportedRecipient {
        original_recipient: dsn::orcpt(&r.params),
        final_recipient: r.address.clone(),
        action,
        status,
        remote_mta,
        diagnostic,
        last_attempt: (r.attempts > 0).then_some(r.updated_at),
        will_retry_until: until,
    }
}

/// The human-readable part of a failure notice: why these recipients were given up.
async fn failure_text(ctx: Ctx<'_>, wanted: &[&RecipientStatus]) -> String {
    let host = &ctx.cfg.hostname;
    let addresses: Vec<&str> = wanted.iter().map(|r| r.address.as_str()).collect();
    let first = wanted[0];
    match first.status.as_deref() {
        Some("4.4.7") => {
            let days = max_age(ctx, &first.domain).await.as_secs().div_ceil(86400);
            dsn::explain_expired(host, &addresses, days)
        }
        Some(_) => dsn::explain_operator(host, &addresses, None),
        None => dsn::explain_refused(
            host,
            &addresses,
            first.remote_mta.as_deref().unwrap_or("the customer's server"),
        ),
    }
}

/// The notice as it is queued for the relay.
async fn compose(
    ctx: Ctx<'_>,
    n: &Notice,
    recipients: Vec<ReportedRecipient>,
    explanation: String,
    failure: bool,
) -> anyhow::Result<OutboundMessage> {
    let max_return = ctx.cfg.bounce.max_return;
    // RFC 3461 §6.2: only failures return the content, and RET=HDRS asks for headers only; so
    // the whole body is read only when it may be returned.
    let full = failure && dsn::ret(&n.mail_params) != Some(dsn::Ret::Hdrs) && n.size <= max_return;
    let original = read_original(ctx.store, n.id, full).await?;
    let returned = if full {
        Returned::Full(&original)
    } else {
        Returned::HeadersOnly(&original)
    };
    let client_ip = n
        .client_addr
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    let report = Report {
        reporting_mta: ctx.cfg.hostname.clone(),
        postmaster: format!("postmaster@{}", ctx.cfg.hostname),
        to: n.mail_from.clone(),
        envid: dsn::envid(&n.mail_params),
        arrival: n.received_at,
        received_from_mta: (!n.helo.is_empty()).then(|| ReceivedFrom {
            helo: n.helo.clone(),
            ip: client_ip,
        }),
        now: now(),
        unique: format!("{}.{}", n.id, rand::random::<u32>()),
        explanation,
        recipients,
        returned,
        max_return: usize::try_from(max_return).unwrap_or(usize::MAX),
        // The relay's abilities are not known here; the delivery to it holds 8-bit mail the
        // relay cannot take, as for any peer.
        seven_bit_only: false,
    };
    Ok(outbound(&n.mail_from, dsn::compose(&report)?))
}

/// A composed notice as the store queues it, with the MAIL parameters its content needs.
fn outbound(to: &str, composed: dsn::Composed) -> OutboundMessage {
    let mut params = Vec::new();
    if composed.eight_bit {
        params.push("BODY=8BITMIME");
    }
    if composed.smtputf8 {
        params.push("SMTPUTF8");
    }
    OutboundMessage {
        mail_params: params.join(" "),
        to: to.to_string(),
        body: composed.bytes,
        eight_bit: composed.eight_bit,
    }
}

/// The whole message (`full`), or enough of its start to hold the header section.
async fn read_original(store: &Store, id: i64, full: bool) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::new();
    let mut chunk = 0;
    while let Some(bytes) = store.read_body(id, chunk).await? {
        out.extend_from_slice(&bytes);
        chunk += 1;
        if !full && (ends_header_section(&out) || out.len() >= MAX_HEADER_SECTION) {
            break;
        }
    }
    Ok(out)
}

/// Whether the bytes hold the empty line that ends a message's header section.
fn ends_header_section(b: &[u8]) -> bool {
    b.windows(4).any(|w| w == b"\r\n\r\n")
}

/// The hold time of a domain: its own, else the server's.
async fn max_age(ctx: Ctx<'_>, domain: &str) -> Duration {
    match ctx.store.domain_get(domain).await {
        Ok(Some(d)) => d.policy.max_age.map(Duration::from_secs),
        _ => None,
    }
    .unwrap_or(ctx.cfg.queue.max_age)
}

/// Delivers queued notices to the relay, unless it failed recently.
async fn send_notices(shared: &Shared, state: &mut State) -> anyhow::Result<()> {
    let Some(relay) = shared.cfg.bounce.relay.as_deref() else {
        return Ok(());
    };
    let queue = [OUTBOUND_QUEUE.to_string()];
    if Instant::now() < state.relay_next || !shared.store.has_pending(&queue).await? {
        return Ok(());
    }
    let holder = shared.identity.holder("bounce-relay");
    let Some(lease) = shared
        .store
        .lease_acquire(&queue, &holder, shared.cfg.odmr.lease_ttl)
        .await?
    else {
        return Ok(()); // another node is sending them
    };
    // TLS as `bounce.relay_tls` says ([`super::outbound`]); unreachable: the notices stay.
    shared
        .relay_tls
        .deliver(shared, relay, CONNECT_TIMEOUT, &lease, &queue)
        .instrument(tracing::info_span!("relay", relay = %relay))
        .await;
    shared.store.lease_release(&lease).await?;
    if shared.store.has_pending(&queue).await? {
        state.relay_next = Instant::now() + state.relay_wait;
        tracing::info!(relay = %relay, retry_in = ?state.relay_wait, "notices still queued; will retry");
        state.relay_wait = (state.relay_wait * 2).min(MAX_RETRY.max(shared.cfg.bounce.retry));
    } else {
        state.relay_wait = shared.cfg.bounce.retry;
    }
    Ok(())
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2)
}
