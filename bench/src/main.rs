//! The benchmark harness of issue #6: `odmr server` and `odmr client` measured on 127.0.0.1
//! side by side with Postfix (smtp-source, smtp-sink, a throwaway loopback Postfix that holds
//! mail) and fetchmail, printed as one table (see BENCHMARKS.md).
//!
//! `cargo run --release -p bench -- [--tiny] [--only 1,2,...] [--messages N] ...`
//!
//! Invariants:
//! - Nothing here hard-codes a result: every figure is measured in this run; targets are the
//!   issue's.
//! - Bounded time: every child and every client runs under a time limit derived from the
//!   parameters; a measurement that overruns reports what it did within the limit.
//! - Measurements run one after the other, never concurrently, each with fresh processes and a
//!   fresh store in the run's work directory (removed at the end unless `--keep`).
//! - Ctrl-C or SIGTERM drops the running measurement, which kills its children and stops the
//!   throwaway Postfix (their guards' `Drop`), then the harness exits 130.

mod certs;
mod drain;
mod inbound;
mod memory;
mod odmr;
mod peers;
mod procs;
mod report;
mod smtp;
mod tls;
mod turnaround;

use anyhow::{bail, Context, Result};
use clap::Parser;
use report::{Report, Row};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "odmr benchmark harness (issue #6): one table, peers side by side"
)]
struct Cli {
    /// Small figures for CI (seconds, not minutes): every measurement and code path, tiny N.
    #[arg(long)]
    tiny: bool,
    /// Only these measurements (numbers of issue #6), e.g. `--only 1,3`.
    #[arg(long, value_delimiter = ',')]
    only: Vec<u8>,
    /// Messages per inbound and drain run [full: 20000, tiny: 200].
    #[arg(long)]
    messages: Option<u64>,
    /// Concurrent sessions of the inbound runs [20].
    #[arg(long)]
    sessions: Option<usize>,
    /// Body size of each message, octets [1024].
    #[arg(long)]
    size: Option<usize>,
    /// Turnaround: messages of other domains in the first store [full: 10000, tiny: 1000].
    #[arg(long)]
    store_small: Option<u64>,
    /// Turnaround: messages of other domains in the second store [full: 1000000, tiny: 2000]
    /// (issue #6's figure; the store's group commit loads them in well under a minute here).
    #[arg(long)]
    store_large: Option<u64>,
    /// Turnaround: how many other domains hold that mail [full: 10000, tiny: 100].
    #[arg(long)]
    other_domains: Option<usize>,
    /// Turnaround: ATRNs per store size (the median is reported) [full: 15, tiny: 5].
    #[arg(long)]
    rounds: Option<usize>,
    /// Memory: idle concurrent connections [full: 10000, tiny: 200].
    #[arg(long)]
    idle: Option<usize>,
    /// Memory: size of the one large message, MiB [full: 100, tiny: 1].
    #[arg(long)]
    big_mib: Option<u64>,
    /// Time limit of one rate run, seconds; a run still going is cut there and its rate is what
    /// it did so far [full: 180, tiny: 60].
    #[arg(long)]
    cap: Option<u64>,
    /// fetchmail relays about 21 messages/s, so it is timed over this window, seconds
    /// [full: 30, tiny: 8].
    #[arg(long)]
    fetchmail_window: Option<u64>,
    /// The odmr binary [default: built by cargo and taken from beside this binary].
    #[arg(long)]
    odmr: Option<PathBuf>,
    /// Where the run's work directory (stores, Postfix queue) is created [default: the system's
    /// temporary directory]. Use a directory on the disk you want to measure.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the work directory.
    #[arg(long)]
    keep: bool,
    /// The server's log filter (ODMR_LOG) [info: what a deployment runs].
    #[arg(long, default_value = "info")]
    log: String,
}

