//! report.md: the summary table, rankings, accuracy per category, failures.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::{Capability, ModelReport, Report};
use crate::verdict::Status;

const GB: f64 = 1024.0 * 1024.0 * 1024.0;

fn pct(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{:.1}%", v * 100.0))
}

fn capability(c: &Capability) -> String {
    if c.unsupported {
        "✗ (text_only = false)".into()
    } else if c.cases == 0 {
        "–".into()
    } else if c.passed > 0 {
        format!("✓ {}/{}", c.passed, c.cases)
    } else {
        format!("✗ 0/{}", c.cases)
    }
}

fn gate_cell(report: &Report, model: &str) -> String {
    let gates: Vec<_> = report
        .suites
        .iter()
        .filter(|s| s.model == model && !s.gate.ignored)
        .collect();
    if gates.is_empty() {
        return "–".into();
    }
    let failed: Vec<&str> = gates
        .iter()
        .filter(|s| !s.gate.passed)
        .map(|s| s.suite.as_str())
        .collect();
    if failed.is_empty() {
        format!("pass ({})", gates.len())
    } else {
        format!("FAIL: {}", failed.join(", "))
    }
}

/// The columns of the summary table (the seed scripts' comparison table).
pub(crate) const SUMMARY_HEADER: [&str; 9] = [
    "Model",
    "Vision",
    "Pure text",
    "VQA acc",
    "Simple acc",
    "Avg inference (s)",
    "Load (s)",
    "Memory (GB)",
    "Gate",
];

/// One row per model, in [`SUMMARY_HEADER`]'s order.
pub(crate) fn summary_rows(report: &Report) -> Vec<[String; 9]> {
    report
        .models
        .iter()
        .map(|model| {
            [
                model.name.clone(),
                capability(&model.vision),
                capability(&model.text),
                pct(model.summary.vqa_accuracy),
                pct(model.summary.simple_accuracy),
                avg_s(model).map_or("–".into(), |v| format!("{v:.2}")),
                model.load_s.map_or("–".into(), |v| format!("{v:.2}")),
                model
                    .memory_bytes()
                    .map_or("–".into(), |b| format!("{:.2}", b / GB)),
                gate_cell(report, &model.name),
            ]
        })
        .collect()
}

fn avg_s(m: &ModelReport) -> Option<f64> {
    m.summary.mean_latency_ms.map(|ms| ms / 1000.0)
}

/// Per model, from the turns that recorded them: mean prompt tokens, mean time to first token,
/// mean decoding speed, and the highest memory seen while the model was loaded. Only models with
/// timing detail (in-process ones) get a row.
fn speed_rows(report: &Report) -> Vec<[String; 5]> {
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let mut rows = Vec::new();
    for m in &report.models {
        let turns = report
            .cases
            .iter()
            .filter(|c| c.model == m.name)
            .flat_map(|c| c.turns.iter());
        let (mut prompt, mut ttft, mut tps) = (Vec::new(), Vec::new(), Vec::new());
        for t in turns {
            prompt.extend(t.prompt_tokens.map(|n| n as f64));
            ttft.extend(t.time_to_first_token_ms.map(|ms| ms / 1000.0));
            tps.extend(t.tokens_per_second);
        }
        if ttft.is_empty() {
            continue;
        }
        let f = |x: Option<f64>, d: usize| x.map_or("–".into(), |v| format!("{v:.d$}"));
        rows.push([
            m.name.clone(),
            f(mean(&prompt), 0),
            f(mean(&ttft), 3),
            f(mean(&tps), 1),
            f(m.peak_memory_bytes.map(|b| b as f64 / GB), 2),
        ]);
    }
    rows
}

