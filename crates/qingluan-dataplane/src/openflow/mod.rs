//! OpenFlow adapter: typed flows, a bridge's complete flow table replaced atomically, flow
//! statistics by cookie, port statistics and meters, over our own OpenFlow 1.4 channel.
//!
//! No usable Rust OpenFlow crate exists, so we carry the codec for the messages we use
//! ([`codec`]) and a channel per bridge over its management socket
//! (`<rundir>/<bridge>.mgmt`, [`NativeFlows`]). [`FakeFlows`] is the recording fake.
//! `ovs-ofctl -O OpenFlow15 dump-flows <bridge>` stays the way to look at a table by hand.
//!
//! A flow is typed: [`Field`]s to match, [`Action`]s to take. [`Flow::render`] writes it in
//! ovs-ofctl syntax, for golden files, docs and error messages; the codec encodes the same
//! values on the wire, so the two cannot disagree.
//!
//! Replacing a table (what `ovs-ofctl --bundle replace-flows` did, checked against OVS 3.1):
//! only flows that differ are touched, so identical flows keep their counters and durations,
//! and all changes go to the switch as one atomic, ordered bundle: if the switch refuses any
//! flow, nothing changes. To tell "identical" without decoding the switch's actions back,
//! bits 32–55 of every cookie on the wire carry a fingerprint of the flow's encoded match and
//! instructions (port numbers included, so a port re-added under a new number re-adds its
//! flows); two different flows of one table, priority and cookie whose fingerprints collide
//! get the second one salted, so neither is lost. Those bits belong to the adapter: callers' cookies keep them zero, masks given to
//! [`FlowProgrammer::flow_count`] ignore them, and [`FlowStats::cookie`] comes back without
//! them.
//!
//! Ports are named in flows; names are resolved to OpenFlow port numbers from the switch's
//! own port list just before a table is sent, so a flow can only name a port ovs-vswitchd has
//! already added (apply OVSDB changes first). Flows live only in ovs-vswitchd: after it
//! restarts the bridges are empty (secure) until the flows are replaced again.

pub mod codec;

mod channel;
mod fake;
mod native;

pub use fake::FakeFlows;
pub use native::NativeFlows;

use std::fmt::{self, Write};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use std::time::Duration;

use async_trait::async_trait;

/// Cookie bits owned by the adapter (the fingerprint of the flow's content).
pub const FINGERPRINT_BITS: u64 = 0x00ff_ffff_0000_0000;

/// A MAC address in a match or an action.
pub type MacAddr = [u8; 6];

/// A port in a match or an action.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Port {
    /// A port by name.
    Named(String),
    /// The bridge's own (internal) port.
    Local,
}

/// One match field.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    /// The ingress port.
    InPort(Port),
    /// Register 0.
    Reg0(u32),
    /// Register 1.
    Reg1(u32),
    /// The tunnel ID (VNI).
    TunId(u32),
    /// Ethernet source.
    EthSrc(MacAddr),
    /// Ethernet destination.
    EthDst(MacAddr),
    /// Any multicast or broadcast Ethernet destination.
    EthMulticast,
    /// IPv4.
    Ip,
    /// IPv4 source.
    IpSrc(Ipv4Addr),
    /// IPv6.
    Ipv6,
    /// ARP.
    Arp,
    /// ARP opcode.
    ArpOp(u16),
    /// ARP sender address.
    ArpSpa(Ipv4Addr),
    /// ARP sender MAC.
    ArpSha(MacAddr),
    /// ARP target address.
    ArpTpa(Ipv4Addr),
    /// Connection tracking state: the bits in `.1` must equal those in `.0` (see [`ct`]).
    CtState(u32, u32),
    /// The tracked connection's mark (set when it was committed).
    CtMark(u32),
    /// IPv4 source within a prefix.
    IpSrcNet(Ipv4Net),
    /// IPv4 destination within a prefix.
    IpDstNet(Ipv4Net),
    /// IP protocol (the flow matches `ip`).
    IpProto(u8),
    /// TCP destination port under a mask (the flow matches TCP).
    TcpDst(u16, u16),
    /// UDP destination port under a mask (the flow matches UDP).
    UdpDst(u16, u16),
    /// IPv6 source within a prefix (the flow matches `ipv6`).
    Ipv6SrcNet(ipnet::Ipv6Net),
    /// IPv6 destination within a prefix (the flow matches `ipv6`).
    Ipv6DstNet(ipnet::Ipv6Net),
    /// ICMPv6 type (the flow matches `ipv6` and IP protocol 58).
    Icmpv6Type(u8),
}

