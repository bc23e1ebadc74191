//! Strong authentication end to end: `odmr client` ↔ `odmr server` over STARTTLS with
//! SCRAM-SHA-256, and with SASL EXTERNAL (a TLS client certificate mapped to the account).

mod common;

use common::{send_mail, Server, BIN};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    SanType,
};
use std::path::{Path, PathBuf};
use std::process::Command;

struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    stranger_cert: PathBuf,
    stranger_key: PathBuf,
}

fn pki(dir: &Path) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct names: OpenSSL takes a leaf whose issuer equals its subject for self-signed.
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name.push(DnType::CommonName, "odmr test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf = |names: Vec<String>, eku: ExtendedKeyUsagePurpose, stem: &str| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names).unwrap();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, stem);
        p.subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        p.extended_key_usages = vec![eku];
        let cert = p.signed_by(&key, &ca_cert, &ca_key).unwrap();
        let (c, k) = (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    };
    let (server_cert, server_key) = leaf(
        vec!["localhost".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
        "server",
    );
    let (client_cert, client_key) = leaf(
        vec!["customer.test".into()],
        ExtendedKeyUsagePurpose::ClientAuth,
        "client",
    );
    let (stranger_cert, stranger_key) = leaf(
        vec!["stranger.test".into()],
        ExtendedKeyUsagePurpose::ClientAuth,
        "stranger",
    );
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();
    Pki {
        ca: ca_path,
        server_cert,
        server_key,
        client_cert,
        client_key,
        stranger_cert,
        stranger_key,
    }
}

fn server(p: &Pki) -> Server {
    let tls = format!(
        "\n[tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n",
        p.server_cert.display(),
        p.server_key.display(),
        p.ca.display()
    );
    let s = Server::start_with("", &tls);
    s.account("acme", "s3cret", &["example.org"]);
    s
}

/// Run `odmr client --once` with extra provider keys; returns (exit code, stderr).
fn client(s: &Server, dir: &Path, extra: &str) -> (i32, String) {
    let cfg = dir.join("client.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[provider]]\nhost = \"localhost\"\nport = {}\nuser = \"acme\"\npassword = \"s3cret\"\ntimeout = \"10s\"\n{extra}\n[provider.deliver]\nmaildir = \"{}/{{domain}}/{{local}}\"\n",
            s.odmr.port(),
            dir.join("mail").display()
        ),
    )
    .unwrap();
    client_with(&cfg)
}

/// Run `odmr client --once --config CFG`; returns (exit code, stderr).
fn client_with(cfg: &Path) -> (i32, String) {
    let out = Command::new(BIN)
        .args(["client", "--once", "--config"])
        .arg(cfg)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The client's keys for TLS with the client certificate `cert` (and its `key`).
fn with_cert(p: &Pki, cert: &Path, key: &Path) -> String {
    format!(
        "ca_file = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"",
        p.ca.display(),
        cert.display(),
        key.display()
    )
}

/// Queue a message for bob@example.org at the provider's MX.
fn queue_for_bob(s: &Server, message: &str) {
    let r = send_mail(s.smtp, "a@sender.test", &["bob@example.org"], message);
    assert!(
        r.starts_with("250"),
        "the provider did not accept the message: {r}"
    );
}

fn delivered(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("mail/example.org/bob/new"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn scram_sha_256_over_starttls() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki(dir.path());
    let s = server(&p);
    queue_for_bob(&s, "Subject: x\n\nscram\n");
    let (code, err) = client(&s, dir.path(), &format!("ca_file = \"{}\"", p.ca.display()));
    assert_eq!(code, 0, "{err}\n{}", s.log());
    assert_eq!(delivered(dir.path()), 1);
    assert!(s.logged("mechanism=SCRAM-SHA-256"), "{}", s.log());
    // A wrong password is an authentication failure (exit 3), and nothing moves.
    queue_for_bob(&s, "Subject: y\n\nagain\n");
    let cfg_extra = format!("ca_file = \"{}\"", p.ca.display());
    let cfg = dir.path().join("client.toml");
    let (code, _) = client(&s, dir.path(), &cfg_extra);
    assert_eq!(code, 0);
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg).unwrap().replace("s3cret", "wrong"),
    )
    .unwrap();
    let (code, err) = client_with(&cfg);
    assert_eq!(code, 3, "{err}");
}

#[test]
fn external_with_a_client_certificate_mapped_to_the_account() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki(dir.path());
    let s = server(&p);
    let (st, out, err) = s.cli(
        &["account", "cert", "acme", p.client_cert.to_str().unwrap()],
        None,
    );
    assert_eq!(st, 0, "{err}");
    assert!(out.contains("sha256:"), "{out}");
    queue_for_bob(&s, "Subject: x\n\nexternal\n");

    // A certificate the CA signed but no account claims: EXTERNAL fails (exit 3), mail stays.
    let (code, err) = client(&s, dir.path(), &with_cert(&p, &p.stranger_cert, &p.stranger_key));
    assert_eq!(code, 3, "{err}");
    assert_eq!(delivered(dir.path()), 0);

    // The customer's own certificate logs in as acme without a password exchange.
    let (code, err) = client(&s, dir.path(), &with_cert(&p, &p.client_cert, &p.client_key));
    assert_eq!(code, 0, "{err}\n{}", s.log());
    assert_eq!(delivered(dir.path()), 1);
    assert!(s.logged("mechanism=EXTERNAL"), "{}", s.log());
}

/// On both listeners that offer AUTH: the ODMR port (then ATRN: 453, nothing queued) and the MX
/// port (then ETRN: 458, as the account has no ETRN destination; AUTH there only identifies).
#[test]
fn python_smtplib_plain_after_starttls_and_not_before() {
    let Some(py) = common::python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let p = pki(dir.path());
    let s = server(&p);
    let script = r#"
import smtplib, ssl, sys, json
port, ca, verb = int(sys.argv[1]), sys.argv[2], sys.argv[3]
out = {}
s = smtplib.SMTP("localhost", port, timeout=10)
s.ehlo("customer.test")
out["before"] = s.esmtp_features.get("auth", "").split()
code, _ = s.docmd("AUTH", "PLAIN AGFjbWUAczNjcmV0")
out["plain_before_tls"] = code
s.starttls(context=ssl.create_default_context(cafile=ca))
s.ehlo("customer.test")
out["after"] = s.esmtp_features.get("auth", "").split()
try:
    s.login("acme", "wrong")
except smtplib.SMTPAuthenticationError as e:
    out["wrong"] = e.smtp_code
s.user, s.password = "acme", "s3cret"
code, _ = s.auth("PLAIN", s.auth_plain, initial_response_ok=True)
out["plain"] = code
code, _ = s.docmd(verb, "example.org")
out["release"] = code
print(json.dumps(out))
"#;
    for (port, verb, release) in [(s.odmr.port(), "ATRN", 453), (s.smtp.port(), "ETRN", 458)] {
        let out = Command::new(&py)
            .args(["-c", script, &port.to_string(), p.ca.to_str().unwrap(), verb])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            v["before"],
            serde_json::json!(["SCRAM-SHA-256", "CRAM-MD5"]),
            "{v}"
        );
        assert_eq!(v["plain_before_tls"], 504, "{v}");
        assert_eq!(
            v["after"],
            serde_json::json!(["SCRAM-SHA-256", "CRAM-MD5", "PLAIN", "LOGIN"]),
            "{v}"
        );
        assert_eq!(v["wrong"], 535, "{v}");
        assert_eq!(v["plain"], 235, "{v}");
        assert_eq!(v["release"], release, "{verb}: {v}");
    }
}
