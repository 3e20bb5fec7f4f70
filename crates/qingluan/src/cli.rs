//! The command-line client: talks to the daemon's management socket and prints tables or,
//! with `--json`, the API's JSON.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use qingluan_core::ipam::{PoolKind, PoolUsage};
use qingluan_core::model::{head, Endpoint};
use qingluan_core::service::EndpointStats;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::{ClusterNetworkView, NetworkView, NewPool, Status};
use crate::http::request;

/// Where and how to talk to the daemon.
pub struct Client {
    /// Management socket.
    pub socket: PathBuf,
    /// Docker socket, to resolve network names.
    pub docker: PathBuf,
    /// Print JSON instead of tables.
    pub json: bool,
}

impl Client {
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Vec<u8>> {
        let (status, body) = request(&self.socket, method, path, body, Duration::from_secs(30))
            .await
            .with_context(|| {
                format!(
                    "is the qingluan daemon running? ({})",
                    self.socket.display()
                )
            })?;
        if status >= 400 {
            let msg = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(String::from))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            bail!("{msg}");
        }
        Ok(body)
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<(T, serde_json::Value)> {
        let body = self.call("GET", path, None).await?;
        Ok((
            serde_json::from_slice(&body)?,
            serde_json::from_slice(&body)?,
        ))
    }

    fn print_json(&self, v: &serde_json::Value) {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    }

    /// `qingluan status`.
    pub async fn status(&self) -> anyhow::Result<()> {
        let (s, raw): (Status, _) = self.get("/v1/status").await?;
        if self.json {
            self.print_json(&raw);
            return Ok(());
        }
        println!(
            "driver:     {} (ipam {}Ipam), version {}",
            s.name, s.name, s.version
        );
        println!("uptime:     {} s", s.uptime_secs);
        println!(
            "datapath:   {} (userspace TSO {})",
            s.datapath,
            if s.userspace_tso { "on" } else { "off" }
        );
        println!("networks:   {}", s.networks);
        println!("endpoints:  {}", s.endpoints);
        if let Some(e) = &s.cluster_error {
            println!("\ncluster:    {e}");
        }
        for e in &s.conflicts {
            println!(
                "conflict:   endpoint {} ({}) is off its network: {} holds its address",
                e.short_id(),
                e.address,
                e.conflict.as_deref().unwrap_or("?")
            );
        }
        println!(
            "\n{:<20} {:<16} {:<10} {:<5} {:>9}",
            "HOST", "UNDERLAY", "VERSION", "STATE", "ENDPOINTS"
        );
        for h in &s.hosts {
            let ip = h
                .status
                .host
                .underlay_ip
                .map(|i| i.to_string())
                .unwrap_or_else(|| "-".into());
            let state = if h.status.up { "up" } else { "down" };
            println!(
                "{:<20} {:<16} {:<10} {:<5} {:>9}",
                h.status.host.id, ip, h.status.host.version, state, h.endpoints
            );
        }
        if !s.calls.is_empty() {
            println!(
                "\n{:<45} {:>7} {:>9} {:>9}",
                "PLUGIN CALL", "COUNT", "P50 ms", "P99 ms"
            );
            for c in s.calls {
                println!(
                    "{:<45} {:>7} {:>9.2} {:>9.2}",
                    c.method, c.count, c.p50_ms, c.p99_ms
                );
            }
        }
        Ok(())
    }

    /// `qingluan network ls`.
    pub async fn network_ls(&self) -> anyhow::Result<()> {
        let (nets, raw): (Vec<NetworkView>, _) = self.get("/v1/networks").await?;
        if self.json {
            self.print_json(&raw);
            return Ok(());
        }
        let names = docker_names(&self.docker).await;
        println!(
            "{:<14} {:<16} {:<7} {:<18} {:<15} {:<13} {:>9}",
            "NETWORK ID", "NAME", "MODE", "SUBNET", "GATEWAY", "BRIDGE", "ENDPOINTS"
        );
        for n in nets {
            let name = n
                .name
                .clone()
                .or_else(|| names.get(&n.network.id).cloned())
                .unwrap_or_else(|| "-".into());
            let mode = if n.network.internal {
                format!("{}*", n.network.mode)
            } else {
                n.network.mode.to_string()
            };
            println!(
                "{:<14} {:<16} {:<7} {:<18} {:<15} {:<13} {:>9}",
                n.network.short_id(),
                name,
                mode,
                n.network.subnet.to_string(),
                n.network.gateway.to_string(),
                n.network.bridge,
                n.endpoints.len()
            );
        }
        Ok(())
    }

