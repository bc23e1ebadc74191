//! The whole reversed session in memory, in the style of quinn-proto's `Pair`: the provider's
//! [`Deliverer`], the customer's [`SmtpServer`] in customer mode (deferred verdicts, as
//! `odmr client` runs it: crates/odmr/src/client/receive.rs), the [`Relay`] machine, and a
//! scripted local MTA, joined by byte queues whose octets arrive in reads cut at random points
//! (a seeded generator, many seeds), with no sockets and no clock.
//!
//! The local MTA is a test double: a few lines that answer each command as its script says
//! (the script is in the addresses: `s3-data452@…` refuses DATA with 452, `m3-rcpt550-1@…` is
//! refused at RCPT, ...). Real local MTAs (smtp-sink, Postfix, aiosmtpd) are driven over
//! sockets by crates/odmr/tests.
//!
//! Checked, for SMTP and LMTP local MTAs, with and without PIPELINING: every recipient the
//! provider counts as delivered reached the local MTA exactly once, with the message intact;
//! every other recipient never reached it; every refusal comes back to the provider with the
//! local MTA's code, as deferred (4xx) or failed (5xx); every recipient gets exactly one final
//! outcome. A local MTA without PIPELINING never sees a command before it answered the last.

use bytes::BytesMut;
use odmr_proto::deliver::{DeliverStep, Deliverer, OutMessage, RcptOutcome, BDAT_MAX};
use odmr_proto::envelope::RcptEntry;
use odmr_proto::relay::{Relay, RelayStep, FLUSH_AT};
use odmr_proto::reply::Reply;
use odmr_proto::smtp_server::{PeerInfo, RcptVerdict, ServerConfig, ServerStep, SmtpServer};
use std::collections::{BTreeSet, HashMap, VecDeque};

/// splitmix64: a seeded generator, so that a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
}

/// A one-way byte queue; the other side reads it in pieces of random length.
#[derive(Default)]
struct Pipe(VecDeque<u8>);

impl Pipe {
    fn write(&mut self, b: &mut Vec<u8>) {
        self.0.extend(b.iter());
        b.clear();
    }
    /// One read into `to`; false if nothing waits.
    fn deliver(&mut self, to: &mut BytesMut, rng: &mut Rng) -> bool {
        if self.0.is_empty() {
            return false;
        }
        let n = if rng.one_in(2) {
            1 + rng.below(8)
        } else {
            1 + rng.below(70_000)
        };
        let n = n.min(self.0.len());
        to.extend(self.0.drain(..n));
        true
    }
}

// ----- the script, written in the addresses -----

const SENDER_KINDS: &[&str] = &[
    "ok", "ok", "ok", "mail550", "mail451", "data452", "data554", "final451", "final550",
];
const RCPT_KINDS: &[&str] = &["ok", "ok", "ok", "rcpt550", "rcpt451", "final451", "final550"];

fn kind(address: &str) -> &str {
    address
        .split('@')
        .next()
        .unwrap_or("")
        .split('-')
        .nth(1)
        .unwrap_or("")
}

/// What the provider must end up with for this recipient: a 2xx (delivered) or the local
/// MTA's refusal code.
fn expected(lmtp: bool, from: &str, rcpt: &str) -> u16 {
    match kind(from) {
        "mail550" => return 550,
        "mail451" => return 451,
        _ => {}
    }
    match kind(rcpt) {
        "rcpt550" => return 550,
        "rcpt451" => return 451,
        _ => {}
    }
    match kind(from) {
        "data452" => return 452,
        "data554" => return 554,
        _ => {}
    }
    // SMTP: one reply after the dot, the sender's script; LMTP: one per recipient.
    match kind(if lmtp { rcpt } else { from }) {
        "final451" => 451,
        "final550" => 550,
        _ => 250,
    }
}

/// One message the local MTA took: sender, recipients, content (unstuffed).
type Delivery = (String, Vec<String>, Vec<u8>);

/// The scripted local MTA.
struct Mta {
    lmtp: bool,
    pipelining: bool,
    input: Vec<u8>,
    out: Vec<u8>,
    in_data: bool,
    from: Option<String>,
    rcpts: Vec<String>,
    content: Vec<u8>,
    closed: bool,
    delivered: Vec<Delivery>,
}

