//! `qingluan ids`: the detector's watches (records `ids/watch/<network id>`), this host's
//! rule set (`ids/rules/current`), the capture ports of the watched bridges, and IPS
//! quarantines as ACL rules (`ids.rs`). The detector itself runs in the daemon; this is
//! what it reads and writes.

use serde::{Deserialize, Serialize};

use super::{Acl, ServiceError};
use crate::ids::{self, IdsError, IdsMode, IdsRules, IdsWatch};
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
    /// port.
    pub async fn enable(
        &self,
        network: &str,
        mode: IdsMode,
        rules: Option<IdsRules>,
    ) -> Result<IdsWatch, ServiceError> {
        let _g = self.lock.lock().await;
        let net = self.network(network).await?;
        let watch = IdsWatch {
            network: net.id.clone(),
            mode,
        };
        let mut ops = vec![records::put(&watch)];
        let mut undo = vec![
            match records::get::<IdsWatch>(&*self.store, &net.id).await? {
                Some(old) => records::put(&old),
                None => records::delete::<IdsWatch>(&net.id),
            },
        ];
        if let Some(r) = rules {
            ops.push(records::put(&r));
            undo.push(match self.rules().await? {
                Some(old) => records::put(&old),
                None => records::delete::<IdsRules>(IdsRules::ID),
            });
        }
        self.store.txn(vec![], ops).await?;
        self.ensure_captures().await?;
        self.apply_or_undo(undo).await?;
        Ok(watch)
    }

    /// `qingluan ids disable --network`: stops watching `network`.
    pub async fn disable(&self, network: &str) -> Result<IdsWatch, ServiceError> {
        let _g = self.lock.lock().await;
        let net = self.network(network).await?;
        let Some(watch) = records::get::<IdsWatch>(&*self.store, &net.id).await? else {
            return Err(IdsError::NotWatched(net.short_id().to_string()).into());
        };
        self.commit(
            vec![records::delete::<IdsWatch>(&net.id)],
            vec![records::put(&watch)],
        )
        .await?;
        self.ensure_captures().await?;
        Ok(watch)
    }

    /// `qingluan ids reload` (and `enable --rules`): stores a rule set the daemon loaded.
    pub async fn set_rules(&self, rules: IdsRules) -> Result<(), ServiceError> {
        let _g = self.lock.lock().await;
        self.store.txn(vec![], vec![records::put(&rules)]).await?;
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
                Ok(_) | Err(ServiceError::Option(crate::options::OptionError::Acl(_))) => {}
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

/// The capture ports' MTU: the largest a veth takes, so that the userspace datapath's
/// segmentation-offloaded frames reach the detector whole.
const CAPTURE_MTU: u32 = 65535;
