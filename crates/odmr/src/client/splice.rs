//! Byte splice: after the turnaround, copy bytes both ways between the provider and a local
//! SMTP server, for MTAs that want to talk to the provider themselves (fetchmail's model, done
//! right: byte copies rather than line relaying, an idle timeout, a clean close on both sides).
//!
//! Invariants:
//! - Bytes the provider sent right after its 250 (already in our buffer) go to the local side
//!   first, in order.
//! - When one side closes, the other side's write half is shut down and we keep copying the
//!   other direction until it closes too, so replies in flight (the 221 to QUIT) are not lost.
//! - Silence in both directions for longer than the idle timeout ends the session.
//! - The local MTA's replies pass unchanged but for STARTTLS, which leaves its EHLO replies
//!   ([`StartTlsFilter`]): the reversed session never offers TLS (RFC 3207 §4.2 once TLS is on;
//!   and the splice would lose sight of the session inside TLS).

use crate::net::conn::Conn;
use odmr_proto::dialogue::Event;
use odmr_proto::splice_observer::SpliceObserver;
use odmr_proto::starttls_filter::StartTlsFilter;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Default)]
pub struct Spliced {
    pub to_local: u64,
    pub to_provider: u64,
    /// Messages the local server accepted (2xx to the final dot) and refused.
    pub delivered: u64,
    pub refused: u64,
    pub error: Option<String>,
}

/// `local` is connected before ATRN is sent (so no ATRN goes out while the local server is
/// down); its greeting waits in the socket until the turnaround.
pub async fn splice(provider: Conn, local: Conn, idle: Duration) -> Spliced {
    let mut out = Spliced::default();
    let mut watch = SpliceObserver::new();
    // The spliced dialogue in the debug transcript, as the other connections have it.
    let transcript = tracing::enabled!(target: crate::net::transcript::TARGET, tracing::Level::DEBUG);
    let mut log = |e: Event<'_>| {
        if transcript {
            crate::net::transcript::log(e);
        }
    };
    let (Some((p_stream, pending)), Some((l_stream, _))) = (provider.into_parts(), local.into_parts()) else {
        out.error = Some("connection already closed".into());
        return out;
    };
    let (mut pr, mut pw) = tokio::io::split(p_stream);
    let (mut lr, mut lw) = tokio::io::split(l_stream);
    if !pending.is_empty() {
        if let Err(e) = lw.write_all(&pending).await {
            out.error = Some(format!("local write failed: {e}"));
            return out;
        }
        out.to_local += pending.len() as u64;
        watch.provider_seen(&pending, &mut log);
    }
    let mut pbuf = vec![0u8; 64 * 1024];
    let mut lbuf = vec![0u8; 64 * 1024];
    let mut filter = StartTlsFilter::new();
    // The local MTA's bytes as they go to the provider (filtered).
    let mut to_provider = Vec::with_capacity(64 * 1024);
    let (mut p_open, mut l_open) = (true, true);
    while p_open || l_open {
        let step = tokio::time::timeout(idle, async {
            tokio::select! {
                r = pr.read(&mut pbuf), if p_open => (true, r),
                r = lr.read(&mut lbuf), if l_open => (false, r),
            }
        })
        .await;
        let Ok((from_provider, read)) = step else {
            out.error = Some(format!("no traffic for {idle:?}; closing both sides"));
            break;
        };
        // What this read passes on: the provider's bytes as they are, the local MTA's filtered
        // (at its end, whatever the filter still held).
        to_provider.clear();
        let n = *read.as_ref().unwrap_or(&0);
        let (bytes, w, open): (&[u8], &mut (dyn tokio::io::AsyncWrite + Unpin + Send), _) = if from_provider {
            (&pbuf[..n], &mut lw, &mut p_open)
        } else {
            if n > 0 {
                filter.feed(&lbuf[..n], &mut to_provider);
            } else {
                filter.finish(&mut to_provider);
            }
            (&to_provider[..], &mut pw, &mut l_open)
        };
        if !bytes.is_empty() {
            let wrote = tokio::time::timeout(idle, w.write_all(bytes)).await;
            if !matches!(wrote, Ok(Ok(()))) {
                out.error = Some("write failed while splicing".into());
                break;
            }
            if from_provider {
                out.to_local += bytes.len() as u64;
                watch.provider_seen(bytes, &mut log);
            } else {
                out.to_provider += bytes.len() as u64;
                watch.local_seen(bytes, &mut log);
            }
        }
        if n == 0 {
            // Closed (or failed): shut the other side's write half, keep copying the other way.
            *open = false;
            let _ = w.shutdown().await;
        }
    }
    let _ = lw.shutdown().await;
    let _ = pw.shutdown().await;
    out.delivered = watch.delivered;
    out.refused = watch.refused;
    out
}
