//! Host membership: which qingluan hosts share this store, and which are alive.
//!
//! Each daemon writes its host record under `cluster/hosts/<id>` (kept, so a host that
//! stops is still known and shown as down) and a liveness key `cluster/alive/<id>` under a
//! lease of [`TTL_SECS`] that it keeps alive every third of that. When a host dies, etcd
//! expires the lease and the liveness key with it. On the embedded store (one host) leases
//! never expire, so the host is simply shown as up while its daemon answers.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use qingluan_store::{list_json, to_json, Op, Store, StoreError};
use serde::{Deserialize, Serialize};

/// Store key prefix of host records.
pub const HOSTS: &str = "cluster/hosts/";
/// Store key prefix of liveness keys.
pub const ALIVE: &str = "cluster/alive/";
/// Lease time of a liveness key.
pub const TTL_SECS: i64 = 10;

/// A host, as it registers itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// Host ID (`cluster.host_id`, default the hostname).
    pub id: String,
    /// The machine's hostname.
    pub hostname: String,
    /// Underlay address for tunnels (`cluster.underlay_ip`, or the default route's source).
    pub underlay_ip: Option<IpAddr>,
    /// qingluan version.
    pub version: String,
    /// Seconds since the epoch when the daemon started.
    pub started: u64,
}

/// A host with its liveness, for `qingluan status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    /// The record.
    pub host: Host,
    /// Whether its liveness key exists.
    pub up: bool,
}

/// Writes the host record and a fresh liveness key; returns the lease.
pub async fn register(store: &dyn Store, host: &Host) -> Result<i64, StoreError> {
    let lease = store.grant(TTL_SECS).await?;
    store
        .txn(
            vec![],
            vec![
                Op::Put(format!("{HOSTS}{}", host.id), to_json(host)),
                Op::PutLeased(format!("{ALIVE}{}", host.id), to_json(&host.started), lease),
            ],
        )
        .await?;
    Ok(lease)
}

/// Marks this host down at once (a clean shutdown), instead of waiting for its lease to run
/// out: the other hosts drop its tunnels within one agent pass.
pub async fn leave(store: &dyn Store, id: &str) -> Result<(), StoreError> {
    store
        .txn(vec![], vec![Op::Delete(format!("{ALIVE}{id}"))])
        .await?;
    Ok(())
}

/// Every known host and whether it is alive.
pub async fn hosts(store: &dyn Store) -> Result<Vec<HostStatus>, StoreError> {
    let alive: Vec<String> = store
        .list(ALIVE)
        .await?
        .into_iter()
        .map(|kv| kv.key[ALIVE.len()..].to_string())
        .collect();
    Ok(list_json::<Host>(store, HOSTS)
        .await?
        .into_iter()
        .map(|h| HostStatus {
            up: alive.contains(&h.id),
            host: h,
        })
        .collect())
}

/// Keeps this host registered for as long as the daemon runs, re-registering whenever the
/// lease is lost (the store was unreachable longer than the lease).
pub async fn run(store: Arc<dyn Store>, host: Host) {
    let period = Duration::from_secs((TTL_SECS / 3) as u64);
    loop {
        let lease = match register(&*store, &host).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot register this host; retrying");
                tokio::time::sleep(period).await;
                continue;
            }
        };
        loop {
            tokio::time::sleep(period).await;
            match store.keep_alive(lease).await {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => tracing::warn!(error = %e, "host lease keep-alive failed"),
            }
        }
        tracing::warn!("host lease expired; registering again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qingluan_store::memory::MemoryStore;

    #[tokio::test]
    async fn registered_hosts_are_listed_up() {
        let store = MemoryStore::new();
        let host = |id: &str| Host {
            id: id.into(),
            hostname: id.into(),
            underlay_ip: Some("10.0.0.11".parse().unwrap()),
            version: "0.1.0".into(),
            started: 1,
        };
        register(&store, &host("h1")).await.unwrap();
        register(&store, &host("h2")).await.unwrap();
        store
            .txn(vec![], vec![Op::Delete(format!("{ALIVE}h2"))])
            .await
            .unwrap();
        let hs = hosts(&store).await.unwrap();
        assert_eq!(hs.len(), 2);
        assert!(hs[0].up && hs[0].host.id == "h1");
        assert!(!hs[1].up, "a host without its liveness key is down");
    }
}
