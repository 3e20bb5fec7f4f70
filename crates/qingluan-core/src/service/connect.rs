//! `qingluan connect|disconnect`: group connections, applied as links in the host's
//! netfilter and allows in the networks' `POLICY` stage (see `connect.rs`).
//!
//! A connection of two nat networks or two containers of this host is this host's: a
//! record `connect/<id>`. A connection of two vxlan networks is the cluster's: kept by
//! cluster keys in the cluster store (`cluster.rs`) and made by every host with both
//! networks; so is a pair of containers one of which is on another host (kept as typed).
//! Every change is written, then applied, and undone when the dataplane refuses it; a
//! network's connections go with it. A nonat container has no default route: it gets one
//! to each connected network through its gateway, at Join (static routes) and, when it
//! runs already, in its namespace at `connect` (taken out again at `disconnect`); one to
//! the network of each container it is paired with, in its namespace at `connect` and
//! once its container is learnt from the Engine API.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;

use qingluan_dataplane::netlink::Route;
use qingluan_store::{to_json, Op};
use serde::{Deserialize, Serialize};

use super::{short, ServiceError};
use crate::acl::{Scope, World};
use crate::cluster;
use crate::connect::{self, ConnectError, Connection, Pair};
use crate::model::Network;
use crate::records;

handle! {
    /// Group connections.
    Connect
}

/// A connection and where it holds, as `connect`, `disconnect` and `connect ls` answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConnectionRow {
    /// The connection, naming this host's networks.
    #[serde(flatten)]
    pub connection: Connection,
    /// Where it is kept and made.
    pub scope: Scope,
}

impl Connect {
    /// `qingluan connect`: checks and applies `pair`. `names` are the user's words for
    /// both sides, in the order typed, and `network_names` the networks' names by ID, for
    /// messages.
    pub async fn connect(
        &self,
        pair: Pair,
        names: (&str, &str),
        network_names: &BTreeMap<String, String>,
    ) -> Result<ConnectionRow, ServiceError> {
        let _g = self.lock.lock().await;
        let mut keys = None;
        if let Pair::Networks(a, b) = &pair {
            let (na, nb) = (self.network(a).await?, self.network(b).await?);
            let name = |n: &Network| {
                network_names
                    .get(&n.id)
                    .cloned()
                    .unwrap_or_else(|| n.short_id().to_string())
            };
            // Checked in the order typed, so a refusal names the first network at fault.
            let (first, second) = if name(&nb) == names.0 {
                (&nb, &na)
            } else {
                (&na, &nb)
            };
            connect::check_networks(first, second, &name)?;
            keys = na.cluster.clone().zip(nb.cluster.clone());
        }
        let mut shared = None;
        if let Pair::Containers(a, b) = &pair {
            if a == b {
                return Err(ConnectError::Itself(names.0.to_string()).into());
            }
            let endpoints = self.endpoints().await?;
            let here = |n: &str| {
                endpoints
                    .iter()
                    .any(|e| e.container.as_ref().is_some_and(|c| c.is_named(n)))
            };
            if !here(a) || !here(b) {
                shared = Some(pair.clone());
            }
        }
        let exists = ConnectError::Exists(names.0.into(), names.1.into());
        if self
            .enforced_connections()
            .await?
            .iter()
            .any(|(c, _)| c.pair == pair)
        {
            return Err(exists.into());
        }
        if let Some(stored) = keys.map(|(a, b)| Pair::networks(&a, &b)).or(shared) {
            let c = Connection::new(stored);
            let k = cluster::connect_key(&c);
            self.cluster
                .txn(vec![], vec![Op::Put(k.clone(), to_json(&c))])
                .await?;
            self.apply_cluster(vec![Op::Delete(k)]).await?;
            return Ok(ConnectionRow {
                connection: Connection { id: c.id, pair },
                scope: Scope::Cluster,
            });
        }
        let c = Connection::new(pair);
        let before = self.sandbox_routes().await?;
        self.commit(
            vec![records::put(&c)],
            vec![records::delete::<Connection>(&c.id)],
        )
        .await?;
        self.update_sandbox_routes(before).await?;
        Ok(ConnectionRow {
            connection: c,
            scope: Scope::Host,
        })
    }

