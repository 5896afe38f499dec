//! In-process (candle) models through the real harness: the offline smoke profile end to end,
//! models in the Hugging Face cache, unavailable models, and one model resident at a time. Where
//! a model answers, the answers are checked against transformers' (`golden_smoke.json`).

#![cfg(feature = "candle")]

#[path = "common/answers.rs"]
mod answers;
mod common;
#[path = "common/golden.rs"]
mod golden;

use std::path::PathBuf;

use answers::{Case, check_report};
use common::{Project, outcomes};
use golden::copy_dir;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tiny() -> PathBuf {
    golden::fixtures().join("smolvlm")
}

/// Suite `s` in `p`: cases of `golden` (e.g. `smolvlm/golden_smoke.json`) named in `ids`, each
/// expecting transformers' exact answer. Returns those cases.
fn golden_suite(p: &Project, name: &str, golden: &str, ids: &[&str]) -> Vec<Case> {
    let cases: Vec<Case> = answers::load(golden)
        .cases
        .into_iter()
        .filter(|c| ids.contains(&c.id.as_str()))
        .collect();
    assert_eq!(cases.len(), ids.len(), "{golden}: {ids:?}");
    answers::copy_images(&p.path("suites"));
    p.suite(name, &answers::suite(name, &cases));
    cases
}

/// An image case and a text-only case of the tiny SmolVLM, with transformers' answers.
fn smolvlm_suite(p: &Project) -> Vec<Case> {
    golden_suite(
        p,
        "s",
        "smolvlm/golden_smoke.json",
        &["one-image", "text-only"],
    )
}

