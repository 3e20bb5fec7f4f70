//! Netfilter adapter: NAT, port publishing, isolation and the veth guards, in nftables.
//!
//! Concept: the whole ruleset of one qingluan instance is plain data ([`Ruleset`]) rendered
//! into two nftables tables the instance owns — `inet <name>` (NAT, forward and input, for IPv4 and IPv6
//! isolation) and `netdev <name>_guard` (one ingress chain with policy drop per OVS-side veth,
//! closing the userspace datapath's "veth bypass"). Applying replaces both tables in ONE
//! `nft -f` transaction, so there is never a moment without rules, and is skipped entirely
//! when the rendered text's hash (kept as the table comment) is already installed: a restart
//! touches nothing that matches.
//!
//! dockerd's FORWARD policy is DROP (iptables-nft, table `ip filter`), and an accept in our own
//! table cannot override a drop in another. So traffic of our bridges is also accepted in
//! dockerd's `DOCKER-USER` chain by two rules tagged with the instance name; every isolation
//! decision is taken earlier, in our forward chain (priority filter - 1), which only drops.

mod fake;
mod nft;

pub use fake::FakeFirewall;
pub use nft::{render_script, NftFirewall};

use std::net::Ipv4Addr;

use async_trait::async_trait;
use ipnet::Ipv4Net;

/// Netfilter errors.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// `nft` or `iptables` failed.
    #[error("{cmd} failed: {stderr}")]
    Command { cmd: String, stderr: String },
    /// The command could not be run at all.
    #[error("cannot run {cmd}: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
}

/// A port published on the host, forwarded to a container.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dnat {
    /// `tcp`, `udp` or `sctp`.
    pub proto: String,
    /// Host address the port is published on; `None` = every local address.
    pub host_ip: Option<Ipv4Addr>,
    /// Host port.
    pub host_port: u16,
    /// Container address.
    pub to: Ipv4Addr,
    /// Container port.
    pub to_port: u16,
}

/// One host-routed segment: an OVS bridge whose internal port holds the gateway.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Segment {
    /// Bridge (and gateway interface) name.
    pub bridge: String,
    /// The segment's IPv4 subnet.
    pub subnet: Ipv4Net,
    /// The gateway address on the host.
    pub gateway: Ipv4Addr,
    /// The IPv6 gateway address on the host, on dual-stack networks.
    pub gateway_v6: Option<std::net::Ipv6Addr>,
    /// Whether traffic may leave (masquerade) and come in (published ports): nat networks
    /// that are not `--internal`. Otherwise the segment reaches its gateway only.
    pub external: bool,
    /// Published ports.
    pub dnat: Vec<Dnat>,
}

/// Everything one instance wants in netfilter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ruleset {
    /// Instance name: names the tables and tags the DOCKER-USER rules.
    pub name: String,
    /// Wildcard matching every bridge of the instance in iptables syntax (`qlb+`).
    pub bridge_wildcard: String,
    /// Host-routed segments.
    pub segments: Vec<Segment>,
    /// OVS-side veths to guard against the host kernel.
    pub guards: Vec<String>,
}

impl Ruleset {
    /// Whether the ruleset has nothing to install.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty() && self.guards.is_empty()
    }
}

/// Installs rulesets.
#[async_trait]
pub trait Firewall: Send + Sync {
    /// Makes netfilter match `rules` (removing the instance's tables when it is empty).
    /// `force` re-checks the installed state even if this process applied the same rules.
    /// Returns whether anything was changed.
    async fn apply(&self, rules: &Ruleset, force: bool) -> Result<bool, FirewallError>;
}
