//! The OpenFlow pipeline of every qingluan bridge, declared in one place.
//!
//! Tables, in stage order:
//!
//! | table | name           | what it does                                                   |
//! |-------|----------------|----------------------------------------------------------------|
//! | 0     | `CLASSIFY`     | admits frames by source: the gateway port, and each container port only with its own MAC (and IPv4 address for IP and ARP); everything else is dropped (anti-spoofing) |
//! | 10    | `L2_FORWARD`   | MAC learning switch (`NORMAL`) within the bridge                |
//!
//! The overlay bridge shared by all vxlan networks has its own flows ([`overlay_base`],
//! [`overlay_flows`]): `CLASSIFY` admits local ports by MAC and address, tags their frames
//! with the network's VNI (`tun_id`) and marks them local (`reg0=1`), and admits the tunnel
//! port (VNI from the packet); `ARP_RESPOND` (table 5) answers ARP requests of local
//! containers for every known address of their VNI on the spot; `L2_FORWARD` delivers by
//! (VNI, MAC): to a local port, or through the tunnel to the host holding that MAC; broadcast
//! and multicast of a local container go to its VNI's local ports and to each other host
//! with endpoints in that VNI, those from the tunnel only to local ports; unknown unicast is
//! dropped: every location comes from the cluster store, nothing is learnt by flooding.
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

/// Local answers to ARP requests (overlay bridge).
pub const ARP_RESPOND: Table = Table {
    id: 5,
    name: "ARP_RESPOND",
};

/// Every table, in stage order.
pub const TABLES: [Table; 3] = [CLASSIFY, ARP_RESPOND, L2_FORWARD];

/// Cookie feature of a network's base flows.
pub const FEATURE_BASE: u64 = 0x01;
/// Cookie feature of an endpoint's admission flows.
pub const FEATURE_ENDPOINT: u64 = 0x02;
/// Cookie feature of flows towards another host's endpoint.
pub const FEATURE_REMOTE: u64 = 0x03;
/// Cookie feature of the overlay bridge's own flows (owner 0).
pub const FEATURE_OVERLAY: u64 = 0x04;
/// Cookie feature of an uplink bridge's own flows (owner 0).
pub const FEATURE_UPLINK: u64 = 0x05;

/// Cookie for a feature and an owner ID (hex).
pub fn cookie(feature: u64, owner_id: &str) -> u64 {
    let owner = u64::from_str_radix(crate::model::head(owner_id, 8), 16).unwrap_or(0);
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
    sort(&mut out);
    out
}

/// Sorts flows by table, priority (highest first) and match: a stable order, so an
/// unchanged table compares equal.
pub fn sort(flows: &mut [Flow]) {
    flows.sort_by(|a, b| {
        (a.table, std::cmp::Reverse(a.priority), &a.matches).cmp(&(
            b.table,
            std::cmp::Reverse(b.priority),
            &b.matches,
        ))
    });
}

/// Cookie of an uplink bridge's sentinel flow.
pub fn uplink_sentinel() -> u64 {
    FEATURE_UPLINK << 56
}

/// An uplink bridge's own flow: whatever no other flow claims is switched (`NORMAL`), which
/// respects each port's VLAN: the interface and the host's internal port are trunks, flat
/// containers' ports access VLAN 0 (untagged), vlan containers' ports their VLAN ID.
pub fn uplink_base() -> Flow {
    Flow {
        table: CLASSIFY.id,
        priority: 0,
        cookie: uplink_sentinel(),
        matches: String::new(),
        actions: "NORMAL".into(),
    }
}

/// Anti-spoofing for containers on an uplink bridge (flat, vlan): a container's port passes
/// only frames with its own MAC and IPv4 address to `NORMAL`; anything else from it is
/// dropped.
pub fn physical_flows(endpoints: &[&Endpoint]) -> Vec<Flow> {
    let mut out = Vec::new();
    for ep in endpoints {
        let c = cookie(FEATURE_ENDPOINT, &ep.id);
        let (port, mac, ip) = (ep.host_veth(), ep.mac, ep.address.addr());
        let flow = |priority, matches: String, actions: &str| Flow {
            table: CLASSIFY.id,
            priority,
            cookie: c,
            matches,
            actions: actions.into(),
        };
        out.push(flow(
            100,
            format!("in_port={port},dl_src={mac},ip,nw_src={ip}"),
            "NORMAL",
        ));
        out.push(flow(
            100,
            format!("in_port={port},dl_src={mac},arp,arp_spa={ip},arp_sha={mac}"),
            "NORMAL",
        ));
        out.push(flow(
            100,
            format!("in_port={port},dl_src={mac},ipv6"),
            "NORMAL",
        ));
        out.push(flow(90, format!("in_port={port}"), "drop"));
    }
    out
}

/// Cookie of the overlay bridge's sentinel flow.
pub fn overlay_sentinel() -> u64 {
    FEATURE_OVERLAY << 56
}

/// The overlay bridge's own flows: default drops and the tunnel port's admission.
pub fn overlay_base(tunnel: &str) -> Vec<Flow> {
    let c = overlay_sentinel();
    let flow = |table: Table, priority, matches: String, actions: String| Flow {
        table: table.id,
        priority,
        cookie: c,
        matches,
        actions,
    };
    vec![
        flow(CLASSIFY, 0, String::new(), "drop".into()),
        flow(
            CLASSIFY,
            100,
            format!("in_port={tunnel}"),
            format!("goto_table:{}", ARP_RESPOND.id),
        ),
        flow(
            ARP_RESPOND,
            0,
            String::new(),
            format!("goto_table:{}", L2_FORWARD.id),
        ),
        flow(L2_FORWARD, 0, String::new(), "drop".into()),
    ]
}

