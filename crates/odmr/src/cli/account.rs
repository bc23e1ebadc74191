//! `odmr account …` and `odmr domain …`.
//!
//! Passwords are read from standard input only (never from the command line, where `ps` and
//! shell history would show them): typed at a prompt without echo when it is a terminal, else
//! one line of it. They are stored only as derived secrets (see [`credentials`]).

use super::open_store;
use crate::config::Config;
use anyhow::{bail, Context};
use clap::Subcommand;
use odmr_proto::domain::Domain;
use odmr_proto::sasl::cram_md5::{self, CramSecret};
use odmr_proto::sasl::scram::{self, ScramVerifier};
use odmr_store::Credential;
use std::io::{BufRead, IsTerminal};

#[derive(Subcommand)]
pub enum AccountCmd {
    /// Create an account owning one or more domains.
    Add {
        /// The account's name: what the customer logs in as (AUTH).
        name: String,
        /// A domain the account may release with ATRN (repeatable).
        #[arg(long = "domain", value_name = "DOMAIN", required = true)]
        domains: Vec<String>,
        /// Read the password from standard input: one line when it is piped in; typed at a
        /// prompt without echo, twice, when it is a terminal.
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// List accounts and their domains.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Remove an account and free its domains (held mail stays queued).
    Remove {
        /// The account, as `odmr account list` shows it.
        name: String,
    },
    /// Change an account's password.
    Passwd {
        /// The account, as `odmr account list` shows it.
        name: String,
        /// Read the password from standard input: one line when it is piped in; typed at a
        /// prompt without echo, twice, when it is a terminal.
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// Set an account's ETRN (RFC 1985) settings: where its mail goes when it asks with ETRN,
    /// and from which networks it may ask without AUTH. Options not given keep their value.
    Set {
        /// The account, as `odmr account list` shows it.
        name: String,
        /// HOST:PORT of the customer's mail server ("[v6]:port" for IPv6), or "none" to stop
        /// ETRN for this account.
        #[arg(long, value_name = "HOST:PORT|none")]
        etrn_destination: Option<String>,
        /// A network (CIDR, or a single address) from which ETRN is allowed without AUTH
        /// (repeatable; replaces the list). "none" clears the list.
        #[arg(long, value_name = "CIDR|none")]
        etrn_from: Vec<String>,
    },
    /// Let a TLS client certificate log in as this account (SASL EXTERNAL). Replaces any
    /// certificate set before. The server needs `[tls] client_ca` to ask for certificates.
    Cert {
        /// The account the certificate logs in as.
        name: String,
        /// The customer's certificate (PEM; the first certificate in the file is used).
        file: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
pub enum DomainCmd {
    /// Give a domain to an account.
    Add {
        /// The account, as `odmr account list` shows it.
        account: String,
        /// The domain whose mail the account may release (one that no account has yet).
        domain: String,
    },
    /// Stop hosting a domain.
    Remove {
        /// The domain, as `odmr account list` shows it; its held mail stays queued.
        domain: String,
    },
}

/// Reads the password for `--password-stdin`. `command` is how the operator would run the same
/// command with the password piped in, named in the error for an empty password.
fn read_password(name: &str, command: &str) -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        return prompt_password(name);
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    let pw = line.trim_end_matches(['\r', '\n']).to_string();
    if pw.is_empty() {
        bail!("empty password on standard input; pipe it in, e.g. `echo \"$PW\" | {command}`");
    }
    Ok(pw)
}

/// Asks for the password on the terminal, as `passwd` does: without echo, and twice, so that a
/// typing slip nobody could see does not become the password.
fn prompt_password(name: &str) -> anyhow::Result<String> {
    let first = ask(&format!("Password for {name}: "))?;
    if first.is_empty() {
        bail!("empty password; nothing was changed");
    }
    if ask("Retype password: ")? != first {
        bail!("the passwords do not match; nothing was changed");
    }
    Ok(first)
}

/// One prompt: on stderr, so that stdout keeps only the result; the answer is read from the
/// terminal (`/dev/tty`) with echo off, and rpassword restores the terminal's mode afterwards,
/// also on Ctrl-C.
fn ask(prompt: &str) -> anyhow::Result<String> {
    let config = rpassword::ConfigBuilder::new()
        .output_writer(std::io::stderr())
        .build();
    rpassword::prompt_password_with_config(prompt, config).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => anyhow::anyhow!("no password typed; nothing was changed"),
        _ => anyhow::Error::new(e).context("cannot read the password from the terminal"),
    })
}

/// What we keep of a password: CRAM-MD5's HMAC inner/outer state (CRAM-MD5 needs a
/// password-equivalent, RFC 2195) and a salted SCRAM-SHA-256 verifier (used for SCRAM, and to
/// check PLAIN/LOGIN passwords under TLS). Never the password itself.
fn credentials(password: &str) -> anyhow::Result<Vec<Credential>> {
    let salt: [u8; 16] = rand::random();
    let scram = ScramVerifier::from_password(password, &salt, scram::DEFAULT_ITERATIONS)
        .map_err(|e| anyhow::anyhow!("this password cannot be used ({e}); choose another"))?;
    Ok(vec![
        Credential {
            scheme: cram_md5::SCHEME.to_string(),
            data: CramSecret::from_password(password.as_bytes()).to_bytes(),
        },
        Credential {
            scheme: scram::SCHEME.to_string(),
            data: scram.to_bytes(),
        },
    ])
}

pub async fn account(cfg: &Config, cmd: AccountCmd) -> anyhow::Result<()> {
    let store = open_store(cfg).await?;
    match cmd {
        AccountCmd::Add { name, domains, .. } => {
            let flags: String = domains.iter().map(|d| format!(" --domain {d}")).collect();
            let pw = read_password(&name, &format!("odmr account add {name}{flags} --password-stdin"))?;
            let domains: Vec<String> = domains
                .iter()
                .map(|d| Domain::parse(d).map(Domain::into_string))
                .collect::<Result<_, _>>()?;
            store.account_add(&name, &credentials(&pw)?, &domains).await?;
            println!("account {name} added with domains {}", domains.join(", "));
        }
        AccountCmd::List { json } => {
            let list = store.account_list().await?;
            if json {
                let v: Vec<_> = list
                    .iter()
                    .map(|a| {
                        serde_json::json!({
                            "name": a.name,
                            "domains": a.domains,
                            "created_at": a.created_at,
                            "etrn_destination": a.etrn_destination,
                            "etrn_from": a.etrn_from,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if list.is_empty() {
                println!("no accounts");
            } else {
                let w = list.iter().map(|a| a.name.len()).max().unwrap_or(0).max(7);
                let dw = list
                    .iter()
                    .map(|a| a.domains.join(", ").len())
                    .max()
                    .unwrap_or(0)
                    .max(7);
                println!("{:w$}  {:dw$}  ETRN", "ACCOUNT", "DOMAINS");
                for a in list {
                    let etrn = match (&a.etrn_destination, a.etrn_from.is_empty()) {
                        (None, true) => "-".to_string(),
                        (d, true) => d.clone().unwrap_or_default(),
                        (d, false) => format!(
                            "{} (without AUTH from {})",
                            d.as_deref().unwrap_or("no destination"),
                            a.etrn_from.join(", ")
                        ),
                    };
                    println!("{:w$}  {:dw$}  {etrn}", a.name, a.domains.join(", "));
                }
            }
        }
        AccountCmd::Set {
            name,
            etrn_destination,
            etrn_from,
        } => {
            if etrn_destination.is_none() && etrn_from.is_empty() {
                bail!("nothing to set: give --etrn-destination HOST:PORT and/or --etrn-from CIDR");
            }
            let Some(current) = store.account_get(&name).await? else {
                bail!("no account named {name}; see `odmr account list`");
            };
            let destination = match etrn_destination.as_deref() {
                None => current.etrn_destination,
                Some("none") => None,
                Some(d) => Some(destination(d)?),
            };
            let from = match etrn_from.as_slice() {
                [] => current.etrn_from,
                [none] if none == "none" => Vec::new(),
                list => list.iter().map(|n| network(n)).collect::<anyhow::Result<_>>()?,
            };
            store
                .account_set_etrn(&name, destination.as_deref(), &from)
                .await?;
            match &destination {
                Some(d) => println!("ETRN for {name} delivers to {d}"),
                None => println!("ETRN for {name} has no destination (ETRN gets 458)"),
            }
            if from.is_empty() {
                println!("ETRN for {name} needs AUTH as {name}");
            } else {
                println!("ETRN for {name} is allowed without AUTH from {}", from.join(", "));
            }
        }
        AccountCmd::Remove { name } => {
            store.account_remove(&name).await?;
            println!("account {name} removed");
        }
        AccountCmd::Passwd { name, .. } => {
            let pw = read_password(&name, &format!("odmr account passwd {name} --password-stdin"))?;
            // Replace the password's credentials one by one, keeping a certificate mapping.
            for c in credentials(&pw)? {
                store.account_put_credential(&name, &c).await?;
            }
            println!("password of {name} changed");
        }
        AccountCmd::Cert { name, file } => {
            use rustls_pki_types::pem::PemObject;
            use sha2::Digest;
            let cert = rustls_pki_types::CertificateDer::from_pem_file(&file).map_err(|e| {
                anyhow::anyhow!(
                    "{}: {e}; give the customer's certificate as a PEM file",
                    file.display()
                )
            })?;
            let fp: [u8; 32] = sha2::Sha256::digest(cert.as_ref()).into();
            let c = Credential {
                scheme: crate::server::CERT_SCHEME.to_string(),
                data: fp.to_vec(),
            };
            store.account_put_credential(&name, &c).await?;
            let hex: String = fp.iter().map(|b| format!("{b:02x}")).collect();
            println!("client certificate sha256:{hex} now logs in as {name}");
        }
    }
    store.close().await;
    Ok(())
}

/// A `HOST:PORT` an outbound connection can be made to: a host name, an IPv4 address, or an
/// IPv6 address in brackets, and a port from 1 to 65535.
fn destination(d: &str) -> anyhow::Result<String> {
    let fix = "write HOST:PORT, e.g. mail.example.org:25, 192.0.2.10:2525 or [2001:db8::10]:25 (or none)";
    let Some((host, port)) = d.rsplit_once(':') else {
        bail!("--etrn-destination {d:?}: no port; {fix}");
    };
    if !port.parse::<u16>().is_ok_and(|p| p > 0) {
        bail!("--etrn-destination {d:?}: {port:?} is not a port (1-65535); {fix}");
    }
    let ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
    };
    if !ok {
        bail!("--etrn-destination {d:?}: {host:?} is not a host name or IP address; {fix}");
    }
    Ok(d.to_ascii_lowercase())
}

/// A network in CIDR notation; a single address becomes a /32 (or /128).
fn network(n: &str) -> anyhow::Result<String> {
    if let Ok(net) = n.parse::<ipnet::IpNet>() {
        return Ok(net.to_string());
    }
    if let Ok(ip) = n.parse::<std::net::IpAddr>() {
        return Ok(ipnet::IpNet::from(ip).to_string());
    }
    bail!("--etrn-from {n:?}: not a network; write CIDR such as 192.0.2.0/24 or 2001:db8::/48, a single address, or none")
}

pub async fn domain(cfg: &Config, cmd: DomainCmd) -> anyhow::Result<()> {
    let store = open_store(cfg).await?;
    match cmd {
        DomainCmd::Add { account, domain } => {
            let domain = Domain::parse(&domain)?;
            store.domain_add(&account, domain.as_str()).await?;
            println!("domain {domain} added to {account}");
        }
        DomainCmd::Remove { domain } => {
            store.domain_remove(&domain).await?;
            println!("domain {domain} removed");
        }
    }
    store.close().await;
    Ok(())
}
