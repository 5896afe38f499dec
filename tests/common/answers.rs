//! Whole-answer goldens from transformers' `generate()`: `tests/fixtures/*/golden_smoke.json` and
//! `tests/fixtures/*-eos/golden_eos.json` (made by `tests/fixtures/make_fixtures.py`, schema in
//! `tests/fixtures/README.md`), and the ways the tests replay them: through the [`Vlm`] decode
//! loop, and through models.toml, a suite and the harness.

#![allow(dead_code)] // each test file uses a different part

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;
use vlmtest::backend::candle::template::ChatTemplate;
use vlmtest::backend::candle::{self as cb, Vlm};
use vlmtest::backend::{Message, Request, Role};
use vlmtest::config::GenParams;
use vlmtest::config::image::ImageCache;

use super::golden::fixtures;

#[derive(Debug, Clone, Deserialize)]
pub struct Turn {
    /// Relative to `tests/fixtures/`.
    pub images: Vec<String>,
    pub question: String,
    /// The chat-templated text handed to the processor.
    pub prompt: String,
    pub input_ids: Vec<u32>,
    /// What `generate()` returned after the prompt, the stop token included.
    pub new_ids: Vec<u32>,
    /// `eos` or `max_new_tokens`.
    pub stop: String,
    /// `new_ids` without the stop token.
    pub answer_ids: Vec<u32>,
    /// Decoded without special tokens and trimmed, as vlmtest reports it and sends it back.
    pub answer: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    pub id: String,
    pub max_new_tokens: u32,
    pub turns: Vec<Turn>,
}

/// The same checkpoint with another `generation_config.json` (`None`: without one).
#[derive(Debug, Clone, Deserialize)]
pub struct Variant {
    pub id: String,
    pub generation_config: Option<Value>,
    pub stop_token_ids: Vec<u32>,
    pub cases: Vec<Case>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Goldens {
    pub arch: String,
    /// `generation_config.eos_token_id` as transformers loaded it.
    pub stop_token_ids: Vec<u32>,
    pub cases: Vec<Case>,
    #[serde(default)]
    pub variants: Vec<Variant>,
}

/// `rel` under `tests/fixtures/`, e.g. `smolvlm-eos/golden_eos.json`.
pub fn load(rel: &str) -> Goldens {
    let text = std::fs::read_to_string(fixtures().join(rel)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Replays a case through `cb::run` as the harness does (every turn re-sends the conversation,
/// the earlier answers as assistant messages) and checks prompt length, tokens and text; with
/// `template` (the repo's chat template), also the prompt it renders for each turn.
pub fn replay(m: &mut dyn Vlm, case: &Case, template: Option<&ChatTemplate>, what: &str) {
    let mut cache = ImageCache::default();
    let mut messages = Vec::new();
    for (k, t) in case.turns.iter().enumerate() {
        let what = format!("{what} {} turn {}", case.id, k + 1);
        messages.push(Message {
            role: Role::User,
            text: t.question.clone(),
            images: t
                .images
                .iter()
                .map(|p| cache.get(&fixtures(), p).unwrap())
                .collect(),
        });
        let req = Request {
            messages: messages.clone(),
            params: GenParams {
                max_new_tokens: case.max_new_tokens,
                temperature: 0.0,
                seed: None,
                system_prompt: None,
            },
        };
        if let Some(tmpl) = template {
            let prompt = tmpl.render(&ChatTemplate::messages(&req), true).unwrap();
            assert_eq!(prompt, t.prompt, "{what}: chat-templated prompt");
        }
        let a = cb::run(m, &req).unwrap();
        assert_eq!(a.tokens, t.answer_ids, "{what}: tokens ({})", t.stop);
        assert_eq!(a.prompt_tokens, t.input_ids.len(), "{what}: prompt length");
        let text = m.tokenizer().decode(&a.tokens, true).unwrap();
        assert_eq!(text.trim(), t.answer, "{what}: answer text");
        messages.push(Message {
            role: Role::Assistant,
            text: text.trim().to_string(),
            images: Vec::new(),
        });
    }
}

/// A YAML double-quoted scalar holding exactly `s` (the answers are random bytes: control
/// characters, DEL and C1 codes must be escaped).
pub fn yaml_quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || (0x7f..=0x9f).contains(&(c as u32)) => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            '\u{2028}' | '\u{2029}' | '\u{feff}' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A suite asking the cases as vlmtest users would (the question is the prompt), each turn
/// expecting exactly transformers' answer. Images are named as in the goldens, so the suite
/// belongs in a folder with `images/` holding the fixture images (see [`copy_images`]).
pub fn suite(name: &str, cases: &[Case]) -> String {
    let mut y = format!(
        "name: {name}\ndefaults:\n  prompt: \"{{question}}\"\n  snapshot: false\n  max_latency_ms: 600000\ncases:\n"
    );
    for c in cases {
        y.push_str(&format!(
            "  - id: {}\n    max_new_tokens: {}\n    turns:\n",
            c.id, c.max_new_tokens
        ));
        for t in &c.turns {
            let images: Vec<String> = t.images.iter().map(|i| yaml_quoted(i)).collect();
            y.push_str(&format!(
                "      - question: {}\n        expect: {{ exact: {} }}\n",
                yaml_quoted(&t.question),
                yaml_quoted(&t.answer)
            ));
            if !images.is_empty() {
                y.push_str(&format!("        images: [{}]\n", images.join(", ")));
            }
        }
    }
    y
}

/// Copies the fixture images into `dir/images/`.
pub fn copy_images(dir: &Path) {
    std::fs::create_dir_all(dir.join("images")).unwrap();
    for f in ["gradient_96x64.png", "shapes_80x80.png"] {
        std::fs::copy(
            fixtures().join("images").join(f),
            dir.join("images").join(f),
        )
        .unwrap();
    }
}

/// Checks report.json's cases of `model` in `suite` against the goldens: each turn's answer,
/// prompt length and completion tokens (the answer's tokens, the stop token not counted).
pub fn check_report(report: &Value, model: &str, suite: &str, cases: &[Case]) {
    let rows: Vec<&Value> = report["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["model"] == model && c["suite"] == suite)
        .collect();
    assert_eq!(
        rows.len(),
        cases.len(),
        "{model}::{suite}: cases in report.json"
    );
    for c in cases {
        let row = rows
            .iter()
            .find(|r| r["case"] == c.id.as_str())
            .unwrap_or_else(|| panic!("{model}::{suite}::{} not in report.json", c.id));
        let turns = row["turns"].as_array().unwrap();
        assert_eq!(turns.len(), c.turns.len(), "{model}::{}", c.id);
        for (k, (got, want)) in turns.iter().zip(&c.turns).enumerate() {
            let what = format!("{model}::{suite}::{} turn {}", c.id, k + 1);
            assert_eq!(got["answer"], want.answer.as_str(), "{what}: answer");
            assert_eq!(
                got["completion_tokens"],
                want.answer_ids.len() as u64,
                "{what}: completion_tokens"
            );
            assert_eq!(
                got["prompt_tokens"],
                want.input_ids.len() as u64,
                "{what}: prompt_tokens"
            );
        }
        assert_eq!(row["passed"], true, "{model}::{}: {row}", c.id);
    }
}
