//! `odmr client`: the customer. Polls each provider (or each once, with `--once`), receives the
//! held mail over the reversed ODMR session and hands it to the local mail system — or, for a
//! provider with `mode = "etrn"`, asks it with ETRN to deliver to our fixed address.
//!
//! Daemon behaviour: each provider is polled on its interval with ±10 % jitter; after an error
//! the next try comes sooner (1 min, doubling up to the interval) so a short outage does not
//! delay mail by a whole interval; SIGUSR1 polls every provider now; SIGTERM/SIGINT stop at
//! once. Abandoning a poll in progress is safe: nothing is acknowledged to the provider before
//! the sink holds it, so the provider keeps whatever was in flight.
//!
//! Every failure is reported with the provider's name, its address and the config file that
//! names it ([`Where`]), in the daemon's log and in `--once`'s output alike: with several
//! providers, or several client configs on one machine, the reader knows what to fix where.

pub mod config;
mod poll;
mod receive;
#[cfg(test)]
mod reversed_transcripts;
mod sink;
mod splice;

use config::{ClientConfig, Provider};
use poll::PollOutcome;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Poll every provider once; the exit code for scripts (see `odmr client --help`).
pub async fn once(cfg: &ClientConfig) -> u8 {
    let mut worst = None::<u8>;
    for p in &cfg.providers {
        let outcome = poll::poll(cfg, p).await;
        log(cfg, p, &outcome);
        let code = outcome.exit_code();
        // Report the most serious result: auth failure, then error, then delivered, then none.
        let rank = |c: u8| match c {
            3 => 3,
            2 => 2,
            0 => 1,
            _ => 0,
        };
        worst = Some(match worst {
            Some(w) if rank(w) >= rank(code) => w,
            _ => code,
        });
    }
    worst.unwrap_or(1)
}

/// Which provider, at which address, configured in which file: the head of every failure.
pub struct Where<'a> {
    pub cfg: &'a ClientConfig,
    pub provider: &'a Provider,
}

impl std::fmt::Display for Where<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = self.provider;
        write!(
            f,
            "provider {:?} ({}:{}) in {}",
            p.name,
            p.host,
            p.port,
            self.cfg.path.display()
        )
    }
}

fn log(cfg: &ClientConfig, p: &Provider, o: &PollOutcome) {
    let provider = p.name.as_str();
    let at = Where { cfg, provider: p };
    match o {
        PollOutcome::Delivered(r) => match &r.error {
            // What the local side refused is logged line by line as it happens; this says
            // where to look, as `--once` exits 2 for it.
            None if r.refused > 0 => tracing::warn!(
                provider,
                messages = r.messages,
                bytes = r.bytes,
                refused = r.refused,
                "poll finished: {at}: the local mail system refused {} message(s) or recipient(s)",
                r.refused
            ),
            None => tracing::info!(
                provider,
                messages = r.messages,
                bytes = r.bytes,
                refused = r.refused,
                "poll finished"
            ),
            Some(e) => {
                tracing::warn!(
                    provider,
                    messages = r.messages,
                    bytes = r.bytes,
                    "session ended early: {at}: {e}; the provider keeps what was not acknowledged"
                )
            }
        },
        PollOutcome::NoMail => tracing::info!(provider, "no mail waiting"),
        PollOutcome::QueueStarted(domains) => tracing::info!(
            provider,
            domains = %domains.join(","),
            "ETRN accepted: the provider delivers to our address on its own connection"
        ),
        // Without a password (ETRN only) nothing was sent to check: the provider refused our
        // address.
        PollOutcome::AuthFailed(e) if p.password.is_empty() => {
            tracing::error!(provider, "not allowed: {at}: {e}")
        }
        PollOutcome::AuthFailed(e) => {
            tracing::error!(
                provider,
                "authentication failed: {at}: {e}; check user and password"
            )
        }
        PollOutcome::Failed(e) => tracing::error!(provider, "poll failed: {at}: {e}"),
    }
}

/// Run as a daemon until SIGTERM/SIGINT.
pub async fn daemon(cfg: ClientConfig) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    let now = Arc::new(Notify::new());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..cfg.providers.len() {
        let (cfg, now) = (cfg.clone(), now.clone());
        tasks.spawn(async move {
            let p = &cfg.providers[i];
            let mut failures = 0u32;
            loop {
                let outcome = poll::poll(&cfg, p).await;
                log(&cfg, p, &outcome);
                let wait = match outcome {
                    PollOutcome::Failed(_) | PollOutcome::AuthFailed(_) => {
                        failures += 1;
                        let backoff = Duration::from_secs(60).saturating_mul(1 << (failures - 1).min(16));
                        backoff.min(p.interval)
                    }
                    _ => {
                        failures = 0;
                        jitter(p.interval)
                    }
                };
                tracing::debug!(provider = %p.name, next_in = ?wait, "next poll");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = now.notified() => tracing::info!(provider = %p.name, "SIGUSR1: polling now"),
                }
            }
        });
    }
    use tokio::signal::unix::{signal, SignalKind};
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut term = signal(SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = usr1.recv() => now.notify_waiters(),
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("stopping");
    tasks.shutdown().await;
    Ok(())
}

fn jitter(d: Duration) -> Duration {
    let f = 0.9 + rand::random::<f64>() * 0.2;
    d.mul_f64(f)
}
