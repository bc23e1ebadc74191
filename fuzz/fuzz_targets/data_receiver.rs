//! `DataReceiver` on arbitrary bytes in arbitrary reads.
//!
//! Input: the common header (octet 0 picks the limits, octets 1..8 the read lengths), then the
//! stream that follows a `354`. Checks:
//! - no panic; `out` never exceeds `max_size`, after any read;
//! - the result does not depend on the chunking (compared with feeding it all at once), except
//!   for the discarded `out` of a failed message;
//! - the end is exactly the first `"." CRLF` at a line start reached through a real CRLF
//!   (independent reference scan), and every octet after it is left in the buffer; feeding again
//!   after `Done` consumes nothing;
//! - for a clean message (reference: no bare CR/LF, no NUL, within the limits) the verdict is
//!   `Ok` and `out`, `size` and `eight_bit` are the unstuffed content; an `Ok` verdict only for
//!   a clean message.
//!
//! With flags bit 4 the receiver is in raw mode (`DataReceiver::chunked`, BDAT): each read is
//! fed as one chunk's octets (all consumed), then `finish`. The reference is then the stream
//! itself, with a CRLF added when it ends in neither CRLF nor CR; the same checks apply
//! (chunking, bounded `out`, clean ⇔ `Ok`, content, size, 8-bit).

#![no_main]

mod common;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use odmr_proto::data::{DataError, DataLimits, DataReceiver, DataStatus};

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    done: bool,
    /// Octets left over: the unconsumed buffer plus reads never fed.
    rest: Vec<u8>,
    verdict: Result<(), DataError>,
    size: u64,
    eight_bit: bool,
    /// Cleared when the verdict is an error (then unspecified).
    out: Vec<u8>,
}

fn run(stream: &[u8], reads: &[usize], limits: DataLimits) -> Outcome {
    let mut rx = DataReceiver::new(limits);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut fed = 0;
    let mut done = false;
    for &n in reads {
        let end = (fed + n).min(stream.len());
        buf.extend_from_slice(&stream[fed..end]);
        fed = end;
        let status = rx.feed(&mut buf, &mut out);
        assert!(
            out.len() as u64 <= limits.max_size,
            "out holds {} octets, limit {}",
            out.len(),
            limits.max_size
        );
        assert_eq!(status == DataStatus::Done, rx.is_done());
        if status == DataStatus::Done {
            done = true;
            break;
        }
        assert!(buf.is_empty(), "NeedMore left {} octets unconsumed", buf.len());
    }
    if done {
        let before = buf.clone();
        let out_before = out.len();
        assert_eq!(rx.feed(&mut buf, &mut out), DataStatus::Done);
        assert_eq!(buf, before, "feeding after Done consumed input");
        assert_eq!(out.len(), out_before, "feeding after Done produced content");
    }
    let mut rest = buf.to_vec();
    rest.extend_from_slice(&stream[fed..]);
    let verdict = rx.verdict();
    if verdict.is_err() {
        out.clear();
    }
    Outcome {
        done,
        rest,
        verdict,
        size: rx.size(),
        eight_bit: rx.eight_bit(),
        out,
    }
}

/// What a strict RFC 5321 receiver makes of `stream`, computed line by line.
struct Reference {
    /// Offset just past the end marker.
    end: Option<usize>,
    /// Unstuffed content, CRLFs included (complete only if `end` is `Some`).
    content: Vec<u8>,
    /// No bare CR/LF, no NUL, within both limits.
    clean: bool,
}

fn reference(s: &[u8], limits: DataLimits) -> Reference {
    let mut p = 0;
    let mut content = Vec::new();
    let mut clean = true;
    let mut in_headers = true;
    let mut received = 0usize;
    loop {
        if s[p..].starts_with(b".\r\n") {
            let size_ok = content.len() as u64 <= limits.max_size;
            return Reference {
                end: Some(p + 3),
                content,
                clean: clean && size_ok && received <= limits.max_received,
            };
        }
        let Some(i) = s[p..].windows(2).position(|w| w == b"\r\n") else {
            return Reference {
                end: None,
                content,
                clean: false,
            };
        };
        let line = &s[p..p + i];
        let line = line.strip_prefix(b".").unwrap_or(line);
        if line.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
            clean = false;
        }
        if in_headers {
            if line.is_empty() {
                in_headers = false;
            } else if line.len() >= 9 && line[..9].eq_ignore_ascii_case(b"received:") {
                received += 1;
            }
        }
        content.extend_from_slice(line);
        content.extend_from_slice(b"\r\n");
        p += i + 2;
    }
}

