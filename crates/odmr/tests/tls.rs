//! TLS end to end, over real sockets on 127.0.0.1, against real peers: STARTTLS on the MX (swaks,
//! Python's smtplib), implicit TLS on the ODMR port (fetchmail `ssl`), `odmr client` in its three
//! TLS modes with good and bad certificates, certificate reload on SIGHUP, the STARTTLS
//! command-injection defence, `require_tls`, and STARTTLS on the connections the provider opens
//! (`smtp.etrn_tls`, `bounce.relay_tls`) to an aiosmtpd destination
//! (`peers/tls_destination.py`) and smtp-sink.
//!
//! The certificates are made here with rcgen: a test CA, leaves it signed for "localhost" and
//! 127.0.0.1, an expired leaf, a leaf for another name, and an unrelated CA. Every peer verifies
//! certificates (the Python peer with OpenSSL, fetchmail with `sslcertck`, `odmr client` with
//! rustls), so a certificate the server presents wrongly fails the test.

#[path = "peers/client_util.rs"]
mod client_util;
mod common;
#[path = "peers/interop_util.rs"]
mod interop_util;

use client_util::{
    client_once, python_peer, split_received, states, Dumped, Once, PyPeer, SmtpSink, CUSTOMER,
};
use common::{send_mail, wait_until, Line, Server};
use interop_util::{random_u64, run_timeout, swaks, Fetchmail, Run};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    SerialNumber,
};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

const USER: &str = "acme";
const PASSWORD: &str = "acme-secret";
const DOMAIN: &str = "a.example";

// ----- certificates -----

/// A leaf certificate: PEM of the certificate and of its key, and the DER the server presents.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl Leaf {
    /// Write `stem.crt` and `stem.key` into `dir`.
    fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let (c, k) = (dir.join(format!("{stem}.crt")), dir.join(format!("{stem}.key")));
        std::fs::write(&c, &self.cert_pem).unwrap();
        std::fs::write(&k, &self.key_pem).unwrap();
        (c, k)
    }
}

/// The test PKI, written into its own tempdir.
struct Pki {
    _dir: tempfile::TempDir,
    /// The CA that signed every leaf below (PEM file).
    ca: PathBuf,
    /// A CA that signed nothing we use.
    other_ca: PathBuf,
    /// "localhost" + 127.0.0.1, valid now.
    good: Leaf,
    /// The same names, another key and serial: what a renewal looks like.
    second: Leaf,
    /// The same names, expired in 2001.
    expired: Leaf,
    /// Valid now, but only for "elsewhere.test".
    wrong_name: Leaf,
}

fn make_ca(cn: &str) -> (rcgen::Certificate, KeyPair) {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, cn);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.serial_number = Some(SerialNumber::from(random_u64() >> 1));
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    (cert, key)
}

fn make_leaf(names: &[&str], cn: &str, expired: bool, ca: &(rcgen::Certificate, KeyPair)) -> Leaf {
    let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.serial_number = Some(SerialNumber::from(random_u64() >> 1));
    if expired {
        p.not_before = rcgen::date_time_ymd(2000, 1, 1);
        p.not_after = rcgen::date_time_ymd(2001, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.0, &ca.1).unwrap();
    Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().to_vec(),
    }
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = make_ca("odmr test CA");
        let other = make_ca("an unrelated CA");
        let local = ["localhost", "127.0.0.1"];
        let pki = Pki {
            ca: dir.path().join("ca.pem"),
            other_ca: dir.path().join("other-ca.pem"),
            good: make_leaf(&local, "localhost (A)", false, &ca),
            second: make_leaf(&local, "localhost (B)", false, &ca),
            expired: make_leaf(&local, "localhost (expired)", true, &ca),
            wrong_name: make_leaf(&["elsewhere.test"], "elsewhere.test", false, &ca),
            _dir: dir,
        };
        std::fs::write(&pki.ca, ca.0.pem()).unwrap();
        std::fs::write(&pki.other_ca, other.0.pem()).unwrap();
        assert_ne!(pki.good.der, pki.second.der);
        pki
    }
}

// ----- the server -----

/// An `odmr server` with `[tls]` (certificate files in their own directory, so a test can
/// replace them) and an implicit-TLS ODMR listener.
struct TlsServer {
    server: Server,
    /// The implicit-TLS ODMR listener.
    odmr_tls: SocketAddr,
    cert: PathBuf,
    key: PathBuf,
    _files: tempfile::TempDir,
}

impl TlsServer {
    /// `odmr_extra`: more lines for `[odmr]` (e.g. `require_tls = true`).
    fn start(leaf: &Leaf, odmr_extra: &str) -> TlsServer {
        let files = tempfile::tempdir().unwrap();
        let (cert, key) = leaf.write(files.path(), "server");
        let server = Server::start_with(
            "",
            &format!(
                "listen_tls = [\"127.0.0.1:0\"]\n{odmr_extra}\n[tls]\ncert = {:?}\nkey = {:?}\n",
                cert.display().to_string(),
                key.display().to_string()
            ),
        );
        server.account(USER, PASSWORD, &[DOMAIN]);
        let odmr_tls = listening(&server, "odmr-tls");
        TlsServer {
            server,
            odmr_tls,
            cert,
            key,
            _files: files,
        }
    }
}

/// A plain server (no `[tls]`) with the test account.
fn plain_server() -> Server {
    let server = Server::start();
    server.account(USER, PASSWORD, &[DOMAIN]);
    server
}

/// The address the server logged for listener `kind` (`listening kind=… addr=…`).
fn listening(server: &Server, kind: &str) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = server.log();
        let found = log.lines().filter(|l| l.contains("listening")).find_map(|l| {
            let word = |key: &str| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(key))
                    .map(|v| v.trim_matches('"').to_string())
            };
            (word("kind=")? == kind).then(|| word("addr="))?
        });
        if let Some(addr) = found {
            return addr.parse().expect("listening address");
        }
        assert!(
            Instant::now() < deadline,
            "no `listening kind={kind}` in the server log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pid of the `odmr server` process started by this test process for `server` (the
/// harness does not expose it): our child whose command line names its config file.
fn server_pid(server: &Server) -> u32 {
    let me = std::process::id().to_string();
    let config = server.config.display().to_string();
    for entry in std::fs::read_dir("/proc").unwrap().map_while(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !(args.iter().any(|a| a == "server") && args.contains(&config)) {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1));
        if ppid == Some(me.as_str()) {
            return pid;
        }
    }
    panic!("no odmr server process for {config}");
}

