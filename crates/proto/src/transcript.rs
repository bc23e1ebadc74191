//! Transcript files (see `tests/transcripts/README.md`): one dialogue, replayable both against
//! a machine without sockets and against a running server over a socket. This module only parses
//! them and matches lines; the two runners live in the test suites.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub password: String,
    pub domains: Vec<String>,
    /// Where ETRN delivers this account's mail (`@etrn NAME HOST:PORT`).
    pub etrn_destination: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Client sends these bytes.
    Send(Vec<u8>),
    /// Client answers the last CRAM-MD5 challenge as this account.
    Cram { user: String, password: String },
    /// The server's next line (without CRLF) must match.
    Expect(String),
    /// Reversed session: the local MTA sends these bytes to the customer's relay.
    Local(Vec<u8>),
    /// Reversed session: the relay's next line to the local MTA (without CRLF) must match.
    Relayed(String),
}

#[derive(Debug, Clone, Default)]
pub struct Transcript {
    pub accounts: Vec<Account>,
    pub steps: Vec<Step>,
    /// Reversed session: the local MTA speaks LMTP (`@lmtp`), not SMTP.
    pub lmtp: bool,
}

impl Transcript {
    pub fn parse(text: &str) -> Result<Transcript, String> {
        let mut t = Transcript::default();
        for (n, line) in text.lines().enumerate() {
            let err = |m: &str| format!("line {}: {m}: {line:?}", n + 1);
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("@account ") {
                let f: Vec<&str> = rest.split_whitespace().collect();
                let [name, password, domains] = f[..] else {
                    return Err(err("expected @account NAME PASSWORD DOMAINS"));
                };
                t.accounts.push(Account {
                    name: name.into(),
                    password: password.into(),
                    domains: domains.split(',').map(str::to_string).collect(),
                    etrn_destination: None,
                });
            } else if let Some(rest) = line.strip_prefix("@etrn ") {
                let f: Vec<&str> = rest.split_whitespace().collect();
                let [name, destination] = f[..] else {
                    return Err(err("expected @etrn NAME HOST:PORT"));
                };
                let Some(a) = t.accounts.iter_mut().find(|a| a.name == name) else {
                    return Err(err("@etrn names an account not declared before"));
                };
                a.etrn_destination = Some(destination.to_string());
            } else if let Some(rest) = line.strip_prefix("C: @cram ") {
                let f: Vec<&str> = rest.split_whitespace().collect();
                let [user, password] = f[..] else {
                    return Err(err("expected C: @cram NAME PASSWORD"));
                };
                t.steps.push(Step::Cram {
                    user: user.into(),
                    password: password.into(),
                });
            } else if let Some(rest) = line.strip_prefix("C:") {
                let mut b = expand(rest.strip_prefix(' ').unwrap_or(rest)).into_bytes();
                b.extend_from_slice(b"\r\n");
                t.steps.push(Step::Send(b));
            } else if let Some(rest) = line.strip_prefix("C+ ") {
                t.steps.push(Step::Send(unescape(&expand(rest))));
            } else if let Some(rest) = line.strip_prefix("S: ") {
                t.steps.push(Step::Expect(rest.to_string()));
            } else if line == "@lmtp" {
                t.lmtp = true;
            } else if let Some(rest) = line.strip_prefix("L: ") {
                let mut b = rest.as_bytes().to_vec();
                b.extend_from_slice(b"\r\n");
                t.steps.push(Step::Local(b));
            } else if let Some(rest) = line.strip_prefix("R:") {
                t.steps
                    .push(Step::Relayed(rest.strip_prefix(' ').unwrap_or(rest).to_string()));
            } else {
                return Err(err("unknown directive"));
            }
        }
        Ok(t)
    }

    /// Domain → owning account, for runners that need a lookup.
    pub fn domain_owners(&self) -> BTreeMap<String, String> {
        self.accounts
            .iter()
            .flat_map(|a| {
                a.domains
                    .iter()
                    .map(move |d| (d.to_ascii_lowercase(), a.name.clone()))
            })
            .collect()
    }
}

/// Does `line` (as received, without CRLF) match the expectation `pattern`? A `*` in the
/// pattern stands for any text.
/// Every transcript file in `dir`, by name, in name order; an error names the file. Shared by
/// the replays against the machines and over sockets, so each reads the same files the same way.
pub fn load_dir(dir: &std::path::Path) -> Result<Vec<(String, Transcript)>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("no transcripts in {}", dir.display()));
    }
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&p).map_err(|e| format!("{name}: {e}"))?;
            let t = Transcript::parse(&text).map_err(|e| format!("{name}: {e}"))?;
            Ok((name, t))
        })
        .collect()
}

pub fn matches(pattern: &str, line: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = line.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    for (i, p) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            return rest.ends_with(p);
        }
        match rest.find(p) {
            Some(at) => rest = &rest[at + p.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

/// `{TEXT*N}` → TEXT repeated N times.
fn expand(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}').map(|c| open + c) else {
            break;
        };
        let inner = &rest[open + 1..close];
        match inner
            .rsplit_once('*')
            .and_then(|(t, n)| Some((t, n.parse::<usize>().ok()?)))
        {
            Some((text, n)) => {
                out.push_str(&rest[..open]);
                out.push_str(&text.repeat(n));
            }
            None => out.push_str(&rest[..=close]),
        }
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

fn unescape(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut it = s.bytes();
    while let Some(b) = it.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match it.next() {
            Some(b'r') => out.push(b'\r'),
            Some(b'n') => out.push(b'\n'),
            Some(b'0') => out.push(0),
            Some(b'\\') => out.push(b'\\'),
            Some(o) => out.extend_from_slice(&[b'\\', o]),
            None => out.push(b'\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_expands() {
        let t = Transcript::parse(
            "# c\n@account a pw x.org,y.org\n@etrn a 127.0.0.1:9\nC: NOOP {ab*3}\nC+ A\\r\\n\\0\nS: 250 *\n",
        )
        .unwrap();
        assert_eq!(t.accounts[0].domains, vec!["x.org", "y.org"]);
        assert_eq!(t.accounts[0].etrn_destination.as_deref(), Some("127.0.0.1:9"));
        assert!(Transcript::parse("@etrn nobody 127.0.0.1:9\n").is_err());
        assert_eq!(t.steps[0], Step::Send(b"NOOP ababab\r\n".to_vec()));
        assert_eq!(t.steps[1], Step::Send(b"A\r\n\0".to_vec()));
        assert!(matches("250 *", "250 OK"));
        assert!(!matches("250 OK", "250 OK!"));
        assert!(matches("220 * ready", "220 host ready"));
        assert!(!matches("220 * ready", "220 host ready now"));
        assert!(matches("250-* greets *", "250-h greets c"));
        let t = Transcript::parse("@lmtp\nL: 220 l\nR: LHLO *\nR:\n").unwrap();
        assert!(t.lmtp);
        assert_eq!(t.steps[0], Step::Local(b"220 l\r\n".to_vec()));
        assert_eq!(t.steps[1], Step::Relayed("LHLO *".into()));
        assert_eq!(t.steps[2], Step::Relayed(String::new()));
    }
}
