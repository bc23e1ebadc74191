//! Group commit: the commits of messages being received by many sessions at once share one
//! transaction, hence one fsync of the WAL.
//!
//! Invariants:
//! - A message's commit returns only after the transaction holding it has committed with
//!   `synchronous=FULL` (the `250` after DATA waits for that), exactly as without grouping.
//! - A message whose first chunks were stored before the commit is applied under its own
//!   `SAVEPOINT`: if it fails (it was purged while being received) it is rolled back alone and
//!   gets its own error; the others still commit. A message written whole in the batch can only
//!   fail on a database error, and then the whole batch is rolled back and every commit in it
//!   fails (each sender gets a 4xx and retries): never a half-written message.
//! - A batch costs a constant number of round trips to the connection's thread, whatever its
//!   size: the messages received whole are stored by one query of multi-row INSERTs (message
//!   rows, last chunks, recipients) after one lookup of the next free id. With sqlx every
//!   statement is a round trip to that thread (two context switches), which is where the CPU
//!   went under load when each message cost three.
//! - Nobody waits for a batch to fill: the committer takes whatever is queued when it is free, so
//!   a lone commit costs one transaction, and under load the batch grows by itself to the number
//!   of commits that arrived during the previous fsync (at most [`MAX_BATCH`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sqlx::sqlite::SqliteArguments;
use sqlx::{Arguments, Sqlite, SqlitePool, Transaction};
use tokio::sync::{mpsc, oneshot};

use super::writer::insert_chunk;
use super::DURABLE_BEGIN;
use crate::{now_secs, Envelope, MessageId, NewRecipient, StoreError};

/// Most messages committed in one transaction.
const MAX_BATCH: usize = 256;
/// Commits waiting for the committer; senders wait beyond this (backpressure).
const QUEUE: usize = 1024;
/// Rows per INSERT statement (at most 9 variables each, well below SQLite's limit of 32766).
const ROWS_PER_INSERT: usize = 500;

/// One message to commit: everything not yet written.
pub(crate) struct CommitJob {
    /// The message row, if chunks were stored before the commit (state `receiving`).
    pub id: Option<MessageId>,
    pub envelope: Envelope,
    pub recipients: Vec<NewRecipient>,
    /// The last chunk (may be empty).
    pub last_chunk: Vec<u8>,
    pub next_seq: i64,
    pub size: i64,
    pub eight_bit: bool,
    pub done: oneshot::Sender<Result<MessageId, StoreError>>,
}

/// The handle the writers use; the committer task ends when every handle is dropped.
#[derive(Clone)]
pub(crate) struct Committer {
    jobs: mpsc::Sender<CommitJob>,
    /// Transactions committed so far (read by the tests that check commits are grouped).
    #[cfg_attr(not(test), allow(dead_code))]
    transactions: Arc<AtomicU64>,
}

impl Committer {
    /// Starts the committer task on the current runtime.
    pub fn start(write: SqlitePool) -> Committer {
        let (jobs, rx) = mpsc::channel(QUEUE);
        let transactions = Arc::new(AtomicU64::new(0));
        tokio::spawn(run(write, rx, transactions.clone()));
        Committer { jobs, transactions }
    }

    #[cfg(test)]
    pub fn transactions(&self) -> u64 {
        self.transactions.load(Ordering::Relaxed)
    }

    /// Commits one message; returns once it is durable.
    pub async fn commit(
        &self,
        job_of: impl FnOnce(oneshot::Sender<Result<MessageId, StoreError>>) -> CommitJob,
    ) -> Result<MessageId, StoreError> {
        let (done, result) = oneshot::channel();
        self.jobs
            .send(job_of(done))
            .await
            .map_err(|_| StoreError::Closed)?;
        result.await.map_err(|_| StoreError::Closed)?
    }
}

async fn run(write: SqlitePool, mut rx: mpsc::Receiver<CommitJob>, transactions: Arc<AtomicU64>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let results = commit_batch(&write, &mut batch).await;
        transactions.fetch_add(1, Ordering::Relaxed);
        for (job, result) in batch.drain(..).zip(results) {
            // The session may have gone away meanwhile; its message is committed all the same
            // (the sender retries and may deliver it twice, as after any lost 250).
            let _ = job.done.send(result);
        }
    }
}

