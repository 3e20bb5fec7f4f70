//! `qingluan ids enable|disable|reload|status|alerts|release`: the routes (`/v1/ids/...`),
//! the commands, and the detector the daemon runs (`runtime.rs`, reading `capture.rs`).
//!
//! The daemon reads rule files itself (the CLI sends absolute paths): a new set replaces
//! the running one only when every file reads and parses; otherwise the command fails with
//! `file:line: message` and nothing changes. `ids alerts` reads the EVE log, from a time
//! (`--since`) or from a byte offset the previous answer gave (`--follow`).

mod capture;
pub mod runtime;

use std::time::{Duration, SystemTime};

use axum::extract::{Query, State};
use axum::Json;
use qingluan_core::ids::{self, ContainerWatch, IdsMode, IdsWatch};
use qingluan_core::model::head;
use qingluan_core::service::Quarantine;
use serde::{Deserialize, Serialize};

use crate::api::{bad, service, Api, ApiError};
use crate::cli::Client;
use runtime::RulesInfo;

/// What `ids enable` and `ids disable` name: one network or one container.
#[derive(Clone, Debug, Default, Serialize, Deserialize, clap::Args)]
pub struct WatchTarget {
    /// The network (Docker name or ID prefix).
    #[arg(
        long,
        required_unless_present = "container",
        conflicts_with = "container"
    )]
    pub network: Option<String>,
    /// Or one container, on every network it is on here (name or ID prefix).
    #[arg(long)]
    pub container: Option<String>,
}

/// A [`WatchTarget`] resolved: a network's ID, or a container as typed.
enum Named {
    Network(String),
    Container(String),
}

impl WatchTarget {
    /// Resolves the network's name; for a container, first learns the containers of new
    /// endpoints, so that one started a moment ago is known.
    async fn resolve(&self, api: &Api) -> Result<Named, ApiError> {
        match (&self.network, &self.container) {
            (Some(n), None) => Ok(Named::Network(crate::api::network_named(api, n).await?)),
            (None, Some(c)) => {
                crate::containers::pass(&api.driver, &api.docker).await;
                Ok(Named::Container(c.clone()))
            }
            _ => Err(bad("give one of --network and --container")),
        }
    }
}

/// `ids enable` as typed (also the command's arguments).
#[derive(Clone, Debug, Default, Serialize, Deserialize, clap::Args)]
pub struct EnableRequest {
    /// What to watch.
    #[command(flatten)]
    #[serde(flatten)]
    pub target: WatchTarget,
    /// Rule files (a `*` in a file name matches); they replace the running rule set.
    #[arg(long, num_args = 1..)]
    pub rules: Vec<String>,
    /// ids: report alerts; ips: also quarantine their sources.
    #[arg(long, default_value = "ids")]
    pub mode: String,
}

/// `ids reload` as typed.
#[derive(Clone, Debug, Default, Serialize, Deserialize, clap::Args)]
pub struct ReloadRequest {
    /// Rule files to load instead of those loaded last.
    #[arg(long, num_args = 1..)]
    pub rules: Vec<String>,
}

/// `ids disable` as typed.
#[derive(Clone, Debug, Default, Serialize, Deserialize, clap::Args)]
pub struct DisableRequest {
    /// What to stop watching.
    #[command(flatten)]
    #[serde(flatten)]
    pub target: WatchTarget,
}

/// `ids release` as typed.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ReleaseRequest {
    /// The container (name or ID prefix).
    pub container: String,
}

/// What `ids enable` and `ids reload` answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Enabled {
    /// The watch, for `enable --network`.
    pub watch: Option<IdsWatch>,
    /// The watch, for `enable --container`.
    pub container: Option<ContainerWatch>,
    /// The rule set running now.
    pub rules: RulesInfo,
}

/// A watched network as `ids status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WatchRow {
    /// The network's ID.
    pub network: String,
    /// Docker's name for it.
    pub network_name: Option<String>,
    /// ids or ips.
    pub mode: IdsMode,
    /// The watched containers whose traffic on the network is inspected; empty: the
    /// whole network is watched.
    pub containers: Vec<String>,
    /// The capture port the detector reads.
    pub capture: String,
    /// Whether a detector thread reads it.
    pub inspecting: bool,
    /// Frames inspected on that capture port (shared by the networks of one bridge).
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Frames the kernel dropped because the detector fell behind.
    pub dropped: u64,
    /// Alerts raised on that capture port.
    pub alerts: u64,
}

