//! One poll of one provider: open the sink, connect, EHLO/AUTH/ATRN, and on 250 receive the
//! mail (or splice it through).
//!
//! The sink is opened before ATRN, so no ATRN is sent while local delivery is impossible: the
//! provider keeps the mail instead of turning around into a session we cannot finish.

use super::config::{ClientConfig, Deliver, Provider, TlsMode};
use super::receive::{receive, Received, Session};
use super::sink::{command, maildir, relay, Sink};
use super::splice::splice;
use crate::net::conn::Conn;
use crate::net::tls::client_connector;
use odmr_proto::customer::{Customer, CustomerConfig, CustomerStep, FrontEnd, Wait};
use rustls_pki_types::ServerName;
use std::io::IsTerminal;

/// How a poll ended; [`PollOutcome::exit_code`] is what `--once` reports.
#[derive(Debug, Clone)]
pub enum PollOutcome {
    /// The provider turned around and this many messages reached the sink.
    Delivered(Received),
    /// 453: nothing waiting.
    NoMail,
    AuthFailed(String),
    /// Network, protocol, refusal (450/451/530) or local delivery failure.
    Failed(String),
}

impl PollOutcome {
    pub fn exit_code(&self) -> u8 {
        match self {
            PollOutcome::Delivered(r) if r.error.is_none() && r.refused == 0 && r.messages > 0 => 0,
            PollOutcome::Delivered(r) if r.error.is_none() && r.refused == 0 => 1,
            PollOutcome::NoMail => 1,
            PollOutcome::AuthFailed(_) => 3,
            PollOutcome::Delivered(_) | PollOutcome::Failed(_) => 2,
        }
    }
}

/// The local side: a sink, or for a splice the connection to the local server.
enum Local {
    Sink(Sink),
    Splice(Conn),
}

impl Local {
    async fn close(self) {
        match self {
            Local::Sink(s) => s.close().await,
            Local::Splice(mut c) => c.shutdown().await,
        }
    }
}

async fn open_sink(cfg: &ClientConfig, p: &Provider) -> Result<Local, String> {
    let sink = match &p.deliver {
        Deliver::Smtp(e) => Sink::Relay(
            relay::Relay::connect(e, false, &cfg.hostname, p.timeout)
                .await
                .map_err(|e| e.to_string())?,
        ),
        Deliver::Lmtp(e) => Sink::Relay(
            relay::Relay::connect(e, true, &cfg.hostname, p.timeout)
                .await
                .map_err(|e| e.to_string())?,
        ),
        Deliver::Maildir(t) => {
            Sink::Maildir(maildir::Maildir::new(t, p.max_message_size).map_err(|e| e.to_string())?)
        }
        Deliver::Command(t) => {
            Sink::Command(command::Command::new(t, p.max_message_size).map_err(|e| e.to_string())?)
        }
        Deliver::Splice(e) => {
            let c = Conn::connect(&e.to_string(), p.timeout)
                .await
                .map_err(|err| format!("cannot reach the local mail system at {e}: {err}"))?;
            return Ok(Local::Splice(c));
        }
    };
    Ok(Local::Sink(sink))
}

/// The provider's certificate must name the host we dialled (RFC 4954 §14 for PLAIN; and
/// simply what TLS is for).
async fn start_tls(p: &Provider, conn: &mut Conn) -> Result<(), String> {
    let identity = p.tls_identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
    let connector =
        client_connector(p.ca_file.as_deref(), p.tls_verify, identity).map_err(|e| e.to_string())?;
    let name = ServerName::try_from(p.host.clone()).map_err(|e| format!("{}: {e}", p.host))?;
    conn.connect_tls(&connector, name, p.timeout)
        .await
        .map_err(|e| e.to_string())
}

async fn connect(p: &Provider, target: &str) -> Result<Conn, String> {
    let mut conn = Conn::connect(target, p.timeout)
        .await
        .map_err(|e| format!("cannot connect to {target}: {e}"))?;
    if p.tls == TlsMode::Implicit {
        start_tls(p, &mut conn)
            .await
            .map_err(|e| format!("TLS with {target}: {e}"))?;
    }
    Ok(conn)
}

