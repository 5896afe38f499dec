//! 8-bit and 4-bit weights (`dtype = "q8_0"` / `"q4k"`, `src/backend/candle/quant.rs`) on the
//! tiny checkpoints of every architecture that has a quantized path: SmolVLM, LLaVA-NeXT,
//! Phi-3.5-V and Moondream2 (2025 layout).
//!
//! A quantized model does not reproduce the reference's f32 outputs token for token, so these
//! tests check behaviour against the reference's goldens (`tests/fixtures/*/golden.json`, made
//! by transformers or the model's own code in f32) instead:
//! - which tensors were quantized, and to what: every linear layer and the text embeddings, in
//!   the format asked for, or in the documented fallback where the fixture's widths (64, 128)
//!   are not a multiple of the block (q4k needs 256: the tiny decoders fall back to q8_0, while
//!   SmolVLM's connector and Moondream's MLP output layers, 256 wide, are real q4k);
//! - the first-step logits against the reference's f32 logits: close (cosine similarity), but
//!   not equal (the quantized kernels are in use);
//! - the prompt the model saw (its length) is the reference's: quantization touches weights only;
//! - answers: the generation loop runs and two runs give the same tokens (greedy is
//!   deterministic);
//! - a combination without a quantized path (PaliGemma, Moondream2's 2024 layout) is refused at
//!   load with a message naming the model, the dtype and what is supported; through models.toml
//!   and the harness too, where a quantized model's answers also match across two processes.

#![cfg(feature = "candle")]

mod common;
#[path = "common/golden.rs"]
mod golden;

use std::sync::Arc;

use candle_core::Device;
use golden::{fixtures, floats, ids, image};
use serde_json::Value;
use vlmtest::backend::candle::llava_next::LlavaNext;
use vlmtest::backend::candle::moondream2025::Moondream2025;
use vlmtest::backend::candle::phi3_v::Phi3V;
use vlmtest::backend::candle::quant::{Format, Precision, Quant};
use vlmtest::backend::candle::smolvlm::SmolVlm;
use vlmtest::backend::candle::{self as cb, Vlm};
use vlmtest::backend::{Message, Request, Role};
use vlmtest::config::GenParams;
use vlmtest::config::image::Image;

const QUANTS: [Quant; 2] = [Quant::Q8_0, Quant::Q4K];

