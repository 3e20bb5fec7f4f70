//! ACL control: stateful allow and deny rules, as users write them, and what they select.
//!
//! A rule belongs to a network (`--network`): it is enforced on that network's bridge,
//! on every IPv4 packet crossing it from `from` to `to` (a selector each), of a protocol
//! and destination ports. Rules are stateful: what a rule allows is committed to the
//! connection tracker, and replies of tracked connections pass without a rule; a rule is
//! still checked on every later packet of the connection's first direction, so a deny added
//! later cuts connections it matches at once.
//!
//! Selectors: `any`, a network (its subnet), `container:<name|id>` and `label:<k>=<v>`
//! (the addresses of matching containers on this host and, on cluster networks, those other
//! hosts publish in the cluster store; resolved anew at every reconcile, so a container
//! started later is covered), `cidr:<prefix>`. Priority 0–1000, higher wins; at
//! the same priority deny beats allow. Below every rule the network's default applies: the
//! gateway and traffic through it are allowed, and traffic between the network's own
//! containers is allowed or denied by `--opt acl.default` (allow unless given).
//!
//! This file holds the values and their resolution into address sets; `pipeline/acl.rs`
//! turns them into flows.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::model::{Endpoint, Network};

/// Errors in ACL rules and commands; the text reaches the user.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AclError {
    /// A selector that does not parse.
    #[error(
        "invalid selector {0:?}: give any, a network name, container:<name|id>, \
         label:<key>=<value> or cidr:<prefix>"
    )]
    BadSelector(String),
    /// A malformed CIDR.
    #[error("invalid CIDR {0:?}: give an IPv4 prefix such as 10.1.0.0/16")]
    BadCidr(String),
    /// A protocol we do not know.
    #[error("invalid protocol {0:?}: give tcp, udp, icmp or any")]
    BadProto(String),
    /// A port out of range or that does not parse.
    #[error("invalid port {0:?}: give ports from 1 to 65535, as 80, 80,443 or 8000-8080")]
    BadPort(String),
    /// Ports with a protocol that has none.
    #[error("--port needs --proto tcp or udp (not {0})")]
    PortWithoutTransport(Proto),
    /// A priority out of range.
    #[error("invalid priority {0:?}: give a number from 0 to 1000")]
    BadPriority(String),
    /// Neither or both of allow and deny.
    #[error("give exactly one of --allow and --deny")]
    Verdict,
    /// `--opt acl.default=` other than allow or deny.
    #[error("invalid acl.default {0:?}: must be allow or deny")]
    BadDefault(String),
    /// A rule equal to one that exists.
    #[error("the same rule exists already as {0}")]
    Duplicate(String),
    /// `acl rm` of an ID we do not have.
    #[error("no ACL rule {0}")]
    NotFound(String),
    /// An ID prefix that names several rules.
    #[error("ACL rule ID {0:?} is ambiguous: give more of it")]
    Ambiguous(String),
}

/// What a rule does with what it matches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Let it through (and its replies).
    #[default]
    Allow,
    /// Drop it.
    Deny,
}

impl Verdict {
    /// Whether this is allow (the default).
    pub fn is_allow(&self) -> bool {
        *self == Verdict::Allow
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        })
    }
}

/// A network's default for traffic between its own containers (`--opt acl.default`).
pub fn default_of(opts: &BTreeMap<String, String>) -> Result<Verdict, AclError> {
    match opts.get(DEFAULT_KEY).map(|v| v.trim()) {
        None | Some("allow") => Ok(Verdict::Allow),
        Some("deny") => Ok(Verdict::Deny),
        Some(v) => Err(AclError::BadDefault(v.to_string())),
    }
}

/// The network option that sets the default.
pub const DEFAULT_KEY: &str = "acl.default";

/// What a rule's `--from` or `--to` selects.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Selector {
    /// Everything.
    Any,
    /// A network by ID: its subnet.
    Network(String),
    /// A container by name or ID (prefix), as typed: its addresses on this host.
    Container(String),
    /// Containers with this label: their addresses on this host.
    Label(String, String),
    /// An IPv4 prefix.
    Cidr(Ipv4Net),
}

/// A selector as typed, before a network name is resolved to its ID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Typed {
    /// Resolved already.
    Selector(Selector),
    /// A bare name: a network, to be resolved.
    Network(String),
}

impl FromStr for Typed {
    type Err = AclError;

