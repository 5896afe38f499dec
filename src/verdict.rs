//! Verdicts: what a case or a gate came to. Produced by `run`, consumed by `report`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::snapshot::SnapshotStatus;

/// A case's outcome in one word, as report.json's `status` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Status {
    Passed,
    Failed,
    /// The model could not answer (request failed, model failed to load).
    Error,
    Ignored,
    /// The run was interrupted (Ctrl-C, SIGTERM) while the case was being asked.
    Interrupted,
}

/// How a case ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    Passed,
    /// It was answered but did not pass: why, one line each (wrong answer, latency, snapshot).
    Failed(Vec<String>),
    /// The model could not answer (request failed, model failed to load).
    Error(String),
    /// It was not asked, and why.
    Ignored(String),
    /// It was being asked when the run was interrupted.
    Interrupted,
}

impl Outcome {
    pub(crate) fn status(&self) -> Status {
        match self {
            Outcome::Passed => Status::Passed,
            Outcome::Failed(_) => Status::Failed,
            Outcome::Error(_) => Status::Error,
            Outcome::Ignored(_) => Status::Ignored,
            Outcome::Interrupted => Status::Interrupted,
        }
    }

    pub(crate) fn passed(&self) -> bool {
        matches!(self, Outcome::Passed)
    }

    /// Why the case did not pass, one line each (empty when it passed or was ignored).
    pub(crate) fn reasons(&self) -> Vec<&str> {
        match self {
            Outcome::Failed(r) => r.iter().map(String::as_str).collect(),
            Outcome::Error(e) => vec![e.as_str()],
            Outcome::Interrupted => vec!["interrupted before the model answered"],
            Outcome::Passed | Outcome::Ignored(_) => Vec::new(),
        }
    }
}

/// One turn of a case as it ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TurnResult {
    pub question: String,
    pub prompt: String,
    pub images: Vec<String>,
    pub answer: String,
    /// What the turn expected, when it has an expectation.
    pub expected: Option<String>,
    pub score: Option<f64>,
    pub latency_ms: f64,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// From the start of the request to the first new token (in-process models; servers that
    /// report their own timings, such as llama-server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_first_token_ms: Option<f64>,
    /// Decoding speed after the first token: (tokens - 1) / (latency - time to first token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_second: Option<f64>,
    pub retries: u32,
    /// What preprocessing made of this turn's images (in-process models that say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocessing: Option<serde_json::Value>,
}

/// One attempt of a case asked several times (`repeat`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Attempt {
    /// The answer at the last turn.
    pub answer: String,
    pub score: f64,
    pub passed: bool,
    pub latency_ms: f64,
    /// Time to first token of the first turn, where the backend measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<f64>,
    /// Decoding speed (mean over the turns), where the backend measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_s: Option<f64>,
    /// Why it did not pass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

/// How often a case asked several times passed, with a 95% Wilson interval.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Repeats {
    pub attempts: u32,
    pub passes: u32,
    pub pass_rate: f64,
    /// 95% Wilson score interval of the pass rate.
    pub pass_rate_low: f64,
    pub pass_rate_high: f64,
    /// The fraction of attempts the case needed to pass.
    pub min_pass_rate: f64,
    pub latency_p50_ms: f64,
    pub latency_p95_ms: f64,
    pub latency_max_ms: f64,
    /// Every attempt, in order.
    pub attempt_results: Vec<Attempt>,
}

/// The 95% Wilson score interval of `k` successes in `n` trials.
pub(crate) fn wilson(k: u32, n: u32) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let z = 1.959_963_984_540_054_f64;
    let (k, n) = (k as f64, n as f64);
    let p = k / n;
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// The `q`-quantile (0..=1) of `values` by linear interpolation between closest ranks (numpy's
/// default), 0 for none.
pub(crate) fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// The verdict on one case for one model.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(into = "CaseRecord", from = "CaseRecord")]
pub(crate) struct CaseResult {
    pub name: String,
    pub model: String,
    pub suite: String,
    pub case: String,
    pub category: Option<String>,
    /// The prompt sent at the last turn (the whole conversation is in `turns`).
    pub prompt: String,
    /// The answer at the last turn.
    pub answer: String,
    pub score: f64,
    /// The score a case needs to pass.
    pub pass_at: f64,
    pub outcome: Outcome,
    /// Total generation time over the turns.
    pub latency_ms: f64,
    pub max_latency_ms: Option<f64>,
    pub has_image: bool,
    /// Official VQA accuracy, for cases with human answers.
    pub vqa_accuracy: Option<f64>,
    /// "Simple accuracy": the answer contains one of the human answers.
    pub simple_correct: Option<bool>,
    pub snapshot: SnapshotStatus,
    pub turns: Vec<TurnResult>,
    /// Replayed from a recording (`VLMTEST_CACHE`): latency and speed budgets were not checked.
    pub replayed: bool,
    /// Time to first token (first turn) and decoding speed (mean over turns) of the first
    /// attempt, where the backend measured them.
    pub ttft_ms: Option<f64>,
    pub tokens_per_s: Option<f64>,
    /// Asked several times (`repeat` > 1).
    pub repeats: Option<Repeats>,
}

