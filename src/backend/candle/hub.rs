//! Model files in the standard Hugging Face cache, shared with Python tools:
//! `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`, holding
//! `models--{org}--{name}/{refs,snapshots,blobs}`. Finding files never touches the network;
//! `vlmtest fetch`, and a run on a model's first use ([`first_use`]), download them (hf-hub),
//! honouring `HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_OFFLINE` and `VLMTEST_FETCH`.

use std::path::{Path, PathBuf};

use crate::backend::LoadError;
use crate::config::{CandleSpec, Fetch, ModelSource};

/// The cache folder.
pub(crate) fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(p).join("hub");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".cache"))
        .join("huggingface")
        .join("hub")
}

/// Why a cached model cannot be used: it is not downloaded (or not all of it), and fetching it
/// fixes this.
#[derive(Debug)]
pub(crate) enum Missing {
    NotCached(String),
}

impl Missing {
    /// The load error of model `name` whose files (`what`: "" for the model's own, "the
    /// tokenizer " for a tokenizer of its own) are missing.
    pub(crate) fn into_load_error(self, name: &str, what: &str) -> LoadError {
        match self {
            Missing::NotCached(why) => LoadError::NotCached {
                why: format!("{what}{why}"),
                fix: fetch_it(name),
            },
        }
    }
}

/// How to get a model's files before the run.
fn fetch_it(name: &str) -> String {
    format!(
        "fetch it with `vlmtest fetch {name}` (or set VLMTEST_REQUIRE_MODELS=1 to make this a failure)"
    )
}

/// Files a model folder needs before it is worth loading.
const REQUIRED: &[&str] = &["config.json", "tokenizer.json"];

fn repo_folder(cache: &Path, repo: &str) -> PathBuf {
    cache.join(format!("models--{}", repo.replace('/', "--")))
}

