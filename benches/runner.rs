//! Benchmark of the vlmtest runner: `cargo bench --bench runner` (see bench/README.md).
//!
//! Generates a 5,000-case suite (60% VQA image cases, 25% text-only cases with `expect` rules,
//! 15% two-turn conversations) and a models.toml with three OpenAI-compatible models pointing at
//! a zero-latency loopback server started in this process, then measures the real harness binary
//! (`vlmtest run -- ...`, the binary of the same profile as this bench):
//!
//! a. `--list` wall time;
//! b. a full run at `--test-threads 8`, against a reference that sends the same chat/completions
//!    bodies straight to the same server with a bare `reqwest::blocking::Client` from 8 threads;
//! c. the same run with snapshots on (a fresh snapshot directory each time);
//! d. the peak RSS (VmHWM) of the harness process.
//!
//! Each figure is the median of `VLMTEST_BENCH_RUNS` (default 7, at least 5) runs after one
//! warm-up; `VLMTEST_BENCH_CASES` (default 5000) sets the suite size. Timings are printed and
//! written to `target/bench-runner.json`, never asserted; the bench exits non-zero when a harness
//! run does not pass every trial, or when the reference's request bodies (checked in the first
//! run) are not exactly the harness's, since it would then time other work. Run without
//! `--bench` (as `cargo test --bench runner` and `cargo test --all-targets` do), it is a quick
//! smoke run of 60 cases, with the same checks, and writes no JSON.

use std::collections::hash_map::DefaultHasher;
use std::fmt::Write as _;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

/// The harness binary of the same profile as this bench.
const BIN: &str = env!("CARGO_BIN_EXE_vlmtest");
const MODELS: [&str; 3] = ["bench-a", "bench-b", "bench-c"];
const THREADS: usize = 8;
const PROMPT_SUFFIX: &str = "\nAnswer briefly.";
const MAX_TOKENS: u32 = 16;

fn main() -> ExitCode {
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nbench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The generated suite

/// One turn as the model is asked it, with the answer the server gives.
struct Turn {
    image: bool,
    prompt: String,
    answer: String,
}

struct Cases {
    /// The `cases:` list of the suite, in YAML.
    yaml: String,
    /// Per case, its turns (in file order).
    turns: Vec<Vec<Turn>>,
    vqa: usize,
    text: usize,
    conversations: usize,
}

impl Cases {
    fn requests_per_model(&self) -> usize {
        self.turns.iter().map(Vec::len).sum()
    }
}

/// VQA questions: (question, ten human answers, the server's answer). Where the ten humans agree,
/// the answer is their exact string: the official VQA evaluation (a013f00) leaves unanimous answers
/// unnormalised, so `Yes` would score 0 against ten `yes`.
const VQA: &[(&str, &str, &str)] = &[
    (
        "What animal is shown in this picture?",
        r#"["horse", "horse", "horse", "pony", "horse", "horse", "horse", "stallion", "horse", "pony"]"#,
        "Horse.",
    ),
    (
        "How many legs does the animal have? Answer with a number.",
        r#"["4", "4", "4", "4", "3", "4", "4", "4", "5", "4"]"#,
        "Four",
    ),
    (
        "Is this a photo of an animal?",
        r#"["yes", "yes", "yes", "yes", "yes", "yes", "yes", "yes", "yes", "yes"]"#,
        "yes",
    ),
    (
        "What colors are in this image?",
        r#"["black and white", "black and white", "black", "black and white", "white", "black and white", "gray", "black and white", "black", "black and white"]"#,
        "black and white",
    ),
    (
        "What is this?",
        r#"["horse", "horse", "horse", "horse", "horse", "horse", "horse", "horse", "horse", "horse"]"#,
        "horse",
    ),
];

/// Text-only questions: (question, `expect` rule in YAML flow style, the server's answer).
const TEXT: &[(&str, &str, &str)] = &[
    (
        "What is the capital of France?",
        "{ contains: Paris }",
        "Paris is the capital of France.",
    ),
    (
        "What color is a clear daytime sky?",
        "{ contains_any: [blue, azure] }",
        "It is blue.",
    ),
    (
        "Name a primary color.",
        "{ any_of: [red, blue, yellow] }",
        "Red.",
    ),
    (
        "What is six times seven? Digits only.",
        "{ exact: \"42\" }",
        "42",
    ),
    (
        "How many days are in a fortnight?",
        "{ numeric: 14, tolerance: 1 }",
        "fourteen days",
    ),
    ("Is water wet?", "{ yes_no: \"yes\" }", "Yes, it is."),
    (
        "What is the chemical formula of water?",
        r"{ regex: '(?i)\bh2o\b' }",
        "H2O",
    ),
    (
        "Describe a horse in three words.",
        "{ not_contains: [cat, dog] }",
        "Large, fast, strong.",
    ),
    (
        "Which is a mammal? A) trout B) horse C) eagle",
        "{ choice: { answer: B, options: [trout, horse, eagle] } }",
        "B",
    ),
    (
        "What do plants need to grow?",
        "{ all: [{ contains: water }, { contains: light }, { not_contains: [darkness] }] }",
        "Water and light.",
    ),
    (
        "Which two colors are on a zebra?",
        "{ contains_all: [black, white] }",
        "Black and white.",
    ),
    (
        "What is two plus two?",
        "{ any: [{ numeric: 4 }, { exact: four }] }",
        "4",
    ),
];

/// Conversations: turn 1 (with the image): question, `answers` or `expect` line, answer;
/// turn 2: question, `expect` line, answer.
type Conv = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);
const CONVERSATIONS: &[Conv] = &[
    (
        "What animal is shown?",
        r#"answers: ["horse", "horse", "horse", "horse", "horse", "horse", "horse", "horse", "horse", "horse"]"#,
        "horse",
        "What sound does it make?",
        "expect: { contains_any: [neigh, whinny] }",
        "It neighs.",
    ),
    (
        "How many legs does it have? Answer with a number.",
        "expect: { numeric: 4 }",
        "4",
        "And how many legs would two of them have?",
        "expect: { numeric: 8 }",
        "eight",
    ),
    (
        "Is this a horse?",
        "expect: { yes_no: \"yes\" }",
        "Yes.",
        "What did you just answer?",
        "expect: { contains: yes }",
        "I said yes.",
    ),
];

