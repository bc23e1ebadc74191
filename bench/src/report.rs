//! The one table the harness prints: per row the measurement, our figure, the peer's figure
//! measured in the same run, their ratio, the target from issue #6 and whether it is met.
//!
//! Invariants:
//! - A row's verdict is computed from the figures and the target only; nothing here knows what
//!   a "good" number is beyond the target the row carries.
//! - A row whose own figure failed (`ours` is `Err`) is never "met"; a row whose target needs a
//!   peer that was unavailable has no verdict ("—"), it is not counted as met either.
//! - A tiny run (`--tiny`, CI's debug build) judges no figure against its target: its figures
//!   mean nothing, so a verdict is printed as "not judged (tiny)", met or not. Only a row whose
//!   own figure failed still says "**no**". The full run prints "yes" / "**no**".
//! - Ratios are always ours ÷ peer, whatever the unit, so "≥ 3×" reads the same for rates and
//!   "≤ 1.5×" the same for latencies.

use std::fmt::Write as _;

/// The unit of a figure, which also decides how it is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Messages per second.
    Rate,
    /// Milliseconds.
    Millis,
    /// Mebibytes.
    MiB,
}

/// One measured value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figure {
    pub value: f64,
    pub unit: Unit,
}

impl Figure {
    pub fn rate(value: f64) -> Figure {
        Figure {
            value,
            unit: Unit::Rate,
        }
    }
    pub fn millis(value: f64) -> Figure {
        Figure {
            value,
            unit: Unit::Millis,
        }
    }
    pub fn mib(value: f64) -> Figure {
        Figure {
            value,
            unit: Unit::MiB,
        }
    }
}

impl std::fmt::Display for Figure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&format_value(self.value, self.unit))
    }
}

/// A value in a unit, as the table prints it: rates as whole messages per second with thousands
/// separators, milliseconds with one decimal (two below 10 ms), MiB with one decimal.
pub fn format_value(v: f64, unit: Unit) -> String {
    match unit {
        Unit::Rate => format!("{}/s", thousands(v.round() as i64)),
        Unit::Millis if v < 10.0 => format!("{v:.2} ms"),
        Unit::Millis => format!("{} ms", thousands_f1(v)),
        Unit::MiB => format!("{} MiB", thousands_f1(v)),
    }
}

/// `1234567` → `"1,234,567"`.
pub fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

fn thousands_f1(v: f64) -> String {
    let tenths = (v * 10.0).round() as i64;
    format!("{}.{}", thousands(tenths / 10), (tenths % 10).abs())
}

/// What the peer column holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Peer {
    /// A peer measured in this run.
    Measured { name: String, figure: Figure },
    /// The peer could not be run here; the reason is printed.
    Unavailable { name: String, why: String },
    /// No peer for this row (the text says why, or what to compare with instead).
    Nothing(String),
}

/// The target of a row, from issue #6.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// Our figure is at least this (in its unit).
    AtLeast(f64),
    /// Our figure is strictly below this (in its unit).
    Below(f64),
    /// ours ÷ peer is at least this.
    RatioAtLeast(f64),
    /// "Flat": ours ÷ peer is at most `ratio`, or ours exceeds the peer by at most `slack` (in
    /// the unit), so that a few tenths of a millisecond of noise on a tiny figure do not count.
    Flat { ratio: f64, slack: f64 },
    /// Every one of these.
    All(Vec<Target>),
    /// No target: the figure is reported.
    Report,
}

impl Target {
    /// `None` when it cannot be decided (no target, or a needed ratio is missing).
    fn met(&self, ours: f64, ratio: Option<f64>, peer: Option<f64>) -> Option<bool> {
        match self {
            Target::AtLeast(x) => Some(ours >= *x),
            Target::Below(x) => Some(ours < *x),
            Target::RatioAtLeast(x) => ratio.map(|r| r >= *x),
            Target::Flat { ratio: x, slack } => match (ratio, peer) {
                (Some(r), Some(p)) => Some(r <= *x || ours - p <= *slack),
                _ => None,
            },
            Target::All(ts) => {
                let mut all = Some(true);
                for t in ts {
                    match t.met(ours, ratio, peer) {
                        Some(false) => return Some(false),
                        None => all = None,
                        Some(true) => {}
                    }
                }
                all
            }
            Target::Report => None,
        }
    }

