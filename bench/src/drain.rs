//! Measurement 2: draining one domain's held mail over one reversed connection (ATRN), into
//! smtp-sink as the customer's MTA: `odmr client --once` relaying in lockstep, `odmr client`
//! splicing bytes, and fetchmail (`proto odmr`); the ceilings are smtp-source with one session
//! into smtp-sink (lockstep) and the harness's client with one session and PIPELINING.
//!
//! The queue is filled once through the MX with smtp-source, the server is stopped cleanly, and
//! every variant runs on its own copy of that store, so all drain the same N messages. What was
//! delivered is read from the store afterwards (a message leaves it once delivered, after the
//! sink's 250; a failed one stays), never taken from an exit code (fetchmail's says nothing).

use crate::inbound::{time_source, Timed};
use crate::odmr::{self, Deliver, Server, ServerOpts, DOMAIN, PASSWORD, USER};
use crate::peers::{Fetchmail, SmtpSink, Source};
use crate::procs;
use crate::report::{Figure, Peer, Row, Target};
use crate::Ctx;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A filled, stopped store to copy, with the server options it was made with.
pub struct Seed {
    pub store: PathBuf,
    pub messages: u64,
    pub opts: ServerOpts,
}

/// Fill a store with `ctx.p.messages` messages for our domain through the MX (smtp-source),
/// then stop the server cleanly.
pub async fn seed(ctx: &Ctx, name: &str, opts: ServerOpts) -> Result<Seed> {
    let dir = ctx.dir(name)?;
    let store = dir.join("store");
    let opts = ServerOpts {
        max_connections: Some(ctx.p.sessions + 64),
        ..opts
    };
    let server = Server::start(&ctx.odmr, &dir, &store, &opts, &ctx.log).await?;
    server.add_account(&ctx.odmr, USER, PASSWORD, &[DOMAIN]).await?;
    let src = Source {
        sessions: ctx.p.sessions,
        messages: ctx.p.messages,
        size: ctx.p.size,
        to: format!("user@{DOMAIN}"),
    };
    // Filling is not measured: give it more time than a measured run.
    let t = time_source(ctx, &src, server.smtp.port(), ctx.p.cap * 3, || async { Ok(0) }).await?;
    if t.partial {
        bail!("filling the queue did not finish in {:?}", ctx.p.cap * 3);
    }
    server.stop().await?;
    let held = odmr::pending(&store, DOMAIN).await?;
    if held != ctx.p.messages {
        bail!("the seeded store holds {held} messages, not {}", ctx.p.messages);
    }
    Ok(Seed {
        store,
        messages: held,
        opts,
    })
}

/// Copy a stopped store. The last process to close it may still be removing its WAL file as
/// we list the directory: a file that vanishes under the copy starts it again.
async fn copy_store(from: &Path, to: &Path) -> Result<()> {
    let mut tries = 0;
    loop {
        let _ = std::fs::remove_dir_all(to);
        match procs::copy_dir(from, to) {
            Ok(()) => return Ok(()),
            Err(e) if tries < 20 && is_not_found(&e) => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
    })
}

/// A server on a fresh copy of the seed's store.
pub async fn server_on_copy(ctx: &Ctx, seed: &Seed, name: &str) -> Result<(Server, PathBuf)> {
    let dir = ctx.dir(name)?;
    let store = dir.join("store");
    copy_store(&seed.store, &store).await?;
    let copied = odmr::pending(&store, DOMAIN).await?;
    if copied != seed.messages {
        bail!(
            "the copy of the seeded store holds {copied} messages, not {}",
            seed.messages
        );
    }
    let server = Server::start(&ctx.odmr, &dir, &store, &seed.opts, &ctx.log).await?;
    Ok((server, store))
}

pub fn sink_program(ctx: &Ctx) -> Result<PathBuf> {
    match &ctx.smtp_sink {
        Ok(p) => Ok(p.clone()),
        Err(why) => bail!("{why}"),
    }
}

