//! Moondream2's 2025 layout against the official torch reference (vikhyat/moondream
//! `moondream/torch` at 44146f1) on the tiny checkpoint in `tests/fixtures/moondream2-2025`:
//! tokens, preprocessing (tiling, Pillow-exact crops, bf16 normalisation), every vision stage,
//! first-step logits within 1e-3, 12 greedy tokens exactly, stopping at EOS, and the same answers
//! end to end through models.toml and the harness.
#![cfg(feature = "candle")]

mod common;
#[path = "common/golden.rs"]
mod golden;

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, IndexOp, Tensor};
use golden::{copy_dir, fixtures, floats, ids};
use serde_json::Value;
use sha2::{Digest, Sha256};
use vlmtest::backend::candle::moondream2025::crops::{Crops, pixel_lut};
use vlmtest::backend::candle::moondream2025::{Moondream2025, PREFIX, Task};
use vlmtest::backend::candle::{self as cb, Vlm};
use vlmtest::backend::{Message, Request, Role};
use vlmtest::config::GenParams;

fn dir() -> PathBuf {
    fixtures().join("moondream2-2025")
}

fn golden() -> Value {
    golden::golden("moondream2-2025")
}

fn model() -> Moondream2025 {
    load(&dir().join("model"))
}

fn load(model_dir: &Path) -> Moondream2025 {
    Moondream2025::load(
        model_dir,
        &dir().join("tokenizer/tokenizer.json"),
        false,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap()
}

fn rgb(rel: &str) -> image::RgbImage {
    image::open(dir().join(rel)).unwrap().to_rgb8()
}

/// The task of a golden case (a caption's length is its template word, the prompt's 4th id).
fn case_task(case: &Value) -> Task {
    match case["kind"].as_str().unwrap() {
        "caption" => Task::Caption(
            match case["prompt_token_ids"][3].as_u64().unwrap() {
                312 => "short",
                316 => "normal",
                307 => "long",
                other => panic!("unknown caption template word {other}"),
            }
            .into(),
        ),
        _ => Task::Query(case["question"].as_str().unwrap().into()),
    }
}

/// The crops the reference fed its encoder, from `inputs/`.
fn reference_crops(case: &Value) -> Crops {
    let p = &case["preprocessing"];
    let dump = &p["pixel_dump"];
    let global = rgb(dump["global_png"].as_str().unwrap());
    let local = rgb(dump["local_png"].as_str().unwrap());
    let mut images = vec![global];
    for o in dump["local_crop_origin_yx"].as_array().unwrap() {
        let (y, x) = (o[0].as_u64().unwrap() as u32, o[1].as_u64().unwrap() as u32);
        images.push(image::imageops::crop_imm(&local, x, y, 378, 378).to_image());
    }
    let t = ids(&p["tiling_hw"]);
    let hw = ids(&p["local_resize_hw"]);
    Crops {
        tiling: (t[0] as usize, t[1] as usize),
        local_size: (hw[0] as usize, hw[1] as usize),
        images,
    }
}

fn close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (*a as f64 - b).abs() <= tol,
            "{what}[{i}]: {a} vs {b} (tolerance {tol})"
        );
    }
}

/// A vision stage against the golden's summary: shape, the first values, the sum (within
/// 1e-5 · abs_mean · count), abs_mean, min and max (within 1e-4).
fn check_stage(t: &Tensor, g: &Value, shape: &[usize], what: &str) -> f64 {
    let want: Vec<usize> = ids(&g["shape"]).iter().map(|x| *x as usize).collect();
    assert_eq!(shape, want.as_slice(), "{what}: shape");
    let flat: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    let n = flat.len() as f64;
    let sum: f64 = flat.iter().map(|v| *v as f64).sum();
    let abs_mean = flat.iter().map(|v| v.abs() as f64).sum::<f64>() / n;
    let min = flat.iter().cloned().fold(f32::INFINITY, f32::min) as f64;
    let max = flat.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let g_abs = g["abs_mean"].as_f64().unwrap();
    let sum_tol = 1e-5 * g_abs * n;
    let d_sum = (sum - g["sum"].as_f64().unwrap()).abs();
    assert!(
        d_sum <= sum_tol,
        "{what}: sum {sum} vs {} (tolerance {sum_tol})",
        g["sum"]
    );
    for (name, got) in [("abs_mean", abs_mean), ("min", min), ("max", max)] {
        let w = g[name].as_f64().unwrap();
        assert!((got - w).abs() <= 1e-4, "{what}: {name} {got} vs {w}");
    }
    d_sum / (g_abs * n)
}

