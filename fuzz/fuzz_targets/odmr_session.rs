//! `OdmrSession` (the provider's front half) driven by arbitrary client bytes.
//!
//! Input: the common header, then what the client sends. Flags (octet 0): bit 0 offer STARTTLS,
//! bit 1 `require_tls`, bit 2 the connection is TLS from the start, bits 3-4 `max_errors`
//! (20, 0, 1, 3), bits 5-6 `max_auth_failures` (5, 0, 3, 100), bit 7 the TLS client presents a
//! verified certificate (`set_client_cert`, once TLS is up).
//!
//! So that the fuzzer can get past AUTH, tokens in the transcript are replaced, when the client
//! "sends" them, by what a real client of account `acme`, password `pw` would send (a token whose
//! input is missing stays as it is):
//! - `$CRAM$`: base64 of the CRAM-MD5 response to the last challenge;
//! - `$SCRAM1$`: base64 of a SCRAM-SHA-256 client-first;
//! - `$SCRAM2$`: base64 of the client-final for the last `334` server-first.
//!
//! Decisions come from the decision tape: `LookupSecret` gets that account's CRAM secret (for any
//! user), `None` or `auth_temporary_failure`; `LookupScram` its SCRAM verifier, `None` or the
//! temporary failure; `CheckPassword` true or false; `External` account `acme` (if the authzid
//! is empty or `acme`), `None` or the temporary failure; `Atrn` one of the five decisions.
//! `Turnaround` ends the run; STARTTLS is handled as the driver does (handshake if no input is
//! buffered, else close). Checks:
//! - no panic; every poll ends in a step; at most `MAX_IDLE_POLLS` polls in a row consume
//!   nothing; fewer than the AUTH line limit stay buffered after `NeedInput`; output bounded;
//! - authenticated only with the 235 written: whenever `account()` becomes set, that call wrote
//!   `235 Authentication successful`; `secret()`, `password_checked()` and `external_result()`
//!   return true exactly when they write it;
//! - PLAIN/LOGIN passwords (`CheckPassword`) only under TLS, EXTERNAL only under TLS with a
//!   client certificate;
//! - every `Atrn` step is for the authenticated account, its domains valid, lower-case and
//!   distinct, and the reply to each decision is a single line with the code of the decision;
//! - `Turnaround` leaves the input untouched and is final; so are `Close` and `StartTls`.

#![no_main]

mod common;

use base64::Engine;
use bytes::BytesMut;
use common::{check_output_bound, Input, Progress};
use libfuzzer_sys::fuzz_target;
use odmr_proto::auth::AuthStep;
use odmr_proto::odmr::{AtrnDecision, OdmrConfig, OdmrSession, OdmrStep};
use odmr_proto::sasl::cram_md5::{self, CramSecret};
use odmr_proto::sasl::scram::{ScramClient, ScramVerifier, DEFAULT_ITERATIONS};
use std::sync::OnceLock;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// `MAX_AUTH_LINE` of the session: the longest line it buffers.
const MAX_LINE: usize = 12288;
const AUTHENTICATED: &[u8] = b"235 Authentication successful\r\n";

#[derive(Clone, Copy)]
enum Token {
    Cram,
    Scram1,
    Scram2,
}

const TOKENS: [(&[u8], Token); 3] = [
    (b"$CRAM$", Token::Cram),
    (b"$SCRAM1$", Token::Scram1),
    (b"$SCRAM2$", Token::Scram2),
];

fn verifier() -> &'static ScramVerifier {
    static V: OnceLock<ScramVerifier> = OnceLock::new();
    V.get_or_init(|| {
        ScramVerifier::from_password("pw", b"fuzz-salt-16octs", DEFAULT_ITERATIONS).expect("verifier")
    })
}

/// The transcript, with tokens computed when they are reached.
struct Client<'a> {
    chunks: common::Chunks<'a>,
    /// Octets of the current read not yet fed.
    pending: &'a [u8],
    scram: Option<ScramClient>,
}

