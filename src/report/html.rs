//! report.html: one self-contained page, images beside questions, answers and scores. Each
//! image is embedded once, however many cases show it.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use base64::Engine;

use super::junit::escape;
use super::{ImageFacts, Report};
use crate::verdict::Status;

/// `images` are the suites' images: (suite, path as written) → the file on disk.
pub fn render(report: &Report, images: &[ImageFacts]) -> String {
    let images: HashMap<(String, String), &ImageFacts> = images
        .iter()
        .map(|i| ((i.suite.clone(), i.shown.clone()), i))
        .collect();
    let mut ids: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut s = String::new();
    let _ = write!(
        s,
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>vlmtest report</title>\n<style>\
         body{{font:14px system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:2em}}\
         td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}}\
         img{{max-width:160px;max-height:120px}}.passed{{background:#e8f6e8}}.failed,.error{{background:#fbe9e9}}\
         .ignored{{color:#888}}pre{{white-space:pre-wrap;margin:0}}</style></head><body>\n"
    );
    let _ = writeln!(s, "<h1>vlmtest report</h1>");
    if let Some(note) = report.missing_note() {
        let _ = writeln!(
            s,
            "<p class=\"failed\"><strong>{}</strong>: {}</p>",
            escape(&note),
            escape(&report.missing_trials.join(", "))
        );
    }
    let _ = writeln!(
        s,
        "<p>{} — vlmtest {} — {} ({} cores)</p>",
        escape(&report.started_at),
        escape(&report.vlmtest_version),
        escape(&report.machine.cpu),
        report.machine.logical_cores
    );
    let summary = super::markdown::summary_rows(report);
    let _ = writeln!(s, "<table><tr>");
    for h in super::markdown::SUMMARY_HEADER {
        let _ = write!(s, "<th>{}</th>", escape(h));
    }
    let _ = writeln!(s, "</tr>");
    for row in summary {
        let _ = write!(s, "<tr>");
        for cell in row {
            let _ = write!(s, "<td>{}</td>", escape(&cell));
        }
        let _ = writeln!(s, "</tr>");
    }
    let _ = writeln!(s, "</table>");

    if !report.comparisons.is_empty() {
        let _ = writeln!(
            s,
            "<h2>Against the baseline</h2>\n<table><tr><th>model</th><th>suite</th><th>n</th><th>base acc</th><th>new acc</th><th>Δ (95% CI)</th><th>pass→fail</th><th>fail→pass</th><th>p (McNemar)</th><th>verdict</th></tr>"
        );
        for c in &report.comparisons {
            let f = |x: Option<f64>| x.map_or("–".to_string(), |v| format!("{v:.3}"));
            let delta = match (c.delta, c.ci_low, c.ci_high) {
                (Some(d), Some(lo), Some(hi)) => format!("{d:+.3} ({lo:+.3} to {hi:+.3})"),
                (Some(d), _, _) => format!("{d:+.3}"),
                _ => "–".into(),
            };
            let regressed = c.verdict == crate::compare::Verdict::Regressed;
            let _ = writeln!(
                s,
                "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.4}</td><td>{:?}</td></tr>",
                if regressed { "failed" } else { "passed" },
                escape(&c.model),
                escape(&c.suite),
                c.n,
                f(c.base_accuracy),
                f(c.new_accuracy),
                escape(&delta),
                c.pass_to_fail,
                c.fail_to_pass,
                c.p_value,
                c.verdict
            );
        }
        let _ = writeln!(s, "</table>");
        for c in report.comparisons.iter().filter(|c| !c.flips.is_empty()) {
            let _ = writeln!(
                s,
                "<p><strong>{} × {}</strong> flipped:</p><ul>",
                escape(&c.model),
                escape(&c.suite)
            );
            for fl in &c.flips {
                let word = |p: bool| if p { "pass" } else { "fail" };
                let _ = writeln!(
                    s,
                    "<li><code>{}</code>: {} {} → {} {}</li>",
                    escape(&fl.case),
                    word(fl.base_passed),
                    escape(&format!("{:?}", fl.base_answer)),
                    word(fl.new_passed),
                    escape(&format!("{:?}", fl.new_answer))
                );
            }
            let _ = writeln!(s, "</ul>");
        }
    }
    let mut groups: BTreeMap<(&str, &str), Vec<_>> = BTreeMap::new();
    for c in &report.cases {
        groups
            .entry((c.model.as_str(), c.suite.as_str()))
            .or_default()
            .push(c);
    }
    for ((model, suite), cases) in groups {
        let _ = writeln!(s, "<h2>{} — {}</h2>", escape(model), escape(suite));
        let _ = writeln!(
            s,
            "<table><tr><th>case</th><th>images</th><th>question</th><th>expected</th><th>answer</th><th>score</th><th>latency (ms)</th><th>why</th></tr>"
        );
        for c in cases {
            let class = match c.status() {
                Status::Passed => "passed",
                Status::Failed => "failed",
                Status::Error | Status::Interrupted => "error",
                Status::Ignored => "ignored",
            };
            let mut imgs = String::new();
            let mut questions = String::new();
            let mut expected = String::new();
            let mut answers = String::new();
            for t in &c.turns {
                for shown in &t.images {
                    let key = (c.suite.clone(), shown.clone());
                    if images.contains_key(&key) {
                        let n = ids.len();
                        let id = *ids.entry(key).or_insert(n);
                        let _ = write!(imgs, "<img data-img=\"{id}\" alt=\"{}\">", escape(shown));
                    }
                }
                let _ = writeln!(questions, "{}", t.question);
                let _ = writeln!(expected, "{}", t.expected.as_deref().unwrap_or("–"));
                let _ = writeln!(answers, "{}", t.answer);
            }
            let why = match &c.outcome {
                crate::verdict::Outcome::Ignored(i) => i.clone(),
                o => o.reasons().join("\n"),
            };
            let _ = writeln!(
                s,
                "<tr class=\"{class}\"><td>{}</td><td>{imgs}</td><td><pre>{}</pre></td><td><pre>{}</pre></td><td><pre>{}</pre></td><td>{:.3}</td><td>{:.0}</td><td><pre>{}</pre></td></tr>",
                escape(&c.case),
                escape(questions.trim_end()),
                escape(expected.trim_end()),
                escape(answers.trim_end()),
                c.score,
                c.latency_ms,
                escape(&why)
            );
        }
        let _ = writeln!(s, "</table>");
    }
    // Each image once, as a data URL, set on every <img> that shows it.
    let _ = writeln!(s, "<script>const IMG = {{");
    for ((suite, shown), id) in &ids {
        if let Some(img) = images.get(&(suite.clone(), shown.clone()))
            && let Ok(bytes) = std::fs::read(&img.path)
        {
            let mime = &img.mime;
            let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
            let _ = writeln!(s, "\"{id}\": \"data:{mime};base64,{b64}\",");
        }
    }
    let _ = writeln!(
        s,
        "}};\nfor (const img of document.querySelectorAll('img[data-img]')) {{ img.src = IMG[img.dataset.img] || ''; }}\n</script>\n</body></html>"
    );
    s
}
