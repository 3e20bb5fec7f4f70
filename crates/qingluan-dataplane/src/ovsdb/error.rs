//! The one error type of the OVSDB client and the OVS adapter.
//!
//! Errors are API: each variant names the object it is about, messages are lowercase without
//! a trailing period, and texts the server sends are passed on verbatim (minus a trailing
//! period) after our own words, so the user reads what OVSDB said.

/// Everything that can go wrong talking to OVSDB or applying OVS changes.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum OvsdbError {
    /// There is no connection to the server (it is down or the address is wrong); requests
    /// fail at once instead of waiting.
    #[error("ovsdb unreachable at {target}: {reason}")]
    Unreachable {
        /// The server address, e.g. `unix:/run/openvswitch/db.sock`.
        target: String,
        /// Why, e.g. `connection refused`.
        reason: String,
    },
    /// The server did not answer a request in time.
    #[error("ovsdb at {target} did not answer {method} within {secs} s")]
    Timeout {
        /// The server address.
        target: String,
        /// The JSON-RPC method, e.g. `transact`.
        method: String,
        /// The time limit.
        secs: u64,
    },
    /// The server refused a request with a JSON-RPC error.
    #[error("ovsdb {method} failed: {error}")]
    Rpc {
        /// The JSON-RPC method.
        method: String,
        /// The server's error (and details).
        error: String,
    },
    /// The server answered something this client cannot read.
    #[error("ovsdb sent an unexpected answer to {method}: {detail}")]
    Protocol {
        /// The JSON-RPC method.
        method: String,
        /// What was wrong with it.
        detail: String,
    },
    /// One operation of a transaction failed; nothing was committed.
    #[error("ovsdb transaction failed at operation {index} ({op}): {error}")]
    Op {
        /// Position of the failed operation in the transaction, from 0.
        index: usize,
        /// The operation, e.g. `insert into Bridge`.
        op: String,
        /// The server's error and details.
        error: String,
    },
    /// Every operation succeeded but the commit failed (e.g. two rows with one name);
    /// nothing was committed.
    #[error("ovsdb transaction not committed: {error}")]
    Commit {
        /// The server's error and details.
        error: String,
    },
    /// A bridge an operation needs does not exist.
    #[error("bridge {0} not found")]
    BridgeNotFound(String),
    /// A bridge to be added exists already.
    #[error("bridge {0} already exists")]
    BridgeExists(String),
    /// A port to be updated is not on the bridge.
    #[error("port {name} not found on bridge {bridge}")]
    PortNotFound {
        /// The bridge it should be on.
        bridge: String,
        /// The port.
        name: String,
    },
    /// A port to be added exists already (port names are unique across bridges).
    #[error("port {name} already exists on bridge {bridge}")]
    PortExists {
        /// The bridge it is on.
        bridge: String,
        /// The port.
        name: String,
    },
    /// The database has no Open_vSwitch row: nobody ran `ovs-vsctl init`.
    #[error("ovsdb has no Open_vSwitch row (run ovs-vsctl --no-wait init)")]
    NoRoot,
    /// The change was committed but ovs-vswitchd did not apply it in time.
    #[error("ovs-vswitchd did not apply configuration {want} within {secs} s (it is at {current}; is ovs-vswitchd running?)")]
    NotApplied {
        /// The `next_cfg` our transaction set.
        want: i64,
        /// The `cur_cfg` ovs-vswitchd reported last.
        current: i64,
        /// The time limit.
        secs: u64,
    },
}

/// An I/O error as a lowercase reason: `connection refused`, not `Connection refused (os
/// error 111)`.
pub(crate) fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_reasons_are_lowercase_without_errno() {
        let e = std::io::Error::from_raw_os_error(111);
        assert_eq!(io_reason(&e), "connection refused");
        let e = std::io::Error::other("Custom thing");
        assert_eq!(io_reason(&e), "custom thing");
    }
}
