//! Splitting command lines off the input buffer.
//!
//! Invariants:
//! - Only CRLF ends a command line. A bare LF still ends the line (we must resynchronise
//!   somewhere) but is reported, so the caller answers 500 instead of executing it; a bare CR is
//!   left inside the line, where the command parser rejects it.
//! - Memory is bounded: a line longer than the limit is discarded as it arrives, never buffered,
//!   and reported once when its end is finally seen.
//! - Bytes after the line stay in the buffer (pipelining; and the ODMR turnaround, where they are
//!   the start of the customer's greeting).

use bytes::{Buf, Bytes, BytesMut};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A complete line, without its CRLF.
    Ok(Bytes),
    /// The line ended in LF without CR.
    BareLf,
    /// The line exceeded the limit and was discarded.
    TooLong,
}

#[derive(Debug)]
pub struct LineReader {
    max: usize,
    discarding: bool,
}

impl LineReader {
    /// `max` counts the CRLF.
    pub fn new(max: usize) -> Self {
        LineReader {
            max,
            discarding: false,
        }
    }

    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// The next line, or `None` if more input is needed.
    pub fn next_line(&mut self, input: &mut BytesMut) -> Option<Line> {
        match input.iter().position(|&b| b == b'\n') {
            Some(nl) => {
                let line = input.split_to(nl + 1).freeze();
                if std::mem::take(&mut self.discarding) || line.len() > self.max {
                    return Some(Line::TooLong);
                }
                if nl == 0 || line[nl - 1] != b'\r' {
                    return Some(Line::BareLf);
                }
                Some(Line::Ok(line.slice(..nl - 1)))
            }
            None => {
                if input.len() >= self.max {
                    self.discarding = true;
                    // keep a trailing CR: it may pair with the LF of the next read
                    let keep = usize::from(input.last() == Some(&b'\r'));
                    let drop = input.len() - keep;
                    input.advance(drop);
                }
                None
            }
        }
    }
}

/// Split a command line into its verb (upper-cased) and the rest (leading spaces removed).
pub fn split_verb(line: &[u8]) -> (String, &[u8]) {
    let end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let verb = String::from_utf8_lossy(&line[..end]).to_ascii_uppercase();
    let mut rest = &line[end..];
    while let [b' ', tail @ ..] = rest {
        rest = tail;
    }
    (verb, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_crlf_lines_and_keeps_the_rest() {
        let mut r = LineReader::new(512);
        let mut b = BytesMut::from(&b"NOOP\r\nQUIT\r\n220 x"[..]);
        assert_eq!(r.next_line(&mut b), Some(Line::Ok(Bytes::from_static(b"NOOP"))));
        assert_eq!(r.next_line(&mut b), Some(Line::Ok(Bytes::from_static(b"QUIT"))));
        assert_eq!(r.next_line(&mut b), None);
        assert_eq!(&b[..], b"220 x");
    }

    #[test]
    fn reports_bare_lf() {
        let mut r = LineReader::new(512);
        let mut b = BytesMut::from(&b"NOOP\nQUIT\r\n"[..]);
        assert_eq!(r.next_line(&mut b), Some(Line::BareLf));
        assert_eq!(r.next_line(&mut b), Some(Line::Ok(Bytes::from_static(b"QUIT"))));
    }

    #[test]
    fn discards_long_lines_without_buffering() {
        let mut r = LineReader::new(16);
        let mut b = BytesMut::from(&[b'x'; 100][..]);
        assert_eq!(r.next_line(&mut b), None);
        assert!(b.len() < 16);
        b.extend_from_slice(&[b'y'; 100_000]);
        assert_eq!(r.next_line(&mut b), None);
        assert!(b.len() < 16);
        b.extend_from_slice(b"zz\r\nNOOP\r\n");
        assert_eq!(r.next_line(&mut b), Some(Line::TooLong));
        assert_eq!(r.next_line(&mut b), Some(Line::Ok(Bytes::from_static(b"NOOP"))));
    }

    #[test]
    fn verb_split() {
        assert_eq!(
            split_verb(b"mail FROM:<a@b>"),
            ("MAIL".to_string(), &b"FROM:<a@b>"[..])
        );
        assert_eq!(split_verb(b"ATRN"), ("ATRN".to_string(), &b""[..]));
        assert_eq!(split_verb(b"ATRN   a.org"), ("ATRN".to_string(), &b"a.org"[..]));
    }
}
