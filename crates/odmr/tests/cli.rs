//! The operators' side: config errors that name the key and the fix, account and domain
//! management, and changes that reach a running server without a restart.

mod common;

use base64::Engine;
use common::{cli_with, send_mail, Line, Server};
use odmr_proto::sasl::cram_md5;

fn write_config(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    let p = dir.join("odmr.toml");
    std::fs::write(&p, body).unwrap();
    p
}

fn server_fails(config: &std::path::Path) -> String {
    let (st, _, err) = cli_with(config, &["server"], None);
    assert_eq!(st, 1, "server should refuse to start: {err}");
    err
}

#[test]
fn config_errors_name_the_file_the_key_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let base = format!("hostname = \"h.test\"\n[store]\npath = \"{}\"\n", store.display());

    let cfg = write_config(dir.path(), &format!("{base}[smtp]\nlisen = [\"127.0.0.1:0\"]\n"));
    let err = server_fails(&cfg);
    assert!(
        err.contains("odmr.toml") && err.contains("lisen") && err.contains("listen"),
        "{err}"
    );

    let cfg = write_config(dir.path(), &format!("{base}[odmr]\nlisten = [\"localhost\"]\n"));
    let err = server_fails(&cfg);
    assert!(err.contains("odmr.listen") && err.contains("IP:PORT"), "{err}");

    let cfg = write_config(
        dir.path(),
        &format!("{base}[smtp]\nmax_message_size = \"huge\"\n"),
    );
    let err = server_fails(&cfg);
    assert!(
        err.contains("smtp.max_message_size") && err.contains("50MiB"),
        "{err}"
    );

    // A store that cannot be created: its parent is a regular file.
    std::fs::write(dir.path().join("file"), "x").unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "hostname = \"h.test\"\n[store]\npath = \"{}\"\n[smtp]\nlisten = []\n[odmr]\nlisten = []\n",
            dir.path().join("file/store").display()
        ),
    );
    let err = server_fails(&cfg);
    let fix = "point [store] path at a directory (it is created if missing)";
    assert!(
        err.contains(&format!(
            "store.path = {:?}: {} is a file, not a directory; {fix}",
            dir.path().join("file/store").display().to_string(),
            dir.path().join("file").display()
        )) && !err.contains("writable"),
        "{err}"
    );
    // The store's path itself is a file: the operators' commands say so too.
    let cfg = write_config(
        dir.path(),
        &format!(
            "hostname = \"h.test\"\n[store]\npath = \"{}\"\n",
            dir.path().join("file").display()
        ),
    );
    let (st, _, err) = cli_with(&cfg, &["account", "list"], None);
    assert_eq!(st, 1, "{err}");
    assert!(
        err.contains(&format!(
            "store.path = {:?}: that is a file, not a directory; {fix}",
            dir.path().join("file").display().to_string()
        )) && !err.contains("writable"),
        "{err}"
    );

    let err = server_fails(&dir.path().join("missing.toml"));
    assert!(err.contains("missing.toml") && err.contains("--config"), "{err}");
}

#[test]
fn listener_that_cannot_bind_is_named() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "hostname = \"h.test\"\n[store]\npath = \"{}\"\n[smtp]\nlisten = [\"{addr}\"]\n[odmr]\nlisten = []\n",
            dir.path().join("s").display()
        ),
    );
    let err = server_fails(&cfg);
    assert!(
        err.contains(&format!("smtp.listen: cannot listen on {addr}"))
            && err.contains(
                "another program (or another odmr server) already listens there; stop it or \
                 choose another address"
            )
            && !err.contains("1024"),
        "{err}"
    );

    // The ODMR port is taken: the MX listener, bound first, was never announced, so nothing
    // (a test harness, an operator) is told of an address that closes at once.
    let cfg = write_config(
        dir.path(),
        &format!(
            "hostname = \"h.test\"\n[store]\npath = \"{}\"\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n\
             [odmr]\nlisten = [\"{addr}\"]\n",
            dir.path().join("s").display()
        ),
    );
    let err = server_fails(&cfg);
    assert!(
        err.contains(&format!("odmr.listen: cannot listen on {addr}")) && !err.contains("listening"),
        "{err}"
    );

    // An address this machine does not have (TEST-NET-1, RFC 5737).
    let cfg = write_config(
        dir.path(),
        &format!(
            "hostname = \"h.test\"\n[store]\npath = \"{}\"\n[smtp]\nlisten = [\"192.0.2.1:0\"]\n\
             [odmr]\nlisten = []\n",
            dir.path().join("s").display()
        ),
    );
    let err = server_fails(&cfg);
    assert!(
        err.contains("smtp.listen: cannot listen on 192.0.2.1:0")
            && err.contains("this machine has no such address")
            && !err.contains("1024"),
        "{err}"
    );
}

