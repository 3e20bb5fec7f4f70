//! The state store: a small key-value trait with one conditional-write primitive.
//!
//! Concept: keys are strings, values bytes; a global revision counter increases with every
//! committed transaction and each key remembers the revision that created and last modified
//! it — exactly etcd's model, so the cluster backend maps 1:1. Every conditional write is ONE
//! `txn(compares, ops)`: ops are applied only if all compares hold, atomically and durably
//! (fsynced) before `Ok` is returned. IPAM allocations are create-if-absent transactions, so
//! they are compare-and-swap on every backend. Keep the trait small (cilium's lesson): new
//! needs are helpers over `txn`, not new methods.
//!
//! Backends, one file each: `memory` (unit tests of the domain), `redb` (the embedded
//! single-host store) and `etcd` (clusters; cargo feature `etcd`). `conformance` is the suite every backend must pass.

pub mod conformance;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod memory;
pub mod redb;
pub mod scoped;

use async_trait::async_trait;

/// A stored key with its value and revisions.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// Revision of the last change to this key.
    pub mod_revision: u64,
    /// Revision that created this key.
    pub create_revision: u64,
}

/// A condition of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist.
    Absent(String),
    /// The key exists with exactly this mod revision.
    ModRevision(String, u64),
    /// The key exists with exactly this value.
    Value(String, Vec<u8>),
}

/// A write of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create or overwrite a key.
    Put(String, Vec<u8>),
    /// Create or overwrite a key that vanishes when the lease expires.
    PutLeased(String, Vec<u8>, i64),
    /// Delete a key (absent is fine).
    Delete(String),
    /// Delete every key starting with the prefix.
    DeletePrefix(String),
}

/// A committed change, delivered to watchers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key was created or changed.
    Put(KeyValue),
    /// A key was deleted.
    Delete {
        /// The key.
        key: String,
        /// Revision of the deletion.
        mod_revision: u64,
    },
}

/// Outcome of a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether all compares held and the ops were applied.
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: u64,
}

/// Store errors.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened.
    #[error("cannot open store {path}: {reason}")]
    Open {
        /// The database file or endpoint.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// Another process holds the database.
    #[error("store {0} is in use by another process")]
    Locked(String),
    /// A read or write failed.
    #[error("store {op} failed: {reason}")]
    Io {
        /// The operation (`open`, `write`, `commit`, ...).
        op: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// A value could not be decoded.
    #[error("corrupt value at key {key}: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// The decoding error.
        reason: String,
    },
    /// The store cannot be reached: only the remote (cluster) backend can be.
    #[error("cluster store unreachable: {0}")]
    Unreachable(String),
    /// The cluster store refuses writes because its database reached its quota.
    #[error(
        "cluster store full: etcd refuses writes ({0}); compact and defragment it and disarm \
         the alarm (etcdctl compact, defrag, alarm disarm), or raise its --quota-backend-bytes"
    )]
    Full(String),
}

/// The store.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Backend name (`redb`, `memory`).
    fn name(&self) -> &'static str;
    /// One key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;
    /// Every key starting with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError>;
    /// Applies `ops` atomically and durably if every compare holds.
    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<TxnResult, StoreError>;
    /// Changes under `prefix` committed after this call, in revision order.
    async fn watch(
        &self,
        prefix: &str,
    ) -> Result<tokio::sync::mpsc::UnboundedReceiver<WatchEvent>, StoreError>;
    /// Grants a lease of `ttl_secs`: keys put with it vanish when it is not kept alive.
    /// Embedded backends serve one host, whose keys have no one to expire for: their leases
    /// never expire.
    async fn grant(&self, ttl_secs: i64) -> Result<i64, StoreError>;
    /// Refreshes a lease; `false` when it has already expired.
    async fn keep_alive(&self, lease: i64) -> Result<bool, StoreError>;
}

/// Puts a key unconditionally.
pub async fn put(store: &dyn Store, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
    store
        .txn(vec![], vec![Op::Put(key.into(), value)])
        .await
        .map(|_| ())
}

/// Creates a key only if it does not exist; returns whether it was created.
pub async fn create(store: &dyn Store, key: &str, value: Vec<u8>) -> Result<bool, StoreError> {
    Ok(store
        .txn(
            vec![Compare::Absent(key.into())],
            vec![Op::Put(key.into(), value)],
        )
        .await?
        .succeeded)
}

/// Deletes a key.
pub async fn delete(store: &dyn Store, key: &str) -> Result<(), StoreError> {
    store
        .txn(vec![], vec![Op::Delete(key.into())])
        .await
        .map(|_| ())
}