/// A question as written in the suite: unique, and naming the server's answer by its index.
fn question(text: &str, qid: usize) -> String {
    format!("{text} (qid={qid})")
}

fn quoted(s: &str) -> String {
    // JSON strings are valid YAML double-quoted scalars.
    serde_json::to_string(s).expect("a string serialises")
}

/// Builds `n` cases (of every 20: 12 VQA, 5 text-only, 3 conversations) and the answers the
/// server gives, by question id.
fn generate(n: usize) -> (Cases, Vec<String>) {
    let mut yaml = String::with_capacity(n * 300);
    let mut turns = Vec::with_capacity(n);
    let mut answers: Vec<String> = Vec::new();
    let (mut vqa, mut text, mut conversations) = (0usize, 0usize, 0usize);
    let turn = |q: &str, answer: &str, image: bool, answers: &mut Vec<String>| {
        let qid = answers.len();
        answers.push(answer.to_string());
        let q = question(q, qid);
        let t = Turn {
            image,
            prompt: format!("{q}{PROMPT_SUFFIX}"),
            answer: answer.to_string(),
        };
        (q, t)
    };
    for i in 0..n {
        match i % 20 {
            0..12 => {
                let (q, human, answer) = VQA[vqa % VQA.len()];
                vqa += 1;
                let (q, t) = turn(q, answer, true, &mut answers);
                let _ = write!(
                    yaml,
                    "  - id: vqa-{i:05}\n    category: vqa\n    image: images/horse.png\n    question: {}\n    answers: {human}\n",
                    quoted(&q)
                );
                turns.push(vec![t]);
            }
            12..17 => {
                let (q, rule, answer) = TEXT[text % TEXT.len()];
                text += 1;
                let (q, t) = turn(q, answer, false, &mut answers);
                let _ = write!(
                    yaml,
                    "  - id: text-{i:05}\n    category: text\n    question: {}\n    expect: {rule}\n",
                    quoted(&q)
                );
                turns.push(vec![t]);
            }
            _ => {
                let (q1, e1, a1, q2, e2, a2) = CONVERSATIONS[conversations % CONVERSATIONS.len()];
                conversations += 1;
                let (q1, t1) = turn(q1, a1, true, &mut answers);
                let (q2, t2) = turn(q2, a2, false, &mut answers);
                let _ = write!(
                    yaml,
                    "  - id: conv-{i:05}\n    category: conversation\n    turns:\n      - image: images/horse.png\n        question: {}\n        {e1}\n      - question: {}\n        {e2}\n",
                    quoted(&q1),
                    quoted(&q2)
                );
                turns.push(vec![t1, t2]);
            }
        }
    }
    let cases = Cases {
        yaml,
        turns,
        vqa,
        text,
        conversations,
    };
    (cases, answers)
}

fn suite_yaml(cases: &Cases, snapshot: bool) -> String {
    format!(
        "# Generated by benches/runner.rs.\nname: bench\ndescription: Runner benchmark\ndefaults:\n  prompt: {}\n  max_new_tokens: {MAX_TOKENS}\n  max_latency_ms: 60000\n  snapshot: {snapshot}\ngate:\n  min_accuracy: 0.9\n  min_pass_rate: 0.9\ncases:\n{}",
        quoted(&format!("{{question}}{PROMPT_SUFFIX}")),
        cases.yaml
    )
}

fn models_toml(base_url: &str) -> String {
    let mut t = String::new();
    for m in MODELS {
        let _ = write!(
            t,
            "[models.{m}]\nbackend = \"openai\"\nbase_url = \"{base_url}\"\nmodel = \"{m}-served\"\nconcurrency = {THREADS}\n\n"
        );
    }
    t
}

/// The chat/completions bodies the harness sends, per (model, case), each case's turns in order:
/// built here the way the OpenAI backend builds them, for the reference client.
fn reference_bodies(cases: &Cases, image: &[u8]) -> Vec<Vec<Vec<u8>>> {
    use base64::Engine;
    let url = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(image)
    );
    let mut jobs = Vec::with_capacity(MODELS.len() * cases.turns.len());
    for m in MODELS {
        for turns in &cases.turns {
            let mut messages: Vec<Value> = Vec::new();
            let mut bodies = Vec::with_capacity(turns.len());
            for t in turns {
                messages.push(if t.image {
                    json!({"role": "user", "content": [
                        {"type": "image_url", "image_url": {"url": url}},
                        {"type": "text", "text": t.prompt},
                    ]})
                } else {
                    json!({"role": "user", "content": t.prompt})
                });
                let body = json!({
                    "model": format!("{m}-served"),
                    "messages": messages,
                    "max_tokens": MAX_TOKENS,
                    "temperature": 0.0f64,
                    "stream": false,
                });
                bodies.push(serde_json::to_vec(&body).expect("a body serialises"));
                messages.push(json!({"role": "assistant", "content": t.answer}));
            }
            jobs.push(bodies);
        }
    }
    jobs
}

// ---------------------------------------------------------------------------------------------
// The zero-latency loopback server

