//! DDL on our catalogs: `CREATE` / `DROP SCHEMA`, `CREATE TABLE [... AS]`, `DROP TABLE`. Plans
//! that touch a catalog of ours go here instead of to DataFusion's in-memory tables.

use datafusion::common::SchemaReference;
use datafusion::logical_expr::{DdlStatement, LogicalPlan};

use super::write::Insert;
use super::{Engine, Output};
use crate::coordinator::RunOrigin;
use crate::error::{Error, Result};
use crate::table::{PartitionField, WriteMode};

impl Engine {
    /// Handles plans that touch our catalogs; `None` leaves the plan to DataFusion.
    pub(super) async fn execute_catalog_plan(
        &self,
        plan: &LogicalPlan,
        partition_by: &[PartitionField],
        statement: String,
    ) -> Result<Option<Output>> {
        let origin = RunOrigin { statement, ..RunOrigin::default() };
        if let LogicalPlan::Dml(_) = plan
            && let Some(insert) = self.insert_target(plan.clone())?
        {
            return Ok(Some(Output::run(self.write(insert, self.shards, origin).await?)));
        }
        let LogicalPlan::Ddl(ddl) = plan else { return Ok(None) };
        self.require_catalog(ddl)?;
        match ddl {
            DdlStatement::CreateCatalogSchema(create) => {
                let Some((catalog, schema)) = create.schema_name.split_once('.') else { return Ok(None) };
                let Some(catalog) = self.catalog_of(catalog) else { return Ok(None) };
                catalog.create_schema(schema, create.if_not_exists).await?;
            }
            DdlStatement::DropCatalogSchema(drop) => {
                let SchemaReference::Full { catalog, schema } = &drop.name else { return Ok(None) };
                let Some(catalog) = self.catalog_of(catalog) else { return Ok(None) };
                if drop.cascade {
                    return Err(Error::Unsupported("DROP SCHEMA ... CASCADE: drop the tables first".to_string()));
                }
                catalog.drop_schema(schema, drop.if_exists).await?;
            }
            DdlStatement::CreateMemoryTable(create) => {
                let table = self.resolve(&create.name);
                let Some(catalog) = self.catalog_of(&table.catalog) else { return Ok(None) };
                if create.or_replace || create.temporary {
                    return Err(Error::Unsupported(format!("CREATE OR REPLACE / TEMPORARY TABLE `{table}`")));
                }
                let schema = create.input.schema().as_arrow().clone();
                if !catalog.create_table(&table, &schema, partition_by, create.if_not_exists).await? {
                    return Ok(Some(Output::empty()));
                }
                if matches!(create.input.as_ref(), LogicalPlan::EmptyRelation(_)) {
                    return Ok(Some(Output::empty()));
                }
                // CREATE TABLE ... AS SELECT: the table exists only if its data committed.
                let insert = Insert {
                    table: table.clone(),
                    input: create.input.as_ref().clone(),
                    mode: WriteMode::Append,
                    writer: None,
                };
                return match self.write(insert, self.shards, origin).await {
                    Ok(report) => Ok(Some(Output::run(report))),
                    Err(error) => {
                        catalog.drop_table(&table, true).await?;
                        Err(error)
                    }
                };
            }
            DdlStatement::DropTable(drop) => {
                let table = self.resolve(&drop.name);
                let Some(catalog) = self.catalog_of(&table.catalog) else { return Ok(None) };
                catalog.drop_table(&table, drop.if_exists).await?;
            }
            DdlStatement::CreateExternalTable(create) => {
                let table = self.resolve(&create.name);
                if self.catalog_of(&table.catalog).is_some() {
                    return Err(Error::Unsupported(format!(
                        "CREATE EXTERNAL TABLE `{table}`: external tables live in the session catalog, not in an Iceberg catalog"
                    )));
                }
                return Ok(None);
            }
            _ => return Ok(None),
        }
        Ok(Some(Output::empty()))
    }

    /// DataFusion's own message for DDL on a catalog that does not exist does not name it well.
    pub(super) fn require_catalog(&self, ddl: &DdlStatement) -> Result<()> {
        let catalog = match ddl {
            DdlStatement::CreateCatalogSchema(create) => create.schema_name.split_once('.').map(|(c, _)| c.to_string()),
            DdlStatement::DropCatalogSchema(drop) => match &drop.name {
                SchemaReference::Full { catalog, .. } => Some(catalog.to_string()),
                SchemaReference::Bare { .. } => None,
            },
            DdlStatement::CreateMemoryTable(create) => Some(self.resolve(&create.name).catalog),
            DdlStatement::DropTable(drop) => Some(self.resolve(&drop.name).catalog),
            _ => None,
        };
        let known = self.ctx.catalog_names();
        match catalog {
            Some(catalog) if !known.contains(&catalog) => {
                Err(Error::UnknownCatalog { catalog, known: known.join(", ") })
            }
            _ => Ok(()),
        }
    }
}
