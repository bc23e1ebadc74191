//! The customer's configuration (`odmr client --config FILE`): one `[[provider]]` table per
//! provider to poll, each with exactly one `[provider.deliver]` target — or, with
//! `mode = "etrn"`, none: the provider then delivers to our fixed address over a new connection
//! (RFC 1985), and the poll only asks it to.
//!
//! As for the server, every error names the file, the key and the fix, and unknown keys are
//! errors. Whatever every poll would trip on and the file alone can tell (the Maildir and command
//! templates, the domains, TLS's host name and certificate files) is checked here, so a daemon
//! with a broken config refuses to start instead of failing at each poll.

use super::sink::command::Command as SinkCommand;
use super::sink::maildir::Maildir;
use super::sink::SinkError;
use crate::config::kind::{wrong_kind, Kind};
use crate::config::ConfigError;
use crate::net::tls::{client_connector, TlsError};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    /// Our name in EHLO; defaults to the system host name.
    hostname: Option<String>,
    #[serde(default)]
    provider: Vec<RawProvider>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    name: Option<String>,
    host: String,
    port: Option<u16>,
    /// "atrn" (the default) or "etrn".
    mode: Option<String>,
    user: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    #[serde(default)]
    domains: Vec<String>,
    tls: Option<String>,
    ca_file: Option<PathBuf>,
    tls_verify: Option<bool>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    interval: Option<String>,
    /// Idle timeout of the reversed session, per command.
    timeout: Option<String>,
    /// How long to wait for the ATRN reply (RFC 2645: at least 10 minutes).
    atrn_timeout: Option<String>,
    deliver: Option<RawDeliver>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeliver {
    smtp: Option<String>,
    lmtp: Option<String>,
    maildir: Option<String>,
    command: Option<String>,
    splice: Option<String>,
    max_message_size: Option<u64>,
    /// "lf" (the default) or "crlf": the line ends of files written by maildir and command.
    line_ends: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The file this was read from, named in every error about a provider of it.
    pub path: PathBuf,
    pub hostname: String,
    pub providers: Vec<Provider>,
}

#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub mode: Mode,
    /// Empty only with `mode = "etrn"` and no password.
    pub user: String,
    /// Empty only with `mode = "etrn"`: no AUTH.
    pub password: String,
    pub domains: Vec<String>,
    pub tls: TlsMode,
    /// CA certificates to trust instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// `false` only when chosen explicitly: accept any certificate.
    pub tls_verify: bool,
    /// Our client certificate and key (PEM): authenticate with SASL EXTERNAL when offered.
    pub tls_identity: Option<(PathBuf, PathBuf)>,
    pub interval: Duration,
    pub timeout: Duration,
    pub atrn_timeout: Duration,
    /// Where received mail goes; `None` exactly with `mode = "etrn"`.
    pub deliver: Option<Deliver>,
    pub max_message_size: u64,
    /// Line ends of what the maildir and command sinks write.
    pub line_ends: LineEnds,
}

/// The line ends of the files the maildir and command sinks write. SMTP carries CRLF; Maildir
/// readers, mbox tools and procmail expect LF, so LF is the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LineEnds {
    #[default]
    Lf,
    /// As received: CRLF.
    Crlf,
}

