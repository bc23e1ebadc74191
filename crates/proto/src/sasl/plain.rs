//! PLAIN [RFC 4616] and LOGIN [draft-murchison-sasl-login-00] helpers, sans-I/O.
//!
//! ```text
//! PLAIN:  C: base64([authzid] NUL authcid NUL passwd)        (initial response, or after "334 ")
//! LOGIN:  S: 334 VXNlcm5hbWU6   C: base64(user)
//!         S: 334 UGFzc3dvcmQ6   C: base64(password)
//! ```
//!
//! The functions take and return *decoded* messages; base64 and the SMTP lines are the caller's.
//! The server checks the password with [`super::scram::verify_password`] against the stored SCRAM
//! verifier: no plaintext is kept anywhere.
//!
//! Invariants, and why:
//!
//! * **Every field of up to 255 octets is accepted** (RFC 4616 §2 MUST), and so is anything up to
//!   [`MAX_FIELD_LEN`]; longer fields are refused so a peer cannot make us prepare megabytes.
//! * **Exactly three fields, no NUL inside one, UTF-8** (RFC 4616 §2 grammar).
//! * **SASLprep** [RFC 4013] is applied to the user name and the password (RFC 4616 §2 RECOMMENDS it
//!   for comparison; RFC 4954 §4 says a failing or empty preparation fails the authentication), so
//!   the user name returned is the one to look up, and the password is the one
//!   [`super::scram::verify_password`] would derive anyway (preparation is idempotent).
//! * **No proxy authorization**: a non-empty authzid must, prepared, equal the prepared authcid
//!   (RFC 4616 §2: acting as another identity needs explicit rights, which nobody has here).
//! * **Empty user name or password fails**, before any store lookup.
//! * **LOGIN** answers are single fields with the same rules ([`parse_login_user`],
//!   [`parse_login_password`]); the challenges are the de-facto `Username:` / `Password:` texts,
//!   which draft-murchison-sasl-login-00 §2 allows. An initial response on `AUTH LOGIN` is the
//!   user name (common practice, not in the draft; docs/protocol-decisions.md).
//! * `Debug` of [`PlainCredentials`] never shows the password.

/// The PLAIN mechanism name.
pub const MECHANISM: &str = "PLAIN";
/// The LOGIN mechanism name.
pub const LOGIN_MECHANISM: &str = "LOGIN";
/// Longest field accepted (RFC 4616 requires at least 255 octets).
pub const MAX_FIELD_LEN: usize = 1024;
/// The first LOGIN challenge, base64 of `Username:`.
pub const LOGIN_USER_CHALLENGE: &str = "VXNlcm5hbWU6";
/// The second LOGIN challenge, base64 of `Password:`.
pub const LOGIN_PASS_CHALLENGE: &str = "UGFzc3dvcmQ6";

/// Why a PLAIN message or a LOGIN answer is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PlainError {
    /// Not exactly three NUL-separated fields (PLAIN), or a NUL in a LOGIN answer.
    #[error("PLAIN message is not [authzid] NUL authcid NUL passwd")]
    Fields,
    /// A field longer than [`MAX_FIELD_LEN`].
    #[error("SASL field longer than {MAX_FIELD_LEN} octets")]
    TooLong,
    /// A field that is not UTF-8.
    #[error("SASL field is not UTF-8")]
    NotUtf8,
    /// An empty user name.
    #[error("empty user name")]
    EmptyUser,
    /// An empty password.
    #[error("empty password")]
    EmptyPassword,
    /// A user name, password or authzid that SASLprep refuses or turns into the empty string.
    #[error("SASLprep failed or gave an empty string")]
    SaslPrep,
    /// An authzid other than the user name (proxy authorization is not supported).
    #[error("authorization identity differs from the user name")]
    AuthzidNotAllowed,
}

/// The prepared user name and password of a PLAIN message or a LOGIN exchange.
#[derive(Clone, PartialEq, Eq)]
pub struct PlainCredentials {
    /// The SASLprep'ed authentication identity: the name to look up.
    pub user: String,
    /// The SASLprep'ed password.
    pub password: String,
}

impl std::fmt::Debug for PlainCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlainCredentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Parses a decoded PLAIN message `[authzid] NUL authcid NUL passwd`.
pub fn parse_plain(decoded: &[u8]) -> Result<PlainCredentials, PlainError> {
    let mut fields = decoded.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(PlainError::Fields);
    };
    let authzid = field(authzid)?;
    let user = prepare(field(authcid)?, PlainError::EmptyUser)?;
    let password = prepare(field(password)?, PlainError::EmptyPassword)?;
    if !authzid.is_empty() && prepare(authzid, PlainError::SaslPrep)? != user {
        return Err(PlainError::AuthzidNotAllowed);
    }
    Ok(PlainCredentials { user, password })
}

/// The client's PLAIN message `NUL user NUL password` (empty authzid), before base64.
pub fn plain_response(user: &str, password: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(2 + user.len() + password.len());
    b.push(0);
    b.extend_from_slice(user.as_bytes());
    b.push(0);
    b.extend_from_slice(password.as_bytes());
    b
}

