//! Embedded backend on redb: one database file, every transaction fsynced before it returns.
//!
//! The whole key space is also kept in memory (qingluan's state is small: networks,
//! endpoints, pools, addresses), so reads never touch the disk; a write transaction is
//! checked against the cache, its changes worked out from the keys it touches, committed to
//! redb with `Durability::Immediate`, and only then made in the cache and published to
//! watchers. A transaction that changes nothing (a failed compare, a deletion of an absent
//! key) writes nothing, as in etcd, and is answered from the cache at once, without waiting
//! for a flush. Transactions queue for one writer, which takes every transaction
//! waiting, works them out in order (each sees the ones before it) and commits them with
//! one fsync: under a storm of calls each waits for at most the flush in progress and its
//! own group's, not for one flush per call ahead of it. The cache lock is only taken
//! briefly, so reads never wait on a disk flush.
//! Each value is stored as JSON `{value, mod_revision, create_revision}`; the current revision
//! lives in the `meta` table.
//!
//! redb refuses every later transaction once one failed on an I/O error (a full disk), so a
//! failed write closes the database and opens it again (redb recovers the file to its last
//! commit, which is what the cache holds), then tries the transaction once more: the store
//! recovers by itself as soon as the cause is gone, and never needs a daemon restart.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use redb::{Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::{engine, Compare, KeyValue, Op, Store, StoreError, TxnResult, WatchEvent, Watchers};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

struct Inner {
    /// The database file.
    path: std::path::PathBuf,
    /// The open database; `None` after a failed reopen, opened again by the next writer.
    db: Mutex<Option<Database>>,
    /// Transactions waiting for the writer, and whether a writer is at work.
    queue: Mutex<(Vec<Queued>, bool)>,
    /// Keys and the current revision, mirroring the file.
    state: Mutex<(BTreeMap<String, KeyValue>, u64)>,
    watchers: Watchers,
}

/// A transaction waiting for the writer.
struct Queued {
    compares: Vec<Compare>,
    ops: Vec<Op>,
    answer: tokio::sync::oneshot::Sender<Result<TxnResult, StoreError>>,
}

/// The embedded store.
#[derive(Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

fn io(op: &'static str) -> impl Fn(redb::Error) -> StoreError {
    move |e| StoreError::Io {
        op,
        reason: e.to_string(),
    }
}