fn request(messages: Vec<Message>, max_new_tokens: u32) -> Request {
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

fn user(text: &str, images: Vec<Arc<Image>>) -> Message {
    Message {
        role: Role::User,
        text: text.into(),
        images,
    }
}

/// A golden case as a request, with the reference's prompt length and first-step logits.
struct Case {
    request: Request,
    prompt_tokens: usize,
    logits: Vec<f64>,
}

/// The text between `start` and `end` of a golden prompt.
fn between(prompt: &str, start: &str, end: &str) -> String {
    let a = prompt.find(start).unwrap() + start.len();
    let b = prompt[a..].find(end).unwrap() + a;
    prompt[a..b].to_string()
}

/// Up to `n` golden cases of `arch` (the processor's defaults only).
fn cases(arch: &str, n: usize) -> Vec<Case> {
    let g = golden::golden(match arch {
        "phi3-v" => "phi3v",
        "moondream2" => "moondream2-2025",
        a => a,
    });
    let all = g["cases"].as_array().unwrap();
    let out: Vec<Case> = all
        .iter()
        .filter(|c| {
            c.get("processor_kwargs")
                .and_then(|k| k.as_object())
                .is_none_or(|k| k.is_empty())
        })
        .filter(|c| arch != "moondream2" || c["kind"] == "query")
        .take(n)
        .map(|c| case(arch, c))
        .collect();
    assert!(!out.is_empty(), "{arch}: no golden case");
    out
}

fn case(arch: &str, c: &Value) -> Case {
    match arch {
        "smolvlm" => Case {
            request: request(
                vec![user(
                    &between(
                        c["prompt"].as_str().unwrap(),
                        "<image>",
                        "<end_of_utterance>",
                    ),
                    vec![image(c["image"].as_str().unwrap())],
                )],
                8,
            ),
            prompt_tokens: ids(&c["input_ids"]).len(),
            logits: floats(&c["last_logits"]),
        },
        "llava-next" => Case {
            request: request(
                vec![user(
                    &between(c["prompt"].as_str().unwrap(), "<image>\n", " [/INST]"),
                    vec![image(c["image"].as_str().unwrap())],
                )],
                8,
            ),
            prompt_tokens: ids(&c["input_ids"]).len(),
            logits: floats(&c["last_logits"]),
        },
        "phi3-v" => {
            let messages = c["turns"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| Message {
                    role: match t["role"].as_str().unwrap() {
                        "user" => Role::User,
                        _ => Role::Assistant,
                    },
                    text: t["text"].as_str().unwrap().into(),
                    images: t["images"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|p| image(p.as_str().unwrap()))
                        .collect(),
                })
                .collect();
            Case {
                request: request(messages, 8),
                prompt_tokens: c["num_input_ids"].as_u64().unwrap() as usize,
                logits: floats(&c["last_logits"]),
            }
        }
        "moondream2" => {
            let images = c["image"]
                .as_str()
                .map(|i| vec![image(&format!("moondream2-2025/images/{i}"))])
                .unwrap_or_default();
            // The prompt's ids follow the image's positions (see candle_moondream2025.rs).
            let start = c["prompt_start_position"].as_u64().unwrap() as usize;
            Case {
                request: request(vec![user(c["question"].as_str().unwrap(), images)], 8),
                prompt_tokens: start + c["prompt_token_ids"].as_array().unwrap().len(),
                logits: floats(&c["first_step"]["logits_full"]),
            }
        }
        other => panic!("no architecture {other}"),
    }
}

fn load(arch: &str, p: Precision) -> Result<Box<dyn Vlm>, cb::Error> {
    let f = fixtures();
    let cpu = &Device::Cpu;
    Ok(match arch {
        "smolvlm" => Box::new(SmolVlm::load(&f.join("smolvlm"), p, cpu)?),
        "llava-next" => Box::new(LlavaNext::load(&f.join("llava-next"), p, cpu)?),
        "phi3-v" => Box::new(Phi3V::load(&f.join("phi3v"), p, cpu)?),
        "moondream2" => Box::new(Moondream2025::load(
            &f.join("moondream2-2025/model"),
            &f.join("moondream2-2025/tokenizer/tokenizer.json"),
            false,
            p,
            cpu,
        )?),
        other => panic!("no architecture {other}"),
    })
}

fn cosine(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * y).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|y| y.powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// How many tensors each fixture quantizes (linear layers, embeddings, LM head), and how many
/// of them are 256 wide (q4k proper; the others, 64 or 128 wide, fall back to q8_0 under q4k).
/// From the fixtures' config.json:
/// - smolvlm: SigLIP 2 layers × (q, k, v, o, fc1, fc2) + connector + Llama 2 × (q, k, v, o,
///   gate, up, down) + embeddings + LM head = 29; 256 wide: the connector (64 · 2²).
/// - llava-next: projector 2 + Mistral 2 × 7 + embeddings + LM head = 18 (the CLIP tower is
///   candle-transformers' and stays f32); none 256 wide.
/// - phi3-v: projector 2 + Phi-3 2 × (qkv, o, gate_up, down) + embeddings + LM head = 12; none.
/// - moondream2: vision patch_emb + 27 × (qkv, proj, fc1, fc2) (config.json names no
///   `enc_n_layers`: the reference's default, 27) + projection fc1, fc2 + text 3 × (qkv, proj,
///   fc1, fc2) + wte + lm_head = 125; 256 wide: the text's 3 fc2 (ff_dim 256). Its patch_emb
///   (588 = 3 · 14² inputs) is no multiple of 32: f32 under both.
fn expected(arch: &str) -> (usize, usize, usize) {
    // (tensors, q4k under q4k, f32 under both)
    match arch {
        "smolvlm" => (29, 1, 0),
        "llava-next" => (18, 0, 0),
        "phi3-v" => (12, 0, 0),
        "moondream2" => (125, 3, 1),
        other => panic!("no architecture {other}"),
    }
}

/// Loads `arch` quantized both ways and checks what the load did, the first-step logits against
/// the reference's, the prompt length, and that answers repeat.
fn quantized_answers(arch: &str) {
    let cases = cases(arch, 2);
    for q in QUANTS {
        let what = format!("{arch} {}", q.name());
        let mut m = load(arch, Precision::quantized(q)).unwrap();
        let s = m
            .quantization()
            .unwrap_or_else(|| panic!("{what}: no quantization summary"))
            .clone();
        let (total, q4k, dense) = expected(arch);
        assert_eq!(s.requested, q.name(), "{what}");
        assert_eq!(s.tensors.values().sum::<usize>(), total, "{what}: {s:?}");
        assert_eq!(s.count(Format::F32), dense, "{what}: {s:?}");
        match q {
            Quant::Q8_0 => {
                assert_eq!(s.count(Format::Q8_0), total - dense, "{what}: {s:?}");
                assert_eq!(s.fallbacks.len(), dense, "{what}: {s:?}");
            }
            Quant::Q4K => {
                assert_eq!(s.count(Format::Q4K), q4k, "{what}: {s:?}");
                assert_eq!(s.count(Format::Q8_0), total - q4k - dense, "{what}: {s:?}");
                assert_eq!(s.fallbacks.len(), total - q4k, "{what}: {s:?}");
                assert!(
                    s.fallbacks
                        .iter()
                        .all(|(_, w, f)| (w % 256 != 0) && (f != "q8_0" || w % 32 == 0)),
                    "{what}: {:?}",
                    s.fallbacks
                );
            }
        }
        // 8 bits: about a quarter of f32 (plus the f16 scales); 4 bits: less again.
        let f32_bytes: usize = s.params.values().sum::<usize>() * 4;
        assert!(
            s.bytes * 3 < f32_bytes,
            "{what}: {} of {f32_bytes} bytes",
            s.bytes
        );

        for (i, c) in cases.iter().enumerate() {
            let what = format!("{what} case {i}");
            let p = m.prefill(&c.request).unwrap();
            assert_eq!(p.prompt_tokens, c.prompt_tokens, "{what}: prompt length");
            let got: Vec<f32> = p.logits.to_vec1().unwrap();
            let cos = cosine(&got, &c.logits);
            let worst = got
                .iter()
                .zip(&c.logits)
                .map(|(a, b)| (*a as f64 - b).abs())
                .fold(0.0, f64::max);
            // Measured here (AVX2): q8_0 0.9937–0.9997, q4k 0.980–0.9997 (the tiny models'
            // weights are large, std 0.3, so errors grow layer by layer more than in trained
            // models); the bounds leave room for other CPUs' kernels (AVX-512-VNNI quantizes the
            // activations differently). A broken product lands far below.
            let min = match q {
                Quant::Q8_0 => 0.98,
                Quant::Q4K => 0.95,
            };
            eprintln!("{what}: cosine {cos:.6}, max |Δ| {worst:.2e} against the f32 reference");
            assert!(
                cos > min,
                "{what}: cosine {cos} with the reference's logits"
            );
            assert!(
                worst > 1e-5,
                "{what}: the logits are the f32 ones (|Δ| {worst})"
            );

            let a = cb::run(m.as_mut(), &c.request).unwrap();
            let b = cb::run(m.as_mut(), &c.request).unwrap();
            assert!(
                !a.tokens.is_empty() || a.stop.is_some(),
                "{what}: no answer"
            );
            assert_eq!(a.tokens, b.tokens, "{what}: two runs, two answers");
            assert_eq!(a.stop, b.stop, "{what}");
            assert_eq!(a.prompt_tokens, c.prompt_tokens, "{what}");
        }
    }
}

#[test]
fn smolvlm_answers_with_8_and_4_bit_weights() {
    quantized_answers("smolvlm");
}

#[test]
fn llava_next_answers_with_8_and_4_bit_weights() {
    quantized_answers("llava-next");
}

#[test]
fn phi3_v_answers_with_8_and_4_bit_weights() {
    quantized_answers("phi3-v");
}

#[test]
fn moondream2_answers_with_8_and_4_bit_weights() {
    quantized_answers("moondream2");
}

/// A dense load keeps no summary and reproduces the reference (the quantizer's dense path is
/// candle_nn's layers, unchanged).
#[test]
fn a_dense_load_is_unchanged() {
    for arch in ["smolvlm", "moondream2"] {
        let c = &cases(arch, 1)[0];
        let mut m = load(arch, candle_core::DType::F32.into()).unwrap();
        assert!(m.quantization().is_none(), "{arch}");
        let got: Vec<f32> = m.prefill(&c.request).unwrap().logits.to_vec1().unwrap();
        let worst = got
            .iter()
            .zip(&c.logits)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-3, "{arch}: f32 logits differ by {worst}");
    }
}

