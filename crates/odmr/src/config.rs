//! The TOML configuration of `odmr server` (and of the operator commands, which only need
//! `[store]`).
//!
//! Every error names the file, the key and the fix: an operator reading the message at startup
//! should not need the source to know what to change. Unknown keys are errors, not silently
//! ignored: a typo must not quietly turn a setting off.

pub mod kind;

use odmr_store::StoreConfig;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {error}; pass an existing file with --config FILE")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: {key} = {value:?}: {problem}; {fix}")]
    Invalid {
        path: PathBuf,
        key: String,
        value: String,
        problem: String,
        fix: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Required; optional here so that its absence gets a message of ours: serde's "missing
    /// field" points at line 1, column 1, which is usually a comment.
    hostname: Option<String>,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    smtp: RawSmtp,
    #[serde(default)]
    odmr: RawOdmr,
    tls: Option<RawTls>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    queue: RawQueue,
    #[serde(default)]
    bounce: RawBounce,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    max_age: Option<String>,
    delay_warning: Option<String>,
    scan_interval: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBounce {
    relay: Option<String>,
    retry: Option<String>,
    max_return: Option<Size>,
    relay_tls: Option<String>,
    relay_tls_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    auth_lockout_after: Option<u32>,
    auth_lockout: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    #[serde(default)]
    self_signed: bool,
}

/// `url` (`sqlite:DIR`), or `path` (a directory: SQLite there), not both.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    url: Option<String>,
    path: Option<PathBuf>,
}

fn default_store_path() -> PathBuf {
    PathBuf::from("/var/lib/odmr")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSmtp {
    #[serde(default = "default_smtp_listen")]
    listen: Vec<String>,
    #[serde(default)]
    max_message_size: Option<Size>,
    #[serde(default)]
    max_recipients: Option<usize>,
    #[serde(default)]
    max_received_headers: Option<usize>,
    #[serde(default)]
    max_messages_per_session: Option<u64>,
    #[serde(default)]
    command_timeout: Option<String>,
    #[serde(default = "yes")]
    auth: bool,
    #[serde(default = "yes")]
    etrn: bool,
    #[serde(default)]
    etrn_connect_timeout: Option<String>,
    #[serde(default)]
    lookup_cache: Option<String>,
    #[serde(default)]
    etrn_tls: Option<String>,
    #[serde(default)]
    etrn_tls_ca_file: Option<PathBuf>,
}

impl Default for RawSmtp {
    fn default() -> Self {
        RawSmtp {
            listen: default_smtp_listen(),
            max_message_size: None,
            max_recipients: None,
            max_received_headers: None,
            max_messages_per_session: None,
            command_timeout: None,
            auth: true,
            etrn: true,
            etrn_connect_timeout: None,
            lookup_cache: None,
            etrn_tls: None,
            etrn_tls_ca_file: None,
        }
    }
}

fn default_smtp_listen() -> Vec<String> {
    vec!["0.0.0.0:25".into()]
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOdmr {
    #[serde(default = "default_odmr_listen")]
    listen: Vec<String>,
    #[serde(default)]
    listen_tls: Vec<String>,
    #[serde(default)]
    require_tls: bool,
    #[serde(default = "yes")]
    cram_md5: bool,
    #[serde(default)]
    command_timeout: Option<String>,
    #[serde(default)]
    reply_timeout: Option<String>,
    #[serde(default)]
    data_timeout: Option<String>,
    #[serde(default)]
    lease_ttl: Option<String>,
}

impl Default for RawOdmr {
    fn default() -> Self {
        RawOdmr {
            listen: default_odmr_listen(),
            listen_tls: Vec::new(),
            require_tls: false,
            cram_md5: true,
            command_timeout: None,
            reply_timeout: None,
            data_timeout: None,
            lease_ttl: None,
        }
    }
}

fn yes() -> bool {
    true
}

fn default_odmr_listen() -> Vec<String> {
    vec!["0.0.0.0:366".into()]
}

/// A size as a number of octets or a string with a unit: `52428800`, `"50MiB"`, `"50M"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Size {
    Octets(u64),
    Text(String),
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub hostname: String,
    /// `[store] url`, or `[store] path` (SQLite in that directory).
    pub store: StoreConfig,
    /// Which of the two set it (`"store.url"` or `"store.path"`), and its value as written: what
    /// an error opening the store names.
    store_key: &'static str,
    store_value: String,
    pub smtp: SmtpConfig,
    pub odmr: OdmrConfig,
    /// Certificate and key (PEM) for STARTTLS and the implicit-TLS listener.
    pub tls: Option<TlsFiles>,
    pub limits: crate::server::limits::Limits,
    pub queue: QueueConfig,
    pub bounce: BounceConfig,
}

/// How long mail is held, and when its sender hears about it.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Hold time before undelivered mail is returned to its sender (a domain may override it).
    pub max_age: Duration,
    /// When to tell the sender the mail is still waiting; `None`: never.
    pub delay_warning: Option<Duration>,
    /// How often expiry, notices and the relay queue are looked at.
    pub scan_interval: Duration,
}

