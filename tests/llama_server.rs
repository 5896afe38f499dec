//! The managed llama-server backend, against a real stand-in process
//! (`examples/fake_llama_server.rs`) that takes llama-server's flags and behaves like it, for
//! the faults a real server cannot be made to produce on demand. `tests/llama_server_real.rs`
//! runs a real llama-server.
//!
//! No test here waits for a fixed time: they wait for events (a file the stand-in writes when a
//! request arrives, a process that exits), with deadlines only as guards against a hang.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Project, Server};

const SUITE: &str = "cases:\n  - { id: a, question: capital?, expect: { contains: Paris }, snapshot: false }\n  - { id: b, question: capital again?, expect: { contains: Paris }, snapshot: false }\n  - { id: c, question: and again?, expect: { contains: Paris }, snapshot: false }\n";

/// The stand-in binary, built (or found up to date) once per test process: `cargo test` builds
/// examples, but a lone `cargo test --test llama_server` does not, and would otherwise run a
/// stale one.
fn fake_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().unwrap();
            let dir = exe.parent().unwrap().parent().unwrap();
            let bin = dir.join("examples").join("fake_llama_server");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut build = Command::new(cargo);
            build
                .args(["build", "--example", "fake_llama_server"])
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            // Cargo gives this test the package's CARGO_PKG_*, CARGO_MANIFEST_* … variables.
            // Build scripts that watch them (ring's does) would see them changed and rebuild
            // half the dependency tree, twice per test run.
            for (k, _) in std::env::vars_os() {
                let k = k.to_string_lossy();
                let set_by_cargo = [
                    "CARGO_PKG_",
                    "CARGO_MANIFEST_",
                    "CARGO_CRATE_",
                    "CARGO_BIN_",
                ]
                .iter()
                .any(|p| k.starts_with(p))
                    || ["CARGO_TARGET_TMPDIR", "CARGO_PRIMARY_PACKAGE", "OUT_DIR"].contains(&&*k);
                if set_by_cargo {
                    build.env_remove(&*k);
                }
            }
            let status = build.status().unwrap();
            assert!(status.success(), "cannot build the stand-in llama-server");
            assert!(bin.exists(), "{} was not built", bin.display());
            bin
        })
        .clone()
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks the process exists. Zombies are reaped by our harness.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// The pids the stand-in wrote into its state dir.
fn pids(state: &Path) -> Vec<i32> {
    let mut v: Vec<i32> = std::fs::read_dir(state)
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("pid-")?.parse().ok())
        .collect();
    v.sort();
    v
}

/// The chat request bodies the stand-ins of `state` received, in order of arrival per process.
fn requests(state: &Path) -> Vec<serde_json::Value> {
    let mut names: Vec<(i32, usize, PathBuf)> = std::fs::read_dir(state)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let (pid, n) = name
                .strip_prefix("request-")?
                .strip_suffix(".json")?
                .split_once('-')?;
            Some((pid.parse().ok()?, n.parse().ok()?, e.path()))
        })
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|(_, _, p)| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
        .collect()
}

