//! The customer's side of the reversed session: an SMTP server on the provider's connection
//! ([`odmr_proto::smtp_server`] with `check_sender`), each command relayed to the sink.
//!
//! Invariants:
//! - **250 after DATA only once the sink holds the message durably** ([`Sink::end`]).
//! - **A transaction the provider abandons is abandoned in the sink too** (RSET, a dropped
//!   connection, a timeout), so nothing half-received is ever delivered locally.
//! - Every read has the configured idle timeout: a provider that goes quiet ends the session.

use super::sink::Sink;
use crate::net::conn::Conn;
use crate::net::driver::{Driver, Input, Stop};
use odmr_proto::reply::Reply;
use odmr_proto::smtp_server::{PeerInfo, RcptVerdict, ServerConfig, ServerStep, SmtpServer};
use std::time::Duration;

#[derive(Debug, Default, Clone)]
pub struct Received {
    pub messages: u64,
    pub bytes: u64,
    /// Messages or recipients the sink refused (4xx/5xx given to the provider).
    pub refused: u64,
    /// Why the session ended early, if it did.
    pub error: Option<String>,
}

pub struct Session<'a> {
    pub provider: &'a str,
    pub hostname: &'a str,
    pub timeout: Duration,
    /// Called after each message with the running totals (for the progress line).
    pub progress: &'a mut (dyn FnMut(&Received) + Send),
}

pub async fn receive(conn: &mut Conn, sink: &mut Sink, mut s: Session<'_>) -> Received {
    let caps = sink.caps();
    let mut cfg = ServerConfig::new(s.hostname.to_string());
    cfg.max_message_size = caps.max_size;
    cfg.eight_bit_mime = caps.eight_bit_mime;
    cfg.smtputf8 = caps.smtputf8;
    // No sink passes DSN parameters on or reports, so DSN is not offered to the provider.
    cfg.dsn = false;
    cfg.max_recipients = caps.max_recipients.max(1);
    // The provider authenticated by us delivers all it holds in one session: a per-session cap
    // (the MX's defence against abusive senders) would leave mail behind, as Exim's 500 does.
    cfg.max_messages = u64::MAX;
    // Likewise refusals: each one is the local MTA's verdict passed on (a mailbox full, a user
    // unknown), not an abusive client, and a drain with many must not be cut off with 421.
    cfg.max_errors = usize::MAX;
    cfg.check_sender = true;
    // BDAT lets the provider stream whole transactions without waiting for a 354 each. The
    // sinks see the same StartData/Body/EndData steps as with DATA; a transaction abandoned
    // between chunks comes as Reset, which abandons it in the sink like any other.
    cfg.chunking = true;
    let peer = PeerInfo {
        ip: conn.peer.ip().to_string(),
        session: crate::server::session_id(),
    };
    let mut m = SmtpServer::new(cfg, peer);
    if conn.is_tls() {
        // TLS negotiated before ATRN carries over (Received: says ESMTPS; no STARTTLS offered).
        m.set_tls();
    }
    let mut got = Received::default();
    let mut current: Option<(String, Vec<String>)> = None;
    // The message whose verdict the sink gives later (the relay reads it with the next
    // transaction's replies; see `SmtpServer::defer_commit`).
    let mut awaiting: Option<Ended> = None;
    let mut driver = Driver::new(s.timeout);
    loop {
        if awaiting.is_some() {
            if let Some(reply) = sink.take_final() {
                let ended = awaiting.take().unwrap_or_default();
                if !give_verdict(conn, &mut driver, &mut m, &mut got, &mut s, ended, reply).await {
                    break;
                }
            }
        }
        match m.poll(&mut conn.buf) {
            ServerStep::NeedInput => {
                let input = if m.in_data() { Input::Data } else { Input::Commands };
                match driver.need_input(conn, &mut m, input).await {
                    Ok(_) => {}
                    Err(Stop::Closed) => {
                        got.error = Some("provider closed the connection without QUIT".into());
                        break;
                    }
                    Err(Stop::WriteFailed(e) | Stop::ReadFailed(e)) => {
                        got.error = Some(format!("provider connection failed: {e}"));
                        break;
                    }
                    // The client listens for no shutdown.
                    Err(Stop::Shutdown) => break,
                }
            }
            ServerStep::CheckSender { from, params } => {
                // The local MTA's refusals are passed on with a status of their class: the
                // provider was offered ENHANCEDSTATUSCODES (RFC 2034 §4).
                let v = sink.mail(&from, &params).await;
                m.sender_verdict(v.map_err(Reply::with_class_status));
            }
            ServerStep::CheckRecipient { address, .. } => {
                if m.data_follows(&conn.buf) {
                    sink.expect_data();
                }
                let v = match sink.rcpt(&address, "").await {
                    Ok(()) => RcptVerdict::Accept,
                    Err(r) => {
                        tracing::info!(provider = s.provider, rcpt = %address, reply = %r, "recipient refused by the local mail system");
                        got.refused += 1;
                        RcptVerdict::Refuse(r.with_class_status())
                    }
                };
                m.recipient_verdict(v);
            }
            ServerStep::StartData(env) => match sink.data().await {
                Ok(()) => {
                    current = Some((
                        env.mail_from,
                        env.recipients.into_iter().map(|r| r.address).collect(),
                    ));
                    m.data_ready(&chrono::Local::now().to_rfc2822());
                }
                Err(r) => {
                    sink.reset().await;
                    m.data_refused(r.with_class_status());
                }
            },
            ServerStep::Body(chunk) => sink.body(&chunk).await,
            ServerStep::EndData { size, .. } => {
                let (from, rcpts) = current.take().unwrap_or_default();
                let ended = Ended { from, rcpts, size };
                match sink.end().await {
                    Some(reply) => {
                        if !give_verdict(conn, &mut driver, &mut m, &mut got, &mut s, ended, reply).await {
                            break;
                        }
                    }
                    None => {
                        m.defer_commit();
                        awaiting = Some(ended);
                    }
                }
            }
            ServerStep::Settle => {
                let reply = sink
                    .settle()
                    .await
                    .unwrap_or_else(|| Reply::new(451, "4.4.0", "no verdict from the local mail system"));
                let ended = awaiting.take().unwrap_or_default();
                if !give_verdict(conn, &mut driver, &mut m, &mut got, &mut s, ended, reply).await {
                    break;
                }
            }
            ServerStep::AbortData | ServerStep::Reset => sink.reset().await,
            // Not offered in the reversed session (TLS, if any, carries over from before ATRN;
            // AUTH and ETRN are the provider's, never the customer's): unreachable here.
            ServerStep::StartTls | ServerStep::Auth(_) | ServerStep::Etrn { .. } => break,
            ServerStep::Close => {
                let _ = driver.flush(conn, &mut m).await;
                break;
            }
        }
    }
    if let Some(ended) = awaiting.take() {
        // The provider is gone before it could be told; it will send the message again.
        let reply = sink.settle().await;
        tracing::warn!(provider = s.provider, from = %ended.from, size = ended.size, local = ?reply.map(|r| r.one_line()), "the provider connection ended before this message's verdict reached it; it stays with the provider");
    }
    if m.in_data() || got.error.is_some() {
        // Whatever was in flight was never acknowledged: the provider still has it.
        sink.reset().await;
    }
    got
}

