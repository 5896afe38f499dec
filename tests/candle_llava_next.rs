//! The in-process LLaVA-NeXT against transformers' own outputs on the tiny checkpoint in
//! `tests/fixtures/llava-next` (anyres tiling with unpadding and row newlines, the Mistral
//! `[INST]` template): prompt, token ids, pixel values, first-step logits (within 1e-3) and 8
//! greedy tokens (exactly).

#![cfg(feature = "candle")]

#[path = "common/golden.rs"]
mod golden;

use candle_core::{DType, Device, Tensor};
use golden::*;
use vlmtest::backend::candle::llava_next::{LlavaNext, select_best_resolution};
use vlmtest::backend::candle::{self as cb, Vlm};
use vlmtest::backend::{Message, Request, Role};
use vlmtest::config::GenParams;

fn model() -> LlavaNext {
    LlavaNext::load(&fixtures().join("llava-next"), DType::F32, &Device::Cpu).unwrap()
}

/// The question of a golden prompt (`[INST] <image>\nQUESTION [/INST]`).
fn question(prompt: &str) -> String {
    prompt
        .trim_start_matches("[INST] <image>\n")
        .trim_end_matches(" [/INST]")
        .to_string()
}

#[test]
fn reproduces_transformers_token_for_token() {
    let g = golden("llava-next");
    let mut m = model();
    for (i, case) in g["cases"].as_array().unwrap().iter().enumerate() {
        let what = format!("llava-next case {i}");
        let img = image(case["image"].as_str().unwrap());
        let rgb = cb::decode_image(&img).unwrap();
        let enc = m.encode(case["prompt"].as_str().unwrap(), &[rgb]).unwrap();
        assert_eq!(enc.text, case["expanded_text"].as_str().unwrap(), "{what}");
        assert_eq!(enc.ids, ids(&case["input_ids"]), "{what}: input ids");
        let p = &enc.images[0];
        let px = Tensor::from_vec(p.pixels.clone(), (p.count, 3, 32, 32), &Device::Cpu).unwrap();
        check_pixels(case, &px, &what);
        let logits = m.prefill_encoded(&enc).unwrap();
        check_logits(case, &logits, &what);
        let tokens = greedy(logits, 8, |t| m.step(t).unwrap());
        assert_eq!(tokens, ids(&case["greedy_new_ids"]), "{what}: greedy ids");

        // Through the chat template and the generation loop.
        let req = Request {
            messages: vec![Message {
                role: Role::User,
                text: question(case["prompt"].as_str().unwrap()),
                images: vec![img],
            }],
            params: GenParams {
                max_new_tokens: 8,
                temperature: 0.0,
                seed: None,
                system_prompt: None,
            },
        };
        let a = cb::run(&mut m, &req).unwrap();
        assert_eq!(
            a.tokens,
            ids(&case["greedy_new_ids"]),
            "{what}: via the template"
        );
    }
}

#[test]
fn the_best_grid_resolution_is_transformers_choice() {
    // llava-v1.6's real pinpoints (height, width); expectations from transformers 5.23's
    // `select_best_resolution`.
    let pins = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]];
    assert_eq!(select_best_resolution(300, 451, &pins), (336, 672));
    assert_eq!(select_best_resolution(1000, 1000, &pins), (672, 672));
    assert_eq!(select_best_resolution(200, 900, &pins), (336, 1008));
    assert_eq!(select_best_resolution(900, 200, &pins), (1008, 336));
    assert_eq!(select_best_resolution(100, 200, &pins), (336, 672));
}
