//! The server side of SMTP AUTH (RFC 4954), shared by the ODMR listener ([`crate::odmr`]) and
//! the MX listener ([`crate::smtp_server`]): the `AUTH` command, the SASL exchange line by line
//! (CRAM-MD5, SCRAM-SHA-256, PLAIN, LOGIN, EXTERNAL from [`crate::sasl`]) and the lookups the
//! driver answers. One copy of this logic serves both listeners, so they cannot drift apart.
//!
//! The host (the ESMTP core both machines embed, `esmtp.rs`) owns the line reader and the
//! output, and the machine the session state; the host hands this sub-machine the arguments of
//! `AUTH` ([`AuthServer::command`]) and every line while [`AuthServer::in_exchange`] is true
//! ([`AuthServer::line`]), and relays the driver's answers ([`AuthServer::answer`]). Replies are
//! written into the host's output buffer.
//!
//! Invariants:
//! - **Authenticated only in the call that writes the 235** (RFC 2645 §5.1.2; RFC 4954 §4):
//!   [`AuthServer::account`] becomes `Some` in exactly that call, and never changes afterwards
//!   (a second AUTH gets 503) until [`AuthServer::reset`] (a TLS handshake, RFC 3207 §4.2).
//! - **No password in the clear without TLS**: PLAIN and LOGIN are neither offered nor accepted
//!   before TLS (RFC 4954 §4, §14); EXTERNAL only under TLS with a verified client certificate.
//! - **Unknown users and wrong passwords look alike**: the same 535 text; SCRAM answers an
//!   unknown user with a decoy salt derived from `decoy_secret`, so the exchange proceeds the same.
//! - **Failures end the session, but not too soon**: after `max_failures` failed attempts (never
//!   fewer than 3, RFC 4954 §9) a 421 is written and the host must close.
//! - The exchange is bounded: the host reads exchange lines with [`MAX_AUTH_LINE`] (RFC 4954 §4
//!   asks for 12288 octets) and calls [`AuthServer::abort`] when one is longer.

use crate::reply::Reply;
use crate::sasl::cram_md5::{self, CramSecret};
use crate::sasl::plain::{self, LOGIN_PASS_CHALLENGE, LOGIN_USER_CHALLENGE};
use crate::sasl::scram::{self, ScramServer, ScramVerifier};
use base64::Engine;

/// Longest line inside a SASL exchange (RFC 4954 §4).
pub const MAX_AUTH_LINE: usize = 12288;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The listener's AUTH policy.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// After this many failed attempts the session ends with 421 (RFC 4954 §9: not before 3).
    pub max_failures: usize,
    /// Salt source for unknown users in SCRAM, stable per server so that an unknown user looks
    /// like a known one (random at startup).
    pub decoy_secret: Vec<u8>,
    /// Offer CRAM-MD5 (RFC 2645 makes it mandatory to implement for ODMR; a site using stronger
    /// mechanisms may switch it off).
    pub cram_md5: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            max_failures: 5,
            decoy_secret: b"odmr".to_vec(),
            cram_md5: true,
        }
    }
}

/// A lookup the driver must answer with [`AuthAnswer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStep {
    /// Fetch the CRAM-MD5 secret of `user`: [`AuthAnswer::Secret`].
    LookupSecret { user: String },
    /// Fetch the SCRAM-SHA-256 verifier of `user`: [`AuthAnswer::Scram`].
    LookupScram { user: String },
    /// SASL EXTERNAL: map the TLS client certificate to an account (which must equal `authzid`
    /// when that is not empty): [`AuthAnswer::External`].
    External { authzid: String },
    /// Check a password given with PLAIN or LOGIN (only ever under TLS):
    /// [`AuthAnswer::Password`].
    CheckPassword { user: String, password: String },
}

impl AuthStep {
    /// The user the step is about (the authzid for EXTERNAL), for logs and throttling.
    pub fn user(&self) -> &str {
        match self {
            AuthStep::LookupSecret { user }
            | AuthStep::LookupScram { user }
            | AuthStep::CheckPassword { user, .. } => user,
            AuthStep::External { authzid } => authzid,
        }
    }
}

