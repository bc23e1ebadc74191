//! CRAM-MD5 [RFC 2195], with a stored secret that is not the password.
//!
//! ```text
//! S: 334 base64("<" random "." time "@" hostname ">")
//! C: base64(user SP lowercase-hex(HMAC-MD5(password, challenge)))
//! ```
//!
//! Invariants, and why:
//!
//! * **The password is never stored.** HMAC-MD5 starts by compressing one 64-octet block,
//!   `key XOR ipad`, into an inner MD5 state and one, `key XOR opad`, into an outer one (the key
//!   being the password, or MD5(password) if longer than 64 octets) [RFC 2104 §2]. [`CramSecret`]
//!   keeps only those two 16-octet chaining values, which is enough to answer any challenge
//!   (RFC 2104 §4 describes this precomputation; RFC 2195 §2 mentions storing the "contexts").
//!   It is still a password equivalent *for CRAM-MD5* and must be protected like one; it merely
//!   does not reveal the password for use elsewhere.
//! * **No hand-rolled MD5**: the states are produced and resumed with `md-5`'s own block-level
//!   core (`Md5Core::update_blocks`, `SerializableState`), and the tests check the result against
//!   the `hmac` crate for keys around the block size.
//! * **The stored format is stable and versioned**: `0x01 ‖ outer ‖ inner`, each state being the
//!   four MD5 words in little-endian order. Without the version byte this is exactly Dovecot's
//!   `{CRAM-MD5}` scheme (`hmac_md5_get_cram_context`), so existing Dovecot/IndiMail hashes can be
//!   imported with [`CramSecret::from_dovecot_hex`]. The resumed state always has absorbed exactly
//!   one block; that count is implied, not stored, so a record cannot carry a wrong one.
//! * **Comparison is constant-time** ([`verify`], via `subtle`), so response timing does not
//!   reveal how many digest octets matched.
//! * **Sans-I/O**: the caller supplies the randomness and the time for the challenge. The
//!   challenge never contains NUL (fetchmail HMACs only up to the first NUL) nor anything but
//!   printable ASCII, so it is HMACed identically by every client.
//! * **Responses**: the last space separates user name and digest (a user name may contain
//!   spaces); upper-case hex is accepted as well **[project]**, and so is one trailing LF or CRLF
//!   inside the base64 (RFC 2645's own example has one; it cannot change the meaning).

use hmac::{Hmac, KeyInit, Mac};
use md5::block_api::Md5Core;
use md5::digest::block_api::{Block, Buffer, CoreProxy, UpdateCore};
use md5::digest::common::hazmat::{SerializableState, SerializedState};
use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

/// Name of the stored-secret scheme.
pub const SCHEME: &str = "cram-md5";

/// Version byte of the format written by [`CramSecret::to_bytes`].
const VERSION: u8 = 1;
/// One MD5 chaining value: four little-endian 32-bit words.
const STATE_LEN: usize = 16;
/// Length of [`CramSecret::to_bytes`].
pub const SECRET_LEN: usize = 1 + 2 * STATE_LEN;
/// MD5 block size, the HMAC key pad length.
const BLOCK_LEN: usize = 64;
const IPAD: u8 = 0x36;
const OPAD: u8 = 0x5c;

/// Errors of stored secrets and client responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CramError {
    /// A stored secret of the wrong length.
    #[error("stored CRAM-MD5 secret has {0} octets, expected {SECRET_LEN}")]
    BadLength(usize),
    /// A stored secret in an unknown format version.
    #[error("stored CRAM-MD5 secret has unknown version {0}")]
    UnknownVersion(u8),
    /// A Dovecot `{CRAM-MD5}` value that is not 64 hex digits.
    #[error("CRAM-MD5 context is not 64 hex digits")]
    BadHex,
    /// The MD5 state could not be restored.
    #[error("stored CRAM-MD5 secret is unusable")]
    BadState,
    /// The response has no space between user name and digest.
    #[error("CRAM-MD5 response has no space between user name and digest")]
    NoSeparator,
    /// The response has an empty user name.
    #[error("CRAM-MD5 response has an empty user name")]
    EmptyUser,
    /// The user name is not UTF-8 or contains control characters.
    #[error("CRAM-MD5 response has an invalid user name")]
    BadUser,
    /// The digest is not 32 hex digits.
    #[error("CRAM-MD5 response digest is not 32 hex digits")]
    BadDigest,
}

