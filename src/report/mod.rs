//! Outputs under `VLMTEST_OUT`, as a pure function of plain run facts and records.
//!
//! The records are appended as the run goes, so a crash keeps them: `cases.jsonl` (one line per
//! finished case), `gates.jsonl` (one line per evaluated gate), `models.jsonl` (a model's load
//! figures when it loads and when it is dropped), and `run.json` (the [`RunFacts`] of the plan:
//! models, gates, images, trial names). [`Report::build`] turns facts and records into
//! report.json; [`markdown`], [`junit`] and [`html`] render that. The [`Recorder`] keeps the
//! files up to date during a run; [`rebuild`] (`vlmtest report`) recomputes every output from
//! the records alone.

pub(crate) mod html;
pub(crate) mod junit;
pub(crate) mod markdown;
pub(crate) mod merge;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::machine::Machine;
use crate::verdict::{CaseResult, GateResult, SuiteResult, Summary};

/// A failure to write or read the outputs, naming the file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OutputError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a vlmtest {what}: {source}")]
    Parse {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("no results under {0} (run `cargo test --test vlm` first)")]
    NoResults(PathBuf),
    /// The output folder or its record files cannot be created.
    #[error("cannot write results under {} (VLMTEST_OUT): {source}", .out.display())]
    Open {
        out: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A record could not be appended (the first such failure of the run).
    #[error("cannot append to {name}: {source}")]
    Append {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// What the plan said, written once per run as run.json: enough to render the reports from the
/// records alone.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct RunFacts {
    /// Identifies the run across processes (cargo-nextest runs one process per test).
    pub run_id: String,
    pub started_at: String,
    /// Set when the run ended normally.
    #[serde(default)]
    pub finished_at: Option<String>,
    pub machine: Machine,
    /// The enabled models, sorted by name.
    pub models: Vec<ModelFacts>,
    /// Every model × suite gate of the plan.
    pub gates: Vec<GateFacts>,
    /// Every image the suites show, for the HTML report.
    pub images: Vec<ImageFacts>,
    /// Every trial of the plan, in order.
    #[serde(default)]
    pub trials: Vec<String>,
    /// The folder the models' baselines were read from (`vlmtest merge` compares with them).
    #[serde(default)]
    pub baselines: Option<PathBuf>,
    /// Every case of the suites as it is asked, for the HTML report to show the question and
    /// images of a case that was not asked (ignored).
    #[serde(default)]
    pub cases: Vec<CaseFacts>,
}

/// A case of a suite: what each turn asks, shows and expects.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CaseFacts {
    pub suite: String,
    pub case: String,
    pub turns: Vec<TurnFacts>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TurnFacts {
    pub question: String,
    /// The images as the suite names them.
    pub images: Vec<String>,
    pub expected: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ModelFacts {
    pub name: String,
    pub backend: String,
    /// Whether it can answer without an image.
    pub text_only: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct GateFacts {
    pub model: String,
    pub suite: String,
    pub min_accuracy: Option<f64>,
    pub min_pass_rate: Option<f64>,
    #[serde(default)]
    pub alpha: Option<f64>,
    #[serde(default)]
    pub max_drop: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ImageFacts {
    pub suite: String,
    /// The path as the suite writes it.
    pub shown: String,
    pub path: PathBuf,
    pub mime: String,
}

/// A model's load figures, as models.jsonl records them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct ModelStats {
    pub name: String,
    pub load_s: Option<f64>,
    /// Growth of this process's resident memory across the load (in-process models).
    pub memory_growth_bytes: Option<i64>,
    /// Resident memory of the model's own process (managed servers).
    pub external_memory_bytes: Option<u64>,
    /// Highest resident memory of the process seen while the model was loaded.
    pub peak_memory_bytes: Option<u64>,
    pub load_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<crate::fingerprint::Fingerprint>,
}

/// How a model did on the cases that need an image, or on those that do not.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Capability {
    pub cases: usize,
    pub passed: usize,
    /// Declared unable (`text_only = false`) for the text-only capability.
    pub unsupported: bool,
}

/// One model in the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ModelReport {
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
    /// What identifies the model's answers (backend, weights, settings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<crate::fingerprint::Fingerprint>,
    /// What preprocessing made of the images, where the model says (image tokens per image, tile
    /// grid, a hash of the pixel tensor): `digest` covers every case's, so two runs that differ
    /// only in preprocessing are told apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocessing: Option<PreprocessingFingerprint>,
}

/// A digest of every preprocessing summary of a model's cases, and the first one as a sample.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PreprocessingFingerprint {
    pub digest: String,
    /// Turns with a summary.
    pub turns: usize,
    pub first: serde_json::Value,
}