/// A case as report.json and cases.jsonl write it: the outcome spread over `passed`, `status`,
/// `reasons`, `ignored` and `error`, the keys tools read.
#[derive(Serialize, Deserialize)]
struct CaseRecord {
    name: String,
    model: String,
    suite: String,
    case: String,
    category: Option<String>,
    prompt: String,
    answer: String,
    score: f64,
    pass_at: f64,
    passed: bool,
    status: Status,
    latency_ms: f64,
    max_latency_ms: Option<f64>,
    has_image: bool,
    vqa_accuracy: Option<f64>,
    simple_correct: Option<bool>,
    snapshot: SnapshotStatus,
    reasons: Vec<String>,
    ignored: Option<String>,
    error: Option<String>,
    turns: Vec<TurnResult>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    replayed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ttft_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tokens_per_s: Option<f64>,
    // `repeats`, spread over top-level keys (present only for cases asked several times).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    passes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pass_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pass_rate_low: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pass_rate_high: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min_pass_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    latency_p50_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    latency_p95_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    latency_max_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    attempt_results: Option<Vec<Attempt>>,
}

impl From<CaseResult> for CaseRecord {
    fn from(c: CaseResult) -> Self {
        CaseRecord {
            passed: c.outcome.passed(),
            status: c.outcome.status(),
            reasons: c
                .outcome
                .reasons()
                .into_iter()
                .map(str::to_string)
                .collect(),
            ignored: match &c.outcome {
                Outcome::Ignored(why) => Some(why.clone()),
                _ => None,
            },
            error: match &c.outcome {
                Outcome::Error(e) => Some(e.clone()),
                _ => None,
            },
            name: c.name,
            model: c.model,
            suite: c.suite,
            case: c.case,
            category: c.category,
            prompt: c.prompt,
            answer: c.answer,
            score: c.score,
            pass_at: c.pass_at,
            latency_ms: c.latency_ms,
            max_latency_ms: c.max_latency_ms,
            has_image: c.has_image,
            vqa_accuracy: c.vqa_accuracy,
            simple_correct: c.simple_correct,
            snapshot: c.snapshot,
            turns: c.turns,
            replayed: c.replayed,
            ttft_ms: c.ttft_ms,
            tokens_per_s: c.tokens_per_s,
            attempts: c.repeats.as_ref().map(|r| r.attempts),
            passes: c.repeats.as_ref().map(|r| r.passes),
            pass_rate: c.repeats.as_ref().map(|r| r.pass_rate),
            pass_rate_low: c.repeats.as_ref().map(|r| r.pass_rate_low),
            pass_rate_high: c.repeats.as_ref().map(|r| r.pass_rate_high),
            min_pass_rate: c.repeats.as_ref().map(|r| r.min_pass_rate),
            latency_p50_ms: c.repeats.as_ref().map(|r| r.latency_p50_ms),
            latency_p95_ms: c.repeats.as_ref().map(|r| r.latency_p95_ms),
            latency_max_ms: c.repeats.as_ref().map(|r| r.latency_max_ms),
            attempt_results: c.repeats.map(|r| r.attempt_results),
        }
    }
}

impl From<CaseRecord> for CaseResult {
    fn from(r: CaseRecord) -> Self {
        let outcome = match r.status {
            Status::Passed => Outcome::Passed,
            Status::Failed => Outcome::Failed(r.reasons),
            Status::Error => Outcome::Error(
                r.error
                    .or_else(|| r.reasons.into_iter().next())
                    .unwrap_or_default(),
            ),
            Status::Ignored => Outcome::Ignored(r.ignored.unwrap_or_default()),
            Status::Interrupted => Outcome::Interrupted,
        };
        CaseResult {
            name: r.name,
            model: r.model,
            suite: r.suite,
            case: r.case,
            category: r.category,
            prompt: r.prompt,
            answer: r.answer,
            score: r.score,
            pass_at: r.pass_at,
            outcome,
            latency_ms: r.latency_ms,
            max_latency_ms: r.max_latency_ms,
            has_image: r.has_image,
            vqa_accuracy: r.vqa_accuracy,
            simple_correct: r.simple_correct,
            snapshot: r.snapshot,
            turns: r.turns,
            replayed: r.replayed,
            ttft_ms: r.ttft_ms,
            tokens_per_s: r.tokens_per_s,
            repeats: match (r.attempts, r.passes, r.attempt_results) {
                (Some(attempts), Some(passes), Some(attempt_results)) => Some(Repeats {
                    attempts,
                    passes,
                    pass_rate: r.pass_rate.unwrap_or_default(),
                    pass_rate_low: r.pass_rate_low.unwrap_or_default(),
                    pass_rate_high: r.pass_rate_high.unwrap_or_default(),
                    min_pass_rate: r.min_pass_rate.unwrap_or(1.0),
                    latency_p50_ms: r.latency_p50_ms.unwrap_or_default(),
                    latency_p95_ms: r.latency_p95_ms.unwrap_or_default(),
                    latency_max_ms: r.latency_max_ms.unwrap_or_default(),
                    attempt_results,
                }),
                _ => None,
            },
        }
    }
}

