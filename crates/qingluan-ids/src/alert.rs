//! Alerts and their Suricata EVE JSON form.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::rules::Action;

/// A packet's direction within its flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the client (the sender of the flow's first packet).
    ToServer,
    /// From the server.
    ToClient,
}

impl Direction {
    /// The EVE name: `to_server` or `to_client`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ToServer => "to_server",
            Direction::ToClient => "to_client",
        }
    }
}

/// One alert raised by a signature or an anomaly detector.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// Time of the packet that raised the alert.
    pub timestamp: SystemTime,
    /// Generator id: the rule's `gid` (1 by default and for anomalies).
    pub gid: u32,
    /// Signature id.
    pub sid: u32,
    /// Signature revision (0 when the rule has no `rev`).
    pub rev: u32,
    /// The rule's `msg`.
    pub msg: String,
    /// The classtype description, or "" without classtype.
    pub category: String,
    /// Priority (EVE `severity`); lower is more important.
    pub priority: u8,
    /// The rule's action; anomalies are [`Action::Alert`].
    pub action: Action,
    /// Source address of the packet.
    pub src_ip: IpAddr,
    /// Source port, for TCP and UDP.
    pub src_port: Option<u16>,
    /// Destination address of the packet.
    pub dest_ip: IpAddr,
    /// Destination port, for TCP and UDP.
    pub dest_port: Option<u16>,
    /// IP protocol number (0 for ARP).
    pub proto: u8,
    /// Sender MAC of an ARP spoofing alert: the spoofer, while `src_ip` is the address it
    /// claimed (which belongs to the victim).
    pub src_mac: Option<[u8; 6]>,
    /// Id of the packet's flow (51 bits), for signature alerts.
    pub flow_id: Option<u64>,
    /// Direction of the packet in its flow, for signature alerts.
    pub direction: Option<Direction>,
    /// The packet payload with non-printable bytes shown as `.`, for signature alerts on
    /// packets that carry a payload.
    pub payload_printable: Option<String>,
}

/// Caller-supplied context for an EVE record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EveNames {
    /// Capture interface (`in_iface`).
    pub in_iface: Option<String>,
    /// Name of the container that sent the packet.
    pub src_container: Option<String>,
    /// Name of the container the packet was sent to.
    pub dest_container: Option<String>,
    /// Name of the qingluan network.
    pub network: Option<String>,
    /// Whether drop rules block traffic (IPS mode): their alerts then say `blocked`.
    pub ips: bool,
}

/// A JSON object whose keys keep the order they were added in.
enum Ordered {
    Leaf(Value),
    Object(Vec<(&'static str, Ordered)>),
}

impl Ordered {
    fn into_value(self) -> Value {
        match self {
            Ordered::Leaf(value) => value,
            Ordered::Object(fields) => Value::Object(
                fields
                    .into_iter()
                    .map(|(key, value)| (key.to_string(), value.into_value()))
                    .collect::<Map<_, _>>(),
            ),
        }
    }

    fn write(&self, out: &mut String) {
        match self {
            Ordered::Leaf(value) => out.push_str(&value.to_string()),
            Ordered::Object(fields) => {
                out.push('{');
                for (i, (key, value)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::from(*key).to_string());
                    out.push(':');
                    value.write(out);
                }
                out.push('}');
            }
        }
    }
}

impl Alert {
    /// The EVE alert record as a JSON value (the map's key order is serde_json's).
    pub fn eve(&self, names: &EveNames) -> Value {
        self.ordered(names).into_value()
    }

    /// The EVE alert record as one JSON line (without newline), keys in Suricata's order.
    pub fn eve_line(&self, names: &EveNames) -> String {
        let mut line = String::new();
        self.ordered(names).write(&mut line);
        line
    }

    fn ordered(&self, names: &EveNames) -> Ordered {
        let leaf = |value: Value| Ordered::Leaf(value);
        let text = |value: &str| Ordered::Leaf(Value::from(value));
        let mut fields = vec![("timestamp", text(&format_timestamp(self.timestamp)))];
        if let Some(id) = self.flow_id {
            fields.push(("flow_id", leaf(id.into())));
        }
        if let Some(iface) = &names.in_iface {
            fields.push(("in_iface", text(iface)));
        }
        fields.push(("event_type", text("alert")));
        fields.push(("src_ip", text(&self.src_ip.to_string())));
        if let Some(port) = self.src_port {
            fields.push(("src_port", leaf(port.into())));
        }
        fields.push(("dest_ip", text(&self.dest_ip.to_string())));
        if let Some(port) = self.dest_port {
            fields.push(("dest_port", leaf(port.into())));
        }
        fields.push(("proto", text(&proto_name(self.proto))));
        if let Some(mac) = self.src_mac {
            fields.push((
                "ether",
                Ordered::Object(vec![("src_mac", text(&format_mac(mac)))]),
            ));
        }
        let action = match self.action {
            Action::Drop if names.ips => "blocked",
            _ => "allowed",
        };
        fields.push((
            "alert",
            Ordered::Object(vec![
                ("action", text(action)),
                ("gid", leaf(self.gid.into())),
                ("signature_id", leaf(self.sid.into())),
                ("rev", leaf(self.rev.into())),
                ("signature", text(&self.msg)),
                ("category", text(&self.category)),
                ("severity", leaf(self.priority.into())),
            ]),
        ));
        if let Some(direction) = self.direction {
            fields.push(("direction", text(direction.as_str())));
        }
        if let Some(payload) = &self.payload_printable {
            fields.push(("payload_printable", text(payload)));
        }
        let qingluan: Vec<_> = [
            ("src_container", &names.src_container),
            ("dest_container", &names.dest_container),
            ("network", &names.network),
        ]
        .into_iter()
        .filter_map(|(key, value)| value.as_deref().map(|v| (key, text(v))))
        .collect();
        if !qingluan.is_empty() {
            fields.push(("qingluan", Ordered::Object(qingluan)));
        }
        Ordered::Object(fields)
    }
}

/// EVE's protocol name: IANA's uppercase name, or the number as a string.
fn proto_name(proto: u8) -> String {
    match proto {
        1 => "ICMP".to_string(),
        6 => "TCP".to_string(),
        17 => "UDP".to_string(),
        58 => "IPv6-ICMP".to_string(),
        other => other.to_string(),
    }
}

/// Formats a MAC address as `02:42:ac:11:00:02`.
pub(crate) fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Formats `time` as `2026-12-04T12:00:00.123456+0000` (UTC; times before 1970 as 1970).
pub fn format_timestamp(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let day_secs = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}+0000",
        day_secs / 3600,
        day_secs % 3600 / 60,
        day_secs % 60,
        since_epoch.subsec_micros()
    )
}

