//! The SQLite backend: one file `<dir>/odmr.db` in WAL mode with `synchronous=FULL`, shared by
//! every process that opens the directory (the server, the CLI).
//!
//! - All writes of one [`SqliteStore`] (and its clones) go through a single writer connection
//!   (a pool of one), in `BEGIN IMMEDIATE` transactions, so sessions of one process queue up
//!   in-process instead of fighting over `SQLITE_BUSY`; writers of other processes are waited for
//!   with `busy_timeout`.
//! - Reads go through a small pool of their own; each read is one statement, hence one consistent
//!   snapshot, and never waits for a writer (WAL).
//! - The schema is versioned with `PRAGMA user_version` and upgraded inside one `BEGIN IMMEDIATE`
//!   transaction, so processes opening the store at the same time cannot both apply a migration.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};

use crate::{
    account_domains, check_account_name, domain_set, duration_millis, new_token, normalize_domain,
    now_millis, now_secs, Account, CommitInfo, Credential, Envelope, Lease, LeaseRow, MessageId,
    NewRecipient, Outcome, Pending, PendingRecipient, RecipientState, StoreError, CHUNK_SIZE,
    STALE_RECEIVING,
};

mod group_commit;
mod operators;
mod queue_end;

use group_commit::{CommitJob, Committer};

/// How every write transaction starts: with `synchronous=FULL`, so its commit is on stable
/// storage when it returns. Set per transaction because [`RELAXED_BEGIN`] lowers it.
const DURABLE_BEGIN: &str = "PRAGMA synchronous = FULL; BEGIN IMMEDIATE";
/// How the transactions recording delivery outcomes start: `synchronous=NORMAL`, no fsync of
/// their own. WAL keeps them atomic and safe against a process crash (kill -9); only a power loss
/// can undo the latest ones, and an undone outcome means a message delivered again — never a
/// message lost, since the message itself was committed with `FULL`. This is what lets one
/// session drain thousands of messages a second.
const RELAXED_BEGIN: &str = "PRAGMA synchronous = NORMAL; BEGIN IMMEDIATE";

/// The file inside the store directory.
pub const DB_FILE: &str = "odmr.db";

/// The migrations, in order; `PRAGMA user_version` counts how many are applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/sqlite/0001_init.sql"),
    include_str!("../../migrations/sqlite/0002_queue_life.sql"),
    include_str!("../../migrations/sqlite/0003_lease_broken.sql"),
    include_str!("../../migrations/sqlite/0004_domain_spelling.sql"),
];

/// How long a statement waits for another process's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a write waits for this process's writer connection.
const WRITER_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(120);
/// Reader connections per store.
const READERS: u32 = 4;
/// How long opening keeps retrying while another process holds a lock that `busy_timeout` cannot
/// wait for (switching a new database to WAL).
const OPEN_RETRY: Duration = Duration::from_secs(10);

/// A store in one SQLite file. Clones share the connections.
#[derive(Clone)]
pub struct SqliteStore {
    write: SqlitePool,
    read: SqlitePool,
    path: Arc<PathBuf>,
    committer: Committer,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn is_busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| matches!(c & 0xff, 5 | 6)), // SQLITE_BUSY, SQLITE_LOCKED
        _ => false,
    }
}

/// `?, ?, …` for `n` parameters.
fn placeholders(n: usize) -> String {
    let mut s = String::with_capacity(n * 3);
    for i in 0..n {
        if i > 0 {
            s.push_str(", ");
        }
        s.push('?');
    }
    s
}

/// The query of [`SqliteStore::pending`] for `n` domains. The inner select walks the
/// (domain, state, message) index and stops at the page's end, and `CROSS JOIN` (which SQLite
/// never reorders) makes the rest look up only that page's messages, so the cost follows the
/// mail of these domains, not the size of the queue.
fn pending_sql(n: usize) -> String {
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

fn state_of(s: &str) -> Result<RecipientState, StoreError> {
    RecipientState::parse(s).ok_or_else(|| StoreError::Corrupt(format!("recipient state {s:?}")))
}

fn size_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Why a lease no longer holds all its domains: [`StoreError::LeaseBroken`] if the operator
/// broke it, [`StoreError::LeaseLost`] otherwise (it expired and was taken over, or released).
async fn lease_lost(tx: &mut Transaction<'static, Sqlite>, lease: &Lease) -> Result<StoreError, StoreError> {
    let broken: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM lease_broken WHERE token = ?)")
        .bind(&lease.token)
        .fetch_one(&mut **tx)
        .await?;
    Ok(if broken {
        StoreError::LeaseBroken
    } else {
        StoreError::LeaseLost
    })
}

