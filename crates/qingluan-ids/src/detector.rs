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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{Direction, EveNames};
    use crate::rules::load;
    use crate::test_frames::*;

    fn run(detector: &mut Detector, frames: &[Vec<u8>], secs: f64) -> Vec<u32> {
        frames
            .iter()
            .flat_map(|frame| sids(&detector.inspect(frame, at(secs))))
            .collect()
    }

    #[test]
    fn tcp_flow_flags_follow_the_handshake() {
        let mut d = detector(
            "alert tcp any any -> any 80 (flow:established,to_server; sid:1;)\n\
             alert tcp any any -> any any (flow:not_established; sid:2;)\n\
             alert tcp any any -> any any (flow:to_client,established; sid:3;)\n\
             alert tcp any any -> any any (flow:stateless,to_client; sid:4;)",
        );
        let mut conn = Conn::new(40000);
        let handshake = conn.handshake();
        assert_eq!(run(&mut d, &handshake[..1], 0.0), vec![2]);
        assert_eq!(run(&mut d, &handshake[1..2], 0.0), vec![2, 4]);
        assert_eq!(run(&mut d, &handshake[2..], 0.0), Vec::<u32>::new());
        assert_eq!(
            run(&mut d, &[conn.client(b"GET / HTTP/1.0\r\n\r\n")], 0.1),
            vec![1]
        );
        assert_eq!(
            run(&mut d, &[conn.server(b"HTTP/1.0 200 OK\r\n")], 0.2),
            vec![3]
        );
        assert_eq!(run(&mut d, &[conn.client(b"more")], 0.3), Vec::<u32>::new());
    }

    #[test]
    fn udp_flow_is_established_by_the_reply() {
        let mut d = detector(
            "alert udp any any -> any any (flow:established; sid:1;)\n\
             alert udp any any -> any 53 (flow:to_server,not_established; sid:2;)",
        );
        assert_eq!(
            run(&mut d, &[udp(CLIENT, 5000, SERVER, 53, b"q")], 0.0),
            vec![2]
        );
        let reply = udp(SERVER, 53, CLIENT, 5000, b"r");
        let alerts = d.inspect(&reply, at(0.1));
        assert_eq!(sids(&alerts), vec![1]);
        assert_eq!(alerts[0].direction, Some(Direction::ToClient));
    }

    #[test]
    fn bidirectional_rules_match_both_ways() {
        let mut d = detector("alert udp 10.0.0.1 any <> 10.0.0.2 53 (content:\"x\"; sid:1;)");
        assert_eq!(
            run(&mut d, &[udp(SERVER, 53, CLIENT, 9, b"x")], 0.0),
            vec![1]
        );
        assert_eq!(
            run(&mut d, &[udp(CLIENT, 9, SERVER, 53, b"x")], 0.0),
            vec![1]
        );
        assert_eq!(
            run(&mut d, &[udp([10, 0, 0, 3], 9, SERVER, 53, b"x")], 0.0),
            Vec::<u32>::new()
        );
        let mut one_way = detector("alert udp 10.0.0.1 any -> 10.0.0.2 53 (content:\"x\"; sid:1;)");
        assert_eq!(
            run(&mut one_way, &[udp(SERVER, 53, CLIENT, 9, b"x")], 0.0),
            Vec::<u32>::new()
        );
    }

    #[test]
    fn content_spanning_segments_alerts_once() {
        let rules = "alert tcp any any -> any 80 (content:\"EVILPATTERN\"; sid:1;)\n\
                     alert tcp any any -> any 80 (content:\"PAT\"; content:\"EVIL\"; distance:-20; sid:2;)";
        let mut d = detector(rules);
        let mut conn = Conn::new(40000);
        run(&mut d, &conn.handshake(), 0.0);
        assert_eq!(
            run(&mut d, &[conn.client(b"xxEVIL")], 0.1),
            Vec::<u32>::new()
        );
        assert_eq!(run(&mut d, &[conn.client(b"PATTERNyy")], 0.2), vec![1, 2]);
        assert_eq!(
            run(&mut d, &[conn.client(b"EVILPATTERN")], 0.3),
            Vec::<u32>::new()
        );

        let mut d = detector(rules);
        let mut conn = Conn::new(40001);
        run(&mut d, &conn.handshake(), 0.0);
        let first = conn.client_at(0, b"xxEVIL");
        let second = conn.client_at(6, b"PATTERNyy");
        assert_eq!(
            run(&mut d, std::slice::from_ref(&second), 0.1),
            Vec::<u32>::new()
        );
        assert_eq!(run(&mut d, std::slice::from_ref(&first), 0.2), vec![1, 2]);
        assert_eq!(run(&mut d, &[first, second], 0.3), Vec::<u32>::new());
    }

    #[test]
    fn retransmission_does_not_alert_again_or_shift_offsets() {
        let mut d = detector(
            "alert tcp any any -> any 80 (content:\"AB\"; sid:1;)\n\
             alert tcp any any -> any 80 (content:\"CD\"; offset:2; depth:2; sid:2;)",
        );
        let mut conn = Conn::new(40000);
        run(&mut d, &conn.handshake(), 0.0);
        let ab = conn.client(b"AB");
        assert_eq!(run(&mut d, &[ab.clone(), ab.clone()], 0.1), vec![1]);
        assert_eq!(run(&mut d, &[ab, conn.client(b"CD")], 0.2), vec![2]);
    }

    #[test]
    fn dsize_uses_the_packet_payload() {
        let mut d = detector("alert udp any any -> any any (dsize:>3; content:\"a\"; sid:1;)");
        assert_eq!(
            run(&mut d, &[udp(CLIENT, 1, SERVER, 2, b"abc")], 0.0),
            Vec::<u32>::new()
        );
        assert_eq!(
            run(&mut d, &[udp(CLIENT, 3, SERVER, 2, b"abcd")], 0.0),
            vec![1]
        );
    }

    #[test]
    fn stream_depth_limits_inspection() {
        let config = Config {
            stream_depth: 8,
            ..Config::default()
        };
        let mut d = detector_with(
            "alert tcp any any -> any any (content:\"LATE\"; sid:1;)",
            config,
        );
        let mut conn = Conn::new(40000);
        run(&mut d, &conn.handshake(), 0.0);
        assert_eq!(
            run(&mut d, &[conn.client(b"123456"), conn.client(b"LATE")], 0.1),
            Vec::<u32>::new()
        );
    }

    #[test]
    fn ipv6_in_vlan_and_icmp() {
        let mut d = detector(
            "alert udp fd00::/8 any -> any 53 (content:\"v6\"; sid:1;)\n\
             alert icmp any any -> any any (content:\"ping\"; sid:2;)",
        );
        let mut src = [0u8; 16];
        src[0] = 0xfd;
        src[15] = 1;
        let frame = udp6_vlan(src, 1000, [0; 16], 53, b"v6!");
        assert_eq!(run(&mut d, &[frame], 0.0), vec![1]);
        let alerts = d.inspect(&ping(CLIENT, SERVER, 1, b"ping"), at(0.0));
        assert_eq!(sids(&alerts), vec![2]);
        assert_eq!((alerts[0].proto, alerts[0].src_port), (1, None));
    }

    #[test]
    fn drop_rules_stats_and_rule_replacement() {
        let mut d = detector("drop udp any any -> any any (content:\"x\"; sid:1;)");
        d.inspect(&udp(CLIENT, 1, SERVER, 2, b"x"), at(0.0));
        d.inspect(&[0u8; 5], at(0.0));
        d.inspect(&arp_reply(CLIENT_MAC, CLIENT, SERVER), at(0.0));
        let stats = d.stats();
        assert_eq!(
            (
                stats.packets,
                stats.alerts,
                stats.dropped_by_rules,
                stats.malformed,
                stats.flows,
                stats.rules
            ),
            (3, 1, 1, 1, 1, 1)
        );
        assert!(stats.bytes > 5);
        let set = load(&[("n".to_string(), "alert udp any any -> any any (content:\"y\"; sid:2;)\nalert udp any any -> any any (content:\"z\"; sid:3;)".to_string())], &Vars::default()).unwrap();
        d.replace_rules(set);
        assert_eq!(
            sids(&d.inspect(&udp(CLIENT, 1, SERVER, 2, b"y"), at(0.1))),
            vec![2]
        );
        assert_eq!((d.stats().rules, d.stats().flows), (2, 1));
    }

    #[test]
    fn eve_of_a_signature_alert() {
        let mut d = detector(
            "alert tcp any any -> $HOME_NET 80 (msg:\"ET WEB evil \\\"GET\\\"\"; content:\"GET /evil\"; \
             classtype:web-application-attack; sid:2000001; rev:4;)",
        );
        let mut conn = Conn::new(40000);
        run(&mut d, &conn.handshake(), 0.0);
        let alerts = d.inspect(&conn.client(b"GET /evil\r\n"), at(1.5));
        let names = EveNames {
            in_iface: Some("ql-mirror0".to_string()),
            src_container: Some("web".to_string()),
            dest_container: Some("db".to_string()),
            network: Some("backend".to_string()),
            ips: false,
        };
        let eve = alerts[0].eve(&names);
        let flow_id = eve["flow_id"].as_u64().unwrap();
        assert!(flow_id > 0 && flow_id < 1 << 51);
        assert_eq!(
            eve,
            serde_json::json!({
                "timestamp": "2026-12-04T12:00:01.500000+0000",
                "flow_id": flow_id,
                "in_iface": "ql-mirror0",
                "event_type": "alert",
                "src_ip": "10.0.0.1",
                "src_port": 40000,
                "dest_ip": "10.0.0.2",
                "dest_port": 80,
                "proto": "TCP",
                "alert": {
                    "action": "allowed",
                    "gid": 1,
                    "signature_id": 2000001,
                    "rev": 4,
                    "signature": "ET WEB evil \"GET\"",
                    "category": "Web Application Attack",
                    "severity": 1
                },
                "direction": "to_server",
                "payload_printable": "GET /evil..",
                "qingluan": {"src_container": "web", "dest_container": "db", "network": "backend"}
            })
        );
        assert!(alerts[0]
            .eve_line(&names)
            .starts_with("{\"timestamp\":\"2026-12-04T12:00:01.500000+0000\",\"flow_id\":"));
    }

    #[test]
    fn garbage_frames_never_panic() {
        let mut d = detector(
            "alert ip any any -> any any (content:\"a\"; sid:1;)\n\
             alert tcp any any -> any any (content:\"b\"; content:\"c\"; distance:-5; within:9; endswith; sid:2;)",
        );
        d.set_bindings(HashMap::from([(Ipv4Addr::new(10, 0, 0, 1), [9; 6])]));
        let templates = [
            tcp(CLIENT, 1, SERVER, 2, 7, "A", b"abcabc"),
            udp(CLIENT, 1, SERVER, 2, b"abc"),
            udp6_vlan([1; 16], 1, [2; 16], 2, b"abc"),
            ping(CLIENT, SERVER, 1, b"abc"),
            arp_reply(CLIENT_MAC, CLIENT, SERVER),
        ];
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for i in 0..20_000u32 {
            let frame: Vec<u8> = if i % 2 == 0 {
                let len = (next() % 120) as usize;
                (0..len).map(|_| next() as u8).collect()
            } else {
                let mut frame = templates[(next() % 5) as usize].clone();
                for _ in 0..1 + next() % 4 {
                    let at = (next() as usize) % frame.len();
                    frame[at] = next() as u8;
                }
                frame.truncate(1 + (next() as usize) % frame.len());
                frame
            };
            d.inspect(&frame, at(f64::from(i) / 100.0));
        }
        assert_eq!(d.stats().packets, 20_000);
        assert!(d.stats().malformed > 0);
    }
}
