//! `qingluan qos set|rm|ls`, and the containers of endpoints as the daemon learns them from
//! the Engine API (their labels are a QoS source).
//!
//! An override is a record of its own (`qos/<network>/<target>`), so it outlives the
//! endpoint: a container's override holds for every endpoint the container gets on that
//! network (restarts, dockerd restarts). Every change is written, then applied, and undone
//! when the dataplane refuses it.

use serde::{Deserialize, Serialize};

use super::{short, ServiceError};
use crate::model::{ContainerRef, Endpoint, Network};
use crate::options::OptionError;
use crate::qos::{self, Effective, QosError, QosOverride, QosSpec, Target};
use crate::records;

handle! {
    /// QoS overrides and what each endpoint gets.
    Qos
}

/// One endpoint's QoS as `qingluan qos ls` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QosRow {
    /// The endpoint.
    pub endpoint: String,
    /// Its network's ID.
    pub network: String,
    /// Its container's ID, once known.
    pub container: Option<String>,
    /// The effective values and their sources.
    pub effective: Effective,
    /// Why the container's QoS labels were ignored, if they were.
    pub label_error: Option<String>,
}

/// An override as `qingluan qos ls` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OverrideRow {
    /// Its network's ID.
    pub network: String,
    /// `network`, `container/<id>` or `endpoint/<id>`.
    pub target: String,
    /// What it sets.
    pub spec: QosSpec,
}

/// What `qingluan qos ls` shows.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QosList {
    /// Every endpoint.
    pub endpoints: Vec<QosRow>,
    /// Every override.
    pub overrides: Vec<OverrideRow>,
}

impl Qos {
    /// `qingluan qos set`: merges `spec` into the override of `target` on network
    /// `network_id` (values it does not give stay as they were) and applies it.
    pub async fn set(
        &self,
        network_id: &str,
        target: &Target,
        spec: &QosSpec,
    ) -> Result<(), ServiceError> {
        if spec.is_empty() {
            return Err(OptionError::from(QosError::Empty(
                "--egress-rate, --ingress-rate, --burst, --priority, --aggregate-rate",
            ))
            .into());
        }
        let _g = self.lock.lock().await;
        let net = self.network(network_id).await?;
        self.check_target(&net, target).await?;
        if spec.aggregate.is_some() {
            match target {
                Target::Network => {}
                _ => {
                    return Err(OptionError::from(QosError::AggregateOfNetwork(
                        "--aggregate-rate".into(),
                    ))
                    .into())
                }
            }
        }
        let id = qos::override_id(&net.id, target);
        let before = records::get::<QosOverride>(&*self.store, &id).await?;
        let merged = before
            .as_ref()
            .map(|o| o.spec.clone())
            .unwrap_or_default()
            .merged(spec);
        merged.check("--burst").map_err(OptionError::from)?;
        let undo = match &before {
            Some(o) => records::put(o),
            None => records::delete::<QosOverride>(&id),
        };
        self.commit(
            vec![records::put(&QosOverride { id, spec: merged })],
            vec![undo],
        )
        .await
    }

    /// `qingluan qos rm`: removes the override of `target`, so the next source applies.
    pub async fn remove(&self, network_id: &str, target: &Target) -> Result<(), ServiceError> {
        let _g = self.lock.lock().await;
        let net = self.network(network_id).await?;
        let id = qos::override_id(&net.id, target);
        let Some(before) = records::get::<QosOverride>(&*self.store, &id).await? else {
            return Err(ServiceError::Invalid(format!(
                "no qos set override for {} on network {}",
                describe(target),
                net.short_id()
            )));
        };
        self.commit(
            vec![records::delete::<QosOverride>(&id)],
            vec![records::put(&before)],
        )
        .await
    }

    /// `qingluan qos ls`: every endpoint's effective QoS and every override.
    pub async fn list(&self) -> Result<QosList, ServiceError> {
        let nets = self.networks_by_id().await?;
        let overrides = self.qos_overrides().await?;
        let mut endpoints = Vec::new();
        for ep in self.endpoints().await? {
            let Some(net) = nets.get(&ep.network_id) else {
                continue;
            };
            endpoints.push(QosRow {
                endpoint: ep.id.clone(),
                network: net.id.clone(),
                container: ep.container.as_ref().map(|c| c.id.clone()),
                effective: qos::of_endpoint(net, &ep, &overrides),
                label_error: qos::labels(&ep).err().map(|e| e.to_string()),
            });
        }
        let overrides = overrides
            .into_iter()
            .filter_map(|(id, spec)| {
                let (network, target) = id.split_once('/')?;
                Some(OverrideRow {
                    network: network.to_string(),
                    target: target.to_string(),
                    spec,
                })
            })
            .collect();
        Ok(QosList {
            endpoints,
            overrides,
        })
    }

