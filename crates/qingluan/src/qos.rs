//! `qingluan qos set|rm|ls`: the routes (`/v1/qos`) and the command.
//!
//! The daemon resolves what the user typed: a container (name or ID prefix, through the
//! Engine API), else an endpoint (ID prefix), on `--network` (Docker name or ID prefix)
//! or on the one qingluan network the container is on. A container it resolves is recorded
//! with its endpoint right away, so an override applies even before the background
//! learning (`containers.rs`) got to it.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use qingluan_core::model::head;
use qingluan_core::qos::{Bytes, Priority, QosSpec, Rate, Sourced, Target};
use qingluan_core::service::QosList;
use serde::{Deserialize, Serialize};

use crate::api::{bad, service, Api, ApiError};
use crate::cli::Client;

/// A `qos set` or `qos rm` request, as typed.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct QosRequest {
    /// Container name or ID (prefix), or endpoint ID (prefix); none: the network itself.
    pub target: Option<String>,
    /// Network name or ID (prefix).
    pub network: Option<String>,
    /// `--egress-rate`.
    pub egress_rate: Option<String>,
    /// `--ingress-rate`.
    pub ingress_rate: Option<String>,
    /// `--burst`.
    pub burst: Option<String>,
    /// `--priority`.
    pub priority: Option<String>,
    /// `--aggregate-rate`.
    pub aggregate_rate: Option<String>,
}

/// `qos ls` with the names Docker gives networks and containers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QosView {
    /// Endpoints and overrides.
    #[serde(flatten)]
    pub list: QosList,
    /// Network names by ID.
    pub network_names: BTreeMap<String, String>,
    /// Container names by ID.
    pub container_names: BTreeMap<String, String>,
    /// Networks' own `--opt qos.*`, by ID.
    pub network_defaults: BTreeMap<String, QosSpec>,
}

/// The request's values, checked.
fn spec(r: &QosRequest) -> Result<QosSpec, ApiError> {
    let rate = |key: &str, v: &Option<String>| v.as_deref().map(|v| Rate::parse(key, v));
    Ok(QosSpec {
        egress: rate("--egress-rate", &r.egress_rate)
            .transpose()
            .map_err(bad)?,
        ingress: rate("--ingress-rate", &r.ingress_rate)
            .transpose()
            .map_err(bad)?,
        burst: r
            .burst
            .as_deref()
            .map(|v| Bytes::parse("--burst", v))
            .transpose()
            .map_err(bad)?,
        priority: r
            .priority
            .as_deref()
            .map(str::parse::<Priority>)
            .transpose()
            .map_err(bad)?,
        aggregate: rate("--aggregate-rate", &r.aggregate_rate)
            .transpose()
            .map_err(bad)?,
    })
}

use crate::api::names_id;

/// The network and target a request names.
async fn resolve(api: &Api, r: &QosRequest) -> Result<(String, Target), ApiError> {
    let state = &api.driver.state;
    let docker = crate::docker::networks(&api.docker, &state.settings.docker_driver())
        .await
        .map_err(|e| bad(format!("cannot ask Docker for names: {e}")))?;
    let network = match &r.network {
        None => None,
        Some(n) => Some(crate::api::network_named(api, n).await?),
    };
    let Some(t) = &r.target else {
        return match network {
            Some(n) => Ok((n, Target::Network)),
            None => Err(bad("give a container, an endpoint or --network")),
        };
    };
    let on = |net: &str| network.as_deref().is_none_or(|n| n == net);
    // Containers (by name or ID prefix) on our networks: (network, endpoint, container).
    let mut found: Vec<(String, String, String)> = Vec::new();
    for (nid, n) in &docker {
        for (ep, c) in &n.containers {
            if c.name == *t || names_id(&c.id, t) {
                found.push((nid.clone(), ep.clone(), c.id.clone()));
            }
        }
    }
    let containers: std::collections::BTreeSet<&str> =
        found.iter().map(|(_, _, c)| c.as_str()).collect();
    if containers.len() > 1 {
        return Err(bad(format!(
            "container {t:?} is ambiguous: give more of its ID"
        )));
    }
    if let Some(cid) = containers.into_iter().next() {
        let here: Vec<&(String, String, String)> = found.iter().filter(|f| on(&f.0)).collect();
        let names = |v: &[&(String, String, String)]| {
            let mut names: Vec<String> = v
                .iter()
                .map(|f| {
                    docker
                        .get(&f.0)
                        .map_or(head(&f.0, 12), |d| &d.name)
                        .to_string()
                })
                .collect();
            names.sort();
            names.join(", ")
        };
        let (nid, ep, _) = match here.as_slice() {
            [one] => *one,
            [] => {
                return Err(bad(format!(
                    "container {t} is not on network {}",
                    r.network.as_deref().unwrap_or_default()
                )))
            }
            many => {
                return Err(bad(format!(
                    "container {t} is on several qingluan networks ({}): give --network",
                    names(many)
                )))
            }
        };
        let container = crate::docker::container(&api.docker, cid)
            .await
            .map_err(|e| bad(format!("cannot inspect container {t}: {e}")))?;
        api.driver
            .qos
            .learn_container(ep, container)
            .await
            .map_err(service)?;
        return Ok((nid.clone(), Target::Container(cid.to_string())));
    }
    let eps = state.endpoints().await.map_err(service)?;
    let matching: Vec<_> = eps
        .iter()
        .filter(|e| names_id(&e.id, t) && on(&e.network_id))
        .collect();
    match matching.as_slice() {
        [one] => Ok((one.network_id.clone(), Target::Endpoint(one.id.clone()))),
        [] => Err(bad(format!(
            "no container or endpoint {t:?} on {}",
            r.network
                .as_deref()
                .map_or("a qingluan network".to_string(), |n| format!("network {n}"))
        ))),
        _ => Err(bad(format!(
            "endpoint {t:?} is ambiguous: give more of its ID"
        ))),
    }
}

