//! `work.redb`: the requester's task and job records, postcard-encoded.

use std::collections::BTreeMap;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::TaskRecord;
use crate::core::tasks::JobState;

const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks_v1");
const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs_v1");

pub(super) struct WorkStore {
    db: Database,
}

type Loaded = (BTreeMap<String, TaskRecord>, BTreeMap<String, JobState>);

impl WorkStore {
    pub(super) fn open(path: &Path) -> Result<Self, String> {
        let db = Database::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let txn = db.begin_write().map_err(|e| e.to_string())?;
        txn.open_table(TASKS).map_err(|e| e.to_string())?;
        txn.open_table(JOBS).map_err(|e| e.to_string())?;
        txn.commit().map_err(|e| e.to_string())?;
        Ok(WorkStore { db })
    }

    /// Every record; ones that no longer decode are skipped with a warning.
    pub(super) fn load(&self) -> Result<Loaded, String> {
        let txn = self.db.begin_read().map_err(|e| e.to_string())?;
        let mut tasks = BTreeMap::new();
        let t = txn.open_table(TASKS).map_err(|e| e.to_string())?;
        for row in t.iter().map_err(|e| e.to_string())? {
            let (k, v) = row.map_err(|e| e.to_string())?;
            match postcard::from_bytes::<TaskRecord>(v.value()) {
                Ok(r) => {
                    tasks.insert(k.value().to_owned(), r);
                }
                Err(e) => {
                    tracing::warn!(task = k.value(), error = %e, "unreadable task record skipped")
                }
            }
        }
        let mut jobs = BTreeMap::new();
        let j = txn.open_table(JOBS).map_err(|e| e.to_string())?;
        for row in j.iter().map_err(|e| e.to_string())? {
            let (k, v) = row.map_err(|e| e.to_string())?;
            match postcard::from_bytes::<JobState>(v.value()) {
                Ok(r) => {
                    jobs.insert(k.value().to_owned(), r);
                }
                Err(e) => {
                    tracing::warn!(job = k.value(), error = %e, "unreadable job record skipped")
                }
            }
        }
        Ok((tasks, jobs))
    }

    fn put(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        bytes: &[u8],
    ) -> Result<(), String> {
        let txn = self.db.begin_write().map_err(|e| e.to_string())?;
        txn.open_table(table)
            .map_err(|e| e.to_string())?
            .insert(key, bytes)
            .map_err(|e| e.to_string())?;
        txn.commit().map_err(|e| e.to_string())
    }

    fn delete(&self, table: TableDefinition<&str, &[u8]>, key: &str) -> Result<(), String> {
        let txn = self.db.begin_write().map_err(|e| e.to_string())?;
        txn.open_table(table)
            .map_err(|e| e.to_string())?
            .remove(key)
            .map_err(|e| e.to_string())?;
        txn.commit().map_err(|e| e.to_string())
    }

    pub(super) fn put_task(&self, rec: &TaskRecord) -> Result<(), String> {
        let bytes = postcard::to_stdvec(rec).map_err(|e| e.to_string())?;
        self.put(TASKS, &rec.task_id, &bytes)
    }

    pub(super) fn put_job(&self, job: &JobState) -> Result<(), String> {
        let bytes = postcard::to_stdvec(job).map_err(|e| e.to_string())?;
        self.put(JOBS, &job.id, &bytes)
    }

    pub(super) fn delete_task(&self, id: &str) -> Result<(), String> {
        self.delete(TASKS, id)
    }

    pub(super) fn delete_job(&self, id: &str) -> Result<(), String> {
        self.delete(JOBS, id)
    }
}
