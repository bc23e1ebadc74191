//! The stand-alone parsers on arbitrary input. Octet 0 picks the parser (modulo 7), the rest is
//! its input:
//! - 0 `parse_reply`, repeatedly until it needs more input or fails: `Ok(None)` consumes nothing,
//!   `Ok(Some)` consumes something and gives a code in 200..=599 and 1..=`MAX_REPLY_LINES`
//!   lines; a reply written back with `Reply::write` parses again to the same code, status and
//!   number of lines;
//! - 1 `parse_atrn_args`: every domain is valid, lower-case, distinct, and parses to itself;
//!   error texts are short printable ASCII (they go into a 501 reply);
//! - 2 `cram_md5::parse_response`: a user name without control characters and a digest that
//!   round-trip; the stored-secret decoders (`from_bytes`, `from_dovecot_hex`) never panic and
//!   round-trip; a `client_response` for a password and challenge taken from the input parses
//!   and verifies against `CramSecret::from_password`;
//! - 3 `LineReader` in reads of the lengths in octet 1 and 2, limit from octet 3: the lines do
//!   not depend on the chunking, less than the limit stays buffered, `Ok` lines hold no LF and fit
//!   the limit;
//! - 4 `split_verb`: the verb is the upper-cased first word and the rest has no leading space;
//! - 5 SASL PLAIN and LOGIN (`parse_plain`, `parse_login_user`, `parse_login_password`): accepted
//!   names and passwords are non-empty, and the client's own `plain_response` of them parses back
//!   to the same (SASLprep is idempotent);
//! - 6 the SCRAM-SHA-256 server: octet 1 bit 0 picks a known user (a real verifier) or an unknown
//!   one (decoy), octet 2 where the input splits into client-first and client-final; the
//!   exchange never succeeds (`Final`) with a proof the fuzzer made up, and `ScramVerifier`'s
//!   stored form round-trips.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use odmr_proto::atrn::parse_atrn_args;
use odmr_proto::line::{split_verb, Line, LineReader};
use odmr_proto::reply::{parse_reply, MAX_REPLY_LINE, MAX_REPLY_LINES};
use odmr_proto::sasl::cram_md5::{self, CramSecret};
use odmr_proto::sasl::plain;
use odmr_proto::sasl::scram::{self, ScramServer, ScramVerifier, DEFAULT_ITERATIONS};
use std::sync::OnceLock;

fn replies(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.clone();
        match parse_reply(&mut buf) {
            Ok(None) => {
                assert_eq!(buf, before, "Ok(None) consumed input");
                return;
            }
            Err(_) => return,
            Ok(Some(r)) => {
                assert!(buf.len() < before.len(), "a reply consumed nothing");
                assert!((200..600).contains(&r.code), "code {}", r.code);
                assert!(!r.lines.is_empty() && r.lines.len() <= MAX_REPLY_LINES);
                let _ = (r.one_line(), r.is_positive(), r.is_transient(), r.is_permanent());
                let mut wire = Vec::new();
                r.write(&mut wire, true);
                let fits = wire.split(|&b| b == b'\n').all(|l| l.len() < MAX_REPLY_LINE);
                if fits {
                    let mut again = BytesMut::from(&wire[..]);
                    let r2 = parse_reply(&mut again)
                        .unwrap_or_else(|e| panic!("{r:?} written as {wire:?} does not parse: {e}"))
                        .unwrap_or_else(|| panic!("{r:?} written as {wire:?} is incomplete"));
                    assert!(again.is_empty());
                    assert_eq!((r2.code, r2.lines.len()), (r.code, r.lines.len()));
                    // The status is written for 2xx, 4xx and 5xx only (RFC 2034 §4).
                    if matches!(r.code / 100, 2 | 4 | 5) {
                        assert_eq!(r2.status, r.status);
                    }
                }
            }
        }
    }
}