/// `odmr domain add` and `odmr account add --domain` refuse a malformed domain and say what
/// one looks like.
#[test]
fn an_invalid_domain_says_what_a_domain_looks_like() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "hostname = \"h.test\"\n[store]\npath = \"{}\"\n",
            dir.path().join("store").display()
        ),
    );
    let want = "odmr: invalid domain \"not a domain\": a domain is a name such as \"example.org\": \
                letters, digits and hyphens in labels separated by dots, no spaces\n";
    let add = [
        "account",
        "add",
        "acme",
        "--domain",
        "example.org",
        "--password-stdin",
    ];
    let (st, _, err) = cli_with(&cfg, &add, Some("pw\n"));
    assert_eq!(st, 0, "{err}");
    let (st, _, err) = cli_with(&cfg, &["domain", "add", "acme", "not a domain"], None);
    assert_eq!(st, 1);
    assert!(err.ends_with(want), "{err}");
    let add = [
        "account",
        "add",
        "other",
        "--domain",
        "not a domain",
        "--password-stdin",
    ];
    let (st, _, err) = cli_with(&cfg, &add, Some("pw\n"));
    assert_eq!(st, 1);
    assert!(err.ends_with(want), "{err}");
}

#[test]
fn accounts_and_domains() {
    let s = Server::start();
    s.account("acme", "pw1", &["Example.ORG", "example.com"]);
    let (st, out, _) = s.cli(&["account", "list"], None);
    assert_eq!(st, 0);
    assert!(
        out.contains("acme") && out.contains("example.com, example.org"),
        "{out}"
    );

    // A domain belongs to at most one account.
    let (st, _, err) = s.cli(
        &[
            "account",
            "add",
            "other",
            "--domain",
            "example.org",
            "--password-stdin",
        ],
        Some("x\n"),
    );
    assert_eq!(st, 1);
    assert!(err.contains("example.org") && err.contains("acme"), "{err}");
    let (st, _, err) = s.cli(&["domain", "add", "acme", "example.com"], None);
    assert_eq!(st, 1, "{err}");

    // No password on stdin is an error that says how to give one, with the command it was.
    let (st, _, err) = s.cli(
        &["account", "add", "nopw", "--domain", "n.test", "--password-stdin"],
        Some(""),
    );
    assert_eq!(st, 1);
    assert!(
        err.contains("standard input")
            && err.contains("| odmr account add nopw --domain n.test --password-stdin`"),
        "{err}"
    );
    let (st, _, err) = s.cli(&["account", "passwd", "acme", "--password-stdin"], Some("\n"));
    assert_eq!(st, 1);
    assert!(
        err.contains("| odmr account passwd acme --password-stdin`") && !err.contains("account add"),
        "{err}"
    );
    assert!(
        cram_login(&s, "acme", "pw1").starts_with("235"),
        "the password changed"
    );

    // The password is not stored in plain text.
    let db = std::fs::read(s.dir.path().join("store/odmr.db")).unwrap();
    let wal = std::fs::read(s.dir.path().join("store/odmr.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(
            !bytes.windows(3).any(|w| w == b"pw1"),
            "plain-text password in the store"
        );
    }

    let (st, out, _) = s.cli(&["account", "list", "--json"], None);
    assert_eq!(st, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["domains"], serde_json::json!(["example.com", "example.org"]));

    assert_eq!(s.cli(&["domain", "remove", "example.com"], None).0, 0);
    assert_eq!(s.cli(&["domain", "add", "acme", "example.net"], None).0, 0);
    let (_, out, _) = s.cli(&["account", "list"], None);
    assert!(
        out.contains("example.net, example.org") && !out.contains("example.com"),
        "{out}"
    );

    assert_eq!(s.cli(&["account", "remove", "acme"], None).0, 0);
    let (st, _, err) = s.cli(&["account", "remove", "acme"], None);
    assert_eq!(st, 1);
    assert!(err.contains("acme"), "{err}");
    let (_, out, _) = s.cli(&["account", "list"], None);
    assert!(out.contains("no accounts"), "{out}");
}

