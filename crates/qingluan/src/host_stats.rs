//! The rows of `qingluan stats` and `top` (an endpoint's counters, names and rates), and
//! their publication in the cluster store so that any host's CLI shows every host's
//! (`--host`).
//!
//! Decision: hosts exchange statistics through the store, not through each other's APIs
//! (the management socket is local and `/metrics` is loopback-only by default). A daemon
//! whose cluster store is etcd puts its rows under `stats/<host>` every [`PUBLISH_EVERY`],
//! with rates over that window, on a lease of [`STALE_AFTER`] kept alive by each write, and
//! deletes the key when it stops: the key of a host that died expires with its lease, and no
//! clock is compared. An entry that does not decode (a newer host's) is skipped. One small
//! write per host every 5 s is the whole cost; with the embedded store there is one host and
//! nothing is published.

use std::sync::Arc;
use std::time::{Duration, Instant};

use qingluan_core::model::head;
use qingluan_core::service::{Driver, EndpointStats};
use qingluan_store::Store;
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;

use crate::docker::Names;

/// How often a host publishes its rows.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(5);
/// How long a host's rows outlive its last write (the lease).
pub const STALE_AFTER: Duration = Duration::from_secs(30);
/// Key prefix of published rows.
const PREFIX: &str = "stats/";

/// One endpoint's line.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct StatsRow {
    /// The host it runs on (rows read from the cluster store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The container's name, from the Engine API.
    pub container: Option<String>,
    /// The container's ID.
    #[serde(default)]
    pub container_id: Option<String>,
    /// The network's Docker name.
    pub network_name: Option<String>,
    /// What the container sent over the window, in bit/s.
    pub transmit_bits_per_second: f64,
    /// What it received, in bit/s.
    pub receive_bits_per_second: f64,
    /// Port drops and spoofed frames per second.
    #[serde(default)]
    pub drops_per_second: f64,
    /// The counters.
    #[serde(flatten)]
    pub stats: EndpointStats,
}

impl StatsRow {
    /// The container's name, or the endpoint's short ID.
    pub fn who(&self) -> String {
        self.container
            .clone()
            .unwrap_or_else(|| head(&self.stats.endpoint, 12).to_string())
    }

    /// The network's name, or its short ID.
    pub fn network(&self) -> String {
        self.network_name
            .clone()
            .unwrap_or_else(|| head(&self.stats.network, 12).to_string())
    }
}

/// The rows of the endpoints in `now`, with rates against `before` over `secs` seconds (zero
/// for endpoints new since).
pub fn rows(
    before: &[EndpointStats],
    now: Vec<EndpointStats>,
    secs: f64,
    names: &Names,
) -> Vec<StatsRow> {
    let drops = |x: &EndpointStats| x.transmit.dropped + x.receive.dropped + x.spoofed;
    now.into_iter()
        .map(|s| {
            let prev = before.iter().find(|b| b.endpoint == s.endpoint);
            let rate = |f: &dyn Fn(&EndpointStats) -> u64, scale: f64| match prev {
                Some(p) if secs > 0.0 => f(&s).saturating_sub(f(p)) as f64 * scale / secs,
                _ => 0.0,
            };
            let container = names.containers.get(&s.endpoint);
            StatsRow {
                host: None,
                container: container.map(|c| c.name.clone()),
                container_id: container.map(|c| c.id.clone()),
                network_name: names.networks.get(&s.network).cloned(),
                transmit_bits_per_second: rate(&|x| x.transmit.bytes, 8.0),
                receive_bits_per_second: rate(&|x| x.receive.bytes, 8.0),
                drops_per_second: rate(&drops, 1.0),
                stats: s,
            }
        })
        .collect()
}

/// A host's published rows.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct HostStats {
    /// The host.
    pub host: String,
    /// When they were read (milliseconds since the epoch).
    pub at_ms: u64,
    /// Its endpoints.
    pub rows: Vec<StatsRow>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Publishes this host's rows every [`PUBLISH_EVERY`] until aborted.
pub async fn publish(driver: Arc<Driver>, store: Arc<dyn Store>, names: Arc<RwLock<Names>>) {
    let key = format!("{PREFIX}{}", driver.state.host);
    let mut last: Option<(Instant, Vec<EndpointStats>)> = None;
    let mut lease: Option<i64> = None;
    loop {
        match driver.state.endpoint_stats().await {
            Ok(now) => {
                let at = Instant::now();
                let (secs, before) = last.take().map_or((0.0, Vec::new()), |(t, b)| {
                    (at.duration_since(t).as_secs_f64(), b)
                });
                let rows = rows(&before, now.clone(), secs, &*names.read().await);
                last = Some((at, now));
                let record = HostStats {
                    host: driver.state.host.clone(),
                    at_ms: now_ms(),
                    rows,
                };
                let value = serde_json::to_vec(&record).unwrap_or_default();
                if let Err(e) = put_leased(&*store, &mut lease, &key, value).await {
                    lease = None;
                    tracing::debug!(error = %e, "cannot publish statistics");
                }
            }
            Err(e) => tracing::debug!(error = %e, "statistics"),
        }
        tokio::time::sleep(PUBLISH_EVERY).await;
    }
}

/// Writes `key` on `lease`, kept alive, or on a new one when it is gone.
async fn put_leased(
    store: &dyn Store,
    lease: &mut Option<i64>,
    key: &str,
    value: Vec<u8>,
) -> Result<(), qingluan_store::StoreError> {
    let alive = match *lease {
        Some(l) => store.keep_alive(l).await?,
        None => false,
    };
    if !alive {
        *lease = Some(store.grant(STALE_AFTER.as_secs() as i64).await?);
    }
    let l = lease.expect("granted above");
    store
        .txn(
            vec![],
            vec![qingluan_store::Op::PutLeased(key.into(), value, l)],
        )
        .await
        .map(|_| ())
}

/// This host's rows with rates over one second, read now.
pub async fn local(driver: &Driver, names: &RwLock<Names>) -> anyhow::Result<HostStats> {
    let before = driver.state.endpoint_stats().await?;
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let now = driver.state.endpoint_stats().await?;
    let secs = start.elapsed().as_secs_f64();
    let mut rows = rows(&before, now, secs, &*names.read().await);
    for r in &mut rows {
        r.host = Some(driver.state.host.clone());
    }
    Ok(HostStats {
        host: driver.state.host.clone(),
        at_ms: now_ms(),
        rows,
    })
}

/// Removes this host's published rows (at shutdown).
pub async fn withdraw(store: &dyn Store, host: &str) {
    let _ = qingluan_store::delete(store, &format!("{PREFIX}{host}")).await;
}

/// Every host's published rows; entries that do not decode are skipped.
pub async fn read(store: &dyn Store) -> anyhow::Result<Vec<HostStats>> {
    let mut out: Vec<HostStats> = Vec::new();
    for kv in store.list(PREFIX).await? {
        match serde_json::from_slice(&kv.value) {
            Ok(h) => out.push(h),
            Err(e) => tracing::debug!(key = %kv.key, error = %e, "skipping statistics"),
        }
    }
    for h in &mut out {
        for r in &mut h.rows {
            r.host = Some(h.host.clone());
        }
    }
    Ok(out)
}
