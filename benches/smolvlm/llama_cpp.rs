//! llama.cpp's half of `cargo bench --bench smolvlm` (optional): `llama-mtmd-cli` on the bench
//! checkpoint converted to GGUF Q8_0 (text model and vision projector), same image and
//! question, 16 new tokens, 2 threads, greedy. Built and converted by `bench/llama_cpp.sh`.
//!
//! Each run is one process (load, one answer, exit). Its timings come from llama.cpp's own log:
//! the vision encoder (`image slice encoded in N ms`, summed over the slices), `prompt eval time`
//! (the prompt with the image embeddings) and `eval time` (the tokens after the first); time per
//! answer is their sum, time to first token the first two. Peak memory is the process's
//! (`wait4`'s `ru_maxrss`, which counts the touched pages of the memory-mapped GGUF files).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

const NEW_TOKENS: usize = 16;

/// The folder holding `llama-mtmd-cli`: `VLMTEST_BENCH_LLAMA_BIN`, else where
/// `bench/llama_cpp.sh build` puts it.
fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("VLMTEST_BENCH_LLAMA_BIN") {
        return PathBuf::from(d);
    }
    let root = std::env::var_os("VLMTEST_LLAMA_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/vlmtest/llama.cpp")
        });
    root.join("11434.0.0/build-bench/bin")
}

/// `N` in `...<key> N...` of a log line (the first number after `key`).
fn number_after(line: &str, key: &str) -> Option<f64> {
    let rest = &line[line.find(key)? + key.len()..];
    let rest = rest.trim_start_matches(|c: char| !c.is_ascii_digit());
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// One answer's timings from the log, in seconds: (encode, prompt eval, prompt tokens, eval,
/// eval runs).
fn parse(log: &str) -> Option<(f64, f64, f64, f64, f64)> {
    let mut encode = 0.0;
    let (mut prompt, mut prompt_tokens, mut eval, mut runs) = (None, None, None, None);
    for line in log.lines() {
        if line.contains("slice encoded in") {
            encode += number_after(line, "encoded in")? / 1000.0;
        } else if line.contains("prompt eval time =") {
            prompt = number_after(line, "prompt eval time =").map(|v| v / 1000.0);
            prompt_tokens = number_after(line, "ms /");
        } else if line.contains(" eval time =") {
            eval = number_after(line, "eval time =").map(|v| v / 1000.0);
            runs = number_after(line, "ms /");
        }
    }
    Some((encode, prompt?, prompt_tokens?, eval?, runs?))
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Runs `cmd` to the end; its output and peak resident memory (MiB).
fn run_measured(cmd: &mut Command) -> Result<(String, f64), String> {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start llama-mtmd-cli: {e}"))?;
    let pid = child.id() as libc::pid_t;
    // Read both pipes on threads so that neither fills up, then reap with wait4 for the rusage.
    let mut child = child;
    let mut out = child.stdout.take().ok_or("no stdout")?;
    let mut err = child.stderr.take().ok_or("no stderr")?;
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child's pid, with valid pointers to a status and an rusage.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let log = format!(
        "{}\n{}",
        t_out.join().unwrap_or_default(),
        t_err.join().unwrap_or_default()
    );
    if r != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(format!(
            "llama-mtmd-cli failed (status {status}):\n{}",
            log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
        ));
    }
    Ok((log, usage.ru_maxrss as f64 / 1024.0))
}

/// llama.cpp on `dir`'s checkpoint in GGUF Q8_0, or `None` (with the reason on stderr) when it
/// is not built or the conversion fails.
pub fn run(dir: &Path, image: &str, root: &Path, python: &str, runs: usize) -> Option<Value> {
    let cli = bin_dir().join("llama-mtmd-cli");
    if !cli.is_file() {
        eprintln!(
            "llama.cpp: {} not found; `bash bench/llama_cpp.sh build` builds it (~20 min on 2 cores)",
            cli.display()
        );
        return None;
    }
    let gguf = dir.join("gguf");
    let (model, mmproj) = (gguf.join("model-q8_0.gguf"), gguf.join("mmproj-q8_0.gguf"));
    if !model.is_file() || !mmproj.is_file() {
        eprintln!("llama.cpp: converting {} to GGUF Q8_0 ...", dir.display());
        let ok = Command::new("bash")
            .arg(root.join("bench/llama_cpp.sh"))
            .arg("convert")
            .arg(dir)
            .arg(python)
            .current_dir(root)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            eprintln!("llama.cpp: the conversion failed; leaving llama.cpp out");
            return None;
        }
    }
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0) as f64 / 1048576.0;
    let (mut totals, mut firsts, mut decodes, mut encodes) = (vec![], vec![], vec![], vec![]);
    let (mut peaks, mut prompt_tokens) = (vec![], f64::NAN);
    for r in 0..=runs {
        let mut cmd = Command::new(&cli);
        cmd.arg("-m")
            .arg(&model)
            .arg("--mmproj")
            .arg(&mmproj)
            .arg("--image")
            .arg(root.join(image))
            .args(["-p", super::QUESTION, "-n"])
            .arg(NEW_TOKENS.to_string())
            .args(["--temp", "0", "--ignore-eos", "-t", "2", "-c", "4096"])
            .current_dir(root);
        let (log, peak) = match run_measured(&mut cmd) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("llama.cpp: {e}");
                return None;
            }
        };
        let Some((encode, prompt, ptok, eval, eval_runs)) = parse(&log) else {
            eprintln!(
                "llama.cpp: no timings in its log:\n{}",
                log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
            );
            return None;
        };
        let total = encode + prompt + eval;
        eprintln!(
            "llama.cpp Q8_0 {}: {total:.2} s (vision {encode:.2} s, prompt {prompt:.2} s for {ptok} tokens, {eval_runs} steps {eval:.2} s)",
            if r == 0 {
                "warm-up".to_string()
            } else {
                format!("run {r}")
            }
        );
        if r > 0 {
            totals.push(total);
            firsts.push(encode + prompt);
            decodes.push(eval_runs / eval);
            encodes.push(encode);
            peaks.push(peak);
            prompt_tokens = ptok;
        }
    }
    Some(json!({
        "engine": "llama.cpp",
        "binary": cli,
        "gguf_mib": {"model": size(&model), "mmproj": size(&mmproj)},
        "threads": 2,
        "prompt_tokens": prompt_tokens,
        "answer_total_s": {"median": median(&totals), "all": totals},
        "first_token_s": {"median": median(&firsts), "all": firsts},
        "decode_tokens_per_s": {"median": median(&decodes), "all": decodes},
        "image_encode_s": {"median": median(&encodes), "all": encodes},
        "peak_rss_mib": peaks.iter().cloned().fold(f64::NAN, f64::max),
        "note": "one process per run; time per answer = vision encoder + prompt eval + eval from llama.cpp's log",
    }))
}
