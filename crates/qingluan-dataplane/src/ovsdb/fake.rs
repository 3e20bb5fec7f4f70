//! Recording fake of the OVS adapter: an in-memory switch that applies ops and logs them.

use std::sync::Mutex;

use async_trait::async_trait;

use super::{BridgeState, Ovs, OvsEvent, OvsOp, OvsdbError, PortState, SystemInfo};

/// In-memory bridges and the log of applied ops.
pub struct FakeOvs {
    bridges: Mutex<Vec<BridgeState>>,
    applied: Mutex<Vec<OvsOp>>,
    events: tokio::sync::broadcast::Sender<OvsEvent>,
    /// What `system()` returns.
    pub system: Mutex<SystemInfo>,
}

impl Default for FakeOvs {
    fn default() -> Self {
        FakeOvs {
            bridges: Mutex::new(Vec::new()),
            applied: Mutex::new(Vec::new()),
            events: tokio::sync::broadcast::channel(16).0,
            system: Mutex::new(SystemInfo::default()),
        }
    }
}

impl FakeOvs {
    /// Every op applied so far.
    pub fn log(&self) -> Vec<OvsOp> {
        self.applied.lock().unwrap().clone()
    }
}

#[async_trait]
impl Ovs for FakeOvs {
    async fn snapshot(&self) -> Result<Vec<BridgeState>, OvsdbError> {
        Ok(self.bridges.lock().unwrap().clone())
    }

    async fn apply(&self, ops: &[OvsOp]) -> Result<(), OvsdbError> {
        let mut b = self.bridges.lock().unwrap();
        let missing = |what: &str| OvsdbError::Schema(format!("{what} not found"));
        for op in ops {
            match op {
                OvsOp::AddBridge(s) => b.push(BridgeState {
                    spec: s.clone(),
                    ports: Vec::new(),
                }),
                OvsOp::UpdateBridge(s) => {
                    let br = b
                        .iter_mut()
                        .find(|x| x.spec.name == s.name)
                        .ok_or_else(|| missing(&s.name))?;
                    br.spec = s.clone();
                }
                OvsOp::DeleteBridge(n) => b.retain(|x| &x.spec.name != n),
                OvsOp::AddPort(p) | OvsOp::UpdatePort(p) => {
                    let br = b
                        .iter_mut()
                        .find(|x| x.spec.name == p.bridge)
                        .ok_or_else(|| missing(&p.bridge))?;
                    br.ports.retain(|x| x.spec.name != p.name);
                    br.ports.push(PortState {
                        spec: p.clone(),
                        ofport: Some(br.ports.len() as i64 + 1),
                    });
                }
                OvsOp::DeletePort { bridge, name } => {
                    let br = b
                        .iter_mut()
                        .find(|x| &x.spec.name == bridge)
                        .ok_or_else(|| missing(bridge))?;
                    br.ports.retain(|x| &x.spec.name != name);
                }
            }
        }
        self.applied.lock().unwrap().extend(ops.iter().cloned());
        Ok(())
    }

    async fn system(&self) -> Result<SystemInfo, OvsdbError> {
        Ok(self.system.lock().unwrap().clone())
    }

    fn events(&self) -> tokio::sync::broadcast::Receiver<OvsEvent> {
        self.events.subscribe()
    }
}
