//! SMTP replies: building them (server side) and parsing them (client side).
//!
//! A reply carries SMTP meaning (code, optional enhanced status code, text), not just a line, so
//! per-recipient outcomes, logs and the queue listing can all derive from the same value
//! (maddy's lesson). Parsing is bounded: a peer cannot make us buffer an unbounded reply.

use bytes::{Buf, BytesMut};
use std::fmt;

/// Longest reply line we accept from a peer. RFC 5321 §4.5.3.1.5 sets 512 octets; real servers
/// exceed it with long texts, so we allow some slack but stay bounded.
pub const MAX_REPLY_LINE: usize = 4096;
/// Most lines in one multi-line reply (EHLO replies are the longest in practice).
pub const MAX_REPLY_LINES: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Enhanced status code (RFC 3463), e.g. "5.7.1". Written only where ENHANCEDSTATUSCODES
    /// applies, and parsed from a peer's first line when present.
    pub status: Option<String>,
    /// Text lines, without code and status.
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(code: u16, status: &str, text: impl Into<String>) -> Self {
        Reply {
            code,
            status: (!status.is_empty()).then(|| status.to_string()),
            lines: vec![text.into()],
        }
    }

    pub fn multi(code: u16, lines: Vec<String>) -> Self {
        Reply {
            code,
            status: None,
            lines,
        }
    }

    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }
    /// 3xx.
    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }
    /// 4xx: the same request may succeed later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }
    /// 5xx (and anything outside 2xx–4xx, which RFC 5321 §4.2 says to treat by first digit;
    /// an out-of-range code from a broken peer is safest treated as permanent only when it
    /// starts with 5, so callers should check `is_transient` first).
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// Serialise. `enhanced` adds the status code to 2xx/4xx/5xx lines (RFC 2034 §4).
    pub fn write(&self, out: &mut Vec<u8>, enhanced: bool) {
        let status = match (&self.status, enhanced, self.code / 100) {
            (Some(s), true, 2 | 4 | 5) => Some(s.as_str()),
            _ => None,
        };
        let n = self.lines.len().max(1);
        for i in 0..n {
            let text = self.lines.get(i).map(String::as_str).unwrap_or("");
            let sep = if i + 1 == n { ' ' } else { '-' };
            out.extend_from_slice(self.code.to_string().as_bytes());
            out.push(sep as u8);
            if let Some(s) = status {
                out.extend_from_slice(s.as_bytes());
                if !text.is_empty() {
                    out.push(b' ');
                }
            }
            out.extend_from_slice(text.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The reply with an enhanced status code of its own class, as RFC 2034 §4 requires of
    /// every 2xx/4xx/5xx once ENHANCEDSTATUSCODES is offered: a peer's reply passed on may lack
    /// one (an MTA that does not offer the extension) or carry one of another class; it then gets
    /// the class's "other or undefined" code, X.0.0 (RFC 3463 §3).
    pub fn with_class_status(mut self) -> Reply {
        let class = self.code / 100;
        if matches!(class, 2 | 4 | 5) {
            let first = self.status.as_deref().and_then(|s| s.chars().next());
            if first.and_then(|c| c.to_digit(10)) != Some(u32::from(class)) {
                self.status = Some(format!("{class}.0.0"));
            }
        }
        self
    }

    /// The reply on one line, as logs and the queue listing show it: the code, the status and
    /// the words of every text line, each separated by one space (a line's own runs of white
    /// space too, so never a double space), and any other control character as `?`, so that a
    /// peer's text can neither break a log line nor a listing's columns. Shown, never parsed:
    /// the reply itself is kept as a [`Reply`].
    pub fn one_line(&self) -> String {
        let mut s = self.code.to_string();
        let words = self
            .status
            .iter()
            .chain(&self.lines)
            .flat_map(|l| l.split_whitespace());
        for w in words {
            s.push(' ');
            s.extend(w.chars().map(|c| if c.is_control() { '?' } else { c }));
        }
        s
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.one_line())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("reply line longer than {MAX_REPLY_LINE} octets")]
    LineTooLong,
    #[error("reply has more than {MAX_REPLY_LINES} lines")]
    TooManyLines,
    #[error("malformed reply line: {0:?}")]
    Malformed(String),
}

/// Take one complete reply (possibly multi-line) off the front of `input`.
/// Returns `Ok(None)` when more input is needed; nothing is consumed then.
pub fn parse_reply(input: &mut BytesMut) -> Result<Option<Reply>, ReplyError> {
    let mut pos = 0;
    let mut code = 0u16;
    let mut lines = Vec::new();
    loop {
        let rest = &input[pos..];
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            if rest.len() > MAX_REPLY_LINE {
                return Err(ReplyError::LineTooLong);
            }
            return Ok(None);
        };
        if nl > MAX_REPLY_LINE {
            return Err(ReplyError::LineTooLong);
        }
        // RFC 5321 wants CRLF; a tolerant client also accepts a bare LF from a sloppy server.
        let line = rest[..nl].strip_suffix(b"\r").unwrap_or(&rest[..nl]);
        let text = String::from_utf8_lossy(line).into_owned();
        if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
            return Err(ReplyError::Malformed(text));
        }
        let this_code: u16 = text[..3].parse().unwrap_or(0);
        if !(200..600).contains(&this_code) {
            return Err(ReplyError::Malformed(text));
        }
        if lines.is_empty() {
            code = this_code;
        } else if this_code != code {
            return Err(ReplyError::Malformed(text));
        }
        let more = line.get(3) == Some(&b'-');
        // "250" alone, "250 text" and "250-text" are all valid (RFC 5321 §4.2: be prepared for a
        // missing space).
        // Slice the bytes, not the lossy text: a non-ASCII separator byte would otherwise put
        // the cut inside a replacement character (found by fuzzing).
        let body = if line.len() > 4 {
            String::from_utf8_lossy(&line[4..]).into_owned()
        } else {
            String::new()
        };
        lines.push(body);
        pos += nl + 1;
        if !more {
            break;
        }
        if lines.len() >= MAX_REPLY_LINES {
            return Err(ReplyError::TooManyLines);
        }
    }
    input.advance(pos);
    let status = lines.first().and_then(|l| leading_status(l, code));
    if let Some(st) = &status {
        for l in lines.iter_mut() {
            if let Some(rest) = l.strip_prefix(st.as_str()) {
                *l = rest.trim_start().to_string();
            }
        }
    }
    Ok(Some(Reply { code, status, lines }))
}

