//! Netfilter adapter: NAT, port publishing, isolation and the veth guards, in nftables.
//!
//! Concept: the whole ruleset of one qingluan instance is typed data ([`Ruleset`]: sets and
//! [`Rule`]s per chain, decided by qingluan-core's `policy`; this adapter does not know what
//! a network is) rendered into two nftables tables the instance owns — `inet <name>` (NAT,
//! forward and input, for IPv4 and IPv6) and `netdev <name>_guard` (one ingress chain with policy drop per OVS-side veth,
//! closing the userspace datapath's "veth bypass"). Each apply is ONE transaction, so there
//! is never a moment without rules. The `inet` table is replaced whole when its rendered
//! text's hash (kept as the table comment) differs from what is installed. The guard table
//! changes by the chains that differ (one endpoint's veth is one chain added or deleted:
//! replacing the table would re-register every endpoint's hook); the chains installed are
//! read back on full passes. A restart touches nothing that matches. A change of guard
//! chains only, what an endpoint's pass makes, goes to the kernel as one netlink batch
//! (`guards.rs`); everything else is an `nft -f` script.
//!
//! dockerd's FORWARD policy is DROP (iptables-nft, table `ip filter`), and an accept in our own
//! table cannot override a drop in another. So traffic of our bridges is also accepted in
//! dockerd's `DOCKER-USER` chain by two rules tagged with the instance name; every isolation
//! decision is taken earlier, in our forward chain (priority filter - 1), which only drops.

mod eval;
mod fake;
mod generation;
mod guards;
mod nft;

pub use eval::Packet;
pub use fake::FakeFirewall;
pub use nft::{render_script, NftFirewall};

use std::net::{Ipv4Addr, Ipv6Addr};

use async_trait::async_trait;
use ipnet::{Ipv4Net, Ipv6Net};

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

/// An interface-name condition.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Iface {
    /// Exactly this interface.
    Is(String),
    /// Any interface but this one.
    IsNot(String),
    /// Interfaces matching this nft wildcard (`qlb*`).
    Matches(String),
}

/// One condition of a rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Cond {
    /// Input interface.
    Iif(Iface),
    /// Output interface.
    Oif(Iface),
    /// IPv4 (in the `inet` family).
    Ipv4,
    /// IPv4 source within a prefix.
    IpSaddr(Ipv4Net),
    /// IPv4 destination.
    IpDaddr(Ipv4Addr),
    /// Any IPv4 destination but this one.
    IpDaddrNot(Ipv4Addr),
    /// IPv4 destination among the ruleset's gateways.
    IpDaddrGateway,
    /// IPv6 destination outside all of these prefixes (an address is a /128).
    Ip6DaddrNot(Vec<Ipv6Net>),
    /// IPv6 destination among the ruleset's IPv6 gateways.
    Ip6DaddrGateway,
    /// Destination is an address of this host.
    LocalDaddr,
    /// Transport protocol (`tcp`, `udp`, `sctp`) and destination port.
    Dport(&'static str, u16),
    /// Part of or related to an established connection.
    Established,
    /// A connection whose destination was translated.
    Dnatted,
}

/// What a rule does with a packet that meets all its conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Let it through.
    Accept,
    /// Drop it.
    Drop,
    /// Rewrite its source to the outgoing interface's address.
    Masquerade,
    /// Send it to this address and port instead.
    Dnat(Ipv4Addr, u16),
}

/// A rule: all conditions, then the verdict.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Conditions, all of which must hold.
    pub when: Vec<Cond>,
    /// The verdict.
    pub then: Verdict,
}

/// Everything one instance wants in netfilter, as typed rules per chain. What the rules are
/// is decided by the caller (qingluan-core's policy); this adapter only renders and
/// installs them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ruleset {
    /// Instance name: names the tables and tags the DOCKER-USER rules.
    pub name: String,
    /// Wildcard matching every bridge of the instance in iptables syntax (`qlb+`).
    pub bridge_wildcard: String,
    /// Whether dockerd's DOCKER-USER chain must accept the bridges' traffic.
    pub docker_user_accept: bool,
    /// Gateway addresses (the `gateways` set).
    pub gateways: Vec<Ipv4Addr>,
    /// IPv6 gateway addresses (the `gateways6` set).
    pub gateways6: Vec<Ipv6Addr>,
    /// Destination NAT, in both the prerouting and the local output chain.
    pub dnat: Vec<Rule>,
    /// Source NAT.
    pub postrouting: Vec<Rule>,
    /// Forwarded traffic (before dockerd's own chains).
    pub forward: Vec<Rule>,
    /// Traffic to the host (before anything else).
    pub input: Vec<Rule>,
    /// OVS-side veths to guard against the host kernel.
    pub guards: Vec<String>,
}

impl Ruleset {
    /// Whether the ruleset has nothing to install.
    pub fn is_empty(&self) -> bool {
        self.gateways.is_empty()
            && self.gateways6.is_empty()
            && self.dnat.is_empty()
            && self.postrouting.is_empty()
            && self.forward.is_empty()
            && self.input.is_empty()
            && self.guards.is_empty()
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
