//! The conformance suite of the store contract.
//!
//! Every check is a generic async function taking a `&Store` (or, when it needs to open the same
//! storage again as another process would, a `&impl Backend`). The `suite!` macro at the bottom
//! runs all of them against each backend, each on fresh storage; a new backend adds one
//! `Backend` impl and one `suite!` line.

use std::time::Duration;

use odmr_store::{
    CommitInfo, Credential, Envelope, EnvelopeRecipient, Lease, MessageId, Outcome, Pending, RecipientState,
    Store, StoreError, CHUNK_SIZE,
};

/// Fresh storage for one test, which can be opened several times (as several processes would).
trait Backend {
    async fn open(&self) -> Store;
}

struct SqliteBackend {
    dir: tempfile::TempDir,
}

impl SqliteBackend {
    fn new() -> Self {
        SqliteBackend {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
}

impl Backend for SqliteBackend {
    async fn open(&self) -> Store {
        Store::open_sqlite(self.dir.path()).await.expect("open")
    }
}

// ----- helpers -----

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn cred(scheme: &str, data: &[u8]) -> Credential {
    Credential {
        scheme: scheme.into(),
        data: data.to_vec(),
    }
}

fn envelope(from: &str, rcpts: &[&str]) -> Envelope {
    Envelope {
        mail_from: from.into(),
        mail_params: "BODY=8BITMIME".into(),
        recipients: rcpts
            .iter()
            .map(|r| EnvelopeRecipient {
                address: r.to_string(),
                params: String::new(),
            })
            .collect(),
        helo: "client.example".into(),
        client_addr: "192.0.2.7:40000".into(),
    }
}

/// Bytes of every value, in a pattern that shifts so chunks differ from one another.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 4099) as u8).collect()
}

/// Receives and commits a message, writing the body in pieces of `piece` bytes.
async fn put_with(store: &Store, from: &str, rcpts: &[&str], body: &[u8], piece: usize) -> MessageId {
    let mut w = store.receive(envelope(from, rcpts)).await.expect("receive");
    for part in body.chunks(piece.max(1)) {
        w.write(part).await.expect("write");
    }
    assert_eq!(w.size(), body.len() as u64);
    let eight_bit = body.iter().any(|b| *b > 0x7f);
    w.commit(CommitInfo { eight_bit }).await.expect("commit")
}

async fn put(store: &Store, rcpts: &[&str], body: &[u8]) -> MessageId {
    put_with(store, "sender@origin.example", rcpts, body, 1000).await
}

async fn read_all(store: &Store, id: MessageId) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunk = 0;
    while let Some(data) = store.read_body(id, chunk).await.expect("read_body") {
        out.extend_from_slice(&data);
        chunk += 1;
    }
    out
}

async fn lease(store: &Store, domains: &[&str]) -> Lease {
    store
        .lease_acquire(&strings(domains), "node-test", Duration::from_secs(60))
        .await
        .expect("lease_acquire")
        .expect("lease free")
}

fn rcpt_id(p: &Pending, address: &str) -> i64 {
    p.recipients
        .iter()
        .find(|r| r.address == address)
        .unwrap_or_else(|| panic!("{address} not pending"))
        .id
}

fn outcome(recipient: i64, state: RecipientState, reply: &str) -> Outcome {
    Outcome {
        recipient,
        state,
        reply: Some(reply.into()),
    }
}

// ----- accounts and domains -----

