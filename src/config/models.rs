//! models.toml: raw serde types, then checked model specs.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::suite::valid_id;
use crate::error::{ConfigError, ConfigErrors, line_of_offset, read_text};

/// The checked models.toml.
#[derive(Debug, Clone)]
pub struct ModelsConfig {
    pub file: PathBuf,
    /// Every declared model, enabled or not, sorted by name.
    pub models: Vec<ModelSpec>,
}

/// One model as declared.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub name: String,
    pub line: usize,
    pub enabled: bool,
    pub backend: BackendSpec,
    pub params: GenParams,
    /// Whether the model can answer without an image (`text_only = false`: it cannot).
    pub text_only: bool,
    /// Multiplies every case's `max_latency_ms` for this model.
    pub latency_scale: f64,
}

/// Generation parameters every backend receives.
#[derive(Debug, Clone, PartialEq)]
pub struct GenParams {
    pub max_new_tokens: u32,
    pub temperature: f64,
    pub seed: Option<u64>,
    pub system_prompt: Option<String>,
}

impl GenParams {
    /// Temperature 0: greedy decoding, the only setting whose answers are snapshotted.
    pub fn deterministic(&self) -> bool {
        self.temperature == 0.0
    }
}

#[derive(Debug, Clone)]
pub enum BackendSpec {
    OpenAi(OpenAiSpec),
    LlamaServer(LlamaServerSpec),
    Candle(CandleSpec),
}

/// Where an in-process model's files are.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    /// A Hugging Face repo at a revision, read from the Hugging Face cache.
    Hub { repo: String, revision: String },
    /// A local folder laid out like the repo, resolved against models.toml's directory.
    Path(PathBuf),
}

/// A model run in-process on candle.
#[derive(Debug, Clone)]
pub struct CandleSpec {
    pub arch: String,
    pub source: ModelSource,
    /// f32 | f16 | bf16
    pub dtype: String,
    /// cpu | cuda | metal | auto
    pub device: String,
}

impl BackendSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            BackendSpec::OpenAi(_) => "openai",
            BackendSpec::LlamaServer(_) => "llama-server",
            BackendSpec::Candle(_) => "candle",
        }
    }
}

/// Where a managed llama-server gets its GGUF weights.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufSource {
    /// Local files (`model`, optional `mmproj`), resolved against models.toml's directory.
    Files {
        model: PathBuf,
        mmproj: Option<PathBuf>,
    },
    /// A Hugging Face GGUF repo, passed as llama-server's `-hf`.
    Hf(String),
}

/// A llama.cpp server that vlmtest starts, health-checks and stops.
#[derive(Debug, Clone)]
pub struct LlamaServerSpec {
    pub source: GgufSource,
    pub binary: String,
    pub args: Vec<String>,
    /// `None`: a free port chosen by vlmtest.
    pub port: Option<u16>,
    pub startup_timeout: Duration,
    pub timeout: Duration,
    pub concurrency: usize,
    /// llama-server's `cache_prompt`, sent with every request: reuse the KV cache of an earlier
    /// request with the same prefix. Off for temperature-0 models unless models.toml turns it on
    /// (it can change answers); on otherwise, as llama-server's default.
    pub cache_prompt: bool,
}

/// An OpenAI-compatible chat/completions server.
#[derive(Debug, Clone)]
pub struct OpenAiSpec {
    /// Without the trailing slash, e.g. `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    pub model: String,
    /// The environment variable holding the API key (never the key itself).
    pub api_key_env: Option<String>,
    pub timeout: Duration,
    pub concurrency: usize,
}

/// The backends users may name, with the keys each one takes.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq)]
#[serde(rename_all = "kebab-case")]
enum BackendKind {
    Candle,
    Openai,
    LlamaServer,
}

const COMMON_KEYS: &[&str] = &[
    "backend",
    "enabled",
    "max_new_tokens",
    "temperature",
    "seed",
    "system_prompt",
    "text_only",
    "latency_scale",
];

