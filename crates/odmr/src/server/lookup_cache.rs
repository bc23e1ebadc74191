//! A short-lived cache of the MX's recipient lookups ([`Store::domain_accepts`]).
//!
//! Why: at RCPT the lookup is the one store query an inbound message costs besides its commit,
//! and with sqlx every query is a hand-off to a connection thread and back. An inbound burst
//! asks the same few questions thousands of times a second ("is example.org hosted, is `info`
//! a recipient there"), so one answer serves them all for a moment.
//!
//! Invariants:
//! - An answer is used for at most its time to live (`smtp.lookup_cache`, 1 s by default; zero
//!   turns the cache off) after the store gave it. A domain added, removed or changed by the CLI
//!   (on this node or any other node of a fleet) takes effect on the MX within that time; quotas
//!   are soft anyway (see [`super::mx`]).
//! - Only answers are cached, never errors: a store failure is retried at the next RCPT.
//! - Memory is bounded: at most [`MAX_ENTRIES`] answers (a dictionary attack walks through local
//!   parts); when full, expired answers are dropped, and if none are, all of them.
//! - What a domain holds (its usage against a quota) is never cached: it changes with every
//!   message.
//!
//! Time is passed in, so the rules above are tested without waiting.

use odmr_store::{DomainCheck, Store, StoreError};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many answers are kept at most.
pub const MAX_ENTRIES: usize = 10_000;

/// (domain, local part), both lowercase: the store compares them so.
type Key = (String, String);

pub struct LookupCache {
    ttl: Duration,
    answers: Mutex<HashMap<Key, (Instant, Option<DomainCheck>)>>,
}

impl LookupCache {
    pub fn new(ttl: Duration) -> LookupCache {
        LookupCache {
            ttl,
            answers: Mutex::default(),
        }
    }

    /// `Store::domain_accepts(domain, local_part)`, answered from the cache when it can be.
    pub async fn domain_accepts(
        &self,
        store: &Store,
        domain: &str,
        local_part: &str,
    ) -> Result<Option<DomainCheck>, StoreError> {
        if self.ttl.is_zero() {
            return store.domain_accepts(domain, local_part).await;
        }
        let key = (domain.to_lowercase(), local_part.to_lowercase());
        if let Some(answer) = self.get(&key, Instant::now()) {
            return Ok(answer);
        }
        let answer = store.domain_accepts(domain, local_part).await?;
        self.put(key, answer, Instant::now());
        Ok(answer)
    }

    fn get(&self, key: &Key, now: Instant) -> Option<Option<DomainCheck>> {
        let answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        match answers.get(key) {
            Some((at, answer)) if now.saturating_duration_since(*at) < self.ttl => Some(*answer),
            _ => None,
        }
    }

    fn put(&self, key: Key, answer: Option<DomainCheck>, now: Instant) {
        let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        if answers.len() >= MAX_ENTRIES && !answers.contains_key(&key) {
            answers.retain(|_, (at, _)| now.saturating_duration_since(*at) < self.ttl);
            if answers.len() >= MAX_ENTRIES {
                answers.clear();
            }
        }
        answers.insert(key, (now, answer));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.answers.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(d: &str, l: &str) -> Key {
        (d.to_string(), l.to_string())
    }

    const TTL: Duration = Duration::from_secs(1);

    const HOSTED: Option<DomainCheck> = Some(DomainCheck {
        accepted: true,
        max_messages: None,
        max_bytes: Some(10),
    });

    #[test]
    fn an_answer_is_used_until_its_ttl_then_asked_again() {
        let c = LookupCache::new(TTL);
        let t0 = Instant::now();
        assert_eq!(c.get(&key("example.org", "info"), t0), None, "nothing cached yet");
        c.put(key("example.org", "info"), HOSTED, t0);
        assert_eq!(c.get(&key("example.org", "info"), t0 + TTL / 2), Some(HOSTED));
        assert_eq!(
            c.get(&key("example.org", "info"), t0 + TTL),
            None,
            "expired at TTL"
        );
        // Not hosted is an answer too, and other keys are not confused with it.
        c.put(key("other.example", "x"), None, t0);
        assert_eq!(c.get(&key("other.example", "x"), t0), Some(None));
        assert_eq!(c.get(&key("other.example", "y"), t0), None);
    }

    #[test]
    fn the_cache_never_grows_past_its_bound() {
        let c = LookupCache::new(TTL);
        let t0 = Instant::now();
        for i in 0..MAX_ENTRIES {
            c.put(key("example.org", &format!("u{i}")), HOSTED, t0);
        }
        assert_eq!(c.len(), MAX_ENTRIES);
        // Full of live answers: a new one clears them all rather than growing.
        c.put(key("example.org", "new"), HOSTED, t0);
        assert_eq!(c.len(), 1);
        // Full again, half of it expired: only the expired half goes.
        for i in 0..MAX_ENTRIES / 2 {
            c.put(key("old.example", &format!("u{i}")), HOSTED, t0);
        }
        let t1 = t0 + TTL;
        for i in 0..MAX_ENTRIES / 2 - 1 {
            c.put(key("new.example", &format!("u{i}")), HOSTED, t1);
        }
        assert_eq!(c.len(), MAX_ENTRIES);
        c.put(key("new.example", "last"), HOSTED, t1);
        assert_eq!(c.len(), MAX_ENTRIES / 2);
        assert_eq!(c.get(&key("new.example", "last"), t1), Some(HOSTED));
        assert_eq!(c.get(&key("old.example", "u0"), t1), None);
    }

    #[tokio::test]
    async fn the_store_is_asked_once_per_ttl_and_errors_are_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&odmr_store::StoreConfig::sqlite(dir.path()))
            .await
            .unwrap();
        store.account_add("acme", &[], &[]).await.unwrap();
        let c = LookupCache::new(TTL);
        assert_eq!(
            c.domain_accepts(&store, "Example.ORG", "Info").await.unwrap(),
            None
        );
        store.domain_add("acme", "example.org").await.unwrap();
        // Within the TTL the cached "not hosted" stands; the store's new answer comes after it.
        assert_eq!(
            c.domain_accepts(&store, "example.org", "info").await.unwrap(),
            None
        );
        let t = Instant::now() - TTL;
        c.answers.lock().unwrap().values_mut().for_each(|(at, _)| *at = t);
        let check = c.domain_accepts(&store, "example.org", "info").await.unwrap();
        assert!(check.is_some_and(|c| c.accepted), "{check:?}");
        // Zero turns the cache off: every lookup asks the store.
        let off = LookupCache::new(Duration::ZERO);
        assert!(off
            .domain_accepts(&store, "example.org", "x")
            .await
            .unwrap()
            .is_some());
        store.domain_remove("example.org").await.unwrap();
        assert_eq!(
            off.domain_accepts(&store, "example.org", "x").await.unwrap(),
            None
        );
        assert_eq!(off.len(), 0);
        // A failing store: the error reaches the caller and nothing new is cached.
        store.close().await;
        let before = c.len();
        assert!(c.domain_accepts(&store, "fresh.example", "x").await.is_err());
        assert_eq!(c.len(), before);
    }
}