async fn accounts_crud(store: &Store) {
    assert!(store.account_list().await.unwrap().is_empty());
    assert_eq!(store.account_get("acme").await.unwrap(), None);

    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    store
        .account_add(
            "acme",
            &[cred("cram-md5", b"\x00\x01secret")],
            &strings(&["Zeta.Example", "alpha.example", "ALPHA.example"]),
        )
        .await
        .unwrap();
    store.account_add("beta", &[], &strings(&[])).await.unwrap();

    let acme = store.account_get("acme").await.unwrap().unwrap();
    assert_eq!(acme.name, "acme");
    assert_eq!(acme.domains, strings(&["alpha.example", "zeta.example"]));
    assert!(acme.created_at >= before - 1 && acme.created_at <= before + 60);

    let list = store.account_list().await.unwrap();
    assert_eq!(
        list.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
        ["acme", "beta"]
    );
    assert!(list[1].domains.is_empty());

    match store.account_add("acme", &[], &[]).await {
        Err(StoreError::AccountExists(n)) => assert_eq!(n, "acme"),
        other => panic!("{other:?}"),
    }

    // All or nothing: a taken domain leaves no trace of the new account.
    match store
        .account_add(
            "gamma",
            &[cred("cram-md5", b"g")],
            &strings(&["gamma.example", "ZETA.example"]),
        )
        .await
    {
        Err(StoreError::DomainTaken { domain, owner }) => {
            assert_eq!(domain, "zeta.example");
            assert_eq!(owner, "acme");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.account_get("gamma").await.unwrap(), None);
    assert_eq!(store.domain_owner("gamma.example").await.unwrap(), None);
    assert_eq!(store.account_credential("gamma", "cram-md5").await.unwrap(), None);

    for bad in ["", "a b.example", "x@y.example", "dot.example."] {
        match store
            .account_add("delta", &[], &strings(&["ok.example", bad]))
            .await
        {
            Err(StoreError::InvalidDomain(d)) => assert_eq!(d, bad),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    assert_eq!(store.account_get("delta").await.unwrap(), None);
    assert_eq!(store.domain_owner("ok.example").await.unwrap(), None);
    for bad in ["", "with space", "tab\there"] {
        assert!(
            matches!(
                store.account_add(bad, &[], &[]).await,
                Err(StoreError::InvalidAccountName(_))
            ),
            "{bad:?}"
        );
    }

    // Credentials.
    assert_eq!(
        store.account_credential("acme", "cram-md5").await.unwrap(),
        Some(b"\x00\x01secret".to_vec())
    );
    assert_eq!(store.account_credential("acme", "scram").await.unwrap(), None);
    assert_eq!(
        store.account_credential("nobody", "cram-md5").await.unwrap(),
        None
    );
    store
        .account_set_credentials("acme", &[cred("scram", b"s1"), cred("other", b"o")])
        .await
        .unwrap();
    assert_eq!(store.account_credential("acme", "cram-md5").await.unwrap(), None);
    assert_eq!(
        store.account_credential("acme", "scram").await.unwrap(),
        Some(b"s1".to_vec())
    );
    store.account_set_credentials("acme", &[]).await.unwrap();
    assert_eq!(store.account_credential("acme", "scram").await.unwrap(), None);
    match store.account_set_credentials("nobody", &[]).await {
        Err(StoreError::AccountNotFound(n)) => assert_eq!(n, "nobody"),
        other => panic!("{other:?}"),
    }

    // Removal frees the domains.
    store.account_remove("acme").await.unwrap();
    assert_eq!(store.account_get("acme").await.unwrap(), None);
    assert_eq!(store.domain_owner("zeta.example").await.unwrap(), None);
    assert!(matches!(
        store.account_remove("acme").await,
        Err(StoreError::AccountNotFound(_))
    ));
    store.domain_add("beta", "Zeta.Example").await.unwrap();
    assert_eq!(
        store.domain_owner("zeta.example").await.unwrap().as_deref(),
        Some("beta")
    );
    // A new account of the same name starts afresh.
    store.account_add("acme", &[], &[]).await.unwrap();
    assert!(store
        .account_get("acme")
        .await
        .unwrap()
        .unwrap()
        .domains
        .is_empty());
}

async fn domains_crud(store: &Store) {
    match store.domain_add("acme", "example.org").await {
        Err(StoreError::AccountNotFound(n)) => assert_eq!(n, "acme"),
        other => panic!("{other:?}"),
    }
    store.account_add("acme", &[], &[]).await.unwrap();
    store.account_add("other", &[], &[]).await.unwrap();
    store.domain_add("acme", "Example.ORG").await.unwrap();
    for probe in ["example.org", "EXAMPLE.org", "Example.Org"] {
        assert_eq!(
            store.domain_owner(probe).await.unwrap().as_deref(),
            Some("acme"),
            "{probe}"
        );
    }
    assert_eq!(store.domain_owner("example.com").await.unwrap(), None);
    assert_eq!(
        store.account_get("acme").await.unwrap().unwrap().domains,
        strings(&["example.org"])
    );

    for (account, domain) in [("other", "EXAMPLE.ORG"), ("acme", "example.org")] {
        match store.domain_add(account, domain).await {
            Err(e @ StoreError::DomainTaken { .. }) => {
                assert_eq!(
                    e.to_string(),
                    "domain example.org already belongs to account acme"
                );
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(
        store.domain_add("acme", "bad domain").await,
        Err(StoreError::InvalidDomain(_))
    ));

    store.domain_remove("EXAMPLE.org").await.unwrap();
    assert_eq!(store.domain_owner("example.org").await.unwrap(), None);
    match store.domain_remove("example.org").await {
        Err(StoreError::DomainNotFound(d)) => assert_eq!(d, "example.org"),
        other => panic!("{other:?}"),
    }
    store.domain_add("other", "example.org").await.unwrap();
    assert_eq!(
        store.domain_owner("example.org").await.unwrap().as_deref(),
        Some("other")
    );
    assert!(store
        .account_get("acme")
        .await
        .unwrap()
        .unwrap()
        .domains
        .is_empty());
}

// ----- receiving -----

async fn body_round_trip_multi_chunk(store: &Store) {
    let body = pattern(1024 * 1024 + 12_345);
    // Odd-sized writes that straddle chunk boundaries.
    let id = put_with(store, "", &["rcpt@dest.example"], &body, 7_001).await;
    let mut chunk = 0;
    let mut back = Vec::new();
    while let Some(data) = store.read_body(id, chunk).await.unwrap() {
        if back.len() + data.len() < body.len() {
            assert_eq!(data.len(), CHUNK_SIZE, "only the last chunk may be short");
        }
        back.extend_from_slice(&data);
        chunk += 1;
    }
    assert_eq!(chunk as usize, body.len().div_ceil(CHUNK_SIZE));
    assert!(back == body, "body differs");

    let pending = store
        .pending(&strings(&["dest.example"]), None, 10)
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    let p = &pending[0];
    assert_eq!(p.id, id);
    assert_eq!(p.size, body.len() as u64);
    assert!(p.eight_bit);
    assert_eq!(p.mail_from, "");
    assert_eq!(p.mail_params, "BODY=8BITMIME");

    // One write of the whole body, and a body of exactly two chunks.
    let id2 = put_with(store, "a@b.example", &["rcpt@dest.example"], &body, body.len()).await;
    assert!(read_all(store, id2).await == body);
    let exact = pattern(2 * CHUNK_SIZE);
    let id3 = put_with(store, "a@b.example", &["rcpt@dest.example"], &exact, 4096).await;
    assert_eq!(store.read_body(id3, 1).await.unwrap().unwrap().len(), CHUNK_SIZE);
    assert_eq!(store.read_body(id3, 2).await.unwrap(), None);
    assert!(read_all(store, id3).await == exact);

    let queue = store.queue_list().await.unwrap();
    assert_eq!(queue.len(), 3);
    assert_eq!(queue[0].size, body.len() as u64);
    assert_eq!(queue[2].size, exact.len() as u64);
}

async fn small_and_empty_bodies(store: &Store) {
    let empty = put(store, &["rcpt@dest.example"], b"").await;
    assert_eq!(store.read_body(empty, 0).await.unwrap(), None);
    let small = b"Subject: hi\r\n\r\nhello\r\n".to_vec();
    let id = put(store, &["rcpt@dest.example"], &small).await;
    assert_eq!(store.read_body(id, 0).await.unwrap().unwrap(), small);
    assert_eq!(store.read_body(id, 1).await.unwrap(), None);
    assert_eq!(store.read_body(9_999_999, 0).await.unwrap(), None);

    let pending = store
        .pending(&strings(&["dest.example"]), None, 10)
        .await
        .unwrap();
    assert_eq!(pending.iter().map(|p| p.id).collect::<Vec<_>>(), [empty, id]);
    assert_eq!(pending[0].size, 0);
    assert!(!pending[0].eight_bit);
    assert!(!pending[1].eight_bit);
    assert!(pending[0].received_at > 0);

    // Envelopes the store cannot hold.
    assert!(matches!(
        store.receive(envelope("a@b.example", &[])).await,
        Err(StoreError::InvalidEnvelope(_))
    ));
    assert!(matches!(
        store.receive(envelope("a@b.example", &["postmaster"])).await,
        Err(StoreError::InvalidEnvelope(_))
    ));
}

async fn uncommitted_messages_are_invisible(store: &Store) {
    let domains = strings(&["dest.example"]);
    // Aborted after several chunks.
    let mut w = store
        .receive(envelope("a@b.example", &["x@dest.example"]))
        .await
        .unwrap();
    w.write(&pattern(3 * CHUNK_SIZE + 10)).await.unwrap();
    assert!(store.queue_list().await.unwrap().is_empty());
    assert!(store.pending(&domains, None, 10).await.unwrap().is_empty());
    assert!(!store.has_pending(&domains).await.unwrap());
    w.abort().await.unwrap();

    // Aborted before anything was stored.
    let mut w = store
        .receive(envelope("a@b.example", &["x@dest.example"]))
        .await
        .unwrap();
    w.write(b"short").await.unwrap();
    w.abort().await.unwrap();

    // Left behind, as by a crash mid-DATA: invisible, and removed by the purge.
    let mut w = store
        .receive(envelope("a@b.example", &["x@dest.example"]))
        .await
        .unwrap();
    w.write(&pattern(2 * CHUNK_SIZE + 1)).await.unwrap();
    std::mem::forget(w);
    assert!(store.queue_list().await.unwrap().is_empty());
    assert!(!store.has_pending(&domains).await.unwrap());
    assert_eq!(store.purge_incomplete(Duration::ZERO).await.unwrap(), 1);

    // A message received alongside still goes through.
    let id = put(store, &["x@dest.example"], &pattern(CHUNK_SIZE + 1)).await;
    let pending = store.pending(&domains, None, 10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, id);
    assert_eq!(store.queue_list().await.unwrap().len(), 1);
    assert_eq!(store.purge_incomplete(Duration::ZERO).await.unwrap(), 0);
    assert!(read_all(store, id).await == pattern(CHUNK_SIZE + 1));
}

// ----- delivery -----

async fn pending_filters_by_domain_and_pages(store: &Store) {
    let mixed = put(
        store,
        &["a1@A.example", "b1@b.example", "a2@a.EXAMPLE", "c1@c.example"],
        b"mixed",
    )
    .await;
    let only_b = put(store, &["b2@b.example"], b"b").await;
    let only_a = put(store, &["a3@a.example"], b"a").await;

    let a = store.pending(&strings(&["A.Example"]), None, 10).await.unwrap();
    assert_eq!(a.iter().map(|p| p.id).collect::<Vec<_>>(), [mixed, only_a]);
    let addrs: Vec<_> = a[0].recipients.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(
        addrs,
        ["a1@A.example", "a2@a.EXAMPLE"],
        "only a's, in received order"
    );
    assert!(a[0].recipients.iter().all(|r| r.domain == "a.example"));
    assert_eq!(a[0].mail_from, "sender@origin.example");

    let ab = store
        .pending(&strings(&["a.example", "b.example"]), None, 10)
        .await
        .unwrap();
    assert_eq!(
        ab.iter().map(|p| p.id).collect::<Vec<_>>(),
        [mixed, only_b, only_a]
    );
    assert_eq!(ab[0].recipients.len(), 3);

    // Paging.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .pending(&strings(&["a.example", "b.example"]), after, 1)
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        assert_eq!(page.len(), 1);
        after = Some(page[0].id);
        seen.push(page[0].id);
    }
    assert_eq!(seen, [mixed, only_b, only_a]);
    let page = store
        .pending(&strings(&["a.example", "b.example"]), Some(mixed), 2)
        .await
        .unwrap();
    assert_eq!(page.iter().map(|p| p.id).collect::<Vec<_>>(), [only_b, only_a]);
    assert!(store
        .pending(&strings(&["a.example"]), Some(only_a), 10)
        .await
        .unwrap()
        .is_empty());

    assert!(store
        .pending(&strings(&["d.example"]), None, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store.pending(&[], None, 10).await.unwrap().is_empty());
    assert!(store.has_pending(&strings(&["C.example"])).await.unwrap());
    assert!(!store.has_pending(&strings(&["d.example"])).await.unwrap());
    assert!(store
        .has_pending(&strings(&["d.example", "b.example"]))
        .await
        .unwrap());

    // Once a domain's recipients are done, the message no longer shows for it.
    let l = lease(store, &["c.example"]).await;
    let c = store.pending(&strings(&["c.example"]), None, 10).await.unwrap();
    assert_eq!(c.len(), 1);
    store
        .record(
            &l,
            &[outcome(
                rcpt_id(&c[0], "c1@c.example"),
                RecipientState::Delivered,
                "250 ok",
            )],
        )
        .await
        .unwrap();
    assert!(!store.has_pending(&strings(&["c.example"])).await.unwrap());
    assert!(store
        .pending(&strings(&["c.example"]), None, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .pending(&strings(&["a.example"]), None, 10)
            .await
            .unwrap()
            .len(),
        2
    );
}

async fn lease_exclusivity(store: &Store) {
    let l1 = store
        .lease_acquire(
            &strings(&["B.example", "a.example", "a.example"]),
            "node-1",
            Duration::from_secs(60),
        )
        .await
        .unwrap()
        .expect("free");
    assert_eq!(l1.domains, strings(&["a.example", "b.example"]));
    assert_eq!(l1.holder, "node-1");
    assert!(!l1.token.is_empty());

    let ttl = Duration::from_secs(60);
    assert_eq!(
        store
            .lease_acquire(&strings(&["a.example"]), "node-2", ttl)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .lease_acquire(&strings(&["A.EXAMPLE"]), "node-1", ttl)
            .await
            .unwrap(),
        None,
        "case-insensitive, and exclusive even for the same holder"
    );
    // Overlapping set: nothing taken, not even the free domain.
    assert_eq!(
        store
            .lease_acquire(&strings(&["c.example", "b.example"]), "node-2", ttl)
            .await
            .unwrap(),
        None
    );
    let l2 = lease(store, &["c.example"]).await;
    assert_ne!(l1.token, l2.token);

    store.lease_renew(&l1, ttl).await.unwrap();
    store.lease_release(&l1).await.unwrap();
    let l3 = lease(store, &["a.example", "b.example"]).await;
    // A released lease cannot be renewed, and releasing it again touches nobody else's.
    assert!(matches!(
        store.lease_renew(&l1, ttl).await,
        Err(StoreError::LeaseLost)
    ));
    store.lease_release(&l1).await.unwrap();
    assert_eq!(
        store
            .lease_acquire(&strings(&["a.example"]), "node-2", ttl)
            .await
            .unwrap(),
        None
    );
    store.lease_release(&l3).await.unwrap();
    store.lease_release(&l2).await.unwrap();
}

async fn lease_expiry_takeover(store: &Store) {
    // (Exclusivity while unexpired is checked by lease_exclusivity with long leases; checking it
    // here against a short one would depend on the machine's speed.)
    let short = Duration::from_millis(80);
    let old = store
        .lease_acquire(&strings(&["x.example", "y.example"]), "slow-node", short)
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let new = store
        .lease_acquire(&strings(&["x.example"]), "node-2", Duration::from_secs(60))
        .await
        .unwrap()
        .expect("expired lease taken over");
    assert!(matches!(
        store.lease_renew(&old, Duration::from_secs(60)).await,
        Err(StoreError::LeaseLost)
    ));
    // The failed renew changed nothing: y is still expired, hence free.
    let y = lease(store, &["y.example"]).await;
    store.lease_release(&y).await.unwrap();
    // The stale holder's release leaves the new lease alone.
    store.lease_release(&old).await.unwrap();
    assert_eq!(
        store
            .lease_acquire(&strings(&["x.example"]), "node-3", Duration::from_secs(60))
            .await
            .unwrap(),
        None
    );
    store.lease_renew(&new, Duration::from_secs(60)).await.unwrap();

    // Renewal keeps a short lease alive.
    let kept = store
        .lease_acquire(&strings(&["z.example"]), "node-1", short)
        .await
        .unwrap()
        .unwrap();
    store.lease_renew(&kept, Duration::from_secs(60)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        store
            .lease_acquire(&strings(&["z.example"]), "node-2", Duration::from_secs(60))
            .await
            .unwrap(),
        None
    );
}

async fn lease_listing(store: &Store) {
    assert!(store.lease_list().await.unwrap().is_empty());
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let ab = store
        .lease_acquire(
            &strings(&["b.example", "A.example"]),
            "node-1/42/s1",
            Duration::from_secs(60),
        )
        .await
        .unwrap()
        .unwrap();
    let c = lease(store, &["c.example"]).await;
    let short = store
        .lease_acquire(&strings(&["d.example"]), "node-2", Duration::from_millis(50))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let rows = store.lease_list().await.unwrap();
    let seen: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|r| (r.domain.as_str(), r.token.as_str(), r.holder.as_str()))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("a.example", ab.token.as_str(), "node-1/42/s1"),
            ("b.example", ab.token.as_str(), "node-1/42/s1"),
            ("c.example", c.token.as_str(), "node-test"),
        ],
        "live leases by domain; the expired one ({short:?}) is not listed"
    );
    assert!(rows
        .iter()
        .all(|r| r.expires_at >= before + 59_000 && r.expires_at <= before + 3_600_000));
    // Releasing through a row ends the whole lease it belongs to, and nothing else.
    store.lease_release(&rows[1].lease()).await.unwrap();
    let left: Vec<String> = store
        .lease_list()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.domain)
        .collect();
    assert_eq!(left, strings(&["c.example"]));
    store.lease_release(&c).await.unwrap();
}

async fn record_transitions(store: &Store) {
    let id = put(
        store,
        &[
            "ok@d.example",
            "later@d.example",
            "bad@d.example",
            "other@e.example",
        ],
        &pattern(CHUNK_SIZE + 99),
    )
    .await;
    let l = lease(store, &["d.example"]).await;
    let p = &store.pending(&strings(&["d.example"]), None, 10).await.unwrap()[0];
    assert_eq!(p.recipients.len(), 3);
    store
        .record(
            &l,
            &[
                outcome(
                    rcpt_id(p, "ok@d.example"),
                    RecipientState::Delivered,
                    "250 2.0.0 ok",
                ),
                outcome(
                    rcpt_id(p, "later@d.example"),
                    RecipientState::Queued,
                    "451 4.3.0 later",
                ),
                outcome(
                    rcpt_id(p, "bad@d.example"),
                    RecipientState::Failed,
                    "550 5.1.1 no such user",
                ),
            ],
        )
        .await
        .unwrap();

    let q = store.queue_list().await.unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].id, id);
    assert_eq!(q[0].mail_from, "sender@origin.example");
    let by = |addr: &str| {
        q[0].recipients
            .iter()
            .find(|r| r.address == addr)
            .unwrap()
            .clone()
    };
    let ok = by("ok@d.example");
    assert_eq!((ok.state, ok.attempts), (RecipientState::Delivered, 1));
    assert_eq!(ok.last_reply.as_deref(), Some("250 2.0.0 ok"));
    let later = by("later@d.example");
    assert_eq!((later.state, later.attempts), (RecipientState::Queued, 1));
    assert_eq!(later.last_reply.as_deref(), Some("451 4.3.0 later"));
    let bad = by("bad@d.example");
    assert_eq!((bad.state, bad.attempts), (RecipientState::Failed, 1));
    assert_eq!(bad.last_reply.as_deref(), Some("550 5.1.1 no such user"));
    assert!(bad.updated_at > 0);
    let other = by("other@e.example");
    assert_eq!((other.state, other.attempts), (RecipientState::Queued, 0));
    assert_eq!(other.last_reply, None);
    assert_eq!(other.domain, "e.example");
    assert_eq!(
        q[0].recipients
            .iter()
            .map(|r| r.address.as_str())
            .collect::<Vec<_>>(),
        [
            "ok@d.example",
            "later@d.example",
            "bad@d.example",
            "other@e.example"
        ]
    );

    // Only the 4xx one is pending again.
    let p = &store.pending(&strings(&["d.example"]), None, 10).await.unwrap()[0];
    assert_eq!(p.recipients.len(), 1);
    assert_eq!(p.recipients[0].address, "later@d.example");
    store
        .record(
            &l,
            &[outcome(p.recipients[0].id, RecipientState::Delivered, "250 ok")],
        )
        .await
        .unwrap();
    assert!(!store.has_pending(&strings(&["d.example"])).await.unwrap());
    let later = store.queue_list().await.unwrap()[0].recipients[1].clone();
    assert_eq!((later.state, later.attempts), (RecipientState::Delivered, 2));

    // e.example is still queued: the message stays, body included.
    let le = lease(store, &["e.example"]).await;
    let pe = &store.pending(&strings(&["e.example"]), None, 10).await.unwrap()[0];
    store
        .record(
            &le,
            &[outcome(pe.recipients[0].id, RecipientState::Delivered, "250 ok")],
        )
        .await
        .unwrap();
    // Now only the failed recipient remains undelivered: still kept, still visible.
    let q = store.queue_list().await.unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].recipients[2].state, RecipientState::Failed);
    assert!(read_all(store, id).await == pattern(CHUNK_SIZE + 99));
    assert!(!store
        .has_pending(&strings(&["d.example", "e.example"]))
        .await
        .unwrap());

    // A message whose recipients are all delivered leaves the queue with its body.
    let gone = put(
        store,
        &["one@d.example", "two@d.example"],
        &pattern(CHUNK_SIZE * 2 + 1),
    )
    .await;
    let p = store.pending(&strings(&["d.example"]), None, 10).await.unwrap();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].id, gone);
    store
        .record(
            &l,
            &[outcome(
                rcpt_id(&p[0], "one@d.example"),
                RecipientState::Delivered,
                "250 ok",
            )],
        )
        .await
        .unwrap();
    assert_eq!(store.queue_list().await.unwrap().len(), 2, "one recipient left");
    store
        .record(
            &l,
            &[Outcome {
                recipient: rcpt_id(&p[0], "two@d.example"),
                state: RecipientState::Delivered,
                reply: None,
            }],
        )
        .await
        .unwrap();
    let q = store.queue_list().await.unwrap();
    assert_eq!(q.iter().map(|m| m.id).collect::<Vec<_>>(), [id]);
    assert_eq!(store.read_body(gone, 0).await.unwrap(), None);
    assert!(!store.has_pending(&strings(&["d.example"])).await.unwrap());

    // Several messages in one record.
    let m1 = put(store, &["x@d.example"], b"1").await;
    let m2 = put(store, &["y@d.example"], b"2").await;
    let p = store.pending(&strings(&["d.example"]), None, 10).await.unwrap();
    assert_eq!(p.iter().map(|p| p.id).collect::<Vec<_>>(), [m1, m2]);
    store
        .record(
            &l,
            &[
                outcome(p[0].recipients[0].id, RecipientState::Delivered, "250 a"),
                outcome(p[1].recipients[0].id, RecipientState::Delivered, "250 b"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(store.queue_list().await.unwrap().len(), 1);
    store.record(&l, &[]).await.unwrap();
}

async fn record_fencing(store: &Store) {
    let id = put(store, &["r1@f.example", "r2@g.example"], b"fenced").await;
    let stale = lease(store, &["f.example"]).await;
    let p = store.pending(&strings(&["f.example"]), None, 10).await.unwrap();
    let r1 = p[0].recipients[0].id;
    let pg = store.pending(&strings(&["g.example"]), None, 10).await.unwrap();
    let r2 = pg[0].recipients[0].id;

    // A recipient of a domain outside the lease: nothing written, not even the valid outcome.
    match store
        .record(
            &stale,
            &[
                outcome(r1, RecipientState::Delivered, "250 ok"),
                outcome(r2, RecipientState::Delivered, "250 ok"),
            ],
        )
        .await
    {
        Err(StoreError::LeaseLost) => {}
        other => panic!("{other:?}"),
    }
    match store
        .record(
            &stale,
            &[outcome(987_654_321, RecipientState::Delivered, "250 ok")],
        )
        .await
    {
        Err(StoreError::RecipientNotFound(987_654_321)) => {}
        other => panic!("{other:?}"),
    }
    let untouched = |q: &[odmr_store::QueuedMessage]| {
        q.len() == 1
            && q[0].id == id
            && q[0]
                .recipients
                .iter()
                .all(|r| r.state == RecipientState::Queued && r.attempts == 0 && r.last_reply.is_none())
    };
    assert!(untouched(&store.queue_list().await.unwrap()));

    // Expired (not yet taken over): fenced too.
    store.lease_release(&stale).await.unwrap();
    let stale = store
        .lease_acquire(&strings(&["f.example"]), "slow-node", Duration::from_millis(80))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(matches!(
        store
            .record(&stale, &[outcome(r1, RecipientState::Delivered, "250 ok")])
            .await,
        Err(StoreError::LeaseLost)
    ));
    // Taken over by another node.
    let fresh = lease(store, &["f.example"]).await;
    assert!(matches!(
        store
            .record(&stale, &[outcome(r1, RecipientState::Failed, "550 late")])
            .await,
        Err(StoreError::LeaseLost)
    ));
    assert!(untouched(&store.queue_list().await.unwrap()));

    // The new holder records; after its release, it is fenced as well.
    store
        .record(&fresh, &[outcome(r1, RecipientState::Queued, "421 try again")])
        .await
        .unwrap();
    store.lease_release(&fresh).await.unwrap();
    assert!(matches!(
        store
            .record(&fresh, &[outcome(r1, RecipientState::Delivered, "250 ok")])
            .await,
        Err(StoreError::LeaseLost)
    ));
    let q = store.queue_list().await.unwrap();
    assert_eq!(q[0].recipients[0].attempts, 1);
    assert_eq!(q[0].recipients[0].last_reply.as_deref(), Some("421 try again"));
    assert_eq!(q[0].recipients[0].state, RecipientState::Queued);
}

async fn concurrent_sessions(store: &Store) {
    let mut tasks = Vec::new();
    for i in 0..12 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let rcpt = format!("user{i}@conc{}.example", i % 3);
            let body = pattern(if i % 2 == 0 { 3 * CHUNK_SIZE / 2 } else { 100 + i });
            let mut w = store.receive(envelope("a@b.example", &[&rcpt])).await.unwrap();
            for part in body.chunks(50_000) {
                w.write(part).await.unwrap();
                tokio::task::yield_now().await;
            }
            let id = w.commit(CommitInfo::default()).await.unwrap();
            store
                .account_add(&format!("acct{i}"), &[], &[format!("own{i}.example")])
                .await
                .unwrap();
            (id, body)
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    for (id, body) in &results {
        assert!(read_all(store, *id).await == *body);
    }
    assert_eq!(store.queue_list().await.unwrap().len(), 12);
    assert_eq!(store.account_list().await.unwrap().len(), 12);
    let all = strings(&["conc0.example", "conc1.example", "conc2.example"]);
    assert_eq!(store.pending(&all, None, 100).await.unwrap().len(), 12);
}

// ----- across handles and restarts -----

async fn second_handle_sees_changes(backend: &impl Backend) {
    let a = backend.open().await;
    let b = backend.open().await;

    a.account_add("acme", &[cred("cram-md5", b"k1")], &strings(&["acme.example"]))
        .await
        .unwrap();
    assert_eq!(
        b.domain_owner("ACME.example").await.unwrap().as_deref(),
        Some("acme")
    );
    b.domain_add("acme", "second.example").await.unwrap();
    assert_eq!(
        a.account_get("acme").await.unwrap().unwrap().domains,
        strings(&["acme.example", "second.example"])
    );
    b.account_set_credentials("acme", &[cred("cram-md5", b"k2")])
        .await
        .unwrap();
    assert_eq!(
        a.account_credential("acme", "cram-md5").await.unwrap(),
        Some(b"k2".to_vec())
    );

    let id = put(&a, &["x@acme.example"], &pattern(CHUNK_SIZE + 5)).await;
    assert!(b.has_pending(&strings(&["acme.example"])).await.unwrap());
    let p = b.pending(&strings(&["acme.example"]), None, 10).await.unwrap();
    assert_eq!(p[0].id, id);
    assert!(read_all(&b, id).await == pattern(CHUNK_SIZE + 5));

    // Leases are shared.
    let l = lease(&b, &["acme.example"]).await;
    assert_eq!(
        a.lease_acquire(&strings(&["acme.example"]), "node-a", Duration::from_secs(60))
            .await
            .unwrap(),
        None
    );
    b.record(
        &l,
        &[outcome(
            p[0].recipients[0].id,
            RecipientState::Delivered,
            "250 ok",
        )],
    )
    .await
    .unwrap();
    assert!(a.queue_list().await.unwrap().is_empty());
    b.lease_release(&l).await.unwrap();
    let la = lease(&a, &["acme.example"]).await;
    a.lease_release(&la).await.unwrap();

    b.account_remove("acme").await.unwrap();
    assert_eq!(a.account_get("acme").await.unwrap(), None);
    assert_eq!(a.domain_owner("acme.example").await.unwrap(), None);
    a.close().await;
    b.close().await;
}

async fn concurrent_handles(backend: &impl Backend) {
    let a = backend.open().await;
    let b = backend.open().await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let body = pattern(if i % 4 == 0 { CHUNK_SIZE + 17 } else { 64 });
            put(&store, &[&format!("u{i}@both.example")], &body).await
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(a.queue_list().await.unwrap().len(), 16);
    assert_eq!(
        b.pending(&strings(&["both.example"]), None, 100)
            .await
            .unwrap()
            .len(),
        16
    );

    // Racing for the same lease from two handles: exactly one wins.
    let both = strings(&["both.example"]);
    let (ra, rb) = tokio::join!(
        a.lease_acquire(&both, "node-a", Duration::from_secs(60)),
        b.lease_acquire(&both, "node-b", Duration::from_secs(60)),
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(ra.is_some() != rb.is_some(), "exactly one lease");
    a.close().await;
    b.close().await;
}

async fn committed_data_survives_reopen(backend: &impl Backend) {
    let big = pattern(CHUNK_SIZE * 2 + 333);
    let (big_id, small_id) = {
        let store = backend.open().await;
        store
            .account_add("acme", &[cred("cram-md5", b"key")], &strings(&["acme.example"]))
            .await
            .unwrap();
        let big_id = put(&store, &["a@acme.example", "b@acme.example"], &big).await;
        let small_id = put(&store, &["c@acme.example"], b"small").await;
        let l = lease(&store, &["acme.example"]).await;
        let p = store
            .pending(&strings(&["acme.example"]), None, 10)
            .await
            .unwrap();
        store
            .record(
                &l,
                &[outcome(
                    rcpt_id(&p[0], "b@acme.example"),
                    RecipientState::Failed,
                    "550 no",
                )],
            )
            .await
            .unwrap();
        store.lease_release(&l).await.unwrap();
        // A message in the middle of being received when the process stops.
        let mut w = store
            .receive(envelope("a@b.example", &["d@acme.example"]))
            .await
            .unwrap();
        w.write(&pattern(CHUNK_SIZE + 1)).await.unwrap();
        std::mem::forget(w);
        store.close().await;
        (big_id, small_id)
    };

    let store = backend.open().await;
    let acme = store.account_get("acme").await.unwrap().unwrap();
    assert_eq!(acme.domains, strings(&["acme.example"]));
    assert_eq!(
        store.account_credential("acme", "cram-md5").await.unwrap(),
        Some(b"key".to_vec())
    );
    let q = store.queue_list().await.unwrap();
    assert_eq!(q.iter().map(|m| m.id).collect::<Vec<_>>(), [big_id, small_id]);
    assert_eq!(q[0].recipients[1].state, RecipientState::Failed);
    assert_eq!(q[0].recipients[1].last_reply.as_deref(), Some("550 no"));
    assert!(read_all(&store, big_id).await == big);
    assert_eq!(read_all(&store, small_id).await, b"small");
    let p = store
        .pending(&strings(&["acme.example"]), None, 10)
        .await
        .unwrap();
    assert_eq!(p.len(), 2);
    assert_eq!(p[0].recipients.len(), 1, "the failed one is not pending");
    // Dropping without close loses nothing either.
    drop(store);
    let store = backend.open().await;
    assert_eq!(store.queue_list().await.unwrap().len(), 2);
    // New ids keep growing after a restart.
    let next = put(&store, &["e@acme.example"], b"next").await;
    assert!(next > small_id);
    store.close().await;
}

// ----- running the suite -----

/// One credential can be added or replaced without touching the others, and an account can be
/// found by a credential's bytes (SASL EXTERNAL maps a certificate fingerprint to its account).
async fn credentials_put_and_reverse_lookup(store: &Store) {
    let cred = |scheme: &str, data: &[u8]| Credential {
        scheme: scheme.into(),
        data: data.to_vec(),
    };
    store
        .account_add("acme", &[cred("cram-md5", b"c1")], &["acme.example".into()])
        .await
        .unwrap();
    store
        .account_add("other", &[cred("cram-md5", b"c2")], &["other.example".into()])
        .await
        .unwrap();
    store
        .account_put_credential("acme", &cred("x509-sha256", b"fp-1"))
        .await
        .unwrap();
    assert_eq!(
        store
            .account_credential("acme", "cram-md5")
            .await
            .unwrap()
            .as_deref(),
        Some(&b"c1"[..])
    );
    assert_eq!(
        store
            .account_by_credential("x509-sha256", b"fp-1")
            .await
            .unwrap()
            .as_deref(),
        Some("acme")
    );
    assert_eq!(
        store.account_by_credential("x509-sha256", b"fp-2").await.unwrap(),
        None
    );
    store
        .account_put_credential("acme", &cred("x509-sha256", b"fp-2"))
        .await
        .unwrap();
    assert_eq!(
        store.account_by_credential("x509-sha256", b"fp-1").await.unwrap(),
        None
    );
    assert_eq!(
        store
            .account_by_credential("x509-sha256", b"fp-2")
            .await
            .unwrap()
            .as_deref(),
        Some("acme")
    );
    assert!(matches!(
        store
            .account_put_credential("ghost", &cred("x509-sha256", b"x"))
            .await,
        Err(StoreError::AccountNotFound(_))
    ));
}

macro_rules! suite {
    ($module:ident, $backend:expr;
     store: [$($store_test:ident),* $(,)?];
     backend: [$($backend_test:ident),* $(,)?]) => {
        mod $module {
            use super::Backend as _;
            $(
                #[tokio::test]
                async fn $store_test() {
                    let backend = $backend;
                    let store = backend.open().await;
                    super::$store_test(&store).await;
                    store.close().await;
                }
            )*
            $(
                #[tokio::test]
                async fn $backend_test() {
                    let backend = $backend;
                    super::$backend_test(&backend).await;
                }
            )*
        }
    };
}

suite!(sqlite, super::SqliteBackend::new();
store: [
    accounts_crud,
    domains_crud,
    body_round_trip_multi_chunk,
    small_and_empty_bodies,
    uncommitted_messages_are_invisible,
    pending_filters_by_domain_and_pages,
    lease_exclusivity,
    lease_expiry_takeover,
    lease_listing,
    record_transitions,
    record_fencing,
    concurrent_sessions,
    credentials_put_and_reverse_lookup,
];
backend: [
    second_handle_sees_changes,
    concurrent_handles,
    committed_data_survives_reopen,
]);
