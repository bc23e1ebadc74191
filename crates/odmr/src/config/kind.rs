//! Which program a config file is for, told by its top-level keys: server and client read
//! different files, and a file given to the wrong one gets a hint naming the right command
//! instead of serde's "unknown field `store`".
//!
//! Invariants, and why:
//! - Consulted only once the file has failed to parse as what was asked for, so it can never
//!   turn a valid file away; it only replaces the message.
//! - A hint only when the file has keys of the other kind and none that only the wanted kind
//!   has: a file mixing both gets the ordinary error, which names the stray key.

use super::ConfigError;
use std::path::Path;

/// The program reading the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `odmr server` and the operators' commands.
    Server,
    /// `odmr client`.
    Client,
}

/// Top-level tables only a server config has.
const SERVER_KEYS: &[&str] = &["store", "smtp", "odmr", "tls", "limits", "queue", "bounce"];
/// Top-level tables only a client config has.
const CLIENT_KEYS: &[&str] = &["provider"];

/// The hint for `text` (which did not parse as a config for `wanted`) if it looks like a config
/// for the other program; `None` otherwise, and for a file that is not TOML at all.
pub fn wrong_kind(path: &Path, text: &str, wanted: Kind) -> Option<ConfigError> {
    let table: toml::Table = text.parse().ok()?;
    let present = |keys: &[&'static str]| -> Vec<&'static str> {
        keys.iter().copied().filter(|k| table.contains_key(*k)).collect()
    };
    let (theirs, ours) = match wanted {
        Kind::Server => (present(CLIENT_KEYS), present(SERVER_KEYS)),
        Kind::Client => (present(SERVER_KEYS), present(CLIENT_KEYS)),
    };
    if theirs.is_empty() || !ours.is_empty() {
        return None;
    }
    let file = shell_words::quote(&path.to_string_lossy()).into_owned();
    let message = match wanted {
        Kind::Client => format!(
            "this looks like a server config (it has {}); `odmr client` needs a client config \
             (see odmr-client.example.toml); the server reads it with `odmr server --config {file}`",
            theirs
                .iter()
                .map(|k| format!("[{k}]"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Kind::Server => format!(
            "this looks like a client config (it has [[provider]]); `odmr server` and the \
             operators' commands need a server config (see odmr.example.toml); the client reads \
             it with `odmr client --config {file}`"
        ),
    };
    Some(ConfigError::Parse {
        path: path.to_path_buf(),
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: &str = "hostname = \"h.test\"\n[store]\npath = \"/s\"\n[smtp]\nlisten = []\n";
    const CLIENT: &str = "hostname = \"c.test\"\n[[provider]]\nhost = \"odmr.example.net\"\n";

    fn hint(text: &str, wanted: Kind) -> Option<String> {
        wrong_kind(Path::new("/etc/odmr/my file.toml"), text, wanted).map(|e| e.to_string())
    }

    #[test]
    fn a_server_config_given_to_the_client() {
        let h = hint(SERVER, Kind::Client).expect("a hint");
        assert!(
            h.starts_with("config file /etc/odmr/my file.toml: this looks like a server config"),
            "{h}"
        );
        assert!(h.contains("(it has [store], [smtp])"), "{h}");
        assert!(h.contains("odmr-client.example.toml"), "{h}");
        assert!(
            h.contains("`odmr server --config '/etc/odmr/my file.toml'`"),
            "{h}"
        );
    }

    #[test]
    fn a_client_config_given_to_the_server() {
        let h = hint(CLIENT, Kind::Server).expect("a hint");
        assert!(
            h.contains("this looks like a client config (it has [[provider]])"),
            "{h}"
        );
        assert!(h.contains("odmr.example.toml"), "{h}");
        assert!(
            h.contains("`odmr client --config '/etc/odmr/my file.toml'`"),
            "{h}"
        );
    }

    #[test]
    fn no_hint_for_the_right_kind_a_mix_or_broken_toml() {
        assert_eq!(hint(SERVER, Kind::Server), None);
        assert_eq!(hint(CLIENT, Kind::Client), None);
        let mixed = format!("{CLIENT}[store]\npath = \"/s\"\n");
        assert_eq!(hint(&mixed, Kind::Client), None);
        assert_eq!(hint(&mixed, Kind::Server), None);
        assert_eq!(hint("[store\n", Kind::Client), None);
        assert_eq!(hint("hostname = \"h\"\n", Kind::Client), None);
    }
}