#[test]
fn the_offline_profile_runs_the_whole_pipeline_and_matches_its_snapshots() {
    let p = Project::new();
    let models = root().join("models.offline.toml");
    let suites = root().join("tests/smoke");
    let snaps = root().join("tests/smoke/snapshots");
    let run = p.run(
        &[],
        &[
            ("VLMTEST_MODELS", models.to_str().unwrap()),
            ("VLMTEST_SUITES", suites.to_str().unwrap()),
            ("VLMTEST_SNAPSHOTS", snaps.to_str().unwrap()),
            ("CI", "true"),
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.all());
    let o = outcomes(&run.stdout);
    assert_eq!(o.len(), 6, "{}", run.all());
    assert!(o.iter().all(|(_, r)| r == "ok"), "{}", run.all());

    let r = p.report();
    let m = &r["models"][0];
    assert_eq!(m["backend"], "candle");
    assert!(m["load_s"].as_f64().unwrap() > 0.0);
    assert!(m["memory_growth_bytes"].as_i64().is_some());
    assert!(m["peak_memory_bytes"].as_u64().unwrap() > 0);
    for case in r["cases"].as_array().unwrap() {
        assert_eq!(case["snapshot"]["status"], "matched", "{case}");
        for t in case["turns"].as_array().unwrap() {
            assert!(t["prompt_tokens"].as_u64().unwrap() > 5, "{t}");
            assert!(t["completion_tokens"].as_u64().unwrap() >= 1, "{t}");
            assert!(t["time_to_first_token_ms"].as_f64().unwrap() > 0.0, "{t}");
        }
    }
    let md = std::fs::read_to_string(p.path("target/vlmtest/report.md")).unwrap();
    assert!(md.contains("## Speed and memory"), "{md}");
    // The answers are transformers' (the snapshots must agree: see candle_generation.rs).
    let g = answers::load("smolvlm/golden_smoke.json");
    check_report(&r, "smolvlm-tiny", "smoke", &g.cases);
}

#[test]
fn a_model_in_the_hugging_face_cache_is_found_offline() {
    let p = Project::new();
    let cases = smolvlm_suite(&p);
    let home = tempfile::tempdir().unwrap();
    let repo = home.path().join("hub/models--tiny-org--SmolVLM-tiny");
    let commit = "c0ffee0000000000000000000000000000000001";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    copy_dir(&tiny(), &repo.join("snapshots").join(commit), &[]);
    p.write(
        "models.toml",
        "[models.tiny]\nbackend = \"candle\"\narch = \"smolvlm\"\nrepo = \"tiny-org/SmolVLM-tiny\"\n",
    );
    let run = p.run(
        &[],
        &[
            ("HF_HOME", home.path().to_str().unwrap()),
            ("HF_HUB_OFFLINE", "1"),
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.all());
    assert_eq!(run.outcome("tiny::s::one-image"), "ok");
    assert_eq!(run.outcome("tiny::s::text-only"), "ok");
    check_report(&p.report(), "tiny", "s", &cases);

    // The same repo pinned to its commit.
    p.write(
        "models.toml",
        &format!("[models.tiny]\nbackend = \"candle\"\narch = \"smolvlm\"\nrepo = \"tiny-org/SmolVLM-tiny\"\nrevision = \"{commit}\"\n"),
    );
    let run = p.run(&[], &[("HF_HOME", home.path().to_str().unwrap())]);
    assert_eq!(run.outcome("tiny::s::one-image"), "ok", "{}", run.all());
    check_report(&p.report(), "tiny", "s", &cases);
}

#[test]
fn a_model_not_in_the_cache_is_ignored_with_the_command_that_fetches_it() {
    let p = Project::new();
    smolvlm_suite(&p);
    p.write(
        "models.toml",
        "[models.smolvlm-256m]\nbackend = \"candle\"\narch = \"smolvlm\"\nrepo = \"HuggingFaceTB/SmolVLM-256M-Instruct\"\n",
    );
    let home = tempfile::tempdir().unwrap();
    let env = [("HF_HOME", home.path().to_str().unwrap())];
    let run = p.run(&[], &env);
    assert_eq!(run.code, Some(0), "{}", run.all());
    assert_eq!(run.outcome("smolvlm-256m::s::one-image"), "ignored");
    let r = p.report();
    let reason = r["cases"][0]["ignored"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        reason.contains("vlmtest fetch smolvlm-256m")
            && reason.contains("not in the Hugging Face cache"),
        "{reason}\n{}",
        run.all()
    );

    let run = p.run(&[], &[env[0], ("VLMTEST_REQUIRE_MODELS", "1")]);
    assert_eq!(run.code, Some(101), "{}", run.all());
    assert_eq!(run.outcome("smolvlm-256m::s::one-image"), "FAILED");

    // --list loads nothing, so it says nothing about the cache.
    let run = p.run(&["--list"], &env);
    assert_eq!(run.code, Some(0), "{}", run.all());
    assert!(
        run.stdout.contains("smolvlm-256m::s::one-image: test"),
        "{}",
        run.all()
    );
}

#[test]
fn one_model_is_resident_at_a_time() {
    let p = Project::new();
    let cases = smolvlm_suite(&p);
    let dir = tiny();
    let mut toml = String::new();
    for name in ["a", "b", "c"] {
        toml.push_str(&format!(
            "[models.{name}]\nbackend = \"candle\"\narch = \"smolvlm\"\npath = \"{}\"\n\n",
            dir.display()
        ));
    }
    p.write("models.toml", &toml);
    let run = p.run(
        &["--test-threads", "4"],
        &[("RUST_LOG", "vlmtest=info"), ("NO_COLOR", "1")],
    );
    assert_eq!(run.code, Some(0), "{}", run.all());
    let events: Vec<String> = run
        .stderr
        .lines()
        .filter_map(|l| {
            let model = l.split("model=").nth(1)?.split_whitespace().next()?;
            if l.contains("loading model") {
                Some(format!("+{model}"))
            } else if l.contains("dropping model") {
                Some(format!("-{model}"))
            } else {
                None
            }
        })
        .collect();
    // Each model is loaded once and dropped before the next one is loaded (threads take models
    // in any order).
    assert_eq!(events.len(), 6, "{}", run.stderr);
    let mut seen: Vec<&str> = Vec::new();
    for pair in events.chunks(2) {
        let m = pair[0].strip_prefix('+').expect("a load first");
        assert_eq!(pair[1], format!("-{m}"), "{}", run.stderr);
        seen.push(m);
    }
    seen.sort();
    assert_eq!(seen, ["a", "b", "c"], "{}", run.stderr);
    // Loading one model after another changes no answer.
    let r = p.report();
    for m in ["a", "b", "c"] {
        check_report(&r, m, "s", &cases);
    }
}

#[test]
fn a_broken_model_folder_fails_its_trials_with_the_reason() {
    let p = Project::new();
    smolvlm_suite(&p);
    let broken = p.path("broken");
    copy_dir(&tiny(), &broken, &[]);
    std::fs::write(broken.join("config.json"), "{ not json").unwrap();
    p.write(
        "models.toml",
        "[models.bad]\nbackend = \"candle\"\narch = \"smolvlm\"\npath = \"broken\"\n",
    );
    let run = p.run(&[], &[]);
    assert_eq!(run.code, Some(101), "{}", run.all());
    assert_eq!(run.outcome("bad::s::one-image"), "FAILED");
    assert!(run.stdout.contains("config.json:1"), "{}", run.all());
}

#[test]
fn every_architecture_runs_through_models_toml() {
    let p = Project::new();
    // Each model its own suite of transformers' answers; a filter runs each model on its own.
    let chat = golden_suite(
        &p,
        "chat",
        "llava-next/golden_smoke.json",
        &["one-image", "two-images", "text-only", "conversation"],
    );
    let tasks = golden_suite(
        &p,
        "tasks",
        "paligemma/golden_smoke.json",
        &["gradient-caption", "shapes-square"],
    );
    // A text-only case for PaliGemma, which cannot answer it.
    let mut yaml = answers::suite("tasks", &tasks);
    yaml.push_str("  - id: words\n    question: Say hello.\n    expect: { regex: \"(?s).\" }\n");
    p.suite("tasks", &yaml);
    let fx = golden::fixtures();
    p.write(
        "models.toml",
        &format!(
            "[models.llava]\nbackend = \"candle\"\narch = \"llava-next\"\npath = \"{}\"\n\n\
             [models.pali]\nbackend = \"candle\"\narch = \"paligemma\"\npath = \"{}\"\n",
            fx.join("llava-next").display(),
            fx.join("paligemma").display()
        ),
    );
    let run = p.run(&["llava::chat::"], &[]);
    assert_eq!(run.code, Some(0), "{}", run.all());
    for c in &chat {
        assert_eq!(run.outcome(&format!("llava::chat::{}", c.id)), "ok");
    }
    check_report(&p.report(), "llava", "chat", &chat);

    let run = p.run(&["pali::tasks::"], &[]);
    assert_eq!(run.code, Some(0), "{}", run.all());
    assert_eq!(run.outcome("pali::tasks::gradient-caption"), "ok");
    assert_eq!(run.outcome("pali::tasks::shapes-square"), "ok");
    // PaliGemma cannot answer without an image: its text-only case is ignored, saying so.
    assert_eq!(run.outcome("pali::tasks::words"), "ignored");
    let r = p.report();
    let answered: Vec<serde_json::Value> = r["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["case"] != "words")
        .cloned()
        .collect();
    check_report(
        &serde_json::json!({ "cases": answered }),
        "pali",
        "tasks",
        &tasks,
    );
    let pali = r["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "pali")
        .unwrap()
        .clone();
    assert_eq!(pali["text_only"], false);
}
