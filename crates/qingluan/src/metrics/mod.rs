//! Prometheus metrics at `http://<monitoring.listen>/metrics`, in the OpenMetrics text
//! format written by the `prometheus-client` crate.
//!
//! Each scrape reads the endpoints' counters fresh from OVS (one port-stats and one
//! flow-stats request per bridge, as `qingluan stats` does) and labels them with the names
//! Docker gives networks and containers; a container Docker named after the last
//! background refresh triggers one more read of the Engine API. The daemon's own
//! instruments (plugin calls, reconciles, store operations, the OVSDB connection) are kept
//! between scrapes. `docs/monitoring.md` lists every metric.

mod acl;
mod endpoints;
mod ids;
mod store;

pub use store::MeasuredStore;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::sync::Mutex;

use crate::api::Api;

/// Durations in seconds: buckets from 1 ms doubling to about 16 s.
type Durations<L> = Family<L, Histogram, fn() -> Histogram>;

fn durations() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// The label of reconcile durations.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    /// `ok` or `error`.
    result: &'static str,
}

/// The labels of store operations.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StoreLabels {
    /// `local` (this host's redb file) or `cluster`.
    store: &'static str,
    /// `get`, `list` or `txn`.
    operation: &'static str,
}

/// The daemon's instruments, shared by the tasks that record into them and the scrapes.
pub struct Metrics {
    host: String,
    reconciles: Durations<ResultLabel>,
    store_ops: Durations<StoreLabels>,
    store_errors: Family<StoreLabels, Counter>,
    ovsdb_up: AtomicBool,
    counters: Mutex<endpoints::Continuity>,
    docker: PathBuf,
    driver: String,
}

impl Metrics {
    /// Instruments of the daemon of `host`, whose driver is `driver` in the Docker reachable
    /// at `docker`.
    pub fn new(host: &str, docker: PathBuf, driver: &str) -> Arc<Metrics> {
        Arc::new(Metrics {
            host: host.into(),
            reconciles: Family::new_with_constructor(durations),
            store_ops: Family::new_with_constructor(durations),
            store_errors: Family::default(),
            ovsdb_up: AtomicBool::new(false),
            counters: Mutex::default(),
            docker,
            driver: driver.into(),
        })
    }

    /// Records one full reconcile.
    pub fn reconciled(&self, took: Duration, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reconciles
            .get_or_create(&ResultLabel { result })
            .observe(took.as_secs_f64());
    }

    /// Records the OVSDB connection going up or down.
    pub fn ovsdb_connected(&self, up: bool) {
        self.ovsdb_up.store(up, Ordering::Relaxed);
    }

    /// Records one store operation.
    fn stored(&self, store: &'static str, operation: &'static str, took: Duration, ok: bool) {
        let labels = StoreLabels { store, operation };
        self.store_ops
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if !ok {
            self.store_errors.get_or_create(&labels).inc();
        }
    }

    /// One scrape: every metric in the OpenMetrics text format.
    async fn render(&self, api: &Api) -> String {
        let started = Instant::now();
        let mut registry = Registry::with_prefix("qingluan");
        let build = Family::<VersionLabel, Gauge>::default();
        build
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "The daemon's version", build);
        registry.register(
            "plugin_call_duration_seconds",
            "Time to answer a libnetwork plugin call, by method",
            api.stats.histograms(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time of a full reconcile of the dataplane, by result",
            self.reconciles.clone(),
        );
        registry.register(
            "store_operation_duration_seconds",
            "Time of a store operation, by store and operation",
            self.store_ops.clone(),
        );
        registry.register(
            "store_errors",
            "Store operations that failed, by store and operation",
            self.store_errors.clone(),
        );
        let ovs = Family::<ComponentLabel, Gauge>::default();
        ovs.get_or_create(&ComponentLabel { component: "ovsdb" })
            .set(self.ovsdb_up.load(Ordering::Relaxed).into());
        let stats = api.driver.state.endpoint_stats().await;
        let openflow_down = matches!(stats, Err(qingluan_core::service::ServiceError::Ovs(_)));
        ovs.get_or_create(&ComponentLabel {
            component: "openflow",
        })
        .set((!openflow_down).into());
        registry.register(
            "ovs_up",
            "Whether the daemon reaches OVS: ovsdb (the OVSDB connection), openflow (no bridge failed to answer this scrape)",
            ovs,
        );
        if let Ok(hosts) = qingluan_core::membership::hosts(&*api.store).await {
            let g = Family::<StateLabel, Gauge>::default();
            for state in ["up", "down"] {
                let n = hosts.iter().filter(|h| h.up == (state == "up")).count();
                g.get_or_create(&StateLabel { state }).set(n as i64);
            }
            registry.register("cluster_hosts", "Hosts sharing the store, by state", g);
        }
        if let Ok(stats) = stats {
            let names = self.names(api, &stats).await;
            let mut counters = self.counters.lock().await;
            endpoints::register(&mut registry, &self.host, api, &names, &mut counters, stats).await;
            acl::register(&mut registry, &self.host, api, &names).await;
            ids::register(&mut registry, &self.host, api, &names).await;
        }
        let took = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        took.set(started.elapsed().as_secs_f64());
        registry.register(
            "stats_scrape_duration_seconds",
            "Time this scrape took to gather its numbers",
            took,
        );
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        text
    }

    /// Docker's names, read again now when a counted endpoint has no container name and
    /// the last read is older than 2 s.
    async fn names(
        &self,
        api: &Api,
        stats: &[qingluan_core::service::EndpointStats],
    ) -> crate::docker::Names {
        let current = api.names.read().await.clone();
        let missing = stats
            .iter()
            .any(|s| !current.containers.contains_key(&s.endpoint));
        let stale = current
            .read
            .is_none_or(|t| t.elapsed() > Duration::from_secs(2));
        if !(missing && stale) {
            return current;
        }
        // A slow Docker must not hold the scrape past Prometheus' timeout; a failed read
        // counts as a read, so it is not retried before 2 s either.
        let read = tokio::time::timeout(
            Duration::from_secs(1),
            crate::docker::networks(&self.docker, &self.driver),
        )
        .await;
        let fresh = match read {
            Ok(Ok(nets)) => crate::docker::Names::of(&nets),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "docker api");
                crate::docker::Names {
                    read: Some(Instant::now()),
                    ..current
                }
            }
            Err(_) => {
                tracing::debug!("docker api: no answer within 1 s");
                crate::docker::Names {
                    read: Some(Instant::now()),
                    ..current
                }
            }
        };
        *api.names.write().await = fresh.clone();
        fresh
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ComponentLabel {
    component: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// The OpenMetrics content type Prometheus asks for.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `addr` (checked by the configuration: loopback unless allowed).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot serve metrics on {addr} (monitoring.listen)"))
}

/// `/metrics`; scrapes run one at a time.
pub fn router(api: Api, metrics: Arc<Metrics>) -> Router {
    let scrape = Arc::new(Mutex::new(()));
    Router::new()
        .route(
            "/metrics",
            get(
                |State((api, metrics, scrape)): State<(Api, Arc<Metrics>, Arc<Mutex<()>>)>| async move {
                    let _one = scrape.lock().await;
                    ([(CONTENT_TYPE, OPENMETRICS)], metrics.render(&api).await).into_response()
                },
            ),
        )
        .with_state((api, metrics, scrape))
}
