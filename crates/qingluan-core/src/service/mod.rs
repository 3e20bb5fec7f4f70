//! The driver service: every plugin call as validate → persist → apply.
//!
//! A call is validated completely first (options, addresses, ports), then its record is
//! written to the store (durable before we answer), then the dataplane is reconciled. When
//! applying fails, the record is restored and the dataplane reconciled back, so a refused
//! call changes nothing. A new endpoint's veth pair and pass are made between its
//! CreateEndpoint and its Join, which waits for them and undoes the endpoint when they
//! failed; DeleteEndpoint answers once its record is deleted and its pass follows (see
//! `endpoints.rs`). Calls that read and write records are serialised by one lock, held
//! only while they write by Join and DeleteEndpoint (CreateEndpoint on a host network
//! writes its record in the address binding's compare-and-swap, without it); the passes
//! that follow writes are shared: callers whose write came before a pass began take its
//! outcome instead of running one each. One network's deletions answer one at a time (see
//! `endpoints.rs`).
//!
//! One handle per concern, each in its own file, all over the shared [`State`]:
//! [`Networks`] (`networks.rs`), [`Endpoints`] (`endpoints.rs`), [`Publishing`]
//! (`publishing.rs`, with the one rule for `-p`), [`Qos`] (`qos.rs`, `qingluan qos` and the
//! containers of endpoints), [`Acl`] (`acl.rs`, `qingluan acl`), [`Connect`] (`connect.rs`, `qingluan connect`), [`Mirrors`]
//! (`mirror.rs`), [`Ids`] (`ids.rs`, `qingluan ids`), [`Collector`] (`collector.rs`) and the [`ClusterAgent`]
//! (`agent.rs`). [`Driver`] bundles them. `stats.rs` reads the endpoints'
//! traffic counters.

/// Declares a handle over the shared [`State`]: a cheap clone that reads the state through
/// `Deref`.
macro_rules! handle {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name {
            s: std::sync::Arc<super::State>,
        }

        impl $name {
            pub(crate) fn new(s: std::sync::Arc<super::State>) -> Self {
                $name { s }
            }
        }

        impl std::ops::Deref for $name {
            type Target = super::State;
            fn deref(&self) -> &super::State {
                &self.s
            }
        }
    };
}

mod acl;
mod agent;
mod collector;
mod connect;
mod endpoints;
mod ids;
mod mirror;
mod networks;
mod publishing;
mod qos;
mod stats;

pub use acl::{Acl, AclRow, ScopedRule};
pub use agent::{ClusterAgent, ClusterReport, Down, ORPHAN_SECS};
pub use collector::Collector;
pub use connect::{Connect, ConnectionRow};
pub use endpoints::Endpoints;
pub use ids::{Ids, Quarantine};
pub use mirror::{MirrorRow, Mirrors};
pub use networks::Networks;
pub use publishing::Publishing;
pub use qos::{OverrideRow, Qos, QosList, QosRow};
pub use stats::{Counters, EndpointStats};

use std::collections::BTreeMap;
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net};
use qingluan_store::{Op, Store, StoreError};
use tokio::sync::{Mutex, RwLock};

use crate::acl::{AclRule, Scope};
use crate::cluster::{self, ClusterEndpoint, ClusterError};
use crate::connect::{ConnectError, Connection};
use crate::desired::{self, Desired, HostFacts};
use crate::ipam::{Ipam, IpamError};
use crate::model::{Endpoint, Network};
use crate::options::{OptionError, RawPort};
use crate::qos::{QosOverride, QosSpec};
use crate::reconcile::{Pass, ReconcileError, Reconciler, Report};
use crate::records;
use crate::settings::Settings;

