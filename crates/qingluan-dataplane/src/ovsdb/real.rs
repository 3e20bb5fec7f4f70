//! [`Ovs`] over the native OVSDB client.
//!
//! A monitor on the Bridge, Port, Interface, sFlow, IPFIX, QoS and Queue columns we read (and
//! `Open_vSwitch.cur_cfg` and `next_cfg`)
//! keeps a replica of those rows (`replica`): [`Ovs::snapshot`] and the planning of
//! [`Ovs::apply`] read it, so a plugin call sends ONE transaction and no reads, and `apply`
//! learns from the same stream when ovs-vswitchd has caught up. While the replica is not
//! current (before the monitor's first message, after a disconnect) reads fall back to
//! plain `select`s, which fail fast while the server is down. Changes to the bridges, ports
//! and interfaces become [`OvsEvent::Changed`]; the client's connection events become
//! `Reconnected` and `Disconnected`. Everything keeps working across an ovsdb-server restart:
//! the client reconnects by itself and the monitor is re-established with it.
//!
//! The transaction, in the order of the ops:
//! - AddBridge: insert Interface (type internal), Port and Bridge with named uuids, then
//!   `mutate` Open_vSwitch `bridges` insert (never overwriting the set), like `ovs-vsctl
//!   add-br`. A bridge's sFlow and IPFIX rows are inserted before it (or before its
//!   update) and referenced; the rows they replace are garbage-collected by OVSDB.
//! - DeleteBridge: `mutate` Open_vSwitch `bridges` delete; OVSDB garbage-collects the
//!   bridge's ports and interfaces. Their QoS and Queue rows (root tables, never collected)
//!   are deleted, after the ports let go of them.
//! - AddPort: insert Interface and Port (and its QoS and Queue rows), then `mutate` the
//!   Bridge's `ports` insert.
//! - DeletePort: `mutate` the Bridge's `ports` delete by uuid; its QoS rows are deleted.
//! - UpdateBridge / UpdatePort: `update` of the mutable columns, by uuid (the interface by
//!   its name, which is unique). A port's QoS rows are replaced only when they differ.
//! - Each existing row an op relies on is guarded by a `wait` (timeout 0) on its name, so if
//!   it vanished since we read it the transaction fails as a whole; that failure is reported
//!   as the matching "not found" error.
//! - Last, `next_cfg += 1` and a `select` of it. [`Ovs::commit`] returns once the
//!   replica shows that `next_cfg`; [`Ovs::applied`] waits until the replica's `cur_cfg`
//!   catches up (or polls it while the replica is not current).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::client::{ClientEvent, MonitorUpdate, OvsdbClient, UpdateFormat};
use super::datum::{
    map, map_of, named, opt, opt_i64, opt_str, refs, set_items, strings, strings_of, uuid, uuid_of,
};
use super::layout::Layout;
use super::replica::{Replica, Rows};
use super::{
    BridgeSpec, BridgeState, Collector, FlowExport, Ovs, OvsEvent, OvsOp, OvsdbError, PortQos,
    PortSpec, PortState, QosKind, QueueSpec, SystemInfo,
};

const DB: &str = "Open_vSwitch";
/// How long `apply` waits for ovs-vswitchd.
const APPLY_WAIT: Duration = Duration::from_secs(10);
/// Bridge columns we read and watch.
const BRIDGE_COLUMNS: &[&str] = &[
    "name",
    "datapath_type",
    "fail_mode",
    "external_ids",
    "other_config",
    "protocols",
    "ports",
    "sflow",
    "ipfix",
];
/// sFlow and IPFIX columns we read and watch.
const EXPORT_COLUMNS: &[&str] = &["targets", "sampling"];
/// Port columns we read and watch.
const PORT_COLUMNS: &[&str] = &["name", "tag", "external_ids", "interfaces", "qos"];
/// QoS columns we read and watch.
const QOS_COLUMNS: &[&str] = &["type", "other_config", "queues"];
/// Queue columns we read and watch.
const QUEUE_COLUMNS: &[&str] = &["other_config"];
/// Interface columns we read and watch.
const IFACE_COLUMNS: &[&str] = &[
    "name",
    "type",
    "external_ids",
    "mtu_request",
    "options",
    "mac",
    "ofport",
];

/// The real OVS adapter.
pub struct OvsdbOvs {
    /// The connection.
    client: OvsdbClient,
    /// Where [`OvsEvent`]s are sent.
    events: broadcast::Sender<OvsEvent>,
    /// The rows we own, kept current by the monitor.
    replica: Arc<Replica>,
    /// The task feeding the replica and turning client events and monitor updates into
    /// [`OvsEvent`]s; stopped on drop.
    watcher: tokio::task::JoinHandle<()>,
}

