//! Following an SMTP or ODMR dialogue from the outside: the client's bytes (commands, message
//! data) and the server's bytes (replies), each side in its arrival order, without taking part.
//! Two users: the customer's splice sink, which must count the local server's verdicts on the
//! messages it copies, and the debug transcript of every session, which must show commands and
//! replies but never a password or a message.
//!
//! How it follows the dialogue:
//! - Each command expects one reply (pairing by counting, RFC 2920 §3.1); a reply that answers
//!   nothing (the greeting, a 421) is passed on as such.
//! - A `354` to DATA switches the client's side into message data up to the lone dot (RFC 5321
//!   §4.1.1.4); the reply to the dot is the verdict on the message.
//! - `BDAT n [LAST]` (RFC 3030) is followed by exactly `n` octets, skipped unread whatever the
//!   reply; the reply to `BDAT n LAST` is the verdict.
//! - AUTH (RFC 4954 §4): the mechanism is shown, the initial response and every line the
//!   client sends after a `334` are not: they are credentials or proofs of them.
//! - ATRN answered `250` is the ODMR turnaround (RFC 2645 §5.2.1): the roles swap, and the
//!   dialogue starts again with the new server's greeting.
//! - Replies it cannot parse stop it for good ([`Event::Lost`]): it no longer knows where data
//!   begins and ends, so it reports nothing rather than guess (and leak a body as commands).
//!
//! It never changes a byte, and keeps memory bounded: one command line (cut at [`MAX_LINE`]) and
//! one reply in the making.

use crate::reply::{parse_reply, Reply};
use bytes::BytesMut;
use std::collections::VecDeque;

/// Longest command line it keeps while looking for its end.
pub const MAX_LINE: usize = 4096;

