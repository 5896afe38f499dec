//! Regression testing against a committed baseline (`vlmtest baseline`, the `regression` trial,
//! `vlmtest compare`), repeats with their pass rates, and speed budgets. Every expected figure is
//! computed here from its definition (exact binomial sums, Wilson's formula), not taken from
//! vlmtest.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Project, Reply, Server};
use serde_json::Value;

/// P(X ≤ k), X ~ Binomial(n, ½), with exact integer binomial coefficients.
fn binom_cdf(k: u64, n: u64) -> f64 {
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

fn mcnemar(b: u64, c: u64) -> f64 {
    if b + c == 0 {
        return 1.0;
    }
    (2.0 * binom_cdf(b.min(c), b + c)).min(1.0)
}

/// Ten cases, `capital N?`; the server answers "Paris" unless N is in `wrong`.
fn suite(extra_gate: &str) -> String {
    let mut y = format!("gate:\n  min_accuracy: 0.0\n{extra_gate}cases:\n");
    for i in 0..10 {
        y.push_str(&format!(
            "  - {{ id: c{i}, question: capital {i}?, expect: {{ contains: Paris }}, snapshot: false }}\n"
        ));
    }
    y
}

fn server(wrong: &'static [usize]) -> Server {
    Server::start(move |seen| {
        let q = seen.last_question();
        let n: usize = q
            .trim_start_matches("capital ")
            .trim_end_matches('?')
            .parse()
            .unwrap_or(99);
        Reply::answer(if wrong.contains(&n) {
            "London"
        } else {
            "Paris"
        })
    })
}

fn vlmtest(p: &Project, args: &[&str]) -> (Option<i32>, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_vlmtest"))
        .args(args)
        .current_dir(p.path(""))
        .env("CARGO_MANIFEST_DIR", p.path(""))
        .env_remove("VLMTEST_OUT")
        .env_remove("VLMTEST_BASELINES")
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

/// A baseline run where every case passes, written with `vlmtest baseline`.
fn with_baseline(p: &Project) {
    let good = server(&[]);
    p.models(&good, &[("m", "")]);
    let r = p.run(&[], &[]);
    assert_eq!(r.code, Some(0), "{}", r.all());
    let (code, out, err) = vlmtest(p, &["baseline"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("baselines/m.json: 10 cases"), "{out}");
}

#[test]
fn a_significant_regression_fails_the_regression_trial_with_every_flip() {
    let p = Project::new();
    p.suite("s", &suite(""));
    with_baseline(&p);
    let b: Value =
        serde_json::from_str(&std::fs::read_to_string(p.path("baselines/m.json")).unwrap())
            .unwrap();
    assert_eq!(b["model"], "m");
    assert_eq!(b["cases"].as_array().unwrap().len(), 10);
    assert_eq!(b["cases"][0]["answer"], "Paris");
    assert!(
        b["fingerprint"]["weights"]
            .as_str()
            .unwrap()
            .contains("model=m-served")
    );

    // The regression trial is listed right after the gate.
    let list = p.run(&["--list"], &[]);
    let names: Vec<&str> = list
        .stdout
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .collect();
    let gate = names.iter().position(|n| *n == "m::s::gate").unwrap();
    assert_eq!(names[gate + 1], "m::s::regression", "{names:?}");

    // Seven cases now fail: b = 7, c = 0.
    let bad = server(&[0, 1, 2, 3, 4, 5, 6]);
    p.models(&bad, &[("m", "")]);
    let r = p.run(&[], &[]);
    assert_eq!(r.outcome("m::s::regression"), "FAILED", "{}", r.all());
    let p_value = mcnemar(7, 0);
    assert!((p_value - 0.015625).abs() < 1e-12);
    assert!(r.stdout.contains("REGRESSED"), "{}", r.stdout);
    assert!(
        r.stdout.contains(&format!("p = {p_value:.4}")),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("pass→fail 7, fail→pass 0"),
        "{}",
        r.stdout
    );
    for i in 0..7 {
        assert!(
            r.stdout
                .contains(&format!("c{i}: pass \"Paris\" -> fail \"London\"")),
            "{}",
            r.stdout
        );
    }
    let report = p.report();
    let c = &report["comparisons"][0];
    assert_eq!(c["verdict"], "regressed");
    assert_eq!(c["pass_to_fail"], 7);
    assert_eq!(c["fail_to_pass"], 0);
    assert_eq!(c["n"], 10);
    assert!((c["p_value"].as_f64().unwrap() - p_value).abs() < 1e-12);
    // Paired differences: seven −1, three 0: mean −0.7, sd √(7·0.09 + 3·0.49)/3 ... by definition.
    let d: Vec<f64> = (0..10).map(|i| if i < 7 { -1.0 } else { 0.0 }).collect();
    let mean = d.iter().sum::<f64>() / 10.0;
    let sd = (d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 9.0).sqrt();
    let half = 1.959963984540054 * sd / 10f64.sqrt();
    assert!((c["delta"].as_f64().unwrap() - mean).abs() < 1e-12);
    assert!((c["ci_low"].as_f64().unwrap() - (mean - half)).abs() < 1e-12);
    assert!((c["ci_high"].as_f64().unwrap() - (mean + half)).abs() < 1e-12);
    assert_eq!(c["flips"].as_array().unwrap().len(), 7);
    let md = std::fs::read_to_string(p.path("target/vlmtest/report.md")).unwrap();
    assert!(
        md.contains("## Against the baseline") && md.contains("**REGRESSED**"),
        "{md}"
    );
    let html = std::fs::read_to_string(p.path("target/vlmtest/report.html")).unwrap();
    assert!(html.contains("Against the baseline"), "{html}");
}

#[test]
fn a_few_flips_are_noise_unless_max_drop_says_otherwise() {
    let p = Project::new();
    p.suite("s", &suite(""));
    with_baseline(&p);
    // Two flips: p = 0.5, not significant.
    let bad = server(&[0, 1]);
    p.models(&bad, &[("m", "")]);
    let r = p.run(&[], &[]);
    assert_eq!(r.outcome("m::s::regression"), "ok", "{}", r.all());
    assert_eq!(p.report()["comparisons"][0]["verdict"], "unchanged");
    assert!(
        (p.report()["comparisons"][0]["p_value"].as_f64().unwrap() - mcnemar(2, 0)).abs() < 1e-12
    );
    // The same run with gate.max_drop 0.1: a drop of 0.2 regresses.
    p.suite("s", &suite("  max_drop: 0.1\n"));
    let r = p.run(&[], &[]);
    assert_eq!(r.outcome("m::s::regression"), "FAILED", "{}", r.all());
    assert!(r.stdout.contains("more than max_drop 0.1"), "{}", r.stdout);
}

#[test]
fn improvements_and_a_changed_fingerprint_are_reported() {
    let p = Project::new();
    p.suite("s", &suite(""));
    // The baseline: seven failures.
    let bad = server(&[0, 1, 2, 3, 4, 5, 6]);
    p.models(&bad, &[("m", "")]);
    p.run(&[], &[]);
    vlmtest(&p, &["baseline"]);
    // Now all pass, and the model is served under another name: another fingerprint.
    let good = server(&[]);
    let toml = format!(
        "[models.m]\nbackend = \"openai\"\nbase_url = \"{}\"\nmodel = \"renamed\"\n",
        good.base_url()
    );
    p.write("models.toml", &toml);
    let r = p.run(&[], &[]);
    assert_eq!(r.outcome("m::s::regression"), "ok", "{}", r.all());
    let c = &p.report()["comparisons"][0];
    assert_eq!(c["verdict"], "improved");
    assert_eq!(c["fail_to_pass"], 7);
    let note = c["fingerprint_note"].as_str().unwrap();
    assert!(
        note.contains("model=m-served") && note.contains("model=renamed"),
        "{note}"
    );
    assert!(
        r.stderr.contains("another model fingerprint"),
        "{}",
        r.stderr
    );
}

#[test]
fn vlmtest_compare_takes_reports_baselines_and_folders() {
    let p = Project::new();
    p.suite("s", &suite(""));
    with_baseline(&p);
    let bad = server(&[0, 1, 2, 3, 4, 5, 6, 7]);
    p.models(&bad, &[("m", "")]);
    p.run(&[], &[]);
    let report = p.path("target/vlmtest/report.json");
    let report = report.to_str().unwrap();
    for base in ["baselines/m.json", "baselines"] {
        let (code, out, err) = vlmtest(&p, &["compare", base, report, "--format", "json"]);
        assert_eq!(code, Some(1), "regressed: {out}{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        let c = &v["comparisons"][0];
        for key in [
            "model",
            "suite",
            "n",
            "base_accuracy",
            "new_accuracy",
            "delta",
            "ci_low",
            "ci_high",
            "pass_to_fail",
            "fail_to_pass",
            "p_value",
            "verdict",
            "flips",
        ] {
            assert!(c.get(key).is_some(), "{key} in {c}");
        }
        assert_eq!(c["pass_to_fail"], 8);
        assert!((c["p_value"].as_f64().unwrap() - mcnemar(8, 0)).abs() < 1e-12);
        assert_eq!(c["flips"][0]["case"], "c0");
        assert_eq!(c["flips"][0]["base_answer"], "Paris");
        assert_eq!(c["flips"][0]["new_answer"], "London");
        assert_eq!(c["flips"][0]["base_passed"], true);
        assert_eq!(c["flips"][0]["new_passed"], false);
    }
    // A run against itself: unchanged, exit 0; markdown by default.
    let (code, out, _) = vlmtest(&p, &["compare", report, report]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("| m | s | 10 |") && out.contains("unchanged"),
        "{out}"
    );
    // A stricter alpha turns the regression of 8 flips (p ≈ 0.0078) into noise.
    let (code, out, _) = vlmtest(
        &p,
        &["compare", "baselines/m.json", report, "--alpha", "0.001"],
    );
    assert_eq!(code, Some(0), "{out}");
    // Bad input: exit 2, naming the file.
    p.write("broken.json", "{\"cases\": 3");
    let (code, _, err) = vlmtest(&p, &["compare", "broken.json", report]);
    assert_eq!(code, Some(2));
    assert!(err.contains("broken.json"), "{err}");
    let (code, _, err) = vlmtest(&p, &["compare", "nothing.json", report]);
    assert_eq!(code, Some(2));
    assert!(err.contains("nothing.json"), "{err}");
}

/// The Wilson score interval, from its formula.
fn wilson(k: f64, n: f64) -> (f64, f64) {
    let z = 1.959963984540054_f64;
    let p = k / n;
    let c = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let h = z / (1.0 + z * z / n) * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    (c - h, c + h)
}

#[test]
fn repeats_ask_a_case_several_times_and_judge_its_pass_rate() {
    // The server alternates: right, wrong, right, wrong...
    let n = Arc::new(AtomicUsize::new(0));
    let seen = n.clone();
    let server = Server::start(move |_| {
        let i = seen.fetch_add(1, Ordering::SeqCst);
        Reply::answer(if i.is_multiple_of(2) {
            "Paris"
        } else {
            "London"
        })
    });
    let p = Project::new();
    p.suite(
        "s",
        "defaults:\n  repeat: 4\n  snapshot: false\ncases:\n  - { id: half, question: capital?, expect: { contains: Paris }, min_pass_rate: 0.5 }\n  - { id: all, question: capital?, expect: { contains: Paris } }\n",
    )
    .models(&server, &[("m", "")]);
    let r = p.run(&["--test-threads", "1"], &[]);
    assert_eq!(n.load(Ordering::SeqCst), 8, "4 attempts each");
    assert_eq!(r.outcome("m::s::half"), "ok", "{}", r.all());
    assert_eq!(r.outcome("m::s::all"), "FAILED", "{}", r.all());
    assert!(r.stdout.contains("passed 2 of 4 attempts"), "{}", r.stdout);
    let report = p.report();
    for c in report["cases"].as_array().unwrap() {
        assert_eq!(c["attempts"], 4);
        assert_eq!(c["passes"], 2);
        assert_eq!(c["pass_rate"], 0.5);
        let (lo, hi) = wilson(2.0, 4.0);
        assert!(
            (c["pass_rate_low"].as_f64().unwrap() - lo).abs() < 1e-12,
            "{c}"
        );
        assert!(
            (c["pass_rate_high"].as_f64().unwrap() - hi).abs() < 1e-12,
            "{c}"
        );
        assert_eq!(
            c["score"], 0.5,
            "the case's score is the mean over attempts"
        );
        let attempts = c["attempt_results"].as_array().unwrap();
        assert_eq!(attempts.len(), 4);
        let answers: Vec<&str> = attempts
            .iter()
            .map(|a| a["answer"].as_str().unwrap())
            .collect();
        assert_eq!(answers, ["Paris", "London", "Paris", "London"]);
        for k in ["latency_p50_ms", "latency_p95_ms", "latency_max_ms"] {
            assert!(c[k].as_f64().is_some(), "{k}: {c}");
        }
    }
    // models.toml's `repeat` applies when the suite does not say.
    p.suite(
        "s",
        "cases:\n  - { id: one, question: capital?, expect: { contains: Paris }, snapshot: false, min_pass_rate: 0.6 }\n",
    )
    .models(&server, &[("m", "repeat = 5")]);
    n.store(0, Ordering::SeqCst);
    let r = p.run(&[], &[]);
    assert_eq!(n.load(Ordering::SeqCst), 5);
    // 3 of 5 pass (0, 2, 4): 0.6 >= 0.6.
    assert_eq!(r.outcome("m::s::one"), "ok", "{}", r.all());
    assert_eq!(p.report()["cases"][0]["passes"], 3);
}
