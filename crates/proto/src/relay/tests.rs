//! Transcripts of the relay machine: what the provider's side does (events), what the local MTA
//! says (`S:`), and what the machine writes (`C:`), answers (`=`), gives as a verdict (`!`) or
//! does to the connection (`closed`).
//!
//! A transcript is run by feeding the `S:` lines to the machine only when it asks for input, a
//! group of consecutive `S:` lines per read, and writing down everything it does in the same
//! notation: the result must be the transcript itself. So an `S:` group stands exactly where the
//! machine reads it, and a `C:` line where it is written.

use super::*;

const NAME: &str = "relay.example";

/// How the local MTA's octets reach the machine.
#[derive(Debug, Clone, Copy)]
enum Feed {
    /// One `S:` group per read, as the transcript has them.
    Groups,
    /// The whole stream in reads of this many octets.
    Octets(usize),
    /// The whole stream in two reads, cut at this octet.
    Cut(usize),
}

#[derive(Debug)]
enum Item {
    /// An `S:` group (`None`: the local MTA closes the connection).
    Peer(Option<Vec<u8>>),
    Event(String),
}

fn items(script: &str) -> (Vec<Item>, Vec<String>) {
    let mut items = Vec::new();
    let mut expected = Vec::new();
    let mut group: Option<Vec<u8>> = None;
    for l in script.lines().map(str::trim) {
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        expected.push(l.to_string());
        if let Some(s) = l.strip_prefix("S:") {
            if s.trim() == "<eof>" {
                if let Some(g) = group.take() {
                    items.push(Item::Peer(Some(g)));
                }
                items.push(Item::Peer(None));
                continue;
            }
            let g = group.get_or_insert_with(Vec::new);
            g.extend_from_slice(s.strip_prefix(' ').unwrap_or(s).as_bytes());
            g.extend_from_slice(b"\r\n");
            continue;
        }
        if let Some(g) = group.take() {
            items.push(Item::Peer(Some(g)));
        }
        let is_step = ["C:", "=", "!", "closed", "failed", "(waiting)"]
            .iter()
            .any(|p| l.starts_with(p));
        if !is_step {
            items.push(Item::Event(l.to_string()));
        }
    }
    if let Some(g) = group.take() {
        items.push(Item::Peer(Some(g)));
    }
    (items, expected)
}

struct Run {
    m: Relay,
    input: BytesMut,
    /// The `S:` groups still to come (`None`: end of stream).
    peer: VecDeque<Option<Vec<u8>>>,
    feed: Feed,
    /// With `Feed::Octets`/`Cut`: the whole stream, and how much of it was fed.
    stream: Vec<u8>,
    fed: usize,
    eof: bool,
    log: Vec<String>,
}

impl Run {
    fn new(lmtp: bool, items: &[Item], feed: Feed) -> Self {
        let peer: VecDeque<_> = items
            .iter()
            .filter_map(|i| match i {
                Item::Peer(g) => Some(g.clone()),
                Item::Event(_) => None,
            })
            .collect();
        let stream = peer.iter().flatten().flatten().copied().collect();
        let eof = peer.back().is_some_and(Option::is_none);
        Run {
            m: Relay::new(lmtp, NAME),
            input: BytesMut::new(),
            peer,
            feed,
            stream,
            fed: 0,
            eof,
            log: Vec::new(),
        }
    }

    /// The next read; false if there is none.
    fn read(&mut self) -> bool {
        let n = match self.feed {
            Feed::Groups => {
                return match self.peer.pop_front() {
                    Some(Some(g)) => {
                        let text = String::from_utf8_lossy(&g).into_owned();
                        for l in text.split_terminator("\r\n") {
                            self.log.push(format!("S: {l}").trim_end().to_string());
                        }
                        self.input.extend_from_slice(&g);
                        true
                    }
                    Some(None) => {
                        self.log.push("S: <eof>".into());
                        self.m.closed_by_peer();
                        true
                    }
                    None => false,
                };
            }
            Feed::Octets(n) => n,
            Feed::Cut(at) if self.fed < at => at - self.fed,
            Feed::Cut(_) => self.stream.len(),
        };
        if self.fed == self.stream.len() {
            if std::mem::take(&mut self.eof) {
                self.m.closed_by_peer();
                return true;
            }
            return false;
        }
        let end = (self.fed + n.max(1)).min(self.stream.len());
        self.input.extend_from_slice(&self.stream[self.fed..end]);
        self.fed = end;
        true
    }