/// `odmr client --once` draining a copy of the seed into a fresh smtp-sink.
pub async fn odmr_client(
    ctx: &Ctx,
    seed: &Seed,
    deliver: Deliver,
    ca: Option<&Path>,
    name: &str,
) -> Result<Timed> {
    let (server, store) = server_on_copy(ctx, seed, name).await?;
    let sink = SmtpSink::start(&sink_program(ctx)?, None).await?;
    let f = odmr::client_once(
        &ctx.odmr,
        &ctx.work.join(name),
        server.odmr,
        deliver,
        sink.port,
        ca,
        ctx.p.cap,
    )
    .await?;
    // Let the server record the last outcome and end the session.
    tokio::time::sleep(Duration::from_millis(200)).await;
    server
        .stop()
        .await
        .context("stopping the server after the drain")?;
    drop(sink);
    // Delivered messages leave the store; anything else (queued, failed) stays.
    let left = odmr::in_queue(&store).await?;
    let done = seed.messages - left.min(seed.messages);
    let t = Timed {
        done,
        elapsed: f.elapsed,
        partial: f.status.is_none(),
    };
    match f.status {
        None => Ok(t),
        Some(s) if s.success() && left == 0 => Ok(t),
        Some(s) if s.success() => bail!(
            "one session delivered only {done} of {} messages ({:.0}/s over those) and odmr client \
             exited 0; {left} stay in the store",
            seed.messages,
            t.rate()
        ),
        Some(_) => bail!(
            "{left} messages left in the store; {}",
            f.describe("odmr client --once")
        ),
    }
}

/// fetchmail draining a copy of the seed into a fresh smtp-sink, for at most `window`; with
/// `ca`, over implicit TLS.
pub async fn fetchmail(ctx: &Ctx, seed: &Seed, ca: Option<&Path>, name: &str) -> Result<Timed> {
    let program = match &ctx.fetchmail {
        Ok(p) => p.clone(),
        Err(why) => bail!("{why}"),
    };
    let (server, store) = server_on_copy(ctx, seed, name).await?;
    let sink = SmtpSink::start(&sink_program(ctx)?, None).await?;
    let port = match ca {
        Some(_) => server.odmr_tls.context("no implicit-TLS listener")?.port(),
        None => server.odmr.port(),
    };
    let mut fm = Fetchmail::spawn(&program, &ctx.work, port, sink.port, ca)?;
    let started = Instant::now();
    let window = ctx.p.fetchmail_window;
    let mut left = seed.messages;
    let mut exited = None;
    while started.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(250)).await;
        left = odmr::pending(&store, DOMAIN).await?;
        if left == 0 {
            break;
        }
        if let Some(st) = fm.proc.exited() {
            exited = Some(st);
            break;
        }
    }
    let elapsed = started.elapsed();
    let output = fm.proc.output();
    drop(fm);
    tokio::time::sleep(Duration::from_millis(200)).await;
    server
        .stop()
        .await
        .context("stopping the server after fetchmail")?;
    drop(sink);
    let left_after = odmr::in_queue(&store).await?;
    let done = seed.messages - left_after.min(seed.messages);
    if done == 0 {
        bail!(
            "fetchmail delivered nothing in {:.1} s (exit {exited:?}); output:\n{output}",
            elapsed.as_secs_f64()
        );
    }
    if exited.is_some() && left > 0 {
        bail!("fetchmail exited ({exited:?}) with {left} messages still queued; output:\n{output}");
    }
    Ok(Timed {
        done,
        elapsed,
        partial: left_after > 0,
    })
}

/// smtp-source, one session, N messages into smtp-sink.
pub async fn ceiling(ctx: &Ctx) -> Result<Timed> {
    let sink = SmtpSink::start(&sink_program(ctx)?, None).await?;
    let src = Source {
        sessions: 1,
        messages: ctx.p.messages,
        size: ctx.p.size,
        to: format!("user@{DOMAIN}"),
    };
    let t = time_source(ctx, &src, sink.port, ctx.p.cap, || async {
        bail!("smtp-sink counts nothing: the ceiling run must finish")
    })
    .await?;
    drop(sink);
    Ok(t)
}

/// The same with pipelining, which smtp-source lacks: the harness's client, one session,
/// MAIL/RCPT/DATA in one write, into smtp-sink.
pub async fn pipelined_ceiling(ctx: &Ctx) -> Result<Timed> {
    let sink = SmtpSink::start(&sink_program(ctx)?, None).await?;
    let load = crate::smtp::Load {
        sessions: 1,
        messages: ctx.p.messages,
        size: ctx.p.size,
        to: format!("user@{DOMAIN}"),
        pipelining: true,
    };
    let addr = format!("127.0.0.1:{}", sink.port).parse()?;
    let r = crate::smtp::load(addr, &load, None, ctx.p.cap).await;
    drop(sink);
    if let Some(e) = r.errors.first() {
        bail!("{e}");
    }
    Ok(Timed {
        done: r.accepted,
        elapsed: r.elapsed,
        partial: r.timed_out,
    })
}

