//! Links adapter: veth pairs, kernel VXLAN devices with their forwarding entries,
//! addresses, MTU, link state, TX checksum offload, sysctls, and the shaping of what an
//! interface receives.
//!
//! For every endpoint the daemon creates a veth pair in the host namespace: the host end is
//! an OVS port, the peer is handed to Docker, which moves it into the container (the
//! container's namespace does not exist yet at Join, so we never enter it). Gateways are
//! addresses on the bridges' internal ports.
//!
//! [`NetlinkLinks`] is the real implementation: rtnetlink for links, addresses and
//! forwarding entries (`AF_BRIDGE` neighbours, as `bridge fdb` writes them), the
//! `SIOCETHTOOL` ioctl for TX checksum offload (`ethtool -K dev tx off`, needed on the
//! userspace datapath), files under `/proc/sys` for sysctls, and `tc` (iproute2) for
//! shaping: the ingress of the interface is redirected to an IFB device whose HTB classes
//! (one per DSCP value) share a rate (there is no other way to shape what the kernel
//! receives, and rtnetlink crates do not speak HTB). It acts on one network
//! namespace, the current one or another ([`NetlinkLinks::in_netns`], used by tests that
//! model several hosts as namespaces). [`FakeLinks`] is an in-memory model that records the
//! calls, for tests of the domain logic.
//!
//! Interface names are checked before anything reaches the kernel ([`check_name`]), so an
//! over-long name is a clear error rather than `EINVAL`. Every error names its object; the
//! texts are part of the API (they reach users through the Docker CLI).

mod fake;
mod real;

use std::io;
use std::path::PathBuf;

pub use fake::FakeLinks;
pub use real::NetlinkLinks;

use async_trait::async_trait;

/// One link as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface name.
    pub name: String,
    /// Interface index, unique within the namespace.
    pub index: u32,
    /// MTU in bytes.
    pub mtu: u32,
    /// Administratively up (`IFF_UP`), whether or not it has a carrier.
    pub up: bool,
    /// Hardware address, for links that have a 6-byte one.
    pub mac: Option<[u8; 6]>,
    /// Link kind (`IFLA_INFO_KIND`: "veth", "tun", "openvswitch", ...); `None` for physical
    /// devices and loopback.
    pub kind: Option<String>,
}

/// An IPv4 route of the main table through one link (not the kernel's connected route of an
/// address, which follows the address by itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Destination; `0.0.0.0/0` for the default route.
    pub dst: ipnet::Ipv4Net,
    /// Next hop, if any.
    pub gateway: Option<std::net::Ipv4Addr>,
    /// Metric (priority), if any.
    pub metric: Option<u32>,
}

/// Errors of the links adapter, each naming its object.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// An interface name the kernel would refuse; `reason` says why.
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The link does not exist.
    #[error("link {0} not found")]
    NotFound(String),
    /// The kernel refused an operation; `action` names the operation and its object, e.g.
    /// "create veth qlv1234/qlc1234" or "set mtu 70000 on qlv1234".
    #[error("cannot {action}: {source}")]
    Kernel {
        /// Operation and object.
        action: String,
        /// The kernel's answer (`raw_os_error` is the errno when there is one).
        source: io::Error,
    },
    /// A sysctl key that names no file under `/proc/sys` (see [`sysctl_path`]).
    #[error("invalid sysctl key {key:?}: {reason}")]
    InvalidSysctl {
        /// The key as given.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A sysctl could not be read or written.
    #[error("cannot set sysctl {key}={value}: {source}")]
    Sysctl {
        /// The key as given.
        key: String,
        /// The value to write.
        value: String,
        /// Why the file could not be written.
        source: io::Error,
    },
    /// `tc` refused to shape an interface.
    #[error("cannot shape what {iface} receives: {detail}")]
    Shaping {
        /// The shaped interface.
        iface: String,
        /// What `tc` said.
        detail: String,
    },
    /// The network namespace could not be entered.
    #[error("cannot enter network namespace {}: {source}", path.display())]
    Netns {
        /// The namespace file, e.g. `/run/netns/h1`.
        path: PathBuf,
        /// Why it could not be opened or entered.
        source: io::Error,
    },
}