    /// Polls until the machine waits for the next event.
    fn pump(&mut self) {
        loop {
            match self.m.poll(&mut self.input) {
                RelayStep::Write => {
                    let out = std::mem::take(self.m.output());
                    assert!(!out.is_empty(), "Write with nothing to write");
                    let text = String::from_utf8_lossy(&out).into_owned();
                    assert!(text.ends_with("\r\n"), "a write ends inside a line: {text:?}");
                    for l in text.split_terminator("\r\n") {
                        self.log.push(format!("C: {l}").trim_end().to_string());
                    }
                }
                RelayStep::NeedInput => {
                    if !self.read() {
                        self.log.push("(waiting)".into());
                        return;
                    }
                }
                RelayStep::Answer(Ok(())) => self.log.push("= ok".into()),
                RelayStep::Answer(Err(r)) => self.log.push(format!("= {r}")),
                RelayStep::Verdict(r) => self.log.push(format!("! {r}")),
                RelayStep::Close => {
                    assert!(self.m.output().is_empty());
                    self.log.push("closed".into());
                }
                RelayStep::Idle => return,
                RelayStep::Failed(why) => {
                    self.log.push(format!("failed {why}"));
                    return;
                }
            }
        }
    }

    fn event(&mut self, e: &str) {
        self.log.push(e.to_string());
        let (verb, arg) = e.split_once(' ').unwrap_or((e, ""));
        match verb {
            "mail" => {
                let (from, params) = arg.split_once(' ').unwrap_or((arg, ""));
                self.m.mail(from, params);
            }
            "rcpt" => self.m.rcpt(arg),
            "expect-data" => self.m.expect_data(),
            "data" => self.m.data(),
            "body" => {
                self.m.body(arg.as_bytes());
                self.m.body(b"\r\n");
            }
            "end" => self.m.end(),
            "settle" => self.m.settle(),
            "reset" => self.m.reset(),
            "close" => self.m.close(),
            _ => panic!("unknown event {e:?}"),
        }
        self.pump();
    }
}

fn run(lmtp: bool, script: &str, feed: Feed) -> (Vec<String>, Vec<String>) {
    let (items, expected) = items(script);
    let mut r = Run::new(lmtp, &items, feed);
    r.pump();
    for i in &items {
        if let Item::Event(e) = i {
            r.event(e);
        }
    }
    (r.log, expected)
}

/// Runs the transcript and checks that the machine does exactly what it says; then again with
/// the local MTA's octets arriving in every other way (one at a time, three at a time, cut in
/// two anywhere), which must change nothing but where the reads happen.
fn check(lmtp: bool, script: &str) {
    let (log, expected) = run(lmtp, script, Feed::Groups);
    assert_eq!(log, expected, "\n got:\n{}\n", log.join("\n"));
    let steps = |log: Vec<String>| -> Vec<String> {
        log.into_iter()
            .filter(|l| !l.starts_with("S:") && l != "(waiting)")
            .collect()
    };
    let want = steps(expected);
    let total: usize = items(script)
        .0
        .iter()
        .map(|i| match i {
            Item::Peer(Some(g)) => g.len(),
            _ => 0,
        })
        .sum();
    let feeds = [Feed::Octets(1), Feed::Octets(3)]
        .into_iter()
        .chain((0..=total).map(Feed::Cut));
    for feed in feeds {
        let (log, _) = run(lmtp, script, feed);
        assert_eq!(steps(log), want, "fed as {feed:?}");
    }
}

const EHLO_PIPELINING: &str = "
    S: 220 mta.example ESMTP
    C: EHLO relay.example
    S: 250-mta.example
    S: 250-PIPELINING
    S: 250-8BITMIME
    S: 250 SIZE 1000
";

fn with_ehlo(ehlo: &str, rest: &str) -> String {
    format!("{ehlo}\n{rest}")
}