fn preprocessing_fingerprint(cases: &[&CaseResult]) -> Option<PreprocessingFingerprint> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut turns = 0;
    let mut first = None;
    for c in cases {
        for (k, t) in c.turns.iter().enumerate() {
            if let Some(p) = &t.preprocessing {
                h.update(format!("{}#{k}\0{p}\0", c.name).as_bytes());
                turns += 1;
                first.get_or_insert_with(|| p.clone());
            }
        }
    }
    first.map(|first| PreprocessingFingerprint {
        digest: crate::fingerprint::hex(&h.finalize())[..16].to_string(),
        turns,
        first,
    })
}

impl ModelReport {
    /// The model's memory for the summary table: its server's resident memory when it has its
    /// own process, else the growth of this process across its load.
    pub(crate) fn memory_bytes(&self) -> Option<f64> {
        self.external_memory_bytes
            .map(|b| b as f64)
            .or(self.memory_growth_bytes.map(|b| b as f64))
    }
}

/// report.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Report {
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
    /// Each model × suite against the model's baseline, when it has one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub comparisons: Vec<crate::compare::Comparison>,
    /// Trials of the plan that no shard ran (`vlmtest merge`): the run is incomplete.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_trials: Vec<String>,
}

impl Report {
    /// "incomplete: N trials missing", when some are.
    pub(crate) fn missing_note(&self) -> Option<String> {
        match self.missing_trials.len() {
            0 => None,
            1 => Some("incomplete: 1 trial missing".into()),
            n => Some(format!("incomplete: {n} trials missing")),
        }
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl Report {
    /// report.json from the plan's facts and the records: cases (the last record per name
    /// wins), evaluated gates, and models' load figures. Model × suites whose gate did not run
    /// (a filtered run) still get their figures, with the gate marked ignored.
    pub(crate) fn build(
        facts: &RunFacts,
        mut cases: Vec<CaseResult>,
        mut suites: Vec<SuiteResult>,
        stats: &[ModelStats],
        complete: bool,
    ) -> Report {
        dedup_last(&mut cases, |c| c.name.clone());
        dedup_last(&mut suites, |s| (s.model.clone(), s.suite.clone()));
        cases.sort_by(|a, b| a.name.cmp(&b.name));
        for g in &facts.gates {
            if suites
                .iter()
                .any(|s| s.model == g.model && s.suite == g.suite)
            {
                continue;
            }
            let ran: Vec<&CaseResult> = cases
                .iter()
                .filter(|c| c.model == g.model && c.suite == g.suite)
                .collect();
            if ran.is_empty() {
                continue;
            }
            let summary = Summary::of(ran.iter().copied());
            suites.push(SuiteResult {
                model: g.model.clone(),
                suite: g.suite.clone(),
                accuracy: summary.accuracy,
                pass_rate: summary.pass_rate,
                summary,
                gate: GateResult {
                    passed: false,
                    ignored: true,
                    deferred: false,
                    min_accuracy: g.min_accuracy,
                    min_pass_rate: g.min_pass_rate,
                    failures: vec!["gate not run (filtered out)".into()],
                },
                failed_cases: Vec::new(),
            });
        }
        suites.sort_by(|a, b| (&a.model, &a.suite).cmp(&(&b.model, &b.suite)));
        // The last figures per model; a peak is the highest any record saw.
        let mut by_model: BTreeMap<&str, ModelStats> = BTreeMap::new();
        for s in stats {
            let e = by_model
                .entry(s.name.as_str())
                .or_insert_with(|| ModelStats {
                    name: s.name.clone(),
                    ..ModelStats::default()
                });
            let peak = e.peak_memory_bytes.max(s.peak_memory_bytes);
            let external = e.external_memory_bytes.max(s.external_memory_bytes);
            if s.load_s.is_some() || s.load_error.is_some() {
                e.load_s = s.load_s;
                e.memory_growth_bytes = s.memory_growth_bytes;
                e.load_error = s.load_error.clone();
            }
            e.peak_memory_bytes = peak;
            e.external_memory_bytes = external;
            if s.fingerprint.is_some() {
                e.fingerprint = s.fingerprint.clone();
            }
        }
        let models = facts
            .models
            .iter()
            .filter_map(|m| {
                let mine: Vec<&CaseResult> = cases.iter().filter(|c| c.model == m.name).collect();
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
                        passed: ran.iter().filter(|c| c.passed()).count(),
                        unsupported: !image && !m.text_only,
                    }
                };
                let stats = by_model.get(m.name.as_str()).cloned().unwrap_or_default();
                Some(ModelReport {
                    name: m.name.clone(),
                    backend: m.backend.clone(),
                    text_only: m.text_only,
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
                    fingerprint: stats.fingerprint.clone(),
                    preprocessing: preprocessing_fingerprint(&mine),
                })
            })
            .collect();
        Report {
            vlmtest_version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: facts.started_at.clone(),
            finished_at: if complete {
                Some(
                    facts
                        .finished_at
                        .clone()
                        .unwrap_or_else(|| rfc3339(SystemTime::now())),
                )
            } else {
                None
            },
            complete,
            machine: facts.machine.clone(),
            peak_memory_bytes: by_model.values().filter_map(|s| s.peak_memory_bytes).max(),
            models,
            suites,
            cases,
            comparisons: Vec::new(),
            missing_trials: Vec::new(),
        }
    }