/// Checks a Linux interface name as the kernel's `dev_valid_name` does: 1 to 15 bytes, not
/// `.` or `..`, without `/`, `:` or whitespace.
pub fn check_name(name: &str) -> Result<(), LinkError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > 15 {
        "longer than 15 bytes"
    } else if name == "." || name == ".." {
        "reserved"
    } else if name.contains(['/', ':']) || name.contains(char::is_whitespace) {
        "contains '/', ':' or whitespace"
    } else {
        return Ok(());
    };
    Err(LinkError::InvalidName {
        name: name.to_string(),
        reason,
    })
}

/// Maps a sysctl key to its file under `/proc/sys`, accepting the two spellings of
/// `sysctl(8)`:
///
/// - with slashes (`net/ipv4/conf/eth0.100/rp_filter`), every part is a path component;
/// - with dots (`net.ipv4.ip_forward`), dots separate the components, except in the
///   per-interface trees `net.ipv4.conf`, `net.ipv6.conf`, `net.ipv4.neigh`,
///   `net.ipv6.neigh` and `net.mpls.conf`, where everything between the fourth component and
///   the last one is the interface name: `net.ipv4.conf.eth0.100.rp_filter` is
///   `net/ipv4/conf/eth0.100/rp_filter`. Interface names with dots thus work in both.
///
/// Empty, `.` and `..` components are refused.
pub fn sysctl_path(key: &str) -> Result<PathBuf, LinkError> {
    let bad = |reason| LinkError::InvalidSysctl {
        key: key.to_string(),
        reason,
    };
    let parts: Vec<&str> = if key.contains('/') {
        key.split('/').collect()
    } else {
        let dotted: Vec<&str> = key.split('.').collect();
        let per_iface = matches!(
            dotted.get(..3),
            Some(["net", "ipv4" | "ipv6", "conf" | "neigh"] | ["net", "mpls", "conf"])
        );
        if per_iface && dotted.len() >= 5 {
            let head_len: usize = dotted[..3].iter().map(|p| p.len() + 1).sum();
            let leaf = dotted[dotted.len() - 1];
            let iface = &key[head_len..key.len() - leaf.len() - 1];
            let mut parts = dotted[..3].to_vec();
            parts.extend([iface, leaf]);
            parts
        } else {
            dotted
        }
    };
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return Err(bad("empty, '.' or '..' component"));
    }
    let mut path = PathBuf::from("/proc/sys");
    path.extend(parts);
    Ok(path)
}