/// The shared in-process state machine both embedded backends apply transactions with.
pub(crate) mod engine {
    use std::collections::BTreeMap;

    use super::{Compare, KeyValue, Op, WatchEvent};

    /// Whether a compare holds against the current map.
    pub fn holds(map: &BTreeMap<String, KeyValue>, c: &Compare) -> bool {
        match c {
            Compare::Absent(k) => !map.contains_key(k),
            Compare::ModRevision(k, r) => map.get(k).map(|kv| kv.mod_revision) == Some(*r),
            Compare::Value(k, v) => map.get(k).map(|kv| &kv.value) == Some(v),
        }
    }

    /// Applies ops at `revision`, returning the resulting changes.
    pub fn apply(
        map: &mut BTreeMap<String, KeyValue>,
        ops: Vec<Op>,
        revision: u64,
    ) -> Vec<WatchEvent> {
        let mut events = Vec::new();
        for op in ops {
            match op {
                Op::Put(key, value) | Op::PutLeased(key, value, _) => {
                    let create_revision = map
                        .get(&key)
                        .map(|kv| kv.create_revision)
                        .unwrap_or(revision);
                    let kv = KeyValue {
                        key: key.clone(),
                        value,
                        mod_revision: revision,
                        create_revision,
                    };
                    map.insert(key, kv.clone());
                    events.push(WatchEvent::Put(kv));
                }
                Op::Delete(key) => {
                    if map.remove(&key).is_some() {
                        events.push(WatchEvent::Delete {
                            key,
                            mod_revision: revision,
                        });
                    }
                }
                Op::DeletePrefix(prefix) => {
                    let keys: Vec<String> = map
                        .range(prefix.clone()..)
                        .take_while(|(k, _)| k.starts_with(&prefix))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for key in keys {
                        map.remove(&key);
                        events.push(WatchEvent::Delete {
                            key,
                            mod_revision: revision,
                        });
                    }
                }
            }
        }
        events
    }

    /// Works out transactions committed together, in order, each seeing the changes of
    /// those before it, without changing `map`: on a copy of only the keys they compare or
    /// touch, so a group costs what it changes, not the size of the store. Returns each
    /// one's answer, the changes of all, and the revision after the last.
    pub fn group(
        map: &BTreeMap<String, KeyValue>,
        txns: Vec<(Vec<Compare>, Vec<Op>)>,
        revision: u64,
    ) -> (Vec<super::TxnResult>, Vec<WatchEvent>, u64) {
        let mut view = BTreeMap::new();
        let mut copy = |key: &str| {
            if let Some(kv) = map.get(key) {
                view.insert(key.to_string(), kv.clone());
            }
        };
        for (compares, ops) in &txns {
            for c in compares {
                let (Compare::Absent(key) | Compare::ModRevision(key, _) | Compare::Value(key, _)) =
                    c;
                copy(key);
            }
            for op in ops {
                match op {
                    Op::Put(key, _) | Op::PutLeased(key, _, _) | Op::Delete(key) => copy(key),
                    Op::DeletePrefix(prefix) => map
                        .range(prefix.clone()..)
                        .take_while(|(k, _)| k.starts_with(prefix.as_str()))
                        .for_each(|(k, _)| copy(k)),
                }
            }
        }
        let mut revision = revision;
        let mut answers = Vec::with_capacity(txns.len());
        let mut events = Vec::new();
        for (compares, ops) in txns {
            if let Some(r) = settled(&view, revision, &compares, ops.is_empty()) {
                answers.push(r);
                continue;
            }
            let made = apply(&mut view, ops, revision + 1);
            if !made.is_empty() {
                revision += 1;
            }
            events.extend(made);
            answers.push(super::TxnResult {
                succeeded: true,
                revision,
            });
        }
        (answers, events, revision)
    }

    /// Makes committed `events` in `map`, in order.
    pub fn replay(map: &mut BTreeMap<String, KeyValue>, events: &[WatchEvent]) {
        for e in events {
            match e {
                WatchEvent::Put(kv) => {
                    map.insert(kv.key.clone(), kv.clone());
                }
                WatchEvent::Delete { key, .. } => {
                    map.remove(key);
                }
            }
        }
    }

