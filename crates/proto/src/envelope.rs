//! The SMTP envelope as the protocol machines see it, and the ESMTP parameters we carry.
//!
//! Parameters are kept as canonical text ("BODY=8BITMIME SMTPUTF8", "NOTIFY=FAILURE ORCPT=…")
//! so the store stays a dumb holder of strings and the delivering client can pass each one on
//! only when the peer offers the matching extension (RFC 3461 §5.2.1, RFC 6152, RFC 6531).

use crate::domain::Domain;
use smtp_proto::{MailFrom, RcptTo};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailEnvelope {
    /// Reverse-path without brackets; empty for the null sender.
    pub mail_from: String,
    pub mail_params: String,
    pub recipients: Vec<RcptEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptEntry {
    pub address: String,
    pub params: String,
}

/// The domain of an address in its one spelling ([`Domain::of_address`]); `None` without an `@`.
pub fn address_domain(address: &str) -> Option<String> {
    Domain::of_address(address).map(Domain::into_string)
}

/// Find `KEY` (case-insensitive) in a canonical parameter string; `Some("")` for a flag.
pub fn param<'a>(params: &'a str, key: &str) -> Option<&'a str> {
    params.split(' ').find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        k.eq_ignore_ascii_case(key).then_some(v)
    })
}

/// MAIL parameters we advertise and therefore keep; anything else was refused with 555.
/// The DSN parameters were split off the line beforehand ([`split_dsn_params`]) and come in
/// `dsn`.
pub fn mail_params_text(
    m: &MailFrom<std::borrow::Cow<'_, str>>,
    dsn: &DsnParams,
) -> Result<String, &'static str> {
    use smtp_proto::*;
    let supported = MAIL_BODY_7BIT | MAIL_BODY_8BITMIME | MAIL_SMTPUTF8;
    if m.flags & !supported != 0
        || m.trans_id.is_some()
        || m.by != 0
        || m.solicit.is_some()
        || m.mtrk.is_some()
        || m.hold_for != 0
        || m.hold_until != 0
        || m.mt_priority != 0
        || m.env_id.is_some()
    {
        return Err("parameter not supported");
    }
    let mut p = Vec::new();
    if m.flags & MAIL_BODY_8BITMIME != 0 {
        p.push("BODY=8BITMIME".to_string());
    } else if m.flags & MAIL_BODY_7BIT != 0 {
        p.push("BODY=7BIT".to_string());
    }
    if m.flags & MAIL_SMTPUTF8 != 0 {
        p.push("SMTPUTF8".to_string());
    }
    // RET and ENVID are kept for the DSN we may owe and passed on unchanged to DSN-capable
    // customers (RFC 3461 §5.2.1).
    match dsn.ret {
        Some(Ret::Full) => p.push("RET=FULL".to_string()),
        Some(Ret::Hdrs) => p.push("RET=HDRS".to_string()),
        None => {}
    }
    if let Some(e) = &dsn.envid {
        p.push(format!("ENVID={e}"));
    }
    // AUTH= is accepted from anyone and treated as AUTH=<> (RFC 4954 §5): not kept.
    Ok(p.join(" "))
}

/// RCPT parameters we keep (NOTIFY and ORCPT, from `dsn`); anything else was refused with 555.
pub fn rcpt_params_text(
    r: &RcptTo<std::borrow::Cow<'_, str>>,
    dsn: &DsnParams,
) -> Result<String, &'static str> {
    if r.flags != 0 || r.rrvs != 0 || r.orcpt.is_some() {
        return Err("parameter not supported");
    }
    let mut p = Vec::new();
    if let Some(n) = &dsn.notify {
        p.push(format!("NOTIFY={n}"));
    }
    if let Some(o) = &dsn.orcpt {
        p.push(format!("ORCPT={o}"));
    }
    Ok(p.join(" "))
}

