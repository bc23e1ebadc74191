//! Measurement 3: ATRN turnaround (ATRN sent → the provider's first MAIL FROM read) for a
//! domain holding 10 messages, while the store holds many more for other domains: first
//! `store_small`, then `store_large` messages spread over `other_domains` domains.
//!
//! The store is bulk-loaded through the `odmr-store` API with the server stopped (opening it
//! from another process is safe, so this is what an import tool could do), with many concurrent
//! writers. The measuring customer is the harness's scripted client ([`smtp::atrn_turnaround`]):
//! it answers the provider's first MAIL FROM with 421, so the 10 messages stay queued and every
//! round measures the same thing; the median of the rounds is reported.

use crate::odmr::{self, Server, ServerOpts, DOMAIN, PASSWORD, USER};
use crate::report::{Figure, Peer, Row, Target};
use crate::smtp;
use crate::Ctx;
use anyhow::{bail, Context, Result};
use odmr_store::{CommitInfo, Envelope, EnvelopeRecipient, Store};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Messages held for the measured domain.
const OWN_MESSAGES: u64 = 10;
/// Concurrent writers of the bulk loader.
const WRITERS: usize = 256;

/// The name of other domain number `i`.
fn other_domain(i: u64) -> String {
    format!("d{i}.other.example")
}