impl<'a> Client<'a> {
    /// Appends the next piece of input: the current read up to the next token, or the token's
    /// substitute. `last_334` is the payload of the last 334 line the session wrote. False at
    /// end of stream.
    fn feed(&mut self, buf: &mut BytesMut, last_334: Option<&[u8]>, progress: &mut Progress) -> bool {
        if self.pending.is_empty() {
            match self.chunks.next_chunk() {
                Some(c) => self.pending = c,
                None => return false,
            }
        }
        let p = self.pending;
        let next = TOKENS
            .iter()
            .filter_map(|&(t, kind)| p.windows(t.len()).position(|w| w == t).map(|i| (i, t, kind)))
            .min_by_key(|&(i, _, _)| i);
        match next {
            Some((0, t, kind)) => {
                let substitute = match kind {
                    Token::Cram => {
                        last_334.map(|ch| B64.encode(cram_md5::client_response("acme", b"pw", ch)))
                    }
                    Token::Scram1 => {
                        let c = ScramClient::new("acme", "pw", "fuzzclientnonce").expect("client");
                        let first = B64.encode(c.client_first());
                        self.scram = Some(c);
                        Some(first)
                    }
                    Token::Scram2 => match (self.scram.as_mut(), last_334) {
                        (Some(c), Some(sf)) => c.server_first(sf).ok().map(|f| B64.encode(f)),
                        _ => None,
                    },
                };
                match substitute {
                    Some(s) => buf.extend_from_slice(s.as_bytes()),
                    None => buf.extend_from_slice(t),
                }
                self.pending = &p[t.len()..];
            }
            Some((i, _, _)) => {
                buf.extend_from_slice(&p[..i]);
                self.pending = &p[i..];
            }
            None => {
                buf.extend_from_slice(p);
                self.pending = &[];
            }
        }
        progress.fed();
        true
    }
}

/// The payload of the last `334` line in `out`, decoded.
fn last_334(out: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(out).ok()?;
    let b64 = text.lines().rev().find_map(|l| l.strip_prefix("334 "))?;
    B64.decode(b64).ok()
}