fn address(line: &str, prefix: &str) -> String {
    let rest = &line[prefix.len()..];
    rest.trim_start_matches('<')
        .split('>')
        .next()
        .unwrap_or("")
        .to_string()
}

impl Mta {
    fn new(lmtp: bool, pipelining: bool) -> Self {
        Mta {
            lmtp,
            pipelining,
            input: Vec::new(),
            out: b"220 mta.example ESMTP\r\n".to_vec(),
            in_data: false,
            from: None,
            rcpts: Vec::new(),
            content: Vec::new(),
            closed: false,
            delivered: Vec::new(),
        }
    }

    fn say(&mut self, r: &str) {
        self.out.extend_from_slice(r.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// Octets from the relay; `more` says whether more were written behind them.
    fn receive(&mut self, bytes: &[u8], more: bool) {
        self.input.extend_from_slice(bytes);
        while !self.closed {
            let Some(nl) = self.input.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let line: Vec<u8> = self.input.drain(..nl + 2).take(nl).collect();
            if self.in_data {
                if line != b"." {
                    let l = line.strip_prefix(b".").unwrap_or(&line);
                    self.content.extend_from_slice(l);
                    self.content.extend_from_slice(b"\r\n");
                    continue;
                }
                self.lockstep_check(more, ".");
                self.end_of_data();
                continue;
            }
            let line = String::from_utf8(line).expect("commands are ASCII");
            self.lockstep_check(more, &line);
            self.command(&line);
        }
    }

    fn lockstep_check(&self, more: bool, what: &str) {
        if !self.pipelining {
            assert!(
                self.input.is_empty() && !more,
                "a command after {what:?} before its reply, without PIPELINING"
            );
        }
    }

    fn command(&mut self, line: &str) {
        let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" | "LHLO" if (verb == "LHLO") != self.lmtp => self.say("500 5.5.1 wrong protocol"),
            "EHLO" | "LHLO" => {
                self.say("250-mta.example");
                if self.pipelining {
                    self.say("250-PIPELINING");
                }
                self.say("250 8BITMIME");
            }
            "MAIL" => {
                let from = address(line, "MAIL FROM:");
                match kind(&from) {
                    "mail550" => self.say("550 5.7.1 not from you"),
                    "mail451" => self.say("451 4.3.0 try later"),
                    _ => {
                        self.from = Some(from);
                        self.rcpts.clear();
                        self.say("250 2.1.0 ok");
                    }
                }
            }
            "RCPT" if self.from.is_none() => self.say("503 5.5.1 need MAIL"),
            "RCPT" => {
                let to = address(line, "RCPT TO:");
                match kind(&to) {
                    "rcpt550" => self.say("550 5.1.1 no such user"),
                    "rcpt451" => self.say("451 4.2.0 mailbox busy"),
                    _ => {
                        self.rcpts.push(to);
                        self.say("250 2.1.5 ok");
                    }
                }
            }
            "DATA" if self.from.is_none() || self.rcpts.is_empty() => {
                self.say("554 5.5.1 no valid recipients")
            }
            "DATA" => match kind(self.from.as_deref().unwrap_or("")) {
                "data452" => self.say("452 4.3.1 insufficient system storage"),
                "data554" => self.say("554 5.3.0 not now, not ever"),
                _ => {
                    self.in_data = true;
                    self.content.clear();
                    self.say("354 go ahead");
                }
            },
            "RSET" => {
                self.from = None;
                self.rcpts.clear();
                self.say("250 2.0.0 ok");
            }
            "QUIT" => {
                self.say("221 2.0.0 bye");
                self.closed = true;
            }
            _ => self.say("500 5.5.2 what"),
        }
    }

    fn end_of_data(&mut self) {
        self.in_data = false;
        let from = self.from.take().unwrap_or_default();
        let rcpts = std::mem::take(&mut self.rcpts);
        let content = std::mem::take(&mut self.content);
        let verdict = |k: &str| match k {
            "final451" => "451 4.3.0 local trouble",
            "final550" => "550 5.6.0 content refused",
            _ => "250 2.0.0 queued",
        };
        if self.lmtp {
            for r in rcpts {
                let v = verdict(kind(&r));
                self.say(v);
                if v.starts_with('2') {
                    self.delivered.push((from.clone(), vec![r], content.clone()));
                }
            }
        } else {
            let v = verdict(kind(&from));
            self.say(v);
            if v.starts_with('2') {
                self.delivered.push((from, rcpts, content));
            }
        }
    }

    /// The relay dropped the connection: whatever was open is discarded.
    fn dropped(&mut self) {
        self.closed = true;
        self.in_data = false;
        self.content.clear();
    }
}

// ----- the customer: the relay's driver, and the reversed session's loop -----

/// Drives the relay machine as crates/odmr/src/client/sink/relay.rs does.
struct Local {
    m: Relay,
    input: BytesMut,
    to_mta: Pipe,
    from_mta: Pipe,
    mta: Mta,
    verdicts: VecDeque<Reply>,
}

impl Local {
    fn run(&mut self, rng: &mut Rng) -> Option<Result<(), Reply>> {
        let mut answer = None;
        loop {
            match self.m.poll(&mut self.input) {
                RelayStep::Write => self.to_mta.write(self.m.output()),
                RelayStep::NeedInput => self.read(rng),
                RelayStep::Answer(a) => answer = Some(a),
                RelayStep::Verdict(v) => self.verdicts.push_back(v),
                RelayStep::Close => {
                    self.mta.dropped();
                    self.to_mta.0.clear();
                    self.from_mta.0.clear();
                }
                RelayStep::Idle => return answer,
                RelayStep::Failed(why) => panic!("relay setup failed: {why}"),
            }
        }
    }

