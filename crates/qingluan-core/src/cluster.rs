//! Cluster networks: flat, vlan and vxlan networks shared by every host of the cluster store.
//!
//! Keys in the cluster store:
//! - `cluster/networks/<key>`: the definition of a cluster network. Its key is the mode plus
//!   what isolates it (`vxlan-5001`, `vlan-10`), which is also its IPAM routing domain.
//! - `cluster/members/<key>/<host>`: whether a host has the network in its Docker
//!   (`attached`), or removed it there with `docker network rm` (`detached`, so it is not
//!   replicated back). The definition is deleted when the last attached host detaches.
//! - `cluster/endpoints/<host>/<endpoint>`: every endpoint of every host, with its address
//!   and MAC. Endpoints of cluster networks are written inside CreateEndpoint (they locate
//!   containers for tunnels and make `qingluan network rm` safe); endpoints of local
//!   networks are copied in the background, for `qingluan endpoint ls --all`.
//! - `cluster/down/<host>`: when a host was first seen down; after the grace period its
//!   addresses and endpoints are reclaimed.
//! - `cluster/acl/<key>/<rule id>`: an ACL rule of a cluster network, which every host
//!   enforces; it names networks by cluster key and goes with the network's definition.
//! - `cluster/ids/<key>`: the detector's watch of a cluster network, which every host with
//!   the network applies to its own containers; it goes with the network's definition.
//! - `cluster/ids-rules`: the detector's rule set last loaded on any host (when it is small
//!   enough for the store), which every host adopts.
//! - `cluster/connect/<id>`: a group connection of two vxlan networks, by cluster key,
//!   which every host with both networks routes; it goes with either definition. Or of two
//!   containers (kept as typed) one of which is on another host; it goes at `disconnect`.
//!
//! Replication to Docker is planned here as plain data ([`plan_replication`]) and carried
//! out by the daemon through the Engine API, never inside a plugin call.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use qingluan_store::{get_json, list_json, to_json, Compare, Op, Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::model::{Mac, Mode, Network};

/// Store key prefix of cluster network definitions.
pub const NETWORKS: &str = "cluster/networks/";
/// Store key prefix of per-host membership of cluster networks.
pub const MEMBERS: &str = "cluster/members/";
/// Store key prefix of every host's endpoints.
pub const ENDPOINTS: &str = "cluster/endpoints/";
/// Store key prefix of when a host was first seen down.
pub const DOWN: &str = "cluster/down/";
/// Store key prefix of the ACL rules of cluster networks.
pub const ACL: &str = "cluster/acl/";
/// Store key prefix of the group connections of cluster networks.
pub const CONNECT: &str = "cluster/connect/";
/// Store key prefix of the detector's watches of cluster networks.
pub const IDS: &str = "cluster/ids/";
/// Store key of the detector's rule set of the cluster.
pub const IDS_RULES: &str = "cluster/ids-rules";

/// Errors of cluster operations; the text reaches the user.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The same cluster key exists with another definition.
    #[error("{key} already exists{name} with {field} {have}; this definition has {asked}")]
    Conflict {
        key: String,
        name: String,
        field: &'static str,
        have: String,
        asked: String,
    },
    /// `qingluan network rm` while endpoints remain.
    #[error("network {name} still has endpoints: {hosts}; remove those containers first")]
    InUse { name: String, hosts: String },
    /// No cluster network of that name or key.
    #[error("no cluster network named {0:?}")]
    NotFound(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The definition of a cluster network, identical on every host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterNetwork {
    /// The cluster key (`vxlan-5001`).
    pub key: String,
    /// The Docker network name, learnt from the creating host's Docker after the create.
    pub name: Option<String>,
    /// The mode.
    pub mode: Mode,
    /// VLAN ID or VNI.
    pub vni: Option<u32>,
    /// IPv4 subnet.
    pub subnet: Ipv4Net,
    /// IPv4 gateway.
    pub gateway: Ipv4Addr,
    /// `--ip-range`.
    pub ip_range: Option<Ipv4Net>,
    /// The IPAM pool it was carved from or assigned to.
    pub pool: String,
    /// Driver options as given (`-o k=v`).
    pub options: BTreeMap<String, String>,
    /// `--internal`.
    pub internal: bool,
    /// The host that created it first.
    pub created_by: String,
    /// Seconds since the epoch.
    pub created: u64,
}

impl ClusterNetwork {
    /// The first difference that makes `other` a conflicting definition of the same key.
    fn conflict(&self, other: &ClusterNetwork) -> Option<(&'static str, String, String)> {
        let diff = |f, a: String, b: String| (a != b).then_some((f, a, b));
        diff("mode", self.mode.to_string(), other.mode.to_string())
            .or_else(|| diff("subnet", self.subnet.to_string(), other.subnet.to_string()))
            .or_else(|| {
                diff(
                    "gateway",
                    self.gateway.to_string(),
                    other.gateway.to_string(),
                )
            })
            .or_else(|| {
                diff(
                    "internal",
                    self.internal.to_string(),
                    other.internal.to_string(),
                )
            })
            .or_else(|| diff("nat", self.nat().to_string(), other.nat().to_string()))
            .or_else(|| {
                let default = |d: &ClusterNetwork| {
                    crate::acl::default_of(&d.options)
                        .unwrap_or_default()
                        .to_string()
                };
                diff(crate::acl::DEFAULT_KEY, default(self), default(other))
            })
    }

    /// Whether it was created with `--opt nat=true` (options are validated before).
    fn nat(&self) -> bool {
        self.options.get("nat").map(|v| v.trim()) == Some("true")
    }

    /// Name for messages: the Docker name, or the key.
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.key.clone())
    }
}