/// Renders the summary of a report as Markdown.
pub(crate) fn render(report: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# vlmtest report\n");
    let m = &report.machine;
    let _ = writeln!(
        s,
        "Run {}{}; vlmtest {}; {} ({} cores, {:.1} GB) on {}{}.\n",
        report.started_at,
        if report.complete { "" } else { " (incomplete)" },
        report.vlmtest_version,
        if m.cpu.is_empty() {
            "unknown CPU"
        } else {
            &m.cpu
        },
        m.logical_cores,
        m.memory_bytes as f64 / GB,
        m.os,
        if m.arch.is_empty() {
            String::new()
        } else {
            format!(" {}", m.arch)
        },
    );
    if let Some(note) = report.missing_note() {
        let _ = writeln!(
            s,
            "**{note}** (no shard ran: {}).\n",
            report.missing_trials.join(", ")
        );
    }
    let total = report.cases.len();
    let count = |st: Status| report.cases.iter().filter(|c| c.status() == st).count();
    let interrupted = match count(Status::Interrupted) {
        0 => String::new(),
        n => format!(", {n} interrupted"),
    };
    let _ = writeln!(
        s,
        "{total} cases: {} passed, {} failed, {} errors, {} ignored{interrupted}.\n",
        count(Status::Passed),
        count(Status::Failed),
        count(Status::Error),
        count(Status::Ignored)
    );

    let _ = writeln!(s, "## Summary\n");
    let _ = writeln!(s, "| {} |", SUMMARY_HEADER.join(" | "));
    let _ = writeln!(s, "|{}", "---|".repeat(SUMMARY_HEADER.len()));
    for row in summary_rows(report) {
        let _ = writeln!(s, "| {} |", row.join(" | "));
    }

    let speed = speed_rows(report);
    if !speed.is_empty() {
        let _ = writeln!(s, "\n## Speed and memory\n");
        let _ = writeln!(
            s,
            "| Model | Prompt tokens (mean) | Time to first token (s) | Decode (tokens/s) | Peak memory (GB) |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|");
        for row in speed {
            let _ = writeln!(s, "| {} |", row.join(" | "));
        }
    }

    if report.models.len() > 1 {
        let _ = writeln!(s, "\n## Rankings\n");
        let mut by_acc: Vec<&ModelReport> = report.models.iter().collect();
        by_acc.sort_by(|a, b| {
            let key = |m: &ModelReport| m.summary.accuracy.unwrap_or(-1.0);
            key(b).total_cmp(&key(a)).then(a.name.cmp(&b.name))
        });
        let _ = writeln!(s, "By accuracy (mean case score):");
        for (i, m) in by_acc.iter().enumerate() {
            let _ = writeln!(s, "{}. {} — {}", i + 1, m.name, pct(m.summary.accuracy));
        }
        let mut by_speed: Vec<&ModelReport> = report
            .models
            .iter()
            .filter(|m| avg_s(m).is_some())
            .collect();
        by_speed.sort_by(|a, b| {
            avg_s(a)
                .unwrap_or(f64::MAX)
                .total_cmp(&avg_s(b).unwrap_or(f64::MAX))
                .then(a.name.cmp(&b.name))
        });
        let _ = writeln!(s, "\nBy speed (average inference time per case):");
        for (i, m) in by_speed.iter().enumerate() {
            let _ = writeln!(
                s,
                "{}. {} — {:.2} s",
                i + 1,
                m.name,
                avg_s(m).unwrap_or(0.0)
            );
        }
    }

    if !report.suites.is_empty() {
        let _ = writeln!(s, "\n## Suites\n");
        let _ = writeln!(
            s,
            "| Model | Suite | Cases | Accuracy | Pass rate | Avg latency (s) | Gate |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        for r in &report.suites {
            let gate = if r.gate.ignored {
                "–".to_string()
            } else if r.gate.passed {
                "pass".to_string()
            } else {
                format!("FAIL ({})", r.gate.failures.join("; "))
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                r.model,
                r.suite,
                r.summary.cases,
                pct(r.accuracy),
                pct(r.pass_rate),
                r.summary
                    .mean_latency_ms
                    .map_or("–".into(), |v| format!("{:.2}", v / 1000.0)),
                gate
            );
        }
    }

    // Accuracy per category, models as columns.
    let categories: BTreeSet<&str> = report
        .models
        .iter()
        .flat_map(|m| m.summary.per_category.keys().map(String::as_str))
        .collect();
    if !categories.is_empty() {
        let _ = writeln!(s, "\n## Accuracy per category\n");
        let names: Vec<&str> = report.models.iter().map(|m| m.name.as_str()).collect();
        let _ = writeln!(s, "| Category | {} |", names.join(" | "));
        let _ = writeln!(s, "|---|{}", "---|".repeat(names.len()));
        for c in categories {
            let cells: Vec<String> = report
                .models
                .iter()
                .map(|m| match m.summary.per_category.get(c) {
                    Some(v) => format!("{:.1}% ({})", v.accuracy * 100.0, v.cases),
                    None => "–".into(),
                })
                .collect();
            let _ = writeln!(s, "| {c} | {} |", cells.join(" | "));
        }
    }

    let failures: Vec<_> = report
        .cases
        .iter()
        .filter(|c| {
            matches!(
                c.status(),
                Status::Failed | Status::Error | Status::Interrupted
            )
        })
        .collect();
    if !report.comparisons.is_empty() {
        let _ = writeln!(s, "\n## Against the baseline\n");
        s.push_str(&comparisons(&report.comparisons));
    }
    if !failures.is_empty() {
        let _ = writeln!(s, "\n## Failures\n");
        let mut by_model: BTreeMap<&str, Vec<_>> = BTreeMap::new();
        for c in &failures {
            by_model.entry(c.model.as_str()).or_default().push(*c);
        }
        const MAX: usize = 50;
        for (model, cases) in by_model {
            let _ = writeln!(s, "### {model} ({} cases)\n", cases.len());
            for c in cases.iter().take(MAX) {
                let why = c.outcome.reasons().join("; ");
                let answer: String = c.answer.chars().take(120).collect();
                let _ = writeln!(
                    s,
                    "- `{}::{}` — answer {:?}: {}",
                    c.suite,
                    c.case,
                    answer,
                    why.replace('\n', " ")
                );
            }
            if cases.len() > MAX {
                let _ = writeln!(s, "- … and {} more (see report.json)", cases.len() - MAX);
            }
            let _ = writeln!(s);
        }
    }
    s
}

