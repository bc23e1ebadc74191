//! Receiving side of SMTP `DATA` (after `354`): finds the end of the message, undoes
//! dot-stuffing and judges the content, strictly enough to defeat SMTP smuggling.
//!
//! Invariants, and why:
//!
//! * **Only `CRLF "." CRLF` ends the data** (its first CRLF belongs to the last line; a `"." CRLF`
//!   as the very first line ends an empty message) [RFC 5321 §4.1.1.4]. A line start is reached
//!   only through a real CRLF, so `LF "." CRLF`, `CRLF "." LF`, `LF "." LF`, `CR "." CR`, ... are
//!   never an end marker. If a sender and a receiver disagreed about where a message ends, the
//!   bytes after the sender's idea of the end would be read as new SMTP commands: that is SMTP
//!   smuggling (a second, forged message inside the first). Such sequences are consumed as content
//!   and recorded as [`DataError::BareLineEnd`], and scanning goes on to the real end marker, so one
//!   `DATA` is always exactly one message.
//! * **Bare CR or bare LF is an error, never normalized** (RFC 5321 §2.3.8, §4.1.1.4; we reject
//!   the message with `554 5.6.0` **[project]**). Normalizing would re-create the ambiguity for
//!   the next hop.
//! * **The end is found even after an error**: the receiver keeps consuming until the real end
//!   marker, so the session stays in sync and the caller can answer the message with one reply.
//! * **Bounded memory**: once the content exceeds `max_size`, or any error was recorded, nothing
//!   more is appended to `out` (the message will be rejected anyway, so what `out` then holds is
//!   unspecified); the receiver itself keeps a fixed-size state, so `out` never grows beyond
//!   `max_size` octets per message.
//! * **Chunking does not matter** (for everything but the discarded `out` of a failed message):
//!   every piece of state that straddles a `feed()` boundary (a CR
//!   waiting for its LF, a line-start dot waiting to be told apart from the end marker, the first
//!   octets of a header line) lives in this struct, not in the input buffer, and the result of
//!   feeding a byte stream is the same however it is split. Each octet is looked at a constant
//!   number of times (the scan uses `memchr`), so the cost is linear in the input.
//! * **Bytes after the end marker are left in the caller's buffer**: with PIPELINING the next
//!   command may arrive in the same read.
//! * **8-bit content is kept as is**; long lines are not rejected (the 1000-octet line limit of
//!   [RFC 5321 §4.5.3.1.6] binds senders; rejecting would only lose mail).
//! * **`Received:` fields are counted only in the header section** (up to the first empty line),
//!   as a loop detector [RFC 5321 §6.3]; a `Received:` text in a body is not a trace field.
//!
//! **Raw mode** ([`DataReceiver::chunked`]) judges the content of `BDAT` chunks [RFC 3030 §2]:
//! the octets arrive counted, so there is no dot-stuffing (a dot at a line start is content)
//! and no end marker. The caller feeds exactly the chunk's octets (everything fed is consumed)
//! and calls [`DataReceiver::finish`] after the `LAST` chunk. The same rules apply to the
//! content as with `DATA` (bare CR/LF and NUL refused, size and loop limits), so a message is
//! judged the same whichever way it came, and the chunking (into BDAT chunks or reads) still
//! never changes the result.
//!
//! * **Content that does not end in CRLF gets one** at `finish` (counted in the size and
//!   subject to the limit). Through `DATA` every stored message ends in CRLF (RFC 5321
//!   §4.1.1.4: the sender must add it), and what reads the queue or the customer's sinks
//!   expects lines: a relay re-sending with `DATA` would add it anyway ([`crate::dot`]), a
//!   Maildir file without a final line end is not a well-formed message, and a `BDAT` to the
//!   next hop should carry the same octets as a `DATA` would. Refusing such a message instead
//!   would lose mail over a missing line end that any DATA sender would have added silently;
//!   accepting it unchanged would make the stored message depend on how it was sent. Content
//!   that ends in a CR is different: that CR is bare (no LF can follow any more) and the
//!   message is refused like any other bare CR.

use bytes::{Buf, BytesMut};

/// Limits applied to one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataLimits {
    /// Largest accepted content size in octets (after unstuffing, CRLFs included).
    pub max_size: u64,
    /// Most `Received:` header fields accepted (e.g. 100); one more means a mail loop.
    pub max_received: usize,
}

/// Whether the end of the data has been reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataStatus {
    /// The end marker has not been seen yet: feed more input.
    NeedMore,
    /// `CRLF "." CRLF` was consumed; anything after it is still in the input buffer.
    Done,
}

/// Why a received message must be rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    /// The content is larger than [`DataLimits::max_size`] (reply `552`).
    #[error("message size exceeds the fixed maximum message size")]
    TooBig,
    /// A CR not followed by LF, or an LF not preceded by CR (reply `554 5.6.0`).
    #[error("bare CR or LF in message data")]
    BareLineEnd,
    /// A NUL octet in the content (reply `554 5.6.0`).
    #[error("NUL octet in message data")]
    Nul,
    /// More `Received:` header fields than [`DataLimits::max_received`]; carries the number seen
    /// in the header section (reply `554 5.4.6`, mail loop).
    #[error("too many Received: header fields ({0}), probable mail loop")]
    TooManyReceived(usize),
}