fn is_commit(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The snapshot folder of `repo` at `revision` (a branch, tag or commit), if all the files a
/// model needs are in the cache.
pub(crate) fn cached_snapshot(repo: &str, revision: &str) -> Result<PathBuf, Missing> {
    snapshot_in(&cache_dir(), repo, revision)
}

pub(crate) fn snapshot_in(cache: &Path, repo: &str, revision: &str) -> Result<PathBuf, Missing> {
    let snap = snapshot_folder(cache, repo, revision)?;
    let shown = format!("{repo}@{revision}");
    for f in REQUIRED {
        if !snap.join(f).is_file() {
            return Err(Missing::NotCached(format!(
                "{shown}: {f} is not in the cached snapshot {}",
                snap.display()
            )));
        }
    }
    super::weight_files(&snap).map_err(|e| Missing::NotCached(format!("{shown}: {e}")))?;
    Ok(snap)
}

/// The `tokenizer.json` of a tokenizer-only repo (e.g. `moondream/starmie-v1`) in the cache.
pub(crate) fn cached_tokenizer(repo: &str, revision: &str) -> Result<PathBuf, Missing> {
    tokenizer_in(&cache_dir(), repo, revision)
}

pub(crate) fn tokenizer_in(cache: &Path, repo: &str, revision: &str) -> Result<PathBuf, Missing> {
    let file = snapshot_folder(cache, repo, revision)?.join("tokenizer.json");
    if !file.is_file() {
        return Err(Missing::NotCached(format!(
            "{repo}@{revision}: tokenizer.json is not in the cache ({})",
            file.display()
        )));
    }
    Ok(file)
}

/// The snapshot folder `revision` (a branch, tag or commit) of `repo` points at, if present.
fn snapshot_folder(cache: &Path, repo: &str, revision: &str) -> Result<PathBuf, Missing> {
    let folder = repo_folder(cache, repo);
    let shown = format!("{repo}@{revision}");
    if !folder.is_dir() {
        return Err(Missing::NotCached(format!(
            "{shown} is not in the Hugging Face cache ({})",
            cache.display()
        )));
    }
    let commit = if is_commit(revision) {
        revision.to_string()
    } else {
        let r = folder.join("refs").join(revision);
        match std::fs::read_to_string(&r) {
            Ok(c) => c.trim().to_string(),
            Err(_) => {
                return Err(Missing::NotCached(format!(
                    "{shown}: the cache has no ref `{revision}` ({} is missing)",
                    r.display()
                )));
            }
        }
    };
    let snap = folder.join("snapshots").join(&commit);
    if !snap.is_dir() {
        return Err(Missing::NotCached(format!(
            "{shown}: snapshot {commit} is not in the cache ({})",
            snap.display()
        )));
    }
    Ok(snap)
}

/// Whether the user asked for no network (`HF_HUB_OFFLINE=1`, as Python's huggingface_hub).
pub(crate) fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

/// The files of a repo worth downloading for in-process inference: configs, tokenizer, chat
/// template and safetensors weights (not `.bin`, `.onnx`, `.gguf` or other formats).
pub(crate) fn wanted(file: &str) -> bool {
    if file.contains('/') {
        return false;
    }
    file.ends_with(".json")
        || file.ends_with(".safetensors")
        || file.ends_with(".jinja")
        || file == "tokenizer.model"
}

/// The token sent to the hub: `HF_TOKEN`, else the one `huggingface-cli login` saved.
fn token(cache: &Path) -> Option<String> {
    std::env::var("HF_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .or_else(|| hf_hub::Cache::new(cache.to_path_buf()).token())
        .or_else(|| {
            // huggingface_hub keeps the token at $HF_HOME/token, beside hub/.
            cache
                .parent()
                .and_then(|p| std::fs::read_to_string(p.join("token")).ok())
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        })
}

/// Why a download did not happen or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("HF_HUB_OFFLINE is set: not downloading {repo}@{revision} (unset it to fetch)")]
    Offline { repo: String, revision: String },
    #[error("cannot create the lock file {}: {source}", .path.display())]
    LockFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot lock {}: {source}", .path.display())]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set up the Hugging Face client: {0}")]
    Client(#[source] hf_hub::api::sync::ApiError),
    #[error("cannot list {repo}@{revision}: {source}")]
    List {
        repo: String,
        revision: String,
        source: hf_hub::api::sync::ApiError,
    },
    #[error("{repo}@{revision} has no config, tokenizer or safetensors files")]
    NothingToFetch { repo: String, revision: String },
    #[error("cannot download {file} of {repo}@{revision}: {source}")]
    Download {
        file: String,
        repo: String,
        revision: String,
        source: hf_hub::api::sync::ApiError,
    },
    /// The files arrived, but the snapshot still fails its check (`why`).
    #[error("downloaded {repo}@{revision}, but it cannot be used: {why}")]
    Unusable {
        repo: String,
        revision: String,
        why: String,
    },
}

/// Downloads `repo` at `revision` into the cache (`vlmtest fetch`), showing each file's
/// progress on stderr; returns the snapshot folder.
pub(crate) fn fetch(repo: &str, revision: &str) -> Result<PathBuf, FetchError> {
    fetch_checked(repo, revision, snapshot_in)
}

/// As [`fetch`], for a repo that holds only a tokenizer (`tokenizer_repo`).
pub(crate) fn fetch_tokenizer(repo: &str, revision: &str) -> Result<PathBuf, FetchError> {
    fetch_checked(repo, revision, tokenizer_snapshot_in)
}

/// How a downloaded repo is checked before it is used.
type Check = fn(&Path, &str, &str) -> Result<PathBuf, Missing>;

/// The snapshot folder of a tokenizer-only repo that holds a `tokenizer.json`.
fn tokenizer_snapshot_in(cache: &Path, repo: &str, revision: &str) -> Result<PathBuf, Missing> {
    tokenizer_in(cache, repo, revision).map(|f| f.parent().map(Path::to_path_buf).unwrap_or(f))
}

fn fetch_checked(repo: &str, revision: &str, check: Check) -> Result<PathBuf, FetchError> {
    if offline() {
        return Err(FetchError::Offline {
            repo: repo.into(),
            revision: revision.into(),
        });
    }
    let cache = cache_dir();
    let _one = one_download_at_a_time(&cache, repo)?;
    download(&cache, repo, revision, check)
}

