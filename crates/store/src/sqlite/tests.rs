//! Tests of the SQLite backend's own promises: pragmas, migrations, the purge at open,
//! writers, query plans and group commit.

use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::Row;

use super::queue::pending_sql;
use super::queue_end;
use super::*;
use crate::dispatch::Backend;
use crate::{
    CommitInfo, Envelope, EnvelopeRecipient, RecipientState, Reply, Store, StoreConfig, CHUNK_SIZE, DELETED,
};

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
    let store = SqliteStore::open(dir.path(), ClockOffset::default())
        .await
        .unwrap();
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
    let (store, schema) = SqliteStore::open_migrated(dir.path(), ClockOffset::default())
        .await
        .unwrap();
    assert_eq!(schema, Schema::Created { version: supported });
    store.close().await;
    let (store, schema) = SqliteStore::open_migrated(dir.path(), ClockOffset::default())
        .await
        .unwrap();
    assert_eq!(schema, Schema::Current);
    store.close().await;
}

#[tokio::test]
async fn creates_missing_directories() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a/b/c");
    let store = SqliteStore::open(&nested, ClockOffset::default()).await.unwrap();
    assert!(nested.join(DB_FILE).exists());
    store.close().await;
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), ClockOffset::default())
        .await
        .unwrap();
    sqlx::query("PRAGMA user_version = 99")
        .execute(&store.write)
        .await
        .unwrap();
    store.close().await;
    match SqliteStore::open(dir.path(), ClockOffset::default()).await {
        Err(StoreError::SchemaTooNew { found: 99, .. }) => {}
        other => panic!("{other:?}"),
    }
}

/// A crash mid-DATA leaves a `receiving` message: opening removes it once it is stale, but
/// never one another process may still be receiving.
#[tokio::test]
async fn open_removes_stale_receiving_messages_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StoreConfig::sqlite(dir.path())).await.unwrap();
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
    sqlx::query("UPDATE message SET received_at = received_at - ? WHERE id = (SELECT min(id) FROM message)")
        .bind(STALE_RECEIVING.as_secs() as i64 + 10)
        .execute(&inner.write)
        .await
        .unwrap();

    let second = Store::open(&StoreConfig::sqlite(dir.path())).await.unwrap();
    let Store::Sqlite(inner2) = &second;
    assert_eq!(count(inner2, "SELECT count(*) FROM message").await, 1);
    assert_eq!(count(inner2, "SELECT count(*) FROM body_chunk").await, 2);
    second.close().await;
    store.close().await;
}

#[tokio::test]
async fn dropping_a_writer_removes_its_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StoreConfig::sqlite(dir.path())).await.unwrap();
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
    let store = Store::open(&StoreConfig::sqlite(dir.path())).await.unwrap();
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
    let store = Store::open(&StoreConfig::sqlite(dir.path())).await.unwrap();
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
    let store = SqliteStore::open(dir.path(), ClockOffset::default())
        .await
        .unwrap();
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
    let (inner, _) = SqliteStore::open_migrated(dir.path(), ClockOffset::default())
        .await
        .unwrap();
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

