//! What a person watching a run sees while long work happens outside a test's own time: a model
//! being loaded, weights being downloaded on first use. libtest owns stdout (its per-test lines
//! are the progress of the run, and `--format json` consumers read it), so everything here goes
//! to stderr, whatever `RUST_LOG` says:
//!
//! - [`note`]: one line, `vlmtest: …`;
//! - [`Transfer`]: a download's bytes, speed and time left — a bar redrawn in place when stderr
//!   is a terminal, plain lines (one every [`LINE_EVERY`], and one at the end) when it is not (CI
//!   logs, nextest's captured output) or when libtest's own output must not be redrawn over
//!   ([`set_plain`]: `--format terse` prints its dots on an unfinished line).
//!
//! A bar never clears a line it did not draw: every transfer starts on a line of its own.

// Downloads happen in the candle backend only (weights fetched on first use).
#![cfg_attr(not(feature = "candle"), allow(dead_code))]

use std::collections::VecDeque;
use std::fmt::Display;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often a plain-lines transfer reports while it runs.
pub(crate) const LINE_EVERY: Duration = Duration::from_secs(10);
/// How often a bar is redrawn.
const REDRAW_EVERY: Duration = Duration::from_millis(100);
/// The window the speed is averaged over.
const SPEED_WINDOW: Duration = Duration::from_secs(5);
const BAR_WIDTH: usize = 24;

static PLAIN: AtomicBool = AtomicBool::new(false);

/// Plain lines even on a terminal (libtest's terse and JSON formats: their output must not be
/// redrawn over).
pub(crate) fn set_plain(plain: bool) {
    PLAIN.store(plain, Ordering::Relaxed);
}

/// Whether transfers draw a bar in place (stderr is a terminal that can redraw, and nothing asked
/// for plain lines).
fn bars() -> bool {
    !PLAIN.load(Ordering::Relaxed)
        && std::io::stderr().is_terminal()
        && std::env::var("TERM").map_or(true, |t| t != "dumb")
}

/// One line on stderr: `vlmtest: {msg}`.
pub(crate) fn note(msg: impl Display) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "vlmtest: {msg}");
}

/// What "loading MODEL (…)…" says about the way it is loaded, e.g. `in-process, f32, cpu`.
pub(crate) fn loading(model: &str, how: &str) {
    note(format_args!("loading {model} ({how})…"));
}

/// The end of a load: `loaded MODEL in 3.2 s`, or why it did not load.
pub(crate) fn loaded(model: &str, took: Duration, error: Option<&str>) {
    match error {
        None => note(format_args!("loaded {model} in {}", seconds(took))),
        Some(why) => note(format_args!(
            "{model} did not load ({}): {}",
            seconds(took),
            why.lines().next().unwrap_or_default()
        )),
    }
}

/// `n` bytes for people, in decimal units as the Hugging Face Hub shows sizes: `812 B`,
/// `1.2 kB`, `460 MB`, `1.02 GB`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 999.5 {
            break;
        }
        v /= 1000.0;
        unit = u;
    }
    if v >= 99.95 {
        format!("{v:.0} {unit}")
    } else if v >= 9.995 {
        format!("{v:.1} {unit}")
    } else {
        format!("{v:.2} {unit}")
    }
}

/// A duration for people: `0.04 s`, `3.2 s`, `14 s`, `3 min 20 s`, `1 h 05 min`.
pub(crate) fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1.0 {
        return format!("{s:.2} s");
    }
    if s < 10.0 {
        return format!("{s:.1} s");
    }
    let whole = s.round() as u64;
    match whole {
        0..60 => format!("{whole} s"),
        60..3600 => format!("{} min {:02} s", whole / 60, whole % 60),
        _ => format!("{} h {:02} min", whole / 3600, (whole % 3600) / 60),
    }
}

/// The state of a transfer at one moment, rendered either way.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Snapshot {
    pub done: u64,
    /// 0 when unknown.
    pub total: u64,
    /// Bytes per second, when it can be told yet.
    pub speed: Option<f64>,
}

