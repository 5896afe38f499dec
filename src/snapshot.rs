//! Snapshots of answers in insta's file format (`.snap`, pending `.snap.new`), so that
//! `cargo insta review` and `cargo insta accept` work on them. One file per model × suite × case,
//! with an explicit name: `{model}__{suite}__{case}.snap`.
//!
//! Behaviour follows insta's `INSTA_UPDATE` conventions, with vlmtest's default: outside CI a
//! snapshot that does not exist yet is written and accepted, a changed answer is written as
//! `.snap.new` and fails until reviewed; under `CI=true` nothing is written and a missing or
//! changed snapshot fails. As in insta (`snapshot_update_behavior` in its `env.rs`), `CI` only
//! decides what `auto` (`INSTA_UPDATE` unset) means: a mode set explicitly applies under CI too,
//! so `INSTA_UPDATE=always` writes there (`tests/claims.rs` holds the harness to this).

use std::path::{Path, PathBuf};

use crate::kinds::UpdateMode;

/// What happened to a case's snapshot.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub(crate) enum SnapshotStatus {
    /// Same as the accepted snapshot.
    Matched,
    /// No snapshot existed; this answer was written and accepted.
    Created,
    /// `INSTA_UPDATE=always`: the snapshot was overwritten with this answer.
    Updated,
    /// No snapshot existed; the answer was written as `.snap.new` for review.
    New,
    /// The answer differs from the accepted snapshot.
    Changed { expected: String },
    /// No snapshot exists and none may be written (CI).
    Missing,
    /// Not snapshotted (the case opts out, or the model is not deterministic).
    Skipped,
}

impl SnapshotStatus {
    /// Whether this status fails the case (before `INSTA_FORCE_PASS`).
    pub(crate) fn fails(&self) -> bool {
        matches!(
            self,
            SnapshotStatus::New | SnapshotStatus::Changed { .. } | SnapshotStatus::Missing
        )
    }
}

/// Where and how snapshots are kept for this run.
#[derive(Debug, Clone)]
pub(crate) struct Snapshots {
    pub dir: PathBuf,
    pub mode: UpdateMode,
    pub ci: bool,
}

/// The metadata written in a snapshot's header.
pub(crate) struct Meta<'a> {
    /// The suite file, relative to the crate root.
    pub source: &'a str,
    /// The question(s), shown by `cargo insta review`.
    pub description: &'a str,
}

impl Snapshots {
    /// The accepted snapshot's path for a test.
    pub(crate) fn path(&self, model: &str, suite: &str, case: &str) -> PathBuf {
        self.dir.join(format!("{model}__{suite}__{case}.snap"))
    }

    fn effective_mode(&self) -> UpdateMode {
        match self.mode {
            UpdateMode::Auto if self.ci => UpdateMode::No,
            UpdateMode::Auto => UpdateMode::Unseen,
            m => m,
        }
    }

    /// Compares `content` with the accepted snapshot, writing files as the update mode says.
    pub(crate) fn check(
        &self,
        path: &Path,
        meta: &Meta,
        content: &str,
    ) -> Result<SnapshotStatus, SnapshotError> {
        let pending = pending_path(path);
        let existing = match std::fs::read_to_string(path) {
            Ok(text) => {
                Some(parse(&text).ok_or_else(|| SnapshotError::Format(path.to_path_buf()))?)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(SnapshotError::Io {
                    action: "read snapshot",
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let mode = self.effective_mode();
        let content = normalize(content);
        let status = match existing {
            Some(old) if old == content => {
                // A stale pending snapshot from an earlier run is no longer needed.
                let _ = std::fs::remove_file(&pending);
                SnapshotStatus::Matched
            }
            Some(old) => match mode {
                UpdateMode::Always => {
                    write(path, meta, &content)?;
                    let _ = std::fs::remove_file(&pending);
                    SnapshotStatus::Updated
                }
                UpdateMode::New | UpdateMode::Unseen | UpdateMode::Auto => {
                    write(&pending, meta, &content)?;
                    SnapshotStatus::Changed { expected: old }
                }
                UpdateMode::No => SnapshotStatus::Changed { expected: old },
            },
            None => match mode {
                UpdateMode::Always | UpdateMode::Unseen | UpdateMode::Auto => {
                    write(path, meta, &content)?;
                    let _ = std::fs::remove_file(&pending);
                    SnapshotStatus::Created
                }
                UpdateMode::New => {
                    write(&pending, meta, &content)?;
                    SnapshotStatus::New
                }
                UpdateMode::No => SnapshotStatus::Missing,
            },
        };
        Ok(status)
    }
}

/// A snapshot file that cannot be read, parsed or written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SnapshotError {
    #[error(
        "snapshot {} is not in insta's format (expected a `---` header); delete it to record it again",
        .0.display()
    )]
    Format(PathBuf),
    /// `action`: what was being done ("read snapshot", "write snapshot", …).
    #[error("cannot {action} {}: {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `x.snap` → `x.snap.new`.
pub(crate) fn pending_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".new");
    PathBuf::from(s)
}

