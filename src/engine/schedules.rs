//! Pipelines as saved, and their schedules: `CREATE PIPELINE ... SCHEDULE '<cron>'
//! [TIMEZONE '<zone>']` saves a pipeline with its schedule; `ALTER PIPELINE` changes the
//! schedule, pauses and resumes it, or changes its options (checked as at CREATE, the saved
//! definition rewritten to match).

use super::{Engine, Output};
use crate::error::Result;
use crate::ledger::{LedgerError, PipelineRecord};
use crate::parser::{AlterPipeline, CreatePipeline, PipelineBody, Statement};
use crate::pipeline::{PipelineOptions, StepOptions};

impl Engine {
    /// Saves a checked `CREATE PIPELINE` writing `target` (`None` for `catalog_file`: the
    /// home's own catalogs).
    pub(super) async fn save_pipeline(
        &self,
        create: &CreatePipeline,
        statement: &Statement,
        target: String,
        shards: Option<usize>,
        catalog_file: Option<String>,
    ) -> Result<Output> {
        let now = self.clock.now_ms();
        let record = PipelineRecord {
            name: create.name.clone(),
            definition: statement.to_string(),
            target,
            shards,
            created_at_ms: now,
            catalog_file,
            schedule: create.schedule.as_ref().map(|s| (s.cron.clone(), s.timezone.clone())),
            paused: false,
            schedule_since_ms: create.schedule.as_ref().map(|_| now),
            last_status: None,
        };
        match self.ledger.save_pipeline(&record, create.or_replace).await {
            Err(LedgerError::PipelineExists(_)) if create.if_not_exists => Ok(Output::empty()),
            other => other.map(|_| Output::empty()).map_err(Into::into),
        }
    }

    /// `ALTER PIPELINE name <change>`.
    pub(super) async fn alter_pipeline(&self, name: &str, change: &AlterPipeline) -> Result<Output> {
        let Some(mut record) = self.ledger.pipeline(name).await? else {
            return Err(self.no_pipeline(name).await);
        };
        let mut create = crate::pipeline::parse_definition(name, &record.definition)?;
        match change {
            AlterPipeline::SetSchedule(clause) => {
                record.schedule = Some((clause.cron.clone(), clause.timezone.clone()));
                record.schedule_since_ms = Some(self.clock.now_ms());
                create.schedule = Some(clause.clone());
            }
            AlterPipeline::DropSchedule => {
                record.schedule = None;
                record.schedule_since_ms = None;
                create.schedule = None;
            }
            AlterPipeline::Pause => record.paused = true,
            AlterPipeline::Resume => {
                // Due times that passed while it was paused are not owed.
                record.paused = false;
                record.schedule_since_ms = record.schedule.as_ref().map(|_| self.clock.now_ms());
            }
            AlterPipeline::SetOptions(options) => {
                for (key, value) in options {
                    match create.options.iter_mut().find(|(k, _)| k == key) {
                        Some(option) => option.1 = value.clone(),
                        None => create.options.push((key.clone(), value.clone())),
                    }
                }
                let parsed = PipelineOptions::parse(name, &create.options)?;
                if let PipelineBody::Steps(steps) = &create.body {
                    for step in self.dag_of(name, steps)?.steps {
                        StepOptions::parse(name, &step.name, &step.step.options)?;
                    }
                }
                record.shards = parsed.shards;
            }
        }
        record.definition = Statement::CreatePipeline(create).to_string();
        self.ledger.alter_pipeline(&record).await?;
        Ok(Output::empty())
    }
}
