//! The SQLite side of [`crate::MessageWriter`]: a body streamed in chunks, the message row
//! written only when needed, and the commit handed to the group committer.

use std::fmt;

use sqlx::{Sqlite, SqlitePool, Transaction};

use super::group_commit::CommitJob;
use super::SqliteStore;
use crate::dispatch::BackendWriter;
use crate::{now_secs, CommitInfo, Envelope, MessageId, NewRecipient, StoreError, CHUNK_SIZE};

/// The SQLite side of [`crate::MessageWriter`].
///
/// A body that fits in one chunk is written with its message row and recipients in the single
/// commit transaction. A longer one gets a message row in state `receiving` with its first full
/// chunk, then one short transaction per further chunk (no transaction stays open while the client
/// sends), and the commit transaction writes the last chunk and the recipients and flips the
/// message to `queued`.
pub struct SqliteMessageWriter {
    store: SqliteStore,
    envelope: Envelope,
    recipients: Vec<NewRecipient>,
    /// At most one chunk; stored once full and more data comes, or at commit.
    buf: Vec<u8>,
    /// The message row, once a chunk has been stored before the commit.
    id: Option<MessageId>,
    next_seq: i64,
    size: u64,
    /// Committed or aborted: nothing to clean up on drop.
    finished: bool,
}

impl fmt::Debug for SqliteMessageWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteMessageWriter")
            .field("id", &self.id)
            .field("size", &self.size)
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
}

impl BackendWriter for SqliteMessageWriter {
    fn size(&self) -> u64 {
        self.size
    }

    async fn write(&mut self, mut data: &[u8]) -> Result<(), StoreError> {
        while !data.is_empty() {
            if self.buf.len() == CHUNK_SIZE {
                self.store_buffered_chunk().await?;
            }
            if self.buf.capacity() == 0 {
                self.buf.reserve_exact(CHUNK_SIZE.min(data.len().max(4096)));
            }
            let take = (CHUNK_SIZE - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            self.size += take as u64;
            data = &data[take..];
        }
        Ok(())
    }

    async fn commit(mut self, info: CommitInfo) -> Result<MessageId, StoreError> {
        // Whatever happens now, the drop must not remove the message: the committer owns it
        // (a failed commit leaves at most a `receiving` row for the purge).
        self.finished = true;
        let store = self.store.clone();
        let result = store
            .committer
            .commit(|done| CommitJob {
                id: self.id,
                envelope: std::mem::replace(
                    &mut self.envelope,
                    Envelope {
                        mail_from: String::new(),
                        mail_params: String::new(),
                        recipients: Vec::new(),
                        helo: String::new(),
                        client_addr: String::new(),
                    },
                ),
                recipients: std::mem::take(&mut self.recipients),
                last_chunk: std::mem::take(&mut self.buf),
                next_seq: self.next_seq,
                size: i64::try_from(self.size).unwrap_or(i64::MAX),
                eight_bit: info.eight_bit,
                done,
            })
            .await;
        if result.is_err() {
            if let Some(id) = self.id {
                let _ = delete_receiving(&self.store.write, id).await;
            }
        }
        result
    }

    async fn abort(mut self) -> Result<(), StoreError> {
        self.finished = true;
        self.buf = Vec::new();
        if let Some(id) = self.id {
            delete_receiving(&self.store.write, id).await?;
        }
        Ok(())
    }
}

impl SqliteMessageWriter {
    pub(super) fn new(store: SqliteStore, envelope: Envelope, recipients: Vec<NewRecipient>) -> Self {
        SqliteMessageWriter {
            store,
            envelope,
            recipients,
            buf: Vec::new(),
            id: None,
            next_seq: 0,
            size: 0,
            finished: false,
        }
    }

    /// Stores the (full) buffer as the next chunk, in its own short transaction.
    async fn store_buffered_chunk(&mut self) -> Result<(), StoreError> {
        let mut tx = self.store.begin().await?;
        let id = match self.id {
            None => {
                let e = &self.envelope;
                sqlx::query_scalar(
                    "INSERT INTO message
                        (state, received_at, size, eight_bit, mail_from, mail_params, helo,
                         client_addr)
                     VALUES ('receiving', ?, 0, 0, ?, ?, ?, ?)
                     RETURNING id",
                )
                .bind(now_secs())
                .bind(&e.mail_from)
                .bind(&e.mail_params)
                .bind(&e.helo)
                .bind(&e.client_addr)
                .fetch_one(&mut *tx)
                .await?
            }
            Some(id) => {
                // Marks the message as alive for the purge of abandoned ones.
                let alive =
                    sqlx::query("UPDATE message SET received_at = ? WHERE id = ? AND state = 'receiving'")
                        .bind(now_secs())
                        .bind(id)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                if alive == 0 {
                    return Err(StoreError::MessageGone(id));
                }
                id
            }
        };
        insert_chunk(&mut tx, id, self.next_seq, &self.buf).await?;
        tx.commit().await?;
        self.id = Some(id);
        self.next_seq += 1;
        self.buf.clear();
        Ok(())
    }
}

impl Drop for SqliteMessageWriter {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let Some(id) = self.id else { return };
        // Neither committed nor aborted (a dropped session, a failed commit): remove the partial
        // message in the background. If that cannot happen, the purge at open does it later.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let pool = self.store.write.clone();
            handle.spawn(async move {
                if let Err(e) = delete_receiving(&pool, id).await {
                    tracing::debug!(id, error = %e, "removing an abandoned message");
                }
            });
        }
    }
}

pub(super) async fn insert_chunk(
    tx: &mut Transaction<'static, Sqlite>,
    message: MessageId,
    seq: i64,
    data: &[u8],
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO body_chunk (message, seq, data) VALUES (?, ?, ?)")
        .bind(message)
        .bind(seq)
        .bind(data)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Removes a message still being received (never a committed one), with its chunks.
async fn delete_receiving(pool: &SqlitePool, id: MessageId) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM message WHERE id = ? AND state = 'receiving'")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}