/// The HMAC-MD5 inner and outer states after the key blocks: what the server stores instead of
/// the password.
#[derive(Clone)]
pub struct CramSecret {
    inner: Md5Core,
    outer: Md5Core,
}

impl std::fmt::Debug for CramSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CramSecret { .. }")
    }
}

impl CramSecret {
    /// Derives the secret from a password (any octets; longer than 64 → hashed first, as HMAC
    /// requires).
    pub fn from_password(password: &[u8]) -> Self {
        let mut key = [0u8; BLOCK_LEN];
        if password.len() > BLOCK_LEN {
            key[..16].copy_from_slice(&Md5::digest(password));
        } else {
            key[..password.len()].copy_from_slice(password);
        }
        Self {
            inner: absorb_key_block(&key, IPAD),
            outer: absorb_key_block(&key, OPAD),
        }
    }

    /// The stored form: version byte `0x01`, then the outer and the inner state (16 octets each).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(SECRET_LEN);
        b.push(VERSION);
        b.extend_from_slice(&state_bytes(&self.outer));
        b.extend_from_slice(&state_bytes(&self.inner));
        b
    }

    /// Reads the form written by [`CramSecret::to_bytes`].
    pub fn from_bytes(b: &[u8]) -> Result<Self, CramError> {
        if b.len() != SECRET_LEN {
            return Err(CramError::BadLength(b.len()));
        }
        if b[0] != VERSION {
            return Err(CramError::UnknownVersion(b[0]));
        }
        Self::from_contexts(&b[1..])
    }

    /// Imports a Dovecot `{CRAM-MD5}` value (64 hex digits, the scheme prefix removed).
    pub fn from_dovecot_hex(hex: &str) -> Result<Self, CramError> {
        let raw: [u8; 2 * STATE_LEN] = decode_hex(hex.as_bytes()).ok_or(CramError::BadHex)?;
        Self::from_contexts(&raw)
    }

    /// The Dovecot `{CRAM-MD5}` value (64 lower-case hex digits, without the prefix).
    pub fn to_dovecot_hex(&self) -> String {
        hex(&self.to_bytes()[1..])
    }

    /// `outer ‖ inner`, 32 octets.
    fn from_contexts(raw: &[u8]) -> Result<Self, CramError> {
        let (outer, inner) = raw.split_at(STATE_LEN);
        Ok(Self {
            inner: resume(inner)?,
            outer: resume(outer)?,
        })
    }

    /// HMAC-MD5(password, challenge).
    pub fn digest(&self, challenge: &[u8]) -> [u8; 16] {
        let mut h = Md5::compose(self.inner.clone(), Buffer::<Md5Core>::default());
        h.update(challenge);
        let inner = h.finalize();
        let mut h = Md5::compose(self.outer.clone(), Buffer::<Md5Core>::default());
        h.update(inner);
        h.finalize().into()
    }
}

/// A fresh MD5 core after one block of `key XOR pad`.
fn absorb_key_block(key: &[u8; BLOCK_LEN], pad: u8) -> Md5Core {
    let block = Block::<Md5Core>::from(key.map(|b| b ^ pad));
    let mut core = Md5Core::default();
    core.update_blocks(std::slice::from_ref(&block));
    core
}

/// The chaining value of a core that absorbed one block (its serialized form minus the block
/// count).
fn state_bytes(core: &Md5Core) -> [u8; STATE_LEN] {
    let mut s = [0u8; STATE_LEN];
    s.copy_from_slice(&core.serialize()[..STATE_LEN]);
    s
}

/// The inverse of [`state_bytes`]: a core with that chaining value and one block absorbed.
fn resume(state: &[u8]) -> Result<Md5Core, CramError> {
    let mut s = SerializedState::<Md5Core>::default();
    s[..STATE_LEN].copy_from_slice(state);
    s[STATE_LEN..].copy_from_slice(&1u64.to_le_bytes());
    Md5Core::deserialize(&s).map_err(|_| CramError::BadState)
}

