//! junit.xml: one `<testsuite>` per model × suite, one `<testcase>` per case plus the gate.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::Report;
use crate::verdict::{CaseResult, Outcome, Status};

/// Escapes text for XML attributes and content, dropping characters XML 1.0 forbids.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

pub(crate) fn render(report: &Report) -> String {
    let mut groups: BTreeMap<(&str, &str), Vec<&CaseResult>> = BTreeMap::new();
    for c in &report.cases {
        groups.entry((&c.model, &c.suite)).or_default().push(c);
    }
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let missing = report.missing_trials.len();
    let total = report.cases.len();
    let failures = report
        .cases
        .iter()
        .filter(|c| c.status() == Status::Failed)
        .count();
    let errors = report
        .cases
        .iter()
        .filter(|c| matches!(c.status(), Status::Error | Status::Interrupted))
        .count();
    let _ = writeln!(
        s,
        "<testsuites name=\"vlmtest\" tests=\"{}\" failures=\"{failures}\" errors=\"{}\">",
        total + missing,
        errors + missing
    );
    for ((model, suite), cases) in groups {
        let gate = report
            .suites
            .iter()
            .find(|r| r.model == model && r.suite == suite && !r.gate.ignored);
        let n = cases.len() + usize::from(gate.is_some());
        let f = cases
            .iter()
            .filter(|c| c.status() == Status::Failed)
            .count()
            + usize::from(gate.is_some_and(|g| !g.gate.passed));
        let e = cases
            .iter()
            .filter(|c| matches!(c.status(), Status::Error | Status::Interrupted))
            .count();
        let skipped = cases
            .iter()
            .filter(|c| c.status() == Status::Ignored)
            .count();
        let time: f64 = cases.iter().map(|c| c.latency_ms).sum::<f64>() / 1000.0;
        let _ = writeln!(
            s,
            "  <testsuite name=\"{}\" tests=\"{n}\" failures=\"{f}\" errors=\"{e}\" skipped=\"{skipped}\" time=\"{time:.3}\">",
            escape(&format!("{model}::{suite}"))
        );
        for c in cases {
            let _ = write!(
                s,
                "    <testcase name=\"{}\" classname=\"{}\" time=\"{:.3}\"",
                escape(&c.case),
                escape(&format!("{model}::{suite}")),
                c.latency_ms / 1000.0
            );
            match &c.outcome {
                Outcome::Passed => {
                    let _ = writeln!(s, "/>");
                }
                Outcome::Ignored(why) => {
                    let _ = writeln!(
                        s,
                        ">\n      <skipped message=\"{}\"/>\n    </testcase>",
                        escape(why)
                    );
                }
                o @ (Outcome::Failed(_) | Outcome::Error(_) | Outcome::Interrupted) => {
                    let tag = if matches!(o, Outcome::Failed(_)) {
                        "failure"
                    } else {
                        "error"
                    };
                    let _ = writeln!(
                        s,
                        ">\n      <{tag} message=\"{}\">{}</{tag}>\n    </testcase>",
                        escape(&o.reasons().join("; ")),
                        escape(&c.failure_message())
                    );
                }
            }
        }
        if let Some(g) = gate {
            let _ = write!(
                s,
                "    <testcase name=\"gate\" classname=\"{}\" time=\"0\"",
                escape(&format!("{model}::{suite}"))
            );
            if g.gate.passed {
                let _ = writeln!(s, "/>");
            } else {
                let _ = writeln!(
                    s,
                    ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                    escape(&g.gate.failures.join("; ")),
                    escape(&g.message())
                );
            }
        }
        let _ = writeln!(s, "  </testsuite>");
    }
    if missing > 0 {
        let note = report.missing_note().unwrap_or_default();
        let _ = writeln!(
            s,
            "  <testsuite name=\"vlmtest::missing\" tests=\"{missing}\" failures=\"0\" errors=\"{missing}\" skipped=\"0\" time=\"0\">"
        );
        for t in &report.missing_trials {
            let _ = writeln!(
                s,
                "    <testcase name=\"{}\" classname=\"vlmtest::missing\" time=\"0\">\n      <error message=\"{}\">no shard ran this trial</error>\n    </testcase>",
                escape(t),
                escape(&note)
            );
        }
        let _ = writeln!(s, "  </testsuite>");
    }
    let _ = writeln!(s, "</testsuites>");
    s
}
