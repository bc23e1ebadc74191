//! CHUNKING (RFC 3030), with [`ServerConfig::chunking`]: `BDAT` parsing and the reading of
//! chunks, taken into the open message or refused and discarded.
//!
//! Invariants:
//! - **`BDAT n [LAST]` is followed by exactly `n` octets, and they are always read before the
//!   reply**, whether the chunk is taken or refused (RFC 3030 §2: a refused chunk is read and
//!   discarded). Chunk octets are never parsed as commands: that keeps the session in sync with
//!   a pipelining client, and is what stops smuggling through BDAT. A BDAT whose size cannot be
//!   parsed therefore closes the session (421, then [`ServerStep::Close`]): where its chunk
//!   ends is unknown, so nothing after it can be trusted to be a command.
//! - **A BDAT message is the same message as by DATA for the driver**: the first chunk brings
//!   [`ServerStep::StartData`] (no 354 is written), the octets leave as [`ServerStep::Body`]
//!   pieces of at most [`BODY_CHUNK`] after our `Received:` header, and `BDAT ... LAST` ends it
//!   with [`ServerStep::EndData`] — so the 250 for it, too, waits for
//!   [`SmtpServer::committed`]. The content is judged as DATA content (raw mode of
//!   [`crate::data`]: dots are content; bare CR/LF, NUL, loops and size get the same replies
//!   at LAST); a last line without CRLF gets one (see [`crate::data`] for why).
//! - **A chunk is answered on its own** (`250 2.0.0 <n> octets received`, after its octets
//!   were read); only the LAST chunk's reply means the message was accepted.
//! - **A refused chunk ends the transaction** (RFC 3030 §2: the client must consider it failed
//!   and send no more chunks): the driver is told ([`ServerStep::AbortData`] if a message was
//!   open, else [`ServerStep::Reset`]), and BDATs still in flight are read, discarded and
//!   answered `503` until RSET, EHLO/HELO or MAIL. A chunk that would take the message over
//!   the size limit is refused with `552` at that chunk, before a byte of it is stored: the
//!   client learns it early, and memory stays bounded.
//! - **DATA after BDAT in a transaction gets `503`** (RFC 3030 §2); RSET, EHLO/HELO or QUIT
//!   between chunks abandon the message ([`ServerStep::Reset`], or the driver finds
//!   [`SmtpServer::in_data`] true at the end of the session).

#[cfg(doc)]
use super::ServerConfig;
use super::{ServerStep, SmtpServer, State, BODY_CHUNK};
use crate::data::DataReceiver;
use crate::reply::Reply;
use bytes::{Buf, BytesMut};

/// A BDAT chunk being read: its declared size, the octets still to come, and whether it ends
/// the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Chunk {
    pub(super) size: u64,
    pub(super) remaining: u64,
    pub(super) last: bool,
}

/// Where the current transaction stands with BDAT (RFC 3030).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunking {
    /// No BDAT in this transaction: DATA is still possible.
    Idle,
    /// A message is open and takes chunks (`data` holds its raw-mode receiver).
    Open,
    /// A chunk was refused, which ended the transaction: BDATs already in flight are read,
    /// discarded and answered 503 until RSET, EHLO/HELO or MAIL start afresh.
    Failed,
}

/// Why the arguments of a BDAT command cannot be used (`chunk-size [SP "LAST"]`, RFC 3030 §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BdatSyntaxError {
    #[error("chunk size missing")]
    MissingSize,
    #[error("chunk size is not a decimal number of octets that fits 64 bits")]
    BadSize,
    #[error("only LAST may follow the chunk size")]
    BadEndMarker,
}

/// Parses the arguments of BDAT: the chunk size, and whether `LAST` (any case) follows.
pub fn parse_bdat(args: &[u8]) -> Result<(u64, bool), BdatSyntaxError> {
    let mut words = args.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let size = words.next().ok_or(BdatSyntaxError::MissingSize)?;
    // `1*DIGIT`: no sign, no spaces, which `u64::from_str` alone would not all refuse.
    if !size.iter().all(u8::is_ascii_digit) {
        return Err(BdatSyntaxError::BadSize);
    }
    let size = std::str::from_utf8(size)
        .ok()
        .and_then(|d| d.parse::<u64>().ok())
        .ok_or(BdatSyntaxError::BadSize)?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case(b"LAST") => true,
        Some(_) => return Err(BdatSyntaxError::BadEndMarker),
    };
    if words.next().is_some() {
        return Err(BdatSyntaxError::BadEndMarker);
    }
    Ok((size, last))
}

