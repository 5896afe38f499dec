//! Paired comparison of two runs of a model (a baseline and a new run): which cases flipped, the
//! paired mean score difference with a 95% interval, and McNemar's exact test on the discordant
//! pairs. Pure functions over plain case outcomes; used by the regression trial, by
//! `vlmtest compare` and by `vlmtest merge`.
//!
//! - Pairing: a case of one side pairs with the case of the other side with the same suite and
//!   case id; cases found on one side only are listed, not paired.
//! - b = pairs that passed in the base and fail now, c = the reverse. McNemar's exact test:
//!   two-sided p = min(1, 2·P(X ≤ min(b, c))), X ~ Binomial(b + c, ½) (p = 1 when b + c = 0).
//! - The paired difference d_i = new score − base score; its mean, and a 95% interval from the
//!   normal approximation: mean ± 1.96 · s / √n, s the sample standard deviation (n − 1).
//! - Verdict: `regressed` when p < alpha and b > c, or when the drop in mean score
//!   (base − new) exceeds `max_drop` if one is set; `improved` when p < alpha and c > b;
//!   `unchanged` otherwise.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::fingerprint::Fingerprint;

/// One case as a comparison needs it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CaseOutcome {
    pub suite: String,
    pub case: String,
    pub score: f64,
    pub passed: bool,
    pub answer: String,
    pub latency_ms: f64,
}

/// `baselines/{model}.json`: a model's cases from a run, meant to be committed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Baseline {
    pub model: String,
    pub fingerprint: Option<Fingerprint>,
    /// When the run it was taken from started.
    pub run_started_at: String,
    pub vlmtest_version: String,
    pub cases: Vec<CaseOutcome>,
}

/// A case whose pass/fail differs between the sides.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Flip {
    pub case: String,
    pub base_passed: bool,
    pub new_passed: bool,
    pub base_answer: String,
    pub new_answer: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Verdict {
    Regressed,
    Improved,
    Unchanged,
}

/// One model × suite compared.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Comparison {
    pub model: String,
    pub suite: String,
    /// Paired cases.
    pub n: usize,
    /// Mean score over the paired cases, in the base and now.
    pub base_accuracy: Option<f64>,
    pub new_accuracy: Option<f64>,
    /// new − base.
    pub delta: Option<f64>,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
    /// b: passed in the base, fail now.
    pub pass_to_fail: usize,
    /// c: failed in the base, pass now.
    pub fail_to_pass: usize,
    pub p_value: f64,
    pub alpha: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_drop: Option<f64>,
    pub verdict: Verdict,
    /// Why the verdict is `regressed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    pub flips: Vec<Flip>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub only_in_base: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub only_in_new: Vec<String>,
    /// How the base's model fingerprint differs from the new run's, when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint_note: Option<String>,
}

/// P(X ≤ k) for X ~ Binomial(n, ½), summed in log space (n can be in the thousands).
pub(crate) fn binomial_half_cdf(k: usize, n: usize) -> f64 {
    if k >= n {
        return 1.0;
    }
    // log C(n, i) - n·ln 2, terms added with log-sum-exp.
    let ln2 = std::f64::consts::LN_2;
    let mut log_c = 0.0_f64; // ln C(n, 0)
    let mut acc = f64::NEG_INFINITY;
    for i in 0..=k {
        if i > 0 {
            log_c += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        let term = log_c - n as f64 * ln2;
        let (hi, lo) = if acc > term { (acc, term) } else { (term, acc) };
        acc = if lo == f64::NEG_INFINITY {
            hi
        } else {
            hi + (lo - hi).exp().ln_1p()
        };
    }
    acc.exp().min(1.0)
}

/// McNemar's exact two-sided p-value for `b` and `c` discordant pairs.
pub(crate) fn mcnemar_p(b: usize, c: usize) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    (2.0 * binomial_half_cdf(b.min(c), n)).min(1.0)
}