/// Where delivery status notifications go.
#[derive(Debug, Clone)]
pub struct BounceConfig {
    /// `host:port` of the provider's outbound MTA; `None`: notices wait in the queue.
    pub relay: Option<String>,
    /// First wait after the relay could not take the notices; doubles up to 30 minutes.
    pub retry: Duration,
    /// A failed message larger than this is returned as its header section only.
    pub max_return: u64,
    /// TLS on the connection to the relay.
    pub relay_tls: TlsLevel,
    /// The CA certificates (PEM) that `relay_tls = "verify"` trusts instead of the system's.
    pub relay_tls_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA certificates for customers' client certificates (SASL EXTERNAL).
    pub client_ca: Option<PathBuf>,
    /// For trials: when neither `cert` nor `key` exists, make a self-signed pair there.
    pub self_signed: bool,
}

#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub listen: Vec<SocketAddr>,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_received_headers: usize,
    pub max_messages_per_session: u64,
    /// Idle time allowed between commands and between data blocks (RFC 5321 §4.5.3.2.7: ≥ 5 min).
    pub command_timeout: Duration,
    /// Offer AUTH on the MX: it identifies an account for ETRN, and never allows relaying.
    pub auth: bool,
    /// Offer ETRN (RFC 1985) on the MX.
    pub etrn: bool,
    /// How long an ETRN queue run may take to connect to the account's destination.
    pub etrn_connect_timeout: Duration,
    /// How long the MX reuses a recipient lookup (zero: never).
    pub lookup_cache: Duration,
    /// TLS on ETRN's outbound connections.
    pub etrn_tls: TlsLevel,
    /// The CA certificates (PEM) that `etrn_tls = "verify"` trusts instead of the system's.
    pub etrn_tls_ca_file: Option<PathBuf>,
}

/// STARTTLS (RFC 3207) on a connection the provider opens to deliver: an ETRN queue run's
/// (`smtp.etrn_tls`) and the notices' relay (`bounce.relay_tls`). Postfix's levels, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsLevel {
    /// Plaintext always.
    None,
    /// When the destination offers it, without checking its certificate (opportunistic,
    /// RFC 7435; Postfix's `may`); plaintext if it does not, or if TLS fails.
    May,
    /// Always, without checking the certificate: a destination without TLS gets no mail.
    Encrypt,
    /// Always, and the certificate must be valid for the destination's host name.
    Verify,
}

#[derive(Debug, Clone)]
pub struct OdmrConfig {
    pub listen: Vec<SocketAddr>,
    /// Implicit-TLS ODMR listeners (fetchmail's `ssl`).
    pub listen_tls: Vec<SocketAddr>,
    /// Answer 530 5.7.0 to everything but EHLO/STARTTLS/QUIT until TLS is active.
    pub require_tls: bool,
    /// Offer CRAM-MD5 (fetchmail's only mechanism).
    pub cram_md5: bool,
    /// Idle time allowed before ATRN (RFC 5321 §4.5.3.2.7).
    pub command_timeout: Duration,
    /// After the turnaround: how long to wait for the customer's greeting and each reply
    /// (RFC 5321 §4.5.3.2.1–3: ≥ 5 min).
    pub reply_timeout: Duration,
    /// After the final dot (RFC 5321 §4.5.3.2.6: ≥ 10 min).
    pub data_timeout: Duration,
    /// How long a per-domain delivery lease lives without renewal: the longest a domain stays
    /// locked (ATRN answered `451`) after the node holding it died. Sessions renew it every
    /// third of this.
    pub lease_ttl: Duration,
}

