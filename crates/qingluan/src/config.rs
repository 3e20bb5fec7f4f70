//! `/etc/qingluan/config.toml`: every key optional; `docs/configuration.md` lists them all.

use std::path::{Path, PathBuf};

use anyhow::Context;
use qingluan_core::qos::QosSettings;
use qingluan_core::settings::{IpamSettings, Settings};
use qingluan_dataplane::ovsdb::{Collector, FlowExport};
use serde::Deserialize;

/// The whole configuration file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[daemon]`: names, sockets, state.
    pub daemon: DaemonConfig,
    /// `[network]`: defaults of new networks.
    pub network: NetworkConfig,
    /// `[ovs]`: how to reach OVS and which datapath to use.
    pub ovs: OvsConfig,
    /// `[store]`: where state lives.
    pub store: StoreConfig,
    /// `[ipam]`: pools.
    pub ipam: IpamSettings,
    /// `[cluster]`: how this host presents itself to the others.
    pub cluster: ClusterConfig,
    /// `[monitoring]`: the Prometheus endpoint and flow export.
    pub monitoring: MonitoringConfig,
    /// `[qos]`: traffic scheduling.
    pub qos: QosSettings,
    /// `[ids]`: the intrusion detector.
    pub ids: IdsConfig,
}

/// `[ids]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdsConfig {
    /// Where alerts are appended as EVE JSON lines.
    pub eve_log: PathBuf,
    /// The rule files loaded when `ids enable` names none and no rule set was ever loaded
    /// (a path whose file name may hold one `*`).
    pub default_rules: String,
    /// Distinct destination ports from one source that make a port scan...
    pub scan_ports: usize,
    /// ...within this many seconds.
    pub scan_window_secs: u64,
    /// SYNs to one destination within one second that make a SYN flood.
    pub syn_flood_per_sec: u32,
    /// ICMP echo requests from one source within one second that make an ICMP flood.
    pub icmp_flood_per_sec: u32,
    /// In IPS mode, an alert of this priority or a more urgent one (a smaller number)
    /// quarantines its source; a `drop` rule's alert always does. Scans and floods are 2.
    pub quarantine_priority: u8,
    /// `$HOME_NET` of the rules (a Suricata address list); default the private ranges.
    pub home_net: Option<String>,
}

impl Default for IdsConfig {
    fn default() -> Self {
        IdsConfig {
            eve_log: "/var/log/qingluan/eve.json".into(),
            default_rules: "/etc/qingluan/rules/*.rules".into(),
            scan_ports: 50,
            scan_window_secs: 10,
            syn_flood_per_sec: 500,
            icmp_flood_per_sec: 200,
            quarantine_priority: 2,
            home_net: None,
        }
    }
}

/// `[monitoring]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitoringConfig {
    /// Where `/metrics` is served (`address:port`); `""` turns it off.
    pub listen: String,
    /// Whether `listen` may be an address other hosts can reach.
    pub allow_remote: bool,
    /// sFlow collector (`address:port`); `None`: no sFlow.
    pub sflow: Option<String>,
    /// sFlow samples one packet in this many.
    pub sflow_sampling: u32,
    /// IPFIX collector (`address:port`); `None`: no IPFIX.
    pub ipfix: Option<String>,
    /// IPFIX samples one packet in this many.
    pub ipfix_sampling: u32,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        MonitoringConfig {
            listen: "127.0.0.1:9465".into(),
            allow_remote: false,
            sflow: None,
            sflow_sampling: 64,
            ipfix: None,
            ipfix_sampling: 64,
        }
    }
}

impl MonitoringConfig {
    /// The address to serve `/metrics` on, or `None` when it is turned off.
    pub fn listen_addr(&self) -> anyhow::Result<Option<std::net::SocketAddr>> {
        if self.listen.is_empty() {
            return Ok(None);
        }
        let addr: std::net::SocketAddr = self.listen.parse().map_err(|_| {
            anyhow::anyhow!(
                "monitoring.listen {:?} is not an address and port such as \"127.0.0.1:9465\" (\"\" turns the endpoint off)",
                self.listen
            )
        })?;
        if !addr.ip().is_loopback() && !self.allow_remote {
            anyhow::bail!(
                "monitoring.listen {addr} can be reached from other hosts: set monitoring.allow_remote = true to serve metrics there, or listen on 127.0.0.1"
            );
        }
        Ok(Some(addr))
    }