/// Compares `base` and `new` (the cases of one model × suite on each side).
pub(crate) fn compare(
    model: &str,
    suite: &str,
    base: &[&CaseOutcome],
    new: &[&CaseOutcome],
    alpha: f64,
    max_drop: Option<f64>,
) -> Comparison {
    let base_by: BTreeMap<&str, &CaseOutcome> =
        base.iter().map(|c| (c.case.as_str(), *c)).collect();
    let new_by: BTreeMap<&str, &CaseOutcome> = new.iter().map(|c| (c.case.as_str(), *c)).collect();
    let mut diffs = Vec::new();
    let (mut b, mut c) = (0, 0);
    let mut flips = Vec::new();
    let (mut base_sum, mut new_sum) = (0.0, 0.0);
    for (id, bc) in &base_by {
        let Some(nc) = new_by.get(id) else { continue };
        diffs.push(nc.score - bc.score);
        base_sum += bc.score;
        new_sum += nc.score;
        match (bc.passed, nc.passed) {
            (true, false) => b += 1,
            (false, true) => c += 1,
            _ => continue,
        }
        flips.push(Flip {
            case: id.to_string(),
            base_passed: bc.passed,
            new_passed: nc.passed,
            base_answer: bc.answer.clone(),
            new_answer: nc.answer.clone(),
        });
    }
    let only_in_base: Vec<String> = base_by
        .keys()
        .filter(|k| !new_by.contains_key(*k))
        .map(|k| k.to_string())
        .collect();
    let only_in_new: Vec<String> = new_by
        .keys()
        .filter(|k| !base_by.contains_key(*k))
        .map(|k| k.to_string())
        .collect();
    let n = diffs.len();
    let mean = (n > 0).then(|| diffs.iter().sum::<f64>() / n as f64);
    let half = (n > 1).then(|| {
        let m = mean.unwrap_or(0.0);
        let var = diffs.iter().map(|d| (d - m).powi(2)).sum::<f64>() / (n - 1) as f64;
        1.959_963_984_540_054 * (var / n as f64).sqrt()
    });
    let p = mcnemar_p(b, c);
    let base_accuracy = (n > 0).then(|| base_sum / n as f64);
    let new_accuracy = (n > 0).then(|| new_sum / n as f64);
    let mut reasons = Vec::new();
    if p < alpha && b > c {
        reasons.push(format!(
            "{b} cases went from pass to fail and {c} the other way: McNemar p = {p:.4} < alpha {alpha}"
        ));
    }
    if let (Some(max), Some(ba), Some(na)) = (max_drop, base_accuracy, new_accuracy)
        && ba - na > max + 1e-12
    {
        reasons.push(format!(
            "mean score dropped by {:.3} (from {ba:.3} to {na:.3}), more than max_drop {max}",
            ba - na
        ));
    }
    let verdict = if !reasons.is_empty() {
        Verdict::Regressed
    } else if p < alpha && c > b {
        Verdict::Improved
    } else {
        Verdict::Unchanged
    };
    Comparison {
        model: model.to_string(),
        suite: suite.to_string(),
        n,
        base_accuracy,
        new_accuracy,
        delta: mean,
        ci_low: mean.zip(half).map(|(m, h)| m - h),
        ci_high: mean.zip(half).map(|(m, h)| m + h),
        pass_to_fail: b,
        fail_to_pass: c,
        p_value: p,
        alpha,
        max_drop,
        verdict,
        reasons,
        flips,
        only_in_base,
        only_in_new,
        fingerprint_note: None,
    }
}

impl Comparison {
    /// The comparison in words: the verdict, the figures and every flipped case.
    pub(crate) fn message(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let f = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.3}"));
        let _ = writeln!(
            s,
            "{} against the baseline for model `{}` on suite `{}`",
            match self.verdict {
                Verdict::Regressed => "REGRESSED",
                Verdict::Improved => "improved",
                Verdict::Unchanged => "no significant change",
            },
            self.model,
            self.suite
        );
        for r in &self.reasons {
            let _ = writeln!(s, "  why: {r}");
        }
        let _ = writeln!(
            s,
            "  accuracy {} -> {} over {} paired cases; difference {} (95% CI {} to {})",
            f(self.base_accuracy),
            f(self.new_accuracy),
            self.n,
            self.delta.map_or("-".into(), |d| format!("{d:+.3}")),
            f(self.ci_low),
            f(self.ci_high)
        );
        let _ = writeln!(
            s,
            "  pass→fail {}, fail→pass {}, McNemar exact p = {:.4} (alpha {})",
            self.pass_to_fail, self.fail_to_pass, self.p_value, self.alpha
        );
        if let Some(note) = &self.fingerprint_note {
            let _ = writeln!(s, "  note: {note}");
        }
        for fl in &self.flips {
            let word = |p: bool| if p { "pass" } else { "fail" };
            let _ = writeln!(
                s,
                "  {}: {} {:?} -> {} {:?}",
                fl.case,
                word(fl.base_passed),
                fl.base_answer,
                word(fl.new_passed),
                fl.new_answer
            );
        }
        if !self.only_in_base.is_empty() {
            let _ = writeln!(
                s,
                "  only in the baseline (not paired): {}",
                self.only_in_base.join(", ")
            );
        }
        if !self.only_in_new.is_empty() {
            let _ = writeln!(
                s,
                "  not in the baseline (not paired): {}",
                self.only_in_new.join(", ")
            );
        }
        s.trim_end().to_string()
    }
}