/// Applies every job in one transaction; one result per job, in order.
async fn commit_batch(write: &SqlitePool, batch: &mut [CommitJob]) -> Vec<Result<MessageId, StoreError>> {
    let mut tx = match write.begin_with(DURABLE_BEGIN).await {
        Ok(tx) => tx,
        Err(e) => {
            return batch
                .iter()
                .map(|_| Err(StoreError::Backend(shared(&e))))
                .collect()
        }
    };
    let mut results: Vec<Option<Result<MessageId, StoreError>>> = batch.iter().map(|_| None).collect();
    // Partly stored messages (rare: bodies over one chunk), each under its own savepoint.
    for (job, result) in batch.iter_mut().zip(results.iter_mut()) {
        if job.id.is_some() {
            *result = Some(apply_alone(&mut tx, job).await);
        }
    }
    // Whole messages: all of them in a constant number of statements.
    let mut whole: Vec<&mut CommitJob> = batch.iter_mut().filter(|j| j.id.is_none()).collect();
    if !whole.is_empty() {
        match insert_whole(&mut tx, &mut whole).await {
            Ok(ids) => {
                let mut ids = ids.into_iter();
                for result in results.iter_mut().filter(|r| r.is_none()) {
                    *result = ids.next().map(Ok);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "group commit: storing the batch failed; it is rolled back");
                let _ = tx.rollback().await;
                return batch
                    .iter()
                    .map(|_| Err(StoreError::Backend(shared_msg(&e))))
                    .collect();
            }
        }
    }
    match tx.commit().await {
        Ok(()) => results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(StoreError::Backend(sqlx::Error::Protocol(
                        "group commit: no result".into(),
                    )))
                })
            })
            .collect(),
        Err(e) => batch
            .iter()
            .map(|_| Err(StoreError::Backend(shared(&e))))
            .collect(),
    }
}

/// One error for many waiters: sqlx errors are not `Clone`.
fn shared(e: &sqlx::Error) -> sqlx::Error {
    sqlx::Error::Protocol(format!("group commit failed: {e}"))
}

fn shared_msg(e: &StoreError) -> sqlx::Error {
    sqlx::Error::Protocol(format!("group commit failed: {e}"))
}

/// [`apply`] under a savepoint of its own, so a failure undoes this message only.
async fn apply_alone(
    tx: &mut Transaction<'static, Sqlite>,
    job: &mut CommitJob,
) -> Result<MessageId, StoreError> {
    sqlx::query("SAVEPOINT message").execute(&mut **tx).await?;
    match apply(tx, job).await {
        Ok(id) => {
            sqlx::query("RELEASE message").execute(&mut **tx).await?;
            Ok(id)
        }
        Err(e) => {
            sqlx::query("ROLLBACK TO message").execute(&mut **tx).await?;
            sqlx::query("RELEASE message").execute(&mut **tx).await?;
            Err(e)
        }
    }
}

/// Writes the remaining part of a message whose first chunks are stored, and flips it to
/// `queued`.
async fn apply(tx: &mut Transaction<'static, Sqlite>, job: &mut CommitJob) -> Result<MessageId, StoreError> {
    let Some(id) = job.id else {
        return Err(StoreError::Backend(sqlx::Error::Protocol(
            "group commit: a partly stored message without its id".into(),
        )));
    };
    let now = now_secs();
    let flipped = sqlx::query(
        "UPDATE message SET state = 'queued', received_at = ?, size = ?, eight_bit = ?
         WHERE id = ? AND state = 'receiving'",
    )
    .bind(now)
    .bind(job.size)
    .bind(job.eight_bit)
    .bind(id)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if flipped == 0 {
        return Err(StoreError::MessageGone(id));
    }
    if !job.last_chunk.is_empty() {
        insert_chunk(tx, id, job.next_seq, &job.last_chunk).await?;
    }
    let mut batch = Batch::default();
    batch.recipients(id, std::mem::take(&mut job.recipients), now)?;
    batch.execute(tx).await?;
    Ok(id)
}