/// The parameters of a run, after `--tiny` and the explicit flags.
#[derive(Debug, Clone)]
pub struct Params {
    pub tiny: bool,
    pub messages: u64,
    pub sessions: usize,
    pub size: usize,
    pub store_small: u64,
    pub store_large: u64,
    pub other_domains: usize,
    pub rounds: usize,
    pub idle: usize,
    pub big_mib: u64,
    pub cap: Duration,
    pub fetchmail_window: Duration,
}

impl Params {
    fn from(cli: &Cli) -> Result<Params> {
        let t = cli.tiny;
        let p = Params {
            tiny: t,
            messages: cli.messages.unwrap_or(if t { 200 } else { 20_000 }),
            sessions: cli.sessions.unwrap_or(20),
            size: cli.size.unwrap_or(1024),
            store_small: cli.store_small.unwrap_or(if t { 1_000 } else { 10_000 }),
            store_large: cli.store_large.unwrap_or(if t { 2_000 } else { 1_000_000 }),
            other_domains: cli.other_domains.unwrap_or(if t { 100 } else { 10_000 }),
            rounds: cli.rounds.unwrap_or(if t { 5 } else { 15 }),
            idle: cli.idle.unwrap_or(if t { 200 } else { 10_000 }),
            big_mib: cli.big_mib.unwrap_or(if t { 1 } else { 100 }),
            cap: Duration::from_secs(cli.cap.unwrap_or(if t { 60 } else { 180 })),
            fetchmail_window: Duration::from_secs(cli.fetchmail_window.unwrap_or(if t { 8 } else { 30 })),
        };
        if p.messages == 0 || p.sessions == 0 || p.rounds == 0 || p.other_domains == 0 {
            bail!("--messages, --sessions, --rounds and --other-domains must be at least 1");
        }
        if p.store_large < p.store_small {
            bail!("--store-large must be at least --store-small");
        }
        Ok(p)
    }
}

/// What every measurement gets.
pub struct Ctx {
    pub p: Params,
    pub odmr: odmr::Odmr,
    /// The run's work directory.
    pub work: PathBuf,
    pub log: String,
    pub smtp_source: Result<PathBuf, String>,
    pub smtp_sink: Result<PathBuf, String>,
    pub fetchmail: Result<PathBuf, String>,
}

impl Ctx {
    /// A fresh subdirectory of the work directory.
    pub fn dir(&self, name: &str) -> Result<PathBuf> {
        let d = self.work.join(name);
        std::fs::create_dir_all(&d)?;
        Ok(d)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let code = rt.block_on(async {
        tokio::select! {
            r = run(cli) => match r {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("bench: {e:#}");
                    2
                }
            },
            sig = interrupted() => {
                eprintln!("bench: {sig}: stopping the peers and exiting");
                130
            }
        }
    });
    // Children are gone (kill_on_drop); do not wait for detached blocking tasks.
    rt.shutdown_timeout(Duration::from_secs(2));
    ExitCode::from(code)
}

async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    else {
        std::future::pending::<()>().await;
        unreachable!()
    };
    tokio::select! {
        _ = int.recv() => "interrupted",
        _ = term.recv() => "terminated",
    }
}

