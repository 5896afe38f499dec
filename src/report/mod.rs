//! Outputs under `VLMTEST_OUT`: `cases.jsonl` (appended as each case finishes), `report.json`
//! (rewritten as the run goes, at most twice a second, and at the end), `report.md`,
//! `junit.xml`.

pub mod html;
pub mod junit;
pub mod machine;
pub mod markdown;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::run::Run;
use crate::verdict::{CaseResult, SuiteResult, Summary};
use machine::Machine;

/// How a model did on the cases that need an image, or on those that do not.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Capability {
    pub cases: usize,
    pub passed: usize,
    /// Declared unable (`text_only = false`) for the text-only capability.
    pub unsupported: bool,
}

/// One model in the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelReport {
    pub name: String,
    pub backend: String,
    pub text_only: bool,
    pub load_s: Option<f64>,
    pub memory_growth_bytes: Option<i64>,
    pub external_memory_bytes: Option<u64>,
    pub peak_memory_bytes: Option<u64>,
    pub load_error: Option<String>,
    /// Requests retried (and managed-server restarts) over the model's cases.
    pub retries: u64,
    pub vision: Capability,
    pub text: Capability,
    pub summary: Summary,
}

impl ModelReport {
    /// The model's memory for the summary table: its server's resident memory when it has its
    /// own process, else the growth of this process across its load.
    pub fn memory_bytes(&self) -> Option<f64> {
        self.external_memory_bytes
            .map(|b| b as f64)
            .or(self.memory_growth_bytes.map(|b| b as f64))
    }
}

/// report.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub vlmtest_version: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// False while the run is going on (or if it crashed).
    pub complete: bool,
    pub machine: Machine,
    /// Highest resident memory of the test process during the run.
    pub peak_memory_bytes: Option<u64>,
    pub models: Vec<ModelReport>,
    pub suites: Vec<SuiteResult>,
    pub cases: Vec<CaseResult>,
}

struct Inner {
    opened: bool,
    jsonl: Option<File>,
    gates: Option<File>,
    cases: Vec<CaseResult>,
    suites: Vec<SuiteResult>,
    last_write: Option<Instant>,
    error: Option<String>,
}

/// Collects verdicts as they come and keeps the files under `VLMTEST_OUT` up to date.
pub struct Recorder {
    out: PathBuf,
    started: SystemTime,
    /// Identifies the run across processes (cargo-nextest runs one process per test).
    run_id: String,
    machine: std::sync::OnceLock<Machine>,
    inner: Mutex<Inner>,
}

