//! IPAM: resource pools, subnets carved from them, and addresses within subnets.
//!
//! Concepts:
//! - A **pool** is a named supernet (`nat` = 10.240.0.0/16 by default) from which subnets of
//!   a fixed prefix are carved when `docker network create` gives no `--subnet`.
//! - A **routing domain** says which subnets may not overlap: every nat and nonat subnet is
//!   routed by the host (domain `host`); vlan and vxlan subnets are isolated at L2 by their
//!   VLAN ID or VNI (domain `vlan-10`, `vxlan-5001`) and may overlap other domains.
//! - A **subnet** record exists for every pool Docker requested (RequestPool); its ID, the
//!   Docker PoolID, is `ql/<domain>/<cidr>`.
//! - An **address** record exists for every allocated address (gateway, aux, container).
//! - **Where records live:** the `host` domain (nat, nonat) is this host's own and lives in
//!   the local store, so it keeps working while the cluster store is down; vlan and vxlan
//!   domains span hosts and live in the cluster store (etcd, or the embedded store on a
//!   single host). A cluster domain holds exactly one subnet, shared by every host that has
//!   the network; container addresses there name the host that holds them, so the addresses
//!   of a dead host can be reclaimed.
//! - A **block** is a run of 64 addresses of a cluster subnet that one host allocates its
//!   dynamic addresses from (`blocks.rs`).
//!
//! Rules: every allocation is one compare-and-swap transaction on the store (create-if-absent
//! of the address key), so concurrent requests can never hand out the same address, and it is
//! durable before the reply. This file holds the pure arithmetic, `blocks.rs` that of blocks,
//! `service.rs` the store side.

mod blocks;
mod service;

pub use blocks::{Block, BLOCKS};
pub use service::{Claim, Ipam, PoolUsage};

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::model::nth_host;

/// Store key prefix of pools (`ipam/pools/<name>`).
pub const POOLS: &str = "ipam/pools/";
/// Store key prefix of subnets (`ipam/subnets/<domain>/<cidr>`).
pub const SUBNETS: &str = "ipam/subnets/";
/// Store key prefix of addresses (`ipam/addrs/<domain>/<cidr>/<ip>`).
pub const ADDRS: &str = "ipam/addrs/";

/// IPAM errors; the text reaches the user through the Docker CLI.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// `--ipam-opt pool=` names no pool.
    #[error("unknown pool {name:?} (pools: {known})")]
    UnknownPool { name: String, known: String },
    /// No subnet of the pool's prefix is free.
    #[error("pool {pool} ({supernet}) has no free /{prefix} subnet left")]
    PoolExhausted {
        pool: String,
        supernet: IpNet,
        prefix: u8,
    },
    /// A subnet overlaps one already in use in the same routing domain.
    #[error("subnet {subnet} overlaps {other}, already used by a {domain} network")]
    Overlap {
        subnet: IpNet,
        other: IpNet,
        domain: String,
    },
    /// `--ip-range` is not inside `--subnet`.
    #[error("ip-range {range} is not inside subnet {subnet}")]
    RangeOutside { range: IpNet, subnet: IpNet },
    /// The gateway is not an address of the subnet.
    #[error("gateway {addr} is not in subnet {subnet}")]
    GatewayOutside { addr: IpAddr, subnet: IpNet },
    /// An explicit subnet too large or too small for a network.
    #[error("subnet {subnet} is out of bounds: an {family} subnet's prefix length must be from /{min} to /{max}")]
    PrefixOutOfBounds {
        subnet: IpNet,
        family: &'static str,
        min: u8,
        max: u8,
    },
    /// A requested address is not in the subnet.
    #[error("address {addr} is not in subnet {subnet}")]
    AddressOutside { addr: IpAddr, subnet: IpNet },
    /// A requested address is the network or broadcast address.
    #[error("address {addr} is reserved in subnet {subnet} (network or broadcast address)")]
    AddressReserved { addr: IpAddr, subnet: IpNet },
    /// A requested address is allocated already.
    #[error("address {addr} is already in use in subnet {subnet}")]
    AddressInUse { addr: IpAddr, subnet: IpNet },
    /// Dynamic allocation found no free address.
    #[error("no free address left in {scope}")]
    NoFreeAddress { scope: String },
    /// Docker sent a PoolID we never handed out.
    #[error("unknown pool id {0:?}")]
    UnknownPoolId(String),
    /// An `--ipam-opt` we do not know.
    #[error("unknown ipam option {key:?} (valid options: pool, vni)")]
    UnknownOption { key: String },
    /// An `--ipam-opt` with a bad value, or a missing required one.
    #[error("invalid ipam option {key}: {reason}")]
    InvalidOption { key: String, reason: String },
    /// A pool cannot be created or removed.
    #[error("{0}")]
    PoolRule(String),
    /// A malformed address or subnet.
    #[error("invalid {what} {value:?}")]
    Invalid { what: &'static str, value: String },
    /// A flat network without the physical network's subnet or gateway.
    #[error("a flat network needs {0}: it lives on an existing physical network (give --subnet and --gateway)")]
    FlatNeeds(&'static str),
    /// A cluster domain already holds another subnet (same VNI or VLAN, other definition).
    #[error("{domain} already has subnet {existing}: a network joining it must use that subnet (or omit --subnet)")]
    DomainTaken { domain: String, existing: IpNet },
    /// Dynamic allocation kept losing races against other hosts.
    #[error("address allocation in {scope} kept conflicting with other hosts; try again")]
    Contended { scope: String },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] qingluan_store::StoreError),
}