#[derive(Default)]
struct Stats {
    chats: AtomicU64,
    probes: AtomicU64,
    unknown: AtomicU64,
    busy_ns: AtomicU64,
    body_bytes: AtomicU64,
}

#[derive(Clone, Copy, Default)]
struct StatsSnapshot {
    chats: u64,
    probes: u64,
    unknown: u64,
    busy: Duration,
    body_bytes: u64,
}

impl Stats {
    fn take(&self) -> StatsSnapshot {
        StatsSnapshot {
            chats: self.chats.swap(0, Ordering::SeqCst),
            probes: self.probes.swap(0, Ordering::SeqCst),
            unknown: self.unknown.swap(0, Ordering::SeqCst),
            busy: Duration::from_nanos(self.busy_ns.swap(0, Ordering::SeqCst)),
            body_bytes: self.body_bytes.swap(0, Ordering::SeqCst),
        }
    }
}

/// An HTTP/1.1 keep-alive server on 127.0.0.1, one thread per connection. It answers
/// `GET .../models` and `POST .../chat/completions`, the latter with a pre-rendered reply chosen
/// by the `(qid=N)` marker of the last user message. It records no request; it sums the time
/// spent handling each one (from its first line to the end of the reply).
struct Server {
    port: u16,
    stats: Arc<Stats>,
    /// When set, every chat body's hash and `(qid=N)` is collected (to check the reference sends
    /// the same).
    hashes: Arc<Mutex<Option<Vec<Seen>>>>,
}

struct Shared {
    replies: Vec<Vec<u8>>,
    stats: Arc<Stats>,
    hashes: Arc<Mutex<Option<Vec<Seen>>>>,
}

/// A chat body as the server saw it: its hash, and the question id it carries.
type Seen = (u64, Option<usize>);

fn http_reply(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl Server {
    fn start(answers: &[String]) -> std::io::Result<Server> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let replies = answers
            .iter()
            .map(|a| {
                let body = json!({
                    "id": "bench",
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": a}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}
                });
                http_reply("200 OK", &body.to_string())
            })
            .collect();
        let stats = Arc::new(Stats::default());
        let hashes = Arc::new(Mutex::new(None));
        let shared = Arc::new(Shared {
            replies,
            stats: stats.clone(),
            hashes: hashes.clone(),
        });
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                std::thread::spawn(move || serve(stream, &shared));
            }
        });
        Ok(Server {
            port,
            stats,
            hashes,
        })
    }

    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    fn collect_hashes(&self, on: bool) -> Option<Vec<Seen>> {
        let mut h = self.hashes.lock().unwrap_or_else(|e| e.into_inner());
        let prev = h.take();
        if on {
            *h = Some(Vec::new());
        }
        prev.map(|mut v| {
            v.sort_unstable();
            v
        })
    }
}

/// The question id in the last `(qid=N)` of a body.
fn find_qid(body: &[u8]) -> Option<usize> {
    const MARK: &[u8] = b"(qid=";
    let at = body.windows(MARK.len()).rposition(|w| w == MARK)? + MARK.len();
    let digits = body[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&body[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

fn serve(stream: TcpStream, shared: &Shared) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut stream = stream;
    let mut line = String::new();
    let mut body = Vec::new();
    let models = http_reply("200 OK", r#"{"object":"list","data":[]}"#);
    let not_found = http_reply(
        "404 Not Found",
        r#"{"error":{"message":"no (qid=N) marker the bench knows"}}"#,
    );
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let start = Instant::now();
        let mut parts = line.split_whitespace();
        let _method = parts.next();
        let path = parts.next().unwrap_or("").to_string();
        let mut len = 0usize;
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let h = line.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        body.resize(len, 0);
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let stats = &shared.stats;
        let reply: &[u8] = if path.ends_with("/models") {
            stats.probes.fetch_add(1, Ordering::Relaxed);
            &models
        } else {
            stats.chats.fetch_add(1, Ordering::Relaxed);
            stats.body_bytes.fetch_add(len as u64, Ordering::Relaxed);
            if let Some(v) = shared
                .hashes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
            {
                let mut h = DefaultHasher::new();
                body.hash(&mut h);
                v.push((h.finish(), find_qid(&body)));
            }
            match find_qid(&body).and_then(|q| shared.replies.get(q)) {
                Some(r) => r,
                None => {
                    stats.unknown.fetch_add(1, Ordering::Relaxed);
                    &not_found
                }
            }
        };
        let ok = stream.write_all(reply).is_ok();
        stats
            .busy_ns
            .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        if !ok {
            return;
        }
    }
}

/// Checks that the reference sent exactly the bodies the harness sent, as multisets (each list
/// sorted by hash, as [`Server::collect_hashes`] returns it).
fn same_bodies(reference: &[Seen], harness: &[Seen]) -> Result<(), String> {
    let (mut i, mut j) = (0, 0);
    let (mut only_ref, mut only_run) = (Vec::new(), Vec::new());
    while i < reference.len() || j < harness.len() {
        match (reference.get(i), harness.get(j)) {
            (Some(a), Some(b)) if a.0 == b.0 => {
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a.0 < b.0 => {
                only_ref.push(a.1);
                i += 1;
            }
            (Some(a), None) => {
                only_ref.push(a.1);
                i += 1;
            }
            (_, Some(b)) => {
                only_run.push(b.1);
                j += 1;
            }
            (None, None) => break,
        }
    }
    if reference.is_empty() {
        return Err("request bodies not compared: the server collected none".into());
    }
    if only_ref.is_empty() && only_run.is_empty() {
        return Ok(());
    }
    let qids = |v: &[Option<usize>]| {
        let mut q = v.to_vec();
        q.sort();
        q.dedup();
        let shown: Vec<String> = q
            .iter()
            .take(5)
            .map(|q| q.map_or("no (qid=N)".to_string(), |q| format!("qid={q}")))
            .collect();
        let more = if q.len() > 5 { ", ..." } else { "" };
        format!("{}{more}", shown.join(", "))
    };
    Err(format!(
        "request bodies differ: {} of the harness's {} chat bodies are not among the reference's (questions {}), {} of the reference's {} not among the harness's (questions {})",
        only_run.len(),
        harness.len(),
        qids(&only_run),
        only_ref.len(),
        reference.len(),
        qids(&only_ref)
    ))
}

// ---------------------------------------------------------------------------------------------
// The reference client

/// Sends every case's turns, in order, from `THREADS` threads sharing one bare blocking client.
fn reference(url: &str, jobs: &[Vec<Vec<u8>>]) -> Result<Duration, String> {
    settle();
    let client = reqwest::blocking::Client::new();
    let next = AtomicUsize::new(0);
    let failure: Mutex<Option<String>> = Mutex::new(None);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(turns) = jobs.get(i) else { break };
                    for body in turns {
                        let sent = client
                            .post(url)
                            .header("content-type", "application/json")
                            .body(body.clone())
                            .send()
                            .and_then(|r| {
                                let status = r.status();
                                r.bytes().map(|_| status)
                            });
                        let err = match sent {
                            Ok(st) if st.is_success() => continue,
                            Ok(st) => format!("reference request: HTTP {st}"),
                            Err(e) => format!("reference request failed: {e}"),
                        };
                        *failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(err);
                        next.store(jobs.len(), Ordering::Relaxed);
                        return;
                    }
                }
            });
        }
    });
    let wall = start.elapsed();
    match failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(wall),
    }
}

