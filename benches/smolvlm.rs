//! candle vs PyTorch eager on the full-size SmolVLM-256M-Instruct architecture (random weights),
//! CPU, f32, 2 threads each, same image and question, 16 forced new tokens: time per answer
//! (median of the timed runs after a warm-up), prefill and decode speed, and peak memory, each
//! engine in its own process. Then candle with 8-bit and 4-bit weights (`q8_0`, `q4k`) on the
//! same run, their drift from f32 (greedy tokens, first-step logits), and llama.cpp on the same
//! checkpoint in GGUF Q8_0 when it has been built (`bench/llama_cpp.sh`). See bench/README.md.
//!
//! `cargo bench --bench smolvlm` (needs python3 with torch and transformers; see bench/README.md).
//!
//! The timings are only compared when both engines did the same work: the same prompt length (each
//! engine counts its own) and the same 16 new tokens; otherwise the bench says what differs and
//! exits non-zero, printing no table. Without `--bench` (`cargo test --bench smolvlm`) it checks
//! that comparison on made-up engine reports and measures nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device};
use serde_json::{Value, json};
use vlmtest::backend::candle::Vlm;
use vlmtest::backend::candle::quant::{self, Precision, Quant};
use vlmtest::backend::candle::smolvlm::SmolVlm;
use vlmtest::backend::{Message, Request, Role};
use vlmtest::config::GenParams;
use vlmtest::config::image::ImageCache;

#[path = "smolvlm/llama_cpp.rs"]
mod llama_cpp;
#[path = "smolvlm/quantized.rs"]
mod quantized;

const NEW_TOKENS: usize = 16;
const QUESTION: &str = "What animal is in the picture?";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn peak_rss_mib() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    u.ru_maxrss as f64 / 1024.0
}

fn rss_mib() -> f64 {
    vlmtest::machine::process_rss().unwrap_or(0) as f64 / (1024.0 * 1024.0)
}

/// The precision a candle child runs at (`VLMTEST_BENCH_DTYPE`: f32, q8_0 or q4k).
fn precision(name: &str) -> Precision {
    match name {
        "q8_0" => Precision::quantized(Quant::Q8_0),
        "q4k" => Precision::quantized(Quant::Q4K),
        _ => DType::F32.into(),
    }
}

/// The candle half, in a process of its own: prints one JSON object; with `logits`, writes the
/// first-step logits there (f32, little-endian).
fn candle_child(dir: &Path, image: &str, runs: usize, dtype: &str, logits_file: Option<&Path>) {
    let t = Instant::now();
    let mut m = SmolVlm::load(dir, precision(dtype), &Device::Cpu).expect("load");
    let load_s = t.elapsed().as_secs_f64();
    let rss_after_load = rss_mib();
    let img = ImageCache::default()
        .get(&root(), image)
        .expect("the benchmark image");
    let req = Request {
        messages: vec![Message {
            role: Role::User,
            text: QUESTION.into(),
            images: vec![Arc::clone(&img)],
        }],
        params: GenParams {
            max_new_tokens: NEW_TOKENS as u32,
            temperature: 0.0,
            seed: None,
            system_prompt: None,
        },
    };
    let mut totals = Vec::new();
    let mut firsts = Vec::new();
    let mut decodes = Vec::new();
    let mut tokens = Vec::new();
    let mut prompt_tokens = 0;
    let (mut pre, mut vis, mut txt) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..=runs {
        let start = Instant::now();
        // 16 forced tokens: greedy, EOS not honoured.
        let p = m.prefill(&req).expect("prefill");
        prompt_tokens = p.prompt_tokens;
        if let (0, Some(f)) = (run, logits_file) {
            let v: Vec<f32> = p.logits.to_vec1().expect("logits");
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            std::fs::write(f, bytes).expect("write the logits");
        }
        let mut logits = p.logits;
        let mut ids = Vec::new();
        let mut first = 0.0;
        for i in 0..NEW_TOKENS {
            let next = logits.argmax(0).unwrap().to_scalar::<u32>().unwrap();
            ids.push(next);
            if i == 0 {
                first = start.elapsed().as_secs_f64();
            }
            if i + 1 < NEW_TOKENS {
                logits = m.step(next).expect("step");
            }
        }
        let total = start.elapsed().as_secs_f64();
        eprintln!(
            "candle {dtype} {}: {total:.2} s (first token {first:.2} s)",
            if run == 0 {
                "warm-up".to_string()
            } else {
                format!("run {run}")
            }
        );
        if run > 0 {
            pre.push(m.last_prefill.preprocess_s);
            vis.push(m.last_prefill.vision_s);
            txt.push(m.last_prefill.text_s);
            totals.push(total);
            firsts.push(first);
            decodes.push((NEW_TOKENS - 1) as f64 / (total - first));
        }
        tokens = ids;
    }
    let out = json!({
        "engine": "candle",
        "dtype": dtype,
        "quantization": m.quantization(),
        "threads": candle_core::utils::get_num_threads(),
        "load_s": load_s,
        "prompt_tokens": prompt_tokens,
        "new_token_ids": tokens,
        "answer_total_s": {"median": median(&totals), "all": totals},
        "first_token_s": {"median": median(&firsts), "all": firsts},
        "decode_tokens_per_s": {"median": median(&decodes), "all": decodes},
        "preprocess_s": {"median": median(&pre), "all": pre},
        "vision_s": {"median": median(&vis), "all": vis},
        "text_prefill_s": {"median": median(&txt), "all": txt},
        "rss_after_load_mib": rss_after_load,
        "peak_rss_mib": peak_rss_mib(),
    });
    println!("{out}");
}

