//! `backend = "llama-server"`: vlmtest starts llama.cpp's server for a GGUF model, waits for
//! `/health`, talks to it through the OpenAI-compatible backend, restarts it once if it dies, and
//! stops it when the model's last trial ends, when the run ends, on a panic, and on Ctrl-C or
//! SIGTERM. The server runs in a process group of its own (and, on Linux, dies with vlmtest
//! even if vlmtest is killed), so stopping it never leaves a child behind.
//!
//! What vlmtest changes in the requests it sends llama-server (see [`LlamaServerSpec::fingerprint`]):
//! - images in formats llama-server cannot decode without ffmpeg (WebP) are sent as PNG of the
//!   same pixels ([`super::image_formats`]);
//! - `cache_prompt` is always sent: `false` for temperature-0 models unless models.toml says
//!   `cache_prompt = true`, because reusing the KV cache of an earlier request can change a
//!   greedy answer (llama.cpp's server README says so), and snapshots need the answer a fresh
//!   request gets.
//!
//! Its memory in the report is the server's peak resident memory (VmHWM on Linux), read after
//! every answer and once more just before the server is stopped, so that a run shorter than the
//! sampling interval still reports the peak rather than the memory right after loading.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use super::image_formats::{self, ImageFormats};
use super::openai::OpenAi;
use super::{Backend, BackendError, Generation, LoadError, Request};
use crate::config::{GgufSource, LlamaServerSpec, OpenAiSpec};

/// Process groups of the servers this process started, for the signal handler.
static GROUPS: Mutex<Vec<i32>> = Mutex::new(Vec::new());
static HANDLER: Once = Once::new();

/// On Ctrl-C or SIGTERM: stop every server this process started.
fn install_signal_handler() {
    HANDLER.call_once(|| {
        crate::interrupt::on_interrupt(crate::interrupt::STOP_SERVERS, || {
            let groups: Vec<i32> = GROUPS.lock().map(|g| g.clone()).unwrap_or_default();
            // A server that has exited stays a zombie, and its group alive, until it is reaped:
            // reap the group leaders (the servers) as they go, so the wait ends when they do.
            terminate(&groups, Duration::from_secs(3), |g| {
                reap(g);
                !group_alive(g)
            });
            eprintln!(
                "vlmtest: interrupted; stopped {} llama-server process(es)",
                groups.len()
            );
        });
    });
}

/// When a server still running after SIGTERM gets a second one.
const SECOND_SIGTERM_AFTER: Duration = Duration::from_millis(200);