#[test]
fn pipelined_one_round_trip_per_message() {
    check(
        false,
        &with_ehlo(
            EHLO_PIPELINING,
            "
            # MAIL waits for the first RCPT.
            mail alice@a.example BODY=8BITMIME SMTPUTF8
            = ok
            rcpt bob@b.example
            C: MAIL FROM:<alice@a.example> BODY=8BITMIME
            C: RCPT TO:<bob@b.example>
            S: 250 2.1.0 ok
            S: 250 2.1.5 ok
            = ok
            # The provider's DATA is already read: DATA rides with the last RCPT.
            expect-data
            rcpt carol@b.example
            C: RCPT TO:<carol@b.example>
            C: DATA
            S: 250 2.1.5 ok
            S: 354 go ahead
            = ok
            data
            = ok
            body Subject: one
            body
            body .dot
            # The dot waits for the next transaction's commands; its verdict is read first.
            end
            mail alice@a.example
            = ok
            expect-data
            rcpt bob@b.example
            C: Subject: one
            C:
            C: ..dot
            C: .
            C: MAIL FROM:<alice@a.example>
            C: RCPT TO:<bob@b.example>
            C: DATA
            S: 250 2.0.0 queued as 1
            S: 250 ok
            S: 250 ok
            S: 354 go
            ! 250 2.0.0 queued as 1
            = ok
            data
            = ok
            body hi
            end
            # Nothing follows: the provider waits for the verdict.
            settle
            C: hi
            C: .
            S: 250 2.0.0 queued as 2
            ! 250 2.0.0 queued as 2
            close
            C: QUIT
            S: 221 bye
            ",
        ),
    );
}

#[test]
fn pipelined_data_waits_for_the_body_when_the_providers_is_not_read_yet() {
    check(
        false,
        &with_ehlo(
            EHLO_PIPELINING,
            "
            mail alice@a.example
            = ok
            rcpt bob@b.example
            C: MAIL FROM:<alice@a.example>
            C: RCPT TO:<bob@b.example>
            S: 250 ok
            S: 250 ok
            = ok
            # No early DATA: the go-ahead is given at once, DATA leaves before the body.
            data
            = ok
            body x
            end
            C: DATA
            S: 354 go
            settle
            C: x
            C: .
            S: 250 queued
            ! 250 queued
            ",
        ),
    );
}

#[test]
fn lockstep_local_mta_gets_one_command_at_a_time() {
    check(
        false,
        "
        S: 220 mta.example ESMTP
        C: EHLO relay.example
        S: 250-mta.example
        S: 250 8BITMIME
        mail alice@a.example BODY=8BITMIME SMTPUTF8
        C: MAIL FROM:<alice@a.example> BODY=8BITMIME
        S: 250 ok
        = ok
        # expect-data means nothing without PIPELINING.
        expect-data
        rcpt bob@b.example
        C: RCPT TO:<bob@b.example>
        S: 550 5.1.1 no such user
        = 550 5.1.1 no such user
        rcpt carol@b.example
        C: RCPT TO:<carol@b.example>
        S: 250 ok
        = ok
        data
        C: DATA
        S: 354 go
        = ok
        body hello
        end
        C: hello
        C: .
        S: 250 2.0.0 queued
        ! 250 2.0.0 queued
        mail alice@a.example
        C: MAIL FROM:<alice@a.example>
        S: 451 4.3.0 try later
        = 451 4.3.0 try later
        # MAIL was refused: no local transaction to reset.
        reset
        close
        C: QUIT
        S: 221 bye
        ",
    );
}

#[test]
fn helo_when_ehlo_is_refused_and_nothing_is_offered() {
    check(
        false,
        "
        S: 220 old.example
        C: EHLO relay.example
        S: 502 what
        C: HELO relay.example
        S: 250-old.example
        S: 250 PIPELINING
        mail a@a.example SMTPUTF8
        C: MAIL FROM:<a@a.example>
        S: 250 ok
        = ok
        ",
    );
}

#[test]
fn a_refused_greeting_or_hello_fails_the_setup() {
    check(false, "S: 554 no\nfailed greeting was 554 no");
    check(
        true,
        "
        S: 220 lmtp.example
        C: LHLO relay.example
        S: 500 what
        failed LHLO was refused: 500 what
        ",
    );
    check(
        false,
        "
        S: 220 x
        C: EHLO relay.example
        S: <eof>
        closed
        failed the local mail system closed the connection
        ",
    );
    check(false, "S: hello\nclosed\nfailed malformed reply line: \"hello\"");
}

const LHLO: &str = "
    S: 220 lmtp.example LMTP
    C: LHLO relay.example
    S: 250-lmtp.example
    S: 250-PIPELINING
    S: 250 ENHANCEDSTATUSCODES
";

