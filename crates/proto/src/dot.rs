//! Sending side of SMTP `DATA`: dot-stuffing and the end marker [RFC 5321 §4.5.2].
//!
//! Invariants, and why:
//!
//! * **No receiver can find an end marker before ours.** A "." that follows *any* CR or LF (or
//!   starts the content) is doubled, not only one that follows CRLF. For CRLF-only content (all
//!   that an RFC 5321 client may send, and all that our [`crate::data`] receiver accepts) this is
//!   exactly RFC 5321 dot-stuffing. For content with bare CR or LF (which should never reach the
//!   queue) it keeps a lenient receiver that takes `LF "." CR LF` or `CR "." CR` for an end of
//!   data from ending the message early and reading the rest as commands (SMTP smuggling): we
//!   never emit such a sequence, at the cost of an extra dot that a strict receiver keeps.
//! * **The content is otherwise copied unchanged** (8-bit octets, long lines, bare line ends): the
//!   stuffer moves bytes, it does not judge them; the receiving side does.
//! * **Chunk boundaries do not matter**: whether the previous chunk ended in CR or LF, and its last
//!   two octets, are kept here, so stuffing a message in any number of pieces gives the same
//!   bytes as stuffing it whole.
//! * **The end marker never adds a line**: `finish` appends CRLF only when the content does not
//!   already end with CRLF (RFC 5321 §4.1.1.4: the sender MUST add it then); empty content gives
//!   just `"." CRLF`.

/// Dot-stuffs one message's content, in chunks of any size.
#[derive(Debug, Clone)]
pub struct DotStuffer {
    /// The next octet starts a line (nothing written yet, or the last octet was CR or LF).
    at_line_start: bool,
    /// Whether any content was written.
    written: bool,
    /// The last two content octets (zero-padded), to tell whether the content ends in CRLF.
    tail: [u8; 2],
}

impl Default for DotStuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl DotStuffer {
    /// A stuffer at the start of a message.
    pub fn new() -> Self {
        Self {
            at_line_start: true,
            written: false,
            tail: [0; 2],
        }
    }

    /// Appends `chunk` to `out`, doubling every "." that starts a line.
    pub fn stuff(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let Some(&last) = chunk.last() else { return };
        out.reserve(chunk.len() + 1);
        if self.at_line_start && chunk[0] == b'.' {
            out.push(b'.');
        }
        let mut start = 0;
        for pos in memchr::memchr2_iter(b'\r', b'\n', chunk) {
            if chunk.get(pos + 1) == Some(&b'.') {
                out.extend_from_slice(&chunk[start..=pos]);
                out.push(b'.');
                start = pos + 1;
            }
        }
        out.extend_from_slice(&chunk[start..]);
        self.at_line_start = last == b'\r' || last == b'\n';
        self.tail = match chunk {
            [.., a, b] => [*a, *b],
            _ => [self.tail[1], last],
        };
        self.written = true;
    }

    /// Appends the end of data: CRLF if the content did not end with one (and was not empty),
    /// then `"." CRLF`. The stuffer is then ready for a new message.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.written && self.tail != *b"\r\n" {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        *self = Self::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{DataError, DataLimits, DataReceiver, DataStatus};
    use bytes::BytesMut;
    use proptest::prelude::*;

    fn stuff_all(content: &[u8]) -> Vec<u8> {
        let mut s = DotStuffer::new();
        let mut out = Vec::new();
        s.stuff(content, &mut out);
        s.finish(&mut out);
        out
    }

    fn stuff_cuts(content: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut s = DotStuffer::new();
        let mut out = Vec::new();
        let mut prev = 0;
        for &c in cuts.iter().chain(std::iter::once(&content.len())) {
            let c = c.clamp(prev, content.len());
            s.stuff(&content[prev..c], &mut out);
            prev = c;
        }
        s.finish(&mut out);
        out
    }

    /// Every way of splitting `content` in two, and byte by byte, gives the same as whole.
    fn check(content: &[u8], expected: &[u8]) {
        assert_eq!(stuff_all(content), expected, "{content:?}");
        let bytewise: Vec<usize> = (1..content.len()).collect();
        assert_eq!(stuff_cuts(content, &bytewise), expected, "{content:?} bytewise");
        for cut in 0..=content.len() {
            assert_eq!(stuff_cuts(content, &[cut]), expected, "{content:?} at {cut}");
        }
    }

    #[test]
    fn empty_content() {
        check(b"", b".\r\n");
        // Empty chunks change nothing.
        let mut s = DotStuffer::new();
        let mut out = Vec::new();
        s.stuff(b"", &mut out);
        s.stuff(b"", &mut out);
        s.finish(&mut out);
        assert_eq!(out, b".\r\n");
    }

