//! Property tests over everything that reads user input: the suite parser, the models.toml
//! parser, every scoring rule and `vlmtest score`. Arbitrary text and arbitrary valid-shaped
//! YAML/TOML never panic, and always give either a result or errors that name the file (and the
//! line, wherever the text has lines to point at); scores stay in [0, 1].
//!
//! `cargo test --test fuzz` runs a few hundred inputs per target; the ignored tests run 10,000
//! each (`cargo test --release --test fuzz -- --ignored`; `VLMTEST_FUZZ_CASES` sets the number).

use std::path::Path;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value;
use vlmtest::config::image::ImageCache;
use vlmtest::config::models::load_models;
use vlmtest::config::suite::load_suite;
use vlmtest::score::Rule;

fn cases(default: u32) -> u32 {
    std::env::var("VLMTEST_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn runner(n: u32) -> TestRunner {
    TestRunner::new(Config {
        cases: n,
        failure_persistence: None,
        ..Config::default()
    })
}

/// Text with the characters that break parsers: quotes, colons, brackets, tabs, control and
/// non-ASCII characters, newlines.
fn nasty_text() -> BoxedStrategy<String> {
    prop_oneof![
        ".{0,40}",
        "[a-z:#\\-\\[\\]{}'\" \t\n,|>&*!%@`?=]{0,60}",
        proptest::collection::vec(any::<char>(), 0..30).prop_map(|v| v.into_iter().collect()),
    ]
    .boxed()
}

/// A YAML/JSON-shaped value.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        nasty_text().prop_map(Value::String),
        Just(Value::String("images/horse.png".into())),
        Just(Value::String("{question}".into())),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Keys a suite or models.toml knows, and some it does not.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "name",
            "description",
            "defaults",
            "gate",
            "cases",
            "id",
            "image",
            "images",
            "question",
            "answers",
            "expect",
            "category",
            "prompt",
            "score",
            "pass_at",
            "max_new_tokens",
            "max_latency_ms",
            "snapshot",
            "repeat",
            "min_pass_rate",
            "max_ttft_ms",
            "min_tokens_per_s",
            "turns",
            "contains",
            "contains_any",
            "any_of",
            "exact",
            "regex",
            "numeric",
            "tolerance",
            "yes_no",
            "choice",
            "options",
            "all",
            "any",
            "not_contains",
            "min_accuracy",
            "max_drop",
            "alpha",
            "models",
            "backend",
            "arch",
            "repo",
            "revision",
            "path",
            "dtype",
            "device",
            "base_url",
            "model",
            "hf",
            "mmproj",
            "args",
            "port",
            "temperature",
            "seed",
            "timeout_s",
            "concurrency",
            "enabled",
            "text_only",
            "latency_scale",
            "tokenizer",
            "tokenizer_repo",
            "stream",
        ])
        .prop_map(str::to_string),
        "[a-z_]{1,8}",
    ]
}

/// What a key takes.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Text,
    Unit,
    Int,
    Float,
    Bool,
    Texts,
    Image,
    Images,
    Score,
}

/// A value of `kind` (edge values included), and now and then anything.
fn typed(kind: Kind) -> BoxedStrategy<Value> {
    let right = match kind {
        Kind::Text => nasty_text().prop_map(Value::String).boxed(),
        Kind::Unit => prop_oneof![(-0.5f64..1.5), Just(0.0), Just(1.0)]
            .prop_map(Value::from)
            .boxed(),
        Kind::Int => prop_oneof![0i64..5, 0i64..100_000, Just(-1i64)]
            .prop_map(Value::from)
            .boxed(),
        Kind::Float => prop_oneof![(-1.0f64..1e5), Just(0.0)]
            .prop_map(Value::from)
            .boxed(),
        Kind::Bool => any::<bool>().prop_map(Value::Bool).boxed(),
        Kind::Texts => proptest::collection::vec(nasty_text().prop_map(Value::String), 0..11)
            .prop_map(Value::Array)
            .boxed(),
        Kind::Image => prop_oneof![
            3 => Just(Value::String("images/horse.png".into())),
            1 => nasty_text().prop_map(Value::String),
        ]
        .boxed(),
        Kind::Images => proptest::collection::vec(typed(Kind::Image), 0..3)
            .prop_map(Value::Array)
            .boxed(),
        Kind::Score => prop::sample::select(vec![
            "vqa",
            "vqa_pre2021",
            "exact",
            "any_of",
            "contains_any",
            "bogus",
        ])
        .prop_map(|s| Value::String(s.into()))
        .boxed(),
    };
    prop_oneof![9 => right, 1 => value()].boxed()
}