/// A table of comparisons with a baseline, then the cases that flipped.
pub(crate) fn comparisons(list: &[crate::compare::Comparison]) -> String {
    use crate::compare::Verdict;
    let mut s = String::new();
    let f = |x: Option<f64>| x.map_or("–".to_string(), |v| format!("{v:.3}"));
    let _ = writeln!(
        s,
        "| Model | Suite | n | Base acc | New acc | Δ (95% CI) | pass→fail | fail→pass | p (McNemar) | Verdict |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    for c in list {
        let delta = match (c.delta, c.ci_low, c.ci_high) {
            (Some(d), Some(lo), Some(hi)) => format!("{d:+.3} ({lo:+.3} to {hi:+.3})"),
            (Some(d), _, _) => format!("{d:+.3}"),
            _ => "–".into(),
        };
        let verdict = match c.verdict {
            Verdict::Regressed => "**REGRESSED**",
            Verdict::Improved => "improved",
            Verdict::Unchanged => "unchanged",
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {delta} | {} | {} | {:.4} | {verdict} |",
            c.model,
            c.suite,
            c.n,
            f(c.base_accuracy),
            f(c.new_accuracy),
            c.pass_to_fail,
            c.fail_to_pass,
            c.p_value
        );
    }
    for c in list {
        if c.flips.is_empty() && c.reasons.is_empty() && c.fingerprint_note.is_none() {
            continue;
        }
        let _ = writeln!(s, "\n**{} × {}**\n", c.model, c.suite);
        for r in &c.reasons {
            let _ = writeln!(s, "- why: {r}");
        }
        if let Some(n) = &c.fingerprint_note {
            let _ = writeln!(s, "- note: {n}");
        }
        for fl in &c.flips {
            let word = |p: bool| if p { "pass" } else { "fail" };
            let _ = writeln!(
                s,
                "- `{}`: {} {:?} → {} {:?}",
                fl.case,
                word(fl.base_passed),
                fl.base_answer,
                word(fl.new_passed),
                fl.new_answer
            );
        }
    }
    s
}