/// Makes sure an in-process model's files are in the cache before it is loaded: on its first
/// use in a run, files that are missing are downloaded, unless `HF_HUB_OFFLINE=1` or
/// `VLMTEST_FETCH=never` forbid it. A model that is still not there is unavailable (its trials
/// are ignored with the reason, or fail under `VLMTEST_REQUIRE_MODELS=1`).
///
/// Downloads happen one at a time per process, and a process that finds another one (a
/// cargo-nextest sibling, `vlmtest fetch`) downloading the same repo waits for it and then uses
/// its files: a model is downloaded once however many trials and processes want it first.
pub(crate) fn first_use(name: &str, spec: &CandleSpec, policy: Fetch) -> Result<(), LoadError> {
    if let ModelSource::Hub { repo, revision } = &spec.source {
        ensure(name, repo, revision, policy, snapshot_in)?;
    }
    // A tokenizer that lives in a repo of its own (Moondream2's 2025 layout).
    if let Some(crate::config::TokenizerSource::Hub { repo, revision }) = &spec.tokenizer {
        ensure(name, repo, revision, policy, tokenizer_snapshot_in)?;
    }
    Ok(())
}

/// Makes sure `repo` at `revision` is in the cache (as `cached` checks it), downloading it when
/// the policy allows.
fn ensure(
    name: &str,
    repo: &str,
    revision: &str,
    policy: Fetch,
    check: Check,
) -> Result<(), LoadError> {
    let cached = |r: &str, v: &str| check(&cache_dir(), r, v);
    let why = match cached(repo, revision) {
        Ok(_) => return Ok(()),
        Err(Missing::NotCached(why)) => why,
    };
    let fetch_it = fetch_it(name);
    if offline() {
        return Err(LoadError::NotCached {
            why,
            fix: format!(
                "HF_HUB_OFFLINE=1 forbids downloading it on first use: unset it, or {fetch_it}"
            ),
        });
    }
    if policy == Fetch::Never {
        return Err(LoadError::NotCached {
            why,
            fix: format!("VLMTEST_FETCH=never forbids downloading it on first use: {fetch_it}"),
        });
    }
    let cache = cache_dir();
    let failed = |why: &str, started: bool, e: FetchError| LoadError::Download {
        why: why.to_string(),
        fix: fetch_it.clone(),
        started,
        source: std::sync::Arc::new(e),
    };
    let _one = one_download_at_a_time(&cache, repo).map_err(|e| failed(&why, false, e))?;
    // Whoever held the lock before may have brought the files.
    if cached(repo, revision).is_ok() {
        return Ok(());
    }
    crate::progress::note(format_args!(
        "model `{name}`: {repo}@{revision} is not in the Hugging Face cache yet: downloading it (HF_HUB_OFFLINE=1 or VLMTEST_FETCH=never to prevent this)"
    ));
    match download(&cache, repo, revision, check) {
        Ok(_) => Ok(()),
        Err(e) => Err(failed(&why, true, e)),
    }
}

/// Held while this process downloads a repo: no other download of this process runs (their
/// progress would share one line), and no other process downloads the same repo.
struct DownloadGuard {
    _thread: std::sync::MutexGuard<'static, ()>,
    _file: std::fs::File,
}

static DOWNLOADING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes the process's download turn, then the repo's lock file in the cache
/// (`.locks/models--{org}--{name}/vlmtest.lock`, beside huggingface_hub's own locks), waiting
/// for whoever holds them.
fn one_download_at_a_time(cache: &Path, repo: &str) -> Result<DownloadGuard, FetchError> {
    let thread = DOWNLOADING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = cache
        .join(".locks")
        .join(format!("models--{}", repo.replace('/', "--")));
    let path = dir.join("vlmtest.lock");
    let file = std::fs::create_dir_all(&dir)
        .and_then(|_| {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
        })
        .map_err(|source| FetchError::LockFile {
            path: path.clone(),
            source,
        })?;
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a file descriptor this function owns; the lock goes with the file.
        let free = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if !free {
            crate::progress::note(format_args!(
                "another process is downloading {repo}: waiting for it to finish"
            ));
            // SAFETY: as above; blocks until the other process is done (or dies).
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(FetchError::Lock {
                    path,
                    source: std::io::Error::last_os_error(),
                });
            }
        }
    }
    Ok(DownloadGuard {
        _thread: thread,
        _file: file,
    })
}

