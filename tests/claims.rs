//! README claims that had no test of their own, each through the real harness (`vlmtest run`)
//! on a sandbox project against a scripted loopback server, each able to fail: `snapshot: false`,
//! `INSTA_FORCE_PASS`, snapshots under `CI=true` with and without `INSTA_UPDATE`, `answers`
//! scored by `any_of` / `exact` / `contains_any`, a gate failing on `min_pass_rate` alone, the
//! libtest flags `--skip`, `--ignored`, `--include-ignored` and `--format json`,
//! `VLMTEST_SUITES` naming one file, and `VLMTEST_MAX_RESIDENT` above 1 (in-process models).

#[cfg(feature = "candle")]
#[path = "common/answers.rs"]
mod answers;
mod common;
#[cfg(feature = "candle")]
#[path = "common/golden.rs"]
mod golden;

use common::{Project, Server};
use serde_json::Value;

/// The report.json row of `case` (for the only model of the run).
fn row(report: &Value, case: &str) -> Value {
    report["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["case"] == case)
        .unwrap_or_else(|| panic!("no case {case} in {report}"))
        .clone()
}

/// The files of a folder, sorted (none when it does not exist).
fn files(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A snapshot file in insta's format holding `answer`.
fn snap(answer: &str) -> String {
    format!(
        "---\nsource: \"suites/s.yaml\"\ndescription: \"q\"\nexpression: answer\n---\n{answer}\n"
    )
}

#[test]
fn snapshot_false_writes_no_file() {
    let server = Server::answering(&[("capital", "Paris")]);
    let p = Project::new();
    p.suite(
        "s",
        r#"
cases:
  - { id: kept, question: "capital one?", expect: { contains: Paris } }
  - { id: opted-out, question: "capital two?", expect: { contains: Paris }, snapshot: false }
"#,
    )
    .suite(
        "t",
        r#"
defaults:
  snapshot: false
cases:
  - { id: quiet, question: "capital three?", expect: { contains: Paris } }
  - { id: back-on, question: "capital four?", expect: { contains: Paris }, snapshot: true }
"#,
    )
    .models(&server, &[("m", "")]);
    // Outside CI a new snapshot is written and accepted: only the cases that want one get one.
    let r = p.run(&[], &[]);
    assert_eq!(r.code, Some(0), "{}", r.all());
    assert_eq!(
        files(&p.path("snapshots")),
        ["m__s__kept.snap", "m__t__back-on.snap"]
    );
    let report = p.report();
    for (case, status) in [
        ("kept", "created"),
        ("opted-out", "skipped"),
        ("quiet", "skipped"),
        ("back-on", "created"),
    ] {
        assert_eq!(row(&report, case)["snapshot"]["status"], status, "{case}");
    }
    // Under CI a missing snapshot fails a case, but not one that opted out.
    std::fs::remove_dir_all(p.path("snapshots")).unwrap();
    let r = p.run(&[], &[("CI", "true")]);
    assert_eq!(r.outcome("m::s::kept"), "FAILED", "{}", r.all());
    assert_eq!(r.outcome("m::s::opted-out"), "ok", "{}", r.all());
    assert_eq!(r.outcome("m::t::quiet"), "ok");
    assert_eq!(r.outcome("m::t::back-on"), "FAILED");
    assert!(!p.path("snapshots").exists());
}

#[test]
fn insta_force_pass_passes_a_case_whose_only_problem_is_its_snapshot() {
    let server = Server::answering(&[("first", "Paris"), ("second", "Lyon"), ("third", "Lyon")]);
    let p = Project::new();
    p.suite(
        "s",
        r#"
cases:
  - { id: a-snapshot-only, question: "first?", expect: { contains: Paris } }
  - { id: b-wrong-and-snapshot, question: "second?", expect: { contains: Paris } }
  - { id: c-wrong-only, question: "third?", expect: { contains: Paris } }
"#,
    )
    .models(&server, &[("m", "")])
    // a's answer is right but its snapshot differs; b is wrong and its snapshot differs; c is
    // wrong and its snapshot matches.
    .write("snapshots/m__s__a-snapshot-only.snap", &snap("Rome"))
    .write("snapshots/m__s__b-wrong-and-snapshot.snap", &snap("Rome"))
    .write("snapshots/m__s__c-wrong-only.snap", &snap("Lyon"));
    let ci = ("CI", "true");

    let r = p.run(&[], &[ci]);
    assert_eq!(r.outcome("m::s::a-snapshot-only"), "FAILED", "{}", r.all());
    assert!(r.stdout.contains("snapshot changed"), "{}", r.stdout);

    let r = p.run(&[], &[ci, ("INSTA_FORCE_PASS", "1")]);
    assert_eq!(r.outcome("m::s::a-snapshot-only"), "ok", "{}", r.all());
    assert_eq!(r.outcome("m::s::b-wrong-and-snapshot"), "FAILED");
    assert_eq!(r.outcome("m::s::c-wrong-only"), "FAILED");
    assert_eq!(r.code, Some(101));
    assert!(r.stdout.contains("wrong answer"), "{}", r.stdout);
    // Forcing a pass accepts nothing: the snapshot is as it was, and nothing is pending.
    assert_eq!(
        std::fs::read_to_string(p.path("snapshots/m__s__a-snapshot-only.snap")).unwrap(),
        snap("Rome")
    );
    assert!(!p.path("snapshots/m__s__a-snapshot-only.snap.new").exists());

    let r = p.run(&["a-snapshot-only"], &[ci, ("INSTA_FORCE_PASS", "1")]);
    assert_eq!(r.code, Some(0), "{}", r.all());
    // The record agrees with the trial: passed, with the snapshot's status kept.
    let c = &p.report()["cases"][0];
    assert_eq!(c["passed"], true, "{c}");
    assert_eq!(c["snapshot"]["status"], "changed", "{c}");
    let junit = std::fs::read_to_string(p.path("target/vlmtest/junit.xml")).unwrap();
    assert!(!junit.contains("<failure"), "{junit}");
}

/// vlmtest follows insta: `CI=true` changes only the default (`auto` becomes `no`: nothing is
/// written, a missing or changed snapshot fails); an `INSTA_UPDATE` set explicitly is honoured
/// under CI too, so `INSTA_UPDATE=always` writes there, as `cargo insta test --accept` needs.
#[test]
fn under_ci_nothing_is_written_unless_insta_update_says_so() {
    let paris = Server::answering(&[("capital", "Paris")]);
    let p = Project::new();
    p.suite(
        "s",
        "cases:\n  - { id: q, question: capital?, expect: { contains: a } }\n",
    )
    .models(&paris, &[("m", "")]);
    let accepted = p.path("snapshots/m__s__q.snap");
    let pending = p.path("snapshots/m__s__q.snap.new");
    let ci = ("CI", "true");

    for update in [None, Some("auto"), Some("no")] {
        let mut env = vec![ci];
        env.extend(update.map(|u| ("INSTA_UPDATE", u)));
        let r = p.run(&[], &env);
        assert_eq!(r.outcome("m::s::q"), "FAILED", "{update:?}: {}", r.all());
        assert!(r.stdout.contains("is missing"), "{}", r.stdout);
        assert!(!p.path("snapshots").exists(), "{update:?} wrote under CI");
    }

    let r = p.run(&[], &[ci, ("INSTA_UPDATE", "always")]);
    assert_eq!(r.outcome("m::s::q"), "ok", "{}", r.all());
    assert!(
        std::fs::read_to_string(&accepted)
            .unwrap()
            .ends_with("---\nParis\n")
    );

    // A changed answer under CI: fails, writes nothing by default ...
    let lyon = Server::answering(&[("capital", "Lyon has an a")]);
    p.models(&lyon, &[("m", "")]);
    let r = p.run(&[], &[ci]);
    assert_eq!(r.outcome("m::s::q"), "FAILED", "{}", r.all());
    assert!(r.stdout.contains("snapshot changed"), "{}", r.stdout);
    assert!(!pending.exists());
    // ... a pending file with INSTA_UPDATE=new ...
    let r = p.run(&[], &[ci, ("INSTA_UPDATE", "new")]);
    assert_eq!(r.outcome("m::s::q"), "FAILED", "{}", r.all());
    assert!(
        std::fs::read_to_string(&pending)
            .unwrap()
            .ends_with("Lyon has an a\n")
    );
    assert!(
        std::fs::read_to_string(&accepted)
            .unwrap()
            .ends_with("Paris\n")
    );
    // ... and the new answer accepted with INSTA_UPDATE=always.
    let r = p.run(&[], &[ci, ("INSTA_UPDATE", "always")]);
    assert_eq!(r.outcome("m::s::q"), "ok", "{}", r.all());
    assert!(
        std::fs::read_to_string(&accepted)
            .unwrap()
            .ends_with("Lyon has an a\n")
    );
    assert!(!pending.exists());
}

/// `answers` scored by `score: exact | any_of | contains_any` (per case, or from `defaults`),
/// each as the README's table says; every pair is a pass and a failure that another of the
/// three rules would have scored the other way.
#[test]
fn answers_are_scored_by_exact_any_of_and_contains_any() {
    let server = Server::answering(&[
        ("alpha", "Paris"),
        ("bravo", "paris"),
        ("charlie", "Paris."),
        ("delta", "It is Paris"),
        ("echo", "It is PARIS, I think"),
        ("foxtrot", "Lyon"),
    ]);
    let p = Project::new();
    p.suite(
        "s",
        r#"
defaults:
  score: any_of
cases:
  - { id: exact-equal, question: alpha?, answers: [Paris, Lyon], score: exact }
  - { id: exact-other-case, question: bravo?, answers: [Paris], score: exact }
  - { id: any-of-normalised, question: charlie?, answers: [lyon, paris] }
  - { id: any-of-contained, question: delta?, answers: [paris] }
  - { id: contains-any-one, question: echo?, answers: [lyon, paris], score: contains_any }
  - { id: contains-any-none, question: foxtrot?, answers: [paris, rome], score: contains_any }
"#,
    )
    .models(&server, &[("m", "")]);
    let r = p.run(&[], &[]);
    let report = p.report();
    for (case, score) in [
        ("exact-equal", 1.0),
        ("exact-other-case", 0.0),
        ("any-of-normalised", 1.0),
        ("any-of-contained", 0.0),
        ("contains-any-one", 1.0),
        ("contains-any-none", 0.0),
    ] {
        let want = if score == 1.0 { "ok" } else { "FAILED" };
        assert_eq!(r.outcome(&format!("m::s::{case}")), want, "{}", r.all());
        let c = row(&report, case);
        assert_eq!(c["score"], score, "{c}");
        assert_eq!(c["passed"], score == 1.0, "{c}");
        let rule = match case.split('-').next().unwrap() {
            "exact" => "exactly \"",
            "any" => "any of [",
            _ => "contains any of [",
        };
        let expected = c["turns"][0]["expected"].as_str().unwrap();
        assert!(expected.contains(rule), "{case}: {expected}");
    }
    assert_eq!(report["suites"][0]["accuracy"], 0.5);
}

/// Accuracy above its minimum, pass rate below its own: the gate fails, and says which.
#[test]
fn a_gate_fails_on_min_pass_rate_alone() {
    let server = Server::answering(&[("animal", "horse")]);
    let p = Project::new();
    // Two humans of ten said horse: VQA accuracy 0.6 ((2 × 1/3 + 8 × 2/3) / 10), under pass_at.
    p.suite(
        "s",
        r#"
defaults:
  pass_at: 0.9
gate:
  min_accuracy: 0.5
  min_pass_rate: 0.5
cases:
  - { id: one, question: Which animal?, answers: [horse, horse, pony, pony, pony, pony, pony, pony, pony, pony] }
  - { id: two, question: What animal is it?, answers: [horse, horse, pony, pony, pony, pony, pony, pony, pony, pony] }
"#,
    )
    .models(&server, &[("m", "")]);
    let r = p.run(&["--test-threads", "1"], &[]);
    assert_eq!(r.outcome("m::s::gate"), "FAILED", "{}", r.all());
    for needle in [
        "accuracy  0.600 >= minimum 0.500",
        "pass rate 0.000 (0/2) < minimum 0.500",
    ] {
        assert!(
            r.stdout.contains(needle),
            "missing {needle:?} in\n{}",
            r.stdout
        );
    }
    let suite = &p.report()["suites"][0];
    assert!(
        (suite["accuracy"].as_f64().unwrap() - 0.6).abs() < 1e-9,
        "{suite}"
    );
    assert_eq!(suite["pass_rate"], 0.0);
    assert_eq!(suite["gate"]["passed"], false, "{suite}");
}

const LIBTEST: &str = r#"
cases:
  - { id: horse, image: images/horse.png, question: What animal is this?, expect: { any_of: [horse] } }
  - { id: legs, image: images/horse.png, question: How many legs?, expect: { numeric: 4 } }
  - { id: capital, question: What is the capital of France?, expect: { contains: Paris } }
"#;

fn libtest_server() -> Server {
    Server::answering(&[
        ("What animal", "Horse."),
        ("How many legs", "three"),
        ("capital", "Paris"),
    ])
}

#[test]
fn skip_leaves_out_the_trials_it_names() {
    let server = libtest_server();
    let p = Project::new();
    p.suite("s", LIBTEST)
        .models(&server, &[("a", ""), ("b", "")]);
    // A whole model, and one case plus the gates of the other (a gate asks every case).
    let r = p.run(&["--skip", "b::", "--skip", "legs", "--skip", "gate"], &[]);
    assert_eq!(r.code, Some(0), "{}", r.all());
    let mut ran: Vec<String> = common::outcomes(&r.stdout)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    ran.sort();
    assert_eq!(ran, ["a::s::capital", "a::s::horse"], "{}", r.all());
    assert!(r.stdout.contains("6 filtered out"), "{}", r.stdout);
    let chats = server.chats();
    assert_eq!(chats.len(), 2, "{chats:?}");
    assert!(chats.iter().all(|c| c.body["model"] == "a-served"));
    assert!(!chats.iter().any(|c| c.last_question().contains("legs")));
}

/// `--ignored` runs only the trials the plan knows are ignored, `--include-ignored` runs them
/// with the others; either way a case the model cannot answer stays ignored with its reason,
/// never a silent pass, and its question is never sent.
#[test]
fn ignored_and_include_ignored_never_turn_an_unanswerable_case_into_a_pass() {
    let server = libtest_server();
    let p = Project::new();
    p.suite("s", LIBTEST)
        .models(&server, &[("m", "text_only = false")]);
    let reason = "model `m` cannot answer without an image";

    let r = p.run(&["--include-ignored", "--test-threads", "1"], &[]);
    assert_eq!(r.outcome("m::s::horse"), "ok", "{}", r.all());
    assert_eq!(r.outcome("m::s::legs"), "FAILED");
    assert_eq!(r.outcome("m::s::capital"), "ignored");
    let line = r
        .stdout
        .lines()
        .find(|l| l.contains("m::s::capital"))
        .unwrap();
    assert!(line.contains(reason), "{line}");
    assert!(r.stdout.contains("1 ignored"), "{}", r.stdout);

    let r = p.run(&["--ignored"], &[]);
    assert_eq!(r.code, Some(0), "{}", r.all());
    assert_eq!(
        common::outcomes(&r.stdout),
        [("m::s::capital".to_string(), "ignored".to_string())],
        "{}",
        r.all()
    );
    assert!(r.stdout.contains(reason), "{}", r.stdout);

    assert!(
        !server
            .chats()
            .iter()
            .any(|c| c.last_question().contains("capital")),
        "the text-only question was sent"
    );
}

/// `--format json`: libtest's JSON events, one object per line, and nothing else on stdout
/// (a stray print from the library would break every tool reading them).
#[test]
fn format_json_prints_only_json_events() {
    let server = libtest_server();
    let p = Project::new();
    p.suite("s", LIBTEST)
        .models(&server, &[("m", "text_only = false")]);
    let r = p.run(&["--format", "json", "--test-threads", "2"], &[]);
    assert_eq!(r.code, Some(101), "{}", r.all());
    let events: Vec<Value> = r
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}\n{}", r.stdout))
        })
        .collect();
    let result = |name: &str| {
        events
            .iter()
            .find(|e| e["type"] == "test" && e["name"] == name && e["event"] != "started")
            .unwrap_or_else(|| panic!("no result for {name} in\n{}", r.stdout))
            .clone()
    };
    assert_eq!(result("m::s::horse")["event"], "ok");
    assert_eq!(result("m::s::capital")["event"], "ignored");
    let legs = result("m::s::legs");
    assert_eq!(legs["event"], "failed");
    let msg = legs["stdout"].as_str().unwrap();
    assert!(
        msg.contains("answer:   \\\"three\\\"") || msg.contains("answer:   \"three\""),
        "{msg}"
    );
    assert!(msg.contains("why:      wrong answer"), "{msg}");
    assert_eq!(result("m::s::gate")["event"], "ok", "no gate thresholds");
    let end = events.last().unwrap();
    assert_eq!(end["type"], "suite");
    assert_eq!(end["event"], "failed");
    assert_eq!(
        [&end["passed"], &end["failed"], &end["ignored"]],
        [2, 1, 1],
        "{end}"
    );
}