/// The challenge `<random.time@hostname>`. Characters of `hostname` other than letters, digits,
/// `-`, `.`, `_`, `[`, `]` and `:` are dropped (so it stays one printable-ASCII msg-id without
/// NUL); an empty result becomes `localhost`.
pub fn make_challenge(random: u64, unix_time: u64, hostname: &str) -> String {
    let host: String = hostname
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '[' | ']' | ':'))
        .collect();
    let host = if host.is_empty() { "localhost" } else { &host };
    format!("<{random}.{unix_time}@{host}>")
}

/// Splits a decoded client response `user SP hex-digest` at its last space.
pub fn parse_response(decoded: &[u8]) -> Result<(String, [u8; 16]), CramError> {
    let line = decoded
        .strip_suffix(b"\r\n")
        .or_else(|| decoded.strip_suffix(b"\n"))
        .unwrap_or(decoded);
    let sp = line
        .iter()
        .rposition(|&b| b == b' ')
        .ok_or(CramError::NoSeparator)?;
    let (user, digest) = (&line[..sp], &line[sp + 1..]);
    let digest = decode_hex(digest).ok_or(CramError::BadDigest)?;
    if user.is_empty() {
        return Err(CramError::EmptyUser);
    }
    let user = std::str::from_utf8(user).map_err(|_| CramError::BadUser)?;
    if user.chars().any(char::is_control) {
        return Err(CramError::BadUser);
    }
    Ok((user.to_owned(), digest))
}

/// Whether `digest` is HMAC-MD5(password, challenge), compared in constant time.
pub fn verify(secret: &CramSecret, challenge: &[u8], digest: &[u8; 16]) -> bool {
    secret.digest(challenge).ct_eq(digest).into()
}

/// The client's response `user SP lowercase-hex(HMAC-MD5(password, challenge))`, before base64.
pub fn client_response(user: &str, password: &[u8], challenge: &[u8]) -> String {
    let digest: [u8; 16] = match <Hmac<Md5> as KeyInit>::new_from_slice(password) {
        Ok(mut mac) => {
            mac.update(challenge);
            mac.finalize().into_bytes().into()
        }
        // HMAC takes keys of any length; this arm only avoids a panic path.
        Err(_) => CramSecret::from_password(password).digest(challenge),
    };
    format!("{user} {}", hex(&digest))
}

fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(char::from(DIGITS[usize::from(x >> 4)]));
        s.push(char::from(DIGITS[usize::from(x & 0xf)]));
    }
    s
}

