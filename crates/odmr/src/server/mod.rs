//! `odmr server`: the provider. Accepts mail for hosted domains on the MX listeners and releases
//! it over ODMR.
//!
//! Shutdown (SIGTERM/SIGINT): stop accepting, tell idle sessions `421`, give sessions in the
//! middle of a message or a delivery a grace period, then close the store. Nothing acknowledged
//! can be lost at any point, because a `250` is only ever sent after the commit and a message
//! leaves the queue only after the customer's `250`.

mod auth;
pub mod bounce;
mod deliver;
mod etrn;
pub mod lease;
pub mod limits;
mod lookup_cache;
mod mx;
mod odmr;
mod outbound;

pub use auth::CERT_SCHEME;

use crate::config::Config;
use crate::net::tls::TlsServer;
use anyhow::Context;
use odmr_store::{Store, STALE_RECEIVING};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How long sessions may run on after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
/// How often the running server removes messages abandoned mid-DATA by a crash (of this process
/// before its restart, or of another node): opening the store removes only those already idle
/// for [`STALE_RECEIVING`], and right after a crash they are younger than that.
const HOUSEKEEPING: Duration = Duration::from_secs(10 * 60);

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
    /// TLS for ETRN's outbound connections (`smtp.etrn_tls`) and for the notices' relay
    /// (`bounce.relay_tls`).
    pub etrn_tls: outbound::Outbound,
    pub relay_tls: outbound::Outbound,
    /// The MX's recipient lookups, reused for a moment (see [`lookup_cache`]).
    pub lookups: lookup_cache::LookupCache,
    /// How this process signs the delivery leases it takes.
    pub identity: lease::Identity,
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
    if let Some(f) = cfg.tls.as_ref().filter(|f| f.self_signed) {
        trial_certificate(&cfg, f)?;
    }
    let tls = match &cfg.tls {
        Some(f) => Some(Arc::new(
            TlsServer::load(&f.cert, &f.key, f.client_ca.as_deref())
                .with_context(|| format!("config file {}", cfg.path.display()))?,
        )),
        None => None,
    };
    let in_config = || format!("config file {}", cfg.path.display());
    let etrn_tls = outbound::Outbound::new(
        "smtp.etrn_tls",
        cfg.smtp.etrn_tls,
        "smtp.etrn_tls_ca_file",
        cfg.smtp.etrn_tls_ca_file.as_deref(),
    )
    .with_context(in_config)?;
    let relay_tls = outbound::Outbound::new(
        "bounce.relay_tls",
        cfg.bounce.relay_tls,
        "bounce.relay_tls_ca_file",
        cfg.bounce.relay_tls_ca_file.as_deref(),
    )
    .with_context(in_config)?;
    let store = Store::open(&cfg.store).await.map_err(|e| cfg.store_error(e))?;
    // Before any session can take a lease: free those of this node's dead processes (a crash
    // before this start), so their customers need not wait for the leases to expire.
    let identity = lease::Identity::of_this_process();
    if let Err(e) = lease::sweep(&store, &identity).await {
        tracing::warn!(error = %e, "cannot look for leases of dead sessions; they expire by themselves");
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let (sess_tx, mut sess_rx) = tokio::sync::mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        background: sess_tx.clone(),
        cfg: cfg.clone(),
        store: store.clone(),
        tls: tls.clone(),
        guards: limits::Guards::new(cfg.limits.clone()),
        lookups: lookup_cache::LookupCache::new(cfg.smtp.lookup_cache),
        etrn_tls,
        relay_tls,
        decoy_secret: rand::random::<[u8; 32]>().to_vec(),
        identity,
        shutdown: stop_rx,
    });

    let mut listeners = Vec::new();
    for (kind, key, addrs) in [
        (Kind::Smtp, "smtp.listen", &cfg.smtp.listen),
        (Kind::Odmr, "odmr.listen", &cfg.odmr.listen),
        (Kind::OdmrTls, "odmr.listen_tls", &cfg.odmr.listen_tls),
    ] {
        for addr in addrs {
            let l = TcpListener::bind(addr).await.map_err(|e| {
                anyhow::anyhow!(
                    "config file {}: {key}: cannot listen on {addr} ({e}); {}",
                    cfg.path.display(),
                    bind_hint(e.kind())
                )
            })?;
            listeners.push((kind, l));
        }
    }
    // Announced once all are bound: a server that cannot bind its last address must not have
    // said it listens on the others.
    for (kind, l) in &listeners {
        tracing::info!(kind = %kind.name(), addr = %l.local_addr()?, "listening");
    }

    let housekeeping = tokio::spawn(purge_abandoned(store.clone(), HOUSEKEEPING, STALE_RECEIVING));
    // Expiry, notices and the bounce relay; it stops by itself at shutdown.
    let maintenance = tokio::spawn(bounce::run(shared.clone()));
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
    housekeeping.abort();
    while let Ok(fut) = sess_rx.try_recv() {
        sessions.spawn(fut);
    }
    let drain = async { while sessions.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        tracing::warn!("sessions still running after the grace period; closing them (unacknowledged mail is not lost: the sender retries)");
        sessions.shutdown().await;
    }
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, maintenance).await;
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// The fix for a listener that cannot bind, by what the system said.
fn bind_hint(kind: std::io::ErrorKind) -> &'static str {
    use std::io::ErrorKind;
    match kind {
        ErrorKind::AddrInUse => {
            "another program (or another odmr server) already listens there; stop it or choose another address"
        }
        ErrorKind::PermissionDenied => {
            "binding ports below 1024 needs root or CAP_NET_BIND_SERVICE; grant that, or choose a port above 1023"
        }
        ErrorKind::AddrNotAvailable => {
            "this machine has no such address; use one of its own addresses, or 0.0.0.0 (or [::]) for all of them"
        }
        _ => "choose another address",
    }
}

