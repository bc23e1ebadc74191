//! Driver of the inbound MX dialogue ([`odmr_proto::smtp_server`]): socket reads and writes,
//! recipient lookups and store commits. `250` after DATA is sent only once `commit` has
//! returned. AUTH lookups go through [`super::auth`] (shared with the ODMR listener): a
//! successful AUTH here only identifies the account for ETRN; recipients are checked the same
//! with or without it, so it never opens relaying.
//!
//! Per-domain policy is applied while the sender is still connected, never later: an unknown
//! local part (postmaster is always known, RFC 5321 §4.5.1) gets `550 5.1.1` at RCPT and a domain over its quota `452 4.2.2` at RCPT (messages
//! or bytes already held) or after DATA (this message would pass the byte quota), so a full
//! customer never causes a bounce to a possibly forged sender (backscatter). Quotas are soft
//! under concurrency: sessions racing each other can each pass the check. The byte quota checked
//! after DATA is the one read at RCPT in the same transaction (a quota changed meanwhile applies
//! from the next transaction), so a domain without a byte quota costs no lookup after DATA.
//! Recipient lookups come through [`super::lookup_cache`]: a change by the CLI reaches the MX
//! within a second.
//!
//! CHUNKING (RFC 3030) is offered, as mature MTAs do (Postfix by default; Exim sends BDAT when
//! it is). A BDAT message is the same sequence of steps as a DATA one, with two differences the
//! driver must handle: a transaction can be abandoned (RSET, EHLO) between chunks with the
//! message open in the store, so [`ServerStep::Reset`] aborts an open writer; and a message is
//! in flight between chunks too, which [`SmtpServer::in_data`] reports, so a shutdown waits for
//! it as for DATA content and an idle client then meets the same read timeout.

use super::{auth, session_id, Shared};
use crate::net::conn::Conn;
use crate::net::driver::{Driver, Input};
use odmr_proto::auth::AuthConfig;
use odmr_proto::reply::Reply;
use odmr_proto::smtp_server::{PeerInfo, RcptVerdict, ServerConfig, ServerStep, SmtpServer};
use odmr_store::{CommitInfo, Envelope, EnvelopeRecipient, MessageWriter};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::net::TcpStream;
use tracing::Instrument;

pub async fn session(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let id = session_id();
    let span = tracing::info_span!("smtp", session = %id, peer = %peer);
    run(shared, Conn::new(stream, peer), id).instrument(span).await
}

