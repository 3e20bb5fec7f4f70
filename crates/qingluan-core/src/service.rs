//! The driver service: every plugin call as validate → persist → apply.
//!
//! A call is validated completely first (options, addresses, ports), then its record is
//! written to the store (durable before we answer), then the dataplane is reconciled. When
//! applying fails, the record is restored and the dataplane reconciled back, so a refused
//! call changes nothing. Calls are serialised by one lock: the plugin protocol is cheap per
//! call and correctness under Docker's concurrent start/stop storms matters more.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use qingluan_store::{get_json, list_json, to_json, Op, Store, StoreError};
use tokio::sync::{Mutex, RwLock};

use crate::cluster::{self, ClusterEndpoint, ClusterError, ClusterNetwork};
use crate::desired::{self, Desired, HostFacts};
use crate::ipam::{Ipam, IpamError};
use crate::model::{self, Endpoint, Mac, Mode, Network, PortMapping, ENDPOINTS, NETWORKS};
use crate::modes::{self, JoinInfo};
use crate::options::{self, OptionError, RawPort};
use crate::reconcile::{Pass, ReconcileError, Reconciler, Report};
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

/// The driver.
pub struct Driver {
    /// Settings.
    pub settings: Settings,
    /// This host's records.
    store: Arc<dyn Store>,
    /// The cluster store (cluster networks, every host's endpoints).
    pub(crate) cluster: Arc<dyn Store>,
    /// This host's ID in the cluster.
    pub host: String,
    /// IPAM.
    pub ipam: Arc<Ipam>,
    /// The reconciler.
    reconciler: Reconciler,
    /// Host facts, learnt from OVS on first need.
    facts: RwLock<Option<HostFacts>>,
    /// Other hosts' overlay endpoints, refreshed by the cluster agent; kept as it was while
    /// the cluster store is unreachable, so existing tunnels keep working.
    pub(crate) view: RwLock<desired::ClusterView>,
    /// Serialises calls.
    lock: Mutex<()>,
}

/// Bytes VXLAN over an IPv4 underlay adds to each frame (outer Ethernet 14, IPv4 20, UDP 8,
/// VXLAN 8): the default container MTU of a vxlan network is `network.mtu` minus this.
pub const VXLAN_OVERHEAD: u32 = 50;

/// Where a driver keeps its records.
pub struct Stores {
    /// This host's own records.
    pub local: Arc<dyn Store>,
    /// The cluster store; the local one on a single host.
    pub cluster: Arc<dyn Store>,
    /// This host's ID.
    pub host: String,
}

/// The datapath type to use given the setting and whether the kernel module is loaded.
pub fn choose_datapath(setting: &str, kernel_module: bool) -> String {
    match setting {
        "netdev" | "system" => setting.to_string(),
        _ if kernel_module => "system".into(),
        _ => "netdev".into(),
    }
}

