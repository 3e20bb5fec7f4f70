//! A network's ACL in the `CONNTRACK` and `POLICY` stages, and on an uplink bridge in
//! `CLASSIFY` (see `acl.rs` for the rules).
//!
//! While the network has rules or denies traffic between its containers by default, its
//! IPv4 packets go through the connection tracker in the network's own zone (`CONNTRACK`)
//! (IPv6 follows the default alone, `isolated_v6`), then meet `POLICY`: invalid packets
//! are dropped; replies of tracked connections and related packets pass; every other
//! packet meets the rules (highest priority first, deny
//! before allow at the same priority); below them the network's default: from the gateway
//! and to it allowed, between the network's containers allowed or denied by
//! `acl.default`, the rest allowed. What is allowed is committed to the tracker and goes
//! on (`then`). A network without any of this skips these stages: no tracker, no cost.
//!
//! What `POLICY` allows is committed in `COMMIT`, which marks the connection with the
//! generation of the network's `POLICY` flows (a hash of them), and the later packets of an established connection whose mark is the
//! current generation pass at the top of `POLICY` without meeting the rules again. Any
//! change of the rules or defaults changes the generation, so every open connection meets
//! the new rules with its next packet (a new deny cuts it) and is marked anew if allowed.
//!
//! On a network bridge the host side is its `LOCAL` port. On the overlay bridge, shared by
//! every vxlan network, each flow also matches the network's VNI, the host side is the
//! `nat=true` gateway's port, and the bridge's own flows (`overlay.rs`) send what no
//! network tracks on. On an uplink bridge (flat, vlan), shared with the physical network,
//! the network's packets carry its zone in register 1, set where they enter (`CLASSIFY` for
//! what is sent to a container, `CONNTRACK` for what one sends); the gateway is the
//! physical router. On shared bridges a host tracks what its own containers send and what
//! reaches them (from the tunnel, the gateway or the interface), nothing else: so it sees
//! both directions of each connection of its containers, even one routed between two
//! connected networks, where each direction is routed by its sender's host; new connections
//! meet the same rules on both sides, and a container is protected on its own host.

use std::net::Ipv6Addr;

use ipnet::Ipv6Net;
use qingluan_dataplane::fnv1a;
use qingluan_dataplane::openflow::{ct, Flow};

use super::{flow, Action, Cookie, Feature, Field, FlowFeature, Match, Port, Stage};
use crate::acl::{Addresses, PortRange, Proto, Verdict};
use crate::model::{Endpoint, Network};

/// A rule with its selectors resolved to addresses.
#[derive(Clone, Debug)]
pub struct ResolvedRule {
    /// The rule's ID.
    pub id: String,
    /// 0–1000.
    pub priority: u16,
    /// Allow or deny.
    pub verdict: Verdict,
    /// Sources.
    pub from: Addresses,
    /// Destinations.
    pub to: Addresses,
    /// Protocol.
    pub proto: Proto,
    /// Destination ports.
    pub ports: Vec<PortRange>,
}

impl ResolvedRule {
    /// The flow priority of this rule: above the defaults, deny above allow at the same
    /// rule priority.
    pub fn flow_priority(&self) -> u16 {
        RULE_BASE + 2 * self.priority + u16::from(self.verdict == Verdict::Deny)
    }
}

/// The flow priority of rule priority 0.
const RULE_BASE: u16 = 100;
/// Replies and related packets, above every rule.
const TRACKED: u16 = 3000;
/// Invalid packets, above everything.
const INVALID: u16 = 4000;

/// The ACL of one network on its bridge.
pub struct NetworkAcl<'a> {
    /// The network.
    pub net: &'a Network,
    /// Its conntrack zone.
    pub zone: u16,
    /// Its rules.
    pub rules: &'a [ResolvedRule],
    /// Where allowed traffic goes on.
    pub then: Stage,
    /// The bridge the network is on.
    pub on: AclBridge,
    /// The port of the host's gateway, if it has one on this bridge.
    pub host_port: Option<Port>,
    /// The network's containers on this host (on shared bridges, only their traffic is
    /// tracked).
    pub local: &'a [&'a Endpoint],
}

/// The kind of bridge a network's ACL is on, which says how its packets are told apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AclBridge {
    /// A bridge of the network's own (nat, nonat): every IPv4 packet is the network's.
    Own,
    /// The overlay bridge: the network's packets carry its VNI (`tun_id`).
    Overlay(u32),
    /// An uplink bridge (flat, vlan): what a container of the network sends (by port) or
    /// is sent (by its MAC and address, classified in `CLASSIFY`) is marked with the
    /// network's zone in register 1.
    Uplink,
}