impl BackendKind {
    fn name(self) -> &'static str {
        match self {
            BackendKind::Candle => "candle",
            BackendKind::Openai => "openai",
            BackendKind::LlamaServer => "llama-server",
        }
    }

    fn keys(self) -> &'static [&'static str] {
        match self {
            BackendKind::Candle => &["arch", "repo", "revision", "path", "dtype", "device"],
            BackendKind::Openai => &[
                "base_url",
                "model",
                "api_key_env",
                "timeout_s",
                "concurrency",
            ],
            BackendKind::LlamaServer => &[
                "hf",
                "model",
                "mmproj",
                "binary",
                "args",
                "port",
                "startup_timeout_s",
                "timeout_s",
                "concurrency",
                "cache_prompt",
            ],
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    models: toml::Table,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    enabled: Option<bool>,
    max_new_tokens: Option<u32>,
    temperature: Option<f64>,
    seed: Option<u64>,
    system_prompt: Option<String>,
    text_only: Option<bool>,
    latency_scale: Option<f64>,
    timeout_s: Option<f64>,
    concurrency: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    backend: BackendKind,
    enabled: Option<bool>,
    max_new_tokens: Option<u32>,
    temperature: Option<f64>,
    seed: Option<u64>,
    system_prompt: Option<String>,
    text_only: Option<bool>,
    latency_scale: Option<f64>,
    // openai
    base_url: Option<String>,
    model: Option<String>,
    api_key_env: Option<String>,
    timeout_s: Option<f64>,
    concurrency: Option<usize>,
    // llama-server
    hf: Option<String>,
    mmproj: Option<String>,
    binary: Option<String>,
    args: Option<Vec<String>>,
    port: Option<u16>,
    startup_timeout_s: Option<f64>,
    /// Any value, checked below, so that a wrong type is reported at its own line.
    cache_prompt: Option<toml::Value>,
    // candle
    arch: Option<String>,
    repo: Option<String>,
    revision: Option<String>,
    path: Option<String>,
    dtype: Option<String>,
    device: Option<String>,
}

impl RawModel {
    /// The keys present in the table, by name.
    fn present(&self) -> Vec<&'static str> {
        let pairs: [(&str, bool); 26] = [
            ("base_url", self.base_url.is_some()),
            ("model", self.model.is_some()),
            ("api_key_env", self.api_key_env.is_some()),
            ("timeout_s", self.timeout_s.is_some()),
            ("concurrency", self.concurrency.is_some()),
            ("hf", self.hf.is_some()),
            ("mmproj", self.mmproj.is_some()),
            ("binary", self.binary.is_some()),
            ("args", self.args.is_some()),
            ("port", self.port.is_some()),
            ("startup_timeout_s", self.startup_timeout_s.is_some()),
            ("cache_prompt", self.cache_prompt.is_some()),
            ("arch", self.arch.is_some()),
            ("repo", self.repo.is_some()),
            ("revision", self.revision.is_some()),
            ("path", self.path.is_some()),
            ("dtype", self.dtype.is_some()),
            ("device", self.device.is_some()),
            ("enabled", self.enabled.is_some()),
            ("max_new_tokens", self.max_new_tokens.is_some()),
            ("temperature", self.temperature.is_some()),
            ("seed", self.seed.is_some()),
            ("system_prompt", self.system_prompt.is_some()),
            ("text_only", self.text_only.is_some()),
            ("latency_scale", self.latency_scale.is_some()),
            ("backend", true),
        ];
        pairs.iter().filter(|(_, p)| *p).map(|(k, _)| *k).collect()
    }
}