/// How a provider is asked for mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// RFC 2645: ATRN on the ODMR port; the mail comes over the same connection.
    Atrn,
    /// RFC 1985: ETRN on the provider's MX port; the mail comes over a new connection to our
    /// fixed address (set at the provider with `odmr account set --etrn-destination`).
    Etrn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    None,
    StartTls,
    Implicit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deliver {
    /// Relay to the local MTA over SMTP, in lockstep.
    Smtp(Endpoint),
    /// Relay to the local MTA over LMTP, in lockstep.
    Lmtp(Endpoint),
    /// Write into Maildirs; the template is applied per recipient.
    Maildir(String),
    /// Run a command per recipient with the message on stdin.
    Command(String),
    /// Copy bytes both ways between the provider and a local SMTP server.
    Splice(Endpoint),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Tcp(String),
    Unix(PathBuf),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(a) => f.write_str(a),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl ClientConfig {
    pub fn load(path: &Path) -> Result<ClientConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<ClientConfig, ConfigError> {
        let raw: RawClient = toml::from_str(text).map_err(|e| {
            // A server config given to the client gets a hint, not "unknown field `store`".
            wrong_kind(path, text, Kind::Client).unwrap_or_else(|| ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.to_string().trim_end().to_string(),
            })
        })?;
        let invalid = |key: String, value: &str, problem: &str, fix: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            value: value.to_string(),
            problem: problem.to_string(),
            fix: fix.to_string(),
        };
        if raw.provider.is_empty() {
            return Err(invalid(
                "provider".into(),
                "",
                "no [[provider]] table",
                "add one: [[provider]] host = \"odmr.example.net\" user = \"…\" password = \"…\" with a [provider.deliver] target",
            ));
        }
        let hostname = raw.hostname.clone().unwrap_or_else(system_hostname);
        // Our EHLO argument: a provider refuses one with spaces at every poll (RFC 5321 4.1.1.1).
        if hostname.is_empty() || hostname.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(invalid(
                "hostname".into(),
                &hostname,
                "not a host name",
                "set it to this machine's fully qualified name, e.g. \"mail.example.org\", or leave it out to use the system's",
            ));
        }
        let mut providers = Vec::new();
        for (i, p) in raw.provider.iter().enumerate() {
            let name = p.name.clone().unwrap_or_else(|| p.host.clone());
            let key = |k: &str| format!("provider[{i}].{k}");
            let mode = match p.mode.as_deref().unwrap_or("atrn") {
                "atrn" => Mode::Atrn,
                "etrn" => Mode::Etrn,
                m => {
                    return Err(invalid(
                        key("mode"),
                        m,
                        "unknown mode",
                        "use \"atrn\" (the default: ODMR, the mail comes over this connection) or \"etrn\" (the provider delivers to your fixed address)",
                    ))
                }
            };
            let password = match (&p.password, &p.password_file) {
                // ETRN may go without AUTH: the provider can know us by our address.
                (None, None) if mode == Mode::Etrn => String::new(),
                (Some(pw), None) => pw.clone(),
                (None, Some(f)) => std::fs::read_to_string(f)
                    .map_err(|e| {
                        invalid(
                            key("password_file"),
                            &f.display().to_string(),
                            &format!("cannot read it ({e})"),
                            "point it at a readable file holding the password",
                        )
                    })?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
                _ => {
                    return Err(invalid(
                        key("password"),
                        "",
                        "set exactly one of password and password_file",
                        "e.g. password_file = \"/etc/odmr/isp.secret\"",
                    ))
                }
            };
            let tls = match p.tls.as_deref().unwrap_or("starttls") {
                "none" => TlsMode::None,
                "starttls" => TlsMode::StartTls,
                "implicit" => TlsMode::Implicit,
                t => {
                    return Err(invalid(
                        key("tls"),
                        t,
                        "unknown TLS mode",
                        "use \"starttls\" (the default), \"implicit\" or \"none\"",
                    ))
                }
            };
            let dur =
                |k: &str, v: &Option<String>, default: u64, min: u64| -> Result<Duration, ConfigError> {
                    let Some(s) = v else {
                        return Ok(Duration::from_secs(default));
                    };
                    let d = humantime::parse_duration(s).map_err(|e| {
                        invalid(key(k), s, &e.to_string(), "write a duration such as \"10m\"")
                    })?;
                    if d < Duration::from_secs(min) {
                        return Err(invalid(key(k), s, "too short", &format!("use at least {min}s")));
                    }
                    Ok(d)
                };
            let user = match (&p.user, mode) {
                (Some(u), _) => u.clone(),
                (None, Mode::Etrn) if password.is_empty() => String::new(),
                (None, _) => {
                    return Err(invalid(
                        key("user"),
                        "",
                        "missing",
                        "set user = \"…\", the account name at the provider",
                    ))
                }
            };
            if mode == Mode::Etrn && p.domains.is_empty() {
                return Err(invalid(
                    key("domains"),
                    "[]",
                    "ETRN names each domain; there is no \"all my domains\" form",
                    "list them, e.g. domains = [\"example.org\"]",
                ));
            }
            // The provider checks them with the same grammar (ATRN's, and ETRN's node name):
            // one that cannot pass would fail every poll.
            // Kept in the spelling the provider stores (lower case, no root dot).
            let domains = p
                .domains
                .iter()
                .map(|d| {
                    odmr_proto::atrn::parse_domain(d.trim())
                        .map_err(|e| invalid(key("domains"), d, &e.to_string(), DOMAIN_FIX))
                })
                .collect::<Result<Vec<_>, _>>()?;
            check_tls(p, tls).map_err(|(k, v, problem, fix)| invalid(key(k), &v, &problem, &fix))?;
            if mode == Mode::Etrn {
                if p.deliver.is_some() {
                    return Err(invalid(
                        key("deliver"),
                        "",
                        "not used with mode = \"etrn\": the provider delivers to the address set at its end (odmr account set --etrn-destination)",
                        "remove the [provider.deliver] table",
                    ));
                }
                providers.push(Provider {
                    name,
                    host: p.host.clone(),
                    // ETRN is an extension of the provider's MX (RFC 1985 §3).
                    port: p.port.unwrap_or(25),
                    mode,
                    user,
                    password,
                    domains: domains.clone(),
                    tls,
                    ca_file: p.ca_file.clone(),
                    tls_verify: p.tls_verify.unwrap_or(true),
                    tls_identity: tls_identity(&p.tls_cert, &p.tls_key)
                        .map_err(|(problem, fix)| invalid(key("tls_cert"), "", problem, fix))?,
                    interval: dur("interval", &p.interval, 600, 1)?,
                    timeout: dur("timeout", &p.timeout, 300, 1)?,
                    atrn_timeout: dur("atrn_timeout", &p.atrn_timeout, 600, 600)?,
                    deliver: None,
                    max_message_size: 0,
                    line_ends: LineEnds::default(),
                });
                continue;
            }
            let Some(d) = &p.deliver else {
                return Err(invalid(
                    key("deliver"),
                    "",
                    "missing",
                    "add a [provider.deliver] table with one of smtp, lmtp, maildir, command, splice",
                ));
            };
            let targets: Vec<(&str, &String)> = [
                ("smtp", &d.smtp),
                ("lmtp", &d.lmtp),
                ("maildir", &d.maildir),
                ("command", &d.command),
                ("splice", &d.splice),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
            .collect();
            let [(kind, value)] = targets[..] else {
                let set: Vec<&str> = targets.iter().map(|(k, _)| *k).collect();
                return Err(invalid(
                    key("deliver"),
                    &set.join(", "),
                    "exactly one delivery target is needed",
                    "keep one of smtp, lmtp, maildir, command, splice",
                ));
            };
            let endpoint = |v: &str| -> Result<Endpoint, ConfigError> {
                if let Some(path) = v.strip_prefix("unix:") {
                    return Ok(Endpoint::Unix(PathBuf::from(path)));
                }
                match v.rsplit_once(':') {
                    Some((h, port)) if !h.is_empty() && port.parse::<u16>().is_ok() => {
                        Ok(Endpoint::Tcp(v.to_string()))
                    }
                    _ => Err(invalid(
                        key(&format!("deliver.{kind}")),
                        v,
                        "not HOST:PORT or unix:/path",
                        "e.g. \"127.0.0.1:25\"",
                    )),
                }
            };
            let line_ends = match (d.line_ends.as_deref(), kind) {
                (None, _) => LineEnds::default(),
                (Some(v), "smtp" | "lmtp" | "splice") => {
                    return Err(invalid(
                        key("deliver.line_ends"),
                        v,
                        &format!("only for maildir and command: {kind} carries the message as SMTP does, with CRLF"),
                        "remove it",
                    ))
                }
                (Some("lf"), _) => LineEnds::Lf,
                (Some("crlf"), _) => LineEnds::Crlf,
                (Some(v), _) => {
                    return Err(invalid(
                        key("deliver.line_ends"),
                        v,
                        "unknown line end",
                        "use \"lf\" (the default: what Maildir readers, mbox tools and procmail expect) or \"crlf\" (the bytes as received over SMTP)",
                    ))
                }
            };
            // The templates are checked now, not at the first poll: a daemon that starts with
            // one that cannot work would fail at every poll instead.
            let template = |e: SinkError| match e {
                SinkError::Invalid {
                    key: k,
                    value,
                    problem,
                    fix,
                } => invalid(key(&format!("deliver.{k}")), &value, &problem, &fix),
                other => invalid(
                    key(&format!("deliver.{kind}")),
                    value,
                    &other.to_string(),
                    "check the value",
                ),
            };
            let deliver = match kind {
                "smtp" => Deliver::Smtp(endpoint(value)?),
                "lmtp" => Deliver::Lmtp(endpoint(value)?),
                "splice" => Deliver::Splice(endpoint(value)?),
                "maildir" => {
                    Maildir::new(value, 0).map_err(template)?;
                    Deliver::Maildir(value.clone())
                }
                _ => {
                    SinkCommand::new(value, 0).map_err(template)?;
                    Deliver::Command(value.clone())
                }
            };
            providers.push(Provider {
                name,
                host: p.host.clone(),
                port: p.port.unwrap_or(366),
                mode,
                user,
                password,
                domains: domains.clone(),
                tls,
                ca_file: p.ca_file.clone(),
                tls_verify: p.tls_verify.unwrap_or(true),
                tls_identity: tls_identity(&p.tls_cert, &p.tls_key)
                    .map_err(|(problem, fix)| invalid(key("tls_cert"), "", problem, fix))?,
                interval: dur("interval", &p.interval, 600, 1)?,
                timeout: dur("timeout", &p.timeout, 300, 1)?,
                // RFC 2645 §5.2.1: the customer MUST wait at least 10 minutes for the reply.
                atrn_timeout: dur("atrn_timeout", &p.atrn_timeout, 600, 600)?,
                deliver: Some(deliver),
                max_message_size: d.max_message_size.unwrap_or(50 * 1024 * 1024),
                line_ends,
            });
        }
        Ok(ClientConfig {
            path: path.to_path_buf(),
            hostname,
            providers,
        })
    }
}

