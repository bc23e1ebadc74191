//! One poll of one provider: open the sink, connect, EHLO/AUTH/ATRN, and on 250 receive the
//! mail (or splice it through). With `mode = "etrn"`: connect to the provider's MX,
//! EHLO/AUTH (when a password is set), `ETRN <domain>` for each domain, QUIT; the provider then
//! delivers to our fixed address on its own connection.
//!
//! The sink is opened before ATRN, so no ATRN is sent while local delivery is impossible: the
//! provider keeps the mail instead of turning around into a session we cannot finish.
//!
//! ETRN outcomes map to the same exit statuses as ATRN's: a queue run started for some domain is
//! 0 (like mail delivered), 251 for every domain is 1 (no mail), 458 or a 5xx is 2, and 459 —
//! the provider does not let us release the domain — is 3, like an authentication failure.
//!
//! A failure is a [`PollError`]: what went wrong, in words a customer can act on. It does not
//! repeat which provider or config file it was about; the caller puts that in front (see
//! `client::Where`), once for every kind of failure.

use super::config::{ClientConfig, Deliver, Mode, Provider, TlsMode};
use super::receive::{receive, Received, Session};
use super::sink::{command, maildir, relay, Sink};
use super::splice::splice;
use crate::net::conn::{Conn, ConnError};
use crate::net::driver::{Driver, Input, Stop};
use crate::net::tls::client_connector;
use odmr_proto::customer::{Customer, CustomerConfig, CustomerStep, EtrnOutcome, FrontEnd, Request, Wait};
use rustls_pki_types::ServerName;
use std::io::IsTerminal;

/// Why a poll failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PollError {
    /// The sink could not be opened, so nothing was asked of the provider.
    #[error("local delivery is not possible, not polling: {0}")]
    Local(String),
    #[error("connect: {0}")]
    Connect(String),
    /// `how` is "STARTTLS" or "implicit TLS".
    #[error("{how}: {reason}")]
    Tls { how: &'static str, reason: String },
    #[error("authentication as {user} failed: {reply}")]
    Auth { user: String, reply: String },
    /// ETRN 459 for these domains.
    #[error(
        "ETRN not allowed ({0}): authenticate as the owning account, or ask the provider to allow \
         this address"
    )]
    EtrnNotAllowed(String),
    /// The provider refused, the connection broke, or the session went somewhere it must not.
    #[error("{0}")]
    Session(String),
}

/// How a poll ended; [`PollOutcome::exit_code`] is what `--once` reports.
#[derive(Debug, Clone)]
pub enum PollOutcome {
    /// The provider turned around and this many messages reached the sink.
    Delivered(Received),
    /// 453: nothing waiting.
    NoMail,
    /// [`PollError::Auth`] or [`PollError::EtrnNotAllowed`].
    AuthFailed(PollError),
    /// Network, protocol, refusal (450/451/530) or local delivery failure; for ETRN, 458 or
    /// "not supported".
    Failed(PollError),
    /// ETRN: the provider started a queue run for these domains (the mail comes over its own
    /// connection to our address).
    QueueStarted(Vec<String>),
}

impl PollOutcome {
    pub fn exit_code(&self) -> u8 {
        match self {
            PollOutcome::Delivered(r) if r.error.is_none() && r.refused == 0 && r.messages > 0 => 0,
            PollOutcome::QueueStarted(_) => 0,
            PollOutcome::Delivered(r) if r.error.is_none() && r.refused == 0 => 1,
            PollOutcome::NoMail => 1,
            PollOutcome::AuthFailed(_) => 3,
            PollOutcome::Delivered(_) | PollOutcome::Failed(_) => 2,
        }
    }
}

