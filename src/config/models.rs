//! models.toml: one raw serde struct per backend (`deny_unknown_fields`, so a key that does not
//! belong is always caught), read from the spanned TOML tree so every error has its line; then
//! checked model specs.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, IgnoredAny};
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::suite::valid_id;
use crate::error::{ConfigError, ConfigErrors, line_of_offset, read_text};
use crate::kinds::{self, Arch, BackendKind, DType, DeviceKind};

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
    /// Times each case is asked, unless the suite or the case says (`repeat`).
    pub repeat: u32,
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

/// Where an in-process model's tokenizer comes from when it is not the model repo's own
/// `tokenizer.json` (`tokenizer` / `tokenizer_repo`; Moondream2's 2025 layout needs it).
#[derive(Debug, Clone, PartialEq)]
pub enum TokenizerSource {
    /// A `tokenizer.json`, or a folder holding one, resolved against models.toml's directory.
    Path(PathBuf),
    /// A Hugging Face repo at `main`, read from the cache (`vlmtest fetch` downloads it).
    Hub { repo: String, revision: String },
}

/// A model run in-process on candle.
#[derive(Debug, Clone)]
pub struct CandleSpec {
    pub arch: Arch,
    pub source: ModelSource,
    /// `None`: the model repo's own `tokenizer.json`.
    pub tokenizer: Option<TokenizerSource>,
    pub dtype: DType,
    pub device: DeviceKind,
}

impl BackendSpec {
    pub fn kind(&self) -> BackendKind {
        match self {
            BackendSpec::OpenAi(_) => BackendKind::Openai,
            BackendSpec::LlamaServer(_) => BackendKind::LlamaServer,
            BackendSpec::Candle(_) => BackendKind::Candle,
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
    /// Ask for streamed answers and time the first piece of text as it arrives (instead of
    /// deriving the time to first token from the server's timings).
    pub stream: bool,
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
    /// Ask for streamed answers (server-sent events), so that the time to first token is
    /// measured where the server reports no timings of its own.
    pub stream: bool,
}

// ---------------------------------------------------------------------------------------------
// Raw types: one struct per backend. Every key a model may have is a field of its backend's
// struct, so serde refuses anything else; the lists of keys in messages are read back from
// these structs ([`fields_of`]), never kept by hand.

/// Declares a backend's raw struct: the keys every model takes, then the backend's own.
macro_rules! raw_model {
    ($name:ident { $($field:ident : $ty:ty,)* }) => {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)] // RawCommon is only probed for its keys
        struct $name {
            /// The tag, read before this struct is chosen.
            #[allow(dead_code)]
            backend: IgnoredAny,
            enabled: Option<bool>,
            max_new_tokens: Option<Spanned<u32>>,
            temperature: Option<Spanned<f64>>,
            seed: Option<u64>,
            system_prompt: Option<String>,
            text_only: Option<bool>,
            latency_scale: Option<Spanned<f64>>,
            repeat: Option<Spanned<u32>>,
            $($field: $ty,)*
        }

        impl $name {
            #[allow(dead_code)]
            fn common(&self) -> Common {
                Common {
                    enabled: self.enabled,
                    max_new_tokens: self.max_new_tokens.clone(),
                    temperature: self.temperature.clone(),
                    seed: self.seed,
                    system_prompt: self.system_prompt.clone(),
                    text_only: self.text_only,
                    latency_scale: self.latency_scale.clone(),
                    repeat: self.repeat.clone(),
                }
            }
        }
    };
}

/// The keys every model takes, whatever its backend.
struct Common {
    enabled: Option<bool>,
    max_new_tokens: Option<Spanned<u32>>,
    temperature: Option<Spanned<f64>>,
    seed: Option<u64>,
    system_prompt: Option<String>,
    text_only: Option<bool>,
    latency_scale: Option<Spanned<f64>>,
    repeat: Option<Spanned<u32>>,
}

raw_model!(RawCommon {});

raw_model!(RawCandle {
    arch: Option<Spanned<String>>,
    repo: Option<Spanned<String>>,
    revision: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    dtype: Option<Spanned<String>>,
    device: Option<Spanned<String>>,
    tokenizer: Option<Spanned<String>>,
    tokenizer_repo: Option<Spanned<String>>,
});

