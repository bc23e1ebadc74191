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
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::dispatch::{Location, SCHEMES};

/// Where the store is, parsed from its URL: the argument of [`Store::open`](crate::Store::open).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    location: Location,
    clock: Option<ClockOffset>,
}

/// Time added to the database's clock wherever the store reads it: lease times (see the crate's
/// documentation, "Clocks"). For tests: a test of lease expiry opens its store with one and moves
/// it forward instead of sleeping. Clones share the offset, so every handle opened with one
/// clone sees the same time. Without one (always, outside tests) the offset is zero.
#[derive(Debug, Clone, Default)]
pub struct ClockOffset(Arc<AtomicI64>);

impl ClockOffset {
    pub fn new() -> ClockOffset {
        ClockOffset::default()
    }

    /// Moves the database's clock, as the stores opened with this offset see it, forward by `by`.
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX / 2);
        self.0.fetch_add(ms, Ordering::Relaxed);
    }

    /// The offset, in milliseconds.
    pub fn millis(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The same offset (clones of one another), not merely the same value.
impl PartialEq for ClockOffset {
    fn eq(&self, other: &ClockOffset) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for ClockOffset {}

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
            Some(location) => Ok(StoreConfig {
                location: location?,
                clock: None,
            }),
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
            clock: None,
        }
    }

    /// For tests: the store sees the database's clock moved by `offset` (see [`ClockOffset`]).
    pub fn with_clock_offset(mut self, offset: ClockOffset) -> StoreConfig {
        self.clock = Some(offset);
        self
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

    /// The offset to open the store with: the test's, else a zero one of its own.
    pub(crate) fn clock(&self) -> ClockOffset {
        self.clock.clone().unwrap_or_default()
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
    fn a_clock_offset_is_shared_by_its_clones() {
        let clock = ClockOffset::new();
        let config = StoreConfig::sqlite("/x").with_clock_offset(clock.clone());
        clock.advance(Duration::from_secs(61));
        assert_eq!(config.clock().millis(), 61_000);
        assert_eq!(StoreConfig::sqlite("/x").clock().millis(), 0);
        assert_ne!(
            config,
            StoreConfig::sqlite("/x"),
            "not the same store as far as time goes"
        );
        assert_eq!(config.clone(), config);
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
