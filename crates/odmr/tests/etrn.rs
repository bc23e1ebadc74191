//! ETRN (RFC 1985) end to end, over real sockets: mail held by `odmr server` is released by
//! ETRN on its MX port and delivered over a new connection to the account's fixed destination,
//! a real MTA (Postfix's `smtp-sink`, which dumps each transaction with its exact envelope).
//!
//! The ETRN senders are real clients: Python's smtplib (`peers/etrn_sender.py`: `docmd("ETRN",
//! …)`, authenticated with smtplib's AUTH CRAM-MD5 or not at all), `odmr client --once` with
//! `mode = "etrn"`, and fetchmail (`proto etrn`). Every test checks what reached the sink and
//! what is left in the provider's queue (`odmr queue list --json`).

#[path = "peers/client_util.rs"]
mod client_util;
mod common;
#[path = "peers/interop_util.rs"]
mod interop_util;

use client_util::{client_once, split_received, wait_until, SmtpSink, CUSTOMER};
use common::{send_mail, Line, Server};
use interop_util::{run_timeout, Fetchmail};
use serde_json::{json, Value};

const USER: &str = "acme";
const PASS: &str = "acme-secret";

/// A provider where `acme` owns example.org, sub.example.org and badexample.org (which
/// `@example.org` must not match), and `other` owns example.com.
fn provider() -> Server {
    let s = Server::start();
    s.account(USER, PASS, &["example.org", "sub.example.org", "badexample.org"]);
    s.account("other", "other-secret", &["example.com"]);
    s
}

/// `odmr account set NAME ARGS…`; panics on failure.
fn set(server: &Server, name: &str, args: &[&str]) {
    let mut a = vec!["account", "set", name];
    a.extend(args);
    let (st, out, err) = server.cli(&a, None);
    assert_eq!(st, 0, "account set {args:?}: {out}{err}");
}

/// `odmr account set acme --etrn-destination 127.0.0.1:PORT MORE…`.
fn set_destination(server: &Server, port: u16, more: &[&str]) {
    let dest = format!("127.0.0.1:{port}");
    let mut args = vec!["--etrn-destination", &dest];
    args.extend(more);
    set(server, USER, &args);
}

fn inject(server: &Server, to: &[&str], subject: &str) {
    let body = format!("From: alice@sender.test\nSubject: {subject}\n\nbody of {subject}\n");
    let r = send_mail(server.smtp, "alice@sender.test", to, &body);
    assert!(
        r.starts_with("250"),
        "the provider did not accept the message: {r}"
    );
}

/// Run `peers/etrn_sender.py` against the MX; `None` (test skipped) without python3.
fn etrn(server: &Server, auth: Option<(&str, &str)>, nodes: &[&str]) -> Option<Value> {
    let py = common::peer("python3", "python3")?;
    let script = common::peers_dir().join("etrn_sender.py");
    let port = server.smtp.port().to_string();
    let mut args = vec![script.to_str().unwrap(), port.as_str()];
    if let Some((u, p)) = auth {
        args.extend(["--auth", u, p]);
    }
    args.extend(nodes);
    let run = run_timeout(60, &py, &args, &[]);
    assert_eq!(run.code, Some(0), "etrn_sender.py failed:\n{}", run.all());
    Some(serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", run.stdout)))
}

/// The ETRN replies as (code, text).
fn replies(v: &Value) -> Vec<(i64, String)> {
    v["etrn"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r[0].as_i64().unwrap(), r[1].as_str().unwrap().to_string()))
        .collect()
}

/// (address, state) of every recipient still to deliver in the provider's queue, sorted. (A
/// message stays listed, with its delivered recipients, until all of its recipients are done.)
fn states(server: &Server) -> Vec<(String, String)> {
    server
        .recipient_states()
        .into_iter()
        .filter(|(_, s, _)| s != "delivered")
        .map(|(a, s, _)| (a, s))
        .collect()
}

