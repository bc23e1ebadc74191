//! Every transcript in `tests/transcripts/`, replayed against the sans-I/O machines with an
//! in-memory world and no sockets. The same files are replayed over real sockets by the `odmr`
//! crate's tests.

use base64::Engine;
use bytes::BytesMut;
use odmr_proto::auth::{AuthAnswer, AuthConfig, AuthStep};
use odmr_proto::odmr::{AtrnDecision, OdmrConfig, OdmrSession, OdmrStep};
use odmr_proto::relay::{Relay, RelayStep};
use odmr_proto::reply::Reply;
use odmr_proto::sasl::cram_md5::{self, CramSecret};
use odmr_proto::smtp_server::{EtrnVerdict, PeerInfo, RcptVerdict, ServerConfig, ServerStep, SmtpServer};
use odmr_proto::transcript::{matches, Step, Transcript};
use std::collections::VecDeque;
use std::path::PathBuf;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The world's answer to an AUTH lookup: the accounts of the transcript, their passwords.
fn auth_answer(t: &Transcript, step: AuthStep) -> AuthAnswer {
    let account = |user: &str| t.accounts.iter().find(|a| a.name == user);
    match step {
        AuthStep::LookupSecret { user } => {
            AuthAnswer::Secret(account(&user).map(|a| CramSecret::from_password(a.password.as_bytes())))
        }
        AuthStep::LookupScram { user } => AuthAnswer::Scram(account(&user).map(|a| {
            odmr_proto::sasl::scram::ScramVerifier::from_password(&a.password, b"transcript-salt!", 4096)
                .expect("verifier")
        })),
        // No TLS at unit level, so EXTERNAL is never offered.
        AuthStep::External { .. } => AuthAnswer::External(None),
        AuthStep::CheckPassword { user, password } => {
            AuthAnswer::Password(account(&user).is_some_and(|a| a.password == password))
        }
    }
}

/// The world's ETRN verdict, as the server decides it (docs/protocol-decisions.md): the node's
/// domains among those of the authenticated account (none without AUTH: the transcripts use
/// no client-address rules), 459 if there are none; 458 without an ETRN destination; the world
/// holds no mail, so 251 otherwise.
fn etrn_verdict(t: &Transcript, account: Option<&str>, node: &str, subdomains: bool) -> EtrnVerdict {
    let Some(a) = account.and_then(|n| t.accounts.iter().find(|a| a.name == n)) else {
        return EtrnVerdict::NotAllowed;
    };
    let suffix = format!(".{node}");
    let matched = a
        .domains
        .iter()
        .any(|d| d == node || (subdomains && d.ends_with(&suffix)));
    if !matched {
        EtrnVerdict::NotAllowed
    } else if a.etrn_destination.is_none() {
        EtrnVerdict::Unable("no ETRN destination is set for this node".into())
    } else {
        EtrnVerdict::NoMessages
    }
}

trait Machine {
    /// Run until the machine wants input; returns false once it closed.
    fn run(&mut self, input: &mut BytesMut, t: &Transcript) -> bool;
    fn output(&mut self) -> &mut Vec<u8>;
}

struct Mx {
    s: SmtpServer,
    messages: Vec<Vec<u8>>,
    body: Vec<u8>,
}

