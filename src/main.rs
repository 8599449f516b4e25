//! The `sluice` command: parses arguments and hands over to [`sluice::cli`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = sluice::cli::Args::parse();
    sluice::cli::init_tracing();
    let _failpoints = sluice::failpoint::from_environment();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sluice: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(sluice::cli::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
