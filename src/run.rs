//! Running the plan: each case is computed once per run, whichever trial asks first (its own
//! trial, or its suite's gate), and recorded as soon as it finishes.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, OnceLock};

use crate::backend::{LoadError, LoadStats, Message, ModelSlot, Request, Role, Semaphore, SlotUse};
use crate::config::Env;
use crate::plan::{Plan, TrialKind};
use crate::report::{
    CaseFacts, GateFacts, ImageFacts, ModelFacts, ModelStats, Recorder, RunFacts, TurnFacts,
};
use crate::score;
use crate::snapshot::{Meta, SnapshotStatus, Snapshots};
use crate::verdict::{CaseResult, GateResult, Outcome, SuiteResult, Summary, TurnResult};

/// The outcome of a trial, for the harness to hand to libtest.
pub enum TrialOutcome {
    Passed,
    Failed(String),
    Ignored(String),
}

pub struct Run {
    pub plan: Plan,
    pub env: Env,
    pub slots: Vec<ModelSlot>,
    cells: Vec<OnceLock<Arc<CaseResult>>>,
    /// Cases being asked right now, recorded as interrupted if the run is.
    in_flight: Mutex<BTreeSet<usize>>,
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

fn model_stats(name: &str, s: LoadStats) -> ModelStats {
    ModelStats {
        name: name.to_string(),
        load_s: s.load_s,
        memory_growth_bytes: s.memory_growth_bytes,
        external_memory_bytes: s.external_memory_bytes,
        peak_memory_bytes: s.peak_memory_bytes,
        load_error: s.load_error,
    }
}

impl Run {
    pub fn new(plan: Plan, env: Env) -> Run {
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
        let recorder = Recorder::new(&env.out, run_facts(&plan), shared);
        Run {
            plan,
            env,
            slots,
            cells,
            in_flight: Mutex::new(BTreeSet::new()),
            snapshots,
            recorder,
        }
    }

    /// Declares which trials will run, so that each model is dropped after its last one.
    pub fn set_selected(&self, selected: &[TrialKind]) {
        let mut users = vec![0usize; self.slots.len()];
        for k in selected {
            let model = match *k {
                TrialKind::Case(i) => self.plan.cases[i].model,
                TrialKind::Gate(g) => self.plan.gates[g].model,
            };
            users[model] += 1;
        }
        for (slot, n) in self.slots.iter().zip(users) {
            slot.set_users(n);
        }
    }

