//! OpenFlow adapter: a bridge's complete flow table, replaced atomically.
//!
//! No usable Rust OpenFlow crate exists, so the first implementation drives `ovs-ofctl` behind
//! the [`FlowProgrammer`] trait (a native OpenFlow channel can replace it later):
//! `ovs-ofctl -O OpenFlow15 --bundle replace-flows BRIDGE -` reads the wanted table, diffs it
//! against the switch and sends only the differences, in one atomic bundle — flows that
//! already match keep their counters and are never removed and re-added. Cookies take part
//! in the comparison: a flow whose cookie changed is modified.

mod fake;
mod ofctl;

pub use fake::FakeFlows;
pub use ofctl::OfctlFlows;

use async_trait::async_trait;

/// One flow.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    /// Table number.
    pub table: u8,
    /// Priority.
    pub priority: u16,
    /// Cookie (feature and owner, see the pipeline).
    pub cookie: u64,
    /// Match fields in ovs-ofctl syntax, or empty for "everything".
    pub matches: String,
    /// Actions in ovs-ofctl syntax.
    pub actions: String,
}

impl Flow {
    /// The flow in ovs-ofctl syntax.
    pub fn render(&self) -> String {
        let m = if self.matches.is_empty() {
            String::new()
        } else {
            format!("{},", self.matches)
        };
        format!(
            "table={},priority={},cookie={:#x},{m}actions={}",
            self.table, self.priority, self.cookie, self.actions
        )
    }
}

/// OpenFlow errors.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// ovs-ofctl failed.
    #[error("ovs-ofctl {op} on {bridge} failed: {stderr}")]
    Ofctl {
        op: &'static str,
        bridge: String,
        stderr: String,
    },
    /// ovs-ofctl could not be run or timed out.
    #[error("cannot run ovs-ofctl {op} on {bridge}: {reason}")]
    Spawn {
        op: &'static str,
        bridge: String,
        reason: String,
    },
}

/// Programs flows.
#[async_trait]
pub trait FlowProgrammer: Send + Sync {
    /// Makes the bridge's flow table exactly `flows`, atomically.
    async fn replace_flows(&self, bridge: &str, flows: &[Flow]) -> Result<(), FlowError>;
    /// The bridge's flows as ovs-ofctl prints them.
    async fn dump_flows(&self, bridge: &str) -> Result<Vec<String>, FlowError>;
    /// Number of flows whose cookie matches `cookie` under `mask`.
    async fn flow_count(&self, bridge: &str, cookie: u64, mask: u64) -> Result<u64, FlowError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders() {
        let f = Flow {
            table: 0,
            priority: 100,
            cookie: 0x0200_0000_dead_beef,
            matches: "in_port=LOCAL".into(),
            actions: "goto_table:10".into(),
        };
        assert_eq!(
            f.render(),
            "table=0,priority=100,cookie=0x2000000deadbeef,in_port=LOCAL,actions=goto_table:10"
        );
        let g = Flow {
            matches: String::new(),
            actions: "drop".into(),
            ..f
        };
        assert_eq!(
            g.render(),
            "table=0,priority=100,cookie=0x2000000deadbeef,actions=drop"
        );
    }
}
