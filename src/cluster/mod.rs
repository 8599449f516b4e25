//! Runs on an Apache DataFusion Ballista cluster: where a run executes, and the cluster's own
//! processes.
//!
//! - [`ClusterUrl`]: a scheduler's address as users write it (`df://host:50050`);
//!   `describe` asks the scheduler who is in the cluster (`SHOW CLUSTER`), `stop_jobs_named`
//!   stops a run's job (rollback, recovery), both through the scheduler's REST API;
//! - `process.rs`: `sluice cluster scheduler` and `sluice cluster executor`, thin wrappers over
//!   Ballista's own scheduler and executor libraries, set up with Sluice's object stores, so a
//!   user starts a cluster with the tool they already have.
//!
//! No cluster logic lives here: scheduling, task retries and shuffles are Ballista's. The
//! processes and `describe` need the `cluster` feature (Ballista's crates); the addresses do not.

#[cfg(feature = "cluster")]
mod process;
#[cfg(feature = "cluster")]
pub mod write;

#[cfg(feature = "cluster")]
pub use process::{ExecutorOptions, SchedulerOptions, run_executor, run_scheduler};

datafusion::common::extensions_options! {
    /// Sluice's session settings: `SET sluice.<name> = ...` (known to the cluster's processes
    /// too, which receive a session's settings with its jobs).
    pub struct SluiceOptions {
        /// The cluster runs execute on: `df://host:port` (a Ballista scheduler); empty or
        /// `local` for this process.
        pub cluster: String, default = String::new()
    }
}

impl datafusion::common::config::ConfigExtension for SluiceOptions {
    const PREFIX: &'static str = "sluice";
}

/// This process's address as a cluster's executor (`host:port`, as it registered), once it is
/// one.
#[cfg(feature = "cluster")]
static EXECUTOR: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Where this process runs shards: its executor address, or `local`.
#[cfg(feature = "cluster")]
fn this_executor() -> &'static str {
    EXECUTOR.get().map_or("local", String::as_str)
}

/// The port a Ballista scheduler listens on unless told otherwise.
pub const DEFAULT_SCHEDULER_PORT: u16 = 50050;

/// What went wrong with a cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Not a scheduler address.
    #[error("`{url}` is not a cluster address: {why} (expected df://host:port, e.g. df://localhost:50050)")]
    BadUrl {
        /// What was given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The scheduler did not answer, or answered with an error.
    #[error("the cluster's scheduler at {url} did not answer: {message}")]
    Unreachable {
        /// The scheduler's address.
        url: String,
        /// Why.
        message: String,
    },
    /// A scheduler or executor process could not start or stopped with an error.
    #[error("{role}: {message}")]
    Process {
        /// `scheduler` or `executor`.
        role: &'static str,
        /// Ballista's error.
        message: String,
    },
}

/// A Ballista scheduler's address: `df://host:port` (`host:port` and `df://host` are taken too;
/// the port defaults to 50050).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterUrl {
    host: String,
    port: u16,
}

impl ClusterUrl {
    /// Parses `url`.
    pub fn parse(url: &str) -> Result<Self, ClusterError> {
        let bad = |why: &str| ClusterError::BadUrl { url: url.to_string(), why: why.to_string() };
        let rest = match url.split_once("://") {
            Some(("df", rest)) => rest,
            Some((scheme, _)) => return Err(bad(&format!("the scheme is `{scheme}`, not `df`"))),
            None => url,
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') || rest.contains('@') || rest.contains('?') {
            return Err(bad("only a host and a port may follow df://"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (host, port.parse::<u16>().map_err(|_| bad(&format!("`{port}` is not a port")))?),
            None => (rest, DEFAULT_SCHEDULER_PORT),
        };
        if host.is_empty() || !host.chars().all(|c| c.is_ascii_alphanumeric() || "-._[]:".contains(c)) {
            return Err(bad("no host name"));
        }
        Ok(Self { host: host.to_string(), port })
    }

    /// The scheduler's host.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The scheduler's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port`.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The scheduler's gRPC (and REST) endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address())
    }
}

impl std::fmt::Display for ClusterUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "df://{}", self.address())
    }
}

/// A process of the cluster, as `SHOW CLUSTER` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// `scheduler` or `executor`.
    pub role: &'static str,
    /// The executor's id (the scheduler's address for the scheduler).
    pub id: String,
    /// `host:port`, as it registered.
    pub address: String,
    /// Tasks it runs at once (executors).
    pub slots: Option<u64>,
    /// When it last reported in, in Unix milliseconds (executors).
    pub last_seen_ms: Option<u64>,
    /// Ballista's version (the scheduler).
    pub version: Option<String>,
}

#[cfg(feature = "cluster")]
#[derive(serde::Deserialize)]
struct SchedulerState {
    version: String,
}

#[cfg(feature = "cluster")]
#[derive(serde::Deserialize)]
struct Executor {
    id: String,
    host: String,
    port: u16,
    last_seen: Option<u64>,
    specification: Specification,
}

#[cfg(feature = "cluster")]
#[derive(serde::Deserialize)]
struct Specification {
    task_slots: u64,
}

/// A scheduler's REST API; a scheduler that does not answer is an error within 5 seconds.
#[cfg(feature = "cluster")]
struct Rest<'a> {
    url: &'a ClusterUrl,
    client: reqwest::Client,
}

