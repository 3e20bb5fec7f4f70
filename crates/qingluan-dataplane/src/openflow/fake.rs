//! Recording fake of the OpenFlow adapter: keeps the last flow table of each bridge.
//!
//! `dump_flows` renders the stored flows; `flow_count` applies the cookie mask like the
//! switch does.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{Flow, FlowError, FlowProgrammer};

/// The last flow table of each bridge.
#[derive(Default)]
pub struct FakeFlows {
    /// The last flows replaced on each bridge.
    pub tables: Mutex<BTreeMap<String, Vec<Flow>>>,
    /// Replacements still to refuse (see [`FakeFlows::fail_next`]).
    failures: Mutex<usize>,
}

impl FakeFlows {
    /// Makes the next `n` replacements fail as a bundle the switch rejected, changing
    /// nothing.
    pub fn fail_next(&self, n: usize) {
        *self.failures.lock().unwrap() = n;
    }
}

#[async_trait]
impl FlowProgrammer for FakeFlows {
    async fn replace_flows(&self, bridge: &str, flows: &[Flow]) -> Result<(), FlowError> {
        {
            let mut failures = self.failures.lock().unwrap();
            if *failures > 0 {
                *failures -= 1;
                return Err(FlowError::Ofctl {
                    op: "replace-flows",
                    bridge: bridge.into(),
                    stderr: "refused by the test".into(),
                });
            }
        }
        self.tables
            .lock()
            .unwrap()
            .insert(bridge.into(), flows.to_vec());
        Ok(())
    }

    async fn dump_flows(&self, bridge: &str) -> Result<Vec<String>, FlowError> {
        Ok(self
            .tables
            .lock()
            .unwrap()
            .get(bridge)
            .map(|f| f.iter().map(Flow::render).collect())
            .unwrap_or_default())
    }

    async fn flow_count(&self, bridge: &str, cookie: u64, mask: u64) -> Result<u64, FlowError> {
        Ok(self
            .tables
            .lock()
            .unwrap()
            .get(bridge)
            .map(|f| {
                f.iter()
                    .filter(|x| x.cookie & mask == cookie & mask)
                    .count() as u64
            })
            .unwrap_or(0))
    }
}
