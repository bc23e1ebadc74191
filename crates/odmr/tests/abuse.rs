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