    /// `qingluan network ls --cluster`: the cluster's networks and which hosts have them.
    pub async fn cluster_network_ls(&self) -> anyhow::Result<()> {
        let (nets, raw): (Vec<ClusterNetworkView>, _) = self.get("/v1/cluster/networks").await?;
        if self.json {
            self.print_json(&raw);
            return Ok(());
        }
        println!(
            "{:<16} {:<14} {:<18} {:<15} {:<24} ENDPOINTS",
            "NAME", "KEY", "SUBNET", "GATEWAY", "HOSTS"
        );
        for n in nets {
            let hosts: Vec<String> = n
                .members
                .iter()
                .map(|(h, a)| if *a { h.clone() } else { format!("({h})") })
                .collect();
            let eps: Vec<String> = n
                .endpoints
                .iter()
                .map(|(h, c)| format!("{h}:{c}"))
                .collect();
            println!(
                "{:<16} {:<14} {:<18} {:<15} {:<24} {}",
                n.network.label(),
                n.network.key,
                n.network.subnet.to_string(),
                n.network.gateway.to_string(),
                hosts.join(","),
                eps.join(",")
            );
        }
        Ok(())
    }

    /// `qingluan network rm NAME`: removes a cluster network from every host.
    pub async fn network_rm(&self, name: &str) -> anyhow::Result<()> {
        self.call("DELETE", &format!("/v1/cluster/networks/{name}"), None)
            .await?;
        println!("{name}");
        Ok(())
    }

    /// `qingluan endpoint ls --all`: every endpoint of the cluster with its host.
    pub async fn endpoint_ls_all(&self) -> anyhow::Result<()> {
        let (eps, raw): (Vec<qingluan_core::cluster::ClusterEndpoint>, _) =
            self.get("/v1/cluster/endpoints").await?;
        if self.json {
            self.print_json(&raw);
            return Ok(());
        }
        let (nets, _): (Vec<ClusterNetworkView>, _) = self.get("/v1/cluster/networks").await?;
        let names = docker_names(&self.docker).await;
        println!(
            "{:<12} {:<14} {:<16} {:<6} {:<18} MAC",
            "HOST", "ENDPOINT ID", "NETWORK", "MODE", "ADDRESS"
        );
        for e in eps {
            let net = e
                .network_key
                .as_ref()
                .and_then(|k| nets.iter().find(|n| &n.network.key == k))
                .map(|n| n.network.label())
                .or_else(|| names.get(&e.network_id).cloned())
                .unwrap_or_else(|| head(&e.network_id, 12).to_string());
            println!(
                "{:<12} {:<14} {:<16} {:<6} {:<18} {}",
                e.host,
                head(&e.id, 12),
                net,
                e.mode.to_string(),
                e.address.to_string(),
                e.mac
            );
        }
        Ok(())
    }

    /// `qingluan network inspect NAME|ID`.
    pub async fn network_inspect(&self, id: &str) -> anyhow::Result<()> {
        let body = match self.call("GET", &format!("/v1/networks/{id}"), None).await {
            Ok(b) => b,
            Err(e) => {
                let names = docker_names(&self.docker).await;
                let Some((full, _)) = names.iter().find(|(_, n)| n.as_str() == id) else {
                    return Err(e);
                };
                self.call("GET", &format!("/v1/networks/{full}"), None)
                    .await?
            }
        };
        let mut v: serde_json::Value = serde_json::from_slice(&body)?;
        if v["name"].is_null() {
            let names = docker_names(&self.docker).await;
            if let Some(n) = v["id"].as_str().and_then(|i| names.get(i)) {
                v["name"] = serde_json::Value::String(n.clone());
            }
        }
        self.print_json(&v);
        Ok(())
    }