impl CaseResult {
    /// Whether the case was asked to the end (passed, failed or errored): what summaries count.
    pub(crate) fn ran(&self) -> bool {
        !matches!(self.outcome, Outcome::Ignored(_) | Outcome::Interrupted)
    }

    pub(crate) fn passed(&self) -> bool {
        self.outcome.passed()
    }

    pub(crate) fn status(&self) -> Status {
        self.outcome.status()
    }

    /// The failure message libtest prints: question, expected, answer, score and why.
    pub(crate) fn failure_message(&self) -> String {
        let pass_at = self.pass_at;
        let mut s = String::new();
        let multi = self.turns.len() > 1;
        for (i, t) in self.turns.iter().enumerate() {
            if multi {
                let _ = writeln!(s, "turn {}:", i + 1);
            }
            let ind = if multi { "  " } else { "" };
            let _ = writeln!(s, "{ind}question: {}", t.question);
            if !t.images.is_empty() {
                let _ = writeln!(s, "{ind}images:   {}", t.images.join(", "));
            }
            if let Some(e) = &t.expected {
                let _ = writeln!(s, "{ind}expected: {e}");
            }
            let _ = writeln!(s, "{ind}answer:   {:?}", t.answer);
            if let Some(sc) = t.score {
                let _ = writeln!(s, "{ind}score:    {sc:.3}");
            }
        }
        if multi {
            let _ = writeln!(s, "case score: {:.3} (mean over scored turns)", self.score);
        }
        let _ = writeln!(s, "passes at: {pass_at:.3}");
        match self.max_latency_ms {
            Some(max) => {
                let _ = writeln!(
                    s,
                    "latency:  {:.0} ms (budget {max:.0} ms)",
                    self.latency_ms
                );
            }
            None => {
                let _ = writeln!(s, "latency:  {:.0} ms", self.latency_ms);
            }
        }
        if self.replayed {
            let _ = writeln!(
                s,
                "replayed: the answer comes from the recording (latency and speed budgets not checked)"
            );
        }
        for r in self.outcome.reasons() {
            let _ = writeln!(s, "why:      {r}");
        }
        s.trim_end().to_string()
    }
}

/// Accuracy figures over a set of cases (those that ran).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Summary {
    pub cases: usize,
    pub ignored: usize,
    pub passed: usize,
    pub errors: usize,
    /// Mean case score.
    pub accuracy: Option<f64>,
    /// Fraction of cases passed.
    pub pass_rate: Option<f64>,
    pub vqa_accuracy: Option<f64>,
    pub simple_accuracy: Option<f64>,
    pub mean_latency_ms: Option<f64>,
    /// Category → (mean score, cases).
    pub per_category: BTreeMap<String, CategoryScore>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct CategoryScore {
    pub accuracy: f64,
    pub cases: usize,
}

fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| sum / n as f64)
}

impl Summary {
    pub(crate) fn of<'a>(results: impl IntoIterator<Item = &'a CaseResult>) -> Summary {
        let all: Vec<&CaseResult> = results.into_iter().collect();
        let ran: Vec<&CaseResult> = all.iter().copied().filter(|r| r.ran()).collect();
        let mut cats: BTreeMap<String, (f64, usize)> = BTreeMap::new();
        for r in &ran {
            let c = r.category.clone().unwrap_or_else(|| "(none)".into());
            let e = cats.entry(c).or_default();
            e.0 += r.score;
            e.1 += 1;
        }
        Summary {
            cases: ran.len(),
            ignored: all.len() - ran.len(),
            passed: ran.iter().filter(|r| r.passed()).count(),
            errors: ran.iter().filter(|r| r.status() == Status::Error).count(),
            accuracy: mean(ran.iter().map(|r| r.score)),
            pass_rate: mean(ran.iter().map(|r| if r.passed() { 1.0 } else { 0.0 })),
            vqa_accuracy: mean(ran.iter().filter_map(|r| r.vqa_accuracy)),
            simple_accuracy: mean(
                ran.iter()
                    .filter_map(|r| r.simple_correct)
                    .map(|b| if b { 1.0 } else { 0.0 }),
            ),
            mean_latency_ms: mean(
                ran.iter()
                    .filter(|r| r.status() != Status::Error)
                    .map(|r| r.latency_ms),
            ),
            per_category: cats
                .into_iter()
                .map(|(k, (sum, n))| {
                    (
                        k,
                        CategoryScore {
                            accuracy: sum / n as f64,
                            cases: n,
                        },
                    )
                })
                .collect(),
        }
    }
}