/// `ids status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdsStatusView {
    /// Watched networks.
    pub watches: Vec<WatchRow>,
    /// The rule set.
    pub rules: RulesInfo,
    /// Quarantined containers.
    pub quarantined: Vec<Quarantine>,
    /// The EVE log.
    pub eve_log: String,
}

/// `GET /v1/ids/alerts` parameters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AlertsQuery {
    /// Only alerts of the last this many seconds.
    pub since: Option<u64>,
    /// Only what the log got after this byte offset.
    pub offset: Option<u64>,
}

/// `GET /v1/ids/alerts`: EVE records and the offset to follow from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AlertsView {
    /// The records, oldest first.
    pub alerts: Vec<serde_json::Value>,
    /// The log's length when read.
    pub offset: u64,
}

async fn load(api: &Api, paths: &[String]) -> Result<RulesInfo, ApiError> {
    let rt = &api.ids;
    let (rules, set) = rt.read_rules(paths).map_err(bad)?;
    api.driver
        .ids
        .set_rules(rules.clone())
        .await
        .map_err(service)?;
    rt.use_rules(&rules, set);
    Ok(rt.rules_info())
}

/// `POST /v1/ids/enable`.
pub async fn enable(
    State(api): State<Api>,
    Json(r): Json<EnableRequest>,
) -> Result<Json<Enabled>, ApiError> {
    let mode: IdsMode = r.mode.parse().map_err(bad)?;
    let named = r.target.resolve(&api).await?;
    let loaded = if r.rules.is_empty() {
        None
    } else {
        Some(api.ids.read_rules(&r.rules).map_err(bad)?)
    };
    let rules = loaded.as_ref().map(|(r, _)| r.clone());
    let ids = &api.driver.ids;
    let (watch, container) = match named {
        Named::Network(n) => (Some(ids.enable(&n, mode, rules).await), None),
        Named::Container(c) => (None, Some(ids.enable_container(&c, mode, rules).await)),
    };
    let watch = watch.transpose().map_err(service)?;
    let container = container.transpose().map_err(service)?;
    if let Some((rules, set)) = loaded {
        api.ids.use_rules(&rules, set);
    }
    api.ids.refresh().await;
    Ok(Json(Enabled {
        watch,
        container,
        rules: api.ids.rules_info(),
    }))
}

/// `POST /v1/ids/disable`.
pub async fn disable(
    State(api): State<Api>,
    Json(r): Json<DisableRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let ids = &api.driver.ids;
    let removed = match r.target.resolve(&api).await? {
        Named::Network(n) => serde_json::to_value(ids.disable(&n).await.map_err(service)?),
        Named::Container(c) => {
            serde_json::to_value(ids.disable_container(&c).await.map_err(service)?)
        }
    };
    api.ids.refresh().await;
    Ok(Json(removed.unwrap_or_default()))
}

/// `POST /v1/ids/reload`.
pub async fn reload(
    State(api): State<Api>,
    Json(r): Json<ReloadRequest>,
) -> Result<Json<Enabled>, ApiError> {
    let paths = if r.rules.is_empty() {
        let current = api.ids.rules_info().paths;
        if current.is_empty() {
            return Err(bad("no rule files were loaded yet: give --rules <file>..."));
        }
        current
    } else {
        r.rules
    };
    Ok(Json(Enabled {
        watch: None,
        container: None,
        rules: load(&api, &paths).await?,
    }))
}

/// `POST /v1/ids/release`.
pub async fn release(
    State(api): State<Api>,
    Json(r): Json<ReleaseRequest>,
) -> Result<Json<Vec<Quarantine>>, ApiError> {
    Ok(Json(
        api.driver
            .ids
            .release(&r.container)
            .await
            .map_err(service)?,
    ))
}