    /// Every record under a prefix, in key order.
    pub fn list(map: &BTreeMap<String, KeyValue>, prefix: &str) -> Vec<KeyValue> {
        map.range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The answer of a transaction that writes nothing: failed compares, or no ops.
    pub fn settled(
        map: &BTreeMap<String, KeyValue>,
        revision: u64,
        compares: &[Compare],
        no_ops: bool,
    ) -> Option<super::TxnResult> {
        let held = compares.iter().all(|c| holds(map, c));
        (!held || no_ops).then_some(super::TxnResult {
            succeeded: held,
            revision,
        })
    }

    /// The key an event is about.
    pub fn key_of(e: &WatchEvent) -> &str {
        match e {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn kv(key: &str, value: &[u8], rev: u64) -> (String, KeyValue) {
            let kv = KeyValue {
                key: key.into(),
                value: value.to_vec(),
                mod_revision: rev,
                create_revision: rev,
            };
            (key.into(), kv)
        }

        #[test]
        fn a_group_then_replay_is_applying_each_on_the_whole_map() {
            let map: BTreeMap<String, KeyValue> = [
                kv("p/1", b"a", 1),
                kv("p/2", b"b", 2),
                kv("q/1", b"c", 3),
                kv("r", b"d", 4),
            ]
            .into_iter()
            .collect();
            let ops = vec![
                Op::Put("r".into(), b"e".to_vec()),
                Op::Put("p/3".into(), b"f".to_vec()),
                Op::DeletePrefix("p/".into()),
                Op::Put("p/2".into(), b"g".to_vec()),
                Op::Delete("q/1".into()),
                Op::Delete("absent".into()),
            ];
            let create = |key: &str| {
                (
                    vec![Compare::Absent(key.into())],
                    vec![Op::Put(key.into(), b"h".to_vec())],
                )
            };
            let txns = vec![
                (vec![], ops.clone()),
                create("p/2"),
                create("p/4"),
                (vec![], vec![Op::Delete("absent".into())]),
                (vec![Compare::ModRevision("p/4".into(), 6)], vec![]),
            ];
            let mut whole = map.clone();
            let mut want = apply(&mut whole, ops, 5);
            want.extend(apply(&mut whole, create("p/4").1, 6));
            let (answers, events, revision) = group(&map, txns, 4);
            assert_eq!(events, want, "the same events as on the whole map");
            let answered: Vec<(bool, u64)> =
                answers.iter().map(|a| (a.succeeded, a.revision)).collect();
            assert_eq!(
                answered,
                [(true, 5), (false, 5), (true, 6), (true, 6), (true, 6)],
                "each sees the ones before it; one that changes nothing keeps the revision"
            );
            assert_eq!(revision, 6);
            let mut replayed = map.clone();
            replay(&mut replayed, &events);
            assert_eq!(replayed, whole, "replaying them gives the same map");
            assert_eq!(
                replayed["r"].create_revision, 4,
                "an overwrite keeps its creation"
            );
            assert_eq!(
                replayed["p/2"].create_revision, 5,
                "deleted then put is new"
            );
        }
    }
}

/// Watch subscribers of the embedded backends.
#[derive(Default)]
pub(crate) struct Watchers {
    subs: std::sync::Mutex<Vec<(String, tokio::sync::mpsc::UnboundedSender<WatchEvent>)>>,
}

impl Watchers {
    pub(crate) fn subscribe(
        &self,
        prefix: &str,
    ) -> tokio::sync::mpsc::UnboundedReceiver<WatchEvent> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.subs.lock().unwrap().push((prefix.to_string(), tx));
        rx
    }

    pub(crate) fn publish(&self, events: &[WatchEvent]) {
        let mut subs = self.subs.lock().unwrap();
        subs.retain(|(prefix, tx)| {
            !tx.is_closed()
                && events
                    .iter()
                    .filter(|e| engine::key_of(e).starts_with(prefix.as_str()))
                    .all(|e| tx.send(e.clone()).is_ok())
        });
    }
}

/// Reads a JSON record.
pub async fn get_json<T: serde::de::DeserializeOwned>(
    store: &dyn Store,
    key: &str,
) -> Result<Option<T>, StoreError> {
    match store.get(key).await? {
        Some(kv) => Ok(Some(decode(&kv)?)),
        None => Ok(None),
    }
}

/// Reads every JSON record under a prefix, in key order.
pub async fn list_json<T: serde::de::DeserializeOwned>(
    store: &dyn Store,
    prefix: &str,
) -> Result<Vec<T>, StoreError> {
    store.list(prefix).await?.iter().map(decode).collect()
}

/// Encodes a record as JSON for a put.
pub fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialise to JSON")
}

/// Decodes a stored JSON record.
pub fn decode<T: serde::de::DeserializeOwned>(kv: &KeyValue) -> Result<T, StoreError> {
    serde_json::from_slice(&kv.value).map_err(|e| StoreError::Corrupt {
        key: kv.key.clone(),
        reason: e.to_string(),
    })
}