fn queued(addrs: &[&str]) -> Vec<(String, String)> {
    let mut v: Vec<_> = addrs
        .iter()
        .map(|a| (a.to_string(), "queued".to_string()))
        .collect();
    v.sort();
    v
}

/// Wait for the queue run to finish: the sink holds `n` transactions and the queue `left`.
fn wait_delivered(server: &Server, sink: &SmtpSink, n: usize, left: &[&str]) {
    let done = wait_until(30, || {
        states(server) == queued(left) && sink.try_messages().is_some_and(|m| m.len() >= n)
    });
    assert!(
        done,
        "after ETRN: smtp-sink got {:#?}\nqueue: {:?}\nserver log:\n{}",
        sink.messages(),
        states(server),
        server.log()
    );
    assert_eq!(sink.messages().len(), n, "more transactions than messages");
}

/// Wait until `n` ETRN queue runs have finished (and given their leases back).
fn wait_runs(server: &Server, n: usize) {
    let done = wait_until(30, || {
        server.log().matches("ETRN queue run finished").count() >= n
    });
    assert!(done, "fewer than {n} queue runs finished:\n{}", server.log());
}

/// A TCP port on which nothing listens (bound, then closed).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// 1. Authenticated ETRN (smtplib, AUTH CRAM-MD5 on the MX): 253 with the count of messages,
///    each message reaches smtp-sink once with only the account's recipients, those leave the
///    queue, another customer's recipient stays; the next ETRN finds nothing: 251.
#[test]
fn authenticated_etrn_delivers_to_the_destination_and_drains_the_queue() {
    let Some(sink) = SmtpSink::start(false) else {
        return;
    };
    let server = provider();
    set_destination(&server, sink.port, &[]);
    inject(&server, &["bob@example.org", "carol@example.org"], "one");
    inject(&server, &["dave@example.org", "erin@example.com"], "two");
    inject(&server, &["frank@example.com"], "other's");

    let Some(v) = etrn(&server, Some((USER, PASS)), &["example.org"]) else {
        return;
    };
    assert!(
        v["ehlo"].as_array().unwrap().contains(&json!("etrn")),
        "EHLO does not list ETRN: {v}"
    );
    assert_eq!(v["auth"]["code"], 235, "{v}");
    assert_eq!(
        replies(&v),
        [(
            253,
            "2.0.0 OK, 2 pending messages for node example.org started".to_string()
        )]
    );
    wait_delivered(&server, &sink, 2, &["erin@example.com", "frank@example.com"]);
    wait_runs(&server, 1);
    let got = sink.messages();
    let rcpts: Vec<&Vec<String>> = got.iter().map(|d| &d.rcpts).collect();
    assert!(
        rcpts.contains(&&vec![
            "<bob@example.org>".to_string(),
            "<carol@example.org>".to_string()
        ]) && rcpts.contains(&&vec!["<dave@example.org>".to_string()]),
        "{got:#?}"
    );
    for d in &got {
        assert_eq!(d.mail, "<alice@sender.test>");
        assert_eq!(d.helo, common::HOSTNAME, "the provider itself delivers");
        let (received, rest) = split_received(&d.content, 1);
        assert!(received[0].contains("by odmr.test"), "{received:?}");
        assert!(String::from_utf8_lossy(&rest).contains("body of "), "{d:#?}");
    }

    let Some(v) = etrn(&server, Some((USER, PASS)), &["example.org"]) else {
        return;
    };
    assert_eq!(
        replies(&v),
        [(
            251,
            "2.0.0 OK, no messages waiting for node example.org".to_string()
        )]
    );
    assert_eq!(sink.messages().len(), 2, "the second ETRN delivered something");
}

