//! The scripted ODMR customer `tests/peers/odmr_customer.py` (smtplib's CRAM-MD5, ATRN, then the
//! customer's SMTP server on the same connection), run to the end or in the background. It
//! reports what it received as JSON on stdout and its progress as `EVENT …` lines on stderr.

use super::{peers_dir, Server};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn command(
    py: &Path,
    server: &Server,
    user: &str,
    password: &str,
    domains: Option<&str>,
    flags: &[&str],
) -> Command {
    let mut c = Command::new(py);
    c.arg(peers_dir().join("odmr_customer.py"))
        .args(["--port", &server.odmr.port().to_string()])
        .args(["--user", user, "--password", password]);
    if let Some(d) = domains {
        c.args(["--domains", d]);
    }
    c.args(flags);
    c
}

/// Runs the customer to the end; it must exit 0 (it found nothing unexpected). Returns its report.
pub fn run(
    py: &Path,
    server: &Server,
    user: &str,
    password: &str,
    domains: Option<&str>,
    flags: &[&str],
) -> Value {
    let out = command(py, server, user, password, domains, flags)
        .output()
        .expect("run odmr_customer.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "customer {flags:?} failed ({}):\nstderr:\n{}\nreport:\n{stdout}\nserver log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("customer report is not JSON ({e}): {stdout}"))
}

/// The recipients of every message a customer received, in order.
pub fn received_rcpts(report: &Value) -> Vec<String> {
    report["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .flat_map(|m| m["rcpts"].as_array().expect("rcpts").clone())
        .map(|r| r.as_str().expect("address").to_string())
        .collect()
}

/// A customer running in the background; [`Running::start`] returns once its ATRN was answered.
pub struct Running {
    child: Child,
    events: mpsc::Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl Running {
    /// Starts the customer and waits for the reply to its ATRN, which it returns.
    pub fn start(
        py: &Path,
        server: &Server,
        user: &str,
        password: &str,
        domains: Option<&str>,
        flags: &[&str],
    ) -> (Running, String) {
        let mut child = command(py, server, user, password, domains, flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start odmr_customer.py");
        let err = child.stderr.take().expect("stderr");
        let (tx, events) = mpsc::channel();
        let stderr = std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(ev) = line.strip_prefix("EVENT ") {
                    let _ = tx.send(ev.to_string());
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        let mut r = Running {
            child,
            events,
            stderr,
        };
        let atrn = r.event("atrn ");
        (r, atrn)
    }

    fn event(&mut self, prefix: &str) -> String {
        match self.events.recv_timeout(Duration::from_secs(20)) {
            Ok(ev) => ev
                .strip_prefix(prefix)
                .unwrap_or_else(|| panic!("expected event {prefix:?}, got {ev:?}"))
                .to_string(),
            Err(_) => {
                let _ = self.child.kill();
                panic!("customer sent no {prefix:?} event within 20 s");
            }
        }
    }

    /// Waits for the customer to end; it must exit 0. Returns its report.
    pub fn finish(self) -> Value {
        let out = self.child.wait_with_output().expect("wait for the customer");
        let stderr = self.stderr.join().expect("stderr thread");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "background customer failed ({}):\n{stderr}\n{stdout}",
            out.status
        );
        serde_json::from_str(&stdout).expect("customer report is JSON")
    }
}
