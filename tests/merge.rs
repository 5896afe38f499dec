//! `vlmtest merge OUT IN...` over shards of one run (each shard a harness run over part of the
//! trials, as `cargo nextest run --partition` makes them), with gates deferred to the merge
//! (`VLMTEST_GATES=defer`).

mod common;

use std::path::Path;
use std::process::Command;

use common::{Project, Server, outcomes};

/// Six cases; q5 and q6 get a wrong answer from the server unless `all_pass`. The gate wants a
/// pass rate of 0.7: 4/6 fails it, while the first shard alone (3/3) would pass.
fn project(server: &Server) -> Project {
    let p = Project::new();
    let mut yaml = String::from("gate:\n  min_pass_rate: 0.7\ncases:\n");
    for i in 1..=6 {
        yaml.push_str(&format!(
            "  - {{ id: q{i}, question: capital {i}?, expect: {{ contains: Paris }}, snapshot: false }}\n"
        ));
    }
    p.suite("s", &yaml).models(server, &[("m", "")]);
    p
}

fn server(all_pass: bool) -> Server {
    if all_pass {
        Server::answering(&[("capital", "Paris")])
    } else {
        Server::answering(&[
            ("capital 5", "London"),
            ("capital 6", "London"),
            ("capital", "Paris"),
        ])
    }
}

/// Runs one shard: the trials not skipped, into its own VLMTEST_OUT, gates deferred.
fn shard(p: &Project, name: &str, skip: &[&str]) -> common::Run {
    let mut args: Vec<&str> = Vec::new();
    for s in skip {
        args.push("--skip");
        args.push(s);
    }
    let out = p.path(name);
    p.run(
        &args,
        &[
            ("VLMTEST_OUT", out.to_str().unwrap()),
            ("VLMTEST_GATES", "defer"),
        ],
    )
}