/// Connection tracking state bits, for [`Field::CtState`].
pub mod ct {
    /// The first packet of a connection.
    pub const NEW: u32 = 0x01;
    /// Part of an established connection.
    pub const EST: u32 = 0x02;
    /// Related to an established connection (an ICMP error).
    pub const REL: u32 = 0x04;
    /// In the reply direction.
    pub const RPL: u32 = 0x08;
    /// Invalid for the connection tracker.
    pub const INV: u32 = 0x10;
    /// Tracked (went through the connection tracker).
    pub const TRK: u32 = 0x20;
    /// The bits in rendering order with their names.
    pub const NAMES: [(u32, &str); 6] = [
        (NEW, "new"),
        (EST, "est"),
        (REL, "rel"),
        (RPL, "rpl"),
        (INV, "inv"),
        (TRK, "trk"),
    ];
}

/// A whole header field an [`Action::Move`] copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Header {
    /// Ethernet source.
    EthSrc,
    /// Ethernet destination.
    EthDst,
    /// ARP sender MAC.
    ArpSha,
    /// ARP target MAC.
    ArpTha,
    /// ARP sender address.
    ArpSpa,
    /// ARP target address.
    ArpTpa,
}

/// One action. A flow with no actions drops.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Continue at a later table (always last).
    Goto(u8),
    /// Out of a port.
    Output(Port),
    /// Back out of the port it came in on.
    InPort,
    /// The bridge's MAC-learning switch.
    Normal,
    /// Set the tunnel ID (VNI).
    SetTunId(u32),
    /// Set the tunnel's remote end.
    SetTunDst(IpAddr),
    /// Load a value (0 or 1) into bit 0 of register 0.
    LoadReg0(u32),
    /// Set all of register 1.
    LoadReg1(u32),
    /// Copy one header field into another.
    Move(Header, Header),
    /// Set the Ethernet source.
    SetEthSrc(MacAddr),
    /// Set the ARP opcode.
    SetArpOp(u16),
    /// Set the ARP sender MAC.
    SetArpSha(MacAddr),
    /// Set the ARP sender address.
    SetArpSpa(Ipv4Addr),
    /// Pass through a meter (a rate limit) first.
    Meter(u32),
    /// Set the DSCP bits of an IPv4 or IPv6 packet (the flow must match `ip` or `ipv6`).
    SetDscp(u8),
    /// Through the connection tracker in `zone`: `commit` records the connection (and with
    /// `mark` sets its mark); with `table`, the tracked packet goes on in that table (its
    /// state then known).
    Ct {
        /// Record the connection.
        commit: bool,
        /// The mark a commit sets.
        mark: Option<u32>,
        /// The conntrack zone.
        zone: u16,
        /// Where the tracked packet goes on.
        table: Option<u8>,
    },
}

/// One flow.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    /// Table number.
    pub table: u8,
    /// Priority.
    pub priority: u16,
    /// Cookie (feature and owner, see the pipeline); bits 32–55 must be zero.
    pub cookie: u64,
    /// Match fields; none matches everything.
    pub matches: Vec<Field>,
    /// Actions; none drops.
    pub actions: Vec<Action>,
}

struct Mac<'a>(&'a MacAddr);

impl fmt::Display for Mac<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Port::Named(p) => f.write_str(p),
            Port::Local => f.write_str("LOCAL"),
        }
    }
}

impl Header {
    /// The NXM name ovs-ofctl uses.
    fn name(self) -> &'static str {
        match self {
            Header::EthSrc => "NXM_OF_ETH_SRC",
            Header::EthDst => "NXM_OF_ETH_DST",
            Header::ArpSha => "NXM_NX_ARP_SHA",
            Header::ArpTha => "NXM_NX_ARP_THA",
            Header::ArpSpa => "NXM_OF_ARP_SPA",
            Header::ArpTpa => "NXM_OF_ARP_TPA",
        }
    }
}