    /// Every output file's name and text.
    fn render_all(&self, facts: &RunFacts) -> [(&'static str, String); 4] {
        [
            ("report.json", to_json(self)),
            ("report.md", markdown::render(self)),
            ("junit.xml", junit::render(self)),
            ("report.html", html::render(self, facts)),
        ]
    }
}

/// The records of a run as read back from `VLMTEST_OUT`.
pub(crate) struct Records {
    pub facts: RunFacts,
    pub cases: Vec<CaseResult>,
    pub suites: Vec<SuiteResult>,
    pub stats: Vec<ModelStats>,
    pub comparisons: Vec<crate::compare::Comparison>,
}

impl Records {
    /// Reads run.json and the .jsonl records of `out`. A record line cut short by a crash is
    /// skipped (with a warning); a missing run.json (a run that crashed before its first case, or
    /// an older vlmtest) gives empty facts.
    pub(crate) fn read(out: &Path) -> Result<Records, OutputError> {
        let cases_path = out.join(CASES);
        if !cases_path.is_file() {
            return Err(OutputError::NoResults(out.to_path_buf()));
        }
        let facts = match std::fs::read_to_string(out.join(RUN)) {
            Ok(text) => serde_json::from_str(&text).map_err(|source| OutputError::Parse {
                path: out.join(RUN),
                what: "run.json",
                source,
            })?,
            Err(_) => RunFacts::default(),
        };
        Ok(Records {
            facts,
            cases: read_jsonl(&cases_path)?,
            suites: read_jsonl(&out.join(GATES)).unwrap_or_default(),
            stats: read_jsonl(&out.join(MODELS)).unwrap_or_default(),
            comparisons: read_jsonl(&out.join(COMPARISONS)).unwrap_or_default(),
        })
    }

