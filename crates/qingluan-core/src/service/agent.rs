//! The background side of cluster mode, run by the daemon every few seconds: it keeps this
//! host's entries in the cluster store true and reclaims what dead hosts held.
//!
//! One pass:
//! 1. **This host's endpoints.** Each endpoint of a cluster network claims its address again
//!    (after a restart or an etcd outage the address may have been reclaimed): taken back
//!    when free, and when another host holds it now the endpoint is marked in conflict and
//!    kept off the network, so no address is ever in use twice. Every endpoint is listed
//!    under `cluster/endpoints/<host>/`; entries of endpoints this host no longer has go.
//! 2. **Leftover addresses.** Container addresses this host holds in cluster subnets that no
//!    endpoint uses (a release lost during an outage) are freed after [`ORPHAN_SECS`].
//! 3. **Dead hosts.** A host whose liveness lease expired is recorded as down with the time;
//!    once down for the grace period, its container addresses, address blocks and endpoint
//!    entries are deleted (compare-and-swap, so an entry the host rewrote meanwhile stays).
//! 4. **What other hosts changed.** Where their overlay endpoints are, and the ACL rules and
//!    connections of cluster networks: the dataplane is re-programmed when they changed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use qingluan_store::{get_json, to_json, Compare, Op};
use serde::{Deserialize, Serialize};

use crate::cluster::{self, ClusterEndpoint, Member, Replication, DOWN, ENDPOINTS, MEMBERS};
use crate::desired::{ClusterView, RemoteContainer};
use crate::ipam::{self, Claim};
use crate::membership;
use crate::model::{self, Endpoint, Mode};
use crate::pipeline::RemoteEndpoint;
use crate::records;

use super::ServiceError;

/// Age after which an address this host holds without an endpoint is freed: far longer
/// than the gap between Docker's RequestAddress and CreateEndpoint.
pub const ORPHAN_SECS: u64 = 120;

/// When a host was first seen down, and whether its holdings were reclaimed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Down {
    /// Seconds since the epoch.
    pub since: u64,
    /// Whether its addresses and endpoints were reclaimed.
    pub reclaimed: bool,
}

/// What a pass changed, for the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterReport {
    /// Endpoints found in conflict (their address is held by another host).
    pub conflicts: Vec<String>,
    /// Addresses freed (leftovers of this host, holdings of dead hosts).
    pub freed: usize,
    /// Hosts whose holdings were reclaimed.
    pub reclaimed: Vec<String>,
    /// Whether other hosts' overlay endpoints changed (the dataplane was re-programmed).
    pub view_changed: bool,
    /// Whether the ACL rules or connections of cluster networks changed (the dataplane was
    /// re-programmed).
    pub intent_changed: bool,
}

impl ClusterReport {
    /// Whether the pass changed anything.
    pub fn is_empty(&self) -> bool {
        *self == ClusterReport::default()
    }
}

handle! {
    /// The cluster agent: this host's entries in the cluster store, dead hosts, the view of
    /// other hosts' overlay endpoints.
    ClusterAgent
}

impl ClusterAgent {
    /// One pass of the cluster agent; `grace_secs` is how long a host may be down before
    /// its addresses are reclaimed.
    pub async fn sync(&self, grace_secs: u64) -> Result<ClusterReport, ServiceError> {
        let mut report = ClusterReport::default();
        self.sync_own_endpoints(&mut report).await?;
        self.reclaim_dead_hosts(grace_secs, &mut report).await?;
        report.view_changed = self.refresh_view().await?;
        report.intent_changed = self.refresh_cluster_intent().await?;
        if report.view_changed || report.intent_changed {
            self.s.sync(false).await?;
        }
        Ok(report)
    }

    /// Re-reads where other live hosts' overlay endpoints are and which containers they
    /// have on cluster networks; whether that changed (a container started or stopped
    /// elsewhere, a host came or went).
    async fn refresh_view(&self) -> Result<bool, ServiceError> {
        let live: BTreeMap<String, Option<IpAddr>> = membership::hosts(&*self.cluster)
            .await?
            .into_iter()
            .filter(|h| h.up && h.host.id != self.host)
            .map(|h| (h.host.id, h.host.underlay_ip))
            .collect();
        let mut view = ClusterView::default();
        for ep in cluster::endpoints(&*self.cluster).await? {
            let (Some(key), Some(vtep)) = (ep.network_key, live.get(&ep.host)) else {
                continue;
            };
            if let Some(container) = ep.container {
                view.containers.push(RemoteContainer {
                    container,
                    address: ep.address.addr(),
                    network: key.clone(),
                });
            }
            let Some(vtep) = vtep.filter(|_| ep.mode == Mode::Vxlan) else {
                continue;
            };
            view.overlay.entry(key).or_default().push(RemoteEndpoint {
                id: ep.id,
                mac: ep.mac,
                ip: ep.address.addr(),
                vtep,
            });
        }
        for eps in view.overlay.values_mut() {
            eps.sort_by(|a, b| a.id.cmp(&b.id));
        }
        view.containers.sort_by(|a, b| {
            (&a.container.id, a.address, &a.network).cmp(&(&b.container.id, b.address, &b.network))
        });
        if *self.view.read().await == view {
            return Ok(false);
        }
        self.save_cluster(super::CLUSTER_VIEW, &view).await;
        *self.view.write().await = view;
        Ok(true)
    }

