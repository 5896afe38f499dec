//! The `vlmtest` command: `score` re-scores answers produced by any other tool.

use std::io::Write;
use std::process::{Command, Stdio};

fn score(args: &[&str], input: &str) -> (Option<i32>, Vec<serde_json::Value>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vlmtest"))
        .arg("score")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The command may exit before reading its input (a usage error): a broken pipe is fine.
    let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    let out = child.wait_with_output().unwrap();
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (
        out.status.code(),
        lines,
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn vqa_scores_match_the_official_evaluation() {
    let input = concat!(
        r#"{"answers": ["2","2","2","2","2","2","2","2","2","2"], "prediction": "Two."}"#,
        "\n",
        r#"{"answers": ["yes","yes","no","no","no","no","no","no","no","no"], "prediction": "yes"}"#,
        "\n",
        r#"{"answers": ["red","red","red","blue","blue","blue","blue","blue","blue","blue"], "prediction": "red"}"#,
        "\n",
        "\n",
        r#"{"answers": ["cat","dog","dog","dog","dog","dog","dog","dog","dog","dog"], "prediction": "a cat"}"#,
        "\n",
    );
    let (code, out, _) = score(&["--rule", "vqa"], input);
    assert_eq!(code, Some(0));
    let scores: Vec<f64> = out.iter().map(|v| v["score"].as_f64().unwrap()).collect();
    assert_eq!(scores.len(), 4, "blank lines are skipped");
    // Unanimous answers are compared verbatim (a013f00): "Two." ≠ "2" → 0; 2 matches → 0.6;
    // 3 matches → 0.9; 1 match → 0.3 (the official leave-one-out mean)
    for (got, want) in scores.iter().zip([0.0, 0.6, 0.9, 0.3]) {
        assert!((got - want).abs() < 1e-9, "{scores:?}");
    }
    let passed: Vec<bool> = out.iter().map(|v| v["passed"].as_bool().unwrap()).collect();
    assert_eq!(passed, [false, true, true, false]);
}

/// `vlmtest score` against the official vqaEval.py itself: 765 adversarial questions scored by
/// the unmodified script under Python 2.7 (tests/fixtures/vqa/make_vqa_goldens.py), for the
/// current version (`vqa`, a013f00) and the one before its 2021 fix (`vqa_pre2021`, a4f1afd).
/// The scores must be equal to the last bit: vlmtest sums as Python does.
#[test]
fn vqa_scores_equal_the_official_script_on_adversarial_inputs() {
    for (rule, file) in [
        ("vqa", "official_a013f00.jsonl"),
        ("vqa_pre2021", "official_a4f1afd.jsonl"),
    ] {
        let path = format!("{}/tests/fixtures/vqa/{file}", env!("CARGO_MANIFEST_DIR"));
        let golden = std::fs::read_to_string(&path).unwrap();
        let (code, out, err) = score(&["--rule", rule], &golden);
        assert_eq!(code, Some(0), "{err}");
        let lines: Vec<serde_json::Value> = golden
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(out.len(), lines.len());
        let mut wrong = Vec::new();
        for (got, want) in out.iter().zip(&lines) {
            if got["score"].as_f64() != want["score"].as_f64() {
                wrong.push(format!(
                    "{} vs {}: answers {} prediction {}",
                    got["score"], want["score"], want["answers"], want["prediction"]
                ));
            }
        }
        assert!(
            wrong.is_empty(),
            "--rule {rule}: {} of {} differ from the official script:\n{}",
            wrong.len(),
            lines.len(),
            wrong.join("\n")
        );
    }
}

#[test]
fn a_full_rule_needs_only_predictions_and_bad_lines_are_reported() {
    let input =
        "{\"id\": \"a\", \"prediction\": \"Yes, it is.\"}\nnot json\n{\"prediction\": \"No\"}\n";
    let (code, out, err) = score(&["--rule", "{yes_no: yes}"], input);
    assert_eq!(code, Some(1), "a bad line makes the exit status non-zero");
    assert_eq!(
        out.len(),
        3,
        "one output line per input line, errors included"
    );
    assert_eq!(out[0]["score"], 1.0);
    assert_eq!(out[0]["id"], "a");
    assert_eq!(out[1]["line"], 2);
    assert!(
        out[1]["error"]
            .as_str()
            .unwrap()
            .contains("not a JSON object")
    );
    assert_eq!(out[2]["score"], 0.0);
    assert!(err.contains("stdin:2"), "{err}");
}

#[test]
fn an_invalid_rule_is_a_usage_error() {
    let (code, out, err) = score(&["--rule", "{regex: '('}"], "{\"prediction\": \"x\"}\n");
    assert_eq!(code, Some(2));
    assert!(out.is_empty());
    assert!(err.contains("invalid regex"), "{err}");
}
