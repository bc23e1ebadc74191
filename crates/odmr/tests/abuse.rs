//! Abuse resistance over real sockets: connection limits and AUTH failure throttling.

mod common;

use base64::Engine;
use common::{Line, Server};
use odmr_proto::sasl::cram_md5;
use odmr_proto::sasl::scram::ScramClient;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn start(limits: &str) -> Server {
    // The [limits] table goes after [odmr]; Server::start_with appends to [odmr] last.
    Server::start_with("", &format!("\n[limits]\n{limits}"))
}

fn cram(c: &mut Line, user: &str, pw: &str) -> String {
    let r = c.ask("AUTH CRAM-MD5");
    if !r.starts_with("334 ") {
        return r;
    }
    let challenge = B64.decode(&r[4..]).unwrap();
    c.ask(&B64.encode(cram_md5::client_response(user, pw.as_bytes(), &challenge)))
}

/// AUTH SCRAM-SHA-256 with `pw`: the final reply (235, 535, or a refusal of the command).
fn scram(c: &mut Line, user: &str, pw: &str) -> String {
    let mut client = ScramClient::new(user, pw, "abusetestnonce").unwrap();
    let r = c.ask(&format!(
        "AUTH SCRAM-SHA-256 {}",
        B64.encode(client.client_first())
    ));
    let Some(server_first) = r.strip_prefix("334 ") else {
        return r;
    };
    let client_final = client
        .server_first(&B64.decode(server_first.trim()).unwrap())
        .unwrap();
    let r = c.ask(&B64.encode(client_final));
    if r.starts_with("334 ") {
        // server-final; the empty line completes the exchange.
        return c.ask("");
    }
    r
}

/// SCRAM checks the password proof inside the exchange, after the verifier lookup: a wrong
/// proof counts towards the lockout exactly like a wrong CRAM-MD5 response, so SCRAM is no way
/// around it.
#[test]
fn failed_scram_proofs_count_towards_the_lockout() {
    let s = start("auth_lockout_after = 4\nauth_lockout = \"1h\"");
    s.account("acme", "right", &["example.org"]);
    let mut c = Line::connect(s.odmr);
    c.reply();
    let ehlo = c.ask("EHLO c");
    assert!(ehlo.contains("SCRAM-SHA-256"), "{ehlo}");
    assert!(
        scram(&mut c, "acme", "right").starts_with("235"),
        "the helper works"
    );
    let mut c = Line::connect(s.odmr);
    c.reply();
    c.ask("EHLO c");
    for _ in 0..4 {
        let r = scram(&mut c, "acme", "wrong");
        assert!(r.starts_with("535"), "{r}");
    }
    let mut d = Line::connect(s.odmr);
    d.reply();
    d.ask("EHLO c");
    let r = cram(&mut d, "acme", "right");
    assert!(r.starts_with("454 4.7.0"), "{r}");
    assert!(s.logged("authentication failed (SCRAM proof)"), "{}", s.log());
}

#[test]
fn connections_beyond_the_per_ip_limit_get_421_and_slots_come_back() {
    let s = start("max_connections_per_ip = 2");
    let mut a = Line::connect(s.smtp);
    assert!(a.reply().starts_with("220"));
    let mut b = Line::connect(s.odmr);
    assert!(b.reply().starts_with("220"));
    let mut c = Line::connect(s.smtp);
    let r = c.reply();
    assert!(
        r.starts_with("421 4.7.0") && r.contains("too many connections"),
        "{r}"
    );
    assert_eq!(c.line(), None, "refused connection is closed");
    a.ask("QUIT");
    drop(a);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut d = Line::connect(s.smtp);
    assert!(d.reply().starts_with("220"), "the slot was released");
}

