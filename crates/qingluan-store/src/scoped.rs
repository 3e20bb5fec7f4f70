//! A view of a store under a key prefix: how one host keeps its own state (its nat and
//! nonat networks, endpoints and host-routed IPAM) apart from the cluster-wide keys
//! (membership, and later flat/vlan/vxlan) when many hosts share one etcd.

use std::sync::Arc;

use async_trait::async_trait;

use crate::{Compare, KeyValue, Op, Store, StoreError, TxnResult, WatchEvent};

/// `inner` with every key under `prefix`.
pub struct Scoped {
    inner: Arc<dyn Store>,
    prefix: String,
}

impl Scoped {
    /// A view of `inner` under `prefix` (which should end with `/`).
    pub fn new(inner: Arc<dyn Store>, prefix: &str) -> Scoped {
        Scoped {
            inner,
            prefix: prefix.to_string(),
        }
    }

    fn key(&self, k: &str) -> String {
        format!("{}{k}", self.prefix)
    }

    fn strip(&self, mut kv: KeyValue) -> KeyValue {
        kv.key = kv.key[self.prefix.len()..].to_string();
        kv
    }
}

#[async_trait]
impl Store for Scoped {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self
            .inner
            .get(&self.key(key))
            .await?
            .map(|kv| self.strip(kv)))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        let all = self.inner.list(&self.key(prefix)).await?;
        Ok(all.into_iter().map(|kv| self.strip(kv)).collect())
    }

    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<TxnResult, StoreError> {
        let compares = compares
            .into_iter()
            .map(|c| match c {
                Compare::Absent(k) => Compare::Absent(self.key(&k)),
                Compare::ModRevision(k, r) => Compare::ModRevision(self.key(&k), r),
                Compare::Value(k, v) => Compare::Value(self.key(&k), v),
            })
            .collect();
        let ops = ops
            .into_iter()
            .map(|o| match o {
                Op::Put(k, v) => Op::Put(self.key(&k), v),
                Op::PutLeased(k, v, l) => Op::PutLeased(self.key(&k), v, l),
                Op::Delete(k) => Op::Delete(self.key(&k)),
                Op::DeletePrefix(p) => Op::DeletePrefix(self.key(&p)),
            })
            .collect();
        self.inner.txn(compares, ops).await
    }

    async fn watch(
        &self,
        prefix: &str,
    ) -> Result<tokio::sync::mpsc::UnboundedReceiver<WatchEvent>, StoreError> {
        let mut inner = self.inner.watch(&self.key(prefix)).await?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let cut = self.prefix.len();
        tokio::spawn(async move {
            while let Some(e) = inner.recv().await {
                let e = match e {
                    WatchEvent::Put(mut kv) => {
                        kv.key = kv.key[cut..].to_string();
                        WatchEvent::Put(kv)
                    }
                    WatchEvent::Delete { key, mod_revision } => WatchEvent::Delete {
                        key: key[cut..].to_string(),
                        mod_revision,
                    },
                };
                if tx.send(e).is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }

    async fn grant(&self, ttl_secs: i64) -> Result<i64, StoreError> {
        self.inner.grant(ttl_secs).await
    }

    async fn keep_alive(&self, lease: i64) -> Result<bool, StoreError> {
        self.inner.keep_alive(lease).await
    }
}