#[test]
fn lmtp_one_recipient_per_transaction_with_mixed_replies() {
    let mut r = Relay::new(true, NAME);
    assert_eq!(r.caps().max_recipients, 1);
    let mut input = BytesMut::from(&b"220 lmtp\r\n250-lmtp\r\n250 PIPELINING\r\n"[..]);
    while r.poll(&mut input) != RelayStep::Idle {
        r.output().clear();
    }
    assert!(r.caps().pipelining);
    check(
        true,
        &with_ehlo(
            LHLO,
            "
            mail alice@a.example
            = ok
            expect-data
            rcpt bob@b.example
            C: MAIL FROM:<alice@a.example>
            C: RCPT TO:<bob@b.example>
            C: DATA
            S: 250 2.1.0 ok
            S: 250 2.1.5 ok
            S: 354 go
            = ok
            # A second recipient never reaches the local MTA (the provider sends it again).
            rcpt carol@b.example
            = 452 4.5.3 Too many recipients
            data
            = ok
            body one
            end
            mail alice@a.example
            = ok
            expect-data
            rcpt carol@b.example
            C: one
            C: .
            C: MAIL FROM:<alice@a.example>
            C: RCPT TO:<carol@b.example>
            C: DATA
            # LMTP's one reply per recipient after the dot: the verdict.
            S: 452 4.2.2 mailbox full
            S: 250 2.1.0 ok
            S: 250 2.1.5 ok
            S: 354 go
            ! 452 4.2.2 mailbox full
            = ok
            data
            = ok
            body one
            end
            mail alice@a.example
            = ok
            expect-data
            rcpt dave@b.example
            C: one
            C: .
            C: MAIL FROM:<alice@a.example>
            C: RCPT TO:<dave@b.example>
            C: DATA
            S: 250 2.0.0 delivered
            S: 250 2.1.0 ok
            S: 550 5.1.1 unknown
            S: 554 5.5.1 no valid recipients
            ! 250 2.0.0 delivered
            = 550 5.1.1 unknown
            # The provider's side refuses its DATA itself and resets.
            reset
            C: RSET
            S: 250 ok
            mail alice@a.example
            = ok
            rcpt erin@b.example
            C: MAIL FROM:<alice@a.example>
            C: RCPT TO:<erin@b.example>
            S: 250 2.1.0 ok
            S: 250 2.1.5 ok
            = ok
            data
            = ok
            body two
            end
            C: DATA
            S: 354 go
            close
            C: two
            C: .
            S: 550 5.2.2 over quota
            ! 550 5.2.2 over quota
            C: QUIT
            S: 221 bye
            ",
        ),
    );
}

#[test]
fn a_refused_mail_refuses_every_recipient() {
    check(
        false,
        &with_ehlo(
            EHLO_PIPELINING,
            "
            mail eve@a.example
            = ok
            rcpt bob@b.example
            C: MAIL FROM:<eve@a.example>
            C: RCPT TO:<bob@b.example>
            S: 550 5.7.1 not from you
            S: 503 5.5.1 need MAIL
            = 550 5.7.1 not from you
            # The same refusal, without asking again.
            expect-data
            rcpt carol@b.example
            = 550 5.7.1 not from you
            # Nothing is open locally: no RSET.
            reset
            mail alice@a.example
            = ok
            rcpt carol@b.example
            C: MAIL FROM:<alice@a.example>
            C: RCPT TO:<carol@b.example>
            S: 250 ok
            S: 250 ok
            = ok
            ",
        ),
    );
}

#[test]
fn a_refused_data_is_the_verdict_and_the_connection_goes_on() {
    check(
        false,
        &with_ehlo(
            EHLO_PIPELINING,
            "
            mail alice@a.example
            = ok
            rcpt bob@b.example
            C: MAIL FROM:<alice@a.example>
            C: RCPT TO:<bob@b.example>
            S: 250 ok
            S: 250 ok
            = ok
            data
            = ok
            body secret
            # DATA goes out at the end; refused, the body never leaves and RSET closes the
            # local transaction.
            end
            C: DATA
            S: 452 4.3.1 insufficient system storage
            C: RSET
            S: 250 ok
            ! 452 4.3.1 insufficient system storage
            # Sent with the last RCPT: the refusal is the answer to the provider's DATA.
            mail alice@a.example
            = ok
            expect-data
            rcpt bob@b.example
            C: MAIL FROM:<alice@a.example>
            C: RCPT TO:<bob@b.example>
            C: DATA
            S: 250 ok
            S: 250 ok
            S: 451 4.3.0 not now
            = ok
            data
            = 451 4.3.0 not now
            reset
            C: RSET
            S: 250 ok
            ",
        ),
    );
}