    fn describe(&self, unit: Unit) -> String {
        match self {
            Target::AtLeast(x) => format!("≥ {}", format_value(*x, unit)),
            Target::Below(x) => format!("< {}", format_value(*x, unit)),
            Target::RatioAtLeast(x) => format!("≥ {}× peer", trim_float(*x)),
            Target::Flat { ratio, slack } => format!(
                "flat: ≤ {}× peer (or ≤ +{})",
                trim_float(*ratio),
                format_value(*slack, unit)
            ),
            Target::All(ts) => ts.iter().map(|t| t.describe(unit)).collect::<Vec<_>>().join("; "),
            Target::Report => "report".into(),
        }
    }
}

fn trim_float(x: f64) -> String {
    let s = format!("{x:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// One line of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// "1a", "2b", …: the measurement number of issue #6 and a letter.
    pub id: String,
    pub what: String,
    /// Our figure, or why it could not be measured.
    pub ours: Result<Figure, String>,
    pub peer: Peer,
    pub target: Target,
    /// Printed below the table, prefixed by the row id.
    pub notes: Vec<String>,
}

impl Row {
    pub fn new(
        id: &str,
        what: impl Into<String>,
        ours: Result<Figure, String>,
        peer: Peer,
        target: Target,
    ) -> Row {
        Row {
            id: id.into(),
            what: what.into(),
            ours,
            peer,
            target,
            notes: Vec::new(),
        }
    }

    pub fn note(mut self, n: impl Into<String>) -> Row {
        self.notes.push(n.into());
        self
    }

    /// A row for a measurement that failed as a whole.
    pub fn failed(id: &str, what: impl Into<String>, err: &anyhow::Error) -> Row {
        Row::new(
            id,
            what,
            Err(format!("{err:#}")),
            Peer::Nothing("—".into()),
            Target::Report,
        )
    }

    /// ours ÷ peer, when both were measured and the peer is not zero.
    pub fn ratio(&self) -> Option<f64> {
        match (&self.ours, &self.peer) {
            (Ok(o), Peer::Measured { figure, .. }) if figure.value > 0.0 => Some(o.value / figure.value),
            _ => None,
        }
    }

    /// The "met?" cell: "yes", "**no**" or "—" ([`Row::met`]); in a `tiny` run a figure is
    /// "not judged (tiny)" whatever its verdict, while a failed measurement stays "**no**".
    pub fn judgement(&self, tiny: bool) -> &'static str {
        match self.met() {
            None => "—",
            Some(false) if self.ours.is_err() => "**no**",
            Some(_) if tiny => "not judged (tiny)",
            Some(true) => "yes",
            Some(false) => "**no**",
        }
    }

    /// `Some(true)` met, `Some(false)` missed (or our figure failed), `None` undecidable.
    pub fn met(&self) -> Option<bool> {
        let Ok(o) = &self.ours else {
            return Some(false);
        };
        let peer = match &self.peer {
            Peer::Measured { figure, .. } => Some(figure.value),
            _ => None,
        };
        self.target.met(o.value, self.ratio(), peer)
    }
}

/// The whole table.
#[derive(Debug, Default)]
pub struct Report {
    pub rows: Vec<Row>,
    /// A `--tiny` run: figures are not judged against their targets.
    pub tiny: bool,
}

impl Report {
    pub fn push(&mut self, rows: Vec<Row>) {
        self.rows.extend(rows);
    }

    /// Rows whose own figure failed: the harness exits non-zero if there is any.
    pub fn failures(&self) -> usize {
        self.rows.iter().filter(|r| r.ours.is_err()).count()
    }

