//! Recording fake of the OVS adapter: an in-memory switch that applies ops and logs them.
//!
//! It accepts and refuses exactly what the real adapter does (the same `layout` checks, all
//! or nothing per apply), assigns ofports like ovs-vswitchd would (never reused), returns
//! snapshots sorted like the real one, keeps `datapath_type` from creation, and sends
//! [`OvsEvent::Changed`] after each non-empty apply. Always compiled: other crates' tests
//! use it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::layout::Layout;
use super::{BridgeState, Ovs, OvsEvent, OvsOp, OvsdbError, PortState, SystemInfo};

/// The fake switch's contents.
#[derive(Default)]
struct State {
    /// Bridges by name, ports sorted by name.
    bridges: BTreeMap<String, BridgeState>,
    /// The last ofport handed out.
    last_ofport: i64,
    /// Every op applied so far, in order.
    log: Vec<OvsOp>,
}

/// In-memory bridges and the log of applied ops.
pub struct FakeOvs {
    /// Bridges, ofport counter and log.
    state: Mutex<State>,
    /// Non-empty applies still to refuse (see [`FakeOvs::fail_next`]).
    failures: Mutex<usize>,
    /// Where events go.
    events: tokio::sync::broadcast::Sender<OvsEvent>,
    /// What `system()` returns.
    pub system: Mutex<SystemInfo>,
    /// Held to keep ovs-vswitchd from "applying" (see [`FakeOvs::hold`]).
    vswitchd: Arc<tokio::sync::Mutex<()>>,
}

impl Default for FakeOvs {
    fn default() -> Self {
        FakeOvs {
            state: Mutex::new(State::default()),
            failures: Mutex::new(0),
            events: tokio::sync::broadcast::channel(64).0,
            system: Mutex::new(SystemInfo::default()),
            vswitchd: Arc::default(),
        }
    }
}

impl FakeOvs {
    /// Every op applied so far, in order (refused applies leave no trace).
    pub fn log(&self) -> Vec<OvsOp> {
        self.state.lock().unwrap().log.clone()
    }

    /// Makes the next `n` non-empty applies fail as a transaction ovsdb-server refused,
    /// changing nothing.
    pub fn fail_next(&self, n: usize) {
        *self.failures.lock().unwrap() = n;
    }

    /// How many of the refusals [`FakeOvs::fail_next`] asked for are still to come.
    pub fn failures_left(&self) -> usize {
        *self.failures.lock().unwrap()
    }

    /// Keeps `applied` waiting, as a busy ovs-vswitchd would, until the guard is dropped.
    pub async fn hold(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.vswitchd.clone().lock_owned().await
    }

    /// Sends an event to subscribers, e.g. to play an OVSDB reconnect.
    pub fn emit(&self, event: OvsEvent) {
        let _ = self.events.send(event);
    }
}

#[async_trait]
impl Ovs for FakeOvs {
    async fn snapshot(&self) -> Result<Vec<BridgeState>, OvsdbError> {
        Ok(self
            .state
            .lock()
            .unwrap()
            .bridges
            .values()
            .cloned()
            .collect())
    }

