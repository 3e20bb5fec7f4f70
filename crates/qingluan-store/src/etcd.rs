//! etcd backend (cargo feature `etcd`): the cluster store, with the same semantics as the
//! embedded one, checked by the same conformance suite.
//!
//! Every key lives under a namespace prefix (default `/qingluan/`) so several clusters or
//! tests can share one etcd. Revisions are etcd's own. Every call has a deadline and a
//! connection failure becomes [`StoreError::Unreachable`], so callers fail fast while etcd is
//! down; etcd-client reconnects by itself when it returns. A database over its quota (etcd's
//! `NOSPACE` alarm) is [`StoreError::Full`], with what to do about it.

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare as EtcdCompare, CompareOp, ConnectOptions, DeleteOptions,
    EventType, GetOptions, Identity, TlsOptions, Txn, TxnOp, WatchOptions,
};

use crate::{Compare, KeyValue, Op, Store, StoreError, TxnResult, WatchEvent};

/// TLS material for `https://` endpoints, as PEM file paths.
#[derive(Clone, Debug, Default)]
pub struct Tls {
    /// CA certificate that signed the etcd server's certificate.
    pub ca: Option<std::path::PathBuf>,
    /// Client certificate, for etcd's client-certificate authentication.
    pub cert: Option<std::path::PathBuf>,
    /// Client key.
    pub key: Option<std::path::PathBuf>,
}

/// The etcd store.
pub struct EtcdStore {
    /// The client, once a connection succeeded (etcd-client reconnects by itself after that).
    client: tokio::sync::Mutex<Option<Client>>,
    /// Where and how to connect.
    endpoints: Vec<String>,
    options: ConnectOptions,
    /// Namespace prefix of every key.
    namespace: String,
}