impl Snapshot {
    fn eta(&self) -> Option<Duration> {
        let speed = self.speed.filter(|s| *s > 0.0)?;
        (self.total >= self.done && self.total > 0)
            .then(|| Duration::from_secs_f64((self.total - self.done) as f64 / speed))
    }

    /// `45% (460 MB of 1.02 GB), 40.1 MB/s, about 14 s left`.
    pub(crate) fn line(&self) -> String {
        let mut s = match (self.done.min(self.total) * 100).checked_div(self.total) {
            Some(pct) => format!("{pct}% ({} of {})", bytes(self.done), bytes(self.total)),
            None => bytes(self.done),
        };
        if let Some(speed) = self.speed {
            s.push_str(&format!(", {}/s", bytes(speed as u64)));
        }
        if let Some(eta) = self.eta() {
            s.push_str(&format!(", about {} left", seconds(eta)));
        }
        s
    }

    /// `[#########---------------]  460 MB / 1.02 GB  40.1 MB/s  ETA 14 s`.
    pub(crate) fn bar(&self) -> String {
        let filled = if self.total > 0 {
            ((self.done.min(self.total) as f64 / self.total as f64) * BAR_WIDTH as f64) as usize
        } else {
            0
        };
        let mut s = format!(
            "[{}{}]  {} / {}",
            "#".repeat(filled),
            "-".repeat(BAR_WIDTH - filled),
            bytes(self.done),
            if self.total > 0 {
                bytes(self.total)
            } else {
                "?".into()
            }
        );
        match self.speed {
            Some(speed) => s.push_str(&format!("  {}/s", bytes(speed as u64))),
            None => s.push_str("  –/s"),
        }
        if let Some(eta) = self.eta() {
            s.push_str(&format!("  ETA {}", seconds(eta)));
        }
        s
    }
}

/// One download's progress (see the module documentation for how it is shown).
pub(crate) struct Transfer {
    label: String,
    total: u64,
    done: u64,
    started: Instant,
    samples: VecDeque<(Instant, u64)>,
    bar: bool,
    last_shown: Instant,
    finished: bool,
}

impl Transfer {
    /// Starts showing the download of `label` (a file name, say), `total` bytes (0: unknown).
    pub(crate) fn new(label: impl Into<String>, total: u64) -> Transfer {
        let now = Instant::now();
        let mut t = Transfer {
            label: label.into(),
            total,
            done: 0,
            started: now,
            samples: VecDeque::from([(now, 0)]),
            bar: bars(),
            last_shown: now,
            finished: false,
        };
        if t.bar {
            t.show(now);
        }
        t
    }

    /// Sets the size once it is known.
    pub(crate) fn set_total(&mut self, total: u64) {
        self.total = total;
    }

    /// Sets the bytes done (a resumed download starts past 0).
    pub(crate) fn set_done(&mut self, done: u64) {
        self.done = done;
        let now = Instant::now();
        self.samples.clear();
        self.samples.push_back((now, done));
    }

