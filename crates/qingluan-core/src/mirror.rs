//! Port mirroring (`qingluan mirror add|ls|rm`): a copy of what a network's containers on
//! this host send and receive goes out of a target port on the bridge that holds them (the
//! `MIRROR` stage, `pipeline/mirror.rs`), for an analyzer to read; the mirrored traffic's
//! path and rate do not change.
//!
//! A mirror names its network and its target: `container:<name|id>`, a container on the
//! same network on this host (its port is on that bridge: the network's own for nat and
//! nonat, the uplink bridge for flat and vlan, the overlay bridge for vxlan), or
//! `interface:<name>`, a host interface that qingluan adds to that bridge as a port for as
//! long as the mirror exists. The target is never mirrored into itself. Mirrors are records
//! (`mirror/<id>`) of this host, kept with the target as typed and resolved at every
//! reconcile: while the target container is not running, or the interface does not exist,
//! its mirror copies nothing. A mirror goes with its network.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::model::{Endpoint, Mode, Network};
use crate::pipeline::Watched;

/// Errors of `mirror add` and `mirror rm`; the text reaches the user.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MirrorError {
    /// The target is neither `container:<name>` nor `interface:<name>`.
    #[error("mirror target {0:?}: expected container:<name or id> or interface:<name>")]
    Target(String),
    /// The interface does not exist.
    #[error("no interface {0:?} on this host")]
    NoInterface(String),
    /// The interface is an OVS port already.
    #[error("interface {0:?} is a port of OVS bridge {1} already")]
    InUse(String, String),
    /// The target container has no port on the network here.
    #[error(
        "container {container:?} is not on network {network} on this host: a mirror outputs \
         to a port on the mirrored network's bridge"
    )]
    NotOnNetwork {
        /// The container as typed.
        container: String,
        /// The network's name.
        network: String,
    },
    /// `--container` names no container of the network here.
    #[error("container {container:?} has no endpoint on network {network} on this host")]
    NotWatchable {
        /// The container as typed.
        container: String,
        /// The network's name.
        network: String,
    },
    /// The same mirror exists.
    #[error("mirror {0} already copies this network to this target")]
    Duplicate(String),
    /// No mirror has this ID.
    #[error("no mirror {0:?}")]
    NotFound(String),
    /// Several mirrors' IDs start so.
    #[error("mirror ID {0:?} is ambiguous: give more of it")]
    Ambiguous(String),
}

/// Where a mirror's copies go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// A container on the mirrored network, by name or ID prefix as typed.
    Container(String),
    /// A host interface, added to the network's bridge as a port.
    Interface(String),
}

impl FromStr for Target {
    type Err = MirrorError;

    fn from_str(s: &str) -> Result<Target, MirrorError> {
        match s.split_once(':') {
            Some(("container", c)) if !c.is_empty() => Ok(Target::Container(c.into())),
            Some(("interface", i)) if !i.is_empty() => Ok(Target::Interface(i.into())),
            _ => Err(MirrorError::Target(s.into())),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Container(c) => write!(f, "container:{c}"),
            Target::Interface(i) => write!(f, "interface:{i}"),
        }
    }
}

/// What a mirror copies where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorSpec {
    /// The mirrored network's ID.
    pub network: String,
    /// The target.
    pub to: Target,
    /// Only this container's traffic (by name or ID prefix, as typed); none: every
    /// container of the network here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// A mirror, kept until `mirror rm` or its network goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mirror {
    /// A digest of the spec ([`crate::model::content_id`]).
    pub id: String,
    /// What it copies where.
    #[serde(flatten)]
    pub spec: MirrorSpec,
}

impl Mirror {
    /// The mirror of `spec`.
    pub fn new(spec: MirrorSpec) -> Mirror {
        Mirror {
            id: crate::model::content_id(&spec),
            spec,
        }
    }
}

/// The endpoint of `net` here that a container target names, if its container runs.
pub fn target_endpoint<'a>(
    to: &Target,
    net: &Network,
    endpoints: &'a [Endpoint],
) -> Option<&'a Endpoint> {
    let Target::Container(name) = to else {
        return None;
    };
    endpoints.iter().find(|e| {
        e.network_id == net.id
            && e.conflict.is_none()
            && e.container.as_ref().is_some_and(|c| c.is_named(name))
    })
}

/// The bridge that holds `net`'s container ports.
pub fn bridge_of(net: &Network, overlay: &str) -> String {
    match net.mode {
        Mode::Vxlan => overlay.to_string(),
        _ => net.bridge(),
    }
}

/// Where a mirror copies to now.
pub struct Copying<'a> {
    /// The mirror.
    pub mirror: &'a Mirror,
    /// Its network.
    pub net: &'a Network,
    /// The bridge that holds the network's containers.
    pub bridge: String,
    /// The port the copies go out of.
    pub port: String,
    /// A container target's endpoint (never watched).
    pub target: Option<&'a Endpoint>,
}

/// Where the mirrors copy to now: those whose target container runs here (one of
/// `endpoints`) or whose interface exists (one of `interfaces`).
pub fn copying<'a>(
    mirrors: &'a [Mirror],
    networks: &'a [Network],
    endpoints: &'a [Endpoint],
    interfaces: &BTreeSet<String>,
    overlay: &str,
) -> Vec<Copying<'a>> {
    let mut out = Vec::new();
    for mirror in mirrors {
        let Some(net) = networks.iter().find(|n| n.id == mirror.spec.network) else {
            continue;
        };
        let (port, target) = match &mirror.spec.to {
            Target::Container(_) => match target_endpoint(&mirror.spec.to, net, endpoints) {
                Some(t) => (t.host_veth(), Some(t)),
                None => continue,
            },
            Target::Interface(i) if interfaces.contains(i) => (i.clone(), None),
            Target::Interface(_) => continue,
        };
        out.push(Copying {
            mirror,
            net,
            bridge: bridge_of(net, overlay),
            port,
            target,
        });
    }
    out
}