impl RedbStore {
    /// Opens (creating if needed) the database file and loads it.
    pub async fn open(path: &Path) -> Result<RedbStore, StoreError> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(&path))
            .await
            .map_err(|e| StoreError::Io {
                op: "open",
                reason: e.to_string(),
            })?
    }

    /// Opens the database file, creating it and its tables when missing.
    fn open_file(path: &Path) -> Result<Database, StoreError> {
        let shown = path.display().to_string();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
        }
        let db = Database::create(path).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => StoreError::Locked(shown.clone()),
            e => StoreError::Open {
                path: shown.clone(),
                reason: e.to_string(),
            },
        })?;
        let w = db.begin_write().map_err(|e| io("open")(e.into()))?;
        {
            w.open_table(KV).map_err(|e| io("open")(e.into()))?;
            w.open_table(META).map_err(|e| io("open")(e.into()))?;
        }
        w.commit().map_err(|e| io("open")(e.into()))?;
        Ok(db)
    }

    fn open_blocking(path: &Path) -> Result<RedbStore, StoreError> {
        let db = Self::open_file(path)?;
        let r = db.begin_read().map_err(|e| io("load")(e.into()))?;
        let kv = r.open_table(KV).map_err(|e| io("load")(e.into()))?;
        let mut map = BTreeMap::new();
        for item in kv.iter().map_err(|e| io("load")(e.into()))? {
            let (k, v) = item.map_err(|e| io("load")(e.into()))?;
            let key = k.value().to_string();
            let rec: KeyValue =
                serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                    key: key.clone(),
                    reason: e.to_string(),
                })?;
            map.insert(key, rec);
        }
        let meta = r.open_table(META).map_err(|e| io("load")(e.into()))?;
        let revision = meta
            .get("revision")
            .map_err(|e| io("load")(e.into()))?
            .map(|g| g.value())
            .unwrap_or(0);
        drop((kv, meta, r));
        Ok(RedbStore {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                db: Mutex::new(Some(db)),
                queue: Mutex::new((Vec::new(), false)),
                state: Mutex::new((map, revision)),
                watchers: Watchers::default(),
            }),
        })
    }

    /// Commits what is queued, group by group, until the queue is empty. The last group is
    /// answered once this writer let go of the store, so a caller that drops the store after
    /// its write can open the file again at once.
    fn write_queued(self) {
        loop {
            let group = std::mem::take(&mut self.inner.queue.lock().unwrap().0);
            let (txns, waiting): (Vec<_>, Vec<_>) = group
                .into_iter()
                .map(|q| ((q.compares, q.ops), q.answer))
                .unzip();
            let outcome =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.commit(txns)))
                    .unwrap_or_else(|_| {
                        Err(StoreError::Io {
                            op: "write",
                            reason: "the store's writer panicked".into(),
                        })
                    });
            let more = {
                let mut q = self.inner.queue.lock().unwrap();
                q.1 = !q.0.is_empty();
                q.1
            };
            if !more {
                drop(self);
                answer(waiting, outcome);
                return;
            }
            answer(waiting, outcome);
        }
    }

    /// Commits a group of transactions with one fsync; each one's answer, in order.
    fn commit(&self, txns: Vec<(Vec<Compare>, Vec<Op>)>) -> Result<Vec<TxnResult>, StoreError> {
        let (answers, events, revision) = {
            let s = self.inner.state.lock().unwrap();
            engine::group(&s.0, txns, s.1)
        };
        if events.is_empty() {
            return Ok(answers);
        }
        let mut db = self.inner.db.lock().unwrap();
        if let Err(first) = Self::write(&mut db, &self.inner.path, &events, revision) {
            tracing::warn!(error = %first, "store write failed; reopening the database and retrying once");
            *db = None;
            Self::write(&mut db, &self.inner.path, &events, revision)?;
        }
        drop(db);
        let mut s = self.inner.state.lock().unwrap();
        engine::replay(&mut s.0, &events);
        s.1 = revision;
        self.inner.watchers.publish(&events);
        Ok(answers)
    }
}

impl RedbStore {
    /// The answer of a transaction that changes nothing in what is committed (a compare
    /// fails, or it only deletes absent keys), without waiting for the writer. Every
    /// answered write is in the cache, so this answer is what the transaction would get
    /// just before the writes still queued, which have not been answered either.
    fn unchanging(&self, compares: &[Compare], ops: &[Op]) -> Option<TxnResult> {
        let s = self.inner.state.lock().unwrap();
        let (map, revision) = (&s.0, s.1);
        if let Some(r) = engine::settled(map, revision, compares, ops.is_empty()) {
            return Some(r);
        }
        ops.iter()
            .all(|op| match op {
                Op::Delete(key) => !map.contains_key(key),
                Op::DeletePrefix(prefix) => !map
                    .range(prefix.clone()..)
                    .next()
                    .is_some_and(|(k, _)| k.starts_with(prefix.as_str())),
                Op::Put(..) | Op::PutLeased(..) => false,
            })
            .then_some(TxnResult {
                succeeded: true,
                revision,
            })
    }

    /// Commits `events` at `revision`, opening the database first when it is closed.
    fn write(
        db: &mut Option<Database>,
        path: &Path,
        events: &[WatchEvent],
        revision: u64,
    ) -> Result<(), StoreError> {
        if db.is_none() {
            *db = Some(Self::open_file(path)?);
        }
        let db = db.as_ref().expect("opened above");
        let mut w = db.begin_write().map_err(|e| io("write")(e.into()))?;
        w.set_durability(Durability::Immediate)
            .map_err(|e| io("write")(e.into()))?;
        {
            let mut kv = w.open_table(KV).map_err(|e| io("write")(e.into()))?;
            for e in events {
                match e {
                    WatchEvent::Put(rec) => {
                        let bytes = serde_json::to_vec(rec).expect("records serialise");
                        kv.insert(rec.key.as_str(), bytes.as_slice())
                            .map_err(|e| io("write")(e.into()))?;
                    }
                    WatchEvent::Delete { key, .. } => {
                        kv.remove(key.as_str()).map_err(|e| io("write")(e.into()))?;
                    }
                }
            }
            let mut meta = w.open_table(META).map_err(|e| io("write")(e.into()))?;
            meta.insert("revision", revision)
                .map_err(|e| io("write")(e.into()))?;
        }
        w.commit().map_err(|e| io("commit")(e.into()))
    }
}

