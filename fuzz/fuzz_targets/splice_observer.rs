//! `SpliceObserver` (the customer's splice sink counting the local server's verdicts) on two
//! arbitrary byte streams in an arbitrary interleaving.
//!
//! Input: segments separated by NUL; the first octet of a segment picks the side (odd: the
//! provider's bytes towards the local server, even: the local server's bytes), the rest is what
//! that side sent, in order. Checks:
//! - no panic (the local side goes through `parse_reply`);
//! - the counts never decrease, and `delivered + refused` never exceeds the number of lines the
//!   provider started with a dot plus the number of `BDAT`s anywhere in its bytes (a verdict
//!   needs a final dot or a `BDAT ... LAST`);
//! - how each segment is cut into reads does not matter: feeding every segment whole and octet
//!   by octet gives the same counts.

#![no_main]

use libfuzzer_sys::fuzz_target;
use odmr_proto::splice_observer::SpliceObserver;

fn run(segments: &[(bool, &[u8])], bytewise: bool) -> (u64, u64) {
    let mut o = SpliceObserver::new();
    let mut dots = 0u64;
    let mut at_line_start = true;
    // The provider's last four octets, lower-cased, to count "bdat" wherever it appears.
    let mut window = [0u8; 4];
    let (mut delivered, mut refused) = (0, 0);
    for &(provider, bytes) in segments {
        let pieces: Vec<&[u8]> = if bytewise {
            bytes.chunks(1).collect()
        } else {
            vec![bytes]
        };
        for p in pieces {
            if provider {
                // Counted generously: every line that starts with a dot.
                for &b in p {
                    window = [window[1], window[2], window[3], b.to_ascii_lowercase()];
                    if &window == b"bdat" {
                        dots += 1;
                    }
                    if b == b'\n' {
                        at_line_start = true;
                        continue;
                    }
                    if at_line_start && b == b'.' {
                        dots += 1;
                    }
                    at_line_start = false;
                }
                o.provider(p);
            } else {
                o.local(p);
            }
            assert!(
                o.delivered >= delivered && o.refused >= refused,
                "a count went down"
            );
            delivered = o.delivered;
            refused = o.refused;
            assert!(
                delivered + refused <= dots,
                "{delivered} delivered + {refused} refused, but only {dots} final dots and BDATs"
            );
        }
    }
    (delivered, refused)
}

fuzz_target!(|data: &[u8]| {
    let segments: Vec<(bool, &[u8])> = data
        .split(|&b| b == 0)
        .filter_map(|s| s.split_first().map(|(&side, rest)| (side & 1 == 1, rest)))
        .collect();
    let whole = run(&segments, false);
    let bytewise = run(&segments, true);
    assert_eq!(whole, bytewise, "the counts depend on how the reads were cut");
});
