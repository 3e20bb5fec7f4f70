//! OVS adapter: bridges and ports in OVSDB, through our native JSON-RPC client.
//!
//! Concept: the domain describes bridges and ports as plain specs ([`BridgeSpec`],
//! [`PortSpec`]) and asks for differences as [`OvsOp`]s; [`Ovs::apply`] runs ALL of them in
//! ONE transaction and then waits until ovs-vswitchd has applied it (next_cfg/cur_cfg, like
//! `ovs-vsctl`), so flows can reference the new ports right away. Every object we create
//! carries `external_ids` naming its owner; [`Ovs::snapshot`] returns everything and the
//! caller filters by owner. [`FakeOvs`] is the recording fake for domain tests.

mod client;
mod fake;
mod real;

pub use client::{split_messages, ClientEvent, OvsdbClient, OvsdbError};
pub use fake::FakeOvs;
pub use real::OvsdbOvs;

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// A bridge as we want it (or as read back).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct BridgeSpec {
    /// Bridge name (also its internal port and interface).
    pub name: String,
    /// `netdev` (userspace) or `system` (kernel).
    pub datapath_type: String,
    /// `secure` or `standalone`; `None` = OVS default.
    pub fail_mode: Option<String>,
    /// Ownership tags.
    pub external_ids: BTreeMap<String, String>,
    /// Bridge other_config.
    pub other_config: BTreeMap<String, String>,
    /// OpenFlow versions enabled.
    pub protocols: Vec<String>,
}

/// A port (with its single interface) as we want it (or as read back).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PortSpec {
    /// Bridge it belongs to.
    pub bridge: String,
    /// Port and interface name.
    pub name: String,
    /// Interface type: `""` (system device), `internal`, `vxlan`, `patch`.
    pub kind: String,
    /// Access VLAN tag.
    pub tag: Option<u16>,
    /// Ownership tags (on both Port and Interface).
    pub external_ids: BTreeMap<String, String>,
    /// Interface MTU request.
    pub mtu_request: Option<u32>,
    /// Interface options.
    pub options: BTreeMap<String, String>,
}

/// A port as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortState {
    /// Its configuration.
    pub spec: PortSpec,
    /// OpenFlow port number, once ovs-vswitchd assigned one (-1 on error).
    pub ofport: Option<i64>,
}

/// A bridge as read back, with its ports (its own internal port excluded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeState {
    /// Its configuration.
    pub spec: BridgeSpec,
    /// Its ports.
    pub ports: Vec<PortState>,
}

/// One change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OvsOp {
    /// Create a bridge with its internal port, like `ovs-vsctl add-br`.
    AddBridge(BridgeSpec),
    /// Update a bridge's mutable columns.
    UpdateBridge(BridgeSpec),
    /// Remove a bridge (its ports go with it).
    DeleteBridge(String),
    /// Create a port with its interface.
    AddPort(PortSpec),
    /// Update a port's and its interface's mutable columns.
    UpdatePort(PortSpec),
    /// Remove a port from its bridge.
    DeletePort {
        /// The bridge.
        bridge: String,
        /// The port.
        name: String,
    },
}

/// Facts about the switch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SystemInfo {
    /// OVS version.
    pub ovs_version: Option<String>,
    /// Datapath types ovs-vswitchd supports.
    pub datapath_types: Vec<String>,
    /// Interface types ovs-vswitchd supports.
    pub iface_types: Vec<String>,
    /// Open_vSwitch other_config (e.g. `userspace-tso-enable`).
    pub other_config: BTreeMap<String, String>,
    /// Open_vSwitch external_ids.
    pub external_ids: BTreeMap<String, String>,
}

/// Connection-level events owners resync on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OvsEvent {
    /// The OVSDB connection came back.
    Reconnected,
    /// The OVSDB connection was lost.
    Disconnected,
}

/// OVSDB, as the domain sees it.
#[async_trait]
pub trait Ovs: Send + Sync {
    /// Every bridge with its ports.
    async fn snapshot(&self) -> Result<Vec<BridgeState>, OvsdbError>;
    /// All ops in one transaction, then wait for ovs-vswitchd to apply it.
    async fn apply(&self, ops: &[OvsOp]) -> Result<(), OvsdbError>;
    /// Facts about the switch.
    async fn system(&self) -> Result<SystemInfo, OvsdbError>;
    /// Connection events.
    fn events(&self) -> tokio::sync::broadcast::Receiver<OvsEvent>;
}

/// `$OVS_RUNDIR/db.sock` or `/run/openvswitch/db.sock`, as a `unix:` target.
pub fn default_db_target() -> String {
    let dir = std::env::var("OVS_RUNDIR").unwrap_or_else(|_| "/run/openvswitch".into());
    format!("unix:{dir}/db.sock")
}
