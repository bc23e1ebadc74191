//! The provider's ODMR front half (RFC 2645 §5.1–5.2): greeting, EHLO, AUTH, ATRN.
//!
//! Invariants:
//! - **Authenticated only after the 235 line is written** (RFC 2645 §5.1.2): the state changes in
//!   the same step that queues the 235.
//! - **Every ATRN reply is a single line**: fetchmail reads one line and then relays bytes.
//! - **Nothing leaks through ATRN**: an unknown domain and another customer's domain get the same
//!   450 text (PROTOCOL.md §2.13).
//! - **Turnaround keeps buffered input**: after the 250 the machine stops consuming input and
//!   returns [`OdmrStep::Turnaround`]; whatever is still in the buffer is the start of the
//!   customer's greeting and belongs to the delivering client.
//! - **STARTTLS drops buffered input** (as in [`crate::smtp_server`]): after the 220 the machine
//!   returns [`OdmrStep::StartTls`] and consumes nothing until [`OdmrSession::tls_started`].
//! - No ENHANCEDSTATUSCODES and no PIPELINING here (PROTOCOL.md §2.4), so replies carry no
//!   enhanced codes.

use crate::atrn::parse_atrn_args;
use crate::line::{split_verb, Line, LineReader};
use crate::reply::Reply;
use crate::sasl::cram_md5::{self, CramSecret};
use crate::sasl::plain::{self, LOGIN_PASS_CHALLENGE, LOGIN_USER_CHALLENGE};
use crate::sasl::scram::{self, ScramServer, ScramVerifier};
use base64::Engine;
use bytes::BytesMut;

/// Command lines before AUTH; AUTH exchange lines may be longer (RFC 4954 §4).
const MAX_COMMAND_LINE: usize = 1024;
const MAX_AUTH_LINE: usize = 12288;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(Debug, Clone)]
pub struct OdmrConfig {
    pub hostname: String,
    /// After this many refused commands (5xx) the session ends with 421.
    pub max_errors: usize,
    /// After this many failed AUTH attempts the session ends with 421 (RFC 4954 §9: not
    /// before 3).
    pub max_auth_failures: usize,
    /// Salt source for unknown users in SCRAM, stable per server so that an unknown user looks
    /// like a known one (random at startup).
    pub decoy_secret: Vec<u8>,
    /// Offer STARTTLS (a certificate is configured and TLS is not active yet).
    pub starttls: bool,
    /// Refuse everything but EHLO, HELO, NOOP, RSET, STARTTLS and QUIT until TLS is active.
    pub require_tls: bool,
    /// Offer CRAM-MD5 (RFC 2645 makes it mandatory to implement; a site using stronger
    /// mechanisms may switch it off).
    pub cram_md5: bool,
}

