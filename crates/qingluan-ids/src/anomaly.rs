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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_frames::*;
    use crate::EveNames;

    fn count(alerts: &[Alert], sid: u32) -> usize {
        alerts.iter().filter(|a| a.sid == sid).count()
    }

    fn scan(ports: u16) -> Vec<Alert> {
        let mut d = detector("");
        (1..=ports)
            .flat_map(|port| {
                let syn = tcp(CLIENT, 40000, SERVER, port, 1, "S", b"");
                d.inspect(&syn, at(f64::from(port) * 0.1))
            })
            .collect()
    }

    #[test]
    fn port_scan_alerts_at_fifty_ports() {
        assert_eq!(count(&scan(49), SID_PORT_SCAN), 0);
        let alerts = scan(50);
        assert_eq!(sids(&alerts), vec![SID_PORT_SCAN]);
        assert_eq!(alerts[0].src_ip, IpAddr::from(CLIENT));
        assert_eq!(
            (alerts[0].priority, alerts[0].category.as_str()),
            (2, "Attempted Information Leak")
        );
        assert_eq!(count(&scan(120), SID_PORT_SCAN), 1);
    }

    #[test]
    fn port_scan_window_and_udp() {
        let mut d = detector("");
        let mut alerts = Vec::new();
        for port in 1..=49u16 {
            alerts.extend(d.inspect(&udp(CLIENT, 5000, SERVER, port, b"?"), at(0.0)));
        }
        alerts.extend(d.inspect(&udp(CLIENT, 5000, SERVER, 50, b"?"), at(10.0)));
        assert_eq!(count(&alerts, SID_PORT_SCAN), 0);
        for port in 1..=49u16 {
            alerts.extend(d.inspect(&udp(SERVER, port, CLIENT, 5000, b"!"), at(10.1)));
        }
        assert_eq!(count(&alerts, SID_PORT_SCAN), 0);
    }

    #[test]
    fn syn_flood() {
        let flood = |syns: u16| {
            let mut d = detector("");
            let alerts: Vec<Alert> = (0..syns)
                .flat_map(|i| {
                    let src = [10, 1, (i >> 8) as u8, i as u8];
                    d.inspect(
                        &tcp(src, 1024 + i, SERVER, 80, 1, "S", b""),
                        at(f64::from(i) / 1000.0),
                    )
                })
                .collect();
            alerts
        };
        assert_eq!(count(&flood(499), SID_SYN_FLOOD), 0);
        let alerts = flood(600);
        assert_eq!(sids(&alerts), vec![SID_SYN_FLOOD]);
        assert_eq!(alerts[0].dest_ip, IpAddr::from(SERVER));
        assert_eq!(alerts[0].category, "Attempted Denial of Service");
    }

    #[test]
    fn icmp_flood() {
        let flood = |pings: u16| {
            let mut d = detector("");
            let alerts: Vec<Alert> = (0..pings)
                .flat_map(|i| d.inspect(&ping(CLIENT, SERVER, i, b"x"), at(f64::from(i) / 250.0)))
                .collect();
            alerts
        };
        assert_eq!(count(&flood(199), SID_ICMP_FLOOD), 0);
        assert_eq!(sids(&flood(230)), vec![SID_ICMP_FLOOD]);
        assert_eq!(count(&flood(500), SID_ICMP_FLOOD), 2);
    }

    #[test]
    fn arp_spoofing() {
        let mut d = detector("");
        let spoofer = [2, 0, 0, 0, 0, 66];
        d.set_bindings(HashMap::from([(Ipv4Addr::from(CLIENT), CLIENT_MAC)]));
        assert!(d
            .inspect(&arp_reply(CLIENT_MAC, CLIENT, SERVER), at(0.0))
            .is_empty());
        assert!(d
            .inspect(&arp_reply(spoofer, SERVER, CLIENT), at(0.0))
            .is_empty());
        let alerts = d.inspect(&arp_reply(spoofer, CLIENT, SERVER), at(1.0));
        assert_eq!(sids(&alerts), vec![SID_ARP_SPOOF]);
        assert!(d
            .inspect(&arp_reply(spoofer, CLIENT, SERVER), at(2.0))
            .is_empty());
        assert_eq!(
            d.inspect(&arp_reply(spoofer, CLIENT, SERVER), at(62.0))
                .len(),
            1
        );

        let names = EveNames {
            network: Some("backend".to_string()),
            ..EveNames::default()
        };
        assert_eq!(
            alerts[0].eve_line(&names),
            "{\"timestamp\":\"2026-12-04T12:00:01.000000+0000\",\"event_type\":\"alert\",\
             \"src_ip\":\"10.0.0.1\",\"dest_ip\":\"10.0.0.2\",\"proto\":\"0\",\
             \"ether\":{\"src_mac\":\"02:00:00:00:00:42\"},\"alert\":{\"action\":\"allowed\",\
             \"gid\":1,\"signature_id\":9000004,\"rev\":1,\"signature\":\"QINGLUAN ARP spoofing\",\
             \"category\":\"Potentially Bad Traffic\",\"severity\":2},\"qingluan\":{\"network\":\"backend\"}}"
        );
    }
}
