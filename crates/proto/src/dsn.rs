//! Delivery Status Notifications: the RFC 3464 report in its RFC 6522 `multipart/report`
//! container, built from plain data, under the rules of RFC 3461. No store, no clock, no I/O: the
//! bounce job gathers the facts, calls [`compose`] and queues the bytes with `MAIL FROM:<>`.
//!
//! Invariants:
//! - **Never panics, whatever the input.** Caller text is cleaned of control characters before it
//!   goes into a header or a report field, so nothing from outside can start a field of its own.
//! - **CRLF line ends, and no generated line over 998 octets** (RFC 5322 §2.1.1): the text is
//!   wrapped, long fields are folded. Returned content is copied as it was received.
//! - **`message/delivery-status` is 7bit** (RFC 3464 §2.1): non-ASCII addresses use the `utf-8`
//!   address type in its 7-bit `utf-8-addr-xtext` form (RFC 6533 §3), other non-ASCII becomes `?`.
//! - **Field order is that of the RFC 3464 §2.2/§2.3 ABNF**, not that of RFC 3461's example
//!   (§10.7). `Original-Envelope-Id` only with ENVID, `Diagnostic-Code` only with `Remote-MTA`,
//!   `Will-Retry-Until` only for `delayed` (RFC 3461 §6.3, RFC 3464 §2.3.5, §2.3.9).
//! - **What is returned** (RFC 3461 §4.3, §6.2; RFC 6522 §3, §4): the whole message only when a
//!   recipient failed, the sender did not say RET=HDRS and it fits `max_return`; otherwise its
//!   header section as `text/rfc822-headers`. A report without failures carries headers only.
//! - **[project] 8-bit content is returned as it is** (not re-encoded, RFC 6522 §3): the part is
//!   labelled `Content-Transfer-Encoding: 8bit` and [`Composed::eight_bit`] tells the sender to use
//!   `BODY=8BITMIME`. The message arrived over an 8BITMIME hop, and re-encoding a whole message is
//!   heavy and error-prone. A caller whose outbound path has no 8BITMIME sets
//!   [`Report::seven_bit_only`]: 8-bit content then falls back to headers only, or to no
//!   returned part when the headers themselves are 8-bit.
//! - The human-readable text is `us-ascii`, or `utf-8` in quoted-printable when it names a
//!   non-ASCII address, so the text part never forces 8-bit transport.

pub use crate::envelope::Ret;
use crate::envelope::{address_domain, decode_orcpt, param, xtext_decode};
use crate::reply::Reply;

/// Longest line RFC 5322 §2.1.1 allows, without CRLF.
pub const MAX_LINE: usize = 998;
/// Width the human-readable text is wrapped to.
const TEXT_WIDTH: usize = 76;

/// RFC 3464 §2.3.3 (`expanded` is not used: odmr does not expand aliases).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Failed,
    Delayed,
    Delivered,
    Relayed,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
        }
    }

    /// The status to use when nothing more precise is known (RFC 3461 §6.3(g)).
    fn default_status(self) -> &'static str {
        match self {
            Action::Failed => "5.0.0",
            Action::Delayed => "4.0.0",
            Action::Delivered | Action::Relayed => "2.0.0",
        }
    }
}

/// One recipient block of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedRecipient {
    /// From the stored ORCPT, decoded: `"rfc822;bob@example.org"` ([`orcpt`] gives it).
    pub original_recipient: Option<String>,
    /// The envelope address exactly as received, case kept (RFC 3464 §2.3.2).
    pub final_recipient: String,
    pub action: Action,
    /// RFC 3463 code, e.g. "5.1.1", "4.4.7", "4.0.0". Anything that is not one becomes the
    /// action's `x.0.0`.
    pub status: String,
    /// The customer's EHLO name or `[ip]`, when an SMTP attempt gave the reply.
    pub remote_mta: Option<String>,
    /// The exact SMTP reply, lines separated by CRLF or LF ([`diagnostic_from_reply`] gives it).
    /// Written only with `remote_mta` (RFC 3461 §6.3(i)).
    pub diagnostic: Option<String>,
    /// Unix seconds.
    pub last_attempt: Option<i64>,
    /// Unix seconds; written only for [`Action::Delayed`] (RFC 3464 §2.3.9).
    pub will_retry_until: Option<i64>,
}

/// The connection the original message came in on, for `Received-From-MTA` (RFC 3464 §2.2.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedFrom {
    /// The client's HELO/EHLO name.
    pub helo: String,
    pub ip: String,
}

/// The original message, and how much of it the sender asked for back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Returned<'a> {
    /// Return the header section (RET=HDRS). The slice is the message, or enough of its start
    /// to hold the whole header section.
    HeadersOnly(&'a [u8]),
    /// Return the whole message if the rules allow (see the module invariants), else its
    /// header section. The slice must be the whole message.
    Full(&'a [u8]),
    /// Nothing to return (e.g. the content is gone).
    Nothing,
}

impl<'a> Returned<'a> {
    /// What the MAIL parameters ask for (RFC 3461 §4.3). **[project]** Without RET the whole
    /// message is returned for failures, within the caller's `max_return` (the MTA's choice).
    pub fn for_ret(ret: Option<Ret>, message: &'a [u8]) -> Self {
        match ret {
            Some(Ret::Hdrs) => Returned::HeadersOnly(message),
            Some(Ret::Full) | None => Returned::Full(message),
        }
    }
}

/// Everything a DSN says. All times are unix seconds, written in UTC (`+0000`).
#[derive(Debug, Clone)]
pub struct Report<'a> {
    /// This host's name, for `Reporting-MTA` and the Message-ID.
    pub reporting_mta: String,
    /// The postmaster address for `From:` (RFC 3464 §2: it should reach a human).
    pub postmaster: String,
    /// The original message's reverse-path, for `To:` (and the caller's `RCPT TO`). Never empty:
    /// no DSN goes to the null reverse-path (RFC 3461 §5.2, RFC 5321 §6.1).
    pub to: String,
    /// ENVID, decoded ([`envid`] gives it).
    pub envid: Option<String>,
    /// When the original message arrived.
    pub arrival: i64,
    pub received_from_mta: Option<ReceivedFrom>,
    /// The time of the report: `Date:`.
    pub now: i64,
    /// Unique per DSN (e.g. queue id and time): Message-ID and MIME boundary are built from it.
    pub unique: String,
    /// The human-readable part (see [`explain_refused`] and the others). Long lines are wrapped.
    pub explanation: String,
    pub recipients: Vec<ReportedRecipient>,
    pub returned: Returned<'a>,
    /// Largest message returned whole; above it only its header section is returned
    /// (RFC 3461 §6.2 allows this "implementation limit").
    pub max_return: usize,
    /// The outbound path cannot carry 8-bit: never return 8-bit content.
    pub seven_bit_only: bool,
}