impl Driver {
    /// A driver over a store, IPAM and reconciler.
    pub fn new(
        settings: Settings,
        stores: Stores,
        ipam: Arc<Ipam>,
        reconciler: Reconciler,
    ) -> Self {
        Driver {
            settings,
            store: stores.local,
            cluster: stores.cluster,
            host: stores.host,
            ipam,
            reconciler,
            facts: RwLock::new(None),
            view: RwLock::new(Default::default()),
            lock: Mutex::new(()),
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
        let module = std::path::Path::new("/sys/module/openvswitch").exists();
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
        Ok(list_json(&*self.store, NETWORKS).await?)
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
        Ok(list_json(&*self.store, ENDPOINTS).await?)
    }

    async fn network(&self, id: &str) -> Result<Network, ServiceError> {
        get_json(&*self.store, &format!("{NETWORKS}{id}"))
            .await?
            .ok_or_else(|| ServiceError::NetworkNotFound(short(id)))
    }

    async fn endpoint(&self, id: &str) -> Result<Endpoint, ServiceError> {
        get_json(&*self.store, &format!("{ENDPOINTS}{id}"))
            .await?
            .ok_or_else(|| ServiceError::EndpointNotFound(short(id)))
    }

    /// The desired dataplane from the stored records, as of `pass`: an endpoint Docker has
    /// joined whose host veth is gone (its container died without a DeleteEndpoint) is left
    /// out until its record is collected, since OVS can give its port no OpenFlow number.
    async fn desired(&self, pass: &Pass<'_>) -> Result<Desired, ServiceError> {
        let facts = self.facts().await?;
        let nets = self.networks().await?;
        let mut eps = self.endpoints().await?;
        eps.retain(|e| !e.joined || pass.has_veth(&e.veth));
        let view = self.view.read().await;
        Ok(crate::modes::build(
            &self.settings,
            &facts,
            &nets,
            &eps,
            &view,
        ))
    }

    /// One reconcile pass over everything.
    pub async fn sync(&self, full: bool) -> Result<Report, ServiceError> {
        let pass = self.reconciler.begin().await?;
        let d = self.desired(&pass).await?;
        Ok(pass.sync(&d, full).await?)
    }

    /// Re-programs bridges that lost their flows; returns their names.
    pub async fn repair_flows(&self) -> Result<Vec<String>, ServiceError> {
        let pass = self.reconciler.begin().await?;
        let d = self.desired(&pass).await?;
        let lost = pass.bridges_missing_flows(&d).await;
        if !lost.is_empty() {
            for b in &lost {
                pass.invalidate_flows(b).await;
            }
            pass.sync(&d, false).await?;
        }
        Ok(lost)
    }

    /// Writes `ops`, reconciles, and on failure writes `undo` and reconciles back.
    async fn commit(&self, ops: Vec<Op>, undo: Vec<Op>) -> Result<(), ServiceError> {
        self.store.txn(vec![], ops).await?;
        self.apply_or_undo(undo).await
    }

    /// Reconciles after a write; on failure writes `undo` and reconciles back, so a refused
    /// call changes nothing.
    async fn apply_or_undo(&self, undo: Vec<Op>) -> Result<(), ServiceError> {
        if let Err(e) = self.sync(false).await {
            self.store.txn(vec![], undo).await?;
            if let Err(again) = self.sync(false).await {
                tracing::warn!(error = %again, "reconcile after undo failed");
            }
            return Err(e);
        }
        Ok(())
    }

    /// CreateNetwork.
    pub async fn create_network(&self, req: CreateNetwork) -> Result<(), ServiceError> {
        let opts = options::network_options(&req.generic, &self.settings.default_model)?;
        let [v4] = req.v4.as_slice() else {
            return Err(ServiceError::Invalid(format!(
                "a {} network needs exactly one IPv4 subnet, got {}",
                opts.mode,
                req.v4.len()
            )));
        };
        let subnet: Ipv4Net = v4
            .pool
            .parse()
            .map_err(|_| ServiceError::Invalid(format!("bad IPv4 pool {:?}", v4.pool)))?;
        let gateway: Ipv4Net = v4.gateway.parse().map_err(|_| {
            ServiceError::Invalid(format!("missing or bad IPv4 gateway {:?}", v4.gateway))
        })?;
        if !subnet.contains(&gateway.addr()) {
            return Err(IpamError::GatewayOutside {
                addr: IpAddr::V4(gateway.addr()),
                subnet: IpNet::V4(subnet),
            }
            .into());
        }
        let ipv6 = match req.v6.as_slice() {
            [] => None,
            [v6] => {
                let s: Ipv6Net = v6
                    .pool
                    .parse()
                    .map_err(|_| ServiceError::Invalid(format!("bad IPv6 pool {:?}", v6.pool)))?;
                let g: Ipv6Net = v6.gateway.parse().map_err(|_| {
                    ServiceError::Invalid(format!("missing or bad IPv6 gateway {:?}", v6.gateway))
                })?;
                Some((s, g.addr()))
            }
            more => {
                return Err(ServiceError::Invalid(format!(
                    "only one IPv6 subnet is supported, got {}",
                    more.len()
                )))
            }
        };
        if opts.nat && req.internal {
            return Err(ServiceError::InternalNat);
        }
        let (bridge, mtu, uplink) = match opts.mode {
            Mode::Vxlan => (
                modes::overlay_bridge(&self.settings.prefix),
                self.settings.mtu.saturating_sub(VXLAN_OVERHEAD),
                None,
            ),
            Mode::Flat | Mode::Vlan => {
                let (bridge, nic, mtu) = self.physical_uplink(opts.parent.as_deref()).await?;
                (bridge, mtu, Some(nic))
            }
            Mode::Nat | Mode::Nonat => (
                model::bridge_name(&self.settings.prefix, &req.id),
                self.settings.mtu,
                None,
            ),
        };
        let net = Network {
            id: req.id.clone(),
            mode: opts.mode,
            bridge,
            internal: req.internal,
            mtu: opts.mtu.unwrap_or(mtu),
            subnet: subnet.trunc(),
            gateway: gateway.addr(),
            ipv6,
            options: req.generic.clone(),
            created: model::now(),
            vni: opts.vni,
            cluster: cluster::network_key(opts.mode, opts.vni, subnet),
            gateway_port: opts
                .nat
                .then(|| model::bridge_name(&self.settings.prefix, &req.id)),
            uplink,
        };
        let _g = self.lock.lock().await;
        if let Some(have) =
            get_json::<Network>(&*self.store, &format!("{NETWORKS}{}", net.id)).await?
        {
            let same = Network {
                created: have.created,
                ..net.clone()
            };
            return if have == same {
                Ok(())
            } else {
                Err(ServiceError::NetworkExists(short(&net.id)))
            };
        }
        self.check_routed(&net).await?;
        let created = match &net.cluster {
            Some(k) => Some(self.declare(&net, k).await?),
            None => None,
        };
        let key = format!("{NETWORKS}{}", net.id);
        let done = self
            .commit(
                vec![Op::Put(key.clone(), to_json(&net))],
                vec![Op::Delete(key)],
            )
            .await;
        if let (Err(_), Some(k)) = (&done, &net.cluster) {
            if created == Some(true) {
                cluster::detach(&*self.cluster, k, &self.host).await?;
            }
        }
        done?;
        crash_point!("create-network-committed");
        Ok(())
    }

    /// The uplink of a flat or vlan network: its bridge, its interface (`--opt parent`, else
    /// `network.uplink`, else the underlay's) and that interface's MTU. The underlay's
    /// interface keeps the bridge vxlan uses (`<prefix>ul`); any other gets its own.
    async fn physical_uplink(
        &self,
        parent: Option<&str>,
    ) -> Result<(String, String, u32), ServiceError> {
        let a = self.reconciler.adapters();
        let link_err =
            |e: qingluan_dataplane::netlink::LinkError| ServiceError::Invalid(e.to_string());
        let underlay = match self.settings.underlay_ip {
            Some(ip) => {
                let snap = a
                    .ovs
                    .snapshot()
                    .await
                    .map_err(|e| ServiceError::Ovs(e.to_string()))?;
                crate::uplink::interface_of(&*a.links, &self.settings.name, &snap, ip)
                    .await
                    .map_err(link_err)?
            }
            None => None,
        };
        let nic = parent
            .map(String::from)
            .or_else(|| self.settings.uplink.clone())
            .or_else(|| underlay.clone())
            .ok_or(ServiceError::NoUplink)?;
        let info = a
            .links
            .link(&nic)
            .await
            .map_err(link_err)?
            .ok_or_else(|| ServiceError::ParentMissing(nic.clone()))?;
        let bridge = if underlay.as_deref() == Some(nic.as_str()) {
            modes::uplink_bridge(&self.settings.prefix)
        } else {
            model::nic_bridge(&self.settings.prefix, &nic)
        };
        Ok((bridge, nic, info.mtu))
    }

    /// Refuses a network whose gateway would sit on this host (nat, nonat, vxlan with
    /// `nat=true`) when its subnet overlaps one this host already routes: the host's routing
    /// table can hold only one of them. The IPAM keeps nat and nonat subnets apart already;
    /// vxlan subnets live in their own domains and meet the host's only here.
    async fn check_routed(&self, net: &Network) -> Result<(), ServiceError> {
        if net.host_gateway().is_none() {
            return Ok(());
        }
        let clash = self.networks().await?.into_iter().find(|n| {
            n.id != net.id
                && n.host_gateway().is_some()
                && crate::ipam::overlaps(IpNet::V4(n.subnet), IpNet::V4(net.subnet))
        });
        match clash {
            Some(n) => Err(ServiceError::RoutedOverlap {
                subnet: net.subnet,
                other: n.subnet,
                network: short(&n.id),
            }),
            None => Ok(()),
        }
    }

    /// Records a cluster network for this host: checks that the IPAM subnet belongs to the
    /// same cluster key (`--opt vni` and `--ipam-opt vni` agree), then joins or creates the
    /// definition. Returns whether it was created.
    async fn declare(&self, net: &Network, key: &str) -> Result<bool, ServiceError> {
        let pool_id = crate::ipam::pool_id(key, IpNet::V4(net.subnet));
        let subnet = self.ipam.subnet(&pool_id).await.map_err(|e| match e {
            IpamError::UnknownPoolId(_) => ServiceError::Invalid(format!(
                "subnet {} is not a qingluanIpam subnet of {key}: use --ipam-driver {}Ipam \
                 --ipam-opt pool={}{}",
                net.subnet,
                self.settings.name,
                net.mode,
                match net.vni {
                    Some(v) => format!(" --ipam-opt vni={v} (the same VNI as --opt vni)"),
                    None => String::new(),
                }
            )),
            other => other.into(),
        })?;
        let def = ClusterNetwork {
            key: key.to_string(),
            name: None,
            mode: net.mode,
            vni: net.vni,
            subnet: net.subnet,
            gateway: net.gateway,
            ip_range: subnet.range.and_then(|r| match r {
                IpNet::V4(v4) => Some(v4),
                IpNet::V6(_) => None,
            }),
            pool: subnet.pool,
            options: net.options.clone(),
            internal: net.internal,
            created_by: self.host.clone(),
            created: model::now(),
        };
        Ok(cluster::declare(&*self.cluster, &def, &self.host, &net.id).await?)
    }

    /// DeleteNetwork: the network and any endpoint left on it.
    pub async fn delete_network(&self, id: &str) -> Result<(), ServiceError> {
        let _g = self.lock.lock().await;
        let key = format!("{NETWORKS}{id}");
        let Some(net) = get_json::<Network>(&*self.store, &key).await? else {
            return Ok(());
        };
        let (mut ops, mut undo) = (
            vec![Op::Delete(key.clone())],
            vec![Op::Put(key, to_json(&net))],
        );
        for ep in self
            .endpoints()
            .await?
            .into_iter()
            .filter(|e| e.network_id == id)
        {
            let k = format!("{ENDPOINTS}{}", ep.id);
            ops.push(Op::Delete(k.clone()));
            undo.push(Op::Put(k, to_json(&ep)));
        }
        self.commit(ops.clone(), undo.clone()).await?;
        if let Some(k) = &net.cluster {
            let detached = async {
                if cluster::networks(&*self.cluster)
                    .await?
                    .iter()
                    .any(|d| &d.key == k)
                {
                    cluster::detach(&*self.cluster, k, &self.host).await?;
                }
                Ok::<_, ServiceError>(())
            };
            if let Err(e) = detached.await {
                self.commit(undo, ops).await?;
                return Err(e);
            }
        }
        Ok(())
    }

    /// CreateEndpoint; returns the MAC to report when Docker sent none.
    pub async fn create_endpoint(&self, req: CreateEndpoint) -> Result<Option<Mac>, ServiceError> {
        let net = self.network(&req.network_id).await?;
        if let Some(k) = req.driver_opts.keys().next() {
            return Err(ServiceError::Invalid(format!(
                "unknown endpoint option {k:?} (qingluan takes no --driver-opt yet)"
            )));
        }
        let address: Ipv4Net = req.address.parse().map_err(|_| {
            ServiceError::Invalid(format!("missing or bad IPv4 address {:?}", req.address))
        })?;
        if !net.subnet.contains(&address.addr()) {
            return Err(IpamError::AddressOutside {
                addr: IpAddr::V4(address.addr()),
                subnet: IpNet::V4(net.subnet),
            }
            .into());
        }
        let address_v6 = match req.address_v6.as_str() {
            "" => None,
            s => Some(
                s.parse::<Ipv6Net>()
                    .map_err(|_| ServiceError::Invalid(format!("bad IPv6 address {s:?}")))?,
            ),
        };
        if let (Some(a), Some((subnet, _))) = (address_v6, net.ipv6) {
            if !subnet.contains(&a.addr()) {
                return Err(IpamError::AddressOutside {
                    addr: IpAddr::V6(a.addr()),
                    subnet: IpNet::V6(subnet),
                }
                .into());
            }
        }
        let ports = options::port_mappings(&req.ports)?;
        may_publish(&net, &ports)?;
        let (mac, report) = match req.mac.as_str() {
            "" => (Mac::from_ipv4(address.addr()), true),
            s => (s.parse::<Mac>().map_err(ServiceError::Invalid)?, false),
        };
        let (veth, peer) = model::veth_names(&self.settings.prefix, &req.endpoint_id);
        let ep = Endpoint {
            id: req.endpoint_id.clone(),
            network_id: net.id.clone(),
            veth,
            peer,
            address,
            address_v6,
            mac,
            ports: Vec::new(),
            joined: false,
            sandbox: None,
            created: model::now(),
            conflict: None,
        };
        let _g = self.lock.lock().await;
        let (pool, ip) = (address_pool(&net), IpAddr::V4(address.addr()));
        self.ipam.bind(&pool, ip, &ep.id).await?;
        crash_point!("create-endpoint-bound");
        if let Err(e) = self.record_endpoint(&net, &ep).await {
            self.ipam.unbind(&pool, ip, &ep.id).await?;
            return Err(e);
        }
        crash_point!("create-endpoint-committed");
        Ok(report.then_some(mac))
    }

    /// Records a new endpoint (and its cluster entry) and applies it; undone on failure.
    async fn record_endpoint(&self, net: &Network, ep: &Endpoint) -> Result<(), ServiceError> {
        let ckey = net
            .cluster
            .as_ref()
            .map(|_| cluster::endpoint_key(&self.host, &ep.id));
        if let Some(ckey) = &ckey {
            let rec = to_json(&self.cluster_endpoint(net, ep));
            self.cluster
                .txn(vec![], vec![Op::Put(ckey.clone(), rec)])
                .await?;
        }
        let key = format!("{ENDPOINTS}{}", ep.id);
        let done = self
            .commit(
                vec![Op::Put(key.clone(), to_json(ep))],
                vec![Op::Delete(key)],
            )
            .await;
        if let (Err(_), Some(ckey)) = (&done, ckey) {
            self.cluster.txn(vec![], vec![Op::Delete(ckey)]).await?;
        }
        done
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
        }
    }

