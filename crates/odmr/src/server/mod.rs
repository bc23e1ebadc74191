//! `odmr server`: the provider. Accepts mail for hosted domains on the MX listeners and releases
//! it over ODMR.
//!
//! Shutdown (SIGTERM/SIGINT): stop accepting, tell idle sessions `421`, give sessions in the
//! middle of a message or a delivery a grace period, then close the store. Nothing acknowledged
//! can be lost at any point, because a `250` is only ever sent after the commit and a message
//! leaves the queue only after the customer's `250`.

mod auth;
mod deliver;
mod etrn;
pub mod limits;
mod mx;
mod odmr;

pub use auth::CERT_SCHEME;

use crate::config::Config;
use crate::net::tls::TlsServer;
use anyhow::Context;
use odmr_store::Store;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How long sessions may run on after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Everything a session needs, shared.
pub struct Shared {
    pub cfg: Config,
    pub store: Store,
    /// The certificate for STARTTLS and implicit TLS, if configured.
    pub tls: Option<Arc<TlsServer>>,
    /// Random per process: salts for unknown users in SCRAM and PLAIN, so they look known.
    pub decoy_secret: Vec<u8>,
    /// Connection counts and AUTH failure throttling.
    pub guards: limits::Guards,
    /// Becomes `true` when the server is shutting down.
    pub shutdown: watch::Receiver<bool>,
    /// Runs a task alongside the sessions (an ETRN queue run), so that shutdown waits for it
    /// like for a session (within the grace period).
    background: tokio::sync::mpsc::UnboundedSender<SessionFuture>,
}

impl Shared {
    pub fn spawn_background(&self, task: SessionFuture) {
        if let Err(e) = self.background.send(task) {
            // Shutting down: run it anyway; it is bounded by its timeouts.
            tokio::spawn(e.0);
        }
    }
}

/// A short random id for a session, used in logs and `Received:` headers.
pub fn session_id() -> String {
    format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let tls = match &cfg.tls {
        Some(f) => Some(Arc::new(
            TlsServer::load(&f.cert, &f.key, f.client_ca.as_deref())
                .with_context(|| format!("config file {}", cfg.path.display()))?,
        )),
        None => None,
    };
    let store = Store::open_sqlite(&cfg.store_path)
        .await
        .map_err(|e| cfg.store_error(e))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (sess_tx, mut sess_rx) = tokio::sync::mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        background: sess_tx.clone(),
        cfg: cfg.clone(),
        store: store.clone(),
        tls: tls.clone(),
        guards: limits::Guards::new(cfg.limits.clone()),
        decoy_secret: rand::random::<[u8; 32]>().to_vec(),
        shutdown: stop_rx,
    });

    let mut listeners = Vec::new();
    for (kind, key, addrs) in [
        (Kind::Smtp, "smtp.listen", &cfg.smtp.listen),
        (Kind::Odmr, "odmr.listen", &cfg.odmr.listen),
        (Kind::OdmrTls, "odmr.listen_tls", &cfg.odmr.listen_tls),
    ] {
        for addr in addrs {
            let l = TcpListener::bind(addr).await.with_context(|| {
                format!(
                    "config file {}: {key}: cannot listen on {addr}; choose a free address (binding ports below 1024 needs root or CAP_NET_BIND_SERVICE)",
                    cfg.path.display()
                )
            })?;
            let local = l.local_addr()?;
            tracing::info!(kind = %kind.name(), addr = %local, "listening");
            listeners.push((kind, l));
        }
    }

    let mut sessions = JoinSet::new();
    let mut accepts = JoinSet::new();
    for (kind, l) in listeners {
        let shared = shared.clone();
        let sess_tx = sess_tx.clone();
        accepts.spawn(accept_loop(kind, l, shared, sess_tx));
    }
    drop(sess_tx);

    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = hup.recv() => match &tls {
                // New handshakes get the new certificate; running sessions keep theirs.
                Some(t) => match t.reload() {
                    Ok(()) => tracing::info!("SIGHUP: certificate reloaded"),
                    Err(e) => tracing::error!(error = %e, "SIGHUP: certificate reload failed; keeping the old one"),
                },
                None => tracing::info!("SIGHUP: no [tls] configured, nothing to reload"),
            },
            Some(fut) = sess_rx.recv() => { sessions.spawn(fut); }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    tracing::info!(sessions = sessions.len(), "shutting down: no new connections");
    let _ = stop_tx.send(true);
    accepts.shutdown().await;
    while let Ok(fut) = sess_rx.try_recv() {
        sessions.spawn(fut);
    }
    let drain = async { while sessions.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        tracing::warn!("sessions still running after the grace period; closing them (unacknowledged mail is not lost: the sender retries)");
        sessions.shutdown().await;
    }
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Smtp,
    Odmr,
    OdmrTls,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Smtp => "smtp",
            Kind::Odmr => "odmr",
            Kind::OdmrTls => "odmr-tls",
        }
    }
}

pub type SessionFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

async fn accept_loop(
    kind: Kind,
    l: TcpListener,
    shared: Arc<Shared>,
    sessions: tokio::sync::mpsc::UnboundedSender<SessionFuture>,
) {
    loop {
        let (stream, peer): (_, SocketAddr) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(kind = kind.name(), error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let slot = match shared.guards.connect(peer.ip()) {
            Ok(s) => s,
            Err(why) => {
                tracing::warn!(kind = kind.name(), peer = %peer, "refused: {why}");
                let msg = format!("421 4.7.0 {} {why}, try again later\r\n", shared.cfg.hostname);
                tokio::spawn(async move {
                    use tokio::io::AsyncWriteExt;
                    let mut stream = stream;
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), stream.write_all(msg.as_bytes())).await;
                });
                continue;
            }
        };
        let shared = shared.clone();
        let session: SessionFuture = match kind {
            Kind::Smtp => Box::pin(mx::session(shared, stream, peer)),
            Kind::Odmr => Box::pin(odmr::session(shared, stream, peer, false)),
            Kind::OdmrTls => Box::pin(odmr::session(shared, stream, peer, true)),
        };
        // The slot is released when the session ends, however it ends.
        let fut: SessionFuture = Box::pin(async move {
            session.await;
            drop(slot);
        });
        if sessions.send(fut).is_err() {
            return;
        }
    }
}
