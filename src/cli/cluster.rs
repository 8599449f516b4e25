//! `sluice cluster scheduler` and `sluice cluster executor`: a Ballista cluster's processes,
//! from the same binary (see `sluice::cluster`).

use std::net::SocketAddr;
use std::path::PathBuf;

use sluice::cluster::{ClusterUrl, ExecutorOptions, SchedulerOptions};

use super::CliError;

/// The cluster's processes.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum ClusterCommand {
    /// Run a Ballista scheduler until stopped: it plans the cluster's jobs and hands their
    /// tasks to executors.
    Scheduler {
        /// Address of its gRPC service (clients, executors) and REST API.
        #[arg(long, default_value = "127.0.0.1:50050")]
        bind: SocketAddr,
        /// Host name executors and clients reach it by (default: the bound address).
        #[arg(long)]
        external_host: Option<String>,
    },
    /// Run a Ballista executor until stopped: it registers with the scheduler and runs tasks.
    /// It needs the same storage as the Sluice process (a shared bucket or folder).
    Executor {
        /// The scheduler, `host:port` or `df://host:port`.
        #[arg(long, default_value = "localhost:50050")]
        scheduler: String,
        /// Address of its Arrow Flight service (task results).
        #[arg(long, default_value = "127.0.0.1:50051")]
        bind: SocketAddr,
        /// Port of its gRPC service (default: the Flight port + 1).
        #[arg(long)]
        grpc_port: Option<u16>,
        /// Host name others reach it by (default: the bound address).
        #[arg(long)]
        external_host: Option<String>,
        /// Tasks it runs at once, 1 to 1024 (default: available cores).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
        slots: Option<u16>,
        /// Folder for shuffle files (default: a temporary one).
        #[arg(long)]
        work_dir: Option<PathBuf>,
    },
}

/// Runs the process until it is stopped.
pub async fn run(command: &ClusterCommand) -> Result<(), CliError> {
    let result = match command.clone() {
        ClusterCommand::Scheduler { bind, external_host } => {
            sluice::cluster::run_scheduler(SchedulerOptions { bind, external_host }).await
        }
        ClusterCommand::Executor { scheduler, bind, grpc_port, external_host, slots, work_dir } => {
            let options = ExecutorOptions {
                scheduler: ClusterUrl::parse(&scheduler).map_err(sluice::error::Error::from)?,
                bind,
                grpc_port,
                external_host,
                slots: slots.map_or_else(sluice::runtime::default_shards, usize::from),
                work_dir,
            };
            sluice::cluster::run_executor(options).await
        }
    };
    Ok(result.map_err(sluice::error::Error::from)?)
}