    /// The flow export of every bridge that holds containers.
    pub fn flow_export(&self) -> anyhow::Result<FlowExport> {
        let collector = |key: &str, target: &Option<String>, sampling: u32| {
            let Some(target) = target else {
                return Ok(None);
            };
            let addr: std::net::SocketAddr = target.parse().map_err(|_| {
                anyhow::anyhow!(
                    "monitoring.{key} {target:?} is not an address and port such as \"10.0.0.5:6343\""
                )
            })?;
            if sampling == 0 {
                anyhow::bail!(
                    "monitoring.{key}_sampling must be 1 or more (one packet in N is sampled)"
                );
            }
            Ok(Some(Collector {
                target: addr.to_string(),
                sampling,
            }))
        };
        Ok(FlowExport {
            sflow: collector("sflow", &self.sflow, self.sflow_sampling)?,
            ipfix: collector("ipfix", &self.ipfix, self.ipfix_sampling)?,
        })
    }
}

/// `[cluster]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Host ID in the cluster; default the hostname.
    pub host_id: Option<String>,
    /// Underlay address for tunnels; default the address of the default route's interface.
    pub underlay_ip: Option<std::net::IpAddr>,
    /// How long a host may be down before its addresses on cluster networks are reclaimed.
    pub reclaim_after_secs: u64,
    /// The transport of vxlan networks on the userspace datapath: `kernel` (default) or
    /// `ovs`.
    pub overlay: qingluan_core::settings::Overlay,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            host_id: None,
            underlay_ip: None,
            reclaim_after_secs: 300,
            overlay: Default::default(),
        }
    }
}

/// `[daemon]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    /// Driver name (`--driver NAME`); the IPAM driver is `NAMEIpam`.
    pub name: String,
    /// Prefix of links and bridges we create (1–3 characters).
    pub prefix: String,
    /// Where Docker looks for plugin sockets.
    pub plugin_dir: PathBuf,
    /// The management socket the CLI talks to (mode 0600).
    pub api_socket: PathBuf,
    /// Docker Engine API socket (used in the background only, never inside a plugin call).
    pub docker_socket: PathBuf,
    /// Log filter (`info`, `debug`, `qingluan=debug`, ...); `RUST_LOG` wins.
    pub log: String,
    /// `text` (colours only on a terminal) or `json` (one object per line, for log
    /// shippers); `qingluan daemon --log-format` wins.
    pub log_format: String,
    /// Seconds between garbage collections against the Engine API, and the age an endpoint
    /// or subnet Docker does not know must reach before it is collected.
    pub gc_secs: u64,
    /// The daemon's nice value (-20 to 19), set at start for all its threads and the
    /// processes it runs; 0 leaves it as started.
    pub nice: i32,
    /// Set when the daemon runs as a Docker managed plugin: the plugin's reference as Docker
    /// shows it (`qingluan:latest`), which users type for both `--driver` and
    /// `--ipam-driver`; the daemon then serves both drivers on `<plugin_dir>/qingluan.sock`.
    /// The environment variable `QINGLUAN_MANAGED_PLUGIN` wins.
    pub managed_plugin: Option<String>,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            name: "qingluan".into(),
            prefix: "ql".into(),
            plugin_dir: "/run/docker/plugins".into(),
            api_socket: "/run/qingluan/qingluan.sock".into(),
            docker_socket: "/var/run/docker.sock".into(),
            log: "info".into(),
            log_format: "text".into(),
            gc_secs: 60,
            nice: -10,
            managed_plugin: None,
        }
    }
}

