//! Takes STARTTLS out of the local MTA's EHLO replies in `odmr client`'s byte splice.
//!
//! Why: in the reversed session the customer is the SMTP server, and it never offers STARTTLS
//! there (TLS, if any, was set up before ATRN and carries on; RFC 3207 §4.2 forbids listing
//! STARTTLS once TLS is on). A splice copies the local MTA's replies byte for byte, and a local
//! Postfix or Exim usually lists STARTTLS: a provider that took it up would start TLS a second
//! time, or run TLS end to end with the local MTA past the splice's observer.
//!
//! Input: the local-to-provider byte stream, which carries replies only. Invariants:
//! - Every octet passes unchanged and in order, except lines `250-STARTTLS` / `250 STARTTLS`
//!   (any case) inside a multi-line reply. When the dropped line ended its reply, the line
//!   before it becomes the last (`250 ` for `250-`), so the reply stays well formed.
//! - A reply is never removed whole: a single-line `250 STARTTLS` passes as it is.
//! - Memory is bounded: at most one continuation line is held back (until the next line shows
//!   whether it ends its reply) and one partial line up to [`MAX_LINE`]; a longer line passes
//!   unchanged as it comes (no EHLO keyword line is that long).

/// The longest line looked at; longer ones pass through untouched.
pub const MAX_LINE: usize = 1024;

#[derive(Debug, Default)]
pub struct StartTlsFilter {
    /// The current line so far (no LF yet), while it is short enough to look at.
    partial: Vec<u8>,
    /// The current line is too long: pass it through up to its LF.
    passing: bool,
    /// A complete `250-` line, held back until the next line is seen.
    held: Option<Vec<u8>>,
}

impl StartTlsFilter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Filters `input`, appending what may go on to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            let lf = input.iter().position(|&b| b == b'\n');
            let (piece, rest) = match lf {
                Some(i) => input.split_at(i + 1),
                None => (input, &[][..]),
            };
            input = rest;
            if self.passing {
                out.extend_from_slice(piece);
                self.passing = lf.is_none();
                continue;
            }
            self.partial.extend_from_slice(piece);
            if lf.is_some() {
                let line = std::mem::take(&mut self.partial);
                self.line(line, out);
            } else if self.partial.len() > MAX_LINE {
                self.release(out);
                out.append(&mut self.partial);
                self.passing = true;
            }
        }
    }

    /// The stream ended: whatever is held goes out as it is.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.release(out);
        out.append(&mut self.partial);
    }

    fn release(&mut self, out: &mut Vec<u8>) {
        if let Some(h) = self.held.take() {
            out.extend_from_slice(&h);
        }
    }

    fn line(&mut self, line: Vec<u8>, out: &mut Vec<u8>) {
        let text = trim_eol(&line);
        let continues = text.starts_with(b"250-");
        if self.held.is_some() && is_starttls(text) {
            if !continues {
                // It ended the reply: the held line ends it now.
                if let Some(mut h) = self.held.take() {
                    h[3] = b' ';
                    out.extend_from_slice(&h);
                }
            }
            return;
        }
        self.release(out);
        if continues {
            self.held = Some(line);
        } else {
            out.extend_from_slice(&line);
        }
    }
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn is_starttls(text: &[u8]) -> bool {
    text.len() >= 4
        && (text.starts_with(b"250-") || text.starts_with(b"250 "))
        && text[4..].trim_ascii().eq_ignore_ascii_case(b"STARTTLS")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn filter(pieces: &[&[u8]]) -> String {
        let mut f = StartTlsFilter::new();
        let mut out = Vec::new();
        for p in pieces {
            f.feed(p, &mut out);
        }
        f.finish(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn starttls_leaves_the_ehlo_reply_wherever_it_stands() {
        let greeting = "220 local ESMTP\r\n";
        assert_eq!(
            filter(&[
                greeting.as_bytes(),
                b"250-local\r\n250-STARTTLS\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
            ]),
            format!("{greeting}250-local\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
        );
        // Last: the line before it ends the reply.
        assert_eq!(
            filter(&[b"250-local\r\n250-PIPELINING\r\n250 starttls\r\n250 2.1.0 Ok\r\n"]),
            "250-local\r\n250 PIPELINING\r\n250 2.1.0 Ok\r\n"
        );
        // Split anywhere, even inside the keyword.
        assert_eq!(
            filter(&[b"250-local\r", b"\n250-STA", b"RTTLS\r\n250 SIZE 10", b"00\r\n"]),
            "250-local\r\n250 SIZE 1000\r\n"
        );
    }

    #[test]
    fn other_replies_pass_untouched() {
        let s = "220 x\r\n250 STARTTLS\r\n354 go\r\n250-a\r\n250 b\r\n550-5.1.1 STARTTLS\r\n550 5.1.1 no\r\n";
        assert_eq!(filter(&[s.as_bytes()]), s, "a single-line reply is never removed");
        let long = format!("250-{}\r\n250 x\r\n", "y".repeat(3000));
        assert_eq!(filter(&[long.as_bytes()]), long);
        // An unterminated tail goes out at the end.
        assert_eq!(filter(&[b"250-a\r\n250 b"]), "250-a\r\n250 b");
    }

    proptest! {
        /// Any split of any stream gives the same output as one piece, and without a STARTTLS
        /// line the output is the input.
        #[test]
        fn splits_do_not_matter(lines in proptest::collection::vec("(250-|250 |220 |354 )[A-Za-z ]{0,12}", 0..12), cut in 0usize..200) {
            let input: String = lines.iter().map(|l| format!("{l}\r\n")).collect();
            let whole = filter(&[input.as_bytes()]);
            let cut = cut.min(input.len());
            let (a, b) = input.as_bytes().split_at(cut);
            prop_assert_eq!(&filter(&[a, b]), &whole);
            if !lines.iter().any(|l| l[4..].trim().eq_ignore_ascii_case("starttls")) {
                prop_assert_eq!(whole, input);
            }
        }
    }
}
