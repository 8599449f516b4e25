//! Tables as a run will publish them. An atomic pipeline publishes nothing until every step has
//! staged its output, so a step reads the tables that earlier steps of the same run wrote as
//! those steps left them: their held commits' metadata, over the staged files
//! ([`crate::runtime::HeldCommit::provider`]). The engine plans a step inside [`reading_pending`];
//! a catalog's table lookup asks [`pending_table`] before it loads the published table.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use datafusion::catalog::TableProvider;

use crate::table::TableName;

/// Tables by full name (`catalog.schema.table`), as the run will publish them.
pub type PendingTables = HashMap<String, Arc<dyn TableProvider>>;

tokio::task_local! {
    static PENDING: Arc<PendingTables>;
}

/// Runs `future` (the planning of a step) with `tables` standing in for their published state.
pub async fn reading_pending<F: Future>(tables: PendingTables, future: F) -> F::Output {
    PENDING.scope(Arc::new(tables), future).await
}

/// The table `name` as the current run will publish it, when the run holds a commit of it.
pub fn pending_table(name: &TableName) -> Option<Arc<dyn TableProvider>> {
    PENDING.try_with(|tables| tables.get(&name.to_string()).cloned()).ok().flatten()
}
