//! [`Ovs`] over the native OVSDB client.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{json, Value};

use super::client::{ClientEvent, OvsdbClient, OvsdbError};
use super::{BridgeSpec, BridgeState, Ovs, OvsEvent, OvsOp, PortSpec, PortState, SystemInfo};

const DB: &str = "Open_vSwitch";
/// How long `apply` waits for ovs-vswitchd.
const APPLY_WAIT: Duration = Duration::from_secs(10);

/// The real OVS adapter.
pub struct OvsdbOvs {
    client: OvsdbClient,
    events: tokio::sync::broadcast::Sender<OvsEvent>,
}

impl OvsdbOvs {
    /// Connects (in the background; calls fail fast until the server answers).
    pub fn connect(target: &str) -> OvsdbOvs {
        let client = OvsdbClient::connect(target);
        let (events, _) = tokio::sync::broadcast::channel(64);
        let mut rx = client.events();
        let tx = events.clone();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(ClientEvent::Reconnected) => {
                        let _ = tx.send(OvsEvent::Reconnected);
                    }
                    Ok(ClientEvent::Disconnected) => {
                        let _ = tx.send(OvsEvent::Disconnected);
                    }
                    Ok(ClientEvent::Update(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                }
            }
        });
        OvsdbOvs { client, events }
    }

    /// The underlying client (adapter tests, monitors).
    pub fn client(&self) -> &OvsdbClient {
        &self.client
    }

    async fn select(&self, table: &str, columns: &[&str]) -> Result<Vec<Value>, OvsdbError> {
        let mut cols: Vec<&str> = columns.to_vec();
        cols.push("_uuid");
        let r = self
            .client
            .transact(
                DB,
                vec![json!({"op": "select", "table": table, "where": [], "columns": cols})],
            )
            .await?;
        Ok(r[0]["rows"].as_array().cloned().unwrap_or_default())
    }

    async fn open_vswitch_uuid(&self) -> Result<String, OvsdbError> {
        let rows = self.select("Open_vSwitch", &[]).await?;
        rows.first()
            .and_then(|r| uuid_of(&r["_uuid"]))
            .ok_or_else(|| {
                OvsdbError::Schema("the Open_vSwitch table has no row (run ovs-vsctl init)".into())
            })
    }
}

fn uuid_of(v: &Value) -> Option<String> {
    match v.as_array()?.as_slice() {
        [t, u] if t == "uuid" => u.as_str().map(String::from),
        _ => None,
    }
}

/// Decodes an OVSDB set into its elements.
fn set_items(v: &Value) -> Vec<Value> {
    match v.as_array().map(Vec::as_slice) {
        Some([t, items]) if t == "set" => items.as_array().cloned().unwrap_or_default(),
        _ => vec![v.clone()],
    }
}

fn opt_str(v: &Value) -> Option<String> {
    set_items(v)
        .first()
        .and_then(|x| x.as_str().map(String::from))
}

fn opt_i64(v: &Value) -> Option<i64> {
    set_items(v).first().and_then(Value::as_i64)
}

fn map_of(v: &Value) -> BTreeMap<String, String> {
    match v.as_array().map(Vec::as_slice) {
        Some([t, pairs]) if t == "map" => pairs
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p[0].as_str()?.to_string(), p[1].as_str()?.to_string())))
            .collect(),
        _ => BTreeMap::new(),
    }
}

fn map(m: &BTreeMap<String, String>) -> Value {
    json!([
        "map",
        m.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>()
    ])
}

fn opt<T: serde::Serialize>(v: &Option<T>) -> Value {
    match v {
        Some(x) => json!(x),
        None => json!(["set", []]),
    }
}

fn strings(v: &[String]) -> Value {
    json!(["set", v])
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
    })
}

fn bridge_columns(b: &BridgeSpec) -> Value {
    json!({
        "datapath_type": b.datapath_type,
        "fail_mode": opt(&b.fail_mode),
        "external_ids": map(&b.external_ids),
        "other_config": map(&b.other_config),
        "protocols": strings(&b.protocols),
    })
}

fn by_name(name: &str) -> Value {
    json!([["name", "==", name]])
}