/// `[tls] self_signed = true`: when neither the certificate nor the key exists yet, make a
/// self-signed pair for `hostname` and this machine's local names, so that a trial runs with
/// TLS from the first start. Never touches existing files, and says loudly what it made: a
/// customer must trust that certificate explicitly (`ca_file`).
fn trial_certificate(cfg: &Config, f: &crate::config::TlsFiles) -> anyhow::Result<()> {
    match (f.cert.exists(), f.key.exists()) {
        (true, true) => Ok(()),
        (false, false) => {
            let mut names = vec![cfg.hostname.clone()];
            names.extend(crate::net::tls::TRIAL_NAMES.map(String::from));
            crate::net::tls::write_self_signed(&f.cert, &f.key, &names)
                .with_context(|| format!("config file {}: [tls] self_signed", cfg.path.display()))?;
            tracing::warn!(
                cert = %f.cert.display(),
                names = ?names,
                "[tls] self_signed: created a self-signed certificate for trials; customers must trust it (ca_file), and a real one should replace it"
            );
            Ok(())
        }
        _ => anyhow::bail!(
            "config file {}: [tls] self_signed: only one of {} and {} exists; remove it to have both made again, or give both",
            cfg.path.display(),
            f.cert.display(),
            f.key.display()
        ),
    }
}

/// Every `every`, remove the messages that have been `receiving` without a write for
/// `older_than` (the garbage of a crash mid-DATA; a live session writes far more often).
async fn purge_abandoned(store: Store, every: Duration, older_than: Duration) {
    loop {
        tokio::time::sleep(every).await;
        match store.purge_incomplete(older_than).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "removed messages abandoned while being received"),
            Err(e) => tracing::warn!(error = %e, "cannot remove messages abandoned while being received"),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use odmr_store::{CommitInfo, Envelope, EnvelopeRecipient, StoreConfig, CHUNK_SIZE};

    #[test]
    fn each_bind_failure_gets_its_own_hint() {
        use std::io::ErrorKind;
        assert!(bind_hint(ErrorKind::AddrInUse).starts_with("another program"));
        assert!(bind_hint(ErrorKind::PermissionDenied).contains("below 1024"));
        assert!(bind_hint(ErrorKind::AddrNotAvailable).starts_with("this machine has no such address"));
        for kind in [
            ErrorKind::AddrInUse,
            ErrorKind::AddrNotAvailable,
            ErrorKind::Other,
        ] {
            assert!(!bind_hint(kind).contains("1024"), "{kind:?}");
        }
    }

    /// A message whose receiving process died mid-DATA (its writer never dropped, as under
    /// kill -9) is removed by the running server's housekeeping, not only at the next start;
    /// committed mail is never touched.
    #[tokio::test]
    async fn housekeeping_removes_messages_abandoned_mid_data() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig::sqlite(dir.path())).await.unwrap();
        let envelope = Envelope {
            mail_from: "a@sender.test".into(),
            mail_params: String::new(),
            recipients: vec![EnvelopeRecipient {
                address: "bob@example.org".into(),
                params: String::new(),
            }],
            helo: "h".into(),
            client_addr: "127.0.0.1:1".into(),
        };
        let mut kept = store.receive(envelope.clone()).await.unwrap();
        kept.write(b"Subject: kept\r\n\r\nbody\r\n").await.unwrap();
        kept.commit(CommitInfo::default()).await.unwrap();
        // Over one chunk, so part of it is in the store; then the "crash".
        let mut cut = store.receive(envelope).await.unwrap();
        cut.write(&vec![b'x'; CHUNK_SIZE + 10]).await.unwrap();
        std::mem::forget(cut);
        // Ids only grow: the committed message is 1, the abandoned one 2. Reading a chunk does
        // not care about the message's state, so this sees the garbage while it is there.
        let stored = || store.read_body(2, 0);
        assert!(
            stored().await.unwrap().is_some(),
            "the abandoned message's first chunk is stored"
        );
        let task = tokio::spawn(purge_abandoned(
            store.clone(),
            Duration::from_millis(50),
            Duration::ZERO,
        ));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while stored().await.unwrap().is_some() {
            assert!(std::time::Instant::now() < deadline, "never purged");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        task.abort();
        assert_eq!(store.queue_list().await.unwrap().len(), 1, "committed mail kept");
        store.close().await;
    }
}