pub async fn poll(cfg: &ClientConfig, p: &Provider) -> PollOutcome {
    let local = match open_sink(cfg, p).await {
        Ok(s) => s,
        Err(e) => return PollOutcome::Failed(format!("local delivery is not possible, not polling: {e}")),
    };
    let target = format!("{}:{}", p.host, p.port);
    let mut conn = match connect(p, &target).await {
        Ok(c) => c,
        Err(e) => {
            local.close().await;
            return PollOutcome::Failed(e);
        }
    };
    let mut front = Customer::new(CustomerConfig {
        ehlo_name: cfg.hostname.clone(),
        user: p.user.clone(),
        password: p.password.clone().into_bytes(),
        domains: p.domains.clone(),
        starttls: p.tls == TlsMode::StartTls,
        tls_active: conn.is_tls(),
        external: p.tls_identity.is_some(),
        nonce: odmr_proto::sasl::scram::make_nonce(&rand::random::<[u8; 18]>()),
    });
    let ended = loop {
        match front.poll(&mut conn.buf) {
            CustomerStep::NeedInput => {
                if let Err(e) = conn.send(front.output(), p.timeout).await {
                    break Some(FrontEnd::Failed(format!("connection to {target} failed: {e}")));
                }
                let timeout = match front.waiting_for() {
                    Wait::Atrn => p.atrn_timeout,
                    Wait::Command => p.timeout,
                };
                match conn.fill(timeout).await {
                    Ok(n) if n > 0 => {}
                    Ok(_) => {
                        break Some(
                            front
                                .closed()
                                .unwrap_or(FrontEnd::Failed(format!("{target} closed the connection"))),
                        )
                    }
                    Err(e) => {
                        break Some(
                            front
                                .closed()
                                .unwrap_or(FrontEnd::Failed(format!("{target}: {e}"))),
                        )
                    }
                }
            }
            CustomerStep::Ended(e) => {
                let _ = conn.send(front.output(), p.timeout).await;
                break Some(e);
            }
            CustomerStep::StartTls => {
                if let Err(e) = start_tls(p, &mut conn).await {
                    break Some(FrontEnd::Failed(format!("STARTTLS with {target}: {e}")));
                }
                front.tls_started();
            }
            // A 250 that arrived before our ATRN was even sent answers nothing we asked.
            CustomerStep::Turnaround if !front.output().is_empty() => {
                break Some(FrontEnd::Failed(format!(
                    "{target} sent replies ahead of our commands (a 250 before ATRN); not turning around"
                )));
            }
            CustomerStep::Turnaround => break None,
        }
    };
    if let Some(e) = ended {
        conn.shutdown().await;
        local.close().await;
        return match e {
            FrontEnd::NoMail(_) => PollOutcome::NoMail,
            FrontEnd::AuthFailed(r) => {
                PollOutcome::AuthFailed(format!("authentication as {} failed: {r}", p.user))
            }
            FrontEnd::Refused(r) => PollOutcome::Failed(format!(
                "ATRN refused ({r}): check that the domains {:?} belong to account {}",
                p.domains, p.user
            )),
            FrontEnd::TryLater(r) => PollOutcome::Failed(format!("provider asked to try later: {r}")),
            FrontEnd::AuthRequired(r) => {
                PollOutcome::Failed(format!("provider says we are not authenticated: {r}"))
            }
            FrontEnd::Failed(m) => PollOutcome::Failed(m),
        };
    }
    tracing::info!(provider = %p.name, "turnaround: receiving mail");
    let interactive = std::io::stderr().is_terminal();
    let name = p.name.clone();
    let mut progress = move |r: &Received| {
        if interactive {
            eprint!("\r{name}: {} messages, {} bytes", r.messages, r.bytes);
        }
    };
    match local {
        Local::Splice(local) => {
            let s = splice(conn, local, p.timeout).await;
            tracing::info!(
                provider = %p.name,
                delivered = s.delivered,
                refused = s.refused,
                to_local = s.to_local,
                to_provider = s.to_provider,
                "splice finished"
            );
            PollOutcome::Delivered(Received {
                messages: s.delivered,
                bytes: s.to_local,
                refused: s.refused,
                error: s.error,
            })
        }
        Local::Sink(mut sink) => {
            let session = Session {
                provider: &p.name,
                hostname: &cfg.hostname,
                timeout: p.timeout,
                progress: &mut progress,
            };
            let got = receive(&mut conn, &mut sink, session).await;
            if interactive && got.messages > 0 {
                eprintln!();
            }
            sink.close().await;
            conn.shutdown().await;
            PollOutcome::Delivered(got)
        }
    }
}
