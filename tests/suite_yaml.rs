//! Suites that use YAML's anchors and aliases load, with the right lines in cases and errors;
//! and the time to load a big suite (`cargo test --release --test suite_yaml -- --ignored
//! --nocapture`).

use std::path::Path;
use std::time::Instant;

use vlmtest::config::image::ImageCache;
use vlmtest::config::suite::{Suite, load_suite};

fn load(text: &str) -> Result<Suite, String> {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("f.yaml");
    std::fs::write(&file, text).unwrap();
    load_suite(
        &file,
        Path::new("suites/f.yaml"),
        &mut ImageCache::default(),
    )
    .map_err(|e| {
        e.0.iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    })
}

const ANCHORED: &str = "\
defaults:
  prompt: &p '{question} Answer briefly.'
cases:
  - id: a
    question: &q What animal is this?
    answers: &ans [horse, horse, pony, horse]
  - id: b
    question: *q
    answers: *ans
    category: &cat animals
  - &c
    id: c
    question: How many legs?
    expect: { numeric: 4 }
    category: *cat
  - { id: d, question: *q, expect: { any_of: *ans }, prompt: *p }
";

#[test]
fn a_suite_with_anchors_and_aliases_loads_with_its_lines() {
    let s = load(ANCHORED).unwrap();
    let lines: Vec<usize> = s.cases.iter().map(|c| c.line).collect();
    // a case is where its mapping starts: its first key (also after an anchor on the line above)
    assert_eq!(lines, [4, 7, 12, 16]);
    let b = &s.cases[1];
    assert_eq!(b.turns[0].question, "What animal is this?");
    assert_eq!(
        b.turns[0].answers.as_deref(),
        Some(&["horse", "horse", "pony", "horse"].map(String::from)[..])
    );
    assert_eq!(b.category.as_deref(), Some("animals"));
    assert_eq!(s.cases[2].category.as_deref(), Some("animals"));
    assert_eq!(
        s.cases[3].turns[0].prompt,
        "What animal is this? Answer briefly."
    );
}

#[test]
fn errors_in_a_suite_with_aliases_have_their_lines() {
    // found after deserialisation (a missing image): the line of the key
    let text = ANCHORED.replace(
        "    category: &cat animals\n",
        "    category: &cat animals\n    image: images/nope.png\n",
    );
    let e = load(&text).unwrap_err();
    assert!(
        e.contains("suites/f.yaml:11: image `images/nope.png` not found"),
        "{e}"
    );
    // an aliased value of the wrong type: the path where the alias is, the line of the anchor
    let text = ANCHORED.replace("    category: *cat\n", "    pass_at: *q\n");
    let e = load(&text).unwrap_err();
    assert!(
        e.contains(
            "suites/f.yaml:5: cases[2].pass_at: invalid type: string \"What animal is this?\", expected f64"
        ),
        "{e}"
    );
    // a merge key is an ordinary (unknown) key, as with serde_yaml
    let text = format!("{ANCHORED}  - <<: *c\n    id: e\n");
    let e = load(&text).unwrap_err();
    assert!(
        e.contains("suites/f.yaml:17: cases[4]: unknown field `<<`, expected one of `id`"),
        "{e}"
    );
}

/// Loads a suite of 10,000 text-only cases five times and prints the best time.
#[test]
#[ignore = "a measurement: cargo test --release --test suite_yaml -- --ignored --nocapture"]
fn time_to_load_a_big_suite() {
    let n = 10_000;
    let mut text = String::from(
        "name: big\ndefaults:\n  prompt: \"{question}\\nAnswer with one word.\"\n  pass_at: 0.5\ncases:\n",
    );
    for i in 0..n {
        if i % 2 == 0 {
            text.push_str(&format!(
                "  - id: case-{i}\n    question: What is shown in picture {i}?\n    answers: [cat, cat, kitten, cat, tabby, cat, cat, cat, cat, cat]\n    category: animals\n"
            ));
        } else {
            text.push_str(&format!(
                "  - {{ id: case-{i}, question: 'How many, in {i}?', expect: {{ numeric: {i}, tolerance: 1 }}, max_new_tokens: 8 }}\n"
            ));
        }
    }
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("big.yaml");
    std::fs::write(&file, &text).unwrap();
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        let s = load_suite(&file, Path::new("big.yaml"), &mut ImageCache::default()).unwrap();
        best = best.min(t.elapsed().as_secs_f64());
        assert_eq!(s.cases.len(), n);
    }
    eprintln!(
        "load_suite: {n} cases, {:.2} MB of YAML: best of 5 {:.1} ms",
        text.len() as f64 / 1e6,
        best * 1e3
    );
}