/// An etcd error as ours: a full database (the `NOSPACE` alarm refuses writes) is
/// [`StoreError::Full`]; anything else means etcd cannot serve us now.
fn unreachable(e: etcd_client::Error) -> StoreError {
    let text = e.to_string();
    match text.find("database space exceeded") {
        Some(_) => StoreError::Full("mvcc: database space exceeded".into()),
        None => StoreError::Unreachable(text),
    }
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|e| StoreError::Open {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

impl EtcdStore {
    /// Connects to `endpoints` (each `http://host:port` or `https://host:port`), keeping
    /// every key under `namespace`; fails if etcd cannot be reached now.
    pub async fn connect(
        endpoints: &[String],
        tls: Option<&Tls>,
        namespace: &str,
    ) -> Result<EtcdStore, StoreError> {
        let store = Self::lazy(endpoints, tls, namespace)?;
        store.client().await?;
        Ok(store)
    }

    /// Like [`EtcdStore::connect`] but connects on first use, so a daemon can start while
    /// etcd is down; until it is reachable every call fails fast with
    /// [`StoreError::Unreachable`]. TLS files are read now, so a bad path fails at once.
    pub fn lazy(
        endpoints: &[String],
        tls: Option<&Tls>,
        namespace: &str,
    ) -> Result<EtcdStore, StoreError> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(Duration::from_millis(1500))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(2));
        if let Some(t) = tls {
            let mut o = TlsOptions::new();
            if let Some(ca) = &t.ca {
                o = o.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let (Some(cert), Some(key)) = (&t.cert, &t.key) {
                o = o.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            opts = opts.with_tls(o);
        }
        Ok(EtcdStore {
            client: tokio::sync::Mutex::new(None),
            endpoints: endpoints.to_vec(),
            options: opts,
            namespace: namespace.to_string(),
        })
    }

    /// The connected client, connecting first if needed.
    async fn client(&self) -> Result<Client, StoreError> {
        let mut c = self.client.lock().await;
        if let Some(client) = c.as_ref() {
            return Ok(client.clone());
        }
        let client = Client::connect(&self.endpoints, Some(self.options.clone()))
            .await
            .map_err(unreachable)?;
        *c = Some(client.clone());
        Ok(client)
    }

    fn key(&self, k: &str) -> String {
        format!("{}{k}", self.namespace)
    }

    fn record(&self, kv: &etcd_client::KeyValue) -> KeyValue {
        let key = String::from_utf8_lossy(kv.key());
        KeyValue {
            key: key
                .strip_prefix(&self.namespace)
                .unwrap_or(&key)
                .to_string(),
            value: kv.value().to_vec(),
            mod_revision: kv.mod_revision() as u64,
            create_revision: kv.create_revision() as u64,
        }
    }
}

#[async_trait]
impl Store for EtcdStore {
    fn name(&self) -> &'static str {
        "etcd"
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let r = self
            .client()
            .await?
            .get(self.key(key), None)
            .await
            .map_err(unreachable)?;
        Ok(r.kvs().first().map(|kv| self.record(kv)))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        let r = self
            .client()
            .await?
            .get(
                self.key(prefix),
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_sort(etcd_client::SortTarget::Key, etcd_client::SortOrder::Ascend),
                ),
            )
            .await
            .map_err(unreachable)?;
        Ok(r.kvs().iter().map(|kv| self.record(kv)).collect())
    }

    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<TxnResult, StoreError> {
        // etcd compares a missing key as if it had revision 0 and an empty value; ours say
        // "exists with", so those two also require the key to exist.
        let when: Vec<EtcdCompare> = compares
            .into_iter()
            .flat_map(|c| match c {
                Compare::Absent(k) => vec![EtcdCompare::create_revision(
                    self.key(&k),
                    CompareOp::Equal,
                    0,
                )],
                Compare::ModRevision(k, r) => vec![
                    EtcdCompare::create_revision(self.key(&k), CompareOp::Greater, 0),
                    EtcdCompare::mod_revision(self.key(&k), CompareOp::Equal, r as i64),
                ],
                Compare::Value(k, v) => vec![
                    EtcdCompare::create_revision(self.key(&k), CompareOp::Greater, 0),
                    EtcdCompare::value(self.key(&k), CompareOp::Equal, v),
                ],
            })
            .collect();
        let then: Vec<TxnOp> = ops
            .into_iter()
            .map(|o| match o {
                Op::Put(k, v) => TxnOp::put(self.key(&k), v, None),
                Op::PutLeased(k, v, lease) => TxnOp::put(
                    self.key(&k),
                    v,
                    Some(etcd_client::PutOptions::new().with_lease(lease)),
                ),
                Op::Delete(k) => TxnOp::delete(self.key(&k), None),
                Op::DeletePrefix(p) => {
                    TxnOp::delete(self.key(&p), Some(DeleteOptions::new().with_prefix()))
                }
            })
            .collect();
        let r = self
            .client()
            .await?
            .txn(Txn::new().when(when).and_then(then))
            .await
            .map_err(unreachable)?;
        Ok(TxnResult {
            succeeded: r.succeeded(),
            revision: r.header().map(|h| h.revision() as u64).unwrap_or(0),
        })
    }

    async fn watch(
        &self,
        prefix: &str,
    ) -> Result<tokio::sync::mpsc::UnboundedReceiver<WatchEvent>, StoreError> {
        let mut stream = self
            .client()
            .await?
            .watch(self.key(prefix), Some(WatchOptions::new().with_prefix()))
            .await
            .map_err(unreachable)?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let namespace = self.namespace.clone();
        tokio::spawn(async move {
            while let Ok(Some(resp)) = stream.message().await {
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let key = String::from_utf8_lossy(kv.key());
                    let key = key.strip_prefix(&namespace).unwrap_or(&key).to_string();
                    let e = match ev.event_type() {
                        EventType::Put => WatchEvent::Put(KeyValue {
                            key,
                            value: kv.value().to_vec(),
                            mod_revision: kv.mod_revision() as u64,
                            create_revision: kv.create_revision() as u64,
                        }),
                        EventType::Delete => WatchEvent::Delete {
                            key,
                            mod_revision: kv.mod_revision() as u64,
                        },
                    };
                    if tx.send(e).is_err() {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    async fn grant(&self, ttl_secs: i64) -> Result<i64, StoreError> {
        let r = self
            .client()
            .await?
            .lease_grant(ttl_secs, None)
            .await
            .map_err(unreachable)?;
        Ok(r.id())
    }

    async fn keep_alive(&self, lease: i64) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let refresh = async {
            let (mut keeper, mut stream) = client.lease_keep_alive(lease).await?;
            keeper.keep_alive().await?;
            Ok::<_, etcd_client::Error>(
                stream
                    .message()
                    .await?
                    .map(|r| r.ttl() > 0)
                    .unwrap_or(false),
            )
        };
        match refresh.await {
            Ok(alive) => Ok(alive),
            Err(etcd_client::Error::LeaseKeepAliveError(m)) if m.contains("lease not found") => {
                Ok(false)
            }
            Err(e) => Err(unreachable(e)),
        }
    }
}