/// Waits until `ready` holds; panics after `guard` (only a guard against a hang).
fn wait_for(what: &str, guard: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + guard;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn argv(state: &Path, pid: i32) -> Vec<String> {
    serde_json::from_str(&std::fs::read_to_string(state.join(format!("argv-{pid}.json"))).unwrap())
        .unwrap()
}

/// A project whose model `g` is a managed stand-in server; returns it and its state dir.
fn project(extra: &str) -> (Project, PathBuf) {
    let p = Project::new();
    let state = p.path("state");
    std::fs::create_dir_all(&state).unwrap();
    p.write("m.gguf", "gguf")
        .write("mmproj.gguf", "gguf")
        .suite("s", SUITE);
    p.write(
        "models.toml",
        &format!(
            "[models.g]\nbackend = \"llama-server\"\nbinary = \"{}\"\nmodel = \"m.gguf\"\nmmproj = \"mmproj.gguf\"\nargs = [\"-c\", \"4096\", \"-ngl\", \"99\"]\nstartup_timeout_s = 20\ntimeout_s = 20\n{extra}\n",
            fake_binary().display()
        ),
    );
    (p, state)
}

fn state_env(state: &Path) -> String {
    state.display().to_string()
}

#[test]
fn starts_waits_for_health_passes_flags_and_stops_after_the_run() {
    let (p, state) = project("");
    let s = state_env(&state);
    let r = p.run(
        &["--test-threads", "2"],
        &[("FAKE_STATE_DIR", &s), ("FAKE_LOAD_MS", "600")],
    );
    assert_eq!(r.code, Some(0), "{}", r.all());
    for c in ["a", "b", "c"] {
        assert_eq!(r.outcome(&format!("g::s::{c}")), "ok");
    }
    let pids = pids(&state);
    assert_eq!(pids.len(), 1, "one server per model per run");
    let args = argv(&state, pids[0]);
    let port = args[args.iter().position(|a| a == "--port").unwrap() + 1].clone();
    assert!(port.parse::<u16>().unwrap() > 0);
    let joined = args[1..].join(" ");
    let root = p.dir.path().display().to_string();
    assert_eq!(
        joined,
        format!(
            "--host 127.0.0.1 --port {port} -m {root}/m.gguf --mmproj {root}/mmproj.gguf -c 4096 -ngl 99"
        )
    );
    assert!(!alive(pids[0]), "the server was stopped after the run");
    // Load time is the wait for /health; the server's memory is its own process's.
    let report = p.report();
    let model = &report["models"][0];
    assert_eq!(model["backend"], "llama-server");
    assert!(model["load_s"].as_f64().unwrap() >= 0.5, "{model}");
    assert!(
        model["external_memory_bytes"].as_u64().unwrap() > 0,
        "{model}"
    );
    let log = std::fs::read_to_string(p.path("target/vlmtest/logs/g.log")).unwrap();
    assert!(log.contains("server is listening"), "{log}");
}

#[test]
fn hf_repos_are_passed_as_dash_hf() {
    let p = Project::new();
    let state = p.path("state");
    std::fs::create_dir_all(&state).unwrap();
    p.suite("s", SUITE).write(
        "models.toml",
        &format!(
            "[models.g]\nbackend = \"llama-server\"\nbinary = \"{}\"\nhf = \"ggml-org/SmolVLM-500M-Instruct-GGUF\"\n",
            fake_binary().display()
        ),
    );
    let r = p.run(
        &[],
        &[
            ("FAKE_STATE_DIR", &state_env(&state)),
            ("FAKE_LOAD_MS", "0"),
        ],
    );
    assert_eq!(r.code, Some(0), "{}", r.all());
    let args = argv(&state, pids(&state)[0]);
    assert!(
        args.join(" ")
            .ends_with("-hf ggml-org/SmolVLM-500M-Instruct-GGUF"),
        "{args:?}"
    );
}

#[test]
fn a_crash_mid_run_restarts_the_server_once() {
    let (p, state) = project("");
    let s = state_env(&state);
    let r = p.run(
        &["--test-threads", "1"],
        &[
            ("FAKE_STATE_DIR", &s),
            ("FAKE_LOAD_MS", "0"),
            ("FAKE_CRASH_AFTER", "1"),
            ("FAKE_CRASH_ONCE", "1"),
        ],
    );
    assert_eq!(r.code, Some(0), "{}", r.all());
    let pids = pids(&state);
    assert_eq!(pids.len(), 2, "restarted once: {pids:?}");
    assert!(pids.iter().all(|p| !alive(*p)));
    let report = p.report();
    let b = report["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["case"] == "b")
        .unwrap();
    assert_eq!(
        b["turns"][0]["retries"], 1,
        "the restart is recorded as a retry"
    );
}

#[test]
fn a_server_that_dies_again_fails_the_remaining_trials_with_its_log() {
    let (p, state) = project("");
    let s = state_env(&state);
    let r = p.run(
        &["--test-threads", "1"],
        &[
            ("FAKE_STATE_DIR", &s),
            ("FAKE_LOAD_MS", "0"),
            ("FAKE_CRASH_AFTER", "0"),
        ],
    );
    assert_ne!(r.code, Some(0));
    for c in ["a", "b", "c"] {
        assert_eq!(r.outcome(&format!("g::s::{c}")), "FAILED");
    }
    assert!(r.stdout.contains("died again"), "{}", r.stdout);
    assert!(
        r.stdout.contains("GGML_ASSERT failed: simulated crash"),
        "{}",
        r.stdout
    );
    assert_eq!(pids(&state).len(), 2, "only one restart");
}

#[test]
fn exiting_during_start_up_shows_the_command_and_the_log() {
    let (p, state) = project("");
    let s = state_env(&state);
    let r = p.run(
        &["--test-threads", "1"],
        &[("FAKE_STATE_DIR", &s), ("FAKE_EXIT_AT_START", "1")],
    );
    assert_eq!(r.outcome("g::s::a"), "FAILED");
    let out = r.stdout.clone();
    assert!(
        out.contains("llama-server for `g` exited during start-up"),
        "{out}"
    );
    assert!(
        out.contains("command: ") && out.contains("--mmproj"),
        "{out}"
    );
    assert!(
        out.contains("error: failed to load model 'broken.gguf'"),
        "{out}"
    );
    assert_eq!(pids(&state).len(), 1, "started once, not once per trial");
}

#[test]
fn a_taken_port_fails_that_model_only() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let (p, _state) = project(&format!("port = {port}"));
    let server = Server::answering(&[("capital", "Paris")]);
    let models = std::fs::read_to_string(p.path("models.toml")).unwrap();
    p.write(
        "models.toml",
        &format!(
            "{models}\n[models.other]\nbackend = \"openai\"\nbase_url = \"{}\"\nmodel = \"x\"\n",
            server.base_url()
        ),
    );
    let r = p.run(&["--test-threads", "1"], &[]);
    assert_eq!(r.outcome("g::s::a"), "FAILED");
    assert!(
        r.stdout.contains(&format!("port {port} is already in use")),
        "{}",
        r.stdout
    );
    assert_eq!(r.outcome("other::s::a"), "ok");
}

#[test]
fn a_missing_model_file_fails_and_a_missing_binary_is_unavailable() {
    let (p, _state) = project("");
    std::fs::remove_file(p.path("mmproj.gguf")).unwrap();
    let r = p.run(&["--test-threads", "1"], &[]);
    assert_eq!(r.outcome("g::s::a"), "FAILED");
    assert!(
        r.stdout.contains("`mmproj` file") && r.stdout.contains("not found"),
        "{}",
        r.stdout
    );

    let p = Project::new();
    p.suite("s", SUITE).write(
        "models.toml",
        "[models.g]\nbackend = \"llama-server\"\nbinary = \"/no/such/llama-server\"\nhf = \"a/b\"\n",
    );
    let r = p.run(&["--test-threads", "1"], &[]);
    assert_eq!(r.code, Some(0), "{}", r.all());
    assert_eq!(r.outcome("g::s::a"), "ignored");
    assert!(
        r.stdout
            .contains("llama-server binary `/no/such/llama-server` not found"),
        "{}",
        r.stdout
    );
    let r = p.run(&["--test-threads", "1"], &[("VLMTEST_REQUIRE_MODELS", "1")]);
    assert_eq!(r.outcome("g::s::a"), "FAILED");
}

#[test]
fn a_server_that_never_gets_ready_is_stopped_after_the_startup_timeout() {
    let (p, state) = project("");
    let models = std::fs::read_to_string(p.path("models.toml"))
        .unwrap()
        .replace("startup_timeout_s = 20", "startup_timeout_s = 1");
    p.write("models.toml", &models);
    let s = state_env(&state);
    // The stand-in would be ready after 1000 s: a failure saying "not ready after 1 s" is the
    // timeout at work (no wall-clock margin needed).
    let r = p.run(
        &["--test-threads", "1"],
        &[("FAKE_STATE_DIR", &s), ("FAKE_LOAD_MS", "1000000")],
    );
    assert_eq!(r.outcome("g::s::a"), "FAILED");
    assert!(r.stdout.contains("was not ready after 1 s"), "{}", r.stdout);
    assert!(pids(&state).iter().all(|p| !alive(*p)));
}

#[test]
fn sigint_to_the_process_group_stops_the_server() {
    let (p, state) = project("");
    let s = state_env(&state);
    let mut cmd = p.command(
        &["--test-threads", "1"],
        &[
            ("FAKE_STATE_DIR", &s),
            ("FAKE_LOAD_MS", "0"),
            ("FAKE_DELAY_MS", "30000"),
        ],
    );
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0); // the harness leads a group of its own, like a shell job
    }
    let mut child = cmd.spawn().unwrap();
    // The stand-in writes the request's body the moment it arrives: a request is in flight.
    wait_for("a request in flight", Duration::from_secs(60), || {
        !requests(&state).is_empty()
    });
    let server = *pids(&state).first().expect("the server started");
    // SAFETY: signals the harness's process group, as Ctrl-C in a terminal does.
    unsafe {
        libc::kill(-(child.id() as i32), libc::SIGINT);
    }
    let interrupted = Instant::now();
    let mut status = None;
    wait_for("the harness to stop", Duration::from_secs(15), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    let took = interrupted.elapsed();
    assert_eq!(status.unwrap().code(), Some(130));
    eprintln!("Ctrl-C to exit: {took:?}");
    // The harness must not sit out its 3 s grace period: it did while the exited server stayed
    // an unreaped zombie, and while a server answering a request (which, like llama-server,
    // finishes it on the first SIGTERM) waited for its SIGKILL instead of a second SIGTERM.
    assert!(
        took < Duration::from_secs(1),
        "a Ctrl-C'd run took {took:?} to exit"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(server) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(server), "llama-server {server} was left running");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("interrupted; stopped 1 llama-server process(es)"),
        "{err}"
    );
}