/// A host's membership of a cluster network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The network's ID in that host's Docker.
    pub docker_id: String,
    /// `false` after `docker network rm` on that host.
    pub attached: bool,
}

/// An endpoint as the cluster sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterEndpoint {
    /// Docker's endpoint ID.
    pub id: String,
    /// The host it lives on.
    pub host: String,
    /// The cluster key of its network, for cluster networks.
    pub network_key: Option<String>,
    /// Its network's ID in that host's Docker.
    pub network_id: String,
    /// The network's mode.
    pub mode: Mode,
    /// IPv4 address with prefix.
    pub address: Ipv4Net,
    /// MAC.
    pub mac: Mac,
    /// Its container once the host learnt it: other hosts resolve ACL selectors with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<crate::model::ContainerRef>,
}

/// Store key of an endpoint.
pub fn endpoint_key(host: &str, id: &str) -> String {
    format!("{ENDPOINTS}{host}/{id}")
}

/// The cluster key of a network of a cluster mode, or `None` for host-local modes.
pub fn network_key(mode: Mode, vni: Option<u32>, subnet: Ipv4Net) -> Option<String> {
    match (mode, vni) {
        (Mode::Vxlan, Some(v)) => Some(format!("vxlan-{v}")),
        (Mode::Vlan, Some(v)) => Some(format!("vlan-{v}")),
        (Mode::Flat, _) => Some(crate::ipam::flat_domain(ipnet::IpNet::V4(subnet))),
        _ => None,
    }
}

/// Records `def` for this host: creates the definition when it is new, joins it when it is
/// the same, refuses a conflicting one. Returns whether the definition was created.
pub async fn declare(
    store: &dyn Store,
    def: &ClusterNetwork,
    host: &str,
    docker_id: &str,
) -> Result<bool, ClusterError> {
    let key = format!("{NETWORKS}{}", def.key);
    let member = Op::Put(
        format!("{MEMBERS}{}/{host}", def.key),
        to_json(&Member {
            docker_id: docker_id.to_string(),
            attached: true,
        }),
    );
    loop {
        match store.get(&key).await? {
            None => {
                let ops = vec![Op::Put(key.clone(), to_json(def)), member.clone()];
                if store
                    .txn(vec![Compare::Absent(key.clone())], ops)
                    .await?
                    .succeeded
                {
                    return Ok(true);
                }
            }
            Some(kv) => {
                let have: ClusterNetwork =
                    serde_json::from_slice(&kv.value).map_err(|e| StoreError::Corrupt {
                        key: key.clone(),
                        reason: e.to_string(),
                    })?;
                if let Some((field, a, b)) = have.conflict(def) {
                    return Err(ClusterError::Conflict {
                        key: def.key.clone(),
                        name: have
                            .name
                            .map(|n| format!(" as network {n}"))
                            .unwrap_or_default(),
                        field,
                        have: a,
                        asked: b,
                    });
                }
                let guard = vec![Compare::ModRevision(key.clone(), kv.mod_revision)];
                if store.txn(guard, vec![member.clone()]).await?.succeeded {
                    return Ok(false);
                }
            }
        }
    }
}

/// Marks this host detached; deletes the definition when no host is attached any more.
/// Returns whether the definition is gone.
pub async fn detach(store: &dyn Store, key: &str, host: &str) -> Result<bool, ClusterError> {
    let mkey = format!("{MEMBERS}{key}/{host}");
    let mut me: Member = match get_json(store, &mkey).await? {
        Some(m) => m,
        None => Member {
            docker_id: String::new(),
            attached: false,
        },
    };
    me.attached = false;
    let others = members(store, key).await?;
    let last = !others.iter().any(|(h, m)| h != host && m.attached);
    let ops = if last {
        let mut ops = vec![
            Op::Delete(format!("{NETWORKS}{key}")),
            Op::DeletePrefix(format!("{MEMBERS}{key}/")),
            Op::DeletePrefix(format!("{ACL}{key}/")),
            Op::Delete(format!("{IDS}{key}")),
        ];
        for c in connections(store).await? {
            if let crate::connect::Pair::Networks(a, b) = &c.pair {
                if a == key || b == key {
                    ops.push(Op::Delete(connect_key(&c)));
                }
            }
        }
        ops
    } else {
        vec![Op::Put(mkey, to_json(&me))]
    };
    store.txn(vec![], ops).await?;
    Ok(last)
}