impl Machine for Mx {
    fn run(&mut self, input: &mut BytesMut, t: &Transcript) -> bool {
        let owners = t.domain_owners();
        loop {
            match self.s.poll(input) {
                ServerStep::NeedInput => return true,
                ServerStep::Close => return false,
                ServerStep::Reset => {}
                // The unit-level world has no TLS; STARTTLS is tested over sockets.
                ServerStep::StartTls => return false,
                ServerStep::CheckSender { .. } => self.s.sender_verdict(Ok(())),
                ServerStep::CheckRecipient { domain, .. } => {
                    self.s.recipient_verdict(if owners.contains_key(&domain) {
                        RcptVerdict::Accept
                    } else {
                        RcptVerdict::NotHosted
                    })
                }
                ServerStep::StartData(_) => {
                    self.body.clear();
                    self.s.data_ready("Sun, 22 Nov 2026 12:00:00 +0000")
                }
                ServerStep::Body(b) => self.body.extend_from_slice(&b),
                ServerStep::EndData { .. } => {
                    self.messages.push(std::mem::take(&mut self.body));
                    self.s
                        .committed(Ok(format!("OK queued as {}", self.messages.len())))
                }
                ServerStep::AbortData => self.body.clear(),
                // Verdicts are given at once (as the MX does): nothing is ever deferred.
                ServerStep::Settle => return false,
                ServerStep::Auth(step) => {
                    self.s.auth_answer(auth_answer(t, step));
                }
                ServerStep::Etrn { node, subdomains } => {
                    let v = etrn_verdict(t, self.s.account(), &node, subdomains);
                    self.s.etrn_verdict(v)
                }
            }
        }
    }
    fn output(&mut self) -> &mut Vec<u8> {
        self.s.output()
    }
}

struct Odmr {
    s: OdmrSession,
}

impl Machine for Odmr {
    fn run(&mut self, input: &mut BytesMut, t: &Transcript) -> bool {
        loop {
            match self.s.poll(input) {
                OdmrStep::NeedInput => return true,
                OdmrStep::Close | OdmrStep::Turnaround | OdmrStep::StartTls => return false,
                OdmrStep::Auth(step) => {
                    self.s.auth_answer(auth_answer(t, step));
                }
                OdmrStep::Atrn { account, domains } => {
                    let owned = &t
                        .accounts
                        .iter()
                        .find(|a| a.name == account)
                        .expect("authenticated")
                        .domains;
                    let ok = domains.iter().all(|d| owned.contains(d));
                    // The unit-level world holds no mail; delivery is tested end to end.
                    self.s.atrn_decision(if ok {
                        AtrnDecision::NoMail
                    } else {
                        AtrnDecision::Refused
                    });
                }
            }
        }
    }
    fn output(&mut self) -> &mut Vec<u8> {
        self.s.output()
    }
}

fn replay(name: &str, t: &Transcript, m: &mut dyn Machine) {
    let mut input = BytesMut::new();
    let mut out: Vec<u8> = Vec::new();
    let mut last_challenge = Vec::new();
    let mut open = m.run(&mut input, t);
    for (i, step) in t.steps.iter().enumerate() {
        out.append(m.output());
        match step {
            Step::Expect(pat) => {
                let Some(nl) = out.windows(2).position(|w| w == b"\r\n") else {
                    panic!("{name} step {i}: expected {pat:?}, the server sent nothing more");
                };
                let line = String::from_utf8_lossy(&out[..nl]).into_owned();
                out.drain(..nl + 2);
                assert!(
                    matches(pat, &line),
                    "{name} step {i}: expected {pat:?}, got {line:?}"
                );
                if let Some(c) = line.strip_prefix("334 ") {
                    last_challenge = B64.decode(c).unwrap_or_default();
                }
            }
            Step::Send(bytes) => {
                assert!(open, "{name} step {i}: the server closed the session");
                input.extend_from_slice(bytes);
                open = m.run(&mut input, t);
            }
            Step::Cram { user, password } => {
                let resp = cram_md5::client_response(user, password.as_bytes(), &last_challenge);
                input.extend_from_slice(B64.encode(resp).as_bytes());
                input.extend_from_slice(b"\r\n");
                open = m.run(&mut input, t);
            }
            Step::Local(_) | Step::Relayed(_) => panic!("{name}: L: and R: belong to reversed sessions"),
        }
    }
    out.append(m.output());
    assert!(
        out.is_empty(),
        "{name}: unexpected output {:?}",
        String::from_utf8_lossy(&out)
    );
}