fn merge(out: &Path, inputs: &[&Path]) -> (Option<i32>, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_vlmtest"))
        .arg("merge")
        .arg(out)
        .args(inputs)
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn two_shards_merge_and_the_gate_is_judged_over_every_case() {
    let server = server(false);
    let p = project(&server);
    let a = shard(&p, "a", &["q4", "q5", "q6"]);
    let b = shard(&p, "b", &["q1", "q2", "q3", "gate"]);
    // Shard a passes: its three cases pass and its gate only records figures.
    assert_eq!(a.code, Some(0), "{}", a.all());
    assert_eq!(a.outcome("m::s::gate"), "ignored");
    assert!(
        a.stdout.contains("gate deferred to `vlmtest merge`"),
        "{}",
        a.stdout
    );
    assert_eq!(b.code, Some(101), "q5 and q6 fail: {}", b.all());
    assert_eq!(outcomes(&b.stdout).len(), 3);

    let out = p.path("merged");
    let (code, stdout, stderr) = merge(&out, &[&p.path("a"), &p.path("b")]);
    assert_eq!(
        code,
        Some(1),
        "the gate fails over all six cases: {stdout}{stderr}"
    );
    let r = json(&out.join("report.json"));
    assert_eq!(r["cases"].as_array().unwrap().len(), 6);
    let gate = &r["suites"][0];
    assert_eq!(gate["pass_rate"].as_f64().unwrap(), 4.0 / 6.0);
    assert_eq!(gate["gate"]["passed"], false);
    assert_eq!(gate["gate"]["deferred"], serde_json::Value::Null);
    assert!(r.get("missing_trials").is_none(), "{r}");
    assert_eq!(r["complete"], true);
    for f in [
        "report.md",
        "junit.xml",
        "report.html",
        "cases.jsonl",
        "run.json",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    // `vlmtest report` works on the merged folder too.
    let again = Command::new(env!("CARGO_BIN_EXE_vlmtest"))
        .args(["report", "--format", "json"])
        .env("VLMTEST_OUT", &out)
        .output()
        .unwrap();
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(again["suites"][0]["pass_rate"], gate["pass_rate"]);
}

#[test]
fn three_shards_that_pass_merge_into_a_passing_run() {
    let server = server(true);
    let p = project(&server);
    let shards = [
        ("a", vec!["q3", "q4", "q5", "q6"]),
        ("b", vec!["q1", "q2", "q5", "q6", "gate"]),
        ("c", vec!["q1", "q2", "q3", "q4", "gate"]),
    ];
    for (name, skip) in &shards {
        let r = shard(&p, name, skip);
        assert_eq!(r.code, Some(0), "{name}: {}", r.all());
    }
    let out = p.path("merged");
    let (code, stdout, stderr) = merge(&out, &[&p.path("a"), &p.path("b"), &p.path("c")]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let r = json(&out.join("report.json"));
    assert_eq!(r["cases"].as_array().unwrap().len(), 6);
    assert_eq!(r["suites"][0]["gate"]["passed"], true);
    assert_eq!(r["suites"][0]["summary"]["cases"], 6);
    // Each case was asked once, by its own shard.
    assert_eq!(server.chats().len(), 6);
}

#[test]
fn a_missing_shard_makes_the_merged_run_incomplete() {
    let server = server(true);
    let p = project(&server);
    shard(&p, "a", &["q4", "q5", "q6"]);
    let out = p.path("merged");
    let (code, _, stderr) = merge(&out, &[&p.path("a")]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("incomplete: 3 trials missing"), "{stderr}");
    let r = json(&out.join("report.json"));
    assert_eq!(
        r["missing_trials"],
        serde_json::json!(["m::s::q4", "m::s::q5", "m::s::q6"])
    );
    assert_eq!(r["complete"], false);
    for f in ["report.md", "junit.xml", "report.html"] {
        let text = std::fs::read_to_string(out.join(f)).unwrap();
        assert!(text.contains("incomplete: 3 trials missing"), "{f}: {text}");
    }
}

#[test]
fn a_case_two_shards_disagree_on_is_an_error() {
    let server = server(true);
    let p = project(&server);
    shard(&p, "a", &["q4", "q5", "q6"]);
    shard(&p, "b", &["q1", "q2", "q3", "gate"]);
    // Shard b claims to have run q1 too, with another answer.
    let a_lines = std::fs::read_to_string(p.path("a/cases.jsonl")).unwrap();
    let q1 = a_lines
        .lines()
        .find(|l| l.contains("\"m::s::q1\""))
        .unwrap();
    let forged = q1.replace("\"answer\":\"Paris\"", "\"answer\":\"Lyon\"");
    assert_ne!(forged, q1);
    let mut b_lines = std::fs::read_to_string(p.path("b/cases.jsonl")).unwrap();
    b_lines.push_str(&forged);
    b_lines.push('\n');
    std::fs::write(p.path("b/cases.jsonl"), b_lines).unwrap();

    let (code, _, stderr) = merge(&p.path("merged"), &[&p.path("a"), &p.path("b")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("m::s::q1"), "{stderr}");
    assert!(
        stderr.contains("\"Paris\"") && stderr.contains("\"Lyon\""),
        "{stderr}"
    );
    // The same record in two shards is not a conflict.
    let mut b_lines = std::fs::read_to_string(p.path("b/cases.jsonl")).unwrap();
    b_lines = b_lines.replace(&forged, q1);
    std::fs::write(p.path("b/cases.jsonl"), b_lines).unwrap();
    let (code, _, stderr) = merge(&p.path("merged"), &[&p.path("a"), &p.path("b")]);
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn bad_inputs_exit_with_status_2() {
    let p = Project::new();
    let (code, _, stderr) = merge(&p.path("merged"), &[&p.path("nothing-here")]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("nothing-here"), "{stderr}");
}

#[test]
fn regressions_are_judged_by_the_merge_over_every_shard() {
    // A baseline where every case passes.
    let good = server(true);
    let p = project(&good);
    let r = p.run(&[], &[]);
    assert_eq!(r.code, Some(0), "{}", r.all());
    let o = Command::new(env!("CARGO_BIN_EXE_vlmtest"))
        .arg("baseline")
        .current_dir(p.path(""))
        .env("CARGO_MANIFEST_DIR", p.path(""))
        .env_remove("VLMTEST_OUT")
        .env_remove("VLMTEST_BASELINES")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Now q5 and q6 fail, in different shards: neither shard alone has a significant change,
    // and the regression trial defers to the merge.
    let bad = server(false);
    p.models(&bad, &[("m", "")]);
    p.suite(
        "s",
        &std::fs::read_to_string(p.path("suites/s.yaml"))
            .unwrap()
            .replace("min_pass_rate: 0.7", "min_pass_rate: 0.0\n  max_drop: 0.2"),
    );
    let a = shard(&p, "a", &["q4", "q5"]);
    let b = shard(&p, "b", &["q1", "q2", "q3", "q6", "gate", "regression"]);
    assert_eq!(a.outcome("m::s::regression"), "ignored", "{}", a.all());
    assert!(a.stdout.contains("regression deferred"), "{}", a.stdout);
    let _ = b;
    let out = p.path("merged");
    let (code, stdout, stderr) = merge(&out, &[&p.path("a"), &p.path("b")]);
    // Over all six cases the mean score dropped by 2/6 > max_drop 0.2: a regression.
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let r = json(&out.join("report.json"));
    let c = &r["comparisons"][0];
    assert_eq!(c["verdict"], "regressed", "{c}");
    assert_eq!(c["n"], 6);
    assert_eq!(c["pass_to_fail"], 2);
    assert!(r.get("missing_trials").is_none(), "{r}");
}
