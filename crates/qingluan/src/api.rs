//! The management API the CLI talks to: JSON over HTTP on a root-only unix socket.
//!
//! `docs/api.md` lists the routes. Names of Docker networks come from a cache the daemon
//! refreshes in the background from the Docker Engine API.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use qingluan_core::cluster::{ClusterEndpoint, ClusterError, ClusterNetwork};
use qingluan_core::ipam::{Ipam, Pool, PoolKind};
use qingluan_core::model::{Endpoint, Network};
use qingluan_core::service::ServiceError;
use qingluan_core::service::{Driver, EndpointStats};
use qingluan_plugin::CallStats;
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;

/// Shared state of the management API.
#[derive(Clone)]
pub struct Api {
    /// The cluster store (membership).
    pub store: Arc<dyn qingluan_store::Store>,
    /// The driver.
    pub driver: Arc<Driver>,
    /// IPAM.
    pub ipam: Arc<Ipam>,
    /// Plugin call timings.
    pub stats: Arc<CallStats>,
    /// Names of Docker networks and containers, refreshed in the background.
    pub names: Arc<RwLock<crate::docker::Names>>,
    /// Daemon start time (seconds since the epoch).
    pub started: u64,
    /// The Docker Engine API socket.
    pub docker: std::path::PathBuf,
    /// The intrusion detector.
    pub ids: Arc<crate::ids::runtime::Runtime>,
    /// ovs-vswitchd's control socket (packet traces).
    pub vswitchd: qingluan_dataplane::vswitchd::Vswitchd,
}

/// A network as the CLI shows it.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct NetworkView {
    /// Docker's name, when known.
    pub name: Option<String>,
    /// The record.
    #[serde(flatten)]
    pub network: Network,
    /// Its endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// `qingluan status`.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Status {
    /// Driver name.
    pub name: String,
    /// Daemon version.
    pub version: String,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Datapath type, or the error asking OVS.
    pub datapath: String,
    /// Whether OVS userspace TSO is on.
    pub userspace_tso: bool,
    /// Networks.
    pub networks: usize,
    /// Endpoints.
    pub endpoints: usize,
    /// Plugin call timings.
    pub calls: Vec<qingluan_plugin::MethodStats>,
    /// The hosts sharing the store, with liveness and endpoint counts.
    pub hosts: Vec<HostView>,
    /// Why the cluster part is missing (the cluster store is unreachable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_error: Option<String>,
    /// Local endpoints kept off their network: another host holds their address.
    #[serde(default)]
    pub conflicts: Vec<Endpoint>,
}

/// A host in `qingluan status`.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct HostView {
    /// Record and liveness.
    #[serde(flatten)]
    pub status: qingluan_core::membership::HostStatus,
    /// Endpoints it has, as listed in the cluster store.
    pub endpoints: usize,
}

/// A cluster network with its hosts, for `qingluan network ls`.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ClusterNetworkView {
    /// The definition.
    #[serde(flatten)]
    pub network: ClusterNetwork,
    /// Hosts that have it (`attached`) or removed it locally (`detached`).
    pub members: BTreeMap<String, bool>,
    /// Endpoints on it per host.
    pub endpoints: BTreeMap<String, usize>,
}

/// A `pool create` request.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct NewPool {
    /// Name.
    pub name: String,
    /// Supernet.
    pub subnet: ipnet::IpNet,
    /// Carved prefix.
    pub prefix: u8,
    /// Routing domain kind.
    pub kind: PoolKind,
}

/// An error answer: its status and message.
pub(crate) struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({"error": self.1}))).into_response()
    }
}

/// A 400 answer with `e` as its message.
pub(crate) fn bad(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, e.to_string())
}

/// The answer to a service error: 400 for what the user got wrong, 500 for the rest.
pub(crate) fn service(e: ServiceError) -> ApiError {
    match e {
        ServiceError::Option(_)
        | ServiceError::Invalid(_)
        | ServiceError::NetworkNotFound(_)
        | ServiceError::Connect(_)
        | ServiceError::Mirror(_)
        | ServiceError::Ids(_) => bad(e),
        e => ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Whether `id` is named by `name`: the whole ID or a prefix of it.
pub(crate) fn names_id(id: &str, name: &str) -> bool {
    !name.is_empty() && id.starts_with(name)
}

/// The ID of the qingluan network `name` names: its Docker name or an ID prefix.
pub(crate) async fn network_named(api: &Api, name: &str) -> Result<String, ApiError> {
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m);
    let nets = api.driver.state.networks().await.map_err(internal)?;
    let docker = crate::docker::networks(&api.docker, &api.driver.state.settings.docker_driver())
        .await
        .map_err(|e| bad(format!("cannot ask Docker for names: {e}")))?;
    let found: Vec<&str> = nets
        .iter()
        .map(|x| x.id.as_str())
        .filter(|id| docker.get(*id).is_some_and(|d| d.name == name) || names_id(id, name))
        .collect();
    match found.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(bad(format!("network {name:?} is not a qingluan network"))),
        _ => Err(bad(format!(
            "network {name:?} is ambiguous: give more of its ID"
        ))),
    }
}

