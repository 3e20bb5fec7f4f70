//! `qingluan ids`: the detector's watches (records `ids/watch/<network id>`; a cluster
//! network's in the cluster store, `cluster/ids/<key>`), this host's rule set
//! (`ids/rules/current`, published as `cluster/ids-rules` for the other hosts when small
//! enough), the capture ports of the watched bridges, and IPS quarantines as ACL rules
//! (`ids.rs`). The detector itself runs in the daemon; this is what it reads and writes.

use qingluan_store::{get_json, to_json, Op};
use serde::{Deserialize, Serialize};

use super::{Acl, ServiceError};
use crate::cluster;
use crate::ids::{self, ContainerWatch, IdsError, IdsMode, IdsRules, IdsWatch};
use crate::reconcile::ReconcileError;
use crate::records;

handle! {
    /// The detector's watches, rules and quarantines.
    Ids
}

/// A quarantined container.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Quarantine {
    /// The container's name.
    pub container: String,
    /// The network's ID whose ACL holds it.
    pub network: String,
}

impl Ids {
    /// `qingluan ids enable --network`: watches `network` in `mode` (again: changes the
    /// mode), with `rules` as the new rule set when given; creates the bridge's capture
    /// port. The watch of a cluster network is the cluster's: every host with the network
    /// applies it.
    pub async fn enable(
        &self,
        network: &str,
        mode: IdsMode,
        rules: Option<IdsRules>,
    ) -> Result<IdsWatch, ServiceError> {
        let _g = self.lock.lock().await;
        let net = self.network(network).await?;
        let mut undo = Vec::new();
        if let Some(r) = rules {
            self.store_rules(r, &mut undo).await?;
        }
        let watch = IdsWatch {
            network: net.id.clone(),
            mode,
        };
        if let Some(key) = &net.cluster {
            let shared = IdsWatch {
                network: key.clone(),
                mode,
            };
            let k = cluster::ids_key(&shared);
            let restore = match get_json::<IdsWatch>(&*self.cluster, &k).await? {
                Some(old) => Op::Put(k.clone(), to_json(&old)),
                None => Op::Delete(k.clone()),
            };
            self.cluster
                .txn(vec![], vec![Op::Put(k, to_json(&shared))])
                .await?;
            self.refresh_cluster_intent().await?;
            if let Err(e) = self.ensure_captures().await {
                self.undo_cluster(restore).await;
                self.store.txn(vec![], undo).await?;
                return Err(e);
            }
            if let Err(e) = self.apply_cluster(vec![restore]).await {
                self.store.txn(vec![], undo).await?;
                return Err(e);
            }
            return Ok(watch);
        }
        self.put_watch(&watch, undo).await?;
        Ok(watch)
    }

    /// Stores a watch of this host, creates the capture ports and applies it; on failure
    /// writes `undo` (plus the watch as it was) and applies that.
    async fn put_watch<R: records::Record>(
        &self,
        watch: &R,
        mut undo: Vec<Op>,
    ) -> Result<(), ServiceError> {
        undo.push(match records::get::<R>(&*self.store, watch.id()).await? {
            Some(old) => records::put(&old),
            None => records::delete::<R>(watch.id()),
        });
        self.store.txn(vec![], vec![records::put(watch)]).await?;
        if let Err(e) = self.ensure_captures().await {
            self.store.txn(vec![], undo).await?;
            return Err(e);
        }
        self.apply_or_undo(undo).await
    }

    /// `qingluan ids enable --container`: watches the container named `container` (or
    /// whose ID starts so) on every network it is on here, in `mode`; returns the watch,
    /// which holds its name.
    pub async fn enable_container(
        &self,
        container: &str,
        mode: IdsMode,
        rules: Option<IdsRules>,
    ) -> Result<ContainerWatch, ServiceError> {
        let _g = self.lock.lock().await;
        let endpoints = self.endpoints().await?;
        let Some(c) = endpoints
            .iter()
            .filter_map(|e| e.container.as_ref())
            .find(|c| c.is_named(container))
        else {
            return Err(IdsError::NoContainer(container.to_string()).into());
        };
        let watch = ContainerWatch {
            container: c.name.clone(),
            mode,
        };
        let mut undo = Vec::new();
        if let Some(r) = rules {
            self.store_rules(r, &mut undo).await?;
        }
        self.put_watch(&watch, undo).await?;
        Ok(watch)
    }

