//! Measurement 4: memory of `odmr server`, read from /proc/PID/status.
//!
//! a) VmRSS with `idle` concurrent idle connections on the MX listener (each greeted, then
//!    silent), beside smtp-sink holding the same number (an event-driven server that stores
//!    nothing: the smallest footprint a listener can have).
//! b) Peak growth (VmHWM, reset just before through /proc/PID/clear_refs, minus VmRSS then) while
//!    one `big_mib` MiB message is received over SMTP and then delivered by ATRN (`odmr client
//!    --once` relaying into smtp-sink). The client's own peak is sampled as it runs and noted.

use crate::drain::sink_program;
use crate::odmr::{self, Deliver, Server, ServerOpts, DOMAIN, PASSWORD, USER};
use crate::peers::SmtpSink;
use crate::procs::{self, Mem};
use crate::report::{Figure, Peer, Row, Target};
use crate::smtp;
use crate::Ctx;
use anyhow::{bail, Context, Result};
use std::time::{Duration, Instant};

/// Connections opening at once.
const PARALLEL_CONNECTS: usize = 256;

pub async fn run(ctx: &Ctx) -> Vec<Row> {
    let mut rows = Vec::new();
    match idle(ctx).await {
        Ok(r) => rows.push(r),
        Err(e) => rows.push(Row::failed(
            "4a",
            format!("RSS with {} idle connections", ctx.p.idle),
            &e,
        )),
    }
    match big(ctx).await {
        Ok(r) => rows.push(r),
        Err(e) => rows.push(Row::failed(
            "4b",
            format!("RSS growth, one {} MiB message in and out", ctx.p.big_mib),
            &e,
        )),
    }
    rows
}

async fn idle(ctx: &Ctx) -> Result<Row> {
    let n = ctx.p.idle;
    let dir = ctx.dir("memory-idle")?;
    let opts = ServerOpts {
        max_connections: Some(n + 100),
        ..Default::default()
    };
    let server = Server::start(&ctx.odmr, &dir, &dir.join("store"), &opts, &ctx.log).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = procs::mem(server.pid())?;
    let conns = smtp::open_idle(server.smtp, n, PARALLEL_CONNECTS)
        .await
        .context("opening the idle connections to odmr")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let with = procs::mem(server.pid())?;
    drop(conns);
    server.stop().await?;

    let peer = match sink_idle(ctx, n).await {
        Ok(m) => Peer::Measured {
            name: "smtp-sink".into(),
            figure: Figure::mib(m.rss_mib()),
        },
        Err(e) => Peer::Unavailable {
            name: "smtp-sink".into(),
            why: format!("{e:#}"),
        },
    };
    Ok(Row::new(
        "4a",
        format!("RSS of odmr server with {n} idle connections (MX, greeted)"),
        Ok(Figure::mib(with.rss_mib())),
        peer,
        Target::Below(200.0),
    )
    .note(format!(
        "{:.1} MiB before the connections, so {:.1} KiB per idle connection",
        before.rss_mib(),
        (with.rss_kib.saturating_sub(before.rss_kib)) as f64 / n.max(1) as f64
    )))
}

async fn sink_idle(ctx: &Ctx, n: usize) -> Result<Mem> {
    let sink = SmtpSink::start(&sink_program(ctx)?, Some(n + 16)).await?;
    let addr = format!("127.0.0.1:{}", sink.port).parse()?;
    let conns = smtp::open_idle(addr, n, PARALLEL_CONNECTS)
        .await
        .context("opening the idle connections to smtp-sink")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let m = procs::mem(sink.pid())?;
    drop(conns);
    Ok(m)
}

async fn big(ctx: &Ctx) -> Result<Row> {
    let bytes = ctx.p.big_mib << 20;
    let dir = ctx.dir("memory-big")?;
    let store = dir.join("store");
    let opts = ServerOpts {
        // The message and its header fields must fit.
        smtp: format!("max_message_size = {}", bytes + (1 << 20)),
        ..Default::default()
    };
    let server = Server::start(&ctx.odmr, &dir, &store, &opts, &ctx.log).await?;
    server.add_account(&ctx.odmr, USER, PASSWORD, &[DOMAIN]).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = server.pid();
    let reset = procs::reset_hwm(pid);
    let before = procs::mem(pid)?;
    // Without a reset, the peak since start is the baseline (a conservative growth).
    let base_kib = if reset { before.rss_kib } else { before.hwm_kib };

    let received_in = tokio::time::timeout(
        ctx.p.cap,
        smtp::send_big(server.smtp, &format!("big@{DOMAIN}"), bytes),
    )
    .await
    .map_err(|_| anyhow::anyhow!("sending the large message overran {:?}", ctx.p.cap))??;
    let after_receive = procs::mem(pid)?;

    let sink = SmtpSink::start(&sink_program(ctx)?, None).await?;
    // Splice: smtp-sink announces SIZE without a number, and the relay then announces its own
    // default limit (50 MiB) to the provider, which would refuse the large message.
    let mut client = odmr::client_spawn(&ctx.odmr, &dir, server.odmr, Deliver::Splice, sink.port, None)?;
    let cpid = client.pid().context("client pid")?;
    let started = Instant::now();
    let mut client_peak = 0u64;
    while client.exited().is_none() && started.elapsed() < ctx.p.cap {
        if let Ok(m) = procs::mem(cpid) {
            client_peak = client_peak.max(m.hwm_kib);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let f = client.wait(Duration::from_secs(5)).await;
    let delivered_in = started.elapsed();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after_delivery = procs::mem(pid)?;
    server.stop().await?;
    drop(sink);
    let left = odmr::in_queue(&store).await?;
    if !f.success() || left != 0 {
        bail!(
            "the large message was not delivered ({left} left); {}",
            f.describe("odmr client")
        );
    }

    let growth = |m: &Mem| m.hwm_kib.saturating_sub(base_kib) as f64 / 1024.0;
    let mut row = Row::new(
        "4b",
        format!(
            "peak RSS growth of odmr server: one {} MiB message received, then delivered by ATRN",
            ctx.p.big_mib
        ),
        Ok(Figure::mib(growth(&after_delivery))),
        Peer::Nothing("no peer (growth over its own baseline)".into()),
        Target::Below(32.0),
    )
    .note(format!(
        "baseline {:.1} MiB; peak growth {:.1} MiB after receiving (in {:.1} s), {:.1} MiB after \
         delivering (in {:.1} s, spliced to smtp-sink); odmr client peak RSS {:.1} MiB (sampled every 20 ms)",
        base_kib as f64 / 1024.0,
        growth(&after_receive),
        received_in.as_secs_f64(),
        growth(&after_delivery),
        delivered_in.as_secs_f64(),
        client_peak as f64 / 1024.0
    ));
    if !reset {
        row = row.note("the kernel refused to reset VmHWM: growth is over the peak since start");
    }
    Ok(row)
}
