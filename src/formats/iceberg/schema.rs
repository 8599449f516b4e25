//! One Iceberg namespace as a DataFusion schema: its tables loaded live, time travel
//! (`"t@<snapshot>"`) and the metadata tables (`"t$snapshots"`, ..., in `inspect.rs`).

use std::any::Any;
use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::logical_expr::TableType;
use iceberg::{Catalog, ErrorKind, NamespaceIdent, TableIdent};
use iceberg_datafusion::IcebergStaticTableProvider;

use super::inspect;
use crate::catalog::{MetadataTable, TableRequest, pending_table};
use crate::table::TableName;

/// One Iceberg namespace seen as a DataFusion schema.
#[derive(Debug)]
pub(super) struct IcebergSchema {
    pub catalog: String,
    pub schema: String,
    pub tables: BTreeSet<String>,
    pub inner: Arc<dyn Catalog>,
}

fn external(e: iceberg::Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

#[async_trait]
impl SchemaProvider for IcebergSchema {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn table_names(&self) -> Vec<String> {
        self.tables.iter().cloned().collect()
    }

    async fn table(&self, name: &str) -> DFResult<Option<Arc<dyn TableProvider>>> {
        let request = TableRequest::parse(name);
        let base = request.base();
        let name = TableName::new(&self.catalog, &self.schema, base);
        name.check().map_err(|e| DataFusionError::Plan(e.to_string()))?;
        if let (TableRequest::Current(_), Some(pending)) = (&request, pending_table(&name)) {
            return Ok(Some(pending));
        }
        let table = match self
            .inner
            .load_table(&TableIdent::new(NamespaceIdent::new(self.schema.clone()), base.into()))
            .await
        {
            Ok(table) => table,
            Err(e) if matches!(e.kind(), ErrorKind::TableNotFound | ErrorKind::NamespaceNotFound) => return Ok(None),
            Err(e) => return Err(external(e)),
        };
        let provider: Arc<dyn TableProvider> = match request {
            TableRequest::Current(_) => {
                Arc::new(IcebergStaticTableProvider::try_new_from_table(table).await.map_err(external)?)
            }
            TableRequest::AsOf(_, snapshot_id) => {
                if table.metadata().snapshot_by_id(snapshot_id).is_none() {
                    let (catalog, schema) = (&self.catalog, &self.schema);
                    return Err(DataFusionError::Plan(format!(
                        "table `{catalog}.{schema}.{base}` has no snapshot {snapshot_id} \
                         (list them with SELECT * FROM {catalog}.{schema}.\"{base}$snapshots\")"
                    )));
                }
                Arc::new(
                    IcebergStaticTableProvider::try_new_from_table_snapshot(table, snapshot_id)
                        .await
                        .map_err(external)?,
                )
            }
            TableRequest::Metadata(_, MetadataTable::Snapshots) => inspect::snapshots_table(&table).await?,
            TableRequest::Metadata(_, MetadataTable::Files) => inspect::files_table(&table).await?,
            TableRequest::Metadata(_, MetadataTable::Partitions) => inspect::partitions_table(&table).await?,
            TableRequest::Metadata(_, other @ MetadataTable::History) => {
                let name = TableName::new(&self.catalog, &self.schema, base);
                let has = "$snapshots, $files and $partitions";
                return Err(DataFusionError::Plan(other.unsupported(&name, "Iceberg", has)));
            }
        };
        Ok(Some(provider))
    }

    /// From the listing, without loading the table: `SHOW TABLES` and `information_schema` ask
    /// this of every table, and one table with unreadable metadata must not fail them all.
    async fn table_type(&self, name: &str) -> DFResult<Option<TableType>> {
        Ok(self.tables.contains(name).then_some(TableType::Base))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.tables.contains(name)
    }
}
