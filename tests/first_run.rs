//! The first run on a fresh machine: an in-process model whose weights are not in the Hugging
//! Face cache is downloaded on its first use (never while listing), from a stand-in hub on
//! loopback (`HF_ENDPOINT`), once however many trials or processes want it; `HF_HUB_OFFLINE=1`,
//! `VLMTEST_FETCH=never`, an unreachable hub or an unknown repo leave the trials ignored with
//! the reason. Where the model answers, its answers are transformers' (`golden_smoke.json`).

#![cfg(feature = "candle")]

#[path = "common/answers.rs"]
mod answers;
mod common;
#[path = "common/golden.rs"]
mod golden;
#[path = "common/hub.rs"]
mod hub;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::Project;
use hub::Hub;

const REPO: &str = "tiny-org/SmolVLM-tiny";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn tiny() -> PathBuf {
    golden::fixtures().join("smolvlm")
}

/// The tiny SmolVLM's files as its Hub repo would hold them (not our goldens).
fn repo_files() -> Vec<(String, Vec<u8>)> {
    hub::folder_files(&tiny())
        .into_iter()
        .filter(|(n, _)| !n.starts_with("golden"))
        .collect()
}

/// A project whose one model is `repo` on the hub, with an image case and a text-only case
/// expecting transformers' answers.
fn project(repo: &str) -> (Project, Vec<answers::Case>) {
    let p = Project::new();
    let cases: Vec<answers::Case> = answers::load("smolvlm/golden_smoke.json")
        .cases
        .into_iter()
        .filter(|c| c.id == "one-image" || c.id == "text-only")
        .collect();
    assert_eq!(cases.len(), 2);
    answers::copy_images(&p.path("suites"));
    p.suite("s", &answers::suite("s", &cases));
    p.write(
        "models.toml",
        &format!("[models.tiny]\nbackend = \"candle\"\narch = \"smolvlm\"\nrepo = \"{repo}\"\n"),
    );
    (p, cases)
}

