//! Where in its input file a row that does not fit its table is. After a write fails schema
//! enforcement, a write whose rows are one file table's rows one for one (projections of a scan
//! with no filter, join, aggregate or limit) reads its files again, one at a time, in one
//! partition (so in file order), checks each batch as the shards did ([`conform`]), and names
//! the first row that fails as the run did (the same column and value): its line for CSV and
//! newline-delimited JSON, else its row number. At most [`ROWS_CHECKED_ALONE`] rows are checked
//! one by one (those of batches with an unfit row), and the whole search gets [`BUDGET`].

/// How long the search may take before the error is reported without the place (a huge file).
pub(super) const BUDGET: std::time::Duration = std::time::Duration::from_secs(10);

/// The most rows checked one at a time, in batches that do not fit, before giving up.
const ROWS_CHECKED_ALONE: usize = 100_000;

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::listing::{ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::datasource::{TableProvider, provider_as_source, source_as_provider};
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::{LogicalPlan, TableScan};
use futures::{StreamExt, TryStreamExt};

use super::Engine;
use crate::runtime::conform;

impl Engine {
    /// Where the first row of `input` that does not fit `target` as `unfit` says (the shard's
    /// error) is in `input`'s file, when `input` reads one file table row for row:
    /// `/data/orders.csv, line 7`, `/data/orders.parquet, row 12`. `None` when it is not such a
    /// write or the row is not found.
    pub(super) async fn locate_unfit_row(
        &self,
        input: &LogicalPlan,
        target: &SchemaRef,
        unfit: &str,
    ) -> Option<String> {
        let scan = row_for_row_scan(input)?;
        let provider = source_as_provider(&scan.source).ok()?;
        let listing = provider.as_any().downcast_ref::<ListingTable>()?;
        let options = listing.options();
        if !options.table_partition_cols.is_empty() {
            return None;
        }
        let config = self.ctx.state().config().clone().with_target_partitions(1).with_repartition_file_scans(false);
        let state = SessionStateBuilder::new_from_existing(self.ctx.state()).with_config(config).build();
        let mut checked = 0;
        for url in listing.table_paths() {
            let store_url = url.object_store();
            let store = state.runtime_env().object_store(&store_url).ok()?;
            let mut files: Vec<_> = url
                .list_all_files(&state, store.as_ref(), &options.file_extension)
                .await
                .ok()?
                .try_collect()
                .await
                .ok()?;
            files.sort_by(|a, b| a.location.cmp(&b.location));
            for file in files {
                let name = crate::sources::file_name(&store_url, &file.location);
                let single = ListingTableUrl::parse(format!("{}{}", store_url.as_str(), file.location)).ok()?;
                let table =
                    ListingTableConfig::new(single).with_listing_options(options.clone()).with_schema(listing.schema());
                let table = provider_as_source(Arc::new(ListingTable::try_new(table).ok()?));
                let plan = input
                    .clone()
                    .transform_up(|node| match node {
                        LogicalPlan::TableScan(scan) => {
                            Ok(Transformed::yes(LogicalPlan::TableScan(TableScan { source: table.clone(), ..scan })))
                        }
                        other => Ok(Transformed::no(other)),
                    })
                    .ok()?
                    .data;
                let plan = state.create_physical_plan(&plan).await.ok()?;
                let mut batches = datafusion::physical_plan::execute_stream(plan, state.task_ctx()).ok()?;
                let mut row = 0;
                let mut found = None;
                while let Some(batch) = batches.next().await {
                    let batch = batch.ok()?;
                    if conform(batch.clone(), target).is_ok() {
                        row += batch.num_rows();
                        continue;
                    }
                    checked += batch.num_rows();
                    if checked > ROWS_CHECKED_ALONE {
                        return None;
                    }
                    let same = |i: &usize| conform(batch.slice(*i, 1), target).is_err_and(|e| e.to_string() == unfit);
                    if let Some(i) = (0..batch.num_rows()).find(same) {
                        found = Some(row + i);
                        break;
                    }
                    row += batch.num_rows();
                }
                if let Some(row) = found {
                    let line =
                        crate::sources::line_of_record(store.clone(), &file.location, options.format.as_ref(), row)
                            .await
                            .ok()
                            .flatten();
                    return Some(match line {
                        Some(line) => format!("{name}, line {line}"),
                        None => format!("{name}, row {}", row + 1),
                    });
                }
            }
        }
        None
    }
}

/// The scan whose rows `plan` gives one for one, if it does.
fn row_for_row_scan(plan: &LogicalPlan) -> Option<&TableScan> {
    match plan {
        LogicalPlan::Projection(projection) => row_for_row_scan(&projection.input),
        LogicalPlan::SubqueryAlias(alias) => row_for_row_scan(&alias.input),
        LogicalPlan::TableScan(scan) if scan.filters.is_empty() && scan.fetch.is_none() => Some(scan),
        _ => None,
    }
}
