//! Staged files in the ledger: recorded before they exist, then committed, or deleted and (on
//! a later recovery) verified gone.

use sqlx::Row;

use super::{Ledger, Result, query_error};

impl Ledger {
    /// Step 2: records staged files' paths before the files are opened, all in one transaction.
    pub async fn stage_files(&self, run_id: &str, shard: usize, paths: &[String]) -> Result<()> {
        let mut transaction = self.pool.begin().await.map_err(query_error("recording staged files"))?;
        for path in paths {
            sqlx::query("INSERT OR REPLACE INTO staged_files (path, run_id, shard, state) VALUES (?, ?, ?, 'staged')")
                .bind(path)
                .bind(run_id)
                .bind(shard as i64)
                .execute(&mut *transaction)
                .await
                .map_err(query_error("recording a staged file"))?;
        }
        transaction.commit().await.map_err(query_error("recording staged files"))
    }

    /// Every file the run staged that has not been deleted or committed yet.
    pub async fn staged_files(&self, run_id: &str) -> Result<Vec<String>> {
        self.files_of(run_id, "state = 'staged'").await
    }

    /// Every file the run staged and did not commit, deleted already or not.
    pub async fn uncommitted_files(&self, run_id: &str) -> Result<Vec<String>> {
        self.files_of(run_id, "state != 'committed'").await
    }

    /// The run's staged files in states matching `state`.
    async fn files_of(&self, run_id: &str, state: &str) -> Result<Vec<String>> {
        let sql = format!("SELECT path FROM staged_files WHERE run_id = ? AND {state} ORDER BY path");
        let rows = self.fetch_all("listing staged files", sqlx::query(&sql).bind(run_id)).await?;
        Ok(rows.iter().map(|r| r.get::<String, _>("path")).collect())
    }

    /// Marks the run's staged files as deleted (after the coordinator removed them); files that
    /// were deleted before are now `verified` (deleted a second time, after every writer of the
    /// run had long stopped).
    pub async fn mark_staged_files_deleted(&self, run_id: &str) -> Result<()> {
        self.execute(
            "marking staged files deleted",
            sqlx::query(
                "UPDATE staged_files SET state = CASE state WHEN 'staged' THEN 'deleted' ELSE 'verified' END
             WHERE run_id = ? AND state IN ('staged', 'deleted', 'verifying')",
            )
            .bind(run_id),
        )
        .await?;
        Ok(())
    }

    /// Files that rollbacks of now-failed runs deleted once, not yet checked again: (run id,
    /// target, path). Recovery deletes each again (a writer that outlived its run could have
    /// put one back) and marks it verified.
    pub async fn unverified_deletions(&self) -> Result<Vec<(String, String, String)>> {
        let rows = self
            .fetch_all(
                "listing deleted files to verify",
                sqlx::query(
                    "SELECT f.run_id, r.target, f.path FROM staged_files f JOIN runs r ON r.run_id = f.run_id
             WHERE f.state IN ('deleted', 'verifying') AND r.status IN ('failed', 'cancelled') ORDER BY f.run_id, f.path",
                ),
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get("run_id"), r.get("target"), r.get("path"))).collect())
    }

    /// Claims a deleted file of a failed run for its second deletion (`verifying`, so that a
    /// recovery killed half-way takes it up again); false when its run was retried meanwhile
    /// (the path is the retry's now, not ours to delete).
    pub async fn claim_verification(&self, path: &str) -> Result<bool> {
        self.set_verification(path, "verifying", "claiming a deleted file").await
    }

    /// Records that a claimed file is gone for good.
    pub async fn verified(&self, path: &str) -> Result<()> {
        self.set_verification(path, "verified", "marking a deleted file verified").await.map(|_| ())
    }

    async fn set_verification(&self, path: &str, state: &str, context: &'static str) -> Result<bool> {
        let done = self
            .execute(
                context,
                sqlx::query(
                    "UPDATE staged_files SET state = ? WHERE path = ? AND state IN ('deleted', 'verifying')
             AND run_id IN (SELECT run_id FROM runs WHERE status IN ('failed', 'cancelled'))",
                )
                .bind(state)
                .bind(path),
            )
            .await?;
        Ok(done == 1)
    }
}