impl Drop for OvsdbOvs {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl OvsdbOvs {
    /// Connects to `target` (see [`OvsdbClient::connect`]) in the background; calls fail fast
    /// until the server answers. Must be called inside a tokio runtime.
    pub fn connect(target: &str) -> OvsdbOvs {
        let client = OvsdbClient::connect(target);
        let (events, _) = broadcast::channel(64);
        let replica = Arc::new(Replica::default());
        let watcher = tokio::spawn(watch(
            client.clone(),
            client.events(),
            events.clone(),
            replica.clone(),
        ));
        OvsdbOvs {
            client,
            events,
            replica,
            watcher,
        }
    }

    /// The underlying client, for raw transactions and monitors.
    pub fn client(&self) -> &OvsdbClient {
        &self.client
    }

    async fn open_vswitch(&self, columns: &[&str]) -> Result<Value, OvsdbError> {
        let r = self
            .client
            .transact(DB, vec![select("Open_vSwitch", columns)])
            .await?;
        rows(&r[0]).into_iter().next().ok_or(OvsdbError::NoRoot)
    }

    /// Names and uuids of what exists, for planning: from the replica when it is current.
    async fn existing(&self) -> Result<Existing, OvsdbError> {
        let empty = BTreeMap::new();
        if let Some(ex) = self.replica.read(|rows: &Rows| {
            let root = rows.root()?.0.clone();
            let t = |name| rows.table(name).unwrap_or(&empty);
            Some(existing_of(
                root,
                t("Bridge"),
                t("Port"),
                t("QoS"),
                t("Queue"),
            ))
        }) {
            return ex.ok_or(OvsdbError::NoRoot);
        }
        let r = self
            .client
            .transact(
                DB,
                vec![
                    select("Open_vSwitch", &[]),
                    select("Bridge", &["name", "ports"]),
                    select("Port", &["name", "qos"]),
                    select("QoS", QOS_COLUMNS),
                    select("Queue", QUEUE_COLUMNS),
                ],
            )
            .await?;
        let root = rows(&r[0])
            .first()
            .and_then(|row| uuid_of(&row["_uuid"]))
            .ok_or(OvsdbError::NoRoot)?;
        Ok(existing_of(
            root,
            &keyed(&r[1]),
            &keyed(&r[2]),
            &keyed(&r[3]),
            &keyed(&r[4]),
        ))
    }

    /// Waits until the replica holds our transaction that set `next_cfg` to `want` (the
    /// monitor's update of it may come after the transaction's reply), so a snapshot taken
    /// next shows its rows. While the replica is not current, reads select anyway.
    async fn wait_replica(&self, want: i64) -> Result<(), OvsdbError> {
        let next_cfg = |rows: &Rows| rows.root().and_then(|(_, r)| r["next_cfg"].as_i64());
        let seen = self
            .replica
            .wait_for(|rows| next_cfg(rows).filter(|c| *c >= want));
        match tokio::time::timeout(APPLY_WAIT, seen).await {
            Ok(_) => Ok(()),
            Err(_) => Err(OvsdbError::Protocol {
                method: "monitor".into(),
                detail: format!(
                    "no update with next_cfg {want} within {} s",
                    APPLY_WAIT.as_secs()
                ),
            }),
        }
    }