impl NetworkAcl<'_> {
    /// Whether the network's traffic is tracked and checked at all.
    pub fn active(&self) -> bool {
        !self.rules.is_empty() || self.net.acl_default == Verdict::Deny
    }

    /// The network's IPv4 packets on its bridge.
    fn ip(&self) -> Match {
        let m = Match::any();
        match self.on {
            AclBridge::Own => m.and(Field::Ip),
            AclBridge::Overlay(vni) => m.and(Field::TunId(vni)).and(Field::Ip),
            AclBridge::Uplink => m.and(Field::Reg1(self.zone.into())).and(Field::Ip),
        }
    }

    /// What the network's containers send and are sent, into the tracker (`CONNTRACK`,
    /// and `CLASSIFY` on an uplink bridge).
    fn tracked(&self, base: Cookie) -> Vec<Flow> {
        let track = |mark: bool| {
            let mut a = Vec::new();
            if mark {
                a.push(Action::LoadReg1(self.zone.into()));
            }
            a.push(Action::Ct {
                commit: false,
                mark: None,
                zone: self.zone,
                table: Some(Stage::Policy),
            });
            a
        };
        let ip = || self.ip();
        let to = |ep: &Endpoint| Field::IpDstNet(ep.address.addr().into());
        let mut out = Vec::new();
        match self.on {
            AclBridge::Own => out.push(flow(Stage::Conntrack, 100, base, ip(), &track(false))),
            AclBridge::Overlay(_) => {
                let sent = ip().and(Field::Reg0(1));
                out.push(flow(Stage::Conntrack, 100, base, sent, &track(false)));
                for ep in self.local {
                    let c = Cookie::of(Feature::Endpoint, &ep.id);
                    let m = ip().and(Field::Reg0(0)).and(to(ep));
                    out.push(flow(Stage::Conntrack, 100, c, m, &track(false)));
                }
            }
            AclBridge::Uplink => {
                out.push(flow(Stage::Conntrack, 100, base, ip(), &track(false)));
                for ep in self.local {
                    let c = Cookie::of(Feature::Endpoint, &ep.id);
                    let sent = Match::any()
                        .and(Field::InPort(Port::Named(ep.host_veth())))
                        .and(Field::Ip);
                    out.push(flow(Stage::Conntrack, 90, c, sent, &track(true)));
                    let sent_to = Match::any()
                        .and(Field::EthDst(ep.mac.0))
                        .and(Field::Ip)
                        .and(to(ep));
                    let mark = [
                        Action::LoadReg1(self.zone.into()),
                        Action::Goto(Stage::Mirror),
                    ];
                    out.push(flow(Stage::Classify, 50, c, sent_to, &mark));
                }
            }
        }
        out
    }

    fn allow(&self) -> [Action; 1] {
        [Action::Goto(Stage::Commit)]
    }
}

impl FlowFeature for NetworkAcl<'_> {
    fn name(&self) -> &'static str {
        "acl"
    }

    fn stages(&self) -> &'static [Stage] {
        &[
            Stage::Classify,
            Stage::Conntrack,
            Stage::Policy,
            Stage::Commit,
        ]
    }

    fn flows(&self) -> Vec<Flow> {
        let base = Cookie::of(Feature::AclBase, &self.net.id);
        let on = [Action::Goto(self.then)];
        let mut out = Vec::new();
        if self.on == AclBridge::Own {
            out.push(flow(Stage::Conntrack, 0, base, Match::any(), &on));
        }
        if !self.active() {
            return out;
        }
        let ip = || self.ip();
        let state = |v: u32, m: u32| ip().and(Field::CtState(v | ct::TRK, m | ct::TRK));
        out.extend(self.tracked(base));
        out.extend([
            flow(Stage::Policy, INVALID, base, state(ct::INV, ct::INV), &[]),
            flow(
                Stage::Policy,
                TRACKED,
                base,
                state(ct::EST | ct::RPL, ct::EST | ct::RPL),
                &on,
            ),
            flow(Stage::Policy, TRACKED, base, state(ct::REL, ct::REL), &on),
            flow(
                Stage::Policy,
                2,
                base,
                ip().and(Field::IpDstNet(self.net.gateway.into())),
                &self.allow(),
            ),
            flow(Stage::Policy, 0, base, ip(), &self.allow()),
        ]);
        if let Some(port) = &self.host_port {
            let from_host = ip().and(Field::InPort(port.clone()));
            out.push(flow(Stage::Policy, 3, base, from_host, &self.allow()));
        }
        if let (AclBridge::Own, Some((net6, gw6))) = (self.on, self.net.ipv6) {
            if self.net.acl_default == Verdict::Deny {
                out.extend(isolated_v6(base, net6, gw6, self.then));
            }
        }
        if self.net.acl_default == Verdict::Deny {
            let intra = ip()
                .and(Field::IpSrcNet(self.net.subnet))
                .and(Field::IpDstNet(self.net.subnet));
            out.push(flow(Stage::Policy, 1, base, intra, &[]));
        }
        let allow = self.allow();
        for r in self.rules {
            let c = Cookie::of(Feature::Acl, &r.id);
            let actions: &[Action] = match r.verdict {
                Verdict::Allow => &allow,
                Verdict::Deny => &[],
            };
            for m in matches(r, self.ip()) {
                let m = m.and(Field::CtState(ct::TRK, ct::TRK | ct::RPL));
                out.push(flow(Stage::Policy, r.flow_priority(), c, m, actions));
            }
        }
        let stamped = self.stamp(base, &out);
        out.extend(stamped);
        out
    }
}