/// SIGHUP to the server process `pid`: reload the certificate.
fn sighup(pid: u32) {
    let st = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

fn wait_log(server: &Server, secs: u64, what: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if server.log().contains(what) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

// ----- what smtp-sink received -----

/// The protocol a Received: field names after `with` (ESMTP, ESMTPS, …).
fn with_protocol(field: &str) -> String {
    let words: Vec<&str> = field.split_whitespace().collect();
    let i = words
        .iter()
        .position(|w| *w == "with")
        .unwrap_or_else(|| panic!("no `with` in {field:?}"));
    words[i + 1].trim_end_matches(';').to_string()
}

// ----- odmr client -----

/// Write a client config: one provider, our test account, delivering into `sink_port`.
/// `tls`: the `tls =` value, or `None` to leave the key out (the default, starttls); `extra`:
/// more keys for the `[[provider]]` table.
fn client_config(
    dir: &Path,
    host: &str,
    port: u16,
    tls: Option<&str>,
    ca: Option<&Path>,
    extra: &str,
    sink_port: u16,
) -> PathBuf {
    let path = dir.join(format!("client-{}.toml", random_u64() % 1_000_000));
    let tls = tls.map(|t| format!("tls = {t:?}\n")).unwrap_or_default();
    let ca = ca
        .map(|c| format!("ca_file = {:?}\n", c.display().to_string()))
        .unwrap_or_default();
    std::fs::write(
        &path,
        format!(
            "hostname = \"{CUSTOMER}\"\n[[provider]]\nname = \"isp\"\nhost = {host:?}\nport = {port}\n\
             user = \"{USER}\"\npassword = \"{PASSWORD}\"\ndomains = [\"{DOMAIN}\"]\n{tls}{ca}{extra}\
             interval = \"1s\"\ntimeout = \"5s\"\n\
             [provider.deliver]\nsmtp = \"127.0.0.1:{sink_port}\"\n"
        ),
    )
    .unwrap();
    path
}

// ----- the Python/OpenSSL peer -----

/// `tls_peer.py repl CA`: named connections driven one JSON command at a time; OpenSSL verifies
/// the server's certificate against the test CA and the name "localhost".
struct Py {
    child: Child,
    stdin: Option<ChildStdin>,
    out: BufReader<ChildStdout>,
}

impl Py {
    /// `None` (test skipped) when python3 is not installed.
    fn start(ca: &Path) -> Option<Py> {
        let python = common::peer("python3", "python3")?;
        let mut child = python_peer(&python, "tls_peer.py")
            .arg("repl")
            .arg(ca)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tls_peer.py");
        let stdin = child.stdin.take();
        let out = BufReader::new(child.stdout.take().unwrap());
        Some(Py { child, stdin, out })
    }

    fn call(&mut self, cmd: Value) -> Result<Value, String> {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{cmd}").expect("write to tls_peer.py");
        stdin.flush().unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).expect("read from tls_peer.py");
        assert!(!line.is_empty(), "tls_peer.py ended (or was killed) during {cmd}");
        let v: Value = serde_json::from_str(&line).expect("tls_peer.py answers JSON");
        match v.get("error") {
            Some(e) => Err(e.as_str().unwrap_or_default().to_string()),
            None => Ok(v["ok"].clone()),
        }
    }

    fn ok(&mut self, cmd: Value) -> Value {
        let c = cmd.to_string();
        self.call(cmd).unwrap_or_else(|e| panic!("{c}: {e}"))
    }

    fn connect(&mut self, name: &str, addr: SocketAddr, implicit: bool) -> Value {
        self.ok(json!(["connect", name, addr.port(), implicit]))
    }
    fn reply(&mut self, name: &str) -> String {
        self.ok(json!(["reply", name])).as_str().unwrap().to_string()
    }
    fn ask(&mut self, name: &str, line: &str) -> String {
        self.ok(json!(["ask", name, line])).as_str().unwrap().to_string()
    }
    fn send(&mut self, name: &str, text: &str) {
        self.ok(json!(["send", name, text]));
    }
    /// The TLS handshake; returns the server's certificate (DER).
    fn starttls(&mut self, name: &str) -> Vec<u8> {
        let hex = self.ok(json!(["starttls", name]));
        unhex(hex.as_str().unwrap())
    }
    /// Read until the connection ends: (what came, how it ended).
    fn drain(&mut self, name: &str) -> (String, String) {
        let v = self.ok(json!(["drain", name]));
        (
            v["data"].as_str().unwrap().to_string(),
            v["end"].as_str().unwrap().to_string(),
        )
    }
    fn cram(&mut self, name: &str, user: &str, password: &str) -> String {
        self.ok(json!(["cram", name, user, password]))
            .as_str()
            .unwrap()
            .to_string()
    }
}

impl Drop for Py {
    fn drop(&mut self) {
        // EOF on its stdin ends the script.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Whether a multi-line EHLO reply lists `keyword` (alone or with parameters).
fn ehlo_lists(reply: &str, keyword: &str) -> bool {
    reply
        .lines()
        .filter_map(|l| l.get(4..))
        .any(|k| k == keyword || k.starts_with(&format!("{keyword} ")))
}

// ----- fetchmail -----

/// fetchmail `ssl sslcertck sslcertfile CA` polling `localhost` on `port` (implicit TLS),
/// relaying into `sink`; under `timeout 60`, with its own FETCHMAILHOME and pidfile. Returns
/// the run and how long it took.
fn fetchmail_ssl(port: u16, ca: &Path, sink: &SmtpSink) -> Option<(Run, Duration)> {
    let fetchmail = Fetchmail::find()?;
    let rc = format!(
        "set no syslog\n\
         poll localhost service {port} proto odmr\n    \
             user \"{USER}\" password \"{PASSWORD}\"\n    \
             fetchdomains {DOMAIN}\n    \
             smtphost 127.0.0.1/{sink}\n    \
             ssl sslcertck sslcertfile \"{ca}\"\n",
        sink = sink.port,
        ca = ca.display(),
    );
    let start = Instant::now();
    let run = fetchmail.run(&rc);
    Some((run, start.elapsed()))
}

// ----- messages -----

/// A multi-line message with '.'-leading lines and a lone '.', LF line ends, about `lines`
/// body lines long.
fn message(n: usize, lines: usize) -> String {
    let mut m = format!(
        "From: Alice <alice@sender.test>\nTo: u{n}@{DOMAIN}\nSubject: TLS message {n}\n\
         Message-ID: <tls.{n}.{}@sender.test>\n\nFirst line of message {n}.\n\
         .a line starting with a dot\n..two dots\n.\n(a lone dot above)\n",
        random_u64()
    );
    for i in 0..lines {
        match i % 7 {
            0 => m.push_str(&format!(".{i} dotted\n")),
            3 => m.push('\n'),
            _ => m.push_str(&format!("line {i} of message {n}: {}\n", "x".repeat(i % 90))),
        }
    }
    m.push_str("last line\n");
    m
}

fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert!(
        got == want,
        "{what}: not byte-exact\n--- got ---\n{}\n--- want ---\n{}",
        String::from_utf8_lossy(got),
        String::from_utf8_lossy(want)
    );
}

// ----- the tests -----

/// 1. swaks `--tls` against STARTTLS on the MX: TLS starts, the EHLO after it no longer offers
///    STARTTLS, the message is queued, and the provider's Received: field says ESMTPS. (It is
///    then fetched with `tls = "none"`, so the only ESMTPS in the delivered message is the MX's.)
#[test]
fn swaks_starttls_on_the_mx_queues_with_esmtps() {
    let Some(sink) = SmtpSink::start(false) else {
        return;
    };
    let pki = Pki::new();
    let ts = TlsServer::start(&pki.good, "");
    let server = &ts.server;
    let smtp = server.smtp.to_string();
    let Some(run) = swaks(&[
        "--server",
        &smtp,
        "--tls",
        "--ehlo",
        "sender.test",
        "--from",
        "alice@sender.test",
        "--to",
        &format!("u1@{DOMAIN}"),
        "--header",
        "Subject: swaks over STARTTLS",
        "--body",
        "hello over TLS",
    ]) else {
        return;
    };
    let all = run.all();
    assert_eq!(run.code, Some(0), "swaks:\n{all}");
    assert!(all.contains("TLS started"), "swaks did not start TLS:\n{all}");
    // swaks marks what it sent and received inside TLS with `~>` and `<~`.
    let tls_replies: Vec<&str> = all.lines().filter_map(|l| l.strip_prefix("<~  ")).collect();
    assert!(
        tls_replies
            .iter()
            .any(|l| l.starts_with("250-") || l.starts_with("250 ")),
        "no EHLO reply inside TLS:\n{all}"
    );
    assert!(
        !tls_replies.iter().any(|l| l.contains("STARTTLS")),
        "the EHLO reply inside TLS still offers STARTTLS:\n{all}"
    );
    assert!(
        all.lines().any(|l| l == " ~> ."),
        "the message was not sent inside TLS:\n{all}"
    );
    assert_eq!(states(server), vec![(format!("u1@{DOMAIN}"), "queued".into())]);

    let dir = tempfile::tempdir().unwrap();
    let cfg = client_config(
        dir.path(),
        "127.0.0.1",
        server.odmr.port(),
        Some("none"),
        None,
        "",
        sink.port,
    );
    let Once { code, stderr, .. } = client_once(&cfg);
    assert_eq!(code, Some(0), "odmr client:\n{stderr}");
    let got = sink.messages();
    assert_eq!(got.len(), 1, "{got:#?}");
    let (fields, rest) = split_received(&got[0].content, 2);
    assert!(fields[0].contains(&format!("by {CUSTOMER} (odmr)")), "{fields:?}");
    assert_eq!(
        with_protocol(&fields[0]),
        "ESMTP",
        "customer side, no TLS: {fields:?}"
    );
    assert!(
        fields[1].contains(&format!("by {} (odmr)", common::HOSTNAME)),
        "{fields:?}"
    );
    assert_eq!(
        with_protocol(&fields[1]),
        "ESMTPS",
        "the MX session used STARTTLS: {fields:?}"
    );
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.contains("Subject: swaks over STARTTLS") && rest.contains("hello over TLS"),
        "{rest}"
    );
    assert!(states(server).is_empty(), "{:?}", states(server));
}

/// 2. fetchmail `ssl` (implicit TLS, certificate checked) against `listen_tls`, relaying into
///    smtp-sink: three multi-line messages arrive byte-exact, the queue is empty, and the run
///    finishes quickly (a reversed session packing several lines per TLS record stalls
///    fetchmail until its own timeouts).
#[test]
fn fetchmail_ssl_on_the_implicit_listener_relays_byte_exact_without_stalling() {
    let (Some(_), Some(sink)) = (common::peer("fetchmail", "fetchmail"), SmtpSink::start(false)) else {
        return;
    };
    let pki = Pki::new();
    let ts = TlsServer::start(&pki.good, "");
    let server = &ts.server;
    let msgs: Vec<String> = (1..=3).map(|n| message(n, 40 * n)).collect();
    for (i, m) in msgs.iter().enumerate() {
        let r = send_mail(
            server.smtp,
            "alice@sender.test",
            &[&format!("u{}@{DOMAIN}", i + 1)],
            m,
        );
        assert!(r.starts_with("250"), "{r}");
    }
    assert_eq!(states(server).len(), 3);

    let Some((run, took)) = fetchmail_ssl(ts.odmr_tls.port(), &pki.ca, &sink) else {
        return;
    };
    let all = run.all();
    assert_eq!(run.code, Some(0), "fetchmail:\n{all}");
    assert!(
        all.contains("SSL/TLS: using protocol TLS"),
        "fetchmail did not use TLS:\n{all}"
    );
    assert!(all.contains("Turnaround now"), "fetchmail:\n{all}");
    assert!(
        took < Duration::from_secs(20),
        "fetchmail took {took:?} (a stall on TLS records?):\n{all}"
    );
    let got = sink.messages();
    assert_eq!(got.len(), 3, "sink got {got:#?}\nfetchmail:\n{all}");
    let mut want: Vec<&String> = msgs.iter().collect();
    want.sort_by_key(|m| m.split("To: ").nth(1).map(|s| s[..2].to_string()));
    let mut got: Vec<&Dumped> = got.iter().collect();
    got.sort_by_key(|d| d.rcpts.clone());
    for (i, (d, m)) in got.iter().zip(&want).enumerate() {
        assert_eq!(d.mail, "<alice@sender.test>", "{d:#?}");
        assert_eq!(d.rcpts, vec![format!("<u{}@{DOMAIN}>", i + 1)], "{d:#?}");
        let (fields, rest) = split_received(&d.content, 1);
        assert!(
            fields[0].contains(&format!("by {} (odmr)", common::HOSTNAME)),
            "{fields:?}"
        );
        assert_same(&rest, m.as_bytes(), &format!("message {}", i + 1));
    }
    assert_eq!(server.queue().as_array().unwrap().len(), 0, "{}", server.queue());
}

/// 3. `odmr client --once` with the default TLS mode (STARTTLS, the test CA, host "localhost"):
///    delivered, and the customer's Received: field says ESMTPS, so TLS carried across the
///    ATRN turnaround. Then `tls = "implicit"` against `listen_tls` (host "127.0.0.1", the IP
///    SAN) delivers too, and a poll with nothing waiting exits 1.
#[test]
fn odmr_client_starttls_by_default_and_implicit_tls() {
    let Some(sink) = SmtpSink::start(false) else {
        return;
    };
    let pki = Pki::new();
    let ts = TlsServer::start(&pki.good, "");
    let server = &ts.server;
    let dir = tempfile::tempdir().unwrap();

    let m1 = message(1, 30);
    assert!(send_mail(server.smtp, "alice@sender.test", &[&format!("u1@{DOMAIN}")], &m1).starts_with("250"));
    let cfg = client_config(
        dir.path(),
        "localhost",
        server.odmr.port(),
        None,
        Some(&pki.ca),
        "",
        sink.port,
    );
    let Once { code, stderr, .. } = client_once(&cfg);
    assert_eq!(code, Some(0), "odmr client (starttls):\n{stderr}");
    let got = sink.messages();
    assert_eq!(got.len(), 1, "{got:#?}\n{stderr}");
    let (fields, rest) = split_received(&got[0].content, 2);
    assert!(
        fields[0].starts_with(&format!("Received: from {} ", common::HOSTNAME))
            && fields[0].contains(&format!("by {CUSTOMER} (odmr)")),
        "first Received: is not the customer's: {fields:?}"
    );
    assert_eq!(
        with_protocol(&fields[0]),
        "ESMTPS",
        "TLS did not carry across the turnaround: {fields:?}"
    );
    assert_eq!(
        with_protocol(&fields[1]),
        "ESMTP",
        "sent to the MX in plaintext: {fields:?}"
    );
    assert_same(&rest, m1.as_bytes(), "message 1");
    assert!(states(server).is_empty(), "{:?}", states(server));

    let m2 = message(2, 30);
    assert!(send_mail(server.smtp, "alice@sender.test", &[&format!("u2@{DOMAIN}")], &m2).starts_with("250"));
    let cfg = client_config(
        dir.path(),
        "127.0.0.1",
        ts.odmr_tls.port(),
        Some("implicit"),
        Some(&pki.ca),
        "",
        sink.port,
    );
    let Once { code, stderr, .. } = client_once(&cfg);
    assert_eq!(code, Some(0), "odmr client (implicit):\n{stderr}");
    let got = sink.messages();
    assert_eq!(got.len(), 2, "{got:#?}\n{stderr}");
    let d = got
        .iter()
        .find(|d| d.rcpts == vec![format!("<u2@{DOMAIN}>")])
        .expect("message 2 delivered");
    let (fields, rest) = split_received(&d.content, 2);
    assert!(fields[0].contains(&format!("by {CUSTOMER} (odmr)")), "{fields:?}");
    assert_eq!(with_protocol(&fields[0]), "ESMTPS", "implicit TLS: {fields:?}");
    assert_same(&rest, m2.as_bytes(), "message 2");
    assert!(states(server).is_empty(), "{:?}", states(server));

    let Once { code, stderr, .. } = client_once(&cfg);
    assert_eq!(code, Some(1), "nothing waiting, over implicit TLS:\n{stderr}");
}

/// Poll with `cfg`, expect exit 2 with `words` (lowercase) in the message, nothing delivered
/// and the message still queued.
fn assert_refused(server: &Server, sink: &SmtpSink, cfg: &Path, words: &[&str], what: &str) {
    let Once { code, stderr, .. } = client_once(cfg);
    assert_eq!(code, Some(2), "{what}: exit code\n{stderr}");
    let lower = stderr.to_lowercase();
    for w in words {
        assert!(
            lower.contains(w),
            "{what}: the error does not mention {w:?}:\n{stderr}"
        );
    }
    assert!(
        sink.messages().is_empty(),
        "{what}: delivered anyway: {:#?}",
        sink.messages()
    );
    assert_eq!(
        states(server),
        vec![(format!("u1@{DOMAIN}"), "queued".into())],
        "{what}: the message must stay queued"
    );
}

/// 4. The client refuses a certificate from a CA it does not trust (STARTTLS and implicit), an
///    expired one, and one for another name: exit 2, the error names the certificate problem,
///    nothing is delivered and the mail stays queued. `tls_verify = false`, set explicitly,
///    accepts the untrusted one.
#[test]
fn odmr_client_refuses_bad_certificates() {
    let Some(sink) = SmtpSink::start(false) else {
        return;
    };
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let m = message(1, 5);
    let cases: [(&Leaf, &Path, &[&str], &str); 3] = [
        (
            &pki.good,
            &pki.other_ca,
            &["certificate", "issuer"],
            "untrusted CA",
        ),
        (
            &pki.expired,
            &pki.ca,
            &["certificate", "expired"],
            "expired certificate",
        ),
        (
            &pki.wrong_name,
            &pki.ca,
            &["certificate", "name"],
            "certificate for another name",
        ),
    ];
    for (leaf, ca, words, what) in cases {
        let ts = TlsServer::start(leaf, "");
        let server = &ts.server;
        assert!(
            send_mail(server.smtp, "alice@sender.test", &[&format!("u1@{DOMAIN}")], &m).starts_with("250")
        );
        let cfg = client_config(
            dir.path(),
            "localhost",
            server.odmr.port(),
            None,
            Some(ca),
            "",
            sink.port,
        );
        assert_refused(server, &sink, &cfg, words, &format!("{what}, STARTTLS"));
        let cfg = client_config(
            dir.path(),
            "localhost",
            ts.odmr_tls.port(),
            Some("implicit"),
            Some(ca),
            "",
            sink.port,
        );
        assert_refused(server, &sink, &cfg, words, &format!("{what}, implicit TLS"));
        if std::ptr::eq(leaf, &pki.good) {
            // The same untrusted certificate, accepted because the operator said so.
            let cfg = client_config(
                dir.path(),
                "localhost",
                server.odmr.port(),
                Some("starttls"),
                Some(ca),
                "tls_verify = false\n",
                sink.port,
            );
            let Once { code, stderr, .. } = client_once(&cfg);
            assert_eq!(code, Some(0), "tls_verify = false:\n{stderr}");
            assert_eq!(sink.messages().len(), 1);
            assert!(states(server).is_empty());
            sink.clear();
        }
    }
}

/// 4b. `tls = "starttls"` against a provider without `[tls]` (no STARTTLS offered): exit 2 with
///     a message naming STARTTLS, nothing delivered; `tls = "none"` then fetches the mail.
#[test]
fn odmr_client_starttls_refuses_a_provider_without_starttls() {
    let Some(sink) = SmtpSink::start(false) else {
        return;
    };
    let server = plain_server();
    let dir = tempfile::tempdir().unwrap();
    let m = message(1, 5);
    assert!(send_mail(server.smtp, "alice@sender.test", &[&format!("u1@{DOMAIN}")], &m).starts_with("250"));
    let cfg = client_config(
        dir.path(),
        "127.0.0.1",
        server.odmr.port(),
        Some("starttls"),
        None,
        "",
        sink.port,
    );
    let Once { code, stderr, .. } = client_once(&cfg);
    assert_eq!(code, Some(2), "starttls without STARTTLS:\n{stderr}");
    assert!(
        stderr.contains("STARTTLS"),
        "the error does not mention STARTTLS:\n{stderr}"
    );
    assert!(sink.messages().is_empty());
    assert_eq!(states(&server), vec![(format!("u1@{DOMAIN}"), "queued".into())]);
    // The default (no `tls` key) is starttls too.
    let cfg = client_config(
        dir.path(),
        "127.0.0.1",
        server.odmr.port(),
        None,
        None,
        "",
        sink.port,
    );
    let Once { code, stderr, .. } = client_once(&cfg);
    assert_eq!(code, Some(2), "default tls mode without STARTTLS:\n{stderr}");
    assert!(sink.messages().is_empty());

    let cfg = client_config(
        dir.path(),
        "127.0.0.1",
        server.odmr.port(),
        Some("none"),
        None,
        "",
        sink.port,
    );
    let Once { code, stderr, .. } = client_once(&cfg);
    assert_eq!(code, Some(0), "tls = none:\n{stderr}");
    let got = sink.messages();
    assert_eq!(got.len(), 1);
    let (fields, rest) = split_received(&got[0].content, 2);
    assert_eq!(with_protocol(&fields[0]), "ESMTP", "{fields:?}");
    assert_same(&rest, m.as_bytes(), "message");
    assert!(states(&server).is_empty());
}

/// 5. SIGHUP reloads the certificate: sessions opened under certificate A (STARTTLS on ODMR,
///    implicit TLS) keep working; new handshakes on every listener present B. A reload that
///    fails (a broken key) keeps B.
#[test]
fn sighup_reloads_the_certificate_for_new_handshakes_only() {
    let pki = Pki::new();
    let Some(mut py) = Py::start(&pki.ca) else { return };
    let ts = TlsServer::start(&pki.good, "");
    let server = &ts.server;

    py.connect("old", server.odmr, false);
    assert!(py.reply("old").starts_with("220 "));
    assert!(ehlo_lists(&py.ask("old", "EHLO old.test"), "STARTTLS"));
    assert!(py.ask("old", "STARTTLS").starts_with("220 "));
    assert!(py.starttls("old") == pki.good.der, "not certificate A");
    assert!(py.ask("old", "EHLO old.test").starts_with("250"));
    let cert = py.connect("old-implicit", ts.odmr_tls, true);
    assert!(unhex(cert.as_str().unwrap()) == pki.good.der, "not certificate A");
    assert!(py.reply("old-implicit").starts_with("220 "));

    pki.second.write(ts.cert.parent().unwrap(), "server");
    let pid = server_pid(server);
    sighup(pid);
    assert!(
        wait_log(server, 10, "certificate reloaded"),
        "no reload logged:\n{}",
        server.log()
    );

    let cert = py.connect("new-implicit", ts.odmr_tls, true);
    assert!(
        unhex(cert.as_str().unwrap()) == pki.second.der,
        "the implicit listener still presents the old certificate"
    );
    assert!(py.reply("new-implicit").starts_with("220 "));
    for (name, addr) in [("new-odmr", server.odmr), ("new-mx", server.smtp)] {
        py.connect(name, addr, false);
        assert!(py.reply(name).starts_with("220 "));
        assert!(py.ask(name, "EHLO new.test").starts_with("250"));
        assert!(py.ask(name, "STARTTLS").starts_with("220 "));
        assert!(py.starttls(name) == pki.second.der, "{name}: not certificate B");
        assert!(py.ask(name, "NOOP").starts_with("250"), "{name}");
    }
    // The sessions from before the reload go on.
    assert!(py.ask("old", "NOOP").starts_with("250"), "old STARTTLS session");
    assert!(
        py.ask("old-implicit", "EHLO old.test").starts_with("250"),
        "old implicit session"
    );
    assert!(
        py.ask("old-implicit", "NOOP").starts_with("250"),
        "old implicit session"
    );

    // A failed reload keeps the certificate that works.
    std::fs::write(&ts.key, "not a key\n").unwrap();
    sighup(pid);
    assert!(
        wait_log(server, 10, "certificate reload failed"),
        "no failed reload logged:\n{}",
        server.log()
    );
    let cert = py.connect("after-failure", ts.odmr_tls, true);
    assert!(
        unhex(cert.as_str().unwrap()) == pki.second.der,
        "a failed reload changed the certificate"
    );
    assert!(py.reply("after-failure").starts_with("220 "));
    assert!(py.ask("old", "QUIT").starts_with("221"));
}

/// 6. STARTTLS command injection on both STARTTLS listeners: `STARTTLS\r\nHELP\r\n` in one
///    write gets the 220 and then the connection ends, HELP never answered. STARTTLS with an
///    argument gets 501; a proper STARTTLS works, the session restarts (on the MX, MAIL before
///    a new EHLO gets 503), the EHLO under TLS no longer lists STARTTLS, a second STARTTLS gets
///    503, and the session is usable (HELP, QUIT).
#[test]
fn starttls_injection_is_refused_and_starttls_cannot_repeat() {
    let pki = Pki::new();
    let Some(mut py) = Py::start(&pki.ca) else { return };
    let ts = TlsServer::start(&pki.good, "");
    let server = &ts.server;
    for (listener, addr, ehlo_first) in [("MX", server.smtp, true), ("ODMR", server.odmr, false)] {
        py.connect("inj", addr, false);
        assert!(py.reply("inj").starts_with("220 "), "{listener}");
        if ehlo_first {
            assert!(
                ehlo_lists(&py.ask("inj", "EHLO attacker.test"), "STARTTLS"),
                "{listener}"
            );
        }
        py.send("inj", "STARTTLS\r\nHELP\r\n");
        let r = py.reply("inj");
        assert!(r.starts_with("220 "), "{listener}: STARTTLS got {r:?}");
        let (data, end) = py.drain("inj");
        assert!(
            !data.contains("214"),
            "{listener}: the injected HELP was executed: {data:?}"
        );
        assert!(
            end == "eof" || end == "reset",
            "{listener}: the connection was not closed after injected plaintext ({end}); got {data:?}"
        );
        assert!(
            data.is_empty(),
            "{listener}: unexpected output after the 220: {data:?}"
        );
        py.ok(json!(["close", "inj"]));

        py.connect("ok", addr, false);
        assert!(py.reply("ok").starts_with("220 "));
        let before = py.ask("ok", "EHLO client.test");
        assert!(
            ehlo_lists(&before, "STARTTLS"),
            "{listener}: STARTTLS not offered: {before}"
        );
        let r = py.ask("ok", "STARTTLS now");
        assert!(
            r.starts_with("501"),
            "{listener}: STARTTLS with an argument got {r:?}"
        );
        assert!(py.ask("ok", "STARTTLS").starts_with("220 "), "{listener}");
        assert!(py.starttls("ok") == pki.good.der, "{listener}: wrong certificate");
        if listener == "MX" {
            // RFC 3207 §4.2: the EHLO from before TLS is forgotten.
            let r = py.ask("ok", "MAIL FROM:<a@sender.test>");
            assert!(r.starts_with("503"), "MX: MAIL before the new EHLO got {r:?}");
        }
        let after = py.ask("ok", "EHLO client.test");
        assert!(after.starts_with("250"), "{listener}: {after}");
        assert!(
            !ehlo_lists(&after, "STARTTLS"),
            "{listener}: STARTTLS offered again: {after}"
        );
        let again = py.ask("ok", "STARTTLS");
        assert!(
            again.starts_with("503"),
            "{listener}: second STARTTLS got {again:?}"
        );
        let help = py.ask("ok", "HELP");
        assert!(
            help.starts_with("214"),
            "{listener}: the session is not usable: {help:?}"
        );
        assert!(py.ask("ok", "QUIT").starts_with("221"), "{listener}");
        py.ok(json!(["close", "ok"]));
    }
}

/// 7. `require_tls = true` on ODMR: before STARTTLS, AUTH and ATRN get 530 5.7.0 and EHLO offers
///    no AUTH; after STARTTLS, EHLO offers AUTH CRAM-MD5 and CRAM-MD5 works (235), then ATRN is
///    answered (453: no mail). On the implicit listener TLS is already there: AUTH at once.
#[test]
fn require_tls_refuses_auth_and_atrn_until_starttls() {
    let pki = Pki::new();
    let Some(mut py) = Py::start(&pki.ca) else { return };
    let ts = TlsServer::start(&pki.good, "require_tls = true");
    let server = &ts.server;

    py.connect("c", server.odmr, false);
    assert!(py.reply("c").starts_with("220 "));
    let ehlo = py.ask("c", "EHLO client.test");
    assert!(ehlo.starts_with("250"), "{ehlo}");
    assert!(ehlo_lists(&ehlo, "STARTTLS"), "STARTTLS not offered: {ehlo}");
    assert!(!ehlo_lists(&ehlo, "AUTH"), "AUTH offered before TLS: {ehlo}");
    for cmd in ["AUTH CRAM-MD5", &format!("ATRN {DOMAIN}"), "ATRN"] {
        let r = py.ask("c", cmd);
        assert!(
            r.starts_with("530 5.7.0 "),
            "{cmd} before STARTTLS got {r:?}, not 530 5.7.0"
        );
    }
    assert!(py.ask("c", "NOOP").starts_with("250"));
    assert!(py.ask("c", "STARTTLS").starts_with("220 "));
    assert!(py.starttls("c") == pki.good.der);
    let ehlo = py.ask("c", "EHLO client.test");
    assert!(
        ehlo.lines().any(|l| l
            .get(4..)
            .is_some_and(|k| k.starts_with("AUTH ") && k.split_whitespace().any(|m| m == "CRAM-MD5"))),
        "no AUTH CRAM-MD5 after STARTTLS: {ehlo}"
    );
    assert!(!ehlo_lists(&ehlo, "STARTTLS"), "{ehlo}");
    let r = py.cram("c", USER, PASSWORD);
    assert!(r.starts_with("235"), "CRAM-MD5 after STARTTLS got {r:?}");
    let r = py.ask("c", &format!("ATRN {DOMAIN}"));
    assert!(r.starts_with("453"), "ATRN with no mail got {r:?}");

    py.connect("i", ts.odmr_tls, true);
    assert!(py.reply("i").starts_with("220 "));
    let ehlo = py.ask("i", "EHLO client.test");
    assert!(
        ehlo_lists(&ehlo, "AUTH") && !ehlo_lists(&ehlo, "STARTTLS"),
        "{ehlo}"
    );
    let r = py.cram("i", USER, PASSWORD);
    assert!(
        r.starts_with("235"),
        "CRAM-MD5 on the implicit listener got {r:?}"
    );
}

/// 8. Python's smtplib: `starttls()` on the MX (OpenSSL verifying the test CA and "localhost"),
///    then `sendmail` works and the message is queued.
#[test]
fn python_smtplib_starttls_then_sendmail() {
    let Some(python) = common::peer("python3", "python3") else {
        return;
    };
    let pki = Pki::new();
    let ts = TlsServer::start(&pki.good, "");
    let server = &ts.server;
    let port = server.smtp.port().to_string();
    let script = common::peers_dir().join("tls_peer.py");
    let rcpt = format!("u1@{DOMAIN}");
    let run = run_timeout(
        30,
        &python,
        &[
            script.to_str().unwrap(),
            "smtplib",
            pki.ca.to_str().unwrap(),
            &port,
            "alice@sender.test",
            &rcpt,
        ],
        &[],
    );
    assert_eq!(run.code, Some(0), "smtplib:\n{}", run.all());
    let v: Value = serde_json::from_str(run.stdout.trim()).expect("smtplib JSON");
    assert_eq!(v["starttls"][0], 220, "{v}");
    assert!(
        unhex(v["cert"].as_str().unwrap()) == pki.good.der,
        "wrong certificate"
    );
    let ehlo1 = v["ehlo1"][1].as_str().unwrap();
    let ehlo2 = v["ehlo2"][1].as_str().unwrap();
    assert!(ehlo1.lines().any(|l| l == "STARTTLS"), "{ehlo1}");
    assert!(
        !ehlo2.lines().any(|l| l == "STARTTLS"),
        "offered again under TLS: {ehlo2}"
    );
    assert_eq!(v["refused"], json!({}), "{v}");
    assert_eq!(v["noop"][0], 250, "{v}");
    assert_eq!(states(server), vec![(rcpt, "queued".into())]);
}

/// 4c. Against a scripted provider that offers STARTTLS but then (a) answers 454, or (b) sends
///     plaintext after its 220 (an injected reply): the client exits 2, never authenticates or
///     asks for mail in plaintext, and in (b) starts no TLS handshake on the tainted connection.
#[test]
fn odmr_client_starttls_never_falls_back_and_refuses_injected_plaintext() {
    let (Some(python), Some(sink)) = (common::peer("python3", "python3"), SmtpSink::start(false)) else {
        return;
    };
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    for (mode, words) in [("454", "454"), ("inject", "plaintext")] {
        let mut fake = Command::new("timeout")
            .args(["--kill-after=5", "60"])
            .arg(&python)
            .arg(common::peers_dir().join("tls_peer.py"))
            .args(["provider", mode])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tls_peer.py provider");
        let mut out = BufReader::new(fake.stdout.take().unwrap());
        let mut port = String::new();
        out.read_line(&mut port).unwrap();
        let port: u16 = port.trim().parse().expect("the fake provider's port");
        let cfg = client_config(
            dir.path(),
            "127.0.0.1",
            port,
            Some("starttls"),
            Some(&pki.ca),
            "",
            sink.port,
        );
        let Once { code, stderr, .. } = client_once(&cfg);
        let mut report = String::new();
        out.read_line(&mut report).unwrap();
        let _ = fake.wait();
        let v: Value = serde_json::from_str(&report)
            .unwrap_or_else(|e| panic!("{mode}: fake provider report {report:?}: {e}\nclient:\n{stderr}"));
        assert_eq!(
            code,
            Some(2),
            "{mode}: exit code\nclient:\n{stderr}\nprovider got: {v}"
        );
        assert!(
            stderr.contains(words),
            "{mode}: the error does not mention {words:?}:\n{stderr}"
        );
        let lines: Vec<&str> = v["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect();
        assert!(
            lines.first().is_some_and(|l| l.starts_with("EHLO ")) && lines.get(1) == Some(&"STARTTLS"),
            "{mode}: provider got {lines:?}"
        );
        assert!(
            !lines.iter().any(|l| {
                let v = l.to_ascii_uppercase();
                v.starts_with("AUTH") || v.starts_with("ATRN")
            }),
            "{mode}: the client went on in plaintext: {lines:?}"
        );
        assert_eq!(
            v["tls_hello"],
            json!(false),
            "{mode}: TLS started anyway; got {lines:?}"
        );
        assert!(sink.messages().is_empty());
    }
}

// ----- ETRN's outbound connections (smtp.etrn_tls) -----
//
// `may` into a destination without STARTTLS (plaintext) is what every test in etrn.rs does
// (smtp-sink offers no STARTTLS).

/// A provider (`smtp_extra` in its `[smtp]`) whose account delivers ETRN to `destination`,
/// allowed from loopback, holding one message for bob@a.example.
fn etrn_provider(smtp_extra: &str, destination: &str) -> Server {
    let s = Server::start_with(smtp_extra, "");
    s.account(USER, PASSWORD, &[DOMAIN]);
    let args = [
        "account",
        "set",
        USER,
        "--etrn-destination",
        destination,
        "--etrn-from",
        "127.0.0.0/8",
    ];
    let (st, out, err) = s.cli(&args, None);
    assert_eq!(st, 0, "{out}{err}");
    let r = send_mail(
        s.smtp,
        "alice@sender.test",
        &[&format!("bob@{DOMAIN}")],
        "Subject: etrn tls\n\nheld for ETRN\n",
    );
    assert!(r.starts_with("250"), "{r}");
    s
}

/// `ETRN a.example` on the MX, then waits for the queue run to end; returns the ETRN reply.
fn etrn_and_wait(s: &Server) -> String {
    let mut c = Line::connect(s.smtp);
    c.reply();
    c.ask("EHLO customer.test");
    let r = c.ask(&format!("ETRN {DOMAIN}"));
    c.ask("QUIT");
    assert!(
        wait_until(30, || s.log().contains("ETRN queue run finished")),
        "the queue run did not end:\n{}",
        s.log()
    );
    r
}

/// The aiosmtpd destination with `leaf`'s certificate; `None` (skipped) without aiosmtpd.
fn tls_destination(leaf: &Leaf, extra: &[&str]) -> Option<(PyPeer, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = leaf.write(dir.path(), "destination");
    let mut args = vec![cert.to_str().unwrap(), key.to_str().unwrap()];
    args.extend(extra);
    let peer = PyPeer::start("tls_destination.py", &args, true)?;
    Some((peer, dir))
}

fn destination_events(peer: &PyPeer, event: &str) -> Vec<Value> {
    peer.events()
        .into_iter()
        .filter(|e| e["event"] == event)
        .collect()
}

#[test]
fn etrn_delivers_over_starttls_when_the_destination_offers_it() {
    let pki = Pki::new();
    let Some((dest, _dir)) = tls_destination(&pki.good, &[]) else {
        return;
    };
    // The default level, "may": TLS when offered, the certificate not checked.
    let s = etrn_provider("", &format!("127.0.0.1:{}", dest.port));
    assert!(etrn_and_wait(&s).starts_with("253"));
    let data = destination_events(&dest, "data");
    assert_eq!(data.len(), 1, "{data:?}\n{}", s.log());
    assert_eq!(
        data[0]["tls"],
        json!(true),
        "delivered in plaintext:\n{}",
        s.log()
    );
    assert_eq!(data[0]["rcpts"], json!([format!("bob@{DOMAIN}")]));
    assert!(states(&s).is_empty(), "{:?}", states(&s));
    assert!(s.logged("TLS established"));
}

#[test]
fn etrn_tls_verify_checks_the_destination_certificate() {
    let pki = Pki::new();
    let ca = pki.ca.to_str().unwrap().to_string();
    let verify = format!("etrn_tls = \"verify\"\netrn_tls_ca_file = \"{ca}\"");
    // Signed by the CA given, for the name dialled: delivered over TLS.
    let Some((good, _d1)) = tls_destination(&pki.good, &[]) else {
        return;
    };
    let s = etrn_provider(&verify, &format!("127.0.0.1:{}", good.port));
    assert!(etrn_and_wait(&s).starts_with("253"));
    let data = destination_events(&good, "data");
    assert_eq!(data.len(), 1, "{data:?}\n{}", s.log());
    assert_eq!(data[0]["tls"], json!(true));
    assert!(states(&s).is_empty());

    // Signed by the same CA for another name: nothing is delivered, the mail stays queued,
    // and there is no plaintext retry.
    let Some((wrong, _d2)) = tls_destination(&pki.wrong_name, &[]) else {
        return;
    };
    let s = etrn_provider(&verify, &format!("127.0.0.1:{}", wrong.port));
    assert!(etrn_and_wait(&s).starts_with("253"));
    assert!(destination_events(&wrong, "data").is_empty());
    assert_eq!(
        destination_events(&wrong, "connect").len(),
        1,
        "retried in plaintext"
    );
    assert_eq!(states(&s), vec![(format!("bob@{DOMAIN}"), "queued".to_string())]);
    assert!(s.logged("TLS handshake failed"), "{}", s.log());
    assert!(s.logged("the mail stays queued"), "{}", s.log());
}

#[test]
fn etrn_tls_encrypt_never_delivers_in_plaintext() {
    let Some(sink) = SmtpSink::start(false) else {
        return;
    };
    let s = etrn_provider("etrn_tls = \"encrypt\"", &format!("127.0.0.1:{}", sink.port));
    assert!(etrn_and_wait(&s).starts_with("253"));
    assert!(
        sink.messages().is_empty(),
        "smtp-sink offers no STARTTLS, yet got mail"
    );
    assert_eq!(states(&s), vec![(format!("bob@{DOMAIN}"), "queued".to_string())]);
    assert!(s.logged("does not offer STARTTLS"), "{}", s.log());
}

#[test]
fn etrn_tls_may_refuses_an_injected_reply_and_delivers_in_plaintext() {
    let pki = Pki::new();
    // The first STARTTLS is answered "220" with a plaintext "250" behind it in the same write.
    let Some((dest, _dir)) = tls_destination(&pki.good, &["--inject-once"]) else {
        return;
    };
    let s = etrn_provider("", &format!("127.0.0.1:{}", dest.port));
    assert!(etrn_and_wait(&s).starts_with("253"));
    assert!(s.logged("TLS handshake failed"), "{}", s.log());
    // "may": a second connection, in plaintext, delivers.
    assert_eq!(destination_events(&dest, "connect").len(), 2);
    let data = destination_events(&dest, "data");
    assert_eq!(data.len(), 1, "{data:?}\n{}", s.log());
    assert_eq!(data[0]["tls"], json!(false));
    assert!(states(&s).is_empty());
}

#[test]
fn notices_go_to_the_relay_over_starttls() {
    let pki = Pki::new();
    let Some((relay, _dir)) = tls_destination(&pki.good, &[]) else {
        return;
    };
    // `bounce.relay_tls` left at its default, "may".
    let s = Server::start_with(
        "",
        &format!(
            "[queue]\nscan_interval = \"300ms\"\n[bounce]\nrelay = \"127.0.0.1:{}\"\nretry = \"500ms\"\n",
            relay.port
        ),
    );
    s.account(USER, PASSWORD, &[DOMAIN]);
    let (st, out, err) = s.cli(&["domain", "set", DOMAIN, "--max-age", "1s"], None);
    assert_eq!(st, 0, "{out}{err}");
    let r = send_mail(
        s.smtp,
        "alice@sender.test",
        &[&format!("bob@{DOMAIN}")],
        "Subject: x\n\nexpires\n",
    );
    assert!(r.starts_with("250"), "{r}");
    // Held past its max age: failed, and its notice goes to the relay.
    assert!(
        relay.wait_line(30, |l| l.contains("\"event\": \"data\"")),
        "no notice reached the relay:\n{}",
        s.log()
    );
    let data = destination_events(&relay, "data");
    assert_eq!(data[0]["rcpts"], json!(["alice@sender.test"]));
    assert_eq!(
        data[0]["tls"],
        json!(true),
        "notice sent in plaintext:\n{}",
        s.log()
    );
}