/// Stores messages received whole (message rows, bodies, recipients), all queued, in two round
/// trips to the connection's thread whatever their number: one to learn the next free id, one
/// for a single query of multi-row INSERTs. Returns their ids, in order.
///
/// The ids are chosen here rather than by AUTOINCREMENT so that chunks and recipients can refer
/// to them in the same query (SQLite does not promise the order of `RETURNING` rows). Choosing
/// them is safe because the transaction holds the write lock (`BEGIN IMMEDIATE`), and the first
/// one is past both the largest id and `sqlite_sequence`, which is what AUTOINCREMENT picks (an
/// id is never reused); inserting an explicit id advances `sqlite_sequence` as usual.
async fn insert_whole(
    tx: &mut Transaction<'static, Sqlite>,
    jobs: &mut [&mut CommitJob],
) -> Result<Vec<MessageId>, StoreError> {
    let last: i64 = sqlx::query_scalar(
        "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'message'), 0),
                    coalesce((SELECT max(id) FROM message), 0))",
    )
    .fetch_one(&mut **tx)
    .await?;
    let now = now_secs();
    let ids: Vec<MessageId> = (1..=jobs.len() as i64).map(|i| last + i).collect();
    let mut batch = Batch::default();
    for (job, id) in jobs.iter_mut().zip(&ids) {
        batch.row(INSERT_MESSAGE, "(?, 'queued', ?, ?, ?, ?, ?, ?, ?)");
        let e = &mut job.envelope;
        batch.bind(*id)?;
        batch.bind(now)?;
        batch.bind(job.size)?;
        batch.bind(job.eight_bit)?;
        batch.bind(std::mem::take(&mut e.mail_from))?;
        batch.bind(std::mem::take(&mut e.mail_params))?;
        batch.bind(std::mem::take(&mut e.helo))?;
        batch.bind(std::mem::take(&mut e.client_addr))?;
    }
    for (job, id) in jobs.iter_mut().zip(&ids) {
        if !job.last_chunk.is_empty() {
            batch.row(INSERT_CHUNK, "(?, ?, ?)");
            batch.bind(*id)?;
            batch.bind(job.next_seq)?;
            // Moved, not copied: nothing reads the chunk once it is bound.
            batch.bind(std::mem::take(&mut job.last_chunk))?;
        }
    }
    for (job, id) in jobs.iter_mut().zip(&ids) {
        batch.recipients(*id, std::mem::take(&mut job.recipients), now)?;
    }
    batch.execute(tx).await?;
    Ok(ids)
}

const INSERT_MESSAGE: &str = "INSERT INTO message
    (id, state, received_at, size, eight_bit, mail_from, mail_params, helo, client_addr) VALUES ";
const INSERT_CHUNK: &str = "INSERT INTO body_chunk (message, seq, data) VALUES ";
const INSERT_RECIPIENT: &str =
    "INSERT INTO recipient (message, address, domain, params, state, attempts, updated_at) VALUES ";

/// Several multi-row INSERT statements sent as one query (one round trip to the connection's
/// thread), their `?` bound in order across the statements. A statement never has more than
/// [`ROWS_PER_INSERT`] rows, so it stays below SQLite's variable limit.
#[derive(Default)]
struct Batch {
    sql: String,
    args: SqliteArguments<'static>,
    /// The head of the statement being written, and its rows so far.
    head: &'static str,
    rows: usize,
}

impl Batch {
    /// Adds a row of `values` to a statement starting with `head` (the current one if it has
    /// the same head and room left, else a new one).
    fn row(&mut self, head: &'static str, values: &str) {
        if self.head != head || self.rows == ROWS_PER_INSERT {
            if !self.sql.is_empty() {
                self.sql.push_str(";\n");
            }
            self.sql.push_str(head);
            self.head = head;
            self.rows = 0;
        }
        if self.rows > 0 {
            self.sql.push_str(", ");
        }
        self.sql.push_str(values);
        self.rows += 1;
    }

    fn bind<T: sqlx::Encode<'static, Sqlite> + sqlx::Type<Sqlite> + 'static>(
        &mut self,
        v: T,
    ) -> Result<(), StoreError> {
        self.args
            .add(v)
            .map_err(|e| StoreError::Backend(sqlx::Error::Encode(e)))
    }

    /// The recipients of message `id`, all `queued`.
    fn recipients(
        &mut self,
        id: MessageId,
        recipients: Vec<NewRecipient>,
        now: i64,
    ) -> Result<(), StoreError> {
        for r in recipients {
            self.row(INSERT_RECIPIENT, "(?, ?, ?, ?, 'queued', 0, ?)");
            self.bind(id)?;
            self.bind(r.address)?;
            self.bind(r.domain)?;
            self.bind(r.params)?;
            self.bind(now)?;
        }
        Ok(())
    }

    async fn execute(self, tx: &mut Transaction<'static, Sqlite>) -> Result<(), StoreError> {
        if self.sql.is_empty() {
            return Ok(());
        }
        // Not cached: the text changes with the batch's shape, and caching every shape would
        // push the statements other writers reuse out of the connection's cache.
        sqlx::query_with(&self.sql, self.args)
            .persistent(false)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::Backend;
    use crate::sqlite::SqliteStore;
    use crate::{ClockOffset, Envelope, EnvelopeRecipient, NewRecipient};

    fn job(rcpts: usize, body: &[u8]) -> (CommitJob, oneshot::Receiver<Result<MessageId, StoreError>>) {
        let (done, rx) = oneshot::channel();
        let recipients = (0..rcpts)
            .map(|i| NewRecipient {
                address: format!("r{i}@y.example"),
                domain: "y.example".into(),
                params: String::new(),
            })
            .collect();
        let envelope = Envelope {
            mail_from: "a@b.example".into(),
            mail_params: String::new(),
            recipients: vec![EnvelopeRecipient {
                address: "r0@y.example".into(),
                params: String::new(),
            }],
            helo: "b.example".into(),
            client_addr: "192.0.2.1:25".into(),
        };
        let job = CommitJob {
            id: None,
            envelope,
            recipients,
            last_chunk: body.to_vec(),
            next_seq: 0,
            size: body.len() as i64,
            eight_bit: false,
            done,
        };
        (job, rx)
    }

    async fn scalar(store: &SqliteStore, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&store.write).await.unwrap()
    }

