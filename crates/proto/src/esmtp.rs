//! The ESMTP core that both server dialogues embed: the SMTP server ([`crate::smtp_server`]:
//! the provider's MX, and the customer's side of the reversed session) and the provider's ODMR
//! front half ([`crate::odmr`]). It holds what an ESMTP server is before it knows what it
//! serves: the output buffer and the command line reader, the error count, the greeting and the
//! EHLO/HELO/QUIT replies, STARTTLS, and AUTH (the host side of [`crate::auth`]). The machines
//! keep their own states and commands; they read every line through [`Esmtp::next`] and write
//! every reply through [`Esmtp::reply`], so what follows holds for both of them alike.
//!
//! Invariants:
//! - **Only a clean line is a command.** A line ended by a bare LF, an overlong one (discarded as it
//!   arrives, see [`crate::line`]) or one with NUL or a bare CR gets 500 and is never seen by
//!   the machine's command parser.
//! - **Lines of an AUTH exchange are AUTH's.** While an exchange is under way every line goes to
//!   [`crate::auth`] (and may be up to [`MAX_AUTH_LINE`] long), never to the command parser; an
//!   overlong one ends the exchange.
//! - **STARTTLS drops buffered input.** After the 220 ([`Esmtp::starttls`]) [`Esmtp::next`]
//!   consumes nothing and says [`EsmtpStep::START_TLS`] until [`Esmtp::tls_started`]: whatever the
//!   client sent behind STARTTLS stays in the buffer, for the driver to find and refuse (it must
//!   never be executed inside the TLS session: command injection). The handshake forgets the
//!   authentication (RFC 3207 §4.2).
//! - **Too many errors end the session.** Once the refused commands (5xx replies, the machine's
//!   and AUTH's but for its 535s, which count as failed attempts) exceed the limit, the next
//!   line is not read: 421, and [`EsmtpStep::CLOSE`].
//! - **Enhanced status codes only where they are offered** (RFC 2034 §4): replies carry their
//!   RFC 3463 code when the machine offers ENHANCEDSTATUSCODES, and none otherwise; the
//!   greeting, EHLO and HELO replies never do.
//! - **Replies keep command order** (RFC 2920 §3.2): while a verdict is outstanding
//!   ([`Esmtp::hold`]), replies wait behind it and follow it ([`Esmtp::release`]). AUTH is never
//!   read while replies are held (the machine does not let it pass the verdict), so its replies
//!   go straight out.

use crate::auth::{AuthAnswer, AuthConfig, AuthEvent, AuthResult, AuthServer, AuthStep, MAX_AUTH_LINE};
use crate::line::{Line, LineReader};
use crate::reply::Reply;
use bytes::{Bytes, BytesMut};

/// The public methods both machines have that only ask their ESMTP core (kept in a field named
/// `esmtp`): one definition, so that the two APIs say the same.
macro_rules! esmtp_accessors {
    () => {
        /// Bytes to send. The driver writes them out and clears the buffer.
        pub fn output(&mut self) -> &mut Vec<u8> {
            self.esmtp.output()
        }

        /// The account the client authenticated as, if any (set in the call that writes the
        /// 235).
        pub fn account(&self) -> Option<&str> {
            self.esmtp.account()
        }

        /// The SASL mechanism of the last AUTH command (for logs).
        pub fn mechanism(&self) -> Option<&str> {
            self.esmtp.mechanism()
        }

        /// A user whose SCRAM proof just failed
        /// ([`AuthServer::take_proof_failure`](crate::auth::AuthServer::take_proof_failure)): the
        /// driver counts it towards the AUTH lockout.
        pub fn take_auth_failure(&mut self) -> Option<String> {
            self.esmtp.take_auth_failure()
        }

        /// The TLS handshake produced a verified client certificate: offer SASL EXTERNAL.
        pub fn set_client_cert(&mut self) {
            self.esmtp.set_client_cert();
        }

        /// TLS is active before the dialogue begins (the implicit-TLS listener, or the reversed
        /// session on a connection that negotiated TLS before ATRN): STARTTLS is not offered.
        pub fn set_tls(&mut self) {
            self.esmtp.set_tls();
        }

        /// TLS is active (implicit, or STARTTLS and its handshake done).
        pub fn is_tls(&self) -> bool {
            self.esmtp.is_tls()
        }

        /// The server is shutting down: queue the 421 that tells the client so (RFC 5321
        /// §3.8), in this listener's form (with an enhanced status code only where
        /// ENHANCEDSTATUSCODES is offered), ahead of any reply held behind a verdict. The
        /// session is over: the driver writes it and closes.
        pub fn shutdown(&mut self) {
            self.esmtp.shutdown();
        }

        /// The connection failed (`why`: a read timed out): queue the 421 that tells the
        /// client why before closing (RFC 5321 §4.5.3.2.7). The session is over, as with
        /// [`Self::shutdown`].
        pub fn abort(&mut self, why: &str) {
            self.esmtp.abort(why);
        }
    };
}
pub(crate) use esmtp_accessors;