/// 2. Without AUTH, from an address inside the account's `--etrn-from` network: allowed.
///    `ETRN @example.org` releases example.org and sub.example.org, not badexample.org, and the
///    count covers both domains.
#[test]
fn unauthenticated_etrn_from_an_allowed_network_and_at_node() {
    let Some(sink) = SmtpSink::start(false) else {
        return;
    };
    let server = provider();
    set_destination(&server, sink.port, &["--etrn-from", "127.0.0.0/8"]);
    inject(&server, &["bob@example.org"], "apex");
    inject(&server, &["sue@sub.example.org"], "sub");
    inject(&server, &["bad@badexample.org"], "not a subdomain");

    let Some(v) = etrn(&server, None, &["@example.org"]) else {
        return;
    };
    assert_eq!(
        replies(&v),
        [(
            253,
            "2.0.0 OK, 2 pending messages for node @example.org started".to_string()
        )]
    );
    wait_delivered(&server, &sink, 2, &["bad@badexample.org"]);
    wait_runs(&server, 1);
    let mut rcpts: Vec<String> = sink.messages().iter().flat_map(|d| d.rcpts.clone()).collect();
    rcpts.sort();
    assert_eq!(rcpts, ["<bob@example.org>", "<sue@sub.example.org>"]);

    // The network is the account's own permission: another account's domain stays refused.
    inject(&server, &["x@example.com"], "other's");
    let Some(v) = etrn(&server, None, &["example.com", "badexample.org"]) else {
        return;
    };
    let r = replies(&v);
    assert_eq!(r[0].0, 459, "{r:?}");
    assert_eq!(r[1].0, 253, "{r:?}");
    wait_delivered(&server, &sink, 3, &["x@example.com"]);
}

/// 3. Refused with 459, and nothing moves: no AUTH and no allowed network; AUTH as another
///    account; an unknown domain — all with the same text, so ETRN does not tell who owns a
///    domain. Bad syntax gets 501, and an account without a destination 458.
#[test]
fn etrn_is_refused_459_unless_allowed() {
    let Some(sink) = SmtpSink::start(false) else {
        return;
    };
    let server = provider();
    inject(&server, &["bob@example.org"], "held");
    let Some(v) = etrn(&server, None, &["example.org", "unknown.example", "@example.org"]) else {
        return;
    };
    let r = replies(&v);
    assert_eq!(
        r.iter().map(|x| x.0).collect::<Vec<_>>(),
        [459, 459, 459],
        "{r:?}"
    );
    assert_eq!(
        r[0].1,
        "4.7.1 Node example.org not allowed: not a domain this client may release"
    );
    assert_eq!(
        r[1].1,
        "4.7.1 Node unknown.example not allowed: not a domain this client may release"
    );
    // Authenticated, but as another customer: still 459, same text. A wrong password: 535,
    // and ETRN stays refused.
    set_destination(&server, sink.port, &[]);
    let Some(v) = etrn(&server, Some(("other", "other-secret")), &["example.org"]) else {
        return;
    };
    assert_eq!(v["auth"]["code"], 235);
    assert_eq!(
        replies(&v),
        [(
            459,
            "4.7.1 Node example.org not allowed: not a domain this client may release".to_string()
        )]
    );
    let Some(v) = etrn(&server, Some((USER, "wrong")), &["example.org"]) else {
        return;
    };
    assert_eq!(v["auth"]["code"], 535, "{v}");
    assert_eq!(replies(&v)[0].0, 459);
    // Syntax (RFC 1985 §5): a missing node and a non-FQDN get 501; #queue is refused.
    let Some(v) = etrn(&server, Some((USER, PASS)), &["", "localhost", "#uucp"]) else {
        return;
    };
    let codes: Vec<i64> = replies(&v).iter().map(|x| x.0).collect();
    assert_eq!(codes, [501, 501, 459], "{v}");
    // The account's destination removed: 458, the mail stays.
    set(&server, USER, &["--etrn-destination", "none"]);
    let Some(v) = etrn(&server, Some((USER, PASS)), &["example.org"]) else {
        return;
    };
    let r = replies(&v);
    assert_eq!(r[0].0, 458, "{r:?}");
    assert!(r[0].1.contains("no ETRN destination"), "{r:?}");
    assert!(
        sink.messages().is_empty(),
        "a refused ETRN delivered: {:#?}",
        sink.messages()
    );
    assert_eq!(states(&server), queued(&["bob@example.org"]));
}

