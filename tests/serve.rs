//! `vlmtest serve`: the offline smoke model behind the OpenAI-compatible server. Its answers,
//! asked over HTTP or by a run pointed at it, are transformers' own (`golden_smoke.json`) and
//! the same as the in-process run's; bad requests get a 400 naming the field; the server stops
//! on Ctrl-C and when the process it watches exits; the nextest setup mode exports the URL.

#![cfg(feature = "candle")]

#[path = "common/answers.rs"]
mod answers;
mod common;
#[path = "common/golden.rs"]
mod golden;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{Project, outcomes};
use serde_json::{Value, json};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn offline_models() -> PathBuf {
    root().join("models.offline.toml")
}

/// A `vlmtest serve` process, killed when dropped.
struct Served {
    child: Child,
    url: String,
    ready: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Served {
    /// Serves `model` of `models` on a free port and waits until it is ready.
    fn start(models: &Path, model: &str, extra: &[&str]) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let ready = dir.path().join("ready");
        let log = dir.path().join("serve.log");
        let mut child = serve_command(models, dir.path())
            .args(["serve", model, "--port", "0", "--ready-file"])
            .arg(&ready)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let url = loop {
            if let Ok(u) = std::fs::read_to_string(&ready) {
                break u.trim().to_string();
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "vlmtest serve exited ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "not ready after 2 minutes"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Served {
            child,
            url,
            ready,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to `secs` for the process to exit.
    fn wait_exit(&mut self, secs: u64) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(secs) {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The vlmtest command with a clean environment and `models` as VLMTEST_MODELS.
fn serve_command(models: &Path, out: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vlmtest"));
    for var in [
        "VLMTEST_SERVED",
        "VLMTEST_SUITES",
        "VLMTEST_SNAPSHOTS",
        "NEXTEST_ENV",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("VLMTEST_MODELS", models)
        .env("VLMTEST_OUT", out.join("out"))
        .current_dir(out);
    cmd
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

fn post(url: &str, body: &Value) -> (u16, Value) {
    let r = client()
        .post(format!("{url}/chat/completions"))
        .json(body)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap())
}

fn data_url(rel: &str) -> String {
    let bytes = std::fs::read(golden::fixtures().join(rel)).unwrap();
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// The request vlmtest's OpenAI client would send for the turns so far.
fn user_message(t: &answers::Turn) -> Value {
    if t.images.is_empty() {
        return json!({"role": "user", "content": t.question});
    }
    let mut parts: Vec<Value> = t
        .images
        .iter()
        .map(|i| json!({"type": "image_url", "image_url": {"url": data_url(i)}}))
        .collect();
    parts.push(json!({"type": "text", "text": t.question}));
    json!({"role": "user", "content": parts})
}

/// The smoke suite in-process, and through the server both ways a run can be pointed at it: a
/// models.toml entry `backend = "openai"`, and `VLMTEST_SERVED` over the offline profile (what
/// the nextest setup script exports). Every run passes with the committed snapshots under
/// `CI=true`, and each case's answers are transformers' and the same in all three.
#[test]
fn a_run_through_serve_answers_as_the_in_process_run() {
    let served = Served::start(&offline_models(), "smolvlm-tiny", &[]);
    let suites = root().join("tests/smoke");
    let snaps = root().join("tests/smoke/snapshots");
    let common_env = [
        ("VLMTEST_SUITES", suites.to_str().unwrap()),
        ("VLMTEST_SNAPSHOTS", snaps.to_str().unwrap()),
        ("CI", "true"),
    ];
    let run = |p: &Project, extra: &[(&str, &str)]| {
        let env: Vec<(&str, &str)> = common_env.iter().chain(extra).copied().collect();
        let run = p.run(&[], &env);
        assert_eq!(run.code, Some(0), "{}", run.all());
        let o = outcomes(&run.stdout);
        assert_eq!(o.len(), 6, "{}", run.all());
        assert!(o.iter().all(|(_, r)| r == "ok"), "{}", run.all());
        p.report()
    };

    let in_process = Project::new();
    let offline = offline_models();
    let local = run(
        &in_process,
        &[("VLMTEST_MODELS", offline.to_str().unwrap())],
    );
    assert_eq!(local["models"][0]["backend"], "candle");

    let by_entry = Project::new();
    by_entry.write(
        "models.toml",
        &format!(
            "[models.smolvlm-tiny]\nbackend = \"openai\"\nbase_url = \"{}\"\nmodel = \"smolvlm-tiny\"\nmax_new_tokens = 8\n",
            served.url
        ),
    );
    let entry = run(&by_entry, &[]);
    assert_eq!(entry["models"][0]["backend"], "openai");

    let by_env = Project::new();
    let served_var = format!("smolvlm-tiny={}", served.url);
    let env = run(
        &by_env,
        &[
            ("VLMTEST_MODELS", offline.to_str().unwrap()),
            ("VLMTEST_SERVED", &served_var),
        ],
    );
    assert_eq!(env["models"][0]["backend"], "openai");

    let golden = answers::load("smolvlm/golden_smoke.json");
    for report in [&local, &entry, &env] {
        answers::check_report(report, "smolvlm-tiny", "smoke", &golden.cases);
    }
    let answers_of = |r: &Value| -> Vec<(String, Vec<Value>)> {
        let mut v: Vec<(String, Vec<Value>)> = r["cases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let turns = c["turns"].as_array().unwrap();
                (
                    c["case"].as_str().unwrap().to_string(),
                    turns.iter().map(|t| t["answer"].clone()).collect(),
                )
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    assert_eq!(answers_of(&entry), answers_of(&local));
    assert_eq!(answers_of(&env), answers_of(&local));
    // The weights were loaded once, by the server.
    assert_eq!(
        served.log().matches("loaded in").count(),
        1,
        "{}",
        served.log()
    );
}

/// Over plain HTTP, as any other tool would ask: every smoke case, turn by turn with the earlier
/// answers sent back, gets transformers' answer and token counts; four requests at once all do.
#[test]
fn the_server_answers_chat_completions_as_transformers() {
    let served = Served::start(&offline_models(), "smolvlm-tiny", &[]);
    let base = served.url.trim_end_matches("/v1").to_string();
    let health = client().get(format!("{base}/health")).send().unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let models: Value = client()
        .get(format!("{}/models", served.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(models["data"][0]["id"], "smolvlm-tiny");

    let golden = answers::load("smolvlm/golden_smoke.json");
    for case in &golden.cases {
        let mut messages = Vec::new();
        for (k, t) in case.turns.iter().enumerate() {
            messages.push(user_message(t));
            let (status, body) = post(
                &served.url,
                &json!({
                    "model": "smolvlm-tiny",
                    "messages": messages,
                    "max_tokens": case.max_new_tokens,
                    "temperature": 0.0,
                    "stream": false
                }),
            );
            let what = format!("{} turn {}", case.id, k + 1);
            assert_eq!(status, 200, "{what}: {body}");
            assert_eq!(body["model"], "smolvlm-tiny");
            let answer = body["choices"][0]["message"]["content"].as_str().unwrap();
            assert_eq!(answer, t.answer, "{what}");
            assert_eq!(
                body["usage"]["completion_tokens"],
                t.answer_ids.len() as u64,
                "{what}"
            );
            assert_eq!(
                body["usage"]["prompt_tokens"],
                t.input_ids.len() as u64,
                "{what}"
            );
            messages.push(json!({"role": "assistant", "content": answer}));
        }
    }

    // Requests at once are answered one at a time, each as if alone.
    let case = golden.cases.iter().find(|c| c.id == "two-images").unwrap();
    let body = json!({
        "messages": [user_message(&case.turns[0])],
        "max_tokens": case.max_new_tokens,
        "temperature": 0
    });
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (url, body) = (served.url.clone(), body.clone());
            std::thread::spawn(move || post(&url, &body))
        })
        .collect();
    for h in handles {
        let (status, reply) = h.join().unwrap();
        assert_eq!(status, 200, "{reply}");
        assert_eq!(
            reply["choices"][0]["message"]["content"],
            case.turns[0].answer.as_str()
        );
    }

    // Sampling: the temperature and seed reach the model; the answer is the in-process one
    // for the same seed (and another seed answers otherwise, so the seed is not ignored).
    let local = in_process_tiny();
    let question = "What is two plus two?";
    for seed in [7u64, 8] {
        let sampled = json!({
            "messages": [{"role": "user", "content": question}],
            "max_tokens": 8, "temperature": 1.0, "seed": seed
        });
        let (status, reply) = post(&served.url, &sampled);
        assert_eq!(status, 200, "{reply}");
        assert_eq!(
            reply["choices"][0]["message"]["content"],
            sample_locally(&local, question, seed).as_str(),
            "seed {seed}"
        );
    }
    assert_ne!(
        sample_locally(&local, question, 7),
        sample_locally(&local, question, 8)
    );
}

/// The tiny SmolVLM loaded in this process.
fn in_process_tiny() -> vlmtest::backend::candle::Candle {
    use vlmtest::config::{CandleSpec, ModelSource};
    use vlmtest::kinds::{Arch, DType, DeviceKind};
    let spec = CandleSpec {
        arch: Arch::Smolvlm,
        source: ModelSource::Path(golden::fixtures().join("smolvlm")),
        dtype: DType::F32,
        tokenizer: None,
        device: DeviceKind::Cpu,
    };
    match vlmtest::backend::candle::Candle::load("tiny", &spec) {
        Ok(m) => m,
        Err(_) => panic!("the tiny SmolVLM does not load"),
    }
}

/// The in-process answer to `question`, sampled at temperature 1 with `seed`.
fn sample_locally(model: &vlmtest::backend::candle::Candle, question: &str, seed: u64) -> String {
    use vlmtest::backend::{Backend, Message, Request, Role};
    let request = Request {
        messages: vec![Message {
            role: Role::User,
            text: question.into(),
            images: Vec::new(),
        }],
        params: vlmtest::config::GenParams {
            max_new_tokens: 8,
            temperature: 1.0,
            seed: Some(seed),
            system_prompt: None,
        },
    };
    match model.generate(&request) {
        Ok(g) => g.text,
        Err(e) => panic!("{e}"),
    }
}

/// The start of a raw HTTP exchange: what the server answers to `request` bytes.
fn raw(url: &str, request: &[u8]) -> String {
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches("/v1")
        .to_string();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Bad requests get 400 (or 404 / 405) with an OpenAI-style JSON error naming what was wrong;
/// the server keeps answering after each.
#[test]
fn bad_requests_get_a_json_error_and_the_server_carries_on() {
    let served = Served::start(&offline_models(), "smolvlm-tiny", &[]);
    let image = |url: &str| {
        json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": "What is it?"}
        ]}]})
    };
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}),
            404,
            "model `gpt-4o` is not served here (this server serves `smolvlm-tiny`)",
        ),
        (json!({"messages": "hi"}), 400, "messages: must be a list"),
        (
            json!({"messages": [{"role": "user", "content": "hi"}], "stream": true}),
            400,
            "stream: streaming is not supported",
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}),
            400,
            "max_tokens: must be a whole number >= 1",
        ),
        (
            image("https://example.com/cat.png"),
            400,
            "messages[0].content[0].image_url.url: only data: URLs are accepted",
        ),
        (
            image("data:image/png;base64,not base64!"),
            400,
            "messages[0].content[0].image_url.url: invalid base64",
        ),
        (
            image("data:image/png;base64,iVBORw0KGgo="),
            400,
            "messages[0].content[0].image_url.url: the image in messages[0].content[0].image_url.url cannot be decoded",
        ),
    ];
    for (body, status, needle) in cases {
        let (got, reply) = post(&served.url, &body);
        let msg = reply["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(got, status, "{body}: {reply}");
        assert!(msg.contains(needle), "{body}: {msg:?} lacks {needle:?}");
    }
    let not_json = client()
        .post(format!("{}/chat/completions", served.url))
        .body("{\"messages\": [")
        .send()
        .unwrap();
    assert_eq!(not_json.status().as_u16(), 400);
    assert!(not_json.text().unwrap().contains("the body is not JSON"));

    let r = raw(
        &served.url,
        b"GET /v1/chat/completions HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 405"), "{r}");
    assert!(r.contains("use POST"), "{r}");
    let r = raw(
        &served.url,
        b"GET /v2/nothing HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    let r = raw(&served.url, b"HELLO\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(r.contains("malformed request line"), "{r}");
    let r = raw(
        &served.url,
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");

    // Still answering.
    let (status, reply) = post(
        &served.url,
        &json!({"messages": [{"role": "user", "content": "What is two plus two?"}], "max_tokens": 8, "temperature": 0}),
    );
    assert_eq!(status, 200, "{reply}");
    assert!(!served.log().contains("panicked"), "{}", served.log());
}

/// A model behind `vlmtest serve` that fails answers with the status that says whose fault it
/// is: the server behind it failing or answering nonsense is 502, not answering in time 504
/// (never the 500 of a bug in vlmtest), and the server carries on.
#[test]
fn a_failing_server_behind_serve_gets_502_or_504() {
    let upstream = common::Server::start(|seen| {
        let q = seen.last_question();
        if q.contains("crash") {
            common::Reply::raw(500, r#"{"error": {"message": "CUDA out of memory"}}"#)
        } else if q.contains("garbage") {
            common::Reply::raw(200, "this is not JSON")
        } else if q.contains("slow") {
            common::Reply::answer("late").after(3000)
        } else {
            common::Reply::answer("fine")
        }
    });
    let project = Project::new();
    project.models(&upstream, &[("proxied", "timeout_s = 1")]);
    let served = Served::start(&project.path("models.toml"), "proxied", &[]);
    let ask = |q: &str| {
        post(
            &served.url,
            &json!({"messages": [{"role": "user", "content": q}], "max_tokens": 8}),
        )
    };
    for (q, status, needle) in [
        ("please crash", 502, "HTTP 500"),
        ("garbage please", 502, "not JSON"),
        ("slow one", 504, "timed out"),
    ] {
        let (got, reply) = ask(q);
        let msg = reply["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(got, status, "{q}: {reply}");
        assert_eq!(reply["error"]["type"], "server_error", "{q}: {reply}");
        assert!(
            msg.contains("model `proxied` could not answer") && msg.contains(needle),
            "{q}: {msg:?} lacks {needle:?}"
        );
    }
    let (got, reply) = ask("and now?");
    assert_eq!(got, 200, "{reply}");
    assert_eq!(reply["choices"][0]["message"]["content"], "fine");
}

#[cfg(unix)]
fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a child of this test; no memory is involved.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// Ctrl-C stops the server: it exits, says so, removes its ready file and frees its port.
#[cfg(unix)]
#[test]
fn ctrl_c_stops_the_server_cleanly() {
    let mut served = Served::start(&offline_models(), "smolvlm-tiny", &[]);
    signal(served.child.id(), libc::SIGINT);
    let status = served
        .wait_exit(10)
        .expect("still running 10 s after Ctrl-C");
    assert_eq!(status.code(), Some(130), "{}", served.log());
    assert!(
        served.log().contains("vlmtest serve: stopped"),
        "{}",
        served.log()
    );
    assert!(!served.ready.exists());
    let addr = served
        .url
        .trim_start_matches("http://")
        .trim_end_matches("/v1");
    assert!(TcpStream::connect(addr).is_err(), "the port still answers");
}

/// `--exit-with PID`: the server stops once that process is gone.
#[cfg(unix)]
#[test]
fn the_server_stops_when_the_process_it_watches_exits() {
    let mut sleeper = Command::new("sleep").arg("600").spawn().unwrap();
    let pid = sleeper.id().to_string();
    let mut served = Served::start(
        &offline_models(),
        "smolvlm-tiny",
        &["--exit-with", pid.as_str()],
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        served.child.try_wait().unwrap().is_none(),
        "{}",
        served.log()
    );
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    served
        .wait_exit(10)
        .expect("still running 10 s after the watched process exited");
    assert!(
        served
            .log()
            .contains(&format!("process {pid} exited; stopping")),
        "{}",
        served.log()
    );
}

/// A model that is not in models.toml, or a port already taken, is an error before anything
/// loads.
#[test]
fn a_wrong_model_or_a_taken_port_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = serve_command(&offline_models(), dir.path())
        .args(["serve", "nope"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no model `nope`") && err.contains("(models: smolvlm-tiny)"),
        "{err}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = serve_command(&offline_models(), dir.path())
        .args(["serve", "smolvlm-tiny", "--port", port.as_str()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
    assert!(!err.contains("loading model"), "{err}");
}

/// The nextest setup mode: it serves every enabled in-process model that loads, writes
/// `VLMTEST_SERVED` into `$NEXTEST_ENV` and returns; a model that cannot load is left out (its
/// tests load it themselves and say why); the servers stop when the watched process exits.
#[cfg(unix)]
#[test]
fn the_nextest_setup_mode_serves_the_models_and_exports_their_urls() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = golden::fixtures().join("smolvlm");
    let models = dir.path().join("models.toml");
    std::fs::write(
        &models,
        format!(
            "[models.tiny]\nbackend = \"candle\"\narch = \"smolvlm\"\npath = \"{}\"\n\n\
             [models.uncached]\nbackend = \"candle\"\narch = \"smolvlm\"\nrepo = \"nobody/nothing\"\n\n\
             [models.off]\nbackend = \"candle\"\narch = \"smolvlm\"\npath = \"{}\"\nenabled = false\n\n\
             [models.remote]\nbackend = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"x\"\n",
            fixture.display(),
            fixture.display()
        ),
    )
    .unwrap();
    let env_file = dir.path().join("nextest-env");
    let hf_home = dir.path().join("hf");
    let mut runner = Command::new("sleep").arg("600").spawn().unwrap();
    let runner_pid = runner.id().to_string();
    let out = serve_command(&models, dir.path())
        .args(["serve", "--nextest", "--exit-with", runner_pid.as_str()])
        .env("NEXTEST_ENV", &env_file)
        .env("HF_HOME", &hf_home)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("HF_HUB_CACHE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("`uncached` is not served") && err.contains("vlmtest fetch uncached"),
        "{err}"
    );
    let exported = std::fs::read_to_string(&env_file).unwrap();
    let url = exported
        .trim()
        .strip_prefix("VLMTEST_SERVED=tiny=")
        .unwrap_or_else(|| panic!("{exported:?}"))
        .to_string();
    assert!(url.starts_with("http://127.0.0.1:") && url.ends_with("/v1"));
    let health = client()
        .get(format!("{}/health", url.trim_end_matches("/v1")))
        .send()
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);

    runner.kill().unwrap();
    runner.wait().unwrap();
    let start = Instant::now();
    while client().get(format!("{url}/models")).send().is_ok() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the server outlived the run by 10 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(dir.path().join("out/logs/serve-tiny.log")).unwrap();
    assert!(log.contains("exited; stopping"), "{log}");

    // Outside nextest it says what it is for.
    let out = serve_command(&models, dir.path())
        .args(["serve", "--nextest"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NEXTEST_ENV is not set"));
}

/// `VLMTEST_SERVED` naming a model models.toml does not declare is a configuration error.
#[test]
fn served_names_must_be_declared() {
    let p = Project::new();
    p.write(
        "models.toml",
        "[models.a]\nbackend = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"a\"\n",
    );
    p.suite(
        "s",
        "cases:\n  - id: c\n    question: q\n    expect: { contains: x }\n",
    );
    let run = p.run(&[], &[("VLMTEST_SERVED", "b=http://127.0.0.1:9/v1")]);
    assert_eq!(run.code, Some(2), "{}", run.all());
    assert!(
        run.stderr.contains("VLMTEST_SERVED names model `b`, which")
            && run.stderr.contains("(models: a)"),
        "{}",
        run.stderr
    );
    let run = p.run(&[], &[("VLMTEST_SERVED", "a")]);
    assert_eq!(run.code, Some(2), "{}", run.all());
    assert!(
        run.stderr.contains("VLMTEST_SERVED: `a` has no `=`"),
        "{}",
        run.stderr
    );
}