/// Default of `[odmr] lease_ttl`.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(60);
/// Bounds of `[odmr] lease_ttl`. Below the minimum a store write stalled by a busy disk could
/// outlast the renewal period and cut a healthy session short; above the maximum a crash would
/// lock a customer's mail out for longer than customers poll.
pub const LEASE_TTL_MIN: Duration = Duration::from_secs(5);
pub const LEASE_TTL_MAX: Duration = Duration::from_secs(60 * 60);
/// The longest the MX may reuse a recipient lookup: the longest a removed domain stays accepted.
pub const LOOKUP_CACHE_MAX: Duration = Duration::from_secs(5 * 60);

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            // A client config given to the server gets a hint, not "unknown field `provider`".
            kind::wrong_kind(path, text, kind::Kind::Server).unwrap_or_else(|| ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.to_string().trim_end().to_string(),
            })
        })?;
        let c = Check { path };
        let Some(raw_hostname) = raw.hostname.as_deref() else {
            return Err(ConfigError::Parse {
                path: path.to_path_buf(),
                // At the top: in TOML, a key after a [table] header belongs to that table.
                message: "hostname is missing; add hostname = \"odmr.example.net\" (this server's \
                          fully qualified name) at the top of the file"
                    .into(),
            });
        };
        let (store, store_key, store_value) = c.store(&raw.store)?;
        let hostname = raw_hostname.trim().to_string();
        if hostname.is_empty() || hostname.contains(char::is_whitespace) {
            return Err(c.invalid(
                "hostname",
                raw_hostname,
                "not a host name",
                "set it to this server's fully qualified name, e.g. \"odmr.example.net\"",
            ));
        }
        if raw.tls.is_none() && (!raw.odmr.listen_tls.is_empty() || raw.odmr.require_tls) {
            let key = if raw.odmr.require_tls {
                "odmr.require_tls"
            } else {
                "odmr.listen_tls"
            };
            return Err(c.invalid(
                key,
                "set",
                "needs a certificate",
                "add a [tls] table with cert = \"/path/fullchain.pem\" and key = \"/path/key.pem\"",
            ));
        }
        Ok(Config {
            limits: c.limits(&raw.limits)?,
            queue: c.queue(&raw.queue)?,
            bounce: c.bounce(&raw.bounce)?,
            tls: raw.tls.as_ref().map(|t| TlsFiles {
                cert: t.cert.clone(),
                key: t.key.clone(),
                client_ca: t.client_ca.clone(),
                self_signed: t.self_signed,
            }),
            path: path.to_path_buf(),
            hostname,
            store,
            store_key,
            store_value,
            smtp: c.smtp(&raw.smtp)?,
            odmr: c.odmr(&raw.odmr)?,
        })
    }

    /// The error for a store that cannot be opened, naming the key and the fix.
    pub fn store_error(&self, err: impl std::fmt::Display) -> ConfigError {
        // "[store] path" or "[store] url": the key the reader wrote.
        let key = format!("[store] {}", self.store_key.trim_start_matches("store."));
        let (problem, fix) = match self.store.local_dir() {
            // A file where the store's directory (or one above it) should be is not a question
            // of permissions: the system's "File exists" or "Not a directory" would send the
            // reader after the wrong fix.
            Some(dir) => match file_in_the_way(dir) {
                Some(file) => (
                    if file == dir {
                        "that is a file, not a directory".to_string()
                    } else {
                        format!("{} is a file, not a directory", file.display())
                    },
                    format!("point {key} at a directory (it is created if missing)"),
                ),
                None => (
                    format!("cannot open the store there ({err})"),
                    format!(
                        "make the directory writable by the user running odmr, or set {key} to another \
                         directory"
                    ),
                ),
            },
            None => (
                format!("cannot open the store ({err})"),
                format!("check that the store {key} names is reachable, and its credentials"),
            ),
        };
        ConfigError::Invalid {
            path: self.path.clone(),
            key: self.store_key.into(),
            value: self.store_value.clone(),
            problem,
            fix,
        }
    }
}

fn sec(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Checks the raw settings of one file, section by section; every error names the file, the
/// key, the value and the fix.
struct Check<'a> {
    path: &'a Path,
}

