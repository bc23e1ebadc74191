//! Per-domain leases in the SQLite backend: the only lock, and the fencing token every write
//! under a lease is checked against.
//!
//! Lease times are the database's: every statement that sets or compares an expiry reads "now"
//! from SQLite itself ([`db_now_ms!`]), and the application only supplies durations (the time to
//! live). `expires_at` and `lease_broken.broken_at` hold unix milliseconds of that clock (the
//! schema is unchanged: before, the application wrote the same unit from its own clock). The
//! store's [`ClockOffset`](crate::ClockOffset), zero outside tests, is bound into each of those
//! statements and added to SQLite's now, so that the conformance suite moves lease time forward
//! instead of sleeping.

use std::time::Duration;

use sqlx::{Row, Sqlite, Transaction};

use super::SqliteStore;
use crate::contract::Leases;
use crate::{domain_set, duration_millis, new_token, Lease, LeaseRow, StoreError};

/// SQL for the database's clock in unix milliseconds plus the store's clock offset, bound as
/// parameter `?N`: `db_now_ms!(N)`, for `concat!`. SQLite reads its clock once per step of a
/// statement, so every use in one statement sees the same instant.
macro_rules! db_now_ms {
    ($offset:literal) => {
        concat!(
            "(CAST(round(unixepoch('subsec') * 1000) AS INTEGER) + ?",
            $offset,
            ")"
        )
    };
}
pub(super) use db_now_ms;

/// Takes a free domain or an expired lease; returns no row if the domain is leased.
/// ?1 domain, ?2 token, ?3 holder, ?4 time to live (ms), ?5 clock offset (ms).
const ACQUIRE: &str = concat!(
    "INSERT INTO lease (domain, token, holder, expires_at) VALUES (?1, ?2, ?3, ",
    db_now_ms!(5),
    " + ?4)
     ON CONFLICT (domain) DO UPDATE
        SET token = excluded.token, holder = excluded.holder, expires_at = excluded.expires_at
        WHERE lease.expires_at <= ",
    db_now_ms!(5),
    "
     RETURNING domain"
);

/// ?1 time to live (ms), ?2 token, ?3 clock offset (ms).
const RENEW: &str = concat!(
    "UPDATE lease SET expires_at = ",
    db_now_ms!(3),
    " + ?1 WHERE token = ?2"
);

/// ?1 clock offset (ms).
const LIST: &str = concat!(
    "SELECT domain, token, holder, expires_at, expires_at - ",
    db_now_ms!(1),
    " AS expires_in FROM lease WHERE expires_at > ",
    db_now_ms!(1),
    " ORDER BY domain"
);

/// ?1 token, ?2 clock offset (ms).
const NOTE_BROKEN: &str = concat!(
    "INSERT INTO lease_broken (token, broken_at) VALUES (?1, ",
    db_now_ms!(2),
    ") ON CONFLICT (token) DO NOTHING"
);

/// ?1 how long a broken lease is remembered (ms), ?2 clock offset (ms).
const FORGET_BROKEN: &str = concat!(
    "DELETE FROM lease_broken WHERE broken_at < ",
    db_now_ms!(2),
    " - ?1"
);

/// Why a lease no longer holds all its domains: [`StoreError::LeaseBroken`] if the operator
/// broke it, [`StoreError::LeaseLost`] otherwise (it expired and was taken over, or released).
pub(super) async fn lease_lost(
    tx: &mut Transaction<'static, Sqlite>,
    lease: &Lease,
) -> Result<StoreError, StoreError> {
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

impl Leases for SqliteStore {
    async fn lease_acquire(
        &self,
        domains: &[String],
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let domains = domain_set(domains);
        let token = new_token();
        let mut tx = self.begin().await?;
        for domain in &domains {
            let taken: Option<String> = sqlx::query_scalar(ACQUIRE)
                .bind(domain)
                .bind(&token)
                .bind(holder)
                .bind(duration_millis(ttl))
                .bind(self.clock.millis())
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

    async fn lease_renew(&self, lease: &Lease, ttl: Duration) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let renewed = sqlx::query(RENEW)
            .bind(duration_millis(ttl))
            .bind(&lease.token)
            .bind(self.clock.millis())
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

    async fn lease_release(&self, lease: &Lease) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM lease WHERE token = ?")
            .bind(&lease.token)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn lease_list(&self) -> Result<Vec<LeaseRow>, StoreError> {
        let rows = sqlx::query(LIST)
            .bind(self.clock.millis())
            .fetch_all(&self.read)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(LeaseRow {
                    domain: r.try_get("domain")?,
                    token: r.try_get("token")?,
                    holder: r.try_get("holder")?,
                    expires_at: r.try_get("expires_at")?,
                    expires_in_ms: r.try_get("expires_in")?,
                })
            })
            .collect()
    }

    async fn lease_break(&self, domain: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let token: Option<String> = sqlx::query_scalar("DELETE FROM lease WHERE domain = ? RETURNING token")
            .bind(domain.to_lowercase())
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(token) = &token {
            // Noted for the holder's next write (see the lease_broken table), which must not
            // wait for the broken lease to expire.
            sqlx::query(NOTE_BROKEN)
                .bind(token)
                .bind(self.clock.millis())
                .execute(&mut *tx)
                .await?;
            sqlx::query(FORGET_BROKEN)
                .bind(BROKEN_KEPT_MS)
                .bind(self.clock.millis())
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
