//! Durable state in redb: the leases this node granted, the leases it holds
//! on other nodes, the signed swarm-state events (groups and pools) it has
//! seen, and small metadata (the access policy).
//!
//! A grant is written and committed (fsync) before its reply leaves the
//! node, so a restart, even after `kill -9`, keeps every active lease.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::model::{Lease, LeaseId};

const GRANTED: TableDefinition<&str, &[u8]> = TableDefinition::new("granted_v1");
const HELD: TableDefinition<&str, &[u8]> = TableDefinition::new("held_v1");
/// Signed state events, keyed by their signed payload (unique per event).
const EVENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("events_v1");
/// Small named records, postcard-encoded.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta_v1");

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
        }
        txn.commit().map_err(redb_err)
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
}
