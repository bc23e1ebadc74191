//! Crash safety, proven by killing the processes with SIGKILL at the worst moments: no clean
//! shutdown, no destructor, no flush. Each test then restarts what it killed on the same store
//! (or the same Maildir) and checks, message by message, what the guarantees promise:
//!
//! 1. The server killed under a load of inbound mail keeps every message it acknowledged with
//!    250, intact; the only extras are messages whose 250 was still on its way to the sender.
//! 2. The server killed in the middle of a reversed (ATRN) delivery: every message is delivered
//!    exactly once or is still queued; the only duplicate is the message whose 250 to DATA was on
//!    its way back to the server at the kill.
//! 3. The client killed in the middle of receiving: the provider re-delivers whatever the
//!    Maildir did not hold durably, with the same bound on duplicates.
//! 4. Leases after a crash: nothing stays stuck. A restarted server frees the leases of its own
//!    dead sessions at once; another node of the fleet answers 451 while the dead node's lease
//!    is live and delivers once it has expired; a restart never frees a live node's lease.
//!
//! The senders are Python's smtplib (`peers/crash_sender.py`, several threads, each message
//! self-checking with a SHA-256 of its body); the customer is `odmr client` with a Maildir sink
//! (fsync before 250), or the scripted customer `peers/odmr_customer.py`. Messages are told apart
//! by a token that is at once their envelope sender (visible in `odmr queue list`), their
//! Message-ID and a header (visible in the Maildir).

#[path = "peers/client_util.rs"]
mod client_util;
mod common;
#[path = "peers/interop_util.rs"]
mod interop_util;

use client_util::{maildir_in, wait_until, ProviderCfg};
use common::Server;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const USER: &str = "acme";
const PASS: &str = "acme-secret";
const DOMAIN: &str = "example.org";
const RCPT: &str = "bob@example.org";

// ----- processes -----

/// A child process killed (SIGKILL) and reaped when dropped, so a failing test leaves nothing
/// running; its stdout and stderr are collected as they come.
struct Proc {
    child: Option<Child>,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let out = Arc::new(Mutex::new(String::new()));
        let err = Arc::new(Mutex::new(String::new()));
        for (pipe, buf) in [
            (
                Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
                out.clone(),
            ),
            (Box::new(child.stderr.take().unwrap()), err.clone()),
        ] {
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut b = buf.lock().unwrap();
                    b.push_str(&line);
                    b.push('\n');
                }
            });
        }
        Proc {
            child: Some(child),
            out,
            err,
        }
    }

    fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Wait for the exit (at most `secs`, then SIGKILL and panic); the exit code and all output.
    fn wait(&mut self, secs: u64, what: &str) -> (Option<i32>, String, String) {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(secs);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not finish within {secs} s:\n{}", self.all());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader threads see EOF once the process is gone.
        std::thread::sleep(Duration::from_millis(100));
        (
            status.code(),
            self.out.lock().unwrap().clone(),
            self.err.lock().unwrap().clone(),
        )
    }

    fn all(&self) -> String {
        format!("{}{}", self.out.lock().unwrap(), self.err.lock().unwrap())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn python3() -> Option<PathBuf> {
    common::peer("python3", "python3")
}

/// `crash_sender.py`: `threads` smtplib sessions into the MX, `per_thread` messages each.
fn sender(
    python: &Path,
    server: &Server,
    threads: u32,
    per_thread: u32,
    until_killed: bool,
    acked: &Path,
) -> Proc {
    let mut cmd = Command::new(python);
    cmd.arg(common::peers_dir().join("crash_sender.py"))
        .args(["--port", &server.smtp.port().to_string()])
        .args(["--threads", &threads.to_string()])
        .args(["--per-thread", &per_thread.to_string()])
        .args(["--rcpt", RCPT])
        .arg("--acked")
        .arg(acked);
    if until_killed {
        cmd.arg("--until-killed");
    }
    Proc::spawn(&mut cmd)
}

/// Queue `threads × per_thread` messages through the MX and return their tokens.
fn queue_messages(python: &Path, server: &Server, threads: u32, per_thread: u32) -> BTreeSet<String> {
    let acked = server
        .dir
        .path()
        .join(format!("acked-{}", interop_util::random_u64()));
    let mut s = sender(python, server, threads, per_thread, false, &acked);
    let (code, out, err) = s.wait(120, "crash_sender.py");
    assert_eq!(code, Some(0), "crash_sender.py failed:\n{out}{err}");
    let tokens = lines(&acked);
    assert_eq!(tokens.len(), (threads * per_thread) as usize, "{out}{err}");
    tokens.into_iter().collect()
}

/// The lines of a file, in order (a missing file has none).
fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// `odmr client --once` running in the background (no `timeout` wrapper, so a SIGKILL reaches
/// odmr itself), with debug logs.
fn client_background(config: &Path) -> Proc {
    Proc::spawn(
        Command::new(common::BIN)
            .args(["client", "--once", "--config"])
            .arg(config)
            .env("ODMR_LOG", "info,odmr=debug"),
    )
}

/// The client's config against `server`'s current ODMR port (it changes at every restart).
fn client_config(server: &Server, maildirs: &Path) -> PathBuf {
    ProviderCfg::new(server.odmr.port(), USER, PASS, &[DOMAIN], maildir_in(maildirs)).write(server.dir.path())
}

// ----- what is where -----

/// The tokens of the messages in the provider's queue (their envelope senders), with the state
/// of their one recipient.
fn queued(server: &Server) -> BTreeMap<String, String> {
    let q = server.queue();
    let mut out = BTreeMap::new();
    for m in q.as_array().expect("queue json") {
        let sender = m["sender"].as_str().expect("sender");
        let token = sender
            .strip_suffix("@sender.test")
            .unwrap_or_else(|| panic!("unexpected sender {sender:?} in the queue"))
            .to_string();
        let states: Vec<&str> = m["recipients"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["state"].as_str().unwrap())
            .collect();
        assert_eq!(states.len(), 1, "{m}");
        assert!(
            out.insert(token.clone(), states[0].to_string()).is_none(),
            "token {token} twice in the queue"
        );
    }
    out
}

/// A message file in a Maildir, checked against its own X-Body-SHA256.
#[derive(Debug)]
struct Delivered {
    token: String,
    intact: bool,
}

fn parse_delivered(path: &Path) -> Delivered {
    let data = std::fs::read(path).unwrap();
    let (head, body) = match data.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => (&data[..i], &data[i + 4..]),
        None => match data.windows(2).position(|w| w == b"\n\n") {
            Some(i) => (&data[..i], &data[i + 2..]),
            None => (&data[..], &[][..]),
        },
    };
    let head = String::from_utf8_lossy(head);
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    let token = header("X-Crash-Token:").unwrap_or_default();
    let want = header("X-Body-SHA256:").unwrap_or_default();
    let lf: Vec<u8> = {
        let mut v = Vec::with_capacity(body.len());
        let mut i = 0;
        while i < body.len() {
            if body[i] == b'\r' && body.get(i + 1) == Some(&b'\n') {
                i += 1;
                continue;
            }
            v.push(body[i]);
            i += 1;
        }
        v
    };
    let got: String = Sha256::digest(&lf).iter().map(|b| format!("{b:02x}")).collect();
    Delivered {
        intact: !token.is_empty() && got == want,
        token,
    }
}

