//! In-memory backend, for unit tests of the domain. Same semantics as the embedded store,
//! minus durability.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::{engine, Compare, KeyValue, Op, Store, StoreError, TxnResult, WatchEvent, Watchers};

/// The in-memory store.
#[derive(Default)]
pub struct MemoryStore {
    /// Keys and the current revision.
    state: Mutex<(BTreeMap<String, KeyValue>, u64)>,
    /// Watch subscribers.
    watchers: Watchers,
}

impl MemoryStore {
    /// An empty store at revision 0.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.state.lock().unwrap().0.get(key).cloned())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        Ok(engine::list(&self.state.lock().unwrap().0, prefix))
    }

    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<TxnResult, StoreError> {
        let mut s = self.state.lock().unwrap();
        if let Some(r) = engine::settled(&s.0, s.1, &compares, ops.is_empty()) {
            return Ok(r);
        }
        let revision = s.1 + 1;
        let events = engine::apply(&mut s.0, ops, revision);
        if !events.is_empty() {
            s.1 += 1;
        }
        self.watchers.publish(&events);
        Ok(TxnResult {
            succeeded: true,
            revision: s.1,
        })
    }

    async fn watch(
        &self,
        prefix: &str,
    ) -> Result<tokio::sync::mpsc::UnboundedReceiver<WatchEvent>, StoreError> {
        Ok(self.watchers.subscribe(prefix))
    }

    async fn grant(&self, _ttl_secs: i64) -> Result<i64, StoreError> {
        Ok(0)
    }

    async fn keep_alive(&self, _lease: i64) -> Result<bool, StoreError> {
        Ok(true)
    }
}
