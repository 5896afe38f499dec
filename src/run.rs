//! Running the plan: each case is computed once per run, whichever trial asks first (its own
//! trial, or its suite's gate), and recorded as soon as it finishes.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, OnceLock};

use crate::backend::{
    Generation, LoadStats, Message, ModelSlot, Request, Role, Semaphore, SlotUse,
};
use crate::cache::CacheMode;
use crate::config::{Env, GateMode};
use crate::plan::{Plan, TrialKind};
use crate::report::{
    CaseFacts, GateFacts, ImageFacts, ModelFacts, ModelStats, Recorder, RunFacts, TurnFacts,
};
use crate::score;
use crate::snapshot::{Meta, SnapshotStatus, Snapshots};
use crate::verdict::{CaseResult, GateThresholds, Outcome, SuiteResult, TurnResult};

/// The outcome of a trial, for the harness to hand to libtest.
pub(crate) enum TrialOutcome {
    Passed,
    /// Passed, with a line the trial's output should carry (a replayed answer).
    PassedWith(String),
    Failed(String),
    Ignored(String),
}

pub(crate) struct Run {
    pub plan: Plan,
    pub env: Env,
    pub slots: Vec<ModelSlot>,
    cells: Vec<OnceLock<Arc<CaseResult>>>,
    /// Cases being asked right now, recorded as interrupted if the run is.
    in_flight: Mutex<BTreeSet<usize>>,
    /// Per model, its recording when `VLMTEST_CACHE` is not off.
    recordings: Vec<Option<crate::cache::Recording>>,
    snapshots: Snapshots,
    pub recorder: Recorder,
}

/// The plain facts of a plan that the reports need.
fn run_facts(plan: &Plan) -> RunFacts {
    let models = (0..plan.models.len())
        .map(|i| {
            let m = plan.model(i);
            ModelFacts {
                name: m.name.clone(),
                backend: m.backend.kind().to_string(),
                text_only: m.text_only,
            }
        })
        .collect();
    let gates = plan
        .gates
        .iter()
        .map(|g| GateFacts {
            model: plan.model(g.model).name.clone(),
            suite: plan.config.suites[g.suite].name.clone(),
            min_accuracy: g.thresholds.min_accuracy,
            min_pass_rate: g.thresholds.min_pass_rate,
            alpha: plan.config.suites[g.suite].gate.alpha,
            max_drop: plan.config.suites[g.suite].gate.max_drop,
        })
        .collect();
    let mut images: Vec<ImageFacts> = Vec::new();
    let mut seen = BTreeSet::new();
    for suite in &plan.config.suites {
        for case in &suite.cases {
            for img in case.turns.iter().flat_map(|t| &t.images) {
                if seen.insert((suite.name.clone(), img.shown.clone())) {
                    images.push(ImageFacts {
                        suite: suite.name.clone(),
                        shown: img.shown.clone(),
                        path: img.path.clone(),
                        mime: img.mime.to_string(),
                    });
                }
            }
        }
    }
    RunFacts {
        run_id: Recorder::new_run_id(),
        started_at: Recorder::started_at(),
        finished_at: None,
        machine: crate::machine::Machine::detect(),
        models,
        gates,
        images,
        trials: plan.trials.iter().map(|t| t.name.clone()).collect(),
        baselines: (!plan.config.baselines.is_empty()).then(|| plan.config.baselines_dir.clone()),
        cases: plan
            .config
            .suites
            .iter()
            .flat_map(|suite| {
                suite.cases.iter().map(|case| CaseFacts {
                    suite: suite.name.clone(),
                    case: case.id.clone(),
                    turns: case
                        .turns
                        .iter()
                        .map(|t| TurnFacts {
                            question: t.question.clone(),
                            images: t.images.iter().map(|i| i.shown.clone()).collect(),
                            expected: t.rule.as_ref().map(|r| r.to_string()),
                        })
                        .collect(),
                })
            })
            .collect(),
    }
}