/// The field name counted for loop detection, compared case-insensitively.
const RECEIVED: &[u8; 9] = b"received:";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line (after a real CRLF, or at the start of the data).
    LineStart,
    /// A "." at a line start was consumed (never content: a stuffing dot or the end marker).
    Dot,
    /// "." CR at a line start was consumed; an LF now ends the data.
    DotCr,
    /// Inside a line.
    Mid,
    /// A CR inside a line was consumed (and counted as content); an LF now ends the line.
    Cr,
    /// The end marker was consumed (raw mode: `finish` was called).
    Done,
}

/// Receives one message's `DATA` content (or, [`DataReceiver::chunked`], its `BDAT` chunks);
/// create a new one per message.
#[derive(Debug, Clone)]
pub struct DataReceiver {
    limits: DataLimits,
    /// Raw mode (BDAT): no dot-stuffing, no end marker; [`DataReceiver::finish`] ends it.
    raw: bool,
    state: State,
    size: u64,
    eight_bit: bool,
    error: Option<DataError>,
    in_headers: bool,
    /// The first octets of the current header line (up to the length of `Received:`).
    hdr: [u8; 9],
    hdr_len: u8,
    received: usize,
}

impl DataReceiver {
    /// A receiver positioned right after the `354` reply.
    pub fn new(limits: DataLimits) -> Self {
        Self {
            limits,
            raw: false,
            state: State::LineStart,
            size: 0,
            eight_bit: false,
            error: None,
            in_headers: true,
            hdr: [0; 9],
            hdr_len: 0,
            received: 0,
        }
    }

    /// A receiver for the chunks of one `BDAT` message (raw mode, see the module docs): feed it
    /// exactly the octets of each chunk, then call [`DataReceiver::finish`] after `LAST`.
    pub fn chunked(limits: DataLimits) -> Self {
        Self {
            raw: true,
            ..Self::new(limits)
        }
    }

