//! The in-process SmolVLM against transformers' own outputs on the tiny checkpoint in
//! `tests/fixtures/smolvlm` (made by `tests/fixtures/make_fixtures.py`): the expanded prompt,
//! token ids, pixel values, first-step logits (within 1e-3) and 8 greedy tokens (exactly), with
//! image splitting on and off.

#![cfg(feature = "candle")]

#[path = "common/golden.rs"]
mod golden;

use std::sync::Arc;

use candle_core::{DType, Device};
use golden::*;
use vlmtest::backend::candle::smolvlm::SmolVlm;
use vlmtest::backend::candle::{self as cb, Vlm};
use vlmtest::backend::{Message, Request, Role};
use vlmtest::config::GenParams;
use vlmtest::config::image::Image;

fn model() -> SmolVlm {
    SmolVlm::load(&fixtures().join("smolvlm"), DType::F32, &Device::Cpu).unwrap()
}

/// The question of a golden prompt (`...User:<image>QUESTION<end_of_utterance>...`).
fn question(prompt: &str) -> String {
    let start = prompt.find("<image>").unwrap() + "<image>".len();
    let end = prompt.find("<end_of_utterance>").unwrap();
    prompt[start..end].to_string()
}

fn request(img: Arc<Image>, text: &str, max_new_tokens: u32) -> Request {
    Request {
        messages: vec![Message {
            role: Role::User,
            text: text.into(),
            images: vec![img],
        }],
        params: GenParams {
            max_new_tokens,
            temperature: 0.0,
            seed: None,
            system_prompt: None,
        },
    }
}

