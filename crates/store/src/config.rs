//! Which store to open: a URL-like setting, `SCHEME:WHERE`, whose scheme names the backend.
//!
//! - `sqlite:DIR`: SQLite in the file `DIR/odmr.db`, `DIR` created if missing. `DIR` is written
//!   right after the colon, absolute (`sqlite:/var/lib/odmr`) or relative to the working directory
//!   (`sqlite:./odmr-data`); the `sqlite://…` form is refused rather than guessed at.
//!
//! Each backend parses what follows its scheme (see `Backend::parse_location`), so the list of
//! schemes is the list of backends in `dispatch.rs`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::dispatch::{Location, SCHEMES};

/// Where the store is, parsed from its URL: the argument of [`Store::open`](crate::Store::open).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    location: Location,
}

/// A store URL that cannot be used; the message says what is wrong and what would be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreUrlError {
    #[error("no scheme: a store URL is SCHEME:WHERE, e.g. \"sqlite:/var/lib/odmr\"")]
    NoScheme,
    #[error("unknown scheme {scheme:?}: the supported ones are {}", .supported.join(", "))]
    UnknownScheme {
        scheme: String,
        supported: &'static [&'static str],
    },
    #[error("{scheme}: {problem}")]
    Invalid { scheme: &'static str, problem: String },
}

impl StoreConfig {
    /// Parses a store URL (see the module's documentation). The scheme is case-insensitive.
    pub fn parse(url: &str) -> Result<StoreConfig, StoreUrlError> {
        let url = url.trim();
        let (scheme, rest) = url.split_once(':').ok_or(StoreUrlError::NoScheme)?;
        // RFC 3986: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ); anything else before the first
        // colon (a path such as "./data:old") is not a scheme at all.
        let is_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !is_scheme {
            return Err(StoreUrlError::NoScheme);
        }
        let scheme = scheme.to_ascii_lowercase();
        match Location::parse(&scheme, rest) {
            Some(location) => Ok(StoreConfig { location: location? }),
            None => Err(StoreUrlError::UnknownScheme {
                scheme,
                supported: SCHEMES,
            }),
        }
    }

    /// SQLite in `dir` (what `[store] path = DIR` has always meant): `sqlite:DIR`.
    pub fn sqlite(dir: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            location: Location::Sqlite(dir.into()),
        }
    }

    /// The schemes this build supports.
    pub fn supported_schemes() -> &'static [&'static str] {
        SCHEMES
    }

    /// The scheme, which names the backend: `"sqlite"`.
    pub fn scheme(&self) -> &'static str {
        self.location.scheme()
    }

    /// The local directory the store keeps its files in, for a backend that does (SQLite), so
    /// that an error opening it can say what is wrong with that directory.
    pub fn local_dir(&self) -> Option<&Path> {
        self.location.local_dir()
    }

    pub(crate) fn location(&self) -> &Location {
        &self.location
    }
}

impl FromStr for StoreConfig {
    type Err = StoreUrlError;

    fn from_str(url: &str) -> Result<StoreConfig, StoreUrlError> {
        StoreConfig::parse(url)
    }
}

/// The URL, as [`StoreConfig::parse`] takes it (a backend leaves out any secret).
impl fmt::Display for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.scheme())?;
        self.location.show(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls() {
        for (url, dir) in [
            ("sqlite:/var/lib/odmr", "/var/lib/odmr"),
            ("SQLite:/var/lib/odmr", "/var/lib/odmr"),
            ("sqlite:./odmr-data", "./odmr-data"),
            ("sqlite:odmr data", "odmr data"),
            (" sqlite:/srv/odmr ", "/srv/odmr"),
        ] {
            let c = StoreConfig::parse(url).unwrap();
            assert_eq!(c, StoreConfig::sqlite(dir), "{url}");
            assert_eq!(c.scheme(), "sqlite");
            assert_eq!(c.local_dir(), Some(Path::new(dir)));
            assert_eq!(c.to_string(), format!("sqlite:{dir}"));
            assert_eq!(c.to_string().parse::<StoreConfig>().unwrap(), c, "round trip");
        }
    }

    #[test]
    fn bad_urls_say_why() {
        assert_eq!(StoreConfig::parse("/var/lib/odmr"), Err(StoreUrlError::NoScheme));
        assert_eq!(StoreConfig::parse("./data:old"), Err(StoreUrlError::NoScheme));
        let e = StoreConfig::parse("postgres://db.example/odmr").unwrap_err();
        assert_eq!(
            e,
            StoreUrlError::UnknownScheme {
                scheme: "postgres".into(),
                supported: &["sqlite"],
            }
        );
        assert_eq!(
            e.to_string(),
            "unknown scheme \"postgres\": the supported ones are sqlite"
        );
        for (url, says) in [
            ("sqlite:", "no directory"),
            ("sqlite:   ", "no directory"),
            ("sqlite:///var/lib/odmr", "write \"sqlite:/var/lib/odmr\""),
            (
                "sqlite://odmr-data",
                "write \"sqlite:/odmr-data\" or \"sqlite:./odmr-data\"",
            ),
        ] {
            let e = StoreConfig::parse(url).unwrap_err();
            assert!(
                matches!(e, StoreUrlError::Invalid { scheme: "sqlite", .. }),
                "{url}: {e:?}"
            );
            assert!(e.to_string().contains(says), "{url}: {e}");
        }
    }
}
