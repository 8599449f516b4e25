//! `sluice cluster scheduler` and `sluice cluster executor`: Ballista's scheduler and executor,
//! run from the `sluice` binary with Sluice's object stores (every `s3://`, `gs://`, `az://`
//! location reached as the environment says), so that executors read and write the same
//! warehouse the Sluice process commits to.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ballista_core::config::TaskSchedulingPolicy;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::start_server;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::SessionConfig;

use super::write::{SluiceLogicalCodec, SluicePhysicalCodec, SluiceQueryPlanner};
use super::{ClusterError, ClusterUrl};
use crate::storage::StoreRegistry;

/// How executors report in: often enough that `SHOW CLUSTER` and the scheduler notice a lost
/// one within seconds (Ballista's default is a minute).
const HEARTBEAT_SECONDS: u64 = 5;

/// `sluice cluster scheduler`.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// The address its gRPC (and REST) service listens on.
    pub bind: SocketAddr,
    /// The host name executors and clients reach it by (default: the bound address).
    pub external_host: Option<String>,
}

/// `sluice cluster executor`.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The scheduler to register with.
    pub scheduler: ClusterUrl,
    /// The address its Arrow Flight service (task results) listens on.
    pub bind: SocketAddr,
    /// The port of its gRPC service (default: the Flight port + 1).
    pub grpc_port: Option<u16>,
    /// The host name others reach it by (default: the bound address).
    pub external_host: Option<String>,
    /// Tasks it runs at once.
    pub slots: usize,
    /// Where it keeps shuffle files (default: a temporary folder).
    pub work_dir: Option<PathBuf>,
}

/// A session's configuration as Ballista makes it, knowing Sluice's settings.
fn session_config() -> SessionConfig {
    use ballista_core::extension::SessionConfigExt;
    SessionConfig::new_with_ballista().with_option_extension(super::SluiceOptions::default())
}

/// A runtime whose object stores are Sluice's.
fn runtime() -> datafusion::error::Result<Arc<RuntimeEnv>> {
    RuntimeEnvBuilder::new().with_object_store_registry(Arc::new(StoreRegistry::default())).build_arc()
}

/// Runs a scheduler until the process is stopped.
pub async fn run_scheduler(options: SchedulerOptions) -> Result<(), ClusterError> {
    let error =
        |e: ballista_core::error::BallistaError| ClusterError::Process { role: "scheduler", message: e.to_string() };
    let config = SchedulerConfig {
        bind_host: options.bind.ip().to_string(),
        bind_port: options.bind.port(),
        external_host: options.external_host.unwrap_or_else(|| options.bind.ip().to_string()),
        // Executors ask for tasks (Ballista's push policy could leave a task launched to an
        // executor that died meanwhile running for good); one silent for three heartbeats is
        // lost, its tasks run again elsewhere.
        scheduling_policy: TaskSchedulingPolicy::PullStaged,
        executor_timeout_seconds: 3 * HEARTBEAT_SECONDS,
        expire_dead_executor_interval_seconds: HEARTBEAT_SECONDS,
        ..Default::default()
    }
    .with_override_config_producer(Arc::new(session_config))
    .with_override_session_builder(Arc::new(|config: SessionConfig| {
        Ok(SessionStateBuilder::new()
            .with_default_features()
            .with_config(config)
            .with_runtime_env(runtime()?)
            .with_query_planner(Arc::new(SluiceQueryPlanner))
            .build())
    }));
    let config = SchedulerConfig {
        override_logical_codec: Some(Arc::new(SluiceLogicalCodec::default())),
        override_physical_codec: Some(Arc::new(SluicePhysicalCodec::default())),
        ..config
    };
    let cluster = BallistaCluster::new_from_config(&config).await.map_err(error)?;
    start_server(cluster, options.bind, Arc::new(config)).await.map_err(error)
}

/// Runs an executor until the process is stopped.
pub async fn run_executor(options: ExecutorOptions) -> Result<(), ClusterError> {
    let flight = options.bind.port();
    let grpc_port = match options.grpc_port {
        Some(port) => port,
        None => flight.checked_add(1).ok_or_else(|| ClusterError::Process {
            role: "executor",
            message: format!("no gRPC port after {flight}: give --grpc-port"),
        })?,
    };
    let host = options.external_host.clone().unwrap_or_else(|| options.bind.ip().to_string());
    let _ = super::EXECUTOR.set(format!("{host}:{flight}"));
    let config = ExecutorProcessConfig {
        bind_host: options.bind.ip().to_string(),
        external_host: options.external_host,
        port: flight,
        grpc_port,
        scheduler_host: options.scheduler.host().to_string(),
        scheduler_port: options.scheduler.port(),
        concurrent_tasks: options.slots.max(1),
        task_scheduling_policy: TaskSchedulingPolicy::PullStaged,
        work_dir: options.work_dir.map(|dir| dir.display().to_string()),
        executor_heartbeat_interval_seconds: HEARTBEAT_SECONDS,
        override_runtime_producer: Some(Arc::new(|_: &SessionConfig| runtime())),
        override_config_producer: Some(Arc::new(session_config)),
        override_logical_codec: Some(Arc::new(SluiceLogicalCodec::default())),
        override_physical_codec: Some(Arc::new(SluicePhysicalCodec::default())),
        ..Default::default()
    };
    start_executor_process(Arc::new(config))
        .await
        .map_err(|e| ClusterError::Process { role: "executor", message: e.to_string() })
}