pub fn figure(t: &Result<Timed>, who: &str, of: u64, notes: &mut Vec<String>) -> Result<Figure, String> {
    match t {
        Ok(t) => {
            notes.extend(t.note(who, of));
            Ok(Figure::rate(t.rate()))
        }
        Err(e) => Err(format!("{e:#}")),
    }
}

pub fn peer(t: &Result<Timed>, name: &str, of: u64, notes: &mut Vec<String>) -> Peer {
    match t {
        Ok(t) => {
            notes.extend(t.note(name, of));
            Peer::Measured {
                name: name.into(),
                figure: Figure::rate(t.rate()),
            }
        }
        Err(e) => Peer::Unavailable {
            name: name.into(),
            why: format!("{e:#}"),
        },
    }
}

pub async fn run(ctx: &Ctx) -> Vec<Row> {
    let n = ctx.p.messages;
    let seed = match seed(ctx, "drain-seed", ServerOpts::default()).await {
        Ok(s) => s,
        Err(e) => return vec![Row::failed("2", "drain over one reversed connection", &e)],
    };
    let relay = odmr_client(ctx, &seed, Deliver::Smtp, None, "drain-relay").await;
    let splice = odmr_client(ctx, &seed, Deliver::Splice, None, "drain-splice").await;
    let fm = fetchmail(ctx, &seed, None, "drain-fetchmail").await;
    let ceil = ceiling(ctx).await;
    let piped = pipelined_ceiling(ctx).await;

    let target = || Target::All(vec![Target::AtLeast(10_000.0), Target::RatioAtLeast(0.5)]);
    let ceiling_name = "smtp-source -s 1 → smtp-sink";
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let ours = figure(&relay, "odmr client (relay)", n, &mut notes);
    let cp = peer(&ceil, ceiling_name, n, &mut notes);
    let mut a = Row::new(
        "2a",
        format!("drain {n} held × {} B by ATRN: odmr client, smtp relay → smtp-sink", ctx.p.size),
        ours.clone(),
        cp.clone(),
        target(),
    )
    .note(
        "timed from the start of `odmr client --once` to its exit (connect, AUTH, ATRN, every \
         message, QUIT); delivered = what left the store (delivered messages are removed, failed ones stay)",
    )
    .note("this ceiling is smtp-source, which does not pipeline (its manual: \"No SMTP command pipelining support\"); see 2c");
    a.notes.append(&mut notes);
    rows.push(a);

    let sp = figure(&splice, "odmr client (splice)", n, &mut notes);
    let mut b = Row::new(
        "2b",
        "same, odmr client splicing bytes to smtp-sink",
        sp.clone(),
        cp,
        target(),
    );
    b.notes.append(&mut notes);
    rows.push(b);

    let pp = peer(&piped, "1 session, PIPELINING → smtp-sink", n, &mut notes);
    let mut c = Row::new(
        "2c",
        "same, relay, against a pipelining ceiling",
        ours.clone(),
        pp.clone(),
        target(),
    )
    .note(
        "issue #6 names the ceiling \"single session into smtp-sink, with pipelining\"; smtp-source \
         cannot pipeline, so this ceiling is the harness's own client (MAIL, RCPT, DATA in one write, \
         and each final dot followed by the next message's envelope in the same write)",
    );
    c.notes.append(&mut notes);
    rows.push(c);

    let fp = peer(&fm, "fetchmail", n, &mut notes);
    let mut c = Row::new(
        "2d",
        "same, relay: odmr client vs fetchmail",
        ours,
        fp,
        Target::Report,
    )
    .note(format!(
        "fetchmail is timed over at most {} s (it relays line by line) and its rate is what left the \
         store in that time",
        ctx.p.fetchmail_window.as_secs()
    ));
    c.notes.append(&mut notes);
    rows.push(c);

    // The splice's figure against the same honest ceiling: splicing, the provider talks to
    // smtp-sink through the client, so this is where the provider's own pipelining shows.
    let mut e = Row::new(
        "2e",
        "same, splice, against the pipelining ceiling",
        sp,
        pp,
        target(),
    );
    e.notes.append(&mut notes);
    rows.push(e);
    rows
}
