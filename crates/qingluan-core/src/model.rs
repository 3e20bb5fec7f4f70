//! The domain's records: networks, endpoints and published ports, as they are stored.
//!
//! These are the desired state. Everything qingluan creates in OVS, the kernel and netfilter
//! is derived from them (see `desired.rs`), so a record is persisted before anything is
//! applied and the dataplane can always be rebuilt from the store alone. Names of the
//! objects we create are derived from record IDs so they are stable across restarts.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

/// A network mode, chosen with `--opt model=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A private L2 segment on this host, no route out.
    Nonat,
    /// A host-local segment with a gateway on the host, masquerade and port publishing.
    Nat,
    /// Containers on the physical network of an uplink, untagged.
    Flat,
    /// Containers on an 802.1Q VLAN of a trunk uplink.
    Vlan,
    /// An overlay segment carried over UDP between hosts.
    Vxlan,
}

impl Mode {
    /// Every mode, in the order they are documented.
    pub const ALL: [Mode; 5] = [Mode::Nonat, Mode::Nat, Mode::Flat, Mode::Vlan, Mode::Vxlan];

    /// The mode's name as users type it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Nonat => "nonat",
            Mode::Nat => "nat",
            Mode::Flat => "flat",
            Mode::Vlan => "vlan",
            Mode::Vxlan => "vxlan",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Mode::ALL.into_iter().find(|m| m.as_str() == s).ok_or(())
    }
}

/// A network as created by `docker network create`, keyed by Docker's network ID.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Network {
    /// Docker's 64-hex network ID.
    pub id: String,
    /// The network mode.
    pub mode: Mode,
    /// Its OVS bridge, also the name of the bridge's internal (gateway) interface; named
    /// once at creation (see [`bridge_name`]) so a later prefix change cannot orphan it.
    pub bridge: String,
    /// `--internal`: no masquerade, no publishing, no default route.
    pub internal: bool,
    /// MTU of container interfaces on this network.
    pub mtu: u32,
    /// IPv4 subnet.
    pub subnet: Ipv4Net,
    /// IPv4 gateway address (on the host's bridge port for nonat and nat).
    pub gateway: Ipv4Addr,
    /// IPv6 subnet and gateway when created with `--ipv6`.
    pub ipv6: Option<(Ipv6Net, std::net::Ipv6Addr)>,
    /// The driver options as given (`-o k=v`), kept for `qingluan network inspect`.
    pub options: std::collections::BTreeMap<String, String>,
    /// Seconds since the epoch when the network was created.
    pub created: u64,
    /// VLAN ID or VNI (vlan, vxlan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    /// The cluster key for networks shared by hosts (`vxlan-5001`, see `cluster.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// The host interface holding the gateway of a vxlan network with `nat=true` (an internal
    /// port of the overlay bridge, named like a network bridge); `None` for other networks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_port: Option<String>,
    /// The physical interface of a flat or vlan network (its uplink bridge is `bridge`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<String>,
    /// `--opt qos.*`: the QoS of every endpoint on the network.
    #[serde(default, skip_serializing_if = "crate::qos::QosSpec::is_empty")]
    pub qos: crate::qos::QosSpec,
    /// `--opt acl.default`: what traffic between the network's own containers gets when no
    /// ACL rule decides.
    #[serde(default, skip_serializing_if = "crate::acl::Verdict::is_allow")]
    pub acl_default: crate::acl::Verdict,
    /// Its conntrack zone, unique on the host, given at creation (0 on records from before
    /// ACLs: see `acl::zones`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub zone: u16,
}

fn is_zero(z: &u16) -> bool {
    *z == 0
}

impl Network {
    /// The OVS bridge of this network; also the name of its internal (gateway) interface.
    pub fn bridge(&self) -> String {
        self.bridge.clone()
    }

    /// Whether traffic may leave this host through the gateway (masquerade, publishing).
    pub fn external(&self) -> bool {
        !self.internal && (self.mode == Mode::Nat || self.gateway_port.is_some())
    }