    /// Statements longer than one INSERT can hold are split, and every row lands on its own
    /// message: recipients, bodies (an empty body has no chunk) and envelope fields.
    #[tokio::test]
    async fn a_batch_larger_than_one_statement_keeps_rows_with_their_messages() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), ClockOffset::default())
            .await
            .unwrap();
        let mut jobs = Vec::new();
        let shapes = [
            (ROWS_PER_INSERT + 7, 3usize),
            (1, 0),
            (2, 10),
            (ROWS_PER_INSERT, 1),
        ];
        for (rcpts, len) in shapes {
            jobs.push(job(rcpts, &vec![b'a' + rcpts as u8 % 26; len]).0);
        }
        // More messages than one INSERT holds, too.
        for i in 0..ROWS_PER_INSERT + 3 {
            jobs.push(job(1, format!("body {i}").as_bytes()).0);
        }
        let results = commit_batch(&store.write, &mut jobs).await;
        let ids: Vec<MessageId> = results.into_iter().map(Result::unwrap).collect();
        for (i, (rcpts, len)) in shapes.into_iter().enumerate() {
            let id = ids[i];
            let n = scalar(
                &store,
                &format!("SELECT count(*) FROM recipient WHERE message = {id}"),
            )
            .await;
            assert_eq!(n, rcpts as i64, "message {i}");
            let body = scalar(
                &store,
                &format!("SELECT coalesce(sum(length(data)), 0) FROM body_chunk WHERE message = {id}"),
            )
            .await;
            assert_eq!(body, len as i64, "message {i}");
        }
        for (i, id) in ids[shapes.len()..].iter().enumerate() {
            let body: Vec<u8> =
                sqlx::query_scalar("SELECT data FROM body_chunk WHERE message = ? AND seq = 0")
                    .bind(id)
                    .fetch_one(&store.write)
                    .await
                    .unwrap();
            assert_eq!(body, format!("body {i}").as_bytes());
        }
        let queued = scalar(
            &store,
            "SELECT count(*) FROM message WHERE state = 'queued' AND helo = 'b.example'",
        )
        .await;
        assert_eq!(queued, ids.len() as i64);
        store.close().await;
    }

    /// A batch of many messages with many recipients each (a query of about 1 MB, 80 recipient
    /// statements) is stored whole.
    #[tokio::test]
    async fn a_batch_of_many_recipients_is_stored_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), ClockOffset::default())
            .await
            .unwrap();
        let mut jobs: Vec<CommitJob> = (0..100).map(|_| job(400, b"x").0).collect();
        let ids: Vec<MessageId> = commit_batch(&store.write, &mut jobs)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(ids.len(), 100);
        assert_eq!(scalar(&store, "SELECT count(*) FROM recipient").await, 40_000);
        store.close().await;
    }

    /// The ids chosen for a batch continue AUTOINCREMENT's sequence: past a deleted newest
    /// message (never reused), and AUTOINCREMENT continues past the batch.
    #[tokio::test]
    async fn batch_ids_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), ClockOffset::default())
            .await
            .unwrap();
        let mut first = vec![job(1, b"x").0, job(1, b"y").0];
        let first: Vec<MessageId> = commit_batch(&store.write, &mut first)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(first[1], first[0] + 1);
        sqlx::query("DELETE FROM message")
            .execute(&store.write)
            .await
            .unwrap();
        let mut second = vec![job(1, b"z").0];
        let second = commit_batch(&store.write, &mut second).await.remove(0).unwrap();
        assert!(second > first[1], "{second} reuses an id up to {}", first[1]);
        let auto: i64 = sqlx::query_scalar(
            "INSERT INTO message (state, received_at, mail_from, mail_params, helo, client_addr)
             VALUES ('receiving', 0, '', '', '', '') RETURNING id",
        )
        .fetch_one(&store.write)
        .await
        .unwrap();
        assert!(auto > second);
        store.close().await;
    }
}
