//! report.html: the page people look at after a run. One self-contained file (no external
//! assets; plain JavaScript for the filters), readable at desktop and phone widths:
//!
//! 1. a header (when, which vlmtest, which machine; a banner when the run did not finish) and
//!    the case counts;
//! 2. the summary table (report.md's) and the model × suite table with gates and per-category
//!    accuracy;
//! 3. every case — **failures first**, then passes, then ignored cases — with its images beside
//!    each turn's question, expected answer and answer, its score and latency, and why it did not
//!    pass; filters by model, suite, category and failed-only.
//!
//! Each image file is embedded once, as a data URL in a table at the end of the page that the
//! `<img data-img="N">` elements take their source from, however many cases and suites show it.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine;

use super::junit::escape;
use super::{CaseFacts, ImageFacts, Report, RunFacts, TurnFacts};
use crate::verdict::{CaseResult, Outcome, Status};

const STYLE: &str = r#"
:root{--fail:#b42318;--pass:#1a7f37;--skip:#6e7781;--line:#d8dee4;--muted:#57606a;--bg:#f6f8fa}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#1f2328;background:var(--bg)}
main{max-width:1280px;margin:0 auto;padding:16px 20px 40px}
h1{font-size:22px;margin:0 0 2px}
h2{font-size:17px;margin:22px 0 8px}
.sub{color:var(--muted);margin:0 0 10px}
.banner{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:8px 12px;margin:8px 0}
.counts{display:flex;flex-wrap:wrap;gap:8px;margin:8px 0 4px}
.counts span,.counts a{background:#fff;border:1px solid var(--line);border-radius:12px;padding:2px 10px;color:inherit;text-decoration:none}
.counts a:hover{border-color:var(--muted)}
.counts .nfail{color:var(--fail);font-weight:600}
.counts .npass{color:var(--pass)}
.scroll{overflow-x:auto;background:#fff;border:1px solid var(--line);border-radius:6px}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:6px 10px;text-align:left;vertical-align:top;border-bottom:1px solid var(--line)}
th{background:#eef1f4;font-weight:600;white-space:nowrap}
tr:last-child td{border-bottom:0}
td.num{white-space:nowrap}
.ok{color:var(--pass);font-weight:600}
.bad{color:var(--fail);font-weight:600}
.quiet{color:var(--muted)}
.filters{position:sticky;top:0;z-index:2;display:flex;flex-wrap:wrap;gap:8px 16px;align-items:center;background:#fff;border:1px solid var(--line);border-radius:6px;padding:8px 12px;margin-bottom:10px;box-shadow:0 1px 3px rgba(0,0,0,.06)}
.filters label{display:flex;gap:6px;align-items:center;white-space:nowrap}
.filters select{font:inherit;padding:3px 4px;max-width:14em}
#shown{margin-left:auto;color:var(--muted)}
.case{display:grid;grid-template-columns:minmax(120px,220px) minmax(0,1fr);gap:14px;background:#fff;border:1px solid var(--line);border-left:5px solid var(--skip);border-radius:6px;padding:12px;margin-bottom:10px}
.case[hidden]{display:none}
.case.failed,.case.error,.case.interrupted{border-left-color:var(--fail)}
.case.passed{border-left-color:var(--pass)}
.case.ignored{color:#424a53}
.imgs img{display:block;width:100%;height:auto;max-height:200px;object-fit:contain;object-position:left top;margin-bottom:6px;border-radius:4px;background:#eef1f4;cursor:zoom-in}
.imgs img.big{max-height:none;cursor:zoom-out}
.imgs .none{color:var(--muted);font-style:italic}
.case h3{font-size:14px;margin:0 0 8px;display:flex;flex-wrap:wrap;gap:6px 8px;align-items:center;word-break:break-all}
.badge{font-size:11px;font-weight:700;letter-spacing:.03em;text-transform:uppercase;color:#fff;background:var(--skip);border-radius:10px;padding:1px 8px}
.badge.failed,.badge.error,.badge.interrupted{background:var(--fail)}
.badge.passed{background:var(--pass)}
.tag{font-size:12px;color:var(--muted);border:1px solid var(--line);border-radius:10px;padding:0 7px;word-break:normal}
dl{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:3px 12px;margin:0}
dt{color:var(--muted)}
dd{margin:0;white-space:pre-wrap;overflow-wrap:anywhere}
dt.turn{grid-column:1/-1;color:#1f2328;font-weight:600;margin-top:6px}
dd.answer{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px}
dd.answer.wrong{color:var(--fail)}
.mark{font-family:system-ui,sans-serif;font-size:12px;color:var(--muted);margin-left:8px;white-space:nowrap}
.meta{display:flex;flex-wrap:wrap;gap:4px 16px;margin:8px 0 0;color:var(--muted)}
.meta b{color:#1f2328;font-weight:600}
.why{margin:6px 0 0;white-space:pre-wrap;overflow-wrap:anywhere;color:var(--fail)}
.ignored .why{color:var(--muted)}
#none{color:var(--muted);padding:12px}
@media (max-width:720px){
main{padding:10px 10px 30px}
h1{font-size:19px}
td,th{white-space:nowrap}
.case{grid-template-columns:minmax(0,1fr);gap:8px;padding:10px}
.imgs{display:flex;flex-wrap:wrap;gap:6px}
.imgs img{width:auto;max-width:100%;max-height:170px;margin:0}
dl{gap:2px 8px}
.filters{gap:6px 10px}
.filters label{flex:1 1 40%}
.filters select{flex:1;max-width:none;min-width:0}
#shown{margin-left:0;flex-basis:100%}
}
"#;

const SCRIPT: &str = r#"
for (const img of document.querySelectorAll('img[data-img]')) {
  const src = IMG[img.dataset.img];
  if (src) img.src = src;
  img.addEventListener('click', () => img.classList.toggle('big'));
}
const pick = {
  model: document.getElementById('f-model'),
  suite: document.getElementById('f-suite'),
  category: document.getElementById('f-category'),
  failed: document.getElementById('f-failed'),
};
const cases = Array.from(document.querySelectorAll('.case'));
function apply() {
  let shown = 0;
  for (const c of cases) {
    const ok = (!pick.model.value || c.dataset.model === pick.model.value)
      && (!pick.suite.value || c.dataset.suite === pick.suite.value)
      && (!pick.category.value || c.dataset.category === pick.category.value)
      && (!pick.failed.checked || c.dataset.failed === '1');
    c.hidden = !ok;
    if (ok) shown++;
  }
  document.getElementById('shown').textContent = shown + ' of ' + cases.length + ' cases shown';
  document.getElementById('none').hidden = shown > 0;
}
for (const el of Object.values(pick)) el.addEventListener('change', apply);
for (const a of document.querySelectorAll('a[data-failed-only]')) {
  a.addEventListener('click', () => {
    pick.failed.checked = a.dataset.failedOnly === '1';
    apply();
  });
}
apply();
"#;

/// The value a case's category has in the category filter (`cat:NAME`, or `none`).
fn category_key(c: Option<&str>) -> String {
    match c {
        Some(c) => format!("cat:{c}"),
        None => "none".into(),
    }
}

/// Whether a case counts as failed (the failed-only filter, and the order of the page).
fn is_failure(c: &CaseResult) -> bool {
    matches!(
        c.status(),
        Status::Failed | Status::Error | Status::Interrupted
    )
}

/// Failures first, then passes, then ignored cases; in report order within each.
fn rank(c: &CaseResult) -> u8 {
    match c.status() {
        Status::Failed | Status::Error | Status::Interrupted => 0,
        Status::Passed => 1,
        Status::Ignored => 2,
    }
}

fn status_word(s: Status) -> &'static str {
    match s {
        Status::Passed => "passed",
        Status::Failed => "failed",
        Status::Error => "error",
        Status::Ignored => "ignored",
        Status::Interrupted => "interrupted",
    }
}

/// Numbers the images of the page: one per file, however many cases and suites show it.
struct Images<'a> {
    known: HashMap<(&'a str, &'a str), &'a ImageFacts>,
    /// The file (or, for an image the run facts do not know, suite and name) → its number.
    ids: HashMap<PathBuf, usize>,
    /// By number: the image to embed (`None`: unknown, shown by its name only).
    files: Vec<Option<&'a ImageFacts>>,
}

impl<'a> Images<'a> {
    fn new(images: &'a [ImageFacts]) -> Self {
        Images {
            known: images
                .iter()
                .map(|i| ((i.suite.as_str(), i.shown.as_str()), i))
                .collect(),
            ids: HashMap::new(),
            files: Vec::new(),
        }
    }

    /// The `<img>` showing `shown` of `suite`.
    fn tag(&mut self, suite: &str, shown: &str) -> String {
        let facts = self.known.get(&(suite, shown)).copied();
        let key = match facts {
            Some(f) => f.path.clone(),
            None => Path::new("?").join(suite).join(shown),
        };
        let id = match self.ids.get(&key) {
            Some(id) => *id,
            None => {
                self.files.push(facts);
                self.ids.insert(key, self.files.len() - 1);
                self.files.len() - 1
            }
        };
        format!("<img data-img=\"{id}\" alt=\"{}\">", escape(shown))
    }

    /// `const IMG = {"0": "data:…", …};`: each image read and embedded once.
    fn table(&self) -> String {
        let mut s = String::from("const IMG = {\n");
        for (id, img) in self.files.iter().enumerate() {
            let Some(img) = img else { continue };
            // Inside <script> nothing is unescaped: the MIME type goes in only if it is plain.
            let plain = |c: char| c.is_ascii_alphanumeric() || "/+.-".contains(c);
            if !img.mime.chars().all(plain) {
                continue;
            }
            match std::fs::read(&img.path) {
                Ok(bytes) => {
                    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
                    let _ = writeln!(s, "\"{id}\": \"data:{};base64,{b64}\",", img.mime);
                }
                Err(e) => {
                    tracing::warn!(image = %img.path.display(), "report.html: cannot read the image: {e}")
                }
            }
        }
        s.push_str("};\n");
        s
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{:.1}%", v * 100.0))
}

/// `images` are the suites' images: (suite, path as written) → the file on disk.
pub(crate) fn render(report: &Report, facts: &RunFacts) -> String {
    let mut images = Images::new(&facts.images);
    let asked: HashMap<(&str, &str), &CaseFacts> = facts
        .cases
        .iter()
        .map(|c| ((c.suite.as_str(), c.case.as_str()), c))
        .collect();
    let mut s = String::new();
    let _ = write!(
        s,
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>vlmtest report</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n"
    );
    header(&mut s, report);
    summary(&mut s, report);
    comparisons(&mut s, report);
    cases(&mut s, report, &asked, &mut images);
    let _ = write!(
        s,
        "</main>\n<script>\n{}{SCRIPT}</script>\n</body>\n</html>\n",
        images.table()
    );
    s
}

fn header(s: &mut String, report: &Report) {
    let m = &report.machine;
    let _ = writeln!(s, "<header>\n<h1>vlmtest report</h1>");
    let when = match &report.finished_at {
        Some(f) => format!(
            "run started {}, finished {}",
            escape(&report.started_at),
            escape(f)
        ),
        None => format!("run started {}", escape(&report.started_at)),
    };
    let _ = writeln!(
        s,
        "<p class=\"sub\">{when} · vlmtest {} · {} ({} cores, {:.0} GB) · {} {}</p>",
        escape(&report.vlmtest_version),
        escape(&m.cpu),
        m.logical_cores,
        m.memory_bytes as f64 / 1e9,
        escape(&m.os),
        escape(&m.arch)
    );
    if let Some(note) = report.missing_note() {
        let _ = writeln!(
            s,
            "<p class=\"banner\"><strong>{}</strong>: no shard ran {}.</p>",
            escape(&note),
            escape(&report.missing_trials.join(", "))
        );
    } else if !report.complete {
        let _ = writeln!(
            s,
            "<p class=\"banner\">This run did not finish (interrupted, crashed or still running): the figures are over the cases that finished.</p>"
        );
    }
    let count = |st: &[Status]| {
        report
            .cases
            .iter()
            .filter(|c| st.contains(&c.status()))
            .count()
    };
    let failed = count(&[Status::Failed, Status::Error, Status::Interrupted]);
    let _ = writeln!(
        s,
        "<p class=\"counts\"><a href=\"#cases\" data-failed-only=\"0\">{} cases</a><a href=\"#cases\" data-failed-only=\"1\" class=\"{}\">{failed} failed</a><span class=\"npass\">{} passed</span><span>{} ignored</span></p>\n</header>",
        report.cases.len(),
        if failed > 0 { "nfail" } else { "" },
        count(&[Status::Passed]),
        count(&[Status::Ignored])
    );
}

fn summary(s: &mut String, report: &Report) {
    let _ = writeln!(
        s,
        "<section id=\"summary\">\n<h2>Summary</h2>\n<div class=\"scroll\">\n<table>\n<thead><tr>"
    );
    for h in super::markdown::SUMMARY_HEADER {
        let _ = write!(s, "<th>{}</th>", escape(h));
    }
    let _ = writeln!(s, "</tr></thead>\n<tbody>");
    for row in super::markdown::summary_rows(report) {
        let _ = write!(s, "<tr>");
        for (i, cell) in row.iter().enumerate() {
            let class = match i {
                0 => "",
                8 if cell.starts_with("pass") => " class=\"ok\"",
                8 if cell != "–" => " class=\"bad\"",
                _ => " class=\"num\"",
            };
            let _ = write!(s, "<td{class}>{}</td>", escape(cell));
        }
        let _ = writeln!(s, "</tr>");
    }
    let _ = writeln!(s, "</tbody>\n</table>\n</div>");
    if report.suites.is_empty() {
        let _ = writeln!(s, "</section>");
        return;
    }
    let _ = writeln!(
        s,
        "<h2>Suites</h2>\n<div class=\"scroll\">\n<table>\n<thead><tr><th>Model</th><th>Suite</th><th>Passed</th><th>Accuracy</th><th>Pass rate</th><th>Gate</th><th>Accuracy per category</th></tr></thead>\n<tbody>"
    );
    for r in &report.suites {
        let sm = &r.summary;
        let gate = if r.gate.ignored {
            "<td class=\"quiet\">not run</td>".to_string()
        } else if r.gate.passed {
            "<td class=\"ok\">pass</td>".to_string()
        } else {
            format!(
                "<td class=\"bad\">FAIL: {}</td>",
                escape(&r.gate.failures.join("; "))
            )
        };
        let cats: Vec<String> = sm
            .per_category
            .iter()
            .map(|(k, v)| format!("{} {} ({})", escape(k), pct(Some(v.accuracy)), v.cases))
            .collect();
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{}/{}{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>{gate}<td>{}</td></tr>",
            escape(&r.model),
            escape(&r.suite),
            sm.passed,
            sm.cases,
            if sm.ignored > 0 {
                format!(" <span class=\"quiet\">({} ignored)</span>", sm.ignored)
            } else {
                String::new()
            },
            pct(r.accuracy),
            pct(r.pass_rate),
            if cats.is_empty() {
                "–".into()
            } else {
                cats.join(" · ")
            }
        );
    }
    let _ = writeln!(s, "</tbody>\n</table>\n</div>\n</section>");
}

/// Each model × suite against the model's baseline, and the cases that flipped.
fn comparisons(s: &mut String, report: &Report) {
    if report.comparisons.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "<section id=\"baseline\">\n<h2>Against the baseline</h2>\n<div class=\"scroll\">\n<table>\n<thead><tr><th>Model</th><th>Suite</th><th>n</th><th>Base acc</th><th>New acc</th><th>Δ (95% CI)</th><th>pass→fail</th><th>fail→pass</th><th>p (McNemar)</th><th>Verdict</th></tr></thead>\n<tbody>"
    );
    let f = |x: Option<f64>| x.map_or("–".to_string(), |v| format!("{v:.3}"));
    for c in &report.comparisons {
        let delta = match (c.delta, c.ci_low, c.ci_high) {
            (Some(d), Some(lo), Some(hi)) => format!("{d:+.3} ({lo:+.3} to {hi:+.3})"),
            (Some(d), _, _) => format!("{d:+.3}"),
            _ => "–".into(),
        };
        let (class, verdict) = match c.verdict {
            crate::compare::Verdict::Regressed => ("fail", "REGRESSED"),
            crate::compare::Verdict::Improved => ("pass", "improved"),
            crate::compare::Verdict::Unchanged => ("", "unchanged"),
        };
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.4}</td><td class=\"{class}\">{verdict}</td></tr>",
            escape(&c.model),
            escape(&c.suite),
            c.n,
            f(c.base_accuracy),
            f(c.new_accuracy),
            escape(&delta),
            c.pass_to_fail,
            c.fail_to_pass,
            c.p_value
        );
    }
    let _ = writeln!(s, "</tbody>\n</table>\n</div>");
    for c in report.comparisons.iter().filter(|c| !c.flips.is_empty()) {
        let _ = writeln!(
            s,
            "<p><strong>{} × {}</strong> flipped:</p>\n<ul>",
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
    let _ = writeln!(s, "</section>");
}

/// A `<select>` of a filter: "all", then each value.
fn select(s: &mut String, id: &str, label: &str, options: &[(String, String)]) {
    let _ = write!(
        s,
        "<label for=\"{id}\">{label} <select id=\"{id}\"><option value=\"\">all</option>"
    );
    for (value, text) in options {
        let _ = write!(
            s,
            "<option value=\"{}\">{}</option>",
            escape(value),
            escape(text)
        );
    }
    let _ = writeln!(s, "</select></label>");
}

fn cases(
    s: &mut String,
    report: &Report,
    asked: &HashMap<(&str, &str), &CaseFacts>,
    images: &mut Images,
) {
    let models: BTreeSet<&str> = report.cases.iter().map(|c| c.model.as_str()).collect();
    let suites: BTreeSet<&str> = report.cases.iter().map(|c| c.suite.as_str()).collect();
    let categories: BTreeSet<Option<&str>> =
        report.cases.iter().map(|c| c.category.as_deref()).collect();
    let _ = writeln!(
        s,
        "<section id=\"cases\">\n<h2>Cases</h2>\n<div class=\"filters\">"
    );
    let both = |v: &&str| (v.to_string(), v.to_string());
    select(
        s,
        "f-model",
        "Model",
        &models.iter().map(both).collect::<Vec<_>>(),
    );
    select(
        s,
        "f-suite",
        "Suite",
        &suites.iter().map(both).collect::<Vec<_>>(),
    );
    let cats: Vec<(String, String)> = categories
        .iter()
        .map(|c| (category_key(*c), c.unwrap_or("(no category)").to_string()))
        .collect();
    select(s, "f-category", "Category", &cats);
    let _ = writeln!(
        s,
        "<label for=\"f-failed\"><input type=\"checkbox\" id=\"f-failed\"> failed only</label>\n<span id=\"shown\">{0} of {0} cases shown</span>\n</div>",
        report.cases.len()
    );
    let mut order: Vec<&CaseResult> = report.cases.iter().collect();
    order.sort_by_key(|c| rank(c));
    let _ = writeln!(s, "<div id=\"case-list\">");
    for c in order {
        case(
            s,
            c,
            asked.get(&(c.suite.as_str(), c.case.as_str())),
            images,
        );
    }
    let _ = writeln!(
        s,
        "</div>\n<p id=\"none\" hidden>No case matches these filters.</p>\n</section>"
    );
}

/// A turn's answer and score, or `None` when it was not asked.
type Answered<'a> = Option<(&'a str, Option<f64>)>;

/// One case: its images, then per turn the question, what was expected and the answer, then
/// score, latency and why it did not pass.
fn case(s: &mut String, c: &CaseResult, asked: Option<&&CaseFacts>, images: &mut Images) {
    let status = status_word(c.status());
    // A case that was not asked has no turns of its own: show the suite's.
    let turns: Vec<(TurnFacts, Answered)> = if c.turns.is_empty() {
        asked
            .map(|a| a.turns.iter().map(|t| (t.clone(), None)).collect())
            .unwrap_or_default()
    } else {
        c.turns
            .iter()
            .map(|t| {
                (
                    TurnFacts {
                        question: t.question.clone(),
                        images: t.images.clone(),
                        expected: t.expected.clone(),
                    },
                    Some((t.answer.as_str(), t.score)),
                )
            })
            .collect()
    };
    let _ = writeln!(
        s,
        "<article class=\"case {status}\" id=\"{}\" data-model=\"{}\" data-suite=\"{}\" data-category=\"{}\" data-status=\"{status}\" data-failed=\"{}\">",
        escape(&c.name),
        escape(&c.model),
        escape(&c.suite),
        escape(&category_key(c.category.as_deref())),
        if is_failure(c) { "1" } else { "0" }
    );
    let _ = write!(s, "<div class=\"imgs\">");
    let mut shown_images = BTreeSet::new();
    for t in &turns {
        for img in &t.0.images {
            if shown_images.insert(img.clone()) {
                s.push_str(&images.tag(&c.suite, img));
            }
        }
    }
    if shown_images.is_empty() {
        let _ = write!(s, "<span class=\"none\">no image (text only)</span>");
    }
    let _ = writeln!(s, "</div>\n<div class=\"body\">");
    let _ = writeln!(
        s,
        "<h3><span class=\"badge {status}\">{status}</span> <span class=\"name\">{}</span>{}</h3>",
        escape(&c.name),
        c.category
            .as_deref()
            .map(|k| format!(" <span class=\"tag\">{}</span>", escape(k)))
            .unwrap_or_default()
    );
    let _ = writeln!(s, "<dl>");
    let multi = turns.len() > 1;
    for (i, (t, answer)) in turns.iter().enumerate() {
        if multi {
            let _ = writeln!(s, "<dt class=\"turn\">turn {}</dt>", i + 1);
        }
        let _ = writeln!(
            s,
            "<dt>question</dt><dd class=\"question\">{}</dd>",
            escape(&t.question)
        );
        let _ = writeln!(
            s,
            "<dt>expected</dt><dd class=\"expected\">{}</dd>",
            escape(t.expected.as_deref().unwrap_or("– (answered only)"))
        );
        match answer {
            Some((a, score)) => {
                // A turn's own score where the case has several (the case's is below).
                let wrong = score.is_some_and(|v| v + 1e-12 < c.pass_at);
                let mark = match score {
                    Some(v) if multi => format!(
                        "<span class=\"mark\">{} {v:.3}</span>",
                        if v + 1e-12 < c.pass_at { "✗" } else { "✓" }
                    ),
                    _ => String::new(),
                };
                let _ = writeln!(
                    s,
                    "<dt>answer</dt><dd class=\"answer{}\">{}{mark}</dd>",
                    if wrong { " wrong" } else { "" },
                    escape(a)
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "<dt>answer</dt><dd class=\"answer quiet\">(not asked)</dd>"
                );
            }
        }
    }
    let _ = writeln!(s, "</dl>");
    if c.ran() {
        let mut meta = format!(
            "<span>score <b>{:.3}</b> (passes at {:.3})</span>",
            c.score, c.pass_at
        );
        if let Some(v) = c.vqa_accuracy {
            let _ = write!(meta, "<span>VQA accuracy <b>{v:.3}</b></span>");
        }
        let _ = write!(meta, "<span>latency <b>{:.0} ms</b>", c.latency_ms);
        if let Some(max) = c.max_latency_ms {
            let _ = write!(meta, " (budget {max:.0} ms)");
        }
        meta.push_str("</span>");
        let _ = writeln!(s, "<p class=\"meta\">{meta}</p>");
    }
    let why = match &c.outcome {
        Outcome::Ignored(why) => why.clone(),
        o => o.reasons().join("\n"),
    };
    if !why.is_empty() {
        let _ = writeln!(s, "<p class=\"why\">{}</p>", escape(&why));
    }
    let _ = writeln!(s, "</div>\n</article>");
}