    pub(crate) fn report(&self) -> Report {
        let complete = self.facts.finished_at.is_some();
        let mut r = Report::build(
            &self.facts,
            self.cases.clone(),
            self.suites.clone(),
            &self.stats,
            complete,
        );
        r.comparisons = last_comparisons(self.comparisons.clone());
        r
    }
}

/// `vlmtest report`: recomputes report.json, report.md, junit.xml and report.html from the
/// records under `out` (a run killed with SIGKILL leaves only those) and returns the report.
pub(crate) fn rebuild(out: &Path) -> Result<Report, OutputError> {
    let records = Records::read(out)?;
    let report = records.report();
    for (name, text) in report.render_all(&records.facts) {
        write_atomic(&out.join(name), &text)?;
    }
    Ok(report)
}

const CASES: &str = "cases.jsonl";
const GATES: &str = "gates.jsonl";
const MODELS: &str = "models.jsonl";
const RUN: &str = "run.json";
const COMPARISONS: &str = "comparisons.jsonl";

/// The last comparison per model × suite, sorted.
fn last_comparisons(mut c: Vec<crate::compare::Comparison>) -> Vec<crate::compare::Comparison> {
    dedup_last(&mut c, |x| (x.model.clone(), x.suite.clone()));
    c.sort_by(|a, b| (&a.model, &a.suite).cmp(&(&b.model, &b.suite)));
    c
}

struct Inner {
    opened: bool,
    /// Cases other processes of the run recorded, read incrementally from cases.jsonl.
    others: std::collections::HashMap<String, CaseResult>,
    others_offset: u64,
    cases_file: Option<File>,
    gates_file: Option<File>,
    models_file: Option<File>,
    comparisons_file: Option<File>,
    comparisons: Vec<crate::compare::Comparison>,
    cases: Vec<CaseResult>,
    suites: Vec<SuiteResult>,
    stats: Vec<ModelStats>,
    last_write: Option<Instant>,
    /// The first failure to write an output: [`Recorder::finish`] returns it.
    error: Option<OutputError>,
}

/// Collects records as they come and keeps the files under `VLMTEST_OUT` up to date.
pub(crate) struct Recorder {
    out: PathBuf,
    facts: RunFacts,
    /// Several processes write the records of one run (cargo-nextest).
    shared: bool,
    /// Only the records are written; `vlmtest report` renders them after the run
    /// (`VLMTEST_REPORT=defer` under cargo-nextest).
    deferred: bool,
    inner: Mutex<Inner>,
}

const REWRITE_EVERY: Duration = Duration::from_millis(500);

impl Recorder {
    /// A recorder for a run with these facts. `run_id` in the facts decides whether files left
    /// by earlier processes of the same run are kept (cargo-nextest: `NEXTEST_RUN_ID`).
    pub(crate) fn new(out: &Path, facts: RunFacts, shared: bool) -> Recorder {
        Recorder {
            out: out.to_path_buf(),
            facts,
            shared,
            deferred: false,
            inner: Mutex::new(Inner {
                opened: false,
                others: std::collections::HashMap::new(),
                others_offset: 0,
                cases_file: None,
                gates_file: None,
                models_file: None,
                comparisons_file: None,
                comparisons: Vec::new(),
                cases: Vec::new(),
                suites: Vec::new(),
                stats: Vec::new(),
                last_write: None,
                error: None,
            }),
        }
    }

    /// Whether this process leaves the reports to `vlmtest report`: it then appends its records
    /// and reads none of the others' (constant work per process, however long the run).
    pub(crate) fn deferring(mut self, deferred: bool) -> Recorder {
        self.deferred = deferred;
        self
    }

    /// A run id for a run in one process: unique per process start.
    pub(crate) fn new_run_id() -> String {
        std::env::var("NEXTEST_RUN_ID").unwrap_or_else(|_| {
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            format!("{}-{nanos}", std::process::id())
        })
    }

