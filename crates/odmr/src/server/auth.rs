//! The driver side of AUTH, shared by the ODMR and MX listeners (the protocol side is
//! [`odmr_proto::auth`]): throttling, credential lookups in the store, and what a failure costs.
//!
//! Every attempt that names a user goes through [`super::limits::Guards::auth_gate`] first, so
//! both listeners share one failure count per client address and per account: guessing on
//! port 25 locks out the same as guessing on port 366.

use super::limits::AuthGate;
use super::Shared;
use odmr_proto::auth::{AuthAnswer, AuthStep};
use odmr_proto::sasl::cram_md5::{self, CramSecret};
use odmr_proto::sasl::scram::{self, ScramVerifier};
use odmr_store::Store;
use std::net::IpAddr;

/// The credential scheme holding SHA-256 fingerprints of customers' client certificates.
pub const CERT_SCHEME: &str = "x509-sha256";

/// The answer to `step` from the client at `ip` (with this TLS client certificate
/// fingerprint, if any), after the failure gate: a locked-out client or account gets
/// [`AuthAnswer::TemporaryFailure`], i.e. 454, without its credentials being checked.
pub async fn answer(
    shared: &Shared,
    ip: IpAddr,
    client_cert: Option<[u8; 32]>,
    step: &AuthStep,
) -> AuthAnswer {
    if !matches!(step, AuthStep::External { .. }) {
        match shared.guards.auth_gate(ip, Some(step.user())) {
            AuthGate::LockedOut => {
                tracing::warn!(account = %step.user(), "AUTH refused: too many recent failures");
                return AuthAnswer::TemporaryFailure;
            }
            AuthGate::Proceed(delay) => tokio::time::sleep(delay).await,
        }
    }
    match step {
        AuthStep::LookupSecret { user } => AuthAnswer::Secret(
            credential(&shared.store, user, cram_md5::SCHEME)
                .await
                .and_then(|b| CramSecret::from_bytes(&b).ok()),
        ),
        // The outcome is known only after the client's proof.
        AuthStep::LookupScram { user } => AuthAnswer::Scram(
            credential(&shared.store, user, scram::SCHEME)
                .await
                .and_then(|b| ScramVerifier::from_bytes(&b).ok()),
        ),
        AuthStep::CheckPassword { user, password } => {
            let v = credential(&shared.store, user, scram::SCHEME)
                .await
                .and_then(|b| ScramVerifier::from_bytes(&b).ok());
            // Unknown users cost the same work as known ones.
            let v = v.unwrap_or_else(|| ScramVerifier::decoy(user, &shared.decoy_secret));
            AuthAnswer::Password(scram::verify_password(&v, password))
        }
        AuthStep::External { authzid } => {
            let mapped = match client_cert {
                Some(fp) => match shared.store.account_by_credential(CERT_SCHEME, &fp).await {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::error!(error = %e, "certificate lookup failed");
                        None
                    }
                },
                None => None,
            };
            // A named authorization identity must be the certificate's own account.
            AuthAnswer::External(mapped.filter(|a| authzid.is_empty() || authzid == a))
        }
    }
}

/// After the machine took the answer: `result` is what its `auth_answer` returned. Failures
/// are logged and counted; a success is logged by the caller once the 235 is flushed.
pub fn settle(shared: &Shared, ip: IpAddr, step: &AuthStep, result: Option<bool>) {
    if result != Some(false) {
        return;
    }
    match step {
        AuthStep::External { authzid } => {
            tracing::warn!(authzid = %authzid, "EXTERNAL failed: the client certificate maps to no such account")
        }
        _ => {
            shared.guards.auth_failed(ip, step.user());
            tracing::warn!(account = %step.user(), "authentication failed");
        }
    }
}

/// A SCRAM proof failed inside the machine ([`odmr_proto::auth::AuthServer::take_proof_failure`]):
/// counted like any other failed login. Drivers ask after every step.
pub fn proof_failed(shared: &Shared, ip: IpAddr, user: &str) {
    shared.guards.auth_failed(ip, user);
    tracing::warn!(account = %user, "authentication failed (SCRAM proof)");
}

/// A stored credential of `user` for `scheme`; `None` when absent or unreadable.
async fn credential(store: &Store, user: &str, scheme: &str) -> Option<Vec<u8>> {
    match store.account_credential(user, scheme).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "credential lookup failed");
            None
        }
    }
}