/// A file's download as hf-hub reports it, shown by [`crate::progress::Transfer`].
struct FileProgress<'a> {
    label: String,
    transfer: Option<crate::progress::Transfer>,
    /// Bytes of every file so far.
    total: &'a mut u64,
}

impl hf_hub::api::Progress for FileProgress<'_> {
    fn init(&mut self, size: usize, _: &str) {
        // hf-hub announces each file twice (before it opens the temporary file and when the
        // body starts); a resumed download then reports the bytes it already had.
        match &mut self.transfer {
            Some(t) => {
                t.set_total(size as u64);
                t.set_done(0);
            }
            None => {
                self.transfer = Some(crate::progress::Transfer::new(
                    self.label.clone(),
                    size as u64,
                ))
            }
        }
    }

    fn update(&mut self, n: usize) {
        if let Some(t) = &mut self.transfer {
            t.advance(n as u64);
        }
    }

    fn finish(&mut self) {
        if let Some(t) = self.transfer.take() {
            *self.total += t.done();
            t.finish();
        }
    }
}

/// Downloads the files of `repo` at `revision` that the cache lacks; returns the snapshot.
fn download(cache: &Path, repo: &str, revision: &str, check: Check) -> Result<PathBuf, FetchError> {
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_cache_dir(cache.to_path_buf())
        .with_token(token(cache))
        .with_progress(false)
        .with_retries(3)
        .build()
        .map_err(FetchError::Client)?;
    let hub_repo =
        hf_hub::Repo::with_revision(repo.to_string(), hf_hub::RepoType::Model, revision.into());
    let handle = api.repo(hub_repo.clone());
    let info = handle.info().map_err(|source| FetchError::List {
        repo: repo.into(),
        revision: revision.into(),
        source,
    })?;
    let mut files: Vec<String> = info
        .siblings
        .iter()
        .map(|s| s.rfilename.clone())
        .filter(|f| wanted(f))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(FetchError::NothingToFetch {
            repo: repo.into(),
            revision: revision.into(),
        });
    }
    let cached = hf_hub::Cache::new(cache.to_path_buf()).repo(hub_repo);
    let missing: Vec<&String> = files.iter().filter(|f| cached.get(f).is_none()).collect();
    let start = std::time::Instant::now();
    let mut bytes = 0u64;
    if !missing.is_empty() {
        crate::progress::note(format_args!(
            "downloading {repo}@{revision} into {}: {} file{}",
            cache.display(),
            missing.len(),
            if missing.len() == 1 { "" } else { "s" }
        ));
    }
    for (i, f) in missing.iter().enumerate() {
        let progress = FileProgress {
            label: format!("[{}/{}] {f}", i + 1, missing.len()),
            transfer: None,
            total: &mut bytes,
        };
        handle
            .download_with_progress(f, progress)
            .map_err(|source| FetchError::Download {
                file: f.to_string(),
                repo: repo.into(),
                revision: revision.into(),
                source,
            })?;
    }
    if !missing.is_empty() {
        crate::progress::note(format_args!(
            "downloaded {repo}@{revision}: {} in {}",
            crate::progress::bytes(bytes),
            crate::progress::seconds(start.elapsed())
        ));
    }
    if !is_commit(revision) {
        // hf-hub records the ref; make sure it is there for the lookup above.
        let r = repo_folder(cache, repo).join("refs").join(revision);
        if !r.is_file() {
            let _ = std::fs::create_dir_all(r.parent().unwrap_or(Path::new(".")));
            let _ = std::fs::write(&r, &info.sha);
        }
    }
    check(cache, repo, revision).map_err(|e| match e {
        Missing::NotCached(why) => FetchError::Unusable {
            repo: repo.into(),
            revision: revision.into(),
            why,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(cache: &Path, repo: &str, rev: &str, commit: &str, files: &[&str]) -> PathBuf {
        let folder = repo_folder(cache, repo);
        std::fs::create_dir_all(folder.join("refs")).unwrap();
        std::fs::write(folder.join("refs").join(rev), commit).unwrap();
        let snap = folder.join("snapshots").join(commit);
        std::fs::create_dir_all(&snap).unwrap();
        for f in files {
            std::fs::write(snap.join(f), "{}").unwrap();
        }
        snap
    }

    #[test]
    fn finds_a_snapshot_by_branch_and_by_commit() {
        let t = tempfile::tempdir().unwrap();
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let files = ["config.json", "tokenizer.json", "model.safetensors"];
        let snap = make(t.path(), "org/m", "main", commit, &files);
        assert_eq!(snapshot_in(t.path(), "org/m", "main").unwrap(), snap);
        assert_eq!(snapshot_in(t.path(), "org/m", commit).unwrap(), snap);
        match snapshot_in(t.path(), "org/m", "v2") {
            Err(Missing::NotCached(m)) => assert!(m.contains("no ref `v2`"), "{m}"),
            other => panic!("{other:?}"),
        }
        match snapshot_in(t.path(), "org/other", "main") {
            Err(Missing::NotCached(m)) => assert!(m.contains("not in the Hugging Face cache")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_partial_download_is_not_cached() {
        let t = tempfile::tempdir().unwrap();
        let commit = "89abcdef0123456789abcdef0123456789abcdef";
        make(
            t.path(),
            "org/m",
            "main",
            commit,
            &["config.json", "tokenizer.json"],
        );
        match snapshot_in(t.path(), "org/m", "main") {
            Err(Missing::NotCached(m)) => assert!(m.contains("model.safetensors"), "{m}"),
            other => panic!("{other:?}"),
        }
        let snap = repo_folder(t.path(), "org/m")
            .join("snapshots")
            .join(commit);
        std::fs::write(
            snap.join("model.safetensors.index.json"),
            r#"{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#,
        )
        .unwrap();
        std::fs::write(snap.join("model-00001-of-00002.safetensors"), "").unwrap();
        match snapshot_in(t.path(), "org/m", "main") {
            Err(Missing::NotCached(m)) => assert!(m.contains("00002-of-00002"), "{m}"),
            other => panic!("{other:?}"),
        }
        std::fs::write(snap.join("model-00002-of-00002.safetensors"), "").unwrap();
        assert!(snapshot_in(t.path(), "org/m", "main").is_ok());
    }

    #[test]
    fn a_tokenizer_repo_needs_only_its_tokenizer() {
        let t = tempfile::tempdir().unwrap();
        let commit = "0123456789abcdef0123456789abcdef01234568";
        let snap = make(t.path(), "org/tok", "main", commit, &["tokenizer.json"]);
        assert_eq!(
            tokenizer_in(t.path(), "org/tok", "main").unwrap(),
            snap.join("tokenizer.json")
        );
        match tokenizer_in(t.path(), "org/none", "main") {
            Err(Missing::NotCached(m)) => assert!(m.contains("not in the Hugging Face cache")),
            other => panic!("{other:?}"),
        }
        std::fs::remove_file(snap.join("tokenizer.json")).unwrap();
        match tokenizer_in(t.path(), "org/tok", "main") {
            Err(Missing::NotCached(m)) => assert!(m.contains("tokenizer.json is not in"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_inference_files_are_fetched() {
        assert!(wanted("config.json"));
        assert!(wanted("model-00001-of-00004.safetensors"));
        assert!(wanted("chat_template.jinja"));
        assert!(!wanted("pytorch_model.bin"));
        assert!(!wanted("onnx/model.onnx"));
        assert!(!wanted("README.md"));
    }
}
