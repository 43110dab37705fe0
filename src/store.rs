//! Durable state in redb: the leases this node granted, the leases it holds
//! on other nodes, the signed swarm-state events (groups and pools) it has
//! seen, small metadata (the access policy), and the allocation history
//! (audit log), keyed by a monotonic id.
//!
//! A grant is written and committed (fsync) before its reply leaves the
//! node, so a restart, even after `kill -9`, keeps every active lease.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::core::history::{self, HistoryConfig, HistoryEvent, HistoryQuery};
use crate::model::{Lease, LeaseId};

const GRANTED: TableDefinition<&str, &[u8]> = TableDefinition::new("granted_v1");
const HELD: TableDefinition<&str, &[u8]> = TableDefinition::new("held_v1");
/// Signed state events, keyed by their signed payload (unique per event).
const EVENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("events_v1");
/// Small named records, postcard-encoded.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta_v1");
/// The allocation history: postcard [`HistoryEvent`]s by id, which grows
/// by one per record over the node's life (restarts included).
const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("history_v1");
/// Usage accounting: postcard [`crate::core::usage::Bucket`]s by the
/// start of their hour, ms since the epoch.
const USAGE: TableDefinition<u64, &[u8]> = TableDefinition::new("usage_v1");
/// Metadata key of the next history id, kept when pruning empties the
/// table, so ids are never reused.
const META_HISTORY_NEXT: &str = "history_next_id";

/// An error of the durable store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening the store at {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("store: {0}")]
    Redb(String),
    #[error("store: record {key} does not decode: {source}")]
    Decode {
        key: String,
        #[source]
        source: postcard::Error,
    },
}

fn redb_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Redb(e.to_string())
}

/// A lease this node holds on some owner (possibly itself), as stored.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HeldRecord {
    pub lease: Lease,
    /// Name of the owner, for display.
    pub owner_name: String,
    /// When the holder stops renewing and releases, if ever.
    pub release_at_ms: Option<u64>,
}

/// Writes to apply together in one transaction (one fsync).
///
/// The event loop collects writes whose durability can wait (releases,
/// expiries, the holder's own records) and flushes them with the next
/// grant or on the next maintenance tick. Losing them in a crash is safe:
/// a released lease that comes back after a restart merely expires.
#[derive(Debug, Default)]
pub struct WriteBatch {
    pub put_granted: Vec<Lease>,
    pub delete_granted: Vec<LeaseId>,
    pub put_held: Vec<HeldRecord>,
    pub delete_held: Vec<LeaseId>,
    /// Signed state events to keep, as (key, postcard of the signed event).
    pub put_events: Vec<(Vec<u8>, Vec<u8>)>,
    /// Keys of state events superseded (pools keep one event per name).
    pub delete_events: Vec<Vec<u8>>,
    /// Named metadata records, already encoded.
    pub put_meta: Vec<(String, Vec<u8>)>,
    /// History records to append; the store gives each its id.
    pub history: Vec<HistoryEvent>,
}

impl WriteBatch {
    pub fn is_empty(&self) -> bool {
        self.put_granted.is_empty()
            && self.delete_granted.is_empty()
            && self.put_held.is_empty()
            && self.delete_held.is_empty()
            && self.put_events.is_empty()
            && self.delete_events.is_empty()
            && self.put_meta.is_empty()
            && self.history.is_empty()
    }
}

/// The redb database of one node.
pub struct Store {
    db: Database,
}

