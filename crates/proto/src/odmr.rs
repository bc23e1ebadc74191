//! The provider's ODMR front half (RFC 2645 §5.1–5.2): greeting, EHLO, AUTH, ATRN.
//!
//! What it shares with the SMTP server ([`crate::smtp_server`]) is the ESMTP core it embeds
//! (`esmtp.rs`): the line reader and output, the greeting, EHLO/HELO/QUIT, STARTTLS, AUTH and the
//! error limit. This module adds ATRN and the ODMR service's own rules.
//!
//! Invariants:
//! - **Authenticated only after the 235 line is written** (RFC 2645 §5.1.2): the state changes in
//!   the same step that queues the 235. The AUTH exchange itself is [`crate::auth`], driven by
//!   the ESMTP core as for the MX listener.
//! - **Every ATRN reply is a single line**: fetchmail reads one line and then relays bytes.
//! - **Nothing leaks through ATRN**: an unknown domain and another customer's domain get the same
//!   450 text (RFC 2645 §5.2.1 requires the 450; the single text is ours, so that ATRN cannot
//!   probe who holds a domain).
//! - **Turnaround keeps buffered input**: after the 250 the machine stops consuming input and
//!   returns [`OdmrStep::Turnaround`]; whatever is still in the buffer is the start of the
//!   customer's greeting and belongs to the delivering client.
//! - **STARTTLS drops buffered input** (the ESMTP core's rule, as in [`crate::smtp_server`]):
//!   after the 220 the machine returns [`OdmrStep::StartTls`] and consumes nothing until
//!   [`OdmrSession::tls_started`].
//! - No ENHANCEDSTATUSCODES and no PIPELINING here **[project]**: with ENHANCEDSTATUSCODES
//!   every ATRN reply would need an enhanced code (RFC 2034 §4), and none is defined for them;
//!   and ATRN must end the client's input, since what follows its 250 belongs to the reversed
//!   session. So replies carry no enhanced codes (docs/protocol-decisions.md).

use crate::atrn::parse_atrn_args;
use crate::auth::{AuthAnswer, AuthConfig, AuthStep};
use crate::esmtp::{esmtp_accessors, Esmtp, EsmtpStep, Listener};
use crate::line::split_verb;
use crate::reply::Reply;
use crate::sasl::cram_md5::CramSecret;
use crate::sasl::scram::ScramVerifier;
use bytes::BytesMut;

/// Command lines before AUTH; AUTH exchange lines may be longer (RFC 4954 §4).
const MAX_COMMAND_LINE: usize = 1024;

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
    /// An AUTH lookup (see [`AuthStep`]): answer with [`OdmrSession::auth_answer`].
    Auth(AuthStep),
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Command,
    /// Waiting for the driver's answer to an AUTH lookup.
    AwaitAuth,
    AwaitAtrn,
    Turned,
    Closed,
}

pub struct OdmrSession {
    cfg: OdmrConfig,
    /// Output, line reader, error count, STARTTLS and AUTH (always offered here).
    esmtp: Esmtp,
    state: State,
    pending: Option<OdmrStep>,
}

impl OdmrSession {
    /// `seed` must be random per session (it makes CRAM-MD5 challenges unique); `unix_time` is
    /// the current time, also part of the challenge. The 220 greeting is already in the output.
    pub fn new(cfg: OdmrConfig, seed: u64, unix_time: u64) -> Self {
        let listener = Listener {
            hostname: cfg.hostname.clone(),
            // No ENHANCEDSTATUSCODES on this listener: none are defined for ATRN's replies.
            enhanced: false,
            max_line: MAX_COMMAND_LINE,
            max_errors: cfg.max_errors,
            starttls: cfg.starttls,
        };
        let mut esmtp = Esmtp::new(listener, "ESMTP ODMR service ready");
        let auth_cfg = AuthConfig {
            max_failures: cfg.max_auth_failures,
            decoy_secret: cfg.decoy_secret.clone(),
            cram_md5: cfg.cram_md5,
        };
        esmtp.enable_auth(auth_cfg, seed, unix_time);
        OdmrSession {
            esmtp,
            state: State::Command,
            pending: None,
            cfg,
        }
    }

    esmtp_accessors!();

    /// The TLS handshake after STARTTLS succeeded: back to the initial state, without a new
    /// greeting (RFC 3207 §4.2).
    pub fn tls_started(&mut self) {
        self.esmtp.tls_started();
        self.state = State::Command;
    }

