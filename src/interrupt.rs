//! Ctrl-C and SIGTERM: what must happen before the process goes. Managed servers are stopped
//! and the report of what finished is written; then the process exits with status 130.

use std::sync::{Mutex, Once};

type Hook = Box<dyn Fn() + Send>;

/// Run in order of registration when the process is interrupted.
static HOOKS: Mutex<Vec<(u8, Hook)>> = Mutex::new(Vec::new());
static INSTALL: Once = Once::new();

/// Hooks run by priority (lower first): servers are stopped before the report is written.
pub(crate) const STOP_SERVERS: u8 = 0;
pub(crate) const WRITE_REPORT: u8 = 1;

/// Registers `hook` and makes sure the handler is installed.
pub(crate) fn on_interrupt(priority: u8, hook: impl Fn() + Send + 'static) {
    install();
    let mut hooks = HOOKS.lock().unwrap_or_else(|e| e.into_inner());
    hooks.push((priority, Box::new(hook)));
    hooks.sort_by_key(|(p, _)| *p);
}

fn install() {
    INSTALL.call_once(|| {
        let result = ctrlc::set_handler(|| {
            let hooks = HOOKS.lock().unwrap_or_else(|e| e.into_inner());
            for (_, hook) in hooks.iter() {
                hook();
            }
            std::process::exit(130);
        });
        if let Err(e) = result {
            tracing::warn!("cannot install the Ctrl-C handler: {e}");
        }
    });
}
