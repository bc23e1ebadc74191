//! The debug transcript of a connection: with the target `odmr::dialogue` at debug level
//! (`ODMR_LOG=debug`), every command and reply a connection carries is logged in its session's
//! span, as `C: …` (the SMTP client's side) and `S: …` (the server's side), on the provider and
//! on the customer alike, through the ODMR turnaround and STARTTLS.
//!
//! Invariant: no password and no message ever reaches the log. The [`DialogueObserver`] knows
//! where they are: an AUTH line shows only its mechanism and the lines after a `334` only `…`;
//! a message shows as its size. A dialogue it cannot follow stops the transcript rather than
//! risk logging a message as commands.

use odmr_proto::dialogue::{DialogueObserver, Event};

pub const TARGET: &str = "odmr::dialogue";

pub struct Transcript {
    observer: DialogueObserver,
    /// Whether our side of the connection is the SMTP client (it swaps at the turnaround).
    we_are_client: bool,
}

impl Transcript {
    /// `None` when nobody would read it, so that a connection pays nothing for it.
    pub fn new(we_are_client: bool) -> Option<Box<Transcript>> {
        tracing::enabled!(target: TARGET, tracing::Level::DEBUG).then(|| {
            Box::new(Transcript {
                observer: DialogueObserver::new(),
                we_are_client,
            })
        })
    }

    /// Bytes we read from the peer.
    pub fn received(&mut self, bytes: &[u8]) {
        self.saw(bytes, !self.we_are_client);
    }

    /// Bytes we wrote to the peer.
    pub fn sent(&mut self, bytes: &[u8]) {
        self.saw(bytes, self.we_are_client);
    }

    fn saw(&mut self, bytes: &[u8], from_client: bool) {
        let mut turned = false;
        let mut on = |e: Event<'_>| turned |= log(e);
        if from_client {
            self.observer.client(bytes, &mut on);
        } else {
            self.observer.server(bytes, &mut on);
        }
        if turned {
            self.we_are_client = !self.we_are_client;
        }
    }
}

/// Log one event; `true` at the ODMR turnaround.
pub fn log(e: Event<'_>) -> bool {
    match e {
        Event::Command(line) => tracing::debug!(target: TARGET, "C: {}", printable(line)),
        Event::Auth(line) => tracing::debug!(target: TARGET, "C: {} …", printable(line)),
        Event::AuthResponse => tracing::debug!(target: TARGET, "C: … (AUTH response not shown)"),
        Event::Data { octets } => tracing::debug!(target: TARGET, "C: … ({octets} octets of message data)"),
        Event::Reply(r) => {
            let mut text = Vec::new();
            r.write(&mut text, true);
            for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                tracing::debug!(target: TARGET, "S: {}", printable(line.strip_suffix(b"\r").unwrap_or(line)));
            }
        }
        Event::Verdict { .. } => {}
        Event::Turnaround => {
            tracing::debug!(target: TARGET, "ATRN granted: the roles swap (RFC 2645 turnaround)");
            return true;
        }
        Event::Lost => {
            tracing::debug!(target: TARGET, "(transcript stops: the dialogue could not be followed)")
        }
    }
    false
}

/// A line as text, with control characters and invalid UTF-8 escaped.
fn printable(line: &[u8]) -> String {
    String::from_utf8_lossy(line).escape_debug().to_string()
}
