//! `odmr queue …`: what is held, for whom, what the customer last said about it, and the
//! operator's hand on it (delete, bounce, hold, release).
//!
//! Invariants:
//! - Memory stays bounded whatever the size of the queue: lists and operations walk the message
//!   ids in batches of [`BATCH`], and a body is printed chunk by chunk as the store keeps it.
//! - An operation on the whole queue needs `--all`; without ids, `--domain` or `--all` nothing
//!   is touched, so a forgotten argument never empties the queue.
//! - Explicit ids are checked before anything changes: one unknown id and nothing is done.
//! - Every change is the store's (one transaction per batch, ordered with deliveries), so the
//!   commands are safe while the server runs.
//! - A bounce leaves with its failure notices queued: they are composed by the server's own
//!   code ([`bounce::settle_failed`]), each in the transaction that settles its recipients. That
//!   step settles every failed recipient of the store, as the server's next pass would.

use super::open_store;
use super::out::{self, JsonText};
use crate::config::Config;
use crate::server::bounce;
use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use odmr_proto::domain::Domain;
use odmr_store::{MessageId, QueueFilter, QueuedMessage, RecipientState, RecipientStatus, Reply, Store};
use serde_json::json;
use std::io::{self, BufWriter, Write};

/// Messages read or changed per store call.
const BATCH: usize = 500;

#[derive(Subcommand)]
pub enum QueueCmd {
    /// List the messages still to deliver, one line per recipient: state, attempts, last reply.
    List {
        /// Only recipients in this domain.
        #[arg(long, value_name = "DOMAIN")]
        domain: Option<String>,
        /// Only recipients in this state.
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        /// Machine-readable output (a JSON array of messages).
        #[arg(long)]
        json: bool,
    },
    /// Show one message: its envelope, every recipient's state and history, and its header
    /// section (the whole message with --body).
    Show {
        /// The message id, as `odmr queue list` shows it.
        id: MessageId,
        /// Print the whole message exactly as stored (CRLF line ends) and nothing else on
        /// standard output, so that `> msg.eml` saves it; the envelope and the recipients go to
        /// standard error.
        #[arg(long)]
        body: bool,
        /// Machine-readable output; text that is not UTF-8 is shown as U+FFFD (use --body without
        /// --json for the exact bytes).
        #[arg(long)]
        json: bool,
    },
    /// Remove messages, or with --domain only their recipients in that domain, without
    /// notifying anyone.
    Delete(Select),
    /// Give up on queued or held recipients: they fail with status 5.0.0, and their senders'
    /// failure notices are queued before the command returns (`odmr queue list --domain
    /// @outbound`), for the running server to send through `[bounce] relay`.
    Bounce(Select),
    /// Hold queued recipients: ATRN does not deliver them and they do not expire until released.
    Hold(Select),
    /// Release held recipients: the next ATRN delivers them.
    Release(Select),
}

/// Which messages an operation acts on.
#[derive(Args)]
#[command(after_help = "Without message ids, --domain or --all nothing is done: \
    --all is needed to act on the whole queue.\n\
    On a terminal a progress bar shows how far a long operation is.")]