/// Links, addresses and sysctls of one network namespace.
#[async_trait]
pub trait Links: Send + Sync {
    /// Creates a veth pair with both ends in this namespace: both ends with `mtu`, the host
    /// end up with IPv6 off (brought up only after: a link-local address and its routes on
    /// every OVS port made each link change cost ovs-vswitchd ~5 times more at 1,000
    /// ports), the peer down with `peer_mac` (random when `None`). Fails with `EEXIST` when
    /// either name is taken.
    async fn create_veth(
        &self,
        host: &str,
        peer: &str,
        mtu: u32,
        peer_mac: Option<[u8; 6]>,
    ) -> Result<(), LinkError>;
    /// Deletes a link (both ends, for a veth); absent is fine.
    async fn delete_link(&self, name: &str) -> Result<(), LinkError>;
    /// Deletes links (both ends of veths) at once; absent ones are fine. The kernel waits
    /// for in-flight packets once for all of them instead of once each (~20 ms apiece).
    async fn delete_links(&self, names: &[String]) -> Result<(), LinkError>;
    /// One link, if it exists.
    async fn link(&self, name: &str) -> Result<Option<LinkInfo>, LinkError>;
    /// Every link whose name starts with `prefix`, in index order.
    async fn links_with_prefix(&self, prefix: &str) -> Result<Vec<LinkInfo>, LinkError>;
    /// Sets a link up; already up is fine.
    async fn set_up(&self, name: &str) -> Result<(), LinkError>;
    /// Sets a link's MTU; already set is fine.
    async fn set_mtu(&self, name: &str, mtu: u32) -> Result<(), LinkError>;
    /// Addresses of a link, IPv4 and IPv6 (link-local ones included).
    async fn addresses(&self, name: &str) -> Result<Vec<ipnet::IpNet>, LinkError>;
    /// Adds an address (host bits kept: `10.0.0.1/24`); already present is fine.
    async fn add_address(&self, name: &str, addr: ipnet::IpNet) -> Result<(), LinkError>;
    /// Removes an address; absent is fine.
    async fn del_address(&self, name: &str, addr: ipnet::IpNet) -> Result<(), LinkError>;
    /// IPv4 routes of the main table through a link, without the kernel's connected routes.
    async fn routes(&self, name: &str) -> Result<Vec<Route>, LinkError>;
    /// Adds (or replaces) an IPv4 route through a link.
    async fn add_route(&self, name: &str, route: &Route) -> Result<(), LinkError>;
    /// In the network namespace at `netns` (a container's sandbox), adds or replaces `route`
    /// (which has a gateway, reached through whichever interface has it on its subnet), or
    /// with `add` false deletes it (one that is not there is fine).
    async fn sandbox_route(
        &self,
        netns: &std::path::Path,
        route: &Route,
        add: bool,
    ) -> Result<(), LinkError>;
    /// Whether a network namespace is still mounted at `netns` (a container's sandbox key):
    /// dockerd unmounts it once it has torn the container's network down.
    async fn netns_mounted(&self, netns: &std::path::Path) -> bool;
    /// Turns TX checksum offload off, like `ethtool -K name tx off`; the kernel then also
    /// drops the segmentation offloads that depend on it (TSO, USO); GSO stays on.
    async fn tx_checksum_off(&self, name: &str) -> Result<(), LinkError>;
    /// Writes a sysctl of this namespace, keyed as [`sysctl_path`] describes; the file is
    /// left alone when it already holds `value` (writing `net.ipv4.ip_forward` has side
    /// effects even when unchanged).
    async fn sysctl(&self, key: &str, value: &str) -> Result<(), LinkError>;
    /// Shapes what `s.iface` receives, creating its IFB device; applying the same shaping
    /// again changes nothing, a changed one is changed in place.
    async fn shape_ingress(&self, s: &IngressShaping) -> Result<(), LinkError>;
    /// Stops shaping what `iface` receives and deletes `ifb`; either missing is fine.
    async fn unshape_ingress(&self, iface: &str, ifb: &str) -> Result<(), LinkError>;
    /// Shapes what `s.iface` sends: its root qdisc is rebuilt as `s` says.
    async fn shape_egress(&self, s: &EgressShaping) -> Result<(), LinkError>;
    /// Whether `iface` has a root HTB of ours (handle `1:`).
    async fn egress_shaped(&self, iface: &str) -> Result<bool, LinkError>;
    /// Removes the root HTB of `iface`; not shaped is fine.
    async fn unshape_egress(&self, iface: &str) -> Result<(), LinkError>;
    /// Makes the kernel VXLAN device `v` exist as described, up, with exactly its forwarding
    /// entries; a link of that name with another VNI, local address or kind is made again.
    /// Returns how many forwarding entries were added or deleted. Deleted like any link.
    async fn sync_vxlan(&self, v: &Vxlan) -> Result<usize, LinkError>;
}