/// The driver's answer to an [`AuthStep`].
#[derive(Debug, Clone)]
pub enum AuthAnswer {
    /// The stored CRAM-MD5 secret, `None` for an unknown account.
    Secret(Option<CramSecret>),
    /// The stored SCRAM verifier, `None` for an unknown account (a decoy is used).
    Scram(Option<ScramVerifier>),
    /// The account the client certificate maps to, `None` if none (or not the authzid).
    External(Option<String>),
    /// Whether the PLAIN/LOGIN password is right.
    Password(bool),
    /// The driver will not check credentials now (too many recent failures): 454.
    TemporaryFailure,
}

/// What the host does after a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthEvent {
    /// Replies are written; go on reading lines (routed to [`AuthServer::line`] while
    /// [`AuthServer::in_exchange`]).
    Continue,
    /// Ask the driver; feed its answer to [`AuthServer::answer`].
    Ask(AuthStep),
    /// Too many failures: the 421 is written; close the session.
    Close,
}

/// The outcome of [`AuthServer::answer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthResult {
    /// 235 written: [`AuthServer::account`] is set.
    Succeeded,
    /// 535 written; the session goes on.
    Failed,
    /// 535 and 421 written: the host must close.
    FailedClose,
    /// Neither yet (SCRAM continues with a 334), or a 454 for a temporary failure.
    Pending,
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

enum State {
    Idle,
    /// A SASL exchange waiting for the client's next line.
    Sasl(Exchange),
    AwaitSecret {
        user: String,
        challenge: String,
        digest: [u8; 16],
    },
    AwaitScram(Box<ScramServer>),
    AwaitPassword {
        user: String,
    },
    AwaitExternal,
}

pub struct AuthServer {
    cfg: AuthConfig,
    hostname: String,
    enhanced: bool,
    seed: u64,
    unix_time: u64,
    attempts: u64,
    failures: usize,
    errors: usize,
    state: State,
    mechanism: Option<String>,
    account: Option<String>,
    /// A user whose SCRAM proof failed here, not yet taken by the driver (see
    /// [`AuthServer::take_proof_failure`]).
    proof_failure: Option<String>,
}

impl AuthServer {
    /// `hostname` goes into CRAM-MD5 challenges and the 421; `enhanced`: the listener offers
    /// ENHANCEDSTATUSCODES, so replies carry RFC 3463 codes. `seed` must be random per session
    /// and `unix_time` the current time: together they make challenges and nonces unique.
    pub fn new(
        cfg: AuthConfig,
        hostname: impl Into<String>,
        enhanced: bool,
        seed: u64,
        unix_time: u64,
    ) -> Self {
        AuthServer {
            cfg,
            hostname: hostname.into(),
            enhanced,
            seed,
            unix_time,
            attempts: 0,
            failures: 0,
            errors: 0,
            state: State::Idle,
            mechanism: None,
            account: None,
            proof_failure: None,
        }
    }

    /// The user whose password proof failed inside the exchange (SCRAM checks the client's
    /// proof here, after the driver's verifier lookup, so no [`AuthStep`] reports it). The
    /// driver counts it like any other failed login, or SCRAM would be a way to guess
    /// passwords without ever being locked out.
    pub fn take_proof_failure(&mut self) -> Option<String> {
        self.proof_failure.take()
    }

    /// The authenticated account, once the 235 is written.
    pub fn account(&self) -> Option<&str> {
        self.account.as_deref()
    }

    /// The mechanism of the last AUTH command (for logs).
    pub fn mechanism(&self) -> Option<&str> {
        self.mechanism.as_deref()
    }

    /// A SASL exchange is under way: the host's next line belongs to [`AuthServer::line`], and
    /// may be up to [`MAX_AUTH_LINE`] long.
    pub fn in_exchange(&self) -> bool {
        matches!(self.state, State::Sasl(_))
    }

    /// An [`AuthStep`] is waiting for the driver's answer.
    pub fn awaiting(&self) -> bool {
        matches!(
            self.state,
            State::AwaitSecret { .. }
                | State::AwaitScram(_)
                | State::AwaitPassword { .. }
                | State::AwaitExternal
        )
    }

    /// Refused commands (5xx other than 535) written so far, for the host's error limit.
    pub fn errors(&self) -> usize {
        self.errors
    }

