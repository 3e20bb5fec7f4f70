//! The desired dataplane: plain data derived from the stored networks and endpoints.
//!
//! `modes::build` fills it, each mode contributing its bridges, ports, flows, links, gateway
//! addresses, sysctls, netfilter segments and uplinks. The reconciler then makes OVS, the
//! kernel and netfilter match it. Being plain data, it is what unit tests compare; it
//! depends on nothing that builds or applies it.

use std::collections::BTreeMap;

use std::net::IpAddr;

use ipnet::IpNet;
use qingluan_dataplane::netlink::{IngressShaping, ShapedGroup};
use qingluan_dataplane::openflow::{Flow, Meter};
use qingluan_dataplane::ovsdb::{BridgeSpec, PortSpec};

use crate::model::Mac;
use crate::policy::Policy;

/// `external_ids` key naming the owning instance on every OVS object we create.
pub const OWNER: &str = "qingluan-owner";
/// `external_ids` key with the network ID.
pub const NETWORK: &str = "qingluan-network";
/// `external_ids` key with the endpoint ID.
pub const ENDPOINT: &str = "qingluan-endpoint";
/// `external_ids` key with the mode.
pub const MODE: &str = "qingluan-mode";
/// The mirror an interface port was added for.
pub const MIRROR: &str = "qingluan-mirror";
/// `external_ids` key marking the physical interface's port on an uplink bridge.
pub const UPLINK_NIC: &str = "qingluan-uplink-nic";
/// The `qingluan-mode` value of uplink bridges.
pub const UPLINK_MODE: &str = "uplink";

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
    /// The meters of each bridge (the flows use them).
    pub meters: BTreeMap<String, Vec<Meter>>,
    /// Cookie of each bridge's sentinel flow.
    pub sentinels: BTreeMap<String, u64>,
    /// Endpoint veths.
    pub veths: Vec<Veth>,
    /// Kernel VXLAN devices, one per VNI (`[cluster] overlay = "kernel"`).
    pub vxlans: Vec<qingluan_dataplane::netlink::Vxlan>,
    /// Gateway interfaces.
    pub gateways: Vec<GatewayPort>,
    /// Gateways whose received traffic (what leaves the network) is shaped: aggregate
    /// limits of networks with a gateway on this host.
    pub shaped: Vec<IngressShaping>,
    /// Aggregate limits on what leaves through an uplink bridge's interface (flat
    /// networks, vxlan tunnels), by uplink bridge.
    pub egress: BTreeMap<String, Vec<ShapedGroup>>,
    /// Sysctls, path under `/proc/sys` with dots (`net.ipv4.ip_forward`) to value.
    pub sysctls: BTreeMap<String, String>,
    /// Netfilter.
    pub firewall: Policy,
    /// The uplink bridges: the one the host's underlay moves onto (vxlan on the userspace
    /// datapath) and those of flat and vlan networks; one per bridge.
    pub uplinks: Vec<UplinkWant>,
}

/// What other hosts contribute to this host's dataplane. Only live hosts count.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClusterView {
    /// Their endpoints on overlay networks, by cluster key, with the underlay address of
    /// their host.
    pub overlay: BTreeMap<String, Vec<crate::pipeline::RemoteEndpoint>>,
    /// Their containers on cluster networks (flat, vlan, vxlan), as they published them:
    /// what ACL selectors and container pairs resolve to on other hosts.
    pub containers: Vec<RemoteContainer>,
}

/// Another host's container on a cluster network.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RemoteContainer {
    /// The container.
    pub container: crate::model::ContainerRef,
    /// Its address on the network.
    pub address: std::net::Ipv4Addr,
    /// The network's cluster key.
    pub network: String,
}

/// An uplink a desired dataplane needs.
#[derive(Clone, Debug, PartialEq)]
pub struct UplinkWant {
    /// The bridge (and its internal port).
    pub bridge: String,
    /// The interface to enslave.
    pub nic: Nic,
    /// Datapath type of the bridge.
    pub datapath: String,
}

/// How an uplink's interface is known.
#[derive(Clone, Debug, PartialEq)]
pub enum Nic {
    /// By name (`--opt parent`, resolved when the network was created).
    Named(String),
    /// As the interface holding this address (the underlay address, for vxlan).
    Holding(IpAddr),
}