fn model_stats(
    name: &str,
    s: LoadStats,
    fingerprint: Option<&crate::fingerprint::Fingerprint>,
) -> ModelStats {
    ModelStats {
        fingerprint: fingerprint.cloned(),
        name: name.to_string(),
        load_s: s.load_s,
        memory_growth_bytes: s.memory_growth_bytes,
        external_memory_bytes: s.external_memory_bytes,
        peak_memory_bytes: s.peak_memory_bytes,
        load_error: s.load_error,
    }
}

impl Run {
    pub(crate) fn new(plan: Plan, env: Env) -> Run {
        let resident = Arc::new(Semaphore::new(env.max_resident));
        let slots = (0..plan.models.len())
            .map(|i| {
                ModelSlot::new(plan.model(i).clone(), resident.clone(), &env.out)
                    .with_fetch(env.fetch)
            })
            .collect();
        let cells = (0..plan.cases.len()).map(|_| OnceLock::new()).collect();
        let snapshots = Snapshots {
            dir: env.snapshots.clone(),
            mode: env.update,
            ci: env.ci,
        };
        let shared = std::env::var_os("NEXTEST_RUN_ID").is_some();
        let recorder = Recorder::new(&env.out, run_facts(&plan), shared)
            .deferring(shared && env.report == crate::config::ReportMode::Defer);
        let recordings = (0..plan.models.len())
            .map(|i| {
                (env.cache != CacheMode::Off)
                    .then(|| crate::cache::Recording::new(&env.cache_dir, &plan.model(i).name))
            })
            .collect();
        Run {
            plan,
            env,
            slots,
            cells,
            in_flight: Mutex::new(BTreeSet::new()),
            recordings,
            snapshots,
            recorder,
        }
    }

    /// Declares which trials will run, so that each model is dropped after its last one.
    pub(crate) fn set_selected(&self, selected: &[TrialKind]) {
        let mut users = vec![0usize; self.slots.len()];
        for k in selected {
            let model = match *k {
                TrialKind::Case(i) => self.plan.cases[i].model,
                TrialKind::Gate(g) | TrialKind::Regression(g) => self.plan.gates[g].model,
            };
            users[model] += 1;
        }
        for (slot, n) in self.slots.iter().zip(users) {
            slot.set_users(n);
        }
    }

    /// The result of planned case `i`, computing it on first request.
    pub(crate) fn case_result(&self, i: usize) -> Arc<CaseResult> {
        self.cells[i]
            .get_or_init(|| {
                self.lock_in_flight().insert(i);
                let r = Arc::new(self.execute(i));
                self.record_model_stats(self.plan.cases[i].model);
                self.recorder.record_case(&r);
                self.lock_in_flight().remove(&i);
                self.recorder.write_progress();
                r
            })
            .clone()
    }

    /// The result of case `i` for a gate: under cargo-nextest (one process per trial) a case
    /// another process of the run already recorded is taken from the records instead of being
    /// asked again; otherwise as [`Run::case_result`].
    fn case_result_for_gate(&self, i: usize) -> Arc<CaseResult> {
        if let Some(r) = self.cells[i].get() {
            return r.clone();
        }
        match self.recorder.recorded_case(&self.plan.cases[i].name) {
            Some(r) => self.cells[i].get_or_init(|| Arc::new(r)).clone(),
            None => self.case_result(i),
        }
    }

    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, BTreeSet<usize>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a model's load figures to the records when they changed.
    fn record_model_stats(&self, model: usize) {
        let slot = &self.slots[model];
        if let Some(stats) = slot.take_changed_stats() {
            self.recorder.record_model(&model_stats(
                &slot.spec.name,
                stats,
                slot.fingerprint_if_known(),
            ));
        }
    }

    /// Runs trial `kind` to its outcome.
    pub(crate) fn trial(&self, kind: TrialKind) -> TrialOutcome {
        let model = match kind {
            TrialKind::Case(i) => self.plan.cases[i].model,
            TrialKind::Gate(g) | TrialKind::Regression(g) => self.plan.gates[g].model,
        };
        let outcome = {
            // Released at the end of the block, even on panic: the last user drops the model.
            let _use = SlotUse(&self.slots[model]);
            self.trial_in_use(kind)
        };
        self.record_model_stats(model);
        outcome
    }

