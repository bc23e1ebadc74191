//! The customer's ODMR front half (RFC 2645 §5.1–5.2): greeting, EHLO, AUTH, ATRN, as the
//! client. After a `250` to ATRN the connection belongs to the customer's receiving SMTP server.
//!
//! With [`Request::Etrn`] the same machine asks for an ETRN queue run instead (RFC 1985): EHLO,
//! STARTTLS and AUTH as for ATRN (AUTH only when a password is set: the provider may also know
//! us by our address), then `ETRN <domain>` for each domain, one at a time, and QUIT. The mail
//! then comes over a new connection that the provider opens to our fixed address; this session
//! only learns whether the run was started ([`FrontEnd::Etrn`]).
//!
//! Invariants:
//! - **Turnaround keeps buffered input.** The machine reads exactly one reply to ATRN and stops
//!   consuming; anything after it in the buffer is the provider's first command (RFC 2645 §5.3).
//! - **No STARTTLS/AUTH surprises.** For ATRN we refuse to go on unless EHLO lists both ATRN and
//!   AUTH (RFC 2645 §5.1.1) with a mechanism we can use; for ETRN, AUTH must be offered when we
//!   have a password (we never silently go on unauthenticated).
//! - **A 5xx to ETRN stops the ETRNs** (RFC 1985 §5.2: "not supported or broken"); the domains
//!   not yet asked for get no outcome.
//! - **A refused ATRN ends politely with QUIT** (RFC 5321 §4.1.1.10; RFC 2645 does not say what
//!   follows a refusal, see docs/protocol-decisions.md).
//! - A challenge we cannot decode is cancelled with `*` (RFC 4954 §4).
//! - **A 250 before ATRN is sent is no turnaround.** A 250 read in the same poll that queued
//!   ATRN came with the replies before it: the session ends with [`FrontEnd::Failed`] and
//!   nothing more is sent.

use crate::reply::{parse_reply, Reply};
use crate::sasl::cram_md5;
use crate::sasl::plain;
use crate::sasl::scram::{ScramClient, ScramError};
use base64::Engine;
use bytes::BytesMut;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(Debug, Clone)]
pub struct CustomerConfig {
    /// Our name in EHLO.
    pub ehlo_name: String,
    pub user: String,
    pub password: Vec<u8>,
    /// Domains to request; empty sends a bare ATRN (all of the account's domains).
    pub domains: Vec<String>,
    /// Insist on STARTTLS before AUTH (the driver is not already on TLS).
    pub starttls: bool,
    /// The connection is already TLS (implicit TLS).
    pub tls_active: bool,
    /// The provider's certificate is checked (name and chain) when TLS starts. PLAIN sends the
    /// password itself, so it is used only then (RFC 4954 §14).
    pub tls_verified: bool,
    /// We present a client certificate: use SASL EXTERNAL when the provider offers it.
    pub external: bool,
    /// Our SCRAM nonce (random, from the driver).
    pub nonce: String,
    /// ATRN (turn the connection around) or ETRN (ask for a queue run to our fixed address).
    pub request: Request,
}

/// What the session asks for once authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Request {
    /// RFC 2645: the provider delivers over this connection.
    #[default]
    Atrn,
    /// RFC 1985: `ETRN <domain>` for each of `domains` (which must not be empty); AUTH only
    /// when `password` is not empty (or we present a certificate).
    Etrn,
}

/// The provider's answer to one `ETRN` (RFC 1985 §5.1, §5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtrnOutcome {
    /// 250, 252, 253: the queue run was started.
    Started(Reply),
    /// 251: no messages waiting.
    NoMail(Reply),
    /// 458 (or another 4xx): supported, but the queue cannot be run now.
    TryLater(Reply),
    /// 459: not allowed for us (not our domain, or we are not authorized).
    NotAllowed(Reply),
    /// 5xx: ETRN not supported, or broken: no further ETRN was sent.
    NotSupported(Reply),
}