/// An enhanced status code at the start of `text` whose class matches the reply code.
fn leading_status(text: &str, code: u16) -> Option<String> {
    let word = text.split(' ').next()?;
    let mut parts = word.split('.');
    let class = parts.next()?;
    let subject = parts.next()?;
    let detail = parts.next()?;
    let digits =
        |s: &str, max: usize| !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit());
    if parts.next().is_none()
        && class.len() == 1
        && class.as_bytes()[0] == b'0' + (code / 100) as u8
        && digits(subject, 3)
        && digits(detail, 3)
    {
        Some(word.to_string())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passed_on_replies_get_a_status_of_their_class() {
        let bare = Reply::multi(550, vec!["Unrouteable address".into()]);
        assert_eq!(bare.with_class_status().status.as_deref(), Some("5.0.0"));
        let wrong = Reply::new(450, "5.1.1", "mailbox busy");
        assert_eq!(wrong.with_class_status().status.as_deref(), Some("4.0.0"));
        let right = Reply::new(550, "5.1.1", "no such user");
        assert_eq!(right.with_class_status().status.as_deref(), Some("5.1.1"));
        let intermediate = Reply::multi(354, vec!["go".into()]);
        assert_eq!(intermediate.with_class_status().status, None);
    }

    fn parse_all(s: &str) -> (Result<Option<Reply>, ReplyError>, usize) {
        let mut b = BytesMut::from(s);
        let r = parse_reply(&mut b);
        (r, b.len())
    }

    #[test]
    fn writes_enhanced_codes_only_when_asked() {
        let r = Reply::new(550, "5.7.1", "relay denied");
        let mut out = Vec::new();
        r.write(&mut out, true);
        assert_eq!(out, b"550 5.7.1 relay denied\r\n");
        out.clear();
        r.write(&mut out, false);
        assert_eq!(out, b"550 relay denied\r\n");
    }

    #[test]
    fn one_line_joins_the_lines_with_single_spaces() {
        let r = Reply::multi(
            250,
            vec!["".into(), " 361 byte chunk,".into(), "total  361 OK ".into()],
        );
        assert_eq!(r.one_line(), "250 361 byte chunk, total 361 OK");
        let r = Reply::new(550, "5.7.1", "no\tthanks\x1b[31m\r\nX-Evil: 1");
        assert_eq!(r.one_line(), "550 5.7.1 no thanks?[31m X-Evil: 1");
        assert_eq!(Reply::multi(250, vec![]).one_line(), "250");
        assert_eq!(Reply::new(221, "", "").to_string(), "221");
    }

    #[test]
    fn writes_multiline() {
        let r = Reply::multi(250, vec!["host".into(), "AUTH CRAM-MD5".into(), "ATRN".into()]);
        let mut out = Vec::new();
        r.write(&mut out, true);
        assert_eq!(out, b"250-host\r\n250-AUTH CRAM-MD5\r\n250 ATRN\r\n");
    }

    #[test]
    fn parses_multiline_and_waits_for_more() {
        let (r, left) = parse_all("250-a\r\n250-b\r\n");
        assert_eq!(r, Ok(None));
        assert_eq!(left, 14);
        let (r, left) = parse_all("250-a\r\n250 b\r\nxyz");
        assert_eq!(r.unwrap().unwrap().lines, vec!["a", "b"]);
        assert_eq!(left, 3);
    }

    #[test]
    fn parses_status_and_bare_code() {
        let (r, _) = parse_all("451 4.3.0 try later\r\n");
        let r = r.unwrap().unwrap();
        assert_eq!(r.status.as_deref(), Some("4.3.0"));
        assert_eq!(r.lines, vec!["try later"]);
        assert!(r.is_transient());
        let (r, _) = parse_all("250\r\n");
        assert_eq!(r.unwrap().unwrap().lines, vec![""]);
        // class mismatch: not a status code
        let (r, _) = parse_all("250 5.0.0 odd\r\n");
        assert_eq!(r.unwrap().unwrap().status, None);
    }

    #[test]
    fn non_ascii_after_the_code_does_not_panic() {
        let mut b = BytesMut::from(&b"250\xc3\xa9x CRAM-MD5\r\n"[..]);
        let r = parse_reply(&mut b).unwrap().unwrap();
        assert_eq!(r.code, 250);
        let mut b = BytesMut::from(&b"250\xff\xfe\xfd\r\n"[..]);
        assert!(parse_reply(&mut b).is_ok());
    }

    #[test]
    fn rejects_garbage_and_bounds() {
        assert!(parse_all("hello\r\n").0.is_err());
        assert!(parse_all("250-a\r\n251 b\r\n").0.is_err());
        assert!(parse_all("999 x\r\n").0.is_err());
        let long = format!("250 {}", "x".repeat(MAX_REPLY_LINE + 10));
        assert_eq!(parse_all(&long).0, Err(ReplyError::LineTooLong));
    }
}
