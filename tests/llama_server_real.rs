//! The managed llama-server backend against a real llama.cpp `llama-server`, through models.toml
//! and the harness, on the tiny SmolVLM GGUF + mmproj in `tests/fixtures/gguf/`.
//!
//! The answers must equal `tests/fixtures/gguf/golden.json`: what llama-server answered to
//! hand-written requests from `make_gguf.py` (no vlmtest code), so these tests check what vlmtest
//! sends — images (PNG and JPEG as they are, WebP re-encoded as PNG), text-only turns, the whole
//! conversation at every turn — and that answers do not depend on earlier requests
//! (`cache_prompt: false`).
//!
//! The binary is `VLMTEST_LLAMA_SERVER`, else `llama-server` on PATH. Without either every test is
//! ignored at run time, with the reason; with `VLMTEST_LLAMA_SERVER` set (as `.ci/run` does) a
//! binary that is missing or does not run fails them. The goldens were made by the build of
//! `.ci/build-llama-server`; another llama.cpp version may answer differently.
//!
//! `harness = false` (libtest-mimic): only a custom harness can ignore a test at run time.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Project;
use libtest_mimic::{Arguments, Completion, Failed, Trial};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn golden() -> Value {
    let text = std::fs::read_to_string(fixtures().join("gguf/golden.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The llama-server to test: `Ok(None)` when there is none (the tests are ignored), `Err` when
/// `VLMTEST_LLAMA_SERVER` names one that does not work.
fn find_server() -> Result<Option<PathBuf>, String> {
    let runs = |p: &Path| -> Result<(), String> {
        let out = Command::new(p)
            .arg("--version")
            .output()
            .map_err(|e| format!("cannot run {}: {e}", p.display()))?;
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        if out.status.success() && text.contains("version") {
            Ok(())
        } else {
            Err(format!(
                "{} --version failed ({}): {text}",
                p.display(),
                out.status
            ))
        }
    };
    if let Some(v) = std::env::var_os("VLMTEST_LLAMA_SERVER").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(v);
        runs(&p).map_err(|e| format!("VLMTEST_LLAMA_SERVER: {e}"))?;
        return Ok(Some(p));
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("llama-server"))
                .find(|p| p.is_file())
        })
        .unwrap_or_default();
    match on_path {
        Some(p) => runs(&p).map(|()| Some(p)),
        None => Ok(None),
    }
}

/// A YAML double-quoted scalar holding `s` exactly: printable ASCII as it is, everything else
/// escaped (the answers of a random model hold control characters and U+FFFD).
fn yaml_quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            c if (c as u32) <= 0xFFFF => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push_str(&format!("\\U{:08X}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// A project whose model `tiny` is the fixture GGUF served by `server`, and whose suite `g`
/// holds the golden cases with `exact` expectations (`ids`: which cases; all when empty).
/// `extra_models_toml` goes into the model's table.
fn project(server: &Path, ids: &[&str], extra_models_toml: &str) -> Project {
    let g = golden();
    let p = Project::new();
    let images = p.path("suites/images");
    for f in ["gradient_96x64.png", "shapes_80x80.png"] {
        std::fs::copy(fixtures().join("images").join(f), images.join(f)).unwrap();
    }
    // The GGUFs are copied, so that the server's command line names this project (tests find
    // their server by it).
    for f in [
        "gradient_96x64.jpg",
        "shapes_80x80.webp",
        "model.gguf",
        "mmproj.gguf",
    ] {
        let to = if f.ends_with(".gguf") {
            p.path(f)
        } else {
            images.join(f)
        };
        std::fs::copy(fixtures().join("gguf").join(f), to).unwrap();
    }
    let mut yaml = format!(
        "defaults:\n  prompt: \"{{question}}\"\n  max_new_tokens: {}\n  snapshot: false\n  max_latency_ms: 600000\ncases:\n",
        g["request"]["max_tokens"]
    );
    for case in g["cases"].as_array().unwrap() {
        let id = case["id"].as_str().unwrap();
        if !ids.is_empty() && !ids.contains(&id) {
            continue;
        }
        yaml.push_str(&format!("  - id: {id}\n    turns:\n"));
        let turns = case["turns"].as_array().unwrap();
        for (i, t) in turns.iter().enumerate() {
            let q = case["questions"][i].as_str().unwrap();
            let imgs: Vec<String> = case["images"][i]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| {
                    let name = Path::new(v.as_str().unwrap()).file_name().unwrap();
                    format!("images/{}", name.to_string_lossy())
                })
                .collect();
            yaml.push_str(&format!("      - question: {}\n", yaml_quoted(q)));
            if !imgs.is_empty() {
                yaml.push_str(&format!("        images: [{}]\n", imgs.join(", ")));
            }
            let answer = t["answer"].as_str().unwrap();
            yaml.push_str(&format!(
                "        expect: {{ exact: {} }}\n",
                yaml_quoted(answer)
            ));
        }
    }
    p.suite("g", &yaml);
    let args: Vec<String> = g["server_args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("\"{}\"", a.as_str().unwrap()))
        .collect();
    p.write(
        "models.toml",
        &format!(
            "[models.tiny]\nbackend = \"llama-server\"\nbinary = \"{}\"\nmodel = \"model.gguf\"\nmmproj = \"mmproj.gguf\"\nargs = [{}]\nstartup_timeout_s = 120\ntimeout_s = 300\n{extra_models_toml}\n",
            server.display(),
            args.join(", ")
        ),
    );
    p
}

