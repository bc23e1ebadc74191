//! Driver of the ODMR front half ([`odmr_proto::odmr`]): AUTH lookups, the ATRN decision and
//! the per-domain lease, then the turnaround into [`super::deliver`] on the same connection.
//!
//! ATRN decision order (RFC 2645 §5.2.1): not the account's domain → 450 (all or nothing, and
//! the same text whether the domain is unknown or another customer's); no queued mail → 453;
//! lease held by another session → 451 (**[project]**: RFC 2645 has no code for a busy domain,
//! §7's "unable to process ATRN request now" fits); otherwise 250 with the lease held for the
//! whole reversed session.

use super::{auth, deliver, session_id, Shared};
use crate::net::conn::Conn;
use crate::net::driver::{Driver, Input};
use odmr_proto::odmr::{AtrnDecision, OdmrConfig, OdmrSession, OdmrStep};
use odmr_store::Lease;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::net::TcpStream;
use tracing::Instrument;

/// `implicit`: the listener is implicit TLS; the handshake comes before the greeting.
pub async fn session(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr, implicit: bool) {
    let id = session_id();
    let span = tracing::info_span!("odmr", session = %id, peer = %peer);
    let mut conn = Conn::new(stream, peer);
    if implicit {
        let Some(tls) = shared.tls.as_ref() else { return };
        if let Err(e) = conn
            .accept_tls(&tls.acceptor(), shared.cfg.odmr.command_timeout)
            .await
        {
            span.in_scope(|| tracing::info!(error = %e, "TLS handshake failed"));
            return;
        }
    }
    run(shared, conn, id, implicit).instrument(span).await
}

async fn run(shared: Arc<Shared>, mut conn: Conn, id: String, implicit: bool) {
    let c = &shared.cfg;
    let timeout = c.odmr.command_timeout;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut ocfg = OdmrConfig::new(c.hostname.clone());
    ocfg.starttls = shared.tls.is_some();
    ocfg.require_tls = c.odmr.require_tls;
    ocfg.cram_md5 = c.odmr.cram_md5;
    ocfg.decoy_secret = shared.decoy_secret.clone();
    let mut s = OdmrSession::new(ocfg, rand::random(), now);
    if conn.is_tls() {
        s.set_tls();
        if conn.client_cert.is_some() {
            s.set_client_cert();
        }
    }
    let mut driver = Driver::new(timeout).with_shutdown(shared.shutdown.clone());
    let mut granted: Option<(Lease, Vec<String>, String)> = None;
    let mut announced = false;
    loop {
        let step = s.poll(&mut conn.buf);
        if let Some(user) = s.take_auth_failure() {
            auth::proof_failed(&shared, conn.peer.ip(), &user);
        }
        match step {
            OdmrStep::NeedInput => {
                if !announced {
                    if let Some(account) = s.account() {
                        announced = true;
                        shared.guards.auth_succeeded(conn.peer.ip(), account);
                        tracing::info!(account = %account, mechanism = %s.mechanism().unwrap_or("?"), "authenticated");
                    }
                }
                if let Err(stop) = driver.need_input(&mut conn, &mut s, Input::Commands).await {
                    stop.log("client");
                    break;
                }
            }
            OdmrStep::Auth(step) => {
                let ip = conn.peer.ip();
                let answer = auth::answer(&shared, ip, conn.client_cert, &step).await;
                let result = s.auth_answer(answer);
                auth::settle(&shared, ip, &step, result);
            }
            OdmrStep::Atrn { account, domains } => {
                let (decision, lease) = decide(&shared, &account, &domains, &id).await;
                let shown = if domains.is_empty() {
                    "(all)".to_string()
                } else {
                    domains.join(",")
                };
                tracing::info!(account = %account, domains = %shown, decision = ?decision, "ATRN");
                if let Some(l) = lease {
                    granted = Some((l.0, l.1, account));
                }
                s.atrn_decision(decision);
            }
            OdmrStep::StartTls => {
                let Some(tls) = shared.tls.as_ref() else { break };
                if let Err(e) = conn.starttls(s.output(), &tls.acceptor(), timeout).await {
                    tracing::warn!(error = %e, "STARTTLS failed; closing");
                    break;
                }
                s.tls_started();
                if conn.client_cert.is_some() {
                    s.set_client_cert();
                }
            }
            OdmrStep::Turnaround => {
                if let Err(e) = driver.flush(&mut conn, &mut s).await {
                    tracing::info!(error = %e, "write failed at turnaround");
                    break;
                }
                let Some((lease, domains, account)) = granted.take() else {
                    break;
                };
                // fetchmail is the implicit-TLS client in the field, and it stalls when a TLS
                // record holds more than one line; STARTTLS clients are not slowed down.
                conn.one_line_per_record(implicit);
                let span = tracing::info_span!("deliver", account = %account);
                deliver::deliver(&shared, &mut conn, &lease, &domains, None)
                    .instrument(span)
                    .await;
                if let Err(e) = shared.store.lease_release(&lease).await {
                    tracing::warn!(error = %e, "lease release failed; it expires by itself");
                }
                break;
            }
            OdmrStep::Close => {
                let _ = driver.flush(&mut conn, &mut s).await;
                break;
            }
        }
    }
    if let Some((lease, _, _)) = granted {
        let _ = shared.store.lease_release(&lease).await;
    }
    conn.shutdown().await;
}

/// The ATRN decision, and on success the lease and the granted domains.
async fn decide(
    shared: &Shared,
    account: &str,
    requested: &[String],
    session: &str,
) -> (AtrnDecision, Option<(Lease, Vec<String>)>) {
    let store = &shared.store;
    let owned = match store.account_get(account).await {
        Ok(Some(a)) => a.domains,
        Ok(None) => return (AtrnDecision::Refused, None),
        Err(e) => {
            tracing::error!(error = %e, "account lookup failed");
            return (AtrnDecision::TempError, None);
        }
    };
    let domains: Vec<String> = if requested.is_empty() {
        owned.clone()
    } else {
        requested.to_vec()
    };
    if domains.is_empty()
        || domains
            .iter()
            .any(|d| !owned.iter().any(|o| o.eq_ignore_ascii_case(d)))
    {
        return (AtrnDecision::Refused, None);
    }
    match store.has_pending(&domains).await {
        Ok(false) => return (AtrnDecision::NoMail, None),
        Ok(true) => {}
        Err(e) => {
            tracing::error!(error = %e, "queue lookup failed");
            return (AtrnDecision::TempError, None);
        }
    }
    let holder = shared.identity.holder(session);
    match store
        .lease_acquire(&domains, &holder, shared.cfg.odmr.lease_ttl)
        .await
    {
        Ok(Some(lease)) => (AtrnDecision::Granted, Some((lease, domains))),
        Ok(None) => (AtrnDecision::Busy, None),
        Err(e) => {
            tracing::error!(error = %e, "lease acquisition failed");
            (AtrnDecision::TempError, None)
        }
    }
}