pub struct Select {
    /// Message ids, as `odmr queue list` shows them.
    #[arg(value_name = "ID")]
    ids: Vec<MessageId>,
    /// Every message in the queue (with --domain: every message of that domain).
    #[arg(long, conflicts_with = "ids")]
    all: bool,
    /// Only the recipients in this domain; the messages' other recipients are left alone.
    #[arg(long, value_name = "DOMAIN")]
    domain: Option<String>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// The states `--state` can select (delivered and bounced recipients are history).
#[derive(Clone, Copy, ValueEnum)]
pub enum StateArg {
    Queued,
    Held,
    Failed,
}

impl From<StateArg> for RecipientState {
    fn from(s: StateArg) -> RecipientState {
        match s {
            StateArg::Queued => RecipientState::Queued,
            StateArg::Held => RecipientState::Held,
            StateArg::Failed => RecipientState::Failed,
        }
    }
}

pub async fn queue(cfg: &Config, cmd: QueueCmd) -> anyhow::Result<()> {
    let store = open_store(cfg).await?;
    let result = match cmd {
        QueueCmd::List { domain, state, json } => {
            list(
                &store,
                domain.as_deref().map(domain_arg),
                state.map(Into::into),
                json,
            )
            .await
        }
        QueueCmd::Show { id, body, json } => show(&store, id, body, json).await,
        QueueCmd::Delete(s) => operate(cfg, &store, Action::Delete, s).await,
        QueueCmd::Bounce(s) => operate(cfg, &store, Action::Bounce, s).await,
        QueueCmd::Hold(s) => operate(cfg, &store, Action::Hold, s).await,
        QueueCmd::Release(s) => operate(cfg, &store, Action::Release, s).await,
    };
    store.close().await;
    match result {
        Err(e) if out::is_broken_pipe(&e) => Ok(()),
        r => r,
    }
}

/// A domain as given on the command line, in the store's spelling. Not validated: a filter for
/// a domain nobody owns just matches nothing (and notices wait under `@outbound`, no domain).
fn domain_arg(d: &str) -> String {
    Domain::parse(d).map_or_else(|_| d.trim().to_string(), Domain::into_string)
}

fn sender(m: &QueuedMessage) -> &str {
    if m.mail_from.is_empty() {
        "<>"
    } else {
        &m.mail_from
    }
}

fn recipient_label(r: &RecipientStatus) -> String {
    if r.domain == odmr_store::OUTBOUND_QUEUE {
        format!("{} (notice)", r.address)
    } else {
        r.address.clone()
    }
}

/// What the last-reply column says, on one line: the peer's reply, or why we gave up on our
/// own.
fn reply_text(r: &RecipientStatus) -> String {
    match (&r.status, &r.last_reply) {
        (Some(s), Some(reply)) => format!("{} (last reply: {})", status_text(s), reply.one_line()),
        (Some(s), None) => status_text(s),
        (None, Some(reply)) => reply.one_line(),
        (None, None) => "-".into(),
    }
}

/// A status of a failure decided here, with what it means.
fn status_text(status: &str) -> String {
    match status {
        "5.0.0" => format!("{status} bounced by the operator"),
        "4.4.7" => format!("{status} held too long"),
        odmr_store::DELETED => "deleted by the operator".into(),
        other => other.to_string(),
    }
}

/// A reply for `queue show`: the code and status on the first line with its text, each further
/// line of text under it (empty ones left out), indented by `indent`.
fn reply_lines(reply: &Reply, indent: &str) -> String {
    let head = match &reply.status {
        Some(s) => format!("{} {s}", reply.code),
        None => reply.code.to_string(),
    };
    let shown = |l: &String| {
        let l = l.trim();
        (!l.is_empty()).then(|| l.chars().map(|c| if c.is_control() { '?' } else { c }).collect())
    };
    let mut lines: Vec<String> = reply.lines.iter().filter_map(shown).collect();
    match lines.first_mut() {
        Some(first) => *first = format!("{head} {first}"),
        None => lines.push(head),
    }
    lines.join(&format!("\n{indent}"))
}

fn reply_json(reply: &Reply) -> serde_json::Value {
    json!({
        "code": reply.code,
        "status": reply.status,
        "lines": reply.lines,
    })
}

fn recipient_json(r: &RecipientStatus) -> serde_json::Value {
    json!({
        "id": r.id,
        "address": r.address,
        "domain": r.domain,
        "params": r.params,
        "state": r.state.as_str(),
        // The reply as given, and (as before it was kept whole) on one line.
        "reply": r.last_reply.as_ref().map(reply_json),
        "last_reply": r.last_reply.as_ref().map(Reply::one_line),
        "remote_mta": r.remote_mta,
        "status": r.status,
        "attempts": r.attempts,
        "updated_at": r.updated_at,
        "warned": r.warned,
    })
}

fn message_json(m: &QueuedMessage, now: i64) -> serde_json::Value {
    json!({
        "id": m.id,
        "received_at": m.received_at,
        "age_seconds": (now - m.received_at).max(0),
        "size": m.size,
        "sender": m.mail_from,
        "mail_params": m.mail_params,
        "eight_bit": m.eight_bit,
        "helo": m.helo,
        "client_addr": m.client_addr,
        "recipients": m.recipients.iter().map(recipient_json).collect::<Vec<_>>(),
    })
}

/// Column widths of the list, fixed from the first batch so that rows line up while the rest
/// of the queue is still being read.
struct Table {
    id: usize,
    sender: usize,
    recipient: usize,
    reply: usize,
}

impl Table {
    const MAX_ADDRESS: usize = 32;
    const MIN_ADDRESS: usize = 10;
    const MIN_REPLY: usize = 16;