    /// Join: what Docker needs to plug the interface in.
    pub async fn join(
        &self,
        network_id: &str,
        endpoint_id: &str,
        sandbox: &str,
        ports: &[RawPort],
    ) -> Result<JoinInfo, ServiceError> {
        let net = self.network(network_id).await?;
        options::sandbox_key(sandbox)?;
        let _g = self.lock.lock().await;
        let mut ep = self.endpoint(endpoint_id).await?;
        on_network(&ep, &net)?;
        may_publish(&net, &options::port_mappings(ports)?)?;
        ep.joined = true;
        ep.sandbox = Some(sandbox.to_string());
        self.store
            .txn(
                vec![],
                vec![Op::Put(format!("{ENDPOINTS}{}", ep.id), to_json(&ep))],
            )
            .await?;
        Ok(modes::driver(net.mode).join(&net, &ep))
    }

    /// Leave: the interface goes back to the host; the endpoint stays until deleted.
    pub async fn leave(&self, endpoint_id: &str) -> Result<(), ServiceError> {
        let _g = self.lock.lock().await;
        if let Some(mut ep) =
            get_json::<Endpoint>(&*self.store, &format!("{ENDPOINTS}{endpoint_id}")).await?
        {
            ep.sandbox = None;
            self.store
                .txn(
                    vec![],
                    vec![Op::Put(format!("{ENDPOINTS}{}", ep.id), to_json(&ep))],
                )
                .await?;
        }
        Ok(())
    }

