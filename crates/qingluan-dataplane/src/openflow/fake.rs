//! Recording fake of the OpenFlow adapter: keeps the last flow table and the meters of each
//! bridge.
//!
//! `flow_stats` and `flow_count` apply the cookie mask like the switch does (counters are
//! zero); it has no ports, so `port_stats` is empty.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::{Flow, FlowError, FlowProgrammer, FlowStats, Meter, PortStats};

/// The last flow table and the meters of each bridge.
#[derive(Default)]
pub struct FakeFlows {
    /// The last flows replaced on each bridge.
    pub tables: Mutex<BTreeMap<String, Vec<Flow>>>,
    /// The meters of each bridge, by ID.
    pub meters: Mutex<BTreeMap<String, BTreeMap<u32, Meter>>>,
    /// Replacements still to refuse (see [`FakeFlows::fail_next`]).
    failures: Mutex<usize>,
}

impl FakeFlows {
    /// Makes the next `n` replacements fail as a bundle the switch rejected, changing
    /// nothing.
    pub fn fail_next(&self, n: usize) {
        *self.failures.lock().unwrap() = n;
    }

    fn matching(&self, bridge: &str, cookie: u64, mask: u64) -> Vec<Flow> {
        self.tables
            .lock()
            .unwrap()
            .get(bridge)
            .map(|f| {
                f.iter()
                    .filter(|x| x.cookie & mask == cookie & mask)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[async_trait]
impl FlowProgrammer for FakeFlows {
    async fn replace_flows(&self, bridge: &str, flows: &[Flow]) -> Result<usize, FlowError> {
        {
            let mut failures = self.failures.lock().unwrap();
            if *failures > 0 {
                *failures -= 1;
                return Err(FlowError::Refused {
                    op: "replace-flows",
                    bridge: bridge.into(),
                    error: "refused by the test".into(),
                });
            }
        }
        let old = self
            .tables
            .lock()
            .unwrap()
            .insert(bridge.into(), flows.to_vec())
            .unwrap_or_default();
        let gone = old.iter().filter(|f| !flows.contains(f)).count();
        let new = flows.iter().filter(|f| !old.contains(f)).count();
        Ok(gone + new)
    }

    async fn flow_stats(
        &self,
        bridge: &str,
        cookie: u64,
        mask: u64,
    ) -> Result<Vec<FlowStats>, FlowError> {
        Ok(self
            .matching(bridge, cookie, mask)
            .into_iter()
            .map(|f| FlowStats {
                table: f.table,
                priority: f.priority,
                cookie: f.cookie,
                packets: 0,
                bytes: 0,
                age: Duration::ZERO,
            })
            .collect())
    }

    async fn port_stats(&self, _bridge: &str) -> Result<Vec<PortStats>, FlowError> {
        Ok(Vec::new())
    }

    async fn flow_count(&self, bridge: &str, cookie: u64, mask: u64) -> Result<u64, FlowError> {
        Ok(self.matching(bridge, cookie, mask).len() as u64)
    }

    async fn set_meter(&self, bridge: &str, meter: Meter) -> Result<(), FlowError> {
        self.meters
            .lock()
            .unwrap()
            .entry(bridge.into())
            .or_default()
            .insert(meter.id, meter);
        Ok(())
    }

    async fn delete_meter(&self, bridge: &str, id: u32) -> Result<(), FlowError> {
        if let Some(m) = self.meters.lock().unwrap().get_mut(bridge) {
            m.remove(&id);
        }
        Ok(())
    }

    async fn meters(&self, bridge: &str) -> Result<Vec<Meter>, FlowError> {
        Ok(self
            .meters
            .lock()
            .unwrap()
            .get(bridge)
            .map(|m| m.values().copied().collect())
            .unwrap_or_default())
    }
}
