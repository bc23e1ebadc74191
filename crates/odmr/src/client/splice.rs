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

use crate::net::conn::Conn;
use odmr_proto::splice_observer::SpliceObserver;
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
        watch.provider(&pending);
    }
    let mut pbuf = vec![0u8; 64 * 1024];
    let mut lbuf = vec![0u8; 64 * 1024];
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
        let (buf, w, open) = if from_provider {
            (
                &pbuf,
                &mut lw as &mut (dyn tokio::io::AsyncWrite + Unpin + Send),
                &mut p_open,
            )
        } else {
            (
                &lbuf,
                &mut pw as &mut (dyn tokio::io::AsyncWrite + Unpin + Send),
                &mut l_open,
            )
        };
        match read {
            Ok(0) | Err(_) => {
                *open = false;
                let _ = w.shutdown().await;
            }
            Ok(n) => {
                let wrote = tokio::time::timeout(idle, w.write_all(&buf[..n])).await;
                if !matches!(wrote, Ok(Ok(()))) {
                    out.error = Some("write failed while splicing".into());
                    break;
                }
                if from_provider {
                    out.to_local += n as u64;
                    watch.provider(&buf[..n]);
                } else {
                    out.to_provider += n as u64;
                    watch.local(&buf[..n]);
                }
            }
        }
    }
    let _ = lw.shutdown().await;
    let _ = pw.shutdown().await;
    out.delivered = watch.delivered;
    out.refused = watch.refused;
    out
}