    /// One read from the local MTA, letting it read (in random pieces) until it says something.
    fn read(&mut self, rng: &mut Rng) {
        loop {
            if self.from_mta.deliver(&mut self.input, rng) {
                return;
            }
            if self.mta.closed {
                self.m.closed_by_peer();
                return;
            }
            let mut piece = BytesMut::new();
            assert!(
                self.to_mta.deliver(&mut piece, rng),
                "the relay waits for a reply the local MTA does not owe"
            );
            self.mta.receive(&piece, !self.to_mta.0.is_empty());
            self.from_mta.write(&mut self.mta.out);
        }
    }

    fn answer(&mut self, rng: &mut Rng) -> Result<(), Reply> {
        self.run(rng).expect("an answer")
    }
}

struct Customer {
    m: SmtpServer,
    input: BytesMut,
    local: Local,
    /// A message is open (the provider got its go-ahead).
    current: bool,
    /// A message was handed to the relay whole and waits for its verdict.
    awaiting: bool,
    stats: Stats,
    closed: bool,
}

fn data_is_next(input: &[u8]) -> bool {
    let starts = |p: &[u8]| input.len() >= p.len() && input[..p.len()].eq_ignore_ascii_case(p);
    starts(b"DATA\r\n") || starts(b"BDAT ")
}

impl Customer {
    fn new(lmtp: bool, pipelining: bool, rng: &mut Rng) -> Self {
        let mut local = Local {
            m: Relay::new(lmtp, "customer.example"),
            input: BytesMut::new(),
            to_mta: Pipe::default(),
            from_mta: Pipe::default(),
            mta: Mta::new(lmtp, pipelining),
            verdicts: VecDeque::new(),
        };
        local.from_mta.write(&mut local.mta.out);
        assert_eq!(local.run(rng), None);
        assert_eq!(local.m.caps().pipelining, pipelining);
        // As crates/odmr/src/client/receive.rs configures it.
        let caps = local.m.caps();
        let mut cfg = ServerConfig::new("customer.example");
        cfg.max_message_size = caps.max_size;
        cfg.eight_bit_mime = caps.eight_bit_mime;
        cfg.smtputf8 = caps.smtputf8;
        cfg.dsn = false;
        cfg.max_recipients = caps.max_recipients.max(1);
        cfg.max_messages = u64::MAX;
        cfg.max_errors = usize::MAX;
        cfg.check_sender = true;
        cfg.chunking = true;
        let peer = PeerInfo {
            ip: "192.0.2.1".into(),
            session: "pair".into(),
        };
        Customer {
            m: SmtpServer::new(cfg, peer),
            input: BytesMut::new(),
            local,
            current: false,
            awaiting: false,
            stats: Stats::default(),
            closed: false,
        }
    }

    fn give_verdict(&mut self, reply: Reply) {
        assert!(std::mem::take(&mut self.awaiting), "a verdict for no message");
        if reply.is_positive() {
            self.m.committed(Ok(format!("OK delivered locally: {reply}")));
        } else {
            self.m.committed(Err(reply.with_class_status()));
        }
    }

