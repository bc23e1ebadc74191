//! Crash safety, proven by killing the processes with SIGKILL at the worst moments: no clean
//! shutdown, no destructor, no flush. Each test then restarts what it killed on the same store
//! (or the same Maildir) and checks, message by message, what the guarantees promise:
//!
//! 1. The server killed under a load of inbound mail keeps every message it acknowledged with
//!    250, intact; the only extras are messages whose 250 was still on its way to the sender.
//! 2. The server killed in the middle of a reversed (ATRN) delivery: every message is delivered
//!    at least once or is still queued; the only duplicates are messages the customer took whose
//!    outcome the server had not yet recorded (it records in batches beside the delivery, at
//!    most [`UNRECORDED_MAX`] behind).
//! 3. The client killed in the middle of receiving: the provider re-delivers whatever the
//!    Maildir did not hold durably; the only possible duplicate is the message whose 250 was on
//!    its way to the provider (which records everything it got before ending the session).
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
    queued_for(server, None)
}

/// [`queued`], only the messages to `domain` if given.
fn queued_for(server: &Server, domain: Option<&str>) -> BTreeMap<String, String> {
    let q = server.queue();
    let mut out = BTreeMap::new();
    for m in q.as_array().expect("queue json") {
        if domain.is_some_and(|d| m["recipients"][0]["domain"] != d) {
            continue;
        }
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

/// Wait until the client has put 50 messages in the Maildir (of the 400 queued), watching
/// closely so that even a fast machine is caught mid-delivery. False if the client ended first.
fn mid_delivery(maildirs: &Path, client: &mut Proc) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if new_count(maildirs) >= 50 {
            return true;
        }
        if !client.running() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("no 50 messages in the Maildir within 60 s:\n{}", client.all());
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
    eprintln!("read back {} messages in {:?}", q.len(), run.elapsed);
    let got = delivered(&maildirs);
    assert_eq!(
        keys(&got),
        q,
        "the Maildir holds other messages than the queue did"
    );
    assert!(duplicates(&got).is_empty(), "{:?}", duplicates(&got));
    assert!(queued(&server).is_empty(), "mail left in the queue");
}

// ----- 2. the server during reversed delivery -----

/// The most messages the server can have delivered and not yet recorded: `UNRECORDED_MAX` in
/// `src/server/deliver.rs` (outcomes queued for its recorder, the batch being written, the
/// message being handed over, and those whose final 250 is on its way: one with DATA, up to the
/// transactions in flight with BDAT).
const UNRECORDED_MAX: usize = 137;

/// Messages delivered before the kill and those still queued after the restart: together they
/// must be all of them, and they may share at most `bound` messages. Why: the customer answers
/// 250 to DATA only once the Maildir holds the message, and the provider records each 250 in
/// order, at most `UNRECORDED_MAX` messages behind (a server killed loses those records, so
/// they are delivered again); a provider that outlives the session records every 250 it read,
/// so then only the message whose 250 was in flight can be both. Returns that overlap.
fn check_split(
    all: &BTreeSet<String>,
    maildir: &BTreeMap<String, usize>,
    queue: &BTreeSet<String>,
    bound: usize,
) -> BTreeSet<String> {
    assert!(
        duplicates(maildir).is_empty(),
        "duplicates before the kill: {maildir:?}"
    );
    let m = keys(maildir);
    assert!(!queue.is_empty(), "the kill came after the last message");
    let both: BTreeSet<_> = m.intersection(queue).cloned().collect();
    assert!(
        both.len() <= bound,
        "{} messages are both delivered and still queued; at most {bound} can be: {both:?}",
        both.len()
    );
    let union: BTreeSet<_> = m.union(queue).cloned().collect();
    let lost: Vec<_> = all.difference(&union).collect();
    assert!(lost.is_empty(), "messages neither delivered nor queued: {lost:?}");
    assert!(
        union.is_subset(all),
        "unknown messages: {:?}",
        union.difference(all)
    );
    both
}

/// After the second delivery: everything arrived, intact, and the only duplicate (if any) is
/// the in-flight message `both`.
fn check_final(all: &BTreeSet<String>, maildir: &BTreeMap<String, usize>, both: &BTreeSet<String>) -> usize {
    assert_eq!(&keys(maildir), all, "not every message reached the Maildir");
    let dups = duplicates(maildir);
    assert!(
        dups.is_subset(both) && maildir.values().all(|&n| n <= 2),
        "duplicates {dups:?}; the only possible one is {both:?}"
    );
    dups.len()
}

/// `odmr lease list --json`.
fn leases(server: &Server) -> Vec<serde_json::Value> {
    let (st, out, err) = server.cli(&["lease", "list", "--json"], None);
    assert_eq!(st, 0, "lease list: {err}");
    serde_json::from_str::<serde_json::Value>(&out)
        .expect("leases json")
        .as_array()
        .unwrap()
        .clone()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The server is killed while `odmr client` receives a few hundred messages into a Maildir.
/// Each message must end up delivered exactly once or still queued; after the restart the next
/// ATRN is granted at once — the lease lives an hour, so only the restarted server's sweep of
/// its own dead sessions' leases can free it — and delivers the rest, with at most the
/// in-flight message twice.
#[test]
fn server_killed_during_reversed_delivery_delivers_each_message_once_or_keeps_it() {
    let Some(python) = python3() else { return };
    let mut server = Server::start_with("", "lease_ttl = \"1h\"");
    server.account(USER, PASS, &[DOMAIN]);
    let all = queue_messages(&python, &server, 4, 100);
    let maildirs = server.dir.path().join("maildirs");

    let mut client = client_background(&client_config(&server, &maildirs));
    assert!(
        mid_delivery(&maildirs, &mut client),
        "the client finished before the kill:\n{}",
        client.all()
    );
    server.kill();
    let (code, out, err) = client.wait(30, "odmr client --once");
    assert_eq!(
        code,
        Some(2),
        "the client must report the broken session:\n{out}{err}"
    );
    // The client lived: the message it was receiving is gone from tmp/, not left as litter.
    let tmp = files(&maildirs.join(DOMAIN).join("bob").join("tmp"));
    assert!(tmp.is_empty(), "{tmp:?}");

    // The dead process's lease is still in the store, for an hour.
    let held = leases(&server);
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0]["domain"], DOMAIN);
    assert!(
        held[0]["expires_in_seconds"].as_i64().unwrap() > 30 * 60,
        "{held:?}"
    );

    server.spawn();
    assert!(
        server
            .log()
            .contains("freed the lease of a dead session of this node"),
        "{}",
        server.log()
    );
    assert!(leases(&server).is_empty(), "{:?}", leases(&server));
    let first = delivered(&maildirs);
    let queue = queued(&server);
    assert!(queue.values().all(|s| s == "queued"), "{queue:?}");
    let both = check_split(&all, &first, &keys(&queue), UNRECORDED_MAX);

    let run = client_util::client_once(&client_config(&server, &maildirs));
    assert_eq!(run.code, Some(0), "the ATRN after the restart:\n{}", run.stderr);
    let dups = check_final(&all, &delivered(&maildirs), &both);
    assert!(queued(&server).is_empty(), "mail left in the queue");
    eprintln!(
        "before the kill {} delivered, {} queued after the restart, {} duplicate(s)",
        first.len(),
        queue.len(),
        dups
    );
}