fn transcripts(kind: &str) -> Vec<(String, Transcript)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/transcripts")
        .join(kind);
    odmr_proto::transcript::load_dir(&dir).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn mx_transcripts() {
    for (name, t) in transcripts("mx") {
        let peer = PeerInfo {
            ip: "192.0.2.1".into(),
            session: "test".into(),
        };
        // As `odmr server` runs the MX by default: AUTH, ETRN and CHUNKING offered.
        let mut cfg = ServerConfig::new("mx.example.net");
        cfg.etrn = true;
        cfg.chunking = true;
        let mut s = SmtpServer::new(cfg, peer);
        s.enable_auth(AuthConfig::default(), 42, 1_800_000_000);
        let mut m = Mx {
            s,
            messages: Vec::new(),
            body: Vec::new(),
        };
        replay(&name, &t, &mut m);
        if name == "basic.txt" {
            let msg = String::from_utf8(m.messages[0].clone()).unwrap();
            assert!(
                msg.starts_with("Received: from client.example ([192.0.2.1])\r\n\tby mx.example.net"),
                "{msg}"
            );
            assert!(
                msg.ends_with("Subject: hello\r\n\r\n.a line that starts with a dot\r\n"),
                "{msg}"
            );
        }
        if name == "bdat.txt" {
            let content: Vec<&[u8]> = m
                .messages
                .iter()
                .map(|msg| &msg[msg.windows(4).position(|w| w == b"0000").unwrap() + 6..])
                .collect();
            assert_eq!(content, [&b"Subject: one\r\n\r\n.\r\n.\r\nend\r\n"[..], b""]);
        }
        if name == "smuggling.txt" || name == "loop.txt" {
            assert!(m.messages.is_empty(), "{name}: a refused message was accepted");
        }
    }
}

#[test]
fn odmr_transcripts() {
    for (name, t) in transcripts("odmr") {
        let mut m = Odmr {
            s: OdmrSession::new(OdmrConfig::new("odmr.example.net"), 42, 1_800_000_000),
        };
        replay(&name, &t, &mut m);
    }
}

// ----- the reversed session: the provider (C:) delivers to the customer (S:), whose relay
// writes to its local MTA (R:), which answers (L:) -----

/// What the customer passed on to the relay, to finish once the relay is idle again.
enum Pending {
    /// The relay's greeting and hello: then the SMTP server starts.
    Setup,
    Sender,
    Rcpt,
    Data,
    /// The relay was reset after it refused DATA: then the refusal.
    DataRefused(Reply),
    End,
    Settle,
    Quiet,
    Close,
}

/// The customer's side as crates/odmr/src/client/receive.rs runs it (`SmtpServer` in customer
/// mode, each command passed on to the relay), written as a machine of its own so that it
/// can wait for the local MTA's replies between steps.
struct Reversed {
    s: Option<SmtpServer>,
    input: BytesMut,
    out: Vec<u8>,
    relay: Relay,
    relay_in: BytesMut,
    relay_out: Vec<u8>,
    answer: Option<Result<(), Reply>>,
    verdicts: VecDeque<Reply>,
    pending: Option<Pending>,
    awaiting: bool,
    done: bool,
}

fn data_is_next(input: &[u8]) -> bool {
    let starts = |p: &[u8]| input.len() >= p.len() && input[..p.len()].eq_ignore_ascii_case(p);
    starts(b"DATA\r\n") || starts(b"BDAT ")
}

impl Reversed {
    fn new(lmtp: bool) -> Self {
        Reversed {
            s: None,
            input: BytesMut::new(),
            out: Vec::new(),
            relay: Relay::new(lmtp, "customer.example"),
            relay_in: BytesMut::new(),
            relay_out: Vec::new(),
            answer: None,
            verdicts: VecDeque::new(),
            pending: Some(Pending::Setup),
            awaiting: false,
            done: false,
        }
    }

    /// Runs the relay until it is idle (true) or waits for the local MTA (false).
    fn relay(&mut self) -> bool {
        loop {
            match self.relay.poll(&mut self.relay_in) {
                RelayStep::Write => self.relay_out.append(self.relay.output()),
                RelayStep::NeedInput => return false,
                RelayStep::Answer(a) => self.answer = Some(a),
                RelayStep::Verdict(v) => self.verdicts.push_back(v),
                RelayStep::Close => {}
                RelayStep::Idle => return true,
                RelayStep::Failed(why) => panic!("the relay could not start: {why}"),
            }
        }
    }