/// A kernel VXLAN device of one VNI, a port of the overlay bridge: UDP 4789, no learning,
/// the outer header's TOS inherited from the inner packet. What it sends goes where its
/// forwarding entries say, never flooded by guesswork.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vxlan {
    /// Interface name.
    pub name: String,
    /// The VNI.
    pub vni: u32,
    /// This host's underlay address, the source of the outer header.
    pub local: std::net::IpAddr,
    /// MTU: the containers' (the device encapsulates each frame once).
    pub mtu: u32,
    /// Forwarding entries: a MAC and the underlay address of the host it is on. Entries
    /// with the all-zero MAC, one per host, are where broadcast and multicast go.
    pub fdb: std::collections::BTreeSet<([u8; 6], std::net::IpAddr)>,
}

/// An HTB on what an interface sends (an uplink that OVS transmits on): groups of traffic,
/// each with its total shared by DSCP classes (as [`IngressShaping`]'s); the rest is not
/// limited. Rates in bit/s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressShaping {
    /// The interface.
    pub iface: String,
    /// The groups.
    pub groups: Vec<ShapedGroup>,
}

/// One group of an [`EgressShaping`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShapedGroup {
    /// What picks its packets out.
    pub select: Select,
    /// Its total.
    pub rate: u64,
    /// Its classes; the first also takes what no DSCP value selects.
    pub classes: Vec<ShapedClass>,
}

/// What picks a group's packets out on an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Select {
    /// IPv4 packets these `tc` u32 matches select (`match ip src 10.0.0.0/24`).
    Ip(String),
    /// Frames tagged with this 802.1Q VLAN ID (OVS pushes the tag in userspace, so it is in
    /// the frame), picked by a classic BPF program: u32 cannot look before the IP header.
    Vlan(u16),
}

impl Select {
    /// The filter line that puts the group's packets into class `1:flowid` of `dev`.
    fn filter(&self, dev: &str, flowid: usize) -> String {
        match self {
            Select::Ip(m) => format!(
                "filter add dev {dev} parent 1: protocol ip prio 10 u32 {m} flowid 1:{flowid:x}\n"
            ),
            Select::Vlan(vid) => format!(
                "filter add dev {dev} parent 1: protocol all prio 10 bpf bytecode \"{}\" flowid 1:{flowid:x}\n",
                bpf(&[
                    (0x28, 0, 0, 12),
                    (0x15, 0, 4, 0x8100),
                    (0x28, 0, 0, 14),
                    (0x54, 0, 0, 0x0fff),
                    (0x15, 0, 1, u32::from(*vid)),
                    (0x06, 0, 0, u32::MAX),
                    (0x06, 0, 0, 0),
                ])
            ),
        }
    }

    /// The filter line under group class `1:parent` that puts packets with DSCP `dscp`
    /// into class `1:flowid`.
    fn dscp_filter(&self, dev: &str, parent: usize, dscp: u8, flowid: usize) -> String {
        let tos = u32::from(dscp) << 2;
        match self {
            Select::Ip(_) => format!(
                "filter add dev {dev} parent 1:{parent:x} protocol ip prio 1 u32 match ip tos {tos:#04x} 0xfc flowid 1:{flowid:x}\n"
            ),
            Select::Vlan(_) => format!(
                "filter add dev {dev} parent 1:{parent:x} protocol all prio 1 bpf bytecode \"{}\" flowid 1:{flowid:x}\n",
                bpf(&[
                    (0x28, 0, 0, 16),
                    (0x15, 0, 4, 0x0800),
                    (0x30, 0, 0, 19),
                    (0x54, 0, 0, 0xfc),
                    (0x15, 0, 1, tos),
                    (0x06, 0, 0, u32::MAX),
                    (0x06, 0, 0, 0),
                ])
            ),
        }
    }
}

/// A classic BPF program as `tc ... bpf bytecode` reads it: the count, then `code jt jf k`
/// per instruction. Returning -1 selects the filter's own class.
fn bpf(program: &[(u16, u8, u8, u32)]) -> String {
    let lines: Vec<String> = program
        .iter()
        .map(|(code, jt, jf, k)| format!("{code} {jt} {jf} {k}"))
        .collect();
    format!("{},{}", program.len(), lines.join(","))
}

