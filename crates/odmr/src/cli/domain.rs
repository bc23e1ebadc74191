//! `odmr domain set/show`: per-domain quotas, hold time and accepted recipients (`domain add`
//! and `domain remove` live with the accounts, in `account.rs`).
//!
//! `set` changes only what its flags name: it reads the policy, applies the flags and writes it
//! back whole. Values are checked before anything is written, and every error names the flag
//! and the fix. Sizes and durations are parsed as in the config file, so an operator writes
//! them the same way everywhere.

use super::open_store;
use super::out;
use crate::config::{self, Config};
use anyhow::bail;
use clap::{Args, Subcommand};
use odmr_proto::domain::Domain;
use odmr_store::{DomainInfo, DomainUsage, Store};
use serde_json::json;

#[derive(Subcommand)]
pub enum DomainCmd {
    #[command(flatten)]
    Owner(super::account::DomainCmd),
    /// Set a domain's quotas, hold time and accepted recipients (works while the server runs).
    Set(SetArgs),
    /// Show a domain's owner, policy and what it holds now.
    Show {
        /// The domain, as `odmr account list` shows it.
        domain: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
#[command(after_help = "Only the settings named by flags change. Examples:\n  \
    odmr domain set example.org --max-messages 10000 --max-bytes 1G\n  \
    odmr domain set example.org --max-age 14d\n  \
    odmr domain set example.org --recipients alice,bob   (postmaster is always accepted)\n  \
    odmr domain set example.org --add-recipient carol --remove-recipient bob\n  \
    odmr domain set example.org --catch-all --max-bytes none")]
pub struct SetArgs {
    /// The domain, as `odmr account list` shows it.
    domain: String,
    /// Most messages held for the domain at once; new mail beyond it gets 452 4.2.2. `none`:
    /// no limit.
    #[arg(long, value_name = "N|none", value_parser = parse_count)]
    max_messages: Option<Setting>,
    /// Most octets held for the domain at once (the sum of message sizes); new mail beyond it
    /// gets 452 4.2.2. SIZE in binary multiples: 500k, 10M, 1G (1k = 1024 octets). `none`: no
    /// limit.
    #[arg(long, value_name = "SIZE|none", value_parser = parse_bytes)]
    max_bytes: Option<Setting>,
    /// How long mail is held before it is returned to its sender: 7d, 36h, 90m, 30s.
    /// `default`: the server's setting.
    #[arg(long, value_name = "DURATION|default", value_parser = parse_age)]
    max_age: Option<Setting>,
    /// Accept only these local parts (comma separated, case-insensitive); mail to any other gets
    /// 550 5.1.1 at RCPT. Replaces the list.
    #[arg(
        long,
        value_name = "LOCAL,…",
        value_delimiter = ',',
        conflicts_with = "catch_all"
    )]
    recipients: Option<Vec<String>>,
    /// Accept every local part (the default for a new domain).
    #[arg(long, conflicts_with_all = ["add_recipient", "remove_recipient"])]
    catch_all: bool,
    /// Add local parts to the list (repeatable or comma separated).
    #[arg(long, value_name = "LOCAL", value_delimiter = ',')]
    add_recipient: Vec<String>,
    /// Remove local parts from the list (repeatable or comma separated).
    #[arg(long, value_name = "LOCAL", value_delimiter = ',')]
    remove_recipient: Vec<String>,
}

/// A value given to `--max-*`: a number, or `None` for "no limit" / "the server's default".
#[derive(Clone, Copy, Debug)]
struct Setting(Option<u64>);

fn parse_count(s: &str) -> Result<Setting, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(Setting(None));
    }
    match s.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(Setting(Some(n))),
        _ => Err("write a whole number of messages, at least 1, or `none` for no limit".into()),
    }
}

fn parse_bytes(s: &str) -> Result<Setting, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(Setting(None));
    }
    match config::parse_size(s) {
        Some(n) if n > 0 => Ok(Setting(Some(n))),
        _ => Err(
            "write a size such as 500k, 10M or 1G (binary multiples: 1k = 1024 octets), or `none` \
             for no limit"
                .into(),
        ),
    }
}