#[test]
fn moondream2_2024_has_no_quantized_path_and_says_so() {
    let dir = fixtures().join("moondream2024");
    for q in QUANTS {
        let e = match vlmtest::backend::candle::moondream2025::load(
            &dir,
            None,
            Precision::quantized(q),
            &Device::Cpu,
        ) {
            Ok(_) => panic!("moondream2024 loaded with {}", q.name()),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains(&format!("dtype = \"{}\" is not supported", q.name()))
                && e.contains("2024 layout")
                && e.contains("smolvlm, llava-next, phi3-v and moondream2 (its 2025 layout)"),
            "{e}"
        );
    }
}

/// Through models.toml and the harness: a q8_0 SmolVLM answers (and its snapshot, written by a
/// first run, matches in a second process under CI), a q4k PaliGemma fails its trials with the
/// reason.
#[test]
fn models_toml_quantizes_or_says_why_not() {
    let p = common::Project::new();
    golden::copy_dir(&fixtures().join("images"), &p.path("suites/images"), &[]);
    p.write(
        "suites/q.yaml",
        "name: q\ncases:\n  - id: one\n    image: images/gradient_96x64.png\n    question: What is shown in this image?\n    expect: { not_contains: \"\\u0000\" }\n",
    );
    p.write(
        "models.toml",
        &format!(
            "[defaults]\nmax_new_tokens = 6\n\n[models.smol-q8]\nbackend = \"candle\"\narch = \"smolvlm\"\npath = \"{}\"\ndtype = \"q8_0\"\n\n[models.pali-q4]\nbackend = \"candle\"\narch = \"paligemma\"\npath = \"{}\"\ndtype = \"q4k\"\n",
            fixtures().join("smolvlm").display(),
            fixtures().join("paligemma").display()
        ),
    );
    let run = p.run(&[], &[]);
    assert_eq!(run.outcome("smol-q8::q::one"), "ok", "{}", run.all());
    assert_eq!(run.outcome("pali-q4::q::one"), "FAILED", "{}", run.all());
    assert!(
        run.all()
            .contains("model `pali-q4`: dtype = \"q4k\" is not supported for arch paligemma")
            && run.all().contains(
                "quantized weights work with arch smolvlm, llava-next, phi3-v and moondream2"
            ),
        "{}",
        run.all()
    );
    let r = p.report();
    let case = r["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["model"] == "smol-q8")
        .unwrap();
    assert_eq!(case["turns"][0]["completion_tokens"], 6, "{case}");
    assert_eq!(case["snapshot"]["status"], "created", "{case}");

    // A second process, snapshots frozen: the same answer.
    let again = p.run(&["smol-q8"], &[("CI", "true")]);
    assert_eq!(again.code, Some(0), "{}", again.all());
    assert_eq!(again.outcome("smol-q8::q::one"), "ok", "{}", again.all());
    let r2 = p.report();
    assert_eq!(r2["cases"][0]["snapshot"]["status"], "matched", "{}", r2);
    assert_eq!(r2["cases"][0]["answer"], case["answer"]);
}