/// The answers of every case's turns in the report, by case id.
fn answers(p: &Project) -> Vec<(String, Vec<String>)> {
    let report = p.report();
    let mut v: Vec<(String, Vec<String>)> = report["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let turns = c["turns"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["answer"].as_str().unwrap_or("").to_string())
                .collect();
            (c["case"].as_str().unwrap().to_string(), turns)
        })
        .collect();
    v.sort();
    v
}

fn golden_answers(ids: &[&str]) -> Vec<(String, Vec<String>)> {
    let mut v: Vec<(String, Vec<String>)> = golden()["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| ids.is_empty() || ids.contains(&c["id"].as_str().unwrap()))
        .map(|c| {
            let turns = c["turns"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["answer"].as_str().unwrap().to_string())
                .collect();
            (c["id"].as_str().unwrap().to_string(), turns)
        })
        .collect();
    v.sort();
    v
}

fn check(cond: bool, msg: impl FnOnce() -> String) -> Result<(), Failed> {
    if cond { Ok(()) } else { Err(msg().into()) }
}

/// The pids of the llama-servers whose command line names `dir`.
fn servers_of(dir: &Path) -> Vec<i32> {
    let needle = dir.display().to_string();
    let mut pids: Vec<i32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            (cmd.contains("--mmproj") && cmd.contains(&needle)).then_some(pid)
        })
        .collect();
    pids.sort();
    pids
}

fn alive(pid: i32) -> bool {
    // A zombie still answers kill(pid, 0); /proc/PID/stat says `Z`.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    matches!(state, Some(s) if s != "Z" && s != "X")
}