    /// Waits until `cur_cfg` reaches `want`: on the replica while it is current, else by
    /// polling.
    async fn wait_applied(&self, want: i64) -> Result<(), OvsdbError> {
        let start = Instant::now();
        let cur_cfg = |rows: &Rows| rows.root().and_then(|(_, r)| r["cur_cfg"].as_i64());
        let reached = self
            .replica
            .wait_for(|rows| cur_cfg(rows).filter(|c| *c >= want));
        match tokio::time::timeout(APPLY_WAIT, reached).await {
            Ok(Some(_)) => return Ok(()),
            Ok(None) => {}
            Err(_) => {
                return Err(OvsdbError::NotApplied {
                    want,
                    current: self.replica.read(cur_cfg).flatten().unwrap_or(0),
                    secs: APPLY_WAIT.as_secs(),
                })
            }
        }
        let mut pause = Duration::from_millis(5);
        loop {
            let row = self.open_vswitch(&["cur_cfg"]).await?;
            let current = row["cur_cfg"].as_i64().unwrap_or(0);
            if current >= want {
                return Ok(());
            }
            if start.elapsed() >= APPLY_WAIT {
                return Err(OvsdbError::NotApplied {
                    want,
                    current,
                    secs: APPLY_WAIT.as_secs(),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }
}

/// Feeds the replica, forwards connection events and turns monitor updates of bridges,
/// ports and interfaces into [`OvsEvent::Changed`], (re-)creating the monitor whenever it
/// is missing.
async fn watch(
    client: OvsdbClient,
    mut conn: broadcast::Receiver<ClientEvent>,
    events: broadcast::Sender<OvsEvent>,
    replica: Arc<Replica>,
) {
    let watched = [
        ("Bridge", BRIDGE_COLUMNS),
        ("Port", PORT_COLUMNS),
        ("Interface", IFACE_COLUMNS),
        ("sFlow", EXPORT_COLUMNS),
        ("IPFIX", EXPORT_COLUMNS),
        ("QoS", QOS_COLUMNS),
        ("Queue", QUEUE_COLUMNS),
        ("Open_vSwitch", &["cur_cfg", "next_cfg"]),
    ];
    let mut updates: Option<tokio::sync::mpsc::UnboundedReceiver<MonitorUpdate>> = None;
    let mut retry = Instant::now();
    loop {
        if updates.is_none() && Instant::now() >= retry {
            match client.monitor(DB, &watched, UpdateFormat::Update).await {
                Ok(rx) => updates = Some(rx),
                Err(e) => {
                    tracing::debug!(error = %e, "ovsdb monitor not established yet");
                    retry = Instant::now() + Duration::from_secs(1);
                }
            }
        }
        tokio::select! {
            // Connection events first: a disconnect must mark the replica stale before the
            // new connection's full contents (already queued behind it) make it current.
            biased;
            ev = conn.recv() => match ev {
                Ok(ClientEvent::Reconnected) => {
                    retry = Instant::now();
                    let _ = events.send(OvsEvent::Reconnected);
                }
                Ok(ClientEvent::Disconnected) => {
                    replica.stale();
                    let _ = events.send(OvsEvent::Disconnected);
                }
                // Missed connection events: tell owners to resync, to be safe.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let _ = events.send(OvsEvent::Reconnected);
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            u = async { updates.as_mut()?.recv().await }, if updates.is_some() => match u {
                Some(u) => {
                    if replica.apply(&u) && !u.initial {
                        let _ = events.send(OvsEvent::Changed);
                    }
                }
                None => {
                    replica.stale();
                    updates = None;
                }
            },
            _ = tokio::time::sleep_until(retry), if updates.is_none() => {}
        }
    }
}

/// `select` of `columns` (plus `_uuid`) of every row of `table`.
fn select(table: &str, columns: &[&str]) -> Value {
    let mut cols: Vec<&str> = columns.to_vec();
    cols.push("_uuid");
    json!({"op": "select", "table": table, "where": [], "columns": cols})
}

/// The rows of a `select` result.
fn rows(result: &Value) -> Vec<Value> {
    result["rows"].as_array().cloned().unwrap_or_default()
}

/// The rows of a `select` result (which asked for `_uuid`) by uuid.
fn keyed(result: &Value) -> BTreeMap<String, Value> {
    rows(result)
        .into_iter()
        .filter_map(|row| Some((uuid_of(&row["_uuid"])?, row)))
        .collect()
}

/// Names and uuids for planning, from the root's uuid and the bridge, port, QoS and Queue
/// rows by uuid.
fn existing_of(
    root: String,
    bridges: &BTreeMap<String, Value>,
    ports: &BTreeMap<String, Value>,
    qos: &BTreeMap<String, Value>,
    queues: &BTreeMap<String, Value>,
) -> Existing {
    let mut ex = Existing {
        root,
        ..Default::default()
    };
    for (bu, b) in bridges {
        let Some(name) = b["name"].as_str() else {
            continue;
        };
        ex.bridges.insert(name.to_string(), bu.clone());
        for pu in set_items(&b["ports"]).iter().filter_map(uuid_of) {
            let Some(p) = ports.get(&pu) else { continue };
            let Some(pname) = p["name"].as_str() else {
                continue;
            };
            ex.ports.insert(pname.to_string(), (name.to_string(), pu));
            let (spec, rows) = qos_of(p, qos, queues);
            if !rows.is_empty() {
                ex.qos.insert(pname.to_string(), (spec, rows));
            }
        }
    }
    ex
}

/// The QoS and Queue rows (table, uuid) that hold a port's shaping.
type QosRows = Vec<(&'static str, String)>;

/// The shaping of port row `p`, and the rows that hold it.
fn qos_of(
    p: &Value,
    qos: &BTreeMap<String, Value>,
    queues: &BTreeMap<String, Value>,
) -> (Option<PortQos>, QosRows) {
    let Some(qu) = set_items(&p["qos"]).first().and_then(uuid_of) else {
        return (None, Vec::new());
    };
    let mut rows = vec![("QoS", qu.clone())];
    let Some(q) = qos.get(&qu) else {
        return (None, rows);
    };
    fn number<T: std::str::FromStr>(m: &BTreeMap<String, String>, k: &str) -> Option<T> {
        m.get(k).and_then(|v| v.parse().ok())
    }
    let mut specs = BTreeMap::new();
    let pairs = match q["queues"].as_array().map(Vec::as_slice) {
        Some([t, pairs]) if t == "map" => pairs.as_array().cloned().unwrap_or_default(),
        _ => Vec::new(),
    };
    for pair in &pairs {
        let (Some(n), Some(u)) = (pair[0].as_u64(), uuid_of(&pair[1])) else {
            continue;
        };
        let c = queues
            .get(&u)
            .map(|r| map_of(&r["other_config"]))
            .unwrap_or_default();
        rows.push(("Queue", u));
        specs.insert(
            n,
            QueueSpec {
                min_rate: number(&c, "min-rate"),
                max_rate: number(&c, "max-rate").unwrap_or(0),
                burst: number(&c, "burst"),
                priority: number(&c, "priority"),
            },
        );
    }
    let c = map_of(&q["other_config"]);
    let contiguous = specs.keys().copied().eq(0..specs.len() as u64);
    let spec = match q["type"].as_str() {
        Some("linux-htb") if contiguous => Some(PortQos {
            kind: QosKind::Htb,
            max_rate: number(&c, "max-rate").unwrap_or(0),
            queues: specs.into_values().collect(),
        }),
        Some("linux-noop") => Some(PortQos::noop()),
        _ => None,
    };
    (spec, rows)
}

/// Inserts the QoS and Queue rows of `q` for port `p` (named after op `i`); returns the
/// reference to the QoS row.
fn insert_qos(t: &mut Plan, i: usize, p: &PortSpec, q: &PortQos) -> Value {
    let mut queues = Vec::new();
    for (n, spec) in q.queues.iter().enumerate() {
        let name = format!("queue{i}x{n}");
        let mut c = BTreeMap::from([("max-rate".to_string(), spec.max_rate.to_string())]);
        for (k, v) in [
            ("min-rate", spec.min_rate),
            ("burst", spec.burst),
            ("priority", spec.priority.map(u64::from)),
        ] {
            if let Some(v) = v {
                c.insert(k.to_string(), v.to_string());
            }
        }
        t.ops
            .push(json!({"op": "insert", "table": "Queue", "uuid-name": name,
            "row": {"other_config": map(&c), "external_ids": map(&p.external_ids)}}));
        queues.push(json!([n, named(&name)]));
    }
    let name = format!("qos{i}");
    let row = match q.kind {
        QosKind::Htb => {
            let c = BTreeMap::from([("max-rate".to_string(), q.max_rate.to_string())]);
            json!({"type": "linux-htb", "other_config": map(&c), "queues": ["map", queues],
                "external_ids": map(&p.external_ids)})
        }
        QosKind::Noop => json!({"type": "linux-noop", "external_ids": map(&p.external_ids)}),
    };
    t.ops
        .push(json!({"op": "insert", "table": "QoS", "uuid-name": name, "row": row}));
    named(&name)
}

/// Deletes the QoS rows of port `name` (a port that keeps existing must let go of them in
/// the same transaction: they are root rows, so a reference would fail the commit).
fn delete_qos(t: &mut Plan, ex: &Existing, name: &str) {
    for (table, u) in ex
        .qos
        .get(name)
        .map(|(_, rows)| rows.as_slice())
        .unwrap_or(&[])
    {
        t.ops
            .push(json!({"op": "delete", "table": table, "where": by_uuid(&uuid(u))}));
    }
}

/// The rows of the tables a snapshot reads, by uuid.
struct Tables<'a> {
    bridges: &'a BTreeMap<String, Value>,
    ports: &'a BTreeMap<String, Value>,
    ifaces: &'a BTreeMap<String, Value>,
    sflow: &'a BTreeMap<String, Value>,
    ipfix: &'a BTreeMap<String, Value>,
    qos: &'a BTreeMap<String, Value>,
    queues: &'a BTreeMap<String, Value>,
}

/// Every bridge with its ports, sorted by name.
fn states(t: &Tables) -> Vec<BridgeState> {
    let mut out: Vec<BridgeState> = t.bridges.values().map(|b| bridge_state(b, t)).collect();
    out.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    out
}

fn by_uuid(r: &Value) -> Value {
    json!([["_uuid", "==", r]])
}

/// The bridge's mutable columns; its flow export rows are inserted into `t` (named after
/// op `i`) and referenced.
fn bridge_columns(t: &mut Plan, i: usize, b: &BridgeSpec) -> Value {
    let mut row = json!({
        "fail_mode": opt(&b.fail_mode),
        "external_ids": map(&b.external_ids),
        "other_config": map(&b.other_config),
        "protocols": strings(&b.protocols),
    });
    let e = &b.flow_export;
    for (column, table, collector, extra) in [
        (
            "sflow",
            "sFlow",
            &e.sflow,
            json!({"header": 128, "polling": 10}),
        ),
        ("ipfix", "IPFIX", &e.ipfix, json!({})),
    ] {
        row[column] = match collector {
            Some(c) => {
                let name = format!("{column}{i}");
                let mut r = extra;
                r["targets"] = json!(c.target);
                r["sampling"] = json!(c.sampling);
                t.ops
                    .push(json!({"op": "insert", "table": table, "uuid-name": name, "row": r}));
                named(&name)
            }
            None => json!(["set", []]),
        };
    }
    row
}

/// The collector of an `sFlow` or `IPFIX` row referenced by `reference`.
fn collector_of(reference: &Value, rows: &BTreeMap<String, Value>) -> Option<Collector> {
    let row = rows.get(&set_items(reference).first().and_then(uuid_of)?)?;
    Some(Collector {
        target: strings_of(&row["targets"]).into_iter().next()?,
        sampling: opt_i64(&row["sampling"]).and_then(|n| u32::try_from(n).ok())?,
    })
}

fn port_columns(p: &PortSpec) -> Value {
    json!({"tag": opt(&p.tag), "external_ids": map(&p.external_ids)})
}

fn iface_columns(p: &PortSpec) -> Value {
    json!({
        "type": p.kind,
        "external_ids": map(&p.external_ids),
        "mtu_request": opt(&p.mtu_request),
        "options": map(&p.options),
        "mac": opt(&p.mac),
    })
}

/// Names and uuids of the rows that exist.
#[derive(Debug, Default)]
struct Existing {
    /// The Open_vSwitch row.
    root: String,
    /// Bridge name → uuid.
    bridges: BTreeMap<String, String>,
    /// Port name → (bridge name, uuid), LOCAL ports included.
    ports: BTreeMap<String, (String, String)>,
    /// Port name → its shaping as read back and the QoS and Queue rows holding it.
    qos: BTreeMap<String, (Option<PortQos>, QosRows)>,
}

impl Existing {
    fn layout(&self) -> Layout {
        let mut l = Layout::default();
        for b in self.bridges.keys() {
            l.bridges.insert(b.clone(), BTreeSet::new());
        }
        for (name, (bridge, _)) in &self.ports {
            if name != bridge {
                l.bridges
                    .entry(bridge.clone())
                    .or_default()
                    .insert(name.clone());
            }
        }
        l
    }
}

/// A planned transaction.
#[derive(Debug, Default)]
struct Plan {
    /// The operations.
    ops: Vec<Value>,
    /// Index of each guarding `wait` → the error to report if it fails.
    guards: BTreeMap<usize, OvsdbError>,
}

impl Plan {
    /// Guards an existing row (once): the transaction fails if it is gone.
    fn guard(&mut self, table: &str, row_uuid: &str, name: &str, err: OvsdbError) {
        if self.guards.values().any(|e| *e == err) {
            return;
        }
        self.guards.insert(self.ops.len(), err);
        self.ops.push(json!({
            "op": "wait", "timeout": 0, "table": table, "where": by_uuid(&uuid(row_uuid)),
            "columns": ["name"], "until": "==", "rows": [{"name": name}],
        }));
    }
}

/// A row reference: an existing uuid, or a named uuid inserted by this transaction.
#[derive(Clone, Debug)]
enum Row {
    Existing(String),
    New(String),
}

impl Row {
    fn json(&self) -> Value {
        match self {
            Row::Existing(u) => uuid(u),
            Row::New(n) => named(n),
        }
    }
}

/// Checks `ops` and plans the one transaction that applies them.
fn plan(ex: &Existing, ops: &[OvsOp]) -> Result<Plan, OvsdbError> {
    ex.layout().check(ops)?;
    let root = by_uuid(&uuid(&ex.root));
    let mut bridges: BTreeMap<String, Row> = ex
        .bridges
        .iter()
        .map(|(n, u)| (n.clone(), Row::Existing(u.clone())))
        .collect();
    let mut ports: BTreeMap<String, (String, Row)> = ex
        .ports
        .iter()
        .map(|(n, (b, u))| (n.clone(), (b.clone(), Row::Existing(u.clone()))))
        .collect();
    let bridge_of = |bridges: &BTreeMap<String, Row>, name: &str| {
        bridges
            .get(name)
            .cloned()
            .ok_or_else(|| OvsdbError::BridgeNotFound(name.to_string()))
    };
    let mut t = Plan::default();
    for (i, op) in ops.iter().enumerate() {
        match op {
            OvsOp::AddBridge(b) => {
                let (iu, pu, bu) = (
                    format!("iface{i}"),
                    format!("port{i}"),
                    format!("bridge{i}"),
                );
                t.ops.push(
                    json!({"op": "insert", "table": "Interface", "uuid-name": iu,
                    "row": {"name": b.name, "type": "internal"}}),
                );
                t.ops
                    .push(json!({"op": "insert", "table": "Port", "uuid-name": pu,
                    "row": {"name": b.name, "interfaces": named(&iu)}}));
                let mut row = bridge_columns(&mut t, i, b);
                row["name"] = json!(b.name);
                row["datapath_type"] = json!(b.datapath_type);
                row["ports"] = named(&pu);
                t.ops
                    .push(json!({"op": "insert", "table": "Bridge", "uuid-name": bu, "row": row}));
                t.ops.push(
                    json!({"op": "mutate", "table": "Open_vSwitch", "where": root,
                    "mutations": [["bridges", "insert", refs(vec![named(&bu)])]]}),
                );
                bridges.insert(b.name.clone(), Row::New(bu));
                ports.insert(b.name.clone(), (b.name.clone(), Row::New(pu)));
            }
            OvsOp::UpdateBridge(b) => {
                let r = bridge_of(&bridges, &b.name)?;
                if let Row::Existing(u) = &r {
                    t.guard(
                        "Bridge",
                        u,
                        &b.name,
                        OvsdbError::BridgeNotFound(b.name.clone()),
                    );
                }
                let row = bridge_columns(&mut t, i, b);
                t.ops.push(
                    json!({"op": "update", "table": "Bridge", "where": by_uuid(&r.json()),
                    "row": row}),
                );
            }
            OvsOp::DeleteBridge(name) => {
                if let Some(r) = bridges.remove(name) {
                    t.ops.push(
                        json!({"op": "mutate", "table": "Open_vSwitch", "where": root,
                        "mutations": [["bridges", "delete", refs(vec![r.json()])]]}),
                    );
                    for (pname, (_, pr)) in ports.iter().filter(|(_, (b, _))| b == name) {
                        if ex.qos.contains_key(pname) {
                            t.ops.push(json!({"op": "update", "table": "Port",
                                "where": by_uuid(&pr.json()), "row": {"qos": ["set", []]}}));
                            delete_qos(&mut t, ex, pname);
                        }
                    }
                    ports.retain(|_, (b, _)| b != name);
                }
            }
            OvsOp::AddPort(p) => {
                let r = bridge_of(&bridges, &p.bridge)?;
                if let Row::Existing(u) = &r {
                    t.guard(
                        "Bridge",
                        u,
                        &p.bridge,
                        OvsdbError::BridgeNotFound(p.bridge.clone()),
                    );
                }
                let (iu, pu) = (format!("iface{i}"), format!("port{i}"));
                let mut irow = iface_columns(p);
                irow["name"] = json!(p.name);
                t.ops.push(
                    json!({"op": "insert", "table": "Interface", "uuid-name": iu, "row": irow}),
                );
                let mut prow = port_columns(p);
                prow["name"] = json!(p.name);
                prow["interfaces"] = named(&iu);
                if let Some(q) = &p.qos {
                    prow["qos"] = insert_qos(&mut t, i, p, q);
                }
                t.ops
                    .push(json!({"op": "insert", "table": "Port", "uuid-name": pu, "row": prow}));
                t.ops.push(
                    json!({"op": "mutate", "table": "Bridge", "where": by_uuid(&r.json()),
                    "mutations": [["ports", "insert", refs(vec![named(&pu)])]]}),
                );
                ports.insert(p.name.clone(), (p.bridge.clone(), Row::New(pu)));
            }
            OvsOp::UpdatePort(p) => {
                let not_found = || OvsdbError::PortNotFound {
                    bridge: p.bridge.clone(),
                    name: p.name.clone(),
                };
                let r = match ports.get(&p.name) {
                    Some((b, r)) if *b == p.bridge => r.clone(),
                    _ => return Err(not_found()),
                };
                if let Row::Existing(u) = &r {
                    t.guard("Port", u, &p.name, not_found());
                }
                let mut prow = port_columns(p);
                let have = ex.qos.get(&p.name).and_then(|(q, _)| q.as_ref());
                if have != p.qos.as_ref() {
                    delete_qos(&mut t, ex, &p.name);
                    prow["qos"] = match &p.qos {
                        Some(q) => insert_qos(&mut t, i, p, q),
                        None => json!(["set", []]),
                    };
                }
                t.ops.push(
                    json!({"op": "update", "table": "Port", "where": by_uuid(&r.json()),
                    "row": prow}),
                );
                t.ops.push(json!({"op": "update", "table": "Interface",
                    "where": [["name", "==", p.name]], "row": iface_columns(p)}));
            }
            OvsOp::DeletePort { bridge, name } => {
                let on_bridge = matches!(ports.get(name), Some((b, _)) if b == bridge);
                if let (true, Some(br)) = (on_bridge && name != bridge, bridges.get(bridge)) {
                    if let Some((_, r)) = ports.remove(name) {
                        t.ops.push(json!({"op": "mutate", "table": "Bridge",
                            "where": by_uuid(&br.json()),
                            "mutations": [["ports", "delete", refs(vec![r.json()])]]}));
                        if ex.qos.contains_key(name) {
                            t.ops.push(json!({"op": "update", "table": "Port",
                                "where": by_uuid(&r.json()), "row": {"qos": ["set", []]}}));
                            delete_qos(&mut t, ex, name);
                        }
                    }
                }
            }
        }
    }
    t.ops.push(
        json!({"op": "mutate", "table": "Open_vSwitch", "where": root,
        "mutations": [["next_cfg", "+=", 1]]}),
    );
    t.ops.push(
        json!({"op": "select", "table": "Open_vSwitch", "where": root,
        "columns": ["next_cfg"]}),
    );
    Ok(t)
}

/// Reads one bridge row, its ports and its flow export.
fn bridge_state(b: &Value, t: &Tables) -> BridgeState {
    let (ports, ifaces) = (t.ports, t.ifaces);
    let name = b["name"].as_str().unwrap_or_default().to_string();
    let mut out = Vec::new();
    for pu in set_items(&b["ports"]).iter().filter_map(uuid_of) {
        let Some(p) = ports.get(&pu) else { continue };
        let pname = p["name"].as_str().unwrap_or_default().to_string();
        if pname == name {
            continue;
        }
        let iface = set_items(&p["interfaces"])
            .iter()
            .filter_map(uuid_of)
            .filter_map(|u| ifaces.get(&u))
            .find(|i| i["name"] == pname)
            .cloned()
            .unwrap_or(Value::Null);
        out.push(PortState {
            spec: PortSpec {
                bridge: name.clone(),
                name: pname,
                kind: iface["type"].as_str().unwrap_or_default().to_string(),
                tag: opt_i64(&p["tag"]).and_then(|t| u16::try_from(t).ok()),
                external_ids: map_of(&p["external_ids"]),
                mtu_request: opt_i64(&iface["mtu_request"]).and_then(|m| u32::try_from(m).ok()),
                options: map_of(&iface["options"]),
                mac: opt_str(&iface["mac"]),
                qos: qos_of(p, t.qos, t.queues).0,
            },
            ofport: opt_i64(&iface["ofport"]),
        });
    }
    out.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    BridgeState {
        spec: BridgeSpec {
            name,
            datapath_type: b["datapath_type"].as_str().unwrap_or_default().to_string(),
            fail_mode: opt_str(&b["fail_mode"]),
            external_ids: map_of(&b["external_ids"]),
            other_config: map_of(&b["other_config"]),
            protocols: strings_of(&b["protocols"]),
            flow_export: FlowExport {
                sflow: collector_of(&b["sflow"], t.sflow),
                ipfix: collector_of(&b["ipfix"], t.ipfix),
            },
        },
        ports: out,
    }
}

#[async_trait]
impl Ovs for OvsdbOvs {
    async fn snapshot(&self) -> Result<Vec<BridgeState>, OvsdbError> {
        let empty = BTreeMap::new();
        if let Some(s) = self.replica.read(|rows: &Rows| {
            let t = |name| rows.table(name).unwrap_or(&empty);
            states(&Tables {
                bridges: t("Bridge"),
                ports: t("Port"),
                ifaces: t("Interface"),
                sflow: t("sFlow"),
                ipfix: t("IPFIX"),
                qos: t("QoS"),
                queues: t("Queue"),
            })
        }) {
            return Ok(s);
        }
        let r = self
            .client
            .transact(
                DB,
                vec![
                    select("Bridge", BRIDGE_COLUMNS),
                    select("Port", PORT_COLUMNS),
                    select("Interface", IFACE_COLUMNS),
                    select("sFlow", EXPORT_COLUMNS),
                    select("IPFIX", EXPORT_COLUMNS),
                    select("QoS", QOS_COLUMNS),
                    select("Queue", QUEUE_COLUMNS),
                ],
            )
            .await?;
        let rows: Vec<BTreeMap<String, Value>> = r.iter().map(keyed).collect();
        Ok(states(&Tables {
            bridges: &rows[0],
            ports: &rows[1],
            ifaces: &rows[2],
            sflow: &rows[3],
            ipfix: &rows[4],
            qos: &rows[5],
            queues: &rows[6],
        }))
    }

    async fn commit(&self, ops: &[OvsOp]) -> Result<Option<i64>, OvsdbError> {
        if ops.is_empty() {
            return Ok(None);
        }
        let plan = plan(&self.existing().await?, ops)?;
        let results = match self.client.transact(DB, plan.ops).await {
            Ok(r) => r,
            Err(OvsdbError::Op { index, .. }) if plan.guards.contains_key(&index) => {
                return Err(plan.guards[&index].clone());
            }
            Err(e) => return Err(e),
        };
        let want = results
            .last()
            .and_then(|r| rows(r).first().and_then(|row| row["next_cfg"].as_i64()))
            .ok_or_else(|| OvsdbError::Protocol {
                method: "transact".into(),
                detail: "no next_cfg in the result".into(),
            })?;
        self.wait_replica(want).await?;
        Ok(Some(want))
    }

    async fn applied(&self, cfg: i64) -> Result<(), OvsdbError> {
        self.wait_applied(cfg).await
    }

    async fn system(&self) -> Result<SystemInfo, OvsdbError> {
        let r = self
            .open_vswitch(&[
                "ovs_version",
                "datapath_types",
                "iface_types",
                "other_config",
                "external_ids",
            ])
            .await?;
        Ok(SystemInfo {
            ovs_version: opt_str(&r["ovs_version"]),
            datapath_types: strings_of(&r["datapath_types"]),
            iface_types: strings_of(&r["iface_types"]),
            other_config: map_of(&r["other_config"]),
            external_ids: map_of(&r["external_ids"]),
        })
    }

    fn events(&self) -> broadcast::Receiver<OvsEvent> {
        self.events.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn existing() -> Existing {
        Existing {
            root: "root-u".into(),
            bridges: [("b1".to_string(), "b1-u".to_string())].into(),
            ports: [
                ("b1".to_string(), ("b1".to_string(), "b1p-u".to_string())),
                ("p1".to_string(), ("b1".to_string(), "p1-u".to_string())),
            ]
            .into(),
            qos: Default::default(),
        }
    }

    fn port(bridge: &str, name: &str) -> PortSpec {
        PortSpec {
            bridge: bridge.into(),
            name: name.into(),
            kind: "internal".into(),
            tag: Some(10),
            external_ids: [("owner".to_string(), "t".to_string())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn plans_add_bridge_like_ovs_vsctl() {
        let b = BridgeSpec {
            name: "b2".into(),
            datapath_type: "netdev".into(),
            fail_mode: Some("secure".into()),
            flow_export: FlowExport {
                sflow: Some(Collector {
                    target: "127.0.0.1:6343".into(),
                    sampling: 64,
                }),
                ipfix: None,
            },
            ..Default::default()
        };
        let t = plan(
            &existing(),
            &[OvsOp::AddBridge(b), OvsOp::AddPort(port("b2", "p2"))],
        )
        .unwrap();
        let ops: Vec<String> = t.ops.iter().map(|o| o.to_string()).collect();
        assert_eq!(
            ops,
            [
                r#"{"op":"insert","row":{"name":"b2","type":"internal"},"table":"Interface","uuid-name":"iface0"}"#,
                r#"{"op":"insert","row":{"interfaces":["named-uuid","iface0"],"name":"b2"},"table":"Port","uuid-name":"port0"}"#,
                r#"{"op":"insert","row":{"header":128,"polling":10,"sampling":64,"targets":"127.0.0.1:6343"},"table":"sFlow","uuid-name":"sflow0"}"#,
                r#"{"op":"insert","row":{"datapath_type":"netdev","external_ids":["map",[]],"fail_mode":"secure","ipfix":["set",[]],"name":"b2","other_config":["map",[]],"ports":["named-uuid","port0"],"protocols":["set",[]],"sflow":["named-uuid","sflow0"]},"table":"Bridge","uuid-name":"bridge0"}"#,
                r#"{"mutations":[["bridges","insert",["set",[["named-uuid","bridge0"]]]]],"op":"mutate","table":"Open_vSwitch","where":[["_uuid","==",["uuid","root-u"]]]}"#,
                r#"{"op":"insert","row":{"external_ids":["map",[["owner","t"]]],"mac":["set",[]],"mtu_request":["set",[]],"name":"p2","options":["map",[]],"type":"internal"},"table":"Interface","uuid-name":"iface1"}"#,
                r#"{"op":"insert","row":{"external_ids":["map",[["owner","t"]]],"interfaces":["named-uuid","iface1"],"name":"p2","tag":10},"table":"Port","uuid-name":"port1"}"#,
                r#"{"mutations":[["ports","insert",["set",[["named-uuid","port1"]]]]],"op":"mutate","table":"Bridge","where":[["_uuid","==",["named-uuid","bridge0"]]]}"#,
                r#"{"mutations":[["next_cfg","+=",1]],"op":"mutate","table":"Open_vSwitch","where":[["_uuid","==",["uuid","root-u"]]]}"#,
                r#"{"columns":["next_cfg"],"op":"select","table":"Open_vSwitch","where":[["_uuid","==",["uuid","root-u"]]]}"#,
            ]
        );
        assert!(t.guards.is_empty());
    }

    #[test]
    fn guards_existing_rows_once_and_deletes_by_uuid() {
        let t = plan(
            &existing(),
            &[
                OvsOp::AddPort(port("b1", "p2")),
                OvsOp::AddPort(port("b1", "p3")),
                OvsOp::UpdatePort(port("b1", "p1")),
                OvsOp::DeletePort {
                    bridge: "b1".into(),
                    name: "p2".into(),
                },
                OvsOp::DeletePort {
                    bridge: "b1".into(),
                    name: "nosuch".into(),
                },
                OvsOp::DeleteBridge("b1".into()),
                OvsOp::DeleteBridge("b1".into()),
            ],
        )
        .unwrap();
        let guards: Vec<(usize, String)> =
            t.guards.iter().map(|(i, e)| (*i, e.to_string())).collect();
        assert_eq!(
            guards,
            [
                (0, "bridge b1 not found".to_string()),
                (7, "port p1 not found on bridge b1".to_string())
            ]
        );
        assert_eq!(t.ops[7]["op"], "wait");
        assert_eq!(
            t.ops[7]["where"],
            json!([["_uuid", "==", ["uuid", "p1-u"]]])
        );
        assert_eq!(
            t.ops[10]["mutations"],
            json!([["ports", "delete", ["set", [["named-uuid", "port0"]]]]])
        );
        assert_eq!(
            t.ops[11]["mutations"],
            json!([["bridges", "delete", ["set", [["uuid", "b1-u"]]]]])
        );
        assert_eq!(
            t.ops.len(),
            14,
            "deleting twice or what is gone adds nothing"
        );
    }

    #[test]
    fn refuses_before_planning() {
        let e = plan(&existing(), &[OvsOp::AddPort(port("nosuch", "x"))]).unwrap_err();
        assert_eq!(e.to_string(), "bridge nosuch not found");
        let e = plan(&existing(), &[OvsOp::AddPort(port("b1", "p1"))]).unwrap_err();
        assert_eq!(e.to_string(), "port p1 already exists on bridge b1");
    }
}