    fn trial_in_use(&self, kind: TrialKind) -> TrialOutcome {
        match kind {
            TrialKind::Case(i) => {
                let r = self.case_result(i);
                match &r.outcome {
                    Outcome::Passed if r.replayed => TrialOutcome::PassedWith(format!(
                        "{}: replayed from the recording (VLMTEST_CACHE={}; latency and speed budgets not checked)",
                        r.name,
                        self.env.cache.name()
                    )),
                    Outcome::Passed => TrialOutcome::Passed,
                    Outcome::Ignored(why) => TrialOutcome::Ignored(why.clone()),
                    Outcome::Failed(_) | Outcome::Error(_) | Outcome::Interrupted => {
                        TrialOutcome::Failed(r.failure_message())
                    }
                }
            }
            TrialKind::Regression(_) if self.env.gates == GateMode::Defer => TrialOutcome::Ignored(
                "regression deferred to `vlmtest merge` (VLMTEST_GATES=defer)".into(),
            ),
            TrialKind::Regression(g) => self.regression(g),
            TrialKind::Gate(g) if self.env.gates == GateMode::Defer => self.defer_gate(g),
            TrialKind::Gate(g) => {
                let gate = &self.plan.gates[g];
                let results: Vec<Arc<CaseResult>> = gate
                    .cases
                    .iter()
                    .map(|&i| self.case_result_for_gate(i))
                    .collect();
                let sr = self.evaluate_gate(g, &results);
                self.recorder.record_suite(&sr);
                if sr.gate.ignored {
                    let why = results
                        .iter()
                        .find_map(|r| match &r.outcome {
                            Outcome::Ignored(why) => Some(why.clone()),
                            _ => None,
                        })
                        .unwrap_or_default();
                    TrialOutcome::Ignored(format!("every case was ignored: {why}"))
                } else if sr.gate.passed {
                    TrialOutcome::Passed
                } else {
                    TrialOutcome::Failed(sr.message())
                }
            }
        }
    }

    /// Gate `g`'s model × suite against the model's baseline (eval mode: every case of the suite
    /// is asked, or taken from the run's records).
    fn regression(&self, g: usize) -> TrialOutcome {
        let gate = &self.plan.gates[g];
        let model = &self.plan.model(gate.model).name;
        let suite = &self.plan.config.suites[gate.suite];
        let Some(baseline) = self.plan.config.baselines.get(model) else {
            return TrialOutcome::Ignored(format!("model `{model}` has no baseline"));
        };
        let results: Vec<Arc<CaseResult>> = gate
            .cases
            .iter()
            .map(|&i| self.case_result_for_gate(i))
            .collect();
        let new = crate::compare::outcomes_of(results.iter().map(|r| r.as_ref()), model);
        let now = self.slots[gate.model].fingerprint();
        match crate::compare::against(
            baseline,
            &suite.name,
            suite.gate.alpha,
            suite.gate.max_drop,
            &new,
            Some(now),
        ) {
            None => TrialOutcome::Ignored(format!(
                "the baseline of `{model}` has no case of suite `{}` (re-take it with `vlmtest baseline`)",
                suite.name
            )),
            Some(c) => {
                self.recorder.record_comparison(&c);
                if c.verdict == crate::compare::Verdict::Regressed {
                    TrialOutcome::Failed(c.message())
                } else {
                    TrialOutcome::PassedWith(c.message())
                }
            }
        }
    }

    /// `VLMTEST_GATES=defer`: figures over the cases this shard ran, no verdict (that is
    /// `vlmtest merge`'s, over every shard's cases).
    fn defer_gate(&self, g: usize) -> TrialOutcome {
        let gate = &self.plan.gates[g];
        let model = &self.plan.model(gate.model).name;
        let suite = &self.plan.config.suites[gate.suite].name;
        let ran = self.recorder.recorded_cases(model, suite);
        let mut sr = self.evaluate_gate_over(g, ran.iter());
        sr.gate.deferred = true;
        sr.gate.passed = false;
        sr.gate.failures.clear();
        self.recorder.record_suite(&sr);
        let acc = sr.accuracy.map_or("-".to_string(), |a| format!("{a:.3}"));
        TrialOutcome::Ignored(format!(
            "gate deferred to `vlmtest merge` (VLMTEST_GATES=defer): accuracy {acc} over the {} case(s) this shard ran",
            sr.summary.cases
        ))
    }