/// Hosts' memberships of a network.
pub async fn members(store: &dyn Store, key: &str) -> Result<Vec<(String, Member)>, StoreError> {
    let prefix = format!("{MEMBERS}{key}/");
    let mut out = Vec::new();
    for kv in store.list(&prefix).await? {
        if let Ok(m) = serde_json::from_slice::<Member>(&kv.value) {
            out.push((kv.key[prefix.len()..].to_string(), m));
        }
    }
    Ok(out)
}

/// Every cluster network definition.
pub async fn networks(store: &dyn Store) -> Result<Vec<ClusterNetwork>, StoreError> {
    list_json(store, NETWORKS).await
}

/// Store key of an ACL rule of a cluster network (`rule.spec.network` is its key).
pub fn acl_key(rule: &crate::acl::AclRule) -> String {
    format!("{ACL}{}/{}", rule.spec.network, rule.id)
}

/// Every ACL rule of every cluster network.
pub async fn acl_rules(store: &dyn Store) -> Result<Vec<crate::acl::AclRule>, StoreError> {
    list_json(store, ACL).await
}

/// Store key of the detector's watch of a cluster network (`w.network` is its key).
pub fn ids_key(w: &crate::ids::IdsWatch) -> String {
    format!("{IDS}{}", w.network)
}

/// Every watch of a cluster network.
pub async fn ids_watches(store: &dyn Store) -> Result<Vec<crate::ids::IdsWatch>, StoreError> {
    list_json(store, IDS).await
}

/// The rule set of the cluster, if one was published.
pub async fn ids_rules(store: &dyn Store) -> Result<Option<crate::ids::IdsRules>, StoreError> {
    get_json(store, IDS_RULES).await
}

/// Store key of a group connection of the cluster.
pub fn connect_key(c: &crate::connect::Connection) -> String {
    format!("{CONNECT}{}", c.id)
}

/// Every group connection of the cluster.
pub async fn connections(store: &dyn Store) -> Result<Vec<crate::connect::Connection>, StoreError> {
    list_json(store, CONNECT).await
}

/// Every endpoint of every host.
pub async fn endpoints(store: &dyn Store) -> Result<Vec<ClusterEndpoint>, StoreError> {
    list_json(store, ENDPOINTS).await
}

/// The cluster network a name or key designates.
pub async fn find(store: &dyn Store, name: &str) -> Result<ClusterNetwork, ClusterError> {
    networks(store)
        .await?
        .into_iter()
        .find(|n| n.key == name || n.name.as_deref() == Some(name))
        .ok_or_else(|| ClusterError::NotFound(name.to_string()))
}

/// `qingluan network rm`: deletes the definition and memberships, refused while any host
/// has endpoints on it. Hosts then remove it from their Docker.
pub async fn remove(store: &dyn Store, name: &str) -> Result<ClusterNetwork, ClusterError> {
    let net = find(store, name).await?;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for ep in endpoints(store).await? {
        if ep.network_key.as_deref() == Some(net.key.as_str()) {
            *counts.entry(ep.host).or_default() += 1;
        }
    }
    if !counts.is_empty() {
        let hosts: Vec<String> = counts.iter().map(|(h, n)| format!("{h} ({n})")).collect();
        return Err(ClusterError::InUse {
            name: net.label(),
            hosts: hosts.join(", "),
        });
    }
    store
        .txn(
            vec![],
            vec![
                Op::Delete(format!("{NETWORKS}{}", net.key)),
                Op::DeletePrefix(format!("{MEMBERS}{}/", net.key)),
            ],
        )
        .await?;
    Ok(net)
}

/// What the daemon does to this host's Docker so it matches the cluster.
#[derive(Clone, Debug, PartialEq)]
pub enum Replication {
    /// Create the network in Docker (it is new to this host).
    Create(ClusterNetwork),
    /// Remove the network with this Docker ID (the cluster removed it).
    Remove(String),
    /// Ask Docker the name of the network with this ID and record it on the definition.
    LearnName {
        /// The cluster key.
        key: String,
        /// Its ID in this host's Docker.
        docker_id: String,
    },
}

