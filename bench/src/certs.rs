//! A throwaway PKI for the TLS measurements: a CA and a leaf for `localhost` and 127.0.0.1
//! signed by it (rcgen), written as PEM files for the server, Postfix and fetchmail, and a rustls
//! client configuration that trusts only that CA.

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct Pki {
    /// The CA certificate (PEM): what clients trust.
    pub ca: PathBuf,
    /// The leaf certificate and its key (PEM): what servers present.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// A rustls client configuration trusting `ca` only.
    pub client: Arc<rustls::ClientConfig>,
}

impl Pki {
    pub fn create(dir: &Path) -> Result<Pki> {
        std::fs::create_dir_all(dir)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "odmr bench CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;

        let mut leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        leaf.distinguished_name.push(DnType::CommonName, "localhost");
        leaf.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_key = KeyPair::generate()?;
        let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key)?;

        let (ca, cert, key) = (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&ca, ca_cert.pem())?;
        std::fs::write(&cert, leaf_cert.pem())?;
        std::fs::write(&key, leaf_key.serialize_pem())?;
        // Postfix's daemons read the key as the postfix user.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644))?;

        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca_cert.der().clone())
            .context("add the bench CA to the roots")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Pki {
            ca,
            cert,
            key,
            client: Arc::new(client),
        })
    }
}