fn parse_age(s: &str) -> Result<Setting, String> {
    if s.eq_ignore_ascii_case("default") {
        return Ok(Setting(None));
    }
    match humantime::parse_duration(s.trim()) {
        Ok(d) if d.as_secs() > 0 => Ok(Setting(Some(d.as_secs()))),
        _ => {
            Err("write a duration such as 7d, 36h, 90m or 30s, or `default` for the server's setting".into())
        }
    }
}

/// Local parts given to `flag`, lower-cased. An address in the domain is taken for its local
/// part; anything else with an `@`, blanks or control characters is refused.
fn local_parts(flag: &str, given: &[String], domain: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::with_capacity(given.len());
    for raw in given {
        let s = raw.trim();
        let local = match s.rsplit_once('@') {
            Some((local, d)) if d.eq_ignore_ascii_case(domain) => local,
            Some(_) => bail!(
                "{flag}: {s:?} is not an address in {domain}; give local parts such as `bob` (or \
                 addresses in {domain})"
            ),
            None => s,
        };
        if local.is_empty() {
            bail!("{flag}: an empty local part; give names separated by commas, e.g. alice,bob");
        }
        if local.len() > 64 {
            bail!(
                "{flag}: {local:?} is longer than the 64 octets a local part may have (RFC 5321 §4.5.3.1.1)"
            );
        }
        if local
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '@')
        {
            bail!("{flag}: {local:?} is not a local part (no blanks, control characters or @)");
        }
        out.push(local.to_lowercase());
    }
    Ok(out)
}

fn not_hosted(domain: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "domain {domain} is not hosted here; give it to an account first: `odmr domain add ACCOUNT {domain}`"
    )
}

pub async fn domain(cfg: &Config, cmd: DomainCmd) -> anyhow::Result<()> {
    if let DomainCmd::Owner(c) = cmd {
        return super::account::domain(cfg, c).await;
    }
    let store = open_store(cfg).await?;
    let result = match cmd {
        DomainCmd::Set(a) => set(&store, a).await,
        DomainCmd::Show { domain, json } => show(&store, &domain_arg(&domain), json).await,
        DomainCmd::Owner(_) => Ok(()),
    };
    store.close().await;
    result
}

/// A domain as given on the command line, in the store's spelling; a name that is no domain is
/// kept as typed (it just matches nothing, and the store refuses it where it must be one).
fn domain_arg(d: &str) -> String {
    Domain::parse(d).map_or_else(|_| d.trim().to_string(), Domain::into_string)
}

async fn set(store: &Store, a: SetArgs) -> anyhow::Result<()> {
    let domain = domain_arg(&a.domain);
    if a.max_messages.is_none()
        && a.max_bytes.is_none()
        && a.max_age.is_none()
        && a.recipients.is_none()
        && !a.catch_all
        && a.add_recipient.is_empty()
        && a.remove_recipient.is_empty()
    {
        bail!(
            "nothing to change for {domain}: give --max-messages, --max-bytes, --max-age, \
             --recipients, --catch-all, --add-recipient or --remove-recipient (see `odmr domain \
             set --help`)"
        );
    }
    let info = store
        .domain_get(&domain)
        .await?
        .ok_or_else(|| not_hosted(&domain))?;
    let mut p = info.policy;
    if let Some(Setting(v)) = a.max_messages {
        p.max_messages = v;
    }
    if let Some(Setting(v)) = a.max_bytes {
        p.max_bytes = v;
    }
    if let Some(Setting(v)) = a.max_age {
        p.max_age = v;
    }
    if a.catch_all {
        p.local_parts = None;
    }
    if let Some(list) = &a.recipients {
        let list = local_parts("--recipients", list, &domain)?;
        if list.is_empty() {
            bail!("--recipients: give at least one local part, or --catch-all to accept every one");
        }
        p.local_parts = Some(list);
    }
    if !a.add_recipient.is_empty() {
        let add = local_parts("--add-recipient", &a.add_recipient, &domain)?;
        match &mut p.local_parts {
            Some(list) => list.extend(add),
            None => bail!(
                "--add-recipient: {domain} accepts every local part (catch-all); to accept only \
                 some, give the whole list with --recipients alice,bob"
            ),
        }
    }
    if !a.remove_recipient.is_empty() {
        let remove = local_parts("--remove-recipient", &a.remove_recipient, &domain)?;
        let Some(list) = &mut p.local_parts else {
            bail!(
                "--remove-recipient: {domain} accepts every local part (catch-all), so there is \
                 no list to remove from; set one with --recipients alice,bob"
            );
        };
        for x in &remove {
            if !list.contains(x) {
                bail!(
                    "--remove-recipient: {x} is not in the list of {domain}; nothing was changed \
                     (see `odmr domain show {domain}`)"
                );
            }
            list.retain(|y| y != x);
        }
        if list.is_empty() {
            bail!(
                "--remove-recipient: that would leave {domain} accepting nobody; keep at least one \
                 local part, or use --catch-all to accept every one"
            );
        }
    }
    if let Some(list) = &mut p.local_parts {
        list.sort();
        list.dedup();
    }
    store.domain_set_policy(&domain, &p).await?;
    tracing::debug!(%domain, "operator changed a domain's policy");
    println!("domain {domain} updated");
    show(store, &domain, false).await
}