/// The byte range of the `[models.NAME]` table in the text: from its header to the next header.
fn table_range(text: &str, name: &str, fallback: &Range<usize>) -> Range<usize> {
    let headers = [
        format!("[models.{name}]"),
        format!("[models.\"{name}\"]"),
        format!("[models.'{name}']"),
    ];
    let mut offset = 0;
    let mut start = None;
    for l in text.split_inclusive('\n') {
        let t = l.trim();
        if let Some(s) = start {
            if t.starts_with('[') {
                return s..offset;
            }
        } else if headers.iter().any(|h| t.replace(' ', "") == *h) {
            start = Some(offset);
        }
        offset += l.len();
    }
    match start {
        Some(s) => s..text.len(),
        None => fallback.clone(),
    }
}

/// The line inside `range` where `word` is a key, or else appears, if anywhere.
fn find_line(text: &str, range: &Range<usize>, word: &str) -> Option<usize> {
    let start = range.start.min(text.len());
    let end = range.end.min(text.len()).max(start);
    let lines = || {
        text[start..end]
            .split_inclusive('\n')
            .scan(start, |off, l| {
                let here = *off;
                *off += l.len();
                Some((here, l))
            })
    };
    let is_key = |l: &str| {
        l.trim_start()
            .strip_prefix(word)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    };
    lines()
        .find(|(_, l)| is_key(l))
        .or_else(|| lines().skip(1).find(|(_, l)| l.contains(word)))
        .map(|(off, _)| line_of_offset(text, off))
}

/// The line of `key = ...` inside `range`, else the line where `range` starts.
fn key_line(text: &str, range: &Range<usize>, key: &str) -> usize {
    let start = range.start.min(text.len());
    let end = range.end.min(text.len()).max(start);
    let mut offset = start;
    for l in text[start..end].split_inclusive('\n') {
        let t = l.trim_start();
        if t.strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
        {
            return line_of_offset(text, offset);
        }
        offset += l.len();
    }
    line_of_offset(text, start)
}

