//! The transcripts of `tests/transcripts/`, replayed over real sockets against a running
//! `odmr server` (the same files the proto crate replays against the machines).

mod common;

use base64::Engine;
use common::{Line, Server};
use odmr_proto::sasl::cram_md5;
use odmr_proto::transcript::{matches, Step};
use std::path::PathBuf;

fn replay(kind: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/transcripts")
        .join(kind);
    for (name, t) in odmr_proto::transcript::load_dir(&dir).unwrap_or_else(|e| panic!("{e}")) {
        let server = Server::start();
        for a in &t.accounts {
            let domains: Vec<&str> = a.domains.iter().map(String::as_str).collect();
            server.account(&a.name, &a.password, &domains);
            if let Some(d) = &a.etrn_destination {
                let (st, out, err) = server.cli(&["account", "set", &a.name, "--etrn-destination", d], None);
                assert_eq!(st, 0, "account set: {out}{err}");
            }
        }
        let mut c = Line::connect(if kind == "mx" { server.smtp } else { server.odmr });
        let mut challenge = Vec::new();
        for (i, step) in t.steps.iter().enumerate() {
            match step {
                Step::Send(b) => c.send(b),
                Step::Local(_) | Step::Relayed(_) => panic!("{name}: L: and R: belong to reversed sessions"),
                Step::Cram { user, password } => {
                    let r = cram_md5::client_response(user, password.as_bytes(), &challenge);
                    c.cmd(&base64::engine::general_purpose::STANDARD.encode(r));
                }
                Step::Expect(pat) => {
                    let line = c
                        .line()
                        .unwrap_or_else(|| panic!("{name} step {i}: EOF, expected {pat:?}"));
                    assert!(
                        matches(pat, &line),
                        "{name} step {i}: expected {pat:?}, got {line:?}"
                    );
                    if let Some(ch) = line.strip_prefix("334 ") {
                        challenge = base64::engine::general_purpose::STANDARD.decode(ch).unwrap();
                    }
                }
            }
        }
        // The dialogue ended with QUIT (or a command that ends the session): the server must
        // close the connection now.
        assert_eq!(c.line(), None, "{name}: the server did not close after QUIT");
        if kind == "mx" {
            // Refused messages (smuggling, loop) never reach the queue; accepted ones do.
            let q = server.queue();
            let n = q.as_array().unwrap().len();
            let want = match name.as_str() {
                "basic.txt" | "pipelining.txt" | "dsn.txt" => 1,
                "bdat.txt" => 2,
                _ => 0,
            };
            assert_eq!(n, want, "{name}: queue holds {n} messages: {q}");
        }
    }
}

#[test]
fn mx_transcripts_over_sockets() {
    replay("mx");
}

#[test]
fn odmr_transcripts_over_sockets() {
    replay("odmr");
}
