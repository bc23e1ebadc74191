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
//!
//! One file per concern: this one opens the store (pools, migrations, the writer connection);
//! `accounts.rs` holds accounts, credentials, domains and their policy; `leases.rs` the leases;
//! `queue.rs` what a delivery reads and records; `writer.rs` a message being received and
//! `group_commit.rs` its commit; `queue_end.rs` expiry and notices; `operators.rs` the operators'
//! queue commands; `tests.rs` the tests of this backend's own promises (the contract's are in
//! `tests/conformance.rs`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

use crate::contract::Queue;
use crate::dispatch::Backend;
use crate::{ClockOffset, Envelope, NewRecipient, RecipientState, StoreError, STALE_RECEIVING};

mod accounts;
mod group_commit;
mod leases;
mod operators;
mod queue;
mod queue_end;
mod writer;

#[cfg(test)]
mod tests;

use group_commit::Committer;
pub use writer::SqliteMessageWriter;

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
    include_str!("../../migrations/sqlite/0005_structured_reply.sql"),
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
    /// Added to SQLite's clock in lease times (zero outside tests).
    clock: ClockOffset,
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

fn state_of(s: &str) -> Result<RecipientState, StoreError> {
    RecipientState::parse(s).ok_or_else(|| StoreError::Corrupt(format!("recipient state {s:?}")))
}

fn size_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
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
    /// Opens `<dir>/odmr.db`, creating `dir` if missing (see [`crate::Store::open`]).
    pub async fn open(dir: &Path, clock: ClockOffset) -> Result<SqliteStore, StoreError> {
        let (store, schema) = Self::open_migrated(dir, clock).await?;
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
    async fn open_migrated(dir: &Path, clock: ClockOffset) -> Result<(SqliteStore, Schema), StoreError> {
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
            clock,
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
}

impl Backend for SqliteStore {
    const SCHEME: &'static str = "sqlite";
    /// The directory holding [`DB_FILE`].
    type Location = PathBuf;
    type Writer = SqliteMessageWriter;

    fn parse_location(text: &str) -> Result<PathBuf, String> {
        if text.trim().is_empty() {
            return Err("no directory: write the store's directory after the colon, e.g. \
                        \"sqlite:/var/lib/odmr\""
                .into());
        }
        // `sqlite:///var/lib/odmr` would be `//var/lib/odmr`, and `sqlite://data` `//data`:
        // better refused than guessed at.
        if let Some(rest) = text.strip_prefix("//") {
            let rest = rest.trim_start_matches('/');
            return Err(if text.starts_with("///") {
                format!("the directory follows the colon, without //: write \"sqlite:/{rest}\"")
            } else {
                format!(
                    "the directory follows the colon, without //: write \"sqlite:/{rest}\" or \
                     \"sqlite:./{rest}\""
                )
            });
        }
        Ok(PathBuf::from(text))
    }

    fn show_location(dir: &PathBuf, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", dir.display())
    }

    fn local_dir(dir: &PathBuf) -> Option<&Path> {
        Some(dir)
    }

    async fn open(dir: &PathBuf, clock: ClockOffset) -> Result<SqliteStore, StoreError> {
        SqliteStore::open(dir, clock).await
    }

    fn receive(&self, envelope: Envelope, recipients: Vec<NewRecipient>) -> SqliteMessageWriter {
        SqliteMessageWriter::new(self.clone(), envelope, recipients)
    }

    async fn close(&self) {
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
}
