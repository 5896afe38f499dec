//! The real harness, run as a process on sandbox projects against a scripted loopback server.

mod common;

use std::time::Duration;

use common::sync::Latch;
use common::{Project, Reply, Server, content_text};
use serde_json::Value;

const BASIC: &str = r#"
name: basic
defaults:
  prompt: "{question}\nAnswer with one word."
  max_latency_ms: 20000
gate:
  min_accuracy: 0.5
cases:
  - id: horse
    image: images/horse.png
    question: What animal is this?
    answers: [horse, horse, horse, horse, pony, horse, horse, horse, horse, horse]
    category: animals
  - id: legs
    image: images/horse.png
    question: How many legs does it have?
    expect: { numeric: 4 }
    category: counting
  - id: capital
    question: What is the capital of France?
    expect: { contains: Paris }
    category: text
"#;

fn basic_server() -> Server {
    Server::answering(&[
        ("What animal", "Horse."),
        ("How many legs", "three"),
        ("capital of France", "Paris"),
    ])
}

#[test]
fn cases_pass_and_fail_with_a_message_that_says_why() {
    let server = basic_server();
    let p = Project::new();
    p.suite("basic", BASIC).models(&server, &[("m1", "")]);
    let r = p.run(&["--test-threads", "1"], &[]);
    assert_eq!(r.outcome("m1::basic::horse"), "ok", "{}", r.all());
    assert_eq!(r.outcome("m1::basic::capital"), "ok");
    assert_eq!(r.outcome("m1::basic::legs"), "FAILED");
    assert_eq!(
        r.outcome("m1::basic::gate"),
        "ok",
        "2 of 3 pass, accuracy 0.667"
    );
    assert_eq!(r.code, Some(101), "a failing case fails the run");
    // The failure message: question, expected, answer, score, why.
    let out = r.all();
    for needle in [
        "question: How many legs does it have?",
        "expected: the number 4",
        "answer:   \"three\"",
        "score:    0.000",
        "why:      wrong answer (score 0.000 < pass_at 0.500)",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in\n{out}");
    }
}

#[test]
fn gate_fails_below_threshold_and_names_categories_and_failed_cases() {
    let server = Server::answering(&[("What animal", "a cow"), ("capital", "Paris")]);
    let p = Project::new();
    p.suite("basic", BASIC).models(&server, &[("m1", "")]);
    let r = p.run(&["--test-threads", "2"], &[]);
    assert_eq!(r.outcome("m1::basic::gate"), "FAILED", "{}", r.all());
    let out = r.all();
    for needle in [
        "gate failed for model `m1` on suite `basic`",
        "accuracy  0.333 < minimum 0.500",
        "animals",
        "counting",
        "horse: wrong answer",
        "legs: wrong answer",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in\n{out}");
    }
}

#[test]
fn per_model_gate_override_applies() {
    let server = Server::answering(&[("What animal", "a cow"), ("capital", "Paris")]);
    let p = Project::new();
    let suite = BASIC.replace(
        "  min_accuracy: 0.5\n",
        "  min_accuracy: 0.5\n  models: { lenient: { min_accuracy: 0.3 } }\n",
    );
    p.suite("basic", &suite)
        .models(&server, &[("lenient", ""), ("strict", "")]);
    let r = p.run(&["gate"], &[]);
    assert_eq!(r.outcome("lenient::basic::gate"), "ok", "{}", r.all());
    assert_eq!(r.outcome("strict::basic::gate"), "FAILED");
}

#[test]
fn a_gate_alone_evaluates_every_case_once() {
    let server = basic_server();
    let p = Project::new();
    p.suite("basic", BASIC).models(&server, &[("m1", "")]);
    let r = p.run(&["--exact", "m1::basic::gate"], &[]);
    assert_eq!(r.outcome("m1::basic::gate"), "ok", "{}", r.all());
    assert!(
        r.stdout.contains("1 passed"),
        "only the gate ran: {}",
        r.stdout
    );
    assert_eq!(server.chats().len(), 3, "each case asked exactly once");
    let report = p.report();
    assert_eq!(report["cases"].as_array().unwrap().len(), 3);
    let suites = report["suites"].as_array().unwrap();
    assert_eq!(suites.len(), 1);
    assert_eq!(suites[0]["gate"]["passed"], Value::Bool(true));
}

