//! Model files in the standard Hugging Face cache, shared with Python tools:
//! `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`, holding
//! `models--{org}--{name}/{refs,snapshots,blobs}`. Finding files never touches the network;
//! `vlmtest fetch` downloads them (hf-hub), honouring `HF_ENDPOINT`, `HF_TOKEN` and
//! `HF_HUB_OFFLINE`.

use std::path::{Path, PathBuf};

/// The cache folder.
pub fn cache_dir() -> PathBuf {
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

/// Why a cached model cannot be used.
#[derive(Debug)]
pub enum Missing {
    /// Not downloaded (or not all of it): fetching it fixes this.
    NotCached(String),
    /// Present but unusable.
    Broken(String),
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
pub fn cached_snapshot(repo: &str, revision: &str) -> Result<PathBuf, Missing> {
    snapshot_in(&cache_dir(), repo, revision)
}

pub fn snapshot_in(cache: &Path, repo: &str, revision: &str) -> Result<PathBuf, Missing> {
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
pub fn cached_tokenizer(repo: &str, revision: &str) -> Result<PathBuf, Missing> {
    tokenizer_in(&cache_dir(), repo, revision)
}

pub fn tokenizer_in(cache: &Path, repo: &str, revision: &str) -> Result<PathBuf, Missing> {
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
pub fn offline() -> bool {
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
pub fn wanted(file: &str) -> bool {
    if file.contains('/') {
        return false;
    }
    file.ends_with(".json")
        || file.ends_with(".safetensors")
        || file.ends_with(".jinja")
        || file == "tokenizer.model"
}

/// Downloads `repo` at `revision` into the cache, with a progress bar per file; returns the
/// snapshot folder.
pub fn fetch(repo: &str, revision: &str) -> Result<PathBuf, String> {
    if offline() {
        return Err(format!(
            "HF_HUB_OFFLINE is set: not downloading {repo}@{revision} (unset it to fetch)"
        ));
    }
    let cache = cache_dir();
    let token = std::env::var("HF_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .or_else(|| hf_hub::Cache::new(cache.clone()).token())
        .or_else(|| {
            // huggingface_hub keeps the token at $HF_HOME/token, beside hub/.
            cache
                .parent()
                .and_then(|p| std::fs::read_to_string(p.join("token")).ok())
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_cache_dir(cache.clone())
        .with_token(token)
        .with_progress(true)
        .build()
        .map_err(|e| format!("cannot set up the Hugging Face client: {e}"))?;
    let handle = api.repo(hf_hub::Repo::with_revision(
        repo.to_string(),
        hf_hub::RepoType::Model,
        revision.to_string(),
    ));
    let info = handle
        .info()
        .map_err(|e| format!("cannot list {repo}@{revision}: {e}"))?;
    let mut files: Vec<String> = info
        .siblings
        .iter()
        .map(|s| s.rfilename.clone())
        .filter(|f| wanted(f))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!(
            "{repo}@{revision} has no config, tokenizer or safetensors files"
        ));
    }
    let mut last = None;
    for f in &files {
        let p = handle
            .get(f)
            .map_err(|e| format!("cannot download {f} of {repo}@{revision}: {e}"))?;
        last = Some(p);
    }
    if !is_commit(revision) {
        // hf-hub records the ref; make sure it is there for the lookup above.
        let r = repo_folder(&cache, repo).join("refs").join(revision);
        if !r.is_file() {
            let _ = std::fs::create_dir_all(r.parent().unwrap_or(Path::new(".")));
            let _ = std::fs::write(&r, &info.sha);
        }
    }
    let snap = last
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .ok_or_else(|| format!("{repo}@{revision}: nothing downloaded"))?;
    Ok(snap)
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
