//! Synchronising tests on events instead of wall-clock margins: a [`Latch`] the scripted
//! server's handler waits on (released by the test, or by enough requests arriving), [`lines`]
//! to follow a child process's output as it is written, and [`run_or_kill`] / [`wait_or_kill`]
//! for a run that must end, with a limit that only guards against a hang.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Opens once `needed` arrivals have been counted, and stays open.
pub struct Latch {
    arrived: Mutex<usize>,
    cv: Condvar,
    needed: usize,
}

impl Latch {
    pub fn new(needed: usize) -> Latch {
        Latch {
            arrived: Mutex::new(0),
            cv: Condvar::new(),
            needed,
        }
    }

    /// Counts one arrival (a request, or the test releasing what waits).
    pub fn arrive(&self) {
        *self.arrived.lock().unwrap() += 1;
        self.cv.notify_all();
    }

    /// Waits until the latch is open; `false` if `limit` passed first. The limit is a hang guard,
    /// never the thing measured: it only runs out when the awaited event never comes.
    pub fn wait(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut n = self.arrived.lock().unwrap();
        while *n < self.needed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            n = self.cv.wait_timeout(n, left).unwrap().0;
        }
        true
    }

    pub fn is_open(&self) -> bool {
        *self.arrived.lock().unwrap() >= self.needed
    }
}

/// The lines of `stream` (a child's stdout or stderr), sent as they are read.
pub fn lines(stream: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Runs `cmd` to its end, capturing its output; kills it and fails the test if it has not ended
/// after `limit` (a hang guard: the run is expected to end, not to end fast).
pub fn run_or_kill(mut cmd: Command, limit: Duration) -> super::Run {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let out = ended_within(child.id(), limit, move || child.wait_with_output().unwrap());
    super::Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

/// Waits for `child` to exit; kills it and fails the test if it has not after `limit` (a hang
/// guard).
pub fn wait_or_kill(mut child: Child, limit: Duration) -> ExitStatus {
    ended_within(child.id(), limit, move || child.wait().unwrap())
}

fn ended_within<T: Send + 'static>(
    pid: u32,
    limit: Duration,
    wait: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(wait());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out,
        Err(_) => {
            // SAFETY: the child has not been waited for, so `pid` is still ours.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
            panic!("the run hung (no exit within {limit:?})");
        }
    }
}