async fn run(cli: Cli) -> Result<u8> {
    let p = Params::from(&cli)?;
    let only: BTreeSet<u8> = if cli.only.is_empty() {
        (1..=5).collect()
    } else {
        cli.only.iter().copied().collect()
    };
    if let Some(bad) = only.iter().find(|n| !(1..=5).contains(*n)) {
        bail!("--only {bad}: the measurements are 1 to 5");
    }
    let nofile = procs::raise_nofile();
    let odmr = odmr::Odmr::locate(cli.odmr.clone())?;
    let base = cli.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base).with_context(|| format!("create {}", base.display()))?;
    let work = tempfile::Builder::new()
        .prefix("odmr-bench-")
        .tempdir_in(&base)
        .with_context(|| format!("work directory in {}", base.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        // Postfix's daemons (user postfix) must reach its queue inside.
        std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755))?;
    }
    let ctx = Ctx {
        p: p.clone(),
        odmr,
        work: work.path().to_path_buf(),
        log: cli.log.clone(),
        smtp_source: peers::find("smtp-source", "postfix"),
        smtp_sink: peers::find("smtp-sink", "postfix"),
        fetchmail: peers::find("fetchmail", "fetchmail"),
    };
    eprintln!(
        "bench: {} mode; odmr {}; work directory {}; open files {nofile}",
        if p.tiny { "tiny" } else { "full" },
        ctx.odmr.bin.display(),
        ctx.work.display()
    );
    if p.idle as u64 + 64 > nofile {
        eprintln!(
            "bench: WARNING: {} idle connections need more than the {nofile} open files allowed",
            p.idle
        );
    }

    let started = Instant::now();
    let mut report = Report {
        tiny: p.tiny,
        ..Report::default()
    };
    for n in &only {
        let t = Instant::now();
        eprintln!("bench: measurement {n}");
        let rows = match n {
            1 => inbound::run(&ctx).await,
            2 => drain::run(&ctx).await,
            3 => turnaround::run(&ctx).await,
            4 => memory::run(&ctx).await,
            _ => tls::run(&ctx).await,
        };
        eprintln!("bench: measurement {n} took {:.1} s", t.elapsed().as_secs_f64());
        report.push(rows);
    }

    println!("{}", machine());
    println!(
        "Parameters: {} messages of {} octets, {} inbound sessions; turnaround stores {} and {} messages over {} other domains, median of {} ATRNs; {} idle connections; one {} MiB message; rate runs capped at {} s, fetchmail timed over {} s. Total run time {:.0} s.\n",
        p.messages,
        p.size,
        p.sessions,
        p.store_small,
        p.store_large,
        p.other_domains,
        p.rounds,
        p.idle,
        p.big_mib,
        p.cap.as_secs(),
        p.fetchmail_window.as_secs(),
        started.elapsed().as_secs_f64()
    );
    print!("{}", report.render());

    if cli.keep {
        let kept = work.keep();
        eprintln!("bench: kept {}", kept.display());
    }
    let mut code = 0;
    if report.failures() > 0 {
        eprintln!("bench: {} measurement(s) failed", report.failures());
        code = 1;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") && report.unavailable() > 0 {
        eprintln!(
            "bench: under CI every peer must run; {} were unavailable",
            report.unavailable()
        );
        code = 1;
    }
    Ok(code)
}

/// One line about the machine: cores, CPU model, kernel.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("Machine: {cores} cores, {cpu}, Linux {kernel}.")
}

/// A row for a measurement whose peer program is missing.
pub fn unavailable(id: &str, what: &str, why: &str) -> Row {
    Row::new(
        id,
        what,
        Err(format!("cannot run: {why}")),
        report::Peer::Nothing("—".into()),
        report::Target::Report,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(args: &[&str]) -> Result<Params> {
        let mut v = vec!["bench"];
        v.extend_from_slice(args);
        Params::from(&Cli::try_parse_from(v)?)
    }

    #[test]
    fn tiny_is_small_and_flags_override_it() {
        let full = params(&[]).unwrap();
        assert_eq!(
            (full.messages, full.sessions, full.size, full.idle),
            (20_000, 20, 1024, 10_000)
        );
        let tiny = params(&["--tiny"]).unwrap();
        assert!(tiny.messages < full.messages && tiny.idle < full.idle && tiny.big_mib < full.big_mib);
        assert!(tiny.store_large < full.store_large && tiny.cap < full.cap);
        let mixed = params(&["--tiny", "--messages", "500", "--idle", "3"]).unwrap();
        assert_eq!(
            (mixed.messages, mixed.idle, mixed.big_mib),
            (500, 3, tiny.big_mib)
        );
    }

    #[test]
    fn nonsense_is_refused() {
        assert!(params(&["--messages", "0"]).is_err());
        assert!(params(&["--store-small", "10", "--store-large", "5"]).is_err());
        let cli = Cli::try_parse_from(["bench", "--only", "1,3"]).unwrap();
        assert_eq!(cli.only, vec![1, 3]);
    }
}