/// Schema 5 keeps a reply as code, status and text: the one-line replies of schema 4 are parsed
/// once, in the migration (the status only where the reply parser found one), and the
/// operator's note that took the place of a reply becomes the recipient's status.
#[tokio::test]
async fn schema_5_structures_the_one_line_replies_of_schema_4() {
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
        for m in &MIGRATIONS[..4] {
            sqlx::raw_sql(m).execute(&pool).await.unwrap();
        }
        sqlx::raw_sql(
            "PRAGMA user_version = 4;
             INSERT INTO message (id, state, received_at, size, mail_from, mail_params, helo, client_addr)
                 VALUES (7, 'queued', 1, 4, 'a@b.example', '', 'h', '192.0.2.1:1');
             INSERT INTO body_chunk (message, seq, data) VALUES (7, 0, x'61626364');
             INSERT INTO recipient (id, message, address, domain, params, state, last_reply, attempts,
                                    updated_at, remote_mta)
                 VALUES (41, 7, 'a@y.example', 'y.example', '', 'queued', '451 4.3.0 try later', 1, 1, 'mx.y'),
                        (42, 7, 'b@y.example', 'y.example', '', 'failed', '550 no such user', 1, 1, 'mx.y'),
                        (43, 7, 'c@y.example', 'y.example', '', 'delivered',
                         '250  361 byte chunk, total 361 OK', 1, 1, 'mx.y'),
                        (44, 7, 'd@y.example', 'y.example', '', 'failed', '550 4.1.1 class mismatch', 1, 1, NULL),
                        (45, 7, 'e@y.example', 'y.example', '', 'queued', '452 4.02.002 full', 1, 1, NULL),
                        (46, 7, 'f@y.example', 'y.example', '', 'failed', '550 5.1.1.1 x', 1, 1, NULL),
                        (47, 7, 'g@y.example', 'y.example', '', 'delivered', '250', 1, 1, NULL),
                        (48, 7, 'h@y.example', 'y.example', '', 'failed', '550 5.1.1', 1, 1, NULL),
                        (49, 7, 'i@y.example', 'y.example', '', 'bounced', 'deleted by the operator', 0, 1, NULL),
                        (50, 7, 'j@y.example', 'y.example', '', 'queued', NULL, 0, 1, NULL),
                        (51, 7, 'k@y.example', 'y.example', '', 'queued', 'no code', 0, 1, NULL);",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    }
    let (inner, schema) = SqliteStore::open_migrated(dir.path(), ClockOffset::default())
        .await
        .unwrap();
    assert_eq!(schema, Schema::Upgraded { from: 4, to: 5 });
    let kept: Option<String> = sqlx::query_scalar("SELECT last_text FROM recipient WHERE id = 51")
        .fetch_one(&inner.read)
        .await
        .unwrap();
    assert_eq!(kept.as_deref(), Some("no code"), "a text without a code is kept");
    let store = Store::Sqlite(inner);
    let q = store.queue_list().await.unwrap();
    let got: Vec<_> = q[0]
        .recipients
        .iter()
        .map(|r| (r.id, r.last_reply.clone(), r.status.clone(), r.remote_mta.clone()))
        .collect();
    let reply = |code, status: Option<&str>, text: &str| {
        Some(Reply {
            code,
            status: status.map(str::to_string),
            lines: vec![text.to_string()],
        })
    };
    let mx = || Some("mx.y".to_string());
    assert_eq!(
        got,
        [
            (41, reply(451, Some("4.3.0"), "try later"), None, mx()),
            (42, reply(550, None, "no such user"), None, mx()),
            (43, reply(250, None, "361 byte chunk, total 361 OK"), None, mx()),
            (44, reply(550, None, "4.1.1 class mismatch"), None, None),
            (45, reply(452, Some("4.02.002"), "full"), None, None),
            (46, reply(550, None, "5.1.1.1 x"), None, None),
            (47, reply(250, None, ""), None, None),
            (48, reply(550, Some("5.1.1"), ""), None, None),
            (49, None, Some(DELETED.to_string()), None),
            (50, None, None, None),
            (51, None, None, None),
        ]
    );
    assert_eq!(
        q[0].recipients[2].last_reply.as_ref().unwrap().one_line(),
        "250 361 byte chunk, total 361 OK"
    );
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
    let (inner, schema) = SqliteStore::open_migrated(dir.path(), ClockOffset::default())
        .await
        .unwrap();
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
            (41, RecipientState::Failed, Some(Reply::new(550, "", "no"))),
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

/// Expiry walks only old messages (the state/received_at index), never the whole queue.
#[tokio::test]
async fn expiry_uses_the_age_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), ClockOffset::default())
        .await
        .unwrap();
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
    let store = Store::open(&StoreConfig::sqlite(dir.path())).await.unwrap();
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
    let again = Store::open(&StoreConfig::sqlite(dir.path())).await.unwrap();
    assert_eq!(again.queue_list().await.unwrap().len(), 64);
    again.close().await;
}

/// Recording outcomes runs with synchronous=NORMAL; the writer connection is back to FULL for
/// whatever comes next, and message commits are FULL.
#[tokio::test]
async fn relaxed_outcome_records_leave_the_writer_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StoreConfig::sqlite(dir.path())).await.unwrap();
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
                reply: Some(Reply::new(451, "", "later")),
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