// ----- 3. the client during reception -----

/// `odmr client` is killed while it receives a few hundred messages into a Maildir. What it had
/// made durable stays; the provider keeps (and re-delivers) everything else. The only possible
/// duplicate is the message that was in `new/` while its 250 had not reached the provider; the
/// only litter is the file of the message being written at the kill, in `tmp/` (where Maildir
/// readers remove stale files).
#[test]
fn client_killed_during_reception_gets_the_rest_again_and_nothing_is_stuck() {
    let Some(python) = python3() else { return };
    let server = Server::start();
    server.account(USER, PASS, &[DOMAIN]);
    let all = queue_messages(&python, &server, 4, 100);
    let maildirs = server.dir.path().join("maildirs");
    let config = client_config(&server, &maildirs);

    let mut client = client_background(&config);
    assert!(
        mid_delivery(&maildirs, &mut client),
        "the client finished before the kill:\n{}",
        client.all()
    );
    client.kill();
    // The provider notices the dead connection and ends its session (releasing the lease).
    let ended = wait_until(30, || server.log().contains("delivery session finished"));
    assert!(ended, "the provider's session did not end:\n{}", server.log());

    let first = delivered(&maildirs);
    let queue = queued(&server);
    let both = check_split(&all, &first, &keys(&queue), 1);
    let tmp = files(&maildirs.join(DOMAIN).join("bob").join("tmp"));
    assert!(
        tmp.len() <= 1,
        "more than the one message in progress in tmp/: {tmp:?}"
    );

    // The domain is not stuck: the next poll is granted and gets the rest.
    let run = client_util::client_once(&config);
    assert_eq!(run.code, Some(0), "second poll:\n{}", run.stderr);
    let dups = check_final(&all, &delivered(&maildirs), &both);
    assert!(queued(&server).is_empty(), "mail left in the queue");
    eprintln!(
        "first poll {} messages, {} left queued, {dups} duplicate(s)",
        first.len(),
        queue.len(),
    );
}

// ----- 4. leases in a fleet -----

