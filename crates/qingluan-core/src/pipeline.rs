//! The OpenFlow pipeline of every qingluan bridge, declared in one place.
//!
//! Tables, in stage order:
//!
//! | table | name           | what it does                                                   |
//! |-------|----------------|----------------------------------------------------------------|
//! | 0     | `CLASSIFY`     | admits frames by source: the gateway port, and each container port only with its own MAC (and IPv4 address for IP and ARP); everything else is dropped (anti-spoofing) |
//! | 10    | `L2_FORWARD`   | MAC learning switch (`NORMAL`) within the bridge                |
//!
//! Bridges run with `fail_mode=secure`, so without these flows nothing passes: isolation never
//! depends on flows being present, and a restarted ovs-vswitchd is detected by the missing
//! sentinel flow and re-programmed.
//!
//! Cookie layout (64 bits): bits 56–63 the feature ([`FEATURE_BASE`], [`FEATURE_ENDPOINT`]),
//! bits 0–31 the owner (first 8 hex digits of the network or endpoint ID). One owner's flows
//! are found, and stale ones recognised after a crash, by cookie. `docs/pipeline.md` shows
//! example flows per table.

use qingluan_dataplane::openflow::Flow;

use crate::model::{Endpoint, Network};

/// A pipeline stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Table {
    /// OpenFlow table number.
    pub id: u8,
    /// Name used in docs and logs.
    pub name: &'static str,
}

/// Admission by source port, MAC and address.
pub const CLASSIFY: Table = Table {
    id: 0,
    name: "CLASSIFY",
};
/// L2 switching.
pub const L2_FORWARD: Table = Table {
    id: 10,
    name: "L2_FORWARD",
};

/// Every table, in stage order.
pub const TABLES: [Table; 2] = [CLASSIFY, L2_FORWARD];

/// Cookie feature of a network's base flows.
pub const FEATURE_BASE: u64 = 0x01;
/// Cookie feature of an endpoint's admission flows.
pub const FEATURE_ENDPOINT: u64 = 0x02;

/// Cookie for a feature and an owner ID (hex).
pub fn cookie(feature: u64, owner_id: &str) -> u64 {
    let owner = u64::from_str_radix(&owner_id[..8.min(owner_id.len())], 16).unwrap_or(0);
    (feature << 56) | owner
}

/// Cookie of the flow whose absence means the bridge lost its flows.
pub fn sentinel(net: &Network) -> u64 {
    cookie(FEATURE_BASE, &net.id)
}

/// The flows of a network bridge with its endpoints' ports.
pub fn flows(net: &Network, endpoints: &[&Endpoint]) -> Vec<Flow> {
    let base = cookie(FEATURE_BASE, &net.id);
    let goto = format!("goto_table:{}", L2_FORWARD.id);
    let flow = |table: Table, priority, cookie, matches: String, actions: &str| Flow {
        table: table.id,
        priority,
        cookie,
        matches,
        actions: actions.to_string(),
    };
    let mut out = vec![
        flow(CLASSIFY, 0, base, String::new(), "drop"),
        flow(CLASSIFY, 200, base, "in_port=LOCAL".into(), &goto),
        flow(L2_FORWARD, 0, base, String::new(), "NORMAL"),
    ];
    for ep in endpoints {
        let c = cookie(FEATURE_ENDPOINT, &ep.id);
        let port = ep.host_veth();
        let (mac, ip) = (ep.mac, ep.address.addr());
        out.push(flow(
            CLASSIFY,
            100,
            c,
            format!("in_port={port},dl_src={mac},ip,nw_src={ip}"),
            &goto,
        ));
        out.push(flow(
            CLASSIFY,
            100,
            c,
            format!("in_port={port},dl_src={mac},arp,arp_spa={ip},arp_sha={mac}"),
            &goto,
        ));
        out.push(flow(
            CLASSIFY,
            100,
            c,
            format!("in_port={port},dl_src={mac},ipv6"),
            &goto,
        ));
    }
    out.sort_by(|a, b| {
        (a.table, std::cmp::Reverse(a.priority), &a.matches).cmp(&(
            b.table,
            std::cmp::Reverse(b.priority),
            &b.matches,
        ))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_in_stage_order() {
        let ids: Vec<u8> = TABLES.iter().map(|t| t.id).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        assert_eq!(TABLES.map(|t| t.name), ["CLASSIFY", "L2_FORWARD"]);
    }

    #[test]
    fn cookie_layout() {
        assert_eq!(
            cookie(FEATURE_ENDPOINT, "deadbeef0123"),
            0x0200_0000_dead_beef
        );
    }
}