/// A message handed to the sink whole, waiting for its verdict.
#[derive(Debug, Default)]
struct Ended {
    from: String,
    rcpts: Vec<String>,
    size: u64,
}

/// The sink's verdict on a message, given to the provider (and logged, and counted). It leaves
/// at once, not with the replies to the commands pipelined behind the message: a crash of ours
/// then makes the provider send again only the message in hand, not every one stored since the
/// last flush. `false` if the provider connection failed (`got.error` says how).
async fn give_verdict(
    conn: &mut Conn,
    driver: &mut Driver,
    m: &mut SmtpServer,
    got: &mut Received,
    s: &mut Session<'_>,
    ended: Ended,
    reply: Reply,
) -> bool {
    let Ended { from, rcpts, size } = ended;
    let from = if from.is_empty() { "<>".to_string() } else { from };
    if reply.is_positive() {
        got.messages += 1;
        got.bytes += size;
        tracing::info!(provider = s.provider, from = %from, rcpts = %rcpts.join(","), size, result = %reply, "message delivered");
        m.committed(Ok(format!("OK delivered locally: {reply}")));
    } else {
        got.refused += 1;
        // What the provider does with it follows from the class of our reply (RFC 5321 §4.2.1).
        if reply.code >= 500 {
            tracing::warn!(provider = s.provider, from = %from, rcpts = %rcpts.join(","), size, result = %reply, "message refused by the local mail system for good; the provider returns it to its sender");
        } else {
            tracing::warn!(provider = s.provider, from = %from, rcpts = %rcpts.join(","), size, result = %reply, "message refused by the local mail system for now; the provider keeps it for the next poll");
        }
        m.committed(Err(reply.with_class_status()));
    }
    (s.progress)(got);
    if let Err(e) = driver.flush(conn, m).await {
        got.error = Some(format!("provider connection failed: {e}"));
        return false;
    }
    true
}
