//! The command-line client: talks to the daemon's management socket and prints tables or,
//! with `--json`, the API's JSON.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use qingluan_core::ipam::{PoolKind, PoolUsage};
use qingluan_core::model::{head, Endpoint};
use qingluan_core::service::EndpointStats;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::{ClusterNetworkView, NetworkView, NewPool, Status};
use crate::docker::Names;
use crate::host_stats::{self, HostStats, StatsRow};
use crate::http::request;

/// Where and how to talk to the daemon.
pub struct Client {
    /// Management socket.
    pub socket: PathBuf,
    /// Docker socket, to resolve network and container names.
    pub docker: PathBuf,
    /// Our driver's name in Docker.
    pub driver: String,
    /// Print JSON instead of tables.
    pub json: bool,
}

impl Client {
    pub(crate) async fn call(
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

    pub(crate) async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> anyhow::Result<(T, serde_json::Value)> {
        let body = self.call("GET", path, None).await?;
        Ok((
            serde_json::from_slice(&body)?,
            serde_json::from_slice(&body)?,
        ))
    }

    pub(crate) fn print_json(&self, v: &serde_json::Value) {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    }

    /// POSTs `request` as JSON to `path` and prints the new object's `id` (all of it with
    /// `--json`).
    pub(crate) async fn create(&self, path: &str, request: &impl Serialize) -> anyhow::Result<()> {
        let body = self
            .call("POST", path, Some(serde_json::to_vec(request)?))
            .await?;
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        if self.json {
            self.print_json(&v);
        } else {
            println!("{}", v["id"].as_str().unwrap_or_default());
        }
        Ok(())
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

    /// Docker's names of our networks and containers, best-effort (empty when Docker is
    /// unreachable).
    pub async fn names(&self) -> Names {
        crate::docker::networks(&self.docker, &self.driver)
            .await
            .map(|n| Names::of(&n))
            .unwrap_or_default()
    }

    /// This host's rows, with rates over one second.
    async fn local_rows(&self) -> anyhow::Result<Vec<StatsRow>> {
        let before = self.endpoint_stats().await?;
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = self.endpoint_stats().await?;
        let secs = start.elapsed().as_secs_f64();
        Ok(host_stats::rows(&before, now, secs, &self.names().await))
    }

    /// The rows host `host` (or `all`) published in the cluster store.
    pub async fn host_rows(&self, host: &str) -> anyhow::Result<Vec<StatsRow>> {
        let (hosts, _): (Vec<HostStats>, _) = self.get("/v1/cluster/stats").await?;
        if host != "all" && !hosts.iter().any(|h| h.host == host) {
            let known: Vec<&str> = hosts.iter().map(|h| h.host.as_str()).collect();
            bail!(
                "host {host} has published no statistics in the last {} s (hosts: {})",
                host_stats::STALE_AFTER.as_secs(),
                known.join(", ")
            );
        }
        Ok(hosts
            .into_iter()
            .filter(|h| host == "all" || h.host == host)
            .flat_map(|h| h.rows)
            .collect())
    }

    /// `qingluan stats`: each endpoint's counters and rates, in the container's directions,
    /// optionally only on network `network` or of container `container` (names or ID
    /// prefixes); this host's over one second, or with `host` the rows hosts published in
    /// the cluster store.
    pub async fn stats(
        &self,
        network: Option<&str>,
        container: Option<&str>,
        host: Option<&str>,
    ) -> anyhow::Result<()> {
        let all = match host {
            None => self.local_rows().await?,
            Some(h) => self.host_rows(h).await?,
        };
        let matches = |want: Option<&str>, id: &str, name: Option<&String>| match want {
            None => true,
            Some(w) => id.starts_with(w) || name.is_some_and(|n| n == w),
        };
        let rows: Vec<StatsRow> = all
            .into_iter()
            .filter(|r| {
                matches(network, &r.stats.network, r.network_name.as_ref())
                    && matches(
                        container,
                        r.container_id.as_deref().unwrap_or(""),
                        r.container.as_ref(),
                    )
            })
            .collect();
        if self.json {
            self.print_json(&serde_json::to_value(&rows)?);
            return Ok(());
        }
        let hosts = host.is_some();
        if hosts {
            print!("{:<12} ", "HOST");
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
        let line = |host: &str, who: &str, net: &str, addr: &str, t: &Totals| {
            if hosts {
                print!("{host:<12} ");
            }
            println!(
                "{:<20} {:<16} {:<18} {:>11} {:>11} {:>12} {:>12} {:>10} {:>10} {:>7} {:>7}",
                who,
                net,
                addr,
                bits(t.tx_rate),
                bits(t.rx_rate),
                t.tx_bytes,
                t.rx_bytes,
                t.tx_packets,
                t.rx_packets,
                t.dropped,
                t.spoofed,
            )
        };
        let mut per_network: BTreeMap<(String, String), Totals> = BTreeMap::new();
        let mut per_host: BTreeMap<String, Totals> = BTreeMap::new();
        for r in &rows {
            let h = r.host.clone().unwrap_or_default();
            let t = Totals::of(r);
            line(&h, &r.who(), &r.network(), &r.stats.address.to_string(), &t);
            per_network
                .entry((h.clone(), r.network()))
                .or_default()
                .add(&t);
            per_host.entry(h).or_default().add(&t);
        }
        if rows.len() > 1 {
            for ((h, net), t) in &per_network {
                line(h, "TOTAL", net, "", t);
            }
            for (h, t) in per_host.iter().filter(|_| per_network.len() > 1) {
                line(h, "TOTAL", "(host)", "", t);
            }
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

/// The numbers of one line of `qingluan stats`: a container's, or a sum.
#[derive(Default)]
struct Totals {
    tx_rate: f64,
    rx_rate: f64,
    tx_bytes: u64,
    rx_bytes: u64,
    tx_packets: u64,
    rx_packets: u64,
    dropped: u64,
    spoofed: u64,
}

impl Totals {
    fn of(r: &StatsRow) -> Totals {
        let s = &r.stats;
        Totals {
            tx_rate: r.transmit_bits_per_second,
            rx_rate: r.receive_bits_per_second,
            tx_bytes: s.transmit.bytes,
            rx_bytes: s.receive.bytes,
            tx_packets: s.transmit.packets,
            rx_packets: s.receive.packets,
            dropped: s.transmit.dropped + s.receive.dropped,
            spoofed: s.spoofed,
        }
    }

    fn add(&mut self, o: &Totals) {
        self.tx_rate += o.tx_rate;
        self.rx_rate += o.rx_rate;
        self.tx_bytes += o.tx_bytes;
        self.rx_bytes += o.rx_bytes;
        self.tx_packets += o.tx_packets;
        self.rx_packets += o.rx_packets;
        self.dropped += o.dropped;
        self.spoofed += o.spoofed;
    }
}

/// A rate in bit/s with a unit, e.g. `12.3Mbit/s`.
pub(crate) fn bits(bps: f64) -> String {
    let units = [(1e9, "Gbit/s"), (1e6, "Mbit/s"), (1e3, "kbit/s")];
    match units.iter().find(|(scale, _)| bps >= *scale) {
        Some((scale, unit)) => format!("{:.1}{unit}", bps / scale),
        None => format!("{bps:.0}bit/s"),
    }
}

/// Docker network names by ID, best-effort (empty when Docker is unreachable).
async fn docker_names(socket: &Path) -> BTreeMap<String, String> {
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