/// The verdict on a model × suite gate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct GateResult {
    pub passed: bool,
    pub ignored: bool,
    /// Evaluated over this shard's cases only, the verdict left to `vlmtest merge`
    /// (`VLMTEST_GATES=defer`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deferred: bool,
    pub min_accuracy: Option<f64>,
    pub min_pass_rate: Option<f64>,
    /// Human-readable reasons the gate failed.
    pub failures: Vec<String>,
}

/// A model × suite: its summary and gate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SuiteResult {
    pub model: String,
    pub suite: String,
    pub accuracy: Option<f64>,
    pub pass_rate: Option<f64>,
    pub summary: Summary,
    pub gate: GateResult,
    /// Cases that did not pass: (case id, first reason).
    pub failed_cases: Vec<(String, String)>,
}

impl SuiteResult {
    /// The gate's message: accuracy overall and per category, and which cases failed.
    pub(crate) fn message(&self) -> String {
        let s = &self.summary;
        let mut m = String::new();
        let verdict = if self.gate.passed { "passed" } else { "failed" };
        let _ = writeln!(
            m,
            "gate {verdict} for model `{}` on suite `{}` ({} cases ran, {} ignored)",
            self.model, self.suite, s.cases, s.ignored
        );
        let fmt = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.3}"));
        let cmp = |v: Option<f64>, min: Option<f64>| match (v, min) {
            (Some(v), Some(min)) if v < min => format!(" < minimum {min:.3}"),
            (_, Some(min)) => format!(" >= minimum {min:.3}"),
            _ => String::new(),
        };
        let _ = writeln!(
            m,
            "  accuracy  {}{}",
            fmt(s.accuracy),
            cmp(s.accuracy, self.gate.min_accuracy)
        );
        let _ = writeln!(
            m,
            "  pass rate {} ({}/{}){}",
            fmt(s.pass_rate),
            s.passed,
            s.cases,
            cmp(s.pass_rate, self.gate.min_pass_rate)
        );
        if !s.per_category.is_empty() {
            let _ = writeln!(m, "  per category:");
            for (c, v) in &s.per_category {
                let _ = writeln!(m, "    {c:<20} {:.3} ({} cases)", v.accuracy, v.cases);
            }
        }
        if !self.failed_cases.is_empty() {
            let _ = writeln!(m, "  failed cases:");
            for (c, why) in &self.failed_cases {
                let _ = writeln!(m, "    {c}: {why}");
            }
        }
        m.trim_end().to_string()
    }
}

/// The thresholds a gate checks.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct GateThresholds {
    pub min_accuracy: Option<f64>,
    pub min_pass_rate: Option<f64>,
}

/// The verdict on a model × suite from its cases: the accuracy and pass rate over the cases
/// that ran, against the thresholds. No case ran: the gate is ignored.
pub(crate) fn evaluate_gate<'a>(
    model: &str,
    suite: &str,
    t: GateThresholds,
    results: impl IntoIterator<Item = &'a CaseResult>,
) -> SuiteResult {
    let results: Vec<&CaseResult> = results.into_iter().collect();
    let summary = Summary::of(results.iter().copied());
    let mut failures = Vec::new();
    if let (Some(min), Some(acc)) = (t.min_accuracy, summary.accuracy)
        && acc < min
    {
        failures.push(format!("accuracy {acc:.3} < min_accuracy {min:.3}"));
    }
    if let (Some(min), Some(rate)) = (t.min_pass_rate, summary.pass_rate)
        && rate < min
    {
        failures.push(format!("pass rate {rate:.3} < min_pass_rate {min:.3}"));
    }
    let ignored = summary.cases == 0;
    let failed_cases = results
        .iter()
        .filter(|r| r.ran() && !r.passed())
        .map(|r| {
            (
                r.case.clone(),
                r.outcome
                    .reasons()
                    .first()
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
            )
        })
        .collect();
    SuiteResult {
        model: model.to_string(),
        suite: suite.to_string(),
        accuracy: summary.accuracy,
        pass_rate: summary.pass_rate,
        summary,
        gate: GateResult {
            passed: !ignored && failures.is_empty(),
            ignored,
            deferred: false,
            min_accuracy: t.min_accuracy,
            min_pass_rate: t.min_pass_rate,
            failures,
        },
        failed_cases,
    }
}
