//! Measurement 5: measurements 1 and 2 over TLS.
//!
//! smtp-source has no STARTTLS, so the inbound load over STARTTLS comes from the harness's own
//! load generator ([`smtp::load`], lockstep like smtp-source, rustls), into odmr and into the
//! throwaway Postfix offering STARTTLS with the same certificate; the same generator in plaintext
//! into odmr shows what TLS costs. The drain uses `odmr client` with STARTTLS; fetchmail has no
//! STARTTLS for ODMR, so it uses implicit TLS (`ssl`) on the server's implicit-TLS listener.
//! The certificates are a throwaway CA and a leaf for localhost/127.0.0.1 (rcgen); every client
//! verifies them.

use crate::certs::Pki;
use crate::drain;
use crate::inbound::Timed;
use crate::odmr::{self, Deliver, Server, ServerOpts, DOMAIN, PASSWORD, USER};
use crate::peers::Postfix;
use crate::report::{Peer, Row, Target};
use crate::smtp::{self, Load};
use crate::Ctx;
use anyhow::{bail, Result};
use std::sync::Arc;

pub async fn run(ctx: &Ctx) -> Vec<Row> {
    let pki = match ctx.dir("pki").and_then(|d| Pki::create(&d)) {
        Ok(p) => p,
        Err(e) => return vec![Row::failed("5", "TLS", &e)],
    };
    let n = ctx.p.messages;
    let load = Load {
        sessions: ctx.p.sessions,
        messages: n,
        size: ctx.p.size,
        to: format!("user@{DOMAIN}"),
        pipelining: false,
    };
    let mut rows = Vec::new();
    let mut notes = Vec::new();

    // ----- inbound -----
    let ours_tls = inbound_odmr(ctx, &pki, &load, true).await;
    let ours_plain = inbound_odmr(ctx, &pki, &load, false).await;
    let pf = inbound_postfix(ctx, &pki, &load).await;
    let ours = drain::figure(&ours_tls, "odmr (STARTTLS)", n, &mut notes);
    let pf_peer = match pf {
        Ok(Ok(t)) => drain::peer(&Ok(t), "Postfix (hold, STARTTLS)", n, &mut notes),
        Ok(Err(e)) => drain::peer(&Err(e), "Postfix (hold, STARTTLS)", n, &mut notes),
        Err(why) => Peer::Unavailable {
            name: "Postfix".into(),
            why,
        },
    };
    let mut a = Row::new(
        "5a",
        format!(
            "inbound over STARTTLS: {n} × {} B over {} sessions (harness's TLS load client), durable",
            ctx.p.size, ctx.p.sessions
        ),
        ours.clone(),
        pf_peer,
        Target::Report,
    )
    .note(
        "smtp-source cannot STARTTLS: the load comes from the harness's rustls client, in lockstep \
         like smtp-source, one TLS handshake per session",
    );
    a.notes.append(&mut notes);
    rows.push(a);
    let plain_peer = drain::peer(&ours_plain, "odmr, plaintext, same client", n, &mut notes);
    let mut b = Row::new(
        "5b",
        "inbound: STARTTLS vs plaintext, same client",
        ours,
        plain_peer,
        Target::Report,
    );
    b.notes.append(&mut notes);
    rows.push(b);

    // ----- drain -----
    let opts = ServerOpts {
        tls: Some((pki.cert.clone(), pki.key.clone())),
        ..Default::default()
    };
    let seed = match drain::seed(ctx, "tls-seed", opts).await {
        Ok(s) => s,
        Err(e) => {
            rows.push(Row::failed("5c", "drain over TLS", &e));
            return rows;
        }
    };
    let relay = drain::odmr_client(ctx, &seed, Deliver::Smtp, Some(&pki.ca), "tls-relay").await;
    let fm = drain::fetchmail(ctx, &seed, Some(&pki.ca), "tls-fetchmail").await;
    let ceil = drain::ceiling(ctx).await;
    let ours = drain::figure(&relay, "odmr client (STARTTLS)", n, &mut notes);
    let cp = drain::peer(&ceil, "smtp-source -s 1 → smtp-sink (plaintext)", n, &mut notes);
    let mut c = Row::new(
        "5c",
        format!("drain {n} by ATRN over STARTTLS: odmr client, smtp relay → smtp-sink"),
        ours.clone(),
        cp,
        Target::Report,
    );
    c.notes.append(&mut notes);
    rows.push(c);
    let fp = drain::peer(&fm, "fetchmail (implicit TLS)", n, &mut notes);
    let mut d = Row::new(
        "5d",
        "same, odmr client vs fetchmail over TLS",
        ours,
        fp,
        Target::Report,
    )
    .note(
        "fetchmail has no STARTTLS for ODMR: it polls the implicit-TLS listener (`ssl sslcertck`), \
         timed over the same window as in 2d",
    );
    d.notes.append(&mut notes);
    rows.push(d);
    rows
}

/// The load into a fresh odmr server (over STARTTLS if `tls`), checked after kill -9.
async fn inbound_odmr(ctx: &Ctx, pki: &Pki, load: &Load, tls: bool) -> Result<Timed> {
    let dir = ctx.dir(if tls { "tls-inbound" } else { "tls-inbound-plain" })?;
    let store = dir.join("store");
    let opts = ServerOpts {
        max_connections: Some(load.sessions + 64),
        tls: Some((pki.cert.clone(), pki.key.clone())),
        ..Default::default()
    };
    let server = Server::start(&ctx.odmr, &dir, &store, &opts, &ctx.log).await?;
    server.add_account(&ctx.odmr, USER, PASSWORD, &[DOMAIN]).await?;
    let client = tls.then(|| pki.client.clone());
    let r = smtp::load(server.smtp, load, client, ctx.p.cap).await;
    server.kill().await;
    let held = odmr::pending(&store, DOMAIN).await?;
    timed(r, held, load.messages, "odmr")
}

/// The outer error: Postfix is unavailable.
async fn inbound_postfix(ctx: &Ctx, pki: &Pki, load: &Load) -> Result<Result<Timed>, String> {
    let dir = ctx.dir("tls-inbound-postfix").map_err(|e| format!("{e:#}"))?;
    let pf = Postfix::start(&dir, DOMAIN, Some((&pki.cert, &pki.key))).await?;
    let r = smtp::load(
        format!("127.0.0.1:{}", pf.port).parse().expect("address"),
        load,
        Some(Arc::clone(&pki.client)),
        ctx.p.cap,
    )
    .await;
    let held = pf.held();
    pf.stop().await;
    Ok(timed(r, held, load.messages, "Postfix"))
}

/// Check a load's result against what the receiver holds.
fn timed(r: smtp::LoadResult, held: u64, messages: u64, who: &str) -> Result<Timed> {
    if let Some(e) = r.errors.first() {
        bail!("{} session(s) failed, first: {e}", r.errors.len());
    }
    if held < r.accepted {
        bail!("{who} acknowledged {} messages but holds {held}", r.accepted);
    }
    if !r.timed_out && r.accepted != messages {
        bail!("{who} accepted {} of {messages}", r.accepted);
    }
    Ok(Timed {
        done: r.accepted,
        elapsed: r.elapsed,
        partial: r.timed_out,
    })
}