/// RFC 3461 §4 xtext encoding.
pub fn xtext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if is_xchar(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// `xchar` of RFC 3461 §4: printable ASCII except `+` and `=`.
fn is_xchar(b: u8) -> bool {
    (b'!'..=b'~').contains(&b) && b != b'+' && b != b'='
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XtextError {
    #[error("'+' must be followed by two hexadecimal digits")]
    BadHexchar,
    #[error("character {0:?} must be encoded as +XX")]
    BadChar(char),
    #[error("the decoded value is not UTF-8")]
    NotUtf8,
}

/// RFC 3461 §4 xtext decoding. `+` must be followed by two hex digits (upper case per the ABNF;
/// lower case is accepted too, as smtp-proto and most MTAs do); every other character must be
/// an `xchar`. The decoded octets must be UTF-8 (callers that need ASCII check that themselves).
pub fn xtext_decode(s: &str) -> Result<String, XtextError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                let hex = b.get(i + 1..i + 3).ok_or(XtextError::BadHexchar)?;
                let v = std::str::from_utf8(hex)
                    .ok()
                    .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(XtextError::BadHexchar)?;
                out.push(v);
                i += 3;
            }
            c if is_xchar(c) => {
                out.push(c);
                i += 1;
            }
            _ => {
                let ch = s[i..].chars().next().unwrap_or('?');
                return Err(XtextError::BadChar(ch));
            }
        }
    }
    String::from_utf8(out).map_err(|_| XtextError::NotUtf8)
}

/// RFC 3461 §4.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    Full,
    Hdrs,
}

/// The DSN parameters of one MAIL or RCPT command, as they will be stored and passed on:
/// ENVID and ORCPT exactly as received (RFC 3461 §5.2.1 says to relay them unchanged), RET and
/// NOTIFY in canonical upper case.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DsnParams {
    pub ret: Option<Ret>,
    /// xtext, as received.
    pub envid: Option<String>,
    /// `NEVER`, or a non-empty subset of `SUCCESS,FAILURE,DELAY` in that order.
    pub notify: Option<String>,
    /// `addr-type;xtext`, as received.
    pub orcpt: Option<String>,
}

impl DsnParams {
    pub fn is_empty(&self) -> bool {
        *self == DsnParams::default()
    }
}

/// Why a DSN parameter was refused. The text goes into the `501 5.5.4` reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DsnParamError {
    #[error("{0} given more than once")]
    Repeated(&'static str),
    #[error("RET must be FULL or HDRS")]
    Ret,
    #[error("ENVID must be 1 to 100 characters of xtext encoding printable US-ASCII")]
    Envid,
    #[error("NOTIFY must be NEVER or a comma list of SUCCESS, FAILURE and DELAY")]
    Notify,
    #[error("NOTIFY=NEVER cannot be combined with other values")]
    NeverCombined,
    #[error("ORCPT must be addr-type;xtext, at most 500 characters")]
    Orcpt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnVerb {
    Mail,
    Rcpt,
}

/// Longest ENVID and ORCPT values, counted as sent (xtext) [RFC 3461 §4.4, §4.2, §5.4].
pub const MAX_ENVID: usize = 100;
pub const MAX_ORCPT: usize = 500;

/// Take the DSN parameters (RET/ENVID for MAIL, NOTIFY/ORCPT for RCPT) off a command line and
/// check them: repeats and invalid values are errors (RFC 3461 §4.5, §5.1). Returns the line
/// without them, for smtp-proto to parse the rest.
///
/// Why not leave this to smtp-proto: it silently merges repeats (`RET=HDRS RET=FULL` sets both
/// flags, a second ENVID or ORCPT replaces the first, `NOTIFY=NEVER,FAILURE` passes), accepts
/// only the `rfc822` ORCPT type (RFC 6533 adds `utf-8`, which an SMTPUTF8 + DSN server must
/// take), and hands back decoded values while RFC 3461 §5.2.1 wants them relayed unchanged.
///
/// A line whose path cannot be found (no `<`, no closing `>`) is returned unchanged, for
/// smtp-proto to refuse with its own syntax error.
pub fn split_dsn_params(line: &[u8], verb: DsnVerb) -> Result<(Vec<u8>, DsnParams), DsnParamError> {
    let mut dsn = DsnParams::default();
    let Some(path_end) = path_end(line) else {
        return Ok((line.to_vec(), dsn));
    };
    let (head, tail) = line.split_at(path_end);
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut removed = false;
    for tok in tail.split(|&b| b == b' ').filter(|t| !t.is_empty()) {
        let (key, value) = match tok.iter().position(|&b| b == b'=') {
            Some(i) => (&tok[..i], Some(&tok[i + 1..])),
            None => (tok, None),
        };
        let key = String::from_utf8_lossy(key).to_ascii_uppercase();
        // A value that is not UTF-8 can be no valid DSN parameter; for other keywords `value`
        // is not looked at.
        let value = value
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::to_string);
        match (verb, key.as_str()) {
            (DsnVerb::Mail, "RET") => {
                if dsn.ret.is_some() {
                    return Err(DsnParamError::Repeated("RET"));
                }
                dsn.ret = Some(match value.as_deref().map(str::to_ascii_uppercase).as_deref() {
                    Some("FULL") => Ret::Full,
                    Some("HDRS") => Ret::Hdrs,
                    _ => return Err(DsnParamError::Ret),
                });
            }
            (DsnVerb::Mail, "ENVID") => {
                if dsn.envid.is_some() {
                    return Err(DsnParamError::Repeated("ENVID"));
                }
                let v = value.ok_or(DsnParamError::Envid)?;
                // RFC 3461 §4.4: printable US-ASCII before encoding, at most 100 characters.
                let ok = !v.is_empty()
                    && v.len() <= MAX_ENVID
                    && xtext_decode(&v).is_ok_and(|d| d.bytes().all(|b| (0x20..0x7f).contains(&b)));
                if !ok {
                    return Err(DsnParamError::Envid);
                }
                dsn.envid = Some(v);
            }
            (DsnVerb::Rcpt, "NOTIFY") => {
                if dsn.notify.is_some() {
                    return Err(DsnParamError::Repeated("NOTIFY"));
                }
                dsn.notify = Some(canonical_notify(&value.ok_or(DsnParamError::Notify)?)?);
            }
            (DsnVerb::Rcpt, "ORCPT") => {
                if dsn.orcpt.is_some() {
                    return Err(DsnParamError::Repeated("ORCPT"));
                }
                let v = value.ok_or(DsnParamError::Orcpt)?;
                if v.len() > MAX_ORCPT || decode_orcpt(&v).is_none() {
                    return Err(DsnParamError::Orcpt);
                }
                dsn.orcpt = Some(v);
            }
            _ => {
                kept.push(tok);
                continue;
            }
        }
        removed = true;
    }
    if !removed {
        return Ok((line.to_vec(), dsn));
    }
    let mut out = head.to_vec();
    for t in kept {
        out.push(b' ');
        out.extend_from_slice(t);
    }
    Ok((out, dsn))
}

