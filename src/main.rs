//! The `sluice` command: parses arguments and hands over to [`sluice::cli`].

use std::process::ExitCode;

use clap::Parser;

/// mimalloc, as DataFusion's own CLI uses: DataFusion's many short-lived, multi-threaded
/// allocations run measurably faster on it than on the system allocator (benches/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
