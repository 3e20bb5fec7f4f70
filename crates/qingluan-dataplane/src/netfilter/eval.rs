//! Which typed rule of a chain a described IPv4 packet meets first: the conditions nft
//! evaluates, read from the [`Ruleset`] instead of the kernel (`qingluan trace` explains a
//! routed or published packet with it). Rules of dockerd and others are not seen here.

use std::net::Ipv4Addr;

use super::{Cond, Iface, Rule, Ruleset};

/// A packet as netfilter sees it at a chain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Packet {
    /// Input interface.
    pub iif: String,
    /// Output interface (forward and postrouting chains).
    pub oif: Option<String>,
    /// Source address.
    pub src: Option<Ipv4Addr>,
    /// Destination address.
    pub dst: Option<Ipv4Addr>,
    /// `tcp`, `udp` or `icmp`.
    pub proto: String,
    /// TCP or UDP destination port.
    pub dport: Option<u16>,
    /// Part of an established connection.
    pub established: bool,
    /// Its destination was translated.
    pub dnatted: bool,
    /// Its destination is an address of this host.
    pub local_daddr: bool,
}

fn iface(i: &Iface, name: &str) -> bool {
    match i {
        Iface::Is(x) => x == name,
        Iface::IsNot(x) => x != name,
        Iface::Matches(w) => name.starts_with(w.trim_end_matches(['*', '+'])),
    }
}

impl Ruleset {
    fn holds(&self, c: &Cond, p: &Packet) -> bool {
        match c {
            Cond::Iif(i) => iface(i, &p.iif),
            Cond::Oif(i) => p.oif.as_deref().is_some_and(|o| iface(i, o)),
            Cond::Ipv4 => true,
            Cond::IpSaddr(net) => p.src.is_some_and(|s| net.contains(&s)),
            Cond::IpDaddr(a) => p.dst == Some(*a),
            Cond::IpDaddrNot(a) => p.dst.is_some_and(|d| d != *a),
            Cond::IpDaddrGateway => p.dst.is_some_and(|d| self.gateways.contains(&d)),
            Cond::Ip6DaddrNot(_) | Cond::Ip6DaddrGateway => false,
            Cond::LocalDaddr => p.local_daddr,
            Cond::Dport(proto, port) => p.proto == *proto && p.dport == Some(*port),
            Cond::Established => p.established,
            Cond::Dnatted => p.dnatted,
        }
    }

    /// The first rule of `chain` (one of this ruleset's) whose conditions all hold for `p`,
    /// with its position.
    pub fn first_match<'a>(&self, chain: &'a [Rule], p: &Packet) -> Option<(usize, &'a Rule)> {
        chain
            .iter()
            .enumerate()
            .find(|(_, r)| r.when.iter().all(|c| self.holds(c, p)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::Verdict;
    use super::*;

    fn ruleset() -> Ruleset {
        let is = |b: &str| Iface::Is(b.into());
        Ruleset {
            gateways: vec!["10.1.0.1".parse().unwrap(), "10.2.0.1".parse().unwrap()],
            forward: vec![
                Rule {
                    when: vec![
                        Cond::Iif(is("qlb1")),
                        Cond::Oif(Iface::IsNot("qlb1".into())),
                        Cond::Oif(Iface::Matches("qlb*".into())),
                    ],
                    then: Verdict::Drop,
                },
                Rule {
                    when: vec![Cond::Oif(is("qlb2")), Cond::Dnatted],
                    then: Verdict::Accept,
                },
            ],
            dnat: vec![Rule {
                when: vec![Cond::Ipv4, Cond::LocalDaddr, Cond::Dport("tcp", 8080)],
                then: Verdict::Dnat("10.2.0.2".parse().unwrap(), 80),
            }],
            ..Ruleset::default()
        }
    }

    #[test]
    fn the_first_rule_whose_conditions_all_hold_wins() {
        let r = ruleset();
        let between = Packet {
            iif: "qlb1".into(),
            oif: Some("qlb2".into()),
            proto: "icmp".into(),
            ..Packet::default()
        };
        assert_eq!(r.first_match(&r.forward, &between).map(|m| m.0), Some(0));
        let out = Packet {
            oif: Some("eth0".into()),
            ..between.clone()
        };
        assert!(r.first_match(&r.forward, &out).is_none());
        let published = Packet {
            iif: "eth0".into(),
            proto: "tcp".into(),
            dport: Some(8080),
            local_daddr: true,
            ..Packet::default()
        };
        let (_, rule) = r.first_match(&r.dnat, &published).unwrap();
        assert_eq!(rule.then, Verdict::Dnat("10.2.0.2".parse().unwrap(), 80));
        let other_port = Packet {
            dport: Some(8081),
            ..published
        };
        assert!(r.first_match(&r.dnat, &other_port).is_none());
    }
}
