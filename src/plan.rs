//! The plan: suites × enabled models → cases and gates with stable names, and the trials that
//! will be ignored, with their reasons. Nothing here loads a model or touches the network.

use crate::config::{Config, Thresholds};

/// A planned case: one question (or conversation) for one model.
#[derive(Debug, Clone)]
pub(crate) struct PlannedCase {
    pub model: usize,
    pub suite: usize,
    pub case: usize,
    pub name: String,
    /// Why this case is not run for this model, when it is not.
    pub skip: Option<String>,
}

/// A planned gate: one model × one suite.
#[derive(Debug, Clone)]
pub(crate) struct PlannedGate {
    pub model: usize,
    pub suite: usize,
    /// Indices into [`Plan::cases`] of the suite's cases for this model.
    pub cases: Vec<usize>,
    pub thresholds: Thresholds,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TrialKind {
    Case(usize),
    Gate(usize),
    /// The comparison of gate `g`'s model × suite with the model's baseline.
    Regression(usize),
}

/// What the harness turns into one libtest trial.
#[derive(Debug, Clone)]
pub(crate) struct PlannedTrial {
    pub name: String,
    pub kind: TrialKind,
}

/// Suites × enabled models.
#[derive(Debug)]
pub(crate) struct Plan {
    pub config: Config,
    /// Indices into `config.models.models` of the enabled models, sorted by name.
    pub models: Vec<usize>,
    pub cases: Vec<PlannedCase>,
    pub gates: Vec<PlannedGate>,
    /// Model-major: per model, per suite, its cases in file order, then the suite's gate, then
    /// (for a model with a baseline) its regression trial.
    pub trials: Vec<PlannedTrial>,
}

/// The name of a case trial.
pub(crate) fn case_name(model: &str, suite: &str, case: &str) -> String {
    format!("{model}::{suite}::{case}")
}

/// Splits a trial name into (model, suite, case); the case is `gate` for a gate and
/// `regression` for a regression trial.
pub(crate) fn parse_name(name: &str) -> Option<(&str, &str, &str)> {
    let mut parts = name.split("::");
    let (m, s, c) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || m.is_empty() || s.is_empty() || c.is_empty() {
        return None;
    }
    Some((m, s, c))
}

impl Plan {
    pub(crate) fn build(config: Config) -> Plan {
        let mut models: Vec<usize> = (0..config.models.models.len())
            .filter(|&i| config.models.models[i].enabled)
            .collect();
        models.sort_by(|&a, &b| {
            config.models.models[a]
                .name
                .cmp(&config.models.models[b].name)
        });
        let mut cases = Vec::new();
        let mut gates = Vec::new();
        let mut trials = Vec::new();
        for (mi, &m) in models.iter().enumerate() {
            let spec = &config.models.models[m];
            for (si, suite) in config.suites.iter().enumerate() {
                let mut indices = Vec::with_capacity(suite.cases.len());
                for (ci, case) in suite.cases.iter().enumerate() {
                    let skip = (!spec.text_only && !case.has_images()).then(|| {
                        format!(
                            "model `{}` cannot answer without an image (text_only = false in models.toml)",
                            spec.name
                        )
                    });
                    let name = case_name(&spec.name, &suite.name, &case.id);
                    indices.push(cases.len());
                    trials.push(PlannedTrial {
                        name: name.clone(),
                        kind: TrialKind::Case(cases.len()),
                    });
                    cases.push(PlannedCase {
                        model: mi,
                        suite: si,
                        case: ci,
                        name,
                        skip,
                    });
                }
                trials.push(PlannedTrial {
                    name: case_name(&spec.name, &suite.name, "gate"),
                    kind: TrialKind::Gate(gates.len()),
                });
                if config.baselines.contains_key(&spec.name) {
                    trials.push(PlannedTrial {
                        name: case_name(&spec.name, &suite.name, "regression"),
                        kind: TrialKind::Regression(gates.len()),
                    });
                }
                gates.push(PlannedGate {
                    model: mi,
                    suite: si,
                    cases: indices,
                    thresholds: suite.gate.for_model(&spec.name),
                });
            }
        }
        Plan {
            config,
            models,
            cases,
            gates,
            trials,
        }
    }

    /// The spec of the plan's `i`-th enabled model.
    pub(crate) fn model(&self, i: usize) -> &crate::config::ModelSpec {
        &self.config.models.models[self.models[i]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let n = case_name("smolvlm-256m", "vqa", "cat-color");
        assert_eq!(n, "smolvlm-256m::vqa::cat-color");
        assert_eq!(parse_name(&n), Some(("smolvlm-256m", "vqa", "cat-color")));
        assert_eq!(parse_name("a::b"), None);
        assert_eq!(parse_name("a::b::c::d"), None);
        assert_eq!(parse_name("a::::c"), None);
    }
}