/// The facts an engine's report must hold for its timings to mean anything.
struct Work {
    prompt_tokens: u64,
    new_token_ids: Vec<u64>,
}

fn work(v: &Value, engine: &str) -> Result<Work, String> {
    let prompt_tokens = v["prompt_tokens"]
        .as_u64()
        .ok_or_else(|| format!("{engine} did not report its prompt length (`prompt_tokens`)"))?;
    let new_token_ids = v["new_token_ids"]
        .as_array()
        .and_then(|a| a.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>())
        .ok_or_else(|| format!("{engine} did not report its new tokens (`new_token_ids`)"))?;
    Ok(Work {
        prompt_tokens,
        new_token_ids,
    })
}

/// Checks that candle and PyTorch timed the same work: prompts of the same length (each engine's
/// own count) and the same `NEW_TOKENS` greedy tokens. The error says what differs.
fn same_work(candle: &Value, torch: &Value) -> Result<(), String> {
    let (c, t) = (work(candle, "candle")?, work(torch, "PyTorch")?);
    if c.prompt_tokens != t.prompt_tokens {
        return Err(format!(
            "the prompts differ: candle's is {} tokens, PyTorch's {} (preprocessing, image splitting or the chat template differ), so their prefill and answer times are not comparable",
            c.prompt_tokens, t.prompt_tokens
        ));
    }
    for (engine, w) in [("candle", &c), ("PyTorch", &t)] {
        if w.new_token_ids.len() != NEW_TOKENS {
            return Err(format!(
                "{engine} produced {} new tokens, not {NEW_TOKENS}",
                w.new_token_ids.len()
            ));
        }
    }
    if let Some(k) = (0..NEW_TOKENS).find(|&k| c.new_token_ids[k] != t.new_token_ids[k]) {
        return Err(format!(
            "the greedy tokens differ from new token {k} on: candle {:?}, PyTorch {:?} (the engines computed different things, so their times are not comparable)",
            c.new_token_ids, t.new_token_ids
        ));
    }
    Ok(())
}

/// `cargo test --bench smolvlm`: [`same_work`] accepts equal reports and refuses each kind of
/// difference, saying which.
fn check_same_work() {
    let report =
        |prompt: u64, ids: Vec<u64>| json!({"prompt_tokens": prompt, "new_token_ids": ids});
    let ids: Vec<u64> = (100..100 + NEW_TOKENS as u64).collect();
    let candle = report(489, ids.clone());
    assert_eq!(same_work(&candle, &report(489, ids.clone())), Ok(()));

    let e = same_work(&candle, &report(488, ids.clone())).unwrap_err();
    assert!(e.contains("candle's is 489 tokens, PyTorch's 488"), "{e}");

    let mut other = ids.clone();
    other[5] = 7;
    let e = same_work(&candle, &report(489, other)).unwrap_err();
    assert!(e.contains("differ from new token 5 on"), "{e}");

    let e = same_work(&candle, &report(489, ids[..NEW_TOKENS - 1].to_vec())).unwrap_err();
    assert!(e.contains("PyTorch produced 15 new tokens, not 16"), "{e}");

    let e = same_work(&candle, &json!({"new_token_ids": ids})).unwrap_err();
    assert!(
        e.contains("PyTorch did not report its prompt length"),
        "{e}"
    );
    let e = same_work(&json!({"prompt_tokens": 489}), &candle).unwrap_err();
    assert!(e.contains("candle did not report its new tokens"), "{e}");
    eprintln!("smolvlm bench: the engine comparison refuses different prompts and tokens");
}

