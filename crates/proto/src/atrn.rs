//! Parser for the arguments of the ODMR `ATRN` command [RFC 2645 §5.2.1], a little more tolerant
//! than the RFC's grammar **[project]** (below, and docs/protocol-decisions.md).
//!
//! ```text
//! atrn       = "ATRN" [SP domain *("," domain)]
//! domain     = sub-domain 1*("." sub-domain)
//! sub-domain = (ALPHA / DIGIT) *(ldh-str)
//! ldh-str    = *(ALPHA / DIGIT / "-") (ALPHA / DIGIT)
//! ```
//!
//! Invariants, and why:
//!
//! * **Every returned domain satisfies the RFC grammar**: at least two labels of letters, digits
//!   and hyphens, no label starting or ending with a hyphen, labels ≤ 63 and the name ≤ 255
//!   octets [RFC 5321 §4.5.3.1.2]. The names are then used as keys for the authorization check and
//!   the queue lookup, so nothing that merely looks like a domain (an address literal, a local
//!   part, a glob, a single-label host name) may get that far.
//! * **Tolerant only where meaning cannot change**: spaces around commas, space-separated lists
//!   (as IndiMail accepts) and a single trailing root dot are accepted, because every such input
//!   has exactly one reading. An empty element (`a.org,,b.org`, a trailing comma) is rejected:
//!   it is more likely a client bug than a request, and guessing could widen or narrow the set of
//!   domains the client gets mail for.
//! * **Lower-cased and de-duplicated, order kept**: domains compare case-insensitively [RFC 5321
//!   §2.4]; duplicates would make the all-or-nothing authorization check and the per-domain
//!   delivery locks see the same domain twice.
//! * **Empty arguments mean a bare `ATRN`** (every domain of the authenticated identity) and are
//!   returned as an empty list; the caller decides what that means.
//! * **Errors are safe to quote**: the offending element in an error is reduced to printable
//!   ASCII and at most [`MAX_QUOTED`] characters, so the message can go into a `501` reply text.

use std::collections::HashSet;

/// Longest label [RFC 1035 §2.3.4, RFC 5321 §4.5.3.1.2].
const MAX_LABEL: usize = 63;
/// Longest domain name [RFC 5321 §4.5.3.1.2].
const MAX_DOMAIN: usize = 255;
/// Characters of an offending element quoted in an error.
pub const MAX_QUOTED: usize = 64;

/// Why the `ATRN` arguments were rejected (the caller replies `501`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AtrnSyntaxError {
    /// An empty element between commas, or a leading or trailing comma. `position` counts the
    /// comma-separated elements from 1.
    #[error("empty domain in the ATRN list (element {position})")]
    EmptyElement {
        /// 1-based position of the empty element.
        position: usize,
    },
    /// A character outside letters, digits, hyphens and dots (e.g. an address literal).
    #[error("illegal character in domain \"{domain}\"")]
    IllegalCharacter {
        /// The offending element, sanitized.
        domain: String,
    },
    /// Fewer than two labels (e.g. `localhost`).
    #[error("\"{domain}\" is not a fully qualified domain name")]
    SingleLabel {
        /// The offending element, sanitized.
        domain: String,
    },
    /// An empty label (`a..org`, `.a.org`), a label starting or ending with a hyphen, or a label
    /// longer than 63 octets.
    #[error("bad label in domain \"{domain}\"")]
    BadLabel {
        /// The offending element, sanitized.
        domain: String,
    },
    /// A name longer than 255 octets.
    #[error("domain \"{domain}\" is too long")]
    TooLong {
        /// The offending element, sanitized.
        domain: String,
    },
}

/// Parses the text after `ATRN` into a list of lower-cased, distinct domains (empty for a bare
/// `ATRN`).
pub fn parse_atrn_args(args: &str) -> Result<Vec<String>, AtrnSyntaxError> {
    let args = args.trim_matches(is_space);
    let mut domains = Vec::new();
    if args.is_empty() {
        return Ok(domains);
    }
    let mut seen = HashSet::new();
    for (index, element) in args.split(',').enumerate() {
        let element = element.trim_matches(is_space);
        if element.is_empty() {
            return Err(AtrnSyntaxError::EmptyElement { position: index + 1 });
        }
        for word in element.split(is_space).filter(|w| !w.is_empty()) {
            let domain = parse_domain(word)?;
            if seen.insert(domain.clone()) {
                domains.push(domain);
            }
        }
    }
    Ok(domains)
}