    /// The end of a raw-mode message (after the `BDAT ... LAST` chunk): content not ending in
    /// CRLF gets one appended to `out` (and counted), a trailing CR is recorded as bare. The
    /// verdict is final afterwards and further feeding consumes nothing. In `DATA` mode only
    /// the end marker ends the data (anything else would open the door to smuggling), so this
    /// does nothing there.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.raw || self.state == State::Done {
            return;
        }
        match self.state {
            // Empty content, or it ends with CRLF: complete as it is.
            State::LineStart => {}
            // The last octet is a CR no LF can follow any more.
            State::Cr => self.fail(DataError::BareLineEnd),
            // An unfinished last line: ended with the CRLF a DATA sender would have added.
            _ => {
                self.emit(b"\r\n", out);
                self.end_of_line();
            }
        }
        self.state = State::Done;
    }

    /// Consume as much of `input` as possible, appending the unstuffed content to `out`.
    ///
    /// Everything up to and including the end marker is consumed; bytes after it stay in `input`
    /// (pipelining). Once the limit is exceeded or an error was recorded nothing more is appended
    /// to `out`, but the scan for the end marker goes on; `out` then holds an unspecified prefix
    /// of the content (at most `max_size` octets) and is meant to be discarded. After `Done`,
    /// further calls consume nothing and return `Done`.
    ///
    /// In raw mode everything is consumed as content and `NeedMore` returned until
    /// [`DataReceiver::finish`].
    pub fn feed(&mut self, input: &mut BytesMut, out: &mut Vec<u8>) -> DataStatus {
        if self.state == State::Done {
            return DataStatus::Done;
        }
        let consumed = self.scan(input, out);
        input.advance(consumed);
        if self.state == State::Done {
            DataStatus::Done
        } else {
            DataStatus::NeedMore
        }
    }

    /// Content octets so far (after unstuffing, CRLFs included), counted even past the limit.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether an octet above 0x7F was seen.
    pub fn eight_bit(&self) -> bool {
        self.eight_bit
    }

    /// Whether the end marker has been consumed (raw mode: whether `finish` was called).
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The first problem seen, if any. Final once [`DataStatus::Done`] was returned (raw mode:
    /// once [`DataReceiver::finish`] was called).
    pub fn verdict(&self) -> Result<(), DataError> {
        match self.error {
            None => Ok(()),
            Some(DataError::TooManyReceived(_)) => Err(DataError::TooManyReceived(self.received)),
            Some(e) => Err(e),
        }
    }

    /// Runs the state machine over `buf`; returns the number of octets consumed (all of them,
    /// unless the end marker was found).
    fn scan(&mut self, buf: &[u8], out: &mut Vec<u8>) -> usize {
        // `buf[span..i]` is content not yet handed to `emit`: content is contiguous in the input
        // except for line-start dots and the end marker, so it is copied in long runs.
        let mut i = 0;
        let mut span = 0;
        loop {
            match self.state {
                State::LineStart => {
                    let Some(&b) = buf.get(i) else { break };
                    if b == b'.' && !self.raw {
                        self.emit(&buf[span..i], out);
                        i += 1;
                        span = i;
                        self.state = State::Dot;
                    } else {
                        self.state = State::Mid;
                    }
                }
                State::Dot => {
                    let Some(&b) = buf.get(i) else { break };
                    if b == b'\r' {
                        // Not content yet: it belongs to the end marker if an LF follows.
                        i += 1;
                        span = i;
                        self.state = State::DotCr;
                    } else {
                        // The dot was a stuffing dot (already dropped); the line goes on.
                        self.state = State::Mid;
                    }
                }
                State::DotCr => {
                    let Some(&b) = buf.get(i) else { break };
                    if b == b'\n' {
                        self.state = State::Done;
                        return i + 1;
                    }
                    // "." CR without LF: the CR is a bare CR and therefore content, but the
                    // error stops all appending, so it only needs counting (`span == i` here).
                    self.account(1);
                    self.fail(DataError::BareLineEnd);
                    self.state = State::Mid;
                }
                State::Mid => {
                    let found = memchr::memchr3(b'\r', b'\n', 0, &buf[i..]);
                    let end = found.map_or(buf.len(), |off| i + off);
                    if let Some(k) = self.line_content(&buf[i..end]) {
                        let e = DataError::TooManyReceived(self.received);
                        self.fail_at(e, buf, &mut span, i + k, out);
                    }
                    i = end;
                    let Some(&b) = buf.get(i) else { break };
                    i += 1;
                    match b {
                        b'\r' => self.state = State::Cr,
                        b'\n' => self.fail_at(DataError::BareLineEnd, buf, &mut span, i, out),
                        _ => self.fail_at(DataError::Nul, buf, &mut span, i, out),
                    }
                }
                State::Cr => {
                    let Some(&b) = buf.get(i) else { break };
                    if b == b'\n' {
                        i += 1;
                        self.end_of_line();
                        self.state = State::LineStart;
                    } else {
                        // The CR before `buf[i]` was bare.
                        self.fail_at(DataError::BareLineEnd, buf, &mut span, i, out);
                        self.state = State::Mid;
                    }
                }
                State::Done => return i,
            }
        }
        self.emit(&buf[span..], out);
        buf.len()
    }

    /// Counts `n` content octets; whether they may still be appended.
    fn account(&mut self, n: usize) -> bool {
        self.size = self.size.saturating_add(n as u64);
        if self.error.is_some() {
            return false;
        }
        if self.size > self.limits.max_size {
            self.fail(DataError::TooBig);
            return false;
        }
        true
    }

    /// Accounts for a run of content and appends it while within limits and error-free.
    fn emit(&mut self, seg: &[u8], out: &mut Vec<u8>) {
        if !seg.is_empty() && self.account(seg.len()) {
            out.extend_from_slice(seg);
        }
    }

    /// Records `e`, caused by the octet just before `buf[end]`. The content up to there is
    /// accounted first, so that of two problems the one earlier in the stream is reported,
    /// however the stream was chunked (a size overrun is otherwise only noticed at a flush).
    fn fail_at(&mut self, e: DataError, buf: &[u8], span: &mut usize, end: usize, out: &mut Vec<u8>) {
        self.emit(&buf[*span..end], out);
        *span = end;
        self.fail(e);
    }

    /// Inspects a run of line content without CR, LF and NUL. Returns the offset just after
    /// the octet that completed one `Received:` field too many.
    fn line_content(&mut self, seg: &[u8]) -> Option<usize> {
        if seg.is_empty() {
            return None;
        }
        if !self.eight_bit && !seg.is_ascii() {
            self.eight_bit = true;
        }
        let have = usize::from(self.hdr_len);
        if self.in_headers && have < RECEIVED.len() {
            let take = (RECEIVED.len() - have).min(seg.len());
            self.hdr[have..have + take].copy_from_slice(&seg[..take]);
            self.hdr_len += take as u8; // take <= 9
            if usize::from(self.hdr_len) == RECEIVED.len() && self.hdr.eq_ignore_ascii_case(RECEIVED) {
                self.received += 1;
                if self.received > self.limits.max_received {
                    return Some(take);
                }
            }
        }
        None
    }

    /// A CRLF ended a line: an empty line ends the header section.
    fn end_of_line(&mut self) {
        if self.in_headers {
            if self.hdr_len == 0 {
                self.in_headers = false;
            }
            self.hdr_len = 0;
        }
    }

    fn fail(&mut self, e: DataError) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BIG: DataLimits = DataLimits {
        max_size: u64::MAX,
        max_received: 100,
    };

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Outcome {
        done: bool,
        out: Vec<u8>,
        /// Input left over (unconsumed buffer plus chunks never fed).
        rest: Vec<u8>,
        verdict: Result<(), DataError>,
        size: u64,
        eight_bit: bool,
    }

    /// Feeds `input` split at `cuts` (sorted offsets), as a driver appending reads to one buffer.
    fn run_cuts(input: &[u8], cuts: &[usize], limits: DataLimits) -> Outcome {
        let mut rx = DataReceiver::new(limits);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut prev = 0;
        let mut done = false;
        let ends = cuts.iter().copied().chain(std::iter::once(input.len()));
        for end in ends {
            let end = end.clamp(prev, input.len());
            buf.extend_from_slice(&input[prev..end]);
            prev = end;
            if rx.feed(&mut buf, &mut out) == DataStatus::Done {
                done = true;
                break;
            }
        }
        assert_eq!(done, rx.is_done());
        // Feeding again after Done must change nothing.
        if done {
            let before = buf.clone();
            assert_eq!(rx.feed(&mut buf, &mut out), DataStatus::Done);
            assert_eq!(buf, before);
        }
        let mut rest = buf.to_vec();
        rest.extend_from_slice(&input[prev..]);
        // After an error `out` is only promised to be bounded (what was appended before the
        // error was noticed depends on the chunking); the caller discards it.
        assert!(out.len() as u64 <= limits.max_size);
        if rx.verdict().is_err() {
            out.clear();
        }
        Outcome {
            done,
            out,
            rest,
            verdict: rx.verdict(),
            size: rx.size(),
            eight_bit: rx.eight_bit(),
        }
    }

    /// Runs `input` all at once, byte by byte and split at every single point; all must agree.
    fn run(input: &[u8], limits: DataLimits) -> Outcome {
        let whole = run_cuts(input, &[], limits);
        let bytewise: Vec<usize> = (1..input.len()).collect();
        assert_eq!(run_cuts(input, &bytewise, limits), whole, "byte by byte");
        for cut in 0..=input.len() {
            assert_eq!(run_cuts(input, &[cut], limits), whole, "split at {cut}");
        }
        whole
    }

    /// Raw mode (BDAT): feeds `input` split at `cuts` (each piece as one chunk's octets), then
    /// `finish`.
    fn run_raw_cuts(input: &[u8], cuts: &[usize], limits: DataLimits) -> Outcome {
        let mut rx = DataReceiver::chunked(limits);
        let mut out = Vec::new();
        let mut prev = 0;
        let ends = cuts.iter().copied().chain(std::iter::once(input.len()));
        for end in ends {
            let end = end.clamp(prev, input.len());
            let mut piece = BytesMut::from(&input[prev..end]);
            prev = end;
            assert_eq!(rx.feed(&mut piece, &mut out), DataStatus::NeedMore);
            assert!(piece.is_empty(), "raw mode consumes every octet");
            assert!(!rx.is_done());
        }
        rx.finish(&mut out);
        assert!(rx.is_done());
        // Finishing or feeding again changes nothing.
        let (size, verdict, len) = (rx.size(), rx.verdict(), out.len());
        rx.finish(&mut out);
        let mut more = BytesMut::from(&b"x\r\n"[..]);
        assert_eq!(rx.feed(&mut more, &mut out), DataStatus::Done);
        assert_eq!(more.len(), 3);
        assert_eq!((rx.size(), rx.verdict(), out.len()), (size, verdict, len));
        assert!(out.len() as u64 <= limits.max_size);
        if rx.verdict().is_err() {
            out.clear();
        }
        Outcome {
            done: true,
            out,
            rest: Vec::new(),
            verdict: rx.verdict(),
            size: rx.size(),
            eight_bit: rx.eight_bit(),
        }
    }

    /// Raw mode, whole, byte by byte and split at every single point; all must agree.
    fn run_raw(input: &[u8], limits: DataLimits) -> Outcome {
        let whole = run_raw_cuts(input, &[], limits);
        let bytewise: Vec<usize> = (1..input.len()).collect();
        assert_eq!(run_raw_cuts(input, &bytewise, limits), whole, "byte by byte");
        for cut in 0..=input.len() {
            assert_eq!(run_raw_cuts(input, &[cut], limits), whole, "split at {cut}");
        }
        whole
    }

    fn raw_ok(input: &[u8], content: &[u8]) {
        let o = run_raw(input, BIG);
        assert_eq!(o.verdict, Ok(()), "{input:?}");
        assert_eq!(o.out, content, "{input:?}");
        assert_eq!(o.size, content.len() as u64);
    }

    fn ok(input: &[u8], content: &[u8], rest: &[u8]) {
        let o = run(input, BIG);
        assert!(o.done, "not done: {input:?}");
        assert_eq!(o.verdict, Ok(()));
        assert_eq!(o.out, content);
        assert_eq!(o.size, content.len() as u64);
        assert_eq!(o.rest, rest);
    }

    #[test]
    fn simple_message() {
        ok(
            b"Subject: hi\r\n\r\nbody\r\n.\r\n",
            b"Subject: hi\r\n\r\nbody\r\n",
            b"",
        );
    }

    #[test]
    fn empty_message() {
        ok(b".\r\n", b"", b"");
        ok(b".\r\nQUIT\r\n", b"", b"QUIT\r\n");
    }

    #[test]
    fn single_empty_line() {
        ok(b"\r\n.\r\n", b"\r\n", b"");
    }

    #[test]
    fn pipelined_bytes_stay() {
        ok(
            b"a\r\n.\r\nMAIL FROM:<x@y.org>\r\nRCPT TO:<z@y.org>\r\n",
            b"a\r\n",
            b"MAIL FROM:<x@y.org>\r\nRCPT TO:<z@y.org>\r\n",
        );
        // A second end marker right after is the next command's business.
        ok(b"a\r\n.\r\n.\r\n", b"a\r\n", b".\r\n");
    }

    #[test]
    fn dot_unstuffing() {
        ok(b"..\r\n.\r\n", b".\r\n", b"");
        ok(b"..foo\r\n.\r\n", b".foo\r\n", b"");
        ok(b"...\r\n.\r\n", b"..\r\n", b"");
        ok(b".x\r\n.\r\n", b"x\r\n", b"");
        ok(b"a\r\n..\r\nb\r\n.\r\n", b"a\r\n.\r\nb\r\n", b"");
        ok(b"a.b\r\n.c\r\n.\r\n", b"a.b\r\nc\r\n", b"");
        ok(b"..\r\n..\r\n.\r\n", b".\r\n.\r\n", b"");
        // A dot not at a line start is content.
        ok(b"a.\r\n.\r\n", b"a.\r\n", b"");
    }

    #[test]
    fn dot_followed_by_space_is_not_the_end() {
        ok(b". \r\n.\r\n", b" \r\n", b"");
    }

    #[test]
    fn long_lines_and_eight_bit_accepted() {
        let mut input = vec![b'x'; 20_000];
        input.extend_from_slice("\r\nGrüße\r\n.\r\n".as_bytes());
        let o = run_cuts(&input, &[], BIG);
        assert!(o.done);
        assert_eq!(o.verdict, Ok(()));
        assert!(o.eight_bit);
        assert_eq!(o.out, &input[..input.len() - 3]);
        let bytewise: Vec<usize> = (1..input.len()).collect();
        assert_eq!(run_cuts(&input, &bytewise, BIG), o);
    }

    #[test]
    fn seven_bit_stays_seven_bit() {
        let o = run(b"Subject: x\r\n\r\n~\x7f\r\n.\r\n", BIG);
        assert!(!o.eight_bit);
        assert_eq!(o.verdict, Ok(()));
        let o = run(b"\xff\r\n.\r\n", BIG);
        assert!(o.eight_bit);
        let o = run(b"..\x80\r\n.\r\n", BIG);
        assert!(o.eight_bit);
        assert_eq!(o.out, b".\x80\r\n");
    }

    /// The smuggling payloads: each must be swallowed as content with an error, the real end
    /// marker must end the one message, and what followed the fake end must not come out as
    /// commands.
    #[test]
    fn smuggling_payloads_never_end_the_data() {
        let fakes: &[&[u8]] = &[
            b"\n.\r\n",
            b"\r\n.\n",
            b"\n.\n",
            b"\r.\r",
            b"\r.\r\n",
            b"\r\n.\r",
            b"\n.\r",
            b"\r.\n",
            b"\r\n.\r\r\n",
            b"\r\n.\n\r\n",
            b"\r\n\x00.\r\n",
            b"\n\r\n.\n",
        ];
        for fake in fakes {
            let mut input = b"Subject: a\r\n\r\nbody".to_vec();
            input.extend_from_slice(fake);
            input.extend_from_slice(b"MAIL FROM:<evil@x.org>\r\nRCPT TO:<v@y.org>\r\nDATA\r\n");
            input.extend_from_slice(b"forged\r\n.\r\nQUIT\r\n");
            let o = run(&input, BIG);
            assert!(o.done, "{fake:?}");
            assert!(o.verdict.is_err(), "{fake:?}");
            assert_eq!(o.rest, b"QUIT\r\n", "{fake:?}");
        }
    }

    #[test]
    fn smuggling_at_the_very_start() {
        for fake in [&b".\n"[..], b".\r", b".\rX", b"\n.\r\n", b".\r.\r\n"] {
            let mut input = fake.to_vec();
            input.extend_from_slice(b"MAIL FROM:<e@x.org>\r\n.\r\nNOOP\r\n");
            let o = run(&input, BIG);
            assert!(o.done);
            assert_eq!(o.verdict, Err(DataError::BareLineEnd), "{fake:?}");
            assert_eq!(o.rest, b"NOOP\r\n", "{fake:?}");
        }
    }

    #[test]
    fn bare_lf_and_cr() {
        let o = run(b"a\nb\r\n.\r\n", BIG);
        assert_eq!(o.verdict, Err(DataError::BareLineEnd));
        assert!(o.done);
        assert_eq!(o.size, 5);
        let o = run(b"a\rb\r\n.\r\n", BIG);
        assert_eq!(o.verdict, Err(DataError::BareLineEnd));
        let o = run(b"a\r\r\n.\r\n", BIG);
        assert_eq!(o.verdict, Err(DataError::BareLineEnd));
        assert!(o.done);
        assert!(o.rest.is_empty());
        let o = run(b"a\n", BIG);
        assert!(!o.done);
        assert_eq!(o.verdict, Err(DataError::BareLineEnd));
    }

    #[test]
    fn size_counts_the_bare_cr_after_a_dot() {
        // ".\rX\r\n": the dot is a stuffing dot, the content is "\rX\r\n", 4 octets.
        let o = run(b".\rX\r\n.\r\n", BIG);
        assert_eq!(o.size, 4);
        assert_eq!(o.verdict, Err(DataError::BareLineEnd));
    }

    #[test]
    fn nul_is_rejected() {
        let o = run(b"a\x00b\r\n.\r\n", BIG);
        assert!(o.done);
        assert_eq!(o.verdict, Err(DataError::Nul));
        assert_eq!(o.size, 5);
        let o = run(b"\x00\r\n.\r\n", BIG);
        assert_eq!(o.verdict, Err(DataError::Nul));
    }

    #[test]
    fn first_error_wins() {
        let o = run(b"\x00\n\r\n.\r\n", BIG);
        assert_eq!(o.verdict, Err(DataError::Nul));
        let o = run(b"\n\x00\r\n.\r\n", BIG);
        assert_eq!(o.verdict, Err(DataError::BareLineEnd));
    }

    #[test]
    fn too_big_keeps_scanning_and_stops_appending() {
        let limits = DataLimits {
            max_size: 10,
            max_received: 100,
        };
        let input = b"0123456789\r\nmore and more\r\n..x\r\n.\r\nNOOP\r\n";
        let o = run(input, limits);
        assert!(o.done);
        assert_eq!(o.verdict, Err(DataError::TooBig));
        assert_eq!(o.size, 31);
        assert_eq!(o.rest, b"NOOP\r\n");
        // Exactly at the limit is fine.
        let o = run(b"01234567\r\n.\r\n", limits);
        assert_eq!(o.verdict, Ok(()));
        assert_eq!(o.out, b"01234567\r\n");
    }

    #[test]
    fn output_bounded_after_error() {
        let mut input = b"x\ny".to_vec();
        input.extend(std::iter::repeat_n(b'z', 100_000));
        input.extend_from_slice(b"\r\n.\r\n");
        for cuts in [&[][..], &[1, 2, 3, 50_000]] {
            let mut rx = DataReceiver::new(BIG);
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            let mut prev = 0;
            for &c in cuts.iter().chain(std::iter::once(&input.len())) {
                buf.extend_from_slice(&input[prev..c]);
                prev = c;
                rx.feed(&mut buf, &mut out);
            }
            assert!(rx.is_done());
            assert!(out.len() <= 3, "{cuts:?}: {}", out.len());
            assert_eq!(rx.size(), input.len() as u64 - 3);
        }
    }

    fn received_msg(n: usize, name: &str) -> Vec<u8> {
        let mut m = Vec::new();
        for i in 0..n {
            m.extend_from_slice(format!("{name} from h{i}.example by mx.example\r\n").as_bytes());
        }
        m.extend_from_slice(b"Subject: x\r\n\r\n");
        m
    }

    #[test]
    fn received_limit() {
        let limits = DataLimits {
            max_size: u64::MAX,
            max_received: 3,
        };
        for (n, name, verdict) in [
            (3, "Received:", Ok(())),
            (4, "Received:", Err(DataError::TooManyReceived(4))),
            (4, "RECEIVED:", Err(DataError::TooManyReceived(4))),
            (4, "received:", Err(DataError::TooManyReceived(4))),
            (6, "Received:", Err(DataError::TooManyReceived(6))),
            (4, "Received-SPF:", Ok(())),
            (4, "X-Received:", Ok(())),
            (4, "Received :", Ok(())),
            // A leading dot is a stuffing dot: the content line is "Received: ...".
            (4, ".Received:", Err(DataError::TooManyReceived(4))),
            // Stuffed content ".Received:" is not a Received: field.
            (4, "..Received:", Ok(())),
        ] {
            let mut input = received_msg(n, name);
            input.extend_from_slice(b".\r\n");
            let o = run(&input, limits);
            assert!(o.done);
            assert_eq!(o.verdict, verdict, "{n} {name}");
        }
    }

    #[test]
    fn received_only_in_headers() {
        let limits = DataLimits {
            max_size: u64::MAX,
            max_received: 1,
        };
        let mut input = received_msg(1, "Received:");
        for _ in 0..5 {
            input.extend_from_slice(b"Received: in the body\r\n");
        }
        input.extend_from_slice(b".\r\n");
        assert_eq!(run(&input, limits).verdict, Ok(()));
        // No header section at all: the first line is empty.
        let o = run(b"\r\nReceived: a\r\nReceived: b\r\nReceived: c\r\n.\r\n", limits);
        assert_eq!(o.verdict, Ok(()));
        // A short line is not an empty line.
        let o = run(
            b"X\r\nReceived: a\r\nReceived: b\r\n\r\nReceived: c\r\n.\r\n",
            limits,
        );
        assert_eq!(o.verdict, Err(DataError::TooManyReceived(2)));
    }

    #[test]
    fn received_limit_zero() {
        let limits = DataLimits {
            max_size: u64::MAX,
            max_received: 0,
        };
        assert_eq!(
            run(b"Received: x\r\n\r\n.\r\n", limits).verdict,
            Err(DataError::TooManyReceived(1))
        );
        assert_eq!(run(b"Subject: x\r\n\r\n.\r\n", limits).verdict, Ok(()));
    }

    #[test]
    fn feeding_nothing() {
        let mut rx = DataReceiver::new(BIG);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        assert_eq!(rx.feed(&mut buf, &mut out), DataStatus::NeedMore);
        assert_eq!(rx.size(), 0);
        assert_eq!(rx.verdict(), Ok(()));
        assert!(!rx.is_done());
    }

    #[test]
    fn unfinished_data_is_consumed_entirely() {
        for input in [&b"abc\r\n."[..], b"abc\r\n.\r", b"abc\r", b"abc\r\n", b"."] {
            let o = run(input, BIG);
            assert!(!o.done);
            assert!(o.rest.is_empty());
        }
    }

    #[test]
    fn many_messages_in_a_row() {
        // The same buffer carrying several DATA bodies, as a pipelining client sends them.
        let mut buf = BytesMut::from(&b"one\r\n.\r\n..two\r\n.\r\n.\r\nthree\r\n.\r\n"[..]);
        let mut got = Vec::new();
        while !buf.is_empty() {
            let mut rx = DataReceiver::new(BIG);
            let mut out = Vec::new();
            assert_eq!(rx.feed(&mut buf, &mut out), DataStatus::Done);
            got.push(out);
        }
        assert_eq!(
            got,
            vec![
                b"one\r\n".to_vec(),
                b".two\r\n".to_vec(),
                vec![],
                b"three\r\n".to_vec()
            ]
        );
    }

    #[test]
    fn large_input_in_small_pieces_is_linear() {
        // 4 MiB fed 7 octets at a time: quadratic behaviour would take minutes.
        let line = b"The quick brown fox jumps over the lazy dog. 0123456789\r\n";
        let mut input = Vec::new();
        while input.len() < 4 << 20 {
            input.extend_from_slice(line);
        }
        input.extend_from_slice(b".\r\n");
        let mut rx = DataReceiver::new(BIG);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut status = DataStatus::NeedMore;
        for chunk in input.chunks(7) {
            buf.extend_from_slice(chunk);
            status = rx.feed(&mut buf, &mut out);
        }
        assert_eq!(status, DataStatus::Done);
        assert_eq!(out, &input[..input.len() - 3]);
    }

    #[test]
    fn raw_dots_are_content_and_nothing_ends_the_data() {
        raw_ok(b".\r\n", b".\r\n");
        raw_ok(b"a\r\n.\r\nb\r\n", b"a\r\n.\r\nb\r\n");
        raw_ok(b"..x\r\n.\r\n.\r\n", b"..x\r\n.\r\n.\r\n");
        raw_ok(
            b"Subject: a\r\n\r\n.\r\nMAIL FROM:<e@x.org>\r\n",
            b"Subject: a\r\n\r\n.\r\nMAIL FROM:<e@x.org>\r\n",
        );
    }

    #[test]
    fn raw_empty_and_crlf_terminated_content_is_kept_as_is() {
        raw_ok(b"", b"");
        raw_ok(b"\r\n", b"\r\n");
        raw_ok(b"Subject: x\r\n\r\nbody\r\n", b"Subject: x\r\n\r\nbody\r\n");
    }

    #[test]
    fn raw_unterminated_last_line_gets_a_crlf() {
        raw_ok(b"a", b"a\r\n");
        raw_ok(
            b"Subject: x\r\n\r\nno line end",
            b"Subject: x\r\n\r\nno line end\r\n",
        );
        raw_ok(b".", b".\r\n");
        // The added CRLF counts towards the limit.
        let limits = DataLimits {
            max_size: 3,
            max_received: 100,
        };
        assert_eq!(run_raw(b"a\r\n", limits).verdict, Ok(()));
        let o = run_raw(b"abc", limits);
        assert_eq!(o.verdict, Err(DataError::TooBig));
        assert_eq!(o.size, 5);
    }

    #[test]
    fn raw_bare_line_ends_and_nul_are_refused() {
        for (input, e) in [
            (&b"a\nb\r\n"[..], DataError::BareLineEnd),
            (b"a\rb\r\n", DataError::BareLineEnd),
            (b"a\r", DataError::BareLineEnd),
            (b"a\n", DataError::BareLineEnd),
            (b"\r", DataError::BareLineEnd),
            (b"a\r\n\n.\r\n", DataError::BareLineEnd),
            (b"a\x00\r\n", DataError::Nul),
            (b"\x00", DataError::Nul),
        ] {
            assert_eq!(run_raw(input, BIG).verdict, Err(e), "{input:?}");
        }
        // A trailing CR is counted as content, and no CRLF is added after it.
        assert_eq!(run_raw(b"ab\r", BIG).size, 3);
    }

    #[test]
    fn raw_received_limit_counts_what_is_there() {
        let limits = DataLimits {
            max_size: u64::MAX,
            max_received: 3,
        };
        let input = received_msg(4, "Received:");
        assert_eq!(
            run_raw(&input, limits).verdict,
            Err(DataError::TooManyReceived(4))
        );
        // No stuffing in raw mode: ".Received:" is not a Received: field.
        let input = received_msg(4, ".Received:");
        assert_eq!(run_raw(&input, limits).verdict, Ok(()));
        // The last header line, without a line end, still counts.
        let mut input = received_msg(3, "Received:");
        input.truncate(input.len() - b"Subject: x\r\n\r\n".len());
        input.extend_from_slice(b"Received: x");
        assert_eq!(
            run_raw(&input, limits).verdict,
            Err(DataError::TooManyReceived(4))
        );
    }

    #[test]
    fn finish_does_nothing_in_data_mode() {
        let mut rx = DataReceiver::new(BIG);
        let mut out = Vec::new();
        let mut buf = BytesMut::from(&b"abc"[..]);
        rx.feed(&mut buf, &mut out);
        rx.finish(&mut out);
        assert!(!rx.is_done());
        buf.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(rx.feed(&mut buf, &mut out), DataStatus::Done);
        assert_eq!(out, b"abc\r\n");
    }

    fn cuts_for(len: usize, raw: Vec<usize>) -> Vec<usize> {
        let mut cuts: Vec<usize> = raw.into_iter().map(|c| c % (len + 1)).collect();
        cuts.sort_unstable();
        cuts
    }

    fn smtp_bytes() -> impl Strategy<Value = Vec<u8>> {
        // Weighted towards the octets that matter to the state machine.
        let byte = prop_oneof![
            4 => Just(b'\r'),
            4 => Just(b'\n'),
            4 => Just(b'.'),
            1 => Just(0u8),
            2 => Just(b'R'),
            2 => any::<u8>(),
        ];
        proptest::collection::vec(byte, 0..200)
    }

    /// A deliberately naive model of the rules: the data ends at the first `CRLF "." CRLF`
    /// (or a leading `"." CRLF`); lines are what CRLF separates; a leading dot is dropped.
    /// Returns (consumed length, content, acceptable with these limits).
    fn model(input: &[u8], limits: DataLimits) -> Option<(usize, Vec<u8>, bool)> {
        let (body_len, consumed) = if input.starts_with(b".\r\n") {
            (0, 3)
        } else {
            let p = input.windows(5).position(|w| w == b"\r\n.\r\n")?;
            (p + 2, p + 5)
        };
        let body = &input[..body_len];
        let mut content = Vec::new();
        let mut lines: Vec<&[u8]> = Vec::new();
        let mut rest = body;
        while let Some(p) = rest.windows(2).position(|w| w == b"\r\n") {
            lines.push(&rest[..p]);
            rest = &rest[p + 2..];
        }
        // `body` ends with CRLF (or is empty), so `rest` is empty now.
        let mut clean = true;
        let mut in_headers = true;
        let mut received = 0;
        for line in lines {
            let line = line.strip_prefix(b".").unwrap_or(line);
            clean &= !line.iter().any(|b| matches!(b, b'\r' | b'\n' | 0));
            if in_headers {
                in_headers = !line.is_empty();
                received += usize::from(line.len() >= 9 && line[..9].eq_ignore_ascii_case(b"received:"));
            }
            content.extend_from_slice(line);
            content.extend_from_slice(b"\r\n");
        }
        let ok = clean && content.len() as u64 <= limits.max_size && received <= limits.max_received;
        Some((consumed, content, ok))
    }

    /// The naive model of raw mode: the content is the input, plus CRLF if it is not empty and
    /// ends neither in CRLF nor in CR (a trailing CR is bare); lines are what CRLF separates.
    /// Returns (content, acceptable with these limits).
    fn model_raw(input: &[u8], limits: DataLimits) -> (Vec<u8>, bool) {
        let mut content = input.to_vec();
        if !content.is_empty() && !content.ends_with(b"\r\n") && !content.ends_with(b"\r") {
            content.extend_from_slice(b"\r\n");
        }
        let mut clean = !content.contains(&0);
        for (p, &b) in content.iter().enumerate() {
            match b {
                b'\r' => clean &= content.get(p + 1) == Some(&b'\n'),
                b'\n' => clean &= p > 0 && content[p - 1] == b'\r',
                _ => {}
            }
        }
        let mut received = 0;
        let mut rest = &content[..];
        while let Some(p) = rest.windows(2).position(|w| w == b"\r\n") {
            let line = &rest[..p];
            if line.is_empty() {
                break;
            }
            received += usize::from(line.len() >= 9 && line[..9].eq_ignore_ascii_case(b"received:"));
            rest = &rest[p + 2..];
        }
        let ok = clean && content.len() as u64 <= limits.max_size && received <= limits.max_received;
        (content, ok)
    }

    proptest! {
        /// Raw mode agrees with its naive model on the content, the size and the verdict.
        #[test]
        fn raw_agrees_with_the_model(
            input in smtp_bytes(),
            raw_cuts in proptest::collection::vec(any::<usize>(), 0..12),
            max_size in 0u64..300,
            max_received in 0usize..3,
        ) {
            let limits = DataLimits { max_size, max_received };
            let got = run_raw_cuts(&input, &cuts_for(input.len(), raw_cuts), limits);
            let (content, ok) = model_raw(&input, limits);
            prop_assert_eq!(got.size, content.len() as u64);
            prop_assert_eq!(got.eight_bit, input.iter().any(|&b| b > 0x7f));
            prop_assert_eq!(got.verdict.is_ok(), ok, "{:?}", got.verdict);
            if ok {
                prop_assert_eq!(got.out, content);
            }
        }

        /// In raw mode too, however the octets are split (into BDAT chunks, or reads), the
        /// result is the same.
        #[test]
        fn raw_chunking_never_changes_the_result(
            input in smtp_bytes(),
            raw_cuts in proptest::collection::vec(any::<usize>(), 0..12),
            max_size in 0u64..300,
            max_received in 0usize..3,
        ) {
            let limits = DataLimits { max_size, max_received };
            let whole = run_raw_cuts(&input, &[], limits);
            let cuts = cuts_for(input.len(), raw_cuts);
            prop_assert_eq!(run_raw_cuts(&input, &cuts, limits), whole.clone());
            prop_assert!(whole.out.len() as u64 <= max_size);
            if whole.verdict.is_ok() {
                prop_assert_eq!(whole.size, whole.out.len() as u64);
            }
        }

        /// The state machine agrees with the naive model on where the data ends, on the
        /// content and size, and on whether the message is acceptable.
        #[test]
        fn agrees_with_the_model(
            input in smtp_bytes(),
            raw_cuts in proptest::collection::vec(any::<usize>(), 0..12),
            max_size in 0u64..300,
            max_received in 0usize..3,
        ) {
            let limits = DataLimits { max_size, max_received };
            let cuts = cuts_for(input.len(), raw_cuts);
            let got = run_cuts(&input, &cuts, limits);
            match model(&input, limits) {
                None => prop_assert!(!got.done),
                Some((consumed, content, ok)) => {
                    prop_assert!(got.done);
                    prop_assert_eq!(got.rest.len(), input.len() - consumed);
                    prop_assert_eq!(got.size, content.len() as u64);
                    prop_assert_eq!(got.eight_bit, input[..consumed].iter().any(|&b| b > 0x7f));
                    prop_assert_eq!(got.verdict.is_ok(), ok, "{:?}", got.verdict);
                    if ok {
                        prop_assert_eq!(got.out, content);
                    }
                }
            }
        }

        /// Whatever the bytes and however they are split, the receiver never panics and comes
        /// to the same result.
        #[test]
        fn chunking_never_changes_the_result(
            input in smtp_bytes(),
            raw_cuts in proptest::collection::vec(any::<usize>(), 0..12),
            max_size in 0u64..300,
            max_received in 0usize..3,
        ) {
            let limits = DataLimits { max_size, max_received };
            let whole = run_cuts(&input, &[], limits);
            let cuts = cuts_for(input.len(), raw_cuts);
            prop_assert_eq!(run_cuts(&input, &cuts, limits), whole.clone());
            prop_assert!(whole.out.len() as u64 <= max_size);
            if whole.done {
                // The consumed part ends with the real end marker, preceded by a line start.
                let consumed = &input[..input.len() - whole.rest.len()];
                prop_assert!(consumed == b".\r\n" || consumed.ends_with(b"\r\n.\r\n"));
            } else {
                prop_assert!(whole.rest.is_empty());
            }
            if whole.verdict.is_ok() {
                prop_assert_eq!(whole.size, whole.out.len() as u64);
            }
        }
    }
}
