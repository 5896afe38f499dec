//! Facts about the machine and this process, shared by the backends (memory) and the reports
//! (the machine section): the CPU, memory readings, and the process-wide allocator setting.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Machine {
    pub cpu: String,
    pub physical_cores: Option<usize>,
    pub logical_cores: usize,
    pub memory_bytes: u64,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub vlmtest_version: String,
    /// The widest SIMD level this CPU has that vlmtest's kernels can use (x86: `avx512`,
    /// `avx2`, `sse4.1`...), so that figures from different machines are not mixed.
    #[serde(default)]
    pub simd: String,
    /// The process-wide allocator setting of the run (see [`Allocator`]).
    #[serde(default)]
    pub allocator: String,
}

impl Machine {
    pub(crate) fn detect() -> Machine {
        let mut m = Machine {
            arch: std::env::consts::ARCH.to_string(),
            vlmtest_version: env!("CARGO_PKG_VERSION").to_string(),
            logical_cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            os: sysinfo::System::long_os_version().unwrap_or_else(|_| std::env::consts::OS.into()),
            kernel: sysinfo::System::kernel_version().unwrap_or_default(),
            physical_cores: sysinfo::System::physical_core_count().ok(),
            simd: simd_level().to_string(),
            allocator: allocator().describe(),
            ..Machine::default()
        };
        let kind = sysinfo::RefreshKind::nothing()
            .with_memory(sysinfo::MemoryRefreshKind::nothing().with_ram())
            .with_cpu(sysinfo::CpuRefreshKind::nothing());
        if let Ok(sys) = sysinfo::System::new_with_specifics(kind) {
            m.memory_bytes = sys.total_memory();
            if let Some(cpu) = sys.cpus().first() {
                m.cpu = cpu.brand().trim().to_string();
            }
        }
        m
    }
}

/// A field of /proc/self/status in bytes (Linux).
fn proc_status_kb(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line[field.len()..]
        .trim()
        .trim_start_matches(':')
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// This process's resident memory in bytes.
pub fn process_rss() -> Option<u64> {
    if let Some(v) = proc_status_kb("VmRSS") {
        return Some(v);
    }
    pid_memory(sysinfo::get_current_pid().ok()?)
}

/// The highest resident memory this process has had (Linux: VmHWM), else the current one.
pub fn process_peak_rss() -> Option<u64> {
    proc_status_kb("VmHWM").or_else(process_rss)
}

/// Resident memory of another process (a managed server), in bytes.
pub(crate) fn pid_memory(pid: sysinfo::Pid) -> Option<u64> {
    let mut sys = sysinfo::System::new().ok()?;
    sys.refresh_processes_specifics(
        sysinfo::ProcessesToUpdate::Some(&[pid]),
        false,
        sysinfo::ProcessRefreshKind::nothing().with_memory(),
    );
    sys.process(pid).map(|p| p.memory())
}

/// The widest SIMD instruction set of this CPU that matters for the matrix kernels.
pub fn simd_level() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "avx512";
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return "avx2";
        }
        if std::arch::is_x86_feature_detected!("sse4.1") {
            return "sse4.1";
        }
        "sse2"
    }
    #[cfg(target_arch = "aarch64")]
    {
        "neon"
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        "none"
    }
}

/// glibc's allocator thresholds, a process-wide setting chosen once per run
/// (`VLMTEST_MALLOC=tuned|default`; by default `tuned` when the run has an in-process model).
///
/// Tensor code allocates and frees buffers of tens of MB for every operation (attention
/// scores, MLP activations). glibc serves those with mmap and returns them with munmap, so every
/// operation pays for fresh zeroed pages (page faults were ~15% of a SmolVLM answer's CPU time).
/// `tuned` raises the mmap threshold to 512 MiB and the trim threshold to 1 GiB so that freed
/// buffers are reused. The process's peak memory is unchanged (it is set by the largest live
/// set), but its resident memory after a model is dropped can stay high until the process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocator {
    /// glibc's defaults.
    Default,
    /// Large freed buffers are kept for reuse.
    Tuned,
}

static ALLOCATOR: OnceLock<Allocator> = OnceLock::new();

/// The allocator setting this process runs with ([`Allocator::Default`] until one is chosen).
pub fn allocator() -> Allocator {
    ALLOCATOR.get().copied().unwrap_or(Allocator::Default)
}

impl Allocator {
    /// Reads `VLMTEST_MALLOC`: `tuned`, `default`, or unset (then `when_unset`).
    pub(crate) fn from_env(
        value: Option<&str>,
        when_unset: Allocator,
    ) -> Result<Allocator, crate::kinds::EnvError> {
        match value.map(str::trim) {
            None | Some("") => Ok(when_unset),
            Some("tuned") => Ok(Allocator::Tuned),
            Some("default") => Ok(Allocator::Default),
            Some(other) => Err(crate::kinds::EnvError::new(
                "VLMTEST_MALLOC",
                other,
                &["tuned", "default"],
            )),
        }
    }

    /// Applies the setting to this process, once; later calls keep the first choice. Returns
    /// the setting in force.
    pub fn apply(self) -> Allocator {
        *ALLOCATOR.get_or_init(|| {
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            if self == Allocator::Tuned {
                // SAFETY: mallopt only changes allocator parameters.
                unsafe {
                    libc::mallopt(libc::M_MMAP_THRESHOLD, 512 << 20);
                    libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
                }
            }
            self
        })
    }

    /// What report.json's machine section says.
    pub fn describe(self) -> String {
        match self {
            Allocator::Default => "default".into(),
            Allocator::Tuned if cfg!(all(target_os = "linux", target_env = "gnu")) => {
                "tuned (glibc M_MMAP_THRESHOLD 512 MiB, M_TRIM_THRESHOLD 1 GiB)".into()
            }
            Allocator::Tuned => "tuned (no effect: not glibc)".into(),
        }
    }
}
