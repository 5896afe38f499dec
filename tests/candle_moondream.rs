//! Moondream2 on a tiny candle-made checkpoint (Moondream's code lives on the Hub, so there is no
//! offline reference implementation): loading from a folder laid out like the repo,
//! preprocessing, the prompt, generation, and determinism.

#![cfg(feature = "candle")]

#[path = "common/golden.rs"]
mod golden;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::moondream;
use golden::{fixtures, image};
use vlmtest::backend::candle::moondream::{Moondream, SIDE, pixels, prompt};
use vlmtest::backend::candle::{self as cb, Vlm};
use vlmtest::backend::{Message, Request, Role};
use vlmtest::config::GenParams;

const CONFIG: &str = r#"{
  "architectures": ["Moondream"],
  "model_type": "moondream1",
  "phi_config": {
    "model_type": "phi-msft", "vocab_size": 360, "n_positions": 2048, "n_embd": 64,
    "n_layer": 2, "n_inner": null, "n_head": 4, "rotary_dim": 16,
    "activation_function": "gelu_pytorch_tanh", "layer_norm_epsilon": 1e-5,
    "tie_word_embeddings": false, "pad_vocab_size_multiple": 64
  },
  "vision_config": {
    "image_embedding_dim": 1152, "model_dim": 64, "hidden_dim": 128, "hidden_features": 64,
    "embed_len": 729, "embed_dim": 1152, "num_blocks": 1, "num_heads": 16,
    "act": "gelu_pytorch_tanh"
  }
}"#;

/// Deterministic values in [-1, 1) (xorshift).
fn noise(seed: u64, n: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A tiny moondream2 checkpoint (the tensor names and layout of vikhyatk/moondream2, made with
/// candle and seeded weights), with the byte-level BPE tokenizer of the SmolVLM fixture (which
/// has `<|endoftext|>`).
fn make_tiny(dir: &Path) {
    std::fs::write(dir.join("config.json"), CONFIG).unwrap();
    std::fs::copy(
        fixtures().join("smolvlm/tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    let cfg: moondream::Config = serde_json::from_str(CONFIG).unwrap();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    moondream::Model::new(&cfg, vb).unwrap();
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for (i, name) in names.into_iter().enumerate() {
        let var = &data[name];
        let shape = var.shape().clone();
        let n = shape.elem_count();
        let u = noise(i as u64 + 1, n);
        let fan_in = *shape.dims().last().unwrap() as f32;
        let values: Vec<f32> = if name.ends_with(".bias") {
            u.iter().map(|v| v * 0.05).collect()
        } else if name.contains("norm") || name.contains(".ln.") {
            u.iter().map(|v| 1.0 + v * 0.1).collect()
        } else if name.contains("wte") {
            u.clone()
        } else {
            u.iter().map(|v| v * 1.7 / fan_in.sqrt()).collect()
        };
        var.set(&Tensor::from_vec(values, shape, &Device::Cpu).unwrap())
            .unwrap();
    }
    drop(data);
    varmap.save(dir.join("model.safetensors")).unwrap();
}

fn request(img: &str, question: &str) -> Request {
    Request {
        messages: vec![Message {
            role: Role::User,
            text: question.into(),
            images: vec![image(img)],
        }],
        params: GenParams {
            max_new_tokens: 8,
            temperature: 0.0,
            seed: None,
            system_prompt: None,
        },
    }
}

#[test]
fn loads_a_repo_layout_and_generates_deterministically() {
    let t = tempfile::tempdir().unwrap();
    make_tiny(t.path());
    let mut m = Moondream::load(t.path(), DType::F32, &Device::Cpu).unwrap();
    let a = request("images/shapes_80x80.png", "What color is the square?");
    let first = cb::run(&mut m, &a).unwrap();
    assert!(!first.tokens.is_empty());
    // BOS + 729 image embeddings + the question's tokens.
    let text_tokens = m
        .tokenizer()
        .encode("\n\nQuestion: What color is the square?\n\nAnswer:", false)
        .unwrap()
        .len();
    assert_eq!(first.prompt_tokens, 1 + 729 + text_tokens);

    let b = request("images/gradient_96x64.png", "Describe it.");
    let la = m.prefill(&a).unwrap().logits.to_vec1::<f32>().unwrap();
    let lb = m.prefill(&b).unwrap().logits.to_vec1::<f32>().unwrap();
    assert_ne!(la, lb, "the image and question must change the answer");
    let again = cb::run(&mut m, &a).unwrap();
    assert_eq!(first.tokens, again.tokens, "state leaked between requests");
    // A fresh load gives the same answer too.
    let mut m2 = Moondream::load(t.path(), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(cb::run(&mut m2, &a).unwrap().tokens, first.tokens);
}

#[test]
fn the_image_is_resized_to_378_and_normalised() {
    let img = image::RgbImage::from_pixel(50, 30, image::Rgb([255, 0, 128]));
    let px = pixels(&img);
    assert_eq!(px.len(), 3 * SIDE * SIDE);
    let plane = SIDE * SIDE;
    assert!(px[..plane].iter().all(|v| (*v - 1.0).abs() < 1e-6));
    assert!(px[plane..2 * plane].iter().all(|v| (*v + 1.0).abs() < 1e-6));
    let mid = (128.0 / 255.0 - 0.5) / 0.5;
    assert!(px[2 * plane..].iter().all(|v| (*v - mid).abs() < 1e-6));
}

#[test]
fn earlier_turns_go_into_the_prompt_and_an_image_is_required() {
    let mut req = request("images/shapes_80x80.png", "What shapes are there?");
    req.messages.push(Message {
        role: Role::Assistant,
        text: "A square. ".into(),
        images: vec![],
    });
    req.messages.push(Message {
        role: Role::User,
        text: "Which is red?".into(),
        images: vec![],
    });
    assert_eq!(
        prompt(&req),
        "\n\nQuestion: What shapes are there?\n\nAnswer: A square.\n\nQuestion: Which is red?\n\nAnswer:"
    );

    let t = tempfile::tempdir().unwrap();
    make_tiny(t.path());
    let mut m = Moondream::load(t.path(), DType::F32, &Device::Cpu).unwrap();
    assert!(cb::run(&mut m, &req).is_ok());
    let text_only = Request {
        messages: vec![Message {
            role: Role::User,
            text: "Hello?".into(),
            images: vec![],
        }],
        params: req.params.clone(),
    };
    let err = cb::run(&mut m, &text_only).err().unwrap();
    assert!(err.contains("needs an image"), "{err}");
}

#[test]
fn weights_that_do_not_fit_the_config_are_an_error() {
    let t = tempfile::tempdir().unwrap();
    make_tiny(t.path());
    // The real repo's config.json carries no dimensions: moondream2's own are assumed, which the
    // tiny weights do not have.
    std::fs::write(
        t.path().join("config.json"),
        r#"{"model_type": "moondream1", "phi_config": {"model_type": "phi-msft"}}"#,
    )
    .unwrap();
    let err = Moondream::load(t.path(), DType::F32, &Device::Cpu)
        .err()
        .expect("must not load");
    assert!(err.contains("do not match moondream2's layout"), "{err}");
}