    /// `n` more bytes arrived.
    pub(crate) fn advance(&mut self, n: u64) {
        self.done += n;
        let now = Instant::now();
        self.samples.push_back((now, self.done));
        while self.samples.len() > 2
            && self
                .samples
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > SPEED_WINDOW)
        {
            self.samples.pop_front();
        }
        let due = if self.bar { REDRAW_EVERY } else { LINE_EVERY };
        if now.duration_since(self.last_shown) >= due {
            self.show(now);
        }
    }

    /// The bytes done so far.
    pub(crate) fn done(&self) -> u64 {
        self.done
    }

    /// The speed over the last few seconds.
    fn speed(&self, now: Instant) -> Option<f64> {
        let (t0, b0) = *self.samples.front()?;
        let dt = now.duration_since(t0).as_secs_f64();
        (dt >= 0.2).then(|| (self.done.saturating_sub(b0)) as f64 / dt)
    }

    fn snapshot(&self, now: Instant) -> Snapshot {
        Snapshot {
            done: self.done,
            total: self.total,
            speed: self.speed(now),
        }
    }

    /// Shows where the transfer is: redraws the bar, or writes a line.
    fn show(&mut self, now: Instant) {
        let mut err = std::io::stderr().lock();
        if self.bar {
            // The bar owns the line it is on: it redraws that line, never one above.
            let _ = write!(
                err,
                "\r\x1b[2K  {} {}",
                self.label,
                self.snapshot(now).bar()
            );
        } else {
            let _ = writeln!(
                err,
                "vlmtest:   {}: {}",
                self.label,
                self.snapshot(now).line()
            );
        }
        let _ = err.flush();
        self.last_shown = now;
    }

    /// The transfer ended: its last line, `label: 1.02 GB in 25 s (40.3 MB/s)`.
    pub(crate) fn finish(mut self) {
        self.end();
    }

    fn end(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        let now = Instant::now();
        let took = now.duration_since(self.started);
        let summary = format!(
            "{} in {}{}",
            bytes(self.done),
            seconds(took),
            if took.as_secs_f64() >= 0.05 {
                format!(
                    " ({}/s)",
                    bytes((self.done as f64 / took.as_secs_f64()) as u64)
                )
            } else {
                String::new()
            }
        );
        let mut err = std::io::stderr().lock();
        if self.bar {
            let _ = writeln!(err, "\r\x1b[2K  {}: {summary}", self.label);
        } else {
            let _ = writeln!(err, "vlmtest:   {}: {summary}", self.label);
        }
        let _ = err.flush();
    }
}

impl Drop for Transfer {
    /// A transfer dropped unfinished (an error) still leaves its line ended.
    fn drop(&mut self) {
        if !self.finished && self.bar {
            self.finished = true;
            let _ = writeln!(std::io::stderr().lock());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_the_hub_shows_them() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(812), "812 B");
        assert_eq!(bytes(1_234), "1.23 kB");
        assert_eq!(bytes(45_600), "45.6 kB");
        assert_eq!(bytes(460_000_000), "460 MB");
        assert_eq!(bytes(999_999), "1.00 MB");
        assert_eq!(bytes(1_022_152), "1.02 MB");
        assert_eq!(bytes(1_020_000_000), "1.02 GB");
    }

    #[test]
    fn durations_read_like_a_person_says_them() {
        assert_eq!(seconds(Duration::from_millis(42)), "0.04 s");
        assert_eq!(seconds(Duration::from_millis(3_240)), "3.2 s");
        assert_eq!(seconds(Duration::from_secs(14)), "14 s");
        assert_eq!(seconds(Duration::from_secs(200)), "3 min 20 s");
        assert_eq!(seconds(Duration::from_secs(3_900)), "1 h 05 min");
    }

    #[test]
    fn a_transfer_shows_bytes_speed_and_time_left() {
        let s = Snapshot {
            done: 460_000_000,
            total: 1_020_000_000,
            speed: Some(40_000_000.0),
        };
        assert_eq!(
            s.line(),
            "45% (460 MB of 1.02 GB), 40.0 MB/s, about 14 s left"
        );
        assert_eq!(
            s.bar(),
            "[##########--------------]  460 MB / 1.02 GB  40.0 MB/s  ETA 14 s"
        );
        // Before the speed is known: no rate, no ETA; an unknown size: bytes only.
        let early = Snapshot {
            done: 0,
            total: 1_000,
            speed: None,
        };
        assert_eq!(early.line(), "0% (0 B of 1.00 kB)");
        assert_eq!(
            early.bar(),
            format!("[{}]  0 B / 1.00 kB  –/s", "-".repeat(24))
        );
        let unknown = Snapshot {
            done: 5_000,
            total: 0,
            speed: Some(1_000.0),
        };
        assert_eq!(unknown.line(), "5.00 kB, 1.00 kB/s");
    }
}
