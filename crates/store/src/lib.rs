//! The store: accounts, domains, the held-mail queue and per-domain leases.
//!
//! One narrow contract (the methods of [`Store`], declared once in `contract.rs` as one trait per
//! concern), one folder per backend implementing those traits, and one conformance suite
//! (`tests/conformance.rs`) run against every backend. Dispatch is an `enum`, not `dyn`, so the
//! async methods stay plain `async fn`s; its variants, and every `match` on them, come from the
//! one list of backends in `dispatch.rs`.
//!
//! Invariants every backend keeps:
//! - **Durable before acknowledged.** [`MessageWriter::commit`] returns only once the message, its
//!   envelope and its whole body are on stable storage (SQLite: WAL with `synchronous=FULL`).
//!   Until then the message is invisible to delivery; a crash before commit leaves only garbage
//!   that [`Store::open`] removes.
//! - **Per-recipient state.** A message has one row per recipient, indexed by the recipient's
//!   domain, so the cost of an ATRN grows with that domain's mail, not with the whole queue.
//! - **A lease row per domain is the only lock.** Delivery for a domain happens only under a lease;
//!   every outcome written under a lease checks the lease token (fencing), so a stalled or crashed
//!   node whose lease has expired cannot record outcomes after another node took over.
//! - **A holder learns why it lost its lease.** A lease the operator broke
//!   ([`Store::lease_break`]) frees its domains at once, like an expired one, and its holder's
//!   next renewal or write is refused with [`StoreError::LeaseBroken`], not
//!   [`StoreError::LeaseLost`], even if another session has taken a domain meanwhile: its log
//!   then names the operator's action instead of a fault.
//! - **A message leaves the queue only after every recipient is delivered.** Failed recipients stay
//!   visible (with the peer's reply) until a later job bounces them.
//!
//! Clocks:
//! - **Lease times are the database's.** Acquiring, renewing, taking over an expired lease,
//!   fencing a write, listing leases and the "is this domain being delivered?" test of expiry all
//!   read "now" from the database, in the statement that uses it; the application only supplies
//!   durations. Nodes of a fleet whose clocks disagree still agree on when a lease expires, so
//!   exclusivity and fencing rest on one clock. (With SQLite that is the clock of the machine
//!   holding the file, which every process sharing the file runs on.) A test moves that clock
//!   with a [`ClockOffset`] instead of sleeping.
//! - **Message times are the application's**, in unix seconds: when a message arrived (expiry by
//!   `max_age`, delay warnings, the purge of abandoned messages), when a recipient or an account
//!   last changed, and the retry times of the server's jobs. They are measured in minutes to
//!   days, nothing exclusive depends on them, and a skew of seconds between nodes moves a
//!   deadline by as much.
//!
//! Further rules of this implementation:
//! - Nothing about accounts, domains or leases is cached in memory: every call reads the database,
//!   so changes made by another process (the CLI while the server runs, or another node) are seen
//!   at once.
//! - Recipient rows are written only in the commit transaction of their message, so a recipient
//!   row always belongs to a committed message.
//! - A body is stored as chunks of exactly [`CHUNK_SIZE`] bytes (the last one may be shorter; an
//!   empty body has no chunk), numbered from 0.
//! - Garbage of a crash mid-DATA (a message still `receiving`) is removed by
//!   [`Store::open`] once it has been idle for [`STALE_RECEIVING`], so opening the store
//!   from a second process never removes a message that another process is still receiving;
//!   [`Store::purge_incomplete`] does the same with any age, for housekeeping.

use odmr_proto::domain::Domain;
pub use odmr_proto::reply::Reply;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod config;
mod contract;
mod dispatch;
pub mod sqlite;

pub use config::{ClockOffset, StoreConfig, StoreUrlError};
pub use dispatch::{MessageWriter, Store};

/// The id of a message in the queue; ids only grow and are never reused.
pub type MessageId = i64;
/// The id of one recipient of one message.
pub type RecipientId = i64;

/// The size of a stored body chunk (the last chunk of a body may be shorter).
pub const CHUNK_SIZE: usize = 256 * 1024;

/// How long a message may stay `receiving` without a chunk written before opening the store
/// removes it as the garbage of a crash. Far longer than any SMTP data timeout.
pub const STALE_RECEIVING: Duration = Duration::from_secs(60 * 60);

