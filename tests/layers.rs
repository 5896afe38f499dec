//! The modules of `src/` form one-way layers (issue 10): each module names only modules of the
//! layers below it (`crate::...` paths, `use` or inline). A path that points up — `config` using
//! `run`, `report` using `run`, `compare` using `config` — fails here with the file and line.
//!
//! The order, bottom to top, with what each layer is:
//! - leaves, closed types and tools that know nothing of the rest: `kinds` (Arch, DType,
//!   DeviceKind, BackendKind, CacheMode, UpdateMode), `fingerprint`, `error`, `machine`,
//!   `progress`, `interrupt`, `resample`, `score`;
//! - results: `snapshot`, `verdict`, `compare`;
//! - input: `config` (models.toml, suites, environment), then `plan` (the trials);
//! - engines: `backend` (candle, OpenAI-compatible, llama-server), `cache` (record/replay);
//! - `report` (a pure renderer of run facts and records), then `run` (asks, scores, records);
//! - entry points: `harness`, `serve`, `cli`.

use std::path::Path;

const LAYERS: &[&[&str]] = &[
    &[
        "kinds",
        "fingerprint",
        "error",
        "machine",
        "progress",
        "interrupt",
        "resample",
        "score",
    ],
    &["snapshot"],
    &["verdict"],
    &["compare"],
    &["config"],
    &["plan"],
    &["backend"],
    &["cache"],
    &["report"],
    &["run"],
    &["harness"],
    &["serve"],
    &["cli"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// Every `crate::NAME` in `text`, with its line number.
fn uses(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let before = rest[..at].chars().last();
            // `vlmtest::...` paths or identifiers ending in "crate" are not ours.
            if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') && !name.is_empty() {
                out.push((i + 1, name));
            }
            rest = after;
        }
    }
    out
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`src/backend/candle/x.rs` → `backend`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

#[test]
fn no_module_names_a_layer_above_its_own() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    all.sort();
    let mut wrong = Vec::new();
    let mut unplaced = Vec::new();
    for file in &all {
        let module = module_of(&src, file);
        if ["lib", "main"].contains(&module.as_str()) {
            continue;
        }
        let Some(mine) = layer_of(&module) else {
            unplaced.push(module);
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (line, used) in uses(&text) {
            if used == module {
                continue;
            }
            match layer_of(&used) {
                Some(theirs) if theirs < mine || (theirs == mine && mine == 0) => {}
                Some(_) => wrong.push(format!(
                    "{}:{line}: `{module}` uses `crate::{used}`, a layer above or beside it",
                    file.strip_prefix(src.parent().unwrap()).unwrap().display()
                )),
                None => unplaced.push(used),
            }
        }
    }
    unplaced.sort();
    unplaced.dedup();
    assert!(
        unplaced.is_empty(),
        "modules missing from LAYERS in tests/layers.rs: {unplaced:?}"
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_scanner_sees_inline_paths_and_skips_comments() {
    let found = uses(
        "use crate::config::Env;\nlet x = crate::run::Run::new(); // crate::cli\n/// [`crate::report`]\nvlmtest::crate_x;\n",
    );
    assert_eq!(found, [(1, "config".to_string()), (2, "run".to_string()),]);
}