#[test]
fn a_421_mid_transaction_is_passed_on_and_then_the_connection_is_gone() {
    check(
        false,
        &with_ehlo(
            EHLO_PIPELINING,
            "
            mail alice@a.example
            = ok
            rcpt bob@b.example
            C: MAIL FROM:<alice@a.example>
            C: RCPT TO:<bob@b.example>
            S: 250 ok
            S: 421 4.3.2 shutting down
            = 421 4.3.2 shutting down
            rcpt carol@b.example
            C: RCPT TO:<carol@b.example>
            S: <eof>
            closed
            = 451 4.4.0 local mail system unavailable: the local mail system closed the connection
            reset
            # Later transactions are refused at once, nothing is written.
            mail alice@a.example
            = 451 4.4.0 local mail system unavailable: connection closed
            rcpt bob@b.example
            = 451 4.4.0 local mail system unavailable: connection closed
            close
            ",
        ),
    );
}

#[test]
fn a_connection_lost_with_a_verdict_owed_gives_451_for_it() {
    check(
        false,
        &with_ehlo(
            EHLO_PIPELINING,
            "
            mail alice@a.example
            = ok
            expect-data
            rcpt bob@b.example
            C: MAIL FROM:<alice@a.example>
            C: RCPT TO:<bob@b.example>
            C: DATA
            S: 250 ok
            S: 250 ok
            S: 354 go
            = ok
            data
            = ok
            body hi
            end
            mail alice@a.example
            = ok
            rcpt bob@b.example
            C: hi
            C: .
            C: MAIL FROM:<alice@a.example>
            C: RCPT TO:<bob@b.example>
            S: <eof>
            ! 451 4.4.0 local mail system unavailable: the local mail system closed the connection
            closed
            = 451 4.4.0 local mail system unavailable: the local mail system closed the connection
            ",
        ),
    );
}

#[test]
fn a_transaction_abandoned_inside_data_drops_the_connection() {
    check(
        false,
        &with_ehlo(
            EHLO_PIPELINING,
            "
            mail alice@a.example
            = ok
            expect-data
            rcpt bob@b.example
            C: MAIL FROM:<alice@a.example>
            C: RCPT TO:<bob@b.example>
            C: DATA
            S: 250 ok
            S: 250 ok
            S: 354 go
            = ok
            data
            = ok
            body half a message
            # The local MTA is inside DATA: no RSET, no dot; the connection goes.
            reset
            closed
            mail alice@a.example
            = 451 4.4.0 local mail system unavailable: connection closed
            close
            ",
        ),
    );
    // The same before DATA left: an RSET is enough, the body never went.
    check(
        false,
        &with_ehlo(
            EHLO_PIPELINING,
            "
            mail alice@a.example
            = ok
            rcpt bob@b.example
            C: MAIL FROM:<alice@a.example>
            C: RCPT TO:<bob@b.example>
            S: 250 ok
            S: 250 ok
            = ok
            data
            = ok
            body half a message
            reset
            C: RSET
            S: 250 ok
            close
            C: QUIT
            S: 221 bye
            ",
        ),
    );
}

#[test]
fn reset_and_close_read_the_verdict_owed_first() {
    check(
        false,
        &with_ehlo(
            EHLO_PIPELINING,
            "
            mail alice@a.example
            = ok
            expect-data
            rcpt bob@b.example
            C: MAIL FROM:<alice@a.example>
            C: RCPT TO:<bob@b.example>
            C: DATA
            S: 250 ok
            S: 250 ok
            S: 354 go
            = ok
            data
            = ok
            body one
            end
            # The next MAIL waits; the provider resets before any RCPT: the dot goes alone, its
            # reply is read, the MAIL never leaves.
            mail carol@a.example
            = ok
            reset
            C: one
            C: .
            S: 250 queued
            ! 250 queued
            mail alice@a.example
            = ok
            expect-data
            rcpt bob@b.example
            C: MAIL FROM:<alice@a.example>
            C: RCPT TO:<bob@b.example>
            C: DATA
            S: 250 ok
            S: 250 ok
            S: 354 go
            = ok
            data
            = ok
            body two
            end
            close
            C: two
            C: .
            S: 550 5.6.0 no
            ! 550 5.6.0 no
            C: QUIT
            S: 221 bye
            ",
        ),
    );
}