    /// `qingluan disconnect`: removes the connection of `pair`.
    pub async fn disconnect(
        &self,
        pair: Pair,
        names: (&str, &str),
    ) -> Result<ConnectionRow, ServiceError> {
        let _g = self.lock.lock().await;
        let Some((c, scope)) = self
            .enforced_connections()
            .await?
            .into_iter()
            .find(|(c, _)| c.pair == pair)
        else {
            return Err(ConnectError::Missing(names.0.into(), names.1.into()).into());
        };
        if scope == Scope::Cluster {
            let stored = self
                .cluster_intent()
                .await
                .connections
                .into_iter()
                .find(|s| s.id == c.id)
                .ok_or_else(|| ConnectError::Missing(names.0.into(), names.1.into()))?;
            let k = cluster::connect_key(&stored);
            self.cluster
                .txn(vec![], vec![Op::Delete(k.clone())])
                .await?;
            self.apply_cluster(vec![Op::Put(k, to_json(&stored))])
                .await?;
        } else {
            let before = self.sandbox_routes().await?;
            self.commit(
                vec![records::delete::<Connection>(&c.id)],
                vec![records::put(&c)],
            )
            .await?;
            self.update_sandbox_routes(before).await?;
        }
        Ok(ConnectionRow {
            connection: c,
            scope,
        })
    }

    /// `qingluan connect ls`: every connection this host makes.
    pub async fn list(&self) -> Result<Vec<ConnectionRow>, ServiceError> {
        Ok(self
            .enforced_connections()
            .await?
            .into_iter()
            .map(|(connection, scope)| ConnectionRow { connection, scope })
            .collect())
    }
}

/// The routes the running nonat containers of this host need: by endpoint ID, its
/// sandbox and routes (`connect::routes`).
pub(crate) type SandboxRoutes = BTreeMap<String, (String, BTreeSet<(Ipv4Net, Ipv4Addr)>)>;

impl super::State {
    /// What the running nonat containers of this host need for the connections now, to
    /// take before a change and hand to [`Self::update_sandbox_routes`] after it.
    pub(crate) async fn sandbox_routes(&self) -> Result<SandboxRoutes, ServiceError> {
        let nets = self.networks().await?;
        let endpoints = self.endpoints().await?;
        let connections = self.made_connections().await?;
        let world = World::new(&nets, &endpoints);
        Ok(endpoints
            .iter()
            .filter_map(|ep| {
                let sandbox = ep.sandbox.clone()?;
                let routes = connect::routes(&world, ep, &connections);
                Some((ep.id.clone(), (sandbox, routes.into_iter().collect())))
            })
            .collect())
    }

    /// Brings the running nonat containers' routes from `before` (taken by
    /// [`Self::sandbox_routes`] before a change) to what they need now: adds the new ones
    /// and takes out those no connection needs any more. A container whose namespace
    /// cannot be entered (it is stopping) is only logged: it gets its routes at its next
    /// Join, and its pairs' once its container is learnt again.
    pub(crate) async fn update_sandbox_routes(
        &self,
        before: SandboxRoutes,
    ) -> Result<(), ServiceError> {
        let after = self.sandbox_routes().await?;
        let none = BTreeSet::new();
        let ids: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
        for id in ids {
            let (old, new) = (before.get(id), after.get(id));
            let Some(sandbox) = new.or(old).map(|(s, _)| s) else {
                continue;
            };
            let (old, new) = (old.map_or(&none, |(_, r)| r), new.map_or(&none, |(_, r)| r));
            let changes = new
                .difference(old)
                .map(|r| (r, true))
                .chain(old.difference(new).map(|r| (r, false)));
            for (&(dst, via), add) in changes {
                let route = Route {
                    dst,
                    gateway: Some(via),
                    metric: None,
                };
                let links = &self.reconciler.adapters().links;
                if let Err(e) = links.sandbox_route(Path::new(sandbox), &route, add).await {
                    tracing::warn!(endpoint = %short(id), error = %e,
                        "cannot change the container's route for a connection");
                }
            }
        }
        Ok(())
    }
}
