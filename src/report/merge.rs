//! `vlmtest merge OUT IN...`: the `VLMTEST_OUT` folders of several shards (cargo-nextest
//! `--partition`, several machines) merged into one set of reports. Every figure and every gate
//! is recomputed from the case records, whatever shard ran them; a case two shards disagree on
//! is an error; trials of the plan that no shard ran make the merged run incomplete.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::{
    CASES, GATES, MODELS, ModelStats, OutputError, RUN, Records, Report, RunFacts, to_json,
    write_atomic,
};
use crate::verdict::{CaseResult, GateThresholds, SuiteResult, evaluate_gate};

/// Why shards could not be merged.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MergeError {
    #[error("{0}")]
    Output(#[from] OutputError),
    #[error("no shard folders given (expected `vlmtest merge OUT IN...`)")]
    NoInputs,
    #[error(
        "{first} and {second} are shards of different plans (their run.json list different trials): merge shards of one run"
    )]
    DifferentPlans { first: PathBuf, second: PathBuf },
    #[error("{} cases differ between shards:\n{}", .0.len(), .0.join("\n"))]
    Conflicts(Vec<String>),
}

/// The merged run: its report, and what a CI job needs to decide.
pub(crate) struct Merged {
    pub report: Report,
    /// Trials of the plan that no shard ran.
    pub missing: Vec<String>,
}

impl Merged {
    /// Whether CI should fail: a case failed or errored, a gate failed, a model regressed against
    /// its baseline, or trials are missing.
    pub(crate) fn failed(&self) -> bool {
        !self.missing.is_empty()
            || self
                .report
                .comparisons
                .iter()
                .any(|c| c.verdict == crate::compare::Verdict::Regressed)
            || self
                .report
                .suites
                .iter()
                .any(|s| !s.gate.ignored && !s.gate.passed)
            || self.report.cases.iter().any(|c| {
                matches!(
                    c.status(),
                    crate::verdict::Status::Failed
                        | crate::verdict::Status::Error
                        | crate::verdict::Status::Interrupted
                )
            })
    }
}

/// What a case came to, for telling whether two shards agree on it.
fn verdict_of(c: &CaseResult) -> (crate::verdict::Status, &str, String) {
    (c.status(), c.answer.as_str(), format!("{:.9}", c.score))
}

