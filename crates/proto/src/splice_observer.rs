//! Watching a byte splice: the customer's splice sink copies bytes between the provider and a
//! local SMTP server without taking part in the dialogue, yet it must still report honestly
//! how many messages the local server accepted or refused (fetchmail cannot tell you).
//!
//! The observer sees both directions in arrival order and follows the SMTP conversation just
//! enough: each command expects one reply (pairing by counting, RFC 2920 §3.1), a `354` to DATA
//! switches the provider's side into message data, and the reply to the final dot is the local
//! verdict on that message. `BDAT n [LAST]` (RFC 3030, when the local server offers CHUNKING)
//! is followed by exactly `n` octets, skipped unread whatever the reply, and the reply to
//! `BDAT n LAST` is the verdict. It never changes a byte and keeps memory bounded.

use crate::reply::parse_reply;
use bytes::BytesMut;
use std::collections::VecDeque;

/// Longest command line it keeps while looking for its end.
const MAX_LINE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Command,
    Data,
    /// The final dot, or `BDAT n LAST`: the verdict on a message.
    Dot,
}

#[derive(Debug, Default)]
pub struct SpliceObserver {
    expect: VecDeque<Expect>,
    in_data: bool,
    /// The current line of the provider's side (commands), or the start of a data line.
    line: Vec<u8>,
    /// In data: the current line is already longer than ".\r\n".
    long_line: bool,
    /// Octets of a BDAT chunk still to pass.
    chunk_left: u64,
    replies: BytesMut,
    broken: bool,
    pub delivered: u64,
    pub refused: u64,
}

impl SpliceObserver {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes the provider sent (towards the local server).
    pub fn provider(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.chunk_left > 0 {
                let n = bytes
                    .len()
                    .min(usize::try_from(self.chunk_left).unwrap_or(usize::MAX));
                self.chunk_left -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            let b = bytes[0];
            bytes = &bytes[1..];
            if self.in_data {
                if !self.long_line {
                    self.line.push(b);
                    if self.line.len() > 3 {
                        self.long_line = true;
                        self.line.clear();
                    }
                }
                if b == b'\n' {
                    if !self.long_line && self.line == b".\r\n" {
                        self.in_data = false;
                        self.expect.push_back(Expect::Dot);
                    }
                    self.line.clear();
                    self.long_line = false;
                }
                continue;
            }
            if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
            if b == b'\n' {
                let verb = self
                    .line
                    .split(|c| *c == b' ' || *c == b'\r')
                    .next()
                    .unwrap_or(&[]);
                let kind = if verb.eq_ignore_ascii_case(b"DATA") {
                    Expect::Data
                } else if verb.eq_ignore_ascii_case(b"BDAT") {
                    match parse_bdat(&self.line) {
                        Some((size, last)) => {
                            self.chunk_left = size;
                            if last {
                                Expect::Dot
                            } else {
                                Expect::Command
                            }
                        }
                        None => {
                            // Where the chunk ends is unknown, so is everything after it.
                            self.broken = true;
                            Expect::Command
                        }
                    }
                } else {
                    Expect::Command
                };
                self.expect.push_back(kind);
                self.line.clear();
            }
        }
    }

    /// Bytes the local server sent (towards the provider).
    pub fn local(&mut self, bytes: &[u8]) {
        if self.broken {
            return;
        }
        self.replies.extend_from_slice(bytes);
        loop {
            match parse_reply(&mut self.replies) {
                Ok(Some(r)) => match self.expect.pop_front() {
                    // The greeting (and anything unasked) answers no command.
                    None => {}
                    Some(Expect::Data) => self.in_data = r.code == 354,
                    Some(Expect::Dot) => {
                        if r.is_positive() {
                            self.delivered += 1;
                        } else {
                            self.refused += 1;
                        }
                    }
                    Some(Expect::Command) => {}
                },
                Ok(None) => break,
                Err(_) => {
                    // Not SMTP we understand: stop counting rather than guess.
                    self.broken = true;
                    self.replies.clear();
                    break;
                }
            }
        }
    }
}