/// What opening a store did to its schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Schema {
    /// A new store: every migration was applied.
    Created { version: i64 },
    /// An existing store of an older version was brought up to date.
    Upgraded { from: i64, to: i64 },
    /// Nothing to do.
    Current,
}

impl SqliteStore {
    /// Opens `<dir>/odmr.db` (see [`crate::Store::open_sqlite`]).
    pub async fn open(dir: &Path) -> Result<SqliteStore, StoreError> {
        let (store, schema) = Self::open_migrated(dir).await?;
        let path = store.path.display();
        // Said once per store and per upgrade: of processes opening a store at the same time,
        // only the one that applies the migrations sees a change.
        match schema {
            Schema::Created { version } => tracing::info!(path = %path, version, "store created"),
            Schema::Upgraded { from, to } => {
                tracing::info!(path = %path, "store schema upgraded from {from} to {to}")
            }
            Schema::Current => {}
        }
        Ok(store)
    }

    /// Opens the store and says what it did to the schema.
    async fn open_migrated(dir: &Path) -> Result<(SqliteStore, Schema), StoreError> {
        tokio::fs::create_dir_all(dir).await?;
        let path = dir.join(DB_FILE);
        let base = SqliteConnectOptions::new()
            .filename(&path)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            .synchronous(SqliteSynchronous::Full);
        let write_options = base
            .clone()
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);