/// The proleptic Gregorian date `days` days after 1970-01-01.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Count from 0000-03-01 so that leap days fall at the end of each year; an era is
    // 400 years = 146097 days, and 1970-01-01 is day 719468 from that origin.
    let days = days + 719_468;
    let era = days / 146_097;
    let day_of_era = days % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // 0 = March
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

/// Payload bytes with everything outside printable ASCII shown as `.`.
pub(crate) fn printable(payload: &[u8]) -> String {
    payload
        .iter()
        .map(|&b| {
            if b == b' ' || b.is_ascii_graphic() {
                b as char
            } else {
                '.'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, micros: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, micros * 1000)
    }

    #[test]
    fn timestamps() {
        assert_eq!(
            format_timestamp(at(0, 0)),
            "1970-01-01T00:00:00.000000+0000"
        );
        assert_eq!(
            format_timestamp(at(1_796_385_600, 123_456)),
            "2026-12-04T12:00:00.123456+0000"
        );
        assert_eq!(
            format_timestamp(at(951_782_400, 1)),
            "2000-02-29T00:00:00.000001+0000"
        );
        assert_eq!(
            format_timestamp(at(4_107_542_399, 999_999)),
            "2100-02-28T23:59:59.999999+0000"
        );
    }

    #[test]
    fn printable_payload() {
        assert_eq!(printable(b"GET / HTTP/1.1\r\n\x00~"), "GET / HTTP/1.1...~");
    }

    fn alert() -> Alert {
        Alert {
            timestamp: at(1_796_385_600, 123_456),
            gid: 1,
            sid: 2010706,
            rev: 10,
            msg: "ET \"quoted\"".to_string(),
            category: "Potentially Bad Traffic".to_string(),
            priority: 2,
            action: Action::Drop,
            src_ip: "10.0.0.5".parse().unwrap(),
            src_port: Some(51234),
            dest_ip: "10.0.0.6".parse().unwrap(),
            dest_port: Some(80),
            proto: 6,
            src_mac: None,
            flow_id: Some(1234),
            direction: Some(Direction::ToServer),
            payload_printable: Some("GET".to_string()),
        }
    }

    #[test]
    fn eve_line_keeps_suricata_key_order() {
        let names = EveNames {
            in_iface: Some("ql-mirror".to_string()),
            src_container: Some("web".to_string()),
            dest_container: None,
            network: Some("front".to_string()),
            ips: true,
        };
        assert_eq!(
            alert().eve_line(&names),
            "{\"timestamp\":\"2026-12-04T12:00:00.123456+0000\",\"flow_id\":1234,\
             \"in_iface\":\"ql-mirror\",\"event_type\":\"alert\",\"src_ip\":\"10.0.0.5\",\
             \"src_port\":51234,\"dest_ip\":\"10.0.0.6\",\"dest_port\":80,\"proto\":\"TCP\",\
             \"alert\":{\"action\":\"blocked\",\"gid\":1,\"signature_id\":2010706,\"rev\":10,\
             \"signature\":\"ET \\\"quoted\\\"\",\"category\":\"Potentially Bad Traffic\",\
             \"severity\":2},\"direction\":\"to_server\",\"payload_printable\":\"GET\",\
             \"qingluan\":{\"src_container\":\"web\",\"network\":\"front\"}}"
        );
        let parsed: Value = serde_json::from_str(&alert().eve_line(&names)).unwrap();
        assert_eq!(parsed, alert().eve(&names));
    }

    #[test]
    fn eve_value_omits_absent_fields() {
        let mut a = alert();
        a.flow_id = None;
        a.direction = None;
        a.payload_printable = None;
        a.src_port = None;
        a.dest_port = None;
        a.proto = 58;
        let eve = a.eve(&EveNames::default());
        let keys: Vec<_> = eve.as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            keys,
            vec![
                "alert",
                "dest_ip",
                "event_type",
                "proto",
                "src_ip",
                "timestamp"
            ]
        );
        assert_eq!(eve["proto"], "IPv6-ICMP");
        assert_eq!(eve["alert"]["action"], "allowed");
        assert_eq!(proto_name(47), "47");
    }
}