    fn from_str(s: &str) -> Result<Typed, AclError> {
        let s = s.trim();
        let bad = || AclError::BadSelector(s.to_string());
        if s == "any" {
            return Ok(Typed::Selector(Selector::Any));
        }
        if let Some(name) = s.strip_prefix("container:") {
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(bad());
            }
            return Ok(Typed::Selector(Selector::Container(name.to_string())));
        }
        if let Some(kv) = s.strip_prefix("label:") {
            let (k, v) = kv.split_once('=').ok_or_else(bad)?;
            if k.is_empty() {
                return Err(bad());
            }
            return Ok(Typed::Selector(Selector::Label(k.into(), v.into())));
        }
        if let Some(c) = s.strip_prefix("cidr:") {
            let net: Ipv4Net = c
                .parse()
                .or_else(|_| c.parse::<std::net::Ipv4Addr>().map(Ipv4Net::from))
                .map_err(|_| AclError::BadCidr(c.to_string()))?;
            return Ok(Typed::Selector(Selector::Cidr(net.trunc())));
        }
        if s.is_empty() || s.contains(':') || s.contains(char::is_whitespace) {
            return Err(bad());
        }
        Ok(Typed::Network(s.to_string()))
    }
}

/// A rule's protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// Every IPv4 packet.
    #[default]
    Any,
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP.
    Icmp,
}

impl Proto {
    /// The IP protocol number, if one.
    pub fn number(self) -> Option<u8> {
        match self {
            Proto::Any => None,
            Proto::Tcp => Some(6),
            Proto::Udp => Some(17),
            Proto::Icmp => Some(1),
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Any => "any",
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
        })
    }
}

impl FromStr for Proto {
    type Err = AclError;

    fn from_str(s: &str) -> Result<Proto, AclError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "any" | "" => Ok(Proto::Any),
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            "icmp" => Ok(Proto::Icmp),
            _ => Err(AclError::BadProto(s.to_string())),
        }
    }
}

/// A destination port range, both ends included.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortRange {
    /// First port.
    pub lo: u16,
    /// Last port.
    pub hi: u16,
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

impl PortRange {
    /// The (value, mask) pairs that together match exactly this range.
    pub fn masks(self) -> Vec<(u16, u16)> {
        let (mut lo, hi) = (u32::from(self.lo), u32::from(self.hi));
        let mut out = Vec::new();
        while lo <= hi {
            let mut size = 1u32;
            while lo.is_multiple_of(size * 2) && lo + size * 2 - 1 <= hi {
                size *= 2;
            }
            out.push((lo as u16, !((size - 1) as u16)));
            lo += size;
        }
        out
    }
}

/// Parses `80`, `80,443`, `8000-8080` (and lists of those).
pub fn parse_ports(s: &str) -> Result<Vec<PortRange>, AclError> {
    let bad = || AclError::BadPort(s.to_string());
    let port = |p: &str| {
        p.trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=65535).contains(n))
            .map(|n| n as u16)
    };
    let mut out = Vec::new();
    for part in s.split(',') {
        let r = match part.split_once('-') {
            Some((a, b)) => PortRange {
                lo: port(a).ok_or_else(bad)?,
                hi: port(b).ok_or_else(bad)?,
            },
            None => {
                let p = port(part).ok_or_else(bad)?;
                PortRange { lo: p, hi: p }
            }
        };
        if r.lo > r.hi {
            return Err(bad());
        }
        out.push(r);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// A priority: 0–1000, default 100.
pub fn parse_priority(s: &str) -> Result<u16, AclError> {
    s.trim()
        .parse::<u16>()
        .ok()
        .filter(|p| *p <= 1000)
        .ok_or_else(|| AclError::BadPriority(s.to_string()))
}

/// The priority of a rule given none.
pub const DEFAULT_PRIORITY: u16 = 100;

/// What a rule matches and does: everything but its ID.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RuleSpec {
    /// The network it is enforced on (ID).
    pub network: String,
    /// Source.
    pub from: Selector,
    /// Destination.
    pub to: Selector,
    /// Protocol.
    pub proto: Proto,
    /// Destination ports (TCP, UDP); none: every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRange>,
    /// Allow or deny.
    pub verdict: Verdict,
    /// 0–1000, higher wins (a quarantine's allow of its gateway has 1001).
    pub priority: u16,
    /// Who made it, when not a user: [`crate::ids::QUARANTINE`] for a quarantine's rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl RuleSpec {
    /// Refuses ports without TCP or UDP.
    pub fn check(&self) -> Result<(), AclError> {
        if !self.ports.is_empty() && !matches!(self.proto, Proto::Tcp | Proto::Udp) {
            return Err(AclError::PortWithoutTransport(self.proto));
        }
        Ok(())
    }

    /// Its ID: a digest of what it says ([`crate::model::content_id`]).
    pub fn id(&self) -> String {
        crate::model::content_id(self)
    }

    /// Every network the rule names: its own, then its selectors'.
    pub fn networks(&self) -> Vec<&str> {
        let mut out = vec![self.network.as_str()];
        for s in [&self.from, &self.to] {
            if let Selector::Network(id) = s {
                out.push(id);
            }
        }
        out
    }

    /// This rule with every network it names renamed by `f` (network IDs to cluster keys
    /// and back).
    pub fn renamed(&self, f: impl Fn(&str) -> String) -> RuleSpec {
        let sel = |s: &Selector| match s {
            Selector::Network(id) => Selector::Network(f(id)),
            other => other.clone(),
        };
        RuleSpec {
            network: f(&self.network),
            from: sel(&self.from),
            to: sel(&self.to),
            ..self.clone()
        }
    }
}