impl Flow {
    /// The match in ovs-ofctl syntax, e.g. `in_port=qlv1234,ip,nw_src=10.1.0.2` (empty when
    /// it matches everything).
    pub fn render_match(&self) -> String {
        let mut s = String::new();
        for (i, f) in self.matches.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let _ = match f {
                Field::InPort(p) => write!(s, "in_port={p}"),
                Field::Reg0(v) => write!(s, "reg0={v}"),
                Field::Reg1(v) => write!(s, "reg1={v:#x}"),
                Field::TunId(v) => write!(s, "tun_id={v}"),
                Field::EthSrc(m) => write!(s, "dl_src={}", Mac(m)),
                Field::EthDst(m) => write!(s, "dl_dst={}", Mac(m)),
                Field::EthMulticast => write!(s, "dl_dst=01:00:00:00:00:00/01:00:00:00:00:00"),
                Field::Ip => write!(s, "ip"),
                Field::IpSrc(a) => write!(s, "nw_src={a}"),
                Field::Ipv6 => write!(s, "ipv6"),
                Field::Arp => write!(s, "arp"),
                Field::ArpOp(o) => write!(s, "arp_op={o}"),
                Field::ArpSpa(a) => write!(s, "arp_spa={a}"),
                Field::ArpSha(m) => write!(s, "arp_sha={}", Mac(m)),
                Field::ArpTpa(a) => write!(s, "arp_tpa={a}"),
                Field::CtState(v, m) => {
                    s.push_str("ct_state=");
                    for (bit, name) in ct::NAMES {
                        if m & bit != 0 {
                            s.push(if v & bit != 0 { '+' } else { '-' });
                            s.push_str(name);
                        }
                    }
                    Ok(())
                }
                Field::CtMark(v) => write!(s, "ct_mark={v:#x}"),
                Field::IpSrcNet(n) if n.prefix_len() == 32 => write!(s, "nw_src={}", n.addr()),
                Field::IpSrcNet(n) => write!(s, "nw_src={n}"),
                Field::IpDstNet(n) if n.prefix_len() == 32 => write!(s, "nw_dst={}", n.addr()),
                Field::IpDstNet(n) => write!(s, "nw_dst={n}"),
                Field::IpProto(p) => write!(s, "nw_proto={p}"),
                Field::Ipv6SrcNet(n) => write!(s, "ipv6_src={n}"),
                Field::Ipv6DstNet(n) => write!(s, "ipv6_dst={n}"),
                Field::Icmpv6Type(t) => write!(s, "icmpv6_type={t}"),
                Field::TcpDst(p, 0xffff) => write!(s, "tcp_dst={p}"),
                Field::TcpDst(p, m) => write!(s, "tcp_dst={p:#x}/{m:#x}"),
                Field::UdpDst(p, 0xffff) => write!(s, "udp_dst={p}"),
                Field::UdpDst(p, m) => write!(s, "udp_dst={p:#x}/{m:#x}"),
            };
        }
        s
    }

    /// The actions in ovs-ofctl syntax (`drop` when there are none).
    pub fn render_actions(&self) -> String {
        if self.actions.is_empty() {
            return "drop".into();
        }
        let mut s = String::new();
        for (i, a) in self.actions.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let _ = match a {
                Action::Goto(t) => write!(s, "goto_table:{t}"),
                Action::Output(p) => write!(s, "output:{p}"),
                Action::InPort => write!(s, "IN_PORT"),
                Action::Normal => write!(s, "NORMAL"),
                Action::SetTunId(v) => write!(s, "set_field:{v}->tun_id"),
                Action::SetTunDst(ip) => write!(s, "set_field:{ip}->tun_dst"),
                Action::LoadReg0(v) => write!(s, "load:{v}->NXM_NX_REG0[0]"),
                Action::LoadReg1(v) => write!(s, "set_field:{v:#x}->reg1"),
                Action::Move(from, to) => write!(s, "move:{}[]->{}[]", from.name(), to.name()),
                Action::SetEthSrc(m) => write!(s, "set_field:{}->eth_src", Mac(m)),
                Action::SetArpOp(o) => write!(s, "set_field:{o}->arp_op"),
                Action::SetArpSha(m) => write!(s, "set_field:{}->arp_sha", Mac(m)),
                Action::SetArpSpa(a) => write!(s, "set_field:{a}->arp_spa"),
                Action::Meter(m) => write!(s, "meter:{m}"),
                Action::SetDscp(d) => write!(s, "set_field:{d}->ip_dscp"),
                Action::Ct {
                    commit,
                    mark,
                    zone,
                    table,
                } => {
                    s.push_str("ct(");
                    if *commit {
                        s.push_str("commit,");
                    }
                    if let Some(t) = table {
                        let _ = write!(s, "table={t},");
                    }
                    let _ = write!(s, "zone={zone}");
                    if let Some(m) = mark {
                        let _ = write!(s, ",exec(set_field:{m:#x}->ct_mark)");
                    }
                    s.push(')');
                    Ok(())
                }
            };
        }
        s
    }

    /// The flow in ovs-ofctl syntax:
    /// `table=T,priority=P,cookie=0x..,MATCHES,actions=A` (no `MATCHES,` when empty).
    pub fn render(&self) -> String {
        let m = self.render_match();
        let m = if m.is_empty() { m } else { m + "," };
        format!(
            "table={},priority={},cookie={:#x},{m}actions={}",
            self.table,
            self.priority,
            self.cookie,
            self.render_actions()
        )
    }
}

/// A flow's counters, as the switch reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowStats {
    /// Table number.
    pub table: u8,
    /// Priority.
    pub priority: u16,
    /// Cookie, without the adapter's fingerprint bits.
    pub cookie: u64,
    /// Packets that matched.
    pub packets: u64,
    /// Bytes that matched.
    pub bytes: u64,
    /// How long the flow has been installed.
    pub age: Duration,
}