/// A map with some of `keys` (each with a value of its kind) and, now and then, a key from
/// anywhere.
fn map_of(keys: &'static [(&'static str, Kind)], max: usize) -> BoxedStrategy<Value> {
    let entries: Vec<BoxedStrategy<Option<(String, Value)>>> = keys
        .iter()
        .map(|&(k, kind)| {
            proptest::option::weighted((max as f64 / keys.len() as f64).min(0.95), typed(kind))
                .prop_map(move |v| v.map(|v| (k.to_string(), v)))
                .boxed()
        })
        .collect();
    (entries, proptest::option::weighted(0.05, (key(), value())))
        .prop_map(|(entries, extra)| {
            let mut o: serde_json::Map<String, Value> = entries.into_iter().flatten().collect();
            if let Some((k, v)) = extra {
                o.insert(k, v);
            }
            Value::Object(o)
        })
        .boxed()
}

/// An `expect:` rule: mostly one known rule key with a value of its kind, sometimes a
/// combination.
fn rule_doc() -> BoxedStrategy<Value> {
    let one = prop_oneof![
        map_of(&[("exact", Kind::Text)], 1),
        map_of(&[("any_of", Kind::Texts)], 1),
        map_of(&[("contains", Kind::Text)], 1),
        map_of(&[("contains_all", Kind::Texts)], 1),
        map_of(&[("contains_any", Kind::Texts)], 1),
        map_of(&[("not_contains", Kind::Texts)], 1),
        map_of(&[("regex", Kind::Text)], 1),
        map_of(&[("numeric", Kind::Float), ("tolerance", Kind::Float)], 2),
        map_of(&[("numeric", Kind::Text)], 1),
        map_of(&[("yes_no", Kind::Text)], 1),
        map_of(&[("choice", Kind::Text), ("options", Kind::Texts)], 2),
        map_of(&[("exact", Kind::Text), ("contains", Kind::Text)], 2),
    ];
    one.prop_recursive(2, 6, 3, |inner| {
        prop_oneof![
            3 => inner.clone(),
            1 => proptest::collection::vec(inner.clone(), 0..3)
                .prop_map(|v| serde_json::json!({ "all": v })),
            1 => proptest::collection::vec(inner, 0..3).prop_map(|v| serde_json::json!({ "any": v })),
        ]
    })
    .boxed()
}

const SHARED: &[(&str, Kind)] = &[
    ("prompt", Kind::Text),
    ("pass_at", Kind::Unit),
    ("max_new_tokens", Kind::Int),
    ("max_latency_ms", Kind::Int),
    ("snapshot", Kind::Bool),
    ("category", Kind::Text),
    ("repeat", Kind::Int),
    ("min_pass_rate", Kind::Unit),
    ("max_ttft_ms", Kind::Float),
    ("min_tokens_per_s", Kind::Float),
    ("score", Kind::Score),
];