/// Index just past the `>` closing the path of `MAIL FROM:<…>` / `RCPT TO:<…>`, honouring
/// quoted strings and backslash escapes in the local part (`<"a>b"@x>`).
fn path_end(line: &[u8]) -> Option<usize> {
    let colon = line.iter().position(|&b| b == b':')?;
    let mut i = colon + 1;
    while line.get(i) == Some(&b' ') {
        i += 1;
    }
    if line.get(i) != Some(&b'<') {
        return None;
    }
    let mut quoted = false;
    i += 1;
    while i < line.len() {
        match line[i] {
            b'\\' => i += 1,
            b'"' => quoted = !quoted,
            b'>' if !quoted => return Some(i + 1),
            _ => {}
        }
        i += 1;
    }
    None
}

/// RFC 3461 §4.1: `NEVER` alone, or a comma list of SUCCESS/FAILURE/DELAY, case-insensitive.
fn canonical_notify(v: &str) -> Result<String, DsnParamError> {
    let (mut never, mut s, mut f, mut d) = (false, false, false, false);
    for item in v.split(',') {
        match item.to_ascii_uppercase().as_str() {
            "NEVER" => never = true,
            "SUCCESS" => s = true,
            "FAILURE" => f = true,
            "DELAY" => d = true,
            _ => return Err(DsnParamError::Notify),
        }
    }
    if never {
        return if s || f || d {
            Err(DsnParamError::NeverCombined)
        } else {
            Ok("NEVER".into())
        };
    }
    let list: Vec<&str> = [(s, "SUCCESS"), (f, "FAILURE"), (d, "DELAY")]
        .into_iter()
        .filter_map(|(on, k)| on.then_some(k))
        .collect();
    Ok(list.join(","))
}