    /// Records the container of endpoint `endpoint_id` (learnt from the Engine API) and
    /// applies what its labels and overrides ask for, the ACL rules and connections that
    /// select it, and a nonat container's routes to its pairs' networks (no reconcile when
    /// none of them can change). Nothing happens when it is known already, or the endpoint
    /// is gone.
    pub async fn learn_container(
        &self,
        endpoint_id: &str,
        container: ContainerRef,
    ) -> Result<(), ServiceError> {
        let _g = self.lock.lock().await;
        let Some(ep) = records::get::<Endpoint>(&*self.store, endpoint_id).await? else {
            return Ok(());
        };
        if ep.container.as_ref() == Some(&container) {
            return Ok(());
        }
        if let Err(e) = qos::spec(&container.labels, qos::LABEL_PREFIX) {
            tracing::warn!(endpoint = %short(endpoint_id), container = %container.name,
                container_id = %short(&container.id), error = %e, "container's qos labels ignored");
        }
        let mut learnt = ep.clone();
        learnt.container = Some(container);
        let net = self.network(&ep.network_id).await?;
        if net.cluster.is_some() && ep.conflict.is_none() {
            let key = crate::cluster::endpoint_key(&self.host, &ep.id);
            let rec = qingluan_store::to_json(&self.cluster_endpoint(&net, &learnt));
            if let Err(e) = self
                .cluster
                .txn(vec![], vec![qingluan_store::Op::Put(key, rec)])
                .await
            {
                tracing::warn!(endpoint = %short(endpoint_id), error = %e,
                    "cannot publish the endpoint's container; the cluster agent retries");
            }
        }
        let overrides = self.qos_overrides().await?;
        if qos::of_endpoint(&net, &ep, &overrides) == qos::of_endpoint(&net, &learnt, &overrides)
            && self.enforced_rules().await?.is_empty()
            && self.enforced_connections().await?.is_empty()
        {
            self.store.txn(vec![], vec![records::put(&learnt)]).await?;
            return Ok(());
        }
        let routes = self.sandbox_routes().await?;
        self.commit(vec![records::put(&learnt)], vec![records::put(&ep)])
            .await?;
        self.update_sandbox_routes(routes).await
    }

    /// Deletes the overrides of containers Docker no longer has (`containers` are the IDs it
    /// has) and of endpoints that are gone; returns their IDs.
    pub async fn collect(
        &self,
        containers: &std::collections::BTreeSet<String>,
    ) -> Result<Vec<String>, ServiceError> {
        let _g = self.lock.lock().await;
        let endpoints: std::collections::BTreeSet<String> =
            self.endpoints().await?.into_iter().map(|e| e.id).collect();
        let gone: Vec<QosOverride> = records::list::<QosOverride>(&*self.store)
            .await?
            .into_iter()
            .filter(|o| {
                let target = o.id.split_once('/').map_or("", |(_, t)| t);
                match target.split_once('/') {
                    Some(("container", id)) => !containers.contains(id),
                    Some(("endpoint", id)) => !endpoints.contains(id),
                    _ => false,
                }
            })
            .collect();
        if gone.is_empty() {
            return Ok(Vec::new());
        }
        self.commit(
            gone.iter()
                .map(|o| records::delete::<QosOverride>(&o.id))
                .collect(),
            gone.iter().map(records::put).collect(),
        )
        .await?;
        Ok(gone.into_iter().map(|o| o.id).collect())
    }

    /// Refuses a target that is not on `net`.
    async fn check_target(&self, net: &Network, target: &Target) -> Result<(), ServiceError> {
        let on_net = |ep: &Endpoint| match target {
            Target::Network => true,
            Target::Container(id) => ep.container.as_ref().is_some_and(|c| c.id == *id),
            Target::Endpoint(id) => ep.id == *id,
        };
        let found = matches!(target, Target::Network)
            || self
                .endpoints()
                .await?
                .iter()
                .any(|ep| ep.network_id == net.id && on_net(ep));
        if found {
            return Ok(());
        }
        Err(ServiceError::Invalid(format!(
            "{} is not on network {}",
            describe(target),
            net.short_id()
        )))
    }
}

/// A target as messages name it.
fn describe(target: &Target) -> String {
    match target {
        Target::Network => "the network".into(),
        Target::Container(id) => format!("container {}", short(id)),
        Target::Endpoint(id) => format!("endpoint {}", short(id)),
    }
}
