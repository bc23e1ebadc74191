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
//! - Each message costs as few statements as possible (message row, last chunk, all recipients
//!   in one INSERT): with sqlx every statement is a round trip to the connection's thread, which
//!   is where the CPU goes under load.
//! - Nobody waits for a batch to fill: the committer takes whatever is queued when it is free, so
//!   a lone commit costs one transaction, and under load the batch grows by itself to the number
//!   of commits that arrived during the previous fsync (at most [`MAX_BATCH`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sqlx::{Sqlite, SqlitePool, Transaction};
use tokio::sync::{mpsc, oneshot};

use super::{insert_chunk, DURABLE_BEGIN};
use crate::{now_secs, Envelope, MessageId, NewRecipient, StoreError};

/// Most messages committed in one transaction.
const MAX_BATCH: usize = 256;
/// Commits waiting for the committer; senders wait beyond this (backpressure).
const QUEUE: usize = 1024;
/// Recipients per INSERT statement (5 variables each, well below SQLite's limit of 32766).
const RECIPIENTS_PER_INSERT: usize = 500;

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
    let mut results = Vec::with_capacity(batch.len());
    for job in batch.iter_mut() {
        let result = if job.id.is_some() {
            apply_alone(&mut tx, job).await
        } else {
            match apply(&mut tx, job).await {
                Ok(id) => Ok(id),
                Err(e) => {
                    tracing::error!(error = %e, "group commit: a message failed to store; the batch is rolled back");
                    let _ = tx.rollback().await;
                    return batch
                        .iter()
                        .map(|_| Err(StoreError::Backend(shared_msg(&e))))
                        .collect();
                }
            }
        };
        results.push(result);
    }
    match tx.commit().await {
        Ok(()) => results,
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

/// Writes one message's remaining part and flips it to `queued`.
async fn apply(tx: &mut Transaction<'static, Sqlite>, job: &mut CommitJob) -> Result<MessageId, StoreError> {
    let now = now_secs();
    let id = match job.id {
        None => {
            let e = &job.envelope;
            sqlx::query_scalar(
                "INSERT INTO message
                    (state, received_at, size, eight_bit, mail_from, mail_params, helo, client_addr)
                 VALUES ('queued', ?, ?, ?, ?, ?, ?, ?)
                 RETURNING id",
            )
            .bind(now)
            .bind(job.size)
            .bind(job.eight_bit)
            .bind(&e.mail_from)
            .bind(&e.mail_params)
            .bind(&e.helo)
            .bind(&e.client_addr)
            .fetch_one(&mut **tx)
            .await?
        }
        Some(id) => {
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
            id
        }
    };
    if !job.last_chunk.is_empty() {
        insert_chunk(tx, id, job.next_seq, &job.last_chunk).await?;
    }
    // All recipients in one statement, in chunks that stay below SQLite's variable limit.
    for part in job.recipients.chunks(RECIPIENTS_PER_INSERT) {
        let mut sql = String::from(
            "INSERT INTO recipient (message, address, domain, params, state, attempts, updated_at) VALUES ",
        );
        for i in 0..part.len() {
            sql.push_str(if i == 0 {
                "(?, ?, ?, ?, 'queued', 0, ?)"
            } else {
                ", (?, ?, ?, ?, 'queued', 0, ?)"
            });
        }
        let mut q = sqlx::query(&sql);
        for r in part {
            q = q
                .bind(id)
                .bind(&r.address)
                .bind(&r.domain)
                .bind(&r.params)
                .bind(now);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(id)
}