#[test]
fn vlmtest_suites_can_name_one_file() {
    let server = libtest_server();
    let p = Project::new();
    p.suite("a", LIBTEST)
        .suite("b", LIBTEST)
        .write(
            "suites/nested/c.yaml",
            "cases:\n  - { id: q, question: capital?, expect: { contains: Paris } }\n",
        )
        .models(&server, &[("m", "")]);
    let listed = |env: &[(&str, &str)]| -> Vec<String> {
        let r = p.run(&["--list"], env);
        assert_eq!(r.code, Some(0), "{}", r.all());
        r.stdout
            .lines()
            .filter_map(|l| l.strip_suffix(": test"))
            .map(str::to_string)
            .collect()
    };
    // The default, a directory, is searched recursively.
    let all = listed(&[]);
    assert_eq!(all.len(), 10, "{all:?}");
    assert!(all.contains(&"m::c::q".to_string()), "{all:?}");

    let file = p.path("suites/b.yaml");
    let one = listed(&[("VLMTEST_SUITES", file.to_str().unwrap())]);
    assert_eq!(
        one,
        ["m::b::horse", "m::b::legs", "m::b::capital", "m::b::gate"]
    );
    // Relative to the current directory, as every path variable.
    let r = p.run(
        &["--test-threads", "1"],
        &[("VLMTEST_SUITES", "suites/b.yaml")],
    );
    let ran: Vec<String> = common::outcomes(&r.stdout)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(ran, one, "{}", r.all());
    assert_eq!(server.chats().len(), 3);
    assert!(
        p.report()["cases"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["suite"] == "b")
    );
}