    /// Rows whose peer could not be run.
    pub fn unavailable(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| matches!(r.peer, Peer::Unavailable { .. }))
            .count()
    }

    /// The table as Markdown, then the notes.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("| # | measurement | odmr | peer | ratio | target | met? |\n");
        out.push_str("|---|---|---:|---|---:|---|---|\n");
        for r in &self.rows {
            let unit = match (&r.ours, &r.peer) {
                (Ok(f), _) => f.unit,
                (_, Peer::Measured { figure, .. }) => figure.unit,
                _ => Unit::Rate,
            };
            let ours = match &r.ours {
                Ok(f) => f.to_string(),
                Err(e) => format!("failed: {}", cell(e)),
            };
            let peer = match &r.peer {
                Peer::Measured { name, figure } => format!("{name}: {figure}"),
                Peer::Unavailable { name, why } => format!("{name}: unavailable ({})", cell(why)),
                Peer::Nothing(text) => cell(text),
            };
            let ratio = r
                .ratio()
                .map(|x| format!("{x:.2}×"))
                .unwrap_or_else(|| "—".into());
            let met = r.judgement(self.tiny);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                r.id,
                cell(&r.what),
                ours,
                peer,
                ratio,
                r.target.describe(unit),
                met
            );
        }
        let notes: Vec<String> = self
            .rows
            .iter()
            .flat_map(|r| {
                r.notes
                    .iter()
                    .map(move |n| format!("- {}: {}", r.id, one_line(n)))
            })
            .collect();
        if !notes.is_empty() {
            out.push('\n');
            for n in notes {
                out.push_str(&n);
                out.push('\n');
            }
        }
        out
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Text safe inside a Markdown table cell: one line, no bare `|`, not too long.
fn cell(s: &str) -> String {
    let mut t = one_line(s).replace('|', "\\|");
    if t.chars().count() > 160 {
        t = t.chars().take(157).collect::<String>() + "...";
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(v: f64, unit: Unit) -> Peer {
        Peer::Measured {
            name: "peer".into(),
            figure: Figure { value: v, unit },
        }
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(-1234), "-1,234");
        assert_eq!(format_value(1234.4, Unit::Rate), "1,234/s");
        assert_eq!(format_value(3.004, Unit::Millis), "3.00 ms");
        assert_eq!(format_value(2100.04, Unit::Millis), "2,100.0 ms");
        assert_eq!(format_value(31.96, Unit::MiB), "32.0 MiB");
    }

    #[test]
    fn ratio_is_ours_over_peer() {
        let r = Row::new(
            "1a",
            "x",
            Ok(Figure::rate(3000.0)),
            measured(1000.0, Unit::Rate),
            Target::RatioAtLeast(3.0),
        );
        assert_eq!(r.ratio(), Some(3.0));
        assert_eq!(r.met(), Some(true));
        let r = Row {
            ours: Ok(Figure::rate(2999.0)),
            ..r
        };
        assert_eq!(r.met(), Some(false));
    }

    #[test]
    fn no_peer_no_ratio_verdict() {
        let r = Row::new(
            "1a",
            "x",
            Ok(Figure::rate(3000.0)),
            Peer::Unavailable {
                name: "Postfix".into(),
                why: "not root".into(),
            },
            Target::RatioAtLeast(3.0),
        );
        assert_eq!(r.ratio(), None);
        assert_eq!(r.met(), None);
        // A zero peer gives no ratio rather than infinity.
        let r = Row {
            peer: measured(0.0, Unit::Rate),
            ..r
        };
        assert_eq!(r.ratio(), None);
    }

    #[test]
    fn failed_ours_is_never_met() {
        let r = Row::new(
            "2a",
            "x",
            Err("boom".into()),
            measured(1.0, Unit::Rate),
            Target::Report,
        );
        assert_eq!(r.met(), Some(false));
        let mut rep = Report::default();
        rep.push(vec![r]);
        assert_eq!(rep.failures(), 1);
        assert!(rep.render().contains("failed: boom"));
    }

    #[test]
    fn all_needs_every_part_and_absolute_targets_work_without_peer() {
        let t = Target::All(vec![Target::AtLeast(10_000.0), Target::RatioAtLeast(0.5)]);
        let ok = Row::new(
            "2a",
            "x",
            Ok(Figure::rate(12_000.0)),
            measured(20_000.0, Unit::Rate),
            t.clone(),
        );
        assert_eq!(ok.met(), Some(true));
        let slow = Row {
            ours: Ok(Figure::rate(9_000.0)),
            ..ok.clone()
        };
        assert_eq!(slow.met(), Some(false));
        // The absolute part fails even without a peer: the verdict is decided.
        let nopeer = Row {
            peer: Peer::Nothing("-".into()),
            ..slow
        };
        assert_eq!(nopeer.met(), Some(false));
        // The absolute part holds but the ratio is unknown: undecided.
        let undecided = Row {
            peer: Peer::Nothing("-".into()),
            ..ok
        };
        assert_eq!(undecided.met(), None);
        let mem = Row::new(
            "4a",
            "x",
            Ok(Figure::mib(150.0)),
            Peer::Nothing("-".into()),
            Target::Below(200.0),
        );
        assert_eq!(mem.met(), Some(true));
    }

    #[test]
    fn flat_allows_ratio_or_slack() {
        let t = Target::Flat {
            ratio: 1.5,
            slack: 2.0,
        };
        let row = |ours: f64, peer: f64| {
            Row::new(
                "3b",
                "x",
                Ok(Figure::millis(ours)),
                measured(peer, Unit::Millis),
                t.clone(),
            )
        };
        assert_eq!(row(1.4, 1.0).met(), Some(true));
        assert_eq!(row(2.9, 1.0).met(), Some(true), "within the slack");
        assert_eq!(row(30.0, 10.0).met(), Some(false));
        assert_eq!(row(14.0, 10.0).met(), Some(true));
    }

    #[test]
    fn tiny_runs_judge_no_figure_but_report_failures() {
        let met = Row::new(
            "4a",
            "x",
            Ok(Figure::mib(150.0)),
            Peer::Nothing("-".into()),
            Target::Below(200.0),
        );
        let missed = Row {
            ours: Ok(Figure::mib(250.0)),
            ..met.clone()
        };
        let undecided = Row {
            target: Target::Report,
            ..met.clone()
        };
        let failed = Row {
            ours: Err("boom".into()),
            ..met.clone()
        };
        // The full run: the verdicts as they are.
        assert_eq!(met.judgement(false), "yes");
        assert_eq!(missed.judgement(false), "**no**");
        assert_eq!(undecided.judgement(false), "—");
        assert_eq!(failed.judgement(false), "**no**");
        // A tiny run: no figure is judged; a failure is still one.
        assert_eq!(met.judgement(true), "not judged (tiny)");
        assert_eq!(missed.judgement(true), "not judged (tiny)");
        assert_eq!(undecided.judgement(true), "—");
        assert_eq!(failed.judgement(true), "**no**");

        let mut rep = Report {
            tiny: true,
            ..Report::default()
        };
        rep.push(vec![missed.clone(), failed]);
        let t = rep.render();
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[2].ends_with("| < 200.0 MiB | not judged (tiny) |"), "{t}");
        assert!(lines[3].ends_with("| **no** |"), "{t}");
        rep.tiny = false;
        assert!(rep.render().lines().nth(2).unwrap().ends_with("| **no** |"));
    }

    #[test]
    fn table_has_one_line_per_row_and_notes_after() {
        let mut rep = Report::default();
        rep.push(vec![
            Row::new(
                "1a",
                "inbound | 20 sessions",
                Ok(Figure::rate(5000.0)),
                measured(1250.0, Unit::Rate),
                Target::RatioAtLeast(3.0),
            )
            .note("every 250\ndurable"),
            Row::new(
                "3a",
                "turnaround",
                Ok(Figure::millis(4.2)),
                Peer::Nothing("no peer".into()),
                Target::Below(20.0),
            ),
        ]);
        let t = rep.render();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2 + 2 + 2, "{t}");
        assert!(lines[2].contains("inbound \\| 20 sessions"), "{t}");
        assert!(lines[2].contains("| 4.00× |"), "{t}");
        assert!(lines[2].ends_with("| yes |"), "{t}");
        assert!(lines[3].contains("< 20.0 ms"), "{t}");
        assert_eq!(lines[5], "- 1a: every 250 durable");
    }
}