/// Exactly `2 * N` hex digits, either case.
fn decode_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *o = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    const RFC_SECRET: &[u8] = b"tanstaaftanstaaf";
    const RFC_CHALLENGE: &[u8] = b"<1896.697170952@postoffice.reston.mci.net>";
    const RFC_DIGEST: &str = "b913a602c7eda7a495b4e6e7334d3890";
    const RFC_RESPONSE_B64: &str = "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw";

    fn hmac_md5(key: &[u8], text: &[u8]) -> [u8; 16] {
        let mut mac = <Hmac<Md5> as KeyInit>::new_from_slice(key).unwrap();
        mac.update(text);
        mac.finalize().into_bytes().into()
    }

    #[test]
    fn rfc2195_vector() {
        let secret = CramSecret::from_password(RFC_SECRET);
        let digest = secret.digest(RFC_CHALLENGE);
        assert_eq!(hex(&digest), RFC_DIGEST);
        assert_eq!(hex(&hmac_md5(RFC_SECRET, RFC_CHALLENGE)), RFC_DIGEST);
        assert!(verify(&secret, RFC_CHALLENGE, &digest));

        let response = client_response("tim", RFC_SECRET, RFC_CHALLENGE);
        assert_eq!(response, format!("tim {RFC_DIGEST}"));
        let b64 = base64::engine::general_purpose::STANDARD.encode(&response);
        assert_eq!(b64, RFC_RESPONSE_B64);

        let decoded = base64::engine::general_purpose::STANDARD
            .decode(RFC_RESPONSE_B64)
            .unwrap();
        let (user, got) = parse_response(&decoded).unwrap();
        assert_eq!(user, "tim");
        assert_eq!(got, digest);
        assert!(verify(&secret, RFC_CHALLENGE, &got));
    }

    #[test]
    fn same_as_plain_hmac_for_all_key_lengths() {
        let challenges: [&[u8]; 7] = [
            b"",
            b"x",
            RFC_CHALLENGE,
            &[b'c'; 55],
            &[b'c'; 56],
            &[b'c'; 64],
            &[b'c'; 1000],
        ];
        for len in [0usize, 1, 15, 16, 17, 55, 63, 64, 65, 100, 128, 200] {
            let key: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let secret = CramSecret::from_password(&key);
            let stored = CramSecret::from_bytes(&secret.to_bytes()).unwrap();
            for c in challenges {
                let expected = hmac_md5(&key, c);
                assert_eq!(secret.digest(c), expected, "key {len}, challenge {}", c.len());
                assert_eq!(stored.digest(c), expected, "stored, key {len}");
                assert!(verify(&stored, c, &expected));
                let response = client_response("u", &key, c);
                assert_eq!(response, format!("u {}", hex(&expected)));
            }
        }
    }

    #[test]
    fn verify_rejects_wrong_digests() {
        let secret = CramSecret::from_password(RFC_SECRET);
        let good = secret.digest(RFC_CHALLENGE);
        for i in 0..16 {
            for bit in 0..8 {
                let mut bad = good;
                bad[i] ^= 1 << bit;
                assert!(!verify(&secret, RFC_CHALLENGE, &bad));
            }
        }
        assert!(!verify(&secret, b"<other@challenge>", &good));
        let other = CramSecret::from_password(b"tanstaaftanstaag");
        assert!(!verify(&other, RFC_CHALLENGE, &good));
        // The challenge is HMACed as sent: no trimming, no case folding.
        assert!(!verify(
            &secret,
            b"<1896.697170952@postoffice.reston.mci.net>\n",
            &good
        ));
    }

    #[test]
    fn stored_format() {
        let secret = CramSecret::from_password(RFC_SECRET);
        let b = secret.to_bytes();
        assert_eq!(b.len(), SECRET_LEN);
        assert_eq!(b[0], 1);
        // Deterministic and round-tripping.
        assert_eq!(CramSecret::from_password(RFC_SECRET).to_bytes(), b);
        assert_eq!(CramSecret::from_bytes(&b).unwrap().to_bytes(), b);
        // The password is not in it.
        assert!(!b.windows(RFC_SECRET.len()).any(|w| w == RFC_SECRET));
        assert_eq!(CramSecret::from_bytes(&[]).unwrap_err(), CramError::BadLength(0));
        assert_eq!(
            CramSecret::from_bytes(&b[..32]).unwrap_err(),
            CramError::BadLength(32)
        );
        let mut longer = b.clone();
        longer.push(0);
        assert_eq!(
            CramSecret::from_bytes(&longer).unwrap_err(),
            CramError::BadLength(34)
        );
        let mut v2 = b.clone();
        v2[0] = 2;
        assert_eq!(
            CramSecret::from_bytes(&v2).unwrap_err(),
            CramError::UnknownVersion(2)
        );
        // Any 32 state octets are a usable (if wrong) secret: no panic.
        let junk = CramSecret::from_bytes(&[1u8; SECRET_LEN]).unwrap();
        let _ = junk.digest(b"x");
        assert_eq!(format!("{junk:?}"), "CramSecret { .. }");
    }

    #[test]
    fn dovecot_compatible() {
        // `doveadm pw -s CRAM-MD5 -p password`
        const DOVECOT: &str = "9186d855e11eba527a7a52ca82b313e180d62234f0acc9051b527243d41e2740";
        let secret = CramSecret::from_password(b"password");
        assert_eq!(secret.to_dovecot_hex(), DOVECOT);
        let imported = CramSecret::from_dovecot_hex(&DOVECOT.to_uppercase()).unwrap();
        assert_eq!(imported.to_bytes(), secret.to_bytes());
        assert_eq!(
            imported.digest(RFC_CHALLENGE),
            hmac_md5(b"password", RFC_CHALLENGE)
        );
        assert_eq!(
            CramSecret::from_dovecot_hex(&DOVECOT[1..]).unwrap_err(),
            CramError::BadHex
        );
        assert_eq!(
            CramSecret::from_dovecot_hex(&format!("{}g", &DOVECOT[1..])).unwrap_err(),
            CramError::BadHex
        );
        assert_eq!(CramSecret::from_dovecot_hex("").unwrap_err(), CramError::BadHex);
    }

    #[test]
    fn challenge_format() {
        assert_eq!(
            make_challenge(1896, 697170952, "postoffice.reston.mci.net"),
            "<1896.697170952@postoffice.reston.mci.net>"
        );
        assert_eq!(
            make_challenge(u64::MAX, 0, "mx.example.org"),
            "<18446744073709551615.0@mx.example.org>"
        );
        assert_eq!(make_challenge(1, 2, ""), "<1.2@localhost>");
        assert_eq!(make_challenge(1, 2, "\0\r\n>"), "<1.2@localhost>");
        assert_eq!(make_challenge(1, 2, "a\0b>c <d>.org"), "<1.2@abcd.org>");
        assert_eq!(make_challenge(1, 2, "[192.0.2.1]"), "<1.2@[192.0.2.1]>");
        assert_eq!(make_challenge(1, 2, "bücher.de"), "<1.2@bcher.de>");
        let c = make_challenge(7, 8, "h\0o\u{7f}st");
        assert!(c.bytes().all(|b| b.is_ascii_graphic()));
    }

    #[test]
    fn response_parsing() {
        let d = hex(&hmac_md5(b"k", b"c"));
        let raw = hmac_md5(b"k", b"c");
        let p = |s: &[u8]| parse_response(s);
        assert_eq!(p(format!("tim {d}").as_bytes()), Ok(("tim".into(), raw)));
        assert_eq!(
            p(format!("tim {}", d.to_uppercase()).as_bytes()),
            Ok(("tim".into(), raw))
        );
        // The last space separates: user names with spaces survive.
        assert_eq!(
            p(format!("Tim Smith {d}").as_bytes()),
            Ok(("Tim Smith".into(), raw))
        );
        assert_eq!(
            p(format!("user@example.org {d}").as_bytes()),
            Ok(("user@example.org".into(), raw))
        );
        assert_eq!(p(format!("jürgen {d}").as_bytes()), Ok(("jürgen".into(), raw)));
        // RFC 2645's example carries a trailing LF.
        assert_eq!(p(format!("tim {d}\n").as_bytes()), Ok(("tim".into(), raw)));
        assert_eq!(p(format!("tim {d}\r\n").as_bytes()), Ok(("tim".into(), raw)));
        assert_eq!(p(format!("tim {d}\n\n").as_bytes()), Err(CramError::BadDigest));
        assert_eq!(p(format!("tim {d} ").as_bytes()), Err(CramError::BadDigest));
        assert_eq!(p(d.as_bytes()), Err(CramError::NoSeparator));
        assert_eq!(p(b""), Err(CramError::NoSeparator));
        assert_eq!(p(format!(" {d}").as_bytes()), Err(CramError::EmptyUser));
        assert_eq!(
            p(format!("tim {}", &d[1..]).as_bytes()),
            Err(CramError::BadDigest)
        );
        assert_eq!(p(format!("tim {d}0").as_bytes()), Err(CramError::BadDigest));
        assert_eq!(
            p(format!("tim {}x", &d[1..]).as_bytes()),
            Err(CramError::BadDigest)
        );
        assert_eq!(p(b"tim "), Err(CramError::BadDigest));
        let mut bad_utf8 = b"t\xffm ".to_vec();
        bad_utf8.extend_from_slice(d.as_bytes());
        assert_eq!(p(&bad_utf8), Err(CramError::BadUser));
        assert_eq!(p(format!("t\0m {d}").as_bytes()), Err(CramError::BadUser));
        assert_eq!(p(format!("t\tm {d}").as_bytes()), Err(CramError::BadUser));
        // Non-ASCII where hex digits belong must not panic.
        assert_eq!(p("tim ü".as_bytes()), Err(CramError::BadDigest));
        assert_eq!(
            p(format!("tim {}éé", &d[4..]).as_bytes()),
            Err(CramError::BadDigest)
        );
    }

    #[test]
    fn scheme_name() {
        assert_eq!(SCHEME, "cram-md5");
    }
}