fn is_valid_domain(d: &str) -> bool {
    let labels: Vec<&str> = d.split('.').collect();
    d.len() <= 255
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

struct Session {
    s: OdmrSession,
    account: Option<String>,
    out_total: usize,
    last_334: Option<Vec<u8>>,
}

impl Session {
    /// Takes the output of the last call, checks that the account changed only with a 235, and
    /// returns the output.
    fn after_call(&mut self, live: bool) -> Vec<u8> {
        let out = std::mem::take(self.s.output());
        if common::tracing() && !out.is_empty() {
            eprintln!("  out {:?}", String::from_utf8_lossy(&out));
        }
        self.out_total += out.len();
        if let Some(c) = last_334(&out) {
            self.last_334 = Some(c);
        }
        if live {
            let now = self.s.account().map(str::to_string);
            if now != self.account {
                assert!(
                    now.is_some() && self.account.is_none() && contains(&out, AUTHENTICATED),
                    "account {:?} -> {now:?} with output {:?}",
                    self.account,
                    String::from_utf8_lossy(&out)
                );
                self.account = now;
            }
        }
        out
    }
}

fuzz_target!(|data: &[u8]| {
    let Input {
        flags,
        mut decisions,
        chunks,
    } = Input::parse(data);
    let mut cfg = OdmrConfig::new("odmr.example.net");
    cfg.starttls = flags & 1 != 0;
    cfg.require_tls = flags & 2 != 0;
    cfg.max_errors = [20, 0, 1, 3][usize::from((flags >> 3) & 3)];
    cfg.max_auth_failures = [5, 0, 3, 100][usize::from((flags >> 5) & 3)];
    let mut s = OdmrSession::new(cfg, 0x5eed, 1_800_000_000);
    let client_cert = flags & 0x80 != 0;
    if flags & 4 != 0 {
        s.set_tls();
        if client_cert {
            s.set_client_cert();
        }
    }
    let mut ss = Session {
        s,
        account: None,
        out_total: 0,
        last_334: None,
    };
    ss.after_call(true);
    let secret = CramSecret::from_password(b"pw");

    let mut client = Client {
        chunks,
        pending: &[],
        scram: None,
    };
    let mut input = BytesMut::new();
    let mut progress = Progress::default();
    let mut consumed = 0usize;

    loop {
        let before = input.len();
        let step = ss.s.poll(&mut input);
        let after = input.len();
        progress.poll(before, after, &step);
        consumed += before - after;
        common::trace(&step, &[]);
        let live = matches!(
            step,
            OdmrStep::NeedInput
                | OdmrStep::Auth(AuthStep::LookupSecret { .. })
                | OdmrStep::Auth(AuthStep::LookupScram { .. })
                | OdmrStep::Auth(AuthStep::CheckPassword { .. })
                | OdmrStep::Auth(AuthStep::External { .. })
                | OdmrStep::Atrn { .. }
        );
        ss.after_call(live);
        check_output_bound(ss.out_total, consumed);

        match step {
            OdmrStep::NeedInput => {
                assert!(
                    input.len() < MAX_LINE,
                    "{} octets buffered after NeedInput",
                    input.len()
                );
                if !client.feed(&mut input, ss.last_334.as_deref(), &mut progress) {
                    break;
                }
            }
            OdmrStep::Auth(AuthStep::LookupSecret { user }) => {
                assert!(ss.account.is_none(), "AUTH while authenticated");
                assert!(
                    !user.is_empty() && !user.chars().any(char::is_control),
                    "{user:?}"
                );
                match decisions.next() % 4 {
                    0 | 1 => {
                        let ok = ss.s.secret(Some(secret.clone()));
                        let out = ss.after_call(true);
                        assert_eq!(
                            ok,
                            out.starts_with(AUTHENTICATED),
                            "secret() = {ok}, wrote {out:?}"
                        );
                    }
                    2 => {
                        assert!(!ss.s.secret(None), "authenticated without a secret");
                        ss.after_call(true);
                    }
                    _ => {
                        ss.s.auth_temporary_failure();
                        ss.after_call(true);
                    }
                }
            }
            OdmrStep::Auth(AuthStep::LookupScram { user }) => {
                assert!(ss.account.is_none(), "AUTH while authenticated");
                assert!(!user.is_empty(), "empty SCRAM user");
                match decisions.next() % 4 {
                    0 | 1 => ss.s.scram_verifier(Some(verifier().clone())),
                    2 => ss.s.scram_verifier(None),
                    _ => ss.s.auth_temporary_failure(),
                }
                ss.after_call(true);
            }
            OdmrStep::Auth(AuthStep::CheckPassword { user, password }) => {
                assert!(ss.s.is_tls(), "PLAIN/LOGIN password accepted without TLS");
                assert!(ss.account.is_none(), "AUTH while authenticated");
                assert!(!user.is_empty() && !password.is_empty());
                let verdict = decisions.next() % 3 != 2;
                let ok = ss.s.password_checked(verdict);
                assert_eq!(ok, verdict);
                let out = ss.after_call(true);
                assert_eq!(
                    ok,
                    out.starts_with(AUTHENTICATED),
                    "password_checked() = {ok}, wrote {out:?}"
                );
            }
            OdmrStep::Auth(AuthStep::External { authzid }) => {
                assert!(
                    ss.s.is_tls() && client_cert,
                    "EXTERNAL without TLS and a client certificate"
                );
                assert!(ss.account.is_none(), "AUTH while authenticated");
                match decisions.next() % 4 {
                    0 | 1 => {
                        let account = (authzid.is_empty() || authzid == "acme").then(|| "acme".to_string());
                        let expected = account.is_some();
                        let ok = ss.s.external_result(account);
                        assert_eq!(ok, expected);
                        let out = ss.after_call(true);
                        assert_eq!(
                            ok,
                            out.starts_with(AUTHENTICATED),
                            "external_result() = {ok}, wrote {out:?}"
                        );
                    }
                    2 => {
                        assert!(!ss.s.external_result(None));
                        ss.after_call(true);
                    }
                    _ => {
                        ss.s.auth_temporary_failure();
                        ss.after_call(true);
                    }
                }
            }
            OdmrStep::Atrn {
                account: who,
                domains,
            } => {
                assert_eq!(Some(&who), ss.account.as_ref(), "ATRN for another account");
                for (i, d) in domains.iter().enumerate() {
                    assert!(is_valid_domain(d), "invalid domain {d:?} in ATRN");
                    assert!(!domains[..i].contains(d), "duplicate domain {d:?}");
                }
                let (decision, code) = match decisions.next() % 5 {
                    0 => (AtrnDecision::Granted, b"250 "),
                    1 => (AtrnDecision::Refused, b"450 "),
                    2 => (AtrnDecision::NoMail, b"453 "),
                    3 => (AtrnDecision::Busy, b"451 "),
                    _ => (AtrnDecision::TempError, b"451 "),
                };
                let granted = decision == AtrnDecision::Granted;
                ss.s.atrn_decision(decision);
                let out = ss.after_call(!granted);
                assert!(
                    out.starts_with(code)
                        && out.ends_with(b"\r\n")
                        && out.iter().filter(|&&b| b == b'\n').count() == 1,
                    "ATRN reply is not one line with {:?}: {:?}",
                    String::from_utf8_lossy(code),
                    String::from_utf8_lossy(&out)
                );
            }
            OdmrStep::Turnaround => {
                let left = input.clone();
                assert_eq!(ss.s.poll(&mut input), OdmrStep::Turnaround);
                assert_eq!(input, left, "input consumed after the turnaround");
                assert!(ss.s.output().is_empty());
                break;
            }
            OdmrStep::StartTls => {
                assert_eq!(ss.s.poll(&mut input), OdmrStep::StartTls);
                assert_eq!(
                    input.len(),
                    after,
                    "input consumed while waiting for the handshake"
                );
                if !input.is_empty() {
                    break;
                }
                ss.s.tls_started();
                if client_cert {
                    ss.s.set_client_cert();
                }
                assert!(ss.s.is_tls());
                assert_eq!(ss.s.account(), None);
                ss.account = None;
            }
            OdmrStep::Close => {
                assert_eq!(ss.s.poll(&mut input), OdmrStep::Close);
                assert_eq!(input.len(), after, "input consumed after Close");
                break;
            }
        }
    }
});