/// Errors of driver calls; the text reaches the user through the Docker CLI.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A bad option.
    #[error(transparent)]
    Option(#[from] OptionError),
    /// IPAM refused.
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// A network we do not know.
    #[error("network {0} not found")]
    NetworkNotFound(String),
    /// A CreateNetwork for an ID we have with another definition.
    #[error(
        "network {0} already exists with another definition (mode, subnet, gateway or \
         options differ); it was left as it is"
    )]
    NetworkExists(String),
    /// A call naming an endpoint under a network it is not on.
    #[error("endpoint {endpoint} is on network {on}, not on {asked}")]
    WrongNetwork {
        endpoint: String,
        on: String,
        asked: String,
    },
    /// An endpoint we do not know.
    #[error("endpoint {0} not found")]
    EndpointNotFound(String),
    /// `-p` on a network without a way out.
    #[error("port publishing (-p) is not supported on {0}")]
    PublishingRefused(&'static str),
    /// A flat or vlan network with no interface to use.
    #[error(
        "no uplink interface for this network: give --opt parent=<interface> or set network.uplink"
    )]
    NoUplink,
    /// `--opt parent` names no interface of this host.
    #[error("parent interface {0:?} does not exist on this host")]
    ParentMissing(String),
    /// `--internal` with `--opt nat=true`.
    #[error("--internal and --opt nat=true contradict each other: nat=true is a way out")]
    InternalNat,
    /// A subnet this host would route overlaps one it already routes.
    #[error(
        "subnet {subnet} overlaps {other} of network {network}, which this host already \
         routes: a vxlan network with nat=true has its gateway on every host"
    )]
    RoutedOverlap {
        subnet: Ipv4Net,
        other: Ipv4Net,
        network: String,
    },
    /// A host port published twice.
    #[error("host port {port}/{proto} is already published by endpoint {owner}")]
    PortInUse {
        port: u16,
        proto: &'static str,
        owner: String,
    },
    /// A request Docker should never send.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The dataplane could not be programmed.
    #[error("cannot program the dataplane: {0}")]
    Dataplane(#[from] ReconcileError),
    /// OVS could not be asked about the host.
    #[error("{0}")]
    Ovs(String),
    /// The cluster refused.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `connect` or `disconnect` refused.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// `mirror add` or `mirror rm` refused.
    #[error(transparent)]
    Mirror(crate::mirror::MirrorError),
    /// An `ids` command refused.
    #[error(transparent)]
    Ids(#[from] crate::ids::IdsError),
}

/// One IPAM pool of a CreateNetwork request (strings as Docker sends them).
#[derive(Clone, Debug, Default)]
pub struct IpamData {
    /// The subnet, CIDR.
    pub pool: String,
    /// The gateway with the subnet's prefix, CIDR.
    pub gateway: String,
}

/// A CreateNetwork call.
#[derive(Clone, Debug, Default)]
pub struct CreateNetwork {
    /// Docker's network ID.
    pub id: String,
    /// `-o k=v` options.
    pub generic: BTreeMap<String, String>,
    /// `--internal`.
    pub internal: bool,
    /// IPv4 pools.
    pub v4: Vec<IpamData>,
    /// IPv6 pools.
    pub v6: Vec<IpamData>,
}

/// A CreateEndpoint call.
#[derive(Clone, Debug, Default)]
pub struct CreateEndpoint {
    /// Docker's network ID.
    pub network_id: String,
    /// Docker's endpoint ID.
    pub endpoint_id: String,
    /// IPv4 address, CIDR.
    pub address: String,
    /// IPv6 address, CIDR or empty.
    pub address_v6: String,
    /// MAC the user asked for, or empty.
    pub mac: String,
    /// `com.docker.network.portmap`.
    pub ports: Vec<RawPort>,
    /// Option keys given with `--driver-opt`.
    pub driver_opts: BTreeMap<String, String>,
}

/// The driver: one handle per concern over the shared [`State`].
pub struct Driver {
    /// CreateNetwork, DeleteNetwork.
    pub networks: Networks,
    /// CreateEndpoint, Join, Leave, DeleteEndpoint, EndpointOperInfo.
    pub endpoints: Endpoints,
    /// ProgramExternalConnectivity, RevokeExternalConnectivity.
    pub publishing: Publishing,
    /// QoS overrides and the containers of endpoints.
    pub qos: Qos,
    /// ACL rules.
    pub acl: Acl,
    /// Group connections.
    pub connect: Connect,
    /// Port mirrors.
    pub mirrors: Mirrors,
    /// The detector's watches, rules and quarantines.
    pub ids: Ids,
    /// Clean-up of what Docker forgot or a crash left.
    pub collector: Collector,
    /// The cluster agent.
    pub agent: ClusterAgent,
    /// What they share.
    pub state: Arc<State>,
}

impl Driver {
    /// A driver over stores, IPAM and a reconciler.
    pub fn new(
        settings: Settings,
        stores: Stores,
        ipam: Arc<Ipam>,
        reconciler: Reconciler,
    ) -> Self {
        let s = Arc::new(State::new(settings, stores, ipam, reconciler));
        Driver {
            networks: Networks::new(s.clone()),
            endpoints: Endpoints::new(s.clone()),
            publishing: Publishing::new(s.clone()),
            qos: Qos::new(s.clone()),
            acl: Acl::new(s.clone()),
            connect: Connect::new(s.clone()),
            mirrors: Mirrors::new(s.clone()),
            ids: Ids::new(s.clone()),
            collector: Collector::new(s.clone()),
            agent: ClusterAgent::new(s.clone()),
            state: s,
        }
    }
}

/// What every part of the driver shares: settings, stores, IPAM, the reconciler, host
/// facts, the cluster view and the call lock.
pub struct State {
    /// Settings.
    pub settings: Settings,
    /// This host's records.
    pub(crate) store: Arc<dyn Store>,
    /// The cluster store (cluster networks, every host's endpoints).
    pub(crate) cluster: Arc<dyn Store>,
    /// This host's ID in the cluster.
    pub host: String,
    /// IPAM.
    pub ipam: Arc<Ipam>,
    /// The reconciler.
    pub(crate) reconciler: Reconciler,
    /// Host facts, learnt from OVS on first need.
    pub(crate) facts: RwLock<Option<HostFacts>>,
    /// Other hosts' overlay endpoints, refreshed by the cluster agent; kept as it was while
    /// the cluster store is unreachable, so existing tunnels keep working, and saved in
    /// this host's store so a restart starts from it ([`State::restore_cluster`]).
    pub(crate) view: RwLock<desired::ClusterView>,
    /// The ACL rules and connections of cluster networks: read from the cluster store on
    /// first need, then kept current by the cluster agent and by this host's changes; kept
    /// as they were while the cluster store is unreachable, and saved like the view.
    pub(crate) cluster_intent: RwLock<Option<ClusterIntent>>,
    /// Serialises calls.
    pub(crate) lock: Mutex<()>,
    /// One lock per network with deletions in flight.
    pub(crate) deletions: Deletions,
    /// Writes whose pass was asked for (tickets of [`State::sync_after_write`]).
    written: std::sync::atomic::AtomicU64,
    /// The last ticket a successful shared pass covered.
    covered: std::sync::atomic::AtomicU64,
    /// The last ticket a shared pass read, successful or not (it may still be programming).
    read: std::sync::atomic::AtomicU64,
    /// The outcome of the pair and pass each CreateEndpoint started, by endpoint ID, until
    /// its Join takes it (`endpoints.rs`).
    pub(crate) settling: std::sync::Mutex<BTreeMap<String, Settling>>,
    /// Woken after each Join: the daemon then learns the endpoint's container.
    pub joined: tokio::sync::Notify,
}

pub use crate::modes::VXLAN_OVERHEAD;

/// The outcome of a new endpoint's pass, once it ran.
pub(crate) type Settling = tokio::sync::oneshot::Receiver<Result<(), ServiceError>>;

/// Locks by network ID, each kept only while someone holds or waits for it.
#[derive(Default)]
pub(crate) struct Deletions(std::sync::Mutex<BTreeMap<String, Arc<Mutex<()>>>>);

impl Deletions {
    /// The lock of network `id` (drop the returned handle when done).
    pub(crate) fn on(&self, id: &str) -> Arc<Mutex<()>> {
        let mut locks = self.0.lock().expect("deletions lock");
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(id.to_string()).or_default().clone()
    }
}

/// This host's store key of the last cluster view it applied.
pub(crate) const CLUSTER_VIEW: &str = "cluster-cache/view";
/// This host's store key of the last cluster intent it applied.
const CLUSTER_INTENT: &str = "cluster-cache/intent";

/// What users asked for on cluster networks, naming them by cluster key (`cluster.rs`).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct ClusterIntent {
    /// ACL rules.
    pub acl: Vec<AclRule>,
    /// Group connections.
    pub connections: Vec<Connection>,
    /// The detector's watches.
    pub ids: Vec<crate::ids::IdsWatch>,
    /// The detector's rule set.
    pub ids_rules: Option<crate::ids::IdsRules>,
}