    /// DeleteEndpoint; unknown endpoints are fine. The endpoint's cluster entry goes first;
    /// if the dataplane then refuses, the record is restored and the cluster agent publishes
    /// the entry again on its next pass.
    pub async fn delete_endpoint(&self, endpoint_id: &str) -> Result<(), ServiceError> {
        let _g = self.lock.lock().await;
        let ckey = cluster::endpoint_key(&self.host, endpoint_id);
        if let Err(e) = self.cluster.txn(vec![], vec![Op::Delete(ckey)]).await {
            tracing::warn!(error = %e, endpoint = %short(endpoint_id), "cluster record stays until the store is back");
        }
        let key = format!("{ENDPOINTS}{endpoint_id}");
        let Some(ep) = get_json::<Endpoint>(&*self.store, &key).await? else {
            return Ok(());
        };
        self.store
            .txn(vec![], vec![Op::Delete(key.clone())])
            .await?;
        crash_point!("delete-endpoint-recorded");
        self.apply_or_undo(vec![Op::Put(key, to_json(&ep))]).await
    }

    /// ProgramExternalConnectivity: publish the container's ports through this endpoint.
    pub async fn program(
        &self,
        network_id: &str,
        endpoint_id: &str,
        ports: &[RawPort],
    ) -> Result<(), ServiceError> {
        let net = self.network(network_id).await?;
        let mut wanted = options::port_mappings(ports)?;
        if wanted.is_empty() {
            return Ok(());
        }
        may_publish(&net, &wanted)?;
        let _g = self.lock.lock().await;
        let ep = self.endpoint(endpoint_id).await?;
        on_network(&ep, &net)?;
        let others: Vec<Endpoint> = self
            .endpoints()
            .await?
            .into_iter()
            .filter(|e| e.id != ep.id)
            .collect();
        let taken = |m: &PortMapping| {
            others.iter().find_map(|o| {
                o.ports
                    .iter()
                    .any(|p| {
                        p.proto == m.proto
                            && p.host_port == m.host_port
                            && (p.host_ip.is_none()
                                || m.host_ip.is_none()
                                || p.host_ip == m.host_ip)
                    })
                    .then(|| o.short_id().to_string())
            })
        };
        let mut next = 49153u16;
        for i in 0..wanted.len() {
            if wanted[i].host_port == 0 {
                loop {
                    let mut probe = wanted[i].clone();
                    probe.host_port = next;
                    next = next
                        .checked_add(1)
                        .ok_or_else(|| ServiceError::Invalid("no free host port left".into()))?;
                    if taken(&probe).is_none()
                        && !wanted
                            .iter()
                            .any(|w| w.proto == probe.proto && w.host_port == probe.host_port)
                    {
                        wanted[i] = probe;
                        break;
                    }
                }
            }
            if let Some(owner) = taken(&wanted[i]) {
                return Err(ServiceError::PortInUse {
                    port: wanted[i].host_port,
                    proto: wanted[i].proto.as_str(),
                    owner,
                });
            }
        }
        let before = ep.clone();
        let mut after = ep;
        after.ports = wanted;
        let key = format!("{ENDPOINTS}{}", after.id);
        self.commit(
            vec![Op::Put(key.clone(), to_json(&after))],
            vec![Op::Put(key, to_json(&before))],
        )
        .await
    }