#[cfg(feature = "cluster")]
impl<'a> Rest<'a> {
    fn new(url: &'a ClusterUrl) -> Result<Self, ClusterError> {
        let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(5)).build();
        Ok(Self { url, client: client.map_err(|e| Self::unreachable_at(url, e.to_string()))? })
    }

    fn unreachable_at(url: &ClusterUrl, message: String) -> ClusterError {
        ClusterError::Unreachable { url: url.to_string(), message }
    }

    /// `GET /api/<path>`, its JSON answer.
    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClusterError> {
        let unreachable = |message| Self::unreachable_at(self.url, message);
        let request = self.client.get(format!("{}/api/{path}", self.url.endpoint()));
        let response = request.send().await.map_err(|e| unreachable(error_chain(&e)))?;
        let response = response.error_for_status().map_err(|e| unreachable(e.to_string()))?;
        let body = response.bytes().await.map_err(|e| unreachable(e.to_string()))?;
        serde_json::from_slice(&body).map_err(|e| unreachable(format!("not a Ballista scheduler's answer: {e}")))
    }

    /// `PATCH /api/<path>` (a job's cancellation); a conflict (the job ended already) is fine.
    async fn patch(&self, path: &str) -> Result<(), ClusterError> {
        let unreachable = |message| Self::unreachable_at(self.url, message);
        let request = self.client.patch(format!("{}/api/{path}", self.url.endpoint()));
        let response = request.send().await.map_err(|e| unreachable(error_chain(&e)))?;
        match response.status() {
            reqwest::StatusCode::CONFLICT => Ok(()),
            _ => response.error_for_status().map(|_| ()).map_err(|e| unreachable(e.to_string())),
        }
    }
}

/// The scheduler and its executors, from the scheduler's REST API; an unreachable scheduler
/// is an error within 5 seconds.
#[cfg(feature = "cluster")]
pub async fn describe(url: &ClusterUrl) -> Result<Vec<Member>, ClusterError> {
    let rest = Rest::new(url)?;
    let state: SchedulerState = rest.get("state").await?;
    let mut executors: Vec<Executor> = rest.get("executors").await?;
    executors.sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
    let scheduler = Member {
        role: "scheduler",
        id: url.address(),
        address: url.address(),
        slots: None,
        last_seen_ms: None,
        version: Some(state.version),
    };
    Ok(std::iter::once(scheduler)
        .chain(executors.into_iter().map(|e| Member {
            role: "executor",
            address: format!("{}:{}", e.host, e.port),
            id: e.id,
            slots: Some(e.specification.task_slots),
            last_seen_ms: e.last_seen,
            version: None,
        }))
        .collect())
}

/// A job, as the scheduler lists it.
#[cfg(feature = "cluster")]
#[derive(serde::Deserialize)]
struct Job {
    job_id: String,
    job_name: String,
    /// `Queued`, `Running`, `Completed` or `Failed`.
    status: String,
}

/// How long [`stop_jobs_named`] waits for cancelled jobs to end.
#[cfg(feature = "cluster")]
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Cancels the jobs named `name` (a run's write, named after its files) that are queued or
/// running on the cluster, and waits until none of them runs any more (30 s at most); returns
/// how many it cancelled. A run whose Sluice process stopped leaves its job running: rollback
/// and recovery stop it before they delete what it wrote.
#[cfg(feature = "cluster")]
pub async fn stop_jobs_named(url: &ClusterUrl, name: &str) -> Result<usize, ClusterError> {
    let rest = Rest::new(url)?;
    let started = std::time::Instant::now();
    let mut cancelled = std::collections::BTreeSet::new();
    loop {
        let jobs: Vec<Job> = rest.get("jobs").await?;
        let live: Vec<&Job> =
            jobs.iter().filter(|j| j.job_name == name && matches!(j.status.as_str(), "Queued" | "Running")).collect();
        if live.is_empty() {
            return Ok(cancelled.len());
        }
        if started.elapsed() > STOP_WAIT {
            let ids: Vec<&str> = live.iter().map(|j| j.job_id.as_str()).collect();
            return Err(Rest::unreachable_at(url, format!("job(s) {} did not stop within 30 s", ids.join(", "))));
        }
        for job in live {
            if cancelled.insert(job.job_id.clone()) {
                rest.patch(&format!("job/{}", job.job_id)).await?;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// An error with its causes (reqwest's own message omits them: "error sending request").
#[cfg(feature = "cluster")]
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_are_host_and_port_only() {
        assert_eq!(ClusterUrl::parse("df://sched:50060").unwrap().address(), "sched:50060");
        assert_eq!(ClusterUrl::parse("df://sched").unwrap().address(), "sched:50050");
        assert_eq!(ClusterUrl::parse("127.0.0.1:7000").unwrap().to_string(), "df://127.0.0.1:7000");
        for bad in ["http://x:1", "df://", "df://x:port", "df://x:1/path", "df://u@x:1", "df://x:99999"] {
            let error = ClusterUrl::parse(bad).unwrap_err().to_string();
            assert!(error.contains(bad) && error.contains("df://host:port"), "{error}");
        }
    }
}
