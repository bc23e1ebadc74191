//! Driving the system under test: the release `odmr` binary as a server (config in a work
//! directory, port-0 listeners read back from its `listening` log lines), as `odmr client
//! --once`, and its operator CLI; plus reading its store directly with `odmr-store`.
//!
//! Invariants: every listener is on 127.0.0.1 port 0; every process is a [`Proc`] (killed when
//! dropped); the store is only opened by the harness for short reads (it is multi-process safe),
//! except in the bulk loader of the turnaround measurement, which opens it with the server
//! stopped.

use crate::procs::{self, Finished, Proc};
use anyhow::{anyhow, bail, Context, Result};
use odmr_store::{Store, StoreConfig};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::process::Command;

/// The account and domain every measurement delivers to.
pub const USER: &str = "bench";
pub const PASSWORD: &str = "bench-secret";
pub const DOMAIN: &str = "bench.example";

/// The `odmr` binary under test.
#[derive(Debug, Clone)]
pub struct Odmr {
    pub bin: PathBuf,
}

impl Odmr {
    /// `explicit` (`--odmr PATH`) if given; otherwise, when run by `cargo run` (which sets
    /// `CARGO`), build the release binary first (a no-op when it is up to date), then take the
    /// `odmr` beside our own executable (both live in `target/release`).
    pub fn locate(explicit: Option<PathBuf>) -> Result<Odmr> {
        if let Some(bin) = explicit {
            if !bin.is_file() {
                bail!("--odmr {}: no such file", bin.display());
            }
            return Ok(Odmr { bin });
        }
        let me = std::env::current_exe().context("where is the bench binary")?;
        let dir = me.parent().context("bench binary has no directory")?;
        if let Ok(cargo) = std::env::var("CARGO") {
            let release = dir.file_name().is_some_and(|n| n == "release");
            let mut cmd = std::process::Command::new(cargo);
            cmd.args(["build", "-p", "odmr", "--bin", "odmr"]);
            // `cargo run` gave us the variables of the bench package; build scripts (ring's)
            // watch some of them, and seeing ours would rebuild them at every run.
            for (k, _) in std::env::vars_os() {
                let k = k.to_string_lossy();
                if k == "OUT_DIR"
                    || k == "CARGO_PRIMARY_PACKAGE"
                    || ["CARGO_MANIFEST_", "CARGO_PKG_", "CARGO_CRATE_", "CARGO_BIN_"]
                        .iter()
                        .any(|p| k.starts_with(p))
                {
                    cmd.env_remove(k.as_ref());
                }
            }
            if release {
                cmd.arg("--release");
            }
            eprintln!(
                "bench: building odmr ({})",
                if release { "release" } else { "debug" }
            );
            let st = cmd.status().context("run cargo build -p odmr")?;
            if !st.success() {
                bail!("cargo build -p odmr failed");
            }
            if !release {
                eprintln!("bench: WARNING: this is a debug build; figures are meaningless (use --release)");
            }
        }
        let bin = dir.join("odmr");
        if !bin.is_file() {
            bail!(
                "no odmr binary at {}: build it with `cargo build --release -p odmr` or pass --odmr PATH",
                bin.display()
            );
        }
        Ok(Odmr { bin })
    }
}