#[test]
fn reproduces_transformers_token_for_token() {
    let g = golden("smolvlm");
    let mut m = model();
    let cases = g["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 5);
    for (i, case) in cases.iter().enumerate() {
        let what = format!("smolvlm case {i}");
        let split = case["processor_kwargs"]
            .get("do_image_splitting")
            .and_then(|v| v.as_bool());
        let img = image(case["image"].as_str().unwrap());
        let rgb = cb::decode_image(&img).unwrap();
        let enc = m
            .encode(case["prompt"].as_str().unwrap(), &[rgb], split)
            .unwrap();
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
fn the_chat_template_and_generation_loop_give_the_same_tokens() {
    let g = golden("smolvlm");
    let mut m = model();
    for case in g["cases"].as_array().unwrap() {
        if case["processor_kwargs"].get("do_image_splitting").is_some() {
            continue; // the backend uses the repo's settings
        }
        let prompt = case["prompt"].as_str().unwrap();
        let req = request(image(case["image"].as_str().unwrap()), &question(prompt), 8);
        let answer = cb::run(&mut m, &req).unwrap();
        assert_eq!(answer.tokens, ids(&case["greedy_new_ids"]));
        assert_eq!(
            answer.prompt_tokens as u64,
            case["num_input_ids"].as_u64().unwrap()
        );
    }
}

#[test]
fn the_cache_starts_empty_for_every_request() {
    let mut m = model();
    let a = request(
        image("images/gradient_96x64.png"),
        "What color is the square?",
        6,
    );
    let b = request(
        image("images/shapes_80x80.png"),
        "Can you describe this image?",
        6,
    );
    let first = cb::run(&mut m, &a).unwrap().tokens;
    let other = cb::run(&mut m, &b).unwrap().tokens;
    let again = cb::run(&mut m, &a).unwrap().tokens;
    assert_eq!(first, again, "an earlier request leaked into a later one");
    assert_ne!(
        first, other,
        "different images and questions gave the same answer"
    );
}

#[test]
fn sampling_is_seeded_and_text_only_prompts_work() {
    let mut m = model();
    let mut req = request(image("images/shapes_80x80.png"), "Describe it.", 8);
    req.params.temperature = 1.5;
    req.params.seed = Some(7);
    let a = cb::run(&mut m, &req).unwrap().tokens;
    let b = cb::run(&mut m, &req).unwrap().tokens;
    assert_eq!(a, b, "the same seed must give the same sample");
    req.params.seed = Some(8);
    let c = cb::run(&mut m, &req).unwrap().tokens;
    req.params.temperature = 0.0;
    let greedy = cb::run(&mut m, &req).unwrap().tokens;
    assert!(
        a != greedy || c != greedy,
        "sampling at 1.5 never left the greedy path"
    );

    let text_only = Request {
        messages: vec![Message {
            role: Role::User,
            text: "What is two plus two?".into(),
            images: vec![],
        }],
        params: req.params.clone(),
    };
    let t = cb::run(&mut m, &text_only).unwrap();
    assert_eq!(t.tokens.len(), 8);
    assert!(t.prompt_tokens > 5);
}

#[test]
fn multi_turn_conversations_keep_their_images_and_history() {
    let mut m = model();
    let img = image("images/shapes_80x80.png");
    let mut req = request(img.clone(), "What shapes are there?", 4);
    let first = cb::run(&mut m, &req).unwrap();
    req.messages.push(Message {
        role: Role::Assistant,
        text: "A square and a circle.".into(),
        images: vec![],
    });
    req.messages.push(Message {
        role: Role::User,
        text: "And their colours?".into(),
        images: vec![],
    });
    let second = cb::run(&mut m, &req).unwrap();
    // The whole conversation, image tokens included, is in the second prompt.
    assert!(second.prompt_tokens > first.prompt_tokens + 10);
    let tokenizer = m.tokenizer().clone();
    let tmpl = vlmtest::backend::candle::template::ChatTemplate::load(&fixtures().join("smolvlm"))
        .unwrap();
    let text = tmpl
        .render(
            &vlmtest::backend::candle::template::ChatTemplate::messages(&req),
            true,
        )
        .unwrap();
    assert_eq!(
        text,
        "<|im_start|>User:<image>What shapes are there?<end_of_utterance>\n\
         Assistant: A square and a circle.<end_of_utterance>\n\
         User: And their colours?<end_of_utterance>\nAssistant:"
    );
    assert!(tokenizer.token_to_id("<image>").is_some());
}

#[test]
fn a_broken_checkpoint_is_an_error_not_a_panic() {
    let t = tempfile::tempdir().unwrap();
    let src = fixtures().join("smolvlm");
    copy_dir(&src, t.path(), &[]);
    // A config whose text model is wider than the weights.
    let cfg = std::fs::read_to_string(t.path().join("config.json")).unwrap();
    std::fs::write(
        t.path().join("config.json"),
        cfg.replace(
            "\"intermediate_size\": 128,\n    \"max_position",
            "\"intermediate_size\": 256,\n    \"max_position",
        ),
    )
    .unwrap();
    let err = SmolVlm::load(t.path(), DType::F32, &Device::Cpu)
        .err()
        .expect("a mismatched config must not load")
        .to_string();
    assert!(err.contains("do not match config.json"), "{err}");

    std::fs::write(t.path().join("config.json"), "{\"text_config\": 3}").unwrap();
    let err = SmolVlm::load(t.path(), DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("config.json:1"), "{err}");

    std::fs::remove_file(t.path().join("model.safetensors")).unwrap();
    std::fs::copy(src.join("config.json"), t.path().join("config.json")).unwrap();
    let err = SmolVlm::load(t.path(), DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn a_sharded_checkpoint_loads_through_its_index() {
    let t = tempfile::tempdir().unwrap();
    let src = fixtures().join("smolvlm");
    copy_dir(&src, t.path(), &["model.safetensors"]);
    // Split the weights in two shards, as the Hub's large repos are, with the index.
    let all = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (part, file) in [
        (a, "model-00001-of-00002.safetensors"),
        (b, "model-00002-of-00002.safetensors"),
    ] {
        let tensors: std::collections::HashMap<String, candle_core::Tensor> = part
            .iter()
            .map(|n| ((*n).clone(), all[*n].clone()))
            .collect();
        candle_core::safetensors::save(&tensors, t.path().join(file)).unwrap();
        for n in part.iter() {
            map.insert((*n).clone(), serde_json::Value::String(file.into()));
        }
    }
    std::fs::write(
        t.path().join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    let mut sharded = SmolVlm::load(t.path(), DType::F32, &Device::Cpu).unwrap();
    let mut single = model();
    let req = request(
        image("images/shapes_80x80.png"),
        "What color is the square?",
        8,
    );
    assert_eq!(
        cb::run(&mut sharded, &req).unwrap().tokens,
        cb::run(&mut single, &req).unwrap().tokens
    );
}