    fn new(first: &[QueuedMessage], all_ids: &[MessageId]) -> Table {
        let longest = |f: &dyn Fn(&QueuedMessage) -> usize| first.iter().map(f).max().unwrap_or(0);
        let id = all_ids.last().map(|i| i.to_string().len()).unwrap_or(2).max(2);
        let mut sender = longest(&|m| sender(m).chars().count()).clamp(6, Self::MAX_ADDRESS);
        let mut recipient = longest(&|m| {
            m.recipients
                .iter()
                .map(|r| recipient_label(r).chars().count())
                .max()
                .unwrap_or(0)
        })
        .clamp(9, Self::MAX_ADDRESS);
        // id, age, size, state, tries, and the two spaces after each of the seven columns.
        let fixed = id + 4 + 5 + 9 + 5 + 7 * 2;
        let reply = match out::terminal_width() {
            Some(cols) => {
                // On a narrow terminal the addresses give up room first, so that the reply
                // keeps at least MIN_REPLY characters where it can (80 columns: it can).
                let room = cols.saturating_sub(fixed);
                while sender + recipient + Self::MIN_REPLY > room
                    && (sender > Self::MIN_ADDRESS || recipient > Self::MIN_ADDRESS)
                {
                    if sender >= recipient {
                        sender -= 1;
                    } else {
                        recipient -= 1;
                    }
                }
                room.saturating_sub(sender + recipient).max(8)
            }
            None => out::PLAIN_WIDTH,
        };
        Table {
            id,
            sender,
            recipient,
            reply,
        }
    }

    fn header(&self, w: &mut impl Write) -> io::Result<()> {
        writeln!(
            w,
            "{:>iw$}  {:>4}  {:>5}  {}  {}  {:9}  {:>5}  LAST REPLY",
            "ID",
            "AGE",
            "SIZE",
            out::cell("SENDER", self.sender),
            out::cell("RECIPIENT", self.recipient),
            "STATE",
            "TRIES",
            iw = self.id
        )
    }

