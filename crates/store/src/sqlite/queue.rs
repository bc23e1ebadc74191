//! The queue in the SQLite backend: what a delivery reads (pending mail, bodies) and records
//! (outcomes, fenced by the lease), and the purge of abandoned messages.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use sqlx::{Row, Sqlite, Transaction};

use super::leases::{db_now_ms, lease_lost};
use super::{placeholders, size_of, SqliteStore, RELAXED_BEGIN};
use crate::contract::Queue;
use crate::{
    domain_set, now_secs, reply_text, Lease, MessageId, Outcome, Pending, PendingRecipient, StoreError,
};

/// The query of [`Store::pending`](crate::Store::pending) for `n` domains. The inner select walks the
/// (domain, state, message) index and stops at the page's end, and `CROSS JOIN` (which SQLite
/// never reorders) makes the rest look up only that page's messages, so the cost follows the
/// mail of these domains, not the size of the queue.
pub(super) fn pending_sql(n: usize) -> String {
    let ph = placeholders(n);
    format!(
        "SELECT m.id, m.mail_from, m.mail_params, m.size, m.eight_bit, m.received_at,
                r.id AS rid, r.address, r.domain, r.params
         FROM (SELECT DISTINCT message FROM recipient
               WHERE domain IN ({ph}) AND state = 'queued' AND message > ?
               ORDER BY message LIMIT ?) AS sel
         CROSS JOIN message m
         CROSS JOIN recipient r
         WHERE m.id = sel.message AND m.state = 'queued'
           AND r.message = sel.message AND r.state = 'queued' AND r.domain IN ({ph})
         ORDER BY sel.message, r.id"
    )
}

impl Queue for SqliteStore {
    async fn purge_incomplete(&self, older_than: Duration) -> Result<u64, StoreError> {
        let age = i64::try_from(older_than.as_secs()).unwrap_or(i64::MAX / 2);
        let cutoff = now_secs().saturating_sub(age);
        // Body chunks go with the message (ON DELETE CASCADE); a receiving message has no
        // recipient rows.
        Ok(
            sqlx::query("DELETE FROM message WHERE state = 'receiving' AND received_at <= ?")
                .bind(cutoff)
                .execute(&self.write)
                .await?
                .rows_affected(),
        )
    }

    async fn pending(
        &self,
        domains: &[String],
        after: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<Pending>, StoreError> {
        let domains = domain_set(domains);
        if domains.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let sql = pending_sql(domains.len());
        let mut q = sqlx::query(&sql);
        for d in &domains {
            q = q.bind(d);
        }
        q = q
            .bind(after.unwrap_or(i64::MIN))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX));
        for d in &domains {
            q = q.bind(d);
        }
        let rows = q.fetch_all(&self.read).await?;