fn case_doc() -> BoxedStrategy<Value> {
    let turn = (
        map_of(
            &[
                ("image", Kind::Image),
                ("images", Kind::Images),
                ("answers", Kind::Texts),
            ],
            1,
        ),
        typed(Kind::Text),
        proptest::option::weighted(0.8, rule_doc()),
    )
        .prop_map(|(mut t, q, r)| {
            t["question"] = q;
            if let Some(r) = r {
                t["expect"] = r;
            }
            t
        });
    (
        prop_oneof![4 => "[a-z0-9_-]{1,8}", 1 => nasty_text()],
        map_of(SHARED, 3),
        prop_oneof![
            // a single question, with `expect` or `answers`
            (
                typed(Kind::Text),
                proptest::option::weighted(0.6, typed(Kind::Image)),
                prop_oneof![
                    rule_doc().prop_map(|r| ("expect", r)),
                    typed(Kind::Texts).prop_map(|a| ("answers", a)),
                ],
            )
                .prop_map(|(q, img, (k, v))| {
                    let mut o = serde_json::Map::new();
                    o.insert("question".into(), q);
                    if let Some(i) = img {
                        o.insert("image".into(), i);
                    }
                    o.insert(k.into(), v);
                    Value::Object(o)
                })
                .boxed(),
            // a conversation
            proptest::collection::vec(turn, 0..3)
                .prop_map(|t| serde_json::json!({ "turns": t }))
                .boxed(),
        ],
    )
        .prop_map(|(id, mut c, body)| {
            c["id"] = Value::String(id);
            if let (Value::Object(c), Value::Object(b)) = (&mut c, body) {
                c.extend(b);
            }
            c
        })
        .boxed()
}

/// A suite-shaped document: the right shape, mostly the right keys with values of their kind.
fn suite_doc() -> impl Strategy<Value = Value> {
    (
        proptest::option::of(map_of(SHARED, 4)),
        proptest::option::of(map_of(
            &[
                ("min_accuracy", Kind::Unit),
                ("min_pass_rate", Kind::Unit),
                ("max_drop", Kind::Unit),
                ("alpha", Kind::Unit),
            ],
            2,
        )),
        proptest::collection::vec(case_doc(), 0..5),
        proptest::option::weighted(0.3, nasty_text()),
    )
        .prop_map(|(defaults, gate, cases, name)| {
            let mut doc = serde_json::Map::new();
            if let Some(n) = name {
                doc.insert("name".into(), Value::String(n));
            }
            if let Some(d) = defaults {
                doc.insert("defaults".into(), d);
            }
            if let Some(g) = gate {
                doc.insert("gate".into(), g);
            }
            doc.insert("cases".into(), Value::Array(cases));
            Value::Object(doc)
        })
}

/// Replaces the file's content with a new file: rewriting it in place (truncate, write) makes
/// ext4 flush it to disk on close (its `auto_da_alloc` heuristic), which took a third of the
/// suite target's time.
fn rewrite(file: &Path, text: &str) {
    let _ = std::fs::remove_file(file);
    std::fs::write(file, text).unwrap();
}

/// Loads `text` as suite `suites/f.yaml` of a project with an image; checks the outcome.
fn check_suite(dir: &Path, text: &str) -> Result<(), TestCaseError> {
    let file = dir.join("suites/f.yaml");
    rewrite(&file, text);
    let shown = Path::new("suites/f.yaml");
    match load_suite(&file, shown, &mut ImageCache::default()) {
        Ok(s) => {
            prop_assert!(!s.cases.is_empty());
        }
        Err(errors) => {
            prop_assert!(!errors.0.is_empty());
            for e in &errors.0 {
                prop_assert_eq!(&e.file, shown, "{}", e);
                let has_lines = !text.trim().is_empty() && !text.contains('\0');
                if has_lines && !e.message.contains("UTF-8") {
                    prop_assert!(e.line.is_some(), "no line: {} in {:?}", e, text);
                }
            }
        }
    }
    Ok(())
}

fn project() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("suites/images")).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("suites/images/horse.png"),
        d.path().join("suites/images/horse.png"),
    )
    .unwrap();
    d
}

fn fuzz_suites(n: u32) {
    let d = project();
    runner(n)
        .run(&nasty_text(), |t| check_suite(d.path(), &t))
        .unwrap();
    runner(n)
        .run(&suite_doc(), |doc| {
            let yaml = serde_yaml::to_string(&doc).unwrap();
            check_suite(d.path(), &yaml)
        })
        .unwrap();
}

