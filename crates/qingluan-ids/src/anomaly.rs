//! Anomaly detectors: port scans, SYN and ICMP floods, and ARP spoofing.
//!
//! Their alerts use gid 1 and the reserved sids listed in the crate docs. Each detector
//! alerts at most once per key (source, destination, or address/MAC pair) per window.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

use crate::alert::{Alert, Direction};
use crate::flow::{Observation, Packet};
use crate::rules::{classtype, Action};

/// sid of the port scan alert.
pub const SID_PORT_SCAN: u32 = 9_000_001;
/// sid of the SYN flood alert.
pub const SID_SYN_FLOOD: u32 = 9_000_002;
/// sid of the ICMP flood alert.
pub const SID_ICMP_FLOOD: u32 = 9_000_003;
/// sid of the ARP spoofing alert.
pub const SID_ARP_SPOOF: u32 = 9_000_004;

/// Keys tracked per detector before expired ones are pruned.
const MAX_TRACKED: usize = 65_536;

/// The window of the flood detectors.
const ONE_SECOND: Duration = Duration::from_secs(1);

/// Detector thresholds (copied from [`crate::Config`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub scan_ports: usize,
    pub scan_window: Duration,
    pub syn_flood_per_sec: u32,
    pub icmp_flood_per_sec: u32,
    pub arp_alert_interval: Duration,
}

/// A counter over a fixed window that starts at its first event.
#[derive(Debug, Clone)]
struct Window<T> {
    start: SystemTime,
    seen: T,
    alerted: bool,
}

impl<T: Default> Window<T> {
    fn fresh(now: SystemTime) -> Self {
        Window {
            start: now,
            seen: T::default(),
            alerted: false,
        }
    }

    fn expired(&self, now: SystemTime, length: Duration) -> bool {
        now.duration_since(self.start).unwrap_or_default() >= length
    }
}

/// The window for `key` in `map`, restarted if older than `length`; `map` stays bounded.
fn window<K: Eq + Hash, T: Default>(
    map: &mut HashMap<K, Window<T>>,
    key: K,
    now: SystemTime,
    length: Duration,
) -> &mut Window<T> {
    if map.len() >= MAX_TRACKED && !map.contains_key(&key) {
        map.retain(|_, w| !w.expired(now, length));
        if map.len() >= MAX_TRACKED {
            map.clear();
        }
    }
    let entry = map.entry(key).or_insert_with(|| Window::fresh(now));
    if entry.expired(now, length) {
        *entry = Window::fresh(now);
    }
    entry
}

/// State of all anomaly detectors.
#[derive(Debug)]
pub(crate) struct Anomalies {
    limits: Limits,
    scans: HashMap<IpAddr, Window<HashSet<(u8, u16)>>>,
    syns: HashMap<IpAddr, Window<u32>>,
    echoes: HashMap<IpAddr, Window<u32>>,
    spoofs: HashMap<(Ipv4Addr, [u8; 6]), Window<()>>,
    bindings: HashMap<Ipv4Addr, [u8; 6]>,
}

/// The fields of an ARP packet the spoofing detector needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ArpInfo {
    pub sender_mac: [u8; 6],
    pub sender_ip: Ipv4Addr,
    pub target_ip: Ipv4Addr,
}

impl Anomalies {
    pub fn new(limits: Limits) -> Self {
        Anomalies {
            limits,
            scans: HashMap::new(),
            syns: HashMap::new(),
            echoes: HashMap::new(),
            spoofs: HashMap::new(),
            bindings: HashMap::new(),
        }
    }

    /// Replaces the known `IPv4 → MAC` bindings.
    pub fn set_bindings(&mut self, bindings: HashMap<Ipv4Addr, [u8; 6]>) {
        self.bindings = bindings;
    }

    /// Runs the scan and flood detectors on an IP packet.
    pub fn inspect_ip(
        &mut self,
        packet: &Packet,
        observation: Observation,
        now: SystemTime,
    ) -> Vec<Alert> {
        let limits = self.limits;
        let mut alerts = Vec::new();
        let syn = packet.tcp.is_some_and(|t| t.syn && !t.ack);
        let new_udp = packet.proto == 17
            && observation.direction == Direction::ToServer
            && !observation.established;
        if let (true, Some(port)) = (syn || new_udp, packet.dst_port) {
            let scan = window(&mut self.scans, packet.src, now, limits.scan_window);
            if !scan.alerted {
                scan.seen.insert((packet.proto, port));
                if scan.seen.len() >= limits.scan_ports {
                    scan.alerted = true;
                    alerts.push(anomaly(
                        SID_PORT_SCAN,
                        "QINGLUAN port scan",
                        "attempted-recon",
                        packet,
                        now,
                    ));
                }
            }
        }
        if syn {
            let count = window(&mut self.syns, packet.dst, now, ONE_SECOND);
            if bump(count, limits.syn_flood_per_sec) {
                alerts.push(anomaly(
                    SID_SYN_FLOOD,
                    "QINGLUAN SYN flood",
                    "attempted-dos",
                    packet,
                    now,
                ));
            }
        }
        let echo_request = matches!(
            (packet.proto, packet.icmp_type),
            (1, Some(8)) | (58, Some(128))
        );
        if echo_request {
            let count = window(&mut self.echoes, packet.src, now, ONE_SECOND);
            if bump(count, limits.icmp_flood_per_sec) {
                alerts.push(anomaly(
                    SID_ICMP_FLOOD,
                    "QINGLUAN ICMP flood",
                    "attempted-dos",
                    packet,
                    now,
                ));
            }
        }
        alerts
    }

    /// Checks an ARP packet against the bindings.
    pub fn inspect_arp(&mut self, arp: ArpInfo, now: SystemTime) -> Option<Alert> {
        let bound = *self.bindings.get(&arp.sender_ip)?;
        if bound == arp.sender_mac {
            return None;
        }
        let interval = self.limits.arp_alert_interval;
        let spoof = window(
            &mut self.spoofs,
            (arp.sender_ip, arp.sender_mac),
            now,
            interval,
        );
        if spoof.alerted {
            return None;
        }
        spoof.alerted = true;
        let (category, priority) = classtype("bad-unknown");
        Some(Alert {
            timestamp: now,
            gid: 1,
            sid: SID_ARP_SPOOF,
            rev: 1,
            msg: "QINGLUAN ARP spoofing".to_string(),
            category: category.to_string(),
            priority,
            action: Action::Alert,
            src_ip: IpAddr::V4(arp.sender_ip),
            src_port: None,
            dest_ip: IpAddr::V4(arp.target_ip),
            dest_port: None,
            proto: 0,
            src_mac: Some(arp.sender_mac),
            flow_id: None,
            direction: None,
            payload_printable: None,
        })
    }
}

/// Counts one event in a per-second window; true exactly when it reaches `limit`.
fn bump(window: &mut Window<u32>, limit: u32) -> bool {
    window.seen = window.seen.saturating_add(1);
    if window.alerted || window.seen < limit {
        return false;
    }
    window.alerted = true;
    true
}

fn anomaly(sid: u32, msg: &str, class: &str, packet: &Packet, now: SystemTime) -> Alert {
    let (category, priority) = classtype(class);
    Alert {
        timestamp: now,
        gid: 1,
        sid,
        rev: 1,
        msg: msg.to_string(),
        category: category.to_string(),
        priority,
        action: Action::Alert,
        src_ip: packet.src,
        src_port: packet.src_port,
        dest_ip: packet.dst,
        dest_port: packet.dst_port,
        proto: packet.proto,
        src_mac: None,
        flow_id: None,
        direction: None,
        payload_printable: None,
    }
}
