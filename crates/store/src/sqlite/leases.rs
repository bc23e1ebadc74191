//! Per-domain leases in the SQLite backend: the only lock, and the fencing token every write
//! under a lease is checked against.

use std::time::Duration;

use sqlx::{Row, Sqlite, Transaction};

use super::SqliteStore;
use crate::contract::Leases;
use crate::{domain_set, duration_millis, new_token, now_millis, Lease, LeaseRow, StoreError};

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

    async fn lease_renew(&self, lease: &Lease, ttl: Duration) -> Result<(), StoreError> {
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

    async fn lease_release(&self, lease: &Lease) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM lease WHERE token = ?")
            .bind(&lease.token)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn lease_list(&self) -> Result<Vec<LeaseRow>, StoreError> {
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

    async fn lease_break(&self, domain: &str) -> Result<bool, StoreError> {
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