/// A rule, kept until `qingluan acl rm` or its network goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclRule {
    /// 8 hex digits ([`RuleSpec::id`]).
    pub id: String,
    /// What it says.
    #[serde(flatten)]
    pub spec: RuleSpec,
}

/// Where a rule is kept and enforced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// This host: rules of nat and nonat networks, and rules that name one.
    #[default]
    Host,
    /// Every host with the network: rules of cluster networks that name only cluster
    /// networks, kept in the cluster store by cluster key.
    Cluster,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::Host => "host",
            Scope::Cluster => "cluster",
        })
    }
}

/// An address set a selector resolved to: everything, or these prefixes (none: nothing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addresses {
    /// Every address.
    Any,
    /// These prefixes.
    Some(BTreeSet<Ipv4Net>),
}

/// The conntrack zone of every network, by ID: the zone its record holds, else (records
/// from before ACLs) a free one, given in creation order so it stays put.
pub fn zones(networks: &[Network]) -> BTreeMap<String, u16> {
    let mut out: BTreeMap<String, u16> = networks
        .iter()
        .filter(|n| n.zone != 0)
        .map(|n| (n.id.clone(), n.zone))
        .collect();
    let mut rest: Vec<&Network> = networks.iter().filter(|n| n.zone == 0).collect();
    rest.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
    for n in rest {
        let taken: BTreeSet<u16> = out.values().copied().collect();
        out.insert(n.id.clone(), free_zone(&taken, &n.id));
    }
    out
}

/// A zone for network `id` that is not `taken`: from the first 4 hex digits of its ID,
/// probed upwards (zone 0 is the default zone, never ours).
pub fn free_zone(taken: &BTreeSet<u16>, id: &str) -> u16 {
    let mut z = u16::from_str_radix(crate::model::head(id, 4), 16).unwrap_or(1);
    loop {
        if z != 0 && !taken.contains(&z) {
            return z;
        }
        z = z.wrapping_add(1);
    }
}

/// What selectors resolve against: networks and endpoints of this host, and the containers
/// other hosts have on cluster networks.
pub struct World<'a> {
    /// Networks by ID.
    pub networks: BTreeMap<&'a str, &'a Network>,
    /// Every endpoint.
    pub endpoints: &'a [Endpoint],
    /// Other hosts' containers on cluster networks.
    pub remote: &'a [crate::desired::RemoteContainer],
}

