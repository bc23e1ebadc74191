//! Measurement 1: inbound accept rate. smtp-source sends N messages over S sessions into
//! `odmr server`, into the throwaway Postfix (both durable), and into smtp-sink (the ceiling).
//!
//! "Every 250 durable" is checked, not assumed: after the run the server is killed with
//! SIGKILL (no chance to flush anything) and the store must hold exactly the messages
//! smtp-source had acknowledged; Postfix's hold queue must hold them too.

use crate::odmr::{self, Server, ServerOpts, DOMAIN, PASSWORD, USER};
use crate::peers::{Postfix, SmtpSink, Source};
use crate::report::{Figure, Peer, Row, Target};
use crate::Ctx;
use anyhow::{bail, Result};
use std::time::Duration;

/// Exim 4.99.1's figure from issue #6 (not measured here): ours must be well ahead of it.
pub const EXIM_INBOUND: f64 = 2_250.0;

/// The outcome of one timed smtp-source run.
#[derive(Debug, Clone, Copy)]
pub struct Timed {
    pub done: u64,
    pub elapsed: Duration,
    /// Cut at the time limit.
    pub partial: bool,
}

impl Timed {
    pub fn rate(&self) -> f64 {
        self.done as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn note(&self, who: &str, of: u64) -> Option<String> {
        self.partial.then(|| {
            format!(
                "{who} was cut at the time limit: {} of {of} messages in {:.1} s",
                self.done,
                self.elapsed.as_secs_f64()
            )
        })
    }
}

/// Run `src` into 127.0.0.1:`port` within `limit`; a run cut at the limit reports what
/// `count()` says was done.
pub async fn time_source<F, Fut>(
    ctx: &Ctx,
    src: &Source,
    port: u16,
    limit: Duration,
    count: F,
) -> Result<Timed>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<u64>>,
{
    let program = match &ctx.smtp_source {
        Ok(p) => p.clone(),
        Err(why) => bail!("{why}"),
    };
    let f = src.spawn(&program, port)?.wait(limit).await;
    match f.status {
        Some(s) if s.success() => Ok(Timed {
            done: src.messages,
            elapsed: f.elapsed,
            partial: false,
        }),
        Some(_) => bail!("{}", f.describe("smtp-source")),
        None => Ok(Timed {
            done: count().await?,
            elapsed: f.elapsed,
            partial: true,
        }),
    }
}

pub async fn run(ctx: &Ctx) -> Vec<Row> {
    let p = &ctx.p;
    let what = format!(
        "inbound accept rate: {} × {} B over {} sessions (smtp-source), durable",
        p.messages, p.size, p.sessions
    );
    let src = Source {
        sessions: p.sessions,
        messages: p.messages,
        size: p.size,
        to: format!("user@{DOMAIN}"),
    };
    let ours = ours(ctx, &src).await;
    let postfix = postfix(ctx, &src).await;
    let sink = sink(ctx, &src).await;

    let mut notes = Vec::new();
    let ours_fig = match &ours {
        Ok(t) => {
            notes.extend(t.note("odmr", p.messages));
            Ok(Figure::rate(t.rate()))
        }
        Err(e) => Err(format!("{e:#}")),
    };
    let pf_peer = match &postfix {
        Ok(Ok(t)) => {
            notes.extend(t.note("Postfix", p.messages));
            Peer::Measured {
                name: "Postfix (hold)".into(),
                figure: Figure::rate(t.rate()),
            }
        }
        Ok(Err(e)) => Peer::Unavailable {
            name: "Postfix".into(),
            why: format!("{e:#}"),
        },
        Err(why) => Peer::Unavailable {
            name: "Postfix".into(),
            why: why.clone(),
        },
    };
    let sink_peer = match &sink {
        Ok(t) => Peer::Measured {
            name: "smtp-sink".into(),
            figure: Figure::rate(t.rate()),
        },
        Err(e) => Peer::Unavailable {
            name: "smtp-sink".into(),
            why: format!("{e:#}"),
        },
    };
    let mut a = Row::new(
        "1a",
        what.clone(),
        ours_fig.clone(),
        pf_peer,
        Target::All(vec![Target::RatioAtLeast(3.0), Target::AtLeast(EXIM_INBOUND)]),
    )
    .note(
        "every 250 durable: after the run odmr is killed with SIGKILL and its store must hold every \
         acknowledged message; Postfix's hold queue is counted the same way; 2,250/s is Exim 4.99.1's \
         figure from issue #6 (not run here)",
    );
    a.notes.extend(notes);
    let b = Row::new(
        "1b",
        "inbound accept rate vs the no-disk ceiling",
        ours_fig,
        sink_peer,
        Target::RatioAtLeast(0.30),
    );
    vec![a, b]
}

async fn ours(ctx: &Ctx, src: &Source) -> Result<Timed> {
    let dir = ctx.dir("inbound-odmr")?;
    let store = dir.join("store");
    let opts = ServerOpts {
        // Every session from 127.0.0.1 must get in.
        max_connections: Some(src.sessions + 64),
        ..Default::default()
    };
    let server = Server::start(&ctx.odmr, &dir, &store, &opts, &ctx.log).await?;
    server.add_account(&ctx.odmr, USER, PASSWORD, &[DOMAIN]).await?;
    let t = time_source(ctx, src, server.smtp.port(), ctx.p.cap, || {
        odmr::pending(&store, DOMAIN)
    })
    .await;
    // Durable before acknowledged: kill without warning, then count.
    server.kill().await;
    let t = t?;
    let held = odmr::pending(&store, DOMAIN).await?;
    if !t.partial && held != src.messages {
        bail!(
            "smtp-source got 250 for {} messages but the store holds {held} after kill -9",
            src.messages
        );
    }
    if t.partial && held < t.done {
        bail!(
            "the store lost messages: {held} after kill -9, {} counted before",
            t.done
        );
    }
    Ok(t)
}

/// The outer error: Postfix is unavailable (why); the inner: it ran and failed.
async fn postfix(ctx: &Ctx, src: &Source) -> Result<Result<Timed>, String> {
    let dir = ctx.dir("inbound-postfix").map_err(|e| format!("{e:#}"))?;
    let pf = Postfix::start(&dir, DOMAIN, None).await?;
    let t = time_source(ctx, src, pf.port, ctx.p.cap, || async { Ok(pf.held()) }).await;
    let t = t.and_then(|t| {
        let held = pf.held();
        if !t.partial && held != src.messages {
            bail!("Postfix acknowledged {} messages but holds {held}", src.messages);
        }
        Ok(t)
    });
    pf.stop().await;
    Ok(t)
}

async fn sink(ctx: &Ctx, src: &Source) -> Result<Timed> {
    let program = match &ctx.smtp_sink {
        Ok(p) => p.clone(),
        Err(why) => bail!("{why}"),
    };
    let sink = SmtpSink::start(&program, None).await?;
    let t = time_source(ctx, src, sink.port, ctx.p.cap, || async {
        bail!("smtp-sink counts nothing: the ceiling run must finish")
    })
    .await?;
    drop(sink);
    Ok(t)
}
