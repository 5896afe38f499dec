//! Moondream2 at revision 2024-03-06 against its own reference code (vikhyat/moondream at commit
//! 53fbcbf, the repo's remote code of that revision), on the tiny checkpoint that code made:
//! `tests/fixtures/moondream2024/`, by `tests/fixtures/make_moondream2024.py` (see
//! tests/fixtures/README.md). Prompt ids, stop tokens, preprocessing bit for bit, image
//! embeddings, first-step logits, greedy ids, the stop at `<END>`'s tokens, the answer's clean-up,
//! a conversation through models.toml and the harness, and the real repo's nearly empty config
//! with the reference's default sizes and the real checkpoint's 578 tensors.

#![cfg(feature = "candle")]

mod common;
#[path = "common/golden.rs"]
mod golden;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use golden::{fixtures, floats, ids};
use serde_json::Value;
use sha2::{Digest, Sha256};
use vlmtest::backend::candle::moondream::{Moondream, PromptIds, SIDE, pixels, prompt};
use vlmtest::backend::candle::moondream2024::{self as arch, TextConfig, VisionDims};
use vlmtest::backend::candle::{self as cb, Vlm};
use vlmtest::backend::{Message, Request, Role};
use vlmtest::config::GenParams;
use vlmtest::config::image::ImageCache;

fn dir() -> PathBuf {
    fixtures().join("moondream2024")
}