#[async_trait]
impl Ovs for OvsdbOvs {
    async fn snapshot(&self) -> Result<Vec<BridgeState>, OvsdbError> {
        let r = self
            .client
            .transact(
                DB,
                vec![
                    json!({"op": "select", "table": "Bridge", "where": [], "columns": ["_uuid", "name", "datapath_type", "fail_mode", "external_ids", "other_config", "protocols", "ports"]}),
                    json!({"op": "select", "table": "Port", "where": [], "columns": ["_uuid", "name", "tag", "external_ids", "interfaces"]}),
                    json!({"op": "select", "table": "Interface", "where": [], "columns": ["_uuid", "name", "type", "external_ids", "mtu_request", "options", "ofport"]}),
                ],
            )
            .await?;
        let rows = |i: usize| r[i]["rows"].as_array().cloned().unwrap_or_default();
        let ifaces: BTreeMap<String, Value> = rows(2)
            .into_iter()
            .filter_map(|row| Some((uuid_of(&row["_uuid"])?, row)))
            .collect();
        let ports: BTreeMap<String, Value> = rows(1)
            .into_iter()
            .filter_map(|row| Some((uuid_of(&row["_uuid"])?, row)))
            .collect();
        let mut out = Vec::new();
        for b in rows(0) {
            let name = b["name"].as_str().unwrap_or_default().to_string();
            let spec = BridgeSpec {
                name: name.clone(),
                datapath_type: b["datapath_type"].as_str().unwrap_or_default().to_string(),
                fail_mode: opt_str(&b["fail_mode"]),
                external_ids: map_of(&b["external_ids"]),
                other_config: map_of(&b["other_config"]),
                protocols: set_items(&b["protocols"])
                    .iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect(),
            };
            let mut bports = Vec::new();
            for pu in set_items(&b["ports"]).iter().filter_map(uuid_of) {
                let Some(p) = ports.get(&pu) else { continue };
                let pname = p["name"].as_str().unwrap_or_default().to_string();
                if pname == name {
                    continue;
                }
                let iface = set_items(&p["interfaces"])
                    .iter()
                    .filter_map(uuid_of)
                    .find_map(|u| ifaces.get(&u).cloned())
                    .unwrap_or(Value::Null);
                bports.push(PortState {
                    spec: PortSpec {
                        bridge: name.clone(),
                        name: pname,
                        kind: iface["type"].as_str().unwrap_or_default().to_string(),
                        tag: opt_i64(&p["tag"]).and_then(|t| u16::try_from(t).ok()),
                        external_ids: map_of(&p["external_ids"]),
                        mtu_request: opt_i64(&iface["mtu_request"])
                            .and_then(|m| u32::try_from(m).ok()),
                        options: map_of(&iface["options"]),
                    },
                    ofport: opt_i64(&iface["ofport"]),
                });
            }
            out.push(BridgeState {
                spec,
                ports: bports,
            });
        }
        Ok(out)
    }

