//! Record and replay (`VLMTEST_CACHE`): answers recorded against a live server, replayed with
//! the server gone; a changed key part named on a strict miss; concurrent writers.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Project, Reply, Server};
use serde_json::Value;

const SUITE: &str = "defaults:\n  snapshot: false\ncases:\n  - { id: capital, question: capital of France?, expect: { contains: Paris } }\n  - id: horse\n    image: images/horse.png\n    question: What animal?\n    expect: { contains: horse }\n  - id: chat\n    turns:\n      - { question: say one, expect: { contains: one } }\n      - { question: say two, expect: { contains: two } }\n";

/// A server answering from the question, counting chat requests.
fn server() -> (Server, Arc<AtomicUsize>) {
    let n = Arc::new(AtomicUsize::new(0));
    let c = n.clone();
    let s = Server::start(move |seen| {
        c.fetch_add(1, Ordering::SeqCst);
        let q = seen.last_question();
        Reply::answer(if q.contains("capital") {
            "Paris"
        } else if q.contains("animal") {
            "a horse"
        } else if q.contains("one") {
            "one"
        } else {
            "two"
        })
    });
    (s, n)
}

fn cache_env<'a>(p: &'a Project, mode: &'a str, dir: &'a str) -> Vec<(&'a str, String)> {
    vec![
        ("VLMTEST_CACHE", mode.to_string()),
        (
            "VLMTEST_CACHE_DIR",
            p.path(dir).to_str().unwrap().to_string(),
        ),
    ]
}

fn run(p: &Project, args: &[&str], env: &[(&str, String)]) -> common::Run {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    p.run(args, &env)
}

fn lines(p: &Project, file: &str) -> Vec<Value> {
    std::fs::read_to_string(p.path(file))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("whole JSON lines"))
        .collect()
}

#[test]
fn recorded_answers_replay_strictly_with_the_server_gone() {
    let p = Project::new();
    p.suite("s", SUITE);
    let (live, asked) = server();
    p.models(&live, &[("m", "")]);
    let r = run(&p, &[], &cache_env(&p, "write", "recordings"));
    assert_eq!(r.code, Some(0), "{}", r.all());
    assert_eq!(asked.load(Ordering::SeqCst), 4);
    let entries = lines(&p, "recordings/m.jsonl");
    assert_eq!(entries.len(), 4, "one entry per turn");
    let cases: Vec<&str> = entries
        .iter()
        .map(|e| e["case"].as_str().unwrap())
        .collect();
    let mut sorted = cases.clone();
    sorted.sort();
    assert_eq!(cases, sorted, "the recording is sorted by case");
    assert_eq!(cases[0], "m::s::capital#1");
    assert_eq!(entries[0]["answer"]["text"], "Paris");
    assert!(entries[0]["parts"]["images"].is_string());

    // The server is gone; the same models.toml points at it. A latency budget the recording
    // machine's answers would not meet is not checked on replayed answers.
    let port = live.port;
    drop(live);
    p.suite(
        "s",
        &SUITE.replace("defaults:\n", "defaults:\n  max_latency_ms: 1\n"),
    );
    let (other, other_asked) = server();
    let _ = other; // nothing may reach any server
    let r = run(&p, &[], &cache_env(&p, "strict", "recordings"));
    assert_eq!(r.code, Some(0), "{}", r.all());
    assert_eq!(other_asked.load(Ordering::SeqCst), 0);
    assert!(
        r.stderr
            .contains("m::s::capital: replayed from the recording (VLMTEST_CACHE=strict"),
        "{}",
        r.stderr
    );
    let report = p.report();
    for c in report["cases"].as_array().unwrap() {
        assert_eq!(c["replayed"], true, "{c}");
        assert_eq!(c["passed"], true, "{c}");
    }
    assert!(
        report["models"][0]["load_s"].is_null(),
        "no model was loaded: {}",
        report["models"][0]
    );
    let _ = port;
}

