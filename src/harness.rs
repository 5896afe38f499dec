//! The `cargo test --test vlm` entry point: maps the plan to libtest-mimic trials and nothing
//! else. Building the trial list loads no model and touches no network.

use std::process::ExitCode;
use std::sync::Arc;

use libtest_mimic::{Arguments, Completion, Failed, Trial};

use crate::config::{self, Env};
use crate::plan::{Plan, TrialKind};
use crate::run::{Run, TrialOutcome};

/// Exit status for configuration errors.
const CONFIG_ERROR: u8 = 2;

/// Runs the harness with the process's arguments and environment. Call it from a
/// `harness = false` test target: `fn main() -> ExitCode { vlmtest::harness::main() }`.
pub fn main() -> ExitCode {
    run_with_args(Arguments::from_args())
}

/// Runs the harness with explicit libtest arguments (used by `vlmtest run`).
pub(crate) fn run_with_args(args: Arguments) -> ExitCode {
    init_logging();
    let env = match Env::from_process() {
        Ok(env) => env,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(CONFIG_ERROR);
        }
    };
    let config = match config::load(&env) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            let n = errors.0.len();
            eprintln!(
                "vlmtest: {n} configuration error{} — no test was run",
                if n == 1 { "" } else { "s" }
            );
            return ExitCode::from(CONFIG_ERROR);
        }
    };
    let plan = Plan::build(config);
    if !args.list {
        // A process-wide choice, made once, before any model loads (see machine::Allocator).
        let in_process = (0..plan.models.len()).any(|i| plan.model(i).backend.kind().in_process());
        let default = if in_process {
            crate::machine::Allocator::Tuned
        } else {
            crate::machine::Allocator::Default
        };
        env.malloc.unwrap_or(default).apply();
    }
    run_plan(plan, env, &args)
}

/// Logs go to stderr when `RUST_LOG` asks for them.
fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// Whether the plan already knows a trial will be ignored (text-only case on a model that needs
/// an image; a gate whose cases are all such).
fn planned_ignore(plan: &Plan, kind: TrialKind) -> bool {
    match kind {
        TrialKind::Case(i) => plan.cases[i].skip.is_some(),
        TrialKind::Gate(g) | TrialKind::Regression(g) => plan.gates[g]
            .cases
            .iter()
            .all(|&i| plan.cases[i].skip.is_some()),
    }
}

/// Runs a plan as libtest trials; writes the reports when anything ran.
pub(crate) fn run_plan(plan: Plan, env: Env, args: &Arguments) -> ExitCode {
    // Terse dots are printed on an unfinished line and JSON is read by tools: a progress bar
    // redrawn on the terminal could wipe the former, so both get plain lines on stderr.
    crate::progress::set_plain(
        args.quiet || matches!(args.format, Some(f) if f != libtest_mimic::FormatSetting::Pretty),
    );
    let run = Arc::new(Run::new(plan, env));
    // Trials the plan knows are ignored carry libtest's ignored flag where libtest looks at it
    // (`--list`, `--ignored`: nextest learns them that way); otherwise they run and report
    // themselves ignored with the reason, which libtest then prints.
    let flag_ignored = args.list || args.ignored;
    let trials: Vec<Trial> = run
        .plan
        .trials
        .iter()
        .map(|t| {
            let r = run.clone();
            let kind = t.kind;
            Trial::ignorable_test(t.name.clone(), move || match r.trial(kind) {
                TrialOutcome::Passed => Ok(Completion::Completed),
                TrialOutcome::PassedWith(note) => {
                    // libtest has no message for a pass: the note goes to the trial's stderr
                    // (nextest keeps it with the test's output).
                    eprintln!("vlmtest: {note}");
                    Ok(Completion::Completed)
                }
                TrialOutcome::Ignored(why) => Ok(Completion::ignored_with(why)),
                TrialOutcome::Failed(msg) => Err(Failed::from(msg)),
            })
            .with_ignored_flag(flag_ignored && planned_ignore(&run.plan, kind))
        })
        .collect();
    if !args.list {
        // Interrupted: what finished is written as an incomplete report.
        let weak = Arc::downgrade(&run);
        crate::interrupt::on_interrupt(crate::interrupt::WRITE_REPORT, move || {
            if let Some(run) = weak.upgrade() {
                match run.finish_interrupted() {
                    Ok(()) => eprintln!(
                        "vlmtest: interrupted; the cases that finished are in {}",
                        run.recorder.out().display()
                    ),
                    Err(e) => eprintln!("vlmtest: interrupted; results could not be written: {e}"),
                }
            }
        });
        let selected: Vec<TrialKind> = trials
            .iter()
            .zip(&run.plan.trials)
            .filter(|(t, _)| !args.is_filtered_out(t) && !args.is_ignored(t))
            .map(|(_, p)| p.kind)
            .collect();
        run.set_selected(&selected);
    }
    let conclusion = libtest_mimic::run(args, trials);
    if !args.list
        && let Err(e) = run.finish()
    {
        eprintln!("error: results could not be written: {e}");
        return ExitCode::FAILURE;
    }
    conclusion.exit_code()
}
