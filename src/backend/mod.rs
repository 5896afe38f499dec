//! The backend seam: one trait, `generate(request) -> Generation`, and one module per engine.
//!
//! A model is loaded lazily by its [`ModelSlot`] when its first trial runs, shared by the trials
//! that need it, and dropped after its last trial of the run. Load time and memory growth are
//! measured around the load.

pub mod candle;
pub mod image_formats;
pub mod llama_server;
pub mod openai;

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
}

/// A failed generation, with a message for the user.
#[derive(Debug, Clone)]
pub struct BackendError(pub String);

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An inference engine serving one model.
pub trait Backend: Send + Sync {
    fn generate(&self, request: &Request) -> Result<Generation, BackendError>;

    /// Peak resident memory of the model when it lives outside this process (a managed server);
    /// `None` for in-process models (measured as this process's growth) and remote servers.
    fn external_memory_bytes(&self) -> Option<u64> {
        None
    }
}

/// Why a model could not be used.
#[derive(Debug, Clone)]
pub enum LoadError {
    /// The model's files are not available offline: its trials are ignored with this reason
    /// (or fail under `VLMTEST_REQUIRE_MODELS=1`).
    Unavailable(String),
    Failed(String),
}

/// Builds the backend for a model. This is where weights are read or servers started.
fn load(spec: &ModelSpec, out: &Path) -> Result<Arc<dyn Backend>, LoadError> {
    match &spec.backend {
        BackendSpec::LlamaServer(l) => llama_server::LlamaServer::start(&spec.name, l, out)
            .map(|b| Arc::new(b) as Arc<dyn Backend>),
        BackendSpec::Candle(c) => {
            candle::Candle::load(&spec.name, c).map(|b| Arc::new(b) as Arc<dyn Backend>)
        }
        BackendSpec::OpenAi(o) => {
            let b = openai::OpenAi::new(o).map_err(LoadError::Failed)?;
            b.probe().map_err(LoadError::Unavailable)?;
            Ok(Arc::new(b))
        }
    }
}

/// Whether a backend keeps the model in this process's memory (and so counts against
/// `VLMTEST_MAX_RESIDENT`).
fn in_process(spec: &ModelSpec) -> bool {
    match spec.backend {
        BackendSpec::Candle(_) => true,
        BackendSpec::OpenAi(_) | BackendSpec::LlamaServer(_) => false,
    }
}

/// Measurements taken around a model's load and use.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LoadStats {
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
pub struct Semaphore {
    free: Mutex<usize>,
    cv: Condvar,
}

impl Semaphore {
    pub fn new(n: usize) -> Self {
        Self {
            free: Mutex::new(n.max(1)),
            cv: Condvar::new(),
        }
    }

    /// Waits for a permit; it is returned when the guard is dropped.
    pub fn acquire(&self) -> Permit<'_> {
        self.take();
        Permit(self)
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
pub struct Permit<'a>(&'a Semaphore);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.give();
    }
}

enum SlotState {
    Unloaded,
    Loaded {
        backend: Arc<dyn Backend>,
        holds_resident: bool,
    },
    Failed(LoadError),
    Released,
}

/// One model of the run: loaded on first use, dropped after its last user.
pub struct ModelSlot {
    pub spec: ModelSpec,
    /// The run's output directory (managed servers write their logs under it).
    out: PathBuf,
    state: Mutex<SlotState>,
    users_left: AtomicUsize,
    created: Instant,
    last_sample_ms: std::sync::atomic::AtomicU64,
    resident: Arc<Semaphore>,
    stats: Mutex<LoadStats>,
}

impl ModelSlot {
    pub fn new(spec: ModelSpec, resident: Arc<Semaphore>, out: &Path) -> Self {
        Self {
            spec,
            out: out.to_path_buf(),
            state: Mutex::new(SlotState::Unloaded),
            users_left: AtomicUsize::new(0),
            created: Instant::now(),
            last_sample_ms: std::sync::atomic::AtomicU64::new(0),
            resident,
            stats: Mutex::new(LoadStats::default()),
        }
    }

    /// Declares how many trials of this run will use the model; it is dropped after the last.
    pub fn set_users(&self, n: usize) {
        self.users_left.store(n, Ordering::SeqCst);
    }

    /// The loaded backend, loading it on first use.
    pub fn get(&self) -> Result<Arc<dyn Backend>, LoadError> {
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
        let holds_resident = in_process(&self.spec);
        if holds_resident {
            self.resident.take();
        }
        let before = crate::report::machine::process_rss();
        let start = Instant::now();
        tracing::info!(model = %self.spec.name, "loading model");
        let result = load(&self.spec, &self.out);
        let load_s = start.elapsed().as_secs_f64();
        let after = crate::report::machine::process_rss();
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(backend) => {
                stats.load_s = Some(load_s);
                if holds_resident {
                    stats.memory_growth_bytes = match (before, after) {
                        (Some(b), Some(a)) => Some(a as i64 - b as i64),
                        _ => None,
                    };
                }
                stats.external_memory_bytes = backend.external_memory_bytes();
                stats.peak_memory_bytes = after;
                *state = SlotState::Loaded {
                    backend: backend.clone(),
                    holds_resident,
                };
                Ok(backend)
            }
            Err(e) => {
                if holds_resident {
                    self.resident.give();
                }
                stats.load_error = Some(match &e {
                    LoadError::Unavailable(m) | LoadError::Failed(m) => m.clone(),
                });
                *state = SlotState::Failed(e.clone());
                Err(e)
            }
        }
    }

    /// Samples memory while the model is in use, at most every 200 ms.
    pub fn sample_memory(&self) {
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
        let rss = crate::report::machine::process_rss();
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
    pub fn release_one(&self) {
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
    pub fn unload(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let SlotState::Loaded {
            holds_resident,
            backend,
        } = &*state
        {
            // A managed server's peak, read before it is stopped: a run shorter than the
            // sampling interval would otherwise report its memory right after loading.
            if let Some(ext) = backend.external_memory_bytes() {
                let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
                stats.external_memory_bytes =
                    Some(stats.external_memory_bytes.unwrap_or(0).max(ext));
            }
            let holds = *holds_resident;
            tracing::info!(model = %self.spec.name, "dropping model");
            *state = SlotState::Released;
            if holds {
                self.resident.give();
            }
        }
    }

    pub fn stats(&self) -> LoadStats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A user of a model slot for the length of a trial; released on drop, even on panic.
pub struct SlotUse<'a>(pub &'a ModelSlot);

impl Drop for SlotUse<'_> {
    fn drop(&mut self) {
        self.0.release_one();
    }
}
