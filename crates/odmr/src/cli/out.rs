//! Output helpers shared by the operators' commands: human sizes and ages, column truncation,
//! the terminal's width, a progress bar that only a terminal sees, and JSON strings streamed
//! chunk by chunk (so a message body is never held whole in memory to print it).
//!
//! Rule: anything decorative (progress, widths) depends on whether a person is looking — a
//! terminal — so scripts and cron get the same plain, stable output every time.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{self, IsTerminal, Write};
use std::time::{SystemTime, UNIX_EPOCH};

/// Width of the last-reply column when stdout is not a terminal.
pub const PLAIN_WIDTH: usize = 60;

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `42s`, `5m`, `3h`, `2d`: the largest whole unit.
pub fn age(secs: i64) -> String {
    match secs.max(0) {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// Octets in binary units: `512`, `1.5K`, `12M`, `3.2G` (K = 1024).
pub fn size(n: u64) -> String {
    const UNITS: [&str; 4] = ["K", "M", "G", "T"];
    if n < 1024 {
        return n.to_string();
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if v < 10.0 {
        format!("{v:.1}{}", UNITS[unit])
    } else {
        format!("{v:.0}{}", UNITS[unit])
    }
}

/// Like [`size`] but spelled out for sentences: `1.5 KiB`, `10 MiB`, `512 octets`.
pub fn size_long(n: u64) -> String {
    let s = size(n);
    match s.chars().last() {
        Some(c @ ('K' | 'M' | 'G' | 'T')) => format!("{} {c}iB", &s[..s.len() - 1]),
        _ => format!("{n} octets"),
    }
}

/// `7d`, `1d 12h`, `90m`, `30s`: the form `--max-age` accepts.
pub fn duration(secs: u64) -> String {
    if secs == 0 {
        return "0s".into();
    }
    let mut parts = Vec::new();
    let mut left = secs;
    for (unit, len) in [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)] {
        if left >= len {
            parts.push(format!("{}{unit}", left / len));
            left %= len;
        }
    }
    parts.join(" ")
}

/// Unix seconds as `2024-05-01 10:00:00 UTC`.
pub fn timestamp(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| secs.to_string())
}

/// At most `width` characters, the last one `…` when something was cut.
pub fn truncate(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    if width == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(width - 1).collect();
    out.push('…');
    out
}

/// `s` cut to `width` and padded to it, for a left-aligned column.
pub fn cell(s: &str, width: usize) -> String {
    let t = truncate(s, width);
    let pad = width.saturating_sub(t.chars().count());
    format!("{t}{}", " ".repeat(pad))
}

/// Columns of the terminal on stdout, `None` when stdout is not a terminal.
pub fn terminal_width() -> Option<usize> {
    console::Term::stdout()
        .size_checked()
        .map(|(_, cols)| usize::from(cols))
}

/// A progress bar over `len` messages on stderr, drawn only when stderr is a terminal (hidden
/// otherwise, so logs and scripts see only the summary).
pub fn progress(len: u64, what: &str) -> ProgressBar {
    let target = if io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let style = ProgressStyle::with_template("{msg} [{wide_bar}] {pos}/{len} messages ({eta} left)")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    ProgressBar::with_draw_target(Some(len), target)
        .with_style(style)
        .with_message(what.to_string())
}

/// Whether an error is only the reader of our output going away (`odmr queue list | head`):
/// nothing is wrong with the command, so it ends quietly.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// Writes the contents of a JSON string (without the quotes) from bytes given in pieces. Bytes
/// that are not UTF-8 become U+FFFD; a UTF-8 sequence split between two pieces is kept whole.
#[derive(Default)]
pub struct JsonText {
    /// The start of a UTF-8 sequence that the next piece completes (at most 3 bytes).
    pending: Vec<u8>,
}

impl JsonText {
    pub fn write(&mut self, out: &mut impl Write, piece: &[u8]) -> io::Result<()> {
        let mut buf = std::mem::take(&mut self.pending);
        buf.extend_from_slice(piece);
        let mut rest = &buf[..];
        let mut text = String::with_capacity(rest.len());
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    text.push_str(s);
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    text.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        Some(n) => {
                            text.push('\u{FFFD}');
                            rest = &after[n..];
                        }
                        None => {
                            // Incomplete at the end: the next piece may complete it.
                            self.pending = after.to_vec();
                            break;
                        }
                    }
                }
            }
        }
        write_escaped(out, &text)
    }

    /// Ends the string: an incomplete sequence left over becomes U+FFFD.
    pub fn finish(&mut self, out: &mut impl Write) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.pending.clear();
        write_escaped(out, "\u{FFFD}")
    }
}

fn write_escaped(out: &mut impl Write, text: &str) -> io::Result<()> {
    let quoted = serde_json::to_string(text).map_err(io::Error::other)?;
    out.write_all(&quoted.as_bytes()[1..quoted.len() - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ages_read_well() {
        assert_eq!(size(512), "512");
        assert_eq!(size(1536), "1.5K");
        assert_eq!(size(10 << 20), "10M");
        assert_eq!(size_long(10 << 20), "10 MiB");
        assert_eq!(size_long(100), "100 octets");
        assert_eq!(age(59), "59s");
        assert_eq!(age(7200), "2h");
        assert_eq!(duration(7 * 86400), "7d");
        assert_eq!(duration(36 * 3600), "1d 12h");
        assert_eq!(duration(90 * 60), "1h 30m");
    }

    #[test]
    fn truncation_marks_the_cut() {
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
        assert_eq!(cell("ab", 4), "ab  ");
        assert_eq!(truncate("äöüß", 3), "äö…");
    }

    #[test]
    fn json_text_survives_split_utf8_and_bad_bytes() {
        let mut out = Vec::new();
        let mut j = JsonText::default();
        let s = "é\"\r\n".as_bytes();
        j.write(&mut out, &s[..1]).unwrap();
        j.write(&mut out, &s[1..]).unwrap();
        j.write(&mut out, b"\xff!").unwrap();
        j.write(&mut out, b"\xc3").unwrap();
        j.finish(&mut out).unwrap();
        let v: String = serde_json::from_slice(&[b"\"".as_slice(), &out, b"\""].concat()).unwrap();
        assert_eq!(v, "é\"\r\n\u{FFFD}!\u{FFFD}");
    }
}
