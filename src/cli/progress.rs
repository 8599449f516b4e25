//! The progress of a running statement, on stderr: on a terminal a live display (indicatif) of
//! each run's shards done, rows and bytes written and time; elsewhere one line per step
//! transition of a pipeline with steps; either way one line per shard a cluster's executor
//! wrote, naming it; with `--quiet`, nothing. The display is cleared before
//! the statement's result is printed.

use std::collections::HashMap;
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use sluice::Engine;
use sluice::events::RunEvent;
use tokio::sync::{broadcast, oneshot};

/// How progress shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A live display (stderr is a terminal).
    Live,
    /// One line per step transition.
    Lines,
    /// Nothing.
    Quiet,
}

/// Progress shown while one statement runs.
pub struct Progress {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    /// Shows the progress of the runs `engine` starts from now on; `None` when quiet.
    pub fn start(engine: &Engine, mode: Mode) -> Option<Self> {
        if mode == Mode::Quiet {
            return None;
        }
        let mut events = engine.subscribe();
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut display = Display::new(mode);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    event = events.recv() => match event {
                        Ok(event) => display.show(&event),
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                }
            }
            // What was published before the statement returned is shown too.
            while let Ok(event) = events.try_recv() {
                display.show(&event);
            }
            display.clear();
        });
        Some(Self { stop, task })
    }

    /// Stops and clears the display.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// What is on screen.
struct Display {
    mode: Mode,
    bars: MultiProgress,
    runs: HashMap<String, (ProgressBar, u64, u64)>,
    /// Each open run's pipeline, or its target.
    names: HashMap<String, String>,
    steps: HashMap<(String, String), Instant>,
}

impl Display {
    fn new(mode: Mode) -> Self {
        let target = if mode == Mode::Live { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        let bars = MultiProgress::with_draw_target(target);
        Self { mode, bars, runs: HashMap::new(), names: HashMap::new(), steps: HashMap::new() }
    }

    fn line(&self, text: String) {
        match self.mode {
            Mode::Live => {
                let _ = self.bars.println(text);
            }
            _ => eprintln!("{text}"),
        }
    }

    fn show(&mut self, event: &RunEvent) {
        match event {
            RunEvent::Step { pipeline, step, status, attempt, rows, error, .. } => {
                let key = (pipeline.clone(), step.clone());
                let text = match (status.as_str(), attempt) {
                    ("running", Some(attempt)) => {
                        self.steps.insert(key, Instant::now());
                        let retry = if *attempt > 1 { format!(" (attempt {attempt})") } else { String::new() };
                        format!("{pipeline}: step {step} running{retry}")
                    }
                    ("succeeded", _) => {
                        let took = self.steps.get(&key).map(|s| s.elapsed().as_secs_f64()).unwrap_or_default();
                        format!("{pipeline}: step {step} succeeded: {rows} row(s) in {took:.2}s")
                    }
                    (status, _) => match error {
                        Some(error) => format!("{pipeline}: step {step} {status}: {error}"),
                        None => format!("{pipeline}: step {step} {status}"),
                    },
                };
                self.line(text);
            }
            RunEvent::Opened { run_id, pipeline, target, shards } => {
                let name = pipeline.clone().unwrap_or_else(|| target.clone());
                if self.mode == Mode::Live {
                    let bar = self.bars.add(ProgressBar::new(*shards as u64));
                    let style =
                        ProgressStyle::with_template("{prefix} [{bar:20}] {pos}/{len} shards, {msg} ({elapsed})")
                            .unwrap_or_else(|_| ProgressStyle::default_bar());
                    bar.set_style(style);
                    bar.set_prefix(name.clone());
                    bar.enable_steady_tick(std::time::Duration::from_millis(200));
                    self.runs.insert(run_id.clone(), (bar, 0, 0));
                }
                self.names.insert(run_id.clone(), name);
            }
            RunEvent::ShardFinished { run_id, shard, rows, bytes, elapsed_ms, executor, error, .. } => {
                // A cluster's shard says where it ran.
                if executor != sluice::ledger::LOCAL_EXECUTOR {
                    let name = self.names.get(run_id).unwrap_or(run_id);
                    let took = *elapsed_ms as f64 / 1000.0;
                    self.line(match error {
                        None => format!("{name}: shard {shard} written on {executor}: {rows} row(s) in {took:.2}s"),
                        Some(error) => format!("{name}: shard {shard} failed on {executor}: {error}"),
                    });
                }
                if let Some((bar, total_rows, total_bytes)) = self.runs.get_mut(run_id) {
                    (*total_rows, *total_bytes) = (*total_rows + rows, *total_bytes + bytes);
                    bar.set_message(format!("{total_rows} rows, {}", indicatif::HumanBytes(*total_bytes)));
                    bar.inc(1);
                }
            }
            RunEvent::Closed { run_id, .. } => {
                self.names.remove(run_id);
                if let Some((bar, ..)) = self.runs.remove(run_id) {
                    bar.finish_and_clear();
                }
            }
            _ => {}
        }
    }

    fn clear(&mut self) {
        for (_, (bar, ..)) in self.runs.drain() {
            bar.finish_and_clear();
        }
        let _ = self.bars.clear();
    }
}