fn run_json(cmd: &mut Command, what: &str) -> Value {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        panic!("{what} failed ({})", out.status);
    }
    // The JSON object is the end of the output (one line or pretty-printed).
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text
        .lines()
        .scan(0, |off, l| {
            let here = *off;
            *off += l.len() + 1;
            Some((here, l))
        })
        .filter(|(_, l)| l.starts_with('{'))
        .map(|(o, _)| o)
        .last()
        .unwrap_or_else(|| panic!("{what} printed no JSON:\n{text}"));
    let json = &text[start..];
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{what}: bad JSON ({e}): {json}"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::env::var("VLMTEST_BENCH_SMOLVLM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("target/bench/smolvlm-256m-random"));
    let image =
        std::env::var("VLMTEST_BENCH_IMAGE").unwrap_or_else(|_| "suites/images/chelsea.png".into());
    let runs: usize = std::env::var("VLMTEST_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3)
        .max(1);
    if std::env::var("VLMTEST_BENCH_CHILD").as_deref() == Ok("candle") {
        // The allocator setting a vlmtest run with an in-process model uses.
        vlmtest::machine::Allocator::Tuned.apply();
        let dtype = std::env::var("VLMTEST_BENCH_DTYPE").unwrap_or_else(|_| "f32".into());
        let logits = std::env::var_os("VLMTEST_BENCH_LOGITS").map(PathBuf::from);
        candle_child(&dir, &image, runs, &dtype, logits.as_deref());
        return;
    }
    if !args.iter().any(|a| a == "--bench") {
        check_same_work();
        eprintln!(
            "smolvlm bench: run it with `cargo bench --bench smolvlm` (needs python3, torch, transformers)"
        );
        return;
    }
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let script = root().join("bench/smolvlm_torch.py");
    if !dir.join("model.safetensors").is_file() {
        eprintln!(
            "making the random full-size checkpoint in {}",
            dir.display()
        );
        let ok = Command::new(&python)
            .arg(&script)
            .args(["make", "--out"])
            .arg(&dir)
            .current_dir(root())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "`{python} bench/smolvlm_torch.py make` failed");
    }
    let checkpoint = std::fs::metadata(dir.join("model.safetensors"))
        .map(|m| m.len())
        .unwrap_or(0) as f64
        / (1024.0 * 1024.0);
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "smolvlm".into());
    // First-step logits of each engine, for the drift (removed at the end).
    let logits_dir = root().join(format!("target/bench-{name}-logits"));
    std::fs::create_dir_all(&logits_dir).expect("a folder for the logits");
    eprintln!(
        "CPU SIMD: {} (8-bit dot products: {})",
        vlmtest::machine::simd_level(),
        quant::int8_dot()
    );

    eprintln!("PyTorch eager, 2 threads ...");
    let torch = run_json(
        Command::new(&python)
            .arg(&script)
            .args([
                "time",
                "--threads",
                "2",
                "--runs",
                &runs.to_string(),
                "--dir",
            ])
            .arg(&dir)
            .args(["--image", &image])
            .arg("--logits")
            .arg(logits_dir.join("torch.f32"))
            .current_dir(root())
            .env("OMP_NUM_THREADS", "2"),
        "the PyTorch half",
    );
    let candle_at = |dtype: &str| {
        eprintln!("candle {dtype}, 2 threads ...");
        run_json(
            Command::new(&args[0])
                .env("VLMTEST_BENCH_CHILD", "candle")
                .env("VLMTEST_BENCH_DTYPE", dtype)
                .env(
                    "VLMTEST_BENCH_LOGITS",
                    logits_dir.join(format!("candle-{dtype}.f32")),
                )
                .env("RAYON_NUM_THREADS", "2")
                .env("VLMTEST_BENCH_RUNS", runs.to_string()),
            &format!("the candle half ({dtype})"),
        )
    };
    let candle = candle_at("f32");

    let all = json!({"candle": candle, "torch": torch, "checkpoint_mib": checkpoint});
    let path = root().join(format!("target/bench-{name}.json"));
    let _ = std::fs::write(&path, serde_json::to_string_pretty(&all).unwrap());
    if let Err(e) = same_work(&candle, &torch) {
        eprintln!(
            "\nsmolvlm bench: not comparing the timings: {e} (both reports: {})",
            path.display()
        );
        std::process::exit(1);
    }

    let f = |v: &Value, k: &str| v[k]["median"].as_f64().unwrap_or(f64::NAN);
    let (ct, tt) = (f(&candle, "answer_total_s"), f(&torch, "model_s"));
    let tt_all = f(&torch, "answer_total_s");
    let (cf, tf) = (f(&candle, "first_token_s"), f(&torch, "first_token_s"));
    let (cd, td) = (
        f(&candle, "decode_tokens_per_s"),
        f(&torch, "decode_tokens_per_s"),
    );
    let cm = candle["peak_rss_mib"].as_f64().unwrap_or(f64::NAN);
    let tm = torch["peak_rss_mib"].as_f64().unwrap_or(f64::NAN);
    // Each engine's own prompt length (equal, as checked above).
    let cp = candle["prompt_tokens"].as_f64().unwrap_or(f64::NAN);
    let tp = torch["prompt_tokens"].as_f64().unwrap_or(f64::NAN);
    println!(
        "\n{} (random weights), f32, CPU ({} SIMD), 2 threads, {runs} runs after a warm-up, 16 new tokens",
        dir.display(),
        vlmtest::machine::simd_level()
    );
    println!("image {image}; {cp} prompt tokens; checkpoint {checkpoint:.0} MiB\n");
    println!("| | candle | PyTorch eager | candle / PyTorch |");
    println!("|---|---|---|---|");
    println!(
        "| time per answer, preprocessing included (s) | {ct:.2} | {tt_all:.2} | {:.2}× |",
        ct / tt_all
    );
    println!(
        "| time per answer, model only (PyTorch) (s) | | {tt:.2} | {:.2}× |",
        ct / tt
    );
    println!(
        "| time to first token (s) | {cf:.2} | {tf:.2} | {:.2}× |",
        cf / tf
    );
    println!(
        "| prefill (tokens/s) | {:.0} | {:.0} | {:.2}× |",
        cp / cf,
        tp / tf,
        tf / cf
    );
    println!(
        "| decode (tokens/s) | {cd:.2} | {td:.2} | {:.2}× |",
        cd / td
    );
    println!(
        "| peak memory (MiB) | {cm:.0} | {tm:.0} | {:.2}× |",
        cm / tm
    );
    println!(
        "| peak memory / checkpoint size | {:.2}× | {:.2}× | |",
        cm / checkpoint,
        tm / checkpoint
    );
    println!(
        "\nwhere candle's time goes (medians): preprocessing {:.2} s, vision encoder + connector {:.2} s, text prefill {:.2} s, {} decode steps {:.2} s",
        f(&candle, "preprocess_s"),
        f(&candle, "vision_s"),
        f(&candle, "text_prefill_s"),
        NEW_TOKENS - 1,
        ct - cf
    );
    println!(
        "PyTorch (medians): preprocessing {:.2} s, prefill forward {:.2} s, decode {:.2} s",
        f(&torch, "preprocess_s"),
        f(&torch, "prefill_s"),
        tt - tf
    );
    println!("\nsame prompt length and same {NEW_TOKENS} greedy tokens as PyTorch: yes (checked)");
    let quantized = if std::env::var("VLMTEST_BENCH_QUANT").as_deref() == Ok("0") {
        Value::Null
    } else {
        let q8 = candle_at("q8_0");
        let q4 = candle_at("q4k");
        let llama = llama_cpp::run(&dir, &image, &root(), &python, runs);
        quantized::report(&quantized::Inputs {
            f32: &candle,
            q8_0: &q8,
            q4k: &q4,
            torch: &torch,
            llama: llama.as_ref(),
            logits: &logits_dir,
            checkpoint_mib: checkpoint,
        })
    };
    let _ = std::fs::remove_dir_all(&logits_dir);
    let all = json!({
        "machine": {"simd": vlmtest::machine::simd_level(), "int8_dot": quant::int8_dot()},
        "candle": candle, "torch": torch, "checkpoint_mib": checkpoint, "same_tokens": true,
        "quantized": quantized,
    });
    let path = root().join(format!("target/bench-{name}.json"));
    let _ = std::fs::write(&path, serde_json::to_string_pretty(&all).unwrap());
    println!("(all runs: {})", path.display());
}