async fn run(shared: Arc<Shared>, mut conn: Conn, id: String) {
    let c = &shared.cfg;
    let timeout = c.smtp.command_timeout;
    let mut mcfg = ServerConfig::new(c.hostname.clone());
    mcfg.max_message_size = c.smtp.max_message_size;
    mcfg.max_recipients = c.smtp.max_recipients;
    mcfg.max_received = c.smtp.max_received_headers;
    mcfg.max_messages = c.smtp.max_messages_per_session;
    // STARTTLS is offered, never required: RFC 3207 §4 forbids requiring it on a public MX.
    mcfg.starttls = shared.tls.is_some();
    mcfg.etrn = c.smtp.etrn;
    mcfg.chunking = true;
    let mut s = SmtpServer::new(
        mcfg,
        PeerInfo {
            ip: conn.peer.ip().to_string(),
            session: id.clone(),
        },
    );
    if c.smtp.auth {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let acfg = AuthConfig {
            max_failures: 5,
            decoy_secret: shared.decoy_secret.clone(),
            cram_md5: c.odmr.cram_md5,
        };
        s.enable_auth(acfg, rand::random(), now);
    }
    let mut announced = false;
    let mut driver = Driver::new(timeout).with_shutdown(shared.shutdown.clone());
    let mut writer: Option<MessageWriter> = None;
    let mut store_failed = false;
    let mut envelope_log = (String::new(), 0usize);
    let mut rcpt_domains: Vec<String> = Vec::new();
    // The byte quota of each domain accepted at RCPT in this transaction.
    let mut byte_quotas: Vec<(String, Option<u64>)> = Vec::new();
    tracing::debug!("connected");
    loop {
        let step = s.poll(&mut conn.buf);
        if let Some(user) = s.take_auth_failure() {
            super::auth::proof_failed(&shared, conn.peer.ip(), &user);
        }
        match step {
            ServerStep::NeedInput => {
                if !announced {
                    if let Some(account) = s.account() {
                        announced = true;
                        shared.guards.auth_succeeded(conn.peer.ip(), account);
                        tracing::info!(account = %account, mechanism = %s.mechanism().unwrap_or("?"), "authenticated");
                    }
                }
                let input = if s.in_data() { Input::Data } else { Input::Commands };
                if let Err(stop) = driver.need_input(&mut conn, &mut s, input).await {
                    stop.log("client");
                    break;
                }
            }
            ServerStep::Reset => {
                byte_quotas.clear();
                // With DATA nothing is open here at a reset; with BDAT a message can be, when
                // the client gives up between chunks. It was never acknowledged: drop it.
                if let Some(w) = writer.take() {
                    let _ = w.abort().await;
                    tracing::info!(from = %envelope_log.0, "message abandoned by the client between chunks");
                }
            }
            ServerStep::StartTls => {
                let Some(tls) = shared.tls.as_ref() else { break };
                if let Err(e) = conn.starttls(s.output(), &tls.acceptor(), timeout).await {
                    tracing::warn!(error = %e, "STARTTLS failed; closing");
                    break;
                }
                tracing::debug!("TLS established");
                s.tls_started();
                if conn.client_cert.is_some() {
                    s.set_client_cert();
                }
            }
            ServerStep::Auth(step) => {
                let ip = conn.peer.ip();
                let answer = auth::answer(&shared, ip, conn.client_cert, &step).await;
                let result = s.auth_answer(answer);
                auth::settle(&shared, ip, &step, result);
            }
            ServerStep::Etrn { node, subdomains } => {
                let verdict =
                    super::etrn::request(&shared, conn.peer.ip(), s.account(), &node, subdomains, &id).await;
                s.etrn_verdict(verdict);
            }
            // The MX takes any sender: relay control is per recipient.
            ServerStep::CheckSender { .. } => s.sender_verdict(Ok(())),
            ServerStep::CheckRecipient { address, domain } => {
                let verdict = match check_recipient(&shared, &address, &domain).await {
                    Ok((v, max_bytes)) => {
                        if matches!(v, RcptVerdict::Accept) {
                            byte_quotas.retain(|(d, _)| !d.eq_ignore_ascii_case(&domain));
                            byte_quotas.push((domain, max_bytes));
                        }
                        v
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "store lookup failed");
                        RcptVerdict::Refuse(Reply::new(
                            451,
                            "4.3.0",
                            "Temporary lookup failure, try again later",
                        ))
                    }
                };
                s.recipient_verdict(verdict);
            }
            ServerStep::StartData(env) => {
                envelope_log = (env.mail_from.clone(), env.recipients.len());
                rcpt_domains = env
                    .recipients
                    .iter()
                    .filter_map(|r| odmr_store::address_domain(&r.address))
                    .collect();
                rcpt_domains.sort();
                rcpt_domains.dedup();
                let envelope = Envelope {
                    mail_from: env.mail_from,
                    mail_params: env.mail_params,
                    recipients: env
                        .recipients
                        .into_iter()
                        .map(|r| EnvelopeRecipient {
                            address: r.address,
                            params: r.params,
                        })
                        .collect(),
                    helo: s.helo().unwrap_or_default().to_string(),
                    client_addr: conn.peer.to_string(),
                };
                match shared.store.receive(envelope).await {
                    Ok(w) => {
                        writer = Some(w);
                        store_failed = false;
                        s.data_ready(&chrono::Local::now().to_rfc2822());
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot open a message in the store");
                        s.data_refused(Reply::new(
                            451,
                            "4.3.0",
                            "Temporary storage failure, try again later",
                        ));
                    }
                }
            }
            ServerStep::Body(chunk) => {
                if let Some(w) = writer.as_mut() {
                    if !store_failed {
                        if let Err(e) = w.write(&chunk).await {
                            tracing::error!(error = %e, "store write failed");
                            store_failed = true;
                        }
                    }
                }
            }
            ServerStep::EndData { size, eight_bit } => {
                let over = over_byte_quota(&shared, &rcpt_domains, &byte_quotas, size).await;
                byte_quotas.clear();
                if let Some(full) = over {
                    if let Some(w) = writer.take() {
                        let _ = w.abort().await;
                    }
                    tracing::info!(domain = %full, size, "message refused: domain over its byte quota");
                    s.committed(Err(quota_reply(&full)));
                    continue;
                }
                let result: Result<i64, String> = match writer.take() {
                    Some(w) if !store_failed => w
                        .commit(CommitInfo { eight_bit })
                        .await
                        .map_err(|e| e.to_string()),
                    Some(w) => {
                        let _ = w.abort().await;
                        Err("an earlier write to the store failed".into())
                    }
                    None => Err("no message was open".into()),
                };
                match result {
                    Ok(msg) => {
                        tracing::info!(msg, from = %envelope_log.0, rcpts = envelope_log.1, size, "message queued");
                        s.committed(Ok(format!("OK queued as {msg}")));
                        // The 250 leaves at once, not with the replies to what the client
                        // pipelined behind the message: if we crash, it sends again only the
                        // message in hand.
                        if let Err(e) = driver.flush(&mut conn, &mut s).await {
                            tracing::info!(error = %e, "client connection failed after a commit");
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "commit failed; message refused with 451");
                        s.committed(Err(Reply::new(
                            451,
                            "4.3.0",
                            "Temporary storage failure, try again later",
                        )));
                    }
                }
            }
            ServerStep::AbortData => {
                byte_quotas.clear();
                if let Some(w) = writer.take() {
                    let _ = w.abort().await;
                }
                tracing::info!(from = %envelope_log.0, "message refused");
            }
            // The MX answers every commit at once and never defers one, so the machine never
            // asks it to settle; if it did, closing loses nothing acknowledged.
            ServerStep::Close | ServerStep::Settle => {
                let _ = driver.flush(&mut conn, &mut s).await;
                break;
            }
        }
    }
    if let Some(w) = writer.take() {
        // Never acknowledged: the sender still holds the message and will retry.
        let _ = w.abort().await;
    }
    conn.shutdown().await;
}