/// How a bad domain is fixed; shown with what the parser found wrong.
const DOMAIN_FIX: &str =
    "write a domain name such as \"example.org\": letters, digits, hyphens and dots, at least two labels, no spaces";

/// What TLS will need at every poll, checked once at start-up: a host name the certificate can
/// be checked against, and the CA and client certificate files (read again at each poll, so a
/// renewed certificate is picked up). The error is (key, value, problem, fix).
fn check_tls(p: &RawProvider, tls: TlsMode) -> Result<(), (&'static str, String, String, String)> {
    if tls == TlsMode::None {
        return Ok(());
    }
    if let Err(e) = rustls_pki_types::ServerName::try_from(p.host.as_str()) {
        return Err((
            "host",
            p.host.clone(),
            format!("TLS cannot check a certificate against it ({e})"),
            "write the provider's host name as its certificate names it, e.g. \"odmr.example.net\", or an IP address"
                .into(),
        ));
    }
    if p.ca_file.is_none() && p.tls_cert.is_none() && p.tls_key.is_none() {
        return Ok(());
    }
    let Ok(identity) = tls_identity(&p.tls_cert, &p.tls_key) else {
        // Reported with its own message by the caller.
        return Ok(());
    };
    let identity = identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
    match client_connector(
        "ca_file",
        p.ca_file.as_deref(),
        p.tls_verify.unwrap_or(true),
        identity,
    ) {
        Ok(_) => Ok(()),
        Err(TlsError::File {
            key,
            path,
            problem,
            fix,
        }) => Err((key, path.display().to_string(), problem, fix.into())),
        Err(e) => Err((
            "ca_file",
            p.ca_file
                .as_ref()
                .map(|f| f.display().to_string())
                .unwrap_or_default(),
            e.to_string(),
            "check the certificate files".into(),
        )),
    }
}

