//! The end of a message's life in the SQLite backend: expiry, and the bookkeeping of failure
//! notices and delay warnings.
//!
//! Invariant: a notice is queued in the same transaction that marks its recipients settled, so a
//! crash between "notice written" and "recipient settled" cannot happen, and no recipient is
//! notified twice (settling only touches recipients still in the expected state; if none is, no
//! notice is queued).

use std::time::Duration;

use sqlx::Row;

use super::leases::db_now_ms;
use super::operators::{messages_of, MESSAGE_COLUMNS};
use super::queue::remove_if_done;
use super::writer::insert_chunk;
use super::SqliteStore;
use crate::contract::QueueEnd;
use crate::{
    now_secs, MessageId, Notice, OutboundMessage, RecipientId, Settle, StoreError, CHUNK_SIZE, OUTBOUND_QUEUE,
};

/// Expiry: ?1 now (s, the application's clock, as `received_at`), ?2 the shortest hold time,
/// ?3 the default one, ?4 the clock offset (ms) for the database's clock, which says whether a
/// lease is live. Only messages older than the shortest hold time can expire: the (state,
/// received_at) index bounds the walk to them.
pub(super) const EXPIRE_SQL: &str = concat!(
    "UPDATE recipient SET state = 'failed', status = '4.4.7', updated_at = ?1
     WHERE id IN (
        SELECT r.id FROM message m
        CROSS JOIN recipient r
        LEFT JOIN domain d ON d.name = r.domain
        WHERE m.state = 'queued' AND m.received_at <= ?1 - ?2
          AND r.message = m.id AND r.state = 'queued'
          AND m.received_at <= ?1 - coalesce(d.max_age, ?3)
          AND NOT EXISTS
              (SELECT 1 FROM lease l WHERE l.domain = r.domain AND l.expires_at > ",
    db_now_ms!(4),
    "))"
);

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2)
}

impl QueueEnd for SqliteStore {
    async fn expire(&self, default_max_age: Duration) -> Result<u64, StoreError> {
        let now = now_secs();
        let default = secs(default_max_age);
        let mut tx = self.begin().await?;
        let shortest: Option<i64> = sqlx::query_scalar("SELECT min(max_age) FROM domain")
            .fetch_one(&mut *tx)
            .await?;
        let shortest = shortest.map_or(default, |s| s.min(default));
        let expired = sqlx::query(EXPIRE_SQL)
            .bind(now)
            .bind(shortest)
            .bind(default)
            .bind(self.clock.millis())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(expired)
    }

    async fn notices_failed(&self, limit: usize) -> Result<Vec<Notice>, StoreError> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS}
             FROM (SELECT DISTINCT message FROM recipient WHERE state = 'failed'
                   ORDER BY message LIMIT ?) AS sel
             CROSS JOIN message m
             CROSS JOIN recipient r
             WHERE m.id = sel.message AND r.message = sel.message AND r.state = 'failed'
             ORDER BY sel.message, r.id"
        );
        let rows = sqlx::query(&sql)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.read)
            .await?;
        messages_of(&rows)
    }

    async fn notices_delayed(
        &self,
        until: i64,
        after: (i64, MessageId),
        limit: usize,
    ) -> Result<Vec<Notice>, StoreError> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS}
             FROM (SELECT id FROM message
                   WHERE state = 'queued' AND received_at <= ?1 AND (received_at, id) > (?2, ?3)
                     AND mail_from <> ''
                     AND EXISTS (SELECT 1 FROM recipient
                                 WHERE recipient.message = message.id AND recipient.state = 'queued'
                                   AND recipient.warned = 0)
                   ORDER BY received_at, id LIMIT ?4) AS sel
             CROSS JOIN message m
             CROSS JOIN recipient r
             WHERE m.id = sel.id AND r.message = sel.id AND r.state = 'queued' AND r.warned = 0
             ORDER BY m.received_at, m.id, r.id"
        );
        let rows = sqlx::query(&sql)
            .bind(until)
            .bind(after.0)
            .bind(after.1)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.read)
            .await?;
        messages_of(&rows)
    }

    async fn settle_failed(
        &self,
        recipients: &[RecipientId],
        notice: Option<&OutboundMessage>,
    ) -> Result<(), StoreError> {
        self.settle(recipients, notice, Settle::Failed).await
    }

    async fn settle_delayed(
        &self,
        recipients: &[RecipientId],
        notice: Option<&OutboundMessage>,
    ) -> Result<(), StoreError> {
        self.settle(recipients, notice, Settle::Delayed).await
    }

    async fn queue_notice(&self, notice: &OutboundMessage) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        queue_outbound(&mut tx, notice, now_secs()).await?;
        tx.commit().await?;
        Ok(())
    }
}

impl SqliteStore {
    async fn settle(
        &self,
        recipients: &[RecipientId],
        notice: Option<&OutboundMessage>,
        kind: Settle,
    ) -> Result<(), StoreError> {
        let now = now_secs();
        let mut tx = self.begin().await?;
        let mut settled = 0u64;
        let mut messages = Vec::new();
        for id in recipients {
            let row = match kind {
                Settle::Failed => {
                    sqlx::query(
                        "UPDATE recipient SET state = 'bounced', updated_at = ?
                         WHERE id = ? AND state = 'failed' RETURNING message",
                    )
                    .bind(now)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?
                }
                Settle::Delayed => {
                    sqlx::query(
                        "UPDATE recipient SET warned = 1
                         WHERE id = ? AND state = 'queued' AND warned = 0 RETURNING message",
                    )
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?
                }
            };
            if let Some(row) = row {
                settled += 1;
                messages.push(row.try_get::<i64, _>("message")?);
            }
        }
        if settled > 0 {
            if let Some(n) = notice {
                queue_outbound(&mut tx, n, now).await?;
            }
        }
        if kind == Settle::Failed {
            messages.sort_unstable();
            messages.dedup();
            for m in messages {
                remove_if_done(&mut tx, &[m]).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Queues a notice from the null sender for the bounce relay, inside the caller's transaction.
async fn queue_outbound(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    n: &OutboundMessage,
    now: i64,
) -> Result<(), StoreError> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO message
            (state, received_at, size, eight_bit, mail_from, mail_params, helo, client_addr)
         VALUES ('queued', ?, ?, ?, '', ?, '', 'local')
         RETURNING id",
    )
    .bind(now)
    .bind(i64::try_from(n.body.len()).unwrap_or(i64::MAX))
    .bind(n.eight_bit)
    .bind(&n.mail_params)
    .fetch_one(&mut **tx)
    .await?;
    for (seq, chunk) in n.body.chunks(CHUNK_SIZE).enumerate() {
        insert_chunk(tx, id, seq as i64, chunk).await?;
    }
    sqlx::query(
        "INSERT INTO recipient (message, address, domain, params, state, attempts, updated_at)
         VALUES (?, ?, ?, '', 'queued', 0, ?)",
    )
    .bind(id)
    .bind(&n.to)
    .bind(OUTBOUND_QUEUE)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
