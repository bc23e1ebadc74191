//! Operators' control of the queue in the SQLite backend: finding messages, and deleting,
//! bouncing, holding and releasing them. Every change is one `BEGIN IMMEDIATE` transaction, so a
//! command that races a delivery is ordered with it; deliveries record outcomes only for
//! recipients still waiting ([`Store::record`](crate::Store::record)), so an operator's decision is never
//! overwritten by a late attempt. (Domain policy and ETRN settings are in `accounts.rs`, breaking
//! a lease in `leases.rs`.)

use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use super::queue::remove_if_done;
use super::{placeholders, size_of, state_of, SqliteStore};
use crate::contract::Operators;
use crate::{
    now_secs, stored_reply, MessageId, Operation, QueueFilter, QueuedMessage, RecipientStatus, StoreError,
    DELETED,
};

/// The `WHERE` clause (over `recipient r`) and its bindings selecting what a filter selects.
struct Selection {
    sql: String,
    ids: Vec<MessageId>,
    domain: Option<String>,
}

impl Selection {
    /// `prefix` qualifies the recipient columns (`"r."`, or `""` where no alias is allowed).
    fn of(filter: &QueueFilter, prefix: &str) -> Selection {
        let mut sql = String::from("1 = 1");
        if !filter.ids.is_empty() {
            sql.push_str(&format!(
                " AND {prefix}message IN ({})",
                placeholders(filter.ids.len())
            ));
        }
        if filter.domain.is_some() {
            sql.push_str(&format!(" AND {prefix}domain = ?"));
        }
        Selection {
            sql,
            ids: filter.ids.clone(),
            domain: filter.domain.as_ref().map(|d| d.to_lowercase()),
        }
    }

    fn bind<'q, O>(
        &'q self,
        mut q: sqlx::query::QueryAs<'q, sqlx::Sqlite, O, sqlx::sqlite::SqliteArguments<'q>>,
    ) -> sqlx::query::QueryAs<'q, sqlx::Sqlite, O, sqlx::sqlite::SqliteArguments<'q>> {
        for id in &self.ids {
            q = q.bind(id);
        }
        if let Some(d) = &self.domain {
            q = q.bind(d);
        }
        q
    }
}

/// The columns [`messages_of`] reads, over `message m` and `recipient r`.
pub(super) const MESSAGE_COLUMNS: &str =
    "m.id, m.received_at, m.size, m.mail_from, m.mail_params, m.eight_bit, m.helo, m.client_addr,
     r.id AS rid, r.address, r.domain, r.params, r.state, r.last_code, r.last_status, r.last_text,
     r.remote_mta, r.status,
     r.attempts, r.updated_at, r.warned";

/// Messages from rows of [`MESSAGE_COLUMNS`] ordered by message, then recipient.
pub(super) fn messages_of(rows: &[SqliteRow]) -> Result<Vec<QueuedMessage>, StoreError> {
    let mut out: Vec<QueuedMessage> = Vec::new();
    for row in rows {
        let id: i64 = row.try_get("id")?;
        if out.last().map(|m| m.id) != Some(id) {
            out.push(QueuedMessage {
                id,
                received_at: row.try_get("received_at")?,
                size: size_of(row.try_get("size")?),
                mail_from: row.try_get("mail_from")?,
                mail_params: row.try_get("mail_params")?,
                eight_bit: row.try_get("eight_bit")?,
                helo: row.try_get("helo")?,
                client_addr: row.try_get("client_addr")?,
                recipients: Vec::new(),
            });
        }
        let state: String = row.try_get("state")?;
        let attempts: i64 = row.try_get("attempts")?;
        out.last_mut()
            .expect("pushed above")
            .recipients
            .push(RecipientStatus {
                id: row.try_get("rid")?,
                address: row.try_get("address")?,
                domain: row.try_get("domain")?,
                params: row.try_get("params")?,
                state: state_of(&state)?,
                last_reply: stored_reply(
                    row.try_get("last_code")?,
                    row.try_get("last_status")?,
                    row.try_get("last_text")?,
                )?,
                remote_mta: row.try_get("remote_mta")?,
                status: row.try_get("status")?,
                attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                updated_at: row.try_get("updated_at")?,
                warned: row.try_get("warned")?,
            });
    }
    Ok(out)
}

impl Operators for SqliteStore {
    async fn queue_ids(&self, filter: &QueueFilter) -> Result<Vec<MessageId>, StoreError> {
        let sel = Selection::of(filter, "r.");
        let sql = format!(
            "SELECT DISTINCT r.message FROM recipient r
             WHERE {} AND r.state IN ('queued', 'held', 'failed') ORDER BY r.message",
            sel.sql
        );
        let rows: Vec<(i64,)> = sel.bind(sqlx::query_as(&sql)).fetch_all(&self.read).await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    async fn queue_find(&self, filter: &QueueFilter) -> Result<Vec<QueuedMessage>, StoreError> {
        let sel = Selection::of(filter, "r.");
        // Messages with something left to do in the selection; all their recipients are shown.
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS}
             FROM message m JOIN recipient r ON r.message = m.id
             WHERE m.state = 'queued' AND m.id IN
                (SELECT r.message FROM recipient r
                 WHERE {} AND r.state IN ('queued', 'held', 'failed'))
             ORDER BY m.received_at, m.id, r.id",
            sel.sql
        );
        let mut q = sqlx::query(&sql);
        for id in &sel.ids {
            q = q.bind(id);
        }
        if let Some(d) = &sel.domain {
            q = q.bind(d);
        }
        messages_of(&q.fetch_all(&self.read).await?)
    }

    async fn queue_delete(&self, filter: &QueueFilter) -> Result<u64, StoreError> {
        self.queue_operate(filter, Operation::Delete).await
    }

    async fn queue_bounce(&self, filter: &QueueFilter) -> Result<u64, StoreError> {
        self.queue_operate(filter, Operation::Bounce).await
    }

    async fn queue_hold(&self, filter: &QueueFilter) -> Result<u64, StoreError> {
        self.queue_operate(filter, Operation::Hold).await
    }

    async fn queue_release(&self, filter: &QueueFilter) -> Result<u64, StoreError> {
        self.queue_operate(filter, Operation::Release).await
    }
}

impl SqliteStore {
    async fn queue_operate(&self, filter: &QueueFilter, op: Operation) -> Result<u64, StoreError> {
        let sel = Selection::of(filter, "");
        // The last reply stays: it is what the customer said, whatever the operator decided.
        let deleted = format!("state = 'bounced', status = '{DELETED}'");
        let (set, from) = match op {
            Operation::Delete => (deleted.as_str(), "'queued', 'held', 'failed'"),
            Operation::Bounce => ("state = 'failed', status = '5.0.0'", "'queued', 'held'"),
            Operation::Hold => ("state = 'held'", "'queued'"),
            Operation::Release => ("state = 'queued'", "'held'"),
        };
        let sql = format!(
            "UPDATE recipient SET {set}, updated_at = {now}
             WHERE {} AND state IN ({from})
             RETURNING message",
            sel.sql,
            now = now_secs()
        );
        let mut tx = self.begin().await?;
        let touched: Vec<(i64,)> = sel.bind(sqlx::query_as(&sql)).fetch_all(&mut *tx).await?;
        if op == Operation::Delete {
            let mut messages: Vec<i64> = touched.iter().map(|(m,)| *m).collect();
            messages.sort_unstable();
            messages.dedup();
            for m in messages {
                remove_if_done(&mut tx, &[m]).await?;
            }
        }
        tx.commit().await?;
        Ok(touched.len() as u64)
    }
}
