//! The `sluice` command: parses arguments and hands over to `cli`, the command line and REPL
//! (the binary's own; the library does not depend on clap, rustyline or tracing-subscriber).

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc, as DataFusion's own CLI uses: DataFusion's many short-lived, multi-threaded
/// allocations run measurably faster on it than on the system allocator (benches/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    cli::init_tracing(&args);
    // Test builds read failpoints from `FAILPOINTS` (release builds have none).
    let _failpoints = fail::has_failpoints().then(fail::FailScenario::setup);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sluice: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(()) | Err(cli::CliError::Closed) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