    pub(crate) fn started_at() -> String {
        rfc3339(SystemTime::now())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens the output directory on first use (a `--list` run never gets here).
    ///
    /// Processes of one run share the files: the first process of a run truncates the records
    /// and writes run.json; the others append, so every process's report covers the whole run
    /// so far.
    fn open(&self, inner: &mut Inner) {
        if inner.opened {
            return;
        }
        inner.opened = true;
        match self.open_files() {
            Ok([cases, gates, models, comparisons]) => {
                inner.cases_file = Some(cases);
                inner.gates_file = Some(gates);
                inner.models_file = Some(models);
                inner.comparisons_file = Some(comparisons);
            }
            Err(source) => {
                inner.error = Some(OutputError::Open {
                    out: self.out.clone(),
                    source,
                })
            }
        }
    }

    fn open_files(&self) -> std::io::Result<[File; 4]> {
        std::fs::create_dir_all(&self.out)?;
        let lock = File::create(self.out.join(".lock"))?;
        lock.lock()?;
        let marker = self.out.join("run-id");
        let same_run =
            std::fs::read_to_string(&marker).is_ok_and(|id| id.trim() == self.facts.run_id);
        if !same_run {
            for name in [CASES, GATES, MODELS, COMPARISONS] {
                File::create(self.out.join(name))?;
            }
            std::fs::write(self.out.join(RUN), to_json(&self.facts))?;
            std::fs::write(&marker, &self.facts.run_id)?;
        }
        let open = |name: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.out.join(name))
        };
        let files = [
            open(CASES)?,
            open(GATES)?,
            open(MODELS)?,
            open(COMPARISONS)?,
        ];
        lock.unlock()?;
        Ok(files)
    }

    /// Appends a finished case to cases.jsonl at once, in one write.
    pub(crate) fn record_case(&self, r: &CaseResult) {
        let mut inner = self.lock();
        self.open(&mut inner);
        append(&mut inner, |i| &mut i.cases_file, CASES, r);
        inner.cases.push(r.clone());
    }

    pub(crate) fn record_suite(&self, s: &SuiteResult) {
        let mut inner = self.lock();
        self.open(&mut inner);
        append(&mut inner, |i| &mut i.gates_file, GATES, s);
        inner.suites.push(s.clone());
    }

    /// Records a model × suite's comparison with its baseline.
    pub(crate) fn record_comparison(&self, c: &crate::compare::Comparison) {
        let mut inner = self.lock();
        self.open(&mut inner);
        append(&mut inner, |i| &mut i.comparisons_file, COMPARISONS, c);
        inner.comparisons.push(c.clone());
    }

    /// Records a model's load figures (when it loads, and when it is dropped).
    pub(crate) fn record_model(&self, s: &ModelStats) {
        let mut inner = self.lock();
        self.open(&mut inner);
        append(&mut inner, |i| &mut i.models_file, MODELS, s);
        inner.stats.push(s.clone());
    }

    /// The last record of case `name` in this run's cases.jsonl, when another process of the run
    /// (cargo-nextest) recorded it. Reads only what was appended since the last call.
    pub(crate) fn recorded_case(&self, name: &str) -> Option<CaseResult> {
        if !self.shared {
            return None;
        }
        let mut inner = self.lock();
        self.open(&mut inner);
        let path = self.out.join(CASES);
        if let Ok(mut f) = File::open(&path) {
            use std::io::{Read, Seek, SeekFrom};
            let mut buf = Vec::new();
            if f.seek(SeekFrom::Start(inner.others_offset)).is_ok()
                && f.read_to_end(&mut buf).is_ok()
            {
                // Only whole lines: a line being appended right now is read next time.
                let whole = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                for line in buf[..whole].split(|&b| b == b'\n') {
                    if let Ok(c) = serde_json::from_slice::<CaseResult>(line) {
                        inner.others.insert(c.name.clone(), c);
                    }
                }
                inner.others_offset += whole as u64;
            }
        }
        inner.others.get(name).cloned()
    }