/// 4. An unreachable destination (a closed port): 253 (the run starts after the reply), a
///    warning naming the account and domain, and the mail stays queued with its lease given
///    back: once the destination works, the next ETRN delivers.
#[test]
fn unreachable_destination_keeps_the_mail_queued() {
    let Some(sink) = SmtpSink::start(false) else {
        return;
    };
    let server = provider();
    set_destination(&server, closed_port(), &[]);
    inject(&server, &["bob@example.org"], "held");
    let Some(v) = etrn(&server, Some((USER, PASS)), &["example.org"]) else {
        return;
    };
    assert_eq!(replies(&v)[0].0, 253, "{v}");
    assert!(
        wait_until(30, || server.log().contains("destination unreachable")),
        "no warning:\n{}",
        server.log()
    );
    let line = server
        .log()
        .lines()
        .find(|l| l.contains("destination unreachable"))
        .unwrap()
        .to_string();
    assert!(
        line.contains("account=acme") && line.contains("domain=example.org"),
        "{line}"
    );
    let q = server.queue();
    assert_eq!(q.as_array().unwrap().len(), 1, "{q}");
    assert_eq!(states(&server), queued(&["bob@example.org"]));

    // The lease was given back after the failed connection: the next ETRN runs the queue.
    wait_runs(&server, 1);
    set_destination(&server, sink.port, &[]);
    let Some(v) = etrn(&server, Some((USER, PASS)), &["example.org"]) else {
        return;
    };
    assert_eq!(replies(&v)[0].0, 253, "{v}");
    wait_delivered(&server, &sink, 1, &[]);
}

/// 5. One queue run per domain at a time: while an ATRN session holds the domain's lease, ETRN
///    gets 458 and delivers nothing; once that session ends, ETRN works.
#[test]
fn etrn_while_the_domain_is_being_delivered_gets_458() {
    let Some(sink) = SmtpSink::start(false) else {
        return;
    };
    let server = provider();
    set_destination(&server, sink.port, &[]);
    inject(&server, &["bob@example.org"], "held");

    // An ODMR customer takes the lease with ATRN and then says nothing.
    let mut odmr = Line::connect(server.odmr);
    odmr.reply();
    odmr.ask("EHLO customer");
    let r = odmr.ask("AUTH CRAM-MD5");
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let challenge = b64.decode(r.strip_prefix("334 ").unwrap()).unwrap();
    let resp = odmr_proto::sasl::cram_md5::client_response(USER, PASS.as_bytes(), &challenge);
    assert!(odmr.ask(&b64.encode(resp)).starts_with("235"));
    assert!(odmr.ask("ATRN example.org").starts_with("250"));

    let Some(v) = etrn(&server, Some((USER, PASS)), &["example.org", "@example.org"]) else {
        return;
    };
    let r = replies(&v);
    assert_eq!(r.iter().map(|x| x.0).collect::<Vec<_>>(), [458, 458], "{r:?}");
    assert!(r[0].1.contains("delivery already in progress"), "{r:?}");

    drop(odmr);
    let mut last = Value::Null;
    let started = wait_until(30, || {
        last = etrn(&server, Some((USER, PASS)), &["example.org"]).unwrap_or_default();
        replies(&last).first().is_some_and(|r| r.0 == 253)
    });
    assert!(started, "ETRN still refused after the ATRN session ended: {last}");
    wait_delivered(&server, &sink, 1, &[]);
}

/// The client's config for an ETRN provider (our MX port).
fn client_config(dir: &std::path::Path, server: &Server, auth: Option<(&str, &str)>) -> std::path::PathBuf {
    let auth = match auth {
        Some((u, p)) => format!("user = {u:?}\npassword = {p:?}\n"),
        None => String::new(),
    };
    let path = dir.join(format!("client-{}.toml", interop_util::random_u64() % 1_000_000));
    std::fs::write(
        &path,
        format!(
            "hostname = \"{CUSTOMER}\"\n[[provider]]\nname = \"isp\"\nmode = \"etrn\"\nhost = \"127.0.0.1\"\n\
             port = {}\n{auth}domains = [\"example.org\", \"sub.example.org\"]\ntls = \"none\"\ntimeout = \"10s\"\n",
            server.smtp.port()
        ),
    )
    .unwrap();
    path
}