/// What the listener is: fixed for a session.
pub(crate) struct Listener {
    pub hostname: String,
    /// ENHANCEDSTATUSCODES is offered: replies carry their RFC 3463 codes.
    pub enhanced: bool,
    /// Longest command line, CRLF included (AUTH exchange lines may be longer).
    pub max_line: usize,
    /// After this many refused commands the session ends with 421.
    pub max_errors: usize,
    /// STARTTLS is configured (offered while TLS is not active and no one authenticated).
    pub starttls: bool,
}

/// The steps every ESMTP machine has, which the core returns through [`Next::Step`].
pub(crate) trait EsmtpStep {
    /// No complete line: flush the output, read more.
    const NEED_INPUT: Self;
    /// The 220 to STARTTLS is out: run the handshake; nothing more is read until then.
    const START_TLS: Self;
    /// The session is over (the last reply is written).
    const CLOSE: Self;
    /// An AUTH lookup for the driver; the machine waits for its answer.
    fn auth(step: AuthStep) -> Self;
}

/// What [`Esmtp::next`] found in the input.
#[derive(Debug)]
pub(crate) enum Next<S> {
    /// A step for the driver: [`EsmtpStep::NEED_INPUT`], [`EsmtpStep::START_TLS`],
    /// [`EsmtpStep::CLOSE`] (too many errors or AUTH failures: the 421 is written) or an AUTH
    /// lookup.
    Step(S),
    /// A line was answered (refused, or a line of the AUTH exchange): look again.
    Again,
    /// A command line for the machine, without its CRLF (no NUL, no bare CR in it).
    Command(Bytes),
}

impl<S> Next<S> {
    /// The step to return, a command line handed to the machine's `command` (which answers with
    /// its step, if any); `None`: nothing to return, look again.
    pub fn or_command(self, command: impl FnOnce(&[u8]) -> Option<S>) -> Option<S> {
        match self {
            Next::Step(step) => Some(step),
            Next::Again => None,
            Next::Command(line) => command(&line),
        }
    }
}

/// What the driver's answer to an AUTH lookup did ([`Esmtp::auth_answer`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Answered {
    /// `Some(true)`: authenticated (235 written); `Some(false)`: failed (535); `None`: neither
    /// yet (SCRAM goes on), or a temporary failure (454).
    pub authenticated: Option<bool>,
    /// A lookup is still outstanding (the answer did not fit it): keep waiting for one.
    pub waiting: bool,
    /// Too many failures: the 421 is written; close.
    pub close: bool,
}

pub(crate) struct Esmtp {
    listener: Listener,
    out: Vec<u8>,
    /// Replies held behind an outstanding verdict ([`Esmtp::hold`]).
    held: Vec<u8>,
    holding: bool,
    lines: LineReader,
    errors: usize,
    tls: bool,
    client_cert: bool,
    /// The 220 to STARTTLS is written and the handshake has not happened yet.
    awaiting_tls: bool,
    auth: Option<AuthServer>,
}

impl Esmtp {
    /// A session whose first reply is the 220 greeting, `<hostname> <service>`.
    pub fn new(listener: Listener, service: &str) -> Self {
        let mut e = Esmtp {
            out: Vec::with_capacity(1024),
            held: Vec::new(),
            holding: false,
            lines: LineReader::new(listener.max_line),
            errors: 0,
            tls: false,
            client_cert: false,
            awaiting_tls: false,
            auth: None,
            listener,
        };
        let greeting = format!("{} {service}", e.listener.hostname);
        e.reply(Reply::new(220, "", greeting));
        e
    }