    /// The cases of one model × suite this run has recorded so far (every process's, under
    /// cargo-nextest).
    pub(crate) fn recorded_cases(&self, model: &str, suite: &str) -> Vec<CaseResult> {
        let _ = self.recorded_case("");
        let inner = self.lock();
        let mut all: Vec<CaseResult> = inner
            .cases
            .iter()
            .chain(inner.others.values())
            .filter(|c| c.model == model && c.suite == suite)
            .cloned()
            .collect();
        dedup_last(&mut all, |c| c.name.clone());
        all
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

    /// The report of what has been recorded so far (by every process of the run).
    pub(crate) fn snapshot(&self, complete: bool) -> Report {
        let (cases, suites, stats, comparisons) = if self.shared {
            match Records::read(&self.out) {
                Ok(r) => (r.cases, r.suites, r.stats, r.comparisons),
                Err(_) => Default::default(),
            }
        } else {
            let inner = self.lock();
            (
                inner.cases.clone(),
                inner.suites.clone(),
                inner.stats.clone(),
                inner.comparisons.clone(),
            )
        };
        let mut r = Report::build(&self.facts, cases, suites, &stats, complete);
        r.comparisons = last_comparisons(comparisons);
        r
    }

    /// Rewrites report.json with what has been recorded so far, at most twice a second.
    ///
    /// Not under cargo-nextest (`shared`): there a process runs one trial and rewrites every
    /// report when it finishes; a progress rewrite before that would read all of the run's
    /// records once more for nothing (it doubled each process's cost at 15,000 records).
    pub(crate) fn write_progress(&self) {
        if self.shared || !self.claim_rewrite() {
            return;
        }
        let report = self.snapshot(false);
        let result = write_atomic(&self.out.join("report.json"), &to_json(&report));
        let mut inner = self.lock();
        // The next rewrite is due REWRITE_EVERY after this one ends, however long it took.
        inner.last_write = Some(Instant::now());
        if let Err(e) = result {
            inner.error.get_or_insert(e);
        }
    }

    /// Writes every output, `complete` or not (an interrupted run). Returns the first error
    /// of the run.
    pub(crate) fn finish(&self, complete: bool) -> Result<(), OutputError> {
        if !self.lock().opened {
            return Ok(()); // nothing ran
        }
        let mut facts = self.facts.clone();
        if complete {
            facts.finished_at = Some(rfc3339(SystemTime::now()));
            let _ = write_atomic(&self.out.join(RUN), &to_json(&facts));
        }
        // Deferred: the reports are `vlmtest report`'s to write.
        let writes: Vec<Result<(), OutputError>> = if self.deferred {
            Vec::new()
        } else {
            self.snapshot(complete)
                .render_all(&facts)
                .into_iter()
                .map(|(name, text)| write_atomic(&self.out.join(name), &text))
                .collect()
        };
        if let Some(e) = self.lock().error.take() {
            return Err(e);
        }
        writes
            .into_iter()
            .collect::<Result<Vec<()>, OutputError>>()
            .map(|_| ())
    }

    pub(crate) fn out(&self) -> &Path {
        &self.out
    }
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

fn write_atomic(path: &Path, text: &str) -> Result<(), OutputError> {
    // Unique per process and write: concurrent processes of one run never share a temp file.
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp.{}.{n}", std::process::id()));
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|source| OutputError::Write {
            path: path.to_path_buf(),
            source,
        })
}

/// Appends `value` as one JSON line to a records file (one `write` call, so a line is never
/// interleaved with another process's), remembering the first failure.
fn append<T: Serialize>(
    inner: &mut Inner,
    file: fn(&mut Inner) -> &mut Option<File>,
    name: &'static str,
    value: &T,
) {
    let line = format!("{}\n", serde_json::to_string(value).unwrap_or_default());
    if let Some(f) = file(inner).as_mut()
        && let Err(source) = f.write_all(line.as_bytes())
    {
        inner
            .error
            .get_or_insert(OutputError::Append { name, source });
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

fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>, OutputError> {
    let text = std::fs::read_to_string(path).map_err(|source| OutputError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<T>(line) {
            Ok(c) => out.push(c),
            // The last line of a killed run may be cut short.
            Err(e) => tracing::warn!("{}:{}: skipped: {e}", path.display(), i + 1),
        }
    }
    Ok(out)
}