/// Everything in the Maildir of RCPT: how often each token arrived. Panics on a damaged copy.
fn delivered(maildirs: &Path) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for f in files(&maildirs.join(DOMAIN).join("bob").join("new")) {
        let d = parse_delivered(&f);
        assert!(
            d.intact,
            "damaged message in the Maildir: {d:?} in {}",
            f.display()
        );
        *out.entry(d.token).or_insert(0) += 1;
    }
    out
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

fn new_count(maildirs: &Path) -> usize {
    files(&maildirs.join(DOMAIN).join("bob").join("new")).len()
}

/// Tokens delivered more than once.
fn duplicates(d: &BTreeMap<String, usize>) -> BTreeSet<String> {
    d.iter().filter(|(_, &n)| n > 1).map(|(t, _)| t.clone()).collect()
}

fn keys<V>(m: &BTreeMap<String, V>) -> BTreeSet<String> {
    m.keys().cloned().collect()
}

// ----- 1. the server under inbound load -----

/// Eight smtplib sessions send as fast as the server takes them; after a few hundred 250s the
/// server is killed. Every acknowledged message must be queued after the restart and reach the
/// customer intact, exactly once. A message whose commit finished but whose 250 never reached
/// its sender may be there too: at most one per sending session, since each session has at most
/// one message waiting for its 250. Messages cut off mid-DATA must not show up at all (the
/// commit is atomic, so anything visible is whole).
#[test]
fn server_killed_under_inbound_load_keeps_every_acknowledged_message_intact() {
    let Some(python) = python3() else { return };
    let mut server = Server::start();
    server.account(USER, PASS, &[DOMAIN]);
    const THREADS: u32 = 8;
    const PER_THREAD: u32 = 1000;
    let acked_file = server.dir.path().join("acked");
    let mut load = sender(&python, &server, THREADS, PER_THREAD, true, &acked_file);

    let enough = wait_until(90, || lines(&acked_file).len() >= 300 || !load.running());
    assert!(enough, "not 300 messages acknowledged in 90 s:\n{}", load.all());
    assert!(
        load.running(),
        "the senders finished before the kill:\n{}",
        load.all()
    );
    server.kill();
    let (code, out, err) = load.wait(60, "crash_sender.py");
    assert_eq!(code, Some(0), "crash_sender.py:\n{out}{err}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("sender report");
    assert_eq!(
        report["disconnected"], THREADS,
        "every session should have lost its server mid-load: {report}"
    );
    let acked: BTreeSet<String> = lines(&acked_file).into_iter().collect();
    assert_eq!(acked.len() as u64, report["acked"].as_u64().unwrap());
    assert!(acked.len() < (THREADS * PER_THREAD) as usize);

    server.spawn();
    let queue = queued(&server);
    let q = keys(&queue);
    let lost: Vec<_> = acked.difference(&q).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged messages are gone after the restart: {lost:?}",
        lost.len()
    );
    let unacked: Vec<_> = q.difference(&acked).collect();
    assert!(
        unacked.len() <= THREADS as usize,
        "{} queued messages were never acknowledged; at most one per session ({THREADS}) can be \
         committed with its 250 in flight: {unacked:?}",
        unacked.len()
    );
    assert!(queue.values().all(|s| s == "queued"), "{queue:?}");
    eprintln!(
        "acknowledged {}, queued after the restart {} ({} committed with the 250 in flight)",
        acked.len(),
        q.len(),
        unacked.len()
    );

    // Read everything back through ATRN into a Maildir: each queued message arrives once, whole.
    let maildirs = server.dir.path().join("maildirs");
    let run = client_util::client_once(&client_config(&server, &maildirs));
    assert_eq!(run.code, Some(0), "odmr client --once:\n{}", run.stderr);
    let got = delivered(&maildirs);
    assert_eq!(
        keys(&got),
        q,
        "the Maildir holds other messages than the queue did"
    );
    assert!(duplicates(&got).is_empty(), "{:?}", duplicates(&got));
    assert!(queued(&server).is_empty(), "mail left in the queue");
}

