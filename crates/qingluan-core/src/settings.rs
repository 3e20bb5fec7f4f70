//! Daemon settings that shape the domain: instance name, default pools, datapath, MTU.
//!
//! The binary reads `/etc/qingluan/config.toml` into [`Settings`]; every key is optional and
//! defaults to what a single-host user wants. `docs/configuration.md` documents each key.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Everything the domain needs to know about how this daemon is configured.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Instance name: the network driver is served as `<name>`, the IPAM driver as
    /// `<name>Ipam`; it also names the nftables table and tags every OVS object we own.
    pub name: String,
    /// Prefix (1 to 3 characters) of every link and bridge this instance creates:
    /// `<prefix>b<net>` bridges, `<prefix>v<ep>`/`<prefix>c<ep>` veths. Two instances on one
    /// host need different prefixes.
    pub prefix: String,
    /// Default MTU of container interfaces when the network sets none.
    pub mtu: u32,
    /// Datapath of the bridges: "auto" (kernel when the openvswitch module is loaded,
    /// userspace `netdev` otherwise), "netdev" or "system".
    pub datapath: String,
    /// Model used when `docker network create` gives no `--opt model`.
    pub default_model: String,
    /// IPAM settings.
    pub ipam: IpamSettings,
    /// This host's underlay address: the VXLAN tunnel endpoint. On the userspace datapath
    /// the interface holding it becomes a port of the uplink bridge and the address moves to
    /// the bridge (`uplink.rs`).
    pub underlay_ip: Option<std::net::IpAddr>,
    /// How vxlan networks reach other hosts on the userspace datapath (the kernel datapath
    /// always uses OVS's tunnel port).
    pub overlay: Overlay,
    /// The default interface of flat and vlan networks created without `--opt parent`;
    /// `None`: the interface holding `underlay_ip`.
    pub uplink: Option<String>,
    /// sFlow and IPFIX export of every bridge that holds containers (not the uplink
    /// bridge, which would report each packet again as underlay traffic).
    pub flow_export: qingluan_dataplane::ovsdb::FlowExport,
    /// Traffic scheduling: the DSCP mark of each priority class.
    pub qos: crate::qos::QosSettings,
    /// When the daemon runs as a Docker managed plugin: the plugin's reference as Docker
    /// shows it (`qingluan:latest`). Both drivers then go by that one name in Docker, served
    /// on one socket.
    pub managed: Option<String>,
}

/// The transport of vxlan networks between hosts on the userspace datapath
/// (`[cluster] overlay`); the kernel datapath always uses OVS's tunnel port.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Overlay {
    /// A kernel VXLAN device per VNI as a port of the overlay bridge, its forwarding entries
    /// written from the cluster store; the underlay address stays where it is. The kernel
    /// segments and encapsulates OVS's TSO frames, which OVS 3.1's userspace tunnel port
    /// cannot: about 10 times the throughput (`docs/performance.md`, "The overlay"). Where
    /// the underlay's interface also carries flat or vlan networks, OVS's tunnel port
    /// serves instead (`modes::vxlan::kernel_overlay`).
    #[default]
    Kernel,
    /// One flow-based OVS tunnel port for every VNI; the underlay address moves onto the
    /// uplink bridge (OVS routes tunnel packets only from its own bridges).
    Ovs,
}

/// IPAM settings: default pools and the pool used when none is named.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IpamSettings {
    /// Pool used when `--ipam-opt pool=` is absent.
    pub default_pool: String,
    /// Pools created at first start when they do not exist yet (existing pools are kept).
    pub pools: BTreeMap<String, PoolSettings>,
}

/// One configured resource pool.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolSettings {
    /// The supernet subnets are carved from.
    pub subnet: IpNet,
    /// Prefix length of carved subnets.
    #[serde(default = "default_prefix")]
    pub prefix: u8,
}

fn default_prefix() -> u8 {
    24
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            name: "qingluan".into(),
            prefix: "ql".into(),
            mtu: 1500,
            datapath: "auto".into(),
            default_model: "nat".into(),
            ipam: IpamSettings::default(),
            underlay_ip: None,
            overlay: Overlay::Kernel,
            uplink: None,
            flow_export: Default::default(),
            qos: Default::default(),
            managed: None,
        }
    }
}

impl Default for IpamSettings {
    fn default() -> Self {
        let pool = |s: &str| PoolSettings {
            subnet: s.parse().expect("valid default pool"),
            prefix: 24,
        };
        let pools = [
            ("nat", pool("10.240.0.0/16")),
            ("nonat", pool("10.241.0.0/16")),
            ("vlan", pool("10.242.0.0/16")),
            ("vxlan", pool("10.243.0.0/16")),
            ("flat", pool("0.0.0.0/0")),
        ];
        IpamSettings {
            default_pool: "nat".into(),
            pools: pools.into_iter().map(|(n, p)| (n.to_string(), p)).collect(),
        }
    }
}

impl Settings {
    /// Name of the IPAM driver served next to the network driver.
    pub fn ipam_name(&self) -> String {
        format!("{}Ipam", self.name)
    }

    /// The network driver's name in Docker: `<name>`, or the managed plugin's reference.
    pub fn docker_driver(&self) -> String {
        self.managed.clone().unwrap_or_else(|| self.name.clone())
    }

    /// The IPAM driver's name in Docker: `<name>Ipam`, or the managed plugin's reference.
    pub fn docker_ipam(&self) -> String {
        self.managed.clone().unwrap_or_else(|| self.ipam_name())
    }
}
