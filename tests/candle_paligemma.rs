//! The in-process PaliGemma against transformers' own outputs on the tiny checkpoint in
//! `tests/fixtures/paligemma`: prompt, token ids, pixel values, first-step logits (within 1e-3)
//! and 8 greedy tokens (exactly).

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
    let err = cb::run(&mut m, &text_only).err().unwrap();
    assert!(err.contains("needs an image"), "{err}");
}