/// The endpoints `c` copies: its network's here (or only its container's), but its
/// target.
pub fn copied<'a>(c: &Copying<'_>, endpoints: &'a [Endpoint]) -> Vec<&'a Endpoint> {
    endpoints
        .iter()
        .filter(|e| {
            e.network_id == c.net.id
                && e.conflict.is_none()
                && c.target.is_none_or(|t| t.id != e.id)
                && c.mirror
                    .spec
                    .container
                    .as_ref()
                    .is_none_or(|only| e.container.as_ref().is_some_and(|ec| ec.is_named(only)))
        })
        .collect()
}

/// The watched endpoints of every bridge with mirrors that copy now, each with its mirror
/// ports.
pub fn watched<'a>(
    copying: &[Copying<'_>],
    endpoints: &'a [Endpoint],
) -> BTreeMap<String, Vec<Watched<'a>>> {
    let mut out: BTreeMap<String, BTreeMap<&str, Watched<'a>>> = BTreeMap::new();
    for c in copying {
        let bridge = out.entry(c.bridge.clone()).or_default();
        for ep in copied(c, endpoints) {
            let w = bridge.entry(&ep.id).or_insert_with(|| Watched {
                endpoint: ep,
                vni: c.net.vni.filter(|_| c.net.mode == Mode::Vxlan),
                to: Vec::new(),
            });
            if !w.to.contains(&c.port) {
                w.to.push(c.port.clone());
            }
        }
    }
    out.into_iter()
        .map(|(bridge, eps)| (bridge, eps.into_values().collect()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{ep, net};

    fn mirror(network: &str, to: &str) -> Mirror {
        Mirror::new(MirrorSpec {
            network: network.into(),
            to: to.parse().unwrap(),
            container: None,
        })
    }

    #[test]
    fn targets_parse_with_clear_errors() {
        assert_eq!(
            "container:an".parse::<Target>(),
            Ok(Target::Container("an".into()))
        );
        assert_eq!(Target::Container("an".into()).to_string(), "container:an");
        assert_eq!(
            "interface:eth2".parse::<Target>(),
            Ok(Target::Interface("eth2".into()))
        );
        for bad in ["an", "container:", "port:x"] {
            assert_eq!(
                bad.parse::<Target>(),
                Err(MirrorError::Target(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_mirror_watches_its_networks_endpoints_but_not_its_target() {
        let (n, o) = (
            net("n", Mode::Nat, "10.9.0.0/24"),
            net("o", Mode::Nat, "10.8.0.0/24"),
        );
        let v = Network {
            vni: Some(5001),
            ..net("v", Mode::Vxlan, "10.7.0.0/24")
        };
        let nets = [n.clone(), o.clone(), v.clone()];
        let eps = [
            ep("a1", &n, 2, "a"),
            ep("b1", &n, 3, "b"),
            ep("t1", &n, 4, "an"),
            ep("x1", &o, 2, "x"),
            ep("c1", &v, 2, "c"),
            ep("t2", &v, 3, "an2"),
        ];
        let mirrors = [
            mirror("n", "container:an"),
            mirror("n", "container:an"),
            mirror("o", "container:an"),
            mirror("v", "container:an2"),
            mirror("o", "interface:gone0"),
            mirror("o", "interface:tap0"),
        ];
        let interfaces = BTreeSet::from(["tap0".to_string()]);
        let copying = copying(&mirrors, &nets, &eps, &interfaces, "qlov");
        let w = watched(&copying, &eps);
        let on = |bridge: &str| -> Vec<(String, Option<u32>, Vec<String>)> {
            w[bridge]
                .iter()
                .map(|x| (x.endpoint.id.clone(), x.vni, x.to.clone()))
                .collect()
        };
        assert_eq!(
            on("qlbn"),
            [
                ("a1".into(), None, vec!["qlvt1".into()]),
                ("b1".into(), None, vec!["qlvt1".into()]),
            ],
            "the target is not watched, a repeated mirror copies once"
        );
        assert_eq!(
            on("qlbo"),
            [("x1".into(), None, vec!["tap0".into()])],
            "a target not on the network or a missing interface copies nothing"
        );
        assert_eq!(
            on("qlov"),
            [("c1".into(), Some(5001), vec!["qlvt2".into()])]
        );
    }

    #[test]
    fn a_container_mirror_watches_that_container_only() {
        let n = net("n", Mode::Nat, "10.9.0.0/24");
        let eps = [
            ep("a1", &n, 2, "a"),
            ep("b1", &n, 3, "b"),
            ep("t1", &n, 4, "an"),
        ];
        let only_b = Mirror::new(MirrorSpec {
            container: Some("b-i".into()),
            ..mirror("n", "container:an").spec
        });
        assert_ne!(only_b.id, mirror("n", "container:an").id);
        let nets = [n];
        let mirrors = [only_b];
        let copying = copying(&mirrors, &nets, &eps, &BTreeSet::new(), "qlov");
        let w = watched(&copying, &eps);
        let ids: Vec<&str> = w["qlbn"].iter().map(|x| x.endpoint.id.as_str()).collect();
        assert_eq!(ids, ["b1"], "by ID prefix of its container");
    }
}