raw_model!(RawOpenai {
    base_url: Option<Spanned<String>>,
    model: Option<Spanned<String>>,
    api_key_env: Option<Spanned<String>>,
    timeout_s: Option<Spanned<f64>>,
    concurrency: Option<Spanned<usize>>,
    stream: Option<bool>,
});

raw_model!(RawLlamaServer {
    hf: Option<Spanned<String>>,
    model: Option<Spanned<String>>,
    mmproj: Option<Spanned<String>>,
    binary: Option<Spanned<String>>,
    args: Option<Spanned<Vec<String>>>,
    port: Option<Spanned<u16>>,
    startup_timeout_s: Option<Spanned<f64>>,
    timeout_s: Option<Spanned<f64>>,
    concurrency: Option<Spanned<usize>>,
    // Any value, checked below, so that a wrong type is reported in our words at its own line.
    cache_prompt: Option<Spanned<toml::Value>>,
    stream: Option<bool>,
});

/// `[defaults]`: the keys every model takes, and the HTTP backends' `timeout_s` and
/// `concurrency`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    enabled: Option<bool>,
    max_new_tokens: Option<Spanned<u32>>,
    temperature: Option<Spanned<f64>>,
    seed: Option<u64>,
    system_prompt: Option<String>,
    text_only: Option<bool>,
    latency_scale: Option<Spanned<f64>>,
    repeat: Option<Spanned<u32>>,
    timeout_s: Option<Spanned<f64>>,
    concurrency: Option<Spanned<usize>>,
}

/// The field names a serde struct accepts, read from its derived `Deserialize`.
fn fields_of<T: de::DeserializeOwned>() -> &'static [&'static str] {
    struct Probe<'a>(&'a Cell<&'static [&'static str]>);
    impl<'de> de::Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            self.0.set(fields);
            Err(de::Error::custom("probed"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let cell = Cell::new(&[][..]);
    let _ = T::deserialize(Probe(&cell));
    cell.get()
}

/// The keys a backend adds to the ones every model takes.
fn backend_keys(kind: BackendKind) -> Vec<&'static str> {
    let all = match kind {
        BackendKind::Candle => fields_of::<RawCandle>(),
        BackendKind::Openai => fields_of::<RawOpenai>(),
        BackendKind::LlamaServer => fields_of::<RawLlamaServer>(),
    };
    let common = fields_of::<RawCommon>();
    all.iter()
        .copied()
        .filter(|k| !common.contains(k))
        .collect()
}

/// One model's table, read for its backend.
enum Raw {
    Candle(RawCandle),
    Openai(RawOpenai),
    LlamaServer(RawLlamaServer),
}

impl Raw {
    fn common(&self) -> Common {
        match self {
            Raw::Candle(m) => m.common(),
            Raw::Openai(m) => m.common(),
            Raw::LlamaServer(m) => m.common(),
        }
    }
}

type Span = std::ops::Range<usize>;

/// The `[models.NAME]` tables, with dotted names (`[models.phi-3.5-vision]`, which TOML reads
/// as nested tables) joined back into one name; sorted by name.
fn model_tables<'a, 'i>(models: &'a DeTable<'i>) -> Vec<(String, Span, &'a Spanned<DeValue<'i>>)> {
    let mut flat = Vec::new();
    let mut stack: Vec<(String, Span, &Spanned<DeValue<'i>>)> = models
        .iter()
        .map(|(k, v)| (k.get_ref().to_string(), k.span(), v))
        .collect();
    while let Some((name, span, value)) = stack.pop() {
        let nested = match value.get_ref() {
            DeValue::Table(t) => {
                !t.is_empty()
                    && !t.iter().any(|(k, _)| k.get_ref() == "backend")
                    && t.iter()
                        .all(|(_, v)| matches!(v.get_ref(), DeValue::Table(_)))
            }
            _ => false,
        };
        match value.get_ref() {
            DeValue::Table(t) if nested => {
                for (k, v) in t.iter() {
                    stack.push((format!("{name}.{}", k.get_ref()), k.span(), v));
                }
            }
            _ => flat.push((name, span, value)),
        }
    }
    flat.sort_by(|a, b| a.0.cmp(&b.0));
    flat
}

/// A TOML deserialisation error as a config error at its line, with the unknown-key case
/// explained: a key of another backend is named as such, with the backend's own keys.
fn toml_error(
    path: &Path,
    text: &str,
    e: &toml::de::Error,
    name: &str,
    kind: Option<BackendKind>,
) -> ConfigError {
    let line = e.span().map(|s| line_of_offset(text, s.start));
    let msg = e.message().trim();
    let unknown = msg
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next());
    if let (Some(key), Some(kind)) = (unknown, kind) {
        let elsewhere = BackendKind::ALL
            .iter()
            .any(|&other| other != kind && backend_keys(other).contains(&key));
        if elsewhere {
            return ConfigError::new(
                path,
                line,
                format!(
                    "key `{key}` does not apply to backend `{kind}` (its keys: {})",
                    backend_keys(kind).join(", ")
                ),
            );
        }
    }
    let prefix = if name.is_empty() {
        String::new()
    } else {
        format!("model `{name}`: ")
    };
    ConfigError::new(path, line, format!("{prefix}{msg}"))
}