/// The ceiling of what an egress HTB does not limit.
const UNLIMITED: &str = "100gbit";

impl EgressShaping {
    /// The `tc -batch` lines that build the HTB from scratch (after the old root qdisc is
    /// deleted).
    pub fn batch(&self) -> String {
        let dev = &self.iface;
        let mut out = format!(
            "qdisc add dev {dev} root handle 1: htb default 2\n\
             class add dev {dev} parent 1: classid 1:1 htb rate {UNLIMITED} ceil {UNLIMITED} quantum 60000\n\
             class add dev {dev} parent 1:1 classid 1:2 htb rate {UNLIMITED} ceil {UNLIMITED} quantum 60000\n"
        );
        for (i, g) in self.groups.iter().enumerate() {
            let (base, rate) = (0x100 * (i + 1), g.rate);
            out.push_str(&format!(
                "class add dev {dev} parent 1:1 classid 1:{base:x} htb rate {rate}bit ceil {rate}bit quantum 15140\n"
            ));
            out.push_str(&g.select.filter(dev, base));
            for (j, c) in g.classes.iter().enumerate() {
                let leaf = base + 1 + j;
                out.push_str(&format!(
                    "class add dev {dev} parent 1:{base:x} classid 1:{leaf:x} htb rate {}bit ceil {rate}bit quantum 15140 prio {}\n",
                    c.min_rate.max(1000),
                    c.prio,
                ));
                out.push_str(&g.select.dscp_filter(dev, base, c.dscp, leaf));
            }
            out.push_str(&format!(
                "filter add dev {dev} parent 1:{base:x} protocol all prio 2 u32 match u32 0 0 flowid 1:{:x}\n",
                base + 1
            ));
        }
        out
    }
}

/// An HTB on what an interface receives, through an IFB device: a total rate shared by
/// classes, each with a guaranteed rate, a priority for what is left over, and the DSCP
/// value that selects it. Rates in bit/s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressShaping {
    /// The interface whose received traffic is shaped.
    pub iface: String,
    /// Its IFB device.
    pub ifb: String,
    /// The total.
    pub rate: u64,
    /// The classes; the first also takes what no DSCP value selects.
    pub classes: Vec<ShapedClass>,
}

/// One class of an [`IngressShaping`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShapedClass {
    /// Guaranteed rate.
    pub min_rate: u64,
    /// Order in which classes borrow what others leave (0 first).
    pub prio: u32,
    /// The DSCP value of its IPv4 packets.
    pub dscp: u8,
}

impl IngressShaping {
    /// The `tc -batch` lines that (re)configure the classes, their filters and the
    /// redirect; the IFB's root qdisc must exist (`tc qdisc add dev IFB root handle 1: htb
    /// default 10`).
    pub fn batch(&self) -> String {
        let (ifb, rate) = (&self.ifb, self.rate);
        let mut out = format!("class replace dev {ifb} parent 1: classid 1:1 htb rate {rate}bit ceil {rate}bit quantum 15140\n");
        for (i, c) in self.classes.iter().enumerate() {
            let minor = 0x10 + i;
            out.push_str(&format!(
                "class replace dev {ifb} parent 1:1 classid 1:{minor:x} htb rate {}bit ceil {rate}bit quantum 15140 prio {}\n",
                c.min_rate.max(1000),
                c.prio
            ));
            out.push_str(&format!(
                "filter replace dev {ifb} parent 1: protocol ip prio 1 handle 800::{:x} u32 match ip tos {:#04x} 0xfc flowid 1:{minor:x}\n",
                i + 1,
                c.dscp << 2
            ));
        }
        out.push_str(&format!(
            "qdisc replace dev {iface} handle ffff: ingress\n\
             filter replace dev {iface} parent ffff: protocol all prio 1 handle 800::1 u32 match u32 0 0 action mirred egress redirect dev {ifb}\n",
            iface = self.iface
        ));
        out
    }
}