/// What a routing domain isolates: subnets overlap only across domains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolKind {
    /// Routed by this host (nat, nonat): one shared domain, no overlaps.
    Host,
    /// 802.1Q VLANs: one domain per VLAN ID.
    Vlan,
    /// VXLAN overlays: one domain per VNI.
    Vxlan,
    /// Physical networks (flat): one domain per subnet, which the user always gives; never
    /// carved.
    Flat,
}

/// A named supernet subnets are carved from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pool {
    /// Pool name (`nat`, `nonat`, ...).
    pub name: String,
    /// The supernet.
    pub subnet: IpNet,
    /// Prefix length of carved subnets.
    pub prefix: u8,
    /// Routing domain kind of its subnets.
    pub kind: PoolKind,
}

/// A subnet Docker requested, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Subnet {
    /// The Docker PoolID, `ql/<domain>/<cidr>`.
    pub id: String,
    /// Name of the pool it belongs to.
    pub pool: String,
    /// Routing domain.
    pub domain: String,
    /// The subnet.
    pub cidr: IpNet,
    /// `--ip-range`: dynamic allocation stays inside it.
    pub range: Option<IpNet>,
    /// Whether it was carved from the pool (as opposed to given with `--subnet`).
    pub carved: bool,
    /// Seconds since the epoch when it was handed out (0 for records older than the field).
    #[serde(default)]
    pub created: u64,
}

/// Why an address is allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AddrKind {
    /// The network's gateway.
    Gateway,
    /// Asked for by address: `--ip`, `--aux-address`.
    Static,
    /// Chosen by us.
    Dynamic,
}

/// An allocated address, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Addr {
    /// The address.
    pub ip: IpAddr,
    /// Why it is allocated.
    pub kind: AddrKind,
    /// In cluster domains, the host holding a container address (gateways belong to the
    /// network and name no host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Seconds since the epoch when it was allocated.
    #[serde(default)]
    pub since: u64,
    /// The endpoint it was bound to at CreateEndpoint; a ReleaseAddress while that endpoint
    /// still exists keeps it, so it is never handed out twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// Whether a domain spans hosts (its records live in the cluster store).
pub fn is_cluster_domain(domain: &str) -> bool {
    domain != "host"
}

/// Routing domain of a pool kind, given the `vni` option for vlan and vxlan and the
/// `--subnet` for flat.
pub fn domain(kind: PoolKind, vni: Option<u32>, subnet: &str) -> Result<String, IpamError> {
    let need = |name: &str| IpamError::InvalidOption {
        key: "vni".into(),
        reason: format!("required for a {name} pool"),
    };
    Ok(match kind {
        PoolKind::Host => "host".into(),
        PoolKind::Vlan => format!("vlan-{}", vni.ok_or_else(|| need("vlan"))?),
        PoolKind::Vxlan => format!("vxlan-{}", vni.ok_or_else(|| need("vxlan"))?),
        PoolKind::Flat => {
            let cidr: IpNet = subnet
                .parse()
                .map_err(|_| IpamError::FlatNeeds("--subnet"))?;
            flat_domain(cidr)
        }
    })
}

/// The routing domain (and cluster key) of a flat network's subnet: `flat-192.168.159.0_24`.
pub fn flat_domain(cidr: IpNet) -> String {
    format!("flat-{}", cidr_key(cidr.trunc()))
}

/// The Docker PoolID of a subnet.
pub fn pool_id(domain: &str, cidr: IpNet) -> String {
    format!("ql/{domain}/{cidr}")
}

/// Splits a Docker PoolID into domain and subnet.
pub fn parse_pool_id(id: &str) -> Result<(String, IpNet), IpamError> {
    let unknown = || IpamError::UnknownPoolId(id.to_string());
    let rest = id.strip_prefix("ql/").ok_or_else(unknown)?;
    let (domain, cidr) = rest.split_once('/').ok_or_else(unknown)?;
    let cidr = cidr.parse().map_err(|_| unknown())?;
    Ok((domain.to_string(), cidr))
}