/// Stops process groups: SIGTERM; a second SIGTERM after [`SECOND_SIGTERM_AFTER`] to those
/// still there; SIGKILL to what is left after `grace`. llama-server exits at once on SIGTERM when
/// idle, but with a request in flight it goes on generating it; a second SIGTERM (or SIGINT)
/// makes it exit at once ("Received second interrupt, terminating immediately"). `gone` says
/// whether a group has finished (and reaps it).
fn terminate(groups: &[i32], grace: Duration, mut gone: impl FnMut(i32) -> bool) {
    for g in groups {
        signal_group(*g, libc::SIGTERM);
    }
    let start = Instant::now();
    let mut second = false;
    loop {
        let left: Vec<i32> = groups.iter().copied().filter(|g| !gone(*g)).collect();
        if left.is_empty() {
            return;
        }
        let waited = start.elapsed();
        if waited >= grace {
            for g in left {
                signal_group(g, libc::SIGKILL);
            }
            return;
        }
        if !second && waited >= SECOND_SIGTERM_AFTER {
            second = true;
            for g in &left {
                signal_group(*g, libc::SIGTERM);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn signal_group(pgid: i32, sig: i32) {
    if pgid > 0 {
        // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved.
        unsafe {
            libc::kill(-pgid, sig);
        }
    }
}

/// Collects the exit status of our child `pid` if it has exited; never blocks.
fn reap(pid: i32) {
    if pid > 0 {
        // SAFETY: waitpid with WNOHANG on one of our children; the status is not kept.
        unsafe {
            libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG);
        }
    }
}

/// The peak resident memory of a running process: VmHWM from /proc/PID/status on Linux (gone
/// once the process has exited), else its resident memory now.
fn peak_memory(pid: u32) -> Option<u64> {
    #[cfg(target_os = "linux")]
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        return vm_hwm(&status);
    }
    crate::machine::pid_memory(sysinfo::Pid::from_u32(pid))
}

/// `VmHWM:   45280 kB` in a /proc/PID/status text, in bytes.
fn vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    let kb = line.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
    Some(kb * 1024)
}

fn group_alive(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks that the group exists.
    pgid > 0 && unsafe { libc::kill(-pgid, 0) } == 0
}

/// Spawns `cmd` from one long-lived thread. On Linux the child is told to die with its parent
/// *thread* (PR_SET_PDEATHSIG), so it must not be a test thread that ends before the run does.
fn spawn(cmd: Command) -> std::io::Result<Child> {
    type Job = (Command, std::sync::mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: Mutex<Option<std::sync::mpsc::Sender<Job>>> = Mutex::new(None);
    let (reply, answer) = std::sync::mpsc::channel();
    {
        let mut guard = SPAWNER.lock().unwrap_or_else(|e| e.into_inner());
        let tx = guard.get_or_insert_with(|| {
            let (tx, rx) = std::sync::mpsc::channel::<Job>();
            std::thread::Builder::new()
                .name("vlmtest-spawner".into())
                .spawn(move || {
                    for (mut cmd, reply) in rx {
                        let _ = reply.send(cmd.spawn());
                    }
                })
                .ok();
            tx
        });
        tx.send((cmd, reply))
            .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    }
    answer
        .recv()
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?
}

/// The last `n` lines of a log file.
pub(crate) fn log_tail(path: &Path, n: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)));
    let mut text = String::new();
    let mut bytes = Vec::new();
    if f.read_to_end(&mut bytes).is_ok() {
        text = String::from_utf8_lossy(&bytes).to_string();
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

struct Running {
    child: Child,
    client: Arc<OpenAi>,
}

/// A managed llama-server.
pub(crate) struct LlamaServer {
    name: String,
    spec: LlamaServerSpec,
    log: PathBuf,
    running: Mutex<Option<Running>>,
    restarts: Mutex<u32>,
    /// The highest peak resident memory read from its processes (a restarted server's first
    /// process included).
    peak_bytes: AtomicU64,
}

impl LlamaServerSpec {
    /// What vlmtest sets in every request to this server, beyond the standard OpenAI fields,
    /// for the model's fingerprint in reports: answers depend on it.
    pub fn fingerprint(&self) -> Vec<(&'static str, String)> {
        vec![
            ("cache_prompt", self.cache_prompt.to_string()),
            (
                "images",
                format!(
                    "{} as they are, others re-encoded as image/png",
                    image_formats::LLAMA_SERVER.join(", ")
                ),
            ),
        ]
    }
}

impl LlamaServer {
    /// Starts the server and waits until it is ready.
    pub(crate) fn start(name: &str, spec: &LlamaServerSpec, out: &Path) -> Result<Self, LoadError> {
        if let GgufSource::Files { model, mmproj } = &spec.source {
            for (key, p) in
                std::iter::once(("model", model)).chain(mmproj.iter().map(|m| ("mmproj", m)))
            {
                if !p.is_file() {
                    return Err(LoadError::MissingFile {
                        key,
                        path: p.clone(),
                    });
                }
            }
        }
        let logs = out.join("logs");
        std::fs::create_dir_all(&logs).map_err(|e| io_error("create", &logs, e))?;
        let server = LlamaServer {
            name: name.to_string(),
            spec: spec.clone(),
            log: logs.join(format!("{name}.log")),
            running: Mutex::new(None),
            restarts: Mutex::new(0),
            peak_bytes: AtomicU64::new(0),
        };
        install_signal_handler();
        if server.spec.cache_prompt {
            tracing::info!(model = %name, "cache_prompt is on: llama-server may reuse the KV cache of an earlier request, which can change answers");
        }
        let running = server.launch(true)?;
        *server.running.lock().unwrap_or_else(|e| e.into_inner()) = Some(running);
        Ok(server)
    }

    fn port(&self) -> Result<u16, LoadError> {
        match self.spec.port {
            Some(p) => match TcpListener::bind(("127.0.0.1", p)) {
                Ok(_) => Ok(p),
                Err(e) => Err(LoadError::PortInUse {
                    port: p,
                    source: Arc::new(e),
                }),
            },
            None => TcpListener::bind(("127.0.0.1", 0))
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .map_err(|e| LoadError::NoFreePort(Arc::new(e))),
        }
    }

    /// The command line, for messages.
    fn command_line(&self, port: u16) -> Vec<String> {
        let mut argv = vec![
            self.spec.binary.clone(),
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
        ];
        match &self.spec.source {
            GgufSource::Files { model, mmproj } => {
                argv.extend(["-m".into(), model.display().to_string()]);
                if let Some(m) = mmproj {
                    argv.extend(["--mmproj".into(), m.display().to_string()]);
                }
            }
            GgufSource::Hf(repo) => argv.extend(["-hf".into(), repo.clone()]),
        }
        argv.extend(self.spec.args.iter().cloned());
        argv
    }

    /// Spawns the server and waits for `/health` to say it is ready. The log starts afresh on
    /// the first launch; a restart appends to it, after the crashed server's last words.
    fn launch(&self, first: bool) -> Result<Running, LoadError> {
        let port = self.port()?;
        let argv = self.command_line(port);
        let shown = argv.join(" ");
        let log = if first {
            File::create(&self.log)
        } else {
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&self.log)
        }
        .map_err(|e| io_error("create", &self.log, e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| io_error("open", &self.log, e))?;
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
            #[cfg(target_os = "linux")]
            // SAFETY: prctl is async-signal-safe; it only asks the kernel to send SIGTERM to the
            // child if this process dies, so a killed vlmtest leaves no server behind.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
        }
        let mut child = match spawn(cmd) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LoadError::ServerMissing {
                    binary: self.spec.binary.clone(),
                });
            }
            Err(e) => {
                return Err(LoadError::ServerSpawn {
                    command: shown,
                    source: Arc::new(e),
                });
            }
        };
        let pgid = child.id() as i32;
        if let Ok(mut g) = GROUPS.lock() {
            g.push(pgid);
        }
        tracing::info!(model = %self.name, port, "started llama-server: {shown}");
        match self.wait_ready(&mut child, port) {
            Ok(()) => {}
            Err(why) => {
                self.stop(&mut child);
                return Err(LoadError::ServerNotReady {
                    model: self.name.clone(),
                    why,
                    command: shown,
                    log: self.log.display().to_string(),
                    log_tail: log_tail(&self.log, 20),
                });
            }
        }
        let mut client = OpenAi::new(&OpenAiSpec {
            base_url: format!("http://127.0.0.1:{port}/v1"),
            model: self.name.clone(),
            api_key_env: None,
            timeout: self.spec.timeout,
            concurrency: self.spec.concurrency,
            stream: self.spec.stream,
        })?;
        client.images = ImageFormats::only(image_formats::LLAMA_SERVER);
        client
            .extra_body
            .insert("cache_prompt".into(), self.spec.cache_prompt.into());
        let pid = child.id() as i32;
        client.alive = Some(Box::new(move || {
            // SAFETY: signal 0 checks that the process exists.
            unsafe { libc::kill(pid, 0) == 0 }
        }));
        Ok(Running {
            child,
            client: Arc::new(client),
        })
    }

    fn wait_ready(&self, child: &mut Child, port: u16) -> Result<(), String> {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let url = format!("http://127.0.0.1:{port}/health");
        let deadline = Instant::now() + self.spec.startup_timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("exited during start-up ({status})"));
            }
            // 503 while the model loads, 200 once it is ready.
            if let Ok(r) = http.get(&url).send()
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "was not ready after {:.0} s (startup_timeout_s)",
                    self.spec.startup_timeout.as_secs_f64()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn client(&self) -> Result<Arc<OpenAi>, BackendError> {
        let guard = self.running.lock().unwrap_or_else(|e| e.into_inner());
        guard
            .as_ref()
            .map(|r| r.client.clone())
            .ok_or_else(|| BackendError::NotRunning {
                model: self.name.clone(),
            })
    }

    /// Whether the server process has exited (crashed).
    fn exited(&self) -> Option<String> {
        let mut guard = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let r = guard.as_mut()?;
        match r.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    /// After a crash: starts the server again, once per run.
    fn restart(&self, status: &str) -> Result<(), BackendError> {
        let mut restarts = self.restarts.lock().unwrap_or_else(|e| e.into_inner());
        let mut guard = self.running.lock().unwrap_or_else(|e| e.into_inner());
        // Another trial may have restarted it already.
        if let Some(r) = guard.as_mut()
            && matches!(r.child.try_wait(), Ok(None))
        {
            return Ok(());
        }
        if *restarts >= 1 {
            return Err(BackendError::Crashed {
                model: self.name.clone(),
                status: status.to_string(),
                log: self.log.display().to_string(),
                log_tail: log_tail(&self.log, 20),
            });
        }
        *restarts += 1;
        tracing::warn!(model = %self.name, "llama-server exited ({status}); restarting it");
        if let Some(mut old) = guard.take() {
            self.stop(&mut old.child);
        }
        let running = self
            .launch(false)
            .map_err(|e| BackendError::Restart(Box::new(e)))?;
        *guard = Some(running);
        Ok(())
    }

    /// Records the process's peak memory (while it still exists), then stops it.
    fn stop(&self, child: &mut Child) {
        if let Some(peak) = peak_memory(child.id()) {
            self.peak_bytes.fetch_max(peak, Ordering::Relaxed);
        }
        stop_child(child);
    }
}

