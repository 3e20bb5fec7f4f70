//! Intrusion detection (`qingluan ids`): which networks the detector watches, the rule set
//! it runs, and the quarantines of IPS mode, as records and plain functions.
//!
//! A watched network, or a watched container on the networks it is on here, is mirrored
//! (`mirror.rs`, the `MIRROR` stage) to a capture port: one
//! veth pair per watched bridge, named from the bridge ([`capture_ports`]), whose bridge
//! end is added to the bridge as a mirror's interface target and whose other end the
//! daemon's detector reads. These mirrors are derived from the watches ([`mirrors`]), never
//! stored, so they come and go with the watches.
//!
//! The rule set is one per host ([`IdsRules`]): the rule files' paths as given and their
//! text as last loaded without a syntax error, so a restart runs the rules that were
//! accepted, and a broken file at `reload` keeps them.
//!
//! IPS mode quarantines a container with ACL rules ([`quarantine_rules`]) marked
//! [`QUARANTINE`]: at priority 1000 it may send to and receive from nothing but its
//! network's gateway (priority 1001). Being ACL rules, quarantines are durable, shown by
//! `acl ls`, and on a cluster network held by every host.

use serde::{Deserialize, Serialize};

use crate::acl::{Proto, RuleSpec, Selector, Verdict};
use crate::mirror::{Mirror, MirrorSpec, Target};
use crate::model::{Endpoint, Network};

/// Errors of `ids` commands; the text reaches the user.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum IdsError {
    /// `ids disable` of a network that is not watched.
    #[error("network {0} is not watched by the detector")]
    NotWatched(String),
    /// `ids release` of a container that is not quarantined.
    #[error("container {0:?} is not quarantined")]
    NotQuarantined(String),
    /// `ids enable --container` of a container without an endpoint here.
    #[error("container {0:?} is on no qingluan network on this host")]
    NoContainer(String),
    /// `ids disable --container` of a container that is not watched.
    #[error("container {0:?} is not watched by the detector")]
    ContainerNotWatched(String),
    /// `--mode` other than ids or ips.
    #[error("invalid mode {0:?}: give ids or ips")]
    BadMode(String),
}

/// What the detector does with a watched network's alerts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdsMode {
    /// Report them.
    #[default]
    Ids,
    /// Report them, and quarantine the source container of a `drop` rule's alert or of an
    /// alert at or above the configured priority.
    Ips,
}

impl std::str::FromStr for IdsMode {
    type Err = IdsError;

    fn from_str(s: &str) -> Result<IdsMode, IdsError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ids" | "" => Ok(IdsMode::Ids),
            "ips" => Ok(IdsMode::Ips),
            _ => Err(IdsError::BadMode(s.to_string())),
        }
    }
}

impl std::fmt::Display for IdsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IdsMode::Ids => "ids",
            IdsMode::Ips => "ips",
        })
    }
}

/// A network the detector watches on this host: record `ids/watch/<network id>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdsWatch {
    /// The network's ID.
    pub network: String,
    /// IDS or IPS.
    pub mode: IdsMode,
}

/// A container the detector watches on this host, on every network it is on here:
/// record `ids/container/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerWatch {
    /// The container's name.
    pub container: String,
    /// IDS or IPS.
    pub mode: IdsMode,
}

/// One rule file as loaded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleFile {
    /// Its path.
    pub path: String,
    /// Its text.
    pub text: String,
}

/// This host's rule set: record `ids/rules/current`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdsRules {
    /// Always [`IdsRules::ID`].
    pub id: String,
    /// The paths (or patterns) as given to `ids enable --rules`, read again by `reload`.
    pub paths: Vec<String>,
    /// The files they named, as last loaded.
    pub files: Vec<RuleFile>,
    /// When they were loaded (seconds since the epoch).
    pub loaded: u64,
}

impl IdsRules {
    /// The ID of the one rule-set record.
    pub const ID: &'static str = "current";
}

/// The note that marks the ACL rules of a quarantine.
pub const QUARANTINE: &str = "ids quarantine";