/// Where a driver keeps its records.
pub struct Stores {
    /// This host's own records.
    pub local: Arc<dyn Store>,
    /// The cluster store; the local one on a single host.
    pub cluster: Arc<dyn Store>,
    /// This host's ID.
    pub host: String,
}

/// Where the kernel shows the openvswitch module when it is loaded.
pub const OVS_MODULE: &str = "/sys/module/openvswitch";

/// The datapath type to use given the setting and whether the kernel module is loaded.
pub fn choose_datapath(setting: &str, kernel_module: bool) -> String {
    match setting {
        "netdev" | "system" => setting.to_string(),
        _ if kernel_module => "system".into(),
        _ => "netdev".into(),
    }
}

impl State {
    /// The shared state over stores, IPAM and a reconciler.
    fn new(settings: Settings, stores: Stores, ipam: Arc<Ipam>, reconciler: Reconciler) -> Self {
        State {
            settings,
            store: stores.local,
            cluster: stores.cluster,
            host: stores.host,
            ipam,
            reconciler,
            facts: RwLock::new(None),
            view: RwLock::new(Default::default()),
            cluster_intent: RwLock::new(None),
            lock: Mutex::new(()),
            deletions: Deletions::default(),
            written: Default::default(),
            covered: Default::default(),
            read: Default::default(),
            settling: Default::default(),
            joined: tokio::sync::Notify::new(),
        }
    }

