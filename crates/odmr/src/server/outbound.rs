//! Deliveries over connections the provider opens itself: an ETRN queue run to the account's
//! destination ([`super::etrn`]) and the notices to the relay ([`super::bounce`]). Both connect,
//! run the same delivering client as after an ATRN turnaround ([`super::deliver`]) under the
//! caller's lease, and ask for TLS as their setting says ([`TlsLevel`], Postfix's levels):
//!
//! - `may`: STARTTLS (RFC 3207) when the peer offers it, certificate not checked (opportunistic,
//!   RFC 7435: what MTAs do between each other). A peer that refuses STARTTLS gets the mail in
//!   plaintext on the same connection; one whose handshake fails (the connection is then
//!   unusable) gets it over a second, plaintext connection, as Postfix does.
//! - `encrypt`: TLS always, certificate not checked; `verify`: TLS always, with a certificate
//!   valid for the destination's host name (the system's CAs, or the setting's CA file). Never
//!   plaintext: the mail stays queued and the log says why.
//! - `none`: plaintext.
//!
//! An unreachable destination leaves the mail queued.

use super::{deliver, Shared};
use crate::config::TlsLevel;
use crate::net::conn::Conn;
use crate::net::tls::{client_connector, TlsError};
use odmr_proto::deliver::StartTls;
use odmr_store::Lease;
use rustls_pki_types::{DnsName, ServerName};
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

/// One setting's TLS: its level and the client that goes with it.
pub struct Outbound {
    level: TlsLevel,
    /// The setting's name, for the logs.
    key: &'static str,
    connector: Option<tokio_rustls::TlsConnector>,
}

impl Outbound {
    /// `key` names the setting (e.g. `smtp.etrn_tls`); `ca_key` its CA file's, for errors.
    pub fn new(
        key: &'static str,
        level: TlsLevel,
        ca_key: &'static str,
        ca_file: Option<&Path>,
    ) -> Result<Outbound, TlsError> {
        let connector = match level {
            TlsLevel::None => None,
            TlsLevel::May | TlsLevel::Encrypt => Some(client_connector(ca_key, None, false, None)?),
            TlsLevel::Verify => Some(client_connector(ca_key, ca_file, true, None)?),
        };
        Ok(Outbound {
            level,
            key,
            connector,
        })
    }

    /// Connects to `destination` (`host:port`) and delivers `domains`' mail under `lease`.
    pub async fn deliver(
        &self,
        shared: &Shared,
        destination: &str,
        connect_timeout: Duration,
        lease: &Lease,
        domains: &[String],
    ) {
        let policy = match self.level {
            TlsLevel::None => StartTls::Never,
            TlsLevel::May => StartTls::IfOffered,
            TlsLevel::Encrypt | TlsLevel::Verify => StartTls::Required,
        };
        let name = match server_name(destination) {
            Some(name) => name,
            // Unchecked handshakes need no real name (nor do IP addresses send one).
            None if self.level != TlsLevel::Verify => {
                ServerName::DnsName(DnsName::try_from("invalid").expect("a valid DNS name"))
            }
            None => {
                tracing::warn!(destination, setting = self.key, "the destination has no host name a certificate could be checked against; the mail stays queued");
                return;
            }
        };
        let tls = self.connector.as_ref().map(|connector| deliver::OutboundTls {
            policy,
            connector: connector.clone(),
            name,
        });
        let run = |tls| connect_and_deliver(shared, destination, connect_timeout, lease, domains, tls);
        if run(tls.as_ref()).await.tls_failed {
            if self.level == TlsLevel::May {
                tracing::info!(
                    destination,
                    setting = self.key,
                    "delivering in plaintext after the failed TLS handshake (level \"may\")"
                );
                run(None).await;
            } else {
                tracing::warn!(
                    destination,
                    setting = self.key,
                    "no TLS with the destination, which this level requires; the mail stays queued"
                );
            }
        }
    }
}

async fn connect_and_deliver(
    shared: &Shared,
    destination: &str,
    connect_timeout: Duration,
    lease: &Lease,
    domains: &[String],
    tls: Option<&deliver::OutboundTls>,
) -> deliver::Ended {
    match Conn::connect(destination, connect_timeout).await {
        Ok(mut conn) => {
            let ended = deliver::deliver(shared, &mut conn, lease, domains, tls).await;
            conn.shutdown().await;
            ended
        }
        Err(e) => {
            tracing::warn!(destination, domain = %domains.join(","), error = %e, "destination unreachable; the mail stays queued");
            deliver::Ended::default()
        }
    }
}

/// The name a certificate must carry for `destination` (`host:port`): its host, a DNS name or
/// an IP address; `None` if it is neither.
fn server_name(destination: &str) -> Option<ServerName<'static>> {
    let host = destination.rsplit_once(':').map_or(destination, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(ServerName::IpAddress(ip.into()));
    }
    DnsName::try_from(host.to_string()).ok().map(ServerName::DnsName)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_names_come_from_the_destination_host() {
        let name = |d: &str| server_name(d).map(|n| n.to_str().into_owned());
        assert_eq!(name("mail.example.org:25").as_deref(), Some("mail.example.org"));
        assert_eq!(name("192.0.2.1:2525").as_deref(), Some("192.0.2.1"));
        assert_eq!(name("[2001:db8::1]:25").as_deref(), Some("2001:db8::1"));
        assert_eq!(name("bad_host!:25"), None);
    }
}
