//! The [`Detector`]: decodes raw Ethernet frames and runs the flow table, the signature
//! engine and the anomaly detectors on them.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

use etherparse::{ArpHardwareId, EtherType, NetSlice, SlicedPacket, TransportSlice};

use crate::addr::Vars;
use crate::alert::Alert;
use crate::anomaly::{Anomalies, ArpInfo, Limits};
use crate::engine::Engine;
use crate::flow::{FlowLimits, FlowTable, Packet, TcpInfo};
use crate::rules::{Action, RuleSet};

/// Settings of a [`Detector`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Rule variables; the caller passes them to [`crate::load`] (kept here so one
    /// configuration holds every setting).
    pub vars: Vars,
    /// Bytes reassembled per TCP direction; later bytes are not inspected by contents.
    pub stream_depth: usize,
    /// Flows held at most; the oldest flow is evicted to make room.
    pub max_flows: usize,
    /// Idle timeout of a TCP flow.
    pub tcp_timeout: Duration,
    /// Idle timeout of a UDP, ICMP or other flow.
    pub other_timeout: Duration,
    /// Idle timeout of a TCP flow after FIN or RST.
    pub closed_timeout: Duration,
    /// Distinct destination ports (TCP SYN or new UDP flow) from one source that make a
    /// port scan.
    pub scan_ports: usize,
    /// Window in which `scan_ports` must be reached.
    pub scan_window: Duration,
    /// SYNs to one destination within one second that make a SYN flood.
    pub syn_flood_per_sec: u32,
    /// ICMP echo requests from one source within one second that make an ICMP flood.
    pub icmp_flood_per_sec: u32,
    /// Minimum time between two ARP spoofing alerts for the same address and MAC.
    pub arp_alert_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            vars: Vars::default(),
            stream_depth: 1 << 20,
            max_flows: 65_536,
            tcp_timeout: Duration::from_secs(300),
            other_timeout: Duration::from_secs(60),
            closed_timeout: Duration::from_secs(10),
            scan_ports: 50,
            scan_window: Duration::from_secs(10),
            syn_flood_per_sec: 500,
            icmp_flood_per_sec: 200,
            arp_alert_interval: Duration::from_secs(60),
        }
    }
}

/// Counters of a [`Detector`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames passed to [`Detector::inspect`].
    pub packets: u64,
    /// Total length of those frames.
    pub bytes: u64,
    /// Alerts returned.
    pub alerts: u64,
    /// Alerts of drop rules among them.
    pub dropped_by_rules: u64,
    /// Frames that could not be decoded.
    pub malformed: u64,
    /// Flows currently held.
    pub flows: usize,
    /// Rules loaded.
    pub rules: usize,
}

/// The detection engine: feed it frames, get alerts.
#[derive(Debug)]
pub struct Detector {
    engine: Engine,
    rule_count: usize,
    flows: FlowTable,
    anomalies: Anomalies,
    stats: Stats,
}

/// What a frame decoded to.
enum Decoded<'a> {
    Ip(Packet<'a>),
    Arp(ArpInfo),
    Ignored,
}

impl Detector {
    /// A detector running `rules` with `config`.
    pub fn new(rules: RuleSet, config: Config) -> Self {
        let rule_count = rules.len();
        Detector {
            engine: Engine::new(rules.rules),
            rule_count,
            flows: FlowTable::new(FlowLimits {
                stream_depth: config.stream_depth,
                max_flows: config.max_flows.max(1),
                tcp_timeout: config.tcp_timeout,
                other_timeout: config.other_timeout,
                closed_timeout: config.closed_timeout,
            }),
            anomalies: Anomalies::new(Limits {
                scan_ports: config.scan_ports.max(1),
                scan_window: config.scan_window,
                syn_flood_per_sec: config.syn_flood_per_sec.max(1),
                icmp_flood_per_sec: config.icmp_flood_per_sec.max(1),
                arp_alert_interval: config.arp_alert_interval,
            }),
            stats: Stats::default(),
        }
    }

    /// Swaps in new rules; flows (and which signatures already alerted on them) are kept,
    /// threshold counters restart.
    pub fn replace_rules(&mut self, rules: RuleSet) {
        self.rule_count = rules.len();
        self.engine = Engine::new(rules.rules);
    }

    /// Replaces the known `IPv4 → MAC` bindings used by the ARP spoofing detector.
    pub fn set_bindings(&mut self, bindings: HashMap<Ipv4Addr, [u8; 6]>) {
        self.anomalies.set_bindings(bindings);
    }

