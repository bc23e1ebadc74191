//! Two real processes on one SQLite store at once, as the server and `odmr account add` are:
//! the test re-runs its own binary as the child.

use std::process::{Command, Stdio};
use std::time::Duration;

use odmr_store::{CommitInfo, Envelope, EnvelopeRecipient, Store, StoreConfig, CHUNK_SIZE};

const CHILD_DIR: &str = "ODMR_STORE_TEST_CHILD_DIR";
const MESSAGES: usize = 15;

fn body(i: usize) -> Vec<u8> {
    let len = if i % 3 == 0 { CHUNK_SIZE + 1000 } else { 200 };
    (0..len).map(|j| (i * 7 + j * 13) as u8).collect()
}

async fn put_many(store: &Store, domain: &str) {
    for i in 0..MESSAGES {
        let mut w = store
            .receive(Envelope {
                mail_from: "a@b.example".into(),
                mail_params: String::new(),
                recipients: vec![EnvelopeRecipient {
                    address: format!("u{i}@{domain}"),
                    params: String::new(),
                }],
                helo: "h.example".into(),
                client_addr: "192.0.2.1:1".into(),
            })
            .await
            .unwrap();
        for part in body(i).chunks(10_000) {
            w.write(part).await.unwrap();
        }
        w.commit(CommitInfo { eight_bit: true }).await.unwrap();
    }
}

/// The child's half; does nothing unless started by `across_processes`.
#[test]
#[ignore = "started by across_processes"]
fn child_process() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Store::open(&StoreConfig::sqlite(dir)).await.unwrap();
        store
            .account_add("child", &[], &["child.example".to_string()])
            .await
            .unwrap();
        put_many(&store, "child.example").await;
        store.close().await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_processes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StoreConfig::sqlite(dir.path())).await.unwrap();
    store
        .account_add("parent", &[], &["parent.example".to_string()])
        .await
        .unwrap();

    let child = Command::new(std::env::current_exe().unwrap())
        .args(["child_process", "--exact", "--ignored", "--test-threads=1"])
        .env(CHILD_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Both write at once.
    put_many(&store, "parent.example").await;
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        output.status.success(),
        "child failed: {}\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    // The running "server" sees the child's changes without reopening.
    assert_eq!(
        store.domain_owner("child.example").await.unwrap().as_deref(),
        Some("child")
    );
    for domain in ["child.example", "parent.example"] {
        let pending = store.pending(&[domain.to_string()], None, 100).await.unwrap();
        assert_eq!(pending.len(), MESSAGES, "{domain}");
        for (i, p) in pending.iter().enumerate() {
            assert_eq!(p.size, body(i).len() as u64);
            let mut back = Vec::new();
            let mut chunk = 0;
            while let Some(data) = store.read_body(p.id, chunk).await.unwrap() {
                back.extend_from_slice(&data);
                chunk += 1;
            }
            assert!(back == body(i), "{domain} message {i}");
        }
    }
    assert_eq!(store.queue_list().await.unwrap().len(), 2 * MESSAGES);

    // A lease taken here holds against a fresh process too.
    let lease = store
        .lease_acquire(&["child.example".to_string()], "parent", Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    let other = Store::open(&StoreConfig::sqlite(dir.path())).await.unwrap();
    assert!(other
        .lease_acquire(&["child.example".to_string()], "x", Duration::from_secs(60))
        .await
        .unwrap()
        .is_none());
    other.close().await;
    store.lease_release(&lease).await.unwrap();
    store.close().await;
}