/// Whether `name` (a name or ID prefix) is a container Docker has here, or one another host
/// has on a cluster network.
pub(crate) async fn container_known(api: &Api, name: &str) -> bool {
    crate::docker::container(&api.docker, name).await.is_ok()
        || api.driver.state.remote_container(name).await
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// The routes.
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route(
            "/v1/qos",
            get(crate::qos::list)
                .post(crate::qos::set)
                .delete(crate::qos::remove),
        )
        .route("/v1/acl", get(crate::acl::list).post(crate::acl::add))
        .route("/v1/acl/{id}", delete(crate::acl::remove))
        .route(
            "/v1/mirror",
            get(crate::mirror::list).post(crate::mirror::add),
        )
        .route("/v1/mirror/{id}", delete(crate::mirror::remove))
        .route("/v1/ids", get(crate::ids::status))
        .route("/v1/ids/enable", post(crate::ids::enable))
        .route("/v1/ids/disable", post(crate::ids::disable))
        .route("/v1/ids/reload", post(crate::ids::reload))
        .route("/v1/ids/release", post(crate::ids::release))
        .route("/v1/ids/alerts", get(crate::ids::alerts))
        .route(
            "/v1/connect",
            get(crate::connect::list)
                .post(crate::connect::connect)
                .delete(crate::connect::disconnect),
        )
        .route("/v1/trace", post(crate::trace::trace))
        .route("/v1/networks", get(networks))
        .route("/v1/networks/{id}", get(network))
        .route("/v1/endpoints", get(endpoints))
        .route("/v1/stats", get(stats))
        .route("/v1/cluster/endpoints", get(cluster_endpoints))
        .route("/v1/cluster/stats", get(cluster_stats))
        .route("/v1/cluster/networks", get(cluster_networks))
        .route(
            "/v1/cluster/networks/{name}",
            delete(remove_cluster_network),
        )
        .route("/v1/pools", get(pools).post(create_pool))
        .route("/v1/pools/{name}", delete(remove_pool))
        .with_state(api)
}