const REWRITE_EVERY: Duration = Duration::from_millis(500);

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl Recorder {
    pub fn new(out: &Path) -> Recorder {
        Recorder {
            out: out.to_path_buf(),
            started: SystemTime::now(),
            run_id: std::env::var("NEXTEST_RUN_ID").unwrap_or_else(|_| {
                let nanos = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                format!("{}-{nanos}", std::process::id())
            }),
            machine: std::sync::OnceLock::new(),
            inner: Mutex::new(Inner {
                opened: false,
                jsonl: None,
                gates: None,
                cases: Vec::new(),
                suites: Vec::new(),
                last_write: None,
                error: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens the output directory on first use (a `--list` run never gets here).
    ///
    /// Processes of one run share the files: under cargo-nextest (one process per test, the same
    /// `NEXTEST_RUN_ID`) the first process of the run truncates cases.jsonl and gates.jsonl and
    /// the others append, so every process's report covers the whole run so far.
    fn open(&self, inner: &mut Inner) {
        if inner.opened {
            return;
        }
        inner.opened = true;
        match self.open_files() {
            Ok((cases, gates)) => {
                inner.jsonl = Some(cases);
                inner.gates = Some(gates);
            }
            Err(e) => {
                inner.error = Some(format!(
                    "cannot write results under {} (VLMTEST_OUT): {e}",
                    self.out.display()
                ))
            }
        }
    }

    fn open_files(&self) -> std::io::Result<(File, File)> {
        std::fs::create_dir_all(&self.out)?;
        let lock = File::create(self.out.join(".lock"))?;
        lock.lock()?;
        let marker = self.out.join("run-id");
        let same_run = std::fs::read_to_string(&marker).is_ok_and(|id| id.trim() == self.run_id);
        let open = |name: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.out.join(name))
        };
        if !same_run {
            File::create(self.out.join("cases.jsonl"))?;
            File::create(self.out.join("gates.jsonl"))?;
            std::fs::write(&marker, &self.run_id)?;
        }
        let files = (open("cases.jsonl")?, open("gates.jsonl")?);
        lock.unlock()?;
        Ok(files)
    }

    /// Appends a finished case to cases.jsonl at once.
    pub fn record_case(&self, r: &CaseResult) {
        let mut inner = self.lock();
        self.open(&mut inner);
        append(&mut inner, |i| &mut i.jsonl, "cases.jsonl", r);
        inner.cases.push(r.clone());
    }

    pub fn record_suite(&self, s: &SuiteResult) {
        let mut inner = self.lock();
        self.open(&mut inner);
        append(&mut inner, |i| &mut i.gates, "gates.jsonl", s);
        inner
            .suites
            .retain(|x| !(x.model == s.model && x.suite == s.suite));
        inner.suites.push(s.clone());
    }

    /// Claims the next rewrite of report.json when one is due (throttled so a long run is not
    /// quadratic); only the thread that claims it rebuilds the report.
    fn claim_rewrite(&self) -> bool {
        let mut inner = self.lock();
        let due = inner
            .last_write
            .is_none_or(|t| t.elapsed() >= REWRITE_EVERY);
        if due {
            inner.last_write = Some(Instant::now());
        }
        due
    }

    /// Builds the report from what has been recorded so far.
    pub fn snapshot(&self, run: &Run, complete: bool) -> Report {
        let inner = self.lock();
        let shared = std::env::var_os("NEXTEST_RUN_ID").is_some();
        let (mut cases, mut suites) = if shared {
            // Other processes of the run appended theirs; the last verdict per name wins.
            let cases = read_jsonl::<CaseResult>(&self.out.join("cases.jsonl")).unwrap_or_default();
            let suites =
                read_jsonl::<SuiteResult>(&self.out.join("gates.jsonl")).unwrap_or_default();
            (cases, suites)
        } else {
            (inner.cases.clone(), inner.suites.clone())
        };
        drop(inner);
        dedup_last(&mut cases, |c| c.name.clone());
        dedup_last(&mut suites, |s| (s.model.clone(), s.suite.clone()));
        cases.sort_by(|a, b| a.name.cmp(&b.name));
        // Model × suites whose gate did not run (a filtered run) still get their figures.
        for g in &run.plan.gates {
            let model = &run.plan.model(g.model).name;
            let suite = &run.plan.config.suites[g.suite].name;
            if suites
                .iter()
                .any(|s| &s.model == model && &s.suite == suite)
            {
                continue;
            }
            let ran: Vec<&CaseResult> = cases
                .iter()
                .filter(|c| &c.model == model && &c.suite == suite)
                .collect();
            if ran.is_empty() {
                continue;
            }
            let summary = Summary::of(ran.iter().copied());
            suites.push(SuiteResult {
                model: model.clone(),
                suite: suite.clone(),
                accuracy: summary.accuracy,
                pass_rate: summary.pass_rate,
                summary,
                gate: crate::verdict::GateResult {
                    passed: false,
                    ignored: true,
                    min_accuracy: g.thresholds.min_accuracy,
                    min_pass_rate: g.thresholds.min_pass_rate,
                    failures: vec!["gate not run (filtered out)".into()],
                },
                failed_cases: Vec::new(),
            });
        }
        suites.sort_by(|a, b| (&a.model, &a.suite).cmp(&(&b.model, &b.suite)));
        let models = run
            .slots
            .iter()
            .filter_map(|slot| {
                let name = &slot.spec.name;
                let mine: Vec<&CaseResult> = cases.iter().filter(|c| &c.model == name).collect();
                if mine.is_empty() {
                    return None;
                }
                let cap = |image: bool| {
                    let ran: Vec<&&CaseResult> = mine
                        .iter()
                        .filter(|c| c.has_image == image && c.ran())
                        .collect();
                    Capability {
                        cases: ran.len(),
                        passed: ran.iter().filter(|c| c.passed).count(),
                        unsupported: !image && !slot.spec.text_only,
                    }
                };
                let stats = slot.stats();
                Some(ModelReport {
                    name: name.clone(),
                    backend: slot.spec.backend.kind().to_string(),
                    text_only: slot.spec.text_only,
                    load_s: stats.load_s,
                    memory_growth_bytes: stats.memory_growth_bytes,
                    external_memory_bytes: stats.external_memory_bytes,
                    peak_memory_bytes: stats.peak_memory_bytes,
                    load_error: stats.load_error,
                    retries: mine
                        .iter()
                        .flat_map(|c| &c.turns)
                        .map(|t| u64::from(t.retries))
                        .sum(),
                    vision: cap(true),
                    text: cap(false),
                    summary: Summary::of(mine.iter().copied()),
                })
            })
            .collect();
        Report {
            vlmtest_version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: rfc3339(self.started),
            finished_at: complete.then(|| rfc3339(SystemTime::now())),
            complete,
            machine: self.machine.get_or_init(Machine::detect).clone(),
            peak_memory_bytes: machine::process_peak_rss(),
            models,
            suites,
            cases,
        }
    }

    /// Rewrites report.json with what has been recorded so far.
    pub fn write_progress(&self, run: &Run) {
        if !self.claim_rewrite() {
            return;
        }
        let report = self.snapshot(run, false);
        let result = write_atomic(&self.out.join("report.json"), &to_json(&report));
        let mut inner = self.lock();
        // The next rewrite is due REWRITE_EVERY after this one ends, however long it took.
        inner.last_write = Some(Instant::now());
        if let Err(e) = result {
            inner.error = Some(e);
        }
    }

    /// Writes every output at the end of the run. Returns the first write error of the run.
    pub fn finish(&self, run: &Run) -> Result<(), String> {
        self.write_all(run, true)
    }

    /// Writes every output for an interrupted run (`complete: false`).
    pub fn finish_interrupted(&self, run: &Run) -> Result<(), String> {
        self.write_all(run, false)
    }

    fn write_all(&self, run: &Run, complete: bool) -> Result<(), String> {
        if !self.lock().opened {
            return Ok(()); // nothing ran
        }
        let report = self.snapshot(run, complete);
        let writes = [
            write_atomic(&self.out.join("report.json"), &to_json(&report)),
            write_atomic(&self.out.join("report.md"), &markdown::render(&report)),
            write_atomic(&self.out.join("junit.xml"), &junit::render(&report)),
            write_atomic(
                &self.out.join("report.html"),
                &html::render(&report, &image_files(run)),
            ),
        ];
        let inner = self.lock();
        if let Some(e) = &inner.error {
            return Err(e.clone());
        }
        writes
            .into_iter()
            .collect::<Result<Vec<()>, String>>()
            .map(|_| ())
    }

    pub fn out(&self) -> &Path {
        &self.out
    }
}

/// (suite, image as written) → the file and its MIME type, for the HTML report.
fn image_files(run: &Run) -> std::collections::HashMap<(String, String), (PathBuf, &'static str)> {
    let mut out = std::collections::HashMap::new();
    for suite in &run.plan.config.suites {
        for case in &suite.cases {
            for turn in &case.turns {
                for img in &turn.images {
                    out.insert(
                        (suite.name.clone(), img.shown.clone()),
                        (img.path.clone(), img.mime),
                    );
                }
            }
        }
    }
    out
}

fn to_json(report: &Report) -> String {
    serde_json::to_string_pretty(report).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

fn write_atomic(path: &Path, text: &str) -> Result<(), String> {
    // Unique per process and write: concurrent processes of one run never share a temp file.
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp.{}.{n}", std::process::id()));
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Reads the last run's report: report.json, or the cases appended to cases.jsonl when the run
/// ended before writing it.
pub fn load(out: &Path) -> Result<Report, String> {
    let json = out.join("report.json");
    match std::fs::read_to_string(&json) {
        Ok(text) => {
            let mut report: Report = serde_json::from_str(&text)
                .map_err(|e| format!("{} is not a vlmtest report: {e}", json.display()))?;
            // A run that ended early: cases.jsonl may hold more than the last rewrite.
            if !report.complete
                && let Ok(cases) = read_jsonl(&out.join("cases.jsonl"))
                && cases.len() > report.cases.len()
            {
                report.cases = cases;
            }
            Ok(report)
        }
        Err(_) => {
            let cases = read_jsonl(&out.join("cases.jsonl")).map_err(|e| {
                format!(
                    "no report under {} (run `cargo test --test vlm` first): {e}",
                    out.display()
                )
            })?;
            Ok(Report {
                vlmtest_version: env!("CARGO_PKG_VERSION").to_string(),
                started_at: String::new(),
                finished_at: None,
                complete: false,
                machine: Machine::default(),
                peak_memory_bytes: None,
                models: Vec::new(),
                suites: Vec::new(),
                cases,
            })
        }
    }
}

/// Appends `value` as one JSON line to a results file, remembering the first failure.
fn append<T: Serialize>(
    inner: &mut Inner,
    file: fn(&mut Inner) -> &mut Option<File>,
    name: &str,
    value: &T,
) {
    let line = format!("{}\n", serde_json::to_string(value).unwrap_or_default());
    if let Some(f) = file(inner).as_mut()
        && let Err(e) = f.write_all(line.as_bytes())
    {
        inner.error = Some(format!("cannot append to {name}: {e}"));
    }
}

/// Keeps the last item for each key, in the order of their last occurrence.
fn dedup_last<T, K: Eq + std::hash::Hash>(items: &mut Vec<T>, key: impl Fn(&T) -> K) {
    let mut seen = std::collections::HashSet::new();
    let mut kept: Vec<T> = Vec::with_capacity(items.len());
    for item in std::mem::take(items).into_iter().rev() {
        if seen.insert(key(&item)) {
            kept.push(item);
        }
    }
    kept.reverse();
    *items = kept;
}

fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<T>(line) {
            Ok(c) => out.push(c),
            // The last line of a crashed run may be cut short.
            Err(e) => tracing::warn!("{}:{}: skipped: {e}", path.display(), i + 1),
        }
    }
    Ok(out)
}