/// `GET /v1/ids`: `ids status`.
pub async fn status(State(api): State<Api>) -> Result<Json<IdsStatusView>, ApiError> {
    let state = &api.driver.state;
    let watches = state.ids_watches().await.map_err(service)?;
    let whole = state.ids_network_watches().await.map_err(service)?;
    let containers = state.ids_container_watches().await.map_err(service)?;
    let endpoints = state.endpoints().await.map_err(service)?;
    let nets = state.networks().await.map_err(service)?;
    let names: std::collections::BTreeMap<String, String> =
        crate::docker::networks(&api.docker, &state.settings.docker_driver())
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|(id, n)| (id, n.name))
            .collect();
    let prefix = &state.settings.prefix;
    let overlay = qingluan_core::modes::overlay_bridge(prefix);
    let rows = watches
        .into_iter()
        .filter_map(|w| {
            let net = nets.iter().find(|n| n.id == w.network)?;
            let bridge = qingluan_core::mirror::bridge_of(net, &overlay);
            let (_, reader) = ids::capture_ports(prefix, &bridge);
            let stats = api.ids.capture_stats(&reader);
            let get = |f: fn(&runtime::CaptureStats) -> &std::sync::atomic::AtomicU64| {
                stats
                    .as_ref()
                    .map_or(0, |s| f(s).load(std::sync::atomic::Ordering::Relaxed))
            };
            let only = if whole.iter().any(|x| x.network == w.network) {
                Vec::new()
            } else {
                containers
                    .iter()
                    .filter(|c| {
                        endpoints.iter().any(|e| {
                            e.network_id == w.network
                                && e.container.as_ref().is_some_and(|r| r.name == c.container)
                        })
                    })
                    .map(|c| c.container.clone())
                    .collect()
            };
            Some(WatchRow {
                containers: only,
                network_name: names.get(&w.network).cloned(),
                network: w.network,
                mode: w.mode,
                capture: reader,
                inspecting: stats.is_some(),
                packets: get(|s| &s.packets),
                bytes: get(|s| &s.bytes),
                dropped: get(|s| &s.drops),
                alerts: get(|s| &s.alerts),
            })
        })
        .collect();
    Ok(Json(IdsStatusView {
        watches: rows,
        rules: api.ids.rules_info(),
        quarantined: api.driver.ids.quarantines().await.map_err(service)?,
        eve_log: api.ids.eve_log().display().to_string(),
    }))
}

/// `GET /v1/ids/alerts`.
pub async fn alerts(
    State(api): State<Api>,
    Query(q): Query<AlertsQuery>,
) -> Result<Json<AlertsView>, ApiError> {
    let text = match std::fs::read(api.ids.eve_log()) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(bad(format!("cannot read the EVE log: {e}"))),
    };
    let offset = text.len() as u64;
    let from = q.offset.unwrap_or(0).min(offset) as usize;
    let cutoff = q
        .since
        .map(|s| qingluan_ids::format_timestamp(SystemTime::now() - Duration::from_secs(s)));
    let alerts = String::from_utf8_lossy(&text[from..])
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            cutoff
                .as_deref()
                .is_none_or(|c| v["timestamp"].as_str().is_some_and(|t| t >= c))
        })
        .collect();
    Ok(Json(AlertsView { alerts, offset }))
}

/// `10m`, `2h`, `30s`, `1d` or plain seconds, in seconds.
pub fn parse_since(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (n, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = n
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid --since {s:?}: give e.g. 30s, 10m, 2h or 1d"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => anyhow::bail!("invalid --since {s:?}: give e.g. 30s, 10m, 2h or 1d"),
    };
    Ok(n * scale)
}

/// Absolute paths, so the daemon reads what the user meant from wherever it runs.
fn absolute(paths: &[String]) -> Vec<String> {
    let cwd = std::env::current_dir().unwrap_or_default();
    paths
        .iter()
        .map(|p| cwd.join(p).display().to_string())
        .collect()
}

fn print_rules(r: &RulesInfo) {
    println!("rules: {} loaded from {} file(s)", r.count, r.files.len());
    for u in &r.unsupported {
        println!("not loaded (unsupported): {u}");
    }
}

impl Client {
    /// `qingluan ids enable`.
    pub async fn ids_enable(&self, r: &EnableRequest) -> anyhow::Result<()> {
        let r = EnableRequest {
            rules: absolute(&r.rules),
            ..r.clone()
        };
        let body = self
            .call("POST", "/v1/ids/enable", Some(serde_json::to_vec(&r)?))
            .await?;
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        if self.json {
            self.print_json(&v);
            return Ok(());
        }
        let e: Enabled = serde_json::from_value(v)?;
        if let Some(w) = &e.watch {
            let n = r.target.network.as_deref().unwrap_or_default();
            println!("watching network {n} ({})", w.mode);
        }
        if let Some(c) = &e.container {
            println!("watching container {} ({})", c.container, c.mode);
        }
        print_rules(&e.rules);
        Ok(())
    }

    /// `qingluan ids disable`.
    pub async fn ids_disable(&self, r: &DisableRequest) -> anyhow::Result<()> {
        self.call("POST", "/v1/ids/disable", Some(serde_json::to_vec(r)?))
            .await?;
        Ok(())
    }