#[test]
fn cases_and_gates_together_ask_each_question_once() {
    let server = basic_server();
    let p = Project::new();
    p.suite("basic", BASIC)
        .models(&server, &[("a", ""), ("b", "")]);
    let r = p.run(&["--test-threads", "8"], &[]);
    assert_eq!(r.code, Some(101), "{}", r.all());
    assert_eq!(
        server.chats().len(),
        6,
        "3 cases × 2 models, gates reuse them"
    );
}

/// The server holds the answer 300 ms, so a 200 ms budget is exceeded however loaded the
/// machine is (the hold is a lower bound on the latency, not a margin); scaled by 1000, the same
/// case passes unless the round trip takes 200 s.
#[test]
fn latency_over_budget_fails_and_latency_scale_stretches_the_budget() {
    let server = Server::start(|_| Reply::answer("Paris").after(300));
    let p = Project::new();
    p.suite(
        "lat",
        r#"
cases:
  - { id: slow, question: "capital of France?", expect: { contains: Paris }, max_latency_ms: 200 }
"#,
    )
    .models(
        &server,
        &[("quick", ""), ("scaled", "latency_scale = 1000")],
    );
    let r = p.run(&["--test-threads", "1"], &[]);
    assert_eq!(r.outcome("quick::lat::slow"), "FAILED", "{}", r.all());
    assert!(
        r.stdout.contains("over the budget of 200 ms"),
        "{}",
        r.stdout
    );
    assert_eq!(
        r.outcome("scaled::lat::slow"),
        "ok",
        "budget 200 s: {}",
        r.all()
    );
    let report = p.report();
    for c in report["cases"].as_array().unwrap() {
        let ms = c["latency_ms"].as_f64().unwrap();
        assert!(ms >= 300.0, "the 300 ms hold is part of the latency: {c}");
        let budget = if c["model"] == "quick" {
            200.0
        } else {
            200_000.0
        };
        assert_eq!(c["max_latency_ms"], budget, "{c}");
    }
}

#[test]
fn multi_turn_sends_the_whole_conversation_with_images() {
    let server = Server::answering(&[("What animal", "A horse."), ("color", "Black.")]);
    let p = Project::new();
    p.suite(
        "ctx",
        r#"
cases:
  - id: remembers
    category: context
    turns:
      - { image: images/horse.png, question: What animal is this?, expect: { any_of: [horse, a horse] } }
      - { question: What color is it?, expect: { any_of: [black] } }
"#,
    )
    .models(&server, &[("m", "system_prompt = \"Be brief.\"")]);
    let r = p.run(&[], &[]);
    assert_eq!(r.outcome("m::ctx::remembers"), "ok", "{}", r.all());
    let chats = server.chats();
    assert_eq!(chats.len(), 2);
    let second = chats[1].body["messages"].as_array().unwrap().clone();
    let roles: Vec<&str> = second.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
    assert_eq!(second[0]["content"], "Be brief.");
    // The image stays in the first user message at every turn, as a data URL with its MIME type.
    let parts = second[1]["content"].as_array().unwrap();
    let url = parts[0]["image_url"]["url"].as_str().unwrap();
    assert!(
        url.starts_with("data:image/png;base64,iVBOR"),
        "{}",
        &url[..40]
    );
    assert_eq!(content_text(&second[1]["content"]), "What animal is this?");
    assert_eq!(second[2]["content"], "A horse.");
    assert_eq!(second[3]["content"], "What color is it?");
}