    /// Takes the call lock (background work that edits records).
    pub(crate) async fn locked(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.lock.lock().await
    }

    /// This host's store.
    pub(crate) fn local_store(&self) -> &dyn Store {
        &*self.store
    }

    /// The reconciler.
    pub fn reconciler(&self) -> &Reconciler {
        &self.reconciler
    }

    /// Host facts, asking OVS the first time.
    pub async fn facts(&self) -> Result<HostFacts, ServiceError> {
        if let Some(f) = self.facts.read().await.clone() {
            return Ok(f);
        }
        let sys = self
            .reconciler
            .adapters()
            .ovs
            .system()
            .await
            .map_err(|e| ServiceError::Ovs(e.to_string()))?;
        let module = std::path::Path::new(OVS_MODULE).exists();
        let f = HostFacts {
            datapath: choose_datapath(&self.settings.datapath, module),
            userspace_tso: sys
                .other_config
                .get("userspace-tso-enable")
                .map(String::as_str)
                == Some("true"),
        };
        *self.facts.write().await = Some(f.clone());
        Ok(f)
    }

    /// Every network.
    pub async fn networks(&self) -> Result<Vec<Network>, ServiceError> {
        Ok(records::list(&*self.store).await?)
    }

    /// Every network by ID.
    pub async fn networks_by_id(&self) -> Result<BTreeMap<String, Network>, ServiceError> {
        Ok(self
            .networks()
            .await?
            .into_iter()
            .map(|n| (n.id.clone(), n))
            .collect())
    }

    /// Every endpoint.
    pub async fn endpoints(&self) -> Result<Vec<Endpoint>, ServiceError> {
        Ok(records::list(&*self.store).await?)
    }

    /// Every `qingluan qos set` override, by ID.
    pub async fn qos_overrides(&self) -> Result<BTreeMap<String, QosSpec>, ServiceError> {
        Ok(records::list::<QosOverride>(&*self.store)
            .await?
            .into_iter()
            .map(|o| (o.id, o.spec))
            .collect())
    }

