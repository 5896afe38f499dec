//! Configuration: the environment, suites and models.toml, checked once at start-up.

pub mod image;
pub mod models;
pub(crate) mod served;
pub mod suite;
pub mod text;
pub(crate) mod yaml;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use models::{
    BackendSpec, CandleSpec, GenParams, GgufSource, LlamaServerSpec, ModelSource, ModelSpec,
    ModelsConfig, OpenAiSpec, TokenizerSource,
};
pub use suite::{Case, Gate, Suite, Thresholds, Turn};

use crate::error::{ConfigError, ConfigErrors};
use crate::kinds::EnvError;

pub use crate::kinds::UpdateMode;

/// How gate (and regression) trials reach their verdict (`VLMTEST_GATES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GateMode {
    /// The trial asks every case of its suite it has no result for, then judges.
    #[default]
    Eval,
    /// The trial judges nothing: it records the figures of the cases this shard ran and leaves
    /// the verdict to `vlmtest merge` (for `cargo nextest run --partition`).
    Defer,
}

/// When the processes of a cargo-nextest run write the reports (`VLMTEST_REPORT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReportMode {
    /// Every process leaves complete reports of the run so far (each one reads all of the run's
    /// records: quadratic over a long nextest run).
    #[default]
    Each,
    /// Under cargo-nextest, a process only appends its records; `vlmtest report` writes the
    /// reports once, after the run. A run in one process writes them at its end as always.
    Defer,
}

/// `VLMTEST_FETCH`: whether a run may download an in-process model's missing weights into the
/// Hugging Face cache when the model is first used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    /// Download what is missing (unless `HF_HUB_OFFLINE=1`).
    Auto,
    /// Never download: a model that is not cached gets ignored trials.
    Never,
}

impl Fetch {
    /// Reads the variable's value (`None` or empty: the default, `auto`).
    pub fn parse(value: Option<&str>) -> Result<Fetch, EnvError> {
        match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") | Some("auto") => Ok(Fetch::Auto),
            Some("never") => Ok(Fetch::Never),
            Some(_) => Err(EnvError::new(
                "VLMTEST_FETCH",
                value.unwrap_or_default(),
                &["auto", "never"],
            )),
        }
    }
}

/// Settings read from the environment (see the README for each variable).
#[derive(Debug, Clone)]
pub struct Env {
    pub root: PathBuf,
    pub models: PathBuf,
    pub suites: PathBuf,
    pub out: PathBuf,
    pub snapshots: PathBuf,
    pub max_resident: usize,
    pub require_models: bool,
    pub ci: bool,
    pub update: UpdateMode,
    pub force_pass: bool,
    /// `VLMTEST_MALLOC` as written (`None`: unset, the harness decides).
    pub malloc: Option<crate::machine::Allocator>,
    pub gates: GateMode,
    /// `VLMTEST_REPORT`.
    pub report: ReportMode,
    /// `VLMTEST_CACHE` and `VLMTEST_CACHE_DIR` (default `recordings/` at the crate root).
    pub cache: crate::kinds::CacheMode,
    pub cache_dir: PathBuf,
    /// `VLMTEST_BASELINES` (default `baselines/` at the crate root).
    pub baselines: PathBuf,
    /// `VLMTEST_FETCH`.
    pub fetch: Fetch,
    /// `VLMTEST_SERVED`: models a `vlmtest serve` holds (see [`served`]).
    pub served: Vec<served::Served>,
}

fn truthy(v: &str) -> bool {
    !matches!(
        v.trim().to_lowercase().as_str(),
        "" | "0" | "false" | "no" | "off"
    )
}

impl Env {
    /// Reads the process environment.
    pub(crate) fn from_process() -> Result<Env, ConfigError> {
        Env::from_vars(|k| std::env::var(k).ok())
    }