    fn pass_on(&mut self, p: Pending) {
        self.pending = Some(p);
    }

    fn answer(&mut self) -> Result<(), Reply> {
        self.answer.take().expect("the relay answered")
    }

    fn give_verdict(&mut self, reply: Reply) {
        self.awaiting = false;
        let s = self.s.as_mut().expect("a session");
        if reply.is_positive() {
            s.committed(Ok(format!("OK delivered locally: {reply}")));
        } else {
            s.committed(Err(reply.with_class_status()));
        }
        self.out.append(s.output());
    }

    /// The relay is idle again: the customer's answer to what it passed on.
    fn finish(&mut self, p: Pending) {
        match p {
            Pending::Setup => {
                let caps = self.relay.caps().clone();
                let mut cfg = ServerConfig::new("customer.example");
                cfg.max_message_size = caps.max_size;
                cfg.eight_bit_mime = caps.eight_bit_mime;
                cfg.smtputf8 = caps.smtputf8;
                cfg.dsn = false;
                cfg.max_recipients = caps.max_recipients.max(1);
                cfg.max_messages = u64::MAX;
                cfg.max_errors = usize::MAX;
                cfg.check_sender = true;
                cfg.chunking = true;
                let peer = PeerInfo {
                    ip: "192.0.2.1".into(),
                    session: "test".into(),
                };
                self.s = Some(SmtpServer::new(cfg, peer));
            }
            Pending::Sender => {
                let v = self.answer();
                let s = self.s.as_mut().expect("a session");
                s.sender_verdict(v.map_err(Reply::with_class_status));
            }
            Pending::Rcpt => {
                let v = match self.answer() {
                    Ok(()) => RcptVerdict::Accept,
                    Err(r) => RcptVerdict::Refuse(r.with_class_status()),
                };
                self.s.as_mut().expect("a session").recipient_verdict(v);
            }
            Pending::Data => match self.answer() {
                Ok(()) => self
                    .s
                    .as_mut()
                    .expect("a session")
                    .data_ready("Sun, 22 Nov 2026 12:00:00 +0000"),
                Err(r) => {
                    self.relay.reset();
                    self.pass_on(Pending::DataRefused(r));
                }
            },
            Pending::DataRefused(r) => {
                let s = self.s.as_mut().expect("a session");
                s.data_refused(r.with_class_status());
            }
            Pending::End => {
                self.awaiting = true;
                if self.relay.verdict_owed() {
                    self.s.as_mut().expect("a session").defer_commit();
                } else {
                    let v = self.verdicts.pop_back().expect("the verdict");
                    self.give_verdict(v);
                }
            }
            Pending::Settle => {
                let v = self.verdicts.pop_front().expect("the verdict owed");
                self.give_verdict(v);
            }
            Pending::Quiet => {}
            Pending::Close => self.done = true,
        }
        if let Some(s) = self.s.as_mut() {
            self.out.append(s.output());
        }
    }

