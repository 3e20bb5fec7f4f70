//! Group connections (the DaoliNet model): `qingluan connect` lets two isolated networks,
//! or just two containers, talk; `disconnect` isolates them again.
//!
//! Two nat networks of this host are connected by routing between their gateways: the
//! host's netfilter accepts what goes from one bridge to the other (before the isolation
//! drops) and does not masquerade it, so each side sees the other's real addresses and ACL
//! rules naming the other network apply. Two vxlan networks with `nat=true` are connected
//! the same way on every host, between the gateway ports each host holds: a container's
//! traffic is routed by its own host, into the other network's local ports or through the
//! tunnel to the host of the destination, whose reply its own host routes back; no
//! container hairpins through a third host. Such a connection is kept in the cluster store
//! by the networks' cluster keys (`cluster.rs`). A container pair is the same, narrowed to the two
//! containers' addresses (between a host-local and a vxlan network it makes nothing, as
//! such networks are not connected); on one network (where `acl.default=deny` may isolate
//! them) it is an allow in each direction in the network's `POLICY` stage. Containers are
//! kept as typed and resolved at every reconcile, like ACL selectors, against this host's
//! containers and those other hosts have on cluster networks. A pair is a record
//! (`connect/<id>`) of this host, or the cluster's when one of its containers is on
//! another host (every host then makes its part).

use std::collections::BTreeMap;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::acl::{Addresses, Proto, Verdict, World};
use crate::model::{Endpoint, Mode, Network};
use crate::pipeline::ResolvedRule;
use crate::policy::Link;

/// Errors of `connect` and `disconnect`; the text reaches the user.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConnectError {
    /// Both sides are the same.
    #[error("cannot connect {0} to itself")]
    Itself(String),
    /// A network on the physical network.
    #[error(
        "network {0} is {1}: its traffic between networks is routed by the physical router, \
         not by qingluan"
    )]
    Physical(String, Mode),
    /// A network without a gateway on the host.
    #[error(
        "network {0} has no gateway on the host ({1}): its containers cannot reach another \
         subnet; connect nat or nonat networks, or vxlan networks with nat=true"
    )]
    NoRoute(String, &'static str),
    /// A host-local network with a cluster network.
    #[error(
        "network {0} is local to this host and {1} spans the cluster: connect two nat or \
         nonat networks, or two vxlan networks"
    )]
    Scopes(String, String),
    /// Overlapping subnets cannot be routed between.
    #[error("networks {0} and {1} have overlapping subnets {2} and {3}")]
    Overlap(String, String, Ipv4Net, Ipv4Net),
    /// Connected already.
    #[error("{0} and {1} are connected already")]
    Exists(String, String),
    /// Not connected.
    #[error("{0} and {1} are not connected")]
    Missing(String, String),
    /// Neither two networks nor two containers.
    #[error("{0} and {1} must be two qingluan networks or two containers")]
    Mixed(String, String),
}

/// What a connection joins.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pair {
    /// Two networks, by ID, in order.
    Networks(String, String),
    /// Two containers, by name or ID as typed, in order.
    Containers(String, String),
}

impl Pair {
    /// The pair of networks `a` and `b`, in a stable order.
    pub fn networks(a: &str, b: &str) -> Pair {
        let (a, b) = if a <= b { (a, b) } else { (b, a) };
        Pair::Networks(a.into(), b.into())
    }

    /// The pair of containers `a` and `b`, in a stable order.
    pub fn containers(a: &str, b: &str) -> Pair {
        let (a, b) = if a <= b { (a, b) } else { (b, a) };
        Pair::Containers(a.into(), b.into())
    }

    /// Its ID: a digest of the pair ([`crate::model::content_id`]).
    pub fn id(&self) -> String {
        crate::model::content_id(self)
    }
}

/// A connection, kept until `disconnect` or one of its networks goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    /// [`Pair::id`].
    pub id: String,
    /// What it joins.
    pub pair: Pair,
}

impl Connection {
    /// The connection of `pair`.
    pub fn new(pair: Pair) -> Connection {
        Connection {
            id: pair.id(),
            pair,
        }
    }
}