/// 6. `odmr client --once` with `mode = "etrn"` against our server: exit 0 and the mail at
///    smtp-sink; then 1 ("no mail waiting"); 2 for 458 (no destination); 3 when not allowed.
#[test]
fn odmr_client_in_etrn_mode() {
    let Some(sink) = SmtpSink::start(false) else {
        return;
    };
    let server = provider();
    set_destination(&server, sink.port, &[]);
    inject(&server, &["bob@example.org", "sue@sub.example.org"], "one");
    inject(&server, &["ann@sub.example.org"], "two");
    let dir = tempfile::tempdir().unwrap();
    let config = client_config(dir.path(), &server, Some((USER, PASS)));

    let run = client_once(&config);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stderr.contains("ETRN: queue run started"), "{}", run.stderr);
    // Message "one" has a recipient in each domain: each domain's run delivers its own.
    let done = wait_until(30, || server.queue() == json!([]));
    assert!(done, "queue: {}\nlog:\n{}", server.queue(), server.log());
    wait_runs(&server, 2);
    let mut rcpts: Vec<String> = sink.messages().iter().flat_map(|d| d.rcpts.clone()).collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        [
            "<ann@sub.example.org>",
            "<bob@example.org>",
            "<sue@sub.example.org>"
        ],
        "each recipient exactly once"
    );

    let run = client_once(&config);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("no mail waiting"), "{}", run.stderr);

    set(&server, USER, &["--etrn-destination", "none"]);
    inject(&server, &["bob@example.org"], "three");
    let run = client_once(&config);
    assert_eq!(run.code, Some(2), "458 is a temporary failure: {}", run.stderr);
    assert!(run.stderr.contains("458"), "{}", run.stderr);

    let config = client_config(dir.path(), &server, None);
    let run = client_once(&config);
    assert_eq!(
        run.code,
        Some(3),
        "459 is an authorization failure: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("459") && run.stderr.contains("not allowed"),
        "{}",
        run.stderr
    );
    assert_eq!(states(&server), queued(&["bob@example.org"]));
}

/// 7. fetchmail's ETRN client (`proto etrn`, which never authenticates: allowed by address)
///    against our MX: it reports the queue runs (253) and then the empty queue (251); the mail
///    reaches smtp-sink.
#[test]
fn fetchmail_etrn() {
    let Some(fetchmail) = Fetchmail::find() else {
        return;
    };
    let Some(sink) = SmtpSink::start(false) else {
        return;
    };
    let server = provider();
    set_destination(&server, sink.port, &["--etrn-from", "127.0.0.1"]);
    inject(&server, &["bob@example.org"], "one");
    inject(&server, &["sue@sub.example.org"], "two");

    let rc = format!(
        "set no syslog\npoll 127.0.0.1 service {} proto etrn\n    fetchdomains example.org,sub.example.org\n",
        server.smtp.port()
    );
    let run = fetchmail.run(&rc);
    let all = run.all();
    assert!(
        all.contains("ETRN> ETRN example.org") && all.contains("ETRN> ETRN sub.example.org"),
        "{all}"
    );
    assert_eq!(all.matches("ETRN< 253 ").count(), 2, "{all}");
    wait_delivered(&server, &sink, 2, &[]);
    wait_runs(&server, 2);

    let run = fetchmail.run(&rc);
    let all = run.all();
    // fetchmail stops at the first 251 ("no mail"), so it asks for the first domain only.
    assert!(
        all.contains("ETRN< 251 2.0.0 OK, no messages waiting for node example.org"),
        "{all}"
    );
    assert!(!all.contains("ETRN< 253 "), "{all}");
    assert!(all.contains("No messages waiting for example.org"), "{all}");
    assert_eq!(sink.messages().len(), 2);
}
