//! `vlmtest fetch` against a stand-in Hugging Face Hub on loopback (`HF_ENDPOINT`): the files land
//! in the standard cache layout under `HF_HOME`, and a run then finds them with no network.

#![cfg(feature = "candle")]

#[path = "common/answers.rs"]
mod answers;
mod common;
#[path = "common/golden.rs"]
mod golden;

use std::io::{BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use common::{Project, http};

const REPO: &str = "tiny-org/SmolVLM-tiny";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smolvlm")
}

type Files = Vec<(String, Vec<u8>)>;
/// Status, headers, body.
type HubReply = (u16, Vec<(String, String)>, Vec<u8>);

/// Serves `files` of REPO the way the Hub does for hf-hub: the repo listing, and each file's
/// `resolve` URL with ETag, X-Repo-Commit and byte ranges. Records the paths asked for.
fn fake_hub(files: Files) -> (String, Arc<Mutex<Vec<String>>>) {
    fake_hub_of(vec![(REPO.to_string(), files)])
}

/// [`fake_hub`] serving several repos.
fn fake_hub_of(repos: Vec<(String, Files)>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let repos = repos.clone();
            let log = log.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut stream = stream;
                while let Some(req) = http::read_request(&mut reader) {
                    let auth = req
                        .headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default();
                    log.lock()
                        .unwrap()
                        .push(format!("{} auth={auth}", req.path));
                    let (status, headers, body) = repos
                        .iter()
                        .find_map(|(repo, files)| answer(repo, files, &req))
                        .unwrap_or((404, vec![], b"not found".to_vec()));
                    let mut head =
                        format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\n", body.len());
                    for (k, v) in headers {
                        head.push_str(&format!("{k}: {v}\r\n"));
                    }
                    head.push_str("\r\n");
                    if stream.write_all(head.as_bytes()).is_err()
                        || stream.write_all(&body).is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (base, seen)
}

/// The answer of `repo`'s endpoints, `None` when the request is for another repo.
fn answer(repo: &str, files: &[(String, Vec<u8>)], req: &http::RawRequest) -> Option<HubReply> {
    let json = |v: serde_json::Value| {
        (
            200,
            vec![("content-type".into(), "application/json".into())],
            v.to_string().into_bytes(),
        )
    };
    if req.path == format!("/api/models/{repo}/revision/main") {
        let siblings: Vec<_> = files
            .iter()
            .map(|(n, _)| serde_json::json!({"rfilename": n}))
            .chain([
                serde_json::json!({"rfilename": "README.md"}),
                serde_json::json!({"rfilename": "onnx/model.onnx"}),
            ])
            .collect();
        return Some(json(
            serde_json::json!({"id": repo, "sha": COMMIT, "siblings": siblings}),
        ));
    }
    let prefix = format!("/{repo}/resolve/main/");
    let name = req.path.strip_prefix(&prefix)?;
    let Some((_, data)) = files.iter().find(|(n, _)| n == name) else {
        return Some((404, vec![], b"not found".to_vec()));
    };
    let range = req
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("range"))
        .map(|(_, v)| v.trim_start_matches("bytes=").to_string())
        .unwrap_or_else(|| "0-".into());
    let (a, b) = range.split_once('-').unwrap();
    let start: usize = a.parse().unwrap_or(0).min(data.len());
    let end: usize = b
        .parse()
        .map(|e: usize| e + 1)
        .unwrap_or(data.len())
        .min(data.len());
    let headers = vec![
        ("etag".into(), format!("\"etag-{name}\"")),
        ("x-repo-commit".into(), COMMIT.into()),
        (
            "content-range".into(),
            format!("bytes {start}-{}/{}", end.saturating_sub(1), data.len()),
        ),
    ];
    Some((206, headers, data[start..end].to_vec()))
}

fn fixture_files() -> Files {
    files_of(&tiny())
}

