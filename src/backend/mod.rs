//! The backend seam: one trait, `generate(request) -> Generation`, and one module per engine.
//!
//! A model is loaded lazily by its [`ModelSlot`] when its first trial runs, shared by the trials
//! that need it, and dropped after its last trial of the run. Load time and memory growth are
//! measured around the load.

#[cfg(feature = "candle")]
pub mod candle;
mod error;
pub(crate) mod fingerprint;
pub(crate) mod image_formats;
pub(crate) mod llama_server;
pub(crate) mod openai;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::config::image::Image;
use crate::config::{BackendSpec, GenParams, ModelSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One message of the conversation sent to the model.
#[derive(Debug, Clone)]
pub struct Message {
    pub role: Role,
    pub text: String,
    pub images: Vec<Arc<Image>>,
}

/// What a backend is asked: the whole conversation so far and the generation parameters.
#[derive(Debug, Clone)]
pub struct Request {
    pub messages: Vec<Message>,
    pub params: GenParams,
}

impl Request {
    /// The text of the last user message ("" when there is none): the question of a model with
    /// no chat format, and the question a recording shows.
    pub fn last_question(&self) -> &str {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map_or("", |m| m.text.as_str())
    }
}

/// What a backend answers.
#[derive(Debug, Clone, Default)]
pub struct Generation {
    pub text: String,
    /// Time spent generating (for HTTP backends: the request, retries included).
    pub latency: Duration,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub time_to_first_token: Option<Duration>,
    /// Requests retried before this answer.
    pub retries: u32,
    /// Decoding speed after the first token, when the backend measured it itself (a server's
    /// own timings); otherwise computed from the latency and the time to first token.
    pub tokens_per_second: Option<f64>,
    /// Replayed from a recording (`VLMTEST_CACHE`), not asked live.
    pub replayed: bool,
    /// What preprocessing made of the images (in-process models that say), for report.json.
    pub preprocessing: Option<serde_json::Value>,
}

pub use error::{BackendError, LoadError};

/// An inference engine serving one model.
pub trait Backend: Send + Sync {
    fn generate(&self, request: &Request) -> Result<Generation, BackendError>;

    /// Peak resident memory of the model when it lives outside this process (a managed server);
    /// `None` for in-process models (measured as this process's growth) and remote servers.
    fn external_memory_bytes(&self) -> Option<u64> {
        None
    }
}

/// Builds the backend for a model. This is where weights are read or servers started.
fn load(spec: &ModelSpec, out: &Path) -> Result<Arc<dyn Backend>, LoadError> {
    match &spec.backend {
        BackendSpec::LlamaServer(l) => llama_server::LlamaServer::start(&spec.name, l, out)
            .map(|b| Arc::new(b) as Arc<dyn Backend>),
        #[cfg(feature = "candle")]
        BackendSpec::Candle(c) => {
            candle::Candle::load(&spec.name, c).map(|b| Arc::new(b) as Arc<dyn Backend>)
        }
        // models.toml refuses candle models in such a build; this is a second line of defence.
        #[cfg(not(feature = "candle"))]
        BackendSpec::Candle(_) => Err(LoadError::NoCandle {
            model: spec.name.clone(),
        }),
        BackendSpec::OpenAi(o) => {
            let b = openai::OpenAi::new(o)?;
            b.probe()?;
            Ok(Arc::new(b))
        }
    }
}

/// What must happen before a model is loaded, outside its load time: an in-process model's
/// missing weights are downloaded on first use (see `candle::hub::first_use`).
fn prepare(spec: &ModelSpec, fetch: crate::config::Fetch) -> Result<(), LoadError> {
    match &spec.backend {
        #[cfg(feature = "candle")]
        BackendSpec::Candle(c) => candle::hub::first_use(&spec.name, c, fetch),
        _ => {
            let _ = fetch;
            Ok(())
        }
    }
}

/// How "loading MODEL (…)…" describes the load, for the backends whose load takes long.
fn loading_what(spec: &ModelSpec) -> Option<String> {
    match &spec.backend {
        BackendSpec::Candle(c) => Some(format!("in-process, {}, {}", c.dtype, c.device)),
        BackendSpec::LlamaServer(_) => Some("starting llama-server".into()),
        BackendSpec::OpenAi(_) => None,
    }
}

/// Loads a model, turning a panic inside a loader (a checkpoint whose values break an
/// assumption of the code) into that model's load error, so that one broken model never takes
/// the run down or holds a resident-model permit forever.
fn load_guarded(
    loader: Loader,
    spec: &ModelSpec,
    out: &Path,
) -> Result<Arc<dyn Backend>, LoadError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| loader(spec, out))) {
        Ok(result) => result,
        Err(payload) => {
            let what = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            Err(LoadError::Panicked {
                model: spec.name.clone(),
                message: what.to_string(),
            })
        }
    }
}

