//! `Customer` (the customer's front half) fed arbitrary provider replies.
//!
//! Input: the common header, then what the provider sends. Flags (octet 0): bit 0 request two
//! domains (else a bare ATRN), bit 1 insist on STARTTLS, bit 2 the connection is TLS from the
//! start (implicit TLS), bit 3 we have a client certificate (EXTERNAL), bit 4 ETRN instead of
//! ATRN (for two domains), bit 5 with ETRN: no password (no AUTH), bit 6 the provider's
//! certificate is verified. The provider may offer
//! SCRAM-SHA-256, CRAM-MD5 and PLAIN. STARTTLS is handled as the driver does
//! (handshake if no input is buffered, else give up); end of stream calls `closed()`. Checks:
//! - no panic; every poll ends in a step; at most `MAX_IDLE_POLLS` polls in a row consume
//!   nothing; output bounded by what was consumed;
//! - with STARTTLS required, nothing but EHLO, STARTTLS and QUIT is sent before the handshake
//!   (no AUTH in plaintext); AUTH PLAIN (a cleartext password) never without TLS, nor over
//!   TLS whose certificate is not verified;
//! - an ETRN session never turns around;
//! - `Turnaround`, `Ended` and `StartTls` are final until answered: polling again gives the same
//!   step and consumes nothing (the bytes after the 250 belong to the SMTP server).

#![no_main]

mod common;

use bytes::BytesMut;
use common::{check_output_bound, feed, Input, Progress};
use libfuzzer_sys::fuzz_target;
use odmr_proto::customer::{Customer, CustomerConfig, CustomerStep, Request};

fuzz_target!(|data: &[u8]| {
    let Input {
        flags, mut chunks, ..
    } = Input::parse(data);
    let starttls = flags & 2 != 0;
    let tls_active = flags & 4 != 0;
    let etrn = flags & 0x10 != 0;
    let mut c = Customer::new(CustomerConfig {
        ehlo_name: "cust.example".into(),
        user: "tim".into(),
        password: if etrn && flags & 0x20 != 0 {
            Vec::new()
        } else {
            b"tanstaaftanstaaf".to_vec()
        },
        request: if etrn { Request::Etrn } else { Request::Atrn },
        domains: if flags & 1 != 0 || etrn {
            vec!["example.org".into(), "example.net".into()]
        } else {
            Vec::new()
        },
        starttls,
        tls_active,
        external: flags & 8 != 0,
        tls_verified: flags & 0x40 != 0,
        nonce: "fuzznonce".into(),
    });

    let mut input = BytesMut::new();
    let mut progress = Progress::default();
    let mut consumed = 0usize;
    let mut out_total = 0usize;
    let mut tls = tls_active;

    loop {
        let before = input.len();
        let step = c.poll(&mut input);
        let after = input.len();
        progress.poll(before, after, &step);
        consumed += before - after;
        let _ = c.waiting_for();
        let out = std::mem::take(c.output());
        common::trace(&step, &out);
        out_total += out.len();
        check_output_bound(out_total, consumed);
        if !tls || flags & 0x40 == 0 {
            assert!(
                !out.windows(10).any(|w| w.eq_ignore_ascii_case(b"AUTH PLAIN")),
                "AUTH PLAIN without verified TLS: {:?}",
                String::from_utf8_lossy(&out)
            );
        }
        if starttls && !tls {
            for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                assert!(
                    line.starts_with(b"EHLO ") || line == b"STARTTLS\r" || line == b"QUIT\r",
                    "sent before TLS: {:?}",
                    String::from_utf8_lossy(line)
                );
            }
        }

        match step {
            CustomerStep::NeedInput => {
                if !feed(&mut chunks, &mut input, &mut progress) {
                    let _ = c.closed();
                    break;
                }
            }
            CustomerStep::StartTls => {
                assert_eq!(c.poll(&mut input), CustomerStep::StartTls);
                assert_eq!(
                    input.len(),
                    after,
                    "input consumed while waiting for the handshake"
                );
                if !input.is_empty() {
                    break;
                }
                c.tls_started();
                tls = true;
            }
            CustomerStep::Turnaround | CustomerStep::Ended(_) => {
                assert!(
                    !(etrn && step == CustomerStep::Turnaround),
                    "an ETRN session turned around"
                );
                let left = input.clone();
                assert_eq!(c.poll(&mut input), step, "the end of the front half is not final");
                assert_eq!(input, left, "input consumed after the front half ended");
                break;
            }
        }
    }
});
