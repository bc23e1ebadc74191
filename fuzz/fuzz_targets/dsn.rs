//! DSN parameters and reports on arbitrary input. Octet 0 (mod 2) picks:
//! - 0 the parameter parsers: `xtext_decode` (what decodes re-encodes with `xtext` and decodes to
//!   the same), `decode_orcpt` (no control characters in what it accepts), and
//!   `split_dsn_params` on the rest as a MAIL (octet 1 even) or RCPT line: accepted values obey
//!   RFC 3461 (ENVID printable ASCII ≤ 100, ORCPT ≤ 500 and decodable, NOTIFY canonical), the
//!   line left over is no longer than the input, and splitting it again finds nothing and
//!   changes nothing;
//! - 1 `compose`: NUL-separated fields (reverse-path, recipient, status, reply, remote MTA,
//!   explanation, ORCPT, ENVID, unique id, the original message) and flags in octet 1 (action,
//!   RET, 7-bit only, whole message within the limit). Checks: every line we generate ends in
//!   CRLF and fits 998 octets, the `message/delivery-status` part is ASCII, there is a returned
//!   part exactly when `Composed::returned` says so, and with `seven_bit_only` a DSN that needs
//!   no SMTPUTF8 (ASCII To: and From:) is 7-bit; `enhanced_status` gives a
//!   well-formed code and `header_section` a prefix.

#![no_main]

use libfuzzer_sys::fuzz_target;
use odmr_proto::dsn::{self, Action, ReceivedFrom, Report, ReportedRecipient, Returned};
use odmr_proto::envelope::{decode_orcpt, split_dsn_params, xtext, xtext_decode, DsnVerb, Ret};

fn params(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(d) = xtext_decode(&text) {
        assert_eq!(xtext_decode(&xtext(&d)).as_deref(), Ok(d.as_str()));
    }
    if let Some(o) = decode_orcpt(&text) {
        assert!(!o.chars().any(char::is_control), "{o:?}");
    }
    let [flags, line @ ..] = data else { return };
    let verb = if flags % 2 == 0 {
        DsnVerb::Mail
    } else {
        DsnVerb::Rcpt
    };
    let Ok((rest, p)) = split_dsn_params(line, verb) else {
        return;
    };
    assert!(rest.len() <= line.len());
    if let Some(e) = &p.envid {
        assert!(e.len() <= 100);
        let d = xtext_decode(e).expect("accepted ENVID decodes");
        assert!(d.bytes().all(|b| (0x20..0x7f).contains(&b)), "{d:?}");
    }
    if let Some(o) = &p.orcpt {
        assert!(o.len() <= 500 && decode_orcpt(o).is_some(), "{o:?}");
    }
    if let Some(n) = &p.notify {
        assert!(
            n == "NEVER"
                || (!n.is_empty() && n.split(',').all(|k| ["SUCCESS", "FAILURE", "DELAY"].contains(&k))),
            "{n:?}"
        );
    }
    let (again, p2) = split_dsn_params(&rest, verb).expect("the rest splits again");
    assert!(p2.is_empty() && again == rest, "splitting is not idempotent");
}

fn report(data: &[u8]) {
    let [flags, rest @ ..] = data else { return };
    let flags = *flags;
    let mut f = rest.splitn(10, |&b| b == 0);
    let mut next = || String::from_utf8_lossy(f.next().unwrap_or_default()).into_owned();
    let (to, addr, status, reply, remote, expl, orcpt, envid, unique) = (
        next(),
        next(),
        next(),
        next(),
        next(),
        next(),
        next(),
        next(),
        next(),
    );
    let original = f.next().unwrap_or_default();
    let _ = dsn::header_section(original);
    assert!(original.starts_with(dsn::header_section(original)));
    if let Some(st) = dsn::enhanced_status(&reply) {
        let parts: Vec<&str> = st.split('.').collect();
        assert!(parts.len() == 3 && ["2", "4", "5"].contains(&parts[0]), "{st:?}");
    }
    let action = [
        Action::Failed,
        Action::Delayed,
        Action::Delivered,
        Action::Relayed,
    ][usize::from(flags & 3)];
    let ret = [None, Some(Ret::Full), Some(Ret::Hdrs), None][usize::from(flags >> 2 & 3)];
    let seven = flags & 16 != 0;
    let r = Report {
        reporting_mta: remote.clone(),
        postmaster: format!("postmaster@{remote}"),
        to: to.clone(),
        envid: Some(envid),
        arrival: i64::from(flags) * 1_000_000_007,
        received_from_mta: Some(ReceivedFrom {
            helo: remote.clone(),
            ip: unique.clone(),
        }),
        now: -i64::from(flags) * 999_999_937,
        unique,
        explanation: expl,
        recipients: vec![ReportedRecipient {
            original_recipient: Some(orcpt),
            final_recipient: addr,
            action,
            status,
            remote_mta: (flags & 32 != 0).then_some(remote),
            diagnostic: Some(reply),
            last_attempt: Some(0),
            will_retry_until: Some(i64::MAX),
        }],
        returned: if flags & 128 != 0 {
            Returned::Nothing
        } else {
            Returned::for_ret(ret, original)
        },
        max_return: if flags & 64 != 0 {
            usize::MAX
        } else {
            original.len() / 2
        },
        seven_bit_only: seven,
    };
    let Ok(c) = dsn::compose(&r) else { return };
    // Our part: the header and the first two body parts. Header values cannot hold a line end,
    // so the boundary is on the line starting with a tab, and compose keeps it out of the
    // content: its delimiters split the body exactly.
    let head_end = memchr_find(&c.bytes, b"\r\n\r\n").expect("a header") + 2;
    let boundary = c.bytes[..head_end]
        .split(|&b| b == b'\n')
        .find_map(|l| l.strip_prefix(b"\tboundary=\""))
        .and_then(|v| v.split(|&b| b == b'"').next())
        .expect("a boundary line");
    let delim = [&b"\r\n--"[..], boundary].concat();
    let mut starts = Vec::new();
    let mut at = head_end - 2;
    while let Some(i) = memchr_find(&c.bytes[at..], &delim) {
        starts.push(at + i);
        at += i + delim.len();
    }
    // Three or four delimiters: text, delivery-status, [returned], close.
    assert!((3..=4).contains(&starts.len()), "{} delimiters", starts.len());
    let ours = &c.bytes[..starts[2] + 2];
    for l in ours.split_inclusive(|&b| b == b'\n') {
        assert!(
            l.ends_with(b"\r\n") && !l[..l.len() - 2].contains(&b'\r'),
            "{l:?}"
        );
        assert!(l.len() <= 1000, "line of {} octets", l.len());
    }
    let ds = &c.bytes[starts[1]..starts[2]];
    assert!(ds.starts_with(&[&delim[..], b"\r\nContent-Type: message/delivery-status\r\n"].concat()));
    assert!(ds.is_ascii(), "the delivery-status part is not 7-bit");
    assert_eq!(starts.len() == 4, c.returned != dsn::ReturnedAs::Nothing);
    // Only the To: and From: addresses may make it 8-bit then, and they need SMTPUTF8 anyway.
    if seven && !c.smtputf8 {
        assert!(!c.eight_bit, "8-bit DSN although seven_bit_only");
    }
    assert_eq!(c.smtputf8, !to.is_ascii() || !r.postmaster.is_ascii());
}

fn memchr_find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 2 {
        0 => params(rest),
        _ => report(rest),
    }
});
