//! Netfilter policy: what the host's kernel does with the traffic of host-routed networks,
//! decided here and handed to the netfilter adapter as a typed [`Ruleset`] to render.
//!
//! A host-routed network is a [`Segment`]: a bridge whose internal port holds the gateway.
//! The rules, per segment:
//! - **published ports** (external segments): traffic to a local address and the host port
//!   is DNATed to the container, from outside (prerouting) and from the host (output);
//! - **masquerade** (external): the subnet's traffic leaving by another interface, loopback
//!   sources DNATed onto the bridge, and DNATed traffic coming back in on the bridge (so the
//!   reply returns through the host);
//! - **isolation**: nothing forwarded from one qingluan bridge to another; into an external
//!   segment only replies and DNATed connections; an internal segment neither sends nor
//!   receives anything forwarded;
//! - **the host**: a segment may reach its own gateway address but no other segment's; an
//!   internal one nothing on the host but its gateway (and IPv6 link-local/multicast, for
//!   neighbour discovery).
//!
//! - **links** (`qingluan connect`, see `connect.rs`): what goes between two connected
//!   segments (or two connected containers on them) is accepted before any isolation drop
//!   and not masqueraded, so each side sees the other's real addresses.
//!
//! dockerd's FORWARD policy is DROP, so while any segment exists DOCKER-USER accepts the
//! bridges' traffic; every decision above is taken before that, in our own chains.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use qingluan_dataplane::netfilter::{Cond, Iface, Rule, Ruleset, Verdict};

/// A port published on the host, forwarded to a container.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dnat {
    /// `tcp`, `udp` or `sctp`.
    pub proto: &'static str,
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
    pub gateway_v6: Option<Ipv6Addr>,
    /// Whether traffic may leave (masquerade) and come in (published ports): nat networks
    /// that are not `--internal`. Otherwise the segment reaches its gateway only.
    pub external: bool,
    /// Published ports.
    pub dnat: Vec<Dnat>,
}

/// Two segments (by bridge) the host routes between: all their traffic, or only that
/// between two addresses (a container pair), both ways.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Link {
    /// One segment's bridge.
    pub a: String,
    /// The other's.
    pub b: String,
    /// Only between these addresses (on `a`, on `b`).
    pub between: Option<(Ipv4Addr, Ipv4Addr)>,
}

/// Everything the host's netfilter must do for one instance.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Instance name (names the tables).
    pub name: String,
    /// Prefix every bridge of the instance starts with (`qlb`).
    pub bridge_prefix: String,
    /// Host-routed segments.
    pub segments: Vec<Segment>,
    /// OVS-side veths to guard against the host kernel.
    pub guards: Vec<String>,
    /// Connected segments.
    pub links: Vec<Link>,
}

/// A single address as a prefix.
fn host6(a: Ipv6Addr) -> Ipv6Net {
    Ipv6Net::new(a, 128).expect("/128 is valid")
}

fn rule(when: Vec<Cond>, then: Verdict) -> Rule {
    Rule { when, then }
}