/// How the original message was returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnedAs {
    Nothing,
    /// `text/rfc822-headers`, or `message/global-headers` for 8-bit headers (RFC 6533 §6.3).
    Headers,
    /// `message/rfc822`, or `message/global` for 8-bit headers (RFC 6532 §3.7).
    Full,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Composed {
    /// The whole message, header and body, CRLF line ends.
    pub bytes: Vec<u8>,
    /// Some octet is not ASCII: send with `BODY=8BITMIME`.
    pub eight_bit: bool,
    /// The `To:` address (the reverse-path) or the postmaster address in `From:` is not ASCII:
    /// send with `SMTPUTF8` (RFC 6531 §3.2: UTF-8 header fields need it).
    pub smtputf8: bool,
    pub returned: ReturnedAs,
    /// Without angle brackets.
    pub message_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DsnError {
    #[error("no DSN is sent to the null reverse-path")]
    NullReversePath,
    #[error("a DSN needs at least one recipient")]
    NoRecipients,
}

/// Build the DSN message. The envelope is the caller's: `MAIL FROM:<>`, `RCPT TO:<report.to>`,
/// no RET, `NOTIFY=NEVER` if the next hop offers DSN (RFC 3461 §6.1).
pub fn compose(r: &Report<'_>) -> Result<Composed, DsnError> {
    let to = clean(r.to.trim().trim_start_matches('<').trim_end_matches('>'));
    if to.is_empty() {
        return Err(DsnError::NullReversePath);
    }
    if r.recipients.is_empty() {
        return Err(DsnError::NoRecipients);
    }
    let any_failed = r.recipients.iter().any(|x| x.action == Action::Failed);
    let any_delayed = r.recipients.iter().any(|x| x.action == Action::Delayed);

    let text = text_part(&r.explanation);
    let status = status_part(r);
    let (returned, ret_as, ret_type, ret_8bit) = returned_part(r, any_failed);

    let host = host_token(&r.reporting_mta);
    let unique: String = r
        .unique
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(200)
        .collect();
    let boundary = boundary(&unique, &[&text.body, &status, returned]);
    let message_id = format!("dsn.{unique}@{host}");
    // [project] RFC 3461 and RFC 3464 prescribe no Subject; these are ours.
    let subject = if any_failed {
        "Undelivered Mail Returned to Sender"
    } else if any_delayed {
        "Delayed Mail (still being retried)"
    } else {
        "Successful Mail Delivery Report"
    };

    let mut out = Vec::with_capacity(2048 + returned.len());
    for (name, value) in [
        ("From", format!("Mail Delivery System <{}>", clean(&r.postmaster))),
        ("To", to.clone()),
        ("Subject", subject.to_string()),
        ("Date", rfc5322_date(r.now)),
        ("Message-ID", format!("<{message_id}>")),
        ("MIME-Version", "1.0".to_string()),
        // RFC 3834 §5: automatic replies to this must not be sent.
        ("Auto-Submitted", "auto-replied".to_string()),
    ] {
        push_field(&mut out, name, &value);
    }
    // RFC 6522 §3: report-type names the second part.
    push_line(
        &mut out,
        "Content-Type: multipart/report; report-type=delivery-status;",
    );
    push_line(&mut out, &format!("\tboundary=\"{boundary}\""));
    push_line(&mut out, "");

    let part = |out: &mut Vec<u8>, headers: &[&str], body: &[u8]| {
        push_line(out, &format!("--{boundary}"));
        for h in headers {
            push_line(out, h);
        }
        push_line(out, "");
        out.extend_from_slice(body);
        if !body.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        // The CRLF before the next delimiter belongs to it (RFC 2046 §5.1.1): this keeps the
        // part's own last line end.
        out.extend_from_slice(b"\r\n");
    };
    // 1. The human-readable explanation (RFC 6522 §3).
    let text_headers: Vec<&str> = if text.qp {
        vec![
            "Content-Type: text/plain; charset=utf-8",
            "Content-Transfer-Encoding: quoted-printable",
        ]
    } else {
        vec!["Content-Type: text/plain; charset=us-ascii"]
    };
    part(&mut out, &text_headers, &text.body);
    // 2. The machine-readable report, always 7bit (RFC 3464 §2.1).
    part(&mut out, &["Content-Type: message/delivery-status"], &status);
    // 3. The returned content (RFC 6522 §4).
    if ret_as != ReturnedAs::Nothing {
        let ct = format!("Content-Type: {ret_type}");
        if ret_8bit {
            part(&mut out, &[&ct, "Content-Transfer-Encoding: 8bit"], returned);
        } else {
            part(&mut out, &[&ct], returned);
        }
    }
    push_line(&mut out, &format!("--{boundary}--"));

    Ok(Composed {
        eight_bit: !out.is_ascii(),
        smtputf8: !to.is_ascii() || !r.postmaster.is_ascii(),
        bytes: out,
        returned: ret_as,
        message_id,
    })
}

struct TextPart {
    body: Vec<u8>,
    qp: bool,
}

fn text_part(explanation: &str) -> TextPart {
    let mut lines = Vec::new();
    for l in explanation.replace("\r\n", "\n").split('\n') {
        let l: String = l
            .chars()
            .map(|c| if c == '\t' { ' ' } else { c })
            .filter(|c| !c.is_control())
            .collect();
        wrap(&l, TEXT_WIDTH, &mut lines);
    }
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let text = lines.join("\r\n") + "\r\n";
    if text.is_ascii() {
        return TextPart {
            body: text.into_bytes(),
            qp: false,
        };
    }
    TextPart {
        body: quoted_printable(&lines),
        qp: true,
    }
}

/// Greedy word wrap of one line to `width`; lines at most `width + 2` long are left alone, so
/// short pre-formatted lines survive. A word longer than [`MAX_LINE`] is cut.
fn wrap(line: &str, width: usize, out: &mut Vec<String>) {
    if line.len() <= width + 2 {
        out.push(line.to_string());
        return;
    }
    // Indentation is kept, within reason: it must leave room for the words.
    let indent = " ".repeat(line.chars().take_while(|c| *c == ' ').count().min(16));
    let mut cur = String::new();
    for word in line.split(' ').filter(|w| !w.is_empty()) {
        let mut word = word;
        while word.len() > MAX_LINE - indent.len() {
            let cut = floor_char_boundary(word, MAX_LINE - indent.len());
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            out.push(format!("{indent}{}", &word[..cut]));
            word = &word[cut..];
        }
        if !cur.is_empty() && cur.len() + 1 + word.len() > width {
            out.push(std::mem::take(&mut cur));
        }
        if cur.is_empty() {
            cur.push_str(&indent);
        } else {
            cur.push(' ');
        }
        cur.push_str(word);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// RFC 2045 §6.7 quoted-printable of text lines: lines at most 76 characters, soft breaks `=`.
fn quoted_printable(lines: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in lines {
        let mut col = 0;
        let bytes = line.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            let last = i + 1 == bytes.len();
            let plain = (b == b' ' && !last) || ((b'!'..=b'~').contains(&b) && b != b'=');
            let token = if plain {
                vec![b]
            } else {
                format!("={b:02X}").into_bytes()
            };
            // 76 characters a line; a soft break takes one of them, except after the last token.
            let room = if last { 76 } else { 75 };
            if col + token.len() > room {
                out.extend_from_slice(b"=\r\n");
                col = 0;
            }
            out.extend_from_slice(&token);
            col += token.len();
        }
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The `message/delivery-status` body (RFC 3464 §2.1–2.3).
fn status_part(r: &Report<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    // Per-message fields in ABNF order (RFC 3464 §2.2).
    if let Some(e) = &r.envid {
        // RFC 3461 §6.3(a): decoded; ENVID is printable ASCII by §4.4.
        push_field(&mut out, "Original-Envelope-Id", &ascii(e));
    }
    push_field(&mut out, "Reporting-MTA", &mta_name(&r.reporting_mta));
    if let Some(f) = &r.received_from_mta {
        let ip = ascii(&f.ip).replace(['(', ')', '\\'], "");
        push_field(
            &mut out,
            "Received-From-MTA",
            &format!("{} ({ip})", mta_name(&f.helo)),
        );
    }
    push_field(&mut out, "Arrival-Date", &rfc5322_date(r.arrival));
    for x in &r.recipients {
        // Each recipient block is preceded by a blank line (RFC 3464 §2.1).
        push_line(&mut out, "");
        if let Some(o) = &x.original_recipient {
            push_field(&mut out, "Original-Recipient", &original_recipient(o));
        }
        push_field(&mut out, "Final-Recipient", &typed_address(&x.final_recipient));
        push_field(&mut out, "Action", x.action.as_str());
        let status =
            normalise_status(&x.status, x.action).unwrap_or_else(|| x.action.default_status().into());
        push_field(&mut out, "Status", &status);
        if let Some(m) = &x.remote_mta {
            push_field(&mut out, "Remote-MTA", &mta_name(m));
            if let Some(d) = &x.diagnostic {
                push_diagnostic(&mut out, d);
            }
        }
        if let Some(t) = x.last_attempt {
            push_field(&mut out, "Last-Attempt-Date", &rfc5322_date(t));
        }
        if let (Action::Delayed, Some(t)) = (x.action, x.will_retry_until) {
            push_field(&mut out, "Will-Retry-Until", &rfc5322_date(t));
        }
    }
    out
}

/// `Diagnostic-Code: smtp; <reply>`, each further reply line on a continuation line of its own
/// (RFC 3461 §9.2), so unfolding gives back the reply's lines joined by a space.
fn push_diagnostic(out: &mut Vec<u8>, reply: &str) {
    let lines: Vec<String> = reply
        .replace("\r\n", "\n")
        .split('\n')
        .map(|l| ascii(l.trim_end()))
        .filter(|l| !l.is_empty())
        .collect();
    let Some((first, rest)) = lines.split_first() else {
        return;
    };
    for l in fold(&format!("Diagnostic-Code: smtp; {first}")) {
        push_line(out, &l);
    }
    for l in rest {
        for f in fold(&format!(" {l}")) {
            push_line(out, &f);
        }
    }
}

/// The returned part: (content, kind, content type, needs 8bit).
fn returned_part<'a>(r: &Report<'a>, any_failed: bool) -> (&'a [u8], ReturnedAs, &'static str, bool) {
    let (mut content, mut kind) = match r.returned {
        Returned::Nothing => (&[][..], ReturnedAs::Nothing),
        Returned::HeadersOnly(m) => (header_section(m), ReturnedAs::Headers),
        // RFC 3461 §6.2: the whole message only for failures, and within our limit.
        Returned::Full(m) if any_failed && m.len() <= r.max_return => (m, ReturnedAs::Full),
        Returned::Full(m) => (header_section(m), ReturnedAs::Headers),
    };
    if r.seven_bit_only && !content.is_ascii() {
        // RFC 6522 §3: content that may not survive the path goes back as headers only.
        (content, kind) = match kind {
            ReturnedAs::Full if header_section(content).is_ascii() => {
                (header_section(content), ReturnedAs::Headers)
            }
            _ => (&[][..], ReturnedAs::Nothing),
        };
    }
    if content.is_empty() {
        return (&[], ReturnedAs::Nothing, "", false);
    }
    let utf8_headers = !header_section(content).is_ascii();
    let ty = match (kind, utf8_headers) {
        (ReturnedAs::Full, false) => "message/rfc822",
        (ReturnedAs::Full, true) => "message/global",
        (_, false) => "text/rfc822-headers",
        (_, true) => "message/global-headers",
    };
    (content, kind, ty, !content.is_ascii())
}

/// The header section of a message: up to and including the first empty line, or the whole
/// message when there is none (RFC 6522 §4).
pub fn header_section(message: &[u8]) -> &[u8] {
    let mut start = 0;
    while start < message.len() {
        let end = memchr::memchr(b'\n', &message[start..]).map_or(message.len(), |i| start + i + 1);
        let line = &message[start..end];
        if line == b"\r\n" || line == b"\n" {
            return &message[..end];
        }
        start = end;
    }
    message
}

/// The enhanced status code at the start of a reply ("550 5.1.1 ..." → "5.1.1"; "550-5.1.1"
/// works too), with its class matching the reply code and without leading zeros (RFC 3464
/// §2.3.4). `None` when there is none: the caller then uses 5.0.0 / 4.0.0 (RFC 3461 §6.3(g)).
pub fn enhanced_status(reply: &str) -> Option<String> {
    let first = reply.lines().next()?.trim_start();
    let code = first.get(..3)?;
    if !code.bytes().all(|b| b.is_ascii_digit()) || !matches!(first.as_bytes().get(3), Some(b' ' | b'-')) {
        return None;
    }
    let word = first[4..].split_whitespace().next()?;
    let st = parse_status(word)?;
    (st.as_bytes()[0] == code.as_bytes()[0]).then_some(st)
}

/// `class.subject.detail`, class 2/4/5, subject and detail 1–3 digits; leading zeros dropped.
fn parse_status(s: &str) -> Option<String> {
    let mut it = s.split('.');
    let (c, sub, det) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || !matches!(c, "2" | "4" | "5") {
        return None;
    }
    let num = |p: &str| {
        (!p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse::<u16>().ok())?
    };
    Some(format!("{c}.{}.{}", num(sub)?, num(det)?))
}

/// A caller's status, checked and normalised; for `failed` the class must be 4 or 5 (an expiry
/// is `failed` with 4.4.7, RFC 3464 §2.3.3), for `delayed` 4, for the successes 2.
fn normalise_status(s: &str, action: Action) -> Option<String> {
    let st = parse_status(s.trim())?;
    let ok = match action {
        Action::Failed => !st.starts_with('2'),
        Action::Delayed => st.starts_with('4'),
        Action::Delivered | Action::Relayed => st.starts_with('2'),
    };
    ok.then_some(st)
}

/// A reply in its wire form, for [`ReportedRecipient::diagnostic`].
pub fn diagnostic_from_reply(reply: &Reply) -> String {
    let mut out = Vec::new();
    reply.write(&mut out, true);
    String::from_utf8_lossy(&out).trim_end().to_string()
}

/// An address as a report field types it (RFC 3464 §2.3.2): `rfc822;addr` when it is ASCII,
/// else `utf-8;` with every non-QCHAR as `\x{HEX}` (RFC 6533 §3 `utf-8-addr-xtext`), so the
/// part stays 7-bit.
fn typed_address(addr: &str) -> String {
    let addr = clean(addr);
    if addr.is_ascii() {
        return format!("rfc822;{addr}");
    }
    let mut out = String::from("utf-8;");
    for c in addr.chars() {
        if ('!'..='~').contains(&c) && !matches!(c, '\\' | '+' | '=') {
            out.push(c);
        } else {
            out.push_str(&format!("\\x{{{:X}}}", c as u32));
        }
    }
    out
}

/// `Original-Recipient` from the decoded ORCPT `type;address`.
fn original_recipient(o: &str) -> String {
    match o.split_once(';') {
        Some((ty, a)) if ty.eq_ignore_ascii_case("rfc822") || ty.eq_ignore_ascii_case("utf-8") => {
            typed_address(a)
        }
        Some((ty, a)) => format!("{};{}", ascii(ty), ascii(a)),
        None => typed_address(o),
    }
}

/// `dns; host` for a host name or an address literal; `x-local-hostname; name` for a name that
/// is not a domain (RFC 3461 §6.3(b) allows `dns` only for a real FQDN).
fn mta_name(host: &str) -> String {
    let h = host_token(host);
    let fqdn = h.contains('.')
        && h.split('.').all(|l| {
            !l.is_empty() && !l.starts_with('-') && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    let literal = h.starts_with('[') && h.ends_with(']');
    if fqdn || literal {
        format!("dns; {h}")
    } else {
        format!("x-local-hostname; {h}")
    }
}

/// A host name for a header: ASCII, no spaces or control characters, never empty.
fn host_token(h: &str) -> String {
    let t: String = ascii(h.trim()).chars().filter(|c| !c.is_whitespace()).collect();
    if t.is_empty() {
        "localhost".into()
    } else {
        t
    }
}

/// Control characters out: nothing from outside starts a field of its own.
fn clean(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).collect()
}

/// [`clean`], and non-ASCII as `?`: for the 7-bit report.
fn ascii(s: &str) -> String {
    clean(s)
        .chars()
        .map(|c| if c.is_ascii() { c } else { '?' })
        .collect()
}

fn push_line(out: &mut Vec<u8>, line: &str) {
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn push_field(out: &mut Vec<u8>, name: &str, value: &str) {
    for l in fold(&format!("{name}: {value}")) {
        push_line(out, &l);
    }
}

/// Fold a header line so no physical line exceeds [`MAX_LINE`] (RFC 5322 §2.2.3): break before
/// a space; a run without one that is too long is cut with a fold of its own (unfolding then
/// shows an extra space there; only absurd input gets this far).
fn fold(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = line.to_string();
    while cur.len() > MAX_LINE {
        let limit = floor_char_boundary(&cur, MAX_LINE);
        // Before a space, but not the one that starts a continuation line.
        let cut = match cur[..limit].rfind(' ') {
            Some(i) if i > 0 => i,
            _ => limit,
        };
        out.push(cur[..cut].to_string());
        let next = &cur[cut..];
        // A continuation line must start with whitespace.
        cur = if next.starts_with(' ') {
            next.to_string()
        } else {
            format!(" {next}")
        };
    }
    out.push(cur);
    out
}

/// A boundary that occurs nowhere in the parts (RFC 2046 §5.1.1): `=_dsn_UNIQUE`, or if the
/// content holds that (a returned DSN, or a sender who guessed it), `=_dsn_UNIQUE.1…1` with more
/// ones than any digit run following `=_dsn_UNIQUE.` in the content. "=_" cannot occur in
/// quoted-printable. One pass over the content, whatever it holds.
fn boundary(unique: &str, parts: &[&[u8]]) -> String {
    let base = format!("=_dsn_{unique}");
    let mut seen = false;
    let mut longest = 0;
    for p in parts {
        for i in memchr::memmem::find_iter(p, base.as_bytes()) {
            seen = true;
            let after = &p[i + base.len()..];
            if let Some(rest) = after.strip_prefix(b".") {
                longest = longest.max(rest.iter().take_while(|b| b.is_ascii_digit()).count());
            }
        }
    }
    if seen {
        format!("{base}.{}", "1".repeat(longest + 1))
    } else {
        base
    }
}

/// RFC 5322 §3.3 date-time in UTC with a numeric zone, e.g. `Tue, 07 May 2024 10:00:00 +0000`
/// (RFC 3464 §2.2.5 requires the numeric zone). Out-of-range input is clamped to 0000–9999.
pub fn rfc5322_date(unix: i64) -> String {
    // 0000-01-01 to 9999-12-31.
    let unix = unix.clamp(-62_167_219_200, 253_402_300_799);
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {d:02} {} {y:04} {:02}:{:02}:{:02} +0000",
        WD[days.rem_euclid(7) as usize],
        MON[(m - 1) as usize],
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

// ---- What the stored parameters ask for (RFC 3461 §5.2) ----

/// The NOTIFY keywords of stored RCPT parameters; `None` when NOTIFY was not given.
fn notify(rcpt_params: &str) -> Option<Vec<String>> {
    param(rcpt_params, "NOTIFY").map(|v| v.split(',').map(str::to_ascii_uppercase).collect())
}

/// A "failed" DSN is due: NOTIFY absent or with FAILURE (RFC 3461 §5.2.6).
pub fn wants_failure(rcpt_params: &str) -> bool {
    notify(rcpt_params).is_none_or(|n| n.iter().any(|k| k == "FAILURE"))
}

/// A "delayed" DSN may be sent: NOTIFY absent (**[project]** the default is to warn) or with
/// DELAY (RFC 3461 §5.2.5).
pub fn wants_delay(rcpt_params: &str) -> bool {
    notify(rcpt_params).is_none_or(|n| n.iter().any(|k| k == "DELAY"))
}

/// A "delivered"/"relayed" DSN is due: only with NOTIFY containing SUCCESS (RFC 3461 §5.2.2,
/// §5.2.3).
pub fn wants_success(rcpt_params: &str) -> bool {
    notify(rcpt_params).is_some_and(|n| n.iter().any(|k| k == "SUCCESS"))
}

/// RET of stored MAIL parameters.
pub fn ret(mail_params: &str) -> Option<Ret> {
    match param(mail_params, "RET")?.to_ascii_uppercase().as_str() {
        "FULL" => Some(Ret::Full),
        "HDRS" => Some(Ret::Hdrs),
        _ => None,
    }
}

/// ENVID of stored MAIL parameters, xtext-decoded; `None` if absent or malformed.
pub fn envid(mail_params: &str) -> Option<String> {
    xtext_decode(param(mail_params, "ENVID")?).ok()
}

/// ORCPT of stored RCPT parameters, decoded: `"rfc822;bob@example.org"`; `None` if absent or
/// malformed.
pub fn orcpt(rcpt_params: &str) -> Option<String> {
    decode_orcpt(param(rcpt_params, "ORCPT")?)
}

// ---- Standard explanations (the human-readable part) ----

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        one.to_string()
    } else {
        many.to_string()
    }
}

/// "a", "a and b", "a, b and c".
fn and_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

fn domains(recipients: &[&str]) -> String {
    let mut d: Vec<String> = Vec::new();
    for r in recipients {
        if let Some(x) = address_domain(r) {
            if !d.contains(&x) {
                d.push(x);
            }
        }
    }
    if d.is_empty() {
        "this domain".into()
    } else {
        and_list(&d)
    }
}

fn recipient_list(recipients: &[&str]) -> String {
    recipients.iter().map(|r| format!("    {}\n", clean(r))).collect()
}

fn intro(host: &str) -> String {
    format!("This is the mail system at {}.\n\n", host_token(host))
}

/// The customer's server refused the message (`5yz` in the reversed session).
pub fn explain_refused(host: &str, recipients: &[&str], remote: &str) -> String {
    format!(
        "{}Your message could not be delivered to the following {}:\n\n{}\n\
         The mail for {} is kept here until its owner's mail server collects it. When your \
         message was passed to that server ({}), it refused the message; its reply is in the \
         delivery report below. The message will not be delivered.\n",
        intro(host),
        plural(recipients.len(), "recipient", "recipients"),
        recipient_list(recipients),
        domains(recipients),
        host_token(remote),
    )
}

/// The hold time ran out (`4.4.7`).
pub fn explain_expired(host: &str, recipients: &[&str], days: u64) -> String {
    format!(
        "{}Your message could not be delivered to the following {}:\n\n{}\n\
         The mail for {} was held for its owner to collect, and it was not collected within \
         {days} {}. The message has been removed from the queue and will not be delivered.\n",
        intro(host),
        plural(recipients.len(), "recipient", "recipients"),
        recipient_list(recipients),
        domains(recipients),
        plural(days as usize, "day", "days"),
    )
}

/// The delay warning: still waiting to be collected, no error.
pub fn explain_delayed(host: &str, recipients: &[&str], waited_hours: u64, until: i64) -> String {
    format!(
        "{}This is a warning only; you do not need to send your message again.\n\n\
         Your message has not yet been delivered to the following {}:\n\n{}\n\
         No error has occurred. The mail for {} is held here, waiting to be collected by its \
         owner, and your message has been waiting for {waited_hours} {}. It will be delivered \
         when the owner collects it. If it is not collected by {}, it will be returned to you.\n",
        intro(host),
        plural(recipients.len(), "recipient", "recipients"),
        recipient_list(recipients),
        domains(recipients),
        plural(waited_hours as usize, "hour", "hours"),
        rfc5322_date(until),
    )
}

/// Delivered to a customer's server that does not offer DSN, for a sender who asked for
/// NOTIFY=SUCCESS: "relayed" (RFC 3461 §5.2.2), since no further report will come.
pub fn explain_relayed(host: &str, recipients: &[&str], remote: &str) -> String {
    format!(
        "{}Your message was delivered to the mail server of the following {}, as you asked to          be told:

{}
The mail for {} was collected by its owner's server ({}), which does          not confirm final delivery, so no further report will follow.
",
        intro(host),
        plural(recipients.len(), "recipient", "recipients"),
        recipient_list(recipients),
        domains(recipients),
        host_token(remote),
    )
}

/// The operator bounced the message by hand.
pub fn explain_operator(host: &str, recipients: &[&str], reason: Option<&str>) -> String {
    let mut s = format!(
        "{}Your message to the following {} was returned by the administrator of this mail \
         system and will not be delivered:\n\n{}",
        intro(host),
        plural(recipients.len(), "recipient", "recipients"),
        recipient_list(recipients),
    );
    if let Some(r) = reason.map(clean).filter(|r| !r.trim().is_empty()) {
        s.push_str(&format!("\nReason given: {}\n", r.trim()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rcpt(addr: &str, action: Action, status: &str) -> ReportedRecipient {
        ReportedRecipient {
            original_recipient: None,
            final_recipient: addr.into(),
            action,
            status: status.into(),
            remote_mta: None,
            diagnostic: None,
            last_attempt: None,
            will_retry_until: None,
        }
    }

    fn report(returned: Returned<'_>, recipients: Vec<ReportedRecipient>) -> Report<'_> {
        Report {
            reporting_mta: "odmr.example.net".into(),
            postmaster: "postmaster@odmr.example.net".into(),
            to: "alice@sender.example".into(),
            envid: None,
            arrival: 1_714_471_092,
            received_from_mta: None,
            now: 1_715_076_000,
            unique: "u1".into(),
            explanation: "Undeliverable.".into(),
            recipients,
            returned,
            max_return: 1 << 20,
            seven_bit_only: false,
        }
    }

    fn text(c: &Composed) -> String {
        String::from_utf8_lossy(&c.bytes).into_owned()
    }

    const MSG: &[u8] = b"Subject: hi\r\nFrom: a@b\r\n\r\nbody line\r\n";

    #[test]
    fn dates_are_rfc5322_utc_with_a_numeric_zone() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322_date(1_715_076_000), "Tue, 07 May 2024 10:00:00 +0000");
        assert_eq!(rfc5322_date(1_709_164_800), "Thu, 29 Feb 2024 00:00:00 +0000");
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(rfc5322_date(-1), "Wed, 31 Dec 1969 23:59:59 +0000");
        assert_eq!(rfc5322_date(i64::MAX), "Fri, 31 Dec 9999 23:59:59 +0000");
        assert!(rfc5322_date(i64::MIN).ends_with(" 0000 00:00:00 +0000"));
    }

    #[test]
    fn enhanced_status_comes_from_the_first_line_and_matches_the_class() {
        assert_eq!(
            enhanced_status("550 5.1.1 <bob@example.org> unknown user").as_deref(),
            Some("5.1.1")
        );
        assert_eq!(
            enhanced_status("550-5.1.1 first\r\n550 5.1.1 last").as_deref(),
            Some("5.1.1")
        );
        assert_eq!(
            enhanced_status("452 4.02.002 full").as_deref(),
            Some("4.2.2"),
            "no leading zeros"
        );
        assert_eq!(enhanced_status("550 unknown user"), None);
        assert_eq!(enhanced_status("550 4.1.1 class mismatch"), None);
        assert_eq!(enhanced_status("550 5.1"), None);
        assert_eq!(enhanced_status("550 5.1.1.1 x"), None);
        assert_eq!(enhanced_status("550 5.1234.1 x"), None);
        assert_eq!(enhanced_status("55"), None);
        assert_eq!(enhanced_status("5é0 5.1.1"), None);
        assert_eq!(enhanced_status(""), None);
        let r = Reply::new(550, "5.1.1", "<bob@example.org> unknown user");
        assert_eq!(
            diagnostic_from_reply(&r),
            "550 5.1.1 <bob@example.org> unknown user"
        );
        assert_eq!(
            enhanced_status(&diagnostic_from_reply(&r)).as_deref(),
            Some("5.1.1")
        );
    }

    #[test]
    fn header_section_ends_at_the_first_empty_line() {
        assert_eq!(header_section(MSG), b"Subject: hi\r\nFrom: a@b\r\n\r\n");
        assert_eq!(header_section(b"A: b\nC: d\n\nbody"), b"A: b\nC: d\n\n");
        assert_eq!(header_section(b"\r\nbody"), b"\r\n");
        assert_eq!(header_section(b"A: b\r\nno end"), b"A: b\r\nno end");
        assert_eq!(header_section(b""), b"");
    }

    #[test]
    fn notify_decides_which_reports_are_due() {
        // (params, failure, delay, success) — RFC 3461 §5.2; absent: failure and delay.
        for (p, f, d, s) in [
            ("", true, true, false),
            ("ORCPT=rfc822;a@b", true, true, false),
            ("NOTIFY=NEVER", false, false, false),
            ("NOTIFY=FAILURE", true, false, false),
            ("NOTIFY=DELAY", false, true, false),
            ("NOTIFY=SUCCESS", false, false, true),
            ("NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=rfc822;a@b", true, true, true),
            ("notify=failure,delay", true, true, false),
        ] {
            assert_eq!(
                (wants_failure(p), wants_delay(p), wants_success(p)),
                (f, d, s),
                "{p}"
            );
        }
    }

    #[test]
    fn stored_parameters_are_read_back() {
        assert_eq!(ret("BODY=8BITMIME RET=FULL ENVID=QQ+2B1"), Some(Ret::Full));
        assert_eq!(ret("RET=HDRS"), Some(Ret::Hdrs));
        assert_eq!(ret("BODY=7BIT"), None);
        assert_eq!(envid("RET=FULL ENVID=QQ+2B1").as_deref(), Some("QQ+1"));
        assert_eq!(envid("ENVID=bad+Z"), None);
        assert_eq!(envid(""), None);
        assert_eq!(
            orcpt("NOTIFY=FAILURE ORCPT=rfc822;Bob+40example.org").as_deref(),
            Some("rfc822;Bob@example.org")
        );
        assert_eq!(
            orcpt("ORCPT=utf-8;j\\x{E9}@x").as_deref(),
            Some("utf-8;j\u{e9}@x")
        );
        assert_eq!(orcpt("ORCPT=rfc822"), None);
        assert_eq!(orcpt("NOTIFY=NEVER"), None);
        assert_eq!(Returned::for_ret(None, MSG), Returned::Full(MSG));
        assert_eq!(
            Returned::for_ret(Some(Ret::Hdrs), MSG),
            Returned::HeadersOnly(MSG)
        );
    }

    #[test]
    fn no_dsn_to_the_null_reverse_path_nor_without_recipients() {
        let mut r = report(Returned::Nothing, vec![rcpt("b@x.org", Action::Failed, "5.1.1")]);
        r.to = "<>".into();
        assert_eq!(compose(&r), Err(DsnError::NullReversePath));
        r.to = " ".into();
        assert_eq!(compose(&r), Err(DsnError::NullReversePath));
        let r = report(Returned::Nothing, vec![]);
        assert_eq!(compose(&r), Err(DsnError::NoRecipients));
    }

    #[test]
    fn optional_fields_appear_only_when_allowed() {
        let mut a = rcpt("b@x.org", Action::Failed, "5.1.1");
        a.diagnostic = Some("550 5.1.1 no".into()); // no Remote-MTA: no Diagnostic-Code
        a.will_retry_until = Some(0); // not delayed: no Will-Retry-Until
        let c = compose(&report(Returned::Nothing, vec![a])).unwrap();
        let t = text(&c);
        for f in [
            "Diagnostic-Code",
            "Remote-MTA",
            "Will-Retry-Until",
            "Original-Envelope-Id",
            "Last-Attempt",
        ] {
            assert!(!t.contains(f), "{f} in\n{t}");
        }
        assert_eq!(c.returned, ReturnedAs::Nothing);
        assert!(!t.contains("rfc822-headers") && !t.contains("message/rfc822"));
    }

    #[test]
    fn statuses_are_checked_against_the_action() {
        let c = compose(&report(
            Returned::Nothing,
            vec![
                rcpt("a@x.org", Action::Failed, "5.01.001"),
                rcpt("b@x.org", Action::Failed, "bogus"),
                rcpt("c@x.org", Action::Delayed, "5.1.1"),
                rcpt("d@x.org", Action::Failed, "4.4.7"),
                rcpt("e@x.org", Action::Delivered, ""),
            ],
        ))
        .unwrap();
        let st: Vec<String> = text(&c)
            .lines()
            .filter_map(|l| l.strip_prefix("Status: "))
            .map(String::from)
            .collect();
        assert_eq!(st, ["5.1.1", "5.0.0", "4.0.0", "4.4.7", "2.0.0"]);
    }

    #[test]
    fn what_is_returned_follows_ret_the_limit_and_the_actions() {
        let failed = || vec![rcpt("b@x.org", Action::Failed, "5.1.1")];
        let delayed = || vec![rcpt("b@x.org", Action::Delayed, "4.0.0")];
        let c = compose(&report(Returned::Full(MSG), failed())).unwrap();
        assert_eq!(c.returned, ReturnedAs::Full);
        assert!(text(&c).contains("Content-Type: message/rfc822\r\n\r\nSubject: hi\r\n"));
        // RFC 3461 §6.2: no failure, headers only.
        let c = compose(&report(Returned::Full(MSG), delayed())).unwrap();
        assert_eq!(c.returned, ReturnedAs::Headers);
        assert!(!text(&c).contains("body line"));
        // Over the limit: headers only.
        let mut r = report(Returned::Full(MSG), failed());
        r.max_return = MSG.len() - 1;
        let c = compose(&r).unwrap();
        assert_eq!(c.returned, ReturnedAs::Headers);
        assert!(text(&c)
            .contains("Content-Type: text/rfc822-headers\r\n\r\nSubject: hi\r\nFrom: a@b\r\n\r\n\r\n--"));
        let c = compose(&report(Returned::HeadersOnly(MSG), failed())).unwrap();
        assert_eq!(c.returned, ReturnedAs::Headers);
        assert!(!c.eight_bit);
    }

    #[test]
    fn eight_bit_content_is_marked_or_left_out() {
        let body8 = "Subject: caf\u{e9}?\r\n\r\nna\u{ef}ve\r\n".replace("caf\u{e9}?", "cafe");
        let failed = || vec![rcpt("b@x.org", Action::Failed, "5.1.1")];
        let c = compose(&report(Returned::Full(body8.as_bytes()), failed())).unwrap();
        assert!(c.eight_bit && !c.smtputf8);
        assert!(text(&c).contains("Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n"));
        let mut r = report(Returned::Full(body8.as_bytes()), failed());
        r.seven_bit_only = true;
        let c = compose(&r).unwrap();
        assert_eq!(c.returned, ReturnedAs::Headers);
        assert!(!c.eight_bit, "{}", text(&c));
        // UTF-8 headers (an SMTPUTF8 message).
        let utf8 = "Subject: caf\u{e9}\r\n\r\nx\r\n";
        let c = compose(&report(Returned::Full(utf8.as_bytes()), failed())).unwrap();
        assert!(text(&c).contains("Content-Type: message/global\r\nContent-Transfer-Encoding: 8bit\r\n"));
        let c = compose(&report(Returned::HeadersOnly(utf8.as_bytes()), failed())).unwrap();
        assert!(
            text(&c).contains("Content-Type: message/global-headers\r\nContent-Transfer-Encoding: 8bit\r\n")
        );
        let mut r = report(Returned::Full(utf8.as_bytes()), failed());
        r.seven_bit_only = true;
        let c = compose(&r).unwrap();
        assert_eq!(c.returned, ReturnedAs::Nothing);
        assert!(!c.eight_bit);
    }

    #[test]
    fn utf8_addresses_keep_the_report_7bit() {
        let mut a = rcpt("j\u{e9}r\u{f4}me+x@exampl\u{e9}.org", Action::Failed, "5.1.1");
        a.original_recipient = Some("utf-8;j\u{e9}r\u{f4}me+x@exampl\u{e9}.org".into());
        let mut r = report(Returned::Nothing, vec![a]);
        r.to = "\u{e0}lice@sender.example".into();
        r.explanation = explain_refused(
            "odmr.example.net",
            &["j\u{e9}r\u{f4}me+x@exampl\u{e9}.org"],
            "mx.x.org",
        );
        let c = compose(&r).unwrap();
        let t = text(&c);
        assert!(
            t.contains("\r\nFinal-Recipient: utf-8;j\\x{E9}r\\x{F4}me\\x{2B}x@exampl\\x{E9}.org\r\n"),
            "{t}"
        );
        assert!(t.contains("\r\nOriginal-Recipient: utf-8;j\\x{E9}r\\x{F4}me\\x{2B}x@exampl\\x{E9}.org\r\n"));
        assert!(t.contains("Content-Transfer-Encoding: quoted-printable"));
        assert!(t.contains("j=C3=A9r=C3=B4me+x@exampl=C3=A9.org"), "{t}");
        // Only the To: header is 8-bit, and it needs SMTPUTF8.
        assert!(c.smtputf8 && c.eight_bit);
        let to_line = t.lines().find(|l| l.starts_with("To: ")).unwrap();
        assert!(t.replace(to_line, "").is_ascii());
    }

    #[test]
    fn a_utf8_postmaster_needs_smtputf8() {
        // Found by fuzzing: the From: address made a seven_bit_only DSN 8-bit, unannounced.
        let mut r = report(Returned::Nothing, vec![rcpt("b@x.org", Action::Failed, "5.1.1")]);
        r.postmaster = "p\u{f6}stmaster@x.org".into();
        r.seven_bit_only = true;
        let c = compose(&r).unwrap();
        assert!(c.smtputf8 && c.eight_bit);
    }

    #[test]
    fn caller_text_cannot_add_header_fields() {
        let mut a = rcpt("b@x.org\r\nX-Evil: 1", Action::Failed, "5.1.1\r\nX-Evil: 2");
        a.remote_mta = Some("mx\r\nX-Evil: 3".into());
        a.diagnostic = Some("550 5.1.1 a\r\nX-Evil: 4".into());
        let mut r = report(Returned::Nothing, vec![a]);
        r.to = "a@b\r\nBcc: victim@x".into();
        r.postmaster = "pm@x>\r\nX-Evil: 5".into();
        r.envid = Some("e\r\nX-Evil: 6".into());
        r.unique = "u\r\n\"x".into();
        let t = text(&compose(&r).unwrap());
        assert!(!t.contains("\r\nBcc:") && !t.contains("\r\nX-Evil"), "{t}");
        // The second reply line is a continuation of Diagnostic-Code.
        assert!(
            t.contains("Diagnostic-Code: smtp; 550 5.1.1 a\r\n X-Evil: 4\r\n"),
            "{t}"
        );
        assert!(t.contains("Remote-MTA: x-local-hostname; mxX-Evil:3\r\n"), "{t}");
    }

    #[test]
    fn the_boundary_never_occurs_in_the_content() {
        let msg = b"Subject: x\r\n\r\n--=_dsn_u1\r\n--=_dsn_u1.1--\r\n--=_dsn_u1.11x\r\n";
        let c = compose(&report(
            Returned::Full(msg),
            vec![rcpt("b@x.org", Action::Failed, "5.1.1")],
        ))
        .unwrap();
        assert!(text(&c).contains("boundary=\"=_dsn_u1.111\""), "{}", text(&c));
    }

    #[test]
    fn long_lines_are_folded_and_wrapped() {
        let long = format!("550 5.1.1 {}", "word ".repeat(500));
        let mut a = rcpt(&format!("{}@x.org", "l".repeat(1200)), Action::Failed, "5.1.1");
        a.remote_mta = Some("mx.x.org".into());
        a.diagnostic = Some(format!("550-5.1.1 {}\r\n{long}", "y".repeat(2500)));
        let mut r = report(Returned::Nothing, vec![a]);
        r.explanation = format!("{}\n\n{}", "z".repeat(3000), "short words ".repeat(300));
        let c = compose(&r).unwrap();
        let t = text(&c);
        for l in t.split("\r\n") {
            assert!(l.len() <= MAX_LINE, "line of {}", l.len());
        }
        // Folding at spaces is undone by unfolding.
        let unfolded = t.replace("\r\n ", " ");
        assert!(
            unfolded.contains(long.trim_end()),
            "the long reply line survives unfolding"
        );
        // The text part is wrapped to 76 columns where there are spaces.
        let body = t.split("charset=us-ascii\r\n\r\n").nth(1).unwrap();
        let words = body
            .lines()
            .skip_while(|l| !l.starts_with("short"))
            .take_while(|l| !l.is_empty());
        for l in words {
            assert!(l.len() <= TEXT_WIDTH, "{l:?}");
        }
    }

    #[test]
    fn deep_indentation_is_capped() {
        let mut out = Vec::new();
        wrap(
            &format!("{}word {}", " ".repeat(2000), "x".repeat(1200)),
            TEXT_WIDTH,
            &mut out,
        );
        assert!(
            out.iter()
                .all(|l| l.len() <= MAX_LINE && l.starts_with(&" ".repeat(16))),
            "{out:?}"
        );
    }

    #[test]
    fn fold_keeps_everything() {
        let s = format!("X: {}", "a".repeat(2500));
        let f = fold(&s);
        // "X:" alone first: folding at the space loses nothing, a cut inside the run would.
        assert!(
            f.iter().all(|l| l.len() <= MAX_LINE) && f.len() == 4,
            "{:?}",
            f.iter().map(String::len).collect::<Vec<_>>()
        );
        assert_eq!(f.concat().replace(' ', ""), s.replace(' ', ""));
        let s = format!("X: {}", "\u{e9}".repeat(1500));
        assert!(fold(&s).iter().all(|l| l.len() <= MAX_LINE));
    }

    #[test]
    fn explanations_are_ascii_and_say_what_happened() {
        let rs = ["bob@example.org", "carol@example.com"];
        let e = explain_expired("odmr.example.net", &rs[..1], 7);
        assert!(
            e.contains("held for its owner to collect") && e.contains("not collected within 7 days"),
            "{e}"
        );
        assert!(e.contains("The mail for example.org "), "{e}");
        let e = explain_expired("odmr.example.net", &rs, 1);
        assert!(
            e.contains("recipients:") && e.contains("example.org and example.com") && e.contains("1 day."),
            "{e}"
        );
        let e = explain_delayed("h", &rs[..1], 24, 1_715_076_000);
        assert!(e.contains("warning only") && e.contains("No error has occurred") && e.contains("24 hours"));
        assert!(e.contains("Tue, 07 May 2024 10:00:00 +0000"));
        let e = explain_refused("h", &rs[..1], "mail.example.org");
        assert!(e.contains("(mail.example.org), it refused the message"), "{e}");
        let e = explain_operator("h", &rs, Some("spam\r\n"));
        assert!(
            e.contains("returned by the administrator") && e.ends_with("Reason given: spam\n"),
            "{e}"
        );
        assert!(!explain_operator("h", &rs, None).contains("Reason"));
        for e in [
            explain_expired("h", &rs, 7),
            explain_delayed("h", &rs, 24, 0),
            explain_refused("h", &rs, "m"),
            explain_operator("h", &rs, None),
        ] {
            assert!(e.is_ascii());
        }
    }

    proptest! {
        #[test]
        fn compose_never_panics_and_keeps_generated_lines_short(
            to in "\\PC{0,40}", addr in "\\PC{0,1200}", status in "\\PC{0,12}", diag in "\\PC{0,1500}",
            remote in "\\PC{0,30}", expl in "\\PC{0,2000}", unique in "\\PC{0,20}", envid in "\\PC{0,120}",
            orcpt in "\\PC{0,60}", body in proptest::collection::vec(any::<u8>(), 0..300), act in 0u8..4,
            full in any::<bool>(), seven in any::<bool>(), when in any::<i64>(),
        ) {
            let action = [Action::Failed, Action::Delayed, Action::Delivered, Action::Relayed][act as usize];
            let r = Report {
                reporting_mta: remote.clone(),
                postmaster: to.clone(),
                to,
                envid: Some(envid),
                arrival: when,
                received_from_mta: Some(ReceivedFrom { helo: remote.clone(), ip: unique.clone() }),
                now: when,
                unique,
                explanation: expl,
                recipients: vec![ReportedRecipient {
                    original_recipient: Some(orcpt),
                    final_recipient: addr,
                    action,
                    status,
                    remote_mta: Some(remote),
                    diagnostic: Some(diag),
                    last_attempt: Some(when),
                    will_retry_until: Some(when),
                }],
                returned: if full { Returned::Full(&body) } else { Returned::HeadersOnly(&body) },
                max_return: 200,
                seven_bit_only: seven,
            };
            if let Ok(c) = compose(&r) {
                // Everything before the returned part is ours.
                let ours = match memchr::memmem::find(&c.bytes, b"Content-Type: message/delivery-status") {
                    Some(i) => &c.bytes[..i + 2000.min(c.bytes.len() - i)],
                    None => &c.bytes[..],
                };
                for l in ours.split(|&b| b == b'\n') {
                    prop_assert!(l.len() <= MAX_LINE + 1);
                }
                prop_assert!(!seven || c.smtputf8 || !c.eight_bit);
                prop_assert_eq!(c.smtputf8, !r.to.is_ascii() || !r.postmaster.is_ascii());
            }
        }
    }
}