        let started = Instant::now();
        let write = loop {
            let attempt = SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .acquire_timeout(WRITER_ACQUIRE_TIMEOUT)
                .idle_timeout(None)
                .max_lifetime(None)
                // A ping before each use is a round trip to the connection's thread and tests
                // nothing for a local file (a broken connection fails the statement anyway).
                .test_before_acquire(false)
                // Statements run outside a transaction of ours (autocommit) must be durable
                // too, whatever the previous user of the connection set (see RELAXED_BEGIN).
                .after_release(|conn, _| {
                    Box::pin(async move {
                        sqlx::query("PRAGMA synchronous = FULL")
                            .execute(&mut *conn)
                            .await?;
                        Ok(true)
                    })
                })
                .connect_with(write_options.clone())
                .await;
            match attempt {
                Ok(pool) => break pool,
                Err(e) if is_busy(&e) && started.elapsed() < OPEN_RETRY => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };

        // Readers: the file is in WAL mode by now (a persistent setting), so they set nothing
        // that needs a lock.
        let read = SqlitePoolOptions::new()
            .max_connections(READERS)
            .min_connections(0)
            .test_before_acquire(false)
            .idle_timeout(Some(Duration::from_secs(600)))
            .connect_lazy_with(base);

        let store = SqliteStore {
            committer: Committer::start(write.clone()),
            write,
            read,
            path: Arc::new(path),
        };
        let schema = match store.migrate().await {
            Ok(s) => s,
            Err(e) => {
                store.close().await;
                return Err(e);
            }
        };
        let purged = store.purge_incomplete(STALE_RECEIVING).await?;
        if purged > 0 {
            tracing::info!(purged, "removed messages abandoned while being received");
        }
        Ok((store, schema))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn begin(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        Ok(self.write.begin_with(DURABLE_BEGIN).await?)
    }

    async fn migrate(&self) -> Result<Schema, StoreError> {
        let supported = MIGRATIONS.len() as i64;
        let mut tx = self.begin().await?;
        let version: i64 = sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(&mut *tx)
            .await?;
        if version > supported {
            return Err(StoreError::SchemaTooNew {
                found: version,
                supported,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            sqlx::raw_sql(sql).execute(&mut *tx).await?;
            // PRAGMA takes no parameters; the value is a number we made.
            let set = format!("PRAGMA user_version = {}", i + 1);
            sqlx::raw_sql(&set).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        // Version 0 is a database without any of our tables: the file was just made.
        Ok(match version {
            0 => Schema::Created { version: supported },
            v if v < supported => Schema::Upgraded {
                from: v,
                to: supported,
            },
            _ => Schema::Current,
        })
    }

    pub async fn close(&self) {
        self.read.close().await;
        if !self.write.is_closed() {
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&self.write)
                .await
            {
                tracing::debug!(error = %e, "WAL checkpoint at close");
            }
        }
        self.write.close().await;
    }

    // ----- accounts and domains -----

    pub async fn account_add(
        &self,
        name: &str,
        credentials: &[Credential],
        domains: &[String],
    ) -> Result<(), StoreError> {
        check_account_name(name)?;
        let domains = account_domains(domains)?;
        let mut tx = self.begin().await?;
        let inserted =
            sqlx::query("INSERT INTO account (name, created_at) VALUES (?, ?) ON CONFLICT (name) DO NOTHING")
                .bind(name)
                .bind(now_secs())
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if inserted == 0 {
            return Err(StoreError::AccountExists(name.to_string()));
        }
        insert_credentials(&mut tx, name, credentials).await?;
        for domain in &domains {
            insert_domain(&mut tx, name, domain).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn account_remove(&self, name: &str) -> Result<(), StoreError> {
        // Credentials and domains go with it (ON DELETE CASCADE).
        let removed = sqlx::query("DELETE FROM account WHERE name = ?")
            .bind(name)
            .execute(&self.write)
            .await?
            .rows_affected();
        if removed == 0 {
            return Err(StoreError::AccountNotFound(name.to_string()));
        }
        Ok(())
    }

    pub async fn account_set_credentials(
        &self,
        name: &str,
        credentials: &[Credential],
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        require_account(&mut tx, name).await?;
        sqlx::query("DELETE FROM credential WHERE account = ?")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        insert_credentials(&mut tx, name, credentials).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn account_credential(&self, name: &str, scheme: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT data FROM credential WHERE account = ? AND scheme = ?")
                .bind(name)
                .bind(scheme)
                .fetch_optional(&self.read)
                .await?,
        )
    }

    pub async fn account_by_credential(
        &self,
        scheme: &str,
        data: &[u8],
    ) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT account FROM credential WHERE scheme = ? AND data = ? ORDER BY account LIMIT 1",
        )
        .bind(scheme)
        .bind(data)
        .fetch_optional(&self.read)
        .await?)
    }

    pub async fn account_put_credential(
        &self,
        name: &str,
        credential: &Credential,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let exists: Option<String> = sqlx::query_scalar("SELECT name FROM account WHERE name = ?")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(StoreError::AccountNotFound(name.to_string()));
        }
        sqlx::query(
            "INSERT INTO credential (account, scheme, data) VALUES (?, ?, ?)
             ON CONFLICT (account, scheme) DO UPDATE SET data = excluded.data",
        )
        .bind(name)
        .bind(&credential.scheme)
        .bind(&credential.data)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn account_get(&self, name: &str) -> Result<Option<Account>, StoreError> {
        let rows = sqlx::query(
            "SELECT a.name, a.created_at, a.etrn_destination, a.etrn_from, d.name AS domain
             FROM account a LEFT JOIN domain d ON d.account = a.name
             WHERE a.name = ?
             ORDER BY d.name",
        )
        .bind(name)
        .fetch_all(&self.read)
        .await?;
        Ok(accounts_of(&rows)?.pop())
    }

    pub async fn account_list(&self) -> Result<Vec<Account>, StoreError> {
        let rows = sqlx::query(
            "SELECT a.name, a.created_at, a.etrn_destination, a.etrn_from, d.name AS domain
             FROM account a LEFT JOIN domain d ON d.account = a.name
             ORDER BY a.name, d.name",
        )
        .fetch_all(&self.read)
        .await?;
        accounts_of(&rows)
    }

    pub async fn domain_add(&self, account: &str, domain: &str) -> Result<(), StoreError> {
        let domain = normalize_domain(domain)?;
        let mut tx = self.begin().await?;
        require_account(&mut tx, account).await?;
        insert_domain(&mut tx, account, &domain).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn domain_remove(&self, domain: &str) -> Result<(), StoreError> {
        let domain = domain.to_lowercase();
        let removed = sqlx::query("DELETE FROM domain WHERE name = ?")
            .bind(&domain)
            .execute(&self.write)
            .await?
            .rows_affected();
        if removed == 0 {
            return Err(StoreError::DomainNotFound(domain));
        }
        Ok(())
    }

    pub async fn domain_owner(&self, domain: &str) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT account FROM domain WHERE name = ?")
            .bind(domain.to_lowercase())
            .fetch_optional(&self.read)
            .await?)
    }

    // ----- receiving -----

    pub(crate) fn receive(&self, envelope: Envelope, recipients: Vec<NewRecipient>) -> SqliteMessageWriter {
        SqliteMessageWriter {
            store: self.clone(),
            envelope,
            recipients,
            buf: Vec::new(),
            id: None,
            next_seq: 0,
            size: 0,
            finished: false,
        }
    }

    pub async fn purge_incomplete(&self, older_than: Duration) -> Result<u64, StoreError> {
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

    // ----- delivery -----

    pub async fn lease_acquire(
        &self,
        domains: &[String],
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let domains = domain_set(domains);
        let token = new_token();
        let now = now_millis();
        let expires_at = now.saturating_add(duration_millis(ttl));
        let mut tx = self.begin().await?;
        for domain in &domains {
            // Takes a free domain or an expired lease; returns no row if the domain is leased.
            let taken: Option<String> = sqlx::query_scalar(
                "INSERT INTO lease (domain, token, holder, expires_at) VALUES (?, ?, ?, ?)
                 ON CONFLICT (domain) DO UPDATE
                    SET token = excluded.token, holder = excluded.holder,
                        expires_at = excluded.expires_at
                    WHERE lease.expires_at <= ?
                 RETURNING domain",
            )
            .bind(domain)
            .bind(&token)
            .bind(holder)
            .bind(expires_at)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            if taken.is_none() {
                tx.rollback().await?;
                return Ok(None);
            }
        }
        tx.commit().await?;
        Ok(Some(Lease {
            domains,
            token,
            holder: holder.to_string(),
        }))
    }

    pub async fn lease_renew(&self, lease: &Lease, ttl: Duration) -> Result<(), StoreError> {
        let expires_at = now_millis().saturating_add(duration_millis(ttl));
        let mut tx = self.begin().await?;
        let renewed = sqlx::query("UPDATE lease SET expires_at = ? WHERE token = ?")
            .bind(expires_at)
            .bind(&lease.token)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if renewed != lease.domains.len() as u64 {
            let lost = lease_lost(&mut tx, lease).await?;
            tx.rollback().await?;
            return Err(lost);
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn lease_release(&self, lease: &Lease) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM lease WHERE token = ?")
            .bind(&lease.token)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    pub async fn lease_list(&self) -> Result<Vec<LeaseRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT domain, token, holder, expires_at FROM lease WHERE expires_at > ? ORDER BY domain",
        )
        .bind(now_millis())
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(LeaseRow {
                    domain: r.try_get("domain")?,
                    token: r.try_get("token")?,
                    holder: r.try_get("holder")?,
                    expires_at: r.try_get("expires_at")?,
                })
            })
            .collect()
    }