/// Stops the server's group ([`terminate`]), with SIGKILL if it has not gone within 5 s.
fn stop_child(child: &mut Child) {
    let pgid = child.id() as i32;
    terminate(&[pgid], Duration::from_secs(5), |g| {
        matches!(child.try_wait(), Ok(Some(_))) && !group_alive(g)
    });
    signal_group(pgid, libc::SIGKILL);
    let _ = child.kill();
    let _ = child.wait();
    if let Ok(mut g) = GROUPS.lock() {
        g.retain(|x| *x != pgid);
    }
}

impl Backend for LlamaServer {
    fn generate(&self, req: &Request) -> Result<Generation, BackendError> {
        let first = self.client()?.generate(req);
        match first {
            Ok(g) => Ok(g),
            Err(e) => match self.exited() {
                // The server crashed: start it again once, and ask again.
                Some(status) => {
                    self.restart(&status)?;
                    let mut g =
                        self.client()?
                            .generate(req)
                            .map_err(|e2| BackendError::AfterRestart {
                                source: Box::new(e2),
                                status: status.clone(),
                                log: self.log.display().to_string(),
                                log_tail: log_tail(&self.log, 20),
                            })?;
                    g.retries += 1;
                    Ok(g)
                }
                None => Err(e),
            },
        }
    }