impl Check<'_> {
    fn invalid(&self, key: &str, value: &str, problem: &str, fix: &str) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            value: value.to_string(),
            problem: problem.to_string(),
            fix: fix.to_string(),
        }
    }

    fn addrs(&self, key: &str, list: &[String], example: &str) -> Result<Vec<SocketAddr>, ConfigError> {
        list.iter()
            .map(|a| {
                a.parse::<SocketAddr>().map_err(|_| {
                    self.invalid(
                        key,
                        a,
                        "not an IP:port address",
                        &format!("write it as IP:PORT, e.g. \"{example}\" (or \"[::]:PORT\" for IPv6)"),
                    )
                })
            })
            .collect()
    }

    fn dur(
        &self,
        key: &str,
        v: &Option<String>,
        default: Duration,
        min: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(s) = v else { return Ok(default) };
        let d = humantime::parse_duration(s).map_err(|e| {
            self.invalid(
                key,
                s,
                &e.to_string(),
                "write a duration such as \"5m\" or \"30s\"",
            )
        })?;
        if d < min {
            return Err(self.invalid(
                key,
                s,
                "too short",
                &format!("use at least {}", humantime::format_duration(min)),
            ));
        }
        Ok(d)
    }

    /// A duration that may also be no longer than `max` (`why` says what a longer one costs).
    fn dur_within(
        &self,
        key: &str,
        v: &Option<String>,
        (default, min, max): (Duration, Duration, Duration),
        why: &str,
    ) -> Result<Duration, ConfigError> {
        let d = self.dur(key, v, default, min)?;
        if d > max {
            return Err(self.invalid(
                key,
                v.as_deref().unwrap_or_default(),
                &format!("too long: {why}"),
                &format!("use at most {}", humantime::format_duration(max)),
            ));
        }
        Ok(d)
    }

    fn size(&self, key: &str, v: &Option<Size>, default: u64) -> Result<u64, ConfigError> {
        match v {
            None => Ok(default),
            Some(Size::Octets(n)) => Ok(*n),
            Some(Size::Text(t)) => parse_size(t).ok_or_else(|| {
                self.invalid(
                    key,
                    t,
                    "not a size",
                    "write a number of octets or a size such as \"50MiB\"",
                )
            }),
        }
    }

    /// A TLS level and its CA file (only with "verify").
    fn tls_level(
        &self,
        key: &str,
        v: &Option<String>,
        ca_key: &str,
        ca: &Option<PathBuf>,
    ) -> Result<TlsLevel, ConfigError> {
        let level = match v.as_deref().unwrap_or("may") {
            "none" => TlsLevel::None,
            "may" => TlsLevel::May,
            "encrypt" => TlsLevel::Encrypt,
            "verify" => TlsLevel::Verify,
            t => {
                return Err(self.invalid(
                    key,
                    t,
                    "unknown TLS level",
                    "use \"may\" (the default), \"encrypt\", \"verify\" or \"none\"",
                ))
            }
        };
        if let Some(ca) = ca {
            if level != TlsLevel::Verify {
                return Err(self.invalid(
                    ca_key,
                    &ca.display().to_string(),
                    &format!("only used with {key} = \"verify\""),
                    &format!("set {key} = \"verify\", or remove {ca_key}"),
                ));
            }
        }
        Ok(level)
    }

    /// `[store]`: the store's setting, the key it came from and its value (for errors).
    fn store(&self, raw: &RawStore) -> Result<(StoreConfig, &'static str, String), ConfigError> {
        match (&raw.url, &raw.path) {
            (Some(url), Some(path)) => Err(self.invalid(
                "store.url",
                url,
                &format!("store.path = {:?} is set too", path.display().to_string()),
                "keep one of them: path = \"DIR\" means url = \"sqlite:DIR\"",
            )),
            (Some(url), None) => {
                let store = StoreConfig::parse(url).map_err(|e| {
                    self.invalid(
                        "store.url",
                        url,
                        &e.to_string(),
                        "write sqlite: and the store's directory, e.g. \"sqlite:/var/lib/odmr\" \
                         (created if missing)",
                    )
                })?;
                Ok((store, "store.url", url.clone()))
            }
            (None, path) => {
                let path = path.clone().unwrap_or_else(default_store_path);
                let value = path.display().to_string();
                Ok((StoreConfig::sqlite(path), "store.path", value))
            }
        }
    }

    fn smtp(&self, raw: &RawSmtp) -> Result<SmtpConfig, ConfigError> {
        let max_message_size = self.size("smtp.max_message_size", &raw.max_message_size, 50 << 20)?;
        if max_message_size < 65536 {
            return Err(self.invalid(
                "smtp.max_message_size",
                &max_message_size.to_string(),
                "below the 64 KiB RFC 5321 §4.5.3.1.7 requires",
                "use at least 65536",
            ));
        }
        let max_recipients = raw.max_recipients.unwrap_or(100);
        if max_recipients < 100 {
            return Err(self.invalid(
                "smtp.max_recipients",
                &max_recipients.to_string(),
                "below the 100 recipients RFC 5321 §4.5.3.1.8 requires",
                "use at least 100",
            ));
        }
        Ok(SmtpConfig {
            listen: self.addrs("smtp.listen", &raw.listen, "0.0.0.0:25")?,
            max_message_size,
            max_recipients,
            max_received_headers: raw.max_received_headers.unwrap_or(100).max(1),
            max_messages_per_session: raw.max_messages_per_session.unwrap_or(10_000).max(1),
            command_timeout: self.dur("smtp.command_timeout", &raw.command_timeout, sec(300), sec(1))?,
            auth: raw.auth,
            etrn: raw.etrn,
            etrn_connect_timeout: self.dur(
                "smtp.etrn_connect_timeout",
                &raw.etrn_connect_timeout,
                sec(30),
                sec(1),
            )?,
            lookup_cache: self.dur_within(
                "smtp.lookup_cache",
                &raw.lookup_cache,
                (sec(1), sec(0), LOOKUP_CACHE_MAX),
                "a removed domain would still be accepted for that long",
            )?,
            etrn_tls: self.tls_level(
                "smtp.etrn_tls",
                &raw.etrn_tls,
                "smtp.etrn_tls_ca_file",
                &raw.etrn_tls_ca_file,
            )?,
            etrn_tls_ca_file: raw.etrn_tls_ca_file.clone(),
        })
    }

    fn odmr(&self, raw: &RawOdmr) -> Result<OdmrConfig, ConfigError> {
        Ok(OdmrConfig {
            listen: self.addrs("odmr.listen", &raw.listen, "0.0.0.0:366")?,
            listen_tls: self.addrs("odmr.listen_tls", &raw.listen_tls, "0.0.0.0:2366")?,
            require_tls: raw.require_tls,
            cram_md5: raw.cram_md5,
            command_timeout: self.dur("odmr.command_timeout", &raw.command_timeout, sec(300), sec(1))?,
            reply_timeout: self.dur("odmr.reply_timeout", &raw.reply_timeout, sec(300), sec(1))?,
            data_timeout: self.dur("odmr.data_timeout", &raw.data_timeout, sec(600), sec(1))?,
            lease_ttl: self.dur_within(
                "odmr.lease_ttl",
                &raw.lease_ttl,
                (DEFAULT_LEASE_TTL, LEASE_TTL_MIN, LEASE_TTL_MAX),
                "a crashed node would lock its domains out for that long",
            )?,
        })
    }

    fn queue(&self, raw: &RawQueue) -> Result<QueueConfig, ConfigError> {
        let delay_warning = match raw.delay_warning.as_deref() {
            Some("off") | Some("never") => None,
            _ => Some(self.dur("queue.delay_warning", &raw.delay_warning, sec(24 * 3600), sec(1))?),
        };
        Ok(QueueConfig {
            max_age: self.dur("queue.max_age", &raw.max_age, sec(7 * 86400), sec(1))?,
            delay_warning,
            scan_interval: self.dur(
                "queue.scan_interval",
                &raw.scan_interval,
                sec(15),
                Duration::from_millis(200),
            )?,
        })
    }

    fn bounce(&self, raw: &RawBounce) -> Result<BounceConfig, ConfigError> {
        if let Some(relay) = &raw.relay {
            let ok = relay
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                return Err(self.invalid(
                    "bounce.relay",
                    relay,
                    "not a host:port",
                    "write the outbound MTA as HOST:PORT, e.g. \"127.0.0.1:25\" or \"smtp.example.net:587\"",
                ));
            }
        }
        Ok(BounceConfig {
            relay: raw.relay.clone(),
            retry: self.dur("bounce.retry", &raw.retry, sec(60), Duration::from_millis(200))?,
            max_return: self.size("bounce.max_return", &raw.max_return, 10 << 20)?,
            relay_tls: self.tls_level(
                "bounce.relay_tls",
                &raw.relay_tls,
                "bounce.relay_tls_ca_file",
                &raw.relay_tls_ca_file,
            )?,
            relay_tls_ca_file: raw.relay_tls_ca_file.clone(),
        })
    }

    fn limits(&self, raw: &RawLimits) -> Result<crate::server::limits::Limits, ConfigError> {
        let d = crate::server::limits::Limits::default();
        Ok(crate::server::limits::Limits {
            max_connections: raw.max_connections.unwrap_or(d.max_connections).max(1),
            max_connections_per_ip: raw
                .max_connections_per_ip
                .unwrap_or(d.max_connections_per_ip)
                .max(1),
            auth_lockout_after: raw.auth_lockout_after.unwrap_or(d.auth_lockout_after).max(3),
            lockout: self.dur("limits.auth_lockout", &raw.auth_lockout, d.lockout, sec(1))?,
        })
    }
}