    /// The host interface holding this network's gateway, if this host routes its subnet:
    /// the bridge of nat and nonat networks, the gateway port of vxlan with `nat=true`.
    pub fn host_gateway(&self) -> Option<String> {
        match self.mode {
            Mode::Nat | Mode::Nonat => Some(self.bridge()),
            _ => self.gateway_port.clone(),
        }
    }

    /// Short ID as Docker prints it.
    pub fn short_id(&self) -> &str {
        head(&self.id, 12)
    }
}

/// A container's attachment to a network, keyed by Docker's endpoint ID.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Docker's 64-hex endpoint ID (new every time a container starts).
    pub id: String,
    /// The network it belongs to.
    pub network_id: String,
    /// Host-side veth, attached to OVS (see [`veth_names`]).
    pub veth: String,
    /// Container-side veth, handed to Docker at Join.
    pub peer: String,
    /// IPv4 address with the network's prefix length.
    pub address: Ipv4Net,
    /// IPv6 address, on dual-stack networks.
    pub address_v6: Option<Ipv6Net>,
    /// MAC address of the container interface.
    pub mac: Mac,
    /// Ports published on the host (set by ProgramExternalConnectivity).
    pub ports: Vec<PortMapping>,
    /// Whether Docker joined a sandbox to this endpoint.
    pub joined: bool,
    /// The sandbox (network namespace path) given at Join.
    pub sandbox: Option<String>,
    /// The sandbox it last left, until it is deleted: the network's next deletion waits
    /// until dockerd unmounted it (see `service/endpoints.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left: Option<String>,
    /// Seconds since the epoch when the endpoint was created.
    pub created: u64,
    /// On a cluster network: the host that holds this endpoint's address now (it was
    /// reclaimed while this host was gone and handed out again). Such an endpoint is kept
    /// off the network so no address is ever on it twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict: Option<String>,
    /// `--driver-opt qos.*` given when the endpoint was created.
    #[serde(default, skip_serializing_if = "crate::qos::QosSpec::is_empty")]
    pub qos: crate::qos::QosSpec,
    /// The container the endpoint belongs to, once learnt from the Engine API (Docker does
    /// not tell drivers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerRef>,
}

/// A container as the Engine API describes it, kept with its endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRef {
    /// Docker's 64-hex container ID.
    pub id: String,
    /// Its name, without Docker's leading `/`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Its labels (fixed for a container's life).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

impl ContainerRef {
    /// Whether `name` names this container: its name, or a prefix of its ID.
    pub fn is_named(&self, name: &str) -> bool {
        self.name == name || self.id.starts_with(name)
    }
}

impl Endpoint {
    /// Host-side veth, attached to OVS.
    pub fn host_veth(&self) -> String {
        self.veth.clone()
    }

    /// Container-side veth, handed to Docker at Join.
    pub fn peer_veth(&self) -> String {
        self.peer.clone()
    }

    /// Short ID as Docker prints it.
    pub fn short_id(&self) -> &str {
        head(&self.id, 12)
    }
}

/// At most the first `n` characters of `s` (never splitting a character).
pub fn head(s: &str, n: usize) -> &str {
    s.char_indices().nth(n).map_or(s, |(i, _)| &s[..i])
}

