//! OVS adapter: bridges and ports in OVSDB, through our native JSON-RPC client.
//!
//! Concept: the domain describes bridges and ports as plain specs ([`BridgeSpec`],
//! [`PortSpec`]), reads what exists with [`Ovs::snapshot`] and asks for the differences as
//! [`OvsOp`]s. [`Ovs::apply`] runs ALL of them in ONE transaction and then waits until
//! ovs-vswitchd has applied it (it bumps `next_cfg` in the same transaction and waits for
//! `cur_cfg` to reach it, like `ovs-vsctl`), so flows can name the new ports right away.
//!
//! Rules:
//! - Every object we create carries `external_ids` naming its owner (on Port AND Interface
//!   rows); [`Ovs::snapshot`] returns every bridge and the caller filters by owner.
//! - Ops are checked in order, as the transaction will run them: adding a bridge or port
//!   that exists, or updating or adding to one that does not, fails the whole apply with an
//!   error naming it (`bridge qlb-1234 not found`) and changes nothing. Deleting what is
//!   already gone is not an error, so teardown and reconcile stay idempotent.
//! - The checks hold at commit time too: the transaction carries `wait` operations on the
//!   rows it relies on, so a concurrent change fails it instead of half-applying it.
//! - A bridge's `datapath_type` is set when it is created and never updated.
//! - [`OvsdbOvs`] is the real thing; [`FakeOvs`] is the recording fake for domain tests and
//!   follows the same rules.

mod client;
mod datum;
mod error;
mod fake;
mod framing;
mod layout;
mod real;
mod replica;

pub use client::{ClientEvent, MonitorUpdate, OvsdbClient, UpdateFormat};
pub use error::OvsdbError;
pub use fake::FakeOvs;
pub use real::OvsdbOvs;

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// A bridge as we want it (or as read back).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct BridgeSpec {
    /// Bridge name; its own internal (LOCAL) port and interface have the same name.
    pub name: String,
    /// `netdev` (userspace) or `system` (kernel); set at creation only.
    pub datapath_type: String,
    /// `secure` or `standalone`; `None` = OVS default (standalone).
    pub fail_mode: Option<String>,
    /// Ownership tags.
    pub external_ids: BTreeMap<String, String>,
    /// Bridge `other_config` (e.g. `hwaddr`).
    pub other_config: BTreeMap<String, String>,
    /// OpenFlow versions enabled, e.g. `OpenFlow13`; empty = OVS default (all on OVS 3.1).
    pub protocols: Vec<String>,
    /// OVS's own sFlow and IPFIX export from this bridge.
    #[serde(default)]
    pub flow_export: FlowExport,
}

/// Where a bridge exports sampled packets: OVS's sFlow agent (`sFlow` row, sampled headers
/// of 128 bytes and interface counters every 10 s) and its IPFIX exporter (`IPFIX` row).
/// Each row is referenced by the bridge only, so OVSDB drops it when the bridge lets go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct FlowExport {
    /// The sFlow collector, if any.
    pub sflow: Option<Collector>,
    /// The IPFIX collector, if any.
    pub ipfix: Option<Collector>,
}

/// A flow collector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collector {
    /// `address:port` (UDP).
    pub target: String,
    /// One packet in `sampling` is exported.
    pub sampling: u32,
}

/// A port (with its single interface of the same name) as we want it (or as read back).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PortSpec {
    /// Bridge it belongs to.
    pub bridge: String,
    /// Port and interface name (unique across all bridges).
    pub name: String,
    /// Interface type: `""` (system device, e.g. a veth), `internal`, `vxlan`, `patch`.
    pub kind: String,
    /// Access VLAN tag; `None` = trunk/untagged.
    pub tag: Option<u16>,
    /// Ownership tags, written on both the Port and the Interface row (read from the Port).
    pub external_ids: BTreeMap<String, String>,
    /// Interface `mtu_request`; `None` = OVS default.
    pub mtu_request: Option<u32>,
    /// Interface `options` (e.g. `remote_ip`, `key`, `peer`).
    pub options: BTreeMap<String, String>,
    /// Interface `mac` (internal ports): the MAC the interface is given; `None` = OVS picks.
    #[serde(default)]
    pub mac: Option<String>,
    /// Shaping of what OVS sends out of this port, if any.
    #[serde(default)]
    pub qos: Option<PortQos>,
}

/// Shaping of what OVS sends out of a port: a `linux-htb` QoS row (OVS installs a kernel HTB
/// qdisc on the port's device) with its queues. QoS and Queue are root tables, so the
/// adapter deletes the rows it replaces; they carry the port's `external_ids`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortQos {
    /// `linux-htb`, or `linux-noop`: OVS leaves the device's qdisc to us.
    #[serde(default)]
    pub kind: QosKind,
    /// The port's total rate in bit/s (`other_config:max-rate`).
    pub max_rate: u64,
    /// The queues, numbered from 0 (queue 0 is where unclassified traffic goes).
    pub queues: Vec<QueueSpec>,
}

/// The QoS type of a port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum QosKind {
    /// OVS installs an HTB with the queues.
    #[default]
    Htb,
    /// OVS does not touch the device's qdisc (no rate, no queues).
    Noop,
}