    fn message(&self, w: &mut impl Write, m: &QueuedMessage, now: i64) -> io::Result<()> {
        for (i, r) in m.recipients.iter().enumerate() {
            let (id, age, size, from) = if i == 0 {
                (
                    m.id.to_string(),
                    out::age(now - m.received_at),
                    out::size(m.size),
                    sender(m).to_string(),
                )
            } else {
                Default::default()
            };
            let line = format!(
                "{id:>iw$}  {age:>4}  {size:>5}  {}  {}  {:9}  {:>5}  {}",
                out::cell(&from, self.sender),
                out::cell(&recipient_label(r), self.recipient),
                r.state.as_str(),
                r.attempts,
                out::truncate(&reply_text(r), self.reply),
                iw = self.id
            );
            writeln!(w, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

async fn list(
    store: &Store,
    domain: Option<String>,
    state: Option<RecipientState>,
    json: bool,
) -> anyhow::Result<()> {
    let ids = store
        .queue_ids(&QueueFilter {
            ids: Vec::new(),
            domain: domain.clone(),
        })
        .await?;
    let wanted = |r: &RecipientStatus| {
        domain.as_ref().is_none_or(|d| &r.domain == d) && state.is_none_or(|s| r.state == s)
    };
    let now = out::now_secs();
    let mut w = BufWriter::new(io::stdout().lock());
    let mut table: Option<Table> = None;
    let (mut messages, mut recipients) = (0usize, 0usize);
    for batch in ids.chunks(BATCH) {
        let mut found = store
            .queue_find(&QueueFilter {
                ids: batch.to_vec(),
                domain: domain.clone(),
            })
            .await?;
        found.sort_by_key(|m| m.id);
        for m in &mut found {
            m.recipients.retain(|r| wanted(r));
        }
        found.retain(|m| !m.recipients.is_empty());
        for m in &found {
            if json {
                let sep = if messages == 0 { "[\n" } else { ",\n" };
                write!(w, "{sep}{}", serde_json::to_string_pretty(&message_json(m, now))?)?;
            } else {
                let t = table.get_or_insert_with(|| Table::new(&found, &ids));
                if messages == 0 {
                    t.header(&mut w)?;
                }
                t.message(&mut w, m, now)?;
            }
            messages += 1;
            recipients += m.recipients.len();
        }
    }
    if json {
        writeln!(w, "{}", if messages == 0 { "[]" } else { "\n]" })?;
    } else if messages == 0 {
        let what = match (&domain, state) {
            (None, None) => "queue is empty".to_string(),
            (d, s) => format!(
                "no {}recipient{}",
                s.map(|s| format!("{s} ")).unwrap_or_default(),
                d.as_ref().map(|d| format!(" in {d}")).unwrap_or_default()
            ),
        };
        writeln!(w, "{what}")?;
    } else {
        writeln!(
            w,
            "{}, {}",
            plural(messages as u64, "message"),
            plural(recipients as u64, "recipient")
        )?;
    }
    w.flush()?;
    Ok(())
}

fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

fn not_in_queue(id: MessageId) -> anyhow::Error {
    anyhow::anyhow!(
        "no message {id} in the queue (delivered, deleted, or never there); see `odmr queue list`"
    )
}

async fn show(store: &Store, id: MessageId, whole: bool, json: bool) -> anyhow::Result<()> {
    let m = store
        .queue_find(&QueueFilter {
            ids: vec![id],
            domain: None,
        })
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| not_in_queue(id))?;
    let now = out::now_secs();
    let mut w = BufWriter::new(io::stdout().lock());
    if json {
        let meta = serde_json::to_string_pretty(&message_json(&m, now))?;
        // Streamed: the object's fields, then the text as one more field written piece by piece.
        let open = meta.strip_suffix("\n}").unwrap_or(&meta);
        let key = if whole { "data" } else { "headers" };
        write!(w, "{open},\n  \"{key}\": \"")?;
        let mut text = JsonText::default();
        let printed = stream_body(store, m.id, whole, |piece| text.write(&mut w, piece)).await?;
        text.finish(&mut w)?;
        writeln!(w, "\"\n}}")?;
        w.flush()?;
        gone_meanwhile(printed, &m);
        return Ok(());
    }
    if whole {
        // Only the message on stdout, byte for byte; what it is about goes to stderr, so on a
        // terminal the operator still sees it, above the message.
        let mut e = io::stderr().lock();
        summary(&mut e, &m, now)?;
        writeln!(e, "\nmessage")?;
        e.flush()?;
    } else {
        summary(&mut w, &m, now)?;
        writeln!(w, "\nheaders")?;
        w.flush()?;
    }
    let printed = stream_body(store, m.id, whole, |piece| w.write_all(piece)).await?;
    w.flush()?;
    gone_meanwhile(printed, &m);
    Ok(())
}

/// The envelope and every recipient's state and history, as `show` prints them.
fn summary(w: &mut impl Write, m: &QueuedMessage, now: i64) -> io::Result<()> {
    writeln!(w, "message {}", m.id)?;
    writeln!(
        w,
        "  received  {} ({} ago) from {} [{}]",
        out::timestamp(m.received_at),
        out::age(now - m.received_at),
        m.helo,
        m.client_addr
    )?;
    writeln!(
        w,
        "  size      {}{}",
        out::size_long(m.size),
        if m.eight_bit { ", 8-bit" } else { "" }
    )?;
    let params = if m.mail_params.is_empty() {
        String::new()
    } else {
        format!(" {}", m.mail_params)
    };
    writeln!(w, "  sender    <{}>{params}", m.mail_from)?;
    writeln!(w, "recipients")?;
    for r in &m.recipients {
        let params = if r.params.is_empty() {
            String::new()
        } else {
            format!(" {}", r.params)
        };
        writeln!(
            w,
            "  <{}>{params}  {}, {}, updated {}",
            r.address,
            r.state.as_str(),
            plural(u64::from(r.attempts), "attempt"),
            out::timestamp(r.updated_at)
        )?;
        if let Some(reply) = &r.last_reply {
            writeln!(w, "      last reply  {}", reply_lines(reply, &" ".repeat(18)))?;
        }
        if let Some(mta) = &r.remote_mta {
            writeln!(w, "      remote MTA  {mta}")?;
        }
        if let Some(status) = &r.status {
            writeln!(w, "      status      {}", status_text(status))?;
        }
        if r.warned {
            writeln!(w, "      delay warning handled")?;
        }
    }
    Ok(())
}

fn gone_meanwhile(printed: u64, m: &QueuedMessage) {
    if printed == 0 && m.size > 0 {
        eprintln!("odmr: message {} left the queue while it was being shown", m.id);
    }
}

/// Feeds the stored message to `sink` chunk by chunk: all of it, or only its header section
/// (up to and including the line before the first empty line). Returns the octets read.
async fn stream_body(
    store: &Store,
    id: MessageId,
    whole: bool,
    mut sink: impl FnMut(&[u8]) -> io::Result<()>,
) -> anyhow::Result<u64> {
    let mut cut = HeaderCut::default();
    let mut chunk = 0u32;
    let mut read = 0u64;
    while let Some(bytes) = store.read_body(id, chunk).await? {
        read += bytes.len() as u64;
        if whole {
            sink(&bytes)?;
        } else if cut.feed(&bytes, &mut sink)? {
            return Ok(read);
        }
        chunk += 1;
    }
    cut.finish(&mut sink)?;
    Ok(read)
}

/// Finds the end of the header section (the first CRLF CRLF) in a body given in chunks, passing
/// on everything before it. Up to three octets are held back, in case the CRLF CRLF is split
/// between two chunks.
#[derive(Default)]
struct HeaderCut {
    held: Vec<u8>,
}

impl HeaderCut {
    /// Returns true once the end was found (the sink has the whole header section).
    fn feed(&mut self, chunk: &[u8], sink: &mut impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<bool> {
        let mut buf = std::mem::take(&mut self.held);
        buf.extend_from_slice(chunk);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            sink(&buf[..p + 2])?;
            return Ok(true);
        }
        let keep = buf.len().min(3);
        sink(&buf[..buf.len() - keep])?;
        self.held = buf[buf.len() - keep..].to_vec();
        Ok(false)
    }

    /// A message without an empty line is all header.
    fn finish(&mut self, sink: &mut impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        let rest = std::mem::take(&mut self.held);
        if rest.is_empty() {
            Ok(())
        } else {
            sink(&rest)
        }
    }
}

#[derive(Clone, Copy)]
enum Action {
    Delete,
    Bounce,
    Hold,
    Release,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Delete => "delete",
            Action::Bounce => "bounce",
            Action::Hold => "hold",
            Action::Release => "release",
        }
    }

    fn past(self) -> &'static str {
        match self {
            Action::Delete => "deleted",
            Action::Bounce => "bounced",
            Action::Hold => "held",
            Action::Release => "released",
        }
    }

