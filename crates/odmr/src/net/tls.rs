//! TLS with rustls (ring backend): the server's certificate, reloadable without dropping
//! sessions, and the client's verification settings.
//!
//! Invariants:
//! - The certificate lives behind an `ArcSwap`: a reload swaps in a new config for new
//!   handshakes while sessions already running keep theirs. A reload that fails leaves the old
//!   certificate in place and says why.
//! - Errors name the file and the fix.

use arc_swap::ArcSwap;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key} = {path:?}: {problem}; {fix}")]
    File {
        key: &'static str,
        path: PathBuf,
        problem: String,
        fix: &'static str,
    },
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |problem: String| TlsError::File {
        key,
        path: path.to_path_buf(),
        problem,
        fix: "give a PEM file with the certificate chain (leaf first)",
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no certificate found".into()));
    }
    Ok(certs)
}

/// What a trial certificate made by [`write_self_signed`] is valid for when no names are given:
/// this machine by every name a local client uses.
pub const TRIAL_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Write a new self-signed certificate for `names` (host names or IP addresses) and its key as
/// PEM files, for trials: a customer trusts it by naming the certificate file as its CA
/// (`ca_file`). Existing files are never overwritten, so a real certificate cannot be lost to a
/// typo; the key is readable by its owner only.
pub fn write_self_signed(cert: &Path, key: &Path, names: &[String]) -> Result<(), TlsError> {
    let made = rcgen::CertificateParams::new(names.to_vec())
        .and_then(|mut params| {
            params.distinguished_name = rcgen::DistinguishedName::new();
            params.distinguished_name.push(
                rcgen::DnType::CommonName,
                names.first().map_or("localhost", |n| n.as_str()),
            );
            params.distinguished_name.push(
                rcgen::DnType::OrganizationName,
                "odmr self-signed test certificate",
            );
            let pair = rcgen::KeyPair::generate()?;
            Ok((params.self_signed(&pair)?, pair))
        })
        .map_err(|e| TlsError::File {
            key: "tls.cert",
            path: cert.to_path_buf(),
            problem: format!("cannot make a certificate for {names:?}: {e}"),
            fix: "give host names (\"mail.example.net\") or IP addresses",
        })?;
    let (certificate, pair) = made;
    write_new(key, pair.serialize_pem().as_bytes(), 0o600, "tls.key")?;
    if let Err(e) = write_new(cert, certificate.pem().as_bytes(), 0o644, "tls.cert") {
        // Never leave a key without its certificate: the next attempt would refuse to start.
        let _ = std::fs::remove_file(key);
        return Err(e);
    }
    Ok(())
}

/// Create `path` (and its directory, owner-only) with `bytes`, refusing to replace a file.
fn write_new(path: &Path, bytes: &[u8], mode: u32, key: &'static str) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let fail = |problem: String, fix: &'static str| TlsError::File {
        key,
        path: path.to_path_buf(),
        problem,
        fix,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                fail(
                    format!("cannot create its directory: {e}"),
                    "choose a writable directory",
                )
            })?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                fail(
                    "already exists".into(),
                    "remove it first, or choose another place",
                )
            } else {
                fail(e.to_string(), "choose a writable directory")
            }
        })?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| fail(e.to_string(), "choose a writable directory with free space"))
}

/// The server side: certificate and key, reloadable.
pub struct TlsServer {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    config: ArcSwap<rustls::ServerConfig>,
}

impl TlsServer {
    /// `client_ca`: ask for client certificates signed by these CAs (for SASL EXTERNAL); a
    /// client without one can still connect and use a password mechanism.
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<TlsServer, TlsError> {
        let config = Self::build(cert, key, client_ca)?;
        Ok(TlsServer {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            client_ca: client_ca.map(Path::to_path_buf),
            config: ArcSwap::from_pointee(config),
        })
    }

    fn build(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<rustls::ServerConfig, TlsError> {
        let certs = read_certs("tls.cert", cert)?;
        let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::File {
            key: "tls.key",
            path: key.to_path_buf(),
            problem: e.to_string(),
            fix: "give a PEM file with the private key (PKCS#8, PKCS#1 or SEC1) of the certificate",
        })?;
        let builder =
            rustls::ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in read_certs("tls.client_ca", path)? {
                    roots.add(c).map_err(|e| TlsError::File {
                        key: "tls.client_ca",
                        path: path.to_path_buf(),
                        problem: e.to_string(),
                        fix: "give a PEM file with the CA certificate(s) that sign customers' client certificates",
                    })?;
                }
                let verifier =
                    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .allow_unauthenticated()
                        .build()
                        .map_err(|e| TlsError::File {
                            key: "tls.client_ca",
                            path: path.to_path_buf(),
                            problem: e.to_string(),
                            fix: "give a PEM file with at least one CA certificate",
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder
            .with_single_cert(certs, private)
            .map_err(|e| TlsError::File {
                key: "tls.key",
                path: key.to_path_buf(),
                problem: e.to_string(),
                fix: "the key must belong to the certificate in tls.cert",
            })?;
        Ok(config)
    }

    /// Read the files again (SIGHUP). New handshakes use the new certificate.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = Self::build(&self.cert, &self.key, self.client_ca.as_deref())?;
        self.config.store(Arc::new(config));
        Ok(())
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.load_full())
    }
}

/// The client side: verify against the system roots, or `ca_file`, or (only when chosen
/// explicitly) not at all.
/// `identity`: our client certificate chain and key (PEM), offered for SASL EXTERNAL.
/// `ca_key` names `ca_file`'s setting in errors.
pub fn client_connector(
    ca_key: &'static str,
    ca_file: Option<&Path>,
    verify: bool,
    identity: Option<(&Path, &Path)>,
) -> Result<tokio_rustls::TlsConnector, TlsError> {
    let identity = match identity {
        Some((cert, key)) => Some((
            read_certs("tls_cert", cert)?,
            PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::File {
                key: "tls_key",
                path: key.to_path_buf(),
                problem: e.to_string(),
                fix: "give a PEM file with the private key of tls_cert",
            })?,
        )),
        None => None,
    };
    let with_identity =
        |b: rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>| match identity {
            Some((certs, key)) => b.with_client_auth_cert(certs, key),
            None => Ok(b.with_no_client_auth()),
        };
    let builder =
        rustls::ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let config = if !verify {
        with_identity(
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider()))),
        )?
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match ca_file {
            Some(path) => {
                for c in read_certs(ca_key, path)? {
                    roots.add(c).map_err(|e| TlsError::File {
                        key: ca_key,
                        path: path.to_path_buf(),
                        problem: e.to_string(),
                        fix: "give a PEM file with the CA certificate(s) that signed the peer's certificate",
                    })?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for c in found.certs {
                    let _ = roots.add(c);
                }
                if roots.is_empty() {
                    return Err(TlsError::File {
                        key: ca_key,
                        path: PathBuf::from("(system roots)"),
                        problem: "no trusted CA certificates found on this system".into(),
                        fix: "install ca-certificates or set the CA file",
                    });
                }
            }
        }
        with_identity(builder.with_root_certificates(roots))?
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// `tls_verify = false`: accept any certificate (the handshake signature is still checked).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