/// The pixels of a `data:` URL's image, and its MIME type.
fn data_url_image(url: &str) -> (String, image::RgbaImage) {
    use base64::Engine;
    let (head, b64) = url.split_once(";base64,").expect("a base64 data URL");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let mime = head.strip_prefix("data:").unwrap().to_string();
    (mime, image::load_from_memory(&bytes).unwrap().to_rgba8())
}

/// The image URLs of a request body, in order.
fn image_urls(body: &serde_json::Value) -> Vec<String> {
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default())
        .filter_map(|part| part["image_url"]["url"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn webp_images_reach_llama_server_as_png_of_the_same_pixels() {
    let (p, state) = project("");
    // A lossless WebP of the bundled horse: its pixels are the PNG's.
    let horse = image::open(p.path("suites/images/horse.png"))
        .unwrap()
        .to_rgba8();
    let mut webp = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut webp)
        .encode(
            horse.as_raw(),
            horse.width(),
            horse.height(),
            image::ExtendedColorType::Rgba8,
        )
        .unwrap();
    std::fs::write(p.path("suites/images/horse.webp"), &webp).unwrap();
    p.suite(
        "s",
        "cases:\n  - { id: webp, image: images/horse.webp, question: capital?, expect: { contains: Paris }, snapshot: false }\n  - { id: png, image: images/horse.png, question: capital?, expect: { contains: Paris }, snapshot: false }\n",
    );
    // The same suite on a plain OpenAI server, which declares no formats: WebP goes as it is.
    let server = Server::answering(&[("capital", "Paris")]);
    let models = std::fs::read_to_string(p.path("models.toml")).unwrap();
    p.write(
        "models.toml",
        &format!(
            "{models}\n[models.other]\nbackend = \"openai\"\nbase_url = \"{}\"\nmodel = \"x\"\n",
            server.base_url()
        ),
    );
    let r = p.run(
        &["--test-threads", "1"],
        &[
            ("FAKE_STATE_DIR", &state_env(&state)),
            ("FAKE_LOAD_MS", "0"),
        ],
    );
    // The stand-in, like llama-server without ffmpeg, answers 400 to WebP bytes.
    assert_eq!(r.outcome("g::s::webp"), "ok", "{}", r.all());
    assert_eq!(r.outcome("g::s::png"), "ok", "{}", r.all());
    let bodies = requests(&state);
    assert_eq!(bodies.len(), 2);
    for body in &bodies {
        let urls = image_urls(body);
        assert_eq!(urls.len(), 1);
        let (mime, pixels) = data_url_image(&urls[0]);
        assert_eq!(mime, "image/png");
        assert_eq!(pixels, horse, "the pixels sent are the image's");
    }
    let png = std::fs::read(p.path("suites/images/horse.png")).unwrap();
    let sent_png = image_urls(&bodies[1]).remove(0);
    use base64::Engine;
    assert_eq!(
        sent_png,
        format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(png)
        ),
        "a PNG is sent as its file, not re-encoded"
    );
    let other = server.chats();
    let webp_sent = other
        .iter()
        .flat_map(|s| image_urls(&s.body))
        .find(|u| u.starts_with("data:image/webp;"));
    assert!(
        webp_sent.is_some(),
        "the openai backend sends WebP as it is"
    );
}