    async fn sync_own_endpoints(&self, report: &mut ClusterReport) -> Result<(), ServiceError> {
        let _g = self.locked().await;
        let nets = self.networks_by_id().await?;
        let prefix = format!("{ENDPOINTS}{}/", self.host);
        let listed: BTreeMap<String, (Vec<u8>, u64)> = self
            .cluster
            .list(&prefix)
            .await?
            .into_iter()
            .map(|kv| (kv.key, (kv.value, kv.mod_revision)))
            .collect();
        // Addresses this host holds already need no claim: one list instead of a
        // transaction per endpoint every pass.
        let held: BTreeSet<String> = self
            .ipam
            .cluster_addresses()
            .await?
            .into_iter()
            .filter(|(_, a, _)| a.host.as_deref() == Some(self.host.as_str()))
            .map(|(k, _, _)| k)
            .collect();
        let mut keep = BTreeSet::new();
        let mut used: BTreeSet<(String, IpAddr)> = BTreeSet::new();
        let mut changed = false;
        for mut ep in self.endpoints().await? {
            let Some(net) = nets.get(&ep.network_id) else {
                continue;
            };
            if let Some(k) = &net.cluster {
                used.insert((k.clone(), IpAddr::V4(ep.address.addr())));
                let ip = IpAddr::V4(ep.address.addr());
                let subnet = IpNet::V4(net.subnet);
                let holder = if held.contains(&format!("{}{ip}", ipam::addrs_prefix(k, subnet))) {
                    None
                } else {
                    match self.ipam.claim(&ipam::pool_id(k, subnet), ip).await? {
                        Claim::HeldBy(h) => Some(h),
                        Claim::Held | Claim::Taken => None,
                    }
                };
                if holder != ep.conflict {
                    // A compare-and-swap on the record as stored now: a CreateEndpoint,
                    // which takes no call lock, may have removed it again meanwhile.
                    let key = records::key::<Endpoint>(&ep.id);
                    let Some(kv) = self.local_store().get(&key).await? else {
                        continue;
                    };
                    let mut marked: Endpoint = qingluan_store::decode(&kv)?;
                    marked.conflict = holder.clone();
                    let swap = Compare::ModRevision(key, kv.mod_revision);
                    if !self
                        .local_store()
                        .txn(vec![swap], vec![records::put(&marked)])
                        .await?
                        .succeeded
                    {
                        continue;
                    }
                    if let Some(h) = &holder {
                        tracing::error!(endpoint = %ep.short_id(), address = %ep.address, holder = %h,
                            "address was reclaimed and is held by another host: endpoint kept off the network");
                        report.conflicts.push(ep.id.clone());
                    }
                    ep = marked;
                    changed = true;
                }
                if ep.conflict.is_some() {
                    continue;
                }
            }
            let key = cluster::endpoint_key(&self.host, &ep.id);
            let rec = to_json(&self.cluster_endpoint(net, &ep));
            if listed.get(&key).map(|(v, _)| v) != Some(&rec) {
                self.cluster
                    .txn(vec![], vec![Op::Put(key.clone(), rec)])
                    .await?;
            }
            keep.insert(key);
        }
        for (key, (value, _)) in &listed {
            if !keep.contains(key) {
                self.cluster
                    .txn(
                        vec![Compare::Value(key.clone(), value.clone())],
                        vec![Op::Delete(key.clone())],
                    )
                    .await?;
            }
        }
        let now = model::now();
        for (key, addr, value) in self.ipam.cluster_addresses().await? {
            if addr.host.as_deref() != Some(self.host.as_str())
                || now.saturating_sub(addr.since) < ORPHAN_SECS
            {
                continue;
            }
            let domain = domain_of(&key);
            if !used.contains(&(domain.to_string(), addr.ip))
                && self.ipam.forget_if_unchanged(&key, value).await?
            {
                tracing::info!(address = %addr.ip, %domain, "freed an address no endpoint uses");
                report.freed += 1;
            }
        }
        if changed {
            self.s.sync(false).await?;
        }
        Ok(())
    }