    /// Runs until it waits for the provider or the local MTA; true if anything happened.
    fn advance(&mut self) -> bool {
        let mut progress = false;
        loop {
            if let Some(p) = self.pending.take() {
                if !self.relay() {
                    self.pending = Some(p);
                    return progress;
                }
                progress = true;
                self.finish(p);
                continue;
            }
            if self.done {
                return progress;
            }
            if self.awaiting {
                if let Some(v) = self.verdicts.pop_front() {
                    self.give_verdict(v);
                }
            }
            let s = self.s.as_mut().expect("a session");
            let step = s.poll(&mut self.input);
            self.out.append(s.output());
            match step {
                ServerStep::NeedInput => return progress,
                ServerStep::CheckSender { from, params } => {
                    self.relay.mail(&from, &params);
                    self.pass_on(Pending::Sender);
                }
                ServerStep::CheckRecipient { address, .. } => {
                    if data_is_next(&self.input) {
                        self.relay.expect_data();
                    }
                    self.relay.rcpt(&address);
                    self.pass_on(Pending::Rcpt);
                }
                ServerStep::StartData(_) => {
                    self.relay.data();
                    self.pass_on(Pending::Data);
                }
                ServerStep::Body(chunk) => {
                    self.relay.body(&chunk);
                    self.pass_on(Pending::Quiet);
                }
                ServerStep::EndData { .. } => {
                    self.relay.end();
                    self.pass_on(Pending::End);
                }
                ServerStep::Settle => {
                    self.relay.settle();
                    self.pass_on(Pending::Settle);
                }
                ServerStep::AbortData | ServerStep::Reset => {
                    self.relay.reset();
                    self.pass_on(Pending::Quiet);
                }
                ServerStep::Close => {
                    self.relay.close();
                    self.pass_on(Pending::Close);
                }
                s => panic!("not in the reversed session: {s:?}"),
            }
            progress = true;
        }
    }
}

/// The next line (without CRLF) of `out`, taken off it.
fn take_line(out: &mut Vec<u8>) -> Option<String> {
    let nl = out.windows(2).position(|w| w == b"\r\n")?;
    let line = String::from_utf8_lossy(&out[..nl]).into_owned();
    out.drain(..nl + 2);
    Some(line)
}

/// Replays a reversed transcript: the provider's lines (C:, S:) and the local MTA's (L:, R:)
/// are two scripts, each followed in its own order; the customer runs between their steps.
fn replay_reversed(name: &str, t: &Transcript) {
    let mut c = Reversed::new(t.lmtp);
    let provider: Vec<&Step> = t
        .steps
        .iter()
        .filter(|s| matches!(s, Step::Send(_) | Step::Expect(_)))
        .collect();
    let local: Vec<&Step> = t
        .steps
        .iter()
        .filter(|s| matches!(s, Step::Local(_) | Step::Relayed(_)))
        .collect();
    let (mut pi, mut li) = (0, 0);
    loop {
        let mut progress = c.advance();
        while let Some(step) = local.get(li) {
            match step {
                Step::Local(b) => c.relay_in.extend_from_slice(b),
                Step::Relayed(pat) => {
                    let Some(line) = take_line(&mut c.relay_out) else {
                        break;
                    };
                    assert!(
                        matches(pat, &line),
                        "{name}: local MTA step {li}: expected {pat:?}, the relay wrote {line:?}"
                    );
                }
                _ => unreachable!(),
            }
            li += 1;
            progress = true;
        }
        // One step of the provider's at a time: the customer takes in each before the next.
        match provider.get(pi) {
            Some(Step::Send(b)) => {
                c.input.extend_from_slice(b);
                pi += 1;
                progress = true;
            }
            Some(Step::Expect(pat)) => {
                if let Some(line) = take_line(&mut c.out) {
                    assert!(
                        matches(pat, &line),
                        "{name}: provider step {pi}: expected {pat:?}, the customer sent {line:?}"
                    );
                    pi += 1;
                    progress = true;
                }
            }
            _ => {}
        }
        if !progress {
            break;
        }
    }
    assert_eq!(
        (pi, li),
        (provider.len(), local.len()),
        "{name}: stuck at provider step {pi}, local MTA step {li}; the customer sent {:?}, the relay wrote {:?}",
        String::from_utf8_lossy(&c.out),
        String::from_utf8_lossy(&c.relay_out)
    );
    assert!(c.done, "{name}: the session did not end");
    assert!(
        c.out.is_empty(),
        "{name}: unexpected output {:?}",
        String::from_utf8_lossy(&c.out)
    );
    assert!(
        c.relay_out.is_empty(),
        "{name}: unexpected relay output {:?}",
        String::from_utf8_lossy(&c.relay_out)
    );
}

#[test]
fn reversed_transcripts() {
    for (name, t) in transcripts("reversed") {
        replay_reversed(&name, &t);
    }
}