/// The replication steps for this host, from the definitions, this host's memberships and
/// its local networks.
pub fn plan_replication(
    defs: &[ClusterNetwork],
    mine: &BTreeMap<String, Member>,
    local: &[Network],
) -> Vec<Replication> {
    let mut out = Vec::new();
    for def in defs {
        let here = local
            .iter()
            .find(|n| n.cluster.as_deref() == Some(def.key.as_str()));
        match (here, mine.get(&def.key)) {
            (Some(n), _) if def.name.is_none() => out.push(Replication::LearnName {
                key: def.key.clone(),
                docker_id: n.id.clone(),
            }),
            (None, None) if def.name.is_some() => out.push(Replication::Create(def.clone())),
            _ => {}
        }
    }
    for n in local {
        if let Some(key) = &n.cluster {
            if !defs.iter().any(|d| &d.key == key) {
                out.push(Replication::Remove(n.id.clone()));
            }
        }
    }
    out
}

/// Records the Docker name of a definition that has none yet.
pub async fn set_name(store: &dyn Store, key: &str, name: &str) -> Result<(), StoreError> {
    let k = format!("{NETWORKS}{key}");
    let Some(kv) = store.get(&k).await? else {
        return Ok(());
    };
    let Ok(mut def) = serde_json::from_slice::<ClusterNetwork>(&kv.value) else {
        return Ok(());
    };
    if def.name.is_some() {
        return Ok(());
    }
    def.name = Some(name.to_string());
    store
        .txn(
            vec![Compare::ModRevision(k.clone(), kv.mod_revision)],
            vec![Op::Put(k, to_json(&def))],
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use qingluan_store::memory::MemoryStore;

    fn def(subnet: &str) -> ClusterNetwork {
        ClusterNetwork {
            key: "vxlan-5001".into(),
            name: None,
            mode: Mode::Vxlan,
            vni: Some(5001),
            subnet: subnet.parse().unwrap(),
            gateway: "10.243.0.1".parse().unwrap(),
            ip_range: None,
            pool: "vxlan".into(),
            options: BTreeMap::new(),
            internal: false,
            created_by: "h1".into(),
            created: 1,
        }
    }

    #[tokio::test]
    async fn same_definition_joins_and_other_is_refused() {
        let s = MemoryStore::new();
        assert!(declare(&s, &def("10.243.0.0/24"), "h1", "a").await.unwrap());
        assert!(!declare(&s, &def("10.243.0.0/24"), "h2", "b").await.unwrap());
        let e = declare(&s, &def("10.50.0.0/24"), "h3", "c")
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "vxlan-5001 already exists with subnet 10.243.0.0/24; this definition has 10.50.0.0/24"
        );
        let mut nat = def("10.243.0.0/24");
        nat.options.insert("nat".into(), "true".into());
        assert_eq!(
            declare(&s, &nat, "h3", "c").await.unwrap_err().to_string(),
            "vxlan-5001 already exists with nat false; this definition has true"
        );
        assert_eq!(members(&s, "vxlan-5001").await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn last_host_out_removes_the_definition() {
        let s = MemoryStore::new();
        declare(&s, &def("10.243.0.0/24"), "h1", "a").await.unwrap();
        declare(&s, &def("10.243.0.0/24"), "h2", "b").await.unwrap();
        assert!(!detach(&s, "vxlan-5001", "h1").await.unwrap());
        assert_eq!(networks(&s).await.unwrap().len(), 1);
        assert!(detach(&s, "vxlan-5001", "h2").await.unwrap());
        assert!(networks(&s).await.unwrap().is_empty());
        assert!(members(&s, "vxlan-5001").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn removal_is_refused_while_endpoints_remain() {
        let s = MemoryStore::new();
        let mut d = def("10.243.0.0/24");
        d.name = Some("ov1".into());
        declare(&s, &d, "h1", "a").await.unwrap();
        let ep = ClusterEndpoint {
            id: "e1".into(),
            host: "h2".into(),
            network_key: Some("vxlan-5001".into()),
            network_id: "b".into(),
            mode: Mode::Vxlan,
            address: "10.243.0.2/24".parse().unwrap(),
            mac: Mac([2, 0x42, 10, 243, 0, 2]),
            container: None,
        };
        s.txn(
            vec![],
            vec![Op::Put(endpoint_key("h2", "e1"), to_json(&ep))],
        )
        .await
        .unwrap();
        assert_eq!(
            remove(&s, "ov1").await.unwrap_err().to_string(),
            "network ov1 still has endpoints: h2 (1); remove those containers first"
        );
        s.txn(vec![], vec![Op::Delete(endpoint_key("h2", "e1"))])
            .await
            .unwrap();
        remove(&s, "ov1").await.unwrap();
        assert!(networks(&s).await.unwrap().is_empty());
    }
}
