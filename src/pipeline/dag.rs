//! A multi-step pipeline as a dependency graph: each step's name, target and the tables it
//! reads; its dependencies (`DEPENDS ON` plus every step that writes a table it reads); the
//! checks made at `CREATE PIPELINE` (unknown step, two writers of one table, a cycle), and the
//! levels steps can run in.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;

use datafusion::sql::parser::{CopyToSource, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::{
    CreateTable, ObjectName, Query, Statement as SqlStatement, TableObject, visit_relations,
};

use super::PipelineError;
use crate::parser::{PipelineStep, Statement};

/// One step of the graph.
#[derive(Debug, Clone, PartialEq)]
pub struct DagStep {
    /// Its name (given with `STEP`, else its target's last part).
    pub name: String,
    /// The step as written.
    pub step: PipelineStep,
    /// What it writes: a table (`catalog.schema.table`), a file, or `pipeline <name>`.
    pub target: String,
    /// The tables it reads (`catalog.schema.table`).
    pub reads: BTreeSet<String>,
    /// The steps it waits for (indices into [`Dag::steps`]), in order.
    pub depends_on: Vec<usize>,
}

/// A pipeline's steps, checked: names unique, dependencies known, one writer per table, no cycle.
#[derive(Debug, Clone, PartialEq)]
pub struct Dag {
    /// The steps, in the order written.
    pub steps: Vec<DagStep>,
}

/// What a step writes and reads, with table names resolved by `resolve`.
fn target_and_reads(statement: &Statement, resolve: &dyn Fn(&ObjectName) -> String) -> (String, BTreeSet<String>) {
    let query_reads = |query: &Query| reads_of(query, resolve);
    match statement {
        Statement::DataFusion(statement) => match statement.as_ref() {
            DFStatement::Statement(sql) => match sql.as_ref() {
                SqlStatement::Insert(insert) => {
                    let target = match &insert.table {
                        TableObject::TableName(name) => resolve(name),
                        other => other.to_string(),
                    };
                    (target, insert.source.as_deref().map(query_reads).unwrap_or_default())
                }
                SqlStatement::CreateTable(CreateTable { name, query, .. }) => {
                    (resolve(name), query.as_deref().map(query_reads).unwrap_or_default())
                }
                other => (other.to_string(), BTreeSet::new()),
            },
            DFStatement::CopyTo(copy) => {
                let reads = match &copy.source {
                    CopyToSource::Query(query) => query_reads(query),
                    CopyToSource::Relation(name) => BTreeSet::from([resolve(name)]),
                };
                (copy.target.clone(), reads)
            }
            other => (other.to_string(), BTreeSet::new()),
        },
        Statement::CreatePartitionedTable { create, .. } => match create.as_ref() {
            SqlStatement::CreateTable(CreateTable { name, query, .. }) => {
                (resolve(name), query.as_deref().map(query_reads).unwrap_or_default())
            }
            other => (other.to_string(), BTreeSet::new()),
        },
        Statement::RunPipeline { name } => (format!("pipeline {name}"), BTreeSet::new()),
        Statement::InsertWith { insert, .. } => target_and_reads(insert, resolve),
        other => (other.to_string(), BTreeSet::new()),
    }
}

/// The tables a query reads, but its own CTEs.
fn reads_of(query: &Query, resolve: &dyn Fn(&ObjectName) -> String) -> BTreeSet<String> {
    let ctes: BTreeSet<String> = query
        .with
        .iter()
        .flat_map(|with| with.cte_tables.iter().map(|cte| cte.alias.name.value.to_lowercase()))
        .collect();
    let mut reads = BTreeSet::new();
    let _ = visit_relations(query, |name: &ObjectName| {
        let bare = name.0.len() == 1 && ctes.contains(&name.to_string().to_lowercase());
        if !bare {
            reads.insert(resolve(name));
        }
        ControlFlow::<()>::Continue(())
    });
    reads
}

/// The default name of a step: its target's last part (a file's stem).
fn default_name(target: &str) -> String {
    let last = target.rsplit(['.', '/', ' ']).find(|part| !part.is_empty()).unwrap_or(target);
    let last = if target.contains('/') {
        std::path::Path::new(target).file_stem().and_then(|s| s.to_str()).unwrap_or(last)
    } else {
        last
    };
    last.to_lowercase()
}

impl Dag {
    /// The graph of `pipeline`'s `steps`; `resolve` turns a table name as written into
    /// `catalog.schema.table`.
    pub fn build(
        pipeline: &str,
        steps: &[PipelineStep],
        resolve: &dyn Fn(&ObjectName) -> String,
    ) -> Result<Self, PipelineError> {
        let error = |step: &PipelineStep, name: &str, message: String| PipelineError::Step {
            pipeline: pipeline.to_string(),
            step: name.to_string(),
            line: step.line,
            column: step.column,
            message,
        };
        let mut built: Vec<DagStep> = Vec::new();
        for step in steps {
            let (target, reads) = target_and_reads(&step.statement, resolve);
            let name = step.name.clone().unwrap_or_else(|| default_name(&target));
            if built.iter().any(|s| s.name == name) {
                return Err(error(
                    step,
                    &name,
                    format!("another step is named `{name}`: name them apart with STEP <name> AS ..."),
                ));
            }
            if let Some(other) = built.iter().find(|s| s.target == target) {
                return Err(error(
                    step,
                    &name,
                    format!("step `{}` writes `{target}` too: one table, one writer", other.name),
                ));
            }
            built.push(DagStep { name, step: step.clone(), target, reads, depends_on: Vec::new() });
        }
        let index: BTreeMap<String, usize> = built.iter().enumerate().map(|(i, s)| (s.name.clone(), i)).collect();
        let writers: BTreeMap<String, usize> = built.iter().enumerate().map(|(i, s)| (s.target.clone(), i)).collect();
        for i in 0..built.len() {
            let mut depends_on = BTreeSet::new();
            for name in &built[i].step.depends_on {
                let Some(&j) = index.get(name) else {
                    let known: Vec<&str> = built.iter().map(|s| s.name.as_str()).collect();
                    let hint = crate::suggest::did_you_mean(name, known.iter().copied());
                    return Err(error(
                        &built[i].step,
                        &built[i].name,
                        format!("DEPENDS ON an unknown step `{name}`{hint}"),
                    ));
                };
                depends_on.insert(j);
            }
            depends_on.extend(built[i].reads.iter().filter_map(|table| writers.get(table)).filter(|&&j| j != i));
            built[i].depends_on = depends_on.into_iter().collect();
        }
        let dag = Self { steps: built };
        if let Some(i) = dag.cycle() {
            let step = &dag.steps[i];
            return Err(error(&step.step, &step.name, "its dependencies lead back to it (a cycle)".to_string()));
        }
        Ok(dag)
    }

    /// A step on a cycle, if there is one (Kahn's algorithm leaves it unordered).
    fn cycle(&self) -> Option<usize> {
        let levels = self.levels();
        levels.iter().position(Option::is_none)
    }

    /// Each step's level: 0 for steps that wait for nothing, else one more than the highest of
    /// the steps it waits for. Steps of one level can run at the same time. `None` on a cycle.
    pub fn levels(&self) -> Vec<Option<usize>> {
        let mut levels: Vec<Option<usize>> = vec![None; self.steps.len()];
        loop {
            let mut changed = false;
            for (i, step) in self.steps.iter().enumerate() {
                if levels[i].is_some() {
                    continue;
                }
                let waits: Option<Vec<usize>> = step.depends_on.iter().map(|&j| levels[j]).collect();
                if let Some(waits) = waits {
                    levels[i] = Some(waits.into_iter().max().map_or(0, |l| l + 1));
                    changed = true;
                }
            }
            if !changed {
                return levels;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::{PipelineBody, parse};

    fn dag(body: &str) -> Result<Dag, PipelineError> {
        let sql = format!("CREATE PIPELINE p AS BEGIN {body} END");
        let Statement::CreatePipeline(create) = parse(&sql).unwrap().remove(0).statement else { panic!() };
        let PipelineBody::Steps(steps) = create.body else { panic!() };
        Dag::build("p", &steps, &|name: &ObjectName| name.to_string())
    }

    #[test]
    fn dependencies_come_from_reads_and_depends_on() {
        let diamond = dag("INSERT INTO l.s.a SELECT 1;
             STEP b AS INSERT INTO l.s.b SELECT * FROM l.s.a;
             STEP c AS INSERT INTO l.s.c WITH x AS (SELECT * FROM l.s.a) SELECT * FROM x;
             STEP d DEPENDS ON (c) AS INSERT INTO l.s.d SELECT * FROM l.s.b;")
        .unwrap();
        let deps: Vec<(&str, Vec<usize>)> =
            diamond.steps.iter().map(|s| (s.name.as_str(), s.depends_on.clone())).collect();
        assert_eq!(deps, [("a", vec![]), ("b", vec![0]), ("c", vec![0]), ("d", vec![1, 2])]);
        assert_eq!(diamond.levels(), [Some(0), Some(1), Some(1), Some(2)]);
    }

    #[test]
    fn bad_graphs_are_refused_naming_the_step_and_its_position() {
        let cycle =
            dag("STEP a AS INSERT INTO l.s.a SELECT * FROM l.s.b;\n STEP b AS INSERT INTO l.s.b SELECT * FROM l.s.a;");
        let cycle = cycle.unwrap_err().to_string();
        assert!(cycle.contains("step `a`") && cycle.contains("line 1") && cycle.contains("cycle"), "{cycle}");
        let twice = dag("STEP a AS INSERT INTO l.s.t SELECT 1;\n  STEP b AS INSERT INTO l.s.t SELECT 2;")
            .unwrap_err()
            .to_string();
        assert!(twice.contains("step `b` (line 2, column 3)") && twice.contains("one table, one writer"), "{twice}");
        let unknown = dag("STEP a DEPENDS ON (nope) AS INSERT INTO l.s.a SELECT 1;").unwrap_err().to_string();
        assert!(unknown.contains("unknown step `nope`"), "{unknown}");
    }
}