/// A port's counters, as the switch reports them: `rx` is what the switch received from
/// the port (what a container sent, for its veth), `tx` what it sent out of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortStats {
    /// The port (the bridge's own internal port carries the bridge's name).
    pub name: String,
    /// Packets received, transmitted.
    pub packets: (u64, u64),
    /// Bytes received, transmitted.
    pub bytes: (u64, u64),
    /// Packets dropped on receive, on transmit.
    pub dropped: (u64, u64),
    /// Receive and transmit errors.
    pub errors: (u64, u64),
    /// Seconds since the port was added to the switch (its counters started then).
    pub duration_secs: u32,
}

/// A meter: a rate limit that drops what exceeds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meter {
    /// Meter ID (1 or more).
    pub id: u32,
    /// Rate in kbit/s.
    pub rate_kbps: u32,
    /// Burst in kbit.
    pub burst_kbits: u32,
}

/// OpenFlow errors.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FlowError {
    /// The bridge's management socket could not be reached.
    #[error("cannot connect to {path} (OpenFlow of bridge {bridge}): {reason}")]
    Connect {
        /// The bridge.
        bridge: String,
        /// The socket.
        path: String,
        /// Why.
        reason: String,
    },
    /// The switch refused a message; nothing of the operation was applied.
    #[error("OpenFlow {op} on {bridge} refused: {error}")]
    Refused {
        /// The operation, e.g. `replace-flows`.
        op: &'static str,
        /// The bridge.
        bridge: String,
        /// The switch's error (e.g. `OFPMMFC_INVALID_METER`) and the flow it concerns.
        error: String,
    },
    /// A flow names a port the switch does not have.
    #[error("OpenFlow {op} on {bridge}: no port {port} on the bridge")]
    UnknownPort {
        /// The operation.
        op: &'static str,
        /// The bridge.
        bridge: String,
        /// The port.
        port: String,
    },
    /// The switch did not answer in time (the connection is dropped).
    #[error("OpenFlow {op} on {bridge}: no answer within {secs} s")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// The bridge.
        bridge: String,
        /// The time limit.
        secs: u64,
    },
    /// The connection broke or the switch sent something we cannot read.
    #[error("OpenFlow {op} on {bridge}: {reason}")]
    Channel {
        /// The operation.
        op: &'static str,
        /// The bridge.
        bridge: String,
        /// What went wrong.
        reason: String,
    },
}

/// Programs a bridge's flow table and meters, and reads its flow statistics.
#[async_trait]
pub trait FlowProgrammer: Send + Sync {
    /// Makes the bridge's flow table exactly `flows`, atomically, touching only flows that
    /// differ (identical flows keep their counters); returns how many flows it added or
    /// deleted.
    async fn replace_flows(&self, bridge: &str, flows: &[Flow]) -> Result<usize, FlowError>;
    /// Counters of the flows whose cookie equals `cookie` in the bits set in `mask` (`mask`
    /// 0 gives every flow).
    async fn flow_stats(
        &self,
        bridge: &str,
        cookie: u64,
        mask: u64,
    ) -> Result<Vec<FlowStats>, FlowError>;
    /// Counters of every port of the bridge.
    async fn port_stats(&self, bridge: &str) -> Result<Vec<PortStats>, FlowError>;
    /// Number of flows whose cookie equals `cookie` in the bits set in `mask` (`mask` 0
    /// counts every flow).
    async fn flow_count(&self, bridge: &str, cookie: u64, mask: u64) -> Result<u64, FlowError>;
    /// Adds the meter, or changes it if it exists.
    async fn set_meter(&self, bridge: &str, meter: Meter) -> Result<(), FlowError>;
    /// Deletes the meter (nothing if it does not exist).
    async fn delete_meter(&self, bridge: &str, id: u32) -> Result<(), FlowError>;
    /// Every meter of the bridge, by ID.
    async fn meters(&self, bridge: &str) -> Result<Vec<Meter>, FlowError>;
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
            matches: vec![Field::InPort(Port::Local), Field::Ip],
            actions: vec![Action::SetTunId(7), Action::Goto(10)],
        };
        assert_eq!(
            f.render(),
            "table=0,priority=100,cookie=0x2000000deadbeef,in_port=LOCAL,ip,actions=set_field:7->tun_id,goto_table:10"
        );
        let g = Flow {
            matches: vec![],
            actions: vec![],
            cookie: 0,
            ..f
        };
        assert_eq!(g.render(), "table=0,priority=100,cookie=0x0,actions=drop");
        let h = Flow {
            actions: vec![
                Action::Move(Header::EthSrc, Header::EthDst),
                Action::SetEthSrc([2, 0x42, 10, 0, 0, 1]),
                Action::Meter(3),
            ],
            ..g
        };
        assert_eq!(
            h.render_actions(),
            "move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],set_field:02:42:0a:00:00:01->eth_src,meter:3"
        );
    }
}