    /// `qingluan endpoint ls`.
    pub async fn endpoint_ls(&self) -> anyhow::Result<()> {
        let (eps, raw): (Vec<Endpoint>, _) = self.get("/v1/endpoints").await?;
        if self.json {
            self.print_json(&raw);
            return Ok(());
        }
        let names = docker_names(&self.docker).await;
        println!(
            "{:<14} {:<16} {:<18} {:<18} {:<15} PORTS",
            "ENDPOINT ID", "NETWORK", "ADDRESS", "MAC", "VETH"
        );
        for e in eps {
            let net = names
                .get(&e.network_id)
                .cloned()
                .unwrap_or_else(|| head(&e.network_id, 12).to_string());
            let ports: Vec<String> = e.ports.iter().map(|p| p.to_string()).collect();
            println!(
                "{:<14} {:<16} {:<18} {:<18} {:<15} {}",
                e.short_id(),
                net,
                e.address.to_string(),
                e.mac.to_string(),
                e.host_veth(),
                ports.join(",")
            );
        }
        Ok(())
    }

    /// The counters of this host's endpoints.
    pub async fn endpoint_stats(&self) -> anyhow::Result<Vec<EndpointStats>> {
        Ok(self.get("/v1/stats").await?.0)
    }

    /// `qingluan stats`: each endpoint's counters and its rates over one second, in the
    /// container's directions, optionally only on network `network` or of container
    /// `container` (names or ID prefixes).
    pub async fn stats(
        &self,
        network: Option<&str>,
        container: Option<&str>,
    ) -> anyhow::Result<()> {
        let before = self.endpoint_stats().await?;
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = self.endpoint_stats().await?;
        let secs = start.elapsed().as_secs_f64();
        let names = docker_names(&self.docker).await;
        let nets: BTreeSet<&str> = now.iter().map(|s| s.network.as_str()).collect();
        let owners = docker_containers(&self.docker, &nets).await;
        let matches = |want: Option<&str>, id: &str, name: Option<&String>| match want {
            None => true,
            Some(w) => id.starts_with(w) || name.is_some_and(|n| n == w),
        };
        let mut rows = Vec::new();
        for s in now {
            let owner = owners.get(&s.endpoint);
            let net_name = names.get(&s.network);
            if !matches(network, &s.network, net_name)
                || !matches(
                    container,
                    owner.map_or("", |(id, _)| id.as_str()),
                    owner.map(|(_, n)| n),
                )
            {
                continue;
            }
            let rate = |f: fn(&EndpointStats) -> u64| {
                let prev = before
                    .iter()
                    .find(|b| b.endpoint == s.endpoint)
                    .map_or(f(&s), f);
                f(&s).saturating_sub(prev) as f64 * 8.0 / secs
            };
            rows.push(StatsRow {
                container: owner.map(|(_, n)| n.clone()),
                network_name: net_name.cloned(),
                transmit_bits_per_second: rate(|x| x.transmit.bytes),
                receive_bits_per_second: rate(|x| x.receive.bytes),
                stats: s,
            });
        }
        if self.json {
            self.print_json(&serde_json::to_value(&rows)?);
            return Ok(());
        }
        println!(
            "{:<20} {:<16} {:<18} {:>11} {:>11} {:>12} {:>12} {:>10} {:>10} {:>7} {:>7}",
            "CONTAINER",
            "NETWORK",
            "ADDRESS",
            "TX RATE",
            "RX RATE",
            "TX BYTES",
            "RX BYTES",
            "TX PKTS",
            "RX PKTS",
            "DROPS",
            "SPOOFED"
        );
        for r in rows {
            let s = &r.stats;
            println!(
                "{:<20} {:<16} {:<18} {:>11} {:>11} {:>12} {:>12} {:>10} {:>10} {:>7} {:>7}",
                r.container
                    .unwrap_or_else(|| head(&s.endpoint, 12).to_string()),
                r.network_name
                    .unwrap_or_else(|| head(&s.network, 12).to_string()),
                s.address.to_string(),
                bits(r.transmit_bits_per_second),
                bits(r.receive_bits_per_second),
                s.transmit.bytes,
                s.receive.bytes,
                s.transmit.packets,
                s.receive.packets,
                s.transmit.dropped + s.receive.dropped,
                s.spoofed,
            );
        }
        Ok(())
    }