async fn show(store: &Store, domain: &str, json: bool) -> anyhow::Result<()> {
    let info = store
        .domain_get(domain)
        .await?
        .ok_or_else(|| not_hosted(domain))?;
    let usage = store.domain_usage(domain).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&domain_json(&info, usage))?);
        return Ok(());
    }
    let p = &info.policy;
    let limit = |v: Option<u64>, f: &dyn Fn(u64) -> String| match v {
        Some(n) => format!("limit {}", f(n)),
        None => "no limit".to_string(),
    };
    println!("domain      {} (account {})", info.name, info.account);
    println!(
        "messages    {} in the queue, {}",
        usage.messages,
        limit(p.max_messages, &|n| n.to_string())
    );
    println!(
        "size        {} in the queue, {}",
        out::size_long(usage.bytes),
        limit(p.max_bytes, &out::size_long)
    );
    println!(
        "max age     {}",
        p.max_age
            .map(out::duration)
            .unwrap_or_else(|| "the server's default".into())
    );
    match &p.local_parts {
        None => println!("recipients  catch-all: every local part is accepted"),
        Some(list) => println!(
            "recipients  only {} local part{}: {}",
            list.len(),
            if list.len() == 1 { "" } else { "s" },
            list.join(", ")
        ),
    }
    Ok(())
}

fn domain_json(info: &DomainInfo, usage: DomainUsage) -> serde_json::Value {
    let p = &info.policy;
    json!({
        "domain": info.name,
        "account": info.account,
        "max_messages": p.max_messages,
        "max_bytes": p.max_bytes,
        "max_age_seconds": p.max_age,
        "catch_all": p.local_parts.is_none(),
        "local_parts": p.local_parts,
        "usage": { "messages": usage.messages, "bytes": usage.bytes },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_as_documented() {
        assert_eq!(parse_count("100").unwrap().0, Some(100));
        assert_eq!(parse_count("none").unwrap().0, None);
        assert!(parse_count("0").is_err() && parse_count("-1").is_err());
        assert_eq!(parse_bytes("10M").unwrap().0, Some(10 << 20));
        assert_eq!(parse_bytes("1G").unwrap().0, Some(1 << 30));
        assert_eq!(parse_bytes("500k").unwrap().0, Some(500 << 10));
        assert_eq!(parse_bytes("NONE").unwrap().0, None);
        assert!(parse_bytes("lots").is_err());
        assert_eq!(parse_age("7d").unwrap().0, Some(7 * 86400));
        assert_eq!(parse_age("36h").unwrap().0, Some(36 * 3600));
        assert_eq!(parse_age("90m").unwrap().0, Some(5400));
        assert_eq!(parse_age("30s").unwrap().0, Some(30));
        assert_eq!(parse_age("default").unwrap().0, None);
        assert!(parse_age("soon").is_err() && parse_age("0s").is_err());
    }

    #[test]
    fn local_parts_are_checked() {
        let l = |v: &[&str]| {
            local_parts(
                "--recipients",
                &v.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                "example.org",
            )
        };
        assert_eq!(l(&["Bob", "alice@Example.ORG"]).unwrap(), ["bob", "alice"]);
        for bad in ["bob@other.org", "", "a b", &"x".repeat(65)] {
            let e = l(&[bad]).unwrap_err().to_string();
            assert!(e.starts_with("--recipients"), "{e}");
        }
    }
}