/// The ID of a record that is named by what it says: 8 hex digits of the 32-bit FNV-1a
/// digest of `v`'s JSON (ACL rules, group connections; equal ones are refused, so IDs are
/// unique).
pub fn content_id<T: Serialize>(v: &T) -> String {
    let text = serde_json::to_string(v).expect("a record serializes");
    let mut h: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

/// An ID Docker sent that is not one of its IDs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} ID {shown:?}: Docker's IDs are 64 lowercase hexadecimal characters")]
pub struct BadId {
    /// What the ID names: `network` or `endpoint`.
    pub kind: &'static str,
    /// The ID, cut to 20 characters.
    pub shown: String,
}

/// Checks that `id` is one of Docker's IDs (64 lowercase hex characters): every ID names
/// records, bridges and links, so nothing else may reach the driver.
pub fn check_id(kind: &'static str, id: &str) -> Result<(), BadId> {
    let ok = id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if ok {
        return Ok(());
    }
    let mut shown = head(id, 20).to_string();
    if shown.len() < id.len() {
        shown.push('…');
    }
    Err(BadId { kind, shown })
}

/// Bridge name of a network: the instance prefix, `b`, and the first 8 hex digits of its ID
/// (at most 12 characters).
pub fn bridge_name(prefix: &str, network_id: &str) -> String {
    format!("{prefix}b{}", head(network_id, 8))
}

/// The uplink bridge of a physical interface other than the underlay's: `<prefix>u<nic>`,
/// or `<prefix>u` and a hash of the name when that would not fit in 15 characters.
pub fn nic_bridge(prefix: &str, nic: &str) -> String {
    let name = format!("{prefix}u{nic}");
    if name.len() <= 15 {
        return name;
    }
    let hash = nic.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    });
    format!("{prefix}u{hash:08x}")
}

/// Host and container veth names of an endpoint: the instance prefix, `v` or `c`, and the
/// first 11 hex digits of its ID (at most 15 characters, the kernel's limit).
pub fn veth_names(prefix: &str, endpoint_id: &str) -> (String, String) {
    let short = head(endpoint_id, 11);
    (format!("{prefix}v{short}"), format!("{prefix}c{short}"))
}

/// A MAC address, written `02:42:0a:f0:00:02`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// The MAC qingluan gives a container that asked for none: locally administered
    /// `02:42:` followed by the IPv4 address, unique wherever the address is unique.
    pub fn from_ipv4(ip: Ipv4Addr) -> Mac {
        let o = ip.octets();
        Mac([0x02, 0x42, o[0], o[1], o[2], o[3]])
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let mut out = [0u8; 6];
        if parts.len() != 6 {
            return Err(format!("invalid mac address {s:?}"));
        }
        for (i, p) in parts.iter().enumerate() {
            out[i] = u8::from_str_radix(p, 16).map_err(|_| format!("invalid mac address {s:?}"))?;
        }
        Ok(Mac(out))
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Transport protocol of a published port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
    /// SCTP (IP protocol 132).
    Sctp,
}

impl Proto {
    /// Maps Docker's IP protocol number.
    pub fn from_number(n: u64) -> Option<Proto> {
        match n {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            132 => Some(Proto::Sctp),
            _ => None,
        }
    }

    /// The protocol's nftables keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

/// One published port: host address and port forwarded to the container's port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub struct PortMapping {
    /// Transport protocol.
    pub proto: Proto,
    /// Host address to listen on; `None` means every local address.
    pub host_ip: Option<IpAddr>,
    /// Host port.
    pub host_port: u16,
    /// Container port.
    pub port: u16,
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(ip) => write!(
                f,
                "{ip}:{}->{}/{}",
                self.host_port,
                self.port,
                self.proto.as_str()
            ),
            None => write!(
                f,
                "{}->{}/{}",
                self.host_port,
                self.port,
                self.proto.as_str()
            ),
        }
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Host address `n` of a subnet, counting from the network address (1 = first host).
pub fn nth_host(net: IpNet, n: u128) -> Option<IpAddr> {
    match net {
        IpNet::V4(v4) => {
            let base = u32::from(v4.network()) as u128;
            let ip = base.checked_add(n)?;
            let ip = u32::try_from(ip).ok()?;
            let ip = Ipv4Addr::from(ip);
            v4.contains(&ip).then_some(IpAddr::V4(ip))
        }
        IpNet::V6(v6) => {
            let ip = u128::from(v6.network()).checked_add(n)?;
            let ip = std::net::Ipv6Addr::from(ip);
            v6.contains(&ip).then_some(IpAddr::V6(ip))
        }
    }
}