impl NetworkAcl<'_> {
    /// The generation of the network's `POLICY` flows in `flows` (a hash of them, never
    /// 0): the flows that commit allowed connections with it (`COMMIT`), and the one that
    /// lets established connections with it pass at the top of `POLICY`.
    fn stamp(&self, base: Cookie, flows: &[Flow]) -> [Flow; 2] {
        let policy = Stage::Policy.table();
        let mut lines: Vec<String> = flows
            .iter()
            .filter(|f| f.table == policy)
            .map(Flow::render)
            .collect();
        lines.sort_unstable();
        let h = fnv1a(lines.iter().flat_map(|l| l.as_bytes()));
        let generation = ((h ^ (h >> 32)) as u32).max(1);
        let commit = [
            Action::Ct {
                commit: true,
                mark: Some(generation),
                zone: self.zone,
                table: None,
            },
            Action::Goto(self.then),
        ];
        let current = self
            .ip()
            .and(Field::CtState(
                ct::TRK | ct::EST,
                ct::TRK | ct::EST | ct::RPL,
            ))
            .and(Field::CtMark(generation));
        [
            flow(Stage::Commit, 0, base, self.ip(), &commit),
            flow(
                Stage::Policy,
                TRACKED,
                base,
                current,
                &[Action::Goto(self.then)],
            ),
        ]
    }
}

/// `acl.default=deny` for IPv6 on a network's own bridge, in `CONNTRACK` (rules match
/// IPv4 only): neighbour discovery and router messages (ICMPv6 133–137) pass, as does what
/// comes from the host or goes to the gateway; between the network's addresses, and between
/// link-local ones, the rest is dropped.
fn isolated_v6(base: Cookie, net6: Ipv6Net, gw6: Ipv6Addr, then: Stage) -> Vec<Flow> {
    let on = [Action::Goto(then)];
    let v6 = || Match::any().and(Field::Ipv6);
    let link_local: Ipv6Net = "fe80::/10".parse().expect("valid prefix");
    let mut out: Vec<Flow> = (133..=137)
        .map(|t| {
            let nd = v6().and(Field::IpProto(58)).and(Field::Icmpv6Type(t));
            flow(Stage::Conntrack, 60, base, nd, &on)
        })
        .collect();
    out.extend([
        flow(
            Stage::Conntrack,
            55,
            base,
            v6().and(Field::InPort(Port::Local)),
            &on,
        ),
        flow(
            Stage::Conntrack,
            55,
            base,
            v6().and(Field::Ipv6DstNet(gw6.into())),
            &on,
        ),
    ]);
    for net in [net6, link_local] {
        let between = v6().and(Field::Ipv6SrcNet(net)).and(Field::Ipv6DstNet(net));
        out.push(flow(Stage::Conntrack, 50, base, between, &[]));
    }
    out
}

/// Every match of a rule within `ip` (the network's IPv4 packets): sources × destinations
/// × protocol and ports.
fn matches(r: &ResolvedRule, ip: Match) -> Vec<Match> {
    let side = |a: &Addresses| -> Vec<Option<ipnet::Ipv4Net>> {
        match a {
            Addresses::Any => vec![None],
            // A /0 is every address: no match at all.
            Addresses::Some(set) => set
                .iter()
                .map(|n| Some(*n).filter(|n| n.prefix_len() > 0))
                .collect(),
        }
    };
    let mut l4: Vec<Vec<Field>> = Vec::new();
    match (r.proto.number(), r.ports.is_empty()) {
        (None, _) => l4.push(vec![]),
        (Some(p), true) => l4.push(vec![Field::IpProto(p)]),
        (Some(p), false) => {
            for range in &r.ports {
                for (v, m) in range.masks() {
                    let port = match r.proto {
                        Proto::Udp => Field::UdpDst(v, m),
                        _ => Field::TcpDst(v, m),
                    };
                    l4.push(vec![Field::IpProto(p), port]);
                }
            }
        }
    }
    let mut out = Vec::new();
    for src in side(&r.from) {
        for dst in side(&r.to) {
            for fields in &l4 {
                let mut m = ip.clone();
                m.0.extend(src.map(Field::IpSrcNet));
                m.0.extend(dst.map(Field::IpDstNet));
                m.0.extend(fields.iter().cloned());
                out.push(m);
            }
        }
    }
    out
}