/// Where another host's endpoint of an overlay network is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteEndpoint {
    /// Its endpoint ID.
    pub id: String,
    /// Its MAC.
    pub mac: crate::model::Mac,
    /// Its IPv4 address.
    pub ip: std::net::Ipv4Addr,
    /// Underlay address of its host (the tunnel endpoint).
    pub vtep: std::net::IpAddr,
}

/// The host's gateway of an overlay network with `nat=true`: an internal port of the overlay
/// bridge with the same MAC and address on every host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlayGateway {
    /// The internal port.
    pub port: String,
    /// Its MAC.
    pub mac: crate::model::Mac,
    /// The gateway address.
    pub ip: std::net::Ipv4Addr,
}

/// The flows of one overlay network with VNI `vni`: its local endpoints (ports on the
/// overlay bridge), the endpoints other hosts have in it, and this host's gateway.
///
/// The gateway serves only this host's containers: its frames are classified like the
/// tunnel's (`reg0=0`), so they reach local ports only, and frames for its MAC are taken
/// only from local containers; each host answers ARP for the gateway itself.
pub fn overlay_flows(
    net: &Network,
    vni: u32,
    endpoints: &[&Endpoint],
    remote: &[RemoteEndpoint],
    tunnel: &str,
    gateway: Option<&OverlayGateway>,
) -> Vec<Flow> {
    let base = cookie(FEATURE_BASE, &net.id);
    let flow = |table: Table, priority, cookie, matches: String, actions: String| Flow {
        table: table.id,
        priority,
        cookie,
        matches,
        actions,
    };
    let to_vtep = |vtep: &std::net::IpAddr| format!("set_field:{vtep}->tun_dst,output:{tunnel}");
    let answer = |mac: crate::model::Mac, ip: std::net::Ipv4Addr| {
        format!(
            "move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],set_field:{mac}->eth_src,\
             set_field:2->arp_op,move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[],\
             move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[],set_field:{mac}->arp_sha,\
             set_field:{ip}->arp_spa,IN_PORT"
        )
    };
    let admit = format!(
        "set_field:{vni}->tun_id,load:1->NXM_NX_REG0[0],goto_table:{}",
        ARP_RESPOND.id
    );
    let mut out = Vec::new();
    for ep in endpoints {
        let c = cookie(FEATURE_ENDPOINT, &ep.id);
        let (port, mac, ip) = (ep.host_veth(), ep.mac, ep.address.addr());
        out.push(flow(
            CLASSIFY,
            100,
            c,
            format!("in_port={port},dl_src={mac},ip,nw_src={ip}"),
            admit.clone(),
        ));
        out.push(flow(
            CLASSIFY,
            100,
            c,
            format!("in_port={port},dl_src={mac},arp,arp_spa={ip},arp_sha={mac}"),
            admit.clone(),
        ));
        out.push(flow(
            ARP_RESPOND,
            100,
            c,
            format!("reg0=1,tun_id={vni},arp,arp_op=1,arp_tpa={ip}"),
            answer(mac, ip),
        ));
        out.push(flow(
            L2_FORWARD,
            100,
            c,
            format!("tun_id={vni},dl_dst={mac}"),
            format!("output:{port}"),
        ));
    }
    for r in remote {
        let c = cookie(FEATURE_REMOTE, &r.id);
        out.push(flow(
            ARP_RESPOND,
            100,
            c,
            format!("reg0=1,tun_id={vni},arp,arp_op=1,arp_tpa={}", r.ip),
            answer(r.mac, r.ip),
        ));
        out.push(flow(
            L2_FORWARD,
            100,
            c,
            format!("reg0=1,tun_id={vni},dl_dst={}", r.mac),
            to_vtep(&r.vtep),
        ));
    }
    let local: Vec<String> = endpoints
        .iter()
        .map(|e| format!("output:{}", e.host_veth()))
        .collect();
    let mut vteps: Vec<&std::net::IpAddr> = remote.iter().map(|r| &r.vtep).collect();
    vteps.sort();
    vteps.dedup();
    let mut everywhere = local.clone();
    if let Some(g) = gateway {
        out.push(flow(
            CLASSIFY,
            100,
            base,
            format!("in_port={},dl_src={}", g.port, g.mac),
            format!("set_field:{vni}->tun_id,goto_table:{}", ARP_RESPOND.id),
        ));
        out.push(flow(
            ARP_RESPOND,
            100,
            base,
            format!("reg0=1,tun_id={vni},arp,arp_op=1,arp_tpa={}", g.ip),
            answer(g.mac, g.ip),
        ));
        out.push(flow(
            L2_FORWARD,
            100,
            base,
            format!("reg0=1,tun_id={vni},dl_dst={}", g.mac),
            format!("output:{}", g.port),
        ));
        everywhere.push(format!("output:{}", g.port));
    }
    everywhere.extend(vteps.into_iter().map(to_vtep));
    let or_drop = |v: Vec<String>| {
        if v.is_empty() {
            "drop".to_string()
        } else {
            v.join(",")
        }
    };
    let bum = "dl_dst=01:00:00:00:00:00/01:00:00:00:00:00";
    out.push(flow(
        L2_FORWARD,
        50,
        base,
        format!("reg0=1,tun_id={vni},{bum}"),
        or_drop(everywhere),
    ));
    out.push(flow(
        L2_FORWARD,
        50,
        base,
        format!("reg0=0,tun_id={vni},{bum}"),
        or_drop(local),
    ));
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
        assert_eq!(
            TABLES.map(|t| t.name),
            ["CLASSIFY", "ARP_RESPOND", "L2_FORWARD"]
        );
    }

    #[test]
    fn cookie_layout() {
        assert_eq!(
            cookie(FEATURE_ENDPOINT, "deadbeef0123"),
            0x0200_0000_dead_beef
        );
    }
}