/// Answers the transactions of a group, in order.
fn answer(
    waiting: Vec<tokio::sync::oneshot::Sender<Result<TxnResult, StoreError>>>,
    outcome: Result<Vec<TxnResult>, StoreError>,
) {
    match outcome {
        Ok(answers) => {
            for (w, a) in waiting.into_iter().zip(answers) {
                let _ = w.send(Ok(a));
            }
        }
        Err(e) => {
            for w in waiting {
                let _ = w.send(Err(e.clone()));
            }
        }
    }
}

#[async_trait]
impl Store for RedbStore {
    fn name(&self) -> &'static str {
        "redb"
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.inner.state.lock().unwrap().0.get(key).cloned())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        Ok(engine::list(&self.inner.state.lock().unwrap().0, prefix))
    }

    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<TxnResult, StoreError> {
        if let Some(r) = self.unchanging(&compares, &ops) {
            return Ok(r);
        }
        let (answer, answered) = tokio::sync::oneshot::channel();
        let lead = {
            let mut q = self.inner.queue.lock().unwrap();
            q.0.push(Queued {
                compares,
                ops,
                answer,
            });
            !std::mem::replace(&mut q.1, true)
        };
        if lead {
            let writer = self.clone();
            tokio::task::spawn_blocking(move || writer.write_queued());
        }
        answered.await.map_err(|_| StoreError::Io {
            op: "write",
            reason: "the store's writer stopped".into(),
        })?
    }

    async fn watch(
        &self,
        prefix: &str,
    ) -> Result<tokio::sync::mpsc::UnboundedReceiver<WatchEvent>, StoreError> {
        Ok(self.inner.watchers.subscribe(prefix))
    }

    async fn grant(&self, _ttl_secs: i64) -> Result<i64, StoreError> {
        Ok(0)
    }

    async fn keep_alive(&self, _lease: i64) -> Result<bool, StoreError> {
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// While the writer cannot get at the database (as in a long flush), transactions that
    /// change nothing are answered, each as if just before the write still queued.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transaction_that_changes_nothing_does_not_wait_for_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(&dir.path().join("s.redb")).await.unwrap();
        crate::put(&s, "a", b"1".to_vec()).await.unwrap();
        let revision = s.get("a").await.unwrap().unwrap().mod_revision;
        let (locked, is_locked) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let inner = s.inner.clone();
        let holder = std::thread::spawn(move || {
            let _db = inner.db.lock().unwrap();
            locked.send(()).unwrap();
            released.recv().ok();
        });
        is_locked.recv().unwrap();
        let queued = tokio::spawn({
            let s = s.clone();
            async move { crate::put(&s, "b", b"2".to_vec()).await }
        });
        let unchanging = async {
            let absent = s
                .txn(
                    vec![],
                    vec![Op::Delete("b".into()), Op::DeletePrefix("c/".into())],
                )
                .await
                .unwrap();
            let failed = s
                .txn(
                    vec![Compare::Absent("a".into())],
                    vec![Op::Put("a".into(), b"x".to_vec())],
                )
                .await
                .unwrap();
            (absent, failed)
        };
        // Only a guard against hanging: without the shortcut these wait for the writer.
        let (absent, failed) = tokio::time::timeout(std::time::Duration::from_secs(60), unchanging)
            .await
            .expect("answered while the writer is held");
        assert_eq!(
            (
                absent.succeeded,
                absent.revision,
                failed.succeeded,
                failed.revision
            ),
            (true, revision, false, revision)
        );
        assert!(!queued.is_finished(), "the write waits for the writer");
        release.send(()).unwrap();
        holder.join().unwrap();
        queued.await.unwrap().unwrap();
        assert_eq!(s.get("b").await.unwrap().unwrap().value, b"2");
        assert_eq!(s.get("a").await.unwrap().unwrap().value, b"1");
    }
}
