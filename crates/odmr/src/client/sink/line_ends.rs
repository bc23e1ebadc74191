//! Line ends for the sinks that write files (Maildir, command): SMTP carries CRLF, while Maildir
//! readers, mbox tools and procmail expect the local convention, LF. `line_ends = "crlf"` in
//! `[provider.deliver]` keeps the bytes as received instead.
//!
//! Invariants, and why:
//! - Only a CR immediately followed by an LF becomes an LF. Every other octet (a bare CR, a bare
//!   LF, 8-bit text, NUL) is kept as it is: the conversion changes line ends, never content.
//! - Streaming with one octet of state: a CR at the end of one chunk is held back until the
//!   next chunk (or the end of the message) shows whether an LF follows. The result is the same
//!   however the message was cut into chunks, and memory stays bounded by the chunk.
//! - The headers a sink adds use the same line end as the body ([`LineEnder::eol`]), so a file
//!   never mixes the two conventions.

use crate::client::config::LineEnds;

/// Converts one message's line ends as its chunks arrive.
#[derive(Debug, Clone)]
pub struct LineEnder {
    mode: LineEnds,
    /// The previous chunk ended with a CR, not yet written: its fate depends on the next octet.
    held_cr: bool,
}

impl LineEnder {
    pub fn new(mode: LineEnds) -> Self {
        LineEnder { mode, held_cr: false }
    }

    /// The line end for lines the sink writes itself (`Return-Path:`, `Delivered-To:`).
    pub fn eol(&self) -> &'static str {
        match self.mode {
            LineEnds::Lf => "\n",
            LineEnds::Crlf => "\r\n",
        }
    }

    /// Append `input` to `out`, converted.
    pub fn push(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        if self.mode == LineEnds::Crlf {
            out.extend_from_slice(input);
            return;
        }
        if self.held_cr {
            match input.first() {
                None => return,
                // The held CR and this LF are one line end: the LF is copied below.
                Some(b'\n') => {}
                Some(_) => out.push(b'\r'),
            }
            self.held_cr = false;
        }
        while let Some(i) = input.iter().position(|&b| b == b'\r') {
            out.extend_from_slice(&input[..i]);
            match input.get(i + 1) {
                Some(b'\n') => {
                    out.push(b'\n');
                    input = &input[i + 2..];
                }
                Some(_) => {
                    out.push(b'\r');
                    input = &input[i + 1..];
                }
                None => {
                    self.held_cr = true;
                    return;
                }
            }
        }
        out.extend_from_slice(input);
    }

    /// The message is complete: a CR held back at its very end had no LF after it, and is
    /// written as it is.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.held_cr) {
            out.push(b'\r');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The specification, written as plainly as possible: each CRLF pair becomes LF.
    fn reference(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < input.len() {
            if input[i] == b'\r' && input.get(i + 1) == Some(&b'\n') {
                i += 1;
            }
            out.push(input[i]);
            i += 1;
        }
        out
    }

    fn convert(mode: LineEnds, chunks: &[&[u8]]) -> Vec<u8> {
        let mut l = LineEnder::new(mode);
        let mut out = Vec::new();
        for c in chunks {
            l.push(c, &mut out);
        }
        l.finish(&mut out);
        out
    }

    #[test]
    fn crlf_pairs_become_lf_and_nothing_else_changes() {
        let lf = |c: &[&[u8]]| convert(LineEnds::Lf, c);
        assert_eq!(lf(&[b"a\r\nb\r\n"]), b"a\nb\n");
        assert_eq!(lf(&[b"bare\rcr\r"]), b"bare\rcr\r");
        assert_eq!(lf(&[b"bare\nlf\n"]), b"bare\nlf\n");
        assert_eq!(lf(&[b"\r\r\n\n\r"]), b"\r\n\n\r");
        assert_eq!(lf(&[b"\x00\xff\xc3\xa9\r\n"]), b"\x00\xff\xc3\xa9\n");
        assert_eq!(lf(&[]), b"");
    }

    #[test]
    fn a_chunk_boundary_between_cr_and_lf() {
        let lf = |c: &[&[u8]]| convert(LineEnds::Lf, c);
        assert_eq!(lf(&[b"line one\r", b"\nline two\r\n"]), b"line one\nline two\n");
        // An empty chunk between them changes nothing.
        assert_eq!(lf(&[b"a\r", b"", b"\nb"]), b"a\nb");
        // A CR at the end of a chunk followed by something else stays.
        assert_eq!(lf(&[b"a\r", b"b\r", b"\r", b"\n"]), b"a\rb\r\n");
        // A CR ending the whole message stays.
        assert_eq!(lf(&[b"a\r\n", b"\r"]), b"a\n\r");
    }

    #[test]
    fn crlf_mode_keeps_every_byte() {
        let input: &[&[u8]] = &[b"a\r", b"\nb\r\n\r", b"\rc\n"];
        assert_eq!(convert(LineEnds::Crlf, input), b"a\r\nb\r\n\r\rc\n");
        assert_eq!(LineEnder::new(LineEnds::Crlf).eol(), "\r\n");
        assert_eq!(LineEnder::new(LineEnds::Lf).eol(), "\n");
    }

    /// Every string of up to 8 octets over {a, CR, LF}, cut at every point (and into single
    /// octets): the same result as the reference on the whole string.
    #[test]
    fn any_split_gives_the_reference_result() {
        let alphabet = [b'a', b'\r', b'\n'];
        for len in 0..=8u32 {
            for n in 0..3usize.pow(len) {
                let mut s = Vec::new();
                let mut k = n;
                for _ in 0..len {
                    s.push(alphabet[k % 3]);
                    k /= 3;
                }
                let want = reference(&s);
                for cut in 0..=s.len() {
                    let (a, b) = s.split_at(cut);
                    assert_eq!(convert(LineEnds::Lf, &[a, b]), want, "{s:?} cut at {cut}");
                }
                let bytes: Vec<&[u8]> = s.chunks(1).collect();
                assert_eq!(convert(LineEnds::Lf, &bytes), want, "{s:?} octet by octet");
            }
        }
    }
}