    async fn reclaim_dead_hosts(
        &self,
        grace_secs: u64,
        report: &mut ClusterReport,
    ) -> Result<(), ServiceError> {
        let now = model::now();
        for h in membership::hosts(&*self.cluster).await? {
            let id = h.host.id;
            let key = format!("{DOWN}{id}");
            let down: Option<Down> = get_json(&*self.cluster, &key).await?;
            if h.up {
                if down.is_some() {
                    self.cluster.txn(vec![], vec![Op::Delete(key)]).await?;
                }
                continue;
            }
            let Some(mut down) = down else {
                let first = Down {
                    since: now,
                    reclaimed: false,
                };
                self.cluster
                    .txn(
                        vec![Compare::Absent(key.clone())],
                        vec![Op::Put(key, to_json(&first))],
                    )
                    .await?;
                continue;
            };
            if down.reclaimed || now.saturating_sub(down.since) < grace_secs {
                continue;
            }
            for (akey, addr, value) in self.ipam.cluster_addresses().await? {
                if addr.host.as_deref() == Some(id.as_str())
                    && self.ipam.forget_if_unchanged(&akey, value).await?
                {
                    report.freed += 1;
                }
            }
            self.ipam.release_blocks_of(&id).await?;
            for kv in self.cluster.list(&format!("{ENDPOINTS}{id}/")).await? {
                self.cluster
                    .txn(
                        vec![Compare::Value(kv.key.clone(), kv.value)],
                        vec![Op::Delete(kv.key)],
                    )
                    .await?;
            }
            down.reclaimed = true;
            self.cluster
                .txn(vec![], vec![Op::Put(key, to_json(&down))])
                .await?;
            tracing::warn!(host = %id, after_secs = now.saturating_sub(down.since), "reclaimed the addresses of a dead host");
            report.reclaimed.push(id);
        }
        Ok(())
    }

    /// What this host's Docker needs so it matches the cluster's networks. The memberships
    /// are read before the definitions: the last host's detach deletes a definition and its
    /// memberships in one transaction, so read the other way round a host that had left
    /// could see the definition without its own membership, take itself for a new host and
    /// create the removed network again.
    pub async fn replication(&self) -> Result<Vec<Replication>, ServiceError> {
        let members = self.cluster.list(MEMBERS).await?;
        let defs = cluster::networks(&*self.cluster).await?;
        let mut mine: BTreeMap<String, Member> = BTreeMap::new();
        for kv in members {
            let rest = &kv.key[MEMBERS.len()..];
            if let Some((key, host)) = rest.rsplit_once('/') {
                if host == self.host {
                    if let Ok(m) = serde_json::from_slice(&kv.value) {
                        mine.insert(key.to_string(), m);
                    }
                }
            }
        }
        Ok(cluster::plan_replication(
            &defs,
            &mine,
            &self.networks().await?,
        ))
    }

    /// Records the Docker name of a cluster network this host created.
    pub async fn learn_name(&self, key: &str, name: &str) -> Result<(), ServiceError> {
        Ok(cluster::set_name(&*self.cluster, key, name).await?)
    }

    /// Every endpoint of the cluster (`qingluan endpoint ls --all`).
    pub async fn cluster_endpoints(&self) -> Result<Vec<ClusterEndpoint>, ServiceError> {
        Ok(cluster::endpoints(&*self.cluster).await?)
    }

    /// Every cluster network definition with its hosts' memberships.
    pub async fn cluster_networks(
        &self,
    ) -> Result<Vec<(cluster::ClusterNetwork, Vec<(String, Member)>)>, ServiceError> {
        let mut out = Vec::new();
        for def in cluster::networks(&*self.cluster).await? {
            let members = cluster::members(&*self.cluster, &def.key).await?;
            out.push((def, members));
        }
        Ok(out)
    }

    /// `qingluan network rm`: removes a cluster network from every host.
    pub async fn remove_cluster_network(
        &self,
        name: &str,
    ) -> Result<cluster::ClusterNetwork, ServiceError> {
        let def = cluster::remove(&*self.cluster, name).await?;
        self.ipam.drop_domain(&def.key).await?;
        Ok(def)
    }

    /// The tunnel endpoints (underlay addresses) of the live hosts this host has overlay
    /// flows towards.
    pub async fn vteps(&self) -> BTreeSet<IpAddr> {
        self.view
            .read()
            .await
            .overlay
            .values()
            .flatten()
            .map(|r| r.vtep)
            .collect()
    }

    /// Local endpoints kept off their network because another host holds their address.
    pub async fn conflicted(&self) -> Result<Vec<Endpoint>, ServiceError> {
        let mut eps = self.endpoints().await?;
        eps.retain(|e| e.conflict.is_some());
        Ok(eps)
    }
}

/// The routing domain of a cluster address key (`ipam/addrs/<domain>/<cidr>/<ip>`).
fn domain_of(key: &str) -> &str {
    key.strip_prefix(ipam::ADDRS)
        .and_then(|r| r.split('/').next())
        .unwrap_or_default()
}