/// Refuses networks that cannot be connected: the same one, flat or vlan (routed by the
/// physical router), one without a gateway (`--internal`, vxlan without `nat=true`), a
/// host-local network (nat, nonat) with a vxlan one, or overlapping subnets. `name` gives a network's name for messages.
pub fn check_networks(
    a: &Network,
    b: &Network,
    name: &dyn Fn(&Network) -> String,
) -> Result<(), ConnectError> {
    if a.id == b.id {
        return Err(ConnectError::Itself(name(a)));
    }
    for n in [a, b] {
        match n.mode {
            Mode::Flat | Mode::Vlan => return Err(ConnectError::Physical(name(n), n.mode)),
            Mode::Vxlan if !n.external() => {
                return Err(ConnectError::NoRoute(name(n), "vxlan without nat=true"))
            }
            _ if n.internal => return Err(ConnectError::NoRoute(name(n), "--internal")),
            Mode::Nat | Mode::Nonat | Mode::Vxlan => {}
        }
    }
    if (a.mode == Mode::Vxlan) != (b.mode == Mode::Vxlan) {
        let (local, wide) = if a.mode == Mode::Vxlan {
            (b, a)
        } else {
            (a, b)
        };
        return Err(ConnectError::Scopes(name(local), name(wide)));
    }
    let (x, y) = (a.subnet, b.subnet);
    if x.contains(&y.network()) || y.contains(&x.network()) {
        return Err(ConnectError::Overlap(name(a), name(b), x, y));
    }
    Ok(())
}