/// Measurements taken around a model's load and use.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct LoadStats {
    pub load_s: Option<f64>,
    /// Growth of this process's resident memory across the load (in-process models).
    pub memory_growth_bytes: Option<i64>,
    /// Peak resident memory of the model's own process (managed servers).
    pub external_memory_bytes: Option<u64>,
    /// Highest resident memory of this process seen while the model was loaded.
    pub peak_memory_bytes: Option<u64>,
    pub load_error: Option<String>,
}

/// A counting semaphore: how many in-process models are loaded at once, how many requests a
/// model has in flight.
pub(crate) struct Semaphore {
    free: Mutex<usize>,
    cv: Condvar,
}

impl Semaphore {
    pub(crate) fn new(n: usize) -> Self {
        Self {
            free: Mutex::new(n.max(1)),
            cv: Condvar::new(),
        }
    }

    /// Waits for a permit; it is returned when the guard is dropped.
    pub(crate) fn acquire(&self) -> Permit<'_> {
        self.take();
        Permit(self)
    }

    /// Waits for a permit that owns a handle on the semaphore, so it can be kept in a struct;
    /// it is returned when dropped (also when a panic unwinds past it).
    pub(crate) fn acquire_owned(self: &Arc<Self>) -> OwnedPermit {
        self.take();
        OwnedPermit(self.clone())
    }

    fn take(&self) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.cv.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
    }

    fn give(&self) {
        *self.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.cv.notify_one();
    }
}

/// A permit of a [`Semaphore`], given back on drop.
pub(crate) struct Permit<'a>(&'a Semaphore);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.give();
    }
}

/// A permit of a shared [`Semaphore`], given back on drop.
pub(crate) struct OwnedPermit(Arc<Semaphore>);

impl Drop for OwnedPermit {
    fn drop(&mut self) {
        self.0.give();
    }
}

enum SlotState {
    Unloaded,
    Loaded {
        backend: Arc<dyn Backend>,
        /// The resident-model permit of an in-process model, given back when the model is
        /// dropped.
        _resident: Option<OwnedPermit>,
    },
    Failed(LoadError),
    Released,
}

/// How a slot builds its backend ([`load`] in a run; tests give others).
pub(crate) type Loader = fn(&ModelSpec, &Path) -> Result<Arc<dyn Backend>, LoadError>;

/// One model of the run: loaded on first use, dropped after its last user.
pub(crate) struct ModelSlot {
    loader: Loader,
    pub spec: ModelSpec,
    /// The run's output directory (managed servers write their logs under it).
    out: PathBuf,
    state: Mutex<SlotState>,
    users_left: AtomicUsize,
    created: Instant,
    last_sample_ms: std::sync::atomic::AtomicU64,
    resident: Arc<Semaphore>,
    stats: Mutex<LoadStats>,
    /// Set when the load figures changed since [`ModelSlot::take_changed_stats`] last ran.
    stats_changed: std::sync::atomic::AtomicBool,
    fingerprint: std::sync::OnceLock<fingerprint::Fingerprint>,
    /// Whether missing weights may be downloaded on first use (`VLMTEST_FETCH`).
    fetch: crate::config::Fetch,
}

impl ModelSlot {
    pub(crate) fn new(spec: ModelSpec, resident: Arc<Semaphore>, out: &Path) -> Self {
        Self::with_loader(spec, resident, out, load)
    }

