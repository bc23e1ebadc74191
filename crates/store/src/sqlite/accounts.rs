//! Accounts, their credentials and domains, ETRN settings and domain policy in the SQLite
//! backend.

use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, Transaction};

use super::size_of;
use super::SqliteStore;
use crate::contract::Accounts;
use crate::{
    account_domains, check_account_name, normalize_domain, now_secs, Account, Credential, DomainCheck,
    DomainInfo, DomainPolicy, DomainUsage, StoreError,
};

impl Accounts for SqliteStore {
    async fn account_add(
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

    async fn account_remove(&self, name: &str) -> Result<(), StoreError> {
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

    async fn account_set_credentials(
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

    async fn account_credential(&self, name: &str, scheme: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT data FROM credential WHERE account = ? AND scheme = ?")
                .bind(name)
                .bind(scheme)
                .fetch_optional(&self.read)
                .await?,
        )
    }

    async fn account_by_credential(&self, scheme: &str, data: &[u8]) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT account FROM credential WHERE scheme = ? AND data = ? ORDER BY account LIMIT 1",
        )
        .bind(scheme)
        .bind(data)
        .fetch_optional(&self.read)
        .await?)
    }

    async fn account_put_credential(&self, name: &str, credential: &Credential) -> Result<(), StoreError> {
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

    async fn account_get(&self, name: &str) -> Result<Option<Account>, StoreError> {
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

    async fn account_list(&self) -> Result<Vec<Account>, StoreError> {
        let rows = sqlx::query(
            "SELECT a.name, a.created_at, a.etrn_destination, a.etrn_from, d.name AS domain
             FROM account a LEFT JOIN domain d ON d.account = a.name
             ORDER BY a.name, d.name",
        )
        .fetch_all(&self.read)
        .await?;
        accounts_of(&rows)
    }

    async fn domain_add(&self, account: &str, domain: &str) -> Result<(), StoreError> {
        let domain = normalize_domain(domain)?;
        let mut tx = self.begin().await?;
        require_account(&mut tx, account).await?;
        insert_domain(&mut tx, account, &domain).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn domain_remove(&self, domain: &str) -> Result<(), StoreError> {
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

    async fn domain_owner(&self, domain: &str) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT account FROM domain WHERE name = ?")
            .bind(domain.to_lowercase())
            .fetch_optional(&self.read)
            .await?)
    }

    async fn account_set_etrn(
        &self,
        name: &str,
        destination: Option<&str>,
        from: &[String],
    ) -> Result<(), StoreError> {
        let changed = sqlx::query("UPDATE account SET etrn_destination = ?, etrn_from = ? WHERE name = ?")
            .bind(destination)
            .bind(from.join(" "))
            .bind(name)
            .execute(&self.write)
            .await?
            .rows_affected();
        if changed == 0 {
            return Err(StoreError::AccountNotFound(name.to_string()));
        }
        Ok(())
    }

    async fn domain_get(&self, domain: &str) -> Result<Option<DomainInfo>, StoreError> {
        let domain = domain.to_lowercase();
        let Some(row) = sqlx::query(
            "SELECT name, account, max_messages, max_bytes, max_age, catch_all FROM domain WHERE name = ?",
        )
        .bind(&domain)
        .fetch_optional(&self.read)
        .await?
        else {
            return Ok(None);
        };
        let catch_all: bool = row.try_get("catch_all")?;
        let local_parts = if catch_all {
            None
        } else {
            Some(
                sqlx::query_scalar("SELECT name FROM local_part WHERE domain = ? ORDER BY name")
                    .bind(&domain)
                    .fetch_all(&self.read)
                    .await?,
            )
        };
        let num = |k: &str| -> Result<Option<u64>, StoreError> {
            Ok(row.try_get::<Option<i64>, _>(k)?.map(size_of))
        };
        Ok(Some(DomainInfo {
            name: row.try_get("name")?,
            account: row.try_get("account")?,
            policy: DomainPolicy {
                max_messages: num("max_messages")?,
                max_bytes: num("max_bytes")?,
                max_age: num("max_age")?,
                local_parts,
            },
        }))
    }

    async fn domain_set_policy(&self, domain: &str, policy: &DomainPolicy) -> Result<(), StoreError> {
        let domain = domain.to_lowercase();
        let mut tx = self.begin().await?;
        let changed = sqlx::query(
            "UPDATE domain SET max_messages = ?, max_bytes = ?, max_age = ?, catch_all = ? WHERE name = ?",
        )
        .bind(opt_i64(policy.max_messages))
        .bind(opt_i64(policy.max_bytes))
        .bind(opt_i64(policy.max_age))
        .bind(policy.local_parts.is_none())
        .bind(&domain)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            return Err(StoreError::DomainNotFound(domain));
        }
        sqlx::query("DELETE FROM local_part WHERE domain = ?")
            .bind(&domain)
            .execute(&mut *tx)
            .await?;
        for name in policy.local_parts.iter().flatten() {
            sqlx::query("INSERT INTO local_part (domain, name) VALUES (?, ?) ON CONFLICT DO NOTHING")
                .bind(&domain)
                .bind(name.to_lowercase())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn domain_accepts(
        &self,
        domain: &str,
        local_part: &str,
    ) -> Result<Option<DomainCheck>, StoreError> {
        let row: Option<(bool, bool, Option<i64>, Option<i64>)> = sqlx::query_as(
            "SELECT d.catch_all,
                    EXISTS (SELECT 1 FROM local_part l WHERE l.domain = d.name AND l.name = ?),
                    d.max_messages, d.max_bytes
             FROM domain d WHERE d.name = ?",
        )
        .bind(local_part.to_lowercase())
        .bind(domain.to_lowercase())
        .fetch_optional(&self.read)
        .await?;
        Ok(
            row.map(|(catch_all, listed, max_messages, max_bytes)| DomainCheck {
                accepted: catch_all || listed,
                max_messages: max_messages.map(size_of),
                max_bytes: max_bytes.map(size_of),
            }),
        )
    }

    async fn domain_usage(&self, domain: &str) -> Result<DomainUsage, StoreError> {
        let (messages, bytes): (i64, i64) = sqlx::query_as(
            "SELECT count(*), coalesce(sum(m.size), 0)
             FROM (SELECT DISTINCT message FROM recipient
                   WHERE domain = ? AND state IN ('queued', 'held', 'failed')) AS sel
             CROSS JOIN message m
             WHERE m.id = sel.message",
        )
        .bind(domain.to_lowercase())
        .fetch_one(&self.read)
        .await?;
        Ok(DomainUsage {
            messages: size_of(messages),
            bytes: size_of(bytes),
        })
    }
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

fn opt_i64(v: Option<u64>) -> Option<i64> {
    v.map(|n| i64::try_from(n).unwrap_or(i64::MAX))
}
