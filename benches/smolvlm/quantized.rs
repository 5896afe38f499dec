//! The quantized half of `cargo bench --bench smolvlm`: candle with 8-bit (`q8_0`) and 4-bit
//! (`q4k`) weights against candle f32, PyTorch f32 and (when built) llama.cpp in GGUF Q8_0, on the
//! same checkpoint, image and question; the targets of issue 9; and the drift quantization
//! costs (greedy tokens and first-step logits against f32).

use std::path::Path;

use serde_json::{Value, json};

/// Every engine's JSON (as its half printed it) and where the first-step logits are.
pub struct Inputs<'a> {
    pub f32: &'a Value,
    pub q8_0: &'a Value,
    pub q4k: &'a Value,
    pub torch: &'a Value,
    pub llama: Option<&'a Value>,
    /// `candle-<dtype>.f32` and `torch.f32`: little-endian f32.
    pub logits: &'a Path,
    pub checkpoint_mib: f64,
}

fn med(v: &Value, k: &str) -> f64 {
    v[k]["median"].as_f64().unwrap_or(f64::NAN)
}

fn num(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(f64::NAN)
}

fn read_logits(path: &Path) -> Option<Vec<f32>> {
    let bytes = std::fs::read(path).ok()?;
    Some(
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() || a.is_empty() {
        return f64::NAN;
    }
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn ids(v: &Value) -> Vec<u64> {
    v["new_token_ids"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_u64()).collect())
        .unwrap_or_default()
}

/// `(positions equal, length of the common prefix)` of two greedy answers.
fn agreement(a: &[u64], b: &[u64]) -> (usize, usize) {
    let equal = a.iter().zip(b).filter(|(x, y)| x == y).count();
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    (equal, prefix)
}

fn cell(x: f64, digits: usize) -> String {
    if x.is_finite() {
        format!("{x:.digits$}")
    } else {
        "–".into()
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

/// Prints the table, the targets and the drift; returns them as JSON.
pub fn report(i: &Inputs) -> Value {
    let engines: Vec<(&str, &Value)> = [
        ("candle f32", i.f32),
        ("candle q8_0", i.q8_0),
        ("candle q4k", i.q4k),
        ("PyTorch f32", i.torch),
    ]
    .into_iter()
    .chain(i.llama.map(|l| ("llama.cpp Q8_0", l)))
    .collect();
    let total = |v: &Value| med(v, "answer_total_s");
    let first = |v: &Value| med(v, "first_token_s");
    let prompt = |v: &Value| num(v, "prompt_tokens");
    let decode = |v: &Value| med(v, "decode_tokens_per_s");
    let peak = |v: &Value| num(v, "peak_rss_mib");

    println!(
        "\n## 8-bit and 4-bit weights (same run: 16 new tokens, 2 threads, CPU SIMD {}, 8-bit dot {})\n",
        vlmtest::machine::simd_level(),
        vlmtest::backend::candle::quant::int8_dot()
    );
    let mut header = String::from("| |");
    let mut rule = String::from("|---|");
    for (name, _) in &engines {
        header.push_str(&format!(" {name} |"));
        rule.push_str("---|");
    }
    println!("{header}\n{rule}");
    let row = |label: &str, f: &dyn Fn(&Value) -> String| {
        let mut line = format!("| {label} |");
        for (_, v) in &engines {
            line.push_str(&format!(" {} |", f(v)));
        }
        println!("{line}");
    };
    row("time per answer (s)", &|v| cell(total(v), 2));
    row("time to first token (s)", &|v| cell(first(v), 2));
    row("vision encoder + connector (s)", &|v| {
        cell(med(v, "vision_s").min(med(v, "image_encode_s")), 2)
    });
    row("prompt tokens", &|v| cell(prompt(v), 0));
    row("prefill (tokens/s)", &|v| cell(prompt(v) / first(v), 0));
    row("decode (tokens/s)", &|v| cell(decode(v), 1));
    row("peak memory (MiB)", &|v| cell(peak(v), 0));
    row("peak memory / f32 checkpoint", &|v| {
        format!("{}×", cell(peak(v) / i.checkpoint_mib, 2))
    });
    row("load (s)", &|v| cell(num(v, "load_s"), 2));

    let q8 = i.q8_0;
    let vs_torch = total(q8) / total(i.torch);
    let decode_gain = decode(q8) / decode(i.f32);
    let memory = peak(q8) / i.checkpoint_mib;
    println!("\nTargets (q8_0):");
    println!(
        "- time per answer / PyTorch f32: {:.2}× (target ≤ 0.30×: {}); q4k {:.2}×",
        vs_torch,
        verdict(vs_torch <= 0.3),
        total(i.q4k) / total(i.torch)
    );
    println!(
        "- decode / candle f32: {:.2}× (target ≥ 2×: {}); q4k {:.2}×",
        decode_gain,
        verdict(decode_gain >= 2.0),
        decode(i.q4k) / decode(i.f32)
    );
    println!(
        "- peak memory / f32 checkpoint ({:.0} MiB): {:.2}× (target ≤ 0.40×: {}); q4k {:.2}×",
        i.checkpoint_mib,
        memory,
        verdict(memory <= 0.4),
        peak(i.q4k) / i.checkpoint_mib
    );
    let vs_llama = i.llama.map(|l| total(q8) / total(l));
    match vs_llama {
        Some(r) => println!(
            "- time per answer / llama.cpp Q8_0: {r:.2}× (aim ≤ 1.0×: {}); decode {:.2}×",
            verdict(r <= 1.0),
            decode(q8) / i.llama.map(decode).unwrap_or(f64::NAN)
        ),
        None => println!("- llama.cpp: not run (bench/llama_cpp.sh build; see bench/README.md)"),
    }

    // Drift: greedy tokens and first-step logits against f32 (candle's, and PyTorch's).
    let logits = |name: &str| read_logits(&i.logits.join(name));
    let f32_logits = logits("candle-f32.f32");
    let torch_logits = logits("torch.f32");
    let mut drift = serde_json::Map::new();
    println!(
        "\nDrift from f32 on the full-size random checkpoint (16 greedy tokens, first-step logits):"
    );
    for (dtype, v) in [("q8_0", i.q8_0), ("q4k", i.q4k)] {
        let q = logits(&format!("candle-{dtype}.f32"));
        let (eq_c, pre_c) = agreement(&ids(v), &ids(i.f32));
        let (eq_t, pre_t) = agreement(&ids(v), &ids(i.torch));
        let cos_c = match (&q, &f32_logits) {
            (Some(a), Some(b)) => cosine(a, b),
            _ => f64::NAN,
        };
        let cos_t = match (&q, &torch_logits) {
            (Some(a), Some(b)) => cosine(a, b),
            _ => f64::NAN,
        };
        println!(
            "- {dtype}: tokens equal to candle f32's {eq_c}/16 (same first {pre_c}), to PyTorch's {eq_t}/16 (same first {pre_t}); logits cosine {cos_c:.6} with candle f32, {cos_t:.6} with PyTorch"
        );
        drift.insert(
            dtype.into(),
            json!({
                "tokens_equal_candle_f32": eq_c, "common_prefix_candle_f32": pre_c,
                "tokens_equal_torch": eq_t, "common_prefix_torch": pre_t,
                "logits_cosine_candle_f32": cos_c, "logits_cosine_torch": cos_t,
            }),
        );
    }
    if let (Some(a), Some(b)) = (&f32_logits, &torch_logits) {
        println!(
            "- (candle f32 against PyTorch: logits cosine {:.8})",
            cosine(a, b)
        );
    }
    json!({
        "q8_0": i.q8_0, "q4k": i.q4k, "llama_cpp": i.llama,
        "targets": {
            "q8_0_time_per_answer_vs_torch_f32": vs_torch,
            "q8_0_decode_vs_candle_f32": decode_gain,
            "q8_0_peak_memory_vs_checkpoint": memory,
            "q8_0_time_per_answer_vs_llama_cpp_q8_0": vs_llama,
        },
        "drift": drift,
    })
}
