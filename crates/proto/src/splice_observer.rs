//! Watching a byte splice: the customer's splice sink copies bytes between the provider and a
//! local SMTP server without taking part in the dialogue, yet it must still report honestly
//! how many messages the local server accepted or refused (fetchmail cannot tell you).
//!
//! It follows the dialogue with a [`DialogueObserver`]: the reply to each message's final dot
//! (or `BDAT n LAST`) is the local server's verdict on it. It never changes a byte and keeps
//! memory bounded.

use crate::dialogue::{DialogueObserver, Event};

#[derive(Debug, Default)]
pub struct SpliceObserver {
    dialogue: DialogueObserver,
    pub delivered: u64,
    pub refused: u64,
}

impl SpliceObserver {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes the provider sent (towards the local server).
    pub fn provider(&mut self, bytes: &[u8]) {
        self.provider_seen(bytes, &mut |_| {});
    }

    /// Bytes the local server sent (towards the provider).
    pub fn local(&mut self, bytes: &[u8]) {
        self.local_seen(bytes, &mut |_| {});
    }

    /// [`Self::provider`], also passing on what was seen (for a debug transcript).
    pub fn provider_seen(&mut self, bytes: &[u8], on: &mut impl FnMut(Event<'_>)) {
        self.dialogue.client(bytes, on);
    }

    /// [`Self::local`], also passing on what was seen (for a debug transcript).
    pub fn local_seen(&mut self, bytes: &[u8], on: &mut impl FnMut(Event<'_>)) {
        let (delivered, refused) = (&mut self.delivered, &mut self.refused);
        self.dialogue.server(bytes, &mut |e| {
            if let Event::Verdict { accepted } = e {
                *if accepted { &mut *delivered } else { &mut *refused } += 1;
            }
            on(e);
        });
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