/// Line endings unified and trailing white space at the end removed, as insta compares.
fn normalize(s: &str) -> String {
    s.replace("\r\n", "\n").trim_end().to_string()
}

/// The content of a snapshot file (after its `---` header).
pub fn parse(text: &str) -> Option<String> {
    let text = text.replace("\r\n", "\n");
    let rest = text.strip_prefix("---\n")?;
    // The header ends at the second `---`; a snapshot may end right there (empty content).
    let content = match rest.split_once("\n---\n") {
        Some((_, content)) => content,
        None => rest.strip_suffix("\n---").map(|_| "")?,
    };
    Some(normalize(content))
}

fn write(path: &Path, meta: &Meta, content: &str) -> Result<(), SnapshotError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| SnapshotError::Io {
            action: "create snapshot directory",
            path: dir.to_path_buf(),
            source,
        })?;
    }
    // JSON strings are valid YAML double-quoted scalars.
    let q = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    let text = format!(
        "---\nsource: {}\ndescription: {}\nexpression: answer\n---\n{content}\n",
        q(meta.source),
        q(meta.description)
    );
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|source| SnapshotError::Io {
            action: "write snapshot",
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snaps(dir: &Path, mode: UpdateMode, ci: bool) -> Snapshots {
        Snapshots {
            dir: dir.to_path_buf(),
            mode,
            ci,
        }
    }

    const META: Meta = Meta {
        source: "suites/a.yaml",
        description: "What is it?",
    };

    #[test]
    fn new_snapshot_is_accepted_outside_ci_then_changes_are_pending() {
        let tmp = tempfile::tempdir().unwrap();
        let s = snaps(tmp.path(), UpdateMode::Auto, false);
        let p = s.path("m", "s", "c");
        assert_eq!(
            s.check(&p, &META, "a cat").unwrap(),
            SnapshotStatus::Created
        );
        assert_eq!(
            parse(&std::fs::read_to_string(&p).unwrap()).unwrap(),
            "a cat"
        );
        assert_eq!(
            s.check(&p, &META, "a cat\n").unwrap(),
            SnapshotStatus::Matched
        );
        let st = s.check(&p, &META, "a dog").unwrap();
        assert_eq!(
            st,
            SnapshotStatus::Changed {
                expected: "a cat".into()
            }
        );
        assert!(st.fails());
        let pending = pending_path(&p);
        assert_eq!(
            parse(&std::fs::read_to_string(&pending).unwrap()).unwrap(),
            "a dog"
        );
        // the accepted one is untouched, and a matching answer clears the pending file
        assert_eq!(
            s.check(&p, &META, "a cat").unwrap(),
            SnapshotStatus::Matched
        );
        assert!(!pending.exists());
    }

    #[test]
    fn ci_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let s = snaps(tmp.path(), UpdateMode::Auto, true);
        let p = s.path("m", "s", "c");
        assert_eq!(s.check(&p, &META, "x").unwrap(), SnapshotStatus::Missing);
        assert!(!p.exists() && !pending_path(&p).exists());
    }

    #[test]
    fn always_overwrites_and_new_writes_pending() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("m__s__c.snap");
        let always = snaps(tmp.path(), UpdateMode::Always, true);
        assert_eq!(
            always.check(&p, &META, "x").unwrap(),
            SnapshotStatus::Created
        );
        assert_eq!(
            always.check(&p, &META, "y").unwrap(),
            SnapshotStatus::Updated
        );
        let new = snaps(tmp.path(), UpdateMode::New, false);
        let q = tmp.path().join("m__s__d.snap");
        assert_eq!(new.check(&q, &META, "z").unwrap(), SnapshotStatus::New);
        assert!(!q.exists() && pending_path(&q).exists());
    }

    #[test]
    fn header_is_insta_compatible() {
        let tmp = tempfile::tempdir().unwrap();
        let s = snaps(tmp.path(), UpdateMode::Auto, false);
        let p = s.path("m", "s", "c");
        let meta = Meta {
            source: "suites/a.yaml",
            description: "Say \"hi\":\nnow",
        };
        s.check(&p, &meta, "multi\nline").unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(
            text,
            "---\nsource: \"suites/a.yaml\"\ndescription: \"Say \\\"hi\\\":\\nnow\"\nexpression: answer\n---\nmulti\nline\n"
        );
        assert_eq!(parse(&text).unwrap(), "multi\nline");
    }
}