// ---------------------------------------------------------------------------------------------
// Running the harness

struct Outcome {
    wall: Duration,
    code: Option<i32>,
    stdout: String,
    stderr: String,
    /// The highest VmHWM seen in /proc/<pid>/status while the process ran, in bytes.
    peak_rss: Option<u64>,
}

impl Outcome {
    fn tail(&self) -> String {
        let tail = |s: &str| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(15)..].join("\n")
        };
        format!(
            "exit code {:?}\n--- stdout (end) ---\n{}\n--- stderr (end) ---\n{}",
            self.code,
            tail(&self.stdout),
            tail(&self.stderr)
        )
    }

    /// The `N passed` figure of libtest's summary line.
    fn passed(&self) -> Option<usize> {
        let line = self
            .stdout
            .lines()
            .rev()
            .find(|l| l.starts_with("test result:"))?;
        let before = line.split(" passed").next()?;
        before.rsplit(' ').next()?.parse().ok()
    }
}

/// Flushes dirty pages (`sync`) before a measurement, so that the writeback of the previous
/// run's files (reports, snapshots) does not land in the next one; a missing `sync` is ignored.
fn settle() {
    let _ = Command::new("sync").status();
}

fn vm_hwm(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

struct Sandbox {
    dir: PathBuf,
}

impl Sandbox {
    /// `vlmtest run -- ARGS` with `suites` and the given snapshot directory, stdout and stderr
    /// going to files, in a clean environment.
    fn run(&self, suites: &str, snapshots: &Path, args: &[&str]) -> Result<Outcome, String> {
        self.run_env(suites, snapshots, args, &[])
    }

    /// [`Sandbox::run`] with extra environment variables.
    fn run_env(
        &self,
        suites: &str,
        snapshots: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Outcome, String> {
        let io = |e: std::io::Error| format!("running {BIN}: {e}");
        let out_path = self.dir.join("harness.stdout");
        let err_path = self.dir.join("harness.stderr");
        let mut cmd = Command::new(BIN);
        match args.first() {
            // `vlmtest baseline ...` rather than a harness run.
            Some(&"baseline") => cmd.args(args),
            _ => cmd.arg("run").arg("--").args(args),
        };
        cmd.current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(File::create(&out_path).map_err(io)?)
            .stderr(File::create(&err_path).map_err(io)?);
        for var in [
            "CI",
            "NEXTEST_RUN_ID",
            "VLMTEST_BASELINES",
            "VLMTEST_CACHE",
            "VLMTEST_CACHE_DIR",
            "VLMTEST_GATES",
            "VLMTEST_SERVED",
            "INSTA_UPDATE",
            "INSTA_FORCE_PASS",
            "VLMTEST_REQUIRE_MODELS",
            "VLMTEST_MAX_RESIDENT",
            "RUST_LOG",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("CARGO_MANIFEST_DIR", &self.dir)
            .env("VLMTEST_MODELS", self.dir.join("models.toml"))
            .env("VLMTEST_SUITES", self.dir.join(suites))
            .env("VLMTEST_OUT", self.dir.join("out"))
            .env("VLMTEST_SNAPSHOTS", snapshots)
            .envs(env.iter().copied());
        settle();
        let start = Instant::now();
        let mut child = cmd.spawn().map_err(io)?;
        let pid = child.id();
        let stop = Arc::new(AtomicBool::new(false));
        let poller = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut peak: Option<u64> = None;
                while !stop.load(Ordering::Relaxed) {
                    if let Some(v) = vm_hwm(pid) {
                        peak = Some(peak.map_or(v, |p| p.max(v)));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                peak
            })
        };
        let status = child.wait().map_err(io)?;
        let wall = start.elapsed();
        stop.store(true, Ordering::Relaxed);
        let peak_rss = poller.join().unwrap_or(None);
        Ok(Outcome {
            wall,
            code: status.code(),
            stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
            peak_rss,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Figures

#[derive(Default)]
struct Series(Vec<f64>);

impl Series {
    fn push(&mut self, x: f64) {
        self.0.push(x);
    }
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v
    }
    fn median(&self) -> f64 {
        let v = self.sorted();
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }
    fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }
    fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }
    fn json(&self) -> Value {
        json!({"median": self.median(), "min": self.min(), "max": self.max(), "runs": self.0})
    }
}

fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).trim().to_string())
        .unwrap_or_default();
    let mem_kb: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    json!({
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "cpu": cpu,
        "memory_bytes": mem_kb * 1024,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "arch": std::env::consts::ARCH,
    })
}

