//! `qingluan mirror add|ls|rm`: port mirrors (`mirror.rs`), records `mirror/<id>` of this
//! host applied in the `MIRROR` stage of the bridge that holds the network's containers.
//! Every change is written, then applied, and undone when the dataplane refuses it; a
//! network's mirrors go with it.

use serde::{Deserialize, Serialize};

use super::ServiceError;
use crate::mirror::{self, Mirror, MirrorError, MirrorSpec};
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
    /// The port its copies go out of, while its target runs here.
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
        let endpoints = self.endpoints().await?;
        if mirror::target_endpoint(&spec.to, &net, &endpoints).is_none() {
            let mirror::Target::Container(container) = spec.to.clone();
            return Err(MirrorError::NotOnNetwork {
                container,
                network: network_name.to_string(),
            }
            .into());
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
        let mut rows = Vec::new();
        for m in self.mirrors().await? {
            let net = nets.iter().find(|n| n.id == m.spec.network);
            let target = net.and_then(|n| mirror::target_endpoint(&m.spec.to, n, &endpoints));
            let watched = match (net, target) {
                (Some(n), Some(t)) => endpoints
                    .iter()
                    .filter(|e| e.network_id == n.id && e.id != t.id && e.conflict.is_none())
                    .count(),
                _ => 0,
            };
            rows.push(MirrorRow {
                port: target.map(|t| t.host_veth()),
                watched,
                mirror: m,
            });
        }
        Ok(rows)
    }
}

impl From<MirrorError> for ServiceError {
    fn from(e: MirrorError) -> ServiceError {
        ServiceError::Mirror(e)
    }
}