fn golden() -> Value {
    golden::golden("moondream2024")
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Loading takes a moment; the tests share one model.
fn with_model<T>(f: impl FnOnce(&mut Moondream) -> T) -> T {
    static MODEL: Mutex<Option<Moondream>> = Mutex::new(None);
    let mut m = MODEL.lock().unwrap_or_else(|e| e.into_inner());
    let m = m.get_or_insert_with(|| Moondream::load(&dir(), DType::F32, &Device::Cpu).unwrap());
    f(m)
}

/// The request `answer_question` answers for a golden case: the history as earlier turns.
fn request(case: &Value, max_new_tokens: u32) -> Request {
    let image = ImageCache::default()
        .get(&root(), case["image"].as_str().unwrap())
        .unwrap();
    let mut messages = Vec::new();
    let history = case["chat_history"].as_str().unwrap();
    for turn in history
        .split_terminator("\n\n")
        .collect::<Vec<_>>()
        .chunks(2)
    {
        let q = turn[0].strip_prefix("Question: ").unwrap();
        let a = turn[1].strip_prefix("Answer: ").unwrap();
        messages.push(Message {
            role: Role::User,
            text: q.into(),
            images: vec![],
        });
        messages.push(Message {
            role: Role::Assistant,
            text: a.into(),
            images: vec![],
        });
    }
    messages.push(Message {
        role: Role::User,
        text: case["question"].as_str().unwrap().into(),
        images: vec![],
    });
    messages[0].images.push(image);
    Request {
        messages,
        params: GenParams {
            max_new_tokens,
            temperature: 0.0,
            seed: None,
            system_prompt: None,
        },
    }
}

fn all_cases(g: &Value) -> Vec<Value> {
    let mut v = g["cases"].as_array().unwrap().clone();
    v.extend(g["conversation"].as_array().unwrap().iter().cloned());
    v
}

fn max_new(g: &Value) -> u32 {
    g["max_new_tokens"].as_u64().unwrap() as u32
}

#[test]
fn the_prompt_its_token_ids_and_the_stop_tokens_are_the_references() {
    let g = golden();
    with_model(|m| {
        for case in all_cases(&g) {
            let req = request(&case, 1);
            let what = case["question"].as_str().unwrap();
            assert_eq!(prompt(&req), case["prompt"].as_str().unwrap(), "{what}");
            assert_eq!(
                m.prompt_ids(&req).unwrap(),
                PromptIds {
                    bos: case["bos"].as_u64().unwrap() as u32,
                    before_image: ids(&case["ids_before_image"]),
                    after_image: ids(&case["ids_after_image"]),
                },
                "{what}"
            );
            // `<END>` is three tokens (`<`, `END`, `>`); any of them stops the answer, and
            // `<|endoftext|>` does not.
            assert_eq!(m.eos(), ids(&case["eos_ids"]).as_slice(), "{what}");
        }
        assert_eq!(m.eos().len(), 3);
        let eot = m.tokenizer().token_to_id("<|endoftext|>").unwrap();
        assert!(!m.eos().contains(&eot));
    });
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn pixels_are_the_references_bit_for_bit_on_multi_colour_images() {
    let g = golden();
    let mut seen = std::collections::BTreeSet::new();
    for case in g["cases"].as_array().unwrap() {
        let path = case["image"].as_str().unwrap();
        if !seen.insert(path.to_string()) {
            continue;
        }
        let img = image::open(root().join(path)).unwrap().to_rgb8();
        let resized = vlmtest::backend::candle::resize_rgb(
            &img,
            SIDE,
            SIDE,
            vlmtest::resample::Filter::Bicubic,
        );
        assert_eq!(
            sha256(resized.as_raw()),
            case["resized_rgb_sha256"].as_str().unwrap(),
            "{path}: the 378×378 bicubic resize differs from Pillow's"
        );
        let px = pixels(&img);
        let want = &case["pixel_values"];
        // (the golden's values are f32s printed as f64; serde_json may parse them an ulp off)
        for (k, w) in floats(&want["every_997th"]).iter().enumerate() {
            assert_eq!(px[k * 997], *w as f32, "{path}: pixel value {}", k * 997);
        }
        let bytes: Vec<u8> = px.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            sha256(&bytes),
            case["pixel_values_f32_sha256"].as_str().unwrap(),
            "{path}: pixel values differ from the reference's in some bit (sum {} vs {})",
            px.iter().map(|v| *v as f64).sum::<f64>(),
            want["sum"]
        );
    }
    assert_eq!(seen.len(), 3);
}

#[test]
fn image_embeddings_match_the_reference() {
    let g = golden();
    with_model(|m| {
        for case in g["cases"].as_array().unwrap().iter().step_by(2) {
            let path = case["image"].as_str().unwrap();
            let img = image::open(root().join(path)).unwrap().to_rgb8();
            let e = m.image_embeds(&img).unwrap();
            assert_eq!(e.dims(), &[1, 729, 64]);
            let flat: Vec<f32> = e.flatten_all().unwrap().to_vec1().unwrap();
            let want = &case["image_embeds"];
            let worst = floats(&want["every_997th"])
                .iter()
                .enumerate()
                .map(|(k, w)| (flat[k * 997] as f64 - w).abs())
                .fold(0.0, f64::max);
            assert!(worst < 1e-4, "{path}: image embeddings differ by {worst}");
            let sum: f64 = flat.iter().map(|v| *v as f64).sum();
            let want_sum = want["sum"].as_f64().unwrap();
            assert!(
                (sum - want_sum).abs() < 1e-2,
                "{path}: sum {sum} vs {want_sum}"
            );
        }
    });
}

#[test]
fn first_step_logits_and_greedy_ids_are_the_references_with_the_stop_at_end_tokens() {
    let g = golden();
    let n = max_new(&g);
    let mut stops = BTreeMap::new();
    with_model(|m| {
        for case in all_cases(&g) {
            let what = format!("{} | {}", case["image"], case["question"]);
            let req = request(&case, n);
            let pre = m.prefill(&req).unwrap();
            assert_eq!(
                pre.prompt_tokens as u64,
                case["prompt_len"].as_u64().unwrap(),
                "{what}"
            );
            let mut c = case.clone();
            c["last_logits"] = case["first_logits"].clone();
            golden::check_logits(&c, &pre.logits, &what);

            let answer = cb::run(m, &req).unwrap();
            let mut got = answer.tokens.clone();
            got.extend(answer.stop);
            assert_eq!(got, ids(&case["greedy_ids"]), "{what}");
            let stopped = case["stopped_at_eos"].as_bool().unwrap();
            assert_eq!(answer.stop.is_some(), stopped, "{what}");
            if let Some(s) = answer.stop {
                *stops
                    .entry(m.tokenizer().id_to_token(s).unwrap())
                    .or_insert(0) += 1;
            }
            assert_eq!(
                m.answer_text(&answer.tokens, answer.stop).unwrap(),
                case["answer"].as_str().unwrap(),
                "{what}"
            );
        }
    });
    // The goldens stop once at `<` (cleaned away) and once at `END` (kept, as the reference
    // keeps it), besides the answers that run to max_new_tokens.
    assert_eq!(stops.get("<"), Some(&2), "{stops:?}");
    assert_eq!(stops.get("END"), Some(&1), "{stops:?}");
}

#[test]
fn the_answer_is_cleaned_up_as_answer_question_does() {
    let g = golden();
    with_model(|m| {
        for p in g["post_processing"].as_array().unwrap() {
            let mut tokens = ids(&p["ids"]);
            let stop = if p["stopped_at_eos"].as_bool().unwrap() {
                tokens.pop()
            } else {
                None
            };
            assert_eq!(
                m.answer_text(&tokens, stop).unwrap(),
                p["answer"].as_str().unwrap(),
                "{:?}",
                p["text"]
            );
        }
    });
}

/// A suite of golden questions through models.toml (`path = ...`) and the harness: the answers
/// in report.json are the reference's, the conversation's turns included.
#[test]
fn goldens_through_models_toml_and_the_harness() {
    let g = golden();
    let p = common::Project::new();
    for img in [
        "suites/images/chelsea.png",
        "tests/fixtures/images/shapes_80x80.png",
    ] {
        let name = PathBuf::from(img);
        std::fs::copy(
            root().join(img),
            p.path("suites/images").join(name.file_name().unwrap()),
        )
        .unwrap();
    }
    let q = |v: &Value| serde_json::to_string(v.as_str().unwrap()).unwrap();
    let image = |v: &Value| {
        let name = PathBuf::from(v.as_str().unwrap());
        format!("images/{}", name.file_name().unwrap().to_str().unwrap())
    };
    let mut suite = String::from("name: md\ncases:\n");
    let singles: Vec<&Value> = g["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["chat_history"] == "")
        .collect();
    for (i, c) in singles.iter().enumerate() {
        suite.push_str(&format!(
            "  - id: c{i}\n    image: {}\n    question: {}\n    expect: {{ exact: {} }}\n",
            image(&c["image"]),
            q(&c["question"]),
            q(&c["answer"])
        ));
    }
    let conv = g["conversation"].as_array().unwrap();
    suite.push_str("  - id: conversation\n    turns:\n");
    for (i, t) in conv.iter().enumerate() {
        let img = if i == 0 {
            format!("image: {}, ", image(&t["image"]))
        } else {
            String::new()
        };
        suite.push_str(&format!(
            "      - {{ {img}question: {}, expect: {{ exact: {} }} }}\n",
            q(&t["question"]),
            q(&t["answer"])
        ));
    }
    p.suite("md", &suite);
    p.write(
        "models.toml",
        &format!(
            "[models.md]\nbackend = \"candle\"\narch = \"moondream2\"\npath = \"{}\"\nmax_new_tokens = {}\n",
            dir().display(),
            max_new(&g)
        ),
    );
    let run = p.run(&[], &[]);
    assert_eq!(run.code, Some(0), "{}", run.all());
    for i in 0..singles.len() {
        assert_eq!(run.outcome(&format!("md::md::c{i}")), "ok", "{}", run.all());
    }
    assert_eq!(run.outcome("md::md::conversation"), "ok", "{}", run.all());

    let r = p.report();
    for case in r["cases"].as_array().unwrap() {
        let id = case["case"].as_str().unwrap();
        let want: Vec<&Value> = match id.strip_prefix('c').and_then(|i| i.parse::<usize>().ok()) {
            Some(i) => vec![singles[i]],
            None => conv.iter().collect(),
        };
        let turns = case["turns"].as_array().unwrap();
        assert_eq!(turns.len(), want.len(), "{case}");
        for (t, w) in turns.iter().zip(want) {
            assert_eq!(t["answer"], w["answer"], "{id}");
            let greedy = w["greedy_ids"].as_array().unwrap().len() as u64;
            let stopped = w["stopped_at_eos"].as_bool().unwrap() as u64;
            assert_eq!(t["completion_tokens"], greedy - stopped, "{id}");
            assert_eq!(t["prompt_tokens"], w["prompt_len"], "{id}");
        }
    }
}

#[test]
fn the_real_config_gives_the_references_default_sizes() {
    let g = golden();
    let real = &g["real_layout"];
    let config: Value = serde_json::from_str(real["config_json"].as_str().unwrap()).unwrap();
    let c = TextConfig::from_config(&config, "config.json").unwrap();
    assert_eq!(c, TextConfig::default());
    let want = &real["text_config"];
    assert_eq!(c.vocab_size as u64, want["vocab_size"].as_u64().unwrap());
    assert_eq!(c.hidden_size as u64, want["hidden_size"].as_u64().unwrap());
    assert_eq!(
        c.intermediate_size as u64,
        want["intermediate_size"].as_u64().unwrap()
    );
    assert_eq!(
        c.num_hidden_layers as u64,
        want["num_hidden_layers"].as_u64().unwrap()
    );
    assert_eq!(
        c.num_attention_heads as u64,
        want["num_attention_heads"].as_u64().unwrap()
    );
    assert_eq!(want["num_key_value_heads"], want["num_attention_heads"]);
    assert_eq!(want["hidden_act"], "gelu_new");
    assert_eq!(c.hidden_act, arch::Act::GeluTanh);
    assert_eq!(
        c.max_position_embeddings as u64,
        want["max_position_embeddings"].as_u64().unwrap()
    );
    assert_eq!(c.layer_norm_eps, want["layer_norm_eps"].as_f64().unwrap());
    assert_eq!(c.rope_theta, want["rope_theta"].as_f64().unwrap());
    assert_eq!(
        c.partial_rotary_factor,
        want["partial_rotary_factor"].as_f64().unwrap()
    );
    assert_eq!(c.rotary_dim(), 32);

    let shapes: BTreeMap<String, Vec<usize>> = real["tensors"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), floats(v).iter().map(|d| *d as usize).collect()))
        .collect();
    assert_eq!(shapes.len(), 578);
    let v = VisionDims::from_shapes(|n| shapes.get(n).cloned()).unwrap();
    assert_eq!(v, VisionDims::REAL);

    // The loader asks for exactly the real checkpoint's tensors, each with its shape (the
    // tensors are stand-ins: a zero broadcast to the shape, nothing allocated).
    let requested = Mutex::new(BTreeMap::new());
    let vb = candle_nn::VarBuilder::from_backend(
        Box::new(Recording(&requested, &shapes)),
        DType::F32,
        Device::Cpu,
    );
    arch::Model::load(&c, &v, vb).unwrap();
    let requested = requested.into_inner().unwrap();
    assert_eq!(requested, shapes);
}