    /// A slot whose backend `loader` builds.
    pub(crate) fn with_loader(
        spec: ModelSpec,
        resident: Arc<Semaphore>,
        out: &Path,
        loader: Loader,
    ) -> Self {
        Self {
            loader,
            spec,
            out: out.to_path_buf(),
            state: Mutex::new(SlotState::Unloaded),
            users_left: AtomicUsize::new(0),
            created: Instant::now(),
            last_sample_ms: std::sync::atomic::AtomicU64::new(0),
            resident,
            stats: Mutex::new(LoadStats::default()),
            stats_changed: std::sync::atomic::AtomicBool::new(false),
            fingerprint: std::sync::OnceLock::new(),
            fetch: crate::config::Fetch::Auto,
        }
    }

    /// Sets whether missing weights may be downloaded on first use (default: `auto`).
    pub(crate) fn with_fetch(mut self, fetch: crate::config::Fetch) -> Self {
        self.fetch = fetch;
        self
    }

    /// Declares how many trials of this run will use the model; it is dropped after the last.
    pub(crate) fn set_users(&self, n: usize) {
        self.users_left.store(n, Ordering::SeqCst);
    }

    /// The loaded backend, loading it on first use.
    pub(crate) fn get(&self) -> Result<Arc<dyn Backend>, LoadError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match &*state {
            SlotState::Loaded { backend, .. } => return Ok(backend.clone()),
            SlotState::Failed(e) => return Err(e.clone()),
            SlotState::Released => {
                // Used again after its last declared user (a gate recomputing a case): reload.
                *state = SlotState::Unloaded;
            }
            SlotState::Unloaded => {}
        }
        // A download is not load time, and needs no resident-model permit.
        let prepared = prepare(&self.spec, self.fetch);
        let resident = (prepared.is_ok() && self.spec.backend.kind().in_process())
            .then(|| self.resident.acquire_owned());
        let before = crate::machine::process_rss();
        let start = Instant::now();
        tracing::info!(model = %self.spec.name, "loading model");
        let shown = prepared.is_ok().then(|| loading_what(&self.spec)).flatten();
        if let Some(how) = &shown {
            crate::progress::loading(&self.spec.name, how);
        }
        let result = prepared.and_then(|()| load_guarded(self.loader, &self.spec, &self.out));
        if shown.is_some() {
            let error = result.as_ref().err().map(ToString::to_string);
            crate::progress::loaded(&self.spec.name, start.elapsed(), error.as_deref());
        }
        let load_s = start.elapsed().as_secs_f64();
        let after = crate::machine::process_rss();
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        self.stats_changed.store(true, Ordering::SeqCst);
        match result {
            Ok(backend) => {
                stats.load_s = Some(load_s);
                if resident.is_some() {
                    stats.memory_growth_bytes = match (before, after) {
                        (Some(b), Some(a)) => Some(a as i64 - b as i64),
                        _ => None,
                    };
                }
                stats.external_memory_bytes = backend.external_memory_bytes();
                stats.peak_memory_bytes = after;
                *state = SlotState::Loaded {
                    backend: backend.clone(),
                    _resident: resident,
                };
                Ok(backend)
            }
            Err(e) => {
                // `resident` is dropped here: the permit goes back.
                stats.load_error = Some(e.to_string());
                *state = SlotState::Failed(e.clone());
                Err(e)
            }
        }
    }

    /// The model's fingerprint, computed on first use (it may hash local weight files; it never
    /// loads them).
    pub(crate) fn fingerprint(&self) -> &fingerprint::Fingerprint {
        self.fingerprint.get_or_init(|| {
            self.stats_changed.store(true, Ordering::SeqCst);
            fingerprint::of(&self.spec)
        })
    }

    /// The fingerprint, if it was computed.
    pub(crate) fn fingerprint_if_known(&self) -> Option<&fingerprint::Fingerprint> {
        self.fingerprint.get()
    }

    /// The load figures, when they changed since the last call.
    pub(crate) fn take_changed_stats(&self) -> Option<LoadStats> {
        self.stats_changed
            .swap(false, Ordering::SeqCst)
            .then(|| self.stats())
    }

    /// Samples memory while the model is in use, at most every 200 ms.
    pub(crate) fn sample_memory(&self) {
        let now = self.created.elapsed().as_millis() as u64;
        let last = self.last_sample_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < 200 {
            return;
        }
        if self
            .last_sample_ms
            .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return; // another thread is sampling
        }
        let rss = crate::machine::process_rss();
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = rss {
            stats.peak_memory_bytes = Some(stats.peak_memory_bytes.unwrap_or(0).max(r));
        }
        if let SlotState::Loaded { backend, .. } = &*state
            && let Some(ext) = backend.external_memory_bytes()
        {
            stats.external_memory_bytes = Some(stats.external_memory_bytes.unwrap_or(0).max(ext));
        }
    }

    /// One user is done; the last one drops the model.
    pub(crate) fn release_one(&self) {
        let prev = self
            .users_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                Some(n.saturating_sub(1))
            })
            .unwrap_or(0);
        if prev <= 1 {
            self.unload();
        }
    }

    /// Drops the model now (end of its trials, or end of the run).
    pub(crate) fn unload(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let SlotState::Loaded { backend, .. } = &*state {
            // A managed server's peak, read before it is stopped: a run shorter than the
            // sampling interval would otherwise report its memory right after loading.
            if let Some(ext) = backend.external_memory_bytes() {
                let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
                stats.external_memory_bytes =
                    Some(stats.external_memory_bytes.unwrap_or(0).max(ext));
            }
            tracing::info!(model = %self.spec.name, "dropping model");
            // Dropping the state drops the backend (a managed server is stopped) and gives the
            // resident-model permit back.
            *state = SlotState::Released;
            self.stats_changed.store(true, Ordering::SeqCst);
        }
    }

    pub(crate) fn stats(&self) -> LoadStats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A user of a model slot for the length of a trial; released on drop, even on panic.