/// Our client certificate and key: both or neither. The error is (problem, fix).
fn tls_identity(
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
) -> Result<Option<(PathBuf, PathBuf)>, (&'static str, &'static str)> {
    match (cert, key) {
        (Some(c), Some(k)) => Ok(Some((c.clone(), k.clone()))),
        (None, None) => Ok(None),
        _ => Err((
            "tls_cert and tls_key go together",
            "set both (PEM files), or neither",
        )),
    }
}

pub fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ClientConfig, ConfigError> {
        ClientConfig::parse(Path::new("client.toml"), s)
    }

    const OK: &str = r#"
[[provider]]
name = "isp"
host = "odmr.example.net"
port = 366
user = "example.org"
password = "pw"
domains = ["example.org"]
tls = "none"
interval = "10m"
[provider.deliver]
smtp = "127.0.0.1:25"
"#;

    #[test]
    fn accepts_the_documented_keys() {
        let c = parse(OK).unwrap();
        let p = &c.providers[0];
        assert_eq!(
            p.deliver,
            Some(Deliver::Smtp(Endpoint::Tcp("127.0.0.1:25".into())))
        );
        assert_eq!(p.interval, Duration::from_secs(600));
        assert_eq!(p.atrn_timeout, Duration::from_secs(600));
    }

    #[test]
    fn the_example_config_is_valid() {
        let text = include_str!("../../../../odmr-client.example.toml");
        // The trial's CA file is the provider's certificate, made at its first start; here one
        // made for the test stands in for it.
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("cert.pem");
        crate::net::tls::write_self_signed(&ca, &dir.path().join("key.pem"), &["localhost".into()]).unwrap();
        let trial = "ca_file = \"./odmr-tls/cert.pem\"";
        assert!(text.contains(trial), "the example trusts the trial certificate");
        let text = text.replace(trial, &format!("ca_file = {:?}", ca.display().to_string()));
        let c = parse(&text).unwrap();
        assert_eq!(c.providers[0].tls, TlsMode::StartTls);
        assert_eq!(c.providers[0].host, "localhost");
        assert_eq!(c.providers[0].port, 10366);
        assert_eq!(c.providers[0].user, "acme");
        assert_eq!(c.providers[0].mode, Mode::Atrn);
        // The commented ETRN provider is valid once uncommented (its password as a value, as
        // the file named does not exist here).
        let start = text
            .find("# [[provider]]\n# name = \"isp-etrn\"")
            .expect("the ETRN example");
        let etrn: String = text[start..]
            .lines()
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .map(|l| {
                if l.starts_with("password_file") {
                    "password = \"pw\""
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let c = parse(&format!("{text}\n{etrn}\n")).unwrap();
        let p = &c.providers[1];
        assert_eq!((p.mode, p.port, p.deliver.is_none()), (Mode::Etrn, 25, true));
        assert_eq!(p.domains, ["example.org", "example.com"]);
    }

    #[test]
    fn etrn_mode_needs_domains_takes_no_deliver_and_may_go_without_a_password() {
        let etrn = "[[provider]]\nmode = \"etrn\"\nhost = \"mx.example.net\"\ndomains = [\"example.org\"]\n";
        let c = parse(etrn).unwrap();
        let p = &c.providers[0];
        assert_eq!((p.mode, p.port), (Mode::Etrn, 25));
        assert!(p.password.is_empty() && p.user.is_empty() && p.deliver.is_none());
        let e = parse(&etrn.replace("[\"example.org\"]", "[]"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("provider[0].domains") && e.contains("list them"),
            "{e}"
        );
        let e = parse(&etrn.replace("example.org", "localhost"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("provider[0].domains") && e.contains("fully qualified"),
            "{e}"
        );
        let e = parse(&format!("{etrn}[provider.deliver]\nsmtp = \"127.0.0.1:25\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("provider[0].deliver") && e.contains("remove"), "{e}");
        let e = parse(&format!("{etrn}password = \"pw\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("provider[0].user"), "{e}");
        let e = parse(&etrn.replace("\"etrn\"", "\"turn\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("provider[0].mode") && e.contains("\"etrn\""), "{e}");
        // ATRN still needs its password and deliver target.
        let e = parse(&etrn.replace("mode = \"etrn\"\n", "user = \"u\"\npassword = \"p\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("provider[0].deliver") && e.contains("missing"), "{e}");
    }

    #[test]
    fn errors_name_key_and_fix() {
        let e = parse(&OK.replace("smtp = ", "lmtp = \"unix:/run/lmtp\"\nsmtp = "))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("provider[0].deliver") && e.contains("exactly one"),
            "{e}"
        );
        let e = parse(&OK.replace("127.0.0.1:25", "localhost"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("deliver.smtp") && e.contains("HOST:PORT"), "{e}");
        let e = parse(&OK.replace("password = \"pw\"", ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("provider[0].password"), "{e}");
        let e = parse(&OK.replace("tls = \"none\"", "tls = \"sometimes\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("provider[0].tls"), "{e}");
        let e = parse(&OK.replace("interval", "intervall"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("intervall"), "{e}");
    }

    #[test]
    fn line_ends_default_to_lf_and_apply_to_maildir_and_command_only() {
        let maildir = OK.replace(
            "smtp = \"127.0.0.1:25\"",
            "maildir = \"/var/mail/{domain}/{local}\"",
        );
        assert_eq!(parse(&maildir).unwrap().providers[0].line_ends, LineEnds::Lf);
        let crlf = format!("{maildir}line_ends = \"crlf\"\n");
        assert_eq!(parse(&crlf).unwrap().providers[0].line_ends, LineEnds::Crlf);
        let command = OK.replace(
            "smtp = \"127.0.0.1:25\"",
            "command = \"/usr/bin/procmail\"\nline_ends = \"lf\"",
        );
        assert_eq!(parse(&command).unwrap().providers[0].line_ends, LineEnds::Lf);
        let e = parse(&format!("{maildir}line_ends = \"cr\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("client.toml")
                && e.contains("provider[0].deliver.line_ends")
                && e.contains("\"crlf\""),
            "{e}"
        );
        let e = parse(&format!("{OK}line_ends = \"lf\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("provider[0].deliver.line_ends") && e.contains("only for maildir and command"),
            "{e}"
        );
    }

    /// What would fail at every poll is refused when the file is loaded, naming the file, the
    /// key and the fix.
    #[test]
    fn what_every_poll_would_trip_on_is_refused_at_load() {
        let with = |deliver: &str| OK.replace("smtp = \"127.0.0.1:25\"", deliver);
        let e = parse(&with("maildir = \"Maildir/{local}\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("config file client.toml: provider[0].deliver.maildir = \"Maildir/{local}\": not an absolute path"),
            "{e}"
        );
        assert!(e.contains("e.g. maildir = \"/var/mail/{domain}/{local}\""), "{e}");
        let e = parse(&with("maildir = \"/var/mail/{user}\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("provider[0].deliver.maildir") && e.contains("{user}") && e.contains("{local}"),
            "{e}"
        );
        let e = parse(&with("command = \"/usr/bin/deliver {rcpt}\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("provider[0].deliver.command") && e.contains("{rcpt}") && e.contains("e.g."),
            "{e}"
        );
        let e = parse(&with("command = \"/usr/bin/deliver 'unclosed\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("provider[0].deliver.command") && e.contains("quoting"),
            "{e}"
        );

        // TLS needs a host name a certificate can name, and readable certificate files.
        let starttls = OK.replace("tls = \"none\"", "tls = \"starttls\"");
        parse(&starttls).unwrap();
        let e = parse(&starttls.replace("\"odmr.example.net\"", "\"odmr example net\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("provider[0].host") && e.contains("certificate"), "{e}");
        let e = parse(&starttls.replace("interval", "ca_file = \"/nonexistent/ca.pem\"\ninterval"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("provider[0].ca_file") && e.contains("/nonexistent/ca.pem") && e.contains("PEM"),
            "{e}"
        );
        // Not checked when TLS is not used.
        parse(&OK.replace("interval", "ca_file = \"/nonexistent/ca.pem\"\ninterval")).unwrap();

        let e = parse(&format!("hostname = \"my host\"\n{OK}"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("hostname = \"my host\"") && e.contains("fully qualified"),
            "{e}"
        );
    }

    #[test]
    fn a_bad_domain_is_explained() {
        for mode in ["", "mode = \"etrn\"\n"] {
            let text = OK.replace("[\"example.org\"]", "[\"example.org\", \"not a domain\"]");
            let text = if mode.is_empty() {
                text
            } else {
                text.replace("[provider.deliver]\nsmtp = \"127.0.0.1:25\"\n", "")
                    .replace("name = \"isp\"\n", &format!("name = \"isp\"\n{mode}"))
            };
            let e = parse(&text).unwrap_err().to_string();
            assert!(
                e.contains("provider[0].domains = \"not a domain\"")
                    && e.contains("such as \"example.org\": letters, digits, hyphens and dots")
                    && e.contains("no spaces"),
                "{mode}: {e}"
            );
        }
    }

    #[test]
    fn a_server_config_gets_a_hint() {
        let server = include_str!("../../../../odmr.example.toml");
        let e = ClientConfig::parse(Path::new("/etc/odmr/odmr.toml"), server)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("config file /etc/odmr/odmr.toml: this looks like a server config (it has [store]")
                && e.contains("see odmr-client.example.toml")
                && e.contains("`odmr server --config /etc/odmr/odmr.toml`"),
            "{e}"
        );
        assert!(!e.contains("unknown field"), "{e}");
    }
}