/// `POST /v1/qos`: `qos set`.
pub async fn set(
    State(api): State<Api>,
    Json(r): Json<QosRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let spec = spec(&r)?;
    let (net, target) = resolve(&api, &r).await?;
    api.driver
        .qos
        .set(&net, &target, &spec)
        .await
        .map_err(service)?;
    Ok(Json(serde_json::json!({})))
}

/// `DELETE /v1/qos`: `qos rm`.
pub async fn remove(
    State(api): State<Api>,
    Json(r): Json<QosRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (net, target) = resolve(&api, &r).await?;
    api.driver
        .qos
        .remove(&net, &target)
        .await
        .map_err(service)?;
    Ok(Json(serde_json::json!({})))
}

/// `GET /v1/qos`: `qos ls`.
pub async fn list(State(api): State<Api>) -> Result<Json<QosView>, ApiError> {
    let list: QosList = api.driver.qos.list().await.map_err(service)?;
    let names = crate::docker::networks(&api.docker, &api.driver.state.settings.docker_driver())
        .await
        .unwrap_or_default();
    let nets = api.driver.state.networks().await.map_err(service)?;
    Ok(Json(QosView {
        list,
        network_names: names
            .iter()
            .map(|(id, n)| (id.clone(), n.name.clone()))
            .collect(),
        container_names: names
            .values()
            .flat_map(|n| n.containers.values())
            .map(|c| (c.id.clone(), c.name.clone()))
            .collect(),
        network_defaults: nets
            .into_iter()
            .filter(|n| !n.qos.is_empty())
            .map(|n| (n.id, n.qos))
            .collect(),
    }))
}

/// A value and its source as `qos ls` prints it: `10mbit (driver-opt)`, or `-`.
fn shown<T: std::fmt::Display>(v: &Option<Sourced<T>>) -> String {
    match v {
        Some(s) => format!("{} ({})", s.value, s.source),
        None => "-".into(),
    }
}

impl Client {
    /// `qingluan qos set`.
    pub async fn qos_set(&self, r: &QosRequest) -> anyhow::Result<()> {
        self.call("POST", "/v1/qos", Some(serde_json::to_vec(r)?))
            .await?;
        Ok(())
    }

    /// `qingluan qos rm`.
    pub async fn qos_rm(&self, r: &QosRequest) -> anyhow::Result<()> {
        self.call("DELETE", "/v1/qos", Some(serde_json::to_vec(r)?))
            .await?;
        Ok(())
    }

    /// `qingluan qos ls`.
    pub async fn qos_ls(&self, network: Option<&str>) -> anyhow::Result<()> {
        let (view, raw): (QosView, _) = self.get("/v1/qos").await?;
        if self.json {
            self.print_json(&raw);
            return Ok(());
        }
        let list = &view.list;
        let net_name = |id: &str| {
            view.network_names
                .get(id)
                .cloned()
                .unwrap_or_else(|| head(id, 12).to_string())
        };
        let wanted = |id: &str| network.is_none_or(|n| net_name(id) == n || names_id(id, n));
        println!(
            "{:<16} {:<20} {:<13} {:<22} {:<22} {:<18} {:<18}",
            "NETWORK", "CONTAINER", "ENDPOINT", "EGRESS", "INGRESS", "BURST", "PRIORITY"
        );
        for row in list.endpoints.iter().filter(|r| wanted(&r.network)) {
            let container = row
                .container
                .as_ref()
                .map(|c| {
                    view.container_names
                        .get(c)
                        .cloned()
                        .unwrap_or_else(|| head(c, 12).to_string())
                })
                .unwrap_or_else(|| "-".into());
            let e = &row.effective;
            println!(
                "{:<16} {:<20} {:<13} {:<22} {:<22} {:<18} {:<18}",
                net_name(&row.network),
                container,
                head(&row.endpoint, 12),
                shown(&e.egress),
                shown(&e.ingress),
                shown(&e.burst),
                shown(&e.priority),
            );
            if let Some(err) = &row.label_error {
                println!("  labels ignored: {err}");
            }
        }
        let mut lines = Vec::new();
        for (id, s) in view.network_defaults.iter().filter(|(id, _)| wanted(id)) {
            lines.push(format!("{}: network --opt {}", net_name(id), describe(s)));
        }
        for o in list.overrides.iter().filter(|o| wanted(&o.network)) {
            let target = match o.target.split_once('/') {
                Some(("container", id)) => view
                    .container_names
                    .get(id)
                    .cloned()
                    .unwrap_or_else(|| format!("container {}", head(id, 12))),
                Some((kind, id)) => format!("{kind} {}", head(id, 12)),
                None => o.target.clone(),
            };
            lines.push(format!(
                "{}: qos set on {target}: {}",
                net_name(&o.network),
                describe(&o.spec)
            ));
        }
        if !lines.is_empty() {
            println!();
            for l in lines {
                println!("{l}");
            }
        }
        Ok(())
    }
}

/// A source's values, e.g. `egress 10mbit, priority low`.
fn describe(s: &QosSpec) -> String {
    let mut parts = Vec::new();
    if let Some(r) = s.egress {
        parts.push(format!("egress {r}"));
    }
    if let Some(r) = s.ingress {
        parts.push(format!("ingress {r}"));
    }
    if let Some(b) = s.burst {
        parts.push(format!("burst {b}"));
    }
    if let Some(p) = s.priority {
        parts.push(format!("priority {p}"));
    }
    if let Some(r) = s.aggregate {
        parts.push(format!("aggregate {r}"));
    }
    parts.join(", ")
}