fn first8(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .unwrap()
        .narrow(0, 0, 8)
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn tokens_are_the_reference_tokens() {
    let g = golden();
    let m = model();
    let tok = m.tokenizer();
    for c in g["tokenizer_checks"].as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        let enc = tok.encode(text, true).unwrap();
        assert_eq!(enc.get_ids(), ids(&c["ids"]).as_slice(), "encode({text:?})");
        let ids = ids(&c["ids"]);
        assert_eq!(
            tok.decode(&ids, true).unwrap(),
            c["decoded"].as_str().unwrap()
        );
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            c["decoded_with_special"].as_str().unwrap()
        );
    }
    for case in g["cases"].as_array().unwrap() {
        let what = format!("case {}", case["id"]);
        if let Some(q) = case["question"].as_str() {
            let enc = tok.encode(q, true).unwrap();
            assert_eq!(
                enc.get_ids(),
                ids(&case["question_token_ids"]).as_slice(),
                "{what}"
            );
        }
        let with_image = case["kind"] != "query_text_only";
        let got = m.prompt_ids(&case_task(case), with_image).unwrap();
        assert_eq!(got, ids(&case["prompt_token_ids"]), "{what}: prompt ids");
        let start = case["prompt_start_position"].as_u64().unwrap() as usize;
        assert_eq!(start, if with_image { PREFIX } else { 0 }, "{what}");
    }
}

#[test]
fn prompts_choose_the_task() {
    assert_eq!(Task::parse("caption"), Task::Caption("normal".into()));
    assert_eq!(
        Task::parse(" caption short\n"),
        Task::Caption("short".into())
    );
    assert_eq!(Task::parse("caption long"), Task::Caption("long".into()));
    assert_eq!(
        Task::parse("caption this image, please"),
        Task::Query("caption this image, please".into())
    );
    assert_eq!(Task::parse("Caption"), Task::Query("Caption".into()));
    let m = model();
    let e = m
        .prompt_ids(&Task::Caption("huge".into()), true)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no caption length `huge` (this Moondream has: long, normal, short)"),
        "{e}"
    );
    let e = m
        .prompt_ids(&Task::Caption("short".into()), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("a caption needs an image"), "{e}");
}