/// Runs `odmr ARGS --config …` on a pseudo-terminal through `tests/peers/pty_run.py`, which
/// follows `steps` (expect a text, wait for echo off, type); returns its report.
fn on_terminal(
    py: &std::path::Path,
    s: &Server,
    args: &[&str],
    steps: serde_json::Value,
) -> serde_json::Value {
    let out = std::process::Command::new("timeout")
        .args(["--kill-after=5", "90"])
        .arg(py)
        .arg(common::peers_dir().join("pty_run.py"))
        .arg(steps.to_string())
        .arg(common::BIN)
        .args(args)
        .arg("--config")
        .arg(&s.config)
        .output()
        .expect("run pty_run.py");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("pty_run.py: {e}: {text}{}", String::from_utf8_lossy(&out.stderr)))
}

/// `--password-stdin` when stdin is a terminal: prompted for as `passwd` does, on stderr, read
/// without echo, and asked twice; a mismatch changes nothing. Run on a real pseudo-terminal:
/// an echoed password shows in what the terminal printed, a missing prompt is waited for in
/// vain, and the login afterwards proves which password was stored.
#[test]
fn password_stdin_on_a_terminal_is_prompted_for_twice_without_echo() {
    let Some(py) = common::peer("python3", "python3") else {
        return;
    };
    let s = Server::start();
    s.account("acme", "old-pw", &["example.org"]);
    const TYPED: &str = "Typed-Secret-42";
    let twice = |first: &str, second: &str, name: &str| {
        serde_json::json!([
            ["expect", format!("Password for {name}: ")],
            ["noecho"],
            ["type", format!("{first}\r")],
            ["expect", "Retype password: "],
            ["noecho"],
            ["type", format!("{second}\r")],
        ])
    };

    let r = on_terminal(
        &py,
        &s,
        &["account", "passwd", "acme", "--password-stdin"],
        twice(TYPED, TYPED, "acme"),
    );
    let shown = r["output"].as_str().unwrap();
    assert_eq!(r["failed"], serde_json::Value::Null, "a prompt never came: {r}");
    assert!(!shown.contains(TYPED), "the password was echoed: {shown:?}");
    assert_eq!(r["echo_off"], serde_json::json!([true, true]), "{r}");
    assert_eq!(r["status"], 0, "{r}");
    assert!(shown.contains("password of acme changed"), "{shown:?}");
    assert!(cram_login(&s, "acme", TYPED).starts_with("235"));
    assert!(cram_login(&s, "acme", "old-pw").starts_with("535"));

    // A slip on the second try: refused, and the password stays.
    let r = on_terminal(
        &py,
        &s,
        &["account", "passwd", "acme", "--password-stdin"],
        twice("Other-Secret-1", "Other-Secret-2", "acme"),
    );
    let shown = r["output"].as_str().unwrap();
    assert_eq!(r["failed"], serde_json::Value::Null, "{r}");
    assert_eq!(r["status"], 1, "{r}");
    assert!(
        shown.contains("do not match") && !shown.contains("Other-Secret"),
        "{shown:?}"
    );
    assert!(cram_login(&s, "acme", TYPED).starts_with("235"));

    // `account add` asks the same way.
    let r = on_terminal(
        &py,
        &s,
        &[
            "account",
            "add",
            "beta",
            "--domain",
            "beta.test",
            "--password-stdin",
        ],
        twice("Beta-Secret-7", "Beta-Secret-7", "beta"),
    );
    let shown = r["output"].as_str().unwrap();
    assert_eq!(
        (r["failed"].clone(), r["status"].clone()),
        (serde_json::Value::Null, 0.into()),
        "{r}"
    );
    assert!(!shown.contains("Beta-Secret-7"), "{shown:?}");
    assert!(cram_login(&s, "beta", "Beta-Secret-7").starts_with("235"));
}

fn cram_login(s: &Server, user: &str, pw: &str) -> String {
    cram_session(s, user, pw).1
}

/// An ODMR session after AUTH CRAM-MD5, and the AUTH reply.
fn cram_session(s: &Server, user: &str, pw: &str) -> (Line, String) {
    let mut c = Line::connect(s.odmr);
    c.reply();
    c.ask("EHLO client");
    let r = c.ask("AUTH CRAM-MD5");
    let challenge = base64::engine::general_purpose::STANDARD.decode(&r[4..]).unwrap();
    let resp = cram_md5::client_response(user, pw.as_bytes(), &challenge);
    let r = c.ask(&base64::engine::general_purpose::STANDARD.encode(resp));
    (c, r)
}

