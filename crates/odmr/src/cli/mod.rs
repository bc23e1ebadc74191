//! Operators' commands. They open the same store as the running server; the server reads
//! accounts and domains on every lookup, so changes apply without a restart.

pub mod account;
pub mod domain;
pub mod lease;
mod out;
pub mod queue;
pub mod tls;

use crate::config::Config;
use odmr_store::Store;

pub async fn open_store(cfg: &Config) -> anyhow::Result<Store> {
    Ok(Store::open(&cfg.store).await.map_err(|e| cfg.store_error(e))?)
}
