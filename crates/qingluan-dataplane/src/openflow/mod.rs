//! OpenFlow adapter: a bridge's complete flow table, replaced atomically.
//!
//! No usable Rust OpenFlow crate exists, so the first implementation drives `ovs-ofctl`
//! behind the [`FlowProgrammer`] trait (a native OpenFlow channel can replace it later):
//! `ovs-ofctl -O OpenFlow15 --bundle replace-flows BRIDGE -` with the wanted table on stdin.
//! [`FakeFlows`] is the recording fake.
//!
//! What `replace-flows` does, checked against OVS 3.1 (and its source, `fte_version_equals`):
//! - It dumps the switch's flows, keys both sides by (table, priority, match) and compares
//!   cookie, timeouts, importance and actions (parsed, so `goto_table:1` and its other
//!   spellings are equal). Cookies DO take part: no extra flag is needed for a changed
//!   cookie to be applied (`--readd` would re-add even unchanged flows, resetting their
//!   counters; we do not want that).
//! - Only differences are sent: a new or changed flow as an ADD (which replaces it and
//!   resets its counters and duration), a vanished one as a DELETE_STRICT. An identical
//!   table sends an empty bundle: counters and durations are untouched.
//! - With `--bundle` all of it is one atomic OpenFlow 1.4+ bundle: if the switch rejects
//!   any flow (e.g. a meter that does not exist) nothing changes. A flow ovs-ofctl cannot
//!   parse fails before anything is sent.
//! - The bridge must allow OpenFlow 1.5 (`protocols` empty = all versions on OVS 3.1, or a
//!   list containing `OpenFlow15`); otherwise the version negotiation fails.
//! - Port names work in matches and actions (ovs-ofctl asks the switch for the port map), but
//!   only for ports ovs-vswitchd has already added: apply OVSDB changes first.
//! - Flows live only in ovs-vswitchd, not in OVSDB: after it restarts the bridges are empty
//!   (secure) or NORMAL (standalone) until the flows are replaced again.
//!
//! A private OVS (own `OVS_RUNDIR`) is reached through its `<rundir>/<bridge>.mgmt` socket.

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
    /// Match fields in ovs-ofctl syntax, e.g. `in_port=qlv1234,ip,nw_src=10.1.0.2`, or
    /// empty to match everything.
    pub matches: String,
    /// Actions in ovs-ofctl syntax, e.g. `goto_table:10`.
    pub actions: String,
}

impl Flow {
    /// The flow in ovs-ofctl syntax:
    /// `table=T,priority=P,cookie=0x..,MATCHES,actions=A` (no `MATCHES,` when empty).
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
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FlowError {
    /// ovs-ofctl ran and failed; its stderr says why.
    #[error("ovs-ofctl {op} on {bridge} failed: {stderr}")]
    Ofctl {
        /// The ovs-ofctl command, e.g. `replace-flows`.
        op: &'static str,
        /// The bridge.
        bridge: String,
        /// What ovs-ofctl printed on stderr, trimmed.
        stderr: String,
    },
    /// ovs-ofctl could not be started or fed.
    #[error("cannot run ovs-ofctl {op} on {bridge}: {reason}")]
    Spawn {
        /// The ovs-ofctl command.
        op: &'static str,
        /// The bridge.
        bridge: String,
        /// Why.
        reason: String,
    },
    /// ovs-ofctl did not finish in time (and was killed).
    #[error("ovs-ofctl {op} on {bridge} did not finish within {secs} s")]
    Timeout {
        /// The ovs-ofctl command.
        op: &'static str,
        /// The bridge.
        bridge: String,
        /// The time limit.
        secs: u64,
    },
    /// ovs-ofctl succeeded but printed something we cannot read.
    #[error("ovs-ofctl {op} on {bridge} printed unexpected output: {output}")]
    Output {
        /// The ovs-ofctl command.
        op: &'static str,
        /// The bridge.
        bridge: String,
        /// What it printed.
        output: String,
    },
}

/// Programs a bridge's flow table.
#[async_trait]
pub trait FlowProgrammer: Send + Sync {
    /// Makes the bridge's flow table exactly `flows`, atomically, touching only flows that
    /// differ (identical flows keep their counters).
    async fn replace_flows(&self, bridge: &str, flows: &[Flow]) -> Result<(), FlowError>;
    /// The bridge's flows, one line each, without statistics.
    async fn dump_flows(&self, bridge: &str) -> Result<Vec<String>, FlowError>;
    /// Number of flows whose cookie equals `cookie` in the bits set in `mask` (`mask` 0
    /// counts every flow).
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
            cookie: 0,
            ..f
        };
        assert_eq!(g.render(), "table=0,priority=100,cookie=0x0,actions=drop");
    }
}