    /// Replies carry no enhanced code here (see the module's invariants).
    fn reply(&mut self, code: u16, text: impl Into<String>) {
        self.esmtp.reply(Reply::new(code, "", text));
    }

    pub fn poll(&mut self, input: &mut BytesMut) -> OdmrStep {
        if let Some(p) = &self.pending {
            return p.clone();
        }
        loop {
            match self.state {
                State::Closed => return OdmrStep::Close,
                State::Turned => return OdmrStep::Turnaround,
                State::AwaitAuth | State::AwaitAtrn => return OdmrStep::NeedInput,
                State::Command => {}
            }
            let next = self.esmtp.next(input);
            let Some(step) = next.or_command(|line| self.command(line)) else {
                continue;
            };
            match step {
                OdmrStep::Close => self.state = State::Closed,
                OdmrStep::Turnaround => self.state = State::Turned,
                OdmrStep::Auth(_) => {
                    self.state = State::AwaitAuth;
                    self.pending = Some(step.clone());
                }
                // After STARTTLS the ESMTP core reads nothing until the handshake.
                OdmrStep::NeedInput | OdmrStep::StartTls => {}
                OdmrStep::Atrn { .. } => self.pending = Some(step.clone()),
            }
            return step;
        }
    }

    fn command(&mut self, line: &[u8]) -> Option<OdmrStep> {
        let (verb, args) = split_verb(line);
        let args = String::from_utf8_lossy(args).trim().to_string();
        let authed = self.account().map(str::to_string);
        let before_tls = self.cfg.require_tls && !self.is_tls();
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
            "EHLO" | "HELO" if args.is_empty() => self.esmtp.helo_syntax(&verb),
            "EHLO" => {
                // Names without a dot are fine: fetchmail sends the bare host name.
                let mut keywords = Vec::new();
                if !before_tls {
                    keywords.extend(self.esmtp.auth_keyword());
                }
                keywords.extend(self.esmtp.starttls_keyword());
                keywords.push("ATRN".into());
                self.esmtp.ehlo(&args, keywords);
            }
            "HELO" => self.esmtp.helo(),
            "AUTH" => {
                return self.esmtp.auth_command(args.as_bytes());
            }
            "ATRN" => {
                let Some(account) = authed else {
                    self.reply(530, "Authentication required");
                    return None;
                };
                match parse_atrn_args(&args) {
                    Ok(domains) => {
                        self.state = State::AwaitAtrn;
                        return Some(OdmrStep::Atrn { account, domains });
                    }
                    Err(e) => self.reply(501, format!("Syntax: ATRN [domain[,domain]...]: {e}")),
                }
            }
            "NOOP" | "RSET" => self.esmtp.ok(),
            "HELP" => self.reply(214, "ODMR (RFC 2645): EHLO, AUTH CRAM-MD5, ATRN [domains], QUIT"),
            "QUIT" => {
                self.esmtp.quit();
                return Some(OdmrStep::Close);
            }
            "STARTTLS" if self.esmtp.offers_starttls() => {
                if self.esmtp.starttls(!args.is_empty(), None) {
                    return Some(OdmrStep::StartTls);
                }
            }
            "STARTTLS" if self.is_tls() || authed.is_some() => self.reply(503, "STARTTLS not allowed now"),
            "MAIL" | "RCPT" | "DATA" | "BDAT" | "VRFY" | "EXPN" | "ETRN" | "TURN" | "STARTTLS" => {
                self.esmtp.not_implemented(&verb, "the ODMR service")
            }
            _ => self.esmtp.unrecognized(),
        }
        None
    }

    /// The driver's answer to [`OdmrStep::Auth`]: `Some(true)` when the session is now
    /// authenticated (the 235 is in the output), `Some(false)` when the attempt failed (535),
    /// `None` when neither is known yet (SCRAM goes on) or the answer was a temporary failure.
    pub fn auth_answer(&mut self, answer: AuthAnswer) -> Option<bool> {
        if self.state != State::AwaitAuth {
            return None;
        }
        let a = self.esmtp.auth_answer(answer)?;
        if !a.waiting {
            self.pending = None;
            self.state = if a.close { State::Closed } else { State::Command };
        }
        a.authenticated
    }

    /// [`OdmrSession::auth_answer`] for a CRAM-MD5 lookup; whether authentication succeeded.
    pub fn secret(&mut self, secret: Option<CramSecret>) -> bool {
        self.auth_answer(AuthAnswer::Secret(secret)) == Some(true)
    }

    /// [`OdmrSession::auth_answer`] for a SCRAM lookup (the outcome comes with the client's proof).
    pub fn scram_verifier(&mut self, v: Option<ScramVerifier>) {
        self.auth_answer(AuthAnswer::Scram(v));
    }

    /// [`OdmrSession::auth_answer`] for EXTERNAL: the account the certificate maps to (and
    /// that the authzid, if any, names), or `None`. Whether authentication succeeded.
    pub fn external_result(&mut self, account: Option<String>) -> bool {
        self.auth_answer(AuthAnswer::External(account)) == Some(true)
    }

    /// [`OdmrSession::auth_answer`] for PLAIN/LOGIN. Whether authentication succeeded.
    pub fn password_checked(&mut self, ok: bool) -> bool {
        self.auth_answer(AuthAnswer::Password(ok)) == Some(true)
    }

    /// The driver will not check the credentials now (too many recent failures): a temporary
    /// refusal, 454 (RFC 4954 §4).
    pub fn auth_temporary_failure(&mut self) {
        self.auth_answer(AuthAnswer::TemporaryFailure);
    }

    /// The driver's answer to [`OdmrStep::Atrn`].
    pub fn atrn_decision(&mut self, decision: AtrnDecision) {
        if self.state != State::AwaitAtrn {
            return;
        }
        self.pending = None;
        self.state = State::Command;
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

impl EsmtpStep for OdmrStep {
    const NEED_INPUT: Self = OdmrStep::NeedInput;
    const START_TLS: Self = OdmrStep::StartTls;
    const CLOSE: Self = OdmrStep::Close;
    fn auth(step: AuthStep) -> Self {
        OdmrStep::Auth(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sasl::cram_md5;
    use base64::Engine;

    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

    fn authed() -> (OdmrSession, BytesMut) {
        let mut s = OdmrSession::new(OdmrConfig::new("odmr.example.net"), 7, 1_800_000_000);
        let mut input = BytesMut::from("EHLO c\r\nAUTH CRAM-MD5\r\n");
        assert_eq!(s.poll(&mut input), OdmrStep::NeedInput);
        let out = String::from_utf8(std::mem::take(s.output())).unwrap();
        let b64 = out.lines().last().unwrap().strip_prefix("334 ").unwrap();
        let challenge = B64.decode(b64).unwrap();
        let resp = cram_md5::client_response("acme", b"pw", &challenge);
        input.extend_from_slice(format!("{}\r\n", B64.encode(resp)).as_bytes());
        assert_eq!(
            s.poll(&mut input),
            OdmrStep::Auth(AuthStep::LookupSecret { user: "acme".into() })
        );
        // Not authenticated until the 235 is written.
        assert_eq!(s.account(), None);
        assert!(s.secret(Some(CramSecret::from_password(b"pw"))));
        assert_eq!(s.account(), Some("acme"));
        assert_eq!(s.output().as_slice(), b"235 Authentication successful\r\n");
        s.output().clear();
        (s, input)
    }

    #[test]
    fn shutdown_and_abort_421s_carry_no_enhanced_status() {
        // The ODMR listener does not offer ENHANCEDSTATUSCODES (RFC 2034 §4).
        let (mut s, _) = authed();
        s.shutdown();
        s.abort("timed out");
        assert_eq!(
            s.output().as_slice(),
            b"421 odmr.example.net shutting down, try again later\r\n\
              421 odmr.example.net timed out, closing\r\n"
        );
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
            assert_eq!(
                s.poll(&mut input),
                OdmrStep::Auth(AuthStep::LookupSecret { user: "acme".into() })
            );
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
        assert_eq!(
            s.poll(&mut input),
            OdmrStep::Auth(AuthStep::LookupScram { user: "acme".into() })
        );
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
            assert!(matches!(
                s.poll(&mut input),
                OdmrStep::Auth(AuthStep::LookupScram { .. })
            ));
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
            OdmrStep::Auth(AuthStep::CheckPassword {
                user: "acme".into(),
                password: "pw".into()
            })
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
            OdmrStep::Auth(AuthStep::CheckPassword {
                user: "acme".into(),
                password: "pw".into()
            })
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