/// Parses the decoded answer to [`LOGIN_USER_CHALLENGE`] (or `AUTH LOGIN`'s initial response):
/// the prepared user name.
pub fn parse_login_user(decoded: &[u8]) -> Result<String, PlainError> {
    prepare(login_field(decoded)?, PlainError::EmptyUser)
}

/// Parses the decoded answer to [`LOGIN_PASS_CHALLENGE`]: the prepared password.
pub fn parse_login_password(decoded: &[u8]) -> Result<String, PlainError> {
    prepare(login_field(decoded)?, PlainError::EmptyPassword)
}

fn login_field(decoded: &[u8]) -> Result<&str, PlainError> {
    if decoded.contains(&0) {
        return Err(PlainError::Fields);
    }
    field(decoded)
}

/// One field: bounded, UTF-8.
fn field(b: &[u8]) -> Result<&str, PlainError> {
    if b.len() > MAX_FIELD_LEN {
        return Err(PlainError::TooLong);
    }
    std::str::from_utf8(b).map_err(|_| PlainError::NotUtf8)
}

/// SASLprep; `empty` if the field itself is empty, [`PlainError::SaslPrep`] if preparation fails
/// or empties it.
fn prepare(s: &str, empty: PlainError) -> Result<String, PlainError> {
    if s.is_empty() {
        return Err(empty);
    }
    match stringprep::saslprep(s) {
        Ok(p) if !p.is_empty() => Ok(p.into_owned()),
        _ => Err(PlainError::SaslPrep),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sasl::scram::{verify_password, ScramVerifier};
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine;
    use proptest::prelude::*;

    fn creds(user: &str, password: &str) -> PlainCredentials {
        PlainCredentials {
            user: user.into(),
            password: password.into(),
        }
    }

    #[test]
    fn rfc4616_examples() {
        assert_eq!(
            parse_plain(b"\0tim\0tanstaaftanstaaf"),
            Ok(creds("tim", "tanstaaftanstaaf"))
        );
        // "Ursel" acting as "Kurt" needs proxy rights nobody has here.
        assert_eq!(
            parse_plain(b"Ursel\0Kurt\0xipj3plmq"),
            Err(PlainError::AuthzidNotAllowed)
        );
        assert_eq!(
            parse_plain(b"Kurt\0Kurt\0xipj3plmq"),
            Ok(creds("Kurt", "xipj3plmq"))
        );
    }

    #[test]
    fn field_lengths() {
        let f255 = "u".repeat(255);
        let msg = format!("{f255}\0{f255}\0{f255}");
        assert_eq!(parse_plain(msg.as_bytes()), Ok(creds(&f255, &f255)));
        // 255 octets of multi-octet UTF-8.
        let u255 = format!("{}a", "é".repeat(127));
        assert_eq!(u255.len(), 255);
        let msg = format!("{u255}\0{u255}\0{u255}");
        assert_eq!(parse_plain(msg.as_bytes()), Ok(creds(&u255, &u255)));
        let max = "p".repeat(MAX_FIELD_LEN);
        assert_eq!(
            parse_plain(format!("\0u\0{max}").as_bytes()),
            Ok(creds("u", &max))
        );
        let over = "p".repeat(MAX_FIELD_LEN + 1);
        for msg in [
            format!("\0u\0{over}"),
            format!("\0{over}\0p"),
            format!("{over}\0u\0p"),
        ] {
            assert_eq!(parse_plain(msg.as_bytes()), Err(PlainError::TooLong));
        }
        assert_eq!(parse_login_user(over.as_bytes()), Err(PlainError::TooLong));
        assert_eq!(parse_login_password(max.as_bytes()), Ok(max.clone()));
    }

    #[test]
    fn structure() {
        let p = parse_plain;
        assert_eq!(p(b""), Err(PlainError::Fields));
        assert_eq!(p(b"user"), Err(PlainError::Fields));
        assert_eq!(p(b"\0user"), Err(PlainError::Fields));
        assert_eq!(p(b"\0user\0pass\0"), Err(PlainError::Fields));
        assert_eq!(p(b"\0us\0er\0pass"), Err(PlainError::Fields));
        assert_eq!(p(b"\0\0"), Err(PlainError::EmptyUser));
        assert_eq!(p(b"\0\0pass"), Err(PlainError::EmptyUser));
        assert_eq!(p(b"\0user\0"), Err(PlainError::EmptyPassword));
        assert_eq!(p(b"\0us\xffer\0pass"), Err(PlainError::NotUtf8));
        assert_eq!(p(b"\0user\0pa\xc3"), Err(PlainError::NotUtf8));
        assert_eq!(p(b"\xff\0user\0pass"), Err(PlainError::NotUtf8));
        // Spaces are ordinary characters.
        assert_eq!(p(b"\0Tim Smith\0a b "), Ok(creds("Tim Smith", "a b ")));
    }

    #[test]
    fn saslprep() {
        let p = parse_plain;
        // RFC 4013 §3: soft hyphen maps to nothing; U+2168 normalizes to "IX"; U+00A0 to space.
        assert_eq!(p("\0I\u{ad}X\0\u{2168}".as_bytes()), Ok(creds("IX", "IX")));
        assert_eq!(p("\0user\0a\u{a0}b".as_bytes()), Ok(creds("user", "a b")));
        // Prohibited characters and preparation to the empty string fail.
        assert_eq!(p(b"\0user\0pa\x07ss"), Err(PlainError::SaslPrep));
        assert_eq!(p(b"\0user\0pass\r\n"), Err(PlainError::SaslPrep));
        assert_eq!(p(b"\0us\ter\0pass"), Err(PlainError::SaslPrep));
        assert_eq!(p("\0\u{ad}\0pass".as_bytes()), Err(PlainError::SaslPrep));
        assert_eq!(p("\0user\0\u{ad}".as_bytes()), Err(PlainError::SaslPrep));
        assert_eq!(p("\u{7}\0user\0pass".as_bytes()), Err(PlainError::SaslPrep));
        // Bidi rule: RandALCat and LCat mixed.
        assert_eq!(p("\0user\0\u{5d0}a".as_bytes()), Err(PlainError::SaslPrep));
        // authzid is compared after preparation.
        assert_eq!(p("\u{2168}\0IX\0pass".as_bytes()), Ok(creds("IX", "pass")));
        assert_eq!(p(b"ix\0IX\0pass"), Err(PlainError::AuthzidNotAllowed));
    }

    #[test]
    fn response_round_trip() {
        for (u, pw) in [
            ("tim", "tanstaaftanstaaf"),
            ("jürgen@example.org", "pässwörd"),
            ("a b", "c d"),
        ] {
            let r = plain_response(u, pw);
            assert_eq!(r[0], 0);
            assert_eq!(parse_plain(&r), Ok(creds(u, pw)));
        }
        assert_eq!(plain_response("tim", "x"), b"\0tim\0x");
        assert_eq!(
            B64.encode(plain_response("tim", "tanstaaftanstaaf")),
            "AHRpbQB0YW5zdGFhZnRhbnN0YWFm"
        );
    }

    #[test]
    fn login() {
        assert_eq!(B64.decode(LOGIN_USER_CHALLENGE).unwrap(), b"Username:");
        assert_eq!(B64.decode(LOGIN_PASS_CHALLENGE).unwrap(), b"Password:");
        assert_eq!(parse_login_user(b"tim"), Ok("tim".into()));
        assert_eq!(
            parse_login_password(b"tanstaaftanstaaf"),
            Ok("tanstaaftanstaaf".into())
        );
        assert_eq!(parse_login_user(b""), Err(PlainError::EmptyUser));
        assert_eq!(parse_login_password(b""), Err(PlainError::EmptyPassword));
        assert_eq!(parse_login_user(b"t\0m"), Err(PlainError::Fields));
        assert_eq!(parse_login_password(b"\0"), Err(PlainError::Fields));
        assert_eq!(parse_login_user(b"\xff"), Err(PlainError::NotUtf8));
        assert_eq!(parse_login_user("I\u{ad}X".as_bytes()), Ok("IX".into()));
        assert_eq!(
            parse_login_password("\u{ad}".as_bytes()),
            Err(PlainError::SaslPrep)
        );
        assert_eq!(parse_login_password(b"pass\n"), Err(PlainError::SaslPrep));
        assert_eq!(MECHANISM, "PLAIN");
        assert_eq!(LOGIN_MECHANISM, "LOGIN");
    }

    #[test]
    fn against_stored_verifier() {
        let v = ScramVerifier::from_password("IX", b"0123456789abcdef", 4096).unwrap();
        let c = parse_plain("\0user\0I\u{ad}X".as_bytes()).unwrap();
        assert!(verify_password(&v, &c.password));
        let c = parse_plain(b"\0user\0ix").unwrap();
        assert!(!verify_password(&v, &c.password));
        assert!(verify_password(
            &v,
            &parse_login_password("\u{2168}".as_bytes()).unwrap()
        ));
    }

    #[test]
    fn debug_hides_password() {
        let d = format!("{:?}", creds("tim", "secret"));
        assert_eq!(d, "PlainCredentials { user: \"tim\", .. }");
        assert!(!d.contains("secret"));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..1100)) {
            if let Ok(c) = parse_plain(&b) {
                prop_assert!(!c.user.is_empty() && !c.password.is_empty());
            }
            let _ = parse_login_user(&b);
            let _ = parse_login_password(&b);
        }

        #[test]
        fn well_formed_ascii_round_trips(u in "[!-~]{1,255}", pw in "[ -~]{1,255}") {
            prop_assert_eq!(parse_plain(&plain_response(&u, &pw)), Ok(creds(&u, &pw)));
            let with_authzid = format!("{u}\0{u}\0{pw}");
            prop_assert_eq!(parse_plain(with_authzid.as_bytes()), Ok(creds(&u, &pw)));
        }
    }
}
