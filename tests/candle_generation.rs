//! Whole answers against transformers' `generate()`, token for token and as text:
//!
//! * answers that stop on EOS before `max_new_tokens` (the `*-eos` checkpoints keep their EOS
//!   output rows, which the base fixtures zero), for SmolVLM (two EOS ids), LLaVA-NeXT and
//!   PaliGemma, through the [`Vlm`] loop and through models.toml and the harness;
//! * the stop set as transformers takes it from `generation_config.json` (or, without one, from
//!   `config.json`), checked on variants of those checkpoints;
//! * the smoke suite's prompt shapes (several images in one prompt, a text-only prompt, a
//!   conversation whose second turn follows the model's own first answer) on the base
//!   checkpoints, and the smoke snapshots equal to transformers' answers.
//!
//! Goldens: `tests/fixtures/make_fixtures.py` (see `tests/fixtures/README.md`).

#![cfg(feature = "candle")]

#[path = "common/answers.rs"]
mod answers;
mod common;
#[path = "common/golden.rs"]
mod golden;

use std::path::Path;

use answers::{Goldens, check_report, copy_images, load, replay};
use candle_core::{DType, Device};
use common::Project;
use golden::{copy_dir, fixtures};
use vlmtest::backend::candle::Vlm;
use vlmtest::backend::candle::llava_next::LlavaNext;
use vlmtest::backend::candle::paligemma::PaliGemma;
use vlmtest::backend::candle::smolvlm::SmolVlm;
use vlmtest::backend::candle::template::ChatTemplate;

fn load_model(arch: &str, dir: &Path) -> Box<dyn Vlm> {
    match arch {
        "smolvlm" => Box::new(SmolVlm::load(dir, DType::F32, &Device::Cpu).unwrap()),
        "llava-next" => Box::new(LlavaNext::load(dir, DType::F32, &Device::Cpu).unwrap()),
        "paligemma" => Box::new(PaliGemma::load(dir, DType::F32, &Device::Cpu).unwrap()),
        other => panic!("no architecture {other}"),
    }
}

/// The repo's chat template (PaliGemma has none: the question is the prompt).
fn template(arch: &str, dir: &Path) -> Option<ChatTemplate> {
    (arch != "paligemma").then(|| ChatTemplate::load(dir).unwrap())
}

/// The golden must exercise what the test claims: answers cut by each stop id, and one that
/// runs to `max_new_tokens`.
fn assert_stops_on_every_eos(g: &Goldens) {
    let turns: Vec<&answers::Turn> = g.cases.iter().flat_map(|c| &c.turns).collect();
    for id in &g.stop_token_ids {
        assert!(
            turns.iter().any(|t| t.stop == "eos"
                && t.new_ids.last() == Some(id)
                && t.answer_ids.len() >= 2),
            "{}: no golden answer stops on {id}",
            g.arch
        );
    }
    assert!(turns.iter().any(|t| t.stop == "max_new_tokens"));
}

fn stops_on_eos(arch: &str) {
    let g = load(&format!("{arch}-eos/golden_eos.json"));
    assert_eq!(g.arch, arch);
    assert_stops_on_every_eos(&g);
    let dir = fixtures().join(format!("{arch}-eos"));
    let mut m = load_model(arch, &dir);
    assert_eq!(m.eos(), g.stop_token_ids, "{arch}: the stop set");
    let tmpl = template(arch, &dir);
    for case in &g.cases {
        replay(m.as_mut(), case, tmpl.as_ref(), arch);
    }
}

#[test]
fn smolvlm_stops_on_either_eos_id_where_transformers_stops() {
    stops_on_eos("smolvlm");
}

#[test]
fn llava_next_stops_on_eos_where_transformers_stops() {
    stops_on_eos("llava-next");
}

#[test]
fn paligemma_stops_on_eos_where_transformers_stops() {
    stops_on_eos("paligemma");
}

/// Each variant: the `-eos` checkpoint with another generation_config.json (or none).
fn stop_set_variants(arch: &str) {
    let g = load(&format!("{arch}-eos/golden_eos.json"));
    assert!(!g.variants.is_empty());
    for v in &g.variants {
        let what = format!("{arch} {}", v.id);
        let t = tempfile::tempdir().unwrap();
        copy_dir(
            &fixtures().join(format!("{arch}-eos")),
            t.path(),
            &["generation_config.json", "golden_eos.json"],
        );
        if let Some(cfg) = &v.generation_config {
            std::fs::write(t.path().join("generation_config.json"), cfg.to_string()).unwrap();
        }
        let mut m = load_model(arch, t.path());
        assert_eq!(m.eos(), v.stop_token_ids, "{what}: the stop set");
        for case in &v.cases {
            replay(m.as_mut(), case, None, &what);
        }
    }
}

#[test]
fn smolvlm_stops_only_on_what_generation_config_json_names() {
    let g = load("smolvlm-eos/golden_eos.json");
    // The variants must make a difference: somewhere transformers generates <|im_end|> and
    // goes on, because only <end_of_utterance> stops it there.
    let im_end = g.stop_token_ids[0];
    for v in &g.variants {
        assert_eq!(v.stop_token_ids.len(), 1, "{}", v.id);
        assert!(
            v.cases
                .iter()
                .flat_map(|c| &c.turns)
                .any(|t| t.answer_ids.contains(&im_end)),
            "{}: no answer runs through <|im_end|>",
            v.id
        );
    }
    stop_set_variants("smolvlm");
}

