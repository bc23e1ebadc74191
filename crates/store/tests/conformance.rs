//! The conformance suite of the store contract.
//!
//! Every check is an async function taking a `&Store` (with the [`ClockOffset`] its handles share
//! when it tests lease time, which it moves instead of sleeping; or a `&impl Backend` when it
//! needs to open the same storage again, as another process would). The `suite!` macro at the
//! bottom lists them once and runs all of them against a backend, each on fresh storage; a new
//! backend adds a `Backend` (fresh storage) and one `suite!` line.

use std::time::Duration;

use bytes::BytesMut;
use odmr_proto::reply::parse_reply;
use odmr_store::{
    ClockOffset, CommitInfo, Credential, DomainPolicy, DomainUsage, Envelope, EnvelopeRecipient, Lease,
    MessageId, OutboundMessage, Outcome, Pending, QueueFilter, RecipientState, Reply, Store, StoreConfig,
    StoreError, CHUNK_SIZE, DELETED, OUTBOUND_QUEUE,
};

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

/// A reply as a peer wrote it (lines separated by CRLF, the last one's end left out), parsed as
/// the delivery parses it.
fn reply(wire: &str) -> Reply {
    let mut b = BytesMut::from(format!("{wire}\r\n").as_str());
    let r = parse_reply(&mut b)
        .expect("a valid reply")
        .expect("a whole reply");
    assert!(b.is_empty(), "one reply: {wire:?}");
    r
}