/// The harness in `p` with a clean Hugging Face environment (CI exports HF_HUB_OFFLINE=1) and
/// then `env`.
fn command(p: &Project, args: &[&str], env: &[(&str, &str)]) -> std::process::Command {
    let mut cmd = p.command(args, &[]);
    for var in [
        "HF_HOME",
        "HF_HUB_CACHE",
        "HF_ENDPOINT",
        "HF_TOKEN",
        "HF_HUB_OFFLINE",
        "VLMTEST_FETCH",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn run(p: &Project, args: &[&str], env: &[(&str, &str)]) -> common::Run {
    let out = command(p, args, env).output().unwrap();
    common::Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

fn snapshot(home: &Path) -> PathBuf {
    home.join("hub/models--tiny-org--SmolVLM-tiny/snapshots")
        .join(COMMIT)
}

fn ignored_reason(p: &Project, case: &str) -> String {
    let r = p.report();
    let row = r["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["case"] == case)
        .cloned()
        .unwrap_or_else(|| panic!("{case} not in report.json: {r}"));
    row["ignored"].as_str().unwrap_or_default().to_string()
}

#[test]
fn a_first_run_downloads_the_model_once_then_answers() {
    // The weights take 3 s to come: the download overlaps both trials' first use, and must not
    // count as load time.
    let hub = Hub::start(REPO, COMMIT, repo_files(), Duration::from_secs(3));
    let (p, cases) = project(REPO);
    let home = tempfile::tempdir().unwrap();
    let env = [
        ("HF_HOME", home.path().to_str().unwrap()),
        ("HF_ENDPOINT", hub.endpoint.as_str()),
    ];
    let r = run(&p, &["--test-threads", "2"], &env);
    assert_eq!(r.code, Some(0), "{}", r.all());
    assert_eq!(r.outcome("tiny::s::one-image"), "ok", "{}", r.all());
    assert_eq!(r.outcome("tiny::s::text-only"), "ok", "{}", r.all());
    assert_eq!(r.outcome("tiny::s::gate"), "ok", "{}", r.all());
    answers::check_report(&p.report(), "tiny", "s", &cases);

    // Into the standard cache layout, every file once, the listing once.
    for (name, data) in repo_files() {
        let got = std::fs::read(snapshot(home.path()).join(&name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(got == data, "{name} differs from the hub's");
        assert_eq!(hub.downloads_of(&name), 1, "{name}: {:?}", hub.asked());
    }
    let listings = hub
        .asked()
        .iter()
        .filter(|a| a.path.starts_with("/api/models/"))
        .count();
    assert_eq!(listings, 1, "{:?}", hub.asked());

    // What the user saw on stderr (not a terminal here: plain lines, no bar redrawn).
    let err = &r.stderr;
    for want in [
        "vlmtest: model `tiny`: tiny-org/SmolVLM-tiny@main is not in the Hugging Face cache yet: downloading it",
        "vlmtest: downloading tiny-org/SmolVLM-tiny@main into",
        "model.safetensors: 1.02 MB in ",
        "vlmtest: downloaded tiny-org/SmolVLM-tiny@main: ",
        "vlmtest: loading tiny (in-process, f32, cpu)…",
        "vlmtest: loaded tiny in ",
    ] {
        assert!(err.contains(want), "stderr lacks {want:?}:\n{err}");
    }
    assert!(!err.contains('\r') && !err.contains('\x1b'), "{err:?}");
    assert!(
        !r.stdout.contains("vlmtest:"),
        "stdout is libtest's:\n{}",
        r.stdout
    );
    // Loading comes after the download, and the download is not load time.
    let at = |s: &str| err.find(s).unwrap();
    assert!(
        at("vlmtest: downloaded") < at("vlmtest: loading tiny"),
        "{err}"
    );
    let load_s = p.report()["models"][0]["load_s"].as_f64().unwrap();
    assert!(load_s < 2.5, "load_s {load_s} includes the download");

    // The next run finds the files in the cache and asks the hub nothing.
    let before = hub.asked().len();
    let r = run(&p, &[], &env);
    assert_eq!(r.code, Some(0), "{}", r.all());
    assert_eq!(r.outcome("tiny::s::one-image"), "ok", "{}", r.all());
    assert_eq!(hub.asked().len(), before, "{:?}", hub.asked());
    assert!(!r.stderr.contains("downloading"), "{}", r.stderr);
}

#[test]
fn offline_or_never_leave_the_trials_ignored_naming_why_and_the_fetch_command() {
    let hub = Hub::start(REPO, COMMIT, repo_files(), Duration::ZERO);
    let (p, _) = project(REPO);
    let home = tempfile::tempdir().unwrap();
    let h = home.path().to_str().unwrap();
    for (var, value, why) in [
        (
            "HF_HUB_OFFLINE",
            "1",
            "HF_HUB_OFFLINE=1 forbids downloading it",
        ),
        (
            "VLMTEST_FETCH",
            "never",
            "VLMTEST_FETCH=never forbids downloading it",
        ),
        (
            "VLMTEST_FETCH",
            " Never ",
            "VLMTEST_FETCH=never forbids downloading it",
        ),
    ] {
        let env = [
            ("HF_HOME", h),
            ("HF_ENDPOINT", hub.endpoint.as_str()),
            (var, value),
        ];
        let r = run(&p, &[], &env);
        assert_eq!(r.code, Some(0), "{var}={value}: {}", r.all());
        assert_eq!(r.outcome("tiny::s::one-image"), "ignored", "{}", r.all());
        assert_eq!(r.outcome("tiny::s::gate"), "ignored", "{}", r.all());
        let reason = ignored_reason(&p, "one-image");
        for want in [why, "not in the Hugging Face cache", "`vlmtest fetch tiny`"] {
            assert!(
                reason.contains(want),
                "{var}={value}: {want:?} not in {reason}"
            );
        }
        assert!(
            r.stdout.contains(why),
            "libtest shows the reason:\n{}",
            r.stdout
        );

        // CI that must run everything fails instead.
        let mut env = env.to_vec();
        env.push(("VLMTEST_REQUIRE_MODELS", "1"));
        let r = run(&p, &[], &env);
        assert_eq!(r.code, Some(101), "{}", r.all());
        assert_eq!(r.outcome("tiny::s::one-image"), "FAILED", "{}", r.all());
    }
    assert!(hub.asked().is_empty(), "{:?}", hub.asked());
    assert!(!snapshot(home.path()).exists());

    // A value vlmtest does not know stops the run, listing the choices.
    let r = run(&p, &[], &[("HF_HOME", h), ("VLMTEST_FETCH", "sometimes")]);
    assert_eq!(r.code, Some(2), "{}", r.all());
    assert!(
        r.stderr
            .contains("VLMTEST_FETCH=`sometimes` is not understood (expected one of: auto, never)"),
        "{}",
        r.stderr
    );
}

#[test]
fn listing_never_downloads() {
    let hub = Hub::start(REPO, COMMIT, repo_files(), Duration::ZERO);
    let (p, _) = project(REPO);
    let home = tempfile::tempdir().unwrap();
    let env = [
        ("HF_HOME", home.path().to_str().unwrap()),
        ("HF_ENDPOINT", hub.endpoint.as_str()),
    ];
    for args in [
        &["--list"][..],
        &["--list", "--format", "terse", "tiny::s"][..],
    ] {
        let r = run(&p, args, &env);
        assert_eq!(r.code, Some(0), "{}", r.all());
        assert!(r.stdout.contains("tiny::s::one-image: test"), "{}", r.all());
        assert!(!r.stderr.contains("vlmtest:"), "{}", r.stderr);
    }
    assert!(hub.asked().is_empty(), "{:?}", hub.asked());
    assert!(!home.path().join("hub").exists());
}

#[test]
fn an_unreachable_hub_or_an_unknown_repo_leaves_the_trials_ignored() {
    // A port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let (p, _) = project(REPO);
    let home = tempfile::tempdir().unwrap();
    let h = home.path().to_str().unwrap();
    let r = run(&p, &[], &[("HF_HOME", h), ("HF_ENDPOINT", closed.as_str())]);
    assert_eq!(r.code, Some(0), "{}", r.all());
    assert_eq!(r.outcome("tiny::s::one-image"), "ignored", "{}", r.all());
    assert_eq!(r.outcome("tiny::s::text-only"), "ignored", "{}", r.all());
    let reason = ignored_reason(&p, "one-image");
    for want in [
        "not in the Hugging Face cache",
        "downloading it failed: cannot list tiny-org/SmolVLM-tiny@main",
        "`vlmtest fetch tiny`",
    ] {
        assert!(reason.contains(want), "{want:?} not in {reason}");
    }
    assert!(!r.all().contains("panicked"), "{}", r.all());
    let r = run(
        &p,
        &[],
        &[
            ("HF_HOME", h),
            ("HF_ENDPOINT", closed.as_str()),
            ("VLMTEST_REQUIRE_MODELS", "1"),
        ],
    );
    assert_eq!(r.code, Some(101), "{}", r.all());
    assert_eq!(r.outcome("tiny::s::one-image"), "FAILED", "{}", r.all());

    // A repo the hub does not have.
    let hub = Hub::start(REPO, COMMIT, repo_files(), Duration::ZERO);
    let (p, _) = project("tiny-org/no-such-model");
    let r = run(
        &p,
        &[],
        &[("HF_HOME", h), ("HF_ENDPOINT", hub.endpoint.as_str())],
    );
    assert_eq!(r.code, Some(0), "{}", r.all());
    assert_eq!(r.outcome("tiny::s::one-image"), "ignored", "{}", r.all());
    let reason = ignored_reason(&p, "one-image");
    assert!(
        reason.contains("cannot list tiny-org/no-such-model@main") && reason.contains("404"),
        "{reason}"
    );
}

#[test]
fn processes_that_want_the_same_model_at_once_download_it_once() {
    // cargo-nextest runs one process per test: two of them start on a fresh cache together.
    let hub = Hub::start(REPO, COMMIT, repo_files(), Duration::from_secs(2));
    let home = tempfile::tempdir().unwrap();
    let env = [
        ("HF_HOME", home.path().to_str().unwrap()),
        ("HF_ENDPOINT", hub.endpoint.as_str()),
    ];
    let projects: Vec<(Project, Vec<answers::Case>)> = (0..2).map(|_| project(REPO)).collect();
    let children: Vec<std::process::Child> = projects
        .iter()
        .map(|(p, _)| {
            command(p, &[], &env)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut waited = false;
    for (child, (p, cases)) in children.into_iter().zip(&projects) {
        let out = child.wait_with_output().unwrap();
        let all = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(0), "{all}");
        answers::check_report(&p.report(), "tiny", "s", cases);
        waited |= all.contains("another process is downloading tiny-org/SmolVLM-tiny");
    }
    assert_eq!(
        hub.downloads_of("model.safetensors"),
        1,
        "{:?}",
        hub.asked()
    );
    assert!(waited, "neither process waited for the other");
}