#[test]
fn cache_prompt_is_off_for_greedy_models_unless_models_toml_turns_it_on() {
    for (extra, expected) in [
        ("", false),
        ("cache_prompt = true", true),
        ("temperature = 0.7\nseed = 1", true),
        ("temperature = 0.7\nseed = 1\ncache_prompt = false", false),
    ] {
        let (p, state) = project(extra);
        let r = p.run(
            &["--test-threads", "1"],
            &[
                ("FAKE_STATE_DIR", &state_env(&state)),
                ("FAKE_LOAD_MS", "0"),
            ],
        );
        assert_eq!(r.code, Some(0), "{extra}: {}", r.all());
        let bodies = requests(&state);
        assert_eq!(bodies.len(), 3, "{extra}");
        for b in &bodies {
            assert_eq!(b["cache_prompt"], expected, "{extra:?}: {b}");
        }
    }
}

#[test]
fn cache_prompt_is_checked_in_models_toml() {
    let p = Project::new();
    p.suite("s", SUITE).write(
        "models.toml",
        "[models.g]\nbackend = \"llama-server\"\nhf = \"a/b\"\ncache_prompt = \"no\"\n\n[models.o]\nbackend = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"x\"\ncache_prompt = true\n",
    );
    let r = p.run(&["--list"], &[]);
    assert_eq!(r.code, Some(2), "{}", r.all());
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    for needle in [
        "models.toml:4: `cache_prompt` must be true or false, got \"no\"",
        "models.toml:10: key `cache_prompt` does not apply to backend `openai`",
    ] {
        assert!(
            r.stderr.contains(needle),
            "missing {needle:?} in:\n{}",
            r.stderr
        );
    }
}

