//! The SMTP envelope as the protocol machines see it, and the ESMTP parameters we carry.
//!
//! Parameters are kept as canonical text ("BODY=8BITMIME SMTPUTF8", "NOTIFY=FAILURE ORCPT=…")
//! so the store stays a dumb holder of strings and the delivering client can pass each one on
//! only when the peer offers the matching extension (RFC 3461 §5.2.1, RFC 6152, RFC 6531).

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

/// The domain of an address, lower-cased; `None` without an `@`.
pub fn address_domain(address: &str) -> Option<String> {
    let (_, d) = address.rsplit_once('@')?;
    let d = d.trim_end_matches('.');
    (!d.is_empty()).then(|| d.to_ascii_lowercase())
}

/// Find `KEY` (case-insensitive) in a canonical parameter string; `Some("")` for a flag.
pub fn param<'a>(params: &'a str, key: &str) -> Option<&'a str> {
    params.split(' ').find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        k.eq_ignore_ascii_case(key).then_some(v)
    })
}

/// MAIL parameters we advertise and therefore keep; anything else was refused with 555.
pub fn mail_params_text(m: &MailFrom<std::borrow::Cow<'_, str>>) -> Result<String, &'static str> {
    use smtp_proto::*;
    let supported = MAIL_BODY_7BIT | MAIL_BODY_8BITMIME | MAIL_SMTPUTF8 | MAIL_RET_FULL | MAIL_RET_HDRS;
    if m.flags & !supported != 0
        || m.trans_id.is_some()
        || m.by != 0
        || m.solicit.is_some()
        || m.mtrk.is_some()
        || m.hold_for != 0
        || m.hold_until != 0
        || m.mt_priority != 0
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
    // RET/ENVID are DSN parameters; kept for the DSN work and for DSN-capable customers.
    if m.flags & MAIL_RET_FULL != 0 {
        p.push("RET=FULL".to_string());
    } else if m.flags & MAIL_RET_HDRS != 0 {
        p.push("RET=HDRS".to_string());
    }
    if let Some(e) = &m.env_id {
        p.push(format!("ENVID={}", xtext(e)));
    }
    // AUTH= is accepted from anyone and treated as AUTH=<> (RFC 4954 §5): not kept.
    Ok(p.join(" "))
}

pub fn rcpt_params_text(r: &RcptTo<std::borrow::Cow<'_, str>>) -> Result<String, &'static str> {
    use smtp_proto::*;
    let notify = RCPT_NOTIFY_SUCCESS | RCPT_NOTIFY_FAILURE | RCPT_NOTIFY_DELAY | RCPT_NOTIFY_NEVER;
    if r.flags & !notify != 0 || r.rrvs != 0 {
        return Err("parameter not supported");
    }
    let mut p = Vec::new();
    if r.flags & notify != 0 {
        let mut n = Vec::new();
        if r.flags & RCPT_NOTIFY_NEVER != 0 {
            n.push("NEVER");
        } else {
            for (f, s) in [
                (RCPT_NOTIFY_SUCCESS, "SUCCESS"),
                (RCPT_NOTIFY_FAILURE, "FAILURE"),
                (RCPT_NOTIFY_DELAY, "DELAY"),
            ] {
                if r.flags & f != 0 {
                    n.push(s);
                }
            }
        }
        p.push(format!("NOTIFY={}", n.join(",")));
    }
    if let Some(o) = &r.orcpt {
        // smtp-proto hands back the decoded address; keep it as rfc822;xtext.
        p.push(format!("ORCPT=rfc822;{}", xtext(o)));
    }
    Ok(p.join(" "))
}

/// RFC 3461 §4 xtext encoding.
pub fn xtext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