    /// The recipient states the store's operation changes.
    fn applies(self, s: RecipientState) -> bool {
        use RecipientState::*;
        match self {
            Action::Delete => matches!(s, Queued | Held | Failed),
            Action::Bounce => matches!(s, Queued | Held),
            Action::Hold => s == Queued,
            Action::Release => s == Held,
        }
    }

    fn candidates(self) -> &'static str {
        match self {
            Action::Delete => "undelivered",
            Action::Bounce => "queued or held",
            Action::Hold => "queued",
            Action::Release => "held",
        }
    }

    /// What follows from the change; `notices` is how many failure notices a bounce queued.
    fn consequence(self, notices: u64) -> String {
        match self {
            Action::Delete => "nobody is notified".into(),
            Action::Bounce if notices == 0 => {
                "no notice queued: their senders asked for none (null sender or NOTIFY without FAILURE)"
                    .into()
            }
            Action::Bounce => format!(
                "{} queued for their senders (`odmr queue list --domain {}`)",
                plural(notices, "failure notice"),
                odmr_store::OUTBOUND_QUEUE
            ),
            Action::Hold => "they wait until `odmr queue release`".into(),
            Action::Release => "the next ATRN delivers them".into(),
        }
    }

    async fn run(self, store: &Store, filter: &QueueFilter) -> anyhow::Result<u64> {
        Ok(match self {
            Action::Delete => store.queue_delete(filter).await?,
            Action::Bounce => store.queue_bounce(filter).await?,
            Action::Hold => store.queue_hold(filter).await?,
            Action::Release => store.queue_release(filter).await?,
        })
    }
}