/// The capture veth pair of a watched bridge: (the end added to the bridge, the end the
/// detector reads).
pub fn capture_ports(prefix: &str, bridge: &str) -> (String, String) {
    let h = qingluan_dataplane::fnv1a(bridge.as_bytes()) & 0xff_ffff;
    (format!("{prefix}idb{h:06x}"), format!("{prefix}idr{h:06x}"))
}

/// The prefix of every capture port's name.
pub fn capture_prefix(prefix: &str) -> String {
    format!("{prefix}id")
}

/// The mirrors that copy the watched networks, and the watched containers on networks not
/// watched as a whole, to their bridges' capture ports.
pub fn mirrors(
    watches: &[IdsWatch],
    containers: &[ContainerWatch],
    nets: &[Network],
    endpoints: &[Endpoint],
    prefix: &str,
) -> Vec<Mirror> {
    let overlay = crate::modes::overlay_bridge(prefix);
    let mirror = |net: &Network, container: Option<&str>| {
        let bridge = crate::mirror::bridge_of(net, &overlay);
        Mirror::new(MirrorSpec {
            network: net.id.clone(),
            to: Target::Interface(capture_ports(prefix, &bridge).0),
            container: container.map(String::from),
        })
    };
    let mut out: Vec<Mirror> = watches
        .iter()
        .filter_map(|w| nets.iter().find(|n| n.id == w.network))
        .map(|net| mirror(net, None))
        .collect();
    for (c, net) in container_networks(containers, nets, endpoints) {
        if !watches.iter().any(|w| w.network == net.id) {
            out.push(mirror(net, Some(&c.container)));
        }
    }
    out
}

/// Each watched container with each network it is on here.
fn container_networks<'a>(
    containers: &'a [ContainerWatch],
    nets: &'a [Network],
    endpoints: &[Endpoint],
) -> Vec<(&'a ContainerWatch, &'a Network)> {
    let mut out = Vec::new();
    for c in containers {
        for net in nets {
            let on = endpoints.iter().any(|e| {
                e.network_id == net.id
                    && e.container.as_ref().is_some_and(|r| r.name == c.container)
            });
            if on {
                out.push((c, net));
            }
        }
    }
    out
}

/// The networks the detector inspects, each with its mode: the watched networks, and the
/// networks of the watched containers (in the container's mode) that are not watched as
/// a whole.
pub fn effective(
    watches: &[IdsWatch],
    containers: &[ContainerWatch],
    nets: &[Network],
    endpoints: &[Endpoint],
) -> Vec<IdsWatch> {
    let mut out = watches.to_vec();
    for (c, net) in container_networks(containers, nets, endpoints) {
        if !out.iter().any(|w| w.network == net.id) {
            out.push(IdsWatch {
                network: net.id.clone(),
                mode: c.mode,
            });
        }
    }
    out
}