/// Merges the shards `inputs` into `out`: report.json, report.md, junit.xml, report.html, and the
/// merged records (so `vlmtest report` works on `out` too).
pub(crate) fn merge(
    out: &Path,
    inputs: &[PathBuf],
    baselines: Option<&Path>,
) -> Result<Merged, MergeError> {
    if inputs.is_empty() {
        return Err(MergeError::NoInputs);
    }
    let shards: Vec<(PathBuf, Records)> = inputs
        .iter()
        .map(|i| Records::read(i).map(|r| (i.clone(), r)))
        .collect::<Result<_, _>>()?;

    // The plan: every shard of one run has the same trials.
    let mut facts: Option<(PathBuf, RunFacts)> = None;
    for (path, r) in &shards {
        if r.facts.trials.is_empty() {
            continue;
        }
        match &facts {
            None => facts = Some((path.clone(), r.facts.clone())),
            Some((first, f)) if f.trials != r.facts.trials => {
                return Err(MergeError::DifferentPlans {
                    first: first.clone(),
                    second: path.clone(),
                });
            }
            Some(_) => {}
        }
    }
    let mut facts = facts.map(|(_, f)| f).unwrap_or_default();

    // Cases: the last record per name within a shard; across shards they must agree.
    let mut cases: BTreeMap<String, (usize, CaseResult)> = BTreeMap::new();
    let mut conflicts = Vec::new();
    for (si, (path, r)) in shards.iter().enumerate() {
        let mut mine: BTreeMap<&str, &CaseResult> = BTreeMap::new();
        for c in &r.cases {
            mine.insert(c.name.as_str(), c);
        }
        for (name, c) in mine {
            match cases.get(name) {
                Some((sj, prev)) if verdict_of(prev) != verdict_of(c) => {
                    conflicts.push(format!(
                        "  {name}: {} says {:?} with {:?} (score {:.3}), {} says {:?} with {:?} (score {:.3})",
                        shards[*sj].0.display(),
                        prev.status(),
                        prev.answer,
                        prev.score,
                        path.display(),
                        c.status(),
                        c.answer,
                        c.score
                    ));
                }
                Some(_) => {}
                None => {
                    cases.insert(name.to_string(), (si, c.clone()));
                }
            }
        }
    }
    if !conflicts.is_empty() {
        return Err(MergeError::Conflicts(conflicts));
    }
    let cases: Vec<CaseResult> = cases.into_values().map(|(_, c)| c).collect();

    // Gates: recomputed over all the suite's cases, whatever shard ran them.
    let mut suites: Vec<SuiteResult> = Vec::new();
    for g in &facts.gates {
        let mine: Vec<&CaseResult> = cases
            .iter()
            .filter(|c| c.model == g.model && c.suite == g.suite)
            .collect();
        if mine.is_empty() {
            continue;
        }
        suites.push(evaluate_gate(
            &g.model,
            &g.suite,
            GateThresholds {
                min_accuracy: g.min_accuracy,
                min_pass_rate: g.min_pass_rate,
            },
            mine,
        ));
    }

    // Regressions: each model × suite against the model's baseline, over all shards' cases.
    let baseline_dir = baselines.map(Path::to_path_buf).or(facts.baselines.clone());
    let mut comparisons = Vec::new();
    let mut judged: BTreeSet<(String, String)> = BTreeSet::new();
    if let Some(dir) = &baseline_dir {
        let mut loaded: BTreeMap<String, Option<crate::compare::Baseline>> = BTreeMap::new();
        for g in &facts.gates {
            let baseline = loaded.entry(g.model.clone()).or_insert_with(|| {
                std::fs::read_to_string(dir.join(format!("{}.json", g.model)))
                    .ok()
                    .and_then(|t| serde_json::from_str(&t).ok())
            });
            let Some(baseline) = baseline else { continue };
            let new = crate::compare::outcomes_of(&cases, &g.model);
            let now = shards
                .iter()
                .flat_map(|(_, r)| &r.stats)
                .filter(|s| s.name == g.model)
                .find_map(|s| s.fingerprint.clone());
            judged.insert((g.model.clone(), g.suite.clone()));
            if let Some(c) =
                crate::compare::against(baseline, &g.suite, g.alpha, g.max_drop, &new, now.as_ref())
            {
                comparisons.push(c);
            }
        }
    }

    // Trials of the plan no shard ran: a case without a record, a gate no shard ran, a
    // regression the merge could not judge (its baseline is gone).
    let ran_cases: BTreeSet<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    let ran_gates: BTreeSet<(String, String)> = shards
        .iter()
        .flat_map(|(_, r)| &r.suites)
        .map(|s| (s.model.clone(), s.suite.clone()))
        .collect();
    let missing: Vec<String> = facts
        .trials
        .iter()
        .filter(|t| match crate::plan::parse_name(t) {
            Some((m, s, "gate")) => !ran_gates.contains(&(m.to_string(), s.to_string())),
            Some((m, s, "regression")) => !judged.contains(&(m.to_string(), s.to_string())),
            _ => !ran_cases.contains(t.as_str()),
        })
        .cloned()
        .collect();

    let stats: Vec<ModelStats> = shards.iter().flat_map(|(_, r)| r.stats.clone()).collect();
    let complete = missing.is_empty() && shards.iter().all(|(_, r)| r.facts.finished_at.is_some());
    facts.finished_at = shards
        .iter()
        .filter_map(|(_, r)| r.facts.finished_at.clone())
        .max();
    facts.run_id = format!("merged-{}", facts.run_id);
    let mut report = Report::build(&facts, cases.clone(), suites.clone(), &stats, complete);
    report.missing_trials = missing.clone();
    report.comparisons = comparisons.clone();

    std::fs::create_dir_all(out).map_err(|source| OutputError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    let jsonl = |items: Vec<String>| items.into_iter().map(|l| l + "\n").collect::<String>();
    write_atomic(&out.join(RUN), &to_json(&facts))?;
    write_atomic(
        &out.join(CASES),
        &jsonl(
            cases
                .iter()
                .map(|c| serde_json::to_string(c).unwrap_or_default())
                .collect(),
        ),
    )?;
    write_atomic(
        &out.join(GATES),
        &jsonl(
            suites
                .iter()
                .map(|s| serde_json::to_string(s).unwrap_or_default())
                .collect(),
        ),
    )?;
    write_atomic(
        &out.join(MODELS),
        &jsonl(
            stats
                .iter()
                .map(|s| serde_json::to_string(s).unwrap_or_default())
                .collect(),
        ),
    )?;
    write_atomic(
        &out.join(super::COMPARISONS),
        &jsonl(
            comparisons
                .iter()
                .map(|c| serde_json::to_string(c).unwrap_or_default())
                .collect(),
        ),
    )?;
    write_atomic(&out.join("missing-trials.txt"), &jsonl(missing.clone()))?;
    for (name, text) in report.render_all(&facts) {
        write_atomic(&out.join(name), &text)?;
    }
    Ok(Merged { report, missing })
}