/// The RCPT verdict from the domain's owner, recipient list and quotas, and the domain's byte
/// quota.
async fn check_recipient(
    shared: &Shared,
    address: &str,
    domain: &str,
) -> Result<(RcptVerdict, Option<u64>), odmr_store::StoreError> {
    let local = address.rsplit_once('@').map_or(address, |(l, _)| l);
    let Some(check) = shared
        .lookups
        .domain_accepts(&shared.store, domain, local)
        .await?
    else {
        tracing::info!(rcpt = %address, domain = %domain, "recipient refused: domain not hosted");
        return Ok((RcptVerdict::NotHosted, None));
    };
    // RFC 5321 §4.5.1: postmaster MUST be accepted, listed or not.
    if !check.accepted && !local.eq_ignore_ascii_case("postmaster") {
        tracing::info!(rcpt = %address, domain = %domain, "recipient refused: unknown local part");
        let reply = Reply::new(550, "5.1.1", format!("<{address}>: no such recipient here"));
        return Ok((RcptVerdict::Refuse(reply), None));
    }
    if check.max_messages.is_some() || check.max_bytes.is_some() {
        let usage = shared.store.domain_usage(domain).await?;
        let full = check.max_messages.is_some_and(|m| usage.messages >= m)
            || check.max_bytes.is_some_and(|b| usage.bytes >= b);
        if full {
            tracing::info!(rcpt = %address, domain = %domain, messages = usage.messages, bytes = usage.bytes, "recipient refused: domain over quota");
            return Ok((RcptVerdict::Refuse(quota_reply(domain)), None));
        }
    }
    Ok((RcptVerdict::Accept, check.max_bytes))
}

/// The first of `domains` this message of `size` octets would take over its byte quota, by the
/// quotas read at RCPT (`quotas`); a domain missing there is looked up again.
async fn over_byte_quota(
    shared: &Shared,
    domains: &[String],
    quotas: &[(String, Option<u64>)],
    size: u64,
) -> Option<String> {
    for d in domains {
        let known = quotas.iter().find(|(q, _)| q.eq_ignore_ascii_case(d));
        let quota = match known {
            Some((_, quota)) => *quota,
            // The quota only: the same single lookup as at RCPT, never the recipient list.
            None => match shared.store.domain_accepts(d, "").await {
                Ok(Some(check)) => check.max_bytes,
                _ => None,
            },
        };
        let Some(max) = quota else {
            continue;
        };
        match shared.store.domain_usage(d).await {
            Ok(u) if u.bytes.saturating_add(size) > max => return Some(d.clone()),
            _ => {}
        }
    }
    None
}

fn quota_reply(domain: &str) -> Reply {
    Reply::new(
        452,
        "4.2.2",
        format!("Too much mail is waiting for {domain} to collect it; try again later"),
    )
}