    /// `qingluan ids disable --container`: stops watching the container (by name, or ID
    /// prefix while it runs here).
    pub async fn disable_container(&self, container: &str) -> Result<ContainerWatch, ServiceError> {
        let _g = self.lock.lock().await;
        let endpoints = self.endpoints().await?;
        let named = |w: &ContainerWatch| {
            w.container == container
                || endpoints
                    .iter()
                    .filter_map(|e| e.container.as_ref())
                    .any(|c| c.name == w.container && c.is_named(container))
        };
        let Some(watch) = self
            .ids_container_watches()
            .await?
            .into_iter()
            .find(|w| named(w))
        else {
            return Err(IdsError::ContainerNotWatched(container.to_string()).into());
        };
        self.delete_watch(&watch).await?;
        Ok(watch)
    }

    /// Deletes a watch of this host, applies that and removes capture ports no watch needs.
    async fn delete_watch<R: records::Record>(&self, watch: &R) -> Result<(), ServiceError> {
        self.commit(
            vec![records::delete::<R>(watch.id())],
            vec![records::put(watch)],
        )
        .await?;
        self.ensure_captures().await.map(|_| ())
    }

    /// Puts back a cluster watch as it was before a failed `enable` (`restore`).
    async fn undo_cluster(&self, restore: Op) {
        if let Err(e) = self.cluster.txn(vec![], vec![restore]).await {
            tracing::warn!(error = %e, "cannot undo a watch in the cluster store");
        }
        if let Err(e) = self.refresh_cluster_intent().await {
            tracing::warn!(error = %e, "cannot re-read the cluster's watches");
        }
    }

    /// `qingluan ids disable --network`: stops watching `network` (on every host, for a
    /// cluster network).
    pub async fn disable(&self, network: &str) -> Result<IdsWatch, ServiceError> {
        let _g = self.lock.lock().await;
        let net = self.network(network).await?;
        let not_watched = || IdsError::NotWatched(net.short_id().to_string());
        if let Some(key) = &net.cluster {
            let k = format!("{}{key}", cluster::IDS);
            let Some(old) = get_json::<IdsWatch>(&*self.cluster, &k).await? else {
                return Err(not_watched().into());
            };
            self.cluster
                .txn(vec![], vec![Op::Delete(k.clone())])
                .await?;
            self.apply_cluster(vec![Op::Put(k, to_json(&old))]).await?;
            self.ensure_captures().await?;
            return Ok(IdsWatch {
                network: net.id.clone(),
                mode: old.mode,
            });
        }
        let Some(watch) = records::get::<IdsWatch>(&*self.store, &net.id).await? else {
            return Err(not_watched().into());
        };
        self.delete_watch(&watch).await?;
        Ok(watch)
    }

    /// `qingluan ids reload` (and `enable --rules`): stores a rule set the daemon loaded,
    /// and publishes it to the cluster when it fits.
    pub async fn set_rules(&self, rules: IdsRules) -> Result<(), ServiceError> {
        let _g = self.lock.lock().await;
        self.store_rules(rules, &mut Vec::new()).await
    }

    /// Adopts the cluster's rule set as this host's (without publishing it again).
    pub async fn adopt_rules(&self, rules: IdsRules) -> Result<(), ServiceError> {
        let _g = self.lock.lock().await;
        self.store.txn(vec![], vec![records::put(&rules)]).await?;
        Ok(())
    }

    /// Stores `rules` as this host's (pushing the write that restores the old set to
    /// `undo`) and, when no larger than [`SHARED_RULES_MAX`], as the cluster's.
    async fn store_rules(&self, rules: IdsRules, undo: &mut Vec<Op>) -> Result<(), ServiceError> {
        undo.push(match self.rules().await? {
            Some(old) => records::put(&old),
            None => records::delete::<IdsRules>(IdsRules::ID),
        });
        self.store.txn(vec![], vec![records::put(&rules)]).await?;
        let size: usize = rules.files.iter().map(|f| f.text.len()).sum();
        if size <= SHARED_RULES_MAX {
            self.cluster
                .txn(
                    vec![],
                    vec![Op::Put(cluster::IDS_RULES.into(), to_json(&rules))],
                )
                .await?;
            self.refresh_cluster_intent().await?;
        } else {
            tracing::warn!(
                bytes = size,
                "ids: the rule set is too large for the cluster store; it runs on this host only"
            );
        }
        Ok(())
    }