/// A weights backend that records what is asked for and hands out zeros of the shape asked.
struct Recording<'a>(
    &'a Mutex<BTreeMap<String, Vec<usize>>>,
    &'a BTreeMap<String, Vec<usize>>,
);

impl SimpleBackend for Recording<'_> {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0
            .lock()
            .unwrap()
            .insert(name.to_string(), s.dims().to_vec());
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let s = self.1.get(name).cloned().unwrap_or_default();
        self.get(Shape::from(s), name, candle_nn::Init::Const(0.), dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.1.contains_key(name)
    }
}

fn text_request(text: &str, with_image: bool) -> Request {
    let mut images = Vec::new();
    if with_image {
        images.push(
            ImageCache::default()
                .get(&root(), "suites/images/horse.png")
                .unwrap(),
        );
    }
    Request {
        messages: vec![Message {
            role: Role::User,
            text: text.into(),
            images,
        }],
        params: GenParams {
            max_new_tokens: 2,
            temperature: 0.0,
            seed: None,
            system_prompt: None,
        },
    }
}

#[test]
fn an_answer_needs_an_image_and_a_question_may_not_carry_the_image_tag() {
    with_model(|m| {
        let err = cb::run(m, &text_request("Hello?", false))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("needs an image"), "{err}");
        let err = cb::run(m, &text_request("What is <image> here?", true))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("`<image>`"), "{err}");
    });
}

