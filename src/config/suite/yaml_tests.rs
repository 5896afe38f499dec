//! The raw suite types read by our YAML reader ([`crate::config::yaml`]) and by serde_yaml
//! 0.9.34, the reader suites had before (a dev-dependency now, the independent reference): every
//! suite in the repository, and generated suites, give the same `RawSuite` or the same error
//! (message and line).

use std::path::Path;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::{RawRule, RawSuite};
use crate::config::yaml::tests::{agree, ours, reference};

/// Every `*.yaml`/`*.yml` under `dir`.
fn yaml_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
}

/// The string literals of Rust source (plain, raw and byte strings, escapes resolved).
fn string_literals(src: &str) -> Vec<String> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            '/' if c.get(i + 1) == Some(&'/') => {
                while i < c.len() && c[i] != '\n' {
                    i += 1;
                }
            }
            '\'' => {
                // a char literal ('x', '\n', '"') or a lifetime ('a)
                if c.get(i + 1) == Some(&'\\') {
                    i += 2;
                    while i < c.len() && c[i] != '\'' {
                        i += 1;
                    }
                    i += 1;
                } else if c.get(i + 2) == Some(&'\'') {
                    i += 3;
                } else {
                    i += 1;
                }
            }
            'r' if matches!(c.get(i + 1), Some('#' | '"'))
                && (i == 0 || !(c[i - 1].is_alphanumeric() || c[i - 1] == '_')) =>
            {
                let mut j = i + 1;
                let mut hashes = 0;
                while c.get(j) == Some(&'#') {
                    hashes += 1;
                    j += 1;
                }
                if c.get(j) != Some(&'"') {
                    i += 1;
                    continue;
                }
                let start = j + 1;
                let mut k = start;
                loop {
                    if k >= c.len() {
                        break;
                    }
                    if c[k] == '"' && (0..hashes).all(|h| c.get(k + 1 + h) == Some(&'#')) {
                        break;
                    }
                    k += 1;
                }
                out.push(c[start..k.min(c.len())].iter().collect());
                i = k + 1 + hashes;
            }
            '"' => {
                let mut s = String::new();
                i += 1;
                while i < c.len() && c[i] != '"' {
                    if c[i] == '\\' {
                        i += 1;
                        match c.get(i) {
                            Some('n') => s.push('\n'),
                            Some('t') => s.push('\t'),
                            Some('r') => s.push('\r'),
                            Some('0') => s.push('\0'),
                            Some('\n') => {
                                while c.get(i + 1).is_some_and(|x| x.is_whitespace()) {
                                    i += 1;
                                }
                            }
                            Some('x') => {
                                let hex: String = c[i + 1..i + 3].iter().collect();
                                s.push(u8::from_str_radix(&hex, 16).unwrap_or(b'?') as char);
                                i += 2;
                            }
                            Some('u') => {
                                let end = (i..c.len()).find(|&k| c[k] == '}').unwrap_or(i);
                                let hex: String = c[i + 2..end].iter().collect();
                                s.extend(
                                    u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32),
                                );
                                i = end;
                            }
                            Some(&x) => s.push(x),
                            None => {}
                        }
                    } else {
                        s.push(c[i]);
                    }
                    i += 1;
                }
                out.push(s);
                i += 1;
            }
            _ => i += 1,
        }
    }
    out
}

#[test]
fn string_literals_are_read_as_rust_reads_them() {
    let src = r####"let a = "x\n\"y\" \
        z"; let c = '"'; let l: &'static str = r#"q"w"#; // "not this"
    let b = b"cases:\n"; let e = '\''; let u = "\u{e9}";"####;
    assert_eq!(
        string_literals(src),
        ["x\n\"y\" z", "static str = r#", "q\"w", "cases:\n", "é"][..]
            .iter()
            .filter(|s| !s.starts_with("static"))
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    );
}

