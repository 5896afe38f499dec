//! A stand-in Hugging Face Hub on loopback (point `HF_ENDPOINT` at [`Hub::endpoint`]): one
//! model repo at revision `main`, served the way the Hub answers hf-hub — the repo listing
//! (`/api/models/{repo}/revision/main`), and each file's `resolve` URL with ETag, X-Repo-Commit
//! and byte ranges. Every request is recorded; other repos get 404.

#![allow(dead_code)]

use std::io::{BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::http;

/// A request the stand-in received.
#[derive(Debug, Clone)]
pub struct Asked {
    pub path: String,
    /// The `Range` header, if any (hf-hub asks `bytes=0-0` for a file's metadata).
    pub range: Option<String>,
}

pub struct Hub {
    pub endpoint: String,
    asked: Arc<Mutex<Vec<Asked>>>,
}

struct Repo {
    name: String,
    commit: String,
    files: Vec<(String, Vec<u8>)>,
    /// How long the body of a `.safetensors` file takes to start (downloads that overlap).
    slow: Duration,
}

impl Hub {
    /// Serves `files` as `repo` at `main` = `commit`.
    pub fn start(repo: &str, commit: &str, files: Vec<(String, Vec<u8>)>, slow: Duration) -> Hub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let asked = Arc::new(Mutex::new(Vec::new()));
        let log = asked.clone();
        let repo = Arc::new(Repo {
            name: repo.to_string(),
            commit: commit.to_string(),
            files,
            slow,
        });
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (repo, log) = (repo.clone(), log.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut stream = stream;
                    while let Some(req) = http::read_request(&mut reader) {
                        let range = req
                            .headers
                            .iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case("range"))
                            .map(|(_, v)| v.clone());
                        log.lock().unwrap().push(Asked {
                            path: req.path.clone(),
                            range: range.clone(),
                        });
                        let (status, headers, body) = answer(&repo, &req.path, range.as_deref());
                        let mut head =
                            format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\n", body.len());
                        for (k, v) in headers {
                            head.push_str(&format!("{k}: {v}\r\n"));
                        }
                        head.push_str("\r\n");
                        if stream.write_all(head.as_bytes()).is_err() {
                            return;
                        }
                        if req.path.ends_with(".safetensors")
                            && range.as_deref() != Some("bytes=0-0")
                        {
                            std::thread::sleep(repo.slow);
                        }
                        if stream.write_all(&body).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Hub { endpoint, asked }
    }

    /// Every request so far.
    pub fn asked(&self) -> Vec<Asked> {
        self.asked.lock().unwrap().clone()
    }

    /// How many times `file` was downloaded (a GET of its body, not of its metadata).
    pub fn downloads_of(&self, file: &str) -> usize {
        self.asked()
            .iter()
            .filter(|a| a.path.ends_with(&format!("/resolve/main/{file}")))
            .filter(|a| a.range.as_deref() != Some("bytes=0-0"))
            .count()
    }
}

fn answer(repo: &Repo, path: &str, range: Option<&str>) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let not_found = (
        404,
        vec![],
        b"{\"error\":\"Repository not found\"}".to_vec(),
    );
    if path == format!("/api/models/{}/revision/main", repo.name) {
        let siblings: Vec<_> = repo
            .files
            .iter()
            .map(|(n, _)| serde_json::json!({"rfilename": n}))
            .chain([serde_json::json!({"rfilename": "README.md"})])
            .collect();
        let body = serde_json::json!({"id": repo.name, "sha": repo.commit, "siblings": siblings});
        return (
            200,
            vec![("content-type".into(), "application/json".into())],
            body.to_string().into_bytes(),
        );
    }
    let prefix = format!("/{}/resolve/main/", repo.name);
    let Some(name) = path.strip_prefix(&prefix) else {
        return not_found;
    };
    let Some((_, data)) = repo.files.iter().find(|(n, _)| n == name) else {
        return not_found;
    };
    let range = range.unwrap_or("bytes=0-").trim_start_matches("bytes=");
    let (a, b) = range.split_once('-').unwrap_or(("0", ""));
    let start = a.parse::<usize>().unwrap_or(0).min(data.len());
    let end = b
        .parse::<usize>()
        .map(|e| e + 1)
        .unwrap_or(data.len())
        .min(data.len());
    let headers = vec![
        ("etag".into(), format!("\"etag-{name}\"")),
        ("x-repo-commit".into(), repo.commit.clone()),
        (
            "content-range".into(),
            format!("bytes {start}-{}/{}", end.saturating_sub(1), data.len()),
        ),
    ];
    (206, headers, data[start..end].to_vec())
}

/// The files of a fixture folder, as (name, bytes), sorted.
pub fn folder_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().is_file())
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