fn is_space(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// Validates one domain and returns it lower-cased, without a trailing root dot (also the node
/// name of ETRN, RFC 1985 §5: a fully qualified domain name).
pub fn parse_domain(word: &str) -> Result<String, AtrnSyntaxError> {
    let name = word.strip_suffix('.').unwrap_or(word);
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(AtrnSyntaxError::IllegalCharacter { domain: quote(word) });
    }
    if name.len() > MAX_DOMAIN {
        return Err(AtrnSyntaxError::TooLong { domain: quote(word) });
    }
    let mut labels = 0usize;
    for label in name.split('.') {
        labels += 1;
        if label.is_empty() || label.len() > MAX_LABEL || label.starts_with('-') || label.ends_with('-') {
            return Err(AtrnSyntaxError::BadLabel { domain: quote(word) });
        }
    }
    if labels < 2 {
        return Err(AtrnSyntaxError::SingleLabel { domain: quote(word) });
    }
    // Checked above: letters, digits, hyphens and dots in labels, which the Domain type takes;
    // its spelling is the one the store keeps.
    crate::domain::Domain::parse(word)
        .map(crate::domain::Domain::into_string)
        .map_err(|_| AtrnSyntaxError::IllegalCharacter { domain: quote(word) })
}

/// Makes an element safe to put in a reply line: printable ASCII only (others become `?`), at
/// most [`MAX_QUOTED`] characters, `"` replaced so the quoting stays unambiguous.
pub fn quote(s: &str) -> String {
    let mut q: String = s
        .chars()
        .take(MAX_QUOTED)
        .map(|c| {
            if (c.is_ascii_graphic() && c != '"') || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    if s.chars().nth(MAX_QUOTED).is_some() {
        q.push_str("...");
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(args: &str, expected: &[&str]) {
        assert_eq!(
            parse_atrn_args(args).as_deref(),
            Ok(expected
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .as_slice()),
            "{args:?}"
        );
    }

    fn err(args: &str) -> AtrnSyntaxError {
        match parse_atrn_args(args) {
            Ok(v) => panic!("{args:?} parsed as {v:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn bare_atrn() {
        ok("", &[]);
        ok(" ", &[]);
        ok("  \t ", &[]);
    }

    #[test]
    fn strict_form() {
        ok(" example.org", &["example.org"]);
        ok("example.org", &["example.org"]);
        ok(" example.org,example.net", &["example.org", "example.net"]);
        ok(" a.b.c.example.org", &["a.b.c.example.org"]);
        ok(" xn--bcher-kva.example", &["xn--bcher-kva.example"]);
        ok(" 3com.com,a-b.c-d.org", &["3com.com", "a-b.c-d.org"]);
        ok(" a--b.org", &["a--b.org"]);
        // Digits-only labels fit the grammar; authorization will refuse what is not ours.
        ok(" 1.2.3.4", &["1.2.3.4"]);
    }

    #[test]
    fn tolerated_forms() {
        ok(" a.org, b.org", &["a.org", "b.org"]);
        ok(" a.org ,b.org", &["a.org", "b.org"]);
        ok(" a.org , b.org", &["a.org", "b.org"]);
        ok(" a.org b.org", &["a.org", "b.org"]);
        ok(" a.org   b.org\tc.org", &["a.org", "b.org", "c.org"]);
        ok(" a.org b.org,c.org", &["a.org", "b.org", "c.org"]);
        ok(" example.org.", &["example.org"]);
        ok(" example.org. ", &["example.org"]);
        ok("example.org.,b.org", &["example.org", "b.org"]);
    }

    #[test]
    fn lower_cased_and_deduplicated_in_order() {
        ok(" B.org,a.ORG,b.org,A.org.,c.org", &["b.org", "a.org", "c.org"]);
        ok(" EXAMPLE.ORG", &["example.org"]);
    }

    #[test]
    fn empty_elements() {
        assert_eq!(
            err(" a.org,,b.org"),
            AtrnSyntaxError::EmptyElement { position: 2 }
        );
        assert_eq!(err(" a.org,"), AtrnSyntaxError::EmptyElement { position: 2 });
        assert_eq!(err(" ,a.org"), AtrnSyntaxError::EmptyElement { position: 1 });
        assert_eq!(
            err(" a.org, ,b.org"),
            AtrnSyntaxError::EmptyElement { position: 2 }
        );
        assert_eq!(err(","), AtrnSyntaxError::EmptyElement { position: 1 });
    }

    #[test]
    fn illegal_characters() {
        for (args, element) in [
            (" [1.2.3.4]", "[1.2.3.4]"),
            (" a_b.org", "a_b.org"),
            (" @x.org", "@x.org"),
            (" user@x.org", "user@x.org"),
            (" *.x.org", "*.x.org"),
            (" a.org,b.org;c.org", "b.org;c.org"),
            (" bücher.de", "b?cher.de"),
            (" a.org\r\n", "a.org??"),
            (" a\x00.org", "a?.org"),
            (" \"a\".org", "?a?.org"),
        ] {
            assert_eq!(
                err(args),
                AtrnSyntaxError::IllegalCharacter {
                    domain: element.to_string()
                },
                "{args:?}"
            );
        }
    }

    #[test]
    fn single_label() {
        assert_eq!(
            err(" localhost"),
            AtrnSyntaxError::SingleLabel {
                domain: "localhost".into()
            }
        );
        assert_eq!(
            err(" localhost."),
            AtrnSyntaxError::SingleLabel {
                domain: "localhost.".into()
            }
        );
        assert!(matches!(err(" a.org,com"), AtrnSyntaxError::SingleLabel { .. }));
    }

    #[test]
    fn bad_labels() {
        for args in [
            " a..org", " .a.org", " a.org..", " .", " -a.org", " a-.org", " a.-org", " a.org-", " a.-",
        ] {
            assert!(
                matches!(err(args), AtrnSyntaxError::BadLabel { .. }),
                "{args:?}: {:?}",
                parse_atrn_args(args)
            );
        }
        let long = "a".repeat(64);
        assert!(matches!(
            err(&format!(" {long}.org")),
            AtrnSyntaxError::BadLabel { .. }
        ));
        ok(&format!(" {}.org", &long[1..]), &[&format!("{}.org", &long[1..])]);
    }

    #[test]
    fn name_length() {
        // 4 × 63 + 3 dots = 255 octets: the longest legal name.
        let label = "a".repeat(63);
        let max = [label.as_str(); 4].join(".");
        assert_eq!(max.len(), 255);
        ok(&format!(" {max}"), &[&max]);
        ok(&format!(" {max}."), &[&max]);
        let over = format!("b{max}");
        let e = err(&format!(" x.org,{over}"));
        // 64-char labels are caught too, but the length check comes first here.
        assert!(matches!(e, AtrnSyntaxError::TooLong { .. }), "{e:?}");
        let over = format!("b.{max}");
        assert!(matches!(
            err(&format!(" {over}")),
            AtrnSyntaxError::TooLong { .. }
        ));
    }

    #[test]
    fn messages_name_the_element_and_are_bounded() {
        let e = err(" a.org,a_b.org");
        assert_eq!(e.to_string(), "illegal character in domain \"a_b.org\"");
        assert_eq!(
            err(" localhost").to_string(),
            "\"localhost\" is not a fully qualified domain name"
        );
        assert_eq!(
            err(" a.org,,b.org").to_string(),
            "empty domain in the ATRN list (element 2)"
        );
        let huge = format!(" {}_", "x".repeat(10_000));
        let msg = err(&huge).to_string();
        assert!(msg.len() < 120, "{msg}");
        assert!(msg.contains("..."));
        assert!(msg.bytes().all(|b| b.is_ascii_graphic() || b == b' '));
    }

    #[test]
    fn first_error_is_reported() {
        assert!(matches!(
            err(" localhost,a_b.org"),
            AtrnSyntaxError::SingleLabel { .. }
        ));
    }
}