    /// `qingluan ids reload`.
    pub async fn ids_reload(&self, r: &ReloadRequest) -> anyhow::Result<()> {
        let r = ReloadRequest {
            rules: absolute(&r.rules),
        };
        let body = self
            .call("POST", "/v1/ids/reload", Some(serde_json::to_vec(&r)?))
            .await?;
        let e: Enabled = serde_json::from_slice(&body)?;
        if self.json {
            self.print_json(&serde_json::to_value(&e)?);
        } else {
            print_rules(&e.rules);
        }
        Ok(())
    }

    /// `qingluan ids release`.
    pub async fn ids_release(&self, container: &str) -> anyhow::Result<()> {
        let r = ReleaseRequest {
            container: container.into(),
        };
        let body = self
            .call("POST", "/v1/ids/release", Some(serde_json::to_vec(&r)?))
            .await?;
        let released: Vec<Quarantine> = serde_json::from_slice(&body)?;
        for q in released {
            println!("released {} on {}", q.container, head(&q.network, 12));
        }
        Ok(())
    }

    /// `qingluan ids status`.
    pub async fn ids_status(&self) -> anyhow::Result<()> {
        let (s, raw): (IdsStatusView, _) = self.get("/v1/ids").await?;
        if self.json {
            self.print_json(&raw);
            return Ok(());
        }
        println!(
            "{:<16} {:<5} {:<12} {:>10} {:>12} {:>8} {:>7}",
            "NETWORK", "MODE", "CAPTURE", "PACKETS", "BYTES", "DROPPED", "ALERTS"
        );
        for w in &s.watches {
            let mut name = w
                .network_name
                .clone()
                .unwrap_or_else(|| head(&w.network, 12).to_string());
            if !w.containers.is_empty() {
                name = format!("{name}:{}", w.containers.join(","));
            }
            let capture = if w.inspecting {
                w.capture.clone()
            } else {
                format!("{} (down)", w.capture)
            };
            println!(
                "{:<16} {:<5} {:<12} {:>10} {:>12} {:>8} {:>7}",
                name,
                w.mode.to_string(),
                capture,
                w.packets,
                w.bytes,
                w.dropped,
                w.alerts
            );
        }
        print_rules(&s.rules);
        for q in &s.quarantined {
            println!("quarantined: {} on {}", q.container, head(&q.network, 12));
        }
        println!("alerts log: {}", s.eve_log);
        Ok(())
    }

    /// `qingluan ids alerts`: a table, or the EVE lines with `--json`; `--follow` keeps
    /// printing new ones.
    pub async fn ids_alerts(&self, since: Option<u64>, follow: bool) -> anyhow::Result<()> {
        let mut path = match since {
            Some(s) => format!("/v1/ids/alerts?since={s}"),
            None => "/v1/ids/alerts".to_string(),
        };
        if !self.json {
            println!(
                "{:<31} {:>8} {:<30} {:<30} {:<30} ACTION",
                "TIME", "SID", "SIGNATURE", "SOURCE", "DESTINATION"
            );
        }
        loop {
            let (view, _): (AlertsView, _) = self.get(&path).await?;
            for a in &view.alerts {
                self.print_alert(a);
            }
            if !follow {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            path = format!("/v1/ids/alerts?offset={}", view.offset);
        }
    }

    fn print_alert(&self, a: &serde_json::Value) {
        if self.json {
            println!("{a}");
            return;
        }
        let end = |ip: &str, port: &serde_json::Value, who: &serde_json::Value| {
            let mut s = match port.as_u64() {
                Some(p) => format!("{ip}:{p}"),
                None => ip.to_string(),
            };
            if let Some(c) = who.as_str() {
                s = format!("{s} ({c})");
            }
            s
        };
        let q = &a["qingluan"];
        println!(
            "{:<31} {:>8} {:<30} {:<30} {:<30} {}",
            a["timestamp"].as_str().unwrap_or_default(),
            a["alert"]["signature_id"],
            a["alert"]["signature"].as_str().unwrap_or_default(),
            end(
                a["src_ip"].as_str().unwrap_or_default(),
                &a["src_port"],
                &q["src_container"]
            ),
            end(
                a["dest_ip"].as_str().unwrap_or_default(),
                &a["dest_port"],
                &q["dest_container"]
            ),
            a["alert"]["action"].as_str().unwrap_or_default(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_units() {
        assert_eq!(parse_since("10m").unwrap(), 600);
        assert_eq!(parse_since("2h").unwrap(), 7200);
        assert_eq!(parse_since("45").unwrap(), 45);
        assert!(parse_since("soon").is_err());
        assert!(parse_since("5w").is_err());
    }
}