    fn evaluate_gate(&self, g: usize, results: &[Arc<CaseResult>]) -> SuiteResult {
        self.evaluate_gate_over(g, results.iter().map(|r| r.as_ref()))
    }

    fn evaluate_gate_over<'a>(
        &self,
        g: usize,
        results: impl IntoIterator<Item = &'a CaseResult>,
    ) -> SuiteResult {
        let gate = &self.plan.gates[g];
        crate::verdict::evaluate_gate(
            &self.plan.model(gate.model).name,
            &self.plan.config.suites[gate.suite].name,
            GateThresholds {
                min_accuracy: gate.thresholds.min_accuracy,
                min_pass_rate: gate.thresholds.min_pass_rate,
            },
            results,
        )
    }

    fn execute(&self, i: usize) -> CaseResult {
        let pc = &self.plan.cases[i];
        let suite = &self.plan.config.suites[pc.suite];
        let case = &suite.cases[pc.case];
        let slot = &self.slots[pc.model];
        let spec = &slot.spec;
        let budget = case.max_latency_ms.map(|ms| ms as f64 * spec.latency_scale);
        let mut result = CaseResult {
            name: pc.name.clone(),
            model: spec.name.clone(),
            suite: suite.name.clone(),
            case: case.id.clone(),
            category: case.category.clone(),
            prompt: case
                .turns
                .last()
                .map(|t| t.prompt.clone())
                .unwrap_or_default(),
            answer: String::new(),
            score: 0.0,
            pass_at: case.pass_at,
            outcome: Outcome::Passed,
            latency_ms: 0.0,
            max_latency_ms: budget,
            has_image: case.has_images(),
            vqa_accuracy: None,
            simple_correct: None,
            snapshot: SnapshotStatus::Skipped,
            turns: Vec::new(),
            replayed: false,
            ttft_ms: None,
            tokens_per_s: None,
            repeats: None,
        };
        if let Some(reason) = &pc.skip {
            result.outcome = Outcome::Ignored(reason.clone());
            return result;
        }
        let mut params = spec.params.clone();
        if let Some(n) = case.max_new_tokens {
            params.max_new_tokens = n;
        }
        // Computed once per model (it may hash local weight files the first time on a machine).
        slot.fingerprint();
        let repeat = case.repeat.unwrap_or(spec.repeat).max(1);
        let mut attempts: Vec<AttemptRun> = Vec::with_capacity(repeat as usize);
        for a in 0..repeat {
            match self.ask_conversation(i, &params, a, repeat) {
                Ok(run) => attempts.push(run),
                Err(Asked::Unavailable(why)) if !self.env.require_models => {
                    result.outcome = Outcome::Ignored(why);
                    return result;
                }
                Err(Asked::Unavailable(why)) => {
                    return error_result(
                        result,
                        format!(
                            "model `{}` is not available (VLMTEST_REQUIRE_MODELS=1): {why}",
                            spec.name
                        ),
                    );
                }
                Err(Asked::LoadFailed(why)) => {
                    return error_result(
                        result,
                        format!("model `{}` failed to load: {why}", spec.name),
                    );
                }
                Err(Asked::Failed { turns, message }) => {
                    result.turns = turns;
                    return error_result(
                        result,
                        format!("model `{}` could not answer: {message}", spec.name),
                    );
                }
                Err(Asked::NotRecorded { turns, why }) => {
                    result.turns = turns;
                    return error_result(
                        result,
                        format!(
                            "no recorded answer (VLMTEST_CACHE=strict asks nothing live): {why}"
                        ),
                    );
                }
            }
        }

        // Each attempt's own verdict: its score, its latency and speed budgets.
        let checks: Vec<Vec<String>> = attempts
            .iter()
            .map(|a| self.attempt_reasons(case, a, budget))
            .collect();
        let first = &attempts[0];
        result.turns = first.turns.clone();
        result.answer = first
            .turns
            .last()
            .map(|t| t.answer.clone())
            .unwrap_or_default();
        result.replayed = attempts.iter().all(|a| a.replayed);
        result.ttft_ms = first.ttft_ms;
        result.tokens_per_s = first.tokens_per_s;
        result.simple_correct = first.simple;
        let n = attempts.len() as f64;
        result.score = attempts.iter().map(|a| a.score).sum::<f64>() / n;
        result.latency_ms = attempts.iter().map(|a| a.latency_ms).sum::<f64>() / n;
        let vqa: Vec<f64> = attempts.iter().filter_map(|a| a.vqa).collect();
        if !vqa.is_empty() {
            result.vqa_accuracy = Some(vqa.iter().sum::<f64>() / vqa.len() as f64);
        }

        let mut reasons = Vec::new();
        if attempts.len() == 1 {
            reasons.extend(checks[0].iter().cloned());
        } else {
            let passes = checks.iter().filter(|r| r.is_empty()).count() as u32;
            let total = attempts.len() as u32;
            let rate = passes as f64 / total as f64;
            let (low, high) = crate::verdict::wilson(passes, total);
            let latencies: Vec<f64> = attempts.iter().map(|a| a.latency_ms).collect();
            if rate + 1e-12 < case.min_pass_rate {
                let mut why = format!(
                    "passed {passes} of {total} attempts (pass rate {rate:.3}, 95% interval {low:.3}–{high:.3}) < min_pass_rate {:.3}",
                    case.min_pass_rate
                );
                if let Some((k, r)) = checks.iter().enumerate().find(|(_, r)| !r.is_empty()) {
                    why.push_str(&format!("; attempt {}: {}", k + 1, r.join("; ")));
                }
                reasons.push(why);
            }
            result.repeats = Some(crate::verdict::Repeats {
                attempts: total,
                passes,
                pass_rate: rate,
                pass_rate_low: low,
                pass_rate_high: high,
                min_pass_rate: case.min_pass_rate,
                latency_p50_ms: crate::verdict::quantile(&latencies, 0.5),
                latency_p95_ms: crate::verdict::quantile(&latencies, 0.95),
                latency_max_ms: latencies.iter().cloned().fold(0.0, f64::max),
                attempt_results: attempts
                    .iter()
                    .zip(&checks)
                    .map(|(a, r)| crate::verdict::Attempt {
                        answer: a.turns.last().map(|t| t.answer.clone()).unwrap_or_default(),
                        score: a.score,
                        passed: r.is_empty(),
                        latency_ms: a.latency_ms,
                        ttft_ms: a.ttft_ms,
                        tokens_per_s: a.tokens_per_s,
                        reasons: r.clone(),
                    })
                    .collect(),
            });
        }
        if case.snapshot && params.deterministic() {
            let before = reasons.len();
            self.check_snapshot(&mut result, &mut reasons, suite, case, &spec.name);
            // INSTA_FORCE_PASS: a case whose only problem is its snapshot passes (and says so
            // in the record, so report.json and junit.xml agree with the trial).
            if self.env.force_pass && before == 0 && reasons.len() == 1 && result.snapshot.fails() {
                reasons.clear();
            }
        }
        result.outcome = if reasons.is_empty() {
            Outcome::Passed
        } else {
            Outcome::Failed(reasons)
        };
        result
    }

    /// Why one attempt did not pass: its score, and (when it was asked live) its latency and
    /// speed budgets, where the backend measured them.
    fn attempt_reasons(
        &self,
        case: &crate::config::Case,
        a: &AttemptRun,
        budget: Option<f64>,
    ) -> Vec<String> {
        let mut reasons = Vec::new();
        if a.score + 1e-12 < case.pass_at {
            reasons.push(format!(
                "wrong answer (score {:.3} < pass_at {:.3})",
                a.score, case.pass_at
            ));
        }
        if a.replayed {
            return reasons; // a replayed answer's timings are the recording machine's
        }
        if let Some(max) = budget
            && a.latency_ms > max
        {
            reasons.push(format!(
                "latency {:.0} ms over the budget of {max:.0} ms",
                a.latency_ms
            ));
        }
        let multi = a.turns.len() > 1;
        for (k, t) in a.turns.iter().enumerate() {
            let turn = if multi {
                format!(" (turn {})", k + 1)
            } else {
                String::new()
            };
            if let (Some(max), Some(ttft)) = (case.max_ttft_ms, t.time_to_first_token_ms)
                && ttft > max
            {
                reasons.push(format!(
                    "time to first token {ttft:.0} ms over the budget of {max:.0} ms{turn}"
                ));
            }
            if let (Some(min), Some(tps)) = (case.min_tokens_per_s, t.tokens_per_second)
                && tps < min
            {
                reasons.push(format!(
                    "decoding {tps:.1} tokens/s under the floor of {min:.1} tokens/s{turn}"
                ));
            }
        }
        reasons
    }

    /// Checks (and writes, where allowed) the snapshot of the first attempt's answers.
    fn check_snapshot(
        &self,
        result: &mut CaseResult,
        reasons: &mut Vec<String>,
        suite: &crate::config::Suite,
        case: &crate::config::Case,
        model: &str,
    ) {
        let content = snapshot_content(&result.turns);
        let description: Vec<&str> = case.turns.iter().map(|t| t.question.as_str()).collect();
        let source = suite.file.to_string_lossy().replace('\\', "/");
        let meta = Meta {
            source: &source,
            description: &description.join("\n"),
        };
        let path = self.snapshots.path(model, &suite.name, &case.id);
        match self.snapshots.check(&path, &meta, &content) {
            Ok(status) => {
                match &status {
                    SnapshotStatus::Changed { expected } => reasons.push(format!(
                        "snapshot changed: accepted {expected:?}, now {content:?}{}",
                        self.review_hint()
                    )),
                    SnapshotStatus::New => reasons.push(format!(
                        "new snapshot written as {}.new{}",
                        path.display(),
                        self.review_hint()
                    )),
                    SnapshotStatus::Missing => reasons.push(format!(
                        "snapshot {} is missing (CI writes none: run the suite locally, review, and commit it)",
                        path.display()
                    )),
                    _ => {}
                }
                result.snapshot = status;
            }
            Err(e) => reasons.push(e.to_string()),
        }
    }

    /// Asks the whole conversation of case `i` once (attempt `attempt` of `of`).
    fn ask_conversation(
        &self,
        i: usize,
        params: &crate::config::GenParams,
        attempt: u32,
        of: u32,
    ) -> Result<AttemptRun, Asked> {
        let pc = &self.plan.cases[i];
        let case = &self.plan.config.suites[pc.suite].cases[pc.case];
        let mut messages: Vec<Message> = Vec::new();
        let mut run = AttemptRun::default();
        let mut scores = Vec::new();
        let mut vqa = Vec::new();
        let mut simple = Vec::new();
        let mut all_replayed = true;
        let mut tps = Vec::new();
        for (k, turn) in case.turns.iter().enumerate() {
            messages.push(Message {
                role: Role::User,
                text: turn.prompt.clone(),
                images: turn.images.clone(),
            });
            let request = Request {
                messages: messages.clone(),
                params: params.clone(),
            };
            let mut tr = TurnResult {
                question: turn.question.clone(),
                prompt: turn.prompt.clone(),
                images: turn.images.iter().map(|i| i.shown.clone()).collect(),
                answer: String::new(),
                expected: turn.rule.as_ref().map(|r| r.to_string()),
                score: None,
                latency_ms: 0.0,
                prompt_tokens: None,
                completion_tokens: None,
                time_to_first_token_ms: None,
                tokens_per_second: None,
                retries: 0,
                preprocessing: None,
            };
            // Sampled answers differ from attempt to attempt: each attempt has its recording.
            let label = if params.deterministic() || of == 1 {
                format!("{}#{}", pc.name, k + 1)
            } else {
                format!("{}#{}@{}", pc.name, k + 1, attempt + 1)
            };
            let g = match self.answer(pc.model, &label, &request) {
                Ok(g) => g,
                Err(AnswerError::Unavailable(w)) => return Err(Asked::Unavailable(w)),
                Err(AnswerError::LoadFailed(w)) => return Err(Asked::LoadFailed(w)),
                Err(AnswerError::Failed(message)) => {
                    run.turns.push(tr);
                    return Err(Asked::Failed {
                        turns: run.turns,
                        message,
                    });
                }
                Err(AnswerError::NotRecorded(why)) => {
                    run.turns.push(tr);
                    return Err(Asked::NotRecorded {
                        turns: run.turns,
                        why,
                    });
                }
            };
            all_replayed &= g.replayed;
            let answer = g.text.trim().to_string();
            tr.latency_ms = g.latency.as_secs_f64() * 1000.0;
            tr.prompt_tokens = g.prompt_tokens;
            tr.completion_tokens = g.completion_tokens;
            tr.retries = g.retries;
            tr.preprocessing = g.preprocessing.clone();
            if let Some(ttft) = g.time_to_first_token {
                tr.time_to_first_token_ms = Some(ttft.as_secs_f64() * 1000.0);
                let decode = g.latency.saturating_sub(ttft).as_secs_f64();
                if let Some(n) = g.completion_tokens.filter(|n| *n > 1)
                    && decode > 0.0
                {
                    tr.tokens_per_second = Some((n - 1) as f64 / decode);
                }
            }
            if let Some(t) = g.tokens_per_second {
                tr.tokens_per_second = Some(t);
            }
            if k == 0 {
                run.ttft_ms = tr.time_to_first_token_ms;
            }
            tps.extend(tr.tokens_per_second);
            if let Some(rule) = &turn.rule {
                let s = rule.score(&answer);
                tr.score = Some(s);
                scores.push(s);
            }
            if let Some(answers) = &turn.answers {
                vqa.push(score::vqa::accuracy(answers, &answer));
                simple.push(score::simple_match(answers, &answer));
            }
            run.latency_ms += tr.latency_ms;
            tr.answer = answer.clone();
            run.turns.push(tr);
            messages.push(Message {
                role: Role::Assistant,
                text: answer,
                images: Vec::new(),
            });
        }
        run.score = scores.iter().sum::<f64>() / scores.len().max(1) as f64;
        if !vqa.is_empty() {
            run.vqa = Some(vqa.iter().sum::<f64>() / vqa.len() as f64);
            run.simple = Some(simple.iter().all(|b| *b));
        }
        if !tps.is_empty() {
            run.tokens_per_s = Some(tps.iter().sum::<f64>() / tps.len() as f64);
        }
        run.replayed = all_replayed;
        Ok(run)
    }

    /// One answer: replayed from the recording when `VLMTEST_CACHE` reads and has it, else asked
    /// live (loading the model on first use) and recorded when it writes.
    fn answer(
        &self,
        model: usize,
        label: &str,
        request: &Request,
    ) -> Result<Generation, AnswerError> {
        let slot = &self.slots[model];
        let mode = self.env.cache;
        let recording = self.recordings.get(model).and_then(Option::as_ref);
        let mut parts = None;
        if let Some(rec) = recording {
            let fp = slot.fingerprint();
            let p = crate::cache::KeyParts::of(fp, request)
                .map_err(|e| AnswerError::Failed(e.to_string()))?;
            if mode.reads() {
                match rec.lookup(label, &p, fp) {
                    crate::cache::Lookup::Hit(g) => return Ok(g),
                    crate::cache::Lookup::Miss(why) if mode == CacheMode::Strict => {
                        return Err(AnswerError::NotRecorded(why));
                    }
                    crate::cache::Lookup::Miss(_) => {}
                }
            }
            parts = Some(p);
        }
        let backend = match slot.get() {
            Ok(b) => b,
            Err(e) if e.unavailable() => return Err(AnswerError::Unavailable(e.to_string())),
            Err(e) => return Err(AnswerError::LoadFailed(e.to_string())),
        };
        let generation = backend.generate(request);
        slot.sample_memory();
        let g = generation.map_err(|e| AnswerError::Failed(e.to_string()))?;
        if let (Some(rec), Some(p)) = (recording, parts)
            && mode.writes()
        {
            let entry = crate::cache::entry(label, p, slot.fingerprint(), request, &g);
            if let Err(e) = rec.record(entry) {
                tracing::warn!("{e}");
            }
        }
        Ok(g)
    }

    fn review_hint(&self) -> &'static str {
        if self.env.ci {
            ""
        } else {
            " (run `cargo insta review` to accept or reject)"
        }
    }

    /// Ends the run: drops every model, tidies the recordings and writes the reports.
    pub(crate) fn finish(&self) -> Result<(), crate::report::OutputError> {
        for r in self.recordings.iter().flatten() {
            if let Err(e) = r.compact() {
                tracing::warn!("{e}");
            }
        }
        for (i, s) in self.slots.iter().enumerate() {
            s.unload();
            self.record_model_stats(i);
        }
        self.recorder.finish(true)
    }

    /// Ends an interrupted run: the cases being asked are recorded as interrupted, then every
    /// output is written for what finished (`complete: false`).
    pub(crate) fn finish_interrupted(&self) -> Result<(), crate::report::OutputError> {
        let in_flight: Vec<usize> = self.lock_in_flight().iter().copied().collect();
        for i in in_flight {
            self.recorder.record_case(&self.interrupted_result(i));
        }
        for i in 0..self.slots.len() {
            self.record_model_stats(i);
        }
        self.recorder.finish(false)
    }

    /// The record of a case that was being asked when the run was interrupted.
    fn interrupted_result(&self, i: usize) -> CaseResult {
        let pc = &self.plan.cases[i];
        let suite = &self.plan.config.suites[pc.suite];
        let case = &suite.cases[pc.case];
        CaseResult {
            name: pc.name.clone(),
            model: self.plan.model(pc.model).name.clone(),
            suite: suite.name.clone(),
            case: case.id.clone(),
            category: case.category.clone(),
            prompt: case
                .turns
                .last()
                .map(|t| t.prompt.clone())
                .unwrap_or_default(),
            answer: String::new(),
            score: 0.0,
            pass_at: case.pass_at,
            outcome: Outcome::Interrupted,
            latency_ms: 0.0,
            max_latency_ms: None,
            has_image: case.has_images(),
            vqa_accuracy: None,
            simple_correct: None,
            snapshot: SnapshotStatus::Skipped,
            turns: Vec::new(),
            replayed: false,
            ttft_ms: None,
            tokens_per_s: None,
            repeats: None,
        }
    }
}