async fn status(State(api): State<Api>) -> Result<Json<Status>, ApiError> {
    let (datapath, tso) = match api.driver.state.facts().await {
        Ok(f) => (f.datapath, f.userspace_tso),
        Err(e) => (format!("unknown ({e})"), false),
    };
    let (hosts, cluster_error) = match host_views(&api).await {
        Ok(h) => (h, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    Ok(Json(Status {
        name: api.driver.state.settings.name.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_secs: qingluan_core::model::now().saturating_sub(api.started),
        datapath,
        userspace_tso: tso,
        networks: api.driver.state.networks().await.map_err(internal)?.len(),
        endpoints: api.driver.state.endpoints().await.map_err(internal)?.len(),
        calls: api.stats.summary(),
        hosts,
        cluster_error,
        conflicts: api.driver.agent.conflicted().await.map_err(internal)?,
    }))
}

async fn host_views(api: &Api) -> Result<Vec<HostView>, String> {
    let hosts = qingluan_core::membership::hosts(&*api.store)
        .await
        .map_err(|e| e.to_string())?;
    let eps = api
        .driver
        .agent
        .cluster_endpoints()
        .await
        .map_err(|e| e.to_string())?;
    Ok(hosts
        .into_iter()
        .map(|h| HostView {
            endpoints: eps.iter().filter(|e| e.host == h.host.id).count(),
            status: h,
        })
        .collect())
}

async fn cluster_endpoints(State(api): State<Api>) -> Result<Json<Vec<ClusterEndpoint>>, ApiError> {
    Ok(Json(
        api.driver
            .agent
            .cluster_endpoints()
            .await
            .map_err(internal)?,
    ))
}

async fn cluster_networks(
    State(api): State<Api>,
) -> Result<Json<Vec<ClusterNetworkView>>, ApiError> {
    let eps = api
        .driver
        .agent
        .cluster_endpoints()
        .await
        .map_err(internal)?;
    let mut out = Vec::new();
    for (net, members) in api
        .driver
        .agent
        .cluster_networks()
        .await
        .map_err(internal)?
    {
        let mut endpoints = BTreeMap::new();
        for e in eps
            .iter()
            .filter(|e| e.network_key.as_deref() == Some(net.key.as_str()))
        {
            *endpoints.entry(e.host.clone()).or_insert(0) += 1;
        }
        out.push(ClusterNetworkView {
            members: members.into_iter().map(|(h, m)| (h, m.attached)).collect(),
            endpoints,
            network: net,
        });
    }
    Ok(Json(out))
}

async fn remove_cluster_network(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<Json<ClusterNetwork>, ApiError> {
    use qingluan_core::service::ServiceError;
    api.driver
        .agent
        .remove_cluster_network(&name)
        .await
        .map(Json)
        .map_err(|e| {
            let code = match &e {
                ServiceError::Cluster(ClusterError::NotFound(_)) => StatusCode::NOT_FOUND,
                ServiceError::Cluster(ClusterError::InUse { .. }) => StatusCode::CONFLICT,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            ApiError(code, e.to_string())
        })
}

async fn views(api: &Api) -> Result<Vec<NetworkView>, ApiError> {
    let names = api.names.read().await.networks.clone();
    let eps = api.driver.state.endpoints().await.map_err(internal)?;
    Ok(api
        .driver
        .state
        .networks()
        .await
        .map_err(internal)?
        .into_iter()
        .map(|n| NetworkView {
            name: names.get(&n.id).cloned(),
            endpoints: eps
                .iter()
                .filter(|e| e.network_id == n.id)
                .cloned()
                .collect(),
            network: n,
        })
        .collect())
}

async fn networks(State(api): State<Api>) -> Result<Json<Vec<NetworkView>>, ApiError> {
    Ok(Json(views(&api).await?))
}

async fn network(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<NetworkView>, ApiError> {
    let all = views(&api).await?;
    let hits: Vec<NetworkView> = all
        .into_iter()
        .filter(|v| v.name.as_deref() == Some(id.as_str()) || v.network.id.starts_with(&id))
        .collect();
    match hits.len() {
        1 => Ok(Json(hits.into_iter().next().expect("one"))),
        0 => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("network {id} not found"),
        )),
        n => Err(ApiError(
            StatusCode::CONFLICT,
            format!("network {id} is ambiguous ({n} matches)"),
        )),
    }
}

async fn stats(State(api): State<Api>) -> Result<Json<Vec<EndpointStats>>, ApiError> {
    Ok(Json(
        api.driver.state.endpoint_stats().await.map_err(internal)?,
    ))
}

/// Every host's published rows; this host's read now when it publishes none (the embedded
/// store) or has not yet.
async fn cluster_stats(
    State(api): State<Api>,
) -> Result<Json<Vec<crate::host_stats::HostStats>>, ApiError> {
    let mut hosts = crate::host_stats::read(&*api.store)
        .await
        .map_err(internal)?;
    if !hosts.iter().any(|h| h.host == api.driver.state.host) {
        hosts.push(
            crate::host_stats::local(&api.driver, &api.names)
                .await
                .map_err(internal)?,
        );
    }
    hosts.sort_by(|a, b| a.host.cmp(&b.host));
    Ok(Json(hosts))
}

async fn endpoints(State(api): State<Api>) -> Result<Json<Vec<Endpoint>>, ApiError> {
    Ok(Json(api.driver.state.endpoints().await.map_err(internal)?))
}

async fn pools(
    State(api): State<Api>,
) -> Result<Json<Vec<qingluan_core::ipam::PoolUsage>>, ApiError> {
    Ok(Json(api.ipam.usage().await.map_err(internal)?))
}

async fn create_pool(
    State(api): State<Api>,
    Json(p): Json<NewPool>,
) -> Result<StatusCode, ApiError> {
    api.ipam
        .create_pool(Pool {
            name: p.name,
            subnet: p.subnet.trunc(),
            prefix: p.prefix,
            kind: p.kind,
        })
        .await
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    Ok(StatusCode::CREATED)
}

async fn remove_pool(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    api.ipam
        .remove_pool(&name)
        .await
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    Ok(StatusCode::NO_CONTENT)
}