/// `BDAT size [LAST]` (the whole line, CRLF included): the size and whether it is the last.
fn parse_bdat(line: &[u8]) -> Option<(u64, bool)> {
    let text = std::str::from_utf8(line).ok()?.trim_end_matches(['\r', '\n']);
    let mut words = text.split(' ').skip(1);
    let size = words.next()?;
    if size.is_empty() || !size.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let size = size.parse().ok()?;
    match (words.next(), words.next()) {
        (None, _) => Some((size, false)),
        (Some(w), None) if w.eq_ignore_ascii_case("LAST") => Some((size, true)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_accepted_and_refused_messages_through_pipelining_and_split_reads() {
        let mut o = SpliceObserver::new();
        o.local(b"220 local ESMTP\r\n");
        o.provider(b"EHLO provider\r\n");
        o.local(b"250-local\r\n250 PIPELINING\r\n");
        o.provider(b"MAIL FROM:<a@b>\r\nRCPT TO:<x@c>\r\nDATA\r\n");
        o.local(b"250 ok\r\n250 ok\r\n35");
        o.local(b"4 go\r\n");
        o.provider(b"Subject: 1\r\n\r\n..DATA\r\n.");
        o.provider(b"\r\n");
        o.local(b"250 queued\r\n");
        o.provider(b"MAIL FROM:<a@b>\r\nRCPT TO:<y@c>\r\nDATA\r\n");
        o.local(b"250 ok\r\n250 ok\r\n354 go\r\n");
        o.provider(b"body\r\n.\r\n");
        o.local(b"451 4.3.0 try later\r\n");
        // A refused DATA: what follows is commands, not data.
        o.provider(b"MAIL FROM:<a@b>\r\nRCPT TO:<z@c>\r\nDATA\r\n");
        o.local(b"250 ok\r\n550 no\r\n554 no valid recipients\r\n");
        o.provider(b"RSET\r\nQUIT\r\n");
        o.local(b"250 ok\r\n221 bye\r\n");
        assert_eq!((o.delivered, o.refused), (1, 1));
    }

    /// Chunk octets are passed unread, however they look ("DATA", a lone dot, split
    /// anywhere), and the reply to `BDAT n LAST` is the verdict.
    #[test]
    fn bdat_chunks_are_skipped_and_last_is_the_verdict() {
        let mut o = SpliceObserver::new();
        o.local(b"220 local ESMTP\r\n");
        o.provider(b"EHLO provider\r\n");
        o.local(b"250-local\r\n250-PIPELINING\r\n250 CHUNKING\r\n");
        o.provider(b"MAIL FROM:<a@b>\r\nRCPT TO:<x@c>\r\nBDAT 12\r\nDATA\r\n.\r\nQUIB");
        o.provider(b"DAT 3 last\r\n.\r\n");
        o.provider(b"RSET\r\nMAIL FROM:<a@b>\r\nRCPT TO:<y@c>\r\nBDAT 0 LAST\r\n");
        o.local(b"250 ok\r\n250 ok\r\n250 12 octets\r\n250 queued\r\n");
        o.local(b"250 reset\r\n250 ok\r\n250 ok\r\n554 5.6.0 empty\r\n");
        assert_eq!((o.delivered, o.refused), (1, 1));
        // A BDAT whose size cannot be read: nothing after it can be trusted.
        o.provider(b"MAIL FROM:<a@b>\r\nRCPT TO:<y@c>\r\nBDAT x LAST\r\n");
        o.local(b"250 ok\r\n250 ok\r\n250 queued\r\n");
        assert_eq!((o.delivered, o.refused), (1, 1));
    }

    #[test]
    fn garbage_stops_counting_without_panicking() {
        let mut o = SpliceObserver::new();
        o.provider(&[0xff; 10_000]);
        o.local(b"not smtp\r\n");
        o.local(b"250 ok\r\n");
        assert_eq!((o.delivered, o.refused), (0, 0));
    }
}