impl OdmrConfig {
    pub fn new(hostname: impl Into<String>) -> Self {
        OdmrConfig {
            hostname: hostname.into(),
            max_errors: 20,
            max_auth_failures: 5,
            decoy_secret: b"odmr".to_vec(),
            starttls: false,
            require_tls: false,
            cram_md5: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OdmrStep {
    NeedInput,
    /// Fetch the CRAM-MD5 secret of `user`, then call [`OdmrSession::secret`].
    LookupSecret {
        user: String,
    },
    /// Fetch the SCRAM-SHA-256 verifier of `user`, then call [`OdmrSession::scram_verifier`].
    LookupScram {
        user: String,
    },
    /// SASL EXTERNAL: map the TLS client certificate to an account (which must equal `authzid`
    /// when that is not empty), then call [`OdmrSession::external_result`].
    External {
        authzid: String,
    },
    /// Check a password given with PLAIN or LOGIN (only ever under TLS), then call
    /// [`OdmrSession::password_checked`].
    CheckPassword {
        user: String,
        password: String,
    },
    /// Decide on ATRN for the authenticated `account`; `domains` is empty for a bare ATRN
    /// (meaning all of the account's domains). Answer with [`OdmrSession::atrn_decision`].
    Atrn {
        account: String,
        domains: Vec<String>,
    },
    /// The 250 is in the output: flush it, then run the delivering client on the same stream
    /// with the remaining input.
    Turnaround,
    /// The 220 to STARTTLS is in the output: flush it, refuse to go on if input is buffered,
    /// handshake, then call [`OdmrSession::tls_started`].
    StartTls,
    Close,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AtrnDecision {
    /// Mail is queued and the lease is held.
    Granted,
    /// A requested domain is not the account's (or the account has none): 450.
    Refused,
    /// No mail for the domains: 453.
    NoMail,
    /// A domain is being delivered by another session: 451.
    Busy,
    /// The store could not answer: 451.
    TempError,
}

enum Exchange {
    Cram {
        challenge: String,
    },
    /// SCRAM, waiting for client-first.
    Scram(Box<ScramServer>),
    /// SCRAM, waiting for client-final.
    ScramFinal(Box<ScramServer>),
    /// SCRAM's server-final was sent; the client answers with an empty line.
    ScramDone {
        user: String,
    },
    Plain,
    External,
    LoginUser,
    LoginPass {
        user: String,
    },
}

enum ExKind {
    ScramFirst,
    Other,
}

enum State {
    Initial,
    /// A SASL exchange waiting for the client's next line.
    Sasl(Exchange),
    /// SCRAM: waiting for the driver's verifier.
    AwaitScram(Box<ScramServer>),
    /// PLAIN/LOGIN: waiting for the driver's password check.
    AwaitPassword {
        user: String,
    },
    /// EXTERNAL: waiting for the driver's certificate mapping.
    AwaitExternal,
    AwaitSecret {
        user: String,
        challenge: String,
        digest: [u8; 16],
    },
    Authenticated {
        account: String,
    },
    AwaitAtrn {
        account: String,
    },
    Turned,
    Tls,
    Closed,
}

pub struct OdmrSession {
    cfg: OdmrConfig,
    out: Vec<u8>,
    lines: LineReader,
    state: State,
    pending: Option<OdmrStep>,
    seed: u64,
    unix_time: u64,
    attempts: u64,
    auth_failures: usize,
    errors: usize,
    tls: bool,
    client_cert: bool,
    mechanism: Option<String>,
}

impl OdmrSession {
    /// `seed` must be random per session (it makes CRAM-MD5 challenges unique); `unix_time` is
    /// the current time, also part of the challenge. The 220 greeting is already in the output.
    pub fn new(cfg: OdmrConfig, seed: u64, unix_time: u64) -> Self {
        let mut s = OdmrSession {
            out: Vec::with_capacity(512),
            lines: LineReader::new(MAX_COMMAND_LINE),
            state: State::Initial,
            pending: None,
            seed,
            unix_time,
            attempts: 0,
            auth_failures: 0,
            errors: 0,
            tls: false,
            client_cert: false,
            mechanism: None,
            cfg,
        };
        let host = s.cfg.hostname.clone();
        s.reply(220, format!("{host} ESMTP ODMR service ready"));
        s
    }

    pub fn output(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// The TLS handshake after STARTTLS succeeded: back to the initial state, without a new
    /// greeting (RFC 3207 §4.2).
    pub fn tls_started(&mut self) {
        self.tls = true;
        self.state = State::Initial;
    }

    /// The connection is TLS from the start (the implicit-TLS listener).
    pub fn set_tls(&mut self) {
        self.tls = true;
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The SASL mechanism of the last AUTH command (for logs).
    pub fn mechanism(&self) -> Option<&str> {
        self.mechanism.as_deref()
    }

    /// The TLS handshake produced a verified client certificate: offer EXTERNAL.
    pub fn set_client_cert(&mut self) {
        self.client_cert = true;
    }

    /// The authenticated account, if any.
    pub fn account(&self) -> Option<&str> {
        match &self.state {
            State::Authenticated { account } | State::AwaitAtrn { account } => Some(account),
            _ => None,
        }
    }

    fn reply(&mut self, code: u16, text: impl Into<String>) {
        if code >= 500 {
            self.errors += 1;
        }
        Reply::new(code, "", text).write(&mut self.out, false);
    }

    pub fn poll(&mut self, input: &mut BytesMut) -> OdmrStep {
        if let Some(p) = &self.pending {
            return p.clone();
        }
        loop {
            match &self.state {
                State::Closed => return OdmrStep::Close,
                State::Turned => return OdmrStep::Turnaround,
                State::Tls => return OdmrStep::StartTls,
                State::AwaitSecret { .. }
                | State::AwaitScram(_)
                | State::AwaitPassword { .. }
                | State::AwaitExternal
                | State::AwaitAtrn { .. } => return OdmrStep::NeedInput,
                _ => {}
            }
            if self.errors > self.cfg.max_errors {
                let host = self.cfg.hostname.clone();
                self.reply(421, format!("{host} too many errors, closing"));
                self.state = State::Closed;
                return OdmrStep::Close;
            }
            let line = match self.lines.next_line(input) {
                None => return OdmrStep::NeedInput,
                Some(Line::TooLong) => {
                    if matches!(self.state, State::Sasl(_)) {
                        self.state = State::Initial;
                        self.lines.set_max(MAX_COMMAND_LINE);
                    }
                    self.reply(500, "Line too long");
                    continue;
                }
                Some(Line::BareLf) => {
                    self.reply(500, "Bare LF is not allowed; end lines with CRLF");
                    continue;
                }
                Some(Line::Ok(l)) => l,
            };
            let step = match std::mem::replace(&mut self.state, State::Initial) {
                State::Sasl(ex) => self.sasl_line(&line, ex),
                other => {
                    self.state = other;
                    self.command(&line)
                }
            };
            if let Some(step) = step {
                match step {
                    OdmrStep::Close => self.state = State::Closed,
                    OdmrStep::Turnaround => self.state = State::Turned,
                    OdmrStep::StartTls => self.state = State::Tls,
                    _ => self.pending = Some(step.clone()),
                }
                return step;
            }
        }
    }

    fn command(&mut self, line: &[u8]) -> Option<OdmrStep> {
        if line.iter().any(|&b| b == 0 || b == b'\r') {
            self.reply(500, "NUL or bare CR in command");
            return None;
        }
        let (verb, args) = split_verb(line);
        let args = String::from_utf8_lossy(args).trim().to_string();
        let authed = self.account().map(str::to_string);
        let before_tls = self.cfg.require_tls && !self.tls;
        if before_tls
            && !matches!(
                verb.as_str(),
                "EHLO" | "HELO" | "NOOP" | "RSET" | "STARTTLS" | "QUIT"
            )
        {
            // RFC 3207 §4, with the enhanced code in the text as we offer no ENHANCEDSTATUSCODES.
            self.reply(530, "5.7.0 Must issue a STARTTLS command first");
            return None;
        }
        match verb.as_str() {
            "EHLO" => {
                if args.is_empty() {
                    self.reply(501, "Syntax: EHLO hostname");
                    return None;
                }
                // Names without a dot are fine: fetchmail sends the bare host name.
                let mut lines = vec![format!("{} greets {}", self.cfg.hostname, args)];
                if authed.is_none() && !before_tls {
                    // PLAIN and LOGIN only under TLS (RFC 4954 §4, §14).
                    let mut mechs = vec!["AUTH"];
                    if self.tls && self.client_cert {
                        mechs.push("EXTERNAL");
                    }
                    mechs.push("SCRAM-SHA-256");
                    if self.cfg.cram_md5 {
                        mechs.push("CRAM-MD5");
                    }
                    if self.tls {
                        mechs.extend(["PLAIN", "LOGIN"]);
                    }
                    lines.push(mechs.join(" "));
                }
                if self.cfg.starttls && !self.tls && authed.is_none() {
                    lines.push("STARTTLS".into());
                }
                lines.push("ATRN".into());
                lines.push("HELP".into());
                Reply::multi(250, lines).write(&mut self.out, false);
            }
            "HELO" => {
                if args.is_empty() {
                    self.reply(501, "Syntax: HELO hostname");
                } else {
                    let host = self.cfg.hostname.clone();
                    self.reply(250, host);
                }
            }
            "AUTH" => return self.auth(&args),
            "ATRN" => {
                let Some(account) = authed else {
                    self.reply(530, "Authentication required");
                    return None;
                };
                match parse_atrn_args(&args) {
                    Ok(domains) => {
                        self.state = State::AwaitAtrn {
                            account: account.clone(),
                        };
                        return Some(OdmrStep::Atrn { account, domains });
                    }
                    Err(e) => self.reply(501, format!("Syntax: ATRN [domain[,domain]...]: {e}")),
                }
            }
            "NOOP" | "RSET" => self.reply(250, "OK"),
            "HELP" => self.reply(214, "ODMR (RFC 2645): EHLO, AUTH CRAM-MD5, ATRN [domains], QUIT"),
            "QUIT" => {
                let host = self.cfg.hostname.clone();
                self.reply(221, format!("{host} closing connection"));
                return Some(OdmrStep::Close);
            }
            "STARTTLS" if self.cfg.starttls && !self.tls && authed.is_none() => {
                if args.is_empty() {
                    self.reply(220, "Ready to start TLS");
                    return Some(OdmrStep::StartTls);
                }
                self.reply(501, "STARTTLS takes no arguments");
            }
            "STARTTLS" if self.tls || authed.is_some() => self.reply(503, "STARTTLS not allowed now"),
            "MAIL" | "RCPT" | "DATA" | "BDAT" | "VRFY" | "EXPN" | "ETRN" | "TURN" | "STARTTLS" => {
                self.reply(502, format!("{verb} not implemented on the ODMR service"))
            }
            _ => self.reply(500, "Command unrecognized"),
        }
        None
    }

    fn auth(&mut self, args: &str) -> Option<OdmrStep> {
        if self.account().is_some() {
            self.reply(503, "Already authenticated");
            return None;
        }
        let mut parts = args.split_whitespace();
        let mech = parts.next().unwrap_or("").to_ascii_uppercase();
        let initial = parts.next();
        if mech.is_empty() {
            self.reply(501, "Syntax: AUTH mechanism");
            return None;
        }
        self.attempts += 1;
        self.mechanism = Some(mech.clone());
        let initial = match initial.map(|i| if i == "=" { Ok(Vec::new()) } else { B64.decode(i) }) {
            Some(Ok(b)) => Some(b),
            Some(Err(_)) => {
                self.reply(501, "Invalid base64 data");
                return None;
            }
            None => None,
        };
        match mech.as_str() {
            "CRAM-MD5" if self.cfg.cram_md5 => {}
            "SCRAM-SHA-256" => {
                let mut nonce_seed = self.seed.to_le_bytes().to_vec();
                nonce_seed.extend_from_slice(&self.unix_time.to_le_bytes());
                nonce_seed.extend_from_slice(&self.attempts.to_le_bytes());
                let server = ScramServer::new(&scram::make_nonce(&nonce_seed))
                    .with_decoy_secret(&self.cfg.decoy_secret);
                return self.sasl_start(initial, "", Exchange::Scram(Box::new(server)));
            }
            "PLAIN" | "LOGIN" if !self.tls => {
                self.reply(504, "Mechanism available only after STARTTLS");
                return None;
            }
            "PLAIN" => return self.sasl_start(initial, "", Exchange::Plain),
            "EXTERNAL" if self.tls && self.client_cert => {
                return self.sasl_start(initial, "", Exchange::External)
            }
            "LOGIN" => return self.sasl_start(initial, LOGIN_USER_CHALLENGE, Exchange::LoginUser),
            _ => {
                self.reply(504, "Unrecognized authentication type");
                return None;
            }
        }
        if initial.is_some() {
            // CRAM-MD5 is server-first (RFC 4954 §4).
            self.reply(501, "CRAM-MD5 does not take an initial response");
            return None;
        }
        let challenge = cram_md5::make_challenge(
            self.seed.wrapping_add(self.attempts),
            self.unix_time,
            &self.cfg.hostname,
        );
        let enc = B64.encode(challenge.as_bytes());
        self.reply(334, enc);
        self.lines.set_max(MAX_AUTH_LINE);
        self.state = State::Sasl(Exchange::Cram { challenge });
        None
    }

    /// Begin a client-first exchange: use the initial response, or ask for it.
    fn sasl_start(&mut self, initial: Option<Vec<u8>>, prompt: &str, ex: Exchange) -> Option<OdmrStep> {
        match initial {
            Some(data) => self.sasl_data(&data, ex),
            None => {
                self.reply(334, prompt.to_string());
                self.lines.set_max(MAX_AUTH_LINE);
                self.state = State::Sasl(ex);
                None
            }
        }
    }

    /// One line of a SASL exchange from the client.
    fn sasl_line(&mut self, line: &[u8], ex: Exchange) -> Option<OdmrStep> {
        self.lines.set_max(MAX_COMMAND_LINE);
        if line == b"*" {
            self.reply(501, "Authentication cancelled");
            return None;
        }
        let Ok(decoded) = B64.decode(line) else {
            self.reply(501, "Invalid base64 data");
            return None;
        };
        self.sasl_data(&decoded, ex)
    }

    /// Decoded client data for the exchange `ex`.
    fn sasl_data(&mut self, decoded: &[u8], ex: Exchange) -> Option<OdmrStep> {
        self.state = State::Initial;
        let continue_with = |s: &mut Self, text: String, ex: Exchange| {
            s.reply(334, text);
            s.lines.set_max(MAX_AUTH_LINE);
            s.state = State::Sasl(ex);
            None
        };
        let ex_kind = if matches!(ex, Exchange::Scram(_)) {
            ExKind::ScramFirst
        } else {
            ExKind::Other
        };
        match ex {
            Exchange::Cram { challenge } => self.cram_response(decoded, challenge),
            Exchange::Scram(mut server) | Exchange::ScramFinal(mut server) => {
                let step = if matches!(ex_kind, ExKind::ScramFirst) {
                    server.client_first(decoded)
                } else {
                    server.client_final(decoded)
                };
                match step {
                    scram::ServerStep::LookupUser(user) => {
                        self.state = State::AwaitScram(server);
                        Some(OdmrStep::LookupScram { user })
                    }
                    scram::ServerStep::Final(v) => {
                        let user = server.user().unwrap_or_default().to_string();
                        continue_with(self, B64.encode(v), Exchange::ScramDone { user })
                    }
                    scram::ServerStep::Challenge(_) | scram::ServerStep::Failed(_) => self.auth_failed(),
                }
            }
            Exchange::ScramDone { user } => {
                if decoded.is_empty() {
                    self.reply(235, "Authentication successful");
                    self.state = State::Authenticated { account: user };
                    None
                } else {
                    self.auth_failed()
                }
            }
            Exchange::Plain => match plain::parse_plain(decoded) {
                Ok(c) => {
                    self.state = State::AwaitPassword { user: c.user.clone() };
                    Some(OdmrStep::CheckPassword {
                        user: c.user,
                        password: c.password,
                    })
                }
                Err(_) => self.auth_failed(),
            },
            Exchange::External => match std::str::from_utf8(decoded) {
                Ok(authzid) if !authzid.contains('\0') => {
                    self.state = State::AwaitExternal;
                    Some(OdmrStep::External {
                        authzid: authzid.to_string(),
                    })
                }
                _ => self.auth_failed(),
            },
            Exchange::LoginUser => match plain::parse_login_user(decoded) {
                Ok(user) => continue_with(self, LOGIN_PASS_CHALLENGE.into(), Exchange::LoginPass { user }),
                Err(_) => self.auth_failed(),
            },
            Exchange::LoginPass { user } => match plain::parse_login_password(decoded) {
                Ok(password) => {
                    self.state = State::AwaitPassword { user: user.clone() };
                    Some(OdmrStep::CheckPassword { user, password })
                }
                Err(_) => self.auth_failed(),
            },
        }
    }

    /// The driver's answer to [`OdmrStep::LookupScram`].
    pub fn scram_verifier(&mut self, v: Option<ScramVerifier>) {
        let State::AwaitScram(mut server) = std::mem::replace(&mut self.state, State::Initial) else {
            return;
        };
        self.pending = None;
        match server.verifier(v) {
            scram::ServerStep::Challenge(first) => {
                self.reply(334, B64.encode(first));
                self.lines.set_max(MAX_AUTH_LINE);
                self.state = State::Sasl(Exchange::ScramFinal(server));
            }
            _ => {
                if self.auth_failed().is_some() {
                    self.state = State::Closed;
                }
            }
        }
    }

    /// The driver's answer to [`OdmrStep::External`]: the account the certificate maps to (and
    /// that the authzid, if any, names), or `None`.
    pub fn external_result(&mut self, account: Option<String>) -> bool {
        if !matches!(self.state, State::AwaitExternal) {
            return false;
        }
        self.pending = None;
        self.state = State::Initial;
        match account {
            Some(a) => {
                self.reply(235, "Authentication successful");
                self.state = State::Authenticated { account: a };
                true
            }
            None => {
                if self.auth_failed().is_some() {
                    self.state = State::Closed;
                }
                false
            }
        }
    }

    /// The driver's answer to [`OdmrStep::CheckPassword`]. Returns whether it succeeded.
    pub fn password_checked(&mut self, ok: bool) -> bool {
        let State::AwaitPassword { user } = std::mem::replace(&mut self.state, State::Initial) else {
            return false;
        };
        self.pending = None;
        if ok {
            self.reply(235, "Authentication successful");
            self.state = State::Authenticated { account: user };
        } else if self.auth_failed().is_some() {
            self.state = State::Closed;
        }
        ok
    }

    fn cram_response(&mut self, decoded: &[u8], challenge: String) -> Option<OdmrStep> {
        match cram_md5::parse_response(decoded) {
            Ok((user, digest)) => {
                self.state = State::AwaitSecret {
                    user: user.clone(),
                    challenge,
                    digest,
                };
                Some(OdmrStep::LookupSecret { user })
            }
            Err(_) => self.auth_failed(),
        }
    }

    fn auth_failed(&mut self) -> Option<OdmrStep> {
        self.auth_failures += 1;
        // 535 counts as an auth failure, not a protocol error.
        Reply::new(535, "", "Authentication credentials invalid").write(&mut self.out, false);
        if self.auth_failures >= self.cfg.max_auth_failures.max(3) {
            let host = self.cfg.hostname.clone();
            self.reply(421, format!("{host} too many authentication failures, closing"));
            return Some(OdmrStep::Close);
        }
        None
    }

    /// The driver's answer to [`OdmrStep::LookupSecret`]: the stored secret, or `None` for an
    /// unknown account. Returns whether authentication succeeded.
    pub fn secret(&mut self, secret: Option<CramSecret>) -> bool {
        let State::AwaitSecret {
            user,
            challenge,
            digest,
        } = std::mem::replace(&mut self.state, State::Initial)
        else {
            return false;
        };
        self.pending = None;
        let ok = secret.is_some_and(|s| cram_md5::verify(&s, challenge.as_bytes(), &digest));
        if ok {
            self.reply(235, "Authentication successful");
            self.state = State::Authenticated { account: user };
        } else if self.auth_failed().is_some() {
            self.state = State::Closed;
        }
        ok
    }

    /// The driver's answer to [`OdmrStep::LookupSecret`] when it will not check the credentials
    /// now (too many recent failures): a temporary refusal, 454 (RFC 4954 §4).
    pub fn auth_temporary_failure(&mut self) {
        if matches!(
            self.state,
            State::AwaitSecret { .. }
                | State::AwaitScram(_)
                | State::AwaitPassword { .. }
                | State::AwaitExternal
        ) {
            self.pending = None;
            self.state = State::Initial;
            self.reply(
                454,
                "4.7.0 Temporary authentication failure: too many failures, try again later",
            );
        }
    }

    /// The driver's answer to [`OdmrStep::Atrn`].
    pub fn atrn_decision(&mut self, decision: AtrnDecision) {
        let State::AwaitAtrn { account } = std::mem::replace(&mut self.state, State::Initial) else {
            return;
        };
        self.pending = None;
        self.state = State::Authenticated { account };
        match decision {
            AtrnDecision::Granted => {
                self.reply(250, "OK now reversing the connection");
                self.state = State::Turned;
            }
            AtrnDecision::Refused => self.reply(450, "ATRN request refused"),
            AtrnDecision::NoMail => self.reply(453, "You have no mail"),
            AtrnDecision::Busy => self.reply(
                451,
                "Unable to process ATRN request now: delivery already in progress",
            ),
            AtrnDecision::TempError => self.reply(451, "Unable to process ATRN request now"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authed() -> (OdmrSession, BytesMut) {
        let mut s = OdmrSession::new(OdmrConfig::new("odmr.example.net"), 7, 1_800_000_000);
        let mut input = BytesMut::from("EHLO c\r\nAUTH CRAM-MD5\r\n");
        assert_eq!(s.poll(&mut input), OdmrStep::NeedInput);
        let out = String::from_utf8(std::mem::take(s.output())).unwrap();
        let b64 = out.lines().last().unwrap().strip_prefix("334 ").unwrap();
        let challenge = B64.decode(b64).unwrap();
        let resp = cram_md5::client_response("acme", b"pw", &challenge);
        input.extend_from_slice(format!("{}\r\n", B64.encode(resp)).as_bytes());
        assert_eq!(s.poll(&mut input), OdmrStep::LookupSecret { user: "acme".into() });
        // Not authenticated until the 235 is written.
        assert_eq!(s.account(), None);
        assert!(s.secret(Some(CramSecret::from_password(b"pw"))));
        assert_eq!(s.account(), Some("acme"));
        assert_eq!(s.output().as_slice(), b"235 Authentication successful\r\n");
        s.output().clear();
        (s, input)
    }

    #[test]
    fn turnaround_keeps_the_bytes_already_buffered() {
        let (mut s, mut input) = authed();
        input.extend_from_slice(b"ATRN example.org\r\n220 customer ready\r\n");
        assert_eq!(
            s.poll(&mut input),
            OdmrStep::Atrn {
                account: "acme".into(),
                domains: vec!["example.org".into()]
            }
        );
        s.atrn_decision(AtrnDecision::Granted);
        assert_eq!(s.poll(&mut input), OdmrStep::Turnaround);
        assert_eq!(s.output().as_slice(), b"250 OK now reversing the connection\r\n");
        assert_eq!(&input[..], b"220 customer ready\r\n");
    }

    #[test]
    fn every_atrn_reply_is_one_line() {
        for (d, want) in [
            (AtrnDecision::Refused, "450 "),
            (AtrnDecision::NoMail, "453 "),
            (AtrnDecision::Busy, "451 "),
            (AtrnDecision::TempError, "451 "),
        ] {
            let (mut s, mut input) = authed();
            input.extend_from_slice(b"ATRN\r\n");
            assert!(matches!(s.poll(&mut input), OdmrStep::Atrn { ref domains, .. } if domains.is_empty()));
            s.atrn_decision(d);
            let out = String::from_utf8(std::mem::take(s.output())).unwrap();
            assert!(
                out.starts_with(want) && out.matches("\r\n").count() == 1,
                "{out:?}"
            );
            // Still authenticated: another ATRN is allowed.
            assert_eq!(s.account(), Some("acme"));
        }
    }

    #[test]
    fn repeated_auth_failures_close_after_the_limit_but_not_before_three() {
        let mut s = OdmrSession::new(OdmrConfig::new("h"), 1, 1);
        let mut input = BytesMut::new();
        for i in 1..=5 {
            input.extend_from_slice(b"AUTH CRAM-MD5\r\n");
            assert_eq!(s.poll(&mut input), OdmrStep::NeedInput);
            input.extend_from_slice(
                format!("{}\r\n", B64.encode("acme 00000000000000000000000000000000")).as_bytes(),
            );
            assert_eq!(s.poll(&mut input), OdmrStep::LookupSecret { user: "acme".into() });
            assert!(!s.secret(None));
            let step = s.poll(&mut input);
            if i < 5 {
                assert_eq!(step, OdmrStep::NeedInput, "closed after {i} failures");
            } else {
                assert_eq!(step, OdmrStep::Close);
            }
        }
    }

    #[test]
    fn require_tls_refuses_auth_and_atrn_until_starttls() {
        let mut cfg = OdmrConfig::new("h");
        cfg.starttls = true;
        cfg.require_tls = true;
        let mut s = OdmrSession::new(cfg, 1, 1);
        s.output().clear();
        let mut input = BytesMut::from("EHLO c\r\nAUTH CRAM-MD5\r\nATRN\r\nSTARTTLS\r\nEHLO injected\r\n");
        assert_eq!(s.poll(&mut input), OdmrStep::StartTls);
        let out = String::from_utf8(std::mem::take(s.output())).unwrap();
        assert!(
            !out.contains("AUTH CRAM-MD5\r\n") && out.contains("250-STARTTLS"),
            "{out}"
        );
        assert_eq!(
            out.matches("530 5.7.0 Must issue a STARTTLS command first")
                .count(),
            2,
            "{out}"
        );
        assert!(out.ends_with("220 Ready to start TLS\r\n"));
        assert_eq!(
            &input[..],
            b"EHLO injected\r\n",
            "buffered plaintext is left for the driver to refuse"
        );
        input.clear();
        s.tls_started();
        input.extend_from_slice(b"EHLO c\r\n");
        assert_eq!(s.poll(&mut input), OdmrStep::NeedInput);
        let out = String::from_utf8(std::mem::take(s.output())).unwrap();
        assert!(out.contains("CRAM-MD5") && !out.contains("STARTTLS"), "{out}");
    }

    fn ehlo_auth_line(s: &mut OdmrSession) -> String {
        let mut input = BytesMut::from("EHLO c\r\n");
        s.poll(&mut input);
        let out = String::from_utf8(std::mem::take(s.output())).unwrap();
        out.lines().find(|l| l.contains("AUTH")).unwrap_or("").to_string()
    }

    #[test]
    fn scram_sha_256_with_our_client() {
        use crate::sasl::scram::ScramClient;
        let mut s = OdmrSession::new(OdmrConfig::new("h"), 99, 1);
        s.output().clear();
        assert_eq!(ehlo_auth_line(&mut s), "250-AUTH SCRAM-SHA-256 CRAM-MD5");
        let mut client = ScramClient::new("acme", "pencil", "clientnonce123").unwrap();
        let mut input =
            BytesMut::from(format!("AUTH SCRAM-SHA-256 {}\r\n", B64.encode(client.client_first())).as_str());
        assert_eq!(s.poll(&mut input), OdmrStep::LookupScram { user: "acme".into() });
        s.scram_verifier(Some(
            ScramVerifier::from_password("pencil", b"0123456789abcdef", 4096).unwrap(),
        ));
        let out = String::from_utf8(std::mem::take(s.output())).unwrap();
        let first = B64.decode(out.trim_end().strip_prefix("334 ").unwrap()).unwrap();
        let fin = client.server_first(&first).unwrap();
        input.extend_from_slice(format!("{}\r\n", B64.encode(fin)).as_bytes());
        assert_eq!(s.poll(&mut input), OdmrStep::NeedInput);
        let out = String::from_utf8(std::mem::take(s.output())).unwrap();
        let server_final = B64.decode(out.trim_end().strip_prefix("334 ").unwrap()).unwrap();
        client.server_final(&server_final).unwrap();
        input.extend_from_slice(b"\r\n");
        assert_eq!(s.poll(&mut input), OdmrStep::NeedInput);
        assert_eq!(s.output().as_slice(), b"235 Authentication successful\r\n");
        assert_eq!(s.account(), Some("acme"));
    }

    #[test]
    fn scram_wrong_password_and_unknown_user_fail_alike() {
        use crate::sasl::scram::ScramClient;
        for (user, known) in [("acme", true), ("ghost", false)] {
            let mut s = OdmrSession::new(OdmrConfig::new("h"), 5, 1);
            s.output().clear();
            let mut client = ScramClient::new(user, "wrong", "n0nce").unwrap();
            let mut input = BytesMut::from("AUTH SCRAM-SHA-256\r\n");
            assert_eq!(s.poll(&mut input), OdmrStep::NeedInput);
            assert_eq!(s.output().as_slice(), b"334 \r\n");
            s.output().clear();
            input.extend_from_slice(format!("{}\r\n", B64.encode(client.client_first())).as_bytes());
            assert!(matches!(s.poll(&mut input), OdmrStep::LookupScram { .. }));
            let v = known.then(|| ScramVerifier::from_password("right", b"0123456789abcdef", 4096).unwrap());
            s.scram_verifier(v);
            let out = String::from_utf8(std::mem::take(s.output())).unwrap();
            let first = B64.decode(out.trim_end().strip_prefix("334 ").unwrap()).unwrap();
            let fin = client.server_first(&first).unwrap();
            input.extend_from_slice(format!("{}\r\n", B64.encode(fin)).as_bytes());
            s.poll(&mut input);
            assert_eq!(
                s.output().as_slice(),
                b"535 Authentication credentials invalid\r\n",
                "{user}"
            );
        }
    }

    #[test]
    fn plain_and_login_only_under_tls() {
        let mut s = OdmrSession::new(OdmrConfig::new("h"), 5, 1);
        s.output().clear();
        let mut input =
            BytesMut::from(format!("AUTH PLAIN {}\r\nAUTH LOGIN\r\n", B64.encode("\0acme\0pw")).as_str());
        assert_eq!(s.poll(&mut input), OdmrStep::NeedInput);
        let out = String::from_utf8(std::mem::take(s.output())).unwrap();
        assert_eq!(
            out.matches("504 Mechanism available only after STARTTLS").count(),
            2,
            "{out}"
        );

        let mut s = OdmrSession::new(OdmrConfig::new("h"), 5, 1);
        s.set_tls();
        s.output().clear();
        assert_eq!(
            ehlo_auth_line(&mut s),
            "250-AUTH SCRAM-SHA-256 CRAM-MD5 PLAIN LOGIN"
        );
        input.clear();
        input.extend_from_slice(format!("AUTH PLAIN {}\r\n", B64.encode("\0acme\0pw")).as_bytes());
        assert_eq!(
            s.poll(&mut input),
            OdmrStep::CheckPassword {
                user: "acme".into(),
                password: "pw".into()
            }
        );
        assert!(s.password_checked(true));
        assert_eq!(s.account(), Some("acme"));

        let mut s = OdmrSession::new(OdmrConfig::new("h"), 5, 1);
        s.set_tls();
        s.output().clear();
        input.clear();
        input.extend_from_slice(b"AUTH LOGIN\r\n");
        s.poll(&mut input);
        assert_eq!(s.output().as_slice(), b"334 VXNlcm5hbWU6\r\n");
        s.output().clear();
        input.extend_from_slice(format!("{}\r\n", B64.encode("acme")).as_bytes());
        s.poll(&mut input);
        assert_eq!(s.output().as_slice(), b"334 UGFzc3dvcmQ6\r\n");
        input.extend_from_slice(format!("{}\r\n", B64.encode("pw")).as_bytes());
        assert_eq!(
            s.poll(&mut input),
            OdmrStep::CheckPassword {
                user: "acme".into(),
                password: "pw".into()
            }
        );
        assert!(!s.password_checked(false));
        assert!(s
            .output()
            .ends_with(b"535 Authentication credentials invalid\r\n"));
    }

    #[test]
    fn cram_md5_can_be_switched_off() {
        let mut cfg = OdmrConfig::new("h");
        cfg.cram_md5 = false;
        let mut s = OdmrSession::new(cfg, 5, 1);
        s.output().clear();
        assert_eq!(ehlo_auth_line(&mut s), "250-AUTH SCRAM-SHA-256");
        let mut input = BytesMut::from("AUTH CRAM-MD5\r\n");
        s.poll(&mut input);
        assert_eq!(s.output().as_slice(), b"504 Unrecognized authentication type\r\n");
    }
}