/// A secret with which an account authenticates, in a form produced elsewhere (e.g. scheme
/// `cram-md5` with the HMAC-MD5 key material). Never a plain password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub scheme: String,
    pub data: Vec<u8>,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("scheme", &self.scheme)
            .field("data", &format_args!("<{} bytes>", self.data.len()))
            .finish()
    }
}

/// A customer account and the domains it owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    /// Lower-case, sorted.
    pub domains: Vec<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// `host:port` to which an ETRN from this account delivers its mail.
    pub etrn_destination: Option<String>,
    /// Networks (CIDR text, as given) from which ETRN is honoured without authentication.
    pub etrn_from: Vec<String>,
}

/// What an operator set for one domain. `None` means no limit (quotas) or the server's default
/// (`max_age`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DomainPolicy {
    /// Most messages held for the domain at once.
    pub max_messages: Option<u64>,
    /// Most bytes (sum of message sizes) held for the domain at once.
    pub max_bytes: Option<u64>,
    /// How long mail is held before it is returned to its sender, in seconds.
    pub max_age: Option<u64>,
    /// `None`: every local part is accepted (catch-all). `Some(list)`: only these (lower-case,
    /// sorted); others are refused at RCPT.
    pub local_parts: Option<Vec<String>>,
}

/// The answer of [`Store::domain_accepts`]: what the MX needs at RCPT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DomainCheck {
    /// The local part is listed, or the domain is catch-all.
    pub accepted: bool,
    pub max_messages: Option<u64>,
    pub max_bytes: Option<u64>,
}

/// A domain, its owner and its policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainInfo {
    pub name: String,
    pub account: String,
    pub policy: DomainPolicy,
}

/// What a domain holds right now: messages with at least one recipient in it still to deliver
/// (queued, held or awaiting its notice), and the sum of their sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DomainUsage {
    pub messages: u64,
    pub bytes: u64,
}

/// The recipients' domain of notices (DSNs) waiting for the bounce relay. Not a valid domain
/// name, so no account can own it and no ATRN can ask for it; the relay sender leases it like a
/// domain, so every node shares one queue run at a time.
pub const OUTBOUND_QUEUE: &str = "@outbound";

/// The envelope of a message being received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Reverse-path without brackets; `""` for the null sender `<>`.
    pub mail_from: String,
    /// ESMTP parameters of MAIL FROM as received, canonical, space separated
    /// (`"BODY=8BITMIME SMTPUTF8"`); may be `""`.
    pub mail_params: String,
    pub recipients: Vec<EnvelopeRecipient>,
    /// The client's EHLO/HELO name, for the record.
    pub helo: String,
    /// `ip:port` of the sender, for the record.
    pub client_addr: String,
}

/// One RCPT TO of an [`Envelope`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeRecipient {
    /// Address without brackets, e.g. `Bob@Example.ORG`. The store derives the domain: the text
    /// after the last `@`, lower-cased.
    pub address: String,
    /// ESMTP parameters of RCPT TO, canonical, space separated; may be `""`.
    pub params: String,
}

/// What is known about a body only once it has been received whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommitInfo {
    /// The body contained octets > 0x7F.
    pub eight_bit: bool,
}

/// The state of one recipient of a queued message.
///
/// ```text
/// queued ──2xx──▶ delivered
///   │ ▲  └─5xx, expiry, operator bounce──▶ failed ──notice queued (or none wanted)──▶ bounced
///   ▼ │ hold / release
///  held
/// ```
/// A message leaves the queue once every recipient is `delivered` or `bounced`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecipientState {
    /// Not delivered yet (never tried, or a 4xx reply).
    Queued,
    /// Stopped by the operator: neither delivered nor expired until released.
    Held,
    /// Delivered (2xx).
    Delivered,
    /// Given up (5xx, expiry, or the operator): a failure notice is due.
    Failed,
    /// Given up and the notice is queued (or none was wanted).
    Bounced,
}