/// Reads and checks models.toml.
pub fn load_models(path: &Path) -> Result<ModelsConfig, ConfigErrors> {
    let text = read_text(path, "a models.toml with [models.NAME] tables")?;
    let raw: RawFile = toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|s| line_of_offset(&text, s.start));
        let msg = e.message().trim().to_string();
        ConfigError::new(
            path,
            line,
            format!("{msg} (expected [defaults] and [models.NAME] tables)"),
        )
    })?;
    // `[models.phi-3.5-vision]` is, to TOML, the table `phi-3` holding `5-vision`: a table
    // without `backend` whose values are tables is a dotted name, flattened here.
    let mut flat: Vec<(String, toml::Table)> = Vec::new();
    let mut stack: Vec<(String, toml::Table)> = raw
        .models
        .into_iter()
        .rev()
        .map(|(k, v)| match v {
            toml::Value::Table(t) => (k, t),
            other => {
                let mut t = toml::Table::new();
                t.insert("__not_a_table".into(), other);
                (k, t)
            }
        })
        .collect();
    while let Some((name, table)) = stack.pop() {
        let nested = !table.contains_key("backend")
            && !table.is_empty()
            && table.values().all(|v| v.is_table());
        if nested {
            for (k, v) in table.into_iter().rev() {
                if let toml::Value::Table(t) = v {
                    stack.push((format!("{name}.{k}"), t));
                }
            }
        } else {
            flat.push((name, table));
        }
    }
    flat.sort_by(|a, b| a.0.cmp(&b.0));
    let mut errors = ConfigErrors::default();
    let mut parsed: Vec<(String, RawModel, Range<usize>)> = Vec::new();
    for (name, table) in flat {
        let range = table_range(&text, &name, &(0..0));
        let table_line = (range != (0..0)).then(|| line_of_offset(&text, range.start));
        if table.contains_key("__not_a_table") {
            errors.push(ConfigError::new(
                path,
                table_line,
                format!("`models.{name}` must be a table ([models.{name}] with backend = ...)"),
            ));
            continue;
        }
        match toml::Value::Table(table).try_into::<RawModel>() {
            Ok(m) => parsed.push((name, m, range)),
            Err(e) => {
                // Point at the offending key when the message names one.
                let line = e
                    .message()
                    .split('`')
                    .skip(1)
                    .step_by(2)
                    .find_map(|word| find_line(&text, &range, word))
                    .or(table_line);
                errors.push(ConfigError::new(
                    path,
                    line,
                    format!(
                        "model `{name}`: {} (expected a [models.NAME] table with `backend`)",
                        e.message().trim()
                    ),
                ));
            }
        }
    }
    if parsed.is_empty() && errors.is_empty() {
        errors.push(ConfigError::new(
            path,
            None,
            "no models declared (expected at least one [models.NAME] table)",
        ));
    }
    let d = &raw.defaults;
    let mut models = Vec::new();
    for (name, m, span) in &parsed {
        let span = span.clone();
        let line = line_of_offset(&text, span.start);
        let at = |key: &str| Some(key_line(&text, &span, key));
        let err = |l: Option<usize>, msg: String| ConfigError::new(path, l, msg);
        if !valid_id(name, true) {
            errors.push(err(
                Some(line),
                format!("invalid model name `{name}` (expected [a-z0-9_.-]+)"),
            ));
        }
        let kind = m.backend;
        for key in m.present() {
            if !COMMON_KEYS.contains(&key) && !kind.keys().contains(&key) {
                errors.push(err(
                    at(key),
                    format!(
                        "key `{key}` does not apply to backend `{}` (its keys: {})",
                        kind.name(),
                        kind.keys().join(", ")
                    ),
                ));
            }
        }
        let temperature = m.temperature.or(d.temperature).unwrap_or(0.0);
        if !(0.0..=5.0).contains(&temperature) {
            errors.push(err(
                at("temperature"),
                format!("`temperature` must be between 0 and 5, got {temperature}"),
            ));
        }
        let max_new_tokens = m.max_new_tokens.or(d.max_new_tokens).unwrap_or(32);
        if max_new_tokens == 0 {
            errors.push(err(
                at("max_new_tokens"),
                "`max_new_tokens` must be at least 1".into(),
            ));
        }
        let latency_scale = m.latency_scale.or(d.latency_scale).unwrap_or(1.0);
        if !(latency_scale > 0.0 && latency_scale.is_finite()) {
            errors.push(err(
                at("latency_scale"),
                format!("`latency_scale` must be a number > 0, got {latency_scale}"),
            ));
        }
        let timeout_s = m.timeout_s.or(d.timeout_s).unwrap_or(120.0);
        if !(timeout_s > 0.0 && timeout_s.is_finite() && timeout_s < 1e7) {
            errors.push(err(
                at("timeout_s"),
                format!("`timeout_s` must be a number of seconds > 0, got {timeout_s}"),
            ));
        }
        let concurrency = m.concurrency.or(d.concurrency).unwrap_or(1);
        if concurrency == 0 {
            errors.push(err(
                at("concurrency"),
                "`concurrency` must be at least 1".into(),
            ));
        }
        let backend = match kind {
            BackendKind::Openai => {
                let base_url = m.base_url.clone().unwrap_or_default();
                let model = m.model.clone().unwrap_or_default();
                if base_url.is_empty() {
                    errors.push(err(Some(line), format!("model `{name}`: backend `openai` needs `base_url` (e.g. \"http://127.0.0.1:8000/v1\")")));
                } else if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
                    errors.push(err(
                        at("base_url"),
                        format!("`base_url` must start with http:// or https://, got `{base_url}`"),
                    ));
                }
                if model.is_empty() {
                    errors.push(err(Some(line), format!("model `{name}`: backend `openai` needs `model` (the name the server knows the model by)")));
                }
                if let Some(var) = &m.api_key_env
                    && (var.is_empty() || var.contains(['=', '\0']) || var.starts_with("sk-"))
                {
                    errors.push(err(at("api_key_env"), "`api_key_env` names the environment variable that holds the key (e.g. \"OPENAI_API_KEY\"), never the key itself".into()));
                }
                Some(BackendSpec::OpenAi(OpenAiSpec {
                    base_url: base_url.trim_end_matches('/').to_string(),
                    model,
                    api_key_env: m.api_key_env.clone(),
                    timeout: Duration::from_secs_f64(timeout_s.clamp(0.001, 1e7)),
                    concurrency: concurrency.max(1),
                }))
            }
            BackendKind::LlamaServer => {
                let base = path.parent().unwrap_or(Path::new("."));
                let source = match (&m.hf, &m.model, &m.mmproj) {
                    (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                        errors.push(err(at("hf"), "give either `hf` (a Hugging Face GGUF repo) or `model` + `mmproj` (local files), not both".into()));
                        None
                    }
                    (Some(hf), None, None) if hf.trim().is_empty() || !hf.contains('/') => {
                        errors.push(err(at("hf"), format!("`hf` must name a repo such as \"ggml-org/SmolVLM-500M-Instruct-GGUF\", got `{hf}`")));
                        None
                    }
                    (Some(hf), None, None) => Some(GgufSource::Hf(hf.clone())),
                    (None, Some(model), mmproj) => Some(GgufSource::Files {
                        model: base.join(model),
                        mmproj: mmproj.as_ref().map(|p| base.join(p)),
                    }),
                    (None, None, _) => {
                        errors.push(err(Some(line), format!("model `{name}`: backend `llama-server` needs `hf` (a Hugging Face GGUF repo) or `model` (a local .gguf file, with `mmproj` for images)")));
                        None
                    }
                };
                let startup = m.startup_timeout_s.unwrap_or(600.0);
                if !(startup > 0.0 && startup.is_finite() && startup < 1e7) {
                    errors.push(err(
                        at("startup_timeout_s"),
                        format!(
                            "`startup_timeout_s` must be a number of seconds > 0, got {startup}"
                        ),
                    ));
                }
                if m.port == Some(0) {
                    errors.push(err(at("port"), "`port` must be between 1 and 65535 (leave it out to let vlmtest pick a free port)".into()));
                }
                let binary = m.binary.clone().unwrap_or_else(|| "llama-server".into());
                if binary.trim().is_empty() {
                    errors.push(err(
                        at("binary"),
                        "`binary` is empty (expected a program name on PATH or a path)".into(),
                    ));
                }
                let cache_prompt = match &m.cache_prompt {
                    None => None,
                    Some(toml::Value::Boolean(b)) => Some(*b),
                    Some(other) => {
                        errors.push(err(
                            at("cache_prompt"),
                            format!("`cache_prompt` must be true or false, got {other}"),
                        ));
                        None
                    }
                };
                let reserved = ["--port", "--host"];
                if let Some(a) = m
                    .args
                    .iter()
                    .flatten()
                    .find(|a| reserved.contains(&a.as_str()))
                {
                    errors.push(err(at("args"), format!("`{a}` is set by vlmtest (127.0.0.1 and the model's `port`); remove it from `args`")));
                }
                source.map(|source| {
                    BackendSpec::LlamaServer(LlamaServerSpec {
                        source,
                        binary,
                        args: m.args.clone().unwrap_or_default(),
                        port: m.port,
                        startup_timeout: Duration::from_secs_f64(startup.clamp(0.001, 1e7)),
                        timeout: Duration::from_secs_f64(timeout_s.clamp(0.001, 1e7)),
                        concurrency: concurrency.max(1),
                        cache_prompt: cache_prompt.unwrap_or(temperature != 0.0),
                    })
                })
            }
            BackendKind::Candle => {
                let arches = crate::backend::candle::ARCHES;
                let arch = m.arch.clone().unwrap_or_default();
                if arch.is_empty() {
                    errors.push(err(
                        Some(line),
                        format!(
                            "model `{name}`: backend `candle` needs `arch` (one of: {})",
                            arches.join(", ")
                        ),
                    ));
                } else if !arches.contains(&arch.as_str()) {
                    errors.push(err(
                        at("arch"),
                        format!(
                            "unknown arch `{arch}` (expected one of: {})",
                            arches.join(", ")
                        ),
                    ));
                }
                let dtype = m.dtype.clone().unwrap_or_else(|| "f32".into());
                if !["f32", "f16", "bf16"].contains(&dtype.as_str()) {
                    errors.push(err(
                        at("dtype"),
                        format!("unknown dtype `{dtype}` (expected f32, f16 or bf16)"),
                    ));
                }
                let device = m.device.clone().unwrap_or_else(|| "cpu".into());
                if !["cpu", "cuda", "metal", "auto"].contains(&device.as_str()) {
                    errors.push(err(
                        at("device"),
                        format!("unknown device `{device}` (expected cpu, cuda, metal or auto)"),
                    ));
                }
                let base = path.parent().unwrap_or(Path::new("."));
                let source = match (&m.repo, &m.path) {
                    (Some(_), Some(_)) => {
                        errors.push(err(
                            at("path"),
                            "give either `repo` (+ `revision`) or `path`, not both".into(),
                        ));
                        None
                    }
                    (None, Some(p)) if m.revision.is_some() => {
                        errors.push(err(at("revision"), format!("`revision` applies to `repo`, not to `path` (`{p}` is read as it is)")));
                        None
                    }
                    (None, Some(p)) if p.trim().is_empty() => {
                        errors.push(err(at("path"), "`path` is empty (expected a folder laid out like the Hugging Face repo)".into()));
                        None
                    }
                    (None, Some(p)) => Some(ModelSource::Path(base.join(p))),
                    (Some(r), None) => {
                        let parts: Vec<&str> = r.split('/').collect();
                        if parts.len() != 2
                            || parts
                                .iter()
                                .any(|p| p.is_empty() || p.contains(char::is_whitespace))
                        {
                            errors.push(err(at("repo"), format!("`repo` must name a Hugging Face repo such as \"HuggingFaceTB/SmolVLM-256M-Instruct\", got `{r}`")));
                            None
                        } else {
                            let revision = m.revision.clone().unwrap_or_else(|| "main".into());
                            if revision.trim().is_empty() || revision.contains("..") {
                                errors.push(err(at("revision"), format!("`revision` must be a branch, tag or commit, got `{revision}`")));
                            }
                            Some(ModelSource::Hub {
                                repo: r.clone(),
                                revision,
                            })
                        }
                    }
                    (None, None) => {
                        errors.push(err(Some(line), format!("model `{name}`: backend `candle` needs `repo` (a Hugging Face repo, with `revision`) or `path` (a local folder laid out like the repo)")));
                        None
                    }
                };
                source.map(|source| {
                    BackendSpec::Candle(CandleSpec {
                        arch,
                        source,
                        dtype,
                        device,
                    })
                })
            }
        };
        if let Some(backend) = backend {
            let text_only = m.text_only.or(d.text_only).unwrap_or(match &backend {
                BackendSpec::Candle(c) => crate::backend::candle::arch_answers_text_only(&c.arch),
                _ => true,
            });
            models.push(ModelSpec {
                name: name.clone(),
                line,
                enabled: m.enabled.or(d.enabled).unwrap_or(true),
                backend,
                params: GenParams {
                    max_new_tokens,
                    temperature,
                    seed: m.seed.or(d.seed),
                    system_prompt: m.system_prompt.clone().or_else(|| d.system_prompt.clone()),
                },
                text_only,
                latency_scale,
            });
        }
    }
    errors.into_result(ModelsConfig {
        file: path.to_path_buf(),
        models,
    })
}