#[test]
fn preprocessing_is_the_reference_byte_for_byte() {
    let g = golden();
    let lut = pixel_lut();
    let want_lut = floats(&g["meta"]["pixel_value_lut"]["values"]);
    assert_eq!(want_lut.len(), 256);
    for (u, (a, b)) in lut.iter().zip(&want_lut).enumerate() {
        assert_eq!(*a as f64, *b, "bf16 normalisation of {u}");
    }
    let m = model();
    for case in g["cases"].as_array().unwrap() {
        let Some(image) = case["image"].as_str() else {
            continue;
        };
        let what = format!("case {} ({image})", case["id"]);
        let p = &case["preprocessing"];
        let crops = m.crops(&rgb(&format!("images/{image}")));
        let t = ids(&p["tiling_hw"]);
        assert_eq!(
            crops.tiling,
            (t[0] as usize, t[1] as usize),
            "{what}: tiling"
        );
        assert_eq!(
            crops.images.len(),
            p["n_crops"].as_u64().unwrap() as usize,
            "{what}"
        );
        let hw = ids(&p["local_resize_hw"]);
        assert_eq!(crops.local_size, (hw[0] as usize, hw[1] as usize), "{what}");
        let shas: Vec<String> = crops
            .images
            .iter()
            .map(|i| {
                Sha256::digest(i.as_raw())
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect()
            })
            .collect();
        let want: Vec<&str> = p["crop_u8_sha256"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert_eq!(shas, want, "{what}: crops (Pillow LANCZOS byte for byte)");
        // The same crops as the dumped inputs.
        let reference = reference_crops(case);
        for (k, (a, b)) in crops.images.iter().zip(&reference.images).enumerate() {
            assert!(a == b, "{what}: crop {k} differs from inputs/");
        }
        let px = crops.pixels();
        let per = 3 * 378 * 378;
        for (k, (s, a)) in floats(&p["crop_value_sum"])
            .iter()
            .zip(floats(&p["crop_value_abs_sum"]))
            .enumerate()
        {
            let v = &px[k * per..(k + 1) * per];
            let sum: f64 = v.iter().map(|x| *x as f64).sum();
            let abs: f64 = v.iter().map(|x| x.abs() as f64).sum();
            assert!(
                (sum - s).abs() < 1e-6 && (abs - a).abs() < 1e-6,
                "{what} crop {k}: sums {sum} {abs} vs {s} {a}"
            );
        }
        for s in p["pixel_samples"].as_array().unwrap() {
            let at = |k: &str| s[k].as_u64().unwrap() as usize;
            let v = px[at("crop") * per + at("c") * 378 * 378 + at("y") * 378 + at("x")];
            assert_eq!(v as f64, s["value"].as_f64().unwrap(), "{what}: {s}");
        }
    }
}

#[test]
fn reproduces_the_reference_token_for_token_from_its_crops() {
    let g = golden();
    let mut m = model();
    let mut report = Vec::new();
    for case in g["cases"].as_array().unwrap() {
        let what = format!("case {} ({})", case["id"], case["kind"]);
        let ids_in = ids(&case["prompt_token_ids"]);
        let start = Instant::now();
        let embeds = if case.get("vision").is_some() {
            let crops = reference_crops(case);
            let px = m.pixel_tensor(&crops).unwrap();
            let s = m.encode_pixels(&px, crops.tiling).unwrap();
            let v = &case["vision"];
            let enc = &v["encoder_out"];
            let mut worst_sum = check_stage(
                &s.encoder_out,
                enc,
                s.encoder_out.dims(),
                &format!("{what}: encoder"),
            );
            close(
                &first8(&s.encoder_out.i(0).unwrap()),
                &floats(&enc["crop0_token0_first8"]),
                1e-4,
                &format!("{what}: encoder crop 0"),
            );
            let last = s.encoder_out.dim(0).unwrap() - 1;
            close(
                &first8(&s.encoder_out.i((last, 728)).unwrap()),
                &floats(&enc["last_crop_token728_first8"]),
                1e-4,
                &format!("{what}: encoder last crop"),
            );
            for (k, want) in floats(&enc["per_crop_sum"]).iter().enumerate() {
                let got: f32 = s
                    .encoder_out
                    .i(k)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar()
                    .unwrap();
                assert!(
                    (got as f64 - want).abs() < 1e-5 * 0.9 * 729.0 * 32.0,
                    "{what}: crop {k} sum {got} vs {want}"
                );
            }
            worst_sum = worst_sum.max(check_stage(
                &s.stitched,
                &v["reconstructed_grid"],
                s.stitched.dims(),
                &format!("{what}: stitched"),
            ));
            close(
                &first8(&s.stitched),
                &floats(&v["reconstructed_grid"]["first"]),
                1e-4,
                &format!("{what}: stitched"),
            );
            // The golden's pooled grid is channel-first [D, 27, 27]; ours is [27·27, D].
            let pooled_cf = s.pooled.t().unwrap().contiguous().unwrap();
            let d = s.pooled.dim(1).unwrap();
            worst_sum = worst_sum.max(check_stage(
                &pooled_cf,
                &v["pooled"],
                &[d, 27, 27],
                &format!("{what}: pooled"),
            ));
            close(
                &first8(&pooled_cf),
                &floats(&v["pooled"]["first"]),
                1e-4,
                &format!("{what}: pooled"),
            );
            let p = &v["projection_out"];
            worst_sum = worst_sum.max(check_stage(
                &s.embeddings,
                p,
                s.embeddings.dims(),
                &format!("{what}: projection"),
            ));
            close(
                &first8(&s.embeddings.i(0).unwrap()),
                &floats(&p["row0_first8"]),
                1e-4,
                &format!("{what}: projection row 0"),
            );
            close(
                &first8(&s.embeddings.i(728).unwrap()),
                &floats(&p["row728_first8"]),
                1e-4,
                &format!("{what}: projection row 728"),
            );
            report.push(format!(
                "{what}: vision sums within {worst_sum:.1e} of abs_mean·count"
            ));
            Some(s.embeddings)
        } else {
            None
        };
        let logits = m.prefill_ids(embeds.as_ref(), &ids_in).unwrap();
        assert_eq!(
            m.position(),
            case["prompt_start_position"].as_u64().unwrap() as usize + ids_in.len()
        );
        let got: Vec<f32> = logits.to_vec1().unwrap();
        let want = floats(&case["first_step"]["logits_full"]);
        assert_eq!(got.len(), want.len(), "{what}: vocabulary");
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(
            worst < 1e-3,
            "{what}: first-step logits differ by up to {worst}"
        );
        let argmax = logits.argmax(0).unwrap().to_scalar::<u32>().unwrap();
        assert_eq!(
            argmax as u64,
            case["first_step"]["argmax"].as_u64().unwrap(),
            "{what}: argmax"
        );
        // Greedy with the model's own step (which masks the answer marker after the first token).
        let mut tokens = vec![argmax];
        let mut step_worst: f64 = 0.0;
        for s in case["steps"].as_array().unwrap().iter().skip(1) {
            let l = m.step(*tokens.last().unwrap()).unwrap();
            let v: Vec<f32> = l.to_vec1().unwrap();
            assert_eq!(
                v[3],
                f32::NEG_INFINITY,
                "{what}: the answer marker is masked"
            );
            // The golden's first 16 logits are before the mask; compare the others.
            for (i, w) in floats(&s["logits_first16"]).iter().enumerate() {
                if i != 3 {
                    step_worst = step_worst.max((v[i] as f64 - w).abs());
                }
            }
            tokens.push(l.argmax(0).unwrap().to_scalar::<u32>().unwrap());
        }
        let elapsed = start.elapsed();
        assert!(
            step_worst < 1e-3,
            "{what}: later-step logits differ by up to {step_worst}"
        );
        let want_ids = ids(&case["generated_ids"]);
        let matching = tokens
            .iter()
            .zip(&want_ids)
            .take_while(|(a, b)| a == b)
            .count();
        assert_eq!(tokens, want_ids, "{what}: greedy ids");
        assert_eq!(
            m.tokenizer().decode(&tokens, true).unwrap(),
            case["decoded_text"].as_str().unwrap(),
            "{what}: text"
        );
        report.push(format!(
            "{what}: first-step logits within {worst:.2e}, later steps {step_worst:.2e}; {matching}/{} ids; {:.2} s",
            want_ids.len(),
            elapsed.as_secs_f64()
        ));
    }
    eprintln!("{}", report.join("\n"));
}

fn request(
    image: Option<&str>,
    prompt: &str,
    max_new_tokens: u32,
    temperature: f64,
    seed: Option<u64>,
) -> Request {
    let images = image
        .map(|i| vec![golden::image(&format!("moondream2-2025/images/{i}"))])
        .unwrap_or_default();
    Request {
        messages: vec![Message {
            role: Role::User,
            text: prompt.into(),
            images,
        }],
        params: GenParams {
            max_new_tokens,
            temperature,
            seed,
            system_prompt: None,
        },
    }
}

/// The prompt a vlmtest case gives for a golden case (the caption convention for captions).
fn case_prompt(case: &Value) -> String {
    match case_task(case) {
        Task::Caption(len) => format!("caption {len}"),
        Task::Query(q) => q,
    }
}

#[test]
fn the_generation_loop_answers_from_the_images_as_the_reference() {
    let g = golden();
    let mut m = model();
    for case in g["cases"].as_array().unwrap() {
        let what = format!("case {}", case["id"]);
        let req = request(case["image"].as_str(), &case_prompt(case), 12, 0.0, None);
        let a = cb::run(&mut m, &req).unwrap();
        assert_eq!(a.tokens, ids(&case["generated_ids"]), "{what}");
        let start = case["prompt_start_position"].as_u64().unwrap() as usize;
        assert_eq!(
            a.prompt_tokens,
            start + case["prompt_token_ids"].as_array().unwrap().len(),
            "{what}"
        );
    }
    // The conversation's last image and last question are what is asked.
    let case = &g["cases"][0];
    let mut req = request(
        Some("astronaut_wide.png"),
        "What is the person holding?",
        12,
        0.0,
        None,
    );
    req.messages.push(Message {
        role: Role::Assistant,
        text: "x".into(),
        images: vec![],
    });
    req.messages.push(Message {
        role: Role::User,
        text: case["question"].as_str().unwrap().into(),
        images: vec![golden::image("moondream2-2025/images/chelsea.png")],
    });
    assert_eq!(
        cb::run(&mut m, &req).unwrap().tokens,
        ids(&case["generated_ids"])
    );
}

#[test]
fn seeded_sampling_is_deterministic_and_masks_the_answer_marker() {
    let req = request(
        Some("chelsea.png"),
        "What color is the cat?",
        24,
        1.5,
        Some(7),
    );
    let a = cb::run(&mut model(), &req).unwrap();
    let b = cb::run(&mut model(), &req).unwrap();
    assert_eq!(a.tokens, b.tokens, "two loads, one seed");
    assert_eq!(a.tokens.len(), 24);
    let greedy = cb::run(
        &mut model(),
        &request(Some("chelsea.png"), "What color is the cat?", 24, 0.0, None),
    )
    .unwrap();
    assert_ne!(
        a.tokens, greedy.tokens,
        "sampling at temperature 1.5 is not greedy"
    );
    let other = cb::run(
        &mut model(),
        &request(
            Some("chelsea.png"),
            "What color is the cat?",
            24,
            1.5,
            Some(8),
        ),
    )
    .unwrap();
    assert_ne!(a.tokens, other.tokens, "another seed, another answer");
    // Whatever is sampled after the first token, it is never the answer marker.
    let mut m = model();
    let hot = request(
        Some("chelsea.png"),
        "What color is the cat?",
        1,
        5.0,
        Some(1),
    );
    let logits = m.prefill(&hot).unwrap().logits;
    let mut next = logits.argmax(0).unwrap().to_scalar::<u32>().unwrap();
    for _ in 0..8 {
        let l: Vec<f32> = m.step(next).unwrap().to_vec1().unwrap();
        assert_eq!(l[3], f32::NEG_INFINITY);
        next = (0..l.len())
            .filter(|&i| i != 3)
            .max_by(|&a, &b| l[a].total_cmp(&l[b]))
            .unwrap() as u32;
    }
}

/// A copy of the tiny checkpoint with `model.text.lm_head.bias[0]` (EOS) raised by `delta`, as
/// `tests/fixtures/moondream2-2025/make_eos_golden.py` does before running the reference.
fn eos_checkpoint(delta: f32) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    copy_dir(&dir().join("model"), t.path(), &["model.safetensors"]);
    let mut tensors =
        candle_core::safetensors::load(dir().join("model/model.safetensors"), &Device::Cpu)
            .unwrap();
    let name = "model.text.lm_head.bias";
    let bias = &tensors[name];
    let mut v: Vec<f32> = bias.to_dtype(DType::F32).unwrap().to_vec1().unwrap();
    v[0] += delta;
    let n = v.len();
    let patched = Tensor::from_vec(v, n, &Device::Cpu)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    tensors.insert(name.to_string(), patched);
    candle_core::safetensors::save(&tensors, t.path().join("model.safetensors")).unwrap();
    t
}

