//! Test support: a scripted OpenAI-compatible server on loopback, and a sandbox project
//! (suites, models.toml, output and snapshot directories) run through the real harness.

#![allow(dead_code)]

pub mod http;
pub mod sync;

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

/// What the server answers to one request.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub delay: Duration,
    pub headers: Vec<(String, String)>,
    /// Close the connection without answering.
    pub hang_up: bool,
}

impl Reply {
    /// A chat/completions reply with `text` as the answer.
    pub fn answer(text: &str) -> Reply {
        Reply {
            status: 200,
            body: json!({
                "id": "x",
                "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}
            })
            .to_string(),
            delay: Duration::ZERO,
            headers: Vec::new(),
            hang_up: false,
        }
    }

    pub fn raw(status: u16, body: &str) -> Reply {
        Reply {
            status,
            body: body.to_string(),
            delay: Duration::ZERO,
            headers: Vec::new(),
            hang_up: false,
        }
    }

    /// Closes the connection without a reply.
    pub fn hang_up() -> Reply {
        Reply {
            hang_up: true,
            ..Reply::raw(0, "")
        }
    }

    pub fn header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }

    pub fn after(mut self, ms: u64) -> Reply {
        self.delay = Duration::from_millis(ms);
        self
    }
}

/// A request the server received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The text of the last user message.
    pub fn last_question(&self) -> String {
        let msgs = self.body["messages"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let last = msgs
            .iter()
            .rev()
            .find(|m| m["role"] == "user")
            .cloned()
            .unwrap_or(Value::Null);
        content_text(&last["content"])
    }
}

