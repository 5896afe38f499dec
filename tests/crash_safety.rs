//! Nothing hangs, nothing is lost: a model whose loader fails (or panics) does not hold the
//! resident-model permit, and a run killed with SIGKILL keeps every finished case, from which
//! `vlmtest report` rebuilds every output.

mod common;
#[cfg(feature = "candle")]
#[path = "common/golden.rs"]
mod golden;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Project, Reply, Server};

#[cfg(feature = "candle")]
/// Waits for `child` at most `limit`; kills it and fails the test when it hangs.
fn wait_or_kill(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the run hung (no exit within {limit:?})");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A checkpoint whose config made the loader divide by zero (LLaVA-NeXT with `patch_size: 0`),
/// followed by a good model, with one resident model at a time: the broken model's trials fail
/// with a message naming the file and the value, the run goes on, and the good model's trials
/// pass. (That a panic in any loader becomes a load error and gives the resident-model permit
/// back is checked in `backend::tests`.)
#[cfg(feature = "candle")]
#[test]
fn a_broken_checkpoint_fails_its_model_and_the_next_model_still_loads() {
    let p = Project::new();
    let broken = p.path("broken");
    golden::copy_dir(&golden::fixtures().join("llava-next"), &broken, &[]);
    let cfg_path = broken.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["vision_config"]["patch_size"] = 0.into();
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    let good = golden::fixtures().join("smolvlm");
    p.write(
        "models.toml",
        &format!(
            "[models.a-broken]\nbackend = \"candle\"\narch = \"llava-next\"\npath = \"broken\"\nmax_new_tokens = 2\n\n\
             [models.b-good]\nbackend = \"candle\"\narch = \"smolvlm\"\npath = \"{}\"\nmax_new_tokens = 2\n",
            good.display()
        ),
    );
    p.suite(
        "s",
        "cases:\n  - id: horse\n    image: images/horse.png\n    question: What animal?\n    expect: { regex: \"(?s).\" }\n    snapshot: false\n",
    );
    let mut cmd = p.command(&["--test-threads", "1"], &[("VLMTEST_MAX_RESIDENT", "1")]);
    let out = tempfile::NamedTempFile::new().unwrap();
    cmd.stdout(out.reopen().unwrap()).stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let status = wait_or_kill(&mut child, Duration::from_secs(120));
    let stdout = std::fs::read_to_string(out.path()).unwrap();
    assert_eq!(status.code(), Some(101), "{stdout}");
    let o = common::outcomes(&stdout);
    let get = |n: &str| o.iter().find(|(t, _)| t == n).map(|(_, r)| r.as_str());
    assert_eq!(get("a-broken::s::horse"), Some("FAILED"), "{stdout}");
    assert_eq!(get("b-good::s::horse"), Some("ok"), "{stdout}");
    assert_eq!(get("b-good::s::gate"), Some("ok"), "{stdout}");
    assert!(
        stdout.contains("config.json: `vision_config.patch_size` is 0"),
        "the failure names the file and the value:\n{stdout}"
    );
    assert!(!stdout.contains("panicked"), "{stdout}");
}

/// SIGKILL in the middle of a run: cases.jsonl holds every case that had finished, each line
/// whole, and `vlmtest report` rebuilds report.json, report.md, junit.xml and report.html from it.
#[test]
fn a_run_killed_with_sigkill_keeps_its_cases_and_vlmtest_report_rebuilds_everything() {
    let server = Server::start(|seen| {
        let slow = seen.last_question().contains("slow");
        Reply::answer("Paris").after(if slow { 60_000 } else { 0 })
    });
    let p = Project::new();
    let mut yaml = String::from("cases:\n");
    for i in 0..6 {
        yaml.push_str(&format!(
            "  - {{ id: fast-{i}, question: fast {i}?, expect: {{ contains: Paris }}, snapshot: false }}\n"
        ));
    }
    yaml.push_str("  - { id: z-slow, question: slow?, expect: { contains: Paris } }\n");
    p.suite("s", &yaml)
        .models(&server, &[("m", "timeout_s = 120")]);
    let mut cmd = p.command(&["--test-threads", "1"], &[]);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    // A hang guard only: the slow request arrives after the six fast ones, however slow they are.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !server
        .chats()
        .iter()
        .any(|c| c.last_question().contains("slow"))
    {
        assert!(Instant::now() < deadline, "the slow case never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL: no handler runs
    child.wait().unwrap();

    let out = p.path("target/vlmtest");
    let jsonl = std::fs::read_to_string(out.join("cases.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line of cases.jsonl is whole JSON"))
        .collect();
    let mut finished: Vec<&str> = lines.iter().map(|c| c["case"].as_str().unwrap()).collect();
    finished.sort();
    assert_eq!(
        finished,
        ["fast-0", "fast-1", "fast-2", "fast-3", "fast-4", "fast-5"]
    );
    for f in ["report.md", "junit.xml", "report.html"] {
        let _ = std::fs::remove_file(out.join(f));
    }

    let rebuilt = Command::new(env!("CARGO_BIN_EXE_vlmtest"))
        .args(["report", "--format", "json"])
        .env("VLMTEST_OUT", &out)
        .output()
        .unwrap();
    assert_eq!(
        rebuilt.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&rebuilt.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&rebuilt.stdout).unwrap();
    let report = p.report();
    assert_eq!(printed["cases"], report["cases"]);
    assert_eq!(report["complete"], false, "a killed run is not complete");
    assert_eq!(report["cases"].as_array().unwrap().len(), 6);
    assert_eq!(report["models"][0]["name"], "m");
    assert_eq!(report["suites"][0]["pass_rate"], 1.0);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("6 cases: 6 passed"), "{md}");
    let junit = std::fs::read_to_string(out.join("junit.xml")).unwrap();
    assert!(junit.contains("name=\"fast-5\""), "{junit}");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("fast-3"), "{html}");
}
