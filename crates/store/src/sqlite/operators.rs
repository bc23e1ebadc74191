//! Operators' side of the SQLite backend: domain policy, ETRN settings, queue control and
//! leases. Every change is one `BEGIN IMMEDIATE` transaction, so a command that races a delivery
//! is ordered with it; deliveries record outcomes only for recipients still waiting
//! ([`SqliteStore::record`]), so an operator's decision is never overwritten by a late attempt.

use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use super::{placeholders, remove_if_done, size_of, state_of, SqliteStore};
use crate::{
    now_millis, now_secs, DomainCheck, DomainInfo, DomainPolicy, DomainUsage, MessageId, Operation,
    QueueFilter, QueuedMessage, RecipientStatus, StoreError,
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
     r.id AS rid, r.address, r.domain, r.params, r.state, r.last_reply, r.remote_mta, r.status,
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
                last_reply: row.try_get("last_reply")?,
                remote_mta: row.try_get("remote_mta")?,
                status: row.try_get("status")?,
                attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                updated_at: row.try_get("updated_at")?,
                warned: row.try_get("warned")?,
            });
    }
    Ok(out)
}

fn opt_i64(v: Option<u64>) -> Option<i64> {
    v.map(|n| i64::try_from(n).unwrap_or(i64::MAX))
}

impl SqliteStore {
    pub async fn account_set_etrn(
        &self,
        name: &str,
        destination: Option<&str>,
        from: &[String],
    ) -> Result<(), StoreError> {
        let changed = sqlx::query("UPDATE account SET etrn_destination = ?, etrn_from = ? WHERE name = ?")
            .bind(destination)
            .bind(from.join(" "))
            .bind(name)
            .execute(&self.write)
            .await?
            .rows_affected();
        if changed == 0 {
            return Err(StoreError::AccountNotFound(name.to_string()));
        }
        Ok(())
    }

    pub async fn domain_get(&self, domain: &str) -> Result<Option<DomainInfo>, StoreError> {
        let domain = domain.to_lowercase();
        let Some(row) = sqlx::query(
            "SELECT name, account, max_messages, max_bytes, max_age, catch_all FROM domain WHERE name = ?",
        )
        .bind(&domain)
        .fetch_optional(&self.read)
        .await?
        else {
            return Ok(None);
        };
        let catch_all: bool = row.try_get("catch_all")?;
        let local_parts = if catch_all {
            None
        } else {
            Some(
                sqlx::query_scalar("SELECT name FROM local_part WHERE domain = ? ORDER BY name")
                    .bind(&domain)
                    .fetch_all(&self.read)
                    .await?,
            )
        };
        let num = |k: &str| -> Result<Option<u64>, StoreError> {
            Ok(row.try_get::<Option<i64>, _>(k)?.map(size_of))
        };
        Ok(Some(DomainInfo {
            name: row.try_get("name")?,
            account: row.try_get("account")?,
            policy: DomainPolicy {
                max_messages: num("max_messages")?,
                max_bytes: num("max_bytes")?,
                max_age: num("max_age")?,
                local_parts,
            },
        }))
    }

    pub async fn domain_set_policy(&self, domain: &str, policy: &DomainPolicy) -> Result<(), StoreError> {
        let domain = domain.to_lowercase();
        let mut tx = self.begin().await?;
        let changed = sqlx::query(
            "UPDATE domain SET max_messages = ?, max_bytes = ?, max_age = ?, catch_all = ? WHERE name = ?",
        )
        .bind(opt_i64(policy.max_messages))
        .bind(opt_i64(policy.max_bytes))
        .bind(opt_i64(policy.max_age))
        .bind(policy.local_parts.is_none())
        .bind(&domain)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            return Err(StoreError::DomainNotFound(domain));
        }
        sqlx::query("DELETE FROM local_part WHERE domain = ?")
            .bind(&domain)
            .execute(&mut *tx)
            .await?;
        for name in policy.local_parts.iter().flatten() {
            sqlx::query("INSERT INTO local_part (domain, name) VALUES (?, ?) ON CONFLICT DO NOTHING")
                .bind(&domain)
                .bind(name.to_lowercase())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn domain_accepts(
        &self,
        domain: &str,
        local_part: &str,
    ) -> Result<Option<DomainCheck>, StoreError> {
        let row: Option<(bool, bool, Option<i64>, Option<i64>)> = sqlx::query_as(
            "SELECT d.catch_all,
                    EXISTS (SELECT 1 FROM local_part l WHERE l.domain = d.name AND l.name = ?),
                    d.max_messages, d.max_bytes
             FROM domain d WHERE d.name = ?",
        )
        .bind(local_part.to_lowercase())
        .bind(domain.to_lowercase())
        .fetch_optional(&self.read)
        .await?;
        Ok(
            row.map(|(catch_all, listed, max_messages, max_bytes)| DomainCheck {
                accepted: catch_all || listed,
                max_messages: max_messages.map(size_of),
                max_bytes: max_bytes.map(size_of),
            }),
        )
    }

    pub async fn domain_usage(&self, domain: &str) -> Result<DomainUsage, StoreError> {
        let (messages, bytes): (i64, i64) = sqlx::query_as(
            "SELECT count(*), coalesce(sum(m.size), 0)
             FROM (SELECT DISTINCT message FROM recipient
                   WHERE domain = ? AND state IN ('queued', 'held', 'failed')) AS sel
             CROSS JOIN message m
             WHERE m.id = sel.message",
        )
        .bind(domain.to_lowercase())
        .fetch_one(&self.read)
        .await?;
        Ok(DomainUsage {
            messages: size_of(messages),
            bytes: size_of(bytes),
        })
    }

    pub async fn queue_ids(&self, filter: &QueueFilter) -> Result<Vec<MessageId>, StoreError> {
        let sel = Selection::of(filter, "r.");
        let sql = format!(
            "SELECT DISTINCT r.message FROM recipient r
             WHERE {} AND r.state IN ('queued', 'held', 'failed') ORDER BY r.message",
            sel.sql
        );
        let rows: Vec<(i64,)> = sel.bind(sqlx::query_as(&sql)).fetch_all(&self.read).await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    pub async fn queue_find(&self, filter: &QueueFilter) -> Result<Vec<QueuedMessage>, StoreError> {
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

    pub(crate) async fn queue_operate(&self, filter: &QueueFilter, op: Operation) -> Result<u64, StoreError> {
        let sel = Selection::of(filter, "");
        let (set, from) = match op {
            Operation::Delete => (
                "state = 'bounced', last_reply = 'deleted by the operator', remote_mta = NULL",
                "'queued', 'held', 'failed'",
            ),
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

    pub async fn lease_break(&self, domain: &str) -> Result<bool, StoreError> {
        let now = now_millis();
        let mut tx = self.begin().await?;
        let token: Option<String> = sqlx::query_scalar("DELETE FROM lease WHERE domain = ? RETURNING token")
            .bind(domain.to_lowercase())
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(token) = &token {
            // Noted for the holder's next write (see the lease_broken table), which must not
            // wait for the broken lease to expire.
            sqlx::query(
                "INSERT INTO lease_broken (token, broken_at) VALUES (?, ?) ON CONFLICT (token) DO NOTHING",
            )
            .bind(token)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM lease_broken WHERE broken_at < ?")
                .bind(now.saturating_sub(BROKEN_KEPT_MS))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(token.is_some())
    }
}

/// How long a broken lease's token is remembered: far longer than any holder takes to notice
/// (a third of the longest lease time to live, an hour).
const BROKEN_KEPT_MS: i64 = 24 * 3600 * 1000;