    #[test]
    fn plain_lines() {
        check(b"a\r\n", b"a\r\n.\r\n");
        check(b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n");
        check(b"\r\n", b"\r\n.\r\n");
    }

    #[test]
    fn missing_final_crlf_is_added() {
        check(b"a", b"a\r\n.\r\n");
        check(b"a\r\nb", b"a\r\nb\r\n.\r\n");
        check(b"a\r", b"a\r\r\n.\r\n");
        check(b"a\n", b"a\n\r\n.\r\n");
        check(b"\n", b"\n\r\n.\r\n");
    }

    #[test]
    fn leading_dots_doubled() {
        check(b".", b"..\r\n.\r\n");
        check(b".\r\n", b"..\r\n.\r\n");
        check(b"..\r\n", b"...\r\n.\r\n");
        check(b".foo\r\n.bar\r\n", b"..foo\r\n..bar\r\n.\r\n");
        check(b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n");
        check(b"a.b\r\n", b"a.b\r\n.\r\n");
        check(b"a\r\n.", b"a\r\n..\r\n.\r\n");
    }

    #[test]
    fn dots_after_bare_line_ends_doubled() {
        check(b"a\n.\r\nb", b"a\n..\r\nb\r\n.\r\n");
        check(b"a\r.\r", b"a\r..\r\r\n.\r\n");
        check(b"\n.\n", b"\n..\n\r\n.\r\n");
    }

    #[test]
    fn eight_bit_and_nul_copied() {
        check(b"\xff\x00\x80\r\n", b"\xff\x00\x80\r\n.\r\n");
    }

    #[test]
    fn reusable_after_finish() {
        let mut s = DotStuffer::new();
        let mut out = Vec::new();
        s.stuff(b"x\r\n", &mut out);
        s.finish(&mut out);
        s.stuff(b".y", &mut out);
        s.finish(&mut out);
        assert_eq!(out, b"x\r\n.\r\n..y\r\n.\r\n");
    }

    /// Feeds `wire` to a receiver in pieces; returns (content, verdict, octets left over).
    fn receive(wire: &[u8], cuts: &[usize]) -> (Vec<u8>, Result<(), DataError>, usize) {
        let mut rx = DataReceiver::new(DataLimits {
            max_size: u64::MAX,
            max_received: usize::MAX,
        });
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut prev = 0;
        for &c in cuts.iter().chain(std::iter::once(&wire.len())) {
            let c = c.clamp(prev, wire.len());
            buf.extend_from_slice(&wire[prev..c]);
            prev = c;
            if rx.feed(&mut buf, &mut out) == DataStatus::Done {
                return (out, rx.verdict(), buf.len() + wire.len() - prev);
            }
        }
        panic!("receiver never saw the end of {wire:?}");
    }

    fn cuts_for(len: usize, raw: Vec<usize>) -> Vec<usize> {
        let mut cuts: Vec<usize> = raw.into_iter().map(|c| c % (len + 1)).collect();
        cuts.sort_unstable();
        cuts
    }

    /// A line without CR or LF (and without NUL, which the receiver rejects), often dotted.
    fn line() -> impl Strategy<Value = Vec<u8>> {
        let prefix = prop_oneof![Just(vec![]), Just(vec![b'.']), Just(vec![b'.', b'.'])];
        let body = proptest::collection::vec(
            prop_oneof![
                3 => Just(b'.'),
                1 => Just(b' '),
                4 => any::<u8>().prop_filter("no CR, LF, NUL", |b| !matches!(b, b'\r' | b'\n' | 0)),
            ],
            0..12,
        );
        (prefix, body).prop_map(|(mut p, b)| {
            p.extend(b);
            p
        })
    }

    proptest! {
        /// stuff → DataReceiver gives back CRLF-only content byte for byte, however both sides
        /// are chunked.
        #[test]
        fn round_trip(
            lines in proptest::collection::vec(line(), 0..12),
            unterminated in proptest::option::of(line()),
            send_cuts in proptest::collection::vec(any::<usize>(), 0..8),
            recv_cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut content = Vec::new();
            for l in &lines {
                content.extend_from_slice(l);
                content.extend_from_slice(b"\r\n");
            }
            let mut expected = content.clone();
            if let Some(l) = unterminated.filter(|l| !l.is_empty()) {
                content.extend_from_slice(&l);
                expected.extend_from_slice(&l);
                expected.extend_from_slice(b"\r\n");
            }
            let wire = stuff_cuts(&content, &cuts_for(content.len(), send_cuts));
            prop_assert_eq!(&wire, &stuff_all(&content));
            let (got, verdict, left) = receive(&wire, &cuts_for(wire.len(), recv_cuts));
            prop_assert_eq!(verdict, Ok(()));
            prop_assert_eq!(left, 0);
            prop_assert_eq!(got, expected);
        }

        /// Whatever the content (bare CR/LF included), the stuffed data ends exactly at our end
        /// marker for a strict receiver, and a lenient one (CR or LF alone ending a line) never
        /// finds a lone "." line before it.
        #[test]
        fn never_ends_early(
            content in proptest::collection::vec(
                prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), any::<u8>()], 0..100),
            send_cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let wire = stuff_cuts(&content, &cuts_for(content.len(), send_cuts));
            prop_assert_eq!(&wire, &stuff_all(&content));
            let (_, _, left) = receive(&wire, &[]);
            prop_assert_eq!(left, 0);
            let body = &wire[..wire.len() - 3];
            prop_assert!(body.is_empty() || body.ends_with(b"\r\n"));
            for (p, &b) in body.iter().enumerate() {
                let line_start = p == 0 || matches!(body[p - 1], b'\r' | b'\n');
                if b == b'.' && line_start {
                    prop_assert_eq!(body.get(p + 1), Some(&b'.'));
                }
            }
        }
    }
}
