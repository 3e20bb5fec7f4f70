//! A store that times its reads and transactions for the metrics; watches and leases pass
//! through untimed (they last as long as their owner).

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use qingluan_store::{Compare, KeyValue, Op, Store, StoreError, TxnResult, WatchEvent};

use super::Metrics;

/// `inner`, measured as `local` or `cluster`.
pub struct MeasuredStore {
    inner: Arc<dyn Store>,
    role: &'static str,
    metrics: Arc<Metrics>,
}

impl MeasuredStore {
    /// Wraps `inner`; `role` is `local` or `cluster`.
    pub fn wrap(
        inner: Arc<dyn Store>,
        role: &'static str,
        metrics: Arc<Metrics>,
    ) -> Arc<dyn Store> {
        Arc::new(MeasuredStore {
            inner,
            role,
            metrics,
        })
    }

    async fn timed<T>(
        &self,
        operation: &'static str,
        op: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let r = op.await;
        self.metrics
            .stored(self.role, operation, started.elapsed(), r.is_ok());
        r
    }
}

#[async_trait]
impl Store for MeasuredStore {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.timed("get", self.inner.get(key)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        self.timed("list", self.inner.list(prefix)).await
    }

    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<TxnResult, StoreError> {
        self.timed("txn", self.inner.txn(compares, ops)).await
    }

    async fn watch(
        &self,
        prefix: &str,
    ) -> Result<tokio::sync::mpsc::UnboundedReceiver<WatchEvent>, StoreError> {
        self.inner.watch(prefix).await
    }

    async fn grant(&self, ttl_secs: i64) -> Result<i64, StoreError> {
        self.inner.grant(ttl_secs).await
    }

    async fn keep_alive(&self, lease: i64) -> Result<bool, StoreError> {
        self.inner.keep_alive(lease).await
    }
}