impl SmtpServer {
    /// `BDAT size [LAST]` (RFC 3030 §2), with CHUNKING offered.
    pub(super) fn bdat(&mut self, args: &[u8]) -> Option<ServerStep> {
        let (size, last) = match parse_bdat(args) {
            Ok(v) => v,
            Err(e) => {
                // Not knowing the size, we cannot skip the chunk; reading on would take its
                // octets for commands, and a message's content must never become commands (SMTP
                // smuggling). So the session ends here, with the one reply that may close it
                // (RFC 5321 §3.8: 421; "4.5.4", invalid command arguments).
                self.reply(Reply::new(
                    421,
                    "4.5.4",
                    format!("Syntax: BDAT chunk-size [LAST]: {e}; closing the session"),
                ));
                return Some(ServerStep::Close);
            }
        };
        // Every refusal below is given only after the chunk was read and dropped (RFC 3030 §2).
        if self.chunking == Chunking::Failed {
            let reply = Reply::new(503, "5.5.1", "A chunk of this transaction was refused; send RSET");
            self.state = State::Discard {
                remaining: size,
                reply,
            };
            return None;
        }
        if self.mail.is_none() {
            let reply = Reply::new(503, "5.5.1", "Need MAIL command first");
            self.state = State::Discard {
                remaining: size,
                reply,
            };
            return None;
        }
        let open = self.chunking == Chunking::Open;
        if !open && self.rcpts.is_empty() {
            return Some(self.refuse_chunk(size, Reply::new(554, "5.5.1", "No valid recipients")));
        }
        // In raw mode the receiver's size is exactly the chunk octets taken so far.
        let so_far = self.data.as_ref().map_or(0, DataReceiver::size);
        let max = self.cfg.max_message_size;
        if max > 0 && so_far.saturating_add(size) > max {
            return Some(self.refuse_chunk(size, self.too_big()));
        }
        let chunk = Chunk {
            size,
            remaining: size,
            last,
        };
        if open {
            self.state = State::Chunk(chunk);
            return None;
        }
        self.state = State::AwaitDataStart { chunk: Some(chunk) };
        Some(ServerStep::StartData(self.envelope()))
    }

    /// Refuses the BDAT chunk of `size` octets that comes next, which ends the transaction:
    /// the chunk is read and dropped, then `reply` is given. Returns the step that tells the
    /// driver.
    fn refuse_chunk(&mut self, size: u64, reply: Reply) -> ServerStep {
        let step = if self.chunking == Chunking::Open {
            ServerStep::AbortData
        } else {
            ServerStep::Reset
        };
        self.reset_tx();
        self.chunking = Chunking::Failed;
        self.state = State::Discard {
            remaining: size,
            reply,
        };
        step
    }

    /// Reads and drops the octets of a refused chunk, then queues its reply. `false` while
    /// octets of it are still to come.
    pub(super) fn discard_chunk(&mut self, input: &mut BytesMut) -> bool {
        let State::Discard { remaining, .. } = &mut self.state else {
            return true;
        };
        let n = (*remaining).min(input.len() as u64);
        input.advance(n as usize); // n <= input.len()
        *remaining -= n;
        if *remaining > 0 {
            return false;
        }
        if let State::Discard { reply, .. } = std::mem::replace(&mut self.state, State::Command) {
            // Not counted as an error: a pipelining client has every chunk of a refused message
            // on its way before it can know (a large message would otherwise end the session).
            self.esmtp.reply_uncounted(reply);
        }
        true
    }

    /// Reads the octets of chunk `c` into the open message. `None` once a non-last chunk is in
    /// and answered (commands follow); otherwise the step for the driver.
    pub(super) fn poll_chunk(&mut self, mut c: Chunk, input: &mut BytesMut) -> Option<ServerStep> {
        loop {
            if self.body.len() >= BODY_CHUNK {
                return Some(ServerStep::Body(std::mem::take(&mut self.body)));
            }
            let Some(rx) = self.data.as_mut() else {
                // Unreachable: a chunk is read only into an open message.
                self.state = State::Command;
                return None;
            };
            if c.remaining > 0 {
                if input.is_empty() {
                    return Some(if self.body.is_empty() {
                        ServerStep::NeedInput
                    } else {
                        ServerStep::Body(std::mem::take(&mut self.body))
                    });
                }
                // Never past the chunk (what follows is the next command), and never more than
                // fills the current Body piece.
                let room = BODY_CHUNK - self.body.len();
                let n = usize::try_from(c.remaining)
                    .unwrap_or(usize::MAX)
                    .min(input.len())
                    .min(room);
                let mut octets = input.split_to(n);
                rx.feed(&mut octets, &mut self.body);
                c.remaining -= n as u64;
                self.state = State::Chunk(c);
                continue;
            }
            if !c.last {
                self.state = State::Command;
                self.reply(Reply::new(250, "2.0.0", format!("{} octets received", c.size)));
                return None;
            }
            if !rx.is_done() {
                // Hand over what is buffered first, so the CRLF `finish` may add never takes a
                // Body piece over BODY_CHUNK.
                if !self.body.is_empty() {
                    return Some(ServerStep::Body(std::mem::take(&mut self.body)));
                }
                rx.finish(&mut self.body);
                continue;
            }
            if !self.body.is_empty() {
                return Some(ServerStep::Body(std::mem::take(&mut self.body)));
            }
            return Some(self.end_message());
        }
    }
}
