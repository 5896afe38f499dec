//! The `vlm` test target: every suite × every enabled model, as libtest trials.
use std::process::ExitCode;

fn main() -> ExitCode {
    vlmtest::harness::main()
}