    /// RevokeExternalConnectivity: unpublish.
    pub async fn revoke(&self, endpoint_id: &str) -> Result<(), ServiceError> {
        let _g = self.lock.lock().await;
        let key = format!("{ENDPOINTS}{endpoint_id}");
        let Some(before) = get_json::<Endpoint>(&*self.store, &key).await? else {
            return Ok(());
        };
        if before.ports.is_empty() {
            return Ok(());
        }
        let after = Endpoint {
            ports: Vec::new(),
            ..before.clone()
        };
        self.commit(
            vec![Op::Put(key.clone(), to_json(&after))],
            vec![Op::Put(key, to_json(&before))],
        )
        .await
    }

    /// EndpointOperInfo: what we know about an endpoint.
    pub async fn endpoint_info(
        &self,
        endpoint_id: &str,
    ) -> Result<serde_json::Value, ServiceError> {
        let ep = self.endpoint(endpoint_id).await?;
        Ok(serde_json::json!({
            "ip": ep.address.to_string(),
            "mac": ep.mac.to_string(),
            "veth": ep.host_veth(),
            "ports": ep.ports.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        }))
    }

    /// Removes endpoints Docker does not know (`known` maps each of our networks Docker lists
    /// to the endpoint IDs it reports) that are older than `grace_secs`,
    /// releasing their addresses: the clean-up for endpoints Docker forgot (a killed dockerd
    /// never sends DeleteEndpoint). Returns the removed endpoint IDs.
    pub async fn collect_garbage(
        &self,
        known: &BTreeMap<String, std::collections::BTreeSet<String>>,
        grace_secs: u64,
    ) -> Result<Vec<String>, ServiceError> {
        let _g = self.lock.lock().await;
        let now = model::now();
        let nets = self.networks_by_id().await?;
        let mut removed = Vec::new();
        for ep in self.endpoints().await? {
            let Some(listed) = known.get(&ep.network_id) else {
                continue;
            };
            if listed.contains(&ep.id) || now.saturating_sub(ep.created) < grace_secs {
                continue;
            }
            if let Some(net) = nets.get(&ep.network_id) {
                let ip = IpAddr::V4(ep.address.addr());
                self.ipam
                    .release_for(&address_pool(net), ip, &ep.id, ep.created)
                    .await?;
            }
            self.store
                .txn(vec![], vec![Op::Delete(format!("{ENDPOINTS}{}", ep.id))])
                .await?;
            let ckey = cluster::endpoint_key(&self.host, &ep.id);
            if let Err(e) = self.cluster.txn(vec![], vec![Op::Delete(ckey)]).await {
                tracing::warn!(error = %e, "cluster record stays until the store is back");
            }
            removed.push(ep.id);
        }
        if !removed.is_empty() {
            self.sync(false).await?;
        }
        Ok(removed)
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

impl Driver {
    /// Removes this host's own networks (nat, nonat) that Docker does not list (`known`
    /// holds the IDs of every network of ours it has) and that are older than
    /// `grace_secs`, releasing their subnets: a CreateNetwork committed just before the
    /// daemon died, which Docker then saw fail. Returns their IDs.
    pub async fn collect_networks(
        &self,
        known: &BTreeMap<String, std::collections::BTreeSet<String>>,
        grace_secs: u64,
    ) -> Result<Vec<String>, ServiceError> {
        let now = model::now();
        let mut removed = Vec::new();
        for net in self.networks().await? {
            if net.cluster.is_some()
                || known.contains_key(&net.id)
                || now.saturating_sub(net.created) < grace_secs
            {
                continue;
            }
            self.delete_network(&net.id).await?;
            self.ipam.release_pool(&address_pool(&net)).await?;
            if let Some((v6, _)) = net.ipv6 {
                self.ipam
                    .release_pool(&crate::ipam::pool_id("host", IpNet::V6(v6)))
                    .await?;
            }
            removed.push(net.id);
        }
        Ok(removed)
    }

    /// Releases addresses of this host's networks that Docker requested but no endpoint
    /// got (the daemon died before answering), once older than `grace_secs`.
    pub async fn collect_addresses(&self, grace_secs: u64) -> Result<usize, ServiceError> {
        let _g = self.lock.lock().await;
        let eps = self.endpoints().await?;
        let mut freed = 0;
        for net in self
            .networks()
            .await?
            .iter()
            .filter(|n| n.cluster.is_none())
        {
            let used = eps
                .iter()
                .filter(|e| e.network_id == net.id)
                .map(|e| IpAddr::V4(e.address.addr()))
                .collect();
            freed += self
                .ipam
                .collect_addresses(&address_pool(net), &used, grace_secs)
                .await?
                .len();
        }
        Ok(freed)
    }

    /// Releases this host's subnets that neither Docker (`docker_subnets`: the subnets of
    /// every network whose IPAM driver is ours) nor any of our networks uses, once older
    /// than `grace_secs`. Returns them.
    pub async fn collect_subnets(
        &self,
        docker_subnets: &std::collections::BTreeSet<IpNet>,
        grace_secs: u64,
    ) -> Result<Vec<IpNet>, ServiceError> {
        let _g = self.lock.lock().await;
        let mut in_use = docker_subnets.clone();
        for n in self.networks().await? {
            in_use.insert(IpNet::V4(n.subnet));
            if let Some((v6, _)) = n.ipv6 {
                in_use.insert(IpNet::V6(v6));
            }
        }
        Ok(self.ipam.collect_subnets(&in_use, grace_secs).await?)
    }
}

/// The one rule for `-p`: ports may be published only where the network's mode allows it.
fn may_publish(net: &Network, ports: &[PortMapping]) -> Result<(), ServiceError> {
    if ports.is_empty() || modes::driver(net.mode).allows_publishing(net) {
        Ok(())
    } else {
        Err(ServiceError::PublishingRefused(refusal(net)))
    }
}

/// Why a network's mode refuses `-p`.
fn refusal(net: &Network) -> &'static str {
    match net.mode {
        Mode::Nonat => "nonat networks: they have no route out",
        Mode::Vxlan if !net.internal => {
            "vxlan networks without --opt nat=true: they have no route out"
        }
        Mode::Flat | Mode::Vlan => {
            "flat and vlan networks: containers are on the physical network, reach them at their own address"
        }
        _ => "internal networks: they have no route out",
    }
}

fn short(id: &str) -> String {
    model::head(id, 12).to_string()
}