impl<'a> World<'a> {
    /// The world of `networks` and `endpoints`.
    pub fn new(networks: &'a [Network], endpoints: &'a [Endpoint]) -> World<'a> {
        World {
            networks: networks.iter().map(|n| (n.id.as_str(), n)).collect(),
            endpoints,
            remote: &[],
        }
    }

    /// This world with the containers other hosts have on cluster networks, as the cluster
    /// agent last saw them: selectors of containers and labels cover every host's.
    pub fn with_remote(mut self, view: &'a crate::desired::ClusterView) -> World<'a> {
        self.remote = &view.containers;
        self
    }

    /// The addresses of the container named `name` (its name or an ID prefix), here or on
    /// another host, with their networks (another host's container only on a network this
    /// host has too).
    pub fn addresses_of(&self, name: &str) -> Vec<(&'a Network, std::net::Ipv4Addr)> {
        let local = self
            .endpoints
            .iter()
            .filter(|e| e.container.as_ref().is_some_and(|c| c.is_named(name)))
            .filter_map(|e| {
                let net = *self.networks.get(e.network_id.as_str())?;
                Some((net, e.address.addr()))
            });
        let remote = self
            .remote
            .iter()
            .filter(|r| r.container.is_named(name))
            .filter_map(|r| {
                let net = self
                    .networks
                    .values()
                    .find(|n| n.cluster.as_deref() == Some(r.network.as_str()))?;
                Some((*net, r.address))
            });
        local.chain(remote).collect()
    }

    /// What `s` selects now.
    pub fn resolve(&self, s: &Selector) -> Addresses {
        let hosts = |keep: &dyn Fn(&crate::model::ContainerRef) -> bool| {
            let local = self
                .endpoints
                .iter()
                .filter(|e| e.container.as_ref().is_some_and(keep))
                .map(|e| e.address.addr());
            let remote = self
                .remote
                .iter()
                .filter(|r| keep(&r.container))
                .map(|r| r.address);
            Addresses::Some(local.chain(remote).map(Ipv4Net::from).collect())
        };
        match s {
            Selector::Any => Addresses::Any,
            Selector::Network(id) => Addresses::Some(
                self.networks
                    .get(id.as_str())
                    .map(|n| n.subnet)
                    .into_iter()
                    .collect(),
            ),
            Selector::Cidr(n) => Addresses::Some(BTreeSet::from([*n])),
            Selector::Container(name) => hosts(&|c| c.is_named(name)),
            Selector::Label(k, v) => hosts(&|c| c.labels.get(k) == Some(v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_parse_or_say_what_is_wrong() {
        let p = |s: &str| s.parse::<Typed>();
        assert_eq!(p("any"), Ok(Typed::Selector(Selector::Any)));
        assert_eq!(p("web"), Ok(Typed::Network("web".into())));
        assert_eq!(
            p("container:db"),
            Ok(Typed::Selector(Selector::Container("db".into())))
        );
        assert_eq!(
            p("label:tier=backend"),
            Ok(Typed::Selector(Selector::Label(
                "tier".into(),
                "backend".into()
            )))
        );
        assert_eq!(
            p("cidr:10.1.2.3/16"),
            Ok(Typed::Selector(Selector::Cidr(
                "10.1.0.0/16".parse().unwrap()
            )))
        );
        assert_eq!(
            p("cidr:10.1.2.3"),
            Ok(Typed::Selector(Selector::Cidr(
                "10.1.2.3/32".parse().unwrap()
            )))
        );
        assert_eq!(
            p("cidr:10.1.2/40"),
            Err(AclError::BadCidr("10.1.2/40".into()))
        );
        assert!(matches!(p("label:=x"), Err(AclError::BadSelector(_))));
        assert!(matches!(p("host:x"), Err(AclError::BadSelector(_))));
    }

    #[test]
    fn ports_parse_and_ranges_become_masks() {
        assert_eq!(
            parse_ports("443,80").unwrap(),
            [PortRange { lo: 80, hi: 80 }, PortRange { lo: 443, hi: 443 }]
        );
        for bad in ["0", "70000", "80-70", "x", ""] {
            assert_eq!(parse_ports(bad), Err(AclError::BadPort(bad.into())));
        }
        assert_eq!(PortRange { lo: 80, hi: 80 }.masks(), [(80, 0xffff)]);
        assert_eq!(
            PortRange { lo: 8000, hi: 8010 }.masks(),
            [(8000, 0xfff8), (8008, 0xfffe), (8010, 0xffff)]
        );
        assert_eq!(PortRange { lo: 1, hi: 65535 }.masks().len(), 16);
        for r in [(1, 65535), (1000, 2000), (5, 5), (65535, 65535)] {
            let range = PortRange { lo: r.0, hi: r.1 };
            let covered: u32 = range.masks().iter().map(|(_, m)| u32::from(!m) + 1).sum();
            assert_eq!(covered, u32::from(r.1 - r.0) + 1, "{range}");
        }
    }

    #[test]
    fn ports_need_a_transport_and_ids_follow_content() {
        let mut r = RuleSpec {
            network: "n1".into(),
            from: Selector::Any,
            to: Selector::Any,
            proto: Proto::Icmp,
            ports: vec![PortRange { lo: 1, hi: 1 }],
            verdict: Verdict::Allow,
            priority: 100,
            note: None,
        };
        assert_eq!(r.check(), Err(AclError::PortWithoutTransport(Proto::Icmp)));
        r.proto = Proto::Tcp;
        assert_eq!(r.check(), Ok(()));
        let id = r.id();
        assert_eq!(id.len(), 8);
        r.verdict = Verdict::Deny;
        assert_ne!(r.id(), id);
        assert_eq!(
            parse_priority("1001"),
            Err(AclError::BadPriority("1001".into()))
        );
        assert_eq!(
            default_of(&BTreeMap::from([(DEFAULT_KEY.into(), "deny".into())])),
            Ok(Verdict::Deny)
        );
    }
}