impl RecipientState {
    pub fn as_str(self) -> &'static str {
        match self {
            RecipientState::Queued => "queued",
            RecipientState::Held => "held",
            RecipientState::Delivered => "delivered",
            RecipientState::Failed => "failed",
            RecipientState::Bounced => "bounced",
        }
    }

    /// The inverse of [`RecipientState::as_str`].
    pub fn parse(s: &str) -> Option<RecipientState> {
        match s {
            "queued" => Some(RecipientState::Queued),
            "held" => Some(RecipientState::Held),
            "delivered" => Some(RecipientState::Delivered),
            "failed" => Some(RecipientState::Failed),
            "bounced" => Some(RecipientState::Bounced),
            _ => None,
        }
    }

    /// Nothing more will happen to this recipient.
    pub fn is_final(self) -> bool {
        matches!(self, RecipientState::Delivered | RecipientState::Bounced)
    }
}

impl fmt::Display for RecipientState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The right to deliver the mail of some domains until the lease expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Lower-case, sorted, without duplicates.
    pub domains: Vec<String>,
    /// Random; identifies this lease (fencing token).
    pub token: String,
    pub holder: String,
}

/// One domain's live lease, as [`Store::lease_list`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    pub domain: String,
    pub token: String,
    pub holder: String,
    /// Unix milliseconds, by the database's clock.
    pub expires_at: i64,
    /// Milliseconds left when listed, by the database's clock: what to show, rather than
    /// `expires_at` minus this machine's time.
    pub expires_in_ms: i64,
}

impl LeaseRow {
    /// The lease this row belongs to, with this row's domain only: enough to
    /// [`Store::lease_release`] it (which goes by token, so every domain of the lease goes).
    pub fn lease(&self) -> Lease {
        Lease {
            domains: vec![self.domain.clone()],
            token: self.token.clone(),
            holder: self.holder.clone(),
        }
    }
}

/// A message with recipients waiting for delivery in the asked domains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub id: MessageId,
    pub mail_from: String,
    pub mail_params: String,
    pub size: u64,
    pub eight_bit: bool,
    pub received_at: i64,
    /// Only the queued recipients in the asked domains, in the order they were received.
    pub recipients: Vec<PendingRecipient>,
}

/// A queued recipient of a [`Pending`] message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRecipient {
    pub id: RecipientId,
    pub address: String,
    pub domain: String,
    pub params: String,
}

/// A committed message, for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    pub id: MessageId,
    pub received_at: i64,
    pub size: u64,
    pub mail_from: String,
    pub mail_params: String,
    pub eight_bit: bool,
    pub helo: String,
    pub client_addr: String,
    /// All recipients, in the order they were received.
    pub recipients: Vec<RecipientStatus>,
}

/// One recipient of a [`QueuedMessage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientStatus {
    pub id: RecipientId,
    pub address: String,
    pub domain: String,
    pub params: String,
    pub state: RecipientState,
    /// The last reply to a delivery attempt, as it was given: code, enhanced status and text
    /// lines, to be rendered where it is shown (a reply recorded without lines comes back with
    /// one empty line, the same reply on the wire).
    pub last_reply: Option<Reply>,
    /// The peer that gave `last_reply` (e.g. the customer's EHLO name), if a peer did.
    pub remote_mta: Option<String>,
    /// Why the recipient was given up here rather than on a peer's reply: the RFC 3463 status
    /// of a failure decided here (expiry `4.4.7`, the operator's bounce `5.0.0`), or
    /// [`DELETED`] (the operator's delete, which sends no notice); `None` otherwise.
    pub status: Option<String>,
    pub attempts: u32,
    /// Unix seconds.
    pub updated_at: i64,
    /// A delay warning was handled (sent, or not wanted).
    pub warned: bool,
}

/// The [`RecipientStatus::status`] of a recipient the operator deleted ([`Store::queue_delete`]).
pub const DELETED: &str = "deleted";

/// Which messages an operator's command is about. Empty `ids` means every message; `domain`
/// narrows to messages with a recipient in it (and the command then touches only those
/// recipients).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueueFilter {
    pub ids: Vec<MessageId>,
    pub domain: Option<String>,
}

/// The result of one delivery attempt to one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub recipient: RecipientId,
    pub state: RecipientState,
    /// The reply as given (recorded as is, see [`RecipientStatus::last_reply`]).
    pub reply: Option<Reply>,
    /// Who gave the reply (the customer's EHLO name or `[ip]`), for the notice's Remote-MTA.
    pub remote_mta: Option<String>,
}

/// A notice (DSN) to queue for the bounce relay: always from the null sender, to one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundMessage {
    pub mail_params: String,
    /// The original sender, to whom the notice goes.
    pub to: String,
    pub body: Vec<u8>,
    pub eight_bit: bool,
}