    async fn commit(&self, ops: &[OvsOp]) -> Result<Option<i64>, OvsdbError> {
        if ops.is_empty() {
            return Ok(None);
        }
        {
            let mut failures = self.failures.lock().unwrap();
            if *failures > 0 {
                *failures -= 1;
                return Err(OvsdbError::Commit {
                    error: "refused by the test".into(),
                });
            }
        }
        let mut st = self.state.lock().unwrap();
        let mut layout = Layout::default();
        for (name, b) in &st.bridges {
            layout.bridges.insert(
                name.clone(),
                b.ports.iter().map(|p| p.spec.name.clone()).collect(),
            );
        }
        layout.check(ops)?;
        for op in ops {
            let st = &mut *st;
            match op {
                OvsOp::AddBridge(s) => {
                    st.bridges.insert(
                        s.name.clone(),
                        BridgeState {
                            spec: s.clone(),
                            ports: Vec::new(),
                        },
                    );
                }
                OvsOp::UpdateBridge(s) => {
                    if let Some(b) = st.bridges.get_mut(&s.name) {
                        let datapath_type = std::mem::take(&mut b.spec.datapath_type);
                        b.spec = s.clone();
                        b.spec.datapath_type = datapath_type;
                    }
                }
                OvsOp::DeleteBridge(name) => {
                    st.bridges.remove(name);
                }
                OvsOp::AddPort(p) => {
                    st.last_ofport += 1;
                    if let Some(b) = st.bridges.get_mut(&p.bridge) {
                        b.ports.push(PortState {
                            spec: p.clone(),
                            ofport: Some(st.last_ofport),
                        });
                        b.ports.sort_by(|x, y| x.spec.name.cmp(&y.spec.name));
                    }
                }
                OvsOp::UpdatePort(p) => {
                    if let Some(port) = st
                        .bridges
                        .get_mut(&p.bridge)
                        .and_then(|b| b.ports.iter_mut().find(|x| x.spec.name == p.name))
                    {
                        port.spec = p.clone();
                    }
                }
                OvsOp::DeletePort { bridge, name } => {
                    if let Some(b) = st.bridges.get_mut(bridge) {
                        b.ports.retain(|x| &x.spec.name != name);
                    }
                }
            }
        }
        st.log.extend(ops.iter().cloned());
        let cfg = i64::try_from(st.log.len()).expect("log fits");
        drop(st);
        self.emit(OvsEvent::Changed);
        Ok(Some(cfg))
    }

    async fn applied(&self, _cfg: i64) -> Result<(), OvsdbError> {
        drop(self.vswitchd.lock().await);
        Ok(())
    }

    async fn system(&self) -> Result<SystemInfo, OvsdbError> {
        Ok(self.system.lock().unwrap().clone())
    }

    fn events(&self) -> tokio::sync::broadcast::Receiver<OvsEvent> {
        self.events.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovsdb::{BridgeSpec, PortSpec};

    fn port(name: &str, tag: Option<u16>) -> PortSpec {
        PortSpec {
            bridge: "b1".into(),
            name: name.into(),
            tag,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn applies_all_or_nothing_and_records() {
        let ovs = FakeOvs::default();
        let mut events = ovs.events();
        let b = BridgeSpec {
            name: "b1".into(),
            datapath_type: "netdev".into(),
            ..Default::default()
        };
        ovs.apply(&[
            OvsOp::AddBridge(b.clone()),
            OvsOp::AddPort(port("p2", None)),
            OvsOp::AddPort(port("p1", None)),
        ])
        .await
        .unwrap();
        assert_eq!(events.recv().await.unwrap(), OvsEvent::Changed);
        let e = ovs
            .apply(&[
                OvsOp::UpdatePort(port("p1", Some(5))),
                OvsOp::AddPort(port("p2", None)),
            ])
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "port p2 already exists on bridge b1");
        ovs.apply(&[
            OvsOp::UpdatePort(port("p1", Some(5))),
            OvsOp::UpdateBridge(BridgeSpec {
                datapath_type: "system".into(),
                fail_mode: Some("secure".into()),
                ..b
            }),
        ])
        .await
        .unwrap();
        let snap = ovs.snapshot().await.unwrap();
        assert_eq!(snap[0].spec.datapath_type, "netdev");
        assert_eq!(snap[0].spec.fail_mode.as_deref(), Some("secure"));
        let ports: Vec<(&str, Option<u16>, Option<i64>)> = snap[0]
            .ports
            .iter()
            .map(|p| (p.spec.name.as_str(), p.spec.tag, p.ofport))
            .collect();
        assert_eq!(ports, [("p1", Some(5), Some(2)), ("p2", None, Some(1))]);
        assert_eq!(ovs.log().len(), 5);
    }
}
