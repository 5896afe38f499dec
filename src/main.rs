use std::process::ExitCode;

fn main() -> ExitCode {
    vlmtest::cli::main()
}