/// Store key of a subnet.
pub fn subnet_key(domain: &str, cidr: IpNet) -> String {
    format!("{SUBNETS}{domain}/{}", cidr_key(cidr))
}

/// Store key prefix of a subnet's addresses.
pub fn addrs_prefix(domain: &str, cidr: IpNet) -> String {
    format!("{ADDRS}{domain}/{}/", cidr_key(cidr))
}

fn cidr_key(cidr: IpNet) -> String {
    cidr.to_string().replace('/', "_")
}

/// The PoolID and address of an address key (`ipam/addrs/<domain>/<cidr>/<ip>`).
pub fn parse_addr_key(key: &str) -> Option<(String, IpAddr)> {
    let rest = key.strip_prefix(ADDRS)?;
    let (domain, rest) = rest.split_once('/')?;
    let (cidr, ip) = rest.split_once('/')?;
    let cidr: IpNet = cidr.replace('_', "/").parse().ok()?;
    Some((pool_id(domain, cidr), ip.parse().ok()?))
}

/// Whether an address may be handed out at all in a subnet (not network or broadcast).
pub fn usable(cidr: IpNet, ip: IpAddr) -> bool {
    if !cidr.contains(&ip) {
        return false;
    }
    match cidr {
        IpNet::V4(v4) if v4.prefix_len() < 31 => {
            IpAddr::V4(v4.network()) != ip && IpAddr::V4(v4.broadcast()) != ip
        }
        IpNet::V6(v6) if v6.prefix_len() < 127 => IpAddr::V6(v6.network()) != ip,
        _ => true,
    }
}

/// The first usable host address: the default gateway.
pub fn first_host(cidr: IpNet) -> Option<IpAddr> {
    (0..4)
        .filter_map(|n| nth_host(cidr, n))
        .find(|ip| usable(cidr, *ip))
}

/// The lowest usable address of `scope` (the range, or the subnet) that is not taken.
pub fn lowest_free(cidr: IpNet, scope: IpNet, taken: &BTreeSet<IpAddr>) -> Option<IpAddr> {
    free_from(cidr, scope, taken, 0)
}

/// The first usable address of `scope` at or after its `start`-th address (wrapping
/// around) that is not taken. Hosts sharing a cluster subnet start at different points
/// ([`host_offset`]), so concurrent allocations of different hosts rarely collide.
pub fn free_from(
    cidr: IpNet,
    scope: IpNet,
    taken: &BTreeSet<IpAddr>,
    start: u128,
) -> Option<IpAddr> {
    let bits = u32::from(scope.max_prefix_len() - scope.prefix_len());
    let size = 1u128.checked_shl(bits).unwrap_or(u128::MAX);
    let start = start % size;
    (start..size)
        .chain(0..start)
        .filter_map(|n| nth_host(scope, n))
        .find(|ip| usable(cidr, *ip) && !taken.contains(ip))
}

/// Where a host starts looking for free addresses in cluster subnets: a stable hash of its
/// ID (FNV-1a).
pub fn host_offset(host: &str) -> u128 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in host.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    u128::from(h)
}

/// The first `prefix`-long subnet of `supernet` that overlaps none of `used`.
pub fn carve(supernet: IpNet, prefix: u8, used: &[IpNet]) -> Option<IpNet> {
    supernet
        .subnets(prefix)
        .ok()?
        .find(|c| !used.iter().any(|u| overlaps(*u, *c)))
}

/// Whether two subnets share any address.
pub fn overlaps(a: IpNet, b: IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// IPv4 routes of the host from `/proc/net/route`, without default routes.
pub fn host_routes() -> Vec<IpNet> {
    let Ok(text) = std::fs::read_to_string("/proc/net/route") else {
        return Vec::new();
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let dest = u32::from_str_radix(f.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?;
            let prefix = mask.count_ones() as u8;
            if prefix == 0 {
                return None;
            }
            let ip = std::net::Ipv4Addr::from(u32::from_be(dest));
            Some(IpNet::V4(ipnet::Ipv4Net::new(ip, prefix).ok()?.trunc()))
        })
        .collect()
}

#[cfg(test)]
mod tests;

/// Prefix lengths a network's subnet may have: IPv4 from /8 (16 M addresses) to /30 (two
/// usable addresses), IPv6 from /32 to /126.
pub fn check_prefix(subnet: IpNet) -> Result<(), IpamError> {
    let (family, min, max) = match subnet {
        IpNet::V4(_) => ("IPv4", 8, 30),
        IpNet::V6(_) => ("IPv6", 32, 126),
    };
    if (min..=max).contains(&subnet.prefix_len()) {
        Ok(())
    } else {
        Err(IpamError::PrefixOutOfBounds {
            subnet,
            family,
            min,
            max,
        })
    }
}