/// The suite files of the repository and the suites written inline in its tests and sources.
fn corpus() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["suites", "tests", "examples", "benches"] {
        yaml_files(&root.join(dir), &mut files);
    }
    let mut out: Vec<(String, String)> = files
        .iter()
        .filter_map(|f| Some((f.display().to_string(), std::fs::read_to_string(f).ok()?)))
        .collect();
    let mut sources = Vec::new();
    for dir in ["tests", "src", "benches"] {
        rust_files(&root.join(dir), &mut sources);
    }
    for f in sources {
        let Ok(src) = std::fs::read_to_string(&f) else {
            continue;
        };
        for (i, lit) in string_literals(&src).into_iter().enumerate() {
            if lit.contains("cases:") {
                out.push((format!("{} (literal {i})", f.display()), lit));
            }
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_suite_in_the_repository_reads_as_serde_yaml_reads_it() {
    let corpus = corpus();
    assert!(
        corpus.len() >= 80,
        "only {} suites found: is the corpus walk broken?",
        corpus.len()
    );
    let mut failures = Vec::new();
    let mut ok = 0;
    for (name, text) in &corpus {
        match agree::<RawSuite>(text) {
            Ok(()) => ok += usize::from(reference::<RawSuite>(text).is_ok()),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // most of them are valid suites; the rest pin errors
    assert!(ok >= 40, "only {ok} of {} read without error", corpus.len());
}

#[test]
fn rules_read_as_serde_yaml_reads_them() {
    for text in [
        "{contains: cat}",
        "{numeric: 3, tolerance: 1}",
        "{numeric: twenty-four}",
        "{numeric: '3'}",
        "{choice: B, options: [a, b]}",
        "{choice: {answer: b, options: [a, b]}}",
        "{choice: {answer: b, bogus: 1}}",
        "{choice: [a]}",
        "{all: [{contains: a}, {any: [{exact: b}, {regex: '^c'}]}]}",
        "{not_contains: x}",
        "{not_contains: [x, 2, true]}",
        "{not_contains: {a: b}}",
        "{yes_no: yes}",
        "{yes_no: true}",
        "{containz: x}",
        "{tolerance: x}",
        "contains: x\nexact: y\n",
        "[contains]",
        "vqa",
        "{any_of: [1, 2.5, no, ~]}",
    ] {
        if let Err(e) = agree::<RawRule>(text) {
            panic!("{e}");
        }
    }
}

#[test]
fn a_suite_with_anchors_and_aliases_reads_as_before() {
    let text = "\
defaults: &d
  pass_at: 0.5
common:
  answers: &ans [cat, cat, cat, kitten]
cases:
  - id: a
    question: &q What is it?
    answers: *ans
  - id: b
    question: *q
    expect: &rule { any_of: [cat] }
  - {id: c, question: *q, expect: *rule, pass_at: *d}
";
    // `common` is not a suite key: both refuse it, with the same message
    let r = reference::<RawSuite>(text);
    assert!(r.is_err());
    assert_eq!(r, ours::<RawSuite>(text));
    let text = text
        .replace("common:\n  answers: &ans [cat, cat, cat, kitten]\n", "")
        .replace("answers: *ans", "answers: &ans [cat, cat, cat, kitten]");
    agree::<RawSuite>(&text).unwrap();
    // `pass_at: *d` is a map where a number goes: the error names the alias's path
    let o = ours::<RawSuite>(&text);
    assert_eq!(
        o.as_ref().map_err(|e| e.0.as_str()),
        Err("cases[2].pass_at: invalid type: map, expected f64")
    );
    let fixed = text.replace(", pass_at: *d", "");
    assert!(ours::<RawSuite>(&fixed).is_ok());
    agree::<RawSuite>(&fixed).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Generated suites

fn scalar() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..100_000).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1.5f64..2.0).prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop::sample::select(vec![
            "0.5",
            "1",
            "007",
            "0x10",
            "yes",
            "true",
            "null",
            "~",
            "",
            " ",
            "1e3",
            ".inf",
            "vqa",
            "any_of",
            "bogus",
            "{question}",
            "Q: {question}",
            "images/horse.png",
            "a: b",
            "- x",
            "#",
            "'",
            "\"",
            "&a",
            "*a",
            "!t",
            "|",
            ">",
            "@",
            "`",
            "%",
        ])
        .prop_map(|s| Value::String(s.into())),
        ".{0,12}".prop_map(Value::String),
    ]
    .boxed()
}

fn some_of(keys: &'static [&'static str], value: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    proptest::collection::btree_map(prop::sample::select(keys), value, 0..keys.len().min(5))
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
        .boxed()
}

fn texts() -> BoxedStrategy<Value> {
    prop_oneof![
        3 => proptest::collection::vec(scalar(), 0..5).prop_map(Value::Array),
        1 => scalar(),
    ]
    .boxed()
}