    async fn apply(&self, ops: &[OvsOp]) -> Result<(), OvsdbError> {
        if ops.is_empty() {
            return Ok(());
        }
        let root = self.open_vswitch_uuid().await?;
        let snap = self.snapshot().await?;
        let mut known: std::collections::BTreeSet<String> =
            snap.iter().map(|b| b.spec.name.clone()).collect();
        known.extend(ops.iter().filter_map(|op| match op {
            OvsOp::AddBridge(b) => Some(b.name.clone()),
            _ => None,
        }));
        let bridge_exists = |name: &str| -> Result<(), OvsdbError> {
            if known.contains(name) {
                Ok(())
            } else {
                Err(OvsdbError::Schema(format!("bridge {name} not found")))
            }
        };
        let ports_sel = self.select("Port", &["name"]).await?;
        let port_uuid = |name: &str| -> Result<String, OvsdbError> {
            ports_sel
                .iter()
                .find(|r| r["name"] == name)
                .and_then(|r| uuid_of(&r["_uuid"]))
                .ok_or_else(|| OvsdbError::Schema(format!("port {name} not found")))
        };
        let bridges_sel = self.select("Bridge", &["name"]).await?;
        let bridge_row = |name: &str| -> Option<String> {
            bridges_sel
                .iter()
                .find(|r| r["name"] == name)
                .and_then(|r| uuid_of(&r["_uuid"]))
        };
        let mut t = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            match op {
                OvsOp::AddBridge(b) => {
                    let (iu, pu, bu) = (format!("i{i}"), format!("p{i}"), format!("b{i}"));
                    t.push(json!({"op": "insert", "table": "Interface", "uuid-name": iu, "row": {"name": b.name, "type": "internal"}}));
                    t.push(json!({"op": "insert", "table": "Port", "uuid-name": pu, "row": {"name": b.name, "interfaces": ["named-uuid", iu]}}));
                    let mut row = bridge_columns(b);
                    row["name"] = json!(b.name);
                    row["ports"] = json!(["named-uuid", pu]);
                    t.push(json!({"op": "insert", "table": "Bridge", "uuid-name": bu, "row": row}));
                    t.push(json!({"op": "mutate", "table": "Open_vSwitch", "where": [["_uuid", "==", ["uuid", root]]], "mutations": [["bridges", "insert", ["set", [["named-uuid", bu]]]]]}));
                }
                OvsOp::UpdateBridge(b) => {
                    bridge_exists(&b.name)?;
                    t.push(json!({"op": "update", "table": "Bridge", "where": by_name(&b.name), "row": bridge_columns(b)}));
                }
                OvsOp::DeleteBridge(name) => {
                    let Some(u) = bridge_row(name) else { continue };
                    t.push(json!({"op": "mutate", "table": "Open_vSwitch", "where": [["_uuid", "==", ["uuid", root]]], "mutations": [["bridges", "delete", ["set", [["uuid", u]]]]]}));
                }
                OvsOp::AddPort(p) => {
                    bridge_exists(&p.bridge)?;
                    let (iu, pu) = (format!("i{i}"), format!("p{i}"));
                    let mut irow = iface_columns(p);
                    irow["name"] = json!(p.name);
                    t.push(
                        json!({"op": "insert", "table": "Interface", "uuid-name": iu, "row": irow}),
                    );
                    let mut prow = port_columns(p);
                    prow["name"] = json!(p.name);
                    prow["interfaces"] = json!(["named-uuid", iu]);
                    t.push(json!({"op": "insert", "table": "Port", "uuid-name": pu, "row": prow}));
                    t.push(json!({"op": "mutate", "table": "Bridge", "where": by_name(&p.bridge), "mutations": [["ports", "insert", ["set", [["named-uuid", pu]]]]]}));
                }
                OvsOp::UpdatePort(p) => {
                    port_uuid(&p.name)?;
                    t.push(json!({"op": "update", "table": "Port", "where": by_name(&p.name), "row": port_columns(p)}));
                    t.push(json!({"op": "update", "table": "Interface", "where": by_name(&p.name), "row": iface_columns(p)}));
                }
                OvsOp::DeletePort { bridge, name } => {
                    let Ok(u) = port_uuid(name) else { continue };
                    t.push(json!({"op": "mutate", "table": "Bridge", "where": by_name(bridge), "mutations": [["ports", "delete", ["set", [["uuid", u]]]]]}));
                }
            }
        }
        t.push(json!({"op": "mutate", "table": "Open_vSwitch", "where": [["_uuid", "==", ["uuid", root]]], "mutations": [["next_cfg", "+=", 1]]}));
        t.push(json!({"op": "select", "table": "Open_vSwitch", "where": [["_uuid", "==", ["uuid", root]]], "columns": ["next_cfg"]}));
        let r = self.client.transact(DB, t).await?;
        let want = r
            .last()
            .and_then(|x| x["rows"][0]["next_cfg"].as_i64())
            .unwrap_or(0);
        let start = Instant::now();
        loop {
            let rows = self.select("Open_vSwitch", &["cur_cfg"]).await?;
            let cur = rows
                .first()
                .and_then(|r| r["cur_cfg"].as_i64())
                .unwrap_or(0);
            if cur >= want {
                return Ok(());
            }
            if start.elapsed() > APPLY_WAIT {
                return Err(OvsdbError::NotApplied(APPLY_WAIT.as_secs()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn system(&self) -> Result<SystemInfo, OvsdbError> {
        let rows = self
            .select(
                "Open_vSwitch",
                &[
                    "ovs_version",
                    "datapath_types",
                    "iface_types",
                    "other_config",
                    "external_ids",
                ],
            )
            .await?;
        let r = rows.first().ok_or_else(|| {
            OvsdbError::Schema("the Open_vSwitch table has no row (run ovs-vsctl init)".into())
        })?;
        let list = |v: &Value| {
            set_items(v)
                .iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        };
        Ok(SystemInfo {
            ovs_version: opt_str(&r["ovs_version"]),
            datapath_types: list(&r["datapath_types"]),
            iface_types: list(&r["iface_types"]),
            other_config: map_of(&r["other_config"]),
            external_ids: map_of(&r["external_ids"]),
        })
    }

    fn events(&self) -> tokio::sync::broadcast::Receiver<OvsEvent> {
        self.events.subscribe()
    }
}