/// The local side: a sink, or for a splice the connection to the local server.
enum Local {
    Sink(Box<Sink>),
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

async fn open_sink(cfg: &ClientConfig, p: &Provider) -> Result<Local, PollError> {
    let local = |e: &dyn std::fmt::Display| PollError::Local(e.to_string());
    let Some(deliver) = &p.deliver else {
        return Err(local(&"no [provider.deliver] target"));
    };
    let sink = match deliver {
        Deliver::Smtp(e) => Sink::Relay(Box::new(
            relay::Relay::connect(e, false, &cfg.hostname, p.timeout)
                .await
                .map_err(|e| local(&e))?,
        )),
        Deliver::Lmtp(e) => Sink::Relay(Box::new(
            relay::Relay::connect(e, true, &cfg.hostname, p.timeout)
                .await
                .map_err(|e| local(&e))?,
        )),
        Deliver::Maildir(t) => {
            let mut m = maildir::Maildir::new(t, p.max_message_size).map_err(|e| local(&e))?;
            m.line_ends = p.line_ends;
            Sink::Maildir(m)
        }
        Deliver::Command(t) => {
            let mut c = command::Command::new(t, p.max_message_size).map_err(|e| local(&e))?;
            c.line_ends = p.line_ends;
            Sink::Command(c)
        }
        Deliver::Splice(e) => {
            let c = Conn::connect(&e.to_string(), p.timeout)
                .await
                .map_err(|err| local(&format!("cannot reach the local mail system at {e}: {err}")))?;
            return Ok(Local::Splice(c));
        }
    };
    Ok(Local::Sink(Box::new(sink)))
}

/// The provider's certificate must name the host we dialled (RFC 4954 §14 for PLAIN; and
/// simply what TLS is for).
async fn start_tls(p: &Provider, conn: &mut Conn, how: &'static str) -> Result<(), PollError> {
    let tls = |reason: String| PollError::Tls { how, reason };
    let identity = p.tls_identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
    let connector = client_connector("ca_file", p.ca_file.as_deref(), p.tls_verify, identity)
        .map_err(|e| tls(e.to_string()))?;
    let name = ServerName::try_from(p.host.clone()).map_err(|e| tls(format!("{}: {e}", p.host)))?;
    conn.connect_tls(&connector, name, p.timeout)
        .await
        .map_err(|e| tls(e.to_string()))
}

async fn connect(p: &Provider, target: &str) -> Result<Conn, PollError> {
    let mut conn = Conn::connect(target, p.timeout).await.map_err(|e| {
        PollError::Connect(match e {
            // The OS's words ("Connection refused") without our "connection error:" wrapper.
            ConnError::Io(e) => e.to_string(),
            e => e.to_string(),
        })
    })?;
    if p.tls == TlsMode::Implicit {
        start_tls(p, &mut conn, "implicit TLS").await?;
    }
    Ok(conn)
}

/// Drive the front half until it turns around (`None`) or ends (`Some`).
async fn front_half(p: &Provider, conn: &mut Conn, front: &mut Customer, target: &str) -> Option<FrontEnd> {
    let mut driver = Driver::new(p.timeout);
    loop {
        match front.poll(&mut conn.buf) {
            CustomerStep::NeedInput => {
                let timeout = match front.waiting_for() {
                    Wait::Atrn => p.atrn_timeout,
                    Wait::Command => p.timeout,
                };
                match driver
                    .need_input_within(conn, front, Input::Replies, timeout)
                    .await
                {
                    Ok(_) => {}
                    Err(stop) => {
                        let why = match stop {
                            Stop::Closed => format!("{target} closed the connection"),
                            Stop::WriteFailed(e) => format!("connection to {target} failed: {e}"),
                            Stop::ReadFailed(e) => format!("{target}: {e}"),
                            Stop::Shutdown => format!("{target}: shutting down"),
                        };
                        break Some(front.closed().unwrap_or(FrontEnd::Failed(why)));
                    }
                }
            }
            CustomerStep::Ended(e) => {
                let _ = driver.flush(conn, front).await;
                break Some(e);
            }
            CustomerStep::StartTls => {
                if let Err(e) = driver.flush(conn, front).await {
                    break Some(FrontEnd::Failed(format!("connection to {target} failed: {e}")));
                }
                if let Err(e) = start_tls(p, conn, "STARTTLS").await {
                    break Some(FrontEnd::Failed(e.to_string()));
                }
                front.tls_started();
            }
            // The machine's output is empty here: everything we sent is out once it is flushed.
            CustomerStep::Turnaround => {
                if let Err(e) = driver.flush(conn, front).await {
                    break Some(FrontEnd::Failed(format!("connection to {target} failed: {e}")));
                }
                break None;
            }
        }
    }
}

fn customer(cfg: &ClientConfig, p: &Provider, conn: &Conn) -> Customer {
    Customer::new(CustomerConfig {
        ehlo_name: cfg.hostname.clone(),
        user: p.user.clone(),
        password: p.password.clone().into_bytes(),
        domains: p.domains.clone(),
        starttls: p.tls == TlsMode::StartTls,
        tls_active: conn.is_tls(),
        tls_verified: p.tls_verify,
        external: p.tls_identity.is_some(),
        nonce: odmr_proto::sasl::scram::make_nonce(&rand::random::<[u8; 18]>()),
        request: match p.mode {
            Mode::Atrn => Request::Atrn,
            Mode::Etrn => Request::Etrn,
        },
    })
}

/// `mode = "etrn"`: ask for a queue run per domain; no sink, nothing is received here.
async fn etrn(cfg: &ClientConfig, p: &Provider) -> PollOutcome {
    let target = format!("{}:{}", p.host, p.port);
    let mut conn = match connect(p, &target).await {
        Ok(c) => c,
        Err(e) => return PollOutcome::Failed(e),
    };
    let mut front = customer(cfg, p, &conn);
    let ended = front_half(p, &mut conn, &mut front, &target).await;
    conn.shutdown().await;
    let results = match ended {
        Some(FrontEnd::Etrn(r)) => r,
        Some(FrontEnd::AuthFailed(r)) => {
            return PollOutcome::AuthFailed(PollError::Auth {
                user: p.user.clone(),
                reply: r.to_string(),
            })
        }
        Some(FrontEnd::Failed(m)) => return PollOutcome::Failed(PollError::Session(m)),
        Some(other) => {
            return PollOutcome::Failed(PollError::Session(format!(
                "unexpected end of the ETRN session: {other:?}"
            )))
        }
        None => {
            return PollOutcome::Failed(PollError::Session(format!(
                "{target} turned the ETRN session around"
            )))
        }
    };
    let (mut started, mut not_allowed, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for (domain, o) in &results {
        match o {
            EtrnOutcome::Started(r) => {
                tracing::info!(provider = %p.name, domain = %domain, reply = %r, "ETRN: queue run started");
                started.push(domain.clone());
            }
            EtrnOutcome::NoMail(r) => {
                tracing::info!(provider = %p.name, domain = %domain, reply = %r, "ETRN: no mail waiting")
            }
            EtrnOutcome::TryLater(r) => {
                tracing::warn!(provider = %p.name, domain = %domain, reply = %r, "ETRN refused for now; try later");
                failed.push(format!("{domain}: {r}"));
            }
            EtrnOutcome::NotAllowed(r) => {
                tracing::error!(provider = %p.name, domain = %domain, reply = %r, "ETRN not allowed: the provider does not let this client release the domain");
                not_allowed.push(format!("{domain}: {r}"));
            }
            EtrnOutcome::NotSupported(r) => {
                tracing::error!(provider = %p.name, domain = %domain, reply = %r, "ETRN not supported by the provider (or broken); no further ETRN sent");
                failed.push(format!("{domain}: ETRN not supported: {r}"));
            }
        }
    }
    let skipped = p.domains.len() - results.len();
    if skipped > 0 {
        failed.push(format!(
            "{skipped} domain(s) not asked for after the provider refused ETRN"
        ));
    }
    if !not_allowed.is_empty() {
        PollOutcome::AuthFailed(PollError::EtrnNotAllowed(not_allowed.join("; ")))
    } else if !failed.is_empty() {
        PollOutcome::Failed(PollError::Session(failed.join("; ")))
    } else if started.is_empty() {
        PollOutcome::NoMail
    } else {
        PollOutcome::QueueStarted(started)
    }
}

pub async fn poll(cfg: &ClientConfig, p: &Provider) -> PollOutcome {
    if p.mode == Mode::Etrn {
        return etrn(cfg, p).await;
    }
    let local = match open_sink(cfg, p).await {
        Ok(s) => s,
        Err(e) => return PollOutcome::Failed(e),
    };
    let target = format!("{}:{}", p.host, p.port);
    let mut conn = match connect(p, &target).await {
        Ok(c) => c,
        Err(e) => {
            local.close().await;
            return PollOutcome::Failed(e);
        }
    };
    let mut front = customer(cfg, p, &conn);
    let ended = front_half(p, &mut conn, &mut front, &target).await;
    if let Some(e) = ended {
        conn.shutdown().await;
        local.close().await;
        let failed = |m: String| PollOutcome::Failed(PollError::Session(m));
        return match e {
            FrontEnd::NoMail(_) => PollOutcome::NoMail,
            FrontEnd::AuthFailed(r) => PollOutcome::AuthFailed(PollError::Auth {
                user: p.user.clone(),
                reply: r.to_string(),
            }),
            FrontEnd::Refused(r) => failed(format!(
                "ATRN refused ({r}): check that the domains {:?} belong to account {}",
                p.domains, p.user
            )),
            FrontEnd::TryLater(r) => failed(format!("provider asked to try later: {r}")),
            FrontEnd::AuthRequired(r) => failed(format!("provider says we are not authenticated: {r}")),
            FrontEnd::Failed(m) => failed(m),
            FrontEnd::Etrn(_) => failed("an ATRN session ended as ETRN".into()),
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
