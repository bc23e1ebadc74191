//! `odmr`: one binary for the provider (`server`), the customer (`client`) and the operators'
//! tools (`account`, `domain`, `queue`, `lease`). Errors end here as anyhow reports; library
//! code uses typed errors.
//!
//! The client and the server read different files, usually on different machines, so each has
//! its own default path and environment variable: an operator's `ODMR_CONFIG` never points a
//! client on the same host at the server's file.

mod logging;

use odmr::{cli, client, config, server};

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "odmr",
    version,
    about = "On-Demand Mail Relay (RFC 2645): hold mail for customer domains and release it over ATRN"
)]
struct Cli {
    /// Configuration file (TOML). Default for `odmr client`: $ODMR_CLIENT_CONFIG, else
    /// /etc/odmr/odmr-client.toml; for the other commands: $ODMR_CONFIG, else
    /// /etc/odmr/odmr.toml.
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the provider: the inbound MX listener(s) and the ODMR listener(s), in the foreground.
    Server,
    /// Run the customer: poll the providers of the config file and deliver their mail locally.
    #[command(
        after_help = "The config file: --config FILE, else $ODMR_CLIENT_CONFIG, else \
        /etc/odmr/odmr-client.toml (a client config: see odmr-client.example.toml).\n\n\
        Exit status with --once (the most serious over all providers):\n  \
        0  mail was delivered (ETRN: a queue run was started)\n  \
        1  no mail was waiting (ETRN: 251 for every domain)\n  \
        2  error: network, protocol, refusal (450/451/530; ETRN 458 or not supported) or local delivery\n  \
        3  authentication failed (ETRN: 459, not allowed)"
    )]
    Client {
        /// Poll each provider once and exit with a status scripts can use (see below).
        #[arg(long)]
        once: bool,
    },
    /// Manage customer accounts (works while the server runs).
    #[command(subcommand)]
    Account(cli::account::AccountCmd),
    /// Manage the domains of accounts, their quotas and accepted recipients (works while the
    /// server runs).
    #[command(subcommand)]
    Domain(cli::domain::DomainCmd),
    /// Inspect and control the queue of held mail: list, show, delete, bounce, hold, release.
    #[command(subcommand)]
    Queue(cli::queue::QueueCmd),
    /// See which domains are being delivered, and break a stuck delivery's lease.
    #[command(subcommand)]
    Lease(cli::lease::LeaseCmd),
    /// Certificates for trying odmr out (no configuration file needed).
    #[command(subcommand)]
    Tls(cli::tls::TlsCmd),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Held to the end of `main`: dropping it flushes the queued log lines.
    let _log_guard = logging::init();
    let is_client = matches!(cli.command, Command::Client { .. });
    // The client is a handful of connections, each a chain of round trips (provider, local MTA):
    // on one thread a reply wakes its task without a hand-off between threads, which is most
    // of what a round trip costs on loopback. The server serves many connections: all cores.
    let built = if is_client {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().enable_all().build()
    };
    let rt = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("odmr: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("odmr: {e:#}");
            // 2 is `odmr client`'s documented "error" status.
            ExitCode::from(if is_client { 2 } else { 1 })
        }
    }
}

/// This build's version, as the startup line and `--version` show it.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The default config files and the variables that override them (see the module comment).
const SERVER_CONFIG: (&str, &str) = ("ODMR_CONFIG", "/etc/odmr/odmr.toml");
const CLIENT_CONFIG: (&str, &str) = ("ODMR_CLIENT_CONFIG", "/etc/odmr/odmr-client.toml");

/// `--config`, else the environment variable, else the default path. An empty variable counts
/// as unset, as clap's `env` did.
fn config_path(given: Option<PathBuf>, (var, default): (&str, &str)) -> PathBuf {
    given
        .or_else(|| std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(default))
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    if let Command::Tls(c) = cli.command {
        cli::tls::tls(c)?;
        return Ok(0);
    }
    if let Command::Client { once } = cli.command {
        let path = config_path(cli.config.clone(), CLIENT_CONFIG);
        let cfg = match client::config::ClientConfig::load(&path) {
            Ok(c) => c,
            // Someone used to the one variable of earlier versions set it for the client.
            Err(e @ config::ConfigError::Read { .. })
                if cli.config.is_none()
                    && std::env::var_os(CLIENT_CONFIG.0).is_none()
                    && std::env::var_os(SERVER_CONFIG.0).is_some() =>
            {
                anyhow::bail!(
                    "{e}; note: {} is set, but it is for the server and the operators' commands: \
                     the client reads {}",
                    SERVER_CONFIG.0,
                    CLIENT_CONFIG.0
                )
            }
            Err(e) => return Err(e.into()),
        };
        // First in the log: which version runs, with which file (several client configs may
        // run on one machine).
        tracing::info!(config = %path.display(), "odmr {VERSION} client starting");
        if once {
            return Ok(client::once(&cfg).await);
        }
        client::daemon(cfg).await?;
        return Ok(0);
    }
    let cfg = config::Config::load(&config_path(cli.config, SERVER_CONFIG))?;
    match cli.command {
        Command::Server => {
            // First in the log, before the store is opened (or created): which version runs,
            // with which files. The operators' commands say nothing: their stderr is for errors.
            tracing::info!(
                config = %cfg.path.display(),
                store = %cfg.store,
                "odmr {VERSION} starting"
            );
            server::run(cfg).await?
        }
        Command::Account(c) => cli::account::account(&cfg, c).await?,
        Command::Domain(c) => cli::domain::domain(&cfg, c).await?,
        Command::Queue(c) => cli::queue::queue(&cfg, c).await?,
        Command::Lease(c) => cli::lease::lease(&cfg, c).await?,
        Command::Client { .. } | Command::Tls(_) => {}
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// `--help` shows a positional argument (`<NAME>`, `<ID>` …) with its doc comment; without
    /// one, a newcomer sees a bare name and must guess what goes there.
    #[test]
    fn every_positional_argument_of_every_subcommand_has_a_help_line() {
        fn walk(cmd: &clap::Command, path: &str, seen: &mut usize, missing: &mut Vec<String>) {
            for arg in cmd.get_positionals() {
                *seen += 1;
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                if help.trim().is_empty() {
                    missing.push(format!("{path} <{}>", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), seen, missing);
            }
        }
        let mut cmd = Cli::command();
        // Built as `--help` sees it, with clap's own `help` subcommands.
        cmd.build();
        let (mut seen, mut missing) = (0, Vec::new());
        walk(&cmd, "odmr", &mut seen, &mut missing);
        assert!(
            missing.is_empty(),
            "positional arguments without help: {missing:?}"
        );
        // The walk reaches the subcommands' positionals (account, domain, queue, lease …), so
        // an empty walk cannot pass for a clean one.
        assert!(seen >= 14, "only {seen} positional arguments found");
    }
}