// ----- 3. the client during reception -----

/// `odmr client` is killed while it receives a few hundred messages into a Maildir. What it had
/// made durable stays; the provider keeps (and re-delivers) everything else. The only possible
/// duplicate is the message that was in `new/` while its 250 had not reached the provider; the
/// only litter is that message's or the next one's file in `tmp/`.
#[test]
fn client_killed_during_reception_gets_the_rest_again_and_nothing_is_stuck() {
    let Some(python) = python3() else { return };
    let server = Server::start();
    server.account(USER, PASS, &[DOMAIN]);
    let all = queue_messages(&python, &server, 4, 75);
    let maildirs = server.dir.path().join("maildirs");
    let config = client_config(&server, &maildirs);

    let mut client = client_background(&config);
    let started = wait_until(60, || new_count(&maildirs) >= 60 || !client.running());
    assert!(
        started,
        "no 60 messages in the Maildir within 60 s:\n{}",
        client.all()
    );
    assert!(
        client.running(),
        "the client finished before the kill:\n{}",
        client.all()
    );
    client.kill();
    // The provider notices the dead connection and ends its session (releasing the lease).
    let ended = wait_until(30, || server.log().contains("reversed session finished"));
    assert!(ended, "the provider's session did not end:\n{}", server.log());

    let first = delivered(&maildirs);
    assert!(duplicates(&first).is_empty(), "{first:?}");
    let queue = queued(&server);
    let q = keys(&queue);
    assert!(!q.is_empty(), "the kill came after the last message");
    let m1 = keys(&first);
    let both: BTreeSet<_> = m1.intersection(&q).cloned().collect();
    assert!(
        both.len() <= 1,
        "{} messages are both in the Maildir and still queued; only the one whose 250 was in \
         flight can be: {both:?}",
        both.len()
    );
    let union: BTreeSet<_> = m1.union(&q).cloned().collect();
    assert_eq!(union, all, "messages lost: neither delivered nor queued");
    let tmp = files(&maildirs.join(DOMAIN).join("bob").join("tmp"));
    assert!(
        tmp.len() <= 1,
        "more than the one message in progress in tmp/: {tmp:?}"
    );

    // The domain is not stuck: the next poll is granted and gets the rest.
    let run = client_util::client_once(&config);
    assert_eq!(run.code, Some(0), "second poll:\n{}", run.stderr);
    let last = delivered(&maildirs);
    assert_eq!(keys(&last), all, "not every message reached the Maildir");
    let dups = duplicates(&last);
    assert!(
        dups.is_subset(&both) && last.values().all(|&n| n <= 2),
        "duplicates {dups:?}; the only possible one is {both:?}"
    );
    assert!(queued(&server).is_empty(), "mail left in the queue");
    eprintln!(
        "first poll {} messages, {} left queued, {} duplicate(s)",
        m1.len(),
        q.len(),
        dups.len()
    );
}
