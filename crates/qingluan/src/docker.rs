//! What the daemon asks the Docker Engine API, always in the background (never inside a
//! plugin call: dockerd may be waiting on us, see the protocol doc's pitfall 10).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use serde_json::Value;

use crate::http::request;

async fn get(socket: &Path, path: &str) -> anyhow::Result<Value> {
    let (status, body) = request(socket, "GET", path, None, Duration::from_secs(5)).await?;
    if status != 200 {
        anyhow::bail!("docker api {path}: status {status}");
    }
    Ok(serde_json::from_slice(&body)?)
}

/// A container attached to a network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// Container ID.
    pub id: String,
    /// Its name, without the leading `/`.
    pub name: String,
}

/// One network of our driver as Docker sees it.
#[derive(Clone, Debug, Default)]
pub struct DockerNetwork {
    /// Its name.
    pub name: String,
    /// Its containers by endpoint ID.
    pub containers: BTreeMap<String, Container>,
}

/// Docker's view of the networks of driver `driver`, by network ID.
pub async fn networks(
    socket: &Path,
    driver: &str,
) -> anyhow::Result<BTreeMap<String, DockerNetwork>> {
    let list = get(socket, "/networks").await?;
    let mut out = BTreeMap::new();
    for n in list.as_array().into_iter().flatten() {
        if n["Driver"].as_str() != Some(driver) {
            continue;
        }
        let id = n["Id"].as_str().unwrap_or_default().to_string();
        let containers = network_containers(socket, &id).await?;
        let name = n["Name"].as_str().unwrap_or_default().to_string();
        out.insert(id, DockerNetwork { name, containers });
    }
    Ok(out)
}

/// The containers of network `id`, by endpoint ID.
pub async fn network_containers(
    socket: &Path,
    id: &str,
) -> anyhow::Result<BTreeMap<String, Container>> {
    let detail = get(socket, &format!("/networks/{id}")).await?;
    Ok(detail["Containers"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(cid, c)| {
            let container = Container {
                id: cid.clone(),
                name: c["Name"].as_str().unwrap_or_default().to_string(),
            };
            Some((c["EndpointID"].as_str()?.to_string(), container))
        })
        .collect())
}

/// Names Docker gives our objects, kept by the daemon for the API and the metrics.
#[derive(Clone, Debug, Default)]
pub struct Names {
    /// Network names by ID.
    pub networks: BTreeMap<String, String>,
    /// Containers by endpoint ID.
    pub containers: BTreeMap<String, Container>,
    /// When they were read.
    pub read: Option<std::time::Instant>,
}

impl Names {
    /// The names in `networks`.
    pub fn of(networks: &BTreeMap<String, DockerNetwork>) -> Names {
        Names {
            networks: networks
                .iter()
                .map(|(id, n)| (id.clone(), n.name.clone()))
                .collect(),
            containers: networks
                .values()
                .flat_map(|n| n.containers.clone())
                .collect(),
            read: Some(std::time::Instant::now()),
        }
    }
}

/// The IDs of every container Docker has, running or not.
pub async fn container_ids(socket: &Path) -> anyhow::Result<BTreeSet<String>> {
    let list = get(socket, "/containers/json?all=1").await?;
    Ok(list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["Id"].as_str().map(String::from))
        .collect())
}

/// A container's ID and labels.
pub async fn container(
    socket: &Path,
    id: &str,
) -> anyhow::Result<qingluan_core::model::ContainerRef> {
    let c = get(socket, &format!("/containers/{id}/json")).await?;
    Ok(qingluan_core::model::ContainerRef {
        id: c["Id"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("container {id} has no Id"))?
            .to_string(),
        name: c["Name"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        labels: c["Config"]["Labels"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect(),
    })
}

/// The subnets of every network whose IPAM driver is `ipam`, whatever its driver.
pub async fn ipam_subnets(socket: &Path, ipam: &str) -> anyhow::Result<BTreeSet<IpNet>> {
    let list = get(socket, "/networks").await?;
    Ok(list
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["IPAM"]["Driver"].as_str() == Some(ipam))
        .flat_map(|n| n["IPAM"]["Config"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["Subnet"].as_str()?.parse::<IpNet>().ok())
        .map(|s| s.trunc())
        .collect())
}

/// The Engine API path prefix for the local engine's API version (`/v1.41`), asked once
/// per call so a dockerd upgrade needs no restart of ours.
async fn versioned(socket: &Path) -> anyhow::Result<String> {
    let v = get(socket, "/version").await?;
    let api = v["ApiVersion"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("docker /version has no ApiVersion"))?;
    Ok(format!("/v{api}"))
}

/// The name of a network, by ID.
pub async fn network_name(socket: &Path, id: &str) -> anyhow::Result<String> {
    let base = versioned(socket).await?;
    let n = get(socket, &format!("{base}/networks/{id}")).await?;
    n["Name"]
        .as_str()
        .map(String::from)
        .ok_or_else(|| anyhow::anyhow!("network {id} has no name"))
}

/// Creates a cluster network in the local Docker, as `docker network create` would with
/// the same definition; a network of that name that exists already is fine.
pub async fn create_network(
    socket: &Path,
    driver: &str,
    ipam: &str,
    def: &qingluan_core::cluster::ClusterNetwork,
) -> anyhow::Result<()> {
    let name = def
        .name
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("{} has no name yet", def.key))?;
    let mut config = serde_json::json!({
        "Subnet": def.subnet.to_string(),
        "Gateway": def.gateway.to_string(),
    });
    if let Some(r) = def.ip_range {
        config["IPRange"] = Value::String(r.to_string());
    }
    let mut ipam_opts = serde_json::Map::new();
    ipam_opts.insert("pool".into(), Value::String(def.pool.clone()));
    if let Some(v) = def.vni {
        ipam_opts.insert("vni".into(), Value::String(v.to_string()));
    }
    let body = serde_json::json!({
        "Name": name,
        "CheckDuplicate": true,
        "Driver": driver,
        "Internal": def.internal,
        "IPAM": {"Driver": ipam, "Config": [config], "Options": ipam_opts},
        "Options": def.options,
    });
    let base = versioned(socket).await?;
    let (status, resp) = request(
        socket,
        "POST",
        &format!("{base}/networks/create"),
        Some(serde_json::to_vec(&body)?),
        Duration::from_secs(60),
    )
    .await?;
    match status {
        200 | 201 => Ok(()),
        409 => Ok(()),
        _ => anyhow::bail!(
            "docker network create {name}: status {status}: {}",
            String::from_utf8_lossy(&resp).trim()
        ),
    }
}

/// Removes a network from the local Docker; one that is gone already is fine.
pub async fn remove_network(socket: &Path, id: &str) -> anyhow::Result<()> {
    let base = versioned(socket).await?;
    let (status, resp) = request(
        socket,
        "DELETE",
        &format!("{base}/networks/{id}"),
        None,
        Duration::from_secs(60),
    )
    .await?;
    match status {
        200 | 204 | 404 => Ok(()),
        _ => anyhow::bail!(
            "docker network rm {id}: status {status}: {}",
            String::from_utf8_lossy(&resp).trim()
        ),
    }
}