fn files_of(dir: &Path) -> Files {
    let mut files: Files = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().to_string_lossy().to_string(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

fn fetch(p: &Project, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vlmtest"));
    cmd.arg("fetch").args(args).current_dir(p.dir.path());
    for var in [
        "HF_HOME",
        "HF_HUB_CACHE",
        "HF_ENDPOINT",
        "HF_TOKEN",
        "HF_HUB_OFFLINE",
        "VLMTEST_MODELS",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("VLMTEST_MODELS", p.path("models.toml"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn same_files(a: &Path, b: &Path) {
    for e in std::fs::read_dir(a).unwrap() {
        let e = e.unwrap();
        let other = b.join(e.file_name());
        assert_eq!(
            std::fs::read(e.path()).unwrap(),
            std::fs::read(&other).unwrap_or_else(|_| panic!("{} missing", other.display())),
            "{}",
            e.file_name().to_string_lossy()
        );
    }
}

#[test]
fn fetch_downloads_into_the_cache_and_the_run_finds_it_offline() {
    let (endpoint, seen) = fake_hub(fixture_files());
    let p = Project::new();
    // A case whose answer transformers gave (tests/fixtures/smolvlm/golden_smoke.json).
    let cases: Vec<answers::Case> = answers::load("smolvlm/golden_smoke.json")
        .cases
        .into_iter()
        .filter(|c| c.id == "one-image")
        .collect();
    answers::copy_images(&p.path("suites"));
    p.suite("s", &answers::suite("s", &cases));
    p.write(
        "models.toml",
        &format!("[models.tiny]\nbackend = \"candle\"\narch = \"smolvlm\"\nrepo = \"{REPO}\"\n\n[models.remote]\nbackend = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"x\"\n"),
    );
    let home = tempfile::tempdir().unwrap();
    let env = [
        ("HF_HOME", home.path().to_str().unwrap()),
        ("HF_ENDPOINT", endpoint.as_str()),
    ];

    let (code, stdout, stderr) = fetch(&p, &["tiny"], &env);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let snap = home
        .path()
        .join("hub/models--tiny-org--SmolVLM-tiny/snapshots")
        .join(COMMIT);
    assert!(stdout.contains(snap.to_str().unwrap()), "{stdout}");
    same_files(&tiny(), &snap);
    assert_eq!(
        std::fs::read_to_string(
            home.path()
                .join("hub/models--tiny-org--SmolVLM-tiny/refs/main")
        )
        .unwrap()
        .trim(),
        COMMIT
    );
    let asked = seen.lock().unwrap().clone();
    assert!(
        !asked
            .iter()
            .any(|p| p.contains("README.md") || p.contains("onnx")),
        "{asked:?}"
    );

    // The run needs no network: the hub is not even named.
    let run = p.run(
        &["tiny"],
        &[
            ("HF_HOME", home.path().to_str().unwrap()),
            ("HF_HUB_OFFLINE", "1"),
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.all());
    assert_eq!(run.outcome("tiny::s::one-image"), "ok");
    assert_eq!(run.outcome("tiny::s::gate"), "ok");
    answers::check_report(&p.report(), "tiny", "s", &cases);
}

#[test]
fn fetch_explains_what_it_cannot_do() {
    let p = Project::new();
    p.write(
        "models.toml",
        &format!("[models.tiny]\nbackend = \"candle\"\narch = \"smolvlm\"\nrepo = \"{REPO}\"\n"),
    );
    let home = tempfile::tempdir().unwrap();
    let h = home.path().to_str().unwrap();

    let (code, _, stderr) = fetch(&p, &["tiny"], &[("HF_HOME", h), ("HF_HUB_OFFLINE", "1")]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("HF_HUB_OFFLINE is set"), "{stderr}");

    let (code, _, stderr) = fetch(&p, &["nope"], &[("HF_HOME", h)]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("no model `nope`") && stderr.contains("models: tiny"),
        "{stderr}"
    );

    // A hub that is not there: an error naming the repo, not a panic.
    let (code, _, stderr) = fetch(
        &p,
        &["tiny"],
        &[("HF_HOME", h), ("HF_ENDPOINT", "http://127.0.0.1:9")],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot list tiny-org/SmolVLM-tiny@main"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn fetch_brings_the_tokenizer_repo_a_model_names() {
    // A Moondream2 (2025 layout) repo as the Hub has it: config, weights and a stale GPT-2
    // tokenizer.json; its real tokenizer in a repo of its own.
    let md = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/moondream2-2025");
    let mut model = files_of(&md.join("model"));
    model.push((
        "tokenizer.json".into(),
        std::fs::read(tiny().join("tokenizer.json")).unwrap(),
    ));
    let (endpoint, _) = fake_hub_of(vec![
        ("tiny-org/moondream-tiny".into(), model),
        (
            "tiny-org/starmie-tiny".into(),
            files_of(&md.join("tokenizer")),
        ),
    ]);
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(md.join("golden.json")).unwrap()).unwrap();
    let case = &golden["cases"][0];
    let p = Project::new();
    std::fs::copy(
        md.join("images/chelsea.png"),
        p.path("suites/images/chelsea.png"),
    )
    .unwrap();
    p.suite(
        "s",
        &format!(
            "name: s\ndefaults: {{ snapshot: false }}\ncases:\n  - id: cat\n    image: images/chelsea.png\n    question: {}\n    expect: {{ regex: \"(?s).\" }}\n",
            case["question"]
        ),
    );
    p.write(
        "models.toml",
        "[models.md]\nbackend = \"candle\"\narch = \"moondream2\"\nrepo = \"tiny-org/moondream-tiny\"\ntokenizer_repo = \"tiny-org/starmie-tiny\"\nmax_new_tokens = 12\n",
    );
    let home = tempfile::tempdir().unwrap();
    let h = home.path().to_str().unwrap();
    let offline = [("HF_HOME", h), ("HF_HUB_OFFLINE", "1")];

    let (code, stdout, stderr) = fetch(&p, &["md"], &[("HF_HOME", h), ("HF_ENDPOINT", &endpoint)]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let tok = home
        .path()
        .join("hub/models--tiny-org--starmie-tiny/snapshots")
        .join(COMMIT);
    assert!(
        stdout.contains(&format!("md tokenizer: {}", tok.display())),
        "{stdout}"
    );
    same_files(&md.join("tokenizer"), &tok);

    let run = p.run(&[], &offline);
    assert_eq!(run.code, Some(0), "{}", run.all());
    assert_eq!(run.outcome("md::s::cat"), "ok");
    let answer = p.report()["cases"][0]["answer"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(answer, case["decoded_text"].as_str().unwrap().trim());

    // Without the tokenizer in the cache the model is unavailable, and the reason says how to
    // fetch it.
    std::fs::remove_dir_all(home.path().join("hub/models--tiny-org--starmie-tiny")).unwrap();
    let run = p.run(&[], &offline);
    assert_eq!(run.outcome("md::s::cat"), "ignored", "{}", run.all());
    let reason = p.report()["cases"][0]["ignored"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.contains("tiny-org/starmie-tiny@main is not in the Hugging Face cache")
            && reason.contains("vlmtest fetch md"),
        "{reason}"
    );
}

/// models.toml naming only the fixture repo.
fn tiny_only(p: &Project) {
    p.write(
        "models.toml",
        &format!("[models.tiny]\nbackend = \"candle\"\narch = \"smolvlm\"\nrepo = \"{REPO}\"\n"),
    );
}

/// The Authorization header of each request the stand-in hub received since the last call
/// (`""` when there was none); the log is emptied.
fn auth_headers(seen: &Mutex<Vec<String>>) -> Vec<String> {
    std::mem::take(&mut *seen.lock().unwrap())
        .iter()
        .map(|l| l.split_once(" auth=").map(|(_, a)| a.to_string()).unwrap())
        .collect()
}

#[test]
fn fetch_sends_hf_token_as_a_bearer_token_and_no_header_without_one() {
    let (endpoint, seen) = fake_hub(fixture_files());
    let p = Project::new();
    tiny_only(&p);
    let secret = "hf_TestToken0123456789";
    let fetch_in = |home: &Path, token: Option<&str>| {
        let mut env = vec![
            ("HF_HOME", home.to_str().unwrap()),
            ("HF_ENDPOINT", endpoint.as_str()),
        ];
        env.extend(token.map(|t| ("HF_TOKEN", t)));
        let (code, stdout, stderr) = fetch(&p, &["tiny"], &env);
        assert_eq!(code, Some(0), "{stdout}\n{stderr}");
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "the token was printed:\n{stdout}\n{stderr}"
        );
        let auth = auth_headers(&seen);
        // The listing and every file.
        assert!(auth.len() > fixture_files().len(), "{auth:?}");
        auth
    };

    // HF_TOKEN: every request carries it as a bearer token.
    let home = tempfile::tempdir().unwrap();
    let auth = fetch_in(home.path(), Some(secret));
    assert!(
        auth.iter().all(|a| *a == format!("Bearer {secret}")),
        "{auth:?}"
    );

    // Without a token (no HF_TOKEN, nothing saved under HF_HOME): no Authorization header at all.
    let home = tempfile::tempdir().unwrap();
    let auth = fetch_in(home.path(), None);
    assert!(auth.iter().all(String::is_empty), "{auth:?}");

    // The token `huggingface-cli login` saved ($HF_HOME/token), when HF_TOKEN is not set.
    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join("token"), "hf_SavedByLogin\n").unwrap();
    let auth = fetch_in(home.path(), None);
    assert!(
        auth.iter().all(|a| a == "Bearer hf_SavedByLogin"),
        "{auth:?}"
    );

    // Both: HF_TOKEN wins, as in Python's huggingface_hub.
    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join("token"), "hf_SavedByLogin\n").unwrap();
    let auth = fetch_in(home.path(), Some(secret));
    assert!(
        auth.iter().all(|a| *a == format!("Bearer {secret}")),
        "{auth:?}"
    );
}

/// `HF_HUB_CACHE` names the cache folder itself and wins over `HF_HOME` (whose cache is
/// `$HF_HOME/hub`), for `vlmtest fetch` and for runs.
#[test]
fn hf_hub_cache_wins_over_hf_home_for_fetch_and_runs() {
    let (endpoint, _seen) = fake_hub(fixture_files());
    let p = Project::new();
    tiny_only(&p);
    let cases: Vec<answers::Case> = answers::load("smolvlm/golden_smoke.json")
        .cases
        .into_iter()
        .filter(|c| c.id == "one-image")
        .collect();
    answers::copy_images(&p.path("suites"));
    p.suite("s", &answers::suite("s", &cases));
    let cache = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let (c, h) = (
        cache.path().to_str().unwrap(),
        home.path().to_str().unwrap(),
    );

    let (code, stdout, stderr) = fetch(
        &p,
        &["tiny"],
        &[
            ("HF_HUB_CACHE", c),
            ("HF_HOME", h),
            ("HF_ENDPOINT", endpoint.as_str()),
        ],
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let snap = cache
        .path()
        .join("models--tiny-org--SmolVLM-tiny/snapshots")
        .join(COMMIT);
    same_files(&tiny(), &snap);
    assert!(
        !home.path().join("hub").exists(),
        "fetch wrote under HF_HOME"
    );

    // HF_HOME's cache holds a broken copy of the same repo: a run reading it would fail.
    let broken = home.path().join("hub/models--tiny-org--SmolVLM-tiny");
    let other = "ffffffffffffffffffffffffffffffffffffffff";
    std::fs::create_dir_all(broken.join("refs")).unwrap();
    std::fs::write(broken.join("refs/main"), other).unwrap();
    golden::copy_dir(&tiny(), &broken.join("snapshots").join(other), &[]);
    std::fs::write(
        broken.join("snapshots").join(other).join("config.json"),
        "{ not json",
    )
    .unwrap();

    let offline = ("HF_HUB_OFFLINE", "1");
    let run = p.run(&[], &[("HF_HUB_CACHE", c), ("HF_HOME", h), offline]);
    assert_eq!(run.code, Some(0), "{}", run.all());
    assert_eq!(run.outcome("tiny::s::one-image"), "ok");
    answers::check_report(&p.report(), "tiny", "s", &cases);

    // Without HF_HUB_CACHE the run reads HF_HOME's copy (so the pass above came from HF_HUB_CACHE).
    let run = p.run(&[], &[("HF_HOME", h), offline]);
    assert_eq!(run.outcome("tiny::s::one-image"), "FAILED", "{}", run.all());
    assert!(run.stdout.contains("config.json:1"), "{}", run.all());
}