        let mut out: Vec<Pending> = Vec::new();
        for row in &rows {
            let id: i64 = row.try_get("id")?;
            if out.last().map(|p| p.id) != Some(id) {
                out.push(Pending {
                    id,
                    mail_from: row.try_get("mail_from")?,
                    mail_params: row.try_get("mail_params")?,
                    size: size_of(row.try_get("size")?),
                    eight_bit: row.try_get("eight_bit")?,
                    received_at: row.try_get("received_at")?,
                    recipients: Vec::new(),
                });
            }
            let p = out.last_mut().expect("pushed above");
            p.recipients.push(PendingRecipient {
                id: row.try_get("rid")?,
                address: row.try_get("address")?,
                domain: row.try_get("domain")?,
                params: row.try_get("params")?,
            });
        }
        Ok(out)
    }

    async fn has_pending(&self, domains: &[String]) -> Result<bool, StoreError> {
        let domains = domain_set(domains);
        if domains.is_empty() {
            return Ok(false);
        }
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM recipient WHERE domain IN ({}) AND state = 'queued')",
            placeholders(domains.len())
        );
        let mut q = sqlx::query_scalar::<_, bool>(&sql);
        for d in &domains {
            q = q.bind(d);
        }
        Ok(q.fetch_one(&self.read).await?)
    }

    async fn read_body(&self, id: MessageId, chunk: u32) -> Result<Option<Bytes>, StoreError> {
        let data: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT data FROM body_chunk WHERE message = ? AND seq = ?")
                .bind(id)
                .bind(i64::from(chunk))
                .fetch_optional(&self.read)
                .await?;
        Ok(data.map(Bytes::from))
    }

    async fn record(&self, lease: &Lease, outcomes: &[Outcome]) -> Result<(), StoreError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let now = now_secs();
        let mut tx = self.write.begin_with(RELAXED_BEGIN).await?;
        // Fencing: the lease must still hold every one of its domains, unexpired. The write lock
        // taken by BEGIN IMMEDIATE keeps it so until the commit.
        let live: HashSet<String> = sqlx::query_scalar(LIVE_DOMAINS)
            .bind(&lease.token)
            .bind(self.clock.millis())
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
        if live.len() != lease.domains.len() {
            return Err(lease_lost(&mut tx, lease).await?);
        }
        // A recipient named twice takes its last outcome (as if recorded one after the other).
        let mut last = HashMap::with_capacity(outcomes.len());
        for (i, o) in outcomes.iter().enumerate() {
            last.insert(o.recipient, i);
        }
        let outcomes: Vec<&Outcome> = outcomes
            .iter()
            .enumerate()
            .filter(|(i, o)| last.get(&o.recipient) == Some(i))
            .map(|(_, o)| o)
            .collect();
        // A few statements per RECORD_ROWS outcomes, not several per outcome: a session that
        // delivers thousands of messages a second records them in batches.
        let mut touched = BTreeSet::new();
        for part in outcomes.chunks(RECORD_ROWS) {
            // Recipients gone (the operator removed the message meanwhile) are simply absent.
            let sql = format!(
                "SELECT DISTINCT message, domain FROM recipient WHERE id IN ({})",
                placeholders(part.len())
            );
            let mut q = sqlx::query(&sql);
            for o in part {
                q = q.bind(o.recipient);
            }
            for row in q.fetch_all(&mut *tx).await? {
                let domain: String = row.try_get("domain")?;
                if !live.contains(&domain) {
                    return Err(StoreError::LeaseLost);
                }
                touched.insert(row.try_get::<i64, _>("message")?);
            }
            // Only a recipient still waiting for delivery takes an outcome: one the operator (or
            // expiry) gave up on meanwhile keeps that decision.
            let values = vec!["(?, ?, ?, ?, ?, ?)"; part.len()].join(", ");
            let sql = format!(
                "WITH v (id, state, code, status, text, mta) AS (VALUES {values})
                 UPDATE recipient
                 SET state = v.state, last_code = v.code, last_status = v.status,
                     last_text = v.text, remote_mta = v.mta,
                     attempts = attempts + 1, updated_at = ?
                 FROM v WHERE recipient.id = v.id AND recipient.state IN ('queued', 'held')"
            );
            let mut q = sqlx::query(&sql);
            for o in part {
                let reply = o.reply.as_ref();
                q = q
                    .bind(o.recipient)
                    .bind(o.state.as_str())
                    .bind(reply.map(|r| i64::from(r.code)))
                    .bind(reply.and_then(|r| r.status.as_deref()))
                    .bind(reply.map(reply_text))
                    .bind(o.remote_mta.as_deref());
            }
            q.bind(now).execute(&mut *tx).await?;
        }
        let touched: Vec<MessageId> = touched.into_iter().collect();
        for part in touched.chunks(RECORD_ROWS) {
            remove_if_done(&mut tx, part).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn read_first_chunks(&self, ids: &[MessageId]) -> Result<Vec<(MessageId, Bytes)>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for part in ids.chunks(RECORD_ROWS) {
            let sql = format!(
                "SELECT message, data FROM body_chunk WHERE seq = 0 AND message IN ({})",
                placeholders(part.len())
            );
            let mut q = sqlx::query(&sql);
            for id in part {
                q = q.bind(id);
            }
            for row in q.fetch_all(&self.read).await? {
                out.push((
                    row.try_get("message")?,
                    Bytes::from(row.try_get::<Vec<u8>, _>("data")?),
                ));
            }
        }
        Ok(out)
    }

    async fn pending_count(&self, domains: &[String]) -> Result<u64, StoreError> {
        let domains = domain_set(domains);
        if domains.is_empty() {
            return Ok(0);
        }
        // Recipient rows exist only for committed messages, so no join is needed.
        let sql = format!(
            "SELECT count(DISTINCT message) FROM recipient WHERE domain IN ({}) AND state = 'queued'",
            placeholders(domains.len())
        );
        let mut q = sqlx::query_scalar::<_, i64>(&sql);
        for d in &domains {
            q = q.bind(d);
        }
        Ok(size_of(q.fetch_one(&self.read).await?))
    }
}

/// The domains a lease still holds, unexpired by the database's clock: ?1 token, ?2 clock offset.
const LIVE_DOMAINS: &str = concat!(
    "SELECT domain FROM lease WHERE token = ?1 AND expires_at > ",
    db_now_ms!(2)
);

/// Outcomes (or message ids) per statement of [`Store::record`](crate::Store::record): 6 variables each, far
/// below SQLite's limit of 32766.
const RECORD_ROWS: usize = 500;

/// Removes the messages of `messages` that have nothing left to do (every recipient delivered
/// or bounced), with their recipients and bodies (ON DELETE CASCADE).
pub(super) async fn remove_if_done(
    tx: &mut Transaction<'static, Sqlite>,
    messages: &[MessageId],
) -> Result<(), StoreError> {
    if messages.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "DELETE FROM message WHERE id IN ({}) AND NOT EXISTS
            (SELECT 1 FROM recipient r
             WHERE r.message = message.id AND r.state NOT IN ('delivered', 'bounced'))",
        placeholders(messages.len())
    );
    let mut q = sqlx::query(&sql);
    for m in messages {
        q = q.bind(m);
    }
    q.execute(&mut **tx).await?;
    Ok(())
}