/// What the observer saw, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A command line, without its line end (cut at [`MAX_LINE`] octets).
    Command(&'a [u8]),
    /// `AUTH MECHANISM`, its initial response (if any) left out.
    Auth(&'a [u8]),
    /// A line of an AUTH exchange after a `334`: left out.
    AuthResponse,
    /// A message's data ended (the lone dot of DATA, or the octets of one BDAT chunk).
    Data { octets: u64 },
    /// A complete reply.
    Reply(&'a Reply),
    /// The reply to a message's data: was it accepted (2xx)?
    Verdict { accepted: bool },
    /// ATRN was granted: the client's side is the SMTP server from now on.
    Turnaround,
    /// The server's side stopped looking like SMTP replies; nothing more is reported.
    Lost,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Command,
    Data,
    /// The final dot, or `BDAT n LAST`: the verdict on a message.
    Dot,
    /// AUTH or a line of its exchange: a `334` asks for another line.
    Auth,
    Atrn,
}

#[derive(Debug, Default)]
pub struct DialogueObserver {
    expect: VecDeque<Expect>,
    in_data: bool,
    /// The next client line answers a `334`.
    auth_line: bool,
    /// The current line of the client's side, or the start of a data line.
    line: Vec<u8>,
    /// In data: the current line is already longer than ".\r\n".
    long_line: bool,
    /// Octets of the current message's data so far.
    octets: u64,
    /// Octets of a BDAT chunk still to pass.
    chunk_left: u64,
    replies: BytesMut,
    lost: bool,
}

impl DialogueObserver {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes the client sent: commands and message data.
    pub fn client(&mut self, mut bytes: &[u8], on: &mut impl FnMut(Event<'_>)) {
        while !bytes.is_empty() && !self.lost {
            if self.chunk_left > 0 {
                let n = bytes
                    .len()
                    .min(usize::try_from(self.chunk_left).unwrap_or(usize::MAX));
                self.chunk_left -= n as u64;
                bytes = &bytes[n..];
                if self.chunk_left == 0 {
                    on(Event::Data {
                        octets: std::mem::take(&mut self.octets),
                    });
                }
                continue;
            }
            let b = bytes[0];
            bytes = &bytes[1..];
            if self.in_data {
                self.octets += 1;
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
                        on(Event::Data {
                            octets: std::mem::take(&mut self.octets) - 3,
                        });
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
                self.command_line(on);
                self.line.clear();
            }
        }
    }

    fn command_line(&mut self, on: &mut impl FnMut(Event<'_>)) {
        let line = self.line.strip_suffix(b"\n").unwrap_or(&self.line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if std::mem::take(&mut self.auth_line) {
            self.expect.push_back(Expect::Auth);
            on(Event::AuthResponse);
            return;
        }
        let mut words = line.split(|c| *c == b' ');
        let verb = words.next().unwrap_or(&[]);
        let kind = if verb.eq_ignore_ascii_case(b"DATA") {
            Expect::Data
        } else if verb.eq_ignore_ascii_case(b"AUTH") {
            let mechanism = words.next().map_or(0, <[u8]>::len);
            let shown = (verb.len() + 1 + mechanism).min(line.len());
            self.expect.push_back(Expect::Auth);
            on(Event::Auth(&line[..shown]));
            return;
        } else if verb.eq_ignore_ascii_case(b"ATRN") {
            Expect::Atrn
        } else if verb.eq_ignore_ascii_case(b"BDAT") {
            match parse_bdat(line) {
                Some((size, last)) => {
                    self.chunk_left = size;
                    self.octets = size;
                    if last {
                        Expect::Dot
                    } else {
                        Expect::Command
                    }
                }
                None => {
                    // Where the chunk ends is unknown, so is everything after it.
                    self.lost = true;
                    on(Event::Command(line));
                    on(Event::Lost);
                    return;
                }
            }
        } else {
            Expect::Command
        };
        self.expect.push_back(kind);
        on(Event::Command(line));
        if self.chunk_left == 0 && verb.eq_ignore_ascii_case(b"BDAT") {
            on(Event::Data { octets: 0 });
        }
    }

    /// Bytes the server sent: replies.
    pub fn server(&mut self, bytes: &[u8], on: &mut impl FnMut(Event<'_>)) {
        if self.lost {
            return;
        }
        self.replies.extend_from_slice(bytes);
        loop {
            let r = match parse_reply(&mut self.replies) {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(_) => {
                    self.lost = true;
                    self.replies.clear();
                    on(Event::Lost);
                    break;
                }
            };
            let expected = self.expect.pop_front();
            if expected == Some(Expect::Auth) && r.code == 334 {
                // A challenge: harmless for CRAM-MD5, but SCRAM's carry the salt and the
                // server's proof; none of it helps a reader of the log.
                let hidden = Reply {
                    code: 334,
                    status: None,
                    lines: vec!["…".into()],
                };
                on(Event::Reply(&hidden));
            } else {
                on(Event::Reply(&r));
            }
            match expected {
                // The greeting (and anything unasked) answers no command.
                None | Some(Expect::Command) => {}
                Some(Expect::Data) => self.in_data = r.code == 354,
                Some(Expect::Dot) => on(Event::Verdict {
                    accepted: r.is_positive(),
                }),
                Some(Expect::Auth) => self.auth_line = r.code == 334,
                Some(Expect::Atrn) if r.code == 250 => {
                    // A new dialogue in the other direction; what the old client had pipelined
                    // behind ATRN (nothing, if it follows RFC 2645) answers nothing now.
                    *self = Self::default();
                    on(Event::Turnaround);
                    break;
                }
                Some(Expect::Atrn) => {}
            }
        }
    }
}

/// `BDAT size [LAST]` (without its line end): the size and whether it is the last.
fn parse_bdat(line: &[u8]) -> Option<(u64, bool)> {
    let text = std::str::from_utf8(line).ok()?;
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

    /// Everything the observer reports, as text: `C:` commands, `S:` reply codes, and the rest.
    fn run(steps: &[(bool, &[u8])]) -> Vec<String> {
        let mut o = DialogueObserver::new();
        let mut seen = Vec::new();
        let mut on = |e: Event<'_>| {
            seen.push(match e {
                Event::Command(l) => format!("C: {}", String::from_utf8_lossy(l)),
                Event::Auth(l) => format!("C: {} …", String::from_utf8_lossy(l)),
                Event::AuthResponse => "C: …".into(),
                Event::Data { octets } => format!("data {octets}"),
                Event::Reply(r) => format!("S: {}", r.code),
                Event::Verdict { accepted } => format!("verdict {accepted}"),
                Event::Turnaround => "turnaround".into(),
                Event::Lost => "lost".into(),
            })
        };
        for (client, bytes) in steps {
            if *client {
                o.client(bytes, &mut on);
            } else {
                o.server(bytes, &mut on);
            }
        }
        seen
    }

    #[test]
    fn auth_payloads_and_message_data_never_show() {
        let seen = run(&[
            (false, b"220 odmr ESMTP\r\n"),
            (true, b"EHLO c\r\nAUTH PLAIN AGFjbWUAc2VjcmV0\r\n"),
            (false, b"250 odmr\r\n535 5.7.8 no\r\n"),
            (true, b"AUTH CRAM-MD5\r\n"),
            (false, b"334 PDEyMzQ+\r\n"),
            (true, b"YWNtZSBkaWdlc3Q=\r\n"),
            (false, b"235 2.7.0 ok\r\n"),
            (true, b"MAIL FROM:<a@b>\r\nRCPT TO:<x@c>\r\nDATA\r\n"),
            (false, b"250 ok\r\n250 ok\r\n354 go\r\n"),
            (true, b"Subject: secret\r\n\r\n..MAIL FROM:<evil>\r\n.\r"),
            (true, b"\nQUIT\r\n"),
            (false, b"250 queued\r\n221 bye\r\n"),
        ]);
        let text = seen.join("\n");
        for secret in ["AGFj", "YWNt", "secret", "evil"] {
            assert!(!text.contains(secret), "{secret} shown:\n{text}");
        }
        assert_eq!(
            seen,
            [
                "S: 220",
                "C: EHLO c",
                "C: AUTH PLAIN …",
                "S: 250",
                "S: 535",
                "C: AUTH CRAM-MD5 …",
                "S: 334",
                "C: …",
                "S: 235",
                "C: MAIL FROM:<a@b>",
                "C: RCPT TO:<x@c>",
                "C: DATA",
                "S: 250",
                "S: 250",
                "S: 354",
                "data 39",
                "C: QUIT",
                "S: 250",
                "verdict true",
                "S: 221",
            ]
        );
    }

    #[test]
    fn atrn_granted_swaps_the_roles() {
        // The provider's view: the customer sends commands; once ATRN is granted the caller
        // swaps the sides, and the customer's greeting is the first reply of a new dialogue.
        let seen = run(&[
            (true, b"EHLO customer\r\nATRN example.org\r\n"),
            (false, b"250 customer\r\n250 OK now reversing\r\n"),
            (false, b"220 customer ESMTP\r\n"),
            (true, b"EHLO provider\r\n"),
            (false, b"250 customer\r\n"),
        ]);
        assert_eq!(
            seen,
            [
                "C: EHLO customer",
                "C: ATRN example.org",
                "S: 250",
                "S: 250",
                "turnaround",
                "S: 220",
                "C: EHLO provider",
                "S: 250",
            ]
        );
        // A refused ATRN turns nothing.
        let mut o = DialogueObserver::new();
        o.client(b"ATRN example.org\r\n", &mut |_| {});
        o.server(b"453 You have no mail\r\n", &mut |e| {
            assert_ne!(e, Event::Turnaround)
        });
    }

    #[test]
    fn bdat_chunks_are_skipped_and_counted() {
        let seen = run(&[
            (
                true,
                b"MAIL FROM:<a@b>\r\nRCPT TO:<x@c>\r\nBDAT 12\r\nDATA\r\n.\r\nQUIB",
            ),
            (true, b"DAT 3 LAST\r\n.\r\n"),
            (false, b"250 ok\r\n250 ok\r\n250 12 octets\r\n250 queued\r\n"),
            (true, b"BDAT 0 LAST\r\n"),
        ]);
        assert_eq!(
            seen,
            [
                "C: MAIL FROM:<a@b>",
                "C: RCPT TO:<x@c>",
                "C: BDAT 12",
                "data 12",
                "C: BDAT 3 LAST",
                "data 3",
                "S: 250",
                "S: 250",
                "S: 250",
                "S: 250",
                "verdict true",
                "C: BDAT 0 LAST",
                "data 0",
            ]
        );
    }

    #[test]
    fn garbage_replies_stop_all_reports() {
        let seen = run(&[
            (true, b"DATA\r\n"),
            (false, b"not smtp\r\n"),
            (true, b"Subject: secret\r\n"),
            (false, b"250 ok\r\n"),
        ]);
        assert_eq!(seen, ["C: DATA", "lost"]);
    }
}