/// The static routes the container of `ep`, on a nonat network, needs for `connections`
/// resolved in `world`, through its network's gateway: to each network connected to its
/// own, and to the network of each container it is paired with on another network (the
/// whole subnet, so the route outlives the partner's restart at a new address; the host
/// lets only the pair's addresses through). Other modes route through their default
/// gateway already. A container not yet learnt from the Engine API (at Join) has no pairs.
pub fn routes(
    world: &World<'_>,
    ep: &Endpoint,
    connections: &[Connection],
) -> Vec<(Ipv4Net, std::net::Ipv4Addr)> {
    let Some(net) = world.networks.get(ep.network_id.as_str()) else {
        return Vec::new();
    };
    if net.mode != Mode::Nonat {
        return Vec::new();
    }
    let mut out = Vec::new();
    for c in connections {
        match &c.pair {
            Pair::Networks(a, b) => {
                let other = if *a == net.id {
                    b
                } else if *b == net.id {
                    a
                } else {
                    continue;
                };
                if let Some(n) = world.networks.get(other.as_str()) {
                    out.push((n.subnet, net.gateway));
                }
            }
            Pair::Containers(a, b) => {
                let Some(me) = &ep.container else {
                    continue;
                };
                let other = if me.is_named(a) {
                    b
                } else if me.is_named(b) {
                    a
                } else {
                    continue;
                };
                out.extend(
                    world
                        .addresses_of(other)
                        .into_iter()
                        .filter(|(n, _)| {
                            n.id != net.id && n.mode != Mode::Vxlan && n.host_gateway().is_some()
                        })
                        .map(|(n, _)| (n.subnet, net.gateway)),
                );
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// What connections add to the dataplane: links between host bridges (netfilter), and
/// allows between containers of one network (its `POLICY` stage), by network ID.
#[derive(Debug, Default)]
pub struct Effect {
    /// Links through the host.
    pub links: Vec<Link>,
    /// Implicit rules, by network ID.
    pub rules: BTreeMap<String, Vec<ResolvedRule>>,
}

/// The priority of a container pair's allows: above every user rule (0–1000).
const PAIR_PRIORITY: u16 = 1001;

/// What `connections` add, resolved in `world`.
pub fn effect(world: &World<'_>, connections: &[Connection]) -> Effect {
    let mut out = Effect::default();
    for c in connections {
        match &c.pair {
            Pair::Networks(a, b) => {
                let gateway = |id: &str| world.networks.get(id)?.host_gateway();
                if let (Some(a), Some(b)) = (gateway(a), gateway(b)) {
                    out.links.push(Link {
                        a,
                        b,
                        between: None,
                    });
                }
            }
            Pair::Containers(a, b) => {
                for (na, ia) in world.addresses_of(a) {
                    for (nb, ib) in world.addresses_of(b) {
                        if na.id == nb.id {
                            for (from, to) in [(ia, ib), (ib, ia)] {
                                out.rules
                                    .entry(na.id.clone())
                                    .or_default()
                                    .push(ResolvedRule {
                                        id: c.id.clone(),
                                        priority: PAIR_PRIORITY,
                                        verdict: Verdict::Allow,
                                        from: Addresses::Some([Ipv4Net::from(from)].into()),
                                        to: Addresses::Some([Ipv4Net::from(to)].into()),
                                        proto: Proto::Any,
                                        ports: Vec::new(),
                                    });
                            }
                            continue;
                        }
                        if (na.mode == Mode::Vxlan) != (nb.mode == Mode::Vxlan) {
                            continue;
                        }
                        if let (Some(a), Some(b)) = (na.host_gateway(), nb.host_gateway()) {
                            out.links.push(Link {
                                a,
                                b,
                                between: Some((ia, ib)),
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{ep, net};
    use crate::model::ContainerRef;

    #[test]
    fn only_routable_distinct_networks_connect() {
        let name = |n: &Network| n.id.clone();
        let a = net("a", Mode::Nat, "10.1.0.0/24");
        let b = net("b", Mode::Nat, "10.2.0.0/24");
        assert_eq!(check_networks(&a, &b, &name), Ok(()));
        assert_eq!(
            check_networks(&a, &a, &name),
            Err(ConnectError::Itself("a".into()))
        );
        let flat = net("f", Mode::Flat, "192.168.1.0/24");
        assert_eq!(
            check_networks(&a, &flat, &name),
            Err(ConnectError::Physical("f".into(), Mode::Flat))
        );
        let vx = net("v", Mode::Vxlan, "10.3.0.0/24");
        assert_eq!(
            check_networks(&vx, &a, &name),
            Err(ConnectError::NoRoute("v".into(), "vxlan without nat=true"))
        );
        let mut v1 = vx.clone();
        v1.gateway_port = Some("qlbv".into());
        let mut v2 = net("w2", Mode::Vxlan, "10.6.0.0/24");
        v2.gateway_port = Some("qlbw2".into());
        assert_eq!(check_networks(&v1, &v2, &name), Ok(()));
        assert_eq!(
            check_networks(&v1, &a, &name),
            Err(ConnectError::Scopes("a".into(), "v".into()))
        );
        let mut internal = net("i", Mode::Nat, "10.4.0.0/24");
        internal.internal = true;
        assert_eq!(
            check_networks(&a, &internal, &name),
            Err(ConnectError::NoRoute("i".into(), "--internal"))
        );
        let nonat = net("n", Mode::Nonat, "10.5.0.0/24");
        assert_eq!(check_networks(&a, &nonat, &name), Ok(()));
        assert_eq!(
            check_networks(&nonat, &v1, &name),
            Err(ConnectError::Scopes("n".into(), "v".into()))
        );
        let c = [Connection::new(Pair::networks("a", "n"))];
        let nets = [a.clone(), nonat.clone()];
        let eps = [ep("ea", &a, 2, "ca"), ep("en", &nonat, 2, "cn")];
        let world = World::new(&nets, &eps);
        assert_eq!(
            routes(&world, &eps[1], &c),
            [(a.subnet, nonat.gateway)],
            "a nonat container routes to the connected network through its gateway"
        );
        assert_eq!(
            routes(&world, &eps[0], &c),
            [],
            "a nat container has its default route"
        );
        let wide = net("w", Mode::Nat, "10.0.0.0/8");
        assert!(matches!(
            check_networks(&a, &wide, &name),
            Err(ConnectError::Overlap(..))
        ));
        assert_eq!(Pair::networks("b", "a"), Pair::networks("a", "b"));
        assert_eq!(
            Pair::containers("y", "x").id(),
            Pair::containers("x", "y").id()
        );
    }

    #[test]
    fn pairs_are_allows_on_one_network_and_links_across() {
        let a = net("a", Mode::Nat, "10.1.0.0/24");
        let b = net("b", Mode::Nat, "10.2.0.0/24");
        let nets = [a.clone(), b.clone()];
        let eps = [
            ep("e1", &a, 2, "c1"),
            ep("e2", &a, 3, "c2"),
            ep("e3", &b, 2, "c3"),
        ];
        let world = World::new(&nets, &eps);
        let same = Connection::new(Pair::containers("c1", "c2"));
        let across = Connection::new(Pair::containers("c1", "c3"));
        let nets_link = Connection::new(Pair::networks("a", "b"));
        let e = effect(&world, &[same, across, nets_link]);
        assert_eq!(e.rules["a"].len(), 2, "one allow each way");
        assert_eq!(
            e.links,
            [
                Link {
                    a: "qlba".into(),
                    b: "qlbb".into(),
                    between: Some(("10.1.0.2".parse().unwrap(), "10.2.0.2".parse().unwrap())),
                },
                Link {
                    a: "qlba".into(),
                    b: "qlbb".into(),
                    between: None,
                },
            ]
        );
    }

    #[test]
    fn a_nonat_container_routes_to_its_partners_network() {
        let n = net("n", Mode::Nonat, "10.5.0.0/24");
        let a = net("a", Mode::Nat, "10.1.0.0/24");
        let nets = [n.clone(), a.clone()];
        let eps = [
            ep("e1", &n, 2, "m1"),
            ep("e2", &n, 3, "m2"),
            ep("e3", &a, 2, "m3"),
        ];
        let world = World::new(&nets, &eps);
        let pairs = [
            Connection::new(Pair::containers("m3", "m1")),
            Connection::new(Pair::containers("m1", "m2")),
        ];
        assert_eq!(
            routes(&world, &eps[0], &pairs),
            [(a.subnet, n.gateway)],
            "the partner's network through the own gateway; none for one on the same network"
        );
        assert_eq!(
            routes(&world, &eps[1], &pairs),
            [],
            "m2's partner is beside it"
        );
        assert_eq!(
            routes(&world, &eps[2], &pairs),
            [],
            "a nat container has its default route"
        );
        let mut unlearnt = eps[0].clone();
        unlearnt.container = None;
        assert_eq!(
            routes(&world, &unlearnt, &pairs),
            [],
            "at Join the container is not known yet"
        );
        let both = [pairs[0].clone(), Connection::new(Pair::networks("n", "a"))];
        assert_eq!(
            routes(&world, &eps[0], &both),
            [(a.subnet, n.gateway)],
            "a pair and a connection of the same network need one route"
        );
    }

    #[test]
    fn pairs_reach_containers_of_other_hosts_on_networks_here() {
        let vxlan = |id: &str, subnet: &str, key: &str| Network {
            cluster: Some(key.into()),
            gateway_port: Some(format!("qlg{id}")),
            ..net(id, Mode::Vxlan, subnet)
        };
        let x = vxlan("x", "10.3.0.0/24", "vxlan-1");
        let y = vxlan("y", "10.4.0.0/24", "vxlan-2");
        let n = net("n", Mode::Nat, "10.5.0.0/24");
        let nets = [x.clone(), y.clone(), n.clone()];
        let eps = [ep("e1", &x, 2, "c1"), ep("e2", &n, 2, "c2")];
        let remote = |name: &str, ip: &str, key: &str| crate::desired::RemoteContainer {
            container: ContainerRef {
                id: format!("{name}-id"),
                name: name.into(),
                labels: Default::default(),
            },
            address: ip.parse().unwrap(),
            network: key.into(),
        };
        let view = crate::desired::ClusterView {
            overlay: Default::default(),
            containers: vec![
                remote("r1", "10.3.0.7", "vxlan-1"),
                remote("r2", "10.4.0.8", "vxlan-2"),
                remote("r3", "10.9.0.9", "vxlan-9"),
            ],
        };
        let world = World::new(&nets, &eps).with_remote(&view);
        let pairs = [("c1", "r1"), ("r2", "c1"), ("c2", "r2"), ("c1", "r3")]
            .map(|(a, b)| Connection::new(Pair::containers(a, b)));
        let e = effect(&world, &pairs);
        assert_eq!(e.rules.len(), 1, "{:?}", e.rules);
        assert_eq!(e.rules["x"].len(), 2, "one allow each way on x");
        assert_eq!(
            e.links,
            [Link {
                a: "qlgx".into(),
                b: "qlgy".into(),
                between: Some(("10.3.0.2".parse().unwrap(), "10.4.0.8".parse().unwrap())),
            }],
            "no link from a nat network to a vxlan one, none to a network not here"
        );
    }
}
