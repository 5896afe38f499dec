//! The machine a run happened on, and this process's memory.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub physical_cores: Option<usize>,
    pub logical_cores: usize,
    pub memory_bytes: u64,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub vlmtest_version: String,
}

impl Machine {
    pub fn detect() -> Machine {
        let mut m = Machine {
            arch: std::env::consts::ARCH.to_string(),
            vlmtest_version: env!("CARGO_PKG_VERSION").to_string(),
            logical_cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            os: sysinfo::System::long_os_version().unwrap_or_else(|_| std::env::consts::OS.into()),
            kernel: sysinfo::System::kernel_version().unwrap_or_default(),
            physical_cores: sysinfo::System::physical_core_count().ok(),
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
pub fn pid_memory(pid: sysinfo::Pid) -> Option<u64> {
    let mut sys = sysinfo::System::new().ok()?;
    sys.refresh_processes_specifics(
        sysinfo::ProcessesToUpdate::Some(&[pid]),
        false,
        sysinfo::ProcessRefreshKind::nothing().with_memory(),
    );
    sys.process(pid).map(|p| p.memory())
}
