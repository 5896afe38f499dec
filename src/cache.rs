//! Record and replay (`VLMTEST_CACHE`, `VLMTEST_CACHE_DIR`): the answers of a model recorded
//! on a machine that has it, replayed where it is not (CI without a GPU).
//!
//! A recording is plain JSON lines, one file per model (`{dir}/{model}.jsonl`), sorted by case so
//! that re-recording gives a readable diff. Each entry is keyed by everything that changes an
//! answer: the model's [`Fingerprint`] and the request (every message's role and text, each
//! image by the SHA-256 of its bytes, the system prompt and the generation parameters). Two
//! requests that differ in any of these never share an entry.
//!
//! Writers append one whole line per `write` call under an exclusive file lock, so threads and
//! processes (cargo-nextest) never interleave or lose lines; the file is rewritten sorted and
//! without duplicates (under the same lock) at the end of a run that recorded.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::backend::{Generation, Request};
use crate::fingerprint::{Fingerprint, hex};

pub(crate) use crate::kinds::CacheMode;

/// The parts of a key, each hashed, so that a miss can say which part changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeyParts {
    /// The model's fingerprint digest.
    pub model: String,
    /// Every message's role and text, and the system prompt.
    pub prompt: String,
    /// Every image's SHA-256, in order.
    pub images: String,
    /// max_new_tokens, temperature, seed.
    pub parameters: String,
}

impl KeyParts {
    pub(crate) fn of(
        fingerprint: &Fingerprint,
        request: &Request,
    ) -> Result<KeyParts, crate::config::image::ImageError> {
        let digest = |v: &serde_json::Value| {
            hex(&Sha256::digest(
                serde_json::to_string(v).unwrap_or_default().as_bytes(),
            ))[..16]
                .to_string()
        };
        let prompt: Vec<serde_json::Value> = request
            .messages
            .iter()
            .map(|m| serde_json::json!([m.role.as_str(), m.text, m.images.len()]))
            .collect();
        let mut images = Vec::new();
        for m in &request.messages {
            for img in &m.images {
                let bytes = img.bytes()?;
                images.push(hex(&Sha256::digest(bytes.as_slice())));
            }
        }
        let p = &request.params;
        Ok(KeyParts {
            model: fingerprint.digest(),
            prompt: digest(&serde_json::json!([p.system_prompt, prompt])),
            images: digest(&serde_json::json!(images)),
            parameters: digest(&serde_json::json!([
                p.max_new_tokens,
                p.temperature,
                p.seed
            ])),
        })
    }

    /// The entry key: all parts together.
    pub(crate) fn key(&self) -> String {
        let s = format!(
            "{}|{}|{}|{}",
            self.model, self.prompt, self.images, self.parameters
        );
        hex(&Sha256::digest(s.as_bytes()))[..32].to_string()
    }

    /// The parts that differ from `other`'s, by name.
    pub(crate) fn differing(&self, other: &KeyParts) -> Vec<&'static str> {
        let mut d = Vec::new();
        if self.model != other.model {
            d.push("model");
        }
        if self.prompt != other.prompt {
            d.push("prompt");
        }
        if self.images != other.images {
            d.push("image");
        }
        if self.parameters != other.parameters {
            d.push("parameters");
        }
        d
    }
}

/// A recorded answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Recorded {
    pub text: String,
    pub latency_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<f64>,
}

/// One line of a recording.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// The trial and turn the answer was recorded for (`model::suite::case#turn`), for reading
    /// the file and for explaining misses; not part of the key.
    pub case: String,
    pub key: String,
    pub parts: KeyParts,
    /// The model's fingerprint when it was recorded.
    pub fingerprint: Fingerprint,
    /// The last user message, for reading the file.
    pub question: String,
    pub answer: Recorded,
}

/// A recording file that cannot be written or tidied (`action`: create, open, lock, write,
/// rewrite).
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}: {source}", .path.display())]
pub(crate) struct RecordingError {
    pub action: &'static str,
    pub path: PathBuf,
    pub source: std::io::Error,
}

impl RecordingError {
    /// For `map_err`: `action` on `path` failed.
    fn io(action: &'static str, path: &Path) -> impl Fn(std::io::Error) -> RecordingError {
        let path = path.to_path_buf();
        move |source| RecordingError {
            action,
            path: path.clone(),
            source,
        }
    }
}

/// The recording of one model.
pub(crate) struct Recording {
    path: PathBuf,
    entries: Mutex<Option<Vec<Entry>>>,
    wrote: std::sync::atomic::AtomicBool,
}

/// What a lookup found.
pub(crate) enum Lookup {
    Hit(Generation),
    /// No entry with this key; why, in words (which part of the key changed).
    Miss(String),
}