#[test]
fn a_strict_miss_names_the_part_of_the_key_that_changed() {
    let p = Project::new();
    p.suite("s", SUITE);
    let (live, _) = server();
    p.models(&live, &[("m", "max_new_tokens = 16")]);
    run(&p, &[], &cache_env(&p, "write", "recordings"));
    let strict = cache_env(&p, "strict", "recordings");

    // The prompt.
    p.suite(
        "s",
        &SUITE.replace("capital of France?", "capital of France please?"),
    );
    let r = run(&p, &[], &strict);
    assert_eq!(r.outcome("m::s::capital"), "FAILED", "{}", r.all());
    assert!(
        r.stdout.contains("made with another prompt"),
        "{}",
        r.stdout
    );
    assert_eq!(r.outcome("m::s::horse"), "ok", "{}", r.all());

    // The image (same path, other bytes).
    p.suite("s", SUITE);
    let horse = p.path("suites/images/horse.png");
    let original = std::fs::read(&horse).unwrap();
    let mut other = image::open(&horse).unwrap().to_rgb8();
    other.put_pixel(0, 0, image::Rgb([1, 2, 3]));
    other.save(&horse).unwrap();
    let r = run(&p, &[], &strict);
    assert_eq!(r.outcome("m::s::horse"), "FAILED", "{}", r.all());
    assert!(r.stdout.contains("made with another image"), "{}", r.stdout);
    std::fs::write(&horse, original).unwrap();

    // The generation parameters.
    p.models(&live, &[("m", "max_new_tokens = 17")]);
    let r = run(&p, &[], &strict);
    assert_eq!(r.outcome("m::s::capital"), "FAILED", "{}", r.all());
    assert!(
        r.stdout.contains("made with another parameters"),
        "{}",
        r.stdout
    );

    // The model: served under another name is another fingerprint.
    p.write(
        "models.toml",
        &format!(
            "[models.m]\nbackend = \"openai\"\nbase_url = \"{}\"\nmodel = \"other\"\nmax_new_tokens = 16\n",
            live.base_url()
        ),
    );
    let r = run(&p, &[], &strict);
    assert_eq!(r.outcome("m::s::capital"), "FAILED", "{}", r.all());
    assert!(r.stdout.contains("made with another model"), "{}", r.stdout);
    assert!(
        r.stdout.contains("model=m-served vs server:"),
        "{}",
        r.stdout
    );

    // And back: everything hits again.
    p.models(&live, &[("m", "max_new_tokens = 16")]);
    let r = run(&p, &[], &strict);
    assert_eq!(r.code, Some(0), "{}", r.all());
}

#[test]
fn readwrite_records_misses_and_read_asks_them_live() {
    let p = Project::new();
    p.suite("s", SUITE);
    let (live, asked) = server();
    p.models(&live, &[("m", "")]);
    // read with nothing recorded: live, nothing written.
    let r = run(&p, &[], &cache_env(&p, "read", "rec"));
    assert_eq!(r.code, Some(0), "{}", r.all());
    assert_eq!(asked.load(Ordering::SeqCst), 4);
    assert!(!p.path("rec/m.jsonl").exists());
    // readwrite: misses go live and are recorded; the next readwrite run asks nothing.
    run(&p, &[], &cache_env(&p, "readwrite", "rec"));
    assert_eq!(asked.load(Ordering::SeqCst), 8);
    assert_eq!(lines(&p, "rec/m.jsonl").len(), 4);
    run(&p, &[], &cache_env(&p, "readwrite", "rec"));
    assert_eq!(asked.load(Ordering::SeqCst), 8);
    assert_eq!(lines(&p, "rec/m.jsonl").len(), 4, "no duplicates");
}

#[test]
fn concurrent_writers_never_corrupt_a_recording() {
    let p = Project::new();
    let mut yaml = String::from("defaults:\n  snapshot: false\ncases:\n");
    for i in 0..40 {
        yaml.push_str(&format!(
            "  - {{ id: q{i:02}, question: capital of France {i}?, expect: {{ contains: Paris }} }}\n"
        ));
    }
    p.suite("s", &yaml);
    let (live, _) = server();
    p.models(&live, &[("m", "concurrency = 8")]);
    // Two processes at once (as cargo-nextest runs them), each with 8 threads, on half the
    // cases each, into one recording.
    let env = cache_env(&p, "write", "rec");
    let spawn = |skip: &str| {
        let mut cmd = p.command(
            &["--test-threads", "8", "--skip", skip, "--skip", "gate"],
            &env.iter()
                .map(|(k, v)| (*k, v.as_str()))
                .collect::<Vec<_>>(),
        );
        cmd.env("VLMTEST_OUT", p.path(&format!("out-{skip}")));
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        cmd.spawn().unwrap()
    };
    let (mut a, mut b) = (spawn("q0"), spawn("q1"));
    // q0x skipped by a, q1x by b: together they cover q00..q39 (q2x and q3x twice).
    assert!(a.wait().unwrap().success());
    assert!(b.wait().unwrap().success());
    let entries = lines(&p, "rec/m.jsonl");
    let mut cases: Vec<String> = entries
        .iter()
        .map(|e| e["case"].as_str().unwrap().to_string())
        .collect();
    cases.dedup();
    assert_eq!(cases.len(), 40, "every case recorded once: {cases:?}");
    // And it replays strictly.
    drop(live);
    let r = run(&p, &[], &cache_env(&p, "strict", "rec"));
    assert_eq!(r.code, Some(0), "{}", r.all());
}

#[test]
fn bad_cache_settings_are_refused() {
    let p = Project::new();
    p.suite("s", SUITE);
    let (live, _) = server();
    p.models(&live, &[("m", "")]);
    let r = p.run(&["--list"], &[("VLMTEST_CACHE", "replay")]);
    assert_eq!(r.code, Some(2));
    assert!(
        r.stderr.contains("VLMTEST_CACHE=`replay` is not understood (expected one of: off, read, write, readwrite, strict)"),
        "{}",
        r.stderr
    );
}