impl PortQos {
    /// A port whose qdisc OVS must leave alone (we shape it ourselves).
    pub fn noop() -> PortQos {
        PortQos {
            kind: QosKind::Noop,
            max_rate: 0,
            queues: Vec::new(),
        }
    }
}

/// One HTB class of a [`PortQos`]; rates in bit/s, burst in bits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct QueueSpec {
    /// Guaranteed rate (`min-rate`); `None`: OVS's default.
    pub min_rate: Option<u64>,
    /// Ceiling (`max-rate`).
    pub max_rate: u64,
    /// Bucket size (`burst`); `None`: OVS's default.
    pub burst: Option<u64>,
    /// HTB priority (`priority`, lower is served first); `None`: OVS's default.
    pub priority: Option<u32>,
}

/// A port as read back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortState {
    /// Its configuration.
    pub spec: PortSpec,
    /// OpenFlow port number once ovs-vswitchd assigned one (`-1` when the interface failed).
    pub ofport: Option<i64>,
}

/// A bridge as read back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeState {
    /// Its configuration.
    pub spec: BridgeSpec,
    /// Its ports sorted by name, without the bridge's own LOCAL internal port.
    pub ports: Vec<PortState>,
}

/// One change; [`Ovs::apply`] runs a list of them in one transaction, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OvsOp {
    /// Create a bridge with its LOCAL internal port, like `ovs-vsctl add-br`.
    AddBridge(BridgeSpec),
    /// Set a bridge's `fail_mode`, `external_ids`, `other_config`, `protocols` and flow
    /// export.
    UpdateBridge(BridgeSpec),
    /// Remove a bridge; its ports and interfaces go with it, and their QoS rows. No-op if
    /// it does not exist.
    DeleteBridge(String),
    /// Create a port with its interface on an existing bridge.
    AddPort(PortSpec),
    /// Set a port's `tag` and `external_ids` and its interface's `type`, `external_ids`,
    /// `mtu_request` and `options`; its QoS rows are replaced when they differ.
    UpdatePort(PortSpec),
    /// Remove a port from its bridge, and its QoS rows. No-op if it is not there.
    DeletePort {
        /// The bridge.
        bridge: String,
        /// The port.
        name: String,
    },
}

/// Facts about the switch, from the Open_vSwitch row.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemInfo {
    /// OVS version, once ovs-vswitchd has reported it.
    pub ovs_version: Option<String>,
    /// Datapath types ovs-vswitchd supports (`netdev`, `system`); empty until it runs.
    pub datapath_types: Vec<String>,
    /// Interface types ovs-vswitchd supports.
    pub iface_types: Vec<String>,
    /// Open_vSwitch `other_config` (e.g. `userspace-tso-enable`).
    pub other_config: BTreeMap<String, String>,
    /// Open_vSwitch `external_ids` (e.g. `system-id`).
    pub external_ids: BTreeMap<String, String>,
}

/// What owners of derived state hear about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OvsEvent {
    /// The OVSDB connection came back after being lost (or after failed first attempts):
    /// anything may have changed, resync.
    Reconnected,
    /// The OVSDB connection was lost; calls fail fast until [`OvsEvent::Reconnected`].
    Disconnected,
    /// A bridge, port or interface changed (ours included, and `ofport` assignments).
    Changed,
}

/// OVSDB, as the domain sees it.
#[async_trait]
pub trait Ovs: Send + Sync {
    /// Every bridge with its ports, `external_ids` included, sorted by name.
    async fn snapshot(&self) -> Result<Vec<BridgeState>, OvsdbError>;
    /// All `ops` in ONE transaction, then waits (at most 10 s) until ovs-vswitchd has
    /// applied it. Nothing happens for an empty slice.
    async fn apply(&self, ops: &[OvsOp]) -> Result<(), OvsdbError> {
        match self.commit(ops).await? {
            Some(cfg) => self.applied(cfg).await,
            None => Ok(()),
        }
    }
    /// All `ops` in ONE transaction, without waiting for ovs-vswitchd: returns the
    /// configuration number to pass to [`Ovs::applied`] (`None` for an empty slice). Once it
    /// returns, [`Ovs::snapshot`] shows the transaction's rows.
    async fn commit(&self, ops: &[OvsOp]) -> Result<Option<i64>, OvsdbError>;
    /// Waits (at most 10 s) until ovs-vswitchd has applied configuration `cfg`.
    async fn applied(&self, cfg: i64) -> Result<(), OvsdbError>;
    /// Facts about the switch.
    async fn system(&self) -> Result<SystemInfo, OvsdbError>;
    /// Connection and change events.
    fn events(&self) -> tokio::sync::broadcast::Receiver<OvsEvent>;
}

/// `unix:$OVS_RUNDIR/db.sock`, or `unix:/run/openvswitch/db.sock` without `OVS_RUNDIR`.
pub fn default_db_target() -> String {
    let dir = std::env::var("OVS_RUNDIR").unwrap_or_else(|_| "/run/openvswitch".into());
    format!("unix:{dir}/db.sock")
}