    /// The result of planned case `i`, computing it on first request.
    pub fn case_result(&self, i: usize) -> Arc<CaseResult> {
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

    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, BTreeSet<usize>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a model's load figures to the records when they changed.
    fn record_model_stats(&self, model: usize) {
        let slot = &self.slots[model];
        if let Some(stats) = slot.take_changed_stats() {
            self.recorder
                .record_model(&model_stats(&slot.spec.name, stats));
        }
    }

    /// Runs trial `kind` to its outcome.
    pub fn trial(&self, kind: TrialKind) -> TrialOutcome {
        let model = match kind {
            TrialKind::Case(i) => self.plan.cases[i].model,
            TrialKind::Gate(g) => self.plan.gates[g].model,
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
                    Outcome::Passed => TrialOutcome::Passed,
                    Outcome::Ignored(why) => TrialOutcome::Ignored(why.clone()),
                    Outcome::Failed(_) if self.env.force_pass && only_snapshot_failed(&r) => {
                        TrialOutcome::Passed
                    }
                    Outcome::Failed(_) | Outcome::Error(_) | Outcome::Interrupted => {
                        TrialOutcome::Failed(r.failure_message())
                    }
                }
            }
            TrialKind::Gate(g) => {
                let gate = &self.plan.gates[g];
                let results: Vec<Arc<CaseResult>> =
                    gate.cases.iter().map(|&i| self.case_result(i)).collect();
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

    fn evaluate_gate(&self, g: usize, results: &[Arc<CaseResult>]) -> SuiteResult {
        let gate = &self.plan.gates[g];
        let summary = Summary::of(results.iter().map(|r| r.as_ref()));
        let t = gate.thresholds;
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
            model: self.plan.model(gate.model).name.clone(),
            suite: self.plan.config.suites[gate.suite].name.clone(),
            accuracy: summary.accuracy,
            pass_rate: summary.pass_rate,
            summary,
            gate: GateResult {
                passed: !ignored && failures.is_empty(),
                ignored,
                min_accuracy: t.min_accuracy,
                min_pass_rate: t.min_pass_rate,
                failures,
            },
            failed_cases,
        }
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
        };
        if let Some(reason) = &pc.skip {
            result.outcome = Outcome::Ignored(reason.clone());
            return result;
        }
        let backend = match slot.get() {
            Ok(b) => b,
            Err(LoadError::Unavailable(why)) if !self.env.require_models => {
                result.outcome = Outcome::Ignored(why);
                return result;
            }
            Err(LoadError::Unavailable(why)) => {
                return error_result(
                    result,
                    format!(
                        "model `{}` is not available (VLMTEST_REQUIRE_MODELS=1): {why}",
                        spec.name
                    ),
                );
            }
            Err(LoadError::Failed(why)) => {
                return error_result(
                    result,
                    format!("model `{}` failed to load: {why}", spec.name),
                );
            }
        };

        let mut params = spec.params.clone();
        if let Some(n) = case.max_new_tokens {
            params.max_new_tokens = n;
        }
        let mut messages: Vec<Message> = Vec::new();
        let mut scores = Vec::new();
        let mut vqa = Vec::new();
        let mut simple = Vec::new();
        for turn in &case.turns {
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
            };
            let generation = backend.generate(&request);
            slot.sample_memory();
            let g = match generation {
                Ok(g) => g,
                Err(e) => {
                    result.turns.push(tr);
                    return error_result(
                        result,
                        format!("model `{}` could not answer: {e}", spec.name),
                    );
                }
            };
            let answer = g.text.trim().to_string();
            tr.latency_ms = g.latency.as_secs_f64() * 1000.0;
            tr.prompt_tokens = g.prompt_tokens;
            tr.completion_tokens = g.completion_tokens;
            tr.retries = g.retries;
            if let Some(ttft) = g.time_to_first_token {
                tr.time_to_first_token_ms = Some(ttft.as_secs_f64() * 1000.0);
                let decode = g.latency.saturating_sub(ttft).as_secs_f64();
                if let Some(n) = g.completion_tokens.filter(|n| *n > 1)
                    && decode > 0.0
                {
                    tr.tokens_per_second = Some((n - 1) as f64 / decode);
                }
            }
            if let Some(rule) = &turn.rule {
                let s = rule.score(&answer);
                tr.score = Some(s);
                scores.push(s);
            }
            if let Some(answers) = &turn.answers {
                vqa.push(score::vqa::accuracy(answers, &answer));
                simple.push(score::simple_match(answers, &answer));
            }
            result.latency_ms += tr.latency_ms;
            tr.answer = answer.clone();
            result.turns.push(tr);
            messages.push(Message {
                role: Role::Assistant,
                text: answer,
                images: Vec::new(),
            });
        }
        result.answer = result
            .turns
            .last()
            .map(|t| t.answer.clone())
            .unwrap_or_default();
        result.score = scores.iter().sum::<f64>() / scores.len().max(1) as f64;
        if !vqa.is_empty() {
            result.vqa_accuracy = Some(vqa.iter().sum::<f64>() / vqa.len() as f64);
            result.simple_correct = Some(simple.iter().all(|b| *b));
        }

        let mut reasons = Vec::new();
        if result.score + 1e-12 < case.pass_at {
            reasons.push(format!(
                "wrong answer (score {:.3} < pass_at {:.3})",
                result.score, case.pass_at
            ));
        }
        if let Some(max) = budget
            && result.latency_ms > max
        {
            reasons.push(format!(
                "latency {:.0} ms over the budget of {max:.0} ms",
                result.latency_ms
            ));
        }
        if case.snapshot && params.deterministic() {
            let content = snapshot_content(&result.turns);
            let description: Vec<&str> = case.turns.iter().map(|t| t.question.as_str()).collect();
            let source = suite.file.to_string_lossy().replace('\\', "/");
            let meta = Meta {
                source: &source,
                description: &description.join("\n"),
            };
            let path = self.snapshots.path(&spec.name, &suite.name, &case.id);
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
                Err(e) => reasons.push(e),
            }
        }
        result.outcome = if reasons.is_empty() {
            Outcome::Passed
        } else {
            Outcome::Failed(reasons)
        };
        result
    }

    fn review_hint(&self) -> &'static str {
        if self.env.ci {
            ""
        } else {
            " (run `cargo insta review` to accept or reject)"
        }
    }

    /// Ends the run: drops every model and writes the reports.
    pub fn finish(&self) -> Result<(), String> {
        for (i, s) in self.slots.iter().enumerate() {
            s.unload();
            self.record_model_stats(i);
        }
        self.recorder.finish(true)
    }

    /// Ends an interrupted run: the cases being asked are recorded as interrupted, then every
    /// output is written for what finished (`complete: false`).
    pub fn finish_interrupted(&self) -> Result<(), String> {
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
        }
    }
}

fn error_result(mut r: CaseResult, msg: String) -> CaseResult {
    r.outcome = Outcome::Error(msg);
    r.score = 0.0;
    r
}

fn only_snapshot_failed(r: &CaseResult) -> bool {
    matches!(&r.outcome, Outcome::Failed(reasons) if reasons.len() == 1) && r.snapshot.fails()
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