/// How the front half ended, when it did not turn around.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontEnd {
    /// 453: no mail waiting.
    NoMail(Reply),
    /// 450: the provider refused the request (a domain not ours, or rate limiting).
    Refused(Reply),
    /// 451: try later (another session is delivering, or a provider-side error).
    TryLater(Reply),
    /// 530 to ATRN: the provider does not consider us authenticated.
    AuthRequired(Reply),
    /// AUTH was refused (535 and friends).
    AuthFailed(Reply),
    /// Anything else that stops the session: what went wrong, in words.
    Failed(String),
    /// [`Request::Etrn`]: each domain asked for, with the provider's answer, in order.
    Etrn(Vec<(String, EtrnOutcome)>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomerStep {
    /// Flush the output, then read more input.
    NeedInput,
    /// The provider said 250 to ATRN: the output is empty, and the connection now carries SMTP
    /// with us as the server. Bytes left in the input belong to it.
    Turnaround,
    /// The front half ended without a turnaround; a QUIT may be in the output to flush.
    Ended(FrontEnd),
    /// The provider said 220 to STARTTLS: run the TLS handshake now (before sending anything),
    /// then call [`Customer::tls_started`].
    StartTls,
}

/// What the machine waits for, so the driver can choose the timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Command,
    /// The reply to ATRN: RFC 2645 §5.2.1 requires the customer to wait at least 10 minutes.
    Atrn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Greeting,
    Ehlo,
    StartTls,
    Handshake,
    ScramFirst,
    ScramFinal,
    AuthStart,
    AuthResult,
    Atrn,
    /// Waiting for the reply to the ETRN for `domains[n]`.
    Etrn(usize),
    Quit,
    Done,
}

pub struct Customer {
    cfg: CustomerConfig,
    out: Vec<u8>,
    state: State,
    ended: Option<FrontEnd>,
    tls: bool,
    scram: Option<ScramClient>,
    etrn: Vec<(String, EtrnOutcome)>,
}

impl Customer {
    pub fn new(cfg: CustomerConfig) -> Self {
        let cfg_tls = cfg.tls_active;
        Customer {
            cfg,
            out: Vec::with_capacity(512),
            state: State::Greeting,
            ended: None,
            tls: cfg_tls,
            scram: None,
            etrn: Vec::new(),
        }
    }

