//! The contract every backend keeps: the operations of [`Store`], grouped by concern into one
//! crate-private trait per concern (a backend implements each in its own file: `accounts.rs`,
//! `leases.rs`, `queue.rs`, `queue_end.rs`, `operators.rs`).
//!
//! Each operation is written once, below, with its documentation: the `contract!` macro declares
//! it in its trait and writes the public method of [`Store`] that hands the call to the backend
//! in use, through [`dispatch!`](crate::dispatch) — the one place that knows the backends. What
//! is not a one-to-one call (opening, receiving a body, closing) is in `dispatch.rs`.

use std::time::Duration;

use crate::dispatch::{dispatch, Store};
use crate::{
    Account, Credential, DomainCheck, DomainInfo, DomainPolicy, DomainUsage, Lease, LeaseRow, MessageId,
    Notice, OutboundMessage, Outcome, Pending, QueueFilter, QueuedMessage, RecipientId, StoreError,
};

/// Declares each trait with its operations, and for each operation a public method of [`Store`]
/// that calls it on the backend in use.
macro_rules! contract {
    ($(
        $(#[$trait_attr:meta])*
        trait $trait:ident {
            $(
                $(#[$attr:meta])*
                async fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty;
            )*
        }
    )*) => {
        $(
            $(#[$trait_attr])*
            pub(crate) trait $trait {
                $( async fn $name(&self $(, $arg: $ty)*) -> $ret; )*
            }
        )*

        impl Store {
            $($(
                $(#[$attr])*
                pub async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    dispatch!(self, backend => $trait::$name(backend $(, $arg)*).await)
                }
            )*)*
        }
    };
}

contract! {
    /// Accounts, their credentials and domains, and each domain's policy.
    trait Accounts {
        /// Creates an account with its credentials and domains, all or nothing.
        async fn account_add(
            &self,
            name: &str,
            credentials: &[Credential],
            domains: &[String],
        ) -> Result<(), StoreError>;

        /// Removes an account, its credentials and its domains. Held mail stays in the queue.
        async fn account_remove(&self, name: &str) -> Result<(), StoreError>;

        /// Replaces all credentials of an account.
        async fn account_set_credentials(
            &self,
            name: &str,
            credentials: &[Credential],
        ) -> Result<(), StoreError>;

        /// The credential of `scheme` of an account; `None` if the account or the credential does not
        /// exist.
        async fn account_credential(&self, name: &str, scheme: &str) -> Result<Option<Vec<u8>>, StoreError>;

        /// The account holding a credential with exactly these bytes (e.g. a client certificate's
        /// fingerprint for SASL EXTERNAL).
        async fn account_by_credential(
            &self,
            scheme: &str,
            data: &[u8],
        ) -> Result<Option<String>, StoreError>;

        /// Add or replace one credential of an account, keeping its others.
        async fn account_put_credential(&self, name: &str, credential: &Credential) -> Result<(), StoreError>;

        /// An account with its domains (sorted); `None` if there is no such account.
        async fn account_get(&self, name: &str) -> Result<Option<Account>, StoreError>;

        /// All accounts, sorted by name, each with its domains sorted.
        async fn account_list(&self) -> Result<Vec<Account>, StoreError>;

        /// Sets (replaces) an account's ETRN destination and the networks allowed to ask without
        /// authenticating.
        async fn account_set_etrn(
            &self,
            name: &str,
            destination: Option<&str>,
            from: &[String],
        ) -> Result<(), StoreError>;

        /// Gives `domain` (case-insensitive, stored lower-case) to `account`.
        async fn domain_add(&self, account: &str, domain: &str) -> Result<(), StoreError>;

        /// Takes `domain` (case-insensitive) from its account; [`StoreError::DomainNotFound`] if
        /// nobody owns it. Its held mail stays in the queue.
        async fn domain_remove(&self, domain: &str) -> Result<(), StoreError>;

        /// The account that owns `domain` (case-insensitive).
        async fn domain_owner(&self, domain: &str) -> Result<Option<String>, StoreError>;

        /// A domain (case-insensitive) with its owner and policy.
        async fn domain_get(&self, domain: &str) -> Result<Option<DomainInfo>, StoreError>;

        /// Replaces a domain's policy (local parts are lower-cased and deduplicated).
        async fn domain_set_policy(&self, domain: &str, policy: &DomainPolicy) -> Result<(), StoreError>;

        /// Whether `domain` takes mail for `local_part` (case-insensitive), with its quotas; `None`
        /// if nobody owns the domain. Cheap: one indexed lookup, whatever the length of the list.
        async fn domain_accepts(
            &self,
            domain: &str,
            local_part: &str,
        ) -> Result<Option<DomainCheck>, StoreError>;

        /// What a domain holds now (see [`DomainUsage`]). Its cost follows the domain's mail.
        async fn domain_usage(&self, domain: &str) -> Result<DomainUsage, StoreError>;
    }

    /// Per-domain leases: the only lock, and the fencing token of every write under a lease.
    trait Leases {
        /// Leases all `domains` for `ttl`, all or nothing: `None` if any of them has an unexpired
        /// lease; an expired lease is taken over.
        async fn lease_acquire(
            &self,
            domains: &[String],
            holder: &str,
            ttl: Duration,
        ) -> Result<Option<Lease>, StoreError>;

        /// Extends a lease to `ttl` from now; [`StoreError::LeaseLost`] (and nothing changed) if any
        /// of its domains no longer carries its token, [`StoreError::LeaseBroken`] if that is because
        /// the operator broke it.
        async fn lease_renew(&self, lease: &Lease, ttl: Duration) -> Result<(), StoreError>;

        /// Ends a lease; only rows still carrying its token are removed.
        async fn lease_release(&self, lease: &Lease) -> Result<(), StoreError>;

        /// Every unexpired lease, one row per domain, ordered by domain. For operators, and for a
        /// node that looks for its own dead sessions' leases at startup.
        async fn lease_list(&self) -> Result<Vec<LeaseRow>, StoreError>;

        /// Removes the lease of `domain`; returns whether there was one. The domain is free at once;

        /// the holder's next write or renewal is refused with [`StoreError::LeaseBroken`] (fencing),
        /// so breaking a live lease is safe, only wasteful.
        async fn lease_break(&self, domain: &str) -> Result<bool, StoreError>;
    }

    /// What a delivery reads and records, and the purge of abandoned messages.
    trait Queue {
        /// Removes the messages that are still being received and have been idle for at least
        /// `older_than`, with their bodies; returns how many. Only for housekeeping and tests:
        /// a message removed this way while still being received fails its commit.
        async fn purge_incomplete(&self, older_than: Duration) -> Result<u64, StoreError>;

        /// Committed messages with id > `after` (ordered by id, at most `limit`) that have at least one
        /// queued recipient in `domains`; each with only its queued recipients in those domains.
        async fn pending(
            &self,
            domains: &[String],
            after: Option<MessageId>,
            limit: usize,
        ) -> Result<Vec<Pending>, StoreError>;

        /// Whether any queued recipient is in `domains`.
        async fn has_pending(&self, domains: &[String]) -> Result<bool, StoreError>;

        /// How many committed messages have at least one queued recipient in `domains`.
        async fn pending_count(&self, domains: &[String]) -> Result<u64, StoreError>;

        /// Chunk `chunk` (0, 1, …) of a body; `None` past the end (an empty body has no chunk) or if
        /// the message does not exist.
        async fn read_body(&self, id: MessageId, chunk: u32) -> Result<Option<bytes::Bytes>, StoreError>;

        /// Chunk 0 of each listed message that has one, in one round trip (in no particular order):
        /// the delivery prefetches the bodies of small messages (one chunk) a batch at a time
        /// instead of asking for each.
        async fn read_first_chunks(
            &self,
            ids: &[MessageId],
        ) -> Result<Vec<(MessageId, bytes::Bytes)>, StoreError>;

        /// Records delivery outcomes in one transaction (of any number of messages: the statements
        /// are batched). Fencing: [`StoreError::LeaseLost`] (and nothing written) unless every
        /// recipient's domain is leased with `lease.token` and the lease is unexpired;

        /// [`StoreError::LeaseBroken`] instead if the operator broke the lease. Sets state, last
        /// reply, `attempts += 1` and `updated_at`; removes a message (and its body) once all its
        /// recipients are delivered or bounced. A recipient the operator removed meanwhile is
        /// skipped; one the operator held still gets its outcome (the delivery happened).
        async fn record(&self, lease: &Lease, outcomes: &[Outcome]) -> Result<(), StoreError>;
    }

    /// The end of a message's life: expiry, failure notices and delay warnings.
    trait QueueEnd {
        /// Turns queued recipients held longer than their domain's `max_age` (else `default_max_age`)
        /// into `failed` with status `4.4.7`; returns how many. Domains with a live lease are left
        /// for the next run, so a running delivery never sees its recipients change under it. Held
        /// recipients do not expire. The cost follows the number of old messages.
        async fn expire(&self, default_max_age: Duration) -> Result<u64, StoreError>;

        /// Messages with `failed` recipients (oldest first, at most `limit`), each listing only those.
        async fn notices_failed(&self, limit: usize) -> Result<Vec<Notice>, StoreError>;

        /// Messages received at or before `until` (unix seconds) with queued recipients whose delay
        /// warning was not handled yet, each listing only those (never a message from the null
        /// sender: nobody to warn); ordered by (received_at, id), after
        /// the cursor `after` (such a pair), at most `limit`. A caller walks forward with the cursor so
        /// each old message is looked at once, not at every run: the cost follows new work.
        async fn notices_delayed(
            &self,
            until: i64,
            after: (i64, MessageId),
            limit: usize,
        ) -> Result<Vec<Notice>, StoreError>;

        /// In one transaction: queues `notice` (if any) for the bounce relay and turns `recipients`
        /// that are still `failed` into `bounced`, removing messages that are then done. So a crash
        /// never loses a notice nor sends one twice.
        async fn settle_failed(
            &self,
            recipients: &[RecipientId],
            notice: Option<&OutboundMessage>,
        ) -> Result<(), StoreError>;

        /// Like [`Store::settle_failed`] for delay warnings: marks `recipients` as warned.
        async fn settle_delayed(
            &self,
            recipients: &[RecipientId],
            notice: Option<&OutboundMessage>,
        ) -> Result<(), StoreError>;

        /// Queues a notice that settles nothing (a "relayed" notice after a delivery to a customer
        /// that does not offer DSN). Unlike failure notices, such a courtesy notice may be lost if
        /// the process dies between the delivery's record and this call.
        async fn queue_notice(&self, notice: &OutboundMessage) -> Result<(), StoreError>;
    }

    /// The operators' queue commands.
    trait Operators {
        /// The committed messages a filter selects, oldest first, with all their recipients.
        async fn queue_find(&self, filter: &QueueFilter) -> Result<Vec<QueuedMessage>, StoreError>;

        /// The ids of the committed messages a filter selects, ascending.
        async fn queue_ids(&self, filter: &QueueFilter) -> Result<Vec<MessageId>, StoreError>;

        /// Removes the selected messages without any notice; returns how many. With a domain
        /// filter, only that domain's recipients go (as `bounced` without a notice, status
        /// [`DELETED`](crate::DELETED), last reply kept), and a message is removed once nothing is
        /// left to do for it.
        async fn queue_delete(&self, filter: &QueueFilter) -> Result<u64, StoreError>;

        /// Gives up on the selected queued or held recipients: `failed` with status `5.0.0`, so the
        /// bounce job sends their senders a notice. Returns how many recipients changed.
        async fn queue_bounce(&self, filter: &QueueFilter) -> Result<u64, StoreError>;

        /// Holds the selected queued recipients; returns how many changed.
        async fn queue_hold(&self, filter: &QueueFilter) -> Result<u64, StoreError>;

        /// Releases the selected held recipients; returns how many changed.
        async fn queue_release(&self, filter: &QueueFilter) -> Result<u64, StoreError>;
    }
}