fn outcome(recipient: i64, state: RecipientState, wire: &str) -> Outcome {
    Outcome {
        recipient,
        state,
        reply: Some(reply(wire)),
        remote_mta: Some("mx.customer.example".into()),
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

    // A root dot is the same domain in its one spelling, not an invalid one.
    for bad in ["", "a b.example", "x@y.example", "dot.example.."] {
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

/// The delivery's batch paths: first chunks of many messages in one call, and one `record` of
/// more outcomes than one statement takes (the backend splits them), mixing states, a
/// recipient named twice (the last outcome counts) and a recipient that no longer exists.
async fn batched_reads_and_records(store: &Store) {
    let small = put(store, &["a@batch.example"], b"small body").await;
    let big_body = pattern(CHUNK_SIZE + 10);
    let big = put(store, &["b@batch.example"], &big_body).await;
    let empty = put(store, &["c@batch.example"], b"").await;
    let mut got = store
        .read_first_chunks(&[small, big, empty, 9_999_999])
        .await
        .unwrap();
    got.sort_by_key(|(id, _)| *id);
    assert_eq!(
        got,
        vec![
            (small, bytes::Bytes::from_static(b"small body")),
            (big, bytes::Bytes::copy_from_slice(&big_body[..CHUNK_SIZE])),
        ]
    );
    assert!(store.read_first_chunks(&[]).await.unwrap().is_empty());

    let mut ids = Vec::new();
    for i in 0..1200 {
        ids.push(put(store, &[&format!("r{i}@many.example"), "keep@many.example"], b"x").await);
    }
    let l = lease(store, &["many.example", "batch.example"]).await;
    let pending = store
        .pending(&strings(&["many.example"]), None, 2000)
        .await
        .unwrap();
    assert_eq!(pending.len(), 1200);
    let mut outcomes = Vec::new();
    for (i, p) in pending.iter().enumerate() {
        // Every recipient delivered: the message goes away.
        let state = if i % 3 == 2 {
            RecipientState::Failed
        } else {
            RecipientState::Delivered
        };
        for r in &p.recipients {
            outcomes.push(outcome(r.id, state, &format!("250 ok {i}")));
        }
    }
    // Named twice: first deferred, then delivered; the later one counts.
    let first = rcpt_id(&pending[0], "keep@many.example");
    outcomes.insert(0, outcome(first, RecipientState::Queued, "451 later"));
    outcomes.push(outcome(
        123_456_789,
        RecipientState::Delivered,
        "250 gone meanwhile",
    ));
    store.record(&l, &outcomes).await.unwrap();
    let left = store
        .pending(&strings(&["many.example"]), None, 2000)
        .await
        .unwrap();
    assert!(left.is_empty(), "{} messages still pending", left.len());
    let failed = store
        .queue_find(&QueueFilter {
            domain: Some("many.example".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        failed.len(),
        400,
        "the messages with a failed recipient stay (for the notice)"
    );
    assert_eq!(
        store.read_body(ids[0], 0).await.unwrap(),
        None,
        "delivered messages are removed"
    );
    assert!(store.read_body(ids[2], 0).await.unwrap().is_some());

    // Fencing holds for a batch too: nothing is written when one domain is not leased.
    let other = put(store, &["z@unleased.example"], b"x").await;
    let p = store
        .pending(&strings(&["unleased.example"]), None, 10)
        .await
        .unwrap();
    let batch = [
        outcome(
            rcpt_id(&p[0], "z@unleased.example"),
            RecipientState::Delivered,
            "250",
        ),
        outcome(
            rcpt_id(
                &store
                    .pending(&strings(&["batch.example"]), None, 10)
                    .await
                    .unwrap()[0],
                "a@batch.example",
            ),
            RecipientState::Delivered,
            "250",
        ),
    ];
    assert!(matches!(
        store.record(&l, &batch).await,
        Err(StoreError::LeaseLost)
    ));
    assert!(
        store.read_body(small, 0).await.unwrap().is_some(),
        "nothing written"
    );
    assert!(store.read_body(other, 0).await.unwrap().is_some());
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
        &["a1@A.example", "b1@b.example", "a2@a.EXAMPLE.", "c1@c.example"],
        b"mixed",
    )
    .await;
    let only_b = put(store, &["b2@b.example"], b"b").await;
    let only_a = put(store, &["a3@a.example"], b"a").await;

    let a = store.pending(&strings(&["A.Example."]), None, 10).await.unwrap();
    assert_eq!(a.iter().map(|p| p.id).collect::<Vec<_>>(), [mixed, only_a]);
    let addrs: Vec<_> = a[0].recipients.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(
        addrs,
        ["a1@A.example", "a2@a.EXAMPLE."],
        "only a's, in received order (a root dot names the same domain)"
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

/// Lease time is moved with the test's clock (added to the database's), never slept: a lease is
/// live until its time to live has passed by the database's clock, and only then taken over.
/// Real time keeps running too, so each step checks with a margin of seconds on the safe side.
async fn lease_expiry_takeover(store: &Store, clock: &ClockOffset) {
    let ttl = Duration::from_secs(60);
    let old = store
        .lease_acquire(&strings(&["x.example", "y.example"]), "slow-node", ttl)
        .await
        .unwrap()
        .unwrap();
    clock.advance(Duration::from_secs(50));
    assert_eq!(
        store
            .lease_acquire(&strings(&["x.example"]), "node-2", ttl)
            .await
            .unwrap(),
        None,
        "still live 50 s into 60"
    );
    clock.advance(Duration::from_secs(11));
    let new = store
        .lease_acquire(&strings(&["x.example"]), "node-2", ttl)
        .await
        .unwrap()
        .expect("expired lease taken over");
    assert!(matches!(
        store.lease_renew(&old, ttl).await,
        Err(StoreError::LeaseLost)
    ));
    // The failed renew changed nothing: y is still expired, hence free.
    let y = lease(store, &["y.example"]).await;
    store.lease_release(&y).await.unwrap();
    // The stale holder's release leaves the new lease alone.
    store.lease_release(&old).await.unwrap();
    assert_eq!(
        store
            .lease_acquire(&strings(&["x.example"]), "node-3", ttl)
            .await
            .unwrap(),
        None
    );
    store.lease_renew(&new, ttl).await.unwrap();

    // Renewal keeps a lease alive: renewed 50 s in, it lives 60 s from then, by the same clock.
    let kept = store
        .lease_acquire(&strings(&["z.example"]), "node-1", ttl)
        .await
        .unwrap()
        .unwrap();
    clock.advance(Duration::from_secs(50));
    store.lease_renew(&kept, ttl).await.unwrap();
    clock.advance(Duration::from_secs(50));
    assert_eq!(
        store
            .lease_acquire(&strings(&["z.example"]), "node-2", ttl)
            .await
            .unwrap(),
        None,
        "100 s after it was taken, 50 s after its renewal"
    );
    clock.advance(Duration::from_secs(11));
    assert!(store
        .lease_acquire(&strings(&["z.example"]), "node-2", ttl)
        .await
        .unwrap()
        .is_some());
}

async fn lease_listing(store: &Store, clock: &ClockOffset) {
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
        .lease_acquire(&strings(&["d.example"]), "node-2", Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    clock.advance(Duration::from_secs(20));
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
    // Taken 60 s before the clock moved 20 s: about 40 s left, by the database's clock.
    assert!(rows
        .iter()
        .all(|r| r.expires_at >= before + 59_000 && r.expires_at <= before + 3_600_000));
    assert!(
        rows.iter()
            .all(|r| r.expires_in_ms > 30_000 && r.expires_in_ms <= 40_000),
        "{rows:?}"
    );
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
    assert_eq!(ok.last_reply, Some(reply("250 2.0.0 ok")));
    let later = by("later@d.example");
    assert_eq!((later.state, later.attempts), (RecipientState::Queued, 1));
    assert_eq!(later.last_reply, Some(reply("451 4.3.0 later")));
    let bad = by("bad@d.example");
    assert_eq!((bad.state, bad.attempts), (RecipientState::Failed, 1));
    assert_eq!(bad.last_reply, Some(reply("550 5.1.1 no such user")));
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
                remote_mta: None,
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

async fn record_fencing(store: &Store, clock: &ClockOffset) {
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
    // A recipient that no longer exists (the operator removed its message) is skipped.
    store
        .record(
            &stale,
            &[outcome(987_654_321, RecipientState::Delivered, "250 ok")],
        )
        .await
        .unwrap();
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
        .lease_acquire(&strings(&["f.example"]), "slow-node", Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    clock.advance(Duration::from_secs(61));
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
    assert_eq!(q[0].recipients[0].last_reply, Some(reply("421 try again")));
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
    assert_eq!(q[0].recipients[1].last_reply, Some(reply("550 no")));
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

// ----- the queue's whole life -----

async fn etrn_settings_and_pending_count(store: &Store) {
    store
        .account_add("acme", &[], &strings(&["a.example", "b.example"]))
        .await
        .unwrap();
    let a = store.account_get("acme").await.unwrap().unwrap();
    assert_eq!(a.etrn_destination, None);
    assert!(a.etrn_from.is_empty());
    store
        .account_set_etrn(
            "acme",
            Some("mail.acme.example:25"),
            &strings(&["192.0.2.0/24", "2001:db8::/32"]),
        )
        .await
        .unwrap();
    let a = store.account_get("acme").await.unwrap().unwrap();
    assert_eq!(a.etrn_destination.as_deref(), Some("mail.acme.example:25"));
    assert_eq!(a.etrn_from, strings(&["192.0.2.0/24", "2001:db8::/32"]));
    assert_eq!(store.account_list().await.unwrap()[0], a);
    store.account_set_etrn("acme", None, &[]).await.unwrap();
    assert_eq!(
        store.account_get("acme").await.unwrap().unwrap().etrn_destination,
        None
    );
    assert!(matches!(
        store.account_set_etrn("nobody", None, &[]).await,
        Err(StoreError::AccountNotFound(_))
    ));

    assert_eq!(store.pending_count(&strings(&["a.example"])).await.unwrap(), 0);
    put(store, &["x@a.example", "y@a.example"], b"1").await;
    put(store, &["x@a.example", "z@b.example"], b"2").await;
    put(store, &["z@b.example"], b"3").await;
    assert_eq!(store.pending_count(&strings(&["A.example"])).await.unwrap(), 2);
    assert_eq!(
        store
            .pending_count(&strings(&["a.example", "b.example"]))
            .await
            .unwrap(),
        3
    );
    assert_eq!(store.pending_count(&[]).await.unwrap(), 0);
}

async fn domain_policy_and_usage(store: &Store) {
    store
        .account_add("acme", &[], &strings(&["a.example"]))
        .await
        .unwrap();
    let info = store.domain_get("A.Example").await.unwrap().unwrap();
    assert_eq!(info.account, "acme");
    assert_eq!(info.policy, DomainPolicy::default());
    assert_eq!(
        store
            .domain_accepts("a.example", "anyone")
            .await
            .unwrap()
            .map(|c| c.accepted),
        Some(true)
    );
    assert_eq!(
        store
            .domain_accepts("nobody.example", "x")
            .await
            .unwrap()
            .map(|c| c.accepted),
        None
    );

    let policy = DomainPolicy {
        max_messages: Some(2),
        max_bytes: Some(10_000),
        max_age: Some(3600),
        local_parts: Some(strings(&["Bob", "alice", "bob"])),
    };
    store.domain_set_policy("a.example", &policy).await.unwrap();
    let got = store.domain_get("a.example").await.unwrap().unwrap().policy;
    assert_eq!(got.local_parts, Some(strings(&["alice", "bob"])));
    assert_eq!(
        (got.max_messages, got.max_bytes, got.max_age),
        (Some(2), Some(10_000), Some(3600))
    );
    assert_eq!(
        store
            .domain_accepts("a.example", "BOB")
            .await
            .unwrap()
            .map(|c| c.accepted),
        Some(true)
    );
    assert_eq!(
        store
            .domain_accepts("a.example", "carol")
            .await
            .unwrap()
            .map(|c| c.accepted),
        Some(false)
    );
    assert!(matches!(
        store.domain_set_policy("nobody.example", &policy).await,
        Err(StoreError::DomainNotFound(_))
    ));

    // Usage counts messages with something left to do in the domain, and their sizes.
    assert_eq!(
        store.domain_usage("a.example").await.unwrap(),
        DomainUsage::default()
    );
    put(store, &["bob@a.example", "x@other.example"], &[b'x'; 100]).await;
    let second = put(store, &["alice@a.example"], &[b'y'; 50]).await;
    put(store, &["x@other.example"], &[b'z'; 7]).await;
    assert_eq!(
        store.domain_usage("a.example").await.unwrap(),
        DomainUsage {
            messages: 2,
            bytes: 150
        }
    );
    let l = lease(store, &["a.example"]).await;
    let p = store.pending(&strings(&["a.example"]), None, 10).await.unwrap();
    let rid = rcpt_id(&p[1], "alice@a.example");
    assert_eq!(p[1].id, second);
    store
        .record(&l, &[outcome(rid, RecipientState::Delivered, "250 ok")])
        .await
        .unwrap();
    assert_eq!(
        store.domain_usage("a.example").await.unwrap(),
        DomainUsage {
            messages: 1,
            bytes: 100
        }
    );

    // Back to catch-all; the list goes with the domain.
    store
        .domain_set_policy("a.example", &DomainPolicy::default())
        .await
        .unwrap();
    assert_eq!(
        store
            .domain_accepts("a.example", "carol")
            .await
            .unwrap()
            .map(|c| c.accepted),
        Some(true)
    );
    assert_eq!(
        store.domain_get("a.example").await.unwrap().unwrap().policy,
        DomainPolicy::default()
    );
}

async fn expiry_and_failure_notices(store: &Store) {
    store
        .account_add("acme", &[], &strings(&["a.example", "long.example"]))
        .await
        .unwrap();
    store
        .domain_set_policy(
            "long.example",
            &DomainPolicy {
                max_age: Some(1_000_000),
                ..DomainPolicy::default()
            },
        )
        .await
        .unwrap();
    let m1 = put(
        store,
        &["x@a.example", "y@long.example"],
        b"Subject: one\r\n\r\nbody\r\n",
    )
    .await;
    let m2 = put(store, &["z@leased.example"], b"two").await;
    let held = put(store, &["h@a.example"], b"held").await;
    store
        .queue_hold(&QueueFilter {
            ids: vec![held],
            domain: None,
        })
        .await
        .unwrap();
    let live = lease(store, &["leased.example"]).await;

    // A week is far away: nothing expires.
    assert_eq!(store.expire(Duration::from_secs(7 * 86400)).await.unwrap(), 0);
    // With no hold time left: only x@a.example (long.example keeps its own, the leased domain
    // waits for its lease, a held recipient does not expire).
    assert_eq!(store.expire(Duration::ZERO).await.unwrap(), 1);
    let notices = store.notices_failed(10).await.unwrap();
    assert_eq!(notices.len(), 1);
    assert_eq!(notices[0].id, m1);
    assert_eq!(notices[0].recipients.len(), 1);
    let r = &notices[0].recipients[0];
    assert_eq!(
        (r.address.as_str(), r.state),
        ("x@a.example", RecipientState::Failed)
    );
    assert_eq!(r.status.as_deref(), Some("4.4.7"));
    assert_eq!(notices[0].mail_from, "sender@origin.example");
    assert_eq!(notices[0].mail_params, "BODY=8BITMIME");

    // The lease ends: the leased domain expires on the next run.
    store.lease_release(&live).await.unwrap();
    assert_eq!(store.expire(Duration::ZERO).await.unwrap(), 1);
    let notices = store.notices_failed(10).await.unwrap();
    assert_eq!(notices.iter().map(|n| n.id).collect::<Vec<_>>(), [m1, m2]);
    assert_eq!(store.notices_failed(1).await.unwrap().len(), 1, "limit");

    // Settling queues the notice and the recipient is done; the message stays for y@long.
    let notice = OutboundMessage {
        mail_params: String::new(),
        to: "sender@origin.example".into(),
        body: pattern(CHUNK_SIZE + 10),
        eight_bit: false,
    };
    let x = notices[0].recipients[0].id;
    store.settle_failed(&[x], Some(&notice)).await.unwrap();
    // Settling again finds nothing to settle and queues nothing.
    store.settle_failed(&[x], Some(&notice)).await.unwrap();
    let out = store
        .pending(&strings(&[OUTBOUND_QUEUE]), None, 10)
        .await
        .unwrap();
    assert_eq!(out.len(), 1, "one notice, not two");
    assert_eq!(out[0].mail_from, "");
    assert_eq!(out[0].recipients[0].address, "sender@origin.example");
    assert_eq!(out[0].recipients[0].domain, OUTBOUND_QUEUE);
    assert_eq!(read_all(store, out[0].id).await, notice.body);
    let q = store
        .queue_find(&QueueFilter {
            ids: vec![m1],
            domain: None,
        })
        .await
        .unwrap();
    let states: Vec<_> = q[0].recipients.iter().map(|r| r.state).collect();
    assert_eq!(states, [RecipientState::Bounced, RecipientState::Queued]);

    // No notice wanted (null sender, NOTIFY=NEVER): settled without one; the message goes.
    let z = notices[1].recipients[0].id;
    store.settle_failed(&[z], None).await.unwrap();
    assert!(store
        .queue_find(&QueueFilter {
            ids: vec![m2],
            domain: None
        })
        .await
        .unwrap()
        .is_empty());
    assert_eq!(read_all(store, m2).await, b"");
    assert!(store.notices_failed(10).await.unwrap().is_empty());
    assert_eq!(
        store
            .pending(&strings(&[OUTBOUND_QUEUE]), None, 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn delay_notices(store: &Store) {
    let m1 = put(store, &["a@d.example", "b@d.example"], b"1").await;
    let m2 = put(store, &["c@d.example"], b"2").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // Nothing is old enough yet.
    assert!(store
        .notices_delayed(now - 3600, (0, 0), 10)
        .await
        .unwrap()
        .is_empty());
    let due = store.notices_delayed(now + 1, (0, 0), 10).await.unwrap();
    assert_eq!(due.iter().map(|n| n.id).collect::<Vec<_>>(), [m1, m2]);
    assert_eq!(due[0].recipients.len(), 2);
    // The cursor walks forward.
    let first = store.notices_delayed(now + 1, (0, 0), 1).await.unwrap();
    assert_eq!(first[0].id, m1);
    let rest = store
        .notices_delayed(now + 1, (first[0].received_at, first[0].id), 10)
        .await
        .unwrap();
    assert_eq!(rest.iter().map(|n| n.id).collect::<Vec<_>>(), [m2]);

    let warning = OutboundMessage {
        mail_params: String::new(),
        to: "sender@origin.example".into(),
        body: b"warning".to_vec(),
        eight_bit: false,
    };
    let ids: Vec<_> = due[0].recipients.iter().map(|r| r.id).collect();
    store.settle_delayed(&ids, Some(&warning)).await.unwrap();
    store.settle_delayed(&ids, Some(&warning)).await.unwrap();
    let due = store.notices_delayed(now + 1, (0, 0), 10).await.unwrap();
    assert_eq!(due.iter().map(|n| n.id).collect::<Vec<_>>(), [m2]);
    // A warning does not take the recipient off the queue.
    assert_eq!(
        store
            .pending(&strings(&["d.example"]), None, 10)
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        store
            .pending(&strings(&[OUTBOUND_QUEUE]), None, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    let q = store
        .queue_find(&QueueFilter {
            ids: vec![m1],
            domain: None,
        })
        .await
        .unwrap();
    assert!(q[0].recipients.iter().all(|r| r.warned));

    // A courtesy notice settles nothing and is queued on its own.
    store.queue_notice(&warning).await.unwrap();
    assert_eq!(
        store
            .pending(&strings(&[OUTBOUND_QUEUE]), None, 10)
            .await
            .unwrap()
            .len(),
        2
    );
}

async fn operator_commands(store: &Store) {
    let m1 = put(store, &["a@x.example", "b@y.example"], b"1").await;
    let m2 = put(store, &["c@x.example"], b"2").await;
    let m3 = put(store, &["d@y.example"], b"3").await;
    let x = |ids: Vec<MessageId>| QueueFilter {
        ids,
        domain: Some("X.example".into()),
    };
    let all = QueueFilter::default();
    assert_eq!(store.queue_ids(&all).await.unwrap(), [m1, m2, m3]);
    assert_eq!(store.queue_ids(&x(vec![])).await.unwrap(), [m1, m2]);
    assert_eq!(store.queue_ids(&x(vec![m2, m3])).await.unwrap(), [m2]);
    let found = store.queue_find(&x(vec![])).await.unwrap();
    assert_eq!(found.iter().map(|m| m.id).collect::<Vec<_>>(), [m1, m2]);
    assert_eq!(
        found[0].recipients.len(),
        2,
        "all recipients of a selected message are shown"
    );
    assert_eq!(found[0].helo, "client.example");

    // Hold takes x.example's recipients off delivery; release puts them back.
    assert_eq!(store.queue_hold(&x(vec![])).await.unwrap(), 2);
    assert!(store
        .pending(&strings(&["x.example"]), None, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(!store.has_pending(&strings(&["x.example"])).await.unwrap());
    assert_eq!(
        store
            .pending(&strings(&["y.example"]), None, 10)
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(store.queue_hold(&x(vec![])).await.unwrap(), 0, "already held");
    assert_eq!(store.queue_release(&x(vec![m1])).await.unwrap(), 1);
    assert_eq!(
        store
            .pending(&strings(&["x.example"]), None, 10)
            .await
            .unwrap()
            .len(),
        1
    );

    // A delivery still records the outcome of a recipient held after it was read.
    let l = lease(store, &["x.example"]).await;
    let p = store.pending(&strings(&["x.example"]), None, 10).await.unwrap();
    store.queue_hold(&x(vec![m1])).await.unwrap();
    store
        .record(
            &l,
            &[outcome(
                rcpt_id(&p[0], "a@x.example"),
                RecipientState::Delivered,
                "250 ok",
            )],
        )
        .await
        .unwrap();
    store.lease_release(&l).await.unwrap();

    // Bounce: queued or held recipients fail with 5.0.0 and a notice becomes due.
    assert_eq!(
        store.queue_bounce(&x(vec![])).await.unwrap(),
        1,
        "c@x.example (held)"
    );
    let n = store.notices_failed(10).await.unwrap();
    assert_eq!(n.len(), 1);
    assert_eq!(n[0].id, m2);
    assert_eq!(n[0].recipients[0].status.as_deref(), Some("5.0.0"));
    // An outcome arriving after the operator gave up does not undo that.
    let l = lease(store, &["x.example"]).await;
    store
        .record(
            &l,
            &[outcome(
                n[0].recipients[0].id,
                RecipientState::Delivered,
                "250 late",
            )],
        )
        .await
        .unwrap();
    assert_eq!(store.notices_failed(10).await.unwrap().len(), 1);
    store.lease_release(&l).await.unwrap();

    // Delete by domain leaves other domains' recipients; delete all empties the queue.
    assert_eq!(
        store
            .queue_delete(&QueueFilter {
                ids: vec![],
                domain: Some("y.example".into())
            })
            .await
            .unwrap(),
        2
    );
    assert_eq!(store.queue_ids(&all).await.unwrap(), [m2]);
    assert_eq!(store.queue_delete(&all).await.unwrap(), 1);
    assert!(store.queue_list().await.unwrap().is_empty());
    assert!(store.notices_failed(10).await.unwrap().is_empty());
    for m in [m1, m2, m3] {
        assert_eq!(read_all(store, m).await, b"", "body of {m} removed");
    }

    // Leases: listed, and breaking one fences its holder out.
    let l = lease(store, &["x.example", "y.example"]).await;
    let listed = store.lease_list().await.unwrap();
    assert_eq!(
        listed.iter().map(|l| l.domain.as_str()).collect::<Vec<_>>(),
        ["x.example", "y.example"]
    );
    assert_eq!(listed[0].holder, "node-test");
    assert_eq!(listed[0].token, l.token);
    assert!(store.lease_break("X.example").await.unwrap());
    assert!(!store.lease_break("x.example").await.unwrap());
    assert!(matches!(
        store.lease_renew(&l, Duration::from_secs(60)).await,
        Err(StoreError::LeaseBroken)
    ));
}

/// A broken lease frees its domain at once, and its holder is refused with `LeaseBroken` (not
/// `LeaseLost`), at its next renewal or write, even after another session took the domain.
async fn lease_break_is_told_to_the_holder(store: &Store) {
    let id = put(store, &["r1@b.example", "r2@c.example"], b"broken").await;
    let rcpt = |domain: &'static str| async move {
        store.pending(&strings(&[domain]), None, 10).await.unwrap()[0].recipients[0].id
    };
    let (r1, r2) = (rcpt("b.example").await, rcpt("c.example").await);
    let held = lease(store, &["b.example", "c.example"]).await;
    let ttl = Duration::from_secs(60);

    assert!(store.lease_break("b.example").await.unwrap());
    let listed: Vec<String> = store
        .lease_list()
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.domain)
        .collect();
    assert_eq!(listed, ["c.example"]);
    assert!(matches!(
        store.lease_renew(&held, ttl).await,
        Err(StoreError::LeaseBroken)
    ));
    // Not even the outcome of the domain the lease still holds is written.
    assert!(matches!(
        store
            .record(&held, &[outcome(r2, RecipientState::Delivered, "250 ok")])
            .await,
        Err(StoreError::LeaseBroken)
    ));

    // Free for the next taker, without waiting for the broken lease to expire; the old holder
    // still learns its lease was broken, and the new one is not disturbed.
    let next = store
        .lease_acquire(&strings(&["b.example"]), "node-2", ttl)
        .await
        .unwrap()
        .expect("a broken lease's domain is free");
    assert!(matches!(
        store.lease_renew(&held, ttl).await,
        Err(StoreError::LeaseBroken)
    ));
    assert!(matches!(
        store
            .record(&held, &[outcome(r1, RecipientState::Delivered, "250 ok")])
            .await,
        Err(StoreError::LeaseBroken)
    ));
    store.lease_renew(&next, ttl).await.unwrap();
    store
        .record(&next, &[outcome(r1, RecipientState::Queued, "421 later")])
        .await
        .unwrap();

    // Breaking the other domain of the same lease; the holder's release then frees nothing
    // that is not its own.
    assert!(store.lease_break("c.example").await.unwrap());
    store.lease_release(&held).await.unwrap();
    assert!(matches!(
        store.lease_renew(&held, ttl).await,
        Err(StoreError::LeaseBroken)
    ));
    store.lease_renew(&next, ttl).await.unwrap();

    // A lease that was only released is lost, not broken.
    store.lease_release(&next).await.unwrap();
    assert!(matches!(
        store.lease_renew(&next, ttl).await,
        Err(StoreError::LeaseLost)
    ));
    assert!(!store.lease_break("b.example").await.unwrap());

    let q = store.queue_list().await.unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].id, id);
    let got: Vec<_> = q[0]
        .recipients
        .iter()
        .map(|r| (r.state, r.attempts, r.last_reply.clone()))
        .collect();
    assert_eq!(
        got,
        [
            (RecipientState::Queued, 1, Some(reply("421 later"))),
            (RecipientState::Queued, 0, None)
        ]
    );
}

/// A reply comes back as it was recorded: code, enhanced status (or none) and every text line,
/// in the listing and in the notices; the operator's delete keeps it and says so in the status.
async fn replies_are_kept_as_given(store: &Store) {
    store
        .account_add("acme", &[], &strings(&["d.example", "e.example"]))
        .await
        .unwrap();
    let rcpts = [
        "multi@d.example",
        "refused@d.example",
        "bare@d.example",
        "empty@d.example",
        "other@e.example",
    ];
    let id = put(store, &rcpts, b"x").await;
    let l = lease(store, &["d.example"]).await;
    let p = &store.pending(&strings(&["d.example"]), None, 10).await.unwrap()[0];
    let multi = reply("250-2.0.0 first line\r\n250-\r\n250 2.0.0  361 byte chunk, total 361 OK");
    assert_eq!(multi.lines, ["first line", "", "361 byte chunk, total 361 OK"]);
    let refused = reply("550-5.1.1 <refused@d.example> unknown user\r\n550 5.1.1 try another");
    let bare = reply("451 no status here");
    let empty = Reply {
        code: 452,
        status: Some("4.3.1".into()),
        lines: vec![],
    };
    let with = |address: &str, state, reply: &Reply| Outcome {
        recipient: rcpt_id(p, address),
        state,
        reply: Some(reply.clone()),
        remote_mta: Some("mx.customer.example".into()),
    };
    store
        .record(
            &l,
            &[
                with("multi@d.example", RecipientState::Delivered, &multi),
                with("refused@d.example", RecipientState::Failed, &refused),
                with("bare@d.example", RecipientState::Queued, &bare),
                with("empty@d.example", RecipientState::Queued, &empty),
            ],
        )
        .await
        .unwrap();
    store.lease_release(&l).await.unwrap();

    let q = store.queue_list().await.unwrap();
    let got: Vec<_> = q[0]
        .recipients
        .iter()
        .map(|r| (r.address.as_str(), r.last_reply.clone()))
        .collect();
    let no_lines = Reply {
        lines: vec![String::new()],
        ..empty.clone()
    };
    assert_eq!(
        got,
        [
            ("multi@d.example", Some(multi.clone())),
            ("refused@d.example", Some(refused.clone())),
            ("bare@d.example", Some(bare.clone())),
            ("empty@d.example", Some(no_lines)),
            ("other@e.example", None),
        ]
    );
    assert_eq!(q[0].recipients[2].last_reply.as_ref().unwrap().status, None);
    let n = store.notices_failed(10).await.unwrap();
    assert_eq!(n[0].recipients.len(), 1);
    assert_eq!(n[0].recipients[0].last_reply, Some(refused.clone()));
    assert_eq!(
        n[0].recipients[0].remote_mta.as_deref(),
        Some("mx.customer.example")
    );

    // The operator's delete is its decision, not a reply: the customer's last reply stays.
    let d = QueueFilter {
        ids: vec![id],
        domain: Some("d.example".into()),
    };
    assert_eq!(store.queue_delete(&d).await.unwrap(), 3);
    let q = store.queue_list().await.unwrap();
    let bare_now = q[0]
        .recipients
        .iter()
        .find(|r| r.address == "bare@d.example")
        .unwrap();
    assert_eq!(bare_now.state, RecipientState::Bounced);
    assert_eq!(bare_now.status.as_deref(), Some(DELETED));
    assert_eq!(bare_now.last_reply, Some(bare));
    assert_eq!(bare_now.remote_mta.as_deref(), Some("mx.customer.example"));
    assert!(store.notices_failed(10).await.unwrap().is_empty(), "no notice");
}

// ----- running the suite against every backend -----

/// Fresh storage for one test, which can be opened several times (as several processes would).
/// Every handle it opens sees the database's clock moved by the same [`ClockOffset`].
trait Backend {
    async fn open(&self) -> Store;
    fn clock(&self) -> &ClockOffset;
}

struct SqliteBackend {
    dir: tempfile::TempDir,
    clock: ClockOffset,
}

impl SqliteBackend {
    fn new() -> Self {
        SqliteBackend {
            dir: tempfile::tempdir().expect("tempdir"),
            clock: ClockOffset::new(),
        }
    }
}

impl Backend for SqliteBackend {
    async fn open(&self) -> Store {
        let config = StoreConfig::sqlite(self.dir.path()).with_clock_offset(self.clock.clone());
        Store::open(&config).await.expect("open")
    }

    fn clock(&self) -> &ClockOffset {
        &self.clock
    }
}

/// Every test of the suite, listed once, by what it takes: a store; a store and the clock its
/// backend's handles share; or the backend itself, to open the same storage again as another
/// process would. `suite!(module, fresh_backend)` runs all of them against one backend, each test
/// on fresh storage.
macro_rules! suite {
    ($module:ident, $backend:expr) => {
        suite!(@run $module, $backend;
        store: [
            accounts_crud,
            domains_crud,
            body_round_trip_multi_chunk,
            small_and_empty_bodies,
            batched_reads_and_records,
            uncommitted_messages_are_invisible,
            pending_filters_by_domain_and_pages,
            lease_exclusivity,
            record_transitions,
            concurrent_sessions,
            credentials_put_and_reverse_lookup,
            etrn_settings_and_pending_count,
            domain_policy_and_usage,
            expiry_and_failure_notices,
            delay_notices,
            operator_commands,
            replies_are_kept_as_given,
            lease_break_is_told_to_the_holder,
        ];
        clock: [
            lease_expiry_takeover,
            lease_listing,
            record_fencing,
        ];
        backend: [
            second_handle_sees_changes,
            concurrent_handles,
            committed_data_survives_reopen,
        ]);
    };
    (@run $module:ident, $backend:expr;
     store: [$($store_test:ident),* $(,)?];
     clock: [$($clock_test:ident),* $(,)?];
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
                async fn $clock_test() {
                    let backend = $backend;
                    let store = backend.open().await;
                    super::$clock_test(&store, backend.clock()).await;
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

// The backends the suite runs against: one line each (and a `Backend` for its fresh storage).
suite!(sqlite, super::SqliteBackend::new());