/// Two server processes share one store, as two nodes of a fleet would. Node A is killed in the
/// middle of a delivery and stays dead: node B answers the customer's ATRN with 451 while A's
/// lease lives, and delivers once it has expired (never before). Then B holds a live session
/// while A restarts: A's startup sweep must leave B's lease alone (B is alive, though on the
/// same machine), so ATRN for that domain through A still gets 451 until B's session ends.
#[test]
fn a_dead_nodes_lease_blocks_until_it_expires_and_a_restart_never_frees_a_live_one() {
    let Some(python) = python3() else { return };
    let mut a = Server::start_with("", "lease_ttl = \"10s\"");
    a.account(USER, PASS, &[DOMAIN]);
    a.account("beta", "beta-secret", &["example.com"]);
    let b = a.sibling();
    let all = queue_messages(&python, &a, 4, 100);
    let r = common::send_mail(
        a.smtp,
        "x@sender.test",
        &["carol@example.com"],
        "Subject: for beta\n\nheld for beta\n",
    );
    assert!(r.starts_with("250"), "{r}");
    let maildirs = a.dir.path().join("maildirs");

    // A dies mid-delivery.
    let mut client = client_background(&client_config(&a, &maildirs));
    assert!(
        mid_delivery(&maildirs, &mut client),
        "the client finished before the kill:\n{}",
        client.all()
    );
    a.kill();
    let (code, out, err) = client.wait(30, "odmr client --once");
    assert_eq!(code, Some(2), "{out}{err}");
    let held = leases(&b);
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0]["domain"], DOMAIN);
    let expires = held[0]["expires_at_ms"].as_i64().unwrap();
    let first = delivered(&maildirs);
    let both = check_split(&all, &first, &keys(&queued_for(&b, Some(DOMAIN))), UNRECORDED_MAX);

    // Through B: 451 while the lease lives, granted once it has expired.
    let via_b = client_config(&b, &maildirs);
    let mut refusals = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (t0, run, t1) = (now_ms(), client_util::client_once(&via_b), now_ms());
        if run.code == Some(0) {
            assert!(
                t1 >= expires,
                "B was granted the domain while A's lease still had {} ms to live",
                expires - t1
            );
            break;
        }
        assert_eq!(run.code, Some(2), "{}", run.stderr);
        assert!(run.stderr.contains("451"), "ATRN through B: {}", run.stderr);
        assert!(
            t0 < expires,
            "451 after A's lease had expired ({} ms before the ATRN)",
            t0 - expires
        );
        refusals += 1;
        assert!(
            Instant::now() < deadline,
            "B never got the domain: {}",
            run.stderr
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    if refusals == 0 {
        // Only when the machine took the whole lease lifetime to run one poll.
        eprintln!("NOTE: the first ATRN through B came after the lease expired; no 451 to check");
    }
    let dups = check_final(&all, &delivered(&maildirs), &both);
    eprintln!(
        "before the kill {} delivered, {refusals} ATRN(s) refused with 451 while the lease lived, \
         {dups} duplicate(s)",
        first.len()
    );

    // B delivers to a customer that never greets: B holds example.com's lease meanwhile.
    let mut stalled = Proc::spawn(
        Command::new(&python)
            .arg(common::peers_dir().join("odmr_customer.py"))
            .args(["--port", &b.odmr.port().to_string()])
            .args(["--user", "beta", "--password", "beta-secret"])
            .args(["--domains", "example.com", "--no-greeting", "--timeout", "60"]),
    );
    let granted = wait_until(30, || stalled.all().contains("EVENT atrn"));
    assert!(
        granted && stalled.all().contains("EVENT atrn 250"),
        "{}",
        stalled.all()
    );
    let live = leases(&b);
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0]["domain"], "example.com");

    // A restarts on the same machine: B's lease survives its sweep.
    a.spawn();
    let holders = |l: Vec<serde_json::Value>| -> Vec<(String, String)> {
        l.iter()
            .map(|r| (r["domain"].to_string(), r["holder"].to_string()))
            .collect()
    };
    assert_eq!(
        holders(leases(&a)),
        holders(live),
        "A's restart dropped or changed B's live lease"
    );
    assert!(!a.log().contains("freed the lease"), "{}", a.log());
    let beta_maildirs = a.dir.path().join("beta-maildirs");
    let beta = |s: &Server| {
        ProviderCfg::new(
            s.odmr.port(),
            "beta",
            "beta-secret",
            &["example.com"],
            maildir_in(&beta_maildirs),
        )
        .write(s.dir.path())
    };
    let run = client_util::client_once(&beta(&a));
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("451"),
        "ATRN through A while B delivers: {}",
        run.stderr
    );

    // B's customer goes away; B's session ends and releases the lease; A can deliver.
    stalled.kill();
    assert!(
        wait_until(30, || leases(&b).is_empty()),
        "B kept the lease after its session ended: {:?}",
        leases(&b)
    );
    let run = client_util::client_once(&beta(&a));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(files(&beta_maildirs.join("example.com/carol/new")).len(), 1);
    assert!(queued(&a).is_empty(), "mail left in the queue");
}
