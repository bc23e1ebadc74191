//! Every transcript in `tests/transcripts/`, replayed against the sans-I/O machines with an
//! in-memory world and no sockets. The same files are replayed over real sockets by the `odmr`
//! crate's tests.

use base64::Engine;
use bytes::BytesMut;
use odmr_proto::odmr::{AtrnDecision, OdmrConfig, OdmrSession, OdmrStep};
use odmr_proto::sasl::cram_md5::{self, CramSecret};
use odmr_proto::smtp_server::{PeerInfo, RcptVerdict, ServerConfig, ServerStep, SmtpServer};
use odmr_proto::transcript::{matches, Step, Transcript};
use std::path::PathBuf;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

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
                OdmrStep::LookupSecret { user } => {
                    let secret = t
                        .accounts
                        .iter()
                        .find(|a| a.name == user)
                        .map(|a| CramSecret::from_password(a.password.as_bytes()));
                    self.s.secret(secret);
                }
                OdmrStep::LookupScram { user } => {
                    let v = t.accounts.iter().find(|a| a.name == user).map(|a| {
                        odmr_proto::sasl::scram::ScramVerifier::from_password(
                            &a.password,
                            b"transcript-salt!",
                            4096,
                        )
                        .expect("verifier")
                    });
                    self.s.scram_verifier(v);
                }
                // No TLS at unit level, so EXTERNAL is never offered.
                OdmrStep::External { .. } => {
                    self.s.external_result(None);
                }
                OdmrStep::CheckPassword { user, password } => {
                    let ok = t
                        .accounts
                        .iter()
                        .any(|a| a.name == user && a.password == password);
                    self.s.password_checked(ok);
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
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("transcript dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no transcripts in {}", dir.display());
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let t = Transcript::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, t)
        })
        .collect()
}

#[test]
fn mx_transcripts() {
    for (name, t) in transcripts("mx") {
        let peer = PeerInfo {
            ip: "192.0.2.1".into(),
            session: "test".into(),
        };
        let mut m = Mx {
            s: SmtpServer::new(ServerConfig::new("mx.example.net"), peer),
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