/// The text parts of a message content (a string or a list of parts).
pub fn content_text(c: &Value) -> String {
    match c {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter(|p| p["type"] == "text")
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

type Handler = dyn Fn(&Seen) -> Reply + Send + Sync;

/// A scripted HTTP server on 127.0.0.1, one thread per connection.
pub struct Server {
    pub port: u16,
    pub requests: Arc<Mutex<Vec<Seen>>>,
    pub max_in_flight: Arc<AtomicUsize>,
}

impl Server {
    /// Starts a server whose chat/completions replies come from `handler`; `GET /v1/models`
    /// always answers 200.
    pub fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let handler: Arc<Handler> = Arc::new(handler);
        {
            let requests = requests.clone();
            let max_in_flight = max_in_flight.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    let (h, r, i, m) = (
                        handler.clone(),
                        requests.clone(),
                        in_flight.clone(),
                        max_in_flight.clone(),
                    );
                    std::thread::spawn(move || serve(stream, &*h, &r, &i, &m));
                }
            });
        }
        Server {
            port,
            requests,
            max_in_flight,
        }
    }

    /// A server answering each question by the first rule whose key the question contains.
    pub fn answering(rules: &[(&str, &str)]) -> Server {
        let rules: Vec<(String, String)> = rules
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Server::start(move |seen| {
            let q = seen.last_question();
            rules
                .iter()
                .find(|(k, _)| q.contains(k.as_str()))
                .map(|(_, v)| Reply::answer(v))
                .unwrap_or_else(|| Reply::answer("I don't know"))
        })
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// chat/completions requests received so far.
    pub fn chats(&self) -> Vec<Seen> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path.ends_with("/chat/completions"))
            .cloned()
            .collect()
    }

    pub fn all_requests(&self) -> Vec<Seen> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(
    stream: TcpStream,
    handler: &Handler,
    requests: &Mutex<Vec<Seen>>,
    in_flight: &AtomicUsize,
    max_in_flight: &AtomicUsize,
) {
    let Ok(clone) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(clone);
    let mut stream = stream;
    while let Some(req) = http::read_request(&mut reader) {
        let seen = Seen {
            method: req.method,
            path: req.path.clone(),
            headers: req.headers,
            body: serde_json::from_slice(&req.body).unwrap_or(Value::Null),
        };
        requests.lock().unwrap().push(seen.clone());
        let reply = if req.path.ends_with("/models") {
            Reply::raw(200, r#"{"object":"list","data":[]}"#)
        } else {
            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            max_in_flight.fetch_max(now, Ordering::SeqCst);
            let r = handler(&seen);
            std::thread::sleep(r.delay);
            in_flight.fetch_sub(1, Ordering::SeqCst);
            r
        };
        if reply.hang_up {
            return;
        }
        let extra: String = reply
            .headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        let ctype = if reply.body.trim_start().starts_with('<') {
            "text/html"
        } else {
            "application/json"
        };
        let resp = http::response(reply.status, ctype, &extra, &reply.body);
        if stream.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// A sandbox project: a temporary crate root with suites/, models.toml, out/ and snapshots/.
pub struct Project {
    pub dir: tempfile::TempDir,
}

/// A small real PNG, shipped with the bundled suites.
pub fn sample_image() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("suites/images/horse.png")
}

/// The outcome libtest printed for each trial: `ok`, `FAILED` or `ignored`.
pub fn outcomes(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("test "))
        .filter_map(|l| l.split_once(" ... "))
        .map(|(name, rest)| {
            let word = rest.split([' ', ',']).next().unwrap_or("").to_string();
            (name.trim().to_string(), word)
        })
        .collect()
}

impl Project {
    pub fn new() -> Project {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("suites/images")).unwrap();
        std::fs::copy(sample_image(), dir.path().join("suites/images/horse.png")).unwrap();
        Project { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) -> &Project {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
        self
    }

    pub fn suite(&self, name: &str, yaml: &str) -> &Project {
        self.write(&format!("suites/{name}.yaml"), yaml)
    }

    /// models.toml with one openai model per (name, extra TOML lines) pointing at `server`.
    pub fn models(&self, server: &Server, models: &[(&str, &str)]) -> &Project {
        let mut t = String::new();
        for (name, extra) in models {
            t.push_str(&format!(
                "[models.{name}]\nbackend = \"openai\"\nbase_url = \"{}\"\nmodel = \"{name}-served\"\n{extra}\n\n",
                server.base_url()
            ));
        }
        self.write("models.toml", &t)
    }

    /// Runs the harness (`vlmtest run -- ARGS`) in the sandbox, with a clean environment.
    pub fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let out: Output = self.command(args, env).output().unwrap();
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        }
    }

    /// The harness command (`vlmtest run -- ARGS`) in the sandbox, with a clean environment, for
    /// tests that start it themselves (to interrupt it, say).
    pub fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vlmtest"));
        cmd.arg("run")
            .arg("--")
            .args(args)
            .current_dir(self.dir.path())
            .env("CARGO_MANIFEST_DIR", self.dir.path());
        for var in [
            "CI",
            "INSTA_UPDATE",
            "INSTA_FORCE_PASS",
            "VLMTEST_MODELS",
            "VLMTEST_SUITES",
            "VLMTEST_OUT",
            "VLMTEST_SNAPSHOTS",
            "VLMTEST_REQUIRE_MODELS",
            "VLMTEST_MAX_RESIDENT",
            "VLMTEST_CACHE",
            "VLMTEST_CACHE_DIR",
            "VLMTEST_BASELINES",
            "VLMTEST_GATES",
            "VLMTEST_REPORT",
            "VLMTEST_MALLOC",
            "VLMTEST_FETCH",
            "VLMTEST_SERVED",
            "RUST_LOG",
            // It would win over the HF_HOME a test sets.
            "HF_HUB_CACHE",
        ] {
            cmd.env_remove(var);
        }
        // A model missing from the cache is downloaded on first use: no test may reach the real
        // Hub, so unless a test names its stand-in, the hub is a port nobody listens on.
        cmd.env("HF_ENDPOINT", "http://127.0.0.1:9");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    pub fn report(&self) -> Value {
        let text = std::fs::read_to_string(self.path("target/vlmtest/report.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

/// A finished harness run.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn outcome(&self, name: &str) -> String {
        outcomes(&self.stdout)
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, o)| o)
            .unwrap_or_else(|| panic!("no trial {name} in:\n{}\n{}", self.stdout, self.stderr))
    }

    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}