    /// The server's peak resident memory so far (its processes' VmHWM on Linux).
    fn external_memory_bytes(&self) -> Option<u64> {
        let now = {
            let guard = self.running.lock().unwrap_or_else(|e| e.into_inner());
            guard.as_ref().and_then(|r| peak_memory(r.child.id()))
        };
        if let Some(now) = now {
            self.peak_bytes.fetch_max(now, Ordering::Relaxed);
        }
        Some(self.peak_bytes.load(Ordering::Relaxed)).filter(|b| *b > 0)
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let mut guard = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut r) = guard.take() {
            tracing::info!(model = %self.name, "stopping llama-server");
            self.stop(&mut r.child);
        }
    }
}

fn io_error(action: &'static str, path: &Path, source: std::io::Error) -> LoadError {
    LoadError::Io {
        action,
        path: path.to_path_buf(),
        source: Arc::new(source),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_hwm_is_read_in_bytes() {
        let status =
            "Name:\tllama-server\nVmPeak:\t  912340 kB\nVmHWM:\t   45280 kB\nVmRSS:\t   32768 kB\n";
        assert_eq!(vm_hwm(status), Some(45280 * 1024));
        assert_eq!(vm_hwm("Name:\tx\nVmRSS:\t 1 kB\n"), None);
    }
}