/// A models.toml-shaped document: models with a backend and mostly that backend's keys.
fn models_doc() -> impl Strategy<Value = Value> {
    let scalar = prop_oneof![
        any::<bool>().prop_map(Value::Bool),
        (-3i64..100_000).prop_map(Value::from),
        (-2.0f64..10.0).prop_map(Value::from),
        nasty_text().prop_map(Value::String),
        prop::sample::select(vec![
            "candle",
            "openai",
            "llama-server",
            "smolvlm",
            "phi3-v",
            "moondream2",
            "f32",
            "q8_0",
            "cpu",
            "auto",
            "http://127.0.0.1:9/v1",
            "a/b",
            "x.gguf",
            "models/x",
        ])
        .prop_map(|s| Value::String(s.into())),
        proptest::collection::vec(nasty_text().prop_map(Value::String), 0..3)
            .prop_map(Value::Array),
    ]
    .boxed();
    let common = [
        "enabled",
        "max_new_tokens",
        "temperature",
        "seed",
        "system_prompt",
        "text_only",
        "latency_scale",
        "repeat",
    ];
    let model = (
        prop::sample::select(vec!["candle", "openai", "llama-server", "tensorflow"]),
        proptest::collection::btree_map(
            prop::sample::select(
                common
                    .iter()
                    .chain(&[
                        "arch",
                        "repo",
                        "revision",
                        "path",
                        "dtype",
                        "device",
                        "tokenizer",
                        "tokenizer_repo",
                        "base_url",
                        "model",
                        "api_key_env",
                        "timeout_s",
                        "concurrency",
                        "hf",
                        "mmproj",
                        "binary",
                        "args",
                        "port",
                        "startup_timeout_s",
                        "stream",
                    ])
                    .copied()
                    .collect::<Vec<&str>>(),
            ),
            scalar.clone(),
            0..7,
        ),
    )
        .prop_map(|(backend, m)| {
            let mut o: serde_json::Map<String, Value> =
                m.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            o.insert("backend".into(), Value::String(backend.into()));
            Value::Object(o)
        });
    (
        proptest::collection::btree_map("[a-z0-9.-]{1,6}", model, 0..4),
        proptest::option::of(proptest::collection::btree_map(
            prop::sample::select(common.to_vec()),
            scalar,
            0..5,
        )),
    )
        .prop_map(|(models, defaults)| {
            let mut doc = serde_json::Map::new();
            if let Some(d) = defaults {
                doc.insert(
                    "defaults".into(),
                    Value::Object(d.into_iter().map(|(k, v)| (k.to_string(), v)).collect()),
                );
            }
            doc.insert("models".into(), Value::Object(models.into_iter().collect()));
            Value::Object(doc)
        })
}

fn check_models(dir: &Path, text: &str) -> Result<(), TestCaseError> {
    let file = dir.join("models.toml");
    rewrite(&file, text);
    match load_models(&file) {
        Ok(m) => prop_assert!(!m.models.is_empty()),
        Err(errors) => {
            prop_assert!(!errors.0.is_empty());
            for e in &errors.0 {
                prop_assert_eq!(&e.file, &file, "{}", e);
            }
        }
    }
    Ok(())
}

fn fuzz_models(n: u32) {
    let d = tempfile::tempdir().unwrap();
    runner(n)
        .run(&nasty_text(), |t| check_models(d.path(), &t))
        .unwrap();
    runner(n)
        .run(&models_doc(), |doc| {
            let Ok(text) = toml::to_string(&doc) else {
                return Ok(()); // a shape TOML cannot write (e.g. null): nothing to check
            };
            check_models(d.path(), &text)
        })
        .unwrap();
}

/// Every rule kind, with arbitrary parameters.
fn rule() -> impl Strategy<Value = Rule> {
    let texts = proptest::collection::vec(nasty_text(), 1..12);
    let leaf = prop_oneof![
        texts.clone().prop_map(Rule::Vqa),
        texts.clone().prop_map(Rule::VqaPre2021),
        nasty_text().prop_map(Rule::Exact),
        texts.clone().prop_map(Rule::AnyOf),
        nasty_text().prop_map(Rule::Contains),
        texts.clone().prop_map(Rule::ContainsAll),
        texts.clone().prop_map(Rule::ContainsAny),
        texts.clone().prop_map(Rule::NotContains),
        (any::<f64>(), 0.0f64..1e6)
            .prop_map(|(value, tolerance)| Rule::Numeric { value, tolerance }),
        any::<bool>().prop_map(Rule::YesNo),
        (0u8..26, proptest::collection::vec(nasty_text(), 0..5)).prop_map(|(l, options)| {
            Rule::Choice {
                letter: (b'A' + l) as char,
                options,
            }
        }),
        "[a-z.*+?|()]{0,12}".prop_filter_map("valid regex", |r| regex::Regex::new(&r)
            .ok()
            .map(Rule::Regex)),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 1..4).prop_map(Rule::All),
            proptest::collection::vec(inner, 1..4).prop_map(Rule::Any),
        ]
    })
}