    /// Runs the session loop of receive.rs until it needs the provider's next octets.
    fn advance(&mut self, to_provider: &mut Pipe, rng: &mut Rng) {
        while !self.closed {
            if self.awaiting {
                if let Some(reply) = self.local.verdicts.pop_front() {
                    self.give_verdict(reply);
                }
            }
            let step = self.m.poll(&mut self.input);
            match step {
                ServerStep::NeedInput => {
                    to_provider.write(self.m.output());
                    return;
                }
                ServerStep::CheckSender { from, params } => {
                    self.local.m.mail(&from, &params);
                    let v = self.local.answer(rng);
                    self.m.sender_verdict(v.map_err(Reply::with_class_status));
                }
                ServerStep::CheckRecipient { address, .. } => {
                    if data_is_next(&self.input) {
                        self.local.m.expect_data();
                    }
                    self.local.m.rcpt(&address);
                    let v = match self.local.answer(rng) {
                        Ok(()) => RcptVerdict::Accept,
                        Err(r) => RcptVerdict::Refuse(r.with_class_status()),
                    };
                    self.m.recipient_verdict(v);
                }
                ServerStep::StartData(_) => {
                    self.local.m.data();
                    match self.local.answer(rng) {
                        Ok(()) => {
                            self.current = true;
                            self.m.data_ready("Thu, 1 Jan 2026 00:00:00 +0000");
                        }
                        Err(r) => {
                            self.local.m.reset();
                            self.local.run(rng);
                            self.m.data_refused(r.with_class_status());
                        }
                    }
                }
                ServerStep::Body(chunk) => {
                    self.local.m.body(&chunk);
                    assert_eq!(self.local.run(rng), None);
                }
                ServerStep::EndData { .. } => {
                    assert!(std::mem::take(&mut self.current), "a message in hand");
                    assert!(!self.awaiting, "two verdicts owed");
                    self.local.m.end();
                    assert_eq!(self.local.run(rng), None);
                    self.awaiting = true;
                    if self.local.m.verdict_owed() {
                        self.m.defer_commit();
                        self.stats.deferred += 1;
                    } else {
                        let reply = self.local.verdicts.pop_back().expect("a verdict");
                        self.give_verdict(reply);
                    }
                }
                ServerStep::Settle => {
                    self.local.m.settle();
                    self.local.run(rng);
                    let reply = self.local.verdicts.pop_front().expect("the verdict owed");
                    self.give_verdict(reply);
                }
                ServerStep::AbortData | ServerStep::Reset => {
                    self.local.m.reset();
                    self.local.run(rng);
                }
                ServerStep::Close => {
                    to_provider.write(self.m.output());
                    self.closed = true;
                }
                s => panic!("not in the reversed session: {s:?}"),
            }
            to_provider.write(self.m.output());
        }
    }