    /// The mechanisms to list after `AUTH` in the EHLO reply.
    pub fn mechanisms(&self, tls: bool, client_cert: bool) -> Vec<&'static str> {
        let mut m = Vec::new();
        if tls && client_cert {
            m.push("EXTERNAL");
        }
        m.push(scram::MECHANISM);
        if self.cfg.cram_md5 {
            m.push("CRAM-MD5");
        }
        // PLAIN and LOGIN only under TLS (RFC 4954 §4, §14).
        if tls {
            m.extend([plain::MECHANISM, plain::LOGIN_MECHANISM]);
        }
        m
    }

    /// Forget the authentication and any exchange (a TLS handshake: RFC 3207 §4.2).
    pub fn reset(&mut self) {
        self.state = State::Idle;
        self.account = None;
    }

    /// The host dropped an overlong exchange line (and answered it): the exchange is over.
    pub fn abort(&mut self) {
        if self.in_exchange() {
            self.state = State::Idle;
        }
    }

    fn reply(&mut self, out: &mut Vec<u8>, code: u16, status: &str, text: impl Into<String>) {
        let text = text.into();
        if code >= 500 && code != 535 {
            self.errors += 1;
        }
        if self.enhanced {
            Reply::new(code, status, text).write(out, true);
        } else if code == 454 {
            // Without ENHANCEDSTATUSCODES the listener's codes go unsaid, except here: 4.7.0 is
            // what tells "temporarily locked out" from other 454s, and RFC 4954 §6 spells it.
            Reply::new(code, "", format!("{status} {text}")).write(out, false);
        } else {
            Reply::new(code, "", text).write(out, false);
        }
    }

    /// `AUTH <args>`: `tls` and `client_cert` describe the connection now.
    pub fn command(&mut self, args: &str, tls: bool, client_cert: bool, out: &mut Vec<u8>) -> AuthEvent {
        if self.account.is_some() {
            // RFC 4954 §4: after a successful AUTH, another one gets 503.
            self.reply(out, 503, "5.5.1", "Already authenticated");
            return AuthEvent::Continue;
        }
        let mut parts = args.split_whitespace();
        let mech = parts.next().unwrap_or("").to_ascii_uppercase();
        let initial = parts.next();
        if mech.is_empty() || parts.next().is_some() {
            self.reply(out, 501, "5.5.4", "Syntax: AUTH mechanism [initial-response]");
            return AuthEvent::Continue;
        }
        self.attempts += 1;
        self.mechanism = Some(mech.clone());
        let initial = match initial.map(|i| if i == "=" { Ok(Vec::new()) } else { B64.decode(i) }) {
            Some(Ok(b)) => Some(b),
            Some(Err(_)) => {
                self.reply(out, 501, "5.5.2", "Invalid base64 data");
                return AuthEvent::Continue;
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
                return self.start(initial, "", Exchange::Scram(Box::new(server)), out);
            }
            "PLAIN" | "LOGIN" if !tls => {
                self.reply(out, 504, "5.5.4", "Mechanism available only after STARTTLS");
                return AuthEvent::Continue;
            }
            "PLAIN" => return self.start(initial, "", Exchange::Plain, out),
            "EXTERNAL" if tls && client_cert => return self.start(initial, "", Exchange::External, out),
            "LOGIN" => return self.start(initial, LOGIN_USER_CHALLENGE, Exchange::LoginUser, out),
            _ => {
                self.reply(out, 504, "5.5.4", "Unrecognized authentication type");
                return AuthEvent::Continue;
            }
        }
        if initial.is_some() {
            // CRAM-MD5 is server-first (RFC 4954 §4).
            self.reply(out, 501, "5.7.0", "CRAM-MD5 does not take an initial response");
            return AuthEvent::Continue;
        }
        let challenge = cram_md5::make_challenge(
            self.seed.wrapping_add(self.attempts),
            self.unix_time,
            &self.hostname,
        );
        self.reply(out, 334, "", B64.encode(challenge.as_bytes()));
        self.state = State::Sasl(Exchange::Cram { challenge });
        AuthEvent::Continue
    }

    /// Begin a client-first exchange: use the initial response, or ask for it.
    fn start(
        &mut self,
        initial: Option<Vec<u8>>,
        prompt: &str,
        ex: Exchange,
        out: &mut Vec<u8>,
    ) -> AuthEvent {
        match initial {
            Some(data) => self.data(&data, ex, out),
            None => {
                self.reply(out, 334, "", prompt);
                self.state = State::Sasl(ex);
                AuthEvent::Continue
            }
        }
    }

    /// One line of the client's side of the exchange (only while [`AuthServer::in_exchange`]).
    pub fn line(&mut self, line: &[u8], out: &mut Vec<u8>) -> AuthEvent {
        let State::Sasl(ex) = std::mem::replace(&mut self.state, State::Idle) else {
            return AuthEvent::Continue;
        };
        if line == b"*" {
            // RFC 4954 §4: a cancelled exchange MUST get 501.
            self.reply(out, 501, "5.7.0", "Authentication cancelled");
            return AuthEvent::Continue;
        }
        let Ok(decoded) = B64.decode(line) else {
            self.reply(out, 501, "5.5.2", "Invalid base64 data");
            return AuthEvent::Continue;
        };
        self.data(&decoded, ex, out)
    }

    /// Decoded client data for the exchange `ex`.
    fn data(&mut self, decoded: &[u8], ex: Exchange, out: &mut Vec<u8>) -> AuthEvent {
        self.state = State::Idle;
        match ex {
            Exchange::Cram { challenge } => match cram_md5::parse_response(decoded) {
                Ok((user, digest)) => {
                    self.state = State::AwaitSecret {
                        user: user.clone(),
                        challenge,
                        digest,
                    };
                    AuthEvent::Ask(AuthStep::LookupSecret { user })
                }
                Err(_) => self.failed(out),
            },
            Exchange::Scram(mut server) => match server.client_first(decoded) {
                scram::ServerStep::LookupUser(user) => {
                    self.state = State::AwaitScram(server);
                    AuthEvent::Ask(AuthStep::LookupScram { user })
                }
                _ => self.failed(out),
            },
            Exchange::ScramFinal(mut server) => match server.client_final(decoded) {
                scram::ServerStep::Final(v) => {
                    let user = server.user().unwrap_or_default().to_string();
                    self.reply(out, 334, "", B64.encode(v));
                    self.state = State::Sasl(Exchange::ScramDone { user });
                    AuthEvent::Continue
                }
                _ => {
                    self.proof_failure = server.claimed_user().map(str::to_string);
                    self.failed(out)
                }
            },
            Exchange::ScramDone { user } => {
                if decoded.is_empty() {
                    self.succeeded(user, out);
                    AuthEvent::Continue
                } else {
                    self.failed(out)
                }
            }
            Exchange::Plain => match plain::parse_plain(decoded) {
                Ok(c) => {
                    self.state = State::AwaitPassword { user: c.user.clone() };
                    AuthEvent::Ask(AuthStep::CheckPassword {
                        user: c.user,
                        password: c.password,
                    })
                }
                Err(_) => self.failed(out),
            },
            Exchange::External => match std::str::from_utf8(decoded) {
                Ok(authzid) if !authzid.contains('\0') => {
                    self.state = State::AwaitExternal;
                    AuthEvent::Ask(AuthStep::External {
                        authzid: authzid.to_string(),
                    })
                }
                _ => self.failed(out),
            },
            Exchange::LoginUser => match plain::parse_login_user(decoded) {
                Ok(user) => {
                    self.reply(out, 334, "", LOGIN_PASS_CHALLENGE);
                    self.state = State::Sasl(Exchange::LoginPass { user });
                    AuthEvent::Continue
                }
                Err(_) => self.failed(out),
            },
            Exchange::LoginPass { user } => match plain::parse_login_password(decoded) {
                Ok(password) => {
                    self.state = State::AwaitPassword { user: user.clone() };
                    AuthEvent::Ask(AuthStep::CheckPassword { user, password })
                }
                Err(_) => self.failed(out),
            },
        }
    }

    fn succeeded(&mut self, account: String, out: &mut Vec<u8>) {
        self.state = State::Idle;
        self.reply(out, 235, "2.7.0", "Authentication successful");
        self.account = Some(account);
    }

    /// 535; after too many failures also 421 and [`AuthEvent::Close`].
    fn failed(&mut self, out: &mut Vec<u8>) -> AuthEvent {
        self.state = State::Idle;
        self.failures += 1;
        self.reply(out, 535, "5.7.8", "Authentication credentials invalid");
        if self.failures >= self.cfg.max_failures.max(3) {
            let text = format!("{} too many authentication failures, closing", self.hostname);
            self.reply(out, 421, "4.7.0", text);
            return AuthEvent::Close;
        }
        AuthEvent::Continue
    }

    fn failed_result(&mut self, out: &mut Vec<u8>) -> AuthResult {
        match self.failed(out) {
            AuthEvent::Close => AuthResult::FailedClose,
            _ => AuthResult::Failed,
        }
    }

    /// The driver's answer to the outstanding [`AuthStep`]. An answer that does not fit the
    /// step (or comes when none is outstanding) changes nothing and returns `Pending`.
    pub fn answer(&mut self, answer: AuthAnswer, out: &mut Vec<u8>) -> AuthResult {
        if !self.awaiting() {
            return AuthResult::Pending;
        }
        if let AuthAnswer::TemporaryFailure = answer {
            self.state = State::Idle;
            self.reply(
                out,
                454,
                "4.7.0",
                "Temporary authentication failure: too many failures, try again later",
            );
            return AuthResult::Pending;
        }
        match (std::mem::replace(&mut self.state, State::Idle), answer) {
            (
                State::AwaitSecret {
                    user,
                    challenge,
                    digest,
                },
                AuthAnswer::Secret(secret),
            ) => {
                if secret.is_some_and(|s| cram_md5::verify(&s, challenge.as_bytes(), &digest)) {
                    self.succeeded(user, out);
                    AuthResult::Succeeded
                } else {
                    self.failed_result(out)
                }
            }
            (State::AwaitScram(mut server), AuthAnswer::Scram(v)) => match server.verifier(v) {
                scram::ServerStep::Challenge(first) => {
                    self.reply(out, 334, "", B64.encode(first));
                    self.state = State::Sasl(Exchange::ScramFinal(server));
                    AuthResult::Pending
                }
                _ => self.failed_result(out),
            },
            (State::AwaitPassword { user }, AuthAnswer::Password(ok)) => {
                if ok {
                    self.succeeded(user, out);
                    AuthResult::Succeeded
                } else {
                    self.failed_result(out)
                }
            }
            (State::AwaitExternal, AuthAnswer::External(account)) => match account {
                Some(a) => {
                    self.succeeded(a, out);
                    AuthResult::Succeeded
                }
                None => self.failed_result(out),
            },
            (state, _) => {
                self.state = state;
                AuthResult::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(enhanced: bool) -> AuthServer {
        AuthServer::new(
            AuthConfig::default(),
            "mx.example.net",
            enhanced,
            7,
            1_800_000_000,
        )
    }

    #[test]
    fn cram_md5_with_and_without_enhanced_codes() {
        for (enhanced, ok) in [
            (true, "235 2.7.0 Authentication successful\r\n"),
            (false, "235 Authentication successful\r\n"),
        ] {
            let mut a = server(enhanced);
            let mut out = Vec::new();
            assert_eq!(a.command("CRAM-MD5", false, false, &mut out), AuthEvent::Continue);
            assert!(a.in_exchange());
            let text = String::from_utf8(std::mem::take(&mut out)).unwrap();
            let challenge = B64.decode(text.trim_end().strip_prefix("334 ").unwrap()).unwrap();
            let resp = B64.encode(cram_md5::client_response("acme", b"pw", &challenge));
            assert_eq!(
                a.line(resp.as_bytes(), &mut out),
                AuthEvent::Ask(AuthStep::LookupSecret { user: "acme".into() })
            );
            assert!(a.awaiting() && a.account().is_none());
            let r = a.answer(
                AuthAnswer::Secret(Some(CramSecret::from_password(b"pw"))),
                &mut out,
            );
            assert_eq!(r, AuthResult::Succeeded);
            assert_eq!(String::from_utf8(std::mem::take(&mut out)).unwrap(), ok);
            assert_eq!(a.account(), Some("acme"));
            a.command("CRAM-MD5", false, false, &mut out);
            assert!(out.starts_with(b"503"));
        }
    }

    /// A SCRAM exchange with `password` against a verifier made from "right"; returns the 235
    /// or 535 line and what `take_proof_failure` says afterwards.
    fn scram_login(password: &str) -> (String, Option<String>) {
        let mut a = server(true);
        let mut out = Vec::new();
        let mut c = scram::ScramClient::new("acme", password, "clientnonce").unwrap();
        a.command(
            &format!("SCRAM-SHA-256 {}", B64.encode(c.client_first())),
            false,
            false,
            &mut out,
        );
        assert_eq!(a.take_proof_failure(), None, "nothing failed yet");
        let v = ScramVerifier::from_password("right", b"saltsaltsalt", 4096).unwrap();
        assert_eq!(
            a.answer(AuthAnswer::Scram(Some(v)), &mut out),
            AuthResult::Pending
        );
        let text = String::from_utf8(std::mem::take(&mut out)).unwrap();
        let server_first = B64.decode(text.trim_end().strip_prefix("334 ").unwrap()).unwrap();
        let client_final = c.server_first(&server_first).unwrap();
        a.line(B64.encode(client_final).as_bytes(), &mut out);
        let text = String::from_utf8(std::mem::take(&mut out)).unwrap();
        if text.starts_with("334 ") {
            a.line(b"", &mut out);
        }
        let last = String::from_utf8(out).unwrap_or_default();
        let line = if last.is_empty() { text } else { last };
        (line, a.take_proof_failure())
    }

    /// SCRAM checks the proof inside the machine: a wrong one is reported to the driver once,
    /// with the user, so it counts towards the lockout like a failed CRAM-MD5.
    #[test]
    fn a_failed_scram_proof_is_reported_for_the_lockout() {
        let (line, failure) = scram_login("wrong");
        assert!(line.starts_with("535 5.7.8"), "{line}");
        assert_eq!(failure.as_deref(), Some("acme"));
        let (line, failure) = scram_login("right");
        assert!(line.starts_with("235 2.7.0"), "{line}");
        assert_eq!(failure, None);
    }

    #[test]
    fn plain_needs_tls_and_failures_close_after_the_limit() {
        let mut a = server(true);
        let mut out = Vec::new();
        a.command("PLAIN AGFjbWUAcHc=", false, false, &mut out);
        assert_eq!(out, b"504 5.5.4 Mechanism available only after STARTTLS\r\n");
        assert_eq!(a.errors(), 1);
        out.clear();
        for i in 1..=5 {
            assert_eq!(
                a.command("PLAIN AGFjbWUAcHc=", true, false, &mut out),
                AuthEvent::Ask(AuthStep::CheckPassword {
                    user: "acme".into(),
                    password: "pw".into()
                })
            );
            let r = a.answer(AuthAnswer::Password(false), &mut out);
            assert_eq!(
                r,
                if i < 5 {
                    AuthResult::Failed
                } else {
                    AuthResult::FailedClose
                }
            );
        }
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("421 4.7.0 mx.example.net too many authentication failures, closing\r\n"));
        assert_eq!(
            a.errors(),
            1,
            "535 is an authentication failure, not a protocol error"
        );
    }

    #[test]
    fn temporary_failure_keeps_its_status_even_without_enhanced_codes() {
        let mut a = server(false);
        let mut out = Vec::new();
        a.command("LOGIN YWNtZQ==", true, false, &mut out);
        assert_eq!(out, b"334 UGFzc3dvcmQ6\r\n");
        out.clear();
        assert!(matches!(a.line(b"cHc=", &mut out), AuthEvent::Ask(_)));
        assert_eq!(
            a.answer(AuthAnswer::TemporaryFailure, &mut out),
            AuthResult::Pending
        );
        assert!(out.starts_with(b"454 4.7.0 Temporary"));
        assert!(!a.awaiting() && a.account().is_none());
    }

    #[test]
    fn a_mismatched_answer_changes_nothing() {
        let mut a = server(true);
        let mut out = Vec::new();
        assert_eq!(
            a.answer(AuthAnswer::Password(true), &mut out),
            AuthResult::Pending
        );
        a.command("PLAIN AGFjbWUAcHc=", true, false, &mut out);
        assert_eq!(
            a.answer(AuthAnswer::External(Some("acme".into())), &mut out),
            AuthResult::Pending
        );
        assert!(a.awaiting() && a.account().is_none() && out.is_empty());
    }
}