#[test]
fn stops_at_eos_where_the_reference_does() {
    let g: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("eos_golden.json")).unwrap())
            .unwrap();
    let delta = g["lm_head_bias0_delta"].as_f64().unwrap() as f32;
    let ckpt = eos_checkpoint(delta);
    let patched =
        candle_core::safetensors::load(ckpt.path().join("model.safetensors"), &Device::Cpu)
            .unwrap();
    let b0: Vec<f32> = patched["model.text.lm_head.bias"]
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(
        b0[0] as f64,
        g["lm_head_bias0_after"].as_f64().unwrap(),
        "the same patched bias as the reference's"
    );
    let mut m = load(ckpt.path());
    for case in g["cases"].as_array().unwrap() {
        let what = format!("eos case {}", case["id"]);
        let prompt = match case["kind"].as_str().unwrap() {
            "caption" => format!("caption {}", case["length"].as_str().unwrap()),
            _ => case["question"].as_str().unwrap().to_string(),
        };
        let req = request(
            case["image"].as_str(),
            &prompt,
            case["max_tokens"].as_u64().unwrap() as u32,
            0.0,
            None,
        );
        let a = cb::run(&mut m, &req).unwrap();
        let want = ids(&case["generated_ids"]);
        assert!(
            case["stopped_on_eos"].as_bool().unwrap(),
            "{what}: the golden stops at EOS"
        );
        assert!(
            want.len() < case["max_tokens"].as_u64().unwrap() as usize,
            "{what}"
        );
        assert_eq!(a.tokens, want, "{what}: ids up to EOS (not included)");
        assert_eq!(
            m.tokenizer().decode(&a.tokens, true).unwrap(),
            case["answer_text"].as_str().unwrap(),
            "{what}"
        );
    }
}