    pub fn output(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    pub fn waiting_for(&self) -> Wait {
        if self.state == State::Atrn {
            Wait::Atrn
        } else {
            Wait::Command
        }
    }

    fn cmd(&mut self, s: &str) {
        self.out.extend_from_slice(s.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// End with `e`, after a polite QUIT whose reply we still read (or not: the end is final).
    fn end(&mut self, e: FrontEnd) {
        self.cmd("QUIT");
        self.ended = Some(e);
        self.state = State::Quit;
    }

    /// The connection closed (or timed out). If we were only waiting for the reply to our QUIT,
    /// the front half had already ended: return how.
    pub fn closed(&mut self) -> Option<FrontEnd> {
        if self.state == State::Quit {
            self.state = State::Done;
            self.ended.clone()
        } else {
            None
        }
    }

    /// The handshake after STARTTLS succeeded: say EHLO again (RFC 3207 §4.2).
    pub fn tls_started(&mut self) {
        if self.state == State::Handshake {
            self.tls = true;
            let e = format!("EHLO {}", self.cfg.ehlo_name);
            self.cmd(&e);
            self.state = State::Ehlo;
        }
    }

    pub fn poll(&mut self, input: &mut BytesMut) -> CustomerStep {
        loop {
            if self.state == State::Handshake {
                return CustomerStep::StartTls;
            }
            if self.state == State::Done {
                return match self.ended.clone() {
                    Some(e) => CustomerStep::Ended(e),
                    None => CustomerStep::Turnaround,
                };
            }
            let r = match parse_reply(input) {
                Ok(Some(r)) => r,
                Ok(None) => return CustomerStep::NeedInput,
                Err(e) => {
                    self.ended
                        .get_or_insert(FrontEnd::Failed(format!("provider sent an invalid reply: {e}")));
                    self.state = State::Done;
                    continue;
                }
            };
            self.on_reply(r);
        }
    }

    fn on_reply(&mut self, r: Reply) {
        match self.state {
            State::Greeting => {
                if r.code == 220 {
                    let e = format!("EHLO {}", self.cfg.ehlo_name);
                    self.cmd(&e);
                    self.state = State::Ehlo;
                } else {
                    self.end(FrontEnd::Failed(format!("provider refused the connection: {r}")));
                }
            }
            State::Ehlo => {
                if !r.is_positive() {
                    return self.end(FrontEnd::Failed(format!("provider refused EHLO: {r}")));
                }
                let kw = |k: &str| {
                    r.lines.iter().skip(1).find_map(|l| {
                        let mut w = l.split_whitespace();
                        w.next()
                            .filter(|x| x.eq_ignore_ascii_case(k))
                            .map(|_| w.map(str::to_ascii_uppercase).collect::<Vec<_>>())
                    })
                };
                if self.cfg.starttls && !self.tls {
                    if kw("STARTTLS").is_none() {
                        return self.end(FrontEnd::Failed(
                            "provider does not offer STARTTLS; refusing to authenticate in plaintext (set tls = \"none\" only if you accept that)".into(),
                        ));
                    }
                    self.cmd("STARTTLS");
                    self.state = State::StartTls;
                    return;
                }
                let etrn = self.cfg.request == Request::Etrn;
                if !etrn && kw("ATRN").is_none() {
                    return self.end(FrontEnd::Failed(
                        "provider does not offer ATRN (its EHLO reply lacks ATRN); is this the ODMR port (366)?".into(),
                    ));
                }
                // Preference: EXTERNAL > SCRAM-SHA-256 > CRAM-MD5 > PLAIN (PLAIN only under TLS).
                let offered = kw("AUTH").unwrap_or_default();
                let has = |m: &str| offered.iter().any(|x| x == m);
                let external = has("EXTERNAL") && self.cfg.external && self.tls;
                if etrn && self.cfg.password.is_empty() && !external {
                    // No credentials: the provider must know us by our address.
                    return self.next_etrn(0);
                }
                if external {
                    // Empty authorization identity: "the account my certificate maps to".
                    self.cmd("AUTH EXTERNAL =");
                    self.state = State::AuthResult;
                } else if has("SCRAM-SHA-256") {
                    match ScramClient::new(
                        &self.cfg.user,
                        &String::from_utf8_lossy(&self.cfg.password),
                        &self.cfg.nonce,
                    ) {
                        Ok(client) => {
                            let first = B64.encode(client.client_first());
                            self.cmd(&format!("AUTH SCRAM-SHA-256 {first}"));
                            self.scram = Some(client);
                            self.state = State::ScramFirst;
                        }
                        Err(e) => self.end(FrontEnd::Failed(format!(
                            "cannot use SCRAM-SHA-256 with this user name or password: {e}"
                        ))),
                    }
                } else if has("CRAM-MD5") {
                    self.cmd("AUTH CRAM-MD5");
                    self.state = State::AuthStart;
                } else if has("PLAIN") && self.tls && self.cfg.tls_verified {
                    let resp = B64.encode(plain::plain_response(
                        &self.cfg.user,
                        &String::from_utf8_lossy(&self.cfg.password),
                    ));
                    self.cmd(&format!("AUTH PLAIN {resp}"));
                    self.state = State::AuthResult;
                } else if offered.is_empty() {
                    self.end(FrontEnd::Failed("provider does not offer AUTH".into()))
                } else {
                    self.end(FrontEnd::Failed(format!(
                        "provider offers AUTH {} but none this client can use here (SCRAM-SHA-256, CRAM-MD5, or PLAIN under TLS with the certificate verified)",
                        offered.join(" ")
                    )))
                }
            }
            State::StartTls => {
                if r.code == 220 {
                    self.state = State::Handshake;
                } else {
                    self.end(FrontEnd::Failed(format!("provider refused STARTTLS: {r}")));
                }
            }
            State::Handshake => {}
            State::ScramFirst | State::ScramFinal => {
                if r.code != 334 {
                    return self.end(FrontEnd::AuthFailed(r));
                }
                let data = B64.decode(r.lines.first().map(String::as_str).unwrap_or("").trim());
                let Some(client) = self.scram.as_mut() else { return };
                let next = match (self.state, data) {
                    (State::ScramFirst, Ok(d)) => client.server_first(&d).map(|fin| Some(B64.encode(fin))),
                    // The provider proved it knows our verifier: finish with an empty line.
                    (_, Ok(d)) => client.server_final(&d).map(|()| None),
                    (_, Err(_)) => Err(ScramError::Malformed("undecodable challenge")),
                };
                match next {
                    Ok(Some(line)) => {
                        self.cmd(&line);
                        self.state = State::ScramFinal;
                    }
                    Ok(None) => {
                        self.cmd("");
                        self.state = State::AuthResult;
                    }
                    Err(e) => {
                        self.cmd("*");
                        self.state = State::AuthResult;
                        self.ended = Some(FrontEnd::Failed(format!(
                            "SCRAM-SHA-256 with the provider failed: {e}"
                        )));
                    }
                }
            }
            State::AuthStart => {
                if r.code != 334 {
                    return self.end(FrontEnd::AuthFailed(r));
                }
                let text = r.lines.first().map(String::as_str).unwrap_or("");
                match B64.decode(text.trim()) {
                    Ok(challenge) => {
                        let resp = cram_md5::client_response(&self.cfg.user, &self.cfg.password, &challenge);
                        let line = B64.encode(resp);
                        self.cmd(&line);
                        self.state = State::AuthResult;
                    }
                    Err(_) => {
                        self.cmd("*");
                        self.state = State::AuthResult;
                        self.ended = Some(FrontEnd::Failed(
                            "provider sent an undecodable CRAM-MD5 challenge".into(),
                        ));
                    }
                }
            }
            State::AuthResult => {
                if let Some(e) = self.ended.take() {
                    return self.end(e);
                }
                if r.code != 235 {
                    return self.end(FrontEnd::AuthFailed(r));
                }
                if self.cfg.request == Request::Etrn {
                    return self.next_etrn(0);
                }
                let atrn = if self.cfg.domains.is_empty() {
                    "ATRN".to_string()
                } else {
                    format!("ATRN {}", self.cfg.domains.join(","))
                };
                self.cmd(&atrn);
                self.state = State::Atrn;
            }
            State::Atrn => match r.code {
                // A 250 read while our ATRN is still in the output (it came with the replies
                // before it) answers nothing we asked: end, sending nothing more (not even the
                // ATRN, which the provider would take as a request).
                250 if !self.out.is_empty() => {
                    self.out.clear();
                    self.ended = Some(FrontEnd::Failed(
                        "provider sent replies ahead of our commands (a 250 before ATRN); not turning around"
                            .into(),
                    ));
                    self.state = State::Done;
                }
                250 => {
                    self.ended = None;
                    self.state = State::Done;
                }
                453 => self.end(FrontEnd::NoMail(r)),
                450 => self.end(FrontEnd::Refused(r)),
                451 => self.end(FrontEnd::TryLater(r)),
                530 => self.end(FrontEnd::AuthRequired(r)),
                _ if r.is_transient() => self.end(FrontEnd::TryLater(r)),
                _ => self.end(FrontEnd::Failed(format!("provider refused ATRN: {r}"))),
            },
            State::Etrn(i) => {
                let domain = self.cfg.domains.get(i).cloned().unwrap_or_default();
                let outcome = match r.code {
                    250 | 252 | 253 => EtrnOutcome::Started(r),
                    251 => EtrnOutcome::NoMail(r),
                    459 => EtrnOutcome::NotAllowed(r),
                    _ if r.is_transient() => EtrnOutcome::TryLater(r),
                    // A 5xx (or nonsense such as a 3xx): not supported or broken; ask no more.
                    _ => EtrnOutcome::NotSupported(r),
                };
                let stop = matches!(outcome, EtrnOutcome::NotSupported(_));
                self.etrn.push((domain, outcome));
                if stop {
                    let done = std::mem::take(&mut self.etrn);
                    self.end(FrontEnd::Etrn(done));
                } else {
                    self.next_etrn(i + 1);
                }
            }
            State::Quit => self.state = State::Done,
            State::Done => {}
        }
    }

    /// Send the ETRN for `domains[i]`, or QUIT once every domain was asked for.
    fn next_etrn(&mut self, i: usize) {
        match self.cfg.domains.get(i).cloned() {
            Some(d) => {
                self.cmd(&format!("ETRN {d}"));
                self.state = State::Etrn(i);
            }
            None if i == 0 => self.end(FrontEnd::Failed(
                "no domain to ask for: ETRN needs the domains listed".into(),
            )),
            None => {
                let done = std::mem::take(&mut self.etrn);
                self.end(FrontEnd::Etrn(done));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn customer(domains: &[&str]) -> Customer {
        Customer::new(CustomerConfig {
            ehlo_name: "cust.example".into(),
            user: "tim".into(),
            password: b"tanstaaftanstaaf".to_vec(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            starttls: false,
            tls_active: false,
            tls_verified: true,
            external: false,
            nonce: "testnonce".into(),
            request: Request::Atrn,
        })
    }

    fn step(c: &mut Customer, input: &str) -> (String, CustomerStep) {
        let mut b = BytesMut::from(input);
        let s = c.poll(&mut b);
        (String::from_utf8(std::mem::take(c.output())).unwrap(), s)
    }

    fn through_auth(c: &mut Customer) {
        assert_eq!(step(c, "220 p ESMTP\r\n").0, "EHLO cust.example\r\n");
        assert_eq!(
            step(c, "250-p\r\n250-AUTH CRAM-MD5\r\n250 ATRN\r\n").0,
            "AUTH CRAM-MD5\r\n"
        );
        // RFC 2195's vector.
        let (out, _) = step(
            c,
            "334 PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+\r\n",
        );
        assert_eq!(out, "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw\r\n");
    }

    #[test]
    fn a_250_read_with_the_replies_before_atrn_is_no_turnaround() {
        let mut c = customer(&["example.org"]);
        through_auth(&mut c);
        // The 235 and a 250 in one read: the ATRN is still unsent when the 250 is read.
        let (out, s) = step(&mut c, "235 ok\r\n250 OK now reversing the connection\r\n");
        assert_eq!(out, "", "nothing more is sent, not even the ATRN");
        assert!(
            matches!(&s, CustomerStep::Ended(FrontEnd::Failed(m)) if m.contains("before ATRN")),
            "{s:?}"
        );
    }

    #[test]
    fn turnaround_keeps_what_follows_the_250() {
        let mut c = customer(&["example.org", "example.com"]);
        through_auth(&mut c);
        assert_eq!(step(&mut c, "235 ok\r\n").0, "ATRN example.org,example.com\r\n");
        assert_eq!(c.waiting_for(), Wait::Atrn);
        let mut b = BytesMut::from("250 OK now reversing the connection\r\nEHLO p\r\n");
        assert_eq!(c.poll(&mut b), CustomerStep::Turnaround);
        assert_eq!(&b[..], b"EHLO p\r\n");
        assert!(c.output().is_empty());
    }

    #[test]
    fn bare_atrn_and_each_refusal() {
        for (code, want) in [
            ("453 You have no mail", "NoMail"),
            ("450 refused", "Refused"),
            ("451 later", "TryLater"),
            ("530 auth", "AuthRequired"),
            ("502 nope", "Failed"),
        ] {
            let mut c = customer(&[]);
            through_auth(&mut c);
            assert_eq!(step(&mut c, "235 ok\r\n").0, "ATRN\r\n");
            let (out, s) = step(&mut c, &format!("{code}\r\n"));
            assert_eq!(out, "QUIT\r\n");
            assert_eq!(s, CustomerStep::NeedInput);
            let (_, s) = step(&mut c, "221 bye\r\n");
            let CustomerStep::Ended(e) = s else {
                panic!("{s:?}")
            };
            assert!(format!("{e:?}").starts_with(want), "{e:?}");
        }
    }

    #[test]
    fn auth_failure_and_missing_capabilities() {
        let mut c = customer(&[]);
        through_auth(&mut c);
        step(&mut c, "535 no\r\n");
        let (_, s) = step(&mut c, "221 bye\r\n");
        assert!(matches!(s, CustomerStep::Ended(FrontEnd::AuthFailed(r)) if r.code == 535));

        let mut c = customer(&[]);
        step(&mut c, "220 p\r\n");
        let (out, _) = step(&mut c, "250-p\r\n250 AUTH CRAM-MD5\r\n");
        assert_eq!(out, "QUIT\r\n");
        // The provider closes without answering QUIT: the reason is still known.
        assert!(matches!(c.closed(), Some(FrontEnd::Failed(m)) if m.contains("ATRN")));

        let mut c = customer(&[]);
        step(&mut c, "220 p\r\n");
        step(&mut c, "250-p\r\n250-AUTH PLAIN\r\n250 ATRN\r\n");
        let (_, s) = step(&mut c, "221 bye\r\n");
        assert!(matches!(s, CustomerStep::Ended(FrontEnd::Failed(m)) if m.contains("CRAM-MD5")));
    }

    #[test]
    fn plain_only_under_tls_with_a_verified_certificate() {
        let plain_only = "250-p\r\n250-AUTH PLAIN\r\n250 ATRN\r\n";
        let mut c = customer(&[]);
        c.cfg.tls_active = true;
        c.tls = true;
        step(&mut c, "220 p\r\n");
        let (out, _) = step(&mut c, plain_only);
        assert!(out.starts_with("AUTH PLAIN "), "{out}");

        // `tls_verify = false`: whoever is on the other end would read the password.
        let mut c = customer(&[]);
        c.cfg.tls_active = true;
        c.cfg.tls_verified = false;
        c.tls = true;
        step(&mut c, "220 p\r\n");
        assert_eq!(step(&mut c, plain_only).0, "QUIT\r\n");
        let (_, s) = step(&mut c, "221 bye\r\n");
        assert!(matches!(s, CustomerStep::Ended(FrontEnd::Failed(m)) if m.contains("certificate verified")));
    }

    #[test]
    fn undecodable_challenge_is_cancelled() {
        let mut c = customer(&[]);
        step(&mut c, "220 p\r\n");
        step(&mut c, "250-p\r\n250-AUTH CRAM-MD5\r\n250 ATRN\r\n");
        assert_eq!(step(&mut c, "334 !!!\r\n").0, "*\r\n");
        assert_eq!(step(&mut c, "501 cancelled\r\n").0, "QUIT\r\n");
        let (_, s) = step(&mut c, "221 bye\r\n");
        assert!(matches!(s, CustomerStep::Ended(FrontEnd::Failed(m)) if m.contains("undecodable")));
    }

    #[test]
    fn starttls_first_then_ehlo_again_and_never_a_plaintext_fallback() {
        let mut c = customer(&[]);
        c.cfg.starttls = true;
        step(&mut c, "220 p\r\n");
        assert_eq!(
            step(
                &mut c,
                "250-p\r\n250-AUTH CRAM-MD5\r\n250-STARTTLS\r\n250 ATRN\r\n"
            )
            .0,
            "STARTTLS\r\n"
        );
        let (out, s) = step(&mut c, "220 go ahead\r\n");
        assert_eq!((out.as_str(), s), ("", CustomerStep::StartTls));
        c.tls_started();
        assert_eq!(step(&mut c, "").0, "EHLO cust.example\r\n");
        assert_eq!(
            step(&mut c, "250-p\r\n250-AUTH CRAM-MD5\r\n250 ATRN\r\n").0,
            "AUTH CRAM-MD5\r\n"
        );

        let mut c = customer(&[]);
        c.cfg.starttls = true;
        step(&mut c, "220 p\r\n");
        assert_eq!(
            step(&mut c, "250-p\r\n250-AUTH CRAM-MD5\r\n250 ATRN\r\n").0,
            "QUIT\r\n"
        );
        assert!(matches!(c.closed(), Some(FrontEnd::Failed(m)) if m.contains("STARTTLS")));
    }

    fn etrn_customer(password: &str, domains: &[&str]) -> Customer {
        let mut c = customer(domains);
        c.cfg.request = Request::Etrn;
        c.cfg.password = password.as_bytes().to_vec();
        c
    }

    #[test]
    fn etrn_without_a_password_asks_for_each_domain_then_quits() {
        let mut c = etrn_customer("", &["example.org", "example.net", "example.com"]);
        assert_eq!(step(&mut c, "220 mx ESMTP\r\n").0, "EHLO cust.example\r\n");
        // No ATRN needed, and no AUTH without a password even when offered.
        assert_eq!(
            step(&mut c, "250-mx\r\n250-AUTH CRAM-MD5\r\n250 ETRN\r\n").0,
            "ETRN example.org\r\n"
        );
        assert_eq!(c.waiting_for(), Wait::Command);
        assert_eq!(
            step(&mut c, "253 2.0.0 OK, 2 pending messages\r\n").0,
            "ETRN example.net\r\n"
        );
        assert_eq!(
            step(&mut c, "251 OK, no messages waiting\r\n").0,
            "ETRN example.com\r\n"
        );
        assert_eq!(step(&mut c, "458 4.3.0 busy\r\n").0, "QUIT\r\n");
        let (_, s) = step(&mut c, "221 bye\r\n");
        let CustomerStep::Ended(FrontEnd::Etrn(got)) = s else {
            panic!("{s:?}")
        };
        let kinds: Vec<(&str, u16)> = got
            .iter()
            .map(|(d, o)| {
                let code = match o {
                    EtrnOutcome::Started(r) => r.code,
                    EtrnOutcome::NoMail(r) => r.code,
                    EtrnOutcome::TryLater(r) => r.code,
                    _ => 0,
                };
                (d.as_str(), code)
            })
            .collect();
        assert_eq!(
            kinds,
            [("example.org", 253), ("example.net", 251), ("example.com", 458)]
        );
    }

    #[test]
    fn etrn_with_a_password_authenticates_first_and_a_5xx_stops_the_etrns() {
        let mut c = etrn_customer("tanstaaftanstaaf", &["example.org", "example.net"]);
        through_auth(&mut c);
        assert_eq!(step(&mut c, "235 2.7.0 ok\r\n").0, "ETRN example.org\r\n");
        assert_eq!(step(&mut c, "502 5.5.1 ETRN not implemented\r\n").0, "QUIT\r\n");
        // The provider closes without answering QUIT: the outcome is still known.
        let Some(FrontEnd::Etrn(got)) = c.closed() else {
            panic!()
        };
        assert!(
            matches!(&got[..], [(d, EtrnOutcome::NotSupported(r))] if d == "example.org" && r.code == 502)
        );

        let mut c = etrn_customer("pw", &["example.org"]);
        step(&mut c, "220 mx\r\n");
        step(&mut c, "250-mx\r\n250-AUTH CRAM-MD5\r\n250 ETRN\r\n");
        step(
            &mut c,
            "334 PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+\r\n",
        );
        assert_eq!(step(&mut c, "235 ok\r\n").0, "ETRN example.org\r\n");
        step(&mut c, "459 4.7.1 Node example.org not allowed\r\n");
        let (_, s) = step(&mut c, "221 bye\r\n");
        assert!(
            matches!(s, CustomerStep::Ended(FrontEnd::Etrn(g)) if matches!(g[0].1, EtrnOutcome::NotAllowed(_)))
        );

        // A password but no AUTH offered: never go on unauthenticated.
        let mut c = etrn_customer("pw", &["example.org"]);
        step(&mut c, "220 mx\r\n");
        assert_eq!(step(&mut c, "250-mx\r\n250 ETRN\r\n").0, "QUIT\r\n");
        assert!(matches!(c.closed(), Some(FrontEnd::Failed(m)) if m.contains("AUTH")));
    }
}