#[test]
fn llava_next_and_paligemma_take_eos_from_config_json_without_generation_config_json() {
    stop_set_variants("llava-next");
    stop_set_variants("paligemma");
}

/// Runs a golden's cases through models.toml, a suite expecting transformers' exact answers, and
/// the harness; then checks report.json.
fn through_the_harness(arch: &str, dir: &Path, cases: &[answers::Case]) {
    let p = Project::new();
    copy_images(&p.path("suites"));
    p.suite("g", &answers::suite("g", cases));
    p.write(
        "models.toml",
        &format!(
            "[models.m]\nbackend = \"candle\"\narch = \"{arch}\"\npath = \"{}\"\n",
            dir.display()
        ),
    );
    let run = p.run(&[], &[]);
    assert_eq!(run.code, Some(0), "{}", run.all());
    for c in cases {
        assert_eq!(
            run.outcome(&format!("m::g::{}", c.id)),
            "ok",
            "{}",
            run.all()
        );
    }
    check_report(&p.report(), "m", "g", cases);
}

#[test]
fn eos_answers_through_models_toml_and_the_harness() {
    for arch in ["smolvlm", "llava-next", "paligemma"] {
        let g = load(&format!("{arch}-eos/golden_eos.json"));
        through_the_harness(arch, &fixtures().join(format!("{arch}-eos")), &g.cases);
    }
}

#[test]
fn smolvlm_prompt_shapes_reproduce_transformers() {
    let g = load("smolvlm/golden_smoke.json");
    let ids: Vec<&str> = g.cases.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "one-image",
            "split-image",
            "two-images",
            "text-only",
            "conversation"
        ]
    );
    let dir = fixtures().join("smolvlm");
    let mut m = load_model("smolvlm", &dir);
    let tmpl = template("smolvlm", &dir);
    for case in &g.cases {
        replay(m.as_mut(), case, tmpl.as_ref(), "smolvlm");
    }
}

#[test]
fn llava_next_prompt_shapes_reproduce_transformers() {
    let g = load("llava-next/golden_smoke.json");
    let two = g.cases.iter().find(|c| c.id == "two-images").unwrap();
    assert_eq!(two.turns[0].images.len(), 2);
    let dir = fixtures().join("llava-next");
    let mut m = load_model("llava-next", &dir);
    let tmpl = template("llava-next", &dir);
    for case in &g.cases {
        replay(m.as_mut(), case, tmpl.as_ref(), "llava-next");
    }
}

#[test]
fn paligemma_answers_reproduce_transformers() {
    let g = load("paligemma/golden_smoke.json");
    let dir = fixtures().join("paligemma");
    let mut m = load_model("paligemma", &dir);
    let tmpl = template("paligemma", &dir);
    for case in &g.cases {
        replay(m.as_mut(), case, tmpl.as_ref(), "paligemma");
    }
}

#[test]
fn the_prompt_shapes_through_models_toml_and_the_harness() {
    for arch in ["smolvlm", "llava-next", "paligemma"] {
        let g = load(&format!("{arch}/golden_smoke.json"));
        through_the_harness(arch, &fixtures().join(arch), &g.cases);
    }
}

/// The smoke suite asks what the goldens asked, and its committed snapshots are transformers'
/// answers (a conversation's snapshot is `[turn N] answer` per turn).
#[test]
fn the_smoke_snapshots_are_transformers_answers() {
    let g = load("smolvlm/golden_smoke.json");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let suite: serde_json::Value = serde_yaml::from_str(
        &std::fs::read_to_string(root.join("tests/smoke/smoke.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(suite["defaults"]["prompt"], "{question}");
    let suite_cases = suite["cases"].as_array().unwrap();
    assert_eq!(suite_cases.len(), g.cases.len());
    for (case, sc) in g.cases.iter().zip(suite_cases) {
        assert_eq!(sc["id"], case.id.as_str());
        assert_eq!(
            sc.get("max_new_tokens")
                .unwrap_or(&suite["defaults"]["max_new_tokens"]),
            case.max_new_tokens
        );
        let turns: Vec<serde_json::Value> = match sc.get("turns") {
            Some(t) => t.as_array().unwrap().clone(),
            None => vec![sc.clone()],
        };
        assert_eq!(turns.len(), case.turns.len(), "{}", case.id);
        for (t, st) in case.turns.iter().zip(&turns) {
            assert_eq!(st["question"], t.question.as_str(), "{}", case.id);
            let images: Vec<String> = match (st.get("image"), st.get("images")) {
                (Some(i), _) => vec![i.as_str().unwrap().to_string()],
                (_, Some(list)) => list
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i.as_str().unwrap().to_string())
                    .collect(),
                _ => Vec::new(),
            };
            let want: Vec<String> = t
                .images
                .iter()
                .map(|i| format!("../fixtures/{i}"))
                .collect();
            assert_eq!(images, want, "{}: images", case.id);
        }

        let snap = root.join(format!(
            "tests/smoke/snapshots/smolvlm-tiny__smoke__{}.snap",
            case.id
        ));
        let got = vlmtest::snapshot::parse(&std::fs::read_to_string(&snap).unwrap()).unwrap();
        let want = if case.turns.len() == 1 {
            case.turns[0].answer.clone()
        } else {
            case.turns
                .iter()
                .enumerate()
                .map(|(k, t)| format!("[turn {}] {}", k + 1, t.answer))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(got, want, "{}", snap.display());
    }
}