#[test]
fn request_carries_parameters_and_the_api_key_never_leaks() {
    let server = basic_server();
    let p = Project::new();
    p.suite("basic", BASIC).models(
        &server,
        &[(
            "m",
            "api_key_env = \"VLMTEST_TEST_KEY\"\nseed = 7\nmax_new_tokens = 9",
        )],
    );
    let secret = "sk-test-0123456789-secret";
    let r = p.run(&["--test-threads", "1"], &[("VLMTEST_TEST_KEY", secret)]);
    let chats = server.chats();
    assert!(!chats.is_empty(), "{}", r.all());
    for c in &chats {
        assert_eq!(
            c.header("authorization"),
            Some(&*format!("Bearer {secret}"))
        );
        assert_eq!(c.body["model"], "m-served");
        assert_eq!(
            c.body["temperature"], 0.0,
            "temperature 0 is sent explicitly"
        );
        assert_eq!(c.body["seed"], 7);
        assert_eq!(c.body["max_tokens"], 9);
    }
    assert!(!r.all().contains(secret));
    for f in ["report.json", "report.md", "junit.xml", "cases.jsonl"] {
        let text = std::fs::read_to_string(p.path(&format!("target/vlmtest/{f}"))).unwrap();
        assert!(!text.contains(secret), "key leaked into {f}");
    }
    // A missing key variable: every trial fails with one clear message.
    let r = p.run(&["--test-threads", "1"], &[]);
    assert_eq!(r.outcome("m::basic::horse"), "FAILED");
    assert!(
        r.stdout
            .contains("`VLMTEST_TEST_KEY` (api_key_env in models.toml) is not set"),
        "{}",
        r.stdout
    );
}