fn rule() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        some_of(
            &[
                "exact",
                "contains",
                "regex",
                "yes_no",
                "numeric",
                "tolerance"
            ],
            scalar()
        ),
        some_of(
            &[
                "any_of",
                "contains_all",
                "contains_any",
                "not_contains",
                "options"
            ],
            texts()
        ),
        (scalar(), texts()).prop_map(|(a, o)| json!({"choice": {"answer": a, "options": o}})),
        scalar().prop_map(|c| json!({ "choice": c })),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(|v| json!({ "all": v })),
            proptest::collection::vec(inner, 0..3).prop_map(|v| json!({ "any": v })),
            scalar(),
        ]
    })
    .boxed()
}

const SHARED: &[&str] = &[
    "prompt",
    "score",
    "pass_at",
    "max_new_tokens",
    "max_latency_ms",
    "snapshot",
    "category",
    "repeat",
    "min_pass_rate",
    "max_ttft_ms",
    "min_tokens_per_s",
    "bogus",
];

fn case() -> BoxedStrategy<Value> {
    let turn = (
        some_of(&["image", "question", "bogus"], scalar()),
        texts(),
        rule(),
    )
        .prop_map(|(mut t, answers, expect)| {
            t["answers"] = answers;
            t["expect"] = expect;
            t
        });
    (
        some_of(SHARED, scalar()),
        some_of(&["id", "question", "image", "imag"], scalar()),
        proptest::option::of(texts()),
        proptest::option::of(rule()),
        proptest::option::weighted(0.2, proptest::collection::vec(turn, 0..3)),
        proptest::option::weighted(0.2, texts()),
    )
        .prop_map(|(shared, base, answers, expect, turns, images)| {
            let mut c = shared;
            if let (Value::Object(c), Value::Object(b)) = (&mut c, base) {
                c.extend(b);
            }
            if let Some(a) = answers {
                c["answers"] = a;
            }
            if let Some(e) = expect {
                c["expect"] = e;
            }
            if let Some(t) = turns {
                c["turns"] = Value::Array(t);
            }
            if let Some(i) = images {
                c["images"] = i;
            }
            c
        })
        .boxed()
}

fn suite() -> impl Strategy<Value = Value> {
    (
        proptest::option::of(scalar()),
        proptest::option::of(some_of(SHARED, scalar())),
        proptest::option::of(some_of(
            &["min_accuracy", "min_pass_rate", "max_drop", "alpha", "models", "bogus"],
            prop_oneof![3 => scalar(), 1 => some_of(&["m", "n"], some_of(&["min_accuracy", "min_pass_rate", "x"], scalar()))].boxed(),
        )),
        prop_oneof![
            9 => proptest::collection::vec(case(), 0..4).prop_map(Value::Array),
            1 => scalar(),
        ],
    )
        .prop_map(|(name, defaults, gate, cases)| {
            let mut s = json!({ "cases": cases });
            if let Some(n) = name {
                s["name"] = n;
            }
            if let Some(d) = defaults {
                s["defaults"] = d;
            }
            if let Some(g) = gate {
                s["gate"] = g;
            }
            s
        })
}

/// YAML's printable characters (`c-printable`), which may appear raw in a document, less the
/// ones that are line breaks for libyaml (YAML 1.1) and not for yaml-rust2 (NEL, LS, PS).
fn printable(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | ' '..='~' | '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..)
        && !matches!(c, '\u{feff}' | '\u{2028}' | '\u{2029}')
}

/// 1000 suites per run; `VLMTEST_FUZZ_CASES` sets another number.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("VLMTEST_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// serde_yaml writes the suite (block style, quoting what would not read back as a string),
    /// both read it: the same suite, or the same error at the same line.
    #[test]
    fn generated_suites_read_as_serde_yaml_reads_them(doc in suite()) {
        let text = serde_yaml::to_string(&doc).unwrap();
        let r = agree::<RawSuite>(&text);
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
        // and in flow style (JSON is YAML), where JSON leaves characters that YAML does not
        // print raw (libyaml refuses them, yaml-rust2 reads them: `known_parser_differences`)
        let flow = doc.to_string();
        if flow.chars().all(printable) {
            let r = agree::<RawSuite>(&flow);
            prop_assert!(r.is_ok(), "{}", r.unwrap_err());
        }
    }
}