/// A value and the span it was written at, taken from the model when it sets it, else from
/// `[defaults]`.
fn pick<T: Clone>(model: &Option<Spanned<T>>, default: &Option<Spanned<T>>) -> Option<(T, Span)> {
    model
        .as_ref()
        .or(default.as_ref())
        .map(|s| (s.get_ref().clone(), s.span()))
}

/// Reads and checks models.toml; every problem of the file is reported.
pub fn load_models(path: &Path) -> Result<ModelsConfig, ConfigErrors> {
    let text = read_text(path, "a models.toml with [models.NAME] tables")?;
    let root = DeTable::parse(&text).map_err(|e| toml_error(path, &text, &e, "", None))?;
    let line = |span: &Span| Some(line_of_offset(&text, span.start));
    let mut errors = ConfigErrors::default();

    let mut defaults = RawDefaults::default();
    let mut models_table = None;
    for (key, value) in root.get_ref().iter() {
        match key.get_ref().as_ref() {
            "defaults" => match RawDefaults::deserialize(ValueDeserializer::from(value.clone())) {
                Ok(d) => defaults = d,
                Err(e) => {
                    let mut e = toml_error(path, &text, &e, "", None);
                    e.message = format!("[defaults]: {}", e.message);
                    errors.push(e);
                }
            },
            "models" => match value.get_ref() {
                DeValue::Table(t) => models_table = Some(t),
                _ => errors.push(ConfigError::new(
                    path,
                    line(&key.span()),
                    "`models` must be a table of [models.NAME] tables",
                )),
            },
            other => errors.push(ConfigError::new(
                path,
                line(&key.span()),
                format!("unknown top-level key `{other}` (expected `defaults` or `models`)"),
            )),
        }
    }

    let mut parsed: Vec<(String, Span, Raw)> = Vec::new();
    for (name, span, value) in models_table.map(model_tables).unwrap_or_default() {
        let DeValue::Table(table) = value.get_ref() else {
            errors.push(ConfigError::new(
                path,
                line(&span),
                format!("`models.{name}` must be a table ([models.{name}] with backend = ...)"),
            ));
            continue;
        };
        let backend = table.iter().find(|(k, _)| k.get_ref() == "backend");
        let kind = match backend.map(|(_, v)| (v.get_ref(), v.span())) {
            None => {
                errors.push(ConfigError::new(
                    path,
                    line(&span),
                    format!(
                        "model `{name}` has no `backend` (expected one of: {})",
                        BackendKind::ALL.map(BackendKind::name).join(", ")
                    ),
                ));
                continue;
            }
            Some((DeValue::String(s), at)) => match kinds::parse::<BackendKind>(s) {
                Ok(k) => k,
                Err(msg) => {
                    errors.push(ConfigError::new(
                        path,
                        line(&at),
                        format!("model `{name}`: {msg}"),
                    ));
                    continue;
                }
            },
            Some((other, at)) => {
                errors.push(ConfigError::new(
                    path,
                    line(&at),
                    format!(
                        "model `{name}`: `backend` must be a string, found {} (expected one of: {})",
                        other.type_str(),
                        BackendKind::ALL.map(BackendKind::name).join(", ")
                    ),
                ));
                continue;
            }
        };
        if kind == BackendKind::Candle && !cfg!(feature = "candle") {
            let at = backend.map(|(_, v)| v.span()).unwrap_or(span.clone());
            errors.push(ConfigError::new(
                path,
                line(&at),
                format!("model `{name}`: {}", kinds::NO_CANDLE),
            ));
            continue;
        }
        let de = || ValueDeserializer::from(value.clone());
        let raw = match kind {
            BackendKind::Candle => RawCandle::deserialize(de()).map(Raw::Candle),
            BackendKind::Openai => RawOpenai::deserialize(de()).map(Raw::Openai),
            BackendKind::LlamaServer => RawLlamaServer::deserialize(de()).map(Raw::LlamaServer),
        };
        match raw {
            Ok(raw) => parsed.push((name, span, raw)),
            Err(e) => errors.push(toml_error(path, &text, &e, &name, Some(kind))),
        }
    }
    if parsed.is_empty() && errors.is_empty() {
        errors.push(ConfigError::new(
            path,
            None,
            "no models declared (expected at least one [models.NAME] table)",
        ));
    }

    let d = &defaults;
    let mut models = Vec::new();
    for (name, span, raw) in &parsed {
        let model_line = line_of_offset(&text, span.start);
        let err = |l: Option<usize>, msg: String| ConfigError::new(path, l, msg);
        if !valid_id(name, true) {
            errors.push(err(
                Some(model_line),
                format!("invalid model name `{name}` (expected [a-z0-9_.-]+)"),
            ));
        }
        let c = raw.common();
        let temperature = pick(&c.temperature, &d.temperature);
        if let Some((t, at)) = &temperature
            && !(0.0..=5.0).contains(t)
        {
            errors.push(err(
                line(at),
                format!("`temperature` must be between 0 and 5, got {t}"),
            ));
        }
        let max_new_tokens = pick(&c.max_new_tokens, &d.max_new_tokens);
        if let Some((0, at)) = &max_new_tokens {
            errors.push(err(line(at), "`max_new_tokens` must be at least 1".into()));
        }
        let repeat = pick(&c.repeat, &d.repeat);
        if let Some((0, at)) = &repeat {
            errors.push(err(line(at), "`repeat` must be at least 1".into()));
        }
        let latency_scale = pick(&c.latency_scale, &d.latency_scale);
        if let Some((s, at)) = &latency_scale
            && !(*s > 0.0 && s.is_finite())
        {
            errors.push(err(
                line(at),
                format!("`latency_scale` must be a number > 0, got {s}"),
            ));
        }
        // The HTTP backends' request timeout and concurrency.
        let http = |timeout: &Option<Spanned<f64>>,
                    concurrency: &Option<Spanned<usize>>,
                    errors: &mut ConfigErrors| {
            let timeout_s = match pick(timeout, &d.timeout_s) {
                Some((t, at)) if !(t > 0.0 && t.is_finite() && t < 1e7) => {
                    errors.push(err(
                        line(&at),
                        format!("`timeout_s` must be a number of seconds > 0, got {t}"),
                    ));
                    120.0
                }
                Some((t, _)) => t,
                None => 120.0,
            };
            let concurrency = match pick(concurrency, &d.concurrency) {
                Some((0, at)) => {
                    errors.push(err(line(&at), "`concurrency` must be at least 1".into()));
                    1
                }
                Some((n, _)) => n,
                None => 1,
            };
            (Duration::from_secs_f64(timeout_s), concurrency)
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let backend = match raw {
            Raw::Openai(m) => {
                let (timeout, concurrency) = http(&m.timeout_s, &m.concurrency, &mut errors);
                let base_url = m
                    .base_url
                    .as_ref()
                    .map(|s| s.get_ref().clone())
                    .unwrap_or_default();
                let model = m
                    .model
                    .as_ref()
                    .map(|s| s.get_ref().clone())
                    .unwrap_or_default();
                match &m.base_url {
                    None => errors.push(err(Some(model_line), format!("model `{name}`: backend `openai` needs `base_url` (e.g. \"http://127.0.0.1:8000/v1\")"))),
                    Some(u) if !(base_url.starts_with("http://") || base_url.starts_with("https://")) => errors.push(err(
                        line(&u.span()),
                        format!("`base_url` must start with http:// or https://, got `{base_url}`"),
                    )),
                    Some(_) => {}
                }
                if model.is_empty() {
                    errors.push(err(Some(model_line), format!("model `{name}`: backend `openai` needs `model` (the name the server knows the model by)")));
                }
                if let Some(var) = &m.api_key_env {
                    let v = var.get_ref();
                    if v.is_empty() || v.contains(['=', '\0']) || v.starts_with("sk-") {
                        errors.push(err(line(&var.span()), "`api_key_env` names the environment variable that holds the key (e.g. \"OPENAI_API_KEY\"), never the key itself".into()));
                    }
                }
                Some(BackendSpec::OpenAi(OpenAiSpec {
                    base_url: base_url.trim_end_matches('/').to_string(),
                    model,
                    api_key_env: m.api_key_env.as_ref().map(|s| s.get_ref().clone()),
                    timeout,
                    concurrency,
                    stream: m.stream.unwrap_or(false),
                }))
            }
            Raw::LlamaServer(m) => {
                let (timeout, concurrency) = http(&m.timeout_s, &m.concurrency, &mut errors);
                let text_of = |s: &Option<Spanned<String>>| s.as_ref().map(|s| s.get_ref().clone());
                let source = match (&m.hf, &m.model, &m.mmproj) {
                    (Some(hf), Some(_), _) | (Some(hf), _, Some(_)) => {
                        errors.push(err(line(&hf.span()), "give either `hf` (a Hugging Face GGUF repo) or `model` + `mmproj` (local files), not both".into()));
                        None
                    }
                    (Some(hf), None, None) => {
                        let repo = hf.get_ref();
                        if repo.trim().is_empty() || !repo.contains('/') {
                            errors.push(err(line(&hf.span()), format!("`hf` must name a repo such as \"ggml-org/SmolVLM-500M-Instruct-GGUF\", got `{repo}`")));
                            None
                        } else {
                            Some(GgufSource::Hf(repo.clone()))
                        }
                    }
                    (None, Some(model), mmproj) => Some(GgufSource::Files {
                        model: base.join(model.get_ref()),
                        mmproj: text_of(mmproj).map(|p| base.join(p)),
                    }),
                    (None, None, _) => {
                        errors.push(err(Some(model_line), format!("model `{name}`: backend `llama-server` needs `hf` (a Hugging Face GGUF repo) or `model` (a local .gguf file, with `mmproj` for images)")));
                        None
                    }
                };
                let startup = match &m.startup_timeout_s {
                    Some(s)
                        if !(*s.get_ref() > 0.0
                            && s.get_ref().is_finite()
                            && *s.get_ref() < 1e7) =>
                    {
                        errors.push(err(
                            line(&s.span()),
                            format!(
                                "`startup_timeout_s` must be a number of seconds > 0, got {}",
                                s.get_ref()
                            ),
                        ));
                        600.0
                    }
                    Some(s) => *s.get_ref(),
                    None => 600.0,
                };
                if let Some(p) = &m.port
                    && *p.get_ref() == 0
                {
                    errors.push(err(line(&p.span()), "`port` must be between 1 and 65535 (leave it out to let vlmtest pick a free port)".into()));
                }
                let binary = text_of(&m.binary).unwrap_or_else(|| "llama-server".into());
                if binary.trim().is_empty() {
                    errors.push(err(
                        m.binary.as_ref().and_then(|b| line(&b.span())),
                        "`binary` is empty (expected a program name on PATH or a path)".into(),
                    ));
                }
                let args = m
                    .args
                    .as_ref()
                    .map(|a| a.get_ref().clone())
                    .unwrap_or_default();
                if let (Some(a), Some(at)) = (
                    args.iter()
                        .find(|a| ["--port", "--host"].contains(&a.as_str())),
                    m.args.as_ref().map(|a| a.span()),
                ) {
                    errors.push(err(line(&at), format!("`{a}` is set by vlmtest (127.0.0.1 and the model's `port`); remove it from `args`")));
                }
                let cache_prompt = match &m.cache_prompt {
                    None => None,
                    Some(v) => match v.get_ref() {
                        toml::Value::Boolean(b) => Some(*b),
                        other => {
                            errors.push(err(
                                line(&v.span()),
                                format!("`cache_prompt` must be true or false, got {other}"),
                            ));
                            None
                        }
                    },
                };
                let greedy = temperature.as_ref().is_none_or(|(t, _)| *t == 0.0);
                source.map(|source| {
                    BackendSpec::LlamaServer(LlamaServerSpec {
                        source,
                        binary,
                        args,
                        port: m.port.as_ref().map(|p| *p.get_ref()),
                        startup_timeout: Duration::from_secs_f64(startup),
                        timeout,
                        concurrency,
                        cache_prompt: cache_prompt.unwrap_or(!greedy),
                        stream: m.stream.unwrap_or(false),
                    })
                })
            }
            Raw::Candle(m) => candle_spec(m, name, model_line, base, &line, &mut errors, path),
        };
        let Some(backend) = backend else { continue };
        let text_only = c.text_only.or(d.text_only).unwrap_or(match &backend {
            BackendSpec::Candle(c) => c.arch.answers_text_only(),
            _ => true,
        });
        models.push(ModelSpec {
            name: name.clone(),
            line: model_line,
            enabled: c.enabled.or(d.enabled).unwrap_or(true),
            backend,
            params: GenParams {
                max_new_tokens: max_new_tokens.map_or(32, |(n, _)| n),
                temperature: temperature.map_or(0.0, |(t, _)| t),
                seed: c.seed.or(d.seed),
                system_prompt: c.system_prompt.clone().or_else(|| d.system_prompt.clone()),
            },
            text_only,
            latency_scale: latency_scale.map_or(1.0, |(s, _)| s),
            repeat: repeat.map_or(1, |(n, _)| n.max(1)),
        });
    }
    errors.into_result(ModelsConfig {
        file: path.to_path_buf(),
        models,
    })
}

/// Checks a candle model's keys.
fn candle_spec(
    m: &RawCandle,
    name: &str,
    model_line: usize,
    base: &Path,
    line: &dyn Fn(&Span) -> Option<usize>,
    errors: &mut ConfigErrors,
    path: &Path,
) -> Option<BackendSpec> {
    let err = |l: Option<usize>, msg: String| ConfigError::new(path, l, msg);
    // A closed-set key: serde's message names the valid choices.
    fn closed<T: for<'de> Deserialize<'de> + Default>(
        v: &Option<Spanned<String>>,
        key: &str,
        line: &dyn Fn(&Span) -> Option<usize>,
        errors: &mut ConfigErrors,
        path: &Path,
    ) -> Option<T> {
        match v {
            None => Some(T::default()),
            Some(s) => match kinds::parse::<T>(s.get_ref()) {
                Ok(t) => Some(t),
                Err(msg) => {
                    let msg =
                        msg.to_string()
                            .replacen("unknown variant", &format!("unknown {key}"), 1);
                    errors.push(ConfigError::new(path, line(&s.span()), msg));
                    None
                }
            },
        }
    }
    let arch = match &m.arch {
        None => {
            errors.push(err(
                Some(model_line),
                format!(
                    "model `{name}`: backend `candle` needs `arch` (one of: {})",
                    Arch::ALL
                        .iter()
                        .map(|a| a.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
            None
        }
        Some(s) => match kinds::parse::<Arch>(s.get_ref()) {
            Ok(a) => Some(a),
            Err(msg) => {
                errors.push(err(
                    line(&s.span()),
                    msg.to_string()
                        .replacen("unknown variant", "unknown arch", 1),
                ));
                None
            }
        },
    };
    let dtype = closed::<DType>(&m.dtype, "dtype", line, errors, path);
    let device = closed::<DeviceKind>(&m.device, "device", line, errors, path);
    let source = match (&m.repo, &m.path) {
        (Some(_), Some(p)) => {
            errors.push(err(
                line(&p.span()),
                "give either `repo` (+ `revision`) or `path`, not both".into(),
            ));
            None
        }
        (None, Some(p)) => {
            if let Some(r) = &m.revision {
                errors.push(err(
                    line(&r.span()),
                    format!(
                        "`revision` applies to `repo`, not to `path` (`{}` is read as it is)",
                        p.get_ref()
                    ),
                ));
                None
            } else if p.get_ref().trim().is_empty() {
                errors.push(err(
                    line(&p.span()),
                    "`path` is empty (expected a folder laid out like the Hugging Face repo)"
                        .into(),
                ));
                None
            } else {
                Some(ModelSource::Path(base.join(p.get_ref())))
            }
        }
        (Some(r), None) => {
            let repo = r.get_ref();
            let parts: Vec<&str> = repo.split('/').collect();
            if parts.len() != 2
                || parts
                    .iter()
                    .any(|p| p.is_empty() || p.contains(char::is_whitespace))
            {
                errors.push(err(line(&r.span()), format!("`repo` must name a Hugging Face repo such as \"HuggingFaceTB/SmolVLM-256M-Instruct\", got `{repo}`")));
                None
            } else {
                let revision = m
                    .revision
                    .as_ref()
                    .map_or_else(|| "main".to_string(), |r| r.get_ref().clone());
                if revision.trim().is_empty() || revision.contains("..") {
                    errors.push(err(
                        m.revision.as_ref().and_then(|r| line(&r.span())),
                        format!("`revision` must be a branch, tag or commit, got `{revision}`"),
                    ));
                }
                Some(ModelSource::Hub {
                    repo: repo.clone(),
                    revision,
                })
            }
        }
        (None, None) => {
            errors.push(err(Some(model_line), format!("model `{name}`: backend `candle` needs `repo` (a Hugging Face repo, with `revision`) or `path` (a local folder laid out like the repo)")));
            None
        }
    };
    let tokenizer = match arch {
        Some(arch) => candle_tokenizer(m, arch, base, line, errors, path),
        None => None,
    };
    Some(BackendSpec::Candle(CandleSpec {
        arch: arch?,
        source: source?,
        tokenizer: tokenizer?,
        dtype: dtype?,
        device: device?,
    }))
}

/// `tokenizer` / `tokenizer_repo` of a candle model (`Some(None)`: the repo's own tokenizer;
/// `None`: an error was pushed).
fn candle_tokenizer(
    m: &RawCandle,
    arch: Arch,
    base: &Path,
    line: &dyn Fn(&Span) -> Option<usize>,
    errors: &mut ConfigErrors,
    path: &Path,
) -> Option<Option<TokenizerSource>> {
    let mut err = |at: &Spanned<String>, msg: String| {
        errors.push(ConfigError::new(path, line(&at.span()), msg));
        None
    };
    let (key, at) = match (&m.tokenizer, &m.tokenizer_repo) {
        (None, None) => return Some(None),
        (Some(_), Some(r)) => {
            return err(r, "give either `tokenizer` (a local tokenizer.json or its folder) or `tokenizer_repo` (a Hugging Face repo), not both".into());
        }
        (Some(t), None) => ("tokenizer", t),
        (None, Some(r)) => ("tokenizer_repo", r),
    };
    if arch != Arch::Moondream2 {
        return err(
            at,
            format!(
                "`{key}` applies to arch `moondream2` only (arch `{arch}` reads the tokenizer.json of its own repo)"
            ),
        );
    }
    if let Some(p) = &m.tokenizer {
        if p.get_ref().trim().is_empty() {
            return err(
                p,
                "`tokenizer` is empty (expected a tokenizer.json file or a folder holding one)"
                    .into(),
            );
        }
        return Some(Some(TokenizerSource::Path(base.join(p.get_ref()))));
    }
    let r = at.get_ref();
    let parts: Vec<&str> = r.split('/').collect();
    if parts.len() != 2
        || parts
            .iter()
            .any(|p| p.is_empty() || p.contains(char::is_whitespace))
    {
        return err(
            at,
            format!(
                "`tokenizer_repo` must name a Hugging Face repo such as \"moondream/starmie-v1\", got `{r}`"
            ),
        );
    }
    Some(Some(TokenizerSource::Hub {
        repo: r.clone(),
        revision: "main".into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_lists_come_from_the_structs() {
        assert_eq!(
            backend_keys(BackendKind::Openai),
            [
                "base_url",
                "model",
                "api_key_env",
                "timeout_s",
                "concurrency",
                "stream"
            ]
        );
        assert!(fields_of::<RawCommon>().contains(&"latency_scale"));
        assert!(backend_keys(BackendKind::Candle).contains(&"arch"));
        assert!(!backend_keys(BackendKind::Candle).contains(&"enabled"));
    }
}