async fn operate(cfg: &Config, store: &Store, action: Action, sel: Select) -> anyhow::Result<()> {
    let verb = action.verb();
    if sel.ids.is_empty() && !sel.all && sel.domain.is_none() {
        bail!(
            "refusing to {verb} every message of the queue without --all; name message ids \
             (`odmr queue {verb} 12 15`), limit it to one domain with --domain DOMAIN, or give \
             --all to {verb} the whole queue"
        );
    }
    let domain = sel.domain.as_deref().map(domain_arg);
    let ids = if sel.ids.is_empty() {
        store
            .queue_ids(&QueueFilter {
                ids: Vec::new(),
                domain: domain.clone(),
            })
            .await?
    } else {
        let mut asked = sel.ids.clone();
        asked.sort_unstable();
        asked.dedup();
        let mut found = Vec::with_capacity(asked.len());
        for batch in asked.chunks(BATCH) {
            found.extend(
                store
                    .queue_ids(&QueueFilter {
                        ids: batch.to_vec(),
                        domain: domain.clone(),
                    })
                    .await?,
            );
        }
        found.sort_unstable();
        let missing: Vec<String> = asked
            .iter()
            .filter(|id| found.binary_search(id).is_err())
            .map(|id| id.to_string())
            .collect();
        if !missing.is_empty() {
            let shown = if missing.len() > 10 {
                format!("{}, … ({} in all)", missing[..10].join(", "), missing.len())
            } else {
                missing.join(", ")
            };
            match &domain {
                Some(d) => bail!(
                    "nothing left to do for {d} in message {shown} (or no such message); nothing \
                     was changed; see `odmr queue list --domain {d}`"
                ),
                None => bail!(
                    "no message {shown} in the queue (delivered, deleted, or never there); \
                     nothing was changed; see `odmr queue list`"
                ),
            }
        }
        found
    };

    let bar = out::progress(ids.len() as u64, &format!("{}ing", verb.trim_end_matches('e')));
    let (mut messages, mut recipients, mut notices) = (0u64, 0u64, 0u64);
    for batch in ids.chunks(BATCH) {
        let filter = QueueFilter {
            ids: batch.to_vec(),
            domain: domain.clone(),
        };
        // Counted just before the change, for the summary; the store's count of changed
        // recipients is the authority (a delivery may finish in between).
        let before = store.queue_find(&filter).await?;
        let touched = before
            .iter()
            .filter(|m| {
                m.recipients
                    .iter()
                    .any(|r| domain.as_ref().is_none_or(|d| &r.domain == d) && action.applies(r.state))
            })
            .count() as u64;
        let changed = action.run(store, &filter).await?;
        if changed > 0 {
            messages += touched.max(1);
            recipients += changed;
        }
        if matches!(action, Action::Bounce) && changed > 0 {
            // The notices now, as the server's maintenance job would make them within
            // `[queue] scan_interval` (and only while it runs): the operator sees them at once.
            // A crash before this leaves the recipients failed, for the server to settle.
            bounce::settle_failed(cfg, store, |_, settled| {
                if matches!(settled, bounce::Settled::Notice(_)) {
                    notices += 1;
                }
            })
            .await
            .context(
                "the recipients are bounced, but their failure notices could not be queued now; \
                 the server's maintenance job tries again every [queue] scan_interval",
            )?;
        }
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    tracing::debug!(
        action = verb,
        domain = domain.as_deref().unwrap_or(""),
        messages,
        recipients,
        "operator changed the queue"
    );

    if sel.json {
        let mut v = json!({
            "action": verb,
            "domain": domain,
            "messages": messages,
            "recipients": recipients,
        });
        if matches!(action, Action::Bounce) {
            v["notices"] = notices.into();
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if recipients == 0 {
        println!(
            "nothing to {verb}: no {} recipient{} matched",
            action.candidates(),
            domain.as_ref().map(|d| format!(" in {d}")).unwrap_or_default()
        );
    } else {
        println!(
            "{} {} of {}{}; {}",
            action.past(),
            plural(recipients, "recipient"),
            plural(messages, "message"),
            domain.as_ref().map(|d| format!(" in {d}")).unwrap_or_default(),
            action.consequence(notices)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(chunks: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut c = HeaderCut::default();
        let mut sink = |b: &[u8]| -> io::Result<()> {
            out.extend_from_slice(b);
            Ok(())
        };
        for ch in chunks {
            if c.feed(ch, &mut sink).unwrap() {
                return out;
            }
        }
        c.finish(&mut sink).unwrap();
        out
    }

    #[test]
    fn show_puts_each_line_of_a_reply_under_the_first() {
        let r = Reply {
            code: 250,
            status: Some("2.0.0".into()),
            lines: vec!["first".into(), "".into(), "  361 byte chunk\x1b[0m ".into()],
        };
        assert_eq!(reply_lines(&r, "  "), "250 2.0.0 first\n  361 byte chunk?[0m");
        assert_eq!(reply_lines(&Reply::multi(451, vec![]), "  "), "451");
        assert_eq!(reply_lines(&Reply::new(550, "", "no"), "  "), "550 no");
    }

    #[test]
    fn header_section_ends_before_the_first_empty_line_even_across_chunks() {
        let msg = b"A: 1\r\nB: 2\r\n\r\nbody\r\n";
        for split in 0..msg.len() {
            assert_eq!(
                cut(&[&msg[..split], &msg[split..]]),
                b"A: 1\r\nB: 2\r\n",
                "split at {split}"
            );
        }
        assert_eq!(cut(&[b"A: 1\r\n"]), b"A: 1\r\n");
    }
}
