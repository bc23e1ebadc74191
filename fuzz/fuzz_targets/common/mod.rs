//! Shared input layout and progress checks of the machine targets.
//!
//! A machine target's input is a 16-octet header followed by the peer's bytes:
//!
//! ```text
//! octet 0      flags: configuration bits, per target
//! octets 1..8  chunk tape: lengths of the reads the peer's bytes arrive in (0 = all the rest)
//! octets 8..16 decision tape: the driver's answers to decision steps, one octet per decision
//! octets 16..  the transcript: what the peer sends
//! ```
//!
//! Both tapes are read cyclically, so a short header still yields answers. An input shorter than
//! the header is zero-padded (one read, every decision answered with 0). The seed corpus under
//! `fuzz/corpus/` is written by `fuzz/make_corpus.py` in this layout.

#![allow(dead_code)]

use bytes::BytesMut;

pub const HEADER: usize = 16;

/// Most consecutive polls that neither consume input nor follow new input. A machine that
/// returns step after step without reading anything (and without the driver's answers changing
/// its state) is looping.
pub const MAX_IDLE_POLLS: usize = 64;

/// An octet tape read in a cycle; all zeros when empty.
pub struct Tape<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Tape<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Tape { bytes, pos: 0 }
    }

    pub fn next(&mut self) -> u8 {
        if self.bytes.is_empty() {
            return 0;
        }
        let b = self.bytes[self.pos % self.bytes.len()];
        self.pos += 1;
        b
    }
}

/// A decoded machine-target input.
pub struct Input<'a> {
    pub flags: u8,
    pub decisions: Tape<'a>,
    pub chunks: Chunks<'a>,
}

impl<'a> Input<'a> {
    pub fn parse(data: &'a [u8]) -> Self {
        let mut header = [0u8; HEADER];
        let n = data.len().min(HEADER);
        header[..n].copy_from_slice(&data[..n]);
        let flags = header[0];
        // The tapes borrow `data`; octets past its end are the implicit zeros of the padding.
        let tape = |range: std::ops::Range<usize>| {
            let end = range.end.min(data.len());
            let start = range.start.min(end);
            &data[start..end]
        };
        Input {
            flags,
            decisions: Tape::new(tape(8..16)),
            chunks: Chunks {
                tape: Tape::new(tape(1..8)),
                rest: &data[n..],
            },
        }
    }
}

/// The transcript, cut into reads by the chunk tape.
pub struct Chunks<'a> {
    tape: Tape<'a>,
    rest: &'a [u8],
}

impl<'a> Chunks<'a> {
    /// The next read, or `None` at end of stream.
    pub fn next_chunk(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        let want = match self.tape.next() {
            0 => self.rest.len(),
            b => usize::from(b),
        };
        let (chunk, rest) = self.rest.split_at(want.min(self.rest.len()));
        self.rest = rest;
        Some(chunk)
    }

    pub fn remaining(&self) -> &'a [u8] {
        self.rest
    }

    pub fn total_len(&self) -> usize {
        self.rest.len()
    }
}

/// Counts polls that made no progress.
#[derive(Default)]
pub struct Progress {
    idle: usize,
    pub polls: usize,
}

impl Progress {
    /// Record one poll: `before` and `after` are the input buffer's length around it.
    pub fn poll<S: std::fmt::Debug>(&mut self, before: usize, after: usize, step: &S) {
        self.polls += 1;
        assert!(after <= before, "poll grew the input buffer: {before} -> {after}");
        if after < before {
            self.idle = 0;
        } else {
            self.idle += 1;
            assert!(
                self.idle <= MAX_IDLE_POLLS,
                "no progress: {} polls in a row consumed nothing (last step {step:?})",
                self.idle
            );
        }
    }

    /// New input was appended to the buffer.
    pub fn fed(&mut self) {
        self.idle = 0;
    }
}

/// Appends the next read to `buf`; false at end of stream.
pub fn feed(chunks: &mut Chunks<'_>, buf: &mut BytesMut, progress: &mut Progress) -> bool {
    match chunks.next_chunk() {
        Some(c) => {
            buf.extend_from_slice(c);
            progress.fed();
            true
        }
        None => false,
    }
}

/// Output may grow with what the peer sent, never without bound: at most `PER_OCTET` octets per
/// octet consumed, plus a fixed allowance (greeting, error replies that echo a whole command
/// line up to the session's error limit, multi-line EHLO replies).
pub const PER_OCTET: usize = 32;
pub const ALLOWANCE: usize = 64 * 1024;

pub fn check_output_bound(out_total: usize, consumed_total: usize) {
    assert!(
        out_total <= PER_OCTET * consumed_total + ALLOWANCE,
        "output of {out_total} octets for {consumed_total} octets of input"
    );
}

/// Whether `ODMR_FUZZ_TRACE` is set: the machine targets then print every step to stderr
/// (for reading what a crashing or seed input does, with `cargo fuzz run TARGET FILE`).
pub fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("ODMR_FUZZ_TRACE").is_some())
}

/// Prints a step and the output it produced when tracing.
pub fn trace<S: std::fmt::Debug>(step: &S, out: &[u8]) {
    if tracing() {
        eprintln!("step {step:?}");
        if !out.is_empty() {
            eprintln!("  out {:?}", String::from_utf8_lossy(out));
        }
    }
}