#[test]
fn auth_failures_lock_the_account_out_for_a_while_but_not_before_three() {
    let s = start("auth_lockout_after = 4\nauth_lockout = \"1h\"");
    s.account("acme", "right", &["example.org"]);
    s.account("other", "pw", &["example.net"]);
    let mut c = Line::connect(s.odmr);
    c.reply();
    c.ask("EHLO c");
    for _ in 0..3 {
        assert!(cram(&mut c, "acme", "wrong").starts_with("535"));
    }
    // Still allowed after three failures (RFC 4954 §9), if slower.
    assert!(cram(&mut c, "acme", "wrong").starts_with("535"));
    // Now locked out, even with the right password, from a new connection too.
    let mut d = Line::connect(s.odmr);
    d.reply();
    d.ask("EHLO c");
    let r = cram(&mut d, "acme", "right");
    assert!(r.starts_with("454 4.7.0"), "{r}");
    // The lockout is per IP as well: this address cannot try another account either, but the
    // server keeps serving (EHLO, QUIT) and says why.
    let r = cram(&mut d, "other", "pw");
    assert!(r.starts_with("454"), "{r}");
    assert!(d.ask("NOOP").starts_with("250"));
}

#[test]
fn idle_clients_are_timed_out_on_both_listeners() {
    let s = Server::start_with("command_timeout = \"1s\"", "command_timeout = \"1s\"");
    for addr in [s.smtp, s.odmr] {
        let mut c = Line::connect(addr);
        assert!(c.reply().starts_with("220"));
        // A slow client: half a command, then silence.
        c.send(b"NOO");
        let t = std::time::Instant::now();
        let r = c.line().unwrap_or_default();
        assert!(r.starts_with("421"), "{r}");
        assert_eq!(c.line(), None, "closed after the 421");
        assert!(t.elapsed() < std::time::Duration::from_secs(10));
    }
}

/// Peers that pipeline commands and never read their replies cost a bounded amount of memory:
/// 200 of them, each sending EHLO after EHLO until its socket takes no more, raise the server's
/// peak memory by less than 20 MiB in all (each EHLO costs ~40 times its size in reply, so a
/// server that answers everything it has read before writing would hold megabytes per peer),
/// and each is closed when its write deadline passes.
#[test]
fn peers_that_pipeline_and_never_read_cost_bounded_memory() {
    use std::io::{ErrorKind, Write};
    const PEERS: usize = 200;
    let s = Server::start_quiet(
        "command_timeout = \"3s\"",
        "\n[limits]\nmax_connections = 1000\nmax_connections_per_ip = 1000",
    );
    let before = s.memory_kib("VmRSS");
    let burst = b"EHLO x\r\n".repeat(4096);
    let mut peers = Vec::new();
    for _ in 0..PEERS {
        let c = std::net::TcpStream::connect(s.smtp).unwrap();
        // A small receive buffer, as a peer that never reads has in effect: the server's
        // writes block after a little, instead of after megabytes of loopback buffering.
        let small: libc::c_int = 4096;
        let set = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&c),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&small as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(set, 0, "setsockopt SO_RCVBUF");
        c.set_nonblocking(true).unwrap();
        peers.push(c);
    }
    // Write until no peer's socket takes more: the server has read all it is going to.
    let mut wrote = vec![0usize; PEERS];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut progress = false;
        for (c, n) in peers.iter_mut().zip(wrote.iter_mut()) {
            match c.write(&burst) {
                Ok(k) => {
                    *n += k;
                    progress = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => {}
            }
        }
        if !progress || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let peak = s.memory_kib("VmHWM");
    let grown = peak.saturating_sub(before);
    let sent: usize = wrote.iter().sum();
    assert!(
        grown < 20 * 1024,
        "{PEERS} pipelining peers that never read ({sent} octets of EHLO) raised the peak by {grown} KiB"
    );
    // Each is closed by its write deadline (3 s), which the server logs. Reading the replies
    // here would let the server go on answering the megabytes of EHLO in the sockets' buffers.
    let ended = |log: &str| log.matches("write failed error=timed out").count();
    let all_ended = common::wait_until(20, || ended(&s.log()) >= PEERS);
    assert!(
        all_ended,
        "{} of {PEERS} connections closed by their write deadline; log:\n{}",
        ended(&s.log()),
        s.log().lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
    drop(peers);
}