/// The nearest existing path among `dir` and its parents, if it is not a directory.
fn file_in_the_way(dir: &Path) -> Option<&Path> {
    for p in dir.ancestors() {
        // A path that cannot be looked at (missing, or below a file) says nothing: go up.
        if let Ok(m) = std::fs::metadata(p) {
            return (!m.is_dir()).then_some(p);
        }
    }
    None
}

/// A size with an optional binary unit: `1024`, `500k`, `10M`, `1G`, `50MiB` (K = 1024).
pub(crate) fn parse_size(t: &str) -> Option<u64> {
    let t = t.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("odmr.toml"), s)
    }

    #[test]
    fn a_client_config_gets_a_hint() {
        let client = include_str!("../../../odmr-client.example.toml");
        let e = parse(client).unwrap_err().to_string();
        assert!(
            e.contains("looks like a client config") && e.contains("odmr client --config odmr.toml"),
            "{e}"
        );
    }

    #[test]
    fn accepts_the_documented_keys() {
        let c = parse(
            r#"hostname = "odmr.example.net"
[store]
path = "/var/lib/odmr"
[smtp]
listen = ["0.0.0.0:25"]
[odmr]
listen = ["0.0.0.0:366"]
"#,
        )
        .unwrap();
        assert_eq!(c.smtp.max_message_size, 50 * 1024 * 1024);
        assert_eq!(c.odmr.listen[0].port(), 366);
    }

    /// serde would say "missing field `hostname`" at line 1, column 1, often a comment.
    #[test]
    fn a_missing_hostname_says_what_to_add_and_where() {
        let want = "config file odmr.toml: hostname is missing; add hostname = \"odmr.example.net\" \
                    (this server's fully qualified name) at the top of the file";
        for text in ["# odmr server\n[store]\npath = \"/var/lib/odmr\"\n", ""] {
            let e = parse(text).unwrap_err().to_string();
            assert_eq!(e, want, "{text:?}");
        }
        // Another mistake in the same file is still named first; so is a hostname put under a
        // table, with the line where it is.
        let e = parse("[smtp]\nlisen = []\n").unwrap_err().to_string();
        assert!(e.contains("lisen"), "{e}");
        let e = parse("[smtp]\nhostname = \"h.example\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("hostname") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("hostname = \"h.example\"\n[smtp]\nlisten = []\nlisen = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("odmr.toml") && e.contains("lisen"), "{e}");
    }

    #[test]
    fn bad_address_names_key_and_fix() {
        let e = parse("hostname = \"h.example\"\n[odmr]\nlisten = [\"366\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("odmr.listen") && e.contains("IP:PORT"), "{e}");
    }

    #[test]
    fn the_example_config_is_valid() {
        let c = parse(include_str!("../../../odmr.example.toml")).unwrap();
        assert_eq!(c.smtp.listen[0].port(), 10025);
        assert_eq!(c.limits.max_connections_per_ip, 20);
        assert!(c.smtp.auth && c.smtp.etrn);
        assert_eq!(c.smtp.etrn_connect_timeout, Duration::from_secs(30));
        assert_eq!(c.odmr.lease_ttl, DEFAULT_LEASE_TTL);
    }

    #[test]
    fn lookup_cache_defaults_to_a_second_and_is_bounded() {
        let base = "hostname = \"h.example\"\n[smtp]\n";
        assert_eq!(parse(base).unwrap().smtp.lookup_cache, Duration::from_secs(1));
        for (v, want) in [("0s", 0), ("5m", 300)] {
            let c = parse(&format!("{base}lookup_cache = \"{v}\"\n")).unwrap();
            assert_eq!(c.smtp.lookup_cache, Duration::from_secs(want), "{v}");
        }
        for (v, why) in [("6m", "at most 5m"), ("often", "duration")] {
            let e = parse(&format!("{base}lookup_cache = \"{v}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("smtp.lookup_cache") && e.contains(why), "{v}: {e}");
        }
    }

    #[test]
    fn outbound_tls_levels() {
        let base = "hostname = \"h.example\"\n[smtp]\n";
        assert_eq!(parse(base).unwrap().smtp.etrn_tls, TlsLevel::May);
        for (v, want) in [
            ("none", TlsLevel::None),
            ("may", TlsLevel::May),
            ("encrypt", TlsLevel::Encrypt),
            ("verify", TlsLevel::Verify),
        ] {
            let c = parse(&format!("{base}etrn_tls = \"{v}\"\n")).unwrap();
            assert_eq!(c.smtp.etrn_tls, want, "{v}");
        }
        let e = parse(&format!("{base}etrn_tls = \"yes\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("smtp.etrn_tls") && e.contains("\"may\""), "{e}");
        let c = parse(&format!(
            "{base}etrn_tls = \"verify\"\netrn_tls_ca_file = \"ca.pem\"\n"
        ))
        .unwrap();
        assert_eq!(c.smtp.etrn_tls_ca_file.as_deref(), Some(Path::new("ca.pem")));
        let e = parse(&format!("{base}etrn_tls_ca_file = \"ca.pem\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("smtp.etrn_tls_ca_file") && e.contains("verify"), "{e}");
        // The relay's level: the same words, its own keys.
        let bounce = "hostname = \"h.example\"\n[bounce]\n";
        assert_eq!(parse(bounce).unwrap().bounce.relay_tls, TlsLevel::May);
        let c = parse(&format!("{bounce}relay_tls = \"none\"\n")).unwrap();
        assert_eq!(c.bounce.relay_tls, TlsLevel::None);
        let e = parse(&format!("{bounce}relay_tls = \"always\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bounce.relay_tls") && e.contains("unknown TLS level"),
            "{e}"
        );
        let e = parse(&format!("{bounce}relay_tls_ca_file = \"ca.pem\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bounce.relay_tls_ca_file"), "{e}");
    }

    #[test]
    fn lease_ttl_is_bounded_and_named() {
        let base = "hostname = \"h.example\"\n[odmr]\n";
        assert_eq!(parse(base).unwrap().odmr.lease_ttl, DEFAULT_LEASE_TTL);
        let c = parse(&format!("{base}lease_ttl = \"90s\"\n")).unwrap();
        assert_eq!(c.odmr.lease_ttl, Duration::from_secs(90));
        for (v, want) in [("5s", 5), ("1h", 3600)] {
            let c = parse(&format!("{base}lease_ttl = \"{v}\"\n")).unwrap();
            assert_eq!(c.odmr.lease_ttl, Duration::from_secs(want), "{v}");
        }
        for (v, why) in [("4s", "at least 5s"), ("61m", "at most 1h"), ("soon", "duration")] {
            let e = parse(&format!("{base}lease_ttl = \"{v}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("odmr.lease_ttl") && e.contains(why), "{v}: {e}");
        }
    }

    #[test]
    fn queue_and_bounce_defaults_and_errors() {
        let c = parse("hostname = \"h.example\"\n").unwrap();
        assert_eq!(c.queue.max_age, Duration::from_secs(7 * 86400));
        assert_eq!(c.queue.delay_warning, Some(Duration::from_secs(86400)));
        assert_eq!(c.bounce.relay, None);
        assert_eq!(c.bounce.max_return, 10 << 20);
        let c = parse(
            "hostname = \"h.example\"\n[queue]\nmax_age = \"14d\"\ndelay_warning = \"off\"\n\
             [bounce]\nrelay = \"smtp.example.net:587\"\nmax_return = \"1M\"\n",
        )
        .unwrap();
        assert_eq!(c.queue.max_age, Duration::from_secs(14 * 86400));
        assert_eq!(c.queue.delay_warning, None);
        assert_eq!(c.bounce.relay.as_deref(), Some("smtp.example.net:587"));
        assert_eq!(c.bounce.max_return, 1 << 20);
        let e = parse("hostname = \"h.example\"\n[bounce]\nrelay = \"smtp.example.net\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bounce.relay") && e.contains("HOST:PORT"), "{e}");
        let e = parse("hostname = \"h.example\"\n[queue]\ndelay_warning = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("queue.delay_warning") && e.contains("duration"), "{e}");
    }

    #[test]
    fn the_store_is_a_url_or_a_path_not_both() {
        let c = parse("hostname = \"h.example\"\n").unwrap();
        assert_eq!(c.store, StoreConfig::sqlite("/var/lib/odmr"));
        let c = parse("hostname = \"h.example\"\n[store]\npath = \"/srv/odmr\"\n").unwrap();
        assert_eq!(c.store, StoreConfig::sqlite("/srv/odmr"));
        let c = parse("hostname = \"h.example\"\n[store]\nurl = \"sqlite:./odmr-data\"\n").unwrap();
        assert_eq!(c.store, StoreConfig::sqlite("./odmr-data"));
        assert_eq!(c.store.to_string(), "sqlite:./odmr-data");

        let e = parse("hostname = \"h.example\"\n[store]\nurl = \"sqlite:/a\"\npath = \"/b\"\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "config file odmr.toml: store.url = \"sqlite:/a\": store.path = \"/b\" is set too; keep one \
             of them: path = \"DIR\" means url = \"sqlite:DIR\""
        );
        let e = parse("hostname = \"h.example\"\n[store]\nurl = \"postgres://db/odmr\"\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "config file odmr.toml: store.url = \"postgres://db/odmr\": unknown scheme \"postgres\": the \
             supported ones are sqlite; write sqlite: and the store's directory, e.g. \
             \"sqlite:/var/lib/odmr\" (created if missing)"
        );
        for (url, why) in [
            ("/var/lib/odmr", "no scheme"),
            ("sqlite:", "no directory"),
            ("sqlite:///var/lib/odmr", "write \"sqlite:/var/lib/odmr\""),
        ] {
            let e = parse(&format!("hostname = \"h.example\"\n[store]\nurl = \"{url}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("store.url = {url:?}: ")) && e.contains(why),
                "{url}: {e}"
            );
        }
    }

    /// An error opening the store names the key that was set, with its value as written.
    #[test]
    fn an_unopenable_store_is_named_by_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let c = parse(&format!(
            "hostname = \"h.example\"\n[store]\nurl = \"sqlite:{}\"\n",
            file.display()
        ))
        .unwrap();
        let e = c.store_error("whatever").to_string();
        assert!(
            e.contains(&format!(
                "store.url = \"sqlite:{}\": that is a file",
                file.display()
            )) && e.ends_with("point [store] url at a directory (it is created if missing)"),
            "{e}"
        );
        let c = parse(&format!(
            "hostname = \"h.example\"\n[store]\npath = \"{}\"\n",
            dir.path().join("new").display()
        ))
        .unwrap();
        let e = c.store_error("disk on fire").to_string();
        assert!(
            e.contains("store.path = ")
                && e.contains("cannot open the store there (disk on fire)")
                && e.ends_with("or set [store] path to another directory"),
            "{e}"
        );
    }

    #[test]
    fn a_file_in_the_way_of_the_store_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        assert_eq!(file_in_the_way(&file), Some(file.as_path()));
        assert_eq!(file_in_the_way(&file.join("a/b")), Some(file.as_path()));
        assert_eq!(file_in_the_way(dir.path()), None);
        assert_eq!(file_in_the_way(&dir.path().join("new/store")), None);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("50MiB"), Some(50 << 20));
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("lots"), None);
        let c = parse("hostname = \"h.example\"\n[smtp]\nmax_message_size = \"1M\"\n").unwrap();
        assert_eq!(c.smtp.max_message_size, 1 << 20);
    }
}