/// A message with recipients a notice may be due for, as [`Store::notices_failed`] and
/// [`Store::notices_delayed`] return it: only those recipients are listed.
pub type Notice = QueuedMessage;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("account {0} already exists")]
    AccountExists(String),
    #[error("no account named {0}")]
    AccountNotFound(String),
    #[error("domain {domain} already belongs to account {owner}")]
    DomainTaken { domain: String, owner: String },
    #[error("domain {0} does not belong to any account")]
    DomainNotFound(String),
    // Shown as is by the operators' commands: it says what would be accepted.
    #[error(
        "invalid domain {0:?}: a domain is a name such as \"example.org\": letters, digits and \
         hyphens in labels separated by dots, no spaces"
    )]
    InvalidDomain(String),
    #[error("invalid account name {0:?}")]
    InvalidAccountName(String),
    #[error("invalid envelope: {0}")]
    InvalidEnvelope(String),
    #[error("the lease was lost: it expired and was taken over, or was released")]
    LeaseLost,
    #[error("the lease was broken by the operator (odmr lease break)")]
    LeaseBroken,
    #[error("message {0} was removed while it was being received")]
    MessageGone(MessageId),
    #[error("the store was closed")]
    Closed,
    #[error("the store's schema version {found} is newer than this program supports ({supported})")]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("the store holds an unexpected value: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Backend(#[from] sqlx::Error),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Which of the two notice kinds [`Store::settle_failed`]/[`Store::settle_delayed`] settles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    Failed,
    Delayed,
}

/// An operator's command on the selected recipients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    Delete,
    Bounce,
    Hold,
    Release,
}

// ----- helpers shared by the backends -----

/// A recipient as stored: its domain derived.
#[derive(Debug, Clone)]
pub(crate) struct NewRecipient {
    pub address: String,
    pub domain: String,
    pub params: String,
}

fn prepare_recipients(envelope: &Envelope) -> Result<Vec<NewRecipient>, StoreError> {
    if envelope.recipients.is_empty() {
        return Err(StoreError::InvalidEnvelope("no recipient".into()));
    }
    envelope
        .recipients
        .iter()
        .map(|r| {
            let domain = address_domain(&r.address).ok_or_else(|| {
                StoreError::InvalidEnvelope(format!("recipient {:?} has no domain", r.address))
            })?;
            Ok(NewRecipient {
                address: r.address.clone(),
                domain,
                params: r.params.clone(),
            })
        })
        .collect()
}

/// The domain of an address: the text after the last `@`, lower-cased; `None` if empty or absent.
pub fn address_domain(address: &str) -> Option<String> {
    Domain::of_address(address).map(Domain::into_string)
}

/// Checks a domain given to an account and returns its stored (lower-case) form.
pub fn normalize_domain(domain: &str) -> Result<String, StoreError> {
    Domain::parse(domain)
        .map(Domain::into_string)
        .map_err(|_| StoreError::InvalidDomain(domain.to_string()))
}

/// A reply's text lines as a backend stores them: one text, the lines joined by LF. No line of
/// a reply holds an LF (it ends the line on the wire); one made here that did would come back as
/// several lines.
pub(crate) fn reply_text(reply: &Reply) -> String {
    reply.lines.join("\n")
}

/// A reply from the three values a backend stores: code, enhanced status, [`reply_text`].
/// `None` without a code (no reply recorded); a code that is not a reply code is corrupt.
pub(crate) fn stored_reply(
    code: Option<i64>,
    status: Option<String>,
    text: Option<String>,
) -> Result<Option<Reply>, StoreError> {
    let Some(code) = code else { return Ok(None) };
    let code = u16::try_from(code)
        .ok()
        .filter(|c| (100..1000).contains(c))
        .ok_or_else(|| StoreError::Corrupt(format!("reply code {code}")))?;
    Ok(Some(Reply {
        code,
        status,
        lines: text.unwrap_or_default().split('\n').map(str::to_string).collect(),
    }))
}

/// Lower-cases, sorts and dedups a set of domains used to query or lease (no other check: a
/// domain nobody owns just matches nothing).
pub(crate) fn domain_set(domains: &[String]) -> Vec<String> {
    let mut v: Vec<String> = domains
        .iter()
        .map(|d| Domain::parse(d).map_or_else(|_| d.to_ascii_lowercase(), Domain::into_string))
        .collect();
    v.sort();
    v.dedup();
    v
}