    /// The rule set, if one was ever loaded.
    pub async fn rules(&self) -> Result<Option<IdsRules>, ServiceError> {
        Ok(records::get(&*self.store, IdsRules::ID).await?)
    }

    /// Creates the capture port of every watched bridge that lacks one, and deletes those
    /// of bridges no longer watched; whether it changed anything (the mirrors to a new
    /// port then need a reconcile).
    pub async fn ensure_captures(&self) -> Result<bool, ServiceError> {
        let prefix = &self.settings.prefix;
        let nets = self.networks().await?;
        let bridges = ids::watched_bridges(&self.ids_watches().await?, &nets, prefix);
        let links = &self.reconciler.adapters().links;
        let link_err = |e: qingluan_dataplane::netlink::LinkError| {
            ServiceError::Dataplane(ReconcileError(vec![format!("capture port: {e}")]))
        };
        let wanted: Vec<(String, String)> = bridges
            .iter()
            .map(|b| ids::capture_ports(prefix, b))
            .collect();
        let mut changed = false;
        for (port, reader) in &wanted {
            if links.link(reader).await.map_err(link_err)?.is_some() {
                continue;
            }
            links.delete_link(port).await.map_err(link_err)?;
            links
                .create_veth(port, reader, CAPTURE_MTU, None)
                .await
                .map_err(link_err)?;
            for end in [port, reader] {
                links
                    .sysctl(&format!("net.ipv6.conf.{end}.disable_ipv6"), "1")
                    .await
                    .map_err(link_err)?;
            }
            links.set_up(reader).await.map_err(link_err)?;
            changed = true;
        }
        let existing = links
            .links_with_prefix(&ids::capture_prefix(prefix))
            .await
            .map_err(link_err)?;
        for l in existing {
            if !wanted.iter().any(|(p, r)| *p == l.name || *r == l.name) {
                links.delete_link(&l.name).await.map_err(link_err)?;
                changed = true;
            }
        }
        Ok(changed)
    }

    /// Quarantines `container` (by name) on `network`; whether it was not already.
    pub async fn quarantine(&self, network: &str, container: &str) -> Result<bool, ServiceError> {
        let net = self.network(network).await?;
        if self
            .quarantines()
            .await?
            .iter()
            .any(|q| q.container == container && q.network == net.id)
        {
            return Ok(false);
        }
        let acl = Acl::new(self.s.clone());
        for spec in ids::quarantine_rules(&net, container) {
            match acl.add(spec).await {
                Ok(_)
                | Err(ServiceError::Option(crate::options::OptionError::Acl(
                    crate::acl::AclError::Duplicate(_),
                ))) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// `qingluan ids release`: lifts the quarantines of the container named `container`
    /// (or whose ID starts so, while it runs here); returns them.
    pub async fn release(&self, container: &str) -> Result<Vec<Quarantine>, ServiceError> {
        let endpoints = self.endpoints().await?;
        let names: Vec<&str> = endpoints
            .iter()
            .filter_map(|e| e.container.as_ref())
            .filter(|c| c.is_named(container))
            .map(|c| c.name.as_str())
            .collect();
        let acl = Acl::new(self.s.clone());
        let mut released = Vec::new();
        for (rule, _) in self.enforced_rules().await? {
            let Some(held) = ids::quarantined(&rule.spec) else {
                continue;
            };
            if held != container && !names.contains(&held) {
                continue;
            }
            let q = Quarantine {
                container: held.to_string(),
                network: rule.spec.network.clone(),
            };
            acl.remove(&rule.id).await?;
            if !released.contains(&q) {
                released.push(q);
            }
        }
        if released.is_empty() {
            return Err(IdsError::NotQuarantined(container.to_string()).into());
        }
        Ok(released)
    }

    /// Every quarantined container, once per network.
    pub async fn quarantines(&self) -> Result<Vec<Quarantine>, ServiceError> {
        let mut out: Vec<Quarantine> = self
            .enforced_rules()
            .await?
            .iter()
            .filter_map(|(r, _)| {
                Some(Quarantine {
                    container: ids::quarantined(&r.spec)?.to_string(),
                    network: r.spec.network.clone(),
                })
            })
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// The largest rule set (bytes of rule text) published to the cluster store, below etcd's
/// default request limit of 1.5 MiB.
pub const SHARED_RULES_MAX: usize = 1 << 20;

/// The capture ports' MTU: the largest a veth takes, so that the userspace datapath's
/// segmentation-offloaded frames reach the detector whole.
const CAPTURE_MTU: u32 = 65535;