/// Decode an ORCPT value `addr-type;xtext` into `addr-type;address` (RFC 3461 §4.2). The
/// `rfc822` type must decode to printable US-ASCII (§4.2). The `utf-8` type is not xtext but
/// `utf-8-addr-xtext` / `utf-8-addr-unitext` (RFC 6533 §3): printable ASCII except `\`, `+`
/// and `=`, raw UTF-8, and `\x{HEX}` escapes, which are expanded. `None` when malformed.
pub fn decode_orcpt(v: &str) -> Option<String> {
    let (ty, x) = v.split_once(';')?;
    let atext = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&c);
    if ty.is_empty() || !ty.bytes().all(atext) || x.is_empty() {
        return None;
    }
    let addr = if ty.eq_ignore_ascii_case("utf-8") {
        decode_utf8_addr(x)?
    } else {
        let a = xtext_decode(x).ok()?;
        if ty.eq_ignore_ascii_case("rfc822") && !a.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return None;
        }
        a
    };
    Some(format!("{ty};{addr}"))
}

/// RFC 6533 §3 `utf-8-addr-unitext` (which includes `utf-8-addr-xtext`): QCHAR, raw UTF-8 and
/// `EmbeddedUnicodeChar` (`\x{HEXPOINT}`, expanded). `None` for anything else.
fn decode_utf8_addr(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("\\x{") {
            let close = after.find('}')?;
            let hex = &after[..close];
            if hex.is_empty() || hex.len() > 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(char::from_u32(u32::from_str_radix(hex, 16).ok()?)?);
            rest = &after[close + 1..];
            continue;
        }
        let qchar = ('!'..='~').contains(&c) && !matches!(c, '\\' | '+' | '=');
        if c.is_ascii() && !qchar {
            return None;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    // An escape may not smuggle in a control character (or a line end into a DSN field).
    (!out.is_empty() && !out.chars().any(char::is_control)).then_some(out)
}

/// An ORCPT value fit for a transaction without SMTPUTF8: a `utf-8` address holding raw UTF-8
/// (`utf-8-addr-unitext`, allowed only with SMTPUTF8) is re-encoded as `utf-8-addr-xtext`,
/// every character outside QCHAR written `\x{HEX}` (RFC 6533 §3); anything else is returned
/// as it is (RFC 3461 §5.2.1: relayed unchanged).
pub fn orcpt_without_smtputf8(v: &str) -> std::borrow::Cow<'_, str> {
    if v.is_ascii() {
        return v.into();
    }
    let Some((ty, x)) = v.split_once(';') else {
        return v.into();
    };
    let Some(addr) = ty
        .eq_ignore_ascii_case("utf-8")
        .then(|| decode_utf8_addr(x))
        .flatten()
    else {
        return v.into();
    };
    let mut out = format!("{ty};");
    for c in addr.chars() {
        if ('!'..='~').contains(&c) && !matches!(c, '\\' | '+' | '=') {
            out.push(c);
        } else {
            out.push_str(&format!("\\x{{{:X}}}", u32::from(c)));
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orcpt_is_made_ascii_for_a_transaction_without_smtputf8() {
        assert_eq!(
            orcpt_without_smtputf8("utf-8;pelé@exämple.org"),
            "utf-8;pel\\x{E9}@ex\\x{E4}mple.org"
        );
        // Already ASCII (xtext forms, rfc822): untouched.
        for v in ["utf-8;pel\\x{E9}@example.org", "rfc822;a+2Bb@example.org"] {
            assert_eq!(orcpt_without_smtputf8(v), v);
        }
        // The result decodes back to the same address.
        let made = orcpt_without_smtputf8("utf-8;名前@例え.jp");
        assert!(made.is_ascii(), "{made}");
        assert_eq!(decode_orcpt(&made).as_deref(), Some("utf-8;名前@例え.jp"));
    }

    #[test]
    fn domains() {
        assert_eq!(address_domain("Bob@Example.ORG").as_deref(), Some("example.org"));
        assert_eq!(address_domain("\"a@b\"@x.org").as_deref(), Some("x.org"));
        assert_eq!(address_domain("postmaster"), None);
    }

    #[test]
    fn params() {
        assert_eq!(param("BODY=8BITMIME SMTPUTF8", "body"), Some("8BITMIME"));
        assert_eq!(param("BODY=8BITMIME SMTPUTF8", "SMTPUTF8"), Some(""));
        assert_eq!(param("", "SIZE"), None);
        assert_eq!(xtext("a+b=c d"), "a+2Bb+3Dc+20d");
    }

    #[test]
    fn xtext_round_trips_and_refuses_garbage() {
        for s in ["", "QQ314159", "a+b=c d", "caf\u{e9}@x", "~!\"#"] {
            assert_eq!(xtext_decode(&xtext(s)).as_deref(), Ok(s), "{s:?}");
        }
        assert_eq!(xtext_decode("hi+20there").as_deref(), Ok("hi there"));
        assert_eq!(
            xtext_decode("a+2b").as_deref(),
            Ok("a+"),
            "lower-case hex is tolerated"
        );
        assert_eq!(xtext_decode("a+"), Err(XtextError::BadHexchar));
        assert_eq!(xtext_decode("a+4"), Err(XtextError::BadHexchar));
        assert_eq!(xtext_decode("a+ZZ"), Err(XtextError::BadHexchar));
        assert_eq!(
            xtext_decode("+\u{e9}9"),
            Err(XtextError::BadHexchar),
            "no panic inside a char"
        );
        assert_eq!(xtext_decode("a=b"), Err(XtextError::BadChar('=')));
        assert_eq!(xtext_decode("a b"), Err(XtextError::BadChar(' ')));
        assert_eq!(xtext_decode("\u{e9}"), Err(XtextError::BadChar('\u{e9}')));
        assert_eq!(xtext_decode("+C3"), Err(XtextError::NotUtf8));
    }

    fn split(line: &str, verb: DsnVerb) -> Result<(String, DsnParams), DsnParamError> {
        split_dsn_params(line.as_bytes(), verb).map(|(l, d)| (String::from_utf8(l).unwrap(), d))
    }

    #[test]
    fn dsn_params_are_split_off_and_kept_as_received() {
        let (l, d) = split(
            "MAIL FROM:<a@b> SIZE=10 ret=hdrs ENVID=QQ+2B1 BODY=8BITMIME",
            DsnVerb::Mail,
        )
        .unwrap();
        assert_eq!(l, "MAIL FROM:<a@b> SIZE=10 BODY=8BITMIME");
        assert_eq!(d.ret, Some(Ret::Hdrs));
        assert_eq!(d.envid.as_deref(), Some("QQ+2B1"));
        let (l, d) = split(
            "RCPT TO:<b@c> NOTIFY=delay,Failure ORCPT=rfc822;B+40c",
            DsnVerb::Rcpt,
        )
        .unwrap();
        assert_eq!(l, "RCPT TO:<b@c>");
        assert_eq!(d.notify.as_deref(), Some("FAILURE,DELAY"));
        assert_eq!(d.orcpt.as_deref(), Some("rfc822;B+40c"));
        // A quoted local part may hold '>' and spaces: not parameters.
        let (l, d) = split(r#"RCPT TO:<"x> NOTIFY=NEVER"@c> NOTIFY=NEVER"#, DsnVerb::Rcpt).unwrap();
        assert_eq!(l, r#"RCPT TO:<"x> NOTIFY=NEVER"@c>"#);
        assert_eq!(d.notify.as_deref(), Some("NEVER"));
        // Without DSN parameters the line is untouched; MAIL keywords on RCPT are not ours.
        let (l, d) = split("RCPT TO:<b@c>  RET=FULL", DsnVerb::Rcpt).unwrap();
        assert_eq!((l.as_str(), d.is_empty()), ("RCPT TO:<b@c>  RET=FULL", true));
        // No path: left to smtp-proto.
        assert_eq!(
            split("MAIL FROM:a@b RET=FULL", DsnVerb::Mail).unwrap().0,
            "MAIL FROM:a@b RET=FULL"
        );
        // utf-8 ORCPT (RFC 6533 §3).
        let (_, d) = split("RCPT TO:<b@c> ORCPT=utf-8;j\\x{E9}r\u{f4}me@c", DsnVerb::Rcpt).unwrap();
        assert_eq!(
            decode_orcpt(d.orcpt.as_deref().unwrap()).as_deref(),
            Some("utf-8;j\u{e9}r\u{f4}me@c")
        );
    }

    #[test]
    fn repeated_or_invalid_dsn_params_are_errors() {
        use DsnParamError as E;
        let mail = |l: &str| split(l, DsnVerb::Mail).map(|_| ()).unwrap_err();
        let rcpt = |l: &str| split(l, DsnVerb::Rcpt).map(|_| ()).unwrap_err();
        assert_eq!(mail("MAIL FROM:<> RET=HDRS RET=FULL"), E::Repeated("RET"));
        assert_eq!(mail("MAIL FROM:<> RET=FULL RET=FULL"), E::Repeated("RET"));
        assert_eq!(mail("MAIL FROM:<> ENVID=a ENVID=a"), E::Repeated("ENVID"));
        assert_eq!(mail("MAIL FROM:<> RET=ALL"), E::Ret);
        assert_eq!(mail("MAIL FROM:<> RET"), E::Ret);
        assert_eq!(mail("MAIL FROM:<> ENVID="), E::Envid);
        assert_eq!(mail(&format!("MAIL FROM:<> ENVID={}", "x".repeat(101))), E::Envid);
        assert!(split(&format!("MAIL FROM:<> ENVID={}", "x".repeat(100)), DsnVerb::Mail).is_ok());
        assert_eq!(mail("MAIL FROM:<> ENVID=a+0Ab"), E::Envid, "control characters");
        assert_eq!(mail("MAIL FROM:<> ENVID=a+C3+A9"), E::Envid, "non-ASCII");
        assert_eq!(mail("MAIL FROM:<> ENVID=a+G1"), E::Envid);
        assert_eq!(rcpt("RCPT TO:<a@b> NOTIFY=NEVER,FAILURE"), E::NeverCombined);
        assert_eq!(rcpt("RCPT TO:<a@b> NOTIFY=DELAY,never"), E::NeverCombined);
        assert_eq!(rcpt("RCPT TO:<a@b> NOTIFY="), E::Notify);
        assert_eq!(rcpt("RCPT TO:<a@b> NOTIFY=FAILURE,,DELAY"), E::Notify);
        assert_eq!(rcpt("RCPT TO:<a@b> NOTIFY=SOMETIMES"), E::Notify);
        assert_eq!(
            rcpt("RCPT TO:<a@b> NOTIFY=FAILURE NOTIFY=DELAY"),
            E::Repeated("NOTIFY")
        );
        assert_eq!(
            rcpt("RCPT TO:<a@b> ORCPT=rfc822;a ORCPT=rfc822;a"),
            E::Repeated("ORCPT")
        );
        for bad in [
            "ORCPT=",
            "ORCPT=;a@b",
            "ORCPT=rfc822;",
            "ORCPT=rfc822",
            "ORCPT=rf c;x",
            "ORCPT=rfc822;a+C3+A9",
        ] {
            assert_eq!(rcpt(&format!("RCPT TO:<a@b> {bad}")), E::Orcpt, "{bad}");
        }
        assert_eq!(
            rcpt("RCPT TO:<a@b> ORCPT=utf-8;a\\x{D800}"),
            E::Orcpt,
            "surrogate"
        );
        assert_eq!(rcpt("RCPT TO:<a@b> ORCPT=utf-8;a\\x{41"), E::Orcpt);
        assert_eq!(
            rcpt("RCPT TO:<a@b> ORCPT=utf-8;a+40b"),
            E::Orcpt,
            "no xtext in utf-8-addr-xtext"
        );
        assert_eq!(rcpt("RCPT TO:<a@b> ORCPT=utf-8;a\\b"), E::Orcpt);
        assert_eq!(
            rcpt("RCPT TO:<a@b> ORCPT=utf-8;a\\x{A}b"),
            E::Orcpt,
            "control character"
        );
        let bad_utf8 = b"RCPT TO:<a@b> ORCPT=utf-8;\xC3@b";
        assert_eq!(split_dsn_params(bad_utf8, DsnVerb::Rcpt).unwrap_err(), E::Orcpt);
        let long = format!("RCPT TO:<a@b> ORCPT=rfc822;{}@b", "x".repeat(492));
        assert_eq!(rcpt(&long), E::Orcpt, "501 characters");
        assert!(split(
            &format!("RCPT TO:<a@b> ORCPT=rfc822;{}@b", "x".repeat(491)),
            DsnVerb::Rcpt
        )
        .is_ok());
    }
}