impl Recording {
    pub(crate) fn new(dir: &Path, model: &str) -> Recording {
        Recording {
            path: dir.join(format!("{model}.jsonl")),
            entries: Mutex::new(None),
            wrote: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn with_entries<T>(&self, f: impl FnOnce(&mut Vec<Entry>) -> T) -> T {
        let mut guard = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entries = guard.get_or_insert_with(|| read_entries(&self.path));
        f(entries)
    }

    /// The recorded answer for this request, or why there is none.
    pub(crate) fn lookup(&self, case: &str, parts: &KeyParts, now: &Fingerprint) -> Lookup {
        let key = parts.key();
        self.with_entries(|entries| {
            if let Some(e) = entries.iter().rev().find(|e| e.key == key) {
                return Lookup::Hit(Generation {
                    text: e.answer.text.clone(),
                    latency: std::time::Duration::from_secs_f64(e.answer.latency_ms / 1000.0),
                    prompt_tokens: e.answer.prompt_tokens,
                    completion_tokens: e.answer.completion_tokens,
                    time_to_first_token: e
                        .answer
                        .ttft_ms
                        .map(|t| std::time::Duration::from_secs_f64(t / 1000.0)),
                    retries: 0,
                    replayed: true,
                    ..Generation::default()
                });
            }
            let same_case: Vec<&Entry> = entries.iter().filter(|e| e.case == case).collect();
            let why = match same_case
                .iter()
                .min_by_key(|e| parts.differing(&e.parts).len())
            {
                None if entries.is_empty() => format!(
                    "{} has no recordings (record them with VLMTEST_CACHE=write on a machine that has the model)",
                    self.path.display()
                ),
                None => format!(
                    "{} has no recording for {case} (record it with VLMTEST_CACHE=readwrite)",
                    self.path.display()
                ),
                Some(e) => {
                    let what = parts.differing(&e.parts);
                    let mut s = format!(
                        "the recording of {case} in {} was made with another {}",
                        self.path.display(),
                        what.join(" and another ")
                    );
                    if what.contains(&"model") {
                        s.push_str(&format!(
                            " (recorded with model fingerprint {}, this run's is {}: {})",
                            e.parts.model,
                            parts.model,
                            e.fingerprint.differences(now).join("; ")
                        ));
                    }
                    s
                }
            };
            Lookup::Miss(why)
        })
    }

    /// Appends a live answer: one line, one `write` call, under an exclusive lock.
    pub(crate) fn record(&self, entry: Entry) -> Result<(), RecordingError> {
        let line = format!("{}\n", serde_json::to_string(&entry).unwrap_or_default());
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(RecordingError::io("create", dir))?;
        }
        let mut f = lock_current(&self.path, || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
        })
        .map_err(RecordingError::io("write", &self.path))?;
        let written = f.write_all(line.as_bytes());
        let _ = f.unlock();
        written.map_err(RecordingError::io("write", &self.path))?;
        self.with_entries(|entries| entries.push(entry));
        self.wrote.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Rewrites the file sorted by case and without duplicate keys (the last entry of a key
    /// wins), so that recordings diff well. Only when this process recorded something.
    pub(crate) fn compact(&self) -> Result<(), RecordingError> {
        if !self.wrote.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        let lock = lock_current(&self.path, || File::open(&self.path))
            .map_err(RecordingError::io("open", &self.path))?;
        let mut entries = read_entries(&self.path);
        let mut last: BTreeMap<String, Entry> = BTreeMap::new();
        for e in entries.drain(..) {
            last.insert(e.key.clone(), e);
        }
        let mut sorted: Vec<Entry> = last.into_values().collect();
        sorted.sort_by(|a, b| (&a.case, &a.key).cmp(&(&b.case, &b.key)));
        let text: String = sorted
            .iter()
            .map(|e| serde_json::to_string(e).unwrap_or_default() + "\n")
            .collect();
        let tmp = self
            .path
            .with_extension(format!("jsonl.tmp.{}", std::process::id()));
        let result = std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, &self.path))
            .map_err(RecordingError::io("rewrite", &self.path));
        let _ = lock.unlock();
        result
    }
}

/// Opens `path` and takes its exclusive lock, making sure the file locked is still the one at
/// `path`: [`Recording::compact`] replaces the file (a rename) while other processes may be
/// waiting on the old one's lock, and a line appended to the replaced file would be lost.
fn lock_current(path: &Path, open: impl Fn() -> std::io::Result<File>) -> std::io::Result<File> {
    loop {
        let f = open()?;
        f.lock()?;
        if same_file(&f, path) {
            return Ok(f);
        }
        let _ = f.unlock();
    }
}

#[cfg(unix)]
fn same_file(f: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (f.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_: &File, _: &Path) -> bool {
    true
}

fn read_entries(path: &Path) -> Vec<Entry> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .filter_map(|(i, l)| match serde_json::from_str(l) {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::warn!("{}:{}: skipped: {e}", path.display(), i + 1);
                None
            }
        })
        .collect()
}

/// An entry for a live answer.
pub(crate) fn entry(
    case: &str,
    parts: KeyParts,
    fingerprint: &Fingerprint,
    request: &Request,
    g: &Generation,
) -> Entry {
    Entry {
        case: case.to_string(),
        key: parts.key(),
        parts,
        fingerprint: fingerprint.clone(),
        question: request.last_question().to_string(),
        answer: Recorded {
            text: g.text.clone(),
            latency_ms: g.latency.as_secs_f64() * 1000.0,
            prompt_tokens: g.prompt_tokens,
            completion_tokens: g.completion_tokens,
            ttft_ms: g.time_to_first_token.map(|t| t.as_secs_f64() * 1000.0),
        },
    }
}