/// Load `count` messages of `size` octets, message `k` (counting from `first`) for
/// `user@` other domain `k % domains`; returns the rate of loading.
pub async fn load(store: &Store, first: u64, count: u64, domains: u64, size: usize) -> Result<f64> {
    let body = Arc::new(smtp::message("someone@other.example", size));
    let next = Arc::new(AtomicU64::new(first));
    let end = first + count;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..WRITERS {
        let (store, body, next) = (store.clone(), body.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= end {
                    return Ok::<(), anyhow::Error>(());
                }
                let to = format!("user{}@{}", k / domains, other_domain(k % domains));
                put(&store, &to, &body).await?;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.context("loader task")??;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64().max(1e-9))
}

async fn put(store: &Store, to: &str, body: &[u8]) -> Result<()> {
    let mut w = store
        .receive(Envelope {
            mail_from: "sender@source.bench.test".into(),
            mail_params: String::new(),
            recipients: vec![EnvelopeRecipient {
                address: to.into(),
                params: String::new(),
            }],
            helo: "loader.bench.test".into(),
            client_addr: "127.0.0.1:0".into(),
        })
        .await?;
    w.write(body).await?;
    w.commit(CommitInfo::default()).await?;
    Ok(())
}

/// Give the other domains owners (accounts of 100 domains each), as on a real provider.
async fn other_accounts(store: &Store, domains: u64) -> Result<()> {
    let mut i = 0;
    while i < domains {
        let chunk: Vec<String> = (i..(i + 100).min(domains)).map(other_domain).collect();
        store
            .account_add(&format!("other{}", i / 100), &[], &chunk)
            .await
            .context("add the other domains' accounts")?;
        i += 100;
    }
    Ok(())
}

/// The median of `rounds` turnarounds against `addr`.
async fn measure(addr: std::net::SocketAddr, rounds: usize) -> Result<(Duration, Vec<Duration>)> {
    let mut times = Vec::new();
    let mut refused = 0;
    while times.len() < rounds {
        match smtp::atrn_turnaround(addr, USER, PASSWORD, DOMAIN).await? {
            Some(t) => times.push(t),
            None => {
                // The previous round's lease is still being released: try again shortly.
                refused += 1;
                if refused > 50 * rounds {
                    bail!("ATRN was refused {refused} times");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let mut sorted = times.clone();
    sorted.sort();
    Ok((sorted[sorted.len() / 2], times))
}

pub async fn run(ctx: &Ctx) -> Vec<Row> {
    match measure_both(ctx).await {
        Ok(rows) => rows,
        Err(e) => vec![Row::failed("3", "ATRN turnaround", &e)],
    }
}

async fn measure_both(ctx: &Ctx) -> Result<Vec<Row>> {
    let p = &ctx.p;
    let dir = ctx.dir("turnaround")?;
    let store_dir = dir.join("store");
    let domains = p.other_domains as u64;

    // The server creates the store; our account goes in through the operators' CLI.
    let server = Server::start(&ctx.odmr, &dir, &store_dir, &ServerOpts::default(), &ctx.log).await?;
    server.add_account(&ctx.odmr, USER, PASSWORD, &[DOMAIN]).await?;
    for i in 0..OWN_MESSAGES {
        let r = smtp_send(server.smtp, &format!("u{i}@{DOMAIN}"), p.size).await;
        r.with_context(|| format!("message {i} for {DOMAIN}"))?;
    }
    server.stop().await?;

    let store = odmr::open_store(&store_dir).await?;
    other_accounts(&store, domains).await?;
    eprintln!(
        "bench: loading {} messages for {domains} other domains",
        p.store_small
    );
    let rate_small = load(&store, 0, p.store_small, domains, p.size).await?;
    store.close().await;
    let small = timed_rounds(ctx, &dir, &store_dir).await?;

    let store = odmr::open_store(&store_dir).await?;
    eprintln!("bench: loading {} more messages", p.store_large - p.store_small);
    let rate_large = load(
        &store,
        p.store_small,
        p.store_large - p.store_small,
        domains,
        p.size,
    )
    .await?;
    let own = store.pending_count(&[DOMAIN.to_string()]).await?;
    store.close().await;
    if own != OWN_MESSAGES {
        bail!("{DOMAIN} holds {own} messages, not {OWN_MESSAGES}");
    }
    let large = timed_rounds(ctx, &dir, &store_dir).await?;

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let spread = |v: &[Duration]| {
        let mut s = v.to_vec();
        s.sort();
        format!("{:.2}–{:.2} ms", ms(s[0]), ms(s[s.len() - 1]))
    };
    let a = Row::new(
        "3a",
        format!(
            "ATRN → first MAIL FROM, {OWN_MESSAGES} messages held, store of {} other messages",
            p.store_small
        ),
        Ok(Figure::millis(ms(small.median))),
        Peer::Nothing("no peer run (Exim: 2.1 s at 2,000, 9.9 s at 10,000; issue #6)".into()),
        Target::Below(20.0),
    )
    .note(format!(
        "median of {} ATRNs (range {}; the first after the start, not counted: {:.2} ms); the \
         scripted customer answers the first MAIL FROM with 421 so the mail stays queued between rounds",
        p.rounds,
        spread(&small.all),
        ms(small.first)
    ))
    .note(format!(
        "store bulk-loaded through odmr-store with {WRITERS} concurrent writers at {:.0} messages/s, \
         each message committed on its own (the store groups concurrent commits), {domains} other \
         domains",
        rate_small
    ));
    let b = Row::new(
        "3b",
        format!("same, store of {} other messages", p.store_large),
        Ok(Figure::millis(ms(large.median))),
        Peer::Measured {
            name: format!("odmr at {}", p.store_small),
            figure: Figure::millis(ms(small.median)),
        },
        Target::All(vec![
            Target::Below(20.0),
            Target::Flat {
                ratio: 1.5,
                slack: 2.0,
            },
        ]),
    )
    .note(format!(
        "median of {} ATRNs (range {}; first after the start: {:.2} ms); further messages loaded at {:.0}/s",
        p.rounds,
        spread(&large.all),
        ms(large.first),
        rate_large
    ));
    Ok(vec![a, b])
}

/// Start the server on the store, run the rounds, stop it.
async fn timed_rounds(ctx: &Ctx, dir: &Path, store: &Path) -> Result<Rounds> {
    let server = Server::start(&ctx.odmr, dir, store, &ServerOpts::default(), &ctx.log).await?;
    // One ATRN first, not in the median: right after a start the caches are cold, unlike a
    // server that has been running; it is reported in a note.
    let first = measure(server.odmr, 1).await?.0;
    let r = measure(server.odmr, ctx.p.rounds).await;
    server.stop().await?;
    let (median, all) = r?;
    Ok(Rounds { median, all, first })
}

struct Rounds {
    median: Duration,
    all: Vec<Duration>,
    /// The first ATRN after the server started.
    first: Duration,
}

/// One message through the MX (our own mail must arrive the normal way).
async fn smtp_send(addr: std::net::SocketAddr, to: &str, size: usize) -> Result<()> {
    let l = smtp::Load {
        sessions: 1,
        messages: 1,
        size,
        to: to.into(),
        pipelining: false,
    };
    let r = smtp::load(addr, &l, None, Duration::from_secs(60)).await;
    if r.accepted != 1 {
        bail!("not accepted: {:?}", r.errors);
    }
    Ok(())
}
