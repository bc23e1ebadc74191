//! The log: what `ODMR_LOG` asks for, and the subscriber that writes it to stderr.
//!
//! `ODMR_LOG` takes levels (`error`, `warn`, `info`, `debug`, `trace`, `off`) and `target=level`
//! directives, separated by commas. Anything else is refused, with a warning in the log, and
//! `info` is used: `tracing_subscriber`'s own parser reads a word such as `verbose` as a target
//! name and then shows nothing at all, errors included, which is the worst outcome of a typo.
//!
//! A bare `debug` or `trace` applies to odmr's own crates only, and dependencies stay at `info`:
//! sqlx, for one, logs every statement at `debug`, which would bury odmr's own lines. Whoever
//! wants a dependency's detail names it (`debug,sqlx=debug`).

/// The log targets of odmr's own crates.
const OWN_TARGETS: [&str; 3] = ["odmr", "odmr_store", "odmr_proto"];
/// The level names `ODMR_LOG` takes, alone or after `target=`.
const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];
/// The filter when `ODMR_LOG` is unset, empty or refused.
const DEFAULT: &str = "info";

/// The `EnvFilter` directives for a value of `ODMR_LOG`; `None` if the value is not made of
/// levels and `target=level` directives.
fn directives(value: &str) -> Option<String> {
    let level = |s: &str| {
        let s = s.trim().to_ascii_lowercase();
        LEVELS.contains(&s.as_str()).then_some(s)
    };
    let mut bare = None;
    let mut targets: Vec<(String, String)> = Vec::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some((target, l)) => {
                let target = target.trim();
                // A Rust module path (`odmr::server`, `sqlx::query`); spans and field filters,
                // which `EnvFilter` would also take, are not offered.
                let is_path = !target.is_empty()
                    && target
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-'));
                if !is_path {
                    return None;
                }
                targets.push((target.to_string(), level(l)?));
            }
            // The last bare level wins, as a later setting overrides an earlier one.
            None => bare = Some(level(part)?),
        }
    }
    let mut out = Vec::new();
    match bare.as_deref() {
        None if targets.is_empty() => out.push(DEFAULT.to_string()),
        None => {}
        Some(l @ ("debug" | "trace")) => {
            out.push(DEFAULT.to_string());
            // A target the value names itself keeps its own level.
            for own in OWN_TARGETS {
                if !targets.iter().any(|(t, _)| t == own) {
                    out.push(format!("{own}={l}"));
                }
            }
        }
        Some(l) => out.push(l.to_string()),
    }
    out.extend(targets.iter().map(|(t, l)| format!("{t}={l}")));
    Some(out.join(","))
}

/// Installs the subscriber: stderr, filtered by `ODMR_LOG`. The guard flushes what is queued
/// when it is dropped, so `main` holds it to the end.
pub fn init() -> tracing_appender::non_blocking::WorkerGuard {
    let value = std::env::var_os("ODMR_LOG");
    let wanted = match &value {
        None => Some(DEFAULT.to_string()),
        // Not UTF-8: no level name, hence refused like any other unknown word.
        Some(v) => v.to_str().and_then(directives),
    };
    let filter = wanted
        .as_deref()
        .and_then(|d| tracing_subscriber::EnvFilter::try_new(d).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(DEFAULT));
    // Log lines are written by a thread of their own, so a slow reader of stderr (a pipe to a
    // supervisor) never stalls a session, and a line per message costs the session a queue
    // push, not a write. Not lossy: when the queue is full, the logging thread is waited for.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("odmr-log")
        .finish(std::io::stderr());
    tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .init();
    if wanted.is_none() {
        let shown = value.as_deref().map(|v| v.to_string_lossy()).unwrap_or_default();
        tracing::warn!(
            "ODMR_LOG={shown:?} is not a log level, so logging at {DEFAULT}; use one of {}, \
             or target=level directives separated by commas (e.g. ODMR_LOG=debug or \
             ODMR_LOG=info,sqlx=debug)",
            LEVELS.join(", ")
        );
    }
    guard
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(v: &str) -> Option<String> {
        directives(v)
    }

    #[test]
    fn levels_for_everything() {
        assert_eq!(d("").as_deref(), Some("info"));
        assert_eq!(d(" , ").as_deref(), Some("info"));
        for l in ["error", "warn", "info", "off"] {
            assert_eq!(d(l).as_deref(), Some(l), "{l}");
        }
        assert_eq!(d(" WARN ").as_deref(), Some("warn"));
    }

    #[test]
    fn debug_and_trace_alone_are_for_our_crates_only() {
        assert_eq!(
            d("debug").as_deref(),
            Some("info,odmr=debug,odmr_store=debug,odmr_proto=debug")
        );
        assert_eq!(
            d("Trace").as_deref(),
            Some("info,odmr=trace,odmr_store=trace,odmr_proto=trace")
        );
        // A dependency named explicitly gets what it asks for; one of ours keeps its own level.
        assert_eq!(
            d("debug,sqlx=debug,odmr_store=warn").as_deref(),
            Some("info,odmr=debug,odmr_proto=debug,sqlx=debug,odmr_store=warn")
        );
    }

    #[test]
    fn target_directives_pass_through() {
        // What the integration tests use.
        assert_eq!(d("info,odmr=debug").as_deref(), Some("info,odmr=debug"));
        assert_eq!(
            d("odmr::server=trace, sqlx::query = warn").as_deref(),
            Some("odmr::server=trace,sqlx::query=warn")
        );
        assert_eq!(
            d("warn,info").as_deref(),
            Some("info"),
            "the last bare level wins"
        );
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "verbose",
            "odmr=verbose",
            "=debug",
            "info,loud",
            "odmr[session]=debug",
            "odmr=debug=x",
            "5",
        ] {
            assert_eq!(d(bad), None, "{bad:?}");
        }
    }

    /// Whatever is accepted is something `EnvFilter` takes too, so it is used as given and not
    /// replaced by the fallback.
    #[test]
    fn accepted_values_are_valid_filters() {
        for v in [
            "",
            "off",
            "debug",
            "trace,sqlx=debug",
            "info,odmr=debug",
            "odmr::net=trace",
        ] {
            let dirs = d(v).unwrap();
            tracing_subscriber::EnvFilter::try_new(&dirs).unwrap_or_else(|e| panic!("{v:?}: {dirs}: {e}"));
        }
    }
}