fn env_usize(var: &str, default: usize, min: usize) -> Result<usize, String> {
    match std::env::var(var) {
        Err(_) => Ok(default),
        Ok(v) if v.trim().is_empty() => Ok(default),
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n >= min => Ok(n),
            _ => Err(format!("{var} must be a whole number >= {min}, got `{v}`")),
        },
    }
}

fn count_files(dir: &Path, ext: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(ext))
                .count()
        })
        .unwrap_or(0)
}

fn bench() -> Result<(), String> {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let (cases_n, runs, warmups) = if bench_mode {
        (
            env_usize("VLMTEST_BENCH_CASES", 5000, 20)?,
            env_usize("VLMTEST_BENCH_RUNS", 7, 5)?,
            1,
        )
    } else {
        eprintln!(
            "runner bench: smoke run (60 cases, 1 run); `cargo bench --bench runner` measures"
        );
        (60, 1, 0)
    };

    // The sandbox project.
    let tmp = tempfile::Builder::new()
        .prefix("vlmtest-bench-")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?;
    let dir = tmp.path().to_path_buf();
    let image_src = Path::new(env!("CARGO_MANIFEST_DIR")).join("suites/images/horse.png");
    let image = std::fs::read(&image_src).map_err(|e| format!("{}: {e}", image_src.display()))?;
    let (cases, answers) = generate(cases_n);
    let write = |rel: &str, text: &[u8]| -> Result<(), String> {
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))
    };
    for (suites, snapshot) in [("suites", false), ("suites-snap", true)] {
        write(&format!("{suites}/images/horse.png"), &image)?;
        write(
            &format!("{suites}/bench.yaml"),
            suite_yaml(&cases, snapshot).as_bytes(),
        )?;
    }
    let server = Server::start(&answers).map_err(|e| format!("server: {e}"))?;
    write("models.toml", models_toml(&server.base_url()).as_bytes())?;
    let chat_url = format!("{}/chat/completions", server.base_url());
    let jobs = reference_bodies(&cases, &image);
    let sandbox = Sandbox { dir: dir.clone() };

    let n_models = MODELS.len();
    let case_trials = n_models * cases_n;
    let trials = case_trials + n_models; // one gate per model
    let requests = n_models * cases.requests_per_model();
    let unused_snapshots = dir.join("snapshots-unused");
    let threads = THREADS.to_string();
    let run_args = ["--test-threads", threads.as_str()];

    eprintln!(
        "runner bench: {cases_n} cases ({} VQA, {} text-only, {} conversations) × {n_models} models = {case_trials} case trials + {n_models} gates, {requests} chat requests per run; {runs} run(s) after {warmups} warm-up; sandbox {}",
        cases.vqa,
        cases.text,
        cases.conversations,
        dir.display()
    );

    let check_run = |what: &str, o: &Outcome| -> Result<(), String> {
        if o.code != Some(0) || o.passed() != Some(trials) {
            return Err(format!(
                "{what}: expected exit code 0 and {trials} passed, got {:?} passed\n{}",
                o.passed(),
                o.tail()
            ));
        }
        Ok(())
    };
    // The harness probes each model once (GET /models); the reference does not.
    let check_server = |what: &str, s: &StatsSnapshot, probes: usize| -> Result<(), String> {
        if s.unknown > 0 || s.chats != requests as u64 || s.probes != probes as u64 {
            return Err(format!(
                "{what}: the server saw {} chat requests ({} unknown) and {} probes, expected {requests} and {probes}",
                s.chats, s.unknown, s.probes
            ));
        }
        Ok(())
    };

    // a. --list
    let mut list = Series::default();
    let mut list_rss = Series::default();
    let mut first_case = String::new();
    for rep in 0..warmups + runs {
        let o = sandbox.run("suites", &unused_snapshots, &["--list"])?;
        let listed = o.stdout.lines().filter(|l| l.ends_with(": test")).count();
        first_case = o
            .stdout
            .lines()
            .find_map(|l| l.strip_suffix(": test"))
            .unwrap_or_default()
            .to_string();
        if o.code != Some(0) || listed != trials {
            return Err(format!(
                "--list: expected exit code 0 and {trials} trials, got {listed}\n{}",
                o.tail()
            ));
        }
        if rep >= warmups {
            list.push(o.wall.as_secs_f64());
            list_rss.push(o.peak_rss.unwrap_or(0) as f64);
        }
    }
    server.stats.take();
    eprintln!("  --list: median {:.3} s", list.median());

    // b, c: reference, full run, full run with snapshots, interleaved.
    let mut reference_s = Series::default();
    let mut full_s = Series::default();
    let mut snap_s = Series::default();
    let mut full_rss = Series::default();
    let mut snap_rss = Series::default();
    let mut ref_busy = Series::default();
    let mut full_busy = Series::default();
    let mut snap_busy = Series::default();
    let mut bodies_identical: Option<bool> = None;
    let mut body_bytes = 0u64;
    for rep in 0..warmups + runs {
        let measured = rep >= warmups;
        let verify = rep == 0;

        server.collect_hashes(verify);
        let wall = reference(&chat_url, &jobs)?;
        let ref_hashes = server.collect_hashes(false);
        let s = server.stats.take();
        check_server("reference", &s, 0)?;
        body_bytes = s.body_bytes;

        server.collect_hashes(verify);
        let o = sandbox.run("suites", &unused_snapshots, &run_args)?;
        let run_hashes = server.collect_hashes(false);
        let sf = server.stats.take();
        check_run("full run", &o)?;
        check_server("full run", &sf, n_models)?;
        if verify {
            // The reference must time the same work: a body it builds differently is a bench
            // bug, and the figures would compare different requests.
            same_bodies(
                ref_hashes.as_deref().unwrap_or_default(),
                run_hashes.as_deref().unwrap_or_default(),
            )
            .map_err(|e| {
                format!(
                    "{e} ({} reference body bytes, {} harness body bytes): the reference no longer mirrors the OpenAI backend; make reference_bodies() in benches/runner.rs build what src/backend/openai.rs sends",
                    s.body_bytes, sf.body_bytes
                )
            })?;
            bodies_identical = Some(true);
        }

        let snaps = dir.join(format!("snapshots-{rep}"));
        let os = sandbox.run("suites-snap", &snaps, &run_args)?;
        let ss = server.stats.take();
        check_run("full run with snapshots", &os)?;
        check_server("full run with snapshots", &ss, n_models)?;
        // The directory is kept until the end: deleting 15,000 files here would slow the next
        // run's file creation (ext4 skips recently freed inodes).
        let written = count_files(&snaps, ".snap");
        if written != case_trials {
            return Err(format!(
                "full run with snapshots: {written} .snap files written, expected {case_trials}"
            ));
        }
        eprintln!(
            "  {} {}: reference {:.3} s, full run {:.3} s, with snapshots {:.3} s",
            if measured { "run" } else { "warm-up" },
            if measured { rep + 1 - warmups } else { rep + 1 },
            wall.as_secs_f64(),
            o.wall.as_secs_f64(),
            os.wall.as_secs_f64()
        );
        if measured {
            reference_s.push(wall.as_secs_f64());
            full_s.push(o.wall.as_secs_f64());
            snap_s.push(os.wall.as_secs_f64());
            full_rss.push(o.peak_rss.unwrap_or(0) as f64);
            snap_rss.push(os.peak_rss.unwrap_or(0) as f64);
            ref_busy.push(s.busy.as_secs_f64());
            full_busy.push(sf.busy.as_secs_f64());
            snap_busy.push(ss.busy.as_secs_f64());
        }
    }

    // f. with a baseline per model (one regression trial per model × suite more) and g. with
    // record/replay: writing every answer to a recording, then replaying all of them (no
    // request reaches the server).
    let baselines = dir.join("baselines-bench");
    let bl = sandbox.run_env(
        "suites",
        &unused_snapshots,
        &["baseline"],
        &[("VLMTEST_BASELINES", baselines.to_str().unwrap_or_default())],
    )?;
    if bl.code != Some(0) || count_files(&baselines, ".json") != n_models {
        return Err(format!("vlmtest baseline: {}", bl.tail()));
    }
    server.stats.take();
    let recordings = dir.join("recordings-bench");
    let baselines_s = baselines.to_str().unwrap_or_default().to_string();
    let recordings_s = recordings.to_str().unwrap_or_default().to_string();
    let mut baseline_s = Series::default();
    let mut cache_write_s = Series::default();
    let mut cache_read_s = Series::default();
    for rep in 0..warmups + runs {
        let measured = rep >= warmups;
        let o = sandbox.run_env(
            "suites",
            &unused_snapshots,
            &run_args,
            &[("VLMTEST_BASELINES", &baselines_s)],
        )?;
        let with_regressions = trials + n_models;
        if o.code != Some(0) || o.passed() != Some(with_regressions) {
            return Err(format!(
                "full run with baselines: expected exit code 0 and {with_regressions} passed (a regression trial per model), got {:?}\n{}",
                o.passed(),
                o.tail()
            ));
        }
        check_server("full run with baselines", &server.stats.take(), n_models)?;

        // A fresh recording each time, so every run writes all of it.
        let _ = std::fs::remove_dir_all(&recordings);
        let cache = |mode: &'static str| {
            [
                ("VLMTEST_CACHE", mode),
                ("VLMTEST_CACHE_DIR", recordings_s.as_str()),
            ]
        };
        let w = sandbox.run_env("suites", &unused_snapshots, &run_args, &cache("write"))?;
        check_run("full run, recording", &w)?;
        check_server("full run, recording", &server.stats.take(), n_models)?;
        let r = sandbox.run_env("suites", &unused_snapshots, &run_args, &cache("strict"))?;
        check_run("full run, replayed (strict)", &r)?;
        let rs = server.stats.take();
        if rs.chats != 0 || rs.probes != 0 {
            return Err(format!(
                "full run, replayed (strict): the server got {} chat requests and {} probes, expected none",
                rs.chats, rs.probes
            ));
        }
        eprintln!(
            "  {} {}: with baselines {:.3} s, recording {:.3} s, replaying {:.3} s",
            if measured { "run" } else { "warm-up" },
            if measured { rep + 1 - warmups } else { rep + 1 },
            o.wall.as_secs_f64(),
            w.wall.as_secs_f64(),
            r.wall.as_secs_f64()
        );
        if measured {
            baseline_s.push(o.wall.as_secs_f64());
            cache_write_s.push(w.wall.as_secs_f64());
            cache_read_s.push(r.wall.as_secs_f64());
        }
    }

    // e. cargo-nextest: one process per trial, all writing one report. A process that runs one
    // case after the run's records are there, against one that runs it with no records.
    let run_id = std::fs::read_to_string(dir.join("out/run-id"))
        .map_err(|e| format!("out/run-id after the full runs: {e}"))?;
    let one = ["--exact", first_case.as_str()];
    let nextest_run_with = |id: &str, report: &str, what: &str| -> Result<Outcome, String> {
        let o = sandbox.run_env(
            "suites",
            &unused_snapshots,
            &one,
            &[("NEXTEST_RUN_ID", id), ("VLMTEST_REPORT", report)],
        )?;
        if o.code != Some(0) || o.passed() != Some(1) {
            return Err(format!(
                "{what}: expected exit code 0 and 1 passed\n{}",
                o.tail()
            ));
        }
        Ok(o)
    };
    let nextest_run = |id: &str, what: &str| nextest_run_with(id, "each", what);
    let mut nextest_full = Series::default();
    let mut nextest_deferred = Series::default();
    let mut nextest_empty = Series::default();
    for rep in 0..warmups + runs {
        let o = nextest_run(run_id.trim(), "one trial after the run's records")?;
        if rep >= warmups {
            nextest_full.push(o.wall.as_secs_f64());
        }
    }
    let records =
        std::fs::read_to_string(dir.join("out/cases.jsonl")).map_or(0, |t| t.lines().count());
    if records < case_trials {
        return Err(format!(
            "one trial after the run's records: cases.jsonl has {records} lines, expected at least {case_trials}"
        ));
    }
    // The same process with VLMTEST_REPORT=defer: it appends its record and renders nothing.
    for rep in 0..warmups + runs {
        let o = nextest_run_with(
            run_id.trim(),
            "defer",
            "one deferred trial after the records",
        )?;
        if rep >= warmups {
            nextest_deferred.push(o.wall.as_secs_f64());
        }
    }
    for rep in 0..warmups + runs {
        // A new run id: the process starts the run's records afresh.
        let o = nextest_run(&format!("bench-empty-{rep}"), "one trial, no records")?;
        if rep >= warmups {
            nextest_empty.push(o.wall.as_secs_f64());
        }
    }
    eprintln!(
        "  nextest-style process: {:.3} s after {records} records ({:.3} s deferred), {:.3} s with none",
        nextest_full.median(),
        nextest_deferred.median(),
        nextest_empty.median()
    );

    // Figures.
    let reference_med = reference_s.median();
    let full_med = full_s.median();
    let snap_med = snap_s.median();
    let per_case_us = |run: f64| (run - reference_med) / case_trials as f64 * 1e6;
    let overhead_us = per_case_us(full_med);
    let overhead_snap_us = per_case_us(snap_med);
    let mib = |b: f64| b / (1024.0 * 1024.0);
    let mach = machine();
    let cmd_env = "CARGO_MANIFEST_DIR=$D VLMTEST_MODELS=$D/models.toml VLMTEST_OUT=$D/out";
    let commands = json!({
        "sandbox": dir.display().to_string(),
        "list": format!("{cmd_env} VLMTEST_SUITES=$D/suites VLMTEST_SNAPSHOTS=$D/snapshots-unused {BIN} run -- --list"),
        "full": format!("{cmd_env} VLMTEST_SUITES=$D/suites VLMTEST_SNAPSHOTS=$D/snapshots-unused {BIN} run -- --test-threads {THREADS}"),
        "snapshots": format!("{cmd_env} VLMTEST_SUITES=$D/suites-snap VLMTEST_SNAPSHOTS=$D/snapshots-<run> {BIN} run -- --test-threads {THREADS}"),
        "reference": format!("in-process: one reqwest::blocking::Client, {THREADS} threads, POST {chat_url} with the same {requests} bodies, each case's turns in order"),
        "nextest": format!("NEXTEST_RUN_ID=<$D/out/run-id, or a new id for no records> VLMTEST_REPORT=<each|defer> {cmd_env} VLMTEST_SUITES=$D/suites VLMTEST_SNAPSHOTS=$D/snapshots-unused {BIN} run -- --exact {first_case}"),
    });

    let mut t = String::new();
    let profile = Path::new(BIN)
        .parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let _ = writeln!(
        t,
        "\nvlmtest runner benchmark ({}, harness binary of profile dir `{profile}`)",
        if bench_mode { "bench" } else { "smoke" }
    );
    let _ = writeln!(
        t,
        "machine: {} cores, {}, {:.1} GiB, Linux {}",
        mach["cores"],
        mach["cpu"].as_str().unwrap_or(""),
        mach["memory_bytes"].as_f64().unwrap_or(0.0) / (1u64 << 30) as f64,
        mach["kernel"].as_str().unwrap_or("")
    );
    let _ = writeln!(
        t,
        "suite: {cases_n} cases ({} VQA with 10 answers, {} text-only with expect rules, {} two-turn conversations), 1 image ({} bytes)",
        cases.vqa,
        cases.text,
        cases.conversations,
        image.len()
    );
    let _ = writeln!(
        t,
        "run: {n_models} models (openai, concurrency {THREADS}) = {case_trials} case trials + {n_models} gates; {requests} chat requests ({:.1} MiB of bodies) per run",
        mib(body_bytes as f64)
    );
    let _ = writeln!(
        t,
        "each figure: median of {runs} run(s) after {warmups} warm-up [min – max]\n"
    );
    let row = |t: &mut String, name: &str, s: &Series, unit: &str, scale: f64| {
        let _ = writeln!(
            t,
            "  {name:<46} {:>10.3} {unit:<4} [{:.3} – {:.3}]",
            s.median() * scale,
            s.min() * scale,
            s.max() * scale
        );
    };
    row(
        &mut t,
        &format!("a. --list ({trials} trials)"),
        &list,
        "s",
        1.0,
    );
    row(
        &mut t,
        "b. reference (bare reqwest, 8 threads)",
        &reference_s,
        "s",
        1.0,
    );
    row(&mut t, "b. full run --test-threads 8", &full_s, "s", 1.0);
    let _ = writeln!(
        t,
        "     run / reference {:>35.2} ×",
        full_med / reference_med
    );
    let _ = writeln!(
        t,
        "     runner overhead per case {:>26.1} µs   ((run − reference) / {case_trials})",
        overhead_us
    );
    row(
        &mut t,
        "c. full run, snapshots on (fresh dir)",
        &snap_s,
        "s",
        1.0,
    );
    let _ = writeln!(
        t,
        "     run / reference {:>35.2} ×",
        snap_med / reference_med
    );
    let _ = writeln!(
        t,
        "     runner overhead per case {:>26.1} µs",
        overhead_snap_us
    );
    row(
        &mut t,
        "f. full run with a baseline per model",
        &baseline_s,
        "s",
        1.0,
    );
    let _ = writeln!(
        t,
        "     runner overhead per case {:>26.1} µs   (+{} regression trials)",
        per_case_us(baseline_s.median()),
        n_models
    );
    row(
        &mut t,
        "g. full run recording (VLMTEST_CACHE=write)",
        &cache_write_s,
        "s",
        1.0,
    );
    let _ = writeln!(
        t,
        "     runner overhead per case {:>26.1} µs",
        per_case_us(cache_write_s.median())
    );
    row(
        &mut t,
        "g. full run replayed (VLMTEST_CACHE=strict)",
        &cache_read_s,
        "s",
        1.0,
    );
    let _ = writeln!(
        t,
        "     time per case, no request sent {:>20.1} µs",
        cache_read_s.median() / case_trials as f64 * 1e6
    );
    let to_mib = 1.0 / (1024.0 * 1024.0);
    row(
        &mut t,
        "d. peak RSS (VmHWM), full run",
        &full_rss,
        "MiB",
        to_mib,
    );
    row(
        &mut t,
        "d. peak RSS (VmHWM), snapshots on",
        &snap_rss,
        "MiB",
        to_mib,
    );
    row(
        &mut t,
        "   peak RSS (VmHWM), --list",
        &list_rss,
        "MiB",
        to_mib,
    );
    row(
        &mut t,
        &format!("e. one-trial process after {records} records"),
        &nextest_full,
        "s",
        1.0,
    );
    row(
        &mut t,
        "e. the same, VLMTEST_REPORT=defer",
        &nextest_deferred,
        "s",
        1.0,
    );
    row(
        &mut t,
        "e. one-trial process, no records",
        &nextest_empty,
        "s",
        1.0,
    );
    let _ = writeln!(
        t,
        "     cost of the run's records per process {:>13.3} s",
        nextest_full.median() - nextest_empty.median()
    );
    let busy_row = |t: &mut String, name: &str, s: &Series| {
        let _ = writeln!(
            t,
            "  server busy time, {name:<28} {:>10.3} s    ({:.1} µs per request)",
            s.median(),
            s.median() / requests as f64 * 1e6
        );
    };
    busy_row(&mut t, "reference", &ref_busy);
    busy_row(&mut t, "full run", &full_busy);
    busy_row(&mut t, "snapshots on", &snap_busy);
    let _ = writeln!(
        t,
        "  request bodies identical (reference vs harness): {}",
        match bodies_identical {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "not checked",
        }
    );
    let _ = writeln!(t, "\ncommands ($D = {}):", dir.display());
    for k in ["list", "full", "snapshots", "reference", "nextest"] {
        let _ = writeln!(t, "  {k}: {}", commands[k].as_str().unwrap_or(""));
    }
    println!("{t}");

    if bench_mode {
        let report = json!({
            "benchmark": "runner",
            "date": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            "machine": mach,
            "cases": cases_n,
            "mix": {"vqa": cases.vqa, "text": cases.text, "conversations": cases.conversations},
            "models": n_models,
            "test_threads": THREADS,
            "profile_dir": profile,
            "case_trials": case_trials,
            "trials": trials,
            "chat_requests_per_run": requests,
            "body_bytes_per_run": body_bytes,
            "runs": runs,
            "warmups": warmups,
            "list_s": list.json(),
            "reference_s": reference_s.json(),
            "full_run_s": full_s.json(),
            "full_run_over_reference": full_med / reference_med,
            "overhead_per_case_us": overhead_us,
            "snapshot_run_s": snap_s.json(),
            "snapshot_run_over_reference": snap_med / reference_med,
            "snapshot_overhead_per_case_us": overhead_snap_us,
            "baseline_run_s": baseline_s.json(),
            "baseline_overhead_per_case_us": per_case_us(baseline_s.median()),
            "cache_write_run_s": cache_write_s.json(),
            "cache_write_overhead_per_case_us": per_case_us(cache_write_s.median()),
            "cache_replay_run_s": cache_read_s.json(),
            "nextest_one_trial_s": {"after_records": nextest_full.json(), "after_records_deferred": nextest_deferred.json(), "records": records, "no_records": nextest_empty.json()},
            "peak_rss_bytes": {"list": list_rss.json(), "full_run": full_rss.json(), "snapshot_run": snap_rss.json()},
            "server_busy_s": {"reference": ref_busy.json(), "full_run": full_busy.json(), "snapshot_run": snap_busy.json()},
            "bodies_identical": bodies_identical,
            "commands": commands,
            "targets": {"list_s": 0.5, "overhead_per_case_us": 1000.0},
        });
        let target = Path::new(BIN)
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
        let path = target.join("bench-runner.json");
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("figures written to {}", path.display());
    }
    Ok(())
}