pub(crate) struct SlotUse<'a>(pub &'a ModelSlot);

impl Drop for SlotUse<'_> {
    fn drop(&mut self) {
        self.0.release_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CandleSpec, ModelSource};
    use crate::kinds::{Arch, DType, DeviceKind};

    fn candle_spec(name: &str) -> ModelSpec {
        ModelSpec {
            name: name.into(),
            line: 1,
            enabled: true,
            backend: BackendSpec::Candle(CandleSpec {
                arch: Arch::Smolvlm,
                source: ModelSource::Path("unused".into()),
                tokenizer: None,
                dtype: DType::F32,
                device: DeviceKind::Cpu,
            }),
            params: GenParams {
                max_new_tokens: 1,
                temperature: 0.0,
                seed: None,
                system_prompt: None,
            },
            text_only: true,
            latency_scale: 1.0,
            repeat: 1,
        }
    }

    struct Echo;
    impl Backend for Echo {
        fn generate(&self, _: &Request) -> Result<Generation, BackendError> {
            Ok(Generation::default())
        }
    }

    fn panics(_: &ModelSpec, _: &Path) -> Result<Arc<dyn Backend>, LoadError> {
        panic!("attempt to divide by zero")
    }

    fn loads(_: &ModelSpec, _: &Path) -> Result<Arc<dyn Backend>, LoadError> {
        Ok(Arc::new(Echo))
    }

    /// A loader that panics holds the only resident-model permit while it runs; the panic is
    /// that model's load error, the permit goes back, and the next model loads (instead of
    /// waiting forever).
    #[test]
    fn a_loader_panic_is_a_load_error_and_frees_the_permit() {
        let resident = Arc::new(Semaphore::new(1));
        let out = std::env::temp_dir();
        let broken = ModelSlot::with_loader(candle_spec("broken"), resident.clone(), &out, panics);
        let good = Arc::new(ModelSlot::with_loader(
            candle_spec("good"),
            resident,
            &out,
            loads,
        ));
        match broken.get() {
            Err(e @ LoadError::Panicked { .. }) => {
                let m = e.to_string();
                assert!(
                    m.contains("panicked") && m.contains("divide by zero") && !e.unavailable(),
                    "{m}"
                )
            }
            Err(e) => panic!("wrong error: {e:?}"),
            Ok(_) => panic!("the broken model loaded"),
        }
        assert!(broken.stats().load_error.is_some());
        let (tx, rx) = std::sync::mpsc::channel();
        let g = good.clone();
        std::thread::spawn(move || {
            let _ = tx.send(g.get().is_ok());
        });
        assert_eq!(
            rx.recv_timeout(std::time::Duration::from_secs(10)),
            Ok(true),
            "the good model must load after the broken one"
        );
    }
}