    /// Bytes to send. The driver writes them out and clears the buffer.
    pub fn output(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// Queue a reply; a 5xx counts towards the error limit.
    pub fn reply(&mut self, r: Reply) {
        if r.is_permanent() {
            self.errors += 1;
        }
        self.reply_uncounted(r);
    }

    /// Queue a reply that does not count as an error, whatever its code.
    pub fn reply_uncounted(&mut self, r: Reply) {
        let out = if self.holding {
            &mut self.held
        } else {
            &mut self.out
        };
        r.write(out, self.listener.enhanced);
    }

    /// The 421 of a server shutting down, ahead of any held reply.
    pub fn shutdown(&mut self) {
        let text = format!("{} shutting down, try again later", self.listener.hostname);
        Reply::new(421, "4.3.2", text).write(&mut self.out, self.listener.enhanced);
    }

    /// The 421 of a connection that failed (`why`), ahead of any held reply.
    pub fn abort(&mut self, why: &str) {
        let text = format!("{} {why}, closing", self.listener.hostname);
        Reply::new(421, "4.4.2", text).write(&mut self.out, self.listener.enhanced);
    }

    /// From now on replies wait behind a verdict still to come ([`Esmtp::release`]).
    pub fn hold(&mut self) {
        self.holding = true;
    }

    /// Replies are held behind an outstanding verdict.
    pub fn holding(&self) -> bool {
        self.holding
    }

    /// The verdict the held replies waited for: it goes out, and they follow it.
    pub fn release(&mut self, verdict: Reply) {
        self.holding = false;
        self.reply(verdict);
        self.out.extend_from_slice(&self.held);
        self.held.clear();
    }

    /// The next line of input, once the session may read one.
    pub fn next<S: EsmtpStep>(&mut self, input: &mut BytesMut) -> Next<S> {
        if self.awaiting_tls {
            return Next::Step(S::START_TLS);
        }
        let auth_errors = self.auth.as_ref().map_or(0, AuthServer::errors);
        if self.errors + auth_errors > self.listener.max_errors {
            let text = format!("{} too many errors, closing", self.listener.hostname);
            self.reply(Reply::new(421, "4.7.0", text));
            return Next::Step(S::CLOSE);
        }
        let exchange = self.in_auth_exchange();
        self.lines.set_max(if exchange {
            MAX_AUTH_LINE
        } else {
            self.listener.max_line
        });
        let line = match self.lines.next_line(input) {
            None => return Next::Step(S::NEED_INPUT),
            Some(Line::TooLong) => {
                if let Some(a) = self.auth.as_mut() {
                    a.abort();
                }
                self.reply(Reply::new(500, "5.5.6", "Line too long"));
                return Next::Again;
            }
            Some(Line::BareLf) => {
                let text = "Bare LF is not allowed; end lines with CRLF";
                self.reply(Reply::new(500, "5.5.2", text));
                return Next::Again;
            }
            Some(Line::Ok(l)) => l,
        };
        match self.auth.as_mut() {
            Some(a) if exchange => {
                let ev = a.line(&line, &mut self.out);
                auth_step(ev).map_or(Next::Again, Next::Step)
            }
            _ if line.iter().any(|&b| b == 0 || b == b'\r') => {
                self.reply(Reply::new(500, "5.5.2", "NUL or bare CR in command"));
                Next::Again
            }
            _ => Next::Command(line),
        }
    }

    /// The 250 to EHLO: the greeting line, the service `keywords`, HELP.
    pub fn ehlo(&mut self, name: &str, keywords: Vec<String>) {
        let mut lines = Vec::with_capacity(keywords.len() + 2);
        lines.push(format!("{} greets {name}", self.listener.hostname));
        lines.extend(keywords);
        lines.push("HELP".into());
        self.reply(Reply::multi(250, lines));
    }

    /// The 250 to HELO.
    pub fn helo(&mut self) {
        self.reply(Reply::new(250, "", self.listener.hostname.clone()));
    }

    /// EHLO or HELO without a usable name.
    pub fn helo_syntax(&mut self, verb: &str) {
        self.reply(Reply::new(501, "5.5.4", format!("Syntax: {verb} hostname")));
    }

    /// The 221 to QUIT; the machine closes.
    pub fn quit(&mut self) {
        let text = format!("{} closing connection", self.listener.hostname);
        self.reply(Reply::new(221, "2.0.0", text));
    }

    /// 250 OK (NOOP, RSET).
    pub fn ok(&mut self) {
        self.reply(Reply::new(250, "2.0.0", "OK"));
    }

    /// 500: not a command we know.
    pub fn unrecognized(&mut self) {
        self.reply(Reply::new(500, "5.5.2", "Command unrecognized"));
    }

    /// 502: a command we know of but do not implement `here`.
    pub fn not_implemented(&mut self, verb: &str, here: &str) {
        self.reply(Reply::new(
            502,
            "5.5.1",
            format!("{verb} not implemented on {here}"),
        ));
    }

    /// STARTTLS may be used now: it is configured and TLS is not active yet.
    pub fn may_start_tls(&self) -> bool {
        self.listener.starttls && !self.tls
    }

    /// STARTTLS is offered in EHLO: it may be used, and no one has authenticated (the handshake
    /// would forget that).
    pub fn offers_starttls(&self) -> bool {
        self.may_start_tls() && self.account().is_none()
    }

    /// The EHLO keyword for STARTTLS, where it is offered.
    pub fn starttls_keyword(&self) -> Option<String> {
        self.offers_starttls().then(|| "STARTTLS".into())
    }

    /// `STARTTLS`, where the machine allows it: 501 with arguments, else the machine's
    /// `refusal` if it has one, else the 220, after which nothing more is read until
    /// [`Esmtp::tls_started`]. Whether the handshake is to start.
    pub fn starttls(&mut self, has_args: bool, refusal: Option<Reply>) -> bool {
        if has_args {
            self.reply(Reply::new(501, "5.5.4", "STARTTLS takes no arguments"));
            return false;
        }
        if let Some(r) = refusal {
            self.reply(r);
            return false;
        }
        self.reply(Reply::new(220, "2.0.0", "Ready to start TLS"));
        self.awaiting_tls = true;
        true
    }

    /// The TLS handshake after STARTTLS succeeded: lines are read again, and the
    /// authentication is forgotten (RFC 3207 §4.2).
    pub fn tls_started(&mut self) {
        self.tls = true;
        self.awaiting_tls = false;
        if let Some(a) = self.auth.as_mut() {
            a.reset();
        }
    }

    /// TLS is active (the connection was TLS from the start).
    pub fn set_tls(&mut self) {
        self.tls = true;
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The TLS handshake produced a verified client certificate: offer SASL EXTERNAL.
    pub fn set_client_cert(&mut self) {
        self.client_cert = true;
    }

    /// Offer AUTH: `seed` random per session and `unix_time` the current time, which make
    /// CRAM-MD5 challenges and SCRAM nonces unique. AUTH replies carry enhanced codes where the
    /// listener offers them.
    pub fn enable_auth(&mut self, cfg: AuthConfig, seed: u64, unix_time: u64) {
        let host = self.listener.hostname.clone();
        let enhanced = self.listener.enhanced;
        self.auth = Some(AuthServer::new(cfg, host, enhanced, seed, unix_time));
    }

    pub fn auth_offered(&self) -> bool {
        self.auth.is_some()
    }

    /// The EHLO keyword for AUTH with its mechanisms, where AUTH is offered and no one has
    /// authenticated yet.
    pub fn auth_keyword(&self) -> Option<String> {
        let a = self.auth.as_ref().filter(|a| a.account().is_none())?;
        let mechs = a.mechanisms(self.tls, self.client_cert);
        Some(format!("AUTH {}", mechs.join(" ")))
    }

    /// The authenticated account, once the 235 is written.
    pub fn account(&self) -> Option<&str> {
        self.auth.as_ref().and_then(AuthServer::account)
    }

    /// The SASL mechanism of the last AUTH command (for logs).
    pub fn mechanism(&self) -> Option<&str> {
        self.auth.as_ref().and_then(AuthServer::mechanism)
    }

    /// A user whose SCRAM proof just failed ([`AuthServer::take_proof_failure`]).
    pub fn take_auth_failure(&mut self) -> Option<String> {
        self.auth.as_mut().and_then(AuthServer::take_proof_failure)
    }

    /// An AUTH exchange is under way: the next line is part of it.
    pub fn in_auth_exchange(&self) -> bool {
        self.auth.as_ref().is_some_and(AuthServer::in_exchange)
    }

    /// `AUTH <args>`, where the machine allows it: the step for the driver, if there is one.
    pub fn auth_command<S: EsmtpStep>(&mut self, args: &[u8]) -> Option<S> {
        let args = String::from_utf8_lossy(args).trim().to_string();
        let (tls, cert) = (self.tls, self.client_cert);
        let ev = self.auth.as_mut()?.command(&args, tls, cert, &mut self.out);
        auth_step(ev)
    }

    /// The driver's answer to the outstanding AUTH lookup; `None` where AUTH is not offered.
    pub fn auth_answer(&mut self, answer: AuthAnswer) -> Option<Answered> {
        let a = self.auth.as_mut()?;
        let r = a.answer(answer, &mut self.out);
        Some(Answered {
            authenticated: match r {
                AuthResult::Succeeded => Some(true),
                AuthResult::Failed | AuthResult::FailedClose => Some(false),
                AuthResult::Pending => None,
            },
            waiting: a.awaiting(),
            close: r == AuthResult::FailedClose,
        })
    }
}

/// The step an AUTH event asks for, if any.
fn auth_step<S: EsmtpStep>(ev: AuthEvent) -> Option<S> {
    match ev {
        AuthEvent::Continue => None,
        AuthEvent::Ask(step) => Some(S::auth(step)),
        AuthEvent::Close => Some(S::CLOSE),
    }
}
