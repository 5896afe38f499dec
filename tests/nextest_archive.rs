//! `cargo nextest archive`: the `vlm` harness built once and run from another folder, as on a GPU
//! machine that has the archive and a checkout but no build. The suites, images, models.toml and
//! snapshots are found there (by the runtime `CARGO_MANIFEST_DIR` nextest sets to the
//! `--workspace-remap` folder, never the folder the archive was built in), with each test
//! process loading the model itself (default profile) and with one model shared by all of them
//! (the `serve` profile's setup script runs the archived `vlmtest serve --nextest`).
//!
//! Needs cargo-nextest; without it the test says so and checks nothing, unless
//! `VLMTEST_REQUIRE_NEXTEST=1` makes that a failure. It builds the `vlm` target if it is not
//! built yet, and writes a ~200 MB archive into a temporary folder (removed at the end).

#![cfg(feature = "candle")]

#[path = "common/golden.rs"]
mod golden;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn nextest_installed() -> bool {
    let ok = Command::new(env!("CARGO"))
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("VLMTEST_REQUIRE_NEXTEST").is_none(),
            "cargo-nextest is not installed (VLMTEST_REQUIRE_NEXTEST is set)"
        );
        eprintln!("note: cargo-nextest is not installed: the archive test checks nothing");
    }
    ok
}

/// `cargo nextest ...` in `dir`, without the variables of the `cargo test` (or nextest) run
/// this test is part of.
fn nextest(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.arg("nextest").args(args).current_dir(dir);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().to_string();
        // What cargo sets for this test process too: build scripts that watch those variables
        // (ring's does) would see them changed and rebuild half the dependency tree (it made
        // this test take 320 s in CI instead of reusing the build).
        let set_by_cargo = [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
        ]
        .iter()
        .any(|p| k.starts_with(p))
            || ["CARGO_TARGET_TMPDIR", "CARGO_PRIMARY_PACKAGE", "OUT_DIR"].contains(&k.as_str());
        if set_by_cargo
            || k.starts_with("VLMTEST_")
            || k.starts_with("NEXTEST")
            || k.starts_with("INSTA_")
        {
            cmd.env_remove(&k);
        }
    }
    cmd.env("CI", "true").env("CARGO_TERM_COLOR", "never");
    cmd
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(from, to).unwrap();
}

/// The offline smoke project in the default layout (models.toml, suites/, snapshots/ at the
/// root), with the crate's manifest and nextest configuration, as a checkout would have them.
fn smoke_checkout(dir: &Path) {
    let r = root();
    copy(&r.join("Cargo.toml"), &dir.join("Cargo.toml"));
    copy(
        &r.join(".config/nextest.toml"),
        &dir.join(".config/nextest.toml"),
    );
    // `path = "tests/fixtures/smolvlm"`, relative to models.toml.
    copy(&r.join("models.offline.toml"), &dir.join("models.toml"));
    golden::copy_dir(
        &golden::fixtures().join("smolvlm"),
        &dir.join("tests/fixtures/smolvlm"),
        &[],
    );
    // The suite names its images `../fixtures/images/...`.
    copy(
        &r.join("tests/smoke/smoke.yaml"),
        &dir.join("suites/smoke.yaml"),
    );
    golden::copy_dir(
        &golden::fixtures().join("images"),
        &dir.join("fixtures/images"),
        &[],
    );
    golden::copy_dir(
        &r.join("tests/smoke/snapshots"),
        &dir.join("snapshots"),
        &[],
    );
}

/// Outcomes nextest printed: (test name, PASS / FAIL / ...).
fn outcomes(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let (status, rest) = l.split_once(' ')?;
            if !matches!(status, "PASS" | "FAIL" | "SKIP" | "SIGSEGV" | "TIMEOUT") {
                return None;
            }
            let name = rest.rsplit(' ').next()?.to_string();
            Some((name, status.to_string()))
        })
        .collect()
}

fn report(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("target/vlmtest/report.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Loads of the weights the test processes did: in-process loads recorded in models.jsonl
/// (every process of a nextest run appends its own; a served model records no memory growth).
fn in_process_loads(dir: &Path) -> usize {
    let text = std::fs::read_to_string(dir.join("target/vlmtest/models.jsonl")).unwrap();
    let mut loads: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| !v["memory_growth_bytes"].is_null())
        .map(|v| v["load_s"].to_string())
        .collect();
    loads.sort();
    loads.dedup();
    loads.len()
}

#[test]
fn an_archive_runs_from_another_folder_alone_and_with_a_shared_model() {
    if !nextest_installed() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("vlm.tar.zst");
    let built = nextest(&root(), &["archive", "--test", "vlm", "--archive-file"])
        .arg(&archive)
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", text(&built));

    let moved = tmp.path().join("elsewhere");
    smoke_checkout(&moved);
    let expected: Vec<String> = [
        "conversation",
        "gate",
        "one-image",
        "split-image",
        "text-only",
        "two-images",
    ]
    .iter()
    .map(|c| format!("smolvlm-tiny::smoke::{c}"))
    .collect();
    let run = |profile: &str| {
        let start = Instant::now();
        let out = nextest(&moved, &["run", "--archive-file"])
            .arg(&archive)
            .args(["--workspace-remap", "."])
            .args(["--profile", profile])
            .output()
            .unwrap();
        let wall = start.elapsed();
        let all = text(&out);
        assert!(out.status.success(), "profile {profile}:\n{all}");
        let mut o = outcomes(&all);
        o.sort();
        let names: Vec<&String> = o.iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            expected.iter().collect::<Vec<_>>(),
            "profile {profile}: the moved folder's trials, not the build folder's:\n{all}"
        );
        assert!(o.iter().all(|(_, s)| s == "PASS"), "{all}");
        let r = report(&moved);
        let cases = r["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 5, "{r}");
        for c in cases {
            // Under CI=true a snapshot that is not found fails: they were found, and matched.
            assert_eq!(c["snapshot"]["status"], "matched", "{c}");
        }
        (wall, all, r)
    };

    let (alone, _, r) = run("default");
    assert_eq!(r["models"][0]["backend"], "candle");
    let loads_alone = in_process_loads(&moved);
    assert_eq!(loads_alone, 6, "one load per test process");

    let (shared, all, r) = run("serve");
    assert!(
        all.contains("SETUP PASS") && all.contains("`smolvlm-tiny` served at http://127.0.0.1:"),
        "{all}"
    );
    assert_eq!(r["models"][0]["backend"], "openai");
    assert_eq!(
        in_process_loads(&moved),
        0,
        "no test process loaded the weights"
    );
    let log = moved.join("target/vlmtest/logs/serve-smolvlm-tiny.log");
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(text.matches("loaded in").count(), 1, "{text}");
        if text.contains("exited; stopping") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the server outlived the run:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "smoke suite from an archive: {:.2} s with {loads_alone} loads (each process), {:.2} s with 1 load (shared)",
        alone.as_secs_f64(),
        shared.as_secs_f64()
    );
}