/// A model × suite of this run against the model's baseline, with the suite's `gate.alpha`
/// (default 0.05) and `gate.max_drop`; `None` when the baseline has no case of the suite.
pub(crate) fn against(
    baseline: &Baseline,
    suite: &str,
    alpha: Option<f64>,
    max_drop: Option<f64>,
    new: &[CaseOutcome],
    now: Option<&Fingerprint>,
) -> Option<Comparison> {
    let base: Vec<&CaseOutcome> = baseline.cases.iter().filter(|c| c.suite == suite).collect();
    if base.is_empty() {
        return None;
    }
    let new: Vec<&CaseOutcome> = new.iter().filter(|c| c.suite == suite).collect();
    let mut c = compare(
        &baseline.model,
        suite,
        &base,
        &new,
        alpha.unwrap_or(DEFAULT_ALPHA),
        max_drop,
    );
    c.fingerprint_note = fingerprint_note(baseline.fingerprint.as_ref(), now);
    Some(c)
}

/// The significance level when none is given.
pub(crate) const DEFAULT_ALPHA: f64 = 0.05;

/// "the baseline was taken with another model: ..." when the fingerprints differ.
pub(crate) fn fingerprint_note(
    base: Option<&Fingerprint>,
    now: Option<&Fingerprint>,
) -> Option<String> {
    match (base, now) {
        (Some(b), Some(n)) if b != n => Some(format!(
            "the baseline was taken with another model fingerprint ({}); compared anyway",
            b.differences(n).join("; ")
        )),
        _ => None,
    }
}

/// The cases of one model from a run's report, as comparisons take them.
pub(crate) fn outcomes_of<'a>(
    cases: impl IntoIterator<Item = &'a crate::verdict::CaseResult>,
    model: &str,
) -> Vec<CaseOutcome> {
    cases
        .into_iter()
        .filter(|c| c.model == model && c.ran())
        .map(|c| CaseOutcome {
            suite: c.suite.clone(),
            case: c.case.clone(),
            score: c.score,
            passed: c.passed(),
            answer: c.answer.clone(),
            latency_ms: c.latency_ms,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// P(X ≤ k) summed directly with exact integer binomial coefficients (small n).
    fn exact_cdf(k: usize, n: usize) -> f64 {
        let mut c: u128 = 1;
        let mut sum: u128 = 0;
        for i in 0..=k {
            if i > 0 {
                c = c * (n - i + 1) as u128 / i as u128;
            }
            sum += c;
        }
        sum as f64 / 2f64.powi(n as i32)
    }

    #[test]
    fn binomial_cdf_matches_exact_sums() {
        for n in 1..60 {
            for k in 0..=n {
                let (a, b) = (binomial_half_cdf(k, n), exact_cdf(k, n));
                assert!(
                    (a - b).abs() <= 1e-12 * b.max(1e-300).max(1.0),
                    "{k}/{n}: {a} vs {b}"
                );
            }
        }
        // Large n stays finite and monotone.
        assert!(binomial_half_cdf(450, 1000) < binomial_half_cdf(460, 1000));
        assert!(binomial_half_cdf(10, 5000) > 0.0 || binomial_half_cdf(10, 5000) == 0.0);
    }

    #[test]
    fn mcnemar_examples() {
        assert_eq!(mcnemar_p(0, 0), 1.0);
        // b = 6, c = 0: 2 · 0.5^6 = 0.03125.
        assert!((mcnemar_p(6, 0) - 0.03125).abs() < 1e-15);
        // b = 5, c = 0: 0.0625, not significant at 0.05.
        assert!((mcnemar_p(5, 0) - 0.0625).abs() < 1e-15);
        // Symmetric in b and c, capped at 1.
        assert_eq!(mcnemar_p(3, 4), mcnemar_p(4, 3));
        assert_eq!(mcnemar_p(4, 4), 1.0);
    }
}