fn check_account_name(name: &str) -> Result<(), StoreError> {
    if name.is_empty() || name.len() > 255 || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(StoreError::InvalidAccountName(name.to_string()));
    }
    Ok(())
}

/// Account domains: checked, lower-cased, without duplicates.
fn account_domains(domains: &[String]) -> Result<Vec<String>, StoreError> {
    let mut v = domains
        .iter()
        .map(|d| normalize_domain(d))
        .collect::<Result<Vec<_>, _>>()?;
    v.sort();
    v.dedup();
    Ok(v)
}

pub(crate) fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(crate) fn duration_millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
}

/// A fresh random lease token: 32 hex digits.
pub(crate) fn new_token() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_normalized() {
        assert_eq!(normalize_domain("Example.ORG").unwrap(), "example.org");
        assert_eq!(normalize_domain("localhost").unwrap(), "localhost");
        // The root dot is no other domain (odmr_proto::domain::Domain).
        assert_eq!(normalize_domain("Example.ORG.").unwrap(), "example.org");
        for bad in [
            "",
            " ",
            "a b.org",
            "a@b.org",
            ".example.org",
            "example.org..",
            "a..b",
            "a\tb",
            "[1.2.3.4]",
        ] {
            assert!(
                matches!(normalize_domain(bad), Err(StoreError::InvalidDomain(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn address_domain_is_after_the_last_at() {
        assert_eq!(address_domain("Bob@Example.ORG").as_deref(), Some("example.org"));
        assert_eq!(address_domain("bob@Example.ORG.").as_deref(), Some("example.org"));
        assert_eq!(
            address_domain("\"a@b\"@Host.Example").as_deref(),
            Some("host.example")
        );
        assert_eq!(address_domain("postmaster"), None);
        assert_eq!(address_domain("bob@"), None);
    }

    #[test]
    fn envelope_needs_recipients_with_domains() {
        let mut env = Envelope {
            mail_from: String::new(),
            mail_params: String::new(),
            recipients: vec![],
            helo: "h".into(),
            client_addr: "127.0.0.1:1".into(),
        };
        assert!(matches!(
            prepare_recipients(&env),
            Err(StoreError::InvalidEnvelope(_))
        ));
        env.recipients.push(EnvelopeRecipient {
            address: "postmaster".into(),
            params: String::new(),
        });
        assert!(matches!(
            prepare_recipients(&env),
            Err(StoreError::InvalidEnvelope(_))
        ));
        env.recipients[0].address = "Bob@Example.ORG".into();
        let r = prepare_recipients(&env).unwrap();
        assert_eq!(r[0].domain, "example.org");
        assert_eq!(r[0].address, "Bob@Example.ORG");
    }

    #[test]
    fn states_round_trip() {
        for s in [
            RecipientState::Queued,
            RecipientState::Delivered,
            RecipientState::Failed,
        ] {
            assert_eq!(RecipientState::parse(s.as_str()), Some(s));
        }
        assert_eq!(RecipientState::parse("x"), None);
    }

    #[test]
    fn replies_are_stored_as_code_status_and_lines() {
        let r = Reply {
            code: 250,
            status: Some("2.0.0".into()),
            lines: vec!["first".into(), "".into(), "last".into()],
        };
        let text = reply_text(&r);
        assert_eq!(text, "first\n\nlast");
        let back = stored_reply(Some(250), Some("2.0.0".into()), Some(text)).unwrap();
        assert_eq!(back, Some(r));
        let bare = stored_reply(Some(550), None, Some(String::new()))
            .unwrap()
            .unwrap();
        assert_eq!(bare.lines, [""]);
        assert_eq!(stored_reply(None, None, Some("a note".into())).unwrap(), None);
        for bad in [0, 99, 1000, -250, i64::MAX] {
            assert!(
                matches!(stored_reply(Some(bad), None, None), Err(StoreError::Corrupt(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn tokens_are_random_hex() {
        let a = new_token();
        let b = new_token();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn error_messages_read_well() {
        let e = StoreError::DomainTaken {
            domain: "example.org".into(),
            owner: "acme".into(),
        };
        assert_eq!(
            e.to_string(),
            "domain example.org already belongs to account acme"
        );
    }
}