    pub async fn pending(
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

    pub async fn has_pending(&self, domains: &[String]) -> Result<bool, StoreError> {
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

    pub async fn read_body(&self, id: MessageId, chunk: u32) -> Result<Option<Bytes>, StoreError> {
        let data: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT data FROM body_chunk WHERE message = ? AND seq = ?")
                .bind(id)
                .bind(i64::from(chunk))
                .fetch_optional(&self.read)
                .await?;
        Ok(data.map(Bytes::from))
    }

    pub async fn record(&self, lease: &Lease, outcomes: &[Outcome]) -> Result<(), StoreError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let now_ms = now_millis();
        let now = now_secs();
        let mut tx = self.write.begin_with(RELAXED_BEGIN).await?;
        // Fencing: the lease must still hold every one of its domains, unexpired. The write lock
        // taken by BEGIN IMMEDIATE keeps it so until the commit.
        let live: HashSet<String> =
            sqlx::query_scalar("SELECT domain FROM lease WHERE token = ? AND expires_at > ?")
                .bind(&lease.token)
                .bind(now_ms)
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
            let values = vec!["(?, ?, ?, ?)"; part.len()].join(", ");
            let sql = format!(
                "WITH v (id, state, reply, mta) AS (VALUES {values})
                 UPDATE recipient
                 SET state = v.state, last_reply = v.reply, remote_mta = v.mta,
                     attempts = attempts + 1, updated_at = ?
                 FROM v WHERE recipient.id = v.id AND recipient.state IN ('queued', 'held')"
            );
            let mut q = sqlx::query(&sql);
            for o in part {
                q = q
                    .bind(o.recipient)
                    .bind(o.state.as_str())
                    .bind(o.reply.as_deref())
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

    pub async fn read_first_chunks(&self, ids: &[MessageId]) -> Result<Vec<(MessageId, Bytes)>, StoreError> {
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

    pub async fn pending_count(&self, domains: &[String]) -> Result<u64, StoreError> {
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

/// Outcomes (or message ids) per statement of [`SqliteStore::record`]: 4 variables each, far
/// below SQLite's limit of 32766.
const RECORD_ROWS: usize = 500;

/// Removes the messages of `messages` that have nothing left to do (every recipient delivered
/// or bounced), with their recipients and bodies (ON DELETE CASCADE).
async fn remove_if_done(
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

async fn require_account(tx: &mut Transaction<'static, Sqlite>, name: &str) -> Result<(), StoreError> {
    let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM account WHERE name = ?")
        .bind(name)
        .fetch_optional(&mut **tx)
        .await?;
    match found {
        Some(_) => Ok(()),
        None => Err(StoreError::AccountNotFound(name.to_string())),
    }
}

async fn insert_credentials(
    tx: &mut Transaction<'static, Sqlite>,
    account: &str,
    credentials: &[Credential],
) -> Result<(), StoreError> {
    for c in credentials {
        sqlx::query(
            "INSERT INTO credential (account, scheme, data) VALUES (?, ?, ?)
             ON CONFLICT (account, scheme) DO UPDATE SET data = excluded.data",
        )
        .bind(account)
        .bind(&c.scheme)
        .bind(&c.data)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Gives an already normalized domain to an existing account.
async fn insert_domain(
    tx: &mut Transaction<'static, Sqlite>,
    account: &str,
    domain: &str,
) -> Result<(), StoreError> {
    let inserted =
        sqlx::query("INSERT INTO domain (name, account) VALUES (?, ?) ON CONFLICT (name) DO NOTHING")
            .bind(domain)
            .bind(account)
            .execute(&mut **tx)
            .await?
            .rows_affected();
    if inserted == 0 {
        let owner: String = sqlx::query_scalar("SELECT account FROM domain WHERE name = ?")
            .bind(domain)
            .fetch_one(&mut **tx)
            .await?;
        return Err(StoreError::DomainTaken {
            domain: domain.to_string(),
            owner,
        });
    }
    Ok(())
}

/// Accounts from rows of (name, created_at, etrn_destination, etrn_from, domain) ordered by name.
fn accounts_of(rows: &[SqliteRow]) -> Result<Vec<Account>, StoreError> {
    let mut out: Vec<Account> = Vec::new();
    for row in rows {
        let name: String = row.try_get("name")?;
        if out.last().map(|a| a.name.as_str()) != Some(name.as_str()) {
            let etrn_from: String = row.try_get("etrn_from")?;
            out.push(Account {
                name,
                domains: Vec::new(),
                created_at: row.try_get("created_at")?,
                etrn_destination: row.try_get("etrn_destination")?,
                etrn_from: etrn_from.split_whitespace().map(str::to_string).collect(),
            });
        }
        if let Some(domain) = row.try_get::<Option<String>, _>("domain")? {
            out.last_mut().expect("pushed above").domains.push(domain);
        }
    }
    Ok(out)
}

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

impl SqliteMessageWriter {
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    pub(crate) async fn write(&mut self, mut data: &[u8]) -> Result<(), StoreError> {
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

    pub(crate) async fn commit(mut self, info: CommitInfo) -> Result<MessageId, StoreError> {
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

    pub(crate) async fn abort(mut self) -> Result<(), StoreError> {
        self.finished = true;
        self.buf = Vec::new();
        if let Some(id) = self.id {
            delete_receiving(&self.store.write, id).await?;
        }
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

async fn insert_chunk(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EnvelopeRecipient, Store};

    fn envelope(rcpt: &str) -> Envelope {
        Envelope {
            mail_from: "a@b.example".into(),
            mail_params: String::new(),
            recipients: vec![EnvelopeRecipient {
                address: rcpt.into(),
                params: String::new(),
            }],
            helo: "client.example".into(),
            client_addr: "192.0.2.1:4000".into(),
        }
    }

    async fn count(store: &SqliteStore, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&store.read).await.unwrap()
    }

    #[tokio::test]
    async fn pragmas_are_set() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).await.unwrap();
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&store.write)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        for pool in [&store.write, &store.read] {
            let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
                .fetch_one(pool)
                .await
                .unwrap();
            assert_eq!(sync, 2, "FULL");
            let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
                .fetch_one(pool)
                .await
                .unwrap();
            assert_eq!(fk, 1);
        }
        let version: i64 = sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(&store.read)
            .await
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        assert!(dir.path().join(DB_FILE).exists());
        store.close().await;
    }

    /// A new store is created once, with every migration; opening it again changes nothing.
    #[tokio::test]
    async fn a_new_store_is_created_not_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        let supported = MIGRATIONS.len() as i64;
        let (store, schema) = SqliteStore::open_migrated(dir.path()).await.unwrap();
        assert_eq!(schema, Schema::Created { version: supported });
        store.close().await;
        let (store, schema) = SqliteStore::open_migrated(dir.path()).await.unwrap();
        assert_eq!(schema, Schema::Current);
        store.close().await;
    }

    #[tokio::test]
    async fn creates_missing_directories() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b/c");
        let store = SqliteStore::open(&nested).await.unwrap();
        assert!(nested.join(DB_FILE).exists());
        store.close().await;
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).await.unwrap();
        sqlx::query("PRAGMA user_version = 99")
            .execute(&store.write)
            .await
            .unwrap();
        store.close().await;
        match SqliteStore::open(dir.path()).await {
            Err(StoreError::SchemaTooNew { found: 99, .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    /// A crash mid-DATA leaves a `receiving` message: opening removes it once it is stale, but
    /// never one another process may still be receiving.
    #[tokio::test]
    async fn open_removes_stale_receiving_messages_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(dir.path()).await.unwrap();
        let Store::Sqlite(inner) = &store;
        for _ in 0..2 {
            let mut w = store.receive(envelope("x@y.example")).await.unwrap();
            w.write(&vec![b'x'; CHUNK_SIZE * 2 + 5]).await.unwrap();
            std::mem::forget(w); // a crash: no drop, no abort
        }
        assert_eq!(
            count(inner, "SELECT count(*) FROM message WHERE state = 'receiving'").await,
            2
        );
        assert_eq!(count(inner, "SELECT count(*) FROM body_chunk").await, 4);
        // One of them went idle long ago.
        sqlx::query(
            "UPDATE message SET received_at = received_at - ? WHERE id = (SELECT min(id) FROM message)",
        )
        .bind(STALE_RECEIVING.as_secs() as i64 + 10)
        .execute(&inner.write)
        .await
        .unwrap();

        let second = Store::open_sqlite(dir.path()).await.unwrap();
        let Store::Sqlite(inner2) = &second;
        assert_eq!(count(inner2, "SELECT count(*) FROM message").await, 1);
        assert_eq!(count(inner2, "SELECT count(*) FROM body_chunk").await, 2);
        second.close().await;
        store.close().await;
    }

    #[tokio::test]
    async fn dropping_a_writer_removes_its_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(dir.path()).await.unwrap();
        let Store::Sqlite(inner) = &store;
        let mut w = store.receive(envelope("x@y.example")).await.unwrap();
        w.write(&vec![b'x'; CHUNK_SIZE * 3]).await.unwrap();
        assert_eq!(count(inner, "SELECT count(*) FROM body_chunk").await, 2);
        drop(w);
        let mut left = 1;
        for _ in 0..200 {
            left = count(inner, "SELECT count(*) FROM message").await;
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(left, 0);
        assert_eq!(count(inner, "SELECT count(*) FROM body_chunk").await, 0);
        store.close().await;
    }

    #[tokio::test]
    async fn a_small_message_is_one_transaction_and_a_large_one_keeps_none_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(dir.path()).await.unwrap();
        let Store::Sqlite(inner) = &store;
        // Exactly one chunk: nothing is written before the commit.
        let mut w = store.receive(envelope("x@y.example")).await.unwrap();
        w.write(&vec![b'a'; CHUNK_SIZE]).await.unwrap();
        assert_eq!(count(inner, "SELECT count(*) FROM message").await, 0);
        w.commit(CommitInfo::default()).await.unwrap();
        assert_eq!(count(inner, "SELECT count(*) FROM body_chunk").await, 1);

        // Between chunks of a large one, another writer gets through at once.
        let mut w = store.receive(envelope("x@y.example")).await.unwrap();
        w.write(&vec![b'b'; CHUNK_SIZE + 1]).await.unwrap();
        let other = store.receive(envelope("z@y.example")).await.unwrap();
        tokio::time::timeout(Duration::from_secs(2), other.commit(CommitInfo::default()))
            .await
            .expect("not blocked")
            .unwrap();
        w.commit(CommitInfo::default()).await.unwrap();
        assert_eq!(store.queue_list().await.unwrap().len(), 3);
        store.close().await;
    }

    #[tokio::test]
    async fn commit_fails_if_the_partial_message_was_purged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(dir.path()).await.unwrap();
        let mut w = store.receive(envelope("x@y.example")).await.unwrap();
        w.write(&vec![b'x'; CHUNK_SIZE + 1]).await.unwrap();
        assert_eq!(store.purge_incomplete(Duration::ZERO).await.unwrap(), 1);
        match w.commit(CommitInfo::default()).await {
            Err(StoreError::MessageGone(_)) => {}
            other => panic!("{other:?}"),
        }
        assert!(store.queue_list().await.unwrap().is_empty());
        store.close().await;
    }

    /// The pending query must not scan a table: its cost follows the page, not the queue.
    #[tokio::test]
    async fn pending_uses_the_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).await.unwrap();
        for n in [1, 3] {
            let sql = format!("EXPLAIN QUERY PLAN {}", pending_sql(n));
            let rows = sqlx::query(&sql).fetch_all(&store.read).await.unwrap();
            let plan: Vec<String> = rows.iter().map(|r| r.get("detail")).collect();
            let joined = plan.join("\n");
            assert!(
                plan.iter().all(|l| !l.starts_with("SCAN") || l == "SCAN sel"),
                "{joined}"
            );
            assert!(
                joined.contains("SEARCH r USING")
                    && joined.contains("message=?)")
                    && joined.contains("USING INTEGER PRIMARY KEY"),
                "{joined}"
            );
        }
        store.close().await;
    }

    /// A store of schema 1 with mail in it is upgraded in place: recipients keep their ids and
    /// states, and new ids continue above the old ones.
    #[tokio::test]
    async fn schema_1_is_upgraded_keeping_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        {
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(
                    SqliteConnectOptions::new()
                        .filename(dir.path().join(DB_FILE))
                        .create_if_missing(true),
                )
                .await
                .unwrap();
            sqlx::raw_sql(MIGRATIONS[0]).execute(&pool).await.unwrap();
            sqlx::raw_sql(
                "PRAGMA user_version = 1;
                 INSERT INTO account (name, created_at) VALUES ('acme', 1);
                 INSERT INTO domain (name, account) VALUES ('y.example', 'acme');
                 INSERT INTO message (id, state, received_at, size, mail_from, mail_params, helo, client_addr)
                     VALUES (7, 'queued', 1, 4, 'a@b.example', '', 'h', '192.0.2.1:1');
                 INSERT INTO body_chunk (message, seq, data) VALUES (7, 0, x'61626364');
                 INSERT INTO recipient (id, message, address, domain, params, state, last_reply, attempts, updated_at)
                     VALUES (41, 7, 'x@y.example', 'y.example', '', 'failed', '550 no', 1, 1),
                            (42, 7, 'z@y.example', 'y.example', '', 'queued', NULL, 0, 1);",
            )
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
        let (inner, schema) = SqliteStore::open_migrated(dir.path()).await.unwrap();
        assert_eq!(
            schema,
            Schema::Upgraded {
                from: 1,
                to: MIGRATIONS.len() as i64
            }
        );
        let store = Store::Sqlite(inner);
        let q = store.queue_list().await.unwrap();
        assert_eq!(q.len(), 1);
        let r: Vec<_> = q[0]
            .recipients
            .iter()
            .map(|r| (r.id, r.state, r.last_reply.clone()))
            .collect();
        assert_eq!(
            r,
            [
                (41, RecipientState::Failed, Some("550 no".to_string())),
                (42, RecipientState::Queued, None)
            ]
        );
        assert_eq!(store.notices_failed(10).await.unwrap()[0].recipients[0].id, 41);
        let info = store.domain_get("y.example").await.unwrap().unwrap();
        assert_eq!(info.policy, crate::DomainPolicy::default());
        let id = store
            .receive(envelope("n@y.example"))
            .await
            .unwrap()
            .commit(CommitInfo::default())
            .await
            .unwrap();
        assert!(id > 7);
        let q = store.queue_list().await.unwrap();
        assert!(q[1].recipients[0].id > 42);
        store.close().await;
    }

    /// Schema 4 gives held recipients' domains the one spelling ATRN asks for: versions before
    /// it kept the root dot of `bob@example.org.` (and its case), so that mail was never found.
    #[tokio::test]
    async fn schema_4_repairs_domains_stored_in_another_spelling() {
        let dir = tempfile::tempdir().unwrap();
        {
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(
                    SqliteConnectOptions::new()
                        .filename(dir.path().join(DB_FILE))
                        .create_if_missing(true),
                )
                .await
                .unwrap();
            for m in &MIGRATIONS[..3] {
                sqlx::raw_sql(m).execute(&pool).await.unwrap();
            }
            sqlx::raw_sql(
                "PRAGMA user_version = 3;
                 INSERT INTO message (id, state, received_at, size, mail_from, mail_params, helo, client_addr)
                     VALUES (7, 'queued', 1, 4, 'a@b.example', '', 'h', '192.0.2.1:1');
                 INSERT INTO body_chunk (message, seq, data) VALUES (7, 0, x'61626364');
                 INSERT INTO recipient (id, message, address, domain, params, state, last_reply, attempts, updated_at)
                     VALUES (41, 7, 'x@y.example.', 'y.example.', '', 'queued', NULL, 0, 1),
                            (42, 7, 'z@Y.Example', 'Y.Example', '', 'queued', NULL, 0, 1),
                            (43, 7, 'w@y.example', 'y.example', '', 'queued', NULL, 0, 1);",
            )
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
        let (inner, _) = SqliteStore::open_migrated(dir.path()).await.unwrap();
        let domains: Vec<(i64, String)> = sqlx::query_as("SELECT id, domain FROM recipient ORDER BY id")
            .fetch_all(&inner.write)
            .await
            .unwrap();
        assert_eq!(
            domains,
            [
                (41, "y.example".to_string()),
                (42, "y.example".into()),
                (43, "y.example".into())
            ]
        );
        Store::Sqlite(inner).close().await;
    }

    /// Expiry walks only old messages (the state/received_at index), never the whole queue.
    #[tokio::test]
    async fn expiry_uses_the_age_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).await.unwrap();
        let rows = sqlx::query(&format!("EXPLAIN QUERY PLAN {}", queue_end::EXPIRE_SQL))
            .bind(5)
            .bind(1)
            .bind(1)
            .bind(5)
            .fetch_all(&store.write)
            .await
            .unwrap();
        let plan: Vec<String> = rows.iter().map(|r| r.get("detail")).collect();
        assert!(
            plan.iter()
                .any(|l| l.contains("SEARCH m USING") && l.contains("message_state")),
            "{plan:?}"
        );
        assert!(
            plan.iter()
                .all(|l| !l.starts_with("SCAN") || l.starts_with("SCAN d")),
            "{plan:?}"
        );
        store.close().await;
    }

    /// Commits arriving together share transactions, each still gets its own id and result, and
    /// one failing message (purged while being received) does not take the others down.
    #[tokio::test]
    async fn concurrent_commits_share_transactions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(dir.path()).await.unwrap();
        let Store::Sqlite(inner) = &store;
        let mut doomed = store.receive(envelope("gone@y.example")).await.unwrap();
        doomed.write(&vec![b'x'; CHUNK_SIZE + 1]).await.unwrap();
        assert_eq!(store.purge_incomplete(Duration::ZERO).await.unwrap(), 1);
        let before = inner.committer.transactions();
        let mut tasks = Vec::new();
        for i in 0..64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut w = store.receive(envelope(&format!("r{i}@y.example"))).await.unwrap();
                w.write(format!("body {i}").as_bytes()).await.unwrap();
                w.commit(CommitInfo::default()).await
            }));
        }
        let doomed = doomed.commit(CommitInfo::default()).await;
        assert!(matches!(doomed, Err(StoreError::MessageGone(_))), "{doomed:?}");
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap().unwrap());
        }
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 64);
        let used = inner.committer.transactions() - before;
        assert!(used < 64, "{used} transactions for 64 concurrent commits");
        store.close().await;
        // Durable: a fresh open sees all of them, and nothing of the purged one.
        let again = Store::open_sqlite(dir.path()).await.unwrap();
        assert_eq!(again.queue_list().await.unwrap().len(), 64);
        again.close().await;
    }

    /// Recording outcomes runs with synchronous=NORMAL; the writer connection is back to FULL for
    /// whatever comes next, and message commits are FULL.
    #[tokio::test]
    async fn relaxed_outcome_records_leave_the_writer_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(dir.path()).await.unwrap();
        let Store::Sqlite(inner) = &store;
        store
            .receive(envelope("x@y.example"))
            .await
            .unwrap()
            .commit(CommitInfo::default())
            .await
            .unwrap();
        let lease = store
            .lease_acquire(&["y.example".to_string()], "t", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        let p = store.pending(&["y.example".to_string()], None, 10).await.unwrap();
        store
            .record(
                &lease,
                &[crate::Outcome {
                    recipient: p[0].recipients[0].id,
                    state: RecipientState::Queued,
                    reply: Some("451 later".into()),
                    remote_mta: None,
                }],
            )
            .await
            .unwrap();
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&inner.write)
            .await
            .unwrap();
        assert_eq!(sync, 2, "FULL again after a relaxed transaction");
        store.close().await;
    }

    #[test]
    fn placeholders_are_comma_separated() {
        assert_eq!(placeholders(1), "?");
        assert_eq!(placeholders(3), "?, ?, ?");
    }
}
