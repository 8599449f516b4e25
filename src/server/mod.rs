//! The HTTP API of `sluice serve` (axum): health, Prometheus metrics, pipelines and runs.
//!
//! | route | |
//! |---|---|
//! | `GET /health` | `status` healthy / degraded / unhealthy; ledger, each catalog, scheduler loop, runs in flight, dead runs (503 when unhealthy) |
//! | `GET /metrics` | Prometheus text exposition, names prefixed `sluice_` |
//! | `GET /pipelines`, `GET /pipelines/{name}` | pipelines with schedule, paused, last status, next due time |
//! | `POST /pipelines/{name}/runs` | runs it now: 202 with `run_id` (409 when it has a run going) |
//! | `GET /runs?pipeline=&status=&limit=` | runs, newest first |
//! | `GET /runs/{id}` | a run: status and report, with every step |
//! | `GET /runs/{id}/events` | its events; `?follow=true`: a server-sent-events stream until it ends |
//! | `POST /runs/{id}/cancel`, `POST /runs/{id}/retry` | cancel a running run; run a failed or dead one again under its id |
//!
//! Bound to loopback unless `SLUICE_TOKEN` is set; with a token every request but `/health`
//! needs `Authorization: Bearer <token>` (compared in constant time, never logged). Errors are
//! JSON `{"error": "..."}`: 404 for unknown names, 400 for bad parameters or JSON, 409 for
//! conflicts; request bodies are limited to 64 KiB.

mod api;
mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

pub use metrics::Metrics;

use crate::scheduler::Scheduler;

/// The largest request body accepted.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Why the server cannot start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A non-loopback address without a token.
    #[error(
        "refusing to listen on {0} without SLUICE_TOKEN: set SLUICE_TOKEN (every request then needs `Authorization: Bearer <token>`), or listen on 127.0.0.1"
    )]
    NoToken(SocketAddr),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// What the API serves from.
#[derive(Debug, Clone)]
pub struct Api {
    scheduler: Scheduler,
    metrics: Arc<Metrics>,
    token: Option<Arc<str>>,
}

impl Api {
    /// The API over `scheduler` (and its engine); with `token`, every route but `/health` needs
    /// it as a bearer token. Starts following run events into the metrics.
    pub fn new(scheduler: Scheduler, token: Option<String>) -> Self {
        let metrics = Arc::new(Metrics::default());
        metrics.follow(&scheduler);
        Self { scheduler, metrics, token: token.map(Into::into) }
    }

    /// The routes.
    pub fn router(self) -> Router {
        let guarded = Router::new()
            .route("/metrics", get(api::metrics))
            .route("/pipelines", get(api::pipelines))
            .route("/pipelines/{name}", get(api::pipeline))
            .route("/pipelines/{name}/runs", post(api::trigger))
            .route("/runs", get(api::runs))
            .route("/runs/{id}", get(api::run))
            .route("/runs/{id}/events", get(api::events))
            .route("/runs/{id}/cancel", post(api::cancel))
            .route("/runs/{id}/retry", post(api::retry))
            .route_layer(middleware::from_fn_with_state(self.clone(), authorize));
        Router::new()
            .route("/health", get(api::health))
            .merge(guarded)
            .fallback(api::not_found)
            .layer(DefaultBodyLimit::max(BODY_LIMIT))
            .with_state(self)
    }
}

/// Refuses a non-loopback address without a token.
pub fn check_listen(addr: SocketAddr, token: Option<&str>) -> Result<(), ServerError> {
    match addr.ip().is_loopback() || token.is_some_and(|t| !t.is_empty()) {
        true => Ok(()),
        false => Err(ServerError::NoToken(addr)),
    }
}

/// Binds `addr` (checked with [`check_listen`] first).
pub async fn bind(addr: SocketAddr, token: Option<&str>) -> Result<tokio::net::TcpListener, ServerError> {
    check_listen(addr, token)?;
    tokio::net::TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { addr, source })
}

/// Serves `api` on `listener` until `stop` fires.
pub async fn serve(listener: tokio::net::TcpListener, api: Api, stop: CancellationToken) -> Result<(), ServerError> {
    axum::serve(listener, api.router()).with_graceful_shutdown(stop.cancelled_owned()).await.map_err(ServerError::Serve)
}

/// The bearer-token check (constant time; the token is never echoed).
async fn authorize(State(api): State<Api>, request: Request, next: Next) -> Response {
    let Some(token) = &api.token else { return next.run(request).await };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        return next.run(request).await;
    }
    api::error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token (Authorization: Bearer <SLUICE_TOKEN>)")
        .into_response()
}
