//! A domain name, and the one place one is parsed and normalised.
//!
//! Invariants, and why:
//! - **One spelling per domain.** ASCII letters are lower-cased and one trailing dot (the root,
//!   `example.org.`) is removed, so `Example.ORG.` and `example.org` are the same key wherever a
//!   domain is stored, compared or leased. Several slightly different normalisers once let
//!   `RCPT TO:<bob@example.org.>` be accepted under one spelling and stored under another, where
//!   ATRN never found it.
//! - **A-labels are kept as they come** (`xn--…`), and so are U-labels: only ASCII is folded
//!   (RFC 5890 §2.3.2.3 leaves other case mapping to IDNA, which we do not do), so a name is
//!   never changed into a different one.
//! - [`Domain::parse`] is strict (names an operator types or configures: accounts, ATRN,
//!   ETRN, the CLI); [`Domain::of_address`] takes what the SMTP parser already accepted as an
//!   address and only normalises it.

use std::fmt;

/// Longest domain name (RFC 1035 §2.3.4: 255 octets on the wire, 253 as text; we allow 255).
const MAX_LEN: usize = 255;

/// A normalised domain name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Domain(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid domain {0:?}: a domain is a name such as \"example.org\": letters, digits and hyphens in labels separated by dots, no spaces"
)]
pub struct DomainError(pub String);

impl Domain {
    /// A domain as an operator or a peer names it: `Example.ORG.` is `example.org`.
    pub fn parse(text: &str) -> Result<Domain, DomainError> {
        let invalid = || DomainError(text.to_string());
        let name = normalise(text.trim());
        let bad_char = |c: char| {
            c.is_whitespace()
                || c.is_control()
                || matches!(
                    c,
                    '@' | '/' | '\\' | '[' | ']' | '<' | '>' | '(' | ')' | ',' | ';' | ':' | '"'
                )
        };
        if name.is_empty()
            || name.len() > MAX_LEN
            || name.starts_with('.')
            || name.ends_with('.')
            || name.contains("..")
            || name.chars().any(bad_char)
        {
            return Err(invalid());
        }
        Ok(Domain(name))
    }

    /// The domain of an address the SMTP parser accepted (after its last `@`), normalised;
    /// `None` without an `@` or with nothing after it. An address literal (`[192.0.2.1]`) is
    /// kept as it is, lower-cased.
    pub fn of_address(address: &str) -> Option<Domain> {
        let (_, d) = address.rsplit_once('@')?;
        let d = normalise(d);
        (!d.is_empty()).then_some(Domain(d))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }

    /// `self` is `other` or one of its subdomains (`ETRN @example.org`, RFC 1985 §5).
    pub fn is_within(&self, other: &Domain) -> bool {
        self.0 == other.0
            || self
                .0
                .strip_suffix(other.as_str())
                .is_some_and(|head| head.ends_with('.'))
    }
}

/// ASCII lower case, one trailing dot removed.
fn normalise(text: &str) -> String {
    text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase()
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Domain {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Domain {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for Domain {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Domain {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_spelling_per_domain() {
        for text in [
            "example.org",
            "Example.ORG",
            "example.org.",
            "EXAMPLE.ORG.",
            " example.org ",
        ] {
            assert_eq!(Domain::parse(text).unwrap(), "example.org", "{text:?}");
        }
        assert_eq!(Domain::of_address("bob@Example.ORG.").unwrap(), "example.org");
        assert_eq!(Domain::of_address("\"a@b\"@X.Org").unwrap(), "x.org");
        assert_eq!(Domain::of_address("bob@[192.0.2.1]").unwrap(), "[192.0.2.1]");
    }

    #[test]
    fn labels_beyond_ascii_are_kept() {
        assert_eq!(
            Domain::parse("XN--Bcher-kva.Example").unwrap(),
            "xn--bcher-kva.example"
        );
        // Only ASCII is folded: a U-label stays as it is.
        assert_eq!(Domain::parse("Bücher.example").unwrap(), "bücher.example");
    }

    #[test]
    fn bad_names_are_refused_with_what_a_domain_looks_like() {
        for bad in [
            "",
            ".",
            "..",
            ".example.org",
            "example..org",
            "exa mple.org",
            "a@b",
            "example.org..",
            "[1.2.3.4]",
        ] {
            let e = Domain::parse(bad).unwrap_err();
            assert!(e.to_string().contains("such as \"example.org\""), "{bad:?}: {e}");
        }
        assert!(Domain::parse(&"a".repeat(256)).is_err());
        assert_eq!(Domain::of_address("postmaster"), None);
        assert_eq!(Domain::of_address("bob@"), None);
        assert_eq!(Domain::of_address("bob@."), None);
    }

    #[test]
    fn subdomains() {
        let org = Domain::parse("example.org").unwrap();
        assert!(Domain::parse("mail.Example.org.").unwrap().is_within(&org));
        assert!(org.is_within(&org));
        assert!(!Domain::parse("badexample.org").unwrap().is_within(&org));
    }
}