/// Waits until `ready` holds, polling every 5 ms; an error after `guard` (a guard against a
/// hang, not a margin: the events come within milliseconds).
fn wait_for(what: &str, guard: Duration, mut ready: impl FnMut() -> bool) -> Result<(), Failed> {
    let deadline = Instant::now() + guard;
    while !ready() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// A harness run started by a test: killed (its servers die with it) and reaped if the test
/// returns before it ends.
struct Running(std::process::Child);

impl std::ops::Deref for Running {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// The server's log in the project.
fn log(p: &Project) -> String {
    std::fs::read_to_string(p.path("target/vlmtest/logs/tiny.log")).unwrap_or_default()
}

/// llama-server logs this when it starts working on a request.
const REQUEST_STARTED: &str = "processing task";

// ---------------------------------------------------------------------------------------------

/// Every turn has a first token within its latency, and a decoding speed where more than one
/// token came.
fn speed_figures_are_there(report: &Value) -> Result<(), Failed> {
    for c in report["cases"].as_array().unwrap() {
        for t in c["turns"].as_array().unwrap() {
            let (ttft, latency) = (
                t["time_to_first_token_ms"].as_f64(),
                t["latency_ms"].as_f64(),
            );
            check(
                matches!((ttft, latency), (Some(f), Some(l)) if f > 0.0 && f <= l),
                || format!("{}: ttft_ms {ttft:?}, latency_ms {latency:?}", c["case"]),
            )?;
            if t["completion_tokens"].as_u64().unwrap_or(0) > 1 {
                check(
                    t["tokens_per_second"].as_f64().is_some_and(|s| s > 0.0),
                    || {
                        format!(
                            "{}: tokens_per_second {}",
                            c["case"], t["tokens_per_second"]
                        )
                    },
                )?;
            }
        }
    }
    Ok(())
}

fn goldens_through_the_harness(server: &Path) -> Result<(), Failed> {
    let p = project(server, &[], "");
    let r = p.run(&["--test-threads", "1"], &[("VLMTEST_REQUIRE_MODELS", "1")]);
    check(r.code == Some(0), || {
        format!("the run failed:\n{}", r.all())
    })?;
    let got = answers(&p);
    let want = golden_answers(&[]);
    check(got == want, || {
        format!("answers differ from golden.json\n got: {got:?}\nwant: {want:?}")
    })?;
    let report = p.report();
    let m = &report["models"][0];
    check(
        m["external_memory_bytes"].as_u64().unwrap_or(0) > 1 << 20,
        || format!("the server's memory: {m}"),
    )?;
    // Time to first token and decoding speed come from the server's own `timings`.
    speed_figures_are_there(&report)?;
    // The server worked on one request per turn (7), none refused before it started.
    check(log(&p).matches(REQUEST_STARTED).count() >= 7, || log(&p))
}

/// `stream = true`: the answers, put together from llama-server's server-sent events, are the
/// goldens token for token; every turn's first token is timed as it arrives (within the
/// turn's latency), and the decoding speed is there where more than one token came.
fn streamed_answers_match_the_goldens(server: &Path) -> Result<(), Failed> {
    let p = project(server, &[], "stream = true");
    let r = p.run(&["--test-threads", "1"], &[("VLMTEST_REQUIRE_MODELS", "1")]);
    check(r.code == Some(0), || {
        format!("the run failed:\n{}", r.all())
    })?;
    let got = answers(&p);
    let want = golden_answers(&[]);
    check(got == want, || {
        format!("streamed answers differ from golden.json\n got: {got:?}\nwant: {want:?}")
    })?;
    speed_figures_are_there(&p.report())
}

fn two_runs_give_the_same_answers(server: &Path) -> Result<(), Failed> {
    let p = project(server, &[], "");
    let mut runs = Vec::new();
    for _ in 0..2 {
        let r = p.run(&["--test-threads", "1"], &[("VLMTEST_REQUIRE_MODELS", "1")]);
        check(r.code == Some(0), || {
            format!("the run failed:\n{}", r.all())
        })?;
        runs.push(answers(&p));
    }
    check(runs[0] == runs[1], || {
        format!("two runs differ:\n{:?}\n{:?}", runs[0], runs[1])
    })?;
    check(runs[0] == golden_answers(&[]), || {
        format!("answers differ from golden.json: {:?}", runs[0])
    })
}

/// Suite `k`: a long first answer (the server is killed or the run interrupted while it is being
/// generated), then two golden cases.
fn long_suite(p: &Project) {
    let g = std::fs::read_to_string(p.path("suites/g.yaml")).unwrap();
    let long = "  - id: a-long\n    question: Describe the image in detail.\n    image: images/shapes_80x80.png\n    max_new_tokens: 800\n    expect: { regex: \"(?s).\" }\n";
    let cases = g.split_once("cases:\n").unwrap().1;
    p.suite(
        "g",
        &format!(
            "defaults:\n  prompt: \"{{question}}\"\n  max_new_tokens: 12\n  snapshot: false\n  max_latency_ms: 600000\ncases:\n{long}{cases}"
        ),
    );
}

fn a_server_killed_mid_run_is_restarted_once(server: &Path) -> Result<(), Failed> {
    let p = project(server, &["png", "conversation"], "");
    long_suite(&p);
    let mut child = Running(
        p.command(&["--test-threads", "1"], &[("VLMTEST_REQUIRE_MODELS", "1")])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_for("the first request", Duration::from_secs(120), || {
        log(&p).contains(REQUEST_STARTED)
    })?;
    let first = servers_of(p.dir.path());
    check(first.len() == 1, || format!("servers: {first:?}"))?;
    // SAFETY: kills the server this run started, as a crash would.
    unsafe {
        libc::kill(first[0], libc::SIGKILL);
    }
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let status = child.wait().unwrap();
    check(status.success(), || format!("the run failed:\n{out}"))?;
    // The restarted server answered the golden cases.
    let got: Vec<_> = answers(&p)
        .into_iter()
        .filter(|(id, _)| id != "a-long")
        .collect();
    check(got == golden_answers(&["png", "conversation"]), || {
        format!("answers after the restart: {got:?}")
    })?;
    let retries: u64 = p.report()["cases"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["turns"].as_array().cloned().unwrap_or_default())
        .map(|t| t["retries"].as_u64().unwrap_or(0))
        .sum();
    check(retries == 1, || {
        format!("one request was retried on the new server: {retries}")
    })?;
    let log = log(&p);
    check(log.matches("listening on http").count() == 2, || {
        format!("started twice, the log kept across the restart:\n{log}")
    })?;
    let left = servers_of(p.dir.path());
    check(left.iter().all(|pid| !alive(*pid)), || {
        format!("servers left running: {left:?}")
    })
}

fn ctrl_c_stops_the_server_within_a_second(server: &Path) -> Result<(), Failed> {
    let p = project(server, &["png"], "");
    long_suite(&p);
    let mut cmd = p.command(&["--test-threads", "1"], &[("VLMTEST_REQUIRE_MODELS", "1")]);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0); // the harness leads a group of its own, like a shell job
    }
    let mut child = Running(cmd.spawn().unwrap());
    wait_for("the first request", Duration::from_secs(120), || {
        log(&p).contains(REQUEST_STARTED)
    })?;
    let servers = servers_of(p.dir.path());
    check(servers.len() == 1, || format!("servers: {servers:?}"))?;
    // SAFETY: signals the harness's process group, as Ctrl-C in a terminal does.
    unsafe {
        libc::kill(-(child.id() as i32), libc::SIGINT);
    }
    let interrupted = Instant::now();
    let mut status = None;
    wait_for("the harness to exit", Duration::from_secs(30), || {
        status = child.try_wait().unwrap();
        status.is_some()
    })?;
    let took = interrupted.elapsed();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    check(status.and_then(|s| s.code()) == Some(130), || {
        format!("exit status {status:?}:\n{err}")
    })?;
    eprintln!("Ctrl-C to exit: {took:?}");
    check(took < Duration::from_secs(1), || {
        format!("a Ctrl-C'd run took {took:?} to exit")
    })?;
    check(
        err.contains("interrupted; stopped 1 llama-server process(es)"),
        || err.clone(),
    )?;
    wait_for("the server to be gone", Duration::from_secs(5), || {
        !alive(servers[0])
    })
}

fn a_bad_mmproj_fails_the_start_with_the_log_tail(server: &Path) -> Result<(), Failed> {
    let p = project(server, &["png", "text-only"], "");
    std::fs::write(p.path("mmproj.gguf"), b"GGUF but not really a projector").unwrap();
    let r = p.run(&["--test-threads", "1"], &[]);
    check(r.code != Some(0), || r.all())?;
    for id in ["png", "text-only"] {
        let outcome = r.outcome(&format!("tiny::g::{id}"));
        check(outcome == "FAILED", || {
            format!("{id}: {outcome}\n{}", r.all())
        })?;
    }
    let out = &r.stdout;
    for needle in [
        "llama-server for `tiny` exited during start-up",
        "command: ",
        "--mmproj",
        "last lines of ",
        // The real server's own words, from the log's tail.
        "Failed to load CLIP model",
    ] {
        check(out.contains(needle), || format!("no {needle:?} in:\n{out}"))?;
    }
    check(servers_of(p.dir.path()).is_empty(), || {
        "a server was left".into()
    })
}

fn main() {
    let args = Arguments::from_args();
    let found = find_server();
    type Test = fn(&Path) -> Result<(), Failed>;
    let tests: [(&str, Test); 6] = [
        (
            "png_jpeg_webp_two_images_text_and_conversation_match_the_goldens",
            goldens_through_the_harness,
        ),
        (
            "streamed_answers_match_the_goldens",
            streamed_answers_match_the_goldens,
        ),
        (
            "two_runs_give_the_same_answers",
            two_runs_give_the_same_answers,
        ),
        (
            "a_server_killed_mid_run_is_restarted_once",
            a_server_killed_mid_run_is_restarted_once,
        ),
        (
            "ctrl_c_stops_the_server_within_a_second",
            ctrl_c_stops_the_server_within_a_second,
        ),
        (
            "a_bad_mmproj_fails_the_start_with_the_log_tail",
            a_bad_mmproj_fails_the_start_with_the_log_tail,
        ),
    ];
    let trials = tests
        .into_iter()
        .map(|(name, test)| {
            let found = found.clone();
            Trial::ignorable_test(name, move || match found {
                Ok(Some(server)) => {
                    // One real server at a time: llama.cpp's threads spin while they wait for
                    // work, and two servers on a 2-core machine slow each other down 3-4 times.
                    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
                    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
                    test(&server).map(|()| Completion::Completed)
                }
                Ok(None) => Ok(Completion::ignored_with(
                    "no llama-server: set VLMTEST_LLAMA_SERVER or put llama-server on PATH (.ci/build-llama-server builds one)",
                )),
                Err(e) => Err(e.into()),
            })
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