#[test]
fn lease_list_shows_the_domains_being_delivered() {
    let s = Server::start();
    s.account("acme", "pw", &["example.org"]);
    let (st, out, _) = s.cli(&["lease", "list"], None);
    assert_eq!(st, 0);
    assert!(out.contains("no domain is being delivered"), "{out}");
    assert!(send_mail(
        s.smtp,
        "a@sender.test",
        &["bob@example.org"],
        "Subject: x\n\nhi\n"
    )
    .starts_with("250"));
    // A customer that got its 250 to ATRN and has not greeted yet: the lease is held.
    let (mut c, r) = cram_session(&s, "acme", "pw");
    assert!(r.starts_with("235"), "{r}");
    assert!(c.ask("ATRN example.org").starts_with("250"));
    let (st, out, _) = s.cli(&["lease", "list"], None);
    assert_eq!(st, 0);
    let row = out
        .lines()
        .find(|l| l.starts_with("example.org"))
        .unwrap_or_else(|| panic!("{out}"));
    // DOMAIN, the holder (host/pid/session, as the README says), then the time to expiry.
    let words: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(words.len(), 5, "{out}");
    assert!(row.trim_end().ends_with(" s"), "{out}");
    let holder = words[1];
    let parts: Vec<&str> = holder.split('/').collect();
    assert!(
        parts.len() == 3 && !parts[0].is_empty() && parts[1].parse::<u32>().is_ok() && parts[2].len() == 12,
        "holder {holder:?} is not host/pid/session: {out}"
    );
    let (_, json, _) = s.cli(&["lease", "list", "--json"], None);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v[0]["domain"], "example.org");
    let left = v[0]["expires_in_seconds"].as_i64().unwrap();
    assert!(left > 0 && left <= 60, "{v}");
    assert_eq!(v[0]["holder"], holder, "{v}");
    // The session ends: the lease goes with it.
    drop(c);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, json, _) = s.cli(&["lease", "list", "--json"], None);
        if json.trim() == "[]" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "lease still held: {json}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn changes_reach_the_running_server_without_restart() {
    let s = Server::start();
    s.account("acme", "old", &["example.org"]);

    let mut c = Line::connect(s.smtp);
    c.reply();
    c.ask("EHLO c");
    c.ask("MAIL FROM:<a@b.test>");
    assert!(c.ask("RCPT TO:<x@new.test>").starts_with("550 5.7.1"));
    // The MX reuses a recipient lookup for `smtp.lookup_cache` (1 s by default): a change
    // reaches it within that time, in the same session.
    assert_eq!(s.cli(&["domain", "add", "acme", "new.test"], None).0, 0);
    until_reply(&mut c, "RCPT TO:<x@new.test>", "250");
    assert_eq!(s.cli(&["domain", "remove", "new.test"], None).0, 0);
    until_reply(&mut c, "RCPT TO:<y@new.test>", "550 5.7.1");

    assert!(cram_login(&s, "acme", "old").starts_with("235"));
    assert_eq!(
        s.cli(&["account", "passwd", "acme", "--password-stdin"], Some("new\n"))
            .0,
        0
    );
    assert!(cram_login(&s, "acme", "old").starts_with("535"));
    assert!(cram_login(&s, "acme", "new").starts_with("235"));
}

/// Asks `command` every 100 ms until the reply starts with `want` (at most 10 s; the lookup
/// cache holds an answer for 1 s).
fn until_reply(c: &mut Line, command: &str, want: &str) {
    let mut r = c.ask(command);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !r.starts_with(want) {
        assert!(std::time::Instant::now() < deadline, "{command}: still {r}");
        std::thread::sleep(std::time::Duration::from_millis(100));
        r = c.ask(command);
    }
}

#[test]
fn queue_list_shows_messages_and_recipients() {
    let s = Server::start();
    s.account("acme", "pw", &["example.org"]);
    let (_, out, _) = s.cli(&["queue", "list"], None);
    assert!(out.contains("queue is empty"), "{out}");
    assert!(send_mail(
        s.smtp,
        "alice@sender.test",
        &["bob@example.org"],
        "Subject: x\n\nhi\n"
    )
    .starts_with("250"));
    let (st, out, _) = s.cli(&["queue", "list"], None);
    assert_eq!(st, 0);
    assert!(
        out.contains("alice@sender.test") && out.contains("queued") && out.contains("bob@example.org"),
        "{out}"
    );
    let q = s.queue();
    let m = &q[0];
    assert_eq!(m["sender"], "alice@sender.test");
    assert!(m["size"].as_u64().unwrap() > 10);
    assert!(m["age_seconds"].as_i64().unwrap() >= 0);
    assert_eq!(m["recipients"][0]["state"], "queued");
    assert!(m["id"].as_i64().is_some());
}

