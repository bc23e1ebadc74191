//! ETRN (RFC 1985) on the MX listener: who may release which domains, and the queue run over a
//! new outbound connection. The decision needs the store's ETRN settings (schema 2); until the
//! store has them every request is refused for now with 458.

use super::Shared;
use odmr_proto::smtp_server::EtrnVerdict;
use std::net::IpAddr;

pub async fn request(
    shared: &Shared,
    _ip: IpAddr,
    _account: Option<&str>,
    node: &str,
    _subdomains: bool,
) -> EtrnVerdict {
    tracing::info!(node, connect_timeout = ?shared.cfg.smtp.etrn_connect_timeout, "ETRN refused: not available yet");
    EtrnVerdict::Unable("ETRN is not available yet".into())
}