/// The bridges that hold the watched networks, each once.
pub fn watched_bridges(watches: &[IdsWatch], nets: &[Network], prefix: &str) -> Vec<String> {
    let overlay = crate::modes::overlay_bridge(prefix);
    let mut out: Vec<String> = watches
        .iter()
        .filter_map(|w| nets.iter().find(|n| n.id == w.network))
        .map(|net| crate::mirror::bridge_of(net, &overlay))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The ACL rules that quarantine `container` (by name) on `net`: nothing to or from it at
/// priority 1000 (above every user allow), but to and from the network's gateway at 1001.
pub fn quarantine_rules(net: &Network, container: &str) -> Vec<RuleSpec> {
    let c = || Selector::Container(container.to_string());
    let gw = || Selector::Cidr(ipnet::Ipv4Net::from(net.gateway));
    let rule = |from: Selector, to: Selector, verdict: Verdict, priority: u16| RuleSpec {
        network: net.id.clone(),
        from,
        to,
        proto: Proto::Any,
        ports: Vec::new(),
        verdict,
        priority,
        note: Some(QUARANTINE.to_string()),
    };
    vec![
        rule(c(), Selector::Any, Verdict::Deny, 1000),
        rule(Selector::Any, c(), Verdict::Deny, 1000),
        rule(c(), gw(), Verdict::Allow, 1001),
        rule(gw(), c(), Verdict::Allow, 1001),
    ]
}

/// The container a quarantine rule holds, if it is one.
pub fn quarantined(spec: &RuleSpec) -> Option<&str> {
    if spec.note.as_deref() != Some(QUARANTINE) {
        return None;
    }
    match (&spec.from, &spec.to) {
        (Selector::Container(c), _) | (_, Selector::Container(c)) => Some(c),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::net;

    #[test]
    fn capture_ports_fit_interface_names_and_differ_by_bridge() {
        let (a, b) = capture_ports("ql", "qlb0123456789ab");
        assert!(a.len() <= 15 && b.len() <= 15, "{a} {b}");
        assert_ne!(a, b);
        assert_ne!(capture_ports("ql", "qlbother").0, a);
        assert!(a.starts_with(&capture_prefix("ql")));
    }

    fn watch(network: &str, mode: IdsMode) -> IdsWatch {
        IdsWatch {
            network: network.into(),
            mode,
        }
    }

    #[test]
    fn mirrors_follow_watches_of_known_networks() {
        let n = net("n1", crate::model::Mode::Nat, "10.9.0.0/24");
        let (w, gone) = (watch("n1", IdsMode::Ips), watch("gone", IdsMode::Ids));
        let m = mirrors(&[w.clone(), gone], &[], std::slice::from_ref(&n), &[], "ql");
        assert_eq!(m.len(), 1);
        assert_eq!(
            m[0].spec.to,
            Target::Interface(capture_ports("ql", &n.bridge()).0)
        );
        assert_eq!(
            watched_bridges(&[w], std::slice::from_ref(&n), "ql"),
            vec![n.bridge()]
        );
    }

    #[test]
    fn a_watched_container_is_mirrored_where_its_network_is_not_watched() {
        let (n, o) = (
            net("n1", crate::model::Mode::Nat, "10.9.0.0/24"),
            net("o1", crate::model::Mode::Nat, "10.8.0.0/24"),
        );
        let eps = [
            crate::fixtures::ep("a", &n, 2, "shop"),
            crate::fixtures::ep("b", &o, 2, "shop"),
            crate::fixtures::ep("c", &o, 3, "other"),
        ];
        let nets = [n.clone(), o.clone()];
        let w = watch("n1", IdsMode::Ids);
        let c = ContainerWatch {
            container: "shop".into(),
            mode: IdsMode::Ips,
        };
        let m = mirrors(
            std::slice::from_ref(&w),
            std::slice::from_ref(&c),
            &nets,
            &eps,
            "ql",
        );
        let specs: Vec<(&str, Option<&str>)> = m
            .iter()
            .map(|m| (m.spec.network.as_str(), m.spec.container.as_deref()))
            .collect();
        assert_eq!(specs, [("n1", None), ("o1", Some("shop"))]);
        let e = effective(&[w], &[c], &nets, &eps);
        let modes: Vec<(&str, IdsMode)> = e.iter().map(|w| (w.network.as_str(), w.mode)).collect();
        assert_eq!(modes, [("n1", IdsMode::Ids), ("o1", IdsMode::Ips)]);
    }

    #[test]
    fn quarantine_denies_all_but_the_gateway() {
        let n = net("n1", crate::model::Mode::Nat, "10.9.0.0/24");
        let rules = quarantine_rules(&n, "web1");
        assert_eq!(rules.len(), 4);
        for r in &rules {
            r.check().unwrap();
            assert_eq!(quarantined(r), Some("web1"));
        }
        let deny = rules.iter().filter(|r| r.verdict == Verdict::Deny);
        assert!(deny.clone().all(|r| r.priority == 1000));
        assert_eq!(deny.count(), 2);
        let mut plain = rules[0].clone();
        plain.note = None;
        assert_eq!(quarantined(&plain), None);
    }

    #[test]
    fn modes_parse() {
        assert_eq!("IPS".parse::<IdsMode>(), Ok(IdsMode::Ips));
        assert_eq!("ids".parse::<IdsMode>(), Ok(IdsMode::Ids));
        assert!("both".parse::<IdsMode>().is_err());
    }
}