    /// Inspects one raw Ethernet II frame (VLAN tags allowed) captured at `ts`.
    pub fn inspect(&mut self, frame: &[u8], ts: SystemTime) -> Vec<Alert> {
        self.stats.packets += 1;
        self.stats.bytes += frame.len() as u64;
        let alerts = match decode(frame) {
            Err(()) => {
                self.stats.malformed += 1;
                Vec::new()
            }
            Ok(Decoded::Ignored) => Vec::new(),
            Ok(Decoded::Arp(arp)) => self.anomalies.inspect_arp(arp, ts).into_iter().collect(),
            Ok(Decoded::Ip(packet)) => {
                let (flow, observation) = self.flows.observe(&packet, ts);
                let mut alerts = self.engine.inspect(&packet, flow, observation, ts);
                alerts.extend(self.anomalies.inspect_ip(&packet, observation, ts));
                alerts
            }
        };
        self.stats.alerts += alerts.len() as u64;
        self.stats.dropped_by_rules +=
            alerts.iter().filter(|a| a.action == Action::Drop).count() as u64;
        alerts
    }

    /// Current counters.
    pub fn stats(&self) -> Stats {
        Stats {
            flows: self.flows.len(),
            rules: self.rule_count,
            ..self.stats
        }
    }
}

/// Decodes a frame; `Err` if it is malformed. Fragmented IP packets are ignored (there is
/// no IP reassembly).
fn decode(frame: &[u8]) -> Result<Decoded<'_>, ()> {
    let sliced = SlicedPacket::from_ethernet(frame).map_err(|_| ())?;
    let (src, dst): (IpAddr, IpAddr) = match &sliced.net {
        Some(NetSlice::Ipv4(ip)) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        Some(NetSlice::Ipv6(ip)) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        Some(NetSlice::Arp(arp)) => return Ok(decode_arp(arp)),
        None => return Ok(Decoded::Ignored),
    };
    let Some(ip_payload) = sliced.ip_payload() else {
        return Ok(Decoded::Ignored);
    };
    if ip_payload.fragmented {
        return Ok(Decoded::Ignored);
    }
    let mut packet = Packet {
        src,
        dst,
        proto: ip_payload.ip_number.0,
        src_port: None,
        dst_port: None,
        tcp: None,
        icmp_type: None,
        payload: ip_payload.payload,
    };
    match &sliced.transport {
        Some(TransportSlice::Tcp(tcp)) => {
            packet.src_port = Some(tcp.source_port());
            packet.dst_port = Some(tcp.destination_port());
            packet.tcp = Some(TcpInfo {
                seq: tcp.sequence_number(),
                syn: tcp.syn(),
                ack: tcp.ack(),
                fin: tcp.fin(),
                rst: tcp.rst(),
            });
            packet.payload = tcp.payload();
        }
        Some(TransportSlice::Udp(udp)) => {
            packet.src_port = Some(udp.source_port());
            packet.dst_port = Some(udp.destination_port());
            packet.payload = udp.payload();
        }
        Some(TransportSlice::Icmpv4(icmp)) => {
            packet.icmp_type = Some(icmp.type_u8());
            packet.payload = icmp.payload();
        }
        Some(TransportSlice::Icmpv6(icmp)) => {
            packet.icmp_type = Some(icmp.type_u8());
            packet.payload = icmp.payload();
        }
        None => {}
    }
    Ok(Decoded::Ip(packet))
}

/// The fields of an Ethernet/IPv4 ARP packet; other ARP packets are ignored.
fn decode_arp(arp: &etherparse::ArpPacketSlice) -> Decoded<'static> {
    if arp.hw_addr_type() != ArpHardwareId::ETHERNET || arp.proto_addr_type() != EtherType::IPV4 {
        return Decoded::Ignored;
    }
    let (Ok(sender_mac), Ok(sender_ip), Ok(target_ip)) = (
        <[u8; 6]>::try_from(arp.sender_hw_addr()),
        <[u8; 4]>::try_from(arp.sender_protocol_addr()),
        <[u8; 4]>::try_from(arp.target_protocol_addr()),
    ) else {
        return Decoded::Ignored;
    };
    Decoded::Arp(ArpInfo {
        sender_mac,
        sender_ip: sender_ip.into(),
        target_ip: target_ip.into(),
    })
}