/// `odmr account set NAME --etrn-destination HOST:PORT --etrn-from CIDR`: inputs are checked
/// with errors that say what to fix, options not given keep their value, `none` clears, and
/// `account list` shows the result.
#[test]
fn etrn_settings_are_validated_kept_cleared_and_listed() {
    let s = Server::start();
    s.account("acme", "pw", &["example.org"]);
    for (args, words) in [
        (
            vec!["--etrn-destination", "mail.example.org"],
            vec!["no port", "HOST:PORT"],
        ),
        (
            vec!["--etrn-destination", "mail.example.org:0"],
            vec!["not a port", "HOST:PORT"],
        ),
        (
            vec!["--etrn-destination", "mail.example.org:99999"],
            vec!["not a port"],
        ),
        (
            vec!["--etrn-destination", "bad host:25"],
            vec!["not a host name", "HOST:PORT"],
        ),
        (vec!["--etrn-destination", "[::1:25"], vec!["not a host name"]),
        (vec!["--etrn-from", "192.0.2.0/33"], vec!["not a network", "CIDR"]),
        (vec!["--etrn-from", "somewhere"], vec!["not a network"]),
        (vec![], vec!["nothing to set", "--etrn-destination"]),
    ] {
        let mut a = vec!["account", "set", "acme"];
        a.extend(&args);
        let (st, _, err) = s.cli(&a, None);
        assert_eq!(st, 1, "{args:?} accepted");
        for w in words {
            assert!(err.contains(w), "{args:?}: {err}");
        }
    }
    let (st, _, err) = s.cli(
        &["account", "set", "ghost", "--etrn-destination", "h.example:25"],
        None,
    );
    assert_eq!(st, 1);
    assert!(err.contains("ghost") && err.contains("account list"), "{err}");

    let (st, out, err) = s.cli(
        &[
            "account",
            "set",
            "acme",
            "--etrn-destination",
            "Mail.Example.ORG:2525",
        ],
        None,
    );
    assert_eq!(st, 0, "{err}");
    assert!(out.contains("mail.example.org:2525"), "{out}");
    // Only the networks change; a single address becomes a /32.
    let (st, _, err) = s.cli(
        &[
            "account",
            "set",
            "acme",
            "--etrn-from",
            "192.0.2.0/24",
            "--etrn-from",
            "2001:db8::7",
        ],
        None,
    );
    assert_eq!(st, 0, "{err}");
    let (_, out, _) = s.cli(&["account", "list"], None);
    assert!(out.contains("ETRN"), "{out}");
    assert!(
        out.contains("mail.example.org:2525 (without AUTH from 192.0.2.0/24, 2001:db8::7/128)"),
        "{out}"
    );
    let (_, out, _) = s.cli(&["account", "list", "--json"], None);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["etrn_destination"], "mail.example.org:2525");
    assert_eq!(
        v[0]["etrn_from"],
        serde_json::json!(["192.0.2.0/24", "2001:db8::7/128"])
    );

    assert_eq!(
        s.cli(&["account", "set", "acme", "--etrn-from", "none"], None).0,
        0
    );
    let (_, out, _) = s.cli(&["account", "list"], None);
    assert!(
        out.contains("mail.example.org:2525") && !out.contains("192.0.2.0"),
        "{out}"
    );
    assert_eq!(
        s.cli(
            &[
                "account",
                "set",
                "acme",
                "--etrn-destination",
                "[2001:db8::25]:25"
            ],
            None
        )
        .0,
        0
    );
    let (_, out, _) = s.cli(&["account", "list"], None);
    assert!(out.contains("[2001:db8::25]:25"), "{out}");
    assert_eq!(
        s.cli(&["account", "set", "acme", "--etrn-destination", "none"], None)
            .0,
        0
    );
    let (_, out, _) = s.cli(&["account", "list", "--json"], None);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["etrn_destination"], serde_json::Value::Null);
}