#[test]
fn bad_configs_and_mismatched_weights_are_clear_errors() {
    let load = |config: &str| {
        let t = tempfile::tempdir().unwrap();
        golden::copy_dir(&dir(), t.path(), &["golden.json"]);
        std::fs::write(t.path().join("config.json"), config).unwrap();
        Moondream::load(t.path(), DType::F32, &Device::Cpu)
            .err()
            .expect("must not load")
            .to_string()
    };
    let err = load(r#"{"phi_config": {"hidden_size": "64"}}"#);
    assert!(
        err.contains("config.json: phi_config.hidden_size is \"64\" (expected a positive integer)"),
        "{err}"
    );
    let err = load(r#"{"phi_config": {"qk_layernorm": true}}"#);
    assert!(err.contains("phi_config.qk_layernorm is true"), "{err}");
    let err = load(r#"{"phi_config": {"hidden_act": "relu"}}"#);
    assert!(err.contains("expected one of: gelu_new"), "{err}");
    let err = load("{ not json");
    assert!(err.contains("config.json:1"), "{err}");
    // The real repo's config.json: PhiConfig's sizes, which the tiny weights do not have.
    let g = golden();
    let err = load(g["real_layout"]["config_json"].as_str().unwrap());
    assert!(
        err.contains("do not match moondream2's 2024 layout") && err.contains("config.json"),
        "{err}"
    );
}

#[test]
fn vision_sizes_come_from_the_tensors() {
    let base = |name: &str| -> Option<Vec<usize>> {
        let v = "vision_encoder.encoder.model.visual";
        match name {
            n if n == format!("{v}.patch_embed.linear.weight") => Some(vec![576, 588]),
            n if n.starts_with(&format!("{v}.blocks.")) && n.ends_with(".norm1.weight") => {
                let i: usize = n.split('.').nth(5).unwrap().parse().unwrap();
                (i < 3).then(|| vec![576])
            }
            n if n == format!("{v}.blocks.0.mlp.fc1.weight") => Some(vec![300, 576]),
            "vision_encoder.projection.mlp.fc1.weight" => Some(vec![256, 576]),
            _ => None,
        }
    };
    assert_eq!(
        VisionDims::from_shapes(base).unwrap(),
        VisionDims {
            width: 576,
            depth: 3,
            heads: 8,
            mlp: 300,
            projection: 256
        }
    );
    let narrow = |name: &str| {
        if name.ends_with("patch_embed.linear.weight") {
            Some(vec![100, 588])
        } else {
            base(name)
        }
    };
    let err = VisionDims::from_shapes(narrow).unwrap_err();
    assert!(
        err.contains("not a multiple of moondream2's head size 72"),
        "{err}"
    );
    let err = VisionDims::from_shapes(|_| None).unwrap_err();
    assert!(err.contains("patch_embed.linear.weight"), "{err}");
}
