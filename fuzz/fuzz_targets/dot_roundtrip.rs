//! `DotStuffer` → `DataReceiver` round trip.
//!
//! Input: the common header (octet 0 bit 0: append a pipelined trailer after the end marker;
//! octets 1..8: how the sender cuts the content; octets 8..16: the receiver's read lengths), then
//! the content. Checks:
//! - **CRLF-only content round-trips byte for byte**: the content with every bare CR or LF turned
//!   into CRLF and NUL into `0`, stuffed in the chosen pieces, is identical to stuffing it whole,
//!   and a `DataReceiver` reading it in the chosen reads returns `Ok`, exactly the content (plus
//!   the CRLF `finish` adds to an unterminated last line) and its size, and leaves the trailer;
//! - **raw content never ends early** (SMTP smuggling): the content as it is, bare CR/LF and NUL
//!   included, stuffed in pieces, ends exactly at our end marker for the strict receiver (the
//!   trailer is left over), and no line start, counting a bare CR or LF as a line end as a
//!   lenient receiver would, carries a single dot.

#![no_main]

mod common;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use odmr_proto::data::{DataLimits, DataReceiver, DataStatus};
use odmr_proto::dot::DotStuffer;

const TRAILER: &[u8] = b"QUIT\r\n";

fn normalise(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 4);
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'\r' if raw.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            0 => out.push(b'0'),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

fn stuff(content: &[u8], pieces: &mut common::Tape<'_>) -> Vec<u8> {
    let mut s = DotStuffer::new();
    let mut wire = Vec::new();
    let mut at = 0;
    while at < content.len() {
        let n = match pieces.next() {
            0 => content.len() - at,
            b => usize::from(b).min(content.len() - at),
        };
        s.stuff(&content[at..at + n], &mut wire);
        // An empty piece must change nothing.
        s.stuff(&[], &mut wire);
        at += n;
    }
    s.finish(&mut wire);
    wire
}

fn stuff_whole(content: &[u8]) -> Vec<u8> {
    let mut s = DotStuffer::new();
    let mut wire = Vec::new();
    s.stuff(content, &mut wire);
    s.finish(&mut wire);
    wire
}

/// Receives `stream` in reads from `reads`; returns (done, verdict ok, content, size, left over).
fn receive(stream: &[u8], reads: &mut common::Tape<'_>) -> (bool, bool, Vec<u8>, u64, Vec<u8>) {
    let mut rx = DataReceiver::new(DataLimits {
        max_size: u64::MAX,
        max_received: usize::MAX,
    });
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut fed = 0;
    loop {
        let n = match reads.next() {
            0 => stream.len() - fed,
            b => usize::from(b).min(stream.len() - fed),
        };
        buf.extend_from_slice(&stream[fed..fed + n]);
        fed += n;
        if rx.feed(&mut buf, &mut out) == DataStatus::Done {
            let mut rest = buf.to_vec();
            rest.extend_from_slice(&stream[fed..]);
            return (true, rx.verdict().is_ok(), out, rx.size(), rest);
        }
        if fed == stream.len() {
            return (false, rx.verdict().is_ok(), out, rx.size(), Vec::new());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let trailer: &[u8] = if data.first().is_some_and(|f| f & 1 != 0) {
        TRAILER
    } else {
        b""
    };
    let pieces_tape = &data[data.len().min(1)..data.len().min(8)];
    let reads_tape = &data[data.len().min(8)..data.len().min(common::HEADER)];
    let raw = &data[data.len().min(common::HEADER)..];

    // CRLF-only content: exact round trip.
    let content = normalise(raw);
    let mut expected = content.clone();
    if !content.is_empty() && !content.ends_with(b"\r\n") {
        expected.extend_from_slice(b"\r\n");
    }
    let wire = stuff(&content, &mut common::Tape::new(pieces_tape));
    assert_eq!(wire, stuff_whole(&content), "stuffing depends on the pieces");
    let mut stream = wire.clone();
    stream.extend_from_slice(trailer);
    let (done, ok, got, size, rest) = receive(&stream, &mut common::Tape::new(reads_tape));
    assert!(done, "the receiver did not find our end marker");
    assert!(ok, "CRLF-only content refused");
    assert_eq!(got, expected, "round trip changed the content");
    assert_eq!(size, expected.len() as u64);
    assert_eq!(rest, trailer, "wrong octets left after the end marker");

    // Raw content, bare line ends and NUL included: never ends early.
    let wire = stuff(raw, &mut common::Tape::new(pieces_tape));
    assert_eq!(wire, stuff_whole(raw), "stuffing depends on the pieces");
    let mut stream = wire.clone();
    stream.extend_from_slice(trailer);
    let (done, _, _, _, rest) = receive(&stream, &mut common::Tape::new(reads_tape));
    assert!(done, "the receiver did not find our end marker");
    assert_eq!(rest, trailer, "the receiver ended before or after our end marker");
    let body = &wire[..wire.len() - 3];
    assert!(body.is_empty() || body.ends_with(b"\r\n"));
    for (p, &b) in body.iter().enumerate() {
        let line_start = p == 0 || matches!(body[p - 1], b'\r' | b'\n');
        if b == b'.' && line_start {
            assert_eq!(
                body.get(p + 1),
                Some(&b'.'),
                "single dot at a lenient line start, offset {p}"
            );
        }
    }
});