fn fuzz_rules(n: u32) {
    runner(n)
        .run(&(rule(), nasty_text()), |(r, answer)| {
            let s = r.score(&answer);
            prop_assert!(
                (0.0..=1.0).contains(&s),
                "{} scored {} on {:?}",
                r,
                s,
                answer
            );
            let _ = r.to_string();
            Ok(())
        })
        .unwrap();
}

/// `vlmtest score` over lines of arbitrary shape, in one process per batch.
fn fuzz_score_command(n: u32) {
    use std::io::Write;
    let line = prop_oneof![
        nasty_text(),
        (proptest::collection::vec(nasty_text(), 0..11), nasty_text())
            .prop_map(|(a, p)| { serde_json::json!({"answers": a, "prediction": p}).to_string() }),
        value().prop_map(|v| v.to_string()),
    ];
    let mut runner = runner(1);
    let batch = proptest::collection::vec(line, n as usize..=n as usize);
    let lines = batch.new_tree(&mut runner).unwrap().current();
    for rule in [
        "vqa",
        "vqa_pre2021",
        "any_of",
        "{contains: a}",
        "{numeric: 3, tolerance: 1}",
    ] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vlmtest"))
            .args(["score", "--rule", rule])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let input: String = lines.iter().map(|l| l.replace('\n', " ") + "\n").collect();
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(matches!(out.status.code(), Some(0) | Some(1)), "{stderr}");
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            let v: Value = serde_json::from_str(l).unwrap();
            if let Some(s) = v.get("score") {
                let s = s.as_f64().unwrap();
                assert!((0.0..=1.0).contains(&s), "{l}");
            } else {
                assert!(v["error"].is_string() && v["line"].is_u64(), "{l}");
            }
        }
    }
}

/// A case with VQA answers and a `pass_at` above 1 is reported at once (`pass_at` out of range).
/// The "expected at least N answers" hint used to search for an answer count whose best VQA
/// accuracy reaches `pass_at` without bound: above 1 it never ends, and the suite target hung
/// on such inputs (found profiling it: a run of 1000 inputs did not end).
#[test]
fn pass_at_above_one_with_vqa_answers_does_not_hang() {
    let d = project();
    for suite in [
        "cases:\n  - id: a\n    question: q\n    pass_at: 1.2\n    answers: [a, b]\n",
        "defaults: { pass_at: .inf }\ncases:\n  - { id: a, question: q, answers: [a, b, c] }\n",
    ] {
        let file = d.path().join("suites/f.yaml");
        std::fs::write(&file, suite).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = load_suite(
                &file,
                Path::new("suites/f.yaml"),
                &mut ImageCache::default(),
            );
            let _ = tx.send(r.map(|_| ()).map_err(|e| e.to_string()));
        });
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("load_suite did not return within 20 s on {suite:?}"));
        let e = r.unwrap_err();
        assert!(e.contains("suites/f.yaml:"), "{e}");
        assert!(e.contains("`pass_at` must be between 0 and 1"), "{e}");
    }
}

#[test]
fn suites() {
    fuzz_suites(cases(200));
}

#[test]
fn models_toml() {
    fuzz_models(cases(200));
}

#[test]
fn scoring_rules() {
    fuzz_rules(cases(500));
}

#[test]
fn score_command() {
    fuzz_score_command(cases(300));
}

#[test]
#[ignore = "10,000 inputs per target: cargo test --release --test fuzz -- --ignored"]
fn ten_thousand_each() {
    let n = cases(10_000);
    fuzz_suites(n);
    fuzz_models(n);
    fuzz_rules(n);
    fuzz_score_command(n);
}
