//! What odmr says when it starts: the filter `ODMR_LOG` asks for (a bad value must not hide
//! errors), the version and files it runs with, and whether its store was created or upgraded.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A client config whose one provider listens nowhere: its poll fails at once. (Its sink is a
/// Maildir, so no local MTA on a fixed port is needed.)
fn client_config(dir: &Path) -> PathBuf {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let path = dir.join("client.toml");
    std::fs::write(
        &path,
        format!(
            "hostname = \"customer.test\"\n[[provider]]\nname = \"isp\"\nhost = \"127.0.0.1\"\n\
             port = {port}\nuser = \"acme\"\npassword = \"pw\"\ndomains = [\"example.org\"]\n\
             tls = \"none\"\ntimeout = \"5s\"\n[provider.deliver]\nmaildir = \"{}/{{domain}}/{{local}}\"\n",
            dir.display()
        ),
    )
    .unwrap();
    path
}

/// `odmr client --once` with `ODMR_LOG` set to `log`; returns (status, stderr).
fn client_once(config: &Path, log: &str) -> (i32, String) {
    let out = Command::new(common::BIN)
        .args(["client", "--once", "--config"])
        .arg(config)
        .env("ODMR_LOG", log)
        .stdin(Stdio::null())
        .output()
        .expect("run odmr client");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `tracing_subscriber` would read `verbose` as a target name and show nothing at all: the
/// poll's error would vanish. odmr refuses the value, says so, and logs at `info`.
#[test]
fn an_invalid_odmr_log_is_refused_and_errors_still_show() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = client_config(dir.path());
    let (st, err) = client_once(&cfg, "verbose");
    assert_eq!(st, 2, "{err}");
    assert!(err.contains("ERROR") && err.contains("poll failed"), "{err}");
    let warning = err
        .lines()
        .find(|l| l.contains("WARN") && l.contains("ODMR_LOG"))
        .unwrap_or_else(|| panic!("no warning about ODMR_LOG:\n{err}"));
    assert!(
        warning.contains("\"verbose\"")
            && warning.contains("error, warn, info, debug, trace, off")
            && warning.contains("target=level"),
        "{warning}"
    );

    // A valid value gets no warning, and `off` is obeyed.
    let (_, err) = client_once(&cfg, "warn,odmr=error");
    assert!(err.contains("poll failed") && !err.contains("ODMR_LOG"), "{err}");
    let (st, err) = client_once(&cfg, "off");
    assert_eq!((st, err.as_str()), (2, ""));
}

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The first line of the server's log names its version, its config file and its store; the
/// client's names its version and config file.
#[test]
fn the_first_line_names_the_version_and_the_files() {
    let s = common::Server::start();
    let log = s.log();
    let first = log.lines().next().unwrap_or_default();
    assert!(
        first.contains("INFO")
            && first.contains(&format!("odmr {VERSION} starting"))
            && first.contains(&format!("config={}", s.config.display()))
            && first.contains(&format!("store=sqlite:{}", s.dir.path().join("store").display())),
        "{log}"
    );

    let dir = tempfile::tempdir().unwrap();
    let cfg = client_config(dir.path());
    let (_, err) = client_once(&cfg, "info");
    let first = err.lines().next().unwrap_or_default();
    assert!(
        first.contains("INFO")
            && first.contains(&format!("odmr {VERSION} client starting"))
            && first.contains(&format!("config={}", cfg.display())),
        "{err}"
    );
}

/// A new store says it was created (once), not that its schema was upgraded; opening it again
/// says nothing.
#[test]
fn a_new_store_is_created_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let cfg = dir.path().join("odmr.toml");
    std::fs::write(
        &cfg,
        format!("hostname = \"h.test\"\n[store]\npath = \"{}\"\n", store.display()),
    )
    .unwrap();
    let (st, _, err) = common::cli_with(&cfg, &["account", "list"], None);
    assert_eq!(st, 0, "{err}");
    let created: Vec<&str> = err.lines().filter(|l| l.contains("store created")).collect();
    assert_eq!(created.len(), 1, "{err}");
    assert!(
        created[0].contains(&format!("path={}", store.join("odmr.db").display()))
            && created[0].contains(" version="),
        "{err}"
    );
    assert!(!err.contains("upgraded"), "{err}");
    let (st, _, err) = common::cli_with(&cfg, &["account", "list"], None);
    assert_eq!((st, err.as_str()), (0, ""));
}