/// What a server is started with, beyond the defaults of the harness.
#[derive(Debug, Clone, Default)]
pub struct ServerOpts {
    /// Extra lines of `[smtp]`.
    pub smtp: String,
    /// Extra lines of `[odmr]`.
    pub odmr: String,
    /// `[limits] max_connections` (the per-IP limit is set to the same: every client is
    /// 127.0.0.1).
    pub max_connections: Option<usize>,
    /// Certificate and key: `[tls]`, and an implicit-TLS ODMR listener.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// A running `odmr server`.
pub struct Server {
    pub config: PathBuf,
    pub smtp: SocketAddr,
    pub odmr: SocketAddr,
    /// The implicit-TLS ODMR listener, when started with TLS.
    pub odmr_tls: Option<SocketAddr>,
    proc: Proc,
}

impl Server {
    /// Write `dir/odmr.toml` for a store in `store` and start the server with `log` as its
    /// `ODMR_LOG`.
    pub async fn start(
        odmr: &Odmr,
        dir: &Path,
        store: &Path,
        opts: &ServerOpts,
        log: &str,
    ) -> Result<Server> {
        std::fs::create_dir_all(dir)?;
        let config = dir.join("odmr.toml");
        let mut text = format!(
            "hostname = \"odmr.bench.test\"\n[store]\npath = {store:?}\n\
             [smtp]\nlisten = [\"127.0.0.1:0\"]\n{smtp}\n\
             [odmr]\nlisten = [\"127.0.0.1:0\"]\n{tls_listen}{odmr_extra}\n",
            store = store.display().to_string(),
            smtp = opts.smtp,
            tls_listen = if opts.tls.is_some() {
                "listen_tls = [\"127.0.0.1:0\"]\n"
            } else {
                ""
            },
            odmr_extra = opts.odmr,
        );
        if let Some(n) = opts.max_connections {
            text.push_str(&format!(
                "[limits]\nmax_connections = {n}\nmax_connections_per_ip = {n}\n"
            ));
        }
        if let Some((cert, key)) = &opts.tls {
            text.push_str(&format!(
                "[tls]\ncert = {:?}\nkey = {:?}\n",
                cert.display().to_string(),
                key.display().to_string()
            ));
        }
        std::fs::write(&config, text)?;
        let mut cmd = Command::new(&odmr.bin);
        cmd.arg("server")
            .arg("--config")
            .arg(&config)
            .env("ODMR_LOG", log);
        let mut proc = Proc::spawn("odmr server", cmd)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let lines = proc.first_lines();
            let find = |kind: &str| -> Option<SocketAddr> {
                lines
                    .iter()
                    .filter(|l| l.contains("listening"))
                    .find(|l| field(l, "kind=") == kind)
                    .and_then(|l| field(l, "addr=").parse().ok())
            };
            let (smtp, od, tls) = (find("smtp"), find("odmr"), find("odmr-tls"));
            if let (Some(smtp), Some(od)) = (smtp, od) {
                if opts.tls.is_none() || tls.is_some() {
                    return Ok(Server {
                        config,
                        smtp,
                        odmr: od,
                        odmr_tls: tls,
                        proc,
                    });
                }
            }
            if let Some(st) = proc.exited() {
                bail!("odmr server exited with {st} at start:\n{}", proc.output());
            }
            if Instant::now() > deadline {
                bail!(
                    "odmr server did not report its listeners in 30 s:\n{}",
                    proc.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid().unwrap_or(0)
    }

    /// SIGTERM and wait (the store is checkpointed and closed on a clean exit).
    pub async fn stop(self) -> Result<()> {
        let f = self.proc.stop(Duration::from_secs(60)).await;
        if !f.success() {
            bail!("{}", f.describe("odmr server (stopping)"));
        }
        Ok(())
    }

    /// SIGKILL: what was acknowledged must still be in the store afterwards.
    pub async fn kill(self) {
        if let Some(pid) = self.proc.pid() {
            procs::signal(pid, libc::SIGKILL);
        }
        let _ = self.proc.wait(Duration::from_secs(10)).await;
    }

    /// `odmr account add USER --domain DOMAIN --password-stdin`.
    pub async fn add_account(&self, odmr: &Odmr, user: &str, password: &str, domains: &[&str]) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        let mut cmd = Command::new(&odmr.bin);
        cmd.args(["account", "add", user, "--password-stdin"]);
        for d in domains {
            cmd.args(["--domain", d]);
        }
        cmd.arg("--config")
            .arg(&self.config)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("run odmr account add")?;
        let mut stdin = child.stdin.take().context("stdin")?;
        stdin.write_all(format!("{password}\n").as_bytes()).await?;
        drop(stdin);
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .map_err(|_| anyhow!("odmr account add timed out"))??;
        if !out.status.success() {
            bail!(
                "odmr account add failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

/// The value of `key` (e.g. `addr=`) in a tracing log line.
pub fn field(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or("")
        .trim_matches('"')
        .to_string()
}

/// How `odmr client` hands the mail on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deliver {
    /// Relay in lockstep to an SMTP server.
    Smtp,
    /// Copy bytes both ways to an SMTP server.
    Splice,
}

/// `odmr client --once` against `odmr` (the provider's ODMR port), delivering to
/// 127.0.0.1:`sink`; with `ca` the session uses STARTTLS and verifies the provider against that
/// CA. Killed after `limit`.
pub async fn client_once(
    odmr: &Odmr,
    dir: &Path,
    provider: SocketAddr,
    deliver: Deliver,
    sink: u16,
    ca: Option<&Path>,
    limit: Duration,
) -> Result<Finished> {
    Ok(client_spawn(odmr, dir, provider, deliver, sink, ca)?
        .wait(limit)
        .await)
}

/// [`client_once`], started: the caller waits (and may watch its memory meanwhile).
pub fn client_spawn(
    odmr: &Odmr,
    dir: &Path,
    provider: SocketAddr,
    deliver: Deliver,
    sink: u16,
    ca: Option<&Path>,
) -> Result<Proc> {
    std::fs::create_dir_all(dir)?;
    let config = dir.join(format!("client-{}.toml", rand::random::<u32>()));
    let tls = match ca {
        Some(ca) => format!("tls = \"starttls\"\nca_file = {:?}\n", ca.display().to_string()),
        None => "tls = \"none\"\n".into(),
    };
    let deliver = match deliver {
        Deliver::Smtp => format!("smtp = \"127.0.0.1:{sink}\""),
        Deliver::Splice => format!("splice = \"127.0.0.1:{sink}\""),
    };
    std::fs::write(
        &config,
        format!(
            "hostname = \"customer.bench.test\"\n[[provider]]\nname = \"bench\"\nhost = \"{}\"\n\
             port = {}\nuser = \"{USER}\"\npassword = \"{PASSWORD}\"\ndomains = [\"{DOMAIN}\"]\n\
             {tls}interval = \"1m\"\ntimeout = \"60s\"\natrn_timeout = \"10m\"\n\
             [provider.deliver]\n{deliver}\n",
            provider.ip(),
            provider.port(),
        ),
    )?;
    let mut cmd = Command::new(&odmr.bin);
    cmd.args(["client", "--once", "--config"])
        .arg(&config)
        .env("ODMR_LOG", "warn");
    Proc::spawn("odmr client", cmd)
}

/// Open a store for a short read.
pub async fn open_store(dir: &Path) -> Result<Store> {
    Store::open(&StoreConfig::sqlite(dir))
        .await
        .with_context(|| format!("open the store in {}", dir.display()))
}

/// How many messages are in the store in `dir` at all, in any state (delivered ones are removed;
/// failed ones stay until their notice is queued).
pub async fn in_queue(dir: &Path) -> Result<u64> {
    let store = open_store(dir).await?;
    let n = store.queue_ids(&odmr_store::QueueFilter::default()).await;
    store.close().await;
    Ok(n?.len() as u64)
}

/// How many messages wait for `domain` in the store in `dir`.
pub async fn pending(dir: &Path, domain: &str) -> Result<u64> {
    let store = open_store(dir).await?;
    let n = store.pending_count(&[domain.to_string()]).await;
    store.close().await;
    Ok(n?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_lines_give_kind_and_address() {
        let line =
            "2025-01-01T00:00:00.000000Z  INFO odmr::server: listening kind=odmr-tls addr=127.0.0.1:41234";
        assert_eq!(field(line, "kind="), "odmr-tls");
        assert_eq!(field(line, "addr="), "127.0.0.1:41234");
        assert_eq!(field(line, "missing="), "");
        let quoted = "INFO listening kind=\"smtp\" addr=127.0.0.1:1";
        assert_eq!(field(quoted, "kind="), "smtp");
    }
}
