//! The in-process PaliGemma against transformers' own outputs on the tiny checkpoint in
//! `tests/fixtures/paligemma`: prompt, token ids, pixel values, first-step logits (within 1e-3)
//! and 8 greedy tokens (exactly).

#![cfg(feature = "candle")]

#[path = "common/golden.rs"]
mod golden;

use candle_core::{DType, Device};
use golden::*;
use vlmtest::backend::candle::paligemma::PaliGemma;
use vlmtest::backend::candle::{self as cb, Vlm};
use vlmtest::backend::{Message, Request, Role};
use vlmtest::config::GenParams;

fn model() -> PaliGemma {
    PaliGemma::load(&fixtures().join("paligemma"), DType::F32, &Device::Cpu).unwrap()
}

#[test]
fn reproduces_transformers_token_for_token() {
    let g = golden("paligemma");
    let mut m = model();
    for (i, case) in g["cases"].as_array().unwrap().iter().enumerate() {
        let what = format!("paligemma case {i}");
        let img = image(case["image"].as_str().unwrap());
        let rgb = cb::decode_image(&img).unwrap();
        let enc = m.encode(case["prompt"].as_str().unwrap(), &[rgb]).unwrap();
        assert_eq!(enc.text, case["expanded_text"].as_str().unwrap(), "{what}");
        assert_eq!(enc.ids, ids(&case["input_ids"]), "{what}: input ids");
        check_pixels(case, enc.pixels.as_ref().unwrap(), &what);
        let logits = m.prefill_encoded(&enc).unwrap();
        check_logits(case, &logits, &what);
        let tokens = greedy(logits, 8, |t| m.step(t).unwrap());
        assert_eq!(tokens, ids(&case["greedy_new_ids"]), "{what}: greedy ids");
    }
}

#[test]
fn the_generation_loop_gives_the_same_tokens_and_needs_an_image() {
    let g = golden("paligemma");
    let mut m = model();
    let case = &g["cases"][1];
    let params = GenParams {
        max_new_tokens: 8,
        temperature: 0.0,
        seed: None,
        system_prompt: None,
    };
    let req = Request {
        messages: vec![Message {
            role: Role::User,
            text: case["prompt"].as_str().unwrap().into(),
            images: vec![image(case["image"].as_str().unwrap())],
        }],
        params: params.clone(),
    };
    let a = cb::run(&mut m, &req).unwrap();
    assert_eq!(a.tokens, ids(&case["greedy_new_ids"]));
    let again = cb::run(&mut m, &req).unwrap();
    assert_eq!(a.tokens, again.tokens, "state leaked between requests");

    let text_only = Request {
        messages: vec![Message {
            role: Role::User,
            text: "caption en".into(),
            images: vec![],
        }],
        params,
    };
    let err = cb::run(&mut m, &text_only).err().unwrap().to_string();
    assert!(err.contains("needs an image"), "{err}");
}

#[test]
fn a_text_config_with_only_the_keys_the_real_repos_write_loads() {
    // google/paligemma-3b-*'s config.json leaves the GemmaConfig defaults out of text_config.
    let t = tempfile::tempdir().unwrap();
    let src = fixtures().join("paligemma");
    copy_dir(&src, t.path(), &[]);
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let text = cfg["text_config"].as_object_mut().unwrap();
    for k in [
        "attention_bias",
        "hidden_act",
        "hidden_activation",
        "rope_theta",
        "rope_parameters",
        "max_position_embeddings",
    ] {
        text.remove(k);
    }
    std::fs::write(t.path().join("config.json"), cfg.to_string()).unwrap();
    let mut m = PaliGemma::load(t.path(), DType::F32, &Device::Cpu).unwrap();
    let g = golden("paligemma");
    let case = &g["cases"][0];
    let rgb = cb::decode_image(&image(case["image"].as_str().unwrap())).unwrap();
    let enc = m.encode(case["prompt"].as_str().unwrap(), &[rgb]).unwrap();
    let logits = m.prefill_encoded(&enc).unwrap();
    check_logits(case, &logits, "paligemma with a minimal text_config");
}