/// With `VLMTEST_MAX_RESIDENT=2`, two in-process models are loaded at once. Each model's
/// `preprocessor_config.json` is a named pipe, so each load stops there until the test writes
/// the file: opening a pipe for writing returns only once the reader has opened it, so when both
/// opens return, both loads are under way, each holding a resident-model permit. The test then
/// lets them finish. With one permit the second load could never start (the first waits for the
/// test): the 120 s limit is a hang guard that fails the test then, not a margin.
#[cfg(all(feature = "candle", unix))]
#[test]
fn two_in_process_models_are_resident_at_once_with_max_resident_2() {
    use std::io::Write;
    use std::time::Duration;

    let p = Project::new();
    let cases: Vec<answers::Case> = answers::load("smolvlm/golden_smoke.json")
        .cases
        .into_iter()
        .filter(|c| ["one-image", "text-only"].contains(&c.id.as_str()))
        .collect();
    answers::copy_images(&p.path("suites"));
    p.suite("s", &answers::suite("s", &cases));
    let tiny = golden::fixtures().join("smolvlm");
    let pre = std::fs::read(tiny.join("preprocessor_config.json")).unwrap();
    let mut toml = String::new();
    for name in ["a", "b"] {
        let dir = p.path(name);
        golden::copy_dir(
            &tiny,
            &dir,
            &[
                "preprocessor_config.json",
                "golden.json",
                "golden_smoke.json",
            ],
        );
        let fifo = std::ffi::CString::new(
            dir.join("preprocessor_config.json")
                .to_str()
                .unwrap()
                .as_bytes(),
        )
        .unwrap();
        // SAFETY: a valid C string and mode.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        toml.push_str(&format!(
            "[models.{name}]\nbackend = \"candle\"\narch = \"smolvlm\"\npath = \"{name}\"\n\n"
        ));
    }
    p.write("models.toml", &toml);

    let mut cmd = p.command(
        &["--test-threads", "6"],
        &[
            ("VLMTEST_MAX_RESIDENT", "2"),
            ("RUST_LOG", "vlmtest=info"),
            ("NO_COLOR", "1"),
        ],
    );
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stdout = common::sync::lines(child.stdout.take().unwrap());
    let stderr = common::sync::lines(child.stderr.take().unwrap());

    let (tx, rx) = std::sync::mpsc::channel();
    for name in ["a", "b"] {
        let path = p.path(name).join("preprocessor_config.json");
        let tx = tx.clone();
        std::thread::spawn(move || {
            let f = std::fs::OpenOptions::new().write(true).open(&path);
            let _ = tx.send((name, f));
        });
    }
    let mut writers = Vec::new();
    for _ in 0..2 {
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok((name, f)) => writers.push((name, f.unwrap())),
            Err(_) => {
                let _ = child.kill();
                let log: Vec<String> = stderr.try_iter().collect();
                panic!(
                    "the two models were never loading at once (loading: {:?}):\n{}",
                    writers.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
                    log.join("\n")
                );
            }
        }
    }
    for (_, mut f) in writers {
        f.write_all(&pre).unwrap();
    } // each pipe's writer is closed here: the loaders read to its end and go on

    let status = common::sync::wait_or_kill(child, Duration::from_secs(300));
    let out: Vec<String> = stdout.iter().collect();
    let log: Vec<String> = stderr.iter().collect();
    let all = format!("{}\n{}", out.join("\n"), log.join("\n"));
    assert_eq!(status.code(), Some(0), "{all}");
    let events: Vec<String> = log
        .iter()
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
    assert_eq!(events.len(), 4, "{all}");
    let mut loads = events[..2].to_vec();
    loads.sort();
    assert_eq!(
        loads,
        ["+a", "+b"],
        "both loaded before either dropped: {events:?}"
    );
    let mut drops = events[2..].to_vec();
    drops.sort();
    assert_eq!(drops, ["-a", "-b"], "{events:?}");
    // Two models side by side answer as transformers does.
    let report = p.report();
    for m in ["a", "b"] {
        answers::check_report(&report, m, "s", &cases);
    }
}
