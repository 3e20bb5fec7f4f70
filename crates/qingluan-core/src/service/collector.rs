//! Clean-up of what Docker forgot or a crash left: endpoints, networks, addresses, subnets.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use qingluan_store::Op;

use super::{address_pool, Networks, ServiceError};
use crate::cluster;
use crate::model::{self, Endpoint};
use crate::records;

handle! {
    /// Clean-up of what Docker forgot or a crash left.
    Collector
}

impl Collector {
    /// Removes endpoints Docker does not know (`known` maps each of our networks Docker lists
    /// to the endpoint IDs it reports) that are older than `grace_secs`,
    /// releasing their addresses: the clean-up for endpoints Docker forgot (a killed dockerd
    /// never sends DeleteEndpoint). Returns the removed endpoint IDs.
    pub async fn endpoints(
        &self,
        known: &BTreeMap<String, BTreeSet<String>>,
        grace_secs: u64,
    ) -> Result<Vec<String>, ServiceError> {
        let _g = self.lock.lock().await;
        let now = model::now();
        let nets = self.s.networks_by_id().await?;
        let mut removed = Vec::new();
        for ep in self.s.endpoints().await? {
            let Some(listed) = known.get(&ep.network_id) else {
                continue;
            };
            if listed.contains(&ep.id) || now.saturating_sub(ep.created) < grace_secs {
                continue;
            }
            if let Some(net) = nets.get(&ep.network_id) {
                let ip = IpAddr::V4(ep.address.addr());
                self.ipam
                    .release_for(&address_pool(net), ip, &ep.id, ep.created)
                    .await?;
            }
            self.store
                .txn(vec![], vec![records::delete::<Endpoint>(&ep.id)])
                .await?;
            self.settling.lock().expect("settling lock").remove(&ep.id);
            let ckey = cluster::endpoint_key(&self.host, &ep.id);
            if let Err(e) = self.cluster.txn(vec![], vec![Op::Delete(ckey)]).await {
                tracing::warn!(error = %e, "cluster record stays until the store is back");
            }
            removed.push(ep.id);
        }
        if !removed.is_empty() {
            self.sync(false).await?;
        }
        Ok(removed)
    }

    /// Removes this host's own networks (nat, nonat) that Docker does not list (`known`
    /// holds the IDs of every network of ours it has) and that are older than
    /// `grace_secs`, releasing their subnets: a CreateNetwork committed just before the
    /// daemon died, which Docker then saw fail. Returns their IDs.
    pub async fn networks(
        &self,
        known: &BTreeMap<String, BTreeSet<String>>,
        grace_secs: u64,
    ) -> Result<Vec<String>, ServiceError> {
        let now = model::now();
        let mut removed = Vec::new();
        for net in self.s.networks().await? {
            if net.cluster.is_some()
                || known.contains_key(&net.id)
                || now.saturating_sub(net.created) < grace_secs
            {
                continue;
            }
            Networks::new(self.s.clone()).delete(&net.id).await?;
            self.ipam.release_pool(&address_pool(&net)).await?;
            if let Some((v6, _)) = net.ipv6 {
                self.ipam
                    .release_pool(&crate::ipam::pool_id("host", IpNet::V6(v6)))
                    .await?;
            }
            removed.push(net.id);
        }
        Ok(removed)
    }

    /// Releases addresses of this host's networks that Docker requested but no endpoint
    /// got (the daemon died before answering), once older than `grace_secs`.
    pub async fn addresses(&self, grace_secs: u64) -> Result<usize, ServiceError> {
        let _g = self.lock.lock().await;
        let eps = self.s.endpoints().await?;
        let mut freed = 0;
        for net in self
            .s
            .networks()
            .await?
            .iter()
            .filter(|n| n.cluster.is_none())
        {
            let used = eps
                .iter()
                .filter(|e| e.network_id == net.id)
                .map(|e| IpAddr::V4(e.address.addr()))
                .collect();
            freed += self
                .ipam
                .collect_addresses(&address_pool(net), &used, grace_secs)
                .await?
                .len();
        }
        Ok(freed)
    }

    /// Releases this host's subnets that neither Docker (`docker_subnets`: the subnets of
    /// every network whose IPAM driver is ours) nor any of our networks uses, once older
    /// than `grace_secs`. Returns them.
    pub async fn subnets(
        &self,
        docker_subnets: &BTreeSet<IpNet>,
        grace_secs: u64,
    ) -> Result<Vec<IpNet>, ServiceError> {
        let _g = self.lock.lock().await;
        let mut in_use = docker_subnets.clone();
        for n in self.s.networks().await? {
            in_use.insert(IpNet::V4(n.subnet));
            if let Some((v6, _)) = n.ipv6 {
                in_use.insert(IpNet::V6(v6));
            }
        }
        Ok(self.ipam.collect_subnets(&in_use, grace_secs).await?)
    }
}
