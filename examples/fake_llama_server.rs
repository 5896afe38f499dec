//! A stand-in for llama.cpp's `llama-server`, for vlmtest's own tests (llama.cpp cannot be
//! installed on the machines that build this project). It takes llama-server's flags, answers
//! `GET /health` with 503 while "loading" and 200 after, and serves `POST /v1/chat/completions`.
//!
//! Behaviour is scripted through the environment:
//! - `FAKE_STATE_DIR`: writes `argv-<pid>.json` (its command line) and `pid-<pid>` there, and
//!   `request-<pid>-<n>.json` (the body of its n-th chat request, n from 0) the moment a chat
//!   request arrives, before answering it: tests wait for that file to know a request is in flight.
//! - `FAKE_LOAD_MS` (default 300): how long `/health` says 503 "Loading model".
//! - `FAKE_ANSWER` (default "Paris"): the answer to every question.
//! - `FAKE_DELAY_MS`: sleep before each answer.
//! - `FAKE_CRASH_AFTER=N`: exit(3) upon the N+1-th chat request; with `FAKE_CRASH_ONCE=1` only
//!   the first process of a state dir crashes (a marker file remembers it).
//! - `FAKE_EXIT_AT_START=1`: print an error and exit(1) at once, like a bad model file.
//! - `FAKE_ALLOC_MB=N`: while answering, touch N MB of memory and free it again (a server whose
//!   resident memory peaks during requests); with `FAKE_ALLOC_AT=K` only while answering its
//!   K-th chat request (from 0).
//!
//! Like the real server, it exits at once on SIGTERM or SIGINT when no request is in flight; with
//! one in flight, the first signal lets it finish its work on it (the stand-in then exits without
//! answering) and a second one exits at once ("Received second interrupt, terminating immediately").
//!
//! Like the real server built without ffmpeg, it answers HTTP 400 "Failed to load image or audio
//! file" to an image whose bytes are not PNG, JPEG, GIF or BMP (it reads the bytes, not the MIME
//! type of the `data:` URL).

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[path = "../tests/common/http.rs"]
#[allow(dead_code)] // the headers and body are the tests' business
mod http;

