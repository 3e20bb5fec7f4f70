//! The desired dataplane: plain data derived from the stored networks and endpoints.
//!
//! Each mode contributes its bridges, ports, flows, links, gateway addresses, sysctls and
//! netfilter segments (see `modes/`). The reconciler then makes OVS, the kernel and
//! netfilter match it. Being plain data, it is what unit tests compare.

use std::collections::BTreeMap;

use crate::policy::Policy;
use ipnet::IpNet;
use qingluan_dataplane::openflow::Flow;
use qingluan_dataplane::ovsdb::{BridgeSpec, PortSpec};

use crate::model::{Endpoint, Mac, Network};
use crate::modes;
use crate::settings::Settings;

/// `external_ids` key naming the owning instance on every OVS object we create.
pub const OWNER: &str = "qingluan-owner";
/// `external_ids` key with the network ID.
pub const NETWORK: &str = "qingluan-network";
/// `external_ids` key with the endpoint ID.
pub const ENDPOINT: &str = "qingluan-endpoint";
/// `external_ids` key with the mode.
pub const MODE: &str = "qingluan-mode";

/// Facts about this host that shape the dataplane.
#[derive(Clone, Debug, PartialEq)]
pub struct HostFacts {
    /// OVS datapath type of our bridges: `netdev` (userspace) or `system` (kernel).
    pub datapath: String,
    /// Whether OVS runs with `userspace-tso-enable=true`.
    pub userspace_tso: bool,
}

impl HostFacts {
    /// The userspace datapath needs every OVS-side veth guarded (the veth bypass).
    pub fn needs_guards(&self) -> bool {
        self.datapath == "netdev"
    }

    /// The userspace datapath without TSO needs TX checksum offload off in containers.
    pub fn needs_tx_off(&self) -> bool {
        self.datapath == "netdev" && !self.userspace_tso
    }
}

/// A veth pair for an endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct Veth {
    /// Host end, attached to OVS.
    pub host: String,
    /// Container end, handed to Docker.
    pub peer: String,
    /// MTU of both ends.
    pub mtu: u32,
    /// MAC of the container end.
    pub mac: Mac,
    /// Turn TX checksum offload off on the container end.
    pub tx_off: bool,
    /// Re-create the pair when it is missing: only before Docker moved the peer into a
    /// container (once joined, a missing pair means the container is gone).
    pub recreate: bool,
}

/// An address on a bridge's internal port (the gateway).
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayPort {
    /// Interface (the bridge's own name).
    pub iface: String,
    /// Addresses with the subnet prefix.
    pub addrs: Vec<IpNet>,
    /// MTU.
    pub mtu: u32,
}

/// The whole desired dataplane of one instance.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Desired {
    /// Bridges we own.
    pub bridges: Vec<BridgeSpec>,
    /// Ports we own on them.
    pub ports: Vec<PortSpec>,
    /// The complete flow table of each bridge.
    pub flows: BTreeMap<String, Vec<Flow>>,
    /// Cookie of each bridge's sentinel flow.
    pub sentinels: BTreeMap<String, u64>,
    /// Endpoint veths.
    pub veths: Vec<Veth>,
    /// Gateway interfaces.
    pub gateways: Vec<GatewayPort>,
    /// Sysctls, path under `/proc/sys` with dots (`net.ipv4.ip_forward`) to value.
    pub sysctls: BTreeMap<String, String>,
    /// Netfilter.
    pub firewall: Policy,
    /// The uplink bridges: the one the host's underlay moves onto (vxlan on the userspace
    /// datapath) and those of flat and vlan networks; one per bridge.
    pub uplinks: Vec<crate::uplink::UplinkWant>,
}

/// What other hosts contribute to this host's dataplane: their endpoints on overlay
/// networks, by cluster key, with the underlay address of their host. Only live hosts count.
pub type ClusterView = BTreeMap<String, Vec<crate::pipeline::RemoteEndpoint>>;

/// Computes the desired dataplane.
pub fn build(
    settings: &Settings,
    facts: &HostFacts,
    networks: &[Network],
    endpoints: &[Endpoint],
    view: &ClusterView,
) -> Desired {
    let mut d = Desired {
        firewall: Policy {
            name: settings.name.clone(),
            bridge_prefix: format!("{}b", settings.prefix),
            ..Default::default()
        },
        ..Default::default()
    };
    for net in networks {
        let eps: Vec<&Endpoint> = endpoints
            .iter()
            .filter(|e| e.network_id == net.id && e.conflict.is_none())
            .collect();
        modes::driver(net.mode).build(
            &Ctx {
                settings,
                facts,
                view,
            },
            net,
            &eps,
            &mut d,
        );
    }
    d.uplinks.sort_by_key(|u| {
        (
            u.bridge.clone(),
            matches!(u.nic, crate::uplink::Nic::Holding(_)),
        )
    });
    d.uplinks.dedup_by(|a, b| a.bridge == b.bridge);
    for u in &d.uplinks {
        d.flows
            .entry(u.bridge.clone())
            .or_default()
            .push(crate::pipeline::uplink_base());
        d.sentinels
            .insert(u.bridge.clone(), crate::pipeline::uplink_sentinel());
    }
    for flows in d.flows.values_mut() {
        crate::pipeline::sort(flows);
    }
    d.firewall.segments.sort_by(|a, b| a.bridge.cmp(&b.bridge));
    d.firewall.guards.sort();
    d
}

/// What a mode needs besides the records when building.
pub struct Ctx<'a> {
    /// Daemon settings.
    pub settings: &'a Settings,
    /// Host facts.
    pub facts: &'a HostFacts,
    /// Other hosts' endpoints on overlay networks.
    pub view: &'a ClusterView,
}

impl Ctx<'_> {
    /// `external_ids` of an object of `net` (and of `ep`, for ports).
    pub fn ids(&self, net: &Network, ep: Option<&Endpoint>) -> BTreeMap<String, String> {
        let mut ids = BTreeMap::from([
            (OWNER.to_string(), self.settings.name.clone()),
            (NETWORK.to_string(), net.id.clone()),
            (MODE.to_string(), net.mode.to_string()),
        ]);
        if let Some(ep) = ep {
            ids.insert(ENDPOINT.to_string(), ep.id.clone());
        }
        ids
    }
}