    /// `qingluan pool ls`.
    pub async fn pool_ls(&self) -> anyhow::Result<()> {
        let (pools, raw): (Vec<PoolUsage>, _) = self.get("/v1/pools").await?;
        if self.json {
            self.print_json(&raw);
            return Ok(());
        }
        println!(
            "{:<10} {:<6} {:<18} {:>6} {:>8} {:>10}  IN USE",
            "POOL", "KIND", "SUPERNET", "PREFIX", "SUBNETS", "ADDRESSES"
        );
        for p in pools {
            let used: usize = p.subnets.iter().map(|(_, n)| n).sum();
            let list: Vec<String> = p.subnets.iter().map(|(s, _)| s.cidr.to_string()).collect();
            let kind = serde_json::to_value(p.pool.kind)?
                .as_str()
                .unwrap_or_default()
                .to_string();
            println!(
                "{:<10} {:<6} {:<18} {:>6} {:>8} {:>10}  {}",
                p.pool.name,
                kind,
                p.pool.subnet.to_string(),
                format!("/{}", p.pool.prefix),
                p.subnets.len(),
                used,
                list.join(", ")
            );
        }
        Ok(())
    }

    /// `qingluan pool create`.
    pub async fn pool_create(
        &self,
        name: &str,
        subnet: &str,
        prefix: u8,
        kind: &str,
    ) -> anyhow::Result<()> {
        let kind: PoolKind = serde_json::from_value(serde_json::Value::String(kind.into()))
            .map_err(|_| {
                anyhow::anyhow!("invalid pool kind {kind:?} (kinds: host, vlan, vxlan, flat)")
            })?;
        let subnet = subnet
            .parse()
            .map_err(|_| anyhow::anyhow!("invalid subnet {subnet:?}"))?;
        let body = serde_json::to_vec(&NewPool {
            name: name.into(),
            subnet,
            prefix,
            kind,
        })?;
        self.call("POST", "/v1/pools", Some(body)).await?;
        println!("{name}");
        Ok(())
    }

    /// `qingluan pool rm`.
    pub async fn pool_rm(&self, name: &str) -> anyhow::Result<()> {
        self.call("DELETE", &format!("/v1/pools/{name}"), None)
            .await?;
        println!("{name}");
        Ok(())
    }
}

/// One row of `qingluan stats`.
#[derive(Serialize)]
struct StatsRow {
    /// The container's name, from the Engine API.
    container: Option<String>,
    /// The network's Docker name.
    network_name: Option<String>,
    /// What the container sent over the last second, in bit/s.
    transmit_bits_per_second: f64,
    /// What it received, in bit/s.
    receive_bits_per_second: f64,
    /// The counters.
    #[serde(flatten)]
    stats: EndpointStats,
}

/// A rate in bit/s with a unit, e.g. `12.3Mbit/s`.
pub(crate) fn bits(bps: f64) -> String {
    let units = [(1e9, "Gbit/s"), (1e6, "Mbit/s"), (1e3, "kbit/s")];
    match units.iter().find(|(scale, _)| bps >= *scale) {
        Some((scale, unit)) => format!("{:.1}{unit}", bps / scale),
        None => format!("{bps:.0}bit/s"),
    }
}

/// The containers on `networks`, by endpoint ID: (container ID, name), best-effort.
pub(crate) async fn docker_containers(
    socket: &Path,
    networks: &BTreeSet<&str>,
) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    for id in networks {
        let path = format!("/networks/{id}");
        let Ok((200, body)) = request(socket, "GET", &path, None, Duration::from_secs(5)).await
        else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        for (cid, c) in v["Containers"].as_object().into_iter().flatten() {
            if let (Some(ep), Some(name)) = (c["EndpointID"].as_str(), c["Name"].as_str()) {
                out.insert(ep.to_string(), (cid.clone(), name.to_string()));
            }
        }
    }
    out
}

/// Docker network names by ID, best-effort (empty when Docker is unreachable).
pub(crate) async fn docker_names(socket: &Path) -> BTreeMap<String, String> {
    let Ok((200, body)) = request(socket, "GET", "/networks", None, Duration::from_secs(5)).await
    else {
        return Default::default();
    };
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| {
            Some((
                n["Id"].as_str()?.to_string(),
                n["Name"].as_str()?.to_string(),
            ))
        })
        .collect()
}
