//! `odmr tls …`: certificates for trials. Needs no configuration file.

use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum TlsCmd {
    /// Make a self-signed certificate and key (cert.pem, key.pem) for a trial: the provider
    /// names them in [tls], and the customer trusts the certificate with `ca_file`. Use a
    /// certificate from a real CA for customers on the Internet.
    SelfSigned {
        /// Directory to write cert.pem and key.pem into (created if missing; existing files
        /// are never replaced).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// A host name or IP address the certificate is valid for (repeatable). Default:
        /// localhost, 127.0.0.1 and ::1.
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
    },
}

pub fn tls(cmd: TlsCmd) -> anyhow::Result<()> {
    match cmd {
        TlsCmd::SelfSigned { out, mut names } => {
            if names.is_empty() {
                names = crate::net::tls::TRIAL_NAMES.map(String::from).to_vec();
            }
            let (cert, key) = (out.join("cert.pem"), out.join("key.pem"));
            crate::net::tls::write_self_signed(&cert, &key, &names)?;
            println!(
                "wrote {} and {} for {}\n\
                 provider: [tls] cert = \"{}\", key = \"{}\"\n\
                 customer: ca_file = \"{}\"",
                cert.display(),
                key.display(),
                names.join(", "),
                cert.display(),
                key.display(),
                cert.display()
            );
            Ok(())
        }
    }
}