impl Policy {
    /// The ruleset that carries out this policy.
    pub fn ruleset(&self) -> Ruleset {
        let mut r = Ruleset {
            name: self.name.clone(),
            bridge_wildcard: format!("{}+", self.bridge_prefix),
            docker_user_accept: !self.segments.is_empty(),
            gateways: self.segments.iter().map(|s| s.gateway).collect(),
            gateways6: self.segments.iter().filter_map(|s| s.gateway_v6).collect(),
            guards: self.guards.clone(),
            ..Ruleset::default()
        };
        let any_bridge = Iface::Matches(format!("{}*", self.bridge_prefix));
        for link in &self.links {
            let subnet = |bridge: &str| {
                self.segments
                    .iter()
                    .find(|s| s.bridge == bridge)
                    .map(|s| s.subnet)
            };
            let (Some(net_a), Some(net_b)) = (subnet(&link.a), subnet(&link.b)) else {
                continue;
            };
            let sides = [
                (&link.a, &link.b, net_a, link.between),
                (&link.b, &link.a, net_b, link.between.map(|(x, y)| (y, x))),
            ];
            for (from, to, net, between) in sides {
                let mut when = vec![
                    Cond::Iif(Iface::Is(from.clone())),
                    Cond::Oif(Iface::Is(to.clone())),
                ];
                let mut unmasked = vec![Cond::IpSaddr(net), Cond::Oif(Iface::Is(to.clone()))];
                if let Some((src, dst)) = between {
                    let src = Ipv4Net::from(src);
                    when.extend([Cond::IpSaddr(src), Cond::IpDaddr(dst)]);
                    unmasked = vec![
                        Cond::IpSaddr(src),
                        Cond::IpDaddr(dst),
                        Cond::Oif(Iface::Is(to.clone())),
                    ];
                }
                r.forward.push(rule(when, Verdict::Accept));
                r.postrouting.push(rule(unmasked, Verdict::Accept));
            }
        }
        for seg in &self.segments {
            let is = || Iface::Is(seg.bridge.clone());
            let not = || Iface::IsNot(seg.bridge.clone());
            let net = seg.subnet;
            // ::1 stands in for a missing IPv6 gateway: no segment traffic goes to it.
            let gw6 = host6(seg.gateway_v6.unwrap_or(Ipv6Addr::LOCALHOST));
            r.forward.push(rule(
                vec![
                    Cond::Iif(is()),
                    Cond::Oif(not()),
                    Cond::Oif(any_bridge.clone()),
                ],
                Verdict::Drop,
            ));
            if seg.external {
                for d in &seg.dnat {
                    let mut when = vec![Cond::Ipv4];
                    when.extend(d.host_ip.map(Cond::IpDaddr));
                    when.extend([Cond::LocalDaddr, Cond::Dport(d.proto, d.host_port)]);
                    r.dnat.push(rule(when, Verdict::Dnat(d.to, d.to_port)));
                }
                let loopback: Ipv4Net = "127.0.0.0/8".parse().expect("valid prefix");
                r.postrouting.extend([
                    rule(
                        vec![Cond::IpSaddr(net), Cond::Oif(not())],
                        Verdict::Masquerade,
                    ),
                    rule(
                        vec![Cond::Oif(is()), Cond::IpSaddr(loopback)],
                        Verdict::Masquerade,
                    ),
                    rule(
                        vec![Cond::Oif(is()), Cond::IpSaddr(net), Cond::Dnatted],
                        Verdict::Masquerade,
                    ),
                ]);
                r.forward.extend([
                    rule(
                        vec![Cond::Oif(is()), Cond::Iif(not()), Cond::Established],
                        Verdict::Accept,
                    ),
                    rule(
                        vec![Cond::Oif(is()), Cond::Iif(not()), Cond::Dnatted],
                        Verdict::Accept,
                    ),
                    rule(vec![Cond::Oif(is()), Cond::Iif(not())], Verdict::Drop),
                ]);
                r.input.extend([
                    rule(
                        vec![
                            Cond::Iif(is()),
                            Cond::IpDaddrNot(seg.gateway),
                            Cond::IpDaddrGateway,
                        ],
                        Verdict::Drop,
                    ),
                    rule(
                        vec![
                            Cond::Iif(is()),
                            Cond::Ip6DaddrNot(vec![gw6]),
                            Cond::Ip6DaddrGateway,
                        ],
                        Verdict::Drop,
                    ),
                ]);
            } else {
                let link_local: Ipv6Net = "fe80::/10".parse().expect("valid prefix");
                let multicast: Ipv6Net = "ff00::/8".parse().expect("valid prefix");
                r.forward.extend([
                    rule(vec![Cond::Iif(is()), Cond::Oif(not())], Verdict::Drop),
                    rule(vec![Cond::Oif(is()), Cond::Iif(not())], Verdict::Drop),
                ]);
                r.input.extend([
                    rule(
                        vec![Cond::Iif(is()), Cond::IpDaddrNot(seg.gateway)],
                        Verdict::Drop,
                    ),
                    rule(
                        vec![
                            Cond::Iif(is()),
                            Cond::Ip6DaddrNot(vec![gw6, link_local, multicast]),
                        ],
                        Verdict::Drop,
                    ),
                ]);
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(external: bool) -> Segment {
        Segment {
            bridge: "qlb1".into(),
            subnet: "10.240.0.0/24".parse().unwrap(),
            gateway: "10.240.0.1".parse().unwrap(),
            gateway_v6: None,
            external,
            dnat: vec![Dnat {
                proto: "tcp",
                host_ip: None,
                host_port: 8080,
                to: "10.240.0.2".parse().unwrap(),
                to_port: 80,
            }],
        }
    }

    fn policy(segments: Vec<Segment>) -> Ruleset {
        Policy {
            name: "qingluan".into(),
            bridge_prefix: "qlb".into(),
            segments,
            guards: vec![],
            links: vec![],
        }
        .ruleset()
    }

    #[test]
    fn links_accept_before_isolation_and_keep_sources() {
        let mut other = seg(true);
        other.bridge = "qlb2".into();
        other.subnet = "10.250.0.0/24".parse().unwrap();
        let mut p = Policy {
            name: "qingluan".into(),
            bridge_prefix: "qlb".into(),
            segments: vec![seg(true), other],
            guards: vec![],
            links: vec![Link {
                a: "qlb1".into(),
                b: "qlb2".into(),
                between: None,
            }],
        };
        let r = p.ruleset();
        assert_eq!(r.forward[0].then, Verdict::Accept);
        assert_eq!(r.forward[1].then, Verdict::Accept);
        assert_eq!(
            r.forward[1].when,
            [
                Cond::Iif(Iface::Is("qlb2".into())),
                Cond::Oif(Iface::Is("qlb1".into()))
            ]
        );
        assert_eq!(r.postrouting[0].then, Verdict::Accept);
        p.links[0].between = Some(("10.240.0.2".parse().unwrap(), "10.250.0.3".parse().unwrap()));
        let r = p.ruleset();
        assert!(r.forward[1]
            .when
            .contains(&Cond::IpSaddr("10.250.0.3/32".parse().unwrap())));
        assert!(r.forward[1]
            .when
            .contains(&Cond::IpDaddr("10.240.0.2".parse().unwrap())));
    }

    #[test]
    fn only_external_segments_publish_and_masquerade() {
        let ext = policy(vec![seg(true)]);
        assert_eq!(ext.dnat.len(), 1);
        assert_eq!(ext.postrouting.len(), 3);
        assert!(ext.docker_user_accept);
        let int = policy(vec![seg(false)]);
        assert!(int.dnat.is_empty() && int.postrouting.is_empty());
        assert!(int.forward.iter().all(|r| r.then == Verdict::Drop));
    }

    #[test]
    fn nothing_wanted_is_an_empty_ruleset() {
        let r = policy(vec![]);
        assert!(r.is_empty());
        assert!(!r.docker_user_accept);
    }
}