fn env_u64(k: &str, default: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Chat requests being answered, and SIGTERM/SIGINT received, for the signal handler.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static SIGNALS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_signal(_: libc::c_int) {
    let n = SIGNALS.fetch_add(1, Ordering::SeqCst);
    if n == 0 && IN_FLIGHT.load(Ordering::SeqCst) > 0 {
        return; // the request in flight is answered first
    }
    if n > 0 {
        let msg = b"Received second interrupt, terminating immediately.\n";
        // SAFETY: write(2) and _exit(2) are async-signal-safe.
        unsafe {
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(1);
        }
    }
    // SAFETY: as above.
    unsafe { libc::_exit(0) }
}

fn main() {
    // SAFETY: installs a handler that only touches atomics and async-signal-safe calls.
    unsafe {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::signal(libc::SIGTERM, handler);
        libc::signal(libc::SIGINT, handler);
    }
    let argv: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        argv.iter()
            .position(|a| a == name)
            .and_then(|i| argv.get(i + 1))
            .cloned()
    };
    let state = std::env::var("FAKE_STATE_DIR").ok();
    let pid = std::process::id();
    if let Some(dir) = &state {
        let _ = std::fs::write(
            format!("{dir}/argv-{pid}.json"),
            serde_json::to_string(&argv).unwrap_or_default(),
        );
        let _ = std::fs::write(format!("{dir}/pid-{pid}"), pid.to_string());
    }
    eprintln!("fake llama-server {pid}: {}", argv.join(" "));
    if std::env::var("FAKE_EXIT_AT_START").is_ok() {
        eprintln!("error: failed to load model 'broken.gguf'");
        std::process::exit(1);
    }
    let crash_after = std::env::var("FAKE_CRASH_AFTER")
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    let crash_once = std::env::var("FAKE_CRASH_ONCE").is_ok();
    let crash_after = match (&state, crash_once) {
        (Some(dir), true) => {
            let marker = format!("{dir}/crashed");
            if std::path::Path::new(&marker).exists() {
                None
            } else {
                crash_after
            }
        }
        _ => crash_after,
    };
    let host = flag("--host").unwrap_or_else(|| "127.0.0.1".into());
    let port = flag("--port").unwrap_or_else(|| "8080".into());
    let listener = match TcpListener::bind(format!("{host}:{port}")) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "error: couldn't bind HTTP server socket, hostname: {host}, port: {port}: {e}"
            );
            std::process::exit(1);
        }
    };
    eprintln!("main: server is listening on http://{host}:{port} - starting the main loop");
    let started = Instant::now();
    let load = Duration::from_millis(env_u64("FAKE_LOAD_MS", 300));
    let answer = std::env::var("FAKE_ANSWER").unwrap_or_else(|_| "Paris".into());
    let delay = Duration::from_millis(env_u64("FAKE_DELAY_MS", 0));
    let alloc_mb = env_u64("FAKE_ALLOC_MB", 0) as usize;
    let alloc_at = std::env::var("FAKE_ALLOC_AT")
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    static CHATS: AtomicUsize = AtomicUsize::new(0);
    for stream in listener.incoming().flatten() {
        let answer = answer.clone();
        let state = state.clone();
        std::thread::spawn(move || {
            handle(stream, |method, path, body| {
                if path == "/health" {
                    return if started.elapsed() < load {
                        (503, r#"{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}"#.to_string())
                    } else {
                        (200, r#"{"status":"ok"}"#.to_string())
                    };
                }
                if method == "POST" && path.ends_with("/chat/completions") {
                    let n = CHATS.fetch_add(1, Ordering::SeqCst);
                    if let Some(dir) = &state {
                        let tmp = format!("{dir}/.request-{pid}-{n}.json");
                        let _ = std::fs::write(&tmp, body);
                        let _ = std::fs::rename(&tmp, format!("{dir}/request-{pid}-{n}.json"));
                    }
                    if crash_after.is_some_and(|c| n >= c) {
                        if let Some(dir) = &state {
                            let _ = std::fs::write(format!("{dir}/crashed"), "1");
                        }
                        eprintln!("GGML_ASSERT failed: simulated crash");
                        std::process::exit(3);
                    }
                    IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(delay);
                    IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
                    if SIGNALS.load(Ordering::SeqCst) > 0 {
                        std::process::exit(0); // asked to stop while answering
                    }
                    if let Some(why) = unreadable_image(body) {
                        eprintln!("srv  process_chun: {why}");
                        return (
                            400,
                            r#"{"error":{"code":400,"message":"Failed to load image or audio file","type":"invalid_request_error"}}"#.to_string(),
                        );
                    }
                    if alloc_mb > 0 && alloc_at.is_none_or(|k| k == n) {
                        let mut block = vec![0u8; alloc_mb << 20];
                        for page in block.chunks_mut(4096) {
                            page[0] = 1;
                        }
                        std::hint::black_box(&block);
                    }
                    let body = serde_json::json!({
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 1}
                    });
                    return (200, body.to_string());
                }
                (
                    404,
                    r#"{"error":{"code":404,"message":"File Not Found"}}"#.to_string(),
                )
            })
        });
    }
}

/// Why an image of the request could not be read without ffmpeg, if one cannot.
fn unreadable_image(body: &[u8]) -> Option<String> {
    use base64::Engine;
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    for m in v["messages"].as_array()? {
        for part in m["content"].as_array().into_iter().flatten() {
            let Some(url) = part["image_url"]["url"].as_str() else {
                continue;
            };
            let b64 = url.split_once(";base64,").map_or("", |(_, b)| b);
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap_or_default();
            let known: [&[u8]; 5] = [b"\x89PNG", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM"];
            if !known.iter().any(|magic| bytes.starts_with(magic)) {
                return Some(format!(
                    "failed to load image: {:?}…",
                    &bytes[..bytes.len().min(12)]
                ));
            }
        }
    }
    None
}

fn handle(stream: TcpStream, route: impl Fn(&str, &str, &[u8]) -> (u16, String)) {
    let Ok(clone) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(clone);
    let mut stream = stream;
    while let Some(req) = http::read_request(&mut reader) {
        let (status, text) = route(&req.method, &req.path, &req.body);
        let resp = http::response(status, "application/json", "", &text);
        if stream.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}