/// `[network]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Container MTU when a network sets none.
    pub mtu: u32,
    /// Model when `--opt model` is absent.
    pub default_model: String,
    /// Interface of flat and vlan networks created without `--opt parent`.
    pub uplink: Option<String>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            mtu: 1500,
            default_model: "nat".into(),
            uplink: None,
        }
    }
}

/// `[ovs]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OvsConfig {
    /// OVSDB server, `unix:/path` or `tcp:host:port`; default `$OVS_RUNDIR/db.sock` or
    /// `/run/openvswitch/db.sock`.
    pub db: Option<String>,
    /// Directory of the bridges' OpenFlow management sockets (`<bridge>.mgmt`); default
    /// `$OVS_RUNDIR` or `/run/openvswitch`.
    pub rundir: Option<PathBuf>,
    /// `auto`, `netdev` or `system`.
    pub datapath: String,
}

impl Default for OvsConfig {
    fn default() -> Self {
        OvsConfig {
            db: None,
            rundir: None,
            datapath: "auto".into(),
        }
    }
}

/// `[store]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `redb` (embedded, the default) or `etcd` (builds with the `etcd` feature).
    pub backend: String,
    /// The redb database file.
    pub path: PathBuf,
    /// etcd endpoints, `http://host:port` or `https://host:port`.
    pub endpoints: Vec<String>,
    /// Prefix of every qingluan key in etcd.
    pub namespace: String,
    /// CA certificate (PEM) for https endpoints.
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd client-certificate authentication.
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    pub key: Option<PathBuf>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: "redb".into(),
            path: "/var/lib/qingluan/state.redb".into(),
            endpoints: vec!["http://127.0.0.1:2379".into()],
            namespace: "/qingluan/".into(),
            ca: None,
            cert: None,
            key: None,
        }
    }
}

/// Refuses a log format other than `text` and `json`.
pub fn check_log_format(format: &str) -> anyhow::Result<()> {
    if !["text", "json"].contains(&format) {
        anyhow::bail!("log format {format:?} must be text or json");
    }
    Ok(())
}