/// One attempt at a case: the conversation as it went.
#[derive(Default)]
struct AttemptRun {
    turns: Vec<TurnResult>,
    score: f64,
    vqa: Option<f64>,
    simple: Option<bool>,
    latency_ms: f64,
    ttft_ms: Option<f64>,
    tokens_per_s: Option<f64>,
    replayed: bool,
}

/// Why an answer could not be had.
enum AnswerError {
    Unavailable(String),
    LoadFailed(String),
    Failed(String),
    NotRecorded(String),
}

/// Why an attempt stopped before its last turn.
enum Asked {
    Unavailable(String),
    LoadFailed(String),
    Failed {
        turns: Vec<TurnResult>,
        message: String,
    },
    NotRecorded {
        turns: Vec<TurnResult>,
        why: String,
    },
}

fn error_result(mut r: CaseResult, msg: String) -> CaseResult {
    r.outcome = Outcome::Error(msg);
    r.score = 0.0;
    r
}

/// What is snapshotted: the answer, or for a conversation each turn's answer.
fn snapshot_content(turns: &[TurnResult]) -> String {
    if turns.len() == 1 {
        return turns[0].answer.clone();
    }
    turns
        .iter()
        .enumerate()
        .map(|(i, t)| format!("[turn {}] {}", i + 1, t.answer))
        .collect::<Vec<_>>()
        .join("\n")
}