#[test]
fn text_only_cases_are_ignored_with_the_reason_for_models_that_need_an_image() {
    let server = basic_server();
    let p = Project::new();
    p.suite("basic", BASIC)
        .models(&server, &[("vision", "text_only = false")]);
    let r = p.run(&["--test-threads", "1"], &[]);
    let line = r
        .stdout
        .lines()
        .find(|l| l.contains("vision::basic::capital"))
        .unwrap();
    assert!(
        line.contains("ignored (model `vision` cannot answer without an image (text_only = false in models.toml)"),
        "{line}"
    );
    assert!(
        !server
            .chats()
            .iter()
            .any(|c| c.last_question().contains("capital"))
    );
    // `--list --ignored` lists it, as nextest asks.
    let r = p.run(&["--list", "--ignored"], &[]);
    assert!(
        r.stdout.contains("vision::basic::capital: test"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("vision::basic::horse"), "{}", r.stdout);
}

#[test]
fn unreachable_server_gives_ignored_trials_or_failures_when_required() {
    let p = Project::new();
    p.suite("basic", BASIC).write(
        "models.toml",
        "[models.gone]\nbackend = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"x\"\n",
    );
    let r = p.run(&["--test-threads", "1"], &[]);
    assert_eq!(r.code, Some(0), "{}", r.all());
    assert_eq!(r.outcome("gone::basic::horse"), "ignored");
    assert!(r.stdout.contains("is not reachable"), "{}", r.stdout);
    let r = p.run(&["--test-threads", "1"], &[("VLMTEST_REQUIRE_MODELS", "1")]);
    assert_eq!(r.outcome("gone::basic::horse"), "FAILED");
    assert_ne!(r.code, Some(0));
}

#[test]
fn server_errors_fail_the_case_quoting_the_reply() {
    let server = Server::start(|seen| {
        if seen.last_question().contains("animal") {
            Reply::raw(500, "<html><body>Internal explosion</body></html>")
        } else {
            Reply::raw(200, r#"{"choices": []}"#)
        }
    });
    let p = Project::new();
    p.suite("basic", BASIC).models(&server, &[("m", "")]);
    let r = p.run(&["--test-threads", "1"], &[]);
    assert_eq!(r.outcome("m::basic::horse"), "FAILED");
    assert!(
        r.stdout.contains("HTTP 500 Internal Server Error"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("Internal explosion"), "{}", r.stdout);
    assert!(r.stdout.contains("empty `choices` list"), "{}", r.stdout);
    let report = p.report();
    let horse = report["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["case"] == "horse")
        .unwrap();
    assert_eq!(horse["status"], "error");
    assert_eq!(horse["passed"], false);
}

/// The server holds the first request until a second one is in flight (a latch, not a
/// delay: on a loaded machine the two may arrive far apart), so the requests overlap exactly when
/// the backend lets two through; the 60 s limit only runs out if they never do. Each answer is
/// then held 100 ms, time for a third request to arrive if the limit were not honoured.
#[test]
fn concurrency_limit_is_honoured() {
    let two = std::sync::Arc::new(Latch::new(2));
    let held = two.clone();
    let server = Server::start(move |_| {
        held.arrive();
        held.wait(Duration::from_secs(60));
        Reply::answer("Paris").after(100)
    });
    let p = Project::new();
    let mut suite = String::from("cases:\n");
    for i in 0..8 {
        suite.push_str(&format!(
            "  - {{ id: c{i}, question: \"q{i}\", expect: {{ contains: Paris }} }}\n"
        ));
    }
    p.suite("many", &suite)
        .models(&server, &[("m", "concurrency = 2\ntimeout_s = 300")]);
    let r = p.run(&["--test-threads", "8"], &[]);
    assert_eq!(r.code, Some(0), "{}", r.all());
    assert!(two.is_open(), "two requests were never in flight at once");
    let max = server
        .max_in_flight
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(max <= 2, "at most 2 requests at once, saw {max}");
    assert_eq!(max, 2, "requests did overlap up to the limit");
    assert_eq!(server.chats().len(), 8);
}

#[test]
fn list_touches_no_network_and_names_sort_model_major() {
    let server = basic_server();
    let p = Project::new();
    p.suite("basic", BASIC)
        .suite(
            "another",
            "cases:\n  - { id: q, question: hi, expect: { contains: x } }\n",
        )
        .models(&server, &[("zeta", ""), ("alpha", "")]);
    let r = p.run(&["--list"], &[]);
    assert_eq!(r.code, Some(0), "{}", r.all());
    assert!(server.all_requests().is_empty(), "--list made a request");
    assert!(!p.path("target/vlmtest").exists(), "--list wrote outputs");
    let names: Vec<&str> = r
        .stdout
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .collect();
    assert_eq!(
        names,
        [
            "alpha::another::q",
            "alpha::another::gate",
            "alpha::basic::horse",
            "alpha::basic::legs",
            "alpha::basic::capital",
            "alpha::basic::gate",
            "zeta::another::q",
            "zeta::another::gate",
            "zeta::basic::horse",
            "zeta::basic::legs",
            "zeta::basic::capital",
            "zeta::basic::gate",
        ]
    );
}

#[test]
fn disabled_models_have_no_trials() {
    let server = basic_server();
    let p = Project::new();
    p.suite("basic", BASIC)
        .models(&server, &[("on", ""), ("off", "enabled = false")]);
    let r = p.run(&["--list"], &[]);
    assert!(r.stdout.contains("on::basic::horse"));
    assert!(!r.stdout.contains("off::"));
}

#[test]
fn reports_are_written_with_the_contract_keys() {
    let server = basic_server();
    let p = Project::new();
    p.suite("basic", BASIC)
        .models(&server, &[("m1", ""), ("m2", "text_only = false")]);
    let r = p.run(&["--test-threads", "2"], &[]);
    assert_ne!(r.code, Some(0));
    let report = p.report();
    assert_eq!(report["complete"], true);
    let cases = report["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 6);
    for c in cases {
        for key in [
            "model",
            "suite",
            "case",
            "prompt",
            "answer",
            "score",
            "passed",
            "latency_ms",
        ] {
            assert!(c.get(key).is_some(), "case lacks {key}: {c}");
        }
    }
    let horse = cases
        .iter()
        .find(|c| c["model"] == "m1" && c["case"] == "horse")
        .unwrap();
    assert_eq!(horse["answer"], "Horse.");
    assert!((horse["score"].as_f64().unwrap() - 1.0).abs() < 1e-9);
    assert_eq!(
        horse["prompt"],
        "What animal is this?\nAnswer with one word."
    );
    assert_eq!(horse["vqa_accuracy"], 1.0);
    let models = report["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    for m in models {
        assert_eq!(m["backend"], "openai");
        assert!(m["load_s"].as_f64().is_some(), "{m}");
    }
    let m2 = models.iter().find(|m| m["name"] == "m2").unwrap();
    assert_eq!(m2["text"]["unsupported"], true);
    let suites = report["suites"].as_array().unwrap();
    assert_eq!(suites.len(), 2);
    for s in suites {
        for key in ["model", "suite", "accuracy", "pass_rate", "gate"] {
            assert!(s.get(key).is_some(), "suite lacks {key}: {s}");
        }
        assert!(s["gate"]["passed"].is_boolean());
    }
    let machine = &report["machine"];
    assert!(machine["logical_cores"].as_u64().unwrap() >= 1);
    assert!(machine["memory_bytes"].as_u64().unwrap() > 0);
    // cases.jsonl holds one line per finished case.
    let jsonl = std::fs::read_to_string(p.path("target/vlmtest/cases.jsonl")).unwrap();
    assert_eq!(jsonl.lines().count(), 6);

    let md = std::fs::read_to_string(p.path("target/vlmtest/report.md")).unwrap();
    assert!(md.contains("| Model | Vision | Pure text | VQA acc | Simple acc | Avg inference (s) | Load (s) | Memory (GB) | Gate |"), "{md}");
    assert!(
        md.contains("| m1 | ✓ 1/2 | ✓ 1/1 | 100.0% | 100.0% |"),
        "{md}"
    );
    assert!(
        md.contains("| m2 | ✓ 1/2 | ✗ (text_only = false) |"),
        "{md}"
    );
    assert!(md.contains("By speed"), "{md}");
    assert!(md.contains("## Accuracy per category"), "{md}");
    assert!(md.contains("`basic::legs`"), "failures listed: {md}");

    let junit = std::fs::read_to_string(p.path("target/vlmtest/junit.xml")).unwrap();
    assert!(
        junit.contains(
            r#"<testsuite name="m1::basic" tests="4" failures="1" errors="0" skipped="0""#
        ),
        "{junit}"
    );
    assert!(junit.contains(r#"<testcase name="legs" classname="m1::basic""#));
    assert!(junit.contains(r#"<skipped message="model `m2` cannot answer without an image"#));

    let html = std::fs::read_to_string(p.path("target/vlmtest/report.html")).unwrap();
    assert!(
        html.contains("<img data-img=\"0\" alt=\"images/horse.png\">"),
        "{html}"
    );
    assert_eq!(
        html.matches("data:image/png;base64,").count(),
        1,
        "each image embedded once"
    );
    assert!(html.contains("How many legs does it have?"));

    // `vlmtest report` prints the summary of the last run.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vlmtest"))
        .args(["report", "--out"])
        .arg(p.path("target/vlmtest"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("| m1 | ✓ 1/2 |"));
}

#[test]
fn a_filtered_run_reports_what_ran() {
    let server = basic_server();
    let p = Project::new();
    p.suite("basic", BASIC).models(&server, &[("m1", "")]);
    let r = p.run(&["capital"], &[]);
    assert_eq!(r.code, Some(0), "{}", r.all());
    let report = p.report();
    let cases = report["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 1);
    assert_eq!(cases[0]["case"], "capital");
    assert_eq!(report["suites"][0]["accuracy"], 1.0);
}

/// The case ids of report.json, in its order.
fn reported_cases(p: &Project) -> Vec<String> {
    p.report()["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["case"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn processes_of_one_nextest_run_share_the_report() {
    let server = basic_server();
    let p = Project::new();
    p.suite("basic", BASIC).models(&server, &[("m1", "")]);
    // cargo-nextest runs each test in its own process, all with the same NEXTEST_RUN_ID.
    let run = [("NEXTEST_RUN_ID", "run-1")];
    for case in ["horse", "legs", "capital"] {
        let name = format!("m1::basic::{case}");
        let r = p.run(&["--exact", &name], &run);
        assert!(
            r.stdout.contains("1 filtered out") || r.stdout.contains("3 filtered out"),
            "{}",
            r.all()
        );
    }
    assert_eq!(reported_cases(&p), ["capital", "horse", "legs"]);
    // A new run starts afresh.
    p.run(
        &["--exact", "m1::basic::horse"],
        &[("NEXTEST_RUN_ID", "run-2")],
    );
    assert_eq!(p.report()["cases"].as_array().unwrap().len(), 1);
}

/// `VLMTEST_REPORT=defer`: the processes of a nextest run only append their records (no process
/// reads the others' or renders anything), and `vlmtest report` writes every report once after
/// the run, the same as the processes would have left.
#[test]
fn a_deferred_nextest_run_leaves_the_reports_to_vlmtest_report() {
    let server = basic_server();
    let p = Project::new();
    p.suite("basic", BASIC).models(&server, &[("m1", "")]);
    let out = p.path("target/vlmtest");
    let env = [("NEXTEST_RUN_ID", "run-d"), ("VLMTEST_REPORT", "defer")];
    for case in ["horse", "legs", "capital"] {
        let r = p.run(&["--exact", &format!("m1::basic::{case}")], &env);
        assert!(r.stdout.contains("test result"), "{}", r.all());
        for f in ["report.json", "report.md", "junit.xml", "report.html"] {
            assert!(!out.join(f).exists(), "{f} written by a deferred process");
        }
    }
    let records = std::fs::read_to_string(out.join("cases.jsonl")).unwrap();
    assert_eq!(records.lines().count(), 3, "{records}");

    let rendered = std::process::Command::new(env!("CARGO_BIN_EXE_vlmtest"))
        .args(["report", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    assert_eq!(reported_cases(&p), ["capital", "horse", "legs"]);
    for f in ["report.md", "junit.xml", "report.html"] {
        assert!(out.join(f).is_file(), "{f} not rendered");
    }

    // Outside nextest (one process) the run writes its reports at its end, deferred or not.
    std::fs::remove_file(out.join("report.json")).unwrap();
    let r = p.run(&[], &[("VLMTEST_REPORT", "defer")]);
    assert!(r.stdout.contains("test result"), "{}", r.all());
    assert_eq!(p.report()["cases"].as_array().unwrap().len(), 3);

    let bad = p.run(&[], &[("VLMTEST_REPORT", "later")]);
    assert!(!bad.stdout.contains("test result"), "{}", bad.all());
    assert!(
        bad.all()
            .contains("VLMTEST_REPORT=`later` is not understood (expected one of: each, defer)"),
        "{}",
        bad.all()
    );
}

/// `stream = true`: requests ask for a stream (with usage), the answer is put together from its
/// pieces, the time to first token is measured as the first piece arrives, and `max_ttft_ms` is
/// checked on it. The same server without `stream` reports no timings: the budget is not
/// checked there.
#[test]
fn a_streamed_answer_times_its_first_token_and_checks_the_budget() {
    const SSE: &str = concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Pa\"}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ris\"},\"finish_reason\":\"stop\"}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3}}\n\n",
        "data: [DONE]\n\n",
    );
    let server = Server::start(|seen| {
        if seen.body["stream"] == true {
            Reply::raw(200, SSE)
                .header("Content-Type", "text/event-stream")
                .after(400)
        } else {
            Reply::answer("Paris").after(400)
        }
    });
    let p = Project::new();
    p.suite(
        "s",
        "defaults:\n  snapshot: false\ncases:\n  - { id: tight, question: capital of France?, expect: { contains: Paris }, max_ttft_ms: 150 }\n  - { id: loose, question: capital of France??, expect: { contains: Paris }, max_ttft_ms: 60000 }\n",
    )
    .models(&server, &[("streamed", "stream = true"), ("plain", "")]);
    let r = p.run(&["--skip", "gate"], &[]);
    assert!(r.stdout.contains("test result"), "{}", r.all());
    let report = p.report();
    let case = |name: &str| {
        report["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {report}"))
            .clone()
    };
    let tight = case("streamed::s::tight");
    assert_eq!(tight["answer"], "Paris", "{tight}");
    assert_eq!(tight["status"], "failed", "{tight}");
    let ttft = tight["turns"][0]["time_to_first_token_ms"]
        .as_f64()
        .unwrap();
    assert!(ttft >= 400.0, "{tight}");
    assert!(
        tight["reasons"][0]
            .as_str()
            .unwrap()
            .contains("over the budget of 150 ms"),
        "{tight}"
    );
    assert_eq!(tight["turns"][0]["completion_tokens"], 3, "{tight}");
    assert_eq!(case("streamed::s::loose")["status"], "passed");
    for c in ["plain::s::tight", "plain::s::loose"] {
        let c = case(c);
        assert_eq!(c["status"], "passed", "{c}");
        assert!(c["turns"][0]["time_to_first_token_ms"].is_null(), "{c}");
    }
    for chat in server.chats() {
        let streamed = chat.body["model"] == "streamed-served";
        assert_eq!(chat.body["stream"] == true, streamed, "{}", chat.body);
        assert_eq!(
            chat.body["stream_options"]["include_usage"] == true,
            streamed,
            "{}",
            chat.body
        );
    }
}

#[test]
fn an_interrupted_run_keeps_what_finished() {
    let server = Server::start(|seen| {
        let slow = seen.last_question().contains("slow");
        Reply::answer("Paris").after(if slow { 30_000 } else { 0 })
    });
    let p = Project::new();
    p.suite(
        "s",
        "cases:\n  - { id: a-fast, question: fast?, expect: { contains: Paris } }\n  - { id: b-slow, question: slow?, expect: { contains: Paris } }\n",
    )
    .models(&server, &[("m", "timeout_s = 60")]);
    let mut cmd = p.command(&["--test-threads", "1"], &[]);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    // A hang guard only: the slow request arrives after the fast case, however slow that is.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !server
        .chats()
        .iter()
        .any(|c| c.last_question().contains("slow"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the slow case never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: sends SIGINT to the harness, as Ctrl-C does.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let report = p.report();
    assert_eq!(report["complete"], false);
    let cases: Vec<(&str, &str)> = report["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["case"].as_str().unwrap(), c["status"].as_str().unwrap()))
        .collect();
    // The case in flight is recorded as interrupted, not dropped.
    assert_eq!(cases, [("a-fast", "passed"), ("b-slow", "interrupted")]);
    let slow = &report["cases"][1];
    assert_eq!(slow["passed"], false);
    assert!(
        slow["reasons"][0].as_str().unwrap().contains("interrupted"),
        "{slow}"
    );
    let jsonl = std::fs::read_to_string(p.path("target/vlmtest/cases.jsonl")).unwrap();
    assert!(
        jsonl.lines().any(|l| l.contains("\"interrupted\"")),
        "{jsonl}"
    );
    let md = std::fs::read_to_string(p.path("target/vlmtest/report.md")).unwrap();
    assert!(md.contains("1 interrupted"), "{md}");
}

mod snapshots {
    use super::*;

    fn project(server: &Server) -> Project {
        let p = Project::new();
        p.suite(
            "s",
            "cases:\n  - { id: q, question: capital?, expect: { contains: a } }\n",
        )
        .models(server, &[("m", "")]);
        p
    }

    fn answers(text: &'static str) -> Server {
        Server::start(move |_| Reply::answer(text))
    }

    #[test]
    fn new_snapshots_are_accepted_then_changes_fail_until_reviewed() {
        let p = project(&answers("Paris"));
        let snap = p.path("snapshots/m__s__q.snap");
        let r = p.run(&[], &[]);
        assert_eq!(r.outcome("m::s::q"), "ok", "{}", r.all());
        let text = std::fs::read_to_string(&snap).unwrap();
        assert!(
            text.starts_with("---\nsource: \"suites/s.yaml\"\n"),
            "{text}"
        );
        assert!(text.ends_with("---\nParis\n"), "{text}");

        // Same answer: passes. A different one: fails, writes .snap.new, keeps the accepted one.
        assert_eq!(p.run(&[], &[]).outcome("m::s::q"), "ok");
        let changed = project(&answers("Lyon and a"));
        std::fs::create_dir_all(changed.path("snapshots")).unwrap();
        std::fs::copy(&snap, changed.path("snapshots/m__s__q.snap")).unwrap();
        let r = changed.run(&[], &[]);
        assert_eq!(r.outcome("m::s::q"), "FAILED");
        assert!(
            r.stdout
                .contains("snapshot changed: accepted \"Paris\", now \"Lyon and a\""),
            "{}",
            r.stdout
        );
        assert!(r.stdout.contains("cargo insta review"), "{}", r.stdout);
        let pending = changed.path("snapshots/m__s__q.snap.new");
        assert!(
            std::fs::read_to_string(pending)
                .unwrap()
                .ends_with("Lyon and a\n")
        );
        assert!(
            std::fs::read_to_string(changed.path("snapshots/m__s__q.snap"))
                .unwrap()
                .ends_with("Paris\n")
        );

        // INSTA_UPDATE=always accepts the new answer.
        let r = changed.run(&[], &[("INSTA_UPDATE", "always")]);
        assert_eq!(r.outcome("m::s::q"), "ok", "{}", r.all());
        assert!(
            std::fs::read_to_string(changed.path("snapshots/m__s__q.snap"))
                .unwrap()
                .ends_with("Lyon and a\n")
        );
    }

    #[test]
    fn under_ci_a_missing_snapshot_fails_and_nothing_is_written() {
        let p = project(&answers("Paris"));
        let r = p.run(&[], &[("CI", "true")]);
        assert_eq!(r.outcome("m::s::q"), "FAILED", "{}", r.all());
        assert!(r.stdout.contains("is missing"), "{}", r.stdout);
        assert!(!p.path("snapshots").exists());
        // VLMTEST_SNAPSHOTS moves them.
        let r = p.run(&[], &[("VLMTEST_SNAPSHOTS", "elsewhere")]);
        assert_eq!(r.outcome("m::s::q"), "ok");
        assert!(p.path("elsewhere/m__s__q.snap").exists());
    }

    #[test]
    fn nondeterministic_models_and_opted_out_cases_are_not_snapshotted() {
        let p = project(&answers("Paris"));
        p.models(&answers("Paris"), &[("m", "temperature = 0.7")]);
        let r = p.run(&[], &[("CI", "true")]);
        assert_eq!(r.outcome("m::s::q"), "ok", "{}", r.all());
        assert!(!p.path("snapshots").exists());
    }

    #[test]
    fn bad_insta_update_is_a_configuration_error() {
        let p = project(&answers("Paris"));
        let r = p.run(&["--list"], &[("INSTA_UPDATE", "sometimes")]);
        assert_eq!(r.code, Some(2));
        assert!(
            r.stderr
                .contains("expected one of: auto, always, new, unseen, no"),
            "{}",
            r.stderr
        );
    }
}
