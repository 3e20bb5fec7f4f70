//! `qingluan mirror add|ls|rm`: port mirrors (`mirror.rs`), records `mirror/<id>` of this
//! host applied in the `MIRROR` stage of the bridge that holds the network's containers.
//! Every change is written, then applied, and undone when the dataplane refuses it; a
//! network's mirrors go with it.

use serde::{Deserialize, Serialize};

use super::ServiceError;
use crate::desired::MIRROR;
use crate::mirror::{self, Mirror, MirrorError, MirrorSpec, Target};
use crate::model::Network;
use crate::records;

handle! {
    /// Port mirrors.
    Mirrors
}

/// A mirror as `mirror ls` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MirrorRow {
    /// The mirror.
    #[serde(flatten)]
    pub mirror: Mirror,
    /// The port its copies go out of, while its target container runs here or its
    /// interface exists.
    pub port: Option<String>,
    /// How many of the network's endpoints here it copies.
    pub watched: usize,
}

impl Mirrors {
    /// `qingluan mirror add`: checks, stores and applies `spec`; `network_name` names the
    /// network in messages.
    pub async fn add(&self, spec: MirrorSpec, network_name: &str) -> Result<Mirror, ServiceError> {
        let _g = self.lock.lock().await;
        let net = self.network(&spec.network).await?;
        if let Some(c) = &spec.container {
            let endpoints = self.endpoints().await?;
            let on = endpoints.iter().any(|e| {
                e.network_id == net.id && e.container.as_ref().is_some_and(|r| r.is_named(c))
            });
            if !on {
                return Err(MirrorError::NotWatchable {
                    container: c.clone(),
                    network: network_name.to_string(),
                }
                .into());
            }
        }
        match &spec.to {
            Target::Container(container) => {
                let endpoints = self.endpoints().await?;
                if mirror::target_endpoint(&spec.to, &net, &endpoints).is_none() {
                    return Err(MirrorError::NotOnNetwork {
                        container: container.clone(),
                        network: network_name.to_string(),
                    }
                    .into());
                }
            }
            Target::Interface(i) => self.check_interface(i, &net).await?,
        }
        let m = Mirror::new(spec);
        if self.mirrors().await?.iter().any(|x| x.id == m.id) {
            return Err(MirrorError::Duplicate(m.id).into());
        }
        self.commit(
            vec![records::put(&m)],
            vec![records::delete::<Mirror>(&m.id)],
        )
        .await?;
        Ok(m)
    }

    /// `qingluan mirror rm`: removes the mirror whose ID starts with `id`; returns it.
    pub async fn remove(&self, id: &str) -> Result<Mirror, ServiceError> {
        let _g = self.lock.lock().await;
        let mut found: Vec<Mirror> = self
            .mirrors()
            .await?
            .into_iter()
            .filter(|m| !id.is_empty() && m.id.starts_with(id))
            .collect();
        let m = match found.len() {
            1 => found.remove(0),
            0 => return Err(MirrorError::NotFound(id.to_string()).into()),
            _ => return Err(MirrorError::Ambiguous(id.to_string()).into()),
        };
        self.commit(
            vec![records::delete::<Mirror>(&m.id)],
            vec![records::put(&m)],
        )
        .await?;
        Ok(m)
    }

    /// `qingluan mirror ls`: every mirror with its port and what it copies now.
    pub async fn list(&self) -> Result<Vec<MirrorRow>, ServiceError> {
        let nets = self.networks().await?;
        let endpoints = self.endpoints().await?;
        let mirrors = self.mirrors().await?;
        let interfaces = self.mirror_interfaces().await?;
        let overlay = crate::modes::overlay_bridge(&self.settings.prefix);
        let copying = mirror::copying(&mirrors, &nets, &endpoints, &interfaces, &overlay);
        Ok(mirrors
            .iter()
            .map(|m| {
                let c = copying.iter().find(|c| c.mirror.id == m.id);
                MirrorRow {
                    mirror: m.clone(),
                    port: c.map(|c| c.port.clone()),
                    watched: c.map_or(0, |c| mirror::copied(c, &endpoints).len()),
                }
            })
            .collect())
    }

    /// Refuses an interface that does not exist, or that is a port of OVS already (but for
    /// another mirror's port on the bridge of `net`).
    async fn check_interface(&self, iface: &str, net: &Network) -> Result<(), ServiceError> {
        let a = self.reconciler.adapters();
        let found = a.links.link(iface).await;
        if found
            .map_err(|e| dataplane(format!("interface {iface}: {e}")))?
            .is_none()
        {
            return Err(MirrorError::NoInterface(iface.to_string()).into());
        }
        let overlay = crate::modes::overlay_bridge(&self.settings.prefix);
        let bridge = mirror::bridge_of(net, &overlay);
        let bridges = a
            .ovs
            .snapshot()
            .await
            .map_err(|e| dataplane(format!("OVS: {e}")))?;
        for b in bridges {
            let taken = b.ports.iter().find(|p| p.spec.name == iface);
            if let Some(p) = taken {
                let ours = b.spec.name == bridge && p.spec.external_ids.contains_key(MIRROR);
                if !ours {
                    return Err(MirrorError::InUse(iface.to_string(), b.spec.name).into());
                }
            }
        }
        Ok(())
    }
}

/// A failure to read the dataplane.
fn dataplane(e: String) -> ServiceError {
    ServiceError::Dataplane(crate::reconcile::ReconcileError(vec![e]))
}

impl From<MirrorError> for ServiceError {
    fn from(e: MirrorError) -> ServiceError {
        ServiceError::Mirror(e)
    }
}
