//! What identifies a model's answers without running it: the backend and what it serves (a Hub
//! repo at its resolved commit, the hashes of local weight files, a server's model name), its
//! precision and the settings that change answers. Record/replay keys, baselines and report.json
//! carry it; computing it never loads weights, starts a server or sends a request.
//!
//! Local files are hashed (SHA-256) once per (path, size, modification time): the hashes are
//! kept in `$XDG_CACHE_HOME/vlmtest/file-hashes.json` (else `~/.cache/vlmtest/`), so a multi-GB
//! checkpoint is read once, not at every run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::config::{BackendSpec, GgufSource, ModelSource, ModelSpec};
pub(crate) use crate::fingerprint::{Fingerprint, hex};

/// The fingerprint of a model as declared.
pub(crate) fn of(spec: &ModelSpec) -> Fingerprint {
    let mut settings = BTreeMap::new();
    if let Some(s) = &spec.params.system_prompt {
        settings.insert("system_prompt".into(), s.clone());
    }
    let weights = match &spec.backend {
        BackendSpec::Candle(c) => {
            settings.insert("arch".into(), c.arch.to_string());
            settings.insert("dtype".into(), c.dtype.to_string());
            settings.insert("device".into(), c.device.to_string());
            if let Some(t) = &c.tokenizer {
                settings.insert(
                    "tokenizer".into(),
                    match t {
                        crate::config::TokenizerSource::Path(p) => files(std::slice::from_ref(p)),
                        crate::config::TokenizerSource::Hub { repo, revision } => {
                            hub(repo, revision)
                        }
                    },
                );
            }
            match &c.source {
                ModelSource::Hub { repo, revision } => hub(repo, revision),
                ModelSource::Path(p) => files(std::slice::from_ref(p)),
            }
        }
        BackendSpec::LlamaServer(l) => {
            settings.insert("args".into(), l.args.join(" "));
            settings.insert("binary".into(), l.binary.clone());
            for (key, value) in l.fingerprint() {
                settings.insert(key.into(), value);
            }
            match &l.source {
                GgufSource::Hf(repo) => format!("hf-gguf:{repo}"),
                GgufSource::Files { model, mmproj } => {
                    let mut list = vec![model.clone()];
                    list.extend(mmproj.clone());
                    files(&list)
                }
            }
        }
        BackendSpec::OpenAi(o) => format!("server:{} model={}", o.base_url, o.model),
    };
    Fingerprint {
        backend: spec.backend.kind().to_string(),
        weights,
        settings,
    }
}

/// `hf:REPO@COMMIT` from the cache's refs, without touching the network.
fn hub(repo: &str, revision: &str) -> String {
    let cache = hub_cache_dir();
    let folder = cache.join(format!("models--{}", repo.replace('/', "--")));
    let commit = if revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit()) {
        Some(revision.to_string())
    } else {
        std::fs::read_to_string(folder.join("refs").join(revision))
            .ok()
            .map(|c| c.trim().to_string())
    };
    match commit {
        Some(c) => format!("hf:{repo}@{c}"),
        None => format!("hf:{repo}@{revision} (not cached)"),
    }
}

/// The Hugging Face cache folder (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `~/.cache/huggingface/hub`), as huggingface_hub resolves it.
fn hub_cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(p).join("hub");
    }
    user_cache().join("huggingface").join("hub")
}

fn user_cache() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default()
                .join(".cache")
        })
}

/// `files:` + a digest of every file under `paths` (folders walked, sorted): name, size and
/// SHA-256. A path that is missing is named as such.
fn files(paths: &[PathBuf]) -> String {
    let mut list: Vec<(PathBuf, String)> = Vec::new();
    for root in paths {
        let mut found = Vec::new();
        walk(root, &mut found);
        if found.is_empty() {
            list.push((root.clone(), "missing".into()));
        }
        for f in found {
            let rel = f.strip_prefix(root).unwrap_or(&f).to_path_buf();
            let h = file_hash(&f).unwrap_or_else(|e| format!("unreadable: {e}"));
            list.push((rel, h));
        }
    }
    list.sort();
    let mut h = Sha256::new();
    for (p, d) in &list {
        h.update(p.to_string_lossy().as_bytes());
        h.update([0]);
        h.update(d.as_bytes());
        h.update([0]);
    }
    format!("files:{}", &hex(&h.finalize())[..16])
}

fn walk(p: &Path, out: &mut Vec<PathBuf>) {
    if p.is_file() {
        out.push(p.to_path_buf());
    } else if let Ok(rd) = std::fs::read_dir(p) {
        let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        entries.sort();
        for e in entries {
            // Hidden files (.gitattributes, editor files) do not change answers.
            if e.file_name()
                .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
            {
                walk(&e, out);
            }
        }
    }
}

/// (canonical path, size, mtime in ns) → SHA-256 hex, persisted between runs.
type HashCache = BTreeMap<String, String>;

static HASHES: Mutex<Option<HashCache>> = Mutex::new(None);

fn hash_cache_file() -> PathBuf {
    user_cache().join("vlmtest").join("file-hashes.json")
}

/// `size:SHA-256` of a file, from the persistent cache when the file did not change.
pub(crate) fn file_hash(path: &Path) -> std::io::Result<String> {
    let meta = std::fs::metadata(path)?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let key = format!("{}|{}|{mtime}", canonical.display(), meta.len());
    let mut guard = HASHES.lock().unwrap_or_else(|e| e.into_inner());
    let cache = guard.get_or_insert_with(|| {
        std::fs::read_to_string(hash_cache_file())
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    });
    if let Some(h) = cache.get(&key) {
        return Ok(h.clone());
    }
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut f, &mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let digest = format!("{}:{}", meta.len(), hex(&h.finalize()));
    cache.insert(key, digest.clone());
    // Best effort: a cache that cannot be written only costs a re-hash next time.
    let file = hash_cache_file();
    if let Some(dir) = file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(text) = serde_json::to_string(&*cache) {
        let tmp = file.with_extension(format!("tmp.{}", std::process::id()));
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, &file);
        }
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_change_the_fingerprint_and_hashes_are_reused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("model.safetensors"), b"weights-1").unwrap();
        std::fs::write(d.path().join("config.json"), b"{}").unwrap();
        let a = files(&[d.path().to_path_buf()]);
        assert_eq!(a, files(&[d.path().to_path_buf()]));
        std::fs::write(d.path().join("model.safetensors"), b"weights-22").unwrap();
        let b = files(&[d.path().to_path_buf()]);
        assert_ne!(a, b, "a changed weight file changes the fingerprint");
        assert!(files(&[d.path().join("nope")]).starts_with("files:"));
    }
}