#[test]
fn the_reported_memory_is_the_servers_peak_not_its_size_after_loading() {
    let (p, state) = project("");
    // The last answer touches 96 MB and frees it: the server's resident memory right after
    // loading and between requests is a few MB; its peak is above 96 MB. The peak comes after
    // the memory sample taken after the first answer (samples are 200 ms apart), so only the
    // reading taken when the server is stopped sees it.
    let r = p.run(
        &["--test-threads", "1"],
        &[
            ("FAKE_STATE_DIR", &state_env(&state)),
            ("FAKE_LOAD_MS", "0"),
            ("FAKE_ALLOC_MB", "96"),
            ("FAKE_ALLOC_AT", "2"),
        ],
    );
    assert_eq!(r.code, Some(0), "{}", r.all());
    let report = p.report();
    let bytes = report["models"][0]["external_memory_bytes"]
        .as_u64()
        .unwrap();
    assert!(bytes >= 96 << 20, "reported {bytes} bytes");
}

/// A real llama-server and GGUF model, when this machine has them:
/// `VLMTEST_LLAMA_HF=ggml-org/SmolVLM-500M-Instruct-GGUF cargo test --test llama_server -- --ignored`
/// (or `VLMTEST_LLAMA_MODEL=/path/model.gguf VLMTEST_LLAMA_MMPROJ=/path/mmproj.gguf`).
#[test]
#[ignore = "needs llama-server on PATH and VLMTEST_LLAMA_HF or VLMTEST_LLAMA_MODEL"]
fn a_real_gguf_model_answers() {
    let source = match (
        std::env::var("VLMTEST_LLAMA_HF"),
        std::env::var("VLMTEST_LLAMA_MODEL"),
    ) {
        (Ok(hf), _) => format!("hf = \"{hf}\""),
        (_, Ok(model)) => {
            let mmproj = std::env::var("VLMTEST_LLAMA_MMPROJ")
                .map(|m| format!("mmproj = \"{m}\""))
                .unwrap_or_default();
            format!("model = \"{model}\"\n{mmproj}")
        }
        _ => panic!("set VLMTEST_LLAMA_HF or VLMTEST_LLAMA_MODEL"),
    };
    let p = Project::new();
    p.suite(
        "real",
        "cases:\n  - { id: horse, image: images/horse.png, question: \"What animal is this? One word.\", expect: { contains_any: [horse, pony] }, snapshot: false }\n",
    )
    .write("models.toml", &format!("[models.real]\nbackend = \"llama-server\"\n{source}\nstartup_timeout_s = 900\n"));
    let r = p.run(&["--test-threads", "1"], &[("VLMTEST_REQUIRE_MODELS", "1")]);
    assert_eq!(r.outcome("real::real::horse"), "ok", "{}", r.all());
}