fn atrn(data: &[u8]) {
    let args = String::from_utf8_lossy(data);
    match parse_atrn_args(&args) {
        Ok(domains) => {
            for (i, d) in domains.iter().enumerate() {
                assert!(!domains[..i].contains(d), "duplicate {d:?}");
                assert!(d.len() <= 255 && d.split('.').count() >= 2, "{d:?}");
                assert!(
                    d.split('.').all(|l| !l.is_empty()
                        && l.len() <= 63
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                        && l.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')),
                    "{d:?}"
                );
                assert_eq!(parse_atrn_args(d).as_deref(), Ok(std::slice::from_ref(d)));
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.len() <= 160, "error text of {} octets", msg.len());
            assert!(msg.bytes().all(|b| b == b' ' || b.is_ascii_graphic()), "{msg:?}");
        }
    }
}

fn cram(data: &[u8]) {
    if let Ok((user, digest)) = cram_md5::parse_response(data) {
        assert!(
            !user.is_empty() && !user.chars().any(char::is_control),
            "{user:?}"
        );
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let again = format!("{user} {hex}");
        assert_eq!(cram_md5::parse_response(again.as_bytes()), Ok((user, digest)));
    }
    if let Ok(s) = CramSecret::from_bytes(data) {
        assert_eq!(s.to_bytes(), data);
    }
    if let Ok(s) = CramSecret::from_dovecot_hex(&String::from_utf8_lossy(data)) {
        assert!(s
            .to_dovecot_hex()
            .eq_ignore_ascii_case(&String::from_utf8_lossy(data)));
    }
    // A password and a challenge from the input: the client's response verifies.
    let cut = usize::from(data.first().copied().unwrap_or(0)).min(data.len());
    let (password, challenge) = data.split_at(cut);
    let resp = cram_md5::client_response("acme", password, challenge);
    let (user, digest) = cram_md5::parse_response(resp.as_bytes()).expect("our own response parses");
    assert_eq!(user, "acme");
    let secret = CramSecret::from_password(password);
    assert!(
        cram_md5::verify(&secret, challenge, &digest),
        "response does not verify"
    );
    let stored = CramSecret::from_bytes(&secret.to_bytes()).expect("stored secret reads back");
    assert_eq!(stored.digest(challenge), digest);
    let _ = cram_md5::make_challenge(
        u64::from(cut as u32),
        1_800_000_000,
        &String::from_utf8_lossy(password),
    );
}

fn read_lines(data: &[u8], max: usize, reads: &[usize]) -> (Vec<Line>, Vec<u8>) {
    let mut r = LineReader::new(max);
    let mut buf = BytesMut::new();
    let mut lines = Vec::new();
    let mut fed = 0;
    let mut k = 0;
    while fed < data.len() {
        let n = reads[k % reads.len()].clamp(1, data.len() - fed);
        k += 1;
        buf.extend_from_slice(&data[fed..fed + n]);
        fed += n;
        while let Some(l) = r.next_line(&mut buf) {
            if let Line::Ok(ref b) = l {
                assert!(!b.contains(&b'\n') && b.len() + 2 <= max, "{l:?}");
            }
            lines.push(l);
        }
        assert!(
            buf.len() < max.max(2),
            "{} octets buffered, limit {max}",
            buf.len()
        );
    }
    (lines, buf.to_vec())
}

fn line_reader(data: &[u8]) {
    let [a, b, m, rest @ ..] = data else { return };
    let max = usize::from(*m) + 1;
    let (lines, _) = read_lines(rest, max, &[usize::from(*a), usize::from(*b)]);
    // What stays buffered at the end may differ (an overlong tail is discarded as it arrives).
    let (whole, _) = read_lines(rest, max, &[rest.len()]);
    assert_eq!(lines, whole, "lines depend on the chunking");
}

fn verb(data: &[u8]) {
    let (v, rest) = split_verb(data);
    assert!(!v.contains(' '));
    assert_eq!(v, v.to_ascii_uppercase());
    assert!(!rest.starts_with(b" "));
}

fn sasl_plain(data: &[u8]) {
    if let Ok(c) = plain::parse_plain(data) {
        assert!(!c.user.is_empty() && !c.password.is_empty());
        let again = plain::parse_plain(&plain::plain_response(&c.user, &c.password));
        assert_eq!(
            again.as_ref(),
            Ok(&c),
            "PLAIN credentials do not round-trip: {c:?}"
        );
    }
    if let Ok(u) = plain::parse_login_user(data) {
        assert!(!u.is_empty());
        assert_eq!(plain::parse_login_user(u.as_bytes()).as_deref(), Ok(u.as_str()));
    }
    if let Ok(p) = plain::parse_login_password(data) {
        assert!(!p.is_empty());
        assert_eq!(
            plain::parse_login_password(p.as_bytes()).as_deref(),
            Ok(p.as_str())
        );
    }
}

fn scram_server(data: &[u8]) {
    static VERIFIER: OnceLock<ScramVerifier> = OnceLock::new();
    let verifier = VERIFIER.get_or_init(|| {
        ScramVerifier::from_password("pw", b"fuzz-salt-16octs", DEFAULT_ITERATIONS).expect("verifier")
    });
    if let Ok(v) = ScramVerifier::from_bytes(data) {
        assert_eq!(v.to_bytes(), data);
    }
    let [known, cut, rest @ ..] = data else { return };
    let (first, fin) = rest.split_at(usize::from(*cut).min(rest.len()));
    let mut server = ScramServer::new(&scram::make_nonce(b"fuzz")).with_decoy_secret(b"odmr");
    match server.client_first(first) {
        scram::ServerStep::LookupUser(user) => {
            assert!(!user.is_empty());
            let v = (known & 1 != 0).then(|| verifier.clone());
            match server.verifier(v) {
                scram::ServerStep::Challenge(_) => {}
                other => panic!("verifier() answered {other:?}"),
            }
            let step = server.client_final(fin);
            assert!(
                !matches!(step, scram::ServerStep::Final(_)),
                "SCRAM succeeded with a made-up proof: {:?}",
                String::from_utf8_lossy(fin)
            );
            assert_eq!(server.user(), None);
        }
        scram::ServerStep::Failed(_) => {
            // Every later call fails.
            assert!(matches!(server.client_final(fin), scram::ServerStep::Failed(_)));
        }
        other => panic!("client_first() answered {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 7 {
        0 => replies(rest),
        1 => atrn(rest),
        2 => cram(rest),
        3 => line_reader(rest),
        4 => verb(rest),
        5 => sasl_plain(rest),
        _ => scram_server(rest),
    }
});