#[test]
fn garbage_from_the_local_mta_loses_the_connection() {
    check(
        false,
        &with_ehlo(
            EHLO_PIPELINING,
            "
            mail alice@a.example
            = ok
            rcpt bob@b.example
            C: MAIL FROM:<alice@a.example>
            C: RCPT TO:<bob@b.example>
            S: 250 ok
            S: not a reply
            closed
            = 451 4.4.0 local mail system unavailable: malformed reply line: \"not a reply\"
            ",
        ),
    );
}

/// Drives `r` until it is idle: the local MTA's replies come from `replies`, one per read.
/// Returns the steps other than writes, and appends each write to `writes`.
fn drive(r: &mut Relay, replies: &mut VecDeque<&str>, writes: &mut Vec<Vec<u8>>) -> Vec<RelayStep> {
    let mut input = BytesMut::new();
    let mut steps = Vec::new();
    loop {
        match r.poll(&mut input) {
            RelayStep::Write => writes.push(std::mem::take(r.output())),
            RelayStep::NeedInput => {
                let reply = replies.pop_front().expect("a reply the script does not have");
                input.extend_from_slice(reply.as_bytes());
                input.extend_from_slice(b"\r\n");
            }
            RelayStep::Idle => return steps,
            s => steps.push(s),
        }
    }
}

/// A message of `len` octets in pieces of `piece`: checks that what is written after the
/// envelope is DATA (with PIPELINING) and the stuffed body, and returns the size of each write.
fn big_body(pipelining: bool, piece: usize, len: usize) -> Vec<usize> {
    let ehlo = if pipelining {
        "250-mta\r\n250 PIPELINING"
    } else {
        "250 mta"
    };
    let mut replies: VecDeque<&str> = ["220 mta", ehlo, "250 ok", "250 ok", "354 go", "250 queued"].into();
    if pipelining {
        // MAIL and RCPT in one write, one read.
        replies.remove(2);
        replies[2] = "250 ok\r\n250 ok";
    }
    let mut r = Relay::new(false, NAME);
    let mut writes = Vec::new();
    drive(&mut r, &mut replies, &mut writes);
    r.mail("a@a.example", "");
    drive(&mut r, &mut replies, &mut writes);
    r.rcpt("b@b.example");
    drive(&mut r, &mut replies, &mut writes);
    r.data();
    drive(&mut r, &mut replies, &mut writes);
    writes.clear();
    let content: Vec<u8> = (0..len)
        .map(|i| if i % 50 == 49 { b'\n' } else { b'.' })
        .collect();
    for p in content.chunks(piece) {
        r.body(p);
        assert_eq!(drive(&mut r, &mut replies, &mut writes), []);
    }
    r.end();
    let mut steps = drive(&mut r, &mut replies, &mut writes);
    if pipelining {
        assert_eq!(steps, []);
        r.settle();
        steps = drive(&mut r, &mut replies, &mut writes);
    }
    assert_eq!(steps, [RelayStep::Verdict(Reply::new(250, "", "queued"))]);
    assert!(replies.is_empty());
    let mut s = DotStuffer::new();
    let mut expected = Vec::new();
    if pipelining {
        expected.extend_from_slice(b"DATA\r\n");
    }
    s.stuff(&content, &mut expected);
    s.finish(&mut expected);
    assert_eq!(writes.concat(), expected);
    writes.iter().map(Vec::len).collect()
}

#[test]
fn a_large_body_is_written_in_bounded_pieces() {
    for pipelining in [false, true] {
        for piece in [1000, FLUSH_AT + 7] {
            let writes = big_body(pipelining, piece, 3 * FLUSH_AT + 123);
            assert!(writes.len() >= 3, "{writes:?}");
            // At most FLUSH_AT plus one piece (doubled by stuffing) waits before a write.
            assert!(writes.iter().all(|&w| w < FLUSH_AT + 2 * piece + 8), "{writes:?}");
        }
    }
}