/// Raw mode: every read is one chunk, all of it consumed; then `finish`.
fn run_raw(stream: &[u8], reads: &[usize], limits: DataLimits) -> Outcome {
    let mut rx = DataReceiver::chunked(limits);
    let mut out = Vec::new();
    let mut fed = 0;
    for &n in reads {
        let end = (fed + n).min(stream.len());
        let mut chunk = BytesMut::from(&stream[fed..end]);
        fed = end;
        assert_eq!(rx.feed(&mut chunk, &mut out), DataStatus::NeedMore);
        assert!(
            chunk.is_empty(),
            "raw mode left {} octets of a chunk",
            chunk.len()
        );
        assert!(out.len() as u64 <= limits.max_size);
    }
    let mut rest = BytesMut::from(&stream[fed..]);
    rx.feed(&mut rest, &mut out);
    rx.finish(&mut out);
    assert!(rx.is_done());
    assert!(out.len() as u64 <= limits.max_size);
    let mut after = BytesMut::from(&b"x\r\n"[..]);
    assert_eq!(rx.feed(&mut after, &mut out), DataStatus::Done);
    assert_eq!(after.len(), 3, "feeding after finish consumed input");
    let verdict = rx.verdict();
    if verdict.is_err() {
        out.clear();
    }
    Outcome {
        done: true,
        rest: Vec::new(),
        verdict,
        size: rx.size(),
        eight_bit: rx.eight_bit(),
        out,
    }
}

/// What raw mode must make of `s`: the octets as they are (plus the CRLF that ends an
/// unfinished last line), clean when every CR is followed by LF and every LF preceded by CR,
/// no NUL, and within both limits.
fn reference_raw(s: &[u8], limits: DataLimits) -> (Vec<u8>, bool) {
    let mut content = s.to_vec();
    if !content.is_empty() && !content.ends_with(b"\r\n") && !content.ends_with(b"\r") {
        content.extend_from_slice(b"\r\n");
    }
    let mut clean = !content.contains(&0);
    for (i, &b) in content.iter().enumerate() {
        clean &= match b {
            b'\r' => content.get(i + 1) == Some(&b'\n'),
            b'\n' => i > 0 && content[i - 1] == b'\r',
            _ => true,
        };
    }
    let mut received = 0usize;
    for line in content.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line.len() >= 9 && line[..9].eq_ignore_ascii_case(b"received:") {
            received += 1;
        }
    }
    let ok = clean && content.len() as u64 <= limits.max_size && received <= limits.max_received;
    (content, ok)
}

fuzz_target!(|data: &[u8]| {
    let input = common::Input::parse(data);
    let limits = DataLimits {
        max_size: [0, 16, 300, u64::MAX][usize::from(input.flags & 3)],
        max_received: [0, 1, 2, 100][usize::from((input.flags >> 2) & 3)],
    };
    let raw = input.flags & 0x10 != 0;
    let stream = input.chunks.remaining();
    let mut chunks = input.chunks;
    let mut reads = Vec::new();
    while let Some(c) = chunks.next_chunk() {
        reads.push(c.len());
    }

    if raw {
        let chunked = run_raw(stream, &reads, limits);
        let whole = run_raw(stream, &[stream.len()], limits);
        assert_eq!(
            chunked, whole,
            "chunking changed the raw result (reads {reads:?})"
        );
        let (content, ok) = reference_raw(stream, limits);
        assert_eq!(whole.verdict.is_ok(), ok, "{:?}", whole.verdict);
        assert_eq!(whole.size, content.len() as u64);
        assert_eq!(whole.eight_bit, content.iter().any(|&b| b >= 0x80));
        if ok {
            assert_eq!(whole.out, content);
        }
        return;
    }

    let chunked = run(stream, &reads, limits);
    let whole = run(stream, &[stream.len()], limits);
    assert_eq!(chunked, whole, "chunking changed the result (reads {reads:?})");

    let r = reference(stream, limits);
    match r.end {
        Some(end) => {
            assert!(whole.done, "the end marker at {end} was not seen");
            assert_eq!(
                whole.rest,
                &stream[end..],
                "wrong octets left after the end marker"
            );
            if r.clean {
                assert_eq!(whole.verdict, Ok(()), "clean message refused");
                assert_eq!(whole.out, r.content);
                assert_eq!(whole.size, r.content.len() as u64);
                assert_eq!(whole.eight_bit, r.content.iter().any(|&b| b >= 0x80));
            } else {
                assert!(
                    whole.verdict.is_err(),
                    "unclean message accepted: {:?}",
                    whole.out
                );
            }
        }
        None => {
            assert!(!whole.done, "ended where a strict receiver sees no end marker");
            assert!(whole.rest.is_empty());
        }
    }
});