impl Config {
    /// Reads the file; a missing file means all defaults.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut c = Config::default();
                c.managed_from_env();
                return Ok(c);
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let mut c: Config =
            toml::from_str(&text).with_context(|| format!("invalid config {}", path.display()))?;
        c.managed_from_env();
        c.validate()?;
        Ok(c)
    }

    /// `QINGLUAN_MANAGED_PLUGIN` (set by the managed plugin's config.json) overrides
    /// `daemon.managed_plugin`.
    fn managed_from_env(&mut self) {
        if let Some(v) = std::env::var("QINGLUAN_MANAGED_PLUGIN")
            .ok()
            .filter(|v| !v.is_empty())
        {
            self.daemon.managed_plugin = Some(v);
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        let p = &self.daemon.prefix;
        if p.is_empty()
            || p.len() > 3
            || !p
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            anyhow::bail!("daemon.prefix {p:?} must be 1 to 3 lowercase letters or digits");
        }
        let n = &self.daemon.name;
        if n.is_empty() || !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            anyhow::bail!("daemon.name {n:?} must be letters, digits or '_'");
        }
        check_log_format(&self.daemon.log_format)?;
        if !(-20..=19).contains(&self.daemon.nice) {
            anyhow::bail!(
                "daemon.nice {} must be between -20 and 19",
                self.daemon.nice
            );
        }
        if !["auto", "netdev", "system"].contains(&self.ovs.datapath.as_str()) {
            anyhow::bail!(
                "ovs.datapath {:?} must be auto, netdev or system",
                self.ovs.datapath
            );
        }
        match self.store.backend.as_str() {
            "redb" => {}
            "etcd" if cfg!(feature = "etcd") => {
                if self.store.endpoints.is_empty() {
                    anyhow::bail!("store.endpoints must list at least one etcd endpoint");
                }
            }
            "etcd" => {
                anyhow::bail!("store.backend \"etcd\" needs qingluan built with --features etcd")
            }
            other => {
                anyhow::bail!("store.backend {other:?} is not available (available: redb, etcd)")
            }
        }
        if !(68..=65535).contains(&self.network.mtu) {
            anyhow::bail!(
                "network.mtu {} must be between 68 and 65535",
                self.network.mtu
            );
        }
        self.monitoring.listen_addr()?;
        self.monitoring.flow_export()?;
        self.qos.check().map_err(anyhow::Error::msg)?;
        if self.ids.scan_ports == 0 || self.ids.scan_window_secs == 0 {
            anyhow::bail!("ids.scan_ports and ids.scan_window_secs must be at least 1");
        }
        Ok(())
    }

    /// The domain's view of the configuration.
    pub fn settings(&self) -> Settings {
        Settings {
            name: self.daemon.name.clone(),
            prefix: self.daemon.prefix.clone(),
            mtu: self.network.mtu,
            datapath: self.ovs.datapath.clone(),
            default_model: self.network.default_model.clone(),
            ipam: self.ipam.clone(),
            underlay_ip: self.cluster.underlay_ip,
            overlay: self.cluster.overlay,
            uplink: self.network.uplink.clone(),
            flow_export: self.monitoring.flow_export().unwrap_or_default(),
            qos: self.qos.clone(),
            managed: self.daemon.managed_plugin.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../../packaging/config.toml");
        let c: Config = toml::from_str(text).unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn nice_is_a_nice_value() {
        let parse = |text: &str| toml::from_str::<Config>(text).unwrap().validate();
        assert!(parse("[daemon]\nnice = 0").is_ok());
        let e = parse("[daemon]\nnice = -21").unwrap_err();
        assert_eq!(e.to_string(), "daemon.nice -21 must be between -20 and 19");
    }

    #[test]
    fn metrics_listen_only_on_loopback_unless_allowed() {
        let parse = |text: &str| {
            let c: Config = toml::from_str(text).unwrap();
            c.validate().map(|_| c.monitoring.listen_addr().unwrap())
        };
        assert_eq!(parse("").unwrap(), Some("127.0.0.1:9465".parse().unwrap()));
        assert_eq!(parse("[monitoring]\nlisten = \"\"").unwrap(), None);
        assert_eq!(
            parse("[monitoring]\nlisten = \"[::1]:9000\"").unwrap(),
            Some("[::1]:9000".parse().unwrap())
        );
        let e = parse("[monitoring]\nlisten = \"0.0.0.0:9465\"").unwrap_err();
        assert!(e.to_string().contains("allow_remote"), "{e}");
        assert!(parse("[monitoring]\nlisten = \"0.0.0.0:9465\"\nallow_remote = true").is_ok());
        let e = parse("[monitoring]\nlisten = \"localhost\"").unwrap_err();
        assert!(e.to_string().contains("not an address and port"), "{e}");
    }

    #[test]
    fn flow_export_needs_an_address_and_a_rate() {
        let parse = |text: &str| {
            let c: Config = toml::from_str(text).unwrap();
            c.validate().map(|_| c.monitoring.flow_export().unwrap())
        };
        assert_eq!(parse("").unwrap(), FlowExport::default());
        let e = parse(
            "[monitoring]\nsflow = \"127.0.0.1:6343\"\nipfix = \"[::1]:4739\"\nipfix_sampling = 1",
        )
        .unwrap();
        assert_eq!(
            e.sflow,
            Some(Collector {
                target: "127.0.0.1:6343".into(),
                sampling: 64
            })
        );
        assert_eq!(e.ipfix.unwrap().sampling, 1);
        let e = parse("[monitoring]\nsflow = \"collector\"").unwrap_err();
        assert!(
            e.to_string().contains("monitoring.sflow \"collector\""),
            "{e}"
        );
        let e = parse("[monitoring]\nipfix = \"127.0.0.1:4739\"\nipfix_sampling = 0").unwrap_err();
        assert!(
            e.to_string().contains("ipfix_sampling must be 1 or more"),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<Config>("[daemon]\nnmae = \"x\"\n").is_err());
    }
}