#[test]
fn a_refused_data_before_a_large_body_sends_none_of_it() {
    let mut r = Relay::new(false, NAME);
    let mut input = BytesMut::from(
        &b"220 mta\r\n250-mta\r\n250 PIPELINING\r\n250 ok\r\n250 ok\r\n552 5.3.4 too big\r\n250 reset\r\n"[..],
    );
    let mut written = Vec::new();
    let mut steps = Vec::new();
    let mut go = |r: &mut Relay, input: &mut BytesMut| loop {
        match r.poll(input) {
            RelayStep::Write => written.extend_from_slice(&std::mem::take(r.output())),
            RelayStep::Idle => return,
            s => steps.push(s),
        }
    };
    go(&mut r, &mut input);
    r.mail("a@a.example", "");
    go(&mut r, &mut input);
    r.rcpt("b@b.example");
    go(&mut r, &mut input);
    r.data();
    go(&mut r, &mut input);
    for _ in 0..3 {
        r.body(&[b'x'; FLUSH_AT]);
        go(&mut r, &mut input);
    }
    r.end();
    go(&mut r, &mut input);
    assert_eq!(
        String::from_utf8(written).unwrap(),
        "EHLO relay.example\r\nMAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\nDATA\r\nRSET\r\n"
    );
    let too_big = Reply::new(552, "5.3.4", "too big");
    assert_eq!(
        steps,
        [
            RelayStep::Answer(Ok(())),
            RelayStep::Answer(Ok(())),
            RelayStep::Answer(Ok(())),
            RelayStep::Verdict(too_big)
        ]
    );
}

#[test]
fn a_write_failure_in_the_body_is_the_verdict() {
    let mut r = Relay::new(false, NAME);
    let mut input = BytesMut::from(&b"220 mta\r\n250 mta\r\n250 ok\r\n250 ok\r\n354 go\r\n"[..]);
    let go = |r: &mut Relay, input: &mut BytesMut, fail: bool| {
        let mut steps = Vec::new();
        loop {
            match r.poll(input) {
                RelayStep::Write if fail => {
                    r.output().clear();
                    r.io_failed("broken pipe");
                }
                RelayStep::Write => r.output().clear(),
                RelayStep::Idle => return steps,
                s => steps.push(s),
            }
        }
    };
    go(&mut r, &mut input, false);
    r.mail("a@a.example", "");
    go(&mut r, &mut input, false);
    r.rcpt("b@b.example");
    go(&mut r, &mut input, false);
    r.data();
    go(&mut r, &mut input, false);
    r.body(&[b'x'; FLUSH_AT]);
    assert_eq!(go(&mut r, &mut input, true), [RelayStep::Close]);
    r.body(b"more");
    assert_eq!(go(&mut r, &mut input, false), []);
    r.end();
    assert_eq!(
        go(&mut r, &mut input, false),
        [RelayStep::Verdict(unavailable("broken pipe"))]
    );
    assert!(r.is_closed());
    assert!(!r.verdict_owed());
}

#[test]
fn a_2xx_to_data_is_never_passed_on_as_a_verdict_or_a_go_ahead() {
    // DATA before the body: no octet of it was sent, so the provider must not count it
    // delivered.
    check(
        false,
        &with_ehlo(
            EHLO_PIPELINING,
            "
            mail alice@a.example
            = ok
            rcpt bob@b.example
            C: MAIL FROM:<alice@a.example>
            C: RCPT TO:<bob@b.example>
            S: 250 ok
            S: 250 ok
            = ok
            data
            = ok
            body x
            end
            C: DATA
            S: 250 2.0.0 ok
            C: RSET
            S: 250 ok
            ! 451 4.5.0 local mail system answered DATA with 250 2.0.0 ok
            # With the last RCPT: the provider's DATA is refused.
            mail alice@a.example
            = ok
            expect-data
            rcpt bob@b.example
            C: MAIL FROM:<alice@a.example>
            C: RCPT TO:<bob@b.example>
            C: DATA
            S: 250 ok
            S: 250 ok
            S: 250 ok
            = ok
            data
            = 451 4.5.0 local mail system answered DATA with 250 ok
            ",
        ),
    );
    // In lockstep the body would otherwise be read as commands.
    check(
        false,
        "
        S: 220 mta
        C: EHLO relay.example
        S: 250 mta
        mail alice@a.example
        C: MAIL FROM:<alice@a.example>
        S: 250 ok
        = ok
        rcpt bob@b.example
        C: RCPT TO:<bob@b.example>
        S: 250 ok
        = ok
        data
        C: DATA
        S: 250 ok
        = 451 4.5.0 local mail system answered DATA with 250 ok
        reset
        C: RSET
        S: 250 ok
        ",
    );
}