impl Store {
    /// Open (or create) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        let txn = db.begin_write().map_err(redb_err)?;
        txn.open_table(GRANTED).map_err(redb_err)?;
        txn.open_table(HELD).map_err(redb_err)?;
        txn.open_table(EVENTS).map_err(redb_err)?;
        txn.open_table(META).map_err(redb_err)?;
        txn.open_table(HISTORY).map_err(redb_err)?;
        txn.open_table(USAGE).map_err(redb_err)?;
        txn.commit().map_err(redb_err)?;
        Ok(Store { db })
    }

    /// Apply a batch in one durable transaction: puts first, then deletes.
    pub fn apply(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(redb_err)?;
        {
            let mut t = txn.open_table(GRANTED).map_err(redb_err)?;
            for l in &batch.put_granted {
                let bytes = postcard::to_stdvec(l).map_err(redb_err)?;
                t.insert(l.lease_id.0.as_str(), bytes.as_slice())
                    .map_err(redb_err)?;
            }
            for id in &batch.delete_granted {
                t.remove(id.0.as_str()).map_err(redb_err)?;
            }
            let mut t = txn.open_table(HELD).map_err(redb_err)?;
            for r in &batch.put_held {
                let bytes = postcard::to_stdvec(r).map_err(redb_err)?;
                t.insert(r.lease.lease_id.0.as_str(), bytes.as_slice())
                    .map_err(redb_err)?;
            }
            for id in &batch.delete_held {
                t.remove(id.0.as_str()).map_err(redb_err)?;
            }
            let mut t = txn.open_table(EVENTS).map_err(redb_err)?;
            for (k, v) in &batch.put_events {
                t.insert(k.as_slice(), v.as_slice()).map_err(redb_err)?;
            }
            for k in &batch.delete_events {
                t.remove(k.as_slice()).map_err(redb_err)?;
            }
            let mut t = txn.open_table(META).map_err(redb_err)?;
            for (k, v) in &batch.put_meta {
                t.insert(k.as_str(), v.as_slice()).map_err(redb_err)?;
            }
            if !batch.history.is_empty() {
                // `t` is still the metadata table: it holds the next id
                // when pruning emptied the history.
                let mut h = txn.open_table(HISTORY).map_err(redb_err)?;
                let last = h.last().map_err(redb_err)?.map(|(k, _)| k.value());
                let first = match last {
                    Some(k) => k + 1,
                    None => t
                        .get(META_HISTORY_NEXT)
                        .map_err(redb_err)?
                        .and_then(|v| postcard::from_bytes::<u64>(v.value()).ok())
                        .unwrap_or(1),
                };
                for (id, ev) in (first..).zip(&batch.history) {
                    let ev = HistoryEvent { id, ..ev.clone() };
                    let bytes = postcard::to_stdvec(&ev).map_err(redb_err)?;
                    h.insert(id, bytes.as_slice()).map_err(redb_err)?;
                }
            }
        }
        txn.commit().map_err(redb_err)
    }

    /// History records that match `q`, newest first, at most `q.limit`.
    /// A record that does not decode is skipped.
    pub fn history(&self, q: &HistoryQuery) -> Result<Vec<HistoryEvent>, StoreError> {
        let txn = self.db.begin_read().map_err(redb_err)?;
        let t = txn.open_table(HISTORY).map_err(redb_err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(redb_err)?.rev() {
            if out.len() >= q.limit {
                break;
            }
            let (_, v) = row.map_err(redb_err)?;
            if let Ok(ev) = postcard::from_bytes::<HistoryEvent>(v.value()) {
                if q.matches(&ev) {
                    out.push(ev);
                }
            }
        }
        Ok(out)
    }

    /// How many history records are stored.
    pub fn history_len(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(redb_err)?;
        let t = txn.open_table(HISTORY).map_err(redb_err)?;
        t.len().map_err(redb_err)
    }

    /// Prune the history by `cfg` ([`history::prune_count`]): records past
    /// retention and the oldest beyond `max_events` go, in one
    /// transaction. Returns how many went.
    pub fn prune_history(&self, now_ms: u64, cfg: &HistoryConfig) -> Result<usize, StoreError> {
        let txn = self.db.begin_write().map_err(redb_err)?;
        let pruned = {
            let mut t = txn.open_table(HISTORY).map_err(redb_err)?;
            let total = usize::try_from(t.len().map_err(redb_err)?).unwrap_or(usize::MAX);
            let mut read_error = None;
            let n = {
                // Read lazily, oldest first: `prune_count` stops at the
                // first record it keeps. One that does not decode counts
                // as the oldest possible.
                let times = t.iter().map_err(redb_err)?.map_while(|row| match row {
                    Ok((_, v)) => {
                        Some(postcard::from_bytes::<HistoryEvent>(v.value()).map_or(0, |e| e.at_ms))
                    }
                    Err(e) => {
                        read_error = Some(e);
                        None
                    }
                });
                history::prune_count(times, total, now_ms, cfg)
            };
            if let Some(e) = read_error {
                return Err(redb_err(e));
            }
            if n >= total {
                if let Some((k, _)) = t.last().map_err(redb_err)? {
                    let next = postcard::to_stdvec(&(k.value() + 1)).map_err(redb_err)?;
                    let mut meta = txn.open_table(META).map_err(redb_err)?;
                    meta.insert(META_HISTORY_NEXT, next.as_slice())
                        .map_err(redb_err)?;
                }
            }
            for _ in 0..n {
                t.pop_first().map_err(redb_err)?;
            }
            n
        };
        txn.commit().map_err(redb_err)?;
        Ok(pruned)
    }

    /// Every granted lease in the store.
    pub fn granted(&self) -> Result<Vec<Lease>, StoreError> {
        self.load(GRANTED)
    }

    /// Every held lease in the store.
    pub fn held(&self) -> Result<Vec<HeldRecord>, StoreError> {
        self.load(HELD)
    }

    /// Every stored state event, as stored (postcard of the signed event).
    pub fn events(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(redb_err)?;
        let t = txn.open_table(EVENTS).map_err(redb_err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(redb_err)? {
            let (_, v) = row.map_err(redb_err)?;
            out.push(v.value().to_vec());
        }
        Ok(out)
    }

    /// A metadata record, decoded, if present.
    pub fn meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let txn = self.db.begin_read().map_err(redb_err)?;
        let t = txn.open_table(META).map_err(redb_err)?;
        let Some(v) = t.get(key).map_err(redb_err)? else {
            return Ok(None);
        };
        postcard::from_bytes(v.value())
            .map(Some)
            .map_err(|source| StoreError::Decode {
                key: key.to_owned(),
                source,
            })
    }

    /// The hourly usage buckets kept (see [`crate::core::usage`]), with
    /// how many records did not decode (skipped, and overwritten by the
    /// next write of their hour).
    pub fn usage_buckets(
        &self,
    ) -> Result<(Vec<(u64, crate::core::usage::Bucket)>, usize), StoreError> {
        let txn = self.db.begin_read().map_err(redb_err)?;
        let t = txn.open_table(USAGE).map_err(redb_err)?;
        let (mut out, mut bad) = (Vec::new(), 0);
        for row in t.iter().map_err(redb_err)? {
            let (k, v) = row.map_err(redb_err)?;
            match postcard::from_bytes(v.value()) {
                Ok(b) => out.push((k.value(), b)),
                Err(_) => bad += 1,
            }
        }
        Ok((out, bad))
    }

    /// Write changed usage buckets and delete expired ones, in one
    /// transaction.
    pub fn apply_usage(&self, changes: &crate::core::usage::Changes) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(redb_err)?;
        {
            let mut t = txn.open_table(USAGE).map_err(redb_err)?;
            for (hour, bucket) in &changes.put {
                let bytes = postcard::to_stdvec(bucket).map_err(redb_err)?;
                t.insert(*hour, bytes.as_slice()).map_err(redb_err)?;
            }
            for hour in &changes.delete {
                t.remove(*hour).map_err(redb_err)?;
            }
        }
        txn.commit().map_err(redb_err)
    }

    fn load<T: serde::de::DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<T>, StoreError> {
        let txn = self.db.begin_read().map_err(redb_err)?;
        let t = txn.open_table(table).map_err(redb_err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(redb_err)? {
            let (k, v) = row.map_err(redb_err)?;
            let item = postcard::from_bytes(v.value()).map_err(|source| StoreError::Decode {
                key: k.value().to_owned(),
                source,
            })?;
            out.push(item);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NodeId, Priority};

    fn lease(id: &str) -> Lease {
        Lease {
            lease_id: LeaseId(id.into()),
            request_id: "r".into(),
            node_id: NodeId("o".into()),
            holder: NodeId("h".into()),
            cpu_cores: 1,
            memory_mb: 2,
            disk_mb: 0,
            gpus: vec![],
            custom: Default::default(),
            models: vec![],
            task_type: String::new(),
            priority: Priority::Normal,
            created_at_ms: 1,
            expires_at_ms: 2,
            lease_ms: 1,
        }
    }

    #[test]
    fn a_batch_applies_puts_then_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.redb")).unwrap();
        s.apply(&WriteBatch {
            put_granted: vec![lease("old")],
            ..Default::default()
        })
        .unwrap();
        let held = HeldRecord {
            lease: lease("h"),
            owner_name: "x".into(),
            release_at_ms: None,
        };
        s.apply(&WriteBatch {
            put_granted: vec![lease("a"), lease("b")],
            delete_granted: vec![LeaseId("old".into()), LeaseId("b".into())],
            put_held: vec![held.clone()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.granted().unwrap(), vec![lease("a")]);
        assert_eq!(s.held().unwrap(), vec![held]);
    }

    #[test]
    fn leases_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let s = Store::open(&path).unwrap();
            s.apply(&WriteBatch {
                put_granted: vec![lease("a"), lease("b")],
                put_held: vec![HeldRecord {
                    lease: lease("c"),
                    owner_name: "x".into(),
                    release_at_ms: None,
                }],
                ..Default::default()
            })
            .unwrap();
            s.apply(&WriteBatch {
                delete_granted: vec![LeaseId("a".into())],
                ..Default::default()
            })
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.granted().unwrap(), vec![lease("b")]);
        assert_eq!(s.held().unwrap().len(), 1);
    }

    #[test]
    fn events_and_meta_survive_reopen_and_deletes_apply() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let s = Store::open(&path).unwrap();
            s.apply(&WriteBatch {
                put_events: vec![
                    (b"k1".to_vec(), b"v1".to_vec()),
                    (b"k2".to_vec(), b"v2".to_vec()),
                ],
                put_meta: vec![("policy".into(), postcard::to_stdvec(&7u32).unwrap())],
                ..Default::default()
            })
            .unwrap();
            s.apply(&WriteBatch {
                delete_events: vec![b"k1".to_vec()],
                ..Default::default()
            })
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.events().unwrap(), vec![b"v2".to_vec()]);
        assert_eq!(s.meta::<u32>("policy").unwrap(), Some(7));
        assert_eq!(s.meta::<u32>("other").unwrap(), None);
    }

    fn hist(at_ms: u64, kind: crate::core::history::HistoryKind, requester: &str) -> HistoryEvent {
        use crate::core::history::{Outcome, Role};
        HistoryEvent::new(
            at_ms,
            kind,
            Role::Owner,
            Outcome::Granted,
            Some(NodeId(requester.into())),
            Some(NodeId("o".into())),
            None,
            None,
            None,
            "d",
        )
    }

    #[test]
    fn history_ids_grow_across_reopen_and_queries_read_newest_first() {
        use crate::core::history::HistoryKind::{Denial, Grant};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let s = Store::open(&path).unwrap();
            s.apply(&WriteBatch {
                put_granted: vec![lease("a")],
                history: vec![hist(10, Grant, "r1"), hist(20, Denial, "r2")],
                ..Default::default()
            })
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.granted().unwrap(), vec![lease("a")], "same transaction");
        s.apply(&WriteBatch {
            history: vec![hist(30, Grant, "r2")],
            ..Default::default()
        })
        .unwrap();
        let all = s.history(&HistoryQuery::default()).unwrap();
        let ids: Vec<u64> = all.iter().map(|e| e.id).collect();
        assert_eq!(
            ids,
            vec![3, 2, 1],
            "newest first, ids continue after reopen"
        );
        assert_eq!(all[0].at_ms, 30);

        let q = HistoryQuery {
            requester: Some(NodeId("r2".into())),
            ..Default::default()
        };
        let ids: Vec<u64> = s.history(&q).unwrap().iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![3, 2]);
        let q = HistoryQuery {
            kinds: [Grant].into_iter().collect(),
            limit: 1,
            ..Default::default()
        };
        let ids: Vec<u64> = s.history(&q).unwrap().iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![3], "limit applies after the filter");
        let q = HistoryQuery {
            since_ms: Some(15),
            until_ms: Some(25),
            ..Default::default()
        };
        let ids: Vec<u64> = s.history(&q).unwrap().iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![2]);
    }

    #[test]
    fn history_prunes_by_age_and_count_and_ids_keep_growing() {
        use crate::core::history::HistoryKind::Grant;
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.redb")).unwrap();
        s.apply(&WriteBatch {
            history: (1..=10).map(|t| hist(t * 100, Grant, "r")).collect(),
            ..Default::default()
        })
        .unwrap();
        let cfg = HistoryConfig {
            retention: std::time::Duration::from_millis(650),
            max_events: 4,
        };
        // At 1000 the cutoff is 350: 100..=300 go by age, then 400..=600
        // so that four remain.
        assert_eq!(s.prune_history(1000, &cfg).unwrap(), 6);
        assert_eq!(s.history_len().unwrap(), 4);
        let times: Vec<u64> = s
            .history(&HistoryQuery::default())
            .unwrap()
            .iter()
            .map(|e| e.at_ms)
            .collect();
        assert_eq!(times, vec![1000, 900, 800, 700]);
        assert_eq!(s.prune_history(1000, &cfg).unwrap(), 0, "nothing more");
        s.apply(&WriteBatch {
            history: vec![hist(1100, Grant, "r")],
            ..Default::default()
        })
        .unwrap();
        let newest = &s.history(&HistoryQuery::default()).unwrap()[0];
        assert_eq!(newest.id, 11, "ids never reuse pruned ones");
        // Everything past retention: all go, the table stays usable.
        assert_eq!(s.prune_history(1_000_000, &cfg).unwrap(), 5);
        assert_eq!(s.history_len().unwrap(), 0);
        s.apply(&WriteBatch {
            history: vec![hist(1_000_001, Grant, "r")],
            ..Default::default()
        })
        .unwrap();
        let newest = &s.history(&HistoryQuery::default()).unwrap()[0];
        assert_eq!(newest.id, 12, "ids go on after the table was emptied");
    }
}