#[test]
fn a_broken_config_is_a_clear_error() {
    let t = tempfile::tempdir().unwrap();
    copy_dir(&dir().join("model"), t.path(), &[]);
    let cfg = std::fs::read_to_string(dir().join("model/config.json")).unwrap();
    let try_load = |cfg: &str| {
        std::fs::write(t.path().join("config.json"), cfg).unwrap();
        match Moondream2025::load(
            t.path(),
            &dir().join("tokenizer/tokenizer.json"),
            false,
            DType::F32,
            &Device::Cpu,
        ) {
            Ok(_) => panic!("must not load"),
            Err(e) => e.to_string(),
        }
    };
    let e = try_load(&cfg.replace("\"n_heads\": 2", "\"n_heads\": 0"));
    assert!(
        e.contains("config.json:") && e.contains("config.text.n_heads: is 0"),
        "{e}"
    );
    let e = try_load(
        &cfg.replace("\"n_heads\": 2", "\"n_heads\": 4")
            .replace("\"n_kv_heads\": 2", "\"n_kv_heads\": 4"),
    );
    assert!(e.contains("not a head size of 64"), "{e}");
    // The real repo's config.json: the real dimensions, which the tiny weights do not have.
    let e =
        try_load(r#"{"architectures": ["HfMoondream"], "config": {}, "model_type": "moondream1"}"#);
    assert!(e.contains("do not match Moondream's 2025 layout"), "{e}");
    // The model repo's own stale GPT-2 tokenizer.json is refused, naming the fix.
    std::fs::write(t.path().join("config.json"), &cfg).unwrap();
    std::fs::copy(
        fixtures().join("smolvlm/tokenizer.json"),
        t.path().join("tokenizer.json"),
    )
    .unwrap();
    let e = match Moondream2025::load(
        t.path(),
        &t.path().join("tokenizer.json"),
        true,
        DType::F32,
        &Device::Cpu,
    ) {
        Ok(_) => panic!("must not load"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("is not Moondream's starmie-v1 tokenizer")
            && e.contains("tokenizer_repo = \"moondream/starmie-v1\""),
        "{e}"
    );
}

#[test]
fn the_files_decide_the_layout() {
    let tok = dir().join("tokenizer/tokenizer.json");
    let m = vlmtest::backend::candle::moondream2025::load(
        &dir().join("model"),
        Some(&tok),
        DType::F32,
        &Device::Cpu,
    );
    assert!(m.is_ok(), "the 2025 layout loads");
    // Weights without the 2025 tensors go to the 2024 path (the 2024-03-06 port), which refuses
    // what it cannot read: here the tokenizer files lack the BOS token that revision's prompt
    // starts with.
    let t = tempfile::tempdir().unwrap();
    std::fs::write(
        t.path().join("config.json"),
        r#"{"model_type": "moondream1", "phi_config": {"model_type": "phi-msft"}}"#,
    )
    .unwrap();
    std::fs::copy(
        fixtures().join("smolvlm/tokenizer.json"),
        t.path().join("tokenizer.json"),
    )
    .unwrap();
    let mut tensors = std::collections::HashMap::new();
    tensors.insert(
        "text_model.transformer.embd.wte.weight".to_string(),
        Tensor::zeros((4, 4), DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, t.path().join("model.safetensors")).unwrap();
    let e = match vlmtest::backend::candle::moondream2025::load(
        t.path(),
        None,
        DType::F32,
        &Device::Cpu,
    ) {
        Ok(_) => panic!("must not load"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("no bos_token in tokenizer_config.json"),
        "the 2024 path refused it: {e}"
    );
}

#[test]
fn answers_end_to_end_through_models_toml_and_the_harness() {
    let g = golden();
    let p = common::Project::new();
    let images = p.path("suites/images");
    copy_dir(&dir().join("images"), &images, &[]);
    // A query, a caption and a text-only query (the two-crop image keeps it quick; the test
    // above runs every case from the images, nine-crop ones too).
    let cases: Vec<&Value> = [0, 4, 5].iter().map(|i| &g["cases"][*i]).collect();
    let mut suite = String::from("name: md\ndefaults: { snapshot: false }\ncases:\n");
    for case in &cases {
        suite.push_str(&format!("  - id: c{}\n", case["id"]));
        if let Some(i) = case["image"].as_str() {
            suite.push_str(&format!("    image: images/{i}\n"));
        }
        suite.push_str(&format!(
            "    question: {}\n    expect: {{ regex: \"(?s).\" }}\n",
            serde_json::to_string(&case_prompt(case)).unwrap()
        ));
    }
    p.write("suites/md.yaml", &suite);
    p.write(
        "models.toml",
        &format!(
            "[models.md]\nbackend = \"candle\"\narch = \"moondream2\"\npath = \"{}\"\ntokenizer = \"{}\"\ntext_only = true\nmax_new_tokens = 12\n",
            dir().join("model").display(),
            dir().join("tokenizer").display()
        ),
    );
    let run = p.run(&[], &[]);
    assert_eq!(run.code, Some(0), "{}", run.all());
    let r = p.report();
    for case in &cases {
        let name = format!("c{}", case["id"]);
        let got = r["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["case"] == name.as_str())
            .unwrap();
        assert_eq!(
            got["answer"].as_str().unwrap(),
            case["decoded_text"].as_str().unwrap().trim(),
            "{name}"
        );
        assert_eq!(got["turns"][0]["completion_tokens"], 12, "{name}");
    }
}

#[test]
fn a_missing_tokenizer_fails_and_text_only_is_declared() {
    let p = common::Project::new();
    copy_dir(&dir().join("images"), &p.path("suites/images"), &[]);
    p.suite(
        "s",
        "name: s\ndefaults: { snapshot: false }\ncases:\n  - id: cat\n    image: images/chelsea.png\n    question: What color is the cat?\n    expect: { regex: \"(?s).\" }\n  - id: words\n    question: Say hello.\n    expect: { regex: \"(?s).\" }\n",
    );
    let model = dir().join("model");
    p.write(
        "models.toml",
        &format!(
            "[defaults]\nmax_new_tokens = 2\n\n[models.a]\nbackend = \"candle\"\narch = \"moondream2\"\npath = \"{}\"\ntokenizer = \"nowhere\"\n\n[models.b]\nbackend = \"candle\"\narch = \"moondream2\"\npath = \"{}\"\ntokenizer = \"{}\"\n",
            model.display(),
            model.display(),
            dir().join("tokenizer/tokenizer.json").display()
        ),
    );
    let run = p.run(&[], &[]);
    assert_eq!(run.code, Some(101), "{}", run.all());
    assert_eq!(run.outcome("a::s::cat"), "FAILED");
    assert!(
        run.stdout
            .contains("nowhere is not there (expected a tokenizer.json"),
        "{}",
        run.all()
    );
    assert_eq!(run.outcome("b::s::cat"), "ok");
    // models.toml cannot see which layout the files have: text_only stays false unless declared.
    assert_eq!(run.outcome("b::s::words"), "ignored");
}
