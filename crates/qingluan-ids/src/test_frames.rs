//! Test helpers: Ethernet frames built with etherparse's `PacketBuilder`, a simulated TCP
//! connection, and a detector built from rule text.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etherparse::{
    ArpHardwareId, ArpOperation, ArpPacket, EtherType, PacketBuilder, PacketBuilderStep, TcpHeader,
};

use crate::{load, Alert, Config, Detector, Vars};

pub const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
pub const SERVER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

/// `secs` seconds after a fixed start time.
pub fn at(secs: f64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_796_385_600) + Duration::from_secs_f64(secs)
}

/// A detector running `rules` (one file named `t.rules`) with `config`.
pub fn detector_with(rules: &str, config: Config) -> Detector {
    let set = load(
        &[("t.rules".to_string(), rules.to_string())],
        &Vars::default(),
    )
    .unwrap();
    assert_eq!(set.unsupported, vec![]);
    Detector::new(set, config)
}

/// A detector running `rules` with the default configuration.
pub fn detector(rules: &str) -> Detector {
    detector_with(rules, Config::default())
}

/// The sids of `alerts`.
pub fn sids(alerts: &[Alert]) -> Vec<u32> {
    alerts.iter().map(|a| a.sid).collect()
}

fn tcp_write(step: PacketBuilderStep<TcpHeader>, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(step.size(payload.len()));
    step.write(&mut frame, payload).unwrap();
    frame
}

/// An IPv4 TCP frame; `flags` holds any of `S`, `A`, `F`, `R`.
pub fn tcp(
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    seq: u32,
    flags: &str,
    payload: &[u8],
) -> Vec<u8> {
    let mut step = PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, seq, 65_000);
    for flag in flags.chars() {
        step = match flag {
            'S' => step.syn(),
            'A' => step.ack(1),
            'F' => step.fin(),
            'R' => step.rst(),
            other => panic!("unknown flag {other}"),
        };
    }
    tcp_write(step, payload)
}

/// An IPv4 UDP frame.
pub fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
    let step = PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC)
        .ipv4(src, dst, 64)
        .udp(sport, dport);
    let mut frame = Vec::with_capacity(step.size(payload.len()));
    step.write(&mut frame, payload).unwrap();
    frame
}

/// A VLAN-tagged IPv6 UDP frame.
pub fn udp6_vlan(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16, payload: &[u8]) -> Vec<u8> {
    let step = PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC)
        .single_vlan(etherparse::VlanId::try_new(42).unwrap())
        .ipv6(src, dst, 64)
        .udp(sport, dport);
    let mut frame = Vec::with_capacity(step.size(payload.len()));
    step.write(&mut frame, payload).unwrap();
    frame
}

/// An ICMPv4 echo request frame.
pub fn ping(src: [u8; 4], dst: [u8; 4], seq: u16, payload: &[u8]) -> Vec<u8> {
    let step = PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC)
        .ipv4(src, dst, 64)
        .icmpv4_echo_request(7, seq);
    let mut frame = Vec::with_capacity(step.size(payload.len()));
    step.write(&mut frame, payload).unwrap();
    frame
}

/// An ARP reply frame in which `sender_mac` claims `sender_ip`.
pub fn arp_reply(sender_mac: [u8; 6], sender_ip: [u8; 4], target_ip: [u8; 4]) -> Vec<u8> {
    let arp = ArpPacket::new(
        ArpHardwareId::ETHERNET,
        EtherType::IPV4,
        ArpOperation::REPLY,
        &sender_mac,
        &sender_ip,
        &SERVER_MAC,
        &target_ip,
    )
    .unwrap();
    let step = PacketBuilder::ethernet2(sender_mac, SERVER_MAC).arp(arp);
    let mut frame = Vec::with_capacity(step.size());
    step.write(&mut frame).unwrap();
    frame
}

/// A TCP connection between 10.0.0.1:40000 (client) and 10.0.0.2:80 (server) that tracks
/// sequence numbers.
pub struct Conn {
    pub client_seq: u32,
    pub server_seq: u32,
    pub client_port: u16,
}

pub const CLIENT: [u8; 4] = [10, 0, 0, 1];
pub const SERVER: [u8; 4] = [10, 0, 0, 2];

impl Conn {
    pub fn new(client_port: u16) -> Self {
        Conn {
            client_seq: 1000,
            server_seq: 5000,
            client_port,
        }
    }

    /// The three handshake frames.
    pub fn handshake(&mut self) -> Vec<Vec<u8>> {
        let frames = vec![
            tcp(
                CLIENT,
                self.client_port,
                SERVER,
                80,
                self.client_seq,
                "S",
                b"",
            ),
            tcp(
                SERVER,
                80,
                CLIENT,
                self.client_port,
                self.server_seq,
                "SA",
                b"",
            ),
            tcp(
                CLIENT,
                self.client_port,
                SERVER,
                80,
                self.client_seq + 1,
                "A",
                b"",
            ),
        ];
        self.client_seq += 1;
        self.server_seq += 1;
        frames
    }

    /// A data segment from the client at `offset` bytes into its stream (not advancing).
    pub fn client_at(&self, offset: u32, payload: &[u8]) -> Vec<u8> {
        let seq = self.client_seq + offset;
        tcp(CLIENT, self.client_port, SERVER, 80, seq, "A", payload)
    }

    /// The next in-order data segment from the client.
    pub fn client(&mut self, payload: &[u8]) -> Vec<u8> {
        let frame = self.client_at(0, payload);
        self.client_seq += payload.len() as u32;
        frame
    }

    /// The next in-order data segment from the server.
    pub fn server(&mut self, payload: &[u8]) -> Vec<u8> {
        let frame = tcp(
            SERVER,
            80,
            CLIENT,
            self.client_port,
            self.server_seq,
            "A",
            payload,
        );
        self.server_seq += payload.len() as u32;
        frame
    }
}