    /// Reads settings through `get` (the process environment, or a map in tests).
    pub(crate) fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Env, ConfigError> {
        let root = get("CARGO_MANIFEST_DIR")
            .map(PathBuf::from)
            .or_else(|| std::env::current_dir().ok())
            .unwrap_or_else(|| PathBuf::from("."));
        let path = |var: &str, default: &str| match get(var).filter(|v| !v.is_empty()) {
            Some(v) => PathBuf::from(v),
            None => root.join(default),
        };
        let max_resident = match get("VLMTEST_MAX_RESIDENT").filter(|v| !v.is_empty()) {
            None => 1,
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) if n >= 1 => n,
                _ => {
                    return Err(ConfigError::env(format!(
                        "VLMTEST_MAX_RESIDENT must be a whole number >= 1, got `{v}`"
                    )));
                }
            },
        };
        let update = match get("INSTA_UPDATE").as_deref().map(str::trim) {
            None | Some("") | Some("auto") => UpdateMode::Auto,
            Some("always") | Some("1") => UpdateMode::Always,
            Some("new") => UpdateMode::New,
            Some("unseen") => UpdateMode::Unseen,
            Some("no") | Some("0") => UpdateMode::No,
            Some(other) => {
                return Err(EnvError::new(
                    "INSTA_UPDATE",
                    other,
                    &["auto", "always", "new", "unseen", "no"],
                )
                .into());
            }
        };
        let malloc = match get("VLMTEST_MALLOC").filter(|v| !v.trim().is_empty()) {
            None => None,
            Some(v) => Some(crate::machine::Allocator::from_env(
                Some(&v),
                crate::machine::Allocator::Default,
            )?),
        };
        let gates = match get("VLMTEST_GATES").as_deref().map(str::trim) {
            None | Some("") | Some("eval") => GateMode::Eval,
            Some("defer") => GateMode::Defer,
            Some(other) => {
                return Err(EnvError::new("VLMTEST_GATES", other, &["eval", "defer"]).into());
            }
        };
        let report = match get("VLMTEST_REPORT").as_deref().map(str::trim) {
            None | Some("") | Some("each") => ReportMode::Each,
            Some("defer") => ReportMode::Defer,
            Some(other) => {
                return Err(EnvError::new("VLMTEST_REPORT", other, &["each", "defer"]).into());
            }
        };
        let cache = crate::kinds::CacheMode::parse(&get("VLMTEST_CACHE").unwrap_or_default())?;
        let fetch = Fetch::parse(get("VLMTEST_FETCH").as_deref())?;
        let served = served::parse(&get("VLMTEST_SERVED").unwrap_or_default())?;
        Ok(Env {
            cache,
            cache_dir: path("VLMTEST_CACHE_DIR", "recordings"),
            baselines: path("VLMTEST_BASELINES", "baselines"),
            gates,
            report,
            malloc,
            fetch,
            served,
            models: path("VLMTEST_MODELS", "models.toml"),
            suites: path("VLMTEST_SUITES", "suites"),
            out: path("VLMTEST_OUT", "target/vlmtest"),
            snapshots: path("VLMTEST_SNAPSHOTS", "snapshots"),
            max_resident,
            require_models: get("VLMTEST_REQUIRE_MODELS").is_some_and(|v| truthy(&v)),
            ci: get("CI").is_some_and(|v| truthy(&v)),
            update,
            force_pass: get("INSTA_FORCE_PASS").is_some_and(|v| truthy(&v)),
            root,
        })
    }

    /// `path` relative to the crate root when it lies under it, for messages and reports.
    pub fn shown(&self, path: &Path) -> PathBuf {
        path.strip_prefix(&self.root)
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| path.to_path_buf())
    }
}

/// Everything the plan is built from.
#[derive(Debug)]
pub struct Config {
    pub models: ModelsConfig,
    pub suites: Vec<Suite>,
    /// Committed baselines (`VLMTEST_BASELINES/{model}.json`) of the declared models that have one.
    pub baselines: BTreeMap<String, crate::compare::Baseline>,
    /// Where they were read from.
    pub baselines_dir: PathBuf,
}

/// Reads the baseline of each declared model that has a file in `dir`.
fn load_baselines(
    dir: &Path,
    models: &ModelsConfig,
    env: &Env,
    errors: &mut ConfigErrors,
) -> BTreeMap<String, crate::compare::Baseline> {
    let mut out = BTreeMap::new();
    for m in &models.models {
        let file = dir.join(format!("{}.json", m.name));
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        match serde_json::from_str::<crate::compare::Baseline>(&text) {
            Ok(b) if b.model == m.name => {
                out.insert(m.name.clone(), b);
            }
            Ok(b) => errors.push(ConfigError::new(
                env.shown(&file),
                None,
                format!(
                    "this is the baseline of model `{}`, not of `{}` (a baseline file is named after its model: write it with `vlmtest baseline`)",
                    b.model, m.name
                ),
            )),
            Err(e) => errors.push(ConfigError::new(
                env.shown(&file),
                Some(e.line()),
                format!("{e} (expected a baseline written by `vlmtest baseline`)"),
            )),
        }
    }
    out
}

/// Loads models.toml and every suite; all errors of all files are reported together.
pub fn load(env: &Env) -> Result<Config, ConfigErrors> {
    let mut errors = ConfigErrors::default();
    let models = match models::load_models(&env.models) {
        Ok(mut m) => match served::apply(&mut m, &env.served) {
            Ok(()) => Some(m),
            Err(e) => {
                errors.push(e);
                None
            }
        },
        Err(e) => {
            errors.0.extend(e.0.into_iter().map(|mut e| {
                e.file = env.shown(&e.file);
                e
            }));
            None
        }
    };
    let mut suites = Vec::new();
    let mut images = image::ImageCache::default();
    match suite::discover(&env.suites) {
        Err(e) => errors.push(e),
        Ok(files) => {
            let mut names: BTreeMap<String, PathBuf> = BTreeMap::new();
            for f in files {
                let shown = env.shown(&f);
                match suite::load_suite(&f, &shown, &mut images) {
                    Ok(s) => {
                        if let Some(prev) = names.insert(s.name.clone(), shown.clone()) {
                            errors.push(ConfigError::new(
                                &shown,
                                None,
                                format!(
                                    "duplicate suite name `{}` (also used by {}; set `name:` to tell them apart)",
                                    s.name,
                                    prev.display()
                                ),
                            ));
                        }
                        suites.push(s);
                    }
                    Err(e) => errors.0.extend(e.0),
                }
            }
        }
    }
    let Some(models) = models else {
        return Err(errors);
    };
    // Gate overrides must name declared models.
    for s in &suites {
        for (m, (_, line)) in &s.gate.models {
            if !models.models.iter().any(|spec| &spec.name == m) {
                let known: Vec<&str> = models.models.iter().map(|m| m.name.as_str()).collect();
                errors.push(ConfigError::new(
                    &s.file,
                    Some(*line),
                    format!(
                        "gate override for unknown model `{m}` (models in {}: {})",
                        env.shown(&models.file).display(),
                        known.join(", ")
                    ),
                ));
            }
        }
    }
    suites.sort_by(|a, b| a.name.cmp(&b.name));
    let baselines = load_baselines(&env.baselines, &models, env, &mut errors);
    errors.into_result(Config {
        models,
        suites,
        baselines,
        baselines_dir: env.baselines.clone(),
    })
}