    /// Every ACL rule of this host's own (scope host).
    pub async fn acl_rules(&self) -> Result<Vec<AclRule>, ServiceError> {
        Ok(records::list(&*self.store).await?)
    }

    /// What users asked for on cluster networks, by cluster key: as restored at start or
    /// last read (nothing while neither happened).
    pub(crate) async fn cluster_intent(&self) -> ClusterIntent {
        if let Some(i) = self.cluster_intent.read().await.clone() {
            return i;
        }
        match self.refresh_cluster_intent().await {
            Ok(_) => self.cluster_intent.read().await.clone().unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the cluster's ACL rules and connections");
                ClusterIntent::default()
            }
        }
    }

    /// Re-reads what users asked for on cluster networks; whether it changed.
    pub(crate) async fn refresh_cluster_intent(&self) -> Result<bool, ServiceError> {
        let read = ClusterIntent {
            acl: cluster::acl_rules(&*self.cluster).await?,
            connections: cluster::connections(&*self.cluster).await?,
            ids: cluster::ids_watches(&*self.cluster).await?,
            ids_rules: cluster::ids_rules(&*self.cluster).await?,
        };
        let mut cache = self.cluster_intent.write().await;
        if cache.as_ref() == Some(&read) {
            return Ok(false);
        }
        *cache = Some(read.clone());
        drop(cache);
        self.save_cluster(CLUSTER_INTENT, &read).await;
        Ok(true)
    }

    /// Takes back the cluster view and intent this host last applied, from its own store:
    /// the first reconcile after a restart then keeps the tunnels to other hosts' endpoints
    /// and the cluster networks' ACL rules while the cluster store is read again (or down).
    /// Without it that reconcile removed them until the cluster agent's first pass. However
    /// old, what was saved is the best this host knows, as for a running daemon while the
    /// cluster store is unreachable; the agent's first pass with the store replaces it.
    pub async fn restore_cluster(&self) -> Result<(), ServiceError> {
        let store = &*self.store;
        if let Some(view) = qingluan_store::get_json(store, CLUSTER_VIEW).await? {
            *self.view.write().await = view;
        }
        if let Some(intent) = qingluan_store::get_json(store, CLUSTER_INTENT).await? {
            *self.cluster_intent.write().await = Some(intent);
        }
        Ok(())
    }

    /// Saves what the cluster store said, for [`State::restore_cluster`]. A failed save
    /// costs only that: it is written again at the next change.
    pub(crate) async fn save_cluster<T: serde::Serialize>(&self, key: &str, value: &T) {
        let put = Op::Put(key.to_string(), qingluan_store::to_json(value));
        if let Err(e) = self.store.txn(vec![], vec![put]).await {
            tracing::warn!(error = %e, key, "cannot save the cluster's state for the next start");
        }
    }

    /// Takes in what this host changed in the cluster store and applies it; on failure
    /// writes `undo` to the cluster store and applies that.
    pub(crate) async fn apply_cluster(&self, undo: Vec<Op>) -> Result<(), ServiceError> {
        self.refresh_cluster_intent().await?;
        if let Err(e) = self.sync(false).await {
            self.cluster.txn(vec![], undo).await?;
            self.refresh_cluster_intent().await?;
            if let Err(again) = self.sync(false).await {
                tracing::warn!(error = %again, "reconcile after undo failed");
            }
            return Err(e);
        }
        Ok(())
    }

    /// This host's network IDs by cluster key.
    async fn ids_by_key(&self) -> Result<BTreeMap<String, String>, ServiceError> {
        Ok(self
            .networks()
            .await?
            .into_iter()
            .filter_map(|n| Some((n.cluster?, n.id)))
            .collect())
    }

    /// Every rule this host enforces with its scope: its own, then those of the cluster
    /// networks it has, named by this host's network IDs.
    pub async fn enforced_rules(&self) -> Result<Vec<(AclRule, Scope)>, ServiceError> {
        let mut out: Vec<(AclRule, Scope)> = self
            .acl_rules()
            .await?
            .into_iter()
            .map(|r| (r, Scope::Host))
            .collect();
        let ids = self.ids_by_key().await?;
        for r in self.cluster_intent().await.acl {
            if !ids.contains_key(&r.spec.network) {
                continue;
            }
            let spec = r
                .spec
                .renamed(|k| ids.get(k).map_or(k, String::as_str).into());
            out.push((AclRule { id: r.id, spec }, Scope::Cluster));
        }
        Ok(out)
    }

    /// Every group connection this host makes, as [`Self::enforced_connections`] without
    /// the scopes.
    pub async fn made_connections(&self) -> Result<Vec<Connection>, ServiceError> {
        Ok(self
            .enforced_connections()
            .await?
            .into_iter()
            .map(|(c, _)| c)
            .collect())
    }

    /// Every group connection this host makes with its scope: its own, then those of the
    /// cluster whose networks it both has, named by this host's network IDs.
    pub async fn enforced_connections(&self) -> Result<Vec<(Connection, Scope)>, ServiceError> {
        let mut out: Vec<(Connection, Scope)> = self
            .connections()
            .await?
            .into_iter()
            .map(|c| (c, Scope::Host))
            .collect();
        let ids = self.ids_by_key().await?;
        for c in self.cluster_intent().await.connections {
            match &c.pair {
                crate::connect::Pair::Networks(a, b) => {
                    if let (Some(a), Some(b)) = (ids.get(a), ids.get(b)) {
                        let pair = crate::connect::Pair::networks(a, b);
                        out.push((Connection { id: c.id, pair }, Scope::Cluster));
                    }
                }
                crate::connect::Pair::Containers(..) => out.push((c, Scope::Cluster)),
            }
        }
        Ok(out)
    }

    /// Whether another host has a container named `name` (or with an ID starting so) on a
    /// cluster network, as the cluster agent last saw.
    pub async fn remote_container(&self, name: &str) -> bool {
        self.view
            .read()
            .await
            .containers
            .iter()
            .any(|r| r.container.is_named(name))
    }

    /// Other hosts' containers on cluster networks, as the cluster agent last saw them.
    pub async fn remote_containers(&self) -> Vec<desired::RemoteContainer> {
        self.view.read().await.containers.clone()
    }

    /// This host's network IDs by cluster key (public for the detector's names).
    pub async fn network_ids_by_key(&self) -> Result<BTreeMap<String, String>, ServiceError> {
        self.ids_by_key().await
    }

    /// Every port mirror.
    pub async fn mirrors(&self) -> Result<Vec<crate::mirror::Mirror>, ServiceError> {
        Ok(records::list(&*self.store).await?)
    }

    /// Every mirror the dataplane holds: the port mirrors, then those that copy the
    /// detector's watched networks to their capture ports (`ids.rs`).
    pub(crate) async fn all_mirrors(&self) -> Result<Vec<crate::mirror::Mirror>, ServiceError> {
        let mut out = self.mirrors().await?;
        let watches = self.ids_network_watches().await?;
        let containers = self.ids_container_watches().await?;
        if !watches.is_empty() || !containers.is_empty() {
            let nets = self.networks().await?;
            let eps = self.endpoints().await?;
            out.extend(crate::ids::mirrors(
                &watches,
                &containers,
                &nets,
                &eps,
                &self.settings.prefix,
            ));
        }
        Ok(out)
    }

    /// Every network the detector inspects here, with its mode: the watched networks,
    /// then those of the watched containers (`ids::effective`).
    pub async fn ids_watches(&self) -> Result<Vec<crate::ids::IdsWatch>, ServiceError> {
        let watches = self.ids_network_watches().await?;
        let containers = self.ids_container_watches().await?;
        if containers.is_empty() {
            return Ok(watches);
        }
        let nets = self.networks().await?;
        let eps = self.endpoints().await?;
        Ok(crate::ids::effective(&watches, &containers, &nets, &eps))
    }

    /// Every container the detector watches here.
    pub async fn ids_container_watches(
        &self,
    ) -> Result<Vec<crate::ids::ContainerWatch>, ServiceError> {
        Ok(records::list(&*self.store).await?)
    }

    /// Every network the detector watches as a whole here: this host's own watches, then
    /// those of the cluster networks it has, named by this host's network IDs.
    pub async fn ids_network_watches(&self) -> Result<Vec<crate::ids::IdsWatch>, ServiceError> {
        let mut out: Vec<crate::ids::IdsWatch> = records::list(&*self.store).await?;
        let cluster = self.cluster_intent().await.ids;
        if !cluster.is_empty() {
            let ids = self.ids_by_key().await?;
            out.extend(cluster.into_iter().filter_map(|w| {
                Some(crate::ids::IdsWatch {
                    network: ids.get(&w.network)?.clone(),
                    mode: w.mode,
                })
            }));
        }
        Ok(out)
    }

    /// The detector's rule set of the cluster, as the cluster agent last read it.
    pub async fn cluster_ids_rules(&self) -> Option<crate::ids::IdsRules> {
        self.cluster_intent().await.ids_rules
    }

    /// The mirrors' target interfaces that exist on the host now.
    pub(crate) async fn mirror_interfaces(
        &self,
    ) -> Result<std::collections::BTreeSet<String>, ServiceError> {
        let mut out = std::collections::BTreeSet::new();
        let links = &self.reconciler.adapters().links;
        for m in self.all_mirrors().await? {
            if let crate::mirror::Target::Interface(i) = &m.spec.to {
                let found = links.link(i).await;
                if found
                    .map_err(|e| ReconcileError(vec![format!("interface {i}: {e}")]))?
                    .is_some()
                {
                    out.insert(i.clone());
                }
            }
        }
        Ok(out)
    }

    /// Every group connection.
    pub async fn connections(&self) -> Result<Vec<Connection>, ServiceError> {
        Ok(records::list(&*self.store).await?)
    }

    pub(crate) async fn network(&self, id: &str) -> Result<Network, ServiceError> {
        records::get(&*self.store, id)
            .await?
            .ok_or_else(|| ServiceError::NetworkNotFound(short(id)))
    }

    pub(crate) async fn endpoint(&self, id: &str) -> Result<Endpoint, ServiceError> {
        records::get(&*self.store, id)
            .await?
            .ok_or_else(|| ServiceError::EndpointNotFound(short(id)))
    }

    /// The desired dataplane from the stored records, as of `pass`: an endpoint Docker has
    /// joined whose host veth is gone (its container died without a DeleteEndpoint) is left
    /// out until its record is collected, since OVS can give its port no OpenFlow number.
    pub(crate) async fn desired(&self, pass: &Pass<'_>) -> Result<Desired, ServiceError> {
        let facts = self.facts().await?;
        let nets = self.networks().await?;
        let mut eps = self.endpoints().await?;
        eps.retain(|e| !e.joined || pass.has_veth(&e.veth));
        let intent = crate::modes::Intent {
            qos: self.qos_overrides().await?,
            acl: self
                .enforced_rules()
                .await?
                .into_iter()
                .map(|(r, _)| r)
                .collect(),
            connections: self.made_connections().await?,
            mirrors: self.all_mirrors().await?,
            mirror_interfaces: self.mirror_interfaces().await?,
        };
        let view = self.view.read().await;
        Ok(crate::modes::build(
            &self.settings,
            &facts,
            &nets,
            &eps,
            &view,
            &intent,
        ))
    }

    /// The netfilter rules the records call for now: what the last pass installed, or the
    /// next one will.
    pub async fn ruleset(&self) -> Result<qingluan_dataplane::netfilter::Ruleset, ServiceError> {
        let pass = self.reconciler.begin().await?;
        Ok(self.desired(&pass).await?.firewall.ruleset())
    }

    /// One reconcile pass over everything.
    pub async fn sync(&self, full: bool) -> Result<Report, ServiceError> {
        let pass = self.reconciler.begin().await?;
        let d = self.desired(&pass).await?;
        Ok(pass.sync(&d, full).await?)
    }

    /// A pass that begins after the caller's write, shared: a caller whose ticket a pass
    /// already covered (it wrote before that pass read the records, and the pass succeeded)
    /// returns at once, and one whose ticket a pass still programming read waits for its
    /// outcome. A failed pass covers nobody else, so each caller of it learns from its own
    /// pass whether its change is what fails.
    pub(crate) async fn sync_after_write(&self) -> Result<(), ServiceError> {
        use std::sync::atomic::Ordering::SeqCst;
        let ticket = self.written.fetch_add(1, SeqCst) + 1;
        let waited = std::time::Instant::now();
        let mut pass = self.reconciler.begin().await?;
        if self.covered.load(SeqCst) < ticket && self.read.load(SeqCst) >= ticket {
            drop(pass);
            self.reconciler.settled().await;
            pass = self.reconciler.begin().await?;
        }
        if self.covered.load(SeqCst) >= ticket {
            return Ok(());
        }
        let upto = self.written.load(SeqCst);
        self.read.fetch_max(upto, SeqCst);
        let t = std::time::Instant::now();
        let d = self.desired(&pass).await?;
        tracing::debug!(
            waited_ms = (t - waited).as_secs_f64() * 1e3,
            took_ms = t.elapsed().as_secs_f64() * 1e3,
            writes = upto + 1 - ticket,
            "desired state built"
        );
        pass.sync_noting(&d, false, |ok| {
            if ok {
                self.covered.fetch_max(upto, SeqCst);
            }
        })
        .await?;
        Ok(())
    }

    /// Re-programs bridges that lost their flows; returns their names. Cheap while nothing
    /// is lost (see `Reconciler::flows_lost`).
    pub async fn repair_flows(&self) -> Result<Vec<String>, ServiceError> {
        let lost = self.reconciler.flows_lost().await;
        if lost.is_empty() {
            return Ok(lost);
        }
        let pass = self.reconciler.begin().await?;
        let d = self.desired(&pass).await?;
        for b in &lost {
            pass.invalidate_bridge(b).await;
        }
        pass.sync(&d, false).await?;
        Ok(lost)
    }

    /// Writes `ops`, reconciles, and on failure writes `undo` and reconciles back.
    pub(crate) async fn commit(&self, ops: Vec<Op>, undo: Vec<Op>) -> Result<(), ServiceError> {
        self.store.txn(vec![], ops).await?;
        self.apply_or_undo(undo).await
    }

    /// Reconciles after a write; on failure writes `undo` and reconciles back, so a refused
    /// call changes nothing.
    pub(crate) async fn apply_or_undo(&self, undo: Vec<Op>) -> Result<(), ServiceError> {
        if let Err(e) = self.sync_after_write().await {
            self.store.txn(vec![], undo).await?;
            if let Err(again) = self.sync(false).await {
                tracing::warn!(error = %again, "reconcile after undo failed");
            }
            return Err(e);
        }
        Ok(())
    }

    /// The cluster's record of an endpoint of this host.
    pub(crate) fn cluster_endpoint(&self, net: &Network, ep: &Endpoint) -> ClusterEndpoint {
        ClusterEndpoint {
            id: ep.id.clone(),
            host: self.host.clone(),
            network_key: net.cluster.clone(),
            network_id: net.id.clone(),
            mode: net.mode,
            address: ep.address,
            mac: ep.mac,
            container: ep.container.clone(),
        }
    }
}

/// The IPAM pool ID of a network's container addresses.
fn address_pool(net: &Network) -> String {
    let domain = net.cluster.as_deref().unwrap_or("host");
    crate::ipam::pool_id(domain, IpNet::V4(net.subnet))
}

/// Refuses a call that names `ep` under another network than its own.
fn on_network(ep: &Endpoint, net: &Network) -> Result<(), ServiceError> {
    if ep.network_id == net.id {
        return Ok(());
    }
    Err(ServiceError::WrongNetwork {
        endpoint: ep.short_id().to_string(),
        on: short(&ep.network_id),
        asked: net.short_id().to_string(),
    })
}

fn short(id: &str) -> String {
    crate::model::head(id, 12).to_string()
}