    /// The session is over (the provider quit): what receive.rs and the poll do after it.
    fn finish(&mut self, rng: &mut Rng) {
        assert!(!self.awaiting, "a verdict never reached the provider");
        assert!(!self.m.in_data());
        self.local.m.close();
        self.local.run(rng);
        assert!(self.local.verdicts.is_empty());
    }
}

// ----- the provider -----

#[derive(Clone)]
struct Msg {
    from: String,
    rcpts: Vec<String>,
    size: u64,
    body: Vec<u8>,
}

struct Provider {
    d: Deliverer,
    input: BytesMut,
    queue: VecDeque<Msg>,
    in_flight: VecDeque<Msg>,
    /// Every final outcome: recipient, the reply's code, delivered?
    outcomes: Vec<(String, u16, bool)>,
    /// Recipients sent again in a further transaction (LMTP: one per transaction).
    again: usize,
    done: bool,
}

impl Provider {
    fn advance(&mut self, to_customer: &mut Pipe, rng: &mut Rng) {
        while !self.done {
            let step = self.d.poll(&mut self.input);
            match step {
                DeliverStep::NeedInput => {
                    to_customer.write(self.d.output());
                    return;
                }
                DeliverStep::Ready => {
                    if let Some(m) = self.queue.pop_front() {
                        self.d.send(OutMessage {
                            mail_from: m.from.clone(),
                            mail_params: String::new(),
                            size: m.size,
                            eight_bit: false,
                            recipients: m
                                .rcpts
                                .iter()
                                .map(|a| RcptEntry {
                                    address: a.clone(),
                                    params: String::new(),
                                })
                                .collect(),
                        });
                        self.in_flight.push_back(m);
                    } else if !self.in_flight.is_empty() {
                        self.d.hold();
                    } else {
                        self.d.quit();
                    }
                }
                DeliverStep::SendBody => {
                    let m = self.in_flight.back().expect("a message on the wire");
                    let mut rest = &m.body[..];
                    while !rest.is_empty() {
                        let n = (1 + rng.below(40_000)).min(rest.len());
                        self.d.body(&rest[..n]);
                        rest = &rest[n..];
                    }
                    self.d.body_end();
                }
                DeliverStep::Finished(outcomes) => {
                    let m = self.in_flight.pop_front().expect("a message in flight");
                    assert_eq!(outcomes.len(), m.rcpts.len());
                    let mut again = Vec::new();
                    for (r, o) in m.rcpts.iter().zip(outcomes) {
                        match o {
                            RcptOutcome::Again(_) => again.push(r.clone()),
                            RcptOutcome::Delivered(rep) => self.outcomes.push((r.clone(), rep.code, true)),
                            RcptOutcome::Deferred(rep) | RcptOutcome::Failed(rep) => {
                                self.outcomes.push((r.clone(), rep.code, false))
                            }
                        }
                    }
                    self.again += again.len();
                    if !again.is_empty() {
                        self.queue.push_front(Msg { rcpts: again, ..m });
                    }
                }
                DeliverStep::Done => {
                    to_customer.write(self.d.output());
                    assert_eq!(self.d.error(), None);
                    self.done = true;
                }
                DeliverStep::StartTls => panic!("no STARTTLS in the reversed session"),
            }
            to_customer.write(self.d.output());
        }
    }
}

fn body(rng: &mut Rng, id: usize) -> Vec<u8> {
    let mut b = format!("Subject: message {id}\r\n\r\n").into_bytes();
    let target = match rng.below(8) {
        0 => 0,
        1 => 100_000 + rng.below(200_000),
        _ => rng.below(3000),
    };
    while b.len() < target {
        let len = rng.below(120);
        if rng.one_in(3) {
            b.push(b'.');
        }
        for _ in 0..len {
            b.push(b' ' + rng.below(95) as u8);
        }
        b.extend_from_slice(b"\r\n");
    }
    b
}

fn messages(rng: &mut Rng) -> Vec<Msg> {
    (0..1 + rng.below(7))
        .map(|id| {
            let from = format!(
                "s{id}-{}@sender.example",
                SENDER_KINDS[rng.below(SENDER_KINDS.len())]
            );
            let rcpts = (0..1 + rng.below(4))
                .map(|i| {
                    format!(
                        "m{id}-{}-{i}@example.org",
                        RCPT_KINDS[rng.below(RCPT_KINDS.len())]
                    )
                })
                .collect();
            // Over 1 MiB (the stated size) the provider sends with DATA, not BDAT.
            let size = if rng.one_in(4) { 2_000_000 } else { 1000 };
            Msg {
                from,
                rcpts,
                size,
                body: body(rng, id),
            }
        })
        .collect()
}

/// What the sessions went through, so that a test can check it covered what it should.
#[derive(Default, Debug)]
struct Stats {
    /// Codes of the final outcomes.
    codes: BTreeSet<u16>,
    /// Verdicts deferred by the customer (the dot went out with the next commands).
    deferred: usize,
    again: usize,
    /// Messages delivered that were larger than the relay's write threshold.
    big: usize,
    /// Messages sent with DATA rather than BDAT.
    data: usize,
}

fn session(seed: u64, lmtp: bool, pipelining: bool, stats: &mut Stats) {
    let mut rng = Rng(seed);
    let msgs = messages(&mut rng);
    let mut p = Provider {
        d: Deliverer::new("provider.example"),
        input: BytesMut::new(),
        queue: msgs.iter().cloned().collect(),
        in_flight: VecDeque::new(),
        outcomes: Vec::new(),
        again: 0,
        done: false,
    };
    let mut c = Customer::new(lmtp, pipelining, &mut rng);
    let (mut p2c, mut c2p) = (Pipe::default(), Pipe::default());
    c.advance(&mut c2p, &mut rng);
    let mut rounds = 0;
    while !(p.done && c.closed) {
        rounds += 1;
        assert!(rounds < 1_000_000, "seed {seed}: no end");
        if rng.one_in(2) {
            if c2p.deliver(&mut p.input, &mut rng) {
                p.advance(&mut p2c, &mut rng);
            }
        } else if p2c.deliver(&mut c.input, &mut rng) {
            c.advance(&mut c2p, &mut rng);
        }
        let waiting = p2c.0.is_empty() && c2p.0.is_empty();
        assert!(!waiting || (p.done && c.closed), "seed {seed}: both sides wait");
    }
    c.finish(&mut rng);
    check(seed, lmtp, &msgs, &p.outcomes, &c.local.mta.delivered);
    stats.codes.extend(p.outcomes.iter().map(|o| o.1));
    stats.deferred += c.stats.deferred;
    stats.again += p.again;
    let delivered: BTreeSet<&str> = p.outcomes.iter().filter(|o| o.2).map(|o| o.0.as_str()).collect();
    for m in &msgs {
        if m.rcpts.iter().any(|r| delivered.contains(r.as_str())) {
            stats.big += usize::from(m.body.len() > FLUSH_AT);
            stats.data += usize::from(m.size > BDAT_MAX);
        }
    }
}

fn check(seed: u64, lmtp: bool, msgs: &[Msg], outcomes: &[(String, u16, bool)], delivered: &[Delivery]) {
    let ctx = |r: &str| format!("seed {seed}, lmtp {lmtp}, {r}");
    // Every recipient: exactly one final outcome, the one its script says.
    let mut seen: HashMap<&str, (u16, bool)> = HashMap::new();
    for (r, code, ok) in outcomes {
        assert!(seen.insert(r, (*code, *ok)).is_none(), "{}: two outcomes", ctx(r));
    }
    // Every delivery at the local MTA, per recipient.
    let mut got: HashMap<&str, Vec<&Delivery>> = HashMap::new();
    for d in delivered {
        for r in &d.1 {
            got.entry(r).or_default().push(d);
        }
    }
    for m in msgs {
        for r in &m.rcpts {
            let want = expected(lmtp, &m.from, r);
            let (code, ok) = *seen
                .get(r.as_str())
                .unwrap_or_else(|| panic!("{}: no outcome", ctx(r)));
            assert_eq!(code, want, "{}", ctx(r));
            assert_eq!(ok, want == 250, "{}", ctx(r));
            let copies = got.remove(r.as_str()).unwrap_or_default();
            if ok {
                assert_eq!(copies.len(), 1, "{}: delivered {} times", ctx(r), copies.len());
                let (from, _, content) = copies[0];
                assert_eq!(from, &m.from, "{}", ctx(r));
                assert!(content.starts_with(b"Received: "), "{}", ctx(r));
                assert!(content.ends_with(&m.body), "{}: content changed", ctx(r));
                let header = &content[..content.len() - m.body.len()];
                assert!(header.ends_with(b"\r\n") && !header.windows(2).any(|w| w == b"\r\n\r\n"));
            } else {
                assert!(copies.is_empty(), "{}: refused yet delivered", ctx(r));
            }
        }
    }
    assert!(
        got.is_empty(),
        "seed {seed}: deliveries nobody sent: {:?}",
        got.keys()
    );
}

const SEEDS: u64 = 48;

fn sessions(first: u64, lmtp: bool, pipelining: bool) {
    let mut stats = Stats::default();
    for seed in first..first + SEEDS {
        session(seed, lmtp, pipelining, &mut stats);
    }
    // The seeds reach every outcome and every path that matters.
    let codes: Vec<u16> = stats.codes.iter().copied().collect();
    assert_eq!(codes, [250, 451, 452, 550, 554], "{stats:?}");
    assert_eq!(stats.deferred > 0, pipelining, "{stats:?}");
    assert_eq!(stats.again > 0, lmtp, "{stats:?}");
    assert!(stats.big > 0 && stats.data > 0, "{stats:?}");
}

#[test]
fn smtp_pipelining() {
    sessions(0, false, true);
}

#[test]
fn smtp_lockstep() {
    sessions(1000, false, false);
}

#[test]
fn lmtp_pipelining() {
    sessions(2000, true, true);
}

#[test]
fn lmtp_lockstep() {
    sessions(3000, true, false);
}
