//! What the daemon asks the Docker Engine API, always in the background (never inside a
//! plugin call: dockerd may be waiting on us, see the protocol doc's pitfall 10).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::http::request;

async fn get(socket: &Path, path: &str) -> anyhow::Result<Value> {
    let (status, body) = request(socket, "GET", path, None, Duration::from_secs(5)).await?;
    if status != 200 {
        anyhow::bail!("docker api {path}: status {status}");
    }
    Ok(serde_json::from_slice(&body)?)
}

/// Docker's view of the networks of driver `driver`: network ID → (name, endpoint IDs).
pub async fn networks(
    socket: &Path,
    driver: &str,
) -> anyhow::Result<BTreeMap<String, (String, BTreeSet<String>)>> {
    let list = get(socket, "/networks").await?;
    let mut out = BTreeMap::new();
    for n in list.as_array().into_iter().flatten() {
        if n["Driver"].as_str() != Some(driver) {
            continue;
        }
        let id = n["Id"].as_str().unwrap_or_default().to_string();
        let detail = get(socket, &format!("/networks/{id}")).await?;
        let eps = detail["Containers"]
            .as_object()
            .map(|m| {
                m.values()
                    .filter_map(|c| c["EndpointID"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let name = n["Name"].as_str().unwrap_or_default().to_string();
        out.insert(id, (name, eps));
    }
    Ok(out)
}
