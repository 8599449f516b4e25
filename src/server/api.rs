//! The route handlers. Records go out as JSON objects with their ledger fields; times are ms
//! since the epoch.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::Api;
use crate::ledger::{PipelineRecord, PipelineRunRecord, RunRecord, StepRecord};
use crate::scheduler::{Schedule, StartError};

/// A JSON error with its status.
pub(super) struct ApiError(StatusCode, String);

pub(super) fn error(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError(status, message.into())
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<crate::error::Error> for ApiError {
    fn from(e: crate::error::Error) -> Self {
        error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl From<crate::ledger::LedgerError> for ApiError {
    fn from(e: crate::ledger::LedgerError) -> Self {
        error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl From<StartError> for ApiError {
    fn from(e: StartError) -> Self {
        let status = match &e {
            StartError::NotFound(_) => StatusCode::NOT_FOUND,
            StartError::Busy(_) | StartError::Conflict(_) => StatusCode::CONFLICT,
            StartError::Engine(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        error(status, e.to_string())
    }
}

type Answer = Result<Response, ApiError>;

pub(super) async fn not_found() -> ApiError {
    error(StatusCode::NOT_FOUND, "no such route (see GET /health, /metrics, /pipelines, /runs)")
}

/// The API's view of how long the scheduler loop may be silent and still count as alive.
const LOOP_SILENT_MAX_MS: i64 = 10_000;

pub(super) async fn health(State(api): State<Api>) -> Response {
    let engine = api.scheduler.engine();
    let ledger = engine.ledger();
    let ledger_error = match (engine.ledger_damage(), ledger.pipelines().await) {
        (Some(damage), _) => Some(damage.to_string()),
        (None, Err(e)) => Some(e.to_string()),
        (None, Ok(_)) => None,
    };
    let mut catalogs = Vec::new();
    for (name, catalog) in engine.catalogs() {
        let reached = tokio::time::timeout(Duration::from_secs(5), catalog.refresh()).await;
        let problem = match reached {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("no answer within 5 s".to_string()),
        };
        catalogs.push(json!({ "name": name, "reachable": problem.is_none(), "error": problem }));
    }
    let now = engine.clock().now_ms();
    let alive = api.scheduler.alive_ms().is_some_and(|at| now - at <= LOOP_SILENT_MAX_MS);
    let dead = ledger.dead_runs().await.unwrap_or_default();
    let catalogs_ok = catalogs.iter().all(|c| c["reachable"] == true);
    let status = match (ledger_error.is_none() && alive, catalogs_ok && dead == 0) {
        (false, _) => "unhealthy",
        (true, false) => "degraded",
        (true, true) => "healthy",
    };
    let code = if status == "unhealthy" { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    let body = json!({
        "status": status,
        "ledger": { "reachable": ledger_error.is_none(), "error": ledger_error },
        "catalogs": catalogs,
        "scheduler": { "alive": alive, "last_loop_ms": api.scheduler.alive_ms() },
        "runs_in_flight": api.scheduler.running(),
        "dead_runs": dead,
    });
    (code, Json(body)).into_response()
}

pub(super) async fn metrics(State(api): State<Api>) -> Answer {
    let text = api.metrics.render(&api.scheduler).await?;
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    Ok(([(header::CONTENT_TYPE, content_type)], text).into_response())
}

fn pipeline_json(p: &PipelineRecord, now_ms: i64) -> Value {
    let next_due = p
        .schedule
        .as_ref()
        .filter(|_| !p.paused)
        .and_then(|(cron, zone)| Schedule::parse(cron, zone.as_deref()).ok()?.next_after(now_ms));
    json!({
        "name": p.name,
        "targets": p.targets().collect::<Vec<_>>(),
        "schedule": p.schedule.as_ref().map(|(cron, _)| cron),
        "timezone": p.schedule.as_ref().map(|(_, zone)| zone.as_deref().unwrap_or("UTC")),
        "paused": p.paused,
        "last_status": p.last_status,
        "next_due_ms": next_due,
        "shards": p.shards,
        "created_at_ms": p.created_at_ms,
        "definition": p.definition,
    })
}

pub(super) async fn pipelines(State(api): State<Api>) -> Answer {
    let engine = api.scheduler.engine();
    let now = engine.clock().now_ms();
    let all: Vec<Value> = engine.ledger().pipelines().await?.iter().map(|p| pipeline_json(p, now)).collect();
    Ok(Json(all).into_response())
}

pub(super) async fn pipeline(State(api): State<Api>, Path(name): Path<String>) -> Answer {
    let engine = api.scheduler.engine();
    match engine.ledger().pipeline(&name).await? {
        Some(p) => Ok(Json(pipeline_json(&p, engine.clock().now_ms())).into_response()),
        None => Err(error(StatusCode::NOT_FOUND, format!("pipeline `{name}` does not exist"))),
    }
}

/// `POST /pipelines/{name}/runs`: a body, when given, must be a JSON object (no field is read
/// yet).
pub(super) async fn trigger(State(api): State<Api>, Path(name): Path<String>, body: Bytes) -> Answer {
    if !body.is_empty() {
        let parsed: Result<serde_json::Map<String, Value>, _> = serde_json::from_slice(&body);
        parsed.map_err(|e| error(StatusCode::BAD_REQUEST, format!("the body must be a JSON object: {e}")))?;
    }
    let run_id = api.scheduler.trigger(&name).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "run_id": run_id, "pipeline": name, "status": "queued" }))).into_response())
}

fn run_json(r: &RunRecord) -> Value {
    json!({
        "run_id": r.run_id,
        "kind": "write",
        "pipeline": r.pipeline,
        "target": r.target,
        "status": r.status.as_str(),
        "attempt": r.attempt,
        "shards": r.shards,
        "rows": r.rows,
        "files": r.files,
        "bytes": r.bytes,
        "snapshot_id": r.snapshot_id,
        "started_at_ms": r.started_at_ms,
        "finished_at_ms": r.finished_at_ms,
        "error": r.error,
    })
}

fn pipeline_run_json(r: &PipelineRunRecord, steps: &[StepRecord]) -> Value {
    let steps: Vec<Value> = steps
        .iter()
        .map(|s| {
            json!({
                "step": s.step, "target": s.target, "status": s.status, "attempt": s.attempt,
                "run_id": s.step_run_id, "rows": s.rows, "files": s.files, "bytes": s.bytes,
                "snapshot_id": s.snapshot_id, "started_at_ms": s.started_at_ms,
                "finished_at_ms": s.finished_at_ms, "error": s.error,
            })
        })
        .collect();
    json!({
        "run_id": r.run_id,
        "kind": "pipeline",
        "pipeline": r.pipeline,
        "status": r.status,
        "rows": steps.iter().map(|s| s["rows"].as_u64().unwrap_or(0)).sum::<u64>(),
        "started_at_ms": r.started_at_ms,
        "finished_at_ms": r.finished_at_ms,
        "error": r.error,
        "steps": steps,
    })
}

/// `GET /runs` parameters.
#[derive(Debug, Deserialize)]
pub(super) struct RunsQuery {
    pipeline: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
}

pub(super) async fn runs(State(api): State<Api>, query: Result<Query<RunsQuery>, QueryRejection>) -> Answer {
    let Query(query) = query.map_err(|e| error(StatusCode::BAD_REQUEST, e.body_text()))?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(error(StatusCode::BAD_REQUEST, format!("limit = {limit}: expected 1 to 1000")));
    }
    let ledger = api.scheduler.engine().ledger();
    let mut all: Vec<(i64, Value)> =
        ledger.runs(query.pipeline.as_deref()).await?.iter().map(|r| (r.started_at_ms, run_json(r))).collect();
    for run in ledger.pipeline_runs().await? {
        if query.pipeline.as_ref().is_none_or(|p| *p == run.pipeline) {
            all.push((run.started_at_ms, pipeline_run_json(&run, &[])));
        }
    }
    all.retain(|(_, run)| query.status.as_ref().is_none_or(|s| run["status"] == s.as_str()));
    all.sort_by_key(|(started, _)| std::cmp::Reverse(*started));
    Ok(Json(all.into_iter().take(limit).map(|(_, run)| run).collect::<Vec<_>>()).into_response())
}

/// The run `id` as JSON (a write run, or a pipeline run with its steps).
async fn find_run(api: &Api, id: &str) -> Result<Value, ApiError> {
    let ledger = api.scheduler.engine().ledger();
    if let Some(run) = ledger.run(id).await? {
        return Ok(run_json(&run));
    }
    let pipeline_run = ledger.pipeline_runs().await?.into_iter().find(|r| r.run_id == id);
    match pipeline_run {
        Some(run) => Ok(pipeline_run_json(&run, &ledger.steps(Some(id)).await?)),
        None => Err(error(StatusCode::NOT_FOUND, format!("run {id} does not exist"))),
    }
}

pub(super) async fn run(State(api): State<Api>, Path(id): Path<String>) -> Answer {
    Ok(Json(find_run(&api, &id).await?).into_response())
}

/// `GET /runs/{id}/events` parameters.
#[derive(Debug, Deserialize)]
pub(super) struct EventsQuery {
    #[serde(default)]
    follow: bool,
}

/// Whether `run` (as [`find_run`] shows it) is over.
fn finished(run: &Value) -> bool {
    !matches!(run["status"].as_str(), Some("staging" | "committing" | "running" | "publishing"))
}

pub(super) async fn events(
    State(api): State<Api>,
    Path(id): Path<String>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Answer {
    let Query(query) = query.map_err(|e| error(StatusCode::BAD_REQUEST, e.body_text()))?;
    let run = find_run(&api, &id).await?;
    // A pipeline run's events are its own and its steps' write runs'.
    let mut ids = vec![id.clone()];
    ids.extend(run["steps"].as_array().into_iter().flatten().filter_map(|s| s["run_id"].as_str().map(str::to_string)));
    let engine = api.scheduler.engine().clone();
    let live = engine.subscribe();
    let recorded: Vec<(String, i64, String, String)> =
        engine.ledger().events().await?.into_iter().filter(|(run_id, ..)| ids.contains(run_id)).collect();
    if !query.follow {
        let recorded: Vec<Value> = recorded
            .into_iter()
            .map(|(run_id, at_ms, kind, detail)| {
                let detail: Value = serde_json::from_str(&detail).unwrap_or(Value::String(detail));
                json!({ "run_id": run_id, "at_ms": at_ms, "kind": kind, "detail": detail })
            })
            .collect();
        return Ok(Json(recorded).into_response());
    }
    let recorded = recorded.into_iter().map(|(_, _, kind, detail)| Event::default().event(kind).data(detail)).collect();
    let stream = follow(api, id, recorded, live, finished(&run), run["kind"] == "write");
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

/// The recorded events, then live ones of the run (and of its steps' write runs), each named
/// by its kind with the event as JSON data, until the run is over: a write run's `closed`
/// event, or a pipeline run's end in the ledger.
fn follow(
    api: Api,
    id: String,
    recorded: Vec<Event>,
    mut live: tokio::sync::broadcast::Receiver<crate::events::RunEvent>,
    over: bool,
    write_run: bool,
) -> impl Stream<Item = Result<Event, Infallible>> {
    async_stream(move |sender| async move {
        for event in recorded {
            if sender.send(event).await.is_err() {
                return;
            }
        }
        if over {
            return;
        }
        let mut ids = vec![id.clone()];
        loop {
            let next = tokio::time::timeout(Duration::from_secs(1), live.recv()).await;
            let quiet = next.is_err();
            match next {
                Ok(Ok(event)) => {
                    if let crate::events::RunEvent::Step { run_id, .. } = &event
                        && *run_id == id
                        && let Ok(run) = find_run(&api, &id).await
                    {
                        ids.extend(
                            run["steps"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|s| s["run_id"].as_str().map(str::to_string)),
                        );
                    }
                    if !ids.iter().any(|i| i == event.run_id()) {
                        continue;
                    }
                    let data = serde_json::to_string(&event).unwrap_or_default();
                    if sender.send(Event::default().event(event.kind()).data(data)).await.is_err() {
                        return;
                    }
                    if write_run && matches!(&event, crate::events::RunEvent::Closed { run_id, .. } if *run_id == id) {
                        return;
                    }
                }
                Ok(Err(RecvError::Lagged(_))) | Err(_) => {}
                Ok(Err(RecvError::Closed)) => return,
            }
            // A pipeline run has no closed event of its own (its end is in the ledger after its
            // steps' last events); a write run's closed event may have been missed (lagged).
            if (!write_run || quiet) && find_run(&api, &id).await.is_ok_and(|run| finished(&run)) {
                return;
            }
        }
    })
}

/// A stream fed by `produce` through a channel (ends when `produce` returns).
fn async_stream<F, Fut>(produce: F) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    tokio::spawn(produce(sender));
    futures::stream::unfold(
        receiver,
        |mut receiver| async move { receiver.recv().await.map(|event| (Ok(event), receiver)) },
    )
}

pub(super) async fn cancel(State(api): State<Api>, Path(id): Path<String>) -> Answer {
    let run = find_run(&api, &id).await?;
    if finished(&run) {
        let status = run["status"].as_str().unwrap_or_default().to_string();
        return Err(error(StatusCode::CONFLICT, format!("run {id} is not running (it is {status})")));
    }
    if !api.scheduler.engine().ledger().request_cancel(&id).await? {
        return Err(error(StatusCode::CONFLICT, format!("run {id} cannot be cancelled now (it is committing)")));
    }
    Ok((StatusCode::ACCEPTED, Json(json!({ "run_id": id, "status": "cancelling" }))).into_response())
}

pub(super) async fn retry(State(api): State<Api>, Path(id): Path<String>) -> Answer {
    let run_id = api.scheduler.retry(&id).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "run_id": run_id, "status": "queued" }))).into_response())
}
